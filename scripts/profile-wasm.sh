#!/usr/bin/env bash
# Where the filter's wasm time goes, by function: the chat workload run many times in the
# host-tests' wasmtime host (the `instructions` binary, feature `profile`), sampled by `perf record`
# with wasmtime's perf map naming the functions cranelift compiled from tollgate.wasm.
#
# wasmtime fuel (make bench's instruction counts) gives exact totals per callback but not where
# inside the filter they go; this gives the split, as shares of the samples that landed in wasm
# code (the host's own time, which Envoy does not share, is left out). Cranelift is not V8, so
# read shares, not absolute times. Not part of `make test` or `make bench`.
#
# Usage: scripts/profile-wasm.sh [metering|enforcement|content|first|ends] [rows]
#   content: one long stream of content events matched by their template (the per-chunk steady state)
#   first: streams of one event (its skim teaches the template) and [DONE], with their request
#   ends: streams of the first, finish and usage events and [DONE] (the response's fixed costs)
#   PROFILE_REQUESTS (20000), TOLLGATE_WASM (the built filter), CARGO_TARGET_DIR.
set -euo pipefail
cd "$(dirname "$0")/.."
case_name="${1:-metering}"
rows="${2:-40}"
command -v perf >/dev/null || { echo "profile-wasm: needs perf (Debian: linux-perf)" >&2; exit 1; }
target="${CARGO_TARGET_DIR:-$PWD/target}"
wasm="${TOLLGATE_WASM:-$target/wasm32-wasip1/release/tollgate.wasm}"
[ -f "$wasm" ] || { echo "profile-wasm: no $wasm; run make wasm first" >&2; exit 1; }
CARGO_PROFILE_RELEASE_LTO=false CARGO_PROFILE_RELEASE_CODEGEN_UNITS=16 \
    cargo build --release -p tollgate-host-tests --features profile --bin instructions
data="$(mktemp -d)/perf.data"
TOLLGATE_PERFMAP=1 TOLLGATE_WASM="$wasm" BENCH_PROFILE_CASE="$case_name" \
    BENCH_PROFILE_REQUESTS="${PROFILE_REQUESTS:-20000}" \
    perf record -q -F 2999 -o "$data" "$target/release/instructions"
perf report -i "$data" --no-children --sort sym --stdio -g none 2>/dev/null | python3 -c '
import re, sys

def demangle(name):
    """Legacy Rust mangling (_ZN<len><segment>...E) to a readable path; others as they are.
    The perf map cuts long names: a cut segment keeps what is there, marked with ~."""
    m = re.match(r"_ZN(.*?)E?$", name)
    if not m:
        return name
    rest, parts = m.group(1), []
    while rest:
        n = re.match(r"(\d+)", rest)
        if not n:
            break
        size = int(n.group(1))
        start = len(n.group(1))
        segment = rest[start:start + size]
        parts.append(segment if len(segment) == size else segment + "~")
        rest = rest[start + size:]
    if parts and re.fullmatch(r"h[0-9a-f]{16}", parts[-1]):
        parts.pop()
    text = "::".join(parts)
    for code, char in (("$LT$", "<"), ("$GT$", ">"), ("$u20$", " "), ("$RF$", "&"), ("$C$", ","), ("$BP$", "*"), ("$u7b$", "{"), ("$u7d$", "}"), ("..", "::")):
        text = text.replace(code, char)
    return text

rows = []
for line in sys.stdin:
    m = re.match(r"\s*([\d.]+)%\s+\[\.\]\s+wasm\[\d+\]::function\[\d+\]::(\S+)", line)
    if m:
        rows.append((float(m.group(1)), demangle(m.group(2))))
total = sum(share for share, _ in rows)
if not total:
    sys.exit("profile-wasm: no samples in wasm code (is perf allowed to read this process?)")
print(f"samples in the filter'"'"'s wasm code: {total:.1f}% of all; shares below are of those")
print("| share | function |")
print("|---:|---|")
for share, name in rows[:int(sys.argv[1])]:
    print(f"| {100 * share / total:.1f}% | `{name[:140]}` |")
' "$rows"
