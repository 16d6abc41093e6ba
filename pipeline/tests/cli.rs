//! End-to-end tests of the `convoflow` binary on the embedded store: generate → replay → sql.

use std::path::Path;
use std::process::{Command, Output};

fn convoflow(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_convoflow")).args(args).output().expect("convoflow runs")
}

fn ok(args: &[&str]) -> String {
    let output = convoflow(args);
    assert!(output.status.success(), "convoflow {args:?} failed:\n{}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8(output.stdout).expect("utf-8 output")
}

fn path(dir: &Path, name: &str) -> String {
    dir.join(name).display().to_string()
}

/// A table as sorted CSV lines (header first), for order-insensitive comparison.
fn dump(data: &str, query: &str) -> Vec<String> {
    let csv = ok(&["sql", "--data", data, "--format", "csv", query]);
    let mut lines: Vec<String> = csv.lines().map(str::to_owned).collect();
    lines[1..].sort();
    lines
}

fn dump_tables(data: &str) -> Vec<Vec<String>> {
    // `rejected` carries the time of the run, so it is compared without `received_at`.
    let derived = convoflow_schema::TABLES.iter().filter(|t| **t != "rejected");
    let mut dumps: Vec<Vec<String>> = derived.map(|t| dump(data, &format!("SELECT * FROM {t}"))).collect();
    dumps.push(dump(data, "SELECT tenant_id, reason, raw FROM rejected"));
    dumps
}

fn summary_count(summary: &str, label: &str) -> u64 {
    summary
        .lines()
        .find_map(|line| line.trim().strip_prefix(label))
        .map(|rest| rest.split_whitespace().next().unwrap_or_default().replace(',', "").parse().expect("count"))
        .unwrap_or_else(|| panic!("no `{label}` in summary:\n{summary}"))
}

/// `first.ndjson` with the input's lines before `end`, `second.ndjson` with those from `start`.
fn parts(dir: &Path, input: &str, end: usize, start: usize) -> (String, String) {
    let text = std::fs::read_to_string(input).expect("input");
    let lines: Vec<&str> = text.lines().collect();
    let (first, second) = (path(dir, "first.ndjson"), path(dir, "second.ndjson"));
    std::fs::write(&first, lines[..end].join("\n") + "\n").expect("first part");
    std::fs::write(&second, lines[start..].join("\n") + "\n").expect("second part");
    (first, second)
}

fn generated(dir: &Path, events: &str, seed: &str) -> (String, String) {
    let input = path(dir, "events.ndjson");
    ok(&["generate", "--events", events, "--seed", seed, "--tenants", "3", "--out", &input]);
    (input, path(dir, "events.tenants.json"))
}

#[test]
fn replaying_the_same_input_again_leaves_every_table_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    let (input, tenants) = generated(dir.path(), "6000", "11");
    let data = path(dir.path(), "data");
    let first = ok(&["replay", "--input", &input, "--tenants", &tenants, "--data", &data]);
    let lines = summary_count(&first, "replayed");
    let accepted = summary_count(&first, "accepted");
    let duplicates = summary_count(&first, "duplicates");
    let rejected = summary_count(&first, "rejected");
    assert_eq!(lines, 6000);
    assert_eq!(accepted + duplicates + rejected, lines, "every line is accounted for:\n{first}");
    assert!(duplicates > 0 && rejected > 0, "the generator's dirt shows:\n{first}");
    let before = dump_tables(&data);
    assert!(before.iter().all(|table| table.len() > 1), "every table has rows");

    let second = ok(&["replay", "--input", &input, "--tenants", &tenants, "--data", &data]);
    assert_eq!(summary_count(&second, "accepted"), 0, "{second}");
    assert_eq!(summary_count(&second, "duplicates"), accepted + duplicates);
    assert_eq!(dump_tables(&data), before);
}

