//! Workflows as first-class objects: who owns an AI use case, what class of tool it is, what it
//! may spend, how its success is measured and when it is reviewed.
//!
//! A workflow is the `use_case` of the principal, run by one team: its caps are enforced on the
//! scope `workflow:<team>/<id>` — the team × use case key every gateway already asks leases for
//! ([`tollgate_core::protocol::Principal::scope_keys`]), so **the filter enforces the caps with no
//! change**. (There is no `use_case:<id>` scope in the gateway's chain; adding one would change what
//! every request asks the counter for.) Saving a workflow creates or updates the budgets
//! [`Workflow::cap_budgets`] — `workflow.<id>.weekly` and `workflow.<id>.monthly` — through the
//! ordinary audited budget path; removing a cap deletes its budget.
//!
//! The policy the users state is checked here, on save, with errors that name the field:
//! `team_tool` and `production_tool` need both caps; a `production_tool` needs an owner (every
//! workflow does), a review date and an exception path; a weekly cap cannot exceed the monthly one.
//! A review date in the past makes the workflow [`Workflow::overdue`] (reports and `/metrics`).

use crate::budget::{valid_id, Budget, BudgetSpec};
use serde::{Deserialize, Serialize};
use tollgate_core::money::{format_micros, parse_decimal_scaled, Micros};
use tollgate_core::protocol::BudgetMode;

/// How much a workflow matters, which decides what it must declare.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WorkflowClass {
    Experiment,
    TeamTool,
    ProductionTool,
}

impl WorkflowClass {
    pub fn as_str(self) -> &'static str {
        match self {
            WorkflowClass::Experiment => "experiment",
            WorkflowClass::TeamTool => "team_tool",
            WorkflowClass::ProductionTool => "production_tool",
        }
    }
}

/// What success means for the workflow: a sentence for people and the outcome kind that counts it
/// (`merged_pr`, `resolved_ticket`, `approved_brief` or a configured kind, see [`crate::outcome`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SuccessMetric {
    pub description: String,
    pub outcome_kind: String,
}

/// A workflow as written in the budgets file (`"workflows": [...]`) or sent to
/// `PUT /admin/workflows/{id}`.
///
/// ```json
/// {"id": "code-review", "team": "platform", "owner": "alice", "class": "production_tool",
///  "default_tier": "standard", "escalation_tier": "premium",
///  "success_metric": {"description": "PRs merged after AI review", "outcome_kind": "merged_pr"},
///  "weekly_cap": "150.00", "monthly_cap": "500.00", "review_date": "2027-03-01",
///  "exception_path": "ask #ai-budget, approver: cfo", "notes": "rolled out 2026-10"}
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkflowSpec {
    /// The principal's `use_case` (`[A-Za-z0-9._-]`, 1-128). May be omitted in a PUT.
    #[serde(default)]
    pub id: String,
    /// The team that runs it: caps apply to `workflow:<team>/<id>`.
    pub team: String,
    /// The person accountable for it (required for every class).
    #[serde(default)]
    pub owner: String,
    #[serde(deserialize_with = "class_field")]
    pub class: WorkflowClass,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_tier: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub escalation_tier: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub success_metric: Option<SuccessMetric>,
    /// Dollars per ISO week (Monday, UTC), decimal string.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weekly_cap: Option<String>,
    /// Dollars per calendar month (UTC), decimal string.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub monthly_cap: Option<String>,
    /// `enforce` (default) or `observe`: the mode of the cap budgets.
    #[serde(default, skip_serializing_if = "is_enforce")]
    pub cap_mode: BudgetMode,
    /// `YYYY-MM-DD`; from the day after, the workflow is `overdue`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub review_date: Option<String>,
    /// How someone gets more than the caps (who to ask, where).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exception_path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notes: Option<String>,
}

/// Names the field in the error (serde's own message for a bad variant does not).
fn class_field<'de, D: serde::Deserializer<'de>>(d: D) -> Result<WorkflowClass, D::Error> {
    let text = String::deserialize(d)?;
    [WorkflowClass::Experiment, WorkflowClass::TeamTool, WorkflowClass::ProductionTool]
        .into_iter()
        .find(|c| c.as_str() == text)
        .ok_or_else(|| serde::de::Error::custom(format!("class: `{text}` is not a workflow class; use experiment, team_tool or production_tool")))
}

fn is_enforce(mode: &BudgetMode) -> bool {
    *mode == BudgetMode::Enforce
}

/// A validated workflow: its canonical spec plus the figures parsed once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Workflow {
    pub spec: WorkflowSpec,
    pub weekly_cap_micros: Option<Micros>,
    pub monthly_cap_micros: Option<Micros>,
    /// Unix ms of the review date's midnight (UTC).
    pub review_at_ms: Option<i64>,
}

