//! Messages by id: per `(tenant_id, message_id)`, its `message.sent`, `message.status` and
//! `message.reaction` events in `(ts, event_id)` order, whatever order they arrive in. From this
//! one state come `reactions` (§5.9), the first stage of `message_status` (§5.8; `replied` is
//! joined in per contact by `message_status.rs`), and what those feed elsewhere: a campaign send
//! that did not end `failed` is a touch for `attribution` (§5.7), and each send counts in its
//! sender's hour for `session_health` (§5.10).

use crate::attribution::Touch;
use crate::message_status::{derive_message_status, first_send};
use crate::ordered::{insert_ordered, Ordered};
use crate::reactions::derive_reactions;
use crate::reduce::reduce;
use crate::rows::Text;
use crate::rows::{MessageStatusRow, ReactionRow};
use convoflow_events::{local_time, Event, EventType, Sender, Status, Tenants};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use timely::dataflow::StreamVec;

/// `(tenant_id, message_id)`
pub type MessageKey = (Text, Text);

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MessagePart {
    Sent { sender: Sender, agent_id: Option<Text>, campaign_id: Option<Text> },
    Status { status: Status, error_code: Option<i64> },
    Reaction { emoji: Text },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageEvent {
    pub ts: i64,
    pub event_id: Text,
    pub contact_id: Option<Text>,
    pub session_id: Option<Text>,
    pub part: MessagePart,
}

impl Ordered for MessageEvent {
    fn order_key(&self) -> (i64, &str) {
        (self.ts, &self.event_id)
    }
}

/// The message record of an event, if it is a send, status or reaction with a `message_id`.
pub fn message_record(event: &Event) -> Option<(MessageKey, MessageEvent)> {
    let part = match event.kind {
        EventType::MessageSent => MessagePart::Sent {
            sender: event.sender?,
            agent_id: event.agent_id.clone(),
            campaign_id: event.campaign_id.clone(),
        },
        EventType::MessageStatus => MessagePart::Status { status: event.status?, error_code: event.error_code },
        EventType::MessageReaction => MessagePart::Reaction { emoji: event.emoji.clone().unwrap_or_default() },
        _ => return None,
    };
    let key = (event.tenant_id.clone(), event.message_id.clone()?);
    Some((
        key,
        MessageEvent {
            ts: event.ts,
            event_id: event.event_id.clone(),
            contact_id: event.contact_id.clone(),
            session_id: event.session_id.clone(),
            part,
        },
    ))
}

/// What one message contributes downstream.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum MessageOutput {
    /// Its `message_status` row, `replied` not yet known.
    Status(MessageStatusRow),
    Reaction(ReactionRow),
    /// A campaign send that did not end failed, as a touch of `(tenant_id, contact_id)`.
    CampaignTouch {
        tenant_id: Text,
        contact_id: Text,
        touch: Touch,
    },
    /// A send in the local hour `hour_start` of business sender `session_id`.
    SenderSend {
        tenant_id: Text,
        session_id: Text,
        hour_start: i64,
        failed: bool,
    },
}

pub fn derive_message(
    tenant_id: &str,
    message_id: &str,
    events: &[MessageEvent],
    tenants: &Tenants,
) -> Vec<MessageOutput> {
    let mut outputs: Vec<MessageOutput> =
        derive_reactions(tenant_id, message_id, events).into_iter().map(MessageOutput::Reaction).collect();
    let Some(row) = derive_message_status(tenant_id, message_id, events) else { return outputs };
    let failed = row.final_status == Status::Failed;
    if let (Some(send), Some(Sender::Campaign), false) = (first_send(events), row.sender, failed) {
        outputs.push(MessageOutput::CampaignTouch {
            tenant_id: tenant_id.into(),
            contact_id: row.contact_id.clone(),
            touch: Touch {
                ts: send.ts,
                event_id: send.event_id.clone(),
                channel: "whatsapp".into(),
                campaign_id: row.campaign_id.clone(),
                source: None,
            },
        });
    }
    if let (Some(session_id), Some(sent_ts)) = (&row.session_id, row.sent_ts) {
        outputs.push(MessageOutput::SenderSend {
            tenant_id: tenant_id.into(),
            session_id: session_id.clone(),
            hour_start: local_time(tenants.timezone(tenant_id), sent_ts).hour_start_ms,
            failed,
        });
    }
    outputs.push(MessageOutput::Status(row));
    outputs
}

pub fn messages<'s>(
    keyed: StreamVec<'s, u64, (MessageKey, MessageEvent)>,
    tenants: Arc<Tenants>,
) -> StreamVec<'s, u64, (MessageOutput, i64)> {
    reduce(
        keyed,
        "Messages",
        |events: &mut Vec<MessageEvent>, event| insert_ordered(events, event),
        move |(tenant_id, message_id): &MessageKey, events| derive_message(tenant_id, message_id, events, &tenants),
    )
}
