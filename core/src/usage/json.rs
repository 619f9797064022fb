//! The JSON lexer: a byte-level state machine over whole bodies, Gemini's array stream and SSE
//! event data, with a stack of open containers tagged with their place on the dialect's paths
//! (`paths`); values at the paths we read are captured, content strings counted, and everything
//! else skipped unread.

use super::*;

impl UsageScanner {
    // ---- JSON lexing -------------------------------------------------------------------------

    pub(super) fn feed_json(&mut self, mut bytes: &[u8]) {
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
    pub(super) fn string_run<'b>(&mut self, bytes: &'b [u8], key: bool) -> &'b [u8] {
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

    pub(super) fn json_byte(&mut self, b: u8) {
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

    pub(super) fn begin_value(&mut self, b: u8) {
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
        self.json.target = self.target_of(node);
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

    pub(super) fn open(&mut self, bracket: u8, node: Node) {
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

    pub(super) fn close(&mut self, bracket: u8) {
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

    pub(super) fn after_value(&mut self) {
        if self.json.stack.is_empty() {
            self.json.lex = Lex::Done;
            if self.format == ResponseFormat::Json && self.found.terminal.is_none() {
                self.found.terminal = Some(TerminalEvent::Completed);
            }
        } else {
            self.json.lex = Lex::AfterValue;
        }
    }

    pub(super) fn end_scalar(&mut self, kind: Scalar) {
        if kind == Scalar::Literal && !matches!(self.json.scratch.as_slice(), Some(b"true" | b"false" | b"null")) {
            self.json.fail();
            return;
        }
        self.message.take_scalar(self.endpoint, self.json.target, kind, self.json.scratch.as_slice());
        self.after_value();
    }

    /// What the value at `node` means in this response (some places are read only on one
    /// endpoint, or only in a whole JSON body).
    pub(super) fn target_of(&self, node: Node) -> Target {
        match node {
            // A response id only in the Responses API (and a cache's name when one is created);
            // the root `id` only of a whole JSON body.
            Node::Leaf(Target::ResponseId) if self.endpoint != Endpoint::Responses => Target::None,
            Node::Leaf(Target::RootId) if !matches!(self.endpoint, Endpoint::Responses | Endpoint::CreateCachedContent) => Target::None,
            Node::Leaf(Target::RootId) if self.format != ResponseFormat::Json => Target::None,
            // A cache's size is its billed prompt; a generation's total is not read.
            Node::Leaf(Target::CacheTokens | Target::ExpireTime) if self.endpoint != Endpoint::CreateCachedContent => Target::None,
            Node::Leaf(Target::CacheTokens) => Target::Usage(Field::Prompt),
            Node::Leaf(target) => target,
            _ => Target::None,
        }
    }
}

impl Message {
    /// A scalar value ended: what it says, if its `target` wants it. `value` is its text as
    /// written (`None` when it outgrew [`CAPTURE_CAP`]).
    pub(super) fn take_scalar(&mut self, endpoint: Endpoint, target: Target, kind: Scalar, value: Option<&[u8]>) {
        match (target, kind, value) {
            (Target::Usage(field) | Target::EarlyUsage(field), Scalar::Number, Some(text)) => {
                if let Some(slot) = self.usage.get_mut(field as usize) {
                    *slot = parse_count(text).or(*slot);
                }
                self.early_usage |= matches!(target, Target::EarlyUsage(_));
            }
            (Target::Model, Scalar::Str, Some(text)) if !text.is_empty() => {
                self.model.clear();
                self.model.extend_from_slice(text);
                self.model_seen = true;
            }
            (Target::Type, Scalar::Str, text) => {
                self.type_seen = true;
                self.type_terminal = text.and_then(|t| terminal_for_type(&unescape_if_needed(t)));
            }
            (Target::Status, Scalar::Str, Some(text)) if endpoint == Endpoint::Responses => {
                self.status_terminal = terminal_for_status(&unescape_if_needed(text));
            }
            (Target::Finish, Scalar::Str, _) => self.finished = true,
            (Target::ResponseId | Target::RootId, Scalar::Str, Some(text)) if !text.is_empty() => {
                self.response_id = Some(text.to_vec());
            }
            (Target::ExpireTime, Scalar::Str, Some(text)) => {
                self.expires_at_ms = std::str::from_utf8(text).ok().and_then(crate::context_memory::timestamp_ms);
            }
            (Target::OutputType, Scalar::Str, Some(b"web_search_call")) => {
                if let Some(slot) = self.usage.get_mut(Field::WebSearches as usize) {
                    *slot = Some(slot.unwrap_or(0).saturating_add(1));
                }
            }
            _ => {}
        }
    }
}

/// Where the JSON lexer is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Lex {
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
pub(super) enum Scalar {
    Str,
    Number,
    Literal,
}

#[derive(Debug, Clone)]
pub(super) struct JsonState {
    pub(super) lex: Lex,
    /// Open containers, innermost last.
    pub(super) stack: Vec<Frame>,
    /// The key being read or just read in the innermost object (only under a live node).
    pub(super) key: Capped<KEY_CAP>,
    /// The key holds a backslash escape: it is decoded before it is compared.
    pub(super) key_escaped: bool,
    /// Stack depth of a message's root object: 0, or 1 in a JSON-array stream.
    pub(super) root: usize,
    /// Whether a top-level array is a stream of messages (JSON bodies).
    pub(super) array_stream: bool,
    pub(super) escaped: bool,
    /// What the value being read means.
    pub(super) target: Target,
    /// The value being read, when its target wants it.
    pub(super) scratch: Capped<CAPTURE_CAP>,
}

impl JsonState {
    pub(super) fn new(array_stream: bool) -> JsonState {
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

    /// What [`JsonState::new`] returns, keeping the stack's allocation.
    pub(super) fn reset_for(&mut self, array_stream: bool) {
        self.reset();
        self.key.clear();
        self.key_escaped = false;
        self.array_stream = array_stream;
    }

    pub(super) fn reset(&mut self) {
        self.lex = Lex::Value;
        self.stack.clear();
        self.root = 0;
        self.escaped = false;
        self.target = Target::None;
        self.scratch.clear();
    }

    pub(super) fn fail(&mut self) {
        self.lex = Lex::Error;
    }

    pub(super) fn start_key(&mut self) {
        self.key.clear();
        self.key_escaped = false;
    }

    pub(super) fn key_bytes(&mut self, run: &[u8]) {
        if self.stack.last().is_some_and(|f| f.node != Node::Dead) {
            self.key.extend(run);
        }
    }
}

/// An open container and where it sits.
#[derive(Debug, Clone, Copy)]
pub(super) struct Frame {
    /// `{` or `[`.
    pub(super) bracket: u8,
    pub(super) node: Node,
}

pub(super) fn is_ws(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r')
}

/// A byte of a number or a literal (`true`, `false`, `null`) as the lexer takes them: ASCII
/// letters and digits, `-`, `+` and `.`. By bitmask: a shift and a test per byte.
#[inline(always)]
pub(super) fn is_scalar_byte(b: u8) -> bool {
    let mask = match b >> 6 {
        0 => SCALAR_BYTES_0_63,
        1 => SCALAR_BYTES_64_127,
        _ => 0,
    };
    (mask >> (b & 63)) & 1 != 0
}

const SCALAR_BYTES_0_63: u64 = scalar_bytes_from(0);
const SCALAR_BYTES_64_127: u64 = scalar_bytes_from(64);

/// Bit `i` is set when byte `from + i` is a scalar byte.
const fn scalar_bytes_from(from: u8) -> u64 {
    let mut mask = 0u64;
    let mut i = 0u8;
    while i < 64 {
        let byte = from + i;
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'+' | b'.') {
            mask |= 1 << i;
        }
        i += 1;
    }
    mask
}

/// The text of a short JSON string value, decoded only when it holds an escape.
pub(super) fn unescape_if_needed(raw: &[u8]) -> std::borrow::Cow<'_, [u8]> {
    if raw.contains(&b'\\') {
        std::borrow::Cow::Owned(unescape_lossy(raw).into_bytes())
    } else {
        std::borrow::Cow::Borrowed(raw)
    }
}

/// Decodes a JSON string's escapes (invalid ones and lone surrogates become U+FFFD).
pub(super) fn unescape_lossy(raw: &[u8]) -> String {
    if bytes::find_either(raw, b'\\', b'\\').is_none() {
        // Valid UTF-8 (what providers send) is copied as it is; `from_utf8_lossy` would walk
        // it chunk by chunk first.
        return match std::str::from_utf8(raw) {
            Ok(text) => text.to_owned(),
            Err(_) => String::from_utf8_lossy(raw).into_owned(),
        };
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

/// A token count: plain non-negative integer text (anything else is ignored).
/// Digit by digit, as `str::parse::<u64>` reads such text (one that overflows is no count).
pub(super) fn parse_count(text: &[u8]) -> Option<u64> {
    if text.is_empty() {
        return None;
    }
    // `n * 10 + digit` fits in a u64 unless `n` is past `u64::MAX / 10`, or at it with a digit
    // past `u64::MAX % 10`. Compared, not `checked_mul`: in wasm32 a 64-bit multiply with an
    // overflow check is a call to a 128-bit multiply (`__multi3`), once per digit.
    const LAST_SAFE: u64 = u64::MAX / 10;
    const LAST_DIGIT: u64 = u64::MAX % 10;
    text.iter().try_fold(0u64, |n, &d| {
        let digit = u64::from(d.wrapping_sub(b'0'));
        let fits = n < LAST_SAFE || (n == LAST_SAFE && digit <= LAST_DIGIT);
        (d.is_ascii_digit() && fits).then(|| n * 10 + digit)
    })
}
