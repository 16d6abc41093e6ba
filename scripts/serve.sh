#!/usr/bin/env bash
# The main job: build convoflow and run `convoflow serve` on the embedded default — the HTTP API,
# the durable local log, the dataflow and the store in one process, data in ./data, listening on
# http://127.0.0.1:8080 (open it in a browser for the live dashboard). Ctrl-C stops it cleanly.
# Extra arguments go to `convoflow serve`, e.g. `bash scripts/serve.sh --demo` for live traffic.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked --workspace --bin convoflow
exec target/release/convoflow serve "$@"
