//! `convoflow replay`: adds the events of NDJSON files to the embedded store and rebuilds every
//! table. It is the runtime loop with a source that ends (the files, or a JetStream consumer)
//! and [`ParquetSink`]: the store's events are restored first, so tables always reflect every
//! event ever accepted and replaying the same input again changes nothing.

use crate::runtime::{restore, Quiet, Runtime};
use convoflow_connectors::embedded::{DataDirLock, ParquetSink, StoreError};
use convoflow_connectors::file::{FileSource, InputFile};
use convoflow_connectors::{RuntimeError, Source};
use convoflow_events::Tenants;
use convoflow_operators::RejectedRow;
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
    /// Events between saves of the operator state on the way (`ParquetSink::state_every`).
    pub state_every: u64,
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
    /// The stored events' operator state was resumed from the state saved with the tables (else
    /// they were re-fed through the dataflow).
    pub resumed: bool,
    pub load_seconds: f64,
    /// Resuming or re-feeding the stored events, after loading them.
    pub restore_seconds: f64,
    pub save_seconds: f64,
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
    Store(#[from] StoreError),
    #[error(transparent)]
    Driver(#[from] convoflow_operators::DriverError),
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
}

pub use convoflow_events::now_ms;

/// Replays `source` into the embedded store in `data_dir`, after the store's own events.
pub fn replay_source<S: Source>(
    source: S,
    rejected: Vec<RejectedRow>,
    tenants: Tenants,
    data_dir: &Path,
    workers: usize,
    state_every: u64,
) -> Result<ReplaySummary, ReplayError> {
    let started = Instant::now();
    let _lock = DataDirLock::acquire(data_dir)?;
    let rejected_before_dataflow = rejected.len() as u64;
    let mut sink = ParquetSink::open(data_dir, rejected)?.state_every(state_every);
    let (driver, _, stats) = restore(workers, Arc::new(tenants), &mut sink, &mut Quiet, None)?;
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
        resumed: stats.resumed,
        load_seconds: sink.load_seconds(),
        restore_seconds: stats.restore_seconds - sink.load_seconds(),
        save_seconds: stats.save_seconds,
        dataflow_seconds: total_seconds - stats.restore_seconds - stats.save_seconds - sink.write_seconds(),
        write_seconds: sink.write_seconds(),
        total_seconds,
        table_rows: sink.take_table_rows(),
    })
}

/// Replays the input files (`convoflow replay --input …`).
pub fn replay(options: ReplayOptions) -> Result<ReplaySummary, ReplayError> {
    let source = FileSource::new(options.inputs, options.workers, now_ms());
    replay_source(source, options.rejected, options.tenants, &options.data_dir, options.workers, options.state_every)
}

fn display_name(path: &Path) -> String {
    path.file_name().map_or_else(|| path.display().to_string(), |name| name.to_string_lossy().into_owned())
}

/// Opens the input files, named by their file names (as `rejected.source` shows them); each is
/// read as the replay needs its lines.
pub fn read_inputs(paths: &[PathBuf]) -> Result<Vec<InputFile>, ReplayError> {
    paths
        .iter()
        .map(|path| {
            InputFile::open(display_name(path), path)
                .map_err(|source| ReplayError::Input { path: path.display().to_string(), source })
        })
        .collect()
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
        let restore = match (self.stored_before, self.resumed) {
            (0, _) => String::new(),
            (_, true) => format!("resume state {:.2} s · ", self.restore_seconds),
            (stored, false) => format!("re-feed {} stored {:.2} s · ", thousands(stored), self.restore_seconds),
        };
        out.push_str(&format!(
            "  phases      load {:.2} s · {restore}parse + dataflow {:.2} s · save state {:.2} s · write {:.2} s\n",
            self.load_seconds, self.dataflow_seconds, self.save_seconds, self.write_seconds
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
