//! Default budgets (issue 18 §2): a budget on `<kind>:*` is a template; every principal scope of
//! that kind without a budget of its own gets a copy the first time it spends or asks for a lease.

mod common;

use common::*;
use serde_json::{json, Value};
use std::sync::Arc;

fn user_record(id: &str, user: &str, cost: i64) -> Value {
    let mut r = record(id, "platform", cost);
    r["principal"]["user"] = json!(user);
    r
}

fn grant(lease: &Value, budget: &str) -> Option<i64> {
    lease["budgets"].as_array().unwrap().iter().find(|b| b["budget_id"] == budget).map(|b| b["granted_micros"].as_i64().unwrap())
}

#[tokio::test]
async fn a_template_gives_each_new_user_a_budget_of_their_own_until_an_explicit_one_overrides_it() {
    let h = Harness::start().await;
    h.budget(json!({"id": "user-default", "scope": "user:*", "limit": "0.001", "window": "day"})).await;

    // The first lease of user:bob makes bob's budget from the template, and is answered from it.
    let l = h.lease("gw1", &["org:acme", "team:platform", "user:bob"], 5_000).await;
    assert_eq!(grant(&l, "user-default.bob"), Some(1_000), "{l}");
    assert_eq!(grant(&l, "user-default"), None, "the template itself covers nobody");
    let (_, audit) = h.admin("GET", "/admin/audit?subject=user-default.bob", None).await;
    let created = &audit["entries"][0];
    assert_eq!((created["action"].as_str(), created["actor"].as_str()), (Some("budget.create"), Some("template:user-default")));
    assert_eq!((created["after"]["scope"].as_str(), created["after"]["template"].as_str()), (Some("user:bob"), Some("user-default")));

    // The first spend of user:carol makes carol's, and is charged to it; other users are untouched.
    h.usage("gw1", vec![user_record("c1", "carol", 400)]).await;
    assert_eq!(h.spent("user-default.carol").await, 400);
    assert_eq!(h.spent("user-default.bob").await, 0);
    let l = h.lease("gw2", &["user:carol"], 5_000).await;
    assert_eq!(grant(&l, "user-default.carol"), Some(600), "the template's limit, per user");

    // An explicit budget on user:bob overrides the template's: that one goes, audited, and is not made again.
    h.budget(json!({"id": "bob-own", "scope": "user:bob", "limit": "1.00", "window": "day"})).await;
    let (status, _) = h.admin("GET", "/admin/budgets/user-default.bob", None).await;
    assert_eq!(status, 404);
    let (_, audit) = h.admin("GET", "/admin/audit?subject=user-default.bob&limit=1", None).await;
    assert_eq!((audit["entries"][0]["action"].as_str(), audit["entries"][0]["actor"].as_str()), (Some("budget.delete"), Some("alice")));
    let l = h.lease("gw1", &["user:bob"], 5_000).await;
    assert_eq!((grant(&l, "bob-own"), grant(&l, "user-default.bob")), (Some(5_000), None), "{l}");

    // A user whose id an id cannot carry still gets one budget, under a cleaned-up, hashed id.
    h.usage("gw1", vec![user_record("d1", "dana@example.com", 7)]).await;
    let (_, list) = h.admin("GET", "/admin/budgets", None).await;
    let dana: Vec<&Value> = list["budgets"].as_array().unwrap().iter().filter(|b| b["budget"]["scope"] == "user:dana@example.com").collect();
    assert_eq!(dana.len(), 1, "{list}");
    assert_eq!(dana[0]["spent_micros"], 7);

    // Template fields are validated like any budget's.
    let (s, b) = h.admin("PUT", "/admin/budgets/made", Some(json!({"scope": "user:*", "limit": "1", "window": "day", "template": "user-default"}))).await;
    assert_eq!(s, 400, "{b}");
    assert!(b["error"]["message"].as_str().unwrap().starts_with("template:"), "{b}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn new_users_leasing_at_once_each_get_one_budget_and_never_more_than_its_headroom() {
    let h = Arc::new(Harness::start().await);
    h.budget(json!({"id": "user-default", "scope": "user:*", "limit": "0.001", "window": "day"})).await;
    let mut tasks = Vec::new();
    for g in 0..16 {
        let h = Arc::clone(&h);
        tasks.push(tokio::spawn(async move {
            let mut out = Vec::new();
            for u in 0..4 {
                let l = h.lease(&format!("gw{g}"), &[&format!("user:u{u}")], 300).await;
                out.push((u, grant(&l, &format!("user-default.u{u}")).unwrap()));
            }
            out
        }));
    }
    let mut granted = [0i64; 4];
    for t in tasks {
        for (u, g) in t.await.unwrap() {
            granted[u] += g;
        }
    }
    let (_, state) = h.admin("GET", "/admin/budgets", None).await;
    for (u, total) in granted.iter().enumerate() {
        // 16 asks of 300 on a 1000 budget: exactly the headroom, whichever call made the budget.
        let leased = state["budgets"].as_array().unwrap().iter().find(|b| b["budget"]["id"] == format!("user-default.u{u}")).unwrap()["leased_micros"].as_i64().unwrap();
        assert_eq!((*total, leased), (1_000, 1_000), "user u{u}: granted, live slices");
        let (_, audit) = h.admin("GET", &format!("/admin/audit?subject=user-default.u{u}"), None).await;
        let creates = audit["entries"].as_array().unwrap().iter().filter(|e| e["action"] == "budget.create").count();
        assert_eq!(creates, 1, "user u{u}: made once, however many gateways raced for it");
    }
}

/// Ids of the budgets in a JSON list whose rows name their budget at `path` (`/budget/id`, `/budget`).
fn ids(rows: &Value, path: &str) -> Vec<String> {
    let mut out: Vec<String> = rows.as_array().unwrap().iter().map(|r| r.pointer(path).and_then(Value::as_str).unwrap().to_owned()).collect();
    out.sort();
    out
}

#[tokio::test]
async fn templates_are_not_listed_as_budgets_only_the_budgets_they_made_are() {
    let h = Harness::start().await;
    h.budget(json!({"id": "user-default", "scope": "user:*", "limit": "20", "window": "day"})).await;
    // A $0 template (no key spends without a budget of its own): as a budget it would read "hard".
    h.budget(json!({"id": "key-default", "scope": "key:*", "limit": "0", "window": "day"})).await;
    h.budget(json!({"id": "team-default", "scope": "team:*", "limit": "100", "window": "month"})).await;
    h.budget(json!({"id": "platform", "scope": "team:platform", "limit": "500", "window": "month"})).await;
    h.usage("gw1", vec![user_record("b1", "bob", 1_500_000)]).await;

    // The listing: the budgets that charge someone, and the templates apart with what they made.
    let (_, list) = h.admin("GET", "/admin/budgets", None).await;
    assert_eq!(ids(&list["budgets"], "/budget/id"), ["platform", "user-default.bob"], "{list}");
    assert_eq!(list["budgets"].as_array().unwrap().iter().find(|b| b["budget"]["id"] == "user-default.bob").unwrap()["spent_micros"], 1_500_000);
    let templates: Vec<(String, i64)> =
        list["templates"].as_array().unwrap().iter().map(|t| (t["template"]["id"].as_str().unwrap().to_owned(), t["budgets_made"].as_i64().unwrap())).collect();
    assert_eq!(templates, [("key-default".to_owned(), 0), ("team-default".to_owned(), 0), ("user-default".to_owned(), 1)], "{list}");
    assert_eq!(list["templates"][2]["template"]["scope"], "user:*");
    // A template is still a budget id the API answers for (to read, change or delete it).
    let (s, one) = h.admin("GET", "/admin/budgets/key-default", None).await;
    assert_eq!((s, one["budget"]["scope"].as_str()), (200, Some("key:*")));

    // The utilization report (JSON and CSV), forecasts, team utilization, /metrics: no template.
    let (_, u) = h.admin("GET", "/admin/reports/utilization", None).await;
    assert_eq!(ids(&u["budgets"], "/budget"), ["platform", "user-default.bob"], "{u}");
    let csv = h.client().await.get("/admin/reports/utilization?format=csv", Some(ALICE_TOKEN)).await.unwrap().text();
    assert_eq!(csv.lines().count(), 3, "header and two budgets:\n{csv}");
    assert!(!csv.contains("default,"), "{csv}");
    let (_, f) = h.admin("GET", "/admin/reports/forecast", None).await;
    assert_eq!(ids(&f["budgets"], "/budget"), ["platform", "user-default.bob"], "{f}");
    let (_, t) = h.admin("GET", "/admin/reports/team-utilization", None).await;
    let teams: Vec<&str> = t["teams"].as_array().unwrap().iter().map(|t| t["team"].as_str().unwrap()).collect();
    assert_eq!(teams, ["platform"], "no team `*`: {t}");
    let (_, text) = h.call("GET", "/metrics", None, None).await;
    let text = text.as_str().unwrap().to_owned();
    assert!(text.contains("tollgate_counter_budget_spent_micros{budget=\"user-default.bob\",scope=\"user:bob\",mode=\"enforce\"} 1500000"), "{text}");
    for template in ["user-default\"", "key-default\"", "team-default\"", ":*\""] {
        assert!(!text.contains(template), "metrics name a template ({template}):\n{text}");
    }
}
