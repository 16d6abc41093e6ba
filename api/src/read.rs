//! Reads: `POST /v1/sql` (read-only SQL over the caller's rows) and `GET /v1/metrics/{name}`
//! (the named reports of SPEC §7, as the documented SQL of `convoflow_queries::report_sql`).

use crate::auth::{authenticate, url_query_value, Caller};
use crate::body::read_body;
use crate::error::ApiError;
use crate::feed::json_array;
use crate::state::{ApiState, ReadError, Scope};
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use convoflow_events::{date32_to_string, parse_date32};
use convoflow_queries::{report_sql, Collected, Granularity, Report, ReportParams};
use datafusion::arrow::record_batch::RecordBatch;
use std::sync::Arc;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SqlFormat {
    Json,
    Csv,
    Arrow,
}

impl SqlFormat {
    fn parse(text: &str) -> Result<Self, ApiError> {
        match text {
            "json" => Ok(SqlFormat::Json),
            "csv" => Ok(SqlFormat::Csv),
            "arrow" => Ok(SqlFormat::Arrow),
            other => Err(ApiError::bad_request(
                "unknown_format",
                format!("unknown format `{other}` (expected json, csv or arrow)"),
            )),
        }
    }

    fn from_accept(headers: &HeaderMap) -> Option<Self> {
        let accept = headers.get(header::ACCEPT)?.to_str().ok()?;
        if accept.contains("text/csv") {
            Some(SqlFormat::Csv)
        } else if accept.contains("application/vnd.apache.arrow.stream") {
            Some(SqlFormat::Arrow)
        } else {
            None
        }
    }
}

#[derive(serde::Deserialize)]
struct SqlRequest {
    query: String,
    #[serde(default)]
    format: Option<String>,
}

pub async fn post_sql(
    State(state): State<Arc<ApiState>>,
    method: Method,
    headers: HeaderMap,
    uri: Uri,
    body: Body,
) -> Response {
    sql(&state, &method, &headers, &uri, body).await.unwrap_or_else(IntoResponse::into_response)
}

async fn sql(
    state: &ApiState,
    method: &Method,
    headers: &HeaderMap,
    uri: &Uri,
    body: Body,
) -> Result<Response, ApiError> {
    let caller = authenticate(state, method, headers, None)?;
    let query_string = uri.query().unwrap_or("");
    let scope = scope_for(&caller, url_query_value(query_string, "tenant"))?;
    let bytes = read_body(body, headers, state.limits.body_bytes).await?;
    let is_json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    let (query, body_format) = if is_json {
        let request: SqlRequest = serde_json::from_slice(&bytes).map_err(|e| {
            ApiError::bad_request(
                "malformed_body",
                format!("expected {{\"query\": \"SELECT …\", \"format\": \"json|csv|arrow\"}}: {e}"),
            )
        })?;
        (request.query, request.format)
    } else {
        let text = String::from_utf8(bytes.to_vec())
            .map_err(|_| ApiError::bad_request("malformed_body", "the SQL is not UTF-8"))?;
        (text, None)
    };
    if query.trim().is_empty() {
        return Err(ApiError::bad_request(
            "empty_query",
            "send a query: the body is the SQL, or {\"query\": \"SELECT …\"}",
        ));
    }
    let format = match url_query_value(query_string, "format").or(body_format) {
        Some(text) => SqlFormat::parse(&text)?,
        None => SqlFormat::from_accept(headers).unwrap_or(SqlFormat::Json),
    };
    wait_until_ready(state)?;
    let Collected { batches, truncated } = run_query(state, &caller, scope, query).await?;
    let mut response = match format {
        SqlFormat::Json => {
            let schema = batches.first().map(|b| b.schema());
            let columns: Vec<serde_json::Value> = schema
                .iter()
                .flat_map(|s| {
                    s.fields()
                        .iter()
                        .map(|f| serde_json::json!({"name": f.name(), "type": f.data_type().to_string()}))
                        .collect::<Vec<_>>()
                })
                .collect();
            let rows =
                json_array(&batches).map_err(|e| ApiError::internal(format!("cannot render the result: {e}")))?;
            let row_count: usize = batches.iter().map(RecordBatch::num_rows).sum();
            let mut body = format!(
                r#"{{"columns":{},"row_count":{row_count},"truncated":{truncated},"rows":"#,
                serde_json::Value::Array(columns)
            )
            .into_bytes();
            body.extend_from_slice(&rows);
            body.push(b'}');
            ([(header::CONTENT_TYPE, "application/json")], body).into_response()
        }
        SqlFormat::Csv => {
            let text = convoflow_queries::format_batches(&batches, convoflow_queries::OutputFormat::Csv)
                .map_err(|e| ApiError::internal(format!("cannot render the result: {e}")))?;
            ([(header::CONTENT_TYPE, "text/csv; charset=utf-8")], text).into_response()
        }
        SqlFormat::Arrow => {
            let bytes =
                arrow_ipc(&batches).map_err(|e| ApiError::internal(format!("cannot render the result: {e}")))?;
            ([(header::CONTENT_TYPE, "application/vnd.apache.arrow.stream")], bytes).into_response()
        }
    };
    response
        .headers_mut()
        .insert("x-convoflow-truncated", HeaderValue::from_static(if truncated { "true" } else { "false" }));
    Ok(response)
}

