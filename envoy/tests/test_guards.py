"""Agent guards end to end (issue 12, docs/guards.md): two real Envoys (2 workers each), one real
tollgate-counter, the mock upstream.

What this file specifies:
- an agent loop of 10 identical premium requests spread over two Envoys gets at most the documented
  number through: `M × (1 + allowed_retries)` = 2 × 3 = 6 with M = 2 gateways, and at most
  `1 + allowed_retries` through any one gateway (its workers share the count); the rest are 429s in
  the OpenAI error shape naming the retry guard and the task;
- a checkpoint (the configured header, written here by the test in the role of the trusted
  approval filter) lets the next attempt through;
- a premium request without a task id is refused with 403 naming what is missing;
- the counter's task summary (`GET /admin/tasks/{id}`) matches its ledger exactly, and every
  response of the task carried `x-tollgate-task-cost`.
"""
import json
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from harness import TEMPLATE, ENVOY_BIN, TOLLGATE_WASM, Envoy, access_log_format, free_port, render, request
from test_enforcement import ADMIN_TOKEN, GATEWAY_TOKEN, Counter, idle, wait_for

ALLOWED_RETRIES = 2
GATEWAYS = ("guard-a", "guard-b")


def guard_config(gateway_id):
    return {
        "gateway_id": gateway_id,
        "access_log": "fields",
        "attribution": {"trusted_headers": {"team": "x-e2e-team", "task": "x-e2e-task", "tier": "x-e2e-tier"}},
        "routing": {"rules": [
            {"name": "chat", "match": {"model": "e2e-chat"}, "set_model": "gpt-4o", "set_headers": {"x-tollgate-provider": "openai"}},
        ]},
        "pricing": {"unknown_model": "zero"},
        "guards": {
            "retry": {"expensive": {"tier": "premium"}, "allowed_retries": ALLOWED_RETRIES, "window_seconds": 3600,
                      "checkpoint_header": "x-e2e-checkpoint"},
            "require_task": [{"name": "premium-needs-task", "match": {"tier": "premium"}}],
            "task_cost_header": True,
        },
        "enforcement": {
            "counter_cluster": "tollgate_counter",
            "gateway_token": GATEWAY_TOKEN,
            "flush_interval_ms": 200,
            "call_timeout_ms": 5000,
            "failure_mode": "fail_closed",
        },
    }


class GuardEnvoy(Envoy):
    """Envoy with the counter cluster, 2 workers and the guard config above."""

    def __init__(self, workdir, upstream_port, counter_port, name):
        self.workdir = Path(workdir)
        self.name = name
        self.listen_port = free_port()
        self.admin_port = free_port()
        self.access_log = self.workdir / f"{name}-access.log"
        self.envoy_log = self.workdir / f"{name}-envoy.log"
        plugin_config = guard_config(name)
        yaml = render.render(TEMPLATE.read_text(), {
            "LISTEN_PORT": self.listen_port, "ADMIN_PORT": self.admin_port, "UPSTREAM_PORT": upstream_port,
            "WASM_PATH": str(TOLLGATE_WASM), "WASM_NAME": "tollgate", "PLUGIN_CONFIG": json.dumps(plugin_config),
            "ACCESS_LOG_PATH": str(self.access_log), **access_log_format(plugin_config), "COUNTER_PORT": counter_port,
        })
        self.config_path = self.workdir / f"{name}-envoy.yaml"
        self.config_path.write_text(yaml)
        self.log_file = open(self.envoy_log, "wb")
        self.proc = subprocess.Popen(
            [str(ENVOY_BIN), "-c", str(self.config_path), "--concurrency", "2", "--disable-hot-restart",
             "--file-flush-interval-msec", "50", "--log-level", "info", "--component-log-level", "wasm:info"],
            stdout=self.log_file, stderr=subprocess.STDOUT,
        )
        self._wait_ready(30)

    def enforcement_stats(self):
        return {k.removeprefix("wasmcustom."): v for k, v in self.stats().items() if "tollgate_enforce" in k or "tollgate_usage" in k}


@pytest.fixture(scope="module")
def counter():
    with tempfile.TemporaryDirectory(prefix="tollgate-guards-") as d:
        c = Counter(d)
        yield c
        c.close()


@pytest.fixture(scope="module")
def gateways(counter, mock):
    envoys = []
    try:
        for name in GATEWAYS:
            envoys.append(GuardEnvoy(counter.workdir, mock.port, counter.port, name))
        yield envoys
    finally:
        for e in envoys:
            e.close()


def premium(envoy, task, content="The test in parser_spec.rb fails; fix the parser.", extra=None):
    body = {"model": "e2e-chat", "max_tokens": 200, "messages": [{"role": "user", "content": content}]}
    headers = {"x-e2e-team": "agents", "x-e2e-tier": "premium", "x-mock-output-tokens": "40", "x-mock-gzip": "never"}
    if task is not None:
        headers["x-e2e-task"] = task
    headers.update(extra or {})
    return request(envoy.listen_port, "POST", "/v1/chat/completions", json.dumps(body), headers, timeout=30)


def admin_get(counter, path):
    return request(counter.port, "GET", path, headers={"authorization": f"Bearer {ADMIN_TOKEN}"})


def ledger_for_task(counter, task):
    import sqlite3
    db = sqlite3.connect(f"file:{counter.data / 'counter.sqlite3'}?mode=ro", uri=True, timeout=5)
    try:
        rows = db.execute(
            "SELECT id, routed_model, cost_micros, input_tokens, output_tokens, cache_read_tokens, cache_write_tokens, reasoning_tokens "
            "FROM ledger WHERE task = ?", (task,)).fetchall()
    finally:
        db.close()
    return rows


