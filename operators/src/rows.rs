//! Rows of the SPEC §5 tables as the operators emit them. Instants are UTC epoch ms, dates are
//! days since 1970-01-01; the sinks map them to Arrow `Timestamp(ms, UTC)` and `Date32`.

use crate::table;
use convoflow_events::{Event, MessageType, Sender, SessionState, Status};
use serde::{Deserialize, Serialize};

pub use convoflow_events::Text;

table! { Event as "events", |e| {
    event_id: text = &e.event_id,
    tenant_id: text = &e.tenant_id,
    ts: instant = e.ts,
    "type": text = e.kind.as_str(),
    contact_id: text null = e.contact_id.as_deref(),
    conversation_id: text null = e.conversation_id.as_deref(),
    session_id: text null = e.session_id.as_deref(),
    message_id: text null = e.message_id.as_deref(),
    sender: text null = e.sender.map(Sender::as_str),
    agent_id: text null = e.agent_id.as_deref(),
    campaign_id: text null = e.campaign_id.as_deref(),
    message_type: text = e.message_type.as_str(),
    status: text null = e.status.map(Status::as_str),
    error_code: int64 null = e.error_code,
    emoji: text null = e.emoji.as_deref(),
    channel: text null = e.channel.as_deref(),
    source: text null = e.source.as_deref(),
    medium: text null = e.medium.as_deref(),
    name: text null = e.name.as_deref(),
    value: float64 null = e.value,
    state: text null = e.state.map(SessionState::as_str),
    properties: text null = e.properties.as_deref(),
}}

/// Who wrote a message, for `message_volume.sender`: the contact or a business sender.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Party {
    Contact,
    Agent,
    Bot,
    Campaign,
}

impl Party {
    pub fn as_str(self) -> &'static str {
        match self {
            Party::Contact => "contact",
            Party::Agent => "agent",
            Party::Bot => "bot",
            Party::Campaign => "campaign",
        }
    }
}

impl From<Sender> for Party {
    fn from(sender: Sender) -> Self {
        match sender {
            Sender::Agent => Party::Agent,
            Sender::Bot => Party::Bot,
            Sender::Campaign => Party::Campaign,
        }
    }
}

/// `message_volume.direction`
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Direction {
    Inbound,
    Outbound,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Inbound => "inbound",
            Direction::Outbound => "outbound",
        }
    }
}

/// SPEC §5.1
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ResponseRow {
    pub tenant_id: Text,
    pub conversation_id: Text,
    pub contact_id: Text,
    pub start_event_id: Text,
    pub start_ts: i64,
    pub reply_event_id: Text,
    pub reply_ts: i64,
    pub response_ms: i64,
    pub responder: Sender,
    pub agent_id: Option<Text>,
}

table! { ResponseRow as "responses", |row| {
    tenant_id: text = &row.tenant_id,
    conversation_id: text = &row.conversation_id,
    contact_id: text = &row.contact_id,
    start_event_id: text = &row.start_event_id,
    start_ts: instant = row.start_ts,
    reply_event_id: text = &row.reply_event_id,
    reply_ts: instant = row.reply_ts,
    response_ms: int64 = row.response_ms,
    responder: text = row.responder.as_str(),
    agent_id: text null = row.agent_id.as_deref(),
}}

/// SPEC §5.2
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct CycleRow {
    pub tenant_id: Text,
    pub conversation_id: Text,
    pub contact_id: Text,
    pub cycle_id: Text,
    pub start_ts: i64,
    pub first_inbound_ts: Option<i64>,
    pub first_response_ts: Option<i64>,
    pub first_response_ms: Option<i64>,
    pub first_response_agent_id: Option<Text>,
    pub resolved_ts: Option<i64>,
    pub resolution_ms: Option<i64>,
    pub resolved_by: Option<Text>,
    pub assignee: Option<Text>,
    pub inbound_count: i64,
    pub outbound_count: i64,
}

table! { CycleRow as "conversation_cycles", |row| {
    tenant_id: text = &row.tenant_id,
    conversation_id: text = &row.conversation_id,
    contact_id: text = &row.contact_id,
    cycle_id: text = &row.cycle_id,
    start_ts: instant = row.start_ts,
    first_inbound_ts: instant null = row.first_inbound_ts,
    first_response_ts: instant null = row.first_response_ts,
    first_response_ms: int64 null = row.first_response_ms,
    first_response_agent_id: text null = row.first_response_agent_id.as_deref(),
    resolved_ts: instant null = row.resolved_ts,
    resolution_ms: int64 null = row.resolution_ms,
    resolved_by: text null = row.resolved_by.as_deref(),
    assignee: text null = row.assignee.as_deref(),
    inbound_count: int64 = row.inbound_count,
    outbound_count: int64 = row.outbound_count,
}}

