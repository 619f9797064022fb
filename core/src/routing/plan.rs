//! What the filter does with one recognised request, in two steps with a gap for enforcement:
//!
//! 1. [`parse_request`]: validate the body, read the fields that matter (model, stream, max output
//!    tokens), attribute the principal. Malformed input → a 400 [`Failure`].
//! 2. (enforcement may look up the principal's budget utilization here)
//! 3. [`ParsedRequest::route`]: apply the routing table and compute the exact edits — the body's
//!    `model` spliced in place or the path segment replaced, `stream_options.include_usage` for
//!    OpenAI streams, headers to set. A deny → 403; an unresolved alias → 400.
//!
//! Everything here is pure so it is tested natively; the plugin only moves bytes to and from Envoy.

use crate::attribution::{Attribution, HeaderFacts};
use crate::context_memory::Reference;
use crate::dialect::{Dialect, Endpoint, Recognised};
use crate::errors::{ErrorKind, Failure};
use crate::json::{self, Edit, JsonError, Kind, TopLevel};
use crate::prompt_bound::{self, Shape};
use crate::protocol::Principal;
use crate::routing::{RouteInput, RoutingTable};

/// A validated request body and what it says.
#[derive(Debug, Clone)]
pub struct ParsedRequest<'b> {
    body: &'b [u8],
    top: TopLevel,
    pub dialect: Dialect,
    pub endpoint: Endpoint,
    pub principal: Principal,
    /// The model the client asked for (body `model`, or the Azure deployment / Gemini path model).
    pub requested_model: String,
    pub stream: bool,
    /// The output cap the client set (`max_tokens`, `max_completion_tokens`, `max_output_tokens`,
    /// Gemini `generationConfig.maxOutputTokens`), for enforcement's worst case.
    pub max_output_tokens: Option<u64>,
    /// How the billed prompt can exceed the body, if it can (`core::prompt_bound`).
    pub remote_prompt: Option<Shape>,
    /// The stored response the request continues, when that is its only provider-held shape:
    /// the response-id memory may bound its prompt tighter than the window (`core::context_memory`).
    pub context_reference: Option<Reference>,
    /// The provider may drop input items to fit the window (`prompt_bound::truncates`).
    pub truncates: bool,
    /// Set by [`ParsedRequest::downgrade`]: the model to send is not the body's any more.
    downgraded: bool,
}

/// The routed request: what to send upstream and what to record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestPlan {
    pub principal: Principal,
    pub requested_model: String,
    /// The model the upstream is asked for (equals `requested_model` when no rule changed it).
    pub routed_model: String,
    /// The routing rule that matched, if any.
    pub rule: Option<String>,
    /// Request headers to set.
    pub set_headers: Vec<(String, String)>,
    /// The new body, when it changed; every byte other than the edits is the client's.
    pub body: Option<Vec<u8>>,
    /// The new `:path`, when the model lives in the path and changed.
    pub path: Option<String>,
    pub stream: bool,
    /// Whether `stream_options.include_usage` was added or set to true.
    pub injected_include_usage: bool,
    pub max_output_tokens: Option<u64>,
    /// How the billed prompt can exceed the body, if it can: the reservation then bounds the
    /// prompt by the model's context window (`EstimateConfig::prompt_tokens_bound`).
    pub remote_prompt: Option<Shape>,
    /// See [`ParsedRequest::context_reference`].
    pub context_reference: Option<Reference>,
    /// See [`ParsedRequest::truncates`].
    pub truncates: bool,
    /// Bytes of the body forwarded upstream (the prompt size estimates start from).
    pub body_len: usize,
}

/// Step 1: validates the body and attributes the request.
pub fn parse_request<'b>(
    attribution: &Attribution,
    recognised: &Recognised,
    headers: &HeaderFacts,
    body: &'b [u8],
) -> Result<ParsedRequest<'b>, Failure> {
    parse_request_scanning(attribution, recognised, headers, body, Scan::Plain)
}

/// How [`parse_request_scanning`] scans the body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scan {
    Plain,
    /// Also hashes each top-level value on the way ([`json::scan_object_fingerprinting`]): for a
    /// gateway with a retry guard, which fingerprints every request it counts.
    Fingerprinting,
}

