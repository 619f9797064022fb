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
//! count) is parsed in full from the held bytes; a longer event is parsed as it streams. Either
//! way the decision depends only on the event's bytes, never on how they were chunked.
//!
//! A skimmed event also leaves its shape (`EventTemplate`): the next event that is the same bytes
//! around a different content string is counted by comparing bytes, without holding or skimming
//! it (docs/metering.md, "Event templates").
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
    /// stream event), which a later request may continue (`core::context_memory`).
    pub response_id: Option<String>,
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

    /// The same scanner without [`EventTemplate`]s: every plain event is skimmed.
    #[cfg(test)]
    fn without_event_templates(mut self) -> UsageScanner {
        self.sse.template.disabled = true;
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
        if let Some(outcome) = &self.finished {
            return outcome.clone();
        }
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
        let outcome = ScanOutcome {
            tokens: usage.filter(|_| is_final),
            partial_tokens: usage.filter(|_| !is_final),
            model: self.found.model.clone(),
            streamed_content_bytes: self.found.content_bytes,
            terminal: self.found.terminal,
            response_id: self.found.response_id.clone(),
        };
        self.finished = Some(outcome.clone());
        outcome
    }

    // ---- SSE framing -------------------------------------------------------------------------

    fn feed_sse(&mut self, mut bytes: &[u8]) {
        let total = bytes.len();
        while let Some((&first, rest)) = bytes.split_first() {
            if first == b'd' && self.sse.at_event_start() {
                // A whole `data:` event shaped like the last skimmed one: counted in one pass.
                let event_name = self.sse.event_name.as_slice();
                if let Some((len, content)) = self.sse.template.match_event(bytes, event_name) {
                    self.found.content_bytes = self.found.content_bytes.saturating_add(content);
                    self.sse.event_name.clear();
                    bytes = bytes.get(len..).unwrap_or_default();
                    // A skimmed shape is never the usage-only chunk (skimming bails on `usage`).
                    self.usage_only_event = false;
                    self.sse.dispatched = true;
                    self.record_event_end(total - bytes.len());
                    continue;
                }
            }
            if self.sse.after_cr {
                self.sse.after_cr = false;
                if first == b'\n' {
                    bytes = rest;
                    // The `\n` of a `\r\n` that ended an event belongs to that event.
                    let at = self.sse.ends_base + (total - bytes.len());
                    if let Some(end) = self.sse.ends.last_mut().filter(|end| end.0 + 1 == at) {
                        end.0 = at;
                    }
                    continue;
                }
            }
            if self.sse.in_value {
                // Fast path: the value runs to the next line break.
                let end = bytes::find_either(bytes, b'\n', b'\r').unwrap_or(bytes.len());
                let (value, tail) = bytes.split_at(end);
                self.sse_value(value);
                bytes = tail;
                if let Some((&brk, tail)) = bytes.split_first() {
                    self.sse.after_cr = brk == b'\r';
                    self.end_line();
                    bytes = tail;
                    self.record_event_end(total - bytes.len());
                }
                continue;
            }
            bytes = rest;
            match first {
                b'\n' | b'\r' => {
                    self.sse.after_cr = first == b'\r';
                    self.end_line();
                    self.record_event_end(total - bytes.len());
                }
                b':' => {
                    self.sse.line_started = true;
                    self.begin_field_value();
                }
                _ => {
                    self.sse.line_started = true;
                    self.sse.field.push(first);
                }
            }
        }
    }

    /// Notes, for the strip, that an event just ended `at` bytes into the bytes being framed (if
    /// one did: [`SseState::dispatched`]). The strip reads these ends instead of framing the body
    /// again.
    fn record_event_end(&mut self, at: usize) {
        if std::mem::take(&mut self.sse.dispatched) && self.sse.record_ends {
            self.sse.ends.push((self.sse.ends_base + at, self.usage_only_event));
        }
    }

    /// A field name ended with `:`; its value follows.
    fn begin_field_value(&mut self) {
        self.sse.in_value = true;
        self.sse.strip_space = true;
        self.sse.value_kind = match self.sse.field.as_slice() {
            // A line starting with `:` is a comment.
            Some(b"") => FieldKind::Ignore,
            Some(b"data") => {
                self.begin_data_line();
                FieldKind::Data
            }
            Some(b"event") => {
                self.sse.event_name.clear();
                FieldKind::Event
            }
            _ => FieldKind::Ignore,
        };
    }

    fn sse_value(&mut self, mut value: &[u8]) {
        if value.is_empty() {
            return;
        }
        if self.sse.strip_space {
            self.sse.strip_space = false;
            if let Some((b' ', rest)) = value.split_first() {
                value = rest;
            }
        }
        match self.sse.value_kind {
            FieldKind::Data => self.event_data(value),
            FieldKind::Event => self.sse.event_name.extend(value),
            FieldKind::Ignore => {}
        }
    }

    /// Each `data` line after the first adds a newline to the event's data (SSE joins them so).
    fn begin_data_line(&mut self) {
        if self.sse.has_data {
            self.event_data(b"\n");
        }
        self.sse.has_data = true;
    }

    /// An event's data is held (up to [`EVENT_HOLD_CAP`]) until the event ends, when
    /// [`UsageScanner::dispatch_event`] skims or parses it; a longer event is parsed as it streams.
    fn event_data(&mut self, data: &[u8]) {
        self.sse.data_prefix.extend(data);
        if self.sse.streaming {
            self.feed_json(data);
            return;
        }
        if self.sse.held.len().saturating_add(data.len()) <= EVENT_HOLD_CAP {
            self.sse.held.extend_from_slice(data);
            return;
        }
        // Too long to hold: parse what was held, then the rest as it comes (same bytes, same order).
        self.sse.template.forget();
        let mut held = std::mem::take(&mut self.sse.held);
        self.feed_json(&held);
        held.clear();
        self.sse.held = held;
        self.sse.streaming = true;
        self.feed_json(data);
    }

    /// Parses or skims the held data of the event that just ended.
    fn take_held_event(&mut self) {
        let mut held = std::mem::take(&mut self.sse.held);
        if !held.is_empty() && !is_done_marker(&self.sse.data_prefix) {
            let event_name = self.sse.event_name.as_slice();
            let content = match self.sse.template.content_of(&held, event_name) {
                Some(bytes) => Some(bytes),
                None => self.skim_plain_event(&held).map(|(bytes, slot)| {
                    self.sse.template.learn(&held, slot, bytes, event_name);
                    bytes
                }),
            };
            match content {
                Some(bytes) => self.found.content_bytes = self.found.content_bytes.saturating_add(bytes),
                None => {
                    // A parsed event may change what skimming compares against (the model).
                    self.sse.template.forget();
                    self.feed_json(&held);
                }
            }
        }
        held.clear();
        self.sse.held = held;
    }

    /// The content bytes of an event that can change nothing else, or `None` if the event may
    /// carry usage, a new model, an end or an error (it is then parsed in full). With them, the
    /// range of the event's last content string (inside its quotes), for [`EventTemplate`].
    ///
    /// Most events of a stream are content deltas. Parsing each one costs tens of instructions
    /// per byte; this hops from string to string (eight bytes at a time) and looks only at keys.
    /// It bails out on any key that could matter: `usage` (unless `null`), `error`, `status`,
    /// `response`, `message`, Gemini's keys, a `model` other than the one already reported, a
    /// terminal `type` (or event name), or a Responses `*.done` event (which repeats its text).
    /// What is left can only add content: the strings under the dialect's content keys.
    fn skim_plain_event(&self, data: &[u8]) -> Option<(u64, Option<Range<usize>>)> {
        if self.dialect == Dialect::Gemini || self.sse.event_name.as_slice().is_some_and(|n| terminal_for_type(n).is_some())
        {
            return None;
        }
        let mut content = 0u64;
        // Inside a string: where it started (just past its quote).
        let mut string_start: Option<usize> = None;
        // A byte escaped by a backslash (ignored whatever it is).
        let mut escaped_at = usize::MAX;
        // The current string holds an escape (a key or a model / type written with escapes is
        // left to the parser, which decodes them).
        let mut string_escaped = false;
        // The key just read wants its string value, expected to open at `value_quote`.
        let mut pending = Pending::Nothing;
        let mut value_quote = usize::MAX;
        // The last content string value (inside its quotes): the template's variable slot.
        let mut last_content: Option<Range<usize>> = None;
        // One `"` or `\\` at `at`; `false` when the event must be parsed instead.
        let mut special = |at: usize, byte: u8| -> bool {
            if at == escaped_at {
                return true;
            }
            let Some(start) = string_start else {
                if byte == b'"' {
                    string_start = Some(at + 1);
                    string_escaped = false;
                }
                return true;
            };
            if byte == b'\\' {
                escaped_at = at + 1;
                string_escaped = true;
                return true;
            }
            string_start = None;
            let text = data.get(start..at).unwrap_or(&[]);
            if start == value_quote.wrapping_add(1) {
                if string_escaped && matches!(pending, Pending::Model | Pending::Type) {
                    return false;
                }
                match pending {
                    Pending::Model if self.found.model.is_none() || self.found.model_raw.as_slice() != text => return false,
                    Pending::Type if terminal_for_type(text).is_some() || text.ends_with(b".done") => return false,
                    Pending::Content => {
                        content = content.saturating_add(text.len() as u64);
                        last_content = Some(start..at);
                    }
                    _ => {}
                }
                pending = Pending::Nothing;
                return true;
            }
            let colon = skip_ws(data, at + 1);
            if data.get(colon) != Some(&b':') {
                return true;
            }
            if string_escaped {
                return false;
            }
            // A key: what does its value mean?
            value_quote = skip_ws(data, colon + 1);
            let value_is_string = data.get(value_quote) == Some(&b'"');
            pending = match skim_key(self.dialect, text) {
                SkimKey::Usage if data.get(value_quote..).is_some_and(|v| v.starts_with(b"null")) => Pending::Nothing,
                SkimKey::Usage | SkimKey::Bail => return false,
                SkimKey::Model if value_is_string => Pending::Model,
                SkimKey::Model => return false,
                SkimKey::Type => Pending::Type,
                SkimKey::Content => Pending::Content,
                SkimKey::Other => Pending::Nothing,
            };
            true
        };
        if !bytes::each_quote_or_backslash(data, &mut special) {
            return None;
        }
        match (string_start, pending) {
            // Data cut inside a string: a model or type cut short is left to the parser.
            (Some(start), Pending::Model | Pending::Type) if start == value_quote.wrapping_add(1) => None,
            (Some(start), Pending::Content) if start == value_quote.wrapping_add(1) => {
                Some((content.saturating_add(data.len().saturating_sub(start) as u64), None))
            }
            _ => Some((content, last_content)),
        }
    }

    fn end_line(&mut self) {
        if !self.sse.line_started {
            self.dispatch_event();
        } else if !self.sse.in_value {
            // A line without a colon is a field name with an empty value.
            match self.sse.field.as_slice() {
                Some(b"data") => self.begin_data_line(),
                Some(b"event") => self.sse.event_name.clear(),
                _ => {}
            }
        }
        self.sse.line_started = false;
        self.sse.in_value = false;
        self.sse.field.clear();
    }

    /// A blank line ends an event: apply it if its data was one complete JSON object or `[DONE]`.
    fn dispatch_event(&mut self) {
        self.usage_only_event = false;
        self.sse.dispatched = true;
        if self.sse.streaming {
            self.sse.streaming = false;
        } else {
            self.take_held_event();
        }
        if self.sse.has_data {
            if is_done_marker(&self.sse.data_prefix) {
                self.found.terminal = Some(TerminalEvent::Completed);
            } else if self.json.lex == Lex::Done && self.message.open {
                if !self.message.type_seen {
                    self.message.type_terminal = self.sse.event_name.as_slice().and_then(terminal_for_type);
                }
                self.commit_message();
            }
        }
        self.sse.has_data = false;
        self.sse.data_prefix.clear();
        self.sse.event_name.clear();
        self.json.reset();
        self.message.clear();
    }

    // ---- JSON lexing -------------------------------------------------------------------------

    fn feed_json(&mut self, mut bytes: &[u8]) {
        while let Some((&b, rest)) = bytes.split_first() {
            match self.json.lex {
                Lex::Str { key } => bytes = self.string_run(bytes, key),
                Lex::Number | Lex::Literal if is_scalar_byte(b) => {
                    // A whole run of the number or literal at once.
                    let end = bytes.iter().position(|&b| !is_scalar_byte(b)).unwrap_or(bytes.len());
                    let (run, rest) = bytes.split_at(end);
                    self.json.scratch.extend(run);
                    bytes = rest;
                }
                _ if is_ws(b) && self.json.lex != Lex::Error => {
                    let end = bytes.iter().position(|&b| !is_ws(b)).unwrap_or(bytes.len());
                    if matches!(self.json.lex, Lex::Number | Lex::Literal) {
                        self.json_byte(b);
                    }
                    bytes = bytes.get(end..).unwrap_or(&[]);
                }
                Lex::Error => return,
                _ => {
                    bytes = rest;
                    self.json_byte(b);
                }
            }
        }
    }

    /// Consumes string bytes up to and including the closing quote, if it is in `bytes`.
    fn string_run<'b>(&mut self, bytes: &'b [u8], key: bool) -> &'b [u8] {
        let mut end = bytes.len();
        let mut closed = false;
        let mut from = 0;
        if self.json.escaped && !bytes.is_empty() {
            // The byte after a backslash that ended the previous chunk.
            self.json.escaped = false;
            from = 1;
        }
        while let Some(tail) = bytes.get(from..) {
            match bytes::find_either(tail, b'"', b'\\') {
                None => break,
                Some(at) => {
                    let at = from + at;
                    if bytes.get(at) == Some(&b'"') {
                        end = at;
                        closed = true;
                        break;
                    }
                    // A backslash: skip the escaped byte, which may be in the next chunk.
                    self.json.key_escaped |= key;
                    from = at + 2;
                    if from > bytes.len() {
                        self.json.escaped = true;
                    }
                }
            }
        }
        let (run, rest) = bytes.split_at(end);
        if key {
            self.json.key_bytes(run);
        } else {
            match self.json.target {
                Target::Content => {
                    self.found.content_bytes = self.found.content_bytes.saturating_add(run.len() as u64);
                }
                Target::None => {}
                _ => self.json.scratch.extend(run),
            }
        }
        if !closed {
            return rest;
        }
        if key {
            self.json.lex = Lex::Colon;
        } else {
            self.end_scalar(Scalar::Str);
        }
        rest.get(1..).unwrap_or(&[])
    }

    fn json_byte(&mut self, b: u8) {
        match self.json.lex {
            Lex::Number | Lex::Literal => {
                if is_scalar_byte(b) {
                    self.json.scratch.push(b);
                    return;
                }
                let kind = if self.json.lex == Lex::Number { Scalar::Number } else { Scalar::Literal };
                self.end_scalar(kind);
                // The delimiter is handled by the state after the value.
                self.json_byte(b);
            }
            _ if is_ws(b) => {}
            Lex::Value | Lex::ValueOrClose => match b {
                b']' if self.json.lex == Lex::ValueOrClose => {
                    if self.json.stack.last().is_some_and(|f| f.node == Node::OChoices) {
                        self.message.empty_choices = true;
                    }
                    self.close(b'[')
                }
                _ => self.begin_value(b),
            },
            Lex::KeyOrClose | Lex::Key => match b {
                b'"' => {
                    self.json.start_key();
                    self.json.lex = Lex::Str { key: true };
                }
                b'}' if self.json.lex == Lex::KeyOrClose => self.close(b'{'),
                _ => self.json.fail(),
            },
            Lex::Colon => match b {
                b':' => self.json.lex = Lex::Value,
                _ => self.json.fail(),
            },
            Lex::AfterValue => match (b, self.json.stack.last().map(|f| f.bracket)) {
                (b',', Some(b'{')) => self.json.lex = Lex::Key,
                (b',', Some(b'[')) => self.json.lex = Lex::Value,
                (b'}', Some(b'{')) => self.close(b'{'),
                (b']', Some(b'[')) => self.close(b'['),
                _ => self.json.fail(),
            },
            Lex::Done | Lex::Error | Lex::Str { .. } => self.json.fail(),
        }
    }

    fn begin_value(&mut self, b: u8) {
        let node = match self.json.stack.last() {
            None => match b {
                b'{' => Node::Root,
                b'[' if self.json.array_stream => Node::Stream,
                _ => Node::Dead,
            },
            Some(Frame { node: Node::Dead, .. }) => Node::Dead,
            Some(Frame { bracket: b'[', node }) => step(self.dialect, *node, Step::Index),
            Some(Frame { node, .. }) => match self.json.key.as_slice() {
                // `"\u0075sage"` is the key `usage`.
                Some(key) if self.json.key_escaped => step(self.dialect, *node, Step::Key(unescape_lossy(key).as_bytes())),
                Some(key) => step(self.dialect, *node, Step::Key(key)),
                None => Node::Dead,
            },
        };
        let target = match node {
            // A response id only in the Responses API; the root `id` only of a whole JSON body.
            Node::Leaf(Target::ResponseId | Target::RootId) if self.endpoint != Endpoint::Responses => Target::None,
            Node::Leaf(Target::RootId) if self.format != ResponseFormat::Json => Target::None,
            Node::Leaf(target) => target,
            _ => Target::None,
        };
        self.json.target = target;
        self.json.scratch.clear();
        match b {
            b'{' | b'[' => self.open(b, node),
            b'"' => self.json.lex = Lex::Str { key: false },
            b'-' | b'0'..=b'9' => {
                self.json.scratch.push(b);
                self.json.lex = Lex::Number;
            }
            b't' | b'f' | b'n' => {
                self.json.scratch.push(b);
                self.json.lex = Lex::Literal;
            }
            _ => self.json.fail(),
        }
    }

    fn open(&mut self, bracket: u8, node: Node) {
        if self.json.stack.len() >= MAX_DEPTH {
            self.json.fail();
            return;
        }
        match (node, bracket) {
            // Gemini's JSON-array stream: each element is a message.
            (Node::Stream, _) => self.json.root = 1,
            (Node::Root, b'{') => {
                self.message.clear();
                self.message.open = true;
            }
            (Node::Leaf(Target::Error), b'{') => self.message.error = true,
            _ => {}
        }
        self.json.stack.push(Frame { bracket, node });
        self.json.lex = if bracket == b'{' { Lex::KeyOrClose } else { Lex::ValueOrClose };
    }

    fn close(&mut self, bracket: u8) {
        let frame = self.json.stack.pop();
        if frame.map(|f| f.bracket) != Some(bracket) {
            self.json.fail();
            return;
        }
        if frame.map(|f| f.node) == Some(Node::Root) && bracket == b'{' && self.format == ResponseFormat::Json {
            self.commit_message();
        }
        self.after_value();
    }

    fn after_value(&mut self) {
        if self.json.stack.is_empty() {
            self.json.lex = Lex::Done;
            if self.format == ResponseFormat::Json && self.found.terminal.is_none() {
                self.found.terminal = Some(TerminalEvent::Completed);
            }
        } else {
            self.json.lex = Lex::AfterValue;
        }
    }

    fn end_scalar(&mut self, kind: Scalar) {
        if kind == Scalar::Literal && !matches!(self.json.scratch.as_slice(), Some(b"true" | b"false" | b"null")) {
            self.json.fail();
            return;
        }
        let value = self.json.scratch.as_slice();
        match (self.json.target, kind, value) {
            (Target::Usage(field) | Target::EarlyUsage(field), Scalar::Number, Some(text)) => {
                if let Some(slot) = self.message.usage.get_mut(field as usize) {
                    *slot = parse_count(text).or(*slot);
                }
                self.message.early_usage |= matches!(self.json.target, Target::EarlyUsage(_));
            }
            (Target::Model, Scalar::Str, Some(text)) if !text.is_empty() => {
                self.message.model.clear();
                self.message.model.extend_from_slice(text);
                self.message.model_seen = true;
            }
            (Target::Type, Scalar::Str, text) => {
                self.message.type_seen = true;
                self.message.type_terminal = text.and_then(|t| terminal_for_type(&unescape_if_needed(t)));
            }
            (Target::Status, Scalar::Str, Some(text)) if self.endpoint == Endpoint::Responses => {
                self.message.status_terminal = terminal_for_status(&unescape_if_needed(text));
            }
            (Target::Finish, Scalar::Str, _) => self.message.finished = true,
            (Target::ResponseId | Target::RootId, Scalar::Str, Some(text)) if !text.is_empty() => {
                self.message.response_id = Some(text.to_vec());
            }
            (Target::OutputType, Scalar::Str, Some(b"web_search_call")) => {
                if let Some(slot) = self.message.usage.get_mut(Field::WebSearches as usize) {
                    *slot = Some(slot.unwrap_or(0).saturating_add(1));
                }
            }
            _ => {}
        }
        self.after_value();
    }

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
        // The same model again (every chunk repeats it) is not decoded again.
        if message.model_seen && (self.found.model.is_none() || self.found.model_raw != message.model) {
            self.found.model = Some(unescape_lossy(&message.model));
            self.found.model_raw.clear();
            self.found.model_raw.extend_from_slice(&message.model);
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

/// Token counts by the upstream's own field, before normalisation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Field {
    /// `prompt_tokens`, `input_tokens`, `promptTokenCount`.
    Prompt = 0,
    /// `completion_tokens`, `output_tokens`, `candidatesTokenCount`.
    Completion = 1,
    /// `cached_tokens`, `cache_read_input_tokens`, `cachedContentTokenCount`.
    CacheRead = 2,
    /// `cache_creation_input_tokens`.
    CacheWrite = 3,
    /// `reasoning_tokens` (already inside the completion count).
    Reasoning = 4,
    /// Gemini `thoughtsTokenCount` (not inside `candidatesTokenCount`).
    Thoughts = 5,
    /// Gemini `toolUsePromptTokenCount` (not inside `promptTokenCount`).
    ToolPrompt = 6,
    /// Anthropic `cache_creation.ephemeral_5m_input_tokens` (part of the cache writes).
    CacheWrite5m = 7,
    /// Anthropic `cache_creation.ephemeral_1h_input_tokens` (part of the cache writes).
    CacheWrite1h = 8,
    /// Hosted web-search calls: Anthropic `server_tool_use.web_search_requests`, or the number of
    /// OpenAI Responses `web_search_call` output items. Not a token count: a message with only
    /// this is not a usage report.
    WebSearches = 9,
}

