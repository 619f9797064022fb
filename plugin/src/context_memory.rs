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
//! With `context_memory.conversations`, a turn on a conversation takes its lock here
//! ([`SharedContextMemory::acquire`]) and gives it back when it ends; there a host failure is not a
//! miss (the turn's own write would go unregistered) but a 503, and a turn refused for the lock is
//! counted in `_conversation_locked_total`.
//!
//! Counters: `tollgate_context_memory_hits_total`, `_misses_total` (a request that could have
//! used it and reserved the window instead), `_remembered_total` and `_evictions_total` (live
//! entries pushed out by the `max_entries` cap), `_conversation_locked_total`.

use crate::host::{self, SetShared};
use crate::metrics::Counter;
use tollgate_core::context_memory::{Acquired, Bucket, ContextMemory, Reference, TurnEnd};
use tollgate_core::protocol::Tokens;

/// Every counter the memory defines, with its meaning: (name, help). docs/enforcement.md lists them.
pub const COUNTERS: &[(&str, &str)] = &[
    ("tollgate_context_memory_hits_total", "continuations (and cache reads) whose reservation used a remembered context"),
    ("tollgate_context_memory_misses_total", "continuations (and cache reads) not remembered here: they reserved the context window"),
    ("tollgate_context_memory_remembered_total", "responses (and created caches) whose billed context was remembered"),
    ("tollgate_context_memory_evictions_total", "live entries pushed out by context_memory.max_entries"),
    ("tollgate_context_memory_conversation_locked_total", "conversation turns refused: another write on the conversation was in flight"),
];

/// One VM's handle on the shared memory.
pub struct SharedContextMemory {
    policy: ContextMemory,
    hits: Option<Counter>,
    misses: Option<Counter>,
    remembered: Option<Counter>,
    evictions: Option<Counter>,
    locked: Option<Counter>,
}

impl SharedContextMemory {
    pub fn new(policy: ContextMemory) -> SharedContextMemory {
        let [hits, misses, remembered, evictions, locked] = [0, 1, 2, 3, 4].map(|i| COUNTERS.get(i).and_then(|(name, _)| Counter::define(name)));
        SharedContextMemory { policy, hits, misses, remembered, evictions, locked }
    }

    /// `context_memory.conversations`.
    pub fn conversations(&self) -> bool {
        self.policy.conversations
    }

    /// Reads, changes and writes back (CAS, bounded retries) the bucket of `reference`; `None`
    /// when the host failed or other workers kept winning.
    fn update<T>(&self, reference: &Reference, mut change: impl FnMut(&mut Bucket) -> T) -> Option<T> {
        let key = self.policy.bucket_key(reference);
        for _ in 0..tollgate_core::enforce::chain::MAX_CAS_ATTEMPTS {
            let (mut bucket, cas) = match host::get_shared(&key) {
                Ok((Some(bytes), cas)) => (Bucket::decode(&bytes), cas),
                Ok((None, cas)) => (Bucket::default(), cas),
                Err(_) => return None,
            };
            let out = change(&mut bucket);
            match host::set_shared(&key, &bucket.encode(), cas) {
                SetShared::Written => return Some(out),
                SetShared::Conflict => continue,
                SetShared::Failed(_) => return None,
            }
        }
        None
    }

    /// Takes conversation `id`'s lock for the turn `holder` routed to `model`; `None` when the
    /// memory could not be written (the caller refuses the turn: its write must be registered).
    pub fn acquire(&self, id: &str, model: &str, holder: u64, now_ms: i64) -> Option<Acquired> {
        let (acquired, done) = self.update(&Reference::Conversation(id.to_owned()), |b| b.acquire(&self.policy, id, model, holder, now_ms))?;
        Counter::add(&self.evictions, u64::from(done.evicted));
        match acquired {
            Acquired::Known(_) => Counter::add(&self.hits, 1),
            Acquired::Unknown => Counter::add(&self.misses, 1),
            Acquired::Locked => Counter::add(&self.locked, 1),
            Acquired::Full => {}
        }
        Some(acquired)
    }

    /// Gives back the lock `holder` took on conversation `id`, with how its turn ended. If the
    /// write fails the lock stays until the entry's TTL (turns on it are refused until then).
    pub fn release(&self, id: &str, model: &str, holder: u64, end: TurnEnd, now_ms: i64) {
        if self.update(&Reference::Conversation(id.to_owned()), |b| b.release(&self.policy, id, model, holder, end, now_ms)).is_some() {
            if let TurnEnd::Billed(_) = end {
                Counter::add(&self.remembered, 1);
            }
        }
    }

    /// Items were posted to conversation `id` through the gateway (before they reach the
    /// upstream). A conversation not remembered here is left alone (already unknown). `false`
    /// when the memory could not be written (the caller refuses the request).
    pub fn note_items_write(&self, id: &str, now_ms: i64) -> bool {
        let reference = Reference::Conversation(id.to_owned());
        match host::get_shared(&self.policy.bucket_key(&reference)) {
            Ok((Some(bytes), _)) if Bucket::decode(&bytes).has_conversation(id, now_ms) => {}
            Ok(_) => return true,
            Err(_) => return false,
        }
        self.update(&reference, |b| b.note_items_write(id, now_ms)).is_some()
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
        for counter in [&self.hits, &self.misses, &self.remembered, &self.evictions, &self.locked].into_iter().flatten() {
            counter.flush();
        }
    }
}
