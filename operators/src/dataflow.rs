//! The whole dataflow: canonical events in; table updates, duplicates and conflicts out.
//!
//! ```text
//! events ─ dedup ─ partition ─┬─ events table
//!                              ├─ thread records ─── threads ─── responses, conversation_cycles
//!                              ├─ volume keys ────── volume ──── message_volume
//!                              ├─ contact records ── contacts ─┬─ contacts
//!                              │                               └─ retention
//!                              └─ duplicates, conflicts
//! ```
//!
//! An accepted event is split once into the small records each branch needs, and `partition`
//! moves each record to exactly one branch, so no consumer pays for a copy of the whole event.

use crate::contacts::{contact_record, contacts, ContactKey, ContactMessage, ContactOutput};
use crate::dedup::{dedup, Admission, Positioned};
use crate::retention::retention;
use crate::rows::{Update, VolumeKey};
use crate::thread::{thread_record, threads, ThreadEvent, ThreadKey, ThreadRow};
use crate::volume::{message_volume, volume_key};
use convoflow_events::{local_time, Event, EventType, Tenants};
use std::sync::Arc;
use timely::dataflow::operators::vec::{Map, Partition};
use timely::dataflow::operators::Concatenate;
use timely::dataflow::StreamVec;

pub struct Outputs<'s> {
    /// Every change to every table.
    pub updates: StreamVec<'s, u64, Update>,
    /// Incoming events that were not accepted: duplicates and conflicting duplicates.
    pub refused: StreamVec<'s, u64, Admission>,
}

/// What an accepted event contributes to each branch. Deriving these in one place and routing
/// each to exactly one branch avoids cloning whole events for every consumer.
enum Branch {
    Event(Box<Event>),
    Thread(ThreadKey, ThreadEvent),
    Volume(VolumeKey),
    Contact(ContactKey, ContactMessage),
    Refused(Admission),
}

fn branches(event: Box<Event>, tenants: &Tenants) -> Vec<(u64, Branch)> {
    let mut out = Vec::with_capacity(4);
    if let Some((key, thread_event)) = thread_record(&event) {
        out.push((1, Branch::Thread(key, thread_event)));
    }
    if matches!(event.kind, EventType::MessageReceived | EventType::MessageSent) {
        let local = local_time(tenants.timezone(&event.tenant_id), event.ts);
        if let Some(key) = volume_key(&event, &local) {
            out.push((2, Branch::Volume(key)));
        }
        if let Some((key, message)) = contact_record(&event, &local) {
            out.push((3, Branch::Contact(key, message)));
        }
    }
    out.push((0, Branch::Event(event)));
    out
}

pub fn build<'s>(events: StreamVec<'s, u64, Positioned>, tenants: Arc<Tenants>) -> Outputs<'s> {
    let mut parts = dedup(events)
        .flat_map(move |admission| match admission {
            Admission::Accepted(event) => branches(event, &tenants),
            refused => vec![(4, Branch::Refused(refused))],
        })
        .partition(5, |routed| routed)
        .into_iter();
    let (Some(events), Some(thread_records), Some(volume_records), Some(contact_records), Some(refused)) =
        (parts.next(), parts.next(), parts.next(), parts.next(), parts.next())
    else {
        unreachable!("partition into 5 gives 5 streams")
    };
    let refused = refused.flat_map(|branch| match branch {
        Branch::Refused(admission) => Some(admission),
        _ => None,
    });

    let event_rows = events.flat_map(|branch| match branch {
        Branch::Event(event) => Some(Update::Event(event)),
        _ => None,
    });
    let thread_rows = threads(thread_records.flat_map(|branch| match branch {
        Branch::Thread(key, event) => Some((key, event)),
        _ => None,
    }))
    .map(|(row, diff)| match row {
        ThreadRow::Response(row) => Update::Response(row, diff),
        ThreadRow::Cycle(row) => Update::Cycle(row, diff),
    });
    let volume_rows = message_volume(volume_records.flat_map(|branch| match branch {
        Branch::Volume(key) => Some((key, 1)),
        _ => None,
    }))
    .map(|(row, diff)| Update::Volume(row, diff));
    let contact_outputs = contacts(contact_records.flat_map(|branch| match branch {
        Branch::Contact(key, message) => Some((key, message)),
        _ => None,
    }));
    let retention_rows = retention(contact_outputs.clone()).map(|(row, diff)| Update::Retention(row, diff));
    let contact_rows = contact_outputs.flat_map(|(output, diff)| match output {
        ContactOutput::Row(row) => Some(Update::Contact(row, diff)),
        ContactOutput::Cohort { .. } => None,
    });

    let scope = event_rows.scope();
    let updates = scope.concatenate([event_rows, thread_rows, volume_rows, contact_rows, retention_rows]);
    Outputs { updates, refused }
}
