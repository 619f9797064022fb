//! JSON written by hand on hot paths, byte for byte what `serde_json` writes for the same values.
//!
//! Why: an enforcing gateway serializes one usage record per request into its outbox
//! (`enforce::queue::Item::push`). Through serde's visitor machinery that was about a twentieth of
//! the filter's wasm time on the chat workload (`scripts/profile-wasm.sh enforcement`). These
//! writers copy runs of plain bytes at once and format integers without `core::fmt` (by `itoa`).
//!
//! The contract: the output equals `serde_json::to_vec`'s for the same value (strings escaped as
//! serde_json escapes them: `"` `\` and control characters, with `\b \t \n \f \r` in short form,
//! nothing else; integers in plain decimal). Tests check it against serde_json itself, so a
//! reader of the JSON (the counter, a test, a person) cannot tell which wrote it.

use crate::bytes;

/// Appends `text` as a JSON string literal, quotes included. Plain runs are found sixteen bytes
/// per step ([`bytes::plain_string_run`], the request scanner's search) and copied whole.
pub fn push_str(out: &mut Vec<u8>, text: &str) {
    out.reserve(text.len() + 2);
    out.push(b'"');
    let mut rest = text.as_bytes();
    loop {
        let (run, _) = bytes::plain_string_run(rest);
        out.extend_from_slice(rest.get(..run).unwrap_or(rest));
        let Some((&b, after)) = rest.get(run..).and_then(<[u8]>::split_first) else { break };
        push_escape(out, b);
        rest = after;
    }
    out.push(b'"');
}

/// A byte [`bytes::plain_string_run`] stops at (`"`, `\\` or a control byte), escaped.
fn push_escape(out: &mut Vec<u8>, b: u8) {
    let short: &[u8] = match b {
        b'"' => b"\\\"",
        b'\\' => b"\\\\",
        0x08 => b"\\b",
        b'\t' => b"\\t",
        b'\n' => b"\\n",
        0x0c => b"\\f",
        b'\r' => b"\\r",
        _ => {
            const HEX: &[u8; 16] = b"0123456789abcdef";
            out.extend_from_slice(b"\\u00");
            out.push(HEX.get(usize::from(b >> 4)).copied().unwrap_or(b'0'));
            out.push(HEX.get(usize::from(b & 0xf)).copied().unwrap_or(b'0'));
            return;
        }
    };
    out.extend_from_slice(short);
}

/// Appends `n` in decimal (`itoa`: two digits a step from a table, about half the wasm
/// instructions of a digit-by-digit division loop on a record's timestamps).
pub fn push_u64(out: &mut Vec<u8>, n: u64) {
    out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
}

/// Appends `n` in decimal, with a `-` if negative.
pub fn push_i64(out: &mut Vec<u8>, n: i64) {
    if n < 0 {
        out.push(b'-');
    }
    push_u64(out, n.unsigned_abs());
}

/// Appends `"name":` (a member's key; `name` must need no escaping, as field names do not).
pub fn push_key(out: &mut Vec<u8>, name: &str) {
    out.push(b'"');
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b"\":");
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn quoted(text: &str) -> String {
        let mut out = Vec::new();
        push_str(&mut out, text);
        String::from_utf8(out).unwrap_or_default()
    }

    #[test]
    fn strings_are_escaped_as_serde_json_escapes_them() {
        let cases = [
            ("", r#""""#),
            ("plain", r#""plain""#),
            ("a\"b\\c", r#""a\"b\\c""#),
            ("\u{8}\t\n\u{c}\r", r#""\b\t\n\f\r""#),
            ("\u{0}\u{1}\u{1f}", r#""\u0000\u0001\u001f""#),
            ("\u{7f} é 💸 /", "\"\u{7f} é 💸 /\""),
            ("team:platform/code-review", r#""team:platform/code-review""#),
        ];
        for (text, want) in cases {
            assert_eq!(quoted(text), want, "{text:?}");
            assert_eq!(quoted(text), serde_json::to_string(text).unwrap_or_default(), "{text:?} as serde_json writes it");
        }
    }

    #[test]
    fn integers_are_plain_decimal_from_the_least_to_the_greatest() {
        for n in [0u64, 1, 9, 10, 99, 100, 1_000_000, u64::MAX] {
            let mut out = Vec::new();
            push_u64(&mut out, n);
            assert_eq!(out, n.to_string().into_bytes());
        }
        for n in [0i64, -1, 1, -10, i64::MIN, i64::MAX] {
            let mut out = Vec::new();
            push_i64(&mut out, n);
            assert_eq!(out, n.to_string().into_bytes());
        }
    }

    proptest! {
        #[test]
        fn any_string_is_written_as_serde_json_writes_it(text in any::<String>(), controls in proptest::collection::vec(0u8..0x20, 0..8)) {
            let mixed: String = text.chars().chain(controls.iter().map(|&c| char::from(c))).collect();
            prop_assert_eq!(quoted(&mixed), serde_json::to_string(&mixed).unwrap_or_default());
        }

        #[test]
        fn any_integer_is_written_as_serde_json_writes_it(u in any::<u64>(), i in any::<i64>()) {
            let mut out = Vec::new();
            push_u64(&mut out, u);
            out.push(b',');
            push_i64(&mut out, i);
            prop_assert_eq!(out, format!("{},{}", serde_json::to_string(&u).unwrap_or_default(), serde_json::to_string(&i).unwrap_or_default()).into_bytes());
        }
    }
}
