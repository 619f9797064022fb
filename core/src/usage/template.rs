//! Skimming plain events and recognising their shape (docs/metering.md, "Event templates"):
//! most events of a stream are content deltas that change nothing but the content count, so they
//! are skimmed from quote to quote looking only at keys, and the next event with the same bytes
//! around a different content string is counted by comparing bytes.

use super::*;

/// The shape of the last skimmed event, cut around its last content string.
///
/// A stream's content events differ only in that string: OpenAI repeats `id`, `model`,
/// `created`, ... around `"content":"…"`, Anthropic repeats `type` and `index` around
/// `"text":"…"`. An event that is `head` + a string body + `tail`, byte for byte, under the same
/// event name, is exactly what skimming it would find again: the same keys and values (the model
/// compared against has not changed: any parsed event forgets the template), and one different
/// content string. So it is recognised by comparing bytes (sixteen at a time with SIMD, [`bytes::same_bytes`]), instead of walking
/// its thirty-odd strings.
#[derive(Debug, Clone, Default)]
pub(super) struct EventTemplate {
    /// Off only in tests, to compare with plain skimming.
    pub(super) disabled: bool,
    pub(super) valid: bool,
    /// `data: ` and then the data up to and including the content string's opening quote: the
    /// framing and the head are one comparison.
    line_head: Vec<u8>,
    /// From the content string's closing quote to the end of the data, and then the blank line
    /// (`\n\n`) that ends the event.
    line_tail: Vec<u8>,
    /// Content bytes of the event outside that string.
    pub(super) other_content: u64,
    /// Neither head nor tail holds a line break (the event was one `data` line).
    pub(super) single_line: bool,
    pub(super) event_name: Vec<u8>,
}

const DATA_FIELD: &[u8] = b"data: ";
const BLANK_LINE: &[u8] = b"\n\n";

impl EventTemplate {
    /// The data up to and including the content string's opening quote.
    fn head(&self) -> &[u8] {
        self.line_head.get(DATA_FIELD.len()..).unwrap_or_default()
    }

    /// From the content string's closing quote to the end of the data.
    fn tail(&self) -> &[u8] {
        self.line_tail.get(..self.line_tail.len().saturating_sub(BLANK_LINE.len())).unwrap_or_default()
    }

    /// The content bytes of `data` if it has the template's shape; `None` if it must be skimmed.
    pub(super) fn content_of(&self, data: &[u8], event_name: Option<&[u8]>) -> Option<u64> {
        if !self.valid || event_name != Some(self.event_name.as_slice()) {
            return None;
        }
        let (want_head, want_tail) = (self.head(), self.tail());
        let middle_end = data.len().checked_sub(want_tail.len())?;
        let head = data.get(..want_head.len())?;
        let middle = data.get(want_head.len()..middle_end)?;
        let tail = data.get(middle_end..)?;
        let same = bytes::same_bytes(head, want_head) && bytes::same_bytes(tail, want_tail);
        (same && bytes::is_unterminated_string_body(middle)).then(|| self.other_content.saturating_add(middle.len() as u64))
    }

    /// A whole event at the start of `bytes`, `data: ` + head + string body + tail + `\n\n`
    /// under the same event name: its length in `bytes` and its content bytes. This is
    /// [`EventTemplate::content_of`] without holding the data first: the string body ends at
    /// its first unescaped quote (the tail starts with that quote), and no line break may
    /// come before the blank line, so the SSE framing would have made the same event of it.
    pub(super) fn match_event(&self, bytes: &[u8], event_name: Option<&[u8]>) -> Option<(usize, u64)> {
        // The name compared by length first: most streams have none (OpenAI), and comparing two
        // empty slices is still a `memcmp` call.
        let same_name = event_name.is_some_and(|name| name.len() == self.event_name.len() && (name.is_empty() || name == self.event_name.as_slice()));
        if !self.valid || !self.single_line || !same_name {
            return None;
        }
        let (line_head, line_tail) = (self.line_head.as_slice(), self.line_tail.as_slice());
        if !bytes::same_bytes(bytes.get(..line_head.len())?, line_head) {
            return None;
        }
        let body = bytes.get(line_head.len()..)?;
        let middle = bytes::string_body_on_one_line(body)?;
        if !bytes::same_bytes(body.get(middle..middle + line_tail.len())?, line_tail) {
            return None;
        }
        Some((line_head.len() + middle + line_tail.len(), self.other_content.saturating_add(middle as u64)))
    }

