//! Rows of the SPEC §5 tables as the operators emit them. Instants are UTC epoch ms, dates are
//! days since 1970-01-01; the sinks map them to Arrow `Timestamp(ms, UTC)` and `Date32`.

use convoflow_events::{Event, MessageType, Sender};
use serde::{Deserialize, Serialize};

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
    pub tenant_id: String,
    pub conversation_id: String,
    pub contact_id: String,
    pub start_event_id: String,
    pub start_ts: i64,
    pub reply_event_id: String,
    pub reply_ts: i64,
    pub response_ms: i64,
    pub responder: Sender,
    pub agent_id: Option<String>,
}

/// SPEC §5.2
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct CycleRow {
    pub tenant_id: String,
    pub conversation_id: String,
    pub contact_id: String,
    pub cycle_id: String,
    pub start_ts: i64,
    pub first_inbound_ts: Option<i64>,
    pub first_response_ts: Option<i64>,
    pub first_response_ms: Option<i64>,
    pub first_response_agent_id: Option<String>,
    pub resolved_ts: Option<i64>,
    pub resolution_ms: Option<i64>,
    pub resolved_by: Option<String>,
    pub assignee: Option<String>,
    pub inbound_count: i64,
    pub outbound_count: i64,
}

/// SPEC §5.3: the key columns of a `message_volume` row.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct VolumeKey {
    pub tenant_id: String,
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

/// SPEC §5.4
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ContactRow {
    pub tenant_id: String,
    pub contact_id: String,
    pub first_seen_ts: i64,
    pub first_inbound_ts: Option<i64>,
    pub last_inbound_ts: Option<i64>,
    pub inbound_messages: i64,
    pub cohort_week: Option<i32>,
}

/// SPEC §5.5
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct RetentionRow {
    pub tenant_id: String,
    pub cohort_week: i32,
    pub week_offset: i32,
    pub cohort_size: i64,
    pub retained: i64,
}

/// `rejected`: an input that broke a rule, with where it came from.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct RejectedRow {
    pub tenant_id: String,
    pub received_at: i64,
    pub reason: String,
    /// The offending input, cut to [`MAX_RAW_BYTES`].
    pub raw: String,
    /// `file:line` (or another origin) of the input.
    pub source: String,
}

/// Bound on `rejected.raw`, so one huge bad line cannot bloat the table.
pub const MAX_RAW_BYTES: usize = 4096;

impl RejectedRow {
    pub fn new(tenant_id: Option<&str>, received_at: i64, reason: String, raw: &[u8], source: String) -> Self {
        let text = String::from_utf8_lossy(raw);
        let mut end = text.len().min(MAX_RAW_BYTES);
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        RejectedRow { tenant_id: tenant_id.unwrap_or_default().to_owned(), received_at, reason, raw: text[..end].to_owned(), source }
    }
}

/// One change to one table: a row and its multiplicity change.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Update {
    Event(Box<Event>),
    Response(ResponseRow, i64),
    Cycle(CycleRow, i64),
    Volume(VolumeRow, i64),
    Contact(ContactRow, i64),
    Retention(RetentionRow, i64),
}
