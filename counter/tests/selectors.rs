//! Selector budgets (issue 18 §2): one allowance shared by every scope a selector picks — the teams
//! `a` and `b`, or every team's workflow of a use case — with the lease bound kept when one gateway
//! holds the budget under several scope keys, and every record charged once.

mod common;

use common::*;
use serde_json::{json, Value};

fn team_record(id: &str, team: &str, use_case: &str, cost: i64) -> Value {
    let mut r = record(id, team, cost);
    r["principal"]["use_case"] = json!(use_case);
    r
}

/// The grants of `budget` in a lease answer, as (scope key, granted micros).
fn grants(lease: &Value, budget: &str) -> Vec<(String, i64)> {
    lease["budgets"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|b| b["budget_id"] == budget)
        .map(|b| (b["scope"].as_str().unwrap().to_owned(), b["granted_micros"].as_i64().unwrap()))
        .collect()
}

async fn state(h: &Harness, id: &str) -> Value {
    let (status, body) = h.admin("GET", &format!("/admin/budgets/{id}"), None).await;
    assert_eq!(status, 200, "{body}");
    body
}

#[tokio::test]
async fn a_selector_budget_is_one_allowance_for_the_teams_it_names_and_each_record_is_charged_once() {
    let h = Harness::start().await;
    h.budget(json!({"id": "ab", "scope": {"team": ["b", "a", "a"]}, "limit": "1.00", "window": "day"})).await;
    let s = state(&h, "ab").await;
    assert_eq!(s["budget"]["scope"], "any:team=a,b", "stored and shown under its canonical string (sorted, once each)");
    // The canonical string is accepted as written: the same budget, not a change.
    let (_, put) = h.admin("PUT", "/admin/budgets/ab", Some(json!({"scope": "any:team=a,b", "limit": "1.00", "window": "day"}))).await;
    assert_eq!(put["outcome"], "unchanged", "{put}");

    // Records of teams a and b are charged to it, once each (plus a plain budget on team:a beside it).
    h.budget(json!({"id": "a-own", "scope": "team:a", "limit": "5", "window": "day"})).await;
    let (accepted, _) = h.usage("gw1", vec![team_record("r1", "a", "chat", 100), team_record("r2", "b", "chat", 20), team_record("r3", "c", "chat", 3)]).await;
    assert_eq!(accepted, 3);
    assert_eq!((h.spent("ab").await, h.spent("a-own").await), (120, 100), "team c is not selected; the plain budget is charged as before");

    // The utilization report lists the selector budget once, with its spend.
    let (_, report) = h.admin("GET", "/admin/reports/utilization", None).await;
    let rows: Vec<&Value> = report["budgets"].as_array().unwrap().iter().filter(|b| b["budget"] == "ab").collect();
    assert_eq!(rows.len(), 1, "{report}");
    assert_eq!((rows[0]["scope"].as_str(), rows[0]["spent_micros"].as_i64()), (Some("any:team=a,b"), Some(120)));

    // A lease names the scope key it is for: the gateway files the slice under that key.
    let l = h.lease("gw1", &["org:acme", "team:c"], 1_000).await;
    assert!(grants(&l, "ab").is_empty(), "team c is not covered: {l}");
    let l = h.lease("gw1", &["org:acme", "team:b"], 1_000).await;
    assert_eq!(grants(&l, "ab"), [("team:b".to_owned(), 1_000)]);

    // Deleting it drops its spend and slices like any budget's.
    let (status, _) = h.admin("DELETE", "/admin/budgets/ab", None).await;
    assert_eq!(status, 200);
    assert!(grants(&h.lease("gw1", &["team:b"], 1_000).await, "ab").is_empty());
}

