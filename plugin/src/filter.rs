//! The proxy-wasm contexts: a root context per plugin configuration and an HTTP context per
//! request. Each callback only advances the request's [`Phase`] and maps it to Pause / Continue;
//! the decisions are made by `tollgate_core` (plan, pricing, usage) and [`crate::settle`].
//!
//! Request path, top to bottom:
//! 1. `on_http_request_headers`: strip client `x-tollgate-*` headers (every request); recognise
//!    the dialect from `:path` (else pass through, counted); read attribution headers; ask the
//!    upstream for `accept-encoding: identity` so usage is readable; refuse a declared
//!    `content-length` over the limit (413); pause until the whole body is here.
//! 2. `on_http_request_body`: 413 past the limit; at end of body: parse → principal →
//!    enforcement's utilization → route → price check → worst case (with enforcement:
//!    `core::enforce::reservation`) → apply the plan (body splice,
//!    `content-length`, `:path`, route headers — changing request headers makes Envoy recompute
//!    the route) → enforcement `admit` → continue, refuse, or wait.
//! 3. `on_http_response_headers` / `on_http_response_body`: choose JSON or SSE scanning; feed every
//!    chunk to the usage scanner as it passes (Continue, nothing buffered); settle at end of
//!    stream. The one exception: an OpenAI stream whose usage the filter asked for loses its
//!    usage-only chunk (`core::usage` strip), and a chunk that ends inside an event is held
//!    (Pause: Envoy buffers it) until the event ends.
//! - A page on a `banner` route (not an LLM call; with enforcement): the principal from the
//!   request headers; at the response headers, a 200 HTML page whose principal has a known budget
//!   loses its `content-length` and streams through lol_html, the budget banner put after
//!   `<body>` (`crate::banner`, decided by `core::banner`).
//! 4. `on_log`: a request that never reached end of stream (client or upstream cut) is settled
//!    here from an estimate.

use crate::access_log::{attribution_key, key, AccessLog};
use crate::admission::{Admission, Enforcer, Verdict};
use crate::banner::{BannerMetrics, Fed, Page, PageRewriter};
use crate::context_memory::SharedContextMemory;
use crate::enforce::EnforcementRoot;
use crate::host::{self, Action, Buffer, LogLevel, Map};
use crate::metrics::{Metrics, Outcome, FLUSH_INTERVAL_MS};
use crate::settle::{self, Ended, Exchange};
use crate::wire::HeaderMap;
use std::rc::Rc;
use std::cell::RefCell;
use tollgate_core::attribution::{Field, HeaderFacts, KeyDigests, QueryKey};
use tollgate_core::banner;
use tollgate_core::dialect::Dialect;
use tollgate_core::config::{CompiledConfig, FilterConfig};
use tollgate_core::context_memory::{Acquired, Reference, TurnEnd};
use tollgate_core::dialect::Recognised;
use tollgate_core::errors::{ErrorKind, Failure};
use tollgate_core::enforce::reservation;
use tollgate_core::routing::plan::{self, ParsedRequest, RequestPlan};
use tollgate_core::pricing::PriceLookup;
use crate::guard::GuardMetrics;
use tollgate_core::guard::retry::Decision;
use tollgate_core::guard::{Attributed, RetryGuard, Work};
use tollgate_core::usage::{ResponseFormat, ScanOutcome, UsageScanner};

pub struct Root {
    /// Makes request ids unique to this VM: the host clock in nanoseconds when it was configured
    /// (each worker's VM configures at a different instant), in hex.
    vm_tag: Rc<str>,
    config: Option<Rc<CompiledConfig>>,
    metrics: Rc<Metrics>,
    /// `None`: enforcement off (metering only).
    enforcement: Option<EnforcementRoot>,
    log_level: Rc<LogLevelCache>,
    /// SHA-256 of the API keys this VM has seen (virtual-key lookups).
    key_digests: Rc<RefCell<KeyDigests>>,
    /// The response-id memory (`crate::context_memory`); only with enforcement.
    context_memory: Option<Rc<SharedContextMemory>>,
    /// The guards' counters; `None` without a `guards` section.
    guard_metrics: Option<Rc<GuardMetrics>>,
    /// The banner's counters; `None` without a `banner` section.
    banner_metrics: Option<Rc<BannerMetrics>>,
}

impl Default for Root {
    fn default() -> Root {
        Root {
            vm_tag: Rc::from(""),
            config: None,
            metrics: Rc::new(Metrics::default()),
            enforcement: None,
            log_level: Rc::new(LogLevelCache::default()),
            key_digests: Rc::default(),
            context_memory: None,
            guard_metrics: None,
            banner_metrics: None,
        }
    }
}

/// The host's log level, asked at most once a second (a host call per request otherwise; only
/// settlement's debug line needs it).
#[derive(Debug, Default)]
struct LogLevelCache {
    /// (level, when asked in ms); `None` before the first ask.
    seen: std::cell::Cell<Option<(LogLevel, i64)>>,
}

impl LogLevelCache {
    const MAX_AGE_MS: i64 = 1000;

    fn get(&self, now_ms: i64) -> LogLevel {
        match self.seen.get() {
            Some((level, at)) if (0..Self::MAX_AGE_MS).contains(&now_ms.saturating_sub(at)) => level,
            _ => {
                let level = host::log_level();
                self.seen.set(Some((level, now_ms)));
                level
            }
        }
    }
}

/// The callbacks `crate::abi` delivers to a root context.
impl Root {
    /// Answers to calls the root made for enforcement (lease top-ups, usage batches).
    pub fn on_http_call_response(&mut self, token: u32, _num_headers: usize, body_size: usize, _num_trailers: usize) {
        let Some(enforcement) = &self.enforcement else { return };
        let body = host::get_buffer(Buffer::HttpCallResponseBody, 0, body_size).unwrap_or_default();
        let headers = host::headers(Map::HttpCallResponseHeaders).unwrap_or_default();
        let status = header(&headers, ":status").and_then(|s| s.parse::<u16>().ok());
        enforcement.on_http_call_response(token, status, &body, host::now_ms());
    }

