//! Parsing and validating one canonical event (SPEC §2).
//!
//! The fast path deserializes into borrowed optional fields and then checks the rules; only a line
//! that fails there goes through the slow path, which re-reads it as a JSON value to name the field
//! that broke the schema.

use crate::event::{Event, EventType, MessageType, Sender, SessionState, Status, Text};
use crate::time::rfc3339_to_ms;
use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;
use serde_json::value::RawValue;
use std::borrow::Cow;
use std::fmt;

/// Upper bound of `properties`, serialized.
pub const MAX_PROPERTIES_BYTES: usize = 16 * 1024;
const MAX_ID_CHARS: usize = 200;
/// An emoji is one grapheme, but a flag or a family is several code points.
const MAX_EMOJI_CHARS: usize = 32;
const MAX_TENANT_CHARS: usize = 64;
/// Latest accepted instant: 2149-06-04T23:59:59.999Z, so every local date (even at +14:00)
/// fits ClickHouse's `Date` (which ends 2149-06-06) as well as Arrow's `Date32`.
const MAX_TS_MS: i64 = 5_662_137_599_999;

/// Why an event was rejected: the field at fault (or `json`) and the problem.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {problem}")]
pub struct EventError {
    pub field: &'static str,
    pub problem: String,
    /// The event's tenant when it could be read, for the `rejected` table.
    pub tenant_id: Option<String>,
}

impl EventError {
    fn new(field: &'static str, problem: impl Into<String>) -> Self {
        EventError { field, problem: problem.into(), tenant_id: None }
    }
}

#[derive(Deserialize)]
struct RawEvent<'a> {
    #[serde(borrow, default)]
    event_id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    tenant_id: Option<Cow<'a, str>>,
    #[serde(default)]
    ts: Option<Timestamp>,
    #[serde(borrow, default, rename = "type")]
    kind: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    contact_id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    conversation_id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    session_id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    message_id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    sender: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    agent_id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    campaign_id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    message_type: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    status: Option<Cow<'a, str>>,
    #[serde(default)]
    error_code: Option<i64>,
    #[serde(borrow, default)]
    emoji: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    channel: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    source: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    medium: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    name: Option<Cow<'a, str>>,
    #[serde(default)]
    value: Option<f64>,
    #[serde(borrow, default)]
    state: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    properties: Option<&'a RawValue>,
}

/// `ts`: an RFC 3339 string or integer epoch milliseconds, held as milliseconds.
struct Timestamp(i64);

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct TimestampVisitor;
        impl Visitor<'_> for TimestampVisitor {
            type Value = Timestamp;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an RFC 3339 string or integer epoch milliseconds")
            }
            fn visit_i64<E: de::Error>(self, ms: i64) -> Result<Timestamp, E> {
                Ok(Timestamp(ms))
            }
            fn visit_u64<E: de::Error>(self, ms: u64) -> Result<Timestamp, E> {
                i64::try_from(ms).map(Timestamp).map_err(|_| E::custom("out of range"))
            }
            fn visit_str<E: de::Error>(self, text: &str) -> Result<Timestamp, E> {
                rfc3339_to_ms(text).map(Timestamp).ok_or_else(|| E::custom("not RFC 3339"))
            }
        }
        deserializer.deserialize_any(TimestampVisitor)
    }
}

/// Parses and validates one event from JSON bytes.
pub fn parse_event(bytes: &[u8]) -> Result<Event, EventError> {
    match serde_json::from_slice::<RawEvent>(bytes) {
        Ok(raw) => {
            let tenant = raw.tenant_id.as_deref().filter(|t| valid_tenant(t)).map(str::to_owned);
            validate(raw).map_err(|mut error| {
                error.tenant_id = tenant;
                error
            })
        }
        Err(error) => Err(diagnose(bytes, error)),
    }
}

