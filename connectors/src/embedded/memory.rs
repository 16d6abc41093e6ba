//! The embedded store while `convoflow serve` runs: every derived table held in memory and kept
//! current epoch by epoch, read as Arrow batches split by tenant (a tenant's queries only ever see
//! its own batches), and written to the Parquet store as a snapshot. Of `events`, only those not
//! yet in the store's segments are held (a query reads the segments beside them).
//!
//! A derived table is its rows as Arrow batches by tenant, and the changes since (rows with their
//! multiplicity changes), so an epoch's updates apply in time proportional to the updates. The
//! changes are folded into the batches lazily, when a reader asks for a table that changed since,
//! outside the lock (`read_table`), and only the tenants they touch are rebuilt. A restart that
//! resumes the saved operator state loads the batches from the store's snapshot of the same
//! moment. `events` and `rejected` only grow: each epoch's new rows are converted once and
//! appended.

use super::store::{apply_changes, split_changes};
use convoflow_events::Event;
use convoflow_operators::{for_each_table, Collection, RejectedRow, Table, TableSet};
use convoflow_schema::{batches, TableBatches, TABLES};
use datafusion::arrow::array::{Array, AsArray, UInt32Array};
use datafusion::arrow::compute::take_record_batch;
use datafusion::arrow::error::ArrowError;
use datafusion::arrow::record_batch::RecordBatch;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};

/// A table's batches by tenant.
pub type TenantBatches = HashMap<String, Vec<RecordBatch>>;

/// Changes held beside a table's batches before they are folded in without a read asking for
/// it: past this many rows, or past the rows the batches hold, whichever is more.
const FOLD_ROWS: usize = 1 << 20;

/// One derived table: its rows as batches by tenant (`base`) and the changes since, in the order
/// they came. A read folds the changes into new batches, re-encoding only the tenants they touch.
struct Contents<R> {
    base: Arc<TenantBatches>,
    base_rows: usize,
    pending: Vec<Collection<R>>,
    pending_rows: usize,
    /// How many changes came, and how many of them `base` holds: a fold made from an older
    /// `base` is not kept.
    generation: u64,
    folded: u64,
}

impl<R> Default for Contents<R> {
    fn default() -> Self {
        Contents { base: Arc::default(), base_rows: 0, pending: Vec::new(), pending_rows: 0, generation: 0, folded: 0 }
    }
}

impl<R: Table + Clone + Ord + Send + 'static> Contents<R> {
    /// The rows as stored, by tenant (no change may be pending).
    fn load(&mut self, base: TenantBatches) {
        self.base_rows = rows_of(&base);
        self.base = Arc::new(base);
    }

    /// Holds `updates` to fold in at the next read; folds them in now once more are held than
    /// [`FOLD_ROWS`] or than the table has rows, so what is held stays bounded without reads.
    fn apply(&mut self, updates: Collection<R>) -> Result<(), ArrowError> {
        if updates.updates.is_empty() {
            return Ok(());
        }
        self.pending_rows += updates.updates.len();
        self.pending.push(updates);
        self.generation += 1;
        if self.pending_rows > FOLD_ROWS.max(self.base_rows) {
            let Lookup::Stale { from, to, build } = self.lookup() else { return Ok(()) };
            let batches = build()?;
            self.keep(from, to, Arc::new(batches));
        }
        Ok(())
    }

    /// The batches if no change is pending; else a copy of the changes and how to fold them in,
    /// which the caller runs without holding the tables' lock.
    fn lookup(&self) -> Lookup {
        if self.pending.is_empty() {
            return Lookup::Ready(self.base.clone());
        }
        let changes: Vec<(R, i64)> = self.pending.iter().flat_map(|changes| changes.updates.iter().cloned()).collect();
        let base = self.base.clone();
        Lookup::Stale { from: self.folded, to: self.generation, build: Box::new(move || fold(&base, changes)) }
    }

    /// Takes the batches a fold of the changes `from..to` made, if made from the current `base`.
    fn keep(&mut self, from: u64, to: u64, batches: Arc<TenantBatches>) {
        if from != self.folded {
            return;
        }
        let folded = self.pending.drain(..(to - from) as usize);
        self.pending_rows -= folded.map(|changes| changes.updates.len()).sum::<usize>();
        self.base_rows = rows_of(&batches);
        self.base = batches;
        self.folded = to;
    }
}