const FIELDS: usize = 10;
type RawUsage = [Option<u64>; FIELDS];

fn normalise(dialect: Dialect, usage: &RawUsage) -> Tokens {
    let get = |field: Field| usage.get(field as usize).copied().flatten().unwrap_or(0);
    match dialect {
        Dialect::Anthropic => {
            // The total, or the two lifetimes' counts if they add up to more (as LiteLLM bills).
            let cache_write_1h = get(Field::CacheWrite1h);
            let by_lifetime = get(Field::CacheWrite5m).saturating_add(cache_write_1h);
            Tokens {
                input: get(Field::Prompt),
                output: get(Field::Completion),
                cache_read: get(Field::CacheRead),
                cache_write: get(Field::CacheWrite).max(by_lifetime),
                reasoning: 0,
                cache_write_1h,
                web_searches: get(Field::WebSearches),
            }
        }
        Dialect::Gemini => {
            let prompt = get(Field::Prompt);
            let cache_read = get(Field::CacheRead).min(prompt);
            let thoughts = get(Field::Thoughts);
            Tokens {
                input: (prompt - cache_read).saturating_add(get(Field::ToolPrompt)),
                output: get(Field::Completion).saturating_add(thoughts),
                cache_read,
                cache_write: 0,
                reasoning: thoughts,
                cache_write_1h: 0,
                web_searches: 0,
            }
        }
        Dialect::OpenAi | Dialect::AzureOpenAi => {
            let prompt = get(Field::Prompt);
            let cache_read = get(Field::CacheRead).min(prompt);
            let output = get(Field::Completion);
            Tokens {
                input: prompt - cache_read,
                output,
                cache_read,
                cache_write: 0,
                reasoning: get(Field::Reasoning).min(output),
                cache_write_1h: 0,
                web_searches: get(Field::WebSearches),
            }
        }
    }
}

