//! `funnel_progress` — SPEC §5.6. A funnel is an ordered list of steps and a window (tenant
//! configuration, `convoflow_events::Funnel`; the default funnel when none is configured). For a
//! step-1 event e1 of a contact, step 2 matches the first event after e1 (in `(ts, event_id)`
//! order) that fits it, step 3 the first fitting event after that, and so on, every matched event
//! within `window` of e1 (`ts − e1.ts ≤ window`); e1's reach is the last step matched. For each
//! contact and local date D (tenant time zone) with step-1 events: `furthest_step` = the greatest
//! reach of the step-1 events on D, `entry_ts` = the earliest of those that reach it,
//! `completed_ts` = the ts of its last matched event (e1's own ts when it reaches only step 1).
//! Columns: `tenant_id, funnel_id, contact_id, entry_date, furthest_step, entry_ts, completed_ts`.

use crate::ordered::{insert_ordered, Ordered};
use crate::reduce::reduce;
use crate::rows::FunnelRow;
use crate::rows::Text;
use chrono_tz::Tz;
use convoflow_events::{local_time, Event, EventType, Funnel, Sender, Tenants};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Arc;
use timely::dataflow::StreamVec;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FunnelEvent {
    pub ts: i64,
    pub event_id: Text,
    pub kind: EventType,
    pub sender: Option<Sender>,
    pub name: Option<Text>,
}

impl Ordered for FunnelEvent {
    fn order_key(&self) -> (i64, &str) {
        (self.ts, &self.event_id)
    }
}

/// The funnel record of an event that fits a step of one of its tenant's funnels.
pub fn funnel_record(event: &Event, tenants: &Tenants) -> Option<((Text, Text), FunnelEvent)> {
    let concerned =
        tenants.funnels(&event.tenant_id).iter().any(|f| f.concerns(event.kind, event.sender, event.name.as_deref()));
    if !concerned {
        return None;
    }
    let record = FunnelEvent {
        ts: event.ts,
        event_id: event.event_id.clone(),
        kind: event.kind,
        sender: event.sender,
        name: event.name.clone(),
    };
    Some(((event.tenant_id.clone(), event.contact_id.clone()?), record))
}

/// The best entry of one local date: (reach, entry_ts, completed_ts).
type Entry = (i32, i64, i64);

fn funnel_rows(tenant_id: &str, contact_id: &str, funnel: &Funnel, events: &[FunnelEvent], zone: Tz) -> Vec<FunnelRow> {
    let n = events.len();
    let fits = |step: usize, e: &FunnelEvent| funnel.steps[step].fits(e.kind, e.sender, e.name.as_deref());
    // next[s][i] = the first index ≥ i fitting step s (n if none): each step-1 event then walks
    // the funnel in one lookup per step.
    let next: Vec<Vec<usize>> = (0..funnel.steps.len())
        .map(|step| {
            let mut column = vec![n; n + 1];
            for i in (0..n).rev() {
                column[i] = if fits(step, &events[i]) { i } else { column[i + 1] };
            }
            column
        })
        .collect();
    let mut by_date: BTreeMap<i32, Entry> = BTreeMap::new();
    for (i, first) in events.iter().enumerate().filter(|(i, _)| next[0][*i] == *i) {
        let (mut reach, mut completed_ts, mut after) = (1, first.ts, i + 1);
        for column in &next[1..] {
            let j = column[after];
            if j == n || events[j].ts - first.ts > funnel.window_ms {
                break;
            }
            reach += 1;
            completed_ts = events[j].ts;
            after = j + 1;
        }
        let date = local_time(zone, first.ts).local_date;
        let best = by_date.entry(date).or_insert((0, first.ts, completed_ts));
        // Step-1 events come in order, so only a greater reach replaces the earliest entry.
        if reach > best.0 {
            *best = (reach, first.ts, completed_ts);
        }
    }
    by_date
        .into_iter()
        .map(|(entry_date, (furthest_step, entry_ts, completed_ts))| FunnelRow {
            tenant_id: tenant_id.into(),
            funnel_id: Text::from(&funnel.funnel_id),
            contact_id: contact_id.into(),
            entry_date,
            furthest_step,
            entry_ts,
            completed_ts,
        })
        .collect()
}

pub fn derive_funnels(tenant_id: &str, contact_id: &str, events: &[FunnelEvent], tenants: &Tenants) -> Vec<FunnelRow> {
    let zone = tenants.timezone(tenant_id);
    tenants
        .funnels(tenant_id)
        .iter()
        .flat_map(|funnel| funnel_rows(tenant_id, contact_id, funnel, events, zone))
        .collect()
}

pub fn funnel_progress<'s>(
    keyed: StreamVec<'s, u64, ((Text, Text), FunnelEvent)>,
    tenants: Arc<Tenants>,
) -> StreamVec<'s, u64, (FunnelRow, i64)> {
    reduce(
        keyed,
        "FunnelProgress",
        |events: &mut Vec<FunnelEvent>, event| insert_ordered(events, event),
        move |(tenant_id, contact_id): &(Text, Text), events| derive_funnels(tenant_id, contact_id, events, &tenants),
    )
}
