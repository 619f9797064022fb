//! The cost handoff (issue 12 §3): what one task or agent session cost, from the ledger, and the
//! human checkpoints recorded on it.
//!
//! "Every premium run returns a handoff: … tokens or estimated cost …" (the users' checklist).
//! The ledger already holds every settled request with its principal, and so its task id; a
//! summary folds a task's records into one [`TaskSummary`] (the same fold for every store, so
//! the SQLite and Redis answers agree by construction), shown as JSON or Markdown:
//!
//! ```text
//! GET  /admin/tasks/{id}     admin token   TaskSummary (?format=json|markdown)
//! POST /admin/checkpoints    admin token   {"task", "note"?} -> Checkpoint (201), audited
//! GET  /tasks/{id}/summary   gateway token + x-tollgate-key-id: the task's own key
//! ```
//!
//! `/tasks/{id}/summary` lets an agent put its own cost into its handoff. The counter cannot see
//! virtual keys (gateways hold only their SHA-256, mapped to a key id), so it trusts the gateway
//! that vouches for the caller: the call carries a gateway token and `x-tollgate-key-id`, the key
//! id that gateway's attribution gave the caller. It is answered only when every ledger record of
//! the task was made with that key id (a task shared by several keys is readable by an admin only),
//! and a task with no requests is 404 for it, like a task of another key (nothing is revealed).
//!
//! A checkpoint is a human's "go on" for a task the retry guard stopped: recorded here (who, when,
//! why) and listed in the summary. The gateway resets its retry count when it sees a new
//! checkpoint for the task (the trusted checkpoint header, docs/guards.md).

use crate::server::App;
use crate::store::Store;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use tollgate_core::money::Micros;
use tollgate_core::protocol::{GuardEvent, GuardEventKind, GuardStreak, Tokens};

/// Longest task id accepted (the filter's attribution keeps values up to this).
pub const MAX_TASK_LEN: usize = 256;
/// Longest checkpoint note.
pub const MAX_NOTE_LEN: usize = 2000;

/// One task's books.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskSummary {
    pub task: String,
    /// Settled requests in the ledger.
    pub requests: u64,
    pub cost_micros: Micros,
    pub tokens: TaskTokens,
    /// Per routed model (what was billed), sorted by model.
    pub models: Vec<ModelLine>,
    /// `started_at_ms` of the first request, `finished_at_ms` of the last; `None` without requests.
    pub first_seen_ms: Option<i64>,
    pub last_seen_ms: Option<i64>,
    /// Requests whose tokens were estimated (stream cut before usage arrived).
    pub estimated_requests: u64,
    /// Requests that ended in an error status (or were cut before one).
    pub failed_requests: u64,
    /// Human checkpoints recorded on the task, oldest first.
    pub checkpoints: Vec<Checkpoint>,
    /// The key ids the task's requests were made with, sorted (who may read `/tasks/{id}/summary`).
    pub key_ids: Vec<String>,
    /// What the gateways' retry guards did with the task's requests (delivered with the usage
    /// batches as guard events, never as charges: refused requests are not in the ledger).
    #[serde(default)]
    pub guard: GuardTally,
}

/// A task's retry-guard events, counted once per request (by record id) whatever the retries of
/// the delivery.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuardTally {
    /// Retries let through (the second attempt of the same work onwards).
    pub retries: u64,
    /// Attempts refused with 429 (they never reached an upstream and cost nothing).
    pub refused: u64,
    /// Over the allowance in observe mode (let through and reported).
    pub observed: u64,
}

impl GuardTally {
    pub fn add(&mut self, kind: GuardEventKind, retry: u32) {
        match kind {
            GuardEventKind::Passed if retry > 0 => self.retries += 1,
            GuardEventKind::Passed => {}
            GuardEventKind::Refused => self.refused += 1,
            GuardEventKind::Observed => self.observed += 1,
            // Outcomes (the failure streak) are not attempts: the ledger has the requests.
            GuardEventKind::Failed | GuardEventKind::Succeeded => {}
        }
    }
}

