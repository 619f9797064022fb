//! Token estimates for the two moments the filter has no usage report to go on. Tokens only:
//! what they cost is `core::pricing`'s (this module imports nothing of it; the model's limits
//! come in as plain numbers).
//!
//! - **Before the request** (reservations): the worst case. [`EstimateConfig::prompt_tokens_bound`]
//!   bounds the prompt by its body size (or by the model's context window, below), and
//!   [`EstimateConfig::max_output_tokens`] gives the most output the request may produce;
//!   `ModelPrice::worst_case_cost` prices the two, so a reservation is never smaller than what the
//!   request can cost (`core::enforce::reservation` puts them together).
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
//! Media and stored context are the exception: a request whose billed prompt can exceed its body
//! (`core::prompt_bound`: a `previous_response_id`, a Gemini `cachedContent`, an image or file by
//! URL or id, a hosted tool, …) is bounded by the routed model's context window instead
//! ([`EstimateConfig::prompt_tokens_bound`]); when the window is unknown,
//! `pricing.estimate.unknown_context_window` decides (default `deny`).
//!
//! The divisor is configurable (`pricing.estimate.reserve_bytes_per_token`, default 1) for
//! operators who accept a tighter, no longer guaranteed, reservation.
//!
//! # Why four bytes per token for cut streams
//! English text and code average about four bytes per token with these tokenizers; a cut stream is
//! charged for what was plausibly produced, not the worst case (`stream_bytes_per_token`, default 4).
//! Both counts round up.

use crate::errors::{ErrorKind, Failure};
use crate::prompt_bound::Shape;
use crate::protocol::Tokens;
use crate::usage::ScanOutcome;
use serde::Deserialize;

/// Bytes per token assumed for the reservation's upper bound (see the module docs).
pub const DEFAULT_RESERVE_BYTES_PER_TOKEN: u32 = 1;
/// Bytes per token assumed when estimating a cut stream.
pub const DEFAULT_STREAM_BYTES_PER_TOKEN: u32 = 4;
/// Output tokens reserved when neither the request nor the price table gives a maximum.
pub const DEFAULT_MAX_OUTPUT_TOKENS: u64 = 16_384;
/// Prompt tokens reserved, under `unknown_context_window: reserve`, for a request whose prompt
/// lives partly with the provider when the model's context window is unknown: the largest window
/// of the models in the bundled table that have one of a million tokens or more is 1,048,576 (Gemini,
/// GPT-4.1); two million covers Gemini 1.5 Pro too.
pub const DEFAULT_UNKNOWN_CONTEXT_WINDOW_TOKENS: u64 = 2_000_000;

/// What a request whose billed prompt can exceed its body reserves when the routed model's context
/// window (`max_input_tokens`) is unknown (`pricing.estimate.unknown_context_window`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UnknownContextWindow {
    /// Refuse it (403, naming the model and the fields that fix it): no true bound exists, and
    /// the hard limit is the promise. The default.
    #[default]
    Deny,
    /// Reserve `unknown_context_window_tokens` prompt tokens. Not a bound: a prompt beyond it
    /// is counted in `tollgate_enforce_excess_micros_total` (term (1) of the overspend bound).
    Reserve,
}

/// A request's prompt bound, in tokens, and whether it is a true upper bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PromptBound {
    pub tokens: u64,
    pub true_bound: bool,
}

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
    /// A request whose prompt lives partly with the provider, on a model without a known context
    /// window: `deny` (default) or `reserve`.
    #[serde(default)]
    pub unknown_context_window: UnknownContextWindow,
    /// Prompt tokens reserved for such a request under `unknown_context_window: reserve`.
    #[serde(default = "default_unknown_window_tokens")]
    pub unknown_context_window_tokens: u64,
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
fn default_unknown_window_tokens() -> u64 {
    DEFAULT_UNKNOWN_CONTEXT_WINDOW_TOKENS
}

impl Default for EstimateConfig {
    fn default() -> EstimateConfig {
        EstimateConfig {
            reserve_bytes_per_token: DEFAULT_RESERVE_BYTES_PER_TOKEN,
            stream_bytes_per_token: DEFAULT_STREAM_BYTES_PER_TOKEN,
            default_max_output_tokens: DEFAULT_MAX_OUTPUT_TOKENS,
            unknown_context_window: UnknownContextWindow::Deny,
            unknown_context_window_tokens: DEFAULT_UNKNOWN_CONTEXT_WINDOW_TOKENS,
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
        if self.unknown_context_window_tokens == 0 {
            return Err(("unknown_context_window_tokens", "must be at least 1 (2000000 covers every context window in the bundled table)"));
        }
        Ok(())
    }

    /// The prompt tokens a reservation assumes for a body of `body_len` bytes on `model`, whose
    /// context window (`max_input_tokens`) is `context_window` when the price table knows it,
    /// given how its billed prompt can exceed the body (`remote`, from `core::prompt_bound::detect`):
    /// - text only: the body bound ([`Self::input_tokens_upper_bound`]; `worst_case_cost` caps it
    ///   by the window);
    /// - otherwise the model's context window, the only bound the gateway knows (the upstream
    ///   refuses a longer prompt); `worst_case_cost` prices it at the dearest prompt price and the
    ///   long-context tier;
    /// - no window known: `unknown_context_window` decides: a 403 naming the fields to set, or
    ///   `unknown_context_window_tokens` (not a true bound). (A model whose prompt costs nothing
    ///   needs no bound at all: `core::enforce::reservation` does not ask.)
    pub fn prompt_tokens_bound(
        &self,
        body_len: u64,
        remote: Option<Shape>,
        model: &str,
        context_window: Option<u64>,
    ) -> Result<PromptBound, Failure> {
        let body = self.input_tokens_upper_bound(body_len);
        let Some(shape) = remote else {
            return Ok(PromptBound { tokens: body, true_bound: self.reserve_bytes_per_token == 1 });
        };
        if let Some(window) = context_window {
            return Ok(PromptBound { tokens: window, true_bound: true });
        }
        match self.unknown_context_window {
            UnknownContextWindow::Reserve => {
                Ok(PromptBound { tokens: self.unknown_context_window_tokens.max(body), true_bound: false })
            }
            UnknownContextWindow::Deny => Err(Failure::new(
                ErrorKind::Denied,
                format!(
                    "this request's prompt is partly held by the provider ({}), so only model \"{model}\"'s context window bounds its cost, \
                     and this gateway does not know that window; send the whole prompt in the body, or ask the gateway operator to set \
                     pricing.models.\"{model}\".max_input_tokens (or pricing.estimate.unknown_context_window: reserve)",
                    shape.as_str()
                ),
            )),
        }
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
            Some(reported) if reported.prompt() > 0 => {
                Tokens { output: reported.output.max(guess.output), ..reported }
            }
            Some(reported) => {
                Tokens { output: reported.output.max(guess.output), reasoning: reported.reasoning, ..guess }
            }
            None => guess,
        }
    }

