//! The response-id memory in Envoy shared data: `core::context_memory`'s policy, read when a
//! request continues a stored response (or reads a Gemini cache) and written when a response (or
//! a cache's creation) is settled.
//!
//! Shared data is process-wide, so every worker of one Envoy sees what any of them remembered. A
//! bucket is read and written whole with a CAS version (bounded retries, like the lease book): two
//! workers remembering into the same bucket at once both land. Any host failure is a miss, never
//! an error: without the memory a request reserves the context window, as before. Each gateway
//! has its own memory; across gateways it is only an optimisation.
//!
//! Counters: `tollgate_context_memory_hits_total`, `_misses_total` (a request that could have
//! used it and reserved the window instead), `_remembered_total` and `_evictions_total` (live
//! entries pushed out by the `max_entries` cap).

use crate::host::{self, SetShared};
use crate::metrics::Counter;
use tollgate_core::context_memory::{Bucket, ContextMemory, Reference};
use tollgate_core::protocol::Tokens;

/// Every counter the memory defines, with its meaning: (name, help). docs/enforcement.md lists them.
pub const COUNTERS: &[(&str, &str)] = &[
    ("tollgate_context_memory_hits_total", "continuations (and cache reads) whose reservation used a remembered context"),
    ("tollgate_context_memory_misses_total", "continuations (and cache reads) not remembered here: they reserved the context window"),
    ("tollgate_context_memory_remembered_total", "responses (and created caches) whose billed context was remembered"),
    ("tollgate_context_memory_evictions_total", "live entries pushed out by context_memory.max_entries"),
];

/// One VM's handle on the shared memory.
pub struct SharedContextMemory {
    policy: ContextMemory,
    hits: Option<Counter>,
    misses: Option<Counter>,
    remembered: Option<Counter>,
    evictions: Option<Counter>,
}

impl SharedContextMemory {
    pub fn new(policy: ContextMemory) -> SharedContextMemory {
        let [hits, misses, remembered, evictions] = [0, 1, 2, 3].map(|i| COUNTERS.get(i).and_then(|(name, _)| Counter::define(name)));
        SharedContextMemory { policy, hits, misses, remembered, evictions }
    }

    /// The context remembered for `reference` on `model`, if live (one shared-data read).
    pub fn lookup(&self, reference: &Reference, model: &str, now_ms: i64) -> Option<u64> {
        let found = match host::get_shared(&self.policy.bucket_key(reference)) {
            Ok((Some(bytes), _)) => Bucket::decode(&bytes).lookup(reference, model, now_ms),
            _ => None,
        };
        Counter::add(if found.is_some() { &self.hits } else { &self.misses }, 1);
        found
    }

    /// Remembers the context a response was billed, or a created cache's size (a read and a CAS
    /// write, retried a bounded number of times if another worker wrote the bucket in between).
    /// `provider_expiry_ms`: when the provider drops it (a cache's `expireTime`), if earlier than
    /// the memory's TTL.
    pub fn remember(&self, reference: &Reference, model: &str, tokens: &Tokens, now_ms: i64, provider_expiry_ms: Option<i64>) {
        let Some(entry) = self.policy.entry_until(reference, model, tokens, now_ms, provider_expiry_ms) else { return };
        let key = self.policy.bucket_key(reference);
        for _ in 0..tollgate_core::enforce::chain::MAX_CAS_ATTEMPTS {
            let (mut bucket, cas) = match host::get_shared(&key) {
                Ok((Some(bytes), cas)) => (Bucket::decode(&bytes), cas),
                Ok((None, cas)) => (Bucket::default(), cas),
                Err(_) => return,
            };
            let done = bucket.remember(entry.clone(), now_ms);
            match host::set_shared(&key, &bucket.encode(), cas) {
                SetShared::Written => {
                    Counter::add(&self.remembered, 1);
                    Counter::add(&self.evictions, u64::from(done.evicted));
                    return;
                }
                SetShared::Conflict => continue,
                SetShared::Failed(_) => return,
            }
        }
    }

    /// Hands the pending counts to the host (the root's tick).
    pub fn flush(&self) {
        for counter in [&self.hits, &self.misses, &self.remembered, &self.evictions].into_iter().flatten() {
            counter.flush();
        }
    }
}
