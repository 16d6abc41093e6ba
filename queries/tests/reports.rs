//! Every report on the embedded store, over golden inputs whose tables are worked out by hand
//! (operators/golden), with the report's figures worked out by hand from those tables.

use convoflow_connectors::embedded::EmbeddedStore;
use convoflow_events::{parse_date32, parse_event, Event, Tenants};
use convoflow_operators::Driver;
use convoflow_queries::{
    format_batches, report_sql, Dialect, Granularity, OutputFormat, Report, ReportParams, SqlEngine,
};
use serde_json::{json, Value};
use std::path::Path;
use std::sync::Arc;

fn golden(case: &str) -> (Vec<Event>, Tenants) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../operators/golden").join(case);
    let input = std::fs::read_to_string(dir.join("input.ndjson")).expect("golden input");
    let tenants = dir.join("tenants.json");
    let tenants = if tenants.exists() { Tenants::load(&tenants).expect("tenants") } else { Tenants::default() };
    (parse_all(&input), tenants)
}

fn parse_all(ndjson: &str) -> Vec<Event> {
    ndjson.lines().filter(|l| !l.trim().is_empty()).map(|l| parse_event(l.as_bytes()).expect("valid event")).collect()
}

/// Runs the dataflow over `events`, writes the embedded store, and opens SQL on it.
async fn store(events: Vec<Event>, tenants: Tenants, dir: &Path) -> SqlEngine {
    let batch: Vec<(u64, Box<Event>)> = events.into_iter().enumerate().map(|(i, e)| (i as u64, Box::new(e))).collect();
    let mut driver = Driver::start(1, Arc::new(tenants)).expect("the dataflow starts");
    driver.submit(batch, 0).expect("submit");
    let output = driver.next_output().expect("the epoch finishes");
    driver.shutdown().expect("the dataflow stops");
    let embedded = EmbeddedStore::open(dir).expect("store");
    let events = embedded.events_writer().expect("events file");
    embedded.write(events, &output.tables, &output.rejected).expect("write");
    SqlEngine::open(dir).await.expect("sql engine")
}

async fn report(engine: &SqlEngine, report: Report, params: &ReportParams) -> Vec<Value> {
    let sql = report_sql(report, params, Dialect::DataFusion);
    let batches = engine.query(&sql).await.unwrap_or_else(|e| panic!("{} failed: {e}\n{sql}", report.name()));
    let json = format_batches(&batches, OutputFormat::Json).expect("json");
    serde_json::from_str(&json).expect("json rows")
}

fn march(from: &str, to: &str, tenant: &str) -> ReportParams {
    ReportParams { from: parse_date32(from), to: parse_date32(to), ..ReportParams::new(tenant) }
}

#[tokio::test]
async fn funnel_counts_contacts_by_their_furthest_step_in_the_range() {
    let dir = tempfile::tempdir().unwrap();
    let (events, tenants) = golden("funnel_drop_offs");
    let engine = store(events, tenants, dir.path()).await;

    // a reached 5, b 2 (on 03-17), c 4; only a completed, in 2 d 23 h.
    let rows = report(&engine, Report::Funnel, &march("2026-03-01", "2026-03-31", "acme")).await;
    let expected =
        [(1, 3, 1.0, 1.0), (2, 3, 1.0, 1.0), (3, 2, 0.6667, 0.6667), (4, 2, 0.6667, 1.0), (5, 1, 0.3333, 0.5)];
    assert_eq!(rows.len(), expected.len(), "{rows:?}");
    for (row, (step, contacts, from_start, from_previous)) in rows.iter().zip(expected) {
        assert_eq!(
            row,
            &json!({"funnel_id": "default", "step": step, "contacts": contacts, "conversion_from_start": from_start,
                    "conversion_from_previous": from_previous, "median_ms_to_convert": 255_600_000.0})
        );
    }

    // Only 03-02: b's re-entry on 03-17 is out of range, so b stops at step 1.
    let rows = report(&engine, Report::Funnel, &march("2026-03-02", "2026-03-02", "acme")).await;
    let contacts: Vec<&Value> = rows.iter().map(|row| &row["contacts"]).collect();
    assert_eq!(contacts, [&json!(3), &json!(2), &json!(2), &json!(2), &json!(1)]);

    // A funnel the tenant does not have gives no rows, not an error.
    let unknown = ReportParams { funnel_id: Some("no_such".into()), ..march("2026-03-01", "2026-03-31", "acme") };
    assert_eq!(report(&engine, Report::Funnel, &unknown).await, Vec::<Value>::new());
}

