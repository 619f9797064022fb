//! The wire contract between gateways (the Envoy filter) and `tollgate-counter`.
//!
//! Plain HTTP/1.1 + JSON, because the filter can only speak through Envoy's `dispatch_http_call`.
//! Both sides compile against these types, so the contract cannot drift. Unknown fields are
//! rejected on the counter side (`deny_unknown_fields`), so a typo is a 400, not a silent default.
//!
//! ```text
//! POST /v1/leases   Authorization: Bearer <gateway token>
//!   LeaseRequest  -> LeaseResponse
//! POST /v1/usage    Authorization: Bearer <gateway token>
//!   UsageBatch    -> UsageAck
//! ```
//!
//! # Budget scopes
//! A principal is charged against every budget on its chain. The chain is derived here, once,
//! by [`Principal::scope_keys`], so the gateway asks for leases on exactly the scopes the counter
//! charges usage to. A scope key is `"<kind>:<id>"`, e.g. `team:platform` or
//! `workflow:platform/code-review` (team × use case).
//!
//! # Leases
//! A lease is one gateway's slice of one budget's headroom, keyed by `(gateway_id, budget_id)`.
//! Asking again tops the slice up and renews its expiry. Invariant kept by the counter, per budget:
//! `spent + sum(live lease slices) <= hard_limit` at the moment of every grant. A call never lowers
//! a live slice granted after the last grant the gateway had seen when it sent the call
//! ([`LeaseRequest::known_leases`]). Usage records
//! charged to a budget shrink the reporting gateway's slice by their cost (the gateway already
//! consumed that much of it locally). An expired lease's remaining slice returns to headroom.

use crate::money::Micros;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Who a request is charged to. Every field is optional: a gateway knows what its sources give it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Principal {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub org: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cost_center: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub team: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// A key's id (never the key itself; virtual keys are matched by their SHA-256).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_id: Option<String>,
    /// The workflow / use case (e.g. `code-review`, `ci-agent`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub use_case: Option<String>,
    /// Permission tier (e.g. `standard`, `premium`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tier: Option<String>,
    /// Optional task or session id, for per-task budgets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task: Option<String>,
}

/// The kinds of scope a budget can cover, in chain order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ScopeKind {
    Org,
    CostCenter,
    Team,
    User,
    Key,
    /// A team's use case: id is `"<team>/<use_case>"`.
    Workflow,
    Task,
}

impl ScopeKind {
    pub const ALL: [ScopeKind; 7] = [
        ScopeKind::Org,
        ScopeKind::CostCenter,
        ScopeKind::Team,
        ScopeKind::User,
        ScopeKind::Key,
        ScopeKind::Workflow,
        ScopeKind::Task,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ScopeKind::Org => "org",
            ScopeKind::CostCenter => "cost_center",
            ScopeKind::Team => "team",
            ScopeKind::User => "user",
            ScopeKind::Key => "key",
            ScopeKind::Workflow => "workflow",
            ScopeKind::Task => "task",
        }
    }

    pub fn parse(text: &str) -> Option<ScopeKind> {
        ScopeKind::ALL.into_iter().find(|k| k.as_str() == text)
    }
}

/// Splits `"team:platform"` into its kind and id. `None` if the kind is unknown or the id empty.
pub fn parse_scope_key(key: &str) -> Option<(ScopeKind, &str)> {
    let (kind, id) = key.split_once(':')?;
    let kind = ScopeKind::parse(kind)?;
    (!id.is_empty()).then_some((kind, id))
}

/// Builds a scope key string.
pub fn scope_key(kind: ScopeKind, id: &str) -> String {
    // Built by hand: this runs for every scope of every request inside the filter, where the
    // formatting machinery costs more than the rest of the key's work.
    let kind = kind.as_str();
    let mut key = String::with_capacity(kind.len() + 1 + id.len());
    key.push_str(kind);
    key.push(':');
    key.push_str(id);
    key
}

