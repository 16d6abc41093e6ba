//! `POST /v1/events`: NDJSON or a JSON array of canonical events, answered line by line.
//!
//! Each line is validated like any input (SPEC §2); `tenant_id` may be left out and is then the
//! API key's. The answer for each line is known before anything is stored: `accepted`,
//! `duplicate` (this tenant already has an identical event with that id) or `rejected` with the
//! reason. Accepted events and the rejections go to the bus in one durable append; only then does
//! the request get its 2xx. Duplicates are not stored again.

use crate::auth::{authenticate, Caller};
use crate::body::read_body;
use crate::error::ApiError;
use crate::state::{ApiState, AppendError, Scope, TenantBatch};
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use convoflow_events::{event_key, fingerprint, now_ms, parse_event, split_lines, Event, EventError};
use convoflow_operators::{conflict_reason, RejectedRow};
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

const SHARDS: usize = 64;
/// Lines per request: bounds the work and the log record one request makes, however short its
/// lines are.
pub const MAX_LINES: usize = 50_000;

/// Identity and content fingerprint of every event accepted so far, to answer `duplicate` at
/// ingest. The dataflow dedups again on its side, so this index only shapes the answer.
///
/// A claim is pending until its request's append is durable. A copy that arrives meanwhile is
/// answered `duplicate` but stored again: if the first append fails, or its client goes away
/// before the claim is confirmed, the copy still makes the event durable before its own 2xx.
pub struct SeenEvents {
    shards: Vec<Mutex<HashMap<u128, Seen>>>,
}

#[derive(Clone, Copy)]
struct Seen {
    fingerprint: u64,
    durable: bool,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Claim {
    New,
    /// Already accepted and durable: nothing to store.
    Duplicate,
    /// Claimed by a request whose append is not yet known to be durable: store it again.
    DuplicatePending,
    Conflicting,
}

impl Default for SeenEvents {
    fn default() -> Self {
        SeenEvents { shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect() }
    }
}

impl SeenEvents {
    fn shard(&self, key: u128) -> std::sync::MutexGuard<'_, HashMap<u128, Seen>> {
        self.shards[(key as usize) % SHARDS].lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Records events already accepted and durable (restored from the store and the bus).
    pub fn remember<'a>(&self, events: impl IntoIterator<Item = &'a Event>) {
        for event in events {
            let key = event_key(&event.tenant_id, &event.event_id);
            self.shard(key).insert(key, Seen { fingerprint: fingerprint(event), durable: true });
        }
    }

    /// Makes room for `events` more events.
    pub fn reserve(&self, events: u64) {
        for shard in &self.shards {
            shard.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).reserve(events as usize / SHARDS + 1);
        }
    }

    /// Records an event already accepted and durable by its key and fingerprint (`event_key`,
    /// `fingerprint`), as the saved operator state holds them.
    pub fn remember_key(&self, key: u128, fingerprint: u64) {
        self.shard(key).insert(key, Seen { fingerprint, durable: true });
    }

    /// Claims `event` for this request if its identity is new.
    pub fn claim(&self, event: &Event) -> (u128, Claim) {
        let key = event_key(&event.tenant_id, &event.event_id);
        let print = fingerprint(event);
        let mut shard = self.shard(key);
        let claim = match shard.get(&key) {
            None => {
                shard.insert(key, Seen { fingerprint: print, durable: false });
                Claim::New
            }
            Some(seen) if seen.fingerprint != print => Claim::Conflicting,
            Some(seen) if seen.durable => Claim::Duplicate,
            Some(_) => Claim::DuplicatePending,
        };
        (key, claim)
    }

    /// The claims' events are durable.
    pub fn confirm(&self, keys: &[u128]) {
        for key in keys {
            if let Some(seen) = self.shard(*key).get_mut(key) {
                seen.durable = true;
            }
        }
    }

    /// Gives back claims whose events never became durable (a durable entry, stored by another
    /// request meanwhile, stays).
    pub fn release(&self, keys: &[u128]) {
        for key in keys {
            let mut shard = self.shard(*key);
            if shard.get(key).is_some_and(|seen| !seen.durable) {
                shard.remove(key);
            }
        }
    }
}

