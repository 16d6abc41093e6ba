//! Rows ⇄ Arrow record batches. Rows become batches through their `table!` declaration (one
//! generic converter for every table); `events` and `rejected` are also read back, to restore.

use crate::columns::*;
use crate::schema::schema_of;
use convoflow_events::{Event, EventType, MessageType, Sender, SessionState, Status, Text};
use convoflow_operators::{Cells, Collection, Kind, RejectedRow, Table, TableSet, Visit};
use datafusion::arrow::array::{
    ArrayRef, BooleanBuilder, Date32Builder, Float64Builder, Int32Builder, Int64Builder, StringBuilder,
    TimestampMillisecondBuilder,
};
use datafusion::arrow::error::ArrowError;
use datafusion::arrow::record_batch::RecordBatch;
use std::borrow::Borrow;
use std::sync::Arc;

/// Rows per record batch (and so at most per Parquet row group).
const BATCH_ROWS: usize = 256 * 1024;

/// One Arrow builder per column, grouped by kind: a row's cells arrive in column order, so the
/// n-th text cell of a row always goes to the n-th text builder.
#[derive(Default)]
struct ArrowCells {
    text: Vec<StringBuilder>,
    instant: Vec<TimestampMillisecondBuilder>,
    int64: Vec<Int64Builder>,
    int32: Vec<Int32Builder>,
    float64: Vec<Float64Builder>,
    date: Vec<Date32Builder>,
    boolean: Vec<BooleanBuilder>,
    /// The next builder of each kind within the current row.
    next: [usize; 7],
}

fn append<B>(builders: &mut [B], next: &mut usize, append: impl FnOnce(&mut B)) {
    if let Some(builder) = builders.get_mut(*next) {
        append(builder);
    }
    *next += 1;
}

impl Cells for ArrowCells {
    fn text(&mut self, value: Option<&str>) {
        append(&mut self.text, &mut self.next[0], |b| b.append_option(value));
    }
    fn instant(&mut self, value: Option<i64>) {
        append(&mut self.instant, &mut self.next[1], |b| b.append_option(value));
    }
    fn int64(&mut self, value: Option<i64>) {
        append(&mut self.int64, &mut self.next[2], |b| b.append_option(value));
    }
    fn int32(&mut self, value: Option<i32>) {
        append(&mut self.int32, &mut self.next[3], |b| b.append_option(value));
    }
    fn float64(&mut self, value: Option<f64>) {
        append(&mut self.float64, &mut self.next[4], |b| b.append_option(value));
    }
    fn date(&mut self, value: Option<i32>) {
        append(&mut self.date, &mut self.next[5], |b| b.append_option(value));
    }
    fn boolean(&mut self, value: Option<bool>) {
        append(&mut self.boolean, &mut self.next[6], |b| b.append_option(value));
    }
}

