//! What the filter does to requests before they reach a provider: attribution, client headers it
//! must not trust, routing rules and aliases, denials and bad input answered in each dialect's own
//! error JSON, the body limit, and configurations it must refuse.

use crate::common::*;
use serde_json::json;
use tollgate_host_tests::fixtures::{cases, refs, TEST_CONFIG};
use tollgate_host_tests::*;

/// TEST_CONFIG with one edit.
fn config_with(edit: impl FnOnce(&mut serde_json::Value)) -> String {
    let mut v: serde_json::Value = serde_json::from_str(TEST_CONFIG).expect("TEST_CONFIG is JSON");
    edit(&mut v);
    v.to_string()
}

/// Client request for `dialect` asking for `model`, with `body` (model put in the path for
/// Gemini and Azure).
fn request_for(dialect: &str, model: &str, body: &[u8]) -> Vec<(String, String)> {
    let path = match dialect {
        "openai" => "/v1/chat/completions".to_string(),
        "azure_openai" => format!("/openai/deployments/{model}/chat/completions?api-version=2024-10-21"),
        "anthropic" => "/v1/messages".to_string(),
        _ => format!("/v1beta/models/{model}:generateContent"),
    };
    post(&path, body)
}

/// The dialect's error shape, with status and message; returns the message.
fn expect_error_shape(client: &ClientResponse, dialect: &str, status: u16) -> String {
    assert_eq!(client.header("content-type"), Some("application/json"), "{dialect}: error content-type");
    let v = client.json();
    let message = match dialect {
        "openai" | "azure_openai" => {
            assert!(v["error"]["type"].is_string() && v["error"]["code"].is_string(), "{dialect} error shape: {v}");
            v["error"]["message"].clone()
        }
        "anthropic" => {
            assert_eq!(v["type"], "error", "anthropic error shape: {v}");
            assert!(v["error"]["type"].is_string(), "anthropic error shape: {v}");
            v["error"]["message"].clone()
        }
        _ => {
            assert_eq!(v["error"]["code"], json!(status), "gemini error shape: {v}");
            assert!(v["error"]["status"].is_string(), "gemini error shape: {v}");
            v["error"]["message"].clone()
        }
    };
    message.as_str().unwrap_or_else(|| panic!("{dialect}: the error has a message: {v}")).to_string()
}

const DIALECTS: [&str; 4] = ["openai", "azure_openai", "anthropic", "gemini"];

