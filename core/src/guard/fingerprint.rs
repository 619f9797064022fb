//! The fingerprint of a request: "the same work asked again" as a 64-bit number.
//!
//! # Why from the members the scan already found
//! The body is validated once by `core::json`, which records each top-level member's key and the
//! byte range of its value; with a retry guard it also hashes each value's bytes on the way
//! (`json::scan_object_fingerprinting`: the long string runs are folded in with the words the
//! scan loaded to find their end, so a 2 KB prompt is not read a second time). The fingerprint
//! combines, for every member not in the ignore list, the key's hash with the value's: no second
//! parse, no allocation. Members are combined by a wrapping sum of their hashes, so member order
//! does not matter (the scan refuses duplicate keys, so no member can cancel another by
//! repetition).
//!
//! The numbers are not stored anywhere that outlives a window: the retry counts in shared data
//! and the counter's guard events (kept a week) are keyed by them, so a gateway whose hash
//! changes (an upgrade) starts the counts of work already in flight afresh, once, and gateways
//! of two versions do not share counts until all run the same one.
//!
//! The value bytes are the client's raw bytes: the same request with different whitespace inside
//! a value is a different fingerprint. Agents in a loop resend identical bytes, so that is the
//! case this catches; the hash is not a security boundary (a client that wants to dodge it can
//! change one byte, and a collision only makes its own request look like a retry).

use crate::json::TopLevel;

/// The fields that change on every call of the same work, ignored by default
/// (`guards.retry.ignore_fields` replaces the list).
pub const DEFAULT_IGNORED: &[&str] = &[
    "stream",
    "stream_options",
    "metadata",
    "user",
    "temperature",
    "top_p",
    "seed",
    "n",
    "store",
    "service_tier",
    "parallel_tool_calls",
    "safety_identifier",
    "prompt_cache_key",
];

/// The hash primitives live in a leaf module (`crate::value_hash`) the JSON scan also uses.
pub use crate::value_hash::{absorb, finish, fold, hash_bytes, VALUE_SEED};

/// The top-level fields left out of the fingerprint, compiled once at config time: the names, and
/// a 128-bit filter of their key hashes in front of them, so a member that is not ignored (most
/// of them) costs one bit test instead of a string comparison with every name (the guard's wasm
/// fuel, issue 12). The key hash is the one the fingerprint needs anyway; a hit in the filter is
/// confirmed by comparing the names, so the filter never ignores a field by accident.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IgnoredFields {
    names: Vec<String>,
    filter: u128,
}

impl IgnoredFields {
    pub fn new(names: Vec<String>) -> IgnoredFields {
        let filter = names.iter().fold(0u128, |f, n| f | filter_bit(key_hash(n)));
        IgnoredFields { names, filter }
    }

    /// The default list ([`DEFAULT_IGNORED`]).
    pub fn default_list() -> IgnoredFields {
        IgnoredFields::new(DEFAULT_IGNORED.iter().map(|s| (*s).to_owned()).collect())
    }

    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// Whether the member `key`, whose [`key_hash`] is `hash`, is ignored.
    fn contains(&self, key: &str, hash: u64) -> bool {
        // Names compared sixteen (or eight) bytes at a time, not by `memcmp` (a call per
        // comparison in wasm; `stream` and `temperature`, ignored by default, hit on most requests).
        self.filter & filter_bit(hash) != 0
            && self.names.iter().any(|n| n.len() == key.len() && crate::bytes::same_bytes(n.as_bytes(), key.as_bytes()))
    }
}

/// A member key's hash: the seed of its value's hash, and its bit in [`IgnoredFields`]'s filter.
fn key_hash(key: &str) -> u64 {
    hash_bytes(2, key.as_bytes())
}

fn filter_bit(hash: u64) -> u128 {
    1u128 << (hash & 127)
}

/// The fingerprint of a parsed request: its body's members as the scan found them, and the model it
/// asks for (after a guard's downgrade).
pub fn of_request(request: &crate::routing::plan::ParsedRequest<'_>, ignored: &IgnoredFields) -> u64 {
    let (body, top) = request.scanned_body();
    fingerprint(body, top, ignored, &request.requested_model)
}

