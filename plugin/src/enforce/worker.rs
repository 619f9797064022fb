//! One worker's enforcement state ([`Worker`], owned by the root context and shared by this
//! worker's requests through [`SharedWorker`]): background lease top-ups and renewals, the outbox
//! of settled records and the usage batches posted from the root's tick, deferred lease-book
//! writes, and the utilization routing reads.

use super::counters::{self, Counters};
use super::store;
use crate::host::{self, LogLevel};
use std::cell::{BorrowMutError, Cell, RefCell, RefMut};
use std::collections::{BTreeMap, BTreeSet};
use std::rc::Rc;
use tollgate_core::enforce::chain::{self, Decision, RefillTicket};
use tollgate_core::enforce::pool::{self, Pool};
use tollgate_core::enforce::queue::{self, Batch, InFlightBatch, Item};
use tollgate_core::enforce::{EnforcementSettings, Reservation};
use tollgate_core::money::Micros;
use tollgate_core::protocol::{GuardEvent, LeaseResponse, UsageRecord};

/// Name of the process-wide usage queue.
const QUEUE_NAME: &str = "tollgate.usage";
/// How long a utilization figure read by this worker is reused for routing.
const UTILIZATION_FRESH_MS: i64 = 1_000;
/// Most scopes whose utilization a worker remembers (beyond, it starts afresh).
const UTILIZATION_CACHE_SCOPES: usize = 10_000;
/// Most retry-guard events a worker keeps for delivery (beyond, the newest are dropped: the
/// shared count is then only less shared, never wrong on this gateway).
const GUARD_EVENTS_BOUND: usize = 1_024;
/// How often the leases of scopes with requests in flight are checked for renewal.
const RENEW_CHECK_MS: i64 = 1_000;
/// Admissions a worker must see on a scope between two ticks before it keeps a pool there
/// (`core::enforce::pool`): lighter traffic keeps the shared path, which holds nothing back from
/// other workers. Two a tick is 100 requests a second on the 20 ms tick.
const POOL_MIN_REQUESTS: u32 = 2;

fn micros(m: Micros) -> u64 {
    u64::try_from(m).unwrap_or(0)
}

/// A call the root context made.
enum RootCall {
    Topup(RefillTicket),
    Usage(InFlightBatch),
}

/// One worker's enforcement state, shared by the root context and this worker's requests.
pub struct Worker {
    pub(super) settings: EnforcementSettings,
    pub(super) gateway_id: String,
    pub(super) queue_id: Option<u32>,
    pub(super) metrics: Counters,
    /// Scopes requests found low, topped up from the root on the next tick.
    pub(super) topups: BTreeSet<String>,
    /// Scopes with requests in flight on this worker (reference counts): their leases are renewed
    /// on the tick before they lapse, even without new traffic, so a long stream's reservation is
    /// never left without a live lease. A count back at 0 stays until the next renewal check
    /// (which drops it), so a scope in steady use is not copied in and out per request.
    pub(super) held: BTreeMap<String, u32>,
    /// Per scope, its highest budget utilization (percent) and when this worker read it: routing's
    /// input without a shared-data read per request.
    pub(super) utilization: BTreeMap<String, (u32, i64)>,
    /// When the held scopes' leases were last checked (once a second is plenty: renewal starts
    /// `renew_before_expiry_ms` ahead).
    pub(super) last_renew_check_ms: i64,
    calls: BTreeMap<u32, RootCall>,
    pub(super) usage_in_flight: bool,
    pub(super) last_post_ms: i64,
    /// Scopes known to have no budget, and settlement costs on them not yet written to shared data.
    pub(super) unbudgeted: store::Unbudgeted,
    /// Records settled on this worker since its last tick, framed as they settle and queued as one
    /// item on the tick. The first of them is counted in the process-wide unacknowledged count at
    /// once (so the gauge is never 0 while a record waits here); the others when they are queued.
    pub(super) outbox: Item,
    /// Full items of the outbox (`batch_size` records each) when more settle in one tick: queued
    /// as they are, never cut apart.
    outbox_full: Vec<Item>,
    /// Reservations of requests that ended on this worker since its last tick, with their real
    /// cost, written to the lease book on the tick with one shared-data write per scope
    /// (`chain::settle_all`), not two host calls per scope per request. Until then the book still
    /// holds their worst case, so nothing is over-granted meanwhile; they are written before the
    /// outbox is queued, so no record is acknowledged before its cost is in the book.
    pub(super) settlements: Vec<(Reservation, Micros)>,
    /// This worker's lease pools by scope (`core::enforce::pool`): its share of each busy scope's
    /// slice, held in the shared entry as a reservation, from which requests reserve and settle
    /// in memory; written back and resized on every tick, given back on `on_drain`.
    pub(super) pools: BTreeMap<String, Pool>,
    /// Per scope, the admissions since the last tick and their worst cases: the pools' sizes.
    pub(super) demand: BTreeMap<String, (u32, Micros)>,
    /// The root context is being torn down (`on_drain`): no more ticks may come, so records
    /// settled from now on are queued at once.
    pub(super) draining: bool,
    /// Retry-guard events of this worker's requests (docs/guards.md), posted with the next usage
    /// batch (a post goes out for them alone when no record waits), and the ones in flight: put
    /// back if the post fails (the counter stores each id once).
    pub(super) guard_events: Vec<GuardEvent>,
    guard_in_flight: Vec<GuardEvent>,
    /// `guards.retry.window_seconds` in ms (0: no retry guard).
    pub(super) guard_window_ms: i64,
}

