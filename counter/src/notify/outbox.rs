//! The background side of notifications: the evaluator and the delivery loop ([`Notifier`]).
//!
//! Two tokio tasks per counter process, started by `server::run_with`:
//! - **evaluate**: wakes every `evaluation.tick_ms` of real time, or sooner after a usage batch
//!   poked it ([`Notifier::poke`], O(1) on the hot path; pokes during an evaluation coalesce into
//!   one), and then at most once per `tick_ms`. It reads budget states (threshold rules) and, at
//!   most every `evaluation.anomaly_every_ms` of the counter's clock, the ledger (anomaly rules),
//!   and records the drafts; the store keeps each key once.
//! - **deliver**: claims due deliveries from the durable outbox (at most `delivery.batch` in
//!   memory: the bounded queue), POSTs each signed, and settles it: delivered, or pending again
//!   after `min(retry_base_ms × 2^attempts, retry_max_ms)` of the counter's clock. Wakes on every
//!   recorded event and every `tick_ms`, so deliveries that failed while a receiver was down go
//!   out once it is back, after a restart too.

use super::rules::{anomaly_draft, anomaly_hits, forecast_events, local_day, review_overdue_events, threshold_events, BreakdownRow, NotifyConfig, ReviewDue};
use super::{webhook, Claimed, EventDraft, EventKind, EventLog};
use crate::clock::Clock;
use crate::store::{GroupBy, ReportQuery, Store, StoreResult};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Write;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tollgate_core::money::Micros;

const DAY_MS: i64 = 86_400_000;
/// Remembered dedup keys (this process) before the memo is cleared; the store stays the authority.
const KNOWN_KEYS_MAX: usize = 100_000;

#[derive(Default)]
struct Stats {
    recorded: Mutex<BTreeMap<EventKind, u64>>,
    duplicates: AtomicU64,
    /// (kind, scope) -> at_ms of the last event recorded by this process.
    last_fired: Mutex<BTreeMap<(EventKind, String), i64>>,
    /// (webhook, delivered?) -> attempts.
    deliveries: Mutex<BTreeMap<(String, bool), u64>>,
    evaluations: AtomicU64,
    errors: AtomicU64,
}

fn guard<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Evaluates rules and delivers events in the background. Shared by the server (`Arc`).
pub struct Notifier {
    config: NotifyConfig,
    clock: Arc<dyn Clock>,
    evaluate: Notify,
    deliver: Notify,
    stats: Stats,
    known: Mutex<HashSet<String>>,
    last_anomaly_ms: AtomicI64,
    last_review_ms: AtomicI64,
    last_forecast_ms: AtomicI64,
    /// (rule index, local day start) -> (read at, trailing 7-day sums by dimension value). Reused
    /// for `10 × anomaly_every_ms`: late records (a gateway's backlog) still reach the baseline.
    trailing: Mutex<HashMap<(usize, i64), (i64, BTreeMap<String, Micros>)>>,
}

impl Notifier {
    pub fn new(config: NotifyConfig, clock: Arc<dyn Clock>) -> Arc<Notifier> {
        Arc::new(Notifier {
            config,
            clock,
            evaluate: Notify::new(),
            deliver: Notify::new(),
            stats: Stats::default(),
            known: Mutex::default(),
            last_anomaly_ms: AtomicI64::new(i64::MIN),
            last_review_ms: AtomicI64::new(i64::MIN),
            last_forecast_ms: AtomicI64::new(i64::MIN),
            trailing: Mutex::default(),
        })
    }

    pub fn config(&self) -> &NotifyConfig {
        &self.config
    }

    /// Called after a usage batch is stored: O(1), never waits.
    pub fn poke(&self) {
        self.evaluate.notify_one();
    }

