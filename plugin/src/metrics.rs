//! The filter's Envoy counters. Envoy prefixes them `wasmcustom.`, so `/stats` shows e.g.
//! `wasmcustom.tollgate_requests_openai_metered` (Prometheus: `envoy_wasmcustom_tollgate_…`).
//!
//! Names are flat (dialect and outcome in the name) so they need no tag-extraction config.
//! Every metric is defined once per VM in `on_configure`; a metric the host refused to define is
//! skipped, never fatal.
//!
//! Counts are added up in the VM and handed to the host on the root's tick, every
//! [`FLUSH_INTERVAL_MS`], not per request: a request touches eight or more counters, and each
//! host call costs about as much as scanning a kilobyte, so per-request increments were a
//! measurable share of the filter's cost (BENCHMARKS.md). Envoy's stats therefore trail the
//! traffic by at most one interval (plus the tick's own delay on a busy worker); counts pending
//! when the VM shuts down are flushed in its `on_done`.

use crate::host;
use std::cell::Cell;
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

/// How often pending counts reach Envoy (the root context's tick).
pub const FLUSH_INTERVAL_MS: u64 = 100;

/// One counter: its host id and the count not yet handed to the host (see the module doc).
/// Enforcement's counters are these too.
#[derive(Debug)]
pub struct Counter {
    id: u32,
    pending: Cell<u64>,
}

impl Counter {
    /// Defines the counter in the host; `None` if the host refused (the counter is then skipped).
    pub fn define(name: &str) -> Option<Counter> {
        host::define_counter(name).ok().map(|id| Counter { id, pending: Cell::new(0) })
    }

    /// Adds `by` to the count the next flush hands over.
    pub fn add(counter: &Option<Counter>, by: u64) {
        if let Some(c) = counter {
            c.pending.set(c.pending.get().saturating_add(by));
        }
    }

    /// Hands the pending count to the host, if any.
    pub fn flush(&self) {
        let by = self.pending.replace(0);
        if by > 0 {
            host::increment(self.id, by);
        }
    }
}

/// The filter's counters (`None` when the host refused to define one).
#[derive(Debug, Default)]
pub struct Metrics {
    passthrough: Option<Counter>,
    requests: [[Option<Counter>; 7]; 4],
    tokens: [Option<Counter>; 5],
    cost_micros: Option<Counter>,
    unknown_model: Option<Counter>,
    routed: Option<Counter>,
    include_usage_injected: Option<Counter>,
    host_errors: Option<Counter>,
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
        let def = Counter::define;
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

    fn bump(counter: &Option<Counter>, by: u64) {
        Counter::add(counter, by);
    }

    fn all(&self) -> impl Iterator<Item = &Counter> {
        let singles = [&self.passthrough, &self.cost_micros, &self.unknown_model, &self.routed, &self.include_usage_injected, &self.host_errors];
        self.requests.iter().flatten().chain(self.tokens.iter()).chain(singles).flatten()
    }

    /// Hands every pending count to the host (one call per counter that changed).
    pub fn flush(&self) {
        for c in self.all() {
            c.flush();
        }
    }

    pub fn passthrough(&self) {
        Self::bump(&self.passthrough, 1);
    }

    pub fn outcome(&self, dialect: Dialect, outcome: Outcome) {
        if let Some(counter) = self.requests.get(dialect_index(dialect)).and_then(|row| row.get(outcome.index())) {
            Self::bump(counter, 1);
        }
    }

    pub fn usage(&self, tokens: &Tokens, cost_micros: i64) {
        let values = [tokens.input, tokens.output, tokens.cache_read, tokens.cache_write, tokens.reasoning];
        for (counter, value) in self.tokens.iter().zip(values) {
            Self::bump(counter, value);
        }
        Self::bump(&self.cost_micros, u64::try_from(cost_micros).unwrap_or(0));
    }

    pub fn unknown_model(&self) {
        Self::bump(&self.unknown_model, 1);
    }

    pub fn routed(&self) {
        Self::bump(&self.routed, 1);
    }

    pub fn include_usage_injected(&self) {
        Self::bump(&self.include_usage_injected, 1);
    }

    pub fn host_error(&self) {
        Self::bump(&self.host_errors, 1);
    }
}
