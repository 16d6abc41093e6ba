//! `convoflow replay` through the scaled deployment's parts: input files are published to
//! JetStream, and the stream is consumed into ClickHouse (or the embedded store).
//!
//! The ClickHouse consumer runs the dataflow driver, one epoch per fetch of up to
//! [`FETCH_MESSAGES`] messages: the epoch's updates are committed to ClickHouse, retrying with
//! backoff while it is away, and only then are its messages acknowledged. A crash at any point
//! leaves either a committed epoch whose messages come again (absorbed as duplicates, since
//! operator state is rebuilt from the committed events) or an uncommitted one that stays
//! invisible and is redone.

use crate::bus::jetstream::{Consumer, Delivery, JetStreamBus, JetStreamConfig, PublishStats};
use crate::bus::{batch_file, parse_messages, BusError};
use crate::replay::{now_ms, read_inputs, replay, thousands, ReplayError, ReplayOptions, ReplaySummary};
use crate::retry::{retry_for, until_done};
use crate::runtime::{restore, Batch, Quiet, Read, Runtime, RuntimeError, Source};
use crate::serve::output::Output;
use crate::source::InputFile;
use convoflow_events::Tenants;
use convoflow_operators::{Driver, DriverError, RejectedRow, TableSet};
use convoflow_sinks::{ClickHouseConfig, ClickHouseError, ClickHouseStore, Commit, TABLES};
use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
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
    Bus(#[from] BusError),
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
    seconds: f64,
}

