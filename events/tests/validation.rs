//! Bad input is rejected with a reason that names the field; good input round-trips.

use convoflow_events::{parse_event, split_lines, EventType, MessageType, Sender};

fn reason(line: &str) -> String {
    parse_event(line.as_bytes()).expect_err("should be rejected").to_string()
}

#[test]
fn accepts_rfc3339_and_epoch_ms_and_defaults_conversation_to_contact() {
    let a = parse_event(br#"{"event_id":"e1","tenant_id":"t","ts":"2026-01-01T00:00:01.5+01:00","type":"message.received","contact_id":"c","message_id":"m"}"#).unwrap();
    assert_eq!(a.ts, 1_767_222_001_500);
    assert_eq!(a.conversation_id.as_deref(), Some("c"));
    assert_eq!(a.message_type, MessageType::Text);
    let b = parse_event(br#"{"event_id":"e2","tenant_id":"t","ts":1767222001500,"type":"message.sent","contact_id":"c","message_id":"m2","sender":"agent","agent_id":"a","unknown_field":[1]}"#).unwrap();
    assert_eq!(b.ts, a.ts);
    assert_eq!(b.sender, Some(Sender::Agent));
    assert_eq!(b.kind, EventType::MessageSent);
}

#[test]
fn canonical_json_parses_back_to_an_equal_event() {
    let line = r#"{"event_id":"e1","tenant_id":"t","ts":5,"type":"conversion","contact_id":"c","name":"purchase","value":12.5,"properties":{"b":1,"a":"x"}}"#;
    let event = parse_event(line.as_bytes()).unwrap();
    assert_eq!(parse_event(event.to_json().as_bytes()).unwrap(), event);
}

#[test]
fn names_the_broken_field() {
    let base = r#""event_id":"e","tenant_id":"t","ts":1"#;
    assert!(reason("{not json").starts_with("json: malformed JSON"));
    assert_eq!(reason("[1,2]"), "json: an event must be a JSON object, found an array");
    assert_eq!(reason(r#"{"tenant_id":"t","ts":1,"type":"touch"}"#), "event_id: required");
    assert_eq!(
        reason(&format!(r#"{{{base},"type":"nope"}}"#)).split(" (").next().unwrap(),
        "type: unknown event type `nope`"
    );
    assert_eq!(
        reason(&format!(r#"{{{base},"type":"touch","contact_id":7}}"#)),
        "contact_id: expected a string, found a number"
    );
    assert_eq!(
        reason(r#"{"event_id":"e","tenant_id":"t","ts":1.5,"type":"touch"}"#),
        "ts: epoch milliseconds must be an integer"
    );
    assert_eq!(
        reason(r#"{"event_id":"e","tenant_id":"t","ts":"yesterday","type":"touch"}"#),
        "ts: `yesterday` is not an RFC 3339 timestamp"
    );
    assert_eq!(reason(&format!(r#"{{{base},"type":"touch","contact_id":"c"}}"#)), "channel: required for touch");
    assert_eq!(
        reason(&format!(r#"{{{base},"type":"message.sent","contact_id":"c","message_id":"m","sender":"agent"}}"#)),
        "agent_id: required when sender is agent"
    );
    assert_eq!(
        reason(&format!(r#"{{{base},"type":"message.sent","contact_id":"c","message_id":"m","sender":"robot"}}"#)),
        "sender: unknown value `robot` (expected one of agent, bot, campaign)"
    );
    assert_eq!(
        reason(&format!(r#"{{{base},"type":"session.status","session_id":"s"}}"#)),
        "state: required for session.status"
    );
    assert_eq!(
        reason(r#"{"event_id":"e","tenant_id":"bad tenant!","ts":1,"type":"touch"}"#),
        "tenant_id: must match [A-Za-z0-9_.-]{1,64}"
    );
    assert_eq!(
        reason(&format!(r#"{{{base},"type":"conversion","contact_id":"c","name":"x","value":-1}}"#)),
        "value: must be a number ≥ 0"
    );
    assert_eq!(
        reason(&format!(r#"{{{base},"type":"touch","contact_id":"c","channel":"ad","properties":[1]}}"#)),
        "properties: expected an object, found an array"
    );
    let long_id = "x".repeat(201);
    assert_eq!(
        reason(&format!(r#"{{{base},"type":"touch","contact_id":"{long_id}","channel":"ad"}}"#)),
        "contact_id: longer than 200 characters"
    );
}

#[test]
fn oversize_properties_are_rejected() {
    let big = "y".repeat(17 * 1024);
    let line = format!(
        r#"{{"event_id":"e","tenant_id":"t","ts":1,"type":"touch","contact_id":"c","channel":"ad","properties":{{"blob":"{big}"}}}}"#
    );
    let error = parse_event(line.as_bytes()).unwrap_err();
    assert_eq!(error.field, "properties");
    assert!(error.problem.contains("over the 16 KiB limit"), "{error}");
    assert_eq!(error.tenant_id.as_deref(), Some("t"));
}

#[test]
fn lines_keep_their_numbers_and_skip_blanks() {
    let input = b"a\n\n  \r\nb\r\nc";
    let lines: Vec<_> = split_lines(input, 1).map(|l| (l.number, l.bytes.to_vec())).collect();
    assert_eq!(lines, vec![(1, b"a".to_vec()), (4, b"b".to_vec()), (5, b"c".to_vec())]);
}

/// The hardening issue, failure 6: with a valid `ts`, a line failing on another field was blamed
/// on `ts`; an out-of-range number blamed no field.
#[test]
fn a_valid_ts_is_never_blamed_for_another_field() {
    let base = r#""event_id":"e","tenant_id":"t","ts":"2026-02-02T09:00:00Z","type":"conversion","contact_id":"c","name":"buy""#;
    let with = |extra: &str| reason(&format!("{{{base},{extra}}}"));
    assert_eq!(with(r#""value":"NaN""#), "value: expected a number, found a string");
    assert_eq!(with(r#""value":true"#), "value: expected a number, found a boolean");
    assert_eq!(with(r#""error_code":1.5"#), "error_code: expected an integer, found a number");
    assert_eq!(with(r#""tenant_id":"u""#), "tenant_id: appears more than once");
    assert_eq!(with(r#""source":"a","source":"b""#), "source: appears more than once");
    assert_eq!(with(r#""value":1e400"#), "value: number out of range");
    assert_eq!(reason(r#"{"event_id":"e","tenant_id":"t","ts":1e400,"type":"touch"}"#), "ts: number out of range");
    assert_eq!(reason("{\"event_id\":\"e\",\n\"tenant_id\":\"t\",\n\"ts\": 1e400}"), "ts: number out of range");
    assert_eq!(
        reason(r#"{"event_id":"e","tenant_id":null,"ts":"2026-02-02T09:00:00Z","type":"touch"}"#),
        "tenant_id: required"
    );
}

/// Every string field has a length limit (`emoji`, `source` and `medium` had none).
#[test]
fn every_string_field_is_bounded() {
    let long = "x".repeat(201);
    let touch = |field: &str| {
        reason(&format!(
            r#"{{"event_id":"e","tenant_id":"t","ts":1,"type":"touch","contact_id":"c","channel":"ad","{field}":"{long}"}}"#
        ))
    };
    for field in ["source", "medium", "campaign_id", "session_id"] {
        assert_eq!(touch(field), format!("{field}: longer than 200 characters"));
    }
    let emoji = "😀".repeat(33);
    let line = format!(
        r#"{{"event_id":"e","tenant_id":"t","ts":1,"type":"message.reaction","contact_id":"c","message_id":"m","emoji":"{emoji}"}}"#
    );
    assert_eq!(reason(&line), "emoji: longer than 32 characters");
    let family = "👨‍👩‍👧‍👦";
    let line = line.replace(&emoji, family);
    assert_eq!(parse_event(line.as_bytes()).expect("a family emoji is one reaction").emoji.as_deref(), Some(family));
}
