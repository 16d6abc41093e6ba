//! Holding records until the input frontier has passed their epoch, so that an operator handles
//! each epoch once, complete, and in time order.

use timely::dataflow::operators::Capability;
use timely::progress::frontier::MutableAntichain;

pub struct EpochStash<D> {
    pending: Vec<(Capability<u64>, Vec<D>)>,
}

impl<D> Default for EpochStash<D> {
    fn default() -> Self {
        EpochStash { pending: Vec::new() }
    }
}

impl<D> EpochStash<D> {
    pub fn push(&mut self, capability: Capability<u64>, records: impl Iterator<Item = D>) {
        match self.pending.iter_mut().find(|(cap, _)| cap.time() == capability.time()) {
            Some((_, stashed)) => stashed.extend(records),
            None => self.pending.push((capability, records.collect())),
        }
    }

    /// The epochs the frontier has passed, earliest first.
    pub fn take_ready(&mut self, frontier: &MutableAntichain<u64>) -> Vec<(Capability<u64>, Vec<D>)> {
        let (mut ready, waiting): (Vec<_>, Vec<_>) =
            self.pending.drain(..).partition(|(cap, _)| !frontier.less_equal(cap.time()));
        self.pending = waiting;
        ready.sort_by_key(|(cap, _)| *cap.time());
        ready
    }
}
