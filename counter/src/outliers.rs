//! Outliers, not rankings: the runs (task ids), workflow days and days whose cost is far above
//! **their own** baseline, each with what explains it.
//!
//! Why not a "top spenders" list: a ranking by spend points at the people doing the most work with
//! the tools (the users' article 002: "inspect outliers, not rank people"); it invites cutting the
//! heaviest users instead of the wasteful runs. An outlier is measured against its own kind — a
//! run against the other runs of the same workflow, a workflow's day against that workflow's
//! other days, a day against the other days — so a team that always spends a lot is normal, and a
//! run that cost ten times its siblings shows up whoever started it. No answer here names a user
//! or sorts by cost: rows come by kind, then time, then id.
//!
//! # Definitions (integer micro-dollars)
//! - A **run** is the records of one task id; its baseline group is the runs of the same workflow
//!   (`team/use_case`) in the period. A **workflow day** is a workflow's spend on one UTC day; its
//!   group is that workflow's days with spend. A **day** is all spend on one UTC day; its group is
//!   the period's days with spend.
//! - Per group with at least `min_samples` members: `median` (lower middle of the sorted costs),
//!   `MAD` = median of `|cost − median|`, floored at `max(ceil(median / 20), 1)` so a group of
//!   identical costs does not flag every cent above it; `threshold = median + k × MAD` (`k` in
//!   tenths, rounded up). A member is an outlier when `cost > threshold`.
//! - Explanation: requests, failed requests (status 0 or ≥ 400 — the retries the ledger can see),
//!   the four token counts, and the model mix (cost and requests per routed model); for runs and
//!   workflow days also the group's median requests, so "10× the usual number of calls" reads off.

use serde::Serialize;
use std::collections::BTreeMap;
use tollgate_core::money::Micros;
use tollgate_core::protocol::UsageRecord;

const DAY_MS: i64 = 86_400_000;

/// One model's share of an outlier.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ModelShare {
    pub model: String,
    pub requests: u64,
    pub cost_micros: Micros,
}

/// What an outlier is made of.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Explanation {
    pub requests: u64,
    pub failed_requests: u64,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cache_read_tokens: u64,
    pub cache_write_tokens: u64,
    /// Sorted by model name.
    pub models: Vec<ModelShare>,
    /// The group's median request count (runs, workflow days).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub baseline_median_requests: Option<u64>,
}

/// The group an outlier was compared with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BaselineStats {
    pub samples: usize,
    pub median_micros: Micros,
    pub mad_micros: Micros,
    pub threshold_micros: Micros,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Outlier {
    /// `run`, `workflow_day` or `day`.
    pub kind: &'static str,
    /// Task id, `<team>/<use_case>@<day>`, or the day.
    pub id: String,
    /// `<team>/<use_case>` for runs and workflow days.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub workflow: Option<String>,
    /// UTC day (for a run: the day it started).
    pub day: String,
    pub cost_micros: Micros,
    /// `cost / median` in percent (floor); `None` when the median is 0.
    pub pct_of_median: Option<u64>,
    pub baseline: BaselineStats,
    pub explanation: Explanation,
}

/// The knobs: `k` in tenths (30 = 3.0), `min_samples` per group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settings {
    pub k_tenths: u32,
    pub min_samples: usize,
}

#[derive(Default)]
struct Acc {
    cost: Micros,
    first_ms: i64,
    exp: Explanation,
    models: BTreeMap<String, (u64, Micros)>,
}

impl Acc {
    fn add(&mut self, r: &UsageRecord) {
        if self.exp.requests == 0 || r.started_at_ms < self.first_ms {
            self.first_ms = r.started_at_ms;
        }
        self.cost = self.cost.saturating_add(r.cost_micros);
        let e = &mut self.exp;
        e.requests += 1;
        if r.status == 0 || r.status >= 400 {
            e.failed_requests += 1;
        }
        e.input_tokens += r.tokens.input;
        e.output_tokens += r.tokens.output;
        e.cache_read_tokens += r.tokens.cache_read;
        e.cache_write_tokens += r.tokens.cache_write;
        let m = self.models.entry(r.routed_model.clone()).or_default();
        m.0 += 1;
        m.1 = m.1.saturating_add(r.cost_micros);
    }

    fn explanation(&self, baseline_median_requests: Option<u64>) -> Explanation {
        let mut e = self.exp.clone();
        e.models = self.models.iter().map(|(m, (n, c))| ModelShare { model: m.clone(), requests: *n, cost_micros: *c }).collect();
        e.baseline_median_requests = baseline_median_requests;
        e
    }
}

fn median<T: Copy + Ord>(sorted: &[T]) -> Option<T> {
    (!sorted.is_empty()).then(|| sorted[(sorted.len() - 1) / 2])
}