/// A request's settlement that found the worker busy: kept for the worker's next use.
struct LateSettlement {
    reservation: Option<Reservation>,
    record: UsageRecord,
}

/// The shared handle requests and the root hold: the worker, and an inbox for settlements that
/// find it busy. proxy-wasm never re-enters a VM, so the worker is never borrowed when a request
/// settles; if it were, the settlement waits in the inbox (a `Cell`, which cannot be busy) and
/// every borrow of the worker takes it in first: a settled record never vanishes.
#[derive(Clone)]
pub struct SharedWorker {
    worker: Rc<RefCell<Worker>>,
    late: Rc<Cell<Vec<LateSettlement>>>,
}

impl SharedWorker {
    /// The worker, with any settlement that found it busy taken in first.
    pub fn try_borrow_mut(&self) -> Result<RefMut<'_, Worker>, BorrowMutError> {
        let mut w = self.worker.try_borrow_mut()?;
        let late = self.late.take();
        if !late.is_empty() {
            counters::inc(&w.metrics.late_settlements, late.len() as u64);
            for l in late {
                let chain = l.record.principal.scope_keys();
                w.settle(l.reservation, &l.record, &chain);
            }
        }
        Ok(w)
    }

    /// Keeps a settlement for the worker's next use (it is busy now).
    pub(super) fn settle_later(&self, reservation: Option<Reservation>, record: &UsageRecord) {
        let mut late = self.late.take();
        late.push(LateSettlement { reservation, record: record.clone() });
        self.late.set(late);
    }
}

impl Worker {
    /// Sets up this worker: the usage queue and the metrics. A queue that cannot be registered is
    /// logged; records are then dropped (and counted) rather than the plugin refused.
    pub fn start(settings: EnforcementSettings, gateway_id: &str) -> SharedWorker {
        let queue_id = match host::register_queue(QUEUE_NAME) {
            Ok(id) => Some(id),
            Err(e) => {
                host::log(LogLevel::Error, &format!("tollgate: cannot register the usage queue (host status {}); usage records will be dropped", e.0));
                None
            }
        };
        host::log(
            LogLevel::Info,
            &format!(
                "tollgate: enforcement on: counter cluster `{}`, gateway `{gateway_id}`, {}, slice {} micro-USD",
                settings.counter_cluster,
                settings.failure_mode.as_str(),
                settings.lease_slice_micros
            ),
        );
        let worker = Rc::new(RefCell::new(Worker {
            settings,
            gateway_id: gateway_id.to_owned(),
            queue_id,
            metrics: Counters::define(),
            topups: BTreeSet::new(),
            held: BTreeMap::new(),
            last_renew_check_ms: 0,
            utilization: BTreeMap::new(),
            calls: BTreeMap::new(),
            usage_in_flight: false,
            last_post_ms: host::now_ms(),
            unbudgeted: store::Unbudgeted::default(),
            outbox: Item::new(),
            outbox_full: Vec::new(),
            settlements: Vec::new(),
            pools: BTreeMap::new(),
            demand: BTreeMap::new(),
            draining: false,
            guard_events: Vec::new(),
            guard_in_flight: Vec::new(),
            guard_window_ms: 0,
        }));
        SharedWorker { worker, late: Rc::default() }
    }

