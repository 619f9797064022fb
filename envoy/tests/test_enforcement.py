"""Budget enforcement end to end: two real Envoys (2 workers each), one real tollgate-counter.

What this file specifies (docs/enforcement.md has the model and the bound):
- under 64 concurrent clients, streaming and not, spend stops at the budget: the counter's ledger
  total is at most the hard limit plus the documented bound, which here is zero (every request
  states max_tokens and the mock never exceeds it, so no reservation can be overrun), and the
  filters' own `tollgate_enforce_excess_micros_total` says so too;
- every request that got a 200 is in the ledger exactly once (matched by the record id the filter
  returns in `x-tollgate-request-id`), and nothing else is;
- refusals are 429s in the dialect's error shape, naming the budget;
- the books stay right: a client that hangs up mid-stream, an upstream 5xx without usage and a
  graceful drain each leave every reservation charged or released (per Envoy,
  `admitted + fail_open == settled + released_unsettled` once idle) and the ledger agrees with the
  counter's spend.

Each test uses its own team, and so its own budget, on the one counter.
"""
import json
import os
import socket
import sqlite3
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import pytest

from harness import TARGET, TEMPLATE, ENVOY_BIN, TOLLGATE_WASM, Envoy, access_log_format, free_port, new_id, render, request, stop

COUNTER_BIN = Path(os.environ.get("TOLLGATE_COUNTER_BIN", TARGET / "release" / "tollgate-counter"))
GATEWAY_TOKEN = "e2e-gateway-token"
ADMIN_TOKEN = "e2e-admin-token"

# Budgets for the tests below, one team each. `none` window: a balance, nothing resets mid-test.
BUDGETS = [
    {"id": "load", "scope": "team:enforce-load", "limit": "2.00", "window": "none"},
    {"id": "books", "scope": "team:enforce-books", "limit": "50.00", "window": "none"},
    {"id": "drain", "scope": "team:enforce-drain", "limit": "50.00", "window": "none"},
    {"id": "soft", "scope": "team:enforce-soft", "limit": "1.00", "window": "month", "soft_thresholds_pct": [1]},
    {"id": "observe", "scope": "team:enforce-observe", "limit": "0.01", "window": "none", "mode": "observe"},
    {"id": "outage", "scope": "team:enforce-outage", "limit": "50.00", "window": "none"},
    {"id": "downgrade", "scope": "team:enforce-downgrade", "limit": "0.03", "window": "none"},
    {"id": "steady", "scope": "team:enforce-steady", "limit": "50.00", "window": "none"},
    {"id": "dry", "scope": "team:enforce-dry", "limit": "0.00", "window": "month"},
    {"id": "estimate", "scope": "team:enforce-estimate", "limit": "50.00", "window": "none"},
    # Reservation policies (docs/counter.md): a worst case (gpt-4o without max_tokens: ~$0.164) is
    # more than `worst`'s limit; `p99` may pass its limit by $0.50.
    {"id": "p99", "scope": "team:enforce-p99", "limit": "1.00", "window": "none",
     "reserve": "p99", "reserve_excess_limit": "0.50", "reserve_min_samples": 10},
    {"id": "worst", "scope": "team:enforce-worst", "limit": "0.10", "window": "none"},
]

SLICE_USD = "0.25"
MAX_TOKENS = 2000


def filter_config(gateway_id, **enforcement):
    return {
        "gateway_id": gateway_id,
        "access_log": "fields",
        "attribution": {"trusted_headers": {"team": "x-e2e-team", "user": "x-e2e-user"}},
        "routing": {"rules": [
            {"name": "downgrade-near-limit", "match": {"team": "enforce-downgrade", "model": "e2e-chat",
                                                       "budget_utilization_at_least_pct": 50},
             "set_model": "gpt-4o-mini", "set_headers": {"x-tollgate-provider": "openai"}},
            {"name": "chat", "match": {"model": "e2e-chat"}, "set_model": "gpt-4o",
             "set_headers": {"x-tollgate-provider": "openai"}},
        ]},
        "pricing": {"unknown_model": "zero"},
        "enforcement": {
            "counter_cluster": "tollgate_counter",
            "gateway_token": GATEWAY_TOKEN,
            "lease_slice_usd": SLICE_USD,
            "flush_interval_ms": 200,
            # Generous: the machine running the suite may be busy; a timeout would be a 503 here.
            "call_timeout_ms": 5000,
            "failure_mode": "fail_closed",
            **enforcement,
        },
    }