/// How long the counter keeps guard events: the longest retry window (a week) and an hour.
pub const GUARD_RETAIN_MS: i64 = 7 * 24 * 3_600_000 + 3_600_000;
/// Checkpoints made this recently are delivered with every usage acknowledgement (a gateway
/// that posts at least once in this time sees each one).
pub const RECENT_CHECKPOINT_MS: i64 = 3_600_000;
/// Most recent checkpoints delivered in one acknowledgement, and most keys per task.
pub const MAX_DELIVERED_CHECKPOINTS: usize = 100;
pub const MAX_KEYS_PER_TASK: usize = 256;

/// One stored guard event, as an answer reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredGuardEvent {
    pub gateway: String,
    pub kind: GuardEventKind,
    pub at_ms: i64,
}

/// The keys of a batch's guard events: per key its task and the newest `since_ms` its events
/// carry (the gateway's current count).
/// A key whose events are outcomes is a task's failure streak (`GuardAnswer::streaks`), any other
/// a retry count (`GuardAnswer::counts`).
pub fn batch_keys(events: &[GuardEvent]) -> BTreeMap<&str, BatchKey<'_>> {
    let mut keys: BTreeMap<&str, BatchKey<'_>> = BTreeMap::new();
    for e in events {
        let slot = keys.entry(e.key.as_str()).or_insert(BatchKey { task: e.task.as_deref(), since_ms: e.since_ms, streak: e.kind.is_outcome() });
        slot.since_ms = slot.since_ms.max(e.since_ms);
    }
    keys
}

/// One key of a batch ([`batch_keys`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchKey<'a> {
    pub task: Option<&'a str>,
    pub since_ms: i64,
    /// The key of a task's failure streak (its events are outcomes).
    pub streak: bool,
}

/// Attempts other gateways let through (passed or observed) since `since_ms` and after the
/// task's newest checkpoint (`checkpoint_at_ms`; `i64::MIN` without one): what `gateway` adds to
/// its own count. Its own events are left out, so nothing it counted itself is counted twice.
pub fn others(events: &[StoredGuardEvent], gateway: &str, since_ms: i64, checkpoint_at_ms: i64) -> u32 {
    let n = events
        .iter()
        .filter(|e| e.gateway != gateway && matches!(e.kind, GuardEventKind::Passed | GuardEventKind::Observed) && e.at_ms >= since_ms && e.at_ms > checkpoint_at_ms)
        .count();
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// A task's failure streak on the gateways other than `gateway` (`GuardStreak`): its failures
/// since `since_ms`, after the task's newest checkpoint and after the task's newest success on
/// any gateway (a success anywhere ends the streak everywhere). Its own failures are left out, so
/// nothing it counted itself is counted twice. When another gateway's success since `since_ms`
/// ended the asking gateway's streak: when (`ended_ms`), and how many of the asking gateway's own
/// failures came after it (`own_since_end`, its new streak).
pub fn streak(events: &[StoredGuardEvent], gateway: &str, since_ms: i64, checkpoint_at_ms: i64) -> GuardStreak {
    let newest_success = events.iter().filter(|e| e.kind == GuardEventKind::Succeeded).map(|e| e.at_ms).max().unwrap_or(i64::MIN);
    let failures_after = |mine: bool| {
        let n = events
            .iter()
            .filter(|e| (e.gateway == gateway) == mine && e.kind == GuardEventKind::Failed && e.at_ms >= since_ms && e.at_ms > checkpoint_at_ms && e.at_ms > newest_success)
            .count();
        u32::try_from(n).unwrap_or(u32::MAX)
    };
    let ended_ms = events.iter().filter(|e| e.gateway != gateway && e.kind == GuardEventKind::Succeeded && e.at_ms >= since_ms).map(|e| e.at_ms).max();
    GuardStreak { key: String::new(), since_ms, others: failures_after(false), ended_ms, own_since_end: if ended_ms.is_some() { failures_after(true) } else { 0 } }
}

/// `guard_events` of a usage batch: every event names its request, key and times.
pub fn validate_guard_events(events: &[GuardEvent]) -> Result<(), String> {
    for (i, e) in events.iter().enumerate() {
        if e.id.is_empty() || e.id.len() > 512 {
            return Err(format!("guard_events[{i}].id: must be the request's record id (1 to 512 bytes)"));
        }
        if e.key.len() != 16 || !e.key.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(format!("guard_events[{i}].key: must be 16 hex digits (the gateway's guard key)"));
        }
        if e.task.as_ref().is_some_and(|t| t.is_empty() || t.len() > MAX_TASK_LEN) {
            return Err(format!("guard_events[{i}].task: must be 1 to {MAX_TASK_LEN} bytes, or left out"));
        }
        if e.since_ms > e.at_ms {
            return Err(format!("guard_events[{i}].since_ms: must not be after at_ms"));
        }
    }
    Ok(())
}

