//! `core::guard`'s Envoy side: the retry counts in shared data, the checkpoint header, the
//! guards' counters.
//!
//! # Where the count lives, and the bound it gives
//! One shared-data entry per (principal, task, fingerprint): `tollgate.guard.retry.<hash>`, 24
//! bytes (`core::guard::retry::RetryEntry`). Shared data is process-wide, so every worker of one
//! Envoy reads and writes the same entry, by CAS in a bounded loop: N workers of one gateway let
//! through at most `1 + allowed_retries` attempts per window together, exactly as one worker
//! would. Each gateway (Envoy process) keeps its own count, so M gateways let through at most
//! `M × (1 + allowed_retries)` attempts of the same work per window (docs/guards.md).
//!
//! The entry is read and written only for requests the guard counts (`expensive`), after the
//! body scan, with the clock the request already read: no network call, no extra clock read.
//! A shared-data failure lets the request through (and counts a host error): the guard is a
//! brake on loops, never a reason to stop serving.
//!
//! Across gateways the count is shared through the counter, on the usage posts that already go
//! there: each counted attempt is delivered as a guard event, and the counter's answer carries,
//! per key, the attempts the *other* gateways let through in this window, kept apart in the
//! entry (`RetryEntry::others`, so nothing is counted twice), and the checkpoints made at the
//! counter ([`apply_answer`]). A task's failure streak (`tollgate.guard.tfail.<hash>`) is shared
//! the same way: each settled attempt of a task is delivered as an outcome event, and the answer
//! carries the task's failures in a row on the other gateways (`RetryEntry::others` of the streak,
//! replaced by each answer: a success anywhere ends it). The bound this gives is in docs/guards.md.
//!
//! With `guards.task_cost_header`, each settled request with a task id adds its cost to
//! `tollgate.guard.task.<hash>` (this gateway's running total), and the response of the next
//! request of that task carries it as `x-tollgate-task-cost: cost_micros=<n>; requests=<m>`. The
//! counter's `GET /admin/tasks/{id}` is the total over every gateway.

use crate::host::{self, LogLevel, SetShared};
use crate::metrics::Counter;
use tollgate_core::enforce::chain::MAX_CAS_ATTEMPTS;
use tollgate_core::guard::retry::{self, Decision, RetryEntry};
use tollgate_core::guard::{checkpoint_hash, task_cost_key, Guards, RetryGuard, TaskCost, FAILURE_PREFIX, RETRY_PREFIX};
use tollgate_core::protocol::{GuardAnswer, GuardEvent, GuardEventKind, Principal};

/// The guards' counters (`wasmcustom.tollgate_guard_*`), defined only when `guards` is configured.
#[derive(Debug, Default)]
pub struct GuardMetrics {
    /// Retries let through (the second attempt of the same work onwards).
    retries: Option<Counter>,
    refused: Option<Counter>,
    /// Over the limit in observe mode (let through).
    observed: Option<Counter>,
    /// A new checkpoint reset a count.
    checkpoints: Option<Counter>,
    /// Premium requests without a required task id: refused / downgraded.
    unattributed_refused: Option<Counter>,
    downgraded: Option<Counter>,
}

/// Every guard counter name, for docs and tests.
pub const NAMES: [&str; 6] = [
    "tollgate_guard_retries",
    "tollgate_guard_refused",
    "tollgate_guard_observed",
    "tollgate_guard_checkpoints",
    "tollgate_guard_unattributed_refused",
    "tollgate_guard_downgraded",
];

impl GuardMetrics {
    pub fn define() -> GuardMetrics {
        let [retries, refused, observed, checkpoints, unattributed_refused, downgraded] = NAMES.map(Counter::define);
        GuardMetrics { retries, refused, observed, checkpoints, unattributed_refused, downgraded }
    }

    pub fn flush(&self) {
        for c in [&self.retries, &self.refused, &self.observed, &self.checkpoints, &self.unattributed_refused, &self.downgraded].into_iter().flatten() {
            c.flush();
        }
    }

    pub fn unattributed(&self, downgraded: bool) {
        Counter::add(if downgraded { &self.downgraded } else { &self.unattributed_refused }, 1);
    }
}

/// The checkpoint a trusted upstream filter wrote on this request, hashed (`None`: no header
/// configured, or none on the request). Read from the headers as they arrived, before the
/// filter strips client `x-tollgate-*` headers, like every trusted header.
pub fn checkpoint<'h>(guards: Option<&Guards>, header: impl Fn(&str) -> Option<&'h str>) -> Option<u64> {
    let name = guards?.retry.as_ref()?.checkpoint_header.as_deref()?;
    header(name).map(str::trim).filter(|v| !v.is_empty()).map(checkpoint_hash)
}