/// SPEC §5.3: the key columns of a `message_volume` row.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct VolumeKey {
    pub tenant_id: Text,
    pub hour_start: i64,
    pub local_date: i32,
    pub local_hour: u32,
    pub direction: Direction,
    pub sender: Party,
    pub message_type: MessageType,
}

/// SPEC §5.3
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct VolumeRow {
    pub key: VolumeKey,
    pub messages: i64,
}

table! { VolumeRow as "message_volume", |row| {
    tenant_id: text = &row.key.tenant_id,
    hour_start: instant = row.key.hour_start,
    local_date: date = row.key.local_date,
    local_hour: int32 = row.key.local_hour as i32,
    direction: text = row.key.direction.as_str(),
    sender: text = row.key.sender.as_str(),
    message_type: text = row.key.message_type.as_str(),
    messages: int64 = row.messages,
}}

/// SPEC §5.4
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ContactRow {
    pub tenant_id: Text,
    pub contact_id: Text,
    pub first_seen_ts: i64,
    pub first_inbound_ts: Option<i64>,
    pub last_inbound_ts: Option<i64>,
    pub inbound_messages: i64,
    pub cohort_week: Option<i32>,
}

table! { ContactRow as "contacts", |row| {
    tenant_id: text = &row.tenant_id,
    contact_id: text = &row.contact_id,
    first_seen_ts: instant = row.first_seen_ts,
    first_inbound_ts: instant null = row.first_inbound_ts,
    last_inbound_ts: instant null = row.last_inbound_ts,
    inbound_messages: int64 = row.inbound_messages,
    cohort_week: date null = row.cohort_week,
}}

/// SPEC §5.5
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct RetentionRow {
    pub tenant_id: Text,
    pub cohort_week: i32,
    pub week_offset: i32,
    pub cohort_size: i64,
    pub retained: i64,
}

table! { RetentionRow as "retention", |row| {
    tenant_id: text = &row.tenant_id,
    cohort_week: date = row.cohort_week,
    week_offset: int32 = row.week_offset,
    cohort_size: int64 = row.cohort_size,
    retained: int64 = row.retained,
}}

/// SPEC §5.6: a contact's progress through a funnel from the step-1 events of one local date.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct FunnelRow {
    pub tenant_id: Text,
    pub funnel_id: Text,
    pub contact_id: Text,
    pub entry_date: i32,
    pub furthest_step: i32,
    pub entry_ts: i64,
    pub completed_ts: i64,
}

table! { FunnelRow as "funnel_progress", |row| {
    tenant_id: text = &row.tenant_id,
    funnel_id: text = &row.funnel_id,
    contact_id: text = &row.contact_id,
    entry_date: date = row.entry_date,
    furthest_step: int32 = row.furthest_step,
    entry_ts: instant = row.entry_ts,
    completed_ts: instant = row.completed_ts,
}}

/// A float with a total order, so rows holding one can be sorted, compared and hashed. Operators
/// derive these from sorted state alone, so equal inputs give bit-identical values.
#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
pub struct Real(pub f64);

impl PartialEq for Real {
    fn eq(&self, other: &Self) -> bool {
        self.0.total_cmp(&other.0).is_eq()
    }
}

impl Eq for Real {}

impl PartialOrd for Real {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Real {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.total_cmp(&other.0)
    }
}

impl std::hash::Hash for Real {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.0.to_bits().hash(state);
    }
}

/// `attribution.model`
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum AttributionModel {
    FirstTouch,
    LastTouch,
    Linear,
    TimeDecay,
    PositionBased,
}

impl AttributionModel {
    pub const ALL: [AttributionModel; 5] = [
        AttributionModel::FirstTouch,
        AttributionModel::LastTouch,
        AttributionModel::Linear,
        AttributionModel::TimeDecay,
        AttributionModel::PositionBased,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            AttributionModel::FirstTouch => "first_touch",
            AttributionModel::LastTouch => "last_touch",
            AttributionModel::Linear => "linear",
            AttributionModel::TimeDecay => "time_decay",
            AttributionModel::PositionBased => "position_based",
        }
    }
}

