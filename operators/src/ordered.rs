//! Per-key event lists kept in `(ts, event_id)` order, the SPEC §2 order, whatever the arrival
//! order. In-order arrivals append in O(1).

pub trait Ordered {
    fn order_key(&self) -> (i64, &str);
}

pub fn insert_ordered<T: Ordered>(items: &mut Vec<T>, item: T) {
    let at = match items.last() {
        Some(last) if last.order_key() < item.order_key() => items.len(),
        _ => items.partition_point(|e| e.order_key() < item.order_key()),
    };
    items.insert(at, item);
}

/// Adds `diff` to the multiplicity of `key`, forgetting keys whose multiplicity returns to zero.
pub fn add_to_multiset<K: Ord>(multiset: &mut std::collections::BTreeMap<K, i64>, key: K, diff: i64) {
    use std::collections::btree_map::Entry;
    match multiset.entry(key) {
        Entry::Occupied(mut occupied) => {
            *occupied.get_mut() += diff;
            if *occupied.get() == 0 {
                occupied.remove();
            }
        }
        Entry::Vacant(vacant) => {
            vacant.insert(diff);
        }
    }
}
