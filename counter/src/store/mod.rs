//! Storage behind the counter service: the [`Store`] trait and the types it speaks.
//!
//! The HTTP layer (`server.rs`) authenticates, parses and validates, then calls exactly one `Store`
//! method per request. Everything stateful — budgets, spend per window, lease slices, exemptions,
//! the idempotent ledger, the audit log — lives behind this trait, so a backend can make each
//! operation atomic in its own way (the embedded [`sqlite::SqliteStore`]: one in-memory book under
//! a mutex plus one SQLite writer thread; a Redis backend: Lua scripts).
//!
//! # Contract every backend keeps
//! - `now_ms` is passed in (from the server's [`crate::clock::Clock`]); a backend never reads the
//!   system time for a decision, so tests with a manual clock behave the same on every backend.
//! - **Leases** ([`Store::grant_leases`]): for each budget whose scope is in the request, this
//!   gateway's slice becomes `min(want, hard - spent - other live slices)` (never below 0) for an
//!   enforce budget, exactly `want` for an observe budget, and expires `lease_ttl` after `now`.
//!   Except: an enforce slice of this gateway that is live and was granted after the grant the
//!   request says the gateway had seen (`known_leases`, [`LeaseRequest::keeps_slice`]) is not
//!   lowered: `min(max(want, slice), hard - spent - other live slices)`. A request without
//!   `known_leases` is answered by `want` alone.
//!   A selector budget ([`crate::budget::Selector`]) is answered once per requested scope key it
//!   covers, under that key, and each (gateway, key) holds a slice of its own
//!   ([`book::lease_holder`]): the gateway files slices by scope key, so two keys are two slices.
//!   Invariant at every grant, per enforce budget: `spent + sum(live slices) <= hard limit`, under
//!   any concurrency. Expired slices count for nothing. A grant is durable before it is answered:
//!   a restarted counter still counts the live slices it handed out before the restart.
//! - **Usage** ([`Store::ingest`]): a batch is all or nothing. A record whose id was seen before
//!   with the same `finished_at_ms` (in any earlier batch, across restarts, or earlier in the same
//!   batch) is a duplicate and changes nothing: a gateway's retry re-sends its queued records as
//!   they were. (An id sent again with another finish time is a gateway bug, never a retry; the
//!   SQLite store counts it, keyed by both for a ledger that appends, the Redis store does not.)
//!   Each new record is added to the ledger and charged (cost and billed tokens) to
//!   the current window — at `now_ms`, not the record's own time — of every budget covering a key of
//!   `record.principal.scope_keys()`, **once per budget**, and shrinks the reporting gateway's slice
//!   on that budget (for a selector budget: the slice held under the key it matched) by its cost,
//!   saturating at 0. `Ok` means durable: the ack is sent only after that.
//! - **Budgets and exemptions**: every change is written to the audit log, in the same atomic step,
//!   with the actor (the admin token's name), `now_ms`, and the canonical spec before and after.
//!   Putting a budget identical to the stored one changes nothing and is not audited. Deleting a
//!   budget drops its spend counters and leases.
//! - **A budget starts from the ledger** ([`LedgerStart`]): when a budget is created, or updated
//!   from `observe` to `enforce`, each day bucket of its current window becomes at least what the
//!   ledger holds for its scope there (records ingested in the window, bucketed by ingestion time
//!   exactly like a charge), with no record counted twice or missed by a concurrent ingestion
//!   (SQLite: one atomic step; Redis: the put, then once the records ingested while it ran), and
//!   never refused because usage keeps arriving. The audit entry's `note` says how much it started from. Exemptions add their amount to the limit and hard
//!   limit of every budget on their scope while active; they expire by time alone.
//! - Validation of shapes (ids, amounts, scopes) happens before the store is called
//!   ([`crate::budget`], [`validate_batch`]); a store returns [`StoreError::Invalid`] only for
//!   what it alone can know.

pub mod book;
pub mod gov;
pub mod redis;
pub mod sqlite;

