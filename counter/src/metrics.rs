//! Prometheus text exposition for `GET /metrics`: service counters plus one gauge set per budget.
//!
//! Counters are plain atomics bumped on the request path; budget gauges are computed from the store
//! at scrape time, so they can never disagree with what the admin API shows.
//!
//! The forecast gauges are the exception: a forecast reads 28–31 days of the ledger grouped by
//! every scope kind (on Redis a scan of the whole ledger stream), which is too much to redo on
//! every scrape of every Prometheus replica. [`ForecastCache`] keeps the last computation and
//! recomputes at most once per [`FORECAST_REFRESH_MS`] of the counter's clock (the injected one,
//! so tests step it); the admin reports (`/admin/reports/forecast`, the utilization report) still
//! compute fresh on every call.

use crate::forecast::Forecasts;
use crate::store::{BudgetState, Store, StoreResult};
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tollgate_core::protocol::BudgetStatus;

/// A per-budget gauge: name, help text, how to read its value.
type Gauge = (&'static str, &'static str, fn(&BudgetState) -> String);

#[derive(Debug, Default)]
pub struct Metrics {
    pub usage_batches: AtomicU64,
    pub usage_records_accepted: AtomicU64,
    pub usage_records_duplicate: AtomicU64,
    pub usage_batches_rejected: AtomicU64,
    pub lease_requests: AtomicU64,
    pub lease_requests_rejected: AtomicU64,
    pub lease_grants_ok: AtomicU64,
    pub lease_grants_soft: AtomicU64,
    pub lease_grants_hard: AtomicU64,
    pub unauthorized: AtomicU64,
    pub store_errors: AtomicU64,
    /// The forecasts `/metrics` shows.
    pub forecasts: ForecastCache,
}

/// How long `/metrics` shows the forecasts it computed before computing them again: a minute of
/// the counter's clock. A pace in dollars per day moves little in a minute; a scrape every 15 s
/// from two Prometheus replicas would otherwise read the ledger eight times a minute.
pub const FORECAST_REFRESH_MS: i64 = 60_000;

/// The last forecasts computed for `/metrics` and when (per counter instance).
#[derive(Debug, Default)]
pub struct ForecastCache {
    /// `(computed at, forecasts)`. An async mutex held across the computation: scrapes arriving
    /// while one computes wait for its answer instead of computing their own.
    latest: tokio::sync::Mutex<Option<(i64, Arc<Forecasts>)>>,
    computations: AtomicU64,
}

impl ForecastCache {
    /// The forecasts at `now_ms`: the cached ones while younger than [`FORECAST_REFRESH_MS`],
    /// else computed now ([`crate::forecast::load`]). A failed computation is not cached (the next
    /// scrape tries again). A clock that went back (`now_ms` before the computation) recomputes.
    pub async fn get<S: Store>(&self, store: &S, now_ms: i64) -> StoreResult<(i64, Arc<Forecasts>)> {
        let mut latest = self.latest.lock().await;
        if let Some((at, f)) = latest.as_ref().filter(|(at, _)| (*at..at.saturating_add(FORECAST_REFRESH_MS)).contains(&now_ms)) {
            return Ok((*at, Arc::clone(f)));
        }
        let f = Arc::new(crate::forecast::load(store, now_ms).await?);
        inc(&self.computations, 1);
        *latest = Some((now_ms, Arc::clone(&f)));
        Ok((now_ms, f))
    }

    /// How many times this instance computed the forecasts for `/metrics`.
    pub fn computations(&self) -> u64 {
        self.computations.load(Ordering::Relaxed)
    }
}

pub fn inc(counter: &AtomicU64, by: u64) {
    counter.fetch_add(by, Ordering::Relaxed);
}

