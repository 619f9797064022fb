"""Session fixtures: one mock LLM and one Envoy with the real tollgate.wasm for the whole run.

Each test tags its requests with a unique `x-e2e-id` header, so it finds its own upstream record
(`mock.request_with(id)`) and access-log line (`envoy.access_log_line(id)`) without clearing
shared state, and tests stay independent of order.
"""
import hashlib
import json
import tempfile
from pathlib import Path

import pytest

from harness import Envoy, Mock

# The virtual key the tests present; the config holds only its SHA-256.
ALICE_KEY = "sk-e2e-alice-0123456789"

# The filter configuration used by the session's Envoy (reference: README.md). It lives in
# envoy/filter-config.json so the deployment manifests (deploy/render.py) carry the very same
# configuration the suite tests; "access_log": "fields" because the tests read single fields.
FILTER_CONFIG_PATH = Path(__file__).resolve().parent.parent / "filter-config.json"
FILTER_CONFIG = json.loads(FILTER_CONFIG_PATH.read_text(encoding="utf-8"))
# The file holds only the key's SHA-256; it must be ALICE_KEY's, or every virtual-key test fails
# for a reason far from here.
assert FILTER_CONFIG["attribution"]["virtual_keys"][0]["sha256"] == hashlib.sha256(ALICE_KEY.encode()).hexdigest(), (
    f"{FILTER_CONFIG_PATH}: attribution.virtual_keys[0].sha256 is not the SHA-256 of ALICE_KEY"
)


@pytest.fixture(scope="session")
def workdir():
    with tempfile.TemporaryDirectory(prefix="tollgate-e2e-") as d:
        yield d


@pytest.fixture(scope="session")
def mock(workdir):
    m = Mock(workdir)
    yield m
    m.close()


@pytest.fixture(scope="session")
def envoy(workdir, mock):
    e = Envoy(workdir, mock.port, plugin_config=FILTER_CONFIG, name="tollgate")
    yield e
    e.close()
