//! A validating scanner for a JSON object's top-level members, and byte-exact splicing.
//!
//! # Why not `serde_json::Value`
//! The filter must read a handful of top-level fields (`model`, `stream`, `max_tokens`, …) from a
//! request body and sometimes replace one, on every request, inside Envoy's wasm VM. Building a
//! `Value` tree and re-serializing it costs allocations per node and changes bytes the client sent
//! (number formatting, key order, escapes). Instead [`scan_object`] walks the body once, without
//! allocating per byte, and records where each top-level member's value lies; [`apply_edits`]
//! replaces exactly those byte ranges and copies every other byte unchanged.
//!
//! # No parser differential
//! What Tollgate routes and prices must be what the upstream acts on. So the scanner:
//! - fully validates the document (grammar, string escapes, UTF-8, no trailing bytes, nesting depth
//!   ≤ [`MAX_DEPTH`]): malformed or truncated JSON is refused, not guessed at;
//! - decodes escaped keys (`"mod\u0065l"` *is* `model`) and refuses a lone surrogate escape;
//! - refuses duplicate keys in the scanned object (after decoding): parsers disagree on whether the
//!   first or the last wins, so an ambiguous body is rejected rather than routed one way and served
//!   another.

use crate::bytes;
use crate::value_hash;
use std::borrow::Cow;
use std::fmt;
use std::ops::Range;

/// Deepest nesting accepted (objects + arrays). Real LLM requests nest far less.
pub const MAX_DEPTH: usize = 128;

/// The JSON type of a member's value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Object,
    Array,
    String,
    Number,
    Bool,
    Null,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Object => "an object",
            Kind::Array => "an array",
            Kind::String => "a string",
            Kind::Number => "a number",
            Kind::Bool => "a boolean",
            Kind::Null => "null",
        }
    }
}

/// One member of the scanned object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// The decoded key.
    pub key: String,
    /// The value's bytes in the scanned buffer (for a string: including its quotes).
    pub value: Range<usize>,
    pub kind: Kind,
    /// Bit `i` is set when `watch[i]` of [`scan_object_watching`] occurs as a string (a key or
    /// a string value, escapes decoded) anywhere inside this member's value; 0 without a watch.
    pub watched: u64,
    /// The hash of the value's bytes, from [`scan_object_fingerprinting`]; 0 from the other scans.
    pub value_hash: u64,
}

/// The members of one JSON object, in document order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopLevel {
    pub members: Vec<Member>,
    /// Whether the members carry their [`Member::value_hash`] ([`scan_object_fingerprinting`]).
    pub hashed: bool,
    /// Offset of the object's `{`.
    pub open: usize,
    /// Offset of the object's closing `}`.
    pub close: usize,
}

impl TopLevel {
    pub fn get(&self, key: &str) -> Option<&Member> {
        self.members.iter().find(|m| m.key == key)
    }
}

/// Why a body is not acceptable JSON. `offset` is a byte offset into the scanned buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JsonError {
    /// Grammar error, bad escape, control character, invalid UTF-8, or trailing bytes.
    Syntax { offset: usize, what: &'static str },
    /// The input ended inside a value.
    Truncated,
    /// The document is not an object at the top.
    NotAnObject,
    TooDeep,
    /// The same key twice in the scanned object.
    DuplicateKey(String),
}

impl fmt::Display for JsonError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            JsonError::Syntax { offset, what } => write!(f, "invalid JSON at byte {offset}: {what}"),
            JsonError::Truncated => f.write_str("invalid JSON: the body ends in the middle of a value (truncated?)"),
            JsonError::NotAnObject => f.write_str("the body must be a JSON object"),
            JsonError::TooDeep => write!(f, "invalid JSON: nested deeper than {MAX_DEPTH} levels"),
            JsonError::DuplicateKey(key) => {
                write!(f, "the field \"{key}\" appears more than once; send it once so its meaning is unambiguous")
            }
        }
    }
}

impl std::error::Error for JsonError {}

/// Scans and validates a whole JSON document that must be an object; returns its members.
pub fn scan_object(buf: &[u8]) -> Result<TopLevel, JsonError> {
    scan_object_watching(buf, &Watch::NONE)
}

/// Most strings [`scan_object_watching`] can watch for (one bit each in [`Member::watched`]).
pub const MAX_WATCHED: usize = 64;

/// Strings for [`scan_object_watching`] to note, with the filter that lets the scan skip most
/// other strings without comparing. Built at compile time (`const`), so a scan pays nothing to set
/// it up. An entry ending in `*` matches any string starting with what precedes the `*`. Entries
/// past [`MAX_WATCHED`] are ignored.
#[derive(Debug, Clone, Copy)]
pub struct Watch<'w> {
    entries: &'w [&'w str],
    filter: WatchFilter,
}

impl<'w> Watch<'w> {
    pub const NONE: Watch<'static> = Watch::new(&[]);

    pub const fn new(entries: &'w [&'w str]) -> Watch<'w> {
        let entries = if entries.len() > MAX_WATCHED { entries.split_at(MAX_WATCHED).0 } else { entries };
        let mut filter = WatchFilter { min_len: usize::MAX, max_len: 0, exact: 0, prefix: 0 };
        // Walked with `split_first` / `split_last` (const, and no index that could trap).
        let mut rest = entries;
        while let Some((entry, tail)) = rest.split_first() {
            rest = tail;
            let bytes = entry.as_bytes();
            let is_prefix = matches!(bytes.split_last(), Some((b'*', _)));
            let len = if is_prefix { bytes.len() - 1 } else { bytes.len() };
            let first = match bytes.split_first() {
                Some((first, _)) => *first,
                None => 0,
            };
            if len < filter.min_len {
                filter.min_len = len;
            }
            if is_prefix {
                filter.max_len = usize::MAX;
                filter.prefix |= 1 << (first & 63);
            } else {
                if len > filter.max_len {
                    filter.max_len = len;
                }
                filter.exact |= 1 << WatchFilter::slot(len, first);
            }
        }
        Watch { entries, filter }
    }

    /// The entries, in bit order.
    pub const fn entries(&self) -> &'w [&'w str] {
        self.entries
    }
}

