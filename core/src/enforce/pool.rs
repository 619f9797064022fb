//! Worker-local lease pools: a worker's own share of a scope's slice, so that a request in steady
//! state reserves and settles in the worker's memory, with no shared-data call.
//!
//! # Why
//! The lease book lives in Envoy shared data so that every worker draws on one slice; but each
//! read or write of it is a host call (in V8 about a microsecond plus the entry's decode and
//! encode), and reserving on a budgeted scope cost a read and a compare-and-swap write per request.
//! A pool moves that work off the request path: on its tick, a worker that saw steady traffic on a
//! scope takes a part of the scope's free slice into a [`Pool`] with one read-modify-write. The
//! taken amount is added to every budget's `reserved` in the shared entry, exactly like one more
//! request in flight, so no other worker (and no lease call's `want`) can spend or give it away.
//! Requests then reserve from the pool and settle into it in worker memory; the next tick writes
//! what they cost ([`Pool::write_back`]: released from `reserved`, charged to the slices and to
//! `unacked`, as [`ScopeEntry::settle`] would have) and resizes the pool, in one read-modify-write
//! per scope, before that tick queues the usage records.
//!
//! # The bound
//! Per budget, the shared entry's `reserved` is the sum of the shared-path reservations and of
//! every pool's `taken`; a pool takes only what [`BudgetSlot::available`] says is free, and inside
//! a pool `free + reserved + consumed = taken` always holds. A request is admitted from a pool only
//! if its worst case fits the pool's `free`, so the worst cases of the requests in flight plus the
//! costs not yet written never exceed what the shared entry holds for them: the argument of
//! docs/enforcement.md ("The bound") is unchanged, with a pool standing for the requests it
//! admits. Costs settled in a pool are written to the book before their records are queued, so the
//! counter never acknowledges a cost the book has not charged (as with deferred settlements).
//! The randomized simulation (`simulation.rs`) runs gateways whose workers use pools.
//!
//! # What is never pooled
//! [`poolable`] keeps the shared path (today's, exact) for any scope with an observe-mode budget
//! (its would-refuse report reads spend per request), a `reserve: p99` budget (its hold, fits and
//! excess headroom are per model and per request), a budget whose last grant was capped (the
//! counter has nothing more to give: the last of the slice should serve whichever worker needs
//! it, and a refusal should see all of it), or a lapsed lease. A pool is also never used past its
//! lease's expiry as last read ([`Pool::admits`]). When a scope stops being poolable the next write
//! returns the pool's free part.

use super::book::{ScopeEntry, REFILL_SLACK_MS};
use super::config::EnforcementSettings;
use crate::money::Micros;
use crate::protocol::BudgetMode;

/// One worker's pool on one scope.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Pool {
    /// The budgets whose `reserved` holds [`Self::taken`] (empty: the pool holds nothing).
    pub held_in: Vec<String>,
    /// What this pool holds in each of those budgets' `reserved` in the shared entry.
    pub taken: Micros,
    /// Free for new requests (negative after a request cost more than its worst case).
    pub free: Micros,
    /// The worst cases of the requests in flight admitted from this pool.
    pub reserved: Micros,
    /// Real costs of requests settled from this pool, not yet written to the shared entry.
    pub consumed: Micros,
    /// The entry as last written, with this worker's settled costs added to its spend since:
    /// warnings and utilization for requests admitted from the pool.
    pub seen: ScopeEntry,
    /// The earliest lease expiry of the held budgets, as last read (counter clock, unix ms).
    pub expires_at_ms: i64,
}

impl Pool {
    /// Whether a request with this worst case can be admitted from the pool now.
    pub fn admits(&self, worst: Micros, now_ms: i64) -> bool {
        !self.held_in.is_empty() && now_ms < self.expires_at_ms && self.free >= worst.max(0)
    }

    /// Reserves a worst case (after [`Self::admits`]).
    pub fn reserve(&mut self, worst: Micros) {
        let worst = worst.max(0);
        self.free = self.free.saturating_sub(worst);
        self.reserved = self.reserved.saturating_add(worst);
    }

    /// Gives a reservation back unused.
    pub fn release(&mut self, worst: Micros) {
        let worst = worst.max(0);
        self.reserved = self.reserved.saturating_sub(worst);
        self.free = self.free.saturating_add(worst);
    }

    /// Replaces a reservation by the real cost: the unused part is free again at once, the cost
    /// waits for the next [`Self::write_back`].
    pub fn settle(&mut self, worst: Micros, actual: Micros) {
        let (worst, actual) = (worst.max(0), actual.max(0));
        self.reserved = self.reserved.saturating_sub(worst);
        self.free = self.free.saturating_add(worst).saturating_sub(actual);
        self.consumed = self.consumed.saturating_add(actual);
        for slot in &mut self.seen.budgets {
            slot.spent_since_grant = slot.spent_since_grant.saturating_add(actual);
        }
    }

