//! The canonical event, SPEC §2.

use serde::{Deserialize, Serialize};

macro_rules! string_enum {
    ($(#[$meta:meta])* $name:ident { $($variant:ident => $text:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        pub enum $name { $($variant),+ }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text),+ }
            }

            pub fn parse(text: &str) -> Option<Self> {
                match text { $($text => Some($name::$variant),)+ _ => None }
            }

            /// The accepted spellings, for error messages.
            pub fn expected() -> String {
                [$($text),+].join(", ")
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

string_enum!(
    /// `type`
    EventType {
        MessageReceived => "message.received",
        MessageSent => "message.sent",
        MessageStatus => "message.status",
        MessageReaction => "message.reaction",
        ConversationAssigned => "conversation.assigned",
        ConversationResolved => "conversation.resolved",
        Touch => "touch",
        Conversion => "conversion",
        SessionStatus => "session.status",
    }
);

string_enum!(
    /// `sender` of a `message.sent`
    Sender { Agent => "agent", Bot => "bot", Campaign => "campaign" }
);

string_enum!(
    /// `status` of a `message.status`
    Status { Sent => "sent", Delivered => "delivered", Read => "read", Played => "played", Failed => "failed" }
);

string_enum!(
    /// `state` of a `session.status`
    SessionState {
        Connected => "connected",
        Disconnected => "disconnected",
        QrRequired => "qr_required",
        Blocked => "blocked",
        Error => "error",
    }
);

string_enum!(
    /// `message_type`, default `text`
    MessageType {
        Text => "text",
        Image => "image",
        Video => "video",
        Audio => "audio",
        Document => "document",
        Sticker => "sticker",
        Location => "location",
        Contacts => "contacts",
        Interactive => "interactive",
        Button => "button",
        Order => "order",
        Template => "template",
        Unknown => "unknown",
    }
);

/// A text field of an event or a row: inline when at most 24 bytes (every generated id, a tenant,
/// a channel), on the heap like a `String` when longer (Meta's ~60-byte `wamid`s). It orders,
/// hashes and serializes as the string it holds, so key routes and saved state are as with
/// `String`.
pub type Text = compact_str::CompactString;

/// A validated canonical event. `conversation_id` holds the effective thread id (it defaults to
/// `contact_id`), `ts` is UTC epoch milliseconds, `properties` is the canonical JSON text.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Event {
    pub tenant_id: Text,
    pub event_id: Text,
    pub ts: i64,
    pub kind: EventType,
    pub contact_id: Option<Text>,
    pub conversation_id: Option<Text>,
    pub session_id: Option<Text>,
    pub message_id: Option<Text>,
    pub sender: Option<Sender>,
    pub agent_id: Option<Text>,
    pub campaign_id: Option<Text>,
    pub message_type: MessageType,
    pub status: Option<Status>,
    pub error_code: Option<i64>,
    pub emoji: Option<Text>,
    pub channel: Option<Text>,
    pub source: Option<Text>,
    pub medium: Option<Text>,
    pub name: Option<Text>,
    pub value: Option<f64>,
    pub state: Option<SessionState>,
    pub properties: Option<String>,
}

impl Event {
    /// A minimal event of the given type; the other fields are left empty for the caller to set.
    pub fn new(tenant_id: &str, event_id: &str, ts: i64, kind: EventType) -> Self {
        Event {
            tenant_id: tenant_id.into(),
            event_id: event_id.into(),
            ts,
            kind,
            contact_id: None,
            conversation_id: None,
            session_id: None,
            message_id: None,
            sender: None,
            agent_id: None,
            campaign_id: None,
            message_type: MessageType::Text,
            status: None,
            error_code: None,
            emoji: None,
            channel: None,
            source: None,
            medium: None,
            name: None,
            value: None,
            state: None,
            properties: None,
        }
    }

    /// The thread (SPEC §5.1): `conversation_id`, defaulting to `contact_id`.
    pub fn thread_id(&self) -> Option<&str> {
        self.conversation_id.as_deref().or(self.contact_id.as_deref())
    }

    /// Canonical compact JSON (`ts` as epoch ms), parseable back into an equal event.
    pub fn to_json(&self) -> String {
        let mut out = String::with_capacity(256);
        self.write_json(&mut out, TsFormat::EpochMs);
        out
    }

    /// Appends the event as one line of canonical JSON, without a newline.
    pub fn write_json(&self, out: &mut String, ts_format: TsFormat) {
        out.push('{');
        write_str_field(out, "event_id", &self.event_id, true);
        write_str_field(out, "tenant_id", &self.tenant_id, false);
        match ts_format {
            TsFormat::EpochMs => {
                out.push_str(",\"ts\":");
                out.push_str(&self.ts.to_string());
            }
            TsFormat::Rfc3339 => write_str_field(out, "ts", &crate::time::ms_to_rfc3339(self.ts), false),
        }
        write_str_field(out, "type", self.kind.as_str(), false);
        let optional = [
            ("contact_id", self.contact_id.as_deref()),
            ("conversation_id", self.conversation_id.as_deref()),
            ("session_id", self.session_id.as_deref()),
            ("message_id", self.message_id.as_deref()),
            ("sender", self.sender.map(Sender::as_str)),
            ("agent_id", self.agent_id.as_deref()),
            ("campaign_id", self.campaign_id.as_deref()),
            ("message_type", (self.message_type != MessageType::Text).then(|| self.message_type.as_str())),
            ("status", self.status.map(Status::as_str)),
            ("emoji", self.emoji.as_deref()),
            ("channel", self.channel.as_deref()),
            ("source", self.source.as_deref()),
            ("medium", self.medium.as_deref()),
            ("name", self.name.as_deref()),
            ("state", self.state.map(SessionState::as_str)),
        ];
        for (key, value) in optional {
            if let Some(value) = value {
                write_str_field(out, key, value, false);
            }
        }
        if let Some(code) = self.error_code {
            out.push_str(",\"error_code\":");
            out.push_str(&code.to_string());
        }
        if let Some(value) = self.value {
            out.push_str(",\"value\":");
            out.push_str(&serde_json::Number::from_f64(value).map_or("0".to_owned(), |n| n.to_string()));
        }
        if let Some(properties) = &self.properties {
            // Already canonical JSON text (validated on the way in).
            out.push_str(",\"properties\":");
            out.push_str(properties);
        }
        out.push('}');
    }
}

/// How `write_json` renders `ts`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TsFormat {
    EpochMs,
    Rfc3339,
}

fn write_str_field(out: &mut String, key: &str, value: &str, first: bool) {
    if !first {
        out.push(',');
    }
    out.push('"');
    out.push_str(key);
    out.push_str("\":");
    escape_json_string(out, value);
}

/// Appends `value` as a JSON string literal.
pub fn escape_json_string(out: &mut String, value: &str) {
    use std::fmt::Write;
    out.push('"');
    for ch in value.chars() {
        match ch {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}
