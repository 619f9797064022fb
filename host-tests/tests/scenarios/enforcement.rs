//! Enforcement (issue 4) with the counter service played by the test, on virtual time: a request
//! that waits for a lease and resumes when it comes, refusals at a hard limit, the counter down
//! (fail-closed and fail-open), and usage delivered in tick-driven batches, redelivered after a
//! failed post with the same ids.

use crate::common::*;
use serde_json::{json, Value};
use tollgate_host_tests::fixtures::{cases, refs, Case, TEST_CONFIG};
use tollgate_host_tests::*;

const CLUSTER: &str = "tollgate_counter";

fn enforcing(failure_mode: &str) -> Gateway {
    Gateway::new(enforcing_config(failure_mode).to_string())
}

fn enforcing_config(failure_mode: &str) -> Value {
    let mut v: Value = serde_json::from_str(TEST_CONFIG).expect("TEST_CONFIG is JSON");
    v["enforcement"] = json!({
        "counter_cluster": CLUSTER,
        "gateway_token": "gt-secret",
        "lease_slice_usd": "1",
        "failure_mode": failure_mode,
        "flush_interval_ms": 1000,
        "call_timeout_ms": 500,
        "default_max_output_tokens": 1000
    });
    v
}

fn chat() -> Case {
    cases().into_iter().find(|c| c.name == "openai chat json").expect("fixture")
}

fn request_headers(c: &Case, id: &str) -> Vec<(String, String)> {
    with(with(c.headers(), "x-auth-team", "platform"), "x-request-id", id)
}

/// A lease answer granting `granted` micro-dollars on every scope asked for.
fn grant(call: &HttpCall, granted: i64, status: &str, now_ms: u64) -> Answer {
    let req = call.json();
    let budgets: Vec<Value> = req["scopes"]
        .as_array()
        .unwrap_or_else(|| panic!("a LeaseRequest has scopes: {req}"))
        .iter()
        .map(|scope| {
            json!({
                "budget_id": format!("b-{}", scope.as_str().unwrap_or("?")),
                "scope": scope,
                "mode": "enforce",
                "granted_micros": granted,
                "spent_micros": 0,
                "limit_micros": 10_000_000,
                "hard_limit_micros": 10_000_000,
                "soft_threshold_pct": 80,
                "status": status,
                "resets_at": (now_ms / 1000) + 3600,
                "lease_expires_at_ms": now_ms + 60_000
            })
        })
        .collect();
    Answer::json(200, &json!({ "budgets": budgets }))
}

/// A request's settlement reaches the lease book on the worker's next tick, with every other
/// request that ended since (one shared-data write per scope), not as each request ends: until
/// then the book still holds the request's worst case, so nothing is over-granted meanwhile.
#[test]
fn settlements_reach_the_lease_book_on_the_next_tick() {
    let gw = enforcing("fail_closed");
    let c = chat();
    let mut s = gw.stream();
    s.send_request(&refs(&request_headers(&c, "req-1")), &c.request);
    let now = gw.now_ms();
    gw.answer_call_to("/v1/leases", |call| grant(call, 1_000_000, "ok", now));
    gw.advance(Duration::from_millis(1));
    s.expect_upstream_body(&c.upstream_request);
    let entry = || {
        let (bytes, _) = gw.shared_data("tollgate.lease.org:acme").expect("org:acme has a lease entry");
        tollgate_core::enforce::book::ScopeEntry::decode(&bytes).expect("the entry decodes")
    };
    let reserved = entry().budgets[0].reserved;
    assert!(reserved > 0, "the worst case is reserved while the request runs");
    s.respond(&refs(&c.response_headers()), &c.response);
    assert_eq!(s.client().status(), Some(200));
    assert_eq!(entry().budgets[0].reserved, reserved, "ended, not yet written: the book still holds the worst case");
    assert_eq!(entry().unacked, 0);
    gw.advance(Duration::from_millis(20));
    let after = entry();
    assert_eq!(after.budgets[0].reserved, 0, "the tick released the reservation");
    assert_eq!(after.unacked, c.cost_micros(), "and charged the real cost");
}

