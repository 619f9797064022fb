//! Agent guards (issue 12): the `guards` section of the filter config and the decisions it drives.
//!
//! - [`retry`]: the retry-loop guard. "No agent may retry expensive work more than twice without
//!   a human checkpoint" (the users' rule): the same work asked again by the same principal and
//!   task is counted per gateway in shared data; past `allowed_retries` the next attempt is
//!   refused with 429 naming the guard, the task and how to continue.
//! - [`fingerprint`]: what "the same work" is: a hash of the body's top-level members (volatile
//!   ones ignored), from the members the body scan already found.
//! - [`TaskRequirement`]: premium runs need attribution: a matching request without a task id (and,
//!   optionally, other principal fields such as the owning `user`) is refused with 403 or
//!   downgraded to a fallback model.
//!
//! ```json
//! "guards": {
//!   "retry": {
//!     "mode": "enforce",
//!     "expensive": {"tier": "premium", "model": ["gpt-4o*", "claude-opus*"], "min_estimated_cost_usd": "0.05"},
//!     "allowed_retries": 2,
//!     "window_seconds": 3600,
//!     "ignore_fields": ["stream", "stream_options", "metadata", "user", "temperature"],
//!     "checkpoint_header": "x-tollgate-checkpoint"
//!   },
//!   "require_task": [
//!     {"name": "premium-needs-task", "match": {"model": "tier:premium"}, "require": ["task", "user"],
//!      "otherwise": "downgrade", "fallback_model": "tier:standard"}
//!   ],
//!   "task_cost_header": true
//! }
//! ```
//!
//! Without a `guards` section nothing here runs (the filter skips the fingerprint entirely).

pub mod fingerprint;
pub mod retry;

use crate::attribution::{Field, OneOrMany};
use crate::errors::{ErrorKind, Failure};
use crate::money::{parse_decimal_scaled, Micros};
use crate::protocol::Principal;
use crate::routing::Glob;
use crate::section::{parse_at, ConfigError};
use retry::RetryLimits;
use serde::Deserialize;

/// Default `guards.retry.allowed_retries`: the users' rule, "more than twice".
pub const DEFAULT_ALLOWED_RETRIES: u32 = 2;
/// Default `guards.retry.window_seconds`: one hour.
pub const DEFAULT_WINDOW_SECONDS: u64 = 3600;
/// Longest `window_seconds` accepted: a week.
pub const MAX_WINDOW_SECONDS: u64 = 7 * 24 * 3600;

/// `guards`, as written.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GuardsConfig {
    #[serde(default)]
    pub retry: Option<serde_json::Value>,
    #[serde(default)]
    pub require_task: Vec<serde_json::Value>,
    /// Add `x-tollgate-task-cost` to responses of requests that carry a task id.
    #[serde(default)]
    pub task_cost_header: bool,
}

/// `guards.retry`, as written.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RetryConfig {
    #[serde(default)]
    mode: Option<Mode>,
    #[serde(default)]
    expensive: Option<serde_json::Value>,
    #[serde(default)]
    allowed_retries: Option<u32>,
    #[serde(default)]
    window_seconds: Option<u64>,
    #[serde(default)]
    ignore_fields: Option<Vec<String>>,
    #[serde(default)]
    checkpoint_header: Option<String>,
}

/// `guards.retry.mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Refuse past the limit.
    #[default]
    Enforce,
    /// Count and report (metric, log, access log), never refuse.
    Observe,
}

/// `guards.retry.expensive`, as written: any condition given makes a request expensive.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ExpensiveConfig {
    #[serde(default)]
    tier: Option<OneOrMany>,
    #[serde(default)]
    model: Option<OneOrMany>,
    #[serde(default)]
    min_estimated_cost_usd: Option<serde_json::Value>,
}

/// The compiled `guards` section.
#[derive(Debug, Clone, Default)]
pub struct Guards {
    pub retry: Option<RetryGuard>,
    pub require_task: Vec<TaskRequirement>,
    /// Add `x-tollgate-task-cost` (this gateway's settled cost and requests of the task so far)
    /// to responses of requests that carry a task id.
    pub task_cost_header: bool,
}

