//! WhatsApp Cloud API webhooks → canonical events (SPEC §3). Pure logic, no I/O.
//!
//! One POST body (`object` = `whatsapp_business_account`) becomes a [`WebhookBatch`]. Every
//! `entry[]`, `changes[]` and, inside a `messages` change, every `messages[]`, `statuses[]` and
//! `errors[]` item is visited in payload order:
//!
//! | webhook item | canonical event |
//! |---|---|
//! | `messages[]` of any type but reaction, system, edit, revoke | `message.received`, `event_id` = `wa:<wamid>`, `message_id` = wamid, `message_type` = `type` when it is text, image, video, audio, document, sticker, location, contacts, interactive, button or order, else `unknown` (`unsupported`, `request_welcome`, …) |
//! | … with a `referral` (click-to-WhatsApp ad or post) | also a `touch`: `wa:<wamid>:referral`, `channel` = `referral.source_type`, `campaign_id` = `referral.source_id`, `source` = `referral.source_url` |
//! | `messages[]` type `reaction` | `message.reaction`, `wa:<wamid>`, `message_id` = `reaction.message_id`, `emoji` = `reaction.emoji`, `""` when absent (a removal) |
//! | `statuses[]` | `message.status`, `wa:<id>:<status>`, `message_id` = `id`, `error_code` = the first integer `errors[].code` |
//! | system, edit, revoke messages; `value.errors[]`; changes whose `field` is not `messages` | no event: a [`SkippedItem`] |
//!
//! On every event: `tenant_id` = `tenant_of(value.metadata.phone_number_id)`, `session_id` =
//! that `phone_number_id`, `ts` = `timestamp` × 1000 (unix seconds as a digit string, or a JSON
//! integer), `contact_id` = `from` / `recipient_id` when present, else the business-scoped user id
//! `from_user_id` / `recipient_user_id`.
//!
//! Choices the spec leaves open:
//! - **Determinism.** An event is derived only from its own item and `metadata.phone_number_id`:
//!   nothing from `contacts[]`, entry ids, batching or positions. A redelivered webhook (even with
//!   another `contacts` block) therefore gives byte-identical events, which the pipeline counts as
//!   duplicates. `properties` is always left empty (pricing is not carried over).
//! - **Unknown business number.** When `tenant_of` gives `None`, every item of that change is
//!   skipped as [`SkipKind::UnknownNumber`], never attributed to a guessed tenant. A change with no
//!   `phone_number_id` at all has its messages and statuses rejected (tenant unknown).
//! - **Status values** other than sent, delivered, read, played, failed (e.g. the On-Premises
//!   `deleted`) are rejected with a reason naming the value.
//! - **Group chats.** An inbound message with `group_id` gets `conversation_id` = `group_id` (the
//!   group is the thread, `contact_id` the participant who wrote). A group status keeps
//!   `contact_id` = `recipient_id` (the group); when it names a participant
//!   (`recipient_participant_id`, also seen as `participant_recipient_id`) its `event_id` is
//!   `wa:<id>:<status>:<participant>`, so each participant's receipt is its own event rather than a
//!   conflicting duplicate of the first.
//! - **Validation.** Every event is checked by [`parse_event`] on its canonical JSON, like any
//!   canonical input; a failure becomes a [`RejectedItem`] whose reason is the `EventError` text. A
//!   malformed item (no id, bad timestamp, no contact, …) is rejected on its own with a reason
//!   `<path>.<field>: <problem>`, and its siblings are unaffected. Only a body that is not a JSON
//!   object with `object` = `whatsapp_business_account` and an `entry` array fails as a whole
//!   ([`WebhookError`]). Fields that are not read are skipped undecoded, so e.g. a cut surrogate in
//!   a text body does not lose the message.

use crate::event::{Event, EventType, MessageType, Status, Text};
use crate::parse::parse_event;
use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;
use std::collections::HashSet;
use std::fmt;

/// The `object` of every WhatsApp Business Account webhook.
pub const WHATSAPP_OBJECT: &str = "whatsapp_business_account";

/// Inbound `type`s kept as the canonical `message_type`; any other type is `unknown`.
const INBOUND_MESSAGE_TYPES: &[MessageType] = &[
    MessageType::Text,
    MessageType::Image,
    MessageType::Video,
    MessageType::Audio,
    MessageType::Document,
    MessageType::Sticker,
    MessageType::Location,
    MessageType::Contacts,
    MessageType::Interactive,
    MessageType::Button,
    MessageType::Order,
];

/// What one webhook POST body became.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct WebhookBatch {
    /// One entry per canonical event or per item that could not become one, in payload order.
    pub items: Vec<Result<Event, RejectedItem>>,
    /// Items that by SPEC §3 give no event (system/edit/revoke messages, value-level errors,
    /// changes of fields other than `messages`, unknown business numbers), for counts and logs.
    pub skipped: Vec<SkippedItem>,
}

impl WebhookBatch {
    /// The accepted events, in payload order.
    pub fn events(&self) -> impl Iterator<Item = &Event> {
        self.items.iter().filter_map(|item| item.as_ref().ok())
    }

    /// The rejected items, in payload order.
    pub fn rejected(&self) -> impl Iterator<Item = &RejectedItem> {
        self.items.iter().filter_map(|item| item.as_ref().err())
    }
}

/// A webhook item that should have become an event but could not.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RejectedItem {
    /// The tenant owning the business number, when it is known.
    pub tenant_id: Option<String>,
    /// What is wrong, naming the field (`<path>.<field>: <problem>`, or the `EventError` text).
    pub reason: String,
    /// The offending item's JSON, exactly as received.
    pub raw: String,
}

/// A webhook item that by SPEC §3 gives no event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SkippedItem {
    pub kind: SkipKind,
    /// Where it was and what it was, for logs.
    pub detail: String,
}

/// Why an item gave no event.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum SkipKind {
    /// A `system` message (number or user id change, identity change).
    System,
    /// An `edit` message.
    Edit,
    /// A `revoke` (deleted for everyone) message.
    Revoke,
    /// An item of `value.errors[]`, with its `code` when it has an integer one.
    ValueError { code: Option<i64> },
    /// A change whose `field` is not `messages` (the field is given).
    OtherField(String),
    /// An item of a change whose `phone_number_id` (given) belongs to no tenant.
    UnknownNumber(String),
}

/// Why a whole body could not be read. Problems inside it are per item ([`RejectedItem`]).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum WebhookError {
    /// Not JSON; `line` and `column` (1-based) say where reading failed.
    #[error("body is not valid JSON: {detail}")]
    Json { line: usize, column: usize, detail: String },
    #[error("body must be a JSON object, found {found}")]
    NotAnObject { found: &'static str },
    #[error("`object` is {found}, expected `whatsapp_business_account`")]
    WrongObject { found: String },
    #[error("`entry` {problem}")]
    Entry { problem: String },
}

impl WebhookError {
    fn json(error: &serde_json::Error) -> Self {
        WebhookError::Json { line: error.line(), column: error.column(), detail: error.to_string() }
    }
}