fn wait_until_ready(state: &ApiState) -> Result<(), ApiError> {
    if state.is_ready() {
        Ok(())
    } else {
        Err(ApiError::unavailable("convoflow is restoring its state; retry shortly"))
    }
}

/// An admin key reads every tenant unless it names one; a tenant key reads only its own.
fn scope_for(caller: &Caller, requested: Option<String>) -> Result<Scope, ApiError> {
    match (&caller.scope, requested) {
        (Scope::All, None) => Ok(Scope::All),
        (_, requested) => Ok(Scope::Tenant(caller.tenant(requested.as_deref())?)),
    }
}

/// Runs the query on the query threads, within the time limit and the caller's share.
async fn run_query(state: &ApiState, caller: &Caller, scope: Scope, query: String) -> Result<Collected, ApiError> {
    let (store, limits) = (state.store.clone(), state.limits.clone());
    let work = async move {
        store.query(&scope, &query, &limits).await.map_err(|error| match error {
            ReadError::Query(message) => ApiError::bad_request("bad_query", message),
            ReadError::Unavailable(message) => ApiError::unavailable(message),
        })
    };
    state.sql.run(&caller.key, state.limits.sql_timeout, work).await
}

fn arrow_ipc(batches: &[RecordBatch]) -> Result<Vec<u8>, datafusion::arrow::error::ArrowError> {
    let mut out = Vec::new();
    if let Some(first) = batches.first() {
        let mut writer = datafusion::arrow::ipc::writer::StreamWriter::try_new(&mut out, &first.schema())?;
        for batch in batches {
            writer.write(batch)?;
        }
        writer.finish()?;
    }
    Ok(out)
}

pub async fn get_metric(
    State(state): State<Arc<ApiState>>,
    method: Method,
    headers: HeaderMap,
    uri: Uri,
    name: Result<Path<String>, axum::extract::rejection::PathRejection>,
) -> Response {
    let result = match name {
        Ok(Path(name)) => metric(&state, &method, &headers, &uri, &name).await,
        Err(rejection) => Err(rejection.into()),
    };
    result.unwrap_or_else(IntoResponse::into_response)
}