use crate::budget::{Budget, BudgetSpec, Exemption};
use crate::window::Zone;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use tollgate_core::money::{format_micros, Micros};
use tollgate_core::protocol::{BudgetMode, Principal, BudgetStatus, LeaseRequest, LeaseResponse, UsageAck, UsageBatch, UsageRecord};

/// Why a store operation failed. The server maps each to an HTTP status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreError {
    /// The request cannot be applied (400).
    Invalid(String),
    /// Nothing by that id (404).
    NotFound(String),
    /// The backend cannot serve right now (503); the caller should retry.
    Unavailable(String),
    /// A bug or a corrupt store (500).
    Internal(String),
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreError::Invalid(m) | StoreError::NotFound(m) | StoreError::Unavailable(m) | StoreError::Internal(m) => {
                f.write_str(m)
            }
        }
    }
}

impl std::error::Error for StoreError {}

pub type StoreResult<T> = Result<T, StoreError>;

/// A budget and where it stands now: the row of `GET /admin/budgets`, the utilization report and
/// the per-budget metrics.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BudgetState {
    pub budget: BudgetSpec,
    pub spent_micros: Micros,
    pub tokens_used: u64,
    /// Sum of active exemptions on the budget's scope.
    pub exemption_micros: Micros,
    /// `limit + exemptions`.
    pub effective_limit_micros: Micros,
    pub hard_limit_micros: Micros,
    /// Sum of live lease slices held by gateways.
    pub leased_micros: Micros,
    pub status: BudgetStatus,
    /// Start of the current window, unix seconds (0 for `none`).
    pub window_start: i64,
    /// Next reset, unix seconds; `None` for `none`.
    pub resets_at: Option<i64>,
    /// `reserve: p99`: what requests cost this window beyond what they reserved
    /// ([`crate::reserve`]); at `reserve_excess_limit` the budget's gateways reserve worst cases.
    #[serde(default)]
    pub reserve_excess_micros: Micros,
}

impl BudgetState {
    /// A template's state (a budget on `<kind>:*`): it charges nobody, so its spend is always
    /// zero; only the budgets it made belong in listings, reports, metrics and forecasts.
    pub fn is_template(&self) -> bool {
        self.budget.is_template()
    }

    /// The budgets that charge someone: `states` without the templates ([`Self::is_template`]).
    pub fn without_templates(mut states: Vec<BudgetState>) -> Vec<BudgetState> {
        states.retain(|s| !s.is_template());
        states
    }

    /// Spend as a fraction of the effective limit (display only; money stays integer).
    pub fn utilization(&self) -> f64 {
        if self.effective_limit_micros <= 0 {
            if self.spent_micros > 0 { f64::INFINITY } else { 0.0 }
        } else {
            self.spent_micros as f64 / self.effective_limit_micros as f64
        }
    }
}

/// What [`Store::put_budget`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PutOutcome {
    Created,
    Updated { before: BudgetSpec },
    /// Identical to the stored budget: nothing written, nothing audited.
    Unchanged,
}

/// A dimension of the spend report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GroupBy {
    Org,
    CostCenter,
    Team,
    User,
    Key,
    UseCase,
    /// The routed model (what was billed).
    Model,
    /// Date of the record's `finished_at_ms`, `YYYY-MM-DD`: in UTC, or in the query's
    /// [`ReportQuery::day_zone`].
    Day,
}

impl GroupBy {
    pub const ALL: [GroupBy; 8] =
        [GroupBy::Org, GroupBy::CostCenter, GroupBy::Team, GroupBy::User, GroupBy::Key, GroupBy::UseCase, GroupBy::Model, GroupBy::Day];

