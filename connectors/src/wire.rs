//! What goes on either bus (the local log, JetStream): NDJSON batches of one tenant's canonical
//! events and rejection lines, and how a record read back becomes positioned events.

use bytes::Bytes;
use convoflow_events::{parse_event, split_lines, Text};
use convoflow_operators::dedup::Positioned;
use convoflow_operators::RejectedRow;
use std::collections::HashMap;
use std::hash::Hasher;

/// Events per published message, and a cap on its size (NATS' default max payload is 1 MiB).
pub const BATCH_EVENTS: usize = 1000;
const BATCH_BYTES: usize = 512 * 1024;

/// One message to publish: NDJSON lines of one tenant.
#[derive(Clone, Debug)]
pub struct OutgoingBatch {
    pub tenant: String,
    /// `Nats-Msg-Id`: a 128-bit hash of the tenant and body, the same whenever the same batch is
    /// published again.
    pub id: String,
    pub body: Bytes,
    pub events: u64,
}

/// Lines of one file split into per-tenant batches, and the lines that are not valid events
/// (they never reach the bus; they become `rejected` rows naming `file:line`).
pub struct BatchedFile {
    pub batches: Vec<OutgoingBatch>,
    pub rejected: Vec<RejectedRow>,
    pub lines: u64,
}

/// 128 bits from two differently seeded word-at-a-time hashes: fast over half a megabyte, and
/// collisions among the messages of a 2-minute window are out of reach.
fn content_id(tenant: &str, body: &[u8]) -> String {
    let hash = |seed: u64| {
        let mut hasher = rustc_hash::FxHasher::default();
        hasher.write_u64(seed);
        hasher.write(tenant.as_bytes());
        hasher.write_u8(0xff);
        hasher.write(body);
        hasher.write_usize(body.len());
        hasher.finish()
    };
    format!("cf-{:016x}{:016x}", hash(0x9e37_79b9_7f4a_7c15), hash(0xc2b2_ae3d_27d4_eb4f))
}

fn finish(tenant: &str, body: Vec<u8>, events: u64) -> OutgoingBatch {
    OutgoingBatch { tenant: tenant.to_owned(), id: content_id(tenant, &body), body: Bytes::from(body), events }
}

/// Splits NDJSON into per-tenant batches in input order. Batch boundaries depend only on the
/// file, so publishing the same file again yields the same message ids.
pub fn batch_file(name: &str, bytes: &[u8], received_at: i64) -> BatchedFile {
    let mut open: HashMap<Text, (Vec<u8>, u64)> = HashMap::new();
    let mut out = BatchedFile { batches: Vec::new(), rejected: Vec::new(), lines: 0 };
    for line in split_lines(bytes, 1) {
        out.lines += 1;
        match parse_event(line.bytes) {
            Ok(event) => {
                let (body, events) =
                    open.entry(event.tenant_id.clone()).or_insert_with(|| (Vec::with_capacity(BATCH_BYTES / 2), 0));
                body.extend_from_slice(line.bytes);
                body.push(b'\n');
                *events += 1;
                if *events as usize >= BATCH_EVENTS || body.len() >= BATCH_BYTES {
                    let (body, events) = open.remove(&event.tenant_id).unwrap_or_default();
                    out.batches.push(finish(&event.tenant_id, body, events));
                }
            }
            Err(error) => out.rejected.push(RejectedRow::new(
                error.tenant_id.as_deref(),
                received_at,
                error.to_string(),
                line.bytes,
                format!("{name}:{}", line.number),
            )),
        }
    }
    let mut rest: Vec<(Text, (Vec<u8>, u64))> = open.into_iter().collect();
    rest.sort_by(|a, b| a.0.cmp(&b.0));
    out.batches.extend(rest.into_iter().map(|(tenant, (body, events))| finish(&tenant, body, events)));
    out
}

/// One tenant's NDJSON lines as messages of at most `BATCH_BYTES` (a longer line goes alone),
/// split at line ends.
pub fn split_batch(tenant: &str, body: &[u8]) -> Vec<OutgoingBatch> {
    let mut batches = Vec::new();
    let (mut current, mut lines) = (Vec::new(), 0u64);
    for line in body.split_inclusive(|&b| b == b'\n') {
        if !current.is_empty() && current.len() + line.len() > BATCH_BYTES {
            batches.push(finish(tenant, std::mem::take(&mut current), lines));
            lines = 0;
        }
        current.extend_from_slice(line);
        lines += 1;
    }
    if !current.is_empty() {
        batches.push(finish(tenant, current, lines));
    }
    batches
}

/// Input position of line `line` of the message at stream sequence `sequence`: stream order,
/// then line order, so the first copy of a conflicting event on the stream wins.
pub fn position(sequence: u64, line: u64) -> u64 {
    (sequence << 20) | line.min((1 << 20) - 1)
}

