"""Prompts the provider holds, end to end (issue 19 §1; docs/enforcement.md, "Prompts the provider holds").

A request that continues a stored conversation (`previous_response_id`, `conversation`), reads a
Gemini `cachedContent`, or attaches a file or an image by id or URL is billed for far more prompt
than its body holds. The mock upstream bills such a prompt (`x-mock-input-tokens`, as a provider
would), 100 such requests arrive at once on a small budget, and real Envoy (2 workers) with the
real counter must still stop at the hard limit: the ledger total ends at most the limit, and the
filter's own `tollgate_enforce_excess_micros_total` (term (1) of the overspend bound) is 0,
because each reservation was the routed model's context window, a true bound.

Before the fix the reservation was the body size, and the same bursts spent several times the limit.
"""
import json
import tempfile
import threading

import pytest

import test_enforcement as te
from harness import request

BURST = 100

# (team/budget id, limit in USD, path, body, mock headers): one burst each. Each request's real
# cost (what the mock bills) is far above what its body bound would reserve, and BURST of them
# cost several times the limit.
SHAPES = {
    "prev-response": ("1.00", "/v1/responses",
                      {"model": "gpt-4o", "max_output_tokens": 100, "previous_response_id": "resp_0123456789abcdef",
                       "input": "And the next step?"},
                      {"x-mock-input-tokens": "100000", "x-mock-output-tokens": "50"}),
    "conversation": ("1.00", "/v1/responses",
                     {"model": "gpt-4o", "max_output_tokens": 100, "conversation": "conv_0123456789abcdef",
                      "input": "Continue."},
                     {"x-mock-input-tokens": "60000", "x-mock-output-tokens": "50"}),
    "gemini-cache": ("0.50", "/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse",
                     {"cachedContent": "cachedContents/e2e-cache-1",
                      "contents": [{"role": "user", "parts": [{"text": "What does section 4 say?"}]}],
                      "generationConfig": {"maxOutputTokens": 100}},
                     {"x-mock-input-tokens": "900000", "x-mock-cached-tokens": "850000", "x-mock-output-tokens": "50"}),
    "anthropic-file": ("2.00", "/v1/messages",  # the window at the 1-hour cache-write price: ~$1.20
                       {"model": "claude-sonnet-4-5", "max_tokens": 100,
                        "messages": [{"role": "user", "content": [
                            {"type": "document", "source": {"type": "file", "file_id": "file_011CNha8iCJcU1wXNR6q4V8w"}},
                            {"type": "text", "text": "Summarise this contract."}]}]},
                       {"x-mock-input-tokens": "80000", "x-mock-output-tokens": "50"}),
    "chat-image": ("0.50", "/v1/chat/completions",
                   {"model": "gpt-4o", "max_tokens": 100,
                    "messages": [{"role": "user", "content": [
                        {"type": "text", "text": "What is in this picture?"},
                        {"type": "image_url", "image_url": {"url": "https://example.com/photo.jpg"}}]}]},
                   {"x-mock-input-tokens": "5000", "x-mock-output-tokens": "50"}),
}

BUDGETS = [{"id": f"pb-{name}", "scope": f"team:pb-{name}", "limit": limit, "window": "none"}
           for name, (limit, *_rest) in SHAPES.items()]


@pytest.fixture(scope="module")
def counter():
    with tempfile.TemporaryDirectory(prefix="tollgate-prompt-bound-") as d:
        saved = te.BUDGETS
        te.BUDGETS = BUDGETS  # Counter writes the module's BUDGETS at start-up
        try:
            c = te.Counter(d)
        finally:
            te.BUDGETS = saved
        yield c
        c.close()


@pytest.fixture(scope="module")
def envoy(counter, mock):
    e = te.EnforcingEnvoy(counter.workdir, mock.port, counter.port, "gw-prompt-bound", concurrency=2)
    yield e
    e.close()


def to_micros(usd):
    whole, _, frac = usd.partition(".")
    return int(whole) * 1_000_000 + int((frac + "000000")[:6])


