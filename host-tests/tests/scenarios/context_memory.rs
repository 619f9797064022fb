//! The response-id memory (issue 19 §1, `core::context_memory`), through the real filter: a
//! request that continues a response this gateway metered (`previous_response_id`) reserves the
//! context that response was billed plus its own body, not the model's context window; an id the
//! gateway never saw, an expired one or one evicted by the cap reserves the window; every worker
//! sees what any worker remembered; the response may arrive in chunks of any size.

use crate::common::*;
use crate::prompt_bound::{config as window_config, WINDOW};
use serde_json::{json, Value};
use tollgate_host_tests::fixtures::{refs, TEST_CONFIG};
use tollgate_host_tests::*;

/// What the first turn is billed: its context is 5,050 tokens, far below the 100,000 window.
const INPUT: u64 = 5_000;
const OUTPUT: u64 = 50;

/// The prompt-bound scenarios' config (enforcement, every model's window `WINDOW`), with
/// `context_memory` set when given.
fn config(memory: Option<Value>) -> String {
    let mut v: Value = serde_json::from_str(&window_config(Some(WINDOW), None)).expect("JSON");
    if let Some(memory) = memory {
        v["context_memory"] = memory;
    }
    v.to_string()
}

/// A gateway whose counter grants each team the headroom its name starts with (`h50000-…`
/// gets 50,000 µ$; anything else a billion) and never acknowledges usage (it is not under test).
fn gateway(config: &str, workers: usize) -> Gateway {
    let gw = Gateway::new(config).workers(workers);
    gw.auto_answer(|call| {
        if call.path() != "/v1/leases" {
            return Answer::status(503);
        }
        let req = call.json();
        let scopes: Vec<Value> = req["scopes"].as_array().cloned().unwrap_or_default();
        let headroom = scopes
            .iter()
            .filter_map(|s| s.as_str()?.strip_prefix("team:h"))
            .find_map(|rest| rest.split('-').next()?.parse::<i64>().ok())
            .unwrap_or(1_000_000_000);
        let now = call.dispatched_at_ms;
        let budgets: Vec<Value> = scopes
            .iter()
            .map(|scope| {
                json!({"budget_id": format!("b-{}", scope.as_str().unwrap_or("?")), "scope": scope, "mode": "enforce",
                       "granted_micros": headroom, "spent_micros": 0, "limit_micros": headroom, "hard_limit_micros": headroom,
                       "soft_threshold_pct": 80, "status": "ok", "resets_at": now / 1000 + 3600, "lease_expires_at_ms": now + 60_000})
            })
            .collect();
        Answer::json(200, &json!({"budgets": budgets}))
    });
    gw
}

fn responses_json(id: &str) -> Vec<u8> {
    json!({"id": id, "object": "response", "status": "completed", "model": "tg-chat",
           "output": [{"type": "message", "id": "msg_1", "role": "assistant", "content": [{"type": "output_text", "text": "Here."}]}],
           "usage": {"input_tokens": INPUT, "input_tokens_details": {"cached_tokens": 0}, "output_tokens": OUTPUT, "output_tokens_details": {"reasoning_tokens": 0}}})
    .to_string()
    .into_bytes()
}

fn responses_sse(id: &str) -> Vec<u8> {
    let pending = json!({"id": id, "object": "response", "status": "in_progress", "model": "tg-chat", "output": [], "usage": null});
    let done = serde_json::from_slice::<Value>(&responses_json(id)).expect("JSON");
    let events = [
        ("response.created", json!({"type": "response.created", "sequence_number": 0, "response": pending})),
        ("response.output_text.delta", json!({"type": "response.output_text.delta", "sequence_number": 1, "item_id": "msg_1", "output_index": 0, "content_index": 0, "delta": "Here."})),
        ("response.completed", json!({"type": "response.completed", "sequence_number": 2, "response": done})),
    ];
    events.iter().map(|(name, data)| format!("event: {name}\ndata: {data}\n\n")).collect::<String>().into_bytes()
}

