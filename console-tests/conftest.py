"""Fixtures for the console's browser tests: a real tollgate-counter on a free loopback port, seeded
with a month of ledger rows through the usage API, and Debian's chromium driven by selenium.

Time: the seeded records carry their own timestamps (November 2026) and every page is asked for
that month (`from`/`to`, `asof`), so no figure depends on today's date. Budget spend is charged by
the counter to the window current when it ingests, so budget pages are compared with the API at
the same moment, never with a figure computed here.
"""
import json
import math
import os
import random
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request
from decimal import Decimal
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
TARGET = Path(os.environ.get("CARGO_TARGET_DIR", REPO / "target"))
COUNTER_BIN = Path(os.environ.get("TOLLGATE_COUNTER_BIN", TARGET / "release" / "tollgate-counter"))
SHOTS = Path(os.environ.get("TOLLGATE_CONSOLE_SHOTS", TARGET / "console-shots"))
GATEWAY_TOKEN = "console-gw-secret"
ADMIN_TOKEN = "console-admin-secret"
# November 2026, UTC.
MONTH_FROM, MONTH_TO = "2026-11-01", "2026-12-01"
NOV_1_MS = 1793491200000
DAY_MS = 86_400_000

BUDGETS = {"budgets": [
    {"id": "acme-monthly", "scope": "org:acme", "limit": "20000.00", "window": "month", "soft_thresholds_pct": [80, 95]},
    {"id": "platform-monthly", "scope": "team:platform", "limit": "800.00", "window": "month", "hard_limit_pct": 150},
    {"id": "search-monthly", "scope": "team:search", "limit": "300", "window": "month"},
    {"id": "research-weekly", "scope": "team:research", "limit": "40", "window": "week"},
    {"id": "eng-monthly", "scope": "cost_center:cc-eng", "limit": "3000", "window": "month"},
    {"id": "alice-rolling", "scope": "user:alice", "limit": "50", "window": "rolling:7", "mode": "observe"},
    {"id": "platform-ci-daily", "scope": "workflow:platform/ci-agent", "limit": "25", "window": "day"},
]}

# (team, cost center, users, use cases)
TEAMS = [
    ("platform", "cc-eng", ["alice", "bob"], ["chat", "autocomplete", "ci-agent"]),
    ("search", "cc-eng", ["carol"], ["chat", "code-review"]),
    ("research", "cc-research", ["dave", "erin"], ["chat", "agent"]),
]
# (dialect, model); all priced by the bundled price table.
MODELS = [("openai", "gpt-4o"), ("openai", "gpt-4o-mini"), ("anthropic", "claude-sonnet-4-5"), ("anthropic", "claude-opus-4-5")]
BUNDLED = json.loads((REPO / "core" / "prices" / "model_prices.json").read_text(), parse_float=Decimal)


