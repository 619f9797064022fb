//! Notifications, the events log and baselines over the real HTTP API, with the manual clock and
//! a webhook receiver on 127.0.0.1. The same file runs against Redis (tests/redis_notify_api.rs).
//!
//! The evaluator and the delivery loop run in the background (every 20 ms of real time here);
//! tests wait for what they expect with a bounded poll, and prove that nothing *more* happens by
//! waiting for further completed evaluations (`tollgate_counter_notify_evaluations_total`).

pub mod common;

use common::receiver::Receiver;
use common::*;
use serde_json::{json, Value};
use std::time::Duration;
use tollgate_counter::clock::{Clock, Stopwatch};
use tollgate_counter::notify::{webhook, NotifyConfig};

pub const SECRET: &str = "test-webhook-secret-0123456789";
const DAY_MS: i64 = 86_400_000;

pub fn config(receiver: &Receiver, extra: Value) -> NotifyConfig {
    let mut c = json!({
        "webhooks": [
            {"name": "ops", "url": format!("{}/slack", receiver.url), "format": "slack", "secret": SECRET},
        ],
        "evaluation": {"tick_ms": 20, "anomaly_every_ms": 0},
        "delivery": {"retry_base_ms": 1000, "retry_max_ms": 8000, "timeout_ms": 2000},
    });
    if let (Some(c), Some(extra)) = (c.as_object_mut(), extra.as_object()) {
        for (k, v) in extra {
            c.insert(k.clone(), v.clone());
        }
    }
    NotifyConfig::parse(&c.to_string(), &|_| None).unwrap()
}

pub async fn start(receiver: &Receiver, extra: Value) -> Harness {
    Harness::start_in_with(tempfile::tempdir().unwrap(), at("2026-11-25T10:00:00Z"), config(receiver, extra)).await
}

/// Polls `check` every 20 ms for at most 10 s.
pub async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let waited = Stopwatch::start();
    while waited.elapsed() < Duration::from_secs(10) {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("timed out waiting for {what}");
}

pub async fn metric(h: &Harness, name: &str) -> u64 {
    let (_, text) = h.call("GET", "/metrics", None, None).await;
    let text = text.as_str().unwrap_or("").to_owned();
    text.lines().find(|l| l.starts_with(name)).and_then(|l| l.rsplit(' ').next()).and_then(|v| v.parse().ok()).unwrap_or(0)
}

/// Waits until the evaluator has completed `n` more evaluations (so anything they would record is recorded).
pub async fn settle(h: &Harness, n: u64) {
    let start = metric(h, "tollgate_counter_notify_evaluations_total").await;
    eventually("further evaluations", || async { metric(h, "tollgate_counter_notify_evaluations_total").await >= start + n }).await;
}

pub async fn events(h: &Harness, query: &str) -> Vec<Value> {
    let (s, b) = h.admin("GET", &format!("/admin/events{query}"), None).await;
    assert_eq!(s, 200, "{b}");
    b["events"].as_array().unwrap().clone()
}

/// A record for `team` at `finished_ms` on `model` for `use_case`.
fn rec(id: &str, team: &str, cost: i64, finished_ms: i64, model: &str, use_case: &str) -> Value {
    let mut r = record(id, team, cost);
    r["started_at_ms"] = json!(finished_ms - 1000);
    r["finished_at_ms"] = json!(finished_ms);
    r["routed_model"] = json!(model);
    r["principal"]["use_case"] = json!(use_case);
    r
}

/// Checks what every receiver must: a fresh, valid signature over the raw body.
fn verified(h: &Harness, r: &common::receiver::Received) -> Value {
    let now_secs = h.clock.now_ms() / 1000;
    webhook::verify(SECRET.as_bytes(), &r.timestamp, &r.signature, &r.body, now_secs).unwrap_or_else(|e| panic!("{e}: {r:?}"));
    r.json()
}