/// The compiled retry-loop guard.
#[derive(Debug, Clone)]
pub struct RetryGuard {
    pub limits: RetryLimits,
    /// Top-level body members left out of the fingerprint.
    pub ignored: fingerprint::IgnoredFields,
    /// A request header a trusted upstream filter writes with a checkpoint id (lower case).
    pub checkpoint_header: Option<String>,
    tiers: Option<Vec<Glob>>,
    models: Option<Vec<Glob>>,
    min_cost: Option<Micros>,
}

/// What the retry guard looks at to decide whether a request is expensive.
#[derive(Debug, Clone, Copy)]
pub struct Work<'a> {
    pub principal: &'a Principal,
    pub requested_model: &'a str,
    pub routed_model: &'a str,
    /// The request's worst-case cost (what enforcement would reserve).
    pub worst_case_micros: Micros,
}

impl RetryGuard {
    /// Whether [`Self::is_expensive`] looks at the request's worst-case cost (`min_estimated_cost_usd`):
    /// without it the filter does not compute one for the guard.
    pub fn needs_cost(&self) -> bool {
        self.min_cost.is_some()
    }

    /// Whether the guard counts this request. No `expensive` section: every request.
    pub fn is_expensive(&self, work: &Work<'_>) -> bool {
        if self.tiers.is_none() && self.models.is_none() && self.min_cost.is_none() {
            return true;
        }
        let any = |globs: &Option<Vec<Glob>>, value: Option<&str>| {
            globs.as_ref().is_some_and(|gs| value.is_some_and(|v| gs.iter().any(|g| g.matches(v))))
        };
        any(&self.tiers, work.principal.tier.as_deref())
            || any(&self.models, Some(work.requested_model))
            || any(&self.models, Some(work.routed_model))
            || self.min_cost.is_some_and(|min| work.worst_case_micros >= min)
    }

    /// The shared-data key of this (principal, task, fingerprint)'s count.
    pub fn key(principal: &Principal, fingerprint: u64) -> String {
        RetryGuard::entry_key(principal, fingerprint).as_str().to_owned()
    }

    /// [`RetryGuard::key`] without an allocation (the filter computes it on every counted request
    /// and only reads it).
    pub fn entry_key(principal: &Principal, fingerprint: u64) -> EntryKey {
        EntryKey::new(RETRY_PREFIX, principal_hash(principal, fingerprint))
    }

    /// The shared-data key of a task's failure streak (per principal and task).
    pub fn task_key(principal: &Principal) -> String {
        hex_key(FAILURE_PREFIX, principal_hash(principal, 0x7461_736b))
    }

    /// The 429 for an attempt of a task that failed too often in a row.
    pub fn task_refusal(&self, principal: &Principal, failures: u32) -> Failure {
        let task = principal.task.as_deref().unwrap_or_default();
        let window = self.limits.window_ms / 1000;
        Failure::new(
            ErrorKind::GuardRefused,
            format!(
                "retry guard: task \"{task}\" failed {failures} times in a row within {window} s, {} retries after a failure are allowed without a human checkpoint; ask for a human checkpoint (POST /admin/checkpoints on the counter{}) to continue",
                self.limits.allowed_retries,
                self.checkpoint_header.as_deref().map(|h| format!(", or the {h} header from your approval step")).unwrap_or_default()
            ),
        )
    }

    /// The 429 for an attempt past the limit: names the guard, the task and the way on.
    pub fn refusal(&self, principal: &Principal, attempts: u32) -> Failure {
        let task = match principal.task.as_deref() {
            Some(task) => format!("task \"{task}\""),
            None => "this caller (no task id)".to_owned(),
        };
        let window = self.limits.window_ms / 1000;
        let how = match &self.checkpoint_header {
            Some(header) => format!("a human checkpoint (POST /admin/checkpoints on the counter, or the {header} header from your approval step)"),
            None => "a human checkpoint (POST /admin/checkpoints on the counter)".to_owned(),
        };
        Failure::new(
            ErrorKind::GuardRefused,
            format!(
                "retry guard: {task} has sent this same request {attempts} times within {window} s, {} retries are allowed without a human checkpoint; change the request, or ask for {how} to continue",
                self.limits.allowed_retries
            ),
        )
    }
}

/// The shared-data key prefix of a retry count (`tollgate.guard.retry.<16 hex digits>`).
pub const RETRY_PREFIX: &str = "tollgate.guard.retry.";
/// The shared-data key prefix of a task's failure streak (`tollgate.guard.tfail.<16 hex digits>`).
pub const FAILURE_PREFIX: &str = "tollgate.guard.tfail.";

