//! Arrow schemas of the SPEC §5 tables, in one place for the writer and the SQL reader.

use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use std::sync::Arc;

/// Every table of the embedded store, in SPEC order.
pub const TABLES: &[&str] = &[
    "events",
    "rejected",
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

fn instant() -> DataType {
    DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into()))
}

fn columns(table: &str) -> Vec<(&'static str, DataType, bool)> {
    use DataType::{Boolean, Date32, Float64, Int32, Int64, Utf8};
    let text = |name, nullable| (name, Utf8, nullable);
    match table {
        "events" => vec![
            text("event_id", false),
            text("tenant_id", false),
            ("ts", instant(), false),
            text("type", false),
            text("contact_id", true),
            text("conversation_id", true),
            text("session_id", true),
            text("message_id", true),
            text("sender", true),
            text("agent_id", true),
            text("campaign_id", true),
            text("message_type", false),
            text("status", true),
            ("error_code", Int64, true),
            text("emoji", true),
            text("channel", true),
            text("source", true),
            text("medium", true),
            text("name", true),
            ("value", Float64, true),
            text("state", true),
            text("properties", true),
        ],
        "rejected" => vec![
            text("tenant_id", false),
            ("received_at", instant(), false),
            text("reason", false),
            text("raw", false),
            text("source", false),
        ],
        "responses" => vec![
            text("tenant_id", false),
            text("conversation_id", false),
            text("contact_id", false),
            text("start_event_id", false),
            ("start_ts", instant(), false),
            text("reply_event_id", false),
            ("reply_ts", instant(), false),
            ("response_ms", Int64, false),
            text("responder", false),
            text("agent_id", true),
        ],
        "conversation_cycles" => vec![
            text("tenant_id", false),
            text("conversation_id", false),
            text("contact_id", false),
            text("cycle_id", false),
            ("start_ts", instant(), false),
            ("first_inbound_ts", instant(), true),
            ("first_response_ts", instant(), true),
            ("first_response_ms", Int64, true),
            text("first_response_agent_id", true),
            ("resolved_ts", instant(), true),
            ("resolution_ms", Int64, true),
            text("resolved_by", true),
            text("assignee", true),
            ("inbound_count", Int64, false),
            ("outbound_count", Int64, false),
        ],
        "message_volume" => vec![
            text("tenant_id", false),
            ("hour_start", instant(), false),
            ("local_date", Date32, false),
            ("local_hour", Int32, false),
            text("direction", false),
            text("sender", false),
            text("message_type", false),
            ("messages", Int64, false),
        ],
        "contacts" => vec![
            text("tenant_id", false),
            text("contact_id", false),
            ("first_seen_ts", instant(), false),
            ("first_inbound_ts", instant(), true),
            ("last_inbound_ts", instant(), true),
            ("inbound_messages", Int64, false),
            ("cohort_week", Date32, true),
        ],
        "retention" => vec![
            text("tenant_id", false),
            ("cohort_week", Date32, false),
            ("week_offset", Int32, false),
            ("cohort_size", Int64, false),
            ("retained", Int64, false),
        ],
        "funnel_progress" => vec![
            text("tenant_id", false),
            text("funnel_id", false),
            text("contact_id", false),
            ("entry_date", Date32, false),
            ("furthest_step", Int32, false),
            ("entry_ts", instant(), false),
            ("completed_ts", instant(), false),
        ],
        "attribution" => vec![
            text("tenant_id", false),
            text("model", false),
            text("conversion_event_id", false),
            ("conversion_ts", instant(), false),
            text("conversion_name", false),
            ("conversion_value", Float64, false),
            text("contact_id", false),
            text("touch_event_id", true),
            ("touch_ts", instant(), true),
            text("channel", false),
            text("campaign_id", true),
            text("source", true),
            ("weight", Float64, false),
            ("credited_value", Float64, false),
        ],
        "message_status" => vec![
            text("tenant_id", false),
            text("message_id", false),
            text("contact_id", false),
            text("session_id", true),
            text("sender", true),
            text("agent_id", true),
            text("campaign_id", true),
            ("sent_ts", instant(), true),
            ("delivered_ts", instant(), true),
            ("read_ts", instant(), true),
            ("failed_ts", instant(), true),
            ("error_code", Int64, true),
            text("final_status", false),
            ("replied", Boolean, false),
        ],
        "reactions" => vec![
            text("tenant_id", false),
            text("message_id", false),
            text("contact_id", false),
            text("emoji", false),
            text("sentiment", false),
            ("ts", instant(), false),
            text("sender", true),
            text("agent_id", true),
            text("campaign_id", true),
        ],
        "session_health" => vec![
            text("tenant_id", false),
            text("session_id", false),
            ("hour_start", instant(), false),
            ("uptime", Float64, false),
            ("sent", Int64, false),
            ("failed", Int64, false),
            ("health_score", Int32, false),
        ],
        _ => Vec::new(),
    }
}

/// The schema of a table, or `None` for a name that is not a table.
pub fn schema(table: &str) -> Option<SchemaRef> {
    let fields = columns(table);
    if fields.is_empty() {
        return None;
    }
    let fields: Vec<Field> = fields.into_iter().map(|(name, kind, nullable)| Field::new(name, kind, nullable)).collect();
    Some(Arc::new(Schema::new(fields)))
}
