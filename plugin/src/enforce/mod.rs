//! Enforcement inside Envoy: the adapter between `core::enforce` and the proxy-wasm host.
//!
//! The filter calls four hooks per request and three per worker; everything else happens here:
//!
//! ```text
//! root on_configure        configure()        queue, metrics, tick
//! request body parsed      admit()            reserve the worst case on the chain → continue,
//!                                             pause (lease call), or answer 429 / 503
//! response headers         response_headers() soft-threshold warning headers
//! response finished        settle()           real cost replaces the reservation; record queued
//! on_done / on_log         finish()           last resort: release what was never settled
//! root on_tick             on_tick()          resume waiters, post usage batches
//! root on_http_call_resp.  on_call_response() lease answers, usage acknowledgements
//! ```
//!
//! Every call to the counter service is dispatched *as the root context* (the effective context is
//! switched for the call), so its answer reaches the root even if the request that caused it is
//! gone, and one answer can resume every request of this worker that waits on it. Requests paused
//! on a lease call another worker owns are re-checked on the tick.
//!
//! State is per worker VM (a thread-local): the waiting requests, the reservations of requests in
//! flight, the calls in flight. The lease book itself is process-wide in shared data
//! ([`store::SharedStore`]); the usage queue is a process-wide shared queue.

mod abi;
mod store;

use crate::host::{self, LogLevel};
use std::cell::RefCell;
use std::collections::BTreeMap;
use tollgate_core::dialect::Dialect;
use tollgate_core::enforce::chain::{self, BudgetWarning, RefillTicket};
use tollgate_core::enforce::queue::{self, InFlightBatch, QueuedRecord};
use tollgate_core::enforce::{Decision, EnforcementSettings, FailureMode, Refusal, Reservation};
use tollgate_core::errors::{ErrorKind, Failure};
use tollgate_core::money::Micros;
use tollgate_core::protocol::{LeaseRequest, LeaseResponse, UsageRecord};

/// Name of the process-wide usage queue.
const QUEUE_NAME: &str = "tollgate.usage";
/// Largest counter answer read.
const MAX_ANSWER_BYTES: usize = 1 << 20;
/// Times a paused request may go back to the counter before it is treated as unreachable.
const MAX_ROUNDS: u8 = 3;

/// What the filter does with the request after [`admit`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admission {
    /// Forward it (a reservation, if any, is held for [`settle`]).
    Continue,
    /// Return `Action::Pause`: enforcement resumes it, or answers it, when the counter answers.
    Pause,
    /// A local response (429 or 503) was sent; stop processing.
    Answered,
}

/// Counters, `wasmcustom.tollgate_*` in Envoy's stats.
#[derive(Default)]
struct Metrics {
    admitted: u32,
    paused: u32,
    refused: u32,
    unavailable: u32,
    fail_open: u32,
    would_refuse: u32,
    soft_warning: u32,
    excess_micros: u32,
    unreserved_micros: u32,
    settled: u32,
    released_unsettled: u32,
    double_settle: u32,
    lease_calls: u32,
    lease_failures: u32,
    topups: u32,
    usage_posts: u32,
    usage_post_failures: u32,
    usage_acked: u32,
    usage_requeued: u32,
    usage_dropped: u32,
    usage_queued_gauge: u32,
}

impl Metrics {
    fn define() -> Metrics {
        let c = |name: &str| host::define_counter(name).unwrap_or(u32::MAX);
        Metrics {
            admitted: c("tollgate_enforce_admitted_total"),
            paused: c("tollgate_enforce_paused_total"),
            refused: c("tollgate_enforce_refused_total"),
            unavailable: c("tollgate_enforce_unavailable_total"),
            fail_open: c("tollgate_enforce_fail_open_total"),
            would_refuse: c("tollgate_enforce_observe_would_refuse_total"),
            soft_warning: c("tollgate_enforce_soft_warning_total"),
            excess_micros: c("tollgate_enforce_excess_micros_total"),
            unreserved_micros: c("tollgate_enforce_unreserved_micros_total"),
            settled: c("tollgate_enforce_settled_total"),
            released_unsettled: c("tollgate_enforce_released_unsettled_total"),
            double_settle: c("tollgate_enforce_double_settle_prevented_total"),
            lease_calls: c("tollgate_lease_calls_total"),
            lease_failures: c("tollgate_lease_call_failures_total"),
            topups: c("tollgate_lease_topups_total"),
            usage_posts: c("tollgate_usage_posts_total"),
            usage_post_failures: c("tollgate_usage_post_failures_total"),
            usage_acked: c("tollgate_usage_records_acked_total"),
            usage_requeued: c("tollgate_usage_records_requeued_total"),
            usage_dropped: c("tollgate_usage_dropped_total"),
            usage_queued_gauge: abi::define_gauge("tollgate_usage_queued").unwrap_or(u32::MAX),
        }
    }
}

