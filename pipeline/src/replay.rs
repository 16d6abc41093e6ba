//! `convoflow replay`: adds the events of NDJSON files to the embedded store and rebuilds every
//! table. The store's events are fed first (epoch 0) to restore operator state, so tables always
//! reflect every event ever accepted and replaying the same input again changes nothing.

use crate::source::{worker_sources, InputFile};
use convoflow_events::Tenants;
use convoflow_operators::{run, RejectedRow};
use convoflow_sinks::{DataDirLock, EmbeddedStore};
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

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
    Runtime(#[from] convoflow_operators::DriverError),
}

pub use convoflow_events::now_ms;

pub fn replay(options: ReplayOptions) -> Result<ReplaySummary, ReplayError> {
    let started = Instant::now();
    let received_at = now_ms();
    let _lock = DataDirLock::acquire(&options.data_dir)?;
    let store = EmbeddedStore::open(&options.data_dir)?;
    let stored = store.load_events()?;
    let stored_rejected = store.load_rejected()?;
    let files = options.inputs;
    let stored_before = stored.len() as u64;
    let load_seconds = started.elapsed().as_secs_f64();
    tracing::info!(stored_events = stored_before, input_files = files.len(), "replay loaded");

    let dataflow_started = Instant::now();
    let sources = worker_sources(files, stored, options.workers, received_at);
    let sources = Mutex::new(sources.into_iter().map(Some).collect::<Vec<_>>());
    let output = run(options.workers, Arc::new(options.tenants), received_at, move |index, _| {
        let mut sources = sources.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        sources.get_mut(index).and_then(Option::take).into_iter().flatten()
    })?;
    let dataflow_seconds = dataflow_started.elapsed().as_secs_f64();

    let write_started = Instant::now();
    let rejected_before_dataflow = options.rejected.len() as u64;
    let new_rejected = output.rejected.len() as u64 + rejected_before_dataflow;
    let mut found = options.rejected;
    found.extend(output.rejected);
    let rejected = merge_rejected(stored_rejected, found);
    store.write(&output.tables, &rejected)?;
    let write_seconds = write_started.elapsed().as_secs_f64();

    let mut table_rows = output.tables.counts();
    table_rows.insert(1, ("rejected", rejected.len()));
    Ok(ReplaySummary {
        lines: output.lines + rejected_before_dataflow,
        accepted: output.tables.events.len() as u64 - stored_before,
        duplicates: output.duplicates,
        rejected: new_rejected,
        stored_before,
        load_seconds,
        dataflow_seconds,
        write_seconds,
        total_seconds: started.elapsed().as_secs_f64(),
        table_rows,
    })
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
