//! Outcome reports and the monthly review: **pure functions** over spend rows, outcomes,
//! workflows, exemptions and anomaly events, so every figure and every suggested action is tested
//! with data, without a store or a clock (`now_ms` is an input).
//!
//! Spend comes from the ledger (the store's spend report grouped by team, use case, model and day:
//! [`SpendRow`]); a workflow's spend is the ledger's spend of its team × use case — exactly what its
//! cap budgets on `workflow:<team>/<id>` are charged. Money stays in integer micro-dollars; cost per
//! outcome is `spend / outcomes` rounded down; percentages are for display only.
//!
//! # The suggested action (the review's rule, in order; the first that holds wins)
//! | rule | action | when |
//! | --- | --- | --- |
//! | `retire.idle` | retire | no spend and no outcome in the month |
//! | `retire.experiment_overdue` | retire | an `experiment` past its review date with no outcome in the month |
//! | `retire.no_output` | retire | spend in the month and the month before, and no outcome in either |
//! | `cap.uncapped` | cap | spend in the month and no monthly cap |
//! | `cap.pressure` | cap | spend reached the monthly cap, or the month had an exemption or an anomaly on the workflow |
//! | `reroute.cost_per_outcome_up` | reroute | cost per outcome rose by more than 25 % over the month before |
//! | `keep.default` | keep | none of the above |
//!
//! The anomaly events are an input (scope, day, amount): the server reads them from the
//! notifications events log (`kind = anomaly`, `gov_api::review_report`). An anomaly belongs to a
//! workflow when its scope is the workflow's own (`workflow:<team>/<id>`) or its use case
//! (`use_case:<id>`, the scope anomaly rules on the `use_case` dimension report), and its day is in
//! the month.

use crate::budget::Exemption;
use crate::outcome::Outcome;
use crate::store::BudgetState;
use crate::window::{civil_from_days, days_from_civil, parse_time_ms, DAY_SECS};
use crate::workflow::{Workflow, WorkflowClass};
use serde::Serialize;
use std::collections::BTreeMap;
use tollgate_core::money::{format_micros, Micros};

/// Ledger spend of one (team, use case, model, UTC day).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpendRow {
    pub team: String,
    pub use_case: String,
    pub model: String,
    /// `YYYY-MM-DD`.
    pub day: String,
    pub cost_micros: Micros,
}

/// An anomaly event from the events log (§2): daily spend on `scope` far above its baseline.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AnomalyEvent {
    pub scope: String,
    /// `YYYY-MM-DD`.
    pub day: String,
    pub amount_micros: Micros,
}

/// An exemption with the use case its request named (if it came from a request).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReviewExemption {
    pub exemption: Exemption,
    pub use_case: Option<String>,
}

/// A calendar month (UTC).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Month {
    pub year: i64,
    pub month: u32,
}

impl Month {
    /// `YYYY-MM`.
    pub fn parse(text: &str) -> Result<Month, String> {
        let bad = || format!("`{text}` is not a month; write YYYY-MM (e.g. 2026-11)");
        let (y, m) = text.split_once('-').ok_or_else(bad)?;
        if y.len() != 4 || m.len() != 2 {
            return Err(bad());
        }
        let month = Month { year: y.parse().map_err(|_| bad())?, month: m.parse().map_err(|_| bad())? };
        if !(1..=12).contains(&month.month) {
            return Err(bad());
        }
        Ok(month)
    }

    pub fn of_day(day: &str) -> Option<Month> {
        Month::parse(day.get(..7)?).ok()
    }

    pub fn previous(self) -> Month {
        if self.month == 1 { Month { year: self.year - 1, month: 12 } } else { Month { year: self.year, month: self.month - 1 } }
    }

    pub fn next(self) -> Month {
        if self.month == 12 { Month { year: self.year + 1, month: 1 } } else { Month { year: self.year, month: self.month + 1 } }
    }

    /// Days since the epoch of the 1st.
    pub fn first_day(self) -> i64 {
        days_from_civil(self.year, self.month, 1)
    }

    /// `[from, to)` in unix ms.
    pub fn range_ms(self) -> (i64, i64) {
        (self.first_day() * DAY_SECS * 1000, self.next().first_day() * DAY_SECS * 1000)
    }

    pub fn label(self) -> String {
        format!("{:04}-{:02}", self.year, self.month)
    }
}

impl std::fmt::Display for Month {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.label())
    }
}

fn day_number(day: &str) -> Option<i64> {
    parse_time_ms(day).ok().map(|ms| ms / 1000 / DAY_SECS)
}

fn date_of(days: i64) -> String {
    let (y, m, d) = civil_from_days(days);
    format!("{y:04}-{m:02}-{d:02}")
}

