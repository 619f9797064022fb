//! How many output tokens a request's worst-case reservation assumes.
//!
//! A request's worst case is its input upper bound plus the most output it can produce. With an
//! output cap in the request (`max_tokens` and its per-dialect spellings, read by
//! `routing::plan`), the upstream enforces it and the reservation is a true upper bound. Without
//! one, the operator may choose a smaller assumption than the model's maximum; the reservation is
//! then an estimate, and docs/enforcement.md counts what it misses in the overspend bound.

use super::config::EnforcementSettings;
use crate::estimate::EstimateConfig;
use crate::pricing::ModelPrice;

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

#[cfg(test)]
mod tests {
    use super::*;

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
