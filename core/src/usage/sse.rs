//! SSE framing: lines, fields and events as the Server-Sent Events standard reads them, each
//! event's data held (up to `EVENT_HOLD_CAP`) and then skimmed or parsed, `[DONE]`, and where
//! events end (recorded for the strip, `usage::strip`, so it never frames the body again).

use super::*;

impl UsageScanner {
    // ---- SSE framing -------------------------------------------------------------------------

    pub(super) fn feed_sse(&mut self, mut bytes: &[u8]) {
        let total = bytes.len();
        let missed = std::mem::take(&mut self.sse.template_missed);
        while let Some((&first, rest)) = bytes.split_first() {
            if first == b'd' && self.sse.at_event_start() && !(missed && bytes.len() == total) {
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

    /// A chunk that is exactly one whole event shaped like the last skimmed one
    /// ([`EventTemplate::match_event`]) at an event's start: counted as `feed_sse` would count
    /// it (its content, nothing else changes), without framing it. Per chunk this skips the
    /// framing loop, the strip's record of where events end and its check of them: about a
    /// fifth of a content event's cost in the filter. `false`: nothing was done; feed it.
    pub(super) fn take_template_chunk(&mut self, body: &[u8]) -> bool {
        if self.finished.is_some() || self.bom_seen < 3 || self.format != ResponseFormat::Sse || !self.sse.at_event_start() {
            return false;
        }
        match self.sse.template.match_event(body, self.sse.event_name.as_slice()) {
            None => {
                self.sse.template_missed = true;
                false
            }
            Some((len, content)) if len == body.len() => {
                self.found.content_bytes = self.found.content_bytes.saturating_add(content);
                self.sse.event_name.clear();
                // What framing it would leave: no usage-only event, no end waiting to be noted.
                self.usage_only_event = false;
                self.sse.dispatched = false;
                true
            }
            _ => false,
        }
    }

    /// Notes, for the strip, that an event just ended `at` bytes into the bytes being framed (if
    /// one did: [`SseState::dispatched`]). The strip reads these ends instead of framing the body
    /// again.
    pub(super) fn record_event_end(&mut self, at: usize) {
        if std::mem::take(&mut self.sse.dispatched) && self.sse.record_ends {
            self.sse.ends.push((self.sse.ends_base + at, self.usage_only_event));
        }
    }

    /// A field name ended with `:`; its value follows.
    pub(super) fn begin_field_value(&mut self) {
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

    pub(super) fn sse_value(&mut self, mut value: &[u8]) {
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
    pub(super) fn begin_data_line(&mut self) {
        if self.sse.has_data {
            self.event_data(b"\n");
        }
        self.sse.has_data = true;
    }

    /// An event's data is held (up to [`EVENT_HOLD_CAP`]) until the event ends, when
    /// [`UsageScanner::dispatch_event`] skims or parses it; a longer event is parsed as it streams.
    pub(super) fn event_data(&mut self, data: &[u8]) {
        self.sse.data_prefix.extend(data);
        if self.sse.streaming {
            self.feed_json(data);
            return;
        }
        if self.sse.held.len().saturating_add(data.len()) <= EVENT_HOLD_CAP {
            if self.sse.held.capacity() == 0 {
                // Once, room for the events a stream repeats and for its usage chunk (a few
                // hundred bytes), instead of growing it again for the first larger one.
                self.sse.held.reserve(HELD_START_CAPACITY);
            }
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
    pub(super) fn take_held_event(&mut self) {
        let mut held = std::mem::take(&mut self.sse.held);
        if !held.is_empty() && !is_done_marker(&self.sse.data_prefix) {
            let event_name = self.sse.event_name.as_slice();
            let content = match self.sse.template.content_of(&held, event_name) {
                Some(bytes) => Some(bytes),
                None => self.skim_plain_event(&held).map(|skimmed| {
                    self.sse.template.learn(&held, skimmed.slot, skimmed.content, event_name);
                    if let Some(model) = skimmed.first_model.and_then(|range| held.get(range)) {
                        self.found.note_model(model);
                    }
                    skimmed.content
                }),
            };
            match content {
                Some(bytes) => self.found.content_bytes = self.found.content_bytes.saturating_add(bytes),
                None => {
                    // A parsed event may change what skimming compares against (the model).
                    self.sse.template.forget();
                    // In one pass over the held bytes (`held`), or by the lexer from the start.
                    if !self.parse_held(&held) {
                        self.message.clear();
                        self.feed_json(&held);
                    }
                }
            }
        }
        held.clear();
        self.sse.held = held;
    }


    pub(super) fn end_line(&mut self) {
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
    pub(super) fn dispatch_event(&mut self) {
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
}

/// What the held data's buffer starts with ([`UsageScanner::event_data`]).
const HELD_START_CAPACITY: usize = 512;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) enum FieldKind {
    Data,
    Event,
    #[default]
    Ignore,
}

/// Where the SSE framing is.
#[derive(Debug, Clone, Default)]
pub(super) struct SseState {
    /// The previous byte was `\r`: a `\n` right after it belongs to the same line break.
    pub(super) after_cr: bool,
    /// The current line has at least one byte.
    pub(super) line_started: bool,
    /// Past the field name's colon.
    pub(super) in_value: bool,
    /// The value's first space is still to be dropped.
    pub(super) strip_space: bool,
    pub(super) field: Capped<FIELD_CAP>,
    pub(super) value_kind: FieldKind,
    /// The current event has a `data` field.
    pub(super) has_data: bool,
    pub(super) data_prefix: Capped<DATA_PREFIX_CAP>,
    /// The current event's data, while it fits in [`EVENT_HOLD_CAP`].
    pub(super) held: Vec<u8>,
    /// The current event outgrew `held` and is being parsed as it streams.
    pub(super) streaming: bool,
    pub(super) event_name: Capped<CAPTURE_CAP>,
    pub(super) template: EventTemplate,
    /// An event was just dispatched (read by [`UsageScanner::record_event_end`]).
    pub(super) dispatched: bool,
    /// The bytes about to be framed were just compared with the template, whole, and did not
    /// match ([`UsageScanner::take_template_chunk`]): `feed_sse` does not compare them again.
    pub(super) template_missed: bool,
    /// Record where events end, for the strip (`usage::strip`).
    pub(super) record_ends: bool,
    /// Each event that ended during the current [`UsageScanner::feed`]: its end, as an offset
    /// into the bytes given to `feed`, and whether it was the usage-only chunk.
    pub(super) ends: Vec<(usize, bool)>,
    /// Bytes of the current `feed` before the framed ones (a byte order mark skipped).
    pub(super) ends_base: usize,
    /// Off only in tests: every parsed event goes to the lexer (`held`).
    pub(super) held_parse_disabled: bool,
}

impl SseState {
    /// What `SseState::default()` is, keeping the held data's, the ends' and the template's
    /// allocations.
    pub(super) fn reset(&mut self) {
        let SseState {
            after_cr,
            line_started,
            in_value,
            strip_space,
            field,
            value_kind,
            has_data,
            data_prefix,
            held,
            streaming,
            event_name,
            template,
            dispatched,
            template_missed,
            record_ends,
            ends,
            ends_base,
            held_parse_disabled,
        } = self;
        *after_cr = false;
        *line_started = false;
        *in_value = false;
        *strip_space = false;
        field.clear();
        *value_kind = FieldKind::default();
        *has_data = false;
        data_prefix.clear();
        held.clear();
        *streaming = false;
        event_name.clear();
        template.reset();
        *dispatched = false;
        *template_missed = false;
        *record_ends = false;
        ends.clear();
        *ends_base = 0;
        *held_parse_disabled = false;
    }

    /// At the start of a line with no event data yet: where [`EventTemplate::match_event`] can
    /// take a whole event (the state after it is the state before it).
    pub(super) fn at_event_start(&self) -> bool {
        !self.after_cr && !self.line_started && !self.has_data && !self.streaming && self.held.is_empty()
    }
}

pub(super) fn is_done_marker(prefix: &Capped<DATA_PREFIX_CAP>) -> bool {
    prefix.as_slice().is_some_and(|p| p.trim_ascii() == b"[DONE]")
}
