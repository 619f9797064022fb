//! Token estimates for the two moments the filter has no usage report to go on.
//!
//! - **Before the request** (reservations): the worst case. [`input_tokens_upper_bound`] bounds the
//!   prompt by its body size, and [`worst_case_cost`] prices that bound plus the most output the
//!   request may produce, so a reservation is never smaller than what the request can cost.
//! - **After a cut stream** (the client or upstream hung up before usage arrived):
//!   [`estimate_from_stream`] gives a realistic figure from the prompt and the content that was
//!   streamed. The caller flags such records `estimated`.
//!
//! # Why one token per byte is an upper bound
//! The tokenizers behind these APIs (OpenAI's and Anthropic's byte-level BPE, Gemini's
//! SentencePiece with byte fallback) never produce a token covering less than one byte of text, so
//! a text of `n` UTF-8 bytes is at most `n` tokens. The request body is the text plus JSON syntax
//! (quotes, keys, escapes such as `\u4e2d` for three UTF-8 bytes), so its length bounds the text's
//! length. The chat template's few tokens per message are paid for many times over by the JSON
//! around each message (`{"role":"user","content":""}` alone is 28 bytes). Not covered: media
//! referenced by URL or file id (an image URL of 100 bytes can cost a thousand tokens); base64
//! media inline is covered (its bytes far exceed its tokens). The bound is also capped by the
//! model's context window when the price table knows it, since the upstream refuses longer prompts.
//!
//! The divisor is configurable (`pricing.estimate.reserve_bytes_per_token`, default 1) for
//! operators who accept a tighter, no longer guaranteed, reservation.
//!
//! # Why four bytes per token for cut streams
//! English text and code average about four bytes per token with these tokenizers; a cut stream is
//! charged for what was plausibly produced, not the worst case (`stream_bytes_per_token`, default 4).
//! Both counts round up.

use crate::money::{self, Micros};
use crate::pricing::{prompt_tokens, ModelPrice, TierPrice};
use crate::protocol::Tokens;
use crate::usage::ScanOutcome;
use serde::Deserialize;

/// Bytes per token assumed for the reservation's upper bound (see the module docs).
pub const DEFAULT_RESERVE_BYTES_PER_TOKEN: u32 = 1;
/// Bytes per token assumed when estimating a cut stream.
pub const DEFAULT_STREAM_BYTES_PER_TOKEN: u32 = 4;
/// Output tokens reserved when neither the request nor the price table gives a maximum.
pub const DEFAULT_MAX_OUTPUT_TOKENS: u64 = 16_384;

/// Estimate settings, `pricing.estimate` in the filter config. Every field is optional.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EstimateConfig {
    /// Divisor for the reservation's prompt bound; 1 is a true upper bound for text.
    #[serde(default = "default_reserve")]
    pub reserve_bytes_per_token: u32,
    /// Divisor used to estimate a cut stream's prompt and output.
    #[serde(default = "default_stream")]
    pub stream_bytes_per_token: u32,
    /// Output tokens reserved when the request sets no maximum and the model's is unknown.
    #[serde(default = "default_max_output")]
    pub default_max_output_tokens: u64,
}

fn default_reserve() -> u32 {
    DEFAULT_RESERVE_BYTES_PER_TOKEN
}
fn default_stream() -> u32 {
    DEFAULT_STREAM_BYTES_PER_TOKEN
}
fn default_max_output() -> u64 {
    DEFAULT_MAX_OUTPUT_TOKENS
}

impl Default for EstimateConfig {
    fn default() -> EstimateConfig {
        EstimateConfig {
            reserve_bytes_per_token: DEFAULT_RESERVE_BYTES_PER_TOKEN,
            stream_bytes_per_token: DEFAULT_STREAM_BYTES_PER_TOKEN,
            default_max_output_tokens: DEFAULT_MAX_OUTPUT_TOKENS,
        }
    }
}

impl EstimateConfig {
    /// Checks the settings; the error names the field (relative to `pricing.estimate`).
    pub fn validate(&self) -> Result<(), (&'static str, &'static str)> {
        if self.reserve_bytes_per_token == 0 {
            return Err(("reserve_bytes_per_token", "must be at least 1 (1 is the safe upper bound)"));
        }
        if self.stream_bytes_per_token == 0 {
            return Err(("stream_bytes_per_token", "must be at least 1 (4 is typical)"));
        }
        Ok(())
    }

    /// The most prompt tokens a body of `body_len` bytes can hold, with this config's divisor.
    pub fn input_tokens_upper_bound(&self, body_len: u64) -> u64 {
        body_len.div_ceil(u64::from(self.reserve_bytes_per_token.max(1)))
    }

    /// A realistic token count for a stream cut before its usage report.
    pub fn estimate_from_stream(&self, prompt_bytes: u64, streamed_content_bytes: u64) -> Tokens {
        let per_token = u64::from(self.stream_bytes_per_token.max(1));
        Tokens {
            input: prompt_bytes.div_ceil(per_token),
            output: streamed_content_bytes.div_ceil(per_token),
            ..Tokens::default()
        }
    }

