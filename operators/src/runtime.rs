//! Running the dataflow over a finite source on `workers` threads and collecting the tables.
//! Each worker pulls batches from its own share of the source; a batch is one epoch.

use crate::dataflow::build;
use crate::dedup::{Admission, Positioned};
use crate::rows::RejectedRow;
use crate::tables::TableSet;
use convoflow_events::{Event, Tenants};
use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;
use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::operators::Probe;
use timely::dataflow::{InputHandle, ProbeHandle};

/// Epochs a worker may run ahead of the slowest operator before it waits; bounds memory.
const MAX_EPOCHS_IN_FLIGHT: u64 = 2;

/// One epoch of one worker's input: parsed events with their input positions (the first of
/// conflicting copies wins), and the lines that failed to parse.
#[derive(Default)]
pub struct SourceBatch {
    pub events: Vec<Positioned>,
    pub rejected: Vec<RejectedRow>,
    /// Input lines this batch read (0 for stored events).
    pub lines: u64,
}

/// The result of a run: consolidated tables plus what was refused.
#[derive(Default)]
pub struct RunOutput {
    pub tables: TableSet,
    /// Parse failures and conflicting duplicates.
    pub rejected: Vec<RejectedRow>,
    pub duplicates: u64,
    /// Input lines read by the sources.
    pub lines: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("timely dataflow failed to start: {0}")]
    Start(String),
    #[error("a dataflow worker panicked: {0}")]
    Worker(String),
}

/// What one worker's dataflow produced since it was last drained.
#[derive(Default)]
pub(crate) struct WorkerOutput {
    pub tables: TableSet,
    pub rejected: Vec<RejectedRow>,
    /// Copies refused as conflicting duplicates; made into `rejected` rows by the caller.
    pub conflicts: Vec<Event>,
    pub duplicates: u64,
    pub lines: u64,
}

pub(crate) type EventInput = InputHandle<u64, CapacityContainerBuilder<Vec<Positioned>>>;

/// Builds the dataflow on `worker` with collectors of its outputs.
pub(crate) fn attach(
    worker: &mut timely::worker::Worker,
    tenants: Arc<Tenants>,
) -> (EventInput, ProbeHandle<u64>, Rc<RefCell<WorkerOutput>>) {
    let collected = Rc::new(RefCell::new(WorkerOutput::default()));
    let mut input = EventInput::new();
    let probe = ProbeHandle::new();
    worker.dataflow::<u64, _, _>(|scope| {
        let outputs = build(input.to_stream(scope), tenants);
        // Collectors come before the probe, so a probe past an epoch means they have taken all
        // of its updates (a probe before them would only say the updates were produced).
        let sink = collected.clone();
        outputs
            .updates
            .unary::<CapacityContainerBuilder<Vec<()>>, _, _, _>(Pipeline, "CollectTables", move |_, _| {
                move |input, _| {
                    let mut out = sink.borrow_mut();
                    input.for_each(|_, data| data.drain(..).for_each(|update| out.tables.apply(update)));
                }
            })
            .probe_with(&probe);
        let sink = collected.clone();
        outputs
            .refused
            .unary::<CapacityContainerBuilder<Vec<()>>, _, _, _>(Pipeline, "CollectRefused", move |_, _| {
                move |input, _| {
                    let mut out = sink.borrow_mut();
                    input.for_each(|_, data| {
                        for admission in data.drain(..) {
                            match admission {
                                Admission::Conflicting(event) => out.conflicts.push(*event),
                                Admission::Duplicate => out.duplicates += 1,
                                Admission::Accepted(_) => {}
                            }
                        }
                    });
                }
            })
            .probe_with(&probe);
    });
    (input, probe, collected)
}

/// Runs the dataflow to completion. `source(worker_index, workers)` yields that worker's batches;
/// `received_at` stamps rejections found by the dataflow (conflicting duplicates).
pub fn run<F, I>(workers: usize, tenants: Arc<Tenants>, received_at: i64, source: F) -> Result<RunOutput, RuntimeError>
where
    F: Fn(usize, usize) -> I + Send + Sync + 'static,
    I: Iterator<Item = SourceBatch>,
{
    let config = timely::Config::process(workers.max(1));
    let guards = timely::execute(config, move |worker| {
        let (mut input, probe, collected) = attach(worker, tenants.clone());

        for mut batch in source(worker.index(), worker.peers()) {
            {
                let mut out = collected.borrow_mut();
                out.rejected.append(&mut batch.rejected);
                out.lines += batch.lines;
            }
            input.send_batch(&mut batch.events);
            let next = *input.time() + 1;
            input.advance_to(next);
            let wait_until = next.saturating_sub(MAX_EPOCHS_IN_FLIGHT);
            while probe.less_than(&wait_until) {
                worker.step();
            }
        }
        input.close();
        while worker.step() {}
        let mut collected = collected.take();
        collected.tables.consolidate();
        let rejected = collected.conflicts.iter().map(|event| conflict_row(event, received_at));
        collected.rejected.extend(rejected);
        collected
    })
    .map_err(RuntimeError::Start)?;

    let mut total = RunOutput::default();
    for result in guards.join() {
        let output = result.map_err(RuntimeError::Worker)?;
        total.tables.merge(output.tables);
        total.rejected.extend(output.rejected);
        total.duplicates += output.duplicates;
        total.lines += output.lines;
    }
    // Every key is maintained by exactly one worker, so the merged per-worker consolidations are
    // already consolidated: no row can cancel against another worker's.
    Ok(total)
}

/// Why a copy of an accepted event with other content is rejected (the API gives the same reason).
pub fn conflict_reason(event_id: &str) -> String {
    format!("conflicting_duplicate: event_id `{event_id}` was already accepted with different content")
}

pub(crate) fn conflict_row(event: &Event, received_at: i64) -> RejectedRow {
    let reason = conflict_reason(&event.event_id);
    RejectedRow::new(Some(&event.tenant_id), received_at, reason, event.to_json().as_bytes(), "dedup".to_owned())
}
