//! Shared steps for the tollgate scenarios.
#![allow(dead_code)]

use tollgate_host_tests::fixtures::{refs, Case, TEST_CONFIG};
use tollgate_host_tests::*;

pub fn gateway() -> Gateway {
    Gateway::new(TEST_CONFIG)
}

/// Runs `case` through a new stream: request in `request_chunks`, response in `response_chunks`.
pub fn run(gw: &Gateway, case: &Case, request_chunks: &[usize], response_chunks: &[usize]) -> Stream {
    let mut s = gw.stream();
    s.send_request_chunked(&refs(&case.headers()), &case.request, request_chunks);
    s.expect_upstream_body(&case.upstream_request);
    s.respond_chunked(&refs(&case.response_headers()), &case.response, response_chunks);
    s
}

/// The usage the filter published for the access log matches the case, and the cost is exact.
pub fn expect_metered(s: &Stream, case: &Case) {
    let st = |k: &str| s.filter_state(&format!("wasm.tollgate.{k}")).unwrap_or_else(|| panic!("{}: no filter state {k}; have {:?}", case.name, s.filter_states()));
    let t = case.tokens;
    let got = [st("tokens_input"), st("tokens_output"), st("tokens_cache_read"), st("tokens_cache_write"), st("tokens_reasoning")];
    let want = [t.input, t.output, t.cache_read, t.cache_write, t.reasoning].map(|n| n.to_string());
    assert_eq!(got, want, "{}: tokens (input, output, cache_read, cache_write, reasoning)", case.name);
    assert_eq!(st("outcome"), "metered", "{}", case.name);
    assert_eq!(st("estimated"), "false", "{}", case.name);
    assert_eq!(st("dialect"), case.dialect, "{}", case.name);
    assert_eq!(st("requested_model"), case.requested_model, "{}", case.name);
    assert_eq!(st("routed_model"), case.routed_model, "{}", case.name);
    assert_eq!(st("cost_micros"), case.cost_micros().to_string(), "{}: cost in micro-dollars", case.name);
}

/// Lets the filter's counters reach the host: they are flushed on the root tick, every 100 ms.
pub fn flush_counters(gw: &Gateway) {
    gw.advance(std::time::Duration::from_millis(100));
}

pub fn post(path: &str, body: &[u8]) -> Vec<(String, String)> {
    vec![
        (":method".into(), "POST".into()),
        (":path".into(), path.into()),
        (":authority".into(), "llm.internal".into()),
        (":scheme".into(), "http".into()),
        ("content-type".into(), "application/json".into()),
        ("content-length".into(), body.len().to_string()),
    ]
}

pub fn with(mut headers: Vec<(String, String)>, name: &str, value: &str) -> Vec<(String, String)> {
    headers.push((name.into(), value.into()));
    headers
}
