//! The two points where budget enforcement plugs into the request path (issue 4). Without an
//! `enforcement` section there is no enforcer at all (`None`), and the filter skips every step
//! below, including the clock reads only enforcement needs.
//!
//! ```text
//! request body parsed ─► principal known ─► [utilization_pct] ─► routed ─► worst case computed
//!                                                                            │
//!                                                                   [admit] ─┴─► Proceed / Refuse / Wait
//! response finished (or cut) ─► tokens and cost known ─► UsageRecord ─► [settle]
//! ```
//!
//! - [`Enforcer::utilization_pct`] feeds routing's `budget_utilization_at_least_pct` condition.
//! - [`Enforcer::budget_statuses`] feeds the budget banner on a chat UI's pages (`core::banner`).
//! - [`Enforcer::admit`] sees the routed request with its worst-case cost and decides. `Wait`
//!   makes the filter pause the request (e.g. while a lease top-up is in flight); the answer to an
//!   outbound call made from this HTTP context arrives in [`Enforcer::on_http_call_response`],
//!   which returns the final verdict, and the filter resumes or refuses the request.
//! - [`Enforcer::settle`] is called exactly once for every admitted request, with the complete
//!   usage record (also for cut streams, charged from an estimate and flagged `estimated`, and for
//!   upstream errors, charged what the upstream reported or zero).
//!
//! `crate::enforce::EnforcementRoot` is the per-VM side (one per plugin configuration): it makes
//! a fresh [`Enforcer`] for each request and receives the root context's ticks (batching, lease
//! renewal). This module imports nothing of the crate: the filter and `enforce` both depend on it,
//! never on each other through it.

use tollgate_core::banner::BudgetStatus;
use tollgate_core::dialect::Dialect;
use tollgate_core::enforce::reservation::WorstCase;
use tollgate_core::errors::Failure;
use tollgate_core::protocol::{Principal, UsageRecord};

/// A routed request awaiting admission.
#[derive(Debug, Clone)]
pub struct Admission<'a> {
    /// Unique per request on this gateway (`x-request-id`).
    pub request_id: &'a str,
    pub principal: &'a Principal,
    pub dialect: Dialect,
    pub routed_model: &'a str,
    pub stream: bool,
    /// What the request can cost at most (`micros`), and how that was priced: its prompt bound,
    /// output tokens and the routed model's price (a `reserve: p99` budget reprices it with fewer
    /// output tokens).
    pub worst_case: WorstCase,
    pub now_ms: i64,
}

/// What enforcement decides about a request.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// Forward it; `response_headers` are added to the client's response (e.g. budget warnings).
    Proceed { response_headers: Vec<(String, String)> },
    /// Answer locally with this failure (429/503 in the dialect's shape) and extra headers
    /// (e.g. `retry-after`).
    Refuse { failure: Failure, headers: Vec<(String, String)> },
    /// Keep the request paused until [`Enforcer::on_http_call_response`] returns a verdict.
    Wait,
}

/// Per-request enforcement.
pub trait Enforcer {
    /// The highest budget utilization (percent) on the principal's chain, for routing. Called at
    /// most once, before [`Enforcer::admit`], with the principal the request is admitted and
    /// settled with (an enforcer may keep the chain it computes here).
    fn utilization_pct(&mut self, _principal: &Principal, _now_ms: i64) -> Option<u32> {
        None
    }

    /// Every budget the gateway knows on the principal's chain, with its utilization, for the
    /// budget banner (`core::banner`). Empty when it knows none.
    fn budget_statuses(&mut self, _principal: &Principal) -> Vec<BudgetStatus> {
        Vec::new()
    }

    fn admit(&mut self, admission: &Admission<'_>) -> Verdict;

    /// The answer to an outbound call this request's context made; `Some` ends a `Wait`.
    fn on_http_call_response(&mut self, _token: u32, _status: Option<u16>, _body: &[u8], _now_ms: i64) -> Option<Verdict> {
        None
    }

    /// The settled request. Called exactly once per admitted request.
    fn settle(&mut self, record: &UsageRecord);

    /// A retry-guard event of this request, delivered to the counter with the usage posts.
    fn guard_event(&mut self, _event: tollgate_core::protocol::GuardEvent) {}

    /// The request ended while still waiting for admission (the client went away during `Wait`);
    /// it was never admitted or forwarded. Release whatever the wait was holding.
    fn abandon(&mut self) {}
}