/// [`scan_object`], also noting, per top-level member, which of the `watch` strings occur
/// inside it as a key or a string value ([`Member::watched`]), in the same single pass. Strings
/// with escapes are decoded before comparing, so `"imag\u0065"` is `image`.
///
/// This is how the filter learns that a body holds, say, an image part without walking it a second
/// time: the scanner already visits every string; for most of them the watch costs a table lookup.
pub fn scan_object_watching(buf: &[u8], watch: &Watch<'_>) -> Result<TopLevel, JsonError> {
    scan::<false>(buf, watch)
}

/// [`scan_object_watching`] that also hashes each top-level member's value in the same pass
/// ([`Member::value_hash`]), for the retry guard's fingerprint (`guard::fingerprint`).
///
/// # Why inside the scan
/// The scan already loads every byte of a long string sixteen at a time to find where it ends;
/// folding those same words into the hash costs a fraction of reading the value again (the
/// guard's wasm fuel, issue 12: a 2 KB chat request is one long prompt string). So the hash of a
/// value is defined by the scan: the whole sixteen-byte blocks at the start of each plain run
/// of a string (up to a quote, backslash or control byte) are folded straight in, and the bytes
/// between them are absorbed with their length (the primitives are `guard::fingerprint`'s). It is a
/// function of the value's bytes alone (runs are found from the value's own content, whatever
/// precedes it in the body), so the same value hashes the same in any body, at any offset.
/// Only gateways with a retry guard run this variant; the plain scan does no hashing (its members
/// carry a 0).
pub fn scan_object_fingerprinting(buf: &[u8], watch: &Watch<'_>) -> Result<TopLevel, JsonError> {
    scan::<true>(buf, watch)
}

fn scan<const HASH: bool>(buf: &[u8], watch: &Watch<'_>) -> Result<TopLevel, JsonError> {
    let (watch, filter) = (watch.entries, watch.filter);
    let mut p = Parser::<HASH> { buf, pos: 0, watch, filter, seen: 0, escaped: false, hash: 0, mark: 0 };
    p.skip_ws();
    if p.peek() != Some(b'{') {
        return Err(if p.peek().is_none() { JsonError::Truncated } else { JsonError::NotAnObject });
    }
    let top = p.object_members(1)?;
    p.skip_ws();
    if p.pos != buf.len() {
        return Err(p.err("unexpected bytes after the JSON object"));
    }
    Ok(top)
}

/// Scans the members of a nested object found by [`scan_object`] (e.g. `stream_options`,
/// `metadata`). `range` is that member's value range in `buf`; returned ranges are in `buf`.
/// The object was already validated, but its keys are decoded and checked for duplicates here.
pub fn scan_nested(buf: &[u8], range: Range<usize>) -> Result<TopLevel, JsonError> {
    let mut p = Parser::plain(buf.get(..range.end).ok_or(JsonError::Truncated)?, range.start);
    if p.peek() != Some(b'{') {
        return Err(JsonError::NotAnObject);
    }
    p.object_members(1)
}

/// Decodes a string value (its range includes the quotes). The value was validated by the scan.
pub fn decode_string(buf: &[u8], range: Range<usize>) -> Result<Cow<'_, str>, JsonError> {
    let raw = buf.get(range.clone()).ok_or(JsonError::Truncated)?;
    let inner = raw
        .strip_prefix(b"\"")
        .and_then(|r| r.strip_suffix(b"\""))
        .ok_or(JsonError::Syntax { offset: range.start, what: "expected a string" })?;
    if !inner.contains(&b'\\') {
        return std::str::from_utf8(inner)
            .map(Cow::Borrowed)
            .map_err(|_| JsonError::Syntax { offset: range.start, what: "invalid UTF-8" });
    }
    let mut p = Parser::plain(buf, range.start);
    p.string(true).map(|s| Cow::Owned(s.unwrap_or_default()))
}

/// Reads a member value as a non-negative integer (`max_tokens`). `None` if it is not a number or
/// not an integer that fits in `u64` (`1e3` and `100.0` are accepted when exact).
pub fn integer_value(buf: &[u8], range: Range<usize>) -> Option<u64> {
    let text = std::str::from_utf8(buf.get(range)?).ok()?;
    if let Ok(v) = text.parse::<u64>() {
        return Some(v);
    }
    let scaled = crate::money::parse_decimal_scaled(text, 0)?;
    // parse_decimal_scaled rounds up a fraction; only accept exact integers.
    let exact = crate::money::parse_decimal_scaled(text, 1)?;
    (exact == scaled.checked_mul(10)?).then(|| u64::try_from(scaled).ok()).flatten()
}

/// A replacement of `range` in the original buffer by `bytes`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Edit {
    pub range: Range<usize>,
    pub bytes: Vec<u8>,
}

/// Replaces one byte range; every other byte is copied unchanged.
pub fn splice(body: &[u8], range: Range<usize>, new_bytes: &[u8]) -> Vec<u8> {
    apply_edits(body, vec![Edit { range, bytes: new_bytes.to_vec() }])
}