/// What the value at a path means to us.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Target {
    None,
    Usage(Field),
    /// A usage count the stream will report again, final, later (Anthropic `message_start`).
    EarlyUsage(Field),
    Model,
    Type,
    Status,
    Finish,
    /// An `error` member at the message root (an object there means the upstream failed).
    Error,
    /// Generated content: counted, never stored.
    Content,
    /// The `type` of an OpenAI Responses output item (`web_search_call` items are counted).
    OutputType,
    /// `response.id` of a Responses stream event.
    ResponseId,
    /// The `id` at a message's root: a Responses JSON body's own id.
    RootId,
}

/// Where a container sits on the paths we read: a node of a small trie per dialect, kept in each
/// stack frame. A value's node is one step from its container's, so finding out what a value
/// means costs one match, and nothing under a `Dead` container is looked at (not even its keys).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Node {
    /// Nothing we read is in here.
    Dead,
    /// A JSON body's top-level array whose elements are messages (Gemini's array stream).
    Stream,
    /// A message's root object.
    Root,
    /// A value we read.
    Leaf(Target),
    // OpenAI / Azure
    OResponse,
    OUsage,
    OPromptDetails,
    OCompletionDetails,
    OChoices,
    OChoice,
    OChoiceMessage,
    OToolCalls,
    OToolCall,
    OFunction,
    OOutput,
    OOutputItem,
    OOutputContent,
    OOutputPart,
    /// `response.output` of a Responses stream event (the final event repeats every item).
    OFinalOutput,
    OFinalItem,
    // Anthropic
    AMessage,
    AUsage,
    AEarlyUsage,
    ADelta,
    AContent,
    AContentItem,
    ACacheCreation,
    AEarlyCacheCreation,
    AServerTools,
    AEarlyServerTools,
    // Gemini
    GUsage,
    GCandidates,
    GCandidate,
    GContent,
    GParts,
    GPart,
}