impl Principal {
    /// Every budget scope this principal is charged against, in chain order
    /// (org → cost center → team → user → key, then team × use case, then task).
    pub fn scope_keys(&self) -> Vec<String> {
        let mut keys = Vec::with_capacity(7);
        let mut push = |kind: ScopeKind, id: Option<&str>| {
            if let Some(id) = id.filter(|id| !id.is_empty()) {
                keys.push(scope_key(kind, id));
            }
        };
        push(ScopeKind::Org, self.org.as_deref());
        push(ScopeKind::CostCenter, self.cost_center.as_deref());
        push(ScopeKind::Team, self.team.as_deref());
        push(ScopeKind::User, self.user.as_deref());
        push(ScopeKind::Key, self.key_id.as_deref());
        let workflow = match (self.team.as_deref(), self.use_case.as_deref()) {
            (Some(team), Some(use_case)) if !team.is_empty() && !use_case.is_empty() => Some([team, use_case].join("/")),
            _ => None,
        };
        push(ScopeKind::Workflow, workflow.as_deref());
        push(ScopeKind::Task, self.task.as_deref());
        keys
    }
}

/// `POST /v1/leases`: top up this gateway's slices on every budget covering `scopes`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LeaseRequest {
    pub gateway_id: String,
    /// Scope keys (see [`Principal::scope_keys`]); scopes with no budget are ignored.
    pub scopes: Vec<String>,
    /// The slice the gateway would like to hold on each budget after this call, in micro-dollars.
    /// The counter grants up to this, capped by the budget's remaining headroom.
    pub want_micros: Micros,
    /// Per budget id, the `lease_expires_at_ms` of the grant the gateway had applied when it sent
    /// this call (a budget it holds no grant on is left out). The counter never lowers a live slice
    /// granted *after* that one: several calls may be in flight, and one sent before a bigger grant
    /// landed asks for less than the gateway may already have committed of it. Absent (a caller
    /// that does not say): `want_micros` alone sets the slice.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub known_leases: Option<BTreeMap<String, i64>>,
}

impl LeaseRequest {
    /// What [`Self::known_leases`] says about `budget_id`: `None` if the caller does not say,
    /// `Some(i64::MIN)` if it knew no grant on that budget.
    pub fn known_lease(&self, budget_id: &str) -> Option<i64> {
        self.known_leases.as_ref().map(|known| known.get(budget_id).copied().unwrap_or(i64::MIN))
    }

    /// Whether this call must leave the caller's live slice on `budget_id`, granted with expiry
    /// `slice_expires_at_ms`, at least as big as it is: the caller sent the call before that grant
    /// reached it, so `want_micros` cannot count what it has committed of it.
    pub fn keeps_slice(&self, budget_id: &str, slice_expires_at_ms: i64) -> bool {
        self.known_lease(budget_id).is_some_and(|known| slice_expires_at_ms > known)
    }
}

/// Whether a budget refuses requests or only records what it would have refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BudgetMode {
    #[default]
    Enforce,
    Observe,
}

/// Where a budget stands against its thresholds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BudgetStatus {
    #[default]
    Ok,
    /// Past a soft threshold: still served, with a warning.
    Soft,
    /// At or past the hard limit: refused in enforce mode.
    Hard,
}

