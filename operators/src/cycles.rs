//! `conversation_cycles` — SPEC §5.2.
//!
//! A cycle opens at the first `message.received` or `message.sent` of a thread (any sender), or the
//! first after a `conversation.resolved` that closed the previous cycle; a `conversation.resolved`
//! closes the open cycle (with none open it is ignored). `cycle_id` is the event_id of the opening
//! message and `contact_id` its contact. First response = the first `message.sent` with sender
//! `agent` after the cycle's first `message.received` in `(ts, event_id)` order (bots do not count).
//! `resolution_ms` = `resolved_ts − start_ts`; `resolved_by` = the resolving event's `agent_id`.
//! `assignee` = the `agent_id` of the thread's last `conversation.assigned` at or before the close —
//! "at" meaning the same `ts`, whatever the event ids — or the last one ever while the cycle is open.
//! An assignment without `agent_id` unassigns. Open cycles have null close columns.

use crate::rows::CycleRow;
use crate::rows::Text;
use crate::thread::{Step, ThreadEvent};
use convoflow_events::Sender;

pub fn derive_cycles(tenant_id: &str, conversation_id: &str, events: &[ThreadEvent]) -> Vec<CycleRow> {
    let mut rows = Vec::new();
    let mut open: Option<CycleRow> = None;
    let mut assignee: Option<&str> = None;
    for (index, event) in events.iter().enumerate() {
        match event.step {
            Step::Assigned => assignee = event.agent_id.as_deref(),
            Step::Resolved => {
                let Some(mut cycle) = open.take() else { continue };
                // Assignments with the same ts as the close count even when they sort after it.
                let same_ts_assignee = events[index + 1..]
                    .iter()
                    .take_while(|later| later.ts == event.ts)
                    .filter(|later| later.step == Step::Assigned)
                    .last()
                    .map(|later| later.agent_id.as_deref());
                cycle.assignee = same_ts_assignee.unwrap_or(assignee).map(Text::from);
                cycle.resolved_ts = Some(event.ts);
                cycle.resolution_ms = Some(event.ts - cycle.start_ts);
                cycle.resolved_by = event.agent_id.clone();
                rows.push(cycle);
            }
            Step::Received | Step::Sent(_) => {
                let cycle = open.get_or_insert_with(|| CycleRow {
                    tenant_id: tenant_id.into(),
                    conversation_id: conversation_id.into(),
                    contact_id: event.contact_id.clone().unwrap_or_default(),
                    cycle_id: event.event_id.clone(),
                    start_ts: event.ts,
                    first_inbound_ts: None,
                    first_response_ts: None,
                    first_response_ms: None,
                    first_response_agent_id: None,
                    resolved_ts: None,
                    resolution_ms: None,
                    resolved_by: None,
                    assignee: None,
                    inbound_count: 0,
                    outbound_count: 0,
                });
                match event.step {
                    Step::Received => {
                        cycle.inbound_count += 1;
                        cycle.first_inbound_ts.get_or_insert(event.ts);
                    }
                    Step::Sent(sender) => {
                        cycle.outbound_count += 1;
                        if let (Sender::Agent, Some(inbound), None) =
                            (sender, cycle.first_inbound_ts, cycle.first_response_ts)
                        {
                            cycle.first_response_ts = Some(event.ts);
                            cycle.first_response_ms = Some(event.ts - inbound);
                            cycle.first_response_agent_id = event.agent_id.clone();
                        }
                    }
                    _ => {}
                }
            }
        }
    }
    if let Some(mut cycle) = open {
        cycle.assignee = assignee.map(Text::from);
        rows.push(cycle);
    }
    rows
}
