//! `convoflow replay` through the scaled deployment's parts: input files are published to
//! JetStream, and the stream is consumed into ClickHouse (or the embedded store).
//!
//! The consumer is the runtime loop's source (`crate::runtime`), one epoch per fetch of up to
//! [`FETCH_MESSAGES`] messages. Into ClickHouse, an epoch's updates are committed, retrying with
//! backoff while it is away, and only then are its messages acknowledged. A crash at any point
//! leaves either a committed epoch whose messages come again (absorbed as duplicates, since
//! operator state is rebuilt from the committed events) or an uncommitted one that stays
//! invisible and is redone. Into the embedded store, the messages are acknowledged once the
//! Parquet files are written, at the end.

use crate::replay::{now_ms, read_inputs, replay_source, thousands, ReplayError, ReplaySummary};
use crate::runtime::{restore, Quiet, Runtime};
use convoflow_connectors::clickhouse::{ClickHouseConfig, ClickHouseError, ClickHouseSink, ClickHouseStore};
use convoflow_connectors::jetstream::{
    ConsumerSource, JetStreamBus, JetStreamConfig, JetStreamError, PublishStats, Publishing,
};
use convoflow_connectors::retry::{retry_for, until_done};
use convoflow_connectors::wire::batch_file;
use convoflow_connectors::RuntimeError;
use convoflow_events::Tenants;
use convoflow_operators::{DriverError, RejectedRow};
use convoflow_schema::TABLES;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::runtime::Handle;

/// Messages per epoch (each holds up to `bus::BATCH_EVENTS` events), unless
/// `CONVOFLOW_EPOCH_MESSAGES` says otherwise (smaller epochs: more, smaller commits).
pub const FETCH_MESSAGES: usize = 128;

fn epoch_messages() -> usize {
    std::env::var("CONVOFLOW_EPOCH_MESSAGES")
        .ok()
        .and_then(|text| text.parse().ok())
        .filter(|n| *n > 0)
        .unwrap_or(FETCH_MESSAGES)
}

