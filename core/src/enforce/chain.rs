//! Budget decisions across a principal's whole chain of scopes, over a versioned store.
//!
//! A request is charged to every budget on its chain (`org:… → team:… → user:…`), and each scope's
//! [`ScopeEntry`] is a separate shared-data key. [`LeaseStore`] is everything these functions ask
//! of the host: read a key with its version, write it if the version still matches. The plugin
//! implements it over Envoy shared data (process-wide, compare-and-swap); tests implement it in
//! memory and can inject conflicts.
//!
//! Every update is a bounded read-modify-write loop ([`MAX_CAS_ATTEMPTS`]): a worker that keeps
//! losing the race gives up (the request is then treated as if the counter were unreachable)
//! rather than spin.

use super::book::{Ask, ScopeCheck, ScopeEntry};
use super::config::EnforcementSettings;
use super::pool::Pool;
use crate::money::{format_micros, Micros};
use crate::protocol::{BudgetStatus, LeaseRequest, LeaseResponse, P99Reservation};

/// Attempts of one read-modify-write before giving up.
pub const MAX_CAS_ATTEMPTS: usize = 16;

/// What the host's store can say about a write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreError {
    /// Someone wrote the key since we read it.
    Conflict,
    /// The store refused for another reason.
    Failed,
}

/// Versioned key-value storage for scope entries (Envoy shared data in the plugin).
pub trait LeaseStore {
    /// The entry under `scope` and its version; `(None, None)` if absent, `(None, Some(v))` if
    /// present but unreadable (it is then overwritten).
    fn load(&self, scope: &str) -> (Option<ScopeEntry>, Option<u32>);
    /// Writes `entry` if the key's version is still `version` (`None`: the key did not exist).
    fn store(&mut self, scope: &str, entry: &ScopeEntry, version: Option<u32>) -> Result<(), StoreError>;
}

/// Bounded read-modify-write of one entry. `change` returns its result and whether it modified the
/// entry (unchanged entries are not written).
pub fn update<S: LeaseStore, R>(
    store: &mut S,
    scope: &str,
    mut change: impl FnMut(&mut ScopeEntry) -> (R, bool),
) -> Result<R, StoreError> {
    for _ in 0..MAX_CAS_ATTEMPTS {
        let (entry, version) = store.load(scope);
        let mut entry = entry.unwrap_or_default();
        let (result, changed) = change(&mut entry);
        if !changed {
            return Ok(result);
        }
        match store.store(scope, &entry, version) {
            Ok(()) => return Ok(result),
            Err(StoreError::Conflict) => continue,
            Err(StoreError::Failed) => return Err(StoreError::Failed),
        }
    }
    Err(StoreError::Conflict)
}

/// A reservation held by one request: released or settled exactly once (it is consumed by value).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reservation {
    /// The chain the request is charged to (settlement charges every scope on it).
    pub scopes: Vec<String>,
    /// The worst case, reserved on each budget in `reserved_on` except those in `below_worst`.
    pub amount: Micros,
    /// `(scope, budget ids)` the amount was actually reserved on.
    pub reserved_on: Vec<(String, Vec<String>)>,
    /// The `reserve: p99` budgets that held less than the worst case, and how much: the usage
    /// record carries them, so the counter counts what the request cost beyond each.
    pub below_worst: Vec<P99Reservation>,
    /// Reserved from a worker's pools (`reserved_on` names the pooled scopes and the budgets each
    /// pool holds): settled and released in that worker's memory, never here (`super::pool`).
    pub pooled: bool,
}

impl Reservation {
    /// Admission without a reservation (fail-open while the counter is unreachable): settlement
    /// still charges the real cost to every scope.
    pub fn unreserved(scopes: Vec<String>) -> Reservation {
        Reservation { scopes, amount: 0, reserved_on: Vec::new(), below_worst: Vec::new(), pooled: false }
    }

    /// What settling at `actual` gives back to the slices: reserved but not used.
    pub fn returned(&self, actual: Micros) -> Micros {
        let amount = if self.reserved_on.is_empty() { 0 } else { self.amount };
        amount.saturating_sub(actual.max(0)).max(0)
    }

    /// Cost beyond the reservation when settled at `actual` (0 for an unreserved request): the
    /// estimate error the overspend bound adds up.
    pub fn excess(&self, actual: Micros) -> Micros {
        if self.reserved_on.is_empty() {
            0
        } else {
            actual.max(0).saturating_sub(self.amount).max(0)
        }
    }
}

