//! The counter's HTTP API, end to end over loopback: leases, usage, admin, reports, auth, errors.

mod common;

use common::*;
use serde_json::{json, Value};
use tollgate_counter::clock::Clock;

fn team_budget(id: &str, team: &str, limit: &str) -> Value {
    json!({"id": id, "scope": format!("team:{team}"), "limit": limit, "window": "day"})
}

#[tokio::test]
async fn lease_then_usage_moves_money_from_slice_to_spend() {
    let h = Harness::start().await;
    h.budget(team_budget("platform", "platform", "1.00")).await;
    h.budget(json!({"id": "acme", "scope": "org:acme", "limit": "100", "window": "month", "hard_limit_pct": 150})).await;

    let l = h.lease("gw1", &["org:acme", "team:platform", "user:nobody"], 400_000).await;
    let budgets = l["budgets"].as_array().unwrap();
    assert_eq!(budgets.len(), 2, "scopes without a budget are skipped: {l}");
    let platform = budgets.iter().find(|b| b["budget_id"] == "platform").unwrap();
    assert_eq!(platform["granted_micros"], 400_000);
    assert_eq!(platform["status"], "ok");
    assert_eq!(platform["resets_at"], at("2026-11-26") / 1000);
    assert_eq!(platform["lease_expires_at_ms"], at("2026-11-25T10:00:00Z") + LEASE_TTL_MS);
    let acme = budgets.iter().find(|b| b["budget_id"] == "acme").unwrap();
    assert_eq!(acme["hard_limit_micros"], 150_000_000);

    assert_eq!(h.usage("gw1", vec![record("r1", "platform", 300_000), record("r2", "platform", 550_000)]).await, (2, 0));
    assert_eq!(h.spent("platform").await, 850_000);
    assert_eq!(h.spent("acme").await, 850_000);

    let (_, state) = h.admin("GET", "/admin/budgets/platform", None).await;
    assert_eq!(state["leased_micros"], 0, "gw1's slice shrank by what it reported, saturating at 0");
    assert_eq!(state["status"], "soft", "85% of the limit is past the 80% threshold");

    let l = h.lease("gw2", &["team:platform"], 400_000).await;
    assert_eq!(l["budgets"][0]["granted_micros"], 150_000, "only the remaining headroom is granted");
    assert_eq!(l["budgets"][0]["spent_micros"], 850_000);
}

#[tokio::test]
async fn a_batch_sent_twice_counts_once_even_after_a_restart() {
    let h = Harness::start().await;
    h.budget(team_budget("platform", "platform", "10")).await;
    let batch = vec![record("a", "platform", 100), record("b", "platform", 200), record("a", "platform", 100)];
    assert_eq!(h.usage("gw1", batch.clone()).await, (2, 1), "a repeated id inside one batch is a duplicate");
    assert_eq!(h.usage("gw1", batch.clone()).await, (0, 3));
    assert_eq!(h.spent("platform").await, 300);

    let now = h.clock.now_ms();
    let dir = h.stop().await;
    let h = Harness::start_in(dir, now).await;
    assert_eq!(h.spent("platform").await, 300, "spend counters survive a restart");
    assert_eq!(h.usage("gw1", batch).await, (0, 3), "ids are remembered across restarts");
    assert_eq!(h.usage("gw2", vec![record("c", "platform", 1)]).await, (1, 0));
    assert_eq!(h.spent("platform").await, 301);
}

#[tokio::test]
async fn bad_input_is_a_clear_400_and_nothing_is_half_applied() {
    let h = Harness::start().await;
    h.budget(team_budget("platform", "platform", "10")).await;
    let check = |status: u16, body: &Value, needle: &str| {
        assert_eq!(status, 400, "{body}");
        assert_eq!(body["error"]["code"], "invalid_request", "{body}");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(message.contains(needle), "`{message}` should mention `{needle}`");
    };

    let mut negative = record("bad", "platform", -5);
    let (s, b) = h.gateway("/v1/usage", json!({"gateway_id": "gw1", "records": [record("good", "platform", 100), negative.clone()]})).await;
    check(s, &b, "records[1].cost_micros");
    assert_eq!(h.spent("platform").await, 0, "the good record of a refused batch is not counted");
    assert_eq!(h.usage("gw1", vec![record("good", "platform", 100)]).await, (1, 0), "and its id is not burnt");

    negative["cost_micros"] = json!(5);
    negative["surprise"] = json!(true);
    let (s, b) = h.gateway("/v1/usage", json!({"gateway_id": "gw1", "records": [negative]})).await;
    check(s, &b, "unknown field `surprise`");

    let (s, b) = h.raw("POST", "/v1/usage", Some(GATEWAY_TOKEN), b"{\"gateway_id\": \"gw1\", \"records\": [").await;
    let b: Value = serde_json::from_str(&b).unwrap();
    check(s, &b, "request body");

    let (s, b) = h.gateway("/v1/leases", json!({"gateway_id": "gw1", "scopes": ["galaxy:far"], "want_micros": 1})).await;
    check(s, &b, "galaxy:far");
    let (s, b) = h.gateway("/v1/leases", json!({"gateway_id": "gw1", "scopes": ["team:platform"], "want_micros": -1})).await;
    check(s, &b, "want_micros");

    let (s, b) = h.admin("PUT", "/admin/budgets/x", Some(json!({"scope": "team:x", "limit": "-3", "window": "day"}))).await;
    check(s, &b, "limit");
    let (s, b) = h.admin("PUT", "/admin/budgets/x", Some(json!({"scope": "team:x", "limit": "3", "window": "fortnightly"}))).await;
    check(s, &b, "window");
    let (s, b) = h.admin("PUT", "/admin/budgets/x", Some(json!({"id": "y", "scope": "team:x", "limit": "3", "window": "day"}))).await;
    check(s, &b, "path says `x`");
    let (s, b) = h.admin("GET", "/admin/reports/spend?group_by=planet", None).await;
    check(s, &b, "planet");
    let (s, b) = h.admin("GET", "/admin/reports/spend?grup_by=team", None).await;
    check(s, &b, "grup_by");

    assert_eq!(h.spent("platform").await, 100);
    let (s, b) = h.admin("GET", "/admin/budgets/x", None).await;
    assert_eq!((s, b["error"]["code"].as_str()), (404, Some("not_found")));
    let (s, b) = h.call("GET", "/nowhere", None, None).await;
    assert_eq!((s, b["error"]["code"].as_str()), (404, Some("not_found")));
    let (s, b) = h.call("GET", "/v1/usage", Some(GATEWAY_TOKEN), None).await;
    assert_eq!((s, b["error"]["code"].as_str()), (405, Some("method_not_allowed")));
}

#[tokio::test]
async fn tokens_are_checked_and_kept_apart() {
    let h = Harness::start().await;
    let lease = json!({"gateway_id": "gw1", "scopes": [], "want_micros": 1});
    for token in [None, Some("wrong"), Some(ALICE_TOKEN)] {
        let (s, b) = h.call("POST", "/v1/leases", token, Some(lease.clone())).await;
        assert_eq!((s, b["error"]["code"].as_str()), (401, Some("unauthorized")), "gateway endpoint with {token:?}");
    }
    for token in [None, Some("wrong"), Some(GATEWAY_TOKEN)] {
        let (s, b) = h.call("GET", "/admin/budgets", token, None).await;
        assert_eq!((s, b["error"]["code"].as_str()), (401, Some("unauthorized")), "admin endpoint with {token:?}");
    }
    assert_eq!(h.call("POST", "/v1/leases", Some(GATEWAY_TOKEN), Some(lease)).await.0, 200);
    assert_eq!(h.call("GET", "/admin/budgets", Some(BOB_TOKEN), None).await.0, 200);
    let (s, b) = h.call("GET", "/healthz", None, None).await;
    assert_eq!((s, b), (200, json!({"status": "ok"})));
}

