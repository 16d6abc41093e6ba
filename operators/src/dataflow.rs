//! The whole dataflow: canonical events in; table updates, duplicates and conflicts out.
//!
//! ```text
//! events ─ dedup ─ partition ─┬─ events table
//!                              ├─ thread records ─── threads ─── responses, conversation_cycles
//!                              ├─ volume keys ────── volume ──── message_volume
//!                              ├─ contact records ── contacts ─┬─ contacts
//!                              │                               └─ retention
//!                              ├─ funnel records ─── funnel ──── funnel_progress
//!                              ├─ message records ── messages ─┬─ reactions
//!                              │                               ├─ rows ──────────┐
//!                              │                               ├─ campaign touches ─────┐
//!                              │                               └─ sender sends ───────────┐
//!                              ├─ inbound messages ─────────────── message_status ┘       │  │
//!                              ├─ touches, conversions ─────────── attribution ───────────┘  │
//!                              ├─ session records ──────────────── session_health ───────────┘
//!                              └─ duplicates, conflicts
//! ```
//!
//! An accepted event is split once into the small records each branch needs, and `partition`
//! moves each record to exactly one branch, so no consumer pays for a copy of the whole event.

use crate::attribution::{attribution, attribution_record, AttributionInput};
use crate::contacts::{contact_record, contacts, ContactKey, ContactMessage, ContactOutput};
use crate::dedup::{dedup, Admission, Positioned};
use crate::funnel::{funnel_progress, funnel_record, FunnelEvent};
use crate::message_status::{inbound_record, message_status, ContactStatusInput};
use crate::messages::{message_record, messages, MessageEvent, MessageKey, MessageOutput};
use crate::retention::retention;
use crate::rows::{Update, VolumeKey};
use crate::session_health::{session_health, session_record, SessionInput};
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

/// `(tenant_id, contact_id)` or `(tenant_id, session_id)`
type TenantKey = (String, String);

/// What an accepted event contributes to each branch. Deriving these in one place and routing
/// each to exactly one branch avoids cloning whole events for every consumer.
enum Branch {
    Event(Box<Event>),
    Thread(ThreadKey, ThreadEvent),
    Volume(VolumeKey),
    Contact(ContactKey, ContactMessage),
    Refused(Admission),
    Funnel(TenantKey, FunnelEvent),
    Message(MessageKey, MessageEvent),
    Inbound(TenantKey, ContactStatusInput),
    Attribution(TenantKey, AttributionInput),
    Session(TenantKey, SessionInput),
}

const BRANCHES: u64 = 10;

impl Branch {
    fn index(&self) -> u64 {
        match self {
            Branch::Event(_) => 0,
            Branch::Thread(..) => 1,
            Branch::Volume(_) => 2,
            Branch::Contact(..) => 3,
            Branch::Refused(_) => 4,
            Branch::Funnel(..) => 5,
            Branch::Message(..) => 6,
            Branch::Inbound(..) => 7,
            Branch::Attribution(..) => 8,
            Branch::Session(..) => 9,
        }
    }
}

fn branches(event: Box<Event>, tenants: &Tenants) -> Vec<Branch> {
    // At most one record per branch, so this never reallocates.
    let mut out = Vec::with_capacity(BRANCHES as usize);
    if let Some((key, thread_event)) = thread_record(&event) {
        out.push(Branch::Thread(key, thread_event));
    }
    if matches!(event.kind, EventType::MessageReceived | EventType::MessageSent) {
        let local = local_time(tenants.timezone(&event.tenant_id), event.ts);
        if let Some(key) = volume_key(&event, &local) {
            out.push(Branch::Volume(key));
        }
        if let Some((key, message)) = contact_record(&event, &local) {
            out.push(Branch::Contact(key, message));
        }
    }
    if let Some((key, record)) = funnel_record(&event, tenants) {
        out.push(Branch::Funnel(key, record));
    }
    if let Some((key, record)) = message_record(&event) {
        out.push(Branch::Message(key, record));
    }
    if let Some((key, record)) = inbound_record(&event) {
        out.push(Branch::Inbound(key, record));
    }
    if let Some((key, record)) = attribution_record(&event) {
        out.push(Branch::Attribution(key, record));
    }
    if let Some((key, record)) = session_record(&event) {
        out.push(Branch::Session(key, record));
    }
    out.push(Branch::Event(event));
    out
}