    /// Nothing held, nothing to write: the pool can be forgotten.
    pub fn is_empty(&self) -> bool {
        self.taken == 0 && self.reserved == 0 && self.consumed == 0
    }

    /// Writes this pool into `entry` (the scope's shared entry, inside one read-modify-write) and
    /// returns the pool as it stands afterwards; `self` is untouched, so a write that loses the
    /// compare-and-swap can be redone on a fresh read.
    ///
    /// First the costs settled from the pool: what the pool no longer holds (the consumed costs,
    /// less any overrun) leaves `reserved`, and the costs are charged to every budget and to
    /// `unacked`. Then its free part is set to `target`: lowered, or raised by at most half of what
    /// every held budget has free, and only while the scope is [`poolable`] with the same budgets
    /// it was taken on (otherwise the free part goes back).
    pub fn write_back(&self, entry: &mut ScopeEntry, target: Micros, now_ms: i64, settings: &EnforcementSettings) -> Pool {
        let mut p = self.clone();
        let keep = p.reserved.max(0).saturating_add(p.free.max(0));
        let released = p.taken.saturating_sub(keep).max(0);
        entry.release(released, &p.held_in, &[]);
        if p.consumed != 0 {
            entry.settle(0, &[], &[], p.consumed);
        }
        p.consumed = 0;
        p.free = p.free.max(0);
        p.taken = keep;

        let ids = budget_ids(entry);
        let same_budgets = !p.held_in.is_empty() && p.held_in == ids;
        let mut target = target.max(0);
        if !poolable(entry, now_ms, settings) || !(same_budgets || p.taken == 0) {
            target = 0;
        }
        if p.taken == 0 && target > 0 {
            p.held_in = ids;
        }
        if target < p.free {
            entry.release(p.free - target, &p.held_in, &[]);
            p.free = target;
        } else if target > p.free {
            let room = entry
                .budgets
                .iter()
                .filter(|s| p.held_in.contains(&s.budget_id))
                .map(|s| s.available(now_ms).max(0) / 2)
                .min()
                .unwrap_or(0);
            let extra = (target - p.free).min(room);
            if extra > 0 {
                for slot in entry.budgets.iter_mut().filter(|s| p.held_in.contains(&s.budget_id)) {
                    slot.reserved = slot.reserved.saturating_add(extra);
                }
                p.free += extra;
            }
        }
        p.taken = p.reserved.max(0).saturating_add(p.free);
        if p.taken == 0 {
            p.held_in.clear();
        }
        p.expires_at_ms =
            entry.budgets.iter().filter(|s| p.held_in.contains(&s.budget_id)).map(|s| s.expires_at_ms).min().unwrap_or(0);
        p.seen = entry.clone();
        p
    }
}

/// The budget ids of an entry, in the entry's order.
fn budget_ids(entry: &ScopeEntry) -> Vec<String> {
    entry.budgets.iter().map(|s| s.budget_id.clone()).collect()
}

/// Whether a worker may hold a pool on this scope now: it has budgets, all in enforce mode with
/// the worst-case policy, none capped at its last grant, every lease live for longer than a
/// top-up takes to land. See the module doc for why each of the others keeps the shared path.
pub fn poolable(entry: &ScopeEntry, now_ms: i64, settings: &EnforcementSettings) -> bool {
    let margin = i64::try_from(settings.call_timeout_ms).unwrap_or(i64::MAX).saturating_add(REFILL_SLACK_MS);
    !entry.budgets.is_empty()
        && entry.budgets.iter().all(|s| {
            s.mode == BudgetMode::Enforce
                && s.reserve_output_tokens.is_empty()
                && s.excess_headroom == 0
                && s.reserved_beyond == 0
                && !s.capped
                && now_ms < s.expires_at_ms.saturating_sub(margin)
        })
}

