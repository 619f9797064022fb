//! The in-memory book: budgets, spend per day bucket, lease slices and exemptions, with the lease
//! and charging rules. Pure — no I/O, no clock — so the rules are tested here once and any backend
//! that keeps its hot state in process (the SQLite store does) can reuse them.
//!
//! Why in memory: a lease call must answer in microseconds and see every acknowledged charge. The
//! durable copy of spend lives in the store's own tables and is loaded back at start-up.

use crate::budget::{assess, Budget, Exemption};
use crate::store::BudgetState;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use tollgate_core::money::Micros;
use tollgate_core::protocol::{BudgetLease, BudgetMode, LeaseRequest, LeaseResponse, P99Reservation, Principal, Tokens};

/// Scope key → the budgets covering it. Rebuilt (rarely) when budgets change, shared by `Arc` so
/// the ingest path can match records without holding the book's lock.
#[derive(Debug, Default)]
pub struct ScopeIndex {
    /// Scope key → the budgets on exactly that key (plain budgets and templates).
    keyed: HashMap<String, Vec<Arc<Budget>>>,
    /// Selected key (`team:a`, or `use_case:<id>`) → the selector budgets taking it in.
    selected: HashMap<String, Vec<Arc<Budget>>>,
}

impl ScopeIndex {
    pub fn build<'a>(budgets: impl IntoIterator<Item = &'a Arc<Budget>>) -> ScopeIndex {
        let mut index = ScopeIndex::default();
        for budget in budgets {
            match &budget.selector {
                None => index.keyed.entry(budget.scope.clone()).or_default().push(Arc::clone(budget)),
                Some(selector) => {
                    for key in selector.index_keys() {
                        index.selected.entry(key).or_default().push(Arc::clone(budget));
                    }
                }
            }
        }
        index
    }

    /// The budgets on exactly `key` (no selector): what decides whether a template applies.
    pub fn get(&self, key: &str) -> Option<&Vec<Arc<Budget>>> {
        self.keyed.get(key)
    }

    pub fn contains_key(&self, key: &str) -> bool {
        self.keyed.contains_key(key)
    }

    /// Every budget covering the scope key `key`, each once: those on it, then the selector
    /// budgets taking it in (a workflow key is also looked up by each possible use case).
    pub fn covering(&self, key: &str) -> Vec<&Arc<Budget>> {
        let mut out: Vec<&Arc<Budget>> = self.keyed.get(key).into_iter().flatten().collect();
        let mut selected: Vec<&Vec<Arc<Budget>>> = self.selected.get(key).into_iter().collect();
        if let Some(id) = key.strip_prefix("workflow:") {
            selected.extend(id.match_indices('/').filter_map(|(i, _)| self.selected.get(&format!("use_case:{}", &id[i + 1..]))));
        }
        for b in selected.into_iter().flatten() {
            if !out.iter().any(|o| o.id == b.id) {
                out.push(b);
            }
        }
        out
    }
}

