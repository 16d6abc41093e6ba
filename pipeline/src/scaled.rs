//! `convoflow replay` through the scaled deployment's parts: input files are published to
//! JetStream, and the stream is consumed into ClickHouse (or the embedded store).
//!
//! The ClickHouse consumer runs the dataflow live, one epoch per fetch of up to
//! [`FETCH_MESSAGES`] messages: the epoch's updates are committed to ClickHouse, retrying with
//! backoff while it is away, and only then are its messages acknowledged. A crash at any point
//! leaves either a committed epoch whose messages come again (absorbed as duplicates, since
//! operator state is rebuilt from the committed events) or an uncommitted one that stays
//! invisible and is redone.

use crate::bus::jetstream::{Backoff, Consumer, Delivery, JetStreamBus, JetStreamConfig, PublishStats};
use crate::bus::{batch_file, parse_message, BusError};
use crate::replay::{now_ms, read_inputs, replay, thousands, ReplayError, ReplayOptions, ReplaySummary};
use crate::source::InputFile;
use convoflow_events::{Event, Tenants};
use convoflow_operators::{LiveDataflow, RejectedRow, RuntimeError, TableSet};
use convoflow_sinks::{ClickHouseConfig, ClickHouseError, ClickHouseStore, Commit, TABLES};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Messages per epoch (each holds up to `bus::BATCH_EVENTS` events), unless
/// `CONVOFLOW_EPOCH_MESSAGES` says otherwise (smaller epochs: more, smaller commits).
pub const FETCH_MESSAGES: usize = 128;

fn epoch_messages() -> usize {
    std::env::var("CONVOFLOW_EPOCH_MESSAGES").ok().and_then(|text| text.parse().ok()).filter(|n| *n > 0).unwrap_or(FETCH_MESSAGES)
}
/// Stored events per epoch while rebuilding operator state.
const RESTORE_EPOCH_EVENTS: usize = 64 * 1024;

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
    Runtime(#[from] RuntimeError),
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
    /// Set when the target is the embedded store.
    pub embedded: Option<ReplaySummary>,
}

pub async fn run_scaled(options: ScaledOptions) -> Result<ScaledSummary, ScaledError> {
    let bus = JetStreamBus::connect(JetStreamConfig::from_url(&options.nats)).await?;
    let mut summary = ScaledSummary {
        stream: bus.config().stream.clone(),
        data_dir: options.data_dir.clone(),
        ..ScaledSummary::default()
    };
    let received_at = now_ms();

    let publish_started = Instant::now();
    let mut publish_rejected = Vec::new();
    for file in read_inputs(&options.inputs)? {
        let batched = batch_file(&file.name, &file.bytes, received_at);
        summary.published_lines += batched.lines;
        let stats = bus.publish(&batched.batches).await?;
        summary.publish.messages += stats.messages;
        summary.publish.events += stats.events;
        summary.publish.duplicate_messages += stats.duplicate_messages;
        summary.publish.retries += stats.retries;
        publish_rejected.extend(batched.rejected);
    }
    summary.publish_rejected = publish_rejected.len() as u64;
    summary.publish_seconds = publish_started.elapsed().as_secs_f64();

    let mut consumer =
        if options.from_nats { bus.replay_consumer(options.since_ms).await? } else { bus.durable_consumer().await? };
    match &options.clickhouse {
        Some(config) => {
            let store = connect_clickhouse(config).await?;
            summary.target = format!("ClickHouse {} at {}, database {}", store.version(), config.url, config.database);
            let stream = summary.stream.clone();
            summary.consume =
                consume_into_clickhouse(&mut consumer, &store, &stream, options.tenants, options.workers, publish_rejected).await?;
        }
        None => {
            summary.target = format!("embedded store in {}", options.data_dir.join("tables").display());
            let consume_started = Instant::now();
            let deliveries = drain(&mut consumer).await;
            let mut bytes = Vec::new();
            for delivery in &deliveries {
                bytes.extend_from_slice(&delivery.payload);
            }
            let replay_options = ReplayOptions {
                inputs: vec![InputFile { name: format!("nats:{}", summary.stream), bytes }],
                rejected: publish_rejected,
                tenants: options.tenants,
                data_dir: options.data_dir.clone(),
                workers: options.workers,
            };
            let replayed = tokio::task::block_in_place(|| replay(replay_options))?;
            summary.consume.messages = deliveries.len() as u64;
            futures::future::join_all(deliveries.into_iter().map(Delivery::ack)).await;
            summary.consume.seconds = consume_started.elapsed().as_secs_f64();
            summary.embedded = Some(replayed);
        }
    }
    Ok(summary)
}

/// Connects to ClickHouse, retrying for a minute while it is unreachable.
async fn connect_clickhouse(config: &ClickHouseConfig) -> Result<ClickHouseStore, ClickHouseError> {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut backoff = Backoff::new();
    loop {
        match ClickHouseStore::connect(config).await {
            Ok(store) => return Ok(store),
            Err(error) if Instant::now() < deadline => {
                tracing::warn!(error = %error, "ClickHouse not reachable; retrying");
                backoff.wait().await;
            }
            Err(error) => return Err(error),
        }
    }
}

