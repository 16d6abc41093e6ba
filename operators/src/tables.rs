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
    pub funnel_progress: Collection<FunnelRow>,
    pub attribution: Collection<AttributionRow>,
    pub message_status: Collection<MessageStatusRow>,
    pub reactions: Collection<ReactionRow>,
    pub session_health: Collection<SessionHealthRow>,
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
            Update::Funnel(row, diff) => self.funnel_progress.push(row, diff),
            Update::Attribution(row, diff) => self.attribution.push(row, diff),
            Update::MessageStatus(row, diff) => self.message_status.push(row, diff),
            Update::Reaction(row, diff) => self.reactions.push(row, diff),
            Update::SessionHealth(row, diff) => self.session_health.push(row, diff),
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
        self.funnel_progress.consolidate();
        self.attribution.consolidate();
        self.message_status.consolidate();
        self.reactions.consolidate();
        self.session_health.consolidate();
    }

    /// Merges another worker's tables into these; call `consolidate` afterwards.
    pub fn merge(&mut self, other: TableSet) {
        self.events.extend(other.events);
        self.responses.extend(other.responses);
        self.conversation_cycles.extend(other.conversation_cycles);
        self.message_volume.extend(other.message_volume);
        self.contacts.extend(other.contacts);
        self.retention.extend(other.retention);
        self.funnel_progress.extend(other.funnel_progress);
        self.attribution.extend(other.attribution);
        self.message_status.extend(other.message_status);
        self.reactions.extend(other.reactions);
        self.session_health.extend(other.session_health);
    }

    /// Row counts per table, in SPEC order.
    /// Rows left with a negative multiplicity in any derived table (a bug if ever non-zero).
    pub fn negative_rows(&self) -> usize {
        self.responses.negative_rows()
            + self.conversation_cycles.negative_rows()
            + self.message_volume.negative_rows()
            + self.contacts.negative_rows()
            + self.retention.negative_rows()
            + self.funnel_progress.negative_rows()
            + self.attribution.negative_rows()
            + self.message_status.negative_rows()
            + self.reactions.negative_rows()
            + self.session_health.negative_rows()
    }

    pub fn counts(&self) -> Vec<(&'static str, usize)> {
        vec![
            ("events", self.events.len()),
            ("responses", self.responses.len()),
            ("conversation_cycles", self.conversation_cycles.len()),
            ("message_volume", self.message_volume.len()),
            ("contacts", self.contacts.len()),
            ("retention", self.retention.len()),
            ("funnel_progress", self.funnel_progress.len()),
            ("attribution", self.attribution.len()),
            ("message_status", self.message_status.len()),
            ("reactions", self.reactions.len()),
            ("session_health", self.session_health.len()),
        ]
    }
}