/// Monday of the ISO week holding `days` (1970-01-01 was a Thursday).
fn monday_of(days: i64) -> i64 {
    days - (days + 3).rem_euclid(7)
}

fn per_outcome(spend: Micros, outcomes: u64) -> Option<Micros> {
    (outcomes > 0).then(|| spend / Micros::try_from(outcomes).unwrap_or(Micros::MAX))
}

/// `(now - before) / before` in percent, one decimal; `None` without a base.
pub fn change_pct(before: Micros, now: Micros) -> Option<f64> {
    (before > 0).then(|| ((now - before) as f64 * 1000.0 / before as f64).round() / 10.0)
}

fn share_pct(part: Micros, total: Micros) -> f64 {
    if total <= 0 { 0.0 } else { (part as f64 * 1000.0 / total as f64).round() / 10.0 }
}

/// A dimension of the cost-per-outcome report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OutcomeDim {
    Team,
    UseCase,
    Month,
}

impl OutcomeDim {
    pub fn as_str(self) -> &'static str {
        match self {
            OutcomeDim::Team => "team",
            OutcomeDim::UseCase => "use_case",
            OutcomeDim::Month => "month",
        }
    }

    pub fn parse_list(text: &str) -> Result<Vec<OutcomeDim>, String> {
        let mut out = Vec::new();
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let d = [OutcomeDim::Team, OutcomeDim::UseCase, OutcomeDim::Month]
                .into_iter()
                .find(|d| d.as_str() == part)
                .ok_or_else(|| format!("group_by: `{part}` is not a dimension of this report; use any of team, use_case, month"))?;
            if !out.contains(&d) {
                out.push(d);
            }
        }
        Ok(out)
    }
}

/// One row of the cost-per-outcome report.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CostPerOutcomeRow {
    pub keys: Vec<String>,
    pub spend_micros: Micros,
    pub outcomes: u64,
    /// `None` when there was no outcome (the cost of nothing is not a number).
    pub cost_per_outcome_micros: Option<Micros>,
}

/// Spend and outcomes grouped by `group_by`; an outcome counts when its `kind` matches (if given).
pub fn cost_per_outcome(spend: &[SpendRow], outcomes: &[Outcome], group_by: &[OutcomeDim], kind: Option<&str>) -> Vec<CostPerOutcomeRow> {
    let mut groups: BTreeMap<Vec<String>, (Micros, u64)> = BTreeMap::new();
    for r in spend {
        let keys = group_by
            .iter()
            .map(|d| match d {
                OutcomeDim::Team => r.team.clone(),
                OutcomeDim::UseCase => r.use_case.clone(),
                OutcomeDim::Month => r.day.get(..7).unwrap_or("").to_owned(),
            })
            .collect();
        let g = groups.entry(keys).or_default();
        g.0 = g.0.saturating_add(r.cost_micros);
    }
    for o in outcomes.iter().filter(|o| kind.is_none_or(|k| o.kind == k)) {
        let keys = group_by
            .iter()
            .map(|d| match d {
                OutcomeDim::Team => o.team.clone().unwrap_or_default(),
                OutcomeDim::UseCase => o.use_case.clone().unwrap_or_default(),
                OutcomeDim::Month => crate::window::utc_date(o.at_ms / 1000)[..7].to_owned(),
            })
            .collect();
        groups.entry(keys).or_default().1 += 1;
    }
    groups
        .into_iter()
        .map(|(keys, (spend_micros, outcomes))| CostPerOutcomeRow { keys, spend_micros, outcomes, cost_per_outcome_micros: per_outcome(spend_micros, outcomes) })
        .collect()
}

/// Periods of the trend report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Period {
    /// ISO weeks, labelled by their Monday.
    Week,
    Month,
}

/// One period of spend vs output.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TrendRow {
    pub period: String,
    pub spend_micros: Micros,
    pub outcomes: u64,
    pub cost_per_outcome_micros: Option<Micros>,
    /// Change over the previous row, percent (one decimal).
    pub spend_change_pct: Option<f64>,
    pub outcomes_change_pct: Option<f64>,
}

