//! Budgets and exemptions: the declarative spec (file and admin API) and its validated form.
//!
//! A [`BudgetSpec`] is what people write — dollars as decimal strings, windows as words — and is
//! what the audit log records as "before" and "after". [`Budget::from_spec`] turns it into integers
//! once, with errors that name the field. [`assess`] is the one place a budget's status is decided,
//! so the lease answer, the utilization report and the metrics always agree.

use crate::window::{self, Window};
use serde::{Deserialize, Serialize};
use tollgate_core::money::{format_micros, parse_decimal_scaled, Micros};
use std::collections::{BTreeMap, BTreeSet};
use tollgate_core::protocol::{parse_scope_key, BudgetMode, BudgetStatus, Principal, ScopeKind};

/// A budget as written in the budgets file or sent to `PUT /admin/budgets/{id}`.
///
/// ```json
/// {"id": "platform-monthly", "scope": "team:platform", "limit": "800.00", "window": "month",
///  "utc_offset": "+01:00", "soft_thresholds_pct": [80, 95], "hard_limit_pct": 150, "mode": "enforce"}
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BudgetSpec {
    /// `[A-Za-z0-9._-]`, at most 128 characters. May be omitted in a PUT (the path names it).
    #[serde(default)]
    pub id: String,
    /// A scope key, `<kind>:<id>` (`org:acme`, `team:platform`, `workflow:platform/code-review`),
    /// or a selector: one allowance shared by several scopes of one kind. Written as an object
    /// (`{"team": ["a", "b"]}`, `{"use_case": ["ci", "review"]}`) or as its canonical string
    /// (`any:team=a,b`), which is how it is stored and shown ([`Selector`]).
    #[serde(deserialize_with = "scope_or_selector")]
    pub scope: String,
    /// Dollars, as a decimal string (`"800.00"`); parsed exactly, never through a float.
    pub limit: String,
    /// Optional limit on billed tokens in the same window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_limit: Option<u64>,
    /// `day`, `week`, `month`, `rolling:N` or `none`.
    pub window: String,
    /// `UTC` or a fixed offset `+HH:MM`; calendar windows turn over at local midnight.
    #[serde(default = "default_offset")]
    pub utc_offset: String,
    /// An IANA time zone (`America/Los_Angeles`): windows turn over at local midnight with daylight
    /// saving time. Instead of `utc_offset` (which must then stay `UTC`, its default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_zone: Option<String>,
    #[serde(default = "default_soft")]
    pub soft_thresholds_pct: Vec<u32>,
    /// Percent of `limit` at which requests are refused; may exceed 100 (a circuit breaker).
    #[serde(default = "default_hard")]
    pub hard_limit_pct: u32,
    #[serde(default)]
    pub mode: BudgetMode,
    /// Set by the counter on a budget it made from a template (a budget on `<kind>:*`): the
    /// template's id. Such a budget gives way to an explicit one on its scope.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<String>,
    /// What a request reserves against this budget at a gateway (crate::reserve): `worst_case`
    /// (the default: the request's maximum cost, so the hard limit is exact) or `p99` (the output
    /// tokens the scope's requests to that model stayed under 99 % of the time, from the ledger).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reserve: Option<String>,
    /// `reserve: p99` only, and then required: dollars (decimal string) by which the budget's spend
    /// may pass its hard limit in one window because requests cost more than they reserved.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reserve_excess_limit: Option<String>,
    /// `reserve: p99` only: days of ledger the p99 is taken over (default 7, 1-90).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reserve_lookback_days: Option<u32>,
    /// `reserve: p99` only: requests to a model needed before its p99 is used (default 20,
    /// 1-100000); a model with fewer is reserved at its worst case.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reserve_min_samples: Option<u32>,
}

fn default_offset() -> String {
    "UTC".into()
}
fn default_soft() -> Vec<u32> {
    vec![80]
}
fn default_hard() -> u32 {
    100
}

impl BudgetSpec {
    /// Is this the spec of a template (a budget on `<kind>:*`, [`Budget::is_template`])? Listings
    /// and reports show only the budgets a template made, and the template apart, if at all.
    pub fn is_template(&self) -> bool {
        !self.scope.starts_with(SELECTOR_PREFIX) && self.scope.ends_with(":*")
    }
}

