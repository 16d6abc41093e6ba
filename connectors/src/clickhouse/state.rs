//! Operator state beside the ClickHouse tables (issue 13): the files a `Driver::save` wrote, kept
//! in the database itself, so a consumer restarted anywhere resumes from it.
//!
//! - `operator_state (generation, file, part, bytes)`, partitioned by generation: each file in
//!   parts of [`PART_BYTES`].
//! - `state_commits (generation, epoch, saved_at)`: written once every part is in, naming the
//!   last epoch the state covers. A state counts only once this row is written and its epoch is in
//!   `commits`, so an upload cut short is never used. Older generations' partitions are dropped
//!   after a newer one is written.
//! - On restore the newest counted state is fetched into a local directory and resumed; the
//!   events of epochs committed after it are re-fed on top.

use super::{ClickHouseError, ClickHouseStore};
use convoflow_queries::clickhouse_string;
use convoflow_schema::schema;
use datafusion::arrow::record_batch::RecordBatch;
use std::path::Path;

/// Bytes per `operator_state` row.
const PART_BYTES: usize = 16 << 20;

impl ClickHouseStore {
    pub(super) async fn create_state_tables(&self) -> Result<(), ClickHouseError> {
        let db = &self.config.database;
        self.execute(
            &format!(
                "CREATE TABLE IF NOT EXISTS {db}.operator_state (generation String, file String, part UInt32, \
                 bytes String) ENGINE = MergeTree() PARTITION BY generation ORDER BY (file, part)"
            ),
            "create table operator_state",
        )
        .await?;
        self.execute(
            &format!(
                "CREATE TABLE IF NOT EXISTS {db}.state_commits (generation String, epoch UInt64, saved_at UInt64) \
                 ENGINE = MergeTree() ORDER BY saved_at"
            ),
            "create table state_commits",
        )
        .await
    }

    /// The newest state whose upload finished and whose epoch is committed: its generation and epoch.
    pub async fn saved_state(&self) -> Result<Option<(String, u64)>, ClickHouseError> {
        let db = &self.config.database;
        let sql = format!(
            "SELECT generation, epoch FROM {db}.state_commits WHERE epoch IN (SELECT epoch FROM {db}.commits) \
             AND generation IN (SELECT generation FROM {db}.operator_state) ORDER BY saved_at DESC LIMIT 1"
        );
        let reply = self.fetch(&sql, "TabSeparated", "read the saved state").await?;
        let text = String::from_utf8_lossy(&reply);
        let Some((generation, epoch)) = text.trim().split_once('\t') else { return Ok(None) };
        Ok(epoch.parse().ok().map(|epoch| (generation.to_owned(), epoch)))
    }

    /// Uploads the files of `dir` as state `generation`, covering every epoch up to `epoch`; then
    /// drops older states.
    pub async fn put_state(&self, dir: &Path, generation: &str, epoch: u64) -> Result<(), ClickHouseError> {
        let db = &self.config.database;
        let io = |what: String| move |source| ClickHouseError::Io { what, source };
        let entries = std::fs::read_dir(dir).map_err(io(format!("read {}", dir.display())))?;
        let mut files = Vec::new();
        for entry in entries {
            let entry = entry.map_err(io(format!("read {}", dir.display())))?;
            files.push(entry.path());
        }
        files.sort();
        for path in files {
            let name = path.file_name().map(|name| name.to_string_lossy().into_owned()).unwrap_or_default();
            let bytes = std::fs::read(&path).map_err(io(format!("read {}", path.display())))?;
            for (part, chunk) in bytes.chunks(PART_BYTES).enumerate() {
                let mut row = Vec::with_capacity(chunk.len() + generation.len() + name.len() + 16);
                super::rowbinary::put_string(&mut row, generation);
                super::rowbinary::put_string(&mut row, &name);
                row.extend_from_slice(&(part as u32).to_le_bytes());
                super::rowbinary::put_len(&mut row, chunk.len());
                row.extend_from_slice(chunk);
                let sql = format!("INSERT INTO {db}.operator_state (generation, file, part, bytes) FORMAT RowBinary");
                self.insert(sql, row, "operator_state").await?;
            }
        }
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
        let mut row = Vec::new();
        super::rowbinary::put_string(&mut row, generation);
        row.extend_from_slice(&epoch.to_le_bytes());
        row.extend_from_slice(&now.to_le_bytes());
        let sql = format!("INSERT INTO {db}.state_commits (generation, epoch, saved_at) FORMAT RowBinary");
        self.insert(sql, row, "state_commits").await?;
        let others = format!(
            "SELECT DISTINCT generation FROM {db}.operator_state WHERE generation != {}",
            clickhouse_string(generation)
        );
        let reply = self.fetch(&others, "TabSeparated", "list older states").await?;
        for older in String::from_utf8_lossy(&reply).lines().filter(|line| !line.is_empty()) {
            let drop = format!("ALTER TABLE {db}.operator_state DROP PARTITION {}", clickhouse_string(older));
            self.execute(&drop, "drop an older state").await?;
        }
        Ok(())
    }

