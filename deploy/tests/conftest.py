"""Shared pieces of the deployment tests (deploy/tests): paths, the built wasm, and the values
an operator substitutes into the manifests with envsubst."""
import importlib.util
import os
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"

# deploy/render.py, under a name of its own (envoy/tests/harness.py imports envoy/render.py as `render`).
_spec = importlib.util.spec_from_file_location("deploy_render", DEPLOY / "render.py")
deploy_render = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(deploy_render)

# What an operator substitutes (docs/deploy.md lists each one).
SAMPLE_ENV = {
    "TOLLGATE_IMAGE": "registry.example.com/tollgate:0.1.0",
    "TOLLGATE_OCI_SHA256": "9b89084330e1c476537d484ca5ec642cc8b29cba7f7968e6809e659244f905a0",
    "TOLLGATE_WASM_URL": "https://artifacts.example.com/tollgate/0.1.0/tollgate.wasm",
    "TOLLGATE_WASM_SHA256": "8d2b1329597608af865a2764e203dd3bbd4d3374dcf8266b1974b3ea6cee9cd9",
    "TOLLGATE_GATEWAY_TOKEN": "0f1e2d3c4b5a69788796a5b4c3d2e1f0",
    "TOLLGATE_GATEWAY_TOKENS": "istio=0f1e2d3c4b5a69788796a5b4c3d2e1f0",
    "TOLLGATE_ADMIN_TOKENS": "alice=1a2b3c4d5e6f708192a3b4c5d6e7f809",
    "TOLLGATE_REDIS_PASSWORD": "5e6f708192a3b4c5",
}
ENVSUBST = re.compile(r"\$\{([A-Z_][A-Z0-9_]*)\}")


def substitute(text: str) -> str:
    """`envsubst` with SAMPLE_ENV; a placeholder that is not documented fails."""

    def sub(m):
        assert m.group(1) in SAMPLE_ENV, f"${{{m.group(1)}}} is not a documented placeholder"
        return SAMPLE_ENV[m.group(1)]

    return ENVSUBST.sub(sub, text)


@pytest.fixture(scope="session")
def tollgate_wasm() -> Path:
    """The real tollgate.wasm (`make wasm`); the test run fails, not skips, without it."""
    target = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))
    path = Path(os.environ.get("TOLLGATE_WASM", target / "wasm32-wasip1" / "release" / "tollgate.wasm"))
    assert path.is_file(), f"{path}: not built; run `make wasm` (or set TOLLGATE_WASM)"
    return path