/// One budget's state and this gateway's slice of it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BudgetLease {
    pub budget_id: String,
    /// The scope key that matched.
    pub scope: String,
    pub mode: BudgetMode,
    /// This gateway's slice after the call (not the increment): what it may spend locally.
    pub granted_micros: Micros,
    pub spent_micros: Micros,
    pub limit_micros: Micros,
    pub hard_limit_micros: Micros,
    /// Soft threshold in percent of `limit_micros` (the lowest one, e.g. 80).
    pub soft_threshold_pct: u32,
    pub status: BudgetStatus,
    /// When the current window resets, unix seconds; `None` for a budget with no window.
    pub resets_at: Option<i64>,
    /// When this lease lapses unless renewed, unix milliseconds.
    pub lease_expires_at_ms: i64,
    /// A `reserve: p99` budget only: per model, the output tokens a request reserves instead of
    /// the model's worst case (the scope's observed p99, from the ledger). A model not listed, or
    /// an empty map, reserves the worst case. Sent only when non-empty, so gateways that predate
    /// the field keep reading leases of every other budget.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub reserve_output_tokens: BTreeMap<String, u64>,
    /// A `reserve: p99` budget only: worst-case headroom beyond `granted_micros`, which bounds what
    /// requests reserved at p99 may cost past their reservations: `granted × reserve_excess_limit /
    /// hard_limit`, rounded down. A request is admitted only if its p99 cost fits in the slice and
    /// its worst case fits in the slice plus this (docs/enforcement.md, "Reservation policies").
    #[serde(default, skip_serializing_if = "is_zero_micros")]
    pub reserve_excess_micros: Micros,
}

fn is_zero_micros(n: &Micros) -> bool {
    *n == 0
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LeaseResponse {
    pub budgets: Vec<BudgetLease>,
}

/// Token counts, kept apart by kind. `input` excludes cache reads and writes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tokens {
    #[serde(default)]
    pub input: u64,
    #[serde(default)]
    pub output: u64,
    #[serde(default)]
    pub cache_read: u64,
    #[serde(default)]
    pub cache_write: u64,
    /// Reasoning tokens, already included in `output` (reported apart for visibility).
    #[serde(default)]
    pub reasoning: u64,
    /// Of `cache_write`, the tokens written to a 1-hour cache (Anthropic
    /// `cache_creation.ephemeral_1h_input_tokens`), priced at their own rate.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub cache_write_1h: u64,
    /// Hosted web-search calls the provider billed per call (Anthropic
    /// `server_tool_use.web_search_requests`, OpenAI Responses `web_search_call` output items).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub web_searches: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl Tokens {
    /// All billed tokens: input + cache reads + cache writes + output.
    pub fn total(&self) -> u64 {
        self.input
            .saturating_add(self.output)
            .saturating_add(self.cache_read)
            .saturating_add(self.cache_write)
    }

    /// The prompt: input + cache reads + cache writes (what decides a long-context tier).
    pub fn prompt(&self) -> u64 {
        self.input.saturating_add(self.cache_read).saturating_add(self.cache_write)
    }
}

/// One settled request, as the gateway reports it. `id` makes ingestion idempotent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UsageRecord {
    /// Unique per request (gateway id + request id); a record seen twice counts once.
    pub id: String,
    pub principal: Principal,
    /// `openai`, `azure_openai`, `anthropic`, `gemini`.
    pub dialect: String,
    pub requested_model: String,
    pub routed_model: String,
    pub tokens: Tokens,
    /// Non-negative; the counter rejects a negative cost.
    pub cost_micros: Micros,
    /// The HTTP status the client saw (0 if the stream was cut before a status).
    pub status: u16,
    /// True when tokens were estimated (stream cut before usage arrived).
    #[serde(default)]
    pub estimated: bool,
    /// Unix milliseconds.
    pub started_at_ms: i64,
    pub finished_at_ms: i64,
    /// Reservations made below the request's worst case on `reserve: p99` budgets. The counter
    /// adds what the request cost beyond each to that budget's reservation excess for the window.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub p99_reservations: Vec<P99Reservation>,
}

/// What a request reserved on one `reserve: p99` budget (below its worst case).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct P99Reservation {
    pub budget_id: String,
    pub reserved_micros: Micros,
}

