//! Mutations: of raw bytes, of JSON values (keeping the text JSON, so cases reach past the
//! parser's first check), and of SQL text by tokens.

use convoflow_fixtures::Rng;
use serde_json::{Map, Value};

/// Bytes that mean something to a JSON or SQL reader, or to UTF-8.
const SPECIAL_BYTES: &[u8] = b"\0\x01\x7f\x80\xbf\xc3\xe2\xf0\xff\"\\'`{}[],:;\n\r\t -+.eE0123456789/*";

/// Values that break assumptions: out-of-range numbers, timestamps, odd strings, deep nesting.
fn odd_value(rng: &mut Rng) -> Value {
    let text = |s: &str| Value::String(s.to_owned());
    match rng.below(30) {
        0 => Value::Null,
        1 => Value::Bool(rng.chance(0.5)),
        2 => serde_json::json!(i64::MAX),
        3 => serde_json::json!(i64::MIN),
        4 => serde_json::json!(u64::MAX),
        5 => serde_json::json!(f64::MAX),
        6 => serde_json::json!(-0.0),
        7 => serde_json::json!(1.5),
        8 => serde_json::json!(rng.between(-2_000_000_000_000, 4_000_000_000_000)),
        9 => text(""),
        10 => text("NaN"),
        11 => text("2026-02-30T25:61:00Z"),
        12 => text("1973-01-01T00:00:00Z"),
        13 => text("2026-02-02T09:00:00+05:45"),
        14 => text("9999-12-31T23:59:59.999999999Z"),
        15 => text("\u{202e}\u{0}\u{feff}é\u{1F600}"),
        16 => Value::String("x".repeat(rng.below(70_000) as usize)),
        17 => Value::String("\u{1}".repeat(rng.below(5_000) as usize)),
        18 => Value::Array(Vec::new()),
        19 => Value::Object(Map::new()),
        20 => nested(rng.below(3_000) as usize),
        21 => text("message.received"),
        22 => text("status.read"),
        23 => text("wa:"),
        24 => text("1e400"),
        25 => text("acme"),
        26 => text("../../etc/passwd"),
        27 => text("' OR 1=1 --"),
        28 => Value::Array((0..rng.below(2_000)).map(|i| serde_json::json!(i)).collect()),
        _ => text("👍🏽"),
    }
}

/// An array nested `depth` deep.
fn nested(depth: usize) -> Value {
    (0..depth).fold(Value::Null, |inner, _| Value::Array(vec![inner]))
}

/// How many values `value` holds, itself included.
fn count(value: &Value) -> usize {
    1 + match value {
        Value::Array(items) => items.iter().map(count).sum(),
        Value::Object(map) => map.values().map(count).sum(),
        _ => 0,
    }
}

/// The `index`th value of `value` in pre-order.
fn nth<'a>(value: &'a mut Value, index: &mut usize) -> Option<&'a mut Value> {
    if *index == 0 {
        return Some(value);
    }
    *index -= 1;
    let children: Box<dyn Iterator<Item = &'a mut Value>> = match value {
        Value::Array(items) => Box::new(items.iter_mut()),
        Value::Object(map) => Box::new(map.values_mut()),
        _ => return None,
    };
    for child in children {
        if let Some(found) = nth(child, index) {
            return Some(found);
        }
    }
    None
}

/// A value of `root` picked at random (each as likely).
fn pick_node<'a>(rng: &mut Rng, root: &'a mut Value) -> Option<&'a mut Value> {
    let mut index = rng.below(count(root) as u64) as usize;
    nth(root, &mut index)
}

/// Keys the canonical and WhatsApp formats use: a mutation may add one where it does not belong.
const KEYS: &[&str] = &[
    "event_id",
    "tenant_id",
    "ts",
    "type",
    "contact_id",
    "conversation_id",
    "message_id",
    "sender",
    "agent_id",
    "channel",
    "source",
    "medium",
    "campaign_id",
    "value",
    "error_code",
    "emoji",
    "status",
    "timestamp",
    "from",
    "id",
    "wa_id",
    "user_id",
    "statuses",
    "messages",
    "contacts",
    "metadata",
    "phone_number_id",
    "recipient_id",
    "errors",
    "reaction",
    "referral",
    "context",
    "group_id",
    "properties",
    "score",
    "step",
    "funnel_id",
    "name",
];

/// One structural change to a JSON value.
pub fn json(rng: &mut Rng, root: &mut Value, donors: &[Value]) {
    let Some(node) = pick_node(rng, root) else { return };
    match rng.below(8) {
        0 | 1 => *node = odd_value(rng),
        2 => {
            if let Value::Object(map) = node {
                if !map.is_empty() {
                    let key = map.keys().nth(rng.below(map.len() as u64) as usize).cloned().unwrap_or_default();
                    map.remove(&key);
                }
            }
        }
        3 => {
            if let Value::Object(map) = node {
                map.insert((*rng.pick(KEYS)).to_owned(), odd_value(rng));
            }
        }
        4 if !donors.is_empty() => {
            // A subtree of another input, where something else was.
            let mut donor = rng.pick(donors).clone();
            if let Some(part) = pick_node(rng, &mut donor) {
                *node = part.take();
            }
        }
        5 => {
            if let Value::Array(items) = node {
                if let Some(first) = items.first().cloned() {
                    let copies = rng.below(50) as usize;
                    items.extend(std::iter::repeat_n(first, copies));
                }
            }
        }
        6 => {
            // Another type with the same meaning: a number as a string, or the reverse.
            *node = match node.take() {
                Value::Number(n) => Value::String(n.to_string()),
                Value::String(s) => s
                    .parse::<f64>()
                    .ok()
                    .and_then(|f| serde_json::Number::from_f64(f).map(Value::Number))
                    .unwrap_or(Value::String(s)),
                other => Value::Array(vec![other]),
            };
        }
        _ => *node = Value::Null,
    }
}

