#!/usr/bin/env python3
"""`make bench`: plain Envoy vs Envoy + no-op wasm vs Envoy + Tollgate, side by side, in one run.

What is measured (issue 2, section 8): a 2 KB streaming chat request whose response is an SSE
stream (20 content events + OpenAI's usage chunk), sent by wrk over loopback to Envoy with one
worker (--concurrency 1). The cases:
  plain     Envoy, no wasm                         (the ceiling)
  noop      Envoy + a wasm filter that does nothing (the floor any wasm filter pays)
  naive     Envoy + a wasm filter that parses the body into serde_json::Value and re-serializes it
  calls     Envoy + a wasm filter that makes Tollgate's host calls on this request (read headers,
            pause, read and write the body, set three headers, read the response headers and
            body, publish one access-log value) and does nothing else: the floor under Tollgate
            that comes from talking to Envoy at all, before any parsing, routing or metering
  calls-v1  the `calls` floor as it was before issue 17 corrected it (the 2026-11-23 figures): the
            same calls without the response-body write where Tollgate strips the usage-only
            chunk; shown beside `calls` so one run tells the reference's change from Tollgate's
  tollgate  Envoy + Tollgate: attribute (virtual key), route (rewrite the model, set the provider
            header), meter the SSE response (tokens and cost)
  litellm   LiteLLM's proxy (pinned below 1.107.0, one worker, no database) in front of the same mock,
            on the same request: the gateway most teams use for budgets today, for comparison
  enforce   the same plus full budget enforcement (docs/enforcement.md): leases from a real
            `tollgate-counter serve` on loopback (SQLite store in a temp dir, budget on org:acme so
            large it never refuses, lease slice big enough that steady state never waits), usage
            records batched and posted to it. Reported with it: requests paused on a lease call
            during the measured rounds (delta of tollgate_enforce_paused_total) and what the counter
            ingested (tollgate_counter_usage_records_total / _batches_total).
Opt-in (`--dynamic`, or named in BENCH_CASES; issue 15, "Explore and report"): the same floors as
native code, through Envoy's dynamic modules (`envoy.filters.http.dynamic_modules`) instead of V8:
  dynamic-noop  Envoy + a native module whose hooks all continue (beside `noop`)
  dynamic       Envoy + a native module making `calls`' host calls (beside `calls`)
Both are bench/dynamic-calls (a Rust cdylib outside the workspace: `make test` never builds it;
scripts/bench.sh builds it when asked for these cases). A run with either writes its table to its
own section of BENCHMARKS.md ("Dynamic modules (explored)"), never over the default table, so an
exploratory run cannot replace the official figures.
All Envoys run at once (idle ones cost nothing) against one mock-llm; rounds are interleaved
(plain, noop, naive, tollgate, plain, ...) so drift on a shared machine hits every case alike.
Each round runs wrk twice per case: BENCH_CONNECTIONS connections for throughput, then one
connection for latency (the added p50 on one connection is the per-request cost, not queueing).
The figures per case are medians over rounds.

Other parts of the same run (BENCH_PARTS, default all, in this order so the compile of the
instruction counter, if needed, happens before anything is timed):
  instructions  wasm instructions per request (host-tests, wasmtime fuel; deterministic):
                `cargo run --release -p tollgate-host-tests --features bench --bin instructions`
  v8            the filter's own time in V8 without Envoy (`bench/v8-time.mjs` in Node): the same
                request and answer through no-op, `calls` and Tollgate in one process, interleaved,
                with warm caches and with the caches evicted before each request (BENCH_V8_ROUNDS);
                then each filter's footprint on that request (deterministic): the wasm code its
                callbacks enter and the memory lines they touch (`bench/wasm-footprint` rewrites the
                modules to report them, `v8-time.mjs --footprint` records one request)
  envoy         the table above
  envoy2        the same table with Envoy `--concurrency 2` (issue 15 §5): both CPUs to Envoy, nothing
                pinned, so wrk, mock-llm and the counter time-share them with Envoy; cases
                BENCH_CASES2 (plain,noop,calls,tollgate,enforce), workers BENCH_ENVOY2_CONCURRENCY (2)
  counter       `tollgate-counter bench --seconds N` (SQLite, --sync full): usage records/s, lease calls/s
  redis         the same with `--redis-url` against a redis-server started here on a loopback port
                (`--save "" --appendonly yes --appendfsync always`, temp dir), as docs/counter-redis.md

Output: markdown on stdout, and each part's section between its markers in BENCHMARKS.md (other
text in that file is kept).

`--quick` (smoke run, a few seconds per part): 1 round of 3 s + 2 s, counter phases of 1 s, and
the sections go to BENCH_OUT (default: a temp file), not BENCHMARKS.md. The figures mean little;
it checks that every part works.

Knobs (environment): BENCH_ROUNDS (3), BENCH_SECONDS (10), BENCH_LATENCY_SECONDS (5),
BENCH_CONNECTIONS (16), BENCH_CASES (plain,noop,naive,calls-v1,calls,tollgate,enforce, and litellm when
.venv-litellm is installed), BENCH_OUT (BENCHMARKS.md), LITELLM_BIN,
BENCH_PARTS (instructions,v8,envoy,envoy2,counter,redis), BENCH_CASES2, BENCH_ENVOY2_CONCURRENCY, BENCH_COUNTER_SECONDS (5, per phase),
BENCH_INSTRUCTIONS_BIN (run this prebuilt `instructions` binary instead of `cargo run`),
TOLLGATE_COUNTER_BIN, REDIS_SERVER (redis-server),
BENCH_COUNTER_BASELINE_BIN (another build of tollgate-counter, e.g. an older commit's: each store is
then measured for both binaries in BENCH_COUNTER_ROUNDS (3) interleaved rounds, medians side by side),
BENCH_DYNAMIC_MODULE (the dynamic cases' shared object; default
$CARGO_TARGET_DIR/dynamic-calls/release/libtollgate_dynamic_calls.so, where scripts/bench.sh builds it),
BENCH_BASELINE_WASM (another tollgate.wasm, measured beside the current one as case `tollgate-base`),
BENCH_USAGE_BATCH_SIZE (500) and BENCH_USAGE_FLUSH_MS (1000): the enforce case's usage delivery settings,
BENCH_COUNTER_IDLE (1: the enforce case's counter at SCHED_IDLE, off the load generator's way; 0: normal priority),
BENCH_COUNTER_CPU (load: the enforce case's counter beside wrk and mock-llm; envoy: on the measured Envoy's CPU, see COUNTER_CPU),
BENCH_PERF (1: a `perf record` profile of each gateway by binary, see `Profile`),
BENCH_PIN (1 with 2+ CPUs: Envoy on CPU 0, wrk and the mock on the others, so the load generator
does not steal the measured worker's core; 0 to let the scheduler decide).
"""
import argparse
import datetime
import hashlib
import http.client
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import socket
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "envoy" / "tests"))
import harness  # noqa: E402

_ARGS = argparse.ArgumentParser(description="make bench: every benchmark figure in one run (see the module doc)")
_ARGS.add_argument("--quick", action="store_true", help="smoke run: a few seconds per part, output to a temp file")
_ARGS.add_argument("--dynamic", action="store_true",
                   help="add the opt-in native cases dynamic-noop and dynamic (Envoy dynamic modules) to the envoy part")
ARGS = _ARGS.parse_args()
QUICK = ARGS.quick
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "1" if QUICK else "3"))
SECONDS = int(os.environ.get("BENCH_SECONDS", "3" if QUICK else "10"))
LATENCY_SECONDS = int(os.environ.get("BENCH_LATENCY_SECONDS", "2" if QUICK else "5"))
WARMUP_SECONDS = 1 if QUICK else 2
CONNECTIONS = int(os.environ.get("BENCH_CONNECTIONS", "16"))
# LiteLLM's proxy, the gateway most teams put in the path for budgets today (issue 15 §6): a pinned
# version below 1.107.0 (1.107.0 was a compromised release), installed by scripts/bench.sh into
# .venv-litellm; measured when that install exists.
LITELLM_VERSION = "1.106.12"
LITELLM_BIN = Path(os.environ.get("LITELLM_BIN", Path(__file__).resolve().parent.parent / ".venv-litellm" / "bin" / "litellm"))
CASES = os.environ.get("BENCH_CASES", "plain,noop,naive,calls-v1,calls,tollgate,enforce"
                       + (",litellm" if LITELLM_BIN.exists() else "")).split(",")
# The native floors (issue 15, explore and report): opt-in, never in the default set.
DYNAMIC_CASES = ("dynamic-noop", "dynamic")
if ARGS.dynamic:
    CASES += [c for c in DYNAMIC_CASES if c not in CASES]
DYNAMIC = any(c in DYNAMIC_CASES for c in CASES)
# Another build of tollgate.wasm (e.g. from an earlier commit) measured beside the current one as
# case `tollgate-base`, same config, same rounds: a change's effect on Envoy side by side.
BASELINE_WASM = Path(os.environ["BENCH_BASELINE_WASM"]) if os.environ.get("BENCH_BASELINE_WASM") else None
if BASELINE_WASM and "tollgate-base" not in CASES:
    CASES.insert(CASES.index("tollgate") + 1 if "tollgate" in CASES else len(CASES), "tollgate-base")
