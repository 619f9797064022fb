//! A randomized simulation of the whole lease protocol: a model counter, several gateways with
//! their own books, and every message (lease calls, usage posts, acknowledgements) delivered late
//! and interleaved at random; each gateway has two workers that take lease pools on their ticks and
//! admit from them in memory (`super::pool`), records of pooled requests queued only on the tick
//! that writes their costs. It checks the overspend bound of docs/enforcement.md:
//!
//! per enforce-mode budget, `spent <= hard_limit + Σ (actual - reserved)^+`
//!
//! and that once everything has settled and been acknowledged, no reservation is left behind.

use super::book::{Ask, ScopeEntry};
use super::chain::{self, Decision, LeaseStore, RefillTicket, Reservation, StoreError};
use super::pool::{self, Pool};
use super::config::{EnforcementConfig, EnforcementSettings};
use super::queue::{costs_by_scope, QueuedRecord};
use crate::money::Micros;
use crate::protocol::{BudgetLease, BudgetMode, BudgetStatus, LeaseRequest, LeaseResponse, Principal, Tokens, UsageRecord};
use proptest::prelude::*;
use std::collections::{BTreeMap, BTreeSet};

/// In-memory versioned store; `conflict_every` makes every n-th write fail with a conflict.
#[derive(Default)]
struct MemStore {
    entries: BTreeMap<String, (ScopeEntry, u32)>,
    writes: u32,
    conflict_every: u32,
}

impl LeaseStore for MemStore {
    fn load(&self, scope: &str) -> (Option<ScopeEntry>, Option<u32>) {
        match self.entries.get(scope) {
            Some((e, v)) => (Some(e.clone()), Some(*v)),
            None => (None, None),
        }
    }
    fn store(&mut self, scope: &str, entry: &ScopeEntry, version: Option<u32>) -> Result<(), StoreError> {
        self.writes += 1;
        if self.conflict_every > 0 && self.writes.is_multiple_of(self.conflict_every) {
            return Err(StoreError::Conflict);
        }
        let current = self.entries.get(scope).map(|(_, v)| *v);
        if current.is_some() && current != version {
            return Err(StoreError::Conflict);
        }
        // Round-trip through the shared-data encoding, as Envoy would.
        let decoded = ScopeEntry::decode(&entry.encode()).ok_or(StoreError::Failed)?;
        self.entries.insert(scope.to_owned(), (decoded, current.unwrap_or(0) + 1));
        Ok(())
    }
}

/// One budget in the model counter: id, hard limit, spent, slices by gateway (slice, expiry).
type ModelBudget = (String, Micros, Micros, BTreeMap<usize, (Micros, i64)>);

/// The counter's side of the contract (core::protocol's doc comment), kept minimal.
struct ModelCounter {
    /// scope → its budget
    budgets: BTreeMap<String, ModelBudget>,
    seen: BTreeSet<String>,
    ttl_ms: i64,
}

impl ModelCounter {
    /// One budget, `team-a` on `team:a`, nothing spent, 60 s leases (the deterministic cases).
    fn team_a(hard: Micros) -> ModelCounter {
        ModelCounter {
            budgets: BTreeMap::from([("team:a".to_owned(), ("team-a".to_owned(), hard, 0, BTreeMap::new()))]),
            seen: BTreeSet::new(),
            ttl_ms: 60_000,
        }
    }

    fn grant(&mut self, gateway: usize, request: &LeaseRequest, now: i64) -> LeaseResponse {
        let mut out = Vec::new();
        for scope in &request.scopes {
            let Some((id, hard, spent, slices)) = self.budgets.get_mut(scope) else { continue };
            slices.retain(|_, (_, exp)| *exp > now);
            let others: Micros = slices.iter().filter(|(g, _)| **g != gateway).map(|(_, (s, _))| *s).sum();
            // A live slice granted after what the caller knew at send is never lowered by the call.
            let kept = slices.get(&gateway).filter(|(_, exp)| request.keeps_slice(id, *exp)).map_or(0, |(s, _)| *s);
            let granted = request.want_micros.max(kept).min((*hard - *spent - others).max(0));
            slices.insert(gateway, (granted, now + self.ttl_ms));
            assert!(*spent + others + granted <= *hard || granted == 0, "counter invariant");
            out.push(BudgetLease {
                budget_id: id.clone(),
                scope: scope.clone(),
                mode: BudgetMode::Enforce,
                granted_micros: granted,
                spent_micros: *spent,
                limit_micros: *hard,
                hard_limit_micros: *hard,
                soft_threshold_pct: 80,
                status: if *spent >= *hard { BudgetStatus::Hard } else { BudgetStatus::Ok },
                resets_at: None,
                lease_expires_at_ms: now + self.ttl_ms,
                reserve_output_tokens: Default::default(),
                reserve_excess_micros: 0,
            });
        }
        LeaseResponse { budgets: out }
    }

