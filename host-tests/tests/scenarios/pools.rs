//! Worker-local lease pools (issue 15 §3, `core::enforce::pool`): with steady traffic a worker
//! holds its own share of a scope's slice, so a request reserves and settles in the worker's
//! memory with no shared-data call; the pools are written back on the tick, given back when the
//! traffic stops and when the plugin is torn down, and a budget is refused where it would be
//! without them.

use crate::common::*;
use serde_json::{json, Value};
use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::rc::Rc;
use tollgate_core::enforce::book::ScopeEntry;
use tollgate_host_tests::fixtures::{cases, refs, Case, TEST_CONFIG};
use tollgate_host_tests::*;

const TICK: Duration = Duration::from_millis(20);

fn chat() -> Case {
    cases().into_iter().find(|c| c.name == "openai chat json").expect("fixture")
}

/// A gateway with two workers and a `lease_slice_usd` of `slice`.
fn two_workers(slice: &str) -> Gateway {
    let mut v: Value = serde_json::from_str(TEST_CONFIG).expect("TEST_CONFIG is JSON");
    v["enforcement"] = json!({
        "counter_cluster": "tollgate_counter",
        "gateway_token": "gt-secret",
        "lease_slice_usd": slice,
        "flush_interval_ms": 100,
        "default_max_output_tokens": 1000
    });
    Gateway::new(v.to_string()).workers(2)
}

/// The counter, played here: one budget per scope asked about with `hard` micro-dollars of hard
/// limit, granting `min(want, hard - spent)` (one gateway, so no other slices), charging each
/// record once.
#[derive(Default)]
struct Counter {
    hard: i64,
    spent: i64,
    seen: BTreeSet<String>,
    /// Grants made (each stamps a later lease expiry, as a real counter's clock does).
    grants: i64,
}

impl Counter {
    fn answer(&mut self, call: &HttpCall) -> Answer {
        let req = call.json();
        if call.path() == "/v1/usage" {
            let records = req["records"].as_array().cloned().unwrap_or_default();
            for r in &records {
                if self.seen.insert(r["id"].as_str().unwrap_or_default().to_owned()) {
                    self.spent += r["cost_micros"].as_i64().unwrap_or(0);
                }
            }
            return Answer::json(200, &json!({"accepted": records.len(), "duplicates": 0}));
        }
        self.grants += 1;
        let want = req["want_micros"].as_i64().unwrap_or(0);
        let granted = want.min(self.hard - self.spent).max(0);
        let budgets: Vec<Value> = req["scopes"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|scope| {
                json!({
                    "budget_id": format!("b-{}", scope.as_str().unwrap_or("?")), "scope": scope, "mode": "enforce",
                    "granted_micros": granted, "spent_micros": self.spent,
                    "limit_micros": self.hard, "hard_limit_micros": self.hard,
                    "soft_threshold_pct": 80, "status": if self.spent >= self.hard { "hard" } else { "ok" },
                    "resets_at": null, "lease_expires_at_ms": 4_000_000_000_000i64 + self.grants
                })
            })
            .collect();
        Answer::json(200, &json!({ "budgets": budgets }))
    }
}

fn with_counter(gw: &Gateway, hard: i64) -> Rc<RefCell<Counter>> {
    let counter = Rc::new(RefCell::new(Counter { hard, ..Counter::default() }));
    let c = counter.clone();
    gw.auto_answer(move |call| c.borrow_mut().answer(call));
    counter
}

/// One chat request on `worker`, to the end: `Some(true)` served, `Some(false)` refused (429).
fn request(gw: &Gateway, worker: usize, id: &str) -> bool {
    let c = chat();
    let headers = with(with(c.headers(), "x-auth-team", "platform"), "x-request-id", id);
    let mut s = gw.stream_on(worker);
    s.send_request(&refs(&headers), &c.request);
    if s.upstream().headers.is_none() {
        s.expect_local_response(429);
        return false;
    }
    s.expect_upstream_body(&c.upstream_request);
    s.respond(&refs(&c.response_headers()), &c.response);
    assert_eq!(s.client().status(), Some(200));
    true
}

fn entry(gw: &Gateway, scope: &str) -> ScopeEntry {
    let (bytes, _) = gw.shared_data(&format!("tollgate.lease.{scope}")).unwrap_or_else(|| panic!("{scope} has a lease entry"));
    ScopeEntry::decode(&bytes).expect("the entry decodes")
}

/// Shared-data calls (reads and writes) made while `run` runs.
fn shared_data_calls(gw: &Gateway, run: impl FnOnce()) -> BTreeMap<&'static str, u64> {
    let before = gw.host_calls();
    run();
    gw.host_calls()
        .into_iter()
        .filter(|(name, _)| name.contains("shared_data"))
        .map(|(name, n)| (name, n - before.get(name).copied().unwrap_or(0)))
        .filter(|(_, n)| *n > 0)
        .collect()
}

