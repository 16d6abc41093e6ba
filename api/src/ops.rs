//! Operations: liveness and readiness, unauthenticated (they reveal nothing), and Prometheus
//! counters, which cover every tenant and so need an admin key (`Authorization: Bearer`, as
//! Prometheus's `authorization` scrape setting sends it).

use crate::auth::{authenticate, Caller};
use crate::error::ApiError;
use crate::state::{ApiState, Scope};
use axum::extract::State;
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use std::sync::Arc;

pub async fn healthz() -> impl IntoResponse {
    Json(serde_json::json!({"status": "ok"}))
}

/// 200 once state is restored and the bus is caught up; 503 before.
pub async fn readyz(State(state): State<Arc<ApiState>>) -> impl IntoResponse {
    if state.is_ready() {
        (StatusCode::OK, Json(serde_json::json!({"status": "ready"})))
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, Json(serde_json::json!({"status": "restoring"})))
    }
}

pub async fn metrics(State(state): State<Arc<ApiState>>, method: Method, headers: HeaderMap) -> Response {
    match authenticate(&state, &method, &headers, None) {
        Ok(Caller { scope: Scope::All, .. }) => {
            ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], state.telemetry.render()).into_response()
        }
        Ok(_) => {
            ApiError::forbidden("/metrics counts every tenant's events: scrape it with an admin key").into_response()
        }
        Err(error) => error.into_response(),
    }
}
