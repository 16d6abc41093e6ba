//! ClickHouse `RowBinary` ⇄ Arrow, driven by the table's Arrow schema, so the Parquet store and
//! ClickHouse share one definition of every column.
//!
//! Mapping: `Utf8` ⇄ `String`, `Int64`/`Int32`/`Float64` ⇄ the same widths, `Timestamp(ms)` ⇄
//! `UInt64` ms (`DateTime64(3)` is the same 8 little-endian bytes for instants after 1970),
//! `Date32` ⇄ `Date` (UInt16 days since 1970), `Boolean` ⇄ `UInt8` (0/1; 18.16 has no `Bool`).
//! Nullable columns carry a leading null byte.

use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, BooleanBuilder, Date32Builder, Float64Builder, Int32Builder, Int64Builder, StringBuilder,
    TimestampMillisecondBuilder,
};
use datafusion::arrow::datatypes::{
    DataType, Date32Type, Float64Type, Int32Type, Int64Type, SchemaRef, TimestampMillisecondType,
};
use datafusion::arrow::error::ArrowError;
use datafusion::arrow::record_batch::RecordBatch;
use std::sync::Arc;

fn unsupported(data_type: &DataType) -> ArrowError {
    ArrowError::NotYetImplemented(format!("no ClickHouse mapping for Arrow type {data_type}"))
}

pub(crate) fn put_len(out: &mut Vec<u8>, mut len: usize) {
    loop {
        let byte = (len & 0x7f) as u8;
        len >>= 7;
        if len == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

/// A `String` value: its length, then its bytes.
pub(crate) fn put_string(out: &mut Vec<u8>, text: &str) {
    put_len(out, text.len());
    out.extend_from_slice(text.as_bytes());
}

/// Appends the rows of `batch` to `out`. With `bookkeeping = Some((diffs, epoch))` each row is
/// followed by `diffs[row]` as Int8 and `epoch` as UInt64, the columns every log table ends with.
pub fn encode(batch: &RecordBatch, bookkeeping: Option<(&[i64], u64)>, out: &mut Vec<u8>) -> Result<(), ArrowError> {
    let schema = batch.schema();
    for row in 0..batch.num_rows() {
        for (field, column) in schema.fields().iter().zip(batch.columns()) {
            if field.is_nullable() {
                let null = column.is_null(row);
                out.push(null as u8);
                if null {
                    continue;
                }
            }
            match field.data_type() {
                DataType::Utf8 => {
                    let value = column.as_string::<i32>().value(row);
                    put_len(out, value.len());
                    out.extend_from_slice(value.as_bytes());
                }
                DataType::Int64 => out.extend_from_slice(&column.as_primitive::<Int64Type>().value(row).to_le_bytes()),
                DataType::Int32 => out.extend_from_slice(&column.as_primitive::<Int32Type>().value(row).to_le_bytes()),
                DataType::Float64 => {
                    out.extend_from_slice(&column.as_primitive::<Float64Type>().value(row).to_le_bytes())
                }
                DataType::Timestamp(_, _) => {
                    let ms = column.as_primitive::<TimestampMillisecondType>().value(row);
                    out.extend_from_slice(&(ms.max(0) as u64).to_le_bytes());
                }
                DataType::Date32 => {
                    let days = column.as_primitive::<Date32Type>().value(row);
                    out.extend_from_slice(&(days.clamp(0, u16::MAX as i32) as u16).to_le_bytes());
                }
                DataType::Boolean => out.push(column.as_boolean().value(row) as u8),
                other => return Err(unsupported(other)),
            }
        }
        if let Some((diffs, epoch)) = bookkeeping {
            let diff = diffs.get(row).copied().unwrap_or(1);
            out.push(diff.clamp(i8::MIN as i64, i8::MAX as i64) as i8 as u8);
            out.extend_from_slice(&epoch.to_le_bytes());
        }
    }
    Ok(())
}

/// Reads `RowBinary` rows of exactly the schema's columns (no bookkeeping columns).
struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], ArrowError> {
        let end = self.at.checked_add(n).filter(|end| *end <= self.bytes.len());
        let end = end.ok_or_else(|| ArrowError::ParseError("RowBinary reply ends inside a row".into()))?;
        let slice = &self.bytes[self.at..end];
        self.at = end;
        Ok(slice)
    }

    fn fixed<const N: usize>(&mut self) -> Result<[u8; N], ArrowError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    fn len(&mut self) -> Result<usize, ArrowError> {
        let mut len = 0usize;
        for shift in (0..64).step_by(7) {
            let [byte] = self.fixed::<1>()?;
            len |= ((byte & 0x7f) as usize) << shift;
            if byte & 0x80 == 0 {
                return Ok(len);
            }
        }
        Err(ArrowError::ParseError("RowBinary length is too long".into()))
    }
}