    /// The plugin is going away: counters flushed, enforcement's records handed on.
    pub fn on_done(&mut self) -> bool {
        self.metrics.flush();
        if let Some(m) = &self.context_memory {
            m.flush();
        }
        if let Some(g) = &self.guard_metrics {
            g.flush();
        }
        if let Some(b) = &self.banner_metrics {
            b.flush();
        }
        if let Some(e) = &self.enforcement {
            e.on_done(host::now_ms());
        }
        true
    }

    pub fn on_configure(&mut self, size: usize) -> bool {
        let bytes = match host::get_buffer(Buffer::PluginConfiguration, 0, size) {
            Ok(bytes) => bytes,
            Err(e) => {
                host::log(LogLevel::Error, &format!("tollgate config: cannot read the plugin configuration (host status {})", e.0));
                return false;
            }
        };
        let configured = FilterConfig::from_json(&bytes).and_then(|mut config| {
            if config.gateway_id_suffix.is_some() {
                // Envoy 1.40 answers the node only as the `xds.node` attribute while configuring
                // (its `node` attribute is not found there); other hosts may offer `node.id` only.
                // A host with neither (or failing to read them) leaves the id unidentified:
                // `identify_proxy` then refuses the configuration, naming the field.
                let read = |path: &[&str]| host::get_property(path).ok().flatten().filter(|id| !id.is_empty());
                let node_id = read(&["xds", "node", "id"]).or_else(|| read(&["node", "id"]));
                config.identify_proxy(node_id.as_deref())?;
            }
            Ok(config)
        });
        match configured {
            Ok(config) => {
                let config = Rc::new(config);
                host::log(
                    LogLevel::Info,
                    &format!(
                        "tollgate: configured gateway_id={} routing_rules={} enforcement={}",
                        config.gateway_id,
                        config.routing.rules().len(),
                        if config.enforcement.is_some() { "on" } else { "off (metering only)" }
                    ),
                );
                let enforcement = EnforcementRoot::new(&config);
                // The tick flushes the counters and drives enforcement's background work.
                let tick_ms = enforcement.as_ref().and_then(EnforcementRoot::tick_period_ms).map_or(FLUSH_INTERVAL_MS, |ms| ms.min(FLUSH_INTERVAL_MS));
                if let Err(e) = host::set_tick_period_ms(tick_ms) {
                    host::log(LogLevel::Warn, &format!("tollgate: could not start the tick timer (host status {}); counters and enforcement will lag", e.0));
                }
                // It tightens reservations, so it matters only where there are some.
                self.context_memory = config.context_memory.filter(|_| enforcement.is_some()).map(|m| Rc::new(SharedContextMemory::new(m)));
                self.enforcement = enforcement;
                self.metrics.flush();
                self.metrics = Rc::new(Metrics::define());
                if let Some(g) = &self.guard_metrics {
                    g.flush();
                }
                self.guard_metrics = config.guards.as_ref().map(|_| Rc::new(GuardMetrics::define()));
                if let Some(b) = &self.banner_metrics {
                    b.flush();
                }
                self.banner_metrics = config.banner.as_ref().map(|_| Rc::new(BannerMetrics::define()));
                if config.banner.is_some() && self.enforcement.is_none() {
                    host::log(LogLevel::Warn, "tollgate: banner is configured but enforcement is not: without budgets there is no status to show, so no page gets a banner");
                }
                self.config = Some(config);
                self.vm_tag = Rc::from(new_vm_tag().as_str());
                true
            }
            Err(e) => {
                host::log(LogLevel::Error, &e.to_string());
                false
            }
        }
    }

    pub fn on_tick(&mut self) {
        self.metrics.flush();
        if let Some(m) = &self.context_memory {
            m.flush();
        }
        if let Some(g) = &self.guard_metrics {
            g.flush();
        }
        if let Some(b) = &self.banner_metrics {
            b.flush();
        }
        if let Some(enforcement) = &self.enforcement {
            enforcement.on_tick(host::now_ms());
        }
    }

    /// A new HTTP stream of this plugin, built where it will live (a `Stream` is large: moved
    /// by value it is copied byte by byte).
    pub fn create_stream(&self, context_id: u32) -> Rc<RefCell<Stream>> {
        let enforcer = self.enforcement.as_ref().map(EnforcementRoot::for_request);
        let access_log = AccessLog::new(self.config.as_ref().map(|c| c.access_log).unwrap_or_default());
        Rc::new(RefCell::new(Stream {
            access_log,
            log_level: Rc::clone(&self.log_level),
            key_digests: Rc::clone(&self.key_digests),
            context_id,
            vm_tag: Rc::clone(&self.vm_tag),
            config: self.config.clone(),
            metrics: Rc::clone(&self.metrics),
            guard_metrics: self.guard_metrics.clone(),
            banner_metrics: self.banner_metrics.clone(),
            page: None,
            enforcer,
            context_memory: self.context_memory.clone(),
            conversation: None,
            phase: Phase::Start,
            request: None,
            response: None,
            pending_response_headers: Vec::new(),
        }))
    }
}

/// Where a request is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Start,
    /// Not an LLM call (or no config): untouched.
    Passthrough,
    AwaitingBody,
    /// Paused while enforcement waits on an outbound call.
    AwaitingAdmission,
    Forwarded,
    /// The filter answered locally.
    Replied,
    Settled,
}

/// What the request phase learned.
struct RequestState {
    recognised: Recognised,
    facts: HeaderFacts,
    request_id: String,
    /// `:path` as the client sent it (the plan may rewrite it).
    path: String,
    started_at_ms: i64,
    had_content_length: bool,
    plan: Option<RequestPlan>,
    /// The routed model's price, looked up once at admission (set with `plan`); settlement
    /// charges at it.
    routed_price: Option<PriceLookup>,
    /// A checkpoint a trusted upstream filter wrote (`guards.retry.checkpoint_header`), hashed.
    checkpoint: Option<u64>,
    /// The shared-data key of the task's failure streak, when the retry guard counted this request
    /// (its outcome is recorded at settlement).
    guard_task: Option<String>,
}

/// What the response phase is reading.
struct ResponseState {
    status: u16,
    scanner: Option<Box<UsageScanner>>,
}

impl Drop for ResponseState {
    /// The scanner is kept for the VM's next response (`crate::scanners`).
    fn drop(&mut self) {
        if let Some(scanner) = self.scanner.take() {
            crate::scanners::give_back(scanner);
        }
    }
}

