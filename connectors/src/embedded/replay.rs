//! The embedded store as a replay's sink: every epoch's updates are gathered, and the tables are
//! written once, consolidated, at the end. Each epoch's new events go into a new `events` segment
//! as they come; the stored ones are read only to be re-fed, when no saved state is resumed.
//!
//! Operator state is saved before that write (`<data>/state`, a new generation) and the tables are
//! tied to it once written (see `store.rs`), so the next replay resumes from it instead of
//! re-feeding every stored event through the dataflow. A resumed replay gathers only what its
//! epochs change, and applies that to the stored tables (`EmbeddedStore::write_changes`): a table
//! it does not change keeps its file.

use super::{EmbeddedStore, StoreError, TableWriter};
use crate::connector::{Commit, Committed, Restored, RuntimeError, SavedState, Sink, StoredEvents};
use convoflow_events::Event;
use convoflow_operators::{RejectedRow, Resume, TableSet};
use convoflow_schema::batches;
use std::collections::HashSet;
use std::path::Path;
use std::time::Instant;

/// The embedded store as a replay's sink: every epoch's updates are gathered, consolidated, and
/// written to Parquet once at the end (only then are they durable).
///
/// Epochs are gathered as a binary counter of consolidated tables: `levels[i]` holds 2^i epochs
/// or nothing, and an epoch that finds a level full merges with it and carries on up. So each row
/// takes part in about log2(epochs) linear merges, done while the workers run the next epoch,
/// and a row's retraction cancels it as soon as the two meet: what is held stays close to the
/// tables' final size, where keeping every epoch's updates to the end held each changed row once
/// per epoch it changed in, and sorted them all at the end.
pub struct ParquetSink {
    store: EmbeddedStore,
    levels: Vec<Option<TableSet>>,
    /// The next `events` segment: each epoch's new events as it is gathered, encoded as they come
    /// (`None` once written).
    events: Option<TableWriter>,
    /// Events in the store's segments at the start.
    stored_events: u64,
    stored_rejected: Vec<RejectedRow>,
    rejected: Vec<RejectedRow>,
    load_seconds: f64,
    write_seconds: f64,
    /// Rows per table as written, `rejected` second.
    table_rows: Vec<(&'static str, usize)>,
    /// The generation of the operator state saved for the tables `finish` writes (and of what is
    /// saved on the way, to free memory).
    generation: String,
    /// That state is saved (at the end).
    saved: bool,
    /// Events between saves of the state on the way ([`Sink::spill`]).
    state_every: u64,
    spilled_at: u64,
    /// The stored state was resumed: what is gathered is the changes to the stored tables.
    resumed: bool,
}

impl ParquetSink {
    /// `rejected`: rejections found before the dataflow (by a publisher), stored with the run's.
    pub fn open(data_dir: &Path, rejected: Vec<RejectedRow>) -> Result<Self, StoreError> {
        let store = EmbeddedStore::open(data_dir)?;
        Ok(ParquetSink {
            events: Some(store.events_writer()?),
            store,
            levels: Vec::new(),
            stored_events: 0,
            stored_rejected: Vec::new(),
            rejected,
            load_seconds: 0.0,
            write_seconds: 0.0,
            table_rows: Vec::new(),
            generation: EmbeddedStore::new_generation(),
            saved: false,
            state_every: Self::STATE_EVERY,
            spilled_at: 0,
            resumed: false,
        })
    }

    /// Events between saves of the operator state on the way, by default: a 1 M-event replay
    /// saves only at its end, a 10 M one also after every 2 Mi events (BENCHMARKS.md: peak RSS
    /// 6.4 GB without, 4.3 GB with, for 12 % more time).
    pub const STATE_EVERY: u64 = 2 << 20;

    /// Saves the operator state every `events` events fed through the dataflow (and at the end),
    /// so the keys touched so far leave memory.
    pub fn state_every(mut self, events: u64) -> Self {
        self.state_every = events.max(1);
        self
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

    fn events_writer(&mut self) -> Result<&mut TableWriter, RuntimeError> {
        self.events.as_mut().ok_or_else(written)
    }

    fn gather(&mut self, mut tables: TableSet) -> Result<(), RuntimeError> {
        if !tables.events.is_empty() {
            for batch in batches::<Event, _>(&tables.events)? {
                self.events_writer()?.append(&batch)?;
            }
            tables.events = Vec::new();
        }
        // The workers' consolidated parts, one after another: consolidated as one.
        tables.consolidate();
        for level in &mut self.levels {
            match level.take() {
                None => {
                    *level = Some(tables);
                    return Ok(());
                }
                Some(mut earlier) => {
                    earlier.merge_consolidated(tables);
                    tables = earlier;
                }
            }
        }
        self.levels.push(Some(tables));
        Ok(())
    }

    /// Everything gathered, as one consolidated set: the levels merged smallest first, so the
    /// largest is copied once.
    fn gathered(&mut self) -> TableSet {
        let mut gathered: Option<TableSet> = None;
        for mut earlier in std::mem::take(&mut self.levels).into_iter().flatten() {
            if let Some(later) = gathered.take() {
                earlier.merge_consolidated(later);
            }
            gathered = Some(earlier);
        }
        gathered.unwrap_or_default()
    }
}

impl Sink for ParquetSink {
    /// The stored events are read only if the state cannot be resumed: the new ones go into a
    /// segment of their own.
    fn restore(&mut self, _input_id: Option<&str>) -> Result<Restored, RuntimeError> {
        let started = Instant::now();
        let (paths, rows) = self.store.event_files()?;
        self.stored_events = rows;
        self.stored_rejected = self.store.load_rejected()?;
        self.load_seconds = started.elapsed().as_secs_f64();
        let state = self.store.generation().map(|generation| SavedState { dir: self.store.state_dir(), generation });
        tracing::info!(events = rows, segments = paths.len(), state = ?state, "replay opened the store");
        Ok(Restored { events: StoredEvents::Files { paths, rows }, position: 0, state, since_state: Vec::new() })
    }

