//! The lease book: what this gateway holds of each budget, kept per scope in Envoy shared data.
//!
//! One [`ScopeEntry`] per scope key (`team:platform`), holding a [`BudgetSlot`] for each budget the
//! counter attached to that scope. Entries live in process-wide shared data so every worker of an
//! Envoy process draws on the same slices; they are updated by version-checked read-modify-write
//! (see [`super::chain`]), and encoded compactly ([`ScopeEntry::encode`]) because every request
//! reads them.
//!
//! # The local mirror of a slice
//! The counter keeps, per `(gateway, budget)`, a slice `S`. A grant sets `S = g`; every usage record
//! it ingests from this gateway shrinks `S` by the record's cost. Locally, [`BudgetSlot::slice`]
//! mirrors `S` *minus the cost of records the counter has not ingested yet*:
//!
//! - settling a request with actual cost `a` subtracts `a` at once (the counter will subtract it
//!   from `S` when the record arrives);
//! - an acknowledged record changes nothing (both sides have subtracted it);
//! - applying a grant sets `slice = g - pending`, where `pending` is every cost not acknowledged
//!   before the lease call was sent: `unacked` now, plus what was acknowledged since the send
//!   (`acked_total - acked_total at send`, the call's [`super::chain::RefillTicket`] remembers
//!   the latter). Records acknowledged after the send may or may not be reflected in `g`; counting
//!   them is conservative.
//! - several lease calls may be in flight at once (each paused request asks for itself); an answer
//!   the counter computed *before* the one already applied is ignored. The counter stamps every
//!   grant with `lease_expires_at_ms = its now + TTL`, which orders them. Each call names the
//!   stamps this gateway had applied ([`super::chain::RefillTicket::known_leases`]), and the
//!   counter never lowers a newer live slice for it: a call's `want` cannot count what was
//!   committed on a grant that landed after it was sent.
//!
//! So `slice <= S - (records not yet ingested)` always holds, and a request is admitted only if its
//! worst case fits in `slice - reserved`. That is the local half of the overspend bound
//! (docs/enforcement.md).

use super::config::EnforcementSettings;
use super::reservation::WorstCase;
use crate::money::Micros;
use crate::protocol::{BudgetLease, BudgetMode, BudgetStatus, P99Reservation};

/// What one request asks of the budgets on its chain: its worst case, and what it reserves instead
/// on a budget whose policy is `reserve: p99` (the lease names the p99 output tokens per model).
///
/// Such a budget admits the request only if the cheaper amount fits in its slice **and** the
/// worst case fits in the slice plus the lease's excess headroom; what requests reserved at p99
/// may cost beyond their reservations is then bounded by that headroom (docs/enforcement.md,
/// "Reservation policies").
#[derive(Debug, Clone, Copy)]
pub struct Ask<'a> {
    /// What a `worst_case` budget reserves, and what every budget's slice plus its excess headroom
    /// must hold.
    pub worst: Micros,
    /// The routed model: the key of a lease's p99 output tokens.
    pub model: &'a str,
    /// How the worst case was made (its prompt bound and price), to price the request at fewer
    /// output tokens; `None` reserves the worst case on every budget.
    pub basis: Option<&'a WorstCase>,
}

impl Ask<'static> {
    /// A request that reserves `worst` on every budget, whatever its policy.
    pub fn worst_case(worst: Micros) -> Ask<'static> {
        Ask { worst: worst.max(0), model: "", basis: None }
    }
}

/// This gateway's view of one budget.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BudgetSlot {
    pub budget_id: String,
    pub mode: BudgetMode,
    pub status: BudgetStatus,
    /// Local mirror of the counter-side slice, net of costs the counter has not ingested. May go
    /// negative when a request cost more than it reserved, or in observe mode.
    pub slice: Micros,
    /// Sum of the reservations of requests in flight.
    pub reserved: Micros,
    /// The last grant, as the counter stated it.
    pub granted: Micros,
    /// The last grant was less than asked for: the budget had no more headroom to give.
    pub capped: bool,
    pub granted_at_ms: i64,
    /// Counter clock, unix ms. Past it the slice is back in the counter's headroom.
    pub expires_at_ms: i64,
    /// Spent as of the last grant, plus what this gateway settled since (for utilization).
    pub spent_at_grant: Micros,
    pub spent_since_grant: Micros,
    pub limit: Micros,
    pub hard_limit: Micros,
    pub soft_threshold_pct: u32,
    /// Window reset, unix seconds.
    pub resets_at: Option<i64>,
    /// `reserve: p99` only (empty otherwise): per model, the output tokens a request reserves.
    pub reserve_output_tokens: Vec<(String, u64)>,
    /// `reserve: p99` only: worst-case headroom beyond the slice, as the last grant stated it.
    pub excess_headroom: Micros,
    /// Of the requests in flight that reserved below their worst case here, the sum of
    /// `worst - reserved`: what the excess headroom is holding for them.
    pub reserved_beyond: Micros,
}

