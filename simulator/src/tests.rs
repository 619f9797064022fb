//! The replay, as a specification: each case is a ledger, a candidate and the figures it must give.

use super::*;
use serde_json::json;

const DAY: i64 = 86_400_000;
/// 2026-11-02T00:00:00Z, a Monday.
const NOV_2: i64 = 1_793_577_600_000;

fn request(team: &str, use_case: &str, dialect: &str, model: &str, input: u64, output: u64, cost: Micros, at: i64) -> LedgerRequest {
    LedgerRequest {
        principal: Principal { team: Some(team.into()), use_case: Some(use_case.into()), user: Some(format!("{team}-dev")), ..Default::default() },
        dialect: dialect.into(),
        requested_model: model.into(),
        routed_model: model.into(),
        tokens: Tokens { input, output, ..Default::default() },
        cost_micros: cost,
        finished_at_ms: at,
    }
}

fn candidate(rules: serde_json::Value, pricing: Option<serde_json::Value>) -> Candidate {
    let pricing = pricing.map(|p| p.to_string());
    Candidate::from_json(&json!({ "rules": rules }).to_string(), pricing.as_deref()).unwrap()
}

/// gpt-4o at $2.50 / $10 per million tokens; gpt-4o-mini at $0.15 / $0.60 (set here, so the
/// figures do not move when the bundled prices are refreshed).
fn prices() -> serde_json::Value {
    json!({"bundled": false, "models": {
        "gpt-4o": {"input_per_mtok": "2.50", "output_per_mtok": "10"},
        "gpt-4o-mini": {"input_per_mtok": "0.15", "output_per_mtok": "0.60"},
        "claude-opus-4": {"input_per_mtok": "15", "output_per_mtok": "75"}
    }})
}

#[test]
fn an_empty_table_with_the_billed_prices_costs_what_was_billed() {
    let c = candidate(json!([]), Some(prices()));
    // 1000 in + 100 out on gpt-4o = 2500 + 1000 micro-dollars.
    let rows = vec![request("platform", "chat", "openai", "gpt-4o", 1000, 100, 3500, NOV_2)];
    let s = simulate(&c, &rows, vec![]).unwrap();
    assert_eq!((s.requests, s.billed_micros, s.candidate_micros, s.rerouted, s.denied), (1, 3500, 3500, 0, 0));
}

#[test]
fn rerouted_denied_and_unpriced_requests_are_counted_per_team_and_use_case() {
    let c = candidate(
        json!([
            {"name": "interns-no-opus", "match": {"team": "interns", "model": "claude-opus*"}, "deny": true},
            {"name": "autocomplete-mini", "match": {"use_case": "autocomplete"}, "set_model": "gpt-4o-mini"},
            {"name": "research-new", "match": {"team": "research"}, "set_model": "brand-new-model"}
        ]),
        Some(prices()),
    );
    let rows = vec![
        request("platform", "autocomplete", "openai", "gpt-4o", 1_000_000, 0, 2_500_000, NOV_2),
        request("platform", "autocomplete", "openai", "gpt-4o-mini", 1_000_000, 0, 150_000, NOV_2),
        request("platform", "chat", "openai", "gpt-4o", 0, 1_000_000, 10_000_000, NOV_2),
        request("interns", "chat", "anthropic", "claude-opus-4", 1000, 0, 15_000, NOV_2),
        request("research", "chat", "openai", "gpt-4o", 1000, 0, 2_500, NOV_2),
    ];
    let s = simulate(&c, &rows, vec![]).unwrap();
    let by = |team: &str, uc: &str| s.groups.iter().find(|g| g.team == team && g.use_case == uc).unwrap().clone();
    let g = by("platform", "autocomplete");
    assert_eq!((g.requests, g.billed_micros, g.candidate_micros, g.rerouted, g.denied), (2, 2_650_000, 300_000, 1, 0));
    let g = by("platform", "chat");
    assert_eq!((g.billed_micros, g.candidate_micros, g.rerouted), (10_000_000, 10_000_000, 0));
    let g = by("interns", "chat");
    assert_eq!((g.billed_micros, g.candidate_micros, g.denied), (15_000, 0, 1));
    let g = by("research", "chat");
    assert_eq!((g.rerouted, g.unpriced, g.candidate_micros), (1, 1, 0), "unknown_model: zero charges nothing, counted");
    assert_eq!((s.requests, s.rerouted, s.denied, s.unpriced), (5, 2, 1, 1));
    assert_eq!(s.billed_micros, 2_650_000 + 10_000_000 + 15_000 + 2_500);
    assert_eq!(s.candidate_usd, format_micros(s.candidate_micros));
}

