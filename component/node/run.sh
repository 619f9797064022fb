#!/usr/bin/env bash
# The component under Node through jco: transpile tollgate_component.wasm to JS (out/), then run
# the shared case table (cases.mjs). Needs `npm ci` here first (scripts/setup.sh does it).
set -euo pipefail
cd "$(dirname "$0")"
wasm="${1:-${CARGO_TARGET_DIR:-../../target}/wasm32-wasip2/release/tollgate_component.wasm}"
[ -f "$wasm" ] || { echo "component/node: $wasm is missing: run make component" >&2; exit 2; }
[ -x node_modules/.bin/jco ] || { echo "component/node: jco is missing: run scripts/setup.sh (npm ci in component/node)" >&2; exit 2; }
rm -rf out
node_modules/.bin/jco transpile "$wasm" --name tollgate --out-dir out --quiet
exec node cases.mjs