/// Parses a delivered message's lines; lines that are not valid events become `rejected` rows
/// naming `origin` (the stream or log), the message's sequence and the line.
pub fn parse_message(
    origin: &str,
    sequence: u64,
    payload: &[u8],
    received_at: i64,
) -> (Vec<Positioned>, Vec<RejectedRow>) {
    let mut events = Vec::new();
    let mut rejected = Vec::new();
    for line in split_lines(payload, 1) {
        if let Some(row) = RejectedRow::from_bus_line(line.bytes) {
            rejected.push(row);
            continue;
        }
        match parse_event(line.bytes) {
            Ok(event) => events.push((position(sequence, line.number), Box::new(event))),
            Err(error) => rejected.push(RejectedRow::new(
                error.tenant_id.as_deref(),
                received_at,
                error.to_string(),
                line.bytes,
                format!("{origin}:{sequence}:{}", line.number),
            )),
        }
    }
    (events, rejected)
}

/// [`parse_message`] over many messages on `threads` threads; results in message order.
pub fn parse_messages(
    origin: &str,
    messages: &[(u64, &[u8])],
    received_at: i64,
    threads: usize,
) -> (Vec<Positioned>, Vec<RejectedRow>) {
    let chunk = messages.len().div_ceil(threads.max(1)).max(1);
    let parts: Vec<(Vec<Positioned>, Vec<RejectedRow>)> = std::thread::scope(|scope| {
        let handles: Vec<_> = messages
            .chunks(chunk)
            .map(|part| {
                scope.spawn(move || {
                    let mut out = (Vec::new(), Vec::new());
                    for (sequence, payload) in part {
                        let (events, rejected) = parse_message(origin, *sequence, payload, received_at);
                        out.0.extend(events);
                        out.1.extend(rejected);
                    }
                    out
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|handle| handle.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic)))
            .collect()
    });
    let mut events = Vec::new();
    let mut rejected = Vec::new();
    for (part_events, part_rejected) in parts {
        events.extend(part_events);
        rejected.extend(part_rejected);
    }
    (events, rejected)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(tenant: &str, id: usize) -> String {
        format!(
            r#"{{"event_id":"e{id}","tenant_id":"{tenant}","ts":{id},"type":"touch","contact_id":"c","channel":"ad"}}"#
        )
    }

    #[test]
    fn batches_are_per_tenant_in_order_and_deterministic() {
        let mut text = String::new();
        for id in 0..(BATCH_EVENTS + 10) {
            text.push_str(&line(if id % 2 == 0 { "a" } else { "b" }, id));
            text.push('\n');
        }
        text.push_str("{not json\n");
        let first = batch_file("in.ndjson", text.as_bytes(), 0);
        let again = batch_file("in.ndjson", text.as_bytes(), 0);
        assert_eq!(first.lines, BATCH_EVENTS as u64 + 11);
        assert_eq!(first.rejected.len(), 1);
        assert_eq!(first.rejected[0].source, format!("in.ndjson:{}", BATCH_EVENTS + 11));
        let events: u64 = first.batches.iter().map(|b| b.events).sum();
        assert_eq!(events, BATCH_EVENTS as u64 + 10);
        assert!(first.batches.iter().all(|b| b
            .body
            .split(|c| *c == b'\n')
            .filter(|l| !l.is_empty())
            .all(|l| { parse_event(l).map(|e| e.tenant_id == b.tenant).unwrap_or(false) })));
        let ids: Vec<&str> = first.batches.iter().map(|b| b.id.as_str()).collect();
        let ids_again: Vec<&str> = again.batches.iter().map(|b| b.id.as_str()).collect();
        assert_eq!(ids, ids_again);
        let unique: std::collections::HashSet<&&str> = ids.iter().collect();
        assert_eq!(unique.len(), ids.len());
    }

    #[test]
    fn message_lines_keep_stream_order() {
        let payload = format!("{}\n{}\nnope\n", line("a", 1), line("a", 2));
        let (events, rejected) = parse_message("nats:S", 7, payload.as_bytes(), 0);
        assert_eq!(events.iter().map(|(p, _)| *p).collect::<Vec<_>>(), vec![position(7, 1), position(7, 2)]);
        assert!(position(7, 99) < position(8, 1));
        assert_eq!(rejected[0].source, "nats:S:7:3");
    }

    #[test]
    fn rejection_lines_come_back_as_the_rows_they_carry() {
        let row = RejectedRow::new(
            Some("acme"),
            5,
            "ts: missing".to_owned(),
            b"{\"event_id\":\"x\"}",
            "api:req-1:2".to_owned(),
        );
        let payload = format!("{}\n{}\n", row.to_bus_line(), line("acme", 1));
        let (events, rejected) = parse_message("log", 0, payload.as_bytes(), 99);
        assert_eq!(events.len(), 1);
        assert_eq!(rejected, vec![row]);
    }
}
