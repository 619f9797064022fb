//! The host itself, tested with its own probe filter (fixtures/probe-filter): every capability
//! tollgate's enforcement will lean on — shared data with CAS across workers, shared queues and
//! their notifications, ticks on virtual time, dispatched calls answered late, timed out or
//! failed, paused streams, local replies, buffering, filter state, metrics, traps.

use tollgate_host_tests::fixtures::probe_module;
use tollgate_host_tests::*;

fn probe(config: &str) -> Gateway {
    Gateway::new(config).module(probe_module())
}

const GET: [(&str, &str); 3] = [(":method", "GET"), (":authority", "api"), (":scheme", "http")];

fn headers(path: &str) -> Vec<(&str, &str)> {
    let mut h = GET.to_vec();
    h.push((":path", path));
    h
}

#[test]
fn a_refused_configuration_is_reported_with_the_filters_log() {
    let refusal = probe("refuse").try_start().expect_err("the probe refuses 'refuse'");
    assert!(refusal.log_text().contains("probe config: refused on purpose"), "{}", refusal.log_text());
}

#[test]
fn headers_are_lower_cased_edited_and_forwarded_and_the_response_is_edited_for_the_client() {
    let gw = probe("");
    let mut s = gw.stream();
    let mut h = headers("/plain");
    h.push(("X-Strip", "secret"));
    s.send_request(&h, b"hello");
    s.expect_upstream_body(b"hello");
    let up = s.upstream();
    assert_eq!(up.header("x-strip"), None);
    assert_eq!(up.header("x-probe-context"), Some("2"), "first stream context after root 1");
    s.respond(&[(":status", "200")], b"abc");
    let client = s.client();
    assert_eq!(client.status(), Some(200));
    assert_eq!(client.header("x-probe"), Some("1"));
    assert_eq!(client.body, b"abc");
    assert!(s.finished());
    assert_eq!(s.filter_state("wasm.probe.response_bytes").as_deref(), Some("3"));
    assert_eq!(gw.counter("probe_response_bytes"), 3);
    assert!(s.instructions() > 0);
}

#[test]
fn a_paused_body_accumulates_and_is_replaced_whole() {
    let gw = probe("");
    let mut s = gw.stream();
    s.send_request_chunked(&headers("/upper"), b"hello world", &[3]);
    s.expect_upstream_body(b"HELLO WORLD");
    assert_eq!(s.filter_state("wasm.probe.request_size").as_deref(), Some("11"), "the last callback saw every byte");
}

#[test]
fn a_body_buffered_past_the_limit_gets_envoys_413_through_the_filter() {
    let gw = probe("").buffer_limit(8);
    let mut s = gw.stream();
    s.send_request_chunked(&headers("/upper"), b"0123456789abcdef", &[4]);
    let client = s.expect_local_response(413);
    assert_eq!(client.body_text(), "Payload Too Large");
    assert_eq!(client.header("x-probe"), Some("1"), "Envoy encodes its local reply through the filter");
}

#[test]
fn a_local_reply_wins_over_continue_and_passes_through_the_filter() {
    let gw = probe("");
    let mut s = gw.stream();
    s.send_request(&headers("/deny"), b"{}");
    let client = s.expect_local_response(429);
    assert_eq!(client.json()["error"], "denied");
    assert_eq!(client.header("retry-after"), Some("7"));
    assert_eq!(client.header("content-type"), Some("application/json"));
    assert_eq!(client.header("x-probe"), Some("1"));
    assert!(s.upstream().headers.is_none(), "nothing reached the upstream");
    assert!(s.finished());
}

#[test]
fn a_stream_paused_on_a_call_resumes_when_the_answer_comes_after_a_delay() {
    let gw = probe("");
    let mut s = gw.stream();
    s.send_request(&headers("/call"), b"");
    assert!(s.upstream().headers.is_none(), "held while the call is out");
    let call = gw.answer_call(|c| {
        assert_eq!((c.cluster.as_str(), c.path()), ("auth", "/check"));
        Answer::status(200).after(Duration::from_millis(250))
    });
    assert_eq!(call.timeout_ms, 1000);
    assert!(s.upstream().headers.is_none(), "the answer is 250 ms away");
    gw.advance(Duration::from_millis(249));
    assert!(s.upstream().headers.is_none());
    gw.advance(Duration::from_millis(1));
    assert!(s.upstream().complete, "resumed at 250 ms");
}

