#!/usr/bin/env bash
# Replay benchmark: generates N events (default: 1000000 and 10000000), replays each into a fresh
# data dir under /usr/bin/time -v, and prints replay's summary with peak RSS.
# Usage: scripts/bench.sh [N...]   Work files go to ${BENCH_DIR:-/tmp/convoflow-bench}.
set -euo pipefail
cd "$(dirname "$0")/.."
sizes=("$@")
[ ${#sizes[@]} -gt 0 ] || sizes=(1000000 10000000)
dir="${BENCH_DIR:-/tmp/convoflow-bench}"
mkdir -p "$dir"
command -v /usr/bin/time >/dev/null || apt-get install -y time >/dev/null

cargo build --release --locked --workspace --bin convoflow
bin="$PWD/target/release/convoflow"
echo "machine: $(nproc) cores, $(free -g | awk '/Mem:/ {print $2}') GiB, $(uname -m); $(date -u +%F)"
for n in "${sizes[@]}"; do
  input="$dir/events-$n.ndjson"
  [ -f "$input" ] || "$bin" generate --events "$n" --seed 42 --tenants 4 --out "$input"
  echo "== replay of $n events ($(du -h "$input" | cut -f1) NDJSON), fresh store"
  rm -rf "$dir/data-$n"
  /usr/bin/time -v "$bin" replay --input "$input" --tenants "${input%.ndjson}.tenants.json" --data "$dir/data-$n" \
    2> "$dir/time-$n.txt"
  grep -E "Maximum resident set size|Elapsed \(wall" "$dir/time-$n.txt"
  echo "== replay of the same $n events again (all duplicates; store reloaded)"
  /usr/bin/time -v "$bin" replay --input "$input" --tenants "${input%.ndjson}.tenants.json" --data "$dir/data-$n" \
    2> "$dir/time-$n-again.txt" | head -6
  grep -E "Maximum resident set size" "$dir/time-$n-again.txt"
done