/// Why a request is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub budget_id: String,
    pub scope: String,
    pub spent_micros: Micros,
    pub hard_limit_micros: Micros,
    /// The request's worst case, which did not fit.
    pub needed_micros: Micros,
    /// Window reset, unix seconds.
    pub resets_at: Option<i64>,
}

impl Refusal {
    /// Seconds until the window resets (at least 1); `None` for a budget with no window.
    pub fn retry_after_secs(&self, now_ms: i64) -> Option<u64> {
        retry_after_secs(self.resets_at, now_ms)
    }

    /// The message the client sees, naming the budget and what to do.
    pub fn message(&self) -> String {
        let when = match self.resets_at {
            Some(_) => "retry after the window resets (see Retry-After)",
            None => "ask the budget's owner to raise it",
        };
        format!(
            "budget `{}` (scope {}) has no headroom left for this request: ${} spent of a ${} hard limit, \
             this request may cost up to ${}; {when}",
            self.budget_id,
            self.scope,
            format_micros(self.spent_micros),
            format_micros(self.hard_limit_micros),
            format_micros(self.needed_micros),
        )
    }
}

/// `Retry-After` seconds from a window reset: at least 1, `None` without a window.
pub fn retry_after_secs(resets_at: Option<i64>, now_ms: i64) -> Option<u64> {
    let reset_ms = resets_at?.checked_mul(1000)?;
    let wait_ms = reset_ms.saturating_sub(now_ms).max(1);
    u64::try_from(wait_ms.saturating_add(999) / 1000).ok()
}

/// A budget past its soft threshold, for the `x-tollgate-budget-*` response headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BudgetWarning {
    pub budget_id: String,
    pub utilization_pct: u32,
    pub resets_at: Option<i64>,
}

impl BudgetWarning {
    /// Response headers stating the budget, its utilization and its reset.
    pub fn headers(&self) -> Vec<(&'static str, String)> {
        let mut headers = vec![
            ("x-tollgate-budget-id", self.budget_id.clone()),
            ("x-tollgate-budget-utilization-pct", self.utilization_pct.to_string()),
            ("x-tollgate-budget-status", "soft".to_owned()),
        ];
        if let Some(reset) = self.resets_at {
            headers.push(("x-tollgate-budget-reset", reset.to_string()));
        }
        headers
    }
}

/// The outcome of trying to reserve a request's worst case on its chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Forward the request.
    Admit {
        reservation: Reservation,
        /// Scopes to top up in the background (the request does not wait).
        topup: Vec<String>,
        /// Observe-mode budgets that would have refused.
        would_refuse: Vec<String>,
        /// The most-utilized budget past its soft threshold, if any.
        warning: Option<BudgetWarning>,
        /// Per scope on the chain, its highest budget utilization (percent), as just read.
        utilization: Vec<(String, u32)>,
    },
    /// Pause the request and ask the counter about these scopes ([`begin_refill`]).
    Refill { scopes: Vec<String> },
    /// The counter is unreachable (a recent call failed, or the store kept conflicting).
    Unavailable,
    /// An enforce-mode budget is out of headroom.
    Refuse(Refusal),
}

