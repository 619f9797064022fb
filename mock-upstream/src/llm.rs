//! The LLM APIs the mock speaks: which API a path is, what the request asks for, and the
//! response bodies (JSON and SSE) with realistic usage objects.
//!
//! Token counts are deterministic so tests can predict them:
//! - prompt tokens = ceil(request body bytes / 4), at least 1 (or `x-mock-input-tokens`);
//! - output tokens = 4 × events (or `x-mock-output-tokens`), capped by the request's max tokens
//!   (`max_tokens`, `max_completion_tokens`, `max_output_tokens`,
//!   `generationConfig.maxOutputTokens`); a capped answer ends with the dialect's "length" reason;
//! - cached / cache-write / reasoning tokens only when asked for (`x-mock-*-tokens`).
//!
//! Bodies are written with `write!` into one string rather than built as `serde_json::Value`s:
//! the mock is the benchmark's upstream too, and must stay cheap.

use std::borrow::Cow;
use std::fmt::Write as _;

use serde::Deserialize;

use crate::controls::Controls;

/// The API a request path belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Api {
    OpenAiChat,
    OpenAiCompletions,
    OpenAiEmbeddings,
    OpenAiResponses,
    AnthropicMessages,
    GeminiGenerate,
    GeminiStream,
    /// `POST /v1beta/cachedContents`: creates a context cache ([`cached_content`]).
    GeminiCreateCache,
}

/// The error JSON family an API answers in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    OpenAi,
    Anthropic,
    Gemini,
}

impl Api {
    pub fn family(self) -> Family {
        match self {
            Api::AnthropicMessages => Family::Anthropic,
            Api::GeminiGenerate | Api::GeminiStream | Api::GeminiCreateCache => Family::Gemini,
            _ => Family::OpenAi,
        }
    }
}

/// A recognised request path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub api: Api,
    /// Azure OpenAI (`/openai/deployments/{deployment}/...`).
    pub azure: bool,
    /// The model named in the path (Azure deployment, Gemini model).
    pub path_model: Option<String>,
}

/// Recognises an LLM API by path suffix, so any mount prefix works (`/openai/v1/chat/completions`).
pub fn recognise(path: &str) -> Option<Route> {
    if let Some((before, method)) = path.rsplit_once(':') {
        let api = match method {
            "generateContent" => Api::GeminiGenerate,
            "streamGenerateContent" => Api::GeminiStream,
            _ => return None,
        };
        let model = before.rsplit_once("/models/").map(|(_, m)| m.to_string());
        return Some(Route { api, azure: false, path_model: model });
    }
    let api = if path.ends_with("/cachedContents") {
        Api::GeminiCreateCache
    } else if path.ends_with("/chat/completions") {
        Api::OpenAiChat
    } else if path.ends_with("/embeddings") {
        Api::OpenAiEmbeddings
    } else if path.ends_with("/completions") {
        Api::OpenAiCompletions
    } else if path.ends_with("/responses") {
        Api::OpenAiResponses
    } else if path.ends_with("/messages") {
        Api::AnthropicMessages
    } else {
        return None;
    };
    let deployment = path
        .split_once("/openai/deployments/")
        .and_then(|(_, rest)| rest.split('/').next())
        .filter(|d| !d.is_empty())
        .map(str::to_string);
    Some(Route { api, azure: deployment.is_some(), path_model: deployment })
}

#[derive(Deserialize, Default)]
struct StreamOptions {
    #[serde(default)]
    include_usage: Option<bool>,
}

#[derive(Deserialize, Default)]
struct GenerationConfig {
    #[serde(default, rename = "maxOutputTokens")]
    max_output_tokens: Option<u64>,
}

/// The request members the mock acts on; everything else is skipped without allocating.
#[derive(Deserialize, Default)]
struct RequestFields<'a> {
    #[serde(borrow, default)]
    model: Option<Cow<'a, str>>,
    #[serde(default)]
    stream: Option<bool>,
    #[serde(default)]
    stream_options: Option<StreamOptions>,
    #[serde(default)]
    max_tokens: Option<u64>,
    #[serde(default)]
    max_completion_tokens: Option<u64>,
    #[serde(default)]
    max_output_tokens: Option<u64>,
    #[serde(default, rename = "generationConfig")]
    generation_config: Option<GenerationConfig>,
    /// A cache's `ttl` (`"300s"`).
    #[serde(borrow, default)]
    ttl: Option<Cow<'a, str>>,
}