#[tokio::test]
async fn spend_resets_when_the_window_rolls_over() {
    let h = Harness::start().await;
    h.budget(team_budget("daily", "platform", "0.001")).await;
    h.budget(json!({"id": "weekly", "scope": "team:platform", "limit": "1", "window": "week"})).await;
    h.budget(json!({"id": "rolling", "scope": "team:platform", "limit": "1", "window": "rolling:2"})).await;
    h.budget(json!({"id": "paris", "scope": "team:platform", "limit": "1", "window": "day", "utc_offset": "+01:00"})).await;
    h.usage("gw1", vec![record("r1", "platform", 1000)]).await;

    let l = h.lease("gw1", &["team:platform"], 10).await;
    let daily = &l["budgets"].as_array().unwrap().iter().find(|b| b["budget_id"] == "daily").unwrap().clone();
    assert_eq!((daily["status"].as_str(), daily["granted_micros"].as_i64()), (Some("hard"), Some(0)));

    h.clock.set_ms(at("2026-11-25T23:30:00Z")); // 00:30 on the 26th in +01:00
    assert_eq!(h.spent("paris").await, 0, "the +01:00 day already turned over");
    assert_eq!(h.spent("daily").await, 1000, "the UTC day has not");

    h.clock.set_ms(at("2026-11-26T00:00:00Z"));
    assert_eq!(h.spent("daily").await, 0);
    assert_eq!(h.lease("gw1", &["team:platform"], 10).await["budgets"][0]["granted_micros"], 10);
    assert_eq!(h.spent("rolling").await, 1000, "yesterday is still within rolling:2");
    assert_eq!(h.spent("weekly").await, 1000);
    h.usage("gw1", vec![record("r2", "platform", 7)]).await;

    h.clock.set_ms(at("2026-11-27T00:00:00Z"));
    assert_eq!(h.spent("rolling").await, 7, "the 25th dropped out of the last two days");
    h.clock.set_ms(at("2026-11-30T00:00:00Z")); // Monday
    assert_eq!(h.spent("weekly").await, 0);
}

#[tokio::test]
async fn exemptions_raise_the_limit_until_they_expire_and_are_audited() {
    let h = Harness::start().await;
    h.budget(team_budget("platform", "platform", "1")).await;
    h.usage("gw1", vec![record("r1", "platform", 1_000_000)]).await;
    assert_eq!(h.lease("gw1", &["team:platform"], 500_000).await["budgets"][0]["granted_micros"], 0);

    let (s, e) = h
        .admin(
            "POST",
            "/admin/exemptions",
            Some(json!({"scope": "team:platform", "amount": "0.25", "ends_at": "2026-11-25T12:00:00Z", "reason": "launch day", "approver": "cfo"})),
        )
        .await;
    assert_eq!(s, 201, "{e}");
    assert_eq!(e["active"], true);
    let l = h.lease("gw1", &["team:platform"], 500_000).await;
    assert_eq!(l["budgets"][0]["granted_micros"], 250_000);
    assert_eq!(l["budgets"][0]["limit_micros"], 1_250_000);

    h.clock.set_ms(at("2026-11-25T12:00:00Z"));
    let l = h.lease("gw1", &["team:platform"], 500_000).await;
    assert_eq!((l["budgets"][0]["granted_micros"].as_i64(), l["budgets"][0]["limit_micros"].as_i64()), (Some(0), Some(1_000_000)));
    let (_, list) = h.admin("GET", "/admin/exemptions", None).await;
    assert_eq!(list["exemptions"][0]["active"], false, "expired by itself");

    let (_, audit) = h.admin("GET", "/admin/audit?subject=exemption:1", None).await;
    let entry = &audit["entries"][0];
    assert_eq!((entry["actor"].as_str(), entry["action"].as_str()), (Some("alice"), Some("exemption.add")));
    assert_eq!(entry["after"]["reason"], "launch day");
    assert_eq!(entry["after"]["approver"], "cfo");
}

#[tokio::test]
async fn every_budget_change_is_audited_with_who_when_before_and_after() {
    let h = Harness::start().await;
    h.budget(team_budget("platform", "platform", "800.00")).await;
    h.clock.advance_ms(60_000);
    let (s, b) = h
        .call("PUT", "/admin/budgets/platform", Some(BOB_TOKEN), Some(json!({"scope": "team:platform", "limit": "900", "window": "month"})))
        .await;
    assert_eq!((s, b["outcome"].as_str()), (200, Some("updated")));
    let (_, b) = h.call("PUT", "/admin/budgets/platform", Some(BOB_TOKEN), Some(json!({"scope": "team:platform", "limit": "900.000", "window": "month"}))).await;
    assert_eq!(b["outcome"], "unchanged", "an identical spec is not a change");
    h.clock.advance_ms(60_000);
    assert_eq!(h.admin("DELETE", "/admin/budgets/platform", None).await.0, 200);
    assert_eq!(h.admin("DELETE", "/admin/budgets/platform", None).await.0, 404);

    let (_, audit) = h.admin("GET", "/admin/audit?subject=platform", None).await;
    let entries = audit["entries"].as_array().unwrap();
    let summary: Vec<(&str, &str, i64)> =
        entries.iter().map(|e| (e["actor"].as_str().unwrap(), e["action"].as_str().unwrap(), e["at_ms"].as_i64().unwrap())).collect();
    let t0 = at("2026-11-25T10:00:00Z");
    assert_eq!(
        summary,
        [("alice", "budget.delete", t0 + 120_000), ("bob", "budget.update", t0 + 60_000), ("alice", "budget.create", t0)]
    );
    assert_eq!(entries[1]["before"]["limit"], "800.000000");
    assert_eq!(entries[1]["before"]["window"], "day");
    assert_eq!(entries[1]["after"]["limit"], "900.000000");
    assert_eq!(entries[0]["after"], Value::Null);
    assert_eq!(entries[2]["before"], Value::Null);
    let (_, since) = h.admin("GET", &format!("/admin/audit?since={}", t0 + 1), None).await;
    assert_eq!(since["entries"].as_array().unwrap().len(), 2);
}

#[tokio::test]
async fn observe_budgets_never_refuse_but_report_status() {
    let h = Harness::start().await;
    h.budget(json!({"id": "watch", "scope": "team:platform", "limit": "0.000010", "window": "none", "mode": "observe"})).await;
    h.usage("gw1", vec![record("r1", "platform", 50)]).await;
    let l = h.lease("gw1", &["team:platform"], 1_000_000).await;
    let b = &l["budgets"][0];
    assert_eq!((b["granted_micros"].as_i64(), b["status"].as_str(), b["mode"].as_str()), (Some(1_000_000), Some("hard"), Some("observe")));
    assert_eq!(b["resets_at"], Value::Null);
}

#[tokio::test]
async fn topping_up_a_balance_raises_its_limit() {
    let h = Harness::start().await;
    h.budget(json!({"id": "balance", "scope": "key:k1", "limit": "5", "window": "none"})).await;
    let (s, b) = h.admin("POST", "/admin/budgets/balance/topup", Some(json!({"amount": "2.50"}))).await;
    assert_eq!((s, b["budget"]["budget"]["limit"].as_str()), (200, Some("7.500000")));
    let (_, audit) = h.admin("GET", "/admin/audit?subject=balance&limit=1", None).await;
    assert_eq!(audit["entries"][0]["before"]["limit"], "5.000000");
}

