//! What the API works with: the bus and the store behind traits (the process chooses the local
//! log or JetStream, the embedded store or ClickHouse), the live feed, tenants, keys and limits.

use crate::auth::{ApiKeys, RateLimiter};
use crate::feed::FeedEpoch;
use crate::ingest::SeenEvents;
use crate::sql_runtime::SqlRuntime;
use crate::telemetry::Telemetry;
use convoflow_events::Tenants;
use convoflow_queries::{Collected, Dialect};
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::broadcast;

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// NDJSON lines of one tenant: canonical events and rejection lines.
pub struct TenantBatch {
    pub tenant: String,
    pub body: Vec<u8>,
}

#[derive(Debug, thiserror::Error)]
pub enum AppendError {
    /// The input is more than the bus takes in one append.
    #[error("{0}")]
    TooLarge(String),
    #[error("{0}")]
    Unavailable(String),
}

/// The bus: `append` returns once every batch is durable (local log fsynced, JetStream acked).
pub trait Bus: Send + Sync {
    fn append(&self, batches: Vec<TenantBatch>) -> BoxFuture<'_, Result<(), AppendError>>;
}

/// Whose rows a request may see.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Scope {
    Tenant(String),
    /// The admin key: every tenant.
    All,
}

#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The query itself is at fault (syntax, read-only rule, unknown column, a limit).
    #[error("{0}")]
    Query(String),
    #[error("{0}")]
    Unavailable(String),
}

/// The read side.
pub trait Reader: Send + Sync {
    /// Runs one read-only query over the SPEC §5 tables, seeing only `scope`'s rows, returning
    /// at most `limits.sql_max_rows` rows of at most `limits.sql_max_result_bytes`.
    fn query<'a>(
        &'a self,
        scope: &'a Scope,
        sql: &'a str,
        limits: &'a Limits,
    ) -> BoxFuture<'a, Result<Collected, ReadError>>;
    /// The SQL dialect of the store, for the named reports.
    fn dialect(&self) -> Dialect;
}

#[derive(Clone, Debug)]
pub struct Limits {
    /// Largest request body; more gets 413.
    pub body_bytes: usize,
    /// Requests per second per key, with bursts of `burst`; more gets 429.
    pub requests_per_second: f64,
    pub burst: f64,
    pub sql_timeout: Duration,
    pub sql_max_rows: usize,
    /// Largest result of one query, as Arrow in memory; more fails the query.
    pub sql_max_result_bytes: usize,
    /// Memory the queries running at once may take together for joins, sorts, groups and
    /// aggregates (the embedded store's pool; ClickHouse's `max_memory_usage` per query).
    pub sql_memory_bytes: usize,
    /// Queries running at once (over all keys), and for one key.
    pub sql_concurrent: usize,
    pub sql_per_key: usize,
    /// Chunks (of about `FEED_CHUNK_BYTES`) the feed holds for slow subscribers.
    pub feed_chunks: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            body_bytes: 8 << 20,
            requests_per_second: 50.0,
            burst: 100.0,
            sql_timeout: Duration::from_secs(10),
            sql_max_rows: 100_000,
            sql_max_result_bytes: 64 << 20,
            sql_memory_bytes: 256 << 20,
            sql_concurrent: 4,
            sql_per_key: 2,
            feed_chunks: crate::feed::FEED_CAPACITY,
        }
    }
}

/// A tenant's WhatsApp Cloud API settings.
#[derive(Clone, Debug, Default)]
pub struct WhatsAppApp {
    /// The Meta app secret that signs webhook bodies.
    pub app_secret: String,
    /// Answered in the `GET` verification handshake.
    pub verify_token: String,
}

pub struct ApiState {
    pub bus: Arc<dyn Bus>,
    pub store: Arc<dyn Reader>,
    pub feed: broadcast::Sender<Arc<FeedEpoch>>,
    pub tenants: Arc<Tenants>,
    pub keys: ApiKeys,
    pub limits: Limits,
    pub whatsapp: HashMap<String, WhatsAppApp>,
    pub telemetry: Arc<Telemetry>,
    pub seen: Arc<SeenEvents>,
    pub rate: RateLimiter,
    /// Where queries run, apart from ingest.
    pub sql: SqlRuntime,
    /// Set once state is restored and the bus caught up; ingest and reads wait for it.
    pub ready: Arc<AtomicBool>,
    /// Turns true when the server stops: open feeds end, so a graceful shutdown can finish.
    pub shutdown: tokio::sync::watch::Receiver<bool>,
}

impl ApiState {
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst)
    }
}