/// How a value hangs off its container.
#[derive(Debug, Clone, Copy)]
enum Step<'a> {
    Key(&'a [u8]),
    Index,
}

/// The node of a value, from its container's node and its key or index.
fn step(dialect: Dialect, node: Node, step: Step<'_>) -> Node {
    use Node::*;
    use Step::{Index as I, Key as K};
    let leaf = Leaf;
    let usage = |field: Field| Leaf(Target::Usage(field));
    match (node, step) {
        (Stream, I) => Root,
        (Root, K(key)) => match (dialect, key) {
            (Dialect::Gemini, b"modelVersion") => leaf(Target::Model),
            (Dialect::Gemini, b"usageMetadata") => GUsage,
            (Dialect::Gemini, b"candidates") => GCandidates,
            (Dialect::Gemini, _) if key == b"error" => leaf(Target::Error),
            (Dialect::Gemini, _) => Dead,
            (_, b"model") => leaf(Target::Model),
            (_, b"type") => leaf(Target::Type),
            (_, b"error") => leaf(Target::Error),
            (Dialect::Anthropic, b"usage") => AUsage,
            (Dialect::Anthropic, b"message") => AMessage,
            (Dialect::Anthropic, b"delta") => ADelta,
            (Dialect::Anthropic, b"content") => AContent,
            (Dialect::Anthropic, _) => Dead,
            (_, b"status") => leaf(Target::Status),
            (_, b"usage") => OUsage,
            (_, b"response") => OResponse,
            (_, b"choices") => OChoices,
            // Responses API streaming deltas (`response.output_text.delta` and friends).
            (_, b"delta") => leaf(Target::Content),
            (_, b"output") => OOutput,
            (_, b"id") => leaf(Target::RootId),
            _ => Dead,
        },
        // OpenAI / Azure: chat, completions, embeddings, Responses.
        (OResponse, K(b"model")) => leaf(Target::Model),
        (OResponse, K(b"usage")) => OUsage,
        (OResponse, K(b"output")) => OFinalOutput,
        (OResponse, K(b"id")) => leaf(Target::ResponseId),
        (OFinalOutput, I) => OFinalItem,
        (OFinalItem | OOutputItem, K(b"type")) => leaf(Target::OutputType),
        (OUsage, K(b"prompt_tokens" | b"input_tokens")) => usage(Field::Prompt),
        (OUsage, K(b"completion_tokens" | b"output_tokens")) => usage(Field::Completion),
        (OUsage, K(b"prompt_tokens_details" | b"input_tokens_details")) => OPromptDetails,
        (OUsage, K(b"completion_tokens_details" | b"output_tokens_details")) => OCompletionDetails,
        (OPromptDetails, K(b"cached_tokens")) => usage(Field::CacheRead),
        (OCompletionDetails, K(b"reasoning_tokens")) => usage(Field::Reasoning),
        (OChoices, I) => OChoice,
        (OChoice, K(b"delta" | b"message")) => OChoiceMessage,
        (OChoice, K(b"text")) => leaf(Target::Content),
        (OChoiceMessage, K(b"content" | b"refusal" | b"reasoning_content")) => leaf(Target::Content),
        (OChoiceMessage, K(b"tool_calls")) => OToolCalls,
        (OToolCalls, I) => OToolCall,
        (OToolCall, K(b"function")) => OFunction,
        (OFunction, K(b"arguments")) => leaf(Target::Content),
        (OOutput, I) => OOutputItem,
        (OOutputItem, K(b"content")) => OOutputContent,
        (OOutputItem, K(b"arguments")) => leaf(Target::Content),
        (OOutputContent, I) => OOutputPart,
        (OOutputPart, K(b"text")) => leaf(Target::Content),
        // Anthropic. `message.usage` is message_start's: its output count is a placeholder.
        (AMessage, K(b"model")) => leaf(Target::Model),
        (AMessage, K(b"usage")) => AEarlyUsage,
        (AUsage, K(field)) => anthropic_usage(field),
        (AEarlyUsage, K(field)) => match anthropic_usage(field) {
            Leaf(Target::Usage(field)) => Leaf(Target::EarlyUsage(field)),
            ACacheCreation => AEarlyCacheCreation,
            AServerTools => AEarlyServerTools,
            other => other,
        },
        (ACacheCreation, K(b"ephemeral_5m_input_tokens")) => usage(Field::CacheWrite5m),
        (ACacheCreation, K(b"ephemeral_1h_input_tokens")) => usage(Field::CacheWrite1h),
        (AEarlyCacheCreation, K(b"ephemeral_5m_input_tokens")) => Leaf(Target::EarlyUsage(Field::CacheWrite5m)),
        (AEarlyCacheCreation, K(b"ephemeral_1h_input_tokens")) => Leaf(Target::EarlyUsage(Field::CacheWrite1h)),
        (AServerTools, K(b"web_search_requests")) => usage(Field::WebSearches),
        (AEarlyServerTools, K(b"web_search_requests")) => Leaf(Target::EarlyUsage(Field::WebSearches)),
        (ADelta, K(b"text" | b"partial_json" | b"thinking")) => leaf(Target::Content),
        (AContent, I) => AContentItem,
        (AContentItem, K(b"text" | b"thinking")) => leaf(Target::Content),
        // Gemini.
        (GUsage, K(b"promptTokenCount")) => usage(Field::Prompt),
        (GUsage, K(b"candidatesTokenCount")) => usage(Field::Completion),
        (GUsage, K(b"cachedContentTokenCount")) => usage(Field::CacheRead),
        (GUsage, K(b"thoughtsTokenCount")) => usage(Field::Thoughts),
        (GUsage, K(b"toolUsePromptTokenCount")) => usage(Field::ToolPrompt),
        (GCandidates, I) => GCandidate,
        (GCandidate, K(b"finishReason")) => leaf(Target::Finish),
        (GCandidate, K(b"content")) => GContent,
        (GContent, K(b"parts")) => GParts,
        (GParts, I) => GPart,
        (GPart, K(b"text")) => leaf(Target::Content),
        _ => Dead,
    }
}