    /// The root tick period this worker needs.
    pub fn tick_period_ms(&self) -> u64 {
        self.settings.tick_ms()
    }

    /// Root tick: background top-ups (requested by requests, or leases of scopes in use about to
    /// lapse), the outbox into the queue, then a usage batch if one is due.
    pub fn on_tick(&mut self, now: i64) {
        if self.draining {
            // A torn-down root context posts nothing more; the live ones do (see `on_drain`).
            return;
        }
        if now.saturating_sub(self.last_renew_check_ms) >= RENEW_CHECK_MS {
            self.last_renew_check_ms = now;
            self.held.retain(|_, n| *n > 0);
            for scope in self.held.keys() {
                if !self.topups.contains(scope) {
                    let entry = store::load(scope);
                    if entry.wants_topup(now, &self.settings) && !entry.budgets.is_empty() {
                        self.topups.insert(scope.clone());
                    }
                }
            }
        }
        if !self.topups.is_empty() {
            let scopes: Vec<String> = std::mem::take(&mut self.topups).into_iter().collect();
            if let Some(ticket) = chain::begin_topup(&mut store::SharedStore, &scopes, now, &self.settings) {
                let body = serde_json::to_vec(&ticket.request(&self.gateway_id)).unwrap_or_default();
                match self.dispatch("/v1/leases", &body) {
                    Some(token) => {
                        counters::inc(&self.metrics.topups, 1);
                        counters::inc(&self.metrics.lease_calls, 1);
                        self.calls.insert(token, RootCall::Topup(ticket));
                    }
                    None => {
                        counters::inc(&self.metrics.lease_failures, 1);
                        chain::fail_refill(&mut store::SharedStore, &ticket, now);
                    }
                }
            }
        }
        self.apply_settlements(now);
        self.ship_outbox();
        self.flush(now, false);
        self.metrics.flush();
    }

    /// Writes the settlements deferred since the last tick to the lease book, then this worker's
    /// pools (their costs charged, their sizes set by the traffic since the last tick; all given
    /// back when draining). Both come before the tick queues the outbox, so no record is
    /// acknowledged before its cost is in the book.
    pub(super) fn apply_settlements(&mut self, now: i64) {
        if !self.settlements.is_empty() {
            let settlements = std::mem::take(&mut self.settlements);
            let ttl = self.settings.unbudgeted_scope_ttl_ms;
            let utilization = chain::settle_all(&mut store::CachedStore::new(&mut self.unbudgeted, now, ttl), &settlements);
            self.remember_utilization(utilization, now);
        }
        self.tend_pools(now);
    }

    /// One read-modify-write per pool (and per busy scope that could have one): the costs settled
    /// from it charged, its free part set to twice the last tick's worst cases (`pool::target`),
    /// or given back (idle, draining, or the scope no longer poolable).
    fn tend_pools(&mut self, now: i64) {
        let demand = std::mem::take(&mut self.demand);
        let busy = |(scope, (n, _)): (&String, &(u32, Micros))| *n >= POOL_MIN_REQUESTS && !self.unbudgeted.trusts(scope, now);
        if self.pools.is_empty() && (self.draining || !demand.iter().any(busy)) {
            self.demand = Self::idle_demand(demand);
            return;
        }
        let mut scopes: BTreeSet<String> = self.pools.keys().cloned().collect();
        if !self.draining {
            scopes.extend(demand.iter().filter(|d| busy(*d)).map(|(s, _)| s.clone()));
        }
        let mut utilization = Vec::new();
        for scope in scopes {
            let (admitted, worst_cases) = demand.get(&scope).copied().unwrap_or((0, 0));
            let target = if self.draining { 0 } else { pool::target(admitted, worst_cases, POOL_MIN_REQUESTS, &self.settings) };
            self.write_pool(&scope, target, now, &mut utilization);
        }
        self.remember_utilization(utilization, now);
        self.demand = Self::idle_demand(demand);
    }

    /// The demand for the next tick: counts back to zero, scopes idle for a whole tick forgotten.
    fn idle_demand(mut demand: BTreeMap<String, (u32, Micros)>) -> BTreeMap<String, (u32, Micros)> {
        demand.retain(|_, (n, _)| *n > 0);
        for d in demand.values_mut() {
            *d = (0, 0);
        }
        demand
    }

