//! The embedded deployment's processing loop, on a thread of its own: read what is durable on the
//! local log, run it through the dataflow as one epoch, apply the changes to the in-memory tables,
//! publish them on the live feed; snapshot the tables to Parquet now and then.
//!
//! On start, operator state is restored from the Parquet store's `events`, then the log is read
//! from the offset the last snapshot covers (`tables/checkpoint.json`) to its end; only then is
//! the process ready. Events the snapshot already holds come back as duplicates and change
//! nothing, so a crash between a snapshot and its checkpoint is harmless.

use crate::bus::local::{LocalLog, LogReader};
use crate::bus::parse_message;
use crate::replay::now_ms;
use crate::serve::ServeError;
use convoflow_api::{feed_epoch, FeedEpoch, SeenEvents, Telemetry};
use convoflow_events::{Event, Tenants};
use convoflow_operators::{EpochOutput, LiveDataflow};
use convoflow_sinks::{EmbeddedStore, LiveTables, TABLES};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::broadcast;

/// Most log bytes one epoch reads.
const EPOCH_BYTES: usize = 16 << 20;
/// Stored events per epoch while restoring.
const RESTORE_EPOCH_EVENTS: usize = 64 * 1024;

pub struct Runtime {
    pub data_dir: PathBuf,
    pub tenants: Arc<Tenants>,
    pub workers: usize,
    pub log: Arc<LocalLog>,
    pub tables: Arc<Mutex<LiveTables>>,
    pub feed: broadcast::Sender<Arc<FeedEpoch>>,
    pub seen: Arc<SeenEvents>,
    pub telemetry: Arc<Telemetry>,
    pub ready: Arc<AtomicBool>,
    pub stop: Arc<AtomicBool>,
    pub snapshot_interval: Duration,
}

#[derive(serde::Serialize, serde::Deserialize, Default)]
struct Checkpoint {
    /// The log offset up to which the snapshot holds every record.
    log_offset: u64,
}

fn checkpoint_path(data_dir: &Path) -> PathBuf {
    data_dir.join("tables").join("checkpoint.json")
}

fn read_checkpoint(data_dir: &Path) -> Checkpoint {
    std::fs::read(checkpoint_path(data_dir)).ok().and_then(|bytes| serde_json::from_slice(&bytes).ok()).unwrap_or_default()
}

fn write_checkpoint(data_dir: &Path, checkpoint: &Checkpoint) -> std::io::Result<()> {
    let path = checkpoint_path(data_dir);
    let partial = path.with_extension("json.partial");
    let text = serde_json::to_vec(checkpoint).unwrap_or_default();
    let file = std::fs::File::create(&partial)?;
    std::io::Write::write_all(&mut &file, &text)?;
    file.sync_all()?;
    std::fs::rename(&partial, &path)?;
    std::fs::File::open(path.parent().unwrap_or(Path::new(".")))?.sync_all()
}

impl Runtime {
    /// Runs until `stop` is set, then takes a last snapshot. Errors here end the process.
    pub fn run(self, handle: tokio::runtime::Handle) -> Result<(), ServeError> {
        let started = Instant::now();
        let store = EmbeddedStore::open(&self.data_dir)?;
        let mut live = LiveDataflow::start(self.workers, self.tenants.clone())?;
        let stored = store.load_events()?;
        let restored = stored.len();
        self.restore(&mut live, stored)?;
        let rejected = store.load_rejected()?;
        self.lock_tables().apply(Default::default(), &rejected)?;
        let checkpoint = read_checkpoint(&self.data_dir);
        let mut reader = self.log.reader(checkpoint.log_offset)?;
        let mut durable = self.log.durable_end();
        // Catch up with what the log held at start, then serve.
        let start_end = *durable.borrow_and_update();
        if checkpoint.log_offset > start_end {
            return Err(ServeError::Snapshot(format!(
                "the snapshot covers the event log up to byte {} but the log ends at byte {start_end}: the log was cut or replaced; \
                 restore it, or remove tables/checkpoint.json to rebuild from the snapshot alone",
                checkpoint.log_offset
            )));
        }
        while reader.offset() < start_end {
            self.epoch(&mut live, &mut reader, start_end, true)?;
        }
        self.ready.store(true, Ordering::SeqCst);
        tracing::info!(
            restored_events = restored,
            log_offset = checkpoint.log_offset,
            log_end = start_end,
            seconds = started.elapsed().as_secs_f64(),
            "state restored; ready"
        );
        let mut snapshots =
            Snapshots { store: Arc::new(store), data_dir: self.data_dir.clone(), covered: checkpoint.log_offset, writing: None, last: Instant::now() };
        loop {
            // Checked after every epoch too, so a steady stream of input cannot hold snapshots off.
            if snapshots.last.elapsed() >= self.snapshot_interval {
                snapshots.start(&self.tables, reader.offset())?;
            }
            let end = *durable.borrow_and_update();
            if reader.offset() < end {
                self.epoch(&mut live, &mut reader, end, false)?;
                continue;
            }
            if self.stop.load(Ordering::SeqCst) {
                break;
            }
            // Wake on the next group commit, or now and then to check `stop` and the snapshot timer.
            let _ = handle.block_on(async { tokio::time::timeout(Duration::from_millis(200), durable.changed()).await });
        }
        snapshots.finish()?;
        snapshots.start(&self.tables, reader.offset())?;
        snapshots.finish()?;
        live.shutdown()?;
        Ok(())
    }

