//! ClickHouse as the runtime's sink: every epoch is committed (see the module above for how) before
//! the runtime acknowledges its input or puts its changes on the feed, and ClickHouse answers the
//! reads ([`ClickHouseReader`]). The input position the tables reach is committed with the epoch,
//! in the `positions` table; after a restart the runtime reads the input from there.
//!
//! The operator state is saved into the database too (`state.rs`), every `interval` and at the
//! end, after the epoch it covers is committed; a restart resumes from the newest one and re-feeds
//! only the events committed after it. Saving it is an optimisation: a failure is logged, and the
//! next restart re-feeds more.

use super::{ClickHouseReader, ClickHouseStore};
use crate::connector::{Commit, Committed, Restored, RuntimeError, SavedState, Sink, StoredEvents};
use crate::retry::until_done;
use convoflow_api::Reader;
use convoflow_operators::TableSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::runtime::Handle;

pub struct ClickHouseSink {
    store: Arc<ClickHouseStore>,
    next_epoch: u64,
    handle: Handle,
    /// How often the operator state is saved (and at the end).
    interval: Duration,
    last_saved: Instant,
    /// The last epoch the newest saved state covers.
    saved_epoch: Option<u64>,
    /// The input position the last commit took the tables to.
    committed_position: u64,
    /// A state the driver saved locally, to upload with the epoch it covers.
    pending: Option<(SavedState, u64)>,
    /// Where a restored state was fetched to, removed once it is loaded.
    fetched: Option<PathBuf>,
}

impl ClickHouseSink {
    /// Commits into `store`; the operator state is saved every `interval` and at the end.
    pub fn new(store: Arc<ClickHouseStore>, handle: Handle, interval: Duration) -> Self {
        ClickHouseSink {
            store,
            next_epoch: 0,
            handle,
            interval,
            last_saved: Instant::now(),
            saved_epoch: None,
            committed_position: 0,
            pending: None,
            fetched: None,
        }
    }

    /// A local directory of this process for a state's files.
    fn local_dir(generation: &str) -> PathBuf {
        std::env::temp_dir().join(format!("convoflow-state-{}-{generation}", std::process::id()))
    }

    /// The newest saved state, fetched, with the events committed after it.
    fn fetch_state(
        &mut self,
    ) -> Result<Option<(SavedState, Vec<datafusion::arrow::record_batch::RecordBatch>)>, super::ClickHouseError> {
        let store = self.store.clone();
        self.handle.block_on(async {
            let Some((generation, epoch)) = store.saved_state().await? else { return Ok(None) };
            let dir = Self::local_dir(&generation);
            store.get_state(&generation, &dir).await?;
            self.fetched = Some(dir.clone());
            let since = store.load_events_after(epoch).await?;
            self.saved_epoch = Some(epoch);
            Ok(Some((SavedState { dir, generation }, since)))
        })
    }

    /// Uploads the state the driver saved, if any, then removes its local files.
    fn upload(&mut self) {
        let Some((state, epoch)) = self.pending.take() else { return };
        let started = Instant::now();
        let store = self.store.clone();
        match self.handle.block_on(store.put_state(&state.dir, &state.generation, epoch)) {
            Ok(()) => {
                self.saved_epoch = Some(epoch);
                tracing::info!(epoch, seconds = started.elapsed().as_secs_f64(), "operator state saved to ClickHouse");
            }
            Err(error) => {
                tracing::warn!(%error, "cannot save the operator state to ClickHouse; a restart re-feeds more")
            }
        }
        let _ = std::fs::remove_dir_all(&state.dir);
        self.last_saved = Instant::now();
    }
}

impl Sink for ClickHouseSink {
    /// The committed events and the position committed for `input`; epochs go on after the last
    /// committed one (epoch numbers are never reused).
    fn restore(&mut self, input: Option<&str>) -> Result<Restored, RuntimeError> {
        let store = &self.store;
        let (events, position, last_epoch) = self.handle.block_on(async {
            let events = until_done("load the committed events", || store.load_events()).await;
            let position = match input {
                Some(input) => until_done("read the committed position", || store.committed_position(input)).await,
                None => 0,
            };
            (events, position, until_done("read the last epoch", || store.last_epoch()).await)
        });
        self.next_epoch = last_epoch + 1;
        self.committed_position = position;
        let (state, since_state) = match self.fetch_state() {
            Ok(Some((state, since))) => (Some(state), since),
            Ok(None) => (None, Vec::new()),
            Err(error) => {
                tracing::warn!(%error, "cannot read the saved operator state: re-feeding the committed events");
                (None, Vec::new())
            }
        };
        Ok(Restored { events: StoredEvents::Batches(events), position, state, since_state })
    }

    /// ClickHouse holds the derived tables: a resumed state gives only what later epochs change.
    fn resume(&self) -> convoflow_operators::Resume {
        convoflow_operators::Resume::Changes
    }

    /// ClickHouse holds the derived rows already.
    fn restored(&mut self, _tables: TableSet) -> Result<(), RuntimeError> {
        if let Some(dir) = self.fetched.take() {
            let _ = std::fs::remove_dir_all(dir);
        }
        Ok(())
    }

    /// Commits one epoch, retrying until ClickHouse takes it (meanwhile the bus keeps what comes
    /// in); it is durable at once.
    fn commit(&mut self, tables: TableSet, commit: Commit<'_>) -> Result<Committed, RuntimeError> {
        let insert = super::Insert {
            epoch: self.next_epoch,
            tables: &tables,
            rejected: commit.rejected,
            first_position: commit.first,
            last_position: commit.last,
            input: commit.input_id,
        };
        let store = &self.store;
        let written = self.handle.block_on(until_done("commit an epoch to ClickHouse", || store.commit(&insert)));
        self.next_epoch += 1;
        self.committed_position = commit.position;
        Ok(Committed { rows: written.rows, durable: Some(commit.position) })
    }

    /// Every `interval` and at the end, when epochs were committed since the last saved state.
    fn state_due(&mut self, position: u64, ending: bool) -> Result<Option<SavedState>, RuntimeError> {
        if !ending && self.last_saved.elapsed() < self.interval {
            return Ok(None);
        }
        // The epoch the state will cover: one still to be committed takes the tables past
        // `committed_position`, and is committed before the state is saved.
        let epoch =
            if position > self.committed_position { self.next_epoch } else { self.next_epoch.saturating_sub(1) };
        if epoch == 0 || self.saved_epoch == Some(epoch) {
            return Ok(None);
        }
        let generation = crate::embedded::EmbeddedStore::new_generation();
        let state = SavedState { dir: Self::local_dir(&generation), generation };
        self.pending = Some((state.clone(), epoch));
        Ok(Some(state))
    }

    /// Uploads a state saved just before.
    fn tick(&mut self, _position: u64) -> Result<Option<u64>, RuntimeError> {
        self.upload();
        Ok(None)
    }

    fn finish(&mut self, position: u64) -> Result<Option<u64>, RuntimeError> {
        self.upload();
        Ok(Some(position))
    }

    fn reader(&self) -> Option<Arc<dyn Reader>> {
        Some(Arc::new(ClickHouseReader { store: self.store.clone() }))
    }
}