    pub fn as_str(self) -> &'static str {
        match self {
            GroupBy::Org => "org",
            GroupBy::CostCenter => "cost_center",
            GroupBy::Team => "team",
            GroupBy::User => "user",
            GroupBy::Key => "key",
            GroupBy::UseCase => "use_case",
            GroupBy::Model => "model",
            GroupBy::Day => "day",
        }
    }

    /// Parses a comma-separated list (`team,model`); empty means no grouping (one total row).
    pub fn parse_list(text: &str) -> Result<Vec<GroupBy>, String> {
        let mut out = Vec::new();
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let g = GroupBy::ALL.into_iter().find(|g| g.as_str() == part).ok_or_else(|| {
                format!("group_by: `{part}` is not a dimension; use any of org, cost_center, team, user, key, use_case, model, day")
            })?;
            if !out.contains(&g) {
                out.push(g);
            }
        }
        Ok(out)
    }
}

/// `GET /admin/reports/spend`: records with `from_ms <= finished_at_ms < to_ms`, grouped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReportQuery {
    pub group_by: Vec<GroupBy>,
    pub from_ms: i64,
    pub to_ms: i64,
    /// Whose calendar [`GroupBy::Day`] follows: the date of `finished_at_ms` in this zone
    /// ([`Zone::UTC`] for the spend report and everything an operator asks for by date; a budget's
    /// own zone for its forecast, `crate::forecast`). With an IANA zone a store may refuse
    /// ([`StoreError::Invalid`]) a period crossing more than [`MAX_OFFSET_CHANGES`] DST changes.
    pub day_zone: Zone,
}

/// The DST changes a report grouped by local day may cross (about 250 years of them).
pub const MAX_OFFSET_CHANGES: usize = 500;

impl ReportQuery {
    /// Records in `[from_ms, to_ms)` grouped by `group_by`, days in UTC.
    pub fn utc(group_by: Vec<GroupBy>, from_ms: i64, to_ms: i64) -> ReportQuery {
        ReportQuery { group_by, from_ms, to_ms, day_zone: Zone::UTC }
    }
}

/// `GET /admin/reports/requests`: ledger records in a period, oldest first, at most `limit`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestsQuery {
    pub from_ms: i64,
    pub to_ms: i64,
    pub limit: usize,
}

/// One group of the spend report. `keys` follows `group_by`; a missing attribute is `""`. The
/// default is a group with nothing spent.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReportRow {
    pub keys: Vec<String>,
    pub requests: u64,
    pub cost_micros: Micros,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cache_read_tokens: u64,
    pub cache_write_tokens: u64,
    /// Requests whose tokens were estimated.
    pub estimated_requests: u64,
}

/// One audited change.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditEntry {
    pub seq: u64,
    pub at_ms: i64,
    /// The admin token's name (or `file:<path>` for the budgets file at start-up).
    pub actor: String,
    /// `budget.create`, `budget.update`, `budget.delete`, `exemption.add`, `exemption.revoke`.
    pub action: String,
    /// Budget id, or `exemption:<id>`.
    pub subject: String,
    pub before: Option<serde_json::Value>,
    pub after: Option<serde_json::Value>,
    /// What the change did beyond the spec, e.g. "started from $0.420000 already spent this window".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// Whether a put starts the budget from the ledger: a new budget, or one switched from observe to
/// enforce. Why: "set the limit at 130 % of the baseline" on the 20th of the month must mean 130 %
/// of the month, not of the days left. (An observe budget was charged all along, so its counters
/// already hold its spend; the ledger fills what they miss when it was itself created mid-window
/// before this rule.)
pub fn starts_from_ledger(before: Option<&Budget>, after: &Budget) -> bool {
    match before {
        None => true,
        Some(b) => b.mode == BudgetMode::Observe && after.mode == BudgetMode::Enforce,
    }
}

/// What the ledger already holds for a budget's scope in its current window, per day bucket.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct LedgerStart {
    /// Day bucket → cost and billed tokens of the matching records ingested in it.
    pub buckets: BTreeMap<i64, book::Spend>,
    pub micros: Micros,
    pub tokens: u64,
    pub records: u64,
}