#[test]
fn replay_in_parts_at_another_parallelism_equals_one_replay() {
    let dir = tempfile::tempdir().unwrap();
    let (input, tenants) = generated(dir.path(), "8000", "3");
    let text = std::fs::read_to_string(&input).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let parts: Vec<String> = lines
        .chunks(lines.len() / 3 + 1)
        .enumerate()
        .map(|(i, chunk)| {
            let part = path(dir.path(), &format!("part{i}.ndjson"));
            std::fs::write(&part, chunk.join("\n") + "\n").unwrap();
            part
        })
        .collect();

    let whole = path(dir.path(), "whole");
    ok(&["replay", "--input", &input, "--tenants", &tenants, "--data", &whole, "--workers", "2"]);
    let in_parts = path(dir.path(), "in_parts");
    for part in &parts {
        ok(&["replay", "--input", part, "--tenants", &tenants, "--data", &in_parts, "--workers", "1"]);
    }
    let together = path(dir.path(), "together");
    ok(&["replay", "--input", &parts[2], &parts[0], &parts[1], "--tenants", &tenants, "--data", &together]);
    let expected = dump_tables(&whole);
    assert_eq!(dump_tables(&in_parts), expected);
    assert_eq!(dump_tables(&together), expected);
}

#[test]
fn bad_lines_are_rejected_with_reasons_and_the_run_completes() {
    let dir = tempfile::tempdir().unwrap();
    let data = path(dir.path(), "data");
    let input = path(dir.path(), "bad.ndjson");
    let good = r#"{"event_id":"ok1","tenant_id":"t","ts":1767225600000,"type":"message.received","contact_id":"c","message_id":"m1"}"#;
    let oversize = format!(
        r#"{{"event_id":"big","tenant_id":"t","ts":1,"type":"touch","contact_id":"c","channel":"web","properties":{{"x":"{}"}}}}"#,
        "y".repeat(17_000)
    );
    let lines = [
        good.to_owned(),
        "{\"event_id\": \"broken\"".to_owned(),
        r#"{"event_id":"e2","tenant_id":"t","ts":1,"type":"message.received","message_id":"m"}"#.to_owned(),
        r#"{"event_id":"e3","tenant_id":"t","ts":"soon","type":"touch","contact_id":"c","channel":"ad"}"#.to_owned(),
        r#"{"event_id":"e4","tenant_id":"t","ts":1,"type":"message.edited","contact_id":"c"}"#.to_owned(),
        oversize,
        r#"{"event_id":"ok1","tenant_id":"t","ts":1767225600000,"type":"message.received","contact_id":"other","message_id":"m1"}"#.to_owned(),
        good.to_owned(),
    ];
    std::fs::write(&input, lines.join("\n")).unwrap();
    let summary = ok(&["replay", "--input", &input, "--data", &data]);
    assert_eq!(summary_count(&summary, "accepted"), 1, "{summary}");
    assert_eq!(summary_count(&summary, "duplicates"), 1, "{summary}");
    assert_eq!(summary_count(&summary, "rejected"), 6, "{summary}");

    let json = ok(&["sql", "--data", &data, "--format", "json", "SELECT source, reason FROM rejected"]);
    let rows: Vec<serde_json::Value> = serde_json::from_str(&json).expect("json rows");
    let rejected: Vec<String> =
        rows.iter().map(|r| format!("{},{}", r["source"].as_str().unwrap(), r["reason"].as_str().unwrap())).collect();
    let expected_prefixes = [
        ("bad.ndjson:2", "json: malformed JSON"),
        ("bad.ndjson:3", "contact_id: required for message.received"),
        ("bad.ndjson:4", "ts: `soon` is not an RFC 3339 timestamp"),
        ("bad.ndjson:5", "type: unknown event type `message.edited`"),
        ("bad.ndjson:6", "properties: "),
        ("dedup", "conflicting_duplicate: event_id `ok1`"),
    ];
    for (source, reason) in expected_prefixes {
        assert!(
            rejected.iter().any(|row| row.starts_with(&format!("{source},{reason}"))),
            "no rejection {source}: {reason} in {rejected:#?}"
        );
    }
    let events = dump(&data, "SELECT event_id, contact_id FROM events");
    assert_eq!(events, ["event_id,contact_id", "ok1,c"]);
}

