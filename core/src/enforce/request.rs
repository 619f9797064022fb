//! The output-token ceiling a request sets, for its worst-case reservation.
//!
//! A request's worst case is its input upper bound plus the most output it can produce. The most
//! output is what the request itself caps (`max_tokens` and its per-dialect spellings); a request
//! that sets no cap is assumed to produce the configured default for its model. The upstream
//! enforces the cap, so with a cap the reservation is a true upper bound; without one it is an
//! estimate, and docs/enforcement.md counts the difference in the overspend bound.
//!
//! The body has already been scanned by `core::json` (duplicate keys refused); this module reads
//! only the value bytes of the fields it needs, through a lookup closure.

use crate::dialect::Endpoint;

/// Top-level fields that cap output, by endpoint, in the order the upstream honours them.
fn cap_fields(endpoint: Endpoint) -> &'static [&'static str] {
    match endpoint {
        // OpenAI honours max_completion_tokens over the deprecated max_tokens.
        Endpoint::Chat => &["max_completion_tokens", "max_tokens"],
        Endpoint::Completions => &["max_tokens"],
        Endpoint::Responses => &["max_output_tokens"],
        Endpoint::Messages => &["max_tokens"],
        Endpoint::Embeddings | Endpoint::GenerateContent | Endpoint::StreamGenerateContent => &[],
    }
}

/// The output tokens to reserve for: the request's own cap if it sets one, else `default`.
/// Embeddings produce no output tokens. `field` returns a top-level member's raw JSON value.
pub fn output_ceiling<'a>(endpoint: Endpoint, field: impl Fn(&str) -> Option<&'a [u8]>, default: u64) -> u64 {
    if endpoint == Endpoint::Embeddings {
        return 0;
    }
    if matches!(endpoint, Endpoint::GenerateContent | Endpoint::StreamGenerateContent) {
        return field("generationConfig")
            .and_then(|raw| serde_json::from_slice::<GeminiGenerationConfig>(raw).ok())
            .and_then(|c| c.max_output_tokens)
            .unwrap_or(default);
    }
    cap_fields(endpoint).iter().find_map(|name| field(name).and_then(token_count)).unwrap_or(default)
}

#[derive(serde::Deserialize)]
struct GeminiGenerationConfig {
    #[serde(rename = "maxOutputTokens", default)]
    max_output_tokens: Option<u64>,
}

/// A JSON non-negative integer (`null` and anything else: no cap).
pub fn token_count(raw: &[u8]) -> Option<u64> {
    let text = std::str::from_utf8(raw).ok()?.trim();
    text.parse::<u64>().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(endpoint: Endpoint, body: &str, expected: u64) {
        let value: serde_json::Value = serde_json::from_str(body).unwrap();
        let fields: Vec<(String, String)> =
            value.as_object().unwrap().iter().map(|(k, v)| (k.clone(), v.to_string())).collect();
        let lookup = |name: &str| fields.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_bytes());
        assert_eq!(output_ceiling(endpoint, lookup, 999), expected, "{body}");
    }

    #[test]
    fn each_dialect_spelling_of_the_cap_is_read() {
        check(Endpoint::Chat, r#"{"max_tokens":100}"#, 100);
        check(Endpoint::Chat, r#"{"max_completion_tokens":50,"max_tokens":100}"#, 50);
        check(Endpoint::Completions, r#"{"max_tokens":7}"#, 7);
        check(Endpoint::Responses, r#"{"max_output_tokens":300}"#, 300);
        check(Endpoint::Messages, r#"{"max_tokens":1024}"#, 1024);
        check(Endpoint::GenerateContent, r#"{"generationConfig":{"maxOutputTokens":64}}"#, 64);
        check(Endpoint::StreamGenerateContent, r#"{"generationConfig":{"temperature":0.1}}"#, 999);
    }

    #[test]
    fn without_a_usable_cap_the_default_applies() {
        check(Endpoint::Chat, r#"{"messages":[]}"#, 999);
        check(Endpoint::Chat, r#"{"max_tokens":null}"#, 999);
        check(Endpoint::Chat, r#"{"max_tokens":"100"}"#, 999);
        check(Endpoint::Chat, r#"{"max_tokens":-1}"#, 999);
        check(Endpoint::Responses, r#"{"max_tokens":5}"#, 999);
        check(Endpoint::Embeddings, r#"{"input":"x"}"#, 0);
    }
}
