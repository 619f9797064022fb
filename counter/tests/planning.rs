//! Planning ahead of the bill (issue 18 §1, §4, §5) over the real HTTP API with the manual clock:
//! forecasts, the projected-overrun rule, seats beside tokens, outliers. The same file runs
//! against Redis (tests/redis_planning.rs).

pub mod common;

use common::receiver::Receiver;
use common::*;
use serde_json::{json, Value};
use std::time::Duration;
use tollgate_counter::clock::Stopwatch;
use tollgate_counter::notify::NotifyConfig;

const DAY_MS: i64 = 86_400_000;

/// The weekly pattern of the history: $10 Monday to Friday, $2 Saturday, $1 Sunday.
fn pattern(day_ms: i64) -> i64 {
    match (day_ms.div_euclid(DAY_MS) + 3).rem_euclid(7) {
        5 => 2_000_000,
        6 => 1_000_000,
        _ => 10_000_000,
    }
}

fn rec_at(id: &str, team: &str, cost: i64, finished_ms: i64) -> Value {
    let mut r = record(id, team, cost);
    r["started_at_ms"] = json!(finished_ms - 1000);
    r["finished_at_ms"] = json!(finished_ms);
    r
}

/// 28 days of the pattern for team platform (use case chat), 2026-10-26 to 2026-11-22, each day
/// posted at its own noon; the clock is left at Monday 2026-11-23 00:00 UTC.
async fn history(h: &Harness) {
    let first = at("2026-10-26");
    for d in 0..28 {
        let day = first + d * DAY_MS;
        h.clock.set_ms(day + DAY_MS / 2);
        assert_eq!(h.usage("gw1", vec![rec_at(&format!("h{d}"), "platform", pattern(day), day + DAY_MS / 2)]).await, (1, 0));
    }
    h.clock.set_ms(at("2026-11-23"));
}