impl BudgetSlot {
    /// Free headroom for new reservations; zero or less once the lease has lapsed.
    pub fn available(&self, now_ms: i64) -> Micros {
        if now_ms >= self.expires_at_ms {
            return self.slice.saturating_sub(self.reserved).min(0);
        }
        self.slice.saturating_sub(self.reserved)
    }

    /// What `ask` reserves on this budget: its worst case, or for a model the lease gives p99
    /// output tokens for, the request priced at those (never more than the worst case).
    pub fn hold(&self, ask: &Ask<'_>) -> Micros {
        if self.reserve_output_tokens.is_empty() {
            return ask.worst;
        }
        let Some(basis) = ask.basis else { return ask.worst };
        match self.reserve_output_tokens.iter().find(|(model, _)| model == ask.model) {
            Some((_, tokens)) => basis.at_output(*tokens).clamp(0, ask.worst),
            None => ask.worst,
        }
    }

    /// Whether `ask` fits now: its hold in the free slice, and its worst case in the free slice
    /// plus what the excess headroom still has (nothing once the lease has lapsed).
    pub fn fits(&self, ask: &Ask<'_>, now_ms: i64) -> bool {
        let available = self.available(now_ms);
        if available < self.hold(ask) {
            return false;
        }
        let headroom = if now_ms >= self.expires_at_ms { 0 } else { self.excess_headroom };
        available.saturating_add(headroom).saturating_sub(self.reserved_beyond) >= ask.worst
    }

    /// Utilization in whole percent of `limit` (rounded down), from what this gateway knows.
    pub fn utilization_pct(&self) -> u32 {
        let spent = i128::from(self.spent_at_grant) + i128::from(self.spent_since_grant);
        if self.limit <= 0 {
            return if spent > 0 { 10_000 } else { 0 };
        }
        let pct = (spent.max(0) * 100) / i128::from(self.limit);
        u32::try_from(pct.min(10_000)).unwrap_or(10_000)
    }

    /// Whether the slot carries anything of a `reserve: p99` policy (then the entry is encoded as
    /// version 2).
    fn has_policy_state(&self) -> bool {
        !self.reserve_output_tokens.is_empty() || self.excess_headroom != 0 || self.reserved_beyond != 0
    }

    /// Whether the counter said, recently, that it had nothing more to give.
    pub fn capped_recently(&self, now_ms: i64, settings: &EnforcementSettings) -> bool {
        self.capped && now_ms.saturating_sub(self.granted_at_ms) < settings.recheck_after_ms
    }
}

/// Everything this gateway knows about one scope.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ScopeEntry {
    /// When the counter last answered for this scope (0: never).
    pub fetched_at_ms: i64,
    /// The budgets covering this scope; empty if the scope has none.
    pub budgets: Vec<BudgetSlot>,
    /// Costs settled here whose usage records the counter has not acknowledged.
    pub unacked: Micros,
    /// Costs acknowledged, ever (monotonic; lease calls remember it at send).
    pub acked_total: Micros,
    /// A background top-up for this scope is in flight until then (0: none): one at a time per
    /// process, so a busy scope does not send a top-up per request.
    pub refill_until_ms: i64,
    /// When a lease call last failed (0: the last one succeeded).
    pub failed_at_ms: i64,
}

/// What one scope says about admitting a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ScopeCheck {
    Fits,
    /// Ask the counter (no call in flight, none failed recently).
    NeedRefill,
    /// A lease call failed recently: the counter is unreachable; apply the failure mode.
    Unavailable,
    /// An enforce-mode budget has no headroom left.
    Refused { budget: usize },
}

impl ScopeEntry {
    /// A scope whose answer is known and still good: budgets are attached, or "no budget" is
    /// fresh enough to trust.
    pub fn known(&self, now_ms: i64, settings: &EnforcementSettings) -> bool {
        if self.fetched_at_ms == 0 {
            return false;
        }
        !self.budgets.is_empty() || now_ms.saturating_sub(self.fetched_at_ms) < settings.unbudgeted_scope_ttl_ms
    }

    fn refill_in_flight(&self, now_ms: i64) -> bool {
        self.refill_until_ms > now_ms
    }

    fn failed_recently(&self, now_ms: i64, settings: &EnforcementSettings) -> bool {
        self.failed_at_ms != 0 && now_ms.saturating_sub(self.failed_at_ms) < settings.recheck_after_ms
    }

    /// Ask now, unless a call failed recently.
    fn ask_or_hold(&self, now_ms: i64, settings: &EnforcementSettings) -> ScopeCheck {
        if self.failed_recently(now_ms, settings) {
            ScopeCheck::Unavailable
        } else {
            ScopeCheck::NeedRefill
        }
    }

    /// Decides, without changing anything, whether `amount` fits every enforce-mode budget.
    /// Observe-mode budgets never block, except that an unknown scope must be asked about first.
    pub fn check(&self, ask: &Ask<'_>, now_ms: i64, settings: &EnforcementSettings) -> ScopeCheck {
        if !self.known(now_ms, settings) {
            return self.ask_or_hold(now_ms, settings);
        }
        for (index, slot) in self.budgets.iter().enumerate() {
            if slot.mode == BudgetMode::Observe || slot.fits(ask, now_ms) {
                continue;
            }
            if slot.capped_recently(now_ms, settings) && now_ms < slot.expires_at_ms {
                return ScopeCheck::Refused { budget: index };
            }
            return self.ask_or_hold(now_ms, settings);
        }
        ScopeCheck::Fits
    }

