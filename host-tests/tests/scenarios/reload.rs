//! A root context torn down while its usage batch is in flight (issue 14 §2): what Envoy does
//! when an ECDS push replaces the plugin's configuration or binary. Envoy cancels the torn-down
//! context's calls, so the batch's acknowledgement never comes back; the filter puts the batch
//! back in the process-wide queue for the root contexts that live on (docs/enforcement.md,
//! *Hot reload*). End to end on real Envoy: `envoy/tests/test_mesh.py`.

use crate::common::*;
use serde_json::{json, Value};
use tollgate_host_tests::fixtures::{cases, refs, TEST_CONFIG};
use tollgate_host_tests::*;

fn enforcing() -> Gateway {
    let mut v: Value = serde_json::from_str(TEST_CONFIG).expect("TEST_CONFIG is JSON");
    v["enforcement"] = json!({
        "counter_cluster": "tollgate_counter",
        "gateway_token": "gt-secret",
        "lease_slice_usd": "1",
        "flush_interval_ms": 1000,
        "call_timeout_ms": 500,
        "default_max_output_tokens": 1000
    });
    Gateway::new(v.to_string())
}

/// A lease answer granting $1 on every scope asked for.
fn grant(call: &HttpCall, now_ms: u64) -> Answer {
    let req = call.json();
    let budgets: Vec<Value> = req["scopes"]
        .as_array()
        .unwrap_or_else(|| panic!("a LeaseRequest has scopes: {req}"))
        .iter()
        .map(|scope| {
            json!({
                "budget_id": format!("b-{}", scope.as_str().unwrap_or("?")), "scope": scope, "mode": "enforce",
                "granted_micros": 1_000_000, "spent_micros": 0, "limit_micros": 10_000_000,
                "hard_limit_micros": 10_000_000, "soft_threshold_pct": 80, "status": "ok",
                "resets_at": (now_ms / 1000) + 3600, "lease_expires_at_ms": now_ms + 60_000
            })
        })
        .collect();
    Answer::json(200, &json!({ "budgets": budgets }))
}

#[test]
fn a_root_context_torn_down_with_a_usage_batch_in_flight_puts_the_batch_back_in_the_queue() {
    let gw = enforcing();
    let c = cases().into_iter().find(|c| c.name == "openai chat json").expect("fixture");
    let now = gw.now_ms();
    let mut s = gw.stream();
    s.send_request(&refs(&with(with(c.headers(), "x-auth-team", "platform"), "x-request-id", "req-swap")), &c.request);
    gw.answer_call_to("/v1/leases", |call| grant(call, now));
    s.expect_upstream_body(&c.upstream_request);
    s.respond(&refs(&c.response_headers()), &c.response);
    gw.advance(Duration::from_millis(1000));
    while gw.pending_calls().iter().any(|call| call.path() == "/v1/leases") {
        let now = gw.now_ms();
        gw.answer_call_to("/v1/leases", |call| grant(call, now));
    }
    assert!(gw.pending_calls().iter().any(|call| call.path() == "/v1/usage"), "the record's batch is in flight");
    assert_eq!(gw.queue_len("tollgate.usage"), 0, "and no longer in the queue");

    // The plugin is replaced: its root context is done at once (it waits for nothing)...
    assert!(gw.shutdown(), "the root context is done at once");
    // ...and the batch it had in flight is queued again, still counted unacknowledged.
    assert_eq!(gw.queue_len("tollgate.usage"), 1, "the batch in flight is back in the queue");
    assert_eq!(gw.counter("tollgate_usage_unacked"), 1);
    assert_eq!(gw.counter("tollgate_usage_records_requeued_total"), 1);
    assert_eq!(gw.counter("tollgate_usage_dropped_total"), 0);

    // Had the cancelled call's answer come back after all, it changes nothing: the record is
    // acknowledged once, by whoever delivers it from the queue.
    let late = gw.expect_usage_batch();
    assert_eq!(late["records"].as_array().map(Vec::len), Some(1));
    assert_eq!(gw.counter("tollgate_usage_unacked"), 1, "a torn-down context's late answer is not counted");
    assert_eq!(gw.queue_len("tollgate.usage"), 1);
}
