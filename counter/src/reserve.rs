//! The reservation policy of a budget (`reserve`): what a request holds against it at a gateway
//! while it runs, and how far the budget may pass its hard limit because of that.
//!
//! Why: a request without `max_tokens` reserves its model's whole output (for gpt-4o about
//! $0.16), so a small budget refuses work that would have cost a cent. `reserve: p99` lets a
//! gateway hold what the scope's requests to that model usually cost instead, and bounds what
//! that may cost the budget.
//!
//! # The two policies and their bounds
//! - `worst_case` (the default): a request holds its worst case (prompt + maximum output at the
//!   routed model's prices). Per window, `spend ≤ hard limit` exactly, as before: the counter grants
//!   slices with `spent + Σ live slices ≤ hard`, and a gateway admits only what fits its slice.
//! - `p99`: the lease carries, per routed model, the output tokens the scope's requests stayed
//!   under 99 % of the time over the last `reserve_lookback_days` (nearest rank, successful and
//!   fully counted requests only, a model only once it has `reserve_min_samples` of them), and an
//!   **excess headroom** `h = min(⌊granted × E / hard⌋, E − X)` where `E` is
//!   `reserve_excess_limit` and `X` the excess the window has already counted. The gateway
//!   (core::enforce::book, `BudgetSlot::fits`) admits a request when its p99 hold fits the free
//!   slice **and** its worst case fits the free slice plus `h` minus what requests in flight
//!   already hold beyond their own p99. What a request costs beyond its hold is its *excess*:
//!   usage records name the budgets they held below worst on (`p99_reservations`), and ingestion
//!   adds `cost − hold` to the budget's excess for the window (once per record, like a charge).
//!   Once `X ≥ E`, leases carry no p99 and no headroom: the rest of the window is `worst_case`.
//!
//!   **Bound**: per window, `spend ≤ hard limit + E`. Each gateway's spend past its slices is
//!   at most the headroom of its current lease (the gateway holds in-flight worst cases against
//!   slice + headroom, and counts settled costs the counter has not acknowledged against the next
//!   grant), and `Σ ⌊granted_i × E / hard⌋ ≤ E × (hard − spent) / hard ≤ E` because the slices
//!   themselves never add up to more than `hard − spent`.
//!
//! The p99 table is computed here, in the service and the same for every store, from the ledger
//! ([`crate::store::Store::requests`]), for every `p99` budget at once, at most every
//! [`REFRESH_MS`] of the counter's clock, reading at most [`RECORDS_MAX`] records newest day first.
//! A budget created since the last refresh reserves worst cases until the next one.

use crate::budget::Budget;
use crate::store::{book::ScopeIndex, RequestsQuery, Store, StoreResult};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};
use tollgate_core::money::Micros;
use tollgate_core::protocol::{BudgetMode, LeaseResponse, P99Reservation};

/// How often the p99 tables are recomputed (counter clock).
pub const REFRESH_MS: i64 = 5 * 60 * 1000;
/// The most ledger records one refresh reads (newest day first; a day cut short keeps its oldest).
pub const RECORDS_MAX: usize = 200_000;
const DAY_MS: i64 = 86_400_000;

/// What a record cost beyond its reservation on `budget_id` (0 if it held its worst case there).
pub fn record_excess(reservations: &[P99Reservation], budget_id: &str, cost: Micros) -> Micros {
    reservations.iter().find(|r| r.budget_id == budget_id).map_or(0, |r| r.excess(cost))
}

/// The excess headroom a lease carries: `min(⌊granted × E / hard⌋, E − excess counted)`, and 0
/// for a `worst_case` or observe budget, an empty grant, or once the window's excess reached `E`.
pub fn excess_headroom(budget: &Budget, granted: Micros, hard: Micros, excess: Micros) -> Micros {
    let Some(policy) = budget.reserve else { return 0 };
    if budget.mode != BudgetMode::Enforce || granted <= 0 || hard <= 0 {
        return 0;
    }
    let left = policy.excess_limit_micros.saturating_sub(excess.max(0));
    if left <= 0 {
        return 0;
    }
    let share = i128::from(granted) * i128::from(policy.excess_limit_micros) / i128::from(hard);
    Micros::try_from(share).unwrap_or(Micros::MAX).min(left)
}

/// The 99th percentile by nearest rank (`⌈0.99 n⌉`-th smallest) of `samples`, or `None` below
/// `min_samples`. Sorts `samples`.
pub fn p99(samples: &mut [u64], min_samples: u32) -> Option<u64> {
    if samples.is_empty() || samples.len() < min_samples as usize {
        return None;
    }
    samples.sort_unstable();
    let rank = (samples.len() * 99).div_ceil(100);
    Some(samples[rank.max(1) - 1])
}

/// Per `p99` budget: routed model → output tokens a request reserves.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct P99Tables {
    /// When computed (counter clock); `None`: never.
    pub computed_at_ms: Option<i64>,
    pub by_budget: HashMap<String, BTreeMap<String, u64>>,
    /// Records read by the computation (for the refresh log and tests).
    pub records_read: usize,
}