fn rows_of(batches: &TenantBatches) -> usize {
    batches.values().flatten().map(RecordBatch::num_rows).sum()
}

/// `base` with `changes` folded in: only the tenants the changes touch are rebuilt, each as its
/// stored rows without the retracted ones, then the inserted ones in order ([`apply_changes`]).
fn fold<R: Table + Ord>(base: &TenantBatches, changes: Vec<(R, i64)>) -> Result<TenantBatches, ArrowError> {
    let mut changes = Collection { updates: changes };
    changes.consolidate();
    let (rows, diffs): (Vec<&R>, Vec<i64>) = changes.updates.iter().map(|(row, diff)| (row, *diff)).unzip();
    let changes = TableBatches { table: R::NAME, batches: batches::<R, _>(&rows)?, diffs };
    let mut folded = base.clone();
    let tenants = |batch: &RecordBatch| -> Result<Vec<(String, Vec<u32>)>, ArrowError> {
        Ok(tenant_rows(batch)?.into_iter().map(|(tenant, rows)| (tenant.to_owned(), rows)).collect())
    };
    for (tenant, changes) in split_changes(&changes, tenants)? {
        let stored = folded.remove(&tenant).unwrap_or_default();
        let after = apply_changes(stored, &changes)?;
        if !after.is_empty() {
            folded.insert(tenant, after);
        }
    }
    Ok(folded)
}

/// What a table's lookup under the lock found.
enum Lookup {
    Ready(Arc<TenantBatches>),
    /// Changes `from..to` to fold in.
    Stale {
        from: u64,
        to: u64,
        build: Box<dyn FnOnce() -> Result<TenantBatches, ArrowError> + Send>,
    },
    Unknown,
}

macro_rules! live_tables {
    ($($table:ident: $row:ty => $variant:ident),+ $(,)?) => {
        /// Every table held in memory; see the module doc.
        #[derive(Default)]
        pub struct MemoryTables {
            $($table: Contents<$row>,)+
            /// The events not yet in the store's `events` segments, in order: those applied
            /// since the last snapshot was written (the first `taken` of them are being written).
            events: Vec<RecordBatch>,
            taken: usize,
            rejected: TenantBatches,
            rejected_seen: HashSet<RejectedRow>,
        }

        impl MemoryTables {
            /// Applies the derived tables' updates, leaving `tables.events`.
            fn apply_derived(&mut self, tables: &mut TableSet) -> Result<(), ArrowError> {
                $(self.$table.apply(std::mem::take(&mut tables.$table))?;)+
                Ok(())
            }

            /// Takes a derived table's stored batches (before any change is applied), split by
            /// tenant; another table's are left.
            pub fn load(&mut self, table: &str, batches: Vec<RecordBatch>) -> Result<(), ArrowError> {
                let mut base = TenantBatches::new();
                append(&mut base, batches)?;
                match table {
                    $(stringify!($table) => self.$table.load(base),)+
                    _ => {}
                }
                Ok(())
            }

            fn lookup_derived(&self, table: &str) -> Lookup {
                match table {
                    $(stringify!($table) => self.$table.lookup(),)+
                    _ => Lookup::Unknown,
                }
            }

            fn keep(&mut self, table: &str, from: u64, to: u64, batches: Arc<TenantBatches>) {
                match table {
                    $(stringify!($table) => self.$table.keep(from, to, batches),)+
                    _ => {}
                }
            }
        }
    };
}

for_each_table!(live_tables);

impl MemoryTables {
    /// Applies one epoch's consolidated updates and its new rejections (a rejection already held
    /// is kept once, like the Parquet store does).
    pub fn apply(&mut self, mut tables: TableSet, rejected: &[RejectedRow]) -> Result<(), ArrowError> {
        self.apply_derived(&mut tables)?;
        let fresh: Vec<RejectedRow> =
            rejected.iter().filter(|row| self.rejected_seen.insert((*row).clone())).cloned().collect();
        if !tables.events.is_empty() {
            self.events.extend(batches::<Event, _>(&tables.events)?);
        }
        if !fresh.is_empty() {
            append(&mut self.rejected, batches::<RejectedRow, _>(&fresh)?)?;
        }
        Ok(())
    }

