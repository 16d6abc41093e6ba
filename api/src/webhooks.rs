//! `GET`/`POST /v1/webhooks/whatsapp/{tenant}`: Meta's verification handshake and signed webhook
//! ingestion (SPEC §3). Authenticated by the tenant's app secret, not an API key (Meta cannot
//! send one), so no rate limit applies: Meta paces its own deliveries.
//!
//! The signature `X-Hub-Signature-256: sha256=<hex HMAC-SHA256(raw body, app secret)>` is checked
//! on the raw bytes, in constant time, before the body is parsed. A signed body is answered 200
//! even when it cannot be read as a webhook: it is stored in `rejected` instead, since Meta would
//! otherwise redeliver a body that will never parse for 7 days. Only a failure to store durably
//! gets a 5xx, which Meta retries.

use crate::body::read_body;
use crate::error::ApiError;
use crate::ingest::{request_id, Intake};
use crate::state::ApiState;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Json;
use convoflow_events::{normalize_webhook, now_ms, SkipKind};
use convoflow_operators::RejectedRow;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// Checks `X-Hub-Signature-256` against the raw body.
pub fn verify_signature(app_secret: &str, header_value: Option<&str>, body: &[u8]) -> Result<(), &'static str> {
    if app_secret.is_empty() {
        return Err("no app secret is configured");
    }
    let value = header_value.ok_or("missing X-Hub-Signature-256 header")?;
    let hex_digest = value.trim().strip_prefix("sha256=").ok_or("X-Hub-Signature-256 must start with `sha256=`")?;
    let expected = hex::decode(hex_digest).map_err(|_| "X-Hub-Signature-256 is not hex")?;
    let mut mac = Hmac::<Sha256>::new_from_slice(app_secret.as_bytes()).map_err(|_| "unusable app secret")?;
    mac.update(body);
    mac.verify_slice(&expected).map_err(|_| NO_MATCH)
}

const NO_MATCH: &str = "X-Hub-Signature-256 does not match the body";

/// Equal in time independent of where the first difference is.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The tenant's app. A tenant without one is answered exactly as a wrong token or signature is,
/// so tenant names cannot be probed; the operator finds the cause in the log.
fn app_for<'a>(state: &'a ApiState, tenant: &str) -> Option<&'a crate::state::WhatsAppApp> {
    let app = state.whatsapp.get(tenant);
    if app.is_none() {
        tracing::warn!(
            tenant,
            "webhook request for a tenant with no WhatsApp app configured ([whatsapp.<tenant>] in the config)"
        );
    }
    app
}

/// Meta's handshake: `hub.mode=subscribe`, `hub.verify_token`, `hub.challenge`.
type TenantPath = Result<Path<String>, axum::extract::rejection::PathRejection>;

pub async fn verify(State(state): State<Arc<ApiState>>, tenant: TenantPath, uri: Uri) -> Response {
    let tenant = match tenant {
        Ok(Path(tenant)) => tenant,
        Err(rejection) => return ApiError::from(rejection).into_response(),
    };
    let query = uri.query().unwrap_or("");
    let param = |name| crate::auth::url_query_value(query, name);
    if param("hub.mode").as_deref() != Some("subscribe") {
        return ApiError::bad_request("bad_handshake", "expected hub.mode=subscribe").into_response();
    }
    let token = param("hub.verify_token").unwrap_or_default();
    let matches = match app_for(&state, &tenant) {
        Some(app) => !app.verify_token.is_empty() && constant_time_eq(token.as_bytes(), app.verify_token.as_bytes()),
        None => false,
    };
    if !matches {
        return ApiError::forbidden("hub.verify_token does not match this tenant's verify token").into_response();
    }
    let challenge = param("hub.challenge").unwrap_or_default();
    ([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], challenge).into_response()
}

pub async fn receive(
    State(state): State<Arc<ApiState>>,
    tenant: TenantPath,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let result = match tenant {
        Ok(Path(tenant)) => ingest(&state, &tenant, &headers, body).await,
        Err(rejection) => Err(rejection.into()),
    };
    result.unwrap_or_else(IntoResponse::into_response)
}

