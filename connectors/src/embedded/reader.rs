//! SQL over the in-memory tables for the API: only the tables a query mentions are materialized,
//! and a tenant key's query sees only its tenant's batches. `events` is the store's segments
//! (read by DataFusion, filtered to the tenant as part of the table) and the events not yet in
//! them, listed and copied under one hold of the tables' lock, which a snapshot also holds while
//! it puts its new segment in place.

use super::{lock_tables, read_table, MemoryTables, TenantBatches};
use convoflow_api::{BoxFuture, Limits, ReadError, Reader, Scope};
use convoflow_queries::{Collected, Dialect, QueryError, SqlEngine};
use convoflow_schema::files::table_files;
use convoflow_schema::TABLES;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::execution::runtime_env::RuntimeEnv;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

pub struct MemoryReader {
    pub tables: Arc<Mutex<MemoryTables>>,
    /// The memory pool every query shares (`convoflow_queries::query_runtime`).
    pub runtime: Arc<RuntimeEnv>,
    /// The store's `tables` directory (`events`' segments).
    pub tables_dir: PathBuf,
}

/// One table's batches for a query.
type Scoped = (&'static str, Vec<RecordBatch>);

/// `events` for one query: the segment files and the events not yet in them.
struct Events {
    files: Vec<PathBuf>,
    batches: Vec<RecordBatch>,
}

/// Tables whose name occurs as a word in `sql`. Only those are materialized for the query; a table
/// missed here could only come out empty, never show another tenant's rows.
fn mentioned_tables(sql: &str) -> Vec<&'static str> {
    let lower = sql.to_ascii_lowercase();
    let words: std::collections::HashSet<&str> =
        lower.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).collect();
    TABLES.iter().copied().filter(|table| words.contains(table)).collect()
}

impl MemoryReader {
    /// The batches of `scope`'s rows of the tables `sql` mentions, but `events`, which comes
    /// apart when mentioned.
    fn scoped_batches(&self, scope: &Scope, sql: &str) -> Result<(Vec<Scoped>, Option<Events>), ReadError> {
        let unavailable = |table: &str, error: &dyn std::fmt::Display| {
            ReadError::Unavailable(format!("cannot read table {table}: {error}"))
        };
        let mut out = Vec::new();
        let mut events = None;
        for table in mentioned_tables(sql) {
            if table == "events" {
                let held = lock_tables(&self.tables);
                let files = table_files(&self.tables_dir, "events").map_err(|error| unavailable(table, &error))?;
                let unsaved = held.unsaved_events().map_err(|error| unavailable(table, &error))?;
                drop(held);
                events = Some(Events { files, batches: scoped(scope, &unsaved) });
                continue;
            }
            let by_tenant =
                read_table(&self.tables, table).map_err(|error| unavailable(table, &error))?.unwrap_or_default();
            out.push((table, scoped(scope, &by_tenant)));
        }
        Ok((out, events))
    }
}

/// The batches of `scope`'s tenant, or of every tenant in order.
fn scoped(scope: &Scope, by_tenant: &TenantBatches) -> Vec<RecordBatch> {
    match scope {
        Scope::Tenant(tenant) => by_tenant.get(tenant).cloned().unwrap_or_default(),
        Scope::All => {
            let mut tenants: Vec<&String> = by_tenant.keys().collect();
            tenants.sort();
            tenants.into_iter().flat_map(|tenant| by_tenant[tenant].iter().cloned()).collect()
        }
    }
}

impl Reader for MemoryReader {
    fn query<'a>(
        &'a self,
        scope: &'a Scope,
        sql: &'a str,
        limits: &'a Limits,
    ) -> BoxFuture<'a, Result<Collected, ReadError>> {
        Box::pin(async move {
            // Rebuilding a changed table's batches is CPU work: keep it off the async workers.
            let (batches, events) = tokio::task::block_in_place(|| self.scoped_batches(scope, sql))?;
            let unavailable = |error: QueryError| ReadError::Unavailable(error.to_string());
            let mut engine = SqlEngine::over_batches(batches, self.runtime.clone()).map_err(unavailable)?;
            if let Some(Events { files, batches }) = events {
                let tenant = match scope {
                    Scope::Tenant(tenant) => Some(tenant.as_str()),
                    Scope::All => None,
                };
                engine = engine.with_files("events", files, batches, tenant).await.map_err(unavailable)?;
            }
            engine
                .query_limited(sql, limits.sql_max_rows, limits.sql_max_result_bytes)
                .await
                .map_err(|error| ReadError::Query(error.to_string()))
        })
    }

    fn dialect(&self) -> Dialect {
        Dialect::DataFusion
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mentioned_tables_are_found_as_whole_words() {
        assert_eq!(
            mentioned_tables("SELECT * FROM Responses r JOIN contacts c USING (tenant_id)"),
            vec!["responses", "contacts"]
        );
        assert_eq!(mentioned_tables("select count(*) from \"events\""), vec!["events"]);
        assert!(mentioned_tables("SELECT 1 AS responses_total").is_empty());
    }
}
