//! The processing loop of `serve`, on a thread of its own: read what is durable on the input (the
//! local log or JetStream), run it through the dataflow as one epoch, store the changes (embedded
//! tables or ClickHouse), then publish them on the driver feed.
//!
//! On start, operator state is restored from the store's `events`, then the input is read from
//! the position the store reaches to where the input ended at start; only then is the process
//! ready. Events the store already holds come back as duplicates and change nothing, so a crash
//! between storing and recording the position is harmless.

use crate::bus::parse_message;
use crate::replay::now_ms;
use crate::serve::input::Input;
use crate::serve::output::Output;
use crate::serve::ServeError;
use convoflow_api::{FeedPublisher, SeenEvents, Telemetry};
use convoflow_events::{Event, Tenants};
use convoflow_operators::{Driver, EpochOutput};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::runtime::Handle;

/// Stored events per epoch while restoring.
const RESTORE_EPOCH_EVENTS: usize = 64 * 1024;
/// Empty reads in a row after which catching up stops short of the input's end.
const CATCH_UP_EMPTY_READS: u32 = 3;
/// How long to wait for input before checking `stop` and the snapshot timer again.
const IDLE_WAIT: Duration = Duration::from_millis(200);

pub struct Runtime {
    pub tenants: Arc<Tenants>,
    pub workers: usize,
    pub output: Output,
    pub feed: FeedPublisher,
    pub seen: Arc<SeenEvents>,
    pub telemetry: Arc<Telemetry>,
    pub ready: Arc<AtomicBool>,
    pub stop: Arc<AtomicBool>,
}

/// Opens the input at a position (the one the store reaches).
pub type OpenInput = Box<dyn FnOnce(u64) -> Result<Input, ServeError> + Send>;

impl Runtime {
    /// Runs until `stop` is set, then stores what it read last. Errors here end the process.
    /// `input_id` names the input whose position the store records.
    pub fn run(mut self, input_id: String, open_input: OpenInput, handle: Handle) -> Result<(), ServeError> {
        let started = Instant::now();
        let mut driver = Driver::start(self.workers, self.tenants.clone())?;
        let restored = self.output.restore(&input_id, &handle)?;
        let restored_events = restored.events.len();
        self.restore(&mut driver, restored.events)?;
        let mut input = open_input(restored.position)?;
        // Catch up with what the input held at start, then serve.
        let start_end = input.end(&handle)?;
        if restored.position > start_end {
            return Err(ServeError::Input(format!(
                "the store's tables reach position {} of {input_id}, but it ends at {start_end}: the input was cut or replaced; \
                 restore it, or start from an empty store",
                restored.position
            )));
        }
        // Several empty reads in a row (10 s each) mean the rest is gone: messages removed from
        // a stream by its limits.
        let mut empty_reads = 0;
        while input.position() < start_end && empty_reads < CATCH_UP_EMPTY_READS {
            let read = self.epoch(&mut driver, &mut input, &input_id, start_end, true, &handle)?;
            empty_reads = if read == 0 { empty_reads + 1 } else { 0 };
        }
        self.ready.store(true, Ordering::SeqCst);
        tracing::info!(
            restored_events,
            input = %input_id,
            from = restored.position,
            to = start_end,
            seconds = started.elapsed().as_secs_f64(),
            "state restored; ready"
        );
        let spacing = self.output.epoch_spacing();
        loop {
            self.output.tick(input.position())?;
            if self.stop.load(Ordering::SeqCst) {
                // What is durable now was acknowledged to someone: apply it before stopping.
                let end = input.end(&handle)?;
                while input.position() < end && self.epoch(&mut driver, &mut input, &input_id, end, false, &handle)? > 0
                {
                }
                break;
            }
            let epoch_started = Instant::now();
            if self.epoch(&mut driver, &mut input, &input_id, u64::MAX, false, &handle)? > 0 {
                std::thread::sleep(spacing.saturating_sub(epoch_started.elapsed()));
            }
        }
        self.output.finish(input.position())?;
        driver.shutdown()?;
        Ok(())
    }

    fn restore(&mut self, driver: &mut Driver, stored: Vec<Event>) -> Result<(), ServeError> {
        let mut stored = stored.into_iter().map(|event| (0, Box::new(event))).peekable();
        while stored.peek().is_some() {
            let chunk: Vec<_> = stored.by_ref().take(RESTORE_EPOCH_EVENTS).collect();
            driver.submit(chunk, 0)?;
            let output = driver.next_output()?;
            self.seen.remember(output.tables.events.iter().map(|event| &**event));
            self.output.restored(output.tables)?;
        }
        Ok(())
    }

    /// Reads the next durable records (waiting a little when there are none) as one epoch and
    /// applies its changes; returns how many records it read. `end` bounds the wait while
    /// catching up: the input is known to hold records up to there.
    fn epoch(
        &mut self,
        driver: &mut Driver,
        input: &mut Input,
        input_id: &str,
        end: u64,
        catching_up: bool,
        handle: &Handle,
    ) -> Result<usize, ServeError> {
        let wait = if input.position() < end && end != u64::MAX { Duration::from_secs(10) } else { IDLE_WAIT };
        let records = input.next(handle, wait)?;
        if records.is_empty() {
            return Ok(0);
        }
        let started = Instant::now();
        let received_at = now_ms();
        let origin = input_origin(input);
        let mut events = Vec::new();
        let mut rejected = Vec::new();
        for record in &records {
            let (record_events, record_rejected) = parse_message(origin, record.position, &record.payload, received_at);
            events.extend(record_events);
            rejected.extend(record_rejected);
        }
        driver.submit(events, received_at)?;
        let EpochOutput { epoch, tables, rejected: conflicts, duplicates: _ } = driver.next_output()?;
        rejected.extend(conflicts);
        if catching_up {
            // Before the API was up these events were never claimed at ingest.
            self.seen.remember(tables.events.iter().map(|event| &**event));
        }
        let processed = tables.events.len() as u64;
        // The store takes the changes; the feed renders its own copy on its thread, once stored.
        let for_feed = self.feed.has_subscribers().then(|| tables.clone());
        let positions = (records.first().map_or(0, |r| r.position), input.position());
        self.output.apply(tables, &rejected, positions, input_id, handle)?;
        if let Some(tables) = for_feed {
            self.feed.publish(epoch, tables, rejected);
        }
        let telemetry = &self.telemetry;
        telemetry.events_processed.fetch_add(processed, Ordering::Relaxed);
        telemetry.epochs.fetch_add(1, Ordering::Relaxed);
        telemetry.lag.store(input.lag(), Ordering::Relaxed);
        telemetry.observe_epoch(started.elapsed().as_secs_f64());
        tracing::debug!(
            epoch,
            records = records.len(),
            events = processed,
            seconds = started.elapsed().as_secs_f64(),
            "epoch applied"
        );
        Ok(records.len())
    }
}

/// How rejected lines name where they came from.
fn input_origin(input: &Input) -> &'static str {
    match input {
        Input::Log { .. } => "log",
        Input::Stream { .. } => "nats",
    }
}
