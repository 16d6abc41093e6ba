//! The HTTP API of SPEC §7 (axum): ingest, WhatsApp webhooks, named metrics, read-only SQL, the
//! live feed and operations. It talks to the bus and the store through the traits of `state`, so
//! the same API serves the embedded deployment and the scaled one.

mod auth;
mod body;
mod error;
mod feed;
mod ingest;
mod openapi;
mod ops;
mod read;
mod server;
mod sql_runtime;
mod state;
mod telemetry;
mod webhooks;

pub use auth::{ApiKey, ApiKeys, RateLimiter};
pub use error::ApiError;
pub use feed::{FeedEpoch, FeedPublisher};
pub use ingest::{Claim, Counts, Intake, SeenEvents};
pub use openapi::PATHS;
pub use server::{serve, ServerLimits};
pub use sql_runtime::{lower_priority, SqlRuntime};
pub use state::{ApiState, AppendError, BoxFuture, Bus, Limits, ReadError, Reader, Scope, TenantBatch, WhatsAppApp};
pub use telemetry::Telemetry;
pub use webhooks::verify_signature;

use axum::routing::{get, post};
use axum::Router;
use std::sync::Arc;

pub fn router(state: Arc<ApiState>) -> Router {
    Router::new()
        .route("/v1/events", post(ingest::post_events))
        .route("/v1/sql", post(read::post_sql))
        .route("/v1/metrics/{name}", get(read::get_metric))
        .route("/v1/feed", get(feed::get_feed))
        .route("/v1/webhooks/whatsapp/{tenant}", get(webhooks::verify).post(webhooks::receive))
        .route("/healthz", get(ops::healthz))
        .route("/readyz", get(ops::readyz))
        .route("/metrics", get(ops::metrics))
        .route("/v1/openapi.json", get(openapi::openapi))
        .route("/", get(openapi::dashboard))
        .fallback(error::no_such_route)
        .method_not_allowed_fallback(error::method_not_allowed)
        .with_state(state)
}
