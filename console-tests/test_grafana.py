"""deploy/: the Grafana dashboard and the Prometheus alert rules query only metrics the code
exports (both sides read from the source, the counter's side also from a live /metrics), and the
rules load in promtool (Debian's prometheus package), or pass a schema check where it is missing."""
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from conftest import REPO, http

DASHBOARD = REPO / "deploy" / "grafana" / "tollgate.json"
RULES = REPO / "deploy" / "prometheus" / "tollgate-rules.yml"
# Series Prometheus itself makes (not exported by Tollgate's code).
PROMETHEUS_OWN = {"up"}


def counter_metrics():
    """Every metric name the counter writes: the names in counter/src/metrics.rs, and those other
    modules declare in their own `# TYPE` lines (the notifier's in notify/outbox.rs, the workflow
    gauge in gov_api.rs)."""
    names = set(re.findall(r'"(tollgate_counter_[a-z_]+)"', (REPO / "counter" / "src" / "metrics.rs").read_text()))
    for src in (REPO / "counter" / "src").rglob("*.rs"):
        names |= set(re.findall(r"# TYPE (tollgate_counter_[a-z_]+) ", src.read_text()))
    return names


def envoy_metrics():
    """Every stat the filter defines, as Envoy's Prometheus endpoint names it (`envoy_wasmcustom_…`)."""
    metrics_rs = (REPO / "plugin" / "src" / "metrics.rs").read_text()
    names = set(re.findall(r'"(tollgate_[a-z_]+)"', metrics_rs))
    for src in (REPO / "plugin" / "src" / "enforce").glob("*.rs"):
        names |= set(re.findall(r'"(tollgate_[a-z_]+)"', src.read_text()))
    dialects = re.findall(r'Dialect::\w+ => "([a-z_]+)"', (REPO / "core" / "src" / "dialect.rs").read_text())
    outcomes = re.findall(r'Outcome::\w+ => "([a-z_]+)"', metrics_rs)
    kinds = re.search(r"TOKEN_KINDS: \[&str; \d+\] = \[([^\]]*)\]", metrics_rs).group(1)
    assert len(set(dialects)) == 4 and len(outcomes) == 7, (dialects, outcomes)
    names |= {f"tollgate_requests_{d}_{o}" for d in dialects for o in outcomes}
    names |= {f"tollgate_tokens_{k}" for k in re.findall(r'"([a-z_]+)"', kinds)}
    names = {n for n in names if not n.endswith("_")}
    return {"envoy_wasmcustom_" + n for n in names}


def queries():
    dash = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p["targets"]]
    exprs += [v["query"] for v in dash["templating"]["list"] if v["type"] == "query"]
    rules = yaml.safe_load(RULES.read_text())
    exprs += [r["expr"] for g in rules["groups"] for r in g["rules"]]
    return exprs


def unknown_metrics(exprs, exported):
    """Metric names in the queries that nobody exports."""
    found = set()
    for e in exprs:
        e = re.sub(r'"[^"]*"', '""', e)  # label values are not metrics
        for name in re.findall(r"[a-zA-Z_:][a-zA-Z0-9_:]*", e):
            if name.startswith(("tollgate_", "envoy_")) or name in PROMETHEUS_OWN:
                found.add(name)
    return sorted(found - exported - PROMETHEUS_OWN)


def test_the_counter_exports_what_its_source_names(counter):
    status, body = http(counter.port, "GET", "/metrics")
    assert status == 200
    live = set(re.findall(r"^# TYPE (\S+) ", body.decode(), re.M))
    assert live == counter_metrics()


def test_dashboard_and_rules_query_only_exported_metrics():
    exported = counter_metrics() | envoy_metrics()
    exprs = queries()
    assert len(exprs) > 20
    assert unknown_metrics(exprs, exported) == []
    # The check catches a name nobody exports.
    assert unknown_metrics(["rate(envoy_wasmcustom_tollgate_cost_dollars[5m]) + tollgate_counter_nope"], exported) == [
        "envoy_wasmcustom_tollgate_cost_dollars", "tollgate_counter_nope"]
    # Every panel and rule uses at least one Tollgate metric.
    for e in exprs:
        if "up{" not in e:
            assert re.search(r"(tollgate_counter_|envoy_wasmcustom_tollgate_)", e), e


def test_the_alert_rules_load_in_promtool_or_pass_the_schema():
    rules = yaml.safe_load(RULES.read_text())
    alerts = {r["alert"] for g in rules["groups"] for r in g["rules"]}
    assert {"TollgateBudgetPastSoftThreshold", "TollgateDailySpendAbove3xBaseline", "TollgateCounterDown", "TollgateUsageQueueBackingUp"} <= alerts
    for g in rules["groups"]:
        assert set(g) == {"name", "rules"}
        for r in g["rules"]:
            assert set(r) <= {"alert", "expr", "for", "labels", "annotations"} and r["expr"].strip(), r
            assert r["labels"]["severity"] in {"warning", "critical"} and r["annotations"]["summary"], r
            if "for" in r:
                assert re.fullmatch(r"\d+[smhd]", r["for"]), r
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed (scripts/setup.sh installs Debian's prometheus); the schema check above passed")
    out = subprocess.run([promtool, "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and f"SUCCESS: {sum(len(g['rules']) for g in rules['groups'])} rules found" in out.stdout, out.stdout + out.stderr


def test_the_dashboard_is_importable_grafana_json():
    dash = json.loads(DASHBOARD.read_text())
    assert dash["uid"] == "tollgate" and dash["schemaVersion"] >= 36
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids)) >= 8
    for p in dash["panels"]:
        assert p["datasource"]["uid"] == "${datasource}" and p["targets"], p["title"]
        assert {"x", "y", "w", "h"} <= set(p["gridPos"])
