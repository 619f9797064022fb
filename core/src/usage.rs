//! Incremental usage scanning of LLM responses: JSON and SSE, every dialect.
//!
//! The filter sees a response as a sequence of body chunks and must not buffer it (streams are
//! long, and the client is reading them as they come). [`UsageScanner`] is fed each chunk and keeps
//! only a bounded state: where it is in the SSE framing, a stack of the open JSON containers (at
//! most 128 deep), each tagged with its place on the few paths we read (a tiny trie per dialect,
//! so a value's meaning is one step from its container's and whole subtrees are skipped unread),
//! the current key, and the few small values it wants (token counts, the model name, the event
//! type). Content strings are counted as they pass, never stored. Memory stays under a few
//! kilobytes whatever the upstream sends.
//!
//! Because all of it is one byte-level state machine, the outcome is the same however the bytes are
//! split into chunks; property tests check every split point.
//!
//! # Skimming plain SSE events
//! Most events of a stream are content deltas that change nothing but the content count, and
//! parsing each one cost tens of wasm instructions per byte. So an SSE event's data is held (at
//! most `EVENT_HOLD_CAP` bytes) until the event ends, then skimmed from quote to quote, eight
//! bytes at a time, looking only at keys (`UsageScanner::skim_plain_event`). An event with any
//! key that could matter (usage, an error, an end, a new model, or content the parser would not
//! count) is parsed in full from the held bytes (in one pass over them, `held`, or by the lexer
//! when that pass does not handle them); a longer event is parsed as it streams. Either way the
//! decision depends only on the event's bytes, never on how they were chunked.
//!
//! A skimmed event also leaves its shape (`EventTemplate`): the next event that is the same bytes
//! around a different content string is counted by comparing bytes, without holding or skimming
//! it (docs/metering.md, "Event templates").
//!
//! # Layout
//! - here: the public types, [`UsageScanner`]'s entry points (`feed`, `finish`), what a message
//!   and the whole response said (`Message`, `Found`) and how a complete message is committed.
//! - `sse`: SSE framing (lines, fields, events, `[DONE]`; where each event ended, for `strip`).
//! - `json`: the JSON lexer (whole bodies, Gemini's array stream, SSE event data that outgrew
//!   the hold) and what a value at a path says (`Message::take_scalar`).
//! - `held`: a held event that must be parsed, read in one pass over its bytes; anything it does
//!   not handle goes to the lexer.
//! - `paths`: where usage lives per dialect (the path trie), the token fields and their
//!   normalisation, the types and statuses that end a response.
//! - `template`: skimming plain events and recognising their shape (event templates).
//! - `strip`: keeping the usage-only chunk Tollgate asked for out of the client's stream.
//!
//! # Where usage is read
//! A *message* is one JSON object: a whole JSON body, one element of Gemini's JSON-array stream,
//! or the `data` of one SSE event. Only complete messages count: one cut off mid-way says nothing.
//! - OpenAI / Azure chat, completions, embeddings: `usage.prompt_tokens`, `completion_tokens`,
//!   `prompt_tokens_details.cached_tokens`, `completion_tokens_details.reasoning_tokens` (the
//!   streaming usage chunk is the one with a non-null `usage`). The stream ends with `[DONE]`.
//! - OpenAI Responses: `usage` (JSON) or `response.usage` (`response.completed`, `.incomplete`,
//!   `.failed` events) with `input_tokens`, `output_tokens`, `input_tokens_details.cached_tokens`,
//!   `output_tokens_details.reasoning_tokens`.
//! - Anthropic: `usage` (JSON, `message_delta`) and `message.usage` (`message_start`) with
//!   `input_tokens`, `output_tokens`, `cache_read_input_tokens`, `cache_creation_input_tokens`.
//!   `message_delta` counts are cumulative, so each field keeps its last value (never summed).
//! - Gemini: `usageMetadata` with `promptTokenCount`, `candidatesTokenCount`,
//!   `cachedContentTokenCount`, `thoughtsTokenCount`, `toolUsePromptTokenCount`.
//!
//! For OpenAI and Gemini the last usage object wins as a whole; for Anthropic each field keeps
//! its last value, because `message_start` and `message_delta` carry different fields.
//!
//! # Final or partial
//! Usage is *final* when the upstream has finished reporting it: OpenAI's usage object (sent once,
//! at the end), Anthropic's top-level `usage` (a JSON body or `message_delta`), Gemini's
//! `usageMetadata` in a whole JSON body or in the chunk with `finishReason`, or any usage once the
//! response ended (`Completed` / `Incomplete`). Otherwise the stream was cut after an early report
//! (Anthropic's `message_start`, whose output count is a placeholder; Gemini's first chunks), and
//! that report goes to [`ScanOutcome::partial_tokens`] instead of `tokens`.
//!
//! # Normalisation to [`Tokens`]
//! `input` excludes cache reads and writes; `output` includes reasoning; `reasoning` is reported
//! apart. OpenAI's `prompt_tokens` and Gemini's `promptTokenCount` include cached tokens, so those
//! are subtracted; Anthropic's `input_tokens` already excludes them. Gemini's `thoughtsTokenCount`
//! is billed as output and is added to it; its `toolUsePromptTokenCount` is billed as input.
//!
//! # Content bytes
//! For estimates when a stream is cut, the bytes of generated strings are counted as JSON text
//! (escapes count as written): chat `content` / `refusal` / `reasoning_content` / tool-call
//! `arguments`, completions `text`, Responses `delta` and output text, Anthropic `text` /
//! `thinking` / `partial_json`, Gemini part `text`.