/// One record batch of `rows`, by the table's declaration.
fn batch<R: Table, B: Borrow<R>>(rows: &[B]) -> Result<RecordBatch, ArrowError> {
    let n = rows.len();
    let mut cells = ArrowCells::default();
    for column in R::COLUMNS {
        match column.kind {
            Kind::Text => cells.text.push(StringBuilder::with_capacity(n, n * 8)),
            Kind::Instant => cells.instant.push(TimestampMillisecondBuilder::with_capacity(n)),
            Kind::Int64 => cells.int64.push(Int64Builder::with_capacity(n)),
            Kind::Int32 => cells.int32.push(Int32Builder::with_capacity(n)),
            Kind::Float64 => cells.float64.push(Float64Builder::with_capacity(n)),
            Kind::Date => cells.date.push(Date32Builder::with_capacity(n)),
            Kind::Boolean => cells.boolean.push(BooleanBuilder::with_capacity(n)),
        }
    }
    for row in rows {
        row.borrow().cells(&mut cells);
        cells.next = [0; 7];
    }
    let mut text = cells.text.iter_mut();
    let mut instant = cells.instant.iter_mut();
    let mut int64 = cells.int64.iter_mut();
    let mut int32 = cells.int32.iter_mut();
    let mut float64 = cells.float64.iter_mut();
    let mut date = cells.date.iter_mut();
    let mut boolean = cells.boolean.iter_mut();
    let columns = R::COLUMNS
        .iter()
        .map(|column| {
            let array: Option<ArrayRef> = match column.kind {
                Kind::Text => text.next().map(|b| Arc::new(b.finish()) as ArrayRef),
                Kind::Instant => instant.next().map(|b| Arc::new(b.finish().with_timezone("UTC")) as ArrayRef),
                Kind::Int64 => int64.next().map(|b| Arc::new(b.finish()) as ArrayRef),
                Kind::Int32 => int32.next().map(|b| Arc::new(b.finish()) as ArrayRef),
                Kind::Float64 => float64.next().map(|b| Arc::new(b.finish()) as ArrayRef),
                Kind::Date => date.next().map(|b| Arc::new(b.finish()) as ArrayRef),
                Kind::Boolean => boolean.next().map(|b| Arc::new(b.finish()) as ArrayRef),
            };
            array.ok_or_else(|| ArrowError::SchemaError(format!("{}: no builder for `{}`", R::NAME, column.name)))
        })
        .collect::<Result<Vec<_>, _>>()?;
    RecordBatch::try_new(schema_of(R::COLUMNS), columns)
}

/// `rows` as record batches of at most [`BATCH_ROWS`] rows; one empty batch when there are none.
pub fn batches<R: Table, B: Borrow<R>>(rows: &[B]) -> Result<Vec<RecordBatch>, ArrowError> {
    if rows.is_empty() {
        return Ok(vec![batch::<R, B>(rows)?]);
    }
    rows.chunks(BATCH_ROWS).map(batch::<R, B>).collect()
}

/// Which rows of the derived tables become batch rows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rows {
    /// The table's contents: each row repeated by its (positive) multiplicity.
    Contents,
    /// Every update once, whatever the sign of its diff; the diffs are returned beside.
    Updates,
}

/// One table's batches, with the diff of each row (in order, across batches).
pub struct TableBatches {
    pub table: &'static str,
    pub batches: Vec<RecordBatch>,
    pub diffs: Vec<i64>,
}

impl TableBatches {
    /// Rows that are all inserted once (`events`, `rejected`).
    fn inserted<R: Table>(rows: &[impl Borrow<R>]) -> Result<Self, ArrowError> {
        Ok(TableBatches { table: R::NAME, batches: batches::<R, _>(rows)?, diffs: vec![1; rows.len()] })
    }
}

/// Converts each derived table of a `TableSet`.
struct Convert {
    rows: Rows,
    out: Vec<TableBatches>,
    error: Option<ArrowError>,
}

impl Visit for Convert {
    fn visit<R: Table + Ord>(&mut self, collection: &Collection<R>) {
        if self.error.is_some() {
            return;
        }
        let (selected, diffs): (Vec<&R>, Vec<i64>) = match self.rows {
            Rows::Contents => collection.rows().map(|row| (row, 1)).unzip(),
            Rows::Updates => collection.updates.iter().map(|(row, diff)| (row, *diff)).unzip(),
        };
        match batches::<R, _>(&selected) {
            Ok(batches) => self.out.push(TableBatches { table: R::NAME, batches, diffs }),
            Err(error) => self.error = Some(error),
        }
    }
}

/// Every table of `tables` (plus `rejected`) as record batches, named by table, in SPEC order.
pub fn table_batches(tables: &TableSet, rejected: &[RejectedRow], rows: Rows) -> Result<Vec<TableBatches>, ArrowError> {
    let mut convert = Convert {
        rows,
        out: vec![TableBatches::inserted::<Event>(&tables.events)?, TableBatches::inserted::<RejectedRow>(rejected)?],
        error: None,
    };
    tables.visit(&mut convert);
    match convert.error {
        Some(error) => Err(error),
        None => Ok(convert.out),
    }
}