fn inc(id: u32, by: u64) {
    if id != u32::MAX {
        host::increment(id, by);
    }
}

/// A request paused until the counter answers.
struct Waiter {
    dialect: Dialect,
    scopes: Vec<String>,
    amount: Micros,
    paused_at_ms: i64,
    rounds: u8,
}

/// A request admitted on this worker and not finished yet.
struct Admitted {
    reservation: Option<Reservation>,
    warning: Option<BudgetWarning>,
    settled: bool,
}

enum Call {
    Lease(RefillTicket),
    Usage(InFlightBatch),
}

struct Enforcer {
    settings: EnforcementSettings,
    gateway_id: String,
    root_context_id: u32,
    queue_id: Option<u32>,
    metrics: Metrics,
    calls: BTreeMap<u32, Call>,
    waiters: BTreeMap<u32, Waiter>,
    requests: BTreeMap<u32, Admitted>,
    usage_in_flight: bool,
    last_post_ms: i64,
}

thread_local! {
    static ENFORCER: RefCell<Option<Enforcer>> = const { RefCell::new(None) };
}

/// Runs `f` on this worker's enforcer; `None` when enforcement is off (or re-entered).
fn with<R>(f: impl FnOnce(&mut Enforcer) -> R) -> Option<R> {
    ENFORCER.with(|cell| cell.try_borrow_mut().ok().and_then(|mut e| e.as_mut().map(f)))
}

/// Whether enforcement is configured on this worker.
pub fn enabled() -> bool {
    with(|_| ()).is_some()
}

/// Root `on_configure`: (re)initialises enforcement for this worker, or turns it off (`None`).
pub fn configure(root_context_id: u32, settings: Option<EnforcementSettings>, gateway_id: &str) -> Result<(), String> {
    let Some(settings) = settings else {
        ENFORCER.with(|cell| {
            if let Ok(mut e) = cell.try_borrow_mut() {
                *e = None;
            }
        });
        return Ok(());
    };
    let queue_id = abi::register_queue(QUEUE_NAME).map_err(|e| format!("tollgate: cannot register the usage queue (host status {})", e.0))?;
    abi::set_tick_period_ms(settings.tick_ms()).map_err(|e| format!("tollgate: cannot set the tick period (host status {})", e.0))?;
    host::log(
        LogLevel::Info,
        &format!(
            "tollgate: enforcement on: counter cluster `{}`, gateway `{gateway_id}`, {}",
            settings.counter_cluster,
            settings.failure_mode.as_str()
        ),
    );
    let enforcer = Enforcer {
        settings,
        gateway_id: gateway_id.to_owned(),
        root_context_id,
        queue_id: Some(queue_id),
        metrics: Metrics::define(),
        calls: BTreeMap::new(),
        waiters: BTreeMap::new(),
        requests: BTreeMap::new(),
        usage_in_flight: false,
        last_post_ms: host::now_ms(),
    };
    ENFORCER.with(|cell| {
        if let Ok(mut e) = cell.try_borrow_mut() {
            *e = Some(enforcer);
        }
    });
    Ok(())
}

/// The highest budget utilization (percent) on the chain that this gateway knows of, for
/// routing's `budget_utilization_at_least_pct`. `None` when enforcement is off.
pub fn utilization_pct(scopes: &[String]) -> Option<u32> {
    with(|_| chain::max_utilization_pct(&store::SharedStore, scopes))
}

/// Request body parsed, principal and routed model known: reserve `worst_case` on the chain.
/// `context_id` is the calling HTTP context. With enforcement off, always `Continue`.
pub fn admit(context_id: u32, dialect: Dialect, scopes: Vec<String>, worst_case: Micros) -> Admission {
    with(|e| e.admit(context_id, dialect, scopes, worst_case)).unwrap_or(Admission::Continue)
}