class Counter:
    """tollgate-counter on a free port with the budgets above, SQLite ledger in `data`."""

    def __init__(self, workdir, port=None, name="counter", budgets=None):
        self.data = Path(workdir) / f"{name}-data"
        self.data.mkdir()
        self._serve(workdir, name, ["--data", str(self.data), "--sync", "normal"], port, budgets)

    def _serve(self, workdir, name, store_args, port=None, budgets=None):
        """Starts `tollgate-counter serve` with the budgets above and `store_args`; waits for /healthz."""
        if not COUNTER_BIN.exists():
            raise RuntimeError(f"{COUNTER_BIN} is missing: cargo build --release -p tollgate-counter")
        self.workdir = workdir
        budgets_list = budgets
        budgets = Path(workdir) / "budgets.json"
        budgets.write_text(json.dumps({"budgets": budgets_list or BUDGETS}))
        tokens = Path(workdir) / "tokens.json"
        tokens.write_text(json.dumps({"gateway": {"e2e": GATEWAY_TOKEN}, "admin": {"e2e": ADMIN_TOKEN}}))
        self.port = port or free_port()
        self.log = open(Path(workdir) / f"{name}.log", "wb")
        self.proc = subprocess.Popen(
            [str(COUNTER_BIN), "serve", "--listen", f"127.0.0.1:{self.port}", "--budgets", str(budgets),
             "--tokens", str(tokens), "--lease-ttl-secs", "30", *store_args],
            stdout=self.log, stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"tollgate-counter exited with {self.proc.returncode}; see {self.log.name}")
            try:
                if request(self.port, "GET", "/healthz", timeout=1).status == 200:
                    return
            except OSError:
                pass
            time.sleep(0.1)
        self.close()
        raise RuntimeError("tollgate-counter not healthy after 15s")

    def budget(self, budget_id):
        r = request(self.port, "GET", f"/admin/budgets/{budget_id}", headers={"authorization": f"Bearer {ADMIN_TOKEN}"})
        assert r.status == 200, r
        return r.json()

    def ledger(self, team):
        """{record id: (cost_micros, status, estimated)} for the team, read from the SQLite ledger."""
        db = sqlite3.connect(f"file:{self.data / 'counter.sqlite3'}?mode=ro", uri=True, timeout=5)
        try:
            rows = db.execute("SELECT id, cost_micros, status, estimated FROM ledger WHERE team = ?", (team,)).fetchall()
        finally:
            db.close()
        return {r[0]: (r[1], r[2], bool(r[3])) for r in rows}

    def close(self):
        stop(self.proc)
        self.log.close()


class EnforcingEnvoy(Envoy):
    """Envoy with the counter cluster and several workers (the harness's Envoy runs one worker
    and no counter). Same template, same readiness check, same helpers."""

    def __init__(self, workdir, upstream_port, counter_port, name, concurrency=2, **enforcement):
        self.workdir = Path(workdir)
        self.name = name
        self.listen_port = free_port()
        self.admin_port = free_port()
        self.access_log = self.workdir / f"{name}-access.log"
        self.envoy_log = self.workdir / f"{name}-envoy.log"
        plugin_config = filter_config(name, **enforcement)
        yaml = render.render(TEMPLATE.read_text(), {
            "LISTEN_PORT": self.listen_port, "ADMIN_PORT": self.admin_port, "UPSTREAM_PORT": upstream_port,
            "WASM_PATH": str(TOLLGATE_WASM), "WASM_NAME": "tollgate", "PLUGIN_CONFIG": json.dumps(plugin_config),
            "ACCESS_LOG_PATH": str(self.access_log), **access_log_format(plugin_config), "COUNTER_PORT": counter_port,
        })
        self.config_path = self.workdir / f"{name}-envoy.yaml"
        self.config_path.write_text(yaml)
        self.log_file = open(self.envoy_log, "wb")
        self.proc = subprocess.Popen(
            [str(ENVOY_BIN), "-c", str(self.config_path), "--concurrency", str(concurrency), "--disable-hot-restart",
             "--file-flush-interval-msec", "50", "--log-level", "info", "--component-log-level", "wasm:info"],
            stdout=self.log_file, stderr=subprocess.STDOUT,
        )
        self._wait_ready(30)

    def enforcement_stats(self):
        return {k.removeprefix("wasmcustom."): v for k, v in self.stats().items() if "tollgate_enforce" in k or "tollgate_usage" in k or "tollgate_lease" in k}


