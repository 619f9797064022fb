#!/usr/bin/env bash
# make bench: plain Envoy vs Envoy + no-op wasm vs Envoy + Tollgate (and a naive re-serializing
# filter), interleaved rounds with wrk on loopback; prints a markdown table and regenerates its
# section of BENCHMARKS.md. Takes about 4 minutes with the defaults and loads the machine: don't
# run it while something else is being measured. Knobs: see bench/bench.py.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
for f in "$CARGO_TARGET_DIR/wasm32-wasip1/release/tollgate.wasm" "$CARGO_TARGET_DIR/wasm32-wasip1/release/noop_filter.wasm" \
         "$CARGO_TARGET_DIR/release/mock-llm" .venv/bin/envoy; do
  [ -e "$f" ] || { echo "bench: $f is missing: run 'make build'" >&2; exit 2; }
done
command -v wrk >/dev/null || { echo "bench: wrk is missing: run scripts/setup.sh" >&2; exit 2; }
exec timeout --kill-after=10 900 python3 bench/bench.py "$@"