/// `seed` and every principal field, chained through one hash with one final avalanche (a field's
/// length is folded in before its bytes, so no two principals hash alike by moving bytes between
/// fields).
fn principal_hash(principal: &Principal, seed: u64) -> u64 {
    let mut h = seed;
    for field in Field::ALL {
        let value = field.get(principal).unwrap_or_default();
        h = fingerprint::absorb(h ^ (field as u64).wrapping_add(1), value.as_bytes());
    }
    fingerprint::finish(h)
}

/// `prefix` and 16 lower-case hex digits of `value`, in one allocation.
fn hex_key(prefix: &str, value: u64) -> String {
    EntryKey::new(prefix, value).as_str().to_owned()
}

/// A shared-data key held on the stack: a prefix ([`RETRY_PREFIX`], [`FAILURE_PREFIX`]) and 16
/// lower-case hex digits.
#[derive(Debug, Clone, Copy)]
pub struct EntryKey {
    bytes: [u8; EntryKey::CAP],
    len: usize,
}

impl EntryKey {
    /// Room for the longest prefix and the digits.
    const CAP: usize = 48;

    fn new(prefix: &str, value: u64) -> EntryKey {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        let mut bytes = [0u8; EntryKey::CAP];
        let prefix = prefix.as_bytes();
        let prefix = prefix.get(..prefix.len().min(EntryKey::CAP - 16)).unwrap_or_default();
        let (head, hex) = bytes.split_at_mut(prefix.len());
        head.copy_from_slice(prefix);
        for (i, slot) in hex.iter_mut().take(16).enumerate() {
            *slot = DIGITS.get(((value >> (60 - 4 * i)) & 0xF) as usize).copied().unwrap_or(b'0');
        }
        EntryKey { bytes, len: prefix.len() + 16 }
    }

    pub fn as_str(&self) -> &str {
        self.bytes.get(..self.len).and_then(|b| std::str::from_utf8(b).ok()).unwrap_or_default()
    }
}

/// The hash a checkpoint value is stored as (never 0: 0 means none).
pub fn checkpoint_hash(value: &str) -> u64 {
    fingerprint::hash_bytes(3, value.as_bytes()).max(1)
}

/// The header that tells an agent what its task cost so far.
pub const TASK_COST_HEADER: &str = "x-tollgate-task-cost";

/// The shared-data key of a task's running cost on this gateway.
pub fn task_cost_key(task: &str) -> String {
    hex_key("tollgate.guard.task.", fingerprint::hash_bytes(4, task.as_bytes()))
}

/// A task's settled cost and requests on one gateway (16 bytes in shared data).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TaskCost {
    pub cost_micros: Micros,
    pub requests: u64,
}

impl TaskCost {
    pub fn encode(&self) -> [u8; 16] {
        let mut out = [0u8; 16];
        for (slot, b) in out.iter_mut().zip(self.cost_micros.to_le_bytes().into_iter().chain(self.requests.to_le_bytes())) {
            *slot = b;
        }
        out
    }

    pub fn decode(bytes: &[u8]) -> Option<TaskCost> {
        if bytes.len() != 16 {
            return None;
        }
        let (cost, requests) = bytes.split_at(8);
        Some(TaskCost { cost_micros: i64::from_le_bytes(cost.try_into().ok()?), requests: u64::from_le_bytes(requests.try_into().ok()?) })
    }

    /// The header value: `cost_micros=<n>; requests=<m>`.
    pub fn header_value(&self) -> String {
        format!("cost_micros={}; requests={}", self.cost_micros, self.requests)
    }
}

/// `guards.require_task[i]`, as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RequirementConfig {
    name: String,
    #[serde(default, rename = "match")]
    matcher: Option<serde_json::Value>,
    #[serde(default)]
    require: Option<Vec<String>>,
    #[serde(default)]
    otherwise: Option<Otherwise>,
    #[serde(default)]
    fallback_model: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RequirementMatch {
    #[serde(default)]
    model: Option<OneOrMany>,
    #[serde(default)]
    tier: Option<OneOrMany>,
    #[serde(default)]
    use_case: Option<OneOrMany>,
}

