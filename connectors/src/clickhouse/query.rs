//! Read-only SQL over the tables in ClickHouse. The server enforces read-only (`readonly = 2`),
//! and renders the result in the format asked for; JSON comes as an array of row objects, like the
//! embedded store's. For the API the result comes back as Arrow batches (`clickhouse_batches`).

use super::{ClickHouseError, ClickHouseStore};
use convoflow_queries::{Dialect, OutputFormat};
use datafusion::arrow::array::{
    ArrayRef, BooleanBuilder, Date32Builder, Float64Builder, Int64Builder, StringBuilder, UInt64Builder,
};
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use datafusion::arrow::error::ArrowError;
use datafusion::arrow::record_batch::RecordBatch;
use serde_json::Value;
use std::sync::Arc;
use std::time::Duration;

pub async fn clickhouse_query(
    store: &ClickHouseStore,
    sql: &str,
    format: OutputFormat,
) -> Result<String, ClickHouseError> {
    let sql = sql.trim().trim_end_matches(';');
    let server_format = match format {
        OutputFormat::Table => "PrettyCompactNoEscapes",
        OutputFormat::Csv => "CSVWithNames",
        OutputFormat::Json => "JSONEachRow",
    };
    let reply = store.fetch_read_only(sql, server_format, &[]).await?;
    let text = String::from_utf8_lossy(&reply);
    Ok(match format {
        OutputFormat::Json => {
            format!("[{}]", text.lines().filter(|line| !line.trim().is_empty()).collect::<Vec<_>>().join(",\n"))
        }
        _ => text.into_owned(),
    })
}

/// The dialect reports are written in for this server.
pub fn clickhouse_dialect(store: &ClickHouseStore) -> Dialect {
    Dialect::ClickHouse { datetime64: store.has_datetime64() }
}

/// Limits the server enforces on one read.
#[derive(Clone, Copy, Debug)]
pub struct ReadLimits {
    pub time: Duration,
    /// The server stops reading past this many rows (at a block boundary, so a few more may come).
    pub rows: usize,
    /// The server stops reading past this many bytes of result (also at a block boundary).
    pub result_bytes: usize,
    pub memory_bytes: u64,
}

/// Runs a read-only query and returns its result as one Arrow batch.
pub async fn clickhouse_batches(
    store: &ClickHouseStore,
    sql: &str,
    limits: ReadLimits,
) -> Result<RecordBatch, ClickHouseError> {
    let settings = [
        ("max_execution_time", limits.time.as_secs().max(1).to_string()),
        ("max_result_rows", (limits.rows + 1).to_string()),
        ("max_result_bytes", limits.result_bytes.to_string()),
        ("result_overflow_mode", "break".to_owned()),
        ("max_memory_usage", limits.memory_bytes.to_string()),
    ];
    let sql = sql.trim().trim_end_matches(';');
    let reply = store.fetch_read_only(sql, "JSONCompact", &settings).await?;
    batch_from_json_compact(&reply).map_err(|source| ClickHouseError::Rows {
        url: store.config().url.clone(),
        what: "read the query's result".to_owned(),
        source,
    })
}

/// How a ClickHouse column comes out in Arrow: integers as Int64 (UInt64 as UInt64), floats as
/// Float64, dates as Date32, booleans as Boolean, anything else as its text.
fn arrow_type(clickhouse_type: &str) -> DataType {
    let mut inner = clickhouse_type;
    for wrapper in ["Nullable(", "LowCardinality("] {
        if let Some(rest) = inner.strip_prefix(wrapper).and_then(|rest| rest.strip_suffix(')')) {
            inner = rest;
        }
    }
    match inner {
        "UInt64" => DataType::UInt64,
        "Int8" | "Int16" | "Int32" | "Int64" | "UInt8" | "UInt16" | "UInt32" => DataType::Int64,
        "Float32" | "Float64" => DataType::Float64,
        "Date" | "Date32" => DataType::Date32,
        "Bool" => DataType::Boolean,
        _ => DataType::Utf8,
    }
}

fn bad(what: String) -> ArrowError {
    ArrowError::ParseError(what)
}

/// A `JSONCompact` reply (`{"meta": [{"name", "type"}], "data": [[…], …]}`) as one batch.
pub fn batch_from_json_compact(bytes: &[u8]) -> Result<RecordBatch, ArrowError> {
    let reply: Value = serde_json::from_slice(bytes).map_err(|e| bad(format!("the reply is not JSON: {e}")))?;
    let meta = reply.get("meta").and_then(Value::as_array).ok_or_else(|| bad("the reply has no `meta`".to_owned()))?;
    let empty = Vec::new();
    let rows = reply.get("data").and_then(Value::as_array).unwrap_or(&empty);
    let mut fields = Vec::with_capacity(meta.len());
    let mut columns: Vec<ArrayRef> = Vec::with_capacity(meta.len());
    for (index, column) in meta.iter().enumerate() {
        let name = column.get("name").and_then(Value::as_str).unwrap_or_default();
        let data_type = arrow_type(column.get("type").and_then(Value::as_str).unwrap_or_default());
        let values = rows.iter().map(|row| row.get(index).unwrap_or(&Value::Null));
        columns.push(column_array(&data_type, values).map_err(|e| bad(format!("column {name}: {e}")))?);
        fields.push(Field::new(name, data_type, true));
    }
    RecordBatch::try_new_with_options(
        Arc::new(Schema::new(fields)),
        columns,
        &datafusion::arrow::record_batch::RecordBatchOptions::new().with_row_count(Some(rows.len())),
    )
}