#[tokio::test]
async fn crossing_80_percent_sends_one_signed_slack_message_and_the_hard_stop_another() {
    let receiver = Receiver::start().await;
    let h = start(&receiver, json!({})).await;
    h.budget(json!({"id": "platform", "scope": "team:platform", "limit": "1.00", "window": "day"})).await;

    h.usage("gw1", vec![record("r1", "platform", 700_000)]).await;
    settle(&h, 2).await;
    assert!(receiver.all().is_empty(), "70 % is below every threshold");

    h.usage("gw1", vec![record("r2", "platform", 150_000)]).await;
    eventually("the 80 % message", || async { receiver.delivered().len() == 1 }).await;
    let got = &receiver.delivered()[0];
    let body = verified(&h, got);
    assert_eq!(got.path, "/slack");
    assert_eq!(got.event, format!("threshold:platform:80:{}", at("2026-11-25") / 1000));
    assert!(body["text"].as_str().unwrap().contains("passed 80 % of its day limit: $0.85 of $1.00"), "{body}");
    assert_eq!(body["blocks"][0]["type"], "header");

    // More spend in the same window, still below 100 %: nothing new, however often it is evaluated.
    h.usage("gw1", vec![record("r3", "platform", 100_000)]).await;
    settle(&h, 3).await;
    assert_eq!(receiver.all().len(), 1);

    h.usage("gw1", vec![record("r4", "platform", 50_000)]).await;
    eventually("the hard-stop message", || async { receiver.delivered().len() == 2 }).await;
    let hard = &receiver.delivered()[1];
    assert_eq!(hard.event, format!("hard_stop:platform:{}", at("2026-11-25") / 1000));
    assert!(verified(&h, hard)["text"].as_str().unwrap().contains("requests on it are refused"));

    let list = events(&h, "").await;
    assert_eq!(list.len(), 2);
    assert_eq!((list[0]["kind"].as_str(), list[1]["kind"].as_str()), (Some("hard_stop"), Some("threshold")), "newest first");
    assert_eq!(list[1]["details"]["spent_micros"], 850_000);
    assert_eq!(list[1]["deliveries"][0]["target"], "ops");
    assert!(list[1]["deliveries"][0]["delivered_at_ms"].is_i64(), "{}", list[1]);
    assert_eq!(events(&h, "?kind=threshold").await.len(), 1);
    assert_eq!(events(&h, "?scope=team:other").await.len(), 0);
    assert_eq!(events(&h, "?subject=platform&limit=1").await.len(), 1);

    assert_eq!(metric(&h, "tollgate_counter_events_total{kind=\"threshold\"}").await, 1);
    assert_eq!(metric(&h, "tollgate_counter_events_total{kind=\"hard_stop\"}").await, 1);
    assert_eq!(metric(&h, "tollgate_counter_webhook_deliveries_total{webhook=\"ops\",result=\"delivered\"}").await, 2);
    assert_eq!(metric(&h, "tollgate_counter_webhook_outbox_pending").await, 0);
    let last = metric(&h, "tollgate_counter_event_last_fired_timestamp_seconds{kind=\"threshold\",scope=\"team:platform\"}").await;
    assert_eq!(last as i64, at("2026-11-25T10:00:00Z") / 1000);

    // The next window re-arms the threshold.
    h.clock.set_ms(at("2026-11-26T09:00:00Z"));
    h.usage("gw1", vec![record("r5", "platform", 900_000)]).await;
    eventually("the next day's 80 % message", || async { receiver.delivered().len() == 3 }).await;
    assert_eq!(receiver.delivered()[2].event, format!("threshold:platform:80:{}", at("2026-11-26") / 1000));
}

#[tokio::test]
async fn an_event_fires_once_per_window_across_restarts() {
    let receiver = Receiver::start().await;
    let h = start(&receiver, json!({})).await;
    h.budget(json!({"id": "platform", "scope": "team:platform", "limit": "1.00", "window": "day"})).await;
    h.usage("gw1", vec![record("r1", "platform", 850_000)]).await;
    eventually("the message", || async { receiver.delivered().len() == 1 }).await;

    let now = h.clock.now_ms();
    let dir = h.stop().await;
    let h = Harness::start_in_with(dir, now, config(&receiver, json!({}))).await;
    settle(&h, 3).await;
    assert_eq!(receiver.all().len(), 1, "the restarted counter proposes the event again, and the store refuses it");
    assert_eq!(events(&h, "").await.len(), 1);
    assert!(metric(&h, "tollgate_counter_events_duplicate_total").await >= 1);
}

