//! Read-only SQL over the tables in ClickHouse. The server enforces read-only (`readonly = 2`),
//! and renders the result in the format asked for; JSON comes as an array of row objects, like the
//! embedded store's.

use crate::dialect::Dialect;
use crate::format::OutputFormat;
use convoflow_sinks::{ClickHouseError, ClickHouseStore};

pub async fn clickhouse_query(store: &ClickHouseStore, sql: &str, format: OutputFormat) -> Result<String, ClickHouseError> {
    let sql = sql.trim().trim_end_matches(';');
    let server_format = match format {
        OutputFormat::Table => "PrettyCompactNoEscapes",
        OutputFormat::Csv => "CSVWithNames",
        OutputFormat::Json => "JSONEachRow",
    };
    let reply = store.fetch_read_only(sql, server_format).await?;
    let text = String::from_utf8_lossy(&reply);
    Ok(match format {
        OutputFormat::Json => format!("[{}]", text.lines().filter(|line| !line.trim().is_empty()).collect::<Vec<_>>().join(",\n")),
        _ => text.into_owned(),
    })
}

/// The dialect reports are written in for this server.
pub fn clickhouse_dialect(store: &ClickHouseStore) -> Dialect {
    Dialect::ClickHouse { datetime64: store.has_datetime64() }
}
