//! The notifications spec (tests/notify_api.rs) run against the Redis store, plus what only Redis
//! promises: counter instances sharing one Redis record each event once and deliver it once.

#[path = "notify_api.rs"]
mod notify_api;

use notify_api::common::receiver::Receiver;
use notify_api::common::*;
use notify_api::{config, events, eventually, metric, settle, start};
use serde_json::json;
use std::sync::Arc;
use tollgate_counter::store::redis::RedisStore;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn instances_sharing_redis_record_and_deliver_each_event_once() {
    let receiver = Receiver::start().await;
    let a = start(&receiver, json!({})).await;
    let url = a.redis.as_ref().expect("a Redis-backed harness").url();
    let store = Arc::new(RedisStore::connect(redis_options(&url)).await.unwrap());
    let b = Harness::with_store_notify(store, Arc::clone(&a.clock), tempfile::tempdir().unwrap(), config(&receiver, json!({}))).await;
    a.budget(json!({"id": "shared", "scope": "team:platform", "limit": "1.00", "window": "day"})).await;

    a.usage("gw1", vec![record("r1", "platform", 400_000)]).await;
    b.usage("gw2", vec![record("r2", "platform", 450_000)]).await;
    eventually("the 80 % message", || async { receiver.delivered().len() == 1 }).await;
    settle(&a, 3).await;
    settle(&b, 3).await;
    assert_eq!(receiver.all().len(), 1, "one delivery for two instances");
    assert_eq!(events(&a, "").await.len(), 1);
    assert_eq!(events(&b, "").await, events(&a, "").await, "one log");
    let recorded = metric(&a, "tollgate_counter_events_total{kind=\"threshold\"}").await + metric(&b, "tollgate_counter_events_total{kind=\"threshold\"}").await;
    let duplicates = metric(&a, "tollgate_counter_events_duplicate_total").await + metric(&b, "tollgate_counter_events_duplicate_total").await;
    assert_eq!(recorded, 1, "exactly one instance won the claim");
    assert!(duplicates >= 1, "the other proposed it and was refused");
}
