//! The filter's Envoy counters. Envoy prefixes them `wasmcustom.`, so `/stats` shows e.g.
//! `wasmcustom.tollgate_requests_openai_metered` (Prometheus: `envoy_wasmcustom_tollgate_…`).
//!
//! Names are flat (dialect and outcome in the name) so they need no tag-extraction config.
//! Every metric is defined once per VM in `on_configure`; a metric the host refused to define is
//! skipped, never fatal.

use crate::host;
use tollgate_core::dialect::Dialect;
use tollgate_core::protocol::Tokens;

/// How a recognised request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Forwarded; the upstream reported usage.
    Metered,
    /// Forwarded; charged from an estimate (stream cut, no usage in the response).
    Estimated,
    /// Forwarded; the upstream answered with an error and no usage.
    UpstreamError,
    /// 400 from the filter (malformed body, bad field, unresolved alias, unpriced model under `deny`).
    Invalid,
    /// 403 from a routing rule.
    Denied,
    /// 413: body over `max_request_body_bytes`.
    TooLarge,
    /// Refused by enforcement (429 / 503).
    Refused,
}

impl Outcome {
    pub const ALL: [Outcome; 7] =
        [Outcome::Metered, Outcome::Estimated, Outcome::UpstreamError, Outcome::Invalid, Outcome::Denied, Outcome::TooLarge, Outcome::Refused];

    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Metered => "metered",
            Outcome::Estimated => "estimated",
            Outcome::UpstreamError => "upstream_error",
            Outcome::Invalid => "invalid",
            Outcome::Denied => "denied",
            Outcome::TooLarge => "too_large",
            Outcome::Refused => "refused",
        }
    }

    fn index(self) -> usize {
        Outcome::ALL.iter().position(|o| *o == self).unwrap_or(0)
    }
}

fn dialect_index(d: Dialect) -> usize {
    Dialect::ALL.iter().position(|x| *x == d).unwrap_or(0)
}

/// Counter ids (`None` when the host refused to define one).
#[derive(Debug, Default)]
pub struct Metrics {
    passthrough: Option<u32>,
    requests: [[Option<u32>; 7]; 4],
    tokens: [Option<u32>; 5],
    cost_micros: Option<u32>,
    unknown_model: Option<u32>,
    routed: Option<u32>,
    include_usage_injected: Option<u32>,
    host_errors: Option<u32>,
}

/// Every counter name, for docs and tests.
pub fn names() -> Vec<String> {
    let mut names = vec!["tollgate_passthrough".to_owned()];
    for d in Dialect::ALL {
        for o in Outcome::ALL {
            names.push(format!("tollgate_requests_{}_{}", d.as_str(), o.as_str()));
        }
    }
    for kind in TOKEN_KINDS {
        names.push(format!("tollgate_tokens_{kind}"));
    }
    names.extend(
        ["tollgate_cost_micros", "tollgate_unknown_model", "tollgate_routed", "tollgate_include_usage_injected", "tollgate_host_errors"]
            .map(str::to_owned),
    );
    names
}

const TOKEN_KINDS: [&str; 5] = ["input", "output", "cache_read", "cache_write", "reasoning"];

impl Metrics {
    pub fn define() -> Metrics {
        let def = |name: &str| host::define_counter(name).ok();
        let mut m = Metrics { passthrough: def("tollgate_passthrough"), ..Default::default() };
        for d in Dialect::ALL {
            for o in Outcome::ALL {
                if let Some(slot) = m.requests.get_mut(dialect_index(d)).and_then(|row| row.get_mut(o.index())) {
                    *slot = def(&format!("tollgate_requests_{}_{}", d.as_str(), o.as_str()));
                }
            }
        }
        for (slot, kind) in m.tokens.iter_mut().zip(TOKEN_KINDS) {
            *slot = def(&format!("tollgate_tokens_{kind}"));
        }
        m.cost_micros = def("tollgate_cost_micros");
        m.unknown_model = def("tollgate_unknown_model");
        m.routed = def("tollgate_routed");
        m.include_usage_injected = def("tollgate_include_usage_injected");
        m.host_errors = def("tollgate_host_errors");
        m
    }

    fn bump(id: Option<u32>, by: u64) {
        if let Some(id) = id {
            host::increment(id, by);
        }
    }

    pub fn passthrough(&self) {
        Self::bump(self.passthrough, 1);
    }

    pub fn outcome(&self, dialect: Dialect, outcome: Outcome) {
        let id = self.requests.get(dialect_index(dialect)).and_then(|row| row.get(outcome.index())).copied().flatten();
        Self::bump(id, 1);
    }

    pub fn usage(&self, tokens: &Tokens, cost_micros: i64) {
        let values = [tokens.input, tokens.output, tokens.cache_read, tokens.cache_write, tokens.reasoning];
        for (id, value) in self.tokens.iter().zip(values) {
            Self::bump(*id, value);
        }
        Self::bump(self.cost_micros, u64::try_from(cost_micros).unwrap_or(0));
    }

    pub fn unknown_model(&self) {
        Self::bump(self.unknown_model, 1);
    }

    pub fn routed(&self) {
        Self::bump(self.routed, 1);
    }

    pub fn include_usage_injected(&self) {
        Self::bump(self.include_usage_injected, 1);
    }

    pub fn host_error(&self) {
        Self::bump(self.host_errors, 1);
    }
}
