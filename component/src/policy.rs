//! The policy a component host calls, in plain Rust: the same `tollgate-core` calls, in the same
//! order, as the Envoy filter's request and response path (`plugin/src/filter.rs`), minus what only
//! Envoy has (budgets and leases, header removal, host calls). The wit bindings (`crate::bindings`)
//! only convert types; this module is what the native tests run on the shared case table, so
//! "the component answers like core" is checked on both sides of the boundary.

use std::cell::RefCell;
use tollgate_core::attribution::{KeyDigests, QueryKey};
use tollgate_core::config::{CompiledConfig, FilterConfig};
use tollgate_core::dialect::{Dialect, Recognised};
use tollgate_core::errors::{ErrorKind, Failure};
use tollgate_core::protocol::{Principal, Tokens};
use tollgate_core::usage::{ResponseFormat, ScanOutcome, TerminalEvent, UsageScanner};

/// A configuration mistake, named by its field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub field: String,
    pub problem: String,
}

/// A request as a host received it.
#[derive(Debug, Clone, Default)]
pub struct Request {
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

/// A routed request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub dialect: Dialect,
    pub endpoint: &'static str,
    pub principal: Principal,
    pub requested_model: String,
    pub routed_model: String,
    pub rule: Option<String>,
    pub set_headers: Vec<(String, String)>,
    pub path: Option<String>,
    pub body: Option<Vec<u8>>,
    pub stream: bool,
    pub max_output_tokens: Option<u64>,
}

/// The answer to send instead of forwarding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denial {
    pub status: u16,
    pub code: &'static str,
    pub message: String,
    pub param: Option<String>,
    pub body: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    PassThrough,
    Forward(Box<Route>),
    Deny(Denial),
}

/// What a metered response said about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Metered {
    pub usage: Option<Tokens>,
    pub model: Option<String>,
    pub completed: bool,
    pub content_bytes: u64,
}

/// Integer cost of some usage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cost {
    pub micros: i64,
    pub known_price: bool,
    pub long_context: bool,
}

/// One compiled configuration.
pub struct Policy {
    config: CompiledConfig,
    /// SHA-256 of the API keys seen (virtual-key lookups), as the filter keeps per VM.
    digests: RefCell<KeyDigests>,
}

impl Policy {
    pub fn new(config_json: &str) -> Result<Policy, ConfigError> {
        let config = FilterConfig::from_json(config_json.as_bytes())
            .map_err(|e| ConfigError { field: e.path, problem: e.problem })?;
        Ok(Policy { config, digests: RefCell::default() })
    }

    /// The filter's request path: dialect from the path, principal, size limit, body validation,
    /// routing, price check; a decision, never a panic.
    pub fn recognise(&self, request: &Request) -> Decision {
        let config = &self.config;
        let header = |name: &str| -> Option<&str> {
            request.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
        };
        let Some(recognised) = config.mounts.recognise(&request.path) else { return Decision::PassThrough };
        let dialect = recognised.dialect;
        let query = if dialect == Dialect::Gemini { QueryKey::from_path(&request.path) } else { None };
        let query_key = query.as_ref().map(|q| q.key.as_str());
        let facts = match self.digests.try_borrow_mut() {
            Ok(mut digests) => config.attribution.from_request(header, query_key, &mut digests),
            Err(_) => config.attribution.from_request(header, query_key, &mut KeyDigests::default()),
        };
        // A virtual key is the gateway's credential: the upstream never receives it.
        let keyless = query.as_ref().filter(|_| facts.virtual_key_in_query).map(|q| q.path_without.clone());
        let path = keyless.clone().unwrap_or_else(|| request.path.clone());
        let limit = config.max_request_body_bytes;
        if u64::try_from(request.body.len()).unwrap_or(u64::MAX) > limit {
            let failure = Failure::new(
                ErrorKind::TooLarge,
                format!("the request body is larger than this gateway accepts ({limit} bytes); send a smaller request"),
            );
            return deny(&failure, dialect);
        }
        if request.body.is_empty() {
            let failure = Failure::new(ErrorKind::InvalidRequest, "this API call needs a JSON request body; send it as a POST with the body");
            return deny(&failure, dialect);
        }
        self.route(&recognised, &facts, &path, keyless, &request.body)
    }

    fn route(
        &self,
        recognised: &Recognised,
        facts: &tollgate_core::attribution::HeaderFacts,
        path: &str,
        keyless: Option<String>,
        body: &[u8],
    ) -> Decision {
        use tollgate_core::routing::plan;
        let config = &self.config;
        let dialect = recognised.dialect;
        let parsed = match plan::parse_request(&config.attribution, recognised, facts, body) {
            Ok(p) => p,
            Err(f) => return deny(&f, dialect),
        };
        let plan = match parsed.route(&config.routing, recognised, path, None) {
            Ok(p) => p,
            Err(f) => return deny(&f, dialect),
        };
        if let Err(unknown) = config.prices.price(&plan.routed_model) {
            let failure = Failure::new(
                ErrorKind::InvalidRequest,
                format!("model \"{}\" is not priced on this gateway, so it cannot be used; use another model or ask the gateway operator to add its price", unknown.model),
            )
            .with_param("model");
            return deny(&failure, dialect);
        }
        Decision::Forward(Box::new(Route {
            dialect,
            endpoint: recognised.endpoint.as_str(),
            principal: plan.principal,
            requested_model: plan.requested_model,
            routed_model: plan.routed_model,
            rule: plan.rule,
            set_headers: plan.set_headers,
            path: plan.path.or(keyless),
            body: plan.body,
            stream: plan.stream,
            max_output_tokens: plan.max_output_tokens,
        }))
    }

    /// A meter for the response to a request to `path` (None: not an LLM API call).
    pub fn meter(&self, path: &str, format: ResponseFormat) -> Option<Meter> {
        let recognised = self.config.mounts.recognise(path)?;
        Some(Meter { scanner: UsageScanner::new(recognised.dialect, recognised.endpoint, format), finished: None })
    }

    /// The cost of `tokens` on `model`; the message names what to configure when it has no price.
    pub fn price(&self, model: &str, tokens: &Tokens) -> Result<Cost, String> {
        self.config
            .prices
            .cost(model, tokens)
            .map(|c| Cost { micros: c.micros, known_price: c.known, long_context: c.long_context })
            .map_err(|unknown| unknown.to_string())
    }
}

fn deny(failure: &Failure, dialect: Dialect) -> Decision {
    Decision::Deny(Denial {
        status: failure.status(),
        code: failure.kind.code(),
        message: failure.message.clone(),
        param: failure.param.clone(),
        body: failure.body(dialect),
    })
}

/// Reads usage from a response body, chunk by chunk (`core::usage`).
pub struct Meter {
    scanner: UsageScanner,
    finished: Option<ScanOutcome>,
}

impl Meter {
    /// Bytes after `finish` are ignored (the answer is fixed once given).
    pub fn feed(&mut self, chunk: &[u8]) {
        if self.finished.is_none() {
            self.scanner.feed(chunk);
        }
    }

    pub fn finish(&mut self) -> Metered {
        let scan = self.finished.get_or_insert_with(|| self.scanner.finish());
        Metered {
            usage: scan.tokens,
            model: scan.model.clone(),
            completed: scan.terminal == Some(TerminalEvent::Completed),
            content_bytes: scan.streamed_content_bytes,
        }
    }
}