fn label(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

impl Metrics {
    pub fn count_grant(&self, status: BudgetStatus) {
        inc(
            match status {
                BudgetStatus::Ok => &self.lease_grants_ok,
                BudgetStatus::Soft => &self.lease_grants_soft,
                BudgetStatus::Hard => &self.lease_grants_hard,
            },
            1,
        );
    }

    /// Renders everything in Prometheus text format 0.0.4.
    pub fn render(&self, budgets: &[BudgetState]) -> String {
        let mut out = String::with_capacity(4096 + budgets.len() * 600);
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let mut counter = |name: &str, help: &str, rows: &[(&str, u64)]| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
            for (labels, v) in rows {
                let _ = writeln!(out, "{name}{labels} {v}");
            }
        };
        counter("tollgate_counter_usage_batches_total", "Usage batches stored.", &[("", get(&self.usage_batches))]);
        counter(
            "tollgate_counter_usage_records_total",
            "Usage records received in stored batches, by result.",
            &[
                ("{result=\"accepted\"}", get(&self.usage_records_accepted)),
                ("{result=\"duplicate\"}", get(&self.usage_records_duplicate)),
            ],
        );
        counter(
            "tollgate_counter_usage_batches_rejected_total",
            "Usage batches refused as invalid (nothing applied).",
            &[("", get(&self.usage_batches_rejected))],
        );
        counter("tollgate_counter_lease_requests_total", "Lease requests answered.", &[("", get(&self.lease_requests))]);
        counter(
            "tollgate_counter_lease_requests_rejected_total",
            "Lease requests refused as invalid.",
            &[("", get(&self.lease_requests_rejected))],
        );
        counter(
            "tollgate_counter_lease_grants_total",
            "Budget slices granted, by the budget's status at the grant.",
            &[
                ("{status=\"ok\"}", get(&self.lease_grants_ok)),
                ("{status=\"soft\"}", get(&self.lease_grants_soft)),
                ("{status=\"hard\"}", get(&self.lease_grants_hard)),
            ],
        );
        counter("tollgate_counter_unauthorized_total", "Requests refused for a missing or wrong token.", &[("", get(&self.unauthorized))]);
        counter("tollgate_counter_store_errors_total", "Store operations that failed.", &[("", get(&self.store_errors))]);
        counter(
            "tollgate_counter_forecast_computations_total",
            "Forecasts computed for /metrics (at most one per minute of the counter's clock).",
            &[("", self.forecasts.computations())],
        );

        let gauges: [Gauge; 7] = [
            ("tollgate_counter_budget_spent_micros", "Spend in the current window, micro-dollars.", |b| b.spent_micros.to_string()),
            ("tollgate_counter_budget_limit_micros", "Limit including active exemptions, micro-dollars.", |b| {
                b.effective_limit_micros.to_string()
            }),
            ("tollgate_counter_budget_hard_limit_micros", "Hard limit including exemptions, micro-dollars.", |b| {
                b.hard_limit_micros.to_string()
            }),
            ("tollgate_counter_budget_leased_micros", "Sum of live lease slices, micro-dollars.", |b| b.leased_micros.to_string()),
            ("tollgate_counter_budget_utilization_ratio", "Spend divided by the limit.", |b| format!("{:.6}", b.utilization())),
            (
                "tollgate_counter_budget_reserve_excess_micros",
                "reserve: p99 budgets: cost beyond reservations this window, micro-dollars (0 for worst_case).",
                |b| b.reserve_excess_micros.to_string(),
            ),
            ("tollgate_counter_budget_status", "0 ok, 1 past a soft threshold, 2 at the hard limit.", |b| {
                (b.status as u8).to_string()
            }),
        ];
        for (name, help, value) in gauges {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
            for b in budgets {
                let mode = match b.budget.mode {
                    tollgate_core::protocol::BudgetMode::Enforce => "enforce",
                    tollgate_core::protocol::BudgetMode::Observe => "observe",
                };
                let _ = writeln!(
                    out,
                    "{name}{{budget=\"{}\",scope=\"{}\",mode=\"{mode}\"}} {}",
                    label(&b.budget.id),
                    label(&b.budget.scope),
                    value(b)
                );
            }
        }
        out
    }
}

/// Forecast gauges (crate::forecast): per budget the projected spend at the window's end and the
/// time the hard limit is reached at the current pace (only for budgets projected to reach it),
/// per workflow the projected spend at the end of the UTC month; and when they were computed.
pub fn render_forecasts(f: &Forecasts, computed_at_ms: i64) -> String {
    let mut out = String::new();
    let name = "tollgate_counter_forecast_computed_timestamp_seconds";
    let _ = writeln!(out, "# HELP {name} When the forecasts below were computed (recomputed at most once a minute), unix seconds.\n# TYPE {name} gauge\n{name} {}", computed_at_ms.div_euclid(1000));
    let name = "tollgate_counter_budget_projected_spend_micros";
    let _ = writeln!(out, "# HELP {name} Projected spend at the end of the current window at the current pace (weekday-aware), micro-dollars.\n# TYPE {name} gauge");
    for b in &f.budgets {
        if let Some(p) = b.projection.projected_end_micros {
            let _ = writeln!(out, "{name}{{budget=\"{}\",scope=\"{}\"}} {p}", label(&b.budget), label(&b.scope));
        }
    }
    let name = "tollgate_counter_budget_projected_hard_limit_timestamp_seconds";
    let _ = writeln!(out, "# HELP {name} When the hard limit is reached at the current pace (only budgets projected to reach it in this window), unix seconds.\n# TYPE {name} gauge");
    for b in &f.budgets {
        if let (true, Some(at)) = (b.projection.projected_to_exceed, b.projection.hard_limit_at) {
            let _ = writeln!(out, "{name}{{budget=\"{}\",scope=\"{}\"}} {at}", label(&b.budget), label(&b.scope));
        }
    }
    let name = "tollgate_counter_workflow_projected_month_spend_micros";
    let _ = writeln!(out, "# HELP {name} A workflow's projected spend at the end of the UTC month, micro-dollars.\n# TYPE {name} gauge");
    for w in &f.workflows {
        if let Some(p) = w.projection.projected_end_micros {
            let _ = writeln!(out, "{name}{{workflow=\"{}\",scope=\"{}\"}} {p}", label(&w.workflow), label(&w.scope));
        }
    }
    out
}