/// SPEC §5.7: the credit one touch (or `direct`) gets for one conversion under one model.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct AttributionRow {
    pub tenant_id: Text,
    pub model: AttributionModel,
    pub conversion_event_id: Text,
    pub conversion_ts: i64,
    pub conversion_name: Text,
    pub conversion_value: Real,
    pub contact_id: Text,
    pub touch_event_id: Option<Text>,
    pub touch_ts: Option<i64>,
    pub channel: Text,
    pub campaign_id: Option<Text>,
    pub source: Option<Text>,
    pub weight: Real,
    pub credited_value: Real,
}

table! { AttributionRow as "attribution", |row| {
    tenant_id: text = &row.tenant_id,
    model: text = row.model.as_str(),
    conversion_event_id: text = &row.conversion_event_id,
    conversion_ts: instant = row.conversion_ts,
    conversion_name: text = &row.conversion_name,
    conversion_value: float64 = row.conversion_value.0,
    contact_id: text = &row.contact_id,
    touch_event_id: text null = row.touch_event_id.as_deref(),
    touch_ts: instant null = row.touch_ts,
    channel: text = &row.channel,
    campaign_id: text null = row.campaign_id.as_deref(),
    source: text null = row.source.as_deref(),
    weight: float64 = row.weight.0,
    credited_value: float64 = row.credited_value.0,
}}

/// SPEC §5.8: one outbound message id. `final_status` is `Read`, `Delivered`, `Failed` or `Sent`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct MessageStatusRow {
    pub tenant_id: Text,
    pub message_id: Text,
    pub contact_id: Text,
    pub session_id: Option<Text>,
    pub sender: Option<Sender>,
    pub agent_id: Option<Text>,
    pub campaign_id: Option<Text>,
    pub sent_ts: Option<i64>,
    pub delivered_ts: Option<i64>,
    pub read_ts: Option<i64>,
    pub failed_ts: Option<i64>,
    pub error_code: Option<i64>,
    pub final_status: Status,
    pub replied: bool,
}

table! { MessageStatusRow as "message_status", |row| {
    tenant_id: text = &row.tenant_id,
    message_id: text = &row.message_id,
    contact_id: text = &row.contact_id,
    session_id: text null = row.session_id.as_deref(),
    sender: text null = row.sender.map(Sender::as_str),
    agent_id: text null = row.agent_id.as_deref(),
    campaign_id: text null = row.campaign_id.as_deref(),
    sent_ts: instant null = row.sent_ts,
    delivered_ts: instant null = row.delivered_ts,
    read_ts: instant null = row.read_ts,
    failed_ts: instant null = row.failed_ts,
    error_code: int64 null = row.error_code,
    final_status: text = row.final_status.as_str(),
    replied: boolean = row.replied,
}}

/// `reactions.sentiment`
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Sentiment {
    Positive,
    Negative,
    Neutral,
}

impl Sentiment {
    pub fn as_str(self) -> &'static str {
        match self {
            Sentiment::Positive => "positive",
            Sentiment::Negative => "negative",
            Sentiment::Neutral => "neutral",
        }
    }
}

/// SPEC §5.9: a contact's standing reaction to a message.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ReactionRow {
    pub tenant_id: Text,
    pub message_id: Text,
    pub contact_id: Text,
    pub emoji: Text,
    pub sentiment: Sentiment,
    pub ts: i64,
    pub sender: Option<Sender>,
    pub agent_id: Option<Text>,
    /// Not in the SPEC's columns: the reacted message's campaign, for CSAT by campaign.
    pub campaign_id: Option<Text>,
}

table! { ReactionRow as "reactions", |row| {
    tenant_id: text = &row.tenant_id,
    message_id: text = &row.message_id,
    contact_id: text = &row.contact_id,
    emoji: text = &row.emoji,
    sentiment: text = row.sentiment.as_str(),
    ts: instant = row.ts,
    sender: text null = row.sender.map(Sender::as_str),
    agent_id: text null = row.agent_id.as_deref(),
    campaign_id: text null = row.campaign_id.as_deref(),
}}