/// The budgets file: `{"budgets": [BudgetSpec, ...]}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BudgetFile {
    #[serde(default)]
    pub budgets: Vec<BudgetSpec>,
    /// Workflows (`crate::workflow`), applied after the budgets (`gov_api::apply_workflow_file`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub workflows: Vec<crate::workflow::WorkflowSpec>,
    /// Seats beside tokens (`crate::seats`), applied at start-up (`server::planning::apply_seats_file`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seats: Option<crate::seats::SeatsSpec>,
}

impl BudgetFile {
    /// Parses and validates every budget; the error names the budget and the field.
    pub fn parse(text: &str) -> Result<Vec<Budget>, String> {
        let file: BudgetFile = serde_json::from_str(text).map_err(|e| format!("budgets file: {e}"))?;
        let mut seen = std::collections::HashSet::new();
        let mut budgets = Vec::with_capacity(file.budgets.len());
        for (i, spec) in file.budgets.into_iter().enumerate() {
            let budget = Budget::from_spec(spec).map_err(|e| format!("budgets file: budgets[{i}].{e}"))?;
            if !seen.insert(budget.id.clone()) {
                return Err(format!("budgets file: budgets[{i}].id: `{}` appears twice; ids must be unique", budget.id));
            }
            budgets.push(budget);
        }
        Ok(budgets)
    }
}

/// Reads `scope` as a string, or as a selector object turned into its canonical string.
fn scope_or_selector<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Written {
        Key(String),
        Selector(BTreeMap<String, Vec<String>>),
    }
    match Written::deserialize(d).map_err(|_| {
        serde::de::Error::custom("scope: write a scope key (\"team:platform\") or a selector object ({\"team\": [\"a\", \"b\"]})")
    })? {
        Written::Key(key) => Ok(key),
        Written::Selector(map) => Selector::from_object(map).map(|s| s.to_string()).map_err(|e| serde::de::Error::custom(format!("scope: {e}"))),
    }
}

/// The most scopes one selector may name (each is an index entry on every instance).
pub const MAX_SELECTOR_IDS: usize = 1000;

/// A selector: one budget shared by a set of scopes of one kind — the teams `a`, `b` and `c`
/// (`any:team=a,b,c`), or every team's workflow of the use cases `ci` and `review`
/// (`any:use_case=ci,review`, which covers `workflow:<any team>/ci` and `.../review`).
///
/// Why one kind, and why membership is decided from a scope key alone: the gateway keeps one
/// entry per scope key of a principal's chain, shared by every principal with that key, and a
/// lease names the key it is for. A key (`team:a`) either is in the selector or is not, whoever
/// the principal is, so the slice held under it is valid for every request that reaches it. A
/// condition over several attributes (cost center *and* team) could not be told from the key, and
/// a principal's chain holds one key per kind, so a one-kind selector is matched through exactly
/// one key of a chain and charged once. ("Every team of cost center `rd`" is the budget on
/// `cost_center:rd`: a principal carries its cost center.)
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Selector {
    /// A scope kind, or `use_case`.
    pub kind: String,
    /// Sorted, no duplicates, at least one.
    pub ids: BTreeSet<String>,
}

/// The canonical string of a selector starts with this (no scope kind is named `any`).
pub const SELECTOR_PREFIX: &str = "any:";

impl Selector {
    /// Validates a selector; errors say what to write instead (the caller prefixes the field).
    pub fn new(kind: &str, ids: impl IntoIterator<Item = String>) -> Result<Selector, String> {
        if kind != "use_case" && ScopeKind::parse(kind).is_none() {
            return Err(format!(
                "`{kind}` is not a kind a selector can name; use one of org, cost_center, team, user, key, workflow, use_case, task"
            ));
        }
        let mut set = BTreeSet::new();
        for id in ids {
            if id.is_empty() || id == "*" || id.contains([',', '=', ';']) {
                return Err(format!(
                    "`{id}` cannot be selected: a selected id is not empty, not `*` (use a template `{kind}:*` or a budget on the org) and has no `,` `=` `;` (use a budget on that one scope)"
                ));
            }
            set.insert(id);
        }
        if set.is_empty() {
            return Err(format!("the selector names no {kind}; list at least one, e.g. {{\"{kind}\": [\"a\", \"b\"]}}"));
        }
        if set.len() > MAX_SELECTOR_IDS {
            return Err(format!("the selector names {} scopes; at most {MAX_SELECTOR_IDS}: split it, or budget the org or cost center", set.len()));
        }
        Ok(Selector { kind: kind.to_owned(), ids: set })
    }