/// The fingerprint of a scanned body: every member but the `ignored` ones, key and raw value,
/// plus `model` (the requested model, which for Azure and Gemini lives in the path, not the body).
///
/// Each value's hash is the one `json::scan_object_fingerprinting` computed while it validated
/// the body (a gateway with a retry guard scans that way); a `top` from another scan has none,
/// so the body is scanned again here to get them (tests, and any caller that did not ask).
pub fn fingerprint(body: &[u8], top: &TopLevel, ignored: &IgnoredFields, model: &str) -> u64 {
    let rescanned;
    let top = match top.hashed {
        true => top,
        false => match crate::json::scan_object_fingerprinting(body, &crate::json::Watch::NONE) {
            Ok(t) => {
                rescanned = t;
                &rescanned
            }
            // Not the body `top` came from (no caller does that): each value's raw bytes.
            Err(_) => top,
        },
    };
    let mut sum = hash_bytes(1, model.as_bytes());
    for member in &top.members {
        let key = key_hash(&member.key);
        if ignored.contains(&member.key, key) {
            continue;
        }
        let value = match top.hashed {
            true => member.value_hash,
            false => absorb(VALUE_SEED, body.get(member.value.clone()).unwrap_or_default()),
        };
        sum = sum.wrapping_add(finish(key ^ value));
    }
    finish(sum)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::json::scan_object;

    fn fp(body: &str) -> u64 {
        let top = scan_object(body.as_bytes()).unwrap();
        fingerprint(body.as_bytes(), &top, &IgnoredFields::default_list(), "m")
    }

    const BASE: &str = r#"{"model":"gpt-4o","messages":[{"role":"user","content":"fix the failing test"}]}"#;

    #[test]
    fn ignored_fields_do_not_change_the_fingerprint() {
        for same in [
            r#"{"model":"gpt-4o","messages":[{"role":"user","content":"fix the failing test"}],"stream":true}"#,
            r#"{"model":"gpt-4o","stream":true,"stream_options":{"include_usage":true},"messages":[{"role":"user","content":"fix the failing test"}]}"#,
            r#"{"temperature":0.7,"model":"gpt-4o","messages":[{"role":"user","content":"fix the failing test"}],"metadata":{"run":"7"},"user":"u-9","seed":3}"#,
            r#"{"messages":[{"role":"user","content":"fix the failing test"}],"model":"gpt-4o"}"#,
        ] {
            assert_eq!(fp(same), fp(BASE), "{same}");
        }
    }

    #[test]
    fn a_changed_request_has_another_fingerprint() {
        for changed in [
            r#"{"model":"gpt-4o","messages":[{"role":"user","content":"fix the failing test!"}]}"#,
            r#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"fix the failing test"}]}"#,
            r#"{"model":"gpt-4o","messages":[{"role":"user","content":"fix the failing test"}],"tools":[]}"#,
            r#"{"model":"gpt-4o","messages":[{"role":"user","content":"fix the failing test"},{"role":"assistant","content":"ok"}]}"#,
            r#"{"model":"gpt-4o","messages":[{"role":"user","content":"fix the failing test"}],"max_tokens":10}"#,
        ] {
            assert_ne!(fp(changed), fp(BASE), "{changed}");
        }
    }

    #[test]
    fn every_byte_counts_in_every_lane_the_rest_and_the_tail() {
        // 109 bytes: thirteen words and five tail bytes.
        let base: Vec<u8> = (0..109u8).map(|i| i.wrapping_mul(37)).collect();
        let h = hash_bytes(7, &base);
        for at in 0..base.len() {
            let mut changed = base.clone();
            if let Some(b) = changed.get_mut(at) {
                *b ^= 1;
            }
            assert_ne!(hash_bytes(7, &changed), h, "a flipped bit at byte {at}");
        }
        let prefixes: std::collections::BTreeSet<u64> = (0..=base.len()).map(|n| hash_bytes(7, base.get(..n).unwrap_or_default())).collect();
        assert_eq!(prefixes.len(), base.len() + 1, "every length hashes apart");
        assert_ne!(hash_bytes(7, &base), hash_bytes(8, &base), "the seed counts");
    }

    #[test]
    fn a_configured_list_ignores_exactly_its_names() {
        let ignored = IgnoredFields::new(vec!["trace".to_owned(), "attempt".to_owned()]);
        let with = |body: &str| {
            let top = scan_object(body.as_bytes()).unwrap();
            fingerprint(body.as_bytes(), &top, &ignored, "m")
        };
        let base = with(r#"{"messages":[1]}"#);
        assert_eq!(with(r#"{"messages":[1],"trace":"a","attempt":3}"#), base, "listed names are left out");
        // Names that share a length, a first or a last byte with a listed one still count, and so
        // does every default name once the list replaces the default.
        for other in [r#""tracE":1"#, r#""trade":1"#, r#""attemps":1"#, r#""stream":true"#, r#""temperature":0.5"#, r#""t":1"#] {
            assert_ne!(with(&format!(r#"{{"messages":[1],{other}}}"#)), base, "{other}");
        }
    }

    #[test]
    fn a_member_moved_between_key_and_value_is_not_the_same() {
        assert_ne!(fp(r#"{"a":"b","c":"d"}"#), fp(r#"{"a":"d","c":"b"}"#));
        assert_ne!(fp(r#"{"ab":"c"}"#), fp(r#"{"a":"bc"}"#));
    }

    #[test]
    fn the_model_outside_the_body_counts() {
        let top = scan_object(br#"{"contents":[]}"#).unwrap();
        let body = br#"{"contents":[]}"#;
        assert_ne!(fingerprint(body, &top, &IgnoredFields::default(), "gemini-2.5-pro"), fingerprint(body, &top, &IgnoredFields::default(), "gemini-2.5-flash"));
    }

    #[test]
    fn the_hash_reads_every_byte_of_any_length() {
        let data: Vec<u8> = (0..40u8).collect();
        let mut seen = std::collections::BTreeSet::new();
        for len in 0..=data.len() {
            assert!(seen.insert(hash_bytes(0, &data[..len])), "length {len} collides with a shorter prefix");
        }
        for i in 0..data.len() {
            let mut flipped = data.clone();
            flipped[i] ^= 1;
            assert_ne!(hash_bytes(0, &flipped), hash_bytes(0, &data), "byte {i}");
        }
    }
}
