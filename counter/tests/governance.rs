//! Governance over the HTTP API, end to end on loopback with the manual clock (issue 11 §1, §4,
//! §5, §6): workflows and their caps, roles, exemption requests and approval, outcomes and the
//! GitHub webhook, outcome reports, the monthly review. tests/redis_governance.rs runs the same
//! specification against the Redis store.

mod common;

use common::*;
use serde_json::{json, Value};

fn code_review() -> Value {
    json!({"id": "code-review", "team": "platform", "owner": "alice", "class": "production_tool",
        "default_tier": "standard", "escalation_tier": "premium",
        "success_metric": {"description": "PRs merged after AI review", "outcome_kind": "merged_pr"},
        "weekly_cap": "0.50", "monthly_cap": "1.00", "review_date": "2026-11-30", "exception_path": "ask #ai-budget; cfo approves"})
}

/// A usage record of platform × `use_case` on `model`, finished at `finished`.
fn usage(id: &str, use_case: &str, model: &str, cost: i64, finished: &str) -> Value {
    let mut r = record(id, "platform", cost);
    r["principal"]["use_case"] = json!(use_case);
    r["routed_model"] = json!(model);
    r["started_at_ms"] = json!(at(finished) - 1000);
    r["finished_at_ms"] = json!(at(finished));
    r
}

fn check_400(status: u16, body: &Value, needle: &str) {
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["code"], "invalid_request", "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains(needle), "`{message}` should mention `{needle}`");
}

#[tokio::test]
async fn a_workflow_is_saved_audited_and_its_caps_are_enforced_as_budgets() {
    let h = Harness::start().await;
    let (s, b) = h.admin("PUT", "/admin/workflows/code-review", Some(code_review())).await;
    assert_eq!((s, b["outcome"].as_str()), (200, Some("created")), "{b}");
    assert_eq!(b["budgets"], json!({"workflow.code-review.weekly": "created", "workflow.code-review.monthly": "created"}));
    assert_eq!(b["workflow"]["scope"], "workflow:platform/code-review");
    assert_eq!(b["workflow"]["weekly_cap"], "0.500000");

    let (_, weekly) = h.admin("GET", "/admin/budgets/workflow.code-review.weekly", None).await;
    assert_eq!((weekly["budget"]["scope"].as_str(), weekly["budget"]["window"].as_str()), (Some("workflow:platform/code-review"), Some("week")));
    // The gateway's chain for platform × code-review already holds that scope: the cap binds.
    h.usage("gw1", vec![usage("r1", "code-review", "gpt-4o", 450_000, "2026-11-25T09:00:00Z")]).await;
    let l = h.lease("gw1", &["team:platform", "workflow:platform/code-review"], 200_000).await;
    let weekly = l["budgets"].as_array().unwrap().iter().find(|b| b["budget_id"] == "workflow.code-review.weekly").unwrap().clone();
    assert_eq!((weekly["granted_micros"].as_i64(), weekly["status"].as_str()), (Some(50_000), Some("soft")), "{l}");

    let (s, b) = h.admin("PUT", "/admin/workflows/code-review", Some(code_review())).await;
    assert_eq!((s, b["outcome"].as_str()), (200, Some("unchanged")));
    assert_eq!(b["budgets"], json!({"workflow.code-review.weekly": "unchanged", "workflow.code-review.monthly": "unchanged"}));

    h.clock.advance_ms(60_000);
    let mut experiment = code_review();
    experiment["class"] = json!("experiment");
    experiment.as_object_mut().unwrap().remove("weekly_cap");
    let (s, b) = h.call("PUT", "/admin/workflows/code-review", Some(BOB_TOKEN), Some(experiment)).await;
    assert_eq!((s, b["outcome"].as_str()), (200, Some("updated")), "{b}");
    assert_eq!(b["budgets"]["workflow.code-review.weekly"], "deleted", "a removed cap takes its budget with it");
    assert_eq!(h.admin("GET", "/admin/budgets/workflow.code-review.weekly", None).await.0, 404);

    let (_, audit) = h.admin("GET", "/admin/audit?subject=workflow:code-review", None).await;
    let entries: Vec<(&str, &str)> = audit["entries"].as_array().unwrap().iter().map(|e| (e["actor"].as_str().unwrap(), e["action"].as_str().unwrap())).collect();
    assert_eq!(entries, [("bob", "workflow.update"), ("alice", "workflow.create")]);
    assert_eq!(audit["entries"][0]["before"]["class"], "production_tool");
    assert_eq!(audit["entries"][0]["after"]["class"], "experiment");
    let (_, audit) = h.admin("GET", "/admin/audit?subject=workflow.code-review.weekly", None).await;
    let actions: Vec<&str> = audit["entries"].as_array().unwrap().iter().map(|e| e["action"].as_str().unwrap()).collect();
    assert_eq!(actions, ["budget.delete", "budget.create"]);

    let (s, b) = h.admin("DELETE", "/admin/workflows/code-review", None).await;
    assert_eq!((s, b["budgets"].clone()), (200, json!({"workflow.code-review.monthly": "deleted"})));
    assert_eq!(h.admin("GET", "/admin/workflows/code-review", None).await.0, 404);
}