#[tokio::test]
async fn a_webhook_that_is_down_loses_nothing_and_never_slows_usage() {
    let receiver = Receiver::start().await;
    receiver.answer(503);
    let h = start(&receiver, json!({})).await;
    h.budget(json!({"id": "platform", "scope": "team:platform", "limit": "1.00", "window": "day"})).await;
    h.usage("gw1", vec![record("r1", "platform", 850_000)]).await;
    eventually("a first, failed attempt", || async { receiver.all().len() == 1 }).await;
    let list = events(&h, "").await;
    let d = &list[0]["deliveries"][0];
    assert_eq!((d["attempts"].as_u64(), d["delivered_at_ms"].is_null()), (Some(1), true), "{d}");
    assert!(d["last_error"].as_str().unwrap().contains("503"), "{d}");
    assert_eq!(d["next_at_ms"], at("2026-11-25T10:00:00Z") + 1000, "retry after retry_base_ms by the counter's clock");

    // Leases and usage are answered as usual while the receiver is down.
    for i in 0..20 {
        h.usage("gw1", vec![record(&format!("more{i}"), "platform", 1)]).await;
        h.lease("gw1", &["team:platform"], 10).await;
    }
    settle(&h, 2).await;
    assert_eq!(receiver.all().len(), 1, "no retry before its time");

    h.clock.advance_ms(1000);
    eventually("a second, failed attempt", || async { receiver.all().len() == 2 }).await;
    let d = events(&h, "").await[0]["deliveries"][0].clone();
    assert_eq!((d["attempts"].as_u64(), d["next_at_ms"].as_i64()), (Some(2), Some(h.clock.now_ms() + 2000)), "backoff doubles: {d}");

    receiver.answer(200);
    h.clock.advance_ms(2000);
    eventually("the delivery once the receiver is back", || async { receiver.delivered().len() == 1 }).await;
    h.clock.advance_ms(60_000);
    settle(&h, 3).await;
    assert_eq!(receiver.delivered().len(), 1, "delivered exactly once");
    assert_eq!(receiver.all().len(), 3);
    assert_eq!(metric(&h, "tollgate_counter_webhook_outbox_pending").await, 0);
    assert_eq!(metric(&h, "tollgate_counter_webhook_deliveries_total{webhook=\"ops\",result=\"failed\"}").await, 2);
}

#[tokio::test]
async fn three_times_the_trailing_average_is_an_anomaly_explained_by_model_and_use_case() {
    let receiver = Receiver::start().await;
    let h = start(
        &receiver,
        json!({"thresholds": [], "anomalies": [{"scope": "team:*", "factor_pct": 300, "min_spend": "1.00"}],
               "webhooks": [{"name": "generic", "url": format!("{}/json", receiver.url), "format": "json", "secret": SECRET}]}),
    )
    .await;
    let today = at("2026-11-25T00:00:00Z");
    // Seven days of history: team a spends $1.00 a day; team b $0.01 (below the minimum anyway).
    let mut seed = Vec::new();
    for d in 1..=7 {
        seed.push(rec(&format!("a-{d}"), "a", 1_000_000, today - d * DAY_MS + 3_600_000, "small", "chat"));
        seed.push(rec(&format!("b-{d}"), "b", 10_000, today - d * DAY_MS + 3_600_000, "small", "chat"));
    }
    // Eight days ago is outside the trailing week.
    seed.push(rec("a-old", "a", 50_000_000, today - 8 * DAY_MS, "small", "chat"));
    h.usage("gw1", seed).await;

    h.usage("gw1", vec![rec("a-t1", "a", 2_000_000, today + 3_600_000, "small", "chat"), rec("a-t2", "a", 990_000, today + 7_200_000, "big", "review")]).await;
    h.usage("gw1", vec![rec("b-t1", "b", 900_000, today + 3_600_000, "small", "chat")]).await;
    settle(&h, 3).await;
    assert!(events(&h, "").await.is_empty(), "a: $2.99 < 3 x $1.00; b: 90x its average but below the $1.00 minimum");

    h.usage("gw1", vec![rec("a-t3", "a", 10_000, today + 9_000_000, "big", "review")]).await;
    eventually("the anomaly message", || async { receiver.delivered().len() == 1 }).await;
    let got = &receiver.delivered()[0];
    let body = verified(&h, got);
    assert_eq!(got.event, "anomaly:team:a:2026-11-25");
    assert_eq!((body["kind"].as_str(), body["scope"].as_str()), (Some("anomaly"), Some("team:a")), "the generic body is the event: {body}");
    let d = &body["details"];
    assert_eq!((d["today_micros"].as_i64(), d["trailing_7d_micros"].as_i64(), d["average_micros"].as_i64()), (Some(3_000_000), Some(7_000_000), Some(1_000_000)));
    assert_eq!(d["breakdown"], json!([
        {"model": "small", "use_case": "chat", "requests": 1, "cost_micros": 2_000_000},
        {"model": "big", "use_case": "review", "requests": 2, "cost_micros": 1_000_000},
    ]));
    h.usage("gw1", vec![rec("a-t4", "a", 5_000_000, today + 9_500_000, "big", "review")]).await;
    settle(&h, 3).await;
    assert_eq!(receiver.all().len(), 1, "once per scope and day");
}