#[test]
fn an_unanswered_call_times_out_with_envoys_504() {
    let gw = probe("");
    let mut s = gw.stream();
    s.send_request(&headers("/call"), b"");
    gw.advance(Duration::from_millis(999));
    assert!(s.client().headers.is_none());
    gw.advance(Duration::from_millis(1));
    assert_eq!(s.expect_local_response(503).json()["error"], "call answered 504");
}

#[test]
fn a_late_answer_loses_to_the_timeout_and_unknown_clusters_are_refused() {
    let gw = probe("");
    let mut s = gw.stream();
    s.send_request(&headers("/call"), b"");
    gw.answer_call(|_| Answer::status(200).after(Duration::from_secs(5)));
    gw.advance(Duration::from_secs(1));
    assert_eq!(s.expect_local_response(503).json()["error"], "call answered 504");

    let gw = probe("").clusters(&["counter"]);
    let mut s = gw.stream();
    s.send_request(&headers("/call"), b"");
    assert_eq!(s.expect_local_response(500).body_text(), "dispatch refused");
}

#[test]
fn connect_failures_and_resets_reach_the_filter_as_envoy_delivers_them() {
    let gw = probe("");
    let mut s = gw.stream();
    s.send_request(&headers("/call"), b"");
    gw.answer_call(|_| Answer::connect_failure());
    assert_eq!(s.expect_local_response(503).json()["error"], "call answered 503");

    let mut s = gw.stream();
    s.send_request(&headers("/call"), b"");
    gw.answer_call(|_| Answer::reset());
    assert_eq!(s.expect_local_response(503).json()["error"], "call answered reset", "a reset has no headers");
}

#[test]
fn a_client_that_leaves_cancels_the_streams_calls() {
    let gw = probe("");
    let mut s = gw.stream();
    s.send_request(&headers("/call"), b"");
    assert_eq!(gw.pending_calls().len(), 1);
    s.client_reset();
    assert!(s.finished());
    gw.expect_no_calls();
}

#[test]
fn ticks_fire_per_period_on_every_worker_and_share_a_cas_counter() {
    let gw = probe("tick=1000").workers(3);
    gw.start();
    gw.advance(Duration::from_millis(999));
    assert_eq!(gw.shared_data("ticks"), None);
    gw.advance(Duration::from_millis(1));
    assert_eq!(gw.shared_data("ticks").map(|(v, _)| v), Some(b"3".to_vec()), "one tick per worker");
    gw.advance(Duration::from_millis(4000));
    assert_eq!(gw.shared_data("ticks").map(|(v, _)| v), Some(b"15".to_vec()));
}

#[test]
fn records_queued_by_streams_on_any_worker_are_batched_on_a_tick() {
    let gw = probe("tick=1000").workers(2);
    for path in ["/a", "/b"] {
        let mut s = gw.stream();
        s.send_request(&headers(path), b"");
        s.respond(&[(":status", "200")], b"xy");
    }
    assert_eq!(gw.queue_len("records"), 2);
    assert_eq!(gw.shared_data("queue_ready").map(|(v, _)| v), Some(b"2".to_vec()), "the registrant is told per enqueue");
    gw.advance(Duration::from_secs(1));
    let batch = gw.answer_call_to("/v1/usage", |c| {
        assert_eq!(c.json(), serde_json::json!([{"path": "/a", "bytes": 2}, {"path": "/b", "bytes": 2}]));
        Answer::status(200).body("ok")
    });
    assert_eq!(batch.method(), "POST");
    assert_eq!(gw.queue_len("records"), 0);
    assert_eq!(gw.shared_data("last_status").map(|(v, _)| v), Some(b"200".to_vec()));
    assert_eq!(gw.logs_containing("root call answered 200 ok").len(), 1);
}

