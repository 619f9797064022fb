//! The `enforcement` section of the filter config: where the counter service is, how big a lease
//! slice to hold, how usage is batched, and what to do when the counter cannot be reached.
//!
//! Two phases, like the rest of the config: [`EnforcementConfig`] is the raw serde input (unknown
//! fields refused, every field but the cluster and the token defaulted), [`EnforcementConfig::compile`]
//! validates it into [`EnforcementSettings`], the form the hot path reads. Validation errors name
//! the field (`enforcement.lease_slice_usd: ...`) and say what would be accepted.

use crate::money::{parse_decimal_scaled, Micros};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::fmt;

/// What to do with a request whose budgets cannot be checked because the counter service is
/// unreachable (timeout, connection refused, 5xx, garbage answer) and no lease in hand covers it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureMode {
    /// Serve and meter anyway; usage records wait in the queue until the counter is back.
    FailOpen,
    /// Serve what the leases in hand cover, then answer 503 with an error naming the problem.
    #[default]
    FailClosed,
}

impl FailureMode {
    pub fn as_str(self) -> &'static str {
        match self {
            FailureMode::FailOpen => "fail_open",
            FailureMode::FailClosed => "fail_closed",
        }
    }
}

/// Raw `enforcement` section, as written in the filter's JSON config.
#[derive(Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnforcementConfig {
    /// Envoy cluster that reaches `tollgate-counter` (required).
    pub counter_cluster: String,
    /// `:authority` sent to the counter; defaults to the cluster name.
    #[serde(default)]
    pub counter_authority: Option<String>,
    /// Bearer token for `/v1/leases` and `/v1/usage` (required). Never logged.
    pub gateway_token: String,
    /// Free headroom this gateway tries to hold on each budget it uses, in dollars (decimal text or
    /// number). Bigger slices mean fewer lease calls; smaller ones leave more headroom to other
    /// gateways near the limit. Default `"1"`.
    #[serde(default)]
    pub lease_slice_usd: Option<serde_json::Value>,
    /// Top the slice up in the background once free headroom falls below this percentage of
    /// `lease_slice_usd`. Default 50.
    #[serde(default = "defaults::refill_watermark_pct")]
    pub refill_watermark_pct: u32,
    /// Renew a lease in the background once it has less than this long to live. Default 10000.
    #[serde(default = "defaults::renew_before_expiry_ms")]
    pub renew_before_expiry_ms: u64,
    /// Timeout of every call to the counter service. Default 1000.
    #[serde(default = "defaults::call_timeout_ms")]
    pub call_timeout_ms: u64,
    /// Usage records are posted at least this often while any are queued. Default 1000.
    #[serde(default = "defaults::flush_interval_ms")]
    pub flush_interval_ms: u64,
    /// Records per `POST /v1/usage`; a full batch is posted without waiting for the interval.
    /// Default 500.
    #[serde(default = "defaults::batch_size")]
    pub batch_size: u32,
    /// Most records waiting in the queue; beyond it new records are dropped, counted in
    /// `tollgate_usage_dropped_total` and logged. Default 100000.
    #[serde(default = "defaults::queue_bound")]
    pub queue_bound: u32,
    /// `fail_open` or `fail_closed` (default).
    #[serde(default)]
    pub failure_mode: FailureMode,
    /// After a failed call (or a grant that could not be filled), decide locally for this long
    /// before asking the counter again. Default 1000.
    #[serde(default = "defaults::recheck_after_ms")]
    pub recheck_after_ms: u64,
    /// How long "this scope has no budget" is remembered before asking again. Default 60000.
    #[serde(default = "defaults::unbudgeted_scope_ttl_ms")]
    pub unbudgeted_scope_ttl_ms: u64,
    /// Output tokens to reserve for a request that sets no max_tokens, instead of the model's
    /// maximum from the price table. Unset by default (the model's maximum: a true bound); set it
    /// to reserve less, accepting that such requests may overrun their reservation.
    #[serde(default)]
    pub default_max_output_tokens: Option<u64>,
    /// The same per model (exact model names, as routed); wins over `default_max_output_tokens`.
    #[serde(default)]
    pub max_output_tokens_by_model: BTreeMap<String, u64>,
}

impl fmt::Debug for EnforcementConfig {
    /// Redacts the gateway token: configs get logged, tokens must not.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EnforcementConfig")
            .field("counter_cluster", &self.counter_cluster)
            .field("counter_authority", &self.counter_authority)
            .field("gateway_token", &"<redacted>")
            .field("lease_slice_usd", &self.lease_slice_usd)
            .field("failure_mode", &self.failure_mode)
            .finish_non_exhaustive()
    }
}

