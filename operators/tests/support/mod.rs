//! Test support: running the dataflow over events and rendering rows as JSON with SPEC column
//! names, RFC 3339 instants and ISO dates, so expected rows can be written by hand.
#![allow(dead_code)]

use chrono::{TimeZone, Utc};
use convoflow_events::{date32_to_string, parse_event, Event, Tenants};
use convoflow_operators::{run, RunOutput, SourceBatch, TableSet};
use serde_json::{json, Value};
use std::sync::Arc;

pub fn ts(ms: i64) -> Value {
    Utc.timestamp_millis_opt(ms).single().map(|t| t.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string()).into()
}

fn opt_ts(ms: Option<i64>) -> Value {
    ms.map_or(Value::Null, ts)
}

/// Floats rounded to 9 decimals, so hand-worked weights like 1/3 can be written down.
fn real(value: f64) -> Value {
    let rounded = (value * 1e9).round() / 1e9;
    serde_json::Number::from_f64(rounded).map_or(Value::Null, Value::Number)
}

fn date(days: Option<i32>) -> Value {
    days.map_or(Value::Null, |d| date32_to_string(d).into())
}

/// The rows of one table, rendered and sorted.
pub fn table_rows(tables: &TableSet, table: &str) -> Vec<Value> {
    let mut rows: Vec<Value> = match table {
        "events" => tables.events.iter().map(|e| serde_json::from_str(&e.to_json()).unwrap()).collect(),
        "responses" => tables.responses.rows().map(|r| json!({
            "tenant_id": r.tenant_id, "conversation_id": r.conversation_id, "contact_id": r.contact_id,
            "start_event_id": r.start_event_id, "start_ts": ts(r.start_ts),
            "reply_event_id": r.reply_event_id, "reply_ts": ts(r.reply_ts), "response_ms": r.response_ms,
            "responder": r.responder.as_str(), "agent_id": r.agent_id,
        })).collect(),
        "conversation_cycles" => tables.conversation_cycles.rows().map(|r| json!({
            "tenant_id": r.tenant_id, "conversation_id": r.conversation_id, "contact_id": r.contact_id,
            "cycle_id": r.cycle_id, "start_ts": ts(r.start_ts), "first_inbound_ts": opt_ts(r.first_inbound_ts),
            "first_response_ts": opt_ts(r.first_response_ts), "first_response_ms": r.first_response_ms,
            "first_response_agent_id": r.first_response_agent_id, "resolved_ts": opt_ts(r.resolved_ts),
            "resolution_ms": r.resolution_ms, "resolved_by": r.resolved_by, "assignee": r.assignee,
            "inbound_count": r.inbound_count, "outbound_count": r.outbound_count,
        })).collect(),
        "message_volume" => tables.message_volume.rows().map(|r| json!({
            "tenant_id": r.key.tenant_id, "hour_start": ts(r.key.hour_start), "local_date": date(Some(r.key.local_date)),
            "local_hour": r.key.local_hour, "direction": r.key.direction.as_str(), "sender": r.key.sender.as_str(),
            "message_type": r.key.message_type.as_str(), "messages": r.messages,
        })).collect(),
        "contacts" => tables.contacts.rows().map(|r| json!({
            "tenant_id": r.tenant_id, "contact_id": r.contact_id, "first_seen_ts": ts(r.first_seen_ts),
            "first_inbound_ts": opt_ts(r.first_inbound_ts), "last_inbound_ts": opt_ts(r.last_inbound_ts),
            "inbound_messages": r.inbound_messages, "cohort_week": date(r.cohort_week),
        })).collect(),
        "retention" => tables.retention.rows().map(|r| json!({
            "tenant_id": r.tenant_id, "cohort_week": date(Some(r.cohort_week)), "week_offset": r.week_offset,
            "cohort_size": r.cohort_size, "retained": r.retained,
        })).collect(),
        "funnel_progress" => tables.funnel_progress.rows().map(|r| json!({
            "tenant_id": r.tenant_id, "funnel_id": r.funnel_id, "contact_id": r.contact_id,
            "entry_date": date(Some(r.entry_date)), "furthest_step": r.furthest_step,
            "entry_ts": ts(r.entry_ts), "completed_ts": ts(r.completed_ts),
        })).collect(),
        "attribution" => tables.attribution.rows().map(|r| json!({
            "tenant_id": r.tenant_id, "model": r.model.as_str(), "conversion_event_id": r.conversion_event_id,
            "conversion_ts": ts(r.conversion_ts), "conversion_name": r.conversion_name,
            "conversion_value": real(r.conversion_value.0), "contact_id": r.contact_id,
            "touch_event_id": r.touch_event_id, "touch_ts": opt_ts(r.touch_ts), "channel": r.channel,
            "campaign_id": r.campaign_id, "source": r.source, "weight": real(r.weight.0),
            "credited_value": real(r.credited_value.0),
        })).collect(),
        "message_status" => tables.message_status.rows().map(|r| json!({
            "tenant_id": r.tenant_id, "message_id": r.message_id, "contact_id": r.contact_id,
            "session_id": r.session_id, "sender": r.sender.map(|s| s.as_str()), "agent_id": r.agent_id,
            "campaign_id": r.campaign_id, "sent_ts": opt_ts(r.sent_ts), "delivered_ts": opt_ts(r.delivered_ts),
            "read_ts": opt_ts(r.read_ts), "failed_ts": opt_ts(r.failed_ts), "error_code": r.error_code,
            "final_status": r.final_status.as_str(), "replied": r.replied,
        })).collect(),
        "reactions" => tables.reactions.rows().map(|r| json!({
            "tenant_id": r.tenant_id, "message_id": r.message_id, "contact_id": r.contact_id, "emoji": r.emoji,
            "sentiment": r.sentiment.as_str(), "ts": ts(r.ts), "sender": r.sender.map(|s| s.as_str()),
            "agent_id": r.agent_id, "campaign_id": r.campaign_id,
        })).collect(),
        "session_health" => tables.session_health.rows().map(|r| json!({
            "tenant_id": r.tenant_id, "session_id": r.session_id, "hour_start": ts(r.hour_start),
            "uptime": real(r.uptime.0), "sent": r.sent, "failed": r.failed, "health_score": r.health_score,
        })).collect(),
        other => panic!("unknown table {other}"),
    };
    rows.sort_by_key(|row| row.to_string());
    rows
}

