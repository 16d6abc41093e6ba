//! Threads, the shared input of `responses` (§5.1) and `conversation_cycles` (§5.2): per
//! `(tenant_id, conversation_id)`, its `message.received`, `message.sent`, `conversation.resolved`
//! and `conversation.assigned` events kept in `(ts, event_id)` order.

use crate::cycles::derive_cycles;
use crate::ordered::{insert_ordered, Ordered};
use crate::reduce::reduce;
use crate::responses::derive_responses;
use crate::rows::Text;
use crate::rows::{CycleRow, ResponseRow};
use convoflow_events::{Event, EventType, Sender};
use serde::{Deserialize, Serialize};
use timely::dataflow::StreamVec;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Step {
    Received,
    Sent(Sender),
    Resolved,
    Assigned,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ThreadEvent {
    pub ts: i64,
    pub event_id: Text,
    pub step: Step,
    pub contact_id: Option<Text>,
    pub agent_id: Option<Text>,
}

impl ThreadEvent {
    pub fn from_event(event: &Event) -> Option<ThreadEvent> {
        let step = match event.kind {
            EventType::MessageReceived => Step::Received,
            EventType::MessageSent => Step::Sent(event.sender?),
            EventType::ConversationResolved => Step::Resolved,
            EventType::ConversationAssigned => Step::Assigned,
            _ => return None,
        };
        Some(ThreadEvent {
            ts: event.ts,
            event_id: event.event_id.clone(),
            step,
            contact_id: event.contact_id.clone(),
            agent_id: event.agent_id.clone(),
        })
    }
}

impl Ordered for ThreadEvent {
    fn order_key(&self) -> (i64, &str) {
        (self.ts, &self.event_id)
    }
}

/// `(tenant_id, conversation_id)`
pub type ThreadKey = (Text, Text);

/// A thread's events in `(ts, event_id)` order.
#[derive(Default, Serialize, Deserialize)]
pub struct Thread {
    pub events: Vec<ThreadEvent>,
}

impl Thread {
    pub fn insert(&mut self, event: ThreadEvent) {
        insert_ordered(&mut self.events, event);
    }
}

/// A row of either table derived from a thread.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum ThreadRow {
    Response(ResponseRow),
    Cycle(CycleRow),
}

/// The thread record of an event, if it belongs to a thread.
pub fn thread_record(event: &Event) -> Option<(ThreadKey, ThreadEvent)> {
    let key = (event.tenant_id.clone(), Text::from(event.thread_id()?));
    ThreadEvent::from_event(event).map(|thread_event| (key, thread_event))
}

pub fn threads<'s>(keyed: StreamVec<'s, u64, (ThreadKey, ThreadEvent)>) -> StreamVec<'s, u64, (ThreadRow, i64)> {
    reduce(
        keyed,
        "Threads",
        |thread: &mut Thread, event| thread.insert(event),
        |(tenant_id, conversation_id): &ThreadKey, thread| {
            let responses =
                derive_responses(tenant_id, conversation_id, &thread.events).into_iter().map(ThreadRow::Response);
            let cycles = derive_cycles(tenant_id, conversation_id, &thread.events).into_iter().map(ThreadRow::Cycle);
            responses.chain(cycles).collect()
        },
    )
}
