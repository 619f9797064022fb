//! A request's worst case: what it reserves against its budgets before it may go upstream.
//!
//! The worst case is the most prompt the request can be billed for plus the most output it can
//! produce, priced at the routed model's dearest rates, so a reservation is never smaller than what
//! the request then costs (docs/enforcement.md states what the overspend bound still allows):
//! - **prompt tokens**: a model whose prompt costs nothing needs no bound (the body bound is
//!   kept); otherwise `core::estimate`'s bound: the body (one token per byte) for a prompt sent
//!   whole, the model's context window when `core::prompt_bound` recognised a prompt the provider
//!   holds, and, when that window is unknown, `pricing.estimate.unknown_context_window` (a 403
//!   naming the fields to set, or a configured figure);
//! - **output tokens**: [`reserved_output_tokens`]: the request's cap, else the operator's
//!   override, else the price table's maximum, else the default;
//! - **cost**: `ModelPrice::worst_case_cost` (every prompt token at the dearest prompt price, the
//!   dearer tier across a long-context threshold).
//!
//! Pure: the plugin gathers a [`Request`] at the end of the body, calls [`worst_case`] and
//! reserves [`WorstCase::micros`]. Metering alone reserves nothing and does not call it.

use super::config::EnforcementSettings;
use crate::errors::Failure;
use crate::estimate::EstimateConfig;
use crate::money::Micros;
use crate::pricing::{ModelPrice, PriceLookup};
use crate::prompt_bound::Shape;

/// What a request's reservation is computed from, all known when its body has been read.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    /// The routed model (named in a refusal, and the key of the operator's output override).
    pub model: &'a str,
    /// Its price after the unknown-model policy (`known` false when the policy supplied it).
    pub price: &'a PriceLookup,
    /// The request body's length in bytes: bounds a prompt sent whole.
    pub body_len: u64,
    /// How the billed prompt can exceed the body (`core::prompt_bound`), if it can.
    pub remote_prompt: Option<Shape>,
    /// The request's own output cap (`max_tokens` and its per-dialect spellings), if any.
    pub max_output_tokens: Option<u64>,
    /// The billed context of the response this request continues, when this gateway metered it
    /// (`core::context_memory`): that plus the body is a true bound, tighter than the window.
    pub known_prefix: Option<u64>,
}

/// A request's worst case.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WorstCase {
    /// The prompt bound, in tokens (before the context-window cap `worst_case_cost` applies).
    pub prompt_tokens: u64,
    /// The output tokens assumed.
    pub output_tokens: u64,
    /// What the request can cost at most: the amount reserved.
    pub micros: Micros,
    /// The routed model's price (after the unknown-model policy) that made `micros`.
    pub price: ModelPrice,
}

impl WorstCase {
    /// The request priced as the worst case is, but with at most `output_tokens` output tokens
    /// (never more than [`Self::output_tokens`]): what it reserves on a `reserve: p99` budget.
    pub fn at_output(&self, output_tokens: u64) -> Micros {
        self.price.worst_case_cost(self.prompt_tokens, output_tokens.min(self.output_tokens)).min(self.micros)
    }
}

/// The worst case of `request` under the `pricing.estimate` and `enforcement` settings; `Err` is
/// the refusal to send (a prompt the provider holds on a model whose window is unknown, under
/// `unknown_context_window: deny`).
pub fn worst_case(request: &Request<'_>, estimate: &EstimateConfig, settings: &EnforcementSettings) -> Result<WorstCase, Failure> {
    let price = &request.price.price;
    let prompt_tokens = if let Some(prefix) = request.known_prefix {
        crate::context_memory::prompt_bound(prefix, estimate.input_tokens_upper_bound(request.body_len), price.max_input_tokens)
    } else if request.remote_prompt.is_some() && price.max_input_tokens.is_none() && !price.prompt_is_priced() {
        // Whatever the provider adds costs nothing: the body bound prices everything there is.
        estimate.input_tokens_upper_bound(request.body_len)
    } else {
        estimate.prompt_tokens_bound(request.body_len, request.remote_prompt, request.model, price.max_input_tokens)?.tokens
    };
    let known = request.price.known.then_some(price);
    let (output_tokens, _) = reserved_output_tokens(request.max_output_tokens, request.model, known, estimate, settings);
    Ok(WorstCase { prompt_tokens, output_tokens, micros: price.worst_case_cost(prompt_tokens, output_tokens), price: *price })
}

