//! Every dialect, JSON and streaming: the upstream gets the routed model with every other byte
//! as the client sent it, the client gets the upstream's answer untouched, and the usage in that
//! answer is metered, kept apart by kind and priced in exact integer micro-dollars.

use crate::common::*;
use tollgate_host_tests::fixtures::{cases, refs};

#[test]
fn every_dialect_is_routed_byte_exact_and_metered() {
    let gw = gateway();
    for case in cases() {
        let s = run(&gw, &case, &[usize::MAX], &[usize::MAX]);
        let up = s.upstream();
        assert_eq!(up.header(":path"), Some(case.upstream_path.as_str()), "{}: upstream path", case.name);
        assert_eq!(
            up.header("content-length"),
            Some(case.upstream_request.len().to_string().as_str()),
            "{}: content-length follows the rewritten body",
            case.name
        );
        assert_eq!(up.header("accept-encoding"), Some("identity"), "{}: usage must stay readable", case.name);
        let client = s.client();
        assert_eq!(client.status(), Some(200), "{}", case.name);
        assert_eq!(client.body, case.client_response(), "{}: the client gets the upstream's bytes", case.name);
        assert!(s.finished());
        expect_metered(&s, &case);
    }
}

#[test]
fn an_event_stream_is_recognised_in_any_case_and_with_parameters() {
    let gw = gateway();
    for case in cases().into_iter().filter(|c| c.response_content_type == "text/event-stream") {
        for content_type in ["Text/Event-Stream; charset=utf-8", "TEXT/EVENT-STREAM", "text/event-stream;charset=UTF-8"] {
            gw.label(format!("{} as {content_type}", case.name));
            let mut s = gw.stream();
            s.send_request(&refs(&case.headers()), &case.request);
            s.response_headers(&[(":status", "200"), ("content-type", content_type)], false);
            s.response_body(&case.response, true);
            // Read as SSE: the usage chunk the filter asked for is not the client's.
            assert_eq!(s.client().body, case.client_response(), "{} as {content_type}", case.name);
            expect_metered(&s, &case);
        }
    }
}

#[test]
fn routing_rules_pick_the_provider_cluster_by_header() {
    let gw = gateway();
    for case in cases() {
        let s = run(&gw, &case, &[usize::MAX], &[usize::MAX]);
        let want = match case.dialect {
            "openai" if case.routed_model == "tg-embed" => None,
            "openai" => Some("openai"),
            "azure_openai" => Some("azure"),
            "anthropic" => Some("anthropic"),
            _ => Some("gemini"),
        };
        assert_eq!(s.upstream().header("x-tollgate-provider"), want, "{}", case.name);
        let rule = s.filter_state("wasm.tollgate.rule");
        assert!(rule.is_some(), "{}: the matching rule is in the access log", case.name);
    }
}

#[test]
fn metering_does_not_depend_on_how_request_and_response_are_chunked() {
    let gw = gateway();
    for case in cases() {
        for (req, resp) in [(&[1usize][..], &[1usize][..]), (&[7], &[3, 50]), (&[64], &[13])] {
            let s = run(&gw, &case, req, resp);
            assert_eq!(s.client().body, case.client_response(), "{}", case.name);
            expect_metered(&s, &case);
        }
    }
}

#[test]
fn metrics_count_requests_tokens_and_cost() {
    let gw = gateway();
    let all = cases();
    for case in &all {
        run(&gw, case, &[usize::MAX], &[usize::MAX]);
    }
    flush_counters(&gw);
    let sum = |f: fn(&tollgate_host_tests::fixtures::Tokens) -> u64| all.iter().map(|c| f(&c.tokens)).sum::<u64>();
    assert_eq!(gw.counter("tollgate_tokens_input"), sum(|t| t.input));
    assert_eq!(gw.counter("tollgate_tokens_output"), sum(|t| t.output));
    assert_eq!(gw.counter("tollgate_tokens_cache_read"), sum(|t| t.cache_read));
    assert_eq!(gw.counter("tollgate_tokens_cache_write"), sum(|t| t.cache_write));
    assert_eq!(gw.counter("tollgate_tokens_reasoning"), sum(|t| t.reasoning));
    let openai = all.iter().filter(|c| c.dialect == "openai").count() as u64;
    assert_eq!(gw.counter("tollgate_requests_openai_metered"), openai);
    assert_eq!(gw.counter("tollgate_requests_gemini_metered"), 2);
    let cost: i64 = all.iter().map(|c| c.cost_micros()).sum();
    let cost_metric = gw.metrics().into_iter().find(|(k, _)| k.contains("cost")).map(|(k, v)| (k, v));
    assert!(cost_metric.is_some(), "a cost metric exists; metrics: {:?}", gw.metrics().keys().collect::<Vec<_>>());
    assert_eq!(gw.counter(&cost_metric.unwrap().0), cost as u64, "cost metric in micro-dollars");
}

/// Counters are added up in the VM and reach the host on the next tick, not with each request
/// (a host call per counter per request was a measurable share of the filter's cost).
#[test]
fn counters_reach_the_host_within_one_tick_not_per_request() {
    let gw = gateway();
    let case = cases().into_iter().find(|c| c.name == "openai chat sse").expect("fixture");
    run(&gw, &case, &[usize::MAX], &[usize::MAX]);
    run(&gw, &case, &[usize::MAX], &[usize::MAX]);
    assert_eq!(gw.counter("tollgate_requests_openai_metered"), 0, "nothing is handed over per request");
    flush_counters(&gw);
    assert_eq!(gw.counter("tollgate_requests_openai_metered"), 2);
    assert_eq!(gw.counter("tollgate_tokens_input"), 2 * case.tokens.input);
    flush_counters(&gw);
    assert_eq!(gw.counter("tollgate_requests_openai_metered"), 2, "a flush hands each count over once");
}

#[test]
fn streams_on_several_workers_are_metered_independently() {
    let gw = gateway().workers(3);
    let all = cases();
    let streams: Vec<_> = all.iter().map(|c| run(&gw, c, &[5], &[11])).collect();
    for (s, c) in streams.iter().zip(&all) {
        expect_metered(s, c);
    }
    assert_eq!(streams.iter().map(|s| s.id().0).max(), Some(2));
}

#[test]
fn an_unknown_path_passes_through_untouched_and_is_counted() {
    let gw = gateway();
    let mut s = gw.stream();
    let body = br#"{"model":"test-chat"}"#;
    let h = post("/v1/models/whatever", body);
    s.send_request(&refs(&h), body);
    s.expect_upstream_body(body);
    assert_eq!(s.upstream().header("accept-encoding"), None);
    s.respond(&[(":status", "200")], b"{}");
    assert_eq!(s.client().body, b"{}");
    assert_eq!(s.filter_state("wasm.tollgate.outcome"), None);
    flush_counters(&gw);
    assert_eq!(gw.counter("tollgate_passthrough"), 1, "metrics: {:?}", gw.metrics().keys().collect::<Vec<_>>());
}
