//! Forecasts: where a budget's (or a workflow's) spend will stand at the end of its window, and
//! when it reaches its hard limit, at the current pace.
//!
//! Why this method: a flat "last 7 days / 7 per day" pace over-projects a Friday-to-Sunday stretch
//! for a team that works Monday to Friday, and under-projects the Monday after; month-end
//! projections taken mid-week carry that error. So the **level** is the trailing week (what the
//! scope spends now) and the **shape** is the weekday profile of the trailing four weeks:
//!
//! ```text
//! history   = spend per local day of the 28 full days before today (days without spend are 0)
//! level L   = sum of the last 7 of those days
//! W[d]      = sum of the 4 days with weekday d in the 28 (d = Monday..Sunday)
//! pace[d]   = floor(L × W[d] / ΣW)          micro-dollars per day of weekday d (0 when ΣW = 0)
//! ```
//!
//! Over a full week the pace sums to the trailing week, so a week-long horizon equals the flat
//! method; the weekday profile decides what a partial week adds. The projection integrates the
//! pace from now to the window's end (`resets_at`), each local day weighted by the part of it still
//! ahead (integer, floor): `projected_end = spent + Σ pace[weekday] × remaining_ms_of_day / day_length_ms`.
//! The hard limit is reached at the first instant the running sum gets there (ceil to the
//! millisecond, reported as unix seconds and its local date); `None` when it does not within the
//! window (or within 366 days for a `none` window, whose `projected_end` is `None`). A `rolling:N`
//! window is projected to its next turnover without taking out the day that drops off (an upper
//! bound). A `task:` scope has no day history in the grouped ledger: its pace is 0.
//!
//! **Local days.** "Day" is a day of the budget's own calendar: its `time_zone` (IANA, with DST) or
//! `utc_offset`, the same days its window turns over on ([`crate::window`]). A team in Los Angeles
//! that stops at 18:00 spends, in UTC days, on Tuesday to Saturday; counted in UTC its Monday would
//! look idle and its Saturday busy, and a projection made on Sunday would add Saturday's pace.
//! On a DST change the local day is 23 or 25 hours long; it is still one day of the profile, and
//! the part of it still ahead is measured against its real length (1 h of a 25-hour day is 1/25 of
//! its pace). How the days are read: the ledger is grouped by the scope kinds and the **local
//! date** of each record, one grouped read per distinct zone among the budgets
//! ([`crate::store::ReportQuery::day_zone`]; SQLite turns the zone's offsets over the period into
//! the date expression, Redis dates each record as it scans). Rejected: grouping by UTC hour and
//! re-bucketing (zones at :30 and :45 offsets, and `utc_offset`s at any minute, do not start
//! their days on a UTC hour), and one read per local day (29 reads, each a scan of the ledger on
//! Redis). Workflows have no zone: their month and days are UTC.
//!
//! Error on a replayed history: see `replayed_history_error_is_measured_against_the_flat_method`
//! below and docs/counter.md ("Forecasts") for the figures.

use crate::budget::Selector;
use crate::store::{BudgetState, GroupBy, ReportQuery, ReportRow, Store, StoreResult};
use std::collections::HashMap;
use crate::window::{civil_from_days, days_from_civil, parse_time_ms, Zone};
use crate::workflow::Workflow;
use serde::Serialize;
use tollgate_core::money::Micros;
use tollgate_core::protocol::Principal;

pub const DAY_MS: i64 = 86_400_000;
/// Days of history read for the weekday profile.
pub const PROFILE_DAYS: i64 = 28;
/// How far a `none` window (a balance) is projected.
pub const BALANCE_HORIZON_DAYS: i64 = 366;
pub const METHOD: &str = "weekday_profile_28d_level_7d";

/// The grouping the forecasts read from the ledger: every scope kind a budget can be on (but
/// task), then the local day (in the query's `day_zone`).
pub const GROUPING: [GroupBy; 7] = [GroupBy::Org, GroupBy::CostCenter, GroupBy::Team, GroupBy::User, GroupBy::Key, GroupBy::UseCase, GroupBy::Day];

