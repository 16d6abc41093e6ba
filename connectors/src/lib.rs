//! Connectors: what the runtime loop reads from ([`Source`]) and writes to ([`Sink`]), one folder
//! per external system, each holding everything convoflow does with that system.
//!
//! | folder | source | sink | also |
//! |---|---|---|---|
//! | `file` | NDJSON files (`FileSource`, ends) | | WhatsApp webhook files normalized |
//! | `log` | the local log from a byte offset (`LogSource`) | | the log itself; ingest (`LogBus`) |
//! | `jetstream` | the stream from a sequence (`StreamSource`); a durable or replay consumer (`ConsumerSource`, ends) | | the stream, publishing; ingest (`StreamBus`) |
//! | `embedded` | | in-memory tables with Parquet snapshots (`MemorySink`); a replay's one write (`ParquetSink`) | the Parquet store; SQL over the in-memory tables (`MemoryReader`) |
//! | `clickhouse` | | every epoch committed (`ClickHouseSink`) | DDL, `RowBinary`, SQL reads (`ClickHouseReader`) |
//!
//! `wire` is what goes on either bus (NDJSON batches of one tenant's events).

mod connector;

pub mod clickhouse;
pub mod embedded;
pub mod file;
pub mod jetstream;
pub mod log;
pub mod retry;
pub mod wire;

pub use connector::{Batch, Commit, Committed, Read, Restored, RuntimeError, SavedState, Sink, Source, StoredEvents};