pub struct Stream {
    access_log: AccessLog,
    log_level: Rc<LogLevelCache>,
    key_digests: Rc<RefCell<KeyDigests>>,
    context_id: u32,
    vm_tag: Rc<str>,
    config: Option<Rc<CompiledConfig>>,
    metrics: Rc<Metrics>,
    guard_metrics: Option<Rc<GuardMetrics>>,
    banner_metrics: Option<Rc<BannerMetrics>>,
    /// A page on a banner route (`crate::banner`); `None` for everything else.
    page: Option<Page>,
    enforcer: Option<Box<dyn Enforcer>>,
    context_memory: Option<Rc<SharedContextMemory>>,
    /// The conversation whose lock this turn holds (`context_memory.conversations`): its id, the
    /// lock token (given back when the turn ends), and whether its bill may be the
    /// conversation's size (not when the provider may truncate its input).
    conversation: Option<(String, u64, bool)>,
    phase: Phase,
    request: Option<RequestState>,
    response: Option<ResponseState>,
    /// Headers enforcement asked to add to the client's response (budget warnings).
    pending_response_headers: Vec<(String, String)>,
}

fn header<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers.get(name)
}

impl Stream {
    fn dialect(&self) -> Option<tollgate_core::dialect::Dialect> {
        self.request.as_ref().map(|r| r.recognised.dialect)
    }

    /// Gives back a conversation lock still held when the stream ends without settling: a turn
    /// the gateway answered (`not_sent`) left the conversation as it was; otherwise its size is
    /// unknown.
    fn release_conversation(&mut self, not_sent: bool) {
        if let (Some(memory), Some((id, holder, _))) = (&self.context_memory, self.conversation.take()) {
            let model = self.request.as_ref().and_then(|r| r.plan.as_ref()).map(|p| p.routed_model.as_str()).unwrap_or_default();
            memory.release(&id, model, holder, if not_sent { TurnEnd::NotSent } else { TurnEnd::Failed }, host::now_ms());
        }
    }

