//! The dataflow driver: [`Driver`] builds the dataflow on `workers` threads, is fed epoch by
//! epoch from outside (the runtime loop, `convoflow-pipeline`'s `runtime`), and hands back each
//! epoch's table updates once every worker has finished it — the point at which a sink may commit
//! them and the source may acknowledge the input. Operator state lives as long as the dataflow:
//! every event ever admitted stays known to dedup, so a redelivered event is absorbed as a
//! duplicate and changes no table. [`Driver::save`] writes that state and [`Driver::resume`]
//! starts from it (`crate::state`).

use crate::dataflow::build;
use crate::dedup::{Admission, Positioned};
use crate::rows::RejectedRow;
use crate::state::{self, Registry, Resume, StateError};
use crate::tables::TableSet;
use convoflow_events::{Event, Tenants};
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::Arc;
use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::operators::Probe;
use timely::dataflow::{InputHandle, ProbeHandle};

#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    #[error("timely dataflow failed to start: {0}")]
    Start(String),
    #[error("a dataflow worker panicked: {0}")]
    Worker(String),
    #[error("operator state: {0}")]
    State(#[from] StateError),
    #[error("operator state: {what} {path}: {source}")]
    StateDir { what: &'static str, path: PathBuf, source: std::io::Error },
}

/// What the driver tells a worker.
enum Command {
    Epoch(u64, Vec<Positioned>),
    /// Write the worker's operator state into `dir`, which is then renamed to `home`.
    Save {
        dir: PathBuf,
        home: PathBuf,
        tag: String,
        reply: Sender<Result<(), StateError>>,
    },
}

/// What one worker's dataflow produced since it was last drained.
#[derive(Default)]
struct WorkerOutput {
    tables: TableSet,
    /// Copies refused as conflicting duplicates; made into `rejected` rows by the driver.
    conflicts: Vec<Event>,
    duplicates: u64,
    /// Why the state this worker was to resume from could not be loaded.
    state_error: Option<StateError>,
}

type EventInput = InputHandle<u64, CapacityContainerBuilder<Vec<Positioned>>>;

/// Builds the dataflow on `worker` with collectors of its outputs.
fn attach(
    worker: &mut timely::worker::Worker,
    tenants: Arc<Tenants>,
    registry: &Rc<RefCell<Registry>>,
) -> (EventInput, ProbeHandle<u64>, Rc<RefCell<WorkerOutput>>) {
    let collected = Rc::new(RefCell::new(WorkerOutput::default()));
    let mut input = EventInput::new();
    let probe = ProbeHandle::new();
    worker.dataflow::<u64, _, _>(|scope| {
        let outputs = state::building(registry, || build(input.to_stream(scope), tenants));
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

/// Why a copy of an accepted event with other content is rejected (the API gives the same reason).
pub fn conflict_reason(event_id: &str) -> String {
    format!("conflicting_duplicate: event_id `{event_id}` was already accepted with different content")
}

fn conflict_row(event: &Event, received_at: i64) -> RejectedRow {
    let reason = conflict_reason(&event.event_id);
    RejectedRow::new(Some(&event.tenant_id), received_at, reason, event.to_json().as_bytes(), "dedup".to_owned())
}

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

pub struct Driver {
    feeds: Vec<Sender<Command>>,
    done: Receiver<WorkerDone>,
    pending: BTreeMap<u64, (usize, EpochOutput)>,
    received_at: BTreeMap<u64, i64>,
    next_epoch: u64,
    next_output: u64,
    guards: Option<timely::communication::WorkerGuards<()>>,
    tenants: Arc<Tenants>,
}

impl Driver {
    /// Starts `workers` worker threads, idle until the first epoch is submitted.
    pub fn start(workers: usize, tenants: Arc<Tenants>) -> Result<Self, DriverError> {
        Self::launch(workers, tenants, None)
    }

    /// Starts from the operator state [`Driver::save`] wrote to `dir` as `generation`, with any number
    /// of workers; returns the driver and epoch 0, which holds every derived table as that state
    /// has it with [`Resume::Rows`], or nothing with [`Resume::Changes`] (never events: they are
    /// the store's). Keys are read from the saved files as epochs touch them. Fails, and nothing
    /// is half loaded, when the state is missing, torn, of another format, generation or tenants
    /// configuration: the caller then re-feeds the events.
    pub fn resume(
        workers: usize,
        tenants: Arc<Tenants>,
        dir: &Path,
        generation: &str,
        resume: Resume,
    ) -> Result<(Self, EpochOutput), DriverError> {
        let tag = state_tag(generation, &tenants);
        let mut driver = Self::launch(workers, tenants, Some((dir.to_owned(), tag, resume)))?;
        driver.submit(Vec::new(), 0)?;
        let restored = driver.next_output()?;
        Ok((driver, restored))
    }

    /// The key (`event_key`) and content `fingerprint` of every event the operator state
    /// [`Driver::save`] wrote to `dir` as `generation` has accepted, as its dedup holds them: what
    /// `serve`'s intake needs to know of the stored events, without reading them.
    pub fn saved_events(
        dir: &Path,
        generation: &str,
        tenants: &Tenants,
        each: impl FnMut(u128, u64),
    ) -> Result<(), DriverError> {
        crate::state::each_saved_entry(dir, &state_tag(generation, tenants), "Dedup", each)?;
        Ok(())
    }

    fn launch(
        workers: usize,
        tenants: Arc<Tenants>,
        resume: Option<(PathBuf, String, Resume)>,
    ) -> Result<Self, DriverError> {
        let workers = workers.max(1);
        let (feeds, receivers): (Vec<_>, Vec<_>) = (0..workers).map(|_| channel()).unzip();
        let receivers = std::sync::Mutex::new(receivers.into_iter().map(Some).collect::<Vec<_>>());
        let (done_sender, done) = channel();
        let config = timely::Config::process(workers);
        let configured = tenants.clone();
        let guards = timely::execute(config, move |worker| {
            let feed: Receiver<Command> = {
                let mut receivers = receivers.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
                match receivers.get_mut(worker.index()).and_then(Option::take) {
                    Some(feed) => feed,
                    None => return,
                }
            };
            let done_sender: Sender<WorkerDone> = done_sender.clone();
            let (index, peers) = (worker.index(), worker.peers());
            let registry = Rc::new(RefCell::new(match &resume {
                Some((dir, tag, resume)) => Registry::load(dir, tag, *resume, index, peers),
                None => Registry::fresh(index, peers),
            }));
            let (mut input, probe, collected) = attach(worker, tenants.clone(), &registry);
            // Blocking between epochs is safe: every worker gets every epoch (maybe empty), and
            // one only waits for the next after the whole dataflow has finished this one.
            while let Ok(command) = feed.recv() {
                let (epoch, mut events) = match command {
                    Command::Epoch(epoch, events) => (epoch, events),
                    Command::Save { dir, home, tag, reply } => {
                        let _ = reply.send(registry.borrow_mut().save(&dir, &home, &tag));
                        continue;
                    }
                };
                input.send_batch(&mut events);
                input.advance_to(epoch + 1);
                while probe.less_than(&(epoch + 1)) {
                    worker.step();
                }
                let mut output = collected.take();
                output.tables.consolidate();
                output.state_error = registry.borrow_mut().take_error();
                if done_sender.send(WorkerDone { epoch, output }).is_err() {
                    break;
                }
            }
        })
        .map_err(DriverError::Start)?;
        Ok(Driver {
            feeds,
            done,
            pending: BTreeMap::new(),
            received_at: BTreeMap::new(),
            next_epoch: 0,
            next_output: 0,
            guards: Some(guards),
            tenants: configured,
        })
    }

    /// Feeds one epoch, spread evenly over the workers; returns its number. `received_at`
    /// stamps the conflicting duplicates it finds.
    pub fn submit(&mut self, mut events: Vec<Positioned>, received_at: i64) -> Result<u64, DriverError> {
        let epoch = self.next_epoch;
        self.next_epoch += 1;
        self.received_at.insert(epoch, received_at);
        let workers = self.feeds.len();
        let share = events.len().div_ceil(workers);
        for index in (0..workers).rev() {
            let part = events.split_off((index * share).min(events.len()));
            self.feeds[index].send(Command::Epoch(epoch, part)).map_err(|_| self.failure())?;
        }
        Ok(epoch)
    }

    /// Epochs submitted and not yet returned by `next_output`.
    pub fn in_flight(&self) -> u64 {
        self.next_epoch - self.next_output
    }

    /// Waits for the oldest submitted epoch to finish on every worker and returns its changes.
    pub fn next_output(&mut self) -> Result<EpochOutput, DriverError> {
        let workers = self.feeds.len();
        let wanted = self.next_output;
        loop {
            if let Some((count, _)) = self.pending.get(&wanted) {
                if *count == workers {
                    break;
                }
            }
            let WorkerDone { epoch, output } = self.done.recv().map_err(|_| self.failure())?;
            if let Some(error) = output.state_error {
                return Err(error.into());
            }
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

    /// Writes the operator state after every epoch submitted so far to `dir` as `generation`
    /// (what [`Driver::resume`] must be given to load it): each worker's files are written and
    /// fsynced in `<dir>.partial`, which then replaces `dir`. A crash leaves the old state, or none.
    /// From then on the workers look keys up in the files they wrote, and drop those in memory.
    pub fn save(&mut self, dir: &Path, generation: &str) -> Result<(), DriverError> {
        let tag = state_tag(generation, &self.tenants);
        let partial = dir.with_extension("partial");
        if partial.exists() {
            std::fs::remove_dir_all(&partial).map_err(state_dir("cannot remove", &partial))?;
        }
        std::fs::create_dir_all(&partial).map_err(state_dir("cannot create", &partial))?;
        let mut replies = Vec::new();
        for index in 0..self.feeds.len() {
            let (reply, answer) = channel();
            let save = Command::Save { dir: partial.clone(), home: dir.to_owned(), tag: tag.clone(), reply };
            self.feeds[index].send(save).map_err(|_| self.failure())?;
            replies.push(answer);
        }
        for answer in replies {
            answer.recv().map_err(|_| self.failure())??;
        }
        sync_dir(&partial).map_err(state_dir("cannot sync", &partial))?;
        if dir.exists() {
            std::fs::remove_dir_all(dir).map_err(state_dir("cannot remove", dir))?;
        }
        std::fs::rename(&partial, dir).map_err(state_dir("cannot rename into", dir))?;
        match dir.parent().filter(|parent| !parent.as_os_str().is_empty()) {
            Some(parent) => sync_dir(parent).map_err(state_dir("cannot sync", parent)),
            None => Ok(()),
        }
    }

    /// Stops the workers after the epochs already submitted.
    pub fn shutdown(mut self) -> Result<(), DriverError> {
        self.feeds.clear();
        self.join()
    }

    fn join(&mut self) -> Result<(), DriverError> {
        if let Some(guards) = self.guards.take() {
            for result in guards.join() {
                result.map_err(DriverError::Worker)?;
            }
        }
        Ok(())
    }

    /// A worker went away: report why, if it panicked.
    fn failure(&mut self) -> DriverError {
        self.feeds.clear();
        match self.join() {
            Err(error) => error,
            Ok(()) => DriverError::Worker("the dataflow workers stopped".to_owned()),
        }
    }
}

/// What a saved state is checked against: its generation, the tenants configuration and the key
/// hashes. Saved keys sit on the worker their route chose and the dedup index holds event keys, so
/// a build whose hashes differ (an upgraded `rustc-hash`, another `Hash` for strings or tuples)
/// must not load them: its probe differs and the events are re-fed instead.
fn state_tag(generation: &str, tenants: &Tenants) -> String {
    format!("{generation} tenants:{:016x} hashes:{:016x}", tenants.fingerprint(), hash_probe())
}

/// The key hashes of this build, on fixed samples of the key shapes the operators use.
fn hash_probe() -> u64 {
    let routes = [
        crate::reduce::route("tenant"),
        crate::reduce::route(&(crate::Text::from("tenant"), crate::Text::from("contact"))),
        crate::reduce::route(&("tenant", 7_u64, Some(3_i64))),
    ];
    let event = convoflow_events::event_key("tenant", "event");
    routes.iter().fold(event as u64 ^ (event >> 64) as u64, |probe, route| probe.rotate_left(17) ^ route)
}

fn state_dir<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> DriverError + 'a {
    move |source| DriverError::StateDir { what, path: path.to_owned(), source }
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

impl Drop for Driver {
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
            let mut driver = Driver::start(workers, Arc::new(Tenants::default())).expect("start");
            driver.submit(vec![positioned(IN, 1), positioned(OUT, 2)], 7).expect("submit");
            let first = driver.next_output().expect("epoch 0");
            assert_eq!(first.tables.events.len(), 2);
            assert_eq!(first.tables.responses.len(), 1);
            assert_eq!(first.tables.responses.updates[0].0.response_ms, 3000);

            // A late inbound message moves the waiting period's start: −1 old row, +1 new row.
            driver.submit(vec![positioned(LATE, 3)], 7).expect("submit");
            let second = driver.next_output().expect("epoch 1");
            let diffs: Vec<(i64, i64)> =
                second.tables.responses.updates.iter().map(|(row, diff)| (row.response_ms, *diff)).collect();
            assert_eq!(diffs.len(), 2, "workers = {workers}");
            assert!(diffs.contains(&(3000, -1)) && diffs.contains(&(3500, 1)), "{diffs:?}");

            // The same events again: all duplicates, no change to any table.
            driver.submit(vec![positioned(IN, 1), positioned(OUT, 2), positioned(LATE, 3)], 7).expect("submit");
            let third = driver.next_output().expect("epoch 2");
            assert_eq!(third.duplicates, 3);
            assert!(third.tables.events.is_empty() && third.tables.counts().iter().all(|(_, rows)| *rows == 0));
            driver.shutdown().expect("shutdown");
        }
    }
}
