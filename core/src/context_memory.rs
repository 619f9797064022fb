//! The response-id memory: the context size the provider billed for a stored response, so a request
//! that continues it reserves that known prefix plus its own body instead of the whole context
//! window.
//!
//! # Why
//! A request with `previous_response_id` is billed for the stored conversation it continues, which
//! its body does not hold. Without more knowledge the only true bound is the routed model's context
//! window (`core::prompt_bound`), and a 128k-token window reserves several times what a typical
//! continuation costs, so a budget admits far fewer such requests than it could pay for. But
//! Tollgate meters every response that passes through it: the response `resp_…` was billed
//! `input + output` tokens, and a continuation's prompt is that stored context (the previous
//! turn's whole input and its output, which becomes input) plus what its own body adds. So
//! `remembered + body bound` is still a true bound, and close to the real cost.
//!
//! # What is remembered, and when it is used
//! - **Key**: the response id, as the upstream wrote it in the response (`id` of a Responses JSON
//!   body, `response.id` of a Responses stream event), read by the existing usage scan
//!   (`core::usage`); nothing is parsed twice.
//! - **Value**: the billed context of that turn, [`remembered_context`]: input (with cache reads
//!   and writes) + output (reasoning included, though providers drop it from later turns: the
//!   value errs high), and the model it was billed on. A response without final usage is not
//!   remembered.
//! - **Use**: only when the reference is the request's sole provider-held shape (another one,
//!   a file by id or a hosted tool, still needs the window: `prompt_bound::detect_reference`), and
//!   only for the same routed model (another model's tokenizer may count the same text as more
//!   tokens). The bound is [`prompt_bound`]: the prefix plus the body's own bound, never more than
//!   the window when the window is known.
//!
//! # Not remembered: conversations
//! A `conversation` is not immutable: every turn appends its items, concurrent turns append to
//! the same conversation, and items can be added through the Conversations API without a model
//! call (so without the gateway seeing a bill). A size remembered for it can be lower than what
//! the next turn is billed, so it is no bound; conversations keep the window bound. A response id
//! names a fixed context, so its size never goes stale: across gateways the memory is only an
//! optimisation (a miss falls back to the window), never needed for correctness.
//!
//! # Bounded memory
//! Envoy's shared data has no delete, so each key ever written stays. The memory therefore lives
//! in a fixed set of keys: [`ContextMemory::buckets`] buckets of [`BUCKET_ENTRIES`] entries, the
//! bucket chosen by a hash of the id ([`ContextMemory::bucket_key`]). An entry expires `ttl_s`
//! after it was written; a full bucket evicts its entry that expires first. Ids come only from
//! responses the upstream sent (a client cannot make the gateway remember an id it invented), an
//! id or model longer than [`MAX_ID_BYTES`] is never stored, and the request side refuses a
//! reference longer than `prompt_bound::MAX_REFERENCE_BYTES` (the dialect's 400). So memory is at
//! most `max_entries` entries of bounded size, whatever clients send.

use crate::protocol::Tokens;
use crate::section::ConfigError;
use serde::Deserialize;

/// Entries per shared-data key. Small enough that a bucket is a few hundred bytes to copy in.
pub const BUCKET_ENTRIES: usize = 8;
/// Longest id or model name stored (longer ones are never remembered).
pub const MAX_ID_BYTES: usize = 255;
/// Default `context_memory.ttl_s`: one hour, the length of an agent's working session.
pub const DEFAULT_TTL_S: u64 = 3600;
/// Default `context_memory.max_entries`.
pub const DEFAULT_MAX_ENTRIES: u32 = 10_000;
/// Longest `ttl_s`: 30 days, how long OpenAI keeps a stored response.
pub const MAX_TTL_S: u64 = 30 * 24 * 3600;
/// Most `max_entries`: a million entries (a few hundred MB at worst in shared data).
pub const MAX_MAX_ENTRIES: u32 = 1_000_000;
/// Prefix of the memory's shared-data keys; the digit is the encoding's version.
const KEY_PREFIX: &str = "tollgate.ctx1.";
/// First byte of an encoded bucket.
const ENCODING_VERSION: u8 = 1;