    /// Starts the evaluate and deliver tasks; abort the handles to stop them.
    pub fn spawn<S: Store>(self: &Arc<Self>, store: Arc<S>) -> Vec<JoinHandle<()>> {
        let tick = Duration::from_millis(self.config.evaluation.tick_ms);
        let (me, st) = (Arc::clone(self), Arc::clone(&store));
        let evaluate = tokio::spawn(async move {
            loop {
                let _ = tokio::time::timeout(tick, me.evaluate.notified()).await;
                if let Err(e) = me.evaluate_once(st.as_ref()).await {
                    me.stats.errors.fetch_add(1, Ordering::Relaxed);
                    crate::log::warn("notify: evaluation failed; retrying at the next tick", serde_json::json!({"error": e.to_string()}));
                }
                // Pace: under steady usage the pokes never stop; evaluate at most once per tick.
                tokio::time::sleep(tick).await;
            }
        });
        let (me, st) = (Arc::clone(self), store);
        let deliver = tokio::spawn(async move {
            loop {
                let _ = tokio::time::timeout(tick, me.deliver.notified()).await;
                if me.config.webhooks.is_empty() {
                    continue;
                }
                loop {
                    match me.deliver_once(st.as_ref()).await {
                        Ok(n) if n >= me.config.delivery.batch => continue,
                        Ok(_) => break,
                        Err(e) => {
                            me.stats.errors.fetch_add(1, Ordering::Relaxed);
                            crate::log::warn("notify: outbox unavailable; retrying at the next tick", serde_json::json!({"error": e.to_string()}));
                            break;
                        }
                    }
                }
            }
        });
        vec![evaluate, deliver]
    }