/// What one request asks for, after reading its body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ask {
    pub model: String,
    pub stream: bool,
    pub include_usage: bool,
    pub max_output: Option<u64>,
    /// Embeddings: how many inputs.
    pub inputs: usize,
    /// Gemini streams as SSE only with `?alt=sse`; otherwise as a JSON array sent piece by piece.
    pub gemini_sse: bool,
    /// A cache creation's `ttl` in seconds (Google's default: one hour).
    pub ttl_s: u64,
}

/// Reads the request body. `Err` carries a message for a 400 in the dialect's shape.
pub fn read_ask(route: &Route, body: &[u8], query: &str) -> Result<Ask, String> {
    let f: RequestFields = serde_json::from_slice(body).map_err(|e| format!("mock-llm: the request body is not a valid request: {e}"))?;
    let model = match (&route.path_model, f.model) {
        (Some(m), None) => m.clone(),
        (_, Some(m)) => m.into_owned(),
        (None, None) => return Err("mock-llm: the request names no model".to_string()),
    };
    let stream = match route.api {
        Api::GeminiStream => true,
        Api::GeminiGenerate | Api::OpenAiEmbeddings | Api::GeminiCreateCache => false,
        _ => f.stream.unwrap_or(false),
    };
    let gemini_sse = query.split('&').any(|kv| kv == "alt=sse");
    let include_usage = f.stream_options.and_then(|o| o.include_usage).unwrap_or(false);
    let max_output = f
        .max_completion_tokens
        .or(f.max_tokens)
        .or(f.max_output_tokens)
        .or(f.generation_config.and_then(|g| g.max_output_tokens));
    let inputs = if route.api == Api::OpenAiEmbeddings {
        match serde_json::from_slice::<serde_json::Value>(body).ok().and_then(|v| v.get("input").cloned()) {
            Some(serde_json::Value::Array(items)) if !items.is_empty() && !items[0].is_number() => items.len(),
            _ => 1,
        }
    } else {
        0
    };
    let ttl_s = match f.ttl.as_deref() {
        None => 3600,
        Some(t) => t
            .strip_suffix('s')
            .and_then(|n| n.split('.').next()?.parse().ok())
            .ok_or_else(|| format!("mock-llm: \"ttl\" must be a duration like \"300s\", got {t:?}"))?,
    };
    Ok(Ask { model, stream, include_usage, max_output, inputs, gemini_sse, ttl_s })
}

/// Token counts of one answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    /// All prompt tokens, cached ones included.
    pub prompt: u64,
    pub cached: u64,
    pub cache_write: u64,
    /// All output tokens, reasoning included.
    pub output: u64,
    pub reasoning: u64,
    /// The output hit the request's max tokens.
    pub truncated: bool,
}

impl Usage {
    pub fn compute(api: Api, body_len: usize, ask: &Ask, c: &Controls) -> Usage {
        let prompt = c.input_tokens.unwrap_or((body_len as u64).div_ceil(4)).max(1);
        let cached = c.cached_tokens.min(prompt);
        let cache_write = c.cache_write_tokens.min(prompt - cached);
        let mut output = c.output_tokens.unwrap_or(4 * u64::from(c.events));
        let mut truncated = false;
        if let Some(cap) = ask.max_output {
            if output > cap {
                output = cap;
                truncated = true;
            }
        }
        if matches!(api, Api::OpenAiEmbeddings | Api::GeminiCreateCache) {
            output = 0;
        }
        let reasoning = c.reasoning_tokens.min(output);
        Usage { prompt, cached, cache_write, output, reasoning, truncated }
    }
}

/// The text of content piece `i` (the answer is the concatenation of all pieces).
pub fn piece(i: u32) -> String {
    if i == 0 {
        "Hello".to_string()
    } else {
        format!(" from mock {i}")
    }
}

/// A response body in the making: the events of a stream (split into prelude, content and
/// trailer so a cut can keep exactly the prelude and some content), or one JSON document.
pub struct Body {
    pub content_type: &'static str,
    pub prelude: Vec<String>,
    pub content: Vec<String>,
    pub trailer: Vec<String>,
    pub streaming: bool,
}

fn q(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".to_string())
}

fn sse_data(json: &str) -> String {
    format!("data: {json}\n\n")
}

fn sse_event(name: &str, json: &str) -> String {
    format!("event: {name}\ndata: {json}\n\n")
}

const CREATED: u64 = 1_700_000_000;