use crate::bytes;
use crate::dialect::{Dialect, Endpoint};
use std::ops::Range;
use crate::protocol::Tokens;

/// How the response body is framed, from its `content-type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResponseFormat {
    /// `application/json` (including Gemini's JSON-array stream form, `[{...},{...}]`).
    Json,
    /// `text/event-stream`.
    Sse,
}

/// How the upstream said the response ended, when it said so.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TerminalEvent {
    /// The response ended normally: a complete JSON body, `[DONE]`, `message_stop`,
    /// `response.completed`, a Gemini `finishReason`.
    Completed,
    /// The upstream stopped early but billed what it produced (`response.incomplete`).
    Incomplete,
    /// The upstream reported an error: `response.failed`, an `error` event, a body with `error`.
    Failed,
}

/// What a scanned response said about itself.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ScanOutcome {
    /// Billed tokens as the upstream reported them, normalised; `None` if no final usage arrived
    /// (a stream cut short: charge an estimate, see `estimate::EstimateConfig::estimate_unfinished`).
    pub tokens: Option<Tokens>,
    /// Usage reported before the stream was cut, not final: Anthropic's `message_start` (exact
    /// input and cache counts, placeholder output), Gemini's early `usageMetadata`. `None` when
    /// `tokens` is set.
    pub partial_tokens: Option<Tokens>,
    /// The model the upstream says it used (the last one reported).
    pub model: Option<String>,
    /// Bytes of generated content seen (text, tool arguments, thinking), for estimates.
    pub streamed_content_bytes: u64,
    /// How the response ended, if the upstream said so (the last such signal).
    pub terminal: Option<TerminalEvent>,
    /// OpenAI Responses: the response's id (`resp_…`: `id` of a JSON body, `response.id` of a
    /// stream event), which a later request may continue (`core::context_memory`). Gemini cache
    /// creation: the cache's `name` (`cachedContents/…`), which later requests may read.
    pub response_id: Option<String>,
    /// Gemini cache creation: when the provider expires the cache (its `expireTime`, in ms since
    /// the epoch), which bounds how long the memory keeps its size.
    pub expires_at_ms: Option<i64>,
}

/// Deepest JSON nesting followed; deeper input is treated as malformed.
const MAX_DEPTH: usize = 128;
/// Longest key remembered, as written; longer keys match nothing we read. Room for the longest key
/// we read (`cache_creation_input_tokens`, 27 bytes) with every byte written as a `\u` escape.
const KEY_CAP: usize = 192;
/// Longest captured string or number (model names, event types, token counts).
const CAPTURE_CAP: usize = 256;
/// Longest SSE field name kept (`data`, `event`).
const FIELD_CAP: usize = 8;
/// Bytes of an SSE event's data kept to recognise `[DONE]`.
const DATA_PREFIX_CAP: usize = 8;
/// Longest SSE event data held whole so a plain event can be skimmed instead of parsed; a longer
/// event is parsed as it streams (from its held start), exactly as before.
const EVENT_HOLD_CAP: usize = 4096;