#[test]
fn a_request_waits_for_its_lease_and_resumes_when_the_counter_answers() {
    let gw = enforcing("fail_closed");
    let c = chat();
    let mut s = gw.stream();
    s.send_request(&refs(&request_headers(&c, "req-1")), &c.request);
    assert!(s.upstream().headers.is_none(), "paused: no lease yet");
    let now = gw.now_ms();
    let call = gw.answer_call_to("/v1/leases", |call| grant(call, 1_000_000, "ok", now).after(Duration::from_millis(250)));
    assert_eq!(call.cluster, CLUSTER);
    assert_eq!(call.method(), "POST");
    assert_eq!(call.header("authorization"), Some("Bearer gt-secret"));
    let lease = call.json();
    assert_eq!(lease["gateway_id"], "gw-test");
    assert_eq!(lease["scopes"], json!(["org:acme", "team:platform"]));
    assert!(lease["want_micros"].as_i64().unwrap_or(0) >= 1_000_000, "asks for at least the slice: {lease}");
    gw.advance(Duration::from_millis(249));
    assert!(s.upstream().headers.is_none(), "the grant is 250 ms away");
    gw.advance(Duration::from_millis(1));
    s.expect_upstream_body(&c.upstream_request);
    s.respond(&refs(&c.response_headers()), &c.response);
    expect_metered(&s, &c);

    // The next request is covered by the slice in hand: no network wait.
    let mut next = gw.stream();
    next.send_request(&refs(&request_headers(&c, "req-2")), &c.request);
    next.expect_upstream_body(&c.upstream_request);
}

#[test]
fn settled_usage_leaves_in_a_tick_batch_and_is_redelivered_after_a_failed_post() {
    let gw = enforcing("fail_closed").workers(2);
    let c = chat();
    let now = gw.now_ms();
    let mut record_ids = Vec::new();
    for (i, id) in ["req-a", "req-b"].iter().enumerate() {
        let mut s = gw.stream();
        s.send_request(&refs(&request_headers(&c, id)), &c.request);
        if i == 0 {
            gw.answer_call_to("/v1/leases", |call| grant(call, 1_000_000, "ok", now));
        }
        s.expect_upstream_body(&c.upstream_request);
        s.respond(&refs(&c.response_headers()), &c.response);
        // The client learns the record id; it starts with the gateway and its x-request-id.
        let record_id = s.client().header("x-tollgate-request-id").map(String::from).expect("x-tollgate-request-id on the response");
        assert!(record_id.starts_with(&format!("gw-test:{id}")), "{record_id}");
        record_ids.push(record_id);
    }
    record_ids.sort();
    // Background lease top-ups may come and go; answer them as a healthy counter would.
    let answer_leases = |gw: &Gateway| {
        while gw.pending_calls().iter().any(|c| c.path() == "/v1/leases") {
            let now = gw.now_ms();
            gw.answer_call_to("/v1/leases", |call| grant(call, 1_000_000, "ok", now));
        }
    };
    gw.advance(Duration::from_millis(1000));
    answer_leases(&gw);
    let failed = gw.answer_call_to("/v1/usage", |_| Answer::status(500).body("ingest down"));
    let first: Value = failed.json();
    let ids = |batch: &Value| -> Vec<String> {
        let mut v: Vec<String> = batch["records"].as_array().into_iter().flatten().filter_map(|r| r["id"].as_str().map(String::from)).collect();
        v.sort();
        v
    };
    assert_eq!(ids(&first), record_ids, "both workers' records in one batch: {first}");
    let record = &first["records"][0];
    assert_eq!(record["cost_micros"], json!(c.cost_micros()));
    assert_eq!(record["tokens"]["input"], json!(c.tokens.input));
    assert_eq!(record["routed_model"], "tg-chat");
    assert_eq!(record["status"], 200);
    // Redelivered on a later tick, same ids, then acknowledged and gone.
    gw.advance(Duration::from_millis(2000));
    answer_leases(&gw);
    let again = gw.expect_usage_batch();
    assert_eq!(ids(&again), ids(&first), "redelivery keeps the ids, so the counter counts once");
    gw.advance(Duration::from_millis(3000));
    answer_leases(&gw);
    assert!(
        !gw.pending_calls().iter().any(|c| c.path() == "/v1/usage"),
        "acknowledged records are not sent again: {:?}",
        gw.pending_calls().iter().map(|c| c.path().to_string()).collect::<Vec<_>>()
    );
}

