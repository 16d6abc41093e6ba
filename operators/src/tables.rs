//! Consolidated tables: the sum of all updates, each row with a positive multiplicity.

use crate::rows::*;
use convoflow_events::Event;
use serde::{Deserialize, Serialize};

/// Rows of one table with their multiplicities; `consolidate` sorts, merges and drops zeros.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Collection<R> {
    pub updates: Vec<(R, i64)>,
}

impl<R> Default for Collection<R> {
    fn default() -> Self {
        Collection { updates: Vec::new() }
    }
}

impl<R: Ord> Collection<R> {
    pub fn push(&mut self, row: R, diff: i64) {
        self.updates.push((row, diff));
    }

    pub fn consolidate(&mut self) {
        let mut updates = std::mem::take(&mut self.updates);
        updates.sort_by(|a, b| a.0.cmp(&b.0));
        let mut merged: Vec<(R, i64)> = Vec::with_capacity(updates.len());
        for (row, diff) in updates {
            match merged.last_mut() {
                Some((last, total)) if *last == row => *total += diff,
                _ => merged.push((row, diff)),
            }
        }
        merged.retain(|(_, diff)| *diff != 0);
        self.updates = merged;
    }

    /// The rows of a consolidated collection, each repeated by its multiplicity (which is 1 for
    /// every table here; a negative one would be a bug and is reported by `negative_rows`).
    pub fn rows(&self) -> impl Iterator<Item = &R> {
        self.updates.iter().flat_map(|(row, diff)| std::iter::repeat_n(row, (*diff).max(0) as usize))
    }

    pub fn negative_rows(&self) -> usize {
        self.updates.iter().filter(|(_, diff)| *diff < 0).count()
    }

    pub fn len(&self) -> usize {
        self.updates.len()
    }

    pub fn is_empty(&self) -> bool {
        self.updates.is_empty()
    }

    pub fn extend(&mut self, other: Collection<R>) {
        self.updates.extend(other.updates);
    }
}

/// Every table the dataflow maintains.
#[derive(Clone, Debug, Default)]
pub struct TableSet {
    /// Accepted events; append-only, never retracted. Kept boxed as they came through the
    /// dataflow: growing a vector of whole events would copy hundreds of MB per worker.
    pub events: Vec<Box<Event>>,
    pub responses: Collection<ResponseRow>,
    pub conversation_cycles: Collection<CycleRow>,
    pub message_volume: Collection<VolumeRow>,
    pub contacts: Collection<ContactRow>,
    pub retention: Collection<RetentionRow>,
}

impl TableSet {
    pub fn apply(&mut self, update: Update) {
        match update {
            Update::Event(event) => self.events.push(event),
            Update::Response(row, diff) => self.responses.push(row, diff),
            Update::Cycle(row, diff) => self.conversation_cycles.push(row, diff),
            Update::Volume(row, diff) => self.message_volume.push(row, diff),
            Update::Contact(row, diff) => self.contacts.push(row, diff),
            Update::Retention(row, diff) => self.retention.push(row, diff),
        }
    }

    /// Consolidates the derived tables. `events` is append-only and left in arrival order:
    /// sorting a million wide rows costs more than the rest of a replay's bookkeeping.
    pub fn consolidate(&mut self) {
        self.responses.consolidate();
        self.conversation_cycles.consolidate();
        self.message_volume.consolidate();
        self.contacts.consolidate();
        self.retention.consolidate();
    }

    /// Merges another worker's tables into these; call `consolidate` afterwards.
    pub fn merge(&mut self, other: TableSet) {
        self.events.extend(other.events);
        self.responses.extend(other.responses);
        self.conversation_cycles.extend(other.conversation_cycles);
        self.message_volume.extend(other.message_volume);
        self.contacts.extend(other.contacts);
        self.retention.extend(other.retention);
    }

    /// Row counts per table, in SPEC order.
    pub fn counts(&self) -> Vec<(&'static str, usize)> {
        vec![
            ("events", self.events.len()),
            ("responses", self.responses.len()),
            ("conversation_cycles", self.conversation_cycles.len()),
            ("message_volume", self.message_volume.len()),
            ("contacts", self.contacts.len()),
            ("retention", self.retention.len()),
        ]
    }
}
