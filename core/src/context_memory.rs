//! The response-id memory: the context size the provider billed for a stored response (or holds
//! in a Gemini context cache), so a request that continues it reserves that known prefix plus its
//! own body instead of the whole context window.
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
//! # Gemini context caches
//! A Gemini generation with `cachedContent` is billed the whole cache as prompt. A cache's
//! contents are immutable once created, so its size is as good a prefix as a stored response's:
//! - **Key**: [`Reference::CachedContent`], the cache's `name` (`cachedContents/…`) read from the
//!   response to `POST /v1beta/cachedContents` (`dialect::Endpoint::CreateCachedContent`) by the
//!   usage scan, which reads its `usageMetadata.totalTokenCount` as the billed prompt.
//! - **Value**: that count, and the model, keyed without its `models/` prefix ([`model_key`]) so
//!   it matches the bare path model a generation is routed to.
//! - **Expiry**: the earlier of `ttl_s` and the cache's own `expireTime` ([`timestamp_ms`],
//!   [`ContextMemory::entry_until`]): past it the cache is gone at Google, and so is any use of
//!   the entry. A cache whose TTL is extended later is forgotten early: a window bound again,
//!   never a wrong one.
//! - **Use**: the same rule as a response id: the sole provider-held shape, the same model.
//!
//! # Conversations (opt-in: `context_memory.conversations`)
//! A `conversation` is not immutable: every turn appends its input and output, and items can be
//! added through the Conversations API without a model call. A size remembered for it is a bound
//! only while the gateway sees every write, in the order the provider applies them. So the memory
//! keeps, per conversation id (kind `v`), a size that is one **under these conditions**: every
//! write to the conversation (turns, `POST /v1/conversations/{id}/items`) passes through this one
//! Envoy (shared data is per Envoy process), and a `background` turn finishes within `ttl_s`.
//! They cannot be checked from here, hence off by default (conversations then reserve the window).
//! - **One write at a time**: a turn takes the conversation's lock ([`Bucket::acquire`]) before
//!   its reservation and gives it back when it ends ([`Bucket::release`]); a second turn on the
//!   same conversation meanwhile is refused with the dialect's 400, `param: conversation`, which
//!   is what OpenAI itself answers (`conversation_locked`, "Another process is currently
//!   operating on this conversation"). So no turn reads a conversation another write through
//!   the gateway is changing, and the size the lock holder reads is the whole conversation.
//! - **Value**: after a turn billed `input + output` (its own input and output are what it
//!   appended, everything before it was read as input), that sum ([`remembered_context`]). A turn
//!   the upstream failed, or one that let the provider truncate its input (`truncation` other
//!   than `"disabled"`: it was billed less than the conversation holds), leaves the size unknown; a 2xx turn without final usage (a `background`
//!   turn, a cut stream: the provider may still append) marks the entry *tainted*: unknown until it
//!   expires. A turn refused before it left the gateway changes nothing.
//! - **Items**: a `POST …/items` through the gateway makes the size unknown (items can hold files
//!   and images by id, whose tokens the bytes do not bound); during a turn it also marks the entry
//!   so the turn's own `input + output` is not trusted ([`Bucket::note_items_write`]).
//! - **Use**: the holder of the lock reserves the size plus its body's bound (same model only);
//!   an unknown size, no entry (first turn, evicted, expired) or another model: the window.
//! - A lock lasts until the turn ends or the entry's `ttl_s` passes (a stream whose end Envoy
//!   never reports), and a full bucket never evicts a locked entry (it refuses the turn with a 503
//!   instead), so a lock is never lost while its turn runs.
//!
//! A response id names a fixed context, so its size never goes stale: across gateways the memory
//! is only an optimisation (a miss falls back to the window), never needed for correctness.
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
/// First byte of an encoded bucket (2: entries carry a conversation's lock and flags; a
/// version-1 bucket reads as empty, a miss).
const ENCODING_VERSION: u8 = 2;

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
    /// Remember OpenAI `conversation` sizes too (module docs: a bound only if every write to a
    /// conversation passes through this Envoy, so off unless the operator says so).
    #[serde(default)]
    pub conversations: bool,
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
        ContextMemoryConfig { enabled: true, ttl_s: DEFAULT_TTL_S, max_entries: DEFAULT_MAX_ENTRIES, conversations: false }
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
            conversations: self.conversations,
        }))
    }
}

