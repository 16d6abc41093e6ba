//! Operations: liveness, readiness and Prometheus counters. Unauthenticated: they reveal no
//! tenant's data.

use crate::state::ApiState;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
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

pub async fn metrics(State(state): State<Arc<ApiState>>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], state.telemetry.render())
}