impl LedgerStart {
    /// Counts one ledger record if it was ingested in `budget`'s current window (at `now_ms`), no
    /// later than now, and its principal is in the budget's scope; it lands in the bucket a charge
    /// made at its ingestion would have used. The record's own times play no part, as in a charge.
    pub fn add(&mut self, budget: &Budget, now_ms: i64, ingested_at_ms: i64, principal: &Principal, cost: Micros, tokens: u64) {
        let from_ms = budget.span(now_ms).from.saturating_mul(1000);
        if ingested_at_ms < from_ms || ingested_at_ms > now_ms {
            return;
        }
        if !principal.scope_keys().iter().any(|k| budget.covers_key(k)) {
            return;
        }
        let s = self.buckets.entry(budget.span(ingested_at_ms).bucket).or_default();
        s.micros = s.micros.saturating_add(cost);
        s.tokens = s.tokens.saturating_add(tokens);
        self.micros = self.micros.saturating_add(cost);
        self.tokens = self.tokens.saturating_add(tokens);
        self.records += 1;
    }

    /// The audit note.
    pub fn note(&self) -> String {
        format!(
            "started from ${} already spent this window ({} ledger records, {} billed tokens)",
            format_micros(self.micros),
            self.records,
            self.tokens
        )
    }
}

/// `GET /admin/audit`: newest first.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AuditQuery {
    pub subject: Option<String>,
    pub since_ms: Option<i64>,
    pub limit: usize,
}

/// Everything the counter service asks of its storage. See the module docs for the contract.
/// Every store also keeps the events log and webhook outbox ([`crate::notify::EventLog`]).
///
/// Methods return `impl Future + Send` so backends can be async (network) or hand work to a thread
/// (SQLite); the server is generic over `S: Store`.
pub trait Store: gov::GovStore + crate::notify::EventLog + Send + Sync + 'static {
    /// Scope key → the budgets on it, as this instance last saw them (cheap: no I/O). Used to
    /// decide whether a principal scope needs a budget made from a template; may lag another
    /// counter instance's changes by one call, which only makes an identical put (`Unchanged`).
    fn scope_index(&self) -> std::sync::Arc<book::ScopeIndex>;

    /// Every budget with its current state, sorted by id.
    fn list_budgets(&self, now_ms: i64) -> impl Future<Output = StoreResult<Vec<BudgetState>>> + Send;

    /// Creates or replaces a budget (by `budget.id`), audited as `actor`.
    fn put_budget(&self, budget: Budget, actor: &str, now_ms: i64) -> impl Future<Output = StoreResult<PutOutcome>> + Send;

    /// Deletes a budget, its spend counters and its leases, audited. `Ok(None)` if there was none.
    fn delete_budget(&self, id: &str, actor: &str, now_ms: i64) -> impl Future<Output = StoreResult<Option<BudgetSpec>>> + Send;

    /// Adds an exemption (its `id` is assigned here and returned), audited.
    fn add_exemption(&self, exemption: Exemption, actor: &str, now_ms: i64) -> impl Future<Output = StoreResult<Exemption>> + Send;

    /// Ends an exemption now, audited. `Ok(None)` if there is no such exemption.
    fn revoke_exemption(&self, id: u64, actor: &str, now_ms: i64) -> impl Future<Output = StoreResult<Option<Exemption>>> + Send;

    /// All exemptions, active or not, oldest first.
    fn list_exemptions(&self) -> impl Future<Output = StoreResult<Vec<Exemption>>> + Send;

    /// Grants or tops up this gateway's slices (see the module docs for the rule and invariant).
    /// Scopes with no budget are skipped; each budget appears once in the answer, except a selector
    /// budget: once per requested key it covers, each a slice of its own ([`book::lease_holder`]).
    fn grant_leases(&self, request: &LeaseRequest, now_ms: i64) -> impl Future<Output = StoreResult<LeaseResponse>> + Send;

    /// Idempotent, all-or-nothing, durable-before-`Ok` ingestion of a validated batch.
    fn ingest(&self, batch: UsageBatch, now_ms: i64) -> impl Future<Output = StoreResult<UsageAck>> + Send;

    /// Spend from the ledger, grouped; rows sorted by keys.
    fn report(&self, query: ReportQuery) -> impl Future<Output = StoreResult<Vec<ReportRow>>> + Send;

    /// The ledger's records with `from_ms <= finished_at_ms < to_ms`, oldest first (then by id), at
    /// most `query.limit` (the policy simulator's input, `GET /admin/reports/requests`).
    fn requests(&self, query: RequestsQuery) -> impl Future<Output = StoreResult<Vec<UsageRecord>>> + Send;

    /// Audit entries, newest first, at most `query.limit`.
    fn audit(&self, query: AuditQuery) -> impl Future<Output = StoreResult<Vec<AuditEntry>>> + Send;

    /// `GET /admin/tasks/{id}`: every ledger record whose principal has this task id, folded by
    /// [`crate::task::summarise`] (the same fold in every backend), with the task's checkpoints
    /// oldest first. Empty (no requests, no checkpoints) when the task is unknown.
    fn task_summary(&self, task: &str) -> impl Future<Output = StoreResult<crate::task::TaskSummary>> + Send;

    /// `POST /admin/checkpoints`: records a checkpoint (its `id`, `cp-<n>`, is assigned here and
    /// returned), audited as `checkpoint.add` on subject `task:<task id>`.
    fn add_checkpoint(&self, checkpoint: crate::task::Checkpoint, actor: &str) -> impl Future<Output = StoreResult<crate::task::Checkpoint>> + Send;

    /// A usage batch's retry-guard events (docs/guards.md): stores each once (by id) under its key
    /// and task, then answers the gateway with, per key of the batch, the attempts the other
    /// gateways let through since its window start and the task's newest checkpoint
    /// ([`crate::task::others`]), and the checkpoints made in the last
    /// [`crate::task::RECENT_CHECKPOINT_MS`] for every key their tasks have. Events older than
    /// [`crate::task::GUARD_RETAIN_MS`] are forgotten.
    fn guard_exchange(
        &self,
        gateway_id: &str,
        events: Vec<tollgate_core::protocol::GuardEvent>,
        now_ms: i64,
    ) -> impl Future<Output = StoreResult<tollgate_core::protocol::GuardAnswer>> + Send;

    /// `Ok` when the store can take writes (`/healthz`).
    fn health(&self) -> impl Future<Output = StoreResult<()>> + Send;

    /// Finishes every accepted write and releases resources (graceful shutdown).
    fn shutdown(&self) -> impl Future<Output = StoreResult<()>> + Send;
}

