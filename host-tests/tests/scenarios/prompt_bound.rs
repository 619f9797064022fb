//! Prompts the provider holds (issue 19 §1), through the real filter: for every recognised shape
//! in every dialect, cut into chunks of any size, the reservation is the routed model's context
//! window, not the body size; a model without a known window is refused under the default policy
//! (or reserved as configured); malformed references are a 400 in the dialect's shape; and none
//! of it changes a metering-only gateway.

use crate::common::*;
use serde_json::{json, Value};
use tollgate_host_tests::fixtures::{refs, TEST_CONFIG};
use tollgate_host_tests::*;

/// The window the scenarios give every test model.
pub(crate) const WINDOW: u64 = 100_000;

/// (name, path, body): one request per recognised shape and dialect, each with an output cap of
/// 100 tokens, routed onto a TEST_CONFIG model.
fn shapes() -> Vec<(&'static str, &'static str, Value)> {
    let text = json!([{"role": "user", "content": "hi"}]);
    vec![
        ("responses previous_response_id", "/v1/responses", json!({"model": "test-chat", "max_output_tokens": 100, "previous_response_id": "resp_abc123", "input": "and then?"})),
        ("responses conversation", "/v1/responses", json!({"model": "test-chat", "max_output_tokens": 100, "conversation": "conv_1", "input": "and then?"})),
        ("responses stored prompt", "/v1/responses", json!({"model": "test-chat", "max_output_tokens": 100, "prompt": {"id": "pmpt_1"}})),
        ("responses input_file", "/v1/responses", json!({"model": "test-chat", "max_output_tokens": 100, "input": [{"role": "user", "content": [{"type": "input_file", "file_id": "file-1"}]}]})),
        ("responses input_image", "/v1/responses", json!({"model": "test-chat", "max_output_tokens": 100, "input": [{"role": "user", "content": [{"type": "input_image", "image_url": "https://example.com/a.png"}]}]})),
        ("responses item_reference", "/v1/responses", json!({"model": "test-chat", "max_output_tokens": 100, "input": [{"type": "item_reference", "id": "msg_1"}]})),
        ("responses file_search", "/v1/responses", json!({"model": "test-chat", "max_output_tokens": 100, "input": "q", "tools": [{"type": "file_search", "vector_store_ids": ["vs_1"]}]})),
        ("responses web_search", "/v1/responses", json!({"model": "test-chat", "max_output_tokens": 100, "input": "q", "tools": [{"type": "web_search_preview"}]})),
        ("chat image_url", "/v1/chat/completions", json!({"model": "test-chat", "max_tokens": 100, "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}]}]})),
        ("chat input_audio", "/v1/chat/completions", json!({"model": "test-chat", "max_tokens": 100, "messages": [{"role": "user", "content": [{"type": "input_audio", "input_audio": {"data": "UklGRg==", "format": "wav"}}]}]})),
        ("chat file", "/v1/chat/completions", json!({"model": "test-chat", "max_tokens": 100, "messages": [{"role": "user", "content": [{"type": "file", "file": {"file_id": "file-1"}}]}]})),
        ("azure chat image_url", "/openai/deployments/test-deploy/chat/completions?api-version=2024-10-21", json!({"max_tokens": 100, "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}]}]})),
        ("anthropic image url", "/v1/messages", json!({"model": "test-claude", "max_tokens": 100, "messages": [{"role": "user", "content": [{"type": "image", "source": {"type": "url", "url": "https://example.com/a.png"}}]}]})),
        ("anthropic document file", "/v1/messages", json!({"model": "test-claude", "max_tokens": 100, "messages": [{"role": "user", "content": [{"type": "document", "source": {"type": "file", "file_id": "file_1"}}]}]})),
        ("anthropic container", "/v1/messages", json!({"model": "test-claude", "max_tokens": 100, "container": "container_1", "messages": text})),
        ("anthropic web search", "/v1/messages", json!({"model": "test-claude", "max_tokens": 100, "messages": text, "tools": [{"type": "web_search_20250305", "name": "web_search"}]})),
        ("anthropic code execution", "/v1/messages", json!({"model": "test-claude", "max_tokens": 100, "messages": text, "tools": [{"type": "code_execution_20250825", "name": "code_execution"}]})),
        ("gemini cachedContent", "/v1beta/models/test-gemini:streamGenerateContent?alt=sse", json!({"cachedContent": "cachedContents/c1", "contents": [{"role": "user", "parts": [{"text": "q"}]}], "generationConfig": {"maxOutputTokens": 100}})),
        ("gemini fileData", "/v1beta/models/test-gemini:generateContent", json!({"contents": [{"role": "user", "parts": [{"fileData": {"mimeType": "application/pdf", "fileUri": "https://generativelanguage.googleapis.com/v1beta/files/f1"}}]}], "generationConfig": {"maxOutputTokens": 100}})),
        ("gemini inlineData", "/v1beta/models/test-gemini:generateContent", json!({"contents": [{"role": "user", "parts": [{"inlineData": {"mimeType": "image/png", "data": "iVBORw0KGgo="}}]}], "generationConfig": {"maxOutputTokens": 100}})),
        ("gemini googleSearch", "/v1beta/models/test-gemini:generateContent", json!({"contents": [{"role": "user", "parts": [{"text": "q"}]}], "tools": [{"googleSearch": {}}], "generationConfig": {"maxOutputTokens": 100}})),
    ]
}

/// The same requests without the shape: the body is their bound.
fn plain(path: &str) -> Value {
    let text = json!([{"role": "user", "content": "hi"}]);
    match path {
        "/v1/responses" => json!({"model": "test-chat", "max_output_tokens": 100, "input": "and then?"}),
        "/v1/chat/completions" => json!({"model": "test-chat", "max_tokens": 100, "messages": text}),
        "/v1/messages" => json!({"model": "test-claude", "max_tokens": 100, "messages": text}),
        p if p.starts_with("/openai/") => json!({"max_tokens": 100, "messages": text}),
        _ => json!({"contents": [{"role": "user", "parts": [{"text": "q"}]}], "generationConfig": {"maxOutputTokens": 100}}),
    }
}

/// TEST_CONFIG with enforcement; `window` gives every test model that context window;
/// `estimate` is `pricing.estimate`.
pub(crate) fn config(window: Option<u64>, estimate: Option<Value>) -> String {
    let mut v: Value = serde_json::from_str(TEST_CONFIG).expect("TEST_CONFIG is JSON");
    v["enforcement"] = json!({"counter_cluster": "tollgate_counter", "gateway_token": "gt", "lease_slice_usd": "0.01"});
    if let Some(window) = window {
        for model in v["pricing"]["models"].as_object_mut().expect("models").values_mut() {
            model["max_input_tokens"] = json!(window);
        }
    }
    if let Some(estimate) = estimate {
        v["pricing"]["estimate"] = estimate;
    }
    v.to_string()
}

/// The worst case of a 100-token-capped request with a `WINDOW`-token prompt on `path`'s model:
/// every prompt token at the dearest prompt price (cache write: 4 µ$ for tg-chat / tg-claude,
/// 3 µ$ for tg-gemini) and 100 output tokens.
fn window_worst_case(path: &str) -> u64 {
    if path.contains("gemini") {
        WINDOW * 3 + 100 * 10
    } else {
        WINDOW * 4 + 100 * 15
    }
}

/// A counter with `headroom` micro-dollars on every scope asked for.
pub(crate) fn grant_all_there_is(call: &HttpCall, headroom: i64, now_ms: u64) -> Answer {
    let req = call.json();
    let budgets: Vec<Value> = req["scopes"]
        .as_array()
        .expect("scopes")
        .iter()
        .map(|scope| {
            json!({"budget_id": format!("b-{}", scope.as_str().unwrap_or("?")), "scope": scope, "mode": "enforce",
                   "granted_micros": headroom, "spent_micros": 0, "limit_micros": headroom, "hard_limit_micros": headroom,
                   "soft_threshold_pct": 80, "status": "ok", "resets_at": now_ms / 1000 + 3600, "lease_expires_at_ms": now_ms + 60_000})
        })
        .collect();
    Answer::json(200, &json!({"budgets": budgets}))
}

fn headers(path: &str, body: &[u8]) -> Vec<(String, String)> {
    with(post(path, body), "x-auth-team", "platform")
}

/// Sends `body` to `path` in `chunk`-byte pieces and answers the lease call (if any) with
/// `headroom`; returns the stream and the `want_micros` of the lease call.
fn send(gw: &Gateway, path: &str, body: &[u8], chunk: usize, headroom: i64) -> (Stream, Option<i64>) {
    let mut s = gw.stream();
    s.send_request_chunked(&refs(&headers(path, body)), body, &[chunk]);
    let mut want = None;
    if gw.pending_calls().iter().any(|c| c.path() == "/v1/leases") {
        let now = gw.now_ms();
        let call = gw.answer_call_to("/v1/leases", |call| grant_all_there_is(call, headroom, now));
        want = call.json()["want_micros"].as_i64();
        gw.advance(Duration::from_millis(1));
    }
    (s, want)
}

#[test]
fn every_shape_in_every_dialect_reserves_the_context_window_at_any_chunking() {
    for (name, path, body) in shapes() {
        let body = body.to_string().into_bytes();
        let worst = window_worst_case(path);
        for chunk in [1, 7, usize::MAX] {
            // Headroom for a body-sized reservation, not for the window: refused, naming the worst case.
            let gw = Gateway::new(config(Some(WINDOW), None));
            let (s, want) = send(&gw, path, &body, chunk, 50_000);
            assert!(want.unwrap_or(0) >= worst as i64, "{name} /{chunk}: the lease call asks for the window's worst case {worst}: {want:?}");
            let client = s.expect_local_response(429);
            let text = client.body_text();
            let usd = format!("{}.{:06}", worst / 1_000_000, worst % 1_000_000);
            assert!(text.contains(&usd), "{name} /{chunk}: the refusal names the worst case ${usd}: {text}");
            assert!(s.upstream().headers.is_none(), "{name}: nothing reached the provider");

            // Headroom for the window: admitted, the body forwarded with its shape intact.
            let gw = Gateway::new(config(Some(WINDOW), None));
            let (s, _) = send(&gw, path, &body, chunk, worst as i64);
            assert!(s.client().local_reply.is_none(), "{name} /{chunk}: admitted with the window's headroom: {:?}", s.client().local_reply);
            assert!(s.upstream().complete, "{name} /{chunk}: forwarded");
        }
        // The same request without the shape fits the small headroom.
        let gw = Gateway::new(config(Some(WINDOW), None));
        let plain = plain(path).to_string().into_bytes();
        let (s, want) = send(&gw, path, &plain, usize::MAX, 50_000);
        assert!(want.unwrap_or(0) < 50_000, "{name}: a text request asks for less: {want:?}");
        assert!(s.client().local_reply.is_none() && s.upstream().complete, "{name}: a text request is admitted");
    }
}

#[test]
fn a_model_without_a_known_window_is_refused_naming_the_fix_or_reserved_as_configured() {
    let (name, path, body) = &shapes()[0];
    let body = body.to_string().into_bytes();
    let gw = Gateway::new(config(None, None));
    let (s, want) = send(&gw, path, &body, 5, 1_000_000_000);
    assert_eq!(want, None, "{name}: refused before any lease call");
    let client = s.expect_local_response(403);
    let message = client.json()["error"]["message"].as_str().unwrap_or_default().to_string();
    assert!(message.contains("pricing.models.\"tg-chat\".max_input_tokens"), "{message}");
    assert!(message.contains("previous_response_id"), "{message}");

    // `reserve` takes the configured count: 30,000 tokens × 4 µ$ + 100 × 15 µ$.
    let estimate = json!({"unknown_context_window": "reserve", "unknown_context_window_tokens": 30_000});
    let gw = Gateway::new(config(None, Some(estimate)));
    let (s, want) = send(&gw, path, &body, 5, 1_000_000);
    assert!(want.unwrap_or(0) >= 121_500, "{want:?}");
    assert!(s.upstream().complete, "admitted under reserve");

    // Metering only: nothing is reserved, nothing refused, the body goes up untouched but the model.
    let gw = Gateway::new(TEST_CONFIG);
    let mut s = gw.stream();
    s.send_request_chunked(&refs(&headers(path, &body)), &body, &[3]);
    assert!(s.client().local_reply.is_none() && s.upstream().complete, "metering only forwards it");
    let up: Value = serde_json::from_slice(&s.upstream().body).expect("JSON upstream");
    assert_eq!(up["previous_response_id"], "resp_abc123");
}

#[test]
fn a_malformed_reference_is_a_400_in_the_dialects_shape() {
    let long = "c".repeat(300);
    let cases = [
        ("/v1/responses", json!({"model": "test-chat", "previous_response_id": 12345, "input": "x"}), "previous_response_id"),
        ("/v1/responses", json!({"model": "test-chat", "previous_response_id": long, "input": "x"}), "previous_response_id"),
        ("/v1beta/models/test-gemini:streamGenerateContent?alt=sse", json!({"cachedContent": {"name": "c"}, "contents": []}), "cachedContent"),
        ("/v1beta/models/test-gemini:generateContent", json!({"cachedContent": long, "contents": []}), "cachedContent"),
        ("/v1/messages", json!({"model": "test-claude", "max_tokens": 5, "container": 5, "messages": []}), "container"),
    ];
    for (path, body, field) in cases {
        let body = body.to_string().into_bytes();
        for (config, chunk) in [(TEST_CONFIG.to_string(), 4), (config(Some(WINDOW), None), usize::MAX)] {
            let gw = Gateway::new(config);
            let mut s = gw.stream();
            s.send_request_chunked(&refs(&headers(path, &body)), &body, &[chunk]);
            let client = s.expect_local_response(400);
            let v = client.json();
            let message = match path {
                "/v1/responses" => {
                    assert_eq!(v["error"]["param"], field, "{v}");
                    v["error"]["message"].clone()
                }
                "/v1/messages" => {
                    assert_eq!(v["type"], "error", "{v}");
                    v["error"]["message"].clone()
                }
                _ => {
                    assert_eq!(v["error"]["status"], "INVALID_ARGUMENT", "{v}");
                    v["error"]["message"].clone()
                }
            };
            assert!(message.as_str().unwrap_or_default().contains(field), "{path}: {v}");
            assert!(s.upstream().headers.is_none());
        }
    }
}
