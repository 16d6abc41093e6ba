//! `message_status` — SPEC §5.8, one row per outbound message id, from `message.sent` and
//! `message.status` whatever order they arrive in: `contact_id` and `session_id` from the send,
//! else from the first status (field by field); `sender`, `agent_id`, `campaign_id`, `sent_ts`
//! from the send (null when only statuses were seen; of two sends with one id, the first in
//! `(ts, event_id)` order counts); `delivered_ts` = earliest delivered, read or played (a read
//! implies delivery); `read_ts` = earliest read or played; `failed_ts` and `error_code` from the
//! earliest failed; `final_status` = read if read_ts, else delivered if delivered_ts, else failed
//! if failed_ts, else sent; `replied` = a `message.received` from the contact with
//! `sent_ts < ts ≤ sent_ts + 24 h`.
//!
//! Two stages: `messages.rs` derives the row per message id (with `replied` false), and this
//! operator, keyed by contact, joins in the contact's inbound messages to set `replied`.

use crate::messages::{MessageEvent, MessagePart};
use crate::ordered::add_to_multiset;
use crate::reduce::reduce;
use crate::rows::MessageStatusRow;
use crate::rows::Text;
use convoflow_events::{Event, EventType, Status};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use timely::dataflow::StreamVec;

pub const REPLY_WINDOW_MS: i64 = 24 * 3_600_000;

pub fn first_send(events: &[MessageEvent]) -> Option<&MessageEvent> {
    events.iter().find(|e| matches!(e.part, MessagePart::Sent { .. }))
}

fn first_status(events: &[MessageEvent], fits: impl Fn(Status) -> bool) -> Option<&MessageEvent> {
    events.iter().find(|e| matches!(e.part, MessagePart::Status { status, .. } if fits(status)))
}

/// The row of one message id (`replied` false), or `None` when it has no send and no status.
pub fn derive_message_status(tenant_id: &str, message_id: &str, events: &[MessageEvent]) -> Option<MessageStatusRow> {
    let send = first_send(events);
    let status = first_status(events, |_| true);
    let origin = send.or(status)?;
    let field =
        |get: fn(&MessageEvent) -> &Option<Text>| get(origin).clone().or_else(|| status.and_then(|s| get(s).clone()));
    let (sender, agent_id, campaign_id) = match send.map(|s| &s.part) {
        Some(MessagePart::Sent { sender, agent_id, campaign_id }) => {
            (Some(*sender), agent_id.clone(), campaign_id.clone())
        }
        _ => (None, None, None),
    };
    let delivered_ts =
        first_status(events, |s| matches!(s, Status::Delivered | Status::Read | Status::Played)).map(|e| e.ts);
    let read_ts = first_status(events, |s| matches!(s, Status::Read | Status::Played)).map(|e| e.ts);
    let failed = first_status(events, |s| s == Status::Failed);
    let error_code = match failed.map(|e| &e.part) {
        Some(MessagePart::Status { error_code, .. }) => *error_code,
        _ => None,
    };
    let final_status = match (read_ts, delivered_ts, failed) {
        (Some(_), _, _) => Status::Read,
        (None, Some(_), _) => Status::Delivered,
        (None, None, Some(_)) => Status::Failed,
        (None, None, None) => Status::Sent,
    };
    Some(MessageStatusRow {
        tenant_id: tenant_id.into(),
        message_id: message_id.into(),
        contact_id: field(|e| &e.contact_id).unwrap_or_default(),
        session_id: field(|e| &e.session_id),
        sender,
        agent_id,
        campaign_id,
        sent_ts: send.map(|s| s.ts),
        delivered_ts,
        read_ts,
        failed_ts: failed.map(|e| e.ts),
        error_code,
        final_status,
        replied: false,
    })
}

/// Input of the per-contact stage.
// Rows are most of the records; boxing them would add an allocation to each.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum ContactStatusInput {
    /// A message's row from the first stage, inserted (+1) or retracted (−1).
    Row(MessageStatusRow, i64),
    /// The ts of a `message.received` from the contact.
    Inbound(i64),
}

#[derive(Default, Serialize, Deserialize)]
pub struct ContactMessages {
    rows: BTreeMap<MessageStatusRow, i64>,
    /// Sorted ts of the contact's inbound messages.
    inbound: Vec<i64>,
}

impl ContactMessages {
    fn add(&mut self, input: ContactStatusInput) {
        match input {
            ContactStatusInput::Row(row, diff) => add_to_multiset(&mut self.rows, row, diff),
            ContactStatusInput::Inbound(ts) => {
                let at = self.inbound.partition_point(|&t| t <= ts);
                self.inbound.insert(at, ts);
            }
        }
    }

    fn replied(&self, sent_ts: i64) -> bool {
        let after = self.inbound.partition_point(|&t| t <= sent_ts);
        self.inbound.get(after).is_some_and(|&t| t <= sent_ts + REPLY_WINDOW_MS)
    }
}

/// The per-contact record of an inbound message.
pub fn inbound_record(event: &Event) -> Option<((Text, Text), ContactStatusInput)> {
    if event.kind != EventType::MessageReceived {
        return None;
    }
    Some(((event.tenant_id.clone(), event.contact_id.clone()?), ContactStatusInput::Inbound(event.ts)))
}

pub fn message_status<'s>(
    keyed: StreamVec<'s, u64, ((Text, Text), ContactStatusInput)>,
) -> StreamVec<'s, u64, (MessageStatusRow, i64)> {
    reduce(
        keyed,
        "MessageStatus",
        |contact: &mut ContactMessages, input| contact.add(input),
        |_, contact| {
            contact
                .rows
                .iter()
                .filter(|(_, count)| **count > 0)
                .map(|(row, _)| MessageStatusRow {
                    replied: row.sent_ts.is_some_and(|sent| contact.replied(sent)),
                    ..row.clone()
                })
                .collect()
        },
    )
}
