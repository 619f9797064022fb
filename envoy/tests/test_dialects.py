"""Every dialect, streaming and not, through real Envoy with the real filter and the mock upstream.

For each: the routing rule rewrote the model (body or path) and picked the provider cluster, the
rest of the body reached the upstream byte for byte, the client got a response its SDK can parse,
and the usage and cost show in the access log and in Envoy's stats.

The mock is told the exact usage to report (x-mock-input-tokens / x-mock-output-tokens) so the
expected cost is exact integer micro-dollars from the bundled LiteLLM prices:
  gpt-4o $2.50/$10 per Mtok, gpt-3.5-turbo-instruct $1.50/$2, text-embedding-3-small $0.02,
  claude-haiku-4-5 $1/$5, gemini-2.5-flash $0.30/$2.50.
"""
import json
from dataclasses import dataclass, field

import pytest

from checks import assert_outcome_counted, log_int, stat_increase
from harness import new_id, sse_json

INPUT, OUTPUT = 1000, 100
MESSAGES = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Say hello, e2e."}]


@dataclass
class Case:
    id: str
    dialect: str
    path: str  # as the client sends it
    body: dict
    routed_model: str
    cluster: str
    cost_micros: int
    upstream_path: str = None  # when the model lives in the path
    output: int = OUTPUT
    stream: bool = False
    extra_headers: dict = field(default_factory=dict)


CASES = [
    Case("openai-chat", "openai", "/v1/chat/completions", {"model": "e2e-chat", "messages": MESSAGES, "temperature": 0.2},
         "gpt-4o", "openai", 2500 + 1000),
    Case("openai-chat-sse", "openai", "/v1/chat/completions", {"model": "e2e-chat", "messages": MESSAGES, "stream": True},
         "gpt-4o", "openai", 2500 + 1000, stream=True),
    Case("openai-chat-sse-usage", "openai", "/v1/chat/completions",
         {"model": "e2e-chat", "messages": MESSAGES, "stream": True, "stream_options": {"include_usage": True}},
         "gpt-4o", "openai", 2500 + 1000, stream=True),
    Case("openai-completions", "openai", "/v1/completions", {"model": "e2e-instruct", "prompt": "Say hello", "max_tokens": 200},
         "gpt-3.5-turbo-instruct", "openai", 1500 + 200),
    Case("openai-completions-sse", "openai", "/v1/completions", {"model": "e2e-instruct", "prompt": "Say hello", "stream": True},
         "gpt-3.5-turbo-instruct", "openai", 1500 + 200, stream=True),
    Case("openai-embeddings", "openai", "/v1/embeddings", {"model": "e2e-embed", "input": ["hello", "world"]},
         "text-embedding-3-small", "openai", 20, output=0),
    Case("openai-responses", "openai", "/v1/responses", {"model": "e2e-chat", "input": "Say hello", "max_output_tokens": 500},
         "gpt-4o", "openai", 2500 + 1000),
    Case("openai-responses-sse", "openai", "/v1/responses", {"model": "e2e-chat", "input": "Say hello", "stream": True},
         "gpt-4o", "openai", 2500 + 1000, stream=True),
    Case("azure-chat", "azure_openai", "/openai/deployments/e2e-deployment/chat/completions?api-version=2024-10-21",
         {"messages": MESSAGES}, "gpt-4o", "azure_openai", 2500 + 1000,
         upstream_path="/openai/deployments/gpt-4o/chat/completions?api-version=2024-10-21"),
    Case("azure-chat-sse", "azure_openai", "/openai/deployments/e2e-deployment/chat/completions?api-version=2024-10-21",
         {"messages": MESSAGES, "stream": True}, "gpt-4o", "azure_openai", 2500 + 1000, stream=True,
         upstream_path="/openai/deployments/gpt-4o/chat/completions?api-version=2024-10-21"),
    Case("anthropic-messages", "anthropic", "/v1/messages", {"model": "e2e-claude", "max_tokens": 1024, "messages": MESSAGES[1:]},
         "claude-haiku-4-5", "anthropic", 1000 + 500, extra_headers={"anthropic-version": "2023-06-01"}),
    Case("anthropic-messages-sse", "anthropic", "/v1/messages",
         {"model": "e2e-claude", "max_tokens": 1024, "messages": MESSAGES[1:], "stream": True},
         "claude-haiku-4-5", "anthropic", 1000 + 500, stream=True, extra_headers={"anthropic-version": "2023-06-01"}),
    Case("gemini-generate", "gemini", "/v1beta/models/e2e-gemini:generateContent",
         {"contents": [{"role": "user", "parts": [{"text": "Say hello"}]}]}, "gemini-2.5-flash", "gemini", 300 + 250,
         upstream_path="/v1beta/models/gemini-2.5-flash:generateContent"),
    Case("gemini-stream-sse", "gemini", "/v1beta/models/e2e-gemini:streamGenerateContent?alt=sse",
         {"contents": [{"role": "user", "parts": [{"text": "Say hello"}]}]}, "gemini-2.5-flash", "gemini", 300 + 250, stream=True,
         upstream_path="/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse"),
]


