"""Configuration choices that the session's Envoy does not make, on a second Envoy: a trusted
`x-tollgate-*` header, body-metadata attribution, price overrides and aliases, and
`unknown_model: deny`."""
import json

import pytest

from checks import assert_error_shape, assert_outcome_counted, log_int
from harness import Envoy, new_id

POLICY_CONFIG = {
    "gateway_id": "e2e-policies",
    "access_log": "fields",
    "attribution": {
        "trusted_headers": {"team": "x-tollgate-team"},  # an earlier filter (e.g. jwt_authn) writes it
        "body_metadata": {"user": ["user", "metadata.user_id"]},
    },
    "routing": {"rules": [{"name": "in-house", "match": {"model": "e2e-inhouse"}, "set_model": "in-house-llm"}]},
    "pricing": {
        "unknown_model": "deny",
        "models": {"in-house-llm": {"input_per_mtok": "0.10", "output_per_mtok": "0.40"}},
        "aliases": {"prod-4o": "gpt-4o"},
    },
}
TOKENS = {"x-mock-input-tokens": "1000", "x-mock-output-tokens": "100"}


@pytest.fixture(scope="module")
def policy_envoy(workdir, mock):
    e = Envoy(workdir, mock.port, plugin_config=POLICY_CONFIG, name="policies")
    yield e
    e.close()


def chat(model, **extra):
    return json.dumps({"model": model, "messages": [{"role": "user", "content": "hi"}], **extra})


def test_a_trusted_tollgate_header_attributes_but_still_never_reaches_the_upstream(policy_envoy, mock):
    e2e_id = new_id()
    resp = policy_envoy.post("/v1/chat/completions", chat("gpt-4o"), {"x-e2e-id": e2e_id, "x-tollgate-team": "platform", **TOKENS})
    assert resp.status == 200, resp
    assert policy_envoy.access_log_line(e2e_id)["team"] == "platform"
    assert "x-tollgate-team" not in mock.request_with(e2e_id)["header_map"]


@pytest.mark.parametrize(
    "path,body,user",
    [
        ("/v1/chat/completions", chat("gpt-4o", user="bob"), "bob"),
        ("/v1/messages", json.dumps({"model": "claude-haiku-4-5", "max_tokens": 10, "metadata": {"user_id": "carol"},
                                     "messages": [{"role": "user", "content": "hi"}]}), "carol"),
    ],
    ids=["openai-user", "anthropic-metadata-user_id"],
)
def test_body_metadata_attributes_the_user(policy_envoy, mock, path, body, user):
    e2e_id = new_id()
    resp = policy_envoy.post(path, body, {"x-e2e-id": e2e_id})
    assert resp.status == 200, resp
    assert policy_envoy.access_log_line(e2e_id)["user"] == user
    assert mock.request_with(e2e_id)["body"] == body, "attribution reads the body; it does not change it"


def test_price_override_prices_an_in_house_model(policy_envoy, mock):
    e2e_id = new_id()
    resp = policy_envoy.post("/v1/chat/completions", chat("e2e-inhouse"), {"x-e2e-id": e2e_id, **TOKENS})
    assert resp.status == 200, resp
    log = policy_envoy.access_log_line(e2e_id)
    # 1000 × $0.10 + 100 × $0.40 per Mtok
    assert (log["routed_model"], log_int(log, "cost_micros")) == ("in-house-llm", 100 + 40), log


def test_alias_prices_an_azure_deployment_as_its_model(policy_envoy, mock):
    e2e_id = new_id()
    resp = policy_envoy.post("/openai/deployments/prod-4o/chat/completions?api-version=2024-10-21",
                             json.dumps({"messages": [{"role": "user", "content": "hi"}]}), {"x-e2e-id": e2e_id, **TOKENS})
    assert resp.status == 200, resp
    log = policy_envoy.access_log_line(e2e_id)
    assert (log["routed_model"], log_int(log, "cost_micros")) == ("prod-4o", 3500), log


@pytest.mark.parametrize(
    "dialect,path,body",
    [
        ("openai", "/v1/chat/completions", chat("nobody-prices-this")),
        ("anthropic", "/v1/messages", json.dumps({"model": "nobody-prices-this", "max_tokens": 10, "messages": []})),
        ("gemini", "/v1beta/models/nobody-prices-this:generateContent", json.dumps({"contents": []})),
    ],
    ids=["openai", "anthropic", "gemini"],
)
def test_unknown_model_under_deny_is_refused_before_the_upstream(policy_envoy, mock, dialect, path, body):
    e2e_id = new_id()
    before = policy_envoy.stats()
    resp = policy_envoy.post(path, body, {"x-e2e-id": e2e_id})
    message = assert_error_shape(dialect, resp, 400)
    assert "nobody-prices-this" in message, f"the refusal names the model: {message!r}"
    assert mock.request_with(e2e_id, wait=0.3) is None
    assert_outcome_counted(before, policy_envoy.stats(), dialect, "invalid")