DYNAMIC_MODULE = Path(os.environ.get("BENCH_DYNAMIC_MODULE", harness.TARGET / "dynamic-calls" / "release" / "libtollgate_dynamic_calls.so"))
# The ABI version Envoy 1.40 carries; the module exports the same (bench/dynamic-calls/src/abi.rs).
DYNAMIC_ABI = "v0.2.0"
PARTS = os.environ.get("BENCH_PARTS", "instructions,v8,envoy,envoy2,counter,redis").split(",")
COUNTER_SECONDS = int(os.environ.get("BENCH_COUNTER_SECONDS", "1" if QUICK else "5"))
OUT = Path(os.environ.get("BENCH_OUT", Path(tempfile.gettempdir()) / "tollgate-bench-quick.md" if QUICK else REPO / "BENCHMARKS.md"))
# A run with the native cases is the opt-in one, however they were asked for (flag or BENCH_CASES).
COMMAND = ("scripts/bench.sh --quick" if QUICK else "make bench") if not DYNAMIC else \
    ("scripts/bench.sh --dynamic" + (" --quick" if QUICK else ""))
# The counter runs at idle priority (SCHED_IDLE) unless BENCH_COUNTER_IDLE=0: in production it is
# another machine's work; here it shares the load side's CPU with wrk and mock-llm, and ingesting
# a batch (a SQLite transaction with fsync, a few ms) would otherwise delay the mock's answers and
# show in the enforce case's latencies as if Envoy had been slow (measured 2026-12-05: enforce p99
# on one connection 2.5-4.1 ms with the counter at normal priority, 1.1-1.2 ms at idle, metering
# 0.8-0.96 ms). Delivery is still checked: every settled record must reach the counter.
COUNTER_IDLE = os.environ.get("BENCH_COUNTER_IDLE", "1") != "0"
COUNTER_SCHED = ("chrt", "--idle", "0") if COUNTER_IDLE else ()
# Where the enforce case's counter runs (issue 15 §2): "load" (default) beside wrk and mock-llm, or
# "envoy" on the measured Envoy's own CPU at normal priority. On this machine work on the other
# CPU slows the measured one (as if they shared a physical core under the hypervisor: a busy
# loop there raised Tollgate's Envoy CPU per request by a quarter), so with "load" the enforce
# row also carries the counter's ingestion; with "envoy" the counter's CPU is its own process's,
# not Envoy's, but it takes turns with Envoy on that CPU and its caches, which slows Envoy too
# (req/s also pays for its time). Neither isolates the filter on this 2-vCPU machine; a host
# with a CPU of its own for the counter would.
COUNTER_CPU = os.environ.get("BENCH_COUNTER_CPU", "load")
if COUNTER_CPU not in ("load", "envoy"):
    sys.exit(f"BENCH_COUNTER_CPU={COUNTER_CPU!r}: use load (beside wrk and mock-llm) or envoy (on the measured CPU)")
COUNTER_BIN = Path(os.environ.get("TOLLGATE_COUNTER_BIN", harness.TARGET / "release" / "tollgate-counter"))
BASELINE_BIN = Path(os.environ["BENCH_COUNTER_BASELINE_BIN"]) if os.environ.get("BENCH_COUNTER_BASELINE_BIN") else None
COUNTER_ROUNDS = int(os.environ.get("BENCH_COUNTER_ROUNDS", "1" if QUICK else "3"))
REDIS_SERVER = os.environ.get("REDIS_SERVER", "redis-server")
CPUS = sorted(os.sched_getaffinity(0))


class Layout:
    """How one envoy part places its processes: Envoy's worker count, and which CPUs Envoy and the
    load side (wrk, mock-llm, tollgate-counter, LiteLLM's upstream) may use."""

    def __init__(self, concurrency, pin):
        self.concurrency = concurrency
        self.pin = pin
        self.envoy = ("taskset", "-c", str(CPUS[0])) if pin else ()
        self.load = ("taskset", "-c", ",".join(map(str, CPUS[1:]))) if pin else ()

    def describe(self):
        if self.pin and COUNTER_CPU == "envoy":
            return (f"Envoy and tollgate-counter pinned to CPU {CPUS[0]} (`BENCH_COUNTER_CPU=envoy`), wrk and mock-llm to CPU "
                    f"{','.join(map(str, CPUS[1:]))}")
        if self.pin:
            return (f"Envoy pinned to CPU {CPUS[0]}, wrk, mock-llm and tollgate-counter to CPU "
                    f"{','.join(map(str, CPUS[1:]))}")
        if self.concurrency > 1:
            return (f"no CPU pinning: Envoy's {self.concurrency} workers get every CPU, and wrk, mock-llm and "
                    "tollgate-counter time-share them with it, so the load generator's own CPU is in the figures")
        return "no CPU pinning"


# The default table: one Envoy worker on its own CPU (BENCH_PIN=0 lets the scheduler decide).
PIN = os.environ.get("BENCH_PIN", "1" if len(CPUS) >= 2 else "0") == "1" and len(CPUS) >= 2
ONE_WORKER = Layout(1, PIN)
# The scale table (issue 15 §5, part `envoy2`): the same cases with BENCH_ENVOY2_CONCURRENCY
# workers (2: both CPUs of this machine to Envoy), never pinned. Its own section of BENCHMARKS.md.
MANY_WORKERS = Layout(int(os.environ.get("BENCH_ENVOY2_CONCURRENCY", "2")), False)
CASES2 = os.environ.get("BENCH_CASES2", "plain,noop,calls,tollgate,enforce").split(",")
# One marker pair per section; the envoy one keeps the original markers.
MARKERS = {
    "envoy": ("<!-- bench.sh:begin (regenerated by make bench; edit outside the markers) -->", "<!-- bench.sh:end -->"),
    "counter": ("<!-- bench.sh:counter:begin (regenerated by make bench; edit outside the markers) -->", "<!-- bench.sh:counter:end -->"),
    "instructions": ("<!-- bench.sh:instructions:begin (regenerated by make bench; edit outside the markers) -->", "<!-- bench.sh:instructions:end -->"),
    "envoy2": ("<!-- bench.sh:envoy2:begin (regenerated by make bench; edit outside the markers) -->", "<!-- bench.sh:envoy2:end -->"),
    "v8": ("<!-- bench.sh:v8:begin (regenerated by make bench; edit outside the markers) -->", "<!-- bench.sh:v8:end -->"),
    "dynamic": ("<!-- bench.sh:dynamic:begin (regenerated by scripts/bench.sh --dynamic; edit outside the markers) -->", "<!-- bench.sh:dynamic:end -->"),
}

KEY = "sk-bench-0123456789abcdef"
EVENTS = 20
TOLLGATE_CONFIG = {
    "gateway_id": "bench",
    "attribution": {
        "virtual_keys": [{"sha256": hashlib.sha256(KEY.encode()).hexdigest(),
                          "principal": {"org": "acme", "team": "search", "user": "bench", "key_id": "bench"}}],
    },
    "routing": {"rules": [{"name": "bench", "match": {"model": "bench-chat"}, "set_model": "gpt-4o",
                           "set_headers": {"x-tollgate-provider": "openai"}}]},
}
# The enforce case: Tollgate as above plus enforcement against a real counter. The bench principal
# (org acme, from the virtual key) has one budget, so large that the bench never comes near it;
# the slice ($100) is far more than a tenth of a second of the peak spend here (~$0.002 a request,
# ~$20/s at 10k req/s) plus the worst case, so background top-ups keep up and nothing waits.
GATEWAY_TOKEN = "bench-gateway-token"
ADMIN_TOKEN = "bench-admin-token"
BENCH_BUDGET = {"id": "bench-org", "scope": "org:acme", "limit": "100000000.00", "window": "none"}
SLICE_USD = "100"
# Usage delivery's settings (issue 15 §2: what a post costs per record): the filter's defaults
# unless BENCH_USAGE_BATCH_SIZE / BENCH_USAGE_FLUSH_MS say otherwise.
USAGE_DELIVERY = {"batch_size": int(os.environ.get("BENCH_USAGE_BATCH_SIZE", "500")),
                  "flush_interval_ms": int(os.environ.get("BENCH_USAGE_FLUSH_MS", "1000"))}
ENFORCE_CONFIG = {**TOLLGATE_CONFIG, "enforcement": {
    "counter_cluster": "tollgate_counter", "gateway_token": GATEWAY_TOKEN, "lease_slice_usd": SLICE_USD,
    "failure_mode": "fail_closed", "call_timeout_ms": 5000, **USAGE_DELIVERY}}
PAUSED = "wasmcustom.tollgate_enforce_paused_total"
ADMITTED = "wasmcustom.tollgate_enforce_admitted_total"
POOLED = "wasmcustom.tollgate_enforce_pooled_total"
SETTLED = "wasmcustom.tollgate_enforce_settled_total"
LEASE_CALLS = "wasmcustom.tollgate_lease_calls_total"
UNACKED = "wasmcustom.tollgate_usage_unacked"
ENVOY_ONLY_COUNTERS = (PAUSED, ADMITTED, POOLED, SETTLED, LEASE_CALLS)


def machine():
    """The machine conditions printed with every section."""
    load = " / ".join(f"{x:.1f}" for x in os.getloadavg())
    return f"{platform.machine()}, {len(CPUS)} CPUs, load average {load} (1/5/15 min) at the start"


def now():
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def wait_until(pred, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.1)
    raise RuntimeError(f"timed out after {timeout}s waiting for {what}")


