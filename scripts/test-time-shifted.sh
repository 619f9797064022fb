#!/usr/bin/env bash
# Runs the native test suites of core and counter again with the machine's clock shifted
# (Debian's faketime): once about 400 days ahead, once 2 seconds before midnight UTC at the end of
# a leap February. A test that reads the real date instead of the injected clock, or a window that
# mishandles a month end or a leap day, fails here even when it passes today.
#
# The test binaries are built first (without faketime: cargo hangs under libfaketime) and then run
# directly, each from its package directory as `cargo test` would. Monotonic time is left real
# (FAKETIME_DONT_FAKE_MONOTONIC) so timeouts and tokio timers behave.
set -euo pipefail
cd "$(dirname "$0")/.."

command -v faketime >/dev/null || { echo "faketime is missing: run bash scripts/setup.sh" >&2; exit 1; }

packages=(-p tollgate-core -p tollgate-counter)
executables=$(cargo test --release "${packages[@]}" --no-run --message-format=json 2>/dev/null | python3 -c '
import json, os, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["profile"]["test"]:
        print(os.path.dirname(m["manifest_path"]) + "\t" + m["executable"])
')
[ -n "$executables" ] || { echo "no test executables were built" >&2; exit 1; }

shifts=("+400d" "@2028-02-29 23:59:58")
failed=0
for shift in "${shifts[@]}"; do
  echo "== native suites of core and counter with the clock at '$shift' (faketime)"
  while IFS=$'\t' read -r dir exe; do
    if ! (cd "$dir" && TZ=UTC FAKETIME_DONT_FAKE_MONOTONIC=1 timeout 300 faketime -f "$shift" "$exe" -q); then
      echo "FAILED with the clock at '$shift': $exe" >&2
      failed=1
    fi
  done <<<"$executables"
done
exit $failed