/// Response headers to add for this request: a soft-threshold warning, if any.
pub fn response_headers(context_id: u32) -> Vec<(&'static str, String)> {
    with(|e| e.requests.get(&context_id).and_then(|a| a.warning.as_ref()).map(BudgetWarning::headers).unwrap_or_default())
        .unwrap_or_default()
}

/// Response finished, cost known: the reservation becomes the real cost and the record is queued.
/// Exactly once per request; later calls are ignored (and counted). Returns whether it settled.
pub fn settle(context_id: u32, record: &UsageRecord) -> bool {
    with(|e| e.settle(context_id, record)).unwrap_or(false)
}

/// `on_done` / `on_log`: forget the request; a reservation never settled is released (the
/// request never reached the upstream, or the filter had nothing to charge).
pub fn finish(context_id: u32) {
    let _ = with(|e| e.finish(context_id));
}

/// Root `on_tick`.
pub fn on_tick() {
    let _ = with(|e| e.on_tick());
}

/// Root `on_http_call_response`. Returns false if the token is not enforcement's.
pub fn on_call_response(token: u32, num_headers: usize, body_size: usize) -> bool {
    with(|e| e.on_call_response(token, num_headers, body_size)).unwrap_or(false)
}

/// Root `on_done` (Envoy draining or the plugin being replaced): post what is queued now.
pub fn on_drain() {
    let _ = with(|e| {
        e.last_post_ms = i64::MIN / 2;
        e.flush(host::now_ms());
    });
}

impl Enforcer {
    fn admit(&mut self, context_id: u32, dialect: Dialect, scopes: Vec<String>, amount: Micros) -> Admission {
        let now = host::now_ms();
        match chain::reserve(&mut store::SharedStore, &scopes, amount, now, &self.settings) {
            Decision::Admit { reservation, topup, would_refuse, warning } => {
                self.admitted(context_id, Some(reservation), &would_refuse, warning);
                self.topup(&topup, now, context_id);
                Admission::Continue
            }
            Decision::Refill { scopes: ask } => {
                if !self.ask(&ask, amount, now, context_id) {
                    // The call could not even be dispatched: decide now.
                    return self.unavailable(context_id, dialect, scopes, context_id);
                }
                inc(self.metrics.paused, 1);
                self.waiters.insert(context_id, Waiter { dialect, scopes, amount, paused_at_ms: now, rounds: 1 });
                Admission::Pause
            }
            Decision::Wait => {
                inc(self.metrics.paused, 1);
                self.waiters.insert(context_id, Waiter { dialect, scopes, amount, paused_at_ms: now, rounds: 1 });
                Admission::Pause
            }
            Decision::Unavailable => self.unavailable(context_id, dialect, scopes, context_id),
            Decision::Refuse(refusal) => {
                self.refuse(context_id, dialect, &refusal, now, context_id);
                Admission::Answered
            }
        }
    }

    fn admitted(&mut self, context_id: u32, reservation: Option<Reservation>, would_refuse: &[String], warning: Option<BudgetWarning>) {
        inc(self.metrics.admitted, 1);
        if !would_refuse.is_empty() {
            inc(self.metrics.would_refuse, 1);
            host::log(LogLevel::Info, &format!("tollgate: observe-mode budget(s) {} would have refused a request", would_refuse.join(", ")));
        }
        if warning.is_some() {
            inc(self.metrics.soft_warning, 1);
        }
        self.requests.insert(context_id, Admitted { reservation, warning, settled: false });
    }

    /// The counter cannot be asked: apply the failure mode. `current` is the context of the
    /// running callback (to restore after acting on `context_id`).
    fn unavailable(&mut self, context_id: u32, dialect: Dialect, scopes: Vec<String>, current: u32) -> Admission {
        match self.settings.failure_mode {
            FailureMode::FailOpen => {
                inc(self.metrics.fail_open, 1);
                self.admitted(context_id, Some(Reservation::unreserved(scopes)), &[], None);
                Admission::Continue
            }
            FailureMode::FailClosed => {
                inc(self.metrics.unavailable, 1);
                let failure = Failure::new(
                    ErrorKind::Unavailable,
                    "the budget service (tollgate-counter) cannot be reached and this gateway holds no budget headroom for \
                     this request; retry shortly, and if it persists ask the gateway operator to check the counter service",
                );
                self.answer(context_id, dialect, &failure, None, current);
                Admission::Answered
            }
        }
    }