    fn from_object(map: BTreeMap<String, Vec<String>>) -> Result<Selector, String> {
        let mut kinds = map.into_iter();
        match (kinds.next(), kinds.next()) {
            (Some((kind, ids)), None) => Selector::new(&kind, ids),
            (None, _) => Err("the selector is empty; name one kind and its ids, e.g. {\"team\": [\"a\", \"b\"]}".into()),
            (Some(_), Some(_)) => Err("a selector names one kind (e.g. only `team`); make one budget per kind".into()),
        }
    }

    /// Parses the canonical string `any:<kind>=<id>,<id>...`; `None` if `text` is not one.
    pub fn parse(text: &str) -> Option<Result<Selector, String>> {
        let rest = text.strip_prefix(SELECTOR_PREFIX)?;
        let Some((kind, ids)) = rest.split_once('=') else {
            return Some(Err(format!("`{text}` is not a selector; write any:<kind>=<id>,<id> (e.g. any:team=a,b)")));
        };
        Some(Selector::new(kind, ids.split(',').map(str::to_owned)))
    }

    /// Does this selector take in the scope key `key` (`team:a`, `workflow:a/ci`)?
    pub fn covers_key(&self, key: &str) -> bool {
        let Some((kind, id)) = parse_scope_key(key) else { return false };
        if self.kind == "use_case" {
            // `workflow:<team>/<use case>`; a team id may hold `/`, so every split is a candidate.
            return kind == ScopeKind::Workflow && id.match_indices('/').any(|(i, _)| self.ids.contains(&id[i + 1..]));
        }
        kind.as_str() == self.kind && self.ids.contains(id)
    }

    /// The keys this selector is indexed under ([`crate::store::book::ScopeIndex`]): its scope
    /// keys, or `use_case:<id>` for a use case (looked up from every workflow key).
    pub fn index_keys(&self) -> impl Iterator<Item = String> + '_ {
        self.ids.iter().map(|id| format!("{}:{id}", self.kind))
    }
}

impl std::fmt::Display for Selector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{SELECTOR_PREFIX}{}=", self.kind)?;
        for (i, id) in self.ids.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            f.write_str(id)?;
        }
        Ok(())
    }
}

/// Does the budget scope `scope` (a key or a selector's canonical string) cover `principal`?
/// One rule for charges, a budget's start from the ledger, forecasts and reports.
pub fn scope_covers(scope: &str, principal: &Principal) -> bool {
    match Selector::parse(scope) {
        Some(Ok(selector)) => principal.scope_keys().iter().any(|k| selector.covers_key(k)),
        Some(Err(_)) => false,
        None => principal.scope_keys().iter().any(|k| k == scope),
    }
}

/// A validated budget.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Budget {
    pub id: String,
    /// The scope key it covers, e.g. `team:platform`, or its selector's canonical string.
    pub scope: String,
    /// Set when `scope` is a selector: the budget is shared by every scope key it covers.
    pub selector: Option<Selector>,
    pub limit_micros: Micros,
    pub token_limit: Option<u64>,
    pub window: Window,
    /// Where local days turn over: `utc_offset` or `time_zone`.
    pub zone: window::Zone,
    /// Sorted ascending, at least one.
    pub soft_thresholds_pct: Vec<u32>,
    pub hard_limit_pct: u32,
    pub mode: BudgetMode,
    /// The template this budget was made from, if any.
    pub template: Option<String>,
    /// `Some` for `reserve: p99`; `None` reserves the worst case.
    pub reserve: Option<ReservePolicy>,
}

/// `reserve: p99` (crate::reserve has the rule and the bound).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReservePolicy {
    /// How far past its hard limit spend may go in one window because requests cost more than
    /// they reserved.
    pub excess_limit_micros: Micros,
    pub lookback_days: u32,
    pub min_samples: u32,
}

pub const DEFAULT_RESERVE_LOOKBACK_DAYS: u32 = 7;
pub const DEFAULT_RESERVE_MIN_SAMPLES: u32 = 20;