fn anthropic_usage(field: &[u8]) -> Node {
    let usage = |field: Field| Node::Leaf(Target::Usage(field));
    match field {
        b"input_tokens" => usage(Field::Prompt),
        b"output_tokens" => usage(Field::Completion),
        b"cache_read_input_tokens" => usage(Field::CacheRead),
        b"cache_creation_input_tokens" => usage(Field::CacheWrite),
        b"cache_creation" => Node::ACacheCreation,
        b"server_tool_use" => Node::AServerTools,
        _ => Node::Dead,
    }
}

fn terminal_for_type(kind: &[u8]) -> Option<TerminalEvent> {
    match kind {
        b"response.completed" | b"message_stop" => Some(TerminalEvent::Completed),
        b"response.incomplete" => Some(TerminalEvent::Incomplete),
        b"response.failed" | b"error" => Some(TerminalEvent::Failed),
        _ => None,
    }
}

fn terminal_for_status(status: &[u8]) -> Option<TerminalEvent> {
    match status {
        b"completed" => Some(TerminalEvent::Completed),
        b"incomplete" => Some(TerminalEvent::Incomplete),
        b"failed" => Some(TerminalEvent::Failed),
        _ => None,
    }
}

fn is_done_marker(prefix: &Capped<DATA_PREFIX_CAP>) -> bool {
    prefix.as_slice().is_some_and(|p| p.trim_ascii() == b"[DONE]")
}