enum Builder {
    Text(StringBuilder),
    Int64(Int64Builder),
    Int32(Int32Builder),
    Float64(Float64Builder),
    Instant(TimestampMillisecondBuilder),
    Date(Date32Builder),
    Boolean(BooleanBuilder),
}

impl Builder {
    fn new(data_type: &DataType) -> Result<Self, ArrowError> {
        Ok(match data_type {
            DataType::Utf8 => Builder::Text(StringBuilder::new()),
            DataType::Int64 => Builder::Int64(Int64Builder::new()),
            DataType::Int32 => Builder::Int32(Int32Builder::new()),
            DataType::Float64 => Builder::Float64(Float64Builder::new()),
            DataType::Timestamp(_, _) => Builder::Instant(TimestampMillisecondBuilder::new()),
            DataType::Date32 => Builder::Date(Date32Builder::new()),
            DataType::Boolean => Builder::Boolean(BooleanBuilder::new()),
            other => return Err(unsupported(other)),
        })
    }

    fn append_null(&mut self) {
        match self {
            Builder::Text(b) => b.append_null(),
            Builder::Int64(b) => b.append_null(),
            Builder::Int32(b) => b.append_null(),
            Builder::Float64(b) => b.append_null(),
            Builder::Instant(b) => b.append_null(),
            Builder::Date(b) => b.append_null(),
            Builder::Boolean(b) => b.append_null(),
        }
    }

    fn append(&mut self, reader: &mut Reader) -> Result<(), ArrowError> {
        match self {
            Builder::Text(b) => {
                let len = reader.len()?;
                let text = std::str::from_utf8(reader.take(len)?)
                    .map_err(|error| ArrowError::ParseError(format!("String column is not UTF-8: {error}")))?;
                b.append_value(text);
            }
            Builder::Int64(b) => b.append_value(i64::from_le_bytes(reader.fixed()?)),
            Builder::Int32(b) => b.append_value(i32::from_le_bytes(reader.fixed()?)),
            Builder::Float64(b) => b.append_value(f64::from_le_bytes(reader.fixed()?)),
            Builder::Instant(b) => b.append_value(u64::from_le_bytes(reader.fixed()?) as i64),
            Builder::Date(b) => b.append_value(u16::from_le_bytes(reader.fixed()?) as i32),
            Builder::Boolean(b) => b.append_value(reader.fixed::<1>()?[0] != 0),
        }
        Ok(())
    }

    fn finish(self) -> ArrayRef {
        match self {
            Builder::Text(mut b) => Arc::new(b.finish()),
            Builder::Int64(mut b) => Arc::new(b.finish()),
            Builder::Int32(mut b) => Arc::new(b.finish()),
            Builder::Float64(mut b) => Arc::new(b.finish()),
            Builder::Instant(mut b) => Arc::new(b.finish().with_timezone("UTC")),
            Builder::Date(mut b) => Arc::new(b.finish()),
            Builder::Boolean(mut b) => Arc::new(b.finish()),
        }
    }
}