impl ReservePolicy {
    fn from_spec(spec: &BudgetSpec) -> Result<Option<ReservePolicy>, String> {
        let p99 = match spec.reserve.as_deref() {
            None | Some("worst_case") => false,
            Some("p99") => true,
            Some(other) => return Err(format!("reserve: `{other}` is not a reservation policy; use worst_case (the default) or p99")),
        };
        if !p99 {
            let stray = [
                ("reserve_excess_limit", spec.reserve_excess_limit.is_some()),
                ("reserve_lookback_days", spec.reserve_lookback_days.is_some()),
                ("reserve_min_samples", spec.reserve_min_samples.is_some()),
            ];
            if let Some((field, _)) = stray.iter().find(|(_, set)| *set) {
                return Err(format!("{field}: applies to `reserve: p99` only; set reserve to p99 or drop {field}"));
            }
            return Ok(None);
        }
        let excess = spec
            .reserve_excess_limit
            .as_deref()
            .ok_or_else(|| "reserve_excess_limit: required with `reserve: p99`: the dollars (e.g. \"5.00\") spend may pass the hard limit by in one window".to_owned())?;
        let excess_limit_micros = parse_decimal_scaled(excess, 6)
            .and_then(|m| Micros::try_from(m).ok())
            .ok_or_else(|| format!("reserve_excess_limit: `{excess}` is not an amount of dollars; write a non-negative decimal such as \"5.00\""))?;
        let lookback_days = spec.reserve_lookback_days.unwrap_or(DEFAULT_RESERVE_LOOKBACK_DAYS);
        if !(1..=90).contains(&lookback_days) {
            return Err(format!("reserve_lookback_days: {lookback_days} is out of range; use 1-90 (default {DEFAULT_RESERVE_LOOKBACK_DAYS})"));
        }
        let min_samples = spec.reserve_min_samples.unwrap_or(DEFAULT_RESERVE_MIN_SAMPLES);
        if !(1..=100_000).contains(&min_samples) {
            return Err(format!("reserve_min_samples: {min_samples} is out of range; use 1-100000 (default {DEFAULT_RESERVE_MIN_SAMPLES})"));
        }
        Ok(Some(ReservePolicy { excess_limit_micros, lookback_days, min_samples }))
    }
}

/// The template scope a principal's scope falls under: `user:bob` → `user:*`.
pub fn template_scope(scope: &str) -> Option<String> {
    let (kind, id) = parse_scope_key(scope)?;
    (id != "*").then(|| format!("{}:*", kind.as_str()))
}

/// Checks a budget id: what the admin URL path and the metrics label can carry unescaped.
pub fn valid_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 128 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

impl Budget {
    /// Validates a spec. Errors read `<field>: <problem and fix>`.
    pub fn from_spec(spec: BudgetSpec) -> Result<Budget, String> {
        if !valid_id(&spec.id) {
            return Err(format!("id: `{}` is not a budget id; use 1-128 of A-Z a-z 0-9 . _ -", spec.id));
        }
        let selector = Selector::parse(&spec.scope).transpose().map_err(|e| format!("scope: {e}"))?;
        if selector.is_none() && parse_scope_key(&spec.scope).is_none() {
            return Err(format!(
                "scope: `{}` is not a scope; use <kind>:<id> with kind one of org, cost_center, team, user, key, workflow, task, or a selector {{\"team\": [\"a\", \"b\"]}}",
                spec.scope
            ));
        }
        let limit_micros = parse_decimal_scaled(&spec.limit, 6)
            .and_then(|m| Micros::try_from(m).ok())
            .ok_or_else(|| format!("limit: `{}` is not an amount of dollars; write a non-negative decimal such as \"800.00\"", spec.limit))?;
        if let Some(t) = &spec.template {
            if !valid_id(t) {
                return Err(format!("template: `{t}` is not a budget id; it names the template a budget was made from"));
            }
            if spec.scope.ends_with(":*") || selector.is_some() {
                return Err(format!("template: `{}` is a template or a selector; a budget made from a template covers one scope", spec.scope));
            }
        }
        let window = Window::parse(&spec.window).map_err(|e| format!("window: {e}"))?;
        let utc_offset_minutes = window::parse_utc_offset(&spec.utc_offset).map_err(|e| format!("utc_offset: {e}"))?;
        let zone = match &spec.time_zone {
            None => window::Zone::Fixed(utc_offset_minutes),
            Some(_) if utc_offset_minutes != 0 => {
                return Err(format!(
                    "time_zone: cannot be combined with utc_offset `{}`; a budget's days turn over in one zone: keep time_zone and drop utc_offset",
                    spec.utc_offset
                ))
            }
            Some(name) => window::Zone::iana(name).map_err(|e| format!("time_zone: {e}"))?,
        };
        let reserve = ReservePolicy::from_spec(&spec)?;
        let mut soft = spec.soft_thresholds_pct;
        soft.sort_unstable();
        soft.dedup();
        if soft.is_empty() || soft.iter().any(|p| *p == 0 || *p > 1000) {
            return Err("soft_thresholds_pct: give at least one percentage between 1 and 1000 (default [80])".into());
        }
        if spec.hard_limit_pct == 0 || spec.hard_limit_pct > 1000 {
            return Err(format!("hard_limit_pct: {} is out of range; use 1-1000 (default 100)", spec.hard_limit_pct));
        }
        Ok(Budget {
            id: spec.id,
            // Canonical (sorted ids): the same selector written twice is the same budget.
            scope: selector.as_ref().map_or(spec.scope, Selector::to_string),
            selector,
            limit_micros,
            token_limit: spec.token_limit,
            window,
            zone,
            soft_thresholds_pct: soft,
            hard_limit_pct: spec.hard_limit_pct,
            mode: spec.mode,
            template: spec.template,
            reserve,
        })
    }