    fn refuse(&mut self, context_id: u32, dialect: Dialect, refusal: &Refusal, now: i64, current: u32) {
        inc(self.metrics.refused, 1);
        let failure = Failure::new(ErrorKind::BudgetExceeded, refusal.message());
        self.answer(context_id, dialect, &failure, refusal.retry_after_secs(now), current);
    }

    /// Sends a local response on `context_id` (switching the effective context if it is not the
    /// running one).
    fn answer(&self, context_id: u32, dialect: Dialect, failure: &Failure, retry_after: Option<u64>, current: u32) {
        let body = failure.body(dialect);
        let retry = retry_after.map(|s| s.to_string());
        let mut headers: Vec<(&str, &str)> = vec![("content-type", "application/json")];
        if let Some(r) = retry.as_deref() {
            headers.push(("retry-after", r));
        }
        if context_id != current && abi::set_effective_context(context_id).is_err() {
            return;
        }
        if let Err(e) = host::send_response(failure.status(), &headers, &body) {
            host::log(LogLevel::Warn, &format!("tollgate: could not answer a request locally (host status {})", e.0));
        }
        if context_id != current {
            let _ = abi::set_effective_context(current);
        }
    }

    /// Dispatches a lease call for `scopes` as the root context. Returns whether a call for them
    /// is now in flight (ours, just dispatched, or another's).
    fn ask(&mut self, scopes: &[String], need: Micros, now: i64, current: u32) -> bool {
        let Some(ticket) = chain::begin_refill(&mut store::SharedStore, scopes, need, now, &self.settings) else {
            return true; // every scope is already being asked about
        };
        let request = LeaseRequest { gateway_id: self.gateway_id.clone(), scopes: ticket.scopes.clone(), want_micros: ticket.want_micros };
        let body = serde_json::to_vec(&request).unwrap_or_default();
        match self.dispatch("/v1/leases", &body, current) {
            Some(token) => {
                inc(self.metrics.lease_calls, 1);
                self.calls.insert(token, Call::Lease(ticket));
                true
            }
            None => {
                inc(self.metrics.lease_failures, 1);
                chain::fail_refill(&mut store::SharedStore, &ticket, now);
                false
            }
        }
    }

    fn topup(&mut self, scopes: &[String], now: i64, current: u32) {
        if !scopes.is_empty() && self.ask(scopes, 0, now, current) {
            inc(self.metrics.topups, 1);
        }
    }

    /// `POST path` to the counter as the root context.
    fn dispatch(&self, path: &str, body: &[u8], current: u32) -> Option<u32> {
        let switch = current != self.root_context_id;
        if switch && abi::set_effective_context(self.root_context_id).is_err() {
            return None;
        }
        let authorization = self.settings.authorization();
        let headers = [
            (":method", "POST"),
            (":path", path),
            (":authority", self.settings.counter_authority.as_str()),
            ("content-type", "application/json"),
            ("authorization", authorization.as_str()),
        ];
        let result = abi::http_call(&self.settings.counter_cluster, &headers, body, self.settings.call_timeout_ms);
        if switch {
            let _ = abi::set_effective_context(current);
        }
        match result {
            Ok(token) => Some(token),
            Err(e) => {
                host::log(
                    LogLevel::Warn,
                    &format!(
                        "tollgate: cannot call the counter service on cluster `{}` (host status {}); check that the cluster exists",
                        self.settings.counter_cluster, e.0
                    ),
                );
                None
            }
        }
    }

    fn settle(&mut self, context_id: u32, record: &UsageRecord) -> bool {
        let reservation = match self.requests.get_mut(&context_id) {
            Some(a) if a.settled => {
                inc(self.metrics.double_settle, 1);
                return false;
            }
            Some(a) => {
                a.settled = true;
                a.reservation.take()
            }
            None => {
                self.requests.insert(context_id, Admitted { reservation: None, warning: None, settled: true });
                None
            }
        };
        let cost = record.cost_micros.max(0);
        match reservation {
            Some(r) if r.reserved_on.is_empty() && r.amount == 0 => {
                chain::settle(&mut store::SharedStore, r, cost);
                inc(self.metrics.unreserved_micros, u64::try_from(cost).unwrap_or(0));
            }
            Some(r) => {
                let settled = chain::settle(&mut store::SharedStore, r, cost);
                inc(self.metrics.excess_micros, u64::try_from(settled.excess_micros).unwrap_or(0));
            }
            None => {
                let scopes = record.principal.scope_keys();
                chain::settle(&mut store::SharedStore, Reservation::unreserved(scopes), cost);
                inc(self.metrics.unreserved_micros, u64::try_from(cost).unwrap_or(0));
            }
        }
        inc(self.metrics.settled, 1);
        self.enqueue(record);
        true
    }

