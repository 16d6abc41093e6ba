//! Reads from ClickHouse for the API. A tenant key's SQL is rewritten so that every table it
//! reads holds only the tenant's rows (`convoflow_queries::scope_to_tenant`; 18.16 has no row
//! policies); the server runs it read-only with time, row and memory limits.

use super::{clickhouse_batches, clickhouse_dialect, ClickHouseError, ClickHouseStore, ReadLimits};
use convoflow_api::{BoxFuture, Limits, ReadError, Reader, Scope};
use convoflow_queries::{scope_to_tenant, Collected, Dialect};
use convoflow_schema::TABLES;
use std::sync::Arc;

pub struct ClickHouseReader {
    pub store: Arc<ClickHouseStore>,
}

impl Reader for ClickHouseReader {
    fn query<'a>(
        &'a self,
        scope: &'a Scope,
        sql: &'a str,
        limits: &'a Limits,
    ) -> BoxFuture<'a, Result<Collected, ReadError>> {
        Box::pin(async move {
            let sql = match scope {
                Scope::All => sql.to_owned(),
                Scope::Tenant(tenant) => scope_to_tenant(sql, tenant, &self.store.config().database, TABLES)
                    .map_err(|error| ReadError::Query(error.to_string()))?,
            };
            let read = ReadLimits {
                time: limits.sql_timeout,
                rows: limits.sql_max_rows,
                result_bytes: limits.sql_max_result_bytes,
                memory_bytes: limits.sql_memory_bytes as u64,
            };
            match clickhouse_batches(&self.store, &sql, read).await {
                Ok(batch) => Ok(Collected::cut(vec![batch], limits.sql_max_rows)),
                Err(ClickHouseError::Request { source: clickhouse::error::Error::BadResponse(message), .. }) => {
                    Err(ReadError::Query(server_message(&message)))
                }
                Err(error) => Err(ReadError::Unavailable(error.to_string())),
            }
        })
    }

    fn dialect(&self) -> Dialect {
        clickhouse_dialect(&self.store)
    }
}

/// The server's own words, without its stack trace.
fn server_message(message: &str) -> String {
    let message = message.split(", Stack trace").next().unwrap_or(message);
    message.split("\n\n").next().unwrap_or(message).trim().to_owned()
}
