//! Writers of table updates. The embedded store keeps every SPEC §5 table as a Parquet file in
//! the data dir, with the SPEC column names and Arrow types (`Timestamp(ms, UTC)`, `Date32`).

mod columns;
mod convert;
mod schema;
mod store;

pub use convert::{events_from_batch, rejected_from_batch, table_batches};
pub use schema::{schema, TABLES};
pub use store::{EmbeddedStore, StoreError};