/// Rows per decoded batch: keeps every string column far below Arrow's 2 GiB offset limit.
const DECODE_BATCH_ROWS: usize = 64 * 1024;

/// Decodes a `RowBinary` reply whose columns are exactly `schema`'s, in order, into batches.
pub fn decode(schema: SchemaRef, bytes: &[u8]) -> Result<Vec<RecordBatch>, ArrowError> {
    let new_builders =
        || schema.fields().iter().map(|field| Builder::new(field.data_type())).collect::<Result<Vec<_>, _>>();
    let finish = |builders: Vec<Builder>| {
        RecordBatch::try_new(schema.clone(), builders.into_iter().map(Builder::finish).collect())
    };
    let mut batches = Vec::new();
    let mut builders = new_builders()?;
    let mut rows = 0;
    let mut reader = Reader { bytes, at: 0 };
    while reader.at < bytes.len() {
        for (field, builder) in schema.fields().iter().zip(builders.iter_mut()) {
            if field.is_nullable() && reader.fixed::<1>()?[0] == 1 {
                builder.append_null();
            } else {
                builder.append(&mut reader)?;
            }
        }
        rows += 1;
        if rows == DECODE_BATCH_ROWS {
            batches.push(finish(std::mem::replace(&mut builders, new_builders()?))?);
            rows = 0;
        }
    }
    if rows > 0 || batches.is_empty() {
        batches.push(finish(builders)?);
    }
    Ok(batches)
}

#[cfg(test)]
mod tests {
    use super::*;
    use convoflow_operators::ContactRow;
    use convoflow_schema::schema;
    use datafusion::arrow::array::{BooleanArray, Float64Array};

    #[test]
    fn a_table_survives_encode_then_decode() {
        let schema = schema("contacts").expect("table");
        let contact = |tenant: &str, id: &str, first: i64, inbound: Option<i64>, week: Option<i32>| ContactRow {
            tenant_id: tenant.into(),
            contact_id: id.into(),
            first_seen_ts: first,
            first_inbound_ts: inbound,
            last_inbound_ts: inbound,
            inbound_messages: 3,
            cohort_week: week,
        };
        let rows = [
            contact("t", "c1", 1_700_000_000_000, None, None),
            contact("ü-tenant", &"x".repeat(300), 5, Some(6), Some(20_000)),
        ];
        let batch = convoflow_schema::batches::<ContactRow, _>(&rows).expect("batch").remove(0);
        let mut bytes = Vec::new();
        encode(&batch, None, &mut bytes).expect("encode");
        assert_eq!(decode(schema.clone(), &bytes).expect("decode"), vec![batch.clone()]);

        // The log tables' bookkeeping columns follow each row: diff as Int8, epoch as UInt64.
        let mut logged = Vec::new();
        encode(&batch, Some((&[1, -1], 42)), &mut logged).expect("encode");
        assert_eq!(logged.len(), bytes.len() + 2 * 9);
        assert_eq!(&logged[logged.len() - 9..], &[0xff, 42, 0, 0, 0, 0, 0, 0, 0]);
    }

    #[test]
    fn booleans_and_floats_survive_encode_then_decode() {
        use datafusion::arrow::datatypes::{Field, Schema};
        let schema = Arc::new(Schema::new(vec![
            Field::new("replied", DataType::Boolean, false),
            Field::new("weight", DataType::Float64, false),
        ]));
        let columns: Vec<ArrayRef> =
            vec![Arc::new(BooleanArray::from(vec![true, false])), Arc::new(Float64Array::from(vec![1.0 / 3.0, 0.0]))];
        let batch = RecordBatch::try_new(schema.clone(), columns).expect("batch");
        let mut bytes = Vec::new();
        encode(&batch, None, &mut bytes).expect("encode");
        assert_eq!(bytes.len(), 2 * (1 + 8));
        assert_eq!(decode(schema, &bytes).expect("decode"), vec![batch]);
    }
}
