//! The one runtime loop: a position-addressed [`Source`], the dataflow [`Driver`] and a [`Sink`]
//! (the traits, and every source and sink, are in `convoflow_connectors`).
//! `serve` (the local log or JetStream into the in-memory tables or ClickHouse), `replay` (files
//! into the Parquet store) and `replay --nats` / `replay --from-nats` (a JetStream consumer into
//! either store) are this loop with different parts; restoring and commit-then-acknowledge exist
//! only here.
//!
//! 1. **Restore.** The sink gives back the events it holds, how far into the source's input its
//!    tables reach, and the operator state saved with those tables, if any. The driver resumes
//!    from that state, reading keys from it as epochs touch them; the sink is given every derived
//!    row then, or nothing when it keeps its derived tables ([`Sink::resume`]). Without a state,
//!    or when it cannot be loaded, the events go through the driver (in epochs of
//!    [`RESTORE_EPOCH_EVENTS`]) to rebuild it, and the rows go back to the sink. A sink that keeps
//!    state has it saved when it asks ([`Sink::state_due`]: before a `serve` snapshot, and at the
//!    end, before it finishes), after every finished epoch is committed, so the state is of
//!    exactly what the sink's next write holds. A replay's sink also has it saved every so many
//!    accepted events ([`Sink::spill`]), so the keys touched leave memory.
//! 2. **Catch up.** The source opens at that position and is read up to where its input ended at
//!    start; only then is the caller told it is ready ([`Observer::ready`]).
//! 3. **Epochs.** Each read is one epoch. While the workers run it, the previous epoch is
//!    committed by the sink, with the input position it takes the tables to, and then the source
//!    is told to acknowledge what the sink now holds durably. An epoch is therefore acknowledged
//!    only once committed: a crash between the two leaves a committed epoch whose input comes
//!    again, absorbed as duplicates because state is restored from the committed events.
//! 4. **End.** A finite source ends; an endless one is read until `stop`, then up to where its
//!    input ends at that moment (what was acknowledged to a client must be applied). The sink then
//!    finishes (a last snapshot) and the source acknowledges what it holds.

use convoflow_connectors::{Commit, Read, Restored, RuntimeError, SavedState, Sink, Source};
use convoflow_events::{Event, Tenants};
use convoflow_operators::{Driver, EpochOutput, RejectedRow};
use convoflow_schema::events_from_batch;
use datafusion::arrow::record_batch::RecordBatch;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Stored events per epoch while restoring.
pub const RESTORE_EPOCH_EVENTS: usize = 64 * 1024;
/// Empty reads in a row after which catching up stops short of the input's end (messages removed
/// from a stream by its limits never come).
const CATCH_UP_EMPTY_READS: u32 = 3;
/// How long a read waits for input when there is none, before `stop` is looked at again.
const IDLE_WAIT: Duration = Duration::from_millis(200);
/// How long a read waits while catching up: the input is known to hold more.
const CATCH_UP_WAIT: Duration = Duration::from_secs(10);

/// What the caller does around the loop (`serve`: the seen-events index, the feed, telemetry).
pub trait Observer {
    /// Whether it is shown the `events` stored events when state is resumed, as their keys and
    /// fingerprints ([`Observer::seen`]), making room for them; a re-feed shows them anyway.
    fn wants_stored(&mut self, _events: u64) -> bool {
        false
    }
    /// Stored events, chunk by chunk, while restoring.
    fn stored(&mut self, _events: &[Event]) {}
    /// A stored event's key and fingerprint, as a resumed state's dedup holds them (instead of
    /// [`Observer::stored`], for the events that state covers).
    fn seen(&mut self, _key: u128, _fingerprint: u64) {}
    /// An epoch is finished by the dataflow and about to be committed.
    fn finished(&mut self, _epoch: &EpochOutput, _rejected: &[RejectedRow], _catching_up: bool) {}
    /// The epoch is committed.
    fn committed(&mut self, _epoch: u64, _rejected: &[RejectedRow], _stats: &EpochStats) {}
    /// Restored and caught up with what the input held at start (`from`..`to`).
    fn ready(&mut self, _stats: &RunStats, _from: u64, _to: u64) {}
}