def burst(envoy, path, payload, headers):
    """BURST concurrent requests, released at once; returns (200s' request ids, 429 count). Any
    other status or a connection error fails the test."""
    start = threading.Barrier(BURST)
    results, errors = [], []
    lock = threading.Lock()

    def client():
        start.wait(timeout=30)
        try:
            r = request(envoy.listen_port, "POST", path, payload, headers, timeout=60)
        except OSError as e:
            with lock:
                errors.append(repr(e))
            return
        with lock:
            results.append(r)

    threads = [threading.Thread(target=client) for _ in range(BURST)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=90)
    assert not any(t.is_alive() for t in threads), "clients did not finish in time"
    assert not errors, f"{len(errors)} connection errors, first: {errors[:3]}"
    statuses = sorted({r.status for r in results})
    assert set(statuses) <= {200, 429}, f"only 200 or 429 expected, got {statuses}: {[r for r in results if r.status not in (200, 429)][:3]}"
    return [r.header("x-tollgate-request-id") for r in results if r.status == 200], sum(r.status == 429 for r in results)


def settled_ledger(counter, envoy, team, ok_ids):
    """The team's ledger once the gateway has delivered everything: exactly the 200s, once each."""
    te.wait_for(lambda: te.idle(envoy), 30, "the gateway to settle and deliver", envoy.enforcement_stats)
    te.wait_for(lambda: len(counter.ledger(team)) >= len(ok_ids), 15, "the ledger to hold every served request")
    ledger = counter.ledger(team)
    assert set(ledger) == set(ok_ids), "every 200 is in the ledger once, and nothing else"
    return [cost for cost, _, _ in ledger.values()]


@pytest.mark.parametrize("name", list(SHAPES))
def test_a_burst_of_requests_whose_prompt_the_provider_holds_stops_at_the_hard_limit(counter, envoy, name):
    limit_usd, path, body, mock_headers = SHAPES[name]
    limit = to_micros(limit_usd)
    team = f"pb-{name}"
    excess_before = envoy.enforcement_stats().get("tollgate_enforce_excess_micros_total", 0)
    headers = {"x-e2e-team": team, "x-e2e-user": "agent", "x-mock-gzip": "never", "x-mock-events": "4", **mock_headers}
    ok_ids, refused = burst(envoy, path, json.dumps(body), headers)
    assert ok_ids, "the budget admits at least one such request"
    assert refused, "the burst costs more than the budget, so some are refused"
    costs = settled_ledger(counter, envoy, team, ok_ids)
    total = sum(costs)
    # The burst is a real test of the bound: all of it would have cost several times the limit.
    assert min(costs) * BURST > 2 * limit, f"a request costs {min(costs)} µ$; {BURST} of them must overrun {limit}"
    excess = envoy.enforcement_stats().get("tollgate_enforce_excess_micros_total", 0) - excess_before
    assert excess == 0, f"a reservation was overrun by {excess} µ$: the window bound is a true bound"
    assert total <= limit, f"ledger {total} µ$ over the hard limit {limit} µ$"
    print(f"\n{name}: {len(ok_ids)} of {BURST} admitted, {refused} refused, spent {total}/{limit} µ$")


# The response-id memory (docs/enforcement.md, "The response-id memory"): a first turn through the
# gateway is billed a 20,000-token context; BURST continuations of it, each billed that context
# plus its own input (as a provider bills them), then BURST continuations of a response the
# gateway never saw, billed the same, each on its own $1.00 budget.
MEMORY_LIMIT_USD = "1.00"
MEMORY_FIRST_TURN = {"x-mock-input-tokens": "20000", "x-mock-output-tokens": "50"}
MEMORY_CONTINUATION = {"x-mock-input-tokens": "20080", "x-mock-output-tokens": "50"}
BUDGETS += [{"id": f"pb-memory-{case}", "scope": f"team:pb-memory-{case}", "limit": MEMORY_LIMIT_USD, "window": "none"}
            for case in ("remembered", "unknown")]