    /// The tokens to charge for a response whose final usage never arrived (`scan.tokens` is
    /// `None`): the counts of an early, partial report where there is one (Anthropic's
    /// `message_start` gives exact input and cache counts), else the prompt estimate; and the larger
    /// of the reported output and the streamed-content estimate. The caller flags it `estimated`.
    pub fn estimate_unfinished(&self, prompt_bytes: u64, scan: &ScanOutcome) -> Tokens {
        let guess = self.estimate_from_stream(prompt_bytes, scan.streamed_content_bytes);
        match scan.tokens.or(scan.partial_tokens) {
            Some(reported) if prompt_tokens(&reported) > 0 => {
                Tokens { output: reported.output.max(guess.output), ..reported }
            }
            Some(reported) => {
                Tokens { output: reported.output.max(guess.output), reasoning: reported.reasoning, ..guess }
            }
            None => guess,
        }
    }

    /// The output tokens to reserve: the request's own maximum (capped by the model's, since the
    /// upstream cannot produce more), else the model's maximum, else `default_max_output_tokens`.
    pub fn max_output_tokens(&self, requested: Option<u64>, price: Option<&ModelPrice>) -> u64 {
        let model_max = price.and_then(|p| p.max_output_tokens);
        match (requested, model_max) {
            (Some(r), Some(m)) => r.min(m),
            (Some(r), None) => r,
            (None, Some(m)) => m,
            (None, None) => self.default_max_output_tokens,
        }
    }
}

/// The most prompt tokens a request body of `body_len` bytes can hold: one per byte.
pub fn input_tokens_upper_bound(body_len: u64) -> u64 {
    EstimateConfig::default().input_tokens_upper_bound(body_len)
}

/// A realistic estimate for a stream cut short: about four bytes per token for the prompt body and
/// for the content streamed so far. The caller flags the record `estimated`.
pub fn estimate_from_stream(prompt_bytes: u64, streamed_content_bytes: u64) -> Tokens {
    EstimateConfig::default().estimate_from_stream(prompt_bytes, streamed_content_bytes)
}

