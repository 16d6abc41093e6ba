//! Rows ⇄ Arrow record batches, column order as in `schema.rs`.

use crate::columns::*;
use crate::schema::schema;
use convoflow_events::{Event, EventType, MessageType, Sender, SessionState, Status};
use convoflow_operators::{Collection, RejectedRow, TableSet};
use datafusion::arrow::array::{ArrayRef, Float64Builder, Int64Builder, StringBuilder, TimestampMillisecondBuilder};
use std::sync::Arc;
use datafusion::arrow::error::ArrowError;
use datafusion::arrow::record_batch::RecordBatch;

/// Rows per record batch (and so at most per Parquet row group).
const BATCH_ROWS: usize = 256 * 1024;

fn batch(table: &str, columns: Vec<ArrayRef>) -> Result<RecordBatch, ArrowError> {
    let schema = schema(table).ok_or_else(|| ArrowError::SchemaError(format!("no table {table}")))?;
    RecordBatch::try_new(schema, columns)
}

fn chunked<R>(table: &str, rows: &[R], build: impl Fn(&[R]) -> Vec<ArrayRef>) -> Result<Vec<RecordBatch>, ArrowError> {
    if rows.is_empty() {
        return Ok(vec![batch(table, build(rows))?]);
    }
    rows.chunks(BATCH_ROWS).map(|chunk| batch(table, build(chunk))).collect()
}

/// The columns of `events`, built in one pass: the events are boxed, so a pass per column would
/// chase every pointer 22 times.
fn event_columns(events: &[Box<Event>]) -> Vec<ArrayRef> {
    const TEXT_COLUMNS: usize = 19;
    let mut text: Vec<StringBuilder> = (0..TEXT_COLUMNS).map(|_| StringBuilder::with_capacity(events.len(), events.len() * 8)).collect();
    let mut ts = TimestampMillisecondBuilder::with_capacity(events.len());
    let mut error_code = Int64Builder::with_capacity(events.len());
    let mut value = Float64Builder::with_capacity(events.len());
    for e in events {
        let texts: [Option<&str>; TEXT_COLUMNS] = [
            Some(&e.event_id),
            Some(&e.tenant_id),
            Some(e.kind.as_str()),
            e.contact_id.as_deref(),
            e.conversation_id.as_deref(),
            e.session_id.as_deref(),
            e.message_id.as_deref(),
            e.sender.map(Sender::as_str),
            e.agent_id.as_deref(),
            e.campaign_id.as_deref(),
            Some(e.message_type.as_str()),
            e.status.map(Status::as_str),
            e.emoji.as_deref(),
            e.channel.as_deref(),
            e.source.as_deref(),
            e.medium.as_deref(),
            e.name.as_deref(),
            e.state.map(SessionState::as_str),
            e.properties.as_deref(),
        ];
        for (builder, text) in text.iter_mut().zip(texts) {
            builder.append_option(text);
        }
        ts.append_value(e.ts);
        error_code.append_option(e.error_code);
        value.append_option(e.value);
    }
    let mut text: Vec<ArrayRef> = text.iter_mut().map(|builder| Arc::new(builder.finish()) as ArrayRef).collect();
    let mut columns: Vec<ArrayRef> = text.drain(..3).collect(); // event_id, tenant_id, type
    columns.insert(2, Arc::new(ts.finish().with_timezone("UTC")));
    columns.extend(text.drain(..9)); // contact_id … status
    columns.push(Arc::new(error_code.finish()));
    columns.extend(text.drain(..5)); // emoji … name
    columns.push(Arc::new(value.finish()));
    columns.extend(text.drain(..)); // state, properties
    columns
}