#[test]
fn stored_events_win_over_a_later_conflicting_copy() {
    let dir = tempfile::tempdir().unwrap();
    let data = path(dir.path(), "data");
    let (first, second) = (path(dir.path(), "a.ndjson"), path(dir.path(), "b.ndjson"));
    std::fs::write(&first, r#"{"event_id":"x","tenant_id":"t","ts":5,"type":"touch","contact_id":"c","channel":"ad"}"#)
        .unwrap();
    std::fs::write(
        &second,
        r#"{"event_id":"x","tenant_id":"t","ts":5,"type":"touch","contact_id":"c","channel":"web"}"#,
    )
    .unwrap();
    ok(&["replay", "--input", &first, "--data", &data]);
    for _ in 0..2 {
        let summary = ok(&["replay", "--input", &second, "--data", &data]);
        assert_eq!(summary_count(&summary, "rejected"), 1, "{summary}");
    }
    assert_eq!(dump(&data, "SELECT channel FROM events"), ["channel", "ad"]);
    assert_eq!(
        dump(&data, "SELECT count(*) AS n FROM rejected WHERE reason LIKE 'conflicting_duplicate%'"),
        ["n", "1"]
    );
}

#[test]
fn sql_is_read_only_and_explains_refusals() {
    let dir = tempfile::tempdir().unwrap();
    let data = path(dir.path(), "data");
    for statement in ["DROP TABLE events", "INSERT INTO events (event_id) VALUES ('x')", "CREATE TABLE x AS SELECT 1"] {
        let output = convoflow(&["sql", "--data", &data, statement]);
        assert!(!output.status.success(), "{statement} must fail");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains("SQL is read-only"), "{statement}: {stderr}");
    }
    // An empty store still has every table, with its columns.
    assert_eq!(dump(&data, "SELECT tenant_id, cohort_week FROM retention"), ["tenant_id,cohort_week"]);
    // Instants are Timestamp(ms, UTC) and local dates Date32, as SPEC §5 says.
    let columns = dump(&data, "DESCRIBE contacts");
    assert!(columns.iter().any(|c| c.starts_with("first_seen_ts,\"Timestamp(ms, \"\"UTC\"\")\"")), "{columns:#?}");
    assert!(columns.iter().any(|c| c.starts_with("cohort_week,Date32")), "{columns:#?}");
}

#[test]
fn generate_is_deterministic_for_a_seed() {
    let dir = tempfile::tempdir().unwrap();
    let run = |seed: &str, name: &str| {
        let out = path(dir.path(), name);
        ok(&["generate", "--events", "3000", "--seed", seed, "--out", &out]);
        std::fs::read(&out).unwrap()
    };
    let (a, b, c) = (run("5", "a.ndjson"), run("5", "b.ndjson"), run("6", "c.ndjson"));
    assert_eq!(a, b);
    assert_ne!(a, c);
    assert_eq!(a.iter().filter(|&&byte| byte == b'\n').count(), 3000);
}

/// The report SQL documented in docs/REPORTS.md for the embedded store, block by block.
fn documented_report_sql() -> Vec<(String, String)> {
    let doc = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/REPORTS.md"))
        .expect("docs/REPORTS.md");
    let mut reports = Vec::new();
    let mut name = String::new();
    let mut lines = doc.lines();
    while let Some(line) = lines.next() {
        if let Some(heading) = line.strip_prefix("## ") {
            name = heading.to_owned();
        } else if line.starts_with("Embedded store (DataFusion)") {
            let sql: Vec<&str> =
                lines.by_ref().skip_while(|l| *l != "```sql").skip(1).take_while(|l| *l != "```").collect();
            reports.push((name.clone(), sql.join("\n")));
        }
    }
    reports
}

#[test]
fn every_documented_report_runs_through_convoflow_sql() {
    let dir = tempfile::tempdir().unwrap();
    let (input, tenants) = generated(dir.path(), "20000", "5");
    let data = path(dir.path(), "data");
    ok(&["replay", "--input", &input, "--tenants", &tenants, "--data", &data]);
    let reports = documented_report_sql();
    assert_eq!(
        reports.len(),
        14,
        "every SPEC §7 metric: {:?}",
        reports.iter().map(|(name, _)| name).collect::<Vec<_>>()
    );
    for (name, sql) in reports {
        let rows = dump(&data, &sql);
        assert!(rows.len() > 1, "report {name} has rows for acme_retail in January: {rows:?}");
    }
}

/// The values of a one-column query, in order.
fn column(data: &str, query: &str) -> Vec<String> {
    dump(data, query).into_iter().skip(1).collect()
}

