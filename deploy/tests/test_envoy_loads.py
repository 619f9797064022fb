"""The Wasm filter config in deploy/istio/tollgate-envoyfilter.yaml, as rendered, loaded by real
Envoy (the venv's, 1.40) the way the istio-agent hands it over.

The istio-agent replaces the `remote` oci:// code source with a local file and leaves every other
field of the extension config as istiod served it (istio pkg/wasm/convert.go, rewriteVMConfig).
This test does the same, puts the result in a bootstrap's HTTP filter chain with a cluster named
exactly as the rendered `enforcement.counter_cluster` (nothing listens behind it), and sends an
LLM request:

- with the config as rendered, Envoy starts, Tollgate accepts the configuration (the e2e config
  plus the Istio wiring), reads the request body (so allow_on_headers_stop_iteration is in
  effect), calls the counter through the named cluster and, finding it unreachable, answers 503
  in OpenAI's shape (`failure_mode: fail_closed`);
- with only allow_on_headers_stop_iteration removed, the same request gets no answer: the flag is
  what makes the rendered config work.
"""
import copy
import hashlib
import json
import re
import socket
import subprocess
import sys
import time
import urllib.parse

import pytest
import yaml

from conftest import DEPLOY, ROOT, substitute

sys.path.insert(0, str(ROOT / "envoy" / "tests"))
import harness  # noqa: E402  (envoy/tests/harness.py: Envoy binary, free ports, requests)

CHAT = json.dumps({"model": "e2e-chat", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5})


def rendered_wasm_filter():
    (ef,) = yaml.safe_load_all(substitute((DEPLOY / "istio" / "tollgate-envoyfilter.yaml").read_text()))
    ext = next(p for p in ef["spec"]["configPatches"] if p["applyTo"] == "EXTENSION_CONFIG")
    return ext["patch"]["value"]


def bootstrap(wasm_filter, tollgate_wasm, listen_port, admin_port, dead_port):
    typed = copy.deepcopy(wasm_filter["typed_config"])
    # What the istio-agent does once it has pulled and checked the image.
    typed["config"]["vm_config"]["code"] = {"local": {"filename": str(tollgate_wasm)}}
    counter_cluster = json.loads(typed["config"]["configuration"]["value"])["enforcement"]["counter_cluster"]

    def cluster(name):
        return {
            "name": name,
            "connect_timeout": "0.25s",
            "type": "STATIC",
            "load_assignment": {
                "cluster_name": name,
                "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": dead_port}}}}]}],
            },
        }

    hcm = {
        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": "llm",
        "route_config": {"virtual_hosts": [{"name": "llm", "domains": ["*"], "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "llm_default", "timeout": "5s"}}]}]},
        "http_filters": [
            {"name": wasm_filter["name"], "typed_config": typed},
            {"name": "envoy.filters.http.router", "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}},
        ],
    }
    return counter_cluster, {
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin_port}}},
        "static_resources": {
            "listeners": [{
                "name": "llm",
                "address": {"socket_address": {"address": "127.0.0.1", "port_value": listen_port}},
                "filter_chains": [{"filters": [{"name": "envoy.filters.network.http_connection_manager", "typed_config": hcm}]}],
            }],
            "clusters": [cluster("llm_default"), cluster(counter_cluster)],
        },
    }


class RenderedEnvoy:
    """Envoy on free loopback ports with the bootstrap above; stopped on exit."""

    def __init__(self, tmp_path, wasm_filter, tollgate_wasm):
        self.listen_port, self.admin_port = harness.free_port(), harness.free_port()
        self.counter_cluster, config = bootstrap(wasm_filter, tollgate_wasm, self.listen_port, self.admin_port, harness.free_port())
        path = tmp_path / "bootstrap.json"
        path.write_text(json.dumps(config))
        self.log_path = tmp_path / "envoy.log"
        self.log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            # A mesh proxy always has a node id (Istio: sidecar~<ip>~<pod>.<ns>~…); the rendered
            # config derives its gateway id from it (gateway_id_suffix).
            [str(harness.ENVOY_BIN), "-c", str(path), "--concurrency", "1", "--disable-hot-restart", "--log-level", "warning",
             "--component-log-level", "wasm:info", "--service-node", "sidecar~10.0.0.7~llm-7d9f-x.apps~apps.svc.cluster.local"],
            stdout=self.log, stderr=subprocess.STDOUT, preexec_fn=harness._die_with_parent,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"envoy exited {self.proc.returncode}:\n{self.log_path.read_text()[-3000:]}"
            try:
                if harness.request(self.admin_port, "GET", "/ready", timeout=1).status == 200:
                    return
            except OSError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"envoy not ready in 30 s:\n{self.log_path.read_text()[-3000:]}")

    def counter_cluster_stat(self, name):
        # The filter is a regex: the cluster name's `|` and `.` are escaped.
        q = urllib.parse.quote("^" + re.escape(f"cluster.{self.counter_cluster}.{name}") + "$", safe="")
        text = harness.request(self.admin_port, "GET", f"/stats?filter={q}&format=json").body
        stats = json.loads(text)["stats"]
        return stats[0]["value"] if stats else None

    def close(self):
        harness.stop(self.proc)
        self.log.close()


@pytest.fixture
def envoy_with(tmp_path, tollgate_wasm):
    started = []

    def start(wasm_filter):
        e = RenderedEnvoy(tmp_path, wasm_filter, tollgate_wasm)
        started.append(e)
        return e

    yield start
    for e in started:
        e.close()


def test_envoy_runs_the_rendered_istio_config_and_tollgate_reaches_the_named_counter_cluster(envoy_with):
    wasm_filter = rendered_wasm_filter()
    assert wasm_filter["typed_config"]["config"]["allow_on_headers_stop_iteration"] is True
    envoy = envoy_with(wasm_filter)
    r = harness.request(envoy.listen_port, "POST", "/v1/chat/completions", body=CHAT, timeout=10)
    assert r.status == 503, (r.status, r.body)
    assert json.loads(r.body)["error"]["code"] == "budget_service_unavailable"
    # The lease call went to the cluster the rendered config names, and found nobody there.
    assert envoy.counter_cluster.startswith("outbound|8787||")
    assert envoy.counter_cluster_stat("upstream_cx_connect_fail") >= 1
    # Every replica gets this same config; each names itself by its node id.
    node_hash = hashlib.sha256(b"sidecar~10.0.0.7~llm-7d9f-x.apps~apps.svc.cluster.local").hexdigest()[:8]
    assert f"configured gateway_id=istio.{node_hash} " in envoy.log_path.read_text(), envoy.log_path.read_text()[-3000:]


def test_without_allow_on_headers_stop_iteration_the_same_request_gets_no_answer(envoy_with):
    wasm_filter = rendered_wasm_filter()
    del wasm_filter["typed_config"]["config"]["allow_on_headers_stop_iteration"]
    envoy = envoy_with(wasm_filter)
    with pytest.raises((TimeoutError, socket.timeout)):
        harness.request(envoy.listen_port, "POST", "/v1/chat/completions", body=CHAT, timeout=3)