/// Monday = 0 ... Sunday = 6 of a day number (days since 1970-01-01, a Thursday).
pub fn weekday(day: i64) -> usize {
    (day + 3).rem_euclid(7) as usize
}

/// Micro-dollars per day, by weekday (Monday first).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Pace {
    pub per_weekday: [Micros; 7],
    /// The level: the trailing 7 days' spend.
    pub trailing_7d_micros: Micros,
}

impl Pace {
    /// From `history[i]` = spend of day `first_day + i` (consecutive days, oldest first; the last
    /// [`PROFILE_DAYS`] count for the profile, the last 7 for the level).
    pub fn from_history(history: &[Micros], first_day: i64) -> Pace {
        let n = history.len();
        let start = n.saturating_sub(PROFILE_DAYS as usize);
        let mut w = [0i128; 7];
        for (i, m) in history.iter().enumerate().skip(start) {
            w[weekday(first_day + i as i64)] += i128::from(*m);
        }
        let level: i128 = history.iter().skip(n.saturating_sub(7)).map(|m| i128::from(*m)).sum();
        let total: i128 = w.iter().sum();
        let mut per_weekday = [0; 7];
        if total > 0 {
            for (p, wd) in per_weekday.iter_mut().zip(w) {
                *p = clamp(level * wd / total);
            }
        }
        Pace { per_weekday, trailing_7d_micros: clamp(level) }
    }

    /// The flat method (for comparison): `L / 7` every day.
    pub fn flat(history: &[Micros]) -> Pace {
        let level: i128 = history.iter().skip(history.len().saturating_sub(7)).map(|m| i128::from(*m)).sum();
        Pace { per_weekday: [clamp(level / 7); 7], trailing_7d_micros: clamp(level) }
    }

    pub fn on_day(&self, day: i64) -> Micros {
        self.per_weekday[weekday(day)]
    }
}

fn clamp(v: i128) -> Micros {
    v.clamp(0, i128::from(Micros::MAX)) as Micros
}

/// What the pace says about one scope's window.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Projection {
    /// Spend at the window's end: what is spent plus the pace until then. `None` for a balance.
    pub projected_end_micros: Option<Micros>,
    /// Unix seconds at which the running sum reaches the hard limit; `None` if not before the
    /// window ends (or no hard limit).
    pub hard_limit_at: Option<i64>,
    /// Local date of `hard_limit_at` (the budget's zone; UTC for a workflow).
    pub hard_limit_day: Option<String>,
    /// True when `hard_limit_at` is before the window's end and the hard limit is not yet reached.
    pub projected_to_exceed: bool,
}

/// Integrates `pace` over `[now_ms, end_ms)` (`end_ms = None`: a balance, [`BALANCE_HORIZON_DAYS`]),
/// day by local day of `zone`: each day's pace spread evenly over its real length (23, 24 or 25
/// hours).
pub fn project(pace: &Pace, spent: Micros, hard_limit: Option<Micros>, now_ms: i64, end_ms: Option<i64>, zone: &Zone) -> Projection {
    let horizon = end_ms.unwrap_or(now_ms.saturating_add(BALANCE_HORIZON_DAYS * DAY_MS));
    let mut total = i128::from(spent);
    let already = hard_limit.is_some_and(|h| total >= i128::from(h));
    let mut hit: Option<i64> = already.then_some(now_ms);
    let mut t = now_ms;
    while t < horizon {
        let day = zone.local_day(t.div_euclid(1000));
        let (start, end) = (zone.day_start(day).saturating_mul(1000), zone.day_start(day + 1).saturating_mul(1000));
        // A day that does not hold `t` can only come from a date outside the tz database's range:
        // fall back to a UTC-length day from `t`, so the loop always moves on.
        let (len, day_end) = if start <= t && t < end { (end - start, end) } else { (DAY_MS, t.saturating_add(DAY_MS)) };
        let seg_end = day_end.min(horizon);
        let rate = i128::from(pace.on_day(day));
        let add = rate * i128::from(seg_end - t) / i128::from(len);
        if let (None, Some(h)) = (hit, hard_limit) {
            let need = i128::from(h) - total;
            if rate > 0 && need <= add {
                let ms = (need * i128::from(len) + rate - 1) / rate;
                hit = Some(t + ms as i64);
            }
        }
        total += add;
        t = seg_end;
    }
    Projection {
        projected_end_micros: end_ms.map(|_| clamp(total)),
        hard_limit_at: hit.map(|ms| ms.div_euclid(1000)),
        hard_limit_day: hit.map(|ms| zone.local_date(ms.div_euclid(1000))),
        projected_to_exceed: !already && hit.is_some(),
    }
}