/// Tokens by kind (`input` excludes cache reads and writes; `reasoning` is part of `output`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskTokens {
    pub input: u64,
    pub output: u64,
    pub cache_read: u64,
    pub cache_write: u64,
    pub reasoning: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelLine {
    pub model: String,
    pub requests: u64,
    pub cost_micros: Micros,
}

/// One ledger row, as much of it as a summary reads.
#[derive(Debug, Clone, Copy)]
pub struct Row<'a> {
    pub key_id: Option<&'a str>,
    pub routed_model: &'a str,
    pub tokens: &'a Tokens,
    pub cost_micros: Micros,
    pub status: u16,
    pub estimated: bool,
    pub started_at_ms: i64,
    pub finished_at_ms: i64,
}

impl TaskSummary {
    pub fn new(task: &str) -> TaskSummary {
        TaskSummary { task: task.to_owned(), ..TaskSummary::default() }
    }

    /// Folds one ledger row in. Order does not matter.
    pub fn add(&mut self, row: Row<'_>) {
        self.requests += 1;
        self.cost_micros = self.cost_micros.saturating_add(row.cost_micros);
        let t = &mut self.tokens;
        t.input = t.input.saturating_add(row.tokens.input);
        t.output = t.output.saturating_add(row.tokens.output);
        t.cache_read = t.cache_read.saturating_add(row.tokens.cache_read);
        t.cache_write = t.cache_write.saturating_add(row.tokens.cache_write);
        t.reasoning = t.reasoning.saturating_add(row.tokens.reasoning);
        match self.models.binary_search_by(|m| m.model.as_str().cmp(row.routed_model)) {
            Ok(i) => {
                if let Some(m) = self.models.get_mut(i) {
                    m.requests += 1;
                    m.cost_micros = m.cost_micros.saturating_add(row.cost_micros);
                }
            }
            Err(i) => self.models.insert(i, ModelLine { model: row.routed_model.to_owned(), requests: 1, cost_micros: row.cost_micros }),
        }
        self.first_seen_ms = Some(self.first_seen_ms.map_or(row.started_at_ms, |f| f.min(row.started_at_ms)));
        self.last_seen_ms = Some(self.last_seen_ms.map_or(row.finished_at_ms, |l| l.max(row.finished_at_ms)));
        if let Some(key) = row.key_id {
            if let Err(i) = self.key_ids.binary_search_by(|k| k.as_str().cmp(key)) {
                self.key_ids.insert(i, key.to_owned());
            }
        }
        self.estimated_requests += u64::from(row.estimated);
        self.failed_requests += u64::from(row.status == 0 || row.status >= 400);
    }

    /// Whether the counter knows anything about the task.
    pub fn is_empty(&self) -> bool {
        self.requests == 0 && self.checkpoints.is_empty()
    }

