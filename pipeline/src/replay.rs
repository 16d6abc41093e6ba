//! `convoflow replay`: adds the events of NDJSON files to the embedded store and rebuilds every
//! table. It is the runtime loop with a source that ends (the files, or a JetStream consumer)
//! and [`ParquetSink`]: the store's events are restored first, so tables always reflect every
//! event ever accepted and replaying the same input again changes nothing.

use crate::runtime::{restore, Commit, Committed, Quiet, Restored, Runtime, RuntimeError, Sink, Source};
use crate::source::{FileSource, InputFile};
use convoflow_events::Tenants;
use convoflow_operators::{Driver, RejectedRow, TableSet};
use convoflow_sinks::{DataDirLock, EmbeddedStore};
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub struct ReplayOptions {
    pub inputs: Vec<InputFile>,
    /// Rejections found before the dataflow (by a publisher), stored with the run's own.
    pub rejected: Vec<RejectedRow>,
    pub tenants: Tenants,
    pub data_dir: PathBuf,
    pub workers: usize,
}

/// Counts and timings of one replay.
#[derive(Debug, Default)]
pub struct ReplaySummary {
    /// Records the source read (lines of files, messages of a stream).
    pub records: u64,
    pub lines: u64,
    pub accepted: u64,
    pub duplicates: u64,
    pub rejected: u64,
    pub stored_before: u64,
    pub load_seconds: f64,
    pub dataflow_seconds: f64,
    pub write_seconds: f64,
    pub total_seconds: f64,
    pub table_rows: Vec<(&'static str, usize)>,
}

#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("cannot read input {path}")]
    Input { path: String, source: std::io::Error },
    #[error(transparent)]
    Store(#[from] convoflow_sinks::StoreError),
    #[error(transparent)]
    Driver(#[from] convoflow_operators::DriverError),
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
}

pub use convoflow_events::now_ms;

/// The embedded store as a replay's sink: every epoch's updates (consolidated within the epoch by
/// the workers) are gathered, and written to Parquet once, consolidated, at the end (only then
/// are they durable).
pub struct ParquetSink {
    store: EmbeddedStore,
    /// Each epoch's tables, put together once at the end (growing one set would copy it over
    /// and over, and hold up to twice its size).
    epochs: Vec<TableSet>,
    stored_rejected: Vec<RejectedRow>,
    rejected: Vec<RejectedRow>,
    load_seconds: f64,
    write_seconds: f64,
    /// Rows per table as written, `rejected` second.
    table_rows: Vec<(&'static str, usize)>,
}

impl ParquetSink {
    /// `rejected`: rejections found before the dataflow (by a publisher), stored with the run's.
    pub fn open(data_dir: &Path, rejected: Vec<RejectedRow>) -> Result<Self, ReplayError> {
        Ok(ParquetSink {
            store: EmbeddedStore::open(data_dir)?,
            epochs: Vec::new(),
            stored_rejected: Vec::new(),
            rejected,
            load_seconds: 0.0,
            write_seconds: 0.0,
            table_rows: Vec::new(),
        })
    }
}

impl Sink for ParquetSink {
    fn restore(&mut self, _input_id: Option<&str>) -> Result<Restored, RuntimeError> {
        let started = Instant::now();
        let events = self.store.load_events()?;
        self.stored_rejected = self.store.load_rejected()?;
        self.load_seconds = started.elapsed().as_secs_f64();
        tracing::info!(stored_events = events.len(), "replay loaded");
        Ok(Restored { events, position: 0 })
    }

    fn restored(&mut self, tables: TableSet) -> Result<(), RuntimeError> {
        self.epochs.push(tables);
        Ok(())
    }

    fn commit(&mut self, tables: TableSet, commit: Commit<'_>) -> Result<Committed, RuntimeError> {
        self.epochs.push(tables);
        self.rejected.extend_from_slice(commit.rejected);
        Ok(Committed { rows: 0, durable: None })
    }

    fn finish(&mut self, position: u64) -> Result<Option<u64>, RuntimeError> {
        let started = Instant::now();
        let mut tables = TableSet::concat(std::mem::take(&mut self.epochs));
        tables.consolidate_in_parallel();
        let rejected = merge_rejected(std::mem::take(&mut self.stored_rejected), std::mem::take(&mut self.rejected));
        self.store.write(&tables, &rejected)?;
        self.table_rows = tables.counts();
        self.table_rows.insert(1, ("rejected", rejected.len()));
        self.write_seconds = started.elapsed().as_secs_f64();
        Ok(Some(position))
    }
}

/// Replays `source` into the embedded store in `data_dir`, after the store's own events.
pub fn replay_source<S: Source>(
    source: S,
    rejected: Vec<RejectedRow>,
    tenants: Tenants,
    data_dir: &Path,
    workers: usize,
) -> Result<ReplaySummary, ReplayError> {
    let started = Instant::now();
    let _lock = DataDirLock::acquire(data_dir)?;
    let rejected_before_dataflow = rejected.len() as u64;
    let mut sink = ParquetSink::open(data_dir, rejected)?;
    let mut driver = Driver::start(workers, Arc::new(tenants))?;
    let (_, stats) = restore(&mut driver, &mut sink, &mut Quiet, None)?;
    let stop = Arc::new(AtomicBool::new(false));
    let runtime = Runtime { source, sink: &mut sink, observer: Quiet, driver, stop, spacing: Duration::ZERO };
    let (stats, _) = runtime.run(stats)?;
    let total_seconds = started.elapsed().as_secs_f64();
    Ok(ReplaySummary {
        records: stats.records,
        lines: stats.lines + rejected_before_dataflow,
        accepted: stats.accepted,
        duplicates: stats.duplicates,
        rejected: stats.rejected + rejected_before_dataflow,
        stored_before: stats.restored_events,
        load_seconds: sink.load_seconds,
        dataflow_seconds: total_seconds - sink.load_seconds - sink.write_seconds,
        write_seconds: sink.write_seconds,
        total_seconds,
        table_rows: sink.table_rows,
    })
}

/// Replays the input files (`convoflow replay --input …`).
pub fn replay(options: ReplayOptions) -> Result<ReplaySummary, ReplayError> {
    let source = FileSource::new(options.inputs, options.workers, now_ms());
    replay_source(source, options.rejected, options.tenants, &options.data_dir, options.workers)
}

fn display_name(path: &Path) -> String {
    path.file_name().map_or_else(|| path.display().to_string(), |name| name.to_string_lossy().into_owned())
}

/// Reads input files whole, named by their file names (as `rejected.source` shows them).
pub fn read_inputs(paths: &[PathBuf]) -> Result<Vec<InputFile>, ReplayError> {
    paths
        .iter()
        .map(|path| {
            let bytes = std::fs::read(path)
                .map_err(|source| ReplayError::Input { path: path.display().to_string(), source })?;
            Ok(InputFile { name: display_name(path), bytes })
        })
        .collect()
}

/// Stored rejections plus new ones; a rejection of the same input, from the same place, for the
/// same reason is kept once (with its first `received_at`), so replaying a file again leaves
/// `rejected` unchanged while identical bad lines elsewhere keep rows of their own.
fn merge_rejected(stored: Vec<RejectedRow>, new: Vec<RejectedRow>) -> Vec<RejectedRow> {
    let mut seen = HashSet::new();
    let mut merged = Vec::with_capacity(stored.len() + new.len());
    for row in stored.into_iter().chain(new) {
        if seen.insert((row.tenant_id.clone(), row.reason.clone(), row.raw.clone(), row.source.clone())) {
            merged.push(row);
        }
    }
    merged.sort_by(|a, b| (a.received_at, &a.source, &a.reason).cmp(&(b.received_at, &b.source, &b.reason)));
    merged
}

impl ReplaySummary {
    pub fn render(&self, data_dir: &Path) -> String {
        let rate = if self.total_seconds > 0.0 { self.lines as f64 / self.total_seconds } else { 0.0 };
        let mut out = format!(
            "replayed {} events in {:.2} s ({} events/s)\n  accepted    {:>12}\n  duplicates  {:>12}\n  rejected    {:>12}\n",
            thousands(self.lines),
            self.total_seconds,
            thousands(rate as u64),
            thousands(self.accepted),
            thousands(self.duplicates),
            thousands(self.rejected),
        );
        out.push_str(&format!(
            "  phases      load {:.2} s · parse + dataflow {:.2} s · write {:.2} s\n",
            self.load_seconds, self.dataflow_seconds, self.write_seconds
        ));
        out.push_str(&format!("tables in {}:\n", data_dir.join("tables").display()));
        for (table, rows) in &self.table_rows {
            out.push_str(&format!("  {table:<20} {:>12} rows\n", thousands(*rows as u64)));
        }
        if self.rejected > 0 {
            out.push_str("why rejected: convoflow sql \"SELECT reason, count(*) AS n FROM rejected GROUP BY reason ORDER BY n DESC\"\n");
        }
        out
    }
}

/// 1234567 → "1,234,567"
pub fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, ch) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(ch);
    }
    out
}