/// Spend trend vs output trend, oldest period first. Periods with neither spend nor outcomes
/// between two that have some are listed (with zeros), so a gap is visible.
pub fn trend(spend: &[SpendRow], outcomes: &[Outcome], period: Period) -> Vec<TrendRow> {
    let key = |days: i64| match period {
        Period::Week => monday_of(days),
        Period::Month => {
            let (y, m, _) = civil_from_days(days);
            days_from_civil(y, m, 1)
        }
    };
    let mut by: BTreeMap<i64, (Micros, u64)> = BTreeMap::new();
    for r in spend {
        if let Some(d) = day_number(&r.day) {
            let e = by.entry(key(d)).or_default();
            e.0 = e.0.saturating_add(r.cost_micros);
        }
    }
    for o in outcomes {
        by.entry(key(o.at_ms.div_euclid(1000 * DAY_SECS))).or_default().1 += 1;
    }
    let (Some(&first), Some(&last)) = (by.keys().next(), by.keys().next_back()) else { return Vec::new() };
    let mut rows = Vec::new();
    let mut at = first;
    let mut prev: Option<(Micros, u64)> = None;
    while at <= last {
        let (s, o) = by.get(&at).copied().unwrap_or_default();
        let label = match period {
            Period::Week => date_of(at),
            Period::Month => date_of(at)[..7].to_owned(),
        };
        rows.push(TrendRow {
            period: label,
            spend_micros: s,
            outcomes: o,
            cost_per_outcome_micros: per_outcome(s, o),
            spend_change_pct: prev.and_then(|p| change_pct(p.0, s)),
            outcomes_change_pct: prev.and_then(|p| change_pct(i64::try_from(p.1).unwrap_or(i64::MAX), i64::try_from(o).unwrap_or(i64::MAX))),
        });
        prev = Some((s, o));
        at = match period {
            Period::Week => at + 7,
            Period::Month => {
                let (y, m, _) = civil_from_days(at);
                Month { year: y, month: m }.next().first_day()
            }
        };
    }
    rows
}

/// One model's part of a use case's spend.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ModelShare {
    pub model: String,
    pub spend_micros: Micros,
    pub share_pct: f64,
}

/// Share of spend per (routed) model within each use case, biggest first.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ModelMixRow {
    pub use_case: String,
    pub spend_micros: Micros,
    pub models: Vec<ModelShare>,
}

fn shares(by_model: BTreeMap<String, Micros>) -> (Micros, Vec<ModelShare>) {
    let total = by_model.values().fold(0 as Micros, |a, b| a.saturating_add(*b));
    let mut models: Vec<ModelShare> =
        by_model.into_iter().map(|(model, spend_micros)| ModelShare { share_pct: share_pct(spend_micros, total), model, spend_micros }).collect();
    models.sort_by(|a, b| b.spend_micros.cmp(&a.spend_micros).then_with(|| a.model.cmp(&b.model)));
    (total, models)
}

pub fn model_mix(spend: &[SpendRow]) -> Vec<ModelMixRow> {
    let mut by: BTreeMap<String, BTreeMap<String, Micros>> = BTreeMap::new();
    for r in spend {
        let m = by.entry(r.use_case.clone()).or_default().entry(r.model.clone()).or_default();
        *m = m.saturating_add(r.cost_micros);
    }
    by.into_iter()
        .map(|(use_case, models)| {
            let (spend_micros, models) = shares(models);
            ModelMixRow { use_case, spend_micros, models }
        })
        .collect()
}

/// The team a budget belongs to: `team:<t>` and `workflow:<t>/<use case>` scopes.
pub fn budget_team(scope: &str) -> Option<&str> {
    scope.strip_prefix("team:").or_else(|| scope.strip_prefix("workflow:").and_then(|w| w.split('/').next()))
}

/// One team's budgets, for "budget utilization by team".
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TeamUtilization {
    pub team: String,
    pub budgets: Vec<TeamBudget>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TeamBudget {
    pub budget: String,
    pub scope: String,
    pub window: String,
    pub spent_micros: Micros,
    pub limit_micros: Micros,
    pub utilization_pct: f64,
    pub status: tollgate_core::protocol::BudgetStatus,
}

pub fn team_utilization(budgets: &[BudgetState]) -> Vec<TeamUtilization> {
    let mut by: BTreeMap<String, Vec<TeamBudget>> = BTreeMap::new();
    for b in budgets {
        let Some(team) = budget_team(&b.budget.scope) else { continue };
        by.entry(team.to_owned()).or_default().push(TeamBudget {
            budget: b.budget.id.clone(),
            scope: b.budget.scope.clone(),
            window: b.budget.window.clone(),
            spent_micros: b.spent_micros,
            limit_micros: b.effective_limit_micros,
            utilization_pct: (b.utilization() * 1000.0).round() / 10.0,
            status: b.status,
        });
    }
    by.into_iter().map(|(team, budgets)| TeamUtilization { team, budgets }).collect()
}

/// The review's suggestion.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    Keep,
    Cap,
    Reroute,
    Retire,
}