    /// The canonical spec (what the audit log and `GET /admin/budgets` show).
    pub fn to_spec(&self) -> BudgetSpec {
        BudgetSpec {
            id: self.id.clone(),
            scope: self.scope.clone(),
            limit: format_micros(self.limit_micros),
            token_limit: self.token_limit,
            window: self.window.to_string(),
            utc_offset: match self.zone {
                window::Zone::Fixed(minutes) => window::format_utc_offset(minutes),
                window::Zone::Iana(_) => default_offset(),
            },
            time_zone: self.zone.iana_name().map(str::to_owned),
            soft_thresholds_pct: self.soft_thresholds_pct.clone(),
            hard_limit_pct: self.hard_limit_pct,
            mode: self.mode,
            template: self.template.clone(),
            reserve: self.reserve.map(|_| "p99".to_owned()),
            reserve_excess_limit: self.reserve.map(|r| format_micros(r.excess_limit_micros)),
            reserve_lookback_days: self.reserve.map(|r| r.lookback_days),
            reserve_min_samples: self.reserve.map(|r| r.min_samples),
        }
    }

    /// A template is a budget on `<kind>:*`: it charges nobody itself, and every principal scope of
    /// that kind without a budget of its own gets a copy the first time it spends or asks for a lease.
    pub fn is_template(&self) -> bool {
        self.selector.is_none() && self.scope.ends_with(":*")
    }

    /// Does this budget cover the scope key `key` (its own key, or one its selector takes in)?
    pub fn covers_key(&self, key: &str) -> bool {
        match &self.selector {
            Some(selector) => selector.covers_key(key),
            None => self.scope == key,
        }
    }

    /// The budget this template makes for `scope` (e.g. `user:bob`): the same limits, window and
    /// mode, id `<template id>.<scope id>` (characters an id cannot carry become `_`, and then, or
    /// when too long, a hash of the scope id keeps ids of different scopes apart).
    pub fn instance_for(&self, scope: &str) -> Option<Budget> {
        let (_, id) = parse_scope_key(scope)?;
        if !self.is_template() || id == "*" {
            return None;
        }
        let clean: String = id.chars().map(|c| if c.is_ascii_alphanumeric() || "._-".contains(c) { c } else { '_' }).collect();
        let mut instance_id = format!("{}.{clean}", self.id);
        if clean != id || instance_id.len() > 128 {
            use sha2::Digest;
            let hash = sha2::Sha256::digest(id.as_bytes());
            let hex: String = hash.iter().take(4).map(|b| format!("{b:02x}")).collect();
            instance_id.truncate(128 - 9);
            instance_id = format!("{instance_id}.{hex}");
        }
        Some(Budget { id: instance_id, scope: scope.to_owned(), template: Some(self.id.clone()), ..self.clone() })
    }

    pub fn span(&self, now_ms: i64) -> window::WindowSpan {
        window::span_in(self.window, &self.zone, now_ms)
    }
}

/// A budget's figures at one moment, decided in one place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Assessment {
    /// `limit + exemptions`.
    pub effective_limit_micros: Micros,
    /// `limit * hard_limit_pct / 100 + exemptions`: spend + live slices never exceed it at a grant.
    pub hard_limit_micros: Micros,
    pub status: BudgetStatus,
}