#[tokio::test]
async fn a_workflow_past_its_review_date_is_one_event_until_the_date_moves() {
    let receiver = Receiver::start().await;
    let h = start(&receiver, json!({"thresholds": []})).await;
    let workflow = |review_date: &str| {
        json!({"id": "code-review", "team": "platform", "owner": "alice", "class": "team_tool",
               "weekly_cap": "5", "monthly_cap": "20", "review_date": review_date})
    };
    let (s, b) = h.admin("PUT", "/admin/workflows/code-review", Some(workflow("2026-11-25"))).await;
    assert_eq!(s, 200, "{b}");
    settle(&h, 3).await;
    assert!(receiver.all().is_empty(), "the review date itself is not overdue yet");

    h.clock.set_ms(at("2026-11-26T08:00:00Z"));
    eventually("the overdue-review message", || async { receiver.delivered().len() == 1 }).await;
    assert_eq!(receiver.delivered()[0].event, "review_overdue:workflow:platform/code-review:2026-11-25");
    let logged = events(&h, "?kind=review_overdue").await;
    assert_eq!((logged.len(), logged[0]["scope"].as_str()), (1, Some("workflow:platform/code-review")), "{logged:?}");
    h.clock.set_ms(at("2026-11-28T08:00:00Z"));
    settle(&h, 3).await;
    assert_eq!(receiver.all().len(), 1, "once per workflow and review date, however late");

    let (s, b) = h.admin("PUT", "/admin/workflows/code-review", Some(workflow("2026-11-27"))).await;
    assert_eq!(s, 200, "{b}");
    eventually("a second message for the moved date", || async { receiver.delivered().len() == 2 }).await;
}

#[tokio::test]
async fn the_monthly_review_lists_the_anomalies_the_events_log_recorded_for_the_workflow() {
    let receiver = Receiver::start().await;
    let h = start(&receiver, json!({"thresholds": [], "anomalies": [{"scope": "use_case:*", "factor_pct": 300, "min_spend": "1.00"}]})).await;
    let (s, b) = h.admin("PUT", "/admin/workflows/review", Some(json!({"id": "review", "team": "a", "owner": "bo", "class": "experiment"}))).await;
    assert_eq!(s, 200, "{b}");
    let today = at("2026-11-25T00:00:00Z");
    let seed: Vec<Value> = (1..=7).map(|d| rec(&format!("r-{d}"), "a", 1_000_000, today - d * DAY_MS + 3_600_000, "small", "review")).collect();
    h.usage("gw1", seed).await;
    h.usage("gw1", vec![rec("r-t", "a", 4_000_000, today + 3_600_000, "big", "review")]).await;
    eventually("the anomaly", || async { events(&h, "?kind=anomaly").await.len() == 1 }).await;

    let (s, b) = h.admin("GET", "/admin/reports/review?month=2026-11", None).await;
    assert_eq!(s, 200, "{b}");
    let row = b["workflows"].as_array().unwrap().iter().find(|w| w["workflow"] == "review").cloned().unwrap_or_default();
    assert_eq!(row["anomalies"], json!([{"scope": "use_case:review", "day": "2026-11-25", "amount_micros": 4_000_000}]), "{b}");
    assert_eq!(row["rule"], "cap.uncapped", "spend and no cap comes before pressure: {row}");
}

#[tokio::test]
async fn anomalies_wait_for_the_configured_time_of_day() {
    let receiver = Receiver::start().await;
    let h = start(&receiver, json!({"thresholds": [], "anomalies": [{"scope": "team:a", "evaluate_at": "17:30", "utc_offset": "+01:00"}]})).await;
    let today = at("2026-11-25T00:00:00Z");
    let seed: Vec<Value> = (1..=7).map(|d| rec(&format!("a-{d}"), "a", 1_000_000, today - d * DAY_MS + 3_600_000, "small", "chat")).collect();
    h.usage("gw1", seed).await;
    h.usage("gw1", vec![rec("a-t", "a", 9_000_000, today + 3_600_000, "small", "chat")]).await;
    settle(&h, 3).await;
    assert!(receiver.all().is_empty(), "11:00 in +01:00 is before 17:30");
    h.clock.set_ms(at("2026-11-25T16:30:00Z"));
    h.usage("gw1", vec![rec("a-t2", "a", 1, today + 3_600_000, "small", "chat")]).await;
    eventually("the anomaly at 17:30 local", || async { receiver.delivered().len() == 1 }).await;
}

