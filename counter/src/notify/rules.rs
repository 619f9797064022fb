//! Notification rules and the pure evaluators that turn numbers into [`EventDraft`]s.
//!
//! Evaluators take data and return drafts; they never read a clock or a store, so every rule is
//! tested with tables of numbers (below). The background loop ([`super::outbox`]) feeds them and
//! hands the drafts to the store, which keeps each dedup key once.
//!
//! The config is the counter's notify file (`serve --notify FILE`), documented field by field in
//! docs/counter.md ("Notifications").

use super::{EventDraft, EventKind};
use crate::store::BudgetState;
use crate::window::{self, civil_from_days};
use serde::Deserialize;
use serde_json::json;
use std::collections::BTreeMap;
use tollgate_core::money::{parse_decimal_scaled, Micros};
use tollgate_core::protocol::{BudgetMode, BudgetStatus};

const DAY_MS: i64 = 86_400_000;

/// The notify file as written.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NotifySpec {
    #[serde(default)]
    pub webhooks: Vec<WebhookSpec>,
    /// Absent: one rule for every budget (`[{"scope": "*"}]`). `[]`: no threshold events.
    #[serde(default)]
    pub thresholds: Option<Vec<ThresholdSpec>>,
    #[serde(default)]
    pub anomalies: Vec<AnomalySpec>,
    /// "Projected to exceed the hard limit before the window ends" rules; absent or `[]`: none.
    #[serde(default)]
    pub forecasts: Vec<ForecastSpec>,
    #[serde(default)]
    pub delivery: DeliverySpec,
    #[serde(default)]
    pub evaluation: EvaluationSpec,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookSpec {
    pub name: String,
    /// `http://host:port/path`.
    pub url: String,
    /// `slack` (`text` + `blocks`) or `json` (the event itself).
    #[serde(default = "default_format")]
    pub format: String,
    /// The HMAC key, inline...
    #[serde(default)]
    pub secret: Option<String>,
    /// ...or the name of an environment variable holding it.
    #[serde(default)]
    pub secret_env: Option<String>,
    /// Only these event kinds (default: all).
    #[serde(default)]
    pub kinds: Option<Vec<String>>,
}

fn default_format() -> String {
    "slack".into()
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ThresholdSpec {
    /// `*`, `budget:<id>`, a scope key (`team:platform`, `use_case:chat`) or `<kind>:*`.
    #[serde(default = "star")]
    pub scope: String,
    /// Percentages of the limit; absent: the budget's own `soft_thresholds_pct` (default `[80]`).
    #[serde(default)]
    pub soft_pct: Option<Vec<u32>>,
    /// Also an event at 100 % of the limit.
    #[serde(default = "yes")]
    pub limit: bool,
    /// Also an event when the budget reaches its hard limit.
    #[serde(default = "yes")]
    pub hard_stop: bool,
}

fn star() -> String {
    "*".into()
}
fn yes() -> bool {
    true
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AnomalySpec {
    /// `team:*`, `team:platform`, `use_case:*`, `user:*`, `model:*`, ... (the dimension, and one
    /// value or every value).
    pub scope: String,
    /// Fire when today's spend is at least this percent of the trailing 7-day daily average.
    #[serde(default = "default_factor")]
    pub factor_pct: u32,
    /// Dollars; today's spend must also reach this (a $0.02 day pages no one).
    #[serde(default = "default_min_spend")]
    pub min_spend: String,
    /// `HH:MM` local time from which the rule is evaluated each day.
    #[serde(default = "default_evaluate_at")]
    pub evaluate_at: String,
    /// `UTC` or `+HH:MM`: where days start.
    #[serde(default = "default_offset")]
    pub utc_offset: String,
}

/// A forecast rule: the budgets it covers (first match per budget wins, like thresholds).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ForecastSpec {
    /// `*`, `budget:<id>`, a scope key or `<kind>:*`.
    #[serde(default = "star")]
    pub scope: String,
    /// Dollars; the trailing week's spend must reach this before a projection pages anyone.
    #[serde(default = "default_forecast_min")]
    pub min_trailing_7d: String,
}

fn default_forecast_min() -> String {
    "0".into()
}

/// A validated forecast rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForecastRule {
    pub scope: String,
    pub min_trailing_7d_micros: Micros,
}