#[test]
fn auto_answers_model_a_dependency_that_is_down() {
    let gw = probe("");
    gw.auto_answer(|_| Answer::connect_failure());
    let mut s = gw.stream();
    s.send_request(&headers("/call"), b"");
    assert_eq!(s.expect_local_response(503).json()["error"], "call answered 503");
}

#[test]
fn headers_paused_then_continued_by_the_body_are_forwarded_with_it() {
    let gw = probe("");
    let mut s = gw.stream();
    assert_eq!(s.request_headers(&headers("/hold-headers"), false), 1);
    assert!(s.upstream().headers.is_none());
    s.request_body(b"x", true);
    s.expect_upstream_body(b"x");
}

#[test]
fn reading_request_headers_after_they_continued_traps_as_in_envoy() {
    let gw = probe("").allow_traps();
    let mut s = gw.stream();
    s.send_request(&headers("/read-headers-late"), b"x");
    let traps = gw.traps();
    assert_eq!(traps.len(), 1);
    assert!(traps[0].to_string().contains("unexpected status: 2"), "the SDK panics on BadArgument: {}", traps[0]);
    assert_eq!(s.expect_local_response(503).body, b"");
    // The VM is failed: the next stream on the worker gets 503 without the filter.
    let mut next = gw.stream();
    next.send_request(&headers("/plain"), b"");
    next.expect_local_response(503);
}

#[test]
#[should_panic(expected = "probe panic on purpose")]
fn a_panic_fails_the_test_with_the_filters_message() {
    let gw = probe("");
    let mut s = gw.stream();
    s.send_request(&headers("/panic"), b"");
}

#[test]
fn an_upstream_reset_before_headers_is_envoys_503_through_the_filter() {
    let gw = probe("");
    let mut s = gw.stream();
    s.send_request(&headers("/plain"), b"");
    s.upstream_reset();
    let client = s.expect_local_response(503);
    assert!(client.body_text().starts_with("upstream connect error"));
    assert_eq!(client.header("x-probe"), Some("1"));
}

#[test]
fn a_buffered_response_reaches_the_client_whole() {
    let gw = probe("");
    let mut s = gw.stream();
    s.send_request(&headers("/buffer-response"), b"");
    s.respond_chunked(&[(":status", "200")], b"0123456789", &[3]);
    assert_eq!(s.client().body, b"0123456789");
    // The probe adds up the size of every callback: 3, 6, 9 then 10 bytes buffered.
    assert_eq!(s.filter_state("wasm.probe.response_bytes").as_deref(), Some("28"));
}

#[test]
fn header_pairs_round_trip_in_the_abi_wire_format_and_truncation_is_refused() {
    use tollgate_host_tests::abi::{deserialize_pairs, serialize_pairs};
    let pairs = vec![(":path".to_string(), b"/v1/x".to_vec()), ("x-empty".to_string(), Vec::new())];
    let bytes = serialize_pairs(&pairs);
    assert_eq!(deserialize_pairs(&bytes), Some(pairs));
    assert_eq!(deserialize_pairs(&bytes[..bytes.len() - 3]), None);
}

#[test]
fn shared_data_cas_zero_is_unconditional_and_a_stale_cas_is_refused() {
    let mut s = tollgate_host_tests::shared::Shared::new(0);
    assert!(s.set_data("vm", "k", b"1".to_vec(), 0));
    let cas = s.data[&("vm".to_string(), "k".to_string())].1;
    assert!(s.set_data("vm", "k", b"2".to_vec(), cas));
    assert!(!s.set_data("vm", "k", b"3".to_vec(), cas), "the cas moved on after the last write");
    assert!(s.set_data("vm", "k", b"4".to_vec(), 0));
    assert!(s.set_data("vm", "new", b"x".to_vec(), 12345), "a missing key is set whatever the cas (Envoy)");
}
