//! Many gateways at once: leases never over-grant, usage is never lost or double-counted.

mod common;

use common::*;
use serde_json::json;
use std::sync::Arc;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn parallel_leases_and_usage_never_over_grant_and_lose_nothing() {
    let h = Arc::new(Harness::start().await);
    const HARD: i64 = 1_000_000;
    h.budget(json!({"id": "shared", "scope": "team:platform", "limit": "0.80", "window": "day", "hard_limit_pct": 125})).await;

    let mut tasks = Vec::new();
    for g in 0..16 {
        let h = Arc::clone(&h);
        tasks.push(tokio::spawn(async move {
            let gateway = format!("gw{g}");
            let mut client = h.client().await;
            let mut charged = 0i64;
            for i in 0..25 {
                let body = json!({"gateway_id": gateway, "scopes": ["team:platform"], "want_micros": 90_000});
                let a = client.post_json("/v1/leases", Some(GATEWAY_TOKEN), &body).await.unwrap();
                assert_eq!(a.status, 200);
                let granted = a.json().unwrap()["budgets"][0]["granted_micros"].as_i64().unwrap();
                assert!((0..=90_000).contains(&granted));
                if granted > 0 {
                    // Spend part of the slice, as a gateway would.
                    let cost = granted.min(7_000 + g);
                    let batch = json!({"gateway_id": gateway, "records": [record(&format!("{gateway}-{i}"), "platform", cost)]});
                    let a = client.post_json("/v1/usage", Some(GATEWAY_TOKEN), &batch).await.unwrap();
                    assert_eq!(a.status, 200, "{}", a.text());
                    charged += cost;
                }
            }
            charged
        }));
    }
    let mut charged = 0;
    for t in tasks {
        charged += t.await.unwrap();
    }
    let (_, state) = h.admin("GET", "/admin/budgets/shared", None).await;
    let spent = state["spent_micros"].as_i64().unwrap();
    let leased = state["leased_micros"].as_i64().unwrap();
    assert_eq!(spent, charged, "every acknowledged charge is counted exactly once");
    assert!(spent + leased <= HARD, "spent {spent} + live slices {leased} exceed the hard limit {HARD}");
    assert!(spent > HARD / 2, "the budget was actually exercised (spent {spent})");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn slices_granted_at_once_add_up_to_at_most_the_headroom() {
    let h = Arc::new(Harness::start().await);
    h.budget(json!({"id": "tight", "scope": "org:acme", "limit": "1", "window": "month"})).await;
    let mut tasks = Vec::new();
    for g in 0..32 {
        let h = Arc::clone(&h);
        tasks.push(tokio::spawn(async move {
            let l = h.lease(&format!("gw{g}"), &["org:acme"], 100_000).await;
            l["budgets"][0]["granted_micros"].as_i64().unwrap()
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await.unwrap();
    }
    assert_eq!(total, 1_000_000, "32 asks of 0.10 on a 1.00 budget: exactly the headroom, no more");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_same_batch_posted_concurrently_is_counted_once() {
    let h = Arc::new(Harness::start().await);
    h.budget(json!({"id": "t", "scope": "team:platform", "limit": "100", "window": "day"})).await;
    let records: Vec<_> = (0..200).map(|i| record(&format!("dup-{i}"), "platform", 10)).collect();
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let (h, records) = (Arc::clone(&h), records.clone());
        tasks.push(tokio::spawn(async move { h.usage("gw1", records).await }));
    }
    let (mut accepted, mut duplicates) = (0, 0);
    for t in tasks {
        let (a, d) = t.await.unwrap();
        accepted += a;
        duplicates += d;
    }
    assert_eq!((accepted, duplicates), (200, 1400));
    assert_eq!(h.spent("t").await, 2000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_budget_created_while_usage_streams_in_counts_every_record_exactly_once() {
    use std::sync::atomic::{AtomicU64, Ordering};
    const PER_GATEWAY: i64 = 100;
    let h = Arc::new(Harness::start().await);
    let acked = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for g in 0..8 {
        let (h, acked) = (Arc::clone(&h), Arc::clone(&acked));
        tasks.push(tokio::spawn(async move {
            let mut client = h.client().await;
            let mut charged = 0i64;
            for i in 0..PER_GATEWAY {
                let cost = 1_000 + g * 10 + i;
                let batch = json!({"gateway_id": format!("gw{g}"), "records": [record(&format!("gw{g}-{i}"), "platform", cost)]});
                let a = client.post_json("/v1/usage", Some(GATEWAY_TOKEN), &batch).await.unwrap();
                assert_eq!(a.status, 200, "{}", a.text());
                acked.fetch_add(1, Ordering::SeqCst);
                charged += cost;
            }
            charged
        }));
    }
    // Created while the gateways report (once a few records are in): a record is either in the
    // ledger it starts from, or charged to it after, never both and never neither.
    while acked.load(Ordering::SeqCst) < 8 {
        tokio::task::yield_now().await;
    }
    h.budget(json!({"id": "late", "scope": "team:platform", "limit": "100", "window": "day"})).await;
    let mut charged = 0;
    for t in tasks {
        charged += t.await.unwrap();
    }
    assert_eq!(h.spent("late").await, charged);
    // The race was real: some records were already in the ledger when it was created, some not.
    let (_, audit) = h.admin("GET", "/admin/audit?subject=late", None).await;
    let note = audit["entries"][0]["note"].as_str().unwrap().to_owned();
    let from_ledger: u64 = note.split(" ledger records").next().and_then(|s| s.rsplit('(').next()).unwrap().parse().unwrap();
    assert!(from_ledger >= 8 && from_ledger < 8 * PER_GATEWAY as u64, "{from_ledger} of {} records came from the ledger: {note}", 8 * PER_GATEWAY);
}

/// A selector budget (issue 18 §2) under a burst: every gateway serves three teams, two of them
/// selected, so each holds the budget under two scope keys at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_selector_budget_held_under_two_teams_by_every_gateway_never_over_grants_and_counts_each_record_once() {
    let h = Arc::new(Harness::start().await);
    const HARD: i64 = 1_000_000;
    h.budget(json!({"id": "ab", "scope": {"team": ["a", "b"]}, "limit": "1.00", "window": "day"})).await;
    let mut tasks = Vec::new();
    for g in 0..16i64 {
        let h = Arc::clone(&h);
        tasks.push(tokio::spawn(async move {
            let gateway = format!("gw{g}");
            let mut client = h.client().await;
            let mut charged = 0i64;
            for i in 0..24 {
                let team = ["a", "b", "c"][i % 3];
                let body = json!({"gateway_id": gateway, "scopes": ["org:acme", format!("team:{team}")], "want_micros": 90_000});
                let a = client.post_json("/v1/leases", Some(GATEWAY_TOKEN), &body).await.unwrap();
                assert_eq!(a.status, 200);
                let answer = a.json().unwrap();
                let mine: Vec<&serde_json::Value> = answer["budgets"].as_array().unwrap().iter().filter(|b| b["budget_id"] == "ab").collect();
                let granted = match team {
                    "c" => {
                        assert!(mine.is_empty(), "team c is not selected: {answer}");
                        500 // spends outside the budget, which must not count
                    }
                    _ => {
                        assert_eq!((mine.len(), mine[0]["scope"].as_str()), (1, Some(format!("team:{team}").as_str())), "{answer}");
                        mine[0]["granted_micros"].as_i64().unwrap()
                    }
                };
                if granted > 0 {
                    let cost = granted.min(7_000 + g);
                    let batch = json!({"gateway_id": gateway, "records": [record(&format!("{gateway}-{i}"), team, cost)]});
                    let a = client.post_json("/v1/usage", Some(GATEWAY_TOKEN), &batch).await.unwrap();
                    assert_eq!(a.status, 200, "{}", a.text());
                    if team != "c" {
                        charged += cost;
                    }
                }
            }
            charged
        }));
    }
    let mut charged = 0;
    for t in tasks {
        charged += t.await.unwrap();
    }
    let (_, state) = h.admin("GET", "/admin/budgets/ab", None).await;
    let spent = state["spent_micros"].as_i64().unwrap();
    let leased = state["leased_micros"].as_i64().unwrap();
    assert_eq!(spent, charged, "every acknowledged record of team a or b is counted exactly once");
    assert!(spent + leased <= HARD, "spent {spent} + live slices {leased} exceed the hard limit {HARD}");
    assert!(spent > HARD / 2, "the budget was actually exercised (spent {spent})");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn selector_slices_granted_at_once_under_two_keys_add_up_to_at_most_the_headroom() {
    let h = Arc::new(Harness::start().await);
    h.budget(json!({"id": "ab", "scope": {"team": ["a", "b"]}, "limit": "1", "window": "month"})).await;
    let mut tasks = Vec::new();
    for g in 0..16 {
        let h = Arc::clone(&h);
        tasks.push(tokio::spawn(async move {
            let l = h.lease(&format!("gw{g}"), &["team:a", "team:b"], 100_000).await;
            l["budgets"].as_array().unwrap().iter().map(|b| b["granted_micros"].as_i64().unwrap()).sum::<i64>()
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await.unwrap();
    }
    assert_eq!(total, 1_000_000, "32 slices of 0.10 asked on a 1.00 budget: exactly the headroom, no more");
    let (_, state) = h.admin("GET", "/admin/budgets/ab", None).await;
    assert_eq!(state["leased_micros"], 1_000_000);
}
