//! One request's enforcement ([`LeaseEnforcer`], behind the filter's [`Enforcer`] hooks): reserve
//! the worst case from its worker's lease pools (steady traffic: no host call) or the slices in
//! hand, pause on its own lease call when short (rounds: `core::enforce::rounds`), answer 429/503,
//! settle the real cost, give back what was never settled.

use super::counters;
use super::store;
use super::worker::{read_lease, SharedWorker, Worker};
use crate::admission::{Admission, Enforcer, Verdict};
use crate::host::{self, LogLevel};
use tollgate_core::banner::BudgetStatus;
use tollgate_core::enforce::book::Ask;
use tollgate_core::enforce::chain::{self, RefillTicket};
use tollgate_core::enforce::reservation::WorstCase;
use tollgate_core::enforce::rounds::{self, AfterRounds, NextRound};
use tollgate_core::enforce::{Decision, FailureMode, Reservation};
use tollgate_core::errors::{ErrorKind, Failure};
use tollgate_core::money::Micros;
use tollgate_core::protocol::{Principal, UsageRecord};

/// The response header carrying the usage record id (`<gateway_id>:<request id>`).
pub const REQUEST_ID_HEADER: &str = "x-tollgate-request-id";

/// A request paused on its own lease call.
struct Pending {
    token: u32,
    ticket: RefillTicket,
    rounds: u8,
}

/// One request's enforcement.
pub struct LeaseEnforcer {
    worker: SharedWorker,
    scopes: Vec<String>,
    amount: Micros,
    /// How `amount` was priced, and the routed model: a `reserve: p99` budget reserves less.
    worst_case: Option<WorstCase>,
    routed_model: String,
    record_id: String,
    reservation: Option<Reservation>,
    pending: Option<Pending>,
    settled: bool,
}

impl LeaseEnforcer {
    pub fn new(worker: SharedWorker) -> LeaseEnforcer {
        LeaseEnforcer {
            worker,
            scopes: Vec::new(),
            amount: 0,
            worst_case: None,
            routed_model: String::new(),
            record_id: String::new(),
            reservation: None,
            pending: None,
            settled: false,
        }
    }