fn rejected_columns(rows: &[RejectedRow]) -> Vec<ArrayRef> {
    vec![
        text(rows.iter().map(|r| Some(r.tenant_id.as_str()))),
        instants(rows.iter().map(|r| Some(r.received_at))),
        text(rows.iter().map(|r| Some(r.reason.as_str()))),
        text(rows.iter().map(|r| Some(r.raw.as_str()))),
        text(rows.iter().map(|r| Some(r.source.as_str()))),
    ]
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

fn select<R: Ord>(collection: &Collection<R>, rows: Rows) -> (Vec<&R>, Vec<i64>) {
    match rows {
        Rows::Contents => {
            let selected: Vec<&R> = collection.rows().collect();
            let diffs = vec![1; selected.len()];
            (selected, diffs)
        }
        Rows::Updates => collection.updates.iter().map(|(row, diff)| (row, *diff)).unzip(),
    }
}

/// Every table of `tables` (plus `rejected`) as record batches, named by table.
pub fn table_batches(tables: &TableSet, rejected: &[RejectedRow], rows: Rows) -> Result<Vec<TableBatches>, ArrowError> {
    let (responses, responses_diffs) = select(&tables.responses, rows);
    let (cycles, cycles_diffs) = select(&tables.conversation_cycles, rows);
    let (volume, volume_diffs) = select(&tables.message_volume, rows);
    let (contacts, contacts_diffs) = select(&tables.contacts, rows);
    let (retention, retention_diffs) = select(&tables.retention, rows);
    let (funnels, funnels_diffs) = select(&tables.funnel_progress, rows);
    let (attribution, attribution_diffs) = select(&tables.attribution, rows);
    let (statuses, statuses_diffs) = select(&tables.message_status, rows);
    let (reactions, reactions_diffs) = select(&tables.reactions, rows);
    let (health, health_diffs) = select(&tables.session_health, rows);
    let diffs = [
        vec![1; tables.events.len()],
        vec![1; rejected.len()],
        responses_diffs,
        cycles_diffs,
        volume_diffs,
        contacts_diffs,
        retention_diffs,
        funnels_diffs,
        attribution_diffs,
        statuses_diffs,
        reactions_diffs,
        health_diffs,
    ];
    let named = vec![
        ("events", chunked("events", &tables.events, event_columns)?),
        ("rejected", chunked("rejected", rejected, rejected_columns)?),
        ("responses", chunked("responses", &responses, |rows| vec![
            text(rows.iter().map(|r| Some(r.tenant_id.as_str()))),
            text(rows.iter().map(|r| Some(r.conversation_id.as_str()))),
            text(rows.iter().map(|r| Some(r.contact_id.as_str()))),
            text(rows.iter().map(|r| Some(r.start_event_id.as_str()))),
            instants(rows.iter().map(|r| Some(r.start_ts))),
            text(rows.iter().map(|r| Some(r.reply_event_id.as_str()))),
            instants(rows.iter().map(|r| Some(r.reply_ts))),
            int64s(rows.iter().map(|r| Some(r.response_ms))),
            text(rows.iter().map(|r| Some(r.responder.as_str()))),
            text(rows.iter().map(|r| r.agent_id.as_deref())),
        ])?),
        ("conversation_cycles", chunked("conversation_cycles", &cycles, |rows| vec![
            text(rows.iter().map(|r| Some(r.tenant_id.as_str()))),
            text(rows.iter().map(|r| Some(r.conversation_id.as_str()))),
            text(rows.iter().map(|r| Some(r.contact_id.as_str()))),
            text(rows.iter().map(|r| Some(r.cycle_id.as_str()))),
            instants(rows.iter().map(|r| Some(r.start_ts))),
            instants(rows.iter().map(|r| r.first_inbound_ts)),
            instants(rows.iter().map(|r| r.first_response_ts)),
            int64s(rows.iter().map(|r| r.first_response_ms)),
            text(rows.iter().map(|r| r.first_response_agent_id.as_deref())),
            instants(rows.iter().map(|r| r.resolved_ts)),
            int64s(rows.iter().map(|r| r.resolution_ms)),
            text(rows.iter().map(|r| r.resolved_by.as_deref())),
            text(rows.iter().map(|r| r.assignee.as_deref())),
            int64s(rows.iter().map(|r| Some(r.inbound_count))),
            int64s(rows.iter().map(|r| Some(r.outbound_count))),
        ])?),
        ("message_volume", chunked("message_volume", &volume, |rows| vec![
            text(rows.iter().map(|r| Some(r.key.tenant_id.as_str()))),
            instants(rows.iter().map(|r| Some(r.key.hour_start))),
            dates(rows.iter().map(|r| Some(r.key.local_date))),
            int32s(rows.iter().map(|r| Some(r.key.local_hour as i32))),
            text(rows.iter().map(|r| Some(r.key.direction.as_str()))),
            text(rows.iter().map(|r| Some(r.key.sender.as_str()))),
            text(rows.iter().map(|r| Some(r.key.message_type.as_str()))),
            int64s(rows.iter().map(|r| Some(r.messages))),
        ])?),
        ("contacts", chunked("contacts", &contacts, |rows| vec![
            text(rows.iter().map(|r| Some(r.tenant_id.as_str()))),
            text(rows.iter().map(|r| Some(r.contact_id.as_str()))),
            instants(rows.iter().map(|r| Some(r.first_seen_ts))),
            instants(rows.iter().map(|r| r.first_inbound_ts)),
            instants(rows.iter().map(|r| r.last_inbound_ts)),
            int64s(rows.iter().map(|r| Some(r.inbound_messages))),
            dates(rows.iter().map(|r| r.cohort_week)),
        ])?),
        ("retention", chunked("retention", &retention, |rows| vec![
            text(rows.iter().map(|r| Some(r.tenant_id.as_str()))),
            dates(rows.iter().map(|r| Some(r.cohort_week))),
            int32s(rows.iter().map(|r| Some(r.week_offset))),
            int64s(rows.iter().map(|r| Some(r.cohort_size))),
            int64s(rows.iter().map(|r| Some(r.retained))),
        ])?),
        ("funnel_progress", chunked("funnel_progress", &funnels, |rows| vec![
            text(rows.iter().map(|r| Some(r.tenant_id.as_str()))),
            text(rows.iter().map(|r| Some(r.funnel_id.as_str()))),
            text(rows.iter().map(|r| Some(r.contact_id.as_str()))),
            dates(rows.iter().map(|r| Some(r.entry_date))),
            int32s(rows.iter().map(|r| Some(r.furthest_step))),
            instants(rows.iter().map(|r| Some(r.entry_ts))),
            instants(rows.iter().map(|r| Some(r.completed_ts))),
        ])?),
        ("attribution", chunked("attribution", &attribution, |rows| vec![
            text(rows.iter().map(|r| Some(r.tenant_id.as_str()))),
            text(rows.iter().map(|r| Some(r.model.as_str()))),
            text(rows.iter().map(|r| Some(r.conversion_event_id.as_str()))),
            instants(rows.iter().map(|r| Some(r.conversion_ts))),
            text(rows.iter().map(|r| Some(r.conversion_name.as_str()))),
            float64s(rows.iter().map(|r| Some(r.conversion_value.0))),
            text(rows.iter().map(|r| Some(r.contact_id.as_str()))),
            text(rows.iter().map(|r| r.touch_event_id.as_deref())),
            instants(rows.iter().map(|r| r.touch_ts)),
            text(rows.iter().map(|r| Some(r.channel.as_str()))),
            text(rows.iter().map(|r| r.campaign_id.as_deref())),
            text(rows.iter().map(|r| r.source.as_deref())),
            float64s(rows.iter().map(|r| Some(r.weight.0))),
            float64s(rows.iter().map(|r| Some(r.credited_value.0))),
        ])?),
        ("message_status", chunked("message_status", &statuses, |rows| vec![
            text(rows.iter().map(|r| Some(r.tenant_id.as_str()))),
            text(rows.iter().map(|r| Some(r.message_id.as_str()))),
            text(rows.iter().map(|r| Some(r.contact_id.as_str()))),
            text(rows.iter().map(|r| r.session_id.as_deref())),
            text(rows.iter().map(|r| r.sender.map(Sender::as_str))),
            text(rows.iter().map(|r| r.agent_id.as_deref())),
            text(rows.iter().map(|r| r.campaign_id.as_deref())),
            instants(rows.iter().map(|r| r.sent_ts)),
            instants(rows.iter().map(|r| r.delivered_ts)),
            instants(rows.iter().map(|r| r.read_ts)),
            instants(rows.iter().map(|r| r.failed_ts)),
            int64s(rows.iter().map(|r| r.error_code)),
            text(rows.iter().map(|r| Some(r.final_status.as_str()))),
            booleans(rows.iter().map(|r| Some(r.replied))),
        ])?),
        ("reactions", chunked("reactions", &reactions, |rows| vec![
            text(rows.iter().map(|r| Some(r.tenant_id.as_str()))),
            text(rows.iter().map(|r| Some(r.message_id.as_str()))),
            text(rows.iter().map(|r| Some(r.contact_id.as_str()))),
            text(rows.iter().map(|r| Some(r.emoji.as_str()))),
            text(rows.iter().map(|r| Some(r.sentiment.as_str()))),
            instants(rows.iter().map(|r| Some(r.ts))),
            text(rows.iter().map(|r| r.sender.map(Sender::as_str))),
            text(rows.iter().map(|r| r.agent_id.as_deref())),
            text(rows.iter().map(|r| r.campaign_id.as_deref())),
        ])?),
        ("session_health", chunked("session_health", &health, |rows| vec![
            text(rows.iter().map(|r| Some(r.tenant_id.as_str()))),
            text(rows.iter().map(|r| Some(r.session_id.as_str()))),
            instants(rows.iter().map(|r| Some(r.hour_start))),
            float64s(rows.iter().map(|r| Some(r.uptime.0))),
            int64s(rows.iter().map(|r| Some(r.sent))),
            int64s(rows.iter().map(|r| Some(r.failed))),
            int32s(rows.iter().map(|r| Some(r.health_score))),
        ])?),
    ];
    Ok(named
        .into_iter()
        .zip(diffs)
        .map(|((table, batches), diffs)| TableBatches { table, batches, diffs })
        .collect())
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
    let owned = |array, row| opt_str(array, row).map(str::to_owned);
    (0..batch.num_rows())
        .map(|row| {
            let kind_text = kind.value(row);
            Ok(Event {
                tenant_id: tenant_id.value(row).to_owned(),
                event_id: event_id.value(row).to_owned(),
                ts: ts.value(row),
                kind: EventType::parse(kind_text).ok_or_else(|| invalid("type", kind_text))?,
                contact_id: owned(contact_id, row),
                conversation_id: owned(conversation_id, row),
                session_id: owned(session_id, row),
                message_id: owned(message_id, row),
                sender: parse_opt("sender", opt_str(sender, row), Sender::parse)?,
                agent_id: owned(agent_id, row),
                campaign_id: owned(campaign_id, row),
                message_type: parse_opt("message_type", opt_str(message_type, row), MessageType::parse)?
                    .unwrap_or(MessageType::Text),
                status: parse_opt("status", opt_str(status, row), Status::parse)?,
                error_code: opt_i64(error_code, row),
                emoji: owned(emoji, row),
                channel: owned(channel, row),
                source: owned(source, row),
                medium: owned(medium, row),
                name: owned(name, row),
                value: (!datafusion::arrow::array::Array::is_null(value, row)).then(|| value.value(row)),
                state: parse_opt("state", opt_str(state, row), SessionState::parse)?,
                properties: owned(properties, row),
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
            tenant_id: tenant_id.value(row).to_owned(),
            received_at: received_at.value(row),
            reason: reason.value(row).to_owned(),
            raw: raw.value(row).to_owned(),
            source: source.value(row).to_owned(),
        })
        .collect())
}