    /// The handoff block an agent pastes into its report.
    pub fn markdown(&self) -> String {
        let usd = tollgate_core::money::format_micros;
        let time = |ms: Option<i64>| ms.map_or_else(|| "-".to_owned(), crate::window::format_time_ms);
        let t = &self.tokens;
        let mut out = format!(
            "## Task `{}`\n\n| | |\n|---|---|\n| cost | ${} |\n| requests | {} |\n| tokens | input {}, output {} (reasoning {}), cache read {}, cache write {} |\n| first seen | {} |\n| last seen | {} |\n| estimated requests | {} |\n| failed requests | {} |\n| retries let through | {} |\n| guard refusals | {} |\n| observed over the allowance | {} |\n| checkpoints | {} |\n",
            self.task,
            usd(self.cost_micros),
            self.requests,
            t.input,
            t.output,
            t.reasoning,
            t.cache_read,
            t.cache_write,
            time(self.first_seen_ms),
            time(self.last_seen_ms),
            self.estimated_requests,
            self.failed_requests,
            self.guard.retries,
            self.guard.refused,
            self.guard.observed,
            self.checkpoints.len(),
        );
        if !self.models.is_empty() {
            out.push_str("\n| model | requests | cost |\n|---|---:|---:|\n");
            for m in &self.models {
                out.push_str(&format!("| {} | {} | ${} |\n", m.model, m.requests, usd(m.cost_micros)));
            }
        }
        if !self.checkpoints.is_empty() {
            out.push_str("\n| checkpoint | at | by | note |\n|---|---|---|---|\n");
            for c in &self.checkpoints {
                out.push_str(&format!("| {} | {} | {} | {} |\n", c.id, crate::window::format_time_ms(c.at_ms), c.actor, c.note.replace('|', "\\|").replace('\n', " ")));
            }
        }
        out
    }
}

/// `POST /admin/checkpoints`, as sent.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckpointSpec {
    pub task: String,
    #[serde(default)]
    pub note: Option<String>,
}

/// A recorded human checkpoint.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// `cp-<n>`, assigned by the store, unique per store.
    pub id: String,
    pub task: String,
    pub at_ms: i64,
    /// The admin token's name.
    pub actor: String,
    pub note: String,
}

/// Checks a task id from a path or a body: the error names the field.
pub fn validate_task(task: &str, field: &str) -> Result<(), String> {
    if task.is_empty() || task.len() > MAX_TASK_LEN || task.chars().any(char::is_control) {
        return Err(format!("{field}: a task id is 1-{MAX_TASK_LEN} characters without control characters"));
    }
    Ok(())
}

impl CheckpointSpec {
    pub fn validate(&self) -> Result<(), String> {
        validate_task(&self.task, "task")?;
        if let Some(note) = &self.note {
            if note.len() > MAX_NOTE_LEN {
                return Err(format!("note: at most {MAX_NOTE_LEN} bytes"));
            }
        }
        Ok(())
    }
}

/// The routes this module serves (merged into `server::router`).
pub fn routes<S: Store>() -> axum::Router<App<S>> {
    axum::Router::new()
        .route("/admin/tasks/{id}", axum::routing::get(handlers::get_task::<S>))
        .route("/admin/checkpoints", axum::routing::post(handlers::add_checkpoint::<S>))
        .route("/tasks/{id}/summary", axum::routing::get(handlers::own_summary::<S>))
}

mod handlers {
    use super::*;
    use crate::server::{error, invalid, ok_json, parse_body, store_error, Body};
    use axum::extract::{Path, Query, State};
    use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
    use axum::response::{IntoResponse, Response};

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct TaskQuery {
        #[serde(default)]
        format: Option<String>,
    }

    pub async fn get_task<S: Store>(State(app): State<App<S>>, headers: HeaderMap, Path(id): Path<String>, query: Result<Query<TaskQuery>, axum::extract::rejection::QueryRejection>) -> Response {
        // A read: the viewer role or above (crate::auth).
        if let Err(r) = app.role(&headers, crate::auth::Role::Viewer) {
            return r;
        }
        let markdown = match query.as_ref().map(|q| q.format.as_deref()) {
            Ok(None | Some("json")) => false,
            Ok(Some("markdown" | "md")) => true,
            Ok(Some(other)) => return invalid(format!("format: `{other}` is not a format; use json or markdown")),
            Err(e) => return invalid(format!("query: {e}; the only parameter is format=json|markdown")),
        };
        if let Err(m) = validate_task(&id, "task id in the path") {
            return invalid(m);
        }
        match app.store.task_summary(&id).await {
            Ok(summary) if summary.is_empty() => {
                error(StatusCode::NOT_FOUND, "not_found", format!("no requests or checkpoints for task `{id}`; check the id the gateway attributes (attribution: task)"))
            }
            Ok(summary) if markdown => {
                (StatusCode::OK, [(header::CONTENT_TYPE, HeaderValue::from_static("text/markdown; charset=utf-8"))], summary.markdown()).into_response()
            }
            Ok(summary) => ok_json(StatusCode::OK, &summary),
            Err(e) => store_error(&app.metrics, e),
        }
    }