pub const TABLES: &[&str] = &[
    "events",
    "responses",
    "conversation_cycles",
    "message_volume",
    "contacts",
    "retention",
    "funnel_progress",
    "attribution",
    "message_status",
    "reactions",
    "session_health",
];

pub fn parse_all(ndjson: &str) -> Vec<Event> {
    ndjson
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| parse_event(l.as_bytes()).unwrap_or_else(|e| panic!("bad golden input {l}: {e}")))
        .collect()
}

/// Runs the dataflow; worker w gets batches[i] for every i with i % workers == w.
pub fn run_batches(batches: Vec<Vec<Event>>, tenants: Tenants, workers: usize) -> RunOutput {
    // Positions follow arrival order, as a file's line numbers would.
    let mut position = 0u64;
    let batches: Vec<Vec<(u64, Box<Event>)>> = batches
        .into_iter()
        .map(|batch| batch.into_iter().map(|event| { position += 1; (position, Box::new(event)) }).collect())
        .collect();
    let batches = Arc::new(batches);
    run(workers, Arc::new(tenants), 0, move |index, peers| {
        let batches = batches.clone();
        (0..batches.len())
            .filter(move |i| i % peers == index)
            .map(move |i| SourceBatch { events: batches[i].clone(), rejected: Vec::new(), lines: 0 })
            .collect::<Vec<_>>()
            .into_iter()
    })
    .expect("dataflow runs")
}