#[tokio::test]
async fn forecasts_project_window_end_and_the_hard_limit_day_from_the_weekday_pace() {
    let h = Harness::start_in(tempfile::tempdir().unwrap(), at("2026-10-26")).await;
    history(&h).await;
    // Created on Monday: the week's window holds nothing of the ledger yet, whatever the version.
    h.budget(json!({"id": "platform-week", "scope": "team:platform", "limit": "25", "window": "week"})).await;
    let (s, _) = h.admin("PUT", "/admin/workflows/chat", Some(json!({"team": "platform", "owner": "alice", "class": "experiment"}))).await;
    assert_eq!(s, 200);
    h.clock.set_ms(at("2026-11-23T06:00:00Z"));
    assert_eq!(h.usage("gw1", vec![rec_at("mon", "platform", 4_000_000, at("2026-11-23T05:00:00Z"))]).await, (1, 0));

    let (s, f) = h.admin("GET", "/admin/reports/forecast", None).await;
    assert_eq!(s, 200, "{f}");
    assert_eq!(f["method"], "weekday_profile_28d_level_7d");
    let b = f["budgets"].as_array().unwrap().iter().find(|b| b["budget"] == "platform-week").unwrap().clone();
    assert_eq!(b["spent_micros"], 4_000_000);
    assert_eq!(b["trailing_7d_micros"], 53_000_000, "the week before: 5 x $10 + $2 + $1");
    assert_eq!(b["pace_today_micros"], 10_000_000, "a Monday");
    // $4 + 18 h of Monday ($7.50) + Tuesday to Friday ($40) + the weekend ($3) = $54.50.
    assert_eq!(b["projected_end_micros"], 54_500_000);
    // $25: $11.50 by Monday night, $21.50 by Tuesday night, $3.50 more = 35 % of Wednesday (08:24).
    assert_eq!(b["hard_limit_at"], at("2026-11-25T08:24:00Z") / 1000);
    assert_eq!(b["hard_limit_day"], "2026-11-25");
    assert_eq!(b["projected_to_exceed"], true);

    let w = f["workflows"].as_array().unwrap().iter().find(|w| w["workflow"] == "chat").unwrap().clone();
    assert_eq!(w["scope"], "workflow:platform/chat");
    // November 1-22 from the ledger ($160) plus Monday's $4.
    assert_eq!(w["month_to_date_micros"], 164_000_000);
    // + $7.50 + $40 + $3 + Monday 30th $10 = $224.50 by the end of the month; no cap, no date.
    assert_eq!(w["projected_end_micros"], 224_500_000);
    assert_eq!((w["monthly_cap_micros"].clone(), w["hard_limit_at"].clone()), (Value::Null, Value::Null));

    let (_, u) = h.admin("GET", "/admin/reports/utilization", None).await;
    let row = u["budgets"].as_array().unwrap().iter().find(|b| b["budget"] == "platform-week").unwrap().clone();
    assert_eq!(row["forecast"]["projected_end_micros"], 54_500_000);
    assert_eq!(row["forecast"]["hard_limit_day"], "2026-11-25");
    let mut c = h.client().await;
    let csv = c.get("/admin/reports/utilization?format=csv", Some(ALICE_TOKEN)).await.unwrap().text();
    let mut lines = csv.lines();
    assert!(lines.next().unwrap().ends_with(",projected_end_usd,hard_limit_day,projected_to_exceed"), "{csv}");
    assert!(csv.lines().any(|l| l.starts_with("platform-week,") && l.ends_with(",54.500000,2026-11-25,true")), "{csv}");
    let csv = c.get("/admin/reports/forecast?format=csv", Some(ALICE_TOKEN)).await.unwrap().text();
    assert!(csv.contains("budget,platform-week,team:platform,4000000,25000000,53000000,10000000,54500000,"), "{csv}");

    let (_, text) = h.call("GET", "/metrics", None, None).await;
    let text = text.as_str().unwrap_or_default().to_owned();
    for line in [
        "tollgate_counter_budget_projected_spend_micros{budget=\"platform-week\",scope=\"team:platform\"} 54500000".to_owned(),
        format!("tollgate_counter_budget_projected_hard_limit_timestamp_seconds{{budget=\"platform-week\",scope=\"team:platform\"}} {}", at("2026-11-25T08:24:00Z") / 1000),
        "tollgate_counter_workflow_projected_month_spend_micros{workflow=\"chat\",scope=\"workflow:platform/chat\"} 224500000".to_owned(),
    ] {
        assert!(text.contains(&line), "metrics lack `{line}`:\n{text}");
    }
    let (s, b) = h.admin("GET", "/admin/reports/forecast?fromat=csv", None).await;
    assert_eq!(s, 400, "{b}");
    assert!(b["error"]["message"].as_str().unwrap().contains("fromat"));
}

/// A team in Los Angeles that spends at 18:00 local time: $10 Monday to Friday, nothing on
/// Saturday, $5 on Sunday — in UTC days, Tuesday to Saturday and Monday. 28 local days, Sunday
/// 2026-10-04 to Saturday 10-31 (all PDT), each posted at its own time.
async fn evening_history(h: &Harness) {
    for d in 0..28 {
        let cost = match d % 7 {
            0 => 5_000_000,
            6 => continue,
            _ => 10_000_000,
        };
        let t = at("2026-10-04T18:00:00-07:00") + d * DAY_MS;
        h.clock.set_ms(t);
        assert_eq!(h.usage("gw1", vec![rec_at(&format!("e{d}"), "platform", cost, t)]).await, (1, 0));
    }
}

