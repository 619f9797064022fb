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

use super::config::EnforcementSettings;
use crate::dialect::Endpoint;
use crate::estimate::EstimateConfig;
use crate::pricing::ModelPrice;

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

/// The output cap the request sets itself, if any (embeddings: 0, they produce no output).
/// `field` returns a top-level member's raw JSON value.
pub fn requested_output_cap<'a>(endpoint: Endpoint, field: impl Fn(&str) -> Option<&'a [u8]>) -> Option<u64> {
    if endpoint == Endpoint::Embeddings {
        return Some(0);
    }
    if matches!(endpoint, Endpoint::GenerateContent | Endpoint::StreamGenerateContent) {
        return field("generationConfig")
            .and_then(|raw| serde_json::from_slice::<GeminiGenerationConfig>(raw).ok())
            .and_then(|c| c.max_output_tokens);
    }
    cap_fields(endpoint).iter().find_map(|name| field(name).and_then(token_count))
}

/// The output tokens a reservation assumes, and whether that is a true bound.
///
/// 1. The request's own cap (capped by the model's maximum): a bound, the upstream enforces it.
/// 2. Without one, `enforcement.max_output_tokens_by_model` / `default_max_output_tokens` if the
///    operator set them: an estimate (the upstream may produce more).
/// 3. Else `pricing.estimate`'s rule: the model's maximum from the price table (a bound), else
///    `pricing.estimate.default_max_output_tokens` (an estimate).
pub fn reserved_output_tokens(
    requested: Option<u64>,
    model: &str,
    price: Option<&ModelPrice>,
    estimate: &EstimateConfig,
    settings: &EnforcementSettings,
) -> (u64, bool) {
    if requested.is_some() {
        return (estimate.max_output_tokens(requested, price), true);
    }
    if let Some(tokens) = settings.output_tokens_override(model) {
        return (tokens, false);
    }
    (estimate.max_output_tokens(None, price), price.is_some_and(|p| p.max_output_tokens.is_some()))
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

    fn check(endpoint: Endpoint, body: &str, expected: impl Into<Option<u64>>) {
        let value: serde_json::Value = serde_json::from_str(body).unwrap();
        let fields: Vec<(String, String)> =
            value.as_object().unwrap().iter().map(|(k, v)| (k.clone(), v.to_string())).collect();
        let lookup = |name: &str| fields.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_bytes());
        assert_eq!(requested_output_cap(endpoint, lookup), expected.into(), "{body}");
    }

    #[test]
    fn each_dialect_spelling_of_the_cap_is_read() {
        check(Endpoint::Chat, r#"{"max_tokens":100}"#, 100);
        check(Endpoint::Chat, r#"{"max_completion_tokens":50,"max_tokens":100}"#, 50);
        check(Endpoint::Completions, r#"{"max_tokens":7}"#, 7);
        check(Endpoint::Responses, r#"{"max_output_tokens":300}"#, 300);
        check(Endpoint::Messages, r#"{"max_tokens":1024}"#, 1024);
        check(Endpoint::GenerateContent, r#"{"generationConfig":{"maxOutputTokens":64}}"#, 64);
        check(Endpoint::StreamGenerateContent, r#"{"generationConfig":{"temperature":0.1}}"#, None);
    }

    #[test]
    fn without_a_usable_cap_there_is_none() {
        check(Endpoint::Chat, r#"{"messages":[]}"#, None);
        check(Endpoint::Chat, r#"{"max_tokens":null}"#, None);
        check(Endpoint::Chat, r#"{"max_tokens":"100"}"#, None);
        check(Endpoint::Chat, r#"{"max_tokens":-1}"#, None);
        check(Endpoint::Responses, r#"{"max_tokens":5}"#, None);
        check(Endpoint::Embeddings, r#"{"input":"x"}"#, 0);
    }

    #[test]
    fn reserved_output_prefers_the_request_then_the_override_then_the_price_table() {
        let est = EstimateConfig::default();
        let plain = crate::enforce::config::test_settings();
        let with_override = crate::enforce::EnforcementConfig::from_json(
            r#"{"counter_cluster":"c","gateway_token":"t","default_max_output_tokens":500,"max_output_tokens_by_model":{"big":2000}}"#,
        )
        .unwrap();
        let price = ModelPrice { max_output_tokens: Some(8_000), ..ModelPrice::default() };
        assert_eq!(reserved_output_tokens(Some(100), "m", Some(&price), &est, &with_override), (100, true));
        assert_eq!(reserved_output_tokens(Some(9_999), "m", Some(&price), &est, &plain), (8_000, true), "model max caps");
        assert_eq!(reserved_output_tokens(None, "big", Some(&price), &est, &with_override), (2_000, false));
        assert_eq!(reserved_output_tokens(None, "m", Some(&price), &est, &with_override), (500, false));
        assert_eq!(reserved_output_tokens(None, "m", Some(&price), &est, &plain), (8_000, true));
        assert_eq!(reserved_output_tokens(None, "m", None, &est, &plain), (est.default_max_output_tokens, false));
    }
}