    /// Answers locally in the dialect's error shape and records the outcome.
    fn reply(&mut self, failure: &Failure, extra_headers: &[(String, String)]) -> Action {
        let Some(dialect) = self.dialect() else { return Action::Continue };
        let outcome = match failure.kind {
            ErrorKind::InvalidRequest => Outcome::Invalid,
            ErrorKind::Denied => Outcome::Denied,
            ErrorKind::TooLarge => Outcome::TooLarge,
            ErrorKind::BudgetExceeded | ErrorKind::Unavailable | ErrorKind::GuardRefused => Outcome::Refused,
        };
        self.metrics.outcome(dialect, outcome);
        self.access_log.set(key!("outcome"), outcome.as_str());
        let body = failure.body(dialect);
        let mut headers: Vec<(&str, &str)> = vec![("content-type", "application/json")];
        headers.extend(extra_headers.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        self.phase = Phase::Replied;
        if let Err(e) = host::send_response(failure.status(), &headers, &body) {
            self.metrics.host_error();
            host::log(LogLevel::Warn, &format!("tollgate: could not send the {} reply (host status {})", failure.status(), e.0));
            return Action::Continue;
        }
        Action::Pause
    }

    /// The host could not hand over the request body (both ends of a body: its last data frame or
    /// its trailers). Nothing can be attributed, priced or reserved without it, so it never goes
    /// upstream: 503 in the dialect's shape, whatever `failure_mode` says (that is about the
    /// counter, not the host).
    fn unreadable_body(&mut self, e: host::HostError) -> Action {
        self.metrics.host_error();
        host::log(LogLevel::Error, &format!("tollgate: could not read the request body (host status {})", e.0));
        let failure = Failure::new(ErrorKind::Unavailable, "the gateway could not read this request; retry");
        self.reply(&failure, &[])
    }

    fn too_large(&mut self, limit: u64) -> Action {
        let failure = Failure::new(
            ErrorKind::TooLarge,
            format!("the request body is larger than this gateway accepts ({limit} bytes); send a smaller request"),
        );
        self.reply(&failure, &[])
    }

    /// Step 2 at end of body. Returns the action for the body callback.
    fn on_full_body(&mut self, body: &[u8]) -> Action {
        let (Some(config), Some(req)) = (self.config.clone(), self.request.as_ref()) else { return Action::Continue };
        // A retry guard fingerprints the body: hashed in the scan that validates it.
        let scan = match config.guards.as_ref().is_some_and(|g| g.retry.is_some()) {
            true => plan::Scan::Fingerprinting,
            false => plan::Scan::Plain,
        };
        let mut parsed = match plan::parse_request_scanning(&config.attribution, &req.recognised, &req.facts, body, scan) {
            Ok(p) => p,
            Err(f) => return self.reply(&f, &[]),
        };
        // Premium runs need attribution (core::guard): refused, or downgraded before routing.
        if let Some(guards) = config.guards.as_ref().filter(|g| !g.require_task.is_empty()) {
            match guards.check_attribution(&parsed.principal, &parsed.requested_model) {
                Ok(Attributed::Ok) => {}
                Ok(Attributed::Downgrade { model, rule }) => {
                    self.access_log.set(key!("guard"), &format!("downgraded:{rule}"));
                    if let Some(g) = &self.guard_metrics {
                        g.unattributed(true);
                    }
                    parsed.downgrade(model);
                }
                Err(f) => {
                    self.access_log.set(key!("guard"), "unattributed");
                    if let Some(g) = &self.guard_metrics {
                        g.unattributed(false);
                    }
                    return self.reply(&f, &[]);
                }
            }
        }
        for field in Field::ALL {
            if let Some(value) = field.get(&parsed.principal) {
                self.access_log.set(attribution_key(field), value);
            }
        }
        self.access_log.set(key!("requested_model"), &parsed.requested_model);
        // Only enforcement needs the time here (a host call).
        let now = if self.enforcer.is_some() { host::now_ms() } else { 0 };
        let utilization = self.enforcer.as_mut().and_then(|e| e.utilization_pct(&parsed.principal, now));
        let Some(req) = self.request.as_ref() else { return Action::Continue };
        let plan = match parsed.route(&config.routing, &req.recognised, &req.path, utilization) {
            Ok(p) => p,
            Err(f) => return self.reply(&f, &[]),
        };
        self.access_log.set(key!("routed_model"), &plan.routed_model);
        if let Some(rule) = &plan.rule {
            self.access_log.set(key!("rule"), rule);
            self.metrics.routed();
        }
        let price = match config.prices.price(&plan.routed_model) {
            Ok(lookup) => lookup,
            Err(unknown) => {
                let failure = Failure::new(
                    ErrorKind::InvalidRequest,
                    format!("model \"{}\" is not priced on this gateway, so it cannot be used; use another model or ask the gateway operator to add its price", unknown.model),
                )
                .with_param("model");
                return self.reply(&failure, &[]);
            }
        };
        // What the request can cost at most (core::enforce::reservation): only enforcement
        // reserves it, and only enforcement refuses a request whose prompt has no known bound.
        let worst_case = match &config.enforcement {
            Some(settings) => {
                // A continuation of a response this gateway metered: its billed context is known,
                // and that plus the body is a true bound tighter than the window (core::context_memory).
                let known_prefix = match (&self.context_memory, &plan.context_reference) {
                    // A conversation turn takes the conversation's lock first (core::context_memory).
                    (Some(memory), Some(Reference::Conversation(id))) if memory.conversations() => {
                        let holder = tollgate_core::context_memory::holder(&req.request_id);
                        match memory.acquire(id, &plan.routed_model, holder, now) {
                            Some(acquired @ (Acquired::Known(_) | Acquired::Unknown)) => {
                                self.conversation = Some((id.clone(), holder, !plan.truncates));
                                match acquired {
                                    Acquired::Known(tokens) => Some(tokens),
                                    _ => None,
                                }
                            }
                            Some(Acquired::Locked) => {
                                let failure = Failure::new(
                                    ErrorKind::InvalidRequest,
                                    "another request on this conversation is in progress through this gateway; retry when it has completed",
                                )
                                .with_param("conversation");
                                return self.reply(&failure, &[]);
                            }
                            Some(Acquired::Full) | None => {
                                self.metrics.host_error();
                                let failure = Failure::new(ErrorKind::Unavailable, "the gateway could not record this conversation turn; retry");
                                return self.reply(&failure, &[]);
                            }
                        }
                    }
                    (Some(_), Some(Reference::Conversation(_))) => None,
                    (Some(memory), Some(reference)) => memory.lookup(reference, &plan.routed_model, now),
                    _ => None,
                };
                let request = reservation::Request {
                    model: &plan.routed_model,
                    price: &price,
                    body_len: u64::try_from(plan.body_len).unwrap_or(u64::MAX),
                    remote_prompt: plan.remote_prompt,
                    max_output_tokens: plan.max_output_tokens,
                    known_prefix,
                };
                match reservation::worst_case(&request, config.prices.estimate_config(), settings) {
                    Ok(worst) => Some(worst),
                    Err(failure) => return self.reply(&failure, &[]),
                }
            }
            None => None,
        };
        // Agent guards (core::guard): a retry of expensive work past its allowance is refused.
        if config.guards.is_some() {
            let needs_cost = config.guards.as_ref().and_then(|g| g.retry.as_ref()).is_some_and(|r| r.needs_cost());
            let worst_micros = match &worst_case {
                Some(worst) => worst.micros,
                // Only `expensive.min_estimated_cost_usd` reads it: not estimated otherwise.
                None if !needs_cost => 0,
                None => {
                    let est = config.prices.estimate_config();
                    let model_max = price.known.then_some(&price.price).and_then(|p| p.max_output_tokens);
                    let prompt = est.input_tokens_upper_bound(u64::try_from(plan.body_len).unwrap_or(u64::MAX));
                    price.price.worst_case_cost(prompt, est.max_output_tokens(plan.max_output_tokens, model_max))
                }
            };
            if let Some(failure) = self.retry_guard(&config, &parsed, &plan, worst_micros) {
                return self.reply(&failure, &[]);
            }
        }

        if let Err(e) = self.apply(&plan, body.len()) {
            self.metrics.host_error();
            host::log(LogLevel::Error, &format!("tollgate: could not rewrite the request (host status {}); refusing it", e.0));
            let failure = Failure::new(ErrorKind::Unavailable, "the gateway could not prepare this request; retry");
            return self.reply(&failure, &[]);
        }
        if plan.injected_include_usage {
            self.metrics.include_usage_injected();
        }
        let verdict = match (self.enforcer.as_mut(), self.request.as_ref(), worst_case) {
            (Some(enforcer), Some(req), Some(worst)) => enforcer.admit(&Admission {
                request_id: &req.request_id,
                principal: &plan.principal,
                dialect: req.recognised.dialect,
                routed_model: &plan.routed_model,
                stream: plan.stream,
                worst_case: worst,
                now_ms: now,
            }),
            _ => Verdict::Proceed { response_headers: Vec::new() },
        };
        if let Some(req) = self.request.as_mut() {
            req.plan = Some(plan);
            req.routed_price = Some(price);
        }
        self.on_verdict(verdict, false)
    }

    /// Acts on an admission verdict; `resume` when the request was paused waiting for it.
    fn on_verdict(&mut self, verdict: Verdict, resume: bool) -> Action {
        match verdict {
            Verdict::Proceed { response_headers } => {
                self.phase = Phase::Forwarded;
                self.pending_response_headers = response_headers;
                if resume && host::resume_request().is_err() {
                    self.metrics.host_error();
                }
                Action::Continue
            }
            Verdict::Refuse { failure, headers } => self.reply(&failure, &headers),
            Verdict::Wait => {
                self.phase = Phase::AwaitingAdmission;
                Action::Pause
            }
        }
    }

    /// Writes the plan into the request: body, content-length, path, route headers.
    fn apply(&self, plan: &RequestPlan, original_len: usize) -> Result<(), host::HostError> {
        if let Some(body) = &plan.body {
            host::set_buffer(Buffer::RequestBody, 0, original_len, body)?;
            if self.request.as_ref().is_some_and(|r| r.had_content_length) {
                // itoa, not `to_string`: core::fmt's integer formatting is code this path needs nowhere else.
                host::set_header(Map::RequestHeaders, "content-length", itoa::Buffer::new().format(body.len()))?;
            }
        }
        if let Some(path) = &plan.path {
            host::set_header(Map::RequestHeaders, ":path", path)?;
        }
        for (name, value) in &plan.set_headers {
            host::set_header(Map::RequestHeaders, name, value)?;
        }
        Ok(())
    }

    /// The retry-loop guard (`core::guard::retry`, `crate::guard`): counts this attempt of the
    /// same work if the guard counts it, and returns the 429 when it is over the limit.
    fn retry_guard(&mut self, config: &CompiledConfig, parsed: &ParsedRequest<'_>, plan: &RequestPlan, worst_case: i64) -> Option<Failure> {
        let guard = config.guards.as_ref()?.retry.as_ref()?;
        let work = Work { principal: &plan.principal, requested_model: &plan.requested_model, routed_model: &plan.routed_model, worst_case_micros: worst_case };
        if !guard.is_expensive(&work) {
            return None;
        }
        let (now_ms, checkpoint) = self.request.as_ref().map(|r| (r.started_at_ms, r.checkpoint))?;
        let key = RetryGuard::entry_key(&plan.principal, tollgate_core::guard::fingerprint::of_request(parsed, &guard.ignored));
        let key = key.as_str();
        let metrics = self.guard_metrics.clone().unwrap_or_default();
        let Some((decision, since_ms)) = crate::guard::attempt(guard, key, now_ms, checkpoint, &metrics) else {
            self.metrics.host_error();
            return None;
        };
        // Delivered to the counter with the usage posts: the count shared across gateways.
        if let (Some(enforcer), Some(req)) = (self.enforcer.as_mut(), self.request.as_ref()) {
            enforcer.guard_event(crate::guard::event(&config.gateway_id, &req.request_id, key, &plan.principal, decision, now_ms, since_ms));
        }
        match decision {
            Decision::Pass { retry } => {
                if retry > 0 {
                    self.access_log.set_int(key!("guard_retry"), u64::from(retry));
                }
            }
            Decision::Observe { retry } => {
                self.access_log.set_int(key!("guard_retry"), u64::from(retry));
                self.access_log.set(key!("guard"), "retry_observed");
            }
            Decision::Refuse { attempts } => {
                self.access_log.set(key!("guard"), "retry_refused");
                return Some(guard.refusal(&plan.principal, attempts));
            }
        }
        // Where the client names a task: the same task after failed attempts is a retry too.
        plan.principal.task.as_ref()?;
        let task_key = RetryGuard::task_key(&plan.principal);
        let decision = crate::guard::task_attempt(guard, &task_key, now_ms, checkpoint, &metrics);
        if let Some(req) = self.request.as_mut() {
            req.guard_task = Some(task_key);
        }
        match decision? {
            Decision::Pass { .. } => None,
            Decision::Observe { .. } => {
                self.access_log.set(key!("guard"), "task_retry_observed");
                None
            }
            Decision::Refuse { attempts } => {
                self.access_log.set(key!("guard"), "task_retry_refused");
                if let Some(req) = self.request.as_mut() {
                    req.guard_task = None;
                }
                Some(guard.task_refusal(&plan.principal, attempts))
            }
        }
    }

    /// Prices and records the request; `complete` when the response reached end of stream.
    fn settle(&mut self) {
        if self.phase != Phase::Forwarded {
            return;
        }
        self.phase = Phase::Settled;
        let (Some(config), Some(req)) = (self.config.as_ref(), self.request.as_ref()) else { return };
        let (Some(plan), Some(routed_price)) = (req.plan.as_ref(), req.routed_price.as_ref()) else { return };
        let unscanned = ScanOutcome::default();
        let (status, scan) = match self.response.as_mut() {
            Some(r) => (r.status, r.scanner.as_deref_mut().map_or(&unscanned, UsageScanner::outcome)),
            None => (0, &unscanned),
        };
        let exchange = Exchange {
            gateway_id: &config.gateway_id,
            request_id: &req.request_id,
            principal: &plan.principal,
            dialect: req.recognised.dialect,
            requested_model: &plan.requested_model,
            routed_model: &plan.routed_model,
            routed_price,
            prompt_bytes: u64::try_from(plan.body_len).unwrap_or(u64::MAX),
            started_at_ms: req.started_at_ms,
        };
        // Only enforcement's ledger needs the end time; metering alone saves the host call.
        let finished_at_ms = if self.enforcer.is_some() { host::now_ms() } else { req.started_at_ms };
        // Priced without a usage record: only enforcement and the debug log read one.
        let s = settle::price(&config.prices, &exchange, scan, status);
        // A conversation turn gives its lock back with what it left in the conversation.
        if let (Some(memory), Some((id, holder, trusted))) = (&self.context_memory, self.conversation.take()) {
            let end = match (scan.tokens.as_ref(), (200..300).contains(&status)) {
                // A truncated turn was billed less than the conversation holds: a size unknown.
                (Some(_), true) if !trusted => TurnEnd::Failed,
                (Some(tokens), true) => TurnEnd::Billed(tollgate_core::context_memory::remembered_context(tokens)),
                (None, true) => TurnEnd::Unbilled,
                (_, false) => TurnEnd::Failed,
            };
            memory.release(&id, &plan.routed_model, holder, end, finished_at_ms);
        }
        // A response (or a Gemini cache) a later request may continue: remember what it was billed.
        if let (Some(memory), Some(id), Some(tokens)) = (&self.context_memory, scan.response_id.as_deref(), scan.tokens.as_ref()) {
            if let Some(reference) = Reference::created_by(req.recognised.endpoint, id).filter(|_| (200..300).contains(&status)) {
                memory.remember(&reference, &plan.routed_model, tokens, finished_at_ms, scan.expires_at_ms);
            }
        }
        let t = &s.tokens;
        let log = &mut self.access_log;
        for (name, value) in [
            (key!("tokens_input"), t.input),
            (key!("tokens_output"), t.output),
            (key!("tokens_cache_read"), t.cache_read),
            (key!("tokens_cache_write"), t.cache_write),
            (key!("tokens_reasoning"), t.reasoning),
        ] {
            log.set_int(name, value);
        }
        log.set_int(key!("cost_micros"), s.cost_micros);
        log.set_usd(key!("cost_usd"), s.cost_micros);
        log.set(key!("estimated"), if s.estimated() { "true" } else { "false" });
        let outcome = match s.ended {
            Ended::Metered => Outcome::Metered,
            Ended::Estimated => Outcome::Estimated,
            Ended::UpstreamError => Outcome::UpstreamError,
        };
        log.set(key!("outcome"), outcome.as_str());
        self.metrics.outcome(req.recognised.dialect, outcome);
        self.metrics.usage(t, s.cost_micros);
        if s.unknown_model {
            self.metrics.unknown_model();
        }
        if self.log_level.get(finished_at_ms) <= LogLevel::Debug {
            let json = serde_json::to_string(&s.record(&exchange, finished_at_ms)).unwrap_or_default();
            host::log(LogLevel::Debug, &format!("tollgate usage record: {json}"));
        }
        if let Some(key) = req.guard_task.as_deref() {
            let failed = s.status == 0 || s.status >= 400;
            let streak = crate::guard::task_outcome(key, finished_at_ms, failed);
            // Shared through the counter like the retry count (docs/guards.md).
            if let (Some(enforcer), Some(streak), Some(task)) = (self.enforcer.as_mut(), streak, plan.principal.task.as_deref()) {
                let window_ms = config.guards.as_ref().and_then(|g| g.retry.as_ref()).map_or(0, |r| r.limits.window_ms);
                enforcer.guard_event(crate::guard::outcome_event(&exchange.record_id(), key, task, streak, failed, finished_at_ms, window_ms));
            }
        }
        if let Some(task) = plan.principal.task.as_deref().filter(|_| config.guards.as_ref().is_some_and(|g| g.task_cost_header)) {
            crate::guard::add_task_cost(task, s.cost_micros);
        }
        if let Some(enforcer) = self.enforcer.as_mut() {
            enforcer.settle(&s.record(&exchange, finished_at_ms));
        }
    }

    /// A page on a banner route, at its response headers: rewrite it (`core::banner::classify`),
    /// when its principal has a budget the gateway knows, or leave it alone.
    fn page_headers(&mut self, end_of_stream: bool) {
        let Some(Page::Awaiting(principal)) = self.page.take() else { return };
        let (Some(banner), Some(metrics)) = (self.config.as_ref().and_then(|c| c.banner.as_ref()), self.banner_metrics.as_ref()) else { return };
        if end_of_stream {
            return;
        }
        let Ok(headers) = host::headers(Map::ResponseHeaders) else {
            self.metrics.host_error();
            return;
        };
        let status = header(&headers, ":status").and_then(|s| s.parse::<u16>().ok()).unwrap_or(0);
        match banner::classify(status, header(&headers, "content-type"), header(&headers, "content-encoding")) {
            banner::Response::Untouched => return,
            banner::Response::Encoded => return metrics.skipped_encoded(),
            banner::Response::Rewrite => {}
        }
        let statuses = self.enforcer.as_mut().map(|e| e.budget_statuses(&principal)).unwrap_or_default();
        let Some(status) = banner::fullest(statuses) else { return metrics.no_status() };
        let Some(rewriter) = PageRewriter::new(&banner.text(&status)) else { return metrics.failed() };
        // The page grows, so its length goes (Envoy then chunks it); its validator names the
        // page without the banner.
        if host::remove_header(Map::ResponseHeaders, "content-length").is_err() {
            self.metrics.host_error();
            return;
        }
        if header(&headers, "etag").is_some() && host::remove_header(Map::ResponseHeaders, "etag").is_err() {
            self.metrics.host_error();
        }
        self.page = Some(Page::Rewriting(Box::new(rewriter)));
    }

    /// A chunk of a page being rewritten: fed to lol_html and replaced by what it emitted.
    fn page_body(&mut self, body_size: usize, end_of_stream: bool) {
        let Some(Page::Rewriting(rewriter)) = self.page.as_mut() else { return };
        let chunk = match host::get_buffer(Buffer::ResponseBody, 0, body_size) {
            Ok(chunk) => chunk,
            Err(_) => {
                self.metrics.host_error();
                self.page = None;
                return;
            }
        };
        let (bytes, failed) = match rewriter.feed(&chunk, end_of_stream) {
            Fed::Rewritten(bytes) => (bytes, false),
            Fed::Failed(bytes) => (bytes, true),
            Fed::Untouched => return,
        };
        let injected = rewriter.injected();
        if bytes != chunk && host::set_buffer(Buffer::ResponseBody, 0, body_size, &bytes).is_err() {
            self.metrics.host_error();
            self.page = None;
            return;
        }
        if failed || end_of_stream {
            self.page = None;
            if let Some(m) = &self.banner_metrics {
                if failed {
                    m.failed();
                } else if injected {
                    m.injected();
                }
            }
        }
    }

    /// `x-tollgate-task-cost` on the response of a request that carries a task id, when configured.
    fn add_task_cost_header(&self) {
        let wanted = self.config.as_ref().and_then(|c| c.guards.as_ref()).is_some_and(|g| g.task_cost_header);
        let task = self.request.as_ref().and_then(|r| r.plan.as_ref()).and_then(|p| p.principal.task.as_deref());
        if let (true, Some(task)) = (wanted, task) {
            let cost = crate::guard::task_cost(task).unwrap_or_default();
            if host::set_header(Map::ResponseHeaders, tollgate_core::guard::TASK_COST_HEADER, &cost.header_value()).is_err() {
                self.metrics.host_error();
            }
        }
    }
}

/// The callbacks `crate::abi` delivers to an HTTP stream.
impl Stream {
    /// An answer to a lease call this request made while paused for admission.
    pub fn on_http_call_response(&mut self, token: u32, _num_headers: usize, body_size: usize, _num_trailers: usize) {
        if self.phase != Phase::AwaitingAdmission {
            return;
        }
        let body = host::get_buffer(Buffer::HttpCallResponseBody, 0, body_size).unwrap_or_default();
        let headers = host::headers(Map::HttpCallResponseHeaders).unwrap_or_default();
        let status = header(&headers, ":status").and_then(|s| s.parse::<u16>().ok());
        let now = host::now_ms();
        let verdict = self.enforcer.as_mut().and_then(|e| e.on_http_call_response(token, status, &body, now));
        if let Some(verdict) = verdict {
            // Proceed resumes the paused request; Refuse answers it locally; Wait keeps waiting.
            let _ = self.on_verdict(verdict, true);
        }
    }