#[tokio::test]
async fn the_workflow_policy_is_checked_on_save_and_names_the_field() {
    let h = Harness::start().await;
    let without = |field: &str| {
        let mut w = code_review();
        w.as_object_mut().unwrap().remove(field);
        w
    };
    let with = |field: &str, value: Value| {
        let mut w = code_review();
        w[field] = value;
        w
    };
    // (body, what the 400 must name)
    let table = [
        (without("exception_path"), "exception_path"),
        (without("review_date"), "review_date"),
        (without("owner"), "owner"),
        (without("weekly_cap"), "weekly_cap"),
        (with("class", json!("team_tool")).as_object().map(|o| { let mut o = o.clone(); o.remove("monthly_cap"); Value::Object(o) }).unwrap(), "monthly_cap"),
        (with("weekly_cap", json!("2.00")), "weekly_cap"),
        (with("monthly_cap", json!("lots")), "monthly_cap"),
        (with("success_metric", json!({"description": "x", "outcome_kind": "vibes"})), "success_metric.outcome_kind"),
        (with("class", json!("pet_project")), "class"),
        (with("budget_owner", json!("x")), "unknown field `budget_owner`"),
        (with("id", json!("other")), "path says `code-review`"),
    ];
    for (body, needle) in table {
        let (s, b) = h.admin("PUT", "/admin/workflows/code-review", Some(body)).await;
        check_400(s, &b, needle);
    }
    let (_, list) = h.admin("GET", "/admin/workflows", None).await;
    assert_eq!(list["workflows"], json!([]), "nothing was saved");
    let configured = with("success_metric", json!({"description": "incidents closed", "outcome_kind": "incident_closed"}));
    assert_eq!(h.admin("PUT", "/admin/workflows/code-review", Some(configured)).await.0, 200, "a configured outcome kind is accepted");
}

#[tokio::test]
async fn a_past_review_date_shows_as_overdue_in_the_api_and_metrics() {
    let h = Harness::start().await;
    h.admin("PUT", "/admin/workflows/code-review", Some(code_review())).await;
    let overdue = |v: &Value| v["workflows"][0]["overdue"].clone();
    let gauge = "tollgate_counter_workflow_review_overdue{workflow=\"code-review\",team=\"platform\",owner=\"alice\",class=\"production_tool\"}";
    let mut c = h.client().await;
    assert_eq!(overdue(&h.admin("GET", "/admin/workflows", None).await.1), json!(false));
    let metrics = c.get("/metrics", None).await.unwrap().text();
    assert!(metrics.lines().any(|l| l == format!("{gauge} 0")), "{metrics}");

    h.clock.set_ms(at("2026-12-01T00:00:00Z"));
    assert_eq!(overdue(&h.admin("GET", "/admin/workflows", None).await.1), json!(true));
    let metrics = c.get("/metrics", None).await.unwrap().text();
    assert!(metrics.lines().any(|l| l == format!("{gauge} 1")), "{metrics}");
}

