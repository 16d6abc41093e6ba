//! `serve`'s embedded store as the runtime's sink: every derived table held in memory as Arrow
//! ([`MemoryTables`]), kept current epoch by epoch, read by SQL through [`MemoryReader`] and
//! snapshotted to Parquet now and then, on a thread of its own. `events` stays in the store's
//! segments; only those since the last snapshot are held, and each snapshot adds them as a
//! segment.
//!
//! The input position the tables reach is kept in `tables/checkpoint.json` beside the snapshot.
//! After a restart the runtime reads the input from there; events already stored come again as
//! duplicates and change nothing. An epoch is durable only with the next snapshot.
//!
//! Just before a snapshot takes its tables, the operator state is saved (`data/state`, a new
//! generation; see `Sink::state_due`), and the snapshot names that generation in
//! `tables/generation` once it is whole. A restart then resumes from the state instead of
//! re-feeding every stored event: every table of the snapshot is taken at the same point as the
//! state, so a replay resumed from it can apply its changes to those tables.

use super::{lock_tables, tables_at, EmbeddedStore, MemoryReader, MemoryTables};
use crate::connector::{Commit, Committed, Restored, RuntimeError, SavedState, Sink, StoredEvents};
use convoflow_api::Reader;
use convoflow_operators::{Resume, TableSet};
use datafusion::execution::runtime_env::RuntimeEnv;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub struct MemorySink {
    tables: Arc<Mutex<MemoryTables>>,
    snapshots: Snapshots,
    reader: Arc<MemoryReader>,
}

impl MemorySink {
    /// The store in `data_dir`, snapshotted every `interval`; its reader's queries share the
    /// memory pool of `runtime` (`convoflow_queries::query_runtime`).
    pub fn open(data_dir: &Path, interval: Duration, runtime: Arc<RuntimeEnv>) -> Result<Self, RuntimeError> {
        let tables = Arc::new(Mutex::new(MemoryTables::default()));
        let snapshots = Snapshots {
            store: Arc::new(EmbeddedStore::open(data_dir)?),
            data_dir: data_dir.to_owned(),
            interval,
            covered: 0,
            writing: None,
            last: Instant::now(),
            input: String::new(),
            generation: None,
        };
        let reader = Arc::new(MemoryReader { tables: tables.clone(), runtime, tables_dir: data_dir.join("tables") });
        Ok(MemorySink { tables, snapshots, reader })
    }
}

impl Sink for MemorySink {
    /// The stored events (left in the store's segments, which queries read) and the position
    /// reached in `input`.
    fn restore(&mut self, input: Option<&str>) -> Result<Restored, RuntimeError> {
        let snapshots = &mut self.snapshots;
        let (paths, rows) = snapshots.store.event_files()?;
        let rejected = snapshots.store.load_rejected()?;
        lock_tables(&self.tables).apply(TableSet::default(), &rejected)?;
        let checkpoint = read_checkpoint(&snapshots.data_dir);
        let input = input.unwrap_or_default();
        // A snapshot of another input's tables is still right; only its position is not.
        // (Checkpoints without an input were all of a local log.)
        let same_input = checkpoint.input.as_deref().map_or(input.starts_with("log:"), |id| id == input);
        let position = if same_input { checkpoint.position } else { 0 };
        snapshots.input = input.to_owned();
        snapshots.covered = position;
        let store = &snapshots.store;
        let state = store.generation().map(|generation| SavedState { dir: store.state_dir(), generation });
        Ok(Restored { events: StoredEvents::Files { paths, rows }, position, state, since_state: Vec::new() })
    }

    /// The snapshot holds the derived tables as they were when the state was saved: a resumed
    /// state gives only what later epochs change.
    fn resume(&self) -> Resume {
        Resume::Changes
    }

    /// Loads the snapshot's derived tables, the ones the resumed state derived.
    fn resumed(&mut self) -> Result<(), RuntimeError> {
        let started = Instant::now();
        let mut rows = 0;
        for (table, batches) in self.snapshots.store.read_derived()? {
            rows += batches.iter().map(|batch| batch.num_rows()).sum::<usize>();
            lock_tables(&self.tables).load(table, batches)?;
        }
        tracing::info!(rows, seconds = started.elapsed().as_secs_f64(), "derived tables loaded from the snapshot");
        Ok(())
    }

    /// Takes in the tables' rows derived while restoring (the stored events are held already).
    fn restored(&mut self, mut tables: TableSet) -> Result<(), RuntimeError> {
        tables.events.clear();
        lock_tables(&self.tables).apply(tables, &[])?;
        Ok(())
    }

    /// Applies one epoch's changes; they are durable only with the next snapshot.
    fn commit(&mut self, tables: TableSet, commit: Commit<'_>) -> Result<Committed, RuntimeError> {
        lock_tables(&self.tables).apply(tables, commit.rejected)?;
        Ok(Committed { rows: 0, durable: None })
    }

