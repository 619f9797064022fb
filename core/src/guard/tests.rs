use super::*;
use crate::config::FilterConfig;

fn compile(guards: &str) -> Result<Guards, String> {
    let doc = format!(r#"{{"guards": {guards}}}"#);
    FilterConfig::from_json(doc.as_bytes()).map(|c| c.guards.unwrap_or_default()).map_err(|e| e.to_string())
}

fn principal(task: Option<&str>, user: Option<&str>, tier: Option<&str>) -> Principal {
    Principal { task: task.map(str::to_owned), user: user.map(str::to_owned), tier: tier.map(str::to_owned), ..Principal::default() }
}

#[test]
fn no_guards_section_means_no_guards() {
    assert!(FilterConfig::from_json(b"{}").unwrap().guards.is_none());
}

#[test]
fn retry_defaults_are_the_users_rule() {
    let g = compile(r#"{"retry": {}}"#).unwrap();
    let r = g.retry.unwrap();
    assert_eq!(r.limits, RetryLimits { allowed_retries: 2, window_ms: 3_600_000, observe: false });
    assert!(r.ignored.names().iter().any(|f| f == "stream_options") && r.ignored.names().iter().any(|f| f == "temperature"));
    assert_eq!(r.checkpoint_header, None);
}

#[test]
fn config_mistakes_name_their_field() {
    for (guards, want) in [
        (r#"{"retri": {}}"#, "tollgate config: guards: unknown field `retri`"),
        (r#"{"retry": {"mode": "warn"}}"#, "tollgate config: guards.retry.mode: unknown variant `warn`"),
        (r#"{"retry": {"window_seconds": 0}}"#, "tollgate config: guards.retry.window_seconds: must be between"),
        (r#"{"retry": {"allowed_retries": -1}}"#, "tollgate config: guards.retry.allowed_retries: invalid value"),
        (r#"{"retry": {"ignore_fields": ["model"]}}"#, "tollgate config: guards.retry.ignore_fields: \"model\" always counts"),
        (r#"{"retry": {"checkpoint_header": "x y"}}"#, "tollgate config: guards.retry.checkpoint_header: must be a header name"),
        (r#"{"retry": {"expensive": {"min_estimated_cost_usd": "lots"}}}"#, "tollgate config: guards.retry.expensive.min_estimated_cost_usd: `\"lots\"` is not"),
        (r#"{"retry": {"expensive": {"model": []}}}"#, "tollgate config: guards.retry.expensive.model: give one or more"),
        (r#"{"retry": {"expensive": {"cost": 1}}}"#, "tollgate config: guards.retry.expensive: unknown field `cost`"),
        (r#"{"require_task": [{"name": "p", "require": ["owner"]}]}"#, "tollgate config: guards.require_task[0].require[0]: unknown principal field \"owner\""),
        (r#"{"require_task": [{"name": "p", "otherwise": "downgrade"}]}"#, "tollgate config: guards.require_task[0].fallback_model: \"otherwise\": \"downgrade\" needs"),
        (r#"{"require_task": [{"name": "p", "fallback_model": "m"}]}"#, "tollgate config: guards.require_task[0].fallback_model: only used with"),
        (r#"{"require_task": [{"name": "p"}, {"name": "p"}]}"#, "tollgate config: guards.require_task[1].name: \"p\" is used by an earlier entry"),
        (r#"{"require_task": [{"name": "p", "match": {"team": "x"}}]}"#, "tollgate config: guards.require_task[0].match: unknown field `team`"),
        (r#"5"#, "tollgate config: guards: must be an object"),
    ] {
        let e = compile(guards).map(|_| ()).unwrap_err();
        assert!(e.starts_with(want), "{guards}\n got: {e}\nwant: {want}");
    }
}

#[test]
fn expensive_is_any_of_tier_model_or_cost() {
    let r = compile(r#"{"retry": {"expensive": {"tier": "premium", "model": "claude-opus*", "min_estimated_cost_usd": "0.05"}}}"#).unwrap().retry.unwrap();
    let anyone = principal(None, None, None);
    let premium = principal(None, None, Some("premium"));
    let work = |p: &'static Principal, requested: &'static str, routed: &'static str, cost: i64| Work { principal: p, requested_model: requested, routed_model: routed, worst_case_micros: cost };
    let anyone: &'static Principal = Box::leak(Box::new(anyone));
    let premium: &'static Principal = Box::leak(Box::new(premium));
    for (w, want) in [
        (work(anyone, "gpt-4o-mini", "gpt-4o-mini", 100), false),
        (work(premium, "gpt-4o-mini", "gpt-4o-mini", 100), true),
        (work(anyone, "claude-opus-4", "claude-opus-4", 100), true),
        (work(anyone, "tier:premium", "claude-opus-4", 100), true),
        (work(anyone, "gpt-4o-mini", "gpt-4o-mini", 50_000), true),
        (work(anyone, "gpt-4o-mini", "gpt-4o-mini", 49_999), false),
    ] {
        assert_eq!(r.is_expensive(&w), want, "{w:?}");
    }
    let every = compile(r#"{"retry": {}}"#).unwrap().retry.unwrap();
    assert!(every.is_expensive(&work(anyone, "m", "m", 0)), "no `expensive`: every request counts");
}

#[test]
fn keys_differ_by_principal_task_and_fingerprint() {
    let a = RetryGuard::key(&principal(Some("t-1"), Some("u"), None), 7);
    assert!(a.starts_with("tollgate.guard.retry.") && a.len() == "tollgate.guard.retry.".len() + 16, "{a}");
    assert_eq!(a, RetryGuard::key(&principal(Some("t-1"), Some("u"), None), 7));
    assert_ne!(a, RetryGuard::key(&principal(Some("t-2"), Some("u"), None), 7));
    assert_ne!(a, RetryGuard::key(&principal(Some("t-1"), Some("v"), None), 7));
    assert_ne!(a, RetryGuard::key(&principal(Some("t-1"), Some("u"), None), 8));
    assert_ne!(RetryGuard::key(&principal(Some("u"), None, None), 7), RetryGuard::key(&principal(None, Some("u"), None), 7), "the field counts, not just the value");
}

#[test]
fn the_refusal_names_the_guard_the_task_and_the_way_on() {
    let r = compile(r#"{"retry": {"checkpoint_header": "X-Approved-Checkpoint"}}"#).unwrap().retry.unwrap();
    let f = r.refusal(&principal(Some("fix-ci-42"), None, None), 3);
    assert_eq!(f.status(), 429);
    for needle in ["retry guard", "task \"fix-ci-42\"", "3 times", "2 retries", "POST /admin/checkpoints", "x-approved-checkpoint"] {
        assert!(f.message.contains(needle), "{needle}: {}", f.message);
    }
    let body: serde_json::Value = serde_json::from_slice(&f.body(crate::dialect::Dialect::OpenAi)).unwrap();
    assert_eq!(body["error"]["code"], "retry_guard");
    let body: serde_json::Value = serde_json::from_slice(&f.body(crate::dialect::Dialect::Anthropic)).unwrap();
    assert_eq!(body["error"]["type"], "rate_limit_error");
}

#[test]
fn premium_runs_without_a_task_are_refused_or_downgraded() {
    let g = compile(
        r#"{"require_task": [
            {"name": "opus-needs-owner", "match": {"model": "claude-opus*"}, "require": ["task", "user"]},
            {"name": "premium-tier", "match": {"model": "tier:premium"}, "otherwise": "downgrade", "fallback_model": "tier:standard"},
            {"name": "premium-users", "match": {"tier": "premium"}}
        ]}"#,
    )
    .unwrap();
    let none = principal(None, None, None);
    let task = principal(Some("t-1"), None, None);
    let owned = principal(Some("t-1"), Some("ana"), None);
    let premium_user = principal(None, None, Some("premium"));
    assert_eq!(g.check_attribution(&owned, "claude-opus-4"), Ok(Attributed::Ok));
    let e = g.check_attribution(&task, "claude-opus-4").unwrap_err();
    assert_eq!(e.status(), 403);
    assert!(e.message.contains("guard \"opus-needs-owner\"") && e.message.contains("needs a user"), "{}", e.message);
    let e = g.check_attribution(&none, "claude-opus-4").unwrap_err();
    assert!(e.message.contains("needs a task and a user"), "{}", e.message);
    assert_eq!(g.check_attribution(&none, "tier:premium"), Ok(Attributed::Downgrade { model: "tier:standard".into(), rule: "premium-tier".into() }));
    assert_eq!(g.check_attribution(&task, "tier:premium"), Ok(Attributed::Ok));
    assert!(g.check_attribution(&premium_user, "gpt-4o-mini").is_err(), "a tier can require a task");
    assert_eq!(g.check_attribution(&none, "gpt-4o-mini"), Ok(Attributed::Ok), "nothing matches: nothing required");
}

#[test]
fn task_costs_round_trip_and_read_as_a_header() {
    let c = TaskCost { cost_micros: 40_456, requests: 4 };
    assert_eq!(TaskCost::decode(&c.encode()), Some(c));
    assert_eq!(TaskCost::decode(&[1, 2, 3]), None);
    assert_eq!(c.header_value(), "cost_micros=40456; requests=4");
    assert_ne!(task_cost_key("a"), task_cost_key("b"));
    assert!(task_cost_key("a").starts_with("tollgate.guard.task."));
    assert!(compile(r#"{"task_cost_header": true}"#).unwrap().task_cost_header);
    assert!(!compile(r#"{}"#).unwrap().task_cost_header);
}

#[test]
fn a_tasks_failure_streak_has_its_own_key_and_refusal() {
    let p = principal(Some("fix-ci-42"), Some("u"), None);
    let k = RetryGuard::task_key(&p);
    assert!(k.starts_with("tollgate.guard.tfail.") && k.len() == "tollgate.guard.tfail.".len() + 16, "{k}");
    assert_ne!(k, RetryGuard::task_key(&principal(Some("other"), Some("u"), None)));
    let r = compile(r#"{"retry": {}}"#).unwrap().retry.unwrap();
    let f = r.task_refusal(&p, 3);
    assert_eq!(f.status(), 429);
    assert!(f.message.contains("task \"fix-ci-42\" failed 3 times in a row") && f.message.contains("POST /admin/checkpoints"), "{}", f.message);
}

#[test]
fn every_principal_field_and_the_fingerprint_name_their_own_count() {
    let base = Principal { org: Some("acme".into()), team: Some("platform".into()), task: Some("t-1".into()), ..Principal::default() };
    let key = RetryGuard::key(&base, 42);
    assert!(key.starts_with(RETRY_PREFIX) && key.len() == RETRY_PREFIX.len() + 16 && key[RETRY_PREFIX.len()..].bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()), "{key}");
    assert_ne!(RetryGuard::key(&base, 43), key, "another fingerprint");
    for field in crate::attribution::Field::ALL {
        let mut p = base.clone();
        let slot = match field {
            crate::attribution::Field::Org => &mut p.org,
            crate::attribution::Field::CostCenter => &mut p.cost_center,
            crate::attribution::Field::Team => &mut p.team,
            crate::attribution::Field::User => &mut p.user,
            crate::attribution::Field::KeyId => &mut p.key_id,
            crate::attribution::Field::UseCase => &mut p.use_case,
            crate::attribution::Field::Tier => &mut p.tier,
            crate::attribution::Field::Task => &mut p.task,
        };
        *slot = Some(format!("{}x", slot.clone().unwrap_or_default()));
        assert_ne!(RetryGuard::key(&p, 42), key, "{field:?} changed");
    }
    let moved = Principal { org: Some("acmep".into()), team: Some("latform".into()), ..base.clone() };
    assert_ne!(RetryGuard::key(&moved, 42), key, "a byte moved from one field to the next");
    let streak = RetryGuard::task_key(&base);
    assert!(streak.starts_with(FAILURE_PREFIX) && streak.len() == FAILURE_PREFIX.len() + 16, "{streak}");
}

#[test]
fn the_stack_key_is_the_key() {
    for fingerprint in [0, 7, u64::MAX, 0x0123_4567_89ab_cdef] {
        let p = principal(Some("t-1"), Some("u"), None);
        let key = RetryGuard::key(&p, fingerprint);
        assert_eq!(RetryGuard::entry_key(&p, fingerprint).as_str(), key);
        assert_eq!(key.len(), RETRY_PREFIX.len() + 16);
        assert!(key.starts_with(RETRY_PREFIX) && key[RETRY_PREFIX.len()..].bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
    }
}