/// Decides a budget's limits and status from its spend and active exemptions.
pub fn assess(budget: &Budget, spent: Micros, tokens: u64, exempt: Micros) -> Assessment {
    let pct = |amount: Micros, pct: u32| -> Micros {
        let v = i128::from(amount) * i128::from(pct) / 100;
        Micros::try_from(v).unwrap_or(Micros::MAX)
    };
    let effective = budget.limit_micros.saturating_add(exempt);
    let hard = pct(budget.limit_micros, budget.hard_limit_pct).saturating_add(exempt);
    let soft_pct = budget.soft_thresholds_pct.first().copied().unwrap_or(100);
    let tokens_hard = budget.token_limit.is_some_and(|t| tokens >= t);
    let tokens_soft = budget.token_limit.is_some_and(|t| u128::from(tokens) * 100 >= u128::from(t) * u128::from(soft_pct));
    let status = if spent >= hard || tokens_hard {
        BudgetStatus::Hard
    } else if spent >= pct(effective, soft_pct) || tokens_soft {
        BudgetStatus::Soft
    } else {
        BudgetStatus::Ok
    };
    Assessment { effective_limit_micros: effective, hard_limit_micros: hard, status }
}

/// An exemption as requested: extra allowance on a scope for a time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExemptionSpec {
    pub scope: String,
    /// Extra dollars, decimal string.
    pub amount: String,
    /// When it starts (`YYYY-MM-DD`, `YYYY-MM-DDTHH:MM:SSZ` or unix ms); default now.
    #[serde(default)]
    pub starts_at: Option<String>,
    /// When it ends (exclusive), same formats.
    pub ends_at: String,
    pub reason: String,
    pub approver: String,
}

/// A granted exemption. It adds `amount_micros` to the limit and the hard limit of every budget on
/// `scope` while `starts_at_ms <= now < ends_at_ms` and it is not revoked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Exemption {
    pub id: u64,
    pub scope: String,
    pub amount_micros: Micros,
    pub starts_at_ms: i64,
    pub ends_at_ms: i64,
    pub reason: String,
    pub approver: String,
    pub created_by: String,
    pub created_at_ms: i64,
    #[serde(default)]
    pub revoked_at_ms: Option<i64>,
}

impl Exemption {
    /// Validates a spec; `id` is assigned by the store.
    pub fn from_spec(spec: ExemptionSpec, created_by: &str, now_ms: i64) -> Result<Exemption, String> {
        // An exemption on a selector budget names the selector (its canonical string).
        let scope = match Selector::parse(&spec.scope) {
            Some(selector) => selector.map_err(|e| format!("scope: {e}"))?.to_string(),
            None if parse_scope_key(&spec.scope).is_some() => spec.scope,
            None => return Err(format!("scope: `{}` is not a scope; use <kind>:<id>, e.g. team:platform", spec.scope)),
        };
        let amount_micros = parse_decimal_scaled(&spec.amount, 6)
            .and_then(|m| Micros::try_from(m).ok())
            .ok_or_else(|| format!("amount: `{}` is not an amount of dollars; write a decimal such as \"100.00\"", spec.amount))?;
        let starts_at_ms = match &spec.starts_at {
            Some(t) => window::parse_time_ms(t).map_err(|e| format!("starts_at: {e}"))?,
            None => now_ms,
        };
        let ends_at_ms = window::parse_time_ms(&spec.ends_at).map_err(|e| format!("ends_at: {e}"))?;
        if ends_at_ms <= starts_at_ms {
            return Err("ends_at: must be after starts_at (an exemption needs a end in the future)".into());
        }
        if spec.reason.trim().is_empty() {
            return Err("reason: say why the exemption is granted".into());
        }
        if spec.approver.trim().is_empty() {
            return Err("approver: name who approved the exemption".into());
        }
        Ok(Exemption {
            id: 0,
            scope,
            amount_micros,
            starts_at_ms,
            ends_at_ms,
            reason: spec.reason,
            approver: spec.approver,
            created_by: created_by.into(),
            created_at_ms: now_ms,
            revoked_at_ms: None,
        })
    }