mod defaults {
    pub fn refill_watermark_pct() -> u32 {
        50
    }
    pub fn renew_before_expiry_ms() -> u64 {
        10_000
    }
    pub fn call_timeout_ms() -> u64 {
        1_000
    }
    pub fn flush_interval_ms() -> u64 {
        1_000
    }
    pub fn batch_size() -> u32 {
        500
    }
    pub fn queue_bound() -> u32 {
        100_000
    }
    pub fn recheck_after_ms() -> u64 {
        1_000
    }
    pub fn unbudgeted_scope_ttl_ms() -> u64 {
        60_000
    }
}

/// A validation failure: which field of `enforcement`, and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnforcementConfigError {
    /// The field's path in the filter config, e.g. `enforcement.batch_size` (`enforcement` for
    /// the section as a whole, such as an unknown field, which the problem then names).
    pub path: String,
    pub problem: String,
}

impl fmt::Display for EnforcementConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.problem)
    }
}

impl std::error::Error for EnforcementConfigError {}

impl EnforcementConfigError {
    fn new(field: &str, problem: impl Into<String>) -> EnforcementConfigError {
        EnforcementConfigError { path: format!("enforcement.{field}"), problem: problem.into() }
    }

    /// The field's path in the filter config (`enforcement` for the section as a whole).
    pub fn path(&self) -> String {
        self.path.clone()
    }
}

/// The validated settings the filter runs on.
#[derive(Clone, PartialEq, Eq)]
pub struct EnforcementSettings {
    pub counter_cluster: String,
    pub counter_authority: String,
    gateway_token: String,
    pub lease_slice_micros: Micros,
    pub refill_watermark_micros: Micros,
    pub renew_before_expiry_ms: i64,
    pub call_timeout_ms: u64,
    pub flush_interval_ms: u64,
    pub batch_size: usize,
    pub queue_bound: usize,
    pub failure_mode: FailureMode,
    pub recheck_after_ms: i64,
    pub unbudgeted_scope_ttl_ms: i64,
    pub default_max_output_tokens: Option<u64>,
    pub max_output_tokens_by_model: BTreeMap<String, u64>,
}

impl fmt::Debug for EnforcementSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EnforcementSettings")
            .field("counter_cluster", &self.counter_cluster)
            .field("counter_authority", &self.counter_authority)
            .field("gateway_token", &"<redacted>")
            .field("lease_slice_micros", &self.lease_slice_micros)
            .field("refill_watermark_micros", &self.refill_watermark_micros)
            .field("renew_before_expiry_ms", &self.renew_before_expiry_ms)
            .field("call_timeout_ms", &self.call_timeout_ms)
            .field("flush_interval_ms", &self.flush_interval_ms)
            .field("batch_size", &self.batch_size)
            .field("queue_bound", &self.queue_bound)
            .field("failure_mode", &self.failure_mode)
            .finish_non_exhaustive()
    }
}

impl EnforcementSettings {
    /// The `Authorization` header value for counter calls. Kept behind a method so the token
    /// never shows up in a `Debug` print of the settings.
    pub fn authorization(&self) -> String {
        format!("Bearer {}", self.gateway_token)
    }

    /// The operator's output-token assumption for a request that names no maximum, if any.
    pub fn output_tokens_override(&self, model: &str) -> Option<u64> {
        self.max_output_tokens_by_model.get(model).copied().or(self.default_max_output_tokens)
    }

    /// The root tick period: background top-ups leave on the tick, so it bounds how long a slice
    /// under its watermark waits for its top-up (a tick costs a few shared-data reads); usage is
    /// flushed on the first tick after `flush_interval_ms`.
    pub fn tick_ms(&self) -> u64 {
        self.flush_interval_ms.min(TICK_MS)
    }
}

const MAX_MS: u64 = 24 * 3600 * 1000;

/// The longest root tick.
pub const TICK_MS: u64 = 20;

impl EnforcementConfig {
    /// Parses the section on its own (the filter config embeds it; tests use this directly).
    pub fn from_json(json: &str) -> Result<EnforcementSettings, EnforcementConfigError> {
        let value: serde_json::Value = serde_json::from_str(json)
            .map_err(|e| EnforcementConfigError { path: "enforcement".to_owned(), problem: e.to_string() })?;
        EnforcementConfig::compile_value(value)
    }

    /// Parses the section from the filter config's JSON value.
    pub fn compile_value(value: serde_json::Value) -> Result<EnforcementSettings, EnforcementConfigError> {
        // A member of the wrong type or value is named (`enforcement.failure_mode: …`), as in
        // every other section.
        let raw: EnforcementConfig = crate::section::parse_at(value, "enforcement")
            .map_err(|e| EnforcementConfigError { path: e.path, problem: e.problem })?;
        raw.compile()
    }

