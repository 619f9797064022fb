"""Process and HTTP plumbing for the end-to-end suite: the mock LLM, Envoy, and small clients.

Everything runs on 127.0.0.1 free ports, every wait is bounded, and every process started here is
stopped by the fixture that started it. Only the standard library is used (http.client), so the
suite needs nothing beyond pytest.
"""
import base64
import ctypes
import gzip
import http.client
import json
import os
import select
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
ENVOY_DIR = REPO / "envoy"
sys.path.insert(0, str(ENVOY_DIR))
import render  # noqa: E402  (envoy/render.py)

TARGET = Path(os.environ.get("CARGO_TARGET_DIR", REPO / "target"))
MOCK_BIN = Path(os.environ.get("TOLLGATE_MOCK_BIN", TARGET / "release" / "mock-llm"))
TOLLGATE_WASM = Path(os.environ.get("TOLLGATE_WASM", TARGET / "wasm32-wasip1" / "release" / "tollgate.wasm"))
NOOP_WASM = TARGET / "wasm32-wasip1" / "release" / "noop_filter.wasm"
ENVOY_BIN = Path(os.environ.get("ENVOY_BIN", REPO / ".venv" / "bin" / "envoy"))
TEMPLATE = ENVOY_DIR / "envoy.yaml.tmpl"

HTTP_TIMEOUT = 15  # seconds, for any single request made by a test
STATS_FLUSH_WAIT = 0.3  # seconds: the filter's counter flush interval (100 ms) with margin


def _die_with_parent():
    """Runs in the child before exec: if the test process dies (timeout, kill -9), the kernel sends
    the child SIGTERM, so no Envoy or mock outlives the suite (PR_SET_PDEATHSIG, Linux)."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, 15)  # PR_SET_PDEATHSIG, SIGTERM
    except OSError:
        pass


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop(proc, grace=5):
    """Stops a process this suite started: SIGTERM, then SIGKILL after `grace` seconds."""
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=grace)


class Response:
    def __init__(self, status, headers, body):
        self.status = status
        self.headers = headers  # list of (lower-case name, value)
        self.body = body  # bytes, content-encoding removed if gzip

    def header(self, name):
        for n, v in self.headers:
            if n == name:
                return v
        return None

    def json(self):
        return json.loads(self.body)

    def __repr__(self):
        return f"Response({self.status}, {self.body[:300]!r})"


def request(port, method, path, body=None, headers=None, timeout=HTTP_TIMEOUT, decode_gzip=True):
    """One HTTP/1.1 request on a fresh connection. Raises on a connection error or a cut body."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        if isinstance(body, str):
            body = body.encode()
        h = {"content-type": "application/json"} if body is not None else {}
        h.update(headers or {})
        conn.request(method, path, body=body, headers=h)
        r = conn.getresponse()
        data = r.read()
        hdrs = [(k.lower(), v) for k, v in r.getheaders()]
        resp = Response(r.status, hdrs, data)
        if decode_gzip and resp.header("content-encoding") == "gzip":
            resp.body = gzip.decompress(data)
        return resp
    finally:
        conn.close()


