//! The embedded store as a replay's sink: the store's events are restored first, every epoch's
//! updates are gathered, and the tables are written once, consolidated, at the end.

use super::{EmbeddedStore, StoreError};
use crate::connector::{Commit, Committed, Restored, RuntimeError, Sink};
use convoflow_operators::{RejectedRow, TableSet};
use std::collections::HashSet;
use std::path::Path;
use std::time::Instant;

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
    pub fn open(data_dir: &Path, rejected: Vec<RejectedRow>) -> Result<Self, StoreError> {
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

    /// How long loading the stored events took.
    pub fn load_seconds(&self) -> f64 {
        self.load_seconds
    }

    /// How long consolidating and writing the tables took, at the end.
    pub fn write_seconds(&self) -> f64 {
        self.write_seconds
    }

    /// Rows per table as written, `rejected` second.
    pub fn take_table_rows(&mut self) -> Vec<(&'static str, usize)> {
        std::mem::take(&mut self.table_rows)
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