pub fn build<'s>(events: StreamVec<'s, u64, Positioned>, tenants: Arc<Tenants>) -> Outputs<'s> {
    let routing = tenants.clone();
    let mut parts = dedup(events)
        .flat_map(move |admission| match admission {
            Admission::Accepted(event) => branches(event, &routing),
            refused => vec![Branch::Refused(refused)],
        })
        .partition(BRANCHES, |branch| (branch.index(), branch))
        .into_iter();
    let mut part = move || parts.next().expect("partition gives one stream per branch");
    let (events, thread_records, volume_records, contact_records, refused) = (part(), part(), part(), part(), part());
    let (funnel_records, message_records, inbound_records, attribution_records, session_records) =
        (part(), part(), part(), part(), part());

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
    let funnel_rows = funnel_progress(
        funnel_records.flat_map(|branch| match branch {
            Branch::Funnel(key, event) => Some((key, event)),
            _ => None,
        }),
        tenants.clone(),
    )
    .map(|(row, diff)| Update::Funnel(row, diff));

    let scope = event_rows.scope();
    let mut message_outputs = messages(
        message_records.flat_map(|branch| match branch {
            Branch::Message(key, event) => Some((key, event)),
            _ => None,
        }),
        tenants.clone(),
    )
    .partition(4, |(output, diff)| {
        let index = match &output {
            MessageOutput::Reaction(_) => 0,
            MessageOutput::Status(_) => 1,
            MessageOutput::CampaignTouch { .. } => 2,
            MessageOutput::SenderSend { .. } => 3,
        };
        (index, (output, diff))
    })
    .into_iter();
    let mut message_part = move || message_outputs.next().expect("partition gives one stream per output kind");
    let (reactions, pending_rows, campaign_touches, sender_sends) = (message_part(), message_part(), message_part(), message_part());

    let reaction_rows = reactions.flat_map(|(output, diff)| match output {
        MessageOutput::Reaction(row) => Some(Update::Reaction(row, diff)),
        _ => None,
    });
    let pending_rows = pending_rows.flat_map(|(output, diff)| match output {
        MessageOutput::Status(row) => Some(((row.tenant_id.clone(), row.contact_id.clone()), ContactStatusInput::Row(row, diff))),
        _ => None,
    });
    let inbound = inbound_records.flat_map(|branch| match branch {
        Branch::Inbound(key, input) => Some((key, input)),
        _ => None,
    });
    let status_rows = message_status(scope.concatenate([pending_rows, inbound])).map(|(row, diff)| Update::MessageStatus(row, diff));

    let campaign_touches = campaign_touches.flat_map(|(output, diff)| match output {
        MessageOutput::CampaignTouch { tenant_id, contact_id, touch } => Some(((tenant_id, contact_id), AttributionInput::Touch(touch, diff))),
        _ => None,
    });
    let attribution_inputs = attribution_records.flat_map(|branch| match branch {
        Branch::Attribution(key, input) => Some((key, input)),
        _ => None,
    });
    let attribution_rows = attribution(scope.concatenate([attribution_inputs, campaign_touches]), tenants.clone())
        .map(|(row, diff)| Update::Attribution(row, diff));

    let sender_sends = sender_sends.flat_map(|(output, diff)| match output {
        MessageOutput::SenderSend { tenant_id, session_id, hour_start, failed } => {
            Some(((tenant_id, session_id), SessionInput::Send { hour_start, failed, diff }))
        }
        _ => None,
    });
    let session_inputs = session_records.flat_map(|branch| match branch {
        Branch::Session(key, input) => Some((key, input)),
        _ => None,
    });
    let session_rows =
        session_health(scope.concatenate([session_inputs, sender_sends]), tenants).map(|(row, diff)| Update::SessionHealth(row, diff));

    let updates = scope.concatenate([
        event_rows,
        thread_rows,
        volume_rows,
        contact_rows,
        retention_rows,
        funnel_rows,
        reaction_rows,
        status_rows,
        attribution_rows,
        session_rows,
    ]);
    Outputs { updates, refused }
}