#[tokio::test]
async fn a_budget_in_an_iana_zone_is_forecast_in_its_local_days_across_a_dst_change() {
    let h = Harness::start_in(tempfile::tempdir().unwrap(), at("2026-10-04")).await;
    evening_history(&h).await;
    // Sunday 2026-11-01, noon in Los Angeles: the clocks went back at 02:00, a 25-hour day of
    // which 12 hours are left.
    h.clock.set_ms(at("2026-11-01T12:00:00-08:00"));
    let la = |id: &str, window: &str, limit: &str| json!({"id": id, "scope": "team:platform", "limit": limit, "window": window, "time_zone": "America/Los_Angeles"});
    h.budget(la("la-week", "week", "51.60")).await;
    h.budget(la("la-month", "month", "1000")).await;
    h.budget(json!({"id": "utc-week", "scope": "team:platform", "limit": "1000", "window": "week"})).await;
    h.budget(json!({"id": "fixed-week", "scope": "team:platform", "limit": "1000", "window": "week", "utc_offset": "-08:00"})).await;
    let (s, f) = h.admin("GET", "/admin/reports/forecast", None).await;
    assert_eq!(s, 200, "{f}");
    let row = |id: &str| f["budgets"].as_array().unwrap().iter().find(|b| b["budget"] == id).unwrap().clone();

    // The local week (from Monday 10-26, PDT) holds Monday to Friday: $50. Today is a Sunday
    // there: $5 a day, 12/25 of it left = $2.40.
    let b = row("la-week");
    assert_eq!((b["spent_micros"].as_i64(), b["trailing_7d_micros"].as_i64(), b["pace_today_micros"].as_i64()), (Some(50_000_000), Some(55_000_000), Some(5_000_000)), "{b}");
    assert_eq!(b["resets_at"], at("2026-11-02T00:00:00-08:00") / 1000);
    assert_eq!(b["projected_end_micros"], 52_400_000);
    // $1.60 to the hard limit: 8 of the 25 hours, 20:00 PST — the 1st locally, the 2nd in UTC.
    assert_eq!(b["hard_limit_at"], at("2026-11-02T04:00:00Z") / 1000);
    assert_eq!(b["hard_limit_day"], "2026-11-01");
    assert_eq!(b["projected_to_exceed"], true);
    // The local month: the rest of Sunday, then November's local weekdays — four weeks of $55 and
    // Monday the 30th — $232.40. (UTC days would give Monday $5 and Saturday $10.)
    let b = row("la-month");
    assert_eq!((b["spent_micros"].as_i64(), b["projected_end_micros"].as_i64()), (Some(0), Some(232_400_000)), "{b}");
    // A fixed -08:00 has the same dates here, but no DST: its Sunday is 24 hours, 12 of them left.
    let b = row("fixed-week");
    assert_eq!((b["spent_micros"].as_i64(), b["pace_today_micros"].as_i64(), b["projected_end_micros"].as_i64()), (Some(50_000_000), Some(5_000_000), Some(52_500_000)), "{b}");
    // The same spend counted in UTC days: a UTC Sunday holds a Los Angeles Saturday: no pace.
    let b = row("utc-week");
    assert_eq!((b["spent_micros"].as_i64(), b["pace_today_micros"].as_i64(), b["projected_end_micros"].as_i64()), (Some(55_000_000), Some(0), Some(55_000_000)), "{b}");

    let (_, u) = h.admin("GET", "/admin/reports/utilization", None).await;
    let w = u["budgets"].as_array().unwrap().iter().find(|b| b["budget"] == "la-week").unwrap().clone();
    assert_eq!((w["forecast"]["hard_limit_day"].as_str(), w["forecast"]["projected_end_micros"].as_i64()), (Some("2026-11-01"), Some(52_400_000)));
}

/// The value of the `/metrics` line that starts with `series` (name and labels).
fn sample(text: &str, series: &str) -> Option<i64> {
    text.lines().find(|l| l.starts_with(series) && l.as_bytes().get(series.len()) == Some(&b' ')).and_then(|l| l.rsplit(' ').next()).and_then(|v| v.parse().ok())
}