/// SPEC §5.10: one business sender in one local hour.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct SessionHealthRow {
    pub tenant_id: Text,
    pub session_id: Text,
    pub hour_start: i64,
    pub uptime: Real,
    pub sent: i64,
    pub failed: i64,
    pub health_score: i32,
}

table! { SessionHealthRow as "session_health", |row| {
    tenant_id: text = &row.tenant_id,
    session_id: text = &row.session_id,
    hour_start: instant = row.hour_start,
    uptime: float64 = row.uptime.0,
    sent: int64 = row.sent,
    failed: int64 = row.failed,
    health_score: int32 = row.health_score,
}}

/// `rejected`: an input that broke a rule, with where it came from.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct RejectedRow {
    pub tenant_id: String,
    pub received_at: i64,
    pub reason: String,
    /// The offending input, cut to [`MAX_RAW_BYTES`] as written in JSON.
    pub raw: String,
    /// `file:line` (or another origin) of the input.
    pub source: String,
}

table! { RejectedRow as "rejected", |row| {
    tenant_id: text = &row.tenant_id,
    received_at: instant = row.received_at,
    reason: text = &row.reason,
    raw: text = &row.raw,
    source: text = &row.source,
}}

/// Bound on `rejected.raw` once escaped in JSON (the bus line's form), so one huge bad line, or
/// one of control bytes that take 6 bytes each escaped, cannot bloat the table.
pub const MAX_RAW_BYTES: usize = 4096;

impl RejectedRow {
    pub fn new(tenant_id: Option<&str>, received_at: i64, reason: String, raw: &[u8], source: String) -> Self {
        let text = String::from_utf8_lossy(&raw[..raw.len().min(MAX_RAW_BYTES)]);
        let mut escaped = 0;
        let end = text
            .char_indices()
            .find_map(|(at, c)| {
                escaped += match c {
                    '"' | '\\' | '\n' | '\r' | '\t' | '\u{8}' | '\u{c}' => 2,
                    c if c < ' ' => 6,
                    c => c.len_utf8(),
                };
                (escaped > MAX_RAW_BYTES).then_some(at)
            })
            .unwrap_or(text.len());
        RejectedRow {
            tenant_id: tenant_id.unwrap_or_default().to_owned(),
            received_at,
            reason,
            raw: text[..end].to_owned(),
            source,
        }
    }
}

/// How a bus line starts that carries a rejection found before the bus (by the API, which must
/// still store it) instead of an event. No canonical event starts this way (its first key is
/// `event_id`), and a line that is not an event is rejected whatever it holds.
const BUS_LINE_PREFIX: &[u8] = b"{\"$rejected\":";

#[derive(Serialize, Deserialize)]
struct BusLine {
    #[serde(rename = "$rejected")]
    rejected: RejectedRow,
}

impl RejectedRow {
    /// This rejection as one bus line (without the newline).
    pub fn to_bus_line(&self) -> String {
        serde_json::to_string(&BusLine { rejected: self.clone() }).unwrap_or_default()
    }

    /// The rejection a bus line carries, if it is one.
    pub fn from_bus_line(line: &[u8]) -> Option<RejectedRow> {
        if !line.starts_with(BUS_LINE_PREFIX) {
            return None;
        }
        serde_json::from_slice::<BusLine>(line).ok().map(|line| line.rejected)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_is_bounded_as_written_on_the_bus() {
        let line = |raw: &[u8]| RejectedRow::new(Some("t"), 0, "r".to_owned(), raw, "s".to_owned());
        let control = line(&[1u8; 10_000]);
        assert_eq!(control.raw.len(), MAX_RAW_BYTES / 6, "each control byte is 6 bytes escaped");
        assert_eq!(line(&[b'x'; 10_000]).raw.len(), MAX_RAW_BYTES);
        let mut text = "x".to_owned() + &"ä".repeat(3_000);
        assert_eq!(line(text.as_bytes()).raw.len(), MAX_RAW_BYTES - 1, "cut on a char boundary");
        text.replace_range(1..3, "\"");
        assert!(line(text.as_bytes()).raw.starts_with("x\"ä"), "a quote is 2 bytes escaped");
        assert_eq!(line(b"{\"a\":1}").raw, "{\"a\":1}");
        let bus = control.to_bus_line();
        assert!(bus.len() < MAX_RAW_BYTES + 100, "{}", bus.len());
        assert_eq!(RejectedRow::from_bus_line(bus.as_bytes()), Some(control));
    }
}
