//! The ClickHouse sink: every SPEC §5 table, with the SPEC column names, kept as a log of updates.
//!
//! ## Exactly-once under redelivery
//! Each table `T` is stored as `T_log` — the table's columns plus `diff Int8` and `epoch UInt64` —
//! and read through a view `T` that sums the diffs of committed epochs and keeps rows whose sum is
//! positive (`events` needs no sum: an event is only ever inserted once; `rejected` keeps one row
//! per input, place and reason, with its first `received_at`). One epoch of the dataflow is
//! committed by inserting its rows into the logs (large `RowBinary` inserts, one per table, run
//! concurrently) and then a single row into `commits`. Rows of an epoch that never reached
//! `commits` — the process died in between — are invisible, and epoch numbers are never reused
//! across runs. A failed commit is retried with the same epoch: the views count a row repeated
//! within one epoch once, so a partly or wholly repeated insert changes nothing.
//! After a restart the pipeline rebuilds operator state from the committed `events`, so input
//! redelivered by the bus is recognised as duplicates and changes nothing.
//!
//! ## Server versions
//! The server version is read at connect. Instants are `UInt64` ms on servers without
//! `DateTime64` (before 20.1, e.g. Debian's 18.16) and `DateTime64(3, 'UTC')` on newer ones; both
//! travel as the same 8 bytes in `RowBinary`. Inserts and reads use plain `RowBinary` (no
//! `RowBinaryWithNamesAndTypes`, which 18.16 lacks), so the client's schema validation is off.

mod query;
mod reader;
mod rowbinary;
mod sink;
mod state;

use bytes::Bytes;
use convoflow_operators::{RejectedRow, TableSet};
use convoflow_schema::{schema, table_batches, Rows, TABLES};
use datafusion::arrow::datatypes::DataType;
use datafusion::arrow::error::ArrowError;
use datafusion::arrow::record_batch::RecordBatch;

use convoflow_queries::clickhouse_string;
pub use query::{batch_from_json_compact, clickhouse_batches, clickhouse_dialect, clickhouse_query, ReadLimits};
pub use reader::ClickHouseReader;
pub use rowbinary::{decode, encode};
pub use sink::ClickHouseSink;

/// Where the tables live: the HTTP interface URL, and a database (default `convoflow`), given as
/// the URL's path: `http://127.0.0.1:8123/analytics`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClickHouseConfig {
    pub url: String,
    pub database: String,
}

pub const DEFAULT_DATABASE: &str = "convoflow";