#[tokio::test]
async fn attribution_credits_sum_to_the_conversions_per_model() {
    let dir = tempfile::tempdir().unwrap();
    let (events, tenants) = golden("attribution_models");
    let engine = store(events, tenants, dir.path()).await;
    let rows = report(&engine, Report::Attribution, &march("2026-03-01", "2026-03-31", "acme")).await;
    for model in ["first_touch", "last_touch", "linear", "time_decay", "position_based"] {
        let credited: f64 =
            rows.iter().filter(|r| r["model"] == model).map(|r| r["credited_conversions"].as_f64().unwrap()).sum();
        assert!((credited - 3.0).abs() < 1e-5, "{model}: {credited}");
    }
    let whatsapp =
        rows.iter().find(|r| r["model"] == "time_decay" && r["channel"] == "whatsapp").expect("campaign touch row");
    assert_eq!(whatsapp["campaign_id"], "spring");
    assert_eq!(whatsapp["conversions"], 1);
    assert_eq!(whatsapp["credited_value_sum"], 26.666667);
    let direct = rows.iter().find(|r| r["model"] == "linear" && r["channel"] == "direct").expect("direct row");
    assert_eq!(
        (direct["credited_conversions"].as_f64(), direct["credited_value_sum"].as_f64()),
        (Some(1.0), Some(0.0))
    );

    let only_linear = ReportParams { model: Some("linear".into()), ..march("2026-03-01", "2026-03-31", "acme") };
    let rows = report(&engine, Report::Attribution, &only_linear).await;
    assert!(!rows.is_empty() && rows.iter().all(|r| r["model"] == "linear"));
}