/// Inputs of [`review`]. Spend and outcomes must cover the month and the month before.
pub struct ReviewInput<'a> {
    pub month: Month,
    pub now_ms: i64,
    pub workflows: &'a [Workflow],
    pub spend: &'a [SpendRow],
    pub outcomes: &'a [Outcome],
    pub exemptions: &'a [ReviewExemption],
    /// From the events log (§2): every anomaly event whose day may fall in the month.
    pub anomalies: &'a [AnomalyEvent],
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WeekSpend {
    /// The Monday of the ISO week (may be in the month before).
    pub week: String,
    /// Spend on the days of that week that fall in the month.
    pub spend_micros: Micros,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ExemptionInMonth {
    pub id: u64,
    pub scope: String,
    pub amount_micros: Micros,
    pub starts_at_ms: i64,
    pub ends_at_ms: i64,
    pub reason: String,
    pub approver: String,
}

/// One workflow's monthly review.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WorkflowReview {
    pub workflow: String,
    pub team: String,
    pub owner: String,
    pub class: WorkflowClass,
    pub weekly_cap_micros: Option<Micros>,
    pub monthly_cap_micros: Option<Micros>,
    pub spend_micros: Micros,
    pub previous_spend_micros: Micros,
    pub weekly: Vec<WeekSpend>,
    /// Outcomes of the workflow's success-metric kind (all kinds if it names none).
    pub outcome_kind: Option<String>,
    pub outcomes: u64,
    pub previous_outcomes: u64,
    pub cost_per_outcome_micros: Option<Micros>,
    pub previous_cost_per_outcome_micros: Option<Micros>,
    pub cost_per_outcome_change_pct: Option<f64>,
    /// The three models with the most spend in the month.
    pub top_models: Vec<ModelShare>,
    pub exemptions: Vec<ExemptionInMonth>,
    pub anomalies: Vec<AnomalyEvent>,
    pub review_date: Option<String>,
    pub overdue: bool,
    pub action: Action,
    /// The rule that produced the action (see the module docs).
    pub rule: &'static str,
    pub reason: String,
}

/// The monthly review of every workflow (sorted by id).
pub fn review(input: &ReviewInput<'_>) -> Vec<WorkflowReview> {
    let (from_ms, to_ms) = input.month.range_ms();
    let prev = input.month.previous();
    let (first, next_first) = (input.month.first_day(), input.month.next().first_day());
    let mut out: Vec<WorkflowReview> = input.workflows.iter().map(|w| review_one(input, w, prev, (first, next_first), (from_ms, to_ms))).collect();
    out.sort_by(|a, b| a.workflow.cmp(&b.workflow));
    out
}

