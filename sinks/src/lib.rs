//! Writers of table updates. ClickHouse receives every epoch's updates (see `clickhouse`); the
//! embedded store keeps every SPEC §5 table as a Parquet file in
//! the data dir, with the SPEC column names and Arrow types (`Timestamp(ms, UTC)`, `Date32`).

mod clickhouse;
mod columns;
mod convert;
mod memory;
mod schema;
mod store;

pub use clickhouse::{
    decode as decode_row_binary, string_literal as clickhouse_string, ClickHouseConfig, ClickHouseError,
    ClickHouseStore, Commit, CommitStats,
};
pub use convert::{events_from_batch, rejected_from_batch, table_batches, Rows, TableBatches};
pub use memory::{lock_tables, read_table, snapshot_table, split_by_tenant, MemoryTables, TenantBatches};
pub use schema::{schema, TABLES};
pub use store::{DataDirLock, EmbeddedStore, StoreError};