/// Numbers may come quoted (64-bit integers, depending on settings).
fn number<T: std::str::FromStr>(
    value: &Value,
    from_json: impl Fn(&Value) -> Option<T>,
) -> Result<Option<T>, ArrowError> {
    match value {
        Value::Null => Ok(None),
        Value::String(text) => text.parse().map(Some).map_err(|_| bad(format!("`{text}` is not a number"))),
        other => from_json(other).map(Some).ok_or_else(|| bad(format!("`{other}` is not a number of this type"))),
    }
}

fn column_array<'a>(data_type: &DataType, values: impl Iterator<Item = &'a Value>) -> Result<ArrayRef, ArrowError> {
    Ok(match data_type {
        DataType::Int64 => {
            let mut builder = Int64Builder::new();
            for value in values {
                builder.append_option(number(value, Value::as_i64)?);
            }
            Arc::new(builder.finish())
        }
        DataType::UInt64 => {
            let mut builder = UInt64Builder::new();
            for value in values {
                builder.append_option(number(value, Value::as_u64)?);
            }
            Arc::new(builder.finish())
        }
        DataType::Float64 => {
            let mut builder = Float64Builder::new();
            for value in values {
                builder.append_option(number(value, Value::as_f64)?);
            }
            Arc::new(builder.finish())
        }
        DataType::Date32 => {
            let mut builder = Date32Builder::new();
            for value in values {
                builder.append_option(match value {
                    Value::Null => None,
                    other => Some(
                        other
                            .as_str()
                            .and_then(convoflow_events::parse_date32)
                            .ok_or_else(|| bad(format!("`{other}` is not a date")))?,
                    ),
                });
            }
            Arc::new(builder.finish())
        }
        DataType::Boolean => {
            let mut builder = BooleanBuilder::new();
            for value in values {
                builder.append_option(value.as_bool());
            }
            Arc::new(builder.finish())
        }
        _ => {
            let mut builder = StringBuilder::new();
            for value in values {
                match value {
                    Value::Null => builder.append_null(),
                    Value::String(text) => builder.append_value(text),
                    other => builder.append_value(other.to_string()),
                }
            }
            Arc::new(builder.finish())
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{Array, AsArray};
    use datafusion::arrow::datatypes::{Date32Type, Float64Type, Int64Type, UInt64Type};

    #[test]
    fn json_compact_becomes_typed_columns() {
        let reply = br#"{"meta":[{"name":"n","type":"UInt64"},{"name":"i","type":"Nullable(Int32)"},{"name":"x","type":"Float64"},
            {"name":"d","type":"Date"},{"name":"s","type":"String"},{"name":"a","type":"Array(String)"}],
            "data":[[18446744073709551615,-3,1.5,"2026-01-02","h\u00e9",["a","b"]],["7",null,null,"1970-01-01","",[]]],"rows":2}"#;
        let batch = batch_from_json_compact(reply).expect("converted");
        assert_eq!(batch.num_rows(), 2);
        assert_eq!(batch.column(0).as_primitive::<UInt64Type>().values().to_vec(), vec![u64::MAX, 7]);
        let ints = batch.column(1).as_primitive::<Int64Type>();
        assert_eq!((ints.value(0), ints.is_null(1)), (-3, true));
        assert_eq!(batch.column(2).as_primitive::<Float64Type>().value(0), 1.5);
        assert_eq!(batch.column(3).as_primitive::<Date32Type>().values().to_vec(), vec![20455, 0]);
        assert_eq!(batch.column(4).as_string::<i32>().value(0), "hé");
        assert_eq!(batch.column(5).as_string::<i32>().value(0), r#"["a","b"]"#);
    }

    #[test]
    fn a_reply_without_columns_or_with_wrong_values_is_an_error() {
        assert!(batch_from_json_compact(b"not json").is_err());
        assert!(batch_from_json_compact(br#"{"data":[]}"#).is_err());
        assert!(batch_from_json_compact(br#"{"meta":[{"name":"n","type":"Int64"}],"data":[["x"]]}"#).is_err());
        let empty =
            batch_from_json_compact(br#"{"meta":[{"name":"n","type":"Int64"}],"data":[]}"#).expect("empty result");
        assert_eq!((empty.num_rows(), empty.num_columns()), (0, 1));
    }
}