fn review_one(input: &ReviewInput<'_>, w: &Workflow, prev: Month, (first, next_first): (i64, i64), (from_ms, to_ms): (i64, i64)) -> WorkflowReview {
    let spec = &w.spec;
    let mine = |r: &&SpendRow| r.team == spec.team && r.use_case == spec.id;
    let (mut spend, mut previous_spend) = (0 as Micros, 0 as Micros);
    let mut weeks: BTreeMap<i64, Micros> = BTreeMap::new();
    let mut models: BTreeMap<String, Micros> = BTreeMap::new();
    for r in input.spend.iter().filter(mine) {
        let Some(day) = day_number(&r.day) else { continue };
        if (first..next_first).contains(&day) {
            spend = spend.saturating_add(r.cost_micros);
            let wk = weeks.entry(monday_of(day)).or_default();
            *wk = wk.saturating_add(r.cost_micros);
            let m = models.entry(r.model.clone()).or_default();
            *m = m.saturating_add(r.cost_micros);
        } else if Month::of_day(&r.day) == Some(prev) {
            previous_spend = previous_spend.saturating_add(r.cost_micros);
        }
    }
    // Every week of the month is listed, spent in or not.
    let mut monday = monday_of(first);
    while monday < next_first {
        weeks.entry(monday).or_default();
        monday += 7;
    }
    let weekly = weeks.into_iter().map(|(d, spend_micros)| WeekSpend { week: date_of(d), spend_micros }).collect();

    let outcome_kind = spec.success_metric.as_ref().map(|m| m.outcome_kind.clone());
    let counts = |o: &&Outcome| {
        o.use_case.as_deref() == Some(spec.id.as_str())
            && o.team.as_deref().is_none_or(|t| t == spec.team)
            && outcome_kind.as_deref().is_none_or(|k| o.kind == k)
    };
    let (prev_from, _) = prev.range_ms();
    let outcomes = input.outcomes.iter().filter(counts).filter(|o| (from_ms..to_ms).contains(&o.at_ms)).count() as u64;
    let previous_outcomes = input.outcomes.iter().filter(counts).filter(|o| (prev_from..from_ms).contains(&o.at_ms)).count() as u64;
    let cpo = per_outcome(spend, outcomes);
    let prev_cpo = per_outcome(previous_spend, previous_outcomes);
    let cpo_change = match (prev_cpo, cpo) {
        (Some(p), Some(c)) => change_pct(p, c),
        _ => None,
    };
    let (_, mut top_models) = shares(models);
    top_models.truncate(3);

    let scope = w.scope();
    let use_case_scope = format!("use_case:{}", spec.id);
    let exemptions: Vec<ExemptionInMonth> = input
        .exemptions
        .iter()
        .filter(|e| e.exemption.scope == scope || e.use_case.as_deref() == Some(spec.id.as_str()))
        .filter(|e| {
            let x = &e.exemption;
            let end = x.revoked_at_ms.map_or(x.ends_at_ms, |r| r.min(x.ends_at_ms));
            x.starts_at_ms < to_ms && end > from_ms && end > x.starts_at_ms
        })
        .map(|e| ExemptionInMonth {
            id: e.exemption.id,
            scope: e.exemption.scope.clone(),
            amount_micros: e.exemption.amount_micros,
            starts_at_ms: e.exemption.starts_at_ms,
            ends_at_ms: e.exemption.ends_at_ms,
            reason: e.exemption.reason.clone(),
            approver: e.exemption.approver.clone(),
        })
        .collect();
    let anomalies: Vec<AnomalyEvent> = input
        .anomalies
        .iter()
        .filter(|a| (a.scope == scope || a.scope == use_case_scope) && day_number(&a.day).is_some_and(|d| (first..next_first).contains(&d)))
        .cloned()
        .collect();
    let overdue = w.overdue(input.now_ms);

    let (action, rule, reason) = if spend == 0 && outcomes == 0 {
        (Action::Retire, "retire.idle", "no spend and no outcome this month: nobody uses it".to_owned())
    } else if spec.class == WorkflowClass::Experiment && overdue && outcomes == 0 {
        (Action::Retire, "retire.experiment_overdue", format!("an experiment past its review date ({}) with no outcome this month", spec.review_date.as_deref().unwrap_or("?")))
    } else if spend > 0 && outcomes == 0 && previous_spend > 0 && previous_outcomes == 0 {
        (Action::Retire, "retire.no_output", format!("spent {} this month and {} the month before with no outcome in either", format_micros(spend), format_micros(previous_spend)))
    } else if spend > 0 && w.monthly_cap_micros.is_none() {
        (Action::Cap, "cap.uncapped", format!("spent {} with no monthly cap; set one", format_micros(spend)))
    } else if let Some(reason) = pressure(spend, w.monthly_cap_micros, exemptions.len(), anomalies.len()) {
        (Action::Cap, "cap.pressure", reason)
    } else if cpo_change.is_some_and(|c| c > 25.0) {
        let top = top_models.first().map(|m| format!("; {} takes {:.1}% of its spend", m.model, m.share_pct)).unwrap_or_default();
        (Action::Reroute, "reroute.cost_per_outcome_up", format!("cost per outcome rose {:.1}% over the month before{top}: try a cheaper tier or model", cpo_change.unwrap_or(0.0)))
    } else {
        (Action::Keep, "keep.default", "within its cap, producing outcomes at a steady cost".to_owned())
    };

    WorkflowReview {
        workflow: spec.id.clone(),
        team: spec.team.clone(),
        owner: spec.owner.clone(),
        class: spec.class,
        weekly_cap_micros: w.weekly_cap_micros,
        monthly_cap_micros: w.monthly_cap_micros,
        spend_micros: spend,
        previous_spend_micros: previous_spend,
        weekly,
        outcome_kind,
        outcomes,
        previous_outcomes,
        cost_per_outcome_micros: cpo,
        previous_cost_per_outcome_micros: prev_cpo,
        cost_per_outcome_change_pct: cpo_change,
        top_models,
        exemptions,
        anomalies,
        review_date: spec.review_date.clone(),
        overdue,
        action,
        rule,
        reason,
    }
}

fn pressure(spend: Micros, cap: Option<Micros>, exemptions: usize, anomalies: usize) -> Option<String> {
    let mut why = Vec::new();
    if let Some(cap) = cap.filter(|c| spend >= *c) {
        why.push(format!("spend {} reached the monthly cap {}", format_micros(spend), format_micros(cap)));
    }
    if exemptions > 0 {
        why.push(format!("{exemptions} exemption(s) this month"));
    }
    if anomalies > 0 {
        why.push(format!("{anomalies} anomaly day(s) this month"));
    }
    (!why.is_empty()).then(|| format!("{}: review the cap", why.join(", ")))
}