    pub fn active_at(&self, now_ms: i64) -> bool {
        self.starts_at_ms <= now_ms && now_ms < self.ends_at_ms && self.revoked_at_ms.is_none_or(|r| r > now_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(json: &str) -> BudgetSpec {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn defaults_fill_in_and_dollars_are_exact() {
        let b = Budget::from_spec(spec(r#"{"id":"p","scope":"team:platform","limit":"800.00","window":"month"}"#)).unwrap();
        assert_eq!(b.limit_micros, 800_000_000);
        assert_eq!(b.soft_thresholds_pct, [80]);
        assert_eq!(b.hard_limit_pct, 100);
        assert_eq!(b.mode, BudgetMode::Enforce);
        assert_eq!(Budget::from_spec(b.to_spec()).unwrap(), b, "spec round-trips");
        assert_eq!(serde_json::to_value(b.to_spec()).unwrap().get("time_zone"), None, "no time_zone key unless one is set");
    }

    #[test]
    fn a_template_makes_one_budget_per_scope_with_its_limits() {
        let t = Budget::from_spec(spec(r#"{"id":"user-default","scope":"user:*","limit":"20","window":"day"}"#)).unwrap();
        assert!(t.is_template());
        let bob = t.instance_for("user:bob").unwrap();
        assert_eq!((bob.id.as_str(), bob.scope.as_str(), bob.template.as_deref()), ("user-default.bob", "user:bob", Some("user-default")));
        assert_eq!((bob.limit_micros, bob.window), (t.limit_micros, t.window));
        assert!(!bob.is_template());
        assert_eq!(Budget::from_spec(bob.to_spec()).unwrap(), bob, "an instance round-trips");
        let a = t.instance_for("user:a@b.com").unwrap();
        let b = t.instance_for("user:a_b.com").unwrap();
        assert!(valid_id(&a.id) && a.id.starts_with("user-default.a_b.com."), "{}", a.id);
        assert_ne!(a.id, b.id, "scopes that clean up alike keep apart");
        assert!(valid_id(&t.instance_for(&format!("user:{}", "x".repeat(300))).unwrap().id));
        assert_eq!(bob.instance_for("user:carol"), None, "only a template makes budgets");
        assert_eq!(template_scope("user:bob").as_deref(), Some("user:*"));
        assert_eq!(template_scope("user:*"), None);
        let err = Budget::from_spec(spec(r#"{"id":"x","scope":"user:*","limit":"1","window":"day","template":"t"}"#)).unwrap_err();
        assert!(err.starts_with("template:"), "{err}");
    }

    #[test]
    fn a_selector_is_written_as_an_object_or_its_canonical_string_and_covers_keys_of_its_kind() {
        let b = Budget::from_spec(spec(r#"{"id":"ab","scope":{"team":["b","a"]},"limit":"1","window":"day"}"#)).unwrap();
        assert_eq!(b.scope, "any:team=a,b");
        assert_eq!(Budget::from_spec(b.to_spec()).unwrap(), b, "spec round-trips");
        assert!(b.covers_key("team:a") && b.covers_key("team:b") && !b.covers_key("team:c") && !b.covers_key("user:a"));
        assert!(!b.is_template());
        let uc = Selector::parse("any:use_case=ci").unwrap().unwrap();
        assert!(uc.covers_key("workflow:platform/ci") && !uc.covers_key("workflow:platform/chat") && !uc.covers_key("team:ci"));
        let p = Principal { team: Some("b".into()), ..Default::default() };
        assert!(scope_covers("any:team=a,b", &p) && scope_covers("team:b", &p) && !scope_covers("any:team=a", &p));
        let err = Budget::from_spec(spec(r#"{"id":"x","scope":"any:galaxy=a","limit":"1","window":"day"}"#)).unwrap_err();
        assert!(err.starts_with("scope:"), "{err}");
        let err = serde_json::from_str::<BudgetSpec>(r#"{"id":"x","scope":{"team":["a"],"user":["b"]},"limit":"1","window":"day"}"#).unwrap_err();
        assert!(err.to_string().starts_with("scope: a selector names one kind"), "{err}");
        let e = Exemption::from_spec(serde_json::from_str(r#"{"scope":"any:team=b,a","amount":"5","ends_at":"5000","reason":"x","approver":"y"}"#).unwrap(), "a", 0);
        assert_eq!(e.unwrap().scope, "any:team=a,b", "an exemption on a selector budget names its canonical string");
    }

    #[test]
    fn an_iana_time_zone_round_trips_under_its_canonical_name() {
        let b = Budget::from_spec(spec(r#"{"id":"p","scope":"team:p","limit":"1","window":"day","time_zone":"America/Los_Angeles"}"#)).unwrap();
        assert_eq!(b.zone.iana_name(), Some("America/Los_Angeles"));
        let s = b.to_spec();
        assert_eq!((s.utc_offset.as_str(), s.time_zone.as_deref()), ("UTC", Some("America/Los_Angeles")));
        assert_eq!(Budget::from_spec(s).unwrap(), b, "spec round-trips");
        let explicit_utc = spec(r#"{"id":"p","scope":"team:p","limit":"1","window":"day","utc_offset":"UTC","time_zone":"America/Los_Angeles"}"#);
        assert_eq!(Budget::from_spec(explicit_utc).unwrap(), b, "utc_offset at its default does not conflict");
    }

    #[test]
    fn bad_fields_are_named() {
        let check = |json: &str, field: &str| {
            let err = Budget::from_spec(spec(json)).unwrap_err();
            assert!(err.starts_with(field), "{err}");
        };
        check(r#"{"id":"a b","scope":"team:x","limit":"1","window":"day"}"#, "id:");
        check(r#"{"id":"a","scope":"galaxy:x","limit":"1","window":"day"}"#, "scope:");
        check(r#"{"id":"a","scope":"team:x","limit":"-1","window":"day"}"#, "limit:");
        check(r#"{"id":"a","scope":"team:x","limit":"1","window":"hourly"}"#, "window:");
        check(r#"{"id":"a","scope":"team:x","limit":"1","window":"day","utc_offset":"CET"}"#, "utc_offset:");
        check(r#"{"id":"a","scope":"team:x","limit":"1","window":"day","hard_limit_pct":0}"#, "hard_limit_pct:");
        check(r#"{"id":"a","scope":"team:x","limit":"1","window":"day","time_zone":"Europe/Atlantis"}"#, "time_zone:");
        check(r#"{"id":"a","scope":"team:x","limit":"1","window":"day","time_zone":"+02:00"}"#, "time_zone:");
        check(r#"{"id":"a","scope":"team:x","limit":"1","window":"day","time_zone":"Europe/Paris","utc_offset":"+01:00"}"#, "time_zone:");
        assert!(serde_json::from_str::<BudgetSpec>(r#"{"id":"a","scope":"team:x","limit":"1","window":"day","limt":"2"}"#).is_err());
    }

    #[test]
    fn status_moves_from_ok_to_soft_to_hard() {
        let mut b = Budget::from_spec(spec(r#"{"id":"p","scope":"team:p","limit":"100","window":"none","hard_limit_pct":150}"#)).unwrap();
        let status = |b: &Budget, spent: Micros, exempt: Micros| assess(b, spent * 1_000_000, 0, exempt * 1_000_000).status;
        assert_eq!(status(&b, 79, 0), BudgetStatus::Ok);
        assert_eq!(status(&b, 80, 0), BudgetStatus::Soft);
        assert_eq!(status(&b, 149, 0), BudgetStatus::Soft);
        assert_eq!(status(&b, 150, 0), BudgetStatus::Hard);
        assert_eq!(status(&b, 150, 10), BudgetStatus::Soft, "an exemption raises the hard limit");
        assert_eq!(assess(&b, 0, 0, 10_000_000).hard_limit_micros, 160_000_000);
        b.token_limit = Some(1000);
        assert_eq!(assess(&b, 0, 1000, 0).status, BudgetStatus::Hard, "the token limit binds too");
    }

    #[test]
    fn exemptions_are_validated_and_expire() {
        let ex = |json: &str| Exemption::from_spec(serde_json::from_str(json).unwrap(), "alice", 1_000);
        let e = ex(r#"{"scope":"team:p","amount":"50","ends_at":"5000","reason":"launch","approver":"cfo"}"#).unwrap();
        assert_eq!(e.amount_micros, 50_000_000);
        assert!(e.active_at(1_000) && e.active_at(4_999) && !e.active_at(5_000));
        assert!(ex(r#"{"scope":"team:p","amount":"50","ends_at":"500","reason":"x","approver":"y"}"#).is_err());
        assert!(ex(r#"{"scope":"team:p","amount":"50","ends_at":"5000","reason":" ","approver":"y"}"#).is_err());
    }
}