fn body_for(dialect: &str, model: &str) -> Vec<u8> {
    match dialect {
        "openai" => format!(r#"{{"model":"{model}","messages":[{{"role":"user","content":"hi"}}]}}"#).into_bytes(),
        "azure_openai" => br#"{"messages":[{"role":"user","content":"hi"}]}"#.to_vec(),
        "anthropic" => format!(r#"{{"model":"{model}","max_tokens":10,"messages":[{{"role":"user","content":"hi"}}]}}"#).into_bytes(),
        _ => br#"{"contents":[{"role":"user","parts":[{"text":"hi"}]}]}"#.to_vec(),
    }
}

#[test]
fn client_x_tollgate_headers_never_reach_the_upstream_nor_attribute() {
    let gw = gateway();
    let case = &cases()[0];
    let mut h = case.headers();
    h.push(("x-tollgate-team".into(), "mallory".into()));
    h.push(("x-tollgate-provider".into(), "attacker-cluster".into()));
    h.push(("X-Tollgate-Anything".into(), "1".into()));
    let mut s = gw.stream();
    s.send_request(&refs(&h), &case.request);
    let up = s.upstream();
    let tollgate_headers: Vec<_> = up.headers.clone().unwrap_or_default().into_iter().filter(|(k, _)| k.starts_with("x-tollgate-")).collect();
    assert_eq!(tollgate_headers, vec![("x-tollgate-provider".to_string(), "openai".to_string())], "only the rule's header");
    assert_ne!(s.filter_state("wasm.tollgate.team").as_deref(), Some("mallory"));
}

#[test]
fn trusted_headers_and_virtual_keys_attribute_the_request_and_the_key_never_shows() {
    let gw = gateway();
    let case = &cases()[0];
    let mut s = gw.stream();
    let h = with(with(case.headers(), "x-auth-team", "platform"), "authorization", "Bearer sk-test-alice");
    s.send_request(&refs(&h), &case.request);
    s.respond(&refs(&case.response_headers()), &case.response);
    let st = s.filter_states();
    assert_eq!(st.get("wasm.tollgate.user").map(String::as_str), Some("alice"));
    assert_eq!(st.get("wasm.tollgate.key_id").map(String::as_str), Some("key-alice"));
    assert_eq!(st.get("wasm.tollgate.org").map(String::as_str), Some("acme"));
    assert!(st.get("wasm.tollgate.team").is_some());
    let everything = format!("{st:?} {:?}", gw.logs());
    assert!(!everything.contains("sk-test-alice"), "the raw key is never logged or published");

    let mut anon = gw.stream();
    anon.send_request(&refs(&with(case.headers(), "x-auth-team", "platform")), &case.request);
    assert_eq!(anon.filter_state("wasm.tollgate.team").as_deref(), Some("platform"), "a trusted header attributes");
    assert_eq!(anon.filter_state("wasm.tollgate.org").as_deref(), Some("acme"), "defaults fill the rest");
}

#[test]
fn an_alias_resolves_through_the_routing_table() {
    let gw = gateway();
    let body = br#"{"model":"tier:premium","messages":[{"role":"user","content":"hi"}]}"#;
    let mut s = gw.stream();
    s.send_request(&refs(&post("/v1/chat/completions", body)), body);
    s.expect_upstream_body(br#"{"model":"tg-chat","messages":[{"role":"user","content":"hi"}]}"#);
    assert_eq!(s.upstream().header("x-tollgate-provider"), Some("primary"));
    assert_eq!(s.filter_state("wasm.tollgate.rule").as_deref(), Some("premium"));
}

#[test]
fn a_model_no_rule_matches_goes_through_unchanged() {
    let gw = gateway();
    let body = br#"{"model":"some-other-model","messages":[]}"#;
    let mut s = gw.stream();
    s.send_request(&refs(&post("/v1/chat/completions", body)), body);
    s.expect_upstream_body(body);
    assert_eq!(s.upstream().header("x-tollgate-provider"), None);
}

#[test]
fn a_deny_rule_answers_403_in_every_dialects_shape_naming_the_rule() {
    let gw = gateway();
    for dialect in DIALECTS {
        let body = body_for(dialect, "forbidden-model");
        let mut s = gw.stream();
        s.send_request(&refs(&request_for(dialect, "forbidden-model", &body)), &body);
        let client = s.expect_local_response(403);
        let message = expect_error_shape(&client, dialect, 403);
        assert!(message.contains("no-forbidden") || message.contains("forbidden models are not allowed here"), "{dialect}: {message}");
        assert!(s.upstream().headers.is_none(), "{dialect}: nothing reaches the upstream");
        assert_eq!(s.filter_state("wasm.tollgate.outcome").as_deref(), Some("denied"), "{dialect}");
    }
    flush_counters(&gw);
    assert_eq!(gw.counter("tollgate_requests_openai_denied"), 1);
    assert_eq!(gw.counter("tollgate_requests_gemini_denied"), 1);
}

#[test]
fn malformed_bodies_get_400_in_the_dialects_shape() {
    let gw = gateway();
    let bad: [(&str, &[u8]); 6] = [
        ("truncated", br#"{"model":"test-chat","messages":[{"role":"us"#),
        ("model is a number", br#"{"model":123,"messages":[]}"#),
        ("invalid utf-8", b"{\"model\":\"test-\xff\xfechat\",\"messages\":[]}"),
        ("not an object", br#"["model","test-chat"]"#),
        ("duplicate model keys", br#"{"model":"test-chat","messages":[],"model":"forbidden-x"}"#),
        ("empty", b""),
    ];
    for dialect in ["openai", "anthropic"] {
        for (what, body) in bad {
            let mut s = gw.stream();
            let h = request_for(dialect, "test-chat", body);
            s.send_request(&refs(&h), body);
            let client = s.expect_local_response(400);
            let message = expect_error_shape(&client, dialect, 400);
            assert!(!message.is_empty(), "{dialect} / {what}: the message says what is wrong");
        }
    }
    for dialect in ["gemini", "azure_openai"] {
        for (what, body) in [("truncated", &br#"{"contents":[{"#[..]), ("not an object", b"[]"), ("invalid utf-8", b"{\"contents\":\"\xff\"}")] {
            let mut s = gw.stream();
            s.send_request(&refs(&request_for(dialect, "test-gemini", body)), body);
            let client = s.expect_local_response(400);
            let message = expect_error_shape(&client, dialect, 400);
            assert!(!message.is_empty(), "{dialect} / {what}");
        }
    }
}

#[test]
fn a_body_over_the_limit_is_413_whether_declared_or_streamed() {
    let gw = Gateway::new(config_with(|v| v["max_request_body_bytes"] = json!(1000)));
    let big = tollgate_host_tests::fixtures::openai_chat_request("test-chat", false, 1500);
    // Declared up front: refused at the headers, before any byte of body.
    let mut s = gw.stream();
    s.request_headers(&refs(&post("/v1/chat/completions", big.as_bytes())), false);
    let client = s.expect_local_response(413);
    expect_error_shape(&client, "openai", 413);
    // No content-length (chunked): refused once the buffered body passes the limit.
    let mut s = gw.stream();
    let mut h = post("/v1/messages", big.as_bytes());
    h.retain(|(k, _)| k != "content-length");
    s.send_request_chunked(&refs(&h), big.as_bytes(), &[400]);
    let client = s.expect_local_response(413);
    expect_error_shape(&client, "anthropic", 413);
    assert!(!s.upstream().complete);
    // Exactly at the limit is accepted.
    let head = r#"{"model":"test-chat","messages":[{"role":"user","content":""#;
    let tail = r#""}]}"#;
    let exact = format!("{head}{}{tail}", "x".repeat(1000 - head.len() - tail.len()));
    assert_eq!(exact.len(), 1000);
    let mut s = gw.stream();
    s.send_request_chunked(&refs(&post("/v1/chat/completions", exact.as_bytes())), exact.as_bytes(), &[300]);
    s.expect_upstream_body(&exact.replacen("test-chat", "tg-chat", 1).into_bytes());
}

#[test]
fn a_request_without_a_body_is_refused_in_the_dialects_shape() {
    let gw = gateway();
    let mut s = gw.stream();
    let mut h = post("/v1/messages", b"");
    h.retain(|(k, _)| k != "content-length");
    s.request_headers(&refs(&h), true);
    let client = s.expect_local_response(400);
    expect_error_shape(&client, "anthropic", 400);
}

#[test]
fn an_unpriced_model_is_refused_when_the_policy_is_deny() {
    let gw = Gateway::new(config_with(|v| v["pricing"]["unknown_model"] = json!("deny")));
    let body = br#"{"model":"mystery-model","messages":[]}"#;
    let mut s = gw.stream();
    s.send_request(&refs(&post("/v1/chat/completions", body)), body);
    let client = s.expect_local_response(400);
    assert!(expect_error_shape(&client, "openai", 400).contains("mystery-model"));
}

#[test]
fn invalid_configurations_are_refused_with_a_log_line_naming_the_field() {
    let cases: Vec<(&str, String, &str)> = vec![
        ("unknown top-level field", config_with(|v| v["bogus"] = json!(1)), "bogus"),
        ("unknown rule field", config_with(|v| v["routing"]["rules"][0]["colour"] = json!("red")), "routing"),
        ("unknown pricing policy", config_with(|v| v["pricing"]["unknown_model"] = json!("maybe")), "pricing"),
        ("not JSON", "{gateway_id: gw".to_string(), "tollgate config"),
    ];
    for (what, config, field) in cases {
        let refusal = Gateway::new(&config).try_start().err().unwrap_or_else(|| panic!("{what}: the filter accepted {config}"));
        let text = refusal.log_text();
        assert!(refusal.trap.is_none(), "{what}: refused, not trapped: {:?}", refusal.trap);
        assert!(text.contains("tollgate config"), "{what}: the log line says whose config it is:\n{text}");
        assert!(text.contains(field), "{what}: the log line names `{field}`:\n{text}");
    }
    // The valid one starts, on every worker.
    Gateway::new(TEST_CONFIG).workers(2).start();
}

/// A type error in a top-level field names the field (`tollgate config: <field.path>: <problem>`),
/// not only a line and column.
#[test]
fn a_wrong_type_in_a_top_level_field_is_refused_naming_the_field() {
    for (field, value) in [("max_request_body_bytes", json!("big")), ("gateway_id", json!(42))] {
        let refusal = Gateway::new(config_with(|v| v[field] = value)).try_start().expect_err("refused");
        let text = refusal.log_text();
        assert!(text.contains(&format!("tollgate config: {field}")), "the log line names `{field}`:\n{text}");
    }
}

#[test]
fn the_default_access_log_is_one_summary_with_the_same_values_as_the_single_fields() {
    let c = cases().into_iter().find(|c| c.name == "openai chat sse").expect("fixture exists");
    let run = |access_log: Option<&str>| {
        let gw = Gateway::new(config_with(|v| match access_log {
            Some(mode) => v["access_log"] = json!(mode),
            None => {
                v.as_object_mut().map(|o| o.remove("access_log"));
            }
        }));
        let mut s = gw.stream();
        s.send_request(&refs(&c.headers()), &c.request);
        s.respond(&refs(&c.response_headers()), &c.response);
        assert!(s.finished());
        s.filter_states().into_iter().filter(|(k, _)| k.starts_with("wasm.tollgate.")).collect::<Vec<_>>()
    };
    let fields = run(Some("fields"));
    assert!(fields.len() > 10, "fields mode publishes every value: {fields:?}");
    let summary = run(None);
    assert_eq!(summary.len(), 1, "the default publishes one value: {summary:?}");
    let (key, line) = &summary[0];
    assert_eq!(key, "wasm.tollgate.summary");
    let pairs: Vec<(&str, &str)> = line.split(' ').map(|p| p.split_once('=').expect("name=value")).collect();
    let mut expected: Vec<(String, String)> =
        fields.iter().map(|(k, v)| (k.trim_start_matches("wasm.tollgate.").to_string(), v.clone())).collect();
    let mut got: Vec<(String, String)> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    expected.sort();
    got.sort();
    assert_eq!(got, expected, "the summary holds exactly the single fields' values");
    assert!(line.starts_with("dialect=openai ") && line.ends_with(" outcome=metered"), "in the order they became known: {line}");
    assert_eq!(run(Some("off")), vec![], "off publishes nothing");
}