class Counter:
    """`tollgate-counter serve` on a free loopback port, SQLite store in `workdir`, one huge budget."""

    def __init__(self, workdir, cmd_prefix=()):
        if not COUNTER_BIN.exists():
            raise RuntimeError(f"{COUNTER_BIN} is missing: run `make build`")
        workdir = Path(workdir)
        data = workdir / "counter-data"
        data.mkdir()
        budgets = workdir / "budgets.json"
        budgets.write_text(json.dumps({"budgets": [BENCH_BUDGET]}))
        tokens = workdir / "tokens.json"
        tokens.write_text(json.dumps({"gateway": {"bench": GATEWAY_TOKEN}, "admin": {"bench": ADMIN_TOKEN}}))
        self.port = harness.free_port()
        self.log = open(workdir / "counter.log", "wb")
        self.proc = subprocess.Popen(
            [*cmd_prefix, str(COUNTER_BIN), "serve", "--listen", f"127.0.0.1:{self.port}", "--data", str(data),
             "--budgets", str(budgets), "--tokens", str(tokens)],
            stdout=self.log, stderr=subprocess.STDOUT, preexec_fn=harness._die_with_parent)

        def healthy():
            if self.proc.poll() is not None:
                raise RuntimeError(f"tollgate-counter exited with {self.proc.returncode}; see {self.log.name}")
            try:
                return harness.request(self.port, "GET", "/healthz", timeout=1).status == 200
            except OSError:
                return False
        wait_until(healthy, 15, "tollgate-counter to be healthy")

    def metrics(self):
        """{'records': accepted usage records, 'duplicates': ..., 'batches': usage batches} from /metrics."""
        text = harness.request(self.port, "GET", "/metrics", timeout=5).body.decode()
        out = {"records": 0, "duplicates": 0, "batches": 0}
        for line in text.splitlines():
            m = re.match(r'tollgate_counter_usage_records_total\{result="(accepted|duplicate)"\} (\S+)', line)
            if m:
                out["records" if m.group(1) == "accepted" else "duplicates"] = int(float(m.group(2)))
            m = re.match(r"tollgate_counter_usage_batches_total (\S+)", line)
            if m:
                out["batches"] = int(float(m.group(1)))
        return out

    def close(self):
        harness.stop(self.proc)
        self.log.close()


class EnforcingEnvoy(harness.Envoy):
    """harness.Envoy (one worker, same template) with the counter cluster rendered in."""

    def __init__(self, workdir, upstream_port, counter_port, name, plugin_config, cmd_prefix=(), concurrency=1):
        self.workdir = Path(workdir)
        self.name = name
        self.listen_port = harness.free_port()
        self.admin_port = harness.free_port()
        self.access_log = self.workdir / f"{name}-access.log"
        self.envoy_log = self.workdir / f"{name}-envoy.log"
        yaml = harness.render.render(harness.TEMPLATE.read_text(), {
            "LISTEN_PORT": self.listen_port, "ADMIN_PORT": self.admin_port, "UPSTREAM_PORT": upstream_port,
            "WASM_PATH": str(harness.TOLLGATE_WASM), "WASM_NAME": name, "PLUGIN_CONFIG": json.dumps(plugin_config),
            "ACCESS_LOG_PATH": "", "COUNTER_PORT": counter_port,
        })
        self.config_path = self.workdir / f"{name}-envoy.yaml"
        self.config_path.write_text(yaml)
        self.log_file = open(self.envoy_log, "wb")
        self.proc = subprocess.Popen(
            [*cmd_prefix, str(harness.ENVOY_BIN), "-c", str(self.config_path), "--concurrency", str(concurrency),
             "--disable-hot-restart", "--file-flush-interval-msec", "50", "--log-level", "warn"],
            stdout=self.log_file, stderr=subprocess.STDOUT, preexec_fn=harness._die_with_parent)
        self._wait_ready(30)


class DynamicEnvoy(harness.Envoy):
    """harness.Envoy (one worker, same template, no wasm) with a native HTTP filter in front of the
    router: Envoy's dynamic-modules filter loading bench/dynamic-calls, `filter_name` picking the
    case (`noop` or `calls`). The template stays as the product ships it; the filter is spliced
    into the rendered bootstrap here, for this benchmark only."""

    ROUTER = "          - name: envoy.filters.http.router\n"

    def __init__(self, workdir, upstream_port, name, filter_name, cmd_prefix=()):
        if not DYNAMIC_MODULE.exists():
            raise RuntimeError(f"{DYNAMIC_MODULE} is missing: scripts/bench.sh --dynamic builds it "
                               "(cargo build --release --manifest-path bench/dynamic-calls/Cargo.toml "
                               "--target-dir $CARGO_TARGET_DIR/dynamic-calls)")
        self.workdir = Path(workdir)
        self.name = name
        self.listen_port = harness.free_port()
        self.admin_port = harness.free_port()
        self.access_log = self.workdir / f"{name}-access.log"
        self.envoy_log = self.workdir / f"{name}-envoy.log"
        yaml = harness.render.render(harness.TEMPLATE.read_text(), {
            "LISTEN_PORT": self.listen_port, "ADMIN_PORT": self.admin_port, "UPSTREAM_PORT": upstream_port,
            "WASM_PATH": "", "WASM_NAME": name, "PLUGIN_CONFIG": "{}", "ACCESS_LOG_PATH": "", "COUNTER_PORT": "",
        })
        if yaml.count(self.ROUTER) != 1:
            raise RuntimeError("envoy/envoy.yaml.tmpl: the router filter line moved; update DynamicEnvoy.ROUTER")
        module = DYNAMIC_MODULE.name.removeprefix("lib").removesuffix(".so")
        yaml = yaml.replace(self.ROUTER, f"""          - name: envoy.filters.http.dynamic_modules
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.dynamic_modules.v3.DynamicModuleFilter
              dynamic_module_config: {{ name: {module} }}
              filter_name: {filter_name}
""" + self.ROUTER)
        self.config_path = self.workdir / f"{name}-envoy.yaml"
        self.config_path.write_text(yaml)
        self.log_file = open(self.envoy_log, "wb")
        # Envoy finds lib<name>.so on this path; the load line (ABI version) is logged at info.
        env = dict(os.environ, ENVOY_DYNAMIC_MODULES_SEARCH_PATH=str(DYNAMIC_MODULE.parent))
        self.proc = subprocess.Popen(
            [*cmd_prefix, str(harness.ENVOY_BIN), "-c", str(self.config_path), "--concurrency", "1", "--disable-hot-restart",
             "--file-flush-interval-msec", "50", "--log-level", "warn", "--component-log-level", "dynamic_modules:info"],
            stdout=self.log_file, stderr=subprocess.STDOUT, env=env, preexec_fn=harness._die_with_parent)
        self._wait_ready(30)
        matched = f"Dynamic module ABI version {DYNAMIC_ABI} matched."
        if matched not in self.log_text():
            self.close()
            raise RuntimeError(f"{name}: Envoy did not log {matched!r} (see {self.envoy_log}); the module's ABI_VERSION "
                               "(bench/dynamic-calls/src/abi.rs) or this Envoy changed")


class LiteLLM:
    """LiteLLM's proxy (`litellm --config`, one worker, no database) in front of the same mock-llm,
    answering the same request: the model name maps to the mock's OpenAI-compatible API, the
    bench key is its master key, and the mock is asked for the same number of events."""

    def __init__(self, workdir, upstream_port, cmd_prefix=()):
        if not LITELLM_BIN.exists():
            raise RuntimeError(f"{LITELLM_BIN} is missing: scripts/bench.sh installs litellm[proxy]=={LITELLM_VERSION} into .venv-litellm")
        workdir = Path(workdir)
        config = workdir / "litellm.yaml"
        config.write_text(f"""model_list:
  - model_name: bench-chat
    litellm_params:
      model: openai/bench-chat
      api_base: http://127.0.0.1:{upstream_port}/v1
      api_key: sk-upstream
      extra_headers: {{"x-mock-events": "{EVENTS}"}}
general_settings:
  master_key: {KEY}
""")
        self.listen_port = harness.free_port()
        self.log = open(workdir / "litellm.log", "wb")
        # No network: the bundled price map, no telemetry.
        env = dict(os.environ, LITELLM_LOCAL_MODEL_COST_MAP="True", LITELLM_TELEMETRY="False", LITELLM_LOG="ERROR")
        self.proc = subprocess.Popen(
            [*cmd_prefix, str(LITELLM_BIN), "--config", str(config), "--host", "127.0.0.1", "--port", str(self.listen_port),
             "--num_workers", "1"],
            stdout=self.log, stderr=subprocess.STDOUT, env=env, preexec_fn=harness._die_with_parent)

        def ready():
            if self.proc.poll() is not None:
                raise RuntimeError(f"litellm exited with {self.proc.returncode}; see {self.log.name}")
            try:
                return harness.request(self.listen_port, "GET", "/health/liveliness", timeout=1).status == 200
            except OSError:
                return False
        wait_until(ready, 180, "the LiteLLM proxy to answer")

    def post(self, path, body, headers=None, **kw):
        return harness.request(self.listen_port, "POST", path, body, headers, **kw)

    def stats(self):
        return {}

    def close(self):
        harness.stop(self.proc)
        self.log.close()


def chat_body(size=2048):
    """A streaming chat request of exactly `size` bytes that already asks for usage (so every case
    gets the same upstream answer, with or without Tollgate's include_usage injection)."""
    def doc(filler):
        return json.dumps({
            "model": "bench-chat",
            "stream": True,
            "stream_options": {"include_usage": True},
            "max_tokens": 256,
            "messages": [
                {"role": "system", "content": "You are a helpful assistant. Answer briefly."},
                {"role": "user", "content": filler},
            ],
        }, separators=(",", ":"))
    filler = ("lorem ipsum dolor sit amet " * 200)[: size - len(doc(""))]
    return doc(filler)


def wrk_script(path, body):
    lua_body = body.replace("]]", "] ]")
    path.write_text(f"""-- generated by bench/bench.py: one 2 KB streaming chat request, repeated
wrk.method = "POST"
wrk.body = [[{lua_body}]]
wrk.headers["content-type"] = "application/json"
wrk.headers["authorization"] = "Bearer {KEY}"
wrk.headers["x-mock-events"] = "{EVENTS}"
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('BENCH_JSON {{"requests":%d,"duration_us":%d,"socket_errors":%d,"non2xx":%d,"p50_us":%d,"p99_us":%d}}\\n',
    summary.requests, summary.duration, e.connect + e.read + e.write + e.timeout, e.status,
    latency:percentile(50), latency:percentile(99)))
end
""")


