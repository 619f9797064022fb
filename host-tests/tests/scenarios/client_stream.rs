//! The client's stream is the client's: the usage chunk the filter asked the upstream for never
//! reaches a client that did not ask for it, however the upstream's bytes are chunked, and every
//! other byte arrives as sent. Also: a stream that starts with a byte order mark, keys written
//! with `\u` escapes, and Gemini's `?key=` query parameter as a (virtual) API key.

use crate::common::*;
use tollgate_host_tests::fixtures::{cases, refs, Case};

fn chat_sse() -> Case {
    cases().into_iter().find(|c| c.name == "openai chat sse").expect("fixture")
}

/// Every `data:` event a client parses has `choices[0]` (what `chunk.choices[0].delta` needs),
/// and the stream still ends with `[DONE]`.
fn expect_every_chunk_has_a_choice(body: &[u8], label: &str) {
    let text = String::from_utf8_lossy(body);
    assert!(text.ends_with("data: [DONE]\n\n"), "{label}: {text}");
    for event in text.split("\n\n").filter(|e| !e.is_empty() && *e != "data: [DONE]") {
        let data = event.strip_prefix("data: ").unwrap_or_else(|| panic!("{label}: {event}"));
        let json: serde_json::Value = serde_json::from_str(data).unwrap_or_else(|e| panic!("{label}: {e}: {data}"));
        assert!(json["choices"][0].is_object(), "{label}: a chunk without choices[0]: {data}");
    }
}

