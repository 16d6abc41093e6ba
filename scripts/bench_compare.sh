#!/usr/bin/env bash
# Two builds of convoflow on the same input, in one sitting, runs interleaved (A B A B …) so that
# the machine's noise falls on both: `replay` into a fresh embedded store, and
# `replay --nats --clickhouse` on a fresh stream and database. Prints wall time and peak RSS of
# each run. Build each binary first (e.g. from a `git worktree` of the older commit).
# Usage: scripts/bench_compare.sh OLD_BIN NEW_BIN [N] [RUNS]   (defaults: 1000000 events, 3 runs)
# Work files go to ${BENCH_DIR:-/tmp/convoflow-bench}; SCALED=0 skips the JetStream/ClickHouse part.
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -ge 2 ] || { echo "usage: $0 OLD_BIN NEW_BIN [N] [RUNS]" >&2; exit 2; }
old=$(realpath "$1")
new=$(realpath "$2")
n=${3:-1000000}
runs=${4:-3}
dir="${BENCH_DIR:-/tmp/convoflow-bench}"
mkdir -p "$dir"
command -v /usr/bin/time >/dev/null || apt-get install -y time >/dev/null
input="$dir/events-$n.ndjson"
tenants="${input%.ndjson}.tenants.json"
[ -f "$input" ] || "$new" generate --events "$n" --seed 42 --tenants 4 --out "$input"
echo "machine: $(nproc) cores, $(free -g | awk '/Mem:/ {print $2}') GiB, $(uname -m); $(date -u +%F)"
echo "input: $input ($(du -h "$input" | cut -f1)), $runs runs of each, interleaved"

# One measured run: prints "label wall_seconds peak_rss_mb".
measure() {
  local label=$1
  shift
  /usr/bin/time -f "%e %M" -o "$dir/time.txt" "$@" >"$dir/out.txt" 2>&1 || {
    cat "$dir/out.txt" >&2
    exit 1
  }
  read -r wall rss <"$dir/time.txt"
  echo "$label $wall $((rss / 1024))"
}

echo "== replay (fresh embedded store): label wall_s peak_rss_MB"
for run in $(seq "$runs"); do
  for label in old new; do
    bin=$old
    [ $label = new ] && bin=$new
    rm -rf "$dir/data"
    sync
    sleep 2
    measure "$label" "$bin" replay --input "$input" --tenants "$tenants" --data "$dir/data"
  done
done
rm -rf "$dir/data"

[ "${SCALED:-1}" = 1 ] || exit 0
bash scripts/services.sh start >/dev/null
echo "== replay --nats --clickhouse (fresh stream and database): label wall_s peak_rss_MB"
for run in $(seq "$runs"); do
  for label in old new; do
    bin=$old
    [ $label = new ] && bin=$new
    name="compare$(date +%s)$label"
    sync
    sleep 2
    CONVOFLOW_NATS_STREAM="BENCH_$name" CONVOFLOW_NATS_SUBJECT_PREFIX="bench.$name" CONVOFLOW_NATS_CONSUMER="$name" \
      measure "$label" "$bin" replay --input "$input" --tenants "$tenants" \
      --nats nats://127.0.0.1:4222 --clickhouse "http://127.0.0.1:8123/$name"
    curl -sS "http://127.0.0.1:8123/" --data-binary "DROP DATABASE IF EXISTS $name" >/dev/null
  done
done
