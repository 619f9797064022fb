#!/usr/bin/env bash
# Builds the host's own test filter (fixtures/probe-filter) to $CARGO_TARGET_DIR/probe/.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
target="${CARGO_TARGET_DIR:-$here/../target}/probe"
cargo build --release --target wasm32-wasip1 --manifest-path "$here/fixtures/probe-filter/Cargo.toml" --target-dir "$target" >&2
echo "$target/wasm32-wasip1/release/probe_filter.wasm"