/// The unacknowledged-records gauge is one figure every worker writes after changing the shared
/// count; two workers' writes can land out of order and leave it wrong (0 with records waiting,
/// or a count long acknowledged). Each tick writes the count as it is, so it is right again on
/// the next tick: what a drain check or an alert on it reads.
#[test]
fn the_unacknowledged_gauge_is_put_right_on_the_next_tick_after_a_stale_write() {
    const GAUGE: &str = "tollgate_usage_unacked";
    let gw = enforcing("fail_closed").workers(2);
    let c = chat();
    let now = gw.now_ms();
    let mut s = gw.stream_on(1);
    s.send_request(&refs(&request_headers(&c, "req-gauge")), &c.request);
    gw.answer_call_to("/v1/leases", |call| grant(call, 1_000_000, "ok", now));
    s.respond(&refs(&c.response_headers()), &c.response);
    let gauge = || match gw.metric(GAUGE) {
        Some(Metric::Gauge(v)) => v,
        other => panic!("{GAUGE} is a gauge: {other:?}"),
    };
    assert_eq!(gauge(), 1, "the settled record waits for its batch");
    // Another worker's late write of an older figure.
    gw.overwrite_gauge(GAUGE, 0);
    gw.advance(Duration::from_millis(100));
    assert_eq!(gauge(), 1, "the next tick writes the shared count back");
    // Delivered and acknowledged, then a late write of the count before it.
    gw.advance(Duration::from_millis(1000));
    while gw.pending_calls().iter().any(|c| c.path() == "/v1/leases") {
        let now = gw.now_ms();
        gw.answer_call_to("/v1/leases", |call| grant(call, 1_000_000, "ok", now));
    }
    gw.expect_usage_batch();
    assert_eq!(gauge(), 0, "acknowledged");
    gw.overwrite_gauge(GAUGE, 1);
    gw.advance(Duration::from_millis(100));
    assert_eq!(gauge(), 0, "the next tick writes the shared count back");
}

#[test]
fn a_budget_at_its_hard_limit_refuses_with_429_in_the_dialects_shape() {
    let gw = enforcing("fail_closed");
    let c = cases().into_iter().find(|c| c.name == "anthropic messages json").expect("fixture");
    let mut s = gw.stream();
    s.send_request(&refs(&request_headers(&c, "req-hard")), &c.request);
    let now = gw.now_ms();
    gw.answer_call_to("/v1/leases", |call| grant(call, 0, "hard", now));
    gw.advance(Duration::from_millis(1));
    let client = s.expect_local_response(429);
    let body = client.json();
    assert_eq!(body["type"], "error", "anthropic shape: {body}");
    assert!(client.header("retry-after").is_some(), "Retry-After at the window reset: {:?}", client.headers);
    assert!(s.upstream().headers.is_none());
}

#[test]
fn counter_down_fail_closed_answers_503_with_what_to_do() {
    let gw = enforcing("fail_closed");
    gw.auto_answer(|_| Answer::connect_failure());
    let c = chat();
    let mut s = gw.stream();
    s.send_request(&refs(&request_headers(&c, "req-down")), &c.request);
    gw.advance(Duration::from_millis(10));
    let client = s.expect_local_response(503);
    let body = client.json();
    assert_eq!(body["error"]["code"], "budget_service_unavailable", "{body}");
    assert!(s.upstream().headers.is_none());
}