    /// Validates and derives the working settings.
    pub fn compile(self) -> Result<EnforcementSettings, EnforcementConfigError> {
        let err = |field: &str, problem: &str| Err(EnforcementConfigError::new(field, problem));
        if self.counter_cluster.trim().is_empty() {
            return err("counter_cluster", "must name the Envoy cluster that reaches tollgate-counter");
        }
        if self.gateway_token.trim().is_empty() {
            return err("gateway_token", "must be the counter's gateway bearer token (it is never logged)");
        }
        if self.gateway_token.bytes().any(|b| b.is_ascii_control() || b == b' ') {
            return err("gateway_token", "must not contain spaces or control characters");
        }
        let lease_slice_micros = match &self.lease_slice_usd {
            None => 1_000_000,
            Some(value) => {
                let text = match value {
                    serde_json::Value::String(s) => s.clone(),
                    serde_json::Value::Number(n) => n.to_string(),
                    _ => return err("lease_slice_usd", "must be a dollar amount such as \"2.50\""),
                };
                match parse_decimal_scaled(&text, 6).and_then(|m| i64::try_from(m).ok()) {
                    Some(m) if m > 0 => m,
                    _ => return err("lease_slice_usd", "must be a positive dollar amount such as \"2.50\""),
                }
            }
        };
        if self.refill_watermark_pct == 0 || self.refill_watermark_pct > 100 {
            return err("refill_watermark_pct", "must be between 1 and 100 (percent of lease_slice_usd)");
        }
        for (field, value, min) in [
            ("call_timeout_ms", self.call_timeout_ms, 1),
            ("flush_interval_ms", self.flush_interval_ms, 1),
            ("renew_before_expiry_ms", self.renew_before_expiry_ms, 0),
            ("recheck_after_ms", self.recheck_after_ms, 0),
            ("unbudgeted_scope_ttl_ms", self.unbudgeted_scope_ttl_ms, 0),
        ] {
            if value < min || value > MAX_MS {
                return Err(EnforcementConfigError::new(field, format!("must be between {min} and {MAX_MS} milliseconds")));
            }
        }
        if self.batch_size == 0 || self.batch_size > 10_000 {
            return err("batch_size", "must be between 1 and 10000 records");
        }
        if self.queue_bound < self.batch_size {
            return err("queue_bound", "must be at least batch_size");
        }
        if self.default_max_output_tokens == Some(0) {
            return err("default_max_output_tokens", "must be at least 1 (it sizes the reservation of requests without max_tokens)");
        }
        if let Some((model, _)) = self.max_output_tokens_by_model.iter().find(|(_, v)| **v == 0) {
            return Err(EnforcementConfigError::new("max_output_tokens_by_model", format!("model `{model}`: must be at least 1")));
        }
        let refill_watermark_micros =
            i64::try_from(i128::from(lease_slice_micros) * i128::from(self.refill_watermark_pct) / 100).unwrap_or(i64::MAX);
        let counter_authority = self.counter_authority.filter(|a| !a.is_empty()).unwrap_or_else(|| self.counter_cluster.clone());
        let ms = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        Ok(EnforcementSettings {
            counter_cluster: self.counter_cluster,
            counter_authority,
            gateway_token: self.gateway_token,
            lease_slice_micros,
            refill_watermark_micros,
            renew_before_expiry_ms: ms(self.renew_before_expiry_ms),
            call_timeout_ms: self.call_timeout_ms,
            flush_interval_ms: self.flush_interval_ms,
            batch_size: self.batch_size as usize,
            queue_bound: self.queue_bound as usize,
            failure_mode: self.failure_mode,
            recheck_after_ms: ms(self.recheck_after_ms),
            unbudgeted_scope_ttl_ms: ms(self.unbudgeted_scope_ttl_ms),
            default_max_output_tokens: self.default_max_output_tokens,
            max_output_tokens_by_model: self.max_output_tokens_by_model,
        })
    }
}