/// Reads, changes and writes one guard entry by CAS (bounded); `None` when shared data failed.
fn update<T>(key: &str, mut change: impl FnMut(Option<RetryEntry>) -> (RetryEntry, T)) -> Option<(Option<RetryEntry>, RetryEntry, T)> {
    for _ in 0..MAX_CAS_ATTEMPTS {
        let (current, cas) = match host::get_shared(key) {
            Ok((Some(bytes), cas)) => (RetryEntry::decode(&bytes), cas),
            Ok((None, cas)) => (None, cas),
            Err(_) => return None,
        };
        let (next, out) = change(current);
        // Nothing to write: the entry is unchanged, or an absent one would only be written as a
        // blank (a task whose attempts all succeed never writes its failure streak).
        if current == Some(next) || (current.is_none() && next.attempts == 0 && next.refusals == 0 && next.checkpoint == 0) {
            return Some((current, next, out));
        }
        match host::set_shared(key, &next.encode(), cas) {
            SetShared::Written => return Some((current, next, out)),
            SetShared::Conflict => continue,
            SetShared::Failed(e) => {
                host::log(LogLevel::Warn, &format!("tollgate: retry guard could not write its count (host status {}); letting the request through", e.0));
                return None;
            }
        }
    }
    None
}

fn count(decision: Decision, checkpointed: bool, metrics: &GuardMetrics) {
    if checkpointed {
        Counter::add(&metrics.checkpoints, 1);
    }
    match decision {
        Decision::Pass { retry } if retry > 0 => Counter::add(&metrics.retries, 1),
        Decision::Pass { .. } => {}
        Decision::Refuse { .. } => Counter::add(&metrics.refused, 1),
        Decision::Observe { .. } => Counter::add(&metrics.observed, 1),
    }
}

/// One attempt of the work `key` names at `now_ms`: updates the shared count and returns the
/// decision and from when the other gateways' attempts count against it (`None` when shared data
/// failed: the request goes through).
pub fn attempt(guard: &RetryGuard, key: &str, now_ms: i64, checkpoint: Option<u64>, metrics: &GuardMetrics) -> Option<(Decision, i64)> {
    let (current, next, decision) = update(key, |current| retry::attempt(current, now_ms, guard.limits, checkpoint))?;
    count(decision, current.is_some_and(|c| c.checkpoint != next.checkpoint), metrics);
    Some((decision, next.others_since(guard.limits.window_ms)))
}

/// The guard event of one counted attempt, for the counter.
pub fn event(gateway_id: &str, request_id: &str, key: &str, principal: &Principal, decision: Decision, at_ms: i64, since_ms: i64) -> GuardEvent {
    let (kind, retry) = match decision {
        Decision::Pass { retry } => (GuardEventKind::Passed, retry),
        Decision::Observe { retry } => (GuardEventKind::Observed, retry),
        Decision::Refuse { attempts } => (GuardEventKind::Refused, attempts),
    };
    GuardEvent {
        id: tollgate_core::protocol::record_id(gateway_id, request_id),
        key: key_hex(key).to_owned(),
        task: principal.task.clone(),
        kind,
        retry,
        at_ms,
        since_ms,
    }
}

/// The shared-data key a counter answer names (16 hex digits) under `prefix` (a retry count's or
/// a task's failure streak's).
fn entry_key(prefix: &str, hex: &str) -> Option<String> {
    (hex.len() == 16 && hex.bytes().all(|b| b.is_ascii_hexdigit())).then(|| [prefix, hex].concat())
}

/// The 16 hex digits of a count's or a streak's shared-data key (what guard events name).
pub fn key_hex(key: &str) -> &str {
    key.strip_prefix(RETRY_PREFIX).or_else(|| key.strip_prefix(FAILURE_PREFIX)).unwrap_or(key)
}