/// `(median, MAD, threshold)` of a group's costs, or `None` below `min_samples`.
pub fn stats(costs: &[Micros], s: Settings) -> Option<BaselineStats> {
    if costs.len() < s.min_samples.max(1) {
        return None;
    }
    let mut sorted = costs.to_vec();
    sorted.sort_unstable();
    let med = median(&sorted)?;
    let mut dev: Vec<Micros> = sorted.iter().map(|c| (c - med).abs()).collect();
    dev.sort_unstable();
    let mad = median(&dev)?.max((med + 19) / 20).max(1);
    let threshold = i128::from(med) + (i128::from(mad) * i128::from(s.k_tenths) + 9) / 10;
    Some(BaselineStats { samples: costs.len(), median_micros: med, mad_micros: mad, threshold_micros: threshold.min(i128::from(Micros::MAX)) as Micros })
}

fn day_label(ms: i64) -> String {
    crate::window::utc_date(ms.div_euclid(1000))
}

fn workflow_of(r: &UsageRecord) -> Option<String> {
    match (r.principal.team.as_deref(), r.principal.use_case.as_deref()) {
        (Some(t), Some(u)) if !t.is_empty() && !u.is_empty() => Some(format!("{t}/{u}")),
        _ => None,
    }
}

/// Flags the outliers among `records` (one period of the ledger). Rows: runs, then workflow days,
/// then days; within a kind by day, then id.
pub fn find(records: &[UsageRecord], s: Settings) -> Vec<Outlier> {
    let mut runs: BTreeMap<String, (Option<String>, Acc)> = BTreeMap::new();
    let mut wf_days: BTreeMap<(String, i64), Acc> = BTreeMap::new();
    let mut days: BTreeMap<i64, Acc> = BTreeMap::new();
    for r in records {
        let day = r.finished_at_ms.div_euclid(DAY_MS);
        let wf = workflow_of(r);
        if let Some(task) = r.principal.task.as_deref().filter(|t| !t.is_empty()) {
            let run = runs.entry(task.to_owned()).or_insert_with(|| (wf.clone(), Acc::default()));
            run.1.add(r);
        }
        if let Some(w) = &wf {
            wf_days.entry((w.clone(), day)).or_default().add(r);
        }
        days.entry(day).or_default().add(r);
    }
    let mut out = Vec::new();
    let flag = |kind: &'static str, id: String, workflow: Option<String>, day: String, acc: &Acc, base: &BaselineStats, med_req: Option<u64>| Outlier {
        kind,
        id,
        workflow,
        day,
        cost_micros: acc.cost,
        pct_of_median: (base.median_micros > 0).then(|| (i128::from(acc.cost) * 100 / i128::from(base.median_micros)) as u64),
        baseline: base.clone(),
        explanation: acc.explanation(med_req),
    };
    // Runs, grouped by workflow (runs without one form the group "").
    let mut groups: BTreeMap<String, Vec<(&String, &Acc)>> = BTreeMap::new();
    for (task, (wf, acc)) in &runs {
        groups.entry(wf.clone().unwrap_or_default()).or_default().push((task, acc));
    }
    let mut found = Vec::new();
    for (wf, members) in &groups {
        let costs: Vec<Micros> = members.iter().map(|(_, a)| a.cost).collect();
        let Some(base) = stats(&costs, s) else { continue };
        let mut reqs: Vec<u64> = members.iter().map(|(_, a)| a.exp.requests).collect();
        reqs.sort_unstable();
        for (task, acc) in members.iter().filter(|(_, a)| a.cost > base.threshold_micros) {
            found.push(flag("run", (*task).clone(), (!wf.is_empty()).then(|| wf.clone()), day_label(acc.first_ms), acc, &base, median(&reqs)));
        }
    }
    found.sort_by(|a, b| a.day.cmp(&b.day).then_with(|| a.id.cmp(&b.id)));
    out.extend(found);
    // Workflow days.
    let mut by_wf: BTreeMap<&String, Vec<(i64, &Acc)>> = BTreeMap::new();
    for ((wf, day), acc) in &wf_days {
        by_wf.entry(wf).or_default().push((*day, acc));
    }
    let mut found = Vec::new();
    for (wf, members) in by_wf {
        let costs: Vec<Micros> = members.iter().map(|(_, a)| a.cost).collect();
        let Some(base) = stats(&costs, s) else { continue };
        let mut reqs: Vec<u64> = members.iter().map(|(_, a)| a.exp.requests).collect();
        reqs.sort_unstable();
        for (day, acc) in members.iter().filter(|(_, a)| a.cost > base.threshold_micros) {
            let d = day_label(day * DAY_MS);
            found.push(flag("workflow_day", format!("{wf}@{d}"), Some(wf.clone()), d, acc, &base, median(&reqs)));
        }
    }
    found.sort_by(|a, b| a.day.cmp(&b.day).then_with(|| a.id.cmp(&b.id)));
    out.extend(found);
    // Days.
    let costs: Vec<Micros> = days.values().map(|a| a.cost).collect();
    if let Some(base) = stats(&costs, s) {
        for (day, acc) in days.iter().filter(|(_, a)| a.cost > base.threshold_micros) {
            let d = day_label(day * DAY_MS);
            out.push(flag("day", d.clone(), None, d, acc, &base, None));
        }
    }
    out
}