/// Reserves `ask` on every budget of the chain (the worst case, or less on a `reserve: p99`
/// budget: [`Ask`]) if every enforce-mode budget has room for it. Nothing stays changed unless
/// the request is admitted.
///
/// The common case costs one read-modify-write per scope: each scope is checked and reserved in
/// the same update. At the first scope that does not fit, what was reserved is given back and the
/// rest of the chain is read to decide, so one lease call covers every scope that needs one.
pub fn reserve<S: LeaseStore>(
    store: &mut S,
    scopes: &[String],
    ask: &Ask<'_>,
    now_ms: i64,
    settings: &EnforcementSettings,
) -> Decision {
    let amount = ask.worst.max(0);
    let ask = &Ask { worst: amount, ..*ask };
    let mut reserved_on: Vec<(String, Vec<String>)> = Vec::with_capacity(scopes.len());
    let mut below_worst: Vec<P99Reservation> = Vec::new();
    let mut topup = Vec::new();
    let mut would_refuse = Vec::new();
    let mut warning: Option<BudgetWarning> = None;
    let mut utilization = Vec::with_capacity(scopes.len());
    for (index, scope) in scopes.iter().enumerate() {
        let result = update(store, scope, |entry| match entry.check(ask, now_ms, settings) {
            ScopeCheck::Fits => {
                let ids = entry.reserve(ask);
                let extra = (
                    entry.wants_topup(now_ms, settings),
                    entry.would_refuse(ask),
                    soft_warning(entry),
                    entry.budgets.iter().map(|s| s.utilization_pct()).max().unwrap_or(0),
                );
                (Some((ids, extra)), !entry.budgets.is_empty())
            }
            _ => (None, false),
        });
        match result {
            Ok(Some(((ids, below), (wants_topup, refusing, warn, pct)))) => {
                below_worst.extend(below);
                if wants_topup {
                    topup.push(scope.clone());
                }
                would_refuse.extend(refusing);
                if let Some(w) = warn {
                    if warning.as_ref().is_none_or(|cur| w.utilization_pct > cur.utilization_pct) {
                        warning = Some(w);
                    }
                }
                utilization.push((scope.clone(), pct));
                if !ids.is_empty() {
                    reserved_on.push((scope.clone(), ids));
                }
            }
            Ok(None) => {
                release(store, &Reservation { scopes: scopes.to_vec(), amount, reserved_on, below_worst, pooled: false });
                return decide_short(store, scopes.get(index..).unwrap_or_default(), ask, now_ms, settings);
            }
            Err(_) => {
                release(store, &Reservation { scopes: scopes.to_vec(), amount, reserved_on, below_worst, pooled: false });
                return Decision::Unavailable;
            }
        }
    }
    Decision::Admit {
        reservation: Reservation { scopes: scopes.to_vec(), amount, reserved_on, below_worst, pooled: false },
        topup,
        would_refuse,
        warning,
        utilization,
    }
}

/// Why a request cannot be admitted, from the scopes at and after the first that did not fit
/// (read only): a refusal wins, then an unreachable counter, then the scopes to ask about.
fn decide_short<S: LeaseStore>(
    store: &S,
    scopes: &[String],
    ask: &Ask<'_>,
    now_ms: i64,
    settings: &EnforcementSettings,
) -> Decision {
    let mut refill = Vec::new();
    let mut unavailable = false;
    for scope in scopes {
        let entry = store.load(scope).0.unwrap_or_default();
        match entry.check(ask, now_ms, settings) {
            ScopeCheck::Fits => {}
            ScopeCheck::Refused { budget } => return refusal(&entry, budget, scope, ask.worst),
            ScopeCheck::NeedRefill => refill.push(scope.clone()),
            ScopeCheck::Unavailable => unavailable = true,
        }
    }
    if unavailable {
        Decision::Unavailable
    } else if refill.is_empty() {
        // Everything fits now (another worker changed the book in between): ask again shortly.
        Decision::Refill { scopes: scopes.get(..1).unwrap_or_default().to_vec() }
    } else {
        Decision::Refill { scopes: refill }
    }
}

fn refusal(entry: &ScopeEntry, budget: usize, scope: &str, amount: Micros) -> Decision {
    match entry.budgets.get(budget) {
        Some(slot) => Decision::Refuse(Refusal {
            budget_id: slot.budget_id.clone(),
            scope: scope.to_owned(),
            spent_micros: slot.spent_at_grant.saturating_add(slot.spent_since_grant),
            hard_limit_micros: slot.hard_limit,
            needed_micros: amount,
            resets_at: slot.resets_at,
        }),
        None => Decision::Unavailable,
    }
}

/// The first enforce-mode budget on the chain that has no room for `amount` now, as a refusal:
/// for a request that went back to the counter several times and still does not fit (other
/// requests keep taking the headroom it was granted). `None` if everything fits.
pub fn shortfall<S: LeaseStore>(store: &S, scopes: &[String], ask: &Ask<'_>, now_ms: i64) -> Option<Refusal> {
    scopes.iter().find_map(|scope| {
        let entry = store.load(scope).0?;
        let index = entry
            .budgets
            .iter()
            .position(|s| s.mode == crate::protocol::BudgetMode::Enforce && !s.fits(ask, now_ms))?;
        match refusal(&entry, index, scope, ask.worst) {
            Decision::Refuse(r) => Some(r),
            _ => None,
        }
    })
}

/// The most-utilized budget of an entry at or past its soft threshold (or flagged soft/hard by
/// the counter).
pub fn soft_warning(entry: &ScopeEntry) -> Option<BudgetWarning> {
    entry
        .budgets
        .iter()
        .filter(|s| s.status != BudgetStatus::Ok || s.utilization_pct() >= s.soft_threshold_pct)
        .max_by_key(|s| s.utilization_pct())
        .map(|s| BudgetWarning { budget_id: s.budget_id.clone(), utilization_pct: s.utilization_pct(), resets_at: s.resets_at })
}

