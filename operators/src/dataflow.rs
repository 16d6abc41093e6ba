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
//! An accepted event is split once into the small records each branch needs, each moved to exactly
//! one branch, so no consumer pays for a copy of the whole event. Branches are typed (see
//! `split.rs`): a record kind without its branch, or a branch nobody reads, does not compile.

use crate::attribution::{attribution, attribution_record, AttributionInput};
use crate::contacts::{contact_record, contacts, ContactKey, ContactMessage, ContactOutput};
use crate::dedup::{dedup, Admission, Positioned};
use crate::funnel::{funnel_progress, funnel_record, FunnelEvent};
use crate::message_status::{inbound_record, message_status, ContactStatusInput};
use crate::messages::{message_record, messages, MessageEvent, MessageKey, MessageOutput};
use crate::retention::{retention, CohortKey, Membership};
use crate::rows::Text;
use crate::rows::VolumeKey;
use crate::session_health::{session_health, session_record, SessionInput};
use crate::split::branches;
use crate::tables::Update;
use crate::thread::{thread_record, threads, ThreadEvent, ThreadKey, ThreadRow};
use crate::volume::{message_volume, volume_key};
use convoflow_events::{local_time, EventType, Tenants};
use std::sync::Arc;
use timely::dataflow::operators::vec::Map;
use timely::dataflow::operators::Concatenate;
use timely::dataflow::StreamVec;

pub struct Outputs<'s> {
    /// Every change to every table.
    pub updates: StreamVec<'s, u64, Update>,
    /// Incoming events that were not accepted: duplicates and conflicting duplicates.
    pub refused: StreamVec<'s, u64, Admission>,
}

/// `(tenant_id, contact_id)` or `(tenant_id, session_id)`
type TenantKey = (Text, Text);

branches! {
    /// What an admission contributes to each branch. Deriving these in one place and routing
    /// each to exactly one branch avoids cloning whole events for every consumer.
    EventParts => EventStreams {
        events: Update,
        threads: (ThreadKey, ThreadEvent),
        volume: (VolumeKey, i64),
        contacts: (ContactKey, ContactMessage),
        funnels: (TenantKey, FunnelEvent),
        messages: (MessageKey, MessageEvent),
        inbound: (TenantKey, ContactStatusInput),
        attribution: (TenantKey, AttributionInput),
        sessions: (TenantKey, SessionInput),
        refused: Admission,
    }
}

branches! {
    /// What a contact's derivation contributes: its row, and its cohort memberships for retention.
    ContactParts => ContactStreams {
        rows: Update,
        cohorts: (CohortKey, Membership),
    }
}

branches! {
    /// What a message's derivation contributes to the tables downstream of it.
    MessageParts => MessageStreams {
        reactions: Update,
        statuses: (TenantKey, ContactStatusInput),
        touches: (TenantKey, AttributionInput),
        sends: (TenantKey, SessionInput),
    }
}

fn route(admission: Admission, tenants: &Tenants, parts: &mut EventParts) {
    let event = match admission {
        Admission::Accepted(event) => event,
        refused => return parts.refused.push(refused),
    };
    if let Some(record) = thread_record(&event) {
        parts.threads.push(record);
    }
    if matches!(event.kind, EventType::MessageReceived | EventType::MessageSent) {
        let local = local_time(tenants.timezone(&event.tenant_id), event.ts);
        if let Some(key) = volume_key(&event, &local) {
            parts.volume.push((key, 1));
        }
        if let Some(record) = contact_record(&event, &local) {
            parts.contacts.push(record);
        }
    }
    if let Some(record) = funnel_record(&event, tenants) {
        parts.funnels.push(record);
    }
    if let Some(record) = message_record(&event) {
        parts.messages.push(record);
    }
    if let Some(record) = inbound_record(&event) {
        parts.inbound.push(record);
    }
    if let Some(record) = attribution_record(&event) {
        parts.attribution.push(record);
    }
    if let Some(record) = session_record(&event) {
        parts.sessions.push(record);
    }
    parts.events.push(Update::Event(event));
}

pub fn build<'s>(events: StreamVec<'s, u64, Positioned>, tenants: Arc<Tenants>) -> Outputs<'s> {
    let routing = tenants.clone();
    let parts = EventParts::split(dedup(events), "Route", move |admission, parts| route(admission, &routing, parts));
    let scope = parts.events.scope();

    let thread_rows = threads(parts.threads).map(|(row, diff)| match row {
        ThreadRow::Response(row) => Update::Response(row, diff),
        ThreadRow::Cycle(row) => Update::Cycle(row, diff),
    });
    let volume_rows = message_volume(parts.volume).map(|(row, diff)| Update::Volume(row, diff));
    let contact =
        ContactParts::split(contacts(parts.contacts), "SplitContacts", |(output, diff), parts| match output {
            ContactOutput::Row(row) => parts.rows.push(Update::Contact(row, diff)),
            ContactOutput::Cohort { tenant_id, cohort_week, week_offset } => {
                parts.cohorts.push(((tenant_id, cohort_week), (week_offset, diff)))
            }
        });
    let retention_rows = retention(contact.cohorts).map(|(row, diff)| Update::Retention(row, diff));
    let funnel_rows = funnel_progress(parts.funnels, tenants.clone()).map(|(row, diff)| Update::Funnel(row, diff));

    let message =
        MessageParts::split(messages(parts.messages, tenants.clone()), "SplitMessages", |(output, diff), parts| {
            match output {
                MessageOutput::Reaction(row) => parts.reactions.push(Update::Reaction(row, diff)),
                MessageOutput::Status(row) => parts
                    .statuses
                    .push(((row.tenant_id.clone(), row.contact_id.clone()), ContactStatusInput::Row(row, diff))),
                MessageOutput::CampaignTouch { tenant_id, contact_id, touch } => {
                    parts.touches.push(((tenant_id, contact_id), AttributionInput::Touch(touch, diff)))
                }
                MessageOutput::SenderSend { tenant_id, session_id, hour_start, failed } => {
                    parts.sends.push(((tenant_id, session_id), SessionInput::Send { hour_start, failed, diff }))
                }
            }
        });
    let status_rows = message_status(scope.concatenate([message.statuses, parts.inbound]))
        .map(|(row, diff)| Update::MessageStatus(row, diff));
    let attribution_rows = attribution(scope.concatenate([parts.attribution, message.touches]), tenants.clone())
        .map(|(row, diff)| Update::Attribution(row, diff));
    let session_rows = session_health(scope.concatenate([parts.sessions, message.sends]), tenants)
        .map(|(row, diff)| Update::SessionHealth(row, diff));

    let updates = scope.concatenate([
        parts.events,
        thread_rows,
        volume_rows,
        contact.rows,
        retention_rows,
        funnel_rows,
        message.reactions,
        status_rows,
        attribution_rows,
        session_rows,
    ]);
    Outputs { updates, refused: parts.refused }
}