/// [`parse_request`], scanning the body as `scan` says.
pub fn parse_request_scanning<'b>(
    attribution: &Attribution,
    recognised: &Recognised,
    headers: &HeaderFacts,
    body: &'b [u8],
    scan: Scan,
) -> Result<ParsedRequest<'b>, Failure> {
    // One pass validates the body and notes the strings that mark a prompt living elsewhere.
    let watch = prompt_bound::watch_list(recognised.endpoint);
    let top = match scan {
        Scan::Plain => json::scan_object_watching(body, watch),
        Scan::Fingerprinting => json::scan_object_fingerprinting(body, watch),
    }
    .map_err(body_failure)?;
    let requested_model = match &recognised.path_model {
        Some((model, _)) => model.clone(),
        None => match top.get("model") {
            Some(m) if m.kind == Kind::String => {
                let model = json::decode_string(body, m.value.clone()).map_err(body_failure)?;
                if model.trim().is_empty() {
                    return Err(invalid("\"model\" must not be empty; name the model to call", "model"));
                }
                model.into_owned()
            }
            Some(m) => return Err(invalid(format!("\"model\" must be a string, got {}", m.kind.as_str()), "model")),
            None => return Err(invalid("\"model\" is required; name the model to call", "model")),
        },
    };
    // A Gemini cache names its model as a resource (`models/gemini-…`); routing and pricing know
    // the bare name the generation paths carry.
    let requested_model = match recognised.endpoint {
        Endpoint::CreateCachedContent => match crate::context_memory::model_key(&requested_model) {
            "" => return Err(invalid("\"model\" must name the model the cache is for (models/…)", "model")),
            bare => bare.to_owned(),
        },
        _ => requested_model,
    };
    let stream = match recognised.endpoint {
        Endpoint::StreamGenerateContent => true,
        Endpoint::GenerateContent | Endpoint::Embeddings | Endpoint::CreateCachedContent => false,
        _ => match top.get("stream") {
            None => false,
            Some(m) if m.kind == Kind::Null => false,
            Some(m) if m.kind == Kind::Bool => body.get(m.value.clone()) == Some(b"true".as_slice()),
            Some(m) => return Err(invalid(format!("\"stream\" must be true or false, got {}", m.kind.as_str()), "stream")),
        },
    };
    let max_output_tokens = max_output_tokens(body, &top, recognised.endpoint)?;
    let remote_prompt = prompt_bound::detect(recognised.endpoint, body, &top)?;
    let context_reference = prompt_bound::detect_reference(recognised.endpoint, body, &top, remote_prompt);
    let truncates = matches!(context_reference, Some(Reference::Conversation(_))) && prompt_bound::truncates(body, &top);
    let principal = attribution.principal(headers, Some((body, &top)));
    Ok(ParsedRequest {
        body,
        top,
        dialect: recognised.dialect,
        endpoint: recognised.endpoint,
        principal,
        requested_model,
        stream,
        max_output_tokens,
        remote_prompt,
        context_reference,
        truncates,
        downgraded: false,
    })
}

