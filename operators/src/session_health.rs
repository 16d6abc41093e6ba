//! `session_health` — SPEC §5.10, per business sender (`session_id`) and tenant-local hour.
//!
//! State timeline from `session.status` (a state holds until the next in `(ts, event_id)` order;
//! before the first, unknown). One row per local hour from the hour of the sender's first event
//! (any event carrying its `session_id`) to the hour of its last. `uptime` = share of the whole hour in `connected` or unknown; `sent` = the sender's
//! `message_status` rows with `sent_ts` in the hour, `failed` = those whose `final_status` is
//! failed (a send outside those hours — its send carried no `session_id` — counts nowhere);
//! `delivery_ok` = 1 − failed/sent (1 when sent = 0); `health_score` = 100 × uptime ×
//! delivery_ok rounded half up, computed exactly in integers, and 0 if the sender is `blocked`
//! at any moment of the hour (a `blocked` status inside it, however brief, counts).
//! Columns: `tenant_id, session_id, hour_start, uptime, sent, failed, health_score`.

use crate::ordered::{insert_ordered, Ordered};
use crate::reduce::reduce;
use crate::rows::Text;
use crate::rows::{Real, SessionHealthRow};
use chrono_tz::Tz;
use convoflow_events::{local_time, Event, EventType, SessionState, Tenants};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Arc;
use timely::dataflow::StreamVec;

const HOUR_MS: i64 = 3_600_000;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateChange {
    pub ts: i64,
    pub event_id: Text,
    pub state: SessionState,
}

