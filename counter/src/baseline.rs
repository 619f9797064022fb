//! Baselines: "observe 60 days, then set limits at 130-150 % of the baseline".
//!
//! `GET /admin/reports/baseline?scope=team&days=60` reads the ledger (every record, whatever the
//! mode of the budgets it was charged to, so budgets in `observe` mode feed it) and gives per scope
//! value the daily spend series, its mean, p50, p95 and max, and suggested monthly limits.
//!
//! # Definitions (all integer micro-dollars)
//! - Days are UTC calendar days; the period is the `days` full days before `to` (default: the
//!   start of today by the counter's clock), so a partial today never drags the baseline down.
//!   Days without spend count as 0.
//! - `mean_micros = floor(total / days)`.
//! - `p50` / `p95`: nearest rank on the sorted daily values: the value at 1-based rank
//!   `ceil(p × days / 100)`.
//! - `baseline_monthly_micros = ceil(total × 30 / days)`: the mean day times 30.
//! - `suggested_monthly_130_micros = ceil(baseline_monthly × 130 / 100)`, same for 150: rounded
//!   up, so the suggestion never sits below 130 % / 150 %.

use crate::store::{BudgetState, GroupBy, ReportRow};
use crate::window::utc_date;
use serde::Serialize;
use std::collections::BTreeMap;
use tollgate_core::money::Micros;

pub const DAY_MS: i64 = 86_400_000;

/// The dimensions a baseline can be computed for.
pub fn parse_dimension(text: &str) -> Result<(GroupBy, Option<String>), String> {
    let (kind, value) = match text.split_once(':') {
        Some((k, v)) if !v.is_empty() => (k, Some(v.to_owned())),
        Some((k, _)) => (k, None),
        None => (text, None),
    };
    let dim = match kind {
        "team" => GroupBy::Team,
        "user" => GroupBy::User,
        "use_case" => GroupBy::UseCase,
        "model" => GroupBy::Model,
        "org" => GroupBy::Org,
        "cost_center" => GroupBy::CostCenter,
        _ => {
            return Err(format!(
                "scope: `{text}` is not a dimension; use team, user, use_case, model, org or cost_center, optionally with one value (team:platform)"
            ))
        }
    };
    Ok((dim, value.filter(|v| v != "*")))
}

/// One day of a series.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DayPoint {
    pub day: String,
    pub cost_micros: Micros,
}

/// A budget on the scope, for comparing the suggestion with what is set today.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BudgetRef {
    pub id: String,
    pub mode: String,
    pub window: String,
    pub limit_micros: Micros,
}

/// The baseline of one scope value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Baseline {
    /// `team:platform`.
    pub scope: String,
    pub value: String,
    pub total_micros: Micros,
    pub active_days: u32,
    pub mean_micros: Micros,
    pub p50_micros: Micros,
    pub p95_micros: Micros,
    pub max_micros: Micros,
    pub baseline_monthly_micros: Micros,
    pub suggested_monthly_130_micros: Micros,
    pub suggested_monthly_150_micros: Micros,
    pub budgets: Vec<BudgetRef>,
    pub series: Vec<DayPoint>,
}

fn ceil_div(a: i128, b: i128) -> i128 {
    if b <= 0 {
        return 0;
    }
    (a + b - 1).div_euclid(b)
}

fn clamp(v: i128) -> Micros {
    v.clamp(0, i128::from(Micros::MAX)) as Micros
}

/// Nearest-rank percentile of sorted values.
fn percentile(sorted: &[Micros], p: i128) -> Micros {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ceil_div(p * sorted.len() as i128, 100).max(1) as usize;
    sorted[rank.min(sorted.len()) - 1]
}

/// Computes baselines from report rows grouped by `[dim, day]` over `[from_ms, from_ms + days)`.
/// `dim_name` is the scope kind (`team`), `only` keeps one value, `budgets` are listed per scope.
pub fn compute(dim_name: &str, rows: &[ReportRow], from_ms: i64, days: u32, only: Option<&str>, budgets: &[BudgetState]) -> Vec<Baseline> {
    let day_labels: Vec<String> = (0..i64::from(days)).map(|i| utc_date((from_ms + i * DAY_MS).div_euclid(1000))).collect();
    let index: BTreeMap<&str, usize> = day_labels.iter().enumerate().map(|(i, d)| (d.as_str(), i)).collect();
    let mut per: BTreeMap<String, Vec<Micros>> = BTreeMap::new();
    for r in rows {
        let (Some(value), Some(day)) = (r.keys.first(), r.keys.get(1)) else { continue };
        if value.is_empty() || only.is_some_and(|o| o != value) {
            continue;
        }
        let Some(&i) = index.get(day.as_str()) else { continue };
        let series = per.entry(value.clone()).or_insert_with(|| vec![0; days as usize]);
        series[i] = series[i].saturating_add(r.cost_micros);
    }
    per.into_iter()
        .map(|(value, series)| {
            let total: i128 = series.iter().map(|m| i128::from(*m)).sum();
            let mut sorted = series.clone();
            sorted.sort_unstable();
            let monthly = ceil_div(total * 30, i128::from(days));
            let scope = format!("{dim_name}:{value}");
            Baseline {
                budgets: budgets
                    .iter()
                    .filter(|b| b.budget.scope == scope)
                    .map(|b| BudgetRef {
                        id: b.budget.id.clone(),
                        mode: serde_json::to_value(&b.budget.mode).ok().and_then(|v| v.as_str().map(String::from)).unwrap_or_default(),
                        window: b.budget.window.clone(),
                        limit_micros: b.effective_limit_micros,
                    })
                    .collect(),
                scope,
                total_micros: clamp(total),
                active_days: series.iter().filter(|m| **m > 0).count() as u32,
                mean_micros: clamp(total / i128::from(days.max(1))),
                p50_micros: percentile(&sorted, 50),
                p95_micros: percentile(&sorted, 95),
                max_micros: sorted.last().copied().unwrap_or(0),
                baseline_monthly_micros: clamp(monthly),
                suggested_monthly_130_micros: clamp(ceil_div(monthly * 130, 100)),
                suggested_monthly_150_micros: clamp(ceil_div(monthly * 150, 100)),
                series: day_labels.iter().zip(&series).map(|(d, m)| DayPoint { day: d.clone(), cost_micros: *m }).collect(),
                value,
            }
        })
        .collect()
}

