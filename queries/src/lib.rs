//! The read side: read-only SQL over the tables, with DataFusion over the embedded store or by
//! ClickHouse itself.

mod clickhouse;
mod format;
mod sql;

pub use clickhouse::clickhouse_query;
pub use format::{format_batches, OutputFormat};
pub use sql::{QueryError, SqlEngine};
