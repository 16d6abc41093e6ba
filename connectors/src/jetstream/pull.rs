//! A JetStream pull consumer as the runtime's source, for `replay --nats` / `--from-nats`: the
//! durable consumer (which keeps its place by acknowledgements: a message is acknowledged only
//! once the sink holds what it caused) or a replay consumer over the stream. One epoch per fetch.
//! It ends once the publisher beside it is done and every message is delivered and acknowledged.

use super::{Consumer, Delivery};
use crate::connector::{Batch, Read, RuntimeError, Source};
use crate::wire::parse_messages;
use convoflow_events::now_ms;
use convoflow_operators::RejectedRow;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::runtime::Handle;

/// The publisher's state, shared with the consumer.
#[derive(Clone, Default)]
pub struct Publishing {
    done: Arc<AtomicBool>,
    /// The input lines it found invalid, handed over once it is done.
    rejected: Arc<Mutex<Vec<RejectedRow>>>,
}

impl Publishing {
    /// The publisher is done; `rejected` are the lines it found invalid.
    pub fn done(&self, rejected: Vec<RejectedRow>) {
        *lock(&self.rejected) = rejected;
        self.done.store(true, Ordering::SeqCst);
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A JetStream consumer as the runtime's source. It keeps its place by acknowledgements, so its
/// positions count reads: position n is the n-th read, acknowledged once the sink holds it.
pub struct ConsumerSource<'a> {
    consumer: &'a mut Consumer,
    handle: Handle,
    origin: String,
    workers: usize,
    epoch_messages: usize,
    publishing: Publishing,
    reads: u64,
    /// Each read's deliveries, until the sink holds it.
    unacknowledged: VecDeque<(u64, Vec<Delivery>)>,
}

impl<'a> ConsumerSource<'a> {
    /// `origin` names the stream in rejections; each fetch takes up to `epoch_messages` messages,
    /// parsed on `workers` threads.
    pub fn new(
        consumer: &'a mut Consumer,
        handle: Handle,
        origin: String,
        workers: usize,
        epoch_messages: usize,
        publishing: Publishing,
    ) -> Self {
        ConsumerSource {
            consumer,
            handle,
            origin,
            workers,
            epoch_messages,
            publishing,
            reads: 0,
            unacknowledged: VecDeque::new(),
        }
    }
}

impl Source for ConsumerSource<'_> {
    fn input_id(&self) -> Option<&str> {
        None
    }

    fn read(&mut self, wait: Duration) -> Result<Read, RuntimeError> {
        let deliveries = self.handle.block_on(self.consumer.fetch(self.epoch_messages));
        if deliveries.is_empty() {
            // Done once every message is delivered and acknowledged, but for those still held
            // here (a sink that makes them durable only at its end holds them all).
            let held = self.unacknowledged.iter().map(|(_, deliveries)| deliveries.len()).sum();
            if self.publishing.done.load(Ordering::SeqCst) && self.handle.block_on(self.consumer.finished(held)) {
                let rejected = std::mem::take(&mut *lock(&self.publishing.rejected));
                if rejected.is_empty() {
                    return Ok(Read::End);
                }
                return Ok(Read::Batch(Batch { rejected, ..Batch::default() }));
            }
            std::thread::sleep(wait.min(Duration::from_millis(20)));
            return Ok(Read::Idle);
        }
        let messages: Vec<(u64, &[u8])> = deliveries.iter().map(|d| (d.sequence, &d.payload[..])).collect();
        let (events, rejected) = parse_messages(&self.origin, &messages, now_ms(), self.workers);
        self.reads += 1;
        let batch = Batch {
            events,
            rejected,
            records: deliveries.len() as u64,
            first: deliveries.iter().map(|d| d.sequence).min().unwrap_or(0),
            last: deliveries.iter().map(|d| d.sequence).max().unwrap_or(0),
        };
        self.unacknowledged.push_back((self.reads, deliveries));
        Ok(Read::Batch(batch))
    }

    fn position(&self) -> u64 {
        self.reads
    }

    fn end(&mut self) -> Result<u64, RuntimeError> {
        Ok(self.reads)
    }

    fn acknowledge(&mut self, position: u64) -> Result<(), RuntimeError> {
        let mut acks = Vec::new();
        while self.unacknowledged.front().is_some_and(|(read, _)| *read <= position) {
            if let Some((_, deliveries)) = self.unacknowledged.pop_front() {
                acks.extend(deliveries.into_iter().map(Delivery::ack));
            }
        }
        self.handle.block_on(futures::future::join_all(acks));
        Ok(())
    }
}