/// Reads usage from a response body fed chunk by chunk, with bounded memory.
#[derive(Debug, Clone)]
pub struct UsageScanner {
    dialect: Dialect,
    endpoint: Endpoint,
    format: ResponseFormat,
    json: JsonState,
    message: Message,
    sse: SseState,
    found: Found,
    finished: Option<ScanOutcome>,
    /// Bytes of a leading UTF-8 byte order mark matched so far; 3 once the start is past.
    bom_seen: u8,
    /// The SSE event just dispatched was OpenAI's usage-only chunk (`"choices": []` and a usage).
    usage_only_event: bool,
    /// Removing the usage-only chunk from what the client receives ([`UsageScanner::drop_usage_chunk`]).
    strip: Option<Box<strip::Strip>>,
}

impl UsageScanner {
    pub fn new(dialect: Dialect, endpoint: Endpoint, format: ResponseFormat) -> UsageScanner {
        UsageScanner {
            dialect,
            endpoint,
            format,
            json: JsonState::new(format == ResponseFormat::Json),
            message: Message::default(),
            sse: SseState::default(),
            found: Found::default(),
            finished: None,
            bom_seen: 0,
            usage_only_event: false,
            strip: None,
        }
    }

    /// Makes this scanner what [`UsageScanner::new`] would return, keeping its buffers (the held
    /// event, the template's bytes, the container stack): a filter that scans one response after
    /// another reuses a scanner instead of building and moving a new one (some 1.5 KB) for each.
    /// A reset scanner is indistinguishable from a new one (`tests.rs` compares their `Debug`
    /// after arbitrary input).
    pub fn reset(&mut self, dialect: Dialect, endpoint: Endpoint, format: ResponseFormat) {
        self.dialect = dialect;
        self.endpoint = endpoint;
        self.format = format;
        self.json.reset_for(format == ResponseFormat::Json);
        self.message.clear();
        self.sse.reset();
        self.found.reset();
        self.finished = None;
        self.bom_seen = 0;
        self.usage_only_event = false;
        self.strip = None;
    }

    /// The same scanner without [`EventTemplate`]s: every plain event is skimmed.
    #[cfg(test)]
    fn without_event_templates(mut self) -> UsageScanner {
        self.sse.template.disabled = true;
        self
    }

    /// The same scanner reading every parsed event with the lexer (no `held` one-pass parse).
    #[cfg(test)]
    fn without_held_parse(mut self) -> UsageScanner {
        self.sse.held_parse_disabled = true;
        self
    }

    /// Feeds the next chunk of the response body. Chunks after [`UsageScanner::finish`] are ignored.
    pub fn feed(&mut self, mut chunk: &[u8]) {
        if self.finished.is_some() {
            return;
        }
        let whole = chunk.len();
        if self.bom_seen < 3 {
            chunk = self.skip_bom(chunk);
        }
        self.sse.ends_base = whole - chunk.len();
        self.feed_body(chunk);
    }

