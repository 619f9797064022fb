"""The client's stream is the client's, with the official OpenAI Python SDK and a strict client.

To meter an OpenAI stream, the filter asks the upstream for usage (`stream_options.include_usage`)
when the client did not. OpenAI then ends the stream with a chunk whose `choices` is empty; code
as common as `chunk.choices[0].delta` fails on it. The filter reads that chunk and leaves it out
of the client's stream; a client that asked for usage itself still gets it. The mock upstream
sends the usage chunk exactly as OpenAI does (`"usage": null` on every chunk, then
`"choices": []` with the usage, then `data: [DONE]`), and is told the exact usage to report, so
the cost is exact: gpt-4o at $2.50/$10 per Mtok, gpt-3.5-turbo-instruct at $1.50/$2.
"""
import json

import openai
import pytest

from checks import log_int
from harness import new_id, parse_sse

INPUT, OUTPUT = 1000, 100
MESSAGES = [{"role": "user", "content": "Say hello, e2e."}]


def sdk(envoy, e2e_id, **headers):
    return openai.OpenAI(
        api_key="sk-not-a-real-key",
        base_url=f"http://127.0.0.1:{envoy.listen_port}/v1",
        max_retries=0,
        timeout=20,
        default_headers={"x-e2e-id": e2e_id, "x-mock-input-tokens": str(INPUT), "x-mock-output-tokens": str(OUTPUT), **headers},
    )


def expect_metered(envoy, e2e_id, cost_micros):
    log = envoy.access_log_line(e2e_id)
    assert (log_int(log, "tokens_input"), log_int(log, "tokens_output"), log_int(log, "cost_micros")) == (INPUT, OUTPUT, cost_micros), log
    assert log.get("estimated") in ("false", "0", None, "-"), log


@pytest.mark.parametrize("chunk_bytes", [None, "7", "61"], ids=["events", "7-byte-writes", "61-byte-writes"])
def test_the_openai_sdk_indexes_choices_on_every_chunk_of_a_metered_stream(envoy, mock, chunk_bytes):
    e2e_id = new_id()
    extra = {"x-mock-chunk-bytes": chunk_bytes, "x-mock-chunk-delay-ms": "1"} if chunk_bytes else {}
    client = sdk(envoy, e2e_id, **extra)
    text, chunks = "", 0
    with client.chat.completions.create(model="e2e-chat", messages=MESSAGES, stream=True) as stream:
        for chunk in stream:
            # What tutorials and many clients do; an empty `choices` raises IndexError here.
            text += chunk.choices[0].delta.content or ""
            assert chunk.usage is None, "the client did not ask for usage"
            chunks += 1
    assert text.startswith("Hello from mock"), text
    assert chunks > 2
    upstream = mock.request_with(e2e_id)
    assert json.loads(upstream["body_bytes"])["stream_options"] == {"include_usage": True}, "the filter asked for usage"
    expect_metered(envoy, e2e_id, 2500 + 1000)


def test_a_client_that_asks_for_usage_gets_the_usage_chunk(envoy, mock):
    e2e_id = new_id()
    client = sdk(envoy, e2e_id)
    usage_chunks = []
    with client.chat.completions.create(
        model="e2e-chat", messages=MESSAGES, stream=True, stream_options={"include_usage": True}
    ) as stream:
        for chunk in stream:
            if chunk.usage is not None:
                usage_chunks.append(chunk)
    assert len(usage_chunks) == 1, usage_chunks
    assert usage_chunks[0].choices == []
    assert (usage_chunks[0].usage.prompt_tokens, usage_chunks[0].usage.completion_tokens) == (INPUT, OUTPUT)
    expect_metered(envoy, e2e_id, 2500 + 1000)


def test_completions_streams_too(envoy, mock):
    e2e_id = new_id()
    client = sdk(envoy, e2e_id)
    text = ""
    for chunk in client.completions.create(model="e2e-instruct", prompt="Say hello", stream=True):
        text += chunk.choices[0].text
    assert text.startswith("Hello from mock"), text
    expect_metered(envoy, e2e_id, 1500 + 200)


@pytest.mark.parametrize(
    "path,body",
    [
        ("/v1/chat/completions", {"model": "e2e-chat", "messages": MESSAGES, "stream": True}),
        ("/openai/deployments/e2e-deployment/chat/completions?api-version=2024-10-21", {"messages": MESSAGES, "stream": True}),
    ],
    ids=["openai", "azure"],
)
def test_a_strict_client_finds_choices_0_in_every_event_and_the_stream_ends_with_done(envoy, mock, path, body):
    e2e_id = new_id()
    resp = envoy.post(
        path,
        json.dumps(body),
        {"x-e2e-id": e2e_id, "x-mock-input-tokens": str(INPUT), "x-mock-output-tokens": str(OUTPUT),
         "x-mock-chunk-bytes": "13", "x-mock-chunk-delay-ms": "1"},
    )
    assert resp.status == 200, resp
    assert resp.body.endswith(b"data: [DONE]\n\n"), resp.body[-80:]
    events = [data for _, data in parse_sse(resp.body)]
    assert events[-1] == "[DONE]"
    for data in events[:-1]:
        chunk = json.loads(data)
        if path.startswith("/openai/") and chunk.get("prompt_filter_results"):
            continue  # Azure's own first chunk (it has no choices either way; the mock sends it as Azure does)
        assert chunk["choices"][0]["index"] == 0, data
        assert chunk.get("usage") is None, data
    expect_metered(envoy, e2e_id, 2500 + 1000)