/// Who holds a lease slice: the gateway, or for a selector budget the gateway *under one scope
/// key* (`edge-1@team:a`). The gateway keeps a slice per scope key of its principals' chains, so a
/// selector budget matched through `team:a` and `team:b` is two slices there; counting them as two
/// holders keeps `spent + every live slice ≤ hard limit` true. (Gateway ids never hold `@`.)
pub fn lease_holder(gateway_id: &str, budget: &Budget, key: &str) -> String {
    match budget.selector {
        Some(_) => format!("{gateway_id}@{key}"),
        None => gateway_id.to_owned(),
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Spend {
    pub micros: Micros,
    pub tokens: u64,
    /// `reserve: p99` budgets: what requests cost beyond what they reserved
    /// ([`crate::reserve`]).
    pub excess: Micros,
}

#[derive(Debug, Clone, Copy)]
struct Slice {
    micros: Micros,
    expires_at_ms: i64,
}

/// Charges accumulated over one or more batches before they are applied together.
#[derive(Debug, Default)]
pub struct Charges {
    /// (budget id, day bucket) → amount to add.
    pub spend: HashMap<(String, i64), Spend>,
    /// (lease holder ([`lease_holder`]), budget id) → amount to take off that slice.
    pub slices: HashMap<(String, String), Micros>,
}

impl Charges {
    /// Adds one new record's cost to every budget covering its principal's chain, once per budget
    /// (a selector budget is charged once whatever the keys it is matched through; the slice that
    /// shrinks is the one held under the first of them). A budget the record reserved below its
    /// worst case on (`reservations`) also counts what it cost beyond that reservation.
    #[allow(clippy::too_many_arguments)]
    pub fn charge(
        &mut self,
        index: &ScopeIndex,
        gateway_id: &str,
        principal: &Principal,
        cost: Micros,
        tokens: &Tokens,
        reservations: &[P99Reservation],
        now_ms: i64,
    ) {
        let mut charged: Vec<&str> = Vec::new();
        let keys = principal.scope_keys();
        for key in &keys {
            for budget in index.covering(key) {
                if charged.contains(&budget.id.as_str()) {
                    continue;
                }
                charged.push(&budget.id);
                let bucket = budget.span(now_ms).bucket;
                let s = self.spend.entry((budget.id.clone(), bucket)).or_default();
                s.micros = s.micros.saturating_add(cost);
                s.tokens = s.tokens.saturating_add(tokens.total());
                s.excess = s.excess.saturating_add(crate::reserve::record_excess(reservations, &budget.id, cost));
                if cost > 0 {
                    let slice = self.slices.entry((lease_holder(gateway_id, budget, key), budget.id.clone())).or_default();
                    *slice = slice.saturating_add(cost);
                }
            }
        }
    }

    pub fn is_empty(&self) -> bool {
        self.spend.is_empty() && self.slices.is_empty()
    }
}

/// The hot state of every budget.
#[derive(Debug)]
pub struct Book {
    budgets: BTreeMap<String, Arc<Budget>>,
    index: Arc<ScopeIndex>,
    spend: HashMap<String, BTreeMap<i64, Spend>>,
    /// budget id → lease holder ([`lease_holder`]) → slice.
    leases: HashMap<String, HashMap<String, Slice>>,
    exemptions: Vec<Exemption>,
    lease_ttl_ms: i64,
}

impl Book {
    pub fn new(lease_ttl_ms: i64) -> Book {
        Book {
            budgets: BTreeMap::new(),
            index: Arc::default(),
            spend: HashMap::new(),
            leases: HashMap::new(),
            exemptions: Vec::new(),
            lease_ttl_ms,
        }
    }

    pub fn budget(&self, id: &str) -> Option<&Arc<Budget>> {
        self.budgets.get(id)
    }

    pub fn index(&self) -> Arc<ScopeIndex> {
        Arc::clone(&self.index)
    }

    /// Adds or replaces a budget. Its spend counters stay (day buckets are window-independent).
    pub fn put_budget(&mut self, budget: Budget) {
        self.budgets.insert(budget.id.clone(), Arc::new(budget));
        self.rebuild_index();
    }

    /// Removes a budget with its spend and leases.
    pub fn remove_budget(&mut self, id: &str) -> Option<Arc<Budget>> {
        let removed = self.budgets.remove(id)?;
        self.spend.remove(id);
        self.leases.remove(id);
        self.rebuild_index();
        Some(removed)
    }

    fn rebuild_index(&mut self) {
        self.index = Arc::new(ScopeIndex::build(self.budgets.values()));
    }

    /// Raises a spend bucket to at least `spend` (a budget starting from the ledger).
    pub fn raise_spend(&mut self, budget_id: &str, bucket: i64, spend: Spend) {
        let s = self.spend.entry(budget_id.to_owned()).or_default().entry(bucket).or_default();
        s.micros = s.micros.max(spend.micros);
        s.tokens = s.tokens.max(spend.tokens);
    }

    /// Restores a spend bucket at start-up.
    pub fn load_spend(&mut self, budget_id: &str, bucket: i64, spend: Spend) {
        self.spend.entry(budget_id.to_owned()).or_default().insert(bucket, spend);
    }

    /// Restores a persisted lease slice at start-up.
    pub fn load_lease(&mut self, budget_id: &str, gateway_id: &str, micros: Micros, expires_at_ms: i64) {
        self.leases.entry(budget_id.to_owned()).or_default().insert(gateway_id.to_owned(), Slice { micros, expires_at_ms });
    }

    pub fn put_exemption(&mut self, exemption: Exemption) {
        match self.exemptions.iter_mut().find(|e| e.id == exemption.id) {
            Some(slot) => *slot = exemption,
            None => self.exemptions.push(exemption),
        }
    }

    pub fn exemptions(&self) -> &[Exemption] {
        &self.exemptions
    }

    /// Applies committed charges: spend grows, the reporting gateway's slices shrink (not below 0).
    pub fn apply(&mut self, charges: &Charges) {
        for ((budget_id, bucket), add) in &charges.spend {
            if !self.budgets.contains_key(budget_id) {
                continue;
            }
            let s = self.spend.entry(budget_id.clone()).or_default().entry(*bucket).or_default();
            s.micros = s.micros.saturating_add(add.micros);
            s.tokens = s.tokens.saturating_add(add.tokens);
            s.excess = s.excess.saturating_add(add.excess);
        }
        for ((gateway_id, budget_id), used) in &charges.slices {
            if let Some(slice) = self.leases.get_mut(budget_id).and_then(|g| g.get_mut(gateway_id)) {
                slice.micros = slice.micros.saturating_sub(*used).max(0);
            }
        }
    }

    fn window_spend(&self, budget: &Budget, now_ms: i64) -> (Spend, crate::window::WindowSpan) {
        let span = budget.span(now_ms);
        let mut total = Spend::default();
        if let Some(buckets) = self.spend.get(&budget.id) {
            for s in buckets.range(span.from..).map(|(_, s)| s) {
                total.micros = total.micros.saturating_add(s.micros);
                total.tokens = total.tokens.saturating_add(s.tokens);
                total.excess = total.excess.saturating_add(s.excess);
            }
        }
        (total, span)
    }

    fn exempt_micros(&self, scope: &str, now_ms: i64) -> Micros {
        self.exemptions
            .iter()
            .filter(|e| e.scope == scope && e.active_at(now_ms))
            .fold(0, |sum: Micros, e| sum.saturating_add(e.amount_micros))
    }

    fn live_slices(&self, budget_id: &str, now_ms: i64) -> impl Iterator<Item = (&String, Micros)> {
        self.leases
            .get(budget_id)
            .into_iter()
            .flatten()
            .filter(move |(_, s)| s.expires_at_ms > now_ms)
            .map(|(g, s)| (g, s.micros))
    }

    /// One budget's figures now.
    pub fn state(&self, budget: &Budget, now_ms: i64) -> BudgetState {
        let (spent, span) = self.window_spend(budget, now_ms);
        let exempt = self.exempt_micros(&budget.scope, now_ms);
        let a = assess(budget, spent.micros, spent.tokens, exempt);
        BudgetState {
            budget: budget.to_spec(),
            spent_micros: spent.micros,
            tokens_used: spent.tokens,
            exemption_micros: exempt,
            effective_limit_micros: a.effective_limit_micros,
            hard_limit_micros: a.hard_limit_micros,
            leased_micros: self.live_slices(&budget.id, now_ms).fold(0, |s: Micros, (_, m)| s.saturating_add(m)),
            status: a.status,
            window_start: span.from,
            resets_at: span.resets_at,
            reserve_excess_micros: spent.excess,
        }
    }

    pub fn states(&self, now_ms: i64) -> Vec<BudgetState> {
        self.budgets.values().map(|b| self.state(b, now_ms)).collect()
    }

    /// Grants or tops up `request.gateway_id`'s slice on every budget of `request.scopes`.
    ///
    /// Enforce: slice = clamp(want, 0, hard − spent − other gateways' live slices), except that a
    /// live slice granted after the last grant the gateway had seen when it sent the call
    /// ([`LeaseRequest::keeps_slice`]) is not lowered while the budget has room for it: the gateway
    /// may have committed it, and `want` could not count that. Observe: slice = want. The caller
    /// holds the book's lock for the whole call, which is what makes concurrent grants unable to
    /// over-commit a budget.
    pub fn grant(&mut self, request: &LeaseRequest, now_ms: i64) -> LeaseResponse {
        let expires_at_ms = now_ms.saturating_add(self.lease_ttl_ms);
        let mut seen = HashSet::new();
        let mut out = Vec::new();
        for scope in &request.scopes {
            let budgets: Vec<Arc<Budget>> = self.index.covering(scope).into_iter().cloned().collect();
            for budget in budgets {
                // A selector budget is answered once per key it is matched through, each a slice
                // of its own ([`lease_holder`]); the gateway files each under that key.
                let holder = lease_holder(&request.gateway_id, &budget, scope);
                if !seen.insert((budget.id.clone(), holder.clone())) {
                    continue;
                }
                let (spent, span) = self.window_spend(&budget, now_ms);
                let exempt = self.exempt_micros(&budget.scope, now_ms);
                let a = assess(&budget, spent.micros, spent.tokens, exempt);
                let others = self
                    .live_slices(&budget.id, now_ms)
                    .filter(|(g, _)| **g != holder)
                    .fold(0, |s: Micros, (_, m)| s.saturating_add(m));
                let kept = self
                    .leases
                    .get(&budget.id)
                    .and_then(|g| g.get(&holder))
                    .filter(|s| s.expires_at_ms > now_ms && request.keeps_slice(&budget.id, s.expires_at_ms))
                    .map_or(0, |s| s.micros);
                let tokens_exhausted = budget.token_limit.is_some_and(|t| spent.tokens >= t);
                let granted = match budget.mode {
                    BudgetMode::Observe => request.want_micros.max(0),
                    BudgetMode::Enforce if tokens_exhausted => 0,
                    BudgetMode::Enforce => {
                        let headroom = a.hard_limit_micros.saturating_sub(spent.micros).saturating_sub(others);
                        request.want_micros.max(kept).min(headroom).max(0)
                    }
                };
                let gateways = self.leases.entry(budget.id.clone()).or_default();
                gateways.retain(|_, s| s.expires_at_ms > now_ms);
                gateways.insert(holder, Slice { micros: granted, expires_at_ms });
                out.push(BudgetLease {
                    budget_id: budget.id.clone(),
                    scope: scope.clone(),
                    mode: budget.mode,
                    granted_micros: granted,
                    spent_micros: spent.micros,
                    limit_micros: a.effective_limit_micros,
                    hard_limit_micros: a.hard_limit_micros,
                    soft_threshold_pct: budget.soft_thresholds_pct.first().copied().unwrap_or(100),
                    status: a.status,
                    resets_at: span.resets_at,
                    lease_expires_at_ms: expires_at_ms,
                    reserve_output_tokens: Default::default(),
                    reserve_excess_micros: crate::reserve::excess_headroom(&budget, granted, a.hard_limit_micros, spent.excess),
                });
            }
        }
        LeaseResponse { budgets: out }
    }

    /// Drops spend buckets that no window can reach any more (older than 367 days).
    pub fn prune(&mut self, now_ms: i64) {
        let horizon = now_ms / 1000 - 367 * crate::window::DAY_SECS;
        for buckets in self.spend.values_mut() {
            // Bucket 0 belongs to `none` windows and is kept.
            buckets.retain(|b, _| *b == 0 || *b >= horizon);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::budget::BudgetSpec;
    use tollgate_core::protocol::BudgetStatus;

    const DAY_MS: i64 = 86_400_000;

    fn budget(json: &str) -> Budget {
        Budget::from_spec(serde_json::from_str::<BudgetSpec>(json).unwrap()).unwrap()
    }

    fn book_with(budgets: &[&str]) -> Book {
        let mut book = Book::new(30_000);
        for b in budgets {
            book.put_budget(budget(b));
        }
        book
    }

    fn lease(gateway: &str, scopes: &[&str], want: Micros) -> LeaseRequest {
        LeaseRequest {
            gateway_id: gateway.into(),
            scopes: scopes.iter().map(|s| s.to_string()).collect(),
            want_micros: want,
            known_leases: None,
        }
    }

    /// A lease call that says which grants the gateway had seen when it sent it.
    fn lease_knowing(gateway: &str, scopes: &[&str], want: Micros, known: &[(&str, i64)]) -> LeaseRequest {
        LeaseRequest {
            known_leases: Some(known.iter().map(|(b, at)| (b.to_string(), *at)).collect()),
            ..lease(gateway, scopes, want)
        }
    }

    fn charge(book: &mut Book, gateway: &str, team: &str, cost: Micros, now_ms: i64) {
        let mut c = Charges::default();
        let p = Principal { team: Some(team.into()), ..Default::default() };
        c.charge(&book.index(), gateway, &p, cost, &Tokens { input: 10, ..Default::default() }, &[], now_ms);
        book.apply(&c);
    }

    const TEAM: &str = r#"{"id":"t","scope":"team:a","limit":"0.000100","window":"day"}"#;

    #[test]
    fn slices_of_all_gateways_never_exceed_headroom() {
        let mut book = book_with(&[TEAM]);
        assert_eq!(book.grant(&lease("g1", &["team:a"], 60), 0).budgets[0].granted_micros, 60);
        assert_eq!(book.grant(&lease("g2", &["team:a"], 60), 0).budgets[0].granted_micros, 40, "capped by g1's slice");
        assert_eq!(book.grant(&lease("g1", &["team:a"], 80), 0).budgets[0].granted_micros, 60, "top-up capped too");
        let state = book.state(book.budget("t").unwrap(), 0);
        assert_eq!(state.leased_micros, 100);
    }

    #[test]
    fn a_call_sent_before_a_grant_landed_never_lowers_that_grant() {
        let mut book = book_with(&[TEAM]);
        let first = book.grant(&lease_knowing("g1", &["team:a"], 80, &[]), 0).budgets[0].clone();
        assert_eq!(first.granted_micros, 80);
        // Sent before the 80 landed (g1 knew no grant), answered after: g1 may have committed all 80.
        let kept = book.grant(&lease_knowing("g1", &["team:a"], 50, &[]), 1).budgets[0].clone();
        assert_eq!(kept.granted_micros, 80, "kept");
        assert_eq!(book.grant(&lease("g2", &["team:a"], 100), 2).budgets[0].granted_micros, 20, "only the rest");
        // Sent knowing only the first grant: the second is newer, kept.
        let renewed = book.grant(&lease_knowing("g1", &["team:a"], 70, &[("t", first.lease_expires_at_ms)]), 3);
        assert_eq!(renewed.budgets[0].granted_micros, 80);
        assert!(kept.lease_expires_at_ms > first.lease_expires_at_ms);
        // Sent knowing the grant it renews: g1 counted what it committed, so it may ask for less.
        let smaller = lease_knowing("g1", &["team:a"], 50, &[("t", renewed.budgets[0].lease_expires_at_ms)]);
        assert_eq!(book.grant(&smaller, 4).budgets[0].granted_micros, 50, "an informed smaller renewal");
        // Usage still shrinks a kept slice, and a lapsed slice keeps nothing.
        charge(&mut book, "g1", "a", 40, 5);
        assert_eq!(book.grant(&lease_knowing("g1", &["team:a"], 0, &[]), 6).budgets[0].granted_micros, 10, "usage shrank it");
        assert_eq!(book.grant(&lease_knowing("g1", &["team:a"], 0, &[]), 30_006).budgets[0].granted_micros, 0, "lapsed");
    }

    #[test]
    fn usage_moves_cost_from_the_slice_to_spend() {
        let mut book = book_with(&[TEAM]);
        book.grant(&lease("g1", &["team:a"], 50), 0);
        charge(&mut book, "g1", "a", 30, 0);
        let state = book.state(book.budget("t").unwrap(), 0);
        assert_eq!((state.spent_micros, state.leased_micros, state.tokens_used), (30, 20, 10));
        charge(&mut book, "g1", "a", 30, 0);
        assert_eq!(book.state(book.budget("t").unwrap(), 0).leased_micros, 0, "saturates at 0");
        let l = book.grant(&lease("g2", &["team:a"], 100), 0);
        assert_eq!((l.budgets[0].granted_micros, l.budgets[0].status), (40, BudgetStatus::Ok), "60% spent");
        charge(&mut book, "g2", "a", 25, 0);
        assert_eq!(book.grant(&lease("g2", &["team:a"], 100), 0).budgets[0].status, BudgetStatus::Soft, "85% spent");
    }

    #[test]
    fn expired_slices_return_to_headroom() {
        let mut book = book_with(&[TEAM]);
        book.grant(&lease("g1", &["team:a"], 100), 0);
        assert_eq!(book.grant(&lease("g2", &["team:a"], 100), 29_999).budgets[0].granted_micros, 0);
        assert_eq!(book.grant(&lease("g2", &["team:a"], 100), 30_000).budgets[0].granted_micros, 100);
    }

    #[test]
    fn spend_resets_with_the_window() {
        let mut book = book_with(&[TEAM]);
        charge(&mut book, "g1", "a", 100, 0);
        let l = book.grant(&lease("g1", &["team:a"], 10), DAY_MS - 1);
        assert_eq!((l.budgets[0].granted_micros, l.budgets[0].status, l.budgets[0].resets_at), (0, BudgetStatus::Hard, Some(86_400)));
        let l = book.grant(&lease("g1", &["team:a"], 10), DAY_MS);
        assert_eq!((l.budgets[0].granted_micros, l.budgets[0].spent_micros), (10, 0));
    }

    #[test]
    fn observe_budgets_grant_what_is_asked_and_still_report() {
        let mut book = book_with(&[r#"{"id":"o","scope":"team:a","limit":"0.000100","window":"none","mode":"observe"}"#]);
        charge(&mut book, "g1", "a", 150, 0);
        let l = book.grant(&lease("g1", &["team:a"], 500), 0);
        assert_eq!((l.budgets[0].granted_micros, l.budgets[0].status, l.budgets[0].resets_at), (500, BudgetStatus::Hard, None));
    }

    #[test]
    fn exemptions_add_headroom_while_active() {
        let mut book = book_with(&[TEAM]);
        charge(&mut book, "g1", "a", 100, 0);
        book.put_exemption(Exemption {
            id: 1,
            scope: "team:a".into(),
            amount_micros: 50,
            starts_at_ms: 1_000,
            ends_at_ms: 2_000,
            reason: "launch".into(),
            approver: "cfo".into(),
            created_by: "alice".into(),
            created_at_ms: 0,
            revoked_at_ms: None,
        });
        assert_eq!(book.grant(&lease("g1", &["team:a"], 80), 999).budgets[0].granted_micros, 0);
        assert_eq!(book.grant(&lease("g1", &["team:a"], 80), 1_000).budgets[0].granted_micros, 50);
        assert_eq!(book.grant(&lease("g1", &["team:a"], 80), 2_000).budgets[0].granted_micros, 0, "expired by itself");
    }

    #[test]
    fn every_budget_on_the_chain_is_charged_once() {
        let mut book = book_with(&[
            TEAM,
            r#"{"id":"u","scope":"user:bob","limit":"1","window":"month"}"#,
            r#"{"id":"w","scope":"workflow:a/ci","limit":"1","window":"week"}"#,
            r#"{"id":"other","scope":"team:b","limit":"1","window":"day"}"#,
        ]);
        let mut c = Charges::default();
        let p = Principal { team: Some("a".into()), user: Some("bob".into()), use_case: Some("ci".into()), ..Default::default() };
        c.charge(&book.index(), "g1", &p, 7, &Tokens::default(), &[], 0);
        book.apply(&c);
        let spent: Vec<(String, Micros)> = book.states(0).into_iter().map(|s| (s.budget.id, s.spent_micros)).collect();
        assert_eq!(spent, [("other".into(), 0), ("t".into(), 7), ("u".into(), 7), ("w".into(), 7)]);
        let l = book.grant(&lease("g1", &["team:a", "team:a", "user:bob", "org:none"], 1), 0);
        assert_eq!(l.budgets.iter().map(|b| b.budget_id.as_str()).collect::<Vec<_>>(), ["t", "u"]);
    }
    const AB: &str = r#"{"id":"ab","scope":{"team":["a","b"]},"limit":"0.000100","window":"day"}"#;

    #[test]
    fn a_selector_budget_is_one_allowance_and_each_key_holds_a_slice_of_its_own() {
        let mut book = book_with(&[AB]);
        let l = book.grant(&lease("g1", &["team:a"], 60), 0);
        assert_eq!((l.budgets[0].scope.as_str(), l.budgets[0].granted_micros), ("team:a", 60));
        assert_eq!(book.grant(&lease("g1", &["team:b"], 60), 0).budgets[0].granted_micros, 40, "g1's slice under team:a counts");
        assert!(book.grant(&lease("g1", &["team:c"], 60), 0).budgets.is_empty(), "team c is not selected");
        let both = book.grant(&lease("g1", &["team:a", "team:b"], 60), 0);
        let got: Vec<(&str, Micros)> = both.budgets.iter().map(|b| (b.scope.as_str(), b.granted_micros)).collect();
        assert_eq!(got, [("team:a", 60), ("team:b", 40)], "answered once per key");
        assert_eq!(book.state(book.budget("ab").unwrap(), 0).leased_micros, 100);
        // A record is charged once and shrinks the slice held under the key it matched.
        charge(&mut book, "g1", "a", 30, 0);
        charge(&mut book, "g1", "c", 1_000, 0);
        let state = book.state(book.budget("ab").unwrap(), 0);
        assert_eq!((state.spent_micros, state.leased_micros), (30, 70));
        assert_eq!(book.grant(&lease("g1", &["team:b"], 100), 0).budgets[0].granted_micros, 40, "100 - 30 spent - 30 left under team:a");
    }

    #[test]
    fn a_use_case_selector_is_found_from_every_workflow_key_and_templates_still_see_no_budget() {
        let mut book = book_with(&[r#"{"id":"bots","scope":{"use_case":["ci"]},"limit":"1","window":"day"}"#]);
        let index = book.index();
        let ids = |key: &str| index.covering(key).iter().map(|b| b.id.clone()).collect::<Vec<_>>();
        assert_eq!(ids("workflow:a/ci"), ["bots"]);
        assert_eq!(ids("workflow:x/y/ci"), ["bots"], "a team id may hold `/`");
        assert!(ids("workflow:a/chat").is_empty() && ids("team:ci").is_empty());
        assert!(!index.contains_key("workflow:a/ci"), "a selector is no budget of that scope's own");
        let p = Principal { team: Some("a".into()), use_case: Some("ci".into()), ..Default::default() };
        let mut c = Charges::default();
        c.charge(&index, "g1", &p, 5, &Tokens::default(), &[], 0);
        book.apply(&c);
        assert_eq!(book.state(book.budget("bots").unwrap(), 0).spent_micros, 5);
    }
}