#[test]
fn generated_traffic_gives_every_table_meaningful_rows() {
    let dir = tempfile::tempdir().unwrap();
    let (input, tenants) = generated(dir.path(), "20000", "3");
    let data = path(dir.path(), "data");
    ok(&["replay", "--input", &input, "--tenants", &tenants, "--data", &data]);
    let number = |query: &str| column(&data, query).first().and_then(|v| v.parse::<i64>().ok()).unwrap_or(0);

    // Contacts drop out of the default funnel at every step, and a configured funnel has rows.
    let stops =
        column(&data, "SELECT furthest_step FROM funnel_progress WHERE funnel_id = 'default' GROUP BY furthest_step");
    assert_eq!(stops, ["1", "2", "3", "4", "5"]);
    assert!(number("SELECT count(*) FROM funnel_progress WHERE funnel_id = 'campaign_to_purchase'") > 0);

    // Conversions with no touch, one, two, and many.
    let touch_counts: Vec<i64> = column(
        &data,
        "SELECT DISTINCT touches FROM (SELECT conversion_event_id, sum(CASE WHEN touch_event_id IS NULL THEN 0 ELSE 1 END) AS touches
           FROM attribution WHERE model = 'linear' GROUP BY conversion_event_id) AS per_conversion",
    )
    .iter()
    .map(|n| n.parse().expect("count"))
    .collect();
    for wanted in [0, 1, 2] {
        assert!(touch_counts.contains(&wanted), "a conversion with {wanted} touches: {touch_counts:?}");
    }
    assert!(touch_counts.iter().any(|&n| n >= 5), "a conversion with many touches: {touch_counts:?}");
    assert!(number("SELECT count(*) FROM attribution WHERE channel = 'whatsapp'") > 0, "campaign sends are touches");

    // Failed campaign sends, messages known only from statuses, voice notes played, replies.
    assert!(number("SELECT count(*) FROM message_status WHERE sender = 'campaign' AND final_status = 'failed'") > 0);
    assert!(number("SELECT count(*) FROM message_status WHERE sent_ts IS NULL") > 0);
    assert!(number("SELECT count(*) FROM events WHERE status = 'played'") > 0);
    assert!(number("SELECT count(*) FROM message_status WHERE replied") > 0);

    // Reactions to agent, bot and campaign messages, of every sentiment.
    assert_eq!(
        column(&data, "SELECT DISTINCT sender FROM reactions WHERE sender IS NOT NULL"),
        ["agent", "bot", "campaign"]
    );
    assert_eq!(column(&data, "SELECT DISTINCT sentiment FROM reactions"), ["negative", "neutral", "positive"]);

    // Senders that disconnect (uptime < 1) and get blocked (score 0 while partly up).
    assert!(number("SELECT count(*) FROM session_health WHERE uptime < 1") > 0);
    assert!(number("SELECT count(*) FROM session_health WHERE health_score = 0 AND uptime > 0 AND failed < sent") > 0);
}

#[test]
fn whatsapp_webhook_bodies_replay_into_the_tables_of_their_numbers_tenant() {
    let dir = tempfile::tempdir().unwrap();
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/webhooks");
    // One POST body per line; the same status lifecycle (sent … played) twice: Meta redelivers.
    let mut bodies = String::new();
    for name in
        ["referral.json", "status_lifecycle.json", "status_lifecycle.json", "failed_status.json", "value_error.json"]
    {
        bodies.push_str(std::fs::read_to_string(fixtures.join(name)).unwrap().trim_end());
        bodies.push('\n');
    }
    bodies.push_str("{\"object\":\"page\"}\n");
    let input = path(dir.path(), "hooks.ndjson");
    std::fs::write(&input, bodies).unwrap();
    let tenants = path(dir.path(), "tenants.json");
    std::fs::write(
        &tenants,
        r#"[{"tenant_id": "acme", "timezone": "America/Sao_Paulo", "phone_number_ids": ["118273645501234"]}]"#,
    )
    .unwrap();
    let data = path(dir.path(), "data");
    let summary = ok(&["replay", "--format", "whatsapp", "--input", &input, "--tenants", &tenants, "--data", &data]);
    assert!(summary.starts_with("normalized 6 webhook bodies"), "{summary}");
    let statuses = dump(&data, "SELECT message_id, final_status, error_code FROM message_status");
    assert_eq!(statuses.len(), 4, "header and the three outbound messages: {statuses:?}");
    assert!(statuses.iter().any(|line| line.ends_with(",read,")), "{statuses:?}");
    assert!(statuses.iter().any(|line| line.ends_with(",failed,131049")), "{statuses:?}");
    let touches = dump(&data, "SELECT channel, campaign_id FROM attribution WHERE model = 'last_touch'");
    assert_eq!(touches, vec!["channel,campaign_id".to_owned()], "no conversions, so no attribution rows");
    let kinds = dump(&data, "SELECT type, count(*) FROM events WHERE tenant_id = 'acme' GROUP BY type");
    assert_eq!(kinds[1..], ["message.received,2", "message.status,5", "touch,2"]);
    let rejected = dump(&data, "SELECT source, reason FROM rejected");
    assert_eq!(rejected.len(), 2, "{rejected:?}");
    assert!(rejected[1].starts_with("hooks.ndjson:6,\"webhook: `object` is `page`"), "{rejected:?}");
}