    fn enqueue(&mut self, record: &UsageRecord) {
        let Some(queued) = QueuedRecord::from_record(record) else { return };
        let admitted = store::adjust_queued(1, self.settings.queue_bound as u64);
        let sent = admitted && self.queue_id.is_some_and(|q| abi::enqueue(q, &queued.json).is_ok());
        if !sent {
            if admitted {
                store::adjust_queued(-1, u64::MAX);
            }
            self.dropped(std::slice::from_ref(&queued), "the usage queue is full (enforcement.queue_bound)");
        }
    }

    fn dropped(&mut self, records: &[QueuedRecord], why: &str) {
        inc(self.metrics.usage_dropped, records.len() as u64);
        chain::acknowledge(&mut store::SharedStore, &queue::costs_by_scope(records), true);
        let ids: Vec<&str> = records.iter().take(5).map(|r| r.id.as_str()).collect();
        host::log(
            LogLevel::Error,
            &format!("tollgate: dropped {} usage record(s) ({why}); first ids: {}; the counter will not see them", records.len(), ids.join(", ")),
        );
    }

    fn finish(&mut self, context_id: u32) {
        self.waiters.remove(&context_id);
        if let Some(admitted) = self.requests.remove(&context_id) {
            if let Some(reservation) = admitted.reservation {
                if !admitted.settled {
                    inc(self.metrics.released_unsettled, 1);
                    chain::release(&mut store::SharedStore, &reservation);
                }
            }
        }
    }

    fn on_tick(&mut self) {
        let now = host::now_ms();
        let root = self.root_context_id;
        self.process_waiters(now, root);
        self.flush(now);
        abi::set_gauge(self.metrics.usage_queued_gauge, store::queued());
    }

    /// Re-checks every paused request of this worker.
    fn process_waiters(&mut self, now: i64, current: u32) {
        let ids: Vec<u32> = self.waiters.keys().copied().collect();
        for id in ids {
            let Some(waiter) = self.waiters.remove(&id) else { continue };
            let deadline = waiter
                .paused_at_ms
                .saturating_add(i64::try_from(self.settings.call_timeout_ms).unwrap_or(i64::MAX).saturating_mul(i64::from(MAX_ROUNDS)))
                .saturating_add(tollgate_core::enforce::book::REFILL_SLACK_MS);
            let decision = chain::reserve(&mut store::SharedStore, &waiter.scopes, waiter.amount, now, &self.settings);
            let outcome = match decision {
                Decision::Admit { reservation, topup, would_refuse, warning } => {
                    self.admitted(id, Some(reservation), &would_refuse, warning);
                    self.topup(&topup, now, current);
                    Admission::Continue
                }
                Decision::Refill { scopes } if waiter.rounds < MAX_ROUNDS && now < deadline => {
                    if self.ask(&scopes, waiter.amount, now, current) {
                        self.waiters.insert(id, Waiter { rounds: waiter.rounds + 1, ..waiter });
                        continue;
                    }
                    self.unavailable(id, waiter.dialect, waiter.scopes, current)
                }
                Decision::Wait if now < deadline => {
                    self.waiters.insert(id, waiter);
                    continue;
                }
                Decision::Refill { .. } | Decision::Wait | Decision::Unavailable => {
                    self.unavailable(id, waiter.dialect, waiter.scopes, current)
                }
                Decision::Refuse(refusal) => {
                    self.refuse(id, waiter.dialect, &refusal, now, current);
                    Admission::Answered
                }
            };
            if outcome == Admission::Continue && abi::set_effective_context(id).is_ok() {
                if let Err(e) = abi::resume_request() {
                    host::log(LogLevel::Debug, &format!("tollgate: could not resume a request (host status {}); it has probably gone", e.0));
                }
                let _ = abi::set_effective_context(current);
            }
        }
    }

