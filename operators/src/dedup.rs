//! `events` (SPEC §2, §5): every accepted, de-duplicated event. Two events with the same
//! `(tenant_id, event_id)` are one: an identical copy is a duplicate and ignored, a copy with other
//! content is rejected as `conflicting_duplicate`, and the first copy wins: epochs are admitted in
//! order (events already in the store are epoch 0) and, within an epoch, events in the order of
//! their input position, so which copy wins never depends on worker scheduling.

use crate::stash::EpochStash;
use crate::state::Keyed;
use convoflow_events::{event_key, fingerprint, Event};
use serde::{Deserialize, Serialize};
use std::cell::RefCell;
use std::rc::Rc;
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::StreamVec;

/// What became of one incoming event.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Admission {
    Accepted(Box<Event>),
    Duplicate,
    /// Same identity as an accepted event, other content; carries the rejected copy.
    Conflicting(Box<Event>),
}

/// An event with its position in the input (file and line), which orders conflicting copies.
/// Boxed, so that moving it from stage to stage copies a pointer, not the whole event.
pub type Positioned = (u64, Box<Event>);

pub fn dedup<'s>(events: StreamVec<'s, u64, Positioned>) -> StreamVec<'s, u64, Admission> {
    let exchange = Exchange::new(|(_, event): &Positioned| event_key(&event.tenant_id, &event.event_id) as u64);
    // Event key → fingerprint of the first copy; the stored events' keys are looked up in the
    // saved state and never held in memory (a key's fingerprint never changes once set).
    let seen: Rc<RefCell<Keyed<u128, u64>>> = Rc::new(RefCell::new(Keyed::new(|key: &u128| *key as u64)));
    crate::state::register("Dedup", &seen);
    events.unary_frontier(exchange, "Dedup", |_, _| {
        let mut stash = EpochStash::default();
        move |(input, frontier), output| {
            let mut seen = seen.borrow_mut();
            input.for_each_stamp(|cap, data| {
                if let Some(cap) = cap.retain_least(output.output_index()) {
                    stash.push(cap, data.flat_map(std::mem::take));
                }
            });
            for (cap, mut events) in stash.take_ready(frontier) {
                events.sort_by_key(|(position, _)| *position);
                let mut session = output.session(&cap);
                for (_, event) in events {
                    let print = fingerprint(&event);
                    let key = event_key(&event.tenant_id, &event.event_id);
                    let admission = match seen.get(&key) {
                        None => {
                            seen.insert(key, print);
                            Admission::Accepted(event)
                        }
                        Some(first) if first == print => Admission::Duplicate,
                        Some(_) => Admission::Conflicting(event),
                    };
                    session.give(admission);
                }
            }
        }
    })
}