def run_wrk(port, script, connections, seconds, layout):
    cmd = [*layout.load, "wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--timeout", "5s", "-s", str(script),
           f"http://127.0.0.1:{port}/v1/chat/completions"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 30).stdout
    m = re.search(r"BENCH_JSON (\{.*\})", out)
    if not m:
        raise RuntimeError(f"wrk printed no result:\n{out}")
    r = json.loads(m.group(1))
    r["rps"] = r["requests"] / (r["duration_us"] / 1e6)
    if r["non2xx"]:
        # A refused request is cheaper than a served one: the figures would flatter the filter.
        raise RuntimeError(f"{r['non2xx']} of {r['requests']} responses were not 2xx on port {port}; fix the case, the figures would mean nothing")
    if r["socket_errors"]:
        print(f"  warning: {r['socket_errors']} socket errors (timeouts or resets) on port {port}", file=sys.stderr)
    return r


def cpu_seconds(pid):
    """User + system CPU time of a whole process (all threads) so far, from /proc/<pid>/stat."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    # After the command name: state is field 3, utime and stime are fields 14 and 15.
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# Opt-in (BENCH_PERF=1): during each case's throughput run of the last round, `perf record` samples
# the gateway process, and the section gets a table of where its CPU went by binary: Envoy's own
# code (HTTP, V8's runtime and the host-call glue; the PyPI binary is stripped, so no finer), the
# code V8 compiled from the wasm (anonymous executable memory, which perf cannot name), libc and
# the kernel. The sampling itself perturbs that round a little: use a separate run for figures.
PERF = os.environ.get("BENCH_PERF") == "1"


class Profile:
    """`perf record` on one process for one run; `shares()` reads the samples back by binary."""

    def __init__(self, pid, path, seconds):
        self.path = path
        self.proc = subprocess.Popen(["perf", "record", "-q", "-F", "999", "-p", str(pid), "-o", str(path), "--", "sleep", str(seconds)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def shares(self):
        """{category: % of samples}: envoy, wasm (JIT), libc, kernel, other."""
        try:
            self.proc.wait(timeout=60)
            out = subprocess.run(["perf", "report", "-i", str(self.path), "--sort", "dso", "--stdio", "-q"],
                                 capture_output=True, text=True, timeout=120).stdout
        except (subprocess.TimeoutExpired, OSError):
            return {}
        shares = {}
        for line in out.splitlines():
            m = re.match(r"\s*([\d.]+)%\s+(.+?)\s*$", line)
            if not m:
                continue
            dso = m.group(2)
            if dso == "envoy":
                cat = "envoy"
            elif dso.startswith("[kernel") or dso == "[vdso]":
                cat = "kernel"
            elif dso.startswith("libc") or dso.startswith("libm") or dso.startswith("ld-linux"):
                cat = "libc"
            elif dso in ("[unknown]", "[anon]") or dso.startswith("//anon") or dso.startswith("[JIT]") or dso.startswith("memfd:"):
                cat = "wasm (JIT)"
            else:
                cat = "other"
            shares[cat] = shares.get(cat, 0.0) + float(m.group(1))
        return shares


def profile_lines(profiles):
    """The opt-in profile table (BENCH_PERF=1)."""
    if not profiles:
        return []
    cats = ("wasm (JIT)", "envoy", "libc", "kernel", "other")
    lines = ["", f"Where each gateway's CPU went in its last throughput run (`BENCH_PERF=1`: `perf record -F 999` on the "
             "process, `perf report --sort dso`; share of samples). `envoy` is Envoy's own binary: HTTP, V8's runtime and "
             "the host-call glue (stripped, so not finer); `wasm (JIT)` is the code V8 compiled from the filter.", "",
             "| case | " + " | ".join(cats) + " |", "|---|" + "---:|" * len(cats)]
    for name, shares in profiles.items():
        lines.append(f"| {name} | " + " | ".join(f"{shares.get(c, 0.0):.1f}%" for c in cats) + " |")
    return lines


def sanity_check(envoys, mock_port):
    """Every case answers 200 with a full stream; Tollgate really routes and meters."""
    body = chat_body()
    for name, e in envoys.items():
        before = e.stats()
        r = e.post("/v1/chat/completions", body, {"authorization": f"Bearer {KEY}", "x-mock-events": str(EVENTS)})
        if r.status != 200 or not r.body.rstrip().endswith(b"data: [DONE]"):
            raise RuntimeError(f"{name}: the benchmark request fails: {r}")
        if name in ("tollgate", "tollgate-base", "enforce"):
            delta = harness.stats_delta(before, e.stats())
            if not any("token" in k for k in delta):
                raise RuntimeError(f"{name}: the request was not metered (stats delta {delta}); the figures would mean nothing")
            if name == "enforce":
                if not delta.get(ADMITTED):
                    raise RuntimeError(f"enforce: the request was not admitted with a reservation (stats delta {delta}); "
                                       "is the principal attributed and the budget loaded?")
                missing = [k for k in (*ENVOY_ONLY_COUNTERS, UNACKED) if k not in e.stats()]
                if missing:
                    raise RuntimeError(f"enforce: Envoy has no stat {missing}: the paused count would read as 0; fix the names")
                # The first request of a fresh gateway has no lease yet: it waits for one.
                print(f"enforce sanity request: paused {delta.get(PAUSED, 0)}, lease calls {delta.get(LEASE_CALLS, 0)}", flush=True)


def fmt_us(us):
    return f"{us / 1000:.2f} ms" if us >= 10000 else f"{us:.0f} µs"


def envoy_part(layout, cases):
    """Plain / no-op / naive / tollgate / enforce Envoys (`cases`) placed per `layout`, interleaved wrk
    rounds; returns the section."""
    body = chat_body()
    assert len(body) == 2048, len(body)
    conditions = machine()
    enforce = {"paused": 0, "admitted": 0, "pooled": 0, "settled": 0, "lease_calls": 0, "counter_cpu_s": 0.0, "counter_records": 0}
    with tempfile.TemporaryDirectory(prefix="tollgate-bench-") as work:
        work = Path(work)
        script = work / "chat.lua"
        wrk_script(script, body)
        mock = harness.Mock(work, record_limit=0, cmd_prefix=layout.load)
        counter = None
        quiet = ("--log-level", "warn")
        specs = {
            "plain": dict(wasm=None),
            "noop": dict(wasm=harness.NOOP_WASM, plugin_config="{}"),
            "naive": dict(wasm=harness.NOOP_WASM, plugin_config='{"mode":"naive"}'),
            "calls": dict(wasm=harness.NOOP_WASM, plugin_config='{"mode":"calls"}'),
            "calls-v1": dict(wasm=harness.NOOP_WASM, plugin_config='{"mode":"calls-v1"}'),
            "tollgate": dict(wasm=harness.TOLLGATE_WASM, plugin_config=TOLLGATE_CONFIG),
            "tollgate-base": dict(wasm=BASELINE_WASM, plugin_config=TOLLGATE_CONFIG),
        }
        dynamic_filters = {"dynamic-noop": "noop", "dynamic": "calls"}
        envoys = {}
        try:
            for name in cases:
                if name == "litellm":
                    # The measured gateway, on the measured CPU like each Envoy.
                    envoys[name] = LiteLLM(work, mock.port, cmd_prefix=layout.envoy)
                elif name == "enforce":
                    # The counter is load-side work (like the mock): off the measured worker's CPU
                    # unless BENCH_COUNTER_CPU=envoy (see COUNTER_CPU).
                    counter = Counter(work, cmd_prefix=(*layout.load, *COUNTER_SCHED) if COUNTER_CPU == "load" else layout.envoy)
                    envoys[name] = EnforcingEnvoy(work, mock.port, counter.port, name, ENFORCE_CONFIG, cmd_prefix=layout.envoy,
                                                  concurrency=layout.concurrency)
                elif name in dynamic_filters:
                    envoys[name] = DynamicEnvoy(work, mock.port, name, dynamic_filters[name], cmd_prefix=layout.envoy)
                else:
                    envoys[name] = harness.Envoy(work, mock.port, name=name, access_log=False, log_args=quiet, cmd_prefix=layout.envoy,
                                                 concurrency=layout.concurrency, **specs[name])
            sanity_check(envoys, mock.port)
            results = {n: {"rps": [], "p50": [], "p99": [], "p50_1": [], "p99_1": [], "cpu_us": []} for n in cases}
            profiles = {}
            for name, e in envoys.items():  # warm-up: V8 tiers up, pools fill, the first lease is taken
                run_wrk(e.listen_port, script, CONNECTIONS, WARMUP_SECONDS, layout)
            for rnd in range(1, ROUNDS + 1):
                for name, e in envoys.items():
                    if name == "enforce":
                        # Between its rounds this Envoy idles longer than a lease lives (30 s): the
                        # first request on each connection would wait for a new lease. That is a
                        # restart after idle, not steady state; a short run takes the lease first.
                        run_wrk(e.listen_port, script, CONNECTIONS, 1, layout)
                    before = e.stats() if name == "enforce" else None
                    # The counter's own CPU per record it ingests, over the same measured run.
                    counter_before = (cpu_seconds(counter.proc.pid), counter.metrics()["records"]) if name == "enforce" else None
                    counter_note = ""
                    cpu_before = cpu_seconds(e.proc.pid)
                    profile = Profile(e.proc.pid, work / f"{name}.perf", SECONDS) if PERF and rnd == ROUNDS else None
                    r = run_wrk(e.listen_port, script, CONNECTIONS, SECONDS, layout)
                    cpu_after = cpu_seconds(e.proc.pid)
                    if counter_before is not None and counter_before[0] is not None:
                        counter_cpu = cpu_seconds(counter.proc.pid)
                        if counter_cpu is not None:
                            run_records = counter.metrics()["records"] - counter_before[1]
                            enforce["counter_cpu_s"] += counter_cpu - counter_before[0]
                            enforce["counter_records"] += run_records
                            counter_note = f"  | counter {(counter_cpu - counter_before[0]) * 1e6 / max(run_records, 1):.1f} µs/record"
                    if profile:
                        profiles[name] = profile.shares()
                    one = run_wrk(e.listen_port, script, 1, LATENCY_SECONDS, layout)
                    extra = ""
                    if before is not None:
                        after = e.stats()
                        for key, stat in (("paused", PAUSED), ("admitted", ADMITTED), ("pooled", POOLED), ("settled", SETTLED), ("lease_calls", LEASE_CALLS)):
                            enforce[key] += after.get(stat, 0) - before.get(stat, 0)
                        extra = f"  | paused so far {enforce['paused']} of {enforce['admitted']} admitted ({enforce['pooled']} from pools)" + counter_note
                    res = results[name]
                    res["rps"].append(r["rps"]); res["p50"].append(r["p50_us"]); res["p99"].append(r["p99_us"])
                    res["p50_1"].append(one["p50_us"]); res["p99_1"].append(one["p99_us"])
                    if cpu_before is not None and cpu_after is not None and r["requests"]:
                        # The gateway's own CPU per request under load: steadier than req/s on a busy
                        # machine, where other work takes turns on the measured CPU.
                        res["cpu_us"].append((cpu_after - cpu_before) * 1e6 / r["requests"])
                    print(f"round {rnd}/{ROUNDS} {name:9} {r['rps']:9.0f} req/s  p50 {fmt_us(r['p50_us'])}  p99 {fmt_us(r['p99_us'])}"
                          f"  | 1 conn: p50 {fmt_us(one['p50_us'])}  p99 {fmt_us(one['p99_us'])}"
                          + (f"  | cpu {res['cpu_us'][-1]:.1f} µs/req" if len(res["cpu_us"]) == rnd else "") + extra, flush=True)
            if "enforce" in envoys:
                e = envoys["enforce"]
                # Every record delivered: the filter's queue drains (flush every second), then the
                # counter's own count is compared with what the filter settled.
                deadline = time.monotonic() + 15
                while e.stats().get(UNACKED, 0) != 0 and time.monotonic() < deadline:
                    time.sleep(0.1)
                stats = e.stats()
                enforce["unacked_after"] = stats.get(UNACKED, 0)
                enforce["settled_total"] = stats.get(SETTLED, 0)
                enforce["dropped_total"] = stats.get("wasmcustom.tollgate_usage_dropped_total", 0)
                enforce["requeued_total"] = stats.get("wasmcustom.tollgate_usage_records_requeued_total", 0)
                enforce["post_failures"] = stats.get("wasmcustom.tollgate_usage_post_failures_total", 0)
                # The gauge is one figure written by every worker: with several, it can read 0
                # a moment before the last batches are posted. The books are the counter's own
                # count, so wait (bounded) for it to reach what the filter settled.
                waited = time.monotonic()
                deadline = waited + 15
                while counter.metrics()["records"] < enforce["settled_total"] - enforce["dropped_total"] and time.monotonic() < deadline:
                    time.sleep(0.2)
                enforce["counter_wait_s"] = time.monotonic() - waited
                enforce["counter"] = counter.metrics()
        finally:
            for e in envoys.values():
                e.close()
            if counter:
                counter.close()
            mock.close()
    med = {n: {k: statistics.median(v) for k, v in res.items() if v} for n, res in results.items()}
    return med, "\n".join([envoy_report(med, enforce, conditions, layout), *profile_lines(profiles)])


def scale_lines(many, one, layout):
    """The scale table's comparison with the one-worker table of the same run."""
    shared = [n for n in many if n in one]
    if not shared:
        return []
    lines = ["", f"Against the one-worker table of the same run (req/s at {CONNECTIONS} connections, "
             f"`--concurrency {layout.concurrency}` ÷ `--concurrency 1`): "
             + ", ".join(f"{n} {many[n]['rps'] / one[n]['rps']:.2f}×" for n in shared) + "."]
    return lines


