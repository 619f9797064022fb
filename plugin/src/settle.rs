//! Settlement: from what the response said (or did not say) to a price ([`price`]), and a
//! [`UsageRecord`] for whoever needs one ([`Priced::record`]: enforcement posts it, the debug log
//! prints it). Metering alone needs only the price: the record copies the request's principal,
//! model names and ids, which at `[DONE]` cost more wasm instructions than the pricing itself.
//!
//! Pure, so the charging rules are tested natively:
//! - usage reported by the upstream → those tokens, `estimated: false`;
//! - a 2xx (or no response at all) without usage — a stream cut by the client or the upstream, a
//!   compressed body the scanner could not read — → tokens estimated from the prompt bytes and the
//!   content streamed so far, `estimated: true`;
//! - an upstream error without usage → zero tokens (the provider does not bill it).
//!
//! The routed model is priced (it is what was asked for and reserved against), at the price
//! admission looked up ([`Exchange::routed_price`]: the table is not searched twice per request).
//! If the table does not know it but knows the model the upstream reports (e.g. an Azure
//! deployment name vs the `gpt-4o-2024-08-06` in the response), the reported model is priced
//! instead; else admission's unknown-model policy price applies.

use tollgate_core::dialect::Dialect;
use tollgate_core::money::Micros;
use tollgate_core::pricing::{PriceLookup, PriceTable};
use tollgate_core::protocol::{Principal, Tokens, UsageRecord};
use tollgate_core::usage::ScanOutcome;

/// How a forwarded request ended, for metrics and the access log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// The upstream reported usage.
    Metered,
    /// Charged from an estimate.
    Estimated,
    /// The upstream answered with an error and no usage.
    UpstreamError,
}

impl Ended {
    pub fn as_str(self) -> &'static str {
        match self {
            Ended::Metered => "metered",
            Ended::Estimated => "estimated",
            Ended::UpstreamError => "upstream_error",
        }
    }
}

/// What the filter knows about a forwarded request (borrowed from the request's state: settling
/// copies nothing unless a [`UsageRecord`] is wanted).
#[derive(Debug, Clone, Copy)]
pub struct Exchange<'a> {
    pub gateway_id: &'a str,
    pub request_id: &'a str,
    pub principal: &'a Principal,
    pub dialect: Dialect,
    pub requested_model: &'a str,
    pub routed_model: &'a str,
    /// The routed model's price as admission found it (`PriceTable::price`: the unknown-model
    /// policy already applied; a model the `deny` policy refuses never reaches settlement).
    pub routed_price: &'a PriceLookup,
    /// Bytes of the body sent upstream.
    pub prompt_bytes: u64,
    pub started_at_ms: i64,
}

impl Exchange<'_> {
    /// The usage record's id (`core::protocol::record_id`).
    pub fn record_id(&self) -> String {
        tollgate_core::protocol::record_id(self.gateway_id, self.request_id)
    }
}

/// What a request is charged: [`price`]'s answer, before any record is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Priced {
    pub tokens: Tokens,
    pub cost_micros: Micros,
    /// What the client saw (0 if no response started).
    pub status: u16,
    pub ended: Ended,
    /// The model had no price and the unknown-model policy applied.
    pub unknown_model: bool,
}

impl Priced {
    pub fn estimated(&self) -> bool {
        self.ended == Ended::Estimated
    }