#[derive(Serialize)]
pub struct LineResult {
    pub line: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub event_id: Option<String>,
    pub status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

#[derive(Serialize)]
pub struct IngestResponse {
    pub request_id: String,
    pub accepted: u64,
    pub duplicates: u64,
    pub rejected: u64,
    pub results: Vec<LineResult>,
}

static REQUESTS: AtomicU64 = AtomicU64::new(0);

/// A process-unique id naming a request's rejections (`rejected.source` = `api:<id>:<line>`).
pub(crate) fn request_id(received_at: i64) -> String {
    format!("{received_at}-{}", REQUESTS.fetch_add(1, Ordering::Relaxed))
}

pub async fn post_events(
    State(state): State<Arc<ApiState>>,
    method: Method,
    headers: HeaderMap,
    body: Body,
) -> Response {
    match ingest(&state, &method, &headers, body).await {
        Ok(response) => response,
        Err(error) => error.into_response(),
    }
}

async fn ingest(state: &ApiState, method: &Method, headers: &HeaderMap, body: Body) -> Result<Response, ApiError> {
    let caller = authenticate(state, method, headers, None)?;
    if !state.is_ready() {
        return Err(ApiError::unavailable("convoflow is restoring its state; retry shortly"));
    }
    let bytes = read_body(body, headers, state.limits.body_bytes).await?;
    let lines = split_body(&bytes)?;
    if lines.len() > MAX_LINES {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_many_lines",
            format!("the body holds {} lines; send at most {MAX_LINES} per request", lines.len()),
        ));
    }
    let received_at = now_ms();
    let request_id = request_id(received_at);
    let mut admission = Intake::default();
    let results = admit_lines(state, &caller, &lines, received_at, &request_id, &mut admission);
    let first_rejected = results.iter().find(|line| line.status == "rejected");
    let counts = admission.charge(state, &caller, first_rejected)?.commit(state).await?;
    // A request that did nothing but fail is a client error; a partly good one succeeds and says
    // line by line what became of each event.
    let status = if counts.rejected > 0 && counts.accepted == 0 && counts.duplicates == 0 {
        StatusCode::BAD_REQUEST
    } else {
        StatusCode::OK
    };
    let response = IngestResponse {
        request_id,
        accepted: counts.accepted,
        duplicates: counts.duplicates,
        rejected: counts.rejected,
        results,
    };
    Ok((status, Json(response)).into_response())
}

/// Rejections a request stores one by one; the rest are counted in one row per tenant (the
/// request's answer still gives every line's reason).
pub const REJECTED_ROWS_PER_REQUEST: usize = 100;
/// Rejected lines that cost one more request of the key's rate limit.
pub const REJECTED_LINES_PER_CHARGE: u64 = 100;

/// What one request admits: new events and rejections by tenant, answered only once durable.
#[derive(Default)]
pub struct Intake {
    bodies: BTreeMap<String, Vec<u8>>,
    /// Rejections stored one by one so far.
    rejections_kept: usize,
    /// Per tenant, the rejections past [`REJECTED_ROWS_PER_REQUEST`]: how many, and the first.
    rejections_counted: BTreeMap<String, (u64, RejectedRow)>,
    /// Events this request claimed first.
    claimed: Vec<u128>,
    /// Events this request stores (its claims and copies of pending ones).
    stored: Vec<u128>,
    counts: Counts,
}

#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct Counts {
    pub accepted: u64,
    pub duplicates: u64,
    pub rejected: u64,
}

