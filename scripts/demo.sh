#!/usr/bin/env bash
# The main job on the embedded default: generate a realistic data set, replay it into ./data and
# print headline metrics. Usage: scripts/demo.sh [EVENTS] (default 1000000).
set -euo pipefail
cd "$(dirname "$0")/.."
events="${1:-1000000}"

cargo build --release --locked -p convoflow-pipeline --bin convoflow
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
sql "Rejected input, by the field at fault" \
  "SELECT split_part(reason, ':', 1) AS field, count(*) AS lines, min(source) AS example,
          left(min(reason), 70) AS example_reason
     FROM rejected GROUP BY 1 ORDER BY lines DESC"
echo
echo "Query it yourself: target/release/convoflow sql --data demo/data \"SELECT * FROM contacts LIMIT 5\""