#[cfg(test)]
pub(crate) fn test_settings() -> EnforcementSettings {
    EnforcementConfig::from_json(r#"{"counter_cluster":"counter","gateway_token":"t0k3n","lease_slice_usd":"1"}"#)
        .unwrap_or_else(|e| panic!("{e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minimal_section_gets_documented_defaults() {
        let s = EnforcementConfig::from_json(r#"{"counter_cluster":"tollgate_counter","gateway_token":"secret"}"#).unwrap();
        assert_eq!(s.counter_authority, "tollgate_counter");
        assert_eq!(s.lease_slice_micros, 1_000_000);
        assert_eq!(s.refill_watermark_micros, 500_000);
        assert_eq!(s.renew_before_expiry_ms, 10_000);
        assert_eq!(s.call_timeout_ms, 1_000);
        assert_eq!(s.flush_interval_ms, 1_000);
        assert_eq!(s.batch_size, 500);
        assert_eq!(s.queue_bound, 100_000);
        assert_eq!(s.failure_mode, FailureMode::FailClosed);
        assert_eq!(s.output_tokens_override("any"), None);
        assert_eq!(s.authorization(), "Bearer secret");
    }

    #[test]
    fn every_field_is_read() {
        let s = EnforcementConfig::from_json(
            r#"{"counter_cluster":"c","counter_authority":"counter.internal","gateway_token":"t",
                "lease_slice_usd":0.25,"refill_watermark_pct":20,"renew_before_expiry_ms":3000,
                "call_timeout_ms":250,"flush_interval_ms":200,"batch_size":50,"queue_bound":1000,
                "failure_mode":"fail_open","recheck_after_ms":500,"unbudgeted_scope_ttl_ms":9000,
                "default_max_output_tokens":1024,"max_output_tokens_by_model":{"gpt-4o":16384}}"#,
        )
        .unwrap();
        assert_eq!(s.counter_authority, "counter.internal");
        assert_eq!(s.lease_slice_micros, 250_000);
        assert_eq!(s.refill_watermark_micros, 50_000);
        assert_eq!(s.failure_mode, FailureMode::FailOpen);
        assert_eq!((s.batch_size, s.queue_bound), (50, 1000));
        assert_eq!(s.output_tokens_override("gpt-4o"), Some(16_384));
        assert_eq!(s.output_tokens_override("gpt-4o-mini"), Some(1_024));
        assert_eq!(s.tick_ms(), 20);
    }

    #[test]
    fn the_token_never_appears_in_debug_output() {
        let raw: EnforcementConfig =
            serde_json::from_str(r#"{"counter_cluster":"c","gateway_token":"hunter2-very-secret"}"#).unwrap();
        assert!(!format!("{raw:?}").contains("hunter2"));
        let s = raw.compile().unwrap();
        assert!(!format!("{s:?}").contains("hunter2"));
    }

    #[test]
    fn bad_values_are_refused_naming_the_field() {
        let check = |json: &str, field: &str| {
            let e = EnforcementConfig::from_json(json).err().unwrap_or_else(|| panic!("accepted {json}"));
            assert!(e.to_string().starts_with(&format!("enforcement.{field}:")), "{json} -> {e}");
        };
        check(r#"{"counter_cluster":"","gateway_token":"t"}"#, "counter_cluster");
        check(r#"{"counter_cluster":"c","gateway_token":""}"#, "gateway_token");
        check(r#"{"counter_cluster":"c","gateway_token":"a b"}"#, "gateway_token");
        check(r#"{"counter_cluster":"c","gateway_token":"t","lease_slice_usd":"-1"}"#, "lease_slice_usd");
        check(r#"{"counter_cluster":"c","gateway_token":"t","lease_slice_usd":"0"}"#, "lease_slice_usd");
        check(r#"{"counter_cluster":"c","gateway_token":"t","lease_slice_usd":true}"#, "lease_slice_usd");
        check(r#"{"counter_cluster":"c","gateway_token":"t","refill_watermark_pct":0}"#, "refill_watermark_pct");
        check(r#"{"counter_cluster":"c","gateway_token":"t","call_timeout_ms":0}"#, "call_timeout_ms");
        check(r#"{"counter_cluster":"c","gateway_token":"t","batch_size":0}"#, "batch_size");
        check(r#"{"counter_cluster":"c","gateway_token":"t","batch_size":10,"queue_bound":5}"#, "queue_bound");
        check(r#"{"counter_cluster":"c","gateway_token":"t","max_output_tokens_by_model":{"m":0}}"#, "max_output_tokens_by_model");
        check(r#"{"counter_cluster":"c","gateway_token":"t","failure_mode":"fail_sideways"}"#, "failure_mode");
        check(r#"{"counter_cluster":"c","gateway_token":"t","batch_size":"ten"}"#, "batch_size");
        check(r#"{"counter_cluster":"c","gateway_token":"t","max_output_tokens_by_model":{"m":"x"}}"#, "max_output_tokens_by_model");
        // The section as a whole: the problem names the field.
        for (json, names) in [
            (r#"{"counter_cluster":"c","gateway_token":"t","bogus":1}"#, "unknown field `bogus`"),
            (r#"{"counter_cluster":"c"}"#, "missing field `gateway_token`"),
        ] {
            let e = EnforcementConfig::from_json(json).err().unwrap_or_else(|| panic!("accepted {json}"));
            assert!(e.to_string().starts_with(&format!("enforcement: {names}")), "{json} -> {e}");
        }
    }
}