impl Intake {
    /// Admits `event` unless this tenant already has it; a different copy is rejected.
    pub fn event(
        &mut self,
        seen: &SeenEvents,
        event: &Event,
        received_at: i64,
        source: impl FnOnce() -> String,
    ) -> Claim {
        let (key, claim) = seen.claim(event);
        match claim {
            Claim::New | Claim::DuplicatePending => {
                self.stored.push(key);
                if claim == Claim::New {
                    self.claimed.push(key);
                    self.counts.accepted += 1;
                } else {
                    self.counts.duplicates += 1;
                }
                let body = self.bodies.entry(event.tenant_id.to_string()).or_default();
                body.extend_from_slice(event.to_json().as_bytes());
                body.push(b'\n');
            }
            Claim::Duplicate => self.counts.duplicates += 1,
            Claim::Conflicting => {
                let reason = conflict_reason(&event.event_id);
                self.reject(RejectedRow::new(
                    Some(&event.tenant_id),
                    received_at,
                    reason,
                    event.to_json().as_bytes(),
                    source(),
                ));
            }
        }
        claim
    }

    /// Stores `row` in `rejected`, or counts it once the request has stored
    /// [`REJECTED_ROWS_PER_REQUEST`].
    pub fn reject(&mut self, row: RejectedRow) {
        self.counts.rejected += 1;
        if self.rejections_kept < REJECTED_ROWS_PER_REQUEST {
            self.rejections_kept += 1;
            self.store_rejection(&row);
        } else if let Some((lines, _)) = self.rejections_counted.get_mut(&row.tenant_id) {
            *lines += 1;
        } else {
            self.rejections_counted.insert(row.tenant_id.clone(), (1, row));
        }
    }

    fn store_rejection(&mut self, row: &RejectedRow) {
        let body = self.bodies.entry(row.tenant_id.clone()).or_default();
        body.extend_from_slice(row.to_bus_line().as_bytes());
        body.push(b'\n');
    }

    /// Charges the request's rejected lines to `caller`'s rate limit (one request per
    /// [`REJECTED_LINES_PER_CHARGE`], at most a burst less the request's own); if the key cannot
    /// pay, nothing of the request is admitted.
    pub fn charge(self, state: &ApiState, caller: &Caller, first: Option<&LineResult>) -> Result<Self, ApiError> {
        let cost = self.counts.rejected.div_ceil(REJECTED_LINES_PER_CHARGE);
        if cost == 0 {
            return Ok(self);
        }
        let first = first
            .map(|line| format!(" (line {}: {})", line.line, line.reason.as_deref().unwrap_or_default()))
            .unwrap_or_default();
        let what = format!(
            "this request's {} rejected lines cost {cost} requests of this API key's rate limit (one per {REJECTED_LINES_PER_CHARGE}), \
             more than it has left; nothing was stored{first}",
            self.counts.rejected
        );
        match state.rate.charge_more(&caller.key, cost, &what) {
            Ok(()) => Ok(self),
            Err(error) => {
                state.seen.release(&self.claimed);
                Err(error)
            }
        }
    }

    /// Appends everything to the bus in one durable write; on failure nothing was admitted.
    pub async fn commit(mut self, state: &ApiState) -> Result<Counts, ApiError> {
        for (_, (lines, first)) in std::mem::take(&mut self.rejections_counted) {
            let reason = format!(
                "{lines} more rejected lines of this request, counted here and not stored one by one; the first: {}",
                first.reason
            );
            self.store_rejection(&RejectedRow { reason, ..first });
        }
        let batches = self.bodies.into_iter().map(|(tenant, body)| TenantBatch { tenant, body }).collect();
        // Dropped mid-append (the client went away), the claims stay pending: a retry stores the
        // events again rather than trusting them.
        match state.bus.append(batches).await {
            Ok(()) => state.seen.confirm(&self.stored),
            Err(error) => {
                state.seen.release(&self.claimed);
                return Err(match error {
                    AppendError::TooLarge(reason) => {
                        ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "body_too_large", reason)
                    }
                    AppendError::Unavailable(reason) => ApiError::unavailable(format!(
                        "the input could not be stored durably ({reason}); nothing was accepted, retry"
                    )),
                });
            }
        }
        let telemetry = &state.telemetry;
        telemetry.events_in.fetch_add(self.counts.accepted, Ordering::Relaxed);
        telemetry.duplicates.fetch_add(self.counts.duplicates, Ordering::Relaxed);
        telemetry.rejected.fetch_add(self.counts.rejected, Ordering::Relaxed);
        Ok(self.counts)
    }
}

