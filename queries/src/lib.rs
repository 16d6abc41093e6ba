//! The read side: read-only SQL over the tables, with DataFusion over the embedded store or by
//! ClickHouse itself, and the named reports written in both dialects.

mod dialect;
mod format;
mod guards;
mod reports;
mod sql;
mod tenant_scope;

pub use dialect::{clickhouse_string, Dialect, Granularity};
pub use format::{format_batches, OutputFormat};
pub use guards::{
    check_nesting, query_runtime, Collected, LimitError, FUNCTION_OUTPUT_BYTES, MAX_EXPRESSION_DEPTH, SQL_MAX_BYTES,
};
pub use reports::{report_sql, Report, ReportParams};
pub use sql::{QueryError, SqlEngine};
pub use tenant_scope::{scope_to_tenant, ScopeError};
