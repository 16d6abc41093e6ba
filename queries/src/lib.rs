//! The read side: read-only SQL over the tables, with DataFusion over the embedded store or by
//! ClickHouse itself, and the named reports written in both dialects.

mod clickhouse;
mod dialect;
mod format;
mod reports;
mod sql;

pub use clickhouse::{clickhouse_dialect, clickhouse_query};
pub use dialect::{Dialect, Granularity};
pub use format::{format_batches, OutputFormat};
pub use reports::{report_sql, Report, ReportParams};
pub use sql::{QueryError, SqlEngine};