def envoy_report(med, enforce, conditions, layout):
    title = ("## Dynamic modules (explored): the native floors beside the wasm floors" if DYNAMIC else
             "## Filter overhead: plain Envoy vs no-op wasm vs Tollgate (metering, enforcement)")
    if layout.concurrency > 1:
        title = f"## Scale: the same cases with Envoy `--concurrency {layout.concurrency}`"
    lines = [
        title,
        "",
        f"`{COMMAND}` ({now()}; {conditions}; {layout.describe()}): "
        + f"Envoy 1.40 `--concurrency {layout.concurrency}`, wrk `-t1 -c{CONNECTIONS}` for {SECONDS} s and `-c1` for {LATENCY_SECONDS} s per case "
        f"per round, {ROUNDS} interleaved rounds, medians shown. Request: 2 KB streaming chat "
        f"(`/v1/chat/completions`, virtual key), response: SSE with {EVENTS} content events and a usage chunk from mock-llm.",
        "",
        f"| case | req/s ({CONNECTIONS} conn) | p50 | p99 | p50 (1 conn) | p99 (1 conn) | throughput vs no-op |"
        + " Envoy CPU per request |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    noop = med.get("noop")
    for name, m in med.items():
        ratio = f"{m['rps'] / noop['rps'] * 100:.1f}%" if noop else "n/a"
        cpu = f" {m['cpu_us']:.1f} µs |" if "cpu_us" in m else " n/a |"
        lines.append(f"| {name} | {m['rps']:.0f} | {fmt_us(m['p50'])} | {fmt_us(m['p99'])} | {fmt_us(m['p50_1'])} | {fmt_us(m['p99_1'])} | {ratio} |{cpu}")
    lines += ["", "Cases: `tollgate` = attribute, route (model rewrite, provider header) and meter; `enforce` = the same plus "
              f"budget enforcement against a real `tollgate-counter serve` on loopback (SQLite, `--sync full`, temp dir, "
              + (f"{'at idle CPU priority (SCHED_IDLE: it runs when wrk and mock-llm leave the CPU free), ' if COUNTER_IDLE else 'at normal CPU priority (BENCH_COUNTER_IDLE=0), '}"
                 if COUNTER_CPU == "load" else "on the measured Envoy's CPU at normal priority (`BENCH_COUNTER_CPU=envoy`), ")
              + "one budget "
              f"on `org:acme`, ${BENCH_BUDGET['limit']}, window none, so nothing is refused), `lease_slice_usd` ${SLICE_USD}, "
              f"usage records batched and posted (`batch_size` {USAGE_DELIVERY['batch_size']}, `flush_interval_ms` {USAGE_DELIVERY['flush_interval_ms']}"
              + ("; the filter's defaults)." if USAGE_DELIVERY == {"batch_size": 500, "flush_interval_ms": 1000} else "; BENCH_USAGE_BATCH_SIZE / BENCH_USAGE_FLUSH_MS, not the defaults)."), ""]
    if "plain" in med and noop:
        lines.append(f"- no-op wasm keeps **{noop['rps'] / med['plain']['rps'] * 100:.1f}%** of plain Envoy's throughput.")
    if "naive" in med and "plain" in med:
        lines.append(f"- the naive re-serializing filter keeps **{med['naive']['rps'] / med['plain']['rps'] * 100:.1f}%** of plain Envoy's throughput.")
    if "calls" in med and noop:
        c = med["calls"]
        lines.append(f"- the host-call floor (`calls`: Tollgate's conversation with Envoy, none of its work) keeps "
                     f"**{c['rps'] / noop['rps'] * 100:.1f}%** of the no-op filter's throughput and adds "
                     f"**{c['p50_1'] - noop['p50_1']:.0f} µs** at p50 on one connection.")
    def verdict(ok):
        return "met" if ok else "NOT met"

    if "tollgate" in med and noop:
        t = med["tollgate"]
        lines.append(f"- Tollgate keeps **{t['rps'] / noop['rps'] * 100:.1f}%** of the no-op filter's throughput "
                     f"(issue 15 §3: ≥ 80%: {verdict(t['rps'] / noop['rps'] >= 0.80)}) and adds "
                     f"**{t['p50_1'] - noop['p50_1']:.0f} µs** at p50 over it on one connection.")
        if "calls" in med:
            c = med["calls"]
            over = t["p50_1"] - c["p50_1"]
            lines.append(f"- Tollgate keeps **{t['rps'] / c['rps'] * 100:.1f}%** of the host-call floor's throughput "
                         f"(issue 15 §1: ≥ 92%: {verdict(t['rps'] / c['rps'] >= 0.92)}) and adds **{over:.0f} µs** at p50 "
                         f"over it on one connection (≤ 15 µs: {verdict(over <= 15)}): the rest of its cost is its own work in wasm.")
        if "calls-v1" in med:
            v1 = med["calls-v1"]
            lines.append(f"- Against the pre-issue-17 floor (`calls-v1`, no response-body write) Tollgate keeps "
                         f"**{t['rps'] / v1['rps'] * 100:.1f}%**; `calls-v1` keeps {v1['rps'] / noop['rps'] * 100:.1f}% of no-op "
                         + (f"and `calls` {med['calls']['rps'] / noop['rps'] * 100:.1f}%: the difference is the reference's, not Tollgate's."
                            if "calls" in med else "."))
    if "tollgate-base" in med and "tollgate" in med:
        t, b = med["tollgate"], med["tollgate-base"]
        lines.append(f"- Against the baseline build (`tollgate-base`: {BASELINE_WASM}) this `tollgate.wasm` serves "
                     f"**{t['rps'] / b['rps'] * 100:.1f}%** of its throughput, p50 on one connection {t['p50_1'] - b['p50_1']:+.0f} µs.")
    if "enforce" in med and noop:
        t = med["enforce"]
        c = enforce.get("counter", {})
        batches = c.get("batches", 0)
        per_batch = f"{c.get('records', 0) / batches:.0f}" if batches else "n/a"
        lines.append(f"- Tollgate with enforcement keeps **{t['rps'] / noop['rps'] * 100:.1f}%** of the no-op filter's throughput "
                     f"(issue 15 §3: ≥ 75%: {verdict(t['rps'] / noop['rps'] >= 0.75)}) "
                     f"and adds **{t['p50_1'] - noop['p50_1']:.0f} µs** at p50 on one connection"
                     + (f" ({t['rps'] / med['tollgate']['rps'] * 100:.1f}% of metering-only Tollgate)." if "tollgate" in med else "."))
        if "calls" in med:
            lines.append(f"- With enforcement Tollgate keeps **{t['rps'] / med['calls']['rps'] * 100:.1f}%** of the host-call floor's "
                         f"throughput (issue 15 §2: ≥ 88%: {verdict(t['rps'] / med['calls']['rps'] >= 0.88)}).")
        if "tollgate" in med:
            ratio = t["p99_1"] / med["tollgate"]["p99_1"]
            lines.append(f"- Its p99 on one connection is **{ratio:.2f}×** metering's ({fmt_us(t['p99_1'])} against "
                         f"{fmt_us(med['tollgate']['p99_1'])}; issue 15 §2: ≤ 1.5×: {verdict(ratio <= 1.5)}).")
        if "tollgate" in med and "cpu_us" in t and "cpu_us" in med["tollgate"]:
            extra = t["cpu_us"] - med["tollgate"]["cpu_us"]
            lines.append(f"- Envoy's CPU per request with enforcement is **{t['cpu_us']:.1f} µs** against metering's "
                         f"{med['tollgate']['cpu_us']:.1f} µs ({extra:+.1f} µs), with the counter "
                         + ("beside wrk and mock-llm on the other CPU, where its ingestion also slows the measured CPU "
                            "(`BENCH_COUNTER_CPU=envoy` puts it on Envoy's CPU instead; BENCHMARKS.md, \"Issue 15: seventh session\")."
                            if COUNTER_CPU == "load" else "on Envoy's CPU (`BENCH_COUNTER_CPU=envoy`): its own CPU is not in this figure, "
                            "but it takes turns with Envoy on that CPU (and its caches), and req/s pays for its time."))
        if enforce["counter_records"]:
            lines.append(f"- tollgate-counter's own CPU: **{enforce['counter_cpu_s'] * 1e6 / enforce['counter_records']:.1f} µs per usage "
                         f"record** it ingested during the measured runs ({enforce['counter_records']:.0f} records; the CPU time of "
                         "its process, HTTP, JSON and SQLite together). Wherever it runs, this is work this machine's other CPU "
                         "or Envoy's own CPU does beside the measured Envoy.")
        lines.append(f"- Paused on a lease call during the measured rounds: **{enforce['paused']:.0f}** of {enforce['admitted']:.0f} "
                     f"admitted requests (`tollgate_enforce_paused_total` delta); {enforce['lease_calls']:.0f} lease calls "
                     "(`tollgate_lease_calls_total` delta, background top-ups and renewals). Each round starts with a 1 s run "
                     "outside the count: the case idles longer than a lease lives (30 s) while the others run, and the first "
                     "request on each connection after such an idle spell waits once for a new lease.")
        lines.append(f"- Admitted from the worker's own lease pools (no shared-data call): **{enforce['pooled']:.0f}** of "
                     f"{enforce['admitted']:.0f} (`tollgate_enforce_pooled_total` delta; the rest took the shared book).")
        lines.append(f"- Delivered: the counter ingested **{c.get('records', 0)}** usage records in {batches} batches "
                     f"(~{per_batch} records a batch; {c.get('duplicates', 0)} duplicates: {enforce.get('post_failures', 0):.0f} failed posts "
                     f"(timeouts or errors) put {enforce.get('requeued_total', 0):.0f} records back to be sent again) for the {enforce.get('settled_total', 0):.0f} "
                     f"requests the filter settled over its whole life (sanity check and warm-up included); "
                     f"{enforce.get('dropped_total', 0):.0f} dropped, "
                     + ("usage queue drained to 0 after the run" if not enforce.get("unacked_after")
                        else f"**the usage queue gauge still read {enforce['unacked_after']:.0f} 15 s after the run**")
                     + (f" (the counter's count reached it {enforce['counter_wait_s']:.1f} s later)."
                        if c.get('records', 0) + enforce.get('dropped_total', 0) >= enforce.get('settled_total', 0)
                        else f"; **{enforce.get('settled_total', 0) - enforce.get('dropped_total', 0) - c.get('records', 0):.0f} records missing** "
                             f"at the counter {enforce['counter_wait_s']:.0f} s later."))
    if "litellm" in med and "tollgate" in med:
        l, t = med["litellm"], med["tollgate"]
        lines.append(f"- LiteLLM proxy {LITELLM_VERSION} (one worker, no database, its own spend tracking; on the measured CPU like Envoy) "
                     f"answers **{l['rps']:.0f} req/s** with p50 {fmt_us(l['p50_1'])} on one connection; Envoy with Tollgate "
                     f"serves **{t['rps'] / l['rps']:.1f}×** its throughput at p50 {fmt_us(t['p50_1'])}. LiteLLM is a Python "
                     "service in the path, Tollgate a filter inside the proxy already there; the comparison is the cost of "
                     "putting each in front of the same upstream.")
    lines += dynamic_report(med)
    part, cases_knob = ("envoy2", "BENCH_CASES2, BENCH_ENVOY2_CONCURRENCY") if layout.concurrency > 1 else ("envoy", "BENCH_CASES")
    lines += ["", f"Reproduce: `{COMMAND}` (knobs: BENCH_ROUNDS, BENCH_SECONDS, BENCH_LATENCY_SECONDS, BENCH_CONNECTIONS, {cases_knob}; "
              f"`BENCH_PARTS={part}` for this section alone)."]
    return "\n".join(lines)


def dynamic_report(med):
    """The opt-in native cases beside their wasm counterparts, as ratios and as Envoy time per
    request: the CPU Envoy's process used per request at 16 connections (/proc, all threads), and
    1e6 / (req/s), which equals it only when Envoy has its CPU to itself. Differences between cases
    are what each layer costs."""
    if not any(c in med for c in DYNAMIC_CASES):
        return []
    us = {n: m["cpu_us"] for n, m in med.items() if "cpu_us" in m}
    wall = {n: 1e6 / m["rps"] for n, m in med.items() if m["rps"]}
    end_load = " / ".join(f"{x:.1f}" for x in os.getloadavg())
    lines = ["", f"Load average at the end of the run: {end_load} (1/5/15 min); the machine's other work shares the measured "
             "CPU, which slows every case (req/s) more than it raises their CPU per request.",
             "", f"Native cases: bench/dynamic-calls through `envoy.filters.http.dynamic_modules` (Envoy logged "
             f"\"Dynamic module ABI version {DYNAMIC_ABI} matched.\" for each); `dynamic-noop` continues in every hook, "
             "`dynamic` makes `calls`' host calls (its module doc lists them and where the native ABI differs).", ""]
    if "dynamic-noop" in med and "noop" in med:
        d, n = med["dynamic-noop"], med["noop"]
        lines.append(f"- the native no-op module keeps **{d['rps'] / n['rps'] * 100:.1f}%** of the no-op wasm filter's throughput"
                     + (f" ({d['rps'] / med['plain']['rps'] * 100:.1f}% of plain Envoy, wasm no-op "
                        f"{n['rps'] / med['plain']['rps'] * 100:.1f}%)" if "plain" in med else "")
                     + f"; p50 on one connection {fmt_us(d['p50_1'])} against {fmt_us(n['p50_1'])}.")
    if "dynamic" in med and "dynamic-noop" in med:
        d, dn = med["dynamic"], med["dynamic-noop"]
        lines.append(f"- the native host-call floor (`dynamic`) keeps **{d['rps'] / dn['rps'] * 100:.1f}%** of the native no-op's "
                     f"throughput and adds **{d['p50_1'] - dn['p50_1']:.0f} µs** at p50 on one connection"
                     + (f"; the wasm floor (`calls`) keeps {med['calls']['rps'] / med['noop']['rps'] * 100:.1f}% of wasm no-op "
                        f"and adds {med['calls']['p50_1'] - med['noop']['p50_1']:.0f} µs" if "calls" in med and "noop" in med else "")
                     + ".")
    if "dynamic" in med and "calls" in med:
        lines.append(f"- the same calls natively serve **{med['dynamic']['rps'] / med['calls']['rps']:.2f}×** the wasm floor's throughput.")
    layers = [("Envoy without a filter", "plain", None), ("wasm: a filter at all (noop − plain)", "noop", "plain"),
              ("wasm: the host calls (calls − noop)", "calls", "noop"),
              ("native: a module at all (dynamic-noop − plain)", "dynamic-noop", "plain"),
              ("native: the host calls (dynamic − dynamic-noop)", "dynamic", "dynamic-noop"),
              ("Tollgate's own work in wasm (tollgate − calls)", "tollgate", "calls")]
    rows = [(label, us[a] - (us[b] if b else 0), wall[a] - (wall[b] if b else 0))
            for label, a, b in layers if a in us and (b is None or b in us)]
    if rows:
        lines += ["", "Envoy time per request, by layer (µs, differences of the medians above):", "",
                  "| layer | Envoy CPU per request | 1e6 / req/s |", "|---|---:|---:|",
                  *[f"| {label} | {c:.1f} | {w:.1f} |" for label, c, w in rows]]
    if all(k in us for k in ("dynamic", "calls", "tollgate")):
        work = us["tollgate"] - us["calls"]
        best, same = us["dynamic"], us["dynamic"] + max(work, 0)
        base = f" (at {med['tollgate']['rps']:.0f} req/s)"
        lines += ["", "Projection, not a measurement (no native build of `core` was run): Tollgate as a native module would cost "
                  f"the native floor plus its own work (Envoy CPU per request). If that work cost what it costs in wasm: "
                  f"{same:.1f} µs; if it cost nothing: {best:.1f} µs; wasm Tollgate measured {us['tollgate']:.1f} µs{base}. "
                  "Native code runs that work faster than V8's wasm, so the truth lies between; where is not measured here."]
    return lines


# The v8 part: warm caches, then the caches evicted before each timed request: 4 MiB (past this
# machine's 2 MiB L2) and 64 MiB (past its 32 MiB L3). Rounds × requests per filter per mode; the
# fully evicted mode writes 64 MiB before each request, so it runs fewer.
V8_MODES = (("warm caches", 0, 31, 200), ("4 MiB evicted before each request", 4096, 31, 100),
            ("64 MiB evicted before each request", 65536, 15, 20))
V8_ROUNDS_SCALE = float(os.environ.get("BENCH_V8_ROUNDS", "1"))


def v8_part():
    """The filter's own time in V8 without Envoy (bench/v8-time.mjs under Node); returns the section."""
    conditions = machine()
    body = chat_body()
    with tempfile.TemporaryDirectory(prefix="tollgate-bench-v8-") as work:
        work = Path(work)
        mock = harness.Mock(work, record_limit=0)
        try:
            # The answer Envoy's cases get: the mock's stream for the bench request, one event a chunk.
            conn = http.client.HTTPConnection("127.0.0.1", mock.port, timeout=10)
            conn.request("POST", "/v1/chat/completions", body=body,
                         headers={"content-type": "application/json", "x-mock-events": str(EVENTS)})
            answer = conn.getresponse()
            raw, status, content_type = answer.read(), answer.status, answer.getheader("content-type")
            conn.close()
        finally:
            mock.close()
        if status != 200:
            raise RuntimeError(f"v8: the mock answered {status}: {raw[:300]!r}")
        events = [e + "\n\n" for e in raw.decode().split("\n\n") if e]
        workload = {
            "name": f"make bench's request: 2 KB streaming chat, virtual key, {EVENTS} content events",
            "config": json.dumps(TOLLGATE_CONFIG),
            # As Envoy hands them to the filter (wrk's headers and Envoy's own).
            "request_headers": [[":authority", "127.0.0.1"], [":path", "/v1/chat/completions"], [":method", "POST"],
                                [":scheme", "http"], ["content-length", str(len(body))], ["content-type", "application/json"],
                                ["authorization", f"Bearer {KEY}"], ["x-mock-events", str(EVENTS)],
                                ["x-forwarded-proto", "http"], ["x-request-id", "0b6f5d1e-7c1a-4a43-9f0e-2f4b8f6c9d21"]],
            "request_body": body,
            "response_headers": [[":status", "200"], ["content-type", content_type]],
            "response_chunks": events,
        }
        (work / "workload.json").write_text(json.dumps(workload))
        (work / "noop.json").write_text("{}")
        (work / "calls.json").write_text('{"mode":"calls"}')
        filters = [f"noop={harness.NOOP_WASM}@{work / 'noop.json'}", f"calls={harness.NOOP_WASM}@{work / 'calls.json'}",
                   f"tollgate={harness.TOLLGATE_WASM}"]
        if BASELINE_WASM:
            filters.append(f"tollgate-base={BASELINE_WASM}")
        results = []
        for label, evict_kib, rounds, requests in V8_MODES:
            rounds = max(3, round(rounds * V8_ROUNDS_SCALE)) if not QUICK else 3
            cmd = ["node", "--no-liftoff", str(REPO / "bench" / "v8-time.mjs"), str(work / "workload.json"), *filters,
                   "--rounds", str(rounds), "--requests", str(requests), "--warmup", "500" if QUICK else "5000",
                   "--evict-kib", str(evict_kib)]
            print(f"v8: {label}: {' '.join(cmd[2:3])} … --rounds {rounds} --requests {requests} --evict-kib {evict_kib}", flush=True)
            p = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
            if p.returncode != 0:
                raise RuntimeError(f"v8: node failed ({p.returncode}):\n{p.stdout}\n{p.stderr}")
            r = json.loads(p.stdout)
            shapes = {f["name"]: f["shape"] for f in r["filters"]}
            # Each filter did its job on the request: Tollgate paused for the body, rewrote it
            # (the model) and wrote its access-log state; `calls` made its calls (state written).
            t, c = shapes["tollgate"], shapes["calls"]
            if t["headersAction"] != 1 or t["state"] != 1 or t["upstream"] == len(body) or c["state"] != 1 or t["localReply"] is not None:
                raise RuntimeError(f"v8: a filter did not do its work on the request: {shapes}")
            results.append((label, rounds, requests, r))
        footprint = footprint_table(work, filters)
    node_v8 = results[0][3]["v8"]
    names = [f["name"] for f in results[0][3]["filters"]]
    rows = []
    for name in names:
        cells = []
        for _, _, _, r in results:
            f = next(f for f in r["filters"] if f["name"] == name)
            cells.append(f"{f['us_per_request_median']:.2f} µs")
        rows.append(f"| {name} | " + " | ".join(cells) + " |")
    def paired(r, a, b):
        # The median over rounds of (a − b) within each round (bench/v8-time.mjs pairs against the first filter).
        d = {f["name"]: x for f, x in zip(r["filters"], r["paired_difference_us_median"])}
        return d[a] - d[b]
    diff_rows = [f"| Tollgate − `calls` (paired per round) | " + " | ".join(f"**{paired(r, 'tollgate', 'calls'):+.2f} µs**" for *_, r in results) + " |",
                 f"| `calls` − no-op (paired per round) | " + " | ".join(f"{paired(r, 'calls', 'noop'):+.2f} µs" for *_, r in results) + " |"]
    if BASELINE_WASM:
        diff_rows.append("| Tollgate − `tollgate-base` (paired per round) | " + " | ".join(f"{paired(r, 'tollgate', 'tollgate-base'):+.2f} µs" for *_, r in results) + " |")
    lines = ["## The filter's own time in V8, without Envoy (Node, warm and evicted caches)", "",
             f"`{COMMAND}` ({now()}; {conditions}) ran `node --no-liftoff bench/v8-time.mjs` (Node {results[0][3]['node']}, "
             f"V8 {node_v8}; Envoy 1.40 has its own V8, also TurboFan only): a proxy-wasm host in JavaScript sends the Envoy "
             f"table's request (2 KB streaming chat, virtual key) and the mock's answer ({len(events)} chunks, one event each) "
             "through each filter in one process, rounds interleaved, each request timed alone. The host's own JavaScript is "
             "in every figure and the same for filters that make the same calls (`calls` and Tollgate: host-tests "
             "`host_calls`), so the differences are the filters' own work in V8.",
             "", "| µs per request (median of rounds) | " + " | ".join(f"{label} ({rounds} × {requests})" for label, rounds, requests, _ in results) + " |",
             "|---|" + "---:|" * len(results), *rows, *diff_rows, "", *footprint]
    section = "\n".join(lines)
    print(section)
    return section


FOOTPRINT_TOOL = harness.TARGET / "wasm-footprint" / "release" / "tollgate-wasm-footprint"


def footprint_table(work, filters):
    """The footprint rows of the v8 section: each filter's code and memory lines on one request."""
    rewritten = []
    for spec in filters:
        name, rest = spec.split("=", 1)
        wasm, _, config = rest.partition("@")
        out = work / f"{name}.footprint.wasm"
        p = subprocess.run([str(FOOTPRINT_TOOL), wasm, str(out), str(work / f"{name}.footprint.map.json")],
                           capture_output=True, text=True, timeout=300)
        if p.returncode != 0:
            raise RuntimeError(f"v8: footprint: rewriting {wasm} failed ({p.returncode}):\n{p.stderr}")
        rewritten.append(f"{name}={out}" + (f"@{config}" if config else ""))
    cmd = ["node", "--no-liftoff", str(REPO / "bench" / "v8-time.mjs"), str(work / "workload.json"), *rewritten,
           "--warmup", "200", "--footprint"]
    print("v8: footprint: bench/wasm-footprint, then v8-time.mjs --footprint", flush=True)
    p = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    if p.returncode != 0:
        raise RuntimeError(f"v8: footprint failed ({p.returncode}):\n{p.stdout}\n{p.stderr}")
    found = {f["name"]: f for f in json.loads(p.stdout)["footprint"]}
    phases = (("request headers", ("proxy_on_request_headers",)), ("request body", ("proxy_on_request_body",)),
              ("response headers", ("proxy_on_response_headers",)), ("response body", ("proxy_on_response_body",)))
    def cells(f):
        by = {c["callback"]: c for c in f["callbacks"]}
        named = {cb for _, cbs in phases for cb in cbs}
        out = []
        for _, cbs in phases:
            rows = [by[cb] for cb in cbs if cb in by]
            out.append(f"{sum(r['code_instrs'] for r in rows):,} / {sum(r['lines'] for r in rows):,}")
        rest = [c for c in f["callbacks"] if c["callback"] not in named]
        out.append(f"{sum(r['code_instrs'] for r in rest):,} / {sum(r['lines'] for r in rest):,}")
        t = f["total"]
        out.append(f"**{t['code_instrs']:,} / {t['lines']:,}**")
        out.append(f"{t['request_code_instrs']:,} / {t['request_lines']:,}")
        return out
    chunks = next((c["calls"] for c in found["tollgate"]["callbacks"] if c["callback"] == "proxy_on_response_body"), 0)
    lines = ["Footprint of one request (deterministic; `bench/wasm-footprint` rewrites each module to report the code "
             "blocks it enters and the 64-byte lines of its memory it loads or stores, `v8-time.mjs --footprint` "
             "records one request after the warm-up). Each cell: wasm instructions of code entered / memory lines, "
             "counted per callback and summed, since in a proxy other requests' work runs between two of a filter's "
             f"callbacks (the response body is {chunks} callbacks, one per chunk). Last column: the whole request's "
             "distinct code and lines. (How many bytes of machine code V8 makes of a wasm instruction is not measured here.)", "",
             "| filter | request headers | request body | response headers | response body | other callbacks | "
             "sum over callbacks | whole request, distinct |", "|---|" + "---:|" * 7]
    for name, f in found.items():
        lines.append(f"| {name} | " + " | ".join(cells(f)) + " |")
    lines.append("")
    return lines


def instructions_part():
    """Wasm instructions per request from host-tests (deterministic); returns the section."""
    cmd = ["cargo", "run", "--release", "-q", "-p", "tollgate-host-tests", "--features", "bench", "--bin", "instructions"]
    shown = "cargo run --release -p tollgate-host-tests --features bench --bin instructions"
    prebuilt = os.environ.get("BENCH_INSTRUCTIONS_BIN")
    if prebuilt:
        cmd = [prebuilt]
    conditions = machine()
    # The first run compiles wasmtime (minutes on 2 cores); later runs only check freshness.
    print(f"instructions: {' '.join(cmd)} (compiles host-tests on first use)", flush=True)
    p = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=900)
    if p.returncode != 0:
        raise RuntimeError(f"instructions: `{' '.join(cmd)}` failed ({p.returncode}):\n{p.stdout}\n{p.stderr}")
    body = [line for line in p.stdout.splitlines() if not line.startswith("# command:")]
    lines = ["## Wasm instructions per request (host-tests, wasmtime fuel)", "",
             f"`{COMMAND}` ({now()}; {conditions}) ran `{shown}`"
             + (f" (prebuilt: `{prebuilt}`)" if prebuilt else "")
             + " against the built `tollgate.wasm`. Deterministic: the same binary gives the same counts on any load.",
             "", *[(l[2:] + "  " if l.startswith("# ") else l) for l in body], ""]
    print(p.stdout)
    return "\n".join(lines)