/// The body's events: NDJSON lines, or the elements of a JSON array. Returns (line number, bytes).
fn split_body(bytes: &[u8]) -> Result<Vec<(u64, Vec<u8>)>, ApiError> {
    let start = bytes.iter().position(|b| !b.is_ascii_whitespace());
    let Some(start) = start else {
        return Err(ApiError::bad_request(
            "empty_body",
            "the body holds no events: send NDJSON (one event per line) or a JSON array",
        ));
    };
    if bytes[start] == b'[' {
        let elements: Vec<&serde_json::value::RawValue> = serde_json::from_slice(bytes).map_err(|error| {
            ApiError::bad_request(
                "malformed_body",
                format!("the body starts like a JSON array but is not one: {error}"),
            )
        })?;
        if elements.is_empty() {
            return Err(ApiError::bad_request("empty_body", "the JSON array holds no events"));
        }
        return Ok(elements.iter().enumerate().map(|(i, raw)| (i as u64 + 1, raw.get().as_bytes().to_vec())).collect());
    }
    Ok(split_lines(bytes, 1).map(|line| (line.number, line.bytes.to_vec())).collect())
}

fn admit_lines(
    state: &ApiState,
    caller: &Caller,
    lines: &[(u64, Vec<u8>)],
    received_at: i64,
    request_id: &str,
    admission: &mut Intake,
) -> Vec<LineResult> {
    let own_tenant = match &caller.scope {
        Scope::Tenant(tenant) => Some(tenant.as_str()),
        Scope::All => None,
    };
    let mut results = Vec::with_capacity(lines.len());
    for (number, bytes) in lines {
        let source = || format!("api:{request_id}:{number}");
        let mut reject = |tenant: Option<&str>, reason: String, event_id: Option<String>| {
            admission.reject(RejectedRow::new(tenant, received_at, reason.clone(), bytes, source()));
            results.push(LineResult { line: *number, event_id, status: "rejected", reason: Some(reason) });
        };
        let event = match parse_for(bytes, own_tenant) {
            Ok(event) => event,
            Err(error) => {
                // A tenant key's rejections are its own tenant's, whatever the line claims.
                let tenant = own_tenant.map(str::to_owned).or_else(|| error.tenant_id.clone());
                reject(tenant.as_deref(), error.to_string(), None);
                continue;
            }
        };
        if let Some(own) = own_tenant {
            if event.tenant_id != own {
                let reason = format!("tenant_id: `{}` is not the API key's tenant `{own}`", event.tenant_id);
                reject(Some(own), reason, Some(event.event_id.to_string()));
                continue;
            }
        }
        let (status, reason) = match admission.event(&state.seen, &event, received_at, source) {
            Claim::New => ("accepted", None),
            Claim::Duplicate | Claim::DuplicatePending => ("duplicate", None),
            Claim::Conflicting => ("rejected", Some(conflict_reason(&event.event_id))),
        };
        results.push(LineResult { line: *number, event_id: Some(event.event_id.into()), status, reason });
    }
    results
}

/// Parses one line; a line without `tenant_id` sent with a tenant's key gets that tenant.
fn parse_for(bytes: &[u8], own_tenant: Option<&str>) -> Result<Event, EventError> {
    match (parse_event(bytes), own_tenant) {
        (Err(error), Some(tenant)) if error.field == "tenant_id" && error.problem == "required" => {
            match with_tenant(bytes, tenant).map(|filled| parse_event(&filled)) {
                // `"tenant_id": null` in the line, now given twice: set it in place instead.
                Some(Err(again)) if again.field == "tenant_id" => match null_tenant_set(bytes, tenant) {
                    Some(filled) => parse_event(&filled),
                    None => Err(error),
                },
                Some(result) => result,
                None => Err(error),
            }
        }
        (result, _) => result,
    }
}