/// Applies non-overlapping edits in one pass and one allocation. Edits may come in any order;
/// an insertion is an edit with an empty range. Out-of-bounds or overlapping edits are skipped
/// (callers derive ranges from a scan of the same buffer, so this does not happen).
pub fn apply_edits(body: &[u8], mut edits: Vec<Edit>) -> Vec<u8> {
    edits.sort_by_key(|e| (e.range.start, e.range.end));
    let grow: usize = edits.iter().map(|e| e.bytes.len()).sum();
    let mut out = Vec::with_capacity(body.len() + grow);
    let mut at = 0;
    for edit in edits {
        if edit.range.start < at || edit.range.end < edit.range.start || edit.range.end > body.len() {
            continue;
        }
        out.extend_from_slice(body.get(at..edit.range.start).unwrap_or_default());
        out.extend_from_slice(&edit.bytes);
        at = edit.range.end;
    }
    out.extend_from_slice(body.get(at..).unwrap_or_default());
    out
}

/// Encodes `text` as a JSON string literal (with quotes).
pub fn quote(text: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(text.len() + 2);
    out.push(b'"');
    for c in text.chars() {
        match c {
            '"' => out.extend_from_slice(b"\\\""),
            '\\' => out.extend_from_slice(b"\\\\"),
            '\n' => out.extend_from_slice(b"\\n"),
            '\r' => out.extend_from_slice(b"\\r"),
            '\t' => out.extend_from_slice(b"\\t"),
            c if (c as u32) < 0x20 => out.extend_from_slice(format!("\\u{:04x}", c as u32).as_bytes()),
            c => {
                let mut tmp = [0u8; 4];
                out.extend_from_slice(c.encode_utf8(&mut tmp).as_bytes());
            }
        }
    }
    out.push(b'"');
    out
}

