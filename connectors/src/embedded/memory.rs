//! The embedded store while `convoflow serve` runs: every derived table held in memory and kept
//! current epoch by epoch, read as Arrow batches split by tenant (a tenant's queries only ever see
//! its own batches), and written to the Parquet store as a snapshot. Of `events`, only those not
//! yet in the store's segments are held (a query reads the segments beside them).
//!
//! Derived tables are multisets `row → multiplicity`, so an epoch's updates apply in time
//! proportional to the updates. Their Arrow form is rebuilt lazily, when a reader asks for a table
//! that changed since its last rebuild, outside the lock (`read_table`). `events` and `rejected`
//! only grow: each epoch's new rows are converted once and appended.

use convoflow_events::Event;
use convoflow_operators::{for_each_table, Collection, RejectedRow, Table, TableSet};
use convoflow_schema::{batches, TableBatches, TABLES};
use datafusion::arrow::array::{Array, AsArray, UInt32Array};
use datafusion::arrow::compute::take_record_batch;
use datafusion::arrow::error::ArrowError;
use datafusion::arrow::record_batch::RecordBatch;
use std::collections::{HashMap, HashSet};
use std::hash::Hash;
use std::sync::{Arc, Mutex, MutexGuard};

/// A table's batches by tenant.
pub type TenantBatches = HashMap<String, Vec<RecordBatch>>;

struct Contents<R> {
    rows: HashMap<R, i64>,
    /// Counts changes, so a rebuild made from an older copy of the rows is not kept.
    generation: u64,
    cached: Option<(u64, Arc<TenantBatches>)>,
}

impl<R> Default for Contents<R> {
    fn default() -> Self {
        Contents { rows: HashMap::new(), generation: 0, cached: None }
    }
}

impl<R: Table + Hash + Eq + Clone + Ord + Send + 'static> Contents<R> {
    fn apply(&mut self, updates: Collection<R>) {
        for (row, diff) in updates.updates {
            self.generation += 1;
            let entry = self.rows.entry(row);
            match entry {
                std::collections::hash_map::Entry::Occupied(mut occupied) => {
                    *occupied.get_mut() += diff;
                    if *occupied.get() == 0 {
                        occupied.remove();
                    }
                }
                std::collections::hash_map::Entry::Vacant(vacant) => {
                    vacant.insert(diff);
                }
            }
        }
    }

    /// The cached batches if current; else a copy of the rows and how to turn them into
    /// batches, which the caller runs without holding the tables' lock.
    fn lookup(&self) -> Lookup {
        if let Some((generation, cached)) = &self.cached {
            if *generation == self.generation {
                return Lookup::Ready(cached.clone());
            }
        }
        let rows: Vec<(R, i64)> = self.rows.iter().map(|(row, count)| (row.clone(), *count)).collect();
        Lookup::Stale { generation: self.generation, build: Box::new(move || build(rows)) }
    }

    fn keep(&mut self, generation: u64, batches: Arc<TenantBatches>) {
        if generation == self.generation {
            self.cached = Some((generation, batches));
        }
    }
}

/// A table's rows as batches by tenant, in a stable order (reproducible snapshots and results).
fn build<R: Table + Ord>(mut rows: Vec<(R, i64)>) -> Result<TenantBatches, ArrowError> {
    rows.sort_by(|a, b| a.0.cmp(&b.0));
    let contents = Collection { updates: rows };
    let rows: Vec<&R> = contents.rows().collect();
    let mut by_tenant = TenantBatches::new();
    for batch in &batches::<R, _>(&rows)? {
        for (tenant, part) in split_by_tenant(batch)? {
            by_tenant.entry(tenant).or_default().push(part);
        }
    }
    Ok(by_tenant)
}

/// What a table's lookup under the lock found.
enum Lookup {
    Ready(Arc<TenantBatches>),
    Stale { generation: u64, build: Box<dyn FnOnce() -> Result<TenantBatches, ArrowError> + Send> },
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
            fn apply_derived(&mut self, tables: &mut TableSet) {
                $(self.$table.apply(std::mem::take(&mut tables.$table));)+
            }

            fn lookup_derived(&self, table: &str) -> Lookup {
                match table {
                    $(stringify!($table) => self.$table.lookup(),)+
                    _ => Lookup::Unknown,
                }
            }

            fn keep(&mut self, table: &str, generation: u64, batches: Arc<TenantBatches>) {
                match table {
                    $(stringify!($table) => self.$table.keep(generation, batches),)+
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
        self.apply_derived(&mut tables);
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
        Lookup::Stale { generation, build } => {
            let batches = Arc::new(build()?);
            lock_tables(tables).keep(table, generation, batches.clone());
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
                Lookup::Stale { generation, build } => {
                    let batches = Arc::new(build()?);
                    lock_tables(&source).keep(table, generation, batches.clone());
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
    if groups.len() == 1 {
        return Ok(vec![(groups[0].0.to_owned(), batch.clone())]);
    }
    groups
        .into_iter()
        .map(|(tenant, rows)| Ok((tenant.to_owned(), take_record_batch(batch, &UInt32Array::from(rows))?)))
        .collect()
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

    #[test]
    fn reads_follow_every_change_and_never_keep_a_stale_rebuild() {
        let tables = Mutex::new(MemoryTables::default());
        lock_tables(&tables)
            .apply(epoch(vec![(contact("a", "c2", 1), 1), (contact("a", "c1", 1), 1), (contact("b", "c9", 1), 1)]), &[])
            .expect("apply");
        assert_eq!(ids(&tables, "a"), vec!["c1", "c2"]);
        assert_eq!(ids(&tables, "b"), vec!["c9"]);
        assert!(matches!(lock_tables(&tables).lookup("contacts"), Lookup::Ready(_)), "unchanged since the last read");
        // A rebuild started before a change must not be kept as current.
        lock_tables(&tables).apply(epoch(vec![(contact("b", "c8", 1), 1)]), &[]).expect("apply");
        let Lookup::Stale { generation, build } = lock_tables(&tables).lookup("contacts") else {
            panic!("changed, so stale")
        };
        lock_tables(&tables)
            .apply(epoch(vec![(contact("a", "c1", 1), -1), (contact("a", "c1", 2), 1)]), &[])
            .expect("apply");
        lock_tables(&tables).keep("contacts", generation, Arc::new(build().expect("build")));
        assert!(matches!(lock_tables(&tables).lookup("contacts"), Lookup::Stale { .. }));
        let batches = read_table(&tables, "contacts").expect("read").expect("known");
        let messages: Vec<i64> = batches["a"]
            .iter()
            .flat_map(|batch| {
                batch
                    .column_by_name("inbound_messages")
                    .expect("column")
                    .as_primitive::<datafusion::arrow::datatypes::Int64Type>()
                    .values()
                    .to_vec()
            })
            .collect();
        assert_eq!(messages, vec![2, 1]);
        assert!(matches!(lock_tables(&tables).lookup("contacts"), Lookup::Ready(_)));
        assert!(read_table(&tables, "no_such_table").expect("read").is_none());
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