/// The compiled policy: where an id lives and how long it is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ContextMemory {
    pub ttl_ms: i64,
    pub buckets: u32,
    /// `context_memory.conversations`: conversation sizes are remembered and turns locked.
    pub conversations: bool,
}

/// What a request refers to that the memory can know the size of.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Reference {
    /// OpenAI Responses `previous_response_id`: the stored response `resp_…`.
    Response(String),
    /// Gemini `cachedContent`: the context cache `cachedContents/…`, whose creation passed
    /// through the gateway.
    CachedContent(String),
    /// OpenAI Responses `conversation`: the conversation `conv_…` (only with
    /// `context_memory.conversations`; locked while a turn runs).
    Conversation(String),
}

impl Reference {
    fn kind(&self) -> u8 {
        match self {
            Reference::Response(_) => b'r',
            Reference::CachedContent(_) => b'c',
            Reference::Conversation(_) => b'v',
        }
    }

    fn id(&self) -> &str {
        match self {
            Reference::Response(id) | Reference::CachedContent(id) | Reference::Conversation(id) => id,
        }
    }
}

impl Reference {
    /// What a successful response on `endpoint` created that later requests may refer to: the
    /// stored response of a Responses call, the cache of a Gemini `cachedContents` create, named
    /// by the `id` the usage scan read from it (`core::usage`). `None` on other endpoints.
    pub fn created_by(endpoint: crate::dialect::Endpoint, id: &str) -> Option<Reference> {
        use crate::dialect::Endpoint;
        match endpoint {
            Endpoint::Responses => Some(Reference::Response(id.to_owned())),
            Endpoint::CreateCachedContent => Some(Reference::CachedContent(id.to_owned())),
            _ => None,
        }
    }
}

/// A Gemini model name as the memory keys it: without the `models/` resource prefix, so a cache
/// created for `models/gemini-2.5-flash` matches a request routed to `gemini-2.5-flash`.
pub fn model_key(model: &str) -> &str {
    model.strip_prefix("models/").unwrap_or(model)
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
        self.entry_until(reference, model, tokens, now_ms, None)
    }

    /// [`ContextMemory::entry`] for a reference the provider itself expires at `provider_expiry_ms`
    /// (a Gemini cache's `expireTime`): kept until the earlier of that and the memory's TTL, and
    /// not stored at all when already expired.
    pub fn entry_until(
        &self,
        reference: &Reference,
        model: &str,
        tokens: &Tokens,
        now_ms: i64,
        provider_expiry_ms: Option<i64>,
    ) -> Option<Entry> {
        let context = remembered_context(tokens);
        let id = reference.id();
        let model = model_key(model);
        if context == 0 || id.is_empty() || id.len() > MAX_ID_BYTES || model.is_empty() || model.len() > MAX_ID_BYTES {
            return None;
        }
        let ttl_end = now_ms.saturating_add(self.ttl_ms);
        let expires_at_ms = provider_expiry_ms.map_or(ttl_end, |at| at.min(ttl_end));
        if expires_at_ms <= now_ms {
            return None;
        }
        Some(Entry { kind: reference.kind(), id: id.to_owned(), model: model.to_owned(), context_tokens: context, expires_at_ms, holder: 0, flags: 0 })
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

/// An RFC 3339 timestamp (`2025-01-02T03:04:05.678901Z`, or with a `±hh:mm` offset), as Google
/// writes a `google.protobuf.Timestamp` in JSON, in ms since the Unix epoch; `None` for anything
/// else (the memory then keeps its own TTL).
pub fn timestamp_ms(text: &str) -> Option<i64> {
    let b = text.as_bytes();
    let digits = |range: std::ops::Range<usize>| -> Option<i64> {
        let part = b.get(range)?;
        part.iter().try_fold(0i64, |n, d| d.is_ascii_digit().then(|| n * 10 + i64::from(d - b'0')))
    };
    let sep = |at: usize, want: &[u8]| b.get(at).is_some_and(|c| want.contains(c));
    if !(sep(4, b"-") && sep(7, b"-") && sep(10, b"Tt") && sep(13, b":") && sep(16, b":")) {
        return None;
    }
    let (year, month, day) = (digits(0..4)?, digits(5..7)?, digits(8..10)?);
    let (hour, minute, second) = (digits(11..13)?, digits(14..16)?, digits(17..19)?);
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || minute > 59 || second > 60 {
        return None;
    }
    let mut at = 19;
    let mut millis = 0;
    if sep(at, b".") {
        let start = at + 1;
        at = start;
        while b.get(at).is_some_and(u8::is_ascii_digit) {
            at += 1;
        }
        if at == start {
            return None;
        }
        let ms_digits = digits(start..start.saturating_add(3).min(at))?;
        millis = ms_digits * [100, 10, 1].get(at.saturating_sub(start).min(3).saturating_sub(1)).copied().unwrap_or(1);
    }
    let offset_s = match b.get(at..) {
        Some(b"Z" | b"z") => 0,
        Some([sign @ (b'+' | b'-'), _, _, b':', _, _]) => {
            let (h, m) = (digits(at + 1..at + 3)?, digits(at + 4..at + 6)?);
            let s = h * 3600 + m * 60;
            if *sign == b'+' { s } else { -s }
        }
        _ => return None,
    };
    // Days from the civil date (Howard Hinnant's algorithm, proleptic Gregorian).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let seconds = days * 86_400 + hour * 3600 + minute * 60 + second - offset_s;
    Some(seconds * 1000 + millis)
}

/// One remembered context.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    kind: u8,
    id: String,
    model: String,
    pub context_tokens: u64,
    pub expires_at_ms: i64,
    /// A conversation's lock: the [`holder`] token of the turn that holds it, 0 when free.
    holder: u64,
    /// A conversation's [`DIRTY`] and [`TAINTED`] bits.
    flags: u8,
}

