//! Keyed incremental maintenance, the pattern of differential dataflow's `reduce`: records are
//! routed by key, folded into that key's state, and once an epoch is complete every key it touched
//! derives its rows again; only the difference to the rows it derived before the epoch goes out,
//! as retractions (−1) and insertions (+1). Keys an epoch did not touch cost nothing.
//!
//! A key keeps only its fold state, not a copy of the rows it emitted: when an epoch first touches
//! a key, the rows the state derives are computed before the epoch's records are folded in, and
//! are the rows to retract (`derive` is a function of the state alone, so they are what the key
//! emitted). That derives a touched key twice per epoch and holds no row between epochs, where
//! keeping the emitted rows held a second copy of every derived table (issue 13, BENCHMARKS.md).
//!
//! Each key's fold state is persisted (`crate::state`): a key an epoch touches is looked up in the
//! saved state when it is not in memory. A dataflow resumed with `Resume::Rows` gives, at epoch
//! 0, every row its saved keys derive, and ignores its input at epoch 0.

use crate::stash::EpochStash;
use crate::state::{self, Keyed};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::cell::RefCell;
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

/// A key's fold state; only the state is persisted.
#[derive(Serialize, Deserialize)]
#[serde(bound(serialize = "S: Serialize", deserialize = "S: Deserialize<'de>"))]
struct KeyState<S> {
    state: S,
    /// Touched by the epoch being folded (its rows before the epoch are kept aside).
    #[serde(skip)]
    touched: bool,
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
    K: ExchangeData + Hash + Eq + Clone + Serialize + DeserializeOwned,
    V: ExchangeData,
    S: Default + Serialize + DeserializeOwned + 'static,
    R: ExchangeData + Ord,
{
    let exchange = Exchange::new(|(key, _): &(K, V)| route(key));
    let keys: Rc<RefCell<Keyed<K, KeyState<S>>>> = Rc::new(RefCell::new(Keyed::new(route::<K>)));
    let registered = state::register(name, &keys);
    let restoring = registered.rows;
    let scope = stream.scope();
    let mut sorted = move |key: &K, state: &S| {
        let mut rows = derive(key, state);
        rows.sort_unstable();
        rows
    };
    stream.unary_frontier(exchange, name, move |initial, info| {
        let mut stash = EpochStash::default();
        // Resumed with rows: epoch 0 gives every saved key's rows, so hold its capability till then.
        let mut initial = restoring.then_some(initial);
        if restoring {
            scope.activator_for(info.address.clone()).activate();
        }
        move |(input, frontier), output| {
            let mut keys = keys.borrow_mut();
            if let Some(cap) = initial.take() {
                let mut session = output.session(&cap);
                keys.each_saved(registered.index, registered.workers, |key, entry| {
                    sorted(key, &entry.state).into_iter().for_each(|row| session.give((row, 1)))
                });
            }
            input.for_each_stamp(|cap, data| {
                // What reaches an operator resumed with rows at epoch 0 is what the operators
                // before it restored, already folded into its own saved state.
                if restoring && cap.least() == Some(&0) {
                    return;
                }
                if let Some(cap) = cap.retain_least(output.output_index()) {
                    stash.push(cap, data.flat_map(std::mem::take));
                }
            });
            for (cap, records) in stash.take_ready(frontier) {
                // Each key the epoch touches, with the rows it derived before the epoch.
                let mut touched: Vec<(K, Vec<R>)> = Vec::new();
                for (key, value) in records {
                    let (entry, existed) = keys.entry(&key, || KeyState { state: S::default(), touched: false });
                    if !entry.touched {
                        let before = if existed { sorted(&key, &entry.state) } else { Vec::new() };
                        entry.touched = true;
                        fold(&mut entry.state, value);
                        touched.push((key, before));
                    } else {
                        fold(&mut entry.state, value);
                    }
                }
                let mut session = output.session(&cap);
                for (key, before) in touched {
                    let Some(entry) = keys.get_mut(&key) else { continue };
                    entry.touched = false;
                    let after = sorted(&key, &entry.state);
                    emit_difference(before, after, |row, diff| session.give((row, diff)));
                }
            }
        }
    })
}

/// Emits `new − old` for two sorted row lists: −1 for rows only in `old`, +1 for rows only in `new`.
pub fn emit_difference<R: Ord>(old: Vec<R>, new: Vec<R>, mut emit: impl FnMut(R, i64)) {
    let (mut old, mut new) = (old.into_iter().peekable(), new.into_iter().peekable());
    loop {
        let order = match (old.peek(), new.peek()) {
            (Some(a), Some(b)) => a.cmp(b),
            (Some(_), None) => std::cmp::Ordering::Less,
            (None, Some(_)) => std::cmp::Ordering::Greater,
            (None, None) => return,
        };
        match order {
            std::cmp::Ordering::Equal => {
                old.next();
                new.next();
            }
            std::cmp::Ordering::Less => old.next().into_iter().for_each(|row| emit(row, -1)),
            std::cmp::Ordering::Greater => new.next().into_iter().for_each(|row| emit(row, 1)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::emit_difference;

    #[test]
    fn difference_retracts_and_inserts_only_what_changed() {
        let mut out = Vec::new();
        emit_difference(vec![1, 2, 4], vec![2, 3, 4, 5], |row, diff| out.push((row, diff)));
        assert_eq!(out, vec![(1, -1), (3, 1), (5, 1)]);
    }
}