    /// Writes this worker's pool on `scope` (none yet: takes one) with `target` free.
    fn write_pool(&mut self, scope: &str, target: Micros, now: i64, utilization: &mut Vec<(String, u32)>) {
        let current = self.pools.remove(scope).unwrap_or_default();
        if current.is_empty() && target == 0 {
            return;
        }
        match chain::write_pool(&mut store::SharedStore, scope, &current, target, now, &self.settings) {
            Ok(written) => {
                if written.wants_topup {
                    self.topups.insert(scope.to_owned());
                }
                utilization.push((scope.to_owned(), written.utilization_pct));
                if !written.pool.is_empty() {
                    self.pools.insert(scope.to_owned(), written.pool);
                }
            }
            // Kept as it was: its costs stay held as a reservation and are written next time.
            Err(_) => {
                self.pools.insert(scope.to_owned(), current);
            }
        }
    }

    /// A request this worker's pools cannot take is about to be decided on the shared book (and
    /// perhaps refused): first give back the free part of this worker's pools on its chain, so
    /// the shared book holds all this worker has. Returns whether anything was given back.
    pub(super) fn return_pools(&mut self, scopes: &[String], now: i64) -> bool {
        let mut returned = false;
        let mut utilization = Vec::new();
        for scope in scopes {
            if self.pools.get(scope).is_some_and(|p| p.free > 0) {
                self.write_pool(scope, 0, now, &mut utilization);
                returned = true;
            }
        }
        self.remember_utilization(utilization, now);
        returned
    }

    /// Admits a request of worst case `worst` from this worker's pools, with no host call, if
    /// every scope of its chain has a pool with room for it or is known to have no budget (and
    /// at least one is pooled). `None`: the shared path decides.
    pub(super) fn admit_from_pools(&mut self, scopes: &[String], worst: Micros, now: i64) -> Option<Decision> {
        if self.pools.is_empty() {
            return None;
        }
        let mut any = false;
        for scope in scopes {
            if self.pools.get(scope).is_some_and(|p| p.admits(worst, now)) {
                any = true;
            } else if !self.unbudgeted.trusts(scope, now) {
                return None;
            }
        }
        if !any {
            return None;
        }
        let mut reserved_on = Vec::new();
        let mut utilization = Vec::new();
        let mut warning: Option<chain::BudgetWarning> = None;
        for scope in scopes {
            let Some(p) = self.pools.get_mut(scope) else { continue };
            p.reserve(worst);
            reserved_on.push((scope.clone(), p.held_in.clone()));
            utilization.push((scope.clone(), p.seen.budgets.iter().map(|s| s.utilization_pct()).max().unwrap_or(0)));
            if let Some(w) = chain::soft_warning(&p.seen) {
                if warning.as_ref().is_none_or(|cur| w.utilization_pct > cur.utilization_pct) {
                    warning = Some(w);
                }
            }
        }
        let reservation = Reservation { scopes: scopes.to_vec(), amount: worst.max(0), reserved_on, below_worst: Vec::new(), pooled: true };
        Some(Decision::Admit { reservation, topup: Vec::new(), would_refuse: Vec::new(), warning, utilization })
    }

    /// An admitted request's worst case counts toward the next tick's pool sizes.
    /// (A scope's entry outlives the tick that reads it by one idle tick, so steady traffic
    /// allocates nothing here.)
    pub(super) fn note_demand(&mut self, scopes: &[String], worst: Micros) {
        for scope in scopes {
            match self.demand.get_mut(scope.as_str()) {
                Some((n, total)) => {
                    *n = n.saturating_add(1);
                    *total = total.saturating_add(worst.max(0));
                }
                None => {
                    self.demand.insert(scope.clone(), (1, worst.max(0)));
                }
            }
        }
    }

    /// Gives back a reservation never settled (the request never reached the upstream): in this
    /// worker's pools if it came from them, else in the shared book.
    pub(super) fn release(&mut self, reservation: &Reservation) {
        if reservation.pooled {
            for (scope, _) in &reservation.reserved_on {
                if let Some(p) = self.pools.get_mut(scope) {
                    p.release(reservation.amount);
                }
            }
        } else {
            chain::release(&mut store::SharedStore, reservation);
        }
    }

