//! `convoflow serve`: the API, the bus, the dataflow and the store in one process.
//!
//! Embedded deployment (the default): HTTP ingest appends to the local log (fsync before the
//! 2xx); a runtime thread reads the log epoch by epoch into the dataflow, applies the changes to
//! in-memory tables that SQL and the metrics read, and publishes them on the live feed; the tables
//! are snapshotted to Parquet in the data dir.

pub mod config;
mod demo;
mod embedded;
mod runtime;

use crate::bus::local::{LocalLog, LogError};
use crate::serve::config::ServeConfig;
use crate::serve::embedded::{LiveStore, LocalLogBus};
use crate::serve::runtime::Runtime;
use convoflow_api::{router, ApiKey, ApiKeys, ApiState, RateLimiter, SeenEvents, Telemetry, FEED_CAPACITY};
use convoflow_events::{Tenants, TenantsError};
use convoflow_sinks::{DataDirLock, LiveTables};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    #[error(transparent)]
    Tenants(#[from] TenantsError),
    #[error(transparent)]
    Store(#[from] convoflow_sinks::StoreError),
    #[error(transparent)]
    Log(#[from] LogError),
    #[error(transparent)]
    Runtime(#[from] convoflow_operators::RuntimeError),
    #[error("cannot convert tables to Arrow: {0}")]
    Arrow(#[from] datafusion::arrow::error::ArrowError),
    #[error("cannot listen on {address}: {source}")]
    Listen { address: String, source: std::io::Error },
    #[error("{what}: {source}")]
    Io { what: String, source: std::io::Error },
    #[error("snapshot: {0}")]
    Snapshot(String),
    #[error("{0}")]
    Unsupported(String),
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
    let mut random = [0u8; 24];
    std::io::Read::read_exact(&mut std::fs::File::open("/dev/urandom").map_err(io)?, &mut random).map_err(io)?;
    let key = format!("cf_admin_{}", hex(&random));
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(&path).map_err(io)?;
    std::io::Write::write_all(&mut file, format!("{key}\n").as_bytes()).map_err(io)?;
    file.sync_all().map_err(io)?;
    Ok(key)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Runs until Ctrl-C or SIGTERM; then stops taking requests, applies what the log holds and
/// writes a last snapshot.
pub async fn run_serve(config: ServeConfig) -> Result<(), ServeError> {
    if config.nats.is_some() || config.clickhouse.is_some() {
        return Err(ServeError::Unsupported(
            "serve runs the embedded deployment only so far (local log + Parquet); --nats/--clickhouse work with `convoflow replay`".to_owned(),
        ));
    }
    std::fs::create_dir_all(&config.data).map_err(|source| ServeError::Io { what: format!("data dir {}", config.data.display()), source })?;
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
        println!("admin API key: {key}  (kept in {}; configure [[api_keys]] to choose your own)", config.data.join("admin.key").display());
        keys.push(ApiKey { key, tenant: None });
    }
    let log = Arc::new(LocalLog::open(&config.data)?);
    let tables = Arc::new(Mutex::new(LiveTables::default()));
    let (feed, _) = tokio::sync::broadcast::channel(FEED_CAPACITY);
    let telemetry = Arc::new(Telemetry::default());
    let seen = Arc::new(SeenEvents::default());
    let ready = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let (shutdown_sender, shutdown) = tokio::sync::watch::channel(false);
    let state = Arc::new(ApiState {
        bus: Arc::new(LocalLogBus { log: log.clone() }),
        store: Arc::new(LiveStore { tables: tables.clone() }),
        feed: feed.clone(),
        tenants: tenants.clone(),
        keys: ApiKeys::new(keys),
        rate: RateLimiter::new(config.limits.requests_per_second, config.limits.burst),
        limits: config.limits.clone(),
        whatsapp: config.whatsapp.clone(),
        telemetry: telemetry.clone(),
        seen: seen.clone(),
        ready: ready.clone(),
        shutdown,
    });
    let runtime = Runtime {
        data_dir: config.data.clone(),
        tenants,
        workers: config.workers,
        log,
        tables,
        feed,
        seen,
        telemetry,
        ready,
        stop: stop.clone(),
        snapshot_interval: config.snapshot_interval,
    };
    let handle = tokio::runtime::Handle::current();
    // The runtime ending (an error) shuts the server down too: a server that no longer applies
    // events must not keep accepting them.
    let runtime_ended = Arc::new(tokio::sync::Notify::new());
    let ended = runtime_ended.clone();
    let processing = std::thread::Builder::new()
        .name("convoflow-runtime".to_owned())
        .spawn(move || {
            let result = runtime.run(handle);
            ended.notify_one();
            result
        })
        .map_err(|source| ServeError::Io { what: "start the runtime thread".to_owned(), source })?;

    let listener = tokio::net::TcpListener::bind(&config.listen)
        .await
        .map_err(|source| ServeError::Listen { address: config.listen.clone(), source })?;
    let address = listener.local_addr().map_err(|source| ServeError::Listen { address: config.listen.clone(), source })?;
    println!(
        "convoflow serve: listening on http://{address} (data in {}); dashboard at http://{address}/, API described at /v1/openapi.json",
        config.data.display()
    );
    tracing::info!(%address, data = %config.data.display(), workers = config.workers, "serving");
    if config.demo {
        tokio::spawn(demo::feed(state.clone(), 42));
    }
    let served = axum::serve(listener, router(state)).with_graceful_shutdown(shutdown_signal(runtime_ended, shutdown_sender)).await;
    stop.store(true, Ordering::SeqCst);
    let result = processing.join().map_err(|_| ServeError::Snapshot("the runtime thread panicked".to_owned()))?;
    served.map_err(|source| ServeError::Io { what: "HTTP server".to_owned(), source })?;
    result
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
