#!/usr/bin/env bash
# One store fed in chunks (issue 13: 100 M events replayed in chunks of 10 M into one store; the
# time of each chunk must not grow with the store). The input is cut with `split --filter`, so
# only one chunk is on disk at a time beside the input. Prints, per chunk: wall time, peak RSS,
# the replay's phases line, and the store's size after it.
# Usage: scripts/bench_chunks.sh BIN INPUT CHUNK_LINES   (tenants: INPUT's .tenants.json)
# INPUT may be a named pipe that `generate` writes, so the input is never on disk whole:
#   mkfifo /tmp/e100.ndjson
#   convoflow generate --events 100000000 --seed 42 --out /tmp/e100.ndjson &
#   bash scripts/bench_chunks.sh convoflow /tmp/e100.ndjson 10000000
# Work files go to ${BENCH_DIR:-/tmp/convoflow-chunks}.
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -eq 3 ] || { echo "usage: $0 BIN INPUT CHUNK_LINES" >&2; exit 2; }
bin=$(realpath "$1")
input=$(realpath "$2")
lines=$3
tenants="${input%.ndjson}.tenants.json"
dir="${BENCH_DIR:-/tmp/convoflow-chunks}"
command -v /usr/bin/time >/dev/null || apt-get install -y time >/dev/null
rm -rf "$dir"
mkdir -p "$dir"
echo "machine: $(nproc) cores, $(free -g | awk '/Mem:/ {print $2}') GiB, $(uname -m); $(date -u +%F)"
if [ -p "$input" ]; then size="a pipe"; else size=$(du -h "$input" | cut -f1); fi
echo "input: $input ($size), chunks of $lines lines"
echo "chunk wall peak_rss store | phases"
export bin tenants dir
split -l "$lines" -d -a 3 --filter='
  cat >"$dir/chunk.ndjson"
  /usr/bin/time -f "%e %M" -o "$dir/time.txt" "$bin" replay --input "$dir/chunk.ndjson" --tenants "$tenants" \
    --data "$dir/data" >"$dir/out.txt" 2>&1 || { cat "$dir/out.txt" >&2; exit 1; }
  rm -f "$dir/chunk.ndjson"
  read -r wall rss <"$dir/time.txt"
  echo "$FILE $wall s $((rss / 1024)) MB $(du -sh "$dir/data" | cut -f1) | $(grep -o "phases.*" "$dir/out.txt" || true)"
' "$input" chunk-
