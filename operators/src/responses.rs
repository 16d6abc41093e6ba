//! `responses` — SPEC §5.1, one row per answered waiting period.
//!
//! A thread is `(tenant_id, conversation_id)`. Walk its `message.received`, `message.sent` and
//! `conversation.resolved` events in `(ts, event_id)` order. A waiting period opens at a
//! `message.received` when none is open. It closes at the next `message.sent` whose `sender` is
//! `agent` or `bot` (a response: one row), or at a `conversation.resolved` (unanswered: no row).
//! Campaign sends neither open nor close one. `contact_id` is that of the opening
//! `message.received`; `agent_id` is that of the reply.

use crate::rows::ResponseRow;
use crate::thread::{Step, ThreadEvent};
use convoflow_events::Sender;

pub fn derive_responses(tenant_id: &str, conversation_id: &str, events: &[ThreadEvent]) -> Vec<ResponseRow> {
    let mut rows = Vec::new();
    let mut waiting: Option<&ThreadEvent> = None;
    for event in events {
        match event.step {
            Step::Received if waiting.is_none() => waiting = Some(event),
            Step::Sent(responder @ (Sender::Agent | Sender::Bot)) => {
                if let Some(start) = waiting.take() {
                    rows.push(ResponseRow {
                        tenant_id: tenant_id.into(),
                        conversation_id: conversation_id.into(),
                        contact_id: start.contact_id.clone().unwrap_or_default(),
                        start_event_id: start.event_id.clone(),
                        start_ts: start.ts,
                        reply_event_id: event.event_id.clone(),
                        reply_ts: event.ts,
                        response_ms: event.ts - start.ts,
                        responder,
                        agent_id: event.agent_id.clone(),
                    });
                }
            }
            Step::Resolved => waiting = None,
            Step::Received | Step::Sent(Sender::Campaign) | Step::Assigned => {}
        }
    }
    rows
}
