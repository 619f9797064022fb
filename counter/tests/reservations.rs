//! A reservation policy per budget (issue 18 §3, crate::reserve): `reserve: p99` leases carry the
//! scope's p99 output tokens per routed model and a share of the excess limit; the excess beyond
//! reservations is counted once per record, durably, and ends p99 for the window when it reaches
//! the limit. The same specification runs on Redis (tests/redis_reservations.rs).

mod common;

use common::*;
use serde_json::{json, Value};
use std::sync::Arc;
use tollgate_counter::clock::Clock;

const EXCESS_LIMIT: i64 = 100_000;

fn p99_budget(id: &str, min_samples: u32) -> Value {
    json!({"id": id, "scope": "team:platform", "limit": "1.00", "window": "day",
           "reserve": "p99", "reserve_excess_limit": "0.10", "reserve_min_samples": min_samples})
}

/// A successful record of team platform to `gpt-4o-mini` with `output` tokens, finished `now`.
fn sample(h: &Harness, id: &str, output: u64, cost: i64) -> Value {
    let mut r = record(id, "platform", cost);
    let now = h.clock.now_ms();
    r["tokens"]["output"] = json!(output);
    r["started_at_ms"] = json!(now - 1_000);
    r["finished_at_ms"] = json!(now);
    r
}

/// Outputs 10, 20, ... 10·n tokens, 100 micro-dollars each.
async fn history(h: &Harness, prefix: &str, n: u64) {
    let records = (1..=n).map(|i| sample(h, &format!("{prefix}{i}"), 10 * i, 100)).collect();
    h.usage("gw0", records).await;
}

fn lease_of<'a>(answer: &'a Value, budget: &str) -> &'a Value {
    answer["budgets"].as_array().unwrap().iter().find(|b| b["budget_id"] == budget).unwrap_or_else(|| panic!("{answer}"))
}

async fn excess_counted(h: &Harness, budget: &str) -> i64 {
    let (status, body) = h.admin("GET", &format!("/admin/budgets/{budget}"), None).await;
    assert_eq!(status, 200, "{body}");
    body["reserve_excess_micros"].as_i64().unwrap()
}

#[tokio::test]
async fn a_p99_lease_carries_the_scopes_p99_output_per_model_and_its_share_of_the_excess_limit() {
    let h = Harness::start().await;
    h.budget(p99_budget("platform", 20)).await;
    h.budget(json!({"id": "acme", "scope": "org:acme", "limit": "100", "window": "month"})).await;
    history(&h, "r", 100).await;

    let answer = h.lease("gw1", &["org:acme", "team:platform"], 500_000).await;
    let lease = lease_of(&answer, "platform");
    assert_eq!(lease["granted_micros"], 500_000);
    assert_eq!(lease["reserve_output_tokens"], json!({"gpt-4o-mini": 990}), "the 99th of 10..1000 by nearest rank");
    assert_eq!(lease["reserve_excess_micros"], 500_000 * EXCESS_LIMIT / 1_000_000, "half the hard limit, half the excess");
    let worst = lease_of(&answer, "acme");
    assert!(worst.get("reserve_output_tokens").is_none() && worst.get("reserve_excess_micros").is_none(), "worst_case: {worst}");

    let (_, state) = h.admin("GET", "/admin/budgets/platform", None).await;
    let spec = &state["budget"];
    assert_eq!((spec["reserve"].as_str(), spec["reserve_excess_limit"].as_str()), (Some("p99"), Some("0.100000")));
    assert_eq!((spec["reserve_lookback_days"].as_u64(), spec["reserve_min_samples"].as_u64()), (Some(7), Some(20)));
}

#[tokio::test]
async fn below_the_minimum_samples_a_p99_budget_leases_like_worst_case() {
    let h = Harness::start().await;
    h.budget(p99_budget("platform", 20)).await;
    history(&h, "r", 19).await;
    let answer = h.lease("gw1", &["team:platform"], 500_000).await;
    let lease = lease_of(&answer, "platform");
    assert!(lease.get("reserve_output_tokens").is_none(), "{lease}");
    assert!(lease.get("reserve_excess_micros").is_none(), "no p99, so no excess either: {lease}");
}

#[tokio::test]
async fn the_p99_table_is_refreshed_from_the_ledger_every_five_minutes_of_the_counters_clock() {
    let h = Harness::start().await;
    h.budget(p99_budget("platform", 5)).await;
    history(&h, "a", 10).await;
    let p99 = |answer: &Value| lease_of(answer, "platform")["reserve_output_tokens"]["gpt-4o-mini"].as_u64();
    assert_eq!(p99(&h.lease("gw1", &["team:platform"], 100_000).await), Some(100));

    // Much longer answers arrive: the table keeps its value until five minutes have passed.
    let records = (1..=40).map(|i| sample(&h, &format!("b{i}"), 5_000, 100)).collect();
    h.usage("gw0", records).await;
    h.clock.advance_ms(5 * 60_000 - 1);
    assert_eq!(p99(&h.lease("gw1", &["team:platform"], 100_000).await), Some(100), "cached");
    h.clock.advance_ms(1);
    assert_eq!(p99(&h.lease("gw1", &["team:platform"], 100_000).await), Some(5_000), "refreshed");

    // History older than the lookback (7 days) drops out.
    h.clock.advance_ms(8 * 86_400_000);
    let answer = h.lease("gw1", &["team:platform"], 100_000).await;
    assert!(lease_of(&answer, "platform").get("reserve_output_tokens").is_none(), "{answer}");
}