    /// The events not yet in the store's segments, by tenant (what a query reads beside them).
    pub fn unsaved_events(&self) -> Result<TenantBatches, ArrowError> {
        let mut by_tenant = TenantBatches::new();
        append(&mut by_tenant, self.events.clone())?;
        Ok(by_tenant)
    }

    /// The events a snapshot took are in the store's segments now.
    pub fn events_saved(&mut self) {
        self.events.drain(..self.taken);
        self.taken = 0;
    }

    fn lookup(&mut self, table: &str) -> Lookup {
        match table {
            "rejected" => Lookup::Ready(Arc::new(self.rejected.clone())),
            _ => self.lookup_derived(table),
        }
    }
}

/// Appends batches to a table's batches by tenant.
fn append(target: &mut TenantBatches, batches: Vec<RecordBatch>) -> Result<(), ArrowError> {
    for batch in &batches {
        for (tenant, part) in split_by_tenant(batch)? {
            target.entry(tenant).or_default().push(part);
        }
    }
    Ok(())
}

/// The tables, also when a thread panicked holding them (their contents are whole between calls).
pub fn lock_tables(tables: &Mutex<MemoryTables>) -> MutexGuard<'_, MemoryTables> {
    tables.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The table's current batches by tenant; `None` for an unknown table. A table that changed
/// since it was last read is rebuilt from a copy of its rows taken under the lock, and converted
/// after letting go of it, so epochs can be applied meanwhile.
pub fn read_table(tables: &Mutex<MemoryTables>, table: &str) -> Result<Option<Arc<TenantBatches>>, ArrowError> {
    let lookup = lock_tables(tables).lookup(table);
    match lookup {
        Lookup::Ready(batches) => Ok(Some(batches)),
        Lookup::Unknown => Ok(None),
        Lookup::Stale { from, to, build } => {
            let batches = Arc::new(build()?);
            lock_tables(tables).keep(table, from, to, batches.clone());
            Ok(Some(batches))
        }
    }
}

/// Every table as it is at one moment, turned into batches later (on a snapshot's thread): the
/// rows of each derived table that changed since it was last read are copied under one hold of
/// the lock, the others' batches are shared; `events` are those applied since the last snapshot
/// took them (the store appends them as a segment; [`MemoryTables::events_saved`] then lets them
/// go). So a snapshot's tables are all of the same epoch,
/// the one its operator state was saved after: a replay resumed from that state applies its
/// changes to exactly the tables the state derived.
pub struct TablesAt {
    tables: Vec<(&'static str, Lookup)>,
    source: Arc<Mutex<MemoryTables>>,
}

pub fn tables_at(tables: &Arc<Mutex<MemoryTables>>) -> TablesAt {
    let mut held = lock_tables(tables);
    let mut unsaved = Some(held.events[held.taken..].to_vec());
    held.taken = held.events.len();
    let taken = TABLES
        .iter()
        .map(|&table| match table {
            // The store adds them as a segment; it has the events before them already.
            "events" => (
                table,
                Lookup::Ready(Arc::new(TenantBatches::from([(String::new(), unsaved.take().unwrap_or_default())]))),
            ),
            _ => (table, held.lookup(table)),
        })
        .collect();
    TablesAt { tables: taken, source: tables.clone() }
}

impl TablesAt {
    /// Each table, all tenants, as the Parquet store writes it, in SPEC order.
    pub fn batches(self) -> Result<Vec<TableBatches>, ArrowError> {
        let TablesAt { tables, source } = self;
        let mut out = Vec::with_capacity(tables.len());
        for (table, lookup) in tables {
            let by_tenant = match lookup {
                Lookup::Ready(batches) => batches,
                Lookup::Unknown => Arc::default(),
                Lookup::Stale { from, to, build } => {
                    let batches = Arc::new(build()?);
                    lock_tables(&source).keep(table, from, to, batches.clone());
                    batches
                }
            };
            let mut tenants: Vec<&String> = by_tenant.keys().collect();
            tenants.sort();
            let batches = tenants.into_iter().flat_map(|tenant| by_tenant[tenant].iter().cloned()).collect();
            out.push(TableBatches { table, batches, diffs: Vec::new() });
        }
        Ok(out)
    }
}

/// Splits a batch by its `tenant_id` column (every table has one), keeping row order.
pub fn split_by_tenant(batch: &RecordBatch) -> Result<Vec<(String, RecordBatch)>, ArrowError> {
    let groups = tenant_rows(batch)?;
    if groups.len() == 1 {
        return Ok(vec![(groups[0].0.to_owned(), batch.clone())]);
    }
    groups
        .into_iter()
        .map(|(tenant, rows)| Ok((tenant.to_owned(), take_record_batch(batch, &UInt32Array::from(rows))?)))
        .collect()
}

/// Each tenant of a batch (by its `tenant_id` column) with its rows, in order of first sight.
fn tenant_rows(batch: &RecordBatch) -> Result<Vec<(&str, Vec<u32>)>, ArrowError> {
    if batch.num_rows() == 0 {
        return Ok(Vec::new());
    }
    let column = batch
        .column_by_name("tenant_id")
        .ok_or_else(|| ArrowError::SchemaError("batch has no tenant_id column".to_owned()))?;
    let tenants =
        column.as_string_opt::<i32>().ok_or_else(|| ArrowError::SchemaError("tenant_id is not text".to_owned()))?;
    let mut groups: Vec<(&str, Vec<u32>)> = Vec::new();
    let mut index: HashMap<&str, usize> = HashMap::new();
    for row in 0..tenants.len() {
        let tenant = if tenants.is_null(row) { "" } else { tenants.value(row) };
        let slot = *index.entry(tenant).or_insert_with(|| {
            groups.push((tenant, Vec::new()));
            groups.len() - 1
        });
        groups[slot].1.push(row as u32);
    }
    Ok(groups)
}

#[cfg(test)]
mod tests {
    use super::*;
    use convoflow_operators::ContactRow;