/// The output tokens a reservation assumes, and whether that is a true bound.
///
/// 1. The request's own cap (capped by the model's maximum): a bound, the upstream enforces it.
/// 2. Without one, `enforcement.max_output_tokens_by_model` / `default_max_output_tokens` if the
///    operator set them: an estimate (the upstream may produce more; docs/enforcement.md counts
///    what it misses in the overspend bound).
/// 3. Else `pricing.estimate`'s rule: the model's maximum from the price table (a bound), else
///    `pricing.estimate.default_max_output_tokens` (an estimate).
///
/// `price` is the model's price when the table knows it (`None` under the unknown-model policy).
pub fn reserved_output_tokens(
    requested: Option<u64>,
    model: &str,
    price: Option<&ModelPrice>,
    estimate: &EstimateConfig,
    settings: &EnforcementSettings,
) -> (u64, bool) {
    let model_max = price.and_then(|p| p.max_output_tokens);
    if requested.is_some() {
        return (estimate.max_output_tokens(requested, model_max), true);
    }
    if let Some(tokens) = settings.output_tokens_override(model) {
        return (tokens, false);
    }
    (estimate.max_output_tokens(None, model_max), model_max.is_some())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::estimate::{UnknownContextWindow, DEFAULT_MAX_OUTPUT_TOKENS};
    use crate::pricing::{LongContext, TierPrice};
    use crate::protocol::Tokens;

    const CLAUDE_LIKE: TierPrice =
        TierPrice { input: 3_000_000, output: 15_000_000, cache_read: 300_000, cache_write: 3_750_000, cache_write_1h: 3_750_000 };

    /// Gemini-2.5-Pro-like: 1M window, long tier above 200k.
    fn gemini_like() -> ModelPrice {
        let long = TierPrice { input: 2_500_000, output: 15_000_000, cache_read: 625_000, cache_write: 2_500_000, cache_write_1h: 2_500_000 };
        let base = TierPrice { input: 1_250_000, output: 10_000_000, cache_read: 310_000, cache_write: 1_250_000, cache_write_1h: 1_250_000 };
        ModelPrice {
            base,
            long_context: Some(LongContext { above_tokens: 200_000, price: long }),
            max_input_tokens: Some(1_048_576),
            max_output_tokens: Some(65_535),
            web_search_per_call: 0,
        }
    }

    fn claude_like(max_input_tokens: Option<u64>, max_output_tokens: Option<u64>) -> ModelPrice {
        ModelPrice { base: CLAUDE_LIKE, max_input_tokens, max_output_tokens, ..ModelPrice::default() }
    }

    /// One case: the request and the settings it is reserved under.
    struct Case {
        name: &'static str,
        price: ModelPrice,
        /// False: the unknown-model policy supplied `price`.
        known: bool,
        body_len: u64,
        remote: Option<Shape>,
        max_output_tokens: Option<u64>,
        /// A remembered context (`core::context_memory`), in tokens.
        known_prefix: Option<u64>,
        estimate: EstimateConfig,
        /// The `enforcement` section's output overrides (JSON members), or "".
        overrides: &'static str,
    }

    const TEXT: Case = Case {
        name: "",
        price: ModelPrice {
            base: CLAUDE_LIKE,
            long_context: None,
            max_input_tokens: None,
            max_output_tokens: None,
            web_search_per_call: 0,
        },
        known: true,
        body_len: 1000,
        remote: None,
        max_output_tokens: Some(500),
        known_prefix: None,
        estimate: EstimateConfig {
            reserve_bytes_per_token: 1,
            stream_bytes_per_token: 4,
            default_max_output_tokens: DEFAULT_MAX_OUTPUT_TOKENS,
            unknown_context_window: UnknownContextWindow::Deny,
            unknown_context_window_tokens: 2_000_000,
        },
        overrides: "",
    };

    /// `Ok((prompt tokens, output tokens, micro-dollars))` or `Err(status)` of the refusal.
    fn check(case: Case, expected: Result<(u64, u64, Micros), u16>) {
        let settings = crate::enforce::EnforcementConfig::from_json(&format!(
            r#"{{"counter_cluster":"c","gateway_token":"t"{}{}}}"#,
            if case.overrides.is_empty() { "" } else { "," },
            case.overrides
        ))
        .unwrap();
        let price = PriceLookup { price: case.price, known: case.known };
        let request = Request {
            model: "m",
            price: &price,
            body_len: case.body_len,
            remote_prompt: case.remote,
            max_output_tokens: case.max_output_tokens,
            known_prefix: case.known_prefix,
        };
        let got = worst_case(&request, &case.estimate, &settings)
            .map(|w| (w.prompt_tokens, w.output_tokens, w.micros))
            .map_err(|f| f.status());
        assert_eq!(got, expected, "{}", case.name);
    }

    #[test]
    fn the_worst_case_of_a_prompt_sent_whole_is_its_body_and_its_output_cap() {
        // 1000 × $3.75/M (the dearest prompt price: a cache write) + 500 × $15/M = 11_250 µ$.
        check(Case { name: "one token per body byte", ..TEXT }, Ok((1000, 500, 11_250)));
        // The window caps the priced prompt: 800 × $3.75/M + 500 × $15/M = 10_500 µ$.
        check(Case { name: "a body longer than the window", price: claude_like(Some(800), None), ..TEXT }, Ok((1000, 500, 10_500)));
        let four = EstimateConfig { reserve_bytes_per_token: 4, ..TEXT.estimate };
        // 250 × $3.75/M + 500 × $15/M = 8_437.5 → 8_438 µ$ (rounded up once).
        check(Case { name: "reserve_bytes_per_token 4", estimate: four, ..TEXT }, Ok((250, 500, 8_438)));
        check(Case { name: "an empty request reserves nothing", body_len: 0, max_output_tokens: Some(0), ..TEXT }, Ok((0, 0, 0)));
    }

    #[test]
    fn a_continuation_of_a_remembered_response_reserves_its_context_plus_its_body() {
        let windowed = claude_like(Some(200_000), None);
        // 20_000 remembered + 1000 body = 21_000 × $3.75/M + 500 × $15/M = 78_750 + 7_500 µ$.
        let continuation = || Case { name: "remembered prefix", price: windowed, remote: Some(Shape::PreviousResponse), known_prefix: Some(20_000), ..TEXT };
        check(continuation(), Ok((21_000, 500, 86_250)));
        // The window still caps it: the provider refuses a longer prompt.
        check(Case { name: "prefix beyond the window", known_prefix: Some(199_500), ..continuation() }, Ok((200_000, 500, 757_500)));
        // Without the memory the same request reserves the whole window.
        check(Case { name: "not remembered", known_prefix: None, ..continuation() }, Ok((200_000, 500, 757_500)));
        // A Gemini generation reading a cache created through the gateway: the same rule.
        let cached = || Case { name: "remembered cache", remote: Some(Shape::CachedContent), ..continuation() };
        check(cached(), Ok((21_000, 500, 86_250)));
        check(Case { name: "cache not seen here", known_prefix: None, ..cached() }, Ok((200_000, 500, 757_500)));
        // Creating a cache: its body is its prompt and it generates nothing (the plan's cap of 0).
        check(Case { name: "cache creation", max_output_tokens: Some(0), ..TEXT }, Ok((1_000, 0, 3_750)));
    }

    #[test]
    fn the_output_comes_from_the_request_then_the_operator_then_the_model_then_the_default() {
        let capped = claude_like(None, Some(8_000));
        // 1000 × $3.75/M + 8000 × $15/M = $0.00375 + $0.12.
        check(Case { name: "the model caps the request's cap", price: capped, max_output_tokens: Some(9_999), ..TEXT }, Ok((1000, 8_000, 123_750)));
        check(Case { name: "no cap: the model's maximum", price: capped, max_output_tokens: None, ..TEXT }, Ok((1000, 8_000, 123_750)));
        let default = 1000 * 3_750_000 + DEFAULT_MAX_OUTPUT_TOKENS * 15_000_000;
        let default = i64::try_from(default.div_ceil(1_000_000)).unwrap();
        check(Case { name: "no cap, no maximum: the default", max_output_tokens: None, ..TEXT }, Ok((1000, DEFAULT_MAX_OUTPUT_TOKENS, default)));
        let overrides = r#""default_max_output_tokens":500,"max_output_tokens_by_model":{"other":2000}"#;
        check(Case { name: "no cap: the operator's override", price: capped, max_output_tokens: None, overrides, ..TEXT }, Ok((1000, 500, 11_250)));
        let by_model = r#""default_max_output_tokens":500,"max_output_tokens_by_model":{"m":100}"#;
        check(Case { name: "no cap: the override by model", max_output_tokens: None, overrides: by_model, ..TEXT }, Ok((1000, 100, 5_250)));
        check(Case { name: "a cap beats the override", max_output_tokens: Some(7), overrides: by_model, ..TEXT }, Ok((1000, 7, 3_855)));
        // An unpriced model (unknown_model: zero) costs nothing, and its table maximum is not used.
        let unknown = ModelPrice { max_output_tokens: Some(8_000), ..ModelPrice::default() };
        check(Case { name: "unknown model", price: unknown, known: false, max_output_tokens: None, ..TEXT }, Ok((1000, DEFAULT_MAX_OUTPUT_TOKENS, 0)));
    }

    #[test]
    fn a_prompt_the_provider_holds_reserves_the_context_window() {
        // 1_048_576 × $2.50/M (long tier) + 1000 × $15/M = $2.62144 + $0.015.
        let cached = Case { name: "cachedContent on a 1M window", price: gemini_like(), body_len: 80, remote: Some(Shape::CachedContent), max_output_tokens: Some(1000), ..TEXT };
        check(cached, Ok((1_048_576, 1000, 2_636_440)));
        let window = claude_like(Some(128_000), None);
        // 128_000 × $3.75/M + 500 × $15/M = $0.48 + $0.0075.
        check(Case { name: "previous_response_id", price: window, remote: Some(Shape::PreviousResponse), ..TEXT }, Ok((128_000, 500, 487_500)));
        check(Case { name: "text only never needs the window", price: window, ..TEXT }, Ok((1000, 500, 11_250)));
    }

    #[test]
    fn an_unknown_window_is_refused_or_reserved_as_configured_unless_the_prompt_is_free() {
        let file = Case { name: "a file on a model without a window: 403", remote: Some(Shape::File), ..TEXT };
        check(file, Err(403));
        let reserve = EstimateConfig {
            unknown_context_window: UnknownContextWindow::Reserve,
            unknown_context_window_tokens: 50_000,
            ..TEXT.estimate
        };
        // 50_000 × $3.75/M + 500 × $15/M = $0.1875 + $0.0075.
        check(Case { name: "reserve: the configured figure", remote: Some(Shape::File), estimate: reserve, ..TEXT }, Ok((50_000, 500, 195_000)));
        check(
            Case { name: "reserve: never below the body", remote: Some(Shape::File), estimate: reserve, body_len: 90_000, ..TEXT },
            Ok((90_000, 500, 345_000)),
        );
        // A prompt that costs nothing (unknown_model: zero) needs no bound.
        let free = ModelPrice::default();
        check(Case { name: "free prompt", price: free, known: false, remote: Some(Shape::Image), body_len: 100, ..TEXT }, Ok((100, 500, 0)));
        let output_only = ModelPrice { base: TierPrice { output: 15_000_000, ..TierPrice::default() }, ..ModelPrice::default() };
        check(Case { name: "free prompt, priced output", price: output_only, remote: Some(Shape::Image), body_len: 100, ..TEXT }, Ok((100, 500, 7_500)));
    }

    #[test]
    fn whatever_the_provider_bills_from_its_cache_stays_under_the_window_reservation() {
        let price = gemini_like();
        let lookup = PriceLookup { price, known: true };
        let request = Request { model: "g", price: &lookup, body_len: 80, remote_prompt: Some(Shape::CachedContent), max_output_tokens: Some(1000), known_prefix: None };
        let worst = worst_case(&request, &EstimateConfig::default(), &crate::enforce::config::test_settings()).unwrap();
        assert_eq!(worst.micros, 2_636_440);
        for prompt in [1u64, 200_000, 200_001, 1_048_576] {
            let actual = Tokens { input: 80, cache_read: prompt - 1, output: 1000, ..Tokens::default() };
            assert!(price.cost_micros(&actual) <= worst.micros, "{prompt}");
        }
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