#[tokio::test]
async fn excess_beyond_reservations_is_counted_once_per_record_and_ends_p99_for_the_window_at_the_limit() {
    let h = Harness::start().await;
    h.budget(p99_budget("platform", 5)).await;
    history(&h, "r", 10).await;
    let first = h.lease("gw1", &["team:platform"], 1_000_000).await;
    assert_eq!(lease_of(&first, "platform")["reserve_excess_micros"], 99_900, "999,000 granted (1,000 spent) × 10 %");

    // Cost 80,000 against a reservation of 20,000: 60,000 beyond. Posted twice, counted once.
    let mut over = sample(&h, "over-1", 900, 80_000);
    over["p99_reservations"] = json!([{"budget_id": "platform", "reserved_micros": 20_000}]);
    assert_eq!(h.usage("gw1", vec![over.clone()]).await, (1, 0));
    assert_eq!(h.usage("gw1", vec![over]).await, (0, 1));
    // A reservation on another budget, or a record that cost less than it held, adds nothing.
    let mut elsewhere = sample(&h, "other-1", 900, 80_000);
    elsewhere["p99_reservations"] = json!([{"budget_id": "not-this-one", "reserved_micros": 0}]);
    let mut under = sample(&h, "under-1", 10, 5_000);
    under["p99_reservations"] = json!([{"budget_id": "platform", "reserved_micros": 20_000}]);
    h.usage("gw1", vec![elsewhere, under]).await;
    assert_eq!(excess_counted(&h, "platform").await, 60_000);

    let (_, metrics) = h.call("GET", "/metrics", None, None).await;
    let metrics = metrics.as_str().unwrap().to_owned();
    assert!(metrics.lines().any(|l| l.starts_with("tollgate_counter_budget_reserve_excess_micros{") && l.contains("platform") && l.ends_with(" 60000")), "{metrics}");

    // What is left of the excess limit caps the headroom, and survives a restart.
    let now = h.clock.now_ms();
    let h = Harness::start_in(h.stop().await, now).await;
    assert_eq!(excess_counted(&h, "platform").await, 60_000, "durable");
    let lease = lease_of(&h.lease("gw1", &["team:platform"], 500_000).await, "platform").clone();
    assert_eq!(lease["reserve_excess_micros"], 40_000, "min(500,000 × 10 %, 100,000 − 60,000)");

    // Reaching the limit: the rest of the window reserves worst cases.
    let mut over = sample(&h, "over-2", 900, 60_000);
    over["p99_reservations"] = json!([{"budget_id": "platform", "reserved_micros": 20_000}]);
    h.usage("gw1", vec![over]).await;
    assert_eq!(excess_counted(&h, "platform").await, 100_000);
    let lease = lease_of(&h.lease("gw1", &["team:platform"], 100_000).await, "platform").clone();
    assert!(lease.get("reserve_output_tokens").is_none() && lease.get("reserve_excess_micros").is_none(), "{lease}");

    // A new window starts with no excess counted.
    h.clock.advance_ms(86_400_000);
    assert_eq!(excess_counted(&h, "platform").await, 0);
}

#[tokio::test]
async fn the_policy_fields_are_validated_and_errors_name_them() {
    let h = Harness::start().await;
    let base = json!({"id": "b", "scope": "team:platform", "limit": "1", "window": "day"});
    let cases = [
        (json!({"reserve": "p95"}), "reserve: `p95`"),
        (json!({"reserve": "p99"}), "reserve_excess_limit: required"),
        (json!({"reserve": "p99", "reserve_excess_limit": "-1"}), "reserve_excess_limit: `-1`"),
        (json!({"reserve": "p99", "reserve_excess_limit": "1", "reserve_lookback_days": 0}), "reserve_lookback_days: 0"),
        (json!({"reserve": "p99", "reserve_excess_limit": "1", "reserve_min_samples": 0}), "reserve_min_samples: 0"),
        (json!({"reserve_excess_limit": "1"}), "reserve_excess_limit: applies to `reserve: p99` only"),
        (json!({"reserve": "worst_case", "reserve_min_samples": 5}), "reserve_min_samples: applies to `reserve: p99` only"),
    ];
    for (extra, needle) in cases {
        let mut spec = base.clone();
        spec.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        let (status, body) = h.admin("PUT", "/admin/budgets/b", Some(spec.clone())).await;
        assert_eq!(status, 400, "{spec} → {body}");
        assert!(body.to_string().contains(needle), "{spec}: expected `{needle}` in {body}");
    }
    // `worst_case` written out is the default: stored without the field.
    let mut spec = base.clone();
    spec["reserve"] = json!("worst_case");
    h.budget(spec).await;
    let (_, state) = h.admin("GET", "/admin/budgets/b", None).await;
    assert!(state["budget"].get("reserve").is_none(), "{state}");
}

#[tokio::test]
async fn leases_granted_at_once_share_at_most_the_excess_limit() {
    let h = Arc::new(Harness::start().await);
    h.budget(p99_budget("platform", 5)).await;
    history(&h, "r", 10).await;
    let spent = h.spent("platform").await;
    let mut tasks = Vec::new();
    for g in 0..16 {
        let h = Arc::clone(&h);
        tasks.push(tokio::spawn(async move {
            let answer = h.lease(&format!("gw{g}"), &["team:platform"], 150_000).await;
            let lease = lease_of(&answer, "platform");
            (lease["granted_micros"].as_i64().unwrap(), lease["reserve_excess_micros"].as_i64().unwrap_or(0))
        }));
    }
    let (mut granted, mut headroom) = (0, 0);
    for t in tasks {
        let (g, x) = t.await.unwrap();
        granted += g;
        headroom += x;
    }
    assert_eq!(granted, 1_000_000 - spent, "the slices take exactly the allowance left");
    assert!(headroom <= EXCESS_LIMIT, "Σ headroom {headroom} must stay within the excess limit");
    assert!(headroom >= EXCESS_LIMIT * 9 / 10, "and is most of it ({headroom}): each slice's share, rounded down");
}
