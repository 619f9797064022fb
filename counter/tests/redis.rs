//! What only the Redis store promises: several counter instances share one Redis and behave as
//! one counter; a Redis restart or a lost connection makes the service unhealthy and answer 503,
//! never lose an acknowledged record, never count one twice. Real redis-server, real HTTP.

mod common;

use common::redis_server::{RedisCluster, RedisServer};
use common::*;
use serde_json::{json, Value};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;
use tollgate_counter::store::redis::RedisStore;

/// A second counter instance on the Redis server behind `h`, sharing its clock.
async fn second_instance(h: &Harness) -> Harness {
    let url = h.redis.as_ref().expect("a Redis-backed harness").url();
    let store = Arc::new(RedisStore::connect(redis_options(&url)).await.unwrap());
    Harness::with_store(store, Arc::clone(&h.clock), tempfile::tempdir().unwrap()).await
}

/// Every ledger entry's record id, straight from the stream (the export path).
async fn ledger_ids(redis: &RedisServer) -> Vec<String> {
    let client = redis::Client::open(redis.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let entries: Vec<(String, Vec<String>)> =
        redis::cmd("XRANGE").arg("{tollgate}:ledger").arg("-").arg("+").query_async(&mut conn).await.unwrap();
    entries
        .iter()
        .map(|(_, fields)| {
            let entry: Value = serde_json::from_str(&fields[1]).unwrap();
            entry["record"]["id"].as_str().unwrap().to_owned()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_instances_on_one_redis_never_over_grant_and_count_each_record_once() {
    let a = Arc::new(Harness::start().await);
    let b = Arc::new(second_instance(&a).await);
    const HARD: i64 = 1_000_000;
    a.budget(json!({"id": "shared", "scope": "team:platform", "limit": "0.80", "window": "day", "hard_limit_pct": 125})).await;

    let mut tasks = Vec::new();
    for g in 0..16i64 {
        let h = Arc::clone(if g % 2 == 0 { &a } else { &b });
        tasks.push(tokio::spawn(async move {
            let gateway = format!("gw{g}");
            let mut client = h.client().await;
            let mut charged = 0i64;
            for i in 0..25 {
                let body = json!({"gateway_id": gateway, "scopes": ["team:platform"], "want_micros": 90_000});
                let answer = client.post_json("/v1/leases", Some(GATEWAY_TOKEN), &body).await.unwrap();
                assert_eq!(answer.status, 200, "{}", answer.text());
                let granted = answer.json().unwrap()["budgets"][0]["granted_micros"].as_i64().unwrap();
                if granted > 0 {
                    let cost = granted.min(7_000 + g);
                    let batch = json!({"gateway_id": gateway, "records": [record(&format!("{gateway}-{i}"), "platform", cost)]});
                    let answer = client.post_json("/v1/usage", Some(GATEWAY_TOKEN), &batch).await.unwrap();
                    assert_eq!(answer.status, 200, "{}", answer.text());
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
    for h in [&a, &b] {
        let (_, state) = h.admin("GET", "/admin/budgets/shared", None).await;
        let (spent, leased) = (state["spent_micros"].as_i64().unwrap(), state["leased_micros"].as_i64().unwrap());
        assert_eq!(spent, charged, "both instances see every acknowledged charge exactly once");
        assert!(spent + leased <= HARD, "spent {spent} + live slices {leased} exceed the hard limit {HARD} across two instances");
        assert!(spent > HARD / 2, "the budget was actually exercised (spent {spent})");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_batch_posted_to_both_instances_at_once_counts_once() {
    let a = Arc::new(Harness::start().await);
    let b = Arc::new(second_instance(&a).await);
    a.budget(json!({"id": "t", "scope": "team:platform", "limit": "100", "window": "day"})).await;
    let records: Vec<_> = (0..200).map(|i| record(&format!("dup-{i}"), "platform", 10)).collect();
    let mut tasks = Vec::new();
    for n in 0..8 {
        let (h, records) = (Arc::clone(if n % 2 == 0 { &a } else { &b }), records.clone());
        tasks.push(tokio::spawn(async move { h.usage("gw1", records).await }));
    }
    let (mut accepted, mut duplicates) = (0, 0);
    for t in tasks {
        let (acc, dup) = t.await.unwrap();
        accepted += acc;
        duplicates += dup;
    }
    assert_eq!((accepted, duplicates), (200, 1400));
    assert_eq!((a.spent("t").await, b.spent("t").await), (2000, 2000));
    assert_eq!(ledger_ids(a.redis.as_ref().unwrap()).await.len(), 200, "one ledger entry per record");
}

#[tokio::test]
async fn a_budget_changed_on_one_instance_binds_on_the_other_at_once() {
    let a = Harness::start().await;
    let b = second_instance(&a).await;
    assert_eq!(b.lease("gw-b", &["team:platform"], 500).await["budgets"], json!([]), "no budget yet");

    a.budget(json!({"id": "p", "scope": "team:platform", "limit": "0.001000", "window": "day"})).await;
    assert_eq!(b.lease("gw-b", &["team:platform"], 500).await["budgets"][0]["granted_micros"], 500);
    assert_eq!(a.lease("gw-a", &["team:platform"], 800).await["budgets"][0]["granted_micros"], 500, "b holds half");

    let (status, _) = a.admin("POST", "/admin/budgets/p/topup", Some(json!({"amount": "0.000500"}))).await;
    assert_eq!(status, 200);
    assert_eq!(b.lease("gw-b", &["team:platform"], 1_000).await["budgets"][0]["granted_micros"], 1_000, "b sees the top-up");

    let (status, _) = a.admin("DELETE", "/admin/budgets/p", None).await;
    assert_eq!(status, 200);
    assert_eq!(b.lease("gw-b", &["team:platform"], 500).await["budgets"], json!([]), "b sees the delete");
    let (_, audit) = b.admin("GET", "/admin/audit?subject=p", None).await;
    let actions: Vec<&str> = audit["entries"].as_array().unwrap().iter().map(|e| e["action"].as_str().unwrap()).collect();
    assert_eq!(actions, ["budget.delete", "budget.update", "budget.create"], "one audit log, newest first");
}

#[tokio::test]
async fn while_redis_is_down_the_counter_is_unhealthy_and_refuses_with_503_then_recovers() {
    let h = Harness::start().await;
    h.budget(json!({"id": "t", "scope": "team:platform", "limit": "10", "window": "day"})).await;
    assert_eq!(h.call("GET", "/healthz", None, None).await.0, 200);

    h.redis.as_ref().unwrap().kill9();
    let (status, body) = h.call("GET", "/healthz", None, None).await;
    assert_eq!(status, 503, "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("check that Redis is up"), "{body}");
    let (status, body) = h.gateway("/v1/usage", json!({"gateway_id": "gw1", "records": [record("r1", "platform", 5)]})).await;
    assert_eq!((status, body["error"]["code"].as_str()), (503, Some("unavailable")), "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("send it again"), "{body}");

    h.redis.as_ref().unwrap().restart();
    assert_eq!(h.call("GET", "/healthz", None, None).await.0, 200, "healthy again once Redis answers");
    assert_eq!(h.usage("gw1", vec![record("r1", "platform", 5)]).await, (1, 0), "the refused record was not counted");
    assert_eq!(h.spent("t").await, 5);
}

#[tokio::test]
async fn a_full_redis_is_unhealthy_and_refuses_usage_without_counting_any_of_it() {
    let h = Harness::start().await;
    h.budget(json!({"id": "t", "scope": "team:platform", "limit": "10", "window": "day"})).await;
    let client = redis::Client::open(h.redis.as_ref().unwrap().url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let maxmemory = |bytes: &str| {
        let mut cmd = redis::cmd("CONFIG");
        cmd.arg("SET").arg("maxmemory").arg(bytes);
        cmd
    };

    maxmemory("1").query_async::<()>(&mut conn).await.unwrap();
    let (status, body) = h.call("GET", "/healthz", None, None).await;
    assert_eq!(status, 503, "{body}");
    let (status, body) = h.gateway("/v1/usage", json!({"gateway_id": "gw1", "records": [record("r1", "platform", 5), record("r2", "platform", 6)]})).await;
    assert_eq!(status, 503, "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("out of memory"), "{body}");

    maxmemory("0").query_async::<()>(&mut conn).await.unwrap();
    assert_eq!(h.call("GET", "/healthz", None, None).await.0, 200);
    assert_eq!(h.spent("t").await, 0, "nothing of the refused batch was counted");
    assert_eq!(h.usage("gw1", vec![record("r1", "platform", 5), record("r2", "platform", 6)]).await, (2, 0));
}

#[tokio::test]
async fn a_hung_redis_turns_into_503_within_seconds_and_a_resend_counts_once() {
    let h = Harness::start().await;
    h.budget(json!({"id": "t", "scope": "team:platform", "limit": "10", "window": "day"})).await;
    h.redis.as_ref().unwrap().pause();

    let started = tollgate_counter::clock::Stopwatch::start();
    let (status, body) = h.call("GET", "/healthz", None, None).await;
    assert_eq!(status, 503, "{body}");
    let (status, body) = h.gateway("/v1/usage", json!({"gateway_id": "gw1", "records": [record("r1", "platform", 7)]})).await;
    assert_eq!(status, 503, "{body}");
    let waited = started.elapsed();
    assert!(waited < Duration::from_secs(10), "a hung Redis held the calls for {waited:?}");

    // The usage command may still run when Redis wakes up: the gateway re-sends, it counts once.
    h.redis.as_ref().unwrap().resume();
    assert_eq!(h.call("GET", "/healthz", None, None).await.0, 200);
    let (accepted, duplicates) = h.usage("gw1", vec![record("r1", "platform", 7)]).await;
    assert_eq!(accepted + duplicates, 1);
    assert_eq!(h.spent("t").await, 7, "counted exactly once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_redis_cluster_every_node_serves_the_namespace_by_following_moved() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = RedisCluster::start(dir.path(), 3);
    let clock = Arc::new(tollgate_counter::clock::ManualClock::new(at("2026-11-25T10:00:00Z")));
    // One counter per node: the two whose slots do not hold `{tollgate}` answer MOVED at first.
    let mut counters = Vec::new();
    for node in &cluster.nodes {
        let store = Arc::new(RedisStore::connect(redis_options(&node.url())).await.unwrap());
        counters.push(Harness::with_store(store, Arc::clone(&clock), tempfile::tempdir().unwrap()).await);
    }
    counters[0].budget(json!({"id": "t", "scope": "team:platform", "limit": "1.00", "window": "day"})).await;
    let granted: Vec<i64> = {
        let mut out = Vec::new();
        for (i, h) in counters.iter().enumerate() {
            out.push(h.lease(&format!("gw{i}"), &["team:platform"], 400_000).await["budgets"][0]["granted_micros"].as_i64().unwrap());
        }
        out
    };
    assert_eq!(granted, [400_000, 400_000, 200_000], "one budget, one headroom, whichever node was asked");
    for (i, h) in counters.iter().enumerate() {
        assert_eq!(h.usage(&format!("gw{i}"), vec![record("c1", "platform", 50_000), record(&format!("own-{i}"), "platform", 1)]).await.0, if i == 0 { 2 } else { 1 });
    }
    assert_eq!(counters[2].spent("t").await, 50_003);
    let (_, report) = counters[1].admin("GET", "/admin/reports/spend?group_by=team", None).await;
    assert_eq!(report["rows"][0]["requests"], 4, "{report}");
}

/// Each record of writer `w`'s batch `i` costs the same, distinct per batch.
fn cost(w: usize, i: usize) -> i64 {
    (w * 1000 + i) as i64 + 1
}

fn batch(w: usize, i: usize) -> Vec<Value> {
    (0..20).map(|k| record(&format!("w{w}-b{i}-r{k}"), "platform", cost(w, i))).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn acknowledged_records_survive_kill_9_of_redis_exactly_once() {
    let h = Arc::new(Harness::start().await);
    h.budget(json!({"id": "t", "scope": "team:platform", "limit": "1000", "window": "day"})).await;

    // Four writers post 40 batches each while Redis is killed and restarted under them.
    let mut writers = Vec::new();
    for w in 0..4 {
        let h = Arc::clone(&h);
        writers.push(tokio::spawn(async move {
            let mut client = h.client().await;
            let mut acked = Vec::new();
            for i in 0..40 {
                let body = json!({"gateway_id": format!("gw{w}"), "records": batch(w, i)});
                let answer = client.post_json("/v1/usage", Some(GATEWAY_TOKEN), &body).await.unwrap();
                match answer.status {
                    200 => acked.push((w, i)),
                    503 => {}
                    other => panic!("usage answered {other}: {}", answer.text()),
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            acked
        }));
    }
    tokio::time::sleep(Duration::from_millis(150)).await;
    h.redis.as_ref().unwrap().kill9();
    tokio::time::sleep(Duration::from_millis(400)).await;
    h.redis.as_ref().unwrap().restart();
    let mut acked = Vec::new();
    for w in writers {
        acked.extend(w.await.unwrap());
    }
    assert!(acked.len() < 160, "the kill happened while batches were posted ({} of 160 acknowledged)", acked.len());
    assert!(!acked.is_empty(), "some batches were acknowledged");

    let ids = ledger_ids(h.redis.as_ref().unwrap()).await;
    let mut seen: HashMap<&str, usize> = HashMap::new();
    for id in &ids {
        *seen.entry(id.as_str()).or_default() += 1;
    }
    assert!(seen.values().all(|n| *n == 1), "no record is in the ledger twice");
    for (w, i) in &acked {
        for k in 0..20 {
            assert!(seen.contains_key(format!("w{w}-b{i}-r{k}").as_str()), "acknowledged record w{w}-b{i}-r{k} was lost");
        }
    }
    let in_ledger: i64 = ids.iter().map(|id| {
        let (w, i) = id.trim_start_matches('w').split_once("-b").unwrap();
        cost(w.parse().unwrap(), i.split_once("-r").unwrap().0.parse().unwrap())
    }).sum();
    assert_eq!(h.spent("t").await, in_ledger, "spend is exactly what the ledger holds");

    // The gateways resend what was not acknowledged (and, to be sure, everything else too).
    let acked: HashSet<_> = acked.into_iter().collect();
    let mut total = 0;
    for w in 0..4 {
        for i in 0..40 {
            let (accepted, duplicates) = h.usage(&format!("gw{w}"), batch(w, i)).await;
            if acked.contains(&(w, i)) {
                assert_eq!((accepted, duplicates), (0, 20), "acknowledged batch w{w}-b{i} counted again");
            }
            total += cost(w, i) * 20;
        }
    }
    assert_eq!(h.spent("t").await, total, "after the resend every record is counted exactly once");
    assert_eq!(ledger_ids(h.redis.as_ref().unwrap()).await.len(), 160 * 20);
}