#[tokio::test]
async fn spend_reports_group_by_any_dimension_as_json_and_csv() {
    let h = Harness::start().await;
    let r = |id: &str, team: &str, user: &str, model: &str, cost: i64, finished: &str| {
        let mut v = record(id, team, cost);
        v["principal"]["user"] = json!(user);
        v["routed_model"] = json!(model);
        v["started_at_ms"] = json!(at(finished) - 1000);
        v["finished_at_ms"] = json!(at(finished));
        v
    };
    let records = vec![
        r("1", "platform", "alice", "gpt-4o", 100, "2026-11-24T10:00:00Z"),
        r("2", "platform", "bob", "gpt-4o", 200, "2026-11-25T09:00:00Z"),
        r("3", "platform", "bob", "claude", 400, "2026-11-25T09:30:00Z"),
        r("4", "data, science", "carol", "gpt-4o", 800, "2026-11-25T09:45:00Z"),
    ];
    h.usage("gw1", records).await;

    let (s, rep) = h.admin("GET", "/admin/reports/spend?group_by=team,model", None).await;
    assert_eq!(s, 200, "{rep}");
    let rows: Vec<(String, String, i64, u64)> = rep["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["team"].as_str().unwrap().into(), r["model"].as_str().unwrap().into(), r["cost_micros"].as_i64().unwrap(), r["requests"].as_u64().unwrap()))
        .collect();
    assert_eq!(
        rows,
        [
            ("data, science".into(), "gpt-4o".into(), 800, 1),
            ("platform".into(), "claude".into(), 400, 1),
            ("platform".into(), "gpt-4o".into(), 300, 2)
        ]
    );
    assert_eq!(rep["total"]["cost_usd"], "0.001500");

    let (_, rep) = h.admin("GET", "/admin/reports/spend?group_by=day&from=2026-11-25&to=2026-11-26", None).await;
    assert_eq!(rep["rows"], json!([{"day": "2026-11-25", "requests": 3, "cost_usd": "0.001400", "cost_micros": 1400,
        "input_tokens": 300, "output_tokens": 60, "cache_read_tokens": 0, "cache_write_tokens": 0, "estimated_requests": 0}]));

    let mut c = h.client().await;
    let a = c.get("/admin/reports/spend?group_by=team,user&format=csv", Some(ALICE_TOKEN)).await.unwrap();
    assert_eq!(a.status, 200);
    assert_eq!(
        a.text(),
        "team,user,requests,cost_usd,cost_micros,input_tokens,output_tokens,cache_read_tokens,cache_write_tokens,estimated_requests\r\n\
         \"data, science\",carol,1,0.000800,800,100,20,0,0,0\r\n\
         platform,alice,1,0.000100,100,100,20,0,0,0\r\n\
         platform,bob,2,0.000600,600,200,40,0,0,0\r\n"
    );
}

#[tokio::test]
async fn utilization_and_metrics_cover_every_budget() {
    let h = Harness::start().await;
    h.budget(team_budget("platform", "platform", "0.001")).await;
    h.budget(team_budget("idle", "idle", "5")).await;
    h.usage("gw1", vec![record("r1", "platform", 900)]).await;
    h.lease("gw1", &["team:platform"], 50).await;

    let (_, u) = h.admin("GET", "/admin/reports/utilization", None).await;
    let rows = u["budgets"].as_array().unwrap();
    assert_eq!(rows.len(), 2);
    let p = rows.iter().find(|r| r["budget"] == "platform").unwrap();
    assert_eq!((p["spent_micros"].as_i64(), p["status"].as_str(), p["leased_micros"].as_i64()), (Some(900), Some("soft"), Some(50)));
    assert!((p["utilization"].as_f64().unwrap() - 0.9).abs() < 1e-9);

    let mut c = h.client().await;
    let csv = c.get("/admin/reports/utilization?format=csv", Some(ALICE_TOKEN)).await.unwrap().text();
    assert!(csv.starts_with("budget,scope,window,mode,spent_usd,limit_usd"), "{csv}");
    assert!(csv.contains("platform,team:platform,day,enforce,0.000900,0.001000,0.001000,90.0,soft,0.000050"), "{csv}");

    let metrics = c.get("/metrics", None).await.unwrap().text();
    for line in [
        "tollgate_counter_budget_spent_micros{budget=\"platform\",scope=\"team:platform\",mode=\"enforce\"} 900",
        "tollgate_counter_budget_limit_micros{budget=\"idle\",scope=\"team:idle\",mode=\"enforce\"} 5000000",
        "tollgate_counter_budget_utilization_ratio{budget=\"platform\",scope=\"team:platform\",mode=\"enforce\"} 0.900000",
        "tollgate_counter_usage_records_total{result=\"accepted\"} 1",
        "tollgate_counter_lease_requests_total 1",
        "tollgate_counter_lease_grants_total{status=\"soft\"} 1",
    ] {
        assert!(metrics.lines().any(|l| l == line), "missing `{line}` in\n{metrics}");
    }
}

#[tokio::test]
async fn usage_a_gateway_stopped_waiting_for_is_stored_and_counted_once() {
    let h = Harness::start().await;
    h.budget(team_budget("platform", "platform", "1.00")).await;
    let records = || vec![record("gave-up-1", "platform", 300), record("gave-up-2", "platform", 400)];
    let accepted = "tollgate_counter_usage_records_total{result=\"accepted\"}";
    let duplicate = "tollgate_counter_usage_records_total{result=\"duplicate\"}";

    // The store is slow; the gateway's call times out and it hangs up mid-ingest.
    let hold = h.hold_writes();
    let post = h.gateway("/v1/usage", json!({"gateway_id": "gw1", "records": records()}));
    assert!(tokio::time::timeout(std::time::Duration::from_millis(300), post).await.is_err(), "the post should wait for the held store");
    drop(hold);

    // The ingest runs to the end anyway: the records are charged and counted as accepted...
    for _ in 0..250 {
        if h.counter_total(accepted).await >= 2 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(h.spent("platform").await, 700);
    assert_eq!(h.counter_total(accepted).await, 2);

    // ...and the gateway's re-send is answered as duplicates, charged nothing more.
    assert_eq!(h.usage("gw1", records()).await, (0, 2));
    assert_eq!(h.spent("platform").await, 700);
    assert_eq!((h.counter_total(accepted).await, h.counter_total(duplicate).await), (2, 2));
}

#[tokio::test]
async fn a_lease_call_sent_before_a_grant_landed_never_lowers_that_grant() {
    let h = Harness::start().await;
    h.budget(team_budget("platform", "platform", "1")).await;
    let call = |want: i64, known: Value| json!({"gateway_id": "gw1", "scopes": ["team:platform"], "want_micros": want, "known_leases": known});
    let (s, first) = h.gateway("/v1/leases", call(800_000, json!({}))).await;
    assert_eq!((s, first["budgets"][0]["granted_micros"].as_i64()), (200, Some(800_000)), "{first}");
    h.clock.advance_ms(1);
    // gw1 sent this before the 800_000 reached it: it may have committed all of that since.
    let (s, kept) = h.gateway("/v1/leases", call(500_000, json!({}))).await;
    assert_eq!((s, kept["budgets"][0]["granted_micros"].as_i64()), (200, Some(800_000)), "kept: {kept}");
    assert_eq!(h.lease("gw2", &["team:platform"], 1_000_000).await["budgets"][0]["granted_micros"], 200_000, "only the rest");
    h.clock.advance_ms(1);
    // Sent knowing the grant it renews: gw1 counted what it committed, so it may hold less.
    let known = json!({"platform": kept["budgets"][0]["lease_expires_at_ms"]});
    let (s, smaller) = h.gateway("/v1/leases", call(500_000, known)).await;
    assert_eq!((s, smaller["budgets"][0]["granted_micros"].as_i64()), (200, Some(500_000)), "{smaller}");
}

#[tokio::test]
async fn granted_slices_survive_a_restart_until_they_expire() {
    let h = Harness::start().await;
    h.budget(team_budget("platform", "platform", "1")).await;
    let t0 = h.clock.now_ms();
    assert_eq!(h.lease("gw1", &["team:platform"], 400_000).await["budgets"][0]["granted_micros"], 400_000);
    h.clock.advance_ms(1_000);
    assert_eq!(h.lease("gw1", &["team:platform"], 300_000).await["budgets"][0]["granted_micros"], 300_000, "a smaller renewal");
    assert_eq!(h.lease("gw1", &["team:platform"], 1_000_000).await["budgets"][0]["granted_micros"], 1_000_000, "a bigger one");
    let h = Harness::start_in(h.stop().await, t0 + 2_000).await;
    assert_eq!(h.lease("gw2", &["team:platform"], 1_000_000).await["budgets"][0]["granted_micros"], 0, "gw1 still holds it all");
    h.clock.set_ms(t0 + 1_000 + LEASE_TTL_MS - 1);
    assert_eq!(h.lease("gw2", &["team:platform"], 1_000_000).await["budgets"][0]["granted_micros"], 0, "until its TTL");
    // The SQLite store restores a durable upper bound that lives at most two TTLs from its write.
    h.clock.set_ms(t0 + 1_000 + 2 * LEASE_TTL_MS);
    assert_eq!(h.lease("gw2", &["team:platform"], 1_000_000).await["budgets"][0]["granted_micros"], 1_000_000, "gw1's slice lapsed");
}

/// `GET /admin/reports/requests`: the policy simulator's input, one ledger record per row.
#[tokio::test]
async fn the_requests_report_lists_a_periods_ledger_records_oldest_first() {
    let h = Harness::start().await;
    let mut rows = Vec::new();
    for (i, finished) in [("c", "2026-11-03T10:00:00Z"), ("a", "2026-11-01T00:00:00Z"), ("b", "2026-11-02T12:00:00Z"), ("d", "2026-12-01T00:00:00Z")] {
        let mut r = record(i, "platform", 1000);
        r["finished_at_ms"] = json!(at(finished));
        r["started_at_ms"] = json!(at(finished) - 500);
        r["estimated"] = json!(false);
        r["tokens"] = json!({"input": 10, "output": 5, "cache_read": 3, "cache_write": 2, "reasoning": 1});
        rows.push(r);
    }
    assert_eq!(h.usage("gw1", rows.clone()).await, (4, 0));

    let (s, v) = h.admin("GET", "/admin/reports/requests?from=2026-11-01&to=2026-12-01", None).await;
    assert_eq!(s, 200, "{v}");
    let ids: Vec<&str> = v["records"].as_array().unwrap().iter().map(|r| r["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["a", "b", "c"], "from inclusive, to exclusive, oldest first");
    assert_eq!((v["count"].as_u64(), v["truncated"].as_bool()), (Some(3), Some(false)));
    let first = &v["records"][0];
    assert_eq!(first, &rows[1], "a record comes back as it was posted: principal, models, tokens by kind, cost, times");

    let (_, v) = h.admin("GET", "/admin/reports/requests?from=2026-11-01&to=2026-12-01&limit=2", None).await;
    assert_eq!((v["count"].as_u64(), v["truncated"].as_bool(), v["records"][1]["id"].as_str()), (Some(2), Some(true), Some("b")));

    let (s, csv) = h.raw("GET", "/admin/reports/requests?to=2026-11-02&format=csv", Some(ALICE_TOKEN), b"").await;
    assert_eq!(s, 200);
    let lines: Vec<&str> = csv.lines().collect();
    assert!(lines[0].starts_with("id,finished_at_ms,org,cost_center,team,user,key_id,use_case"), "{csv}");
    assert_eq!(lines.len(), 2, "{csv}");
    assert!(lines[1].starts_with(&format!("a,{},acme,,platform,bob,,chat,", at("2026-11-01"))), "{csv}");

    for (query, needle) in [("limit=0", "limit:"), ("limit=2000001", "limit:"), ("from=tomorrow", "from:"), ("group_by=team", "unknown query parameter"), ("format=xml", "format:")] {
        let (s, b) = h.admin("GET", &format!("/admin/reports/requests?{query}"), None).await;
        assert_eq!(s, 400, "{query}: {b}");
        assert!(b["error"]["message"].as_str().unwrap().contains(needle), "{query}: {b}");
    }
    let (s, _) = h.call("GET", "/admin/reports/requests", Some("wrong"), None).await;
    assert_eq!(s, 401);
}

// The cost handoff (issue 12 §3): one task's books from the ledger, and human checkpoints.

/// A usage record of task `task` on `model`.
fn task_record(id: &str, task: &str, model: &str, cost: i64, status: u16, estimated: bool, started_ms: i64) -> Value {
    let mut r = record(id, "agents", cost);
    r["principal"]["task"] = json!(task);
    r["routed_model"] = json!(model);
    r["tokens"] = json!({"input": 1000, "output": 200, "cache_read": 300, "cache_write": 40, "reasoning": 50});
    r["status"] = json!(status);
    r["estimated"] = json!(estimated);
    r["started_at_ms"] = json!(started_ms);
    r["finished_at_ms"] = json!(started_ms + 1500);
    r
}

#[tokio::test]
async fn a_task_summary_adds_up_exactly_what_the_ledger_holds_for_the_task() {
    let h = Harness::start().await;
    let t0 = 1_764_064_800_000i64;
    let records = vec![
        task_record("t1", "fix-ci-42", "gpt-4o", 12_345, 200, false, t0),
        task_record("t2", "fix-ci-42", "claude-sonnet-4", 20_000, 200, false, t0 + 10_000),
        task_record("t3", "fix-ci-42", "gpt-4o", 7_000, 500, false, t0 + 20_000),
        task_record("t4", "fix-ci-42", "gpt-4o", 1_111, 200, true, t0 + 30_000),
        task_record("other", "another-task", "gpt-4o", 99_999, 200, false, t0),
        record("no-task", "agents", 5),
    ];
    assert_eq!(h.usage("gw1", records.clone()).await, (6, 0));
    assert_eq!(h.usage("gw2", records[..2].to_vec()).await, (0, 2), "a record sent again counts once in the summary too");

    let (status, s) = h.admin("GET", "/admin/tasks/fix-ci-42", None).await;
    assert_eq!(status, 200, "{s}");
    assert_eq!(s["task"], "fix-ci-42");
    assert_eq!(s["requests"], 4);
    assert_eq!(s["cost_micros"], 12_345 + 20_000 + 7_000 + 1_111);
    assert_eq!(s["tokens"], json!({"input": 4000, "output": 800, "cache_read": 1200, "cache_write": 160, "reasoning": 200}));
    assert_eq!(
        s["models"],
        json!([{"model": "claude-sonnet-4", "requests": 1, "cost_micros": 20_000}, {"model": "gpt-4o", "requests": 3, "cost_micros": 20_456}])
    );
    assert_eq!((s["first_seen_ms"].as_i64(), s["last_seen_ms"].as_i64()), (Some(t0), Some(t0 + 31_500)));
    assert_eq!((s["estimated_requests"].as_u64(), s["failed_requests"].as_u64()), (Some(1), Some(1)));
    assert_eq!(s["checkpoints"], json!([]));

    let (status, md) = h.raw("GET", "/admin/tasks/fix-ci-42?format=markdown", Some(ALICE_TOKEN), b"").await;
    assert_eq!(status, 200);
    for needle in ["## Task `fix-ci-42`", "| cost | $0.040456 |", "| requests | 4 |", "| gpt-4o | 3 | $0.020456 |"] {
        assert!(md.contains(needle), "{needle} in\n{md}");
    }

    let (status, body) = h.admin("GET", "/admin/tasks/never-seen", None).await;
    assert_eq!((status, body["error"]["code"].as_str()), (404, Some("not_found")), "{body}");
    let (status, body) = h.admin("GET", "/admin/tasks/fix-ci-42?format=xml", None).await;
    assert!(status == 400 && body["error"]["message"].as_str().unwrap().starts_with("format:"), "{body}");
    let (status, _) = h.call("GET", "/admin/tasks/fix-ci-42", Some(GATEWAY_TOKEN), None).await;
    assert_eq!(status, 401, "a gateway token does not read tasks");
}

#[tokio::test]
async fn a_checkpoint_is_recorded_audited_and_listed_on_its_task() {
    let h = Harness::start().await;
    let (status, c) = h.admin("POST", "/admin/checkpoints", Some(json!({"task": "fix-ci-42", "note": "read the diff; go on"}))).await;
    assert_eq!(status, 201, "{c}");
    assert_eq!((c["id"].as_str(), c["task"].as_str(), c["actor"].as_str()), (Some("cp-1"), Some("fix-ci-42"), Some("alice")));
    assert_eq!(c["at_ms"], h.clock.now_ms());
    let (status, c2) = h.call("POST", "/admin/checkpoints", Some(BOB_TOKEN), Some(json!({"task": "fix-ci-42"}))).await;
    assert_eq!((status, c2["id"].as_str(), c2["actor"].as_str()), (201, Some("cp-2"), Some("bob")));

    let (status, s) = h.admin("GET", "/admin/tasks/fix-ci-42", None).await;
    assert_eq!(status, 200, "a task with checkpoints and no requests yet is known: {s}");
    assert_eq!(s["requests"], 0);
    let ids: Vec<&str> = s["checkpoints"].as_array().unwrap().iter().map(|c| c["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["cp-1", "cp-2"], "oldest first");
    assert_eq!(s["checkpoints"][0]["note"], "read the diff; go on");

    let (_, audit) = h.admin("GET", "/admin/audit?subject=task:fix-ci-42", None).await;
    let entries = audit["entries"].as_array().unwrap();
    assert_eq!(entries.len(), 2, "{audit}");
    assert_eq!((entries[1]["action"].as_str(), entries[1]["actor"].as_str()), (Some("checkpoint.add"), Some("alice")));

    for (body, needle) in [
        (json!({"task": ""}), "task:"),
        (json!({"note": "x"}), "missing field `task`"),
        (json!({"task": "t", "approved": true}), "unknown field `approved`"),
        (json!({"task": "t", "note": "n".repeat(2001)}), "note:"),
    ] {
        let (status, b) = h.admin("POST", "/admin/checkpoints", Some(body.clone())).await;
        assert_eq!(status, 400, "{body} -> {b}");
        assert!(b["error"]["message"].as_str().unwrap().contains(needle), "{body} -> {b}");
    }
    let (status, _) = h.call("POST", "/admin/checkpoints", Some(GATEWAY_TOKEN), Some(json!({"task": "t"}))).await;
    assert_eq!(status, 401);
}

#[tokio::test]
async fn a_task_summary_is_readable_by_the_tasks_own_key_through_a_gateway() {
    let h = Harness::start().await;
    let t0 = 1_764_064_800_000i64;
    let keyed = |id: &str, task: &str, key: &str| {
        let mut r = task_record(id, task, "gpt-4o", 1_000, 200, false, t0);
        r["principal"]["key_id"] = json!(key);
        r
    };
    let records = vec![keyed("a1", "agent-run", "key-agent"), keyed("a2", "agent-run", "key-agent"), keyed("s1", "shared-run", "key-agent"), keyed("s2", "shared-run", "key-other")];
    assert_eq!(h.usage("gw1", records).await, (4, 0));
    let own = |task: &'static str, token: Option<&'static str>, key: Option<&'static str>| {
        let url = h.url.clone();
        async move {
            let mut c = tollgate_counter::client::Client::connect(&url).await.unwrap();
            let headers: Vec<(&str, &str)> = key.map(|k| vec![("x-tollgate-key-id", k)]).unwrap_or_default();
            let a = c.send_with(hyper::Method::GET, &format!("/tasks/{task}/summary"), token, &headers, None).await.unwrap();
            (a.status, serde_json::from_slice::<Value>(&a.body).unwrap_or(Value::Null))
        }
    };
    let (status, s) = own("agent-run", Some(GATEWAY_TOKEN), Some("key-agent")).await;
    assert_eq!((status, s["requests"].as_u64(), s["cost_micros"].as_i64()), (200, Some(2), Some(2_000)), "{s}");
    assert_eq!(s["key_ids"], json!(["key-agent"]));
    assert_eq!(own("agent-run", Some(GATEWAY_TOKEN), Some("key-other")).await.0, 404, "another key's task is not found");
    assert_eq!(own("shared-run", Some(GATEWAY_TOKEN), Some("key-agent")).await.0, 404, "a task of several keys: admins only");
    assert_eq!(own("never-run", Some(GATEWAY_TOKEN), Some("key-agent")).await.0, 404);
    let (status, b) = own("agent-run", Some(GATEWAY_TOKEN), None).await;
    assert!(status == 400 && b["error"]["message"].as_str().unwrap().starts_with("x-tollgate-key-id:"), "{b}");
    assert_eq!(own("agent-run", Some(ALICE_TOKEN), Some("key-agent")).await.0, 401, "the gateway vouches for the key, not an admin");
    assert_eq!(own("agent-run", None, Some("key-agent")).await.0, 401);
}

#[tokio::test]
async fn a_personal_token_reads_its_own_principals_page_and_nothing_else() {
    let h = Harness::start().await;
    let r = |id: &str, user: &str, key: Option<&str>, model: &str, cost: i64, finished: &str| {
        let mut v = record(id, "platform", cost);
        v["principal"]["user"] = json!(user);
        if let Some(key) = key {
            v["principal"]["key_id"] = json!(key);
        }
        v["routed_model"] = json!(model);
        v["started_at_ms"] = json!(at(finished) - 1000);
        v["finished_at_ms"] = json!(at(finished));
        v
    };
    h.usage(
        "gw1",
        vec![
            r("1", "carol", None, "gpt-4o", 100, "2026-11-24T10:00:00Z"),
            r("2", "carol", Some("k-7"), "claude", 200, "2026-11-25T09:00:00Z"),
            r("3", "carol", None, "gpt-4o", 400, "2026-11-25T09:30:00Z"),
            r("4", "dave", Some("k-8"), "gpt-4o", 800, "2026-11-25T09:45:00Z"),
        ],
    )
    .await;
    h.budget(json!({"id": "carol-day", "scope": "user:carol", "limit": "1.00", "window": "day"})).await;
    h.budget(json!({"id": "dave-day", "scope": "user:dave", "limit": "1.00", "window": "day"})).await;

    let (s, page) = h.call("GET", "/reports/principal?from=2026-11-24&to=2026-11-26", Some(CAROL_OWN_TOKEN), None).await;
    assert_eq!(s, 200, "{page}");
    assert_eq!(page["scope"], "user:carol");
    let days: Vec<(&str, u64, i64)> = page["by_day"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["day"].as_str().unwrap(), r["requests"].as_u64().unwrap(), r["cost_micros"].as_i64().unwrap()))
        .collect();
    assert_eq!(days, [("2026-11-24", 1, 100), ("2026-11-25", 2, 600)]);
    let models: Vec<(&str, i64)> =
        page["by_model"].as_array().unwrap().iter().map(|r| (r["model"].as_str().unwrap(), r["cost_micros"].as_i64().unwrap())).collect();
    assert_eq!(models, [("claude", 200), ("gpt-4o", 500)]);
    assert_eq!(page["total"], json!({"requests": 3, "cost_micros": 700, "cost_usd": "0.000700"}));
    let budgets: Vec<&str> = page["budgets"].as_array().unwrap().iter().map(|b| b["budget"]["id"].as_str().unwrap()).collect();
    assert_eq!(budgets, ["carol-day"], "only the budgets on the principal's own scope");

    // The same figures as the spend report a viewer reads.
    let (_, spend) = h.call("GET", "/admin/reports/spend?group_by=user,day&from=2026-11-24&to=2026-11-26", Some(VIC_TOKEN), None).await;
    let carol: i64 = spend["rows"].as_array().unwrap().iter().filter(|r| r["user"] == "carol").map(|r| r["cost_micros"].as_i64().unwrap()).sum();
    assert_eq!(carol, 700);

    // A key's own token sees the key's rows only.
    let (s, page) = h.call("GET", "/reports/principal", Some(K7_OWN_TOKEN), None).await;
    assert_eq!((s, &page["total"]["cost_micros"]), (200, &json!(200)), "{page}");

    // Nobody else's page, no admin endpoint, no gateway endpoint.
    let (s, b) = h.call("GET", "/reports/principal?scope=user:dave", Some(CAROL_OWN_TOKEN), None).await;
    assert_eq!(s, 403, "{b}");
    assert!(b["error"]["message"].as_str().unwrap().contains("`user:carol` only, not `user:dave`"), "{b}");
    for path in ["/admin/budgets", "/admin/reports/spend", "/admin/reports/requests", "/admin/audit"] {
        assert_eq!(h.call("GET", path, Some(CAROL_OWN_TOKEN), None).await.0, 401, "{path}");
    }
    let lease = json!({"gateway_id": "gw1", "scopes": [], "want_micros": 1});
    assert_eq!(h.call("POST", "/v1/leases", Some(CAROL_OWN_TOKEN), Some(lease)).await.0, 401);
    assert_eq!(h.call("GET", "/reports/principal", Some(GATEWAY_TOKEN), None).await.0, 401);
    assert_eq!(h.call("GET", "/reports/principal", None, None).await.0, 401);

    // A viewer reads any principal's page by naming it; the scope must be a principal.
    let (s, page) = h.call("GET", "/reports/principal?scope=user:dave", Some(VIC_TOKEN), None).await;
    assert_eq!((s, &page["total"]["cost_micros"]), (200, &json!(800)), "{page}");
    for (query, field) in
        [("", "scope"), ("?scope=team:platform", "scope"), ("?scope=user:dave&form=csv", "form"), ("?scope=user:dave&to=2026-11-01&from=2026-11-02", "to")]
    {
        let (s, b) = h.call("GET", &format!("/reports/principal{query}"), Some(VIC_TOKEN), None).await;
        assert_eq!(s, 400, "{query}: {b}");
        assert!(b["error"]["message"].as_str().unwrap().contains(field), "{query}: {b}");
    }

    // CSV: by day and model, the principal's rows only.
    let mut c = h.client().await;
    let a = c.get("/reports/principal?format=csv", Some(CAROL_OWN_TOKEN)).await.unwrap();
    assert_eq!(a.status, 200);
    assert_eq!(
        a.text(),
        "day,model,requests,cost_usd,cost_micros,input_tokens,output_tokens,cache_read_tokens,cache_write_tokens,estimated_requests\r\n\
         2026-11-24,gpt-4o,1,0.000100,100,100,20,0,0,0\r\n\
         2026-11-25,claude,1,0.000200,200,100,20,0,0,0\r\n\
         2026-11-25,gpt-4o,1,0.000400,400,100,20,0,0,0\r\n"
    );

    // What each token is.
    assert_eq!(h.call("GET", "/whoami", Some(CAROL_OWN_TOKEN), None).await, (200, json!({"kind": "personal", "name": "user:carol", "scope": "user:carol"})));
    assert_eq!(h.call("GET", "/whoami", Some(VIC_TOKEN), None).await, (200, json!({"kind": "admin_side", "name": "vic", "role": "viewer"})));
    assert_eq!(h.call("GET", "/whoami", Some(GATEWAY_TOKEN), None).await.0, 401);
}

// The retry guard's shared count (docs/guards.md): guard events ride the usage posts, the answer
// carries the other gateways' counts and recent checkpoints; the task summary shows them.

/// A retry-guard event of request `id` on key `key` (task `fix-ci-42`).
fn guard_event(id: &str, key: &str, kind: &str, retry: u32, at_ms: i64, since_ms: i64) -> Value {
    json!({"id": id, "key": key, "task": "fix-ci-42", "kind": kind, "retry": retry, "at_ms": at_ms, "since_ms": since_ms})
}

async fn guard_post(h: &Harness, gateway: &str, records: Vec<Value>, events: Vec<Value>) -> Value {
    let (status, body) = h.gateway("/v1/usage", json!({"gateway_id": gateway, "records": records, "guard_events": events})).await;
    assert_eq!(status, 200, "{body}");
    body
}

fn others_of(ack: &Value, key: &str) -> Option<(i64, u64)> {
    ack["guard"]["counts"].as_array()?.iter().find(|c| c["key"] == key).map(|c| (c["since_ms"].as_i64().unwrap(), c["others"].as_u64().unwrap()))
}

const KEY_A: &str = "00000000000000aa";
const KEY_B: &str = "00000000000000bb";

#[tokio::test]
async fn each_gateway_hears_the_attempts_the_other_gateways_let_through_never_its_own() {
    let h = Harness::start().await;
    let t0 = at("2026-11-25T09:00:00Z");
    // gw1: first attempt and a retry; gw2: one attempt, then one refused (not counted as let through).
    let ack = guard_post(&h, "gw1", vec![], vec![guard_event("gw1:1", KEY_A, "passed", 0, t0, t0), guard_event("gw1:2", KEY_A, "passed", 1, t0 + 10, t0)]).await;
    assert_eq!(others_of(&ack, KEY_A), Some((t0, 0)), "nobody else has tried yet: {ack}");
    let ack = guard_post(&h, "gw2", vec![], vec![guard_event("gw2:1", KEY_A, "passed", 0, t0 + 20, t0 + 20)]).await;
    assert_eq!(others_of(&ack, KEY_A), Some((t0 + 20, 0)), "gw1's attempts began before gw2's window: {ack}");
    let ack = guard_post(&h, "gw2", vec![], vec![guard_event("gw2:2", KEY_A, "refused", 1, t0 + 30, t0)]).await;
    assert_eq!(others_of(&ack, KEY_A), Some((t0, 2)), "from gw2's window start on, gw1 let two through: {ack}");
    let ack = guard_post(&h, "gw1", vec![], vec![guard_event("gw1:3", KEY_A, "observed", 2, t0 + 40, t0)]).await;
    assert_eq!(others_of(&ack, KEY_A), Some((t0, 1)), "gw2's refusal is not an attempt let through; its pass is: {ack}");
    // Redelivered events count once; another key is another count.
    let ack = guard_post(&h, "gw2", vec![], vec![guard_event("gw1:1", KEY_A, "passed", 0, t0, t0), guard_event("gw2:3", KEY_B, "passed", 0, t0 + 50, t0 + 50)]).await;
    assert_eq!(others_of(&ack, KEY_A), Some((t0, 3)), "gw1:1 was stored once, as gw1's: {ack}");
    assert_eq!(others_of(&ack, KEY_B), Some((t0 + 50, 0)), "{ack}");
    let (status, body) = h.gateway("/v1/usage", json!({"gateway_id": "gw1", "records": [], "guard_events": [guard_event("x", "not-hex", "passed", 0, t0, t0)]})).await;
    assert!(status == 400 && body["error"]["message"].as_str().unwrap().starts_with("guard_events[0].key:"), "{body}");
}

#[tokio::test]
async fn a_checkpoint_made_at_the_counter_reaches_every_key_of_its_task_and_clears_the_others_count() {
    let h = Harness::start().await;
    let t0 = at("2026-11-25T09:59:00Z");
    guard_post(&h, "gw1", vec![], vec![guard_event("gw1:1", KEY_A, "passed", 0, t0, t0), guard_event("gw1:2", KEY_B, "refused", 3, t0 + 1, t0)]).await;
    let ack = guard_post(&h, "gw2", vec![], vec![]).await;
    assert!(ack.get("guard").is_none(), "no checkpoint yet, no events: no guard answer: {ack}");
    let (status, cp) = h.admin("POST", "/admin/checkpoints", Some(json!({"task": "fix-ci-42", "note": "go on"}))).await;
    assert_eq!(status, 201, "{cp}");
    let now = at("2026-11-25T10:00:00Z");
    let ack = guard_post(&h, "gw2", vec![], vec![]).await;
    let mut delivered: Vec<(String, String, i64)> = ack["guard"]["checkpoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c["key"].as_str().unwrap().to_owned(), c["checkpoint"].as_str().unwrap().to_owned(), c["at_ms"].as_i64().unwrap()))
        .collect();
    delivered.sort();
    assert_eq!(delivered, [(KEY_A.to_owned(), "cp-1".to_owned(), now), (KEY_B.to_owned(), "cp-1".to_owned(), now)], "any delivery carries it: {ack}");
    let ack = guard_post(&h, "gw2", vec![], vec![guard_event("gw2:1", KEY_A, "passed", 0, now + 5, t0)]).await;
    assert_eq!(others_of(&ack, KEY_A), Some((t0, 0)), "gw1's attempt came before the checkpoint: {ack}");
}

/// (since_ms, others, (ended_ms, own_since_end)) of the streak answered for `key`.
fn streak_of(ack: &Value, key: &str) -> Option<(i64, u64, Option<(i64, u64)>)> {
    ack["guard"]["streaks"].as_array()?.iter().find(|c| c["key"] == key).map(|c| {
        (c["since_ms"].as_i64().unwrap(), c["others"].as_u64().unwrap(), c["ended_ms"].as_i64().map(|at| (at, c["own_since_end"].as_u64().unwrap_or(0))))
    })
}

const STREAK: &str = "00000000000000ff";

#[tokio::test]
async fn a_tasks_failures_on_other_gateways_count_toward_its_streak_until_a_success_anywhere_or_a_checkpoint() {
    let h = Harness::start().await;
    let t0 = at("2026-11-25T09:59:00Z");
    let since = t0 - 1_000;
    let outcome = |id: &str, kind: &str, at_ms: i64| guard_event(id, STREAK, kind, 0, at_ms, since);
    let ack = guard_post(&h, "gw1", vec![], vec![outcome("gw1:1", "failed", t0)]).await;
    assert_eq!(streak_of(&ack, STREAK), Some((since, 0, None)), "nobody else has failed yet: {ack}");
    assert_eq!(others_of(&ack, STREAK), None, "an outcome's key is a streak, not a retry count: {ack}");
    let ack = guard_post(&h, "gw2", vec![], vec![outcome("gw2:1", "failed", t0 + 10)]).await;
    assert_eq!(streak_of(&ack, STREAK), Some((since, 1, None)), "gw1's failure counts toward gw2's streak: {ack}");
    let ack = guard_post(&h, "gw1", vec![], vec![outcome("gw1:2", "failed", t0 + 20)]).await;
    assert_eq!(streak_of(&ack, STREAK), Some((since, 1, None)), "gw1 hears gw2's failure, never its own: {ack}");
    // A redelivered outcome counts once.
    let ack = guard_post(&h, "gw2", vec![], vec![outcome("gw2:1", "failed", t0 + 10), outcome("gw2:2", "failed", t0 + 30)]).await;
    assert_eq!(streak_of(&ack, STREAK), Some((since, 2, None)), "{ack}");
    // A success on gw1 ends the streak everywhere: the failures before it no longer count.
    let ack = guard_post(&h, "gw1", vec![], vec![outcome("gw1:3", "succeeded", t0 + 40)]).await;
    assert_eq!(streak_of(&ack, STREAK), Some((since, 0, None)), "{ack}");
    let ack = guard_post(&h, "gw2", vec![], vec![outcome("gw2:4", "failed", t0 + 50)]).await;
    assert_eq!(streak_of(&ack, STREAK), Some((since, 0, Some((t0 + 40, 1)))), "gw2 learns its earlier failures ended at gw1's success, and its one since starts the new streak: {ack}");
    let ack = guard_post(&h, "gw1", vec![], vec![outcome("gw1:5", "failed", t0 + 60)]).await;
    assert_eq!(streak_of(&ack, STREAK), Some((since, 1, None)), "a failure after the success starts a new streak: {ack}");
    // A checkpoint clears it, and reaches the streak's key like every key of the task.
    let (status, cp) = h.admin("POST", "/admin/checkpoints", Some(json!({"task": "fix-ci-42", "note": "go on"}))).await;
    assert_eq!(status, 201, "{cp}");
    let now = at("2026-11-25T10:00:00Z");
    let ack = guard_post(&h, "gw1", vec![], vec![outcome("gw1:6", "failed", now + 5)]).await;
    assert_eq!(streak_of(&ack, STREAK), Some((since, 0, None)), "gw2's failure came before the checkpoint: {ack}");
    let keys: Vec<&str> = ack["guard"]["checkpoints"].as_array().unwrap().iter().map(|c| c["key"].as_str().unwrap()).collect();
    assert_eq!(keys, [STREAK], "{ack}");
    // Outcomes are not attempts: the task's summary counts no retry, refusal or observation.
    let (status, s) = h.admin("GET", "/admin/tasks/fix-ci-42", None).await;
    assert_eq!(status, 200, "{s}");
    assert_eq!(s["guard"], json!({"retries": 0, "refused": 0, "observed": 0}), "{s}");
}

#[tokio::test]
async fn the_task_summary_counts_retries_and_guard_refusals_once_and_keeps_the_books_exact() {
    let h = Harness::start().await;
    let t0 = at("2026-11-25T09:00:00Z");
    let records = vec![task_record("gw1:1", "fix-ci-42", "gpt-4o", 1_000, 200, false, t0), task_record("gw1:2", "fix-ci-42", "gpt-4o", 1_000, 500, false, t0 + 10)];
    let events = vec![
        guard_event("gw1:1", KEY_A, "passed", 0, t0, t0),
        guard_event("gw1:2", KEY_A, "passed", 1, t0 + 10, t0),
        guard_event("gw1:3", KEY_A, "refused", 2, t0 + 20, t0),
        guard_event("gw1:4", KEY_A, "refused", 2, t0 + 30, t0),
    ];
    guard_post(&h, "gw1", records.clone(), events.clone()).await;
    let ack = guard_post(&h, "gw1", records, events).await;
    assert_eq!((ack["accepted"].as_u64(), ack["duplicates"].as_u64()), (Some(0), Some(2)), "{ack}");
    let (status, s) = h.admin("GET", "/admin/tasks/fix-ci-42", None).await;
    assert_eq!(status, 200, "{s}");
    assert_eq!(s["guard"], json!({"retries": 1, "refused": 2, "observed": 0}), "a redelivered batch counts once: {s}");
    assert_eq!((s["requests"].as_u64(), s["cost_micros"].as_i64()), (Some(2), Some(2_000)), "refusals are not charges: {s}");
    let (status, md) = h.raw("GET", "/admin/tasks/fix-ci-42?format=markdown", Some(ALICE_TOKEN), b"").await;
    assert_eq!(status, 200);
    for needle in ["| retries let through | 1 |", "| guard refusals | 2 |"] {
        assert!(md.contains(needle), "{needle} in\n{md}");
    }
}

// Windows as companies count them (issue 18 §6).

#[tokio::test]
async fn a_budget_in_an_iana_zone_turns_over_at_local_midnight_through_dst_changes() {
    let h = Harness::start().await;
    h.clock.set_ms(at("2026-03-08T08:00:00Z")); // 00:00 PST, the day Los Angeles springs forward
    h.budget(json!({"id": "la-day", "scope": "team:platform", "limit": "1", "window": "day", "time_zone": "America/Los_Angeles"})).await;
    h.budget(json!({"id": "la-month", "scope": "team:platform", "limit": "10", "window": "month", "time_zone": "America/Los_Angeles"})).await;
    let (_, state) = h.admin("GET", "/admin/budgets/la-day", None).await;
    assert_eq!((state["budget"]["time_zone"].as_str(), state["budget"]["utc_offset"].as_str()), (Some("America/Los_Angeles"), Some("UTC")), "{state}");
    assert_eq!(state["resets_at"], at("2026-03-09T00:00:00-07:00") / 1000, "a 23-hour day: {state}");
    h.usage("gw1", vec![record("spring", "platform", 1_000)]).await;
    h.clock.set_ms(at("2026-03-09T06:59:59Z")); // 23:59:59 PDT, still the 8th
    assert_eq!(h.spent("la-day").await, 1_000);
    h.clock.set_ms(at("2026-03-09T07:00:00Z"));
    assert_eq!(h.spent("la-day").await, 0, "the 9th started at midnight PDT");
    assert_eq!(h.spent("la-month").await, 1_000);

    h.clock.set_ms(at("2026-11-01T07:30:00Z")); // 00:30 PDT, the day it falls back
    h.usage("gw1", vec![record("fall", "platform", 2_000)]).await;
    h.clock.set_ms(at("2026-11-02T07:30:00Z")); // 23:30 PST: 25 hours later, the same local day
    assert_eq!(h.spent("la-day").await, 2_000);
    let l = h.lease("gw1", &["team:platform"], 10).await;
    let day = l["budgets"].as_array().unwrap().iter().find(|b| b["budget_id"] == "la-day").unwrap().clone();
    assert_eq!(day["resets_at"], at("2026-11-02T08:00:00Z") / 1000);
    h.clock.set_ms(at("2026-11-02T08:00:00Z"));
    assert_eq!(h.spent("la-day").await, 0);

    // The month ends at local midnight: eight hours after UTC's.
    h.clock.set_ms(at("2026-11-30T23:59:59-08:00"));
    h.usage("gw1", vec![record("november", "platform", 4_000)]).await;
    assert_eq!(h.spent("la-month").await, 2_000 + 4_000);
    h.clock.set_ms(at("2026-12-01T00:00:00-08:00"));
    assert_eq!(h.spent("la-month").await, 0);

    for (body, field) in [
        (json!({"scope": "team:x", "limit": "1", "window": "day", "time_zone": "America/Springfield"}), "time_zone:"),
        (json!({"scope": "team:x", "limit": "1", "window": "day", "time_zone": "Europe/Paris", "utc_offset": "+01:00"}), "time_zone:"),
    ] {
        let (s, b) = h.admin("PUT", "/admin/budgets/bad-zone", Some(body)).await;
        assert_eq!(s, 400, "{b}");
        assert!(b["error"]["message"].as_str().unwrap().starts_with(field), "{b}");
    }
}

#[tokio::test]
async fn a_budget_created_mid_window_starts_from_what_the_ledger_holds_for_its_scope() {
    let h = Harness::start().await;
    h.clock.set_ms(at("2026-11-24T10:00:00Z"));
    h.usage("gw1", vec![record("yesterday", "platform", 100_000)]).await;
    h.clock.set_ms(at("2026-11-25T10:00:00Z"));
    h.usage("gw1", vec![record("today-1", "platform", 300_000), record("today-2", "platform", 50_000), record("other-team", "data", 999_000)]).await;

    h.budget(team_budget("platform-day", "platform", "1.00")).await;
    h.budget(json!({"id": "platform-month", "scope": "team:platform", "limit": "1.00", "window": "month"})).await;
    assert_eq!(h.spent("platform-day").await, 350_000, "today's records of team:platform, not yesterday's, not data's");
    assert_eq!(h.spent("platform-month").await, 450_000, "the month holds yesterday too");
    let l = h.lease("gw1", &["team:platform"], 1_000_000).await;
    let day = l["budgets"].as_array().unwrap().iter().find(|b| b["budget_id"] == "platform-day").unwrap().clone();
    assert_eq!(day["granted_micros"], 650_000, "the headroom is what the ledger left: {day}");
    let (_, audit) = h.admin("GET", "/admin/audit?subject=platform-day", None).await;
    assert_eq!(audit["entries"][0]["action"], "budget.create");
    let note = audit["entries"][0]["note"].as_str().unwrap();
    assert!(note.starts_with("started from $0.350000 already spent this window (2 ledger records"), "{note}");

    // New usage is charged on top, once.
    h.usage("gw1", vec![record("today-3", "platform", 1_000), record("today-1", "platform", 300_000)]).await;
    assert_eq!(h.spent("platform-day").await, 351_000);
    // The next window starts at zero; yesterday's bucket of the month stays.
    h.clock.set_ms(at("2026-11-26T00:00:00Z"));
    assert_eq!((h.spent("platform-day").await, h.spent("platform-month").await), (0, 451_000));
    h.clock.set_ms(at("2026-12-01T00:00:00Z"));
    assert_eq!(h.spent("platform-month").await, 0);
}

#[tokio::test]
async fn switching_from_observe_to_enforce_starts_from_the_ledger_without_counting_twice() {
    let h = Harness::start().await;
    h.usage("gw1", vec![record("before", "platform", 200_000)]).await;
    h.budget(json!({"id": "watch", "scope": "team:platform", "limit": "1", "window": "day", "mode": "observe"})).await;
    assert_eq!(h.spent("watch").await, 200_000, "an observe budget starts from the ledger too");
    h.usage("gw1", vec![record("during", "platform", 300_000)]).await;
    h.budget(json!({"id": "watch", "scope": "team:platform", "limit": "1", "window": "day", "mode": "enforce"})).await;
    assert_eq!(h.spent("watch").await, 500_000, "the counters already held it: the ledger raises, never adds");
    let (_, audit) = h.admin("GET", "/admin/audit?subject=watch", None).await;
    let update = &audit["entries"][0];
    assert_eq!((update["action"].as_str(), update["before"]["mode"].as_str()), (Some("budget.update"), Some("observe")));
    assert!(update["note"].as_str().unwrap().starts_with("started from $0.500000 already spent this window"), "{update}");
    // A change that is neither a creation nor a switch to enforce carries no note.
    h.budget(json!({"id": "watch", "scope": "team:platform", "limit": "2", "window": "day", "mode": "enforce"})).await;
    let (_, audit) = h.admin("GET", "/admin/audit?subject=watch&limit=1", None).await;
    assert_eq!(audit["entries"][0]["note"], Value::Null, "{audit}");
    // Deleted and created again: its counters went with it, the ledger did not.
    assert_eq!(h.admin("DELETE", "/admin/budgets/watch", None).await.0, 200);
    h.budget(json!({"id": "watch", "scope": "team:platform", "limit": "2", "window": "day"})).await;
    assert_eq!(h.spent("watch").await, 500_000);
}