/// Retries a ClickHouse call with backoff until it succeeds: while ClickHouse is away the
/// pipeline waits, acknowledges nothing, and catches up when it is back.
async fn until_done<T, F, Fut>(what: &str, mut call: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, ClickHouseError>>,
{
    let mut backoff = Backoff::new();
    loop {
        match call().await {
            Ok(value) => return value,
            Err(error) => {
                tracing::warn!(error = %error, what, "ClickHouse call failed; retrying");
                backoff.wait().await;
            }
        }
    }
}

/// Every message the consumer has now, fetched until none are pending.
async fn drain(consumer: &mut Consumer) -> Vec<Delivery> {
    let mut deliveries = Vec::new();
    loop {
        let fetched = consumer.fetch(FETCH_MESSAGES).await;
        if fetched.is_empty() {
            match consumer.pending().await {
                Ok(0) => return deliveries,
                Ok(_) => {}
                Err(error) => tracing::warn!(%error, "cannot read the consumer; retrying"),
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        deliveries.extend(fetched);
    }
}

fn restore(live: &mut LiveDataflow, stored: Vec<Event>) -> Result<(), RuntimeError> {
    let mut stored = stored.into_iter().map(|event| (0, Box::new(event))).peekable();
    while stored.peek().is_some() {
        let chunk: Vec<_> = stored.by_ref().take(RESTORE_EPOCH_EVENTS).collect();
        live.submit(chunk, 0)?;
        live.next_output()?;
    }
    Ok(())
}

/// Consumes until no message is pending, committing each epoch before acknowledging it.
pub async fn consume_into_clickhouse(
    consumer: &mut Consumer,
    store: &ClickHouseStore,
    stream: &str,
    tenants: Tenants,
    workers: usize,
    rejected_before: Vec<RejectedRow>,
) -> Result<ConsumeStats, ScaledError> {
    let started = Instant::now();
    let mut stats = ConsumeStats::default();
    let stored = until_done("load the committed events", || store.load_events()).await;
    stats.restored_events = stored.len() as u64;
    let mut live = LiveDataflow::start(workers, Arc::new(tenants))?;
    tokio::task::block_in_place(|| restore(&mut live, stored))?;
    stats.restore_seconds = started.elapsed().as_secs_f64();
    let mut epoch = until_done("read the last epoch", || store.last_epoch()).await + 1;

    if !rejected_before.is_empty() {
        let empty = TableSet::default();
        let commit = Commit { epoch, tables: &empty, rejected: &rejected_before, first_position: 0, last_position: 0 };
        stats.rows += until_done("commit rejected lines", || store.commit(&commit)).await.rows;
        stats.rejected += rejected_before.len() as u64;
        stats.commits += 1;
        epoch += 1;
    }

    let epoch_messages = epoch_messages();
    loop {
        let deliveries = consumer.fetch(epoch_messages).await;
        if deliveries.is_empty() {
            match consumer.pending().await {
                Ok(0) => break,
                Ok(_) => {}
                Err(error) => tracing::warn!(%error, "cannot read the consumer; retrying"),
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        }
        let received_at = now_ms();
        let mut events = Vec::new();
        let mut rejected = Vec::new();
        for delivery in &deliveries {
            let (parsed, bad) = parse_message(stream, delivery.sequence, &delivery.payload, received_at);
            stats.lines += (parsed.len() + bad.len()) as u64;
            events.extend(parsed);
            rejected.extend(bad);
        }
        let output = tokio::task::block_in_place(|| {
            live.submit(events, received_at)?;
            live.next_output()
        })?;
        rejected.extend(output.rejected);
        let first_position = deliveries.iter().map(|d| d.sequence).min().unwrap_or(0);
        let last_position = deliveries.iter().map(|d| d.sequence).max().unwrap_or(0);
        let commit = Commit { epoch, tables: &output.tables, rejected: &rejected, first_position, last_position };
        let written = until_done("commit an epoch", || store.commit(&commit)).await;
        futures::future::join_all(deliveries.into_iter().map(|delivery| {
            stats.messages += 1;
            delivery.ack()
        }))
        .await;
        tracing::debug!(epoch, events = output.tables.events.len(), rows = written.rows, "epoch committed");
        stats.accepted += output.tables.events.len() as u64;
        stats.duplicates += output.duplicates;
        stats.rejected += rejected.len() as u64;
        stats.rows += written.rows;
        stats.commits += 1;
        epoch += 1;
    }
    live.shutdown()?;
    stats.seconds = started.elapsed().as_secs_f64();
    for table in TABLES {
        let sql = format!("SELECT count() FROM {}.{table}", store.config().database);
        let count = until_done("count rows", || store.fetch(&sql, "TabSeparated", "count rows")).await;
        stats.table_rows.push((table.to_string(), String::from_utf8_lossy(&count).trim().parse().unwrap_or(0)));
    }
    Ok(stats)
}

fn rate(count: u64, seconds: f64) -> String {
    thousands(if seconds > 0.0 { (count as f64 / seconds) as u64 } else { 0 })
}

impl ScaledSummary {
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
