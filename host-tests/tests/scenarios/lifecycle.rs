//! Streams that do not end well still leave the books right: a client that leaves mid-stream is
//! charged from a flagged estimate; an upstream error or reset is recorded, not charged as usage.
//! A host that calls back for contexts or calls the filter never saw does not trap it, and more
//! streams at once than its context table has slots are each metered.

use crate::common::*;
use tollgate_host_tests::fixtures::{cases, refs};

fn case(name: &str) -> tollgate_host_tests::fixtures::Case {
    cases().into_iter().find(|c| c.name == name).expect("fixture exists")
}

#[test]
fn a_client_that_leaves_mid_stream_is_charged_from_a_flagged_estimate() {
    let gw = gateway();
    for name in ["openai chat sse", "anthropic messages sse", "gemini streamGenerateContent sse"] {
        let c = case(name);
        let mut s = gw.stream();
        s.send_request(&refs(&c.headers()), &c.request);
        s.response_headers(&refs(&c.response_headers()), false);
        // The first event only: no final usage yet (Anthropic's message_start is a placeholder).
        let first_event_end = c.response.windows(2).position(|w| w == b"\n\n").expect("an event") + 2;
        s.response_body(&c.response[..first_event_end], false);
        s.client_reset();
        assert!(s.finished(), "{name}");
        let st = s.filter_states();
        assert_eq!(st.get("wasm.tollgate.estimated").map(String::as_str), Some("true"), "{name}: {st:?}");
        assert_eq!(st.get("wasm.tollgate.outcome").map(String::as_str), Some("estimated"), "{name}");
        let input: u64 = st.get("wasm.tollgate.tokens_input").and_then(|v| v.parse().ok()).unwrap_or(0);
        assert!(input > 0, "{name}: the prompt is charged from its size: {st:?}");
        let cost: i64 = st.get("wasm.tollgate.cost_micros").and_then(|v| v.parse().ok()).unwrap_or(0);
        assert!(cost > 0, "{name}: an estimate costs something: {st:?}");
    }
}

#[test]
fn an_upstream_error_is_passed_through_and_not_charged_as_usage() {
    let gw = gateway();
    let c = case("openai chat json");
    let mut s = gw.stream();
    s.send_request(&refs(&c.headers()), &c.request);
    let error = br#"{"error":{"message":"overloaded","type":"server_error"}}"#;
    s.respond(&[(":status", "503"), ("content-type", "application/json")], error);
    assert_eq!(s.client().status(), Some(503));
    assert_eq!(s.client().body, error);
    assert_eq!(s.filter_state("wasm.tollgate.outcome").as_deref(), Some("upstream_error"));
    assert_eq!(s.filter_state("wasm.tollgate.cost_micros").as_deref(), Some("0"));
    flush_counters(&gw);
    assert_eq!(gw.counter("tollgate_requests_openai_upstream_error"), 1);
}

#[test]
fn an_upstream_reset_before_headers_gives_the_client_envoys_503_and_charges_nothing() {
    let gw = gateway();
    let c = case("anthropic messages json");
    let mut s = gw.stream();
    s.send_request(&refs(&c.headers()), &c.request);
    s.upstream_reset();
    let client = s.expect_local_response(503);
    assert!(client.body_text().contains("upstream connect error"));
    assert!(s.finished());
    assert_eq!(s.filter_state("wasm.tollgate.cost_micros").as_deref(), Some("0"), "{:?}", s.filter_states());
}

#[test]
fn an_upstream_reset_mid_stream_is_charged_from_an_estimate() {
    let gw = gateway();
    let c = case("openai chat sse");
    let mut s = gw.stream();
    s.send_request(&refs(&c.headers()), &c.request);
    s.response_headers(&refs(&c.response_headers()), false);
    s.response_body(&c.response[..c.response.len() / 3], false);
    s.upstream_reset();
    assert!(s.client().reset);
    assert_eq!(s.filter_state("wasm.tollgate.estimated").as_deref(), Some("true"), "{:?}", s.filter_states());
}