/// A conversation's size the memory does not know (the next turn reserves the window).
pub const UNKNOWN: u64 = u64::MAX;
/// Items were added through the gateway while a turn held the lock: its `input + output` may
/// miss them, so its release leaves the size unknown.
const DIRTY: u8 = 1;
/// A turn may still be appending after it ended here (2xx without final usage: `background`, a
/// cut stream): the size stays unknown until the entry expires.
const TAINTED: u8 = 2;

/// The lock token of the request `request_id` (FNV-1a; never 0, which means free).
pub fn holder(request_id: &str) -> u64 {
    let hash = request_id.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3));
    hash.max(1)
}

/// What [`Bucket::acquire`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Acquired {
    /// The lock is this turn's, and the conversation holds at most this many tokens (on this model).
    Known(u64),
    /// The lock is this turn's; the size is not known here (reserve the window).
    Unknown,
    /// Another turn through this gateway holds the lock: refuse this one (OpenAI's
    /// `conversation_locked`).
    Locked,
    /// Every entry of the bucket is a locked conversation: nothing can be evicted to make room.
    Full,
}

/// How a turn that held a conversation's lock ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TurnEnd {
    /// Refused or answered by the gateway: nothing reached the provider.
    NotSent,
    /// A 2xx with final usage: the conversation now holds at most this context.
    Billed(u64),
    /// A 2xx without final usage: the provider may still append (taints the entry).
    Unbilled,
    /// The upstream failed: what it appended is unknown.
    Failed,
}

/// What [`Bucket::remember`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Remembered {
    /// Live entries pushed out to make room (the cap at work).
    pub evicted: u32,
    /// Expired entries dropped on the way.
    pub expired: u32,
    /// Not stored: every entry left is a locked conversation.
    pub full: bool,
}

/// The entries of one shared-data key.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Bucket {
    entries: Vec<Entry>,
}

impl Bucket {
    /// The remembered context of `reference` billed on `model`, if live at `now_ms`.
    pub fn lookup(&self, reference: &Reference, model: &str, now_ms: i64) -> Option<u64> {
        let model = model_key(model);
        self.entries
            .iter()
            .find(|e| e.kind == reference.kind() && e.id == reference.id())
            .filter(|e| now_ms < e.expires_at_ms && e.model == model && e.context_tokens != UNKNOWN)
            .map(|e| e.context_tokens)
    }