#[tokio::test]
async fn each_endpoint_checks_its_role() {
    let h = Harness::start().await;
    let request = json!({"scope": "team:platform", "amount": "10", "ends_at": "2026-12-01", "reason": "launch"});
    // (token, method, path, body, status)
    let table: Vec<(Option<&str>, &str, &str, Option<Value>, u16)> = vec![
        (Some(VIC_TOKEN), "GET", "/admin/budgets", None, 200),
        (Some(VIC_TOKEN), "GET", "/admin/workflows", None, 200),
        (Some(VIC_TOKEN), "GET", "/admin/reports/review?month=2026-11", None, 200),
        (Some(VIC_TOKEN), "PUT", "/admin/budgets/x", Some(json!({"scope": "team:x", "limit": "1", "window": "day"})), 403),
        (Some(VIC_TOKEN), "PUT", "/admin/workflows/code-review", Some(code_review()), 403),
        (Some(VIC_TOKEN), "POST", "/admin/exemption-requests", Some(request.clone()), 403),
        (Some(RITA_TOKEN), "POST", "/admin/exemptions", Some(json!({"scope": "team:x", "amount": "1", "ends_at": "2026-12-01", "reason": "r", "approver": "me"})), 403),
        (Some(RITA_TOKEN), "POST", "/admin/exemption-requests", Some(request.clone()), 201),
        (Some(RITA_TOKEN), "POST", "/admin/exemption-requests/1/approve", None, 403),
        (Some(VIC_TOKEN), "POST", "/outcomes", Some(json!({"id": "o1", "kind": "merged_pr"})), 403),
        (Some(RITA_TOKEN), "POST", "/outcomes", Some(json!({"id": "o1", "kind": "merged_pr"})), 201),
        (Some(AVERY_TOKEN), "PUT", "/admin/workflows/code-review", Some(code_review()), 403),
        (Some(AVERY_TOKEN), "POST", "/admin/exemption-requests/1/reject", Some(json!({"note": "not now"})), 200),
        (Some(GATEWAY_TOKEN), "GET", "/admin/workflows", None, 401),
        (None, "POST", "/outcomes", Some(json!({"id": "o2", "kind": "merged_pr"})), 401),
        (None, "GET", "/metrics", None, 200),
    ];
    for (token, method, path, body, status) in table {
        let (s, b) = h.call(method, path, token, body).await;
        assert_eq!(s, status, "{method} {path} with {token:?}: {b}");
        if s == 403 {
            assert_eq!(b["error"]["code"], "forbidden");
            assert!(b["error"]["message"].as_str().unwrap().contains("needs"), "{b}");
        }
    }
}