async fn metric(
    state: &ApiState,
    method: &Method,
    headers: &HeaderMap,
    uri: &Uri,
    name: &str,
) -> Result<Response, ApiError> {
    let query = uri.query().unwrap_or("");
    let caller = authenticate(state, method, headers, Some(query))?;
    let report = Report::parse(name).ok_or_else(|| {
        let names: Vec<&str> = Report::ALL.iter().map(|r| r.name()).collect();
        ApiError::not_found(format!("no metric `{name}`; the metrics are {}", names.join(", ")))
    })?;
    let tenant = caller.tenant(url_query_value(query, "tenant").as_deref())?;
    let mut params = ReportParams::new(&tenant);
    params.timezone = state.tenants.timezone(&tenant);
    params.funnels = state.tenants.funnels(&tenant).to_vec();
    params.from = date_param(query, "from")?;
    params.to = date_param(query, "to")?;
    if let (Some(from), Some(to)) = (params.from, params.to) {
        if from > to {
            return Err(ApiError::bad_request("bad_range", "`from` is after `to`"));
        }
    }
    params.funnel_id = url_query_value(query, "funnel_id");
    params.model = url_query_value(query, "model");
    params.campaign_id = url_query_value(query, "campaign_id");
    params.session_id = url_query_value(query, "session_id");
    params.agent_id = url_query_value(query, "agent_id");
    if let Some(text) = url_query_value(query, "granularity") {
        params.granularity = Granularity::parse(&text).ok_or_else(|| {
            ApiError::bad_request("bad_granularity", format!("granularity must be hour, day or week, got `{text}`"))
        })?;
    }
    wait_until_ready(state)?;
    let sql = report_sql(report, &params, state.store.dialect());
    let Collected { batches, .. } = run_query(state, &caller, Scope::Tenant(tenant.clone()), sql).await?;
    let rows = json_array(&batches).map_err(|e| ApiError::internal(format!("cannot render the result: {e}")))?;
    let rows = label_buckets(&rows, params.timezone, params.granularity)?;
    let head = serde_json::json!({
        "metric": report.name(),
        "description": report.description(),
        "tenant_id": tenant,
        "timezone": params.timezone.name(),
        "from": params.from.map(date32_to_string),
        "to": params.to.map(date32_to_string),
        "granularity": params.granularity.name(),
    });
    let mut body = head.to_string().into_bytes();
    body.pop(); // the closing brace: rows follow
    body.extend_from_slice(br#","rows":"#);
    body.extend_from_slice(&rows);
    body.push(b'}');
    Ok((StatusCode::OK, [(header::CONTENT_TYPE, "application/json")], body).into_response())
}

/// Adds to each row with a `bucket_start` (epoch ms) its local label: `2026-03-02` for days and
/// weeks, `2026-03-02T14:00` for hours.
fn label_buckets(rows: &[u8], timezone: chrono_tz::Tz, granularity: Granularity) -> Result<Vec<u8>, ApiError> {
    use chrono::TimeZone;
    let mut parsed: Vec<serde_json::Map<String, serde_json::Value>> =
        serde_json::from_slice(rows).map_err(|e| ApiError::internal(format!("cannot read the result back: {e}")))?;
    let format = if granularity == Granularity::Hour { "%Y-%m-%dT%H:%M" } else { "%Y-%m-%d" };
    for row in &mut parsed {
        let Some(start) = row.get("bucket_start").and_then(serde_json::Value::as_i64) else { continue };
        if let chrono::LocalResult::Single(instant) = timezone.timestamp_millis_opt(start) {
            row.insert("bucket".to_owned(), serde_json::Value::String(instant.format(format).to_string()));
        }
    }
    serde_json::to_vec(&parsed).map_err(|e| ApiError::internal(format!("cannot render the result: {e}")))
}

fn date_param(query: &str, name: &'static str) -> Result<Option<i32>, ApiError> {
    url_query_value(query, name)
        .map(|text| {
            parse_date32(&text).ok_or_else(|| {
                ApiError::bad_request("bad_date", format!("`{name}` must be a date like 2026-02-01, got `{text}`"))
            })
        })
        .transpose()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_get_local_labels() {
        // 2026-03-01T18:30Z is midnight of 2 March in Kolkata.
        let rows = br#"[{"bucket_start":1772389800000,"n":1},{"other":2}]"#;
        let labelled = label_buckets(rows, chrono_tz::Asia::Kolkata, Granularity::Day).expect("labels");
        let parsed: serde_json::Value = serde_json::from_slice(&labelled).expect("json");
        assert_eq!(parsed[0]["bucket"], "2026-03-02");
        assert!(parsed[1].get("bucket").is_none());
        let hourly = label_buckets(rows, chrono_tz::Asia::Kolkata, Granularity::Hour).expect("labels");
        assert_eq!(
            serde_json::from_slice::<serde_json::Value>(&hourly).expect("json")[0]["bucket"],
            "2026-03-02T00:00"
        );
    }
}