/// A first turn as `team` on `worker`, answered with `response` in `chunk`-byte pieces.
fn first_turn(gw: &Gateway, worker: usize, team: &str, response: &[u8], sse: bool, chunk: usize) {
    let body = json!({"model": "test-chat", "max_output_tokens": 100, "input": "Start.", "stream": sse}).to_string().into_bytes();
    let mut s = gw.stream_on(worker);
    s.send_request(&refs(&with(post("/v1/responses", &body), "x-auth-team", team)), &body);
    gw.advance(std::time::Duration::from_millis(1));
    assert!(s.upstream().complete, "the first turn is admitted: {:?}", s.client().local_reply);
    let content_type = if sse { "text/event-stream" } else { "application/json" };
    s.respond_chunked(&[(":status", "200"), ("content-type", content_type)], response, &[chunk]);
    assert!(s.finished() || s.client().status() == Some(200), "the first turn ends");
}

fn continuation(id: &str) -> Vec<u8> {
    json!({"model": "test-chat", "max_output_tokens": 100, "previous_response_id": id, "input": "And then?"}).to_string().into_bytes()
}

/// Continues `body` as `team` on `worker`: admitted (true) or refused with 429 (false, with the
/// refusal's text).
fn continue_as(gw: &Gateway, worker: usize, team: &str, body: &[u8]) -> Result<(), String> {
    let mut s = gw.stream_on(worker);
    s.send_request(&refs(&with(post("/v1/responses", body), "x-auth-team", team)), body);
    gw.advance(std::time::Duration::from_millis(1));
    match s.client().local_reply {
        None if s.upstream().complete => Ok(()),
        _ => Err(s.expect_local_response(429).body_text()),
    }
}

/// A continuation's worst case with a remembered context: (context + forwarded body bytes) at
/// the dearest prompt price (4 µ$) and 100 output tokens at 15 µ$. The forwarded body names
/// `tg-chat` where the client wrote `test-chat`.
fn remembered_worst_case(body: &[u8]) -> u64 {
    (INPUT + OUTPUT + body.len() as u64 - 2) * 4 + 100 * 15
}

fn usd(micros: u64) -> String {
    format!("{}.{:06}", micros / 1_000_000, micros % 1_000_000)
}

fn counter(gw: &Gateway, what: &str) -> u64 {
    flush_counters(gw);
    gw.counter(&format!("tollgate_context_memory_{what}_total"))
}

#[test]
fn a_continuation_reserves_the_remembered_context_plus_its_body_whatever_the_chunking() {
    let window_worst = WINDOW * 4 + 100 * 15;
    for sse in [false, true] {
        for chunk in [1, 7, 64, usize::MAX] {
            let label = format!("sse={sse} chunk={chunk}");
            let gw = gateway(&config(None), 1);
            let id = "resp_0123456789abcdef";
            let response = if sse { responses_sse(id) } else { responses_json(id) };
            first_turn(&gw, 0, "rich", &response, sse, chunk);
            let body = continuation(id);
            let worst = remembered_worst_case(&body);
            assert!(worst < 50_000 && window_worst > 50_000, "the scenario tells the two bounds apart");
            // Refused on 1 µ$ of headroom, naming exactly the remembered worst case.
            let refused = continue_as(&gw, 0, "h1-a", &body).expect_err(&label);
            assert!(refused.contains(&usd(worst)), "{label}: the reservation is the known prefix plus the body, ${}: {refused}", usd(worst));
            // Admitted on 50,000 µ$, which the window's worst case would not fit in.
            assert_eq!(continue_as(&gw, 0, "h50000-b", &body), Ok(()), "{label}");
            assert_eq!((counter(&gw, "hits"), counter(&gw, "misses"), counter(&gw, "remembered")), (2, 0, 1), "{label}");
        }
    }
}