/// What happens to a matching request that lacks a required field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Otherwise {
    /// 403 in the dialect's shape, naming what is missing.
    #[default]
    Refuse,
    /// Served by `fallback_model` instead (which routing then resolves, e.g. `tier:standard`).
    Downgrade,
}

/// A compiled `require_task` entry.
#[derive(Debug, Clone)]
pub struct TaskRequirement {
    pub name: String,
    models: Option<Vec<Glob>>,
    tiers: Option<Vec<Glob>>,
    use_cases: Option<Vec<Glob>>,
    require: Vec<Field>,
    pub otherwise: Otherwise,
    pub fallback_model: Option<String>,
}

/// What the first matching requirement says about a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attributed {
    /// Nothing required, or everything present.
    Ok,
    /// Serve it with this model instead (then route as usual).
    Downgrade { model: String, rule: String },
}

impl Guards {
    /// Validates `guards` (at config path `guards`).
    pub fn compile(raw: GuardsConfig) -> Result<Guards, ConfigError> {
        let retry = match raw.retry {
            None => None,
            Some(v) => Some(compile_retry(parse_at(v, "guards.retry")?)?),
        };
        let mut require_task: Vec<TaskRequirement> = Vec::new();
        for (i, v) in raw.require_task.into_iter().enumerate() {
            let at = format!("guards.require_task[{i}]");
            let r = compile_requirement(parse_at(v, &at)?, &at)?;
            if require_task.iter().any(|o| o.name == r.name) {
                return Err(ConfigError::new(format!("{at}.name"), format!("\"{}\" is used by an earlier entry; names must be unique", r.name)));
            }
            require_task.push(r);
        }
        Ok(Guards { retry, require_task, task_cost_header: raw.task_cost_header })
    }

    /// §2: the first requirement matching (principal, requested model) decides. A request missing
    /// a required field is refused (403, naming what is missing) or downgraded.
    pub fn check_attribution(&self, principal: &Principal, requested_model: &str) -> Result<Attributed, Failure> {
        let any = |globs: &Option<Vec<Glob>>, value: Option<&str>| {
            globs.as_ref().is_none_or(|gs| value.is_some_and(|v| gs.iter().any(|g| g.matches(v))))
        };
        let Some(r) = self.require_task.iter().find(|r| {
            any(&r.models, Some(requested_model)) && any(&r.tiers, principal.tier.as_deref()) && any(&r.use_cases, principal.use_case.as_deref())
        }) else {
            return Ok(Attributed::Ok);
        };
        let missing: Vec<&str> = r.require.iter().filter(|f| f.get(principal).is_none()).map(|f| f.as_str()).collect();
        if missing.is_empty() {
            return Ok(Attributed::Ok);
        }
        match (r.otherwise, &r.fallback_model) {
            (Otherwise::Downgrade, Some(model)) => Ok(Attributed::Downgrade { model: model.clone(), rule: r.name.clone() }),
            _ => Err(Failure::new(
                ErrorKind::Denied,
                format!(
                    "guard \"{}\": model \"{requested_model}\" needs a {} for this request; send it (e.g. a task id in the attribution header or body metadata this gateway reads) or use a cheaper model",
                    r.name,
                    missing.join(" and a ")
                ),
            )),
        }
    }
}