impl ParsedRequest<'_> {
    /// Step 3: routes and computes the edits. `path` is the request's `:path`;
    /// `budget_utilization_pct` comes from enforcement (`None` when metering only).
    pub fn route(
        &self,
        routing: &RoutingTable,
        recognised: &Recognised,
        path: &str,
        budget_utilization_pct: Option<u32>,
    ) -> Result<RequestPlan, Failure> {
        let routed = routing.route(RouteInput {
            principal: &self.principal,
            dialect: self.dialect,
            requested_model: &self.requested_model,
            budget_utilization_pct,
        })?;
        let mut edits: Vec<Edit> = Vec::new();
        let mut new_path = None;
        let rerouted = self.downgraded || routed.model != self.requested_model;
        if rerouted && self.endpoint == Endpoint::CreateCachedContent {
            // A cache serves only the model it was created for, and the generations that read it
            // are routed by their own path model: the gateway never creates it for another model
            // than the one named, and says which one the rules would serve instead.
            let rule = routed.rule.map_or_else(|| "a guard's fallback".to_owned(), |r| format!("routing rule \"{r}\""));
            return Err(invalid(
                format!(
                    "a context cache is tied to its model, and {rule} serves \"{}\" as \"{}\" for this caller; create the cache for \"{}\"",
                    self.requested_model, routed.model, routed.model
                ),
                "model",
            ));
        }
        if rerouted {
            match &recognised.path_model {
                Some((_, range)) => {
                    let (Some(head), Some(tail)) = (path.get(..range.start), path.get(range.end..)) else {
                        return Err(Failure::new(ErrorKind::InvalidRequest, "the request path changed while it was routed; retry"));
                    };
                    new_path = Some(format!("{head}{}{tail}", encode_path_segment(&routed.model)));
                }
                None => {
                    if let Some(m) = self.top.get("model") {
                        edits.push(Edit { range: m.value.clone(), bytes: json::quote(&routed.model) });
                    }
                }
            }
        }
        let wants_usage_option = matches!(self.dialect, Dialect::OpenAi | Dialect::AzureOpenAi)
            && matches!(self.endpoint, Endpoint::Chat | Endpoint::Completions)
            && self.stream;
        let mut injected_include_usage = false;
        if wants_usage_option {
            let usage_edits = json::include_usage_edits(self.body, &self.top)
                .map_err(|_| invalid("\"stream_options\" must be an object", "stream_options"))?;
            injected_include_usage = !usage_edits.is_empty();
            edits.extend(usage_edits);
        }
        let body = (!edits.is_empty()).then(|| json::apply_edits(self.body, edits));
        let body_len = body.as_ref().map_or(self.body.len(), Vec::len);
        Ok(RequestPlan {
            principal: self.principal.clone(),
            requested_model: self.requested_model.clone(),
            routed_model: routed.model,
            rule: routed.rule.map(str::to_owned),
            set_headers: routed.set_headers.to_vec(),
            body,
            path: new_path,
            stream: self.stream,
            injected_include_usage,
            max_output_tokens: self.max_output_tokens,
            remote_prompt: self.remote_prompt,
            context_reference: self.context_reference.clone(),
            truncates: self.truncates,
            body_len,
        })
    }
}

impl ParsedRequest<'_> {
    /// Serves the request with `model` instead of the one asked for (a guard's fallback, e.g.
    /// `tier:standard`); routing then resolves it like a requested model.
    pub fn downgrade(&mut self, model: String) {
        self.requested_model = model;
        self.downgraded = true;
    }

    /// The body and the top-level members the scan found in it: what the retry guard's
    /// fingerprint hashes (`core::guard::fingerprint::of_request`), with no second parse.
    pub fn scanned_body(&self) -> (&[u8], &TopLevel) {
        (self.body, &self.top)
    }
}

fn invalid(message: impl Into<String>, param: &str) -> Failure {
    Failure::new(ErrorKind::InvalidRequest, message).with_param(param)
}

fn body_failure(e: JsonError) -> Failure {
    let message = match &e {
        JsonError::DuplicateKey(_) | JsonError::NotAnObject => e.to_string(),
        _ => format!("the request body is not valid JSON ({e}); send one complete JSON object"),
    };
    Failure::new(ErrorKind::InvalidRequest, message)
}

/// The client's output cap, by endpoint. When several spellings are present the larger counts
/// (the worst case is what enforcement reserves).
fn max_output_tokens(body: &[u8], top: &TopLevel, endpoint: Endpoint) -> Result<Option<u64>, Failure> {
    let read = |object: &TopLevel, key: &str| -> Result<Option<u64>, Failure> {
        match object.get(key) {
            None => Ok(None),
            Some(m) if m.kind == Kind::Null => Ok(None),
            Some(m) => json::integer_value(body, m.value.clone())
                .map(Some)
                .ok_or_else(|| invalid(format!("\"{key}\" must be a non-negative integer"), key)),
        }
    };
    let keys: &[&str] = match endpoint {
        Endpoint::Chat => &["max_completion_tokens", "max_tokens"],
        Endpoint::Completions | Endpoint::Messages => &["max_tokens"],
        Endpoint::Responses => &["max_output_tokens"],
        Endpoint::Embeddings => &[],
        // Creating a cache generates nothing: no output to reserve.
        Endpoint::CreateCachedContent => return Ok(Some(0)),
        Endpoint::GenerateContent | Endpoint::StreamGenerateContent => {
            let mut best = None;
            for (outer, inner) in [("generationConfig", "maxOutputTokens"), ("generation_config", "max_output_tokens")] {
                if let Some(m) = top.get(outer).filter(|m| m.kind == Kind::Object) {
                    let nested = json::scan_nested(body, m.value.clone()).map_err(body_failure)?;
                    best = best.max(read(&nested, inner)?);
                }
            }
            return Ok(best);
        }
    };
    let mut best = None;
    for key in keys {
        best = best.max(read(top, key)?);
    }
    Ok(best)
}

