//! Envoy shared data as the lease book's [`LeaseStore`], and the usage queue's length counter.
//!
//! Shared data is process-wide (every worker VM of one Envoy sees the same keys) and versioned:
//! a write names the version it read and fails with a CAS mismatch if another worker wrote in
//! between. `core::enforce::chain` turns that into bounded read-modify-write loops.

use super::abi::{self, SetShared};
use tollgate_core::enforce::book::ScopeEntry;
use tollgate_core::enforce::{LeaseStore, StoreError};

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
        match abi::get_shared(&lease_key(scope)) {
            Ok((Some(bytes), cas)) => (ScopeEntry::decode(&bytes), cas),
            Ok((None, cas)) => (None, cas),
            Err(_) => (None, None),
        }
    }

    fn store(&mut self, scope: &str, entry: &ScopeEntry, version: Option<u32>) -> Result<(), StoreError> {
        match abi::set_shared(&lease_key(scope), &entry.encode(), version) {
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
    match abi::get_shared(UNACKED_KEY) {
        Ok((Some(bytes), _)) => decode_u64(&bytes),
        _ => 0,
    }
}

/// Adds `delta` to the unacknowledged count if the result stays within `0..=limit` (bounded CAS
/// loop). Returns the new count, `None` if not applied.
pub fn adjust_unacked(delta: i64, limit: u64) -> Option<u64> {
    for _ in 0..tollgate_core::enforce::chain::MAX_CAS_ATTEMPTS {
        let (current, cas) = match abi::get_shared(UNACKED_KEY) {
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
        match abi::set_shared(UNACKED_KEY, &next.to_le_bytes(), cas) {
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
