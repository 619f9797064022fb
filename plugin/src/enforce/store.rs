//! Envoy shared data as the lease book's [`LeaseStore`], and the usage queue's length counter.
//!
//! Shared data is process-wide (every worker VM of one Envoy sees the same keys) and versioned:
//! a write names the version it read and fails with a CAS mismatch if another worker wrote in
//! between. `core::enforce::chain` turns that into bounded read-modify-write loops.

use crate::host::{self, SetShared};
use std::cell::RefCell;
use std::collections::BTreeMap;
use tollgate_core::enforce::book::ScopeEntry;
use tollgate_core::enforce::{LeaseStore, StoreError};
use tollgate_core::money::Micros;

/// Shared-data key of a scope's lease entry.
pub fn lease_key(scope: &str) -> String {
    format!("tollgate.lease.{scope}")
}

/// Shared-data key of the number of usage records not yet acknowledged: waiting in the queue or
/// in a post in flight (the queue itself cannot be counted). It is what `queue_bound` bounds, and
/// zero means a gateway has nothing left to deliver.
const UNACKED_KEY: &str = "tollgate.usage.unacked";

/// The lease book in Envoy shared data.
pub struct SharedStore;

impl LeaseStore for SharedStore {
    fn load(&self, scope: &str) -> (Option<ScopeEntry>, Option<u32>) {
        match host::get_shared(&lease_key(scope)) {
            Ok((Some(bytes), cas)) => (ScopeEntry::decode(&bytes), cas),
            Ok((None, cas)) => (None, cas),
            Err(_) => (None, None),
        }
    }

    fn store(&mut self, scope: &str, entry: &ScopeEntry, version: Option<u32>) -> Result<(), StoreError> {
        match host::set_shared(&lease_key(scope), &entry.encode(), version) {
            SetShared::Written => Ok(()),
            SetShared::Conflict => Err(StoreError::Conflict),
            SetShared::Failed(_) => Err(StoreError::Failed),
        }
    }
}

/// A scope's entry as stored now (default if absent or unreadable).
pub fn load(scope: &str) -> ScopeEntry {
    SharedStore.load(scope).0.unwrap_or_default()
}

/// The number of usage records not yet acknowledged (process-wide).
pub fn unacked() -> u64 {
    match host::get_shared(UNACKED_KEY) {
        Ok((Some(bytes), _)) => decode_u64(&bytes),
        _ => 0,
    }
}

/// Adds up to `want` to the unacknowledged count without passing `limit` (bounded CAS loop).
/// Returns `(new count, added)`; `None` if the store failed.
pub fn add_unacked_up_to(want: u64, limit: u64) -> Option<(u64, u64)> {
    for _ in 0..tollgate_core::enforce::chain::MAX_CAS_ATTEMPTS {
        let (current, cas) = match host::get_shared(UNACKED_KEY) {
            Ok((Some(bytes), cas)) => (decode_u64(&bytes), cas),
            Ok((None, cas)) => (0, cas),
            Err(_) => return None,
        };
        let added = want.min(limit.saturating_sub(current));
        if added == 0 {
            return Some((current, 0));
        }
        let next = current.saturating_add(added);
        match host::set_shared(UNACKED_KEY, &next.to_le_bytes(), cas) {
            SetShared::Written => return Some((next, added)),
            SetShared::Conflict => continue,
            SetShared::Failed(_) => return None,
        }
    }
    None
}

/// Adds `delta` to the unacknowledged count if the result stays within `0..=limit` (bounded CAS
/// loop). Returns the new count, `None` if not applied.
pub fn adjust_unacked(delta: i64, limit: u64) -> Option<u64> {
    for _ in 0..tollgate_core::enforce::chain::MAX_CAS_ATTEMPTS {
        let (current, cas) = match host::get_shared(UNACKED_KEY) {
            Ok((Some(bytes), cas)) => (decode_u64(&bytes), cas),
            Ok((None, cas)) => (0, cas),
            Err(_) => return None,
        };
        let next = if delta >= 0 {
            match current.checked_add(delta.unsigned_abs()) {
                Some(n) if n <= limit => n,
                _ => return None,
            }
        } else {
            current.saturating_sub(delta.unsigned_abs())
        };
        match host::set_shared(UNACKED_KEY, &next.to_le_bytes(), cas) {
            SetShared::Written => return Some(next),
            SetShared::Conflict => continue,
            SetShared::Failed(_) => return None,
        }
    }
    None
}

fn decode_u64(bytes: &[u8]) -> u64 {
    bytes.try_into().map(u64::from_le_bytes).unwrap_or(0)
}