impl P99Tables {
    /// Computes the tables of `budgets` (the `p99` enforce ones; others are skipped) from
    /// `records` (any order; each with its `finished_at_ms`), as of `now_ms`.
    pub fn compute<'a>(budgets: &[Arc<Budget>], records: impl IntoIterator<Item = &'a tollgate_core::protocol::UsageRecord>, now_ms: i64) -> P99Tables {
        let p99_budgets: Vec<Arc<Budget>> =
            budgets.iter().filter(|b| b.reserve.is_some() && b.mode == BudgetMode::Enforce && !b.is_template()).cloned().collect();
        let index = ScopeIndex::build(p99_budgets.iter());
        let mut samples: HashMap<(String, String), Vec<u64>> = HashMap::new();
        let mut read = 0;
        for r in records {
            read += 1;
            if !(200..300).contains(&r.status) || r.estimated {
                continue;
            }
            let mut seen: Vec<&str> = Vec::new();
            for key in r.principal.scope_keys() {
                for b in index.covering(&key) {
                    let Some(policy) = b.reserve else { continue };
                    let since = now_ms.saturating_sub(i64::from(policy.lookback_days) * DAY_MS);
                    if seen.contains(&b.id.as_str()) || r.finished_at_ms < since {
                        continue;
                    }
                    seen.push(&b.id);
                    samples.entry((b.id.clone(), r.routed_model.clone())).or_default().push(r.tokens.output);
                }
            }
        }
        let mut by_budget: HashMap<String, BTreeMap<String, u64>> = HashMap::new();
        for ((budget_id, model), mut tokens) in samples {
            let min = p99_budgets.iter().find(|b| b.id == budget_id).and_then(|b| b.reserve).map_or(u32::MAX, |p| p.min_samples);
            if let Some(p) = p99(&mut tokens, min) {
                by_budget.entry(budget_id).or_default().insert(model, p);
            }
        }
        P99Tables { computed_at_ms: Some(now_ms), by_budget, records_read: read }
    }

    fn stale(&self, now_ms: i64) -> bool {
        match self.computed_at_ms {
            None => true,
            Some(at) => now_ms < at || now_ms - at >= REFRESH_MS,
        }
    }
}

/// The p99 tables of one counter instance, refreshed from the ledger on the lease path.
#[derive(Debug, Default)]
pub struct Reservations {
    tables: RwLock<Arc<P99Tables>>,
    /// One refresh at a time; a lease call that finds one running uses the tables it has.
    refreshing: tokio::sync::Mutex<()>,
}

impl Reservations {
    /// The current tables.
    pub fn tables(&self) -> Arc<P99Tables> {
        Arc::clone(&self.tables.read().unwrap_or_else(|p| p.into_inner()))
    }

    /// Fills each lease of `answer` that has excess headroom with its budget's p99 table; a budget
    /// without one (no model has enough samples yet) gets no headroom either: its gateways reserve
    /// worst cases, exactly as `worst_case`.
    pub async fn fill<S: Store>(&self, store: &S, answer: &mut LeaseResponse, now_ms: i64) -> StoreResult<()> {
        if answer.budgets.iter().all(|l| l.reserve_excess_micros <= 0) {
            return Ok(());
        }
        let mut tables = self.tables();
        if tables.stale(now_ms) {
            // Never computed: wait for the refresh under way (its answer is the one to use).
            // Computed but old: a call that finds a refresh under way uses the old tables.
            let guard = match tables.computed_at_ms {
                None => Some(self.refreshing.lock().await),
                Some(_) => self.refreshing.try_lock().ok(),
            };
            if let Some(_guard) = guard {
                tables = self.tables();
                if tables.stale(now_ms) {
                    tables = Arc::new(self.compute(store, now_ms).await?);
                    *self.tables.write().unwrap_or_else(|p| p.into_inner()) = Arc::clone(&tables);
                }
            }
        }
        for lease in answer.budgets.iter_mut().filter(|l| l.reserve_excess_micros > 0) {
            match tables.by_budget.get(&lease.budget_id) {
                Some(models) if !models.is_empty() => lease.reserve_output_tokens = models.clone(),
                _ => lease.reserve_excess_micros = 0,
            }
        }
        Ok(())
    }