impl UsageRecord {
    /// Appends the record's JSON: byte for byte what `serde_json::to_writer` writes for it (the
    /// tests check that for any record), without serde's machinery. The usage queue's hot path
    /// (`enforce::queue::Item::push`, once per request on an enforcing gateway); see
    /// [`crate::json_writer`].
    pub fn write_json(&self, out: &mut Vec<u8>) {
        use crate::json_writer::{push_i64, push_key, push_str, push_u64};
        out.push(b'{');
        push_key(out, "id");
        push_str(out, &self.id);
        out.extend_from_slice(b",\"principal\":{");
        let p = &self.principal;
        let mut first = true;
        for (name, value) in [
            ("org", &p.org),
            ("cost_center", &p.cost_center),
            ("team", &p.team),
            ("user", &p.user),
            ("key_id", &p.key_id),
            ("use_case", &p.use_case),
            ("tier", &p.tier),
            ("task", &p.task),
        ] {
            if let Some(value) = value {
                if !first {
                    out.push(b',');
                }
                first = false;
                push_key(out, name);
                push_str(out, value);
            }
        }
        out.extend_from_slice(b"},\"dialect\":");
        push_str(out, &self.dialect);
        out.extend_from_slice(b",\"requested_model\":");
        push_str(out, &self.requested_model);
        out.extend_from_slice(b",\"routed_model\":");
        push_str(out, &self.routed_model);
        let t = &self.tokens;
        out.extend_from_slice(b",\"tokens\":{\"input\":");
        push_u64(out, t.input);
        out.extend_from_slice(b",\"output\":");
        push_u64(out, t.output);
        out.extend_from_slice(b",\"cache_read\":");
        push_u64(out, t.cache_read);
        out.extend_from_slice(b",\"cache_write\":");
        push_u64(out, t.cache_write);
        out.extend_from_slice(b",\"reasoning\":");
        push_u64(out, t.reasoning);
        if t.cache_write_1h != 0 {
            out.extend_from_slice(b",\"cache_write_1h\":");
            push_u64(out, t.cache_write_1h);
        }
        if t.web_searches != 0 {
            out.extend_from_slice(b",\"web_searches\":");
            push_u64(out, t.web_searches);
        }
        out.extend_from_slice(b"},\"cost_micros\":");
        push_i64(out, self.cost_micros);
        out.extend_from_slice(b",\"status\":");
        push_u64(out, u64::from(self.status));
        out.extend_from_slice(if self.estimated { b",\"estimated\":true" } else { b",\"estimated\":false" });
        out.extend_from_slice(b",\"started_at_ms\":");
        push_i64(out, self.started_at_ms);
        out.extend_from_slice(b",\"finished_at_ms\":");
        push_i64(out, self.finished_at_ms);
        if !self.p99_reservations.is_empty() {
            out.extend_from_slice(b",\"p99_reservations\":[");
            for (n, r) in self.p99_reservations.iter().enumerate() {
                if n > 0 {
                    out.push(b',');
                }
                out.extend_from_slice(b"{\"budget_id\":");
                push_str(out, &r.budget_id);
                out.extend_from_slice(b",\"reserved_micros\":");
                push_i64(out, r.reserved_micros);
                out.push(b'}');
            }
            out.push(b']');
        }
        out.push(b'}');
    }
}

impl P99Reservation {
    /// What the request cost beyond this reservation: the excess the budget's policy counts.
    pub fn excess(&self, cost_micros: Micros) -> Micros {
        cost_micros.saturating_sub(self.reserved_micros).max(0)
    }
}

/// A usage record's id: `<gateway_id>:<request id>` (unique per request on a gateway; the counter
/// counts an id once). Also sent to the client as `x-tollgate-request-id`.
pub fn record_id(gateway_id: &str, request_id: &str) -> String {
    [gateway_id, request_id].join(":")
}

/// `POST /v1/usage`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UsageBatch {
    pub gateway_id: String,
    pub records: Vec<UsageRecord>,
    /// What the retry guard did since the last batch (docs/guards.md): attempts it counted, let
    /// through or refused. Not charges: the ledger never sees them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub guard_events: Vec<GuardEvent>,
}