def test_prompt_bound_with_the_response_id_memory_admits_more_and_still_stops_at_the_hard_limit(counter, envoy):
    limit = to_micros(MEMORY_LIMIT_USD)
    common = {"x-e2e-user": "agent", "x-mock-gzip": "never", "x-mock-events": "4"}
    stat = lambda name: envoy.stats().get(f"wasmcustom.tollgate_context_memory_{name}_total", 0)
    first = request(envoy.listen_port, "POST", "/v1/responses",
                    json.dumps({"model": "gpt-4o", "max_output_tokens": 100, "input": "Read the repository and plan."}),
                    {"x-e2e-team": "pb-memory-first", **common, **MEMORY_FIRST_TURN}, timeout=30)
    assert first.status == 200, first
    response_id = first.json()["id"]
    assert response_id.startswith("resp_"), first.json()
    te.wait_for(lambda: stat("remembered") >= 1, 10, "the first turn's context to be remembered", envoy.stats)
    excess_before = envoy.enforcement_stats().get("tollgate_enforce_excess_micros_total", 0)
    hits_before, misses_before = stat("hits"), stat("misses")
    admitted = {}
    for case, previous in (("remembered", response_id), ("unknown", "resp_0000never0through0this0gateway")):
        team = f"pb-memory-{case}"
        body = {"model": "gpt-4o", "max_output_tokens": 100, "previous_response_id": previous, "input": "Next step?"}
        # The upstream holds each answer 1.5 s, so the whole burst is admitted against reservations
        # still outstanding: how many fit is then the bound's doing, not how soon early ones settle.
        ok_ids, refused = burst(envoy, "/v1/responses", json.dumps(body),
                                {"x-e2e-team": team, **common, **MEMORY_CONTINUATION, "x-mock-delay-ms": "1500"})
        assert ok_ids and refused, f"{case}: {len(ok_ids)} admitted, {refused} refused; the burst must overrun the budget"
        costs = settled_ledger(counter, envoy, team, ok_ids)
        assert min(costs) * BURST > 2 * limit, f"{case}: a request costs {min(costs)} µ$"
        assert sum(costs) <= limit, f"{case}: ledger {sum(costs)} µ$ over the hard limit {limit} µ$"
        admitted[case] = (len(ok_ids), sum(costs))
    excess = envoy.enforcement_stats().get("tollgate_enforce_excess_micros_total", 0) - excess_before
    assert excess == 0, f"a reservation was overrun by {excess} µ$: remembered context + body is a true bound"
    te.wait_for(lambda: stat("hits") - hits_before >= BURST, 10, "every remembered continuation to count as a hit", envoy.stats)
    assert stat("misses") - misses_before >= BURST, "every unknown continuation is a miss"
    (hit_ok, hit_spent), (miss_ok, miss_spent) = admitted["remembered"], admitted["unknown"]
    assert hit_ok >= 3 * miss_ok, f"the memory admits {hit_ok}, the window bound {miss_ok}"
    print(f"\nresponse-id memory: {hit_ok} of {BURST} admitted (spent {hit_spent}/{limit} µ$) "
          f"against {miss_ok} of {BURST} with the context-window bound (spent {miss_spent}/{limit} µ$)")


# Conversations with `context_memory.conversations` (docs/enforcement.md, "The response-id
# memory"): BURST conversations each get a first turn through the gateway, billed a 20,000-token
# context; then BURST concurrent turns, one on each of them, each billed that context plus its own
# input (as OpenAI bills a turn), then BURST turns on conversations the gateway never saw, billed
# the same, each burst on its own $1.00 budget. Another Envoy (its own shared data), the same
# counter.
BUDGETS += [{"id": f"pb-conv-{case}", "scope": f"team:pb-conv-{case}", "limit": MEMORY_LIMIT_USD, "window": "none"}
            for case in ("remembered", "unknown")]


@pytest.fixture(scope="module")
def conversation_envoy(counter, mock):
    saved = te.filter_config
    te.filter_config = lambda name, **kw: {**saved(name, **kw), "context_memory": {"conversations": True}}
    try:
        e = te.EnforcingEnvoy(counter.workdir, mock.port, counter.port, "gw-conversations", concurrency=2)
    finally:
        te.filter_config = saved
    yield e
    e.close()


