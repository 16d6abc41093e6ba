//! The whole dataflow: canonical events in; table updates, duplicates and conflicts out.
//!
//! ```text
//! events ─ dedup ─┬─ accepted ─┬─ events table
//!                 │            ├─ threads ──── responses, conversation_cycles
//!                 │            ├─ volume ───── message_volume
//!                 │            └─ contacts ─┬─ contacts
//!                 │                         └─ retention
//!                 └─ duplicates, conflicts
//! ```

use crate::contacts::{contacts, ContactOutput};
use crate::dedup::{dedup, Admission};
use crate::retention::retention;
use crate::rows::Update;
use crate::thread::{threads, ThreadRow};
use crate::volume::message_volume;
use convoflow_events::{Event, Tenants};
use std::sync::Arc;
use timely::dataflow::operators::vec::{Filter, Map};
use timely::dataflow::operators::Concatenate;
use timely::dataflow::StreamVec;

pub struct Outputs<'s> {
    /// Every change to every table.
    pub updates: StreamVec<'s, u64, Update>,
    /// Incoming events that were not accepted: duplicates and conflicting duplicates.
    pub refused: StreamVec<'s, u64, Admission>,
}

pub fn build<'s>(events: StreamVec<'s, u64, Event>, tenants: Arc<Tenants>) -> Outputs<'s> {
    let admissions = dedup(events);
    let refused = admissions.clone().filter(|admission| !matches!(admission, Admission::Accepted(_)));
    let accepted = admissions.flat_map(|admission| match admission {
        Admission::Accepted(event) => Some(event),
        _ => None,
    });

    let thread_rows = threads(accepted.clone()).map(|(row, diff)| match row {
        ThreadRow::Response(row) => Update::Response(row, diff),
        ThreadRow::Cycle(row) => Update::Cycle(row, diff),
    });
    let volume_rows = message_volume(accepted.clone(), tenants.clone()).map(|(row, diff)| Update::Volume(row, diff));
    let contact_outputs = contacts(accepted.clone(), tenants);
    let retention_rows = retention(contact_outputs.clone()).map(|(row, diff)| Update::Retention(row, diff));
    let contact_rows = contact_outputs.flat_map(|(output, diff)| match output {
        ContactOutput::Row(row) => Some(Update::Contact(row, diff)),
        ContactOutput::Cohort { .. } => None,
    });
    let event_rows = accepted.map(Update::Event);

    let scope = event_rows.scope();
    let updates = scope.concatenate([event_rows, thread_rows, volume_rows, contact_rows, retention_rows]);
    Outputs { updates, refused }
}
