"""Notifications end to end: real Envoy + the filter + tollgate-counter + a webhook receiver on 127.0.0.1.

What this file specifies (docs/counter.md, "Notifications"):
- traffic through Envoy crosses 80 % of a budget: the receiver gets exactly one Slack-shaped
  message (`text` + `blocks`) for it, HMAC-SHA256 signed over "<timestamp>.<body>";
- more traffic pushes today's spend past 3x the trailing 7-day daily average of the team: the
  receiver gets exactly one anomaly message, which names the model that explains it;
- nothing else arrives, however often the counter evaluates.

The 7 days of history are seeded deterministically through the counter's own usage API (records
with past `finished_at_ms`, posted with the gateway token before the budget exists, so they feed the
ledger but charge no budget). "Today" is the counter's and Envoy's real UTC day: the test waits out
the last two minutes before UTC midnight rather than straddle it.
"""
import hashlib
import hmac
import json
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

import test_enforcement as base
from harness import free_port, request

TEAM = "notify-e2e"
SECRET = "e2e-webhook-secret-0123456789"
DAY_MS = 86_400_000


class Receiver:
    """A webhook receiver on a free loopback port: keeps every POST (path, headers, raw body)."""

    def __init__(self):
        self.got = []
        lock = self.lock = threading.Lock()
        got = self.got

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                with lock:
                    got.append({"path": self.path, "headers": {k.lower(): v for k, v in self.headers.items()}, "body": body})
                self.send_response(200)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def messages(self):
        with self.lock:
            return list(self.got)

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def verify(message, secret=SECRET, window_secs=300):
    """What a receiver does: recompute HMAC-SHA256(secret, "<timestamp>.<raw body>"), compare in
    constant time, refuse a timestamp outside the replay window."""
    ts = message["headers"]["x-tollgate-timestamp"]
    assert abs(time.time() - int(ts)) <= window_secs, f"stale timestamp {ts}"
    expected = "v1=" + hmac.new(secret.encode(), ts.encode() + b"." + message["body"], hashlib.sha256).hexdigest()
    assert hmac.compare_digest(expected, message["headers"]["x-tollgate-signature"]), "bad signature"
    return json.loads(message["body"])


class NotifyingCounter(base.Counter):
    """The enforcement suite's counter, with a notify config pointing at `receiver`."""

    def __init__(self, workdir, receiver):
        self.data = Path(workdir) / "notify-counter-data"
        self.data.mkdir()
        notify = Path(workdir) / "notify.json"
        notify.write_text(json.dumps({
            "webhooks": [{"name": "ops-slack", "url": f"http://127.0.0.1:{receiver.port}/slack", "format": "slack", "secret": SECRET}],
            "thresholds": [{"scope": f"team:{TEAM}"}],
            "anomalies": [{"scope": f"team:{TEAM}", "factor_pct": 300, "min_spend": "0.000001"}],
            "evaluation": {"tick_ms": 100, "anomaly_every_ms": 0},
        }))
        self._serve(workdir, "notify-counter", ["--data", str(self.data), "--sync", "normal", "--notify", str(notify)])

    def admin(self, method, path, body=None):
        r = request(self.port, method, path, json.dumps(body) if body is not None else None,
                    {"authorization": f"Bearer {base.ADMIN_TOKEN}", "content-type": "application/json"})
        assert r.status == 200, (r.status, r.body)
        return r.json()

    def seed(self, records):
        r = request(self.port, "POST", "/v1/usage", json.dumps({"gateway_id": "seed", "records": records}),
                    {"authorization": f"Bearer {base.GATEWAY_TOKEN}", "content-type": "application/json"})
        assert r.status == 200 and r.json()["accepted"] == len(records), (r.status, r.body)

    def team_today(self, day_start_ms):
        rows = self.admin("GET", f"/admin/reports/spend?group_by=team&from={day_start_ms}")["rows"]
        return sum(r["cost_micros"] for r in rows if r["team"] == TEAM)


def seed_record(i, cost, finished_ms):
    return {"id": f"seed-{i}", "principal": {"org": "acme", "team": TEAM, "user": "history", "use_case": "chat"},
            "dialect": "openai", "requested_model": "e2e-chat", "routed_model": "gpt-4o",
            "tokens": {"input": 100, "output": 20}, "cost_micros": cost, "status": 200,
            "started_at_ms": finished_ms - 1000, "finished_at_ms": finished_ms}


