//! The filter's configuration, in two phases (like ripgrep's flags): the raw JSON Envoy hands the
//! plugin (`plugin_config.configuration`), then a validated, compiled [`CompiledConfig`] built once
//! per VM in `on_configure` and shared by every request.
//!
//! Unknown fields are refused everywhere, so a typo is an error rather than a silent default.
//! Every error names the field path and the problem — `tollgate config: routing.rules[2].match.model:
//! …` — and the plugin logs it and returns false, so Envoy refuses the plugin instead of running
//! with a half-understood policy.
//!
//! Sections are parsed one at a time from a `serde_json::Value` so each error can be prefixed with
//! its path (serde alone reports only line and column).

use crate::attribution::{Attribution, AttributionConfig};
use crate::dialect::{Dialect, Mounts};
use crate::pricing::{PriceTable, PricingConfig};
use crate::routing::{RoutingConfig, RoutingTable};
pub use crate::section::{parse_at, ConfigError};
use serde::Deserialize;
use std::collections::BTreeMap;

/// Default for `max_request_body_bytes`: 1 MiB.
pub const DEFAULT_MAX_REQUEST_BODY_BYTES: u64 = 1 << 20;
/// Largest `max_request_body_bytes` accepted (the body is buffered in the wasm VM).
pub const MAX_MAX_REQUEST_BODY_BYTES: u64 = 64 << 20;

/// The configuration as written. Sections stay `Value`s here so each is parsed with its path.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FilterConfig {
    /// Names this gateway in usage records and lease requests. Default `tollgate`.
    #[serde(default)]
    pub gateway_id: Option<String>,
    /// `"node_id"`: append a digest of the proxy's node id (`.` + 8 hex digits) to `gateway_id`,
    /// so every replica that a mesh hands the same configuration keeps its own leases.
    #[serde(default)]
    pub gateway_id_suffix: Option<GatewayIdSuffix>,
    /// Per dialect: `{"prefixes": ["", "/llm/openai"]}` or `{"enabled": false}`.
    #[serde(default)]
    pub dialects: Option<serde_json::Value>,
    #[serde(default)]
    pub max_request_body_bytes: Option<u64>,
    #[serde(default)]
    pub attribution: Option<serde_json::Value>,
    #[serde(default)]
    pub routing: Option<serde_json::Value>,
    #[serde(default)]
    pub pricing: Option<serde_json::Value>,
    /// Budgets and leases (issue 4). Absent = metering only.
    ///
    /// Owned by the enforcement work: kept as raw JSON here (only checked to be an object) until
    /// `core::enforce` defines its typed, `deny_unknown_fields` settings and compiles them in
    /// [`FilterConfig::from_json`] into [`CompiledConfig::enforcement`].
    #[serde(default)]
    pub enforcement: Option<serde_json::Value>,
    /// What the filter publishes for the access log. Default `summary`.
    #[serde(default)]
    pub access_log: Option<AccessLogMode>,
    /// The response-id memory (`core::context_memory`): `{enabled, ttl_s, max_entries}`. Used only
    /// with `enforcement` (it tightens reservations). Default on.
    #[serde(default)]
    pub context_memory: Option<serde_json::Value>,
    /// Agent guards (issue 12, `core::guard`). Absent = none (no fingerprint is computed).
    #[serde(default)]
    pub guards: Option<serde_json::Value>,
    /// The budget banner on a chat UI's pages (issue 13, `core::banner`). Absent = none.
    #[serde(default)]
    pub banner: Option<serde_json::Value>,
}

/// What the filter publishes as filter state for the access log (README.md, "Access log").
///
/// Each published value is one host call that crosses the wasm boundary, so the default is one
/// compact `wasm.tollgate.summary` value per request; `fields` publishes each value on its own
/// (about twenty calls per request) for formats that pick single fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AccessLogMode {
    /// One `wasm.tollgate.summary` value per request: `key=value` pairs separated by spaces.
    #[default]
    Summary,
    /// Every value as its own `wasm.tollgate.<name>`, set as soon as it is known.
    Fields,
    /// Nothing (stats only).
    Off,
}

/// One dialect's mount, as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct DialectMountConfig {
    #[serde(default = "enabled")]
    enabled: bool,
    #[serde(default)]
    prefixes: Option<Vec<String>>,
}

fn enabled() -> bool {
    true
}