class Redis:
    """redis-server on a free loopback port, append-only file fsynced on every write, temp dir."""

    def __init__(self, workdir):
        self.port = harness.free_port()
        self.args = ["--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "yes",
                     "--appendfsync", "always", "--dir", str(workdir)]
        self.log = open(Path(workdir) / "redis.log", "wb")
        self.proc = subprocess.Popen([REDIS_SERVER, *self.args], stdout=self.log, stderr=subprocess.STDOUT,
                                     preexec_fn=harness._die_with_parent)

        def pong():
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.proc.returncode}; see {self.log.name}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                    s.sendall(b"PING\r\n")
                    return s.recv(64).startswith(b"+PONG")
            except OSError:
                return False
        wait_until(pong, 10, "redis-server to answer PING")

    def version(self):
        out = subprocess.run([REDIS_SERVER, "--version"], capture_output=True, text=True).stdout
        m = re.search(r"v=(\S+)", out)
        return m.group(1) if m else "?"

    def close(self):
        harness.stop(self.proc)
        self.log.close()


def counter_bench(extra, binary=None):
    cmd = [str(binary or COUNTER_BIN), "bench", "--seconds", str(COUNTER_SECONDS), *extra]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=4 * COUNTER_SECONDS + 60)
    if p.returncode != 0:
        raise RuntimeError(f"counter: `{' '.join(cmd)}` failed ({p.returncode}):\n{p.stdout}\n{p.stderr}")
    print(p.stdout, end="", flush=True)
    def figure(name):
        m = re.search(rf"\b{name}=(\d+)", p.stdout)
        return float(m.group(1)) if m else None
    return {"records": figure("usage_records_per_sec"), "leases": figure("lease_calls_per_sec"), "raw": p.stdout.strip()}