/// Nothing around the loop.
pub struct Quiet;
impl Observer for Quiet {}

pub struct EpochStats {
    pub records: u64,
    pub events: u64,
    pub lag: u64,
    pub seconds: f64,
}

/// Counts of one run.
#[derive(Debug, Default, Clone)]
pub struct RunStats {
    pub records: u64,
    pub lines: u64,
    pub accepted: u64,
    pub duplicates: u64,
    pub rejected: u64,
    pub commits: u64,
    pub rows: u64,
    pub restored_events: u64,
    /// Operator state was resumed from what the sink saved, not rebuilt by re-feeding.
    pub resumed: bool,
    /// Stored events re-fed after resuming, which the saved state did not cover.
    pub since_state: u64,
    pub restore_seconds: f64,
    /// Saving the operator state (at the end, and with each `serve` snapshot).
    pub save_seconds: f64,
    pub seconds: f64,
}

/// An epoch the dataflow finished and the sink has yet to commit.
struct Finished {
    output: EpochOutput,
    rejected: Vec<RejectedRow>,
    first: u64,
    last: u64,
    position: u64,
    records: u64,
    started: Instant,
}

/// Starts the driver on `workers` with operator state restored from what `sink` holds: resumed
/// from the state saved beside its tables when there is one that loads, else by re-feeding the
/// stored events. Returns the driver and where in the input the sink's tables end.
pub fn restore<K: Sink + Send, O: Observer>(
    workers: usize,
    tenants: Arc<Tenants>,
    sink: &mut K,
    observer: &mut O,
    input_id: Option<&str>,
) -> Result<(Driver, u64, RunStats), RuntimeError> {
    let started = Instant::now();
    let Restored { events, position, state, since_state } = sink.restore(input_id)?;
    let loaded = started.elapsed().as_secs_f64();
    let mut stats = RunStats { restored_events: events.rows(), ..RunStats::default() };
    if let Some(state) = state {
        match Driver::resume(workers, tenants.clone(), &state.dir, &state.generation, sink.resume()) {
            Ok((mut driver, restored)) => {
                let observe = observer.wants_stored(stats.restored_events);
                // The sink loads its tables while the observer is shown the stored events.
                std::thread::scope(|scope| -> Result<(), RuntimeError> {
                    let loading = scope.spawn(|| sink.resumed());
                    if observe {
                        Driver::saved_events(&state.dir, &state.generation, &tenants, |key, print| {
                            observer.seen(key, print)
                        })?;
                    }
                    loading.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic))
                })?;
                sink.restored(restored.tables)?;
                for chunk in chunks(since_state.into_iter().map(Ok)) {
                    let events = stored_events(&chunk?)?;
                    if observe {
                        observer.stored(&events);
                    }
                    stats.since_state += events.len() as u64;
                    driver.submit(events.into_iter().map(|event| (0, Box::new(event))).collect(), 0)?;
                    sink.restored(driver.next_output()?.tables)?;
                }
                let resumed = started.elapsed().as_secs_f64();
                stats.resumed = true;
                stats.restore_seconds = started.elapsed().as_secs_f64();
                tracing::info!(
                    generation = %state.generation,
                    since_state = stats.since_state,
                    loaded,
                    resumed,
                    seconds = stats.restore_seconds,
                    "operator state resumed (seconds since the restore began)"
                );
                return Ok((driver, position, stats));
            }
            Err(error) => tracing::warn!(%error, "the saved operator state is not used: re-feeding the stored events"),
        }
    }
    let mut driver = Driver::start(workers, tenants)?;
    let mut fed = 0;
    for chunk in chunks(events.batches()) {
        let stored = stored_events(&chunk?)?;
        observer.stored(&stored);
        fed += stored.len() as u64;
        driver.submit(stored.into_iter().map(|event| (0, Box::new(event))).collect(), 0)?;
        let output = driver.next_output()?;
        sink.restored(output.tables)?;
        if let Some(state) = sink.spill(fed) {
            let saving = Instant::now();
            driver.save(&state.dir, &state.generation)?;
            stats.save_seconds += saving.elapsed().as_secs_f64();
        }
    }
    stats.restore_seconds = started.elapsed().as_secs_f64();
    Ok((driver, position, stats))
}

