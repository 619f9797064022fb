"""The overspend bound across two counter instances sharing one Redis (issue: counter on Redis).

Same load test as test_enforcement.py (64 clients, two Envoys with 2 workers each, streaming and
not), but each Envoy talks to its **own** tollgate-counter, and both counters keep their state in
one real redis-server (`--redis-url`, appendonly + appendfsync always). The bound must hold across
them: the ledger (the Redis stream) holds every served request exactly once, its total stays within
the hard limit plus the documented bound (zero here), and both counters report the same spend.
"""
import json
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

import test_enforcement as base
from harness import free_port, request, stop


class RedisServer:
    """redis-server on a free loopback port, its append-only file in `workdir`."""

    def __init__(self, workdir):
        self.port = free_port()
        data = Path(workdir) / "redis"
        data.mkdir()
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "yes",
             "--appendfsync", "always", "--maxmemory-policy", "noeviction", "--dir", str(data),
             "--logfile", str(data / "redis.log")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.cli("PING") == "PONG":
                return
            time.sleep(0.05)
        self.close()
        raise RuntimeError("redis-server did not answer PING within 10s (install it: scripts/setup.sh)")

    @property
    def url(self):
        return f"redis://127.0.0.1:{self.port}"

    def cli(self, *args):
        r = subprocess.run(["redis-cli", "-p", str(self.port), "--raw", *args], capture_output=True, text=True, timeout=10)
        return r.stdout.strip()

    def close(self):
        stop(self.proc)


class RedisCounter(base.Counter):
    """tollgate-counter serving from Redis; the same interface as test_enforcement.Counter."""

    NAMESPACE = "tollgate-e2e"

    def __init__(self, workdir, redis, name):
        self.redis = redis
        self._serve(workdir, name, ["--redis-url", redis.url, "--redis-namespace", self.NAMESPACE])

    def ledger(self, team):
        """{record id: (cost_micros, status, estimated)} for the team, read from the ledger stream."""
        lines = self.redis.cli("XRANGE", "{%s}:ledger" % self.NAMESPACE, "-", "+").splitlines()
        out = {}
        for line in lines[2::3]:  # id, "r", entry JSON per stream entry
            r = json.loads(line)["record"]
            if r["principal"].get("team") == team:
                out[r["id"]] = (r["cost_micros"], r["status"], r["estimated"])
        return out


@pytest.fixture(scope="module")
def redis_counters():
    with tempfile.TemporaryDirectory(prefix="tollgate-enforce-redis-") as d:
        redis = RedisServer(d)
        counters = []
        try:
            for name in ("counter-1", "counter-2"):
                counters.append(RedisCounter(d, redis, name))
            yield counters
        finally:
            for c in counters:
                c.close()
            redis.close()


@pytest.fixture(scope="module")
def redis_gateways(redis_counters, mock):
    envoys = []
    try:
        for name, counter in zip(("gw-a", "gw-b"), redis_counters):
            envoys.append(base.EnforcingEnvoy(counter.workdir, mock.port, counter.port, name))
        yield envoys
    finally:
        for e in envoys:
            e.close()


def test_two_counters_on_one_redis_hold_the_overspend_bound(redis_counters, redis_gateways, mock):
    # gw-a leases and reports through counter-1, gw-b through counter-2.
    base.test_spend_stops_at_the_limit_and_every_200_is_in_the_ledger_once(redis_counters[0], redis_gateways, mock)
    one, two = (c.budget("load") for c in redis_counters)
    assert one["spent_micros"] == two["spent_micros"], "both counters see the same spend"
    assert one["spent_micros"] + one["leased_micros"] <= one["hard_limit_micros"], one