def counter_rounds(extra):
    """One store: the counter alone, or (with BENCH_COUNTER_BASELINE_BIN) baseline and counter in
    interleaved rounds. Returns [(label, medians)] and the raw outputs."""
    if BASELINE_BIN is None:
        r = counter_bench(extra)
        return [("", r)], [r["raw"]]
    runs = {"baseline": [], "current": []}
    for _ in range(COUNTER_ROUNDS):
        runs["baseline"].append(counter_bench(extra, BASELINE_BIN))
        runs["current"].append(counter_bench(extra))
    def med(rs, k):
        xs = [r[k] for r in rs if r[k] is not None]
        return statistics.median(xs) if xs else None
    out = [(label, {"records": med(rs, "records"), "leases": med(rs, "leases")}) for label, rs in (("baseline", runs["baseline"]), ("this build", runs["current"]))]
    return out, [f"{label}: {r['raw']}" for label, rs in runs.items() for r in rs]


def counter_part(parts):
    """tollgate-counter bench on SQLite and on a real Redis; returns the section."""
    for b in (COUNTER_BIN, BASELINE_BIN):
        if b is not None and not b.exists():
            raise RuntimeError(f"{b} is missing: run `make build` (or build the baseline)")
    conditions = machine()
    rows, raws, commands = [], [], []
    if "counter" in parts:
        rs, raw = counter_rounds([])
        rows += [(f"SQLite, `--sync full`{' — ' + label if label else ''}", r) for label, r in rs]; raws += raw
        commands.append(f"tollgate-counter bench --seconds {COUNTER_SECONDS}")
    if "redis" in parts:
        with tempfile.TemporaryDirectory(prefix="tollgate-bench-redis-") as d:
            redis = Redis(d)
            try:
                rs, raw = counter_rounds(["--redis-url", f"redis://127.0.0.1:{redis.port}"])
                rows += [(f"Redis {redis.version()}, `appendfsync always`{' — ' + label if label else ''}", r) for label, r in rs]; raws += raw
                shown = " ".join(a if a else '""' for a in redis.args).replace(d, "<temp dir>")
                commands.append(f"redis-server {shown}")
                commands.append(f"tollgate-counter bench --seconds {COUNTER_SECONDS} --redis-url redis://127.0.0.1:{redis.port}")
            finally:
                redis.close()
    def num(x):
        return "?" if x is None else f"{x:,.0f}".replace(",", " ")
    baseline = []
    if BASELINE_BIN is not None:
        baseline = ["", f"Side by side: `baseline` is `BENCH_COUNTER_BASELINE_BIN={BASELINE_BIN.name}` (see the text after this "
                    f"section for which commit), `this build` is {COUNTER_BIN.name}; per store {COUNTER_ROUNDS} interleaved "
                    "rounds (baseline, this build, baseline, ...), medians shown."]
    lines = ["## Counter: usage records/s and lease calls/s", "",
             f"`{COMMAND}` ({now()}; {conditions}; no CPU pinning: bench client, counter and Redis share the machine, "
             "so these are floors). Each store in turn, back to back, "
             f"{COUNTER_SECONDS} s per phase: usage batches of 1000 records over 4 connections, then lease calls on 2 budgets "
             "over 16 connections, real loopback HTTP (docs/counter.md, docs/counter-redis.md). Commands:", "", "```sh",
             *commands, "```", *baseline, "",
             "| store | usage records/s | lease calls/s |", "| --- | ---: | ---: |",
             *[f"| {name} | {num(r['records'])} | {num(r['leases'])} |" for name, r in rows],
             "", "Raw output:", "", "```", *raws, "```"]
    return "\n".join(lines)