    fn ingest(&mut self, gateway: usize, records: &[QueuedRecord]) {
        for r in records {
            if !self.seen.insert(r.id.clone()) {
                continue;
            }
            for scope in &r.scopes {
                if let Some((_, _, spent, slices)) = self.budgets.get_mut(scope) {
                    *spent += r.cost_micros;
                    if let Some((slice, _)) = slices.get_mut(&gateway) {
                        *slice = (*slice - r.cost_micros).max(0);
                    }
                }
            }
        }
    }
}

struct Gateway {
    store: MemStore,
    /// `(reservation, actual, scopes, admitted from the pools of this worker)`.
    in_flight: Vec<(Reservation, Micros, Vec<String>, Option<usize>)>,
    queue: Vec<QueuedRecord>,
    /// Two workers, each with its pools (by scope), the worst cases it admitted since its last
    /// tick (by scope), and the records it settled from its pools, queued on its tick after the
    /// pools are written back (as the plugin's tick does).
    workers: [SimWorker; 2],
}

#[derive(Default)]
struct SimWorker {
    pools: BTreeMap<String, Pool>,
    demand: BTreeMap<String, (u32, Micros)>,
    outbox: Vec<QueuedRecord>,
}

/// The budgeted scopes of the model (the only ones a pool can be taken on).
const POOLED_SCOPES: [&str; 2] = ["team:a", "user:u0"];

/// A worker's tick: every pool (and every scope it saw traffic on) written back and resized to
/// what its traffic asks (`drain`: nothing), then its outbox queued.
fn pool_tick(g: &mut Gateway, worker: usize, drain: bool, now: i64, s: &EnforcementSettings) {
    let w = &mut g.workers[worker];
    let demand = std::mem::take(&mut w.demand);
    for scope in POOLED_SCOPES {
        let (admitted, worst) = demand.get(scope).copied().unwrap_or((0, 0));
        let target = if drain { 0 } else { pool::target(admitted, worst, 1, s) };
        let current = w.pools.get(scope).cloned().unwrap_or_default();
        if current.is_empty() && target == 0 {
            continue;
        }
        if let Ok(written) = chain::write_pool(&mut g.store, scope, &current, target, now, s) {
            w.pools.insert(scope.to_owned(), written.pool);
        }
    }
    g.queue.append(&mut w.outbox);
}

#[derive(Debug, Clone)]
enum Op {
    Start { gateway: usize, user: u8, worst: Micros, overrun: bool, ratio_pct: u8 },
    Finish(usize),
    CounterLease(usize),
    ApplyLease(usize),
    Flush(usize),
    CounterUsage(usize),
    ApplyAck(usize),
    Tick(u16),
    /// A worker's tick (gateway, worker).
    PoolTick(usize, usize),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0usize..3, 0u8..3, 1_000i64..900_000, prop::bool::weighted(0.1), 0u8..=100)
            .prop_map(|(gateway, user, worst, overrun, ratio_pct)| Op::Start { gateway, user, worst, overrun, ratio_pct }),
        3 => any::<usize>().prop_map(Op::Finish),
        2 => any::<usize>().prop_map(Op::CounterLease),
        2 => any::<usize>().prop_map(Op::ApplyLease),
        1 => (0usize..3).prop_map(Op::Flush),
        1 => any::<usize>().prop_map(Op::CounterUsage),
        1 => any::<usize>().prop_map(Op::ApplyAck),
        1 => (1u16..400).prop_map(Op::Tick),
        2 => (0usize..3, 0usize..2).prop_map(|(g, w)| Op::PoolTick(g, w)),
    ]
}

fn settings() -> EnforcementSettings {
    EnforcementConfig::from_json(
        r#"{"counter_cluster":"c","gateway_token":"t","lease_slice_usd":"0.5","recheck_after_ms":200,
            "call_timeout_ms":100000,"renew_before_expiry_ms":1000}"#,
    )
    .unwrap_or_else(|e| panic!("{e}"))
}