/// Builds the successful answer for a request.
pub fn answer(route: &Route, ask: &Ask, u: &Usage, events: u32, seq: u64) -> Body {
    let model = q(&ask.model);
    let text: String = (0..events).map(piece).collect();
    match route.api {
        Api::OpenAiChat => openai_chat(route.azure, ask, u, events, seq, &model, &text),
        Api::OpenAiCompletions => openai_completions(ask, u, events, seq, &model, &text),
        Api::OpenAiEmbeddings => openai_embeddings(ask, u, &model),
        Api::OpenAiResponses => openai_responses(ask, u, events, seq, &model, &text),
        Api::AnthropicMessages => anthropic(ask, u, events, seq, &model, &text),
        Api::GeminiGenerate | Api::GeminiStream => {
            let stream = (route.api == Api::GeminiStream).then_some(ask.gemini_sse);
            gemini(stream, u, events, seq, &model, &text)
        }
        // Its times need the clock: the server answers with `cached_content` instead.
        Api::GeminiCreateCache => cached_content(ask, u, seq, 0),
    }
}

/// The `CachedContent` Google answers a creation with: its `name` (`cachedContents/mock-{seq}`),
/// the model, `usageMetadata.totalTokenCount` (the cache's size: the prompt tokens) and
/// `createTime` / `updateTime` / `expireTime` (`now_ms` + the request's `ttl`) as RFC 3339.
pub fn cached_content(ask: &Ask, u: &Usage, seq: u64, now_ms: i64) -> Body {
    let created = rfc3339(now_ms);
    let expires = rfc3339(now_ms.saturating_add(i64::try_from(ask.ttl_s).unwrap_or(i64::MAX / 2000).saturating_mul(1000)));
    json_body(format!(
        r#"{{"name":"cachedContents/mock-{seq}","model":{model},"createTime":"{created}","updateTime":"{created}","expireTime":"{expires}","displayName":"","usageMetadata":{{"totalTokenCount":{t}}}}}"#,
        model = q(&ask.model),
        t = u.prompt
    ))
}

/// Milliseconds since the Unix epoch as `2025-01-02T03:04:05.678Z` (Howard Hinnant's
/// civil-from-days, proleptic Gregorian).
fn rfc3339(ms: i64) -> String {
    let (days, in_day) = (ms.div_euclid(86_400_000), ms.rem_euclid(86_400_000));
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let (h, m, sec, milli) = (in_day / 3_600_000, in_day / 60_000 % 60, in_day / 1000 % 60, in_day % 1000);
    format!("{year:04}-{month:02}-{day:02}T{h:02}:{m:02}:{sec:02}.{milli:03}Z")
}

fn json_body(doc: String) -> Body {
    Body { content_type: "application/json", prelude: Vec::new(), content: vec![doc], trailer: Vec::new(), streaming: false }
}

fn chat_usage(u: &Usage) -> String {
    format!(
        r#"{{"prompt_tokens":{p},"completion_tokens":{c},"total_tokens":{t},"prompt_tokens_details":{{"cached_tokens":{k},"audio_tokens":0}},"completion_tokens_details":{{"reasoning_tokens":{r},"audio_tokens":0,"accepted_prediction_tokens":0,"rejected_prediction_tokens":0}}}}"#,
        p = u.prompt,
        c = u.output,
        t = u.prompt + u.output,
        k = u.cached,
        r = u.reasoning
    )
}