/// The highest utilization (percent) of any budget on the chain that this gateway knows of, for
/// routing's `budget_utilization_at_least_pct`. 0 when nothing is known yet.
pub fn max_utilization_pct<S: LeaseStore>(store: &S, scopes: &[String]) -> u32 {
    scopes
        .iter()
        .filter_map(|scope| store.load(scope).0)
        .flat_map(|entry| entry.budgets.into_iter().map(|s| s.utilization_pct()))
        .max()
        .unwrap_or(0)
}

/// Gives a reservation back unused (the request never reached the upstream).
pub fn release<S: LeaseStore>(store: &mut S, reservation: &Reservation) {
    for (scope, ids) in &reservation.reserved_on {
        let _ = update(store, scope, |entry| {
            entry.release(reservation.amount, ids, &reservation.below_worst);
            ((), true)
        });
    }
}

/// What settling a request did, for metrics and routing.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Settled {
    /// Reserved but not used: returned to the slices.
    pub returned_micros: Micros,
    /// Cost beyond the reservation: `(actual - reserved)^+`, the estimate error that the
    /// overspend bound adds up.
    pub excess_micros: Micros,
    /// Per scope with budgets, its highest budget utilization (percent) after this charge.
    pub utilization: Vec<(String, u32)>,
}

/// Replaces the reservation by the real cost on every scope of the chain.
pub fn settle<S: LeaseStore>(store: &mut S, reservation: Reservation, actual: Micros) -> Settled {
    let actual = actual.max(0);
    let mut utilization = Vec::new();
    for scope in &reservation.scopes {
        let ids: &[String] =
            reservation.reserved_on.iter().find(|(s, _)| s == scope).map(|(_, ids)| ids.as_slice()).unwrap_or(&[]);
        let reserved = if ids.is_empty() { 0 } else { reservation.amount };
        let pct = update(store, scope, |entry| {
            if entry.fetched_at_ms == 0 && entry.budgets.is_empty() && actual == 0 {
                return (None, false);
            }
            entry.settle(reserved, ids, &reservation.below_worst, actual);
            (entry.budgets.iter().map(|s| s.utilization_pct()).max(), true)
        });
        if let Ok(Some(pct)) = pct {
            utilization.push((scope.clone(), pct));
        }
    }
    Settled { returned_micros: reservation.returned(actual), excess_micros: reservation.excess(actual), utilization }
}

/// Settles several requests with one read-modify-write per scope instead of one per request and
/// scope. Each settlement is applied to the entry exactly as [`settle`] applies it, in order, so
/// the book ends where settling them one by one would leave it. The utilization is each scope's
/// after all of them (returned per scope with budgets); what each settlement returns or overran is
/// [`Reservation::returned`] / [`Reservation::excess`]. A scope the store fails on keeps its
/// reservations until they lapse, as with [`settle`].
pub fn settle_all<S: LeaseStore>(store: &mut S, settlements: &[(Reservation, Micros)]) -> Vec<(String, u32)> {
    let mut scopes: Vec<&str> = Vec::new();
    for (reservation, _) in settlements {
        for scope in &reservation.scopes {
            if !scopes.contains(&scope.as_str()) {
                scopes.push(scope);
            }
        }
    }
    let mut utilization = Vec::new();
    for scope in scopes {
        let pct = update(store, scope, |entry| {
            let mut changed = false;
            for (reservation, actual) in settlements.iter().filter(|(r, _)| r.scopes.iter().any(|s| s == scope)) {
                let actual = (*actual).max(0);
                if entry.fetched_at_ms == 0 && entry.budgets.is_empty() && actual == 0 {
                    continue;
                }
                let ids: &[String] =
                    reservation.reserved_on.iter().find(|(s, _)| s == scope).map(|(_, ids)| ids.as_slice()).unwrap_or(&[]);
                let reserved = if ids.is_empty() { 0 } else { reservation.amount };
                entry.settle(reserved, ids, &reservation.below_worst, actual);
                changed = true;
            }
            (changed.then(|| entry.budgets.iter().map(|s| s.utilization_pct()).max()).flatten(), changed)
        });
        if let Ok(Some(pct)) = pct {
            utilization.push((scope.to_owned(), pct));
        }
    }
    utilization
}

