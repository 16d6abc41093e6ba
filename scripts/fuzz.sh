#!/usr/bin/env bash
# Fuzzes the canonical parser, the WhatsApp normalizer, the ClickHouse tenant scoper and the SQL
# endpoint for many cases (scripts/test.sh runs a fixed budget of each on every test run).
#
#   bash scripts/fuzz.sh                    # 1,000,000 cases of each parser target, 100,000 SQL queries
#   CASES=10000000 SEED=7 bash scripts/fuzz.sh
#   TARGET=scoper bash scripts/fuzz.sh
#
# Findings (input and problem) are written to fuzz/findings/; the script exits 1 if there are any.
# Record runs in FUZZING.md.
set -euo pipefail
cd "$(dirname "$0")/.."
CASES="${CASES:-1000000}"
SQL_CASES="${SQL_CASES:-100000}"
SEED="${SEED:-$(date +%s)}"
TARGET="${TARGET:-all}"
cargo build -q -p convoflow-fuzz
run() { target/debug/convoflow-fuzz --target "$1" --cases "$2" --seed "$SEED" --findings fuzz/findings; }
echo "seed $SEED"
status=0
for target in canonical whatsapp scoper sql; do
  if [ "$TARGET" != all ] && [ "$TARGET" != "$target" ]; then continue; fi
  if [ "$target" = sql ]; then cases="$SQL_CASES"; else cases="$CASES"; fi
  run "$target" "$cases" || status=1
done
exit "$status"
