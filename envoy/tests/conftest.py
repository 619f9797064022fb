"""Session fixtures: one mock LLM and one Envoy with the real tollgate.wasm for the whole run.

Each test tags its requests with a unique `x-e2e-id` header, so it finds its own upstream record
(`mock.request_with(id)`) and access-log line (`envoy.access_log_line(id)`) without clearing
shared state, and tests stay independent of order.
"""
import hashlib
import tempfile

import pytest

from harness import Envoy, Mock

# The virtual key the tests present; the config holds only its SHA-256.
ALICE_KEY = "sk-e2e-alice-0123456789"

# The filter configuration used by the session's Envoy (reference: README.md).
FILTER_CONFIG = {
    "gateway_id": "e2e",
    "access_log": "fields",  # the tests read single access-log fields
    "dialects": {"openai": {"prefixes": ["", "/llm/openai"]}},
    "max_request_body_bytes": 65536,
    "attribution": {
        "trusted_headers": {"team": "x-e2e-team", "use_case": "x-e2e-use-case"},
        "virtual_keys": [
            {
                "sha256": hashlib.sha256(ALICE_KEY.encode()).hexdigest(),
                "principal": {"org": "acme", "team": "search", "user": "alice", "key_id": "key-alice", "tier": "premium"},
            }
        ],
        "defaults": {"org": "acme"},
    },
    "routing": {
        "rules": [
            {"name": "no-forbidden", "match": {"model": "forbidden-*"}, "deny": True, "message": "forbidden models are not allowed here"},
            {"name": "premium-alias", "match": {"model": "tier:premium"}, "set_model": "gpt-4o", "set_headers": {"x-tollgate-provider": "openai"}},
            {"name": "openai-chat", "match": {"dialect": "openai", "model": "e2e-chat"}, "set_model": "gpt-4o", "set_headers": {"x-tollgate-provider": "openai"}},
            {"name": "openai-instruct", "match": {"dialect": "openai", "model": "e2e-instruct"}, "set_model": "gpt-3.5-turbo-instruct", "set_headers": {"x-tollgate-provider": "openai"}},
            {"name": "openai-embed", "match": {"dialect": "openai", "model": "e2e-embed"}, "set_model": "text-embedding-3-small", "set_headers": {"x-tollgate-provider": "openai"}},
            {"name": "azure", "match": {"dialect": "azure_openai", "model": "e2e-deployment"}, "set_model": "gpt-4o", "set_headers": {"x-tollgate-provider": "azure_openai"}},
            {"name": "anthropic", "match": {"dialect": "anthropic", "model": "e2e-claude"}, "set_model": "claude-haiku-4-5", "set_headers": {"x-tollgate-provider": "anthropic"}},
            {"name": "gemini", "match": {"dialect": "gemini", "model": "e2e-gemini"}, "set_model": "gemini-2.5-flash", "set_headers": {"x-tollgate-provider": "gemini"}},
        ]
    },
    "pricing": {"unknown_model": "zero"},
}


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