#[test]
fn counter_down_fail_open_keeps_serving_and_delivers_the_records_when_it_is_back() {
    let gw = enforcing("fail_open");
    gw.auto_answer(|_| Answer::timeout());
    let c = chat();
    let mut s = gw.stream();
    s.send_request(&refs(&request_headers(&c, "req-open")), &c.request);
    gw.advance(Duration::from_millis(600));
    s.expect_upstream_body(&c.upstream_request);
    s.respond(&refs(&c.response_headers()), &c.response);
    expect_metered(&s, &c);
    let record_id = s.client().header("x-tollgate-request-id").map(String::from).expect("x-tollgate-request-id");
    // Posts fail while it is down (timeouts); nothing is lost.
    gw.advance(Duration::from_secs(3));
    gw.stop_auto_answer();
    gw.advance(Duration::from_secs(2));
    let mut delivered = Vec::new();
    for _ in 0..10 {
        let pending = gw.pending_calls();
        if let Some(call) = pending.iter().find(|c| c.path() == "/v1/usage") {
            let _ = call;
            let batch = gw.expect_usage_batch();
            delivered.extend(batch["records"].as_array().cloned().unwrap_or_default());
        } else if pending.iter().any(|c| c.path() == "/v1/leases") {
            let now = gw.now_ms();
            gw.answer_call_to("/v1/leases", |call| grant(call, 1_000_000, "ok", now));
        } else {
            gw.advance(Duration::from_millis(500));
        }
    }
    let ids: Vec<&str> = delivered.iter().filter_map(|r| r["id"].as_str()).collect();
    assert_eq!(ids, [record_id.as_str()], "delivered exactly once when the counter is back");
}

/// A counter whose budget has exactly `headroom` left: it grants all of it (a real counter grants
/// `min(want, headroom)`, so a short grant tells the gateway there is no more).
fn grant_all_there_is(call: &HttpCall, headroom: i64, now_ms: u64) -> Answer {
    let Answer::Response { body, .. } = grant(call, headroom, "ok", now_ms) else { unreachable!() };
    let mut v: Value = serde_json::from_slice(&body).expect("json");
    for b in v["budgets"].as_array_mut().into_iter().flatten() {
        b["limit_micros"] = json!(headroom);
        b["hard_limit_micros"] = json!(headroom);
    }
    Answer::json(200, &v)
}

#[test]
fn workers_share_one_lease_book_two_worst_cases_fit_the_third_is_refused() {
    // Worst case of the chat fixture: ~430 prompt bytes at the dearest prompt price (cache write,
    // 4 µ$/token, one token per byte) + max_tokens 256 at 15 µ$ = 5,560 µ$. A budget with 12,000 µ$
    // of headroom covers two requests in flight, whichever worker they run on, and not a third.
    let gw = enforcing("fail_closed").workers(3);
    let c = chat();
    let mut first = gw.stream();
    first.send_request(&refs(&request_headers(&c, "w0")), &c.request);
    let now = gw.now_ms();
    gw.answer_call_to("/v1/leases", |call| grant_all_there_is(call, 12_000, now));
    first.expect_upstream_body(&c.upstream_request);
    let mut second = gw.stream();
    second.send_request(&refs(&request_headers(&c, "w1")), &c.request);
    second.expect_upstream_body(&c.upstream_request);
    assert_ne!(first.id().0, second.id().0, "different workers");
    let mut third = gw.stream();
    third.send_request(&refs(&request_headers(&c, "w2")), &c.request);
    let client = third.expect_local_response(429);
    let message = client.json()["error"]["message"].as_str().unwrap_or_default().to_string();
    assert!(message.contains("0.005560"), "the refusal names the request's worst case: {message}");
    assert!(third.upstream().headers.is_none());
    flush_counters(&gw);
    assert_eq!(gw.counter("tollgate_enforce_admitted_total"), 2);
    assert_eq!(gw.counter("tollgate_enforce_refused_total"), 1);
}