fn run(ops: Vec<Op>, conflict_every: u32) -> Result<(), TestCaseError> {
    let s = settings();
    let mut counter = ModelCounter {
        budgets: BTreeMap::from([
            ("team:a".to_owned(), ("team-a".to_owned(), 3_000_000, 0, BTreeMap::new())),
            ("user:u0".to_owned(), ("user-u0".to_owned(), 1_000_000, 0, BTreeMap::new())),
        ]),
        seen: BTreeSet::new(),
        ttl_ms: 1_000_000_000,
    };
    let mut gateways: Vec<Gateway> = (0..3)
        .map(|_| Gateway {
            store: MemStore { conflict_every, ..Default::default() },
            in_flight: vec![],
            queue: vec![],
            workers: Default::default(),
        })
        .collect();
    let mut lease_calls: Vec<(usize, RefillTicket)> = vec![];
    let mut lease_answers: Vec<(usize, RefillTicket, LeaseResponse)> = vec![];
    let mut posts: Vec<(usize, Vec<QueuedRecord>)> = vec![];
    let mut acks: Vec<(usize, Vec<QueuedRecord>)> = vec![];
    let mut excess: BTreeMap<String, Micros> = BTreeMap::new();
    let mut now: i64 = 1_000;
    let mut next_id = 0u64;

    let drive = |ops: &mut dyn Iterator<Item = Op>,
                 gateways: &mut Vec<Gateway>,
                 counter: &mut ModelCounter,
                 lease_calls: &mut Vec<(usize, RefillTicket)>,
                 lease_answers: &mut Vec<(usize, RefillTicket, LeaseResponse)>,
                 posts: &mut Vec<(usize, Vec<QueuedRecord>)>,
                 acks: &mut Vec<(usize, Vec<QueuedRecord>)>,
                 excess: &mut BTreeMap<String, Micros>,
                 now: &mut i64,
                 next_id: &mut u64| {
        for op in ops {
            match op {
                Op::Start { gateway, user, worst, overrun, ratio_pct } => {
                    let g = &mut gateways[gateway];
                    let principal = Principal { team: Some("a".into()), user: Some(format!("u{user}")), ..Default::default() };
                    let scopes = principal.scope_keys();
                    let actual = if overrun { worst + worst / 2 } else { worst * i64::from(ratio_pct) / 100 };
                    // The request lands on one of the gateway's two workers; from its pools if
                    // every scope of the chain is pooled there with room (or has no budget).
                    let wi = usize::from(user) % 2;
                    let w = &mut g.workers[wi];
                    for scope in &scopes {
                        let d = w.demand.entry(scope.clone()).or_default();
                        *d = (d.0 + 1, d.1 + worst);
                    }
                    let from_pools = scopes.iter().all(|scope| {
                        w.pools.get(scope).is_some_and(|p| p.admits(worst, *now))
                            || g.store.load(scope).0.is_some_and(|e| e.budgets.is_empty() && e.known(*now, &s))
                    }) && scopes.iter().any(|scope| w.pools.contains_key(scope));
                    if from_pools {
                        let mut pooled = Vec::new();
                        for scope in &scopes {
                            if let Some(p) = w.pools.get_mut(scope).filter(|p| p.admits(worst, *now)) {
                                p.reserve(worst);
                                pooled.push(scope.clone());
                            }
                        }
                        let reservation = Reservation { scopes: scopes.clone(), amount: worst, reserved_on: pooled.into_iter().map(|s| (s, vec![])).collect(), below_worst: vec![], pooled: true };
                        g.in_flight.push((reservation, actual, scopes, Some(wi)));
                        continue;
                    }
                    match chain::reserve(&mut g.store, &scopes, &Ask::worst_case(worst), *now, &s) {
                        Decision::Admit { reservation, topup, .. } => {
                            g.in_flight.push((reservation, actual, scopes, None));
                            if let Some(ticket) = chain::begin_topup(&mut g.store, &topup, *now, &s) {
                                lease_calls.push((gateway, ticket));
                            }
                        }
                        Decision::Refill { scopes } => {
                            lease_calls.push((gateway, chain::begin_refill(&mut g.store, &scopes, worst, &s)));
                        }
                        Decision::Unavailable | Decision::Refuse(_) => {}
                    }
                }
                Op::Finish(i) => {
                    let Some(gi) = (0..3).map(|k| (i + k) % 3).find(|k| !gateways[*k].in_flight.is_empty()) else { continue };
                    let g = &mut gateways[gi];
                    let (reservation, actual, scopes, pooled_on) = g.in_flight.remove(i % g.in_flight.len());
                    let excess_micros = match pooled_on {
                        Some(wi) => {
                            let w = &mut g.workers[wi];
                            let pooled: Vec<String> = reservation.reserved_on.iter().map(|(s, _)| s.clone()).collect();
                            for scope in &pooled {
                                if let Some(p) = w.pools.get_mut(scope) {
                                    p.settle(reservation.amount, actual);
                                }
                            }
                            // The chain's scopes without a budget: the cost only feeds `unacked`.
                            let rest = scopes.iter().filter(|s| !pooled.contains(s)).cloned().collect();
                            chain::settle(&mut g.store, Reservation::unreserved(rest), actual);
                            (actual - reservation.amount).max(0)
                        }
                        None => chain::settle(&mut g.store, reservation, actual).excess_micros,
                    };
                    for scope in &scopes {
                        *excess.entry(scope.clone()).or_default() += excess_micros;
                    }
                    *next_id += 1;
                    let record = UsageRecord {
                        id: format!("r{next_id}"),
                        principal: Principal {
                            team: Some("a".into()),
                            user: scopes.get(1).and_then(|s| s.strip_prefix("user:")).map(str::to_owned),
                            ..Default::default()
                        },
                        dialect: "openai".into(),
                        requested_model: "m".into(),
                        routed_model: "m".into(),
                        tokens: Tokens::default(),
                        cost_micros: actual,
                        status: 200,
                        estimated: false,
                        started_at_ms: *now,
                        finished_at_ms: *now,
                        p99_reservations: Vec::new(),
                    };
                    let queued = QueuedRecord::from_record(&record).unwrap_or_else(|| panic!("record"));
                    match pooled_on {
                        Some(wi) => g.workers[wi].outbox.push(queued),
                        None => g.queue.push(queued),
                    }
                }
                Op::CounterLease(i) => {
                    if lease_calls.is_empty() {
                        continue;
                    }
                    let (gw, ticket) = lease_calls.remove(i % lease_calls.len());
                    let response = counter.grant(gw, &ticket.request("g"), *now);
                    lease_answers.push((gw, ticket, response));
                }
                Op::ApplyLease(i) => {
                    if lease_answers.is_empty() {
                        continue;
                    }
                    let (gw, ticket, response) = lease_answers.remove(i % lease_answers.len());
                    chain::finish_refill(&mut gateways[gw].store, &ticket, &response, *now);
                }
                Op::Flush(gw) => {
                    let batch: Vec<_> = gateways[gw].queue.drain(..).collect();
                    if !batch.is_empty() {
                        posts.push((gw, batch));
                    }
                }
                Op::CounterUsage(i) => {
                    if posts.is_empty() {
                        continue;
                    }
                    let (gw, batch) = posts.remove(i % posts.len());
                    counter.ingest(gw, &batch);
                    acks.push((gw, batch));
                }
                Op::ApplyAck(i) => {
                    if acks.is_empty() {
                        continue;
                    }
                    let (gw, batch) = acks.remove(i % acks.len());
                    chain::acknowledge(&mut gateways[gw].store, &costs_by_scope(&batch), false);
                }
                Op::Tick(ms) => *now += i64::from(ms),
                Op::PoolTick(gw, wi) => pool_tick(&mut gateways[gw], wi, false, *now, &s),
            }
        }
    };

    drive(
        &mut ops.into_iter(),
        &mut gateways,
        &mut counter,
        &mut lease_calls,
        &mut lease_answers,
        &mut posts,
        &mut acks,
        &mut excess,
        &mut now,
        &mut next_id,
    );
    // Drain: finish everything in flight, deliver every message.
    let mut drain = Vec::new();
    for _ in 0..200 {
        drain.extend([Op::Finish(0), Op::CounterLease(0), Op::ApplyLease(0)]);
    }
    drive(
        &mut drain.into_iter(),
        &mut gateways,
        &mut counter,
        &mut lease_calls,
        &mut lease_answers,
        &mut posts,
        &mut acks,
        &mut excess,
        &mut now,
        &mut next_id,
    );
    // Every worker gives its pools back (as `on_drain` does) and queues its outbox.
    for g in &mut gateways {
        for wi in 0..2 {
            pool_tick(g, wi, true, now, &s);
        }
    }
    let mut drain = Vec::new();
    for gw in 0..3 {
        drain.push(Op::Flush(gw));
    }
    for _ in 0..50 {
        drain.extend([Op::CounterUsage(0), Op::ApplyAck(0)]);
    }
    drive(
        &mut drain.into_iter(),
        &mut gateways,
        &mut counter,
        &mut lease_calls,
        &mut lease_answers,
        &mut posts,
        &mut acks,
        &mut excess,
        &mut now,
        &mut next_id,
    );

    for (scope, (id, hard, spent, _)) in &counter.budgets {
        let allowance = excess.get(scope).copied().unwrap_or(0);
        prop_assert!(*spent <= hard + allowance, "budget {id}: spent {spent} > hard {hard} + excess {allowance}");
    }
    for g in &gateways {
        prop_assert!(g.in_flight.is_empty());
        for (scope, (entry, _)) in &g.store.entries {
            if conflict_every == 0 {
                for slot in &entry.budgets {
                    prop_assert_eq!(slot.reserved, 0, "reservation left on {}", scope);
                }
                prop_assert_eq!(entry.unacked, 0, "unacknowledged cost left on {}", scope);
            }
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn spend_never_exceeds_the_hard_limit_beyond_reservation_overruns(ops in prop::collection::vec(op(), 0..300)) {
        run(ops, 0)?;
    }

    #[test]
    fn the_bound_holds_when_shared_data_writes_keep_conflicting(ops in prop::collection::vec(op(), 0..200)) {
        run(ops, 3)?;
    }
}

#[test]
fn steady_load_without_overruns_spends_close_to_the_limit_and_never_over() {
    // Deterministic: two gateways take turns until the budget is dry, every call answered at once.
    let s = settings();
    let mut counter = ModelCounter::team_a(2_000_000);
    let mut stores = [MemStore::default(), MemStore::default()];
    let scopes = vec!["team:a".to_owned()];
    let (mut admitted, mut refused) = (0, 0);
    let mut id = 0;
    for round in 0..400 {
        let gw = round % 2;
        let now = 1_000 + round as i64;
        match chain::reserve(&mut stores[gw], &scopes, &Ask::worst_case(30_000), now, &s) {
            Decision::Admit { reservation, .. } => {
                admitted += 1;
                chain::settle(&mut stores[gw], reservation, 20_000);
                id += 1;
                let rec = QueuedRecord { json: vec![], id: format!("{id}"), cost_micros: 20_000, scopes: scopes.clone() };
                counter.ingest(gw, std::slice::from_ref(&rec));
                chain::acknowledge(&mut stores[gw], &costs_by_scope(&[rec]), false);
            }
            Decision::Refill { scopes: ask } => {
                let ticket = chain::begin_refill(&mut stores[gw], &ask, 30_000, &s);
                let response = counter.grant(gw, &ticket.request("g"), now);
                chain::finish_refill(&mut stores[gw], &ticket, &response, now);
            }
            Decision::Refuse(r) => {
                refused += 1;
                assert_eq!(r.budget_id, "team-a");
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    let spent = counter.budgets["team:a"].2;
    assert!(spent <= 2_000_000, "spent {spent}");
    assert!(spent >= 2_000_000 - 2 * 30_000 - 2 * 20_000, "headroom is not stranded: spent {spent}");
    assert!(admitted >= 95 && refused > 0, "admitted {admitted}, refused {refused}");
}

#[test]
fn a_late_answer_to_an_earlier_call_cannot_resurrect_a_slice_the_counter_shrank() {
    // Gateway 0 has two lease calls in flight: A asks for a big slice, B (sent later, computed
    // later) for a small one. B was sent before A's grant landed, so the counter keeps A's slice
    // for B and hands the rest to gateway 1. A's answer arrives last and is ignored (computed
    // earlier); whatever the order, gateway 0 spends no more than the counter holds for it.
    let s = settings();
    let mut counter = ModelCounter::team_a(1_000_000);
    let scopes = vec!["team:a".to_owned()];
    let mut g0 = MemStore::default();
    let mut g1 = MemStore::default();
    let a = chain::begin_refill(&mut g0, &scopes, 900_000, &s);
    let b = chain::begin_refill(&mut g0, &scopes, 0, &s);
    assert!(a.want_micros > b.want_micros);
    let answer_a = counter.grant(0, &a.request("g"), 1_000);
    let answer_b = counter.grant(0, &b.request("g"), 1_001);
    chain::finish_refill(&mut g0, &b, &answer_b, 1_002);
    chain::finish_refill(&mut g0, &a, &answer_a, 1_003);
    let g1_ticket = chain::begin_refill(&mut g1, &scopes, 0, &s);
    let answer_g1 = counter.grant(1, &LeaseRequest { want_micros: 1_000_000, ..g1_ticket.request("g") }, 1_004);
    chain::finish_refill(&mut g1, &g1_ticket, &answer_g1, 1_004);
    let mut spent = 0;
    for (store, gw) in [(&mut g0, 0), (&mut g1, 1)] {
        while let Decision::Admit { reservation, .. } = chain::reserve(store, &scopes, &Ask::worst_case(100_000), 1_005, &s) {
            chain::settle(store, reservation, 100_000);
            spent += 100_000;
            let rec = QueuedRecord { json: vec![], id: format!("{gw}-{spent}"), cost_micros: 100_000, scopes: scopes.clone() };
            counter.ingest(gw, &[rec]);
        }
    }
    assert!(spent <= 1_000_000, "spent {spent} of a 1_000_000 limit");
    assert_eq!(counter.budgets["team:a"].2, spent);
}

#[test]
fn a_call_sent_before_a_bigger_grant_landed_cannot_shrink_the_slice_under_a_reservation() {
    // Gateway 0 sends two lease calls before either answer lands: A for a request's worst case
    // (852_549), B for the configured slice (500_000). The counter answers A, then B. Gateway 0
    // applies A and admits an 800_000 request on it; then B's answer (computed later, so newer)
    // lands. If B could lower gateway 0's slice to 500_000, the counter would hand the other
    // 352_549 to gateway 1 while 800_000 is already committed at gateway 0: $1.30 spent of a $1
    // limit with every reservation a true bound.
    let s = settings();
    let mut counter = ModelCounter::team_a(1_000_000);
    let scopes = vec!["team:a".to_owned()];
    let (mut g0, mut g1) = (MemStore::default(), MemStore::default());
    let a = chain::begin_refill(&mut g0, &scopes, 852_549, &s);
    let b = chain::begin_refill(&mut g0, &scopes, 0, &s);
    assert_eq!((a.want_micros, b.want_micros), (852_549, 500_000));
    let answer_a = counter.grant(0, &a.request("g"), 1_000);
    let answer_b = counter.grant(0, &b.request("g"), 1_001);
    chain::finish_refill(&mut g0, &a, &answer_a, 1_002);
    let Decision::Admit { reservation, .. } = chain::reserve(&mut g0, &scopes, &Ask::worst_case(800_000), 1_003, &s) else {
        panic!("800_000 fits A's slice")
    };
    chain::finish_refill(&mut g0, &b, &answer_b, 1_004);
    let g1_ticket = chain::begin_refill(&mut g1, &scopes, 1_000_000, &s);
    let answer_g1 = counter.grant(1, &g1_ticket.request("g"), 1_005);
    chain::finish_refill(&mut g1, &g1_ticket, &answer_g1, 1_005);
    let mut records = Vec::new();
    chain::settle(&mut g0, reservation, 800_000);
    records.push((0, QueuedRecord { json: vec![], id: "g0".into(), cost_micros: 800_000, scopes: scopes.clone() }));
    let mut n = 0;
    while let Decision::Admit { reservation, .. } = chain::reserve(&mut g1, &scopes, &Ask::worst_case(10_000), 1_006, &s) {
        chain::settle(&mut g1, reservation, 10_000);
        n += 1;
        records.push((1, QueuedRecord { json: vec![], id: format!("g1-{n}"), cost_micros: 10_000, scopes: scopes.clone() }));
    }
    for (gw, record) in records {
        counter.ingest(gw, &[record]);
    }
    let spent = counter.budgets["team:a"].2;
    assert!(spent <= 1_000_000, "spent {spent} of a 1_000_000 limit, no reservation overrun");
}
