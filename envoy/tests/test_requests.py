"""Attribution, refusals, bad input and pass-through, through real Envoy with the real filter."""
import json

import pytest

from checks import assert_error_shape, assert_outcome_counted, log_int, stat_increase
from conftest import ALICE_KEY
from harness import new_id, request_raw_until_close, sse_json

CHAT = {"model": "e2e-chat", "messages": [{"role": "user", "content": "hi"}]}

# One request per dialect, used for refusal shapes: (dialect, path, body with model placeholder).
PER_DIALECT = [
    ("openai", "/v1/chat/completions", lambda m: {"model": m, "messages": [{"role": "user", "content": "hi"}]}),
    ("azure_openai", "/openai/deployments/{m}/chat/completions?api-version=2024-10-21", lambda m: {"messages": [{"role": "user", "content": "hi"}]}),
    ("anthropic", "/v1/messages", lambda m: {"model": m, "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]}),
    ("gemini", "/v1beta/models/{m}:generateContent", lambda m: {"contents": [{"parts": [{"text": "hi"}]}]}),
]
VALID_MODEL = {"openai": "e2e-chat", "azure_openai": "e2e-deployment", "anthropic": "e2e-claude", "gemini": "e2e-gemini"}


def test_virtual_key_attributes_the_principal(envoy, mock):
    e2e_id = new_id()
    resp = envoy.post("/v1/chat/completions", json.dumps(CHAT), {"x-e2e-id": e2e_id, "authorization": f"Bearer {ALICE_KEY}"})
    assert resp.status == 200, resp
    log = envoy.access_log_line(e2e_id)
    principal = {k: log[k] for k in ("org", "team", "user", "key_id", "tier")}
    assert principal == {"org": "acme", "team": "search", "user": "alice", "key_id": "key-alice", "tier": "premium"}, log
    assert ALICE_KEY not in json.dumps(log), "the raw key must never be logged"
    upstream = mock.request_with(e2e_id)
    assert "authorization" not in upstream["header_map"], "a virtual key is the gateway's credential: never forwarded"
    assert ALICE_KEY not in json.dumps(upstream["headers"]), upstream["headers"]


def test_trusted_header_attributes_and_client_tollgate_headers_are_stripped(envoy, mock):
    e2e_id = new_id()
    resp = envoy.post(
        "/v1/chat/completions",
        json.dumps(CHAT),
        {
            "x-e2e-id": e2e_id,
            "x-e2e-team": "ranking",  # configured as a trusted header for `team`
            "x-tollgate-team": "intruder",
            "x-tollgate-user": "mallory",
            "x-tollgate-provider": "gemini",  # a client cannot pick the cluster
        },
    )
    assert resp.status == 200, resp
    log = envoy.access_log_line(e2e_id)
    assert log["team"] == "ranking", log
    assert "intruder" not in json.dumps(log) and "mallory" not in json.dumps(log), log
    assert log["upstream_cluster"] == "openai", log
    upstream = mock.request_with(e2e_id)
    values = {n: v for n, v in upstream["headers"]}
    assert "intruder" not in values.values() and "mallory" not in values.values(), upstream["headers"]
    assert values.get("x-tollgate-provider") in (None, "openai"), upstream["headers"]


def test_alias_resolves_through_the_table(envoy, mock):
    e2e_id = new_id()
    body = {"model": "tier:premium", "messages": [{"role": "user", "content": "hi"}]}
    resp = envoy.post("/v1/chat/completions", json.dumps(body), {"x-e2e-id": e2e_id})
    assert resp.status == 200, resp
    assert json.loads(mock.request_with(e2e_id)["body"])["model"] == "gpt-4o"
    log = envoy.access_log_line(e2e_id)
    assert log["requested_model"] == "tier:premium" and log["routed_model"] == "gpt-4o", log


@pytest.mark.parametrize("dialect,path,body", PER_DIALECT, ids=[d[0] for d in PER_DIALECT])
def test_deny_rule_refuses_with_403_in_dialect_shape(envoy, mock, dialect, path, body):
    e2e_id = new_id()
    before = envoy.stats()
    resp = envoy.post(path.format(m="forbidden-model"), json.dumps(body("forbidden-model")), {"x-e2e-id": e2e_id})
    message = assert_error_shape(dialect, resp, 403)
    assert "no-forbidden" in message, f"the refusal names the rule: {message!r}"
    assert mock.request_with(e2e_id, wait=0.5) is None, "a denied request must not reach the upstream"
    assert_outcome_counted(before, envoy.stats(), dialect, "denied")


def _bad_bodies(dialect):
    good = json.dumps(PER_DIALECT_BODY[dialect]).encode()
    return {
        "malformed": b'{"model": "e2e-chat", "messages": [}',
        "truncated": good[: len(good) // 2],
        "model-is-a-number": b'{"model": 123, "messages": []}',
        "invalid-utf8": b'{"model": "e2e-chat", "messages": [{"role": "user", "content": "\xff\xfe"}]}',
        "not-an-object": b'["model", "e2e-chat"]',
        "duplicate-model": b'{"model": "e2e-chat", "model": "gpt-4o", "messages": []}',
    }


PER_DIALECT_BODY = {d: b(VALID_MODEL[d]) for d, _, b in PER_DIALECT}
BAD_KINDS = ["malformed", "truncated", "model-is-a-number", "invalid-utf8", "not-an-object", "duplicate-model"]


@pytest.mark.parametrize("kind", BAD_KINDS)
@pytest.mark.parametrize("dialect,path,_body", PER_DIALECT, ids=[d[0] for d in PER_DIALECT])
def test_bad_body_gets_400_in_dialect_shape(envoy, mock, dialect, path, _body, kind):
    if dialect in ("azure_openai", "gemini") and kind in ("model-is-a-number", "duplicate-model"):
        pytest.skip("the model is in the path for this dialect; a body model is just another member")
    e2e_id = new_id()
    before = envoy.stats()
    resp = envoy.post(path.format(m=VALID_MODEL[dialect]), _bad_bodies(dialect)[kind], {"x-e2e-id": e2e_id})
    assert_error_shape(dialect, resp, 400)
    assert mock.request_with(e2e_id, wait=0.3) is None, "a refused request must not reach the upstream"
    assert_outcome_counted(before, envoy.stats(), dialect, "invalid")


@pytest.mark.parametrize("dialect,path,body", PER_DIALECT, ids=[d[0] for d in PER_DIALECT])
def test_body_over_the_limit_gets_413_in_dialect_shape(envoy, mock, dialect, path, body):
    e2e_id = new_id()
    big = body(VALID_MODEL[dialect])
    big["padding"] = "x" * 70000  # the session config allows 65536 bytes
    before = envoy.stats()
    resp = envoy.post(path.format(m=VALID_MODEL[dialect]), json.dumps(big), {"x-e2e-id": e2e_id})
    assert_error_shape(dialect, resp, 413)
    assert mock.request_with(e2e_id, wait=0.3) is None
    assert_outcome_counted(before, envoy.stats(), dialect, "too_large")


def test_unknown_path_passes_through_untouched(envoy, mock):
    e2e_id = new_id()
    body = b'{"model": "e2e-chat", "whatever": [1, 2, 3]}  \n'
    before = envoy.stats()
    resp = envoy.post("/v1/models/not-an-llm-endpoint?x=1", body, {"x-e2e-id": e2e_id, "x-custom": "kept"})
    assert resp.status == 200 and resp.json()["mock"] == "echo", resp
    upstream = mock.request_with(e2e_id)
    assert upstream["body_bytes"] == body, "bytes of an unrecognised request are forwarded as sent"
    assert upstream["target"] == "/v1/models/not-an-llm-endpoint?x=1"
    assert upstream["header_map"]["x-custom"] == "kept"
    after = envoy.stats()
    assert stat_increase(before, after, "tokens") == 0
    assert stat_increase(before, after, "tollgate_passthrough") == 1, f"unrecognised requests are counted: {after}"


@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
def test_gzip_upstream_does_not_hide_usage(envoy, mock, stream):
    e2e_id = new_id()
    body = dict(CHAT, stream=stream)
    resp = envoy.post(
        "/v1/chat/completions",
        json.dumps(body),
        {"x-e2e-id": e2e_id, "accept-encoding": "gzip", "x-mock-input-tokens": "1000", "x-mock-output-tokens": "100"},
    )
    assert resp.status == 200, resp
    if stream:
        assert sse_json(resp.body)
    else:
        assert resp.json()["usage"]["prompt_tokens"] == 1000
    log = envoy.access_log_line(e2e_id)
    assert log_int(log, "tokens_input") == 1000 and log_int(log, "tokens_output") == 100, log
    assert log_int(log, "cost_micros") == 3500, log


@pytest.mark.parametrize(
    "path,body",
    [
        ("/v1/chat/completions", dict(CHAT, stream=True)),
        ("/v1/messages", {"model": "e2e-claude", "max_tokens": 100, "stream": True, "messages": [{"role": "user", "content": "hi"}]}),
        ("/v1/responses", {"model": "e2e-chat", "input": "hi", "stream": True}),
        ("/v1beta/models/e2e-gemini:streamGenerateContent?alt=sse", {"contents": [{"parts": [{"text": "hi"}]}]}),
    ],
    ids=["openai", "anthropic", "responses", "gemini"],
)
def test_cut_stream_is_charged_from_an_estimate(envoy, mock, path, body):
    e2e_id = new_id()
    before = envoy.stats()
    status, _, got = request_raw_until_close(
        envoy.listen_port, "POST", path, json.dumps(body), {"x-e2e-id": e2e_id, "x-mock-events": "20", "x-mock-cut-after-events": "5"}
    )
    assert status == 200
    assert b"Hello" in got, "the client received the part that was streamed"
    log = envoy.access_log_line(e2e_id)
    assert log.get("estimated") in ("true", "1"), f"a cut stream is charged from an estimate, flagged: {log}"
    assert log_int(log, "tokens_output") > 0, log
    assert log_int(log, "cost_micros") > 0, log
    dialect = {"/v1/messages": "anthropic"}.get(path, "gemini" if "gemini" in path else "openai")
    assert_outcome_counted(before, envoy.stats(), dialect, "estimated")


def test_upstream_error_without_usage_is_not_charged(envoy, mock):
    e2e_id = new_id()
    resp = envoy.post("/v1/chat/completions", json.dumps(CHAT), {"x-e2e-id": e2e_id, "x-mock-status": "503"})
    assert resp.status == 503
    assert resp.json()["error"]["type"] == "server_error", "the upstream's error reaches the client unchanged"
    log = envoy.access_log_line(e2e_id)
    assert log.get("cost_micros") in ("0", None, "-"), log


def test_cached_and_reasoning_tokens_are_kept_apart(envoy, mock):
    e2e_id = new_id()
    resp = envoy.post(
        "/v1/chat/completions",
        json.dumps(CHAT),
        {"x-e2e-id": e2e_id, "x-mock-input-tokens": "1000", "x-mock-output-tokens": "100",
         "x-mock-cached-tokens": "400", "x-mock-reasoning-tokens": "30"},
    )
    assert resp.status == 200
    log = envoy.access_log_line(e2e_id)
    assert log_int(log, "tokens_cache_read") == 400, log
    assert log_int(log, "tokens_input") == 600, "input excludes the cached tokens"
    assert log_int(log, "tokens_reasoning") == 30, log
    # gpt-4o: 600 × $2.50 + 400 × $1.25 (cache read) + 100 × $10 per Mtok
    assert log_int(log, "cost_micros") == 1500 + 500 + 1000, log


def test_anthropic_cache_tokens_are_kept_apart(envoy, mock):
    e2e_id = new_id()
    body = {"model": "e2e-claude", "max_tokens": 500, "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    resp = envoy.post(
        "/v1/messages",
        json.dumps(body),
        {"x-e2e-id": e2e_id, "x-mock-input-tokens": "1000", "x-mock-output-tokens": "100",
         "x-mock-cached-tokens": "400", "x-mock-cache-write-tokens": "100"},
    )
    assert resp.status == 200
    log = envoy.access_log_line(e2e_id)
    assert (log_int(log, "tokens_input"), log_int(log, "tokens_cache_read"), log_int(log, "tokens_cache_write")) == (500, 400, 100), log
    # claude-haiku-4-5: 500 × $1 + 400 × $0.10 + 100 × $1.25 + 100 × $5 per Mtok
    assert log_int(log, "cost_micros") == 500 + 40 + 125 + 500, log


def test_usage_is_independent_of_how_the_upstream_splits_bytes(envoy, mock):
    """The same stream, written 7 bytes at a time with pauses, is metered the same."""
    e2e_id = new_id()
    body = {"model": "e2e-claude", "max_tokens": 500, "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    resp = envoy.post(
        "/v1/messages",
        json.dumps(body),
        {"x-e2e-id": e2e_id, "x-mock-input-tokens": "1000", "x-mock-output-tokens": "100",
         "x-mock-chunk-bytes": "7", "x-mock-chunk-delay-ms": "1"},
    )
    assert resp.status == 200
    assert [n for n, _ in sse_json(resp.body)][-1] == "message_stop"
    log = envoy.access_log_line(e2e_id)
    assert (log_int(log, "tokens_input"), log_int(log, "tokens_output"), log_int(log, "cost_micros")) == (1000, 100, 1500), log


def test_upstream_that_gzips_anyway_is_still_charged(envoy, mock):
    """An upstream that compresses although asked for identity: usage is unreadable in the filter,
    so the request must be charged from a flagged estimate, never silently for free."""
    e2e_id = new_id()
    resp = envoy.post("/v1/chat/completions", json.dumps(dict(CHAT, stream=True)), {"x-e2e-id": e2e_id, "x-mock-gzip": "always"})
    assert resp.status == 200 and resp.header("content-encoding") == "gzip"
    assert sse_json(resp.body), "the client still gets the (compressed) stream intact"
    log = envoy.access_log_line(e2e_id)
    assert log.get("estimated") == "true" and log_int(log, "cost_micros") > 0, log


def test_upstream_is_asked_for_identity_encoding(envoy, mock):
    e2e_id = new_id()
    resp = envoy.post("/v1/chat/completions", json.dumps(CHAT), {"x-e2e-id": e2e_id, "accept-encoding": "gzip, br"})
    assert resp.status == 200
    assert mock.request_with(e2e_id)["header_map"].get("accept-encoding") in (None, "identity")


def test_client_disconnect_mid_stream_is_charged_from_an_estimate(envoy, mock):
    import socket
    import time

    e2e_id = new_id()
    body = json.dumps(dict(CHAT, stream=True)).encode()
    with socket.create_connection(("127.0.0.1", envoy.listen_port), timeout=10) as s:
        s.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nhost: e2e\r\ncontent-type: application/json\r\n"
            + f"x-e2e-id: {e2e_id}\r\nx-mock-events: 50\r\nx-mock-event-delay-ms: 40\r\ncontent-length: {len(body)}\r\n\r\n".encode()
            + body
        )
        got, deadline = b"", time.monotonic() + 10
        while b"Hello" not in got and time.monotonic() < deadline:
            got += s.recv(65536)
    assert b"Hello" in got, got
    log = envoy.access_log_line(e2e_id, wait=10)
    assert log.get("estimated") == "true", f"a stream the client abandoned is charged from an estimate: {log}"
    assert log_int(log, "tokens_output") > 0 and log_int(log, "cost_micros") > 0, log


def test_chunked_request_body_is_routed_and_metered(envoy, mock):
    import http.client

    e2e_id = new_id()
    raw = json.dumps(CHAT).encode()
    conn = http.client.HTTPConnection("127.0.0.1", envoy.listen_port, timeout=15)
    try:
        conn.request("POST", "/v1/chat/completions", body=iter([raw[:10], raw[10:25], raw[25:]]), encode_chunked=True,
                     headers={"content-type": "application/json", "transfer-encoding": "chunked", "x-e2e-id": e2e_id,
                              "x-mock-input-tokens": "1000", "x-mock-output-tokens": "100"})
        r = conn.getresponse()
        assert r.status == 200, r.read()
        r.read()
    finally:
        conn.close()
    assert json.loads(mock.request_with(e2e_id)["body"])["model"] == "gpt-4o"
    assert log_int(envoy.access_log_line(e2e_id), "cost_micros") == 3500


def test_large_body_in_many_pieces_under_the_limit_is_routed(envoy, mock):
    e2e_id = new_id()
    body = dict(CHAT, messages=[{"role": "user", "content": "y" * 60000}])
    resp = envoy.post("/v1/chat/completions", json.dumps(body), {"x-e2e-id": e2e_id})
    assert resp.status == 200, resp
    upstream = mock.request_with(e2e_id)
    assert json.loads(upstream["body"])["model"] == "gpt-4o" and upstream["body_len"] > 60000


def test_unpriced_model_is_forwarded_charged_zero_and_counted(envoy, mock):
    e2e_id = new_id()
    before = envoy.stats()
    resp = envoy.post("/v1/chat/completions", json.dumps(dict(CHAT, model="e2e-unpriced-model")), {"x-e2e-id": e2e_id})
    assert resp.status == 200, resp
    assert json.loads(mock.request_with(e2e_id)["body"])["model"] == "e2e-unpriced-model"
    log = envoy.access_log_line(e2e_id)
    assert log_int(log, "cost_micros") == 0 and log_int(log, "tokens_input") > 0, log
    assert stat_increase(before, envoy.stats(), "tollgate_unknown_model") == 1


def test_mount_prefix_is_recognised(envoy, mock):
    e2e_id = new_id()
    resp = envoy.post("/llm/openai/v1/chat/completions", json.dumps(CHAT), {"x-e2e-id": e2e_id})
    assert resp.status == 200, resp
    upstream = mock.request_with(e2e_id)
    assert upstream["path"] == "/llm/openai/v1/chat/completions"
    assert json.loads(upstream["body"])["model"] == "gpt-4o"
    assert envoy.access_log_line(e2e_id)["routed_model"] == "gpt-4o"


@pytest.mark.parametrize("path", ["/v1//chat/completions", "/v1/./chat/completions", "/x/../v1/chat/completions"])
def test_path_tricks_cannot_sidestep_a_deny_rule(envoy, mock, path):
    e2e_id = new_id()
    resp = envoy.post(path, json.dumps(dict(CHAT, model="forbidden-model")), {"x-e2e-id": e2e_id})
    assert_error_shape("openai", resp, 403)
    assert mock.request_with(e2e_id, wait=0.3) is None


def test_requests_on_one_keepalive_connection_are_each_metered(envoy, mock):
    import http.client

    ids = [new_id() for _ in range(3)]
    conn = http.client.HTTPConnection("127.0.0.1", envoy.listen_port, timeout=15)
    try:
        for i, e2e_id in enumerate(ids):
            body = json.dumps(dict(CHAT, stream=bool(i % 2))).encode()
            conn.request("POST", "/v1/chat/completions", body=body, headers={
                "content-type": "application/json", "x-e2e-id": e2e_id, "x-mock-input-tokens": "1000", "x-mock-output-tokens": "100"})
            r = conn.getresponse()
            assert r.status == 200
            r.read()
    finally:
        conn.close()
    for e2e_id in ids:
        assert log_int(envoy.access_log_line(e2e_id), "cost_micros") == 3500


STREAMS = [
    ("openai", "/v1/chat/completions", dict(CHAT, stream=True), 3500),
    ("responses", "/v1/responses", {"model": "e2e-chat", "input": "hi", "stream": True}, 3500),
    ("azure", "/openai/deployments/e2e-deployment/chat/completions?api-version=2024-10-21",
     {"messages": [{"role": "user", "content": "hi"}], "stream": True}, 3500),
    ("anthropic", "/v1/messages", {"model": "e2e-claude", "max_tokens": 500, "stream": True, "messages": [{"role": "user", "content": "hi"}]}, 1500),
    ("gemini", "/v1beta/models/e2e-gemini:streamGenerateContent?alt=sse", {"contents": [{"parts": [{"text": "hi"}]}]}, 550),
]


@pytest.mark.parametrize("name,path,body,cost", STREAMS, ids=[s[0] for s in STREAMS])
def test_stream_split_into_5_byte_writes_is_metered_the_same(envoy, mock, name, path, body, cost):
    e2e_id = new_id()
    resp = envoy.post(path, json.dumps(body), {"x-e2e-id": e2e_id, "x-mock-input-tokens": "1000", "x-mock-output-tokens": "100",
                                              "x-mock-chunk-bytes": "5", "x-mock-chunk-delay-ms": "1"})
    assert resp.status == 200 and sse_json(resp.body)
    log = envoy.access_log_line(e2e_id)
    assert (log_int(log, "tokens_input"), log_int(log, "tokens_output"), log_int(log, "cost_micros")) == (1000, 100, cost), log
    assert log["estimated"] == "false", log


def test_responses_cut_by_max_output_tokens_is_metered_from_response_incomplete(envoy, mock):
    e2e_id = new_id()
    body = {"model": "e2e-chat", "input": "hi", "stream": True, "max_output_tokens": 40}
    resp = envoy.post("/v1/responses", json.dumps(body), {"x-e2e-id": e2e_id, "x-mock-input-tokens": "1000", "x-mock-output-tokens": "100"})
    assert resp.status == 200
    assert [n for n, _ in sse_json(resp.body)][-1] == "response.incomplete"
    log = envoy.access_log_line(e2e_id)
    assert (log_int(log, "tokens_output"), log_int(log, "cost_micros"), log["estimated"]) == (40, 2500 + 400, "false"), log


def test_gemini_stream_without_alt_sse_is_charged(envoy, mock):
    """Without ?alt=sse Gemini streams a JSON array. Metered exactly, or at least from a flagged
    estimate: never silently free."""
    e2e_id = new_id()
    resp = envoy.post("/v1beta/models/e2e-gemini:streamGenerateContent", json.dumps({"contents": [{"parts": [{"text": "hi"}]}]}),
                      {"x-e2e-id": e2e_id, "x-mock-input-tokens": "1000", "x-mock-output-tokens": "100"})
    assert resp.status == 200
    assert isinstance(resp.json(), list)
    log = envoy.access_log_line(e2e_id)
    exact = (log_int(log, "tokens_input"), log_int(log, "tokens_output"), log_int(log, "cost_micros")) == (1000, 100, 550)
    assert exact or (log["estimated"] == "true" and log_int(log, "cost_micros") > 0), log


def test_azure_embeddings_route_by_deployment(envoy, mock):
    e2e_id = new_id()
    resp = envoy.post("/openai/deployments/e2e-deployment/embeddings?api-version=2024-10-21", json.dumps({"input": "hello"}),
                      {"x-e2e-id": e2e_id, "x-mock-input-tokens": "1000"})
    assert resp.status == 200 and resp.json()["data"][0]["embedding"]
    assert mock.request_with(e2e_id)["path"] == "/openai/deployments/gpt-4o/embeddings"
    log = envoy.access_log_line(e2e_id)
    assert (log["upstream_cluster"], log_int(log, "tokens_input"), log_int(log, "cost_micros")) == ("azure_openai", 1000, 2500), log


@pytest.mark.parametrize("status", [400, 429, 500])
def test_upstream_errors_reach_the_client_unchanged_and_are_not_charged(envoy, mock, status):
    e2e_id = new_id()
    before = envoy.stats()
    resp = envoy.post("/v1/messages", json.dumps({"model": "e2e-claude", "max_tokens": 10, "messages": []}),
                      {"x-e2e-id": e2e_id, "x-mock-status": str(status)})
    assert resp.status == status
    assert resp.json()["type"] == "error" and "x-mock-status" in resp.json()["error"]["message"]
    log = envoy.access_log_line(e2e_id)
    assert log.get("cost_micros") in ("0", None), log
    assert_outcome_counted(before, envoy.stats(), "anthropic", "upstream_error")


def test_streams_are_not_buffered_by_the_filter(envoy, mock):
    """The first SSE event reaches the client long before the stream ends: metering reads chunks
    as they pass, it never holds the response back."""
    import socket
    import time

    e2e_id = new_id()
    body = json.dumps(dict(CHAT, stream=True)).encode()
    with socket.create_connection(("127.0.0.1", envoy.listen_port), timeout=10) as s:
        start = time.monotonic()
        s.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nhost: e2e\r\ncontent-type: application/json\r\n"
            + f"x-e2e-id: {e2e_id}\r\nx-mock-events: 8\r\nx-mock-event-delay-ms: 250\r\ncontent-length: {len(body)}\r\n\r\n".encode()
            + body
        )
        got = b""
        while b"Hello" not in got and time.monotonic() - start < 10:
            got += s.recv(65536)
        first = time.monotonic() - start
        while not got.endswith(b"0\r\n\r\n") and time.monotonic() - start < 10:
            chunk = s.recv(65536)
            if not chunk:
                break
            got += chunk
        total = time.monotonic() - start
    assert b"data: [DONE]" in got, got[-200:]
    assert total >= 2.0, f"the mock paces the stream over ~2.5 s, took {total:.2f}s"
    assert first < 1.0, f"the first event arrived after {first:.2f}s of a {total:.2f}s stream: the response was buffered"
    assert envoy.access_log_line(e2e_id)["estimated"] == "false"


def test_concurrent_streams_are_metered_independently(envoy, mock):
    """20 requests at once on one Envoy worker, mixed dialects and modes: each gets its own usage."""
    from concurrent.futures import ThreadPoolExecutor

    shapes = [
        ("/v1/chat/completions", lambda i: dict(CHAT, stream=bool(i % 2)), 3500),
        ("/v1/messages", lambda i: {"model": "e2e-claude", "max_tokens": 500, "stream": bool(i % 2),
                                    "messages": [{"role": "user", "content": "hi"}]}, 1500),
        ("/v1beta/models/e2e-gemini:streamGenerateContent?alt=sse", lambda i: {"contents": [{"parts": [{"text": "hi"}]}]}, 550),
        ("/v1/responses", lambda i: {"model": "e2e-chat", "input": "hi", "stream": bool(i % 2)}, 3500),
    ]
    jobs = [(new_id(), *shapes[i % len(shapes)], i) for i in range(20)]

    def send(job):
        e2e_id, path, body, _, i = job
        return envoy.post(path, json.dumps(body(i)), {"x-e2e-id": e2e_id, "x-mock-input-tokens": "1000",
                                                      "x-mock-output-tokens": "100", "x-mock-event-delay-ms": "20"}).status

    before = envoy.stats()
    with ThreadPoolExecutor(max_workers=20) as pool:
        assert list(pool.map(send, jobs)) == [200] * 20
    for e2e_id, _, _, cost, _ in jobs:
        assert log_int(envoy.access_log_line(e2e_id), "cost_micros") == cost
    assert stat_increase(before, envoy.stats(), "tollgate_cost_micros") == sum(j[3] for j in jobs)