    pub fn on_http_request_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        if self.phase != Phase::Start {
            return Action::Continue;
        }
        let headers = match host::headers(Map::RequestHeaders) {
            Ok(h) => h,
            Err(_) => {
                self.metrics.host_error();
                self.phase = Phase::Passthrough;
                return Action::Continue;
            }
        };
        // Client-supplied x-tollgate-* headers never reach the upstream (read below only if trusted).
        for (name, _) in headers.iter() {
            if name.starts_with(b"x-tollgate-") {
                let name = String::from_utf8_lossy(name);
                if host::remove_header(Map::RequestHeaders, &name).is_err() {
                    self.metrics.host_error();
                }
            }
        }
        let Some(config) = self.config.clone() else {
            self.phase = Phase::Passthrough;
            return Action::Continue;
        };
        let path = header(&headers, ":path").unwrap_or_default();
        let Some(recognised) = config.mounts.recognise(path) else {
            self.metrics.passthrough();
            self.phase = Phase::Passthrough;
            // Items added to a remembered conversation: it is registered before they go upstream.
            if let (Some(memory), Some(id)) = (self.context_memory.as_ref().filter(|m| m.conversations()), config.mounts.conversation_items(path)) {
                if header(&headers, ":method") == Some("POST") && !memory.note_items_write(id, host::now_ms()) {
                    self.metrics.host_error();
                    let failure = Failure::new(ErrorKind::Unavailable, "the gateway could not record this change to the conversation; retry");
                    self.phase = Phase::Replied;
                    let _ = host::send_response(failure.status(), &[("content-type", "application/json")], &failure.body(Dialect::OpenAi));
                    return Action::Pause;
                }
            }
            // The budget banner needs a status, which only enforcement has.
            if let Some(banner) = config.banner.as_ref().filter(|_| self.enforcer.is_some()) {
                if banner.covers(header(&headers, ":authority").unwrap_or_default(), path) {
                    let facts = match self.key_digests.try_borrow_mut() {
                        Ok(mut digests) => config.attribution.from_headers(|name| header(&headers, name), &mut digests),
                        Err(_) => config.attribution.from_headers(|name| header(&headers, name), &mut KeyDigests::default()),
                    };
                    self.page = Some(Page::Awaiting(config.attribution.principal(&facts, None)));
                }
            }
            return Action::Continue;
        };
        self.access_log.begin();
        // Gemini clients may send their key as `?key=`: read like `x-goog-api-key`.
        let query = if recognised.dialect == Dialect::Gemini { QueryKey::from_path(path) } else { None };
        let query_key = query.as_ref().map(|q| q.key.as_str());
        let mut facts = match self.key_digests.try_borrow_mut() {
            Ok(mut digests) => config.attribution.from_request(|name| header(&headers, name), query_key, &mut digests),
            Err(_) => config.attribution.from_request(|name| header(&headers, name), query_key, &mut KeyDigests::default()),
        };
        // A virtual key is the gateway's credential: the upstream never receives it.
        let keyless_path = query.as_ref().filter(|_| facts.virtual_key_in_query).map(|q| q.path_without.as_str());
        let virtual_key_headers = std::mem::take(&mut facts.virtual_key_headers);
        let path = keyless_path.unwrap_or(path);
        let started_at_ms = host::now_ms();
        // Unique per request even when a client reuses an x-request-id (Envoy keeps a client's
        // id unless it is the edge): usage records are deduplicated by id, so a reused id must not
        // make two requests count once. The x-request-id stays first, for correlation.
        let client_id = header(&headers, "x-request-id")
            .filter(|id| !id.is_empty() && id.len() <= 128 && id.bytes().all(|b| b.is_ascii_graphic()))
            .unwrap_or("-");
        let request_id = request_id(client_id, &self.vm_tag, self.context_id);
        let declared_len = header(&headers, "content-length").and_then(|v| v.trim().parse::<u64>().ok());
        self.access_log.set(key!("dialect"), recognised.dialect.as_str());
        self.request = Some(RequestState {
            recognised,
            facts,
            request_id,
            path: path.to_owned(),
            started_at_ms,
            had_content_length: declared_len.is_some(),
            plan: None,
            routed_price: None,
            checkpoint: crate::guard::checkpoint(config.guards.as_ref(), |name| header(&headers, name)),
            guard_task: None,
        });
        let keyless_headers = virtual_key_headers.iter().all(|name| host::remove_header(Map::RequestHeaders, name).is_ok());
        if !keyless_headers {
            self.metrics.host_error();
            let failure = Failure::new(ErrorKind::Unavailable, "the gateway could not prepare this request; retry");
            return self.reply(&failure, &[]);
        }
        if let Some(path) = keyless_path {
            if host::set_header(Map::RequestHeaders, ":path", path).is_err() {
                self.metrics.host_error();
                let failure = Failure::new(ErrorKind::Unavailable, "the gateway could not prepare this request; retry");
                return self.reply(&failure, &[]);
            }
        }
        // Usage must be readable in the response: ask for an uncompressed body.
        let identity = header(&headers, "accept-encoding").is_some_and(|v| v.trim().eq_ignore_ascii_case("identity"));
        if !identity && host::set_header(Map::RequestHeaders, "accept-encoding", "identity").is_err() {
            self.metrics.host_error();
        }
        if end_of_stream {
            let failure = Failure::new(ErrorKind::InvalidRequest, "this API call needs a JSON request body; send it as a POST with the body");
            return self.reply(&failure, &[]);
        }
        if declared_len.is_some_and(|len| len > config.max_request_body_bytes) {
            return self.too_large(config.max_request_body_bytes);
        }
        self.phase = Phase::AwaitingBody;
        Action::Pause
    }