async fn ingest(state: &ApiState, tenant: &str, headers: &HeaderMap, body: Body) -> Result<Response, ApiError> {
    let bytes = read_body(body, headers, state.limits.body_bytes).await?;
    let signature = headers.get("x-hub-signature-256").and_then(|v| v.to_str().ok());
    let verified = match app_for(state, tenant) {
        Some(app) => verify_signature(&app.app_secret, signature, &bytes),
        // The same checks and the same answers as for a wrong signature; never accepted.
        None => verify_signature("\0no app", signature, &bytes).and(Err(NO_MATCH)),
    };
    verified.map_err(|problem| ApiError::unauthorized(format!("webhook signature refused: {problem}")))?;
    if !state.is_ready() {
        return Err(ApiError::unavailable("convoflow is restoring its state; retry shortly"));
    }
    let received_at = now_ms();
    let request_id = request_id(received_at);
    let source = format!("webhook:{request_id}");
    // A number configured for the tenant belongs to it; a tenant that lists no numbers owns every
    // number its app delivers.
    let numbers = state.tenants.phone_number_ids(tenant);
    let tenant_of =
        |number: &str| (numbers.is_empty() || numbers.iter().any(|n| n == number)).then(|| tenant.to_owned());
    let mut admission = Intake::default();
    let mut skipped = 0u64;
    match normalize_webhook(&bytes, &tenant_of) {
        Err(error) => {
            admission.reject(RejectedRow::new(Some(tenant), received_at, format!("webhook: {error}"), &bytes, source))
        }
        Ok(batch) => {
            for (index, item) in batch.items.iter().enumerate() {
                let item_source = || format!("{source}:{}", index + 1);
                match item {
                    Ok(event) => {
                        admission.event(&state.seen, event, received_at, item_source);
                    }
                    Err(rejected) => {
                        let tenant_id = rejected.tenant_id.as_deref().or(Some(tenant));
                        admission.reject(RejectedRow::new(
                            tenant_id,
                            received_at,
                            rejected.reason.clone(),
                            rejected.raw.as_bytes(),
                            item_source(),
                        ));
                    }
                }
            }
            for item in &batch.skipped {
                if let SkipKind::UnknownNumber(number) = &item.kind {
                    tracing::warn!(tenant, phone_number_id = %number, "webhook item for a number the tenant does not list; skipped");
                } else {
                    tracing::debug!(tenant, kind = ?item.kind, detail = %item.detail, "webhook item gives no event");
                }
            }
            skipped = batch.skipped.len() as u64;
        }
    }
    let counts = admission.commit(state).await?;
    state.telemetry.webhook_skipped.fetch_add(skipped, Ordering::Relaxed);
    let body = serde_json::json!({
        "request_id": request_id,
        "accepted": counts.accepted,
        "duplicates": counts.duplicates,
        "rejected": counts.rejected,
        "skipped": skipped,
    });
    Ok((StatusCode::OK, Json(body)).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sign(secret: &str, body: &[u8]) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("key");
        mac.update(body);
        format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
    }

    #[test]
    fn signatures_are_checked_on_the_raw_bytes() {
        // Meta signs its escaped bytes; the decoded text would hash differently.
        let body = br#"{"text":"\u00e4\/ok"}"#;
        let good = sign("secret", body);
        assert!(verify_signature("secret", Some(&good), body).is_ok());
        assert!(verify_signature("secret", Some(&good), "{\"text\":\"ä/ok\"}".as_bytes()).is_err());
        assert!(verify_signature("other", Some(&good), body).is_err());
        assert!(verify_signature("", Some(&good), body).is_err(), "no secret fails closed");
        assert!(verify_signature("secret", None, body).is_err());
        assert!(verify_signature("secret", Some(&good.replace("sha256=", "sha1=")), body).is_err());
        assert!(verify_signature("secret", Some("sha256=zz"), body).is_err());
    }

    #[test]
    fn tokens_compare_whole() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
    }
}
