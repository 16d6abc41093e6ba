//! The tables in Arrow form, derived from each row type's `table!` declaration: the schemas (SPEC
//! column names, `Timestamp(ms, UTC)`, `Date32`) that the Parquet store, ClickHouse's DDL and
//! the SQL engine share, and the converters between rows and record batches.

mod columns;
mod convert;
pub mod files;
mod schema;

pub use convert::{batches, events_from_batch, rejected_from_batch, table_batches, Rows, TableBatches};
pub use schema::{data_type, schema, schema_of, DERIVED_TABLES, TABLES};