@pytest.fixture(scope="module")
def stack(mock):
    # Do not straddle UTC midnight: "today" must be one day for the counter and Envoy (bounded wait).
    into_day = time.time() % 86400
    if into_day > 86400 - 120:
        time.sleep(86400 - into_day + 2)
    with tempfile.TemporaryDirectory(prefix="tollgate-notify-") as d:
        receiver = Receiver()
        counter = NotifyingCounter(d, receiver)
        envoy = None
        try:
            envoy = base.EnforcingEnvoy(d, mock.port, counter.port, "gw-notify")
            yield counter, envoy, receiver
        finally:
            if envoy:
                envoy.close()
            counter.close()
            receiver.close()


def test_crossing_80_percent_then_3x_baseline_sends_one_signed_slack_message_each(stack):
    counter, envoy, receiver = stack

    # One request measures what a request costs (deterministic: fixed prompt, fixed output tokens).
    r = base.chat(envoy, TEAM, stream=False, output_tokens=40)
    assert r.status == 200, r.body
    now_ms = int(time.time() * 1000)
    day_start = now_ms - now_ms % DAY_MS
    base.wait_for(lambda: counter.team_today(day_start) > 0, 10, "the first request's record")
    c = counter.team_today(day_start)

    # History: 7 days at 3.5c a day, so 3x the daily average is 10.5 requests' worth today.
    per_day = 7 * c // 2
    counter.seed([seed_record(d, per_day, day_start - d * DAY_MS + 3_600_000) for d in range(1, 8)])
    # The budget (observe mode: the filter's worst-case reservation never refuses a request) starts
    # from what the ledger holds for its scope in its window (all time, for `none`): the first request
    # and the seeded history, S. Its limit puts 80 % at S + 8.8c, reached at its 9th request; 100 % is
    # never reached here.
    start = c + 7 * per_day
    limit = 5 * start // 4 + 11 * c
    counter.admin("PUT", "/admin/budgets/notify-e2e",
                  {"scope": f"team:{TEAM}", "limit": f"{limit / 1e6:.6f}", "window": "none", "mode": "observe"})
    assert counter.budget("notify-e2e")["spent_micros"] == start, "the budget starts from the ledger"

    def send(n, today_total):
        for _ in range(n):
            r = base.chat(envoy, TEAM, stream=False, output_tokens=40)
            assert r.status == 200, r.body
        base.wait_for(lambda: counter.team_today(day_start) >= today_total * c, 10, f"the ledger to hold {today_total} requests today")
        time.sleep(1.0)  # ten more evaluations: whatever they fire has arrived

    def keys():
        return [m["headers"].get("x-tollgate-event") for m in receiver.messages()]

    send(8, 9)  # the budget saw S + 8c (< 80 %), the team's day is 9c (< 10.5c): nothing
    assert keys() == []

    send(1, 10)  # the budget saw S + 9c: past 80 %; the team's day is 10c: still below 3x
    assert keys() == ["threshold:notify-e2e:80:0"]

    send(1, 11)  # the team's day is 11c >= 10.5c: an anomaly; the budget saw S + 10c (< 95 %): nothing new
    today = time.strftime("%Y-%m-%d", time.gmtime(day_start / 1000))
    assert keys() == ["threshold:notify-e2e:80:0", f"anomaly:team:{TEAM}:{today}"]
    messages = receiver.messages()

    for m in messages:
        body = verify(m)
        assert m["path"] == "/slack"
        assert isinstance(body["text"], str) and body["text"].startswith("Tollgate: "), body
        assert body["blocks"][0]["type"] == "header", body
    threshold, anomaly = (verify(m) for m in messages)
    assert "passed 80 %" in threshold["text"], threshold
    assert "Spend anomaly on team:notify-e2e" in anomaly["text"], anomaly
    assert "`gpt-4o`" in json.dumps(anomaly["blocks"]), "the breakdown names the model that explains it"

    # The events log says the same, with each delivery done.
    events = counter.admin("GET", "/admin/events")["events"]
    assert sorted(e["key"] for e in events) == sorted(keys())
    assert all(d["delivered_at_ms"] for e in events for d in e["deliveries"]), events

    # A tampered body or an old timestamp fails verification.
    with pytest.raises(AssertionError):
        verify(dict(messages[0], body=messages[0]["body"] + b" "))
    with pytest.raises(AssertionError):
        verify(messages[0], secret="another-secret")
