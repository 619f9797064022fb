#!/usr/bin/env bash
# Fails, naming file and line, where Rust code reads the machine's clock outside a clock module.
#
# Why: a test harness injects a manual clock; one stray `SystemTime::now()` deep in a store made a
# test compare the harness's date with today's, and `make test` failed on a clean tree once the
# real date moved on (2026-11-26). Every time read goes through the one `Clock` of each binary
# (counter/src/clock.rs; the filter's time comes from the proxy-wasm host), so tests stay
# deterministic whatever the date. Allowed: files named `clock.rs` or under a `clock/` directory.
#
#   scripts/check-clock-reads.sh [DIR...]   check DIRs (default: every crate of the workspace)
#   scripts/check-clock-reads.sh --self-test
set -euo pipefail
cd "$(dirname "$0")/.."

pattern='(SystemTime|Instant|Utc|Local|OffsetDateTime)::now|UNIX_EPOCH\.elapsed'

check() {
  local hits
  hits=$(grep -rnE --include='*.rs' "$pattern" "$@" 2>/dev/null | grep -vE '(^|/)clock(\.rs:|/)' || true)
  if [ -n "$hits" ]; then
    echo "clock reads outside a clock module (read the time from the injected Clock; see counter/src/clock.rs):" >&2
    echo "$hits" >&2
    return 1
  fi
}

if [ "${1:-}" = "--self-test" ]; then
  dir=$(mktemp -d)
  trap 'rm -rf "$dir"' EXIT
  mkdir -p "$dir/src/clock"
  echo 'fn now() -> i64 { SystemTime::now(); 0 }' >"$dir/src/clock.rs"
  echo 'fn t() { let _ = Instant::now(); }' >"$dir/src/clock/mono.rs"
  check "$dir" || { echo "self-test: a clock module was refused" >&2; exit 1; }
  printf 'fn f() {}\nfn g() { let t = std::time::SystemTime::now(); }\n' >"$dir/src/store.rs"
  if out=$(check "$dir" 2>&1); then
    echo "self-test: a SystemTime::now outside the clock module passed" >&2
    exit 1
  fi
  grep -q "store.rs:2:" <<<"$out" || { echo "self-test: the report does not name file and line: $out" >&2; exit 1; }
  echo "check-clock-reads: self-test ok"
  exit 0
fi

if [ $# -eq 0 ]; then
  set -- $(sed -n 's/^members *= *\[\(.*\)\]/\1/p' Cargo.toml | tr -d '",')
fi
check "$@"
echo "check-clock-reads: no clock reads outside the clock modules ($*)"