    /// Stores `entry` (replacing one for the same id), dropping expired entries and, when the
    /// bucket is full, evicting the one that expires first.
    pub fn remember(&mut self, entry: Entry, now_ms: i64) -> Remembered {
        let before = self.entries.len();
        if self.entries.iter().any(|e| e.kind == entry.kind && e.id == entry.id && e.holder != 0 && now_ms < e.expires_at_ms) {
            return Remembered { full: true, ..Remembered::default() };
        }
        self.entries.retain(|e| !(e.kind == entry.kind && e.id == entry.id));
        let replaced = before.saturating_sub(self.entries.len());
        self.entries.retain(|e| now_ms < e.expires_at_ms);
        let expired = before.saturating_sub(replaced).saturating_sub(self.entries.len());
        let mut done = Remembered { evicted: 0, expired: u32::try_from(expired).unwrap_or(u32::MAX), full: false };
        while self.entries.len() >= BUCKET_ENTRIES {
            // A locked conversation is never evicted: its turn is still running.
            let Some(first) =
                self.entries.iter().enumerate().filter(|(_, e)| e.holder == 0).min_by_key(|(_, e)| e.expires_at_ms).map(|(i, _)| i)
            else {
                done.full = true;
                return done;
            };
            self.entries.remove(first);
            done.evicted = done.evicted.saturating_add(1);
        }
        self.entries.push(entry);
        done
    }

    /// Takes the lock of conversation `id` for the turn `holder` on `model` at `now_ms` (see the
    /// module docs). A new entry starts with an unknown size.
    pub fn acquire(&mut self, policy: &ContextMemory, id: &str, model: &str, holder: u64, now_ms: i64) -> (Acquired, Remembered) {
        let model = model_key(model);
        let expires_at_ms = now_ms.saturating_add(policy.ttl_ms);
        if let Some(e) = self.entries.iter_mut().find(|e| e.kind == b'v' && e.id == id && now_ms < e.expires_at_ms) {
            if e.holder != 0 && e.holder != holder {
                return (Acquired::Locked, Remembered::default());
            }
            e.holder = holder;
            e.expires_at_ms = expires_at_ms;
            let known = e.context_tokens != UNKNOWN && e.flags & TAINTED == 0 && e.model == model;
            return (if known { Acquired::Known(e.context_tokens) } else { Acquired::Unknown }, Remembered::default());
        }
        if id.is_empty() || id.len() > MAX_ID_BYTES || model.len() > MAX_ID_BYTES {
            return (Acquired::Full, Remembered::default());
        }
        let entry = Entry { kind: b'v', id: id.to_owned(), model: model.to_owned(), context_tokens: UNKNOWN, expires_at_ms, holder, flags: 0 };
        let done = self.remember(entry, now_ms);
        (if done.full { Acquired::Full } else { Acquired::Unknown }, done)
    }

    /// Gives back the lock `holder` took on conversation `id`, recording what its turn left
    /// (`model`: the routed model of a billed turn). A lock no longer held by `holder` (the entry
    /// expired) is left alone.
    pub fn release(&mut self, policy: &ContextMemory, id: &str, model: &str, holder: u64, end: TurnEnd, now_ms: i64) {
        let Some(e) = self.entries.iter_mut().find(|e| e.kind == b'v' && e.id == id && e.holder == holder && holder != 0) else { return };
        e.holder = 0;
        e.expires_at_ms = now_ms.saturating_add(policy.ttl_ms).max(e.expires_at_ms);
        let dirty = e.flags & DIRTY != 0;
        e.flags &= !DIRTY;
        match end {
            TurnEnd::NotSent if !dirty => {}
            TurnEnd::Billed(context) if !dirty && model_key(model).len() <= MAX_ID_BYTES => {
                e.context_tokens = context;
                e.model = model_key(model).to_owned();
            }
            TurnEnd::Unbilled => {
                e.context_tokens = UNKNOWN;
                e.flags |= TAINTED;
            }
            _ => e.context_tokens = UNKNOWN,
        }
    }

    /// Items were posted to conversation `id` through the gateway: its size is unknown from now
    /// on, and a turn holding its lock may not trust its own bill either.
    pub fn note_items_write(&mut self, id: &str, now_ms: i64) {
        if let Some(e) = self.entries.iter_mut().find(|e| e.kind == b'v' && e.id == id && now_ms < e.expires_at_ms) {
            e.context_tokens = UNKNOWN;
            if e.holder != 0 {
                e.flags |= DIRTY;
            }
        }
    }