/// Normalizes one webhook POST body. `tenant_of(phone_number_id)` gives the tenant owning that
/// business number, or `None` (the change's items are then skipped as
/// [`SkipKind::UnknownNumber`]). Never panics; see the module doc for the mapping.
pub fn normalize_webhook(
    body: &[u8],
    tenant_of: &dyn Fn(&str) -> Option<String>,
) -> Result<WebhookBatch, WebhookError> {
    let root: &RawValue = serde_json::from_slice(body).map_err(|e| WebhookError::json(&e))?;
    let found = kind_of(root);
    if found != "an object" {
        return Err(WebhookError::NotAnObject { found });
    }
    let root: RawObject = serde_json::from_str(root.get()).map_err(|e| WebhookError::json(&e))?;
    let object = root.get("object").map(|raw| as_string(raw).map_err(|_| kind_of(raw)));
    match object {
        Some(Ok(object)) if object == WHATSAPP_OBJECT => {}
        Some(Ok(object)) => return Err(WebhookError::WrongObject { found: format!("`{}`", short(&object)) }),
        Some(Err(kind)) => return Err(WebhookError::WrongObject { found: kind.to_owned() }),
        None => return Err(WebhookError::WrongObject { found: "missing".to_owned() }),
    }
    let entries = match root.get("entry") {
        None => return Err(WebhookError::Entry { problem: "is missing".to_owned() }),
        Some(entry) => as_array(entry).map_err(|problem| WebhookError::Entry { problem })?,
    };

    let mut batch = WebhookBatch::default();
    for (i, entry) in entries.into_iter().enumerate() {
        let path = format!("entry[{i}]");
        let entry_object = match RawObject::parse(entry) {
            Ok(object) => object,
            Err(problem) => {
                batch.reject(None, format!("{path}: {problem}"), entry);
                continue;
            }
        };
        let changes = match entry_object.get("changes").map(as_array) {
            Some(Ok(changes)) => changes,
            Some(Err(problem)) => {
                batch.reject(None, format!("{path}.changes: {problem}"), entry);
                continue;
            }
            None => {
                batch.reject(None, format!("{path}.changes: missing"), entry);
                continue;
            }
        };
        for (j, change) in changes.into_iter().enumerate() {
            normalize_change(&format!("{path}.changes[{j}]"), change, tenant_of, &mut batch);
        }
    }
    Ok(batch)
}

/// Whose items these are.
enum Owner {
    Tenant {
        tenant: String,
        number: String,
    },
    /// The `phone_number_id`, which belongs to no tenant.
    Unknown(String),
    /// Why the `phone_number_id` could not be read.
    Missing(String),
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum ItemList {
    Messages,
    Statuses,
    Errors,
}

fn normalize_change(
    path: &str,
    change: &RawValue,
    tenant_of: &dyn Fn(&str) -> Option<String>,
    batch: &mut WebhookBatch,
) {
    let change_object = match RawObject::parse(change) {
        Ok(object) => object,
        Err(problem) => return batch.reject(None, format!("{path}: {problem}"), change),
    };
    let field = match change_object.get("field").map(as_string) {
        Some(Ok(field)) => field,
        Some(Err(problem)) => return batch.reject(None, format!("{path}.field: {problem}"), change),
        None => return batch.reject(None, format!("{path}.field: missing"), change),
    };
    if field != "messages" {
        let detail = format!("{path}: field `{}` carries no message events", short(&field));
        batch.skipped.push(SkippedItem { kind: SkipKind::OtherField(field.into()), detail });
        return;
    }
    let value = match change_object.get("value").map(RawObject::parse) {
        Some(Ok(value)) => value,
        Some(Err(problem)) => return batch.reject(None, format!("{path}.value: {problem}"), change),
        None => return batch.reject(None, format!("{path}.value: missing"), change),
    };
    let value_path = format!("{path}.value");
    let owner = match phone_number_id(&value, &value_path) {
        Ok(number) => match tenant_of(&number) {
            Some(tenant) => Owner::Tenant { tenant, number },
            None => Owner::Unknown(number),
        },
        Err(reason) => Owner::Missing(reason),
    };
    let owner_tenant = match &owner {
        Owner::Tenant { tenant, .. } => Some(tenant.as_str()),
        _ => None,
    };

    for (key, list) in value.fields() {
        let kind = match key {
            "messages" => ItemList::Messages,
            "statuses" => ItemList::Statuses,
            "errors" => ItemList::Errors,
            _ => continue,
        };
        let list_path = format!("{value_path}.{key}");
        let items = match as_array(list) {
            Ok(items) => items,
            Err(problem) => {
                match (&owner, kind) {
                    (Owner::Unknown(number), _) => batch.skip_unknown(number, &list_path),
                    (_, ItemList::Errors) => batch.skipped.push(SkippedItem {
                        kind: SkipKind::ValueError { code: None },
                        detail: format!("{list_path}: {problem}"),
                    }),
                    _ => batch.reject(owner_tenant, format!("{list_path}: {problem}"), list),
                }
                continue;
            }
        };
        for (k, item) in items.into_iter().enumerate() {
            let item_path = format!("{list_path}[{k}]");
            match (&owner, kind) {
                (Owner::Unknown(number), _) => batch.skip_unknown(number, &item_path),
                (_, ItemList::Errors) => batch.skipped.push(value_error(&item_path, item)),
                (Owner::Missing(reason), _) => batch.reject(None, reason.clone(), item),
                (Owner::Tenant { tenant, number }, ItemList::Messages) => {
                    match message_events(&item_path, item, tenant, number) {
                        Ok(Outcome::Skipped(kind, detail)) => batch.skipped.push(SkippedItem { kind, detail }),
                        Ok(Outcome::Events(events)) => {
                            for event in events {
                                batch.push(tenant, event, item);
                            }
                        }
                        Err(reason) => batch.reject(Some(tenant), reason, item),
                    }
                }
                (Owner::Tenant { tenant, number }, ItemList::Statuses) => {
                    let event = status_event(&item_path, item, tenant, number);
                    batch.push(tenant, event, item);
                }
            }
        }
    }
}

impl WebhookBatch {
    fn reject(&mut self, tenant: Option<&str>, reason: String, raw: &RawValue) {
        self.items.push(Err(RejectedItem { tenant_id: tenant.map(str::to_owned), reason, raw: raw.get().to_owned() }));
    }

    fn skip_unknown(&mut self, number: &str, path: &str) {
        self.skipped.push(SkippedItem {
            kind: SkipKind::UnknownNumber(number.to_owned()),
            detail: format!("{path}: phone_number_id `{}` belongs to no tenant", short(number)),
        });
    }