    /// Root `on_done`: the plugin is being torn down, because a new configuration or binary
    /// replaced it (an ECDS push) or Envoy is stopping. Everything this worker holds goes to the
    /// process-wide lease book and usage queue, which outlive this root context and, for the same
    /// `vm_id`, this VM: the successor's tick posts what is queued (docs/enforcement.md, *Hot
    /// reload*). Calls still in flight die with the context (Envoy cancels them, and a replaced
    /// binary's VM is destroyed), so their answers would never come back:
    /// - a usage batch in flight goes back into the queue, still counted unacknowledged; if the
    ///   counter did ingest it, the successor's redelivery is acknowledged as duplicates and
    ///   charges nothing twice;
    /// - a top-up in flight is forgotten; its mark on the scopes lapses by itself (the call's
    ///   timeout plus a slack), and a grant the counter made for it only parks headroom at this
    ///   gateway until the next grant replaces it or its lease lapses.
    ///
    /// Nothing is posted from here: a call made now would be cancelled with the context.
    pub fn on_drain(&mut self, now: i64) {
        self.draining = true;
        self.apply_settlements(now);
        self.ship_outbox();
        let calls = std::mem::take(&mut self.calls);
        let mut batches = 0usize;
        for call in calls.into_values() {
            if let RootCall::Usage(batch) = call {
                batches += 1;
                self.requeue(batch.items);
            }
        }
        self.usage_in_flight = false;
        self.metrics.flush();
        if batches > 0 {
            host::log(
                LogLevel::Info,
                &format!("tollgate: plugin context ending (configuration replaced or Envoy stopping): {batches} usage batch(es) in flight put back in the queue"),
            );
        }
    }

    /// An answer to a call the root made. Returns false if the token is not enforcement's.
    pub fn on_http_call_response(&mut self, token: u32, status: Option<u16>, body: &[u8], now: i64) -> bool {
        let Some(call) = self.calls.remove(&token) else { return false };
        match call {
            RootCall::Topup(ticket) => match read_lease(status, body) {
                Ok(response) => chain::finish_refill(&mut store::SharedStore, &ticket, &response, now),
                Err(why) => {
                    counters::inc(&self.metrics.lease_failures, 1);
                    host::log(LogLevel::Warn, &format!("tollgate: lease top-up failed: {why}"));
                    chain::fail_refill(&mut store::SharedStore, &ticket, now);
                }
            },
            RootCall::Usage(batch) => {
                self.usage_in_flight = false;
                let guard_events = std::mem::take(&mut self.guard_in_flight);
                match queue::read_ack(status, body, batch.records) {
                    Ok(ack) => {
                        if self.guard_window_ms > 0 {
                            crate::guard::apply_answer(&ack.guard, self.guard_window_ms, now);
                        }
                        counters::inc(&self.metrics.usage_acked, batch.records as u64);
                        self.adjust_unacked(-i64::try_from(batch.records).unwrap_or(i64::MAX), u64::MAX);
                        chain::acknowledge(&mut store::SharedStore, &batch.costs, false);
                        // More may be waiting: do not sit on a full queue until the next interval.
                        self.flush(now, false);
                    }
                    Err(why) => {
                        counters::inc(&self.metrics.usage_post_failures, 1);
                        host::log(
                            LogLevel::Warn,
                            &format!("tollgate: usage post failed, {} record(s) will be sent again: {why}", batch.records),
                        );
                        self.requeue(batch.items);
                        if status == Some(400) && !guard_events.is_empty() {
                            // A counter older than these guard events refuses the batch they ride
                            // on (an unknown event kind). They only share counts; the records are
                            // the books: resend the records without them, or none would arrive.
                            host::log(LogLevel::Warn, "tollgate: the counter refused a usage batch with guard events; those events are dropped");
                        } else {
                            self.keep_guard_events(guard_events);
                        }
                    }
                }
            }
        }
        true
    }

    /// A retry-guard event to deliver (bounded).
    pub(super) fn guard_event(&mut self, event: GuardEvent) {
        if self.guard_events.len() < GUARD_EVENTS_BOUND {
            self.guard_events.push(event);
        }
    }

    fn keep_guard_events(&mut self, mut events: Vec<GuardEvent>) {
        events.truncate(GUARD_EVENTS_BOUND.saturating_sub(self.guard_events.len()));
        events.append(&mut self.guard_events);
        self.guard_events = events;
    }