    /// Decides on the current book; `round` is the number of lease calls made so far.
    fn decide(&mut self, w: &mut Worker, now: i64, round: u8) -> Option<Verdict> {
        let shared = |w: &mut Worker, ask: &Ask<'_>| {
            let mut book = store::CachedStore::new(&mut w.unbudgeted, now, w.settings.unbudgeted_scope_ttl_ms);
            chain::reserve(&mut book, &self.scopes, ask, now, &w.settings)
        };
        // In steady state from this worker's pools, with no host call; else the shared book,
        // holding all of this worker's free headroom before it says no.
        let decision = match w.admit_from_pools(&self.scopes, self.amount, now) {
            Some(pooled) => {
                counters::inc(&w.metrics.pooled, 1);
                pooled
            }
            None => match shared(w, &self.ask()) {
                admitted @ Decision::Admit { .. } => admitted,
                _ if w.return_pools(&self.scopes, now) => shared(w, &self.ask()),
                short => short,
            },
        };
        match decision {
            Decision::Admit { reservation, topup, would_refuse, warning, utilization } => {
                w.remember_utilization(utilization, now);
                w.note_demand(&self.scopes, self.amount);
                counters::inc(&w.metrics.admitted, 1);
                if !would_refuse.is_empty() {
                    counters::inc(&w.metrics.would_refuse, 1);
                    host::log(
                        LogLevel::Debug,
                        &format!("tollgate: observe-mode budget(s) {} would have refused request {}", would_refuse.join(", "), self.record_id),
                    );
                }
                let mut headers = vec![(REQUEST_ID_HEADER.to_owned(), self.record_id.clone())];
                if let Some(warning) = warning {
                    counters::inc(&w.metrics.soft_warning, 1);
                    headers.extend(warning.headers().into_iter().map(|(k, v)| (k.to_owned(), v)));
                }
                w.topups.extend(topup);
                w.hold(&self.scopes);
                self.reservation = Some(reservation);
                Some(Verdict::Proceed { response_headers: headers })
            }
            Decision::Refill { scopes } => {
                let NextRound::Ask { need } = rounds::next_round(round, self.amount, w.settings.lease_slice_micros) else {
                    return Some(match rounds::after_last_round(chain::shortfall(&store::SharedStore, &self.scopes, &self.ask(), now)) {
                        AfterRounds::Refuse(refusal) => self.refuse(w, &refusal, now),
                        AfterRounds::Unavailable => self.unavailable(w),
                    });
                };
                let ticket = chain::begin_refill(&mut store::SharedStore, &scopes, need, &w.settings);
                let body = serde_json::to_vec(&ticket.request(&w.gateway_id)).unwrap_or_default();
                match w.dispatch("/v1/leases", &body) {
                    Some(token) => {
                        counters::inc(&w.metrics.lease_calls, 1);
                        if round == 0 {
                            counters::inc(&w.metrics.paused, 1);
                        }
                        self.pending = Some(Pending { token, ticket, rounds: round + 1 });
                        None
                    }
                    None => {
                        counters::inc(&w.metrics.lease_failures, 1);
                        chain::fail_refill(&mut store::SharedStore, &ticket, now);
                        Some(self.unavailable(w))
                    }
                }
            }
            Decision::Unavailable => Some(self.unavailable(w)),
            Decision::Refuse(refusal) => Some(self.refuse(w, &refusal, now)),
        }
    }

    /// What this request asks of each budget: its worst case, or less on a `reserve: p99` budget.
    fn ask(&self) -> Ask<'_> {
        Ask { worst: self.amount, model: &self.routed_model, basis: self.worst_case.as_ref() }
    }

    /// A 429 naming the budget, with Retry-After at its window reset.
    fn refuse(&self, w: &mut Worker, refusal: &tollgate_core::enforce::Refusal, now: i64) -> Verdict {
        counters::inc(&w.metrics.refused, 1);
        let mut headers = vec![(REQUEST_ID_HEADER.to_owned(), self.record_id.clone())];
        if let Some(secs) = refusal.retry_after_secs(now) {
            headers.push(("retry-after".to_owned(), secs.to_string()));
        }
        host::log(LogLevel::Debug, &format!("tollgate: refused {}: {}", self.record_id, refusal.message()));
        Verdict::Refuse { failure: Failure::new(ErrorKind::BudgetExceeded, refusal.message()), headers }
    }

    /// The counter cannot be asked: the configured failure mode decides.
    fn unavailable(&mut self, w: &mut Worker) -> Verdict {
        match w.settings.failure_mode {
            FailureMode::FailOpen => {
                counters::inc(&w.metrics.fail_open, 1);
                w.hold(&self.scopes);
                self.reservation = Some(Reservation::unreserved(self.scopes.clone()));
                Verdict::Proceed { response_headers: vec![(REQUEST_ID_HEADER.to_owned(), self.record_id.clone())] }
            }
            FailureMode::FailClosed => {
                counters::inc(&w.metrics.unavailable, 1);
                let failure = Failure::new(
                    ErrorKind::Unavailable,
                    "the budget service (tollgate-counter) cannot be reached and this gateway holds no budget headroom for \
                     this request; retry shortly, and if it persists ask the gateway operator to check the counter service",
                );
                Verdict::Refuse { failure, headers: vec![(REQUEST_ID_HEADER.to_owned(), self.record_id.clone())] }
            }
        }
    }
}

/// The answer if this worker's state is already borrowed. proxy-wasm never re-enters a VM, so
/// this cannot happen; if it did, a 503 is safer than admitting an unchecked request.
fn busy_verdict() -> Verdict {
    Verdict::Refuse {
        failure: Failure::new(ErrorKind::Unavailable, "the gateway could not check this request's budget; retry"),
        headers: Vec::new(),
    }
}

impl Enforcer for LeaseEnforcer {
    fn guard_event(&mut self, event: tollgate_core::protocol::GuardEvent) {
        if let Ok(mut w) = self.worker.try_borrow_mut() {
            w.guard_event(event);
        };
    }

    fn utilization_pct(&mut self, principal: &Principal, now_ms: i64) -> Option<u32> {
        let worker = self.worker.clone();
        let mut w = worker.try_borrow_mut().ok()?;
        // The chain is kept for `admit` and `settle`: the same principal (the trait's contract).
        self.scopes = principal.scope_keys();
        Some(w.utilization_pct(&self.scopes, now_ms))
    }

    fn budget_statuses(&mut self, principal: &Principal) -> Vec<BudgetStatus> {
        let mut statuses = Vec::new();
        for scope in principal.scope_keys() {
            for slot in store::load(&scope).budgets {
                statuses.push(BudgetStatus { scope: scope.clone(), pct: slot.utilization_pct(), budget_id: slot.budget_id });
            }
        }
        statuses
    }