    fn contact(tenant: &str, id: &str, messages: i64) -> ContactRow {
        ContactRow {
            tenant_id: tenant.into(),
            contact_id: id.into(),
            first_seen_ts: 0,
            first_inbound_ts: None,
            last_inbound_ts: None,
            inbound_messages: messages,
            cohort_week: None,
        }
    }

    fn epoch(updates: Vec<(ContactRow, i64)>) -> TableSet {
        TableSet { contacts: Collection { updates }, ..TableSet::default() }
    }

    fn ids(tables: &Mutex<MemoryTables>, tenant: &str) -> Vec<String> {
        let batches = read_table(tables, "contacts").expect("read").expect("known table");
        let mut ids = Vec::new();
        for batch in batches.get(tenant).map(Vec::as_slice).unwrap_or_default() {
            let column = batch.column_by_name("contact_id").expect("column").as_string::<i32>();
            ids.extend(column.iter().flatten().map(str::to_owned));
        }
        ids
    }

    fn messages(batches: &TenantBatches, tenant: &str) -> Vec<(String, i64)> {
        let mut out = Vec::new();
        for batch in &batches[tenant] {
            let ids = batch.column_by_name("contact_id").expect("column").as_string::<i32>();
            let counts = batch
                .column_by_name("inbound_messages")
                .expect("column")
                .as_primitive::<datafusion::arrow::datatypes::Int64Type>();
            out.extend(ids.iter().flatten().map(str::to_owned).zip(counts.values().iter().copied()));
        }
        out.sort();
        out
    }