/// How big a pool to keep: twice the worst cases this worker admitted on the scope over its last
/// tick (a pool refilled every tick then covers a tick of traffic with a tick to spare), at most
/// half the configured slice; nothing below `min_requests` admissions a tick (light traffic keeps
/// the shared path, which holds nothing back from other workers).
pub fn target(admitted: u32, worst_cases: Micros, min_requests: u32, settings: &EnforcementSettings) -> Micros {
    if admitted < min_requests.max(1) {
        return 0;
    }
    worst_cases.max(0).saturating_mul(2).min(settings.lease_slice_micros / 2)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;
    use crate::enforce::book::tests::lease;
    use crate::enforce::config::test_settings;
    use proptest::prelude::*;

    fn granted(amount: Micros) -> ScopeEntry {
        let mut e = ScopeEntry::default();
        e.apply_grant(&[&lease("b1", "team:a", amount, 600_000)], amount, 0, false, 1_000);
        e
    }

    #[test]
    fn a_pool_is_a_reservation_in_the_shared_entry_and_its_costs_are_written_as_settlements() {
        let s = test_settings();
        let mut e = granted(1_000_000);
        let p = Pool::default().write_back(&mut e, 300_000, 2_000, &s);
        assert_eq!((p.taken, p.free, p.held_in.clone()), (300_000, 300_000, vec!["b1".to_owned()]));
        assert_eq!(e.budgets[0].reserved, 300_000, "the pool is held like a request in flight");
        let mut p = p;
        assert!(p.admits(100_000, 2_000));
        p.reserve(100_000);
        p.reserve(100_000);
        p.settle(100_000, 40_000);
        assert_eq!((p.free, p.reserved, p.consumed), (160_000, 100_000, 40_000));
        assert_eq!(e.budgets[0].reserved, 300_000, "nothing written until the tick");
        let p = p.write_back(&mut e, 300_000, 2_020, &s);
        assert_eq!(e.budgets[0].slice, 960_000, "the cost is charged");
        assert_eq!(e.unacked, 40_000);
        assert_eq!(e.budgets[0].reserved, 400_000, "100,000 in flight + the pool's free part back to 300,000");
        assert_eq!((p.taken, p.free, p.reserved, p.consumed), (400_000, 300_000, 100_000, 0));
        let mut p = p;
        p.settle(100_000, 100_000);
        let p = p.write_back(&mut e, 0, 2_040, &s);
        assert!(p.is_empty() && p.held_in.is_empty());
        assert_eq!((e.budgets[0].reserved, e.budgets[0].slice, e.unacked), (0, 860_000, 140_000));
    }

    #[test]
    fn an_overrun_is_charged_in_full_and_the_pool_holds_no_less_than_its_requests() {
        let s = test_settings();
        let mut e = granted(1_000_000);
        let mut p = Pool::default().write_back(&mut e, 100_000, 2_000, &s);
        p.reserve(60_000);
        p.reserve(40_000);
        p.settle(60_000, 150_000);
        assert_eq!(p.free, -90_000);
        assert!(!p.admits(1, 2_000));
        let p = p.write_back(&mut e, 0, 2_020, &s);
        assert_eq!((e.budgets[0].reserved, p.taken, p.free), (40_000, 40_000, 0), "the request still in flight stays held");
        assert_eq!(e.budgets[0].slice, 850_000);
    }

    #[test]
    fn capped_observe_p99_and_lapsing_scopes_are_not_pooled_and_a_pool_is_given_back_when_one_becomes_so() {
        let s = test_settings();
        let mut e = granted(1_000_000);
        let p = Pool::default().write_back(&mut e, 100_000, 2_000, &s);
        assert_eq!(p.taken, 100_000);
        let mut capped = e.clone();
        capped.budgets[0].capped = true;
        let back = p.write_back(&mut capped, 100_000, 2_000, &s);
        assert_eq!((back.taken, capped.budgets[0].reserved), (0, 0), "capped: the pool goes back");
        let mut observe = granted(1_000_000);
        observe.budgets[0].mode = BudgetMode::Observe;
        assert!(!poolable(&observe, 2_000, &s));
        let mut p99 = granted(1_000_000);
        p99.budgets[0].reserve_output_tokens.push(("m".into(), 10));
        assert!(!poolable(&p99, 2_000, &s));
        assert!(!poolable(&granted(1_000_000), 600_000, &s), "lapsed");
        assert!(!poolable(&ScopeEntry::default(), 2_000, &s), "no budget");
        assert!(!p.admits(1, 600_000), "never used past the lease's expiry");
    }

    #[test]
    fn a_pool_takes_at_most_half_of_what_is_free_and_a_new_budget_on_the_scope_gives_it_back() {
        let s = test_settings();
        let mut e = granted(100_000);
        let p = Pool::default().write_back(&mut e, 300_000, 2_000, &s);
        assert_eq!(p.free, 50_000);
        let mut grown = e.clone();
        grown.apply_grant(&[&lease("b1", "team:a", 100_000, 700_000), &lease("b2", "team:a", 100_000, 700_000)], 100_000, 0, false, 2_010);
        assert_eq!(grown.budgets[0].reserved, 50_000, "the pool survives the grant as a reservation");
        let back = p.write_back(&mut grown, 300_000, 2_020, &s);
        assert_eq!((back.taken, grown.budgets[0].reserved, grown.budgets[1].reserved), (0, 0, 0));
    }

    #[test]
    fn the_target_follows_the_traffic_of_the_last_tick() {
        let s = test_settings();
        assert_eq!(target(1, 5_000, 2, &s), 0, "light traffic keeps the shared path");
        assert_eq!(target(4, 20_000, 2, &s), 40_000);
        assert_eq!(target(10_000, i64::MAX, 2, &s), s.lease_slice_micros / 2);
    }

    /// One worker's requests in flight from its pool: worst cases.
    #[derive(Default, Clone)]
    struct Worker {
        pool: Pool,
        in_flight: Vec<Micros>,
    }

    #[derive(Debug, Clone)]
    enum Op {
        /// Admit on a worker: from its pool if it fits, else on the shared entry.
        Admit { worker: usize, worst: Micros },
        /// Settle a request at `pct` % of its worst case (never above).
        Settle { pick: usize, pct: u8 },
        Release { pick: usize },
        /// A worker's tick: write its pool back, resized.
        Tick { worker: usize, target: Micros },
        /// A grant for what the book asks (a counter with headroom).
        Grant,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            5 => (0usize..3, 0i64..200_000).prop_map(|(worker, worst)| Op::Admit { worker, worst }),
            3 => (any::<usize>(), 0u8..=100).prop_map(|(pick, pct)| Op::Settle { pick, pct }),
            1 => any::<usize>().prop_map(|pick| Op::Release { pick }),
            3 => (0usize..3, 0i64..600_000).prop_map(|(worker, target)| Op::Tick { worker, target }),
            1 => Just(Op::Grant),
        ]
    }

    proptest! {
        /// Over random interleavings of three workers' pools and shared-path requests on one
        /// scope, with no request costing more than its worst case: the shared entry's `reserved`
        /// is exactly the shared-path reservations plus every pool's `taken`, and it never exceeds
        /// the slice (the worst cases in flight and the costs not yet written always fit).
        #[test]
        fn pools_and_reservations_never_exceed_the_slice(ops in prop::collection::vec(op(), 0..200)) {
            let s = test_settings();
            let mut e = granted(1_000_000);
            let mut workers = vec![Worker::default(); 3];
            // (worker or None for the shared path, worst)
            let mut in_flight: Vec<(Option<usize>, Micros)> = Vec::new();
            let mut now = 2_000;
            for op in ops {
                now += 1;
                match op {
                    Op::Admit { worker, worst } => {
                        let w = &mut workers[worker];
                        if w.pool.admits(worst, now) {
                            w.pool.reserve(worst);
                            w.in_flight.push(worst);
                            in_flight.push((Some(worker), worst));
                        } else if e.budgets[0].available(now) >= worst {
                            e.reserve(&crate::enforce::book::Ask::worst_case(worst));
                            in_flight.push((None, worst));
                        }
                    }
                    Op::Settle { pick, .. } | Op::Release { pick } if !in_flight.is_empty() => {
                        let (who, worst) = in_flight.remove(pick % in_flight.len());
                        let actual = match op { Op::Settle { pct, .. } => worst * i64::from(pct) / 100, _ => -1 };
                        match who {
                            Some(wi) => {
                                let w = &mut workers[wi];
                                if let Some(i) = w.in_flight.iter().position(|x| *x == worst) { w.in_flight.remove(i); }
                                if actual < 0 { w.pool.release(worst) } else { w.pool.settle(worst, actual) }
                            }
                            None if actual < 0 => e.release(worst, &["b1".to_owned()], &[]),
                            None => e.settle(worst, &["b1".to_owned()], &[], actual),
                        }
                    }
                    Op::Settle { .. } | Op::Release { .. } => {}
                    Op::Tick { worker, target } => {
                        let w = &mut workers[worker];
                        w.pool = w.pool.write_back(&mut e, target, now, &s);
                    }
                    Op::Grant => {
                        let want = e.want(0, &s);
                        e.apply_grant(&[&lease("b1", "team:a", want, 600_000 + now)], want, e.acked_total, false, now);
                    }
                }
                let shared: Micros = in_flight.iter().filter(|(w, _)| w.is_none()).map(|(_, x)| *x).sum();
                let pools: Micros = workers.iter().map(|w| w.pool.taken).sum();
                let unwritten: Micros = workers.iter().map(|w| w.pool.consumed).sum();
                for w in &workers {
                    prop_assert_eq!(w.pool.free + w.pool.reserved + w.pool.consumed, w.pool.taken);
                    prop_assert!(w.pool.free >= 0);
                    prop_assert_eq!(w.pool.reserved, w.in_flight.iter().sum::<Micros>());
                }
                prop_assert_eq!(e.budgets[0].reserved, shared + pools);
                prop_assert!(e.budgets[0].reserved <= e.budgets[0].slice, "reserved {} > slice {}", e.budgets[0].reserved, e.budgets[0].slice);
                prop_assert!(unwritten <= pools);
            }
        }
    }
}