    /// Remembers a skimmed event's shape: `slot` is its last content string (inside the quotes),
    /// `content` what skimming counted.
    pub(super) fn learn(&mut self, data: &[u8], slot: Option<Range<usize>>, content: u64, event_name: Option<&[u8]>) {
        self.valid = false;
        let (Some(slot), Some(event_name), false) = (slot, event_name, self.disabled) else { return };
        let (Some(head), Some(tail)) = (data.get(..slot.start), data.get(slot.end..)) else { return };
        self.line_head.clear();
        self.line_head.extend_from_slice(DATA_FIELD);
        self.line_head.extend_from_slice(head);
        self.line_tail.clear();
        self.line_tail.extend_from_slice(tail);
        self.line_tail.extend_from_slice(BLANK_LINE);
        self.event_name.clear();
        self.event_name.extend_from_slice(event_name);
        self.other_content = content.saturating_sub(slot.len() as u64);
        let line_break = |bytes: &[u8]| bytes::find_either(bytes, b'\n', b'\r').is_some();
        self.single_line = !line_break(head) && !line_break(tail);
        self.valid = true;
    }

    pub(super) fn forget(&mut self) {
        self.valid = false;
    }

    /// What `EventTemplate::default()` is, keeping its buffers' allocations.
    pub(super) fn reset(&mut self) {
        let EventTemplate { disabled, valid, line_head, line_tail, other_content, single_line, event_name } = self;
        *disabled = false;
        *valid = false;
        line_head.clear();
        line_tail.clear();
        *other_content = 0;
        *single_line = false;
        event_name.clear();
    }
}

impl UsageScanner {
    /// What skimming an event found ([`Skimmed`]), or `None` if the event may carry usage, a
    /// new model, an end or an error (it is then parsed in full).
    ///
    /// The stream's first model is taken from a skimmed event too (then every later event that
    /// names it is skimmed or matched by shape): only when no model is known yet, the event's
    /// data is one object (`{…}`), and every `model` in it is the same plain string (an escaped
    /// one is left to the parser, which decodes it). Otherwise the first content event of every
    /// stream would be parsed in full, and the second skimmed to learn the shape.
    ///
    /// Most events of a stream are content deltas. Parsing each one costs tens of instructions
    /// per byte; this hops from string to string (sixteen bytes at a time with SIMD) and looks only at keys.
    /// It bails out on any key that could matter: `usage` (unless `null`), `error`, `status`,
    /// `response`, `message`, Gemini's keys, a `model` other than the one already reported, a
    /// terminal `type` (or event name), or a Responses `*.done` event (which repeats its text).
    /// What is left can only add content: the strings under the dialect's content keys.
    pub(super) fn skim_plain_event(&self, data: &[u8]) -> Option<Skimmed> {
        if self.dialect == Dialect::Gemini || self.sse.event_name.as_slice().is_some_and(|n| terminal_for_type(n).is_some())
        {
            return None;
        }
        // A usage object (OpenAI's usage chunk, Anthropic's `message_delta`) is found before the
        // walk, which would bail on it only at its key, near the event's end. Bytes that only
        // look like one (a key ending in `\"usage`) send the event to the parser too, which is
        // always right, only slower; one written otherwise (`"usage": {`) the walk bails on.
        if bytes::before_a_brace(data, b"\"usage\":") {
            return None;
        }
        let mut content = 0u64;
        // Data cut inside a string: where that string started (just past its quote). A key or
        // a model / type written with escapes is left to the parser, which decodes them.
        let mut string_start: Option<usize> = None;
        // The key just read wants its string value, expected to open at `value_quote`.
        let mut pending = Pending::Nothing;
        let mut value_quote = usize::MAX;
        // The last content string value (inside its quotes): the template's variable slot.
        let mut last_content: Option<Range<usize>> = None;
        // The model this event names, when none was known before it.
        let mut first_model: Option<Range<usize>> = None;
        let known_model = self.found.model.is_some().then_some(self.found.model_raw.as_slice());
        let one_object = data.trim_ascii().first() == Some(&b'{') && data.trim_ascii().last() == Some(&b'}');
        // String to string: the next opening quote (outside strings only `"` matters), then the
        // string's closing quote, both found sixteen bytes at a time.
        let mut at = 0;
        while let Some(open) = bytes::find_either_from(data, at, b'"', b'"') {
            let start = open + 1;
            let Some((end, string_escaped)) = bytes::string_end(data, start) else {
                string_start = Some(start);
                break;
            };
            at = end + 1;
            let text = data.get(start..end).unwrap_or_default();
            if start == value_quote.wrapping_add(1) {
                if string_escaped && matches!(pending, Pending::Model | Pending::Type) {
                    return None;
                }
                match pending {
                    Pending::Model => match (known_model, first_model.clone()) {
                        (Some(known), _) if known != text => return None,
                        (None, Some(first)) if data.get(first.clone()) != Some(text) => return None,
                        (None, None) if !one_object => return None,
                        (None, None) => first_model = Some(start..end),
                        _ => {}
                    },
                    Pending::Type if terminal_for_type(text).is_some() || text.ends_with(b".done") => return None,
                    Pending::Content => {
                        content = content.saturating_add(text.len() as u64);
                        last_content = Some(start..end);
                    }
                    _ => {}
                }
                pending = Pending::Nothing;
                continue;
            }
            let colon = skip_ws(data, at);
            if data.get(colon) != Some(&b':') {
                continue;
            }
            if string_escaped {
                return None;
            }
            // A key: what does its value mean?
            value_quote = skip_ws(data, colon + 1);
            let value_is_string = data.get(value_quote) == Some(&b'"');
            pending = match skim_key(self.dialect, text, key_word_at(data, start, text.len())) {
                SkimKey::Usage if data.get(value_quote..).is_some_and(|v| v.starts_with(b"null")) => Pending::Nothing,
                SkimKey::Usage | SkimKey::Bail => return None,
                SkimKey::Model if value_is_string => Pending::Model,
                SkimKey::Model => return None,
                SkimKey::Type => Pending::Type,
                SkimKey::Content => Pending::Content,
                SkimKey::Other => Pending::Nothing,
            };
        }
        match (string_start, pending) {
            // Data cut inside a string: a model or type cut short is left to the parser.
            (Some(start), Pending::Model | Pending::Type) if start == value_quote.wrapping_add(1) => None,
            (Some(start), Pending::Content) if start == value_quote.wrapping_add(1) => {
                Some(Skimmed { content: content.saturating_add(data.len().saturating_sub(start) as u64), slot: None, first_model })
            }
            _ => Some(Skimmed { content, slot: last_content, first_model }),
        }
    }
}