    /// A request ended: its real cost replaces its reservation (`None`: it had none) in the book on
    /// the next tick, and its record joins the outbox. `chain` is the record's principal's scope
    /// keys (`Principal::scope_keys`), which the request already holds.
    pub(super) fn settle(&mut self, reservation: Option<Reservation>, record: &UsageRecord, chain: &[String]) {
        let cost = record.cost_micros.max(0);
        let reservation = match reservation {
            Some(r) => {
                self.unhold(&r.scopes);
                r
            }
            None => Reservation::unreserved(chain.to_vec()),
        };
        let unreserved = reservation.reserved_on.is_empty() && reservation.amount == 0;
        if unreserved {
            counters::inc(&self.metrics.unreserved_micros, micros(cost));
        } else {
            counters::inc(&self.metrics.excess_micros, micros(reservation.excess(cost)));
        }
        let below_worst = reservation.below_worst.clone();
        // The book is written on the tick (see `Worker::settlements`), or now if no tick will come.
        // A request from the pools settles in them; its scopes without a budget like any other.
        if reservation.pooled {
            for (scope, _) in &reservation.reserved_on {
                if let Some(p) = self.pools.get_mut(scope) {
                    p.settle(reservation.amount, cost);
                }
            }
            let rest: Vec<String> = reservation.scopes.iter().filter(|s| !reservation.reserved_on.iter().any(|(p, _)| p == *s)).cloned().collect();
            if !rest.is_empty() {
                self.settlements.push((Reservation::unreserved(rest), cost));
            }
        } else {
            self.settlements.push((reservation, cost));
        }
        if self.draining {
            self.apply_settlements(record.finished_at_ms);
        }
        // Queued (and counted unacknowledged) before it counts as settled, so an observer that
        // sees it settled also sees it waiting.
        if below_worst.is_empty() {
            self.enqueue(record, chain);
        } else {
            let excess = below_worst.iter().map(|held| held.excess(cost)).max().unwrap_or(0);
            counters::inc(&self.metrics.p99_excess_micros, micros(excess));
            let mut record = record.clone();
            record.p99_reservations = below_worst;
            self.enqueue(&record, chain);
        }
        counters::inc(&self.metrics.settled, 1);
    }

    /// Changes the process-wide unacknowledged count (see `store::adjust_unacked`) and publishes it
    /// in the gauge at once, so the gauge is never behind what was queued or acknowledged.
    pub(super) fn adjust_unacked(&self, delta: i64, limit: u64) -> bool {
        match store::adjust_unacked(delta, limit) {
            Some(now) => {
                host::set_gauge(self.metrics.usage_unacked, now);
                true
            }
            None => false,
        }
    }

    pub(super) fn remember_utilization(&mut self, scopes: Vec<(String, u32)>, now: i64) {
        if self.utilization.len() + scopes.len() > UTILIZATION_CACHE_SCOPES {
            self.utilization.clear();
        }
        for (scope, pct) in scopes {
            self.utilization.insert(scope, (pct, now));
        }
    }

    /// The highest utilization on a chain: from what this worker read in the last second, else
    /// from shared data.
    pub(super) fn utilization_pct(&mut self, scopes: &[String], now: i64) -> u32 {
        let mut max = 0;
        for scope in scopes {
            let pct = match self.utilization.get(scope) {
                Some((pct, at)) if now.saturating_sub(*at) < UTILIZATION_FRESH_MS => *pct,
                _ => {
                    let pct = store::load(scope).budgets.iter().map(|s| s.utilization_pct()).max().unwrap_or(0);
                    self.remember_utilization(vec![(scope.clone(), pct)], now);
                    pct
                }
            };
            max = max.max(pct);
        }
        max
    }

    pub(super) fn hold(&mut self, scopes: &[String]) {
        for scope in scopes {
            match self.held.get_mut(scope) {
                Some(n) => *n = n.saturating_add(1),
                None => {
                    self.held.insert(scope.clone(), 1);
                }
            }
        }
    }

    pub(super) fn unhold(&mut self, scopes: &[String]) {
        for scope in scopes {
            if let Some(n) = self.held.get_mut(scope) {
                *n = n.saturating_sub(1);
            }
        }
    }

    /// `POST path` to the counter from the current context.
    pub(super) fn dispatch(&self, path: &str, body: &[u8]) -> Option<u32> {
        let authorization = self.settings.authorization();
        let headers = [
            (":method", "POST"),
            (":path", path),
            (":authority", self.settings.counter_authority.as_str()),
            ("content-type", "application/json"),
            ("authorization", authorization.as_str()),
        ];
        match host::http_call(&self.settings.counter_cluster, &headers, body, self.settings.call_timeout_ms) {
            Ok(token) => Some(token),
            Err(e) => {
                host::log(
                    LogLevel::Warn,
                    &format!(
                        "tollgate: cannot call the counter service on cluster `{}` (host status {}); check enforcement.counter_cluster names a cluster in the bootstrap",
                        self.settings.counter_cluster, e.0
                    ),
                );
                None
            }
        }
    }