    fn admit(&mut self, admission: &Admission<'_>) -> Verdict {
        let worker = self.worker.clone();
        let Ok(mut w) = worker.try_borrow_mut() else { return busy_verdict() };
        if self.scopes.is_empty() {
            self.scopes = admission.principal.scope_keys();
        }
        debug_assert_eq!(self.scopes, admission.principal.scope_keys(), "utilization_pct saw another principal");
        self.amount = admission.worst_case.micros.max(0);
        self.worst_case = Some(admission.worst_case);
        admission.routed_model.clone_into(&mut self.routed_model);
        self.record_id = tollgate_core::protocol::record_id(&w.gateway_id, admission.request_id);
        self.decide(&mut w, admission.now_ms, 0).unwrap_or(Verdict::Wait)
    }

    fn on_http_call_response(&mut self, token: u32, status: Option<u16>, body: &[u8], now_ms: i64) -> Option<Verdict> {
        let pending = self.pending.take_if(|p| p.token == token)?;
        let worker = self.worker.clone();
        let Ok(mut w) = worker.try_borrow_mut() else { return Some(busy_verdict()) };
        match read_lease(status, body) {
            Ok(response) => chain::finish_refill(&mut store::SharedStore, &pending.ticket, &response, now_ms),
            Err(why) => {
                counters::inc(&w.metrics.lease_failures, 1);
                host::log(LogLevel::Warn, &format!("tollgate: lease call for request {} failed: {why}", self.record_id));
                chain::fail_refill(&mut store::SharedStore, &pending.ticket, now_ms);
            }
        }
        self.decide(&mut w, now_ms, pending.rounds)
    }

    fn settle(&mut self, record: &UsageRecord) {
        let worker = self.worker.clone();
        if self.settled {
            if let Ok(w) = worker.try_borrow_mut() {
                counters::inc(&w.metrics.double_settle, 1);
            }
            return;
        }
        self.settled = true;
        let reservation = self.reservation.take();
        if let Ok(mut w) = worker.try_borrow_mut() {
            // The chain admission used (none if the request was never admitted: then built here).
            let chain = if self.scopes.is_empty() { record.principal.scope_keys() } else { std::mem::take(&mut self.scopes) };
            w.settle(reservation, record, &chain);
            return;
        }
        worker.settle_later(reservation, record);
    }
}

impl Drop for LeaseEnforcer {
    /// The request is gone. A reservation still held was never settled (the request never reached
    /// the upstream): give it back.
    fn drop(&mut self) {
        if let Some(reservation) = self.reservation.take() {
            match self.worker.try_borrow_mut() {
                Ok(mut w) => {
                    w.release(&reservation);
                    w.unhold(&reservation.scopes);
                    counters::inc(&w.metrics.released_unsettled, 1);
                }
                // Never happens (proxy-wasm does not re-enter a VM); a pooled reservation then
                // stays held in its pool, which only parks headroom until the pool is given back.
                Err(_) if !reservation.pooled => chain::release(&mut store::SharedStore, &reservation),
                Err(_) => {}
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
mod tests {
    use super::*;
    use tollgate_core::enforce::EnforcementConfig;
    use tollgate_core::protocol::Tokens;

    fn worker() -> SharedWorker {
        let settings = EnforcementConfig::from_json(r#"{"counter_cluster":"counter","gateway_token":"t"}"#).unwrap();
        Worker::start(settings, "gw")
    }

    fn record(cost_micros: Micros) -> UsageRecord {
        UsageRecord {
            id: "gw:req-1".to_owned(),
            principal: Principal { org: Some("acme".to_owned()), ..Principal::default() },
            dialect: "openai".to_owned(),
            requested_model: "m".to_owned(),
            routed_model: "m".to_owned(),
            tokens: Tokens::default(),
            cost_micros,
            status: 200,
            estimated: false,
            started_at_ms: 1,
            finished_at_ms: 2,
            p99_reservations: Vec::new(),
        }
    }

    /// proxy-wasm never re-enters a VM, so the worker should never be busy when a request settles;
    /// if it is, the record is queued and taken in by the worker's next use, never dropped.
    #[test]
    fn a_record_settled_while_the_worker_is_busy_is_kept_for_its_next_use() {
        let worker = worker();
        let mut enforcer = LeaseEnforcer::new(worker.clone());
        {
            let _busy = worker.try_borrow_mut().unwrap();
            enforcer.settle(&record(250));
        }
        let w = worker.try_borrow_mut().unwrap();
        assert_eq!(w.settlements.len(), 1, "the settlement waits for the book, not dropped");
        assert_eq!(w.settlements[0].1, 250, "with the record's cost");
        drop(w);
        enforcer.settle(&record(250));
        assert_eq!(worker.try_borrow_mut().unwrap().settlements.len(), 1, "a second settle of the same request is refused");
    }
}
