//! SQL over the in-memory tables for the API: only the tables a query mentions are materialized,
//! and a tenant key's query sees only its tenant's batches.

use super::{read_table, MemoryTables};
use convoflow_api::{BoxFuture, Limits, ReadError, Reader, Scope};
use convoflow_queries::{Collected, Dialect, SqlEngine};
use convoflow_schema::TABLES;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::execution::runtime_env::RuntimeEnv;
use std::sync::{Arc, Mutex};

pub struct MemoryReader {
    pub tables: Arc<Mutex<MemoryTables>>,
    /// The memory pool every query shares (`convoflow_queries::query_runtime`).
    pub runtime: Arc<RuntimeEnv>,
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
    /// The batches of `scope`'s rows of the tables `sql` mentions.
    fn scoped_batches(&self, scope: &Scope, sql: &str) -> Result<Vec<(&'static str, Vec<RecordBatch>)>, ReadError> {
        let mut out = Vec::new();
        for table in mentioned_tables(sql) {
            let by_tenant = read_table(&self.tables, table)
                .map_err(|error| ReadError::Unavailable(format!("cannot read table {table}: {error}")))?
                .unwrap_or_default();
            let batches = match scope {
                Scope::Tenant(tenant) => by_tenant.get(tenant).cloned().unwrap_or_default(),
                Scope::All => {
                    let mut tenants: Vec<&String> = by_tenant.keys().collect();
                    tenants.sort();
                    tenants.into_iter().flat_map(|tenant| by_tenant[tenant].iter().cloned()).collect()
                }
            };
            out.push((table, batches));
        }
        Ok(out)
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
            let batches = tokio::task::block_in_place(|| self.scoped_batches(scope, sql))?;
            let engine = SqlEngine::over_batches(batches, self.runtime.clone())
                .map_err(|error| ReadError::Unavailable(error.to_string()))?;
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