/// `reserve: p99` (issue 18 §3): the same $0.012 of headroom as above, now with the lease's p99 of
/// 16 output tokens for the routed model and $0.006 of excess headroom. A request reserves its
/// p99 cost (1,720 µ$ of prompt + 16 × 15 µ$ = 1,960 µ$) and is admitted while its worst case
/// (5,560 µ$) fits in the slice plus the headroom: three of a burst of eight go through instead of
/// two, their worst cases (16,680 µ$) within 12,000 + 6,000, and each usage record names the
/// reservations so the counter can count what was spent beyond them.
#[test]
fn a_p99_budget_admits_more_of_a_burst_while_the_worst_cases_stay_within_slice_and_excess_headroom() {
    for (policy, admitted) in [("worst_case", 2), ("p99", 3)] {
        let gw = enforcing("fail_closed").workers(3);
        let c = chat();
        let answer = |call: &HttpCall, now: u64| {
            let Answer::Response { body, .. } = grant_all_there_is(call, 12_000, now) else { unreachable!() };
            let mut v: Value = serde_json::from_slice(&body).expect("json");
            if policy == "p99" {
                for b in v["budgets"].as_array_mut().into_iter().flatten() {
                    b["reserve_output_tokens"] = json!({ "tg-chat": 16, "another-model": 1 });
                    b["reserve_excess_micros"] = json!(6_000);
                }
            }
            Answer::json(200, &v)
        };
        let mut streams = Vec::new();
        let mut refused = 0;
        for i in 0..8 {
            let mut s = gw.stream();
            s.send_request(&refs(&request_headers(&c, &format!("burst-{i}"))), &c.request);
            if i == 0 {
                let now = gw.now_ms();
                gw.answer_call_to("/v1/leases", |call| answer(call, now));
            }
            if s.upstream().headers.is_some() {
                s.expect_upstream_body(&c.upstream_request);
                streams.push(s);
            } else {
                s.expect_local_response(429);
                refused += 1;
            }
        }
        assert_eq!((streams.len(), refused), (admitted, 8 - admitted), "{policy}: admitted of a burst of 8");
        for s in &mut streams {
            s.respond(&refs(&c.response_headers()), &c.response);
        }
        gw.advance(Duration::from_millis(1000));
        while gw.pending_calls().iter().any(|call| call.path() == "/v1/leases") {
            let now = gw.now_ms();
            gw.answer_call_to("/v1/leases", |call| answer(call, now));
        }
        let batch = gw.expect_usage_batch();
        let records = batch["records"].as_array().cloned().unwrap_or_default();
        assert_eq!(records.len(), admitted, "{policy}: every admitted request has its record");
        for record in &records {
            let held = record["p99_reservations"].as_array().cloned().unwrap_or_default();
            if policy == "worst_case" {
                assert!(held.is_empty(), "a worst_case budget's record names no reservation: {record}");
                continue;
            }
            assert!(!held.is_empty(), "{record}");
            for r in held {
                assert_eq!(r["reserved_micros"], json!(1_960), "{record}");
                assert!(r["budget_id"].as_str().is_some_and(|id| id.starts_with("b-")), "{record}");
            }
        }
        flush_counters(&gw);
        let expected_excess = if policy == "p99" { (c.cost_micros() - 1_960).max(0) as u64 * admitted as u64 } else { 0 };
        assert_eq!(gw.counter("tollgate_enforce_p99_excess_micros_total"), expected_excess, "{policy}");
    }
}