    /// The trusted identity header a gateway sends with its token.
    pub const KEY_ID_HEADER: &str = "x-tollgate-key-id";

    pub async fn own_summary<S: Store>(State(app): State<App<S>>, headers: HeaderMap, Path(id): Path<String>, query: Result<Query<TaskQuery>, axum::extract::rejection::QueryRejection>) -> Response {
        if let Err(r) = app.gateway(&headers) {
            return r;
        }
        let Some(key_id) = headers.get(KEY_ID_HEADER).and_then(|v| v.to_str().ok()).map(str::trim).filter(|k| !k.is_empty()) else {
            return invalid(format!("{KEY_ID_HEADER}: the gateway must say whose key asks (the key id its attribution gave the caller)"));
        };
        let markdown = match query.as_ref().map(|q| q.format.as_deref()) {
            Ok(None | Some("json")) => false,
            Ok(Some("markdown" | "md")) => true,
            Ok(Some(other)) => return invalid(format!("format: `{other}` is not a format; use json or markdown")),
            Err(e) => return invalid(format!("query: {e}; the only parameter is format=json|markdown")),
        };
        if let Err(m) = validate_task(&id, "task id in the path") {
            return invalid(m);
        }
        match app.store.task_summary(&id).await {
            Ok(summary) if summary.requests > 0 && summary.key_ids == [key_id] => {
                if markdown {
                    (StatusCode::OK, [(header::CONTENT_TYPE, HeaderValue::from_static("text/markdown; charset=utf-8"))], summary.markdown()).into_response()
                } else {
                    ok_json(StatusCode::OK, &summary)
                }
            }
            Ok(_) => error(StatusCode::NOT_FOUND, "not_found", format!("no task `{id}` made with this key; an admin can read any task at /admin/tasks/{{id}}")),
            Err(e) => store_error(&app.metrics, e),
        }
    }

    pub async fn add_checkpoint<S: Store>(State(app): State<App<S>>, headers: HeaderMap, body: Body) -> Response {
        // A human checkpoint is an approval: the approver role or above (crate::auth).
        let actor = match app.role(&headers, crate::auth::Role::Approver) {
            Ok(caller) => caller.name,
            Err(r) => return r,
        };
        let spec: CheckpointSpec = match parse_body(&body) {
            Ok(s) => s,
            Err(r) => return r,
        };
        if let Err(m) = spec.validate() {
            return invalid(m);
        }
        let checkpoint = Checkpoint { id: String::new(), task: spec.task, at_ms: app.clock.now_ms(), actor: actor.clone(), note: spec.note.unwrap_or_default() };
        match app.store.add_checkpoint(checkpoint, &actor).await {
            Ok(c) => {
                crate::log::info("checkpoint recorded", serde_json::json!({"task": c.task, "checkpoint": c.id, "actor": c.actor}));
                ok_json(StatusCode::CREATED, &c)
            }
            Err(e) => store_error(&app.metrics, e),
        }
    }
}

/// Builds a summary from rows and checkpoints (what both stores do with what they read).
pub fn summarise<'a>(task: &str, rows: impl IntoIterator<Item = Row<'a>>, checkpoints: Vec<Checkpoint>) -> TaskSummary {
    let mut s = TaskSummary::new(task);
    for row in rows {
        s.add(row);
    }
    s.checkpoints = checkpoints;
    s
}

