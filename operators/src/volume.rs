//! `message_volume` — SPEC §5.3, a rollup keyed by `tenant_id, hour_start, local_date, local_hour,
//! direction` (inbound|outbound)`, sender` (contact|agent|bot|campaign)`, message_type`, with value
//! `messages`. Buckets are in the tenant's local time; `hour_start` is the UTC instant the local
//! hour begins. Each `message.received` counts inbound from `contact`, each `message.sent`
//! outbound from its sender.

use crate::reduce::reduce;
use crate::rows::{Direction, Party, VolumeKey, VolumeRow};
use convoflow_events::{Event, EventType, LocalTime};
use timely::dataflow::StreamVec;

/// The volume bucket of a message, given where its `ts` falls in the tenant's local time.
pub fn volume_key(event: &Event, local: &LocalTime) -> Option<VolumeKey> {
    let (direction, sender) = match event.kind {
        EventType::MessageReceived => (Direction::Inbound, Party::Contact),
        EventType::MessageSent => (Direction::Outbound, Party::from(event.sender?)),
        _ => return None,
    };
    Some(VolumeKey {
        tenant_id: event.tenant_id.clone(),
        hour_start: local.hour_start_ms,
        local_date: local.local_date,
        local_hour: local.local_hour,
        direction,
        sender,
        message_type: event.message_type,
    })
}

pub fn message_volume<'s>(counted: StreamVec<'s, u64, (VolumeKey, i64)>) -> StreamVec<'s, u64, (VolumeRow, i64)> {
    reduce(
        counted,
        "MessageVolume",
        |messages: &mut i64, count| *messages += count,
        |key, &messages| if messages > 0 { vec![VolumeRow { key: key.clone(), messages }] } else { Vec::new() },
    )
}