/// Writes `value` and sometimes repeats a key of its top object in the text (JSON allows it,
/// `serde_json::Value` cannot hold it).
pub fn json_text(rng: &mut Rng, value: &Value) -> Vec<u8> {
    let mut text = value.to_string().into_bytes();
    if let (Value::Object(map), true) = (value, rng.chance(0.1)) {
        if let Some((key, _)) = map.iter().nth(rng.below(map.len().max(1) as u64) as usize) {
            let mut extra = serde_json::to_vec(key).unwrap_or_default();
            extra.extend_from_slice(b":");
            extra.extend_from_slice(odd_value(rng).to_string().as_bytes());
            extra.push(b',');
            text.splice(1..1, extra);
        }
    }
    text
}

/// One to four changes to raw bytes; `donors` are spliced in.
pub fn bytes(rng: &mut Rng, bytes: &mut Vec<u8>, donors: &[Vec<u8>]) {
    for _ in 0..=rng.below(4) {
        let len = bytes.len();
        let at = rng.below(len as u64 + 1) as usize;
        match rng.below(8) {
            0 if len > 0 => {
                let i = at.min(len - 1);
                bytes[i] ^= 1 << rng.below(8);
            }
            1 if len > 0 => {
                let i = at.min(len - 1);
                bytes[i] = *rng.pick(SPECIAL_BYTES);
            }
            2 => bytes.insert(at, *rng.pick(SPECIAL_BYTES)),
            3 => {
                let end = (at + rng.below(64) as usize).min(len);
                bytes.drain(at..end);
            }
            4 => {
                let end = (at + rng.below(64) as usize).min(len);
                let copy: Vec<u8> = bytes[at..end].to_vec();
                let times = rng.below(100) as usize;
                for _ in 0..times {
                    bytes.splice(at..at, copy.iter().copied());
                }
            }
            5 => bytes.truncate(at),
            6 if !donors.is_empty() => {
                let donor = rng.pick(donors);
                let from = rng.below(donor.len() as u64 + 1) as usize;
                let to = (from + rng.below(200) as usize).min(donor.len());
                bytes.splice(at..at, donor[from..to].iter().copied());
            }
            _ => {
                let run = rng.below(16) as usize;
                bytes.splice(at..at, (0..run).map(|_| rng.next_u64() as u8));
            }
        }
    }
}

/// SQL words and pieces an attacker tries: other tables and databases, table functions, comment
/// and quoting tricks, clauses that lift limits, and expressions that cost memory or depth.
pub const SQL_PIECES: &[&str] = &[
    " system.tables",
    " system.one",
    " default.events",
    " events_log",
    " cf.events",
    " remote('localhost', system.one)",
    " numbers(10)",
    " url('http://x', CSV, 'a String')",
    " file('/etc/passwd')",
    " -- ",
    " /* ",
    " */",
    " // ",
    " #",
    "'",
    "\\'",
    "\\",
    "`",
    "\"",
    "\"events\"",
    "`events`",
    " UNION ALL SELECT * FROM events",
    " UNION ALL SELECT * FROM system.tables",
    " FORMAT JSON",
    " SETTINGS max_result_rows = 0",
    " WITH x AS (SELECT 1) ",
    " IN events",
    " IN (SELECT tenant_id FROM events)",
    " dictGet('d', 'a', 1)",
    " joinGet('t', 'a', 1)",
    " GLOBAL IN ",
    " ARRAY JOIN ",
    " FINAL",
    " SAMPLE 1",
    " PREWHERE 1",
    "(",
    ")",
    ",",
    ";",
    " SELECT",
    " FROM",
    " WHERE",
    " JOIN",
    " AS",
    " tenant_id",
    " 'beta'",
    " OR 1=1",
    " *",
    " AND",
    " ORDER BY 1",
    " LIMIT 1",
    " GROUP BY 1",
    " repeat('x', 100000000)",
    " range(1000000000)",
    " generate_series(1, 10000000000)",
    " array_repeat(1, 1000000000)",
    " lpad('x', 2000000000)",
    " ||",
    " + 1",
    " CROSS JOIN events",
    " responses",
    " contacts",
    " rejected",
    " session_health",
    " 1e400",
    " 9223372036854775807",
    " -9223372036854775808",
    " NULL",
    " CAST(1 AS VARCHAR)",
    " x'ff'",
    " $1",
    " ?",
    " ::",
    " ->",
    " [1,2]",
    " {",
    " }",
    " @",
    " $$",
    " E'\\x'",
    " N'x'",
    " \u{0}",
    " \u{202e}",
    " é",
];

/// One to four token-level changes to SQL text (inserting, removing or repeating a piece), and
/// sometimes a byte-level one.
pub fn sql(rng: &mut Rng, text: &mut Vec<u8>, donors: &[Vec<u8>]) {
    for _ in 0..=rng.below(4) {
        let len = text.len();
        let at = rng.below(len as u64 + 1) as usize;
        match rng.below(6) {
            0..=2 => {
                text.splice(at..at, rng.pick(SQL_PIECES).bytes());
            }
            3 => {
                // Remove up to the next space: a word.
                let end = text[at..].iter().position(|b| *b == b' ').map_or(len, |p| at + p + 1);
                text.drain(at..end);
            }
            4 => {
                let piece = rng.pick(SQL_PIECES);
                let times = rng.below(600) as usize;
                text.splice(at..at, piece.repeat(times).bytes());
            }
            _ => bytes(rng, text, donors),
        }
    }
}