/// A replay into a store with saved operator state resumes from it; when the state cannot be
/// trusted (torn, missing, newer than the tables as after a kill -9 between the two writes, or of
/// another tenants configuration) it re-feeds the stored events, and either way the tables equal
/// one replay of everything.
#[test]
fn a_replay_resumes_saved_state_and_re_feeds_when_it_cannot() {
    let dir = tempfile::tempdir().unwrap();
    let (input, tenants) = generated(dir.path(), "6000", "5");
    // The second part redelivers some of the first.
    let (first, second) = parts(dir.path(), &input, 3500, 3000);
    let whole = path(dir.path(), "whole");
    ok(&["replay", "--input", &input, "--tenants", &tenants, "--data", &whole]);
    let expected = dump_tables(&whole);
    let elsewhere = path(dir.path(), "elsewhere");
    ok(&["replay", "--input", &first, "--tenants", &tenants, "--data", &elsewhere]);

    for case in ["resumed", "torn", "no state", "state newer than the tables", "other tenants"] {
        let data = path(dir.path(), case);
        ok(&["replay", "--input", &first, "--tenants", &tenants, "--data", &data, "--workers", "2"]);
        let state = Path::new(&data).join("state");
        match case {
            "torn" => {
                let file = state.join("Threads.1.0.state");
                let bytes = std::fs::read(&file).unwrap();
                std::fs::write(&file, &bytes[..bytes.len() / 3]).unwrap();
            }
            "no state" => std::fs::remove_dir_all(&state).unwrap(),
            // What a kill -9 leaves after the state of a replay was saved and before its tables
            // were: another generation's state beside these tables.
            "state newer than the tables" => {
                std::fs::remove_dir_all(&state).unwrap();
                std::fs::rename(Path::new(&elsewhere).join("state"), &state).unwrap();
            }
            _ => {}
        }
        let tenants_flag: &[&str] = if case == "other tenants" { &[] } else { &["--tenants", &tenants] };
        let args = [&["replay", "--input", &second, "--data", &data, "--workers", "1"][..], tenants_flag].concat();
        let summary = ok(&args);
        let resumed = summary.contains("resume state");
        assert_eq!(resumed, case == "resumed", "{case}:\n{summary}");
        assert!(resumed || summary.contains("re-feed 3,"), "{case}: the stored events are re-fed:\n{summary}");
        if case != "other tenants" {
            assert_eq!(dump_tables(&data), expected, "{case}");
        }
    }
}

/// The `events` segments of a store (those the table is made of; a merge's leftovers are not):
/// name and inode of each, in order.
fn event_segments(data: &str) -> Vec<(String, u64)> {
    use std::os::unix::fs::MetadataExt;
    let (live, _) = convoflow_schema::files::event_segments(&Path::new(data).join("tables")).expect("segments");
    let inode = |path: &Path| std::fs::metadata(path).expect("metadata").ino();
    live.iter()
        .map(|segment| (segment.path.file_name().expect("name").to_string_lossy().into_owned(), inode(&segment.path)))
        .collect()
}