fn default_factor() -> u32 {
    300
}
fn default_min_spend() -> String {
    "1.00".into()
}
fn default_evaluate_at() -> String {
    "00:00".into()
}
fn default_offset() -> String {
    "UTC".into()
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeliverySpec {
    /// First retry delay; doubles per failed attempt.
    #[serde(default = "d_retry_base")]
    pub retry_base_ms: i64,
    /// Largest retry delay.
    #[serde(default = "d_retry_max")]
    pub retry_max_ms: i64,
    /// Per-attempt HTTP timeout.
    #[serde(default = "d_timeout")]
    pub timeout_ms: u64,
    /// Deliveries held in memory at once (the rest wait in the durable outbox).
    #[serde(default = "d_batch")]
    pub batch: usize,
    /// How long a claimed delivery is reserved for the instance that claimed it.
    #[serde(default = "d_claim")]
    pub claim_ms: i64,
}

fn d_retry_base() -> i64 {
    1_000
}
fn d_retry_max() -> i64 {
    300_000
}
fn d_timeout() -> u64 {
    5_000
}
fn d_batch() -> usize {
    32
}
fn d_claim() -> i64 {
    60_000
}

impl Default for DeliverySpec {
    fn default() -> Self {
        DeliverySpec { retry_base_ms: d_retry_base(), retry_max_ms: d_retry_max(), timeout_ms: d_timeout(), batch: d_batch(), claim_ms: d_claim() }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvaluationSpec {
    /// Real-time pacing of the background loops: they wake at least this often, and at most this
    /// often after usage pokes them.
    #[serde(default = "d_tick")]
    pub tick_ms: u64,
    /// Anomaly rules read the ledger, and workflows are checked for overdue reviews, at most this
    /// often (by the counter's clock).
    #[serde(default = "d_anomaly_every")]
    pub anomaly_every_ms: i64,
    /// Record a `review_overdue` event (once per workflow and review date) the day after a
    /// workflow's review date. On by default.
    #[serde(default = "d_review_overdue")]
    pub review_overdue: bool,
}

fn d_review_overdue() -> bool {
    true
}

fn d_tick() -> u64 {
    1_000
}
fn d_anomaly_every() -> i64 {
    60_000
}

impl Default for EvaluationSpec {
    fn default() -> Self {
        EvaluationSpec { tick_ms: d_tick(), anomaly_every_ms: d_anomaly_every(), review_overdue: d_review_overdue() }
    }
}

/// A validated webhook.
#[derive(Clone)]
pub struct Webhook {
    pub name: String,
    /// `host:port` and path of the `http://` URL.
    pub authority: String,
    pub path: String,
    pub slack: bool,
    pub secret: Vec<u8>,
    /// `None`: every kind.
    pub kinds: Option<Vec<EventKind>>,
}

impl std::fmt::Debug for Webhook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Webhook").field("name", &self.name).field("authority", &self.authority).field("path", &self.path).finish()
    }
}

impl Webhook {
    pub fn wants(&self, kind: EventKind) -> bool {
        self.kinds.as_ref().is_none_or(|k| k.contains(&kind))
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ThresholdRule {
    pub scope: String,
    pub soft_pct: Option<Vec<u32>>,
    pub limit: bool,
    pub hard_stop: bool,
}

/// A report dimension an anomaly rule can watch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dimension {
    Org,
    CostCenter,
    Team,
    User,
    Key,
    UseCase,
    Model,
}

impl Dimension {
    pub fn parse(kind: &str) -> Option<Dimension> {
        Some(match kind {
            "org" => Dimension::Org,
            "cost_center" => Dimension::CostCenter,
            "team" => Dimension::Team,
            "user" => Dimension::User,
            "key" => Dimension::Key,
            "use_case" => Dimension::UseCase,
            "model" => Dimension::Model,
            _ => return None,
        })
    }
    pub fn as_str(self) -> &'static str {
        self.group_by().as_str()
    }
    pub fn group_by(self) -> crate::store::GroupBy {
        use crate::store::GroupBy as G;
        match self {
            Dimension::Org => G::Org,
            Dimension::CostCenter => G::CostCenter,
            Dimension::Team => G::Team,
            Dimension::User => G::User,
            Dimension::Key => G::Key,
            Dimension::UseCase => G::UseCase,
            Dimension::Model => G::Model,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AnomalyRule {
    pub dimension: Dimension,
    /// `None`: every value of the dimension.
    pub value: Option<String>,
    pub factor_pct: u32,
    pub min_spend_micros: Micros,
    /// Minutes after local midnight.
    pub evaluate_at_min: u32,
    pub offset_minutes: i32,
}

/// The validated notify config.
#[derive(Debug, Clone)]
pub struct NotifyConfig {
    pub webhooks: Vec<Webhook>,
    pub thresholds: Vec<ThresholdRule>,
    pub anomalies: Vec<AnomalyRule>,
    pub forecasts: Vec<ForecastRule>,
    pub delivery: DeliverySpec,
    pub evaluation: EvaluationSpec,
}

impl Default for NotifyConfig {
    /// No webhooks, the default threshold rule for every budget, no anomaly rule.
    fn default() -> Self {
        NotifyConfig::from_spec(NotifySpec::default(), &|_| None).unwrap_or_else(|_| NotifyConfig {
            webhooks: vec![],
            thresholds: vec![],
            anomalies: vec![],
            forecasts: vec![],
            delivery: DeliverySpec::default(),
            evaluation: EvaluationSpec::default(),
        })
    }
}

impl NotifyConfig {
    /// Parses and validates a notify file; `env` resolves `secret_env`.
    pub fn parse(text: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<NotifyConfig, String> {
        let spec: NotifySpec = serde_json::from_str(text).map_err(|e| format!("notify config: {e}"))?;
        NotifyConfig::from_spec(spec, env)
    }

    pub fn from_spec(spec: NotifySpec, env: &dyn Fn(&str) -> Option<String>) -> Result<NotifyConfig, String> {
        let mut webhooks = Vec::new();
        for (i, w) in spec.webhooks.into_iter().enumerate() {
            let f = |field: &str| format!("webhooks[{i}].{field}");
            if !crate::budget::valid_id(&w.name) || webhooks.iter().any(|x: &Webhook| x.name == w.name) {
                return Err(format!("{}: `{}` must be a unique name of [A-Za-z0-9._-]", f("name"), w.name));
            }
            let rest = w.url.strip_prefix("http://").ok_or_else(|| {
                format!(
                    "{}: `{}` must start with http:// (TLS is not built in: point it at a local TLS-originating proxy for https targets such as Slack)",
                    f("url"),
                    w.url
                )
            })?;
            let (authority, path) = match rest.find('/') {
                Some(i) => (&rest[..i], &rest[i..]),
                None => (rest, "/"),
            };
            if authority.is_empty() {
                return Err(format!("{}: `{}` names no host", f("url"), w.url));
            }
            let slack = match w.format.as_str() {
                "slack" => true,
                "json" => false,
                other => return Err(format!("{}: `{other}` is not a format; use slack or json", f("format"))),
            };
            let secret = match (&w.secret, &w.secret_env) {
                (Some(s), None) => s.clone(),
                (None, Some(var)) => env(var).ok_or_else(|| format!("{}: the environment variable `{var}` is not set", f("secret_env")))?,
                _ => return Err(format!("{}: give exactly one of secret or secret_env (deliveries are always signed)", f("secret"))),
            };
            if secret.len() < 16 {
                return Err(format!("{}: the secret must be at least 16 characters", f("secret")));
            }
            let kinds = match w.kinds {
                None => None,
                Some(list) => Some(list.iter().map(|k| EventKind::parse(k)).collect::<Result<Vec<_>, _>>().map_err(|e| format!("{}: {e}", f("kinds")))?),
            };
            webhooks.push(Webhook { name: w.name, authority: authority.to_owned(), path: path.to_owned(), slack, secret: secret.into_bytes(), kinds });
        }
        let threshold_specs =
            spec.thresholds.unwrap_or_else(|| vec![ThresholdSpec { scope: star(), soft_pct: None, limit: true, hard_stop: true }]);
        let mut thresholds = Vec::new();
        for (i, t) in threshold_specs.into_iter().enumerate() {
            if t.scope != "*" && !t.scope.contains(':') {
                return Err(format!("thresholds[{i}].scope: `{}` is not *, budget:<id>, <kind>:<id> or <kind>:*", t.scope));
            }
            if let Some(p) = &t.soft_pct {
                if let Some(bad) = p.iter().find(|p| **p == 0 || **p > 1000) {
                    return Err(format!("thresholds[{i}].soft_pct: {bad} is not a percentage between 1 and 1000"));
                }
            }
            thresholds.push(ThresholdRule { scope: t.scope, soft_pct: t.soft_pct, limit: t.limit, hard_stop: t.hard_stop });
        }
        let mut anomalies = Vec::new();
        for (i, a) in spec.anomalies.into_iter().enumerate() {
            let f = |field: &str| format!("anomalies[{i}].{field}");
            let (kind, value) = a.scope.split_once(':').ok_or_else(|| format!("{}: `{}` is not <kind>:<id> or <kind>:*", f("scope"), a.scope))?;
            let dimension = Dimension::parse(kind)
                .ok_or_else(|| format!("{}: `{kind}` is not a dimension; use org, cost_center, team, user, key, use_case or model", f("scope")))?;
            if value.is_empty() {
                return Err(format!("{}: `{}` names no value; use {kind}:* for every one", f("scope"), a.scope));
            }
            if a.factor_pct <= 100 || a.factor_pct > 100_000 {
                return Err(format!("{}: {} must be above 100 (300 = 3x) and at most 100000", f("factor_pct"), a.factor_pct));
            }
            let min_spend_micros = parse_decimal_scaled(&a.min_spend, 6)
                .and_then(|m| Micros::try_from(m).ok())
                .filter(|m| *m >= 0)
                .ok_or_else(|| format!("{}: `{}` is not an amount of dollars such as \"5.00\"", f("min_spend"), a.min_spend))?;
            let evaluate_at_min = parse_hh_mm(&a.evaluate_at).ok_or_else(|| format!("{}: `{}` is not HH:MM (00:00 to 23:59)", f("evaluate_at"), a.evaluate_at))?;
            let offset_minutes = window::parse_utc_offset(&a.utc_offset).map_err(|e| format!("{}: {e}", f("utc_offset")))?;
            anomalies.push(AnomalyRule {
                dimension,
                value: (value != "*").then(|| value.to_owned()),
                factor_pct: a.factor_pct,
                min_spend_micros,
                evaluate_at_min,
                offset_minutes,
            });
        }
        let mut forecasts = Vec::new();
        for (i, r) in spec.forecasts.into_iter().enumerate() {
            if r.scope != "*" && !r.scope.contains(':') {
                return Err(format!("forecasts[{i}].scope: `{}` is not *, budget:<id>, <kind>:<id> or <kind>:*", r.scope));
            }
            let min_trailing_7d_micros = parse_decimal_scaled(&r.min_trailing_7d, 6)
                .and_then(|m| Micros::try_from(m).ok())
                .filter(|m| *m >= 0)
                .ok_or_else(|| format!("forecasts[{i}].min_trailing_7d: `{}` is not an amount of dollars such as \"5.00\"", r.min_trailing_7d))?;
            forecasts.push(ForecastRule { scope: r.scope, min_trailing_7d_micros });
        }
        let d = &spec.delivery;
        if d.retry_base_ms < 1 || d.retry_max_ms < d.retry_base_ms {
            return Err("delivery.retry_max_ms: must be at least retry_base_ms, which must be at least 1".into());
        }
        if d.timeout_ms == 0 || d.batch == 0 || d.batch > 1000 || d.claim_ms < 1 {
            return Err("delivery: timeout_ms and claim_ms must be at least 1, batch between 1 and 1000".into());
        }
        if spec.evaluation.tick_ms == 0 || spec.evaluation.anomaly_every_ms < 0 {
            return Err("evaluation.tick_ms: must be at least 1 (and anomaly_every_ms at least 0)".into());
        }
        Ok(NotifyConfig { webhooks, thresholds, anomalies, forecasts, delivery: spec.delivery, evaluation: spec.evaluation })
    }

    /// The webhooks that take `kind`, by name.
    pub fn targets(&self, kind: EventKind) -> Vec<String> {
        self.webhooks.iter().filter(|w| w.wants(kind)).map(|w| w.name.clone()).collect()
    }
}

fn parse_hh_mm(text: &str) -> Option<u32> {
    let (h, m) = text.split_once(':')?;
    if h.len() != 2 || m.len() != 2 {
        return None;
    }
    let (h, m) = (h.parse::<u32>().ok()?, m.parse::<u32>().ok()?);
    (h < 24 && m < 60).then_some(h * 60 + m)
}

fn rule_matches(scope: &str, budget_id: &str, budget_scope: &str) -> bool {
    if scope == "*" {
        return true;
    }
    if let Some(id) = scope.strip_prefix("budget:") {
        return id == budget_id;
    }
    match scope.strip_suffix(":*") {
        Some(kind) => budget_scope.split_once(':').is_some_and(|(k, _)| k == kind),
        None => scope == budget_scope,
    }
}

fn mode_word(mode: BudgetMode) -> &'static str {
    match mode {
        BudgetMode::Enforce => "enforce",
        BudgetMode::Observe => "observe",
    }
}

/// Threshold and hard-stop drafts for the budgets' current windows. For each budget the first
/// matching rule applies. At the hard stop only `hard_stop` is proposed; otherwise only the
/// highest threshold crossed (a jump from 0 to 100 % pages once, not twice). The key holds the
/// window start, so each fires once per window.
pub fn threshold_events(rules: &[ThresholdRule], states: &[BudgetState]) -> Vec<EventDraft> {
    let mut out = Vec::new();
    for s in states {
        let b = &s.budget;
        let Some(rule) = rules.iter().find(|r| rule_matches(&r.scope, &b.id, &b.scope)) else { continue };
        let details = |pct: Option<u32>| {
            json!({
                "budget": b.id, "mode": mode_word(b.mode), "window": b.window, "pct": pct,
                "spent_micros": s.spent_micros, "limit_micros": s.effective_limit_micros,
                "hard_limit_micros": s.hard_limit_micros, "window_start": s.window_start, "resets_at": s.resets_at,
            })
        };
        let money = |m: Micros| format!("${}", super::usd(m));
        if s.status == BudgetStatus::Hard {
            if rule.hard_stop {
                let effect = if b.mode == BudgetMode::Enforce { "requests on it are refused" } else { "observe mode: nothing is refused" };
                out.push(EventDraft {
                    key: format!("hard_stop:{}:{}", b.id, s.window_start),
                    kind: EventKind::HardStop,
                    scope: b.scope.clone(),
                    subject: Some(b.id.clone()),
                    window: s.window_start.to_string(),
                    title: format!(
                        "Budget `{}` ({}) hit its hard limit: {} of {} this {} window; {effect}",
                        b.id, b.scope, money(s.spent_micros), money(s.hard_limit_micros), b.window
                    ),
                    details: details(None),
                });
            }
            continue;
        }
        if s.effective_limit_micros <= 0 {
            continue;
        }
        let mut pcts: Vec<u32> = rule.soft_pct.clone().unwrap_or_else(|| b.soft_thresholds_pct.clone());
        if rule.limit {
            pcts.push(100);
        }
        let crossed = pcts
            .into_iter()
            .filter(|p| i128::from(s.spent_micros) * 100 >= i128::from(*p) * i128::from(s.effective_limit_micros))
            .max();
        if let Some(pct) = crossed {
            out.push(EventDraft {
                key: format!("threshold:{}:{pct}:{}", b.id, s.window_start),
                kind: EventKind::Threshold,
                scope: b.scope.clone(),
                subject: Some(b.id.clone()),
                window: s.window_start.to_string(),
                title: format!(
                    "Budget `{}` ({}) passed {pct} % of its {} limit: {} of {}",
                    b.id, b.scope, b.window, money(s.spent_micros), money(s.effective_limit_micros)
                ),
                details: details(Some(pct)),
            });
        }
    }
    out
}

/// "Projected to exceed the hard limit before the window ends" drafts: for each budget the first
/// matching rule applies; a budget already at its hard limit (the `hard_stop` event covers it), a
/// `none` window (no end) or a trailing week below the rule's minimum proposes nothing. The key
/// holds the window start: once per window and budget.
pub fn forecast_events(rules: &[ForecastRule], states: &[BudgetState], forecasts: &crate::forecast::Forecasts) -> Vec<EventDraft> {
    let mut out = Vec::new();
    for s in states {
        let b = &s.budget;
        let Some(rule) = rules.iter().find(|r| rule_matches(&r.scope, &b.id, &b.scope)) else { continue };
        let Some(f) = forecasts.budget(&b.id) else { continue };
        let (Some(resets_at), Some(at), Some(day)) = (s.resets_at, f.projection.hard_limit_at, f.projection.hard_limit_day.as_ref()) else { continue };
        if s.status == BudgetStatus::Hard || !f.projection.projected_to_exceed || f.trailing_7d_micros < rule.min_trailing_7d_micros {
            continue;
        }
        let money = |m: Micros| format!("${}", super::usd(m));
        out.push(EventDraft {
            key: format!("projected_overrun:{}:{}", b.id, s.window_start),
            kind: EventKind::ProjectedOverrun,
            scope: b.scope.clone(),
            subject: Some(b.id.clone()),
            window: s.window_start.to_string(),
            title: format!(
                "Budget `{}` ({}) is projected to reach its hard limit of {} on {day}, before its {} window ends: {} spent, {} in the last 7 days",
                b.id,
                b.scope,
                money(s.hard_limit_micros),
                b.window,
                money(s.spent_micros),
                money(f.trailing_7d_micros)
            ),
            details: json!({
                "budget": b.id, "mode": mode_word(b.mode), "window": b.window, "spent_micros": s.spent_micros,
                "hard_limit_micros": s.hard_limit_micros, "projected_end_micros": f.projection.projected_end_micros,
                "hard_limit_at": at, "hard_limit_day": day, "trailing_7d_micros": f.trailing_7d_micros,
                "pace_today_micros": f.pace_today_micros, "method": forecasts.method, "window_start": s.window_start, "resets_at": resets_at,
            }),
        });
    }
    out
}

/// The local day of `now_ms` for a rule: (start ms, `YYYY-MM-DD`, minutes since local midnight).
pub fn local_day(now_ms: i64, offset_minutes: i32) -> (i64, String, u32) {
    let offset_ms = i64::from(offset_minutes) * 60_000;
    let local = now_ms + offset_ms;
    let day = local.div_euclid(DAY_MS);
    let (y, m, d) = civil_from_days(day);
    let minute = (local.rem_euclid(DAY_MS) / 60_000) as u32;
    (day * DAY_MS - offset_ms, format!("{y:04}-{m:02}-{d:02}"), minute)
}

/// One scope whose spend today is anomalous.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AnomalyHit {
    /// `team:platform`.
    pub scope: String,
    pub value: String,
    pub day: String,
    pub today_micros: Micros,
    /// Sum of the 7 full days before today (days without spend count as 0).
    pub trailing_7d_micros: Micros,
}

impl AnomalyHit {
    /// Trailing 7-day daily average, rounded down to the micro-dollar.
    pub fn average_micros(&self) -> Micros {
        self.trailing_7d_micros / 7
    }
}

/// Scopes where `today >= min_spend` and `today * 7 * 100 >= factor_pct * trailing_7d` (integer
/// arithmetic, so exact). A scope with no spend in the trailing 7 days has no baseline and never
/// fires (thresholds cover new spenders). `today` and `trailing` map dimension values to micros.
pub fn anomaly_hits(rule: &AnomalyRule, day: &str, today: &BTreeMap<String, Micros>, trailing: &BTreeMap<String, Micros>) -> Vec<AnomalyHit> {
    let mut out = Vec::new();
    for (value, &today_micros) in today {
        if value.is_empty() || rule.value.as_ref().is_some_and(|v| v != value) {
            continue;
        }
        let trailing_7d_micros = trailing.get(value).copied().unwrap_or(0);
        if today_micros < rule.min_spend_micros || trailing_7d_micros <= 0 {
            continue;
        }
        if i128::from(today_micros) * 700 >= i128::from(rule.factor_pct) * i128::from(trailing_7d_micros) {
            out.push(AnomalyHit {
                scope: format!("{}:{value}", rule.dimension.as_str()),
                value: value.clone(),
                day: day.to_owned(),
                today_micros,
                trailing_7d_micros,
            });
        }
    }
    out
}

/// One line of an anomaly's breakdown: today's spend on the scope by model and use case.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct BreakdownRow {
    pub model: String,
    pub use_case: String,
    pub requests: u64,
    pub cost_micros: Micros,
}

/// The anomaly event: key `anomaly:<scope>:<local day>`, with the breakdown (largest first).
pub fn anomaly_draft(rule: &AnomalyRule, hit: &AnomalyHit, mut breakdown: Vec<BreakdownRow>) -> EventDraft {
    breakdown.sort_by(|a, b| b.cost_micros.cmp(&a.cost_micros).then_with(|| a.model.cmp(&b.model)).then_with(|| a.use_case.cmp(&b.use_case)));
    breakdown.truncate(10);
    let avg = hit.average_micros();
    let lines: Vec<String> =
        breakdown.iter().take(3).map(|r| format!("{} / {}: ${}", r.model, if r.use_case.is_empty() { "-" } else { &r.use_case }, super::usd(r.cost_micros))).collect();
    EventDraft {
        key: format!("anomaly:{}:{}", hit.scope, hit.day),
        kind: EventKind::Anomaly,
        scope: hit.scope.clone(),
        subject: None,
        window: hit.day.clone(),
        title: format!(
            "Spend anomaly on {}: ${} today ({}) vs a 7-day average of ${} ({}x threshold); top: {}",
            hit.scope,
            super::usd(hit.today_micros),
            hit.day,
            super::usd(avg),
            super::factor_text(rule.factor_pct),
            if lines.is_empty() { "-".to_owned() } else { lines.join(", ") }
        ),
        details: json!({
            "day": hit.day, "today_micros": hit.today_micros, "trailing_7d_micros": hit.trailing_7d_micros,
            "average_micros": avg, "factor_pct": rule.factor_pct, "min_spend_micros": rule.min_spend_micros,
            "breakdown": breakdown,
        }),
    }
}

/// A workflow's review date, as the workflow registry knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReviewDue {
    pub workflow: String,
    /// The workflow's budget scope (`workflow:<team>/<id>`): ids are unique per team only.
    pub scope: String,
    pub owner: String,
    /// `YYYY-MM-DD`.
    pub review_date: String,
}

/// `review_overdue` drafts for workflows whose review date is before `today` (`YYYY-MM-DD`).
/// Keyed by workflow and review date: moving the date re-arms the event.
pub fn review_overdue_events(workflows: &[ReviewDue], today: &str) -> Vec<EventDraft> {
    workflows
        .iter()
        .filter(|w| w.review_date.as_str() < today)
        .map(|w| EventDraft {
            key: format!("review_overdue:{}:{}", w.scope, w.review_date),
            kind: EventKind::ReviewOverdue,
            scope: w.scope.clone(),
            subject: Some(w.workflow.clone()),
            window: w.review_date.clone(),
            title: format!("Workflow `{}` (owner {}) was due for review on {}", w.workflow, w.owner, w.review_date),
            details: json!({"workflow": w.workflow, "owner": w.owner, "review_date": w.review_date, "today": today}),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::budget::BudgetSpec;
    use tollgate_core::money::format_micros;

    fn state(id: &str, scope: &str, limit: Micros, spent: Micros, status: BudgetStatus) -> BudgetState {
        BudgetState {
            budget: BudgetSpec {
                id: id.into(),
                scope: scope.into(),
                limit: format_micros(limit),
                token_limit: None,
                window: "day".into(),
                utc_offset: "UTC".into(),
                time_zone: None,
                template: None,
                reserve: None,
                reserve_excess_limit: None,
                reserve_lookback_days: None,
                reserve_min_samples: None,
                soft_thresholds_pct: vec![80],
                hard_limit_pct: 100,
                mode: BudgetMode::Enforce,
            },
            spent_micros: spent,
            tokens_used: 0,
            exemption_micros: 0,
            effective_limit_micros: limit,
            hard_limit_micros: limit,
            leased_micros: 0,
            status,
            window_start: 1_764_028_800,
            resets_at: Some(1_764_115_200),
            reserve_excess_micros: 0,
        }
    }

    fn default_rules() -> Vec<ThresholdRule> {
        NotifyConfig::default().thresholds
    }

    #[test]
    fn thresholds_propose_the_highest_crossed_percentage_once_per_window() {
        use BudgetStatus::*;
        let cases: &[(Micros, BudgetStatus, Option<&str>)] = &[
            (0, Ok, None),
            (7_999_999, Ok, None),
            (8_000_000, Soft, Some("threshold:b:80:1764028800")),
            (9_999_999, Soft, Some("threshold:b:80:1764028800")),
            (10_000_000, Hard, Some("hard_stop:b:1764028800")),
        ];
        for (spent, status, want) in cases {
            let got = threshold_events(&default_rules(), &[state("b", "team:x", 10_000_000, *spent, *status)]);
            assert_eq!(got.iter().map(|d| d.key.as_str()).collect::<Vec<_>>(), want.iter().copied().collect::<Vec<_>>(), "spent {spent}");
        }
        let rules = vec![ThresholdRule { scope: "*".into(), soft_pct: Some(vec![50, 90]), limit: true, hard_stop: false }];
        let got = threshold_events(&rules, &[state("b", "team:x", 10_000_000, 9_500_000, Soft)]);
        assert_eq!(got[0].key, "threshold:b:90:1764028800");
        assert_eq!(got[0].details["pct"], 90);
        let got = threshold_events(&rules, &[state("b", "team:x", 10_000_000, 20_000_000, Hard)]);
        assert!(got.is_empty(), "hard_stop: false keeps the hard stop quiet: {got:?}");
        // With a hard limit above 100 %, 100 % is a threshold of its own.
        let got = threshold_events(&default_rules(), &[state("b", "team:x", 10_000_000, 10_000_000, Soft)]);
        assert_eq!(got[0].key, "threshold:b:100:1764028800");
    }

    #[test]
    fn the_first_matching_rule_applies_per_budget() {
        let rules = vec![
            ThresholdRule { scope: "budget:quiet".into(), soft_pct: Some(vec![]), limit: false, hard_stop: false },
            ThresholdRule { scope: "use_case:*".into(), soft_pct: Some(vec![50]), limit: true, hard_stop: true },
            ThresholdRule { scope: "team:platform".into(), soft_pct: Some(vec![60]), limit: true, hard_stop: true },
        ];
        let states = [
            state("quiet", "team:platform", 10, 9, BudgetStatus::Soft),
            state("uc", "use_case:chat", 10, 5, BudgetStatus::Ok),
            state("plat", "team:platform", 10, 6, BudgetStatus::Ok),
            state("other", "team:other", 10, 9, BudgetStatus::Soft),
        ];
        let keys: Vec<String> = threshold_events(&rules, &states).into_iter().map(|d| d.key).collect();
        assert_eq!(keys, ["threshold:uc:50:1764028800", "threshold:plat:60:1764028800"]);
    }

    fn rule(value: Option<&str>) -> AnomalyRule {
        AnomalyRule {
            dimension: Dimension::Team,
            value: value.map(String::from),
            factor_pct: 300,
            min_spend_micros: 5_000_000,
            evaluate_at_min: 0,
            offset_minutes: 0,
        }
    }

    #[test]
    fn anomalies_need_three_times_the_average_and_the_minimum_spend() {
        let trailing: BTreeMap<String, Micros> =
            [("a", 7_000_000), ("b", 7_000_000), ("c", 70_000), ("d", 0)].into_iter().map(|(k, v)| (k.to_string(), v)).collect();
        // (team, today, fires): a's and b's average is $1.00/day, c's $0.01, d has no history.
        let cases = [("a", 2_999_999, false), ("b", 5_000_000, true), ("c", 4_999_999, false), ("d", 50_000_000, false), ("e", 9_000_000, false)];
        let today: BTreeMap<String, Micros> = cases.iter().map(|(k, v, _)| (k.to_string(), *v)).collect();
        let hits = anomaly_hits(&rule(None), "2026-11-25", &today, &trailing);
        let fired: Vec<&str> = hits.iter().map(|h| h.value.as_str()).collect();
        let want: Vec<&str> = cases.iter().filter(|c| c.2).map(|c| c.0).collect();
        assert_eq!(fired, want);
        assert_eq!(hits[0].scope, "team:b");
        assert_eq!(hits[0].average_micros(), 1_000_000);
        // exactly 3x the average is enough
        let today: BTreeMap<String, Micros> = [("a".to_string(), 21_000_000)].into();
        let trailing: BTreeMap<String, Micros> = [("a".to_string(), 49_000_000)].into();
        assert_eq!(anomaly_hits(&rule(None), "d", &today, &trailing).len(), 1);
        let today: BTreeMap<String, Micros> = [("a".to_string(), 20_999_999)].into();
        assert!(anomaly_hits(&rule(None), "d", &today, &trailing).is_empty());
        // a rule on one value ignores the others
        let today: BTreeMap<String, Micros> = [("a".to_string(), 30_000_000), ("z".to_string(), 30_000_000)].into();
        let trailing: BTreeMap<String, Micros> = [("a".to_string(), 7_000_000), ("z".to_string(), 7_000_000)].into();
        let hits = anomaly_hits(&rule(Some("z")), "d", &today, &trailing);
        assert_eq!(hits.iter().map(|h| h.scope.as_str()).collect::<Vec<_>>(), ["team:z"]);
    }

    #[test]
    fn an_anomaly_names_its_day_and_explains_itself_by_model_and_use_case() {
        let hit = AnomalyHit { scope: "team:a".into(), value: "a".into(), day: "2026-11-25".into(), today_micros: 30_000_000, trailing_7d_micros: 7_000_000 };
        let rows = vec![
            BreakdownRow { model: "small".into(), use_case: "chat".into(), requests: 10, cost_micros: 1_000_000 },
            BreakdownRow { model: "big".into(), use_case: "review".into(), requests: 3, cost_micros: 29_000_000 },
        ];
        let d = anomaly_draft(&rule(None), &hit, rows);
        assert_eq!(d.key, "anomaly:team:a:2026-11-25");
        assert_eq!(d.details["breakdown"][0]["model"], "big", "largest first");
        assert_eq!(d.details["average_micros"], 1_000_000);
        assert!(d.title.contains("$30.00 today") && d.title.contains("big / review: $29.00") && d.title.contains("3x"), "{}", d.title);
    }

    #[test]
    fn local_days_follow_the_offset() {
        let t = crate::window::parse_time_ms("2026-11-25T23:30:00Z").unwrap();
        assert_eq!(local_day(t, 0), (crate::window::parse_time_ms("2026-11-25").unwrap(), "2026-11-25".into(), 23 * 60 + 30));
        let (start, day, minute) = local_day(t, 60);
        assert_eq!((day.as_str(), minute), ("2026-11-26", 30));
        assert_eq!(start, crate::window::parse_time_ms("2026-11-25T23:00:00Z").unwrap());
    }

    #[test]
    fn overdue_reviews_fire_the_day_after_the_review_date() {
        let w = |id: &str, date: &str| ReviewDue { workflow: id.into(), scope: format!("workflow:platform/{id}"), owner: "ana".into(), review_date: date.into() };
        let items = [w("due-today", "2026-11-25"), w("late", "2026-11-24"), w("future", "2026-12-01")];
        let d = review_overdue_events(&items, "2026-11-25");
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].key, "review_overdue:workflow:platform/late:2026-11-24");
        assert_eq!(d[0].kind, EventKind::ReviewOverdue);
        assert_eq!(d[0].scope, "workflow:platform/late");
        assert_eq!(d[0].details["owner"], "ana");
    }

    #[test]
    fn bad_configs_name_the_field() {
        let env = |v: &str| (v == "HOOK_SECRET").then(|| "0123456789abcdef".to_string());
        let cases = [
            (r#"{"webhooks": [{"name": "a", "url": "https://hooks.slack.com/x", "secret": "0123456789abcdef"}]}"#, "webhooks[0].url"),
            (r#"{"webhooks": [{"name": "a", "url": "http://h/x"}]}"#, "webhooks[0].secret"),
            (r#"{"webhooks": [{"name": "a", "url": "http://h/x", "secret": "short"}]}"#, "webhooks[0].secret"),
            (r#"{"webhooks": [{"name": "a", "url": "http://h/x", "secret_env": "NOPE"}]}"#, "webhooks[0].secret_env"),
            (r#"{"webhooks": [{"name": "a", "url": "http://h/x", "secret_env": "HOOK_SECRET", "format": "teams"}]}"#, "webhooks[0].format"),
            (r#"{"webhooks": [{"name": "a", "url": "http://h/x", "secret_env": "HOOK_SECRET", "kinds": ["boom"]}]}"#, "webhooks[0].kinds"),
            (r#"{"anomalies": [{"scope": "planet:*"}]}"#, "anomalies[0].scope"),
            (r#"{"anomalies": [{"scope": "team:*", "factor_pct": 100}]}"#, "anomalies[0].factor_pct"),
            (r#"{"anomalies": [{"scope": "team:*", "min_spend": "lots"}]}"#, "anomalies[0].min_spend"),
            (r#"{"anomalies": [{"scope": "team:*", "evaluate_at": "25:00"}]}"#, "anomalies[0].evaluate_at"),
            (r#"{"thresholds": [{"scope": "platform"}]}"#, "thresholds[0].scope"),
            (r#"{"surprise": 1}"#, "unknown field `surprise`"),
        ];
        for (text, needle) in cases {
            let e = NotifyConfig::parse(text, &env).unwrap_err();
            assert!(e.contains(needle), "{text}: `{e}` should name `{needle}`");
        }
        let ok = NotifyConfig::parse(
            r#"{"webhooks": [{"name": "ops", "url": "http://127.0.0.1:9/hook", "secret_env": "HOOK_SECRET", "kinds": ["anomaly"]}],
               "anomalies": [{"scope": "team:*", "evaluate_at": "09:30", "utc_offset": "+01:00", "min_spend": "5"}]}"#,
            &env,
        )
        .unwrap();
        assert_eq!((ok.webhooks[0].authority.as_str(), ok.webhooks[0].path.as_str()), ("127.0.0.1:9", "/hook"));
        assert_eq!(ok.targets(EventKind::Anomaly), ["ops"]);
        assert!(ok.targets(EventKind::Threshold).is_empty());
        assert_eq!((ok.anomalies[0].evaluate_at_min, ok.anomalies[0].offset_minutes, ok.anomalies[0].min_spend_micros), (570, 60, 5_000_000));
    }
}
