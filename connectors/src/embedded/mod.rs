//! The embedded store: every SPEC §5 table as a Parquet file under `<data>/tables/` ([`EmbeddedStore`]).
//! `replay` writes it once at the end of a run ([`ParquetSink`]); `serve` holds the tables in
//! memory, answers SQL over them and snapshots them to Parquet now and then ([`MemorySink`]).

mod memory;
mod reader;
mod replay;
mod sink;
mod store;

pub use memory::{lock_tables, read_table, split_by_tenant, tables_at, MemoryTables, TablesAt, TenantBatches};
pub use reader::MemoryReader;
pub use replay::ParquetSink;
pub use sink::MemorySink;
pub use store::{read_events, DataDirLock, EmbeddedStore, Prepared, StoreError, TableWriter, MERGED_SEGMENT_ROWS};
