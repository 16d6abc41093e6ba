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

/// A validated canonical event. `conversation_id` holds the effective thread id (it defaults to
/// `contact_id`), `ts` is UTC epoch milliseconds, `properties` is the canonical JSON text.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Event {
    pub tenant_id: String,
    pub event_id: String,
    pub ts: i64,
    pub kind: EventType,
    pub contact_id: Option<String>,
    pub conversation_id: Option<String>,
    pub session_id: Option<String>,
    pub message_id: Option<String>,
    pub sender: Option<Sender>,
    pub agent_id: Option<String>,
    pub campaign_id: Option<String>,
    pub message_type: MessageType,
    pub status: Option<Status>,
    pub error_code: Option<i64>,
    pub emoji: Option<String>,
    pub channel: Option<String>,
    pub source: Option<String>,
    pub medium: Option<String>,
    pub name: Option<String>,
    pub value: Option<f64>,
    pub state: Option<SessionState>,
    pub properties: Option<String>,
}

impl Event {
    /// A minimal event of the given type; the other fields are left empty for the caller to set.
    pub fn new(tenant_id: &str, event_id: &str, ts: i64, kind: EventType) -> Self {
        Event {
            tenant_id: tenant_id.to_owned(),
            event_id: event_id.to_owned(),
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

    /// Canonical compact JSON, parseable back into an equal event.
    pub fn to_json(&self) -> String {
        let mut object = serde_json::Map::new();
        let mut put = |key: &str, value: serde_json::Value| {
            object.insert(key.to_owned(), value);
        };
        put("event_id", self.event_id.clone().into());
        put("tenant_id", self.tenant_id.clone().into());
        put("ts", self.ts.into());
        put("type", self.kind.as_str().into());
        let optional = [
            ("contact_id", &self.contact_id),
            ("conversation_id", &self.conversation_id),
            ("session_id", &self.session_id),
            ("message_id", &self.message_id),
            ("agent_id", &self.agent_id),
            ("campaign_id", &self.campaign_id),
            ("emoji", &self.emoji),
            ("channel", &self.channel),
            ("source", &self.source),
            ("medium", &self.medium),
            ("name", &self.name),
        ];
        for (key, value) in optional {
            if let Some(value) = value {
                put(key, value.clone().into());
            }
        }
        if let Some(sender) = self.sender {
            put("sender", sender.as_str().into());
        }
        if self.message_type != MessageType::Text {
            put("message_type", self.message_type.as_str().into());
        }
        if let Some(status) = self.status {
            put("status", status.as_str().into());
        }
        if let Some(code) = self.error_code {
            put("error_code", code.into());
        }
        if let Some(value) = self.value {
            put("value", value.into());
        }
        if let Some(state) = self.state {
            put("state", state.as_str().into());
        }
        if let Some(properties) = &self.properties {
            // Canonical text we produced ourselves, so it always parses.
            if let Ok(value) = serde_json::from_str::<serde_json::Value>(properties) {
                put("properties", value);
            }
        }
        serde_json::Value::Object(object).to_string()
    }
}