/// The same, with the task's guard events (kind, retry), each request's once.
pub fn summarise_with_guard<'a>(task: &str, rows: impl IntoIterator<Item = Row<'a>>, checkpoints: Vec<Checkpoint>, guard: impl IntoIterator<Item = (GuardEventKind, u32)>) -> TaskSummary {
    let mut s = summarise(task, rows, checkpoints);
    for (kind, retry) in guard {
        s.guard.add(kind, retry);
    }
    s
}

/// Models in a summary by name, for tests and the CLI.
pub fn models_by_name(s: &TaskSummary) -> BTreeMap<&str, &ModelLine> {
    s.models.iter().map(|m| (m.model.as_str(), m)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokens(input: u64, output: u64) -> Tokens {
        Tokens { input, output, cache_read: 1, cache_write: 2, reasoning: 3, ..Tokens::default() }
    }

    #[test]
    fn a_summary_folds_rows_in_any_order() {
        let (a, b) = (tokens(10, 20), tokens(5, 7));
        let rows = [
            Row { key_id: Some("k2"), routed_model: "gpt-4o", tokens: &a, cost_micros: 300, status: 200, estimated: false, started_at_ms: 1_000, finished_at_ms: 2_000 },
            Row { key_id: Some("k1"), routed_model: "claude", tokens: &b, cost_micros: 50, status: 500, estimated: true, started_at_ms: 500, finished_at_ms: 900 },
            Row { key_id: None, routed_model: "gpt-4o", tokens: &b, cost_micros: 1, status: 0, estimated: false, started_at_ms: 3_000, finished_at_ms: 3_500 },
        ];
        let forward = summarise("t", rows, Vec::new());
        let backward = summarise("t", rows.into_iter().rev(), Vec::new());
        assert_eq!(forward, backward);
        assert_eq!((forward.requests, forward.cost_micros), (3, 351));
        assert_eq!(forward.tokens, TaskTokens { input: 20, output: 34, cache_read: 3, cache_write: 6, reasoning: 9 });
        assert_eq!((forward.first_seen_ms, forward.last_seen_ms), (Some(500), Some(3_500)));
        assert_eq!((forward.estimated_requests, forward.failed_requests), (1, 2));
        assert_eq!(forward.key_ids, ["k1", "k2"], "sorted, each once, a record without a key adds none");
        let m = models_by_name(&forward);
        assert_eq!((m["gpt-4o"].requests, m["gpt-4o"].cost_micros, m["claude"].requests), (2, 301, 1));
        assert_eq!(forward.models.iter().map(|m| m.model.as_str()).collect::<Vec<_>>(), ["claude", "gpt-4o"], "sorted by model");
    }

    #[test]
    fn markdown_names_the_cost_tokens_models_and_checkpoints() {
        let t = tokens(1000, 200);
        let row = Row { key_id: None, routed_model: "gpt-4o", tokens: &t, cost_micros: 1_234_567, status: 200, estimated: false, started_at_ms: 0, finished_at_ms: 0 };
        let cp = Checkpoint { id: "cp-1".into(), task: "fix-ci".into(), at_ms: 0, actor: "ana".into(), note: "a|b".into() };
        let md = summarise("fix-ci", [row], vec![cp]).markdown();
        for needle in ["## Task `fix-ci`", "| cost | $1.234567 |", "input 1000, output 200", "| gpt-4o | 1 | $1.234567 |", "| cp-1 |", "a\\|b"] {
            assert!(md.contains(needle), "{needle} in\n{md}");
        }
    }

    #[test]
    fn checkpoint_bodies_are_validated_naming_the_field() {
        let spec = |task: &str, note: Option<String>| CheckpointSpec { task: task.into(), note };
        assert!(spec("fix-ci", Some("ok".into())).validate().is_ok());
        assert!(spec("", None).validate().unwrap_err().starts_with("task:"));
        assert!(spec("a\nb", None).validate().unwrap_err().starts_with("task:"));
        assert!(spec(&"x".repeat(MAX_TASK_LEN + 1), None).validate().unwrap_err().starts_with("task:"));
        assert!(spec("t", Some("n".repeat(MAX_NOTE_LEN + 1))).validate().unwrap_err().starts_with("note:"));
    }
}