    pub fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        if self.phase != Phase::AwaitingBody {
            return Action::Continue;
        }
        let limit = self.config.as_ref().map_or(0, |c| c.max_request_body_bytes);
        if u64::try_from(body_size).unwrap_or(u64::MAX) > limit {
            return self.too_large(limit);
        }
        if !end_of_stream {
            return Action::Pause;
        }
        match host::get_buffer(Buffer::RequestBody, 0, body_size) {
            Ok(body) => self.on_full_body(&body),
            Err(e) => self.unreadable_body(e),
        }
    }

    pub fn on_http_request_trailers(&mut self, _num_trailers: usize) -> Action {
        // A body followed by trailers ends here rather than with end_of_stream on a body chunk.
        if self.phase != Phase::AwaitingBody {
            return Action::Continue;
        }
        let limit = self.config.as_ref().map_or(0, |c| c.max_request_body_bytes);
        // One byte past the limit is enough to tell a body that is too large.
        let read = usize::try_from(limit.saturating_add(1)).unwrap_or(usize::MAX);
        match host::get_buffer(Buffer::RequestBody, 0, read) {
            Ok(body) => {
                if u64::try_from(body.len()).unwrap_or(u64::MAX) > limit {
                    return self.too_large(limit);
                }
                self.on_full_body(&body)
            }
            Err(e) => self.unreadable_body(e),
        }
    }

    pub fn on_http_response_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        if self.page.is_some() {
            self.page_headers(end_of_stream);
            return Action::Continue;
        }
        if self.phase != Phase::Forwarded {
            return Action::Continue;
        }
        let headers = host::headers(Map::ResponseHeaders).unwrap_or_default();
        let status = header(&headers, ":status").and_then(|s| s.parse::<u16>().ok()).unwrap_or(0);
        // Media types are case-insensitive; compared where they lie (no lowercased copy).
        const EVENT_STREAM: &str = "text/event-stream";
        let content_type = header(&headers, "content-type").unwrap_or_default().as_bytes();
        let sse = content_type.get(..EVENT_STREAM.len()).is_some_and(|t| {
            // As providers write it, then in any case.
            t == EVENT_STREAM.as_bytes() || t.eq_ignore_ascii_case(EVENT_STREAM.as_bytes())
        });
        let format = if sse { ResponseFormat::Sse } else { ResponseFormat::Json };
        let encoded = header(&headers, "content-encoding").is_some_and(|e| !e.trim().eq_ignore_ascii_case("identity"));
        let scanner = match (&self.request, encoded) {
            // A compressed body cannot be scanned; it is charged from an estimate.
            (_, true) => None,
            (Some(req), false) => {
                let mut scanner = crate::scanners::take(req.recognised.dialect, req.recognised.endpoint, format);
                // The usage chunk the filter asked for is not the client's (core::usage::strip).
                if req.plan.as_ref().is_some_and(|p| p.injected_include_usage) {
                    scanner.start_dropping_usage_chunk();
                }
                Some(scanner)
            }
            (None, false) => None,
        };
        self.response = Some(ResponseState { status, scanner });
        self.add_task_cost_header();
        for (name, value) in std::mem::take(&mut self.pending_response_headers) {
            let _ = host::set_header(Map::ResponseHeaders, &name, &value);
        }
        if end_of_stream {
            self.settle();
        }
        Action::Continue
    }

    pub fn on_http_response_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        if self.page.is_some() {
            self.page_body(body_size, end_of_stream);
            return Action::Continue;
        }
        if self.phase != Phase::Forwarded {
            return Action::Continue;
        }
        if let Some(scanner) = self.response.as_mut().and_then(|r| r.scanner.as_mut()) {
            if body_size > 0 {
                match host::get_buffer(Buffer::ResponseBody, 0, body_size) {
                    Ok(body) => {
                        // The body Envoy holds: what the last call held back, then the new chunk.
                        let forward = scanner.feed_forward(&body, end_of_stream);
                        if let Some(bytes) = forward.replace {
                            if host::set_buffer(Buffer::ResponseBody, 0, body_size, &bytes).is_err() {
                                self.metrics.host_error();
                            }
                        }
                        if forward.hold {
                            // Envoy keeps buffering and hands the body back with the next chunk.
                            return Action::Pause;
                        }
                    }
                    Err(_) => self.metrics.host_error(),
                }
            }
        }
        if end_of_stream {
            self.settle();
        }
        Action::Continue
    }

    pub fn on_http_response_trailers(&mut self, _num_trailers: usize) -> Action {
        // A page that ends with trailers ends without a last body chunk: whatever the rewriter
        // still held cannot be sent any more.
        if let Some(Page::Rewriting(_)) = self.page.take() {
            if let Some(b) = &self.banner_metrics {
                b.failed();
            }
        }
        self.settle();
        Action::Continue
    }

    pub fn on_log(&mut self) {
        // A request still waiting for admission was abandoned (client gone): nothing to charge.
        if self.phase == Phase::AwaitingAdmission {
            self.phase = Phase::Settled;
            if let Some(enforcer) = self.enforcer.as_mut() {
                enforcer.abandon();
            }
            self.release_conversation(true);
            self.access_log.flush();
            return;
        }
        // Cut streams (client gone, upstream reset) never saw end of stream: charge them now.
        self.settle();
        self.release_conversation(self.phase == Phase::Replied);
        // Envoy writes the access-log line after on_log.
        self.access_log.flush();
    }
}