/// Where a per-proxy part of the gateway id comes from (`gateway_id_suffix`).
///
/// The counter keys leases by gateway id, and the overspend bound needs one id per proxy process
/// (docs/enforcement.md). A mesh control plane (Istio's WasmPlugin or EnvoyFilter, Envoy Gateway's
/// EnvoyExtensionPolicy) hands every replica the same configuration; the node id is what tells
/// the replicas apart (Istio: `sidecar~<pod ip>~<pod>.<namespace>~…`; Envoy Gateway: the pod name).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GatewayIdSuffix {
    /// The host's `node.id` property.
    NodeId,
}

/// Longest `gateway_id` when `gateway_id_suffix` adds its 9 characters.
pub const MAX_SUFFIXED_GATEWAY_ID: usize = 64 - 9;

/// The validated configuration every request uses.
#[derive(Debug, Clone)]
pub struct CompiledConfig {
    /// With `gateway_id_suffix`, the configured id until [`CompiledConfig::identify_proxy`] adds
    /// the proxy's part.
    pub gateway_id: String,
    /// `Some` until the adapter has called [`CompiledConfig::identify_proxy`].
    pub gateway_id_suffix: Option<GatewayIdSuffix>,
    pub mounts: Mounts,
    pub max_request_body_bytes: u64,
    pub attribution: Attribution,
    pub routing: RoutingTable,
    pub prices: PriceTable,
    /// Budgets and leases (`core::enforce`); `None` = metering only.
    pub enforcement: Option<crate::enforce::EnforcementSettings>,
    pub access_log: AccessLogMode,
    /// The response-id memory's policy; `None` when disabled.
    pub context_memory: Option<crate::context_memory::ContextMemory>,
    /// Agent guards (`core::guard`); `None` = none.
    pub guards: Option<crate::guard::Guards>,
    /// The budget banner (`core::banner`); `None` = none.
    pub banner: Option<crate::banner::Banner>,
}

impl FilterConfig {
    /// Parses and validates the plugin configuration. An empty document means all defaults.
    pub fn from_json(bytes: &[u8]) -> Result<CompiledConfig, ConfigError> {
        let text = std::str::from_utf8(bytes).map_err(|_| ConfigError::new("", "the configuration is not UTF-8"))?;
        let raw: FilterConfig = if text.trim().is_empty() {
            FilterConfig::default()
        } else {
            // Syntax first (serde's message keeps line and column), then the shape, member by
            // member, so a wrong type names its field: `max_request_body_bytes: invalid type …`.
            let document: serde_json::Value =
                serde_json::from_str(text).map_err(|e| ConfigError::new("", e.to_string()))?;
            parse_at(document, "")?
        };
        raw.compile()
    }

    pub fn compile(self) -> Result<CompiledConfig, ConfigError> {
        let gateway_id = match self.gateway_id {
            None => "tollgate".to_owned(),
            Some(id) if valid_gateway_id(&id) => id,
            Some(_) => {
                return Err(ConfigError::new("gateway_id", "use 1-64 characters from a-z, A-Z, 0-9, '.', '_', '-'"));
            }
        };
        if self.gateway_id_suffix.is_some() && gateway_id.len() > MAX_SUFFIXED_GATEWAY_ID {
            return Err(ConfigError::new(
                "gateway_id",
                format!("at most {MAX_SUFFIXED_GATEWAY_ID} characters with gateway_id_suffix (it adds 9)"),
            ));
        }
        let mounts = compile_mounts(self.dialects)?;
        let max_request_body_bytes = self.max_request_body_bytes.unwrap_or(DEFAULT_MAX_REQUEST_BODY_BYTES);
        if max_request_body_bytes == 0 || max_request_body_bytes > MAX_MAX_REQUEST_BODY_BYTES {
            return Err(ConfigError::new(
                "max_request_body_bytes",
                format!("must be between 1 and {MAX_MAX_REQUEST_BODY_BYTES} (the body is buffered in memory)"),
            ));
        }
        let attribution_raw: AttributionConfig = match self.attribution {
            Some(v) => parse_at(v, "attribution")?,
            None => AttributionConfig::default(),
        };
        let attribution = Attribution::compile(attribution_raw, "attribution")?;
        let routing_raw: RoutingConfig = match self.routing {
            Some(v) => parse_at(v, "routing")?,
            None => RoutingConfig::default(),
        };
        let routing = RoutingTable::compile(routing_raw, "routing")?;
        let pricing_raw: PricingConfig = match self.pricing {
            Some(v) => parse_at(v, "pricing")?,
            None => PricingConfig::default(),
        };
        let prices = PriceTable::from_config(&pricing_raw).map_err(|e| ConfigError::new(e.path, e.problem))?;
        let enforcement = match self.enforcement {
            None => None,
            Some(v) if !v.is_object() => return Err(ConfigError::new("enforcement", "must be an object")),
            Some(v) => Some(
                crate::enforce::EnforcementConfig::compile_value(v).map_err(|e| ConfigError::new(e.path, e.problem))?,
            ),
        };
        let context_memory_raw: crate::context_memory::ContextMemoryConfig = match self.context_memory {
            Some(v) => parse_at(v, "context_memory")?,
            None => crate::context_memory::ContextMemoryConfig::default(),
        };
        let context_memory = context_memory_raw.compile()?;
        let guards = match self.guards {
            None => None,
            Some(v) if !v.is_object() => return Err(ConfigError::new("guards", "must be an object")),
            Some(v) => Some(crate::guard::Guards::compile(parse_at(v, "guards")?)?),
        };
        let banner = match self.banner {
            None => None,
            Some(v) if !v.is_object() => return Err(ConfigError::new("banner", "must be an object")),
            Some(v) => Some(crate::banner::Banner::compile(parse_at(v, "banner")?, "banner")?),
        };
        Ok(CompiledConfig {
            gateway_id,
            gateway_id_suffix: self.gateway_id_suffix,
            mounts,
            max_request_body_bytes,
            attribution,
            routing,
            prices,
            enforcement,
            access_log: self.access_log.unwrap_or_default(),
            context_memory,
            guards,
            banner,
        })
    }
}