    /// Budget ids of observe-mode budgets that would have refused `amount`: the counter says the
    /// budget is at its hard limit, or what is known spent plus this request passes it. (The
    /// counter grants observe budgets whatever is asked, so their slices say nothing.)
    pub fn would_refuse(&self, ask: &Ask<'_>) -> Vec<String> {
        self.budgets
            .iter()
            .filter(|s| s.mode == BudgetMode::Observe)
            .filter(|s| {
                let spent = s.spent_at_grant.saturating_add(s.spent_since_grant);
                s.status == BudgetStatus::Hard || spent.saturating_add(s.hold(ask)) > s.hard_limit
            })
            .map(|s| s.budget_id.clone())
            .collect()
    }

    /// Reserves `ask` on every budget of the scope (its [`BudgetSlot::hold`] on each). Call only
    /// after [`Self::check`] said `Fits` on this same version of the entry. Returns the budget ids
    /// reserved on, and the budgets where that was less than the worst case.
    pub fn reserve(&mut self, ask: &Ask<'_>) -> (Vec<String>, Vec<P99Reservation>) {
        let mut below_worst = Vec::new();
        for slot in &mut self.budgets {
            let hold = slot.hold(ask);
            slot.reserved = slot.reserved.saturating_add(hold);
            if hold < ask.worst {
                slot.reserved_beyond = slot.reserved_beyond.saturating_add(ask.worst - hold);
                below_worst.push(P99Reservation { budget_id: slot.budget_id.clone(), reserved_micros: hold });
            }
        }
        (self.budgets.iter().map(|s| s.budget_id.clone()).collect(), below_worst)
    }

    /// Gives back a reservation that was never used (the request was refused further down the
    /// chain, or never reached the upstream): `worst` on the budgets in `budget_ids`, except
    /// those in `below_worst`, which held less ([`Self::reserve`]).
    pub fn release(&mut self, worst: Micros, budget_ids: &[String], below_worst: &[P99Reservation]) {
        for slot in self.budgets.iter_mut().filter(|s| budget_ids.contains(&s.budget_id)) {
            match below_worst.iter().find(|r| r.budget_id == slot.budget_id) {
                Some(held) => {
                    slot.reserved = slot.reserved.saturating_sub(held.reserved_micros).max(0);
                    let beyond = worst.saturating_sub(held.reserved_micros).max(0);
                    slot.reserved_beyond = slot.reserved_beyond.saturating_sub(beyond).max(0);
                }
                None => slot.reserved = slot.reserved.saturating_sub(worst).max(0),
            }
        }
    }

    /// Replaces a reservation by the real cost: the reservation is released on the budgets it was
    /// made on, and `actual` is charged to every budget of the scope (the counter charges the
    /// record to all of them), even where it exceeds the reservation.
    pub fn settle(&mut self, worst: Micros, budget_ids: &[String], below_worst: &[P99Reservation], actual: Micros) {
        let actual = actual.max(0);
        self.release(worst, budget_ids, below_worst);
        for slot in &mut self.budgets {
            slot.slice = slot.slice.saturating_sub(actual);
            slot.spent_since_grant = slot.spent_since_grant.saturating_add(actual);
        }
        self.unacked = self.unacked.saturating_add(actual);
    }

    /// The counter acknowledged records of this scope costing `cost` in total.
    pub fn acknowledge(&mut self, cost: Micros) {
        let cost = cost.max(0);
        self.unacked = self.unacked.saturating_sub(cost).max(0);
        self.acked_total = self.acked_total.saturating_add(cost);
    }

    /// Records costing `cost` were dropped and will never reach the counter: stop deducting them
    /// from future grants (the counter's slice never shrinks for them).
    pub fn forget(&mut self, cost: Micros) {
        self.unacked = self.unacked.saturating_sub(cost.max(0)).max(0);
    }

    /// Whether a background top-up is due: some budget's free headroom is under the watermark or
    /// its lease is close to lapsing; and asking now makes sense (no call in flight, none failed
    /// or came back capped recently).
    pub fn wants_topup(&self, now_ms: i64, settings: &EnforcementSettings) -> bool {
        if self.refill_in_flight(now_ms) || self.failed_recently(now_ms, settings) {
            return false;
        }
        if !self.known(now_ms, settings) {
            return true;
        }
        self.budgets.iter().any(|slot| {
            let low = slot.available(now_ms) < settings.refill_watermark_micros;
            let lapsing = slot.expires_at_ms.saturating_sub(now_ms) < settings.renew_before_expiry_ms;
            (low || lapsing) && !slot.capped_recently(now_ms, settings)
        })
    }