    /// A UTF-8 byte order mark at the very start of the body is not part of it (the SSE standard
    /// strips it; RFC 8259 lets a JSON reader ignore it). It may arrive split across chunks; bytes
    /// that start like one but are not are fed as they were.
    fn skip_bom<'c>(&mut self, mut chunk: &'c [u8]) -> &'c [u8] {
        const BOM: &[u8; 3] = b"\xEF\xBB\xBF";
        while let Some((&b, rest)) = chunk.split_first() {
            let Some(&want) = BOM.get(usize::from(self.bom_seen)) else { break };
            if b != want {
                let partial = usize::from(self.bom_seen);
                self.bom_seen = 3;
                if let Some(start) = BOM.get(..partial).filter(|p| !p.is_empty()) {
                    self.feed_body(start);
                }
                return chunk;
            }
            self.bom_seen += 1;
            chunk = rest;
        }
        chunk
    }

    fn feed_body(&mut self, chunk: &[u8]) {
        match self.format {
            ResponseFormat::Json => self.feed_json(chunk),
            ResponseFormat::Sse => self.feed_sse(chunk),
        }
    }

    /// Ends the body and returns what was found. Calling it again returns the same outcome.
    pub fn finish(&mut self) -> ScanOutcome {
        self.outcome().clone()
    }

    /// [`UsageScanner::finish`], lent instead of copied (the filter reads it once, at settlement).
    pub fn outcome(&mut self) -> &ScanOutcome {
        if self.finished.is_none() {
            let outcome = self.end();
            self.finished = Some(outcome);
        }
        self.finished.get_or_insert_with(ScanOutcome::default)
    }

    /// What the whole body said (once: the found model and id are moved into the outcome).
    fn end(&mut self) -> ScanOutcome {
        if self.format == ResponseFormat::Sse {
            // A last line or event without its terminating blank line still counts if complete.
            if self.sse.line_started {
                self.end_line();
            }
            self.dispatch_event();
        }
        // The upstream's own end of the response makes whatever usage it reported final.
        let ended = matches!(self.found.terminal, Some(TerminalEvent::Completed | TerminalEvent::Incomplete));
        let usage = self.found.has_usage.then(|| normalise(self.dialect, &self.found.usage));
        let is_final = self.found.usage_final || ended;
        ScanOutcome {
            tokens: usage.filter(|_| is_final),
            partial_tokens: usage.filter(|_| !is_final),
            model: self.found.model.take(),
            streamed_content_bytes: self.found.content_bytes,
            terminal: self.found.terminal,
            response_id: self.found.response_id.take(),
            expires_at_ms: self.found.expires_at_ms,
        }
    }
}

impl UsageScanner {
    // ---- Interpretation ----------------------------------------------------------------------

    fn commit_message(&mut self) {
        let message = &mut self.message;
        if !message.open {
            return;
        }
        message.open = false;
        // Counts of tool calls alone (an output item listing) are not a usage report.
        let has_usage = message.usage.iter().take(Field::WebSearches as usize).any(Option::is_some);
        self.usage_only_event = has_usage && message.empty_choices && self.format == ResponseFormat::Sse;
        if has_usage {
            let whole_body = self.format == ResponseFormat::Json && self.json.root == 0;
            if self.dialect == Dialect::Anthropic {
                // message_start and message_delta carry different, cumulative fields.
                for (slot, value) in self.found.usage.iter_mut().zip(message.usage) {
                    if value.is_some() {
                        *slot = value;
                    }
                }
                self.found.usage_final |= !message.early_usage;
            } else {
                self.found.usage = message.usage;
                // Gemini repeats usageMetadata on every chunk; the one with finishReason is final.
                self.found.usage_final = self.dialect != Dialect::Gemini || message.finished || whole_body;
            }
            self.found.has_usage = true;
        }
        if let Some(id) = message.response_id.take() {
            self.found.response_id = Some(unescape_lossy(&id));
        }
        if message.expires_at_ms.is_some() {
            self.found.expires_at_ms = message.expires_at_ms;
        }
        // The same model again (every chunk repeats it) is not decoded again.
        if message.model_seen && (self.found.model.is_none() || self.found.model_raw != message.model) {
            self.found.note_model(&message.model);
        }
        let terminal = if message.error {
            Some(TerminalEvent::Failed)
        } else {
            message.type_terminal.or(message.status_terminal).or(message.finished.then_some(TerminalEvent::Completed))
        };
        if terminal.is_some() {
            self.found.terminal = terminal;
        }
    }
}

/// A byte buffer that keeps at most `N` bytes and remembers whether more were offered. An
/// overflowed buffer reads as `None`, so a truncated key or value never matches anything.
#[derive(Clone, Copy)]
struct Capped<const N: usize> {
    bytes: [u8; N],
    len: usize,
    overflow: bool,
}

impl<const N: usize> Default for Capped<N> {
    fn default() -> Self {
        Capped { bytes: [0; N], len: 0, overflow: false }
    }
}