/// `context_memory` in the filter config, as written. Every field is optional.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContextMemoryConfig {
    /// On by default: it only ever lowers a window-sized reservation to another true bound.
    #[serde(default = "on")]
    pub enabled: bool,
    /// Seconds an entry is kept after it was written.
    #[serde(default = "default_ttl")]
    pub ttl_s: u64,
    /// Most entries kept (shared by every worker of one Envoy).
    #[serde(default = "default_max_entries")]
    pub max_entries: u32,
}

fn on() -> bool {
    true
}
fn default_ttl() -> u64 {
    DEFAULT_TTL_S
}
fn default_max_entries() -> u32 {
    DEFAULT_MAX_ENTRIES
}

impl Default for ContextMemoryConfig {
    fn default() -> Self {
        ContextMemoryConfig { enabled: true, ttl_s: DEFAULT_TTL_S, max_entries: DEFAULT_MAX_ENTRIES }
    }
}

impl ContextMemoryConfig {
    /// Validates; `None` when disabled. Errors name the field (`context_memory.ttl_s: …`).
    pub fn compile(self) -> Result<Option<ContextMemory>, ConfigError> {
        if !(1..=MAX_TTL_S).contains(&self.ttl_s) {
            return Err(ConfigError::new(
                "context_memory.ttl_s",
                format!("must be between 1 and {MAX_TTL_S} seconds (30 days, how long a provider keeps a stored response)"),
            ));
        }
        if !(1..=MAX_MAX_ENTRIES).contains(&self.max_entries) {
            return Err(ConfigError::new(
                "context_memory.max_entries",
                format!("must be between 1 and {MAX_MAX_ENTRIES}; the memory lives in Envoy's shared data"),
            ));
        }
        if !self.enabled {
            return Ok(None);
        }
        let buckets = (self.max_entries as usize).div_ceil(BUCKET_ENTRIES);
        Ok(Some(ContextMemory {
            ttl_ms: i64::try_from(self.ttl_s.saturating_mul(1000)).unwrap_or(i64::MAX),
            buckets: u32::try_from(buckets).unwrap_or(u32::MAX).max(1),
        }))
    }
}

/// The compiled policy: where an id lives and how long it is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ContextMemory {
    pub ttl_ms: i64,
    pub buckets: u32,
}

/// What a request refers to that the memory can know the size of.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Reference {
    /// OpenAI Responses `previous_response_id`: the stored response `resp_…`.
    Response(String),
}

impl Reference {
    fn kind(&self) -> u8 {
        match self {
            Reference::Response(_) => b'r',
        }
    }

    fn id(&self) -> &str {
        match self {
            Reference::Response(id) => id,
        }
    }
}

impl ContextMemory {
    /// The shared-data key of the bucket holding `reference`: a fixed set of keys, however many
    /// ids pass ([FNV-1a](https://datatracker.ietf.org/doc/html/draft-eastlake-fnv) of the kind
    /// and id, the same in every worker and every build).
    pub fn bucket_key(&self, reference: &Reference) -> String {
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        for b in std::iter::once(reference.kind()).chain(reference.id().bytes()) {
            hash ^= u64::from(b);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
        let bucket = hash % u64::from(self.buckets.max(1));
        format!("{KEY_PREFIX}{bucket}")
    }

    /// The entry to store for a response billed `tokens` on `model`, written at `now_ms`; `None`
    /// when it cannot be stored (an id or model too long to keep, or nothing billed).
    pub fn entry(&self, reference: &Reference, model: &str, tokens: &Tokens, now_ms: i64) -> Option<Entry> {
        let context = remembered_context(tokens);
        let id = reference.id();
        if context == 0 || id.is_empty() || id.len() > MAX_ID_BYTES || model.len() > MAX_ID_BYTES {
            return None;
        }
        Some(Entry {
            kind: reference.kind(),
            id: id.to_owned(),
            model: model.to_owned(),
            context_tokens: context,
            expires_at_ms: now_ms.saturating_add(self.ttl_ms),
        })
    }
}

/// The context a continuation of this turn starts from: every prompt token billed (fresh input,
/// cache reads and writes) and the output.
pub fn remembered_context(tokens: &Tokens) -> u64 {
    tokens.input.saturating_add(tokens.cache_read).saturating_add(tokens.cache_write).saturating_add(tokens.output)
}

/// The prompt bound of a request that continues a remembered context: the known prefix plus the
/// body's own bound, and never more than the model's context window when it is known (the
/// provider refuses a longer prompt).
pub fn prompt_bound(prefix_tokens: u64, body_tokens: u64, window: Option<u64>) -> u64 {
    let bound = prefix_tokens.saturating_add(body_tokens);
    window.map_or(bound, |w| bound.min(w))
}

/// One remembered context.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    kind: u8,
    id: String,
    model: String,
    pub context_tokens: u64,
    pub expires_at_ms: i64,
}