/// A budget's forecast (a row of `GET /admin/reports/forecast`, and the `forecast` of the
/// utilization report).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BudgetForecast {
    pub budget: String,
    pub scope: String,
    pub window: String,
    pub spent_micros: Micros,
    pub hard_limit_micros: Micros,
    pub resets_at: Option<i64>,
    pub trailing_7d_micros: Micros,
    /// Pace of today's weekday, micro-dollars per day.
    pub pace_today_micros: Micros,
    #[serde(flatten)]
    pub projection: Projection,
}

/// A workflow's forecast over the current UTC month (its monthly cap, if any, is the limit).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WorkflowForecast {
    pub workflow: String,
    pub scope: String,
    pub month_to_date_micros: Micros,
    pub monthly_cap_micros: Option<Micros>,
    pub month_end: i64,
    pub trailing_7d_micros: Micros,
    pub pace_today_micros: Micros,
    #[serde(flatten)]
    pub projection: Projection,
}

/// Everything the forecast endpoint, the utilization report, `/metrics` and the notify rule show.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Forecasts {
    pub method: &'static str,
    pub budgets: Vec<BudgetForecast>,
    pub workflows: Vec<WorkflowForecast>,
}

/// Rows grouped by [`GROUPING`], each read once: its day and the scope keys of the principal its
/// keys rebuild (matched like a charge, [`crate::budget::scope_covers`]), and the rows by scope
/// key. A budget on a scope key then reads only its own rows; a selector budget checks each row's
/// keys. (Scanning every row for every budget, as this once did, took minutes for the 5,000
/// budgets a `user:*` template makes.)
pub struct DayIndex {
    /// `(day number, scope keys, cost)` per row with a readable date.
    rows: Vec<(i64, Vec<String>, Micros)>,
    by_key: HashMap<String, Vec<usize>>,
}

impl DayIndex {
    pub fn new(rows: &[ReportRow]) -> DayIndex {
        let mut index = DayIndex { rows: Vec::with_capacity(rows.len()), by_key: HashMap::new() };
        for r in rows {
            let Some(day) = r.keys.get(6).and_then(|d| parse_time_ms(d).ok()).map(|ms| ms.div_euclid(DAY_MS)) else { continue };
            let at = |i: usize| r.keys.get(i).filter(|v| !v.is_empty()).cloned();
            let principal = Principal { org: at(0), cost_center: at(1), team: at(2), user: at(3), key_id: at(4), use_case: at(5), ..Principal::default() };
            let keys = principal.scope_keys();
            for k in &keys {
                index.by_key.entry(k.clone()).or_default().push(index.rows.len());
            }
            index.rows.push((day, keys, r.cost_micros));
        }
        index
    }

    /// Daily spend of `scope` (a scope key or a selector) for days `[first_day, first_day + n)`.
    pub fn series(&self, scope: &str, first_day: i64, n: usize) -> Vec<Micros> {
        let mut out = vec![0 as Micros; n];
        let add = |(day, _, cost): &(i64, Vec<String>, Micros)| {
            if let Some(slot) = usize::try_from(day - first_day).ok().and_then(|i| out.get_mut(i)) {
                *slot = slot.saturating_add(*cost);
            }
        };
        match Selector::parse(scope) {
            Some(Ok(selector)) => self.rows.iter().filter(|(_, keys, _)| keys.iter().any(|k| selector.covers_key(k))).for_each(add),
            Some(Err(_)) => {}
            None => self.by_key.get(scope).into_iter().flatten().filter_map(|&i| self.rows.get(i)).for_each(add),
        }
        out
    }
}

