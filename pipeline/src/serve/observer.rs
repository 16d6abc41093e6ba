//! What `serve` does around the runtime loop (`crate::runtime`), which runs on a thread of its
//! own: the events it restores or catches up on go into the API's seen-events index (they were
//! never claimed at ingest), each committed epoch goes on the live feed (rendered on the feed's
//! thread, from a copy taken before the store took the tables) and into the telemetry, and the
//! process is ready once state is restored and the input caught up.

use crate::runtime::{EpochStats, Observer, RunStats};
use convoflow_api::{FeedPublisher, SeenEvents, Telemetry};
use convoflow_events::Event;
use convoflow_operators::{EpochOutput, RejectedRow, TableSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

pub struct ServeObserver {
    pub feed: FeedPublisher,
    pub seen: Arc<SeenEvents>,
    pub telemetry: Arc<Telemetry>,
    pub ready: Arc<AtomicBool>,
    pub input_id: String,
    started: Instant,
    /// The finished epoch's copy for the feed, published once the epoch is committed.
    for_feed: Option<(u64, TableSet, Vec<RejectedRow>)>,
}

impl ServeObserver {
    pub fn new(
        feed: FeedPublisher,
        seen: Arc<SeenEvents>,
        telemetry: Arc<Telemetry>,
        ready: Arc<AtomicBool>,
        input_id: String,
    ) -> Self {
        ServeObserver { feed, seen, telemetry, ready, input_id, started: Instant::now(), for_feed: None }
    }
}

impl Observer for ServeObserver {
    fn wants_stored(&mut self, events: u64) -> bool {
        self.seen.reserve(events);
        true
    }

    fn stored(&mut self, events: &[Event]) {
        self.seen.remember(events.iter());
    }

    fn seen(&mut self, key: u128, fingerprint: u64) {
        self.seen.remember_key(key, fingerprint);
    }

    fn finished(&mut self, epoch: &EpochOutput, rejected: &[RejectedRow], catching_up: bool) {
        if catching_up {
            // Before the API was up these events were never claimed at ingest.
            self.seen.remember(epoch.tables.events.iter().map(|event| &**event));
        }
        if self.feed.has_subscribers() {
            self.for_feed = Some((epoch.epoch, epoch.tables.clone(), rejected.to_vec()));
        }
    }

    fn committed(&mut self, _epoch: u64, _rejected: &[RejectedRow], stats: &EpochStats) {
        if let Some((epoch, tables, rejected)) = self.for_feed.take() {
            self.feed.publish(epoch, tables, rejected);
        }
        let telemetry = &self.telemetry;
        telemetry.events_processed.fetch_add(stats.events, Ordering::Relaxed);
        telemetry.epochs.fetch_add(1, Ordering::Relaxed);
        telemetry.lag.store(stats.lag, Ordering::Relaxed);
        telemetry.observe_epoch(stats.seconds);
    }

    fn ready(&mut self, stats: &RunStats, from: u64, to: u64) {
        self.ready.store(true, Ordering::SeqCst);
        let seconds = self.started.elapsed().as_secs_f64();
        let restored = match (stats.resumed, stats.restored_events) {
            (true, events) => format!("resumed the saved operator state of {events} stored events"),
            (false, 0) => "nothing stored".to_owned(),
            (false, events) => format!("re-fed {events} stored events"),
        };
        println!(
            "ready in {seconds:.1} s: {restored} in {:.1} s, then caught up on {} input records ({} {from}..{to})",
            stats.restore_seconds,
            to.saturating_sub(from),
            self.input_id
        );
        tracing::info!(
            restored_events = stats.restored_events,
            resumed = stats.resumed,
            input = %self.input_id,
            from,
            to,
            seconds,
            "state restored; ready"
        );
    }
}