def request_raw_until_close(port, method, path, body, headers, timeout=HTTP_TIMEOUT):
    """Like request() but tolerates a response cut short: returns (status, headers, bytes read)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        h = {"content-type": "application/json"}
        h.update(headers)
        conn.request(method, path, body=body.encode() if isinstance(body, str) else body, headers=h)
        r = conn.getresponse()
        got = b""
        try:
            while True:
                chunk = r.read1(65536)
                if not chunk:
                    break
                got += chunk
        except (http.client.IncompleteRead, ConnectionError) as e:
            got += getattr(e, "partial", b"") or b""
        return r.status, [(k.lower(), v) for k, v in r.getheaders()], got
    finally:
        conn.close()


def parse_sse(data):
    """Parses a complete SSE stream into [(event name or None, data string)]; checks framing."""
    text = data.decode("utf-8").replace("\r\n", "\n")
    assert text.endswith("\n\n"), f"an SSE stream ends with a blank line, got tail {text[-80:]!r}"
    events = []
    for block in text.split("\n\n"):
        if not block.strip():
            continue
        name, datas = None, []
        for line in block.split("\n"):
            if line.startswith(":"):
                continue
            field, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if field == "event":
                name = value
            elif field == "data":
                datas.append(value)
            else:
                raise AssertionError(f"unexpected SSE line {line!r}")
        events.append((name, "\n".join(datas)))
    return events


def sse_json(data):
    """The JSON payloads of an SSE stream (skipping OpenAI's [DONE]); each must parse."""
    return [(name, json.loads(d)) for name, d in parse_sse(data) if d != "[DONE]"]


class Mock:
    """The mock LLM upstream (mock-llm) on a free port."""

    def __init__(self, workdir, record_limit=5000, cmd_prefix=()):
        if not MOCK_BIN.exists():
            raise RuntimeError(f"{MOCK_BIN} is missing: run `make native` (or cargo build --release -p tollgate-mock-upstream)")
        self.log = open(Path(workdir) / "mock-llm.log", "wb")
        self.proc = subprocess.Popen(
            [*cmd_prefix, str(MOCK_BIN), "--listen", "127.0.0.1:0", "--record-limit", str(record_limit)],
            stdout=subprocess.PIPE,
            stderr=self.log,
            preexec_fn=_die_with_parent,
        )
        ready, _, _ = select.select([self.proc.stdout], [], [], 10)
        line = self.proc.stdout.readline().decode() if ready else ""
        if "listening on http://127.0.0.1:" not in line:
            stop(self.proc)
            raise RuntimeError(f"mock-llm did not start: {line!r}")
        self.port = int(line.rsplit(":", 1)[1])

    def requests(self):
        r = request(self.port, "GET", "/__mock/requests")
        return r.json()["requests"]

    def request_with(self, e2e_id, wait=5):
        """The request the upstream received carrying x-e2e-id (None if it never arrived)."""
        deadline = time.monotonic() + wait
        while True:
            for rec in self.requests():
                if ["x-e2e-id", e2e_id] in rec["headers"]:
                    rec["body_bytes"] = base64.b64decode(rec["body_base64"])
                    rec["header_map"] = {}
                    for n, v in rec["headers"]:
                        rec["header_map"].setdefault(n, v)
                    return rec
            if time.monotonic() > deadline:
                return None
            time.sleep(0.05)

    def close(self):
        stop(self.proc)
        self.log.close()


class EnvoyFailedToStart(RuntimeError):
    def __init__(self, message, log):
        super().__init__(message)
        self.log = log


def access_log_format(plugin_config):
    """The template values that make the access log print what the filter publishes: its
    `access_log` setting ("summary", the default, or "fields")."""
    try:
        config = json.loads(plugin_config or "{}") if isinstance(plugin_config, str) else plugin_config
    except ValueError:  # a test of a malformed configuration: the filter refuses it anyway
        config = {}
    published = config.get("access_log", "summary") if isinstance(config, dict) else "summary"
    return {"ACCESS_LOG_SUMMARY": "1" if published == "summary" else "",
            "ACCESS_LOG_FIELDS": "1" if published == "fields" else ""}


class Envoy:
    """Envoy from the venv, rendered from envoy/envoy.yaml.tmpl, on free ports."""

    def __init__(self, workdir, upstream_port, wasm=TOLLGATE_WASM, plugin_config="{}", name="tollgate", ready_timeout=30,
                 access_log=True, log_args=("--log-level", "info", "--component-log-level", "wasm:debug"), cmd_prefix=(),
                 concurrency=1):
        self.workdir = Path(workdir)
        self.name = name
        self.listen_port = free_port()
        self.admin_port = free_port()
        self.access_log = self.workdir / f"{name}-access.log"
        self.envoy_log = self.workdir / f"{name}-envoy.log"
        if wasm is not None and not Path(wasm).exists():
            raise RuntimeError(f"{wasm} is missing: run `make wasm`")
        yaml = render.render(
            TEMPLATE.read_text(),
            {
                "LISTEN_PORT": self.listen_port,
                "ADMIN_PORT": self.admin_port,
                "UPSTREAM_PORT": upstream_port,
                "WASM_PATH": str(wasm) if wasm else "",
                "WASM_NAME": name,
                "PLUGIN_CONFIG": plugin_config if isinstance(plugin_config, str) else json.dumps(plugin_config),
                "ACCESS_LOG_PATH": str(self.access_log) if access_log else "",
                **access_log_format(plugin_config),
                "COUNTER_PORT": "",
            },
        )
        self.config_path = self.workdir / f"{name}-envoy.yaml"
        self.config_path.write_text(yaml)
        self.log_file = open(self.envoy_log, "wb")
        self.proc = subprocess.Popen(
            [
                *cmd_prefix,
                str(ENVOY_BIN),
                "-c", str(self.config_path),
                "--concurrency", str(concurrency),
                "--disable-hot-restart",
                "--file-flush-interval-msec", "50",
                *log_args,
            ],
            stdout=self.log_file,
            stderr=subprocess.STDOUT,
            preexec_fn=_die_with_parent,
        )
        self._wait_ready(ready_timeout)

    def log_text(self):
        try:
            return self.envoy_log.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def _wait_ready(self, timeout):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self.log_file.close()
                raise EnvoyFailedToStart(f"envoy exited with {self.proc.returncode}", self.log_text())
            try:
                r = request(self.admin_port, "GET", "/ready", timeout=1)
                if r.status == 200 and b"LIVE" in r.body:
                    return
            except OSError:
                pass
            time.sleep(0.1)
        self.close()
        raise EnvoyFailedToStart(f"envoy not ready after {timeout}s", self.log_text())

    def post(self, path, body, headers=None, **kw):
        return request(self.listen_port, "POST", path, body, headers, **kw)

    def stats(self):
        """All counters and gauges whose name contains 'tollgate', as {name: value}.

        The filter hands its counts to Envoy on a 100 ms tick (plugin/src/metrics.rs), so this
        first waits out one flush: what was done before the call is counted."""
        time.sleep(STATS_FLUSH_WAIT)
        r = request(self.admin_port, "GET", "/stats?format=json&filter=tollgate")
        out = {}
        for s in r.json().get("stats", []):
            if "name" in s and "value" in s:
                out[s["name"]] = s["value"]
        return out

    def access_log_line(self, e2e_id, wait=5):
        """The access-log entry (parsed JSON) of the request carrying x-e2e-id."""
        deadline = time.monotonic() + wait
        while True:
            if self.access_log.exists():
                for line in self.access_log.read_text(errors="replace").splitlines():
                    if e2e_id in line:
                        return json.loads(line)
            if time.monotonic() > deadline:
                raise AssertionError(f"no access-log line for {e2e_id} within {wait}s in {self.access_log}")
            time.sleep(0.05)

    def close(self):
        stop(self.proc)
        if not self.log_file.closed:
            self.log_file.close()


def new_id():
    return "e2e-" + uuid.uuid4().hex[:16]


def stats_delta(before, after):
    """{name: increase} for every stat that changed."""
    return {k: v - before.get(k, 0) for k, v in after.items() if v != before.get(k, 0)}