/// What the retry guard did with one request of expensive work.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GuardEventKind {
    /// Let through: the first attempt (`retry` 0) or a retry within the allowance.
    Passed,
    /// Over the allowance in observe mode: let through and reported.
    Observed,
    /// Over the allowance: refused with 429 (never reached an upstream).
    Refused,
    /// A task's attempt settled with an upstream error status or cut before one: its failure
    /// streak (the key is the streak's, `tollgate.guard.tfail.<key>`) grows on every gateway.
    Failed,
    /// A task's attempt settled with success: its failure streak ends on every gateway.
    Succeeded,
}

impl GuardEventKind {
    /// Whether the event is a task attempt's outcome (its failure streak), not a counted attempt.
    pub fn is_outcome(self) -> bool {
        matches!(self, GuardEventKind::Failed | GuardEventKind::Succeeded)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            GuardEventKind::Passed => "passed",
            GuardEventKind::Observed => "observed",
            GuardEventKind::Refused => "refused",
            GuardEventKind::Failed => "failed",
            GuardEventKind::Succeeded => "succeeded",
        }
    }

    /// The kind a store wrote with [`Self::as_str`] (`None`: not a kind).
    pub fn parse(text: &str) -> Option<GuardEventKind> {
        [GuardEventKind::Passed, GuardEventKind::Observed, GuardEventKind::Refused, GuardEventKind::Failed, GuardEventKind::Succeeded]
            .into_iter()
            .find(|k| k.as_str() == text)
    }
}

/// One counted attempt, delivered with the usage batches (`UsageBatch::guard_events`). The
/// counter keeps them per `key` (to answer every gateway with the others' counts) and per task
/// (retries and refusals in the task's summary).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GuardEvent {
    /// The request's record id (`record_id`): an event delivered twice counts once.
    pub id: String,
    /// The count's key: 16 hex digits of the hash of principal, task and fingerprint (the
    /// shared-data entry `tollgate.guard.retry.<key>` on the gateway).
    pub key: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task: Option<String>,
    pub kind: GuardEventKind,
    /// 0 for the first attempt, 1 for the first retry, …
    pub retry: u32,
    /// When the attempt was decided, unix milliseconds.
    pub at_ms: i64,
    /// From when the gateway wants the other gateways' attempts counted: a window before its
    /// count's window start (so attempts made elsewhere before its first one count too), or the
    /// window start itself once a checkpoint reset the count (`RetryEntry::others_since`).
    pub since_ms: i64,
}

/// The other gateways' attempts of one key since `since_ms` (a gateway's window start).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GuardCount {
    pub key: String,
    pub since_ms: i64,
    /// Attempts let through (passed or observed) by other gateways since `since_ms`, and after
    /// the task's newest checkpoint.
    pub others: u32,
}

/// A checkpoint made at the counter (`POST /admin/checkpoints`), for one key of its task.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GuardCheckpoint {
    pub key: String,
    /// The checkpoint's id (`cp-7`): the same value a checkpoint header would carry.
    pub checkpoint: String,
    /// When it was made, unix milliseconds: a count whose window began before it starts again.
    pub at_ms: i64,
}

/// A task's failure streak on the other gateways (for an outcome event's key): what a gateway
/// adds to its own streak, and whether a success elsewhere ended its own.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GuardStreak {
    pub key: String,
    pub since_ms: i64,
    /// Failed attempts of the task on other gateways since `since_ms`, after the task's newest
    /// checkpoint and after its newest success on any gateway.
    pub others: u32,
    /// The newest success of the task on another gateway since `since_ms`: the gateway's own
    /// failures before it no longer count.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended_ms: Option<i64>,
    /// With `ended_ms`: the gateway's own failures the counter holds after that success (its
    /// streak starts again from these).
    #[serde(default, skip_serializing_if = "is_zero_u32")]
    pub own_since_end: u32,
}

fn is_zero_u32(n: &u32) -> bool {
    *n == 0
}