/// The edits that make an OpenAI streaming request report usage: `stream_options.include_usage`
/// set to `true`, merged into an existing `stream_options` object. Empty when it is already true.
///
/// OpenAI then sends one extra final chunk with `"choices": []` and the `usage` object. A client
/// that did not ask for it may index `choices[0]` on every chunk, so the filter reads that chunk
/// and leaves it out of the client's stream (`usage::UsageScanner::drop_usage_chunk`).
pub fn include_usage_edits(buf: &[u8], top: &TopLevel) -> Result<Vec<Edit>, JsonError> {
    const MEMBER: &[u8] = br#""stream_options":{"include_usage":true}"#;
    let Some(options) = top.get("stream_options") else {
        return Ok(vec![insert_member(top, MEMBER)]);
    };
    match options.kind {
        Kind::Null => Ok(vec![Edit { range: options.value.clone(), bytes: br#"{"include_usage":true}"#.to_vec() }]),
        Kind::Object => {
            let inner = scan_nested(buf, options.value.clone())?;
            match inner.get("include_usage") {
                Some(m) if buf.get(m.value.clone()) == Some(b"true".as_slice()) => Ok(Vec::new()),
                Some(m) => Ok(vec![Edit { range: m.value.clone(), bytes: b"true".to_vec() }]),
                None => Ok(vec![insert_member(&inner, br#""include_usage":true"#)]),
            }
        }
        _ => Err(JsonError::Syntax { offset: options.value.start, what: "stream_options must be an object" }),
    }
}

/// An insertion of `member` (`"key":value`) as the last member of `object`.
pub fn insert_member(object: &TopLevel, member: &[u8]) -> Edit {
    match object.members.last() {
        Some(last) => {
            let mut bytes = Vec::with_capacity(member.len() + 1);
            bytes.push(b',');
            bytes.extend_from_slice(member);
            Edit { range: last.value.end..last.value.end, bytes }
        }
        None => Edit { range: object.open + 1..object.open + 1, bytes: member.to_vec() },
    }
}

/// Skips the comparison for most strings a watch cannot match: one bit per (length, first byte)
/// slot of each exact entry, one per first byte of each prefix entry. Unused: all zero.
#[derive(Debug, Clone, Copy, Default)]
struct WatchFilter {
    min_len: usize,
    /// `usize::MAX` with a prefix entry.
    max_len: usize,
    exact: u64,
    prefix: u64,
}

impl WatchFilter {
    #[inline]
    const fn slot(len: usize, first: u8) -> u32 {
        (len as u32).wrapping_add((first as u32).wrapping_mul(7)) & 63
    }
}

/// `HASH`: the variant [`scan_object_fingerprinting`] runs, which also hashes each top-level
/// member's value ([`Member::value_hash`]); the plain variant compiles none of that code.
struct Parser<'a, const HASH: bool = false> {
    buf: &'a [u8],
    pos: usize,
    /// Strings to note (see [`scan_object_watching`]) and the filter that skips most others.
    watch: &'a [&'a str],
    filter: WatchFilter,
    /// Watched strings seen in the current top-level member.
    seen: u64,
    /// Whether the last string scanned had an escape.
    escaped: bool,
    /// `HASH` only: the current top-level member value's hash so far, and the offset up to
    /// which its bytes are in it.
    hash: u64,
    mark: usize,
}

impl<'a> Parser<'a> {
    fn plain(buf: &'a [u8], pos: usize) -> Parser<'a> {
        Parser { buf, pos, watch: &[], filter: WatchFilter::default(), seen: 0, escaped: false, hash: 0, mark: 0 }
    }
}

impl<'a, const HASH: bool> Parser<'a, HASH> {
    /// After a string that started at `start` (its opening quote): notes it if it is watched.
    #[inline]
    fn note(&mut self, start: usize) {
        if self.watch.is_empty() {
            return;
        }
        let raw_len = self.pos.saturating_sub(start + 2);
        let f = &self.filter;
        if self.escaped {
            // Escapes make the raw text longer than the decoded one (at most six bytes per char).
            if raw_len < f.min_len || raw_len / 6 > f.max_len {
                return;
            }
        } else {
            let first = self.buf.get(start + 1).copied().unwrap_or(0);
            let exact = f.exact >> WatchFilter::slot(raw_len, first) & 1 == 1;
            let prefix = f.prefix >> (first & 63) & 1 == 1 && raw_len >= f.min_len;
            if !exact && !prefix {
                return;
            }
        }
        let decoded;
        let text: &[u8] = if self.escaped {
            decoded = decode_string(self.buf, start..self.pos).map(Cow::into_owned).unwrap_or_default();
            decoded.as_bytes()
        } else {
            self.buf.get(start + 1..self.pos - 1).unwrap_or_default()
        };
        for (i, w) in self.watch.iter().enumerate() {
            let hit = match w.strip_suffix('*') {
                Some(prefix) => text.starts_with(prefix.as_bytes()),
                None => text == w.as_bytes(),
            };
            if hit {
                self.seen |= 1 << i;
            }
        }
    }
    fn peek(&self) -> Option<u8> {
        self.buf.get(self.pos).copied()
    }

    fn err(&self, what: &'static str) -> JsonError {
        if self.pos >= self.buf.len() {
            JsonError::Truncated
        } else {
            JsonError::Syntax { offset: self.pos, what }
        }
    }

    fn skip_ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.peek() {
            self.pos += 1;
        }
    }

    fn expect(&mut self, byte: u8, what: &'static str) -> Result<(), JsonError> {
        if self.peek() == Some(byte) {
            self.pos += 1;
            Ok(())
        } else {
            Err(self.err(what))
        }
    }

    /// At `{`: reads the members of this object, recording them (keys decoded, duplicates refused).
    fn object_members(&mut self, depth: usize) -> Result<TopLevel, JsonError> {
        let open = self.pos;
        self.pos += 1;
        let mut members: Vec<Member> = Vec::with_capacity(16);
        self.skip_ws();
        if self.peek() == Some(b'}') {
            let close = self.pos;
            self.pos += 1;
            return Ok(TopLevel { members, hashed: HASH, open, close });
        }
        loop {
            self.skip_ws();
            if self.peek() != Some(b'"') {
                return Err(self.err("expected a string key"));
            }
            let key = self.string(true)?.unwrap_or_default();
            self.skip_ws();
            self.expect(b':', "expected ':' after a key")?;
            self.skip_ws();
            let start = self.pos;
            self.seen = 0;
            if HASH {
                self.hash = value_hash::VALUE_SEED;
                self.mark = start;
            }
            let kind = self.value(depth)?;
            if members.iter().any(|m| m.key == key) {
                return Err(JsonError::DuplicateKey(key));
            }
            let value_hash = if HASH { value_hash::absorb(self.hash, self.buf.get(self.mark..self.pos).unwrap_or_default()) } else { 0 };
            members.push(Member { key, value: start..self.pos, kind, watched: self.seen, value_hash });
            self.skip_ws();
            match self.peek() {
                Some(b',') => self.pos += 1,
                Some(b'}') => {
                    let close = self.pos;
                    self.pos += 1;
                    return Ok(TopLevel { members, hashed: HASH, open, close });
                }
                _ => return Err(self.err("expected ',' or '}' in an object")),
            }
        }
    }

    /// Validates one value of any type; `depth` is the nesting of the container holding it.
    /// Nested containers are validated iteratively with a bit stack (1 = object, 0 = array), so
    /// deep input cannot overflow the wasm stack and nothing is allocated.
    fn value(&mut self, depth: usize) -> Result<Kind, JsonError> {
        let kind = match self.peek() {
            Some(b'{') => Kind::Object,
            Some(b'[') => Kind::Array,
            Some(b'"') => {
                let start = self.pos;
                self.string(false)?;
                self.note(start);
                return Ok(Kind::String);
            }
            Some(b't') => return self.literal(b"true", Kind::Bool),
            Some(b'f') => return self.literal(b"false", Kind::Bool),
            Some(b'n') => return self.literal(b"null", Kind::Null),
            Some(b'-' | b'0'..=b'9') => {
                self.number()?;
                return Ok(Kind::Number);
            }
            _ => return Err(self.err("expected a value")),
        };
        self.container(depth)?;
        Ok(kind)
    }

    fn container(&mut self, base_depth: usize) -> Result<(), JsonError> {
        let mut stack: u128 = 0;
        let mut depth: usize = 0;
        // Push the opening container.
        let open = |p: &mut Parser<'a, HASH>, stack: &mut u128, depth: &mut usize| -> Result<(), JsonError> {
            if base_depth + *depth + 1 > MAX_DEPTH || *depth >= 128 {
                return Err(JsonError::TooDeep);
            }
            let is_object = p.peek() == Some(b'{');
            *stack = (*stack << 1) | u128::from(is_object);
            *depth += 1;
            p.pos += 1;
            Ok(())
        };
        open(self, &mut stack, &mut depth)?;
        // `first` is true right after an opening bracket (a closing bracket is allowed there).
        let mut first = true;
        loop {
            self.skip_ws();
            let in_object = stack & 1 == 1;
            let closer = if in_object { b'}' } else { b']' };
            if first && self.peek() == Some(closer) {
                self.pos += 1;
                stack >>= 1;
                depth -= 1;
                if depth == 0 {
                    return Ok(());
                }
            } else {
                if in_object {
                    if self.peek() != Some(b'"') {
                        return Err(self.err("expected a string key"));
                    }
                    let start = self.pos;
                    self.string(false)?;
                    self.note(start);
                    self.skip_ws();
                    self.expect(b':', "expected ':' after a key")?;
                    self.skip_ws();
                }
                match self.peek() {
                    Some(b'{' | b'[') => {
                        open(self, &mut stack, &mut depth)?;
                        first = true;
                        continue;
                    }
                    _ => {
                        self.value(base_depth + depth)?;
                    }
                }
            }
            // After a complete value (or an empty container was closed): close as many as end here.
            loop {
                self.skip_ws();
                let in_object = stack & 1 == 1;
                let closer = if in_object { b'}' } else { b']' };
                match self.peek() {
                    Some(b',') => {
                        self.pos += 1;
                        first = false;
                        break;
                    }
                    Some(c) if c == closer => {
                        self.pos += 1;
                        stack >>= 1;
                        depth -= 1;
                        if depth == 0 {
                            return Ok(());
                        }
                    }
                    _ => return Err(self.err(if in_object { "expected ',' or '}'" } else { "expected ',' or ']'" })),
                }
            }
        }
    }

    fn literal(&mut self, word: &'static [u8], kind: Kind) -> Result<Kind, JsonError> {
        let end = self.pos + word.len();
        match self.buf.get(self.pos..end) {
            Some(bytes) if bytes == word => {
                self.pos = end;
                Ok(kind)
            }
            Some(_) => Err(self.err("invalid literal")),
            None => {
                let rest = self.buf.get(self.pos..).unwrap_or_default();
                if word.starts_with(rest) {
                    Err(JsonError::Truncated)
                } else {
                    Err(self.err("invalid literal"))
                }
            }
        }
    }

    fn digits(&mut self) -> usize {
        let start = self.pos;
        while let Some(b'0'..=b'9') = self.peek() {
            self.pos += 1;
        }
        self.pos - start
    }

    fn number(&mut self) -> Result<(), JsonError> {
        if self.peek() == Some(b'-') {
            self.pos += 1;
        }
        match self.peek() {
            Some(b'0') => self.pos += 1,
            Some(b'1'..=b'9') => {
                self.digits();
            }
            _ => return Err(self.err("invalid number")),
        }
        if self.peek() == Some(b'.') {
            self.pos += 1;
            if self.digits() == 0 {
                return Err(self.err("invalid number: digits expected after '.'"));
            }
        }
        if let Some(b'e' | b'E') = self.peek() {
            self.pos += 1;
            if let Some(b'+' | b'-') = self.peek() {
                self.pos += 1;
            }
            if self.digits() == 0 {
                return Err(self.err("invalid number: digits expected in the exponent"));
            }
        }
        Ok(())
    }

    /// At `"`: validates a string; when `decode`, returns its decoded text.
    fn string(&mut self, decode: bool) -> Result<Option<String>, JsonError> {
        self.pos += 1;
        self.escaped = false;
        let mut out = if decode { Some(String::new()) } else { None };
        loop {
            // A run of plain bytes (eight at a time), validated as UTF-8 in one go if not ASCII.
            let run_start = self.pos;
            let rest = self.buf.get(run_start..).unwrap_or_default();
            let (len, non_ascii) = if HASH {
                let gap = self.buf.get(self.mark..run_start).unwrap_or_default();
                let start = |h| value_hash::absorb(h, gap);
                let (len, non_ascii, hashed) = bytes::plain_string_run_hashing(rest, &mut self.hash, start, value_hash::fold);
                if hashed > 0 {
                    self.mark = run_start + hashed;
                }
                (len, non_ascii)
            } else {
                bytes::plain_string_run(rest)
            };
            self.pos = run_start + len;
            let run = rest.get(..len).unwrap_or_default();
            if non_ascii {
                match std::str::from_utf8(run) {
                    Ok(text) => {
                        if let Some(out) = out.as_mut() {
                            out.push_str(text);
                        }
                    }
                    Err(e) => {
                        // A sequence cut by the end of input is truncation; anything else is invalid.
                        if e.error_len().is_none() && self.pos >= self.buf.len() {
                            return Err(JsonError::Truncated);
                        }
                        return Err(JsonError::Syntax { offset: run_start + e.valid_up_to(), what: "invalid UTF-8" });
                    }
                }
            } else if let Some(out) = out.as_mut() {
                // ASCII is UTF-8.
                out.push_str(std::str::from_utf8(run).unwrap_or_default());
            }
            match self.peek() {
                Some(b'"') => {
                    self.pos += 1;
                    return Ok(out);
                }
                Some(b'\\') => {
                    self.pos += 1;
                    self.escaped = true;
                    let c = self.escape()?;
                    if let Some(out) = out.as_mut() {
                        out.push(c);
                    }
                }
                Some(_) => return Err(self.err("control character in a string (escape it)")),
                None => return Err(JsonError::Truncated),
            }
        }
    }

    /// After a backslash: one escape, surrogate pairs joined; lone surrogates are refused.
    fn escape(&mut self) -> Result<char, JsonError> {
        let c = match self.peek() {
            Some(b'"') => '"',
            Some(b'\\') => '\\',
            Some(b'/') => '/',
            Some(b'b') => '\u{8}',
            Some(b'f') => '\u{c}',
            Some(b'n') => '\n',
            Some(b'r') => '\r',
            Some(b't') => '\t',
            Some(b'u') => {
                self.pos += 1;
                let high = self.hex4()?;
                if (0xDC00..0xE000).contains(&high) {
                    return Err(self.err("lone low surrogate in a \\u escape"));
                }
                if (0xD800..0xDC00).contains(&high) {
                    if self.buf.get(self.pos..self.pos + 2) != Some(b"\\u".as_slice()) {
                        return Err(self.err("lone high surrogate in a \\u escape"));
                    }
                    self.pos += 2;
                    let low = self.hex4()?;
                    if !(0xDC00..0xE000).contains(&low) {
                        return Err(self.err("invalid surrogate pair in a \\u escape"));
                    }
                    let code = 0x10000 + ((high - 0xD800) << 10) + (low - 0xDC00);
                    return char::from_u32(code).ok_or_else(|| self.err("invalid \\u escape"));
                }
                return char::from_u32(high).ok_or_else(|| self.err("invalid \\u escape"));
            }
            _ => return Err(self.err("invalid escape in a string")),
        };
        self.pos += 1;
        Ok(c)
    }

    fn hex4(&mut self) -> Result<u32, JsonError> {
        let mut value = 0u32;
        for _ in 0..4 {
            let digit = self.peek().and_then(|b| (b as char).to_digit(16)).ok_or_else(|| self.err("invalid \\u escape"))?;
            value = value * 16 + digit;
            self.pos += 1;
        }
        Ok(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn member<'a>(body: &'a str, top: &TopLevel, key: &str) -> (&'a str, Kind) {
        let m = top.get(key).unwrap();
        (&body[m.value.clone()], m.kind)
    }

    #[test]
    fn finds_each_top_level_member_with_its_exact_bytes_and_kind() {
        let body = r#" { "model" : "gpt-4o", "stream":true, "n": -1.5e3, "x": null,
            "messages": [{"role":"user","content":"hi \"there\" \u00e9"}], "o": {"a": [1, {}]} } "#;
        let top = scan_object(body.as_bytes()).unwrap();
        assert_eq!(member(body, &top, "model"), ("\"gpt-4o\"", Kind::String));
        assert_eq!(member(body, &top, "stream"), ("true", Kind::Bool));
        assert_eq!(member(body, &top, "n"), ("-1.5e3", Kind::Number));
        assert_eq!(member(body, &top, "x"), ("null", Kind::Null));
        assert_eq!(member(body, &top, "o"), (r#"{"a": [1, {}]}"#, Kind::Object));
        assert_eq!(top.get("messages").unwrap().kind, Kind::Array);
        assert_eq!(top.members.len(), 6);
        assert_eq!(&body[top.close..=top.close], "}");
    }

    #[test]
    fn watched_strings_are_noted_per_top_level_member_keys_and_values_alike() {
        let body = br#"{"messages":[{"role":"user","content":[{"type":"image_url","image_url":{"url":"u"}}]}],
            "tools":[{"type":"web_search_20250305"}],"model":"image_url","other":{"deep":[[{"x":"y"}]]}}"#;
        let watch = Watch::new(&["image_url", "web_search_*", "y", "absent"]);
        let top = scan_object_watching(body, &watch).unwrap();
        let bits = |k: &str| top.get(k).unwrap().watched;
        assert_eq!(bits("messages"), 0b0001, "as a value and as a key");
        assert_eq!(bits("tools"), 0b0010, "a prefix entry");
        assert_eq!(bits("model"), 0b0001, "a top-level string value counts for its member");
        assert_eq!(bits("other"), 0b0100, "at any depth");
        assert_eq!(scan_object(body).unwrap().get("messages").unwrap().watched, 0, "no watch, no bits");
    }

    #[test]
    fn a_watched_string_cannot_hide_behind_escapes() {
        let body = br#"{"a":[{"t":"imag\u0065"}],"b":{"\u0069mage":1},"c":"image\n","d":"\u0069"}"#;
        let top = scan_object_watching(body, &Watch::new(&["image", "i"])).unwrap();
        assert_eq!(top.get("a").unwrap().watched, 1);
        assert_eq!(top.get("b").unwrap().watched, 1);
        assert_eq!(top.get("c").unwrap().watched, 0, "image + newline is another string");
        assert_eq!(top.get("d").unwrap().watched, 2);
    }

    #[test]
    fn the_fingerprinting_scan_finds_the_same_members_and_hashes_each_value_by_its_bytes_alone() {
        let prompt = "Summarise the incident report and list the follow-ups. ".repeat(6);
        let messages = format!(r#"[{{"role":"system","content":"Be brief."}},{{"role":"user","content":"{prompt}\n\u00e9 {prompt}"}}]"#);
        let body = format!(r#"{{"model":"m","messages":{messages},"n":1,"s":"{prompt}"}}"#);
        let hashed = scan_object_fingerprinting(body.as_bytes(), &Watch::NONE).unwrap();
        let plain = scan_object(body.as_bytes()).unwrap();
        assert!(hashed.hashed && !plain.hashed);
        let shape = |t: &TopLevel| t.members.iter().map(|m| (m.key.clone(), m.value.clone(), m.kind)).collect::<Vec<_>>();
        assert_eq!(shape(&hashed), shape(&plain));
        assert!(plain.members.iter().all(|m| m.value_hash == 0));
        let hash_of = |body: &str, key: &str| scan_object_fingerprinting(body.as_bytes(), &Watch::NONE).unwrap().get(key).unwrap().value_hash;
        let base = hash_of(&body, "messages");
        // The same value elsewhere in another body: the same hash (blocks start where the value's runs do).
        for other in [format!(r#"{{"messages":{messages}}}"#), format!(r#"{{ "x":"{prompt}!", "messages" : {messages} }}"#)] {
            assert_eq!(hash_of(&other, "messages"), base, "{other}");
        }
        // Every byte of the value counts: each one changed in turn (where the JSON stays valid).
        for at in 0..messages.len() {
            let mut changed = messages.clone().into_bytes();
            changed[at] = match changed[at] {
                b'a'..=b'y' => changed[at] + 1,
                b'z' => b'a',
                b' ' => b'_',
                b'.' => b'!',
                _ => continue,
            };
            let changed = format!(r#"{{"messages":{}}}"#, String::from_utf8(changed).unwrap());
            let Ok(top) = scan_object_fingerprinting(changed.as_bytes(), &Watch::NONE) else { continue };
            assert_ne!(top.get("messages").unwrap().value_hash, base, "byte {at} of {changed}");
        }
        assert_ne!(hash_of(&body, "s"), hash_of(&body.replace(r#""s":""#, r#""s":"x"#), "s"), "a prefix shifts the blocks");
    }

    #[test]
    fn escaped_keys_are_decoded_so_they_cannot_hide_a_field() {
        let body = br#"{"mod\u0065l":"a"}"#;
        let top = scan_object(body).unwrap();
        assert!(top.get("model").is_some());
        let dup = br#"{"model":"cheap","mod\u0065l":"expensive"}"#;
        assert_eq!(scan_object(dup), Err(JsonError::DuplicateKey("model".into())));
    }

    #[test]
    fn duplicate_keys_are_refused_but_nested_repeats_are_fine() {
        assert_eq!(scan_object(br#"{"stream":true,"stream":false}"#), Err(JsonError::DuplicateKey("stream".into())));
        assert!(scan_object(br#"{"a":{"k":1},"b":{"k":2}}"#).is_ok());
    }

    #[test]
    fn malformed_and_truncated_json_is_refused() {
        let truncated = [r#"{"model":"gpt"#, r#"{"model":"gpt-4o","#, r#"{"a":[1,2"#, r#"{"a":tru"#, "", "  ", r#"{"a":{"b":{}}"#];
        for body in truncated {
            assert_eq!(scan_object(body.as_bytes()), Err(JsonError::Truncated), "{body:?}");
        }
        let bad = [
            r#"{"a":1,}"#,
            r#"{"a":01}"#,
            r#"{"a":1.}"#,
            r#"{"a":.5}"#,
            r#"{"a":+1}"#,
            r#"{"a":'x'}"#,
            r#"{a:1}"#,
            r#"{"a":1} x"#,
            r#"{"a":1}{}"#,
            r#"{"a":[1,]}"#,
            r#"{"a":"\x"}"#,
            r#"{"a":"\ud800"}"#,
            r#"{"a":"\udc00x"}"#,
            "{\"a\":\"tab\there\"}",
            r#"{"a":nul}"#,
            r#"{"a":[}"#,
            r#"{"a":{]}"#,
        ];
        for body in bad {
            assert!(matches!(scan_object(body.as_bytes()), Err(JsonError::Syntax { .. })), "{body:?}: {:?}", scan_object(body.as_bytes()));
        }
        assert_eq!(scan_object(b"[1]"), Err(JsonError::NotAnObject));
        assert_eq!(scan_object(b"\"x\""), Err(JsonError::NotAnObject));
    }

    #[test]
    fn invalid_utf8_is_refused_and_valid_utf8_accepted() {
        assert!(matches!(scan_object(b"{\"a\":\"\xff\"}"), Err(JsonError::Syntax { what: "invalid UTF-8", .. })));
        assert!(matches!(scan_object(b"{\"a\":\"\xed\xa0\x80\"}"), Err(JsonError::Syntax { .. })), "encoded surrogate");
        assert_eq!(scan_object(b"{\"a\":\"\xe2\x82"), Err(JsonError::Truncated));
        assert!(scan_object("{\"a\":\"héllo 🎉\",\"b\":\"\\ud83c\\udf89\"}".as_bytes()).is_ok());
    }

    #[test]
    fn nesting_deeper_than_the_limit_is_refused() {
        let ok = format!("{{\"a\":{}{}}}", "[".repeat(MAX_DEPTH - 1), "]".repeat(MAX_DEPTH - 1));
        assert!(scan_object(ok.as_bytes()).is_ok());
        let deep = format!("{{\"a\":{}{}}}", "[".repeat(MAX_DEPTH), "]".repeat(MAX_DEPTH));
        assert_eq!(scan_object(deep.as_bytes()), Err(JsonError::TooDeep));
        let huge = format!("{{\"a\":{}", "[".repeat(100_000));
        assert_eq!(scan_object(huge.as_bytes()), Err(JsonError::TooDeep));
    }

    #[test]
    fn strings_decode_with_escapes() {
        let body = br#"{"a":"x\"y\\\n\u00e9\ud83c\udf89","b":"plain"}"#;
        let top = scan_object(body).unwrap();
        assert_eq!(decode_string(body, top.get("a").unwrap().value.clone()).unwrap(), "x\"y\\\né🎉");
        assert!(matches!(decode_string(body, top.get("b").unwrap().value.clone()).unwrap(), Cow::Borrowed("plain")));
    }

    #[test]
    fn integers_read_exactly() {
        let body = br#"{"a":1024,"b":1e3,"c":100.0,"d":1.5,"e":-1,"f":"7"}"#;
        let top = scan_object(body).unwrap();
        let int = |k: &str| integer_value(body, top.get(k).unwrap().value.clone());
        assert_eq!((int("a"), int("b"), int("c"), int("d"), int("e"), int("f")), (Some(1024), Some(1000), Some(100), None, None, None));
    }

    #[test]
    fn splice_replaces_only_the_value_bytes() {
        let body = br#"{ "model" :  "gpt-4o" ,"x":"model"}"#;
        let top = scan_object(body).unwrap();
        let out = splice(body, top.get("model").unwrap().value.clone(), &quote("gpt-4o-mini"));
        assert_eq!(out, br#"{ "model" :  "gpt-4o-mini" ,"x":"model"}"#);
        assert_eq!(quote("a\"b\\c\n\u{1}"), br#""a\"b\\c\n\u0001""#);
    }

    fn with_usage(body: &str) -> String {
        let top = scan_object(body.as_bytes()).unwrap();
        let edits = include_usage_edits(body.as_bytes(), &top).unwrap();
        let out = String::from_utf8(apply_edits(body.as_bytes(), edits)).unwrap();
        scan_object(out.as_bytes()).expect("still valid JSON");
        out
    }

    #[test]
    fn include_usage_is_added_merged_or_flipped() {
        assert_eq!(with_usage(r#"{"model":"m","stream":true}"#), r#"{"model":"m","stream":true,"stream_options":{"include_usage":true}}"#);
        assert_eq!(with_usage(r#"{}"#), r#"{"stream_options":{"include_usage":true}}"#);
        assert_eq!(with_usage(r#"{"stream_options":{}}"#), r#"{"stream_options":{"include_usage":true}}"#);
        assert_eq!(
            with_usage(r#"{"stream_options":{"x":1} }"#),
            r#"{"stream_options":{"x":1,"include_usage":true} }"#
        );
        assert_eq!(with_usage(r#"{"stream_options":{"include_usage":false}}"#), r#"{"stream_options":{"include_usage":true}}"#);
        assert_eq!(with_usage(r#"{"stream_options":null}"#), r#"{"stream_options":{"include_usage":true}}"#);
        let already = r#"{"stream_options":{"include_usage":true}}"#;
        assert_eq!(with_usage(already), already);
        let bad = br#"{"stream_options":"yes"}"#;
        assert!(include_usage_edits(bad, &scan_object(bad).unwrap()).is_err());
    }

    #[test]
    fn several_edits_apply_in_one_pass() {
        let body = br#"{"model":"a","stream":true}"#;
        let top = scan_object(body).unwrap();
        let mut edits = include_usage_edits(body, &top).unwrap();
        edits.push(Edit { range: top.get("model").unwrap().value.clone(), bytes: quote("bbb") });
        assert_eq!(apply_edits(body, edits), br#"{"model":"bbb","stream":true,"stream_options":{"include_usage":true}}"#);
    }

    /// A reference check: serde_json accepts exactly what the scanner accepts (for duplicate-free
    /// input), so the scanner never lets through what a strict upstream parser would reject.
    fn agrees_with_serde(bytes: &[u8]) {
        let ours = scan_object(bytes);
        let theirs = serde_json::from_slice::<serde_json::Value>(bytes);
        match (&ours, &theirs) {
            (Ok(_), Ok(v)) => assert!(v.is_object()),
            (Err(JsonError::DuplicateKey(_)), _) => {}
            (Err(_), Ok(v)) => assert!(!v.is_object() || format!("{v}").len() > 10_000, "we refused valid {:?}: {ours:?}", String::from_utf8_lossy(bytes)),
            (Ok(_), Err(e)) => panic!("we accepted invalid {:?}: {e}", String::from_utf8_lossy(bytes)),
            (Err(_), Err(_)) => {}
        }
    }

    proptest! {
        #[test]
        fn any_prefix_of_a_valid_body_is_truncated_not_accepted(cut in 0usize..200) {
            let body = r#"{"model":"gpt-4o","messages":[{"role":"user","content":"h\u00e9llo \"x\""}],"max_tokens":1e2,"stream":false,"t":0.5}"#;
            let cut = cut.min(body.len() - 1);
            prop_assert!(scan_object(&body.as_bytes()[..cut]).is_err());
        }

        #[test]
        fn scanner_agrees_with_a_strict_parser_on_mutations(pos in 0usize..64, byte in any::<u8>()) {
            let mut body = br#"{"model":"m","a":[1,-2.5e3,true,null],"o":{"k":"v\n"},"s":"\u00e9"}"#.to_vec();
            let pos = pos % body.len();
            body[pos] = byte;
            agrees_with_serde(&body);
        }

        #[test]
        fn generated_objects_round_trip_through_the_scanner(value in arb_json(3)) {
            let doc = serde_json::json!({ "model": "m", "payload": value });
            let text = serde_json::to_string_pretty(&doc).unwrap();
            let top = scan_object(text.as_bytes()).unwrap();
            let payload = top.get("payload").unwrap();
            let reparsed: serde_json::Value = serde_json::from_slice(&text.as_bytes()[payload.value.clone()]).unwrap();
            prop_assert_eq!(&reparsed, &doc["payload"]);
        }
    }

    fn arb_json(depth: u32) -> impl Strategy<Value = serde_json::Value> {
        let leaf = prop_oneof![
            Just(serde_json::Value::Null),
            any::<bool>().prop_map(serde_json::Value::from),
            any::<i64>().prop_map(serde_json::Value::from),
            ".*".prop_map(serde_json::Value::from),
        ];
        leaf.prop_recursive(depth, 32, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::from),
                prop::collection::btree_map("[a-z\u{e9}\"]{0,4}", inner, 0..4)
                    .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
            ]
        })
    }
}