/// A replay adds its new events as a segment of their own: a late event into a store leaves the
/// stored events' file as it is (not read, not rewritten), a replay of only duplicates adds
/// nothing, and small segments are merged; `events` holds every event once all along.
#[test]
fn a_replay_adds_its_new_events_as_a_segment_and_leaves_the_stored_ones() {
    let dir = tempfile::tempdir().unwrap();
    let (input, tenants) = generated(dir.path(), "3000", "8");
    let data = path(dir.path(), "data");
    ok(&["replay", "--input", &input, "--tenants", &tenants, "--data", &data]);
    let stored = event_segments(&data);
    assert_eq!(stored.len(), 1, "{stored:?}");
    let count =
        |data: &str| dump(data, "SELECT count(*), count(DISTINCT tenant_id || event_id) FROM events")[1].clone();
    let before: u64 = count(&data).split(',').next().unwrap().parse().unwrap();

    let late = path(dir.path(), "late.ndjson");
    let line = r#"{"event_id":"late-1","tenant_id":"acme","ts":1700000000000,"type":"touch","contact_id":"c-late","channel":"ad"}"#;
    std::fs::write(&late, format!("{line}\n")).unwrap();
    let summary = ok(&["replay", "--input", &late, "--tenants", &tenants, "--data", &data]);
    assert!(summary.contains("resume state"), "{summary}");
    let after = event_segments(&data);
    assert_eq!(after[0], stored[0], "the stored segment is the same file");
    assert_eq!(after.len(), 2, "{after:?}");
    assert_eq!(count(&data), format!("{0},{0}", before + 1));

    ok(&["replay", "--input", &late, "--tenants", &tenants, "--data", &data]);
    assert_eq!(event_segments(&data), after, "only duplicates: no segment");

    let later = path(dir.path(), "later.ndjson");
    std::fs::write(&later, format!("{}\n", line.replace("late-1", "late-2"))).unwrap();
    ok(&["replay", "--input", &later, "--tenants", &tenants, "--data", &data]);
    let merged = event_segments(&data);
    assert_eq!(merged.len(), 2, "the two one-event segments are merged: {merged:?}");
    assert_eq!(merged[0], stored[0]);
    assert_eq!(count(&data), format!("{0},{0}", before + 2));

    // Re-fed from the segments, the tables are those of one replay of everything.
    let whole = path(dir.path(), "whole");
    let everything = path(dir.path(), "everything.ndjson");
    let mut text = std::fs::read_to_string(&input).unwrap();
    text.push_str(&format!("{line}\n{}\n", line.replace("late-1", "late-2")));
    std::fs::write(&everything, text).unwrap();
    ok(&["replay", "--input", &everything, "--tenants", &tenants, "--data", &whole]);
    std::fs::remove_file(Path::new(&data).join("tables").join("generation")).unwrap();
    let summary = ok(&["replay", "--input", &later, "--tenants", &tenants, "--data", &data]);
    assert!(summary.contains("re-feed"), "{summary}");
    assert_eq!(dump_tables(&data), dump_tables(&whole));
}

/// `--state-every N` saves the operator state every N accepted events on the way (so what the
/// replay touched leaves memory): the tables are those of a replay that saves only at the end,
/// and a replay after it resumes the state saved last.
#[test]
fn a_replay_saving_state_on_the_way_gives_the_same_tables_and_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let (input, tenants) = generated(dir.path(), "40000", "9");
    // Three epochs of 16 k lines on one worker, then a part of its own.
    let (first, second) = parts(dir.path(), &input, 39000, 39000);
    let replay = |part: &str, data: &str, every: &str| {
        let tenants = tenants.as_str();
        ok(&["replay", "--input", part, "--tenants", tenants, "--data", data, "--state-every", every, "--workers", "1"])
    };
    let runs = |data: &str| {
        let entries = std::fs::read_dir(Path::new(data).join("state")).unwrap();
        entries.filter(|entry| entry.as_ref().unwrap().file_name().to_string_lossy().starts_with("Dedup.0.")).count()
    };
    let (once, spilled, refed) = (path(dir.path(), "once"), path(dir.path(), "spilled"), path(dir.path(), "refed"));
    for (data, every) in [(&once, "100000000"), (&spilled, "10000"), (&refed, "10000")] {
        assert!(!replay(&first, data, every).contains("resume state"));
        assert_eq!(runs(data) > 1, data != &once, "saves on the way leave runs of their own: {} in {data}", runs(data));
        if data == &refed {
            // The second replay re-feeds the stored events, saving the state on the way too.
            std::fs::remove_file(Path::new(data).join("tables").join("generation")).unwrap();
        }
        let summary = replay(&second, data, every);
        assert_eq!(summary.contains("resume state"), data != &refed, "{summary}");
    }
    assert_eq!(dump_tables(&spilled), dump_tables(&once));
    assert_eq!(dump_tables(&refed), dump_tables(&once));
}
