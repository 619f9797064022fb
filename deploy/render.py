#!/usr/bin/env python3
"""Renders the deployment manifests in deploy/ from deploy/templates/ and ONE filter config.

    python3 deploy/render.py           # (re)writes every manifest
    python3 deploy/render.py --check   # exit 1, naming each manifest that differs from a render

The plugin configuration in every manifest is envoy/filter-config.json — the file the Envoy e2e
suite loads (envoy/tests/conftest.py) — with two per-platform changes only, so what is deployed is
what is tested: `gateway_id` names the platform, and an `enforcement` section wires the counter
the way that platform names an upstream (an Envoy cluster name on Istio and Envoy Gateway, a
host:port on Kong). deploy/tests/test_manifests.py checks both facts and that the committed files
equal a fresh render.

Template syntax (a template is the manifest with placeholders; everything else is copied):
  {{config PLATFORM}}          the plugin config as an indented JSON object (also valid YAML),
                               continuation lines two spaces deeper than the placeholder's line
  {{config_string PLATFORM}}   the plugin config as one JSON string literal (a YAML
                               double-quoted scalar), for fields that take the config as text
`${NAME}` is left alone: those are the values an operator substitutes at apply time with
`envsubst` (the image, its digest, the gateway token; see docs/deploy.md). Stdlib only.
"""
import copy
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TEMPLATES = ROOT / "deploy" / "templates"
FILTER_CONFIG = ROOT / "envoy" / "filter-config.json"

# The counter as Kubernetes serves it (deploy/counter/): Service `tollgate-counter`, namespace
# `tollgate`, port 8787.
COUNTER_HOST = "tollgate-counter.tollgate.svc.cluster.local"
COUNTER_PORT = 8787

# What differs per platform: how the filter names the counter upstream. The gateway token is left
# for envsubst (never committed).
PLATFORMS = {
    # Istio names the cluster of a Kubernetes Service `outbound|<port>||<fqdn>`; the proxy must see
    # the Service (default Sidecar scope does; a restricted Sidecar must list it in egress hosts).
    "istio": {"gateway_id": "istio", "gateway_id_suffix": "node_id", "counter_cluster": f"outbound|{COUNTER_PORT}||{COUNTER_HOST}"},
    # Envoy Gateway names the cluster of an HTTPRoute rule `httproute/<ns>/<route>/rule/<index>`
    # (internal/gatewayapi/helpers.go irRouteDestinationName); deploy/envoy-gateway/counter-route.yaml
    # creates it from a Backend and keeps clients out of it.
    "envoy-gateway": {"gateway_id": "envoy-gateway", "gateway_id_suffix": "node_id", "counter_cluster": "httproute/llm/tollgate-counter/rule/0"},
    # Kong's ngx_wasm_module takes a host[:port] where Envoy takes a cluster name.
    "kong": {"gateway_id": "kong", "counter_cluster": f"{COUNTER_HOST}:{COUNTER_PORT}"},
}

PLACEHOLDER = re.compile(r"\{\{(config|config_string) ([a-z-]+)\}\}")


def plugin_config(platform: str) -> dict:
    """envoy/filter-config.json with the platform's gateway_id and enforcement section."""
    if platform not in PLATFORMS:
        raise KeyError(f"unknown platform {platform!r}; known: {', '.join(PLATFORMS)}")
    base = json.loads(FILTER_CONFIG.read_text(encoding="utf-8"))
    if "enforcement" in base:
        raise ValueError(f"{FILTER_CONFIG}: has an `enforcement` section; render.py adds the platform's own")
    p = PLATFORMS[platform]
    cfg = copy.deepcopy(base)
    cfg["gateway_id"] = p["gateway_id"]
    # Every replica gets this one config: the node id (unique per pod on Istio and Envoy Gateway)
    # gives each its own gateway id, so each keeps its own leases (docs/enforcement.md).
    if "gateway_id_suffix" in p:
        cfg["gateway_id_suffix"] = p["gateway_id_suffix"]
    cfg["enforcement"] = {
        "counter_cluster": p["counter_cluster"],
        "counter_authority": COUNTER_HOST,
        "gateway_token": "${TOLLGATE_GATEWAY_TOKEN}",
        "failure_mode": "fail_closed",
    }
    return cfg


def render(template: str) -> str:
    out = []
    for line in template.splitlines(keepends=True):
        def sub(m):
            kind, platform = m.group(1), m.group(2)
            cfg = plugin_config(platform)
            if kind == "config_string":
                return json.dumps(json.dumps(cfg, separators=(",", ":")))
            # Flow content continues on lines indented deeper than its key (YAML's rule).
            indent = len(line) - len(line.lstrip(" ")) + 2
            return json.dumps(cfg, indent=2).replace("\n", "\n" + " " * indent)

        out.append(PLACEHOLDER.sub(sub, line))
    rendered = "".join(out)
    if "{{" in rendered:
        raise ValueError("a placeholder is left: " + rendered[rendered.index("{{") :].split("\n", 1)[0])
    return rendered


def outputs() -> dict:
    """{destination path: rendered text} for every template."""
    result = {}
    for tmpl in sorted(TEMPLATES.rglob("*")):
        if tmpl.is_file():
            dest = ROOT / "deploy" / tmpl.relative_to(TEMPLATES)
            try:
                result[dest] = render(tmpl.read_text(encoding="utf-8"))
            except (KeyError, ValueError) as e:
                raise SystemExit(f"render.py: {tmpl.relative_to(ROOT)}: {e.args[0]}")
    return result


def stale(rendered: dict) -> list:
    """The destinations whose file is missing or differs from its rendered text."""
    return [d for d, text in rendered.items() if not d.exists() or d.read_text(encoding="utf-8") != text]


def main(argv) -> int:
    check = argv[1:] == ["--check"]
    if argv[1:] and not check:
        print(__doc__, file=sys.stderr)
        return 2
    rendered = outputs()
    if not check:
        for dest, text in rendered.items():
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_text(text, encoding="utf-8")
    stale_files = [d.relative_to(ROOT) for d in stale(rendered)]
    for s in stale_files:
        print(f"render.py: {s} differs from a fresh render of deploy/templates/; run `python3 deploy/render.py`", file=sys.stderr)
    return 1 if stale_files else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