/// What [`Bucket::remember`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Remembered {
    /// Live entries pushed out to make room (the cap at work).
    pub evicted: u32,
    /// Expired entries dropped on the way.
    pub expired: u32,
}

/// The entries of one shared-data key.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Bucket {
    entries: Vec<Entry>,
}

impl Bucket {
    /// The remembered context of `reference` billed on `model`, if live at `now_ms`.
    pub fn lookup(&self, reference: &Reference, model: &str, now_ms: i64) -> Option<u64> {
        self.entries
            .iter()
            .find(|e| e.kind == reference.kind() && e.id == reference.id())
            .filter(|e| now_ms < e.expires_at_ms && e.model == model)
            .map(|e| e.context_tokens)
    }

    /// Stores `entry` (replacing one for the same id), dropping expired entries and, when the
    /// bucket is full, evicting the one that expires first.
    pub fn remember(&mut self, entry: Entry, now_ms: i64) -> Remembered {
        let before = self.entries.len();
        self.entries.retain(|e| !(e.kind == entry.kind && e.id == entry.id));
        let replaced = before.saturating_sub(self.entries.len());
        self.entries.retain(|e| now_ms < e.expires_at_ms);
        let expired = before.saturating_sub(replaced).saturating_sub(self.entries.len());
        let mut done = Remembered { evicted: 0, expired: u32::try_from(expired).unwrap_or(u32::MAX) };
        while self.entries.len() >= BUCKET_ENTRIES {
            let Some(first) = self.entries.iter().enumerate().min_by_key(|(_, e)| e.expires_at_ms).map(|(i, _)| i) else { break };
            self.entries.remove(first);
            done.evicted = done.evicted.saturating_add(1);
        }
        self.entries.push(entry);
        done
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// `[version][count]` then per entry `[kind][id len][id][model len][model][tokens u64 LE][expires i64 LE]`.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(2 + self.entries.len() * 80);
        out.push(ENCODING_VERSION);
        out.push(u8::try_from(self.entries.len()).unwrap_or(u8::MAX));
        for e in self.entries.iter().take(usize::from(u8::MAX)) {
            out.push(e.kind);
            for text in [&e.id, &e.model] {
                let bytes = text.as_bytes().get(..MAX_ID_BYTES.min(text.len())).unwrap_or_default();
                out.push(u8::try_from(bytes.len()).unwrap_or(u8::MAX));
                out.extend_from_slice(bytes);
            }
            out.extend_from_slice(&e.context_tokens.to_le_bytes());
            out.extend_from_slice(&e.expires_at_ms.to_le_bytes());
        }
        out
    }

    /// The bucket written by [`Bucket::encode`]; anything else (another version, torn bytes)
    /// reads as empty, so it is overwritten rather than trusted.
    pub fn decode(bytes: &[u8]) -> Bucket {
        Bucket::try_decode(bytes).unwrap_or_default()
    }

    fn try_decode(bytes: &[u8]) -> Option<Bucket> {
        let (&version, rest) = bytes.split_first()?;
        let (&count, mut rest) = rest.split_first()?;
        if version != ENCODING_VERSION {
            return None;
        }
        let mut entries = Vec::with_capacity(usize::from(count).min(BUCKET_ENTRIES));
        for _ in 0..count {
            let (&kind, tail) = rest.split_first()?;
            let (id, tail) = take_text(tail)?;
            let (model, tail) = take_text(tail)?;
            let (tokens, tail) = take_8(tail)?;
            let (expires, tail) = take_8(tail)?;
            rest = tail;
            entries.push(Entry {
                kind,
                id,
                model,
                context_tokens: u64::from_le_bytes(tokens),
                expires_at_ms: i64::from_le_bytes(expires),
            });
        }
        rest.is_empty().then_some(Bucket { entries })
    }
}

fn take_text(bytes: &[u8]) -> Option<(String, &[u8])> {
    let (&len, rest) = bytes.split_first()?;
    let (text, rest) = rest.split_at_checked(usize::from(len))?;
    Some((std::str::from_utf8(text).ok()?.to_owned(), rest))
}