#[test]
fn an_unknown_id_or_another_provider_held_shape_reserves_the_window() {
    let gw = gateway(&config(None), 1);
    first_turn(&gw, 0, "rich", &responses_json("resp_known"), false, usize::MAX);
    let window_worst = usd(WINDOW * 4 + 100 * 15);
    let refused = continue_as(&gw, 0, "h50000-a", &continuation("resp_never_seen_here")).expect_err("a miss");
    assert!(refused.contains(&window_worst), "a miss reserves the window (${window_worst}): {refused}");
    assert_eq!(counter(&gw, "misses"), 1);
    // A remembered id, but the request also searches the web: the window, and no lookup at all.
    let with_tool = json!({"model": "test-chat", "max_output_tokens": 100, "previous_response_id": "resp_known", "input": "q",
                           "tools": [{"type": "web_search_preview"}]})
    .to_string()
    .into_bytes();
    let refused = continue_as(&gw, 0, "h50000-b", &with_tool).expect_err("a hosted tool needs the window");
    assert!(refused.contains(&window_worst), "{refused}");
    assert_eq!((counter(&gw, "hits"), counter(&gw, "misses")), (0, 1));
}

#[test]
fn an_entry_lives_ttl_s_seconds() {
    let gw = gateway(&config(Some(json!({"ttl_s": 60}))), 1);
    first_turn(&gw, 0, "rich", &responses_json("resp_ttl"), false, usize::MAX);
    gw.advance(std::time::Duration::from_secs(59));
    assert_eq!(continue_as(&gw, 0, "h50000-a", &continuation("resp_ttl")), Ok(()), "live at 59 s");
    gw.advance(std::time::Duration::from_secs(2));
    assert!(continue_as(&gw, 0, "h50000-b", &continuation("resp_ttl")).is_err(), "expired at 61 s: the window again");
    assert_eq!((counter(&gw, "hits"), counter(&gw, "misses")), (1, 1));
}

#[test]
fn the_cap_evicts_and_the_memory_never_grows_past_its_keys() {
    // Eight entries: one shared-data key of eight.
    let gw = gateway(&config(Some(json!({"max_entries": 8}))), 1);
    for i in 0..9 {
        gw.advance(std::time::Duration::from_millis(10));
        first_turn(&gw, 0, "rich", &responses_json(&format!("resp_cap_{i}")), false, usize::MAX);
    }
    let keys: Vec<String> = gw.shared_data_keys().into_iter().filter(|k| k.starts_with("tollgate.ctx")).collect();
    assert_eq!(keys.len(), 1, "{keys:?}");
    let (bytes, _) = gw.shared_data(&keys[0]).expect("the bucket");
    assert!(bytes.len() < 8 * 80, "eight short entries: {} bytes", bytes.len());
    assert_eq!(counter(&gw, "evictions"), 1, "the ninth pushed the oldest out");
    assert!(continue_as(&gw, 0, "h50000-a", &continuation("resp_cap_0")).is_err(), "the oldest was evicted");
    assert_eq!(continue_as(&gw, 0, "h50000-b", &continuation("resp_cap_1")), Ok(()));
    assert_eq!(continue_as(&gw, 0, "h50000-c", &continuation("resp_cap_8")), Ok(()));
}

#[test]
fn every_worker_sees_what_another_remembered() {
    let gw = gateway(&config(None), 2);
    first_turn(&gw, 0, "rich", &responses_sse("resp_shared"), true, 5);
    assert_eq!(continue_as(&gw, 1, "h50000-a", &continuation("resp_shared")), Ok(()), "worker 1 continues worker 0's response");
    assert_eq!(counter(&gw, "hits"), 1);
}