#[tokio::test]
async fn metrics_compute_the_forecasts_at_most_once_a_minute_of_the_counters_clock() {
    let h = Harness::start_in(tempfile::tempdir().unwrap(), at("2026-10-26")).await;
    history(&h).await;
    h.budget(json!({"id": "platform-week", "scope": "team:platform", "limit": "25", "window": "week"})).await;
    let scrape = || async {
        let (_, text) = h.call("GET", "/metrics", None, None).await;
        let text = text.as_str().unwrap_or_default().to_owned();
        let get = |series: &str| sample(&text, series).unwrap_or_else(|| panic!("no `{series}` in:\n{text}"));
        (
            get("tollgate_counter_forecast_computations_total"),
            get("tollgate_counter_forecast_computed_timestamp_seconds"),
            get("tollgate_counter_budget_projected_spend_micros{budget=\"platform-week\",scope=\"team:platform\"}"),
            get("tollgate_counter_budget_spent_micros{budget=\"platform-week\",scope=\"team:platform\",mode=\"enforce\"}"),
        )
    };
    // Monday 06:00: nothing spent this week; 18 h of Monday ($7.50), Tuesday to Friday ($40), the weekend ($3).
    let six = at("2026-11-23T06:00:00Z");
    h.clock.set_ms(six);
    assert_eq!(scrape().await, (1, six / 1000, 50_500_000, 0));
    // $4 spent; 59 s later the forecast gauges are still the 06:00 ones (the budget gauges are live),
    // while the forecast report computes afresh.
    assert_eq!(h.usage("gw1", vec![rec_at("mon", "platform", 4_000_000, six - 3_600_000)]).await, (1, 0));
    h.clock.set_ms(six + 59_999);
    assert_eq!(scrape().await, (1, six / 1000, 50_500_000, 4_000_000));
    assert_eq!(scrape().await, (1, six / 1000, 50_500_000, 4_000_000), "another scrape within the minute");
    let monday_left = |now: i64| 10_000_000 * (at("2026-11-24") - now) / DAY_MS;
    let (_, f) = h.admin("GET", "/admin/reports/forecast", None).await;
    assert_eq!(f["budgets"][0]["projected_end_micros"], 4_000_000 + monday_left(six + 59_999) + 43_000_000, "{f}");
    // A minute after the computation: computed again, with the $4 and 17 h 59 min of Monday left.
    h.clock.set_ms(six + 60_000);
    assert_eq!(scrape().await, (2, (six + 60_000) / 1000, 4_000_000 + monday_left(six + 60_000) + 43_000_000, 4_000_000));
    assert_eq!(monday_left(six + 60_000), 7_493_055);
    // A clock set back (an operator's fix) does not pin an answer from the future.
    h.clock.set_ms(six + 30_000);
    assert_eq!(scrape().await.0, 3);
}

async fn eventually<F, Fut>(what: &str, mut check: F)
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

async fn metric(h: &Harness, name: &str) -> u64 {
    let (_, text) = h.call("GET", "/metrics", None, None).await;
    let text = text.as_str().unwrap_or("").to_owned();
    text.lines().find(|l| l.starts_with(name)).and_then(|l| l.rsplit(' ').next()).and_then(|v| v.parse().ok()).unwrap_or(0)
}