def main():
    for tool in ("wrk",):
        if ("envoy" in PARTS or "envoy2" in PARTS) and subprocess.run(["which", tool], capture_output=True).returncode != 0:
            sys.exit(f"bench: {tool} is missing: run scripts/setup.sh")
    started = time.monotonic()
    sections = {}
    if "instructions" in PARTS:
        sections["instructions"] = instructions_part()
    if "v8" in PARTS:
        sections["v8"] = v8_part()
    one = {}
    if "envoy" in PARTS:
        # A run with the opt-in native cases writes its own section, never over the default table.
        one, sections["dynamic" if DYNAMIC else "envoy"] = envoy_part(ONE_WORKER, CASES)
    if "envoy2" in PARTS and not DYNAMIC:
        many, section = envoy_part(MANY_WORKERS, CASES2)
        sections["envoy2"] = "\n".join([section, *scale_lines(many, one, MANY_WORKERS)])
    if "counter" in PARTS or "redis" in PARTS:
        sections["counter"] = counter_part(PARTS)
    for name in ("envoy", "envoy2", "dynamic", "counter", "instructions", "v8"):
        if name in sections:
            print("\n" + sections[name])
            write_section(name, sections[name])
    print(f"bench: wrote {', '.join(sections)} to {OUT} in {time.monotonic() - started:.0f} s")


def write_section(name, section):
    begin, end = MARKERS[name]
    block = f"{begin}\n{section}\n{end}"
    text = OUT.read_text() if OUT.exists() else "# Benchmarks\n"
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        _, tail = rest.split(end, 1)
        text = head + block + tail
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    OUT.write_text(text)


if __name__ == "__main__":
    main()
