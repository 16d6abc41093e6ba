//! `contacts` — SPEC §5.4: one row per contact with at least one `message.received` or
//! `message.sent`: `first_seen_ts` (first message in either direction), `first_inbound_ts`,
//! `last_inbound_ts`, `inbound_messages`, and `cohort_week`, the Monday of the local ISO week of
//! `first_inbound_ts` (null if the contact never wrote).
//!
//! The same per-contact state also yields the contact's share of `retention` (§5.5): membership of
//! its cohort and each week offset in which it wrote, which `retention.rs` adds up per cohort.

use crate::reduce::reduce;
use crate::rows::ContactRow;
use crate::rows::Text;
use convoflow_events::{iso_week_monday, Event, EventType, LocalTime};
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use timely::dataflow::StreamVec;

/// A message as the contact state needs it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ContactMessage {
    pub ts: i64,
    pub inbound: bool,
    /// Monday of the local ISO week of `ts`, days since 1970-01-01.
    pub week: i32,
}

#[derive(Default, Serialize, Deserialize)]
pub struct ContactState {
    first_seen_ts: Option<i64>,
    first_inbound: Option<(i64, i32)>,
    last_inbound_ts: Option<i64>,
    inbound_messages: i64,
    inbound_weeks: BTreeSet<i32>,
}

impl ContactState {
    pub fn add(&mut self, message: ContactMessage) {
        self.first_seen_ts = Some(self.first_seen_ts.map_or(message.ts, |t| t.min(message.ts)));
        if message.inbound {
            if self.first_inbound.is_none_or(|(ts, _)| message.ts < ts) {
                self.first_inbound = Some((message.ts, message.week));
            }
            self.last_inbound_ts = Some(self.last_inbound_ts.map_or(message.ts, |t| t.max(message.ts)));
            self.inbound_messages += 1;
            self.inbound_weeks.insert(message.week);
        }
    }
}

/// A contact's row, or its part in a retention cohort.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum ContactOutput {
    Row(ContactRow),
    /// Member of `cohort_week`; with `Some(k)`, also wrote in week offset k.
    Cohort {
        tenant_id: Text,
        cohort_week: i32,
        week_offset: Option<i32>,
    },
}

pub fn derive_contact(tenant_id: &str, contact_id: &str, state: &ContactState) -> Vec<ContactOutput> {
    let Some(first_seen_ts) = state.first_seen_ts else { return Vec::new() };
    let cohort_week = state.first_inbound.map(|(_, week)| week);
    let mut outputs = vec![ContactOutput::Row(ContactRow {
        tenant_id: tenant_id.into(),
        contact_id: contact_id.into(),
        first_seen_ts,
        first_inbound_ts: state.first_inbound.map(|(ts, _)| ts),
        last_inbound_ts: state.last_inbound_ts,
        inbound_messages: state.inbound_messages,
        cohort_week,
    })];
    if let Some(cohort_week) = cohort_week {
        outputs.push(ContactOutput::Cohort { tenant_id: tenant_id.into(), cohort_week, week_offset: None });
        for &week in state.inbound_weeks.range(cohort_week..) {
            outputs.push(ContactOutput::Cohort {
                tenant_id: tenant_id.into(),
                cohort_week,
                week_offset: Some((week - cohort_week) / 7),
            });
        }
    }
    outputs
}

/// `(tenant_id, contact_id)`
pub type ContactKey = (Text, Text);

/// The contact record of a message, given where its `ts` falls in the tenant's local time.
pub fn contact_record(event: &Event, local: &LocalTime) -> Option<(ContactKey, ContactMessage)> {
    let inbound = match event.kind {
        EventType::MessageReceived => true,
        EventType::MessageSent => false,
        _ => return None,
    };
    let message = ContactMessage { ts: event.ts, inbound, week: iso_week_monday(local.local_date) };
    Some(((event.tenant_id.clone(), event.contact_id.clone()?), message))
}

pub fn contacts<'s>(
    keyed: StreamVec<'s, u64, (ContactKey, ContactMessage)>,
) -> StreamVec<'s, u64, (ContactOutput, i64)> {
    reduce(
        keyed,
        "Contacts",
        |state: &mut ContactState, message| state.add(message),
        |(tenant_id, contact_id): &ContactKey, state| derive_contact(tenant_id, contact_id, state),
    )
}