/// What [`UsageScanner::skim_plain_event`] found in an event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Skimmed {
    /// Its content bytes.
    pub(super) content: u64,
    /// The range of its last content string (inside the quotes), for [`EventTemplate`].
    pub(super) slot: Option<Range<usize>>,
    /// The model it names (as written, inside the quotes), when no model was known before it.
    pub(super) first_model: Option<Range<usize>>,
}

/// What the string value after a key means to [`UsageScanner::skim_plain_event`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Pending {
    Nothing,
    Model,
    Type,
    Content,
}

/// The first index at or after `at` that is not JSON whitespace. Inlined with its common case
/// first: providers' JSON is compact, and a byte above space is never whitespace.
#[inline(always)]
pub(super) fn skip_ws(data: &[u8], at: usize) -> usize {
    match data.get(at) {
        Some(&b) if b > b' ' => at,
        _ => skip_ws_run(data, at),
    }
}

fn skip_ws_run(data: &[u8], at: usize) -> usize {
    let mut at = at;
    while data.get(at).is_some_and(|&b| is_ws(b)) {
        at += 1;
    }
    at
}

/// What a key means to [`UsageScanner::skim_plain_event`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum SkimKey {
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
pub(super) const fn key_word(key: &[u8]) -> u64 {
    let mut word = 0u64;
    let mut shift = 0;
    let mut rest = key;
    while let [byte, tail @ ..] = rest {
        if shift == 64 {
            break;
        }
        word |= (*byte as u64) << shift;
        shift += 8;
        rest = tail;
    }
    word
}

/// [`key_word`] of `data[start..start + len]`, read as one word where eight bytes follow `start`
/// (a key is always followed by its closing quote and more), masked to the key's length.
pub(super) fn key_word_at(data: &[u8], start: usize, len: usize) -> u64 {
    match data.get(start..).and_then(|rest| rest.first_chunk::<8>()) {
        Some(eight) if len >= 8 => u64::from_le_bytes(*eight),
        Some(eight) => u64::from_le_bytes(*eight) & ((1u64 << (8 * len)) - 1),
        None => key_word(data.get(start..start + len).unwrap_or_default()),
    }
}

/// What `key` means; `word` is its [`key_word`].
pub(super) fn skim_key(dialect: Dialect, key: &[u8], word: u64) -> SkimKey {
    pub(super) const fn k(key: &[u8]) -> (usize, u64) {
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
    match (key.len(), word) {
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
