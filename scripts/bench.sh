#!/usr/bin/env bash
# make bench: every benchmark figure in one run, written into BENCHMARKS.md (one regenerated section
# per part, each with its command and the machine conditions):
#   instructions  wasm instructions per request (host-tests; compiled here on first use)
#   v8            the filters' own time in V8 without Envoy (bench/v8-time.mjs in Node), warm and
#                 with the caches evicted before each request, and their footprint: the code and
#                 memory lines one request touches (bench/wasm-footprint)
#   envoy         plain Envoy vs no-op wasm vs naive vs the host-call floor (`calls`, and `calls-v1`:
#                 the floor before issue 17 corrected it, side by side) vs Tollgate (metering) vs
#                 Tollgate with full enforcement against a real tollgate-counter; interleaved wrk
#                 rounds on loopback
#   envoy2        the same with Envoy --concurrency 2 (both CPUs to Envoy, load time-shared)
#   counter/redis tollgate-counter bench on SQLite and on a real redis-server (loopback, temp dir)
# Takes about 15 minutes with the defaults (plus a one-time compile of the instruction counter) and
# loads the machine: don't run it while something else is being measured.
# `scripts/bench.sh --quick`: smoke run (~1 minute), output to a temp file, not BENCHMARKS.md.
# `scripts/bench.sh --dynamic`: also the opt-in native floors (`dynamic-noop`, `dynamic`: Envoy
# dynamic modules, bench/dynamic-calls, built here first); that run's table goes to its own section
# of BENCHMARKS.md ("Dynamic modules (explored)"), never over the default one. With BENCH_PARTS=envoy
# and a short BENCH_CASES it takes a few minutes, e.g.
#   BENCH_PARTS=envoy BENCH_CASES=plain,noop,calls,tollgate scripts/bench.sh --dynamic
# Knobs: see bench/bench.py (BENCH_PARTS, BENCH_CASES, BENCH_ROUNDS, ...).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
parts="${BENCH_PARTS:-instructions,v8,envoy,envoy2,counter,redis}"
cases=",${BENCH_CASES:-plain,noop,naive,calls-v1,calls,tollgate,enforce},"
# The scale part (envoy2) runs its own cases; what it needs is checked with the envoy part's.
case ",$parts," in *,envoy2,*) cases="$cases${BENCH_CASES2:-plain,noop,calls,tollgate,enforce}," ; parts="$parts,envoy" ;; esac
dynamic=0
for arg in "$@"; do [ "$arg" = --dynamic ] && dynamic=1; done
case "$cases" in *,dynamic,*|*,dynamic-noop,*) dynamic=1 ;; esac
need=(.venv/bin/envoy)
# What the envoy part needs depends on its cases (the default set needs all of it).
if [[ ",$parts," == *,envoy,* ]]; then
  need+=("$CARGO_TARGET_DIR/release/mock-llm")
  [[ "$cases" =~ ,(noop|naive|calls|calls-v1), ]] && need+=("$CARGO_TARGET_DIR/wasm32-wasip1/release/noop_filter.wasm")
  [[ "$cases" =~ ,(tollgate|enforce), ]] && need+=("$CARGO_TARGET_DIR/wasm32-wasip1/release/tollgate.wasm")
  [[ "$cases" == *,enforce,* ]] && need+=("${TOLLGATE_COUNTER_BIN:-$CARGO_TARGET_DIR/release/tollgate-counter}")
fi
# The v8 part: Node runs the filters outside Envoy on the mock's answer.
if [[ ",$parts," == *,v8,* ]]; then
  need+=("$CARGO_TARGET_DIR/release/mock-llm" "$CARGO_TARGET_DIR/wasm32-wasip1/release/noop_filter.wasm" "$CARGO_TARGET_DIR/wasm32-wasip1/release/tollgate.wasm")
  command -v node >/dev/null || { echo "bench: node is missing: run scripts/setup.sh" >&2; exit 2; }
  # Its footprint table: the filters rewritten by bench/wasm-footprint (outside the workspace:
  # `make test` never builds it), built here.
  cargo build --release -q --locked --manifest-path bench/wasm-footprint/Cargo.toml --target-dir "$CARGO_TARGET_DIR/wasm-footprint"
fi
case ",$parts," in *,counter,*|*,redis,*) need+=("${TOLLGATE_COUNTER_BIN:-$CARGO_TARGET_DIR/release/tollgate-counter}") ;; esac
for f in "${need[@]}"; do
  [ -e "$f" ] || { echo "bench: $f is missing: run 'make build'" >&2; exit 2; }
done
case ",$parts," in *,envoy,*) command -v wrk >/dev/null || { echo "bench: wrk is missing: run scripts/setup.sh" >&2; exit 2; } ;; esac
case ",$parts," in *,redis,*) command -v "${REDIS_SERVER:-redis-server}" >/dev/null || { echo "bench: redis-server is missing: run scripts/setup.sh" >&2; exit 2; } ;; esac
# LiteLLM's proxy for the comparison row (issue 15 §6): installed once into .venv-litellm, a
# pinned version below 1.107.0 (a compromised release). A failed install leaves the row out.
case ",$parts,${BENCH_CASES:-litellm}," in
  *,envoy,*litellm*)
    if [ ! -x .venv-litellm/bin/litellm ]; then
      echo "bench: installing litellm[proxy]==1.106.12 into .venv-litellm (once)" >&2
      (python3 -m venv .venv-litellm && .venv-litellm/bin/pip install -q 'litellm[proxy]==1.106.12') \
        || { echo "bench: litellm did not install; its row is left out" >&2; rm -rf .venv-litellm; }
    fi ;;
esac
# The native module for the opt-in dynamic cases: outside the workspace (its own lock file), so it
# is built only here, with the release profile in its Cargo.toml.
if [ "$dynamic" = 1 ] && [[ ",$parts," == *,envoy,* ]] && [ -z "${BENCH_DYNAMIC_MODULE:-}" ]; then
  cargo build --release -q --manifest-path bench/dynamic-calls/Cargo.toml --target-dir "$CARGO_TARGET_DIR/dynamic-calls"
fi
exec timeout --kill-after=10 2400 python3 bench/bench.py "$@"