/// `{client_id}.{vm_tag}.{context_id in hex}`, built without `format!` (the formatting
/// machinery costs more than the rest of the header phase).
fn request_id(client_id: &str, vm_tag: &str, context_id: u32) -> String {
    let mut id = String::with_capacity(client_id.len() + vm_tag.len() + 10);
    id.push_str(client_id);
    id.push('.');
    id.push_str(vm_tag);
    id.push('.');
    let digits = if context_id == 0 { 1 } else { 8 - (context_id.leading_zeros() / 4) as usize };
    for shift in (0..digits).rev() {
        let nibble = (context_id >> (shift * 4)) & 0xF;
        id.push(char::from_digit(nibble, 16).unwrap_or('0'));
    }
    id
}

/// A tag unique to this VM, part of every usage record id so two requests never share an id even
/// when clients reuse `x-request-id`: the configure time mixed with WASI randomness (std's
/// `RandomState` draws its keys from `random_get`), so workers configured in the same nanosecond
/// still differ.
fn new_vm_tag() -> String {
    use std::hash::BuildHasher;
    let now = host::now_ns();
    let salt = std::collections::hash_map::RandomState::new().hash_one(now);
    format!("{now:x}{:04x}", salt & 0xffff)
}

#[cfg(test)]
mod tests {
    use super::request_id;

    #[test]
    fn request_ids_end_in_the_context_id_in_hex() {
        for id in [0u32, 1, 0xf, 0x10, 0xabc, 0x7fff_ffff, u32::MAX] {
            assert_eq!(request_id("req-1", "tag", id), format!("req-1.tag.{id:x}"));
        }
    }
}