#[tokio::test]
async fn an_exemption_request_takes_effect_only_once_approved_by_someone_else() {
    let h = Harness::start().await;
    h.budget(json!({"id": "platform", "scope": "team:platform", "limit": "1", "window": "month"})).await;
    h.usage("gw1", vec![record("r1", "platform", 1_000_000)]).await;
    let granted = |l: Value| l["budgets"][0]["granted_micros"].as_i64().unwrap();
    assert_eq!(granted(h.lease("gw1", &["team:platform"], 500_000).await), 0);

    let ask = json!({"scope": "team:platform", "amount": "0.25", "starts_at": "2026-11-25T11:00:00Z", "ends_at": "2026-11-25T12:00:00Z",
        "reason": "launch day", "use_case": "code-review"});
    let (s, r) = h.call("POST", "/admin/exemption-requests", Some(RITA_TOKEN), Some(ask)).await;
    assert_eq!((s, r["state"].as_str(), r["requested_by"].as_str(), r["amount"].as_str()), (201, Some("pending"), Some("rita"), Some("0.250000")), "{r}");
    h.clock.set_ms(at("2026-11-25T11:00:00Z"));
    assert_eq!(granted(h.lease("gw1", &["team:platform"], 500_000).await), 0, "a pending request grants nothing");
    h.clock.set_ms(at("2026-11-25T10:30:00Z"));

    let (s, b) = h.call("POST", "/admin/exemption-requests/1/approve", Some(ALICE_TOKEN), Some(json!({}))).await;
    assert_eq!(s, 200, "an admin may approve: {b}");
    let (s, b) = h.call("POST", "/admin/exemption-requests/1/approve", Some(AVERY_TOKEN), None).await;
    assert_eq!((s, b["error"]["code"].as_str()), (409, Some("conflict")), "decided once: {b}");

    let ask2 = json!({"scope": "team:platform", "amount": "5", "ends_at": "2026-11-26", "reason": "more"});
    let (_, r2) = h.call("POST", "/admin/exemption-requests", Some(AVERY_TOKEN), Some(ask2)).await;
    let (s, b) = h.call("POST", "/admin/exemption-requests/2/approve", Some(AVERY_TOKEN), None).await;
    assert_eq!((s, b["error"]["code"].as_str()), (403, Some("forbidden")), "requester ≠ approver: {b}");
    assert!(b["error"]["message"].as_str().unwrap().contains("someone else"), "{b}");
    let (s, b) = h.call("POST", "/admin/exemption-requests/2/reject", Some(ALICE_TOKEN), Some(json!({"note": "use the cap"}))).await;
    assert_eq!((s, b["request"]["state"].as_str(), b["exemption"].clone()), (200, Some("rejected"), Value::Null), "{b}");
    let (s, b) = h.call("POST", "/admin/exemption-requests/2/reject", Some(ALICE_TOKEN), Some(json!({"nope": 1}))).await;
    check_400(s, &b, "unknown field `nope`");
    assert_eq!(r2["id"], 2);

    let (_, list) = h.admin("GET", "/admin/exemptions", None).await;
    let ex = list["exemptions"].as_array().unwrap();
    assert_eq!(ex.len(), 1, "only the approved request became an exemption: {list}");
    assert_eq!((ex[0]["approver"].as_str(), ex[0]["active"].as_bool()), (Some("alice"), Some(false)));
    assert_eq!(granted(h.lease("gw1", &["team:platform"], 500_000).await), 0, "approved, not started yet");
    h.clock.set_ms(at("2026-11-25T11:00:00Z"));
    assert_eq!(granted(h.lease("gw1", &["team:platform"], 500_000).await), 250_000, "in effect at its start");
    h.clock.set_ms(at("2026-11-25T12:00:00Z"));
    assert_eq!(granted(h.lease("gw1", &["team:platform"], 500_000).await), 0, "over by itself at its end");

    let (_, pending) = h.admin("GET", "/admin/exemption-requests?state=approved", None).await;
    assert_eq!(pending["requests"][0]["exemption_id"], ex[0]["id"]);
    let (_, audit) = h.admin("GET", "/admin/audit?subject=exemption_request:1", None).await;
    let steps: Vec<(&str, &str)> = audit["entries"].as_array().unwrap().iter().map(|e| (e["actor"].as_str().unwrap(), e["action"].as_str().unwrap())).collect();
    assert_eq!(steps, [("alice", "exemption_request.approve"), ("rita", "exemption_request.create")]);
    let (_, audit) = h.admin("GET", &format!("/admin/audit?subject=exemption:{}", ex[0]["id"]), None).await;
    assert_eq!((audit["entries"][0]["action"].as_str(), audit["entries"][0]["actor"].as_str()), (Some("exemption.add"), Some("alice")));

    let (s, b) = h.call("POST", "/admin/exemption-requests", Some(RITA_TOKEN), Some(json!({"scope": "team:platform", "amount": "1", "ends_at": "2026-12-01", "reason": "x", "approver": "rita"}))).await;
    check_400(s, &b, "unknown field `approver`");
    let (s, b) = h.call("POST", "/admin/exemption-requests", Some(RITA_TOKEN), Some(json!({"scope": "team:platform", "amount": "-1", "ends_at": "2026-12-01", "reason": "x"}))).await;
    check_400(s, &b, "amount");
    assert_eq!(h.call("POST", "/admin/exemption-requests/99/approve", Some(AVERY_TOKEN), None).await.0, 404);
}

