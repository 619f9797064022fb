//! Budgets and exemptions: the declarative spec (file and admin API) and its validated form.
//!
//! A [`BudgetSpec`] is what people write — dollars as decimal strings, windows as words — and is
//! what the audit log records as "before" and "after". [`Budget::from_spec`] turns it into integers
//! once, with errors that name the field. [`assess`] is the one place a budget's status is decided,
//! so the lease answer, the utilization report and the metrics always agree.

use crate::window::{self, Window};
use serde::{Deserialize, Serialize};
use tollgate_core::money::{format_micros, parse_decimal_scaled, Micros};
use tollgate_core::protocol::{parse_scope_key, BudgetMode, BudgetStatus};

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
    /// A scope key, `<kind>:<id>` (`org:acme`, `team:platform`, `workflow:platform/code-review`).
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
    #[serde(default = "default_soft")]
    pub soft_thresholds_pct: Vec<u32>,
    /// Percent of `limit` at which requests are refused; may exceed 100 (a circuit breaker).
    #[serde(default = "default_hard")]
    pub hard_limit_pct: u32,
    #[serde(default)]
    pub mode: BudgetMode,
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

/// A validated budget.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Budget {
    pub id: String,
    /// The scope key it covers, e.g. `team:platform`.
    pub scope: String,
    pub limit_micros: Micros,
    pub token_limit: Option<u64>,
    pub window: Window,
    pub utc_offset_minutes: i32,
    /// Sorted ascending, at least one.
    pub soft_thresholds_pct: Vec<u32>,
    pub hard_limit_pct: u32,
    pub mode: BudgetMode,
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
        if parse_scope_key(&spec.scope).is_none() {
            return Err(format!(
                "scope: `{}` is not a scope; use <kind>:<id> with kind one of org, cost_center, team, user, key, workflow, task",
                spec.scope
            ));
        }
        let limit_micros = parse_decimal_scaled(&spec.limit, 6)
            .and_then(|m| Micros::try_from(m).ok())
            .ok_or_else(|| format!("limit: `{}` is not an amount of dollars; write a non-negative decimal such as \"800.00\"", spec.limit))?;
        let window = Window::parse(&spec.window).map_err(|e| format!("window: {e}"))?;
        let utc_offset_minutes = window::parse_utc_offset(&spec.utc_offset).map_err(|e| format!("utc_offset: {e}"))?;
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
            scope: spec.scope,
            limit_micros,
            token_limit: spec.token_limit,
            window,
            utc_offset_minutes,
            soft_thresholds_pct: soft,
            hard_limit_pct: spec.hard_limit_pct,
            mode: spec.mode,
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
            utc_offset: window::format_utc_offset(self.utc_offset_minutes),
            soft_thresholds_pct: self.soft_thresholds_pct.clone(),
            hard_limit_pct: self.hard_limit_pct,
            mode: self.mode,
        }
    }

    pub fn span(&self, now_ms: i64) -> window::WindowSpan {
        window::span(self.window, self.utc_offset_minutes, now_ms)
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
        if parse_scope_key(&spec.scope).is_none() {
            return Err(format!("scope: `{}` is not a scope; use <kind>:<id>, e.g. team:platform", spec.scope));
        }
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
            scope: spec.scope,
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