fn dollars(field: &str, text: &Option<String>) -> Result<Option<Micros>, String> {
    match text {
        None => Ok(None),
        Some(t) => parse_decimal_scaled(t, 6)
            .and_then(|m| Micros::try_from(m).ok())
            .filter(|m| *m > 0)
            .map(Some)
            .ok_or_else(|| format!("{field}: `{t}` is not an amount of dollars; write a positive decimal such as \"500.00\"")),
    }
}

fn text(field: &str, value: &Option<String>, what: &str) -> Result<Option<String>, String> {
    match value {
        Some(v) if v.trim().is_empty() => Err(format!("{field}: empty; {what} or leave the field out")),
        Some(v) => Ok(Some(v.trim().to_owned())),
        None => Ok(None),
    }
}

impl Workflow {
    /// Validates a spec and applies the policy. Errors read `<field>: <problem and fix>`.
    /// The success metric's outcome kind is checked by the caller against the configured kinds
    /// ([`crate::outcome::OutcomeKinds::check`]).
    pub fn from_spec(spec: WorkflowSpec) -> Result<Workflow, String> {
        if !valid_id(&spec.id) {
            return Err(format!("id: `{}` is not a workflow id; use the principal's use_case, 1-128 of A-Z a-z 0-9 . _ -", spec.id));
        }
        if !valid_id(&spec.team) {
            return Err(format!("team: `{}` is not a team id; name the team that runs the workflow (1-128 of A-Z a-z 0-9 . _ -)", spec.team));
        }
        if spec.owner.trim().is_empty() {
            return Err("owner: every workflow needs an owner; name the person accountable for it".into());
        }
        let weekly = dollars("weekly_cap", &spec.weekly_cap)?;
        let monthly = dollars("monthly_cap", &spec.monthly_cap)?;
        let class = spec.class.as_str();
        if spec.class != WorkflowClass::Experiment {
            if monthly.is_none() {
                return Err(format!("monthly_cap: a {class} needs a monthly cap before rollout; add e.g. \"monthly_cap\": \"500.00\""));
            }
            if weekly.is_none() {
                return Err(format!("weekly_cap: a {class} needs a weekly cap before rollout; add e.g. \"weekly_cap\": \"150.00\""));
            }
        }
        if let (Some(w), Some(m)) = (weekly, monthly) {
            if w > m {
                return Err(format!("weekly_cap: {} exceeds monthly_cap {}; a week cannot be allowed more than its month", format_micros(w), format_micros(m)));
            }
        }
        let review_at_ms = match &spec.review_date {
            None => None,
            Some(d) if d.len() == 10 => Some(crate::window::parse_time_ms(d).map_err(|e| format!("review_date: {e}"))?),
            Some(d) => return Err(format!("review_date: `{d}` is not a date; write YYYY-MM-DD")),
        };
        let exception_path = text("exception_path", &spec.exception_path, "say how to ask for more")?;
        if spec.class == WorkflowClass::ProductionTool {
            if review_at_ms.is_none() {
                return Err("review_date: a production_tool needs a review date (YYYY-MM-DD)".into());
            }
            if exception_path.is_none() {
                return Err("exception_path: a production_tool needs an exception path; say who approves spending past the caps and how to ask".into());
            }
        }
        if let Some(m) = &spec.success_metric {
            if m.description.trim().is_empty() {
                return Err("success_metric.description: say in a sentence what success is".into());
            }
        }
        let canonical = WorkflowSpec {
            id: spec.id,
            team: spec.team,
            owner: spec.owner.trim().to_owned(),
            class: spec.class,
            default_tier: text("default_tier", &spec.default_tier, "name a tier")?,
            escalation_tier: text("escalation_tier", &spec.escalation_tier, "name a tier")?,
            success_metric: spec.success_metric,
            weekly_cap: weekly.map(format_micros),
            monthly_cap: monthly.map(format_micros),
            cap_mode: spec.cap_mode,
            review_date: spec.review_date,
            exception_path,
            notes: spec.notes,
        };
        Ok(Workflow { spec: canonical, weekly_cap_micros: weekly, monthly_cap_micros: monthly, review_at_ms })
    }

    pub fn id(&self) -> &str {
        &self.spec.id
    }

    /// The budget scope its caps (and its spend) are on: `workflow:<team>/<id>`.
    pub fn scope(&self) -> String {
        format!("workflow:{}/{}", self.spec.team, self.spec.id)
    }

    /// True from the day after the review date (UTC) on.
    pub fn overdue(&self, now_ms: i64) -> bool {
        self.review_at_ms.is_some_and(|at| now_ms >= at + 86_400_000)
    }

    /// The budget ids a workflow's caps use (whether or not the caps are set).
    pub fn cap_budget_ids(id: &str) -> [String; 2] {
        [format!("workflow.{id}.weekly"), format!("workflow.{id}.monthly")]
    }

