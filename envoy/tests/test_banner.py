"""The budget banner end to end (issue 13 §3, README "banner"): real Envoy (2 workers), the real
tollgate-counter and the mock upstream's chat UI page (`GET /ui/...`).

What this file specifies: after one LLM call by a team, the team's chat UI page comes back with the
banner right after `<body>`, naming the team and the percentage the counter's ledger implies, with
the page streamed in 7-byte pieces (no content-length: Envoy chunks it); a compressed page, a team
the gateway knows no budget of, and a non-HTML answer on the same route pass through untouched.
"""
import gzip
import json
import subprocess
import tempfile
from pathlib import Path

import pytest

from harness import TEMPLATE, ENVOY_BIN, TOLLGATE_WASM, access_log_format, free_port, render, request
from test_enforcement import GATEWAY_TOKEN, Counter, EnforcingEnvoy, idle, wait_for

LIMIT_MICROS = 50_000
BUDGETS = [{"id": "banner-ui", "scope": "team:banner-ui", "limit": "0.05", "window": "month"}]
PAGE = ('<!doctype html><html><head><meta charset="utf-8"><title>Chat</title></head>'
        '<body class="app"><div id="root">Loading&hellip;</div></body></html>\n')
OPEN = ('<div id="tollgate-banner" role="status" style="padding:4px 12px;background:#fff4ce;color:#222;'
        'font:14px/1.4 system-ui,sans-serif;border-bottom:1px solid #e0c97a">')


def banner_config(gateway_id):
    return {
        "gateway_id": gateway_id,
        "access_log": "fields",
        "attribution": {"trusted_headers": {"team": "x-e2e-team"}},
        "routing": {"rules": [
            {"name": "chat", "match": {"model": "e2e-chat"}, "set_model": "gpt-4o", "set_headers": {"x-tollgate-provider": "openai"}},
        ]},
        "enforcement": {
            "counter_cluster": "tollgate_counter",
            "gateway_token": GATEWAY_TOKEN,
            "flush_interval_ms": 200,
            "call_timeout_ms": 5000,
            "failure_mode": "fail_closed",
        },
        "banner": {"routes": [{"path_prefix": "/ui/"}], "template": "{scope}: {pct} % of the monthly budget used"},
    }


class BannerEnvoy(EnforcingEnvoy):
    """EnforcingEnvoy's Envoy with the banner configuration above."""

    def __init__(self, workdir, upstream_port, counter_port, name):
        self.workdir = Path(workdir)
        self.name = name
        self.listen_port = free_port()
        self.admin_port = free_port()
        self.access_log = self.workdir / f"{name}-access.log"
        self.envoy_log = self.workdir / f"{name}-envoy.log"
        plugin_config = banner_config(name)
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

    def banner_stats(self):
        return {k.removeprefix("wasmcustom."): v for k, v in self.stats().items() if "tollgate_banner" in k}


@pytest.fixture(scope="module")
def banner_envoy(mock):
    with tempfile.TemporaryDirectory(prefix="tollgate-banner-") as d:
        counter = Counter(d, budgets=BUDGETS)
        envoy = None
        try:
            envoy = BannerEnvoy(d, mock.port, counter.port, "banner")
            yield envoy, counter
        finally:
            if envoy is not None:
                envoy.close()
            counter.close()


def page(envoy, team, **extra):
    headers = {"x-e2e-team": team, "x-mock-chunk-bytes": "7", "x-mock-gzip": "never", **extra}
    return request(envoy.listen_port, "GET", "/ui/index.html", headers=headers, decode_gzip=False)


def test_a_teams_chat_page_carries_its_budget_banner(banner_envoy):
    envoy, counter = banner_envoy
    body = {"model": "e2e-chat", "max_tokens": 100, "messages": [{"role": "user", "content": "Summarise the incident."}]}
    r = request(envoy.listen_port, "POST", "/v1/chat/completions", json.dumps(body),
                {"x-e2e-team": "banner-ui", "x-mock-output-tokens": "40", "x-mock-gzip": "never"}, timeout=30)
    assert r.status == 200, r
    wait_for(lambda: idle(envoy), 30, "the gateway to deliver the usage", envoy.enforcement_stats)
    spent = counter.budget("banner-ui")["spent_micros"]
    assert 0 < spent < LIMIT_MICROS, spent
    pct = spent * 100 // LIMIT_MICROS

    r = page(envoy, "banner-ui")
    assert r.status == 200, r
    want = PAGE.replace('<body class="app">', f'<body class="app">{OPEN}team banner-ui: {pct} % of the monthly budget used</div>', 1)
    assert r.body.decode() == want
    assert r.header("content-length") is None, r.headers

    # Compressed, no budget known, not HTML: byte for byte.
    z = page(envoy, "banner-ui", **{"x-mock-gzip": "always"})
    assert z.status == 200 and z.header("content-encoding") == "gzip", z.headers
    assert gzip.decompress(z.body).decode() == PAGE
    assert page(envoy, "nobody").body.decode() == PAGE
    echo = request(envoy.listen_port, "POST", "/ui/api/chats", "{}", {"x-e2e-team": "banner-ui", "x-mock-gzip": "never"})
    assert echo.status == 200 and echo.header("content-type") == "application/json", echo.headers
    assert echo.json()["mock"] == "echo" and echo.header("content-length") == str(len(echo.body))
    wait_for(lambda: envoy.banner_stats().get("tollgate_banner_skipped_encoded", 0) == 1
             and envoy.banner_stats().get("tollgate_banner_injected", 0) == 1
             and envoy.banner_stats().get("tollgate_banner_no_status", 0) == 1, 10, "the banner counters", envoy.banner_stats)