    fn lock_tables(&self) -> std::sync::MutexGuard<'_, LiveTables> {
        self.tables.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn restore(&self, live: &mut LiveDataflow, stored: Vec<Event>) -> Result<(), ServeError> {
        let mut stored = stored.into_iter().map(|event| (0, Box::new(event))).peekable();
        while stored.peek().is_some() {
            let chunk: Vec<_> = stored.by_ref().take(RESTORE_EPOCH_EVENTS).collect();
            live.submit(chunk, 0)?;
            let output = live.next_output()?;
            self.seen.remember(output.tables.events.iter().map(|event| &**event));
            self.lock_tables().apply(output.tables, &output.rejected)?;
        }
        Ok(())
    }

    /// Reads the next records up to `end` as one epoch and applies its changes.
    fn epoch(&self, live: &mut LiveDataflow, reader: &mut LogReader, end: u64, catching_up: bool) -> Result<(), ServeError> {
        let started = Instant::now();
        let records = reader.read_until(end, EPOCH_BYTES)?;
        let received_at = now_ms();
        let mut events = Vec::new();
        let mut rejected = Vec::new();
        for record in &records {
            let (record_events, record_rejected) = parse_message("log", record.offset, &record.payload, received_at);
            events.extend(record_events);
            rejected.extend(record_rejected);
        }
        live.submit(events, received_at)?;
        let EpochOutput { epoch, tables, rejected: conflicts, duplicates: _ } = live.next_output()?;
        rejected.extend(conflicts);
        if catching_up {
            // Before the API was up these events were never claimed at ingest.
            self.seen.remember(tables.events.iter().map(|event| &**event));
        }
        let processed = tables.events.len() as u64;
        let feed = if self.feed.receiver_count() > 0 { Some(feed_epoch(epoch, &tables, &rejected)?) } else { None };
        self.lock_tables().apply(tables, &rejected)?;
        if let Some(feed) = feed {
            let _ = self.feed.send(Arc::new(feed));
        }
        let telemetry = &self.telemetry;
        telemetry.events_processed.fetch_add(processed, Ordering::Relaxed);
        telemetry.epochs.fetch_add(1, Ordering::Relaxed);
        telemetry.lag.store(end.saturating_sub(reader.offset()), Ordering::Relaxed);
        telemetry.observe_epoch(started.elapsed().as_secs_f64());
        tracing::debug!(epoch, records = records.len(), events = processed, seconds = started.elapsed().as_secs_f64(), "epoch applied");
        Ok(())
    }
}

/// Parquet snapshots, written on a thread of their own so epochs go on meanwhile.
struct Snapshots {
    store: Arc<EmbeddedStore>,
    data_dir: PathBuf,
    /// The log offset the last finished snapshot covers.
    covered: u64,
    writing: Option<std::thread::JoinHandle<Result<u64, ServeError>>>,
    last: Instant,
}

impl Snapshots {
    /// Starts a snapshot covering the log up to `log_offset` (what the tables hold now); does
    /// nothing while one is being written or when nothing changed. The writer thread takes the
    /// tables one at a time, so epochs go on between them: `events` (taken after `log_offset`)
    /// may hold more than the checkpoint says, which a restart absorbs as duplicates.
    fn start(&mut self, tables: &Arc<Mutex<LiveTables>>, log_offset: u64) -> Result<(), ServeError> {
        if self.writing.as_ref().is_some_and(|writing| !writing.is_finished()) {
            return Ok(());
        }
        self.finish()?;
        self.last = Instant::now();
        if log_offset == self.covered {
            return Ok(());
        }
        let (store, data_dir, tables) = (self.store.clone(), self.data_dir.clone(), tables.clone());
        self.writing = Some(std::thread::spawn(move || {
            let started = Instant::now();
            let mut batches = Vec::with_capacity(TABLES.len());
            for &table in TABLES {
                batches.push(tables.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).table_snapshot(table)?);
            }
            store.write_batches(&batches)?;
            write_checkpoint(&data_dir, &Checkpoint { log_offset })?;
            tracing::info!(log_offset, seconds = started.elapsed().as_secs_f64(), "tables snapshotted to Parquet");
            Ok(log_offset)
        }));
        Ok(())
    }

    /// Waits for the snapshot being written, if any.
    fn finish(&mut self) -> Result<(), ServeError> {
        if let Some(writing) = self.writing.take() {
            let covered = writing.join().map_err(|_| ServeError::Snapshot("the snapshot writer panicked".to_owned()))??;
            self.covered = covered;
        }
        Ok(())
    }
}