impl Ordered for StateChange {
    fn order_key(&self) -> (i64, &str) {
        (self.ts, &self.event_id)
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum SessionInput {
    State(StateChange),
    /// Any other event carrying the `session_id`, at this ts.
    Seen(i64),
    /// A send of the sender's (from `messages.rs`) in the local hour starting `hour_start`.
    Send {
        hour_start: i64,
        failed: bool,
        diff: i64,
    },
}

#[derive(Default, Serialize, Deserialize)]
pub struct SenderTimeline {
    changes: Vec<StateChange>,
    first_seen: Option<i64>,
    last_seen: Option<i64>,
    /// hour_start → (sent, failed)
    sends: BTreeMap<i64, (i64, i64)>,
}

impl SenderTimeline {
    fn see(&mut self, ts: i64) {
        self.first_seen = Some(self.first_seen.map_or(ts, |t| t.min(ts)));
        self.last_seen = Some(self.last_seen.map_or(ts, |t| t.max(ts)));
    }

    fn add(&mut self, input: SessionInput) {
        match input {
            SessionInput::State(change) => {
                self.see(change.ts);
                insert_ordered(&mut self.changes, change);
            }
            SessionInput::Seen(ts) => self.see(ts),
            SessionInput::Send { hour_start, failed, diff } => {
                let counts = self.sends.entry(hour_start).or_default();
                counts.0 += diff;
                counts.1 += if failed { diff } else { 0 };
                if *counts == (0, 0) {
                    self.sends.remove(&hour_start);
                }
            }
        }
    }
}

/// The session record of an event carrying a `session_id`.
pub fn session_record(event: &Event) -> Option<((Text, Text), SessionInput)> {
    let key = (event.tenant_id.clone(), event.session_id.clone()?);
    let input = match (event.kind, event.state) {
        (EventType::SessionStatus, Some(state)) => {
            SessionInput::State(StateChange { ts: event.ts, event_id: event.event_id.clone(), state })
        }
        _ => SessionInput::Seen(event.ts),
    };
    Some((key, input))
}

fn next_hour_start(zone: Tz, hour_start: i64) -> i64 {
    let next = local_time(zone, hour_start + HOUR_MS).hour_start_ms;
    if next > hour_start {
        next
    } else {
        hour_start + HOUR_MS
    }
}

fn is_up(state: Option<SessionState>) -> bool {
    matches!(state, None | Some(SessionState::Connected))
}

/// 100 × up/hour × (sent − failed)/sent, rounded half up, in exact integer arithmetic.
fn health_score(up_ms: i64, hour_ms: i64, sent: i64, failed: i64) -> i32 {
    let (ok, of) = if sent > 0 { ((sent - failed) as i128, sent as i128) } else { (1, 1) };
    let numerator = 100 * up_ms as i128 * ok;
    let denominator = hour_ms as i128 * of;
    ((2 * numerator + denominator) / (2 * denominator)) as i32
}

pub fn derive_session_health(
    tenant_id: &str,
    session_id: &str,
    timeline: &SenderTimeline,
    zone: Tz,
) -> Vec<SessionHealthRow> {
    let (Some(first_seen), Some(last_seen)) = (timeline.first_seen, timeline.last_seen) else { return Vec::new() };
    let (first, last) = (local_time(zone, first_seen).hour_start_ms, local_time(zone, last_seen).hour_start_ms);

    let changes = &timeline.changes;
    let mut rows = Vec::new();
    let mut current: Option<SessionState> = None;
    let mut next = 0;
    let mut hour_start = first;
    while hour_start <= last {
        let hour_end = next_hour_start(zone, hour_start);
        let mut blocked = false;
        while next < changes.len() && changes[next].ts <= hour_start {
            current = Some(changes[next].state);
            blocked |= changes[next].ts == hour_start && current == Some(SessionState::Blocked);
            next += 1;
        }
        blocked |= current == Some(SessionState::Blocked);
        let (mut up_ms, mut at) = (0, hour_start);
        while next < changes.len() && changes[next].ts < hour_end {
            if is_up(current) {
                up_ms += changes[next].ts - at;
            }
            at = changes[next].ts;
            current = Some(changes[next].state);
            blocked |= current == Some(SessionState::Blocked);
            next += 1;
        }
        if is_up(current) {
            up_ms += hour_end - at;
        }
        let hour_ms = hour_end - hour_start;
        let (sent, failed) = timeline.sends.get(&hour_start).copied().unwrap_or((0, 0));
        rows.push(SessionHealthRow {
            tenant_id: tenant_id.into(),
            session_id: session_id.into(),
            hour_start,
            uptime: Real(up_ms as f64 / hour_ms as f64),
            sent,
            failed,
            health_score: if blocked { 0 } else { health_score(up_ms, hour_ms, sent, failed) },
        });
        hour_start = hour_end;
    }
    rows
}

/// Session records, plus the sends `messages.rs` attributes to each sender.
pub fn session_health<'s>(
    keyed: StreamVec<'s, u64, ((Text, Text), SessionInput)>,
    tenants: Arc<Tenants>,
) -> StreamVec<'s, u64, (SessionHealthRow, i64)> {
    reduce(
        keyed,
        "SessionHealth",
        |timeline: &mut SenderTimeline, input| timeline.add(input),
        move |(tenant_id, session_id): &(Text, Text), timeline| {
            derive_session_health(tenant_id, session_id, timeline, tenants.timezone(tenant_id))
        },
    )
}

#[cfg(test)]
mod tests {
    use super::health_score;

    #[test]
    fn scores_round_half_up_exactly() {
        // 100 × ½ × 9/10 = 45 exactly (45.00000000000001 in floating point).
        assert_eq!(health_score(1_800_000, 3_600_000, 10, 1), 45);
        // 100 × 1 × 1/8 = 12.5 → 13; 100 × 1 × 7/8 = 87.5 → 88.
        assert_eq!(health_score(3_600_000, 3_600_000, 8, 7), 13);
        assert_eq!(health_score(3_600_000, 3_600_000, 8, 1), 88);
        assert_eq!(health_score(0, 3_600_000, 0, 0), 0);
        assert_eq!(health_score(3_600_000, 3_600_000, 0, 0), 100);
    }
}