    /// Whether the bucket holds conversation `id` (live at `now_ms`).
    pub fn has_conversation(&self, id: &str, now_ms: i64) -> bool {
        self.entries.iter().any(|e| e.kind == b'v' && e.id == id && now_ms < e.expires_at_ms)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// `[version][count]` then per entry `[kind][id len][id][model len][model][tokens u64 LE][expires i64 LE][holder u64 LE][flags]`.
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
            out.extend_from_slice(&e.holder.to_le_bytes());
            out.push(e.flags);
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
            let (holder, tail) = take_8(tail)?;
            let (&flags, tail) = tail.split_first()?;
            rest = tail;
            entries.push(Entry {
                kind,
                id,
                model,
                context_tokens: u64::from_le_bytes(tokens),
                expires_at_ms: i64::from_le_bytes(expires),
                holder: u64::from_le_bytes(holder),
                flags,
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
        assert_eq!(m, ContextMemory { ttl_ms: 3_600_000, buckets: 1250, conversations: false });
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
    fn rfc3339_timestamps_read_as_epoch_milliseconds() {
        // (text, ms); the reference values are `date -u -d … +%s%3N`.
        let cases = [
            ("1970-01-01T00:00:00Z", Some(0)),
            ("2024-06-24T12:34:56Z", Some(1_719_232_496_000)),
            ("2024-06-24T12:34:56.789012345Z", Some(1_719_232_496_789)),
            ("2024-06-24T12:34:56.7Z", Some(1_719_232_496_700)),
            ("2024-06-24T12:34:56.05Z", Some(1_719_232_496_050)),
            ("2024-02-29T00:00:00Z", Some(1_709_164_800_000)),
            ("2000-03-01T00:00:00Z", Some(951_868_800_000)),
            ("2024-06-24T14:34:56+02:00", Some(1_719_232_496_000)),
            ("2024-06-24T10:34:56.5-02:00", Some(1_719_232_496_500)),
            ("1969-12-31T23:59:59Z", Some(-1000)),
            ("2024-06-24 12:34:56Z", None),
            ("2024-06-24T12:34:56", None),
            ("2024-06-24T12:34:56.Z", None),
            ("2024-13-24T12:34:56Z", None),
            ("2024-06-24T24:00:00Z", None),
            ("2024-06-24T12:34:56Zx", None),
            ("300s", None),
            ("", None),
            ("２024-06-24T12:34:56Z", None),
        ];
        for (text, want) in cases {
            assert_eq!(timestamp_ms(text), want, "{text}");
        }
    }

    #[test]
    fn a_cache_is_kept_until_the_provider_expires_it_and_matched_by_its_bare_model() {
        let m = memory(100); // TTL one hour
        let cache = Reference::CachedContent("cachedContents/abc".to_owned());
        let size = Tokens { input: 40_000, ..Tokens::default() };
        // (provider expiry, kept until)
        let cases = [
            (None, Some(1_000 + 3_600_000)),
            (Some(1_000 + 300_000), Some(1_000 + 300_000)),
            (Some(1_000 + 7_200_000), Some(1_000 + 3_600_000)),
            (Some(1_000), None),
            (Some(-5), None),
        ];
        for (expiry, want) in cases {
            let entry = m.entry_until(&cache, "models/gemini-2.5-flash", &size, 1_000, expiry);
            assert_eq!(entry.as_ref().map(|e| e.expires_at_ms), want, "{expiry:?}");
        }
        let mut bucket = Bucket::default();
        bucket.remember(m.entry_until(&cache, "models/gemini-2.5-flash", &size, 1_000, Some(301_000)).unwrap(), 1_000);
        // (reference, model, now, expected)
        let cases = [
            (cache.clone(), "gemini-2.5-flash", 300_999, Some(40_000)),
            (cache.clone(), "models/gemini-2.5-flash", 2_000, Some(40_000)),
            (cache.clone(), "gemini-2.5-flash", 301_000, None),
            (cache.clone(), "gemini-2.5-pro", 2_000, None),
            (Reference::CachedContent("cachedContents/other".to_owned()), "gemini-2.5-flash", 2_000, None),
            // A response id spelled like the cache's name is another reference.
            (Reference::Response("cachedContents/abc".to_owned()), "gemini-2.5-flash", 2_000, None),
        ];
        for (r, model, now, want) in cases {
            assert_eq!(bucket.lookup(&r, model, now), want, "{r:?} {model} at {now}");
        }
        assert_eq!(m.bucket_key(&cache), format!("tollgate.ctx1.{}", fnv(b"ccachedContents/abc") % 13), "the kind byte is hashed with the name");
        assert_eq!(m.entry_until(&cache, "models/", &size, 0, None), None, "no model");
        let round = { let mut b = bucket.clone(); b.remember(m.entry(&resp("resp_1"), "gpt-4o", &tokens(1, 0, 1), 5).unwrap(), 5); b };
        assert_eq!(Bucket::decode(&round.encode()), round, "both kinds round-trip");
    }

    #[test]
    fn what_each_endpoint_creates() {
        use crate::dialect::Endpoint::*;
        assert_eq!(Reference::created_by(Responses, "resp_1"), Some(resp("resp_1")));
        assert_eq!(Reference::created_by(CreateCachedContent, "cachedContents/a"), Some(Reference::CachedContent("cachedContents/a".into())));
        for endpoint in [Chat, Completions, Embeddings, Messages, GenerateContent, StreamGenerateContent] {
            assert_eq!(Reference::created_by(endpoint, "x"), None, "{endpoint:?}");
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
        assert_eq!(done, Remembered { evicted: 1, expired: 0, full: false });
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
        assert_eq!(done, Remembered { evicted: 0, expired: 7, full: false });
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

    fn conversations() -> ContextMemory {
        ContextMemoryConfig { max_entries: 100, conversations: true, ..ContextMemoryConfig::default() }.compile().unwrap().unwrap()
    }

    #[test]
    fn a_conversation_is_unknown_until_a_turn_that_held_its_lock_is_billed_then_that_bill_is_the_prefix() {
        let m = conversations();
        let mut b = Bucket::default();
        let (t1, t2) = (holder("req-1"), holder("req-2"));
        assert_eq!(b.acquire(&m, "conv_1", "gpt-4o", t1, 0).0, Acquired::Unknown, "first turn seen here: the window");
        assert_eq!(b.acquire(&m, "conv_1", "gpt-4o", t2, 10).0, Acquired::Locked, "a second turn while the first runs");
        b.release(&m, "conv_1", "gpt-4o", t1, TurnEnd::Billed(20_050), 100);
        assert_eq!(b.acquire(&m, "conv_1", "gpt-4o", t2, 200).0, Acquired::Known(20_050));
        b.release(&m, "conv_1", "gpt-4o", t2, TurnEnd::Billed(21_000), 300);
        assert_eq!(b.acquire(&m, "conv_1", "gpt-4o-mini", t1, 400).0, Acquired::Unknown, "another model's tokenizer: the window");
        b.release(&m, "conv_1", "gpt-4o-mini", t1, TurnEnd::NotSent, 500);
        assert_eq!(b.acquire(&m, "conv_1", "gpt-4o", t2, 600).0, Acquired::Known(21_000), "a turn refused here changed nothing");
        b.release(&m, "conv_1", "gpt-4o", t2, TurnEnd::NotSent, 700);
        assert_eq!(b.acquire(&m, "conv_2", "gpt-4o", t2, 700).0, Acquired::Unknown, "another conversation is not locked by it");
        assert_eq!(Bucket::decode(&b.encode()), b, "locks and sizes round-trip");
    }

    #[test]
    fn how_a_turn_ends_decides_what_the_next_turn_may_trust() {
        let m = conversations();
        let (t1, t2) = (holder("req-1"), holder("req-2"));
        // (end of the turn after a billed one, what the next turn then reads)
        let cases = [
            (TurnEnd::Billed(5_000), Acquired::Known(5_000)),
            (TurnEnd::NotSent, Acquired::Known(1_000)),
            (TurnEnd::Failed, Acquired::Unknown),
            (TurnEnd::Unbilled, Acquired::Unknown),
        ];
        for (end, want) in cases {
            let mut b = Bucket::default();
            b.acquire(&m, "conv_1", "m", t1, 0);
            b.release(&m, "conv_1", "m", t1, TurnEnd::Billed(1_000), 1);
            b.acquire(&m, "conv_1", "m", t2, 2);
            b.release(&m, "conv_1", "m", t2, end, 3);
            assert_eq!(b.acquire(&m, "conv_1", "m", t1, 4).0, want, "{end:?}");
            // A 2xx without usage (background, cut stream) taints: even a later billed turn is not trusted.
            b.release(&m, "conv_1", "m", t1, TurnEnd::Billed(7_000), 5);
            let later = b.acquire(&m, "conv_1", "m", t2, 6).0;
            assert_eq!(later == Acquired::Unknown, end == TurnEnd::Unbilled, "{end:?} then a billed turn: {later:?}");
        }
    }

    #[test]
    fn items_posted_through_the_gateway_make_the_size_unknown_even_for_the_turn_holding_the_lock() {
        let m = conversations();
        let (t1, t2) = (holder("req-1"), holder("req-2"));
        let mut b = Bucket::default();
        b.acquire(&m, "conv_1", "m", t1, 0);
        b.release(&m, "conv_1", "m", t1, TurnEnd::Billed(1_000), 1);
        b.note_items_write("conv_1", 2);
        assert_eq!(b.acquire(&m, "conv_1", "m", t2, 3).0, Acquired::Unknown, "items added between turns");
        b.release(&m, "conv_1", "m", t2, TurnEnd::Billed(2_000), 4);
        assert_eq!(b.acquire(&m, "conv_1", "m", t1, 5).0, Acquired::Known(2_000), "a billed turn re-learns the size");
        b.note_items_write("conv_1", 6);
        b.release(&m, "conv_1", "m", t1, TurnEnd::Billed(3_000), 7);
        assert_eq!(b.acquire(&m, "conv_1", "m", t2, 8).0, Acquired::Unknown, "items added during the turn: its bill may miss them");
        b.release(&m, "conv_1", "m", t2, TurnEnd::Billed(4_000), 9);
        assert_eq!(b.acquire(&m, "conv_1", "m", t1, 10).0, Acquired::Known(4_000), "the mark lasts one turn");
    }

    #[test]
    fn a_lock_lasts_until_its_turn_ends_or_the_entry_expires_and_is_never_evicted() {
        let m = conversations(); // TTL one hour
        let (t1, t2) = (holder("req-1"), holder("req-2"));
        let mut b = Bucket::default();
        b.acquire(&m, "conv_1", "m", t1, 0);
        assert_eq!(b.acquire(&m, "conv_1", "m", t2, 3_599_999).0, Acquired::Locked);
        assert_eq!(b.acquire(&m, "conv_1", "m", t2, 3_600_000).0, Acquired::Unknown, "a lock whose end Envoy never reported expires with its entry");
        b.release(&m, "conv_1", "m", t1, TurnEnd::Billed(10), 3_600_001);
        assert_eq!(b.acquire(&m, "conv_1", "m", t1, 3_600_002).0, Acquired::Locked, "the old holder's late release does not free the new lock");
        // A bucket full of locked conversations evicts none of them.
        let mut full = Bucket::default();
        for i in 0..BUCKET_ENTRIES {
            assert_eq!(full.acquire(&m, &format!("conv_{i}"), "m", holder(&format!("req-{i}")), 0).0, Acquired::Unknown);
        }
        assert_eq!(full.acquire(&m, "conv_new", "m", t1, 1).0, Acquired::Full);
        let stored = full.remember(m.entry(&resp("resp_1"), "m", &tokens(1, 0, 1), 1).unwrap(), 1);
        assert!(stored.full && stored.evicted == 0, "{stored:?}");
        assert_eq!(full.len(), BUCKET_ENTRIES);
        full.release(&m, "conv_3", "m", holder("req-3"), TurnEnd::Billed(10), 2);
        assert_eq!(full.acquire(&m, "conv_new", "m", t1, 3), (Acquired::Unknown, Remembered { evicted: 1, expired: 0, full: false }), "an unlocked entry can go");
        assert!(!full.has_conversation("conv_3", 3));
    }

    #[test]
    fn lock_tokens_differ_per_request_and_are_never_free() {
        assert_ne!(holder("gw.a.1"), holder("gw.a.2"));
        assert_eq!(holder("gw.a.1"), holder("gw.a.1"));
        assert_ne!(holder(""), 0);
    }
}
