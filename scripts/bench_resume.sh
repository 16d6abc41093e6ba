#!/usr/bin/env bash
# Persisted operator state against re-feeding (issue 13), in one sitting, runs interleaved so the
# machine's noise falls on both. On a store made by one `replay` of N generated events:
#   1. `replay` of a 1-event file (a late event) into a copy of the store, resuming the saved state,
#      against the same after removing `tables/generation` (which forces the re-feed);
#   2. `serve` started on a copy of the store until it prints its ready line, both ways.
# Prints wall time and peak RSS of each run, and the replay's phases line.
# Usage: scripts/bench_resume.sh BIN [N] [RUNS]   (defaults: 1000000 events, 3 runs)
# Work files go to ${BENCH_DIR:-/tmp/convoflow-bench}.
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -ge 1 ] || { echo "usage: $0 BIN [N] [RUNS]" >&2; exit 2; }
bin=$(realpath "$1")
n=${2:-1000000}
runs=${3:-3}
dir="${BENCH_DIR:-/tmp/convoflow-bench}"
mkdir -p "$dir"
command -v /usr/bin/time >/dev/null || apt-get install -y time >/dev/null
input="$dir/events-$n.ndjson"
tenants="${input%.ndjson}.tenants.json"
[ -f "$input" ] || "$bin" generate --events "$n" --seed 42 --tenants 4 --out "$input"
echo "machine: $(nproc) cores, $(free -g | awk '/Mem:/ {print $2}') GiB, $(uname -m); $(date -u +%F)"
echo "input: $input ($(du -h "$input" | cut -f1)), $runs runs of each, interleaved"

# A late event: a copy of the input's first inbound message, with an id of its own.
late="$dir/late.ndjson"
grep -m1 '"message.received"' "$input" | sed 's/"event_id":"[^"]*"/"event_id":"late-1"/' >"$late"

measure() {
  local label=$1
  shift
  /usr/bin/time -f "%e %M" -o "$dir/time.txt" "$@" >"$dir/out.txt" 2>&1 || {
    cat "$dir/out.txt" >&2
    exit 1
  }
  read -r wall rss <"$dir/time.txt"
  echo "$label $wall s $((rss / 1024)) MB | $(grep -o 'phases.*' "$dir/out.txt" || true)"
}

# A copy of the base store; `refeed` removes what ties the saved state to its tables.
store_copy() {
  rm -rf "$dir/data"
  cp -a "$dir/base" "$dir/data"
  [ "$1" = resume ] || rm -f "$dir/data/tables/generation"
  sync
  sleep 2
}

echo "== the base store: replay of the whole input into a fresh store"
rm -rf "$dir/base"
measure fresh "$bin" replay --input "$input" --tenants "$tenants" --data "$dir/base"

echo "== replay of 1 late event into the store: label wall peak_rss | phases"
for run in $(seq "$runs"); do
  for label in resume refeed; do
    store_copy $label
    measure "$label" "$bin" replay --input "$late" --tenants "$tenants" --data "$dir/data"
  done
done

echo "== serve on the store, until its ready line: label wall peak_rss_at_ready | ready line"
for run in $(seq "$runs"); do
  for label in resume refeed; do
    store_copy $label
    started=$(date +%s.%N)
    "$bin" serve --data "$dir/data" --tenants "$tenants" --listen 127.0.0.1:0 >"$dir/serve.txt" 2>"$dir/serve.err" &
    pid=$!
    until grep -q '^ready in' "$dir/serve.txt"; do
      kill -0 $pid 2>/dev/null || { cat "$dir/serve.err" >&2; exit 1; }
      sleep 0.05
    done
    ended=$(date +%s.%N)
    rss=$(awk '/VmHWM/ {print int($2 / 1024)}' /proc/$pid/status)
    kill -TERM $pid
    wait $pid || true
    echo "$label $(awk -v a="$started" -v b="$ended" 'BEGIN { printf "%.2f", b - a }') s $rss MB | $(grep '^ready in' "$dir/serve.txt")"
  done
done
rm -rf "$dir/data"