    /// Validates a built event as canonical input would be, then records it or its rejection.
    fn push(&mut self, tenant: &str, event: Result<Event, String>, raw: &RawValue) {
        let checked = event.and_then(|event| parse_event(event.to_json().as_bytes()).map_err(|e| e.to_string()));
        match checked {
            Ok(event) => self.items.push(Ok(event)),
            Err(reason) => self.reject(Some(tenant), reason, raw),
        }
    }
}

fn phone_number_id(value: &RawObject<'_>, path: &str) -> Result<String, String> {
    let unknown = "so the tenant is unknown";
    let metadata = value.get("metadata").ok_or_else(|| format!("{path}.metadata: missing, {unknown}"))?;
    let metadata = RawObject::parse(metadata).map_err(|problem| format!("{path}.metadata: {problem}, {unknown}"))?;
    let number = metadata
        .get("phone_number_id")
        .ok_or_else(|| format!("{path}.metadata.phone_number_id: missing, {unknown}"))?;
    let number =
        as_string(number).map_err(|problem| format!("{path}.metadata.phone_number_id: {problem}, {unknown}"))?;
    if number.is_empty() {
        return Err(format!("{path}.metadata.phone_number_id: empty, {unknown}"));
    }
    Ok(number.into())
}

enum Outcome {
    Skipped(SkipKind, String),
    /// The events of one message (a `message.received` may bring a referral `touch`); an `Err`
    /// is the reason one of them could not be built.
    Events(Vec<Result<Event, String>>),
}

fn message_events(path: &str, raw: &RawValue, tenant: &str, session: &str) -> Result<Outcome, String> {
    let item = Item::parse(path, raw)?;
    let kind = item.required("type")?;
    let skip = match kind.as_str() {
        "system" => Some(SkipKind::System),
        "edit" => Some(SkipKind::Edit),
        "revoke" => Some(SkipKind::Revoke),
        _ => None,
    };
    if let Some(skip) = skip {
        let id = item.text("id").ok().flatten().unwrap_or_else(|| "without id".into());
        return Ok(Outcome::Skipped(skip, format!("{path}: {kind} message {}", short(&id))));
    }
    let wamid = item.required("id")?;
    let ts = item.timestamp_ms()?;
    let contact = item.contact("from", "from_user_id")?;
    let event_id = format!("wa:{wamid}");

    if kind == "reaction" {
        let reaction = item.object("reaction")?;
        let mut event = Event::new(tenant, &event_id, ts, EventType::MessageReaction);
        event.contact_id = Some(contact);
        event.session_id = Some(session.into());
        event.message_id = Some(reaction.required("message_id")?);
        event.emoji = Some(reaction.string("emoji")?.unwrap_or_default());
        return Ok(Outcome::Events(vec![Ok(event)]));
    }

    let mut received = Event::new(tenant, &event_id, ts, EventType::MessageReceived);
    received.contact_id = Some(contact.clone());
    received.conversation_id = item.text("group_id")?;
    received.session_id = Some(session.into());
    received.message_id = Some(wamid.clone());
    received.message_type = match MessageType::parse(&kind) {
        Some(known) if INBOUND_MESSAGE_TYPES.contains(&known) => known,
        _ => MessageType::Unknown,
    };
    let mut events = vec![Ok(received)];
    if item.object.get("referral").is_some() {
        let touch = item.object("referral").and_then(|referral| {
            let mut touch = Event::new(tenant, &format!("wa:{wamid}:referral"), ts, EventType::Touch);
            touch.contact_id = Some(contact);
            touch.session_id = Some(session.into());
            touch.channel = referral.text("source_type")?;
            touch.campaign_id = referral.text("source_id")?;
            touch.source = referral.text("source_url")?;
            Ok(touch)
        });
        events.push(touch);
    }
    Ok(Outcome::Events(events))
}

fn status_event(path: &str, raw: &RawValue, tenant: &str, session: &str) -> Result<Event, String> {
    let item = Item::parse(path, raw)?;
    let id = item.required("id")?;
    let status_text = item.required("status")?;
    let status = Status::parse(&status_text).ok_or_else(|| {
        format!("{path}.status: unknown value `{}` (expected one of {})", short(&status_text), Status::expected())
    })?;
    let ts = item.timestamp_ms()?;
    let contact = item.contact("recipient_id", "recipient_user_id")?;
    let participant = match item.text("recipient_participant_id")? {
        Some(participant) => Some(participant),
        None => item.text("participant_recipient_id")?,
    };
    let event_id = match participant {
        Some(participant) => format!("wa:{id}:{status}:{participant}"),
        None => format!("wa:{id}:{status}"),
    };
    let mut event = Event::new(tenant, &event_id, ts, EventType::MessageStatus);
    event.contact_id = Some(contact);
    event.session_id = Some(session.into());
    event.message_id = Some(id);
    event.status = Some(status);
    event.error_code = item.object.get("errors").and_then(first_error_code);
    Ok(event)
}

/// The first integer `code` of an `errors[]` array.
fn first_error_code(errors: &RawValue) -> Option<i64> {
    as_array(errors).ok()?.into_iter().find_map(|error| {
        let error = RawObject::parse(error).ok()?;
        serde_json::from_str::<i64>(error.get("code")?.get()).ok()
    })
}

fn value_error(path: &str, raw: &RawValue) -> SkippedItem {
    let error = RawObject::parse(raw).ok();
    let field = |key: &str| error.as_ref().and_then(|error| error.get(key));
    let code = field("code").and_then(|code| serde_json::from_str::<i64>(code.get()).ok());
    let title = field("title").and_then(|title| as_string(title).ok()).unwrap_or_default();
    let detail = match code {
        Some(code) => format!("{path}: value error {code}: {}", short(&title)),
        None => format!("{path}: value error without code: {}", short(&title)),
    };
    SkippedItem { kind: SkipKind::ValueError { code }, detail }
}

/// A JSON object whose values are kept raw (undecoded), in payload order.
struct RawObject<'a> {
    fields: Vec<(String, &'a RawValue)>,
}

impl<'de> Deserialize<'de> for RawObject<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ObjectVisitor;
        impl<'de> Visitor<'de> for ObjectVisitor {
            type Value = RawObject<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut fields = Vec::new();
                while let Some(field) = map.next_entry::<String, &'de RawValue>()? {
                    fields.push(field);
                }
                Ok(RawObject { fields })
            }
        }
        deserializer.deserialize_map(ObjectVisitor)
    }
}

impl<'a> RawObject<'a> {
    fn parse(raw: &'a RawValue) -> Result<Self, String> {
        match kind_of(raw) {
            "an object" => serde_json::from_str(raw.get()).map_err(|e| e.to_string()),
            other => Err(format!("expected an object, found {other}")),
        }
    }

    /// The value of `key` (the last one when repeated, as serde_json does); `null` counts as absent.
    fn get(&self, key: &str) -> Option<&'a RawValue> {
        self.fields.iter().rev().find(|(name, _)| name == key).map(|&(_, raw)| raw).filter(|raw| raw.get() != "null")
    }

    /// The fields in payload order, each key once (at its last occurrence).
    fn fields(&self) -> Vec<(&str, &'a RawValue)> {
        let mut seen = HashSet::new();
        let mut fields: Vec<_> = self
            .fields
            .iter()
            .rev()
            .filter(|(name, _)| seen.insert(name.as_str()))
            .map(|(name, raw)| (name.as_str(), *raw))
            .collect();
        fields.reverse();
        fields
    }
}

/// A webhook object with its path, for reasons that say where the problem is.
struct Item<'a> {
    path: String,
    object: RawObject<'a>,
}

impl<'a> Item<'a> {
    fn parse(path: &str, raw: &'a RawValue) -> Result<Self, String> {
        let object = RawObject::parse(raw).map_err(|problem| format!("{path}: {problem}"))?;
        Ok(Item { path: path.to_owned(), object })
    }

    /// A string field as is (`""` included); `None` when absent or null.
    fn string(&self, key: &str) -> Result<Option<Text>, String> {
        match self.object.get(key) {
            None => Ok(None),
            Some(raw) => as_string(raw).map(Some).map_err(|problem| format!("{}.{key}: {problem}", self.path)),
        }
    }

    /// A string field, `None` when absent, null or empty.
    fn text(&self, key: &str) -> Result<Option<Text>, String> {
        Ok(self.string(key)?.filter(|text| !text.is_empty()))
    }

