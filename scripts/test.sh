#!/usr/bin/env bash
# The whole test suite: unit, golden, property and end-to-end CLI tests.
# Works on a fresh Debian machine as root with the Rust toolchain installed.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v cargo >/dev/null 2>&1; then
  echo "cargo is required (the machine's Rust toolchain)" >&2
  exit 1
fi

# One target dir for everything; the build is most of the time (DataFusion).
cargo build --workspace --all-targets --locked

log=$(mktemp)
trap 'rm -f "$log"' EXIT
set +e
cargo test --workspace --locked 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
# cargo prints one result line per test binary; sum them into one closing line.
passed=$(grep -E '^test result:' "$log" | grep -Eo '[0-9]+ passed' | awk '{s += $1} END {print s + 0}')
failed=$(grep -E '^test result:' "$log" | grep -Eo '[0-9]+ failed' | awk '{s += $1} END {print s + 0}')
echo "tests: $passed passed, $failed failed"
exit "$status"