fn valid_tenant(tenant: &str) -> bool {
    (1..=MAX_TENANT_CHARS).contains(&tenant.len())
        && tenant.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

fn bounded(field: &'static str, value: Option<Cow<'_, str>>) -> Result<Option<Text>, EventError> {
    bounded_to(field, value, MAX_ID_CHARS)
}

fn bounded_to(field: &'static str, value: Option<Cow<'_, str>>, max: usize) -> Result<Option<Text>, EventError> {
    match value {
        Some(text) if text.len() > max && text.chars().count() > max => {
            Err(EventError::new(field, format!("longer than {max} characters")))
        }
        Some(text) => Ok(Some(Text::from(text))),
        None => Ok(None),
    }
}

fn enum_field<T>(
    field: &'static str,
    value: Option<&str>,
    parse: fn(&str) -> Option<T>,
    expected: fn() -> String,
) -> Result<Option<T>, EventError> {
    match value {
        None => Ok(None),
        Some(text) => parse(text)
            .map(Some)
            .ok_or_else(|| EventError::new(field, format!("unknown value `{text}` (expected one of {})", expected()))),
    }
}

fn require<T>(field: &'static str, value: &Option<T>, kind: EventType) -> Result<(), EventError> {
    match value {
        Some(_) => Ok(()),
        None => Err(EventError::new(field, format!("required for {kind}"))),
    }
}

fn validate(raw: RawEvent<'_>) -> Result<Event, EventError> {
    let tenant_id = raw.tenant_id.ok_or_else(|| EventError::new("tenant_id", "required"))?;
    if !valid_tenant(&tenant_id) {
        return Err(EventError::new("tenant_id", "must match [A-Za-z0-9_.-]{1,64}"));
    }
    let event_id = raw.event_id.ok_or_else(|| EventError::new("event_id", "required"))?;
    if event_id.is_empty() || event_id.chars().count() > MAX_ID_CHARS {
        return Err(EventError::new("event_id", "must be 1 to 200 characters"));
    }
    let ts = raw.ts.ok_or_else(|| EventError::new("ts", "required"))?.0;
    if !(0..=MAX_TS_MS).contains(&ts) {
        return Err(EventError::new("ts", "out of range (1970-01-01 to 2149-06-04)"));
    }
    let kind_text = raw.kind.ok_or_else(|| EventError::new("type", "required"))?;
    let kind = EventType::parse(&kind_text).ok_or_else(|| {
        EventError::new("type", format!("unknown event type `{kind_text}` (expected one of {})", EventType::expected()))
    })?;

    let sender = enum_field("sender", raw.sender.as_deref(), Sender::parse, Sender::expected)?;
    let status = enum_field("status", raw.status.as_deref(), Status::parse, Status::expected)?;
    let state = enum_field("state", raw.state.as_deref(), SessionState::parse, SessionState::expected)?;
    let message_type =
        enum_field("message_type", raw.message_type.as_deref(), MessageType::parse, MessageType::expected)?
            .unwrap_or(MessageType::Text);
    if let Some(value) = raw.value {
        if !(value >= 0.0 && value.is_finite()) {
            return Err(EventError::new("value", "must be a number ≥ 0"));
        }
    }
    let properties = match raw.properties {
        None => None,
        Some(properties) if properties.get() == "null" => None,
        Some(properties) => {
            let value: serde_json::Value =
                serde_json::from_str(properties.get()).map_err(|e| EventError::new("properties", e.to_string()))?;
            if !value.is_object() {
                return Err(EventError::new("properties", format!("expected an object, found {}", json_kind(&value))));
            }
            let text = value.to_string();
            if text.len() > MAX_PROPERTIES_BYTES {
                return Err(EventError::new(
                    "properties",
                    format!("{} bytes serialized, over the 16 KiB limit", text.len()),
                ));
            }
            Some(text)
        }
    };

    let contact_id = bounded("contact_id", raw.contact_id)?;
    let conversation_id = bounded("conversation_id", raw.conversation_id)?.or_else(|| contact_id.clone());
    let event = Event {
        tenant_id: Text::from(tenant_id),
        event_id: Text::from(event_id),
        ts,
        kind,
        contact_id,
        conversation_id,
        session_id: bounded("session_id", raw.session_id)?,
        message_id: bounded("message_id", raw.message_id)?,
        sender,
        agent_id: bounded("agent_id", raw.agent_id)?,
        campaign_id: bounded("campaign_id", raw.campaign_id)?,
        message_type,
        status,
        error_code: raw.error_code,
        emoji: bounded_to("emoji", raw.emoji, MAX_EMOJI_CHARS)?,
        channel: bounded("channel", raw.channel)?,
        source: bounded("source", raw.source)?,
        medium: bounded("medium", raw.medium)?,
        name: bounded("name", raw.name)?,
        value: raw.value,
        state,
        properties,
    };
    check_required(&event)?;
    Ok(event)
}

/// The per-type required fields of SPEC §2.
fn check_required(event: &Event) -> Result<(), EventError> {
    use EventType::*;
    let kind = event.kind;
    if matches!(kind, MessageReceived | MessageSent | MessageStatus | MessageReaction | Touch | Conversion) {
        require("contact_id", &event.contact_id, kind)?;
    }
    match kind {
        MessageReceived | MessageSent | MessageStatus | MessageReaction => {
            require("message_id", &event.message_id, kind)?
        }
        ConversationAssigned | ConversationResolved => require("conversation_id", &event.conversation_id, kind)
            .map_err(|_| EventError::new("conversation_id", format!("{kind} needs conversation_id or contact_id")))?,
        _ => {}
    }
    match kind {
        MessageSent => {
            require("sender", &event.sender, kind)?;
            match event.sender {
                Some(Sender::Agent) if event.agent_id.is_none() => {
                    return Err(EventError::new("agent_id", "required when sender is agent"))
                }
                Some(Sender::Campaign) if event.campaign_id.is_none() => {
                    return Err(EventError::new("campaign_id", "required when sender is campaign"))
                }
                _ => {}
            }
        }
        MessageStatus => require("status", &event.status, kind)?,
        MessageReaction => require("emoji", &event.emoji, kind)?,
        Touch => require("channel", &event.channel, kind)?,
        Conversion => require("name", &event.name, kind)?,
        SessionStatus => {
            require("session_id", &event.session_id, kind)?;
            require("state", &event.state, kind)?;
        }
        _ => {}
    }
    Ok(())
}

const STRING_FIELDS: &[&str] = &[
    "event_id",
    "tenant_id",
    "type",
    "contact_id",
    "conversation_id",
    "session_id",
    "message_id",
    "sender",
    "agent_id",
    "campaign_id",
    "message_type",
    "status",
    "emoji",
    "channel",
    "source",
    "medium",
    "name",
    "state",
];

fn json_kind(value: &serde_json::Value) -> &'static str {
    match value {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

/// Slow path for a line the fast path could not read: find the field to blame.
fn diagnose(bytes: &[u8], fast_error: serde_json::Error) -> EventError {
    let value: serde_json::Value = match serde_json::from_slice(bytes) {
        Ok(value) => value,
        Err(error) => {
            // `1e400` is valid JSON but no f64: blame the field it is the value of.
            return match field_before(bytes, &error).filter(|_| error.to_string().starts_with("number out of range")) {
                Some(field) => EventError::new(field, "number out of range"),
                None => EventError::new("json", format!("malformed JSON: {error}")),
            };
        }
    };
    let Some(object) = value.as_object() else {
        return EventError::new("json", format!("an event must be a JSON object, found {}", json_kind(&value)));
    };
    let tenant_id = object.get("tenant_id").and_then(|t| t.as_str()).filter(|t| valid_tenant(t)).map(str::to_owned);
    let blame = |field: &'static str, problem: String| EventError { field, problem, tenant_id: tenant_id.clone() };
    // serde names a repeated key: `duplicate field `tenant_id``.
    let fast_message = fast_error.to_string();
    if let Some(rest) = fast_message.strip_prefix("duplicate field `") {
        if let Some(field) = known_field(rest.split('`').next().unwrap_or_default()) {
            return blame(field, "appears more than once".to_owned());
        }
    }
    for &field in STRING_FIELDS {
        if let Some(found) = object.get(field).filter(|v| !v.is_null() && !v.is_string()) {
            return blame(field, format!("expected a string, found {}", json_kind(found)));
        }
    }
    if let Some(ts) = object.get("ts").filter(|v| !v.is_null()) {
        let problem = match ts {
            serde_json::Value::String(text) if rfc3339_to_ms(text).is_none() => {
                Some(format!("`{text}` is not an RFC 3339 timestamp"))
            }
            serde_json::Value::String(_) => None,
            serde_json::Value::Number(n) if n.is_f64() => Some("epoch milliseconds must be an integer".to_owned()),
            serde_json::Value::Number(n) if n.as_i64().is_none() => Some("epoch milliseconds out of range".to_owned()),
            serde_json::Value::Number(_) => None,
            other => {
                Some(format!("expected an RFC 3339 string or integer epoch milliseconds, found {}", json_kind(other)))
            }
        };
        if let Some(problem) = problem {
            return blame("ts", problem);
        }
    }
    if let Some(code) = object.get("error_code").filter(|v| !v.is_null() && !v.is_i64()) {
        return blame("error_code", format!("expected an integer, found {}", json_kind(code)));
    }
    if let Some(value) = object.get("value").filter(|v| !v.is_null() && !v.is_number()) {
        return blame("value", format!("expected a number, found {}", json_kind(value)));
    }
    if let Some(properties) = object.get("properties").filter(|v| !v.is_null() && !v.is_object()) {
        return blame("properties", format!("expected an object, found {}", json_kind(properties)));
    }
    blame("json", fast_message)
}

/// The field names of SPEC §2 this parser reads, as `'static` names to blame.
fn known_field(name: &str) -> Option<&'static str> {
    STRING_FIELDS.iter().chain(&["ts", "error_code", "value", "properties"]).copied().find(|field| *field == name)
}

/// The top-level field whose value `error` points into: the last `"name":` before the error.
fn field_before(bytes: &[u8], error: &serde_json::Error) -> Option<&'static str> {
    let mut offset = 0;
    for _ in 1..error.line() {
        offset += memchr::memchr(b'\n', &bytes[offset..])? + 1;
    }
    let end = (offset + error.column()).min(bytes.len());
    let before = std::str::from_utf8(&bytes[..end]).ok()?;
    let colon = before.rfind(':')?;
    let key = before[..colon].trim_end().strip_suffix('"')?;
    let start = key.rfind('"')?;
    known_field(&key[start + 1..])
}