#[tokio::test]
async fn the_projected_overrun_rule_fires_once_per_window_through_the_webhooks() {
    let receiver = Receiver::start().await;
    let config = json!({
        "webhooks": [{"name": "ops", "url": format!("{}/hook", receiver.url), "format": "json", "secret": "test-webhook-secret-0123456789"}],
        "thresholds": [],
        "forecasts": [{"scope": "team:*"}],
        "evaluation": {"tick_ms": 20, "anomaly_every_ms": 0},
    });
    let notify = NotifyConfig::parse(&config.to_string(), &|_| None).unwrap();
    let h = Harness::start_in_with(tempfile::tempdir().unwrap(), at("2026-10-26"), notify).await;
    history(&h).await;
    h.budget(json!({"id": "platform-week", "scope": "team:platform", "limit": "25", "window": "week"})).await;
    h.budget(json!({"id": "platform-roomy", "scope": "team:platform", "limit": "100", "window": "week"})).await;
    eventually("the projected overrun delivery", || async { receiver.delivered().len() == 1 }).await;
    // Several more evaluations at the same window: still one event, one delivery.
    let start = metric(&h, "tollgate_counter_notify_evaluations_total").await;
    eventually("more evaluations", || async { metric(&h, "tollgate_counter_notify_evaluations_total").await >= start + 5 }).await;
    let (_, events) = h.admin("GET", "/admin/events?kind=projected_overrun", None).await;
    let events = events["events"].as_array().unwrap().clone();
    assert_eq!(events.len(), 1, "{events:?}");
    let e = &events[0];
    assert_eq!(e["key"], format!("projected_overrun:platform-week:{}", at("2026-11-23") / 1000));
    assert_eq!((e["scope"].as_str(), e["subject"].as_str()), (Some("team:platform"), Some("platform-week")));
    assert_eq!(e["details"]["hard_limit_day"], "2026-11-25", "$25 at $10 a day from Monday: Wednesday noon");
    assert_eq!(e["details"]["projected_end_micros"], 53_000_000);
    assert_eq!(receiver.all().len(), 1, "the roomy budget is not projected over; the tight one once");
    assert_eq!(metric(&h, "tollgate_counter_events_total{kind=\"projected_overrun\"}").await, 1);

    // The week goes by at the same pattern (the tight budget stops at its hard limit: no second
    // projection in this window); the next week's window re-arms the rule.
    for d in 0..7 {
        let day = at("2026-11-23") + d * DAY_MS;
        h.clock.set_ms(day + DAY_MS / 2);
        h.usage("gw1", vec![rec_at(&format!("w{d}"), "platform", pattern(day), day + DAY_MS / 2)]).await;
    }
    let (_, events) = h.admin("GET", "/admin/events?kind=projected_overrun", None).await;
    assert_eq!(events["events"].as_array().unwrap().len(), 1, "{events}");
    h.clock.set_ms(at("2026-11-30T00:00:01Z"));
    eventually("the next window's event", || async { receiver.delivered().len() == 2 }).await;
    let (_, events) = h.admin("GET", "/admin/events?kind=projected_overrun", None).await;
    assert_eq!(events["events"][0]["key"], format!("projected_overrun:platform-week:{}", at("2026-11-30") / 1000));
}

fn task_rec(id: &str, task: &str, use_case: &str, cost: i64, model: &str, status: u16, finished_ms: i64) -> Value {
    let mut r = rec_at(id, "platform", cost, finished_ms);
    r["principal"]["task"] = json!(task);
    r["principal"]["use_case"] = json!(use_case);
    r["routed_model"] = json!(model);
    r["status"] = json!(status);
    r
}