def check_client_response(case, resp):
    """The client got what its SDK expects: parseable, complete, in the dialect's shape."""
    assert resp.status == 200, resp
    if not case.stream:
        body = resp.json()
        if case.id.startswith(("openai-chat", "azure-chat")):
            assert body["object"] == "chat.completion" and body["choices"][0]["message"]["content"]
        elif case.id.startswith("openai-completions"):
            assert body["object"] == "text_completion" and body["choices"][0]["text"]
        elif case.id.startswith("openai-embeddings"):
            assert [d["index"] for d in body["data"]] == [0, 1]
        elif case.id.startswith("openai-responses"):
            assert body["status"] == "completed" and body["output"][0]["content"][0]["text"]
        elif case.dialect == "anthropic":
            assert body["type"] == "message" and body["content"][0]["text"]
        elif case.dialect == "gemini":
            assert body["candidates"][0]["content"]["parts"][0]["text"]
        return
    assert (resp.header("content-type") or "").startswith("text/event-stream"), resp.headers
    events = sse_json(resp.body)
    text = ""
    if case.dialect in ("openai", "azure_openai") and not case.id.startswith("openai-responses"):
        assert resp.body.rstrip().endswith(b"data: [DONE]"), "an OpenAI stream ends with [DONE]"
        for _, e in events:
            for choice in e.get("choices", []):
                text += choice.get("delta", {}).get("content") or choice.get("text") or ""
        finishes = [c["finish_reason"] for _, e in events for c in e.get("choices", []) if c.get("finish_reason")]
        assert finishes == ["stop"], finishes
    elif case.id.startswith("openai-responses"):
        assert [n for n, _ in events][-1] == "response.completed"
        text = "".join(e["delta"] for n, e in events if n == "response.output_text.delta")
    elif case.dialect == "anthropic":
        names = [n for n, _ in events]
        assert names[0] == "message_start" and names[-1] == "message_stop", names
        text = "".join(e["delta"]["text"] for n, e in events if n == "content_block_delta")
    elif case.dialect == "gemini":
        assert events[-1][1]["candidates"][0]["finishReason"] == "STOP"
        text = "".join(e["candidates"][0]["content"]["parts"][0]["text"] for _, e in events)
    assert text.startswith("Hello from mock"), text


def check_upstream_body(case, client_body, upstream):
    """The model was rewritten in place; nothing else changed (byte for byte where no injection)."""
    got = upstream["body_bytes"]
    asks_usage = case.id.startswith(("openai-chat", "openai-completions", "azure-chat"))  # stream_options dialects
    injected_usage = case.stream and asks_usage and "stream_options" not in case.body
    if case.upstream_path:
        assert upstream["target"] == case.upstream_path
        expected = client_body
    else:
        expected = client_body.replace(f'"model": "{case.body["model"]}"'.encode(), f'"model": "{case.routed_model}"'.encode())
    if not injected_usage:
        assert got == expected, f"upstream body differs from the client's beyond the model:\n{got!r}\n{expected!r}"
    sent = json.loads(got)
    if not case.upstream_path:
        assert sent["model"] == case.routed_model
    if case.stream and asks_usage:
        assert sent.get("stream_options", {}).get("include_usage") is True, "the filter asks OpenAI for the usage chunk"
        rest = {k: v for k, v in sent.items() if k not in ("stream_options", "model")}
        assert rest == {k: v for k, v in case.body.items() if k not in ("stream_options", "model")}


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_dialect_is_routed_and_metered(envoy, mock, case):
    e2e_id = new_id()
    client_body = json.dumps(case.body).encode()
    before = envoy.stats()
    resp = envoy.post(
        case.path,
        client_body,
        {
            "x-e2e-id": e2e_id,
            "x-mock-input-tokens": str(INPUT),
            "x-mock-output-tokens": str(OUTPUT),
            "x-tollgate-team": "intruder",  # client-supplied: must be dropped, never trusted
            **case.extra_headers,
        },
    )
    check_client_response(case, resp)

    upstream = mock.request_with(e2e_id)
    assert upstream is not None, "the request never reached the upstream"
    check_upstream_body(case, client_body, upstream)
    assert "intruder" not in json.dumps(upstream["headers"]), "a client x-tollgate-* header reached the upstream"

    log = envoy.access_log_line(e2e_id)
    assert log["upstream_cluster"] == case.cluster, log
    assert log["dialect"] == case.dialect, log
    assert log["routed_model"] == case.routed_model, log
    assert log_int(log, "tokens_input") == INPUT, log
    assert log_int(log, "tokens_output") == case.output, log
    assert log_int(log, "cost_micros") == case.cost_micros, log
    assert log.get("estimated") in ("false", "0", None, "-"), log
    assert log["org"] == "acme", "the config's default principal applies"
    assert "intruder" not in json.dumps(log), "a client x-tollgate-* header was trusted"

    after = envoy.stats()
    assert_outcome_counted(before, after, case.dialect, "metered")
    assert stat_increase(before, after, "tokens", "input") == INPUT, after
    assert stat_increase(before, after, "tokens", "output") == case.output, after
    assert stat_increase(before, after, "tollgate_cost_micros") == case.cost_micros, after