/// The review as CSV cells (one row per workflow) — the finance export.
pub fn review_cells(rows: &[WorkflowReview]) -> (Vec<String>, Vec<Vec<String>>) {
    let header = [
        "workflow", "team", "owner", "class", "weekly_cap_usd", "monthly_cap_usd", "spend_usd", "previous_spend_usd", "weekly_spend",
        "outcome_kind", "outcomes", "previous_outcomes", "cost_per_outcome_usd", "previous_cost_per_outcome_usd",
        "cost_per_outcome_change_pct", "top_models", "exemptions", "exemption_usd", "anomalies", "review_date", "overdue", "action", "rule", "reason",
    ]
    .map(String::from)
    .to_vec();
    let usd = |m: Option<Micros>| m.map(format_micros).unwrap_or_default();
    let cells = rows
        .iter()
        .map(|r| {
            vec![
                r.workflow.clone(),
                r.team.clone(),
                r.owner.clone(),
                r.class.as_str().into(),
                usd(r.weekly_cap_micros),
                usd(r.monthly_cap_micros),
                format_micros(r.spend_micros),
                format_micros(r.previous_spend_micros),
                r.weekly.iter().map(|w| format!("{}:{}", w.week, format_micros(w.spend_micros))).collect::<Vec<_>>().join(";"),
                r.outcome_kind.clone().unwrap_or_default(),
                r.outcomes.to_string(),
                r.previous_outcomes.to_string(),
                usd(r.cost_per_outcome_micros),
                usd(r.previous_cost_per_outcome_micros),
                r.cost_per_outcome_change_pct.map(|c| format!("{c:.1}")).unwrap_or_default(),
                r.top_models.iter().map(|m| format!("{}:{:.1}%", m.model, m.share_pct)).collect::<Vec<_>>().join(";"),
                r.exemptions.len().to_string(),
                format_micros(r.exemptions.iter().fold(0 as Micros, |a, e| a.saturating_add(e.amount_micros))),
                r.anomalies.len().to_string(),
                r.review_date.clone().unwrap_or_default(),
                r.overdue.to_string(),
                serde_json::to_value(r.action).ok().and_then(|v| v.as_str().map(String::from)).unwrap_or_default(),
                r.rule.into(),
                r.reason.clone(),
            ]
        })
        .collect();
    (header, cells)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workflow::WorkflowSpec;

    const M: Micros = 1_000_000;

    fn workflow(json: serde_json::Value) -> Workflow {
        let mut base = serde_json::json!({"id": "code-review", "team": "platform", "owner": "alice", "class": "team_tool",
            "weekly_cap": "100", "monthly_cap": "300", "success_metric": {"description": "merged PRs", "outcome_kind": "merged_pr"}});
        for (k, v) in json.as_object().unwrap() {
            if v.is_null() {
                base.as_object_mut().unwrap().remove(k);
            } else {
                base[k] = v.clone();
            }
        }
        Workflow::from_spec(serde_json::from_value::<WorkflowSpec>(base).unwrap()).unwrap()
    }

    fn spend(day: &str, model: &str, dollars: Micros) -> SpendRow {
        SpendRow { team: "platform".into(), use_case: "code-review".into(), model: model.into(), day: day.into(), cost_micros: dollars * M }
    }

    fn outcome(id: &str, day: &str) -> Outcome {
        Outcome {
            id: id.into(),
            kind: "merged_pr".into(),
            team: Some("platform".into()),
            user: None,
            use_case: Some("code-review".into()),
            task_id: None,
            at_ms: parse_time_ms(day).unwrap() + 3_600_000,
            url: None,
            source: "github".into(),
            recorded_at_ms: 0,
        }
    }

    fn outcomes(n: usize, day: &str) -> Vec<Outcome> {
        (0..n).map(|i| outcome(&format!("{day}-{i}"), day)).collect()
    }

    struct Case {
        name: &'static str,
        workflow: serde_json::Value,
        spend: Vec<SpendRow>,
        outcomes: Vec<Outcome>,
        exemptions: Vec<ReviewExemption>,
        anomalies: Vec<AnomalyEvent>,
        rule: &'static str,
    }

    fn exemption(scope: &str, use_case: Option<&str>, from: &str, to: &str) -> ReviewExemption {
        ReviewExemption {
            exemption: Exemption {
                id: 7,
                scope: scope.into(),
                amount_micros: 50 * M,
                starts_at_ms: parse_time_ms(from).unwrap(),
                ends_at_ms: parse_time_ms(to).unwrap(),
                reason: "launch".into(),
                approver: "avery".into(),
                created_by: "avery".into(),
                created_at_ms: 0,
                revoked_at_ms: None,
            },
            use_case: use_case.map(String::from),
        }
    }

    #[test]
    fn the_suggested_action_follows_the_documented_rules_in_order() {
        let steady = || vec![spend("2026-10-10", "gpt-4o", 100), spend("2026-11-10", "gpt-4o", 100)];
        let both_months = || [outcomes(10, "2026-10-12"), outcomes(10, "2026-11-12")].concat();
        let cases = vec![
            Case { name: "idle", workflow: serde_json::json!({}), spend: vec![], outcomes: vec![], exemptions: vec![], anomalies: vec![], rule: "retire.idle" },
            Case {
                name: "an overdue experiment without output",
                workflow: serde_json::json!({"class": "experiment", "review_date": "2026-11-15"}),
                spend: vec![spend("2026-11-03", "gpt-4o", 5)],
                outcomes: vec![],
                exemptions: vec![],
                anomalies: vec![],
                rule: "retire.experiment_overdue",
            },
            Case { name: "two months of spend, no output", workflow: serde_json::json!({}), spend: steady(), outcomes: vec![], exemptions: vec![], anomalies: vec![], rule: "retire.no_output" },
            Case {
                name: "an experiment spending without a cap",
                workflow: serde_json::json!({"class": "experiment", "weekly_cap": null, "monthly_cap": null}),
                spend: steady(),
                outcomes: both_months(),
                exemptions: vec![],
                anomalies: vec![],
                rule: "cap.uncapped",
            },
            Case {
                name: "at the monthly cap",
                workflow: serde_json::json!({"monthly_cap": "100"}),
                spend: steady(),
                outcomes: both_months(),
                exemptions: vec![],
                anomalies: vec![],
                rule: "cap.pressure",
            },
            Case {
                name: "an exemption in the month (by use case)",
                workflow: serde_json::json!({}),
                spend: steady(),
                outcomes: both_months(),
                exemptions: vec![exemption("team:platform", Some("code-review"), "2026-11-20", "2026-11-25")],
                anomalies: vec![],
                rule: "cap.pressure",
            },
            Case {
                name: "an anomaly on the workflow's scope",
                workflow: serde_json::json!({}),
                spend: steady(),
                outcomes: both_months(),
                exemptions: vec![],
                anomalies: vec![AnomalyEvent { scope: "workflow:platform/code-review".into(), day: "2026-11-10".into(), amount_micros: 90 * M }],
                rule: "cap.pressure",
            },
            Case {
                name: "cost per outcome up 100%",
                workflow: serde_json::json!({}),
                spend: steady(),
                outcomes: [outcomes(10, "2026-10-12"), outcomes(5, "2026-11-12")].concat(),
                exemptions: vec![],
                anomalies: vec![],
                rule: "reroute.cost_per_outcome_up",
            },
            Case {
                name: "steady, with noise that is not its own",
                workflow: serde_json::json!({}),
                spend: steady(),
                outcomes: both_months(),
                exemptions: vec![
                    exemption("team:data", None, "2026-11-20", "2026-11-25"),
                    exemption("workflow:platform/code-review", None, "2026-09-01", "2026-10-01"),
                ],
                anomalies: vec![AnomalyEvent { scope: "workflow:platform/code-review".into(), day: "2026-10-30".into(), amount_micros: 90 * M }],
                rule: "keep.default",
            },
        ];
        for case in cases {
            let workflows = [workflow(case.workflow)];
            let input = ReviewInput {
                month: Month::parse("2026-11").unwrap(),
                now_ms: parse_time_ms("2026-12-01").unwrap(),
                workflows: &workflows,
                spend: &case.spend,
                outcomes: &case.outcomes,
                exemptions: &case.exemptions,
                anomalies: &case.anomalies,
            };
            let r = review(&input);
            assert_eq!(r[0].rule, case.rule, "{}: {}", case.name, r[0].reason);
        }
    }

    #[test]
    fn the_review_reports_spend_weeks_outcomes_and_models_of_the_month() {
        let workflows = [workflow(serde_json::json!({"review_date": "2026-11-15"}))];
        let mut rows = vec![
            spend("2026-10-31", "gpt-4o", 40),
            spend("2026-11-01", "gpt-4o", 30), // a Sunday: ISO week of Monday 2026-10-26
            spend("2026-11-02", "claude", 10),
            spend("2026-11-30", "gpt-4o-mini", 20),
        ];
        rows.push(SpendRow { team: "data".into(), ..spend("2026-11-02", "gpt-4o", 1000) });
        let outs = [outcomes(2, "2026-10-20"), outcomes(4, "2026-11-05"), vec![Outcome { kind: "resolved_ticket".into(), ..outcome("t", "2026-11-05") }]].concat();
        let input = ReviewInput {
            month: Month::parse("2026-11").unwrap(),
            now_ms: parse_time_ms("2026-12-01").unwrap(),
            workflows: &workflows,
            spend: &rows,
            outcomes: &outs,
            exemptions: &[],
            anomalies: &[],
        };
        let r = &review(&input)[0];
        assert_eq!((r.spend_micros, r.previous_spend_micros), (60 * M, 40 * M), "only platform × code-review, by month");
        let weeks: Vec<(&str, Micros)> = r.weekly.iter().map(|w| (w.week.as_str(), w.spend_micros / M)).collect();
        assert_eq!(weeks, [("2026-10-26", 30), ("2026-11-02", 10), ("2026-11-09", 0), ("2026-11-16", 0), ("2026-11-23", 0), ("2026-11-30", 20)]);
        assert_eq!((r.outcomes, r.previous_outcomes), (4, 2), "only the success metric's kind counts");
        assert_eq!((r.cost_per_outcome_micros, r.previous_cost_per_outcome_micros), (Some(15 * M), Some(20 * M)));
        assert_eq!(r.cost_per_outcome_change_pct, Some(-25.0));
        let top: Vec<(&str, f64)> = r.top_models.iter().map(|m| (m.model.as_str(), m.share_pct)).collect();
        assert_eq!(top, [("gpt-4o", 50.0), ("gpt-4o-mini", 33.3), ("claude", 16.7)]);
        assert!(r.overdue);
        let (header, cells) = review_cells(&[r.clone()]);
        assert_eq!(header.len(), cells[0].len());
        assert_eq!(cells[0][8], "2026-10-26:30.000000;2026-11-02:10.000000;2026-11-09:0.000000;2026-11-16:0.000000;2026-11-23:0.000000;2026-11-30:20.000000");
    }

    #[test]
    fn cost_per_outcome_trend_and_model_mix() {
        let rows = vec![spend("2026-10-10", "gpt-4o", 100), spend("2026-11-10", "gpt-4o", 90), spend("2026-11-11", "claude", 30)];
        let outs = [outcomes(4, "2026-10-12"), outcomes(2, "2026-11-12")].concat();
        let cpo = cost_per_outcome(&rows, &outs, &[OutcomeDim::Team, OutcomeDim::Month], Some("merged_pr"));
        let got: Vec<(Vec<String>, Micros, u64, Option<Micros>)> = cpo.into_iter().map(|r| (r.keys, r.spend_micros / M, r.outcomes, r.cost_per_outcome_micros.map(|c| c / M))).collect();
        assert_eq!(got, [(vec!["platform".into(), "2026-10".into()], 100, 4, Some(25)), (vec!["platform".into(), "2026-11".into()], 120, 2, Some(60))]);
        assert_eq!(cost_per_outcome(&rows, &outs, &[], Some("resolved_ticket"))[0].cost_per_outcome_micros, None, "no outcome: no number");

        let t = trend(&rows, &outs, Period::Month);
        assert_eq!(t.len(), 2);
        assert_eq!((t[1].spend_change_pct, t[1].outcomes_change_pct), (Some(20.0), Some(-50.0)));
        let weeks = trend(&rows, &outs, Period::Week);
        assert_eq!(weeks.first().map(|w| w.period.as_str()), Some("2026-10-05"));
        assert_eq!(weeks.len(), 6, "gap weeks are listed: {weeks:?}");

        let mix = model_mix(&rows);
        let shares: Vec<(&str, f64)> = mix[0].models.iter().map(|m| (m.model.as_str(), m.share_pct)).collect();
        assert_eq!(shares, [("gpt-4o", 86.4), ("claude", 13.6)]);
        assert_eq!(budget_team("workflow:platform/code-review"), Some("platform"));
        assert_eq!(budget_team("org:acme"), None);
    }

    #[test]
    fn months_parse_and_roll() {
        let m = Month::parse("2026-01").unwrap();
        assert_eq!(m.previous().label(), "2025-12");
        assert_eq!(Month::parse("2026-12").unwrap().next().label(), "2027-01");
        assert_eq!(m.range_ms(), (parse_time_ms("2026-01-01").unwrap(), parse_time_ms("2026-02-01").unwrap()));
        for bad in ["2026-13", "2026-1", "26-01", "soon"] {
            assert!(Month::parse(bad).is_err(), "{bad}");
        }
    }
}