    /// The usage record of this charge (what enforcement posts to the counter).
    pub fn record(&self, exchange: &Exchange<'_>, finished_at_ms: i64) -> UsageRecord {
        UsageRecord {
            id: exchange.record_id(),
            principal: exchange.principal.clone(),
            dialect: exchange.dialect.as_str().to_owned(),
            requested_model: exchange.requested_model.to_owned(),
            routed_model: exchange.routed_model.to_owned(),
            tokens: self.tokens,
            cost_micros: self.cost_micros,
            status: self.status,
            estimated: self.estimated(),
            started_at_ms: exchange.started_at_ms,
            finished_at_ms,
            p99_reservations: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Settlement {
    pub record: UsageRecord,
    pub ended: Ended,
    /// The model had no price and the unknown-model policy applied.
    pub unknown_model: bool,
}

/// Prices the exchange. `status` is what the client saw (0 if no response started).
pub fn price(prices: &PriceTable, exchange: &Exchange<'_>, scan: &ScanOutcome, status: u16) -> Priced {
    let success_or_none = status == 0 || (200..300).contains(&status);
    let (tokens, ended) = match scan.tokens {
        Some(tokens) => (tokens, Ended::Metered),
        None if success_or_none => (
            prices.estimate_config().estimate_from_stream(exchange.prompt_bytes, scan.streamed_content_bytes),
            Ended::Estimated,
        ),
        None => (Tokens::default(), Ended::UpstreamError),
    };
    // The routed model's price; else the reported model's, if the table knows it; else the
    // unknown-model policy's, for the routed model.
    let routed = exchange.routed_price;
    let (price, unknown_model) = match scan.model.as_deref().filter(|_| !routed.known).and_then(|reported| prices.lookup(reported)) {
        Some(reported) => (reported, false),
        None => (&routed.price, !routed.known),
    };
    let cost_micros = price.cost_micros(&tokens).max(0);
    Priced { tokens, cost_micros, status, ended, unknown_model }
}

/// [`price`], and the usage record.
pub fn settle(prices: &PriceTable, exchange: &Exchange<'_>, scan: &ScanOutcome, status: u16, finished_at_ms: i64) -> Settlement {
    let priced = price(prices, exchange, scan, status);
    Settlement { record: priced.record(exchange, finished_at_ms), ended: priced.ended, unknown_model: priced.unknown_model }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;
    use tollgate_core::pricing::PricingConfig;

    fn table() -> PriceTable {
        let config: PricingConfig = serde_json::from_value(serde_json::json!({
            "bundled": false,
            "models": {"m": {"input_per_mtok": "1", "output_per_mtok": "2"}}
        }))
        .unwrap();
        PriceTable::from_config(&config).unwrap()
    }

    fn principal() -> &'static Principal {
        static PRINCIPAL: std::sync::OnceLock<Principal> = std::sync::OnceLock::new();
        PRINCIPAL.get_or_init(|| Principal { team: Some("t".into()), ..Default::default() })
    }

    /// The exchange of a request routed to `model`, at the price admission found in [`table`]
    /// (the default unknown-model policy, `zero`, for a model it does not know).
    fn exchange(model: &str) -> Exchange<'_> {
        let price = Box::leak(Box::new(table().price(model).unwrap()));
        Exchange {
            gateway_id: "gw",
            request_id: "r1",
            principal: principal(),
            dialect: Dialect::OpenAi,
            requested_model: "tier:x",
            routed_model: model,
            routed_price: price,
            prompt_bytes: 4000,
            started_at_ms: 10,
        }
    }

    #[test]
    fn reported_usage_is_priced_exactly() {
        let scan = ScanOutcome { tokens: Some(Tokens { input: 1_000_000, output: 500_000, ..Default::default() }), ..Default::default() };
        let s = settle(&table(), &exchange("m"), &scan, 200, 20);
        assert_eq!((s.ended, s.record.cost_micros, s.record.estimated, s.unknown_model), (Ended::Metered, 2_000_000, false, false));
        assert_eq!((s.record.id.as_str(), s.record.requested_model.as_str(), s.record.status, s.record.finished_at_ms), ("gw:r1", "tier:x", 200, 20));
    }

    #[test]
    fn a_cut_stream_is_charged_from_an_estimate() {
        let scan = ScanOutcome { streamed_content_bytes: 400, ..Default::default() };
        for status in [200, 0] {
            let s = settle(&table(), &exchange("m"), &scan, status, 20);
            assert_eq!(s.ended, Ended::Estimated);
            assert!(s.record.estimated);
            assert_eq!((s.record.tokens.input, s.record.tokens.output), (1000, 100), "4 bytes per token by default");
            assert_eq!(s.record.cost_micros, 1000 + 200);
        }
    }

    #[test]
    fn an_upstream_error_without_usage_costs_nothing() {
        let s = settle(&table(), &exchange("m"), &ScanOutcome::default(), 503, 20);
        assert_eq!((s.ended, s.record.cost_micros, s.record.estimated), (Ended::UpstreamError, 0, false));
    }

    #[test]
    fn the_reported_model_prices_an_unknown_routed_model() {
        let scan = ScanOutcome { tokens: Some(Tokens { output: 1_000_000, ..Default::default() }), model: Some("m".into()), ..Default::default() };
        let s = settle(&table(), &exchange("my-azure-deployment"), &scan, 200, 20);
        assert_eq!((s.record.cost_micros, s.unknown_model), (2_000_000, false));
        assert_eq!(s.record.routed_model, "my-azure-deployment");
        let unknown = settle(&table(), &exchange("nope"), &ScanOutcome { model: None, ..scan }, 200, 20);
        assert_eq!((unknown.record.cost_micros, unknown.unknown_model), (0, true));
    }
}