/// CSV/table cells: one row per outlier.
pub fn cells(rows: &[Outlier]) -> (Vec<String>, Vec<Vec<String>>) {
    let header = [
        "kind", "id", "workflow", "day", "cost_micros", "median_micros", "threshold_micros", "pct_of_median", "requests", "failed_requests", "input_tokens",
        "output_tokens", "models",
    ]
    .map(String::from)
    .to_vec();
    let cells = rows
        .iter()
        .map(|o| {
            vec![
                o.kind.to_owned(),
                o.id.clone(),
                o.workflow.clone().unwrap_or_default(),
                o.day.clone(),
                o.cost_micros.to_string(),
                o.baseline.median_micros.to_string(),
                o.baseline.threshold_micros.to_string(),
                o.pct_of_median.map(|p| p.to_string()).unwrap_or_default(),
                o.explanation.requests.to_string(),
                o.explanation.failed_requests.to_string(),
                o.explanation.input_tokens.to_string(),
                o.explanation.output_tokens.to_string(),
                o.explanation.models.iter().map(|m| format!("{}:{}", m.model, m.cost_micros)).collect::<Vec<_>>().join(" "),
            ]
        })
        .collect();
    (header, cells)
}

/// Parses `k` (`3`, `2.5`; 0.5 to 100) into tenths.
pub fn parse_k(text: &str) -> Result<u32, String> {
    tollgate_core::money::parse_decimal_scaled(text, 1)
        .and_then(|v| u32::try_from(v).ok())
        .filter(|v| (5..=1000).contains(v))
        .ok_or_else(|| format!("k: `{text}` is not a factor between 0.5 and 100 (one decimal, e.g. 3 or 2.5)"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tollgate_core::protocol::{Principal, Tokens};

    fn rec(id: &str, task: Option<&str>, use_case: &str, day: i64, cost: Micros, model: &str, status: u16) -> UsageRecord {
        UsageRecord {
            id: id.into(),
            principal: Principal { team: Some("platform".into()), use_case: Some(use_case.into()), task: task.map(String::from), ..Principal::default() },
            dialect: "openai".into(),
            requested_model: model.into(),
            routed_model: model.into(),
            tokens: Tokens { input: 1000, output: 100, ..Tokens::default() },
            cost_micros: cost,
            status,
            estimated: false,
            started_at_ms: day * DAY_MS + 1000,
            finished_at_ms: day * DAY_MS + 2000,
            p99_reservations: Vec::new(),
        }
    }

    const S: Settings = Settings { k_tenths: 30, min_samples: 5 };

    #[test]
    fn median_and_mad_are_robust_and_floored() {
        // 10,11,12,13,100: median 12, deviations 2,1,0,1,88 -> MAD 1, floored to ceil(12/20) = 1.
        let b = stats(&[10, 11, 12, 13, 100], S).unwrap();
        assert_eq!((b.median_micros, b.mad_micros, b.threshold_micros), (12, 1, 15));
        // Identical costs: MAD 0 floored at 5 % of the median, so 3 MAD = 15 % above it.
        let b = stats(&[1000; 6], S).unwrap();
        assert_eq!((b.mad_micros, b.threshold_micros), (50, 1150));
        assert_eq!(stats(&[1, 2, 3, 4], S), None, "fewer than min_samples: no baseline, no outlier");
    }

    #[test]
    fn a_run_far_above_its_workflows_runs_is_flagged_with_what_explains_it() {
        let mut records = Vec::new();
        for i in 0..6 {
            records.push(rec(&format!("r{i}"), Some(&format!("t{i}")), "ci", 20_400 + i, 100_000 + i * 1000, "gpt-4o-mini", 200));
        }
        // t9: 8 calls, 3 of them failed, on a dearer model: 40x its siblings.
        for j in 0..8 {
            let (model, status) = if j < 3 { ("gpt-4o", 500) } else { ("gpt-4o", 200) };
            records.push(rec(&format!("x{j}"), Some("t9"), "ci", 20_405, 500_000, model, status));
        }
        let out = find(&records, S);
        let runs: Vec<&Outlier> = out.iter().filter(|o| o.kind == "run").collect();
        assert_eq!(runs.len(), 1, "{out:#?}");
        let run = runs[0];
        assert_eq!((run.id.as_str(), run.workflow.as_deref(), run.cost_micros), ("t9", Some("platform/ci"), 4_000_000));
        assert_eq!(run.baseline.median_micros, 103_000);
        assert_eq!(run.pct_of_median, Some(3883));
        assert_eq!((run.explanation.requests, run.explanation.failed_requests, run.explanation.baseline_median_requests), (8, 3, Some(1)));
        assert_eq!(run.explanation.models, vec![ModelShare { model: "gpt-4o".into(), requests: 8, cost_micros: 4_000_000 }]);
        assert_eq!(run.explanation.input_tokens, 8000);
        // Its day is also far above the workflow's other days.
        assert!(out.iter().any(|o| o.kind == "workflow_day" && o.id == "platform/ci@2025-11-13"), "{out:#?}");
        assert!(out.iter().all(|o| o.kind != "run" || o.id == "t9"), "siblings within 3 MAD are not outliers");
    }
}
