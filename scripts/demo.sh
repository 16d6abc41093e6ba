#!/usr/bin/env bash
# The main job on the embedded default: generate a realistic data set, replay it into ./data and
# print headline metrics. Usage: scripts/demo.sh [EVENTS] (default 1000000).
set -euo pipefail
cd "$(dirname "$0")/.."
events="${1:-1000000}"

cargo build --release --locked --workspace --bin convoflow
bin=target/release/convoflow
mkdir -p demo
"$bin" generate --events "$events" --seed 42 --tenants 4 --out demo/events.ndjson
rm -rf demo/data
"$bin" replay --input demo/events.ndjson --tenants demo/events.tenants.json --data demo/data

sql() { echo; echo "== $1"; "$bin" sql --data demo/data "$2"; }
sql "Response times per tenant (seconds)" \
  "SELECT tenant_id, count(*) AS responses,
          round(approx_percentile_cont(response_ms, 0.5) / 1000.0, 1) AS p50_s,
          round(approx_percentile_cont(response_ms, 0.9) / 1000.0, 1) AS p90_s,
          round(100.0 * avg(CASE WHEN responder = 'bot' THEN 1 ELSE 0 END), 1) AS bot_pct
     FROM responses GROUP BY tenant_id ORDER BY tenant_id"
sql "Conversation cycles: first response and resolution (minutes)" \
  "SELECT tenant_id, count(*) AS cycles, count(resolved_ts) AS resolved,
          round(approx_percentile_cont(first_response_ms, 0.5) / 60000.0, 1) AS first_response_p50_min,
          round(approx_percentile_cont(resolution_ms, 0.5) / 60000.0, 1) AS resolution_p50_min
     FROM conversation_cycles GROUP BY tenant_id ORDER BY tenant_id"
sql "Peak hours: inbound messages by local hour (top 5, all tenants)" \
  "SELECT local_hour, sum(messages) AS inbound FROM message_volume
    WHERE direction = 'inbound' GROUP BY local_hour ORDER BY inbound DESC LIMIT 5"
sql "Weekly retention of the first cohorts (kolkata_foods)" \
  "SELECT cohort_week, cohort_size,
          max(CASE WHEN week_offset = 1 THEN round(100.0 * retained / cohort_size, 1) END) AS week1_pct,
          max(CASE WHEN week_offset = 2 THEN round(100.0 * retained / cohort_size, 1) END) AS week2_pct,
          max(CASE WHEN week_offset = 4 THEN round(100.0 * retained / cohort_size, 1) END) AS week4_pct
     FROM retention WHERE tenant_id = 'kolkata_foods'
    GROUP BY cohort_week, cohort_size ORDER BY cohort_week LIMIT 6"
sql "Default funnel (ny_dental, no bot): contact-days by the furthest step reached" \
  "SELECT furthest_step, count(*) AS contact_days,
          round(approx_percentile_cont(CAST(completed_ts AS BIGINT) - CAST(entry_ts AS BIGINT), 0.5) / 3600000.0, 1) AS p50_hours
     FROM funnel_progress WHERE tenant_id = 'ny_dental' AND funnel_id = 'default'
    GROUP BY furthest_step ORDER BY furthest_step"
sql "Attribution, linear model: conversions credited per channel (all tenants)" \
  "SELECT channel, round(sum(weight), 1) AS conversions, round(sum(credited_value), 2) AS value
     FROM attribution WHERE model = 'linear' GROUP BY channel ORDER BY conversions DESC"
sql "Campaigns (kolkata_foods, first 5): delivery, read and reply rates (%)" \
  "SELECT campaign_id, count(*) AS sent,
          round(100.0 * avg(CASE WHEN delivered_ts IS NOT NULL THEN 1 ELSE 0 END), 1) AS delivered_pct,
          round(100.0 * avg(CASE WHEN read_ts IS NOT NULL THEN 1 ELSE 0 END), 1) AS read_pct,
          round(100.0 * avg(CASE WHEN final_status = 'failed' THEN 1 ELSE 0 END), 1) AS failed_pct,
          round(100.0 * avg(CASE WHEN replied THEN 1 ELSE 0 END), 1) AS replied_pct
     FROM message_status WHERE tenant_id = 'kolkata_foods' AND sender = 'campaign'
    GROUP BY campaign_id ORDER BY campaign_id LIMIT 5"
sql "CSAT from reactions, by what was reacted to" \
  "SELECT sender, sum(CASE WHEN sentiment = 'positive' THEN 1 ELSE 0 END) AS positive,
          sum(CASE WHEN sentiment = 'negative' THEN 1 ELSE 0 END) AS negative,
          round(1.0 * sum(CASE WHEN sentiment = 'positive' THEN 1 ELSE 0 END)
                / sum(CASE WHEN sentiment <> 'neutral' THEN 1 ELSE 0 END), 3) AS csat
     FROM reactions GROUP BY sender ORDER BY sender"
sql "Business senders: hours, hours not fully up, hours scored 0, mean health" \
  "SELECT tenant_id, session_id, count(*) AS hours, sum(CASE WHEN uptime < 1 THEN 1 ELSE 0 END) AS troubled,
          sum(CASE WHEN health_score = 0 THEN 1 ELSE 0 END) AS zero, round(avg(health_score), 1) AS mean_score
     FROM session_health GROUP BY tenant_id, session_id ORDER BY tenant_id, session_id"
sql "Rejected input, by the field at fault" \
  "SELECT split_part(reason, ':', 1) AS field, count(*) AS lines, min(source) AS example,
          left(min(reason), 70) AS example_reason
     FROM rejected GROUP BY 1 ORDER BY lines DESC"
echo
echo "Query it yourself: target/release/convoflow sql --data demo/data \"SELECT * FROM contacts LIMIT 5\""
echo "Reports (funnel, attribution, campaigns, CSAT, session health, agents) as SQL: docs/REPORTS.md"