fn openai_chat(azure: bool, ask: &Ask, u: &Usage, events: u32, seq: u64, model: &str, text: &str) -> Body {
    let finish = if u.truncated { "length" } else { "stop" };
    let id = format!("chatcmpl-mock-{seq}");
    if !ask.stream {
        return json_body(format!(
            r#"{{"id":"{id}","object":"chat.completion","created":{CREATED},"model":{model},"choices":[{{"index":0,"message":{{"role":"assistant","content":{text},"refusal":null,"annotations":[]}},"logprobs":null,"finish_reason":"{finish}"}}],"usage":{usage},"service_tier":"default","system_fingerprint":"fp_mock"}}"#,
            text = q(text),
            usage = chat_usage(u)
        ));
    }
    // OpenAI puts "usage":null on every chunk when include_usage is set, and sends the usage in
    // one last chunk with empty choices.
    let usage_null = if ask.include_usage { r#","usage":null"# } else { "" };
    let head = format!(r#"{{"id":"{id}","object":"chat.completion.chunk","created":{CREATED},"model":{model},"service_tier":"default","system_fingerprint":"fp_mock","choices":"#);
    let mut prelude = Vec::new();
    if azure {
        prelude.push(sse_data(
            r#"{"choices":[],"created":0,"id":"","model":"","object":"","prompt_filter_results":[{"prompt_index":0,"content_filter_results":{"hate":{"filtered":false,"severity":"safe"}}}]}"#,
        ));
    }
    prelude.push(sse_data(&format!(
        r#"{head}[{{"index":0,"delta":{{"role":"assistant","content":"","refusal":null}},"logprobs":null,"finish_reason":null}}]{usage_null}}}"#
    )));
    let content = (0..events)
        .map(|i| {
            sse_data(&format!(
                r#"{head}[{{"index":0,"delta":{{"content":{p}}},"logprobs":null,"finish_reason":null}}]{usage_null}}}"#,
                p = q(&piece(i))
            ))
        })
        .collect();
    let mut trailer = vec![sse_data(&format!(r#"{head}[{{"index":0,"delta":{{}},"logprobs":null,"finish_reason":"{finish}"}}]{usage_null}}}"#))];
    if ask.include_usage {
        trailer.push(sse_data(&format!(r#"{head}[],"usage":{}}}"#, chat_usage(u))));
    }
    trailer.push("data: [DONE]\n\n".to_string());
    Body { content_type: "text/event-stream; charset=utf-8", prelude, content, trailer, streaming: true }
}

fn openai_completions(ask: &Ask, u: &Usage, events: u32, seq: u64, model: &str, text: &str) -> Body {
    let finish = if u.truncated { "length" } else { "stop" };
    let id = format!("cmpl-mock-{seq}");
    let usage = format!(r#"{{"prompt_tokens":{},"completion_tokens":{},"total_tokens":{}}}"#, u.prompt, u.output, u.prompt + u.output);
    if !ask.stream {
        return json_body(format!(
            r#"{{"id":"{id}","object":"text_completion","created":{CREATED},"model":{model},"choices":[{{"text":{text},"index":0,"logprobs":null,"finish_reason":"{finish}"}}],"usage":{usage},"system_fingerprint":"fp_mock"}}"#,
            text = q(text)
        ));
    }
    let usage_null = if ask.include_usage { r#","usage":null"# } else { "" };
    let head = format!(r#"{{"id":"{id}","object":"text_completion","created":{CREATED},"model":{model},"system_fingerprint":"fp_mock","choices":"#);
    let content = (0..events)
        .map(|i| sse_data(&format!(r#"{head}[{{"text":{p},"index":0,"logprobs":null,"finish_reason":null}}]{usage_null}}}"#, p = q(&piece(i)))))
        .collect();
    let mut trailer = vec![sse_data(&format!(r#"{head}[{{"text":"","index":0,"logprobs":null,"finish_reason":"{finish}"}}]{usage_null}}}"#))];
    if ask.include_usage {
        trailer.push(sse_data(&format!(r#"{head}[],"usage":{usage}}}"#)));
    }
    trailer.push("data: [DONE]\n\n".to_string());
    Body { content_type: "text/event-stream; charset=utf-8", prelude: Vec::new(), content, trailer, streaming: true }
}

fn openai_embeddings(ask: &Ask, u: &Usage, model: &str) -> Body {
    let mut data = String::new();
    for i in 0..ask.inputs.max(1) {
        if i > 0 {
            data.push(',');
        }
        let _ = write!(
            data,
            r#"{{"object":"embedding","index":{i},"embedding":[0.0023064255,-0.009327292,0.015797347,-0.0077780345,-0.0046922187,0.01234,-0.00351,0.0287]}}"#
        );
    }
    json_body(format!(
        r#"{{"object":"list","data":[{data}],"model":{model},"usage":{{"prompt_tokens":{p},"total_tokens":{p}}}}}"#,
        p = u.prompt
    ))
}

fn responses_usage(u: &Usage) -> String {
    format!(
        r#"{{"input_tokens":{p},"input_tokens_details":{{"cached_tokens":{k}}},"output_tokens":{c},"output_tokens_details":{{"reasoning_tokens":{r}}},"total_tokens":{t}}}"#,
        p = u.prompt,
        k = u.cached,
        c = u.output,
        r = u.reasoning,
        t = u.prompt + u.output
    )
}

fn openai_responses(ask: &Ask, u: &Usage, events: u32, seq: u64, model: &str, text: &str) -> Body {
    let id = format!("resp_mock_{seq}");
    let msg_id = format!("msg_mock_{seq}");
    let (status, incomplete) = if u.truncated {
        ("incomplete", r#"{"reason":"max_output_tokens"}"#)
    } else {
        ("completed", "null")
    };
    let message = |status: &str, text: Option<&str>| {
        let content = match text {
            Some(t) => format!(r#"[{{"type":"output_text","text":{},"annotations":[]}}]"#, q(t)),
            None => "[]".to_string(),
        };
        format!(r#"{{"type":"message","id":"{msg_id}","status":"{status}","role":"assistant","content":{content}}}"#)
    };
    let response = |status: &str, incomplete: &str, output: &str, usage: &str| {
        format!(
            r#"{{"id":"{id}","object":"response","created_at":{CREATED},"status":"{status}","error":null,"incomplete_details":{incomplete},"model":{model},"output":[{output}],"parallel_tool_calls":true,"temperature":1.0,"top_p":1.0,"usage":{usage}}}"#
        )
    };
    let final_response = response(status, incomplete, &message("completed", Some(text)), &responses_usage(u));
    if !ask.stream {
        return json_body(final_response);
    }
    let mut seq_no = 0u32;
    let mut ev = |name: &str, rest: &str| {
        let s = sse_event(name, &format!(r#"{{"type":"{name}","sequence_number":{seq_no},{rest}}}"#));
        seq_no += 1;
        s
    };
    let pending = response("in_progress", "null", "", "null");
    let prelude = vec![
        ev("response.created", &format!(r#""response":{pending}"#)),
        ev("response.in_progress", &format!(r#""response":{pending}"#)),
        ev("response.output_item.added", &format!(r#""output_index":0,"item":{}"#, message("in_progress", None))),
        ev(
            "response.content_part.added",
            &format!(r#""item_id":"{msg_id}","output_index":0,"content_index":0,"part":{{"type":"output_text","text":"","annotations":[]}}"#),
        ),
    ];
    let content = (0..events)
        .map(|i| {
            ev(
                "response.output_text.delta",
                &format!(r#""item_id":"{msg_id}","output_index":0,"content_index":0,"delta":{}"#, q(&piece(i))),
            )
        })
        .collect();
    let final_event = if u.truncated { "response.incomplete" } else { "response.completed" };
    let trailer = vec![
        ev("response.output_text.done", &format!(r#""item_id":"{msg_id}","output_index":0,"content_index":0,"text":{}"#, q(text))),
        ev(
            "response.content_part.done",
            &format!(r#""item_id":"{msg_id}","output_index":0,"content_index":0,"part":{{"type":"output_text","text":{},"annotations":[]}}"#, q(text)),
        ),
        ev("response.output_item.done", &format!(r#""output_index":0,"item":{}"#, message("completed", Some(text)))),
        ev(final_event, &format!(r#""response":{final_response}"#)),
    ];
    Body { content_type: "text/event-stream; charset=utf-8", prelude, content, trailer, streaming: true }
}

fn anthropic(ask: &Ask, u: &Usage, events: u32, seq: u64, model: &str, text: &str) -> Body {
    let id = format!("msg_mock_{seq}");
    let stop = if u.truncated { "max_tokens" } else { "end_turn" };
    // Anthropic's input_tokens excludes the tokens read from or written to the cache.
    let input = u.prompt - u.cached - u.cache_write;
    let usage = |output: u64| {
        format!(
            r#"{{"input_tokens":{input},"cache_creation_input_tokens":{w},"cache_read_input_tokens":{k},"output_tokens":{output},"service_tier":"standard"}}"#,
            w = u.cache_write,
            k = u.cached
        )
    };
    if !ask.stream {
        return json_body(format!(
            r#"{{"id":"{id}","type":"message","role":"assistant","model":{model},"content":[{{"type":"text","text":{text}}}],"stop_reason":"{stop}","stop_sequence":null,"usage":{usage}}}"#,
            text = q(text),
            usage = usage(u.output)
        ));
    }
    let prelude = vec![
        sse_event(
            "message_start",
            &format!(
                r#"{{"type":"message_start","message":{{"id":"{id}","type":"message","role":"assistant","model":{model},"content":[],"stop_reason":null,"stop_sequence":null,"usage":{}}}}}"#,
                usage(1)
            ),
        ),
        sse_event("content_block_start", r#"{"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}"#),
        sse_event("ping", r#"{"type": "ping"}"#),
    ];
    let content = (0..events)
        .map(|i| {
            sse_event(
                "content_block_delta",
                &format!(r#"{{"type":"content_block_delta","index":0,"delta":{{"type":"text_delta","text":{}}}}}"#, q(&piece(i))),
            )
        })
        .collect();
    let trailer = vec![
        sse_event("content_block_stop", r#"{"type":"content_block_stop","index":0}"#),
        sse_event(
            "message_delta",
            &format!(r#"{{"type":"message_delta","delta":{{"stop_reason":"{stop}","stop_sequence":null}},"usage":{}}}"#, usage(u.output)),
        ),
        sse_event("message_stop", r#"{"type":"message_stop"}"#),
    ];
    Body { content_type: "text/event-stream; charset=utf-8", prelude, content, trailer, streaming: true }
}

/// `stream`: None for generateContent, Some(true) for SSE, Some(false) for a streamed JSON array.
fn gemini(stream: Option<bool>, u: &Usage, events: u32, seq: u64, model: &str, text: &str) -> Body {
    let finish = if u.truncated { "MAX_TOKENS" } else { "STOP" };
    let visible = u.output - u.reasoning;
    let mut full_usage = format!(r#"{{"promptTokenCount":{p},"candidatesTokenCount":{visible},"totalTokenCount":{t}"#, p = u.prompt, t = u.prompt + u.output);
    if u.cached > 0 {
        let _ = write!(full_usage, r#","cachedContentTokenCount":{}"#, u.cached);
    }
    if u.reasoning > 0 {
        let _ = write!(full_usage, r#","thoughtsTokenCount":{}"#, u.reasoning);
    }
    let _ = write!(full_usage, r#","promptTokensDetails":[{{"modality":"TEXT","tokenCount":{}}}]}}"#, u.prompt);
    let tail = format!(r#""modelVersion":{model},"responseId":"mock-{seq}""#);
    let Some(sse) = stream else {
        return json_body(format!(
            r#"{{"candidates":[{{"content":{{"parts":[{{"text":{text}}}],"role":"model"}},"finishReason":"{finish}","index":0}}],"usageMetadata":{full_usage},{tail}}}"#,
            text = q(text)
        ));
    };
    // Like Gemini, every chunk carries usageMetadata; only the last one is complete.
    let partial_usage = format!(r#"{{"promptTokenCount":{p},"totalTokenCount":{p}}}"#, p = u.prompt);
    let content = (0..events)
        .map(|i| {
            let last = i + 1 == events;
            let (finish_member, usage) = if last {
                (format!(r#","finishReason":"{finish}""#), full_usage.as_str())
            } else {
                (String::new(), partial_usage.as_str())
            };
            let doc = format!(
                r#"{{"candidates":[{{"content":{{"parts":[{{"text":{p}}}],"role":"model"}}{finish_member},"index":0}}],"usageMetadata":{usage},{tail}}}"#,
                p = q(&piece(i))
            );
            match (sse, i) {
                (true, _) => format!("data: {doc}\r\n\r\n"),
                (false, 0) => format!("[{doc}"),
                (false, _) => format!(",\r\n{doc}"),
            }
        })
        .collect();
    if sse {
        Body { content_type: "text/event-stream", prelude: Vec::new(), content, trailer: Vec::new(), streaming: true }
    } else {
        Body { content_type: "application/json; charset=UTF-8", prelude: Vec::new(), content, trailer: vec!["]".to_string()], streaming: true }
    }
}

/// The dialect's error JSON for `status`.
// Specific statuses first, then the rest of their class: the overlap is the point.
#[allow(clippy::match_overlapping_arm)]
pub fn error_body(family: Family, status: u16, message: &str) -> String {
    let m = q(message);
    match family {
        Family::OpenAi => {
            let (kind, code) = match status {
                401 => ("invalid_request_error", "\"invalid_api_key\""),
                429 => ("requests", "\"rate_limit_exceeded\""),
                400..=499 => ("invalid_request_error", "null"),
                _ => ("server_error", "null"),
            };
            format!(r#"{{"error":{{"message":{m},"type":"{kind}","param":null,"code":{code}}}}}"#)
        }
        Family::Anthropic => {
            let kind = match status {
                401 => "authentication_error",
                403 => "permission_error",
                404 => "not_found_error",
                413 => "request_too_large",
                429 => "rate_limit_error",
                529 => "overloaded_error",
                400..=499 => "invalid_request_error",
                _ => "api_error",
            };
            format!(r#"{{"type":"error","error":{{"type":"{kind}","message":{m}}}}}"#)
        }
        Family::Gemini => {
            let kind = match status {
                400 => "INVALID_ARGUMENT",
                401 => "UNAUTHENTICATED",
                403 => "PERMISSION_DENIED",
                404 => "NOT_FOUND",
                429 => "RESOURCE_EXHAUSTED",
                503 => "UNAVAILABLE",
                504 => "DEADLINE_EXCEEDED",
                400..=499 => "FAILED_PRECONDITION",
                _ => "INTERNAL",
            };
            format!(r#"{{"error":{{"code":{status},"message":{m},"status":"{kind}"}}}}"#)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_recognised_by_suffix() {
        let r = |p: &str| recognise(p).map(|r| (r.api, r.azure, r.path_model));
        assert_eq!(r("/v1/chat/completions"), Some((Api::OpenAiChat, false, None)));
        assert_eq!(r("/openai/v1/chat/completions"), Some((Api::OpenAiChat, false, None)));
        assert_eq!(r("/v1/completions"), Some((Api::OpenAiCompletions, false, None)));
        assert_eq!(r("/v1/embeddings"), Some((Api::OpenAiEmbeddings, false, None)));
        assert_eq!(r("/v1/responses"), Some((Api::OpenAiResponses, false, None)));
        assert_eq!(r("/v1/messages"), Some((Api::AnthropicMessages, false, None)));
        assert_eq!(r("/openai/deployments/gpt4o-prod/chat/completions"), Some((Api::OpenAiChat, true, Some("gpt4o-prod".into()))));
        assert_eq!(r("/openai/deployments/emb/embeddings"), Some((Api::OpenAiEmbeddings, true, Some("emb".into()))));
        assert_eq!(r("/v1beta/models/gemini-2.5-flash:generateContent"), Some((Api::GeminiGenerate, false, Some("gemini-2.5-flash".into()))));
        assert_eq!(r("/v1beta/models/gemini-2.5-pro:streamGenerateContent"), Some((Api::GeminiStream, false, Some("gemini-2.5-pro".into()))));
        assert_eq!(r("/v1/models"), None);
        assert_eq!(r("/healthz"), None);
        assert_eq!(r("/v1beta/models/x:countTokens"), None);
    }

    fn ask(route: &str, body: &str) -> Result<Ask, String> {
        read_ask(&recognise(route).unwrap(), body.as_bytes(), "")
    }

    #[test]
    fn the_request_says_model_stream_usage_and_cap() {
        let a = ask("/v1/chat/completions", r#"{"model":"gpt-4o","stream":true,"stream_options":{"include_usage":true},"max_tokens":5,"messages":[{"role":"user","content":"hi"}]}"#).unwrap();
        assert_eq!(a, Ask { model: "gpt-4o".into(), stream: true, include_usage: true, max_output: Some(5), inputs: 0, gemini_sse: false, ttl_s: 3600 });
        let g = ask("/v1beta/models/gemini-2.5-flash:streamGenerateContent", r#"{"contents":[],"generationConfig":{"maxOutputTokens":9}}"#).unwrap();
        assert_eq!((g.model.as_str(), g.stream, g.max_output), ("gemini-2.5-flash", true, Some(9)));
        let e = ask("/v1/embeddings", r#"{"model":"text-embedding-3-small","input":["a","b","c"]}"#).unwrap();
        assert_eq!(e.inputs, 3);
        let az = ask("/openai/deployments/prod-4o/chat/completions", r#"{"messages":[]}"#).unwrap();
        assert_eq!(az.model, "prod-4o");
    }

    #[test]
    fn bad_requests_are_refused_with_a_reason() {
        assert!(ask("/v1/chat/completions", r#"{"model":123}"#).unwrap_err().contains("invalid type"));
        assert!(ask("/v1/chat/completions", r#"{"model":"a""#).is_err());
        assert!(ask("/v1/messages", r#"{"messages":[]}"#).unwrap_err().contains("no model"));
    }

    #[test]
    fn a_cache_creation_is_answered_like_google_with_its_size_and_expiry() {
        let route = recognise("/v1beta/cachedContents").unwrap();
        assert_eq!(route.api, Api::GeminiCreateCache);
        let a = read_ask(&route, br#"{"model":"models/gemini-2.5-flash","contents":[],"ttl":"300s"}"#, "").unwrap();
        assert_eq!((a.model.as_str(), a.ttl_s, a.stream), ("models/gemini-2.5-flash", 300, false));
        let u = Usage::compute(route.api, 100, &a, &Controls { input_tokens: Some(400_000), ..Controls::default() });
        assert_eq!((u.prompt, u.output), (400_000, 0));
        // 2024-06-24T12:34:56.789Z, as `date -u -d @1719232496.789` reads it.
        let doc: serde_json::Value = serde_json::from_str(&cached_content(&a, &u, 7, 1_719_232_496_789).content.concat()).unwrap();
        assert_eq!(doc["name"], "cachedContents/mock-7");
        assert_eq!(doc["model"], "models/gemini-2.5-flash");
        assert_eq!(doc["usageMetadata"]["totalTokenCount"], 400_000);
        assert_eq!(doc["createTime"], "2024-06-24T12:34:56.789Z");
        assert_eq!(doc["expireTime"], "2024-06-24T12:39:56.789Z");
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(951_868_800_000), "2000-03-01T00:00:00.000Z");
        assert!(read_ask(&route, br#"{"model":"models/g","ttl":"5m"}"#, "").unwrap_err().contains("ttl"));
    }

    #[test]
    fn gemini_streams_a_json_array_without_alt_sse() {
        let route = recognise("/v1beta/models/g:streamGenerateContent").unwrap();
        let a = read_ask(&route, b"{}", "key=x").unwrap();
        let u = Usage::compute(route.api, 2, &a, &Controls::default());
        let b = answer(&route, &a, &u, 3, 1);
        let whole: String = b.prelude.iter().chain(&b.content).chain(&b.trailer).cloned().collect();
        let v: serde_json::Value = serde_json::from_str(&whole).unwrap();
        assert_eq!(v.as_array().map(Vec::len), Some(3));
        assert_eq!(v[2]["usageMetadata"]["candidatesTokenCount"], 16, "4 × the default 4 events");
        let sse = read_ask(&route, b"{}", "alt=sse&key=x").unwrap();
        assert!(sse.gemini_sse);
    }

    #[test]
    fn usage_is_derived_from_the_request() {
        let a = Ask { model: "m".into(), stream: false, include_usage: false, max_output: Some(10), inputs: 0, gemini_sse: false, ttl_s: 3600 };
        let c = Controls { cached_tokens: 5000, reasoning_tokens: 3, ..Controls::default() };
        let u = Usage::compute(Api::OpenAiChat, 401, &a, &c);
        assert_eq!(u, Usage { prompt: 101, cached: 101, cache_write: 0, output: 10, reasoning: 3, truncated: true });
        let uncapped = Ask { max_output: None, ..a };
        assert_eq!(Usage::compute(Api::OpenAiChat, 8, &uncapped, &Controls::default()).output, 16);
    }

    #[test]
    fn every_body_is_valid_json() {
        let c = Controls { cached_tokens: 3, reasoning_tokens: 2, cache_write_tokens: 1, ..Controls::default() };
        for path in [
            "/v1/chat/completions",
            "/v1/completions",
            "/v1/embeddings",
            "/v1/responses",
            "/v1/messages",
            "/openai/deployments/d/chat/completions",
            "/v1beta/models/g:generateContent",
            "/v1beta/models/g:streamGenerateContent",
        ] {
            for stream in [false, true] {
                let route = recognise(path).unwrap();
                let body = format!(r#"{{"model":"m\"x","stream":{stream},"stream_options":{{"include_usage":true}}}}"#);
                let a = read_ask(&route, body.as_bytes(), "alt=sse").unwrap();
                let u = Usage::compute(route.api, body.len(), &a, &c);
                let b = answer(&route, &a, &u, 3, 1);
                for part in b.prelude.iter().chain(&b.content).chain(&b.trailer) {
                    if !b.streaming {
                        serde_json::from_str::<serde_json::Value>(part).unwrap_or_else(|e| panic!("{path}: {e}: {part}"));
                        continue;
                    }
                    for line in part.lines().filter_map(|l| l.strip_prefix("data: ")) {
                        if line != "[DONE]" {
                            serde_json::from_str::<serde_json::Value>(line).unwrap_or_else(|e| panic!("{path}: {e}: {line}"));
                        }
                    }
                }
            }
        }
    }
}