    /// Posts a batch if one is due (or, with `now_or_never`, whatever is queued). Taking an item
    /// costs a few hundred instructions and one copy of its records' JSON into the body, whatever
    /// its size (`queue::Item`): a whole batch costs the tick about what settling a tick's
    /// requests does, not thousands of instructions per record.
    pub(super) fn flush(&mut self, now: i64, now_or_never: bool) {
        let Some(queue_id) = self.queue_id else { return };
        let unacked = store::unacked();
        // Every worker writes the one gauge after changing the count, and with several workers
        // two writes can land in the other order than their changes (the gauge then reads 0 with
        // records waiting, or records long acknowledged). Each flush writes the count as it is,
        // so a stale figure lasts until the next tick at most.
        host::set_gauge(self.metrics.usage_unacked, unacked);
        // Guard events alone are worth a post too (their answer carries the shared counts and
        // checkpoints), on the same interval.
        let queued = usize::try_from(unacked).unwrap_or(usize::MAX).max(usize::from(!self.guard_events.is_empty()));
        let since = if now_or_never { i64::MAX } else { now.saturating_sub(self.last_post_ms) };
        if !queue::should_flush(queued, since, self.usage_in_flight, &self.settings) {
            return;
        }
        let batch_size = self.settings.batch_size.max(1);
        let mut batch = Batch::new(&self.gateway_id, batch_size);
        let mut garbage = 0u64;
        while batch.len() < batch_size {
            let mut item = match host::dequeue(queue_id) {
                Ok(Some(bytes)) => {
                    let (item, bad) = Item::read(bytes);
                    garbage += bad;
                    item
                }
                _ => break,
            };
            let room = batch_size - batch.len();
            if item.len() > room {
                // The item overfills the batch: its tail goes back for the next one.
                let rest = item.split_off(room);
                self.enqueue_items(rest, "the usage queue refused records put back");
            }
            batch.add(item);
        }
        if garbage > 0 {
            self.adjust_unacked(-i64::try_from(garbage).unwrap_or(i64::MAX), u64::MAX);
            counters::inc(&self.metrics.usage_dropped, garbage);
            host::log(LogLevel::Error, &format!("tollgate: dropped {garbage} unreadable record(s) from the usage queue"));
        }
        if batch.is_empty() && self.guard_events.is_empty() {
            return;
        }
        self.last_post_ms = now;
        let guard_events = std::mem::take(&mut self.guard_events);
        let events = if guard_events.is_empty() { Vec::new() } else { serde_json::to_vec(&guard_events).unwrap_or_default() };
        let (body, batch) = batch.finish(&events, now);
        match self.dispatch("/v1/usage", &body) {
            Some(token) => {
                counters::inc(&self.metrics.usage_posts, 1);
                self.usage_in_flight = true;
                self.guard_in_flight = guard_events;
                self.calls.insert(token, RootCall::Usage(batch));
            }
            None => {
                counters::inc(&self.metrics.usage_post_failures, 1);
                self.keep_guard_events(guard_events);
                self.requeue(batch.items);
            }
        }
    }

    /// Takes a settled request's record into this worker's outbox, queued on the next tick. The
    /// first record of an empty outbox is counted unacknowledged at once (bounded: past
    /// `queue_bound` it is dropped and counted); the rest are counted when queued.
    pub(super) fn enqueue(&mut self, record: &UsageRecord, chain: &[String]) {
        let first = self.outbox.is_empty() && self.outbox_full.is_empty();
        if first && !self.adjust_unacked(1, self.settings.queue_bound as u64) {
            let mut one = Item::new();
            one.push_charged(record, chain);
            self.dropped(&one, "the usage queue is full (enforcement.queue_bound)");
            return;
        }
        self.outbox.push_charged(record, chain);
        if self.outbox.len() >= self.settings.batch_size {
            let full = std::mem::take(&mut self.outbox);
            self.outbox_full.push(full);
        }
        if self.draining {
            self.ship_outbox();
        }
    }