#[tokio::test]
async fn campaigns_and_csat_report_rates() {
    let dir = tempfile::tempdir().unwrap();
    let (events, tenants) = golden("attribution_models");
    let engine = store(events, tenants, dir.path()).await;
    // m1 failed and was then read (delivered, read); m2 ended failed.
    let rows = report(&engine, Report::Campaigns, &march("2026-03-01", "2026-03-31", "acme")).await;
    assert_eq!(
        rows,
        [json!({"campaign_id": "spring", "sent": 2, "delivered": 1, "read": 1, "failed": 1, "replies": 0,
                "delivery_rate": 0.5, "read_rate": 0.5, "failure_rate": 0.5, "reply_rate": 0.0})]
    );

    let dir = tempfile::tempdir().unwrap();
    let (events, tenants) = golden("statuses_and_reactions");
    let engine = store(events, tenants, dir.path()).await;
    let rows = report(&engine, Report::Csat, &march("2026-03-02", "2026-03-02", "acme")).await;
    let by_agent = |sender: Value, agent: Value| {
        rows.iter().find(|r| r["sender"] == sender && r["agent_id"] == agent).cloned().unwrap_or(Value::Null)
    };
    assert_eq!(
        by_agent(json!("agent"), json!("ana")),
        json!({"sender": "agent", "agent_id": "ana", "positive": 1, "negative": 0, "neutral": 0, "csat": 1.0})
    );
    assert_eq!(
        by_agent(json!("agent"), json!("bo")),
        json!({"sender": "agent", "agent_id": "bo", "positive": 1, "negative": 0, "neutral": 1, "csat": 1.0})
    );
    // Null columns are left out of JSON rows, so the bot's row has no agent_id.
    assert!(rows.iter().any(|r| r["sender"] == "bot" && r["negative"] == 1 && r["csat"] == 0.0), "{rows:?}");
    assert_eq!(rows.len(), 4, "agent ana, agent bo, bot, and the message never seen sent: {rows:?}");

    // By campaign: the reactions to the campaign's messages only.
    let (events, tenants) = golden("attribution_models");
    let mut events = events;
    events.push(parse_event(r#"{"event_id":"r","tenant_id":"acme","ts":"2026-03-04T01:00:00Z","type":"message.reaction","contact_id":"a","message_id":"m1","emoji":"👎"}"#.as_bytes()).expect("event"));
    let dir = tempfile::tempdir().unwrap();
    let engine = store(events, tenants, dir.path()).await;
    let spring = ReportParams { campaign_id: Some("spring".into()), ..march("2026-03-01", "2026-03-31", "acme") };
    let rows = report(&engine, Report::Csat, &spring).await;
    assert_eq!(
        rows,
        [
            json!({"sender": "campaign", "campaign_id": "spring", "positive": 0, "negative": 1, "neutral": 0, "csat": 0.0})
        ]
    );
}

#[tokio::test]
async fn session_health_lists_the_senders_hours() {
    let dir = tempfile::tempdir().unwrap();
    let (events, tenants) = golden("session_hours");
    let engine = store(events, tenants, dir.path()).await;
    let params = ReportParams { session_id: Some("p1".into()), ..march("2026-03-02", "2026-03-02", "acme") };
    let rows = report(&engine, Report::SessionHealth, &params).await;
    let scores: Vec<i64> = rows.iter().map(|r| r["health_score"].as_i64().unwrap()).collect();
    assert_eq!(scores, [100, 38, 100, 0, 0, 0]);
    assert_eq!(rows[1]["hour_start"], "2026-03-02T10:00:00Z");
    // A local day in Kolkata starts at 18:30 UTC the day before.
    let kolkata = ReportParams { timezone: chrono_tz::Asia::Kolkata, ..march("2026-03-02", "2026-03-02", "kol") };
    let rows = report(&engine, Report::SessionHealth, &kolkata).await;
    assert_eq!(rows.len(), 1);
}

#[tokio::test]
async fn agents_get_responses_percentiles_resolutions_and_csat() {
    let dir = tempfile::tempdir().unwrap();
    let events = parse_all(
        r#"{"event_id":"x1","tenant_id":"t","ts":"2026-03-02T10:00:00Z","type":"message.received","contact_id":"x","message_id":"mx1"}
{"event_id":"x2","tenant_id":"t","ts":"2026-03-02T10:02:00Z","type":"message.sent","contact_id":"x","message_id":"mx2","sender":"agent","agent_id":"ana"}
{"event_id":"x3","tenant_id":"t","ts":"2026-03-02T10:05:00Z","type":"message.received","contact_id":"x","message_id":"mx3"}
{"event_id":"x4","tenant_id":"t","ts":"2026-03-02T10:06:00Z","type":"message.sent","contact_id":"x","message_id":"mx4","sender":"bot"}
{"event_id":"x5","tenant_id":"t","ts":"2026-03-02T10:10:00Z","type":"message.sent","contact_id":"x","message_id":"mx5","sender":"agent","agent_id":"ana"}
{"event_id":"x6","tenant_id":"t","ts":"2026-03-02T10:20:00Z","type":"conversation.resolved","contact_id":"x","agent_id":"ana"}
{"event_id":"x7","tenant_id":"t","ts":"2026-03-02T10:30:00Z","type":"message.reaction","contact_id":"x","message_id":"mx2","emoji":"👍"}
{"event_id":"y1","tenant_id":"t","ts":"2026-03-02T11:00:00Z","type":"message.received","contact_id":"y","message_id":"my1"}
{"event_id":"y2","tenant_id":"t","ts":"2026-03-02T11:10:00Z","type":"message.sent","contact_id":"y","message_id":"my2","sender":"agent","agent_id":"bo"}
{"event_id":"y3","tenant_id":"t","ts":"2026-03-02T11:20:00Z","type":"message.received","contact_id":"y","message_id":"my3"}
{"event_id":"y4","tenant_id":"t","ts":"2026-03-02T11:21:00Z","type":"message.sent","contact_id":"y","message_id":"my4","sender":"agent","agent_id":"ana"}
{"event_id":"y5","tenant_id":"t","ts":"2026-03-02T11:30:00Z","type":"conversation.resolved","contact_id":"y","agent_id":"bo"}"#,
    );
    let engine = store(events, Tenants::default(), dir.path()).await;
    let rows = report(&engine, Report::Agents, &march("2026-03-02", "2026-03-02", "t")).await;
    // ana answered in 2 min and 1 min (the bot answered the 10:05 message, so 10:10 answers
    // nothing); bo in 10 min. p90 of {60 s, 120 s} = 60 + 0.9 × 60 = 114 s.
    assert_eq!(
        rows,
        [
            json!({"agent_id": "ana", "responses": 2, "median_response_ms": 90_000.0, "p90_response_ms": 114_000.0,
                   "first_responses": 1, "median_first_response_ms": 120_000.0, "resolutions": 1, "csat": 1.0}),
            json!({"agent_id": "bo", "responses": 1, "median_response_ms": 600_000.0, "p90_response_ms": 600_000.0,
                   "first_responses": 1, "median_first_response_ms": 600_000.0, "resolutions": 1}),
        ]
    );
}

/// Two threads in Kolkata (+05:30) across two local days, one of them resolved.
fn kolkata_threads() -> Vec<Event> {
    parse_all(
        r#"{"event_id":"a1","tenant_id":"k","ts":"2026-03-01T18:00:00Z","type":"message.received","contact_id":"a","message_id":"ma1"}
{"event_id":"a2","tenant_id":"k","ts":"2026-03-01T18:01:00Z","type":"message.sent","contact_id":"a","message_id":"ma2","sender":"bot"}
{"event_id":"a3","tenant_id":"k","ts":"2026-03-01T18:40:00Z","type":"message.received","contact_id":"a","message_id":"ma3"}
{"event_id":"a4","tenant_id":"k","ts":"2026-03-01T18:44:00Z","type":"message.sent","contact_id":"a","message_id":"ma4","sender":"agent","agent_id":"ana"}
{"event_id":"a5","tenant_id":"k","ts":"2026-03-01T19:00:00Z","type":"conversation.resolved","contact_id":"a","agent_id":"ana"}
{"event_id":"b1","tenant_id":"k","ts":"2026-03-01T18:50:00Z","type":"message.received","contact_id":"b","message_id":"mb1"}
{"event_id":"b2","tenant_id":"k","ts":"2026-03-01T19:00:00Z","type":"message.sent","contact_id":"b","message_id":"mb2","sender":"agent","agent_id":"bo"}
{"event_id":"b3","tenant_id":"k","ts":"2026-03-09T05:00:00Z","type":"message.received","contact_id":"b","message_id":"mb3"}"#,
    )
}

fn kolkata(from: &str, to: &str, granularity: Granularity) -> ReportParams {
    ReportParams { timezone: chrono_tz::Asia::Kolkata, granularity, ..march(from, to, "k") }
}

#[tokio::test]
async fn time_series_bucket_by_local_hour_day_and_week_with_percentiles() {
    let dir = tempfile::tempdir().unwrap();
    let tenants = Tenants::from_json(r#"[{"tenant_id": "k", "timezone": "Asia/Kolkata"}]"#).unwrap();
    let engine = store(kolkata_threads(), tenants, dir.path()).await;
    // 18:00Z is 23:30 on 1 March in Kolkata; 18:40Z is 00:10 on 2 March. Local days begin at
    // 18:30Z the day before: 2026-03-01 → 1772303400000, 2026-03-02 → 1772389800000.
    let day_1 = 1_772_303_400_000i64;
    let day_2 = day_1 + 86_400_000;
    let rows = report(&engine, Report::Responses, &kolkata("2026-03-01", "2026-03-31", Granularity::Day)).await;
    assert_eq!(
        rows,
        [
            json!({"bucket_start": day_1, "responder": "bot", "responses": 1, "p50_ms": 60_000.0, "p90_ms": 60_000.0, "p99_ms": 60_000.0}),
            // 4 min (a3 → a4) and 10 min (b1 → b2): p90 = 240 s + 0.9 × 360 s.
            json!({"bucket_start": day_2, "responder": "agent", "responses": 2, "p50_ms": 420_000.0, "p90_ms": 564_000.0, "p99_ms": 596_400.0}),
        ]
    );
    // Hourly: 00:14 and 00:30 local both fall in the 00:00 hour of 2 March.
    let hourly = report(&engine, Report::Responses, &kolkata("2026-03-02", "2026-03-02", Granularity::Hour)).await;
    assert_eq!(hourly.len(), 1);
    assert_eq!(hourly[0]["bucket_start"], day_2);
    // Weekly: Monday 2026-03-02 starts the ISO week; Sunday 1 March belongs to the week before.
    let weekly = report(&engine, Report::Volume, &kolkata("2026-03-01", "2026-03-31", Granularity::Week)).await;
    let weeks: Vec<(i64, &str, &str, i64)> = weekly
        .iter()
        .map(|r| {
            (
                r["bucket_start"].as_i64().unwrap(),
                r["direction"].as_str().unwrap(),
                r["sender"].as_str().unwrap(),
                r["messages"].as_i64().unwrap(),
            )
        })
        .collect();
    let week_before = day_2 - 7 * 86_400_000;
    let week_after = day_2 + 7 * 86_400_000;
    assert_eq!(
        weeks,
        [
            (week_before, "inbound", "contact", 1),
            (week_before, "outbound", "bot", 1),
            (day_2, "inbound", "contact", 2),
            (day_2, "outbound", "agent", 2),
            (week_after, "inbound", "contact", 1),
        ]
    );

    let resolution = report(&engine, Report::Resolution, &kolkata("2026-03-01", "2026-03-31", Granularity::Day)).await;
    assert_eq!(
        resolution,
        [
            json!({"bucket_start": day_2, "resolutions": 1, "p50_ms": 3_600_000.0, "p90_ms": 3_600_000.0, "p99_ms": 3_600_000.0})
        ]
    );
    let first = report(
        &engine,
        Report::FirstResponse,
        &ReportParams { agent_id: Some("bo".into()), ..kolkata("2026-03-01", "2026-03-31", Granularity::Day) },
    )
    .await;
    assert_eq!(
        first,
        [
            json!({"bucket_start": day_2, "first_responses": 1, "p50_ms": 600_000.0, "p90_ms": 600_000.0, "p99_ms": 600_000.0})
        ]
    );

    let growth = report(&engine, Report::Growth, &kolkata("2026-03-01", "2026-03-31", Granularity::Day)).await;
    assert_eq!(
        growth,
        [json!({"bucket_start": day_1, "new_contacts": 1}), json!({"bucket_start": day_2, "new_contacts": 1})]
    );
    let active = report(&engine, Report::ActiveContacts, &kolkata("2026-03-01", "2026-03-31", Granularity::Week)).await;
    assert_eq!(
        active,
        [
            json!({"bucket_start": week_before, "active_contacts": 1}),
            json!({"bucket_start": day_2, "active_contacts": 2}),
            json!({"bucket_start": week_after, "active_contacts": 1}),
        ]
    );

    // Sunday 23:30 and Monday 00:10, 00:20 and Monday 10:30 a week later.
    let peaks = report(&engine, Report::PeakHours, &kolkata("2026-03-01", "2026-03-31", Granularity::Day)).await;
    assert_eq!(
        peaks,
        [
            json!({"weekday": 1, "local_hour": 0, "messages": 2}),
            json!({"weekday": 1, "local_hour": 10, "messages": 1}),
            json!({"weekday": 7, "local_hour": 23, "messages": 1}),
        ]
    );
    // Cohorts: a in the week of 23 Feb; b (first wrote Monday 00:20) in the week of 2 March,
    // and back in the next week.
    let cohorts = report(&engine, Report::Retention, &kolkata("2026-02-23", "2026-03-31", Granularity::Week)).await;
    assert_eq!(
        cohorts,
        [
            json!({"cohort_week": "2026-02-23", "week_offset": 0, "cohort_size": 1, "retained": 1, "retention_rate": 1.0}),
            json!({"cohort_week": "2026-02-23", "week_offset": 1, "cohort_size": 1, "retained": 1, "retention_rate": 1.0}),
            json!({"cohort_week": "2026-03-02", "week_offset": 0, "cohort_size": 1, "retained": 1, "retention_rate": 1.0}),
            json!({"cohort_week": "2026-03-02", "week_offset": 1, "cohort_size": 1, "retained": 1, "retention_rate": 1.0}),
        ]
    );
}