#[test]
fn nothing_is_remembered_without_enforcement_when_disabled_or_from_a_failed_response() {
    let ctx_keys = |gw: &Gateway| gw.shared_data_keys().into_iter().filter(|k| k.starts_with("tollgate.ctx")).count();
    // Metering only: no reservation to tighten, no memory.
    let gw = Gateway::new(TEST_CONFIG);
    let body = json!({"model": "test-chat", "input": "Start."}).to_string().into_bytes();
    let mut s = gw.stream();
    s.send_request(&refs(&post("/v1/responses", &body)), &body);
    s.respond(&[(":status", "200"), ("content-type", "application/json")], &responses_json("resp_metered"));
    assert_eq!(ctx_keys(&gw), 0, "metering only keeps no memory");
    // Disabled.
    let gw = gateway(&config(Some(json!({"enabled": false}))), 1);
    first_turn(&gw, 0, "rich", &responses_json("resp_off"), false, usize::MAX);
    assert_eq!(ctx_keys(&gw), 0);
    assert!(continue_as(&gw, 0, "h50000-a", &continuation("resp_off")).is_err(), "the window, as before");
    // An upstream error with a usage-looking body is not a response anyone can continue.
    let gw = gateway(&config(None), 1);
    let body = json!({"model": "test-chat", "max_output_tokens": 100, "input": "Start."}).to_string().into_bytes();
    let mut s = gw.stream();
    s.send_request(&refs(&with(post("/v1/responses", &body), "x-auth-team", "rich")), &body);
    gw.advance(std::time::Duration::from_millis(1));
    s.respond(&[(":status", "500"), ("content-type", "application/json")], &responses_json("resp_500"));
    assert_eq!(ctx_keys(&gw), 0);
}

// ---- Gemini context caches created through the gateway ----------------------------------------

/// What the created cache holds: far below the 100,000 window.
const CACHE_TOKENS: u64 = 10_000;

/// `ms` since the epoch as RFC 3339 (what Google writes in `expireTime`), for the host's clock.
fn rfc3339(ms: u64) -> String {
    let (days, rest) = ((ms / 86_400_000) as i64, ms % 86_400_000);
    // Civil date from days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let (h, m, s, milli) = (rest / 3_600_000, rest / 60_000 % 60, rest / 1000 % 60, rest % 1000);
    format!("{year:04}-{month:02}-{day:02}T{h:02}:{m:02}:{s:02}.{milli:03}456Z")
}

fn cache_json(gw: &Gateway, name: &str, model: &str, expires_in_s: u64) -> Vec<u8> {
    let now = gw.now_ms();
    json!({"name": name, "model": model, "displayName": "contract",
           "createTime": rfc3339(now), "updateTime": rfc3339(now), "expireTime": rfc3339(now + expires_in_s * 1000),
           "usageMetadata": {"totalTokenCount": CACHE_TOKENS}})
    .to_string()
    .into_bytes()
}

fn cache_request(model: &str) -> Vec<u8> {
    json!({"model": model, "displayName": "contract", "ttl": "600s",
           "systemInstruction": {"parts": [{"text": "You answer questions about the contract."}]},
           "contents": [{"role": "user", "parts": [{"text": "THE CONTRACT. Section 1. ... Section 4. ..."}]}]})
    .to_string()
    .into_bytes()
}

/// Creates a cache through the gateway as `team` on `worker`, answered with `response` (status
/// `status`) in `chunk`-byte pieces; returns the stream.
fn create_cache(gw: &Gateway, worker: usize, team: &str, request: &[u8], status: &str, response: &[u8], chunk: usize) -> Stream {
    let mut s = gw.stream_on(worker);
    s.send_request(&refs(&with(post("/v1beta/cachedContents", request), "x-auth-team", team)), request);
    gw.advance(std::time::Duration::from_millis(1));
    assert!(s.upstream().complete, "the creation is admitted: {:?}", s.client().local_reply);
    s.respond_chunked(&[(":status", status), ("content-type", "application/json")], response, &[chunk]);
    s
}

/// A generation on `model` (a Gemini path model) reading `cache`, capped at 100 output tokens.
fn cached_generation(cache: &str) -> Vec<u8> {
    json!({"cachedContent": cache, "contents": [{"role": "user", "parts": [{"text": "What does section 4 say?"}]}],
           "generationConfig": {"maxOutputTokens": 100}})
    .to_string()
    .into_bytes()
}