    fn required(&self, key: &str) -> Result<Text, String> {
        self.text(key)?.ok_or_else(|| format!("{}.{key}: missing", self.path))
    }

    /// A required nested object.
    fn object(&self, key: &str) -> Result<Item<'a>, String> {
        let path = format!("{}.{key}", self.path);
        match self.object.get(key) {
            None => Err(format!("{path}: missing")),
            Some(raw) => Item::parse(&path, raw),
        }
    }

    /// The phone (`wa_id`) when present, else the business-scoped user id.
    fn contact(&self, phone: &str, user_id: &str) -> Result<Text, String> {
        match self.text(phone)? {
            Some(contact) => Ok(contact),
            None => self
                .text(user_id)?
                .ok_or_else(|| format!("{}: no contact: neither `{phone}` nor `{user_id}` is given", self.path)),
        }
    }

    /// `timestamp` (unix seconds, a digit string or an integer) in milliseconds.
    fn timestamp_ms(&self) -> Result<i64, String> {
        let path = format!("{}.timestamp", self.path);
        let raw = self.object.get("timestamp").ok_or_else(|| format!("{path}: missing"))?;
        let seconds = match raw.get().as_bytes().first() {
            Some(b'"') => {
                let text = as_string(raw).map_err(|problem| format!("{path}: {problem}"))?;
                let digits = !text.is_empty() && text.len() <= 15 && text.bytes().all(|b| b.is_ascii_digit());
                match text.parse::<i64>() {
                    Ok(seconds) if digits => seconds,
                    _ => return Err(format!("{path}: `{}` is not unix seconds", short(&text))),
                }
            }
            Some(b'-' | b'0'..=b'9') => serde_json::from_str::<i64>(raw.get())
                .map_err(|_| format!("{path}: {} is not a whole number of unix seconds", short(raw.get())))?,
            _ => return Err(format!("{path}: expected unix seconds (a string or an integer), found {}", kind_of(raw))),
        };
        seconds.checked_mul(1000).ok_or_else(|| format!("{path}: {seconds} is out of range"))
    }
}

fn kind_of(raw: &RawValue) -> &'static str {
    match raw.get().trim_start().as_bytes().first() {
        Some(b'{') => "an object",
        Some(b'[') => "an array",
        Some(b'"') => "a string",
        Some(b't' | b'f') => "a boolean",
        Some(b'n') => "null",
        _ => "a number",
    }
}

fn as_string(raw: &RawValue) -> Result<Text, String> {
    match kind_of(raw) {
        "a string" => serde_json::from_str(raw.get()).map_err(|e| e.to_string()),
        other => Err(format!("expected a string, found {other}")),
    }
}

fn as_array(raw: &RawValue) -> Result<Vec<&RawValue>, String> {
    match kind_of(raw) {
        "an array" => serde_json::from_str(raw.get()).map_err(|e| e.to_string()),
        other => Err(format!("must be an array, found {other}")),
    }
}

