//! `GET /v1/openapi.json` (OpenAPI 3.1) and `GET /`, the live dashboard page.

use axum::response::{Html, IntoResponse};
use axum::Json;
use convoflow_queries::Report;
use serde_json::{json, Value};

/// Every path the router serves, as the document names them.
pub const PATHS: [&str; 10] = [
    "/v1/events",
    "/v1/webhooks/whatsapp/{tenant}",
    "/v1/metrics/{name}",
    "/v1/sql",
    "/v1/feed",
    "/healthz",
    "/readyz",
    "/metrics",
    "/v1/openapi.json",
    "/",
];

fn query(name: &str, description: &str) -> Value {
    json!({"name": name, "in": "query", "required": false, "schema": {"type": "string"}, "description": description})
}

fn error_responses(codes: &[&str]) -> Value {
    let mut responses = serde_json::Map::new();
    for code in codes {
        responses.insert((*code).to_owned(), json!({"$ref": "#/components/responses/Error"}));
    }
    Value::Object(responses)
}

fn merge(mut base: Value, extra: Value) -> Value {
    if let (Some(base), Some(extra)) = (base.as_object_mut(), extra.as_object()) {
        base.extend(extra.clone());
    }
    base
}

pub fn document() -> Value {
    let metrics: Vec<&str> = Report::ALL.iter().map(|r| r.name()).collect();
    let metric_docs: Vec<String> =
        Report::ALL.iter().map(|r| format!("- `{}`: {}", r.name(), r.description())).collect();
    let tenant = query("tenant", "With an admin key: the tenant to act for. A tenant key may only name its own.");
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "convoflow",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Live analytics for WhatsApp business messaging. Every tenant-scoped request carries an API key \
                            (`Authorization: Bearer <key>` or `X-Api-Key`; GET also `?api_key=`) bound to one tenant, or an admin key. \
                            Errors are JSON: {\"error\": {\"status\", \"code\", \"message\"}}."
        },
        "components": {
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer"},
                "header": {"type": "apiKey", "in": "header", "name": "X-Api-Key"},
                "query": {"type": "apiKey", "in": "query", "name": "api_key"}
            },
            "responses": {
                "Error": {
                    "description": "The problem, named",
                    "content": {"application/json": {"schema": {"type": "object", "properties": {"error": {"type": "object", "properties": {
                        "status": {"type": "integer"}, "code": {"type": "string"}, "message": {"type": "string"}}}}}}}
                }
            }
        },
        "security": [{"bearer": []}, {"header": []}, {"query": []}],
        "paths": {
            "/v1/events": {"post": {
                "summary": "Ingest canonical events (SPEC §2)",
                "description": "NDJSON (one event per line) or a JSON array. `tenant_id` may be left out: it is the key's. \
                                Answered line by line (accepted, duplicate, rejected with the reason) once the accepted events are durable. \
                                200 when anything was accepted or a duplicate; 400 when every line was rejected.",
                "requestBody": {"required": true, "content": {"application/x-ndjson": {"schema": {"type": "string"}}, "application/json": {"schema": {"type": "array"}}}},
                "responses": merge(json!({"200": {"description": "Per-line results: {request_id, accepted, duplicates, rejected, results: [{line, event_id, status, reason}]}"}}),
                                   error_responses(&["400", "401", "413", "429", "503"]))
            }},
            "/v1/webhooks/whatsapp/{tenant}": {
                "parameters": [{"name": "tenant", "in": "path", "required": true, "schema": {"type": "string"}}],
                "get": {
                    "summary": "Meta's verification handshake",
                    "security": [],
                    "parameters": [query("hub.mode", "subscribe"), query("hub.verify_token", "the tenant's verify token"), query("hub.challenge", "echoed back")],
                    "responses": merge(json!({"200": {"description": "hub.challenge, as text"}}), error_responses(&["400", "403", "404"]))
                },
                "post": {
                    "summary": "Signed WhatsApp Cloud API webhook (SPEC §3)",
                    "security": [],
                    "description": "Verified with X-Hub-Signature-256 (HMAC-SHA256 of the raw body with the tenant's app secret). \
                                    A signed body that is not a webhook is stored in `rejected` and answered 200.",
                    "responses": merge(json!({"200": {"description": "{request_id, accepted, duplicates, rejected, skipped}"}}), error_responses(&["401", "404", "413", "503"]))
                }
            },
            "/v1/metrics/{name}": {"get": {
                "summary": "A named report",
                "description": format!("Rows as JSON. Time series have `bucket_start` (epoch ms at which the local bucket begins) and `bucket` (its local label).\n{}", metric_docs.join("\n")),
                "parameters": [
                    {"name": "name", "in": "path", "required": true, "schema": {"type": "string", "enum": metrics}},
                    query("from", "first local date, YYYY-MM-DD (inclusive)"),
                    query("to", "last local date, YYYY-MM-DD (inclusive)"),
                    {"name": "granularity", "in": "query", "schema": {"type": "string", "enum": ["hour", "day", "week"], "default": "day"}},
                    tenant.clone(),
                    query("agent_id", "responses, first_response, resolution: one agent"),
                    query("campaign_id", "campaigns, attribution, csat: one campaign"),
                    query("funnel_id", "funnel: one funnel"),
                    query("model", "attribution: one model"),
                    query("session_id", "session_health: one business sender")
                ],
                "responses": merge(json!({"200": {"description": "{metric, description, tenant_id, timezone, from, to, granularity, rows}"}}), error_responses(&["400", "401", "403", "404", "429"]))
            }},
            "/v1/sql": {"post": {
                "summary": "Read-only SQL over the SPEC §5 tables, seeing only the key's tenant",
                "description": "The body is the SQL, or {\"query\": \"…\", \"format\": \"json|csv|arrow\"} as application/json. \
                                Results are cut at the row limit (header x-convoflow-truncated: true); a query over the time limit gets 400 query_timeout.",
                "parameters": [{"name": "format", "in": "query", "schema": {"type": "string", "enum": ["json", "csv", "arrow"]}}, tenant.clone()],
                "responses": merge(json!({"200": {"description": "JSON {columns, row_count, truncated, rows}, CSV with a header line, or an Arrow IPC stream",
                                                  "content": {"application/json": {}, "text/csv": {}, "application/vnd.apache.arrow.stream": {}}}}),
                                   error_responses(&["400", "401", "403", "413", "429"]))
            }},
            "/v1/feed": {"get": {
                "summary": "Live change feed (server-sent events)",
                "description": "First a `ready` event, then a `change` event per changed row: {table, row, diff, epoch}; `lagged` when the subscriber fell behind.",
                "parameters": [query("tables", "comma-separated table names (default: all)"), tenant],
                "responses": merge(json!({"200": {"description": "text/event-stream", "content": {"text/event-stream": {}}}}), error_responses(&["400", "401", "403", "429"]))
            }},
            "/healthz": {"get": {"summary": "Liveness", "security": [], "responses": {"200": {"description": "{status: ok}"}}}},
            "/readyz": {"get": {"summary": "Readiness: state restored, bus caught up", "security": [], "responses": {"200": {"description": "ready"}, "503": {"description": "restoring"}}}},
            "/metrics": {"get": {"summary": "Prometheus text: events in, duplicates, rejected, lag, epoch latency (every tenant's: an admin key)", "responses": {"200": {"description": "text/plain; version=0.0.4"}}}},
            "/v1/openapi.json": {"get": {"summary": "This document", "security": [], "responses": {"200": {"description": "OpenAPI 3.1"}}}},
            "/": {"get": {"summary": "Live dashboard (asks for an API key)", "security": [], "responses": {"200": {"description": "HTML"}}}}
        }
    })
}

pub async fn openapi() -> impl IntoResponse {
    Json(document())
}

pub async fn dashboard() -> impl IntoResponse {
    Html(include_str!("dashboard.html"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_document_lists_every_path_and_metric() {
        let document = document();
        let paths = document["paths"].as_object().expect("paths");
        let mut listed: Vec<&str> = paths.keys().map(String::as_str).collect();
        let mut served = PATHS.to_vec();
        listed.sort();
        served.sort();
        assert_eq!(listed, served);
        let names = &document["paths"]["/v1/metrics/{name}"]["get"]["parameters"][0]["schema"]["enum"];
        assert_eq!(names.as_array().expect("enum").len(), Report::ALL.len());
    }
}