/// Sends a generation as `team` on `worker`: admitted (true) or refused with 429 (the refusal's text).
fn generate_as(gw: &Gateway, worker: usize, team: &str, model: &str, body: &[u8]) -> Result<(), String> {
    let path = format!("/v1beta/models/{model}:generateContent");
    let mut s = gw.stream_on(worker);
    s.send_request(&refs(&with(post(&path, body), "x-auth-team", team)), body);
    gw.advance(std::time::Duration::from_millis(1));
    match s.client().local_reply {
        None if s.upstream().complete => Ok(()),
        _ => Err(s.expect_local_response(429).body_text()),
    }
}

/// A cached generation's worst case on tg-gemini with the cache remembered: (cache + body bytes,
/// the body forwarded as sent) at the dearest prompt price (3 µ$) and 100 output tokens at 10 µ$.
fn cached_worst_case(body: &[u8]) -> u64 {
    (CACHE_TOKENS + body.len() as u64) * 3 + 100 * 10
}

#[test]
fn a_generation_reading_a_cache_created_here_reserves_the_cache_plus_its_body() {
    let window_worst = WINDOW * 3 + 100 * 10;
    for chunk in [1, 7, usize::MAX] {
        let label = format!("chunk={chunk}");
        let gw = gateway(&config(None), 1);
        let name = "cachedContents/4d2kd477o3pg";
        let s = create_cache(&gw, 0, "rich", &cache_request("models/tg-gemini"), "200", &cache_json(&gw, name, "models/tg-gemini", 600), chunk);
        // The creation itself: the request forwarded untouched, its tokens billed at the input
        // price (2 µ$ each on tg-gemini), no output.
        assert_eq!(s.upstream().body, cache_request("models/tg-gemini"), "{label}: the cache's model is never rewritten");
        let st = |k: &str| s.filter_state(&format!("wasm.tollgate.{k}")).unwrap_or_default();
        assert_eq!([st("tokens_input"), st("tokens_output"), st("cost_micros"), st("outcome")], [CACHE_TOKENS.to_string(), "0".into(), (CACHE_TOKENS * 2).to_string(), "metered".into()], "{label}");
        assert_eq!((st("requested_model"), st("routed_model")), ("tg-gemini".into(), "tg-gemini".into()), "{label}");

        // test-gemini is routed to tg-gemini: the generation runs on the cache's model.
        let body = cached_generation(name);
        let worst = cached_worst_case(&body);
        assert!(worst < 50_000 && window_worst > 50_000, "the scenario tells the two bounds apart");
        let refused = generate_as(&gw, 0, "h1-a", "test-gemini", &body).expect_err(&label);
        assert!(refused.contains(&usd(worst)), "{label}: the reservation is the cache plus the body, ${}: {refused}", usd(worst));
        assert_eq!(generate_as(&gw, 0, "h50000-b", "test-gemini", &body), Ok(()), "{label}: fits where the window would not");
        assert_eq!((counter(&gw, "hits"), counter(&gw, "misses"), counter(&gw, "remembered")), (2, 0, 1), "{label}");
    }
}