    /// The slice to ask for: enough that, once granted, `need` (at least the configured slice) is
    /// free beyond what is reserved and what the counter has yet to deduct; and never less than
    /// this gateway believes it holds (`slice + unacked`), so a grant never shrinks the counter's
    /// slice below what requests in flight and unsent records have already committed.
    pub fn want(&self, need: Micros, settings: &EnforcementSettings) -> Micros {
        let free = need.max(settings.lease_slice_micros);
        let unacked = self.unacked.max(0);
        self.budgets
            .iter()
            .map(|s| s.reserved.max(0).saturating_add(free).max(s.slice).saturating_add(unacked))
            .max()
            .unwrap_or_else(|| free.saturating_add(unacked))
    }

    /// Marks a background top-up as in flight, unless one already is. Returns whether this
    /// caller owns it.
    pub fn begin_topup(&mut self, now_ms: i64, settings: &EnforcementSettings) -> bool {
        if self.refill_in_flight(now_ms) {
            return false;
        }
        let timeout = i64::try_from(settings.call_timeout_ms).unwrap_or(i64::MAX);
        self.refill_until_ms = now_ms.saturating_add(timeout).saturating_add(REFILL_SLACK_MS);
        true
    }

    /// Applies the counter's answer for this scope. `leases` are the answer's budgets whose
    /// `scope` is this one; `want` is what the call asked for; `acked_at_send` is
    /// [`Self::acked_total`] when it was sent; `owned_topup` clears the top-up mark.
    pub fn apply_grant(&mut self, leases: &[&BudgetLease], want: Micros, acked_at_send: Micros, owned_topup: bool, now_ms: i64) {
        let acked_since_send = self.acked_total.saturating_sub(acked_at_send).max(0);
        let pending = self.unacked.max(0).saturating_add(acked_since_send);
        let budgets = leases
            .iter()
            .map(|lease| {
                let existing = self.budgets.iter().find(|s| s.budget_id == lease.budget_id);
                if let Some(slot) = existing.filter(|s| s.expires_at_ms > lease.lease_expires_at_ms) {
                    // The counter made this grant before the one already applied: it is stale.
                    return slot.clone();
                }
                let reserved = existing.map_or(0, |s| s.reserved);
                let reserved_beyond = existing.map_or(0, |s| s.reserved_beyond);
                let mut slice = lease.granted_micros.saturating_sub(pending);
                if let Some(slot) = existing.filter(|s| s.expires_at_ms == lease.lease_expires_at_ms) {
                    // Same counter millisecond: which came last is unknown; keep the smaller.
                    slice = slice.min(slot.slice);
                }
                BudgetSlot {
                    budget_id: lease.budget_id.clone(),
                    mode: lease.mode,
                    status: lease.status,
                    slice,
                    reserved,
                    granted: lease.granted_micros,
                    capped: lease.granted_micros < want,
                    granted_at_ms: now_ms,
                    expires_at_ms: lease.lease_expires_at_ms,
                    spent_at_grant: lease.spent_micros,
                    spent_since_grant: self.unacked.max(0),
                    limit: lease.limit_micros,
                    hard_limit: lease.hard_limit_micros,
                    soft_threshold_pct: lease.soft_threshold_pct,
                    resets_at: lease.resets_at,
                    reserve_output_tokens: lease.reserve_output_tokens.iter().map(|(m, t)| (m.clone(), *t)).collect(),
                    excess_headroom: lease.reserve_excess_micros.max(0),
                    reserved_beyond,
                }
            })
            .collect();
        self.budgets = budgets;
        self.fetched_at_ms = now_ms;
        if owned_topup {
            self.refill_until_ms = 0;
        }
        self.failed_at_ms = 0;
    }

    /// The lease call failed (timeout, refused connection, error status, unreadable answer).
    pub fn fail_refill(&mut self, owned_topup: bool, now_ms: i64) {
        if owned_topup {
            self.refill_until_ms = 0;
        }
        self.failed_at_ms = now_ms.max(1);
    }
}

/// Extra time a top-up mark outlives the call's own timeout before another worker may ask.
pub const REFILL_SLACK_MS: i64 = 500;

// ---- compact encoding ------------------------------------------------------------------------

/// Entries where no budget has a reservation policy other than the worst case.
const FORMAT_VERSION: u8 = 1;
/// Entries with a `reserve: p99` budget: each slot is followed by its excess headroom, what that
/// holds, and the p99 output tokens per model. An entry without one is still written as version 1,
/// so the common case neither grows nor stops being read by a filter that predates policies.
const FORMAT_VERSION_POLICIES: u8 = 2;

