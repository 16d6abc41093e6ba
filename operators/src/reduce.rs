//! Keyed incremental maintenance, the pattern of differential dataflow's `reduce`: records are
//! routed by key, folded into that key's state, and once an epoch is complete every key it touched
//! derives its rows again; only the difference to the rows it emitted before goes out, as
//! retractions (−1) and insertions (+1). Keys an epoch did not touch cost nothing.
//!
//! Each key's fold state is persisted (`crate::state`); a dataflow built from a saved state gives,
//! at epoch 0, every row its restored keys derive, and ignores its input at epoch 0.

use crate::stash::EpochStash;
use crate::state;
use rustc_hash::FxHashMap;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::cell::RefCell;
use std::collections::hash_map::Entry;
use std::hash::{BuildHasher, Hash};
use std::rc::Rc;
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::StreamVec;
use timely::ExchangeData;

/// Routes a key to a worker. Saved state holds keys where this put them, so a saved state records
/// the hashes of its build (see `Driver::save`) and a build that hashes otherwise re-feeds instead.
pub fn route<K: Hash + ?Sized>(key: &K) -> u64 {
    rustc_hash::FxBuildHasher.hash_one(key)
}

/// Only the fold state is persisted: what the key emitted is derived from it again on load.
#[derive(Serialize, Deserialize)]
#[serde(bound(serialize = "S: Serialize", deserialize = "S: Deserialize<'de>"))]
struct KeyState<S, R> {
    state: S,
    #[serde(skip)]
    emitted: Vec<R>,
    #[serde(skip)]
    dirty: bool,
}

/// Maintains `derive(key, state)` for every key, where `state` is the fold of all values seen for
/// the key. `derive` must be a function of the state alone (not of arrival order).
pub fn reduce<'s, K, V, S, R>(
    stream: StreamVec<'s, u64, (K, V)>,
    name: &str,
    mut fold: impl FnMut(&mut S, V) + 'static,
    mut derive: impl FnMut(&K, &S) -> Vec<R> + 'static,
) -> StreamVec<'s, u64, (R, i64)>
where
    K: ExchangeData + Hash + Eq + Clone,
    V: ExchangeData,
    S: Default + Serialize + DeserializeOwned + 'static,
    R: ExchangeData + Ord + Clone,
{
    let exchange = Exchange::new(|(key, _): &(K, V)| route(key));
    let keys: Rc<RefCell<FxHashMap<K, KeyState<S, R>>>> = Rc::default();
    let restoring = state::register(name, &keys, |key: &K| route(key));
    let scope = stream.scope();
    stream.unary_frontier(exchange, name, move |initial, info| {
        let mut stash = EpochStash::default();
        // Restored: epoch 0 gives every restored key's rows, so hold its capability till then.
        let mut initial = restoring.then_some(initial);
        if restoring {
            scope.activator_for(info.address.clone()).activate();
        }
        move |(input, frontier), output| {
            let mut keys = keys.borrow_mut();
            if let Some(cap) = initial.take() {
                let mut session = output.session(&cap);
                for (key, entry) in keys.iter_mut() {
                    let mut rows = derive(key, &entry.state);
                    rows.sort();
                    rows.iter().for_each(|row| session.give((row.clone(), 1)));
                    entry.emitted = rows;
                }
            }
            input.for_each_stamp(|cap, data| {
                // What reaches a restored operator at epoch 0 is what the operators before it
                // restored, already folded into its own restored state.
                if restoring && cap.least() == Some(&0) {
                    return;
                }
                if let Some(cap) = cap.retain_least(output.output_index()) {
                    stash.push(cap, data.flat_map(std::mem::take));
                }
            });
            for (cap, records) in stash.take_ready(frontier) {
                let mut dirty = Vec::new();
                for (key, value) in records {
                    let entry = match keys.entry(key) {
                        Entry::Occupied(occupied) => {
                            if !occupied.get().dirty {
                                dirty.push(occupied.key().clone());
                            }
                            occupied.into_mut()
                        }
                        Entry::Vacant(vacant) => {
                            dirty.push(vacant.key().clone());
                            vacant.insert(KeyState { state: S::default(), emitted: Vec::new(), dirty: false })
                        }
                    };
                    entry.dirty = true;
                    fold(&mut entry.state, value);
                }
                let mut session = output.session(&cap);
                for key in dirty {
                    let Some(entry) = keys.get_mut(&key) else { continue };
                    entry.dirty = false;
                    let mut rows = derive(&key, &entry.state);
                    rows.sort();
                    emit_difference(&entry.emitted, &rows, |row, diff| session.give((row, diff)));
                    entry.emitted = rows;
                }
            }
        }
    })
}

/// Emits `new − old` for two sorted row lists: −1 for rows only in `old`, +1 for rows only in `new`.
pub fn emit_difference<R: Ord + Clone>(old: &[R], new: &[R], mut emit: impl FnMut(R, i64)) {
    let (mut i, mut j) = (0, 0);
    while i < old.len() || j < new.len() {
        match (old.get(i), new.get(j)) {
            (Some(a), Some(b)) if a == b => {
                i += 1;
                j += 1;
            }
            (Some(a), Some(b)) if a < b => {
                emit(a.clone(), -1);
                i += 1;
            }
            (Some(_), Some(b)) => {
                emit(b.clone(), 1);
                j += 1;
            }
            (Some(a), None) => {
                emit(a.clone(), -1);
                i += 1;
            }
            (None, Some(b)) => {
                emit(b.clone(), 1);
                j += 1;
            }
            (None, None) => unreachable!("loop condition"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::emit_difference;

    #[test]
    fn difference_retracts_and_inserts_only_what_changed() {
        let mut out = Vec::new();
        emit_difference(&[1, 2, 4], &[2, 3, 4, 5], |row, diff| out.push((row, diff)));
        assert_eq!(out, vec![(1, -1), (3, 1), (5, 1)]);
    }
}