    /// The budgets that enforce the caps, one per cap set.
    pub fn cap_budgets(&self) -> Vec<Budget> {
        let [weekly_id, monthly_id] = Workflow::cap_budget_ids(self.id());
        let make = |id: String, cap: &Option<String>, window: &str| {
            cap.as_ref().and_then(|limit| {
                Budget::from_spec(BudgetSpec {
                    id,
                    scope: self.scope(),
                    limit: limit.clone(),
                    token_limit: None,
                    window: window.into(),
                    utc_offset: "UTC".into(),
                    time_zone: None,
                    template: None,
                    reserve: None,
                    reserve_excess_limit: None,
                    reserve_lookback_days: None,
                    reserve_min_samples: None,
                    soft_thresholds_pct: vec![80],
                    hard_limit_pct: 100,
                    mode: self.spec.cap_mode,
                })
                .ok()
            })
        };
        [make(weekly_id, &self.spec.weekly_cap, "week"), make(monthly_id, &self.spec.monthly_cap, "month")].into_iter().flatten().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(json: serde_json::Value) -> WorkflowSpec {
        serde_json::from_value(json).unwrap()
    }

    fn base() -> serde_json::Value {
        serde_json::json!({"id": "code-review", "team": "platform", "owner": "alice", "class": "production_tool",
            "weekly_cap": "150", "monthly_cap": "500", "review_date": "2027-03-01", "exception_path": "ask the cfo"})
    }

    #[test]
    fn the_policy_names_the_missing_field() {
        // (change to the valid production_tool above, the field the error must start with)
        let table: [(serde_json::Value, &str); 11] = [
            (serde_json::json!({"owner": ""}), "owner:"),
            (serde_json::json!({"owner": "  "}), "owner:"),
            (serde_json::json!({"weekly_cap": null}), "weekly_cap:"),
            (serde_json::json!({"monthly_cap": null}), "monthly_cap:"),
            (serde_json::json!({"class": "team_tool", "weekly_cap": null}), "weekly_cap:"),
            (serde_json::json!({"review_date": null}), "review_date:"),
            (serde_json::json!({"exception_path": null}), "exception_path:"),
            (serde_json::json!({"exception_path": " "}), "exception_path:"),
            (serde_json::json!({"weekly_cap": "600"}), "weekly_cap:"),
            (serde_json::json!({"review_date": "March 1st"}), "review_date:"),
            (serde_json::json!({"team": "a/b"}), "team:"),
        ];
        for (change, field) in table {
            let mut v = base();
            for (k, val) in change.as_object().unwrap() {
                if val.is_null() {
                    v.as_object_mut().unwrap().remove(k);
                } else {
                    v[k] = val.clone();
                }
            }
            let err = Workflow::from_spec(spec(v)).unwrap_err();
            assert!(err.starts_with(field), "{change}: {err}");
        }
        assert!(Workflow::from_spec(spec(base())).is_ok());
        let experiment = serde_json::json!({"id": "try", "team": "data", "owner": "bo", "class": "experiment"});
        assert!(Workflow::from_spec(spec(experiment)).is_ok(), "an experiment may go without caps");
        assert!(serde_json::from_value::<WorkflowSpec>(serde_json::json!({"id": "x", "team": "t", "owner": "o", "class": "toy"})).is_err());
        assert!(serde_json::from_value::<WorkflowSpec>(serde_json::json!({"id": "x", "team": "t", "owner": "o", "class": "experiment", "capp": 1})).is_err());
    }

    #[test]
    fn caps_become_budgets_on_the_team_use_case_scope() {
        let w = Workflow::from_spec(spec(base())).unwrap();
        let budgets = w.cap_budgets();
        let got: Vec<(&str, &str, Micros, String)> = budgets.iter().map(|b| (b.id.as_str(), b.scope.as_str(), b.limit_micros, b.window.to_string())).collect();
        assert_eq!(
            got,
            [
                ("workflow.code-review.weekly", "workflow:platform/code-review", 150_000_000, "week".to_owned()),
                ("workflow.code-review.monthly", "workflow:platform/code-review", 500_000_000, "month".to_owned()),
            ]
        );
        assert_eq!(w.spec.weekly_cap.as_deref(), Some("150.000000"), "canonical dollars");
        let p = tollgate_core::protocol::Principal { team: Some("platform".into()), use_case: Some("code-review".into()), ..Default::default() };
        assert!(p.scope_keys().contains(&w.scope()), "the gateway already asks leases on this scope");
    }

    #[test]
    fn overdue_from_the_day_after_the_review_date() {
        let w = Workflow::from_spec(spec(base())).unwrap();
        let at = |t: &str| crate::window::parse_time_ms(t).unwrap();
        assert!(!w.overdue(at("2027-03-01T23:59:59Z")), "the review day itself is not overdue");
        assert!(w.overdue(at("2027-03-02T00:00:00Z")));
    }
}