#[test]
fn a_response_with_trailers_settles_once() {
    let gw = gateway();
    let c = case("anthropic messages json");
    let mut s = gw.stream();
    s.send_request(&refs(&c.headers()), &c.request);
    s.response_headers(&refs(&c.response_headers()), false);
    s.response_body(&c.response, false);
    s.response_trailers(&[("x-trailer", "1")]);
    assert_eq!(s.client().trailers, vec![("x-trailer".to_string(), "1".to_string())]);
    expect_metered(&s, &c);
    flush_counters(&gw);
    assert_eq!(gw.counter("tollgate_requests_anthropic_metered"), 1, "settled once");
}

#[test]
fn callbacks_for_contexts_and_calls_the_filter_never_saw_are_ignored_without_a_trap() {
    let gw = gateway();
    let c = case("openai chat sse");
    let mut s = gw.stream();
    s.send_request(&refs(&c.headers()), &c.request);
    s.respond(&refs(&c.response_headers()), &c.response);
    expect_metered(&s, &c);
    let (_, done) = s.id();
    const CONTINUE: Option<i32> = Some(0);
    // A context id never created (the SDK's dispatcher panicked on each of these).
    assert_eq!(gw.raw_callback(0, "proxy_on_request_headers", &[999, 3, 0]), CONTINUE);
    assert_eq!(gw.raw_callback(0, "proxy_on_request_body", &[999, 10, 1]), CONTINUE);
    assert_eq!(gw.raw_callback(0, "proxy_on_response_headers", &[999, 3, 0]), CONTINUE);
    assert_eq!(gw.raw_callback(0, "proxy_on_response_body", &[999, 10, 1]), CONTINUE);
    assert_eq!(gw.raw_callback(0, "proxy_on_done", &[999]), Some(1), "nothing to wait for");
    gw.raw_callback(0, "proxy_on_log", &[999]);
    gw.raw_callback(0, "proxy_on_delete", &[999]);
    // A stream deleted twice; a stream of a root that does not exist; an answer to a call
    // never made.
    gw.raw_callback(0, "proxy_on_delete", &[done as i32]);
    gw.raw_callback(0, "proxy_on_context_create", &[1000, 777]);
    assert_eq!(gw.raw_callback(0, "proxy_on_request_headers", &[1000, 3, 0]), CONTINUE, "no stream was made for it");
    gw.raw_callback(0, "proxy_on_http_call_response", &[1, 4242, 0, 0, 0]);
    assert!(gw.traps().is_empty(), "{:?}", gw.traps());
    // The VM goes on metering.
    let mut next = gw.stream();
    next.send_request(&refs(&c.headers()), &c.request);
    next.respond(&refs(&c.response_headers()), &c.response);
    expect_metered(&next, &c);
    flush_counters(&gw);
    assert_eq!(gw.counter("tollgate_requests_openai_metered"), 2);
}

#[test]
fn more_streams_at_once_than_the_context_table_has_slots_are_each_metered() {
    // 300 streams open together on one worker: ids 258 and up share a slot with a live stream
    // (the table has 256) and are kept beside it.
    let gw = gateway();
    let c = case("openai chat sse");
    let mut streams: Vec<_> = (0..300).map(|_| gw.stream_on(0)).collect();
    for s in &mut streams {
        s.send_request(&refs(&c.headers()), &c.request);
    }
    for s in &mut streams {
        s.response_headers(&refs(&c.response_headers()), false);
    }
    // Answered newest first, so the streams kept beside the table finish while its slots are full.
    for s in streams.iter_mut().rev() {
        s.response_body(&c.response, true);
    }
    for s in &streams {
        assert!(s.finished());
        expect_metered(s, &c);
    }
    assert!(gw.traps().is_empty(), "{:?}", gw.traps());
    flush_counters(&gw);
    assert_eq!(gw.counter("tollgate_requests_openai_metered"), 300);
}
