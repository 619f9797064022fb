#!/usr/bin/env bash
# The console in a real browser: Debian's chromium driven by selenium (from the venv) through
# Debian's chromedriver, against a real tollgate-counter on a free loopback port. The pytest suite
# lives in console-tests/ (docs/console.md). Screenshots go to $CARGO_TARGET_DIR/console-shots.
# Extra arguments go to pytest, e.g. `scripts/test-console.sh -k simulator`.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"

missing=()
[ -x .venv/bin/pytest ] && .venv/bin/python -c 'import selenium' 2>/dev/null || missing+=("the venv with selenium: run scripts/setup.sh")
command -v chromium >/dev/null && command -v chromedriver >/dev/null || missing+=("chromium and chromedriver: run scripts/setup.sh")
counter="${TOLLGATE_COUNTER_BIN:-$CARGO_TARGET_DIR/release/tollgate-counter}"
[ -x "$counter" ] || missing+=("$counter: run make native")
[ -f "$CARGO_TARGET_DIR/simulator-pkg/tollgate_simulator_bg.wasm" ] || missing+=("the simulator's browser build: run make simulator")
if [ ${#missing[@]} -gt 0 ]; then
  printf 'test-console: missing %s\n' "${missing[@]}" >&2
  exit 2
fi

# The whole run is bounded: every wait inside is bounded too, this is the backstop.
exec timeout --kill-after=10 600 .venv/bin/pytest -p no:cacheprovider -q -rfEs console-tests "$@"