/// Checks a usage batch before any of it is applied: the first problem found, naming the record.
pub fn validate_batch(batch: &UsageBatch) -> Result<(), String> {
    if batch.gateway_id.trim().is_empty() {
        return Err("gateway_id: must name the reporting gateway".into());
    }
    for (i, r) in batch.records.iter().enumerate() {
        if r.id.is_empty() || r.id.len() > 256 {
            return Err(format!("records[{i}].id: must be 1-256 characters (gateway id + request id)"));
        }
        if r.cost_micros < 0 {
            return Err(format!("records[{i}].cost_micros: {} is negative; costs are never below 0", r.cost_micros));
        }
        if r.finished_at_ms < r.started_at_ms {
            return Err(format!("records[{i}].finished_at_ms: before started_at_ms"));
        }
    }
    crate::task::validate_guard_events(&batch.guard_events)
}

/// Validates a lease request.
pub fn validate_lease_request(request: &LeaseRequest) -> Result<(), String> {
    if request.gateway_id.trim().is_empty() {
        return Err("gateway_id: must name the requesting gateway".into());
    }
    if request.want_micros < 0 {
        return Err(format!("want_micros: {} is negative; ask for 0 or more", request.want_micros));
    }
    if let Some(bad) = request.scopes.iter().find(|s| tollgate_core::protocol::parse_scope_key(s).is_none()) {
        return Err(format!(
            "scopes: `{bad}` is not a scope key; use <kind>:<id> as produced by Principal::scope_keys()"
        ));
    }
    Ok(())
}