/// A token count: plain non-negative integer text (anything else is ignored).
fn parse_count(text: &[u8]) -> Option<u64> {
    if text.is_empty() || !text.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(text).ok()?.parse().ok()
}

/// What the string value after a key means to [`UsageScanner::skim_plain_event`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pending {
    Nothing,
    Model,
    Type,
    Content,
}

/// The first index at or after `at` that is not JSON whitespace.
fn skip_ws(data: &[u8], at: usize) -> usize {
    let mut at = at;
    while data.get(at).is_some_and(|&b| is_ws(b)) {
        at += 1;
    }
    at
}

/// What a key means to [`UsageScanner::skim_plain_event`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SkimKey {
    Usage,
    /// Where usage, an end or an error is reported, or content is repeated whole (Anthropic
    /// `content_block`, Responses `item` and `part`, whose text the parser does not count).
    Bail,
    Model,
    Type,
    /// Its string value is generated content somewhere in the dialect's events.
    Content,
    Other,
}

/// Up to the first eight bytes of a key, as one number (keys are compared by number, not by
/// `memcmp`, which is a call per comparison in wasm).
const fn key_word(key: &[u8]) -> u64 {
    let mut word = 0u64;
    let mut i = 0;
    while i < key.len() && i < 8 {
        word |= (key[i] as u64) << (8 * i);
        i += 1;
    }
    word
}

fn skim_key(dialect: Dialect, key: &[u8]) -> SkimKey {
    const fn k(key: &[u8]) -> (usize, u64) {
        (key.len(), key_word(key))
    }
    const USAGE: (usize, u64) = k(b"usage");
    const ERROR: (usize, u64) = k(b"error");
    const STATUS: (usize, u64) = k(b"status");
    const RESPONSE: (usize, u64) = k(b"response");
    const MESSAGE: (usize, u64) = k(b"message");
    const ITEM: (usize, u64) = k(b"item");
    const PART: (usize, u64) = k(b"part");
    const MODEL: (usize, u64) = k(b"model");
    const TYPE: (usize, u64) = k(b"type");
    const TEXT: (usize, u64) = k(b"text");
    const THINKING: (usize, u64) = k(b"thinking");
    const CONTENT: (usize, u64) = k(b"content");
    const REFUSAL: (usize, u64) = k(b"refusal");
    const DELTA: (usize, u64) = k(b"delta");
    const ARGUMENTS: (usize, u64) = k(b"arguments");
    const USAGE_METADATA: (usize, u64) = k(b"usageMetadata");
    const MODEL_VERSION: (usize, u64) = k(b"modelVersion");
    const FINISH_REASON: (usize, u64) = k(b"finishReason");
    const CONTENT_BLOCK: (usize, u64) = k(b"content_block");
    const PARTIAL_JSON: (usize, u64) = k(b"partial_json");
    const REASONING_CONTENT: (usize, u64) = k(b"reasoning_content");
    let openai = matches!(dialect, Dialect::OpenAi | Dialect::AzureOpenAi);
    let anthropic = dialect == Dialect::Anthropic;
    // Keys longer than eight bytes are confirmed whole once their first eight match.
    let long = |name: &[u8]| key == name;
    match (key.len(), key_word(key)) {
        USAGE => SkimKey::Usage,
        ERROR | STATUS | RESPONSE | MESSAGE | ITEM | PART => SkimKey::Bail,
        USAGE_METADATA if long(b"usageMetadata") => SkimKey::Bail,
        MODEL_VERSION if long(b"modelVersion") => SkimKey::Bail,
        FINISH_REASON if long(b"finishReason") => SkimKey::Bail,
        CONTENT_BLOCK if long(b"content_block") => SkimKey::Bail,
        MODEL => SkimKey::Model,
        TYPE => SkimKey::Type,
        TEXT => SkimKey::Content,
        THINKING if anthropic => SkimKey::Content,
        PARTIAL_JSON if anthropic && long(b"partial_json") => SkimKey::Content,
        CONTENT | REFUSAL | DELTA if openai => SkimKey::Content,
        ARGUMENTS if openai && long(b"arguments") => SkimKey::Content,
        REASONING_CONTENT if openai && long(b"reasoning_content") => SkimKey::Content,
        _ => SkimKey::Other,
    }
}