def burst_each(envoy, path, payloads, headers):
    """One request per payload, released at once; returns (200s' request ids, 429 count). Any
    other status (a 400 for a locked conversation too) or a connection error fails the test."""
    start = threading.Barrier(len(payloads))
    results, errors = [], []
    lock = threading.Lock()

    def client(payload):
        start.wait(timeout=30)
        try:
            r = request(envoy.listen_port, "POST", path, payload, headers, timeout=60)
        except OSError as e:
            with lock:
                errors.append(repr(e))
            return
        with lock:
            results.append(r)

    threads = [threading.Thread(target=client, args=(p,)) for p in payloads]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=90)
    assert not any(t.is_alive() for t in threads), "clients did not finish in time"
    assert not errors, f"{len(errors)} connection errors, first: {errors[:3]}"
    statuses = sorted({r.status for r in results})
    assert set(statuses) <= {200, 429}, f"only 200 or 429 expected, got {statuses}: {[r for r in results if r.status not in (200, 429)][:3]}"
    return [r.header("x-tollgate-request-id") for r in results if r.status == 200], sum(r.status == 429 for r in results)


def test_conversation_memory_admits_more_than_the_window_bound_and_still_stops_at_the_hard_limit(counter, conversation_envoy):
    envoy = conversation_envoy
    limit = to_micros(MEMORY_LIMIT_USD)
    common = {"x-e2e-user": "agent", "x-mock-gzip": "never", "x-mock-events": "4"}
    stat = lambda name: envoy.stats().get(f"wasmcustom.tollgate_context_memory_{name}_total", 0)
    turn = lambda conversation: json.dumps({"model": "gpt-4o", "max_output_tokens": 100, "conversation": conversation, "input": "Next step?"})
    known = [f"conv_e2e{i:04d}0123456789abcdef" for i in range(BURST)]
    # First turns, ten at a time on distinct conversations, as a team without a budget.
    ok_ids, refused = [], 0
    for start in range(0, BURST, 10):
        ids, no = burst_each(envoy, "/v1/responses", [turn(c) for c in known[start:start + 10]],
                             {"x-e2e-team": "pb-conv-first", **common, **MEMORY_FIRST_TURN})
        ok_ids += ids
        refused += no
    assert (len(ok_ids), refused) == (BURST, 0), "every first turn is served"
    te.wait_for(lambda: stat("remembered") >= BURST, 10, "every first turn's context to be remembered", envoy.stats)
    excess_before = envoy.enforcement_stats().get("tollgate_enforce_excess_micros_total", 0)
    hits_before, misses_before = stat("hits"), stat("misses")
    admitted = {}
    for case, conversations in (("remembered", known), ("unknown", [f"conv_never{i:04d}0through0this0gateway" for i in range(BURST)])):
        team = f"pb-conv-{case}"
        # The upstream holds each answer 1.5 s: the whole burst is admitted against reservations
        # still outstanding, so how many fit is the bound's doing.
        ok_ids, refused = burst_each(envoy, "/v1/responses", [turn(c) for c in conversations],
                                     {"x-e2e-team": team, **common, **MEMORY_CONTINUATION, "x-mock-delay-ms": "1500"})
        assert ok_ids and refused, f"{case}: {len(ok_ids)} admitted, {refused} refused; the burst must overrun the budget"
        costs = settled_ledger(counter, envoy, team, ok_ids)
        assert min(costs) * BURST > 2 * limit, f"{case}: a request costs {min(costs)} µ$"
        assert sum(costs) <= limit, f"{case}: ledger {sum(costs)} µ$ over the hard limit {limit} µ$"
        admitted[case] = (len(ok_ids), sum(costs))
    excess = envoy.enforcement_stats().get("tollgate_enforce_excess_micros_total", 0) - excess_before
    assert excess == 0, f"a reservation was overrun by {excess} µ$: the last turn's bill + the body is a true bound"
    te.wait_for(lambda: stat("hits") - hits_before >= BURST, 10, "every turn on a known conversation to count as a hit", envoy.stats)
    assert stat("misses") - misses_before >= BURST, "every turn on an unknown conversation reserved the window"
    assert stat("conversation_locked") == 0, "distinct conversations never wait on each other's lock"
    (hit_ok, hit_spent), (miss_ok, miss_spent) = admitted["remembered"], admitted["unknown"]
    assert hit_ok >= 3 * miss_ok, f"the memory admits {hit_ok}, the window bound {miss_ok}"
    print(f"\nconversation memory: {hit_ok} of {BURST} admitted (spent {hit_spent}/{limit} µ$) "
          f"against {miss_ok} of {BURST} with the context-window bound (spent {miss_spent}/{limit} µ$)")