/// Daily spend of `scope` for days `[first_day, first_day + n)`, from rows grouped by [`GROUPING`].
pub fn daily_series(rows: &[ReportRow], scope: &str, first_day: i64, n: usize) -> Vec<Micros> {
    DayIndex::new(rows).series(scope, first_day, n)
}

/// Ledger rows grouped by [`GROUPING`] with the days of one zone ([`query`]).
#[derive(Debug, Clone)]
pub struct ZoneRows {
    pub zone: Zone,
    pub rows: Vec<ReportRow>,
}

/// The first local day (day number) of the ledger span [`compute`] needs at `now_ms` in `zone`: the
/// profile's 28 days, or the first of the month if earlier (workflows' month to date, in UTC).
pub fn first_day(zone: &Zone, now_ms: i64) -> i64 {
    let today = zone.local_day(now_ms.div_euclid(1000));
    let (y, m, _) = civil_from_days(today);
    (today - PROFILE_DAYS).min(days_from_civil(y, m, 1))
}

/// The ledger read behind the forecasts of budgets in `zone`: its local days from
/// [`first_day`] to today, grouped by [`GROUPING`] with local dates.
pub fn query(zone: &Zone, now_ms: i64) -> ReportQuery {
    let today = zone.local_day(now_ms.div_euclid(1000));
    ReportQuery {
        group_by: GROUPING.to_vec(),
        from_ms: zone.day_start(first_day(zone, now_ms)).saturating_mul(1000),
        to_ms: zone.day_start(today + 1).saturating_mul(1000),
        day_zone: zone.clone(),
    }
}

/// The zone whose days a budget counts (its window's: `time_zone` or `utc_offset`).
pub fn zone_of(state: &BudgetState) -> Zone {
    // A stored spec always validates; were it not to, UTC days are the old behaviour.
    crate::budget::Budget::from_spec(state.budget.clone()).map_or(Zone::UTC, |b| b.zone)
}

/// One scope's daily series in `zone`: `(today, first day, spend of each day first..=today)`,
/// from the [`DayIndex`] of each zone's rows (in `ledger`'s order; a zone not there spent nothing).
fn local_series(ledger: &[ZoneRows], indexes: &[DayIndex], zone: &Zone, scope: &str, now_ms: i64) -> (i64, i64, Vec<Micros>) {
    let today = zone.local_day(now_ms.div_euclid(1000));
    let first = first_day(zone, now_ms);
    let n = (today - first + 1) as usize;
    let series = ledger.iter().position(|l| &l.zone == zone).and_then(|i| indexes.get(i)).map_or_else(|| vec![0; n], |ix| ix.series(scope, first, n));
    (today, first, series)
}

/// The pace from a [`local_series`]: the 28 full days before today.
fn pace_of(today: i64, first: i64, series: &[Micros]) -> Pace {
    let from = usize::try_from(today - PROFILE_DAYS - first).unwrap_or(0);
    Pace::from_history(series.get(from..series.len().saturating_sub(1)).unwrap_or(&[]), today - PROFILE_DAYS)
}