/// Per-worker memory of scopes known to have no budget, so that requests on them cost no
/// shared-data call at all.
///
/// A scope read from shared data as "no budget, asked at `fetched_at`" stays so in shared data
/// until `fetched_at + unbudgeted_scope_ttl_ms`: only a lease call can attach a budget to it, and
/// none is made for a scope whose "no budget" answer is still fresh. This worker trusts its copy
/// until [`Unbudgeted::MARGIN_MS`] before that instant. Settling on such a scope only adds the
/// cost to the scope's unacknowledged total; the worker adds it up locally ([`Unbudgeted::deferred`])
/// and writes it on its next tick, before the records themselves are queued (so an
/// acknowledgement never arrives before its cost was counted), long before any grant could use
/// the figure. Should a budget have appeared anyway, the deferred write settles against it like
/// any settlement.
#[derive(Default)]
pub struct Unbudgeted {
    /// scope → (`fetched_at_ms` as read, trusted until).
    known: BTreeMap<String, (i64, i64)>,
    /// scope → costs settled here and not yet added to the shared entry's `unacked`.
    deferred: BTreeMap<String, Micros>,
}

impl Unbudgeted {
    /// How long before the shared "no budget" answer goes stale this worker stops trusting its
    /// copy: far more than a tick, so deferred costs are written before any lease call can
    /// attach a budget.
    pub const MARGIN_MS: i64 = 2_000;
    /// Most scopes remembered (beyond, the memory starts afresh).
    const MAX_SCOPES: usize = 10_000;

    /// Whether this worker knows, without reading shared data, that `scope` has no budget.
    pub fn trusts(&self, scope: &str, now_ms: i64) -> bool {
        self.known.get(scope).is_some_and(|(_, until)| now_ms < *until)
    }

    /// Writes the deferred costs into shared data (one read-modify-write per scope).
    pub fn flush(&mut self) {
        for (scope, cost) in std::mem::take(&mut self.deferred) {
            let _ = tollgate_core::enforce::chain::update(&mut SharedStore, &scope, |entry| {
                entry.settle(0, &[], &[], cost);
                ((), true)
            });
        }
    }
}

/// The lease book seen through this worker's [`Unbudgeted`] memory (for reserve and settle).
pub struct CachedStore<'a> {
    memory: RefCell<&'a mut Unbudgeted>,
    now_ms: i64,
    ttl_ms: i64,
}

impl<'a> CachedStore<'a> {
    pub fn new(memory: &'a mut Unbudgeted, now_ms: i64, ttl_ms: i64) -> CachedStore<'a> {
        CachedStore { memory: RefCell::new(memory), now_ms, ttl_ms }
    }

    fn trusted(&self, scope: &str) -> Option<i64> {
        let memory = self.memory.borrow();
        memory.known.get(scope).filter(|(_, until)| self.now_ms < *until).map(|(fetched, _)| *fetched)
    }
}

impl LeaseStore for CachedStore<'_> {
    fn load(&self, scope: &str) -> (Option<ScopeEntry>, Option<u32>) {
        if let Some(fetched_at_ms) = self.trusted(scope) {
            return (Some(ScopeEntry { fetched_at_ms, ..ScopeEntry::default() }), None);
        }
        let (entry, version) = SharedStore.load(scope);
        let mut memory = self.memory.borrow_mut();
        memory.known.remove(scope);
        if let Some(e) = entry.as_ref().filter(|e| e.budgets.is_empty() && e.fetched_at_ms != 0) {
            let until = e.fetched_at_ms.saturating_add(self.ttl_ms).saturating_sub(Unbudgeted::MARGIN_MS);
            if self.now_ms < until {
                if memory.known.len() >= Unbudgeted::MAX_SCOPES {
                    memory.known.clear();
                }
                memory.known.insert(scope.to_owned(), (e.fetched_at_ms, until));
            }
        }
        (entry, version)
    }

    fn store(&mut self, scope: &str, entry: &ScopeEntry, version: Option<u32>) -> Result<(), StoreError> {
        if let Some(fetched_at_ms) = self.trusted(scope) {
            // Loaded from memory: the only change deferred is a settlement's cost (what `settle`
            // does to an entry without budgets). Anything else re-reads shared data.
            let base = ScopeEntry { fetched_at_ms, ..ScopeEntry::default() };
            let mut memory = self.memory.borrow_mut();
            if (ScopeEntry { unacked: 0, ..entry.clone() }) == base && entry.unacked >= 0 {
                if entry.unacked > 0 {
                    let total = memory.deferred.entry(scope.to_owned()).or_insert(0);
                    *total = total.saturating_add(entry.unacked);
                }
                return Ok(());
            }
            memory.known.remove(scope);
            return Err(StoreError::Conflict);
        }
        SharedStore.store(scope, entry, version)
    }
}