#[test]
fn an_unknown_cache_another_model_or_another_shape_reserves_the_window() {
    let gw = gateway(&config(None), 2);
    let name = "cachedContents/known";
    create_cache(&gw, 0, "rich", &cache_request("models/tg-gemini"), "200", &cache_json(&gw, name, "models/tg-gemini", 600), usize::MAX);
    let gemini_window = usd(WINDOW * 3 + 100 * 10);
    // Another worker sees it.
    assert_eq!(generate_as(&gw, 1, "h50000-a", "test-gemini", &cached_generation(name)), Ok(()));
    // A cache this gateway never saw created.
    let refused = generate_as(&gw, 1, "h50000-b", "test-gemini", &cached_generation("cachedContents/elsewhere")).expect_err("a miss");
    assert!(refused.contains(&gemini_window), "a miss reserves the window (${gemini_window}): {refused}");
    // The cache's name on another model (tg-chat, 4 µ$ a prompt token, 15 an output token).
    let chat_window = usd(WINDOW * 4 + 100 * 15);
    let refused = generate_as(&gw, 0, "h50000-c", "tg-chat", &cached_generation(name)).expect_err("another model");
    assert!(refused.contains(&chat_window), "another model's tokenizer: the window (${chat_window}): {refused}");
    assert_eq!((counter(&gw, "hits"), counter(&gw, "misses")), (1, 2));
    // Known, but the request also searches the web: the window, and no lookup at all.
    let with_tool = json!({"cachedContent": name, "contents": [{"role": "user", "parts": [{"text": "q"}]}],
                           "tools": [{"googleSearch": {}}], "generationConfig": {"maxOutputTokens": 100}})
    .to_string()
    .into_bytes();
    let refused = generate_as(&gw, 0, "h50000-d", "test-gemini", &with_tool).expect_err("a hosted tool needs the window");
    assert!(refused.contains(&gemini_window), "{refused}");
    assert_eq!((counter(&gw, "hits"), counter(&gw, "misses")), (1, 2));
}

#[test]
fn a_cache_is_forgotten_when_the_provider_expires_it() {
    // The memory would keep it an hour; the cache itself expires in 30 s.
    let gw = gateway(&config(None), 1);
    let name = "cachedContents/short";
    create_cache(&gw, 0, "rich", &cache_request("models/tg-gemini"), "200", &cache_json(&gw, name, "models/tg-gemini", 30), 5);
    gw.advance(std::time::Duration::from_secs(28));
    assert_eq!(generate_as(&gw, 0, "h50000-a", "test-gemini", &cached_generation(name)), Ok(()), "live at 28 s");
    gw.advance(std::time::Duration::from_secs(3));
    assert!(generate_as(&gw, 0, "h50000-b", "test-gemini", &cached_generation(name)).is_err(), "past its expireTime: the window again");
    assert_eq!((counter(&gw, "hits"), counter(&gw, "misses")), (1, 1));
}