fn is_ws(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r')
}

fn is_scalar_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'+' | b'.')
}

/// The text of a short JSON string value, decoded only when it holds an escape.
fn unescape_if_needed(raw: &[u8]) -> std::borrow::Cow<'_, [u8]> {
    if raw.contains(&b'\\') {
        std::borrow::Cow::Owned(unescape_lossy(raw).into_bytes())
    } else {
        std::borrow::Cow::Borrowed(raw)
    }
}

/// Decodes a JSON string's escapes (invalid ones and lone surrogates become U+FFFD).
fn unescape_lossy(raw: &[u8]) -> String {
    if !raw.contains(&b'\\') {
        return String::from_utf8_lossy(raw).into_owned();
    }
    let mut out: Vec<u8> = Vec::with_capacity(raw.len());
    let mut units: Vec<u16> = Vec::new();
    let mut i = 0;
    let flush = |units: &mut Vec<u16>, out: &mut Vec<u8>| {
        if !units.is_empty() {
            out.extend(String::from_utf16_lossy(units).as_bytes());
            units.clear();
        }
    };
    while let Some(&b) = raw.get(i) {
        if b != b'\\' {
            flush(&mut units, &mut out);
            out.push(b);
            i += 1;
            continue;
        }
        let escaped = raw.get(i + 1).copied();
        i += 2;
        let simple = match escaped {
            Some(b'"') => Some(b'"'),
            Some(b'\\') => Some(b'\\'),
            Some(b'/') => Some(b'/'),
            Some(b'b') => Some(8),
            Some(b'f') => Some(12),
            Some(b'n') => Some(b'\n'),
            Some(b'r') => Some(b'\r'),
            Some(b't') => Some(b'\t'),
            _ => None,
        };
        if let Some(c) = simple {
            flush(&mut units, &mut out);
            out.push(c);
        } else if escaped == Some(b'u') {
            let unit = raw
                .get(i..i + 4)
                .and_then(|hex| std::str::from_utf8(hex).ok())
                .and_then(|hex| u16::from_str_radix(hex, 16).ok());
            match unit {
                Some(unit) => {
                    units.push(unit);
                    i += 4;
                }
                None => {
                    flush(&mut units, &mut out);
                    out.extend("\u{FFFD}".as_bytes());
                }
            }
        } else {
            flush(&mut units, &mut out);
            out.extend("\u{FFFD}".as_bytes());
        }
    }
    flush(&mut units, &mut out);
    String::from_utf8_lossy(&out).into_owned()
}

/// A byte buffer that keeps at most `N` bytes and remembers whether more were offered. An
/// overflowed buffer reads as `None`, so a truncated key or value never matches anything.
#[derive(Debug, Clone, Copy)]
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

/// Where the JSON lexer is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lex {
    /// Expecting a value.
    Value,
    /// Just after `[`: a value or `]`.
    ValueOrClose,
    /// Just after `{`: a key or `}`.
    KeyOrClose,
    /// After `,` in an object: a key.
    Key,
    Colon,
    /// After a value: `,` or a closing bracket.
    AfterValue,
    /// Inside a string (a key or a value).
    Str {
        key: bool,
    },
    Number,
    Literal,
    /// The top-level value is complete; only whitespace may follow.
    Done,
    /// Malformed input: everything up to the next SSE event (or the end of a JSON body) is ignored.
    Error,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scalar {
    Str,
    Number,
    Literal,
}

#[derive(Debug, Clone)]
struct JsonState {
    lex: Lex,
    /// Open containers, innermost last.
    stack: Vec<Frame>,
    /// The key being read or just read in the innermost object (only under a live node).
    key: Capped<KEY_CAP>,
    /// The key holds a backslash escape: it is decoded before it is compared.
    key_escaped: bool,
    /// Stack depth of a message's root object: 0, or 1 in a JSON-array stream.
    root: usize,
    /// Whether a top-level array is a stream of messages (JSON bodies).
    array_stream: bool,
    escaped: bool,
    /// What the value being read means.
    target: Target,
    /// The value being read, when its target wants it.
    scratch: Capped<CAPTURE_CAP>,
}

impl JsonState {
    fn new(array_stream: bool) -> JsonState {
        JsonState {
            lex: Lex::Value,
            stack: Vec::with_capacity(16),
            key: Capped::default(),
            key_escaped: false,
            root: 0,
            array_stream,
            escaped: false,
            target: Target::None,
            scratch: Capped::default(),
        }
    }

    fn reset(&mut self) {
        self.lex = Lex::Value;
        self.stack.clear();
        self.root = 0;
        self.escaped = false;
        self.target = Target::None;
        self.scratch.clear();
    }

    fn fail(&mut self) {
        self.lex = Lex::Error;
    }

    fn start_key(&mut self) {
        self.key.clear();
        self.key_escaped = false;
    }

    fn key_bytes(&mut self, run: &[u8]) {
        if self.stack.last().is_some_and(|f| f.node != Node::Dead) {
            self.key.extend(run);
        }
    }
}

/// An open container and where it sits.
#[derive(Debug, Clone, Copy)]
struct Frame {
    /// `{` or `[`.
    bracket: u8,
    node: Node,
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
    /// The Responses API response id, as written.
    response_id: Option<Vec<u8>>,
}