impl CompiledConfig {
    /// Adds the proxy's part to `gateway_id` when `gateway_id_suffix` asks for one: `.` and the
    /// first 8 hex digits of the SHA-256 of the node id (stable across restarts and config pushes,
    /// short enough for every record id). The adapter passes the host's `node.id` (`None` when
    /// the host has none); without a suffix this changes nothing.
    pub fn identify_proxy(&mut self, node_id: Option<&[u8]>) -> Result<(), ConfigError> {
        let Some(GatewayIdSuffix::NodeId) = self.gateway_id_suffix else { return Ok(()) };
        let node_id = node_id.filter(|n| !n.is_empty()).ok_or_else(|| {
            ConfigError::new(
                "gateway_id_suffix",
                "`node_id`, but the proxy has no node id: give Envoy one (`--service-node`, or `node.id` in the bootstrap) or remove gateway_id_suffix",
            )
        })?;
        use sha2::Digest;
        let digest = sha2::Sha256::digest(node_id);
        let hex: String = digest.iter().take(4).map(|b| format!("{b:02x}")).collect();
        self.gateway_id = format!("{}.{hex}", self.gateway_id);
        self.gateway_id_suffix = None;
        Ok(())
    }
}

fn valid_gateway_id(id: &str) -> bool {
    (1..=64).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

fn compile_mounts(raw: Option<serde_json::Value>) -> Result<Mounts, ConfigError> {
    let Some(raw) = raw else { return Ok(Mounts::default()) };
    let by_name: BTreeMap<String, serde_json::Value> = parse_at(raw, "dialects")?;
    let mut configured: BTreeMap<&'static str, DialectMountConfig> = BTreeMap::new();
    for (name, value) in by_name {
        let dialect = Dialect::parse(&name).ok_or_else(|| {
            ConfigError::new(format!("dialects.{name}"), "unknown dialect; expected one of openai, azure_openai, anthropic, gemini")
        })?;
        configured.insert(dialect.as_str(), parse_at(value, &format!("dialects.{name}"))?);
    }
    let mut entries = Vec::new();
    for dialect in Dialect::ALL {
        let (enabled, prefixes) = match configured.remove(dialect.as_str()) {
            Some(m) => (m.enabled, m.prefixes.unwrap_or_else(|| vec![String::new()])),
            None => (true, vec![String::new()]),
        };
        if !enabled {
            continue;
        }
        if prefixes.is_empty() {
            return Err(ConfigError::new(
                format!("dialects.{}.prefixes", dialect.as_str()),
                "give at least one prefix (\"\" for the root), or set enabled: false",
            ));
        }
        for (i, prefix) in prefixes.into_iter().enumerate() {
            let normalised = prefix.trim_end_matches('/').to_owned();
            if !(normalised.is_empty() || normalised.starts_with('/')) || normalised.contains(['?', '#', '*', ' ']) {
                return Err(ConfigError::new(
                    format!("dialects.{}.prefixes[{i}]", dialect.as_str()),
                    format!("\"{prefix}\" is not a path prefix; write it like \"/llm/openai\" (or \"\" for the root)"),
                ));
            }
            entries.push((dialect, normalised));
        }
    }
    Ok(Mounts::new(entries))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dialect::Endpoint;

    fn err(json: &str) -> String {
        FilterConfig::from_json(json.as_bytes()).unwrap_err().to_string()
    }

    #[test]
    fn empty_config_means_defaults() {
        for doc in ["", "{}", "  \n"] {
            let c = FilterConfig::from_json(doc.as_bytes()).unwrap();
            assert_eq!(c.gateway_id, "tollgate");
            assert_eq!(c.max_request_body_bytes, 1 << 20);
            assert!(c.mounts.recognise("/v1/messages").is_some());
            assert!(c.enforcement.is_none());
            assert_eq!(c.access_log, AccessLogMode::Summary);
        }
    }

    #[test]
    fn access_log_takes_summary_fields_or_off() {
        for (text, mode) in [("summary", AccessLogMode::Summary), ("fields", AccessLogMode::Fields), ("off", AccessLogMode::Off)] {
            let c = FilterConfig::from_json(format!(r#"{{"access_log": "{text}"}}"#).as_bytes()).unwrap();
            assert_eq!(c.access_log, mode);
        }
        let e = err(r#"{"access_log": "all"}"#);
        assert!(e.starts_with("tollgate config: access_log: unknown variant `all`"), "{e}");
        assert!(e.contains("summary") && e.contains("fields") && e.contains("off"), "the error lists the choices: {e}");
    }

    #[test]
    fn a_wrong_type_at_the_top_level_names_its_field() {
        assert!(err(r#"{"max_request_body_bytes": "big"}"#).starts_with("tollgate config: max_request_body_bytes: invalid type"));
        assert!(err(r#"{"gateway_id": 42}"#).starts_with("tollgate config: gateway_id: invalid type"));
        assert!(err(r#"{"gateway_id": "a""#).contains("line 1"), "a syntax error keeps its position");
    }

    #[test]
    fn a_full_config_compiles() {
        let c = FilterConfig::from_json(
            br#"{
            "gateway_id": "edge-1",
            "dialects": {"openai": {"prefixes": ["/llm/openai/", ""]}, "gemini": {"enabled": false}},
            "max_request_body_bytes": 2048,
            "attribution": {"trusted_headers": {"team": "x-team"}},
            "routing": {"rules": [{"name": "r1", "match": {"model": "tier:premium"}, "set_model": "gpt-4o"}]},
            "pricing": {"unknown_model": "zero"},
            "enforcement": {"counter_cluster": "counter", "gateway_token": "t"}
        }"#,
        )
        .unwrap();
        assert_eq!(c.gateway_id, "edge-1");
        assert_eq!(c.mounts.recognise("/llm/openai/v1/chat/completions").map(|r| r.endpoint), Some(Endpoint::Chat));
        assert!(c.mounts.recognise("/v1beta/models/g:generateContent").is_none(), "gemini disabled");
        assert!(c.mounts.recognise("/v1/messages").is_some(), "unlisted dialects stay at the root");
        assert_eq!(c.routing.rules().len(), 1);
    }

    #[test]
    fn errors_name_the_field_path_and_the_problem() {
        assert!(err(r#"{"routng": {}}"#).starts_with("tollgate config: unknown field `routng`"));
        assert_eq!(
            err(r#"{"routing": {"rules": [{"name": "a"}, {"name": "b"}, {"name": "c", "match": {"model": 5}}]}}"#),
            "tollgate config: routing.rules[2].match.model: expected a string or a list of strings, found 5"
        );
        assert!(err(r#"{"max_request_body_bytes": 0}"#).starts_with("tollgate config: max_request_body_bytes: must be between"));
        assert!(err(r#"{"dialects": {"bedrock": {}}}"#).starts_with("tollgate config: dialects.bedrock: unknown dialect"));
        assert!(err(r#"{"dialects": {"openai": {"prefixes": ["llm"]}}}"#).starts_with("tollgate config: dialects.openai.prefixes[0]:"));
        assert!(err(r#"{"gateway_id": "a b"}"#).starts_with("tollgate config: gateway_id:"));
        assert!(err(r#"{"attribution": {"virtual_keys": [{"sha256": "x", "principal": {"key_id": "k"}}]}}"#)
            .starts_with("tollgate config: attribution.virtual_keys[0].sha256:"));
        assert!(err(r#"{"pricing": {"unknown_model": "guess"}}"#).starts_with("tollgate config: pricing.unknown_model: unknown variant `guess`"));
        assert!(err(r#"{"enforcement": 5}"#).starts_with("tollgate config: enforcement: must be an object"));
        assert!(err(r#"{"enforcement": {"counter_cluster": "c", "gateway_token": "t", "batch_size": 0}}"#)
            .starts_with("tollgate config: enforcement.batch_size:"));
        assert!(err("{").starts_with("tollgate config: EOF while parsing"));
        assert!(err(r#"{"pricing": {"estimate": {"unknown_context_window": "guess"}}}"#)
            .starts_with("tollgate config: pricing.estimate: unknown variant `guess`"));
        assert!(err(r#"{"pricing": {"estimate": {"unknown_context_window_tokens": 0}}}"#)
            .starts_with("tollgate config: pricing.estimate.unknown_context_window_tokens: must be at least 1"));
    }

    // One test per section: a mistake in it is reported with the field's path, so the operator
    // knows where to look (README.md, configuration reference).

    #[test]
    fn a_node_id_suffix_gives_each_proxy_its_own_gateway_id() {
        let cfg = |text: &str| FilterConfig::from_json(text.as_bytes()).unwrap();
        let mut a = cfg(r#"{"gateway_id": "istio", "gateway_id_suffix": "node_id"}"#);
        let mut b = a.clone();
        a.identify_proxy(Some(b"sidecar~10.0.0.1~llm-7d9f-a.apps~apps.svc.cluster.local")).unwrap();
        b.identify_proxy(Some(b"sidecar~10.0.0.2~llm-7d9f-b.apps~apps.svc.cluster.local")).unwrap();
        assert!(a.gateway_id.starts_with("istio.") && a.gateway_id.len() == "istio.".len() + 8, "{}", a.gateway_id);
        assert_ne!(a.gateway_id, b.gateway_id, "two replicas, two ids");
        let mut again = cfg(r#"{"gateway_id": "istio", "gateway_id_suffix": "node_id"}"#);
        again.identify_proxy(Some(b"sidecar~10.0.0.1~llm-7d9f-a.apps~apps.svc.cluster.local")).unwrap();
        assert_eq!(again.gateway_id, a.gateway_id, "stable across config pushes and restarts");
        assert!(valid_gateway_id(&a.gateway_id));

        let mut plain = cfg(r#"{"gateway_id": "edge-1"}"#);
        plain.identify_proxy(Some(b"node")).unwrap();
        assert_eq!(plain.gateway_id, "edge-1", "no suffix asked for: the node id is not used");
        plain.identify_proxy(None).unwrap();

        for missing in [None, Some(&b""[..])] {
            let e = cfg(r#"{"gateway_id_suffix": "node_id"}"#).identify_proxy(missing).unwrap_err().to_string();
            assert!(e.contains("gateway_id_suffix") && e.contains("--service-node"), "{e}");
        }
        assert!(err(r#"{"gateway_id_suffix": "pod_name"}"#).starts_with("tollgate config: gateway_id_suffix: unknown variant"));
        let long = format!(r#"{{"gateway_id": "{}", "gateway_id_suffix": "node_id"}}"#, "g".repeat(56));
        assert!(err(&long).starts_with("tollgate config: gateway_id: at most 55 characters"), "{}", err(&long));
    }

    #[test]
    fn a_gateway_id_mistake_names_gateway_id() {
        assert!(err(r#"{"gateway_id": ""}"#).starts_with("tollgate config: gateway_id: use 1-64 characters"));
        assert!(err(r#"{"gateway_id": 7}"#).starts_with("tollgate config: gateway_id: invalid type"));
    }

    #[test]
    fn a_body_limit_mistake_names_max_request_body_bytes() {
        assert!(err(r#"{"max_request_body_bytes": "1MB"}"#).starts_with("tollgate config: max_request_body_bytes: invalid type"));
        assert!(err(&format!(r#"{{"max_request_body_bytes": {}}}"#, MAX_MAX_REQUEST_BODY_BYTES + 1))
            .starts_with("tollgate config: max_request_body_bytes: must be between"));
    }

    #[test]
    fn a_dialects_mistake_names_the_dialect_and_its_field() {
        assert!(err(r#"{"dialects": {"openai": {"prefix": "/x"}}}"#).starts_with("tollgate config: dialects.openai: unknown field `prefix`"));
        assert!(err(r#"{"dialects": {"anthropic": {"enabled": "no"}}}"#).starts_with("tollgate config: dialects.anthropic.enabled:"));
    }

    #[test]
    fn an_attribution_mistake_names_its_field() {
        assert!(err(r#"{"attribution": {"trusted_headers": {"team": 5}}}"#).starts_with("tollgate config: attribution.trusted_headers"));
        let e = err(r#"{"attribution": {"sources": ["virtual_keys", "virtual_keys"]}}"#);
        assert!(e.starts_with("tollgate config: attribution.sources[1]: listed twice"), "{e}");
    }

    #[test]
    fn a_routing_mistake_names_the_rule_and_its_field() {
        assert!(err(r#"{"routing": {"rules": [{"name": "a", "match": {"dialect": "cobol"}}]}}"#)
            .starts_with("tollgate config: routing.rules[0].match.dialect:"));
        assert!(err(r#"{"routing": {"rule": []}}"#).starts_with("tollgate config: routing: unknown field `rule`"));
    }

    #[test]
    fn a_pricing_mistake_names_its_field() {
        assert!(err(r#"{"pricing": {"models": {"m": {"input_per_mtok": "x", "output_per_mtok": "1"}}}}"#)
            .starts_with("tollgate config: pricing.models: `x` is not a non-negative decimal number"));
        assert!(err(r#"{"pricing": {"unknown_model": 1}}"#).starts_with("tollgate config: pricing.unknown_model:"));
    }

    #[test]
    fn an_enforcement_mistake_names_its_field() {
        let base = r#""counter_cluster": "c", "gateway_token": "t""#;
        for (member, path) in [
            (r#""failure_mode": "fail_sideways""#, "enforcement.failure_mode: unknown variant `fail_sideways`"),
            (r#""batch_size": "ten""#, "enforcement.batch_size: invalid type"),
            (r#""lease_slice_usd": "0""#, "enforcement.lease_slice_usd: must be a positive dollar amount"),
            (r#""call_timeout_ms": 0"#, "enforcement.call_timeout_ms: must be between"),
            (r#""counter_cluster": "c", "gateway_token": "t", "bogus": 1"#, "enforcement: unknown field `bogus`"),
        ] {
            let json = if member.starts_with(r#""counter_cluster""#) {
                format!(r#"{{"enforcement": {{{member}}}}}"#)
            } else {
                format!(r#"{{"enforcement": {{{base}, {member}}}}}"#)
            };
            let e = err(&json);
            assert!(e.starts_with(&format!("tollgate config: {path}")), "{json} -> {e}");
        }
        assert!(err(r#"{"enforcement": {"counter_cluster": "c"}}"#).starts_with("tollgate config: enforcement: missing field `gateway_token`"));
    }

    #[test]
    fn an_access_log_mistake_names_access_log() {
        assert!(err(r#"{"access_log": "verbose"}"#).starts_with("tollgate config: access_log: unknown variant `verbose`"));
    }

    #[test]
    fn a_context_memory_mistake_names_its_field() {
        assert!(err(r#"{"context_memory": {"ttl_s": 0}}"#).starts_with("tollgate config: context_memory.ttl_s: must be between 1 and"));
        assert!(err(r#"{"context_memory": {"max_entries": -1}}"#).starts_with("tollgate config: context_memory.max_entries: invalid value"));
        assert!(err(r#"{"context_memory": {"max_entries": 0}}"#).starts_with("tollgate config: context_memory.max_entries: must be between"));
        assert!(err(r#"{"context_memory": {"ttl": 60}}"#).starts_with("tollgate config: context_memory: unknown field `ttl`"));
        let on = FilterConfig::from_json(b"{}").unwrap();
        assert_eq!(on.context_memory, Some(crate::context_memory::ContextMemory { ttl_ms: 3_600_000, buckets: 1250, conversations: false }), "on by default");
        let off = FilterConfig::from_json(br#"{"context_memory": {"enabled": false}}"#).unwrap();
        assert_eq!(off.context_memory, None);
    }
}
