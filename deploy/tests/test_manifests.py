"""The deployment manifests in deploy/: rendered from one filter config, valid for their platforms.

- The committed files equal a fresh render of deploy/templates/ (deploy/render.py), and the
  plugin config in each is envoy/filter-config.json — what the e2e suite loads — plus only the
  platform's `gateway_id` and counter wiring, which must point at the counter the Kubernetes
  manifests (deploy/counter/) actually serve.
- Every object validates: core kinds with PyPI `kubernetes-validate` (strict: unknown fields
  refused), the Istio / Envoy Gateway / Gateway API / Kong objects with the JSON Schemas in
  deploy/schemas (hand-written from each API's source, versions in each schema's description),
  and WasmPlugin, EnvoyFilter and HTTPRoute also with the validators npm `@kubernetes-models`
  generates from the published CRDs (deploy/validate).
- A wrong field or a wrong type fails each of those validators (the negative table below).

Placeholders an operator fills with `envsubst` (`${TOLLGATE_IMAGE}` …) are filled with sample
values first, as an operator would before `kubectl apply`.
"""
import copy
import json
import shutil
import subprocess

import jsonschema
import kubernetes_validate
import pytest
import yaml
from referencing import Registry, Resource

from conftest import DEPLOY, ENVSUBST, ROOT, SAMPLE_ENV, substitute
from conftest import deploy_render as render

KUBERNETES_VERSION = "1.33.0"

CORE_KINDS = {"Namespace", "ConfigMap", "Secret", "Service", "Deployment", "StatefulSet", "PodDisruptionBudget", "PersistentVolumeClaim"}