impl ScopeEntry {
    /// Compact binary form for Envoy shared data: a version byte, fixed-width little-endian
    /// integers, length-prefixed strings.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(48 + self.budgets.len() * 128);
        let policies = self.budgets.iter().any(BudgetSlot::has_policy_state);
        out.push(if policies { FORMAT_VERSION_POLICIES } else { FORMAT_VERSION });
        for v in [self.fetched_at_ms, self.unacked, self.acked_total, self.refill_until_ms, self.failed_at_ms] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        out.extend_from_slice(&(self.budgets.len().min(u16::MAX as usize) as u16).to_le_bytes());
        for slot in self.budgets.iter().take(u16::MAX as usize) {
            let id = slot.budget_id.as_bytes();
            let id = id.get(..id.len().min(u16::MAX as usize)).unwrap_or_default();
            out.extend_from_slice(&(id.len() as u16).to_le_bytes());
            out.extend_from_slice(id);
            let mode = match slot.mode {
                BudgetMode::Enforce => 0u8,
                BudgetMode::Observe => 1,
            };
            let status = match slot.status {
                BudgetStatus::Ok => 0u8,
                BudgetStatus::Soft => 1,
                BudgetStatus::Hard => 2,
            };
            out.extend_from_slice(&[mode, status, u8::from(slot.capped), u8::from(slot.resets_at.is_some())]);
            out.extend_from_slice(&slot.soft_threshold_pct.to_le_bytes());
            for v in [
                slot.slice,
                slot.reserved,
                slot.granted,
                slot.granted_at_ms,
                slot.expires_at_ms,
                slot.spent_at_grant,
                slot.spent_since_grant,
                slot.limit,
                slot.hard_limit,
                slot.resets_at.unwrap_or(0),
            ] {
                out.extend_from_slice(&v.to_le_bytes());
            }
            if policies {
                out.extend_from_slice(&slot.excess_headroom.to_le_bytes());
                out.extend_from_slice(&slot.reserved_beyond.to_le_bytes());
                let models = slot.reserve_output_tokens.iter().filter(|(m, _)| m.len() <= usize::from(u16::MAX)).take(usize::from(u16::MAX));
                let count = models.clone().count();
                out.extend_from_slice(&(count as u16).to_le_bytes());
                for (model, tokens) in models {
                    out.extend_from_slice(&(model.len() as u16).to_le_bytes());
                    out.extend_from_slice(model.as_bytes());
                    out.extend_from_slice(&tokens.to_le_bytes());
                }
            }
        }
        out
    }

    /// Reads [`Self::encode`]'s output. `None` for anything else (another version, truncation):
    /// the caller treats the scope as unknown and asks the counter again.
    pub fn decode(bytes: &[u8]) -> Option<ScopeEntry> {
        let mut r = Reader { bytes, at: 0 };
        let policies = match r.u8()? {
            FORMAT_VERSION => false,
            FORMAT_VERSION_POLICIES => true,
            _ => return None,
        };
        let mut entry = ScopeEntry {
            fetched_at_ms: r.i64()?,
            unacked: r.i64()?,
            acked_total: r.i64()?,
            refill_until_ms: r.i64()?,
            failed_at_ms: r.i64()?,
            budgets: Vec::new(),
        };
        let count = r.u16()?;
        for _ in 0..count {
            let id_len = usize::from(r.u16()?);
            let budget_id = String::from_utf8(r.take(id_len)?.to_vec()).ok()?;
            let mode = match r.u8()? {
                0 => BudgetMode::Enforce,
                1 => BudgetMode::Observe,
                _ => return None,
            };
            let status = match r.u8()? {
                0 => BudgetStatus::Ok,
                1 => BudgetStatus::Soft,
                2 => BudgetStatus::Hard,
                _ => return None,
            };
            let capped = r.u8()? != 0;
            let has_reset = r.u8()? != 0;
            let soft_threshold_pct = r.u32()?;
            let mut slot = BudgetSlot {
                budget_id,
                mode,
                status,
                capped,
                soft_threshold_pct,
                slice: r.i64()?,
                reserved: r.i64()?,
                granted: r.i64()?,
                granted_at_ms: r.i64()?,
                expires_at_ms: r.i64()?,
                spent_at_grant: r.i64()?,
                spent_since_grant: r.i64()?,
                limit: r.i64()?,
                hard_limit: r.i64()?,
                resets_at: None,
                reserve_output_tokens: Vec::new(),
                excess_headroom: 0,
                reserved_beyond: 0,
            };
            let resets_at = r.i64()?;
            slot.resets_at = has_reset.then_some(resets_at);
            if policies {
                slot.excess_headroom = r.i64()?;
                slot.reserved_beyond = r.i64()?;
                for _ in 0..r.u16()? {
                    let len = usize::from(r.u16()?);
                    let model = String::from_utf8(r.take(len)?.to_vec()).ok()?;
                    slot.reserve_output_tokens.push((model, r.u64()?));
                }
            }
            entry.budgets.push(slot);
        }
        (r.at == bytes.len()).then_some(entry)
    }
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let end = self.at.checked_add(n)?;
        let out = self.bytes.get(self.at..end)?;
        self.at = end;
        Some(out)
    }
    fn u8(&mut self) -> Option<u8> {
        self.take(1)?.first().copied()
    }
    fn u16(&mut self) -> Option<u16> {
        Some(u16::from_le_bytes(self.take(2)?.try_into().ok()?))
    }
    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }
    fn i64(&mut self) -> Option<i64> {
        Some(i64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }
    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::enforce::config::test_settings;
    use proptest::prelude::*;

    pub(crate) fn lease(budget: &str, scope: &str, granted: Micros, expires_at_ms: i64) -> BudgetLease {
        BudgetLease {
            budget_id: budget.into(),
            scope: scope.into(),
            mode: BudgetMode::Enforce,
            granted_micros: granted,
            spent_micros: 0,
            limit_micros: 10_000_000,
            hard_limit_micros: 10_000_000,
            soft_threshold_pct: 80,
            status: BudgetStatus::Ok,
            resets_at: Some(1_800_000_000),
            lease_expires_at_ms: expires_at_ms,
            reserve_output_tokens: Default::default(),
            reserve_excess_micros: 0,
        }
    }

    fn granted(amount: Micros, want: Micros) -> ScopeEntry {
        let mut e = ScopeEntry::default();
        e.apply_grant(&[&lease("b1", "team:a", amount, 60_000)], want, 0, false, 1_000);
        e
    }

    /// gpt-4o's rates ($2.50 / $10 per million tokens): a 1,000-token prompt with no output cap
    /// can cost $0.16634, and $0.0045 at 200 output tokens.
    fn gpt_4o_worst_case() -> WorstCase {
        let price = crate::pricing::ModelPrice {
            base: crate::pricing::TierPrice { input: 2_500_000, output: 10_000_000, ..Default::default() },
            ..Default::default()
        };
        WorstCase { prompt_tokens: 1_000, output_tokens: 16_384, micros: price.worst_case_cost(1_000, 16_384), price }
    }

    /// A `reserve: p99` grant: `granted` in the slice, `headroom` beyond it, p99 200 output tokens
    /// for gpt-4o.
    fn p99_granted(granted: Micros, headroom: Micros) -> ScopeEntry {
        let mut lease = lease("b1", "team:a", granted, 60_000);
        lease.reserve_output_tokens.insert("gpt-4o".into(), 200);
        lease.reserve_excess_micros = headroom;
        let mut e = ScopeEntry::default();
        e.apply_grant(&[&lease], granted, 0, false, 1_000);
        e
    }

    #[test]
    fn a_p99_budget_admits_what_its_p99_cost_fits_while_the_worst_case_fits_its_excess_headroom() {
        let s = test_settings();
        let worst = gpt_4o_worst_case();
        assert_eq!((worst.micros, worst.at_output(200)), (166_340, 4_500));
        let ask = Ask { worst: worst.micros, model: "gpt-4o", basis: Some(&worst) };

        let mut plain = granted(100_000, 100_000);
        assert_eq!(plain.check(&ask, 2_000, &s), ScopeCheck::NeedRefill, "a worst_case budget of $0.10 cannot hold $0.166");

        let mut e = p99_granted(100_000, 200_000);
        assert_eq!(e.check(&ask, 2_000, &s), ScopeCheck::Fits);
        let (ids, below) = e.reserve(&ask);
        assert_eq!(ids, ["b1"]);
        assert_eq!(below, [P99Reservation { budget_id: "b1".into(), reserved_micros: 4_500 }]);
        assert_eq!((e.budgets[0].reserved, e.budgets[0].reserved_beyond), (4_500, 161_840));
        assert_eq!(
            e.check(&ask, 2_000, &s),
            ScopeCheck::NeedRefill,
            "a second worst case would pass slice + headroom (95,500 + 200,000 - 161,840 < 166,340)"
        );

        e.settle(worst.micros, &ids, &below, 3_000);
        assert_eq!((e.budgets[0].slice, e.budgets[0].reserved, e.budgets[0].reserved_beyond), (97_000, 0, 0));
        assert_eq!(e.check(&ask, 2_000, &s), ScopeCheck::Fits, "settled: the headroom is free again");
        assert_eq!(plain.reserve(&Ask::worst_case(100_000)).1, [], "a worst_case budget never holds less than the worst case");
    }

    #[test]
    fn a_p99_budget_reserves_the_worst_case_for_a_model_it_has_no_p99_for_and_nothing_beyond_a_lapsed_lease() {
        let worst = gpt_4o_worst_case();
        let mut e = p99_granted(1_000_000, 200_000);
        let other = Ask { worst: worst.micros, model: "gpt-4o-mini", basis: Some(&worst) };
        let (_, below) = e.reserve(&other);
        assert!(below.is_empty(), "no p99 for the model: the worst case, like any budget");
        assert_eq!((e.budgets[0].reserved, e.budgets[0].reserved_beyond), (166_340, 0));

        let e = p99_granted(100_000, 200_000);
        let ask = Ask { worst: worst.micros, model: "gpt-4o", basis: Some(&worst) };
        assert!(e.budgets[0].fits(&ask, 2_000));
        assert!(!e.budgets[0].fits(&ask, 60_000), "past the lease's expiry neither the slice nor the headroom is there");
        assert!(!e.budgets[0].fits(&Ask::worst_case(worst.micros), 2_000), "without a basis the worst case must fit the slice");
    }

    #[test]
    fn an_entry_is_written_as_version_1_unless_a_budget_has_a_reservation_policy() {
        assert_eq!(granted(100_000, 100_000).encode().first(), Some(&1));
        let e = p99_granted(100_000, 200_000);
        assert_eq!(e.encode().first(), Some(&2));
        assert_eq!(ScopeEntry::decode(&e.encode()), Some(e));
    }

    #[test]
    fn an_unknown_scope_must_be_asked_about_and_top_ups_go_one_at_a_time() {
        let s = test_settings();
        let mut e = ScopeEntry::default();
        assert_eq!(e.check(&Ask::worst_case(1), 0, &s), ScopeCheck::NeedRefill);
        assert!(e.wants_topup(0, &s));
        assert!(e.begin_topup(0, &s));
        assert!(!e.begin_topup(10, &s), "second caller does not own the top-up");
        assert!(!e.wants_topup(10, &s));
        assert_eq!(e.check(&Ask::worst_case(1), 10, &s), ScopeCheck::NeedRefill, "a paused request still asks for itself");
        e.fail_refill(true, 20);
        assert_eq!(e.check(&Ask::worst_case(1), 30, &s), ScopeCheck::Unavailable, "recent failure: apply the failure mode");
        assert_eq!(e.check(&Ask::worst_case(1), 20 + s.recheck_after_ms, &s), ScopeCheck::NeedRefill, "then ask again");
    }

    #[test]
    fn a_stale_grant_never_overwrites_a_newer_one() {
        let mut e = granted(300_000, 1_000_000);
        e.apply_grant(&[&lease("b1", "team:a", 900_000, 59_000)], 1_000_000, 0, false, 1_100);
        assert_eq!(e.budgets[0].slice, 300_000, "computed earlier by the counter: ignored");
        e.apply_grant(&[&lease("b1", "team:a", 900_000, 60_000)], 1_000_000, 0, false, 1_100);
        assert_eq!(e.budgets[0].slice, 300_000, "same counter millisecond: the smaller stands");
        e.apply_grant(&[&lease("b1", "team:a", 900_000, 61_000)], 1_000_000, 0, false, 1_100);
        assert_eq!(e.budgets[0].slice, 900_000);
    }

    #[test]
    fn a_scope_without_budget_admits_until_the_answer_goes_stale() {
        let s = test_settings();
        let mut e = ScopeEntry::default();
        e.apply_grant(&[], 1_000_000, 0, false, 5);
        assert_eq!(e.check(&Ask::worst_case(i64::MAX / 4), 6, &s), ScopeCheck::Fits);
        assert_eq!(e.check(&Ask::worst_case(1), 5 + s.unbudgeted_scope_ttl_ms, &s), ScopeCheck::NeedRefill);
    }

    #[test]
    fn reserve_and_settle_keep_the_arithmetic() {
        let s = test_settings();
        let mut e = granted(1_000_000, 1_000_000);
        assert_eq!(e.check(&Ask::worst_case(600_000), 2_000, &s), ScopeCheck::Fits);
        let ids = e.reserve(&Ask::worst_case(600_000)).0;
        assert_eq!(e.budgets[0].available(2_000), 400_000);
        assert_eq!(e.check(&Ask::worst_case(500_000), 2_000, &s), ScopeCheck::NeedRefill, "does not fit, counter not known to be dry");
        e.settle(600_000, &ids, &[], 250_000);
        assert_eq!(e.budgets[0].available(2_000), 750_000, "unused part returns");
        assert_eq!(e.unacked, 250_000);
        e.acknowledge(250_000);
        assert_eq!(e.budgets[0].available(2_000), 750_000, "an ack does not change the slice");
        assert_eq!((e.unacked, e.acked_total), (0, 250_000));
    }

    #[test]
    fn settle_charges_the_real_cost_even_above_the_reservation() {
        let mut e = granted(1_000_000, 1_000_000);
        let ids = e.reserve(&Ask::worst_case(100_000)).0;
        e.settle(100_000, &ids, &[], 1_300_000);
        assert_eq!(e.budgets[0].reserved, 0);
        assert_eq!(e.budgets[0].slice, -300_000);
    }

    #[test]
    fn a_capped_grant_refuses_until_recheck_then_asks_again() {
        let s = test_settings();
        let e = granted(200_000, 1_000_000);
        assert!(e.budgets[0].capped);
        assert_eq!(e.check(&Ask::worst_case(100_000), 1_500, &s), ScopeCheck::Fits, "what is left can still be used");
        assert_eq!(e.check(&Ask::worst_case(300_000), 1_500, &s), ScopeCheck::Refused { budget: 0 });
        assert_eq!(e.check(&Ask::worst_case(300_000), 1_000 + s.recheck_after_ms, &s), ScopeCheck::NeedRefill);
        assert!(!e.wants_topup(1_500, &s), "no hammering a dry budget");
    }

    #[test]
    fn an_expired_lease_holds_nothing() {
        let s = test_settings();
        let e = granted(1_000_000, 1_000_000);
        assert_eq!(e.check(&Ask::worst_case(1), 60_000, &s), ScopeCheck::NeedRefill);
        assert!(e.wants_topup(60_000 - s.renew_before_expiry_ms + 1, &s), "renewed before it lapses");
        assert!(!e.wants_topup(2_000, &s), "a full fresh slice needs nothing");
    }

    #[test]
    fn observe_budgets_never_block_but_report() {
        let s = test_settings();
        let mut l = lease("obs", "team:a", 0, 60_000);
        l.mode = BudgetMode::Observe;
        l.status = BudgetStatus::Hard;
        let mut e = ScopeEntry::default();
        e.apply_grant(&[&l], 1_000_000, 0, false, 1_000);
        assert_eq!(e.check(&Ask::worst_case(500), 1_100, &s), ScopeCheck::Fits);
        assert_eq!(e.would_refuse(&Ask::worst_case(500)), ["obs"], "the counter says it is over");
        // Observe slices are granted in full; what counts is spend against the hard limit.
        let mut l = lease("obs", "team:a", 5_000_000, 60_000);
        l.mode = BudgetMode::Observe;
        l.spent_micros = 9_999_000;
        e.apply_grant(&[&l], 1_000_000, 0, false, 1_200);
        assert_eq!(e.check(&Ask::worst_case(5_000), 1_300, &s), ScopeCheck::Fits);
        assert!(e.would_refuse(&Ask::worst_case(1_000)).is_empty(), "still fits under the hard limit");
        assert_eq!(e.would_refuse(&Ask::worst_case(1_001)), ["obs"]);
    }

    #[test]
    fn a_grant_is_net_of_costs_the_counter_may_not_have_seen() {
        let s = test_settings();
        let mut e = granted(1_000_000, 1_000_000);
        let ids = e.reserve(&Ask::worst_case(400_000)).0;
        e.settle(400_000, &ids, &[], 300_000); // unacked 300k
        e.acknowledge(100_000); // unacked 200k, acked before the next send: counter has it
        let acked_at_send = e.acked_total;
        e.acknowledge(50_000); // acked after send: maybe in the grant, maybe not
        let r2 = e.reserve(&Ask::worst_case(10_000)).0;
        e.apply_grant(&[&lease("b1", "team:a", 1_000_000, 90_000)], 1_000_000, acked_at_send, false, 2_100);
        assert_eq!(e.budgets[0].slice, 1_000_000 - 150_000 - 50_000);
        assert_eq!(e.budgets[0].reserved, 10_000, "reservations survive a grant");
        e.settle(10_000, &r2, &[], 0);
        assert_eq!(e.budgets[0].reserved, 0);
        assert_eq!(e.want(0, &s), 1_000_000 + 150_000);
    }

    #[test]
    fn a_gateway_never_asks_for_less_than_it_holds() {
        let s = test_settings();
        let mut e = granted(3_000_000, 3_000_000);
        assert_eq!(e.want(0, &s), 3_000_000, "holding more than the configured slice: keep it");
        let ids = e.reserve(&Ask::worst_case(2_900_000)).0;
        e.settle(2_900_000, &ids, &[], 2_900_000);
        assert_eq!(e.want(0, &s), 1_000_000 + 2_900_000, "free slice plus what the counter has yet to deduct");
    }

    fn arb_entry() -> impl Strategy<Value = ScopeEntry> {
        let slot = (
            "[a-z0-9:/_-]{0,24}",
            any::<bool>(),
            0u8..3,
            any::<(i64, i64, i64, i64, i64)>(),
            any::<(i64, i64, i64, i64)>(),
            any::<(u32, bool, Option<i64>)>(),
            (any::<bool>(), any::<(i64, i64)>(), proptest::collection::vec(("[a-z0-9.-]{1,12}", any::<u64>()), 0..3)),
        )
            .prop_map(|(id, observe, status, a, b, c, (p99, d, models))| BudgetSlot {
                budget_id: id,
                mode: if observe { BudgetMode::Observe } else { BudgetMode::Enforce },
                status: [BudgetStatus::Ok, BudgetStatus::Soft, BudgetStatus::Hard][usize::from(status)],
                slice: a.0,
                reserved: a.1,
                granted: a.2,
                granted_at_ms: a.3,
                expires_at_ms: a.4,
                spent_at_grant: b.0,
                spent_since_grant: b.1,
                limit: b.2,
                hard_limit: b.3,
                soft_threshold_pct: c.0,
                capped: c.1,
                resets_at: c.2,
                reserve_output_tokens: if p99 { models } else { Vec::new() },
                excess_headroom: if p99 { d.0 } else { 0 },
                reserved_beyond: if p99 { d.1 } else { 0 },
            });
        (any::<(i64, i64, i64, i64, i64)>(), proptest::collection::vec(slot, 0..4)).prop_map(|(h, budgets)| ScopeEntry {
            fetched_at_ms: h.0,
            unacked: h.1,
            acked_total: h.2,
            refill_until_ms: h.3,
            failed_at_ms: h.4,
            budgets,
        })
    }

    proptest! {
        #[test]
        fn encoding_round_trips(entry in arb_entry()) {
            prop_assert_eq!(ScopeEntry::decode(&entry.encode()), Some(entry));
        }

        #[test]
        fn decoding_garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = ScopeEntry::decode(&bytes);
        }

        #[test]
        fn truncated_entries_are_refused(entry in arb_entry(), cut in 0usize..1000) {
            let bytes = entry.encode();
            let cut = cut % bytes.len();
            prop_assert_eq!(ScopeEntry::decode(&bytes[..cut]), None);
        }
    }
}