#[test]
fn an_alias_no_rule_resolves_is_refused_like_the_filter_refuses_it() {
    let c = candidate(json!([]), Some(prices()));
    let mut r = request("platform", "chat", "openai", "tier:premium", 10, 10, 100, NOV_2);
    r.routed_model = "gpt-4o".into();
    assert_eq!(c.replay(&r), Outcome::Refused);
    let c = candidate(json!([{"name": "premium", "match": {"model": "tier:premium"}, "set_model": "gpt-4o"}]), Some(prices()));
    assert_eq!(c.replay(&r), Outcome::Forwarded { model: "gpt-4o".into(), cost_micros: 125, priced: true });
}

#[test]
fn budgets_are_replayed_window_by_window() {
    let c = candidate(json!([{"name": "mini", "set_model": "gpt-4o-mini"}]), Some(prices()));
    // Three days of 1M input tokens on gpt-4o ($2.50 each) for team platform.
    let rows: Vec<_> = (0..3).map(|d| request("platform", "chat", "openai", "gpt-4o", 1_000_000, 0, 2_500_000, NOV_2 + d * DAY + 3_600_000)).collect();
    let budget = |id: &str, scope: &str, window: &str, limit: Micros, hard: Micros| BudgetInput {
        budget: BudgetSpecInput { id: id.into(), scope: scope.into(), window: window.into(), utc_offset: "UTC".into() },
        effective_limit_micros: limit,
        hard_limit_micros: hard,
    };
    let s = simulate(
        &c,
        &rows,
        vec![
            budget("daily", "team:platform", "day", 2_000_000, 3_000_000),
            budget("weekly", "team:platform", "week", 5_000_000, 5_000_000),
            budget("rolling", "team:platform", "rolling:2", 5_000_000, 6_000_000),
            budget("other", "team:research", "month", 1, 1),
        ],
    )
    .unwrap();
    let b = |id: &str| s.budgets.iter().find(|b| b.id == id).unwrap().clone();
    let daily = b("daily");
    assert_eq!((daily.windows, daily.billed_peak_micros, daily.candidate_peak_micros), (3, 2_500_000, 150_000));
    assert_eq!((daily.billed_windows_over_limit, daily.billed_windows_over_hard, daily.candidate_windows_over_limit), (3, 0, 0));
    let weekly = b("weekly");
    assert_eq!((weekly.windows, weekly.billed_peak_micros, weekly.billed_windows_over_hard, weekly.candidate_windows_over_hard), (1, 7_500_000, 1, 0));
    let rolling = b("rolling");
    assert_eq!((rolling.billed_peak_micros, rolling.billed_windows_over_limit, rolling.billed_windows_over_hard), (5_000_000, 2, 0));
    assert_eq!(b("other").windows, 0);
    assert_eq!(s.budgets.iter().map(|b| b.id.as_str()).collect::<Vec<_>>(), ["daily", "other", "rolling", "weekly"], "sorted by id");
}

