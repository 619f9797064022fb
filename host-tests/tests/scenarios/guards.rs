//! Agent guards (issue 12) on the real wasm, virtual clock: the retry-loop guard (two retries
//! pass, the third is refused in the dialect's shape, a checkpoint lets the next through, a
//! changed request is not a retry, ignored fields do not change the fingerprint, two workers share
//! the count, observe mode never refuses) and premium runs that need a task id.

use crate::common::*;
use serde_json::{json, Value};
use tollgate_host_tests::fixtures::{refs, TEST_CONFIG};
use tollgate_host_tests::*;

const CHECKPOINT: &str = "x-approval-checkpoint";

/// TEST_CONFIG with the task read from `x-auth-task` and `guards` as given.
fn guarded(guards: Value) -> Gateway {
    let mut v: Value = serde_json::from_str(TEST_CONFIG).expect("TEST_CONFIG is JSON");
    v["attribution"]["trusted_headers"]["task"] = json!("x-auth-task");
    v["attribution"]["trusted_headers"]["tier"] = json!("x-auth-tier");
    v["guards"] = guards;
    Gateway::new(v.to_string())
}

fn retry_guard() -> Gateway {
    guarded(json!({"retry": {"expensive": {"model": "tg-*"}, "checkpoint_header": CHECKPOINT}}))
}

const FIX: &[u8] = br#"{"model":"test-chat","messages":[{"role":"user","content":"the build fails in parser.rs; fix it"}]}"#;

fn headers(body: &[u8], task: Option<&str>, extra: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut h = with(post("/v1/chat/completions", body), "x-auth-team", "platform");
    if let Some(task) = task {
        h = with(h, "x-auth-task", task);
    }
    for (k, v) in extra {
        h = with(h, k, v);
    }
    h
}

/// Sends one request on `worker`; `Some(status)` if the filter answered it, `None` if it went upstream.
fn send_on(gw: &Gateway, worker: usize, body: &[u8], task: Option<&str>, extra: &[(&str, &str)]) -> Option<u16> {
    let mut s = gw.stream_on(worker);
    s.send_request(&refs(&headers(body, task, extra)), body);
    match s.client().local_reply {
        Some(reply) => Some(reply.status as u16),
        None => {
            assert!(s.upstream().headers.is_some(), "neither answered nor forwarded");
            None
        }
    }
}

fn send(gw: &Gateway, body: &[u8], task: Option<&str>) -> Option<u16> {
    send_on(gw, 0, body, task, &[])
}

#[test]
fn two_retries_pass_and_the_third_is_refused_naming_the_guard_and_the_task() {
    let gw = retry_guard();
    let got: Vec<Option<u16>> = (0..5).map(|_| send(&gw, FIX, Some("fix-ci-42"))).collect();
    assert_eq!(got, [None, None, None, Some(429), Some(429)]);
    let mut s = gw.stream();
    s.send_request(&refs(&headers(FIX, Some("fix-ci-42"), &[])), FIX);
    let client = s.expect_local_response(429);
    let v = client.json();
    assert_eq!(v["error"]["code"], "retry_guard", "{v}");
    let message = v["error"]["message"].as_str().unwrap_or_default();
    for needle in ["retry guard", "task \"fix-ci-42\"", "POST /admin/checkpoints", CHECKPOINT] {
        assert!(message.contains(needle), "{needle} in {message}");
    }
    assert_eq!(s.filter_state("wasm.tollgate.guard").as_deref(), Some("retry_refused"));
    assert_eq!(s.filter_state("wasm.tollgate.outcome").as_deref(), Some("refused"));
    flush_counters(&gw);
    assert_eq!(gw.counter("tollgate_guard_retries"), 2);
    assert_eq!(gw.counter("tollgate_guard_refused"), 3);
}

