//! Storage of the governance objects: workflows, exemption requests and outcomes.
//!
//! A separate trait from [`super::Store`] (every store implements both; `Store` requires it) so
//! the governance code sits in its own modules on each backend: `store/sqlite/gov.rs` and
//! `store/redis/gov.rs`. None of it is on the lease or usage path.
//!
//! # Contract every backend keeps
//! - **Workflows**: `put_workflow` stores the canonical spec by id; identical → `Unchanged`, not
//!   audited; otherwise `workflow.create` / `workflow.update` in the same atomic step, with actor,
//!   `now_ms`, before and after (subject `workflow:<id>`). `delete_workflow` audits
//!   `workflow.delete`. The cap budgets are ordinary budgets the server saves alongside.
//! - **Exemption requests**: `add_exemption_request` assigns the next id and audits
//!   `exemption_request.create` atomically. `decide_exemption_request` reads the request, applies
//!   [`ExemptionRequest::decide`] and, when that decides it, stores the decided request, and for an
//!   approval adds the exemption (next exemption id, active from its own start, as
//!   [`super::Store::add_exemption`] would) — all in **one atomic step** with the audit entries
//!   `exemption_request.approve|reject` and `exemption.add`. Two approvers racing: one wins, the
//!   other sees `AlreadyDecided`.
//! - **Outcomes**: `record_outcome` is idempotent by id: the first write wins, a repeat returns the
//!   stored outcome and `false`, changes nothing. `Ok` means durable (SQLite: committed with the
//!   configured `synchronous`; Redis: answered by Redis). Not audited (they are data, like usage).
//!   `list_outcomes` returns those with `from_ms <= at_ms < to_ms`, sorted by (at_ms, id).
//! - **Seats** ([`crate::seats`]): one document. `put_seats` stores the canonical spec; identical →
//!   `Unchanged`, not audited; otherwise `seats.create` / `seats.update` (subject `seats`) in the
//!   same atomic step, with actor, `now_ms`, before and after.

use super::StoreResult;
use crate::approval::{DecideOutcome, Decision, ExemptionRequest};
use crate::outcome::Outcome;
use crate::workflow::{Workflow, WorkflowSpec};
use std::future::Future;

/// What [`GovStore::put_workflow`] did (`PutOutcome` is budget-shaped; this carries the spec).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PutWorkflow {
    Created,
    Updated { before: WorkflowSpec },
    Unchanged,
}

impl PutWorkflow {
    pub fn as_str(&self) -> &'static str {
        match self {
            PutWorkflow::Created => "created",
            PutWorkflow::Updated { .. } => "updated",
            PutWorkflow::Unchanged => "unchanged",
        }
    }
}

/// Governance storage. See the module docs for the contract.
pub trait GovStore: Send + Sync + 'static {
    fn put_workflow(&self, workflow: Workflow, actor: &str, now_ms: i64) -> impl Future<Output = StoreResult<PutWorkflow>> + Send;
    fn delete_workflow(&self, id: &str, actor: &str, now_ms: i64) -> impl Future<Output = StoreResult<Option<WorkflowSpec>>> + Send;
    /// Every workflow, sorted by id.
    fn list_workflows(&self) -> impl Future<Output = StoreResult<Vec<Workflow>>> + Send;

    /// Stores a new request (its id is assigned here), audited.
    fn add_exemption_request(&self, request: ExemptionRequest, actor: &str, now_ms: i64) -> impl Future<Output = StoreResult<ExemptionRequest>> + Send;
    /// Every request, oldest first.
    fn list_exemption_requests(&self) -> impl Future<Output = StoreResult<Vec<ExemptionRequest>>> + Send;
    /// Approves or rejects, atomically with the exemption an approval creates.
    fn decide_exemption_request(&self, id: u64, decision: Decision, actor: &str, now_ms: i64) -> impl Future<Output = StoreResult<DecideOutcome>> + Send;

    /// Stores an outcome unless its id is known; returns the stored one and whether it is new.
    fn record_outcome(&self, outcome: Outcome) -> impl Future<Output = StoreResult<(Outcome, bool)>> + Send;
    fn list_outcomes(&self, from_ms: i64, to_ms: i64) -> impl Future<Output = StoreResult<Vec<Outcome>>> + Send;

    /// Stores the seats config (roles, seat costs, users' roles, bands), audited unless unchanged.
    fn put_seats(&self, seats: crate::seats::Seats, actor: &str, now_ms: i64) -> impl Future<Output = StoreResult<crate::seats::PutSeats>> + Send;
    /// The stored seats config, if any.
    fn get_seats(&self) -> impl Future<Output = StoreResult<Option<crate::seats::SeatsSpec>>> + Send;
}

/// Loads a stored workflow spec (validated again: the policy may have been stored by an older
/// version; a spec that no longer passes is still served, as stored).
pub fn load_workflow(id: &str, json: &str) -> StoreResult<Workflow> {
    let spec: WorkflowSpec = serde_json::from_str(json).map_err(|e| super::StoreError::Internal(format!("workflow {id}: {e}")))?;
    Ok(Workflow::from_spec(spec.clone()).unwrap_or(Workflow { spec, weekly_cap_micros: None, monthly_cap_micros: None, review_at_ms: None }))
}