#[test]
fn windows_turn_over_at_local_midnight_and_on_mondays_and_month_starts() {
    // 2026-11-30T23:30Z is already December 1st at +01:00.
    let at = NOV_2 + 28 * DAY + 23 * 3_600_000 + 1_800_000;
    assert_eq!(window_key(WindowKind::Month, 0, at), 2026 * 12 + 11);
    assert_eq!(window_key(WindowKind::Month, 60, at), 2026 * 12 + 12);
    assert_eq!(window_key(WindowKind::Day, 60, at), window_key(WindowKind::Day, 0, at) + 1);
    // Sunday 2026-11-08 and Monday 2026-11-09 fall in different ISO weeks; Monday and Sunday of one week in the same.
    assert_eq!(window_key(WindowKind::Week, 0, NOV_2), window_key(WindowKind::Week, 0, NOV_2 + 6 * DAY));
    assert_ne!(window_key(WindowKind::Week, 0, NOV_2 + 6 * DAY), window_key(WindowKind::Week, 0, NOV_2 + 7 * DAY));
    assert_eq!(year_month(0), (1970, 1));
    assert_eq!(year_month(-1), (1969, 12));
    assert_eq!(year_month(20_513), (2026, 3)); // 2026-03-01
    assert_eq!(year_month(20_512), (2026, 2)); // 2026-02-28
    for (text, minutes) in [("UTC", Some(0)), ("+01:00", Some(60)), ("-05:30", Some(-330)), ("CET", None), ("+24:00", None)] {
        assert_eq!(parse_offset_minutes(text), minutes, "{text}");
    }
}

#[test]
fn bad_candidates_and_documents_name_the_field() {
    let err = |routing: &str, pricing: Option<&str>| Candidate::from_json(routing, pricing).err().unwrap();
    assert!(err(r#"{"rules":[{"name":"x","match":{"modle":"a"}}]}"#, None).starts_with("routing.rules[0].match"), "{}", err(r#"{"rules":[{"name":"x","match":{"modle":"a"}}]}"#, None));
    assert!(err("{", None).starts_with("routing: not JSON"));
    assert!(err(r#"{"rules":[]}"#, Some(r#"{"unknown_model":"sometimes"}"#)).starts_with("pricing.unknown_model"));
    // A whole filter config is accepted: its routing section is used.
    assert!(Candidate::from_json(r#"{"routing":{"rules":[]},"pricing":{}}"#, None).is_ok());
    let e = simulate_json("[]", r#"{"rules":[]}"#, None, "").unwrap_err();
    assert!(e.starts_with("ledger:"), "{e}");
    let e = simulate_json(r#"{"records":[]}"#, r#"{"rules":[]}"#, None, r#"{"budgets":[{"budget":{"id":"a","scope":"team:a","window":"fortnight"},"effective_limit_micros":1,"hard_limit_micros":1}]}"#).unwrap_err();
    assert!(e.starts_with("budgets[0].budget.window"), "{e}");
}

#[test]
fn the_json_answer_is_deterministic_and_carries_the_report_fields() {
    let ledger = json!({"from_ms": 0, "to_ms": 1, "truncated": false, "records": [
        {"id": "g:1", "principal": {"team": "b", "use_case": "chat"}, "dialect": "openai", "requested_model": "gpt-4o",
         "routed_model": "gpt-4o", "tokens": {"input": 1000}, "cost_micros": 2500, "status": 200, "estimated": false,
         "started_at_ms": 1, "finished_at_ms": NOV_2},
        {"id": "g:2", "principal": {"team": "a"}, "dialect": "anthropic", "requested_model": "claude-opus-4",
         "routed_model": "claude-opus-4", "tokens": {"output": 1000}, "cost_micros": 75000, "status": 200, "estimated": false,
         "started_at_ms": 1, "finished_at_ms": NOV_2}
    ]})
    .to_string();
    let routing = r#"{"rules":[]}"#;
    let pricing = prices().to_string();
    let once = simulate_json(&ledger, routing, Some(&pricing), "").unwrap();
    assert_eq!(once, simulate_json(&ledger, routing, Some(&pricing), "").unwrap());
    let v: serde_json::Value = serde_json::from_str(&once).unwrap();
    assert_eq!(v["groups"][0]["team"], "a", "groups sorted by team, use case");
    assert_eq!((v["billed_micros"].as_i64(), v["candidate_micros"].as_i64()), (Some(77_500), Some(77_500)));
    assert_eq!(v["billed_usd"], "0.077500");
}