def kustomize(path) -> str:
    kubectl = shutil.which("kubectl")
    assert kubectl, "kubectl (with its built-in kustomize) is needed to build deploy/counter"
    r = subprocess.run([kubectl, "kustomize", str(path)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, f"kubectl kustomize {path}: {r.stderr}"
    return r.stdout


def sources():
    """(label, manifest text) for everything deploy/ applies."""
    for f in sorted((DEPLOY / "istio").glob("*.yaml")) + sorted((DEPLOY / "envoy-gateway").glob("*.yaml")):
        yield str(f.relative_to(ROOT)), f.read_text()
    yield "deploy/kong/kong.yaml", (DEPLOY / "kong" / "kong.yaml").read_text()
    yield "deploy/counter/base (kustomize)", kustomize(DEPLOY / "counter" / "base")
    yield "deploy/counter/overlays/redis (kustomize)", kustomize(DEPLOY / "counter" / "overlays" / "redis")
    yield "deploy/counter/secret.template.yaml", (DEPLOY / "counter" / "secret.template.yaml").read_text()


@pytest.fixture(scope="module")
def docs():
    """Every object, placeholders filled: a list of (label, object)."""
    out = []
    for label, text in sources():
        for doc in yaml.safe_load_all(substitute(text)):
            if doc is not None:
                out.append((label, doc))
    return out


def by_kind(docs, kind, source=None):
    return [d for label, d in docs if d.get("kind") == kind and (source is None or source in label)]


# ---- schemas -------------------------------------------------------------------------------

SCHEMAS = {json.loads(p.read_text())["$id"]: json.loads(p.read_text()) for p in (DEPLOY / "schemas").glob("*.json")}
REGISTRY = Registry().with_resources((uri, Resource.from_contents(s)) for uri, s in SCHEMAS.items())
BASE = "https://tollgate.invalid/schemas/"


def schema_for(doc) -> str:
    if "_format_version" in doc:
        return BASE + "kong.declarative.json"
    return BASE + doc["apiVersion"].replace("/", "_") + "_" + doc["kind"] + ".json"


def errors(doc) -> list:
    """Validation errors of one object, as 'path: message' strings (empty when valid)."""
    if doc.get("kind") in CORE_KINDS:
        try:
            kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as e:
            return [f"{'.'.join(map(str, e.path))}: {e.message}"]
        return []
    uri = schema_for(doc)
    assert uri in SCHEMAS, f"no schema for {doc.get('apiVersion')} {doc.get('kind')} in deploy/schemas"
    validator = jsonschema.Draft202012Validator(SCHEMAS[uri], registry=REGISTRY)
    return [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(doc)]


def published_crd_check(objects) -> list:
    """Runs deploy/validate/validate.mjs (validators generated from the published CRDs)."""
    node = shutil.which("node")
    assert node, "node is needed for the published-CRD validators (scripts/setup.sh installs it)"
    assert (DEPLOY / "validate" / "node_modules").is_dir(), "run scripts/setup.sh: deploy/validate has no node_modules"
    r = subprocess.run(
        [node, "validate.mjs"], cwd=DEPLOY / "validate", input=json.dumps(objects), capture_output=True, text=True, timeout=60
    )
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


# ---- one source --------------------------------------------------------------------------------

def test_the_committed_manifests_equal_a_fresh_render():
    rendered = render.outputs()
    assert rendered, "deploy/templates is empty"
    assert render.stale(rendered) == [], "run `python3 deploy/render.py` and commit the result"


def test_a_manifest_edited_by_hand_is_reported_stale():
    rendered = render.outputs()
    dest = next(iter(rendered))
    edited = {dest: rendered[dest] + "# edited\n"}
    assert render.stale(edited) == [dest]


def plugin_configs(docs) -> dict:
    """{platform/file: the plugin config it carries}."""
    out = {}
    for label, d in docs:
        kind = d.get("kind")
        if kind == "WasmPlugin":
            out[f"istio {label}"] = d["spec"]["pluginConfig"]
        elif kind == "EnvoyFilter":
            (ext,) = [p for p in d["spec"]["configPatches"] if p["applyTo"] == "EXTENSION_CONFIG"]
            value = ext["patch"]["value"]["typed_config"]["config"]["configuration"]["value"]
            out[f"istio {label}"] = json.loads(value)
        elif kind == "EnvoyExtensionPolicy":
            out[f"envoy-gateway {label}"] = d["spec"]["wasm"][0]["config"]
        elif "_format_version" in d:
            out["kong"] = json.loads(d["services"][0]["filter_chains"][0]["filters"][0]["config"])
    return out


def test_every_plugin_config_is_the_e2e_config_plus_the_platform_wiring(docs):
    e2e = json.loads((ROOT / "envoy" / "filter-config.json").read_text())
    configs = plugin_configs(docs)
    assert len(configs) == 7, sorted(configs)  # 2 WasmPlugins, 2 EnvoyFilters, 2 policies, Kong
    for where, cfg in configs.items():
        rest = {k: v for k, v in cfg.items() if k not in ("gateway_id", "gateway_id_suffix", "enforcement")}
        assert rest == {k: v for k, v in e2e.items() if k != "gateway_id"}, where
        # Mesh platforms hand every replica this config: each must derive its own gateway id.
        if not where.startswith("kong"):
            assert cfg.get("gateway_id_suffix") == "node_id", where
        assert cfg["enforcement"]["gateway_token"] == SAMPLE_ENV["TOLLGATE_GATEWAY_TOKEN"], where
        assert cfg["enforcement"]["failure_mode"] == "fail_closed", where


def test_the_counter_wiring_names_the_counter_the_kubernetes_manifests_serve(docs):
    (svc,) = [d for d in by_kind(docs, "Service", "counter/base") if d["metadata"]["name"] == "tollgate-counter"]
    fqdn = f"{svc['metadata']['name']}.{svc['metadata']['namespace']}.svc.cluster.local"
    port = svc["spec"]["ports"][0]["port"]
    configs = plugin_configs(docs)
    for where, cfg in configs.items():
        assert cfg["enforcement"]["counter_authority"] == fqdn, where
    # Istio: the Service's outbound cluster.
    for where in (w for w in configs if w.startswith("istio")):
        assert configs[where]["enforcement"]["counter_cluster"] == f"outbound|{port}||{fqdn}", where
    # Envoy Gateway: the cluster of rule 0 of the HTTPRoute whose Backend is that Service.
    (route,) = by_kind(docs, "HTTPRoute", "counter-route")
    (backend,) = by_kind(docs, "Backend", "counter-route")
    ref = route["spec"]["rules"][0]["backendRefs"][0]
    assert (ref["kind"], ref["name"], ref["port"]) == ("Backend", backend["metadata"]["name"], port)
    assert backend["spec"]["endpoints"][0]["fqdn"] == {"hostname": fqdn, "port": port}
    cluster = f"httproute/{route['metadata']['namespace']}/{route['metadata']['name']}/rule/0"
    for where in (w for w in configs if w.startswith("envoy-gateway")):
        assert configs[where]["enforcement"]["counter_cluster"] == cluster, where
    # Kong: host:port.
    assert configs["kong"]["enforcement"]["counter_cluster"] == f"{fqdn}:{port}"


def test_every_placeholder_is_documented_in_docs_deploy_md():
    guide = (ROOT / "docs" / "deploy.md").read_text()
    used = {m for _, text in sources() for m in ENVSUBST.findall(text)}
    assert used <= set(SAMPLE_ENV), used - set(SAMPLE_ENV)
    assert [v for v in sorted(used) if v not in guide] == []


# ---- what each platform needs ----------------------------------------------------------------

def test_istio_envoyfilters_load_tollgate_with_allow_on_headers_stop_iteration(docs):
    filters = by_kind(docs, "EnvoyFilter")
    assert len(filters) == 2
    for f in filters:
        ext, http = f["spec"]["configPatches"]
        config = ext["patch"]["value"]["typed_config"]["config"]
        assert config["allow_on_headers_stop_iteration"] is True
        assert config["fail_open"] is False
        assert config["vm_config"]["code"]["remote"]["sha256"] == SAMPLE_ENV["TOLLGATE_OCI_SHA256"]
        # The HTTP filter refers to the extension config by its name.
        assert http["patch"]["value"]["name"] == ext["patch"]["value"]["name"]


def test_envoy_gateway_patch_targets_the_filter_the_extension_policy_generates(docs):
    (patch,) = by_kind(docs, "EnvoyPatchPolicy")
    op = patch["spec"]["jsonPatches"][0]["operation"]
    for policy in by_kind(docs, "EnvoyExtensionPolicy"):
        # internal/xds/translator: envoy.filters.http.wasm/<kind>/<ns>/<name>/wasm/<index>
        name = f"envoy.filters.http.wasm/envoyextensionpolicy/{policy['metadata']['namespace']}/{policy['metadata']['name']}/wasm/0"
        assert f"@.name=='{name}'" in op["jsonPath"]
        assert policy["spec"]["wasm"][0]["failOpen"] is False
        assert policy["spec"]["targetRefs"] == [{**patch["spec"]["targetRef"]}]
    assert (op["op"], op["path"], op["value"]) == ("add", "allow_on_headers_stop_iteration", True)


def pod_specs(docs, source):
    return [(d["metadata"]["name"], d["spec"]) for d in docs_of(docs, source) if d.get("kind") in ("Deployment", "StatefulSet")]


def docs_of(docs, source):
    return [d for label, d in docs if source in label]


@pytest.mark.parametrize("source", ["counter/base", "counter/overlays/redis"])
def test_counter_pods_mount_only_volumes_they_define_and_read_keys_the_secret_has(docs, source):
    (secret,) = by_kind(docs, "Secret")
    for name, spec in pod_specs(docs, source):
        pod = spec["template"]["spec"]
        claimed = {c["metadata"]["name"] for c in spec.get("volumeClaimTemplates", [])}
        volumes = {v["name"] for v in pod.get("volumes", [])} | claimed
        for c in pod["containers"]:
            for m in c.get("volumeMounts", []):
                assert m["name"] in volumes, f"{name}: mounts {m['name']}, no such volume"
            for e in c.get("env", []):
                ref = e.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    assert ref["name"] == secret["metadata"]["name"] and ref["key"] in secret["stringData"], (name, ref)


def test_the_sqlite_counter_is_one_replica_replaced_not_rolled(docs):
    (dep,) = by_kind(docs, "Deployment", "counter/base")
    assert dep["spec"]["replicas"] == 1 and dep["spec"]["strategy"]["type"] == "Recreate"
    c = dep["spec"]["template"]["spec"]["containers"][0]
    assert c["readinessProbe"]["httpGet"]["path"] == "/healthz"
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert "--data=/var/lib/tollgate" in c["args"]
    assert len(by_kind(docs, "PersistentVolumeClaim", "counter/base")) == 1


def test_the_redis_counter_has_replicas_no_data_volume_and_liveness_that_ignores_redis(docs):
    (dep,) = by_kind(docs, "Deployment", "overlays/redis")
    assert dep["spec"]["replicas"] >= 2 and dep["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    c = dep["spec"]["template"]["spec"]["containers"][0]
    assert not any(a.startswith("--data") for a in c["args"])
    assert {"name": "TOLLGATE_REDIS_URL", "valueFrom": {"secretKeyRef": {"name": "tollgate-counter-tokens", "key": "redis-url"}}} in c["env"]
    assert c["readinessProbe"]["httpGet"]["path"] == "/healthz"
    assert c["livenessProbe"] == {"tcpSocket": {"port": "http"}, "periodSeconds": 10, "failureThreshold": 6}
    assert [m["mountPath"] for m in c["volumeMounts"]] == ["/etc/tollgate"]
    assert by_kind(docs, "PersistentVolumeClaim", "overlays/redis") == []
    (pdb,) = by_kind(docs, "PodDisruptionBudget", "overlays/redis")
    assert pdb["spec"]["maxUnavailable"] == 1
    conf = by_kind(docs, "ConfigMap", "overlays/redis")
    (redis_conf,) = [m["data"]["redis.conf"] for m in conf if m["metadata"]["name"] == "tollgate-redis"]
    for setting in ("appendonly yes", "appendfsync always", "maxmemory-policy noeviction"):
        assert setting in redis_conf.splitlines()


# ---- validation ------------------------------------------------------------------------------

def test_every_object_is_valid_for_its_platform(docs):
    kinds = sorted({d.get("kind", "kong declarative") for _, d in docs})
    assert kinds == sorted(
        {"Backend", "ConfigMap", "Deployment", "EnvoyExtensionPolicy", "EnvoyFilter", "EnvoyPatchPolicy", "HTTPRoute",
         "Namespace", "PersistentVolumeClaim", "PodDisruptionBudget", "Secret", "SecurityPolicy", "Service",
         "StatefulSet", "WasmPlugin", "kong declarative"}
    )
    problems = {f"{label}: {d.get('kind')} {d.get('metadata', {}).get('name')}": errors(d) for label, d in docs}
    assert {k: v for k, v in problems.items() if v} == {}


def test_the_published_crd_validators_accept_the_istio_and_gateway_api_objects(docs):
    results = published_crd_check([d for _, d in docs if "_format_version" not in d])
    checked = sorted(r["kind"] for r in results if r["ok"] is not None)
    assert checked == ["EnvoyFilter", "EnvoyFilter", "HTTPRoute", "WasmPlugin", "WasmPlugin"]
    assert [r for r in results if r["ok"] is False] == []


def first(docs, kind, source=None):
    return copy.deepcopy(by_kind(docs, kind, source)[0])


def setting(doc, path, value):
    *parents, last = path
    node = doc
    for p in parents:
        node = node[p]
    node[last] = value
    return doc


def renaming(doc, path, new_key):
    *parents, last = path
    node = doc
    for p in parents:
        node = node[p]
    node[new_key] = node.pop(last)
    return doc


EF_CONFIG = ["spec", "configPatches", 0, "patch", "value", "typed_config", "config"]
EEP_WASM = ["spec", "wasm", 0]
CONTAINER = ["spec", "template", "spec", "containers", 0]

# (case, kind, source, mutation, text the error names)
BROKEN = [
    ("WasmPlugin failStrategy not in the enum", "WasmPlugin", None,
     lambda d: setting(d, ["spec", "failStrategy"], "FAIL_CLOSED"), "FAIL_CLOSED"),
    ("WasmPlugin priority as a string", "WasmPlugin", None,
     lambda d: setting(d, ["spec", "priority"], "10"), "'10'"),
    ("WasmPlugin with a misspelt field", "WasmPlugin", None,
     lambda d: renaming(d, ["spec", "pluginConfig"], "pluginconfig"), "pluginconfig"),
    ("EnvoyFilter allow_on_headers_stop_iteration misspelt", "EnvoyFilter", None,
     lambda d: renaming(d, EF_CONFIG + ["allow_on_headers_stop_iteration"], "allow_on_header_stop_iteration"), "allow_on_header_stop_iteration"),
    ("EnvoyFilter allow_on_headers_stop_iteration as a string", "EnvoyFilter", None,
     lambda d: setting(d, EF_CONFIG + ["allow_on_headers_stop_iteration"], "true"), "'true'"),
    ("EnvoyFilter remote code without its sha256", "EnvoyFilter", None,
     lambda d: d["spec"]["configPatches"][0]["patch"]["value"]["typed_config"]["config"]["vm_config"]["code"]["remote"].pop("sha256") and d, "sha256"),
    ("EnvoyExtensionPolicy image sha256 with a prefix", "EnvoyExtensionPolicy", "image",
     lambda d: setting(d, EEP_WASM + ["code", "image", "sha256"], "sha256:" + "a" * 64), "sha256:"),
    ("EnvoyExtensionPolicy failOpen misspelt", "EnvoyExtensionPolicy", "http",
     lambda d: renaming(d, EEP_WASM + ["failOpen"], "failopen"), "failopen"),
    ("EnvoyPatchPolicy op not in the enum", "EnvoyPatchPolicy", None,
     lambda d: setting(d, ["spec", "jsonPatches", 0, "operation", "op"], "merge"), "merge"),
    ("HTTPRoute backend port as a string", "HTTPRoute", None,
     lambda d: setting(d, ["spec", "rules", 0, "backendRefs", 0, "port"], "8787"), "'8787'"),
    ("Deployment probe field misspelt", "Deployment", "counter/base",
     lambda d: renaming(d, CONTAINER + ["readinessProbe"], "readynessProbe"), "readynessProbe"),
    ("Deployment replicas as a string", "Deployment", "counter/base",
     lambda d: setting(d, ["spec", "replicas"], "2"), "'2'"),
    ("Service port as a string", "Service", "counter/base",
     lambda d: setting(d, ["spec", "ports", 0, "port"], "8787"), "'8787'"),
    ("PodDisruptionBudget with an unknown field", "PodDisruptionBudget", "counter/base",
     lambda d: setting(d, ["spec", "maxUnavailble"], 1), "maxUnavailble"),
]


@pytest.mark.parametrize("case,kind,source,mutate,named", BROKEN, ids=[b[0] for b in BROKEN])
def test_a_broken_manifest_fails_validation(docs, case, kind, source, mutate, named):
    doc = first(docs, kind, source)
    assert errors(doc) == [], "the unbroken object must be valid for the case to mean anything"
    broken = mutate(doc)
    found = errors(broken)
    assert found, f"{case}: accepted"
    assert any(named in e for e in found), found


def test_a_broken_kong_filter_chain_fails_validation(docs):
    (kong,) = [d for _, d in docs if "_format_version" in d]
    kong = copy.deepcopy(kong)
    assert errors(kong) == []
    kong["services"][0]["filter_chains"][0]["filters"][0]["config"] = 3
    assert any("3 is not of type" in e for e in errors(kong))
    kong["services"][0]["filter_chains"][0]["filters"] = []
    assert any("should be non-empty" in e or "is too short" in e for e in errors(kong))


def test_the_published_crd_validators_refuse_a_wrong_enum_and_a_wrong_type(docs):
    wrong_enum = setting(first(docs, "WasmPlugin"), ["spec", "failStrategy"], "FAIL_CLOSED")
    wrong_type = setting(first(docs, "HTTPRoute"), ["spec", "rules", 0, "backendRefs", 0, "port"], "8787")
    results = published_crd_check([wrong_enum, wrong_type])
    assert [r["ok"] for r in results] == [False, False], results
    assert "failStrategy" in results[0]["error"] and "port" in results[1]["error"]