pub struct ScaledOptions {
    pub inputs: Vec<PathBuf>,
    pub nats: String,
    /// `None`: the embedded store in `data_dir`.
    pub clickhouse: Option<ClickHouseConfig>,
    pub data_dir: PathBuf,
    /// Rebuild from the stream (messages published at or after `since_ms`) instead of consuming
    /// with the durable consumer.
    pub from_nats: bool,
    pub since_ms: Option<i64>,
    pub tenants: Tenants,
    pub workers: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum ScaledError {
    #[error(transparent)]
    JetStream(#[from] JetStreamError),
    #[error(transparent)]
    ClickHouse(#[from] ClickHouseError),
    #[error(transparent)]
    Replay(#[from] ReplayError),
    #[error(transparent)]
    Driver(#[from] DriverError),
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    #[error("the publisher stopped: {0}")]
    Publisher(String),
}

#[derive(Debug, Default)]
pub struct ConsumeStats {
    pub messages: u64,
    pub lines: u64,
    pub accepted: u64,
    pub duplicates: u64,
    pub rejected: u64,
    pub commits: u64,
    pub rows: u64,
    pub restored_events: u64,
    /// The operator state was resumed from ClickHouse, and this many events committed after it re-fed.
    pub resumed: Option<u64>,
    pub restore_seconds: f64,
    pub seconds: f64,
    pub table_rows: Vec<(String, u64)>,
}

#[derive(Debug, Default)]
pub struct ScaledSummary {
    pub stream: String,
    pub data_dir: PathBuf,
    pub published_lines: u64,
    pub publish: PublishStats,
    pub publish_rejected: u64,
    pub publish_seconds: f64,
    pub target: String,
    pub consume: ConsumeStats,
    pub total_seconds: f64,
    /// Set when the target is the embedded store.
    pub embedded: Option<ReplaySummary>,
}

/// What the publisher did.
struct Published {
    lines: u64,
    stats: PublishStats,
    rejected: Vec<RejectedRow>,
    rejected_lines: u64,
    seconds: f64,
}

async fn publish_files(bus: &JetStreamBus, inputs: &[PathBuf], received_at: i64) -> Result<Published, ScaledError> {
    let started = Instant::now();
    let mut published =
        Published { lines: 0, stats: PublishStats::default(), rejected: Vec::new(), rejected_lines: 0, seconds: 0.0 };
    for (mut file, path) in read_inputs(inputs)?.into_iter().zip(inputs) {
        let bytes =
            file.take_rest().map_err(|source| ReplayError::Input { path: path.display().to_string(), source })?;
        let batched = batch_file(&file.name, &bytes, received_at);
        published.lines += batched.lines;
        published.stats.add(bus.publish(&batched.batches).await?);
        published.rejected_lines += batched.rejected.len() as u64;
        published.rejected.extend(batched.rejected);
    }
    published.seconds = started.elapsed().as_secs_f64();
    Ok(published)
}

pub async fn run_scaled(options: ScaledOptions) -> Result<ScaledSummary, ScaledError> {
    let started = Instant::now();
    // A durable consumer's position belongs to the store it feeds.
    let default_consumer = match &options.clickhouse {
        Some(config) => format!("convoflow_clickhouse_{}", config.database),
        None => "convoflow_embedded".to_owned(),
    };
    let bus = Arc::new(JetStreamBus::connect(JetStreamConfig::from_url(&options.nats, &default_consumer)).await?);
    let mut summary = ScaledSummary {
        stream: bus.config().stream.clone(),
        data_dir: options.data_dir.clone(),
        ..ScaledSummary::default()
    };
    let mut consumer =
        if options.from_nats { bus.replay_consumer(options.since_ms).await? } else { bus.durable_consumer().await? };

    // The publisher runs beside the consumer; the consumer only stops once it is done, and its
    // last read hands over the publisher's rejections (invalid lines never reach the stream).
    let publishing = Publishing::default();
    let publisher = {
        let (bus, publishing, inputs) = (bus.clone(), publishing.clone(), options.inputs.clone());
        tokio::spawn(async move {
            let mut result = publish_files(&bus, &inputs, now_ms()).await;
            let rejected = result.as_mut().map(|published| std::mem::take(&mut published.rejected)).unwrap_or_default();
            publishing.done(rejected);
            result
        })
    };
    let published = |result: Result<Result<Published, ScaledError>, tokio::task::JoinError>| {
        result.unwrap_or_else(|error| Err(ScaledError::Publisher(error.to_string())))
    };
    let origin = format!("nats:{}", summary.stream);
    let source =
        ConsumerSource::new(&mut consumer, Handle::current(), origin, options.workers, epoch_messages(), publishing);

    match &options.clickhouse {
        Some(config) => {
            let store =
                retry_for("connect to ClickHouse", Duration::from_secs(60), || ClickHouseStore::connect(config))
                    .await?;
            summary.target = format!("ClickHouse {} at {}, database {}", store.version(), config.url, config.database);
            let store = Arc::new(store);
            summary.consume = tokio::task::block_in_place(|| {
                consume_into_clickhouse(source, store.clone(), options.tenants, options.workers)
            })?;
            summary.record_publish(&published(publisher.await)?);
            summary.consume.table_rows = table_counts(&store).await;
        }
        None => {
            summary.target = format!("embedded store in {}", options.data_dir.join("tables").display());
            let (tenants, data_dir, workers) = (options.tenants, options.data_dir.clone(), options.workers);
            let replayed = tokio::task::block_in_place(|| {
                replay_source(
                    source,
                    Vec::new(),
                    tenants,
                    &data_dir,
                    workers,
                    convoflow_connectors::embedded::ParquetSink::STATE_EVERY,
                )
            })?;
            summary.record_publish(&published(publisher.await)?);
            summary.consume.messages = replayed.records;
            summary.embedded = Some(replayed);
        }
    }
    summary.total_seconds = started.elapsed().as_secs_f64();
    Ok(summary)
}

async fn table_counts(store: &ClickHouseStore) -> Vec<(String, u64)> {
    let mut counts = Vec::new();
    for table in TABLES {
        let sql = format!("SELECT count() FROM {}.{table}", store.config().database);
        let count = until_done("count rows", || store.fetch(&sql, "TabSeparated", "count rows")).await;
        counts.push((table.to_string(), String::from_utf8_lossy(&count).trim().parse().unwrap_or(0)));
    }
    counts
}

/// Consumes until the publisher is done and every message is acknowledged: the runtime loop
/// with the consumer as its source and ClickHouse as its sink.
/// How often a consumer saves the operator state into ClickHouse (and at the end).
const STATE_INTERVAL: Duration = Duration::from_secs(60);

fn consume_into_clickhouse(
    source: ConsumerSource<'_>,
    store: Arc<ClickHouseStore>,
    tenants: Tenants,
    workers: usize,
) -> Result<ConsumeStats, ScaledError> {
    let mut sink = ClickHouseSink::new(store, Handle::current(), STATE_INTERVAL);
    let (driver, _, stats) = restore(workers, Arc::new(tenants), &mut sink, &mut Quiet, None)?;
    let stop = Arc::new(AtomicBool::new(false));
    let runtime = Runtime { source, sink: &mut sink, observer: Quiet, driver, stop, spacing: Duration::ZERO };
    let (stats, _) = runtime.run(stats)?;
    Ok(ConsumeStats {
        messages: stats.records,
        lines: stats.lines,
        accepted: stats.accepted,
        duplicates: stats.duplicates,
        rejected: stats.rejected,
        commits: stats.commits,
        rows: stats.rows,
        restored_events: stats.restored_events,
        resumed: stats.resumed.then_some(stats.since_state),
        restore_seconds: stats.restore_seconds,
        seconds: stats.seconds + stats.restore_seconds,
        table_rows: Vec::new(),
    })
}

fn rate(count: u64, seconds: f64) -> String {
    thousands(if seconds > 0.0 { (count as f64 / seconds) as u64 } else { 0 })
}

impl ScaledSummary {
    fn record_publish(&mut self, publish: &Published) {
        self.published_lines = publish.lines;
        self.publish = publish.stats;
        self.publish_rejected = publish.rejected_lines;
        self.publish_seconds = publish.seconds;
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        if self.published_lines > 0 {
            out.push_str(&format!(
                "published {} lines to JetStream stream {} in {:.2} s ({} events/s): {} messages, {} already on the stream, {} invalid lines rejected\n",
                thousands(self.published_lines),
                self.stream,
                self.publish_seconds,
                rate(self.publish.events, self.publish_seconds),
                thousands(self.publish.messages),
                thousands(self.publish.duplicate_messages),
                thousands(self.publish_rejected),
            ));
        }
        if let Some(embedded) = &self.embedded {
            out.push_str(&format!("consumed {} messages into the {}\n", thousands(self.consume.messages), self.target));
            out.push_str(&embedded.render(&self.data_dir));
            return out;
        }
        let c = &self.consume;
        out.push_str(&format!(
            "consumed {} messages ({} events) into {} in {:.2} s ({} events/s)\n",
            thousands(c.messages),
            thousands(c.lines),
            self.target,
            c.seconds,
            rate(c.lines, c.seconds),
        ));
        let lines = if self.published_lines > 0 { self.published_lines } else { c.lines };
        out.push_str(&format!(
            "end to end: {} lines in {:.2} s ({} events/s){}\n",
            thousands(lines),
            self.total_seconds,
            rate(lines, self.total_seconds),
            if self.published_lines > 0 { ", publishing and consuming side by side" } else { "" },
        ));
        out.push_str(&format!(
            "  accepted    {:>12}\n  duplicates  {:>12}\n  rejected    {:>12}\n",
            thousands(c.accepted),
            thousands(c.duplicates),
            thousands(c.rejected)
        ));
        let how = match c.resumed {
            Some(since) => {
                format!("the saved operator state resumed (and {} events after it re-fed)", thousands(since))
            }
            None => format!("{} committed events re-fed", thousands(c.restored_events)),
        };
        out.push_str(&format!(
            "  state       {how} in {:.2} s\n  commits     {} epochs, {} rows inserted ({} rows/s)\n",
            c.restore_seconds,
            thousands(c.commits),
            thousands(c.rows),
            rate(c.rows, c.seconds),
        ));
        out.push_str("tables:\n");
        for (table, rows) in &c.table_rows {
            out.push_str(&format!("  {table:<20} {:>12} rows\n", thousands(*rows)));
        }
        out
    }
}