    async fn compute<S: Store>(&self, store: &S, now_ms: i64) -> StoreResult<P99Tables> {
        let mut budgets = Vec::new();
        for state in store.list_budgets(now_ms).await? {
            if let Ok(b) = Budget::from_spec(state.budget) {
                if b.reserve.is_some() && b.mode == BudgetMode::Enforce && !b.is_template() {
                    budgets.push(Arc::new(b));
                }
            }
        }
        let days = budgets.iter().filter_map(|b| b.reserve).map(|p| i64::from(p.lookback_days)).max().unwrap_or(0);
        let mut records = Vec::new();
        // Newest day first, so a cut at RECORDS_MAX keeps the most recent history.
        let to_ms = now_ms.saturating_add(60_000);
        for day in 0..days {
            let left = RECORDS_MAX - records.len();
            if left == 0 {
                break;
            }
            let chunk_to = to_ms.saturating_sub(day * DAY_MS);
            let query = RequestsQuery { from_ms: chunk_to.saturating_sub(DAY_MS), to_ms: chunk_to, limit: left };
            records.extend(store.requests(query).await?);
        }
        Ok(P99Tables::compute(&budgets, &records, now_ms))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::budget::BudgetSpec;
    use tollgate_core::protocol::{Principal, Tokens, UsageRecord};

    fn budget(json: &str) -> Budget {
        Budget::from_spec(serde_json::from_str::<BudgetSpec>(json).unwrap()).unwrap()
    }

    const P99: &str = r#"{"id":"p","scope":"team:a","limit":"1","window":"day","reserve":"p99","reserve_excess_limit":"0.10","reserve_min_samples":3}"#;

    #[test]
    fn p99_is_the_nearest_rank_and_needs_the_minimum_samples() {
        let mut hundred: Vec<u64> = (1..=100).rev().collect();
        assert_eq!(p99(&mut hundred, 20), Some(99));
        let mut two_hundred: Vec<u64> = (1..=200).collect();
        assert_eq!(p99(&mut two_hundred, 20), Some(198));
        assert_eq!(p99(&mut [7, 3, 5], 3), Some(7), "few samples: the largest");
        assert_eq!(p99(&mut [7, 3], 3), None, "below the minimum");
        assert_eq!(p99(&mut [], 1), None);
    }

    #[test]
    fn the_headroom_is_the_grants_share_of_the_excess_limit_and_ends_when_it_is_used() {
        let b = budget(P99);
        let hard = 1_000_000;
        assert_eq!(excess_headroom(&b, 500_000, hard, 0), 50_000, "half the allowance, half the excess");
        assert_eq!(excess_headroom(&b, 1_000_000, hard, 80_000), 20_000, "never more than what is left");
        assert_eq!(excess_headroom(&b, 1_000_000, hard, 100_000), 0, "used up: worst cases again");
        assert_eq!(excess_headroom(&b, 0, hard, 0), 0, "nothing granted, nothing beyond");
        let worst = budget(r#"{"id":"w","scope":"team:a","limit":"1","window":"day"}"#);
        assert_eq!(excess_headroom(&worst, 500_000, hard, 0), 0, "worst_case has none");
        let observe = budget(&P99.replace(r#""window":"day""#, r#""window":"day","mode":"observe""#));
        assert_eq!(excess_headroom(&observe, 500_000, hard, 0), 0, "observe never refuses anyway");
    }

    #[test]
    fn slices_that_fit_the_allowance_carry_headroom_that_fits_the_excess_limit() {
        // The bound's arithmetic: whatever the split of hard − spent into slices, Σ h ≤ E.
        let b = budget(P99);
        let hard = 1_000_000;
        for split in [vec![1_000_000], vec![333_333, 333_333, 333_334], vec![1, 999_999], vec![250_000; 4]] {
            let total: Micros = split.iter().map(|g| excess_headroom(&b, *g, hard, 0)).sum();
            assert!(total <= 100_000, "{split:?} → {total}");
        }
    }

    fn record(id: &str, team: &str, model: &str, output: u64, status: u16, finished_at_ms: i64) -> UsageRecord {
        UsageRecord {
            id: id.into(),
            principal: Principal { team: Some(team.into()), ..Default::default() },
            dialect: "openai".into(),
            requested_model: model.into(),
            routed_model: model.into(),
            tokens: Tokens { input: 10, output, ..Default::default() },
            cost_micros: 1,
            status,
            estimated: false,
            started_at_ms: finished_at_ms,
            finished_at_ms,
            p99_reservations: Vec::new(),
        }
    }

    #[test]
    fn the_tables_take_the_scopes_successful_recent_requests_per_routed_model() {
        let b = Arc::new(budget(P99));
        let now = 30 * DAY_MS;
        let records = [
            record("1", "a", "gpt-4o", 100, 200, now - 1),
            record("2", "a", "gpt-4o", 300, 200, now - DAY_MS),
            record("3", "a", "gpt-4o", 200, 200, now - 2 * DAY_MS),
            record("4", "a", "gpt-4o", 9_000, 500, now - 1),
            record("5", "a", "gpt-4o", 9_000, 200, now - 8 * DAY_MS),
            record("6", "b", "gpt-4o", 9_000, 200, now - 1),
            record("7", "a", "o3", 50, 200, now - 1),
        ];
        let tables = P99Tables::compute(&[Arc::clone(&b)], &records, now);
        let models = &tables.by_budget["p"];
        assert_eq!(models.get("gpt-4o"), Some(&300), "a failure, an old record and another team do not count");
        assert_eq!(models.get("o3"), None, "one sample is below reserve_min_samples");
        assert_eq!(tables.records_read, 7);
    }
}