    /// After an epoch: starts a snapshot when one is due. Checked after every epoch too, so a
    /// steady stream of input cannot hold snapshots off.
    fn tick(&mut self, position: u64) -> Result<Option<u64>, RuntimeError> {
        if self.snapshots.due() {
            self.snapshots.start(&self.tables, position)?;
        }
        Ok(None)
    }

    /// With each snapshot that will be written (one is due and the tables changed, or the last).
    fn state_due(&mut self, position: u64, ending: bool) -> Result<Option<SavedState>, RuntimeError> {
        let snapshots = &mut self.snapshots;
        if !ending && !snapshots.due() {
            return Ok(None);
        }
        // A snapshot that has just finished tells how far it reached.
        snapshots.finish()?;
        if position == snapshots.covered {
            return Ok(None);
        }
        let generation = EmbeddedStore::new_generation();
        snapshots.generation = Some(generation.clone());
        Ok(Some(SavedState { dir: snapshots.store.state_dir(), generation }))
    }

    /// At shutdown: a last snapshot holding everything up to `position`.
    fn finish(&mut self, position: u64) -> Result<Option<u64>, RuntimeError> {
        self.snapshots.finish()?;
        self.snapshots.start(&self.tables, position)?;
        self.snapshots.finish()?;
        Ok(Some(position))
    }

    fn reader(&self) -> Option<Arc<dyn Reader>> {
        Some(self.reader.clone())
    }
}

#[derive(serde::Serialize, serde::Deserialize, Default)]
struct Checkpoint {
    /// Which input `position` is in (`log:<id>`, `nats:<stream>:<created>`); absent in older checkpoints,
    /// which were all of the local log.
    #[serde(default)]
    input: Option<String>,
    /// How far into the input the snapshot holds every record.
    #[serde(alias = "log_offset")]
    position: u64,
}

fn checkpoint_path(data_dir: &Path) -> PathBuf {
    data_dir.join("tables").join("checkpoint.json")
}

fn read_checkpoint(data_dir: &Path) -> Checkpoint {
    std::fs::read(checkpoint_path(data_dir))
        .ok()
        .and_then(|bytes| serde_json::from_slice(&bytes).ok())
        .unwrap_or_default()
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

/// Parquet snapshots, written on a thread of their own so epochs go on meanwhile.
struct Snapshots {
    store: Arc<EmbeddedStore>,
    data_dir: PathBuf,
    interval: Duration,
    input: String,
    /// The input position the last finished snapshot covers.
    covered: u64,
    writing: Option<std::thread::JoinHandle<Result<u64, RuntimeError>>>,
    last: Instant,
    /// The operator state saved for the next snapshot, which names it once written.
    generation: Option<String>,
}

impl Snapshots {
    /// The interval has passed and no snapshot is being written.
    fn due(&self) -> bool {
        self.last.elapsed() >= self.interval && self.writing.as_ref().is_none_or(|writing| writing.is_finished())
    }

    /// Starts a snapshot covering the input up to `position` (what the tables hold now); does
    /// nothing while one is being written or when nothing changed. Every table is taken now
    /// ([`tables_at`]: `rejected` shared, the changed derived tables' rows copied, the events
    /// since the last snapshot as its new segment), so
    /// they hold exactly the input up to `position`, as the state saved just before does; the
    /// writer thread turns them into batches while epochs go on.
    fn start(&mut self, tables: &Arc<Mutex<MemoryTables>>, position: u64) -> Result<(), RuntimeError> {
        if self.writing.as_ref().is_some_and(|writing| !writing.is_finished()) {
            return Ok(());
        }
        self.finish()?;
        self.last = Instant::now();
        if position == self.covered {
            return Ok(());
        }
        let (store, data_dir) = (self.store.clone(), self.data_dir.clone());
        let (input, generation) = (self.input.clone(), self.generation.take());
        let now = tables_at(tables);
        let tables = tables.clone();
        self.writing = Some(std::thread::spawn(move || {
            convoflow_api::lower_priority();
            let started = Instant::now();
            let prepared = store.prepare(&now.batches()?)?;
            // Under the lock a query lists `events`' segments and copies the events not in them.
            let mut held = lock_tables(&tables);
            store.install(prepared)?;
            held.events_saved();
            drop(held);
            write_checkpoint(&data_dir, &Checkpoint { input: Some(input), position })
                .map_err(|source| RuntimeError::Io { what: "write the snapshot's checkpoint".to_owned(), source })?;
            if let Some(generation) = generation {
                store.set_generation(&generation)?;
            }
            store.merge_events()?;
            tracing::info!(position, seconds = started.elapsed().as_secs_f64(), "tables snapshotted to Parquet");
            Ok(position)
        }));
        Ok(())
    }

    /// Waits for the snapshot being written, if any.
    fn finish(&mut self) -> Result<(), RuntimeError> {
        if let Some(writing) = self.writing.take() {
            self.covered =
                writing.join().map_err(|_| RuntimeError::Snapshot("the snapshot writer panicked".to_owned()))??;
        }
        Ok(())
    }
}