/// At most 64 characters of `text`, for reasons and log details.
fn short(text: &str) -> String {
    let mut chars = text.chars();
    let mut out: String = chars.by_ref().take(64).collect();
    if chars.next().is_some() {
        out.push('…');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const ACME_NUMBER: &str = "118273645501234";
    const GLOBEX_NUMBER: &str = "118273645507777";
    const MARINA: &str = "5511987654321";
    const RAFAEL: &str = "5521991112233";

    const INBOUND_TEXT: &[u8] = include_bytes!("../../fixtures/webhooks/inbound_text.json");
    const INBOUND_TEXT_REDELIVERED: &[u8] = include_bytes!("../../fixtures/webhooks/inbound_text_redelivered.json");
    const REACTION_AND_REMOVAL: &[u8] = include_bytes!("../../fixtures/webhooks/reaction_and_removal.json");
    const INTERACTIVE: &[u8] = include_bytes!("../../fixtures/webhooks/interactive.json");
    const REFERRAL: &[u8] = include_bytes!("../../fixtures/webhooks/referral.json");
    const STATUS_LIFECYCLE: &[u8] = include_bytes!("../../fixtures/webhooks/status_lifecycle.json");
    const FAILED_STATUS: &[u8] = include_bytes!("../../fixtures/webhooks/failed_status.json");
    const VALUE_ERROR: &[u8] = include_bytes!("../../fixtures/webhooks/value_error.json");
    const BATCH: &[u8] = include_bytes!("../../fixtures/webhooks/batch.json");
    const BSUID_ONLY: &[u8] = include_bytes!("../../fixtures/webhooks/bsuid_only.json");
    const GROUP: &[u8] = include_bytes!("../../fixtures/webhooks/group.json");
    const MALFORMED: &[u8] = include_bytes!("../../fixtures/webhooks/malformed.json");

    const ALL_FIXTURES: &[(&str, &[u8])] = &[
        ("inbound_text", INBOUND_TEXT),
        ("inbound_text_redelivered", INBOUND_TEXT_REDELIVERED),
        ("reaction_and_removal", REACTION_AND_REMOVAL),
        ("interactive", INTERACTIVE),
        ("referral", REFERRAL),
        ("status_lifecycle", STATUS_LIFECYCLE),
        ("failed_status", FAILED_STATUS),
        ("value_error", VALUE_ERROR),
        ("batch", BATCH),
        ("bsuid_only", BSUID_ONLY),
        ("group", GROUP),
        ("malformed", MALFORMED),
    ];

    fn tenants(number: &str) -> Option<String> {
        match number {
            ACME_NUMBER => Some("acme".to_owned()),
            GLOBEX_NUMBER => Some("globex".to_owned()),
            _ => None,
        }
    }

    fn run(body: &[u8]) -> WebhookBatch {
        normalize_webhook(body, &tenants).expect("a readable webhook body")
    }

    fn lines(batch: &WebhookBatch) -> Vec<String> {
        batch.events().map(Event::to_json).collect()
    }

    /// Every item in order: an event's canonical JSON, or `REJECTED <reason>`.
    fn outline(batch: &WebhookBatch) -> Vec<String> {
        batch
            .items
            .iter()
            .map(|item| match item {
                Ok(event) => event.to_json(),
                Err(rejected) => format!("REJECTED {}", rejected.reason),
            })
            .collect()
    }

    fn skip_kinds(batch: &WebhookBatch) -> Vec<SkipKind> {
        batch.skipped.iter().map(|skipped| skipped.kind.clone()).collect()
    }

    #[test]
    fn inbound_text_becomes_one_message_received() {
        let batch = run(INBOUND_TEXT);
        assert_eq!(
            outline(&batch),
            [
                r#"{"event_id":"wa:wamid.HBgNNTUxMTk4NzY1NDMyMRUCABIYFjNFQjBBMUIyQzNENEU1RjYwNzA4MDkA","tenant_id":"acme","ts":1771003200000,"type":"message.received","contact_id":"5511987654321","conversation_id":"5511987654321","session_id":"118273645501234","message_id":"wamid.HBgNNTUxMTk4NzY1NDMyMRUCABIYFjNFQjBBMUIyQzNENEU1RjYwNzA4MDkA"}"#
            ]
        );
        assert!(batch.skipped.is_empty());
        let event = batch.events().next().expect("one event");
        assert_eq!(event.ts, 1_771_003_200_000);
        assert_eq!(event.kind, EventType::MessageReceived);
        assert_eq!(event.message_type, MessageType::Text);
        assert_eq!(event.properties, None);
    }

    #[test]
    fn redelivery_with_another_contacts_block_gives_identical_events() {
        let first = run(INBOUND_TEXT);
        assert_eq!(first, run(INBOUND_TEXT), "same body twice");
        let again = run(INBOUND_TEXT_REDELIVERED);
        assert_ne!(INBOUND_TEXT, INBOUND_TEXT_REDELIVERED);
        assert_eq!(lines(&first), lines(&again));
        assert_eq!(first.items, again.items);
        for (name, body) in ALL_FIXTURES {
            assert_eq!(run(body), run(body), "{name} normalized twice");
        }
    }

    #[test]
    fn reactions_decode_escaped_emoji_and_removals_are_empty() {
        let batch = run(REACTION_AND_REMOVAL);
        let reacted = "wamid.HBgNNTUxMTk4NzY1NDMyMRUCABEYEjQ0QUU3RDg5QjEyQ0E0NUE2MAA=";
        assert_eq!(
            outline(&batch)[0],
            format!(
                r#"{{"event_id":"wa:wamid.HBgNNTUxMTk4NzY1NDMyMRUCABIYFDNBMjIxNkQ4QzE3RjQ0QjAwMUE4AA==","tenant_id":"acme","ts":1771003321000,"type":"message.reaction","contact_id":"5511987654321","conversation_id":"5511987654321","session_id":"118273645501234","message_id":"{reacted}","emoji":"👍"}}"#
            )
        );
        let events: Vec<&Event> = batch.events().collect();
        assert_eq!(events.len(), 4);
        let emoji: Vec<&str> = events.iter().map(|e| e.emoji.as_deref().unwrap_or("<none>")).collect();
        assert_eq!(emoji, ["\u{1F44D}", "", "\u{2764}\u{FE0F}", ""]);
        let contacts: Vec<&str> = events.iter().map(|e| e.contact_id.as_deref().unwrap_or("")).collect();
        assert_eq!(contacts, [MARINA, MARINA, RAFAEL, RAFAEL]);
        let ts: Vec<i64> = events.iter().map(|e| e.ts).collect();
        assert_eq!(ts, [1_771_003_321_000, 1_771_003_380_000, 1_771_003_390_000, 1_771_003_395_000]);
        for event in &events {
            assert_eq!(event.kind, EventType::MessageReaction);
            assert_eq!(event.message_id.as_deref(), Some(reacted));
            assert!(event.event_id.starts_with("wa:wamid."));
        }
        assert_eq!(events[1].event_id, "wa:wamid.HBgNNTUxMTk4NzY1NDMyMRUCABIYFDNBOEUwRjQ3NTk2QjE3MDA5QkQyAA==");
        assert!(batch.skipped.is_empty());
    }

    #[test]
    fn interactive_and_button_replies_keep_their_type() {
        let batch = run(INTERACTIVE);
        let types: Vec<(&str, MessageType)> = batch.events().map(|e| (e.event_id.as_str(), e.message_type)).collect();
        assert_eq!(
            types,
            [
                ("wa:wamid.HBgNNTUxMTk4NzY1NDMyMRUCABIYFDNBNEY5QjJDRDcwMTJGNjg4RTRBAA==", MessageType::Interactive),
                ("wa:wamid.HBgNNTUxMTk4NzY1NDMyMRUCABIYFDNBMTExMjIyMzMzNDQ0NTU1NjY2AA==", MessageType::Interactive),
                ("wa:wamid.HBgNNTUxMTk4NzY1NDMyMRUCABIYFDNBNzc3ODg4OTk5MDAwQUFBQkJCAA==", MessageType::Interactive),
                ("wa:wamid.HBgNNTUxMTk4NzY1NDMyMRUCABIYFDNBQkJCQ0NDREREREVFRUZGRjAwAA==", MessageType::Button),
                // The pywa case: `type: interactive` with no `interactive` object.
                ("wa:wamid.HBgNNTUxMTk4NzY1NDMyMRUCABIYFDNBREVBREJFRUYwMDExMjIzMzQ0AA==", MessageType::Interactive),
            ]
        );
        assert_eq!(batch.rejected().count(), 0);
        assert_eq!(skip_kinds(&batch), [SkipKind::ValueError { code: Some(131000) }]);
        assert_eq!(
            batch.skipped[0].detail,
            "entry[1].changes[0].value.errors[0]: value error 131000: Something went wrong"
        );
        assert_eq!(
            lines(&batch)[3],
            r#"{"event_id":"wa:wamid.HBgNNTUxMTk4NzY1NDMyMRUCABIYFDNBQkJCQ0NDREREREVFRUZGRjAwAA==","tenant_id":"acme","ts":1771003440000,"type":"message.received","contact_id":"5511987654321","conversation_id":"5511987654321","session_id":"118273645501234","message_id":"wamid.HBgNNTUxMTk4NzY1NDMyMRUCABIYFDNBQkJCQ0NDREREREVFRUZGRjAwAA==","message_type":"button"}"#
        );
    }

    #[test]
    fn referral_adds_a_touch_with_the_ad_fields() {
        let batch = run(REFERRAL);
        assert_eq!(
            outline(&batch),
            [
                r#"{"event_id":"wa:wamid.HBgNNTUyMTk5MTExMjIzMxUCABIYFDNBMEQ1NTZGNzE5OUIyQzA0NzE3AA==","tenant_id":"acme","ts":1771004000000,"type":"message.received","contact_id":"5521991112233","conversation_id":"5521991112233","session_id":"118273645501234","message_id":"wamid.HBgNNTUyMTk5MTExMjIzMxUCABIYFDNBMEQ1NTZGNzE5OUIyQzA0NzE3AA=="}"#,
                r#"{"event_id":"wa:wamid.HBgNNTUyMTk5MTExMjIzMxUCABIYFDNBMEQ1NTZGNzE5OUIyQzA0NzE3AA==:referral","tenant_id":"acme","ts":1771004000000,"type":"touch","contact_id":"5521991112233","conversation_id":"5521991112233","session_id":"118273645501234","campaign_id":"120231000045678901","channel":"ad","source":"https://fb.me/9xQk2Lp"}"#,
                r#"{"event_id":"wa:wamid.HBgNNTUzMTk3NzY2NTU0NBUCABIYFDNBOTg3NjU0MzIxMEZFRENCQTk4AA==","tenant_id":"acme","ts":1771004100000,"type":"message.received","contact_id":"5531977665544","conversation_id":"5531977665544","session_id":"118273645501234","message_id":"wamid.HBgNNTUzMTk3NzY2NTU0NBUCABIYFDNBOTg3NjU0MzIxMEZFRENCQTk4AA==","message_type":"image"}"#,
                r#"{"event_id":"wa:wamid.HBgNNTUzMTk3NzY2NTU0NBUCABIYFDNBOTg3NjU0MzIxMEZFRENCQTk4AA==:referral","tenant_id":"acme","ts":1771004100000,"type":"touch","contact_id":"5531977665544","conversation_id":"5531977665544","session_id":"118273645501234","campaign_id":"17912345678901234","channel":"post","source":"https://www.instagram.com/p/C9xYz12AbCd/"}"#,
            ]
        );
        assert!(batch.skipped.is_empty());
    }

    #[test]
    fn status_lifecycle_gives_one_event_per_status() {
        let batch = run(STATUS_LIFECYCLE);
        let wamid = "wamid.HBgNNTUyMTk5MTExMjIzMxUCABEYEkY3QzJBOTk0QjE1RDg4QzA1MwA=";
        assert_eq!(
            outline(&batch)[0],
            format!(
                r#"{{"event_id":"wa:{wamid}:sent","tenant_id":"acme","ts":1771010000000,"type":"message.status","contact_id":"5521991112233","conversation_id":"5521991112233","session_id":"118273645501234","message_id":"{wamid}","status":"sent"}}"#
            )
        );
        let summary: Vec<(String, i64, Option<Status>, Option<&str>)> =
            batch.events().map(|e| (e.event_id.to_string(), e.ts, e.status, e.contact_id.as_deref())).collect();
        assert_eq!(
            summary,
            [
                (format!("wa:{wamid}:sent"), 1_771_010_000_000, Some(Status::Sent), Some(RAFAEL)),
                // `recipient_id` wins over `recipient_user_id` when both are given.
                (format!("wa:{wamid}:delivered"), 1_771_010_004_000, Some(Status::Delivered), Some(RAFAEL)),
                (format!("wa:{wamid}:read"), 1_771_011_290_000, Some(Status::Read), Some(RAFAEL)),
                (
                    "wa:wamid.HBgNNTUxMTk4NzY1NDMyMRUCABEYEjc3N0E5QkMxRDJFM0Y0MDUwNgA=:played".to_owned(),
                    1_771_011_300_000,
                    Some(Status::Played),
                    Some(MARINA)
                ),
            ]
        );
        for event in batch.events() {
            assert_eq!(event.kind, EventType::MessageStatus);
            assert_eq!(event.error_code, None);
            assert_eq!(event.properties, None, "pricing is not carried");
            assert_eq!(event.session_id.as_deref(), Some(ACME_NUMBER));
        }
    }

    #[test]
    fn failed_status_carries_the_first_error_code() {
        let batch = run(FAILED_STATUS);
        assert_eq!(
            outline(&batch),
            [
                r#"{"event_id":"wa:wamid.HBgNNTUxOTg4ODc3NjY1NRUCABEYEjEwQzNGOEFCMjI3NkU0QkQ5OAA=:failed","tenant_id":"acme","ts":1771012001000,"type":"message.status","contact_id":"5519988776655","conversation_id":"5519988776655","session_id":"118273645501234","message_id":"wamid.HBgNNTUxOTg4ODc3NjY1NRUCABEYEjEwQzNGOEFCMjI3NkU0QkQ5OAA=","status":"failed","error_code":131049}"#
            ]
        );
        assert!(batch.skipped.is_empty());
    }

    #[test]
    fn value_level_errors_are_skipped_not_events() {
        let batch = run(VALUE_ERROR);
        assert!(batch.items.is_empty());
        assert_eq!(skip_kinds(&batch), [SkipKind::ValueError { code: Some(130429) }]);
        assert_eq!(batch.skipped[0].detail, "entry[0].changes[0].value.errors[0]: value error 130429: Rate limit hit");
    }

    #[test]
    fn batch_covers_every_entry_change_message_and_status() {
        let batch = run(BATCH);
        assert_eq!(batch.rejected().count(), 0, "{:?}", batch.rejected().collect::<Vec<_>>());
        type Row<'a> = (&'a str, &'a str, EventType, MessageType, Option<Status>, Option<&'a str>);
        let summary: Vec<Row> = batch
            .events()
            .map(|e| {
                (
                    e.tenant_id.as_str(),
                    e.session_id.as_deref().unwrap_or(""),
                    e.kind,
                    e.message_type,
                    e.status,
                    e.contact_id.as_deref(),
                )
            })
            .collect();
        use EventType::{MessageReceived as Received, MessageStatus as StatusEvent};
        let joao = Some("5511955554444");
        let acme = |kind, message_type, status, contact| ("acme", ACME_NUMBER, kind, message_type, status, contact);
        assert_eq!(
            summary,
            [
                acme(Received, MessageType::Text, None, Some(MARINA)),
                acme(Received, MessageType::Image, None, Some(MARINA)),
                acme(Received, MessageType::Location, None, joao),
                acme(Received, MessageType::Contacts, None, joao),
                acme(Received, MessageType::Order, None, Some(MARINA)),
                acme(Received, MessageType::Sticker, None, Some(MARINA)),
                acme(Received, MessageType::Unknown, None, joao), // unsupported
                acme(Received, MessageType::Audio, None, Some(MARINA)),
                acme(Received, MessageType::Document, None, joao),
                acme(Received, MessageType::Unknown, None, Some(MARINA)), // request_welcome
                acme(StatusEvent, MessageType::Text, Some(Status::Sent), Some(MARINA)),
                acme(StatusEvent, MessageType::Text, Some(Status::Delivered), Some(MARINA)),
                ("globex", GLOBEX_NUMBER, Received, MessageType::Video, None, Some("5541988887777")),
                ("globex", GLOBEX_NUMBER, StatusEvent, MessageType::Text, Some(Status::Read), Some("5541988887777")),
            ]
        );
        let ts: Vec<i64> = batch.events().map(|e| e.ts / 1000 - 1_771_020_000).collect();
        assert_eq!(ts, [0, 10, 20, 30, 40, 50, 70, 100, 110, 120, 5, 7, 200, 210]);
        assert_eq!(
            batch.events().next().map(|e| e.event_id.as_str()),
            Some("wa:wamid.HBgNNTUxMTk4NzY1NDMyMRUCABIYFDNCMDAwMDAwMDAwMDAwMDAxAA==")
        );
        assert_eq!(
            skip_kinds(&batch),
            [
                SkipKind::System,
                SkipKind::Edit,
                SkipKind::Revoke,
                SkipKind::OtherField("message_template_status_update".to_owned()),
                SkipKind::UnknownNumber("100000000000001".to_owned()),
                SkipKind::UnknownNumber("100000000000001".to_owned()),
                SkipKind::ValueError { code: Some(131056) },
            ]
        );
        assert_eq!(
            batch.skipped[0].detail,
            "entry[0].changes[0].value.messages[6]: system message wamid.HBgNNTUxMTk4NzY1NDMyMRUCABIYFDNCMDAwMDAwMDAwMDAwMDA3AA=="
        );
        assert_eq!(
            batch.skipped[4].detail,
            "entry[2].changes[0].value.messages[0]: phone_number_id `100000000000001` belongs to no tenant"
        );
    }

    #[test]
    fn username_adopters_are_keyed_by_their_business_scoped_user_id() {
        let batch = run(BSUID_ONLY);
        assert_eq!(
            outline(&batch),
            [
                r#"{"event_id":"wa:wamid.HBgVQlIuMTUwMjU3NjM5NDY1NTg0MxUCABIYFDNBQlNVSUQwMDAwMDAwMDAwMDEA","tenant_id":"acme","ts":1771030000000,"type":"message.received","contact_id":"BR.1502576394655843","conversation_id":"BR.1502576394655843","session_id":"118273645501234","message_id":"wamid.HBgVQlIuMTUwMjU3NjM5NDY1NTg0MxUCABIYFDNBQlNVSUQwMDAwMDAwMDAwMDEA"}"#,
                r#"{"event_id":"wa:wamid.HBgVQlIuMTUwMjU3NjM5NDY1NTg0MxUCABEYEkJTVUlEMDAwMDAwMDAwMQA=:delivered","tenant_id":"acme","ts":1771030060000,"type":"message.status","contact_id":"BR.1502576394655843","conversation_id":"BR.1502576394655843","session_id":"118273645501234","message_id":"wamid.HBgVQlIuMTUwMjU3NjM5NDY1NTg0MxUCABEYEkJTVUlEMDAwMDAwMDAwMQA=","status":"delivered"}"#,
            ]
        );
    }

    #[test]
    fn group_messages_thread_by_group_and_statuses_by_participant() {
        let batch = run(GROUP);
        let events: Vec<&Event> = batch.events().collect();
        assert_eq!(events.len(), 3);
        assert_eq!(events[0].contact_id.as_deref(), Some(MARINA));
        assert_eq!(events[0].conversation_id.as_deref(), Some("120363041234567890"));
        let out = "wamid.HBgSMTIwMzYzMDQxMjM0NTY3ODkwFQIAERgSR1JPVVBPVVQwMDAwMDAwMQA=";
        assert_eq!(events[1].event_id, format!("wa:{out}:delivered:{MARINA}"));
        assert_eq!(events[2].event_id, format!("wa:{out}:delivered:{RAFAEL}"));
        for status in &events[1..] {
            assert_eq!(status.contact_id.as_deref(), Some("120363041234567890"));
            assert_eq!(status.message_id.as_deref(), Some(out));
        }
    }

    #[test]
    fn malformed_items_are_rejected_alone() {
        let batch = run(MALFORMED);
        let m = "entry[0].changes[0].value.messages";
        let s = "entry[0].changes[0].value.statuses";
        let wamid = |n: &str| format!("wamid.HBgNNTUxMTk4NzY1NDMyMRUCABIYFDNCQkFEMDAwMDAwMDAwMDAwMD{n}AA==");
        let received = |n: &str, ts: i64, contact: &str| {
            format!(
                r#"{{"event_id":"wa:{id}","tenant_id":"acme","ts":{ts},"type":"message.received","contact_id":"{contact}","conversation_id":"{contact}","session_id":"118273645501234","message_id":"{id}"}}"#,
                id = wamid(n)
            )
        };
        let expected = [
            received("Aw", 1_771_050_000_000, MARINA),
            format!("REJECTED {m}[1].id: missing"),
            format!("REJECTED {m}[2].timestamp: missing"),
            format!("REJECTED {m}[3].timestamp: `17710O5030` is not unix seconds"),
            format!("REJECTED {m}[4].timestamp: 1771050040.5 is not a whole number of unix seconds"),
            format!("REJECTED {m}[5]: no contact: neither `from` nor `from_user_id` is given"),
            format!("REJECTED {m}[6]: expected an object, found a string"),
            // A cut surrogate in the (unread) text body does not lose the message.
            received("A3", 1_771_050_070_000, MARINA),
            format!("REJECTED {m}[8].reaction: missing"),
            // A JSON integer timestamp is accepted too.
            received("A5", 1_771_050_090_000, MARINA),
            "REJECTED event_id: must be 1 to 200 characters".to_owned(),
            received("Ex", 1_771_050_110_000, RAFAEL),
            "REJECTED channel: required for touch".to_owned(),
            format!("REJECTED {m}[12].from: expected a string, found a number"),
            format!("REJECTED {m}[13].type: missing"),
            r#"{"event_id":"wa:wamid.BAD-STATUS-0:sent","tenant_id":"acme","ts":1771050200000,"type":"message.status","contact_id":"5521991112233","conversation_id":"5521991112233","session_id":"118273645501234","message_id":"wamid.BAD-STATUS-0","status":"sent"}"#.to_owned(),
            format!("REJECTED {s}[1].status: unknown value `deleted` (expected one of sent, delivered, read, played, failed)"),
            format!("REJECTED {s}[2].id: missing"),
            format!("REJECTED {s}[3]: no contact: neither `recipient_id` nor `recipient_user_id` is given"),
            "REJECTED ts: out of range (1970-01-01 to 2149-06-04)".to_owned(),
            "REJECTED entry[0].changes[1].value.metadata: missing, so the tenant is unknown".to_owned(),
            "REJECTED entry[0].changes[2].value.messages: must be an array, found an object".to_owned(),
            "REJECTED entry[0].changes[3].field: missing".to_owned(),
            "REJECTED entry[1].changes: missing".to_owned(),
            "REJECTED entry[2]: expected an object, found a number".to_owned(),
            received("Qw", 1_771_050_400_000, MARINA),
        ];
        assert_eq!(outline(&batch), expected);
        assert!(batch.skipped.is_empty());

        let rejected: Vec<&RejectedItem> = batch.rejected().collect();
        // The raw text is the offending item exactly as received.
        assert_eq!(rejected[5].raw, "\"oops\"");
        assert!(rejected[0].raw.starts_with(r#"{"from":"5511987654321","timestamp":"1771050010""#));
        assert_eq!(rejected[18].raw, r#"{"id":"104857600123456"}"#);
        assert_eq!(rejected[19].raw, "42");
        // The tenant is known for items of a known business number, and only for them.
        let tenants: Vec<Option<&str>> = rejected.iter().map(|r| r.tenant_id.as_deref()).collect();
        let mut expected_tenants = vec![Some("acme"); 15];
        expected_tenants.extend([None, Some("acme"), None, None, None]);
        assert_eq!(tenants, expected_tenants);
    }

    #[test]
    fn unknown_business_numbers_are_skipped_never_guessed() {
        let nobody = |_: &str| None;
        let batch = normalize_webhook(INBOUND_TEXT, &nobody).expect("readable");
        assert!(batch.items.is_empty());
        assert_eq!(skip_kinds(&batch), [SkipKind::UnknownNumber(ACME_NUMBER.to_owned())]);

        let batch = normalize_webhook(STATUS_LIFECYCLE, &nobody).expect("readable");
        assert!(batch.items.is_empty());
        assert_eq!(batch.skipped.len(), 4);

        let asked = std::cell::RefCell::new(Vec::new());
        let recording = |number: &str| {
            asked.borrow_mut().push(number.to_owned());
            tenants(number)
        };
        let batch = normalize_webhook(BATCH, &recording).expect("readable");
        assert_eq!(batch.events().count(), 14);
        assert_eq!(*asked.borrow(), [ACME_NUMBER, GLOBEX_NUMBER, "100000000000001", ACME_NUMBER]);
    }

    #[test]
    fn events_are_validated_like_canonical_input() {
        let bad_tenant = |_: &str| Some("not a tenant!".to_owned());
        let batch = normalize_webhook(INBOUND_TEXT, &bad_tenant).expect("readable");
        let rejected: Vec<&RejectedItem> = batch.rejected().collect();
        assert_eq!(rejected.len(), 1);
        assert_eq!(rejected[0].reason, "tenant_id: must match [A-Za-z0-9_.-]{1,64}");
        assert_eq!(rejected[0].tenant_id.as_deref(), Some("not a tenant!"));

        for (name, body) in ALL_FIXTURES {
            for event in run(body).events() {
                assert_eq!(parse_event(event.to_json().as_bytes()).as_ref(), Ok(event), "{name}");
            }
        }
    }

    #[test]
    fn unreadable_bodies_are_webhook_errors() {
        let cases: &[(&[u8], &str)] = &[
            (b"", "body is not valid JSON: EOF while parsing a value at line 1 column 0"),
            (b"garbage", "body is not valid JSON: expected value at line 1 column 1"),
            (
                b"{\"object\":\"whatsapp_business_account\",\"entry\":[",
                "body is not valid JSON: EOF while parsing a list at line 1 column 47",
            ),
            (
                b"{\"object\":\"whatsapp_business_account\"} trailing",
                "body is not valid JSON: trailing characters at line 1 column 40",
            ),
            (b"\xff\xfe{}", "body is not valid JSON: expected value at line 1 column 1"),
            (b"[]", "body must be a JSON object, found an array"),
            (b"null", "body must be a JSON object, found null"),
            (b"{}", "`object` is missing, expected `whatsapp_business_account`"),
            (b"{\"object\":\"page\",\"entry\":[]}", "`object` is `page`, expected `whatsapp_business_account`"),
            (b"{\"object\":7,\"entry\":[]}", "`object` is a number, expected `whatsapp_business_account`"),
            (b"{\"object\":\"whatsapp_business_account\"}", "`entry` is missing"),
            (b"{\"object\":\"whatsapp_business_account\",\"entry\":{}}", "`entry` must be an array, found an object"),
        ];
        for (body, message) in cases {
            let error = normalize_webhook(body, &tenants).expect_err("unreadable");
            assert_eq!(error.to_string(), *message, "{}", String::from_utf8_lossy(body));
        }
        let truncated = normalize_webhook(&BATCH[..100], &tenants).expect_err("truncated");
        assert!(matches!(truncated, WebhookError::Json { line: 1, column: 100, .. }), "{truncated:?}");

        let empty = normalize_webhook(br#"{"object":"whatsapp_business_account","entry":[]}"#, &tenants);
        assert_eq!(empty, Ok(WebhookBatch::default()));
    }

    #[test]
    fn every_truncation_of_every_fixture_is_an_error() {
        for (name, body) in ALL_FIXTURES {
            let end = body.iter().rposition(|b| *b == b'}').expect("a closing brace");
            for cut in 0..end {
                let result = normalize_webhook(&body[..cut], &tenants);
                assert!(matches!(result, Err(WebhookError::Json { .. })), "{name} cut at {cut}: {result:?}");
            }
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        // Deterministic mutations of every fixture: flipped, deleted and inserted bytes.
        let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        const NOISE: &[u8] = b"{}[]\",:0123456789-.eE \\u/tfnabcxyz\x00\xff";
        let mut outcomes = [0usize; 2];
        for (_, body) in ALL_FIXTURES {
            for _ in 0..300 {
                let mut mutated = body.to_vec();
                for _ in 0..(1 + next() % 4) {
                    let at = (next() as usize) % mutated.len().max(1);
                    let noise = NOISE[(next() as usize) % NOISE.len()];
                    match next() % 3 {
                        0 if at < mutated.len() => mutated[at] = noise,
                        1 if at < mutated.len() => {
                            mutated.remove(at);
                        }
                        _ => mutated.insert(at.min(mutated.len()), noise),
                    }
                }
                let result = normalize_webhook(&mutated, &tenants);
                outcomes[result.is_ok() as usize] += 1;
                if let Ok(batch) = result {
                    for event in batch.events() {
                        assert_eq!(parse_event(event.to_json().as_bytes()).as_ref(), Ok(event));
                    }
                }
            }
        }
        assert!(outcomes[0] > 0 && outcomes[1] > 0, "{outcomes:?}");

        let deep = format!(
            r#"{{"object":"whatsapp_business_account","entry":[{}{}]}}"#,
            "[".repeat(100_000),
            "]".repeat(100_000)
        );
        assert!(normalize_webhook(deep.as_bytes(), &tenants).is_ok());
        let deeper = "[".repeat(1_000_000);
        assert!(normalize_webhook(deeper.as_bytes(), &tenants).is_err());
    }

    #[test]
    fn wrong_shapes_inside_items_are_rejected_with_the_field() {
        let body = br#"{"object":"whatsapp_business_account","entry":[{"changes":[{"field":"messages","value":{"metadata":{"phone_number_id":"118273645501234"},
            "messages":[{"from":"1","id":"a","timestamp":true,"type":"text"},{"from":"1","id":"b","timestamp":"12","type":"reaction","reaction":{"message_id":"x","emoji":5}},{"from":"1","id":"c","timestamp":"12","type":"text","referral":"ad"},{"from":"1","id":"d","timestamp":"12","type":"text","group_id":[]},{"from":"1","id":"e","timestamp":"1e3","type":"text"},{"from":"1","id":"e","timestamp":"99999999999999999999","type":"text"}],
            "statuses":[{"id":"s","status":"failed","timestamp":"12","recipient_id":"1","errors":[{"title":"no code"},{"code":"7"},{"code":131026}]},{"id":"t","status":"sent","timestamp":9223372036854775807,"recipient_id":"1"}],
            "errors":{"code":1}}},{"field":"messages","value":{"metadata":{"phone_number_id":"118273645501234"},"messages":[],"statuses":[]}},{"field":"statuses","value":{}}]}]}"#;
        let batch = run(body);
        let p = "entry[0].changes[0].value";
        assert_eq!(
            outline(&batch),
            [
                format!("REJECTED {p}.messages[0].timestamp: expected unix seconds (a string or an integer), found a boolean"),
                format!("REJECTED {p}.messages[1].reaction.emoji: expected a string, found a number"),
                r#"{"event_id":"wa:c","tenant_id":"acme","ts":12000,"type":"message.received","contact_id":"1","conversation_id":"1","session_id":"118273645501234","message_id":"c"}"#.to_owned(),
                format!("REJECTED {p}.messages[2].referral: expected an object, found a string"),
                format!("REJECTED {p}.messages[3].group_id: expected a string, found an array"),
                format!("REJECTED {p}.messages[4].timestamp: `1e3` is not unix seconds"),
                format!("REJECTED {p}.messages[5].timestamp: `99999999999999999999` is not unix seconds"),
                r#"{"event_id":"wa:s:failed","tenant_id":"acme","ts":12000,"type":"message.status","contact_id":"1","conversation_id":"1","session_id":"118273645501234","message_id":"s","status":"failed","error_code":131026}"#.to_owned(),
                format!("REJECTED {p}.statuses[1].timestamp: 9223372036854775807 is out of range"),
            ]
        );
        assert_eq!(
            skip_kinds(&batch),
            [SkipKind::ValueError { code: None }, SkipKind::OtherField("statuses".to_owned())]
        );
    }

    #[test]
    fn fixtures_are_written_like_meta_writes_them() {
        for (name, body) in ALL_FIXTURES {
            assert!(body.is_ascii(), "{name}: non-ASCII is written as \\u escapes");
        }
        let text = std::str::from_utf8(REFERRAL).expect("ASCII");
        assert!(
            text.contains(r"https:\/\/fb.me\/9xQk2Lp") && text.contains(r"\u00e1") && text.contains(r"\ud83d\ude0d")
        );
        assert!(std::str::from_utf8(REACTION_AND_REMOVAL).expect("ASCII").contains(r#""emoji":"\ud83d\udc4d""#));
    }
}