/// The stored events in slices of at most [`RESTORE_EPOCH_EVENTS`] rows (no copy).
fn chunks(
    batches: impl Iterator<Item = Result<RecordBatch, RuntimeError>>,
) -> impl Iterator<Item = Result<RecordBatch, RuntimeError>> {
    batches.flat_map(|batch| -> Box<dyn Iterator<Item = Result<RecordBatch, RuntimeError>>> {
        match batch {
            Ok(batch) => Box::new(
                (0..batch.num_rows())
                    .step_by(RESTORE_EPOCH_EVENTS)
                    .map(move |offset| Ok(batch.slice(offset, RESTORE_EPOCH_EVENTS.min(batch.num_rows() - offset)))),
            ),
            Err(error) => Box::new(std::iter::once(Err(error))),
        }
    })
}

fn stored_events(batch: &RecordBatch) -> Result<Vec<Event>, RuntimeError> {
    events_from_batch(batch).map_err(RuntimeError::Stored)
}

/// The loop; see the module doc.
pub struct Runtime<'a, S: Source, K: Sink, O: Observer> {
    /// Opened where [`restore`] said the sink's tables end.
    pub source: S,
    pub sink: &'a mut K,
    pub observer: O,
    pub driver: Driver,
    /// Set to end an endless source.
    pub stop: Arc<AtomicBool>,
    /// The least time between the starts of two epochs once caught up. Zero: epochs are
    /// pipelined, the next one running while the previous one is committed. ClickHouse under
    /// `serve` takes a commit as an insert per table, and many tiny inserts make many parts for it
    /// to merge, so there epochs gather what came in over a fifth of a second.
    pub spacing: Duration,
}