fn compile_retry(raw: RetryConfig) -> Result<RetryGuard, ConfigError> {
    let allowed_retries = raw.allowed_retries.unwrap_or(DEFAULT_ALLOWED_RETRIES);
    if allowed_retries > 1000 {
        return Err(ConfigError::new("guards.retry.allowed_retries", "at most 1000"));
    }
    let window_seconds = raw.window_seconds.unwrap_or(DEFAULT_WINDOW_SECONDS);
    if window_seconds == 0 || window_seconds > MAX_WINDOW_SECONDS {
        return Err(ConfigError::new("guards.retry.window_seconds", format!("must be between 1 and {MAX_WINDOW_SECONDS} (a week)")));
    }
    let ignored = match raw.ignore_fields {
        None => fingerprint::IgnoredFields::default_list(),
        Some(fields) => {
            if let Some(i) = fields.iter().position(|f| f.is_empty()) {
                return Err(ConfigError::new(format!("guards.retry.ignore_fields[{i}]"), "must name a top-level body field"));
            }
            if fields.iter().any(|f| f == "model") {
                return Err(ConfigError::new("guards.retry.ignore_fields", "\"model\" always counts: another model is other work"));
            }
            fingerprint::IgnoredFields::new(fields)
        }
    };
    let checkpoint_header = match raw.checkpoint_header {
        None => None,
        Some(h) if !h.is_empty() && h.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') => Some(h.to_ascii_lowercase()),
        Some(_) => return Err(ConfigError::new("guards.retry.checkpoint_header", "must be a header name (letters, digits, '-', '_')")),
    };
    let expensive: ExpensiveConfig = match raw.expensive {
        Some(v) => parse_at(v, "guards.retry.expensive")?,
        None => ExpensiveConfig::default(),
    };
    let min_cost = match expensive.min_estimated_cost_usd {
        None => None,
        Some(v) => {
            let text = match &v {
                serde_json::Value::String(s) => s.clone(),
                serde_json::Value::Number(n) => n.to_string(),
                _ => String::new(),
            };
            let micros = parse_decimal_scaled(&text, 6)
                .and_then(|m| Micros::try_from(m).ok())
                .ok_or_else(|| ConfigError::new("guards.retry.expensive.min_estimated_cost_usd", format!("`{v}` is not a non-negative dollar amount; write it like \"0.05\"")))?;
            Some(micros)
        }
    };
    Ok(RetryGuard {
        limits: RetryLimits {
            allowed_retries,
            window_ms: i64::try_from(window_seconds.saturating_mul(1000)).unwrap_or(i64::MAX),
            observe: raw.mode.unwrap_or_default() == Mode::Observe,
        },
        ignored,
        checkpoint_header,
        tiers: globs(expensive.tier, "guards.retry.expensive.tier")?,
        models: globs(expensive.model, "guards.retry.expensive.model")?,
        min_cost,
    })
}

fn globs(values: Option<OneOrMany>, path: &str) -> Result<Option<Vec<Glob>>, ConfigError> {
    let Some(values) = values else { return Ok(None) };
    let values = values.into_vec();
    if values.is_empty() || values.iter().any(String::is_empty) {
        return Err(ConfigError::new(path, "give one or more non-empty values"));
    }
    Ok(Some(values.into_iter().map(Glob::new).collect()))
}

fn compile_requirement(raw: RequirementConfig, at: &str) -> Result<TaskRequirement, ConfigError> {
    if raw.name.trim().is_empty() {
        return Err(ConfigError::new(format!("{at}.name"), "must not be empty; it names the guard in errors"));
    }
    let matcher: RequirementMatch = match raw.matcher {
        Some(v) => parse_at(v, &format!("{at}.match"))?,
        None => RequirementMatch::default(),
    };
    let mut require = Vec::new();
    for (i, name) in raw.require.unwrap_or_else(|| vec!["task".to_owned()]).iter().enumerate() {
        let field = Field::parse(name).ok_or_else(|| {
            ConfigError::new(format!("{at}.require[{i}]"), format!("unknown principal field \"{name}\"; expected one of org, cost_center, team, user, key_id, use_case, tier, task"))
        })?;
        require.push(field);
    }
    if require.is_empty() {
        return Err(ConfigError::new(format!("{at}.require"), "name at least one principal field (e.g. [\"task\"])"));
    }
    let otherwise = raw.otherwise.unwrap_or_default();
    match (otherwise, &raw.fallback_model) {
        (Otherwise::Downgrade, None) => {
            return Err(ConfigError::new(format!("{at}.fallback_model"), "\"otherwise\": \"downgrade\" needs the model to serve instead (e.g. \"tier:standard\")"));
        }
        (Otherwise::Refuse, Some(_)) => {
            return Err(ConfigError::new(format!("{at}.fallback_model"), "only used with \"otherwise\": \"downgrade\"; remove it or set otherwise"));
        }
        (_, Some(m)) if m.trim().is_empty() => return Err(ConfigError::new(format!("{at}.fallback_model"), "must name a model")),
        _ => {}
    }
    Ok(TaskRequirement {
        name: raw.name,
        models: globs(matcher.model, &format!("{at}.match.model"))?,
        tiers: globs(matcher.tier, &format!("{at}.match.tier"))?,
        use_cases: globs(matcher.use_case, &format!("{at}.match.use_case"))?,
        require,
        otherwise,
        fallback_model: raw.fallback_model,
    })
}

#[cfg(test)]
mod tests;