/// The counter's answer to a batch's guard events: the shared counts of the keys in the batch,
/// the shared failure streaks of the tasks whose outcomes it carried, and the recent checkpoints
/// of every key their tasks have.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GuardAnswer {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub counts: Vec<GuardCount>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub streaks: Vec<GuardStreak>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub checkpoints: Vec<GuardCheckpoint>,
}

impl GuardAnswer {
    pub fn is_empty(&self) -> bool {
        self.counts.is_empty() && self.streaks.is_empty() && self.checkpoints.is_empty()
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UsageAck {
    /// Records newly counted.
    pub accepted: u64,
    /// Records already seen (by id) and not counted again.
    pub duplicates: u64,
    /// The shared retry counts and checkpoints (absent when the batch carried no guard events and
    /// no checkpoint is recent).
    #[serde(default, skip_serializing_if = "GuardAnswer::is_empty")]
    pub guard: GuardAnswer,
}

/// The JSON error body the counter answers any 4xx/5xx with.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ApiError {
    pub error: ApiErrorBody,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ApiErrorBody {
    /// Machine-readable, e.g. `unauthorized`, `invalid_request`, `not_found`.
    pub code: String,
    /// What went wrong and what to do about it.
    pub message: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn any_text() -> impl Strategy<Value = String> {
        prop_oneof![
            "[a-z0-9:/._-]{0,24}",
            any::<String>(),
            proptest::collection::vec(prop_oneof![Just('"'), Just('\\'), Just('\n'), Just('\u{1}'), Just('\u{8}'), Just('\u{c}'), Just('é'), Just('💸'), Just('a')], 0..12)
                .prop_map(|chars| chars.into_iter().collect()),
        ]
    }

    fn any_record() -> impl Strategy<Value = UsageRecord> {
        let principal = proptest::collection::vec(proptest::option::of(any_text()), 8).prop_map(|f| {
            let mut f = f.into_iter();
            let mut next = || f.next().flatten();
            Principal { org: next(), cost_center: next(), team: next(), user: next(), key_id: next(), use_case: next(), tier: next(), task: next() }
        });
        let tokens = (any::<[u64; 5]>(), prop_oneof![Just(0u64), any::<u64>()], prop_oneof![Just(0u64), any::<u64>()]).prop_map(
            |([input, output, cache_read, cache_write, reasoning], cache_write_1h, web_searches)| Tokens {
                input, output, cache_read, cache_write, reasoning, cache_write_1h, web_searches,
            },
        );
        let reservations = proptest::collection::vec((any_text(), any::<i64>()), 0..3)
            .prop_map(|r| r.into_iter().map(|(budget_id, reserved_micros)| P99Reservation { budget_id, reserved_micros }).collect());
        (
            (any_text(), principal, any_text(), any_text(), any_text()),
            (tokens, any::<i64>(), any::<u16>(), any::<bool>(), any::<i64>(), any::<i64>(), reservations),
        )
            .prop_map(|((id, principal, dialect, requested_model, routed_model), (tokens, cost_micros, status, estimated, started_at_ms, finished_at_ms, p99_reservations))| {
                UsageRecord { id, principal, dialect, requested_model, routed_model, tokens, cost_micros, status, estimated, started_at_ms, finished_at_ms, p99_reservations }
            })
    }

    proptest! {
        #[test]
        fn a_record_written_by_hand_is_byte_for_byte_what_serde_json_writes(record in any_record()) {
            let mut out = Vec::new();
            record.write_json(&mut out);
            let serde = serde_json::to_vec(&record).unwrap_or_default();
            prop_assert_eq!(String::from_utf8_lossy(&out), String::from_utf8_lossy(&serde));
            let back: UsageRecord = serde_json::from_slice(&out).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(back, record);
        }
    }

    #[test]
    fn a_typical_record_is_written_as_serde_json_writes_it() {
        let record = UsageRecord {
            id: "gw-1:req-7.tag.1".into(),
            principal: Principal { org: Some("acme".into()), team: Some("platform".into()), use_case: Some("code-review".into()), ..Principal::default() },
            dialect: "openai".into(),
            requested_model: "tier:premium".into(),
            routed_model: "gpt-4o".into(),
            tokens: Tokens { input: 520, output: 160, cache_read: 0, cache_write: 0, reasoning: 0, cache_write_1h: 0, web_searches: 2 },
            cost_micros: 2_900,
            status: 200,
            estimated: false,
            started_at_ms: 1_767_225_600_000,
            finished_at_ms: 1_767_225_600_412,
            p99_reservations: vec![P99Reservation { budget_id: "acme-monthly".into(), reserved_micros: 1_500 }],
        };
        let mut out = Vec::new();
        record.write_json(&mut out);
        assert_eq!(
            String::from_utf8_lossy(&out),
            r#"{"id":"gw-1:req-7.tag.1","principal":{"org":"acme","team":"platform","use_case":"code-review"},"dialect":"openai","requested_model":"tier:premium","routed_model":"gpt-4o","tokens":{"input":520,"output":160,"cache_read":0,"cache_write":0,"reasoning":0,"web_searches":2},"cost_micros":2900,"status":200,"estimated":false,"started_at_ms":1767225600000,"finished_at_ms":1767225600412,"p99_reservations":[{"budget_id":"acme-monthly","reserved_micros":1500}]}"#
        );
        assert_eq!(out, serde_json::to_vec(&record).unwrap_or_default());
    }

    #[test]
    fn a_lease_call_keeps_only_slices_granted_after_what_it_knew() {
        let legacy: LeaseRequest = serde_json::from_str(r#"{"gateway_id":"g","scopes":["team:a"],"want_micros":5}"#)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(legacy.known_leases, None);
        assert!(!legacy.keeps_slice("b", 2_000), "a caller that does not say: want alone");
        let call = LeaseRequest { known_leases: Some(BTreeMap::from([("b".to_owned(), 2_000)])), ..legacy };
        assert!(!call.keeps_slice("b", 2_000), "the grant it knew: its want counted it");
        assert!(call.keeps_slice("b", 2_001), "granted after it was sent");
        assert!(call.keeps_slice("other", 1), "no grant known on that budget");
        let body = serde_json::to_string(&call).unwrap_or_default();
        assert!(body.ends_with(r#""known_leases":{"b":2000}}"#), "{body}");
    }

    #[test]
    fn chain_runs_from_org_to_task_with_team_use_case() {
        let p = Principal {
            org: Some("acme".into()),
            cost_center: Some("cc-42".into()),
            team: Some("platform".into()),
            user: Some("alice".into()),
            key_id: Some("k1".into()),
            use_case: Some("code-review".into()),
            tier: Some("premium".into()),
            task: Some("t-9".into()),
        };
        assert_eq!(
            p.scope_keys(),
            [
                "org:acme",
                "cost_center:cc-42",
                "team:platform",
                "user:alice",
                "key:k1",
                "workflow:platform/code-review",
                "task:t-9"
            ]
        );
    }

    #[test]
    fn missing_parts_are_skipped_and_use_case_needs_a_team() {
        let p = Principal { user: Some("bob".into()), use_case: Some("chat".into()), ..Default::default() };
        assert_eq!(p.scope_keys(), ["user:bob"]);
    }

    #[test]
    fn scope_keys_parse_back() {
        assert_eq!(parse_scope_key("workflow:platform/ci"), Some((ScopeKind::Workflow, "platform/ci")));
        assert_eq!(parse_scope_key("galaxy:x"), None);
        assert_eq!(parse_scope_key("team:"), None);
    }

    #[test]
    fn usage_record_rejects_unknown_fields() {
        let json = r#"{"id":"a","principal":{},"dialect":"openai","requested_model":"m","routed_model":"m",
            "tokens":{"input":1},"cost_micros":5,"status":200,"started_at_ms":1,"finished_at_ms":2,"bogus":1}"#;
        assert!(serde_json::from_str::<UsageRecord>(json).is_err());
    }
}