#[tokio::test]
async fn baselines_give_daily_statistics_and_suggested_limits_fed_by_observe_budgets() {
    let h = Harness::start().await;
    h.budget(json!({"id": "obs", "scope": "team:obs", "limit": "1000", "window": "month", "mode": "observe"})).await;
    let today = at("2026-11-25T00:00:00Z");
    // Team obs: $2.00 on each of the 10 days before today, $4.00 on one of them; today does not count.
    let mut records = Vec::new();
    for d in 1..=10 {
        let cost = if d == 3 { 4_000_000 } else { 2_000_000 };
        records.push(rec(&format!("o-{d}"), "obs", cost, today - d * DAY_MS + 60_000, "small", "chat"));
    }
    records.push(rec("o-today", "obs", 99_000_000, today + 60_000, "small", "chat"));
    records.push(rec("x-1", "other", 1_000, today - DAY_MS, "small", "chat"));
    h.usage("gw1", records).await;
    assert_eq!(h.spent("obs").await, 121_000_000, "observe budgets charge like any other");

    let (s, b) = h.admin("GET", "/admin/reports/baseline?scope=team&days=10", None).await;
    assert_eq!(s, 200, "{b}");
    assert_eq!((b["from"].as_str(), b["to"].as_str()), (Some("2026-11-15"), Some("2026-11-25")));
    let rows = b["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 2);
    let obs = &rows[0];
    assert_eq!(obs["scope"], "team:obs");
    assert_eq!(obs["series"].as_array().unwrap().len(), 10);
    assert_eq!(obs["total_micros"], 22_000_000);
    assert_eq!((obs["mean_micros"].as_i64(), obs["p50_micros"].as_i64(), obs["p95_micros"].as_i64(), obs["max_micros"].as_i64()),
        (Some(2_200_000), Some(2_000_000), Some(4_000_000), Some(4_000_000)));
    assert_eq!(obs["baseline_monthly_micros"], 66_000_000);
    assert_eq!((obs["suggested_monthly_130_micros"].as_i64(), obs["suggested_monthly_150_micros"].as_i64()), (Some(85_800_000), Some(99_000_000)));
    assert_eq!(obs["budgets"], json!([{"id": "obs", "mode": "observe", "window": "month", "limit_micros": 1_000_000_000}]));

    let (s, b) = h.admin("GET", "/admin/reports/baseline?scope=team:other&days=10", None).await;
    assert_eq!((s, b["rows"].as_array().unwrap().len()), (200, 1));
    let (s, csv) = h.call("GET", "/admin/reports/baseline?scope=team&days=10&format=csv", Some(ALICE_TOKEN), None).await;
    let csv = csv.as_str().unwrap().to_owned();
    assert_eq!(s, 200);
    assert!(csv.starts_with("scope,total_micros,active_days,mean_micros"), "{csv}");
    assert!(csv.contains("team:obs,22000000,10,2200000,2000000,4000000,4000000,66000000,85800000,99000000,obs(observe)"), "{csv}");
    let (_, b) = h.admin("GET", "/admin/reports/baseline?scope=model&days=60", None).await;
    assert_eq!(b["rows"][0]["total_micros"], 22_001_000, "default to = today; model scope sums every team");
}

#[tokio::test]
async fn bad_queries_are_a_400_naming_the_parameter() {
    let h = Harness::start().await;
    let cases = [
        ("/admin/events?kind=boom", "kind"),
        ("/admin/events?limit=0", "limit"),
        ("/admin/events?since=yesterday", "since"),
        ("/admin/events?since=2026-11-25&until=2026-11-24", "until"),
        ("/admin/events?format=xml", "format"),
        ("/admin/events?surprise=1", "surprise"),
        ("/admin/reports/baseline", "scope"),
        ("/admin/reports/baseline?scope=planet", "scope"),
        ("/admin/reports/baseline?scope=team&days=0", "days"),
        ("/admin/reports/baseline?scope=team&days=401", "days"),
        ("/admin/reports/baseline?scope=team&to=soon", "to"),
        ("/admin/reports/baseline?scope=team&dayz=3", "dayz"),
    ];
    for (path, needle) in cases {
        let (s, b) = h.admin("GET", path, None).await;
        assert_eq!((s, b["error"]["code"].as_str()), (400, Some("invalid_request")), "{path}: {b}");
        let m = b["error"]["message"].as_str().unwrap();
        assert!(m.contains(needle), "{path}: `{m}` should name `{needle}`");
    }
    for path in ["/admin/events", "/admin/reports/baseline?scope=team"] {
        assert_eq!(h.call("GET", path, None, None).await.0, 401, "{path} needs the admin token");
        assert_eq!(h.call("GET", path, Some(GATEWAY_TOKEN), None).await.0, 401, "{path} refuses the gateway token");
    }
}