/// What it holds, not the bytes past its length (left from before a `clear`).
impl<const N: usize> std::fmt::Debug for Capped<N> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Capped").field("bytes", &self.bytes.get(..self.len)).field("overflow", &self.overflow).finish()
    }
}

impl<const N: usize> Capped<N> {
    fn clear(&mut self) {
        self.len = 0;
        self.overflow = false;
    }

    fn push(&mut self, b: u8) {
        self.extend(&[b]);
    }

    fn extend(&mut self, more: &[u8]) {
        if self.overflow {
            return;
        }
        let end = self.len.saturating_add(more.len());
        match self.bytes.get_mut(self.len..end) {
            Some(slot) => {
                slot.copy_from_slice(more);
                self.len = end;
            }
            None => self.overflow = true,
        }
    }

    fn as_slice(&self) -> Option<&[u8]> {
        if self.overflow {
            None
        } else {
            self.bytes.get(..self.len)
        }
    }
}

/// What the message being read has said so far.
#[derive(Debug, Clone, Default)]
struct Message {
    /// A message's root object has opened and not yet been committed.
    open: bool,
    usage: RawUsage,
    /// Some usage came from a place the stream reports again later (Anthropic `message_start`).
    early_usage: bool,
    model: Vec<u8>,
    model_seen: bool,
    type_seen: bool,
    type_terminal: Option<TerminalEvent>,
    status_terminal: Option<TerminalEvent>,
    finished: bool,
    error: bool,
    /// OpenAI's `choices` is an empty array (the usage-only chunk of a stream).
    empty_choices: bool,
    /// The Responses API response id (a created Gemini cache's name), as written.
    response_id: Option<Vec<u8>>,
    /// A created Gemini cache's `expireTime`.
    expires_at_ms: Option<i64>,
}

impl Message {
    /// Forgets everything, keeping the model buffer's allocation. Field by field: building a
    /// default `Message` and moving it in copies every byte of it (wasm's `memory.copy`).
    fn clear(&mut self) {
        let Message {
            open,
            usage,
            early_usage,
            model,
            model_seen,
            type_seen,
            type_terminal,
            status_terminal,
            finished,
            error,
            empty_choices,
            response_id,
            expires_at_ms,
        } = self;
        *open = false;
        *usage = RawUsage::default();
        *early_usage = false;
        model.clear();
        *model_seen = false;
        *type_seen = false;
        *type_terminal = None;
        *status_terminal = None;
        *finished = false;
        *error = false;
        *empty_choices = false;
        *response_id = None;
        *expires_at_ms = None;
    }
}

/// What complete messages have said, across the response.
#[derive(Debug, Clone, Default)]
struct Found {
    usage: RawUsage,
    has_usage: bool,
    /// The usage is the upstream's final word, not an early report of a stream that was then cut.
    usage_final: bool,
    model: Option<String>,
    /// `model` as written in the JSON (escapes undecoded), to recognise it cheaply.
    model_raw: Vec<u8>,
    content_bytes: u64,
    terminal: Option<TerminalEvent>,
    response_id: Option<String>,
    expires_at_ms: Option<i64>,
}

impl Found {
    /// What `Found::default()` is, keeping the model buffer's allocation.
    fn reset(&mut self) {
        let Found { usage, has_usage, usage_final, model, model_raw, content_bytes, terminal, response_id, expires_at_ms } = self;
        *usage = RawUsage::default();
        *has_usage = false;
        *usage_final = false;
        *model = None;
        model_raw.clear();
        *content_bytes = 0;
        *terminal = None;
        *response_id = None;
        *expires_at_ms = None;
    }

    /// The upstream reported `raw` (as written in the JSON) as its model.
    fn note_model(&mut self, raw: &[u8]) {
        self.model = Some(unescape_lossy(raw));
        self.model_raw.clear();
        self.model_raw.extend_from_slice(raw);
    }
}

mod held;
mod json;
mod paths;
mod sse;
mod template;
use json::*;
use paths::*;
use sse::*;
use template::*;

#[path = "usage/strip.rs"]
mod strip;
pub use strip::{Forward, HOLD_CAP};

#[cfg(test)]
#[path = "usage/tests.rs"]
mod tests;