/// Computes every forecast from budget states, workflows and the ledger rows of each zone among
/// them ([`ZoneRows`]: a budget's in its own zone, [`zone_of`]; workflows' in UTC). A zone
/// missing from `ledger` reads as no spend.
pub fn compute(states: &[BudgetState], workflows: &[Workflow], ledger: &[ZoneRows], now_ms: i64) -> Forecasts {
    let indexes: Vec<DayIndex> = ledger.iter().map(|l| DayIndex::new(&l.rows)).collect();
    let budgets = states
        .iter()
        .map(|s| {
            let zone = zone_of(s);
            let (today, first, series) = local_series(ledger, &indexes, &zone, &s.budget.scope, now_ms);
            let pace = pace_of(today, first, &series);
            let end = s.resets_at.map(|r| r * 1000);
            BudgetForecast {
                budget: s.budget.id.clone(),
                scope: s.budget.scope.clone(),
                window: s.budget.window.clone(),
                spent_micros: s.spent_micros,
                hard_limit_micros: s.hard_limit_micros,
                resets_at: s.resets_at,
                trailing_7d_micros: pace.trailing_7d_micros,
                pace_today_micros: pace.on_day(today),
                projection: project(&pace, s.spent_micros, Some(s.hard_limit_micros), now_ms, end, &zone),
            }
        })
        .collect();
    let today = now_ms.div_euclid(DAY_MS);
    let (y, m, _) = civil_from_days(today);
    let month_first = days_from_civil(y, m, 1);
    let month_end_ms = if m == 12 { days_from_civil(y + 1, 1, 1) } else { days_from_civil(y, m + 1, 1) } * DAY_MS;
    let workflows = workflows
        .iter()
        .map(|w| {
            let scope = w.scope();
            let (today, first, series) = local_series(ledger, &indexes, &Zone::UTC, &scope, now_ms);
            let pace = pace_of(today, first, &series);
            let mtd: Micros = series.iter().skip(usize::try_from(month_first - first).unwrap_or(0)).fold(0, |a, m| a.saturating_add(*m));
            WorkflowForecast {
                workflow: w.id().to_owned(),
                month_to_date_micros: mtd,
                monthly_cap_micros: w.monthly_cap_micros,
                month_end: month_end_ms / 1000,
                trailing_7d_micros: pace.trailing_7d_micros,
                pace_today_micros: pace.on_day(today),
                projection: project(&pace, mtd, w.monthly_cap_micros, now_ms, Some(month_end_ms), &Zone::UTC),
                scope,
            }
        })
        .collect();
    Forecasts { method: METHOD, budgets, workflows }
}

/// Reads what [`compute`] needs from the store (one grouped ledger read per zone among the
/// budgets, UTC for the workflows) and computes.
pub async fn load<S: Store>(store: &S, now_ms: i64) -> StoreResult<Forecasts> {
    // Templates charge nobody: only the budgets they made are forecast.
    let states = BudgetState::without_templates(store.list_budgets(now_ms).await?);
    let workflows = store.list_workflows().await?;
    let mut zones: Vec<Zone> = if workflows.is_empty() { Vec::new() } else { vec![Zone::UTC] };
    for zone in states.iter().map(zone_of) {
        if !zones.contains(&zone) {
            zones.push(zone);
        }
    }
    let mut ledger = Vec::with_capacity(zones.len());
    for zone in zones {
        let rows = store.report(query(&zone, now_ms)).await?;
        ledger.push(ZoneRows { zone, rows });
    }
    Ok(compute(&states, &workflows, &ledger, now_ms))
}

impl Forecasts {
    pub fn budget(&self, id: &str) -> Option<&BudgetForecast> {
        self.budgets.iter().find(|f| f.budget == id)
    }
}