@pytest.fixture(scope="module")
def counter():
    with tempfile.TemporaryDirectory(prefix="tollgate-enforce-") as d:
        c = Counter(d)
        yield c
        c.close()


@pytest.fixture(scope="module")
def gateways(counter, mock):
    envoys = []
    try:
        for name in ("gw-a", "gw-b"):
            envoys.append(EnforcingEnvoy(counter.workdir, mock.port, counter.port, name))
        yield envoys
    finally:
        for e in envoys:
            e.close()


def chat(envoy, team, stream, output_tokens, extra_headers=None, timeout=30):
    body = {"model": "e2e-chat", "max_tokens": MAX_TOKENS, "stream": stream,
            "messages": [{"role": "user", "content": "Summarise the quarterly report in three bullet points."}]}
    headers = {"x-e2e-team": team, "x-e2e-user": "load-client", "x-mock-output-tokens": str(output_tokens),
               "x-mock-gzip": "never", "x-mock-events": "8", "x-mock-event-delay-ms": "5"}
    headers.update(extra_headers or {})
    return request(envoy.listen_port, "POST", "/v1/chat/completions", json.dumps(body), headers, timeout=timeout)


def wait_for(predicate, timeout, what, detail=None):
    """Polls `predicate` until true; on timeout fails naming `what` (and `detail()` if given)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}" + (f": {detail()}" if detail else ""))


def books_balance(envoy, s=None):
    """Once idle, every reservation was either settled or released."""
    s = s if s is not None else envoy.enforcement_stats()
    got = lambda n: s.get(n, 0)  # noqa: E731
    return got("tollgate_enforce_admitted_total") + got("tollgate_enforce_fail_open_total") == \
        got("tollgate_enforce_settled_total") + got("tollgate_enforce_released_unsettled_total")


def queue_empty(envoy, s=None):
    """Every usage record acknowledged by the counter."""
    s = s if s is not None else envoy.enforcement_stats()
    return s.get("tollgate_usage_unacked", 0) == 0


def idle(envoy):
    """Books balanced and nothing left to deliver, from one stats snapshot."""
    s = envoy.enforcement_stats()
    return books_balance(envoy, s) and queue_empty(envoy, s)


def burst(clients, seconds, per_client, send):
    """`clients` threads, each calling `send(n, i)` until refused twice, `per_client` requests or
    `seconds` have passed (a refusal waits 0.2 s); returns (ids of the 200s, the 429s, anything else)."""
    ok_ids, refusals, errors = [], [], []
    lock = threading.Lock()
    stop_at = time.monotonic() + seconds

    def client(n):
        refused, i = 0, 0
        while time.monotonic() < stop_at and refused < 2 and i < per_client:
            i += 1
            try:
                r = send(n, i)
            except OSError as e:
                with lock:
                    errors.append(repr(e))
                continue
            with lock:
                if r.status == 200:
                    ok_ids.append(r.header("x-tollgate-request-id"))
                elif r.status == 429:
                    refusals.append(r)
                    refused += 1
                else:
                    errors.append(f"{r.status} {r.body[:200]!r}")
            if r.status == 429:
                time.sleep(0.2)

    threads = [threading.Thread(target=client, args=(n,)) for n in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=seconds + 30)
    assert not any(t.is_alive() for t in threads), "clients did not finish in time"
    return ok_ids, refusals, errors


def test_spend_stops_at_the_limit_and_every_200_is_in_the_ledger_once(counter, gateways, mock):
    team = "enforce-load"
    limit = 2_000_000
    ok_ids, refusals, errors = burst(
        64, 60, 200,
        lambda n, i: chat(gateways[n % 2], team, stream=(n + i) % 2 == 0, output_tokens=500 + (n * 37 + i * 101) % 1500))
    assert not errors, f"{len(errors)} unexpected answers, first: {errors[:5]}; stats: {[e.enforcement_stats() for e in gateways]}"
    assert refusals, "the budget never refused"
    assert len(ok_ids) > 20, f"only {len(ok_ids)} requests served"

    # Refusals: 429 in OpenAI's error shape, naming the budget; no Retry-After for a no-window budget.
    err = refusals[0].json()["error"]
    assert err["code"] == "budget_exceeded" and "`load`" in err["message"], err
    assert refusals[0].header("retry-after") is None

    for e in gateways:
        wait_for(lambda: idle(e), 30, f"{e.name} to flush and balance", e.enforcement_stats)
    wait_for(lambda: len(counter.ledger(team)) >= len(ok_ids), 15, "the ledger to hold every served request")

    ledger = counter.ledger(team)
    assert None not in ok_ids, "every 200 carries x-tollgate-request-id"
    assert len(set(ok_ids)) == len(ok_ids), "record ids are unique"
    assert set(ledger) == set(ok_ids), (
        f"missing from ledger: {sorted(set(ok_ids) - set(ledger))[:5]}, unexpected: {sorted(set(ledger) - set(ok_ids))[:5]}")
    total = sum(cost for cost, _, _ in ledger.values())
    excess = sum(e.enforcement_stats().get("tollgate_enforce_excess_micros_total", 0) for e in gateways)
    unreserved = sum(e.enforcement_stats().get("tollgate_enforce_unreserved_micros_total", 0) for e in gateways)
    assert excess == 0 and unreserved == 0, "max_tokens is honoured and the counter stayed up: the bound is zero"
    assert total <= limit + excess + unreserved, f"ledger {total} over limit {limit} + bound {excess + unreserved}"
    # Headroom is not stranded: at most the two gateways' free slices and a request's worst case are
    # left when refusals start.
    slice_micros = 250_000
    assert total >= limit - 2 * slice_micros - 25_000, f"only {total} of {limit} spent"
    assert counter.budget("load")["spent_micros"] == total, "the counter's spend is the ledger's sum"

    stats = [e.enforcement_stats() for e in gateways]
    paused = sum(s.get("tollgate_enforce_paused_total", 0) for s in stats)
    admitted = sum(s.get("tollgate_enforce_admitted_total", 0) for s in stats)
    print(f"\nload: served {len(ok_ids)}, refused {len(refusals)}, spent {total}/{limit} micros, "
          f"paused {paused} of {admitted} admitted, lease calls {sum(s.get('tollgate_lease_calls_total', 0) for s in stats)}")


def test_a_client_hanging_up_or_timing_out_is_charged_once_and_releases_its_reservation(counter, gateways):
    team = "enforce-books"
    envoy = gateways[0]
    body = json.dumps({"model": "e2e-chat", "max_tokens": MAX_TOKENS, "stream": True,
                       "messages": [{"role": "user", "content": "Write a long story."}]})
    raw = (f"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
           f"content-length: {len(body)}\r\nx-e2e-team: {team}\r\nx-mock-gzip: never\r\nx-mock-events: 40\r\n"
           f"x-mock-event-delay-ms: 50\r\n\r\n{body}").encode()
    hung_up = 0
    for _ in range(3):
        with socket.create_connection(("127.0.0.1", envoy.listen_port), timeout=10) as s:
            s.sendall(raw)
            head = s.recv(4096)
            assert head.startswith(b"HTTP/1.1 200"), head[:200]
            hung_up += 1
        # The socket is closed here, mid-stream.
    # A client that times out before the upstream even answers.
    with pytest.raises(TimeoutError):
        chat(envoy, team, stream=False, output_tokens=10, extra_headers={"x-mock-delay-ms": "3000"}, timeout=0.5)
    hung_up += 1
    wait_for(lambda: idle(envoy), 15, "settlement of the cut requests")
    wait_for(lambda: len(counter.ledger(team)) >= hung_up, 10, "the cut requests' records")
    ledger = counter.ledger(team)
    assert len(ledger) == hung_up, "each cut request is charged exactly once"
    assert all(est for _, _, est in ledger.values()), f"cut requests are charged from a flagged estimate: {ledger}"
    assert counter.budget("books")["spent_micros"] == sum(c for c, _, _ in ledger.values())


def test_an_upstream_error_without_usage_releases_the_reservation(counter, gateways):
    team = "enforce-books"
    envoy = gateways[1]
    before = counter.ledger(team)
    spent_before = counter.budget("books")["spent_micros"]
    r = chat(envoy, team, stream=False, output_tokens=100, extra_headers={"x-mock-status": "503"})
    assert r.status == 503
    wait_for(lambda: idle(envoy), 15, "settlement of the failed request")
    wait_for(lambda: len(counter.ledger(team)) > len(before), 10, "the failed request's record")
    new = {k: v for k, v in counter.ledger(team).items() if k not in before}
    assert list(new.values()) == [(0, 503, False)], new
    assert counter.budget("books")["spent_micros"] == spent_before


def test_a_graceful_drain_delivers_every_record(counter, mock):
    team = "enforce-drain"
    envoy = EnforcingEnvoy(counter.workdir, mock.port, counter.port, "gw-drain")
    try:
        ids = []
        lock = threading.Lock()

        def client(n):
            for i in range(5):
                r = chat(envoy, team, stream=i % 2 == 0, output_tokens=200,
                         extra_headers={"x-mock-event-delay-ms": "30"})
                assert r.status == 200, r
                with lock:
                    ids.append(r.header("x-tollgate-request-id"))

        threads = [threading.Thread(target=client, args=(n,)) for n in range(8)]
        for t in threads:
            t.start()
        time.sleep(0.3)
        r = request(envoy.admin_port, "POST", "/drain_listeners?graceful")
        assert r.status == 200
        for t in threads:
            t.join(timeout=60)
        # The operator's signal that a gateway may be stopped: nothing queued, nothing unsettled.
        wait_for(lambda: idle(envoy), 15, "the drained gateway to flush")
    finally:
        envoy.close()
    wait_for(lambda: len(counter.ledger(team)) >= len(ids), 10, "every record of the drained gateway")
    assert set(counter.ledger(team)) == set(ids)


def test_past_the_soft_threshold_responses_carry_the_budget_warning(counter, gateways):
    team = "enforce-soft"
    envoy = gateways[0]
    first = chat(envoy, team, stream=False, output_tokens=1500)
    assert first.status == 200
    # The warning reflects what this gateway knows: after the first request's settlement.
    wait_for(lambda: books_balance(envoy), 10, "the first request to settle")
    r = chat(envoy, team, stream=False, output_tokens=10)
    assert r.status == 200
    assert r.header("x-tollgate-budget-id") == "soft"
    assert r.header("x-tollgate-budget-status") == "soft"
    assert int(r.header("x-tollgate-budget-utilization-pct")) >= 1
    assert int(r.header("x-tollgate-budget-reset")) > time.time()
    assert envoy.enforcement_stats().get("tollgate_enforce_soft_warning_total", 0) >= 1


def test_observe_mode_budgets_refuse_nothing_and_count_what_they_would_have_refused(counter, gateways):
    team = "enforce-observe"
    envoy = gateways[1]
    before = envoy.enforcement_stats().get("tollgate_enforce_observe_would_refuse_total", 0)
    for i in range(4):
        r = chat(envoy, team, stream=i % 2 == 0, output_tokens=1500)
        assert r.status == 200, r
    # Every request's worst case (~$0.02) alone passes the $0.01 limit.
    assert envoy.enforcement_stats()["tollgate_enforce_observe_would_refuse_total"] - before == 4
    wait_for(lambda: idle(envoy), 15, "the observed requests to settle")
    wait_for(lambda: counter.budget("observe")["spent_micros"] > 10_000, 10, "the observed spend to reach the counter")


def test_counter_unreachable_fail_closed_answers_503_in_the_dialect_shape(counter, mock):
    dead_port = free_port()
    envoy = EnforcingEnvoy(counter.workdir, mock.port, dead_port, "gw-closed", concurrency=1, call_timeout_ms=500)
    try:
        r = chat(envoy, "enforce-outage", stream=False, output_tokens=10)
        assert r.status == 503, r
        err = r.json()["error"]
        assert err["code"] == "budget_service_unavailable" and "tollgate-counter" in err["message"], err
        stats = envoy.enforcement_stats()
        assert stats["tollgate_enforce_unavailable_total"] == 1 and stats["tollgate_lease_call_failures_total"] >= 1
        assert books_balance(envoy)
    finally:
        envoy.close()


def test_counter_unreachable_fail_open_serves_and_delivers_the_records_once_it_is_back(counter, mock):
    team = "enforce-outage"
    port = free_port()
    envoy = EnforcingEnvoy(counter.workdir, mock.port, port, "gw-open", concurrency=2, call_timeout_ms=500,
                           failure_mode="fail_open")
    late = None
    try:
        ids = []
        for i in range(4):
            r = chat(envoy, team, stream=i % 2 == 0, output_tokens=100)
            assert r.status == 200, r
            ids.append(r.header("x-tollgate-request-id"))
        wait_for(lambda: envoy.enforcement_stats().get("tollgate_usage_post_failures_total", 0) >= 1, 10,
                 "a usage post to fail while the counter is down")
        stats = envoy.enforcement_stats()
        assert stats["tollgate_enforce_fail_open_total"] == 4
        assert stats["tollgate_usage_unacked"] == 4, "records wait, unacknowledged"
        assert stats["tollgate_usage_dropped_total"] == 0
        # The counter comes up (a fresh one, on the port the gateway was configured with).
        late = Counter(counter.workdir, port=port, name="late-counter")
        wait_for(lambda: set(late.ledger(team)) == set(ids), 15, "the queued records to be redelivered")
        wait_for(lambda: queue_empty(envoy), 5, "the queue to drain")
        assert late.budget("outage")["spent_micros"] == sum(c for c, _, _ in late.ledger(team).values())
        assert books_balance(envoy)
    finally:
        envoy.close()
        if late:
            late.close()


def test_routing_downgrades_the_model_once_a_budget_is_half_used(counter, gateways):
    team = "enforce-downgrade"
    envoy = gateways[0]
    first_id, second_id = new_id(), new_id()
    first = chat(envoy, team, stream=False, output_tokens=1500, extra_headers={"x-e2e-id": first_id})
    assert first.status == 200, first
    assert envoy.access_log_line(first_id)["routed_model"] == "gpt-4o"
    wait_for(lambda: books_balance(envoy), 10, "the first request to settle")
    # About $0.015 of $0.03 is spent: past 50%, the same request is routed to the cheaper model.
    second = chat(envoy, team, stream=False, output_tokens=1500, extra_headers={"x-e2e-id": second_id})
    assert second.status == 200, second
    line = envoy.access_log_line(second_id)
    assert (line["routed_model"], line["rule"]) == ("gpt-4o-mini", "downgrade-near-limit"), line


def test_in_steady_state_no_request_waits_on_the_network(counter, gateways):
    # Once a gateway holds slices, top-ups happen in the background before the slice runs dry:
    # `tollgate_enforce_paused_total` stays flat while hundreds of requests are admitted.
    team = "enforce-steady"
    envoy = gateways[1]

    def small(i):
        body = {"model": "e2e-chat", "max_tokens": 300, "stream": i % 2 == 0,
                "messages": [{"role": "user", "content": "ping"}]}
        # 20 ms per call (real LLM calls take far longer): ~8 × 50 calls/s, ~$1/s on the team budget,
        # so its $0.25 slices need several top-ups during the run.
        headers = {"x-e2e-team": team, "x-e2e-user": f"steady-{i % 4}", "x-mock-gzip": "never", "x-mock-events": "4",
                   "x-mock-output-tokens": "250", "x-mock-delay-ms": "20"}
        r = request(envoy.listen_port, "POST", "/v1/chat/completions", json.dumps(body), headers)
        assert r.status == 200, r

    for i in range(8):  # warm-up: the four users' scopes get their first slices
        small(i)
    before = envoy.enforcement_stats()
    failures = []

    def client(n):
        try:
            for i in range(40):
                small(n * 40 + i)
        except AssertionError as e:
            failures.append(e)

    threads = [threading.Thread(target=client, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not failures, failures[:3]
    after = envoy.enforcement_stats()
    admitted = after["tollgate_enforce_admitted_total"] - before["tollgate_enforce_admitted_total"]
    paused = after["tollgate_enforce_paused_total"] - before["tollgate_enforce_paused_total"]
    topups = after["tollgate_lease_topups_total"] - before["tollgate_lease_topups_total"]
    print(f"\nsteady: {admitted} admitted, {paused} paused, {topups} background top-ups")
    assert admitted == 320
    assert topups >= 2, "the slices were topped up in the background"
    assert paused == 0, f"{paused} of {admitted} requests waited on a lease call"
    wait_for(lambda: idle(envoy), 15, "the steady-state requests to settle")


@pytest.mark.parametrize("dialect,path,body,shape", [
    ("openai", "/v1/chat/completions",
     {"model": "gpt-4o", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]},
     lambda e: e["error"]["code"] == "budget_exceeded" and e["error"]["type"] == "insufficient_quota"),
    ("anthropic", "/v1/messages",
     {"model": "claude-haiku-4-5", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]},
     lambda e: e["type"] == "error" and e["error"]["type"] == "rate_limit_error"),
    ("gemini", "/v1beta/models/gemini-2.5-flash:generateContent",
     {"contents": [{"parts": [{"text": "hi"}]}], "generationConfig": {"maxOutputTokens": 10}},
     lambda e: e["error"]["code"] == 429 and e["error"]["status"] == "RESOURCE_EXHAUSTED"),
], ids=["openai", "anthropic", "gemini"])
def test_refusals_speak_each_dialect_and_say_when_to_retry(counter, gateways, dialect, path, body, shape):
    envoy = gateways[0]
    r = request(envoy.listen_port, "POST", path, json.dumps(body), {"x-e2e-team": "enforce-dry", "x-mock-gzip": "never"})
    assert r.status == 429, r
    err = r.json()
    assert shape(err), err
    message = json.dumps(err)
    assert "`dry`" in message and "team:enforce-dry" in message, message
    # A monthly budget: retry when the month turns (at most 31 days away).
    retry = int(r.header("retry-after"))
    assert 0 < retry <= 31 * 86400


def test_an_output_override_makes_reservations_estimates_and_their_overrun_is_reported(counter, mock):
    # Reserving 10 output tokens for requests without max_tokens: a request that then produces
    # 1500 overruns its reservation, and the gateway reports the overrun (term (1) of the bound).
    envoy = EnforcingEnvoy(counter.workdir, mock.port, counter.port, "gw-estimate", concurrency=1,
                           default_max_output_tokens=10)
    try:
        body = {"model": "e2e-chat", "messages": [{"role": "user", "content": "no cap on this one"}]}
        headers = {"x-e2e-team": "enforce-estimate", "x-mock-gzip": "never", "x-mock-output-tokens": "1500"}
        r = request(envoy.listen_port, "POST", "/v1/chat/completions", json.dumps(body), headers)
        assert r.status == 200, r
        wait_for(lambda: idle(envoy), 15, "the request to settle", envoy.enforcement_stats)
        excess = envoy.enforcement_stats()["tollgate_enforce_excess_micros_total"]
        # 1490 output tokens beyond the reservation at gpt-4o's $10 per million ($0.0149), less the
        # prompt's over-reservation (one token per body byte reserved, a quarter of that used).
        assert 14_000 <= excess <= 14_900, excess
        ledger = counter.ledger("enforce-estimate")
        assert [cost for cost, _, _ in ledger.values()] == [counter.budget("estimate")["spent_micros"]]
    finally:
        envoy.close()


def uncapped_chat(envoy, team, output_tokens):
    """A chat request without max_tokens: its worst case is gpt-4o's whole output (~$0.164)."""
    body = {"model": "e2e-chat", "messages": [{"role": "user", "content": "Summarise the thread."}]}
    headers = {"x-e2e-team": team, "x-e2e-user": "agent", "x-mock-output-tokens": str(output_tokens),
               "x-mock-gzip": "never", "x-mock-events": "4", "x-mock-event-delay-ms": "5"}
    return request(envoy.listen_port, "POST", "/v1/chat/completions", json.dumps(body), headers, timeout=30)