    /// Records drafts (each key once, by the store), counting and waking the delivery loop.
    /// Returns how many were new. Public so other evaluators (overdue reviews, wired by the
    /// workflow registry) go through the same path.
    pub async fn record<S: EventLog>(&self, store: &S, drafts: Vec<EventDraft>) -> StoreResult<usize> {
        let mut new = 0;
        for draft in drafts {
            if guard(&self.known).contains(&draft.key) {
                continue;
            }
            let now = self.clock.now_ms();
            let targets = self.config.targets(draft.kind);
            let recorded = store.record_event(&draft, &targets, now).await?;
            {
                let mut known = guard(&self.known);
                if known.len() >= KNOWN_KEYS_MAX {
                    known.clear();
                }
                known.insert(draft.key.clone());
            }
            match recorded {
                Some(event) => {
                    new += 1;
                    *guard(&self.stats.recorded).entry(draft.kind).or_default() += 1;
                    guard(&self.stats.last_fired).insert((draft.kind, draft.scope.clone()), event.at_ms);
                    crate::log::info(
                        "notify: event recorded",
                        serde_json::json!({"seq": event.seq, "key": draft.key, "kind": draft.kind.as_str(), "targets": targets}),
                    );
                    if !targets.is_empty() {
                        self.deliver.notify_one();
                    }
                }
                None => {
                    self.stats.duplicates.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        Ok(new)
    }

    /// One evaluation: threshold rules always, anomaly rules and overdue reviews when due.
    /// Returns new events.
    pub async fn evaluate_once<S: Store>(&self, store: &S) -> StoreResult<usize> {
        self.stats.evaluations.fetch_add(1, Ordering::Relaxed);
        let now = self.clock.now_ms();
        let mut new = 0;
        if !self.config.thresholds.is_empty() {
            // A template charges nobody (a `$0` one would otherwise read as at its hard limit).
            let states = crate::store::BudgetState::without_templates(store.list_budgets(now).await?);
            new += self.record(store, threshold_events(&self.config.thresholds, &states)).await?;
        }
        let last = self.last_anomaly_ms.load(Ordering::Relaxed);
        if !self.config.anomalies.is_empty() && (last == i64::MIN || now >= last.saturating_add(self.config.evaluation.anomaly_every_ms)) {
            self.last_anomaly_ms.store(now, Ordering::Relaxed);
            new += self.evaluate_anomalies(store, now).await?;
        }
        let last = self.last_forecast_ms.load(Ordering::Relaxed);
        if !self.config.forecasts.is_empty() && (last == i64::MIN || now >= last.saturating_add(self.config.evaluation.anomaly_every_ms)) {
            // Forecasts read the ledger (28 days, grouped): at the anomaly rules' pace.
            self.last_forecast_ms.store(now, Ordering::Relaxed);
            let forecasts = crate::forecast::load(store, now).await?;
            let states = store.list_budgets(now).await?;
            new += self.record(store, forecast_events(&self.config.forecasts, &states, &forecasts)).await?;
        }
        let last = self.last_review_ms.load(Ordering::Relaxed);
        if self.config.evaluation.review_overdue && (last == i64::MIN || now >= last.saturating_add(self.config.evaluation.anomaly_every_ms)) {
            self.last_review_ms.store(now, Ordering::Relaxed);
            let due: Vec<ReviewDue> = store
                .list_workflows()
                .await?
                .into_iter()
                .filter_map(|w| {
                    let scope = w.scope();
                    let spec = w.spec;
                    spec.review_date.map(|review_date| ReviewDue { workflow: spec.id, scope, owner: spec.owner, review_date })
                })
                .collect();
            let (_, today, _) = local_day(now, 0);
            new += self.record(store, review_overdue_events(&due, &today)).await?;
        }
        Ok(new)
    }

    async fn evaluate_anomalies<S: Store>(&self, store: &S, now: i64) -> StoreResult<usize> {
        let mut new = 0;
        for (i, rule) in self.config.anomalies.iter().enumerate() {
            let (day_start, day, minute) = local_day(now, rule.offset_minutes);
            if minute < rule.evaluate_at_min {
                continue;
            }
            let dim = rule.dimension.group_by();
            let sums = |rows: Vec<crate::store::ReportRow>| -> BTreeMap<String, Micros> {
                rows.into_iter().filter_map(|r| r.keys.into_iter().next().map(|k| (k, r.cost_micros))).collect()
            };
            let today = sums(store.report(ReportQuery::utc(vec![dim], day_start, day_start + DAY_MS)).await?);
            let reuse_ms = self.config.evaluation.anomaly_every_ms.saturating_mul(10);
            let cached = guard(&self.trailing).get(&(i, day_start)).filter(|(at, _)| now < at.saturating_add(reuse_ms)).map(|(_, t)| t.clone());
            let trailing = match cached {
                Some(t) => t,
                None => {
                    let t = sums(store.report(ReportQuery::utc(vec![dim], day_start - 7 * DAY_MS, day_start)).await?);
                    let mut cache = guard(&self.trailing);
                    cache.retain(|(_, d), _| *d == day_start);
                    cache.insert((i, day_start), (now, t.clone()));
                    t
                }
            };
            for hit in anomaly_hits(rule, &day, &today, &trailing) {
                let key = format!("anomaly:{}:{}", hit.scope, hit.day);
                if guard(&self.known).contains(&key) {
                    continue;
                }
                let rows = store
                    .report(ReportQuery::utc(vec![dim, GroupBy::Model, GroupBy::UseCase], day_start, day_start + DAY_MS))
                    .await?;
                let breakdown = rows
                    .into_iter()
                    .filter(|r| r.keys.first() == Some(&hit.value))
                    .map(|r| BreakdownRow {
                        model: r.keys.get(1).cloned().unwrap_or_default(),
                        use_case: r.keys.get(2).cloned().unwrap_or_default(),
                        requests: r.requests,
                        cost_micros: r.cost_micros,
                    })
                    .collect();
                new += self.record(store, vec![anomaly_draft(rule, &hit, breakdown)]).await?;
            }
        }
        Ok(new)
    }

    /// Claims and sends one batch of due deliveries; returns how many were claimed.
    pub async fn deliver_once<S: EventLog>(&self, store: &S) -> StoreResult<usize> {
        let d = &self.config.delivery;
        let claimed = store.claim_deliveries(self.clock.now_ms(), d.batch, d.claim_ms).await?;
        let n = claimed.len();
        for Claimed { event, delivery } in claimed {
            let result = match self.config.webhooks.iter().find(|w| w.name == delivery.target) {
                Some(hook) => webhook::post(hook, &event, self.clock.now_ms(), Duration::from_millis(d.timeout_ms)).await,
                None => Err(format!("webhook `{}` is no longer configured; add it back to deliver", delivery.target)),
            };
            let now = self.clock.now_ms();
            let ok = result.is_ok();
            *guard(&self.stats.deliveries).entry((delivery.target.clone(), ok)).or_default() += 1;
            let next = now.saturating_add(backoff_ms(d.retry_base_ms, d.retry_max_ms, delivery.attempts));
            if let Err(e) = &result {
                crate::log::warn(
                    "notify: delivery failed; will retry",
                    serde_json::json!({"webhook": delivery.target, "event": event.draft.key, "attempt": delivery.attempts + 1, "error": e, "next_at_ms": next}),
                );
            }
            store.settle_delivery(&delivery, ok, result.err(), next, now).await?;
        }
        Ok(n)
    }

    /// Prometheus text for the notification counters (appended to `/metrics`).
    pub fn render_metrics(&self, pending: Option<u64>) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "# HELP tollgate_counter_events_total Events recorded by this instance, by kind.\n# TYPE tollgate_counter_events_total counter");
        let recorded = guard(&self.stats.recorded).clone();
        for kind in EventKind::ALL {
            let _ = writeln!(out, "tollgate_counter_events_total{{kind=\"{}\"}} {}", kind.as_str(), recorded.get(&kind).copied().unwrap_or(0));
        }
        let _ = writeln!(
            out,
            "# HELP tollgate_counter_events_duplicate_total Proposed events whose key was already recorded (restart or another instance).\n# TYPE tollgate_counter_events_duplicate_total counter\ntollgate_counter_events_duplicate_total {}",
            self.stats.duplicates.load(Ordering::Relaxed)
        );
        let _ = writeln!(out, "# HELP tollgate_counter_event_last_fired_timestamp_seconds When this instance last recorded an event, by kind and scope.\n# TYPE tollgate_counter_event_last_fired_timestamp_seconds gauge");
        for ((kind, scope), at) in guard(&self.stats.last_fired).iter() {
            let _ = writeln!(
                out,
                "tollgate_counter_event_last_fired_timestamp_seconds{{kind=\"{}\",scope=\"{}\"}} {}",
                kind.as_str(),
                scope.replace('\\', "\\\\").replace('"', "\\\""),
                at.div_euclid(1000)
            );
        }
        let _ = writeln!(out, "# HELP tollgate_counter_webhook_deliveries_total Webhook delivery attempts, by webhook and result.\n# TYPE tollgate_counter_webhook_deliveries_total counter");
        let deliveries = guard(&self.stats.deliveries).clone();
        for hook in &self.config.webhooks {
            for (ok, word) in [(true, "delivered"), (false, "failed")] {
                let n = deliveries.get(&(hook.name.clone(), ok)).copied().unwrap_or(0);
                let _ = writeln!(out, "tollgate_counter_webhook_deliveries_total{{webhook=\"{}\",result=\"{word}\"}} {n}", hook.name);
            }
        }
        if let Some(p) = pending {
            let _ = writeln!(out, "# HELP tollgate_counter_webhook_outbox_pending Deliveries waiting in the durable outbox.\n# TYPE tollgate_counter_webhook_outbox_pending gauge\ntollgate_counter_webhook_outbox_pending {p}");
        }
        let _ = writeln!(
            out,
            "# HELP tollgate_counter_notify_evaluations_total Rule evaluations run.\n# TYPE tollgate_counter_notify_evaluations_total counter\ntollgate_counter_notify_evaluations_total {}",
            self.stats.evaluations.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP tollgate_counter_notify_errors_total Evaluations or outbox reads that failed (retried at the next tick).\n# TYPE tollgate_counter_notify_errors_total counter\ntollgate_counter_notify_errors_total {}",
            self.stats.errors.load(Ordering::Relaxed)
        );
        out
    }
}

/// Delay before the next attempt after `attempts` failed ones: `base × 2^attempts`, capped.
pub fn backoff_ms(base_ms: i64, max_ms: i64, attempts: u32) -> i64 {
    base_ms.saturating_mul(1i64 << attempts.min(40)).min(max_ms)
}

#[cfg(test)]
mod tests {
    use super::backoff_ms;

    #[test]
    fn backoff_doubles_and_is_capped() {
        let got: Vec<i64> = (0..6).map(|a| backoff_ms(1_000, 10_000, a)).collect();
        assert_eq!(got, [1_000, 2_000, 4_000, 8_000, 10_000, 10_000]);
        assert_eq!(backoff_ms(1_000, 300_000, 200), 300_000, "no overflow");
    }
}