#[test]
fn the_refusal_has_each_dialects_error_shape() {
    let gw = guarded(json!({"retry": {}}));
    for (path, model, body, kind) in [
        ("/v1/messages", "test-claude", br#"{"model":"test-claude","max_tokens":10,"messages":[{"role":"user","content":"hi"}]}"#.to_vec(), "anthropic"),
        ("/v1beta/models/test-gemini:generateContent", "test-gemini", br#"{"contents":[{"role":"user","parts":[{"text":"hi"}]}]}"#.to_vec(), "gemini"),
        ("/openai/deployments/test-deploy/chat/completions?api-version=2024-10-21", "test-deploy", br#"{"messages":[{"role":"user","content":"hi"}]}"#.to_vec(), "azure"),
    ] {
        let h = with(with(post(path, &body), "x-auth-team", "platform"), "x-auth-task", "t-1");
        for attempt in 0..3 {
            let mut s = gw.stream();
            s.send_request(&refs(&h), &body);
            assert!(s.client().local_reply.is_none(), "{kind} {model}: attempt {attempt} goes through");
        }
        let mut s = gw.stream();
        s.send_request(&refs(&h), &body);
        let v = s.expect_local_response(429).json();
        match kind {
            "anthropic" => assert_eq!((v["type"].as_str(), v["error"]["type"].as_str()), (Some("error"), Some("rate_limit_error")), "{v}"),
            "gemini" => assert_eq!((v["error"]["code"].as_u64(), v["error"]["status"].as_str()), (Some(429), Some("RESOURCE_EXHAUSTED")), "{v}"),
            _ => assert_eq!(v["error"]["code"], "retry_guard", "{v}"),
        }
    }
}

#[test]
fn a_checkpoint_lets_the_next_through_once() {
    let gw = retry_guard();
    for _ in 0..3 {
        assert_eq!(send(&gw, FIX, Some("t")), None);
    }
    assert_eq!(send(&gw, FIX, Some("t")), Some(429));
    let approved = [(CHECKPOINT, "cp-1")];
    assert_eq!(send_on(&gw, 0, FIX, Some("t"), &approved), None, "a new checkpoint resets the count");
    assert_eq!(send_on(&gw, 0, FIX, Some("t"), &approved), None);
    assert_eq!(send_on(&gw, 0, FIX, Some("t"), &approved), None);
    assert_eq!(send_on(&gw, 0, FIX, Some("t"), &approved), Some(429), "the same checkpoint again does not reset it");
    assert_eq!(send_on(&gw, 0, FIX, Some("t"), &[(CHECKPOINT, "cp-2")]), None, "the next checkpoint does");
    flush_counters(&gw);
    assert_eq!(gw.counter("tollgate_guard_checkpoints"), 2);
}

#[test]
fn a_changed_request_is_not_a_retry() {
    let gw = retry_guard();
    for i in 0..6 {
        let body = format!(r#"{{"model":"test-chat","messages":[{{"role":"user","content":"attempt {i}: try another fix"}}]}}"#);
        assert_eq!(send(&gw, body.as_bytes(), Some("t")), None, "attempt {i}");
    }
    // The conversation grows with the previous answer: other work.
    for _ in 0..3 {
        assert_eq!(send(&gw, FIX, Some("t")), None);
    }
    let longer = br#"{"model":"test-chat","messages":[{"role":"user","content":"the build fails in parser.rs; fix it"},{"role":"assistant","content":"done"},{"role":"user","content":"still fails"}]}"#;
    assert_eq!(send(&gw, longer, Some("t")), None);
}

#[test]
fn ignored_fields_do_not_change_the_fingerprint() {
    let gw = retry_guard();
    let variants: [&[u8]; 4] = [
        FIX,
        br#"{"model":"test-chat","messages":[{"role":"user","content":"the build fails in parser.rs; fix it"}],"temperature":0.9,"user":"run-7"}"#,
        br#"{"metadata":{"attempt":"3"},"model":"test-chat","messages":[{"role":"user","content":"the build fails in parser.rs; fix it"}],"stream":true}"#,
        br#"{"model":"test-chat","seed":4,"messages":[{"role":"user","content":"the build fails in parser.rs; fix it"}],"stream":true,"stream_options":{"include_usage":false}}"#,
    ];
    let got: Vec<Option<u16>> = variants.iter().map(|body| send(&gw, body, Some("t"))).collect();
    assert_eq!(got, [None, None, None, Some(429)], "all four are the same work");
}

#[test]
fn tasks_and_principals_are_counted_apart_and_the_window_ends_the_count() {
    let gw = guarded(json!({"retry": {"window_seconds": 60}}));
    for _ in 0..3 {
        assert_eq!(send(&gw, FIX, Some("a")), None);
    }
    assert_eq!(send(&gw, FIX, Some("a")), Some(429));
    assert_eq!(send(&gw, FIX, Some("b")), None, "another task");
    assert_eq!(send(&gw, FIX, None), None, "no task: the principal alone");
    gw.advance(Duration::from_secs(60));
    assert_eq!(send(&gw, FIX, Some("a")), None, "a window later the count starts again");
}

#[test]
fn two_workers_share_the_count() {
    let gw = retry_guard().workers(2);
    let got: Vec<Option<u16>> = (0..6).map(|i| send_on(&gw, i % 2, FIX, Some("t"), &[])).collect();
    assert_eq!(got, [None, None, None, Some(429), Some(429), Some(429)], "1 + 2 retries across both workers, not per worker");
}

#[test]
fn observe_mode_counts_and_reports_but_never_refuses() {
    let gw = guarded(json!({"retry": {"mode": "observe"}}));
    for _ in 0..5 {
        assert_eq!(send(&gw, FIX, Some("t")), None);
    }
    let mut s = gw.stream();
    s.send_request(&refs(&headers(FIX, Some("t"), &[])), FIX);
    assert!(s.client().local_reply.is_none());
    assert_eq!(s.filter_state("wasm.tollgate.guard").as_deref(), Some("retry_observed"));
    assert_eq!(s.filter_state("wasm.tollgate.guard_retry").as_deref(), Some("5"));
    flush_counters(&gw);
    // One first attempt and five retries: retries 3, 4 and 5 are past the two allowed.
    assert_eq!(gw.counter("tollgate_guard_observed"), 3);
    assert_eq!(gw.counter("tollgate_guard_refused"), 0);
}

#[test]
fn cheap_requests_are_not_counted() {
    let gw = guarded(json!({"retry": {"expensive": {"model": "claude-opus*", "tier": "premium"}}}));
    for _ in 0..6 {
        assert_eq!(send(&gw, FIX, Some("t")), None);
    }
    assert!(gw.shared_data_keys().iter().all(|k| !k.starts_with("tollgate.guard.")), "nothing counted: {:?}", gw.shared_data_keys());
    let premium = [("x-auth-tier", "premium")];
    let got: Vec<Option<u16>> = (0..4).map(|_| send_on(&gw, 0, FIX, Some("t"), &premium)).collect();
    assert_eq!(got, [None, None, None, Some(429)], "the premium tier is expensive");
}

#[test]
fn without_guards_nothing_is_counted() {
    let gw = gateway();
    for _ in 0..5 {
        let mut s = gw.stream();
        s.send_request(&refs(&post("/v1/chat/completions", FIX)), FIX);
        assert!(s.client().local_reply.is_none());
    }
    assert!(gw.shared_data_keys().is_empty(), "{:?}", gw.shared_data_keys());
}

#[test]
fn a_premium_run_without_a_task_is_refused_in_every_dialect_naming_what_is_missing() {
    let gw = guarded(json!({"require_task": [{"name": "premium-needs-owner", "match": {"tier": "premium"}, "require": ["task", "user"]}]}));
    for (path, body) in [
        ("/v1/chat/completions", br#"{"model":"test-chat","messages":[]}"#.to_vec()),
        ("/v1/messages", br#"{"model":"test-claude","max_tokens":10,"messages":[]}"#.to_vec()),
        ("/v1beta/models/test-gemini:generateContent", br#"{"contents":[]}"#.to_vec()),
        ("/openai/deployments/test-deploy/chat/completions?api-version=2024-10-21", br#"{"messages":[]}"#.to_vec()),
    ] {
        let h = with(post(path, &body), "x-auth-tier", "premium");
        let mut s = gw.stream();
        s.send_request(&refs(&h), &body);
        let client = s.expect_local_response(403);
        let text = client.body_text();
        assert!(text.contains("premium-needs-owner") && text.contains("needs a task and a user"), "{path}: {text}");
        assert!(s.upstream().headers.is_none(), "{path}: nothing upstream");
        let mut ok = gw.stream();
        ok.send_request(&refs(&with(with(h.clone(), "x-auth-task", "t-9"), "authorization", "Bearer sk-test-alice")), &body);
        assert!(ok.client().local_reply.is_none(), "{path}: with a task and an owner it goes through");
    }
    flush_counters(&gw);
    assert_eq!(gw.counter("tollgate_guard_unattributed_refused"), 4);
}

#[test]
fn a_premium_run_without_a_task_can_be_downgraded_to_the_fallback() {
    let gw = guarded(json!({"require_task": [{"name": "premium-alias", "match": {"model": "tier:premium"}, "otherwise": "downgrade", "fallback_model": "test-chat"}]}));
    let body = br#"{"model":"tier:premium","messages":[{"role":"user","content":"hi"}]}"#;
    let mut s = gw.stream();
    s.send_request(&refs(&post("/v1/chat/completions", body)), body);
    s.expect_upstream_body(br#"{"model":"tg-chat","messages":[{"role":"user","content":"hi"}]}"#);
    assert_eq!(s.filter_state("wasm.tollgate.rule").as_deref(), Some("chat"), "the fallback is routed like a requested model");
    assert_eq!(s.filter_state("wasm.tollgate.guard").as_deref(), Some("downgraded:premium-alias"));
    let mut with_task = gw.stream();
    with_task.send_request(&refs(&with(post("/v1/chat/completions", body), "x-auth-task", "t-1")), body);
    assert_eq!(with_task.filter_state("wasm.tollgate.rule").as_deref(), Some("premium"));

    let gw = guarded(json!({"require_task": [{"name": "concrete", "match": {"model": "test-claude"}, "otherwise": "downgrade", "fallback_model": "cheap-model"}]}));
    let body = br#"{"model":"test-claude","max_tokens":10,"messages":[]}"#;
    let mut s = gw.stream();
    s.send_request(&refs(&post("/v1/messages", body)), body);
    s.expect_upstream_body(br#"{"model":"cheap-model","max_tokens":10,"messages":[]}"#);
}

#[test]
fn responses_of_a_task_carry_its_cost_so_far_when_configured() {
    use tollgate_host_tests::fixtures::cases;
    let gw = guarded(json!({"task_cost_header": true}));
    let case = cases().into_iter().find(|c| c.name == "openai chat json").expect("fixture");
    let task_headers = with(case.headers(), "x-auth-task", "fix-ci-42");
    let mut seen = Vec::new();
    for _ in 0..3 {
        let mut s = gw.stream();
        s.send_request(&refs(&task_headers), &case.request);
        s.respond(&refs(&case.response_headers()), &case.response);
        seen.push(s.client().header("x-tollgate-task-cost").map(str::to_owned));
    }
    let c = case.cost_micros();
    assert_eq!(
        seen,
        [Some("cost_micros=0; requests=0".to_owned()), Some(format!("cost_micros={c}; requests=1")), Some(format!("cost_micros={}; requests=2", 2 * c))]
    );
    let mut untasked = gw.stream();
    untasked.send_request(&refs(&case.headers()), &case.request);
    untasked.respond(&refs(&case.response_headers()), &case.response);
    assert_eq!(untasked.client().header("x-tollgate-task-cost"), None, "no task, no header");

    let plain = guarded(json!({}));
    let mut s = plain.stream();
    s.send_request(&refs(&task_headers), &case.request);
    s.respond(&refs(&case.response_headers()), &case.response);
    assert_eq!(s.client().header("x-tollgate-task-cost"), None, "not configured, no header");
}

#[test]
fn a_task_that_keeps_failing_is_stopped_even_when_each_attempt_differs() {
    let gw = retry_guard();
    let failing = [(":status", "500"), ("content-type", "application/json")];
    let ok = [(":status", "200"), ("content-type", "application/json")];
    let attempt = |i: usize, status: &[(&str, &str)]| -> Option<u16> {
        let body = format!(r#"{{"model":"test-chat","messages":[{{"role":"user","content":"try fix number {i}"}}]}}"#);
        let mut s = gw.stream();
        s.send_request(&refs(&headers(body.as_bytes(), Some("flaky"), &[])), body.as_bytes());
        if let Some(reply) = s.client().local_reply {
            let message = s.client().json()["error"]["message"].as_str().unwrap_or_default().to_owned();
            assert!(message.contains("task \"flaky\" failed 3 times in a row"), "{message}");
            return Some(reply.status as u16);
        }
        s.respond(status, br#"{"error":{"message":"upstream broke"}}"#);
        None
    };
    let got: Vec<Option<u16>> = (0..4).map(|i| attempt(i, &failing)).collect();
    assert_eq!(got, [None, None, None, Some(429)], "three failures in a row, then the task is stopped");
    assert_eq!(attempt(9, &failing), Some(429), "still stopped");
    let mut approved = gw.stream();
    let body = br#"{"model":"test-chat","messages":[{"role":"user","content":"approved retry"}]}"#;
    approved.send_request(&refs(&headers(body, Some("flaky"), &[(CHECKPOINT, "cp-7")])), body);
    assert!(approved.client().local_reply.is_none(), "a checkpoint clears the streak");
    approved.respond(&ok, br#"{"id":"x","choices":[],"usage":{"prompt_tokens":1,"completion_tokens":1}}"#);
    let got: Vec<Option<u16>> = (10..13).map(|i| attempt(i, &failing)).collect();
    assert_eq!(got, [None, None, None], "a success ended the streak: three more failures are allowed");
    assert_eq!(attempt(20, &failing), Some(429));
    assert_eq!(attempt(21, &ok), Some(429));
}

// The count shared through the counter (docs/guards.md, "Where the count lives, and the bound"):
// two gateways (two hosts, each with its own shared data) deliver their guard events with their
// usage posts to one counter and merge its answers.

/// The counter's half of the exchange as `counter/tests/api.rs` specifies it for both stores:
/// each event stored once by id; per key of a batch, the passed or observed attempts of *other*
/// gateways since the event's `since_ms` and after the task's newest checkpoint; per streak key
/// (outcome events), the other gateways' failures since `since_ms` after the checkpoint and after
/// the newest success anywhere, and the newest success elsewhere with the asking gateway's own
/// failures after it (`counter::task::streak`); the newest checkpoint of every checkpointed task
/// for every key seen with that task.
#[derive(Default)]
struct Counter {
    /// id -> (gateway, key, task, kind, at_ms): the counted attempts.
    events: std::collections::BTreeMap<String, (String, String, String, String, i64)>,
    /// The same for the outcomes of task attempts (a request's outcome has its attempt's id).
    outcomes: std::collections::BTreeMap<String, (String, String, String, String, i64)>,
    /// (task, id, at_ms), oldest first.
    checkpoints: Vec<(String, String, i64)>,
    batches: Vec<Value>,
}

impl Counter {
    fn usage(&mut self, batch: &Value) -> Value {
        self.batches.push(batch.clone());
        let gateway = batch["gateway_id"].as_str().unwrap().to_owned();
        let empty = Vec::new();
        let events = batch["guard_events"].as_array().unwrap_or(&empty);
        let is_outcome = |e: &Value| matches!(e["kind"].as_str(), Some("failed" | "succeeded"));
        for e in events {
            let s = |f: &str| e[f].as_str().unwrap_or_default().to_owned();
            let store = if is_outcome(e) { &mut self.outcomes } else { &mut self.events };
            store.entry(s("id")).or_insert((gateway.clone(), s("key"), s("task"), s("kind"), e["at_ms"].as_i64().unwrap()));
        }
        let (mut counts, mut streaks) = (Vec::new(), Vec::new());
        for e in events {
            let (key, task, since) = (e["key"].as_str().unwrap(), e["task"].as_str().unwrap_or_default(), e["since_ms"].as_i64().unwrap());
            let cp_at = self.checkpoints.iter().filter(|c| c.0 == task).map(|c| c.2).max().unwrap_or(i64::MIN);
            if is_outcome(e) {
                let of_key = || self.outcomes.values().filter(|o| o.1 == key);
                let success = of_key().filter(|o| o.3 == "succeeded").map(|o| o.4).max().unwrap_or(i64::MIN);
                let failures = |mine: bool| of_key().filter(|o| (o.0 == gateway) == mine && o.3 == "failed" && o.4 >= since && o.4 > cp_at && o.4 > success).count();
                let ended = of_key().filter(|o| o.0 != gateway && o.3 == "succeeded" && o.4 >= since).map(|o| o.4).max();
                let mut answer = json!({"key": key, "since_ms": since, "others": failures(false)});
                if let Some(at) = ended {
                    answer["ended_ms"] = json!(at);
                    answer["own_since_end"] = json!(failures(true));
                }
                streaks.push(answer);
            } else {
                let others = self.events.values().filter(|(g, k, _, kind, at)| *g != gateway && k == key && kind != "refused" && *at >= since && *at > cp_at).count();
                counts.push(json!({"key": key, "since_ms": since, "others": others}));
            }
        }
        let mut checkpoints = Vec::new();
        for (task, id, at) in self.checkpoints.iter().rev() {
            let keys: std::collections::BTreeSet<&String> = self.events.values().chain(self.outcomes.values()).filter(|e| &e.2 == task).map(|e| &e.1).collect();
            checkpoints.extend(keys.into_iter().map(|k| json!({"key": k, "checkpoint": id, "at_ms": at})));
        }
        let n = batch["records"].as_array().map_or(0, |r| r.len());
        json!({"accepted": n, "duplicates": 0, "guard": {"counts": counts, "streaks": streaks, "checkpoints": checkpoints}})
    }
}

const START_MS: u64 = 1_767_225_600_000;

/// A gateway named `name` with the retry guard and enforcement (usage posted every second), its
/// calls not answered yet.
fn guarded_enforcing_gateway(name: &str) -> Gateway {
    let mut v: Value = serde_json::from_str(TEST_CONFIG).expect("TEST_CONFIG is JSON");
    v["gateway_id"] = json!(name);
    v["attribution"]["trusted_headers"]["task"] = json!("x-auth-task");
    v["guards"] = json!({"retry": {"expensive": {"model": "tg-*"}}});
    v["enforcement"] = json!({
        "counter_cluster": "tollgate_counter", "gateway_token": "gt", "lease_slice_usd": "1",
        "flush_interval_ms": 1000, "call_timeout_ms": 500, "default_max_output_tokens": 1000
    });
    Gateway::new(v.to_string()).clock_at(START_MS)
}

/// A gateway with the retry guard and enforcement, its calls answered by `counter` (no budgets).
fn shared_gateway(name: &str, counter: &std::rc::Rc<std::cell::RefCell<Counter>>) -> Gateway {
    let gw = guarded_enforcing_gateway(name);
    let counter = counter.clone();
    gw.auto_answer(move |call| match call.path() {
        "/v1/usage" => Answer::json(200, &counter.borrow_mut().usage(&call.json())),
        _ => Answer::json(200, &json!({"budgets": []})),
    });
    gw
}

/// Both gateways' clocks move on past a delivery interval: each posts what it has.
fn deliver(gws: &[&Gateway]) {
    for gw in gws {
        gw.advance(Duration::from_millis(2_000));
    }
}

#[test]
fn two_gateways_sharing_the_count_through_the_counter_let_fewer_through_than_two_apart() {
    let counter = std::rc::Rc::new(std::cell::RefCell::new(Counter::default()));
    let (a, b) = (shared_gateway("gw-a", &counter), shared_gateway("gw-b", &counter));
    let mut got = Vec::new();
    for i in 0..10 {
        let gw = if i % 2 == 0 { &a } else { &b };
        got.push(send(gw, FIX, Some("fix-ci-42")));
        deliver(&[&a, &b]);
    }
    assert_eq!(
        got,
        [None, None, None, None, Some(429), Some(429), Some(429), Some(429), Some(429), Some(429)],
        "spaced beyond the delivery interval: 1 + 2 retries, plus the second gateway's first attempt (made before it had heard of the others); apart, each gateway would let 3 through (6)"
    );
    let c = counter.borrow();
    assert_eq!(c.events.len(), 10, "every counted attempt was delivered once: {:?}", c.events.keys().collect::<Vec<_>>());
    assert_eq!(c.events.values().filter(|e| e.3 == "refused").count(), 6);
    assert!(c.batches.iter().all(|b| b["records"].is_array()), "guard events ride the usage posts");
}

#[test]
fn a_checkpoint_made_at_the_counter_lets_the_next_attempt_through_after_the_next_delivery() {
    let counter = std::rc::Rc::new(std::cell::RefCell::new(Counter::default()));
    let gw = shared_gateway("gw-a", &counter);
    for _ in 0..3 {
        assert_eq!(send(&gw, FIX, Some("fix-ci-42")), None);
    }
    assert_eq!(send(&gw, FIX, Some("fix-ci-42")), Some(429));
    deliver(&[&gw]);
    assert_eq!(send(&gw, FIX, Some("fix-ci-42")), Some(429), "no checkpoint yet");
    counter.borrow_mut().checkpoints.push(("fix-ci-42".into(), "cp-1".into(), START_MS as i64 + 2_500));
    deliver(&[&gw]);
    assert_eq!(send(&gw, FIX, Some("fix-ci-42")), None, "the checkpoint arrived with the delivery: no header needed");
    assert_eq!(send(&gw, FIX, Some("fix-ci-42")), None);
    assert_eq!(send(&gw, FIX, Some("fix-ci-42")), None);
    assert_eq!(send(&gw, FIX, Some("fix-ci-42")), Some(429), "a new count: 1 + 2 retries again");
    deliver(&[&gw]);
    assert_eq!(send(&gw, FIX, Some("fix-ci-42")), Some(429), "the same checkpoint delivered again resets nothing");
}

/// One attempt of task `task` on `gw`, a request unlike any before it (`i`), answered `status`
/// by the upstream when the filter lets it through; `Some(status)` when the filter refused it.
fn task_attempt_on(gw: &Gateway, task: &str, i: usize, status: &str) -> Option<u16> {
    let body = format!(r#"{{"model":"test-chat","messages":[{{"role":"user","content":"try fix number {i}"}}]}}"#);
    let mut s = gw.stream();
    s.send_request(&refs(&headers(body.as_bytes(), Some(task), &[])), body.as_bytes());
    if let Some(reply) = s.client().local_reply {
        return Some(reply.status as u16);
    }
    s.respond(&[(":status", status), ("content-type", "application/json")], br#"{"id":"x","choices":[],"usage":{"prompt_tokens":1,"completion_tokens":1}}"#);
    None
}

#[test]
fn a_task_failing_on_one_gateway_then_another_is_stopped_past_its_allowed_retries() {
    let counter = std::rc::Rc::new(std::cell::RefCell::new(Counter::default()));
    let (a, b) = (shared_gateway("gw-a", &counter), shared_gateway("gw-b", &counter));
    let mut got = Vec::new();
    for i in 0..6 {
        let gw = if i % 2 == 0 { &a } else { &b };
        got.push(task_attempt_on(gw, "flaky", i, "500"));
        deliver(&[&a, &b]);
    }
    assert_eq!(
        got,
        [None, None, None, None, Some(429), Some(429)],
        "every attempt a different request (the retry count never trips), each failing, alternating A, B, spaced beyond the delivery interval: \
         three failures in a row (A, B, A) spend the allowance; B's second attempt passes (B had heard of one of A's two failures), then both refuse; \
         apart, each gateway would let three failures through (six)"
    );
    let c = counter.borrow();
    let failed = c.outcomes.values().filter(|o| o.3 == "failed").count();
    assert_eq!(failed, 4, "every settled attempt's outcome was delivered once: {:?}", c.outcomes);
}

#[test]
fn a_success_on_another_gateway_ends_the_streak() {
    let counter = std::rc::Rc::new(std::cell::RefCell::new(Counter::default()));
    let (a, b) = (shared_gateway("gw-a", &counter), shared_gateway("gw-b", &counter));
    assert_eq!(task_attempt_on(&a, "flaky", 0, "500"), None);
    assert_eq!(task_attempt_on(&a, "flaky", 1, "500"), None);
    deliver(&[&a, &b]);
    assert_eq!(task_attempt_on(&b, "flaky", 2, "200"), None, "the task succeeds on B");
    deliver(&[&a, &b]);
    // A hears of B's success with its next post: its two failures before it no longer count, the
    // one after it does.
    assert_eq!(task_attempt_on(&a, "flaky", 3, "500"), None);
    deliver(&[&a, &b]);
    let got: Vec<Option<u16>> = (4..7).map(|i| task_attempt_on(&a, "flaky", i, "500")).collect();
    assert_eq!(got, [None, None, Some(429)], "the streak began again at B's success: three failures (one before A heard of it), then refused; without B's success A would refuse its fourth attempt");
}

/// A counter older than the guard events (it answers 400 to a batch carrying any) still gets
/// every usage record: the gateway drops the events after the refusal and resends the records
/// without them. The events only share counts; the records are the books.
#[test]
fn a_counter_that_refuses_guard_events_still_gets_every_record() {
    let gw = guarded_enforcing_gateway("gw-a");
    let accepted = std::rc::Rc::new(std::cell::RefCell::new(Vec::<String>::new()));
    let refused = std::rc::Rc::new(std::cell::Cell::new(0u32));
    let (acc, refd) = (accepted.clone(), refused.clone());
    gw.auto_answer(move |call| match call.path() {
        "/v1/usage" => {
            let batch = call.json();
            if batch["guard_events"].as_array().is_some_and(|e| !e.is_empty()) {
                refd.set(refd.get() + 1);
                return Answer::json(400, &json!({"error": "guard_events[0].kind: unknown kind"}));
            }
            let records = batch["records"].as_array().cloned().unwrap_or_default();
            acc.borrow_mut().extend(records.iter().map(|r| r["id"].as_str().unwrap_or_default().to_owned()));
            Answer::json(200, &json!({"accepted": records.len(), "duplicates": 0}))
        }
        _ => Answer::json(200, &json!({"budgets": []})),
    });
    for i in 0..2 {
        assert_eq!(task_attempt_on(&gw, "fix-ci-42", i, "200"), None);
    }
    deliver(&[&gw]);
    deliver(&[&gw]);
    assert!(refused.get() >= 1, "the first post carried guard events and was refused");
    let ids = accepted.borrow();
    assert_eq!(ids.len(), 2, "both records arrived once, on a post without events: {ids:?}");
    assert_ne!(ids[0], ids[1]);
}