impl<S: Source, K: Sink, O: Observer> Runtime<'_, S, K, O> {
    /// Runs until a finite source ends, or `stop` is set; `stats` are [`restore`]'s.
    pub fn run(mut self, mut stats: RunStats) -> Result<(RunStats, O), RuntimeError> {
        let started = Instant::now();
        let from = self.source.position();
        let start_end = self.source.end()?;
        if from > start_end {
            let input = self.source.input_id().unwrap_or("the input").to_owned();
            return Err(RuntimeError::Input(format!(
                "the store's tables reach position {from} of {input}, but it ends at {start_end}: the input was cut or \
                 replaced; restore it, or start from an empty store"
            )));
        }
        let pipelined = self.spacing.is_zero();
        let mut catching_up = true;
        let mut empty_reads = 0;
        let mut stop_at: Option<u64> = None;
        let mut held: Option<Finished> = None;
        let mut last_batch: Option<Instant> = None;
        // How far the sink's commits reach: all a snapshot between epochs may claim (the source's
        // position is further on while an epoch waits to be committed).
        let mut reach = from;
        // Events through the driver before the loop: those re-fed, if any.
        let fed = if stats.resumed { stats.since_state } else { stats.restored_events };
        loop {
            if let Some(state) = self.sink.spill(fed + stats.accepted) {
                if let Some(finished) = held.take() {
                    self.commit(finished, &mut reach, &mut stats)?;
                }
                self.save_state(&state, &mut stats)?;
            }
            if catching_up && (self.source.position() >= start_end || empty_reads >= CATCH_UP_EMPTY_READS) {
                if let Some(finished) = held.take() {
                    self.commit(finished, &mut reach, &mut stats)?;
                }
                catching_up = false;
                self.observer.ready(&stats, from, start_end);
            }
            if !catching_up {
                let after = held.as_ref().map_or(reach, |finished| finished.position);
                if let Some(state) = self.sink.state_due(after, false)? {
                    if let Some(finished) = held.take() {
                        self.commit(finished, &mut reach, &mut stats)?;
                    }
                    self.save_state(&state, &mut stats)?;
                }
                if let Some(durable) = self.sink.tick(reach)? {
                    self.source.acknowledge(durable)?;
                }
            }
            if stop_at.is_none() && self.stop.load(Ordering::SeqCst) {
                // What is durable now was acknowledged to someone: apply it before stopping.
                stop_at = Some(self.source.end()?);
            }
            if stop_at.is_some_and(|end| self.source.position() >= end) {
                break;
            }
            if !catching_up && stop_at.is_none() {
                if let Some(last) = last_batch {
                    std::thread::sleep(self.spacing.saturating_sub(last.elapsed()));
                }
            }
            // With an epoch waiting to be committed, take only what is there already: the waiting
            // epoch is committed before any wait.
            let wait = match (&held, catching_up || stop_at.is_some()) {
                (Some(_), _) => Duration::ZERO,
                (None, true) => CATCH_UP_WAIT,
                (None, false) => IDLE_WAIT,
            };
            let read_started = Instant::now();
            match self.source.read(wait)? {
                Read::Batch(batch) => {
                    let processing = Instant::now();
                    empty_reads = 0;
                    last_batch = Some(read_started);
                    stats.records += batch.records;
                    stats.lines += (batch.events.len() + batch.rejected.len()) as u64;
                    self.driver.submit(batch.events, convoflow_events::now_ms())?;
                    if let Some(finished) = held.take() {
                        self.commit(finished, &mut reach, &mut stats)?;
                    }
                    let output = self.driver.next_output()?;
                    let mut rejected = batch.rejected;
                    rejected.extend(output.rejected.iter().cloned());
                    self.observer.finished(&output, &rejected, catching_up);
                    let finished = Finished {
                        output,
                        rejected,
                        first: batch.first,
                        last: batch.last,
                        position: self.source.position(),
                        records: batch.records,
                        started: processing,
                    };
                    if pipelined {
                        held = Some(finished);
                    } else {
                        self.commit(finished, &mut reach, &mut stats)?;
                    }
                }
                Read::Idle => match held.take() {
                    Some(finished) => self.commit(finished, &mut reach, &mut stats)?,
                    None if catching_up => empty_reads += 1,
                    // The input ends short of where it said it did: nothing more will come.
                    None if stop_at.is_some() => break,
                    None => {}
                },
                Read::End => break,
            }
        }
        if let Some(finished) = held.take() {
            self.commit(finished, &mut reach, &mut stats)?;
        }
        if let Some(state) = self.sink.state_due(reach, true)? {
            self.save_state(&state, &mut stats)?;
        }
        // The workers' state goes before the sink finishes: a replay's one write then reuses
        // its memory instead of adding to it.
        self.driver.shutdown()?;
        if let Some(durable) = self.sink.finish(reach)? {
            self.source.acknowledge(durable)?;
        }
        stats.seconds = started.elapsed().as_secs_f64();
        Ok((stats, self.observer))
    }

    /// Saves the operator state after every epoch committed so far (none is in flight).
    fn save_state(&mut self, state: &SavedState, stats: &mut RunStats) -> Result<(), RuntimeError> {
        let saving = Instant::now();
        self.driver.save(&state.dir, &state.generation)?;
        let seconds = saving.elapsed().as_secs_f64();
        stats.save_seconds += seconds;
        tracing::debug!(generation = %state.generation, seconds, "operator state saved");
        Ok(())
    }

    fn commit(&mut self, finished: Finished, reach: &mut u64, stats: &mut RunStats) -> Result<(), RuntimeError> {
        let Finished { output, rejected, first, last, position, records, started } = finished;
        let EpochOutput { epoch, tables, rejected: _, duplicates } = output;
        let events = tables.events.len() as u64;
        let input_id = self.source.input_id().map(str::to_owned);
        let commit = Commit { epoch, rejected: &rejected, first, last, position, input_id: input_id.as_deref() };
        let committed = self.sink.commit(tables, commit)?;
        *reach = position;
        if let Some(durable) = committed.durable {
            self.source.acknowledge(durable)?;
        }
        stats.accepted += events;
        stats.duplicates += duplicates;
        stats.rejected += rejected.len() as u64;
        stats.rows += committed.rows;
        stats.commits += 1;
        let epoch_stats =
            EpochStats { records, events, lag: self.source.lag(), seconds: started.elapsed().as_secs_f64() };
        self.observer.committed(epoch, &rejected, &epoch_stats);
        tracing::debug!(epoch, records, events, rows = committed.rows, "epoch committed");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use convoflow_connectors::{Batch, Committed, StoredEvents};
    use convoflow_events::{parse_event, Tenants};
    use convoflow_operators::TableSet;

    /// One event per read, then the end; its input ends at 0, so the loop is caught up at once.
    struct Reads {
        left: Vec<Batch>,
        position: u64,
    }

    impl Source for Reads {
        fn input_id(&self) -> Option<&str> {
            Some("test")
        }
        fn read(&mut self, _wait: Duration) -> Result<Read, RuntimeError> {
            Ok(match self.left.pop() {
                Some(batch) => {
                    self.position = batch.last + 1;
                    Read::Batch(batch)
                }
                None => Read::End,
            })
        }
        fn position(&self) -> u64 {
            self.position
        }
        fn end(&mut self) -> Result<u64, RuntimeError> {
            Ok(0)
        }
    }

    /// Records, at each tick and at the end, the position it was told and how far its commits reach.
    #[derive(Default)]
    struct Positions {
        committed: u64,
        told: Vec<(u64, u64)>,
    }

    impl Sink for Positions {
        fn restore(&mut self, _input_id: Option<&str>) -> Result<Restored, RuntimeError> {
            Ok(Restored {
                events: StoredEvents::Batches(Vec::new()),
                position: 0,
                state: None,
                since_state: Vec::new(),
            })
        }
        fn restored(&mut self, _tables: TableSet) -> Result<(), RuntimeError> {
            Ok(())
        }
        fn commit(&mut self, _tables: TableSet, commit: Commit<'_>) -> Result<Committed, RuntimeError> {
            self.committed = commit.position;
            Ok(Committed { rows: 0, durable: None })
        }
        fn tick(&mut self, position: u64) -> Result<Option<u64>, RuntimeError> {
            self.told.push((position, self.committed));
            Ok(None)
        }
        fn finish(&mut self, position: u64) -> Result<Option<u64>, RuntimeError> {
            self.told.push((position, self.committed));
            Ok(Some(position))
        }
    }

    /// A snapshot taken at a tick claims the position it is given: with an epoch still waiting to
    /// be committed, that position must not include the waiting epoch's input, or a restart after
    /// that snapshot would skip it.
    #[test]
    fn a_sink_is_never_told_a_position_past_its_commits() {
        let left = (0..5u64)
            .rev()
            .map(|n| {
                let line = format!(
                    r#"{{"event_id":"e{n}","tenant_id":"t","ts":"2026-02-02T10:0{n}:00Z","type":"message.received","contact_id":"A","message_id":"m{n}"}}"#
                );
                let event = parse_event(line.as_bytes()).expect("valid event");
                Batch { events: vec![(n, Box::new(event))], rejected: Vec::new(), records: 1, first: n, last: n }
            })
            .collect();
        let mut sink = Positions::default();
        let runtime = Runtime {
            source: Reads { left, position: 0 },
            sink: &mut sink,
            observer: Quiet,
            driver: Driver::start(1, Arc::new(Tenants::default())).expect("driver"),
            stop: Arc::new(AtomicBool::new(false)),
            spacing: Duration::ZERO,
        };
        let (stats, _) = runtime.run(RunStats::default()).expect("run");
        assert_eq!(stats.commits, 5);
        assert!(sink.told.len() > 1, "the loop ticks between epochs: {:?}", sink.told);
        for &(told, committed) in &sink.told {
            assert!(told <= committed, "told position {told} with commits reaching {committed}: {:?}", sink.told);
        }
        assert_eq!(sink.told.last(), Some(&(5, 5)));
    }
}
