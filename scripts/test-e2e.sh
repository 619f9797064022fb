#!/usr/bin/env bash
# End-to-end tests on real Envoy: Envoy 1.40 from .venv, the release tollgate.wasm, and mock-llm,
# all on free loopback ports; the pytest suite lives in envoy/tests (see docs/testing.md).
# Extra arguments go to pytest, e.g. `scripts/test-e2e.sh -k anthropic -x`.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"

missing=()
[ -x .venv/bin/envoy ] && [ -x .venv/bin/pytest ] || missing+=("the venv (.venv/bin/envoy, pytest): run scripts/setup.sh")
[ -f "$CARGO_TARGET_DIR/wasm32-wasip1/release/tollgate.wasm" ] || missing+=("$CARGO_TARGET_DIR/wasm32-wasip1/release/tollgate.wasm: run make wasm")
[ -x "$CARGO_TARGET_DIR/release/mock-llm" ] || missing+=("$CARGO_TARGET_DIR/release/mock-llm: run make native")
counter="${TOLLGATE_COUNTER_BIN:-$CARGO_TARGET_DIR/release/tollgate-counter}"
[ -x "$counter" ] || missing+=("$counter (enforcement tests): run make native")
if [ ${#missing[@]} -gt 0 ]; then
  printf 'test-e2e: missing %s\n' "${missing[@]}" >&2
  exit 2
fi

# The whole run is bounded: every wait inside is bounded too, this is the backstop.
exec timeout --kill-after=10 600 .venv/bin/pytest -p no:cacheprovider -q -rfEs envoy/tests "$@"
