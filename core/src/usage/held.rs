//! Parsing a held SSE event's data in one pass over the whole slice (`UsageScanner::parse_held`),
//! instead of feeding it to the byte-level lexer (`json`).
//!
//! An event that must be parsed (one that may carry usage, an end, an error or a new model: the
//! usage-only chunk of an OpenAI stream, Anthropic's `message_start` / `message_delta`, every
//! Gemini chunk) is held whole until its blank line (`sse`, up to `EVENT_HOLD_CAP`). The lexer
//! is built for bytes that arrive in pieces: a state per byte, keys and values copied into
//! buffers in case the next chunk continues them. With the whole event in hand none of that is
//! needed: this walks the same grammar over the slice (strings hop from quote to quote sixteen
//! bytes at a time, keys are compared where they lie), follows the same path trie (`paths::step`)
//! and gives each value to the same interpretation (`Message::take_scalar`), so the message it
//! leaves is the one the lexer would.
//!
//! It handles what providers send and leaves the rest to the lexer: on anything else (malformed
//! JSON, a key written with escapes under a path we read, a key or value longer than the lexer
//! keeps, nesting deeper than [`HELD_DEPTH`]) it returns `false` having counted nothing, and the
//! caller feeds the event to the lexer from its start, as before. So the outcome never depends on
//! which of the two read an event (property-tested against the lexer alone, `usage::tests`).

use super::*;

/// Deepest nesting followed in one pass; deeper data is left to the lexer (which follows up to
/// [`MAX_DEPTH`]).
const HELD_DEPTH: usize = 32;

impl UsageScanner {
    /// Reads a whole held event's `data` into the message, as [`UsageScanner::feed_json`] would
    /// from a fresh lexer: on `true` the message is complete (the lexer's `Lex::Done`) and its
    /// content bytes are counted. On `false` nothing is counted, the message may be half written
    /// (the caller clears it) and the data must go to the lexer.
    pub(super) fn parse_held(&mut self, data: &[u8]) -> bool {
        if self.sse.held_parse_disabled {
            return false;
        }
        let mut at = skip_ws(data, 0);
        if data.get(at) != Some(&b'{') {
            return false;
        }
        // The message's root object, as the lexer opens it.
        self.message.clear();
        self.message.open = true;
        let mut stack = [Frame { bracket: b'{', node: Node::Root }; HELD_DEPTH];
        let mut depth: usize = 1;
        let mut content = 0u64;
        at += 1;
        // Just past an opening bracket, where its closing one may follow at once.
        let mut opened = true;
        loop {
            // A member (object) or an element (array) of the innermost container, or its end.
            let Some(&top) = depth.checked_sub(1).and_then(|d| stack.get(d)) else { return false };
            at = skip_ws(data, at);
            let Some(&first) = data.get(at) else { return false };
            if opened && first == closing(top.bracket) {
                if top.node == Node::OChoices {
                    self.message.empty_choices = true;
                }
                depth -= 1;
                at += 1;
            } else {
                let node = if top.bracket == b'{' {
                    if first != b'"' {
                        return false;
                    }
                    let Some((key_end, escaped)) = bytes::string_end(data, at + 1) else { return false };
                    let key = data.get(at + 1..key_end).unwrap_or_default();
                    at = skip_ws(data, key_end + 1);
                    if data.get(at) != Some(&b':') {
                        return false;
                    }
                    at = skip_ws(data, at + 1);
                    match top.node {
                        Node::Dead => Node::Dead,
                        // The lexer decodes such a key, or lets it match nothing.
                        _ if escaped || key.len() > KEY_CAP => return false,
                        node => step(self.dialect, node, Step::Key(key)),
                    }
                } else {
                    match top.node {
                        Node::Dead => Node::Dead,
                        node => step(self.dialect, node, Step::Index),
                    }
                };
                let target = self.target_of(node);
                let Some(&value) = data.get(at) else { return false };
                match value {
                    b'{' | b'[' => {
                        if value == b'{' && node == Node::Leaf(Target::Error) {
                            self.message.error = true;
                        }
                        let Some(frame) = stack.get_mut(depth) else { return false };
                        *frame = Frame { bracket: value, node };
                        depth += 1;
                        at += 1;
                        opened = true;
                        continue;
                    }
                    b'"' => {
                        let Some((end, _)) = bytes::string_end(data, at + 1) else { return false };
                        let text = data.get(at + 1..end).unwrap_or_default();
                        match target {
                            Target::Content => content = content.saturating_add(text.len() as u64),
                            Target::None => {}
                            _ => self.message.take_scalar(self.endpoint, target, Scalar::Str, captured(text)),
                        }
                        at = end + 1;
                    }
                    b'-' | b'0'..=b'9' => {
                        let end = scalar_end(data, at);
                        let text = data.get(at..end).unwrap_or_default();
                        self.message.take_scalar(self.endpoint, target, Scalar::Number, captured(text));
                        at = end;
                    }
                    b't' | b'f' | b'n' => {
                        let end = scalar_end(data, at);
                        if !matches!(data.get(at..end), Some(b"true" | b"false" | b"null")) {
                            return false;
                        }
                        at = end;
                    }
                    _ => return false,
                }
            }
            // After a value: `,` and the next one, or the ends of containers.
            loop {
                let Some(&top) = depth.checked_sub(1).and_then(|d| stack.get(d)) else {
                    // The root closed: only whitespace may follow.
                    if skip_ws(data, at) != data.len() {
                        return false;
                    }
                    self.found.content_bytes = self.found.content_bytes.saturating_add(content);
                    self.json.lex = Lex::Done;
                    return true;
                };
                at = skip_ws(data, at);
                match data.get(at) {
                    Some(b',') => {
                        at += 1;
                        opened = false;
                        break;
                    }
                    Some(&b) if b == closing(top.bracket) => {
                        depth -= 1;
                        at += 1;
                    }
                    _ => return false,
                }
            }
        }
    }
}

/// `}` for `{`, `]` for `[`.
fn closing(bracket: u8) -> u8 {
    if bracket == b'{' {
        b'}'
    } else {
        b']'
    }
}

/// The end of the number or literal starting at `at`: its run of scalar bytes, as the lexer
/// takes it.
fn scalar_end(data: &[u8], at: usize) -> usize {
    data.get(at..).and_then(|rest| rest.iter().position(|&b| !is_scalar_byte(b))).map_or(data.len(), |n| at + n)
}

/// A value's text as the lexer captures it: `None` when it would outgrow [`CAPTURE_CAP`].
fn captured(text: &[u8]) -> Option<&[u8]> {
    (text.len() <= CAPTURE_CAP).then_some(text)
}