    /// The output tokens to reserve: the request's own maximum (capped by the model's, since the
    /// upstream cannot produce more), else the model's maximum (`model_max`, from the price table
    /// when the model is priced), else `default_max_output_tokens`.
    pub fn max_output_tokens(&self, requested: Option<u64>, model_max: Option<u64>) -> u64 {
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

#[cfg(test)]
mod tests {
    use super::*;

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
    fn max_output_comes_from_the_request_then_the_model_then_the_default() {
        let cfg = EstimateConfig::default();
        let model_max = Some(64_000);
        assert_eq!(cfg.max_output_tokens(Some(1000), model_max), 1000);
        assert_eq!(cfg.max_output_tokens(Some(1_000_000), model_max), 64_000, "the model cannot produce more");
        assert_eq!(cfg.max_output_tokens(None, model_max), 64_000);
        assert_eq!(cfg.max_output_tokens(None, None), DEFAULT_MAX_OUTPUT_TOKENS);
        assert_eq!(cfg.max_output_tokens(Some(7), None), 7);
    }

    #[test]
    fn a_prompt_held_by_the_provider_is_bounded_by_the_context_window() {
        let cfg = EstimateConfig::default();
        let window = Some(128_000);
        let bound = |remote| cfg.prompt_tokens_bound(500, remote, "m", window).unwrap();
        assert_eq!(bound(None), PromptBound { tokens: 500, true_bound: true }, "text in the body: the body bound");
        assert_eq!(bound(Some(Shape::PreviousResponse)), PromptBound { tokens: 128_000, true_bound: true });
        assert_eq!(bound(Some(Shape::CachedContent)), PromptBound { tokens: 128_000, true_bound: true });
        let loose = EstimateConfig { reserve_bytes_per_token: 4, ..cfg };
        assert_eq!(loose.prompt_tokens_bound(500, None, "m", window).unwrap(), PromptBound { tokens: 125, true_bound: false });
    }

    #[test]
    fn an_unknown_window_is_denied_by_default_or_reserved_as_configured() {
        let cfg = EstimateConfig::default();
        let denied = cfg.prompt_tokens_bound(100, Some(Shape::File), "my-model", None).unwrap_err();
        assert_eq!(denied.status(), 403);
        for needle in ["(file)", "pricing.models.\"my-model\".max_input_tokens", "pricing.estimate.unknown_context_window"] {
            assert!(denied.message.contains(needle), "{needle}: {}", denied.message);
        }
        let reserve = EstimateConfig { unknown_context_window: UnknownContextWindow::Reserve, unknown_context_window_tokens: 50_000, ..cfg };
        assert_eq!(
            reserve.prompt_tokens_bound(100, Some(Shape::File), "my-model", None).unwrap(),
            PromptBound { tokens: 50_000, true_bound: false }
        );
        assert_eq!(reserve.prompt_tokens_bound(90_000, Some(Shape::File), "m", None).unwrap().tokens, 90_000, "never below the body bound");
        // A prompt that costs nothing needs no bound: core::enforce::reservation (its tests) does
        // not ask. Text-only requests never need the window.
        assert_eq!(cfg.prompt_tokens_bound(100, None, "m", None).unwrap().tokens, 100);
    }

    #[test]
    fn the_unknown_window_settings_parse_and_validate() {
        let cfg: EstimateConfig = serde_json::from_str(r#"{"unknown_context_window":"reserve","unknown_context_window_tokens":300000}"#).unwrap();
        assert_eq!((cfg.unknown_context_window, cfg.unknown_context_window_tokens), (UnknownContextWindow::Reserve, 300_000));
        assert!(serde_json::from_str::<EstimateConfig>(r#"{"unknown_context_window":"guess"}"#).is_err());
        let zero = EstimateConfig { unknown_context_window_tokens: 0, ..EstimateConfig::default() };
        assert_eq!(zero.validate().map_err(|(field, _)| field), Err("unknown_context_window_tokens"));
    }

    #[test]
    fn the_config_refuses_a_zero_divisor() {
        let zero = EstimateConfig { stream_bytes_per_token: 0, ..EstimateConfig::default() };
        assert_eq!(zero.validate().map_err(|(field, _)| field), Err("stream_bytes_per_token"));
        assert_eq!(EstimateConfig::default().validate(), Ok(()));
    }
}
