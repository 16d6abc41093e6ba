//! The stream as `serve`'s source: positions are stream sequences, read with an ordered consumer
//! from the message after the position on. Like the local log, the runtime keeps its place
//! itself, with the store: a position says how much of the stream the store's tables hold.

use super::JetStreamBus;
use super::JetStreamError;
use crate::connector::{Batch, Read, RuntimeError, Source};
use crate::wire::parse_message;
use async_nats::jetstream::consumer::pull::Ordered;
use futures::{FutureExt, StreamExt};
use std::sync::Arc;
use std::time::Duration;
use tokio::runtime::Handle;

/// Most bytes one epoch reads.
const EPOCH_BYTES: usize = 16 << 20;

pub struct StreamSource {
    bus: Arc<JetStreamBus>,
    messages: Ordered,
    /// The last sequence read.
    position: u64,
    /// Messages on the stream past `position`, as the last delivery said.
    pending: u64,
    input_id: String,
    handle: Handle,
}

impl StreamSource {
    /// The stream, from the message after sequence `position` on.
    pub async fn open(bus: Arc<JetStreamBus>, position: u64, handle: Handle) -> Result<Self, JetStreamError> {
        let messages = bus.ordered_after(position).await?;
        let input_id = Self::input_id(&bus);
        Ok(StreamSource { bus, messages, position, pending: 0, input_id, handle })
    }

    /// What a store records its position in the stream under.
    pub fn input_id(bus: &JetStreamBus) -> String {
        format!("nats:{}:{}", bus.config().stream, bus.created_ms())
    }

    /// Messages that have arrived (waiting up to `wait` for the first), up to about `EPOCH_BYTES`.
    async fn next_messages(&mut self, wait: Duration) -> Result<Vec<(u64, bytes::Bytes)>, RuntimeError> {
        let mut records = Vec::new();
        let Ok(mut next) = tokio::time::timeout(wait, self.messages.next()).await else { return Ok(records) };
        let mut bytes = 0;
        loop {
            match next {
                Some(Ok(message)) => {
                    let (sequence, left) =
                        message.info().map_or((self.position + 1, 0), |info| (info.stream_sequence, info.pending));
                    // (A consumer recreated before its first delivery starts over from the
                    // stream's beginning: what was read already is skipped.)
                    if sequence > self.position {
                        if sequence > self.position + 1 {
                            tracing::warn!(
                                from = self.position + 1,
                                to = sequence - 1,
                                "messages missing from the stream (removed by its limits or by hand)"
                            );
                        }
                        (self.position, self.pending) = (sequence, left);
                        bytes += message.payload.len();
                        records.push((sequence, message.payload.clone()));
                    }
                }
                // The ordered consumer recreates itself; what it missed comes again.
                Some(Err(error)) => {
                    tracing::warn!(%error, "reading the stream failed; retrying");
                    break;
                }
                None => return Err(RuntimeError::Input("the JetStream consumer ended".to_owned())),
            }
            if bytes >= EPOCH_BYTES {
                break;
            }
            // Take what has arrived already, without waiting for more.
            match self.messages.next().now_or_never() {
                Some(more) => next = more,
                None => break,
            }
        }
        Ok(records)
    }
}

impl Source for StreamSource {
    fn input_id(&self) -> Option<&str> {
        Some(&self.input_id)
    }

    fn read(&mut self, wait: Duration) -> Result<Read, RuntimeError> {
        let handle = self.handle.clone();
        let records = handle.block_on(self.next_messages(wait))?;
        if records.is_empty() {
            return Ok(Read::Idle);
        }
        let received_at = convoflow_events::now_ms();
        let mut batch = Batch {
            records: records.len() as u64,
            first: records.first().map_or(0, |(sequence, _)| *sequence),
            last: self.position,
            ..Batch::default()
        };
        for (sequence, payload) in &records {
            let (events, rejected) = parse_message("nats", *sequence, payload, received_at);
            batch.events.extend(events);
            batch.rejected.extend(rejected);
        }
        Ok(Read::Batch(batch))
    }

    fn position(&self) -> u64 {
        self.position
    }

    fn end(&mut self) -> Result<u64, RuntimeError> {
        let (handle, bus) = (self.handle.clone(), self.bus.clone());
        Ok(handle.block_on(bus.last_sequence())?)
    }

    /// Stream messages not read yet.
    fn lag(&self) -> u64 {
        self.pending
    }
}