#[tokio::test]
async fn outcomes_are_validated_and_idempotent_by_id() {
    let h = Harness::start().await;
    let o = json!({"id": "jira:OPS-42", "kind": "resolved_ticket", "team": "platform", "user": "bob", "use_case": "triage", "task_id": "OPS-42", "at": "2026-11-24T16:00:00Z"});
    let (s, b) = h.call("POST", "/outcomes", Some(RITA_TOKEN), Some(o.clone())).await;
    assert_eq!((s, b["duplicate"].as_bool(), b["outcome"]["source"].as_str()), (201, Some(false), Some("api:rita")), "{b}");
    let mut changed = o.clone();
    changed["team"] = json!("data");
    let (s, b) = h.call("POST", "/outcomes", Some(ALICE_TOKEN), Some(changed)).await;
    assert_eq!((s, b["duplicate"].as_bool(), b["outcome"]["team"].as_str()), (200, Some(true), Some("platform")), "the first write wins: {b}");
    let (s, _) = h.call("POST", "/outcomes", Some(RITA_TOKEN), Some(json!({"id": "inc-9", "kind": "incident_closed"}))).await;
    assert_eq!(s, 201, "a configured kind");

    for (body, needle) in [
        (json!({"id": "x", "kind": "vibes"}), "kind"),
        (json!({"id": "", "kind": "merged_pr"}), "id"),
        (json!({"id": "x", "kind": "merged_pr", "at": "yesterday"}), "at"),
        (json!({"id": "x", "kind": "merged_pr", "team": ""}), "team"),
        (json!({"id": "x", "kind": "merged_pr", "points": 3}), "unknown field `points`"),
        (json!({"kind": "merged_pr"}), "missing field `id`"),
    ] {
        let (s, b) = h.call("POST", "/outcomes", Some(RITA_TOKEN), Some(body)).await;
        check_400(s, &b, needle);
    }
    let (_, list) = h.admin("GET", "/admin/outcomes?from=2026-11-24&to=2026-11-25", None).await;
    let ids: Vec<&str> = list["outcomes"].as_array().unwrap().iter().map(|o| o["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["jira:OPS-42"], "ranged by the outcome's own time");
    let (_, list) = h.admin("GET", "/admin/outcomes?kind=incident_closed", None).await;
    assert_eq!(list["outcomes"].as_array().unwrap().len(), 1);
}

async fn github(h: &Harness, event: &str, body: &[u8], signature: Option<String>) -> (u16, Value) {
    let mut c = h.client().await;
    let mut headers = vec![("x-github-event", event), ("x-github-delivery", "72d3162e-cc78-11e3-81ab-4c9367dc0958")];
    let sig;
    if let Some(s) = signature {
        sig = s;
        headers.push(("x-hub-signature-256", sig.as_str()));
    }
    let a = c.send_with(hyper::Method::POST, "/webhooks/github", None, &headers, Some(body.to_vec())).await.unwrap();
    (a.status, serde_json::from_slice(&a.body).unwrap_or(Value::Null))
}

#[tokio::test]
async fn the_github_webhook_records_signed_merged_pull_requests_once() {
    let h = Harness::start().await;
    let fixture = std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/github_pull_request_merged.json")).unwrap();
    let sign = |body: &[u8]| tollgate_counter::outcome::github_signature(GITHUB_SECRET.as_bytes(), body);

    let (s, b) = github(&h, "pull_request", &fixture, Some(sign(&fixture))).await;
    assert_eq!(s, 201, "{b}");
    let o = &b["outcome"];
    assert_eq!(
        (o["id"].as_str(), o["kind"].as_str(), o["team"].as_str(), o["use_case"].as_str(), o["user"].as_str(), o["task_id"].as_str()),
        (Some("github:octo-org/hello-world#42"), Some("merged_pr"), Some("platform"), Some("code-review"), Some("alice"), Some("OPS-1234")),
        "attributed by the mapping; the task id comes from the branch name: {b}"
    );
    assert_eq!(o["at_ms"], at("2026-11-25T09:30:00Z"), "at merged_at");
    let (s, b) = github(&h, "pull_request", &fixture, Some(sign(&fixture))).await;
    assert_eq!((s, b["duplicate"].as_bool()), (200, Some(true)), "a redelivery is a duplicate");

    let mut other: Value = serde_json::from_slice(&fixture).unwrap();
    other["pull_request"]["number"] = json!(43);
    other["pull_request"]["head"]["ref"] = json!("quick-fix");
    let other = serde_json::to_vec(&other).unwrap();
    for signature in [None, Some(sign(&fixture)), Some(tollgate_counter::outcome::github_signature(b"wrong secret", &other)), Some("sha256=zz".into())] {
        let (s, b) = github(&h, "pull_request", &other, signature.clone()).await;
        assert_eq!((s, b["error"]["code"].as_str()), (401, Some("unauthorized")), "{signature:?}: {b}");
    }
    let (s, b) = github(&h, "pull_request", &other, Some(sign(&other))).await;
    assert_eq!((s, b["outcome"]["task_id"].as_str()), (201, Some("OPS-1234")), "no id in the branch: found in the body: {b}");

    let mut closed: Value = serde_json::from_slice(&fixture).unwrap();
    closed["pull_request"]["number"] = json!(44);
    closed["pull_request"]["merged"] = json!(false);
    let closed = serde_json::to_vec(&closed).unwrap();
    let (s, b) = github(&h, "pull_request", &closed, Some(sign(&closed))).await;
    assert_eq!((s, b["recorded"].as_bool()), (200, Some(false)), "closed without merging is not an outcome: {b}");
    let ping = br#"{"zen": "Design for failure.", "hook_id": 1}"#;
    let (s, b) = github(&h, "ping", ping, Some(sign(ping))).await;
    assert_eq!((s, b["recorded"].as_bool()), (200, Some(false)));
    let (s, b) = github(&h, "pull_request", b"{\"action\": \"closed\"}", Some(sign(b"{\"action\": \"closed\"}"))).await;
    check_400(s, &b, "pull_request");

    let (_, list) = h.admin("GET", "/admin/outcomes", None).await;
    let ids: Vec<&str> = list["outcomes"].as_array().unwrap().iter().map(|o| o["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["github:octo-org/hello-world#42", "github:octo-org/hello-world#43"], "nothing from a bad signature");
}

#[tokio::test]
async fn outcome_reports_give_cost_per_outcome_trends_model_mix_and_team_utilization() {
    let h = Harness::start().await;
    h.admin("PUT", "/admin/workflows/code-review", Some(code_review())).await;
    h.usage(
        "gw1",
        vec![
            usage("o1", "code-review", "gpt-4o", 300_000, "2026-10-10T10:00:00Z"),
            usage("n1", "code-review", "gpt-4o", 600_000, "2026-11-10T10:00:00Z"),
            usage("n2", "code-review", "gpt-4o-mini", 200_000, "2026-11-11T10:00:00Z"),
            usage("n3", "chat", "gpt-4o-mini", 100_000, "2026-11-11T10:00:00Z"),
        ],
    )
    .await;
    for (id, day) in [("a", "2026-10-12"), ("b", "2026-10-13"), ("c", "2026-11-12")] {
        let body = json!({"id": id, "kind": "merged_pr", "team": "platform", "use_case": "code-review", "at": day});
        assert_eq!(h.call("POST", "/outcomes", Some(RITA_TOKEN), Some(body)).await.0, 201);
    }

    let (s, r) = h.admin("GET", "/admin/reports/outcomes?group_by=use_case,month&kind=merged_pr", None).await;
    assert_eq!(s, 200, "{r}");
    let rows: Vec<(String, String, i64, u64, Value)> = r["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| (x["use_case"].as_str().unwrap().into(), x["month"].as_str().unwrap().into(), x["spend_micros"].as_i64().unwrap(), x["outcomes"].as_u64().unwrap(), x["cost_per_outcome_usd"].clone()))
        .collect();
    assert_eq!(
        rows,
        [
            ("chat".into(), "2026-11".into(), 100_000, 0, Value::Null),
            ("code-review".into(), "2026-10".into(), 300_000, 2, json!("0.150000")),
            ("code-review".into(), "2026-11".into(), 800_000, 1, json!("0.800000")),
        ]
    );
    let mut c = h.client().await;
    let csv = c.get("/admin/reports/outcomes?group_by=team&format=csv", Some(VIC_TOKEN)).await.unwrap().text();
    assert_eq!(csv, "team,spend_usd,outcomes,cost_per_outcome_usd\r\nplatform,1.200000,3,0.400000\r\n");

    let (_, t) = h.admin("GET", "/admin/reports/trend?use_case=code-review", None).await;
    assert_eq!(t["rows"][1]["period"], "2026-11");
    assert_eq!((t["rows"][1]["spend_change_pct"].as_f64(), t["rows"][1]["outcomes_change_pct"].as_f64()), (Some(166.7), Some(-50.0)), "{t}");
    let (_, mix) = h.admin("GET", "/admin/reports/model-mix?from=2026-11-01&to=2026-12-01", None).await;
    let cr = mix["use_cases"].as_array().unwrap().iter().find(|u| u["use_case"] == "code-review").unwrap().clone();
    assert_eq!((cr["models"][0]["model"].as_str(), cr["models"][0]["share_pct"].as_f64()), (Some("gpt-4o"), Some(75.0)), "{mix}");
    let (_, u) = h.admin("GET", "/admin/reports/team-utilization", None).await;
    let platform = &u["teams"][0];
    assert_eq!(platform["team"], "platform");
    assert_eq!(platform["budgets"].as_array().unwrap().len(), 2, "the workflow's two caps: {u}");

    for (path, needle) in [
        ("/admin/reports/outcomes?group_by=model", "group_by"),
        ("/admin/reports/outcomes?kind=vibes", "kind"),
        ("/admin/reports/trend?period=decade", "period"),
        ("/admin/reports/model-mix?from=2026-12-01&to=2026-11-01", "to"),
        ("/admin/reports/team-utilization?fromat=csv", "fromat"),
    ] {
        let (s, b) = h.admin("GET", path, None).await;
        check_400(s, &b, needle);
    }
}

#[tokio::test]
async fn the_monthly_review_shows_each_workflow_with_a_suggested_action() {
    let h = Harness::start().await;
    h.admin("PUT", "/admin/workflows/code-review", Some(code_review())).await;
    let idle = json!({"id": "summaries", "team": "data", "owner": "dana", "class": "experiment"});
    assert_eq!(h.admin("PUT", "/admin/workflows/summaries", Some(idle)).await.0, 200);
    h.usage(
        "gw1",
        vec![
            usage("o1", "code-review", "gpt-4o", 300_000, "2026-10-10T10:00:00Z"),
            usage("n1", "code-review", "gpt-4o", 600_000, "2026-11-10T10:00:00Z"),
            usage("n2", "code-review", "gpt-4o-mini", 200_000, "2026-11-24T10:00:00Z"),
        ],
    )
    .await;
    for (id, day) in [("a", "2026-10-12"), ("b", "2026-10-13"), ("c", "2026-11-12"), ("d", "2026-11-13")] {
        let body = json!({"id": id, "kind": "merged_pr", "team": "platform", "use_case": "code-review", "at": day});
        h.call("POST", "/outcomes", Some(RITA_TOKEN), Some(body)).await;
    }
    let ask = json!({"scope": "workflow:platform/code-review", "amount": "0.50", "ends_at": "2026-11-30", "reason": "launch", "use_case": "code-review"});
    h.call("POST", "/admin/exemption-requests", Some(RITA_TOKEN), Some(ask)).await;
    assert_eq!(h.call("POST", "/admin/exemption-requests/1/approve", Some(AVERY_TOKEN), None).await.0, 200);
    h.clock.set_ms(at("2026-12-01T09:00:00Z"));

    let (s, r) = h.call("GET", "/admin/reports/review?month=2026-11", Some(VIC_TOKEN), None).await;
    assert_eq!(s, 200, "{r}");
    let w = &r["workflows"][0];
    assert_eq!((w["workflow"].as_str(), w["owner"].as_str(), w["class"].as_str()), (Some("code-review"), Some("alice"), Some("production_tool")));
    assert_eq!((w["spend_micros"].as_i64(), w["previous_spend_micros"].as_i64()), (Some(800_000), Some(300_000)));
    assert_eq!((w["outcomes"].as_u64(), w["cost_per_outcome_micros"].as_i64(), w["previous_cost_per_outcome_micros"].as_i64()), (Some(2), Some(400_000), Some(150_000)));
    assert_eq!(w["weekly"].as_array().unwrap().len(), 6, "every ISO week touching November: {w}");
    assert_eq!(w["top_models"][0]["model"], "gpt-4o");
    assert_eq!(w["exemptions"].as_array().unwrap().len(), 1);
    assert_eq!(w["anomalies"], json!([]), "no events log wired in yet");
    assert_eq!(w["overdue"], true, "review date 2026-11-30 has passed");
    assert_eq!((w["action"].as_str(), w["rule"].as_str()), (Some("cap"), Some("cap.pressure")), "{w}");
    let idle = &r["workflows"][1];
    assert_eq!((idle["workflow"].as_str(), idle["action"].as_str(), idle["rule"].as_str()), (Some("summaries"), Some("retire"), Some("retire.idle")));

    let mut c = h.client().await;
    let a = c.get("/admin/reports/review?month=2026-11&format=csv", Some(VIC_TOKEN)).await.unwrap();
    let csv = a.text();
    assert!(csv.starts_with("workflow,team,owner,class,weekly_cap_usd,monthly_cap_usd,spend_usd"), "{csv}");
    assert!(csv.lines().nth(1).unwrap().starts_with("code-review,platform,alice,production_tool,0.500000,1.000000,0.800000,0.300000,"), "{csv}");
    assert_eq!(csv.lines().count(), 3);

    for (path, needle) in [("/admin/reports/review", "month"), ("/admin/reports/review?month=2026-13", "month"), ("/admin/reports/review?month=2026-11&x=1", "x")] {
        let (s, b) = h.admin("GET", path, None).await;
        check_400(s, &b, needle);
    }
}