async fn publish_files(bus: &JetStreamBus, inputs: &[PathBuf], received_at: i64) -> Result<Published, ScaledError> {
    let started = Instant::now();
    let mut published = Published { lines: 0, stats: PublishStats::default(), rejected: Vec::new(), seconds: 0.0 };
    for file in read_inputs(inputs)? {
        let batched = batch_file(&file.name, &file.bytes, received_at);
        published.lines += batched.lines;
        published.stats.add(bus.publish(&batched.batches).await?);
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

    // The publisher runs beside the consumer; the consumer only stops once it is done.
    let publishing_done = Arc::new(AtomicBool::new(false));
    let publisher = {
        let (bus, done, inputs) = (bus.clone(), publishing_done.clone(), options.inputs.clone());
        tokio::spawn(async move {
            let result = publish_files(&bus, &inputs, now_ms()).await;
            done.store(true, Ordering::SeqCst);
            result
        })
    };
    let published = |result: Result<Result<Published, ScaledError>, tokio::task::JoinError>| {
        result.unwrap_or_else(|error| Err(ScaledError::Publisher(error.to_string())))
    };

    match &options.clickhouse {
        Some(config) => {
            let store =
                retry_for("connect to ClickHouse", Duration::from_secs(60), || ClickHouseStore::connect(config))
                    .await?;
            summary.target = format!("ClickHouse {} at {}, database {}", store.version(), config.url, config.database);
            let (stream, store) = (summary.stream.clone(), Arc::new(store));
            summary.consume = tokio::task::block_in_place(|| {
                consume_into_clickhouse(
                    &mut consumer,
                    store.clone(),
                    &stream,
                    options.tenants,
                    options.workers,
                    &publishing_done,
                )
            })?;
            let publish = published(publisher.await)?;
            // Invalid lines never reach the stream; the publisher's rejections are stored directly.
            if !publish.rejected.is_empty() {
                let epoch = until_done("read the last epoch", || store.last_epoch()).await + 1;
                let empty = TableSet::default();
                let commit = Commit {
                    epoch,
                    tables: &empty,
                    rejected: &publish.rejected,
                    first_position: 0,
                    last_position: 0,
                    input: None,
                };
                summary.consume.rows += until_done("commit rejected lines", || store.commit(&commit)).await.rows;
                summary.consume.rejected += publish.rejected.len() as u64;
                summary.consume.commits += 1;
            }
            summary.consume.table_rows = table_counts(&store).await;
            summary.record_publish(&publish);
        }
        None => {
            summary.target = format!("embedded store in {}", options.data_dir.join("tables").display());
            let mut deliveries = Vec::new();
            loop {
                let fetched = consumer.fetch(FETCH_MESSAGES).await;
                if !fetched.is_empty() {
                    deliveries.extend(fetched);
                } else if publishing_done.load(Ordering::SeqCst) && consumer.finished(deliveries.len()).await {
                    break;
                } else {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
            let publish = published(publisher.await)?;
            summary.record_publish(&publish);
            let mut bytes = Vec::new();
            for delivery in &deliveries {
                bytes.extend_from_slice(&delivery.payload);
            }
            let replay_options = ReplayOptions {
                inputs: vec![InputFile { name: format!("nats:{}", summary.stream), bytes }],
                rejected: publish.rejected,
                tenants: options.tenants,
                data_dir: options.data_dir.clone(),
                workers: options.workers,
            };
            let replayed = tokio::task::block_in_place(|| replay(replay_options))?;
            summary.consume.messages = deliveries.len() as u64;
            futures::future::join_all(deliveries.into_iter().map(Delivery::ack)).await;
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

/// A JetStream consumer as the runtime's source. It keeps its place by acknowledgements, so its
/// positions count reads: position n is the n-th read, acknowledged once the sink holds it.
struct ConsumerSource<'a> {
    consumer: &'a mut Consumer,
    handle: Handle,
    origin: String,
    workers: usize,
    epoch_messages: usize,
    publishing_done: &'a AtomicBool,
    reads: u64,
    /// Each read's deliveries, until the sink holds it.
    unacknowledged: VecDeque<(u64, Vec<Delivery>)>,
}

impl Source for ConsumerSource<'_> {
    fn input_id(&self) -> Option<&str> {
        None
    }

    fn read(&mut self, wait: Duration) -> Result<Read, RuntimeError> {
        let deliveries = self.handle.block_on(self.consumer.fetch(self.epoch_messages));
        if deliveries.is_empty() {
            if self.unacknowledged.is_empty()
                && self.publishing_done.load(Ordering::SeqCst)
                && self.handle.block_on(self.consumer.finished(0))
            {
                return Ok(Read::End);
            }
            if self.unacknowledged.is_empty() {
                std::thread::sleep(wait.min(Duration::from_millis(20)));
            }
            return Ok(Read::Idle);
        }
        let messages: Vec<(u64, &[u8])> = deliveries.iter().map(|d| (d.sequence, &d.payload[..])).collect();
        let (events, rejected) = parse_messages(&self.origin, &messages, now_ms(), self.workers);
        self.reads += 1;
        let batch = Batch {
            events,
            rejected,
            records: deliveries.len() as u64,
            first: deliveries.iter().map(|d| d.sequence).min().unwrap_or(0),
            last: deliveries.iter().map(|d| d.sequence).max().unwrap_or(0),
        };
        self.unacknowledged.push_back((self.reads, deliveries));
        Ok(Read::Batch(batch))
    }

    fn position(&self) -> u64 {
        self.reads
    }

    fn end(&mut self) -> Result<u64, RuntimeError> {
        Ok(self.reads)
    }

    fn acknowledge(&mut self, position: u64) -> Result<(), RuntimeError> {
        let mut acks = Vec::new();
        while self.unacknowledged.front().is_some_and(|(read, _)| *read <= position) {
            if let Some((_, deliveries)) = self.unacknowledged.pop_front() {
                acks.extend(deliveries.into_iter().map(Delivery::ack));
            }
        }
        self.handle.block_on(futures::future::join_all(acks));
        Ok(())
    }
}

/// Consumes until the publisher is done and every message is acknowledged: the runtime loop
/// with this consumer as its source and ClickHouse as its sink.
pub fn consume_into_clickhouse(
    consumer: &mut Consumer,
    store: Arc<ClickHouseStore>,
    stream: &str,
    tenants: Tenants,
    workers: usize,
    publishing_done: &AtomicBool,
) -> Result<ConsumeStats, ScaledError> {
    let handle = Handle::current();
    let mut sink = Output::clickhouse(store, handle.clone());
    let mut driver = Driver::start(workers, Arc::new(tenants))?;
    let (_, stats) = restore(&mut driver, &mut sink, &mut Quiet, None)?;
    let source = ConsumerSource {
        consumer,
        handle,
        origin: format!("nats:{stream}"),
        workers,
        epoch_messages: epoch_messages(),
        publishing_done,
        reads: 0,
        unacknowledged: VecDeque::new(),
    };
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
        self.publish_rejected = publish.rejected.len() as u64;
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
        out.push_str(&format!(
            "  state       {} committed events restored in {:.2} s\n  commits     {} epochs, {} rows inserted ({} rows/s)\n",
            thousands(c.restored_events),
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