def test_an_agent_loop_over_two_gateways_gets_at_most_the_documented_number_through(counter, gateways):
    task = "loop-" + str(time.monotonic_ns())
    results = []
    for i in range(10):
        envoy = gateways[i % 2]
        r = premium(envoy, task)
        results.append((envoy.name, r))
    ok = [(name, r) for name, r in results if r.status == 200]
    refused = [(name, r) for name, r in results if r.status == 429]
    assert len(ok) + len(refused) == 10, [(n, r.status, r.body[:200]) for n, r in results]
    bound = len(GATEWAYS) * (1 + ALLOWED_RETRIES)
    assert 1 + ALLOWED_RETRIES <= len(ok) <= bound, f"{len(ok)} went through; the bound is {bound}"
    for name in GATEWAYS:
        through = sum(1 for n, _ in ok if n == name)
        assert through <= 1 + ALLOWED_RETRIES, f"{name} let {through} through; its workers share one count"
    for _, r in refused:
        err = r.json()["error"]
        assert err["code"] == "retry_guard", err
        assert f'task "{task}"' in err["message"] and "checkpoint" in err["message"], err["message"]

    # The trusted approval step writes a checkpoint: the next attempt goes through, once per gateway.
    for envoy in gateways:
        r = premium(envoy, task, extra={"x-e2e-checkpoint": "cp-approved-1"})
        assert r.status == 200, (envoy.name, r)


def test_a_changed_request_is_not_a_retry(counter, gateways):
    task = "changes-" + str(time.monotonic_ns())
    statuses = [premium(gateways[0], task, content=f"attempt {i}: another approach").status for i in range(6)]
    assert statuses == [200] * 6


def test_a_premium_request_without_a_task_is_refused_naming_what_is_missing(gateways):
    r = premium(gateways[0], None)
    assert r.status == 403, r
    message = r.json()["error"]["message"]
    assert "premium-needs-task" in message and "task" in message, message


def test_the_task_summary_matches_the_ledger_exactly(counter, gateways):
    task = "handoff-" + str(time.monotonic_ns())
    ids, cost_headers = [], []
    for i in range(6):
        r = premium(gateways[i % 2], task, content=f"step {i} of the migration plan")
        assert r.status == 200, r
        ids.append(r.header("x-tollgate-request-id"))
        cost_headers.append(r.header("x-tollgate-task-cost"))
    assert all(h and h.startswith("cost_micros=") and "requests=" in h for h in cost_headers), cost_headers
    for e in gateways:
        wait_for(lambda: idle(e), 30, f"{e.name} to flush", e.enforcement_stats)
    wait_for(lambda: len(ledger_for_task(counter, task)) >= len(ids), 15, "the ledger to hold every served request")
    rows = ledger_for_task(counter, task)
    assert sorted(r[0] for r in rows) == sorted(ids), "the ledger holds exactly the served requests"

    r = admin_get(counter, f"/admin/tasks/{task}")
    assert r.status == 200, r
    s = r.json()
    assert s["requests"] == len(rows)
    assert s["cost_micros"] == sum(row[2] for row in rows)
    assert s["cost_micros"] > 0
    assert s["tokens"] == {"input": sum(row[3] for row in rows), "output": sum(row[4] for row in rows),
                           "cache_read": sum(row[5] for row in rows), "cache_write": sum(row[6] for row in rows),
                           "reasoning": sum(row[7] for row in rows)}
    assert [(m["model"], m["requests"]) for m in s["models"]] == [("gpt-4o", len(rows))]

    md = request(counter.port, "GET", f"/admin/tasks/{task}?format=markdown", headers={"authorization": f"Bearer {ADMIN_TOKEN}"})
    assert md.status == 200 and f"## Task `{task}`" in md.body.decode(), md


def test_spaced_attempts_over_two_gateways_share_the_count_through_the_counter(counter, gateways):
    """Attempts spaced beyond the delivery interval (flush_interval_ms 200): each gateway hears the
    other's attempts through the counter (docs/guards.md), so fewer get through than the 6 two
    gateways apart allow: 1 + allowed_retries, plus at most the second gateway's first attempt."""
    task = "spaced-" + str(time.monotonic_ns())
    results = []
    for i in range(10):
        envoy = gateways[i % 2]
        results.append((envoy.name, premium(envoy, task)))
        time.sleep(0.7)
    statuses = [r.status for _, r in results]
    ok = statuses.count(200)
    assert ok + statuses.count(429) == 10, statuses
    assert 1 + ALLOWED_RETRIES <= ok <= 1 + ALLOWED_RETRIES + len(GATEWAYS) - 1, f"{ok} went through: {statuses}"

    # The task summary counts the refusals (delivered as guard events, not charges) and the ledger
    # holds exactly the requests that went through.
    for e in gateways:
        wait_for(lambda: idle(e), 30, f"{e.name} to flush", e.enforcement_stats)

    def summary():
        r = admin_get(counter, f"/admin/tasks/{task}")
        return r.json() if r.status == 200 else None
    wait_for(lambda: (summary() or {}).get("guard", {}).get("refused") == 10 - ok, 15, "the refusals in the task summary", summary)
    s = summary()
    assert s["requests"] == ok == len(ledger_for_task(counter, task)), s
    assert s["guard"]["retries"] >= ALLOWED_RETRIES - 1, s