    fn restored(&mut self, mut tables: TableSet) -> Result<(), RuntimeError> {
        tables.events.clear();
        self.gather(tables)
    }

    /// The store keeps its derived tables: a resumed state gives only the changes to them.
    fn resume(&self) -> Resume {
        Resume::Changes
    }

    fn resumed(&mut self) -> Result<(), RuntimeError> {
        self.resumed = true;
        Ok(())
    }

    fn commit(&mut self, tables: TableSet, commit: Commit<'_>) -> Result<Committed, RuntimeError> {
        self.gather(tables)?;
        self.rejected.extend_from_slice(commit.rejected);
        Ok(Committed { rows: 0, durable: None })
    }

    /// At the end only: `finish` writes the tables once.
    fn state_due(&mut self, _position: u64, ending: bool) -> Result<Option<SavedState>, RuntimeError> {
        if !ending {
            return Ok(None);
        }
        self.saved = true;
        Ok(Some(SavedState { dir: self.store.state_dir(), generation: self.generation.clone() }))
    }

    /// Every [`ParquetSink::state_every`] events, into the store's state, as the generation the
    /// end saves: the stored tables' generation is another one until then, so a crash before it
    /// makes the next replay re-feed, as before.
    fn spill(&mut self, fed: u64) -> Option<SavedState> {
        if fed < self.spilled_at + self.state_every {
            return None;
        }
        self.spilled_at = fed;
        Some(SavedState { dir: self.store.state_dir(), generation: self.generation.clone() })
    }

    fn finish(&mut self, position: u64) -> Result<Option<u64>, RuntimeError> {
        let started = Instant::now();
        let tables = self.gathered();
        let rejected = merge_rejected(std::mem::take(&mut self.stored_rejected), std::mem::take(&mut self.rejected));
        let events = self.events.take().ok_or_else(written)?;
        let event_count = self.stored_events as usize + events.rows();
        if self.resumed {
            self.table_rows = vec![("events", event_count)];
            self.table_rows.extend(self.store.write_changes(events, &tables, &rejected)?);
        } else {
            self.store.write(events, &tables, &rejected)?;
            self.table_rows = tables.counts();
            self.table_rows[0].1 = event_count;
        }
        if std::mem::take(&mut self.saved) {
            self.store.set_generation(&self.generation)?;
        }
        self.store.merge_events()?;
        self.table_rows.insert(1, ("rejected", rejected.len()));
        self.write_seconds = started.elapsed().as_secs_f64();
        Ok(Some(position))
    }
}

fn written() -> RuntimeError {
    RuntimeError::Input("the replay's tables are already written".to_owned())
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

#[cfg(test)]
mod tests {
    use super::*;
    use convoflow_events::parse_event;
    use convoflow_operators::rows::RetentionRow;
    use convoflow_schema::events_from_batch;

    fn row(n: i64) -> RetentionRow {
        RetentionRow { tenant_id: "t".into(), cohort_week: (n % 7) as i32, week_offset: 0, cohort_size: n, retained: 1 }
    }

    #[test]
    fn gathered_epochs_are_their_consolidated_sum_with_events_in_order() {
        // 13 epochs (levels 0, 2 and 3 full at the end); each retracts rows an earlier one added.
        let dir = tempfile::tempdir().expect("temp dir");
        let mut sink = ParquetSink::open(dir.path(), Vec::new()).expect("open");
        let mut everything = TableSet::default();
        for epoch in 0..13i64 {
            let mut tables = TableSet::default();
            let line = format!(
                r#"{{"event_id":"e{epoch}","tenant_id":"t","ts":{epoch},"type":"touch","contact_id":"c","channel":"ad"}}"#
            );
            tables.events.push(Box::new(parse_event(line.as_bytes()).expect("event")));
            for n in (epoch * 5)..(epoch * 5 + 10) {
                tables.retention.push(row(n), 1);
            }
            if epoch > 0 {
                for n in ((epoch - 1) * 5)..((epoch - 1) * 5 + 10) {
                    tables.retention.push(row(n), -1);
                }
            }
            tables.retention.push(row(1000 + epoch % 3), 2);
            everything.merge(tables.clone());
            sink.gather(tables).expect("gather");
        }
        everything.consolidate();
        let gathered = sink.gathered();
        assert!(!gathered.retention.is_empty());
        assert_eq!(gathered.retention, everything.retention);
        assert_eq!(gathered.negative_rows(), 0);
        sink.finish(13).expect("write");
        let stored = sink.store.load_events().expect("events written");
        let events: Vec<Event> = stored.iter().flat_map(|batch| events_from_batch(batch).expect("events")).collect();
        let ids: Vec<&str> = events.iter().map(|event| event.event_id.as_str()).collect();
        let expected: Vec<String> = (0..13).map(|epoch| format!("e{epoch}")).collect();
        assert_eq!(ids, expected);
    }
}
