//! Where `serve`'s runtime reads durable input: the local log (positions are byte offsets) or a
//! JetStream stream (positions are stream sequences). Either way the runtime keeps its place
//! itself, with the store: a position says how much input the store's tables hold.
//! [`BusSource`] is either as the runtime's [`Source`].

use crate::bus::jetstream::JetStreamBus;
use crate::bus::local::{LocalLog, LogError, LogReader};
use crate::bus::{parse_message, BusError};
use crate::runtime::{Batch, Read, RuntimeError, Source};
use async_nats::jetstream::consumer::pull::Ordered;
use futures::{FutureExt, StreamExt};
use std::sync::Arc;
use std::time::Duration;
use tokio::runtime::Handle;
use tokio::sync::watch;

/// Most bytes one epoch reads.
const EPOCH_BYTES: usize = 16 << 20;

/// One durable record: its position (log offset or stream sequence) and NDJSON lines.
pub struct Record {
    pub position: u64,
    pub payload: bytes::Bytes,
}

// One per process: the size of the larger variant costs nothing.
#[allow(clippy::large_enum_variant)]
pub enum Input {
    Log {
        reader: LogReader,
        durable: watch::Receiver<u64>,
    },
    /// `pending`: messages on the stream past `position`, as the last delivery said.
    Stream {
        bus: Arc<JetStreamBus>,
        messages: Ordered,
        position: u64,
        pending: u64,
    },
}

impl Input {
    /// The log, from byte `position` on.
    pub fn log(log: Arc<LocalLog>, position: u64) -> Result<Self, LogError> {
        Ok(Input::Log { reader: log.reader(position)?, durable: log.durable_end() })
    }

    /// The stream, from the message after sequence `position` on.
    pub async fn stream(bus: Arc<JetStreamBus>, position: u64) -> Result<Self, BusError> {
        Ok(Input::Stream { messages: bus.ordered_after(position).await?, bus, position, pending: 0 })
    }

    /// What a store records its position in the log under.
    pub fn log_id(log: &LocalLog) -> String {
        format!("log:{}", log.id())
    }

    /// What a store records its position in the stream under.
    pub fn stream_id(bus: &JetStreamBus) -> String {
        format!("nats:{}:{}", bus.config().stream, bus.created_ms())
    }

    /// How much input has been read: the log offset, or the last stream sequence.
    pub fn position(&self) -> u64 {
        match self {
            Input::Log { reader, .. } => reader.offset(),
            Input::Stream { position, .. } => *position,
        }
    }

    /// How far behind the input's end the reading is: log bytes, or stream messages.
    pub fn lag(&self) -> u64 {
        match self {
            Input::Log { reader, durable, .. } => durable.borrow().saturating_sub(reader.offset()),
            Input::Stream { pending, .. } => *pending,
        }
    }

    /// Where the input ends now; what is there must be read before the server is ready.
    pub fn end(&mut self, handle: &Handle) -> Result<u64, RuntimeError> {
        match self {
            Input::Log { durable, .. } => Ok(*durable.borrow_and_update()),
            Input::Stream { bus, .. } => Ok(handle.block_on(bus.last_sequence())?),
        }
    }

    /// The next durable records, up to about `EPOCH_BYTES`; waits up to `wait` when there are
    /// none yet, and returns none if none came.
    pub fn next(&mut self, handle: &Handle, wait: Duration) -> Result<Vec<Record>, RuntimeError> {
        match self {
            Input::Log { reader, durable, .. } => {
                let mut end = *durable.borrow_and_update();
                if reader.offset() >= end {
                    // Wake on the next group commit.
                    let _ = handle.block_on(async { tokio::time::timeout(wait, durable.changed()).await });
                    end = *durable.borrow_and_update();
                }
                let records = reader.read_until(end, EPOCH_BYTES)?;
                Ok(records
                    .into_iter()
                    .map(|record| Record { position: record.offset, payload: record.payload.into() })
                    .collect())
            }
            Input::Stream { messages, position, pending, .. } => {
                handle.block_on(next_messages(messages, position, pending, wait))
            }
        }
    }
}

/// Messages that have arrived (waiting up to `wait` for the first), up to about `EPOCH_BYTES`.
async fn next_messages(
    messages: &mut Ordered,
    position: &mut u64,
    pending: &mut u64,
    wait: Duration,
) -> Result<Vec<Record>, RuntimeError> {
    let mut records = Vec::new();
    let Ok(mut next) = tokio::time::timeout(wait, messages.next()).await else { return Ok(records) };
    let mut bytes = 0;
    loop {
        match next {
            Some(Ok(message)) => {
                let (sequence, left) =
                    message.info().map_or((*position + 1, 0), |info| (info.stream_sequence, info.pending));
                // (A consumer recreated before its first delivery starts over from the stream's
                // beginning: what was read already is skipped.)
                if sequence > *position {
                    if sequence > *position + 1 {
                        tracing::warn!(
                            from = *position + 1,
                            to = sequence - 1,
                            "messages missing from the stream (removed by its limits or by hand)"
                        );
                    }
                    (*position, *pending) = (sequence, left);
                    bytes += message.payload.len();
                    records.push(Record { position: sequence, payload: message.payload.clone() });
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
        match messages.next().now_or_never() {
            Some(more) => next = more,
            None => break,
        }
    }
    Ok(records)
}

/// The log or the stream as the runtime's source.
pub struct BusSource {
    pub input: Input,
    pub input_id: String,
    pub handle: Handle,
}

impl Source for BusSource {
    fn input_id(&self) -> Option<&str> {
        Some(&self.input_id)
    }

    fn read(&mut self, wait: Duration) -> Result<Read, RuntimeError> {
        let records = self.input.next(&self.handle, wait)?;
        if records.is_empty() {
            return Ok(Read::Idle);
        }
        let received_at = crate::replay::now_ms();
        let origin = match self.input {
            Input::Log { .. } => "log",
            Input::Stream { .. } => "nats",
        };
        let mut batch = Batch {
            records: records.len() as u64,
            first: records.first().map_or(0, |record| record.position),
            last: self.input.position(),
            ..Batch::default()
        };
        for record in &records {
            let (events, rejected) = parse_message(origin, record.position, &record.payload, received_at);
            batch.events.extend(events);
            batch.rejected.extend(rejected);
        }
        Ok(Read::Batch(batch))
    }

    fn position(&self) -> u64 {
        self.input.position()
    }

    fn end(&mut self) -> Result<u64, RuntimeError> {
        self.input.end(&self.handle)
    }

    fn lag(&self) -> u64 {
        self.input.lag()
    }
}
