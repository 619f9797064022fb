//! What the filter asks of the host per request: in V8 every host call costs as much as scanning
//! hundreds of bytes, so the counts are part of the filter's cost. Metering alone reads the clock
//! once per request (the request's start); enforcement's extra reads are its own. The `calls`
//! reference filter (bench/noop-filter) must make the same calls as the filter on the benchmark's
//! request, or `make bench` misstates the floor.

use crate::common::*;
use std::collections::BTreeMap;
use tollgate_host_tests::fixtures::{cases, openai_chat_request, openai_chat_sse, refs, Case};
use tollgate_host_tests::*;

fn chat() -> Case {
    cases().into_iter().find(|c| c.name == "openai chat json").expect("fixture")
}

/// The host calls one finished request made (every VM, callbacks of this stream only: the
/// gateway is idle before and after).
fn calls_of(gw: &Gateway, run: impl FnOnce(&Gateway)) -> BTreeMap<&'static str, u64> {
    let before = gw.host_calls();
    run(gw);
    let after = gw.host_calls();
    after
        .into_iter()
        .filter_map(|(name, n)| {
            let d = n - before.get(name).copied().unwrap_or(0);
            (d > 0).then_some((name, d))
        })
        .collect()
}

#[test]
fn metering_only_reads_the_clock_once_per_request() {
    let gw = gateway();
    gw.start();
    let c = chat();
    for round in 0..3 {
        let before = gw.clock_reads();
        let s = run(&gw, &c, &[usize::MAX], &[usize::MAX]);
        expect_metered(&s, &c);
        assert_eq!(gw.clock_reads() - before, 1, "round {round}: clock reads for one metered request");
    }
}

/// The benchmark's request (bench/bench.py): a 2 KB streaming chat for `bench-chat` with a virtual
/// key, routed to gpt-4o with a provider header, answered with SSE, one or two lines per chunk.
fn bench_request(gw: &Gateway) {
    let body = openai_chat_request("bench-chat", true, 2048).into_bytes();
    let headers = with(with(post("/v1/chat/completions", &body), "authorization", "Bearer sk-bench-0123456789abcdef"), "x-mock-events", "20");
    let mut s = gw.stream();
    s.send_request(&refs(&headers), &body);
    assert!(s.upstream().complete, "the request reached the upstream: {:?}", s.client());
    let sse = openai_chat_sse("gpt-4o-2024-08-06", 20, 520, 160, 0, 0);
    let events: Vec<Vec<u8>> = sse.split_inclusive(|b| *b == b'\n').collect::<Vec<_>>().chunks(2).map(|p| p.concat()).collect();
    s.response_headers(&[(":status", "200"), ("content-type", "text/event-stream")], false);
    let last = events.len() - 1;
    for (i, chunk) in events.iter().enumerate() {
        s.response_body(chunk, i == last);
    }
    assert!(s.finished());
}

/// bench/bench.py's `TOLLGATE_CONFIG` (the virtual key's SHA-256 written out).
const BENCH_CONFIG: &str = r#"{
  "gateway_id": "bench",
  "attribution": { "virtual_keys": [ { "sha256": "4544960adbf893386971435af98a39b6f3a29f78107fbe68a787ab2467ba27d9",
    "principal": { "org": "acme", "team": "search", "user": "bench", "key_id": "bench" } } ] },
  "routing": { "rules": [
    { "name": "bench", "match": { "model": "bench-chat" }, "set_model": "gpt-4o", "set_headers": { "x-tollgate-provider": "openai" } }
  ] }
}"#;

#[test]
fn the_calls_reference_filter_makes_the_host_calls_the_filter_makes() {
    let tollgate = Gateway::new(BENCH_CONFIG);
    tollgate.start();
    let noop = module::tollgate_wasm_path().with_file_name("noop_filter.wasm");
    assert!(noop.exists(), "{} is built by `make wasm`", noop.display());
    let calls = Gateway::new(r#"{"mode":"calls"}"#).module(module::load_module(&noop));
    calls.start();
    // The first request on a VM pays one-time work (the log level is cached for a second).
    bench_request(&tollgate);
    bench_request(&calls);
    let want = calls_of(&tollgate, bench_request);
    let got = calls_of(&calls, bench_request);
    assert_eq!(got, want, "host calls per request: `calls` reference filter (left) vs tollgate metering (right)");
}

/// `calls-v1` is the floor before issue 17 corrected it, kept so `make bench` shows both: the
/// same calls as `calls` but for the response-body write where Tollgate strips the usage chunk.
#[test]
fn the_pre_issue_17_calls_reference_lacks_only_the_response_body_write() {
    let noop = module::tollgate_wasm_path().with_file_name("noop_filter.wasm");
    assert!(noop.exists(), "{} is built by `make wasm`", noop.display());
    let calls = Gateway::new(r#"{"mode":"calls"}"#).module(module::load_module(&noop));
    let v1 = Gateway::new(r#"{"mode":"calls-v1"}"#).module(module::load_module(&noop));
    calls.start();
    v1.start();
    bench_request(&calls);
    bench_request(&v1);
    let mut want = calls_of(&calls, bench_request);
    let got = calls_of(&v1, bench_request);
    // The body write is one proxy_set_buffer_bytes; the rest is the same.
    match want.get_mut("proxy_set_buffer_bytes") {
        Some(n) if *n > 1 => *n -= 1,
        _ => panic!("`calls` writes the request body and one response chunk: {want:?}"),
    }
    assert_eq!(got, want, "host calls per request: `calls-v1` (left) vs `calls` less one body write (right)");
}