#[test]
fn the_usage_chunk_the_filter_asked_for_never_reaches_the_client() {
    let gw = gateway();
    let case = chat_sse();
    let body = &case.response;
    let text = String::from_utf8_lossy(body);
    let usage_at = text.find(r#"data: {"id":"chatcmpl-1","object":"chat.completion.chunk","created":1767225600,"model":"tg-chat","choices":[]"#).expect("usage event");
    let done_at = text.find("data: [DONE]").expect("[DONE]");
    assert_ne!(case.client_response(), case.response, "the fixture's request did not ask for usage");
    // Whole; byte by byte; cut inside `data:` of the usage event, inside its JSON, inside its
    // blank line; the usage event and [DONE] in one chunk; [DONE] cut.
    let cuts: Vec<Vec<usize>> = vec![
        vec![body.len()],
        vec![1],
        vec![usage_at + 3, body.len()],
        vec![usage_at + 100, body.len()],
        vec![done_at - 1, body.len()],
        vec![usage_at, body.len()],
        vec![done_at + 4, body.len()],
        vec![usage_at - 7, 50, 9, body.len()],
    ];
    for sizes in cuts {
        let s = run(&gw, &case, &[usize::MAX], &sizes);
        let label = format!("response chunks {sizes:?}");
        assert_eq!(String::from_utf8_lossy(&s.client().body), String::from_utf8_lossy(&case.client_response()), "{label}");
        expect_every_chunk_has_a_choice(&s.client().body, &label);
        expect_metered(&s, &case);
    }
}

#[test]
fn a_client_that_asked_for_usage_gets_the_usage_chunk() {
    let gw = gateway();
    let case = chat_sse();
    let asked = String::from_utf8_lossy(&case.request).replacen(r#""stream":true"#, r#""stream":true,"stream_options":{"include_usage":true}"#, 1);
    let mut s = gw.stream();
    s.send_request(&refs(&post("/v1/chat/completions", asked.as_bytes())), asked.as_bytes());
    s.expect_upstream_body(asked.replacen(r#""model":"test-chat""#, r#""model":"tg-chat""#, 1).as_bytes());
    s.respond_chunked(&refs(&case.response_headers()), &case.response, &[31]);
    assert_eq!(s.client().body, case.response, "every byte, the usage chunk too");
    expect_metered(&s, &case);
}

#[test]
fn a_held_event_reaches_the_client_when_trailers_end_the_stream() {
    let gw = gateway();
    let case = chat_sse();
    let text = String::from_utf8_lossy(&case.response).into_owned();
    let cut = text.find("\n\n").expect("an event") + 30;
    let mut s = gw.stream();
    s.send_request(&refs(&case.headers()), &case.request);
    s.response_headers(&refs(&case.response_headers()), false);
    s.response_body(&case.response[..cut], false);
    s.response_trailers(&[("grpc-status", "0")]);
    assert_eq!(s.client().body, &case.response[..cut], "the bytes held for the unfinished event are delivered");
    assert!(s.finished());
}

#[test]
fn a_stream_with_a_byte_order_mark_and_escaped_keys_is_metered_like_any_other() {
    let gw = gateway();
    let case = chat_sse();
    let escaped = String::from_utf8_lossy(&case.response).replace(r#""usage":{"prompt_tokens""#, r#""\u0075sage":{"prompt\u005ftokens""#);
    let mut bom = case.clone();
    bom.response = [b"\xEF\xBB\xBF".as_slice(), escaped.as_bytes()].concat();
    assert_ne!(bom.response[3..], case.response[..], "the usage event is written with escapes");
    // The usage event the filter asked for is still left out, escapes or not.
    let usage_event = escaped.split_inclusive("\n\n").find(|e| e.contains(r#""choices":[]"#)).expect("usage event").to_owned();
    let want = [b"\xEF\xBB\xBF".as_slice(), escaped.replacen(&usage_event, "", 1).as_bytes()].concat();
    for sizes in [[usize::MAX], [1], [2]] {
        let s = run(&gw, &bom, &[usize::MAX], &sizes);
        expect_metered(&s, &case);
        assert_eq!(String::from_utf8_lossy(&s.client().body), String::from_utf8_lossy(&want), "{sizes:?}");
    }
}

#[test]
fn a_virtual_key_in_the_gemini_query_attributes_and_never_reaches_the_upstream() {
    let gw = gateway();
    let gemini = |name: &str| cases().into_iter().find(|c| c.name == name).expect("fixture");
    let json = gemini("gemini generateContent json");
    let sse = gemini("gemini streamGenerateContent sse");
    for (case, path, upstream_path) in [
        (&json, "/v1beta/models/test-gemini:generateContent?key=sk-test-alice", "/v1beta/models/tg-gemini:generateContent"),
        (&sse, "/v1beta/models/test-gemini:streamGenerateContent?alt=sse&key=sk-test-alice", "/v1beta/models/tg-gemini:streamGenerateContent?alt=sse"),
        (&sse, "/v1beta/models/test-gemini:streamGenerateContent?key=sk%2Dtest%2Dalice&alt=sse", "/v1beta/models/tg-gemini:streamGenerateContent?alt=sse"),
    ] {
        let mut with_key = case.clone();
        with_key.path = path.into();
        let s = run(&gw, &with_key, &[usize::MAX], &[usize::MAX]);
        assert_eq!(s.upstream().header(":path"), Some(upstream_path), "{path}");
        assert_eq!(s.filter_state("wasm.tollgate.key_id").as_deref(), Some("key-alice"), "{path}");
        assert_eq!(s.filter_state("wasm.tollgate.user").as_deref(), Some("alice"), "{path}");
        expect_metered(&s, case);
        let everything = format!("{:?} {:?} {:?}", s.filter_states(), gw.logs(), s.upstream());
        assert!(!everything.contains("sk-test-alice") && !everything.contains("sk%2Dtest"), "{path}: the virtual key went somewhere: {everything}");
    }
    // A key that is not a virtual key is the caller's own provider key: it is passed on.
    let mut real = json.clone();
    real.path = "/v1beta/models/test-gemini:generateContent?key=AIzaSyReal".into();
    let s = run(&gw, &real, &[usize::MAX], &[usize::MAX]);
    assert_eq!(s.upstream().header(":path"), Some("/v1beta/models/tg-gemini:generateContent?key=AIzaSyReal"));
    assert_eq!(s.filter_state("wasm.tollgate.key_id"), None);
    // Other dialects do not read `?key=`.
    let chat = cases().into_iter().find(|c| c.name == "openai chat json").expect("fixture");
    let mut other = chat.clone();
    other.path = "/v1/chat/completions?key=sk-test-alice".into();
    let s = run(&gw, &other, &[usize::MAX], &[usize::MAX]);
    assert_eq!(s.upstream().header(":path"), Some("/v1/chat/completions?key=sk-test-alice"));
    assert_eq!(s.filter_state("wasm.tollgate.key_id"), None);
}

#[test]
fn a_virtual_key_in_any_key_header_attributes_and_never_reaches_the_upstream() {
    let gw = gateway();
    let case = |name: &str| cases().into_iter().find(|c| c.name == name).expect("fixture");
    let (chat, claude, gemini) = (case("openai chat json"), case("anthropic messages json"), case("gemini generateContent json"));
    // (case, key header, its value)
    for (c, name, value) in [
        (&chat, "authorization", "Bearer sk-test-alice"),
        (&chat, "api-key", "sk-test-alice"),
        (&claude, "x-api-key", "sk-test-alice"),
        (&gemini, "x-goog-api-key", "sk-test-alice"),
    ] {
        let mut s = gw.stream();
        s.send_request(&refs(&with(c.headers(), name, value)), &c.request);
        s.expect_upstream_body(&c.upstream_request);
        assert_eq!(s.upstream().header(name), None, "{name}: the virtual key is the gateway's credential, not the provider's");
        s.respond(&refs(&c.response_headers()), &c.response);
        assert_eq!(s.filter_state("wasm.tollgate.key_id").as_deref(), Some("key-alice"), "{name}");
        expect_metered(&s, c);
        let everything = format!("{:?} {:?}", s.upstream(), gw.logs());
        assert!(!everything.contains("sk-test-alice"), "{name}: the virtual key went somewhere: {everything}");
    }
    // A key that is not virtual is the caller's own provider key: passed on untouched.
    let mut s = gw.stream();
    s.send_request(&refs(&with(chat.headers(), "authorization", "Bearer sk-provider-own")), &chat.request);
    assert_eq!(s.upstream().header("authorization"), Some("Bearer sk-provider-own"));
}