    /// Writes the files of state `generation` into `dir`.
    pub async fn get_state(&self, generation: &str, dir: &Path) -> Result<(), ClickHouseError> {
        let db = &self.config.database;
        let sql = format!(
            "SELECT file, bytes FROM {db}.operator_state WHERE generation = {} ORDER BY file, part",
            clickhouse_string(generation)
        );
        let reply = self.fetch(&sql, "RowBinary", "read the saved state").await?;
        let io = |what: String| move |source| ClickHouseError::Io { what, source };
        std::fs::create_dir_all(dir).map_err(io(format!("create {}", dir.display())))?;
        let mut input: &[u8] = &reply;
        let mut files: Vec<(String, Vec<u8>)> = Vec::new();
        while !input.is_empty() {
            let torn = || ClickHouseError::Config("the saved operator state in ClickHouse is torn".to_owned());
            let name = take_string(&mut input).ok_or_else(torn)?;
            let bytes = take_string(&mut input).ok_or_else(torn)?;
            match files.last_mut() {
                Some((last, content)) if *last == String::from_utf8_lossy(name) => content.extend_from_slice(bytes),
                _ => files.push((String::from_utf8_lossy(name).into_owned(), bytes.to_vec())),
            }
        }
        for (name, content) in files {
            let path = dir.join(&name);
            std::fs::write(&path, content).map_err(io(format!("write {}", path.display())))?;
        }
        Ok(())
    }

    /// The committed events of epochs after `epoch`.
    pub async fn load_events_after(&self, epoch: u64) -> Result<Vec<RecordBatch>, ClickHouseError> {
        let Some(schema) = schema("events") else { return Ok(Vec::new()) };
        let db = &self.config.database;
        let names: Vec<&str> = schema.fields().iter().map(|field| field.name().as_str()).collect();
        let sql = format!(
            "SELECT {} FROM {db}.events_log WHERE epoch > {epoch} AND epoch IN (SELECT epoch FROM {db}.commits) \
             LIMIT 1 BY tenant_id, event_id",
            names.join(", ")
        );
        let bytes = self.fetch(&sql, "RowBinary", "load the events after the saved state").await?;
        super::decode(schema, &bytes).map_err(self.rows_error("decode the events after the saved state"))
    }
}

/// A RowBinary `String`: its LEB128 length, then its bytes.
fn take_string<'a>(input: &mut &'a [u8]) -> Option<&'a [u8]> {
    let mut len = 0usize;
    let mut shift = 0u32;
    loop {
        let (&byte, rest) = input.split_first()?;
        *input = rest;
        len |= usize::from(byte & 0x7f).checked_shl(shift)?;
        if byte & 0x80 == 0 {
            break;
        }
        shift += 7;
    }
    if input.len() < len {
        return None;
    }
    let (value, rest) = input.split_at(len);
    *input = rest;
    Some(value)
}

#[cfg(test)]
mod tests {
    use super::take_string;

    #[test]
    fn strings_are_read_back_as_written_and_a_torn_one_is_none() {
        let mut out = Vec::new();
        let long = "x".repeat(300);
        super::super::rowbinary::put_string(&mut out, "Dedup.0.state");
        super::super::rowbinary::put_string(&mut out, &long);
        let mut input: &[u8] = &out;
        assert_eq!(take_string(&mut input), Some(&b"Dedup.0.state"[..]));
        assert_eq!(take_string(&mut input), Some(long.as_bytes()));
        assert!(input.is_empty());
        let mut torn: &[u8] = &out[..out.len() - 1];
        take_string(&mut torn);
        assert_eq!(take_string(&mut torn), None);
    }
}
