//! Canonical convoflow events (SPEC §2): the schema, validation that names the broken field,
//! NDJSON reading that survives bad lines, event identity, and tenants with their time zones (§4).
//! WhatsApp Cloud API webhook normalization (§3). No I/O beyond reading a tenants file.

mod event;
mod funnels;
mod identity;
mod ndjson;
mod parse;
mod tenants;
mod time;
mod whatsapp;

pub use event::{escape_json_string, Event, EventType, MessageType, Sender, SessionState, Status, Text, TsFormat};
pub use funnels::{Funnel, FunnelStep, DEFAULT_FUNNEL_ID};
pub use identity::{event_key, fingerprint};
pub use ndjson::{split_lines, Line};
pub use parse::{parse_event, EventError, MAX_PROPERTIES_BYTES};
pub use tenants::{AttributionSettings, Tenant, Tenants, TenantsError};
pub use time::{
    date32_to_string, iso_week_monday, local_day_start_ms, local_time, ms_to_rfc3339, now_ms, parse_date32,
    parse_duration_ms, rfc3339_to_ms, LocalTime,
};
pub use whatsapp::{
    normalize_webhook, RejectedItem, SkipKind, SkippedItem, WebhookBatch, WebhookError, WHATSAPP_OBJECT,
};