fn take_8(bytes: &[u8]) -> Option<([u8; 8], &[u8])> {
    let (head, rest) = bytes.split_at_checked(8)?;
    Some((head.try_into().ok()?, rest))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn memory(max_entries: u32) -> ContextMemory {
        ContextMemoryConfig { max_entries, ..ContextMemoryConfig::default() }.compile().unwrap().unwrap()
    }

    fn resp(id: &str) -> Reference {
        Reference::Response(id.to_owned())
    }

    fn tokens(input: u64, cache_read: u64, output: u64) -> Tokens {
        Tokens { input, cache_read, output, ..Tokens::default() }
    }

    #[test]
    fn the_remembered_context_is_every_billed_prompt_token_and_the_output() {
        // (tokens, context)
        let cases = [
            (tokens(1000, 0, 50), 1050),
            (tokens(200, 800, 50), 1050),
            (Tokens { input: 10, cache_write: 90, cache_write_1h: 40, output: 5, reasoning: 3, ..Tokens::default() }, 105),
            (Tokens::default(), 0),
            (tokens(u64::MAX, 1, 1), u64::MAX),
        ];
        for (t, want) in cases {
            assert_eq!(remembered_context(&t), want, "{t:?}");
        }
    }

    #[test]
    fn the_bound_is_the_prefix_plus_the_body_never_past_the_window() {
        // (prefix, body, window, bound)
        let cases = [
            (20_000, 300, Some(128_000), 20_300),
            (20_000, 300, None, 20_300),
            (127_900, 300, Some(128_000), 128_000),
            (u64::MAX, 1, None, u64::MAX),
            (0, 300, Some(128_000), 300),
        ];
        for (prefix, body, window, want) in cases {
            assert_eq!(prompt_bound(prefix, body, window), want, "{prefix} + {body} within {window:?}");
        }
    }

    #[test]
    fn config_defaults_on_and_errors_name_the_field() {
        let m = ContextMemoryConfig::default().compile().unwrap().unwrap();
        assert_eq!(m, ContextMemory { ttl_ms: 3_600_000, buckets: 1250 });
        assert_eq!(ContextMemoryConfig { enabled: false, ..Default::default() }.compile().unwrap(), None);
        assert_eq!(memory(1).buckets, 1);
        assert_eq!(memory(9).buckets, 2);
        // (config, field named)
        let cases = [
            (ContextMemoryConfig { ttl_s: 0, ..Default::default() }, "context_memory.ttl_s"),
            (ContextMemoryConfig { ttl_s: MAX_TTL_S + 1, ..Default::default() }, "context_memory.ttl_s"),
            (ContextMemoryConfig { max_entries: 0, ..Default::default() }, "context_memory.max_entries"),
            (ContextMemoryConfig { max_entries: MAX_MAX_ENTRIES + 1, enabled: false, ..Default::default() }, "context_memory.max_entries"),
        ];
        for (config, field) in cases {
            let e = config.compile().unwrap_err();
            assert_eq!(e.path, field, "{config:?}: {e}");
        }
    }

    #[test]
    fn keys_are_a_fixed_set_shared_by_every_worker() {
        let m = memory(80);
        let mut keys = std::collections::BTreeSet::new();
        for i in 0..10_000 {
            let key = m.bucket_key(&resp(&format!("resp_{i:040}")));
            assert!(key.starts_with("tollgate.ctx1."), "{key}");
            keys.insert(key);
        }
        assert_eq!(keys.len(), 10, "10,000 ids land in the 10 buckets of an 80-entry memory, no more keys");
        // The same id, the same key, whatever computes it (FNV-1a has no per-process seed).
        assert_eq!(m.bucket_key(&resp("resp_abc")), memory(80).bucket_key(&resp("resp_abc")));
        assert_eq!(m.bucket_key(&resp("resp_abc")), "tollgate.ctx1.".to_owned() + &(fnv(b"rresp_abc") % 10).to_string());
    }

    fn fnv(bytes: &[u8]) -> u64 {
        bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3))
    }

    #[test]
    fn a_lookup_hits_a_live_entry_for_the_same_model_only() {
        let m = memory(100);
        let mut bucket = Bucket::default();
        let entry = m.entry(&resp("resp_1"), "gpt-4o", &tokens(20_000, 0, 50), 1_000).unwrap();
        assert_eq!(entry.expires_at_ms, 1_000 + 3_600_000);
        bucket.remember(entry, 1_000);
        // (reference, model, now, expected)
        let cases = [
            (resp("resp_1"), "gpt-4o", 1_000, Some(20_050)),
            (resp("resp_1"), "gpt-4o", 3_600_999, Some(20_050)),
            (resp("resp_1"), "gpt-4o", 3_601_000, None),
            (resp("resp_1"), "gpt-4o-mini", 2_000, None),
            (resp("resp_2"), "gpt-4o", 2_000, None),
        ];
        for (r, model, now, want) in cases {
            assert_eq!(bucket.lookup(&r, model, now), want, "{r:?} {model} at {now}");
        }
    }

    #[test]
    fn what_is_not_stored() {
        let m = memory(100);
        let long = "r".repeat(MAX_ID_BYTES + 1);
        assert_eq!(m.entry(&resp(&long), "gpt-4o", &tokens(1, 0, 1), 0), None, "an id too long");
        assert_eq!(m.entry(&resp("resp_1"), &long, &tokens(1, 0, 1), 0), None, "a model too long");
        assert_eq!(m.entry(&resp(""), "gpt-4o", &tokens(1, 0, 1), 0), None, "no id");
        assert_eq!(m.entry(&resp("resp_1"), "gpt-4o", &Tokens::default(), 0), None, "nothing billed");
        assert!(m.entry(&resp(&"r".repeat(MAX_ID_BYTES)), "gpt-4o", &tokens(1, 0, 1), 0).is_some(), "the limit itself");
    }

    #[test]
    fn a_full_bucket_evicts_the_entry_that_expires_first_and_expired_ones_go_first() {
        let m = memory(100);
        let mut bucket = Bucket::default();
        for i in 0..BUCKET_ENTRIES as i64 {
            let done = bucket.remember(m.entry(&resp(&format!("resp_{i}")), "m", &tokens(100 + i as u64, 0, 0), i * 10).unwrap(), i * 10);
            assert_eq!(done, Remembered::default());
        }
        // Full: the next one evicts resp_0 (written first, expires first).
        let done = bucket.remember(m.entry(&resp("resp_new"), "m", &tokens(7, 0, 0), 100).unwrap(), 100);
        assert_eq!(done, Remembered { evicted: 1, expired: 0 });
        assert_eq!(bucket.len(), BUCKET_ENTRIES);
        assert_eq!(bucket.lookup(&resp("resp_0"), "m", 100), None);
        assert_eq!(bucket.lookup(&resp("resp_1"), "m", 100), Some(101));
        assert_eq!(bucket.lookup(&resp("resp_new"), "m", 100), Some(7));
        // The same id again replaces its entry: nothing evicted.
        let done = bucket.remember(m.entry(&resp("resp_new"), "m", &tokens(9, 0, 0), 200).unwrap(), 200);
        assert_eq!(done, Remembered::default());
        assert_eq!(bucket.lookup(&resp("resp_new"), "m", 200), Some(9));
        // Past every TTL: all expire, none is evicted.
        let late = 100 + 3_600_000 + 1;
        let done = bucket.remember(m.entry(&resp("resp_late"), "m", &tokens(1, 0, 0), late).unwrap(), late);
        assert_eq!(done, Remembered { evicted: 0, expired: 7 });
        assert_eq!(bucket.len(), 2, "only resp_new (rewritten at 200) and resp_late are live");
    }

    #[test]
    fn buckets_round_trip_and_garbage_reads_as_empty() {
        let m = memory(100);
        let mut bucket = Bucket::default();
        let long = "r".repeat(MAX_ID_BYTES);
        for (i, id) in ["resp_a", "resp_ü", long.as_str()].iter().enumerate() {
            bucket.remember(m.entry(&resp(id), "gpt-4o", &tokens(i as u64 + 1, 2, 3), -5).unwrap(), -5);
        }
        let bytes = bucket.encode();
        assert_eq!(Bucket::decode(&bytes), bucket);
        let longer = [bytes.as_slice(), b"x".as_slice()].concat();
        let garbage: [&[u8]; 5] = [b"", b"\x01", b"\x02\x00", &bytes[..bytes.len() - 1], &longer];
        for garbage in garbage {
            assert!(Bucket::decode(garbage).is_empty(), "{garbage:?}");
        }
    }
}