    #[test]
    fn reads_follow_every_change_and_keep_only_folds_of_the_current_batches() {
        let tables = Mutex::new(MemoryTables::default());
        lock_tables(&tables)
            .apply(epoch(vec![(contact("a", "c2", 1), 1), (contact("a", "c1", 1), 1), (contact("b", "c9", 1), 1)]), &[])
            .expect("apply");
        assert_eq!(ids(&tables, "a"), vec!["c1", "c2"]);
        assert_eq!(ids(&tables, "b"), vec!["c9"]);
        assert!(matches!(lock_tables(&tables).lookup("contacts"), Lookup::Ready(_)), "unchanged since the last read");
        let before = read_table(&tables, "contacts").expect("read").expect("known");

        // A fold started before a change keeps what it folded; the change stays to fold.
        lock_tables(&tables).apply(epoch(vec![(contact("b", "c8", 1), 1)]), &[]).expect("apply");
        let Lookup::Stale { from, to, build } = lock_tables(&tables).lookup("contacts") else {
            panic!("changed, so stale")
        };
        lock_tables(&tables)
            .apply(epoch(vec![(contact("a", "c1", 1), -1), (contact("a", "c1", 2), 1)]), &[])
            .expect("apply");
        // A second fold of the same changes, started meanwhile from the same batches.
        let Lookup::Stale { from: from_too, to: to_both, build: build_both } = lock_tables(&tables).lookup("contacts")
        else {
            panic!("changed, so stale")
        };
        lock_tables(&tables).keep("contacts", from, to, Arc::new(build().expect("build")));
        assert!(matches!(lock_tables(&tables).lookup("contacts"), Lookup::Stale { .. }), "the last change is not in");
        // Made from the batches before the first fold was kept: not kept.
        lock_tables(&tables).keep("contacts", from_too, to_both, Arc::new(TenantBatches::new()));
        drop(build_both);

        let after = read_table(&tables, "contacts").expect("read").expect("known");
        assert_eq!(messages(&after, "a"), vec![("c1".to_owned(), 2), ("c2".to_owned(), 1)]);
        assert_eq!(messages(&after, "b"), vec![("c8".to_owned(), 1), ("c9".to_owned(), 1)]);
        assert!(matches!(lock_tables(&tables).lookup("contacts"), Lookup::Ready(_)));
        // A change to one tenant leaves the other's batches as they were (not re-encoded).
        lock_tables(&tables).apply(epoch(vec![(contact("a", "c3", 1), 1)]), &[]).expect("apply");
        let last = read_table(&tables, "contacts").expect("read").expect("known");
        assert!(Arc::ptr_eq(last["b"][0].column(0), after["b"][0].column(0)));
        assert!(!Arc::ptr_eq(before["a"][0].column(0), last["a"][0].column(0)));
        assert!(read_table(&tables, "no_such_table").expect("read").is_none());
    }

    /// A retraction of a row the table does not hold is an error, not a silent difference.
    #[test]
    fn a_retraction_of_a_row_not_held_is_an_error() {
        let tables = Mutex::new(MemoryTables::default());
        lock_tables(&tables).apply(epoch(vec![(contact("a", "c1", 1), 1)]), &[]).expect("apply");
        lock_tables(&tables).apply(epoch(vec![(contact("a", "c1", 5), -1)]), &[]).expect("apply");
        let error = read_table(&tables, "contacts").expect_err("not held");
        assert!(error.to_string().contains("not in the stored table"), "{error}");
    }

    /// Changes held without reads are folded in once they outgrow the table, so they stay bounded.
    #[test]
    fn changes_held_without_reads_are_folded_once_they_outgrow_the_table() {
        let tables = Mutex::new(MemoryTables::default());
        let mut held = lock_tables(&tables);
        for round in 0..(FOLD_ROWS as i64 / 2 + 2) {
            let change = if round == 0 {
                vec![(contact("a", "c1", 0), 1)]
            } else {
                vec![(contact("a", "c1", round - 1), -1), (contact("a", "c1", round), 1)]
            };
            held.apply(epoch(change), &[]).expect("apply");
        }
        assert!(held.contacts.pending_rows <= FOLD_ROWS, "{} held", held.contacts.pending_rows);
        drop(held);
        let rows = read_table(&tables, "contacts").expect("read").expect("known");
        assert_eq!(messages(&rows, "a"), vec![("c1".to_owned(), FOLD_ROWS as i64 / 2 + 1)]);
    }

    /// A snapshot's tables are those of the moment it was started, whatever epochs are applied
    /// before its thread turns them into batches.
    #[test]
    fn tables_taken_at_a_moment_are_not_changed_by_later_epochs() {
        let tables = Arc::new(Mutex::new(MemoryTables::default()));
        lock_tables(&tables).apply(epoch(vec![(contact("a", "c1", 1), 1)]), &[]).expect("apply");
        let taken = tables_at(&tables);
        lock_tables(&tables)
            .apply(epoch(vec![(contact("a", "c1", 1), -1), (contact("a", "c2", 1), 1)]), &[])
            .expect("apply");
        let batches = taken.batches().expect("batches");
        let contacts = batches.iter().find(|table| table.table == "contacts").expect("contacts taken");
        let taken_ids: Vec<String> = contacts
            .batches
            .iter()
            .flat_map(|batch| {
                let column = batch.column_by_name("contact_id").expect("column").as_string::<i32>();
                column.iter().flatten().map(str::to_owned).collect::<Vec<_>>()
            })
            .collect();
        assert_eq!(taken_ids, vec!["c1"]);
        assert_eq!(ids(&tables, "a"), vec!["c2"], "the tables themselves moved on");
    }
}
