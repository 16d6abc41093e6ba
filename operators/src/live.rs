//! A long-running dataflow fed epoch by epoch from outside (a bus consumer), which hands back
//! each epoch's table updates once every worker has finished it — the point at which a sink may
//! commit them and the bus may acknowledge the input.
//!
//! Operator state lives as long as the dataflow: every event ever admitted stays known to dedup,
//! so a redelivered message is absorbed as duplicates and changes no table.

use crate::dedup::Positioned;
use crate::rows::RejectedRow;
use crate::runtime::{attach, conflict_row, RuntimeError, WorkerOutput};
use crate::tables::TableSet;
use convoflow_events::Tenants;
use std::collections::BTreeMap;
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::Arc;

/// The consolidated changes one epoch made.
#[derive(Default)]
pub struct EpochOutput {
    pub epoch: u64,
    /// Updates with their diffs (consolidated within the epoch), and newly accepted events.
    pub tables: TableSet,
    /// Conflicting duplicates found by the dataflow.
    pub rejected: Vec<RejectedRow>,
    pub duplicates: u64,
}

struct WorkerDone {
    epoch: u64,
    output: WorkerOutput,
}

pub struct LiveDataflow {
    feeds: Vec<Sender<(u64, Vec<Positioned>)>>,
    done: Receiver<WorkerDone>,
    pending: BTreeMap<u64, (usize, EpochOutput)>,
    received_at: BTreeMap<u64, i64>,
    next_epoch: u64,
    next_output: u64,
    guards: Option<timely::communication::WorkerGuards<()>>,
}

impl LiveDataflow {
    /// Starts `workers` worker threads, idle until the first epoch is submitted.
    pub fn start(workers: usize, tenants: Arc<Tenants>) -> Result<Self, RuntimeError> {
        let workers = workers.max(1);
        let (feeds, receivers): (Vec<_>, Vec<_>) = (0..workers).map(|_| channel()).unzip();
        let receivers = std::sync::Mutex::new(receivers.into_iter().map(Some).collect::<Vec<_>>());
        let (done_sender, done) = channel();
        let config = timely::Config::process(workers);
        let guards = timely::execute(config, move |worker| {
            let feed: Receiver<(u64, Vec<Positioned>)> = {
                let mut receivers = receivers.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
                match receivers.get_mut(worker.index()).and_then(Option::take) {
                    Some(feed) => feed,
                    None => return,
                }
            };
            let done_sender: Sender<WorkerDone> = done_sender.clone();
            let (mut input, probe, collected) = attach(worker, tenants.clone());
            // Blocking between epochs is safe: every worker gets every epoch (maybe empty), and
            // one only waits for the next after the whole dataflow has finished this one.
            while let Ok((epoch, mut events)) = feed.recv() {
                input.send_batch(&mut events);
                input.advance_to(epoch + 1);
                while probe.less_than(&(epoch + 1)) {
                    worker.step();
                }
                let mut output = collected.take();
                output.tables.consolidate();
                if done_sender.send(WorkerDone { epoch, output }).is_err() {
                    break;
                }
            }
        })
        .map_err(RuntimeError::Start)?;
        Ok(LiveDataflow {
            feeds,
            done,
            pending: BTreeMap::new(),
            received_at: BTreeMap::new(),
            next_epoch: 0,
            next_output: 0,
            guards: Some(guards),
        })
    }

    /// Feeds one epoch, spread evenly over the workers; returns its number. `received_at`
    /// stamps the conflicting duplicates it finds.
    pub fn submit(&mut self, mut events: Vec<Positioned>, received_at: i64) -> Result<u64, RuntimeError> {
        let epoch = self.next_epoch;
        self.next_epoch += 1;
        self.received_at.insert(epoch, received_at);
        let workers = self.feeds.len();
        let share = events.len().div_ceil(workers);
        for index in (0..workers).rev() {
            let part = events.split_off((index * share).min(events.len()));
            self.feeds[index].send((epoch, part)).map_err(|_| self.failure())?;
        }
        Ok(epoch)
    }

    /// Epochs submitted and not yet returned by `next_output`.
    pub fn in_flight(&self) -> u64 {
        self.next_epoch - self.next_output
    }

