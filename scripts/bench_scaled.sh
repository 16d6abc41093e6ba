#!/usr/bin/env bash
# Scaled-path benchmark: generates N events (default 1000000), publishes them through NATS
# JetStream and consumes them into ClickHouse with `convoflow replay --nats --clickhouse`, on a
# fresh stream and database each run; prints the publish and consume figures and peak RSS. Then
# rebuilds from the full stream into another fresh database: the consume side alone.
# Usage: scripts/bench_scaled.sh [N...]   Work files go to ${BENCH_DIR:-/tmp/convoflow-bench}.
set -euo pipefail
cd "$(dirname "$0")/.."
sizes=("$@")
[ ${#sizes[@]} -gt 0 ] || sizes=(1000000)
dir="${BENCH_DIR:-/tmp/convoflow-bench}"
mkdir -p "$dir"
command -v /usr/bin/time >/dev/null || apt-get install -y time >/dev/null

cargo build --release --locked --workspace --bin convoflow
bin="$PWD/target/release/convoflow"
bash scripts/services.sh start
echo "machine: $(nproc) cores, $(free -g | awk '/Mem:/ {print $2}') GiB, $(uname -m); $(date -u +%F)"
for n in "${sizes[@]}"; do
  input="$dir/events-$n.ndjson"
  [ -f "$input" ] || "$bin" generate --events "$n" --seed 42 --tenants 4 --out "$input"
  run="bench$(date +%s)"
  echo "== $n events ($(du -h "$input" | cut -f1) NDJSON) through JetStream into ClickHouse database $run"
  CONVOFLOW_NATS_STREAM="BENCH_$run" CONVOFLOW_NATS_SUBJECT_PREFIX="bench.$run" CONVOFLOW_NATS_CONSUMER="$run" \
    /usr/bin/time -v "$bin" replay --input "$input" --tenants "${input%.ndjson}.tenants.json" \
    --nats nats://127.0.0.1:4222 --clickhouse "http://127.0.0.1:8123/$run" 2> "$dir/time-scaled-$n.txt"
  grep -E "Maximum resident set size|Elapsed \(wall" "$dir/time-scaled-$n.txt"
  echo "== consume side alone: the same stream again, into a fresh database ${run}_rebuilt"
  CONVOFLOW_NATS_STREAM="BENCH_$run" CONVOFLOW_NATS_SUBJECT_PREFIX="bench.$run" \
    /usr/bin/time -v "$bin" replay --from-nats --tenants "${input%.ndjson}.tenants.json" \
    --nats nats://127.0.0.1:4222 --clickhouse "http://127.0.0.1:8123/${run}_rebuilt" 2> "$dir/time-rebuild-$n.txt"
  grep -E "Maximum resident set size|Elapsed \(wall" "$dir/time-rebuild-$n.txt"
done
