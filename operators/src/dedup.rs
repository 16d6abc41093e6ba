//! `events` (SPEC §2, §5): every accepted, de-duplicated event. Two events with the same
//! `(tenant_id, event_id)` are one: an identical copy is a duplicate and ignored, a copy with other
//! content is rejected as `conflicting_duplicate`. Each epoch is admitted whole, in epoch order, so
//! events already in the store (epoch 0) always win over a later conflicting copy.

use crate::stash::EpochStash;
use convoflow_events::{event_key, fingerprint, Event};
use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::StreamVec;

/// What became of one incoming event.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Admission {
    Accepted(Event),
    Duplicate,
    /// Same identity as an accepted event, other content; carries the rejected copy.
    Conflicting(Event),
}

pub fn dedup<'s>(events: StreamVec<'s, u64, Event>) -> StreamVec<'s, u64, Admission> {
    let exchange = Exchange::new(|event: &Event| event_key(&event.tenant_id, &event.event_id) as u64);
    events.unary_frontier(exchange, "Dedup", |_, _| {
        let mut stash = EpochStash::default();
        let mut seen: FxHashMap<u128, u64> = FxHashMap::default();
        move |(input, frontier), output| {
            input.for_each_stamp(|cap, data| {
                if let Some(cap) = cap.retain_least(output.output_index()) {
                    stash.push(cap, data.flat_map(std::mem::take));
                }
            });
            for (cap, events) in stash.take_ready(frontier) {
                let mut session = output.session(&cap);
                for event in events {
                    let print = fingerprint(&event);
                    let admission = match seen.entry(event_key(&event.tenant_id, &event.event_id)) {
                        std::collections::hash_map::Entry::Vacant(vacant) => {
                            vacant.insert(print);
                            Admission::Accepted(event)
                        }
                        std::collections::hash_map::Entry::Occupied(first) if *first.get() == print => Admission::Duplicate,
                        std::collections::hash_map::Entry::Occupied(_) => Admission::Conflicting(event),
                    };
                    session.give(admission);
                }
            }
        }
    })
}