#[tokio::test]
async fn one_gateway_holding_a_selector_budget_under_two_teams_never_holds_more_than_the_headroom() {
    let h = Harness::start().await;
    h.budget(json!({"id": "ab", "scope": {"team": ["a", "b"]}, "limit": "0.001000", "window": "day"})).await;
    // gw1 serves requests of both teams: two scope entries in the gateway, two slices here.
    let l = h.lease("gw1", &["org:acme", "team:a"], 700).await;
    assert_eq!(grants(&l, "ab"), [("team:a".to_owned(), 700)]);
    let l = h.lease("gw1", &["org:acme", "team:b"], 700).await;
    assert_eq!(grants(&l, "ab"), [("team:b".to_owned(), 300)], "the slice under team:a still counts: {l}");
    // One call naming both keys is answered once per key, each a slice of its own.
    let l = h.lease("gw2", &["team:a", "team:b"], 100).await;
    assert_eq!(grants(&l, "ab"), [("team:a".to_owned(), 0), ("team:b".to_owned(), 0)], "no headroom left for gw2");
    let s = state(&h, "ab").await;
    assert_eq!((s["spent_micros"].as_i64(), s["leased_micros"].as_i64()), (Some(0), Some(1_000)), "{s}");

    // Spend under team:a moves cost from gw1's team:a slice to spend; team:b's slice is untouched.
    h.usage("gw1", vec![team_record("a1", "a", "chat", 500)]).await;
    let s = state(&h, "ab").await;
    assert_eq!((s["spent_micros"].as_i64(), s["leased_micros"].as_i64()), (Some(500), Some(500)), "{s}");
    // Renewing team:b keeps its 300; team:a's 200 left is what it may still spend.
    let l = h.lease("gw1", &["team:a", "team:b"], 700).await;
    assert_eq!(grants(&l, "ab"), [("team:a".to_owned(), 200), ("team:b".to_owned(), 300)], "{l}");
    let s = state(&h, "ab").await;
    let (spent, leased) = (s["spent_micros"].as_i64().unwrap(), s["leased_micros"].as_i64().unwrap());
    assert!(spent + leased <= 1_000, "spent {spent} + live slices {leased} exceed the hard limit");
}

#[tokio::test]
async fn a_use_case_selector_covers_that_workflow_of_every_team() {
    let h = Harness::start().await;
    h.budget(json!({"id": "bots", "scope": {"use_case": ["ci", "review"]}, "limit": "1", "window": "month"})).await;
    h.usage("gw1", vec![team_record("1", "a", "ci", 10), team_record("2", "b", "review", 20), team_record("3", "a", "chat", 40), team_record("4", "x/y", "ci", 80)])
        .await;
    assert_eq!(h.spent("bots").await, 110, "ci and review of any team (a team id may hold `/`); chat is not selected");
    let l = h.lease("gw1", &["team:b", "workflow:b/ci"], 1_000).await;
    assert_eq!(grants(&l, "bots"), [("workflow:b/ci".to_owned(), 1_000)]);
    // A selector budget created mid-window starts from what the ledger holds for what it selects.
    h.budget(json!({"id": "late", "scope": {"use_case": ["ci"]}, "limit": "1", "window": "month"})).await;
    assert_eq!(h.spent("late").await, 90);
}

#[tokio::test]
async fn selector_mistakes_are_refused_naming_the_scope() {
    let h = Harness::start().await;
    for (scope, says) in [
        (json!({"team": ["a"], "user": ["bob"]}), "one kind"),
        (json!({"team": []}), "names no team"),
        (json!({}), "empty"),
        (json!({"galaxy": ["a"]}), "not a kind"),
        (json!({"team": ["*"]}), "cannot be selected"),
        (json!({"team": ["a,b"]}), "cannot be selected"),
        (json!({"team": "a"}), "selector object"),
        (json!("any:team"), "not a selector"),
        (json!("any:team="), "cannot be selected"),
    ] {
        let (status, body) = h.admin("PUT", "/admin/budgets/x", Some(json!({"scope": scope, "limit": "1", "window": "day"}))).await;
        let message = body["error"]["message"].as_str().unwrap_or_default();
        assert_eq!(status, 400, "{scope}: {body}");
        assert!(message.contains("scope: ") && message.contains(says), "{scope}: {message}");
    }
    let (status, body) = h.admin("PUT", "/admin/budgets/x", Some(json!({"scope": {"team": ["a"]}, "limit": "1", "window": "day", "template": "t"}))).await;
    assert_eq!(status, 400, "{body}");
    assert!(body["error"]["message"].as_str().unwrap().starts_with("template:"), "{body}");
}