/// A worker's pool on one scope after [`write_pool`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolWritten {
    /// The pool as it stands in the book now.
    pub pool: Pool,
    /// The scope's free headroom is under the watermark or its lease close to lapsing (pools count
    /// as reserved): top it up in the background.
    pub wants_topup: bool,
    /// The scope's highest budget utilization (percent), as just read.
    pub utilization_pct: u32,
}

/// Writes a worker's pool on `scope` back to the book and sets its free part to `target` in one
/// read-modify-write ([`Pool::write_back`]); a pool with nothing to write costs one read, which
/// refreshes what it knows of the scope. On a store failure the pool is unchanged: its costs
/// stay held (as reservations) and are written by the next attempt.
pub fn write_pool<S: LeaseStore>(
    store: &mut S,
    scope: &str,
    pool: &Pool,
    target: Micros,
    now_ms: i64,
    settings: &EnforcementSettings,
) -> Result<PoolWritten, StoreError> {
    update(store, scope, |entry| {
        let before = entry.clone();
        let written = pool.write_back(entry, target, now_ms, settings);
        let result = PoolWritten {
            wants_topup: entry.wants_topup(now_ms, settings) && !entry.budgets.is_empty(),
            utilization_pct: entry.budgets.iter().map(|s| s.utilization_pct()).max().unwrap_or(0),
            pool: written,
        };
        let changed = before != *entry;
        (result, changed)
    })
}

/// A lease call in flight: which scopes, what it asked for, and what it must remember to apply
/// the answer conservatively.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefillTicket {
    /// `(scope, acked_total at send)`.
    pub scopes: Vec<(String, Micros)>,
    pub want_micros: Micros,
    /// A background top-up holding the scopes' top-up marks (cleared when it lands).
    pub topup: bool,
    /// `(budget id, lease_expires_at_ms)` of every grant applied on the scopes at send: the counter
    /// keeps any newer grant at least as big (`want_micros` cannot count what this gateway commits
    /// of a grant that lands while the call is in flight).
    pub known_leases: Vec<(String, i64)>,
}

impl RefillTicket {
    /// The `POST /v1/leases` body.
    pub fn request(&self, gateway_id: &str) -> LeaseRequest {
        LeaseRequest {
            gateway_id: gateway_id.to_owned(),
            scopes: self.scopes.iter().map(|(s, _)| s.clone()).collect(),
            want_micros: self.want_micros,
            known_leases: Some(self.known_leases.iter().cloned().collect()),
        }
    }

    fn remember_grants(&mut self, entry: &ScopeEntry) {
        self.known_leases.extend(entry.budgets.iter().map(|s| (s.budget_id.clone(), s.expires_at_ms)));
    }
}

/// Prepares a lease call for a paused request: every scope in `scopes`, asking for enough that
/// `need` (its worst case) fits beside the configured slice. Several may be in flight at once.
pub fn begin_refill<S: LeaseStore>(
    store: &mut S,
    scopes: &[String],
    need: Micros,
    settings: &EnforcementSettings,
) -> RefillTicket {
    let mut ticket = RefillTicket { scopes: Vec::with_capacity(scopes.len()), want_micros: 0, topup: false, known_leases: Vec::new() };
    for scope in scopes {
        let entry = store.load(scope).0.unwrap_or_default();
        ticket.want_micros = ticket.want_micros.max(entry.want(need, settings));
        ticket.scopes.push((scope.clone(), entry.acked_total));
        ticket.remember_grants(&entry);
    }
    ticket
}

/// Prepares a background top-up of `scopes`, taking each scope's top-up mark (scopes whose mark
/// another worker holds are left out). `None` if no scope is left.
pub fn begin_topup<S: LeaseStore>(store: &mut S, scopes: &[String], now_ms: i64, settings: &EnforcementSettings) -> Option<RefillTicket> {
    let mut ticket = RefillTicket { scopes: Vec::new(), want_micros: 0, topup: true, known_leases: Vec::new() };
    for scope in scopes {
        let result = update(store, scope, |entry| {
            if entry.begin_topup(now_ms, settings) {
                (Some((entry.want(0, settings), entry.acked_total, entry.clone())), true)
            } else {
                (None, false)
            }
        });
        if let Ok(Some((want, acked, entry))) = result {
            ticket.scopes.push((scope.clone(), acked));
            ticket.want_micros = ticket.want_micros.max(want);
            ticket.remember_grants(&entry);
        }
    }
    (!ticket.scopes.is_empty()).then_some(ticket)
}