/// The most a request can cost: `input_upper_bound` prompt tokens (capped by the model's context
/// window when known) and `max_output_tokens` output tokens. Every prompt token is priced at the
/// dearest of the input, cache-read and cache-write prices, because the request may write its whole
/// prompt to a cache. When the bound exceeds the model's long-context threshold, the dearer of the
/// two tiers is taken (the real prompt may land on either side of the threshold).
pub fn worst_case_cost(price: &ModelPrice, input_upper_bound: u64, max_output_tokens: u64) -> Micros {
    let input = match price.max_input_tokens {
        Some(window) => input_upper_bound.min(window),
        None => input_upper_bound,
    };
    let at = |tier: &TierPrice| {
        let prompt_price = tier.dearest_prompt_price();
        u128::from(input)
            .saturating_mul(u128::from(prompt_price))
            .saturating_add(u128::from(max_output_tokens).saturating_mul(u128::from(tier.output)))
    };
    let (tier, long) = price.tier_for(input);
    let picos = if long { at(&tier).max(at(&price.base)) } else { at(&tier) };
    money::picos_to_micros_ceil(picos)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pricing::LongContext;
    use proptest::prelude::*;

    const CLAUDE_LIKE: TierPrice =
        TierPrice { input: 3_000_000, output: 15_000_000, cache_read: 300_000, cache_write: 3_750_000, cache_write_1h: 3_750_000 };

    fn model(base: TierPrice) -> ModelPrice {
        ModelPrice { base, ..ModelPrice::default() }
    }

    #[test]
    fn the_prompt_bound_is_one_token_per_byte_unless_configured() {
        assert_eq!(input_tokens_upper_bound(0), 0);
        assert_eq!(input_tokens_upper_bound(2048), 2048);
        let three = EstimateConfig { reserve_bytes_per_token: 3, ..EstimateConfig::default() };
        assert_eq!(three.input_tokens_upper_bound(1000), 334, "rounds up");
    }

    #[test]
    fn a_cut_stream_is_estimated_at_four_bytes_per_token_rounding_up() {
        assert_eq!(estimate_from_stream(4001, 10), Tokens { input: 1001, output: 3, ..Tokens::default() });
        assert_eq!(estimate_from_stream(0, 0), Tokens::default());
        let two = EstimateConfig { stream_bytes_per_token: 2, ..EstimateConfig::default() };
        assert_eq!(two.estimate_from_stream(10, 5), Tokens { input: 5, output: 3, ..Tokens::default() });
    }

    #[test]
    fn an_unfinished_stream_keeps_the_exact_counts_it_was_given() {
        let cfg = EstimateConfig::default();
        // Anthropic cut after message_start (input 25, cache 50 + 100, placeholder output 1) with
        // 400 bytes of text streamed: the prompt counts are exact, the output is estimated.
        let early = Tokens { input: 25, output: 1, cache_read: 50, cache_write: 100, ..Tokens::default() };
        let scan = ScanOutcome { partial_tokens: Some(early), streamed_content_bytes: 400, ..ScanOutcome::default() };
        assert_eq!(cfg.estimate_unfinished(9_999, &scan), Tokens { output: 100, ..early });
        // Nothing reported: both from bytes.
        let scan = ScanOutcome { streamed_content_bytes: 400, ..ScanOutcome::default() };
        assert_eq!(cfg.estimate_unfinished(800, &scan), Tokens { input: 200, output: 100, ..Tokens::default() });
        // A report with no prompt counts keeps the prompt estimate, and a larger reported output wins.
        let odd = Tokens { output: 500, ..Tokens::default() };
        let scan = ScanOutcome { partial_tokens: Some(odd), streamed_content_bytes: 400, ..ScanOutcome::default() };
        assert_eq!(cfg.estimate_unfinished(800, &scan), Tokens { input: 200, output: 500, ..Tokens::default() });
    }

    #[test]
    fn worst_case_prices_every_prompt_token_as_a_cache_write_by_hand() {
        // 1000 × $3.75/M + 500 × $15/M = $0.00375 + $0.0075 = 11_250 micro-dollars.
        assert_eq!(worst_case_cost(&model(CLAUDE_LIKE), 1000, 500), 11_250);
        // The context window caps the bound: 800 × $3.75/M + 500 × $15/M = 10_500.
        let windowed = ModelPrice { max_input_tokens: Some(800), ..model(CLAUDE_LIKE) };
        assert_eq!(worst_case_cost(&windowed, 1000, 500), 10_500);
        assert_eq!(worst_case_cost(&model(CLAUDE_LIKE), 0, 0), 0);
    }

    #[test]
    fn worst_case_takes_the_long_context_tier_above_its_threshold() {
        let long = TierPrice { input: 6_000_000, output: 22_500_000, cache_read: 600_000, cache_write: 7_500_000, cache_write_1h: 7_500_000 };
        let price =
            ModelPrice { long_context: Some(LongContext { above_tokens: 200_000, price: long }), ..model(CLAUDE_LIKE) };
        // 200_000 × $3.75/M + 1000 × $15/M = $0.75 + $0.015.
        assert_eq!(worst_case_cost(&price, 200_000, 1000), 765_000);
        // 300_000 × $7.50/M + 1000 × $22.50/M = $2.25 + $0.0225.
        assert_eq!(worst_case_cost(&price, 300_000, 1000), 2_272_500);
    }

    #[test]
    fn max_output_comes_from_the_request_then_the_model_then_the_default() {
        let cfg = EstimateConfig::default();
        let price = ModelPrice { max_output_tokens: Some(64_000), ..ModelPrice::default() };
        assert_eq!(cfg.max_output_tokens(Some(1000), Some(&price)), 1000);
        assert_eq!(cfg.max_output_tokens(Some(1_000_000), Some(&price)), 64_000, "the model cannot produce more");
        assert_eq!(cfg.max_output_tokens(None, Some(&price)), 64_000);
        assert_eq!(cfg.max_output_tokens(None, None), DEFAULT_MAX_OUTPUT_TOKENS);
        assert_eq!(cfg.max_output_tokens(Some(7), None), 7);
    }

    #[test]
    fn the_config_refuses_a_zero_divisor() {
        let zero = EstimateConfig { stream_bytes_per_token: 0, ..EstimateConfig::default() };
        assert_eq!(zero.validate().map_err(|(field, _)| field), Err("stream_bytes_per_token"));
        assert_eq!(EstimateConfig::default().validate(), Ok(()));
    }

    fn tier() -> impl Strategy<Value = TierPrice> {
        (0u64..50_000_000, 0u64..80_000_000, 0u64..10_000_000, 0u64..20_000_000, 0u64..40_000_000).prop_map(
            |(input, output, cache_read, cache_write, cache_write_1h)| TierPrice { input, output, cache_read, cache_write, cache_write_1h },
        )
    }

    proptest! {
        /// A reservation covers whatever the request then costs, for any split of the prompt into
        /// input and cache tokens, any output up to the maximum, either side of the threshold.
        #[test]
        fn the_worst_case_covers_every_real_outcome(
            base in tier(),
            long in proptest::option::of(tier()),
            above in 1u64..400_000,
            window in proptest::option::of(1u64..500_000),
            bound in 0u64..600_000,
            max_out in 0u64..200_000,
            shares in (0u64..=100, 0u64..=100, 0u64..=100),
            hour_share in 0u64..=100,
            used in 0u64..=100,
        ) {
            let price = ModelPrice {
                base,
                long_context: long.map(|price| LongContext { above_tokens: above, price }),
                max_input_tokens: window,
                max_output_tokens: None,
                web_search_per_call: 0,
            };
            let prompt = bound.min(window.unwrap_or(u64::MAX)) * used / 100;
            let total = (shares.0 + shares.1 + shares.2).max(1);
            let cache_read = prompt * shares.1 / total;
            let cache_write = prompt * shares.2 / total;
            let actual = Tokens {
                input: prompt - cache_read - cache_write,
                output: max_out * used / 100,
                cache_read,
                cache_write,
                cache_write_1h: cache_write * hour_share / 100,
                ..Tokens::default()
            };
            prop_assert!(price.cost_micros(&actual) <= worst_case_cost(&price, bound, max_out));
        }
    }
}