/// The line with its `"tenant_id": null` replaced by `tenant`.
fn null_tenant_set(bytes: &[u8], tenant: &str) -> Option<Vec<u8>> {
    let mut object: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(bytes).ok()?;
    object.get("tenant_id").filter(|v| v.is_null())?;
    object.insert("tenant_id".to_owned(), serde_json::Value::String(tenant.to_owned()));
    serde_json::to_vec(&object).ok()
}

/// `{"tenant_id":"<tenant>", …rest of the object}`; `None` if the line is not a JSON object.
fn with_tenant(bytes: &[u8], tenant: &str) -> Option<Vec<u8>> {
    let open = bytes.iter().position(|b| !b.is_ascii_whitespace()).filter(|&i| bytes[i] == b'{')?;
    let rest = &bytes[open + 1..];
    let empty = rest.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'}');
    let mut field = String::from("{\"tenant_id\":");
    convoflow_events::escape_json_string(&mut field, tenant);
    if !empty {
        field.push(',');
    }
    let mut out = field.into_bytes();
    out.extend_from_slice(rest);
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_tenant_is_filled_from_the_key_and_a_foreign_one_is_kept_for_the_check() {
        let line = br#"{"event_id":"e1","ts":1000,"type":"touch","contact_id":"c","channel":"ad"}"#;
        assert_eq!(parse_for(line, Some("acme")).expect("filled").tenant_id, "acme");
        assert_eq!(parse_for(line, None).expect_err("admin must name it").field, "tenant_id");
        let foreign =
            br#"{"event_id":"e1","tenant_id":"other","ts":1000,"type":"touch","contact_id":"c","channel":"ad"}"#;
        assert_eq!(parse_for(foreign, Some("acme")).expect("parsed").tenant_id, "other");
        assert_eq!(parse_for(b"  {}", Some("acme")).expect_err("empty").field, "event_id");
        let null = br#"{"event_id":"e1","tenant_id":null,"ts":1000,"type":"touch","contact_id":"c","channel":"ad"}"#;
        assert_eq!(parse_for(null, Some("acme")).expect("a null tenant is the key's").tenant_id, "acme");
        assert_eq!(parse_for(b"[1]", Some("acme")).expect_err("not an object").field, "json");
    }

    #[test]
    fn bodies_are_ndjson_or_a_json_array() {
        let ndjson = split_body(b"{\"a\":1}\n\n{\"b\":2}\n").expect("ndjson");
        assert_eq!(ndjson.iter().map(|(n, _)| *n).collect::<Vec<_>>(), vec![1, 3]);
        let array = split_body(b" [{\"a\":1}, {\"b\":[2]}]").expect("array");
        assert_eq!(array[1].1, b"{\"b\":[2]}");
        assert_eq!(split_body(b"[{\"a\":1},").expect_err("torn array").code, "malformed_body");
        assert_eq!(split_body(b" \n").expect_err("empty").code, "empty_body");
    }

    #[test]
    fn claims_tell_new_duplicate_and_conflicting_apart_and_can_be_released() {
        let seen = SeenEvents::default();
        let event = parse_event(
            br#"{"event_id":"e1","tenant_id":"a","ts":1000,"type":"touch","contact_id":"c","channel":"ad"}"#,
        )
        .expect("event");
        let (key, claim) = seen.claim(&event);
        assert_eq!(claim, Claim::New);
        assert_eq!(seen.claim(&event).1, Claim::DuplicatePending, "not durable yet: a copy is stored again");
        let mut changed = event.clone();
        changed.channel = Some("web".into());
        assert_eq!(seen.claim(&changed).1, Claim::Conflicting);
        seen.release(&[key]);
        assert_eq!(seen.claim(&changed).1, Claim::New);
        seen.confirm(&[key]);
        assert_eq!(seen.claim(&changed).1, Claim::Duplicate);
        seen.release(&[key]);
        assert_eq!(seen.claim(&changed).1, Claim::Duplicate, "a durable entry is never released");
    }
}