/// The host cannot hand over the request body (`proxy_get_buffer_bytes` fails). Without it nothing
/// can be attributed, priced or reserved, so the request never goes upstream: one decision for a
/// body that ends on a data frame and one that ends with trailers, with enforcement off, fail-closed
/// or fail-open (the failure mode is about the counter, not the host): 503 in the dialect's shape,
/// no lease call, no usage record.
#[test]
fn an_unreadable_body_is_refused_503_whether_it_ends_with_data_or_trailers() {
    let c = chat();
    for mode in ["metering only", "fail_closed", "fail_open"] {
        for ends_with_trailers in [false, true] {
            let label = format!("{mode}, {}", if ends_with_trailers { "trailers" } else { "data" });
            let gw = if mode == "metering only" { Gateway::new(TEST_CONFIG) } else { enforcing(mode) };
            gw.start();
            gw.fail_buffer_reads(BufferType::RequestBody, Some(Status::InternalFailure));
            let mut s = gw.stream();
            s.request_headers(&refs(&request_headers(&c, "req-unreadable")), false);
            if ends_with_trailers {
                s.request_body(&c.request, false);
                s.request_trailers(&[("x-checksum", "1")]);
            } else {
                s.request_body(&c.request, true);
            }
            let client = s.expect_local_response(503);
            assert!(!s.upstream().complete && s.upstream().body.is_empty(), "{label}: nothing went upstream");
            let v = client.json();
            assert_eq!(v["error"]["type"], "service_unavailable", "{label}: openai error shape: {v}");
            assert_eq!(v["error"]["message"], "the gateway could not read this request; retry", "{label}: {v}");
            assert_eq!(s.filter_state("wasm.tollgate.outcome").as_deref(), Some("refused"), "{label}");
            gw.fail_buffer_reads(BufferType::RequestBody, None);
            gw.advance(Duration::from_millis(2_000));
            assert!(gw.pending_calls().is_empty(), "{label}: no lease call and no usage record: {:?}", gw.pending_calls());
        }
    }
}

/// `gateway_id_suffix: node_id` (docs/enforcement.md, "One gateway id per proxy"): replicas a mesh
/// hands the same configuration ask for leases and write record ids under their own gateway ids,
/// from the host's `xds.node.id` (what Envoy 1.40 answers while configuring) or, on a host that
/// only has it, `node.id`; a host without a node id refuses the configuration, naming the field.
#[test]
fn replicas_with_one_configuration_lease_under_their_own_node_derived_gateway_ids() {
    let with_property = |property: &str, node_id: Option<&str>| {
        let mut v = enforcing_config("fail_closed");
        v["gateway_id_suffix"] = json!("node_id");
        let gw = Gateway::new(v.to_string());
        match node_id {
            Some(id) => gw.property(property, id),
            None => gw,
        }
    };
    let replica = |node_id: Option<&str>| with_property("xds.node.id", node_id);
    let lease_gateway = |gw: &Gateway| {
        let c = chat();
        let mut s = gw.stream();
        s.send_request(&refs(&request_headers(&c, "req-1")), &c.request);
        let now = gw.now_ms();
        let call = gw.answer_call_to("/v1/leases", |call| grant(call, 1_000_000, "ok", now));
        s.expect_upstream_body(&c.upstream_request);
        s.respond(&refs(&c.response_headers()), &c.response);
        let record_id = s.client().header("x-tollgate-request-id").map(String::from).unwrap_or_default();
        (call.json()["gateway_id"].as_str().unwrap_or_default().to_owned(), record_id)
    };
    let (a, a_record) = lease_gateway(&replica(Some("sidecar~10.0.0.1~llm-a.apps~apps.svc.cluster.local")));
    let (b, _) = lease_gateway(&replica(Some("sidecar~10.0.0.2~llm-b.apps~apps.svc.cluster.local")));
    let (a_again, _) = lease_gateway(&replica(Some("sidecar~10.0.0.1~llm-a.apps~apps.svc.cluster.local")));
    assert!(a.starts_with("gw-test.") && a.len() == "gw-test.".len() + 8, "{a}");
    assert_ne!(a, b, "two replicas, two gateway ids");
    assert_eq!(a, a_again, "the same proxy keeps its id across restarts");
    assert!(a_record.starts_with(&format!("{a}:req-1")), "record ids carry it too: {a_record}");
    let (older_host, _) = lease_gateway(&with_property("node.id", Some("sidecar~10.0.0.1~llm-a.apps~apps.svc.cluster.local")));
    assert_eq!(older_host, a, "a host with only `node.id` names the proxy the same way");

    let refusal = replica(None).try_start().expect_err("no node id: refused");
    assert!(refusal.trap.is_none(), "refused, not trapped");
    assert!(refusal.log_text().contains("gateway_id_suffix"), "{}", refusal.log_text());
}