def cost_micros(model, inp, outp, overrides=None):
    """What input + output tokens of `model` cost, exactly as Tollgate bills: the bundled per-token
    prices (or `overrides`: {model: ($ per Mtok in, $ per Mtok out)}), rounded up to a micro-dollar."""
    if overrides and model in overrides:
        p_in, p_out = (Decimal(p) / 1_000_000 for p in overrides[model])
    else:
        p_in, p_out = BUNDLED[model]["input_cost_per_token"], BUNDLED[model]["output_cost_per_token"]
    return math.ceil((inp * p_in + outp * p_out) * 1_000_000)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http(port, method, path, body=None, token=ADMIN_TOKEN, timeout=30):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data, method=method)
    req.add_header("Authorization", f"Bearer {token}")
    if data is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def records(count, seed=13, prefix="seed"):
    """`count` usage records spread over November 2026, deterministic for a seed."""
    rnd = random.Random(seed)
    out = []
    for i in range(count):
        team, cc, users, use_cases = TEAMS[i % len(TEAMS)]
        dialect, model = MODELS[rnd.randrange(len(MODELS))]
        inp, outp = rnd.randrange(200, 20000), rnd.randrange(50, 3000)
        cost = cost_micros(model, inp, outp)
        finished = NOV_1_MS + (i * 30 * DAY_MS) // count + rnd.randrange(0, 60_000)
        out.append({
            "id": f"{prefix}:{i}",
            "principal": {"org": "acme", "cost_center": cc, "team": team, "user": users[i % len(users)],
                          "key_id": f"key-{users[i % len(users)]}", "use_case": use_cases[(i // 3) % len(use_cases)]},
            "dialect": dialect, "requested_model": model, "routed_model": model,
            "tokens": {"input": inp, "output": outp}, "cost_micros": cost, "status": 200, "estimated": False,
            "started_at_ms": finished - 1500, "finished_at_ms": finished,
        })
    return out


class Counter:
    def __init__(self, workdir, name="counter", env=None, args=()):
        """`env`: more environment (e.g. TOLLGATE_VIEWER_TOKENS); `args`: more `serve` arguments."""
        if not COUNTER_BIN.exists():
            raise RuntimeError(f"{COUNTER_BIN} is missing: run `make native`")
        self.dir = Path(workdir) / name
        self.dir.mkdir()
        budgets = self.dir / "budgets.json"
        budgets.write_text(json.dumps(BUDGETS))
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = dict(os.environ, TOLLGATE_GATEWAY_TOKENS=f"gw={GATEWAY_TOKEN}", TOLLGATE_ADMIN_TOKENS=f"admin={ADMIN_TOKEN}", **(env or {}))
        self.log = open(self.dir / "counter.log", "wb")
        self.proc = subprocess.Popen(
            [str(COUNTER_BIN), "serve", "--listen", f"127.0.0.1:{self.port}", "--data", str(self.dir / "data"),
             "--budgets", str(budgets), "--sync", "normal", *args],
            env=env, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                if http(self.port, "GET", "/healthz", timeout=2)[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.05)
        self.close()
        raise RuntimeError(f"the counter did not start; see {self.dir / 'counter.log'}")

    def seed(self, rows, batch=5000):
        for start in range(0, len(rows), batch):
            status, body = http(self.port, "POST", "/v1/usage", {"gateway_id": "seed", "records": rows[start:start + batch]}, token=GATEWAY_TOKEN, timeout=60)
            assert status == 200, body

    def get(self, path, token=ADMIN_TOKEN):
        status, body = http(self.port, "GET", path, token=token)
        assert status == 200, (path, body)
        return json.loads(body)

    def get_text(self, path, token=ADMIN_TOKEN):
        status, body = http(self.port, "GET", path, token=token)
        assert status == 200, (path, body)
        return body.decode()

    def call(self, method, path, body=None, token=ADMIN_TOKEN, expect=(200, 201)):
        status, answer = http(self.port, method, path, body, token=token)
        assert status in expect, (method, path, status, answer)
        return json.loads(answer) if answer else None

    def cli(self, *args, timeout=60):
        env = dict(os.environ, TOLLGATE_COUNTER_URL=self.url, TOLLGATE_ADMIN_TOKEN=ADMIN_TOKEN)
        return subprocess.run([str(COUNTER_BIN), *args], env=env, capture_output=True, text=True, timeout=timeout, check=True).stdout

    def close(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.log.close()


@pytest.fixture(scope="session")
def workdir():
    with tempfile.TemporaryDirectory(prefix="tollgate-console-") as d:
        yield d


@pytest.fixture(scope="session")
def counter(workdir):
    c = Counter(workdir)
    try:
        c.seed(records(3000))
        yield c
    finally:
        c.close()


def new_browser(download_dir):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for flag in ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", "--window-size=1280,1500", f"--user-data-dir={download_dir}/profile"]:
        options.add_argument(flag)
    options.add_experimental_option("prefs", {"download.default_directory": str(download_dir), "download.prompt_for_download": False})
    return webdriver.Chrome(options=options, service=Service(executable_path="/usr/bin/chromedriver"))


@pytest.fixture(scope="session")
def browser(workdir):
    downloads = Path(workdir) / "downloads"
    downloads.mkdir()
    driver = new_browser(downloads)
    driver.downloads = downloads
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture(scope="session")
def shots():
    SHOTS.mkdir(parents=True, exist_ok=True)
    return SHOTS
