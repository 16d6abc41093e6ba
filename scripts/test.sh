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
cargo test --workspace --locked
