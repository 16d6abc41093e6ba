//! `convoflow serve`: the API, the bus, the dataflow and the store in one process.
//!
//! HTTP ingest appends to the bus — the local log by default (fsync before the 2xx), JetStream
//! with `--nats` (acknowledged by the server before the 2xx). A runtime thread reads the bus
//! epoch by epoch into the dataflow and stores the changes — in in-memory tables that SQL and the
//! metrics read, snapshotted to Parquet in the data dir, or with `--clickhouse` in ClickHouse,
//! which then answers the reads — and publishes them on the live feed. Any bus goes with any
//! store.

pub mod config;
mod demo;
mod observer;

use crate::runtime::{restore, Runtime};
use crate::serve::config::ServeConfig;
use crate::serve::observer::ServeObserver;
use convoflow_api::{
    router, ApiKey, ApiKeys, ApiState, Bus, FeedPublisher, RateLimiter, Reader, SeenEvents, SqlRuntime, Telemetry,
};
use convoflow_connectors::clickhouse::{ClickHouseConfig, ClickHouseError, ClickHouseSink, ClickHouseStore};
use convoflow_connectors::embedded::{DataDirLock, MemorySink, StoreError};
use convoflow_connectors::jetstream::{JetStreamBus, JetStreamConfig, JetStreamError, StreamBus, StreamSource};
use convoflow_connectors::log::{random_hex, LocalLog, LogBus, LogError, LogSource};
use convoflow_connectors::retry::retry_for;
use convoflow_connectors::{RuntimeError, Sink, Source};
use convoflow_events::{Tenants, TenantsError};
use convoflow_queries::query_runtime;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    #[error(transparent)]
    Tenants(#[from] TenantsError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Log(#[from] LogError),
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    #[error("cannot listen on {address}: {source}")]
    Listen { address: String, source: std::io::Error },
    #[error("{what}: {source}")]
    Io { what: String, source: std::io::Error },
    #[error("snapshot: {0}")]
    Snapshot(String),
    #[error(transparent)]
    JetStream(#[from] JetStreamError),
    #[error(transparent)]
    ClickHouse(#[from] ClickHouseError),
    #[error("query engine: {0}")]
    Query(#[from] datafusion::error::DataFusionError),
}

impl From<std::io::Error> for ServeError {
    fn from(source: std::io::Error) -> Self {
        ServeError::Io { what: "I/O".to_owned(), source }
    }
}

/// The admin key of a data dir without configured keys: made once, kept in `<data>/admin.key`.
fn admin_key_file(data_dir: &Path) -> Result<String, ServeError> {
    let path = data_dir.join("admin.key");
    let io = |source| ServeError::Io { what: format!("admin key {}", path.display()), source };
    if let Ok(text) = std::fs::read_to_string(&path) {
        if !text.trim().is_empty() {
            return Ok(text.trim().to_owned());
        }
    }
    let key = format!("cf_admin_{}", random_hex(24).map_err(io)?);
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(&path).map_err(io)?;
    std::io::Write::write_all(&mut file, format!("{key}\n").as_bytes()).map_err(io)?;
    file.sync_all().map_err(io)?;
    Ok(key)
}

/// The runtime's source, opened at a position (the one the store reaches).
type OpenSource = Box<dyn FnOnce(u64) -> Result<Box<dyn Source + Send>, RuntimeError> + Send>;

/// The bus ingest appends to, and how the runtime reads it back.
struct BusParts {
    bus: Arc<dyn Bus>,
    /// For the start-up line.
    described: String,
    input_id: String,
    open_source: OpenSource,
}

async fn bus_parts(config: &ServeConfig) -> Result<BusParts, ServeError> {
    let handle = tokio::runtime::Handle::current();
    match &config.nats {
        None => {
            let log = Arc::new(LocalLog::open(&config.data)?);
            let input_id = LogSource::input_id(&log);
            let reader = log.clone();
            let open_source: OpenSource = Box::new(move |position| {
                let source: Box<dyn Source + Send> = Box::new(LogSource::open(&reader, position, handle)?);
                Ok(source)
            });
            let described = format!("the local log {}", log.path().display());
            Ok(BusParts { bus: Arc::new(LogBus { log }), described, input_id, open_source })
        }
        Some(url) => {
            let stream = Arc::new(JetStreamBus::connect(JetStreamConfig::from_url(url, "convoflow_serve")).await?);
            let input_id = StreamSource::input_id(&stream);
            let reader = stream.clone();
            let open_source: OpenSource = Box::new(move |position| {
                let opened = handle.block_on(StreamSource::open(reader, position, handle.clone()))?;
                let source: Box<dyn Source + Send> = Box::new(opened);
                Ok(source)
            });
            let described = format!("JetStream stream {} at {url}", stream.config().stream);
            Ok(BusParts { bus: Arc::new(StreamBus { bus: stream }), described, input_id, open_source })
        }
    }
}

/// Where the runtime writes (and SQL reads), and its description for the start-up line.
async fn store_parts(config: &ServeConfig) -> Result<(Box<dyn Sink + Send>, String), ServeError> {
    match &config.clickhouse {
        None => {
            let runtime = query_runtime(config.limits.sql_memory_bytes)?;
            let sink = MemorySink::open(&config.data, config.snapshot_interval, runtime)?;
            let described = format!("the embedded store {}", config.data.join("tables").display());
            Ok((Box::new(sink), described))
        }
        Some(url) => {
            let clickhouse = ClickHouseConfig::parse(url)?;
            let store = Arc::new(
                retry_for("connect to ClickHouse", Duration::from_secs(60), || ClickHouseStore::connect(&clickhouse))
                    .await?,
            );
            let described =
                format!("ClickHouse {} at {}, database {}", store.version(), clickhouse.url, clickhouse.database);
            let sink = ClickHouseSink::new(store, tokio::runtime::Handle::current(), config.snapshot_interval);
            Ok((Box::new(sink), described))
        }
    }
}

/// Runs until Ctrl-C or SIGTERM; then stops taking requests, applies what the bus holds and
/// stores it (a last snapshot, or a last ClickHouse commit).
pub async fn run_serve(config: ServeConfig) -> Result<(), ServeError> {
    std::fs::create_dir_all(&config.data)
        .map_err(|source| ServeError::Io { what: format!("data dir {}", config.data.display()), source })?;
    let _lock = DataDirLock::acquire(&config.data)?;
    let tenants = Arc::new(match &config.tenants {
        Some(path) => Tenants::load(path)?,
        // The demo's generated tenants live in their own time zones and have custom funnels.
        None if config.demo => Tenants::from_json(&demo::demo_tenants_json())?,
        None => Tenants::default(),
    });
    let mut keys = config.api_keys.clone();
    if keys.is_empty() {
        let key = admin_key_file(&config.data)?;
        println!(
            "admin API key: {key}  (kept in {}; configure [[api_keys]] to choose your own)",
            config.data.join("admin.key").display()
        );
        keys.push(ApiKey { key, tenant: None });
    }
    let BusParts { bus, described: bus_described, input_id, open_source } = bus_parts(&config).await?;
    let (sink, store_described) = store_parts(&config).await?;
    let store: Arc<dyn Reader> = sink.reader().ok_or_else(|| {
        ServeError::Runtime(RuntimeError::Input("the store cannot answer SQL while it runs".to_owned()))
    })?;
    let (feed, _) = tokio::sync::broadcast::channel(config.limits.feed_chunks);
    let telemetry = Arc::new(Telemetry::default());
    let seen = Arc::new(SeenEvents::default());
    let ready = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let (shutdown_sender, shutdown) = tokio::sync::watch::channel(false);
    // One query thread: the other core stays with ingest and the dataflow.
    let sql = SqlRuntime::new(1, config.limits.sql_concurrent, config.limits.sql_per_key)
        .map_err(|source| ServeError::Io { what: "start the query threads".to_owned(), source })?;
    let state = Arc::new(ApiState {
        bus,
        store,
        feed: feed.clone(),
        tenants: tenants.clone(),
        keys: ApiKeys::new(keys),
        rate: RateLimiter::new(config.limits.requests_per_second, config.limits.burst),
        sql,
        limits: config.limits.clone(),
        whatsapp: config.whatsapp.clone(),
        telemetry: telemetry.clone(),
        seen: seen.clone(),
        ready: ready.clone(),
        shutdown,
    });
    let feed = FeedPublisher::start(feed)
        .map_err(|source| ServeError::Io { what: "start the feed thread".to_owned(), source })?;
    let observer = ServeObserver::new(feed, seen, telemetry, ready.clone(), input_id.clone());
    let workers = config.workers;
    // ClickHouse takes a commit as an insert per table, and many tiny inserts make many parts for
    // it to merge: there epochs gather what came in over a fifth of a second.
    let spacing = if config.clickhouse.is_some() { Duration::from_millis(200) } else { Duration::ZERO };
    // The runtime ending (an error) shuts the server down too: a server that no longer applies
    // events must not keep accepting them.
    let runtime_ended = Arc::new(tokio::sync::Notify::new());
    let ended = runtime_ended.clone();
    let ended_guard = RuntimeEnded { ended, ready: ready.clone() };
    let stopped = stop.clone();
    let processing = std::thread::Builder::new()
        .name("convoflow-runtime".to_owned())
        .spawn(move || {
            let _ended = ended_guard;
            let result = run_runtime(sink, observer, (input_id, open_source), tenants, (workers, spacing), stopped);
            if let Err(error) = &result {
                tracing::error!(%error, "the runtime stopped");
            }
            result
        })
        .map_err(|source| ServeError::Io { what: "start the runtime thread".to_owned(), source })?;

    let listener = tokio::net::TcpListener::bind(&config.listen)
        .await
        .map_err(|source| ServeError::Listen { address: config.listen.clone(), source })?;
    let address =
        listener.local_addr().map_err(|source| ServeError::Listen { address: config.listen.clone(), source })?;
    println!(
        "convoflow serve: listening on http://{address} (events go to {bus_described}, tables to {store_described})\n\
         dashboard at http://{address}/, API described at http://{address}/v1/openapi.json"
    );
    tracing::info!(%address, data = %config.data.display(), workers = config.workers, nats = ?config.nats, clickhouse = ?config.clickhouse, "serving");
    if config.demo {
        tokio::spawn(demo::feed(state.clone(), 42));
    }
    let served = convoflow_api::serve(
        listener,
        router(state),
        config.server.clone(),
        shutdown_signal(runtime_ended, shutdown_sender),
    )
    .await;
    stop.store(true, Ordering::SeqCst);
    let result = processing.join().map_err(|_| ServeError::Snapshot("the runtime thread panicked".to_owned()))?;
    served.map_err(|source| ServeError::Io { what: "HTTP server".to_owned(), source })?;
    Ok(result?)
}

/// Restores state from the store, opens the input where the store's tables end, and runs until
/// `stop`; errors here end the process.
fn run_runtime(
    mut sink: Box<dyn Sink + Send>,
    mut observer: ServeObserver,
    (input_id, open_source): (String, OpenSource),
    tenants: Arc<Tenants>,
    (workers, spacing): (usize, Duration),
    stop: Arc<AtomicBool>,
) -> Result<(), RuntimeError> {
    let (driver, position, stats) = restore(workers, tenants, &mut sink, &mut observer, Some(&input_id))?;
    let source = open_source(position)?;
    Runtime { source, sink: &mut sink, observer, driver, stop, spacing }.run(stats)?;
    Ok(())
}

/// Dropped when the runtime thread ends, even by a panic: the server stops being ready and shuts
/// down rather than acknowledge events nobody will process.
struct RuntimeEnded {
    ended: Arc<tokio::sync::Notify>,
    ready: Arc<AtomicBool>,
}

impl Drop for RuntimeEnded {
    fn drop(&mut self) {
        self.ready.store(false, Ordering::SeqCst);
        self.ended.notify_one();
    }
}

async fn shutdown_signal(runtime_ended: Arc<tokio::sync::Notify>, shutdown: tokio::sync::watch::Sender<bool>) {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => futures::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate => {}
        _ = runtime_ended.notified() => {}
    }
    // Open feeds would keep the graceful shutdown waiting forever.
    shutdown.send_replace(true);
    tracing::info!("shutting down: no new requests; applying what the log holds and writing a last snapshot");
}