/// Percent-encodes a model name for a path segment (unreserved characters stay as they are).
fn encode_path_segment(model: &str) -> String {
    let mut out = String::with_capacity(model.len());
    for b in model.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~@".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{CompiledConfig, FilterConfig};

    fn config(json: &str) -> CompiledConfig {
        FilterConfig::from_json(json.as_bytes()).unwrap()
    }

    fn plan(cfg: &CompiledConfig, path: &str, headers: &[(&str, &str)], body: &str) -> Result<RequestPlan, Failure> {
        let recognised = cfg.mounts.recognise(path).expect("recognised");
        let facts = cfg.attribution.from_headers(|n| headers.iter().find(|(k, _)| *k == n).map(|(_, v)| *v), &mut Default::default());
        let parsed = parse_request(&cfg.attribution, &recognised, &facts, body.as_bytes())?;
        parsed.route(&cfg.routing, &recognised, path, None)
    }

    fn body_text(p: &RequestPlan) -> String {
        String::from_utf8(p.body.clone().unwrap()).unwrap()
    }

    const RULES: &str = r#"{
        "attribution": {"trusted_headers": {"team": "x-tollgate-team", "tier": "x-tier"}},
        "routing": {"rules": [
            {"name": "no-interns", "match": {"team": "interns"}, "deny": true, "message": "interns use the sandbox"},
            {"name": "premium", "match": {"tier": "premium", "model": "tier:premium"}, "set_model": "gpt-4o", "set_headers": {"x-tollgate-provider": "openai"}},
            {"name": "gemini-down", "match": {"dialect": "gemini"}, "set_model": "gemini-2.0-flash"},
            {"name": "azure-down", "match": {"dialect": "azure_openai"}, "set_model": "gpt-4o-mini"}
        ]}}"#;

    #[test]
    fn openai_stream_gets_model_spliced_and_usage_requested_other_bytes_untouched() {
        let cfg = config(RULES);
        let body = r#"{"model": "tier:premium", "messages":[{"role":"user","content":"hi"}], "stream": true}"#;
        let p = plan(&cfg, "/v1/chat/completions", &[("x-tier", "premium")], body).unwrap();
        assert_eq!(
            body_text(&p),
            r#"{"model": "gpt-4o", "messages":[{"role":"user","content":"hi"}], "stream": true,"stream_options":{"include_usage":true}}"#
        );
        assert_eq!((p.requested_model.as_str(), p.routed_model.as_str(), p.rule.as_deref()), ("tier:premium", "gpt-4o", Some("premium")));
        assert!(p.stream && p.injected_include_usage);
        assert_eq!(p.set_headers, vec![("x-tollgate-provider".to_string(), "openai".to_string())]);
        assert_eq!(p.body_len, p.body.as_ref().unwrap().len());
    }

    #[test]
    fn an_unchanged_request_keeps_its_body() {
        let cfg = config(RULES);
        let p = plan(&cfg, "/v1/messages", &[], r#"{"model":"claude-sonnet-4","max_tokens":512,"stream":true,"messages":[]}"#).unwrap();
        assert_eq!((p.body.is_none(), p.path.is_none(), p.stream, p.max_output_tokens), (true, true, true, Some(512)));
        assert!(!p.injected_include_usage, "only OpenAI needs include_usage");
    }

    #[test]
    fn path_models_are_rewritten_in_the_path() {
        let cfg = config(RULES);
        let p = plan(&cfg, "/v1beta/models/gemini-2.5-pro:streamGenerateContent?alt=sse", &[], r#"{"contents":[],"generationConfig":{"maxOutputTokens":100}}"#).unwrap();
        assert_eq!(p.path.as_deref(), Some("/v1beta/models/gemini-2.0-flash:streamGenerateContent?alt=sse"));
        assert_eq!((p.stream, p.max_output_tokens, p.body.is_none()), (true, Some(100), true));
        let p = plan(&cfg, "/openai/deployments/gpt4o/chat/completions?api-version=1", &[], r#"{"messages":[],"stream":true}"#).unwrap();
        assert_eq!(p.path.as_deref(), Some("/openai/deployments/gpt-4o-mini/chat/completions?api-version=1"));
        assert_eq!(p.requested_model, "gpt4o");
        assert!(p.injected_include_usage, "Azure chat streams get include_usage too");
    }

    #[test]
    fn denied_and_bad_requests_fail_with_what_to_do() {
        let cfg = config(RULES);
        let deny = plan(&cfg, "/v1/messages", &[("x-tollgate-team", "interns")], r#"{"model":"m"}"#).unwrap_err();
        assert_eq!((deny.status(), deny.message.as_str()), (403, "denied by routing rule \"no-interns\": interns use the sandbox"));
        let check = |body: &str, needle: &str| {
            let f = plan(&cfg, "/v1/chat/completions", &[], body).unwrap_err();
            assert_eq!(f.status(), 400, "{body}");
            assert!(f.message.contains(needle), "{body}: {}", f.message);
        };
        check(r#"{"model":123}"#, "\"model\" must be a string, got a number");
        check(r#"{"messages":[]}"#, "\"model\" is required");
        check(r#"{"model":"m","stream":"yes"}"#, "\"stream\" must be true or false");
        check(r#"{"model":"m","max_tokens":-5}"#, "\"max_tokens\" must be a non-negative integer");
        check(r#"{"model":"m""#, "not valid JSON");
        check(r#"{"model":"a","model":"b"}"#, "appears more than once");
        check(r#"[1]"#, "must be a JSON object");
        check(r#"{"model":"m","stream":true,"stream_options":5}"#, "stream_options");
        check(r#"{"model":"tier:premium"}"#, "no routing rule resolves it");
        let invalid_utf8 = plan(&cfg, "/v1/chat/completions", &[], "{\"model\":\"\u{0}\"}");
        assert!(invalid_utf8.is_err());
    }

    #[test]
    fn a_cache_is_created_for_the_model_named_or_refused_never_rerouted() {
        let cfg = config(RULES);
        let body = r#"{"model":"models/gemini-2.0-flash","contents":[{"role":"user","parts":[{"text":"a long document"}]}],"ttl":"300s"}"#;
        let p = plan(&cfg, "/v1beta/cachedContents", &[], body).unwrap();
        assert_eq!((p.requested_model.as_str(), p.routed_model.as_str()), ("gemini-2.0-flash", "gemini-2.0-flash"), "routing sees the bare name");
        assert_eq!((p.body.as_ref(), p.path.as_ref(), p.stream), (None, None, false), "nothing is rewritten");
        assert_eq!(p.max_output_tokens, Some(0), "a cache generates nothing");
        assert_eq!(p.context_reference, None);
        // The bare name works too (what the SDKs send varies).
        let p = plan(&cfg, "/v1beta/cachedContents", &[], r#"{"model":"gemini-2.0-flash","contents":[]}"#).unwrap();
        assert_eq!(p.routed_model, "gemini-2.0-flash");
        // "gemini-down" serves every Gemini model as gemini-2.0-flash: a cache for another model
        // would be useless behind it, so it is refused, naming the model to use.
        let f = plan(&cfg, "/v1beta/cachedContents", &[], r#"{"model":"models/gemini-1.5-pro","contents":[]}"#).unwrap_err();
        assert_eq!((f.status(), f.param.as_deref()), (400, Some("model")));
        assert!(f.message.contains(r#"routing rule "gemini-down" serves "gemini-1.5-pro" as "gemini-2.0-flash""#), "{}", f.message);
        // Deny rules and the usual body errors still apply.
        let deny = plan(&cfg, "/v1beta/cachedContents", &[("x-tollgate-team", "interns")], body).unwrap_err();
        assert_eq!(deny.status(), 403);
        for (body, needle) in [
            (r#"{"contents":[]}"#, "\"model\" is required"),
            (r#"{"model":"models/","contents":[]}"#, "must name the model the cache is for"),
            (r#"{"model":7,"contents":[]}"#, "must be a string"),
        ] {
            let f = plan(&cfg, "/v1beta/cachedContents", &[], body).unwrap_err();
            assert_eq!(f.status(), 400, "{body}");
            assert!(f.message.contains(needle), "{body}: {}", f.message);
        }
    }

    #[test]
    fn max_output_takes_the_largest_spelling() {
        let cfg = config("{}");
        let p = plan(&cfg, "/v1/chat/completions", &[], r#"{"model":"m","max_tokens":10,"max_completion_tokens":300}"#).unwrap();
        assert_eq!(p.max_output_tokens, Some(300));
        let p = plan(&cfg, "/v1/responses", &[], r#"{"model":"m","max_output_tokens":7,"stream":true}"#).unwrap();
        assert_eq!((p.max_output_tokens, p.injected_include_usage), (Some(7), false));
        let p = plan(&cfg, "/v1/embeddings", &[], r#"{"model":"m","input":"x"}"#).unwrap();
        assert_eq!(p.max_output_tokens, None);
    }

    #[test]
    fn the_plan_carries_how_the_prompt_can_exceed_the_body() {
        let cfg = config("{}");
        let p = plan(&cfg, "/v1/responses", &[], r#"{"model":"m","previous_response_id":"resp_1","input":"more"}"#).unwrap();
        assert_eq!(p.remote_prompt, Some(Shape::PreviousResponse));
        let p = plan(&cfg, "/v1beta/models/gemini-2.5-pro:generateContent", &[], r#"{"cachedContent":"cachedContents/c1","contents":[]}"#).unwrap();
        assert_eq!(p.remote_prompt, Some(Shape::CachedContent));
        let p = plan(&cfg, "/v1/chat/completions", &[], r#"{"model":"m","messages":[{"role":"user","content":"hi"}]}"#).unwrap();
        assert_eq!(p.remote_prompt, None);
        let bad = plan(&cfg, "/v1/responses", &[], r#"{"model":"m","previous_response_id":1}"#).unwrap_err();
        assert_eq!((bad.status(), bad.param.as_deref()), (400, Some("previous_response_id")));
    }

    #[test]
    fn path_segments_are_encoded() {
        assert_eq!(encode_path_segment("gemini-2.0-flash"), "gemini-2.0-flash");
        assert_eq!(encode_path_segment("a/b c:d"), "a%2Fb%20c%3Ad");
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;
        use serde_json::{json, Value};

        fn arb_leaf() -> impl Strategy<Value = Value> {
            prop_oneof![
                Just(Value::Null),
                any::<bool>().prop_map(Value::from),
                any::<i32>().prop_map(Value::from),
                "[a-z \"\\\\\u{e9}\u{1F600}]{0,12}".prop_map(Value::from),
            ]
        }

        fn arb_body() -> impl Strategy<Value = Value> {
            (
                "[a-z0-9.\\-\"\\\\\u{e9}]{1,16}",
                any::<bool>(),
                prop::collection::btree_map("[a-z_]{1,8}", arb_leaf(), 0..6),
                prop::option::of(prop::collection::btree_map("[a-z_]{1,8}", arb_leaf(), 0..3)),
            )
                .prop_map(|(model, stream, extra, options)| {
                    let mut body = serde_json::Map::new();
                    for (k, v) in extra {
                        body.insert(k, v);
                    }
                    body.insert("model".into(), Value::from(model));
                    body.insert("stream".into(), Value::from(stream));
                    if let Some(options) = options {
                        body.insert("stream_options".into(), Value::Object(options.into_iter().collect()));
                    }
                    Value::Object(body)
                })
        }

        proptest! {
            /// What a strict JSON parser reads from the rewritten body is exactly the client's
            /// body with the routed model, plus include_usage for a stream — nothing else moved.
            #[test]
            fn the_upstream_reads_the_routed_model_and_nothing_else_changes(body in arb_body(), pretty in any::<bool>()) {
                let cfg = config(r#"{"routing":{"rules":[{"name":"all","set_model":"routed-\"model\""}]}}"#);
                let text = if pretty { serde_json::to_string_pretty(&body).unwrap() } else { body.to_string() };
                let p = plan(&cfg, "/v1/chat/completions", &[], &text).unwrap();
                prop_assert_eq!(p.requested_model.as_str(), body["model"].as_str().unwrap(), "we read what a strict parser reads");
                let forwarded: Value = serde_json::from_slice(p.body.as_deref().unwrap_or(text.as_bytes())).unwrap();
                let mut expected = body.clone();
                expected["model"] = json!("routed-\"model\"");
                if body["stream"] == json!(true) {
                    let options = expected.as_object_mut().unwrap().entry("stream_options").or_insert(json!({}));
                    options["include_usage"] = json!(true);
                }
                prop_assert_eq!(forwarded, expected);
            }
        }
    }
}
