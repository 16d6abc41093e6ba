#!/usr/bin/env bash
# The whole test suite: unit, golden, property, end-to-end CLI tests, and the scaled deployment's
# tests against real NATS JetStream and ClickHouse servers, which this script installs (Debian
# packages) and starts if they are not running, and stops again afterwards.
# Works on a fresh Debian machine as root with the Rust toolchain installed.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v cargo >/dev/null 2>&1; then
  echo "cargo is required (the machine's Rust toolchain)" >&2
  exit 1
fi

if ! cargo clippy --version >/dev/null 2>&1 || ! cargo fmt --version >/dev/null 2>&1; then
  rustup component add clippy rustfmt
fi

# House rules first: they fail in seconds, the build takes minutes.
cargo fmt --all -- --check || { echo "run \`cargo fmt --all\` and commit the result" >&2; exit 1; }
# One target dir for everything; the build is most of the time (DataFusion).
cargo build --workspace --all-targets --locked
cargo clippy --workspace --all-targets --locked -- -D warnings

# Stop afterwards only what this script started.
status_before=$(bash scripts/services.sh status)
started_services=yes
if [[ $status_before == *"NATS running"* && $status_before == *"ClickHouse running"* ]]; then
  started_services=no
fi
bash scripts/services.sh start
export CONVOFLOW_TEST_NATS=${CONVOFLOW_TEST_NATS:-nats://127.0.0.1:${NATS_PORT:-4222}}
export CONVOFLOW_TEST_CLICKHOUSE=${CONVOFLOW_TEST_CLICKHOUSE:-http://127.0.0.1:${CLICKHOUSE_HTTP_PORT:-8123}}
# Tests that need the services skip with a notice when these are unset; here they must run.
export CONVOFLOW_TEST_REQUIRE_SERVICES=1

log=$(mktemp)
cleanup() {
  rm -f "$log"
  if [[ $started_services == yes ]]; then bash scripts/services.sh stop >/dev/null; fi
}
trap cleanup EXIT
set +e
cargo test --workspace --locked 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
# cargo prints one result line per test binary; sum them into one closing line.
passed=$(grep -E '^test result:' "$log" | grep -Eo '[0-9]+ passed' | awk '{s += $1} END {print s + 0}')
failed=$(grep -E '^test result:' "$log" | grep -Eo '[0-9]+ failed' | awk '{s += $1} END {print s + 0}')
echo "tests: $passed passed, $failed failed"
exit "$status"