    /// Posts a batch if one is due.
    fn flush(&mut self, now: i64) {
        let Some(queue_id) = self.queue_id else { return };
        let queued = usize::try_from(store::queued()).unwrap_or(usize::MAX);
        if !queue::should_flush(queued, now.saturating_sub(self.last_post_ms), self.usage_in_flight, &self.settings) {
            return;
        }
        let mut records = Vec::new();
        let mut garbage = 0u64;
        while records.len() < self.settings.batch_size {
            match abi::dequeue(queue_id) {
                Ok(Some(bytes)) => match QueuedRecord::from_queue(bytes) {
                    Some(r) => records.push(r),
                    None => garbage += 1,
                },
                _ => break,
            }
        }
        let taken = records.len() as u64 + garbage;
        store::adjust_queued(-i64::try_from(taken).unwrap_or(i64::MAX), u64::MAX);
        if garbage > 0 {
            inc(self.metrics.usage_dropped, garbage);
            host::log(LogLevel::Error, &format!("tollgate: dropped {garbage} unreadable item(s) from the usage queue"));
        }
        if records.is_empty() {
            return;
        }
        self.last_post_ms = now;
        let body = queue::batch_body(&self.gateway_id, &records);
        let root = self.root_context_id;
        match self.dispatch("/v1/usage", &body, root) {
            Some(token) => {
                inc(self.metrics.usage_posts, 1);
                self.usage_in_flight = true;
                self.calls.insert(token, Call::Usage(InFlightBatch { records, sent_at_ms: now }));
            }
            None => {
                inc(self.metrics.usage_post_failures, 1);
                self.requeue(records);
            }
        }
    }

    /// Puts records back for redelivery (ids make it idempotent at the counter).
    fn requeue(&mut self, records: Vec<QueuedRecord>) {
        let Some(queue_id) = self.queue_id else { return };
        inc(self.metrics.usage_requeued, records.len() as u64);
        let mut lost = Vec::new();
        for record in records {
            // Redeliveries are always admitted: they were counted in the bound once already.
            store::adjust_queued(1, u64::MAX);
            if abi::enqueue(queue_id, &record.json).is_err() {
                store::adjust_queued(-1, u64::MAX);
                lost.push(record);
            }
        }
        if !lost.is_empty() {
            self.dropped(&lost, "the usage queue refused a redelivery");
        }
    }

    fn on_call_response(&mut self, token: u32, _num_headers: usize, body_size: usize) -> bool {
        let Some(call) = self.calls.remove(&token) else { return false };
        let now = host::now_ms();
        let status = abi::call_response_status();
        let body = abi::call_response_body(body_size, MAX_ANSWER_BYTES);
        match call {
            Call::Lease(ticket) => {
                match read_lease(status, &body) {
                    Ok(response) => chain::finish_refill(&mut store::SharedStore, &ticket, &response, now),
                    Err(why) => {
                        inc(self.metrics.lease_failures, 1);
                        host::log(LogLevel::Warn, &format!("tollgate: lease call failed: {why}"));
                        chain::fail_refill(&mut store::SharedStore, &ticket, now);
                    }
                }
                let root = self.root_context_id;
                self.process_waiters(now, root);
            }
            Call::Usage(batch) => {
                self.usage_in_flight = false;
                match queue::read_ack(status, &body, batch.records.len()) {
                    Ok(_) => {
                        inc(self.metrics.usage_acked, batch.records.len() as u64);
                        chain::acknowledge(&mut store::SharedStore, &batch.costs_by_scope(), false);
                    }
                    Err(why) => {
                        inc(self.metrics.usage_post_failures, 1);
                        host::log(LogLevel::Warn, &format!("tollgate: usage post failed, {} record(s) will be sent again: {why}", batch.records.len()));
                        self.requeue(batch.records);
                    }
                }
            }
        }
        true
    }
}

/// Reads a lease answer: a 200 with a `LeaseResponse`, anything else is a failure to report.
fn read_lease(status: Option<u16>, body: &[u8]) -> Result<LeaseResponse, String> {
    match status {
        Some(200) => serde_json::from_slice(body).map_err(|e| format!("unreadable answer: {e}")),
        Some(code) => Err(format!(
            "counter answered HTTP {code}: {}",
            String::from_utf8_lossy(body.get(..body.len().min(300)).unwrap_or_default())
        )),
        None => Err("no answer (timeout or connection failure)".to_owned()),
    }
}