fn missing(column: &str) -> ArrowError {
    ArrowError::SchemaError(format!("stored table lacks column `{column}` of the expected type"))
}

fn invalid(column: &str, value: &str) -> ArrowError {
    ArrowError::InvalidArgumentError(format!("stored column `{column}` holds unknown value `{value}`"))
}

fn parse_opt<T>(column: &str, value: Option<&str>, parse: fn(&str) -> Option<T>) -> Result<Option<T>, ArrowError> {
    value.map(|v| parse(v).ok_or_else(|| invalid(column, v))).transpose()
}

/// Reads stored `events` rows back into events.
pub fn events_from_batch(batch: &RecordBatch) -> Result<Vec<Event>, ArrowError> {
    let c = Columns { batch };
    let s = |name: &'static str| c.text(name).ok_or_else(|| missing(name));
    let (event_id, tenant_id, kind, contact_id, conversation_id) =
        (s("event_id")?, s("tenant_id")?, s("type")?, s("contact_id")?, s("conversation_id")?);
    let (session_id, message_id, sender, agent_id, campaign_id) =
        (s("session_id")?, s("message_id")?, s("sender")?, s("agent_id")?, s("campaign_id")?);
    let (message_type, status, emoji, channel, source) =
        (s("message_type")?, s("status")?, s("emoji")?, s("channel")?, s("source")?);
    let (medium, name, state, properties) = (s("medium")?, s("name")?, s("state")?, s("properties")?);
    let ts = c.instant("ts").ok_or_else(|| missing("ts"))?;
    let error_code = c.int64("error_code").ok_or_else(|| missing("error_code"))?;
    let value = c.float64("value").ok_or_else(|| missing("value"))?;
    let text = |array, row| opt_str(array, row).map(Text::from);
    (0..batch.num_rows())
        .map(|row| {
            let kind_text = kind.value(row);
            Ok(Event {
                tenant_id: tenant_id.value(row).into(),
                event_id: event_id.value(row).into(),
                ts: ts.value(row),
                kind: EventType::parse(kind_text).ok_or_else(|| invalid("type", kind_text))?,
                contact_id: text(contact_id, row),
                conversation_id: text(conversation_id, row),
                session_id: text(session_id, row),
                message_id: text(message_id, row),
                sender: parse_opt("sender", opt_str(sender, row), Sender::parse)?,
                agent_id: text(agent_id, row),
                campaign_id: text(campaign_id, row),
                message_type: parse_opt("message_type", opt_str(message_type, row), MessageType::parse)?
                    .unwrap_or(MessageType::Text),
                status: parse_opt("status", opt_str(status, row), Status::parse)?,
                error_code: opt_i64(error_code, row),
                emoji: text(emoji, row),
                channel: text(channel, row),
                source: text(source, row),
                medium: text(medium, row),
                name: text(name, row),
                value: (!datafusion::arrow::array::Array::is_null(value, row)).then(|| value.value(row)),
                state: parse_opt("state", opt_str(state, row), SessionState::parse)?,
                properties: opt_str(properties, row).map(str::to_owned),
            })
        })
        .collect()
}

/// Reads stored `rejected` rows back.
pub fn rejected_from_batch(batch: &RecordBatch) -> Result<Vec<RejectedRow>, ArrowError> {
    let c = Columns { batch };
    let s = |name: &'static str| c.text(name).ok_or_else(|| missing(name));
    let (tenant_id, reason, raw, source) = (s("tenant_id")?, s("reason")?, s("raw")?, s("source")?);
    let received_at = c.instant("received_at").ok_or_else(|| missing("received_at"))?;
    Ok((0..batch.num_rows())
        .map(|row| RejectedRow {
            tenant_id: tenant_id.value(row).into(),
            received_at: received_at.value(row),
            reason: reason.value(row).to_owned(),
            raw: raw.value(row).to_owned(),
            source: source.value(row).to_owned(),
        })
        .collect())
}