#[test]
fn a_failed_or_rerouted_creation_remembers_nothing() {
    let ctx_keys = |gw: &Gateway| gw.shared_data_keys().into_iter().filter(|k| k.starts_with("tollgate.ctx")).count();
    let gw = gateway(&config(None), 1);
    // The upstream refused it (an error body, and a 500 with a cache-looking body).
    let error = json!({"error": {"code": 400, "message": "Cached content is too small", "status": "INVALID_ARGUMENT"}}).to_string().into_bytes();
    create_cache(&gw, 0, "rich", &cache_request("models/tg-gemini"), "400", &error, usize::MAX);
    create_cache(&gw, 0, "rich", &cache_request("models/tg-gemini"), "500", &cache_json(&gw, "cachedContents/x", "models/tg-gemini", 600), usize::MAX);
    assert_eq!(ctx_keys(&gw), 0);
    // test-gemini is served as tg-gemini here: a cache for test-gemini would never be read by
    // the generations it is meant for, so it is refused in Gemini's error shape, naming the model.
    let body = cache_request("models/test-gemini");
    let mut s = gw.stream();
    s.send_request(&refs(&with(post("/v1beta/cachedContents", &body), "x-auth-team", "rich")), &body);
    let client = s.expect_local_response(400);
    let v = client.json();
    assert_eq!(v["error"]["status"], "INVALID_ARGUMENT", "{v}");
    let message = v["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains(r#"serves "test-gemini" as "tg-gemini""#) && message.contains(r#"create the cache for "tg-gemini""#), "{message}");
    assert!(s.upstream().headers.is_none(), "nothing reached the provider");
    // Metering only: the creation is metered, nothing is remembered.
    let gw = Gateway::new(TEST_CONFIG);
    let request = cache_request("models/tg-gemini");
    let mut s = gw.stream();
    s.send_request(&refs(&post("/v1beta/cachedContents", &request)), &request);
    s.respond(&[(":status", "200"), ("content-type", "application/json")], &cache_json(&gw, "cachedContents/m", "models/tg-gemini", 600));
    assert_eq!(s.filter_state("wasm.tollgate.tokens_input"), Some(CACHE_TOKENS.to_string()));
    assert_eq!(ctx_keys(&gw), 0, "metering only keeps no memory");
}

// Conversations (`context_memory.conversations`): a turn holds the conversation's lock, and the
// next turn reserves what the last one was billed (input + output) plus its own body.

fn conversations_config() -> String {
    config(Some(json!({"conversations": true})))
}

fn conversation_turn(conversation: &str) -> Vec<u8> {
    json!({"model": "test-chat", "max_output_tokens": 100, "conversation": conversation, "input": "And then?"}).to_string().into_bytes()
}

/// Sends `body` to `/v1/responses` as `team` on `worker`; the stream, paused at the upstream or answered locally.
fn send_turn(gw: &Gateway, worker: usize, team: &str, body: &[u8]) -> Stream {
    let mut s = gw.stream_on(worker);
    s.send_request(&refs(&with(post("/v1/responses", body), "x-auth-team", team)), body);
    gw.advance(std::time::Duration::from_millis(1));
    s
}

/// A turn on `conversation` as a team with ample budget, answered with a billed response in `chunk`-byte pieces.
fn billed_turn(gw: &Gateway, worker: usize, conversation: &str, sse: bool, chunk: usize) {
    let mut s = send_turn(gw, worker, "rich", &conversation_turn(conversation));
    assert!(s.upstream().complete, "the turn is admitted: {:?}", s.client().local_reply);
    let (content_type, response) = if sse { ("text/event-stream", responses_sse("resp_c")) } else { ("application/json", responses_json("resp_c")) };
    s.respond_chunked(&[(":status", "200"), ("content-type", content_type)], &response, &[chunk]);
    assert!(s.finished(), "the turn ends");
}

#[test]
fn a_conversation_turn_reserves_the_last_billed_turn_plus_its_body_whatever_the_chunking() {
    let window_worst = WINDOW * 4 + 100 * 15;
    for sse in [false, true] {
        for chunk in [1, 7, 64, usize::MAX] {
            let label = format!("sse={sse} chunk={chunk}");
            let gw = gateway(&conversations_config(), 2);
            billed_turn(&gw, 0, "conv_0123456789abcdef", sse, chunk);
            let body = conversation_turn("conv_0123456789abcdef");
            let worst = remembered_worst_case(&body);
            assert!(worst < 50_000 && window_worst > 50_000, "the scenario tells the two bounds apart");
            // Refused on 1 µ$ of headroom (on the other worker), naming exactly the remembered worst case.
            let refused = continue_as(&gw, 1, "h1-a", &body).expect_err(&label);
            assert!(refused.contains(&usd(worst)), "{label}: the reservation is the last turn's bill plus the body, ${}: {refused}", usd(worst));
            // The refused turn gave the lock back; admitted on 50,000 µ$, which the window would not fit in.
            assert_eq!(continue_as(&gw, 0, "h50000-b", &body), Ok(()), "{label}");
            // Remembered: the first turn's response id and its conversation's size.
            assert_eq!((counter(&gw, "hits"), counter(&gw, "misses"), counter(&gw, "remembered")), (2, 1, 2), "{label}");
        }
    }
}

#[test]
fn without_the_option_a_conversation_reserves_the_window() {
    let gw = gateway(&config(None), 1);
    billed_turn(&gw, 0, "conv_1", false, usize::MAX);
    let refused = continue_as(&gw, 0, "h50000-a", &conversation_turn("conv_1")).expect_err("the window");
    assert!(refused.contains(&usd(WINDOW * 4 + 100 * 15)), "{refused}");
    assert_eq!(counter(&gw, "remembered"), 1, "the response id only, not the conversation");
}

#[test]
fn a_second_turn_while_one_is_in_flight_is_the_dialects_400_and_the_lock_comes_back_when_it_ends() {
    let gw = gateway(&conversations_config(), 2);
    billed_turn(&gw, 0, "conv_1", true, 9);
    let mut first = send_turn(&gw, 0, "rich", &conversation_turn("conv_1"));
    assert!(first.upstream().complete, "the first turn is in flight");
    let second = send_turn(&gw, 1, "rich", &conversation_turn("conv_1"));
    let refused: Value = serde_json::from_str(&second.expect_local_response(400).body_text()).expect("JSON");
    assert_eq!(refused["error"]["param"], "conversation", "{refused}");
    assert_eq!(refused["error"]["type"], "invalid_request_error", "{refused}");
    assert_eq!(counter(&gw, "conversation_locked"), 1);
    // Another conversation is not locked by it.
    assert!(send_turn(&gw, 1, "rich", &conversation_turn("conv_2")).upstream().complete);
    first.respond_chunked(&[(":status", "200"), ("content-type", "application/json")], &responses_json("resp_2"), &[usize::MAX]);
    assert_eq!(continue_as(&gw, 1, "h50000-a", &conversation_turn("conv_1")), Ok(()), "free again, and the size known");
}

#[test]
fn a_failed_turn_or_items_posted_through_the_gateway_make_the_next_turn_reserve_the_window() {
    let gw = gateway(&conversations_config(), 1);
    let window = usd(WINDOW * 4 + 100 * 15);
    // Items added through the Conversations API: what they hold is not known here.
    billed_turn(&gw, 0, "conv_1", false, usize::MAX);
    let items = json!({"items": [{"type": "message", "role": "user", "content": [{"type": "input_text", "text": "More."}]}]}).to_string().into_bytes();
    let mut post_items = gw.stream_on(0);
    post_items.send_request(&refs(&post("/v1/conversations/conv_1/items", &items)), &items);
    assert!(post_items.upstream().complete, "the items pass through");
    post_items.respond_chunked(&[(":status", "200"), ("content-type", "application/json")], br#"{"object":"list","data":[]}"#, &[usize::MAX]);
    let refused = continue_as(&gw, 0, "h50000-a", &conversation_turn("conv_1")).expect_err("unknown after items");
    assert!(refused.contains(&window), "{refused}");
    // A billed turn learns the size again.
    billed_turn(&gw, 0, "conv_1", false, usize::MAX);
    assert_eq!(continue_as(&gw, 0, "h50000-b", &conversation_turn("conv_1")), Ok(()));
    // A turn that let the provider truncate its input was billed less than the conversation holds.
    let gw = gateway(&conversations_config(), 1);
    let truncating = json!({"model": "test-chat", "max_output_tokens": 100, "conversation": "conv_1", "input": "Go.", "truncation": "auto"})
        .to_string()
        .into_bytes();
    let mut s = send_turn(&gw, 0, "rich", &truncating);
    s.respond_chunked(&[(":status", "200"), ("content-type", "application/json")], &responses_json("resp_t"), &[usize::MAX]);
    let refused = continue_as(&gw, 0, "h50000-t", &conversation_turn("conv_1")).expect_err("unknown after a truncating turn");
    assert!(refused.contains(&window), "{refused}");
    // An upstream failure: what it appended is unknown.
    let gw = gateway(&conversations_config(), 1);
    billed_turn(&gw, 0, "conv_1", false, usize::MAX);
    let mut failed = send_turn(&gw, 0, "rich", &conversation_turn("conv_1"));
    failed.respond_chunked(&[(":status", "500"), ("content-type", "application/json")], br#"{"error":{"message":"boom"}}"#, &[usize::MAX]);
    let refused = continue_as(&gw, 0, "h50000-c", &conversation_turn("conv_1")).expect_err("unknown after a failure");
    assert!(refused.contains(&window), "{refused}");
}