/// Applies the counter's answer to a usage post (`UsageAck::guard`): the other gateways' attempts
/// join each count they name (`retry::merge_others`), and checkpoints made at the counter reset
/// the counts of their tasks' work begun before them (`retry::apply_checkpoint`). Only entries
/// this gateway holds are touched; a shared-data failure leaves a count as it was (it is only
/// less shared). Returns how many counts a checkpoint reset.
pub fn apply_answer(answer: &GuardAnswer, window_ms: i64, now_ms: i64) -> u64 {
    let mut reset = 0;
    for c in &answer.counts {
        let Some(key) = entry_key(RETRY_PREFIX, &c.key) else { continue };
        let _ = update_existing(&key, |e| Some(retry::merge_others(e, c.since_ms, c.others, window_ms)).filter(|n| *n != e));
    }
    for s in &answer.streaks {
        let Some(key) = entry_key(FAILURE_PREFIX, &s.key) else { continue };
        let _ = update_existing(&key, |e| Some(retry::merge_streak(e, s.since_ms, s.others, s.ended_ms.map(|at| (at, s.own_since_end)), window_ms)).filter(|n| *n != e));
    }
    // A checkpoint names every key of its task: retry counts and the failure streak alike.
    for c in &answer.checkpoints {
        let hash = checkpoint_hash(&c.checkpoint);
        for prefix in [RETRY_PREFIX, FAILURE_PREFIX] {
            let Some(key) = entry_key(prefix, &c.key) else { continue };
            if update_existing(&key, |e| retry::apply_checkpoint(e, hash, c.at_ms, now_ms)) {
                reset += 1;
            }
        }
    }
    reset
}

/// Changes an existing entry by CAS (bounded); `change` returning `None` leaves it. True when written.
fn update_existing(key: &str, change: impl Fn(RetryEntry) -> Option<RetryEntry>) -> bool {
    for _ in 0..MAX_CAS_ATTEMPTS {
        let (current, cas) = match host::get_shared(key) {
            Ok((Some(bytes), cas)) => match RetryEntry::decode(&bytes) {
                Some(e) => (e, cas),
                None => return false,
            },
            _ => return false,
        };
        let Some(next) = change(current) else { return false };
        match host::set_shared(key, &next.encode(), cas) {
            SetShared::Written => return true,
            SetShared::Conflict => continue,
            SetShared::Failed(_) => return false,
        }
    }
    false
}

/// One attempt of a task whose earlier attempts may have failed (`key`: its failure streak).
pub fn task_attempt(guard: &RetryGuard, key: &str, now_ms: i64, checkpoint: Option<u64>, metrics: &GuardMetrics) -> Option<Decision> {
    let (_, _, decision) = update(key, |current| retry::task_attempt(current, now_ms, guard.limits, checkpoint))?;
    // A checkpoint is counted once, by the fingerprint's count it reset first.
    count(decision, false, metrics);
    Some(decision)
}

/// A task's attempt settled: a failure lengthens its streak, a success ends it. Returns the
/// streak as stored (`None`: shared data failed).
pub fn task_outcome(key: &str, now_ms: i64, failed: bool) -> Option<RetryEntry> {
    update(key, |current| (retry::task_outcome(current, now_ms, failed), ())).map(|(_, next, ())| next)
}

/// The guard event of a task attempt's outcome, for the counter: the streak is shared across
/// gateways like the retry count (a failure elsewhere counts here, a success anywhere ends it).
pub fn outcome_event(record_id: &str, key: &str, task: &str, streak: RetryEntry, failed: bool, at_ms: i64, window_ms: i64) -> GuardEvent {
    GuardEvent {
        id: record_id.to_owned(),
        key: key_hex(key).to_owned(),
        task: Some(task.to_owned()),
        kind: if failed { GuardEventKind::Failed } else { GuardEventKind::Succeeded },
        retry: streak.attempts,
        at_ms,
        since_ms: streak.others_since(window_ms).min(at_ms),
    }
}

/// This gateway's settled cost and requests of `task` so far (`None`: none yet, or unreadable).
pub fn task_cost(task: &str) -> Option<TaskCost> {
    match host::get_shared(&task_cost_key(task)) {
        Ok((Some(bytes), _)) => TaskCost::decode(&bytes),
        _ => None,
    }
}

/// Adds a settled request's cost to its task's running total (bounded CAS loop; a failure is
/// only a stale header, never a lost charge: the counter's ledger is the record).
pub fn add_task_cost(task: &str, cost_micros: i64) {
    let key = task_cost_key(task);
    for _ in 0..MAX_CAS_ATTEMPTS {
        let (current, cas) = match host::get_shared(&key) {
            Ok((Some(bytes), cas)) => (TaskCost::decode(&bytes).unwrap_or_default(), cas),
            Ok((None, cas)) => (TaskCost::default(), cas),
            Err(_) => return,
        };
        let next = TaskCost { cost_micros: current.cost_micros.saturating_add(cost_micros.max(0)), requests: current.requests.saturating_add(1) };
        match host::set_shared(&key, &next.encode(), cas) {
            SetShared::Conflict => continue,
            SetShared::Written | SetShared::Failed(_) => return,
        }
    }
}
