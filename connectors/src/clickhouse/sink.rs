//! ClickHouse as the runtime's sink: every epoch is committed (see the module above for how) before
//! the runtime acknowledges its input or puts its changes on the feed, and ClickHouse answers the
//! reads ([`ClickHouseReader`]). The input position the tables reach is committed with the epoch,
//! in the `positions` table; after a restart the runtime reads the input from there.

use super::{ClickHouseReader, ClickHouseStore};
use crate::connector::{Commit, Committed, Restored, RuntimeError, Sink};
use crate::retry::until_done;
use convoflow_api::Reader;
use convoflow_operators::TableSet;
use std::sync::Arc;
use tokio::runtime::Handle;

pub struct ClickHouseSink {
    store: Arc<ClickHouseStore>,
    next_epoch: u64,
    handle: Handle,
}

impl ClickHouseSink {
    pub fn new(store: Arc<ClickHouseStore>, handle: Handle) -> Self {
        ClickHouseSink { store, next_epoch: 0, handle }
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
        Ok(Restored { events, position, state: None })
    }

    /// ClickHouse holds the derived rows already.
    fn restored(&mut self, _tables: TableSet) -> Result<(), RuntimeError> {
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
        Ok(Committed { rows: written.rows, durable: Some(commit.position) })
    }

    fn finish(&mut self, position: u64) -> Result<Option<u64>, RuntimeError> {
        Ok(Some(position))
    }

    fn reader(&self) -> Option<Arc<dyn Reader>> {
        Some(Arc::new(ClickHouseReader { store: self.store.clone() }))
    }
}