    /// Moves the outbox into the shared queue as items of at most `batch_size` records: first the
    /// settlement costs deferred on unbudgeted scopes, then the count (records past `queue_bound`
    /// are dropped and counted), then the items.
    pub(super) fn ship_outbox(&mut self) {
        self.unbudgeted.flush();
        let total = self.outbox.len() + self.outbox_full.iter().map(Item::len).sum::<usize>();
        if total == 0 {
            return;
        }
        let uncounted = total.saturating_sub(1) as u64;
        let added = match store::add_unacked_up_to(uncounted, self.settings.queue_bound as u64) {
            Some((now, added)) => {
                host::set_gauge(self.metrics.usage_unacked, now);
                added
            }
            None => 0,
        };
        let keep = 1 + usize::try_from(added).unwrap_or(usize::MAX);
        if let (Some(queue_id), true, true) = (self.queue_id, self.outbox_full.is_empty(), total <= keep) {
            // The usual case, one item under the bound: queued in place, so the outbox keeps its
            // buffers for the next tick's records.
            if host::enqueue(queue_id, self.outbox.bytes()).is_err() {
                let records = std::mem::take(&mut self.outbox);
                self.adjust_unacked(-i64::try_from(records.len()).unwrap_or(i64::MAX), u64::MAX);
                self.dropped(&records, "the usage queue refused new records");
            }
            self.outbox.clear();
            return;
        }
        let mut items = std::mem::take(&mut self.outbox_full);
        if !self.outbox.is_empty() {
            items.push(std::mem::take(&mut self.outbox));
        }
        if total > keep {
            // Past the bound: the newest records go, whole items first.
            let mut over = total - keep;
            while over > 0 {
                let Some(mut last) = items.pop() else { break };
                if last.len() > over {
                    let cut = last.split_off(last.len() - over);
                    self.dropped(&cut, "the usage queue is full (enforcement.queue_bound)");
                    items.push(last);
                    break;
                }
                over -= last.len();
                self.dropped(&last, "the usage queue is full (enforcement.queue_bound)");
            }
        }
        for item in items {
            self.enqueue_items(item, "the usage queue refused new records");
        }
    }

    /// Enqueues counted records as items of at most `batch_size`; what the queue refuses is
    /// uncounted and dropped (logged).
    pub(super) fn enqueue_items(&mut self, records: Item, why: &str) {
        if records.is_empty() {
            return;
        }
        let Some(queue_id) = self.queue_id else {
            self.adjust_unacked(-i64::try_from(records.len()).unwrap_or(i64::MAX), u64::MAX);
            self.dropped(&records, "no usage queue");
            return;
        };
        // An outbox item is at most `batch_size` already: chunks only for a put-back item bigger.
        for mut chunk in records.into_chunks(self.settings.batch_size) {
            if host::enqueue(queue_id, chunk.bytes()).is_err() {
                self.adjust_unacked(-i64::try_from(chunk.len()).unwrap_or(i64::MAX), u64::MAX);
                self.dropped(&chunk, why);
            }
        }
    }

    /// Puts records back for redelivery; the counter ignores ids it has already counted.
    pub(super) fn requeue(&mut self, items: Vec<Item>) {
        for records in items {
            if self.queue_id.is_some() {
                counters::inc(&self.metrics.usage_requeued, records.len() as u64);
            }
            // Still counted in `unacked` (and so under the bound): it only left to be posted.
            self.enqueue_items(records, "the usage queue refused a redelivery");
        }
    }

    pub(super) fn dropped(&mut self, records: &Item, why: &str) {
        // Their costs must be in shared data before they are forgotten there.
        self.unbudgeted.flush();
        counters::inc(&self.metrics.usage_dropped, records.len() as u64);
        chain::acknowledge(&mut store::SharedStore, records.costs(), true);
        let ids = records.first_ids(5);
        host::log(
            LogLevel::Error,
            &format!(
                "tollgate: dropped {} usage record(s) ({why}); first ids: {}; the counter will not see them",
                records.len(),
                ids.join(", ")
            ),
        );
    }
}

/// Reads a lease answer: a 200 with a `LeaseResponse`; anything else is a failure to report.
pub(super) fn read_lease(status: Option<u16>, body: &[u8]) -> Result<LeaseResponse, String> {
    match status {
        Some(200) => serde_json::from_slice(body).map_err(|e| format!("unreadable answer: {e}")),
        Some(code) => Err(format!(
            "counter answered HTTP {code}: {}",
            String::from_utf8_lossy(body.get(..body.len().min(300)).unwrap_or_default())
        )),
        None => Err("no answer (timeout or connection failure)".to_owned()),
    }
}