impl ClickHouseConfig {
    pub fn parse(url: &str) -> Result<Self, ClickHouseError> {
        let rest = url.strip_prefix("http://").or_else(|| url.strip_prefix("https://")).ok_or_else(|| {
            ClickHouseError::Config(format!("`{url}` is not an http:// URL of ClickHouse's HTTP interface"))
        })?;
        let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
        let database = path.trim_matches('/');
        if !database.is_empty() && !database.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(ClickHouseError::Config(format!(
                "database name `{database}` may only hold letters, digits and _"
            )));
        }
        let scheme = &url[..url.len() - rest.len()];
        Ok(ClickHouseConfig {
            url: format!("{scheme}{host}"),
            database: if database.is_empty() { DEFAULT_DATABASE.to_owned() } else { database.to_owned() },
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ClickHouseError {
    #[error("{0}")]
    Config(String),
    #[error("ClickHouse at {url}: {what}")]
    Request { url: String, what: String, source: clickhouse::error::Error },
    #[error("ClickHouse at {url}: {what}")]
    Rows { url: String, what: String, source: ArrowError },
    #[error("{what}: {source}")]
    Io { what: String, source: std::io::Error },
}

/// One epoch's changes to commit.
pub struct Insert<'a> {
    /// Never reused; see [`ClickHouseStore::last_epoch`].
    pub epoch: u64,
    pub tables: &'a TableSet,
    pub rejected: &'a [RejectedRow],
    /// The bus positions the epoch consumed (for operators' eyes; 0 when not from a bus).
    pub first_position: u64,
    pub last_position: u64,
    /// The input whose position `last_position` is, when the consumer keeps its place in the
    /// store (`serve`) rather than by acknowledgements: recorded in `positions` with the epoch.
    pub input: Option<&'a str>,
}

pub struct ClickHouseStore {
    client: clickhouse::Client,
    config: ClickHouseConfig,
    version: String,
    instant_type: &'static str,
}

/// Servers from 20.1 on have `DateTime64`.
fn has_datetime64(version: &str) -> bool {
    let mut parts = version.split('.').map(|part| part.parse::<u32>().unwrap_or(0));
    let (major, minor) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    (major, minor) >= (20, 1)
}

impl ClickHouseStore {
    /// Connects, reads the server version and creates the database, log tables and views.
    pub async fn connect(config: &ClickHouseConfig) -> Result<Self, ClickHouseError> {
        let client = clickhouse::Client::default().with_url(&config.url).with_validation(false);
        let mut store =
            ClickHouseStore { client, config: config.clone(), version: String::new(), instant_type: "UInt64" };
        let version = store.fetch("SELECT version()", "TabSeparated", "read the server version").await?;
        store.version = String::from_utf8_lossy(&version).trim().to_owned();
        if has_datetime64(&store.version) {
            store.instant_type = "DateTime64(3, 'UTC')";
        }
        store.create_schema().await?;
        tracing::info!(url = %config.url, database = %config.database, version = %store.version, "ClickHouse ready");
        Ok(store)
    }

    /// Whether instants are stored as `DateTime64(3)` (else as `UInt64` milliseconds).
    pub fn has_datetime64(&self) -> bool {
        self.instant_type != "UInt64"
    }

    pub fn version(&self) -> &str {
        &self.version
    }

    pub fn config(&self) -> &ClickHouseConfig {
        &self.config
    }

    fn request_error(&self, what: &str) -> impl FnOnce(clickhouse::error::Error) -> ClickHouseError {
        let (url, what) = (self.config.url.clone(), what.to_owned());
        move |source| ClickHouseError::Request { url, what, source }
    }

    fn rows_error(&self, what: &str) -> impl FnOnce(ArrowError) -> ClickHouseError {
        let (url, what) = (self.config.url.clone(), what.to_owned());
        move |source| ClickHouseError::Rows { url, what, source }
    }

    async fn execute(&self, sql: &str, what: &str) -> Result<(), ClickHouseError> {
        self.client.query_raw(sql).execute().await.map_err(self.request_error(what))
    }

    /// Runs `sql` and returns the reply in `format`.
    pub async fn fetch(&self, sql: &str, format: &str, what: &str) -> Result<Bytes, ClickHouseError> {
        let mut cursor = self.client.query_raw(sql).fetch_bytes(format).map_err(self.request_error(what))?;
        cursor.collect().await.map_err(self.request_error(what))
    }

    /// Runs a query with `readonly = 2` (no writes, settings allowed) and returns the reply in
    /// `format`: the read side for analysts.
    /// `settings` are passed with it (limits: `max_execution_time`, `max_result_rows`, …).
    pub async fn fetch_read_only(
        &self,
        sql: &str,
        format: &str,
        settings: &[(&str, String)],
    ) -> Result<Bytes, ClickHouseError> {
        let mut query = self
            .client
            .clone()
            .with_database(&self.config.database)
            .with_setting("readonly", "2")
            .with_setting("output_format_json_quote_64bit_integers", "0");
        for (name, value) in settings {
            query = query.with_setting(*name, value.as_str());
        }
        let mut cursor = query.query_raw(sql).fetch_bytes(format).map_err(self.request_error("run the query"))?;
        cursor.collect().await.map_err(self.request_error("run the query"))
    }

    /// The ClickHouse type of an Arrow column: the types `rowbinary` encodes, and no others.
    fn column_type(&self, data_type: &DataType, nullable: bool) -> Result<String, ClickHouseError> {
        let base = match data_type {
            DataType::Utf8 => "String",
            DataType::Int64 => "Int64",
            DataType::Int32 => "Int32",
            DataType::Float64 => "Float64",
            DataType::Timestamp(_, _) => self.instant_type,
            DataType::Date32 => "Date",
            DataType::Boolean => "UInt8",
            other => return Err(ClickHouseError::Config(format!("no ClickHouse type for Arrow type {other}"))),
        };
        Ok(if nullable { format!("Nullable({base})") } else { base.to_owned() })
    }

    async fn create_schema(&self) -> Result<(), ClickHouseError> {
        let db = &self.config.database;
        self.execute(&format!("CREATE DATABASE IF NOT EXISTS {db}"), "create the database").await?;
        self.execute(
            &format!(
                "CREATE TABLE IF NOT EXISTS {db}.commits (epoch UInt64, committed_at UInt64, first_position UInt64, \
                 last_position UInt64, events UInt64) ENGINE = MergeTree() ORDER BY epoch"
            ),
            "create table commits",
        )
        .await?;
        self.create_state_tables().await?;
        self.execute(
            &format!(
                "CREATE TABLE IF NOT EXISTS {db}.positions (input String, position UInt64, epoch UInt64) \
                 ENGINE = MergeTree() ORDER BY (input, epoch)"
            ),
            "create table positions",
        )
        .await?;
        for table in TABLES {
            let Some(schema) = schema(table) else { continue };
            let columns = schema
                .fields()
                .iter()
                .map(|field| {
                    Ok(format!("{} {}", field.name(), self.column_type(field.data_type(), field.is_nullable())?))
                })
                .collect::<Result<Vec<String>, ClickHouseError>>()?;
            // Sorted by tenant, then the first always-present instant: how reports filter.
            let instant = schema
                .fields()
                .iter()
                .find(|field| matches!(field.data_type(), DataType::Timestamp(_, _)) && !field.is_nullable())
                .map_or(String::new(), |field| format!(", {}", field.name()));
            self.execute(
                &format!(
                    "CREATE TABLE IF NOT EXISTS {db}.{table}_log ({}, diff Int8, epoch UInt64) \
                     ENGINE = MergeTree() ORDER BY (tenant_id{instant})",
                    columns.join(", ")
                ),
                &format!("create table {table}_log"),
            )
            .await?;
            let names = schema.fields().iter().map(|field| field.name().as_str()).collect::<Vec<_>>().join(", ");
            let committed = format!("FROM {db}.{table}_log WHERE epoch IN (SELECT epoch FROM {db}.commits)");
            // An epoch's rows are distinct (its updates are consolidated), so rows repeated within
            // one epoch can only come from a retried insert, and are counted once.
            let view = match *table {
                "events" => format!("SELECT {names} {committed} LIMIT 1 BY tenant_id, event_id"),
                "rejected" => format!(
                    "SELECT tenant_id, min(received_at) AS received_at, reason, raw, source {committed} \
                     GROUP BY tenant_id, reason, raw, source"
                ),
                _ => format!(
                    "SELECT {names} FROM (SELECT DISTINCT {names}, diff, epoch {committed}) GROUP BY {names} HAVING sum(diff) > 0"
                ),
            };
            self.execute(&format!("CREATE VIEW IF NOT EXISTS {db}.{table} AS {view}"), &format!("create view {table}"))
                .await?;
        }
        Ok(())
    }

    /// The highest epoch number any row or commit carries; new epochs must be above it, so rows
    /// left by an interrupted commit can never become visible.
    pub async fn last_epoch(&self) -> Result<u64, ClickHouseError> {
        let db = &self.config.database;
        let mut last = 0u64;
        let sources =
            TABLES.iter().map(|table| format!("{table}_log")).chain(["commits".to_owned(), "positions".to_owned()]);
        for source in sources {
            let reply = self
                .fetch(&format!("SELECT max(epoch) FROM {db}.{source}"), "TabSeparated", "read the last epoch")
                .await?;
            last = last.max(String::from_utf8_lossy(&reply).trim().parse().unwrap_or(0));
        }
        Ok(last)
    }

    /// How far into `input` (see [`Insert::input`]) the committed epochs reach; 0 if nowhere.
    pub async fn committed_position(&self, input: &str) -> Result<u64, ClickHouseError> {
        let db = &self.config.database;
        let input = clickhouse_string(input);
        let sql = format!("SELECT max(position) FROM {db}.positions WHERE input = {input} AND epoch IN (SELECT epoch FROM {db}.commits)");
        let reply = self.fetch(&sql, "TabSeparated", "read the committed position").await?;
        Ok(String::from_utf8_lossy(&reply).trim().parse().unwrap_or(0))
    }

    /// Every committed event, to rebuild operator state from, as the `events` table's batches.
    pub async fn load_events(&self) -> Result<Vec<RecordBatch>, ClickHouseError> {
        let Some(schema) = schema("events") else { return Ok(Vec::new()) };
        let names: Vec<&str> = schema.fields().iter().map(|field| field.name().as_str()).collect();
        let sql = format!("SELECT {} FROM {}.events", names.join(", "), self.config.database);
        let bytes = self.fetch(&sql, "RowBinary", "load the committed events").await?;
        decode(schema, &bytes).map_err(self.rows_error("decode the committed events"))
    }

    /// Writes one epoch's updates into the logs, then marks the epoch committed. Retrying a failed
    /// commit with the same epoch is safe: nothing of it is visible until its `commits` row is,
    /// and the views count rows repeated within an epoch once.
    pub async fn commit(&self, commit: &Insert<'_>) -> Result<CommitStats, ClickHouseError> {
        let db = &self.config.database;
        let tables =
            table_batches(commit.tables, commit.rejected, Rows::Updates).map_err(self.rows_error("encode rows"))?;
        let mut inserts = Vec::new();
        let mut rows = 0u64;
        for table in &tables {
            if table.diffs.is_empty() {
                continue;
            }
            // Sized once: growing a buffer of hundreds of MB by doubling costs copies and faults.
            let mut body =
                Vec::with_capacity(table.batches.iter().map(|b| b.get_array_memory_size() + 9 * b.num_rows()).sum());
            let mut offset = 0;
            for batch in &table.batches {
                let diffs = &table.diffs[offset..offset + batch.num_rows()];
                offset += batch.num_rows();
                encode(batch, Some((diffs, commit.epoch)), &mut body).map_err(self.rows_error("encode rows"))?;
            }
            rows += table.diffs.len() as u64;
            let Some(schema) = schema(table.table) else { continue };
            let names: Vec<&str> = schema.fields().iter().map(|field| field.name().as_str()).collect();
            let sql =
                format!("INSERT INTO {db}.{}_log ({}, diff, epoch) FORMAT RowBinary", table.table, names.join(", "));
            inserts.push(self.insert(sql, body, table.table));
        }
        if let Some(input) = commit.input {
            let mut row = Vec::with_capacity(input.len() + 20);
            rowbinary::put_string(&mut row, input);
            row.extend_from_slice(&commit.last_position.to_le_bytes());
            row.extend_from_slice(&commit.epoch.to_le_bytes());
            inserts.push(self.insert(
                format!("INSERT INTO {db}.positions (input, position, epoch) FORMAT RowBinary"),
                row,
                "positions",
            ));
        }
        futures::future::try_join_all(inserts).await?;

        let mut marker = Vec::with_capacity(40);
        let now =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
        for value in [commit.epoch, now, commit.first_position, commit.last_position, commit.tables.events.len() as u64]
        {
            marker.extend_from_slice(&value.to_le_bytes());
        }
        let sql = format!(
            "INSERT INTO {db}.commits (epoch, committed_at, first_position, last_position, events) FORMAT RowBinary"
        );
        self.insert(sql, marker, "commits").await?;
        Ok(CommitStats { rows })
    }

    async fn insert(&self, sql: String, body: Vec<u8>, table: &str) -> Result<(), ClickHouseError> {
        let what = format!("insert into {table}");
        let mut insert = self.client.insert_formatted_with(sql);
        insert.send(Bytes::from(body)).await.map_err(self.request_error(&what))?;
        insert.end().await.map_err(self.request_error(&what))
    }
}

/// What a commit wrote.
#[derive(Clone, Copy, Debug, Default)]
pub struct CommitStats {
    /// Rows inserted into the logs (updates of every table).
    pub rows: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_database_is_the_url_path() {
        let parsed = ClickHouseConfig::parse("http://127.0.0.1:8123/analytics").expect("valid");
        assert_eq!(parsed, ClickHouseConfig { url: "http://127.0.0.1:8123".into(), database: "analytics".into() });
        let default = ClickHouseConfig::parse("http://127.0.0.1:8123/").expect("valid");
        assert_eq!(default.database, DEFAULT_DATABASE);
        assert!(ClickHouseConfig::parse("127.0.0.1:8123").is_err());
        assert!(ClickHouseConfig::parse("http://h/x;DROP").is_err());
    }

    #[test]
    fn datetime64_from_20_1() {
        assert!(!has_datetime64("18.16.1"));
        assert!(!has_datetime64("19.17.4.11"));
        assert!(has_datetime64("20.1.2.4"));
        assert!(has_datetime64("25.8.1.1"));
    }
}