def test_a_p99_budget_serves_what_worst_case_refuses_and_a_burst_stays_within_the_limit_plus_the_excess(counter, gateways):
    # The scope's history: 20 requests to gpt-4o of 100..480 output tokens (p99 = 480), cost 0.
    now_ms = int(time.time() * 1000)
    seed = [{"id": f"seed:{i}", "principal": {"team": "enforce-p99"}, "dialect": "openai",
             "requested_model": "e2e-chat", "routed_model": "gpt-4o", "tokens": {"input": 20, "output": 100 + 20 * i},
             "cost_micros": 0, "status": 200, "started_at_ms": now_ms - 1000, "finished_at_ms": now_ms} for i in range(20)]
    r = request(counter.port, "POST", "/v1/usage", json.dumps({"gateway_id": "seed", "records": seed}),
                {"authorization": f"Bearer {GATEWAY_TOKEN}"})
    assert r.status == 200 and r.json()["accepted"] == 20, r

    # One request that would cost ~$0.003: worst_case cannot hold its $0.164 worst case in $0.10,
    # p99 holds what the scope's requests to gpt-4o usually produce.
    refused = uncapped_chat(gateways[0], "enforce-worst", 300)
    assert refused.status == 429 and "`worst`" in refused.json()["error"]["message"], refused
    served = uncapped_chat(gateways[0], "enforce-p99", 300)  # the p99 budget holds ~$0.005 for it
    assert served.status == 200, served

    # A burst of 16 agents on both gateways, answers of 100..1600 tokens (most beyond the p99).
    ok_ids, refusals, errors = burst(
        16, 45, 40, lambda n, i: uncapped_chat(gateways[n % 2], "enforce-p99", 100 + (n * 97 + i * 211) % 1500))
    ok_ids.append(served.header("x-tollgate-request-id"))
    assert not errors, f"{len(errors)} unexpected answers, first: {errors[:5]}"
    assert refusals, "the budget never refused"
    for e in gateways:
        wait_for(lambda: idle(e), 30, f"{e.name} to flush and balance", e.enforcement_stats)
    wait_for(lambda: len(counter.ledger("enforce-p99")) >= len(ok_ids) + 20, 15, "the ledger to hold every served request")

    ledger = {k: v for k, v in counter.ledger("enforce-p99").items() if not k.startswith("seed:")}
    assert set(ledger) == set(ok_ids), "every 200 is in the ledger once, and nothing else"
    total = sum(cost for cost, _, _ in ledger.values())
    state = counter.budget("p99")
    assert state["spent_micros"] == total
    assert total <= 1_000_000 + 500_000, f"spend {total} past the limit plus the excess limit"
    # The excess beyond p99 holds is counted the same at the gateways and at the counter.
    at_gateways = sum(e.enforcement_stats().get("tollgate_enforce_p99_excess_micros_total", 0) for e in gateways)
    assert state["reserve_excess_micros"] == at_gateways > 0, (state, at_gateways)
    print(f"\np99: served {len(ok_ids)}, refused {len(refusals)}, spent {total}/1000000 micros, "
          f"excess {at_gateways}/500000")