/// CSV/table cells: one row per scope value (the series stays in the JSON).
pub fn cells(rows: &[Baseline]) -> (Vec<String>, Vec<Vec<String>>) {
    let header = [
        "scope", "total_micros", "active_days", "mean_micros", "p50_micros", "p95_micros", "max_micros", "baseline_monthly_micros",
        "suggested_monthly_130_micros", "suggested_monthly_150_micros", "budgets",
    ]
    .map(String::from)
    .to_vec();
    let cells = rows
        .iter()
        .map(|b| {
            vec![
                b.scope.clone(),
                b.total_micros.to_string(),
                b.active_days.to_string(),
                b.mean_micros.to_string(),
                b.p50_micros.to_string(),
                b.p95_micros.to_string(),
                b.max_micros.to_string(),
                b.baseline_monthly_micros.to_string(),
                b.suggested_monthly_130_micros.to_string(),
                b.suggested_monthly_150_micros.to_string(),
                b.budgets.iter().map(|r| format!("{}({})", r.id, r.mode)).collect::<Vec<_>>().join(" "),
            ]
        })
        .collect();
    (header, cells)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(value: &str, day: &str, cost: Micros) -> ReportRow {
        ReportRow {
            keys: vec![value.into(), day.into()],
            requests: 1,
            cost_micros: cost,
            input_tokens: 0,
            output_tokens: 0,
            cache_read_tokens: 0,
            cache_write_tokens: 0,
            estimated_requests: 0,
        }
    }

    #[test]
    fn statistics_and_suggestions_are_integer_and_rounded_as_documented() {
        let from = crate::window::parse_time_ms("2026-11-01").unwrap();
        // 10 days: 1..=9 dollars on days 1-9, nothing on day 10; plus noise outside the period.
        let mut rows: Vec<ReportRow> = (1..=9).map(|d| row("a", &format!("2026-11-{d:02}"), d * 1_000_000)).collect();
        rows.push(row("a", "2026-10-31", 99_000_000));
        rows.push(row("b", "2026-11-03", 1));
        rows.push(row("", "2026-11-03", 5));
        let got = compute("team", &rows, from, 10, None, &[]);
        assert_eq!(got.len(), 2, "the empty value is not a scope");
        let a = &got[0];
        assert_eq!(a.scope, "team:a");
        assert_eq!(a.series.len(), 10);
        assert_eq!((a.series[0].day.as_str(), a.series[9].cost_micros), ("2026-11-01", 0));
        assert_eq!(a.total_micros, 45_000_000);
        assert_eq!(a.active_days, 9);
        assert_eq!(a.mean_micros, 4_500_000);
        // sorted: 0,1,...,9; p50 = rank 5 = 4; p95 = rank ceil(9.5) = 10 = 9
        assert_eq!((a.p50_micros, a.p95_micros, a.max_micros), (4_000_000, 9_000_000, 9_000_000));
        assert_eq!(a.baseline_monthly_micros, 135_000_000);
        assert_eq!((a.suggested_monthly_130_micros, a.suggested_monthly_150_micros), (175_500_000, 202_500_000));
        let b = &got[1];
        // 1 micro over 10 days: monthly = ceil(30 / 10) = 3; 130 % = ceil(3.9) = 4; 150 % = ceil(4.5) = 5
        assert_eq!((b.mean_micros, b.baseline_monthly_micros, b.suggested_monthly_130_micros, b.suggested_monthly_150_micros), (0, 3, 4, 5));
        let only = compute("team", &rows, from, 10, Some("b"), &[]);
        assert_eq!(only.iter().map(|b| b.scope.as_str()).collect::<Vec<_>>(), ["team:b"]);
    }

    #[test]
    fn scopes_parse_with_or_without_a_value() {
        assert_eq!(parse_dimension("team"), Ok((GroupBy::Team, None)));
        assert_eq!(parse_dimension("use_case:chat"), Ok((GroupBy::UseCase, Some("chat".into()))));
        assert_eq!(parse_dimension("model:*"), Ok((GroupBy::Model, None)));
        assert!(parse_dimension("planet").unwrap_err().starts_with("scope:"));
    }
}