/// CSV/table cells of the forecast report: budgets, then workflows (`kind` tells them apart).
pub fn cells(f: &Forecasts) -> (Vec<String>, Vec<Vec<String>>) {
    let header = ["kind", "id", "scope", "spent_micros", "limit_micros", "trailing_7d_micros", "pace_today_micros", "projected_end_micros", "hard_limit_at", "hard_limit_day", "projected_to_exceed"]
        .map(String::from)
        .to_vec();
    let opt = |v: Option<i64>| v.map(|v| v.to_string()).unwrap_or_default();
    let mut rows: Vec<Vec<String>> = f
        .budgets
        .iter()
        .map(|b| {
            vec![
                "budget".into(),
                b.budget.clone(),
                b.scope.clone(),
                b.spent_micros.to_string(),
                b.hard_limit_micros.to_string(),
                b.trailing_7d_micros.to_string(),
                b.pace_today_micros.to_string(),
                opt(b.projection.projected_end_micros),
                opt(b.projection.hard_limit_at),
                b.projection.hard_limit_day.clone().unwrap_or_default(),
                b.projection.projected_to_exceed.to_string(),
            ]
        })
        .collect();
    rows.extend(f.workflows.iter().map(|w| {
        vec![
            "workflow".into(),
            w.workflow.clone(),
            w.scope.clone(),
            w.month_to_date_micros.to_string(),
            opt(w.monthly_cap_micros),
            w.trailing_7d_micros.to_string(),
            w.pace_today_micros.to_string(),
            opt(w.projection.projected_end_micros),
            opt(w.projection.hard_limit_at),
            w.projection.hard_limit_day.clone().unwrap_or_default(),
            w.projection.projected_to_exceed.to_string(),
        ]
    }));
    (header, rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A weekday pattern: $10 Monday-Friday, $2 Saturday, $1 Sunday.
    fn pattern(day: i64) -> Micros {
        match weekday(day) {
            5 => 2_000_000,
            6 => 1_000_000,
            _ => 10_000_000,
        }
    }

    /// A deterministic generator (LCG), so the "noise" is the same on every run.
    struct Lcg(u64);
    impl Lcg {
        fn next_pct(&mut self, spread: u64) -> i128 {
            self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((self.0 >> 33) % (2 * spread + 1)) as i128 - spread as i128
        }
    }

    fn day_of(text: &str) -> i64 {
        parse_time_ms(text).unwrap() / DAY_MS
    }

    #[test]
    fn a_steady_weekly_pattern_is_projected_exactly_to_any_window_end() {
        // 60 days of the pattern ending the day before 2026-11-18 (a Wednesday).
        let today = day_of("2026-11-18");
        let first = today - 60;
        let history: Vec<Micros> = (first..today).map(pattern).collect();
        let pace = Pace::from_history(&history, first);
        assert_eq!(pace.trailing_7d_micros, 53_000_000);
        assert_eq!(pace.per_weekday, [10_000_000, 10_000_000, 10_000_000, 10_000_000, 10_000_000, 2_000_000, 1_000_000]);
        // From midnight today to the end of the month: the known answer is the pattern's sum.
        let now = today * DAY_MS;
        let end = day_of("2026-12-01") * DAY_MS;
        let expected: Micros = (today..day_of("2026-12-01")).map(pattern).sum();
        let spent = 170_000_000;
        let p = project(&pace, spent, Some(300_000_000), now, Some(end), &Zone::UTC);
        assert_eq!(p.projected_end_micros, Some(spent + expected));
        // Wed 18th to Mon 30th add 96 dollars: 266 at the window's end, short of 300.
        assert_eq!(expected, 96_000_000);
        assert_eq!((p.hard_limit_at, p.projected_to_exceed), (None, false));
        // A hard limit of $195: 25 dollars to go = Wednesday, Thursday and half of Friday 2026-11-20.
        let p = project(&pace, spent, Some(195_000_000), now, Some(end), &Zone::UTC);
        assert_eq!(p.hard_limit_day.as_deref(), Some("2026-11-20"));
        assert_eq!(p.hard_limit_at, Some((day_of("2026-11-20") * DAY_MS + DAY_MS / 2) / 1000));
        assert!(p.projected_to_exceed);
        // Half a day in: half of Wednesday's pace remains.
        let p = project(&pace, 0, None, now + DAY_MS / 2, Some(today * DAY_MS + DAY_MS), &Zone::UTC);
        assert_eq!(p.projected_end_micros, Some(5_000_000));
    }

    #[test]
    fn a_dst_day_spreads_its_pace_over_its_real_length() {
        let la = Zone::iana("America/Los_Angeles").unwrap();
        let at = |t: &str| parse_time_ms(t).unwrap();
        // Sunday 2026-03-08 springs forward: 23 hours from 08:00Z to 07:00Z. Half its pace is spent
        // 11 h 30 min in, at 12:30 PDT (a 24-hour day would say 12:00).
        let pace = Pace { per_weekday: [23_000_000; 7], trailing_7d_micros: 161_000_000 };
        let (midnight, next) = (at("2026-03-08T00:00:00-08:00"), at("2026-03-09T00:00:00-07:00"));
        assert_eq!(next - midnight, 23 * 3_600_000);
        let p = project(&pace, 0, Some(11_500_000), midnight, Some(next), &la);
        assert_eq!(p.projected_end_micros, Some(23_000_000), "the whole day adds one day's pace");
        assert_eq!(p.hard_limit_at, Some(at("2026-03-08T12:30:00-07:00") / 1000));
        assert_eq!(p.hard_limit_day.as_deref(), Some("2026-03-08"));
        // Sunday 2026-11-01 falls back: 25 hours. From local noon (PST) 12 of them are left: 12/25.
        let pace = Pace { per_weekday: [5_000_000; 7], trailing_7d_micros: 35_000_000 };
        let noon = at("2026-11-01T12:00:00-08:00");
        let p = project(&pace, 0, Some(1_600_000), noon, Some(at("2026-11-02T00:00:00-08:00")), &la);
        assert_eq!(p.projected_end_micros, Some(2_400_000));
        // $1.60 of $5 over 25 h = 8 h: 20:00 PST on the 1st, already the 2nd in UTC.
        assert_eq!(p.hard_limit_at, Some(at("2026-11-02T04:00:00Z") / 1000));
        assert_eq!(p.hard_limit_day.as_deref(), Some("2026-11-01"), "the local date");
        let utc = project(&pace, 0, Some(1_600_000), noon, Some(at("2026-11-02T00:00:00-08:00")), &Zone::UTC);
        assert_eq!(utc.hard_limit_day.as_deref(), Some("2026-11-02"), "in UTC days it is the 2nd");
    }

    #[test]
    fn the_pace_follows_local_weekdays() {
        // A team in Los Angeles spends at 18:00 local: $10 Monday to Friday, $5 Sunday; in UTC
        // that lands on Tuesday to Saturday (and Monday). 28 local days, Sunday 2026-10-04 to
        // Saturday 10-31, read as the store answers a query in the zone (local dates).
        let la = Zone::iana("America/Los_Angeles").unwrap();
        let now = parse_time_ms("2026-11-01T12:00:00-08:00").unwrap();
        let first = first_day(&la, now);
        assert_eq!(first, day_of("2026-10-04"));
        let row = |date: String, cost| ReportRow { keys: vec!["acme".into(), String::new(), "platform".into(), "bob".into(), String::new(), "chat".into(), date], cost_micros: cost, ..ReportRow::default() };
        let local = |d: i64| match weekday(d) {
            6 => 5_000_000,
            5 => 0,
            _ => 10_000_000,
        };
        let date = |d: i64| crate::window::utc_date(d * 86_400);
        let local_rows: Vec<ReportRow> = (first..first + 28).map(|d| row(date(d), local(d))).collect();
        let utc_rows: Vec<ReportRow> = (first..first + 28).map(|d| row(date(d + 1), local(d))).collect();
        let series = |rows: &[ReportRow], zone: &Zone| {
            let ledger = [ZoneRows { zone: zone.clone(), rows: rows.to_vec() }];
            let (today, first, s) = local_series(&ledger, &[DayIndex::new(rows)], zone, "team:platform", now);
            pace_of(today, first, &s)
        };
        let pace = series(&local_rows, &la);
        assert_eq!(pace.per_weekday, [10_000_000, 10_000_000, 10_000_000, 10_000_000, 10_000_000, 0, 5_000_000]);
        assert_eq!(pace.on_day(la.local_day(now / 1000)), 5_000_000, "today is Sunday in Los Angeles");
        // The same spend in UTC days: Monday holds Sunday's $5, Saturday Friday's $10, Sunday nothing.
        let pace = series(&utc_rows, &Zone::UTC);
        assert_eq!(pace.per_weekday[0], 5_000_000);
        assert_eq!((pace.per_weekday[5], pace.per_weekday[6]), (10_000_000, 0));
    }

    #[test]
    fn a_budget_already_at_its_hard_limit_is_not_projected_to_exceed_again() {
        let pace = Pace { per_weekday: [1; 7], trailing_7d_micros: 7 };
        let p = project(&pace, 100, Some(100), 0, Some(DAY_MS), &Zone::UTC);
        assert_eq!((p.hard_limit_at, p.projected_to_exceed), (Some(0), false));
        let none = project(&Pace { per_weekday: [0; 7], trailing_7d_micros: 0 }, 5, Some(100), 0, None, &Zone::UTC);
        assert_eq!((none.projected_end_micros, none.hard_limit_at), (None, None), "a balance has no window end; no pace, no date");
    }

    #[test]
    fn a_balance_is_projected_up_to_a_year_ahead() {
        let pace = Pace { per_weekday: [1_000_000; 7], trailing_7d_micros: 7_000_000 };
        let p = project(&pace, 0, Some(10_000_000), 0, None, &Zone::UTC);
        assert_eq!(p.hard_limit_at, Some(10 * 86_400));
        assert_eq!(p.hard_limit_day.as_deref(), Some("1970-01-11"));
    }

    /// The error figure in docs/counter.md: a generated 60-day history (the weekday pattern, a
    /// 2 %-a-week growth, ±30 % daily noise), replayed: on each of days 28..59 at midnight, project
    /// the spend of windows ending 1..=13 days later and compare with what the history then spent.
    #[test]
    fn replayed_history_error_is_measured_against_the_flat_method() {
        let start = day_of("2026-09-01");
        let mut rng = Lcg(42);
        let history: Vec<Micros> = (0..74)
            .map(|i| {
                let base = i128::from(pattern(start + i)) * (100 + 2 * i128::from(i) / 7) / 100;
                (base * (100 + rng.next_pct(30)) / 100) as Micros
            })
            .collect();
        let (mut err_profile, mut err_flat, mut actual_sum) = (0i128, 0i128, 0i128);
        for today in 28..60usize {
            let past = &history[..today];
            let profile = Pace::from_history(past, start);
            let flat = Pace::flat(past);
            for h in 1..=13usize {
                let actual: i128 = history[today..today + h].iter().map(|m| i128::from(*m)).sum();
                let now = (start + today as i64) * DAY_MS;
                let end = Some(now + h as i64 * DAY_MS);
                let a = i128::from(project(&profile, 0, None, now, end, &Zone::UTC).projected_end_micros.unwrap());
                let b = i128::from(project(&flat, 0, None, now, end, &Zone::UTC).projected_end_micros.unwrap());
                err_profile += (a - actual).abs();
                err_flat += (b - actual).abs();
                actual_sum += actual;
            }
        }
        let pct = |e: i128| e * 1000 / actual_sum;
        eprintln!("forecast error (sum |error| / sum actual, per mille): weekday profile {} vs flat {}", pct(err_profile), pct(err_flat));
        assert!(pct(err_profile) <= 80, "weekday-aware error stays under 8 %: {}", pct(err_profile));
        assert!(err_profile * 10 < err_flat * 6, "under 60 % of the flat method's error: {err_profile} vs {err_flat}");
    }

    #[test]
    fn rows_are_assigned_to_scopes_by_kind() {
        let row = |keys: [&str; 7], cost| ReportRow {
            keys: keys.iter().map(|k| k.to_string()).collect(),
            requests: 1,
            cost_micros: cost,
            input_tokens: 0,
            output_tokens: 0,
            cache_read_tokens: 0,
            cache_write_tokens: 0,
            estimated_requests: 0,
        };
        let rows = vec![row(["acme", "rd", "platform", "bob", "k1", "chat", "2026-11-02"], 5), row(["acme", "", "web", "ann", "", "chat", "2026-11-03"], 7)];
        let first = day_of("2026-11-01");
        assert_eq!(daily_series(&rows, "org:acme", first, 3), vec![0, 5, 7]);
        assert_eq!(daily_series(&rows, "workflow:platform/chat", first, 3), vec![0, 5, 0]);
        assert_eq!(daily_series(&rows, "user:ann", first, 3), vec![0, 0, 7]);
        assert_eq!(daily_series(&rows, "cost_center:rd", first, 3), vec![0, 5, 0]);
        assert_eq!(daily_series(&rows, "task:x", first, 3), vec![0, 0, 0]);
        assert_eq!(daily_series(&rows, "any:team=platform,web", first, 3), vec![0, 5, 7], "a selector sums every scope it takes in");
        assert_eq!(daily_series(&rows, "any:use_case=chat", first, 3), vec![0, 5, 7]);
        assert_eq!(daily_series(&rows, "any:user=bob,zed", first, 3), vec![0, 5, 0]);
    }
}
