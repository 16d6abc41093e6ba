//! The local log as the runtime's source: positions are byte offsets. The runtime keeps its place
//! itself, with the store: a position says how much of the log the store's tables hold.

use super::{LocalLog, LogError, LogReader};
use crate::connector::{Batch, Read, RuntimeError, Source};
use crate::wire::parse_message;
use std::time::Duration;
use tokio::runtime::Handle;
use tokio::sync::watch;

/// Most bytes one epoch reads.
const EPOCH_BYTES: usize = 16 << 20;

pub struct LogSource {
    reader: LogReader,
    /// Where the log is durable up to, moved by every group commit.
    durable: watch::Receiver<u64>,
    input_id: String,
    handle: Handle,
}

impl LogSource {
    /// The log, from byte `position` on.
    pub fn open(log: &LocalLog, position: u64, handle: Handle) -> Result<Self, LogError> {
        Ok(LogSource {
            reader: log.reader(position)?,
            durable: log.durable_end(),
            input_id: Self::input_id(log),
            handle,
        })
    }

    /// What a store records its position in the log under.
    pub fn input_id(log: &LocalLog) -> String {
        format!("log:{}", log.id())
    }
}

impl Source for LogSource {
    fn input_id(&self) -> Option<&str> {
        Some(&self.input_id)
    }

    /// The next durable records, up to about `EPOCH_BYTES`; waits up to `wait` for the next group
    /// commit when there are none yet.
    fn read(&mut self, wait: Duration) -> Result<Read, RuntimeError> {
        let mut end = *self.durable.borrow_and_update();
        if self.reader.offset() >= end {
            let durable = &mut self.durable;
            let _ = self.handle.block_on(async { tokio::time::timeout(wait, durable.changed()).await });
            end = *self.durable.borrow_and_update();
        }
        let records = self.reader.read_until(end, EPOCH_BYTES)?;
        if records.is_empty() {
            return Ok(Read::Idle);
        }
        let received_at = convoflow_events::now_ms();
        let mut batch = Batch {
            records: records.len() as u64,
            first: records.first().map_or(0, |record| record.offset),
            last: self.reader.offset(),
            ..Batch::default()
        };
        for record in &records {
            let (events, rejected) = parse_message("log", record.offset, &record.payload, received_at);
            batch.events.extend(events);
            batch.rejected.extend(rejected);
        }
        Ok(Read::Batch(batch))
    }

    fn position(&self) -> u64 {
        self.reader.offset()
    }

    fn end(&mut self) -> Result<u64, RuntimeError> {
        Ok(*self.durable.borrow_and_update())
    }

    /// Log bytes not read yet.
    fn lag(&self) -> u64 {
        self.durable.borrow().saturating_sub(self.reader.offset())
    }
}