# Gemini context caches (docs/enforcement.md, "Gemini context caches"): a cache of 400,000 tokens
# is created through the gateway (the mock answers as Google does, with usageMetadata.totalTokenCount
# and expireTime); then BURST concurrent streamGenerateContent reading it, each billed the cache
# (at the cache-read price) plus its own contents, then BURST reading a cache the gateway never
# saw created, billed the same, each burst on its own $0.50 budget.
GCACHE_LIMIT_USD = "0.50"
GCACHE_TOKENS = 400_000
GCACHE_READ = {"x-mock-input-tokens": str(GCACHE_TOKENS + 40), "x-mock-cached-tokens": str(GCACHE_TOKENS), "x-mock-output-tokens": "50"}
BUDGETS += [{"id": f"pb-gcache-{case}", "scope": f"team:pb-gcache-{case}", "limit": GCACHE_LIMIT_USD, "window": "none"}
            for case in ("remembered", "unknown")]


def test_gemini_cache_created_through_the_gateway_admits_more_than_the_window_bound_and_stops_at_the_hard_limit(counter, envoy):
    limit = to_micros(GCACHE_LIMIT_USD)
    common = {"x-e2e-user": "agent", "x-mock-gzip": "never", "x-mock-events": "4"}
    stat = lambda name: envoy.stats().get(f"wasmcustom.tollgate_context_memory_{name}_total", 0)
    remembered_before = stat("remembered")
    created = request(envoy.listen_port, "POST", "/v1beta/cachedContents",
                      json.dumps({"model": "models/gemini-2.5-flash", "ttl": "3600s",
                                  "contents": [{"role": "user", "parts": [{"text": "The whole contract, 400k tokens of it."}]}]}),
                      {"x-e2e-team": "pb-gcache-first", **common, "x-mock-input-tokens": str(GCACHE_TOKENS)}, timeout=30)
    assert created.status == 200, created
    cache = created.json()
    assert cache["name"].startswith("cachedContents/") and cache["usageMetadata"]["totalTokenCount"] == GCACHE_TOKENS, cache
    te.wait_for(lambda: stat("remembered") > remembered_before, 10, "the cache's size to be remembered", envoy.stats)
    excess_before = envoy.enforcement_stats().get("tollgate_enforce_excess_micros_total", 0)
    hits_before, misses_before = stat("hits"), stat("misses")
    admitted = {}
    for case, name in (("remembered", cache["name"]), ("unknown", "cachedContents/never-created-through-this-gateway")):
        team = f"pb-gcache-{case}"
        body = {"cachedContent": name, "contents": [{"role": "user", "parts": [{"text": "What does section 4 say?"}]}],
                "generationConfig": {"maxOutputTokens": 100}}
        ok_ids, refused = burst(envoy, "/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse", json.dumps(body),
                                {"x-e2e-team": team, **common, **GCACHE_READ, "x-mock-delay-ms": "1500"})
        assert ok_ids and refused, f"{case}: {len(ok_ids)} admitted, {refused} refused; the burst must overrun the budget"
        costs = settled_ledger(counter, envoy, team, ok_ids)
        assert min(costs) * BURST > 2 * limit, f"{case}: a request costs {min(costs)} µ$"
        assert sum(costs) <= limit, f"{case}: ledger {sum(costs)} µ$ over the hard limit {limit} µ$"
        admitted[case] = (len(ok_ids), sum(costs))
    excess = envoy.enforcement_stats().get("tollgate_enforce_excess_micros_total", 0) - excess_before
    assert excess == 0, f"a reservation was overrun by {excess} µ$: the cache's size + the body is a true bound"
    te.wait_for(lambda: stat("hits") - hits_before >= BURST, 10, "every read of the created cache to count as a hit", envoy.stats)
    assert stat("misses") - misses_before >= BURST, "every read of an unknown cache is a miss"
    (hit_ok, hit_spent), (miss_ok, miss_spent) = admitted["remembered"], admitted["unknown"]
    assert hit_ok > miss_ok, f"the memory admits {hit_ok}, the window bound {miss_ok}"
    print(f"\ngemini cache memory: {hit_ok} of {BURST} admitted (spent {hit_spent}/{limit} µ$) "
          f"against {miss_ok} of {BURST} with the context-window bound (spent {miss_spent}/{limit} µ$)")