impl Message {
    /// Forgets everything, keeping the model buffer's allocation.
    fn clear(&mut self) {
        let mut model = std::mem::take(&mut self.model);
        model.clear();
        *self = Message { model, ..Message::default() };
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
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
enum FieldKind {
    Data,
    Event,
    #[default]
    Ignore,
}

/// Where the SSE framing is.
#[derive(Debug, Clone, Default)]
struct SseState {
    /// The previous byte was `\r`: a `\n` right after it belongs to the same line break.
    after_cr: bool,
    /// The current line has at least one byte.
    line_started: bool,
    /// Past the field name's colon.
    in_value: bool,
    /// The value's first space is still to be dropped.
    strip_space: bool,
    field: Capped<FIELD_CAP>,
    value_kind: FieldKind,
    /// The current event has a `data` field.
    has_data: bool,
    data_prefix: Capped<DATA_PREFIX_CAP>,
    /// The current event's data, while it fits in [`EVENT_HOLD_CAP`].
    held: Vec<u8>,
    /// The current event outgrew `held` and is being parsed as it streams.
    streaming: bool,
    event_name: Capped<CAPTURE_CAP>,
    template: EventTemplate,
    /// An event was just dispatched (read by [`UsageScanner::record_event_end`]).
    dispatched: bool,
    /// Record where events end, for the strip (`usage::strip`).
    record_ends: bool,
    /// Each event that ended during the current [`UsageScanner::feed`]: its end, as an offset
    /// into the bytes given to `feed`, and whether it was the usage-only chunk.
    ends: Vec<(usize, bool)>,
    /// Bytes of the current `feed` before the framed ones (a byte order mark skipped).
    ends_base: usize,
}

impl SseState {
    /// At the start of a line with no event data yet: where [`EventTemplate::match_event`] can
    /// take a whole event (the state after it is the state before it).
    fn at_event_start(&self) -> bool {
        !self.after_cr && !self.line_started && !self.has_data && !self.streaming && self.held.is_empty()
    }
}

/// The shape of the last skimmed event, cut around its last content string.
///
/// A stream's content events differ only in that string: OpenAI repeats `id`, `model`,
/// `created`, ... around `"content":"…"`, Anthropic repeats `type` and `index` around
/// `"text":"…"`. An event that is `head` + a string body + `tail`, byte for byte, under the same
/// event name, is exactly what skimming it would find again: the same keys and values (the model
/// compared against has not changed: any parsed event forgets the template), and one different
/// content string. So it is recognised by comparing bytes, eight at a time, instead of walking
/// its thirty-odd strings.
#[derive(Debug, Clone, Default)]
struct EventTemplate {
    /// Off only in tests, to compare with plain skimming.
    disabled: bool,
    valid: bool,
    /// The data up to and including the content string's opening quote.
    head: Vec<u8>,
    /// From the content string's closing quote to the end of the data.
    tail: Vec<u8>,
    /// Content bytes of the event outside that string.
    other_content: u64,
    /// Neither head nor tail holds a line break (the event was one `data` line).
    single_line: bool,
    event_name: Vec<u8>,
}

impl EventTemplate {
    /// The content bytes of `data` if it has the template's shape; `None` if it must be skimmed.
    fn content_of(&self, data: &[u8], event_name: Option<&[u8]>) -> Option<u64> {
        if !self.valid || event_name != Some(self.event_name.as_slice()) {
            return None;
        }
        let middle_end = data.len().checked_sub(self.tail.len())?;
        let head = data.get(..self.head.len())?;
        let middle = data.get(self.head.len()..middle_end)?;
        let tail = data.get(middle_end..)?;
        let same = bytes::same_bytes(head, &self.head) && bytes::same_bytes(tail, &self.tail);
        (same && bytes::is_unterminated_string_body(middle)).then(|| self.other_content.saturating_add(middle.len() as u64))
    }

    /// A whole event at the start of `bytes`, `data: ` + head + string body + tail + `\n\n`
    /// under the same event name: its length in `bytes` and its content bytes. This is
    /// [`EventTemplate::content_of`] without holding the data first: the string body ends at
    /// its first unescaped quote (the tail starts with that quote), and no line break may
    /// come before the blank line, so the SSE framing would have made the same event of it.
    fn match_event(&self, bytes: &[u8], event_name: Option<&[u8]>) -> Option<(usize, u64)> {
        if !self.valid || !self.single_line || event_name != Some(self.event_name.as_slice()) {
            return None;
        }
        let data = bytes.strip_prefix(b"data: ")?;
        if !bytes::same_bytes(data.get(..self.head.len())?, &self.head) {
            return None;
        }
        let body = data.get(self.head.len()..)?;
        let middle = bytes::string_body_on_one_line(body)?;
        let after = body.get(middle..)?;
        let end = self.tail.len();
        if !bytes::same_bytes(after.get(..end)?, &self.tail) || after.get(end..end + 2) != Some(b"\n\n".as_slice()) {
            return None;
        }
        let len = b"data: ".len() + self.head.len() + middle + end + 2;
        Some((len, self.other_content.saturating_add(middle as u64)))
    }

    /// Remembers a skimmed event's shape: `slot` is its last content string (inside the quotes),
    /// `content` what skimming counted.
    fn learn(&mut self, data: &[u8], slot: Option<Range<usize>>, content: u64, event_name: Option<&[u8]>) {
        self.valid = false;
        let (Some(slot), Some(event_name), false) = (slot, event_name, self.disabled) else { return };
        let (Some(head), Some(tail)) = (data.get(..slot.start), data.get(slot.end..)) else { return };
        self.head.clear();
        self.head.extend_from_slice(head);
        self.tail.clear();
        self.tail.extend_from_slice(tail);
        self.event_name.clear();
        self.event_name.extend_from_slice(event_name);
        self.other_content = content.saturating_sub(slot.len() as u64);
        let line_break = |b: &u8| *b == b'\n' || *b == b'\r';
        self.single_line = !head.iter().any(line_break) && !tail.iter().any(line_break);
        self.valid = true;
    }

    fn forget(&mut self) {
        self.valid = false;
    }
}

#[path = "usage/strip.rs"]
mod strip;
pub use strip::{Forward, HOLD_CAP};

#[cfg(test)]
#[path = "usage/tests.rs"]
mod tests;