#[test]
fn in_steady_state_a_request_makes_no_shared_data_call_and_the_pools_go_back_when_traffic_stops() {
    let gw = two_workers("1");
    let counter = with_counter(&gw, 1_000_000_000);
    let mut id = 0;
    let mut next = || {
        id += 1;
        format!("req-{id}")
    };
    // Three requests per worker per tick: each worker takes a pool on both scopes of the chain.
    for _ in 0..5 {
        for worker in [0, 1, 0, 1, 0, 1] {
            assert!(request(&gw, worker, &next()));
        }
        gw.advance(TICK);
    }
    let worst = 5_560;
    for scope in ["org:acme", "team:platform"] {
        let held = entry(&gw, scope).budgets[0].reserved;
        assert!(held >= 2 * worst, "{scope}: both workers' pools are held in the shared entry as reservations ({held})");
    }
    for worker in [0, 1] {
        // The first request after a tick counts the worker's outbox into the process-wide
        // unacknowledged gauge (usage delivery's one read and write per tick, not the book's).
        assert!(request(&gw, worker, &next()));
        let calls = shared_data_calls(&gw, || assert!(request(&gw, worker, &next())));
        assert!(calls.is_empty(), "worker {worker}: a request in steady state reads and writes no shared data: {calls:?}");
    }
    // Every record is delivered and charged once; the costs reached the book.
    gw.advance(TICK);
    gw.advance(Duration::from_millis(200));
    let served = 5 * 6 + 4;
    assert_eq!(counter.borrow().seen.len(), served, "every served request's record reached the counter once");
    assert_eq!(counter.borrow().spent, served as i64 * chat().cost_micros());
    // Traffic stops: the next tick gives the pools back; nothing is left held or unacknowledged.
    gw.advance(Duration::from_millis(1000));
    for scope in ["org:acme", "team:platform"] {
        let e = entry(&gw, scope);
        assert_eq!((e.budgets[0].reserved, e.unacked), (0, 0), "{scope}: pools given back, every cost acknowledged");
        assert_eq!(e.acked_total, served as i64 * chat().cost_micros(), "{scope}");
    }
    flush_counters(&gw);
    assert_eq!(gw.counter("tollgate_enforce_admitted_total"), served as u64);
    assert_eq!(gw.counter("tollgate_enforce_settled_total"), served as u64);
    let pooled = gw.counter("tollgate_enforce_pooled_total");
    // The four checked above made no shared-data call; the first tick's six came before any pool.
    assert!((4..=served as u64 - 6).contains(&pooled), "requests admitted from the pools are counted, the others not: {pooled} of {served}");
}

/// The same budget, driven to its hard limit by the same two workers, once with traffic light
/// enough that no pool is taken (one request a tick) and once dense enough that both workers
/// hold pools (three each a tick): it is refused at the same point, nothing over the limit.
#[test]
fn with_pools_across_workers_a_budget_is_refused_at_the_same_point() {
    let run = |per_tick: usize| {
        let gw = two_workers("0.05");
        let counter = with_counter(&gw, 400_000);
        let (mut served, mut refused_in_a_row, mut n, mut pooled_ticks) = (0, 0, 0, 0);
        while refused_in_a_row < 20 && n < 4_000 {
            for i in 0..per_tick {
                n += 1;
                if request(&gw, i % 2 + n % 2 * usize::from(per_tick == 1), &format!("r-{n}")) {
                    served += 1;
                    refused_in_a_row = 0;
                } else {
                    refused_in_a_row += 1;
                }
            }
            gw.advance(TICK);
            let held = entry(&gw, "org:acme").budgets[0].reserved;
            pooled_ticks += usize::from(held > 0);
        }
        gw.advance(Duration::from_millis(1000));
        let spent = counter.borrow().spent;
        (served, spent, pooled_ticks)
    };
    let (sparse, sparse_spent, sparse_pooled) = run(1);
    let (dense, dense_spent, dense_pooled) = run(6);
    assert_eq!(sparse_pooled, 0, "one request a tick: no pool");
    assert!(dense_pooled > 10, "three requests per worker a tick: pools held ({dense_pooled} ticks)");
    assert!(dense_spent <= 400_000 && sparse_spent <= 400_000, "never over the limit: {dense_spent}, {sparse_spent}");
    assert_eq!((dense, dense_spent), (sparse, sparse_spent), "served and spent with pools (left) and without (right)");
}

/// The plugin torn down (a configuration push, Envoy stopping: `on_done`) with pools held and a
/// request of one pool still in flight: every worker writes its pools back, so the book a successor
/// finds holds only that request's worst case; its settlement, after the teardown, is written at
/// once and leaves nothing held.
#[test]
fn a_teardown_gives_every_pool_back_to_the_shared_book() {
    let gw = two_workers("1");
    let _counter = with_counter(&gw, 1_000_000_000);
    let mut n = 0;
    for _ in 0..3 {
        for worker in [0, 1, 0, 1, 0, 1] {
            n += 1;
            assert!(request(&gw, worker, &format!("t-{n}")));
        }
        gw.advance(TICK);
    }
    assert!(entry(&gw, "org:acme").budgets[0].reserved > 0, "pools held");
    let c = chat();
    let mut in_flight = gw.stream_on(0);
    in_flight.send_request(&refs(&with(with(c.headers(), "x-auth-team", "platform"), "x-request-id", "last")), &c.request);
    in_flight.expect_upstream_body(&c.upstream_request);
    assert!(gw.shutdown(), "every root context is done");
    let worst = 5_560;
    for scope in ["org:acme", "team:platform"] {
        assert_eq!(entry(&gw, scope).budgets[0].reserved, worst, "{scope}: only the request in flight is held");
    }
    in_flight.respond(&refs(&c.response_headers()), &c.response);
    for scope in ["org:acme", "team:platform"] {
        let e = entry(&gw, scope);
        assert_eq!(e.budgets[0].reserved, 0, "{scope}: settled after the teardown, written at once");
        assert_eq!(e.unacked + e.acked_total, (3 * 6 + 1) * c.cost_micros(), "{scope}: every cost is in the book");
    }
}
