//! What a connector is to the runtime loop (`convoflow_pipeline::runtime`): a [`Source`] of
//! input addressed by position, and a [`Sink`] that restores state and commits epochs. Each
//! connector folder implements one or both; the loop is written once against these traits.

use convoflow_api::Reader;
use convoflow_operators::dedup::Positioned;
use convoflow_operators::{DriverError, RejectedRow, Resume, TableSet};
use datafusion::arrow::record_batch::RecordBatch;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error(transparent)]
    Driver(#[from] DriverError),
    #[error(transparent)]
    Store(#[from] crate::embedded::StoreError),
    #[error(transparent)]
    ClickHouse(#[from] crate::clickhouse::ClickHouseError),
    #[error(transparent)]
    Log(#[from] crate::log::LogError),
    #[error(transparent)]
    JetStream(#[from] crate::jetstream::JetStreamError),
    #[error("cannot convert tables to Arrow: {0}")]
    Arrow(#[from] datafusion::arrow::error::ArrowError),
    #[error("{what}: {source}")]
    Io { what: String, source: std::io::Error },
    #[error("cannot read the stored events: {0}")]
    Stored(datafusion::arrow::error::ArrowError),
    #[error("snapshot: {0}")]
    Snapshot(String),
    #[error("input: {0}")]
    Input(String),
}

/// One read: parsed events with their input positions, the lines that did not parse, and where
/// in the input it lies.
#[derive(Default)]
pub struct Batch {
    pub events: Vec<Positioned>,
    pub rejected: Vec<RejectedRow>,
    /// Records (log records, stream messages) read.
    pub records: u64,
    /// The first and last record positions, for the commit's bookkeeping.
    pub first: u64,
    pub last: u64,
}

pub enum Read {
    Batch(Batch),
    /// Nothing came within the wait.
    Idle,
    /// A finite source has nothing more.
    End,
}

/// Input addressed by position (a log offset, a stream sequence, a count of reads).
pub trait Source {
    /// The input whose position a sink records with its tables, or `None` when the source keeps
    /// its own place (a durable consumer, by acknowledgements).
    fn input_id(&self) -> Option<&str>;
    /// The next records past [`Source::position`], parsed; waits up to `wait` when there are none.
    fn read(&mut self, wait: Duration) -> Result<Read, RuntimeError>;
    /// How far has been read.
    fn position(&self) -> u64;
    /// Where the input ends now (what must be read before the caller is ready, or before it stops).
    fn end(&mut self) -> Result<u64, RuntimeError>;
    /// How far behind the input's end the reading is, in the source's units.
    fn lag(&self) -> u64 {
        0
    }
    /// The sink holds everything read up to `position` durably.
    fn acknowledge(&mut self, _position: u64) -> Result<(), RuntimeError> {
        Ok(())
    }
}

/// The events a sink holds: read only if they are needed (re-fed when no state is resumed, or
/// shown to an observer that asks for them).
pub enum StoredEvents {
    /// Held in memory already, as the `events` table's Arrow batches.
    Batches(Vec<RecordBatch>),
    /// The embedded store's `events` files, and how many events they hold.
    Files { paths: Vec<PathBuf>, rows: u64 },
}

impl StoredEvents {
    pub fn rows(&self) -> u64 {
        match self {
            StoredEvents::Batches(batches) => batches.iter().map(|batch| batch.num_rows() as u64).sum(),
            StoredEvents::Files { rows, .. } => *rows,
        }
    }

    /// The `events` table's batches, read one after another as they are asked for.
    pub fn batches(self) -> Box<dyn Iterator<Item = Result<RecordBatch, RuntimeError>>> {
        match self {
            StoredEvents::Batches(batches) => Box::new(batches.into_iter().map(Ok)),
            StoredEvents::Files { paths, .. } => {
                Box::new(crate::embedded::read_events(paths).map(|batch| batch.map_err(RuntimeError::from)))
            }
        }
    }
}

/// What a sink holds at start.
pub struct Restored {
    /// The stored events (the sink holds them already).
    pub events: StoredEvents,
    /// How far into the source's input the stored tables reach.
    pub position: u64,
    /// Operator state saved with exactly these tables: resumed from instead of re-feeding
    /// `events`, unless it cannot be loaded.
    pub state: Option<SavedState>,
    /// Stored events the state does not cover (ClickHouse saves state less often than it
    /// commits): fed through the driver after resuming. Empty when `state` is `None`.
    pub since_state: Vec<RecordBatch>,
}

/// Operator state beside a sink's tables (`convoflow_operators::state`): where, and which.
#[derive(Clone, Debug)]
pub struct SavedState {
    pub dir: PathBuf,
    pub generation: String,
}

/// One epoch's bookkeeping, beside its tables.
pub struct Commit<'a> {
    /// The driver's epoch number.
    pub epoch: u64,
    pub rejected: &'a [RejectedRow],
    /// The first and last record positions read, and the position the epoch takes the tables to.
    pub first: u64,
    pub last: u64,
    pub position: u64,
    pub input_id: Option<&'a str>,
}

/// Where epochs go, and where state comes back from.
pub trait Sink {
    fn restore(&mut self, input_id: Option<&str>) -> Result<Restored, RuntimeError>;
    /// Takes the rows derived while restoring; `tables.events` are stored events it holds already.
    fn restored(&mut self, tables: TableSet) -> Result<(), RuntimeError>;
    /// How a saved state is resumed for this sink: with every derived row at epoch 0
    /// ([`Resume::Rows`]: it holds its tables in memory and was given none), or with only what
    /// later epochs change ([`Resume::Changes`]: it keeps its derived tables, so nothing but the
    /// keys those epochs touch is read from the state).
    fn resume(&self) -> Resume {
        Resume::Rows
    }
    /// The saved state was resumed, as [`Sink::resume`] said (else the events were re-fed): a
    /// sink that resumes [`Resume::Changes`] and holds its tables in memory loads them now.
    fn resumed(&mut self) -> Result<(), RuntimeError> {
        Ok(())
    }
    /// Stores one epoch's consolidated changes.
    fn commit(&mut self, tables: TableSet, commit: Commit<'_>) -> Result<Committed, RuntimeError>;
    /// Between epochs (a snapshot when one is due); returns a position now held durably, if any.
    fn tick(&mut self, _position: u64) -> Result<Option<u64>, RuntimeError> {
        Ok(None)
    }
    /// Asked between epochs (`ending` false, just before [`Sink::tick`]) and once before
    /// [`Sink::finish`] (`ending` true); `position` is how far the commits will reach once every
    /// finished epoch is committed. Where to save the operator state now, when the sink's next
    /// write (that tick's snapshot, or the finish) ties its tables to it; the runtime then commits
    /// every finished epoch first, so the state saved is of exactly what the sink holds. `None`:
    /// no state now (a sink that never keeps any restores by re-feeding its events).
    fn state_due(&mut self, _position: u64, _ending: bool) -> Result<Option<SavedState>, RuntimeError> {
        Ok(None)
    }
    /// Asked between epochs with the events fed through the dataflow so far (re-fed, then
    /// accepted from the input): where to save the operator state
    /// now, while a long input is read, so that the keys touched so far leave memory (a save
    /// drops them). Tied to no tables, so [`Sink::state_due`] must name the same place and
    /// generation, which the last save then replaces. `None` (the default): touched keys stay in
    /// memory until the save `state_due` asks for.
    fn spill(&mut self, _accepted: u64) -> Option<SavedState> {
        None
    }
    /// At the end (a last snapshot); returns the position held durably, if any.
    fn finish(&mut self, position: u64) -> Result<Option<u64>, RuntimeError>;
    /// What answers SQL over the tables while the sink runs (`None`: they are read after the run,
    /// as `convoflow sql` reads the Parquet files a replay wrote).
    fn reader(&self) -> Option<Arc<dyn Reader>> {
        None
    }
}

pub struct Committed {
    pub rows: u64,
    /// The input position held durably now, if the commit made it so.
    pub durable: Option<u64>,
}

/// `serve` chooses its source at start (the local log or JetStream).
impl Source for Box<dyn Source + Send> {
    fn input_id(&self) -> Option<&str> {
        (**self).input_id()
    }
    fn read(&mut self, wait: Duration) -> Result<Read, RuntimeError> {
        (**self).read(wait)
    }
    fn position(&self) -> u64 {
        (**self).position()
    }
    fn end(&mut self) -> Result<u64, RuntimeError> {
        (**self).end()
    }
    fn lag(&self) -> u64 {
        (**self).lag()
    }
    fn acknowledge(&mut self, position: u64) -> Result<(), RuntimeError> {
        (**self).acknowledge(position)
    }
}

/// `serve` chooses its sink at start (the embedded store or ClickHouse).
impl Sink for Box<dyn Sink + Send> {
    fn restore(&mut self, input_id: Option<&str>) -> Result<Restored, RuntimeError> {
        (**self).restore(input_id)
    }
    fn restored(&mut self, tables: TableSet) -> Result<(), RuntimeError> {
        (**self).restored(tables)
    }
    fn resume(&self) -> Resume {
        (**self).resume()
    }
    fn resumed(&mut self) -> Result<(), RuntimeError> {
        (**self).resumed()
    }
    fn commit(&mut self, tables: TableSet, commit: Commit<'_>) -> Result<Committed, RuntimeError> {
        (**self).commit(tables, commit)
    }
    fn tick(&mut self, position: u64) -> Result<Option<u64>, RuntimeError> {
        (**self).tick(position)
    }
    fn state_due(&mut self, position: u64, ending: bool) -> Result<Option<SavedState>, RuntimeError> {
        (**self).state_due(position, ending)
    }
    fn spill(&mut self, accepted: u64) -> Option<SavedState> {
        (**self).spill(accepted)
    }
    fn finish(&mut self, position: u64) -> Result<Option<u64>, RuntimeError> {
        (**self).finish(position)
    }
    fn reader(&self) -> Option<Arc<dyn Reader>> {
        (**self).reader()
    }
}