/// Applies the counter's answer to every scope of the ticket (a scope absent from the answer has
/// no budget).
pub fn finish_refill<S: LeaseStore>(store: &mut S, ticket: &RefillTicket, response: &LeaseResponse, now_ms: i64) {
    for (scope, acked_at_send) in &ticket.scopes {
        let leases: Vec<_> = response.budgets.iter().filter(|b| &b.scope == scope).collect();
        let _ = update(store, scope, |entry| {
            entry.apply_grant(&leases, ticket.want_micros, *acked_at_send, ticket.topup, now_ms);
            ((), true)
        });
    }
}

/// The lease call failed: remember the failure (and give back the top-up marks).
pub fn fail_refill<S: LeaseStore>(store: &mut S, ticket: &RefillTicket, now_ms: i64) {
    for (scope, _) in &ticket.scopes {
        let _ = update(store, scope, |entry| {
            entry.fail_refill(ticket.topup, now_ms);
            ((), true)
        });
    }
}

/// Usage records acknowledged (or, with `dropped`, given up on): per scope, the total cost.
pub fn acknowledge<S: LeaseStore>(store: &mut S, costs_by_scope: &[(String, Micros)], dropped: bool) {
    for (scope, cost) in costs_by_scope {
        let _ = update(store, scope, |entry| {
            if entry.fetched_at_ms == 0 && entry.budgets.is_empty() {
                return ((), false);
            }
            if dropped {
                entry.forget(*cost);
            } else {
                entry.acknowledge(*cost);
            }
            ((), true)
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::enforce::book::tests::lease;
    use crate::enforce::config::test_settings;
    use crate::protocol::BudgetMode;
    use std::collections::BTreeMap;

    /// A versioned in-memory store.
    #[derive(Default)]
    struct Mem(BTreeMap<String, (ScopeEntry, u32)>);

    impl LeaseStore for Mem {
        fn load(&self, scope: &str) -> (Option<ScopeEntry>, Option<u32>) {
            self.0.get(scope).map_or((None, None), |(e, v)| (Some(e.clone()), Some(*v)))
        }
        fn store(&mut self, scope: &str, entry: &ScopeEntry, version: Option<u32>) -> Result<(), StoreError> {
            let current = self.0.get(scope).map(|(_, v)| *v);
            if current.is_some() && current != version {
                return Err(StoreError::Conflict);
            }
            self.0.insert(scope.to_owned(), (entry.clone(), current.unwrap_or(0) + 1));
            Ok(())
        }
    }

    fn scopes(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    /// A store where each scope was granted `granted` (want = `want`) at t=1000, lease until 60_000.
    fn book(grants: &[(&str, Micros, Micros)]) -> Mem {
        let mut mem = Mem::default();
        for (scope, granted, want) in grants {
            let mut e = ScopeEntry::default();
            e.apply_grant(&[&lease(&format!("b-{scope}"), scope, *granted, 60_000)], *want, 0, false, 1_000);
            mem.0.insert(scope.to_string(), (e, 1));
        }
        mem
    }

    #[test]
    fn a_request_is_reserved_on_every_budget_of_its_chain() {
        let s = test_settings();
        let mut mem = book(&[("team:a", 1_000_000, 1_000_000), ("user:u", 1_000_000, 1_000_000)]);
        let Decision::Admit { reservation, .. } = reserve(&mut mem, &scopes(&["team:a", "user:u"]), &Ask::worst_case(300_000), 2_000, &s) else {
            panic!("admitted")
        };
        assert_eq!(reservation.reserved_on.len(), 2);
        for scope in ["team:a", "user:u"] {
            assert_eq!(mem.0[scope].0.budgets[0].reserved, 300_000);
        }
        let settled = settle(&mut mem, reservation, 100_000);
        assert_eq!((settled.returned_micros, settled.excess_micros), (200_000, 0));
        assert_eq!(settled.utilization, [("team:a".to_owned(), 1), ("user:u".to_owned(), 1)], "100k of 10M spent");
        for scope in ["team:a", "user:u"] {
            let slot = &mem.0[scope].0.budgets[0];
            assert_eq!((slot.reserved, slot.slice), (0, 900_000));
        }
    }

    proptest::proptest! {
        /// Settling a tick's worth of requests at once leaves the book exactly where settling
        /// them one by one would, and reports the same returned and excess amounts.
        #[test]
        fn settling_many_at_once_equals_settling_one_by_one(
            requests in proptest::collection::vec((0usize..4, 0i64..400_000, 0i64..600_000), 1..12),
        ) {
            let s = test_settings();
            let chains = [scopes(&["team:a", "user:u"]), scopes(&["team:a"]), scopes(&["user:u", "key:k"]), scopes(&["team:a", "user:v"])];
            let mut one_by_one = book(&[("team:a", 5_000_000, 5_000_000), ("user:u", 2_000_000, 2_000_000)]);
            let mut at_once = book(&[("team:a", 5_000_000, 5_000_000), ("user:u", 2_000_000, 2_000_000)]);
            let mut reserved = Vec::new();
            for (chain, amount, actual) in &requests {
                let chain = &chains[*chain];
                let a = reserve(&mut one_by_one, chain, &Ask::worst_case(*amount), 2_000, &s);
                let b = reserve(&mut at_once, chain, &Ask::worst_case(*amount), 2_000, &s);
                proptest::prop_assert_eq!(&a, &b);
                let reservation = match a {
                    Decision::Admit { reservation, .. } => reservation,
                    _ => Reservation::unreserved(chain.clone()),
                };
                reserved.push((reservation, *actual));
            }
            let settled: Vec<(Micros, Micros)> = reserved
                .iter()
                .map(|(r, actual)| settle(&mut one_by_one, r.clone(), *actual))
                .map(|x| (x.returned_micros, x.excess_micros))
                .collect();
            settle_all(&mut at_once, &reserved);
            let derived: Vec<(Micros, Micros)> = reserved.iter().map(|(r, actual)| (r.returned(*actual), r.excess(*actual))).collect();
            proptest::prop_assert_eq!(derived, settled);
            let entries = |m: &Mem| m.0.iter().map(|(k, (e, _))| (k.clone(), e.clone())).collect::<Vec<_>>();
            proptest::prop_assert_eq!(entries(&at_once), entries(&one_by_one));
        }
    }

    #[test]
    fn a_refusal_anywhere_on_the_chain_leaves_nothing_reserved() {
        let s = test_settings();
        // user:u was granted less than asked: its budget is dry.
        let mut mem = book(&[("team:a", 1_000_000, 1_000_000), ("user:u", 100_000, 1_000_000)]);
        match reserve(&mut mem, &scopes(&["team:a", "user:u"]), &Ask::worst_case(300_000), 1_500, &s) {
            Decision::Refuse(r) => {
                assert_eq!((r.budget_id.as_str(), r.scope.as_str(), r.needed_micros), ("b-user:u", "user:u", 300_000));
                assert!(r.message().contains("`b-user:u`") && r.message().contains("$0.300000"), "{}", r.message());
            }
            other => panic!("expected a refusal, got {other:?}"),
        }
        assert_eq!(mem.0["team:a"].0.budgets[0].reserved, 0);
    }

    #[test]
    fn every_scope_that_needs_the_counter_is_asked_in_one_call() {
        let s = test_settings();
        let mut mem = book(&[("team:a", 1_000_000, 1_000_000)]);
        let chain = scopes(&["org:x", "team:a", "user:u"]);
        assert_eq!(reserve(&mut mem, &chain, &Ask::worst_case(10), 2_000, &s), Decision::Refill { scopes: scopes(&["org:x", "user:u"]) });
        let ticket = begin_refill(&mut mem, &scopes(&["org:x", "user:u"]), 10, &s);
        assert_eq!(ticket.request("gw").scopes, ["org:x", "user:u"]);
        assert_eq!(ticket.want_micros, s.lease_slice_micros);
        // The answer: user:u has a budget, org:x has none.
        let answer = LeaseResponse { budgets: vec![lease("b-user", "user:u", 1_000_000, 60_000)] };
        finish_refill(&mut mem, &ticket, &answer, 2_100);
        assert!(matches!(reserve(&mut mem, &chain, &Ask::worst_case(10), 2_200, &s), Decision::Admit { .. }));
    }

    #[test]
    fn a_failed_call_puts_the_chain_under_the_failure_mode_until_recheck() {
        let s = test_settings();
        let mut mem = Mem::default();
        let chain = scopes(&["team:a"]);
        let ticket = begin_refill(&mut mem, &chain, 10, &s);
        fail_refill(&mut mem, &ticket, 5_000);
        assert_eq!(reserve(&mut mem, &chain, &Ask::worst_case(10), 5_100, &s), Decision::Unavailable);
        assert!(matches!(reserve(&mut mem, &chain, &Ask::worst_case(10), 5_000 + s.recheck_after_ms, &s), Decision::Refill { .. }));
    }

    #[test]
    fn top_ups_are_one_at_a_time_per_scope() {
        let s = test_settings();
        let mut mem = book(&[("team:a", 300_000, 1_000_000)]);
        let chain = scopes(&["team:a"]);
        let first = begin_topup(&mut mem, &chain, 2_000, &s);
        assert!(first.as_ref().is_some_and(|t| t.topup));
        assert_eq!(begin_topup(&mut mem, &chain, 2_001, &s), None, "the mark is held");
        let answer = LeaseResponse { budgets: vec![lease("b-team:a", "team:a", 1_000_000, 61_000)] };
        finish_refill(&mut mem, &first.unwrap_or_else(|| panic!("ticket")), &answer, 2_010);
        assert!(begin_topup(&mut mem, &chain, 2_020, &s).is_some(), "the mark is released by the answer");
    }

    #[test]
    fn a_lease_call_names_the_grants_it_was_sent_knowing() {
        let s = test_settings();
        let mut mem = book(&[("team:a", 300_000, 1_000_000)]);
        let chain = scopes(&["team:a", "user:u"]);
        let known = Some(BTreeMap::from([("b-team:a".to_owned(), 60_000)]));
        assert_eq!(begin_refill(&mut mem, &chain, 10, &s).request("gw").known_leases, known, "user:u: no grant known");
        let topup = begin_topup(&mut mem, &chain, 2_000, &s).unwrap_or_else(|| panic!("ticket"));
        assert_eq!(topup.request("gw").known_leases, known);
    }

    #[test]
    fn observe_budgets_admit_and_name_themselves() {
        let s = test_settings();
        let mut l = lease("watch", "team:a", 0, 60_000);
        l.mode = BudgetMode::Observe;
        l.spent_micros = 10_000_000;
        let mut e = ScopeEntry::default();
        e.apply_grant(&[&l], 1_000_000, 0, false, 1_000);
        let mut mem = Mem::default();
        mem.0.insert("team:a".into(), (e, 1));
        match reserve(&mut mem, &scopes(&["team:a"]), &Ask::worst_case(50_000), 2_000, &s) {
            Decision::Admit { would_refuse, warning, .. } => {
                assert_eq!(would_refuse, ["watch"]);
                assert_eq!(warning.map(|w| w.utilization_pct), Some(100));
            }
            other => panic!("observe never refuses, got {other:?}"),
        }
    }

    #[test]
    fn a_request_that_keeps_missing_out_is_refused_by_the_budget_it_does_not_fit() {
        let mem = book(&[("team:a", 1_000_000, 1_000_000), ("user:u", 200_000, 200_000)]);
        let chain = scopes(&["team:a", "user:u"]);
        let r = shortfall(&mem, &chain, &Ask::worst_case(300_000), 2_000).unwrap_or_else(|| panic!("user:u is short"));
        assert_eq!((r.budget_id.as_str(), r.scope.as_str()), ("b-user:u", "user:u"));
        assert_eq!(shortfall(&mem, &chain, &Ask::worst_case(100_000), 2_000), None);
    }

    #[test]
    fn retry_after_counts_whole_seconds_to_the_reset() {
        assert_eq!(retry_after_secs(None, 0), None);
        assert_eq!(retry_after_secs(Some(100), 40_000), Some(60));
        assert_eq!(retry_after_secs(Some(100), 40_001), Some(60), "rounded up");
        assert_eq!(retry_after_secs(Some(100), 99_500), Some(1));
        assert_eq!(retry_after_secs(Some(100), 200_000), Some(1), "already reset: retry now-ish");
    }

    #[test]
    fn warnings_become_headers() {
        let w = BudgetWarning { budget_id: "team-x".into(), utilization_pct: 85, resets_at: Some(1_800_000_000) };
        assert_eq!(
            w.headers(),
            [
                ("x-tollgate-budget-id", "team-x".to_owned()),
                ("x-tollgate-budget-utilization-pct", "85".to_owned()),
                ("x-tollgate-budget-status", "soft".to_owned()),
                ("x-tollgate-budget-reset", "1800000000".to_owned()),
            ]
        );
    }

    #[test]
    fn utilization_for_routing_is_the_highest_on_the_chain() {
        let mut mem = book(&[("team:a", 1_000_000, 1_000_000), ("user:u", 1_000_000, 1_000_000)]);
        if let Some((e, _)) = mem.0.get_mut("user:u") {
            e.budgets[0].spent_at_grant = 8_500_000;
        }
        assert_eq!(max_utilization_pct(&mem, &scopes(&["team:a", "user:u"])), 85);
        assert_eq!(max_utilization_pct(&mem, &scopes(&["org:unknown"])), 0);
    }
}