#[tokio::test]
async fn outliers_are_runs_and_days_far_above_their_own_baseline_with_what_explains_them() {
    let h = Harness::start().await;
    // Six ordinary CI runs, one a day, about $0.10 each; one run of 8 calls on a dearer model, 3 failed.
    let mut batch = Vec::new();
    for i in 0..6 {
        batch.push(task_rec(&format!("r{i}"), &format!("ci-{i}"), "ci-agent", 100_000 + i * 1000, "gpt-4o-mini", 200, at("2026-11-10T12:00:00Z") + i * DAY_MS));
    }
    for j in 0..8 {
        batch.push(task_rec(&format!("x{j}"), "fix-ci-42", "ci-agent", 500_000, "gpt-4o", if j < 3 { 500 } else { 200 }, at("2026-11-15T13:00:00Z") + j * 1000));
    }
    assert_eq!(h.usage("gw1", batch).await, (14, 0));

    let (s, b) = h.admin("GET", "/admin/reports/outliers?from=2026-11-01&to=2026-11-25", None).await;
    assert_eq!(s, 200, "{b}");
    assert_eq!((b["k"].as_str(), b["records"].as_u64(), b["truncated"].as_bool()), (Some("3.0"), Some(14), Some(false)));
    let outliers = b["outliers"].as_array().unwrap();
    let runs: Vec<&Value> = outliers.iter().filter(|o| o["kind"] == "run").collect();
    assert_eq!(runs.len(), 1, "only the run far above its siblings: {b}");
    let run = runs[0];
    assert_eq!((run["id"].as_str(), run["workflow"].as_str(), run["day"].as_str()), (Some("fix-ci-42"), Some("platform/ci-agent"), Some("2026-11-15")));
    assert_eq!(run["cost_micros"], 4_000_000);
    assert_eq!(run["baseline"]["median_micros"], 103_000);
    assert_eq!(run["baseline"]["samples"], 7);
    let e = &run["explanation"];
    assert_eq!((e["requests"].as_u64(), e["failed_requests"].as_u64(), e["baseline_median_requests"].as_u64()), (Some(8), Some(3), Some(1)));
    assert_eq!(e["models"], json!([{"model": "gpt-4o", "requests": 8, "cost_micros": 4_000_000}]));
    assert_eq!((e["input_tokens"].as_u64(), e["output_tokens"].as_u64()), (Some(800), Some(160)));
    let days: Vec<&str> = outliers.iter().filter(|o| o["kind"] != "run").map(|o| o["id"].as_str().unwrap()).collect();
    assert_eq!(days, ["platform/ci-agent@2026-11-15", "2026-11-15"], "its workflow's day and the day itself");
    assert!(!b.to_string().contains("bob"), "no answer names a user: outliers, not people");

    let (_, b) = h.admin("GET", "/admin/reports/outliers?from=2026-11-01&to=2026-11-25&min_samples=8", None).await;
    assert_eq!(b["outliers"].as_array().unwrap().len(), 0, "no group has 8 members: no baseline, no outlier: {b}");
    let (_, b) = h.admin("GET", "/admin/reports/outliers?from=2026-11-01&to=2026-11-25&k=100", None).await;
    let ids: Vec<&str> = b["outliers"].as_array().unwrap().iter().map(|o| o["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["fix-ci-42", "platform/ci-agent@2026-11-15", "2026-11-15"], "38x the median is still 100 MADs out (the MAD floor is 5 % of it)");
    assert_eq!(b["k"], "100.0");
    let mut c = h.client().await;
    let csv = c.get("/admin/reports/outliers?from=2026-11-01&to=2026-11-25&format=csv", Some(VIC_TOKEN)).await.unwrap().text();
    assert!(csv.starts_with("kind,id,workflow,day,cost_micros,median_micros,threshold_micros,pct_of_median,requests,failed_requests"), "{csv}");
    assert!(csv.contains("run,fix-ci-42,platform/ci-agent,2026-11-15,4000000,103000,"), "{csv}");
    for (query, field) in [("k=0", "k:"), ("k=abc", "k:"), ("min_samples=1", "min_samples:"), ("from=2026-11-25&to=2026-11-01", "to:"), ("sort=cost", "sort")] {
        let (s, b) = h.admin("GET", &format!("/admin/reports/outliers?{query}"), None).await;
        assert_eq!(s, 400, "{query}: {b}");
        assert!(b["error"]["message"].as_str().unwrap().contains(field), "{query}: {b}");
    }
}

fn seats_config() -> Value {
    json!({
        "products": {"assistant": "39.00", "ide-agent": "19.00"},
        "roles": {"deep-coding": {"seats": ["assistant", "ide-agent"], "band": {"min": "150", "max": "400"}},
                  "occasional": {"seats": ["assistant"], "band": {"min": "0", "max": "60"}}},
        "users": {"alice": {"team": "platform", "role": "deep-coding"}, "bob": {"team": "platform", "role": "deep-coding"},
                  "carol": {"team": "platform", "role": "occasional"}}
    })
}

fn user_rec(id: &str, user: &str, cost: i64, finished_ms: i64) -> Value {
    let mut r = rec_at(id, "platform", cost, finished_ms);
    r["principal"]["user"] = json!(user);
    r
}

#[tokio::test]
async fn seats_beside_usage_per_team_and_role_flag_who_is_outside_the_band() {
    let h = Harness::start().await;
    let (s, b) = h.admin("GET", "/admin/reports/seats?month=2026-11", None).await;
    assert_eq!((s, b["error"]["code"].as_str()), (404, Some("not_found")), "{b}");
    let (s, b) = h.admin("PUT", "/admin/seats", Some(seats_config())).await;
    assert_eq!((s, b["outcome"].as_str()), (200, Some("created")), "{b}");
    let (_, b) = h.admin("PUT", "/admin/seats", Some(seats_config())).await;
    assert_eq!(b["outcome"], "unchanged");
    let (_, got) = h.admin("GET", "/admin/seats", None).await;
    assert_eq!(got, seats_config());

    let nov = at("2026-11-10T12:00:00Z");
    let batch = vec![
        user_rec("a1", "alice", 200_000_000, nov),    // 58 + 200 = 258: inside 150-400
        user_rec("b1", "bob", 10_000_000, nov),       // 68: below
        user_rec("c1", "carol", 30_000_000, nov),     // 39 + 30 = 69: above 60
        user_rec("d1", "dave", 7_000_000, nov),       // no seat entry: shown as unassigned usage
        user_rec("a0", "alice", 999_000_000, at("2026-10-31T23:00:00Z")), // October: not this month
    ];
    assert_eq!(h.usage("gw1", batch).await, (5, 0));
    let (s, r) = h.admin("GET", "/admin/reports/seats?month=2026-11", None).await;
    assert_eq!(s, 200, "{r}");
    let rows = r["rows"].as_array().unwrap();
    let roles: Vec<&str> = rows.iter().map(|r| r["role"].as_str().unwrap()).collect();
    assert_eq!(roles, ["", "deep-coding", "occasional"]);
    let deep = &rows[1];
    assert_eq!((deep["users"].as_u64(), deep["seats_micros"].as_i64(), deep["usage_micros"].as_i64(), deep["total_micros"].as_i64()), (Some(2), Some(116_000_000), Some(210_000_000), Some(326_000_000)));
    assert_eq!((deep["band_min_micros"].as_i64(), deep["band_max_micros"].as_i64()), (Some(150_000_000), Some(400_000_000)));
    assert_eq!(deep["outside_band"], json!([{"user": "bob", "direction": "below", "seats_micros": 58_000_000, "usage_micros": 10_000_000, "total_micros": 68_000_000}]));
    assert_eq!((rows[2]["users_above_band"].as_u64(), rows[2]["outside_band"][0]["user"].as_str()), (Some(1), Some("carol")));
    assert_eq!((rows[0]["usage_micros"].as_i64(), rows[0]["seats_micros"].as_i64()), (Some(7_000_000), Some(0)));

    let (_, review) = h.admin("GET", "/admin/reports/review?month=2026-11", None).await;
    assert_eq!(review["seats"], r["rows"], "the monthly review carries the same seats rows");
    let mut c = h.client().await;
    let csv = c.get("/admin/reports/seats?month=2026-11&format=csv", Some(ALICE_TOKEN)).await.unwrap().text();
    assert!(csv.contains("platform,deep-coding,2,58.000000,116.000000,210.000000,326.000000,150.000000,400.000000,1,0,bob:below"), "{csv}");

    let (_, audit) = h.admin("GET", "/admin/audit?subject=seats", None).await;
    let entries = audit["entries"].as_array().unwrap();
    assert_eq!(entries.len(), 1, "created once; the identical PUT is not audited: {audit}");
    assert_eq!((entries[0]["action"].as_str(), entries[0]["actor"].as_str()), (Some("seats.create"), Some("alice")));

    let mut bad = seats_config();
    bad["users"]["carol"]["role"] = json!("pilot");
    let (s, b) = h.admin("PUT", "/admin/seats", Some(bad)).await;
    assert_eq!(s, 400);
    assert!(b["error"]["message"].as_str().unwrap().starts_with("users.carol.role:"), "{b}");
    let mut bad = seats_config();
    bad["products"]["assistant"] = json!("lots");
    let (_, b) = h.admin("PUT", "/admin/seats", Some(bad)).await;
    assert!(b["error"]["message"].as_str().unwrap().starts_with("products.assistant:"), "{b}");
    let (s, _) = h.call("PUT", "/admin/seats", Some(VIC_TOKEN), Some(seats_config())).await;
    assert_eq!(s, 403, "a viewer cannot change seats");
}

#[tokio::test]
async fn the_spend_report_with_seats_shows_each_teams_seats_beside_its_usage_for_one_month() {
    let h = Harness::start().await;
    let mut config = seats_config();
    config["users"]["erin"] = json!({"team": "infra", "role": "occasional"}); // a seat, no usage
    let (s, b) = h.admin("PUT", "/admin/seats", Some(config)).await;
    assert_eq!(s, 200, "{b}");
    let nov = at("2026-11-10T12:00:00Z");
    let mut web = rec_at("w1", "web", 5_000_000, nov);
    web["principal"]["user"] = json!("zed");
    let batch = vec![user_rec("a1", "alice", 200_000_000, nov), user_rec("b1", "bob", 10_000_000, nov), user_rec("c1", "carol", 30_000_000, nov), user_rec("d1", "dave", 7_000_000, nov), web];
    assert_eq!(h.usage("gw1", batch).await, (5, 0));

    let (s, r) = h.admin("GET", "/admin/reports/spend?group_by=team&from=2026-11-01&to=2026-12-01&with=seats", None).await;
    assert_eq!(s, 200, "{r}");
    let rows = r["rows"].as_array().unwrap();
    let teams: Vec<&str> = rows.iter().map(|r| r["team"].as_str().unwrap()).collect();
    assert_eq!(teams, ["infra", "platform", "web"], "a team with seats and no usage has a row too");
    let figures = |row: &Value| (row["cost_micros"].as_i64(), row["seats"]["users"].as_u64(), row["seats"]["seats_micros"].as_i64(), row["seats"]["total_micros"].as_i64());
    assert_eq!(figures(&rows[0]), (Some(0), Some(1), Some(39_000_000), Some(39_000_000)));
    // alice and bob 2 x $58, carol $39; dave has no seat entry: his usage counts, no seat.
    assert_eq!(figures(&rows[1]), (Some(247_000_000), Some(3), Some(155_000_000), Some(402_000_000)));
    assert_eq!(figures(&rows[2]), (Some(5_000_000), Some(0), Some(0), Some(5_000_000)));
    let roles: Vec<&str> = rows[1]["seats"]["roles"].as_array().unwrap().iter().map(|r| r["role"].as_str().unwrap()).collect();
    assert_eq!(roles, ["", "deep-coding", "occasional"], "per role, as the seats report shows it");
    assert_eq!(rows[1]["seats"]["roles"][1]["outside_band"][0]["user"], "bob");
    assert_eq!((r["total"]["seats_micros"].as_i64(), r["total"]["total_with_seats_micros"].as_i64()), (Some(194_000_000), Some(446_000_000)));

    let mut c = h.client().await;
    let csv = c.get("/admin/reports/spend?group_by=team&from=2026-11-01&to=2026-12-01&with=seats&format=csv", Some(ALICE_TOKEN)).await.unwrap().text();
    assert!(csv.lines().next().unwrap().ends_with(",seat_users,seats_usd,seats_micros,total_usd,total_micros"), "{csv}");
    assert!(csv.contains(",3,155.000000,155000000,402.000000,402000000"), "{csv}");

    for (query, field) in [
        ("group_by=user&from=2026-11-01&to=2026-12-01&with=seats", "with:"),
        ("group_by=team&from=2026-11-01&to=2026-11-15&with=seats", "from:"),
        ("group_by=team&with=bands", "with:"),
    ] {
        let (s, b) = h.admin("GET", &format!("/admin/reports/spend?{query}"), None).await;
        assert_eq!(s, 400, "{query}: {b}");
        assert!(b["error"]["message"].as_str().unwrap().starts_with(field), "{query}: {b}");
    }
}