    /// Waits for the oldest submitted epoch to finish on every worker and returns its changes.
    pub fn next_output(&mut self) -> Result<EpochOutput, RuntimeError> {
        let workers = self.feeds.len();
        let wanted = self.next_output;
        loop {
            if let Some((count, _)) = self.pending.get(&wanted) {
                if *count == workers {
                    break;
                }
            }
            let WorkerDone { epoch, output } = self.done.recv().map_err(|_| self.failure())?;
            let received_at = self.received_at.get(&epoch).copied().unwrap_or_default();
            let (count, merged) =
                self.pending.entry(epoch).or_insert_with(|| (0, EpochOutput { epoch, ..EpochOutput::default() }));
            *count += 1;
            merged.tables.merge(output.tables);
            merged.rejected.extend(output.conflicts.iter().map(|event| conflict_row(event, received_at)));
            merged.duplicates += output.duplicates;
        }
        self.next_output += 1;
        self.received_at.remove(&wanted);
        let (_, output) = self.pending.remove(&wanted).unwrap_or_default();
        Ok(output)
    }

    /// Stops the workers after the epochs already submitted.
    pub fn shutdown(mut self) -> Result<(), RuntimeError> {
        self.feeds.clear();
        self.join()
    }

    fn join(&mut self) -> Result<(), RuntimeError> {
        if let Some(guards) = self.guards.take() {
            for result in guards.join() {
                result.map_err(RuntimeError::Worker)?;
            }
        }
        Ok(())
    }

    /// A worker went away: report why, if it panicked.
    fn failure(&mut self) -> RuntimeError {
        self.feeds.clear();
        match self.join() {
            Err(error) => error,
            Ok(()) => RuntimeError::Worker("the dataflow workers stopped".to_owned()),
        }
    }
}

impl Drop for LiveDataflow {
    fn drop(&mut self) {
        self.feeds.clear();
        let _ = self.join();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use convoflow_events::parse_event;

    fn positioned(line: &str, position: u64) -> Positioned {
        (position, Box::new(parse_event(line.as_bytes()).expect("valid event")))
    }

    const IN: &str = r#"{"event_id":"in1","tenant_id":"t","ts":1000,"type":"message.received","contact_id":"c","conversation_id":"v","message_id":"m"}"#;
    const OUT: &str = r#"{"event_id":"out1","tenant_id":"t","ts":4000,"type":"message.sent","contact_id":"c","conversation_id":"v","message_id":"m2","sender":"agent","agent_id":"a"}"#;
    const LATE: &str = r#"{"event_id":"in0","tenant_id":"t","ts":500,"type":"message.received","contact_id":"c","conversation_id":"v","message_id":"m"}"#;

    #[test]
    fn each_epoch_returns_only_its_own_changes_and_redelivery_changes_nothing() {
        for workers in [1, 2] {
            let mut live = LiveDataflow::start(workers, Arc::new(Tenants::default())).expect("start");
            live.submit(vec![positioned(IN, 1), positioned(OUT, 2)], 7).expect("submit");
            let first = live.next_output().expect("epoch 0");
            assert_eq!(first.tables.events.len(), 2);
            assert_eq!(first.tables.responses.len(), 1);
            assert_eq!(first.tables.responses.updates[0].0.response_ms, 3000);

            // A late inbound message moves the waiting period's start: −1 old row, +1 new row.
            live.submit(vec![positioned(LATE, 3)], 7).expect("submit");
            let second = live.next_output().expect("epoch 1");
            let diffs: Vec<(i64, i64)> =
                second.tables.responses.updates.iter().map(|(row, diff)| (row.response_ms, *diff)).collect();
            assert_eq!(diffs.len(), 2, "workers = {workers}");
            assert!(diffs.contains(&(3000, -1)) && diffs.contains(&(3500, 1)), "{diffs:?}");

            // The same events again: all duplicates, no change to any table.
            live.submit(vec![positioned(IN, 1), positioned(OUT, 2), positioned(LATE, 3)], 7).expect("submit");
            let third = live.next_output().expect("epoch 2");
            assert_eq!(third.duplicates, 3);
            assert!(third.tables.events.is_empty() && third.tables.counts().iter().all(|(_, rows)| *rows == 0));
            live.shutdown().expect("shutdown");
        }
    }
}
