//! Requests whose billed prompt can exceed their body: recognised per dialect, so the reservation
//! bounds them by the model's context window instead of the body size.
//!
//! # Why
//! The reservation bounds a prompt by its body bytes (`core::estimate`: one token per byte). That
//! holds while the whole prompt is text in the body. It does not hold when the provider adds to
//! the prompt what the body only names: a stored conversation continued by id, a provider-side
//! cache, a file or an image by id or URL, a stored prompt template, a hosted tool whose results
//! the model reads as input. A 60-byte `previous_response_id` can bill 100,000 prompt tokens. For
//! such a request the only bound the gateway knows is the routed model's context window (the
//! upstream refuses a longer prompt), and [`crate::estimate::EstimateConfig::prompt_tokens_bound`]
//! reserves that.
//!
//! Media inline in the body (base64 images, audio, PDFs) are counted too: their tokens follow the
//! pixels or the seconds, not the bytes (a small, well-compressed image can cost more tokens than
//! its base64 has bytes, and some models bill an image at thousands of tokens), so the body is no
//! bound for them either. No tighter per-item bound is used yet.
//!
//! # The shapes (docs/enforcement.md lists them for operators)
//! | dialect, endpoint | recognised |
//! |---|---|
//! | OpenAI Responses | top-level `previous_response_id`, `conversation`, `prompt`; in `input`: parts `input_image`, `input_file`, `file_id` / `file_url` / `image_url` members, items by reference (`item_reference`, or an item with an `id` and no `type`), `reasoning` items without `encrypted_content` (stored reasoning); hosted `tools` (`file_search`, `web_search*`, `code_interpreter`, `mcp`) |
//! | OpenAI / Azure Chat Completions | in `messages`: `image_url`, `input_audio`, `file` parts, an assistant `audio` by id; top-level `web_search_options` |
//! | Anthropic Messages | in `messages` / `system`: `image`, `document` (any source: base64, `url`, `file`, …), `container_upload` blocks; top-level `container`, `mcp_servers`; server `tools` (`web_search_*`, `web_fetch_*`, `code_execution_*`, `tool_search_tool_*`, `mcp_toolset`) |
//! | Gemini | top-level `cachedContent` / `cached_content`; in `contents` / `systemInstruction`: `fileData` / `file_data`, `inlineData` / `inline_data` parts; `tools` with `googleSearch`, `googleSearchRetrieval`, `codeExecution`, `urlContext`, `fileSearch`, `googleMaps` (either spelling) |
//!
//! Legacy completions and embeddings take only text (or token ids, whose JSON is longer than their
//! count), so the body stays a bound for them.
//!
//! # Cost on the hot path
//! Nothing is parsed twice for a request without these fields: the body scan
//! ([`crate::json::scan_object_watching`]) notes the watched strings of [`watch_list`] per
//! top-level member while it validates, and [`detect`] reads those bits. Only where a watched
//! string can also be innocent (a function tool *named* `web_search`, an `id` on an echoed output
//! item) is that one member parsed to look at its structure. A watched word that is just text
//! (a message whose whole content is `"image"`) is taken as the shape: a larger reservation, never
//! a smaller one.

use crate::context_memory::Reference;
use crate::dialect::Endpoint;
use crate::errors::{ErrorKind, Failure};
use crate::json::{self, Kind, Member, TopLevel, Watch};
use serde_json::Value;

/// Longest id or resource name accepted in `previous_response_id`, `conversation` and
/// `cachedContent` (OpenAI ids are about 50 bytes, Gemini cache names about 30): longer is no id.
pub const MAX_REFERENCE_BYTES: usize = 256;

/// A way the billed prompt can exceed the body.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Shape {
    /// OpenAI Responses `previous_response_id`: the stored conversation so far.
    PreviousResponse,
    /// OpenAI Responses `conversation`: a stored conversation's items.
    Conversation,
    /// OpenAI Responses `prompt`: a stored prompt template.
    StoredPrompt,
    /// OpenAI Responses input items given by id (item references, stored reasoning).
    ItemReference,
    /// A file by id, URL or inline (OpenAI `input_file` / `file`, Anthropic `document`, Gemini `fileData`).
    File,
    /// An image, by URL, id or inline (OpenAI `image_url` / `input_image`, Anthropic `image`).
    Image,
    /// Audio (OpenAI `input_audio`, an assistant `audio` by id).
    Audio,
    /// Gemini inline media (`inlineData`).
    InlineMedia,
    /// Gemini `cachedContent`: a provider-side cache.
    CachedContent,
    /// Anthropic `container` / `container_upload`: files in a code-execution container.
    Container,
    /// A hosted or server tool whose results the model reads as input (web search, file search,
    /// code execution, URL fetch, MCP).
    HostedTool,
}

impl Shape {
    /// The name in logs, docs and tests.
    pub fn as_str(self) -> &'static str {
        match self {
            Shape::PreviousResponse => "previous_response_id",
            Shape::Conversation => "conversation",
            Shape::StoredPrompt => "stored_prompt",
            Shape::ItemReference => "item_reference",
            Shape::File => "file",
            Shape::Image => "image",
            Shape::Audio => "audio",
            Shape::InlineMedia => "inline_media",
            Shape::CachedContent => "cached_content",
            Shape::Container => "container",
            Shape::HostedTool => "hosted_tool",
        }
    }
}

// The watch lists: one per endpoint; the index of each entry is its bit in `Member::watched`.

const CHAT: &[&str] = &["image_url", "input_audio", "file", "audio"];
const CHAT_SHAPES: &[Shape] = &[Shape::Image, Shape::Audio, Shape::File, Shape::Audio];

const RESPONSES: &[&str] = &[
    // `input`
    "input_image",
    "input_file",
    "item_reference",
    "file_id",
    "file_url",
    "image_url",
    "id",
    "reasoning",
    // `tools`
    "file_search",
    "web_search*",
    "code_interpreter",
    "mcp",
];
const RESPONSES_INPUT: u64 = 0xff;
const RESPONSES_STRUCTURAL: u64 = (1 << 6) | (1 << 7);
const RESPONSES_TOOLS: u64 = 0xf << 8;

const ANTHROPIC: &[&str] = &[
    // `messages`, `system`
    "image",
    "document",
    "container_upload",
    // `tools`
    "web_search_*",
    "web_fetch_*",
    "code_execution_*",
    "tool_search_tool_*",
    "mcp_toolset",
];
const ANTHROPIC_SHAPES: &[Shape] = &[Shape::Image, Shape::File, Shape::Container];
const ANTHROPIC_TOOLS: u64 = 0x1f << 3;

const GEMINI: &[&str] = &[
    // `contents`, `systemInstruction`
    "fileData",
    "file_data",
    "inlineData",
    "inline_data",
    // `tools`
    "googleSearch",
    "google_search",
    "googleSearchRetrieval",
    "google_search_retrieval",
    "codeExecution",
    "code_execution",
    "urlContext",
    "url_context",
    "fileSearch",
    "file_search",
    "googleMaps",
    "google_maps",
];
const GEMINI_SHAPES: &[Shape] = &[Shape::File, Shape::File, Shape::InlineMedia, Shape::InlineMedia];
const GEMINI_TOOLS: u64 = 0xfff << 4;

/// The strings the body scan should watch for on this endpoint (pass to
/// [`json::scan_object_watching`]); empty where the body is always a bound.
pub fn watch_list(endpoint: Endpoint) -> &'static Watch<'static> {
    const CHAT_WATCH: Watch<'static> = Watch::new(CHAT);
    const RESPONSES_WATCH: Watch<'static> = Watch::new(RESPONSES);
    const ANTHROPIC_WATCH: Watch<'static> = Watch::new(ANTHROPIC);
    const GEMINI_WATCH: Watch<'static> = Watch::new(GEMINI);
    match endpoint {
        Endpoint::Chat => &CHAT_WATCH,
        Endpoint::Responses => &RESPONSES_WATCH,
        Endpoint::Messages => &ANTHROPIC_WATCH,
        Endpoint::GenerateContent | Endpoint::StreamGenerateContent | Endpoint::CreateCachedContent => &GEMINI_WATCH,
        Endpoint::Completions | Endpoint::Embeddings => &Watch::NONE,
    }
}

/// The first way this request's billed prompt can exceed its body, if any. `top` must come from
/// [`json::scan_object_watching`] with [`watch_list`]`(endpoint)`. A reference field of the wrong
/// type or an absurd length is a 400 naming it.
pub fn detect(endpoint: Endpoint, body: &[u8], top: &TopLevel) -> Result<Option<Shape>, Failure> {
    detect_skipping(endpoint, body, top, None)
}

/// What a request continues, when that is its only provider-held shape (`shape`, from
/// [`detect`]): the stored response of an OpenAI Responses `previous_response_id`, the
/// conversation of its `conversation` (a string or `{"id": …}`), or the Gemini
/// context cache of a `cachedContent` / `cached_content`. The memory (`core::context_memory`) may
/// know its size. Any other shape beside it (a file by id, a hosted tool, …) still needs the
/// window, so then `None`; so does a Gemini body naming a cache under both spellings.
pub fn detect_reference(endpoint: Endpoint, body: &[u8], top: &TopLevel, shape: Option<Shape>) -> Option<Reference> {
    let (key, wrap): (&str, fn(String) -> Reference) = match (endpoint, shape) {
        (Endpoint::Responses, Some(Shape::PreviousResponse)) => ("previous_response_id", Reference::Response),
        (Endpoint::Responses, Some(Shape::Conversation)) => {
            if !matches!(detect_skipping(endpoint, body, top, Some("conversation")), Ok(None)) {
                return None;
            }
            let m = top.get("conversation")?;
            let id = match m.kind {
                Kind::String => json::decode_string(body, m.value.clone()).ok()?.into_owned(),
                // `{"id": "conv_…"}`: its id, held to the same limits as the string form.
                _ => member_value(body, m)?.get("id")?.as_str().filter(|id| !id.trim().is_empty() && id.len() <= MAX_REFERENCE_BYTES)?.to_owned(),
            };
            return Some(Reference::Conversation(id));
        }
        (Endpoint::GenerateContent | Endpoint::StreamGenerateContent, Some(Shape::CachedContent)) => {
            let present = |key: &str| top.get(key).is_some_and(|m| m.kind != Kind::Null);
            match (present("cachedContent"), present("cached_content")) {
                (true, false) => ("cachedContent", Reference::CachedContent),
                (false, true) => ("cached_content", Reference::CachedContent),
                _ => return None,
            }
        }
        _ => return None,
    };
    if !matches!(detect_skipping(endpoint, body, top, Some(key)), Ok(None)) {
        return None;
    }
    let id = json::decode_string(body, top.get(key)?.value.clone()).ok()?;
    Some(wrap(id.into_owned()))
}

/// Whether an OpenAI Responses request lets the provider drop input items to fit the window
/// (`truncation` other than `"disabled"` or null): its bill is then less than what a
/// conversation it continues holds, so that bill is no size of the conversation
/// (`core::context_memory`, conversations). Any other value counts as truncating.
pub fn truncates(body: &[u8], top: &TopLevel) -> bool {
    match top.get("truncation") {
        None => false,
        Some(m) if m.kind == Kind::Null => false,
        Some(m) => json::decode_string(body, m.value.clone()).map_or(true, |v| m.kind != Kind::String || v != "disabled"),
    }
}

/// [`detect`], as if the top-level member `skip` were absent.
fn detect_skipping(endpoint: Endpoint, body: &[u8], top: &TopLevel, skip: Option<&str>) -> Result<Option<Shape>, Failure> {
    let get = |key: &str| top.get(key).filter(|_| skip != Some(key));
    let bits = |key: &str| get(key).map_or(0, |m| m.watched);
    let present = |key: &str| get(key).filter(|m| m.kind != Kind::Null);
    match endpoint {
        Endpoint::Chat => {
            if let Some(shape) = first_shape(bits("messages"), CHAT_SHAPES) {
                return Ok(Some(shape));
            }
            Ok(present("web_search_options").map(|_| Shape::HostedTool))
        }
        Endpoint::Responses => {
            if let Some(m) = present("previous_response_id") {
                reference_id(body, m, "previous_response_id", "a response id (resp_…)")?;
                return Ok(Some(Shape::PreviousResponse));
            }
            if let Some(m) = present("conversation") {
                if m.kind != Kind::Object {
                    reference_id(body, m, "conversation", "a conversation id (conv_…) or an object with its id")?;
                } else {
                    let id = member_value(body, m).and_then(|v| v.get("id").cloned());
                    match id.as_ref().and_then(Value::as_str) {
                        Some(id) if !id.trim().is_empty() && id.len() <= MAX_REFERENCE_BYTES => {}
                        _ => {
                            return Err(invalid(
                                format!("\"conversation\" as an object must have an \"id\": a conversation id (conv_…) of 1 to {MAX_REFERENCE_BYTES} bytes"),
                                "conversation",
                            ))
                        }
                    }
                }
                return Ok(Some(Shape::Conversation));
            }
            if let Some(m) = present("prompt") {
                if m.kind != Kind::Object {
                    return Err(invalid(format!("\"prompt\" must be an object naming a stored prompt, got {}", m.kind.as_str()), "prompt"));
                }
                return Ok(Some(Shape::StoredPrompt));
            }
            let input = bits("input");
            if input & RESPONSES_INPUT & !RESPONSES_STRUCTURAL != 0 {
                let shape = if input & (1 << 2) != 0 {
                    Shape::ItemReference
                } else if input & ((1 << 0) | (1 << 5)) != 0 {
                    Shape::Image
                } else {
                    Shape::File
                };
                return Ok(Some(shape));
            }
            if input & RESPONSES_STRUCTURAL != 0 {
                if let Some(m) = top.get("input") {
                    if responses_input_references(member_value(body, m).as_ref()) {
                        return Ok(Some(Shape::ItemReference));
                    }
                }
            }
            if bits("tools") & RESPONSES_TOOLS != 0 && tools_have(body, top, openai_hosted) {
                return Ok(Some(Shape::HostedTool));
            }
            Ok(None)
        }
        Endpoint::Messages => {
            if let Some(shape) = first_shape(bits("messages") | bits("system"), ANTHROPIC_SHAPES) {
                return Ok(Some(shape));
            }
            if let Some(m) = present("container") {
                if !matches!(m.kind, Kind::String | Kind::Object) {
                    return Err(invalid(format!("\"container\" must be a container id or an object, got {}", m.kind.as_str()), "container"));
                }
                return Ok(Some(Shape::Container));
            }
            if present("mcp_servers").is_some_and(|m| m.kind != Kind::Array || has_element(body, m)) {
                return Ok(Some(Shape::HostedTool));
            }
            if bits("tools") & ANTHROPIC_TOOLS != 0 && tools_have(body, top, anthropic_server) {
                return Ok(Some(Shape::HostedTool));
            }
            Ok(None)
        }
        Endpoint::GenerateContent | Endpoint::StreamGenerateContent | Endpoint::CreateCachedContent => {
            for key in ["cachedContent", "cached_content"] {
                if let Some(m) = present(key) {
                    reference_id(body, m, key, "a cache name (cachedContents/…)")?;
                    return Ok(Some(Shape::CachedContent));
                }
            }
            let media = bits("contents") | bits("systemInstruction") | bits("system_instruction");
            if let Some(shape) = first_shape(media, GEMINI_SHAPES) {
                return Ok(Some(shape));
            }
            if bits("tools") & GEMINI_TOOLS != 0 && tools_have(body, top, gemini_hosted) {
                return Ok(Some(Shape::HostedTool));
            }
            Ok(None)
        }
        Endpoint::Completions | Endpoint::Embeddings => Ok(None),
    }
}

/// The shape of the lowest bit set among the first `shapes.len()` bits.
fn first_shape(bits: u64, shapes: &[Shape]) -> Option<Shape> {
    shapes.iter().enumerate().find(|(i, _)| bits & (1 << i) != 0).map(|(_, s)| *s)
}

fn invalid(message: String, param: &str) -> Failure {
    Failure::new(ErrorKind::InvalidRequest, message).with_param(param)
}

/// A reference field must be a non-empty string of at most [`MAX_REFERENCE_BYTES`].
fn reference_id(body: &[u8], m: &Member, key: &str, what: &str) -> Result<(), Failure> {
    if m.kind != Kind::String {
        return Err(invalid(format!("\"{key}\" must be {what} as a string, got {}", m.kind.as_str()), key));
    }
    let text = json::decode_string(body, m.value.clone()).map_err(|_| invalid(format!("\"{key}\" is not a valid string"), key))?;
    if text.trim().is_empty() {
        return Err(invalid(format!("\"{key}\" must not be empty; give {what} or leave the field out"), key));
    }
    if text.len() > MAX_REFERENCE_BYTES {
        return Err(invalid(
            format!("\"{key}\" is {} bytes long; {what} is at most {MAX_REFERENCE_BYTES} bytes", text.len()),
            key,
        ));
    }
    Ok(())
}

/// One member parsed as a value (only when its watched bits need a look at its structure).
fn member_value(body: &[u8], m: &Member) -> Option<Value> {
    serde_json::from_slice(body.get(m.value.clone())?).ok()
}

/// Whether a non-empty array's value range holds an element (`[ ]` does not).
fn has_element(body: &[u8], m: &Member) -> bool {
    body.get(m.value.clone()).is_some_and(|v| v.iter().any(|b| !matches!(b, b'[' | b']' | b' ' | b'\t' | b'\n' | b'\r')))
}

/// Responses `input` items the provider fills in from storage: an item reference (its `type` is
/// optional), or a `reasoning` item without its `encrypted_content`.
fn responses_input_references(input: Option<&Value>) -> bool {
    let Some(Value::Array(items)) = input else { return false };
    items.iter().any(|item| {
        let Some(obj) = item.as_object() else { return false };
        match obj.get("type").and_then(Value::as_str) {
            None => obj.contains_key("id") && !obj.contains_key("content") && !obj.contains_key("role"),
            Some("item_reference") => true,
            Some("reasoning") => obj.get("encrypted_content").is_none_or(Value::is_null),
            Some(_) => false,
        }
    })
}

/// Whether the `tools` array holds a tool `hosted` recognises.
fn tools_have(body: &[u8], top: &TopLevel, hosted: fn(&serde_json::Map<String, Value>) -> bool) -> bool {
    let Some(Value::Array(tools)) = top.get("tools").and_then(|m| member_value(body, m)) else { return false };
    tools.iter().filter_map(Value::as_object).any(hosted)
}

fn tool_type(tool: &serde_json::Map<String, Value>) -> &str {
    tool.get("type").and_then(Value::as_str).unwrap_or("")
}

fn openai_hosted(tool: &serde_json::Map<String, Value>) -> bool {
    let t = tool_type(tool);
    t.starts_with("web_search") || matches!(t, "file_search" | "code_interpreter" | "mcp")
}

fn anthropic_server(tool: &serde_json::Map<String, Value>) -> bool {
    let t = tool_type(tool);
    ["web_search_", "web_fetch_", "code_execution_", "tool_search_tool_"].iter().any(|p| t.starts_with(p))
        || t == "mcp_toolset"
}

fn gemini_hosted(tool: &serde_json::Map<String, Value>) -> bool {
    GEMINI.get(4..).unwrap_or_default().iter().any(|key| tool.contains_key(*key))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dialect::Dialect;

    /// The dialect is part of each case to show where the shape comes from; detection goes by
    /// endpoint (Azure's chat is OpenAI's chat).
    fn run(_dialect: Dialect, endpoint: Endpoint, body: &str) -> Result<Option<Shape>, Failure> {
        let top = json::scan_object_watching(body.as_bytes(), watch_list(endpoint)).expect("valid JSON");
        detect(endpoint, body.as_bytes(), &top)
    }

    fn shape(dialect: Dialect, endpoint: Endpoint, body: &str) -> Option<Shape> {
        run(dialect, endpoint, body).unwrap_or_else(|f| panic!("{body}: {}", f.message))
    }

    use crate::dialect::Dialect::*;
    use Endpoint::*;
    use Shape::*;

    /// (dialect, endpoint, body, what the provider adds to the prompt beyond the body).
    const CASES: &[(Dialect, Endpoint, &str, Option<Shape>)] = &[
        // OpenAI Responses
        (OpenAi, Responses, r#"{"model":"m","input":"hi"}"#, None),
        (OpenAi, Responses, r#"{"model":"m","previous_response_id":"resp_123","input":"go on"}"#, Some(PreviousResponse)),
        (OpenAi, Responses, r#"{"model":"m","previous_response_id":null,"input":"hi"}"#, None),
        (OpenAi, Responses, r#"{"model":"m","conversation":"conv_1","input":"hi"}"#, Some(Conversation)),
        (OpenAi, Responses, r#"{"model":"m","conversation":{"id":"conv_1"},"input":"hi"}"#, Some(Conversation)),
        (OpenAi, Responses, r#"{"model":"m","prompt":{"id":"pmpt_1","version":"2"}}"#, Some(StoredPrompt)),
        (OpenAi, Responses, r#"{"model":"m","input":[{"role":"user","content":[{"type":"input_image","image_url":"https://x/a.png"}]}]}"#, Some(Image)),
        (OpenAi, Responses, r#"{"model":"m","input":[{"role":"user","content":[{"type":"input_image","file_id":"file-1"}]}]}"#, Some(Image)),
        (OpenAi, Responses, r#"{"model":"m","input":[{"role":"user","content":[{"type":"input_file","file_id":"file-1"}]}]}"#, Some(File)),
        (OpenAi, Responses, r#"{"model":"m","input":[{"role":"user","content":[{"type":"input_file","file_url":"https://x/a.pdf"}]}]}"#, Some(File)),
        (OpenAi, Responses, r#"{"model":"m","input":[{"type":"item_reference","id":"msg_1"}]}"#, Some(ItemReference)),
        (OpenAi, Responses, r#"{"model":"m","input":[{"id":"msg_1"},{"role":"user","content":"and?"}]}"#, Some(ItemReference)),
        (OpenAi, Responses, r#"{"model":"m","input":[{"type":"reasoning","id":"rs_1","summary":[]}]}"#, Some(ItemReference)),
        (OpenAi, Responses, r#"{"model":"m","input":[{"type":"reasoning","id":"rs_1","summary":[],"encrypted_content":"gAAA"}]}"#, None),
        (OpenAi, Responses, r#"{"model":"m","input":[{"type":"message","id":"msg_1","role":"assistant","content":[{"type":"output_text","text":"hi"}]}]}"#, None),
        (OpenAi, Responses, r#"{"model":"m","input":"hi","tools":[{"type":"web_search_preview"}]}"#, Some(HostedTool)),
        (OpenAi, Responses, r#"{"model":"m","input":"hi","tools":[{"type":"file_search","vector_store_ids":["vs_1"]}]}"#, Some(HostedTool)),
        (OpenAi, Responses, r#"{"model":"m","input":"hi","tools":[{"type":"mcp","server_url":"https://m"}]}"#, Some(HostedTool)),
        (OpenAi, Responses, r#"{"model":"m","input":"hi","tools":[{"type":"code_interpreter","container":{"type":"auto"}}]}"#, Some(HostedTool)),
        (OpenAi, Responses, r#"{"model":"m","input":"hi","tools":[{"type":"function","name":"web_search","parameters":{}}]}"#, None),
        // Chat Completions (OpenAI and Azure)
        (OpenAi, Chat, r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"tools":[{"type":"function","function":{"name":"f","parameters":{"properties":{"file":{}}}}}]}"#, None),
        (OpenAi, Chat, r#"{"model":"m","messages":[{"role":"user","content":[{"type":"image_url","image_url":{"url":"https://x/a.png"}}]}]}"#, Some(Image)),
        (AzureOpenAi, Chat, r#"{"messages":[{"role":"user","content":[{"type":"image_url","image_url":{"url":"data:image/png;base64,iVBO"}}]}]}"#, Some(Image)),
        (OpenAi, Chat, r#"{"model":"m","messages":[{"role":"user","content":[{"type":"input_audio","input_audio":{"data":"UklG","format":"wav"}}]}]}"#, Some(Audio)),
        (OpenAi, Chat, r#"{"model":"m","messages":[{"role":"user","content":[{"type":"file","file":{"file_id":"file-1"}}]}]}"#, Some(File)),
        (OpenAi, Chat, r#"{"model":"m","messages":[{"role":"assistant","audio":{"id":"audio_1"}}]}"#, Some(Audio)),
        (OpenAi, Chat, r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"web_search_options":{}}"#, Some(HostedTool)),
        (OpenAi, Completions, r#"{"model":"m","prompt":"image_url previous_response_id"}"#, None),
        (OpenAi, Embeddings, r#"{"model":"m","input":[[1,2,3]]}"#, None),
        // Anthropic Messages
        (Anthropic, Messages, r#"{"model":"m","max_tokens":5,"messages":[{"role":"user","content":"hi"}]}"#, None),
        (Anthropic, Messages, r#"{"model":"m","messages":[{"role":"user","content":[{"type":"image","source":{"type":"url","url":"https://x/a.png"}}]}]}"#, Some(Image)),
        (Anthropic, Messages, r#"{"model":"m","messages":[{"role":"user","content":[{"type":"image","source":{"type":"file","file_id":"file_1"}}]}]}"#, Some(Image)),
        (Anthropic, Messages, r#"{"model":"m","messages":[{"role":"user","content":[{"type":"document","source":{"type":"file","file_id":"file_1"}}]}]}"#, Some(File)),
        (Anthropic, Messages, r#"{"model":"m","messages":[{"role":"user","content":[{"type":"document","source":{"type":"url","url":"https://x/a.pdf"}}]}]}"#, Some(File)),
        (Anthropic, Messages, r#"{"model":"m","messages":[{"role":"user","content":[{"type":"tool_result","tool_use_id":"t","content":[{"type":"image","source":{"type":"base64","media_type":"image/png","data":"iVBO"}}]}]}]}"#, Some(Image)),
        (Anthropic, Messages, r#"{"model":"m","messages":[{"role":"user","content":[{"type":"container_upload","file_id":"file_1"}]}]}"#, Some(Container)),
        (Anthropic, Messages, r#"{"model":"m","container":"container_1","messages":[]}"#, Some(Container)),
        (Anthropic, Messages, r#"{"model":"m","messages":[],"mcp_servers":[{"type":"url","url":"https://m","name":"m"}]}"#, Some(HostedTool)),
        (Anthropic, Messages, r#"{"model":"m","messages":[],"mcp_servers":[]}"#, None),
        (Anthropic, Messages, r#"{"model":"m","messages":[],"tools":[{"type":"web_search_20250305","name":"web_search","max_uses":5}]}"#, Some(HostedTool)),
        (Anthropic, Messages, r#"{"model":"m","messages":[],"tools":[{"type":"code_execution_20250825","name":"code_execution"}]}"#, Some(HostedTool)),
        (Anthropic, Messages, r#"{"model":"m","messages":[],"tools":[{"type":"web_fetch_20250910","name":"web_fetch"}]}"#, Some(HostedTool)),
        (Anthropic, Messages, r#"{"model":"m","messages":[],"tools":[{"name":"web_search_now","input_schema":{"type":"object"}}]}"#, None),
        // Gemini
        (Gemini, GenerateContent, r#"{"contents":[{"role":"user","parts":[{"text":"hi"}]}]}"#, None),
        (Gemini, StreamGenerateContent, r#"{"cachedContent":"cachedContents/abc","contents":[{"parts":[{"text":"q"}]}]}"#, Some(CachedContent)),
        (Gemini, GenerateContent, r#"{"cached_content":"cachedContents/abc","contents":[]}"#, Some(CachedContent)),
        (Gemini, GenerateContent, r#"{"contents":[{"parts":[{"fileData":{"mimeType":"application/pdf","fileUri":"https://generativelanguage.googleapis.com/v1beta/files/f"}}]}]}"#, Some(File)),
        (Gemini, GenerateContent, r#"{"contents":[{"parts":[{"file_data":{"file_uri":"gs://b/v.mp4"}}]}]}"#, Some(File)),
        (Gemini, GenerateContent, r#"{"contents":[{"parts":[{"inlineData":{"mimeType":"image/png","data":"iVBO"}}]}]}"#, Some(InlineMedia)),
        (Gemini, GenerateContent, r#"{"systemInstruction":{"parts":[{"inline_data":{"mime_type":"audio/wav","data":"UklG"}}]},"contents":[]}"#, Some(InlineMedia)),
        (Gemini, GenerateContent, r#"{"contents":[],"tools":[{"googleSearch":{}}]}"#, Some(HostedTool)),
        (Gemini, GenerateContent, r#"{"contents":[],"tools":[{"url_context":{}}]}"#, Some(HostedTool)),
        (Gemini, GenerateContent, r#"{"contents":[],"tools":[{"codeExecution":{}}]}"#, Some(HostedTool)),
        (Gemini, GenerateContent, r#"{"contents":[],"tools":[{"functionDeclarations":[{"name":"f","parameters":{"properties":{"googleSearch":{}}}}]}]}"#, None),
        // Gemini cache creation: what the cache holds is its prompt; a file by URI or inline
        // media in it is no more bounded by the body than in a generation.
        (Gemini, CreateCachedContent, r#"{"model":"models/g","contents":[{"role":"user","parts":[{"text":"a long document"}]}],"ttl":"300s"}"#, None),
        (Gemini, CreateCachedContent, r#"{"model":"models/g","contents":[{"role":"user","parts":[{"fileData":{"mimeType":"application/pdf","fileUri":"https://generativelanguage.googleapis.com/v1beta/files/f"}}]}]}"#, Some(File)),
        (Gemini, CreateCachedContent, r#"{"model":"models/g","systemInstruction":{"parts":[{"inlineData":{"mimeType":"image/png","data":"iVBO"}}]},"contents":[]}"#, Some(InlineMedia)),
    ];

    #[test]
    fn every_recognised_shape_in_every_dialect() {
        for (dialect, endpoint, body, expected) in CASES {
            assert_eq!(shape(*dialect, *endpoint, body), *expected, "{dialect:?} {endpoint:?} {body}");
        }
    }

    #[test]
    fn escaped_spellings_are_recognised_too() {
        let body = r#"{"model":"m","messages":[{"role":"user","content":[{"type":"imag\u0065_url","imag\u0065_url":{"url":"u"}}]}]}"#;
        assert_eq!(shape(OpenAi, Chat, body), Some(Image));
        let body = r#"{"model":"m","previous_respons\u0065_id":"resp_1"}"#;
        assert_eq!(shape(OpenAi, Responses, body), Some(PreviousResponse), "top-level keys are decoded by the scan");
    }

    #[test]
    fn a_wrong_type_or_absurd_length_is_a_400_naming_the_field() {
        let long = "r".repeat(MAX_REFERENCE_BYTES + 1);
        let at_limit = "r".repeat(MAX_REFERENCE_BYTES);
        let cases: &[(Dialect, Endpoint, String, &str, &str)] = &[
            (OpenAi, Responses, r#"{"previous_response_id":42}"#.into(), "previous_response_id", "must be a response id (resp_…) as a string, got a number"),
            (OpenAi, Responses, r#"{"previous_response_id":["resp_1"]}"#.into(), "previous_response_id", "got an array"),
            (OpenAi, Responses, r#"{"previous_response_id":" "}"#.into(), "previous_response_id", "must not be empty"),
            (OpenAi, Responses, format!(r#"{{"previous_response_id":"{long}"}}"#), "previous_response_id", "257 bytes long"),
            (OpenAi, Responses, r#"{"conversation":true}"#.into(), "conversation", "got a boolean"),
            (OpenAi, Responses, r#"{"conversation":{"id":7}}"#.into(), "conversation", "must have an \"id\""),
            (OpenAi, Responses, r#"{"conversation":{"id":""}}"#.into(), "conversation", "must have an \"id\""),
            (OpenAi, Responses, format!(r#"{{"conversation":{{"id":"{long}"}}}}"#), "conversation", "1 to 256 bytes"),
            (OpenAi, Responses, format!(r#"{{"conversation":"{long}"}}"#), "conversation", "257 bytes long"),
            (OpenAi, Responses, r#"{"prompt":"pmpt_1"}"#.into(), "prompt", "must be an object"),
            (Gemini, GenerateContent, r#"{"cachedContent":{"name":"x"}}"#.into(), "cachedContent", "got an object"),
            (Gemini, StreamGenerateContent, format!(r#"{{"cached_content":"{long}"}}"#), "cached_content", "at most 256 bytes"),
            (Anthropic, Messages, r#"{"container":7}"#.into(), "container", "got a number"),
        ];
        for (dialect, endpoint, body, param, needle) in cases {
            let failure = run(*dialect, *endpoint, body).expect_err(body);
            assert_eq!((failure.status(), failure.param.as_deref()), (400, Some(*param)), "{body}");
            assert!(failure.message.contains(needle), "{body}: {}", failure.message);
        }
        let ok = format!(r#"{{"previous_response_id":"{at_limit}"}}"#);
        assert_eq!(shape(OpenAi, Responses, &ok), Some(PreviousResponse), "the limit itself is accepted");
    }

    #[test]
    fn a_previous_response_or_a_cache_is_a_remembered_reference_only_when_it_is_the_only_shape() {
        let resp = |id: &str| Some(Reference::Response(id.to_owned()));
        let cache = |name: &str| Some(Reference::CachedContent(name.to_owned()));
        let conv = |id: &str| Some(Reference::Conversation(id.to_owned()));
        // (endpoint, body, reference)
        let cases: &[(Endpoint, &str, Option<Reference>)] = &[
            (Responses, r#"{"model":"m","previous_response_id":"resp_1","input":"go on"}"#, resp("resp_1")),
            (Responses, r#"{"model":"m","previous_respons\u0065_id":"resp_\u0031","input":"go on"}"#, resp("resp_1")),
            (Responses, r#"{"model":"m","previous_response_id":"resp_1","input":[{"role":"user","content":[{"type":"input_file","file_id":"file-1"}]}]}"#, None),
            (Responses, r#"{"model":"m","previous_response_id":"resp_1","input":"q","tools":[{"type":"web_search_preview"}]}"#, None),
            (Responses, r#"{"model":"m","previous_response_id":"resp_1","conversation":"conv_1"}"#, None),
            (Responses, r#"{"model":"m","previous_response_id":"resp_1","input":"q","tools":[{"type":"function","name":"web_search","parameters":{}}]}"#, resp("resp_1")),
            // A conversation (the memory uses it only with context_memory.conversations).
            (Responses, r#"{"model":"m","conversation":"conv_1","input":"go on"}"#, conv("conv_1")),
            (Responses, r#"{"model":"m","conversation":{"id":"conv_\u0031"},"input":"go on"}"#, conv("conv_1")),
            (Responses, r#"{"model":"m","conversation":"conv_1","input":[{"role":"user","content":[{"type":"input_image","image_url":"https://x/y.png"}]}]}"#, None),
            (Responses, r#"{"model":"m","conversation":"conv_1","input":"q","tools":[{"type":"file_search"}]}"#, None),
            (Responses, r#"{"model":"m","input":"hi"}"#, None),
            // Gemini: a context cache, under either spelling, when it is the only shape.
            (GenerateContent, r#"{"cachedContent":"cachedContents/abc","contents":[]}"#, cache("cachedContents/abc")),
            (StreamGenerateContent, r#"{"cached_content":"cachedContents/abc","contents":[{"parts":[{"text":"q"}]}]}"#, cache("cachedContents/abc")),
            (GenerateContent, r#"{"cachedContent":"cachedContents/\u0061bc","contents":[]}"#, cache("cachedContents/abc")),
            (GenerateContent, r#"{"cachedContent":null,"contents":[]}"#, None),
            (GenerateContent, r#"{"cachedContent":"cachedContents/abc","cached_content":"cachedContents/def","contents":[]}"#, None),
            (GenerateContent, r#"{"cachedContent":"cachedContents/abc","contents":[{"parts":[{"fileData":{"fileUri":"gs://b/v.mp4"}}]}]}"#, None),
            (GenerateContent, r#"{"cachedContent":"cachedContents/abc","contents":[{"parts":[{"inlineData":{"mimeType":"image/png","data":"iVBO"}}]}]}"#, None),
            (GenerateContent, r#"{"cachedContent":"cachedContents/abc","contents":[],"tools":[{"googleSearch":{}}]}"#, None),
            (GenerateContent, r#"{"cachedContent":"cachedContents/abc","contents":[],"tools":[{"functionDeclarations":[{"name":"googleSearch"}]}]}"#, cache("cachedContents/abc")),
            // Not where a request reads a cache: creating one, or another API.
            (CreateCachedContent, r#"{"model":"models/g","cachedContent":"cachedContents/abc","contents":[]}"#, None),
            (Responses, r#"{"model":"m","cachedContent":"cachedContents/abc","input":"hi"}"#, None),
            (GenerateContent, r#"{"previous_response_id":"resp_1","contents":[]}"#, None),
        ];
        for (endpoint, body, want) in cases {
            let top = json::scan_object_watching(body.as_bytes(), watch_list(*endpoint)).expect("valid JSON");
            let shape = detect(*endpoint, body.as_bytes(), &top).expect("valid");
            assert_eq!(&detect_reference(*endpoint, body.as_bytes(), &top, shape), want, "{body}");
        }
    }

    #[test]
    fn a_request_truncates_unless_truncation_is_absent_null_or_disabled() {
        // (body, truncates)
        let cases = [
            (r#"{"conversation":"c","input":"x"}"#, false),
            (r#"{"conversation":"c","truncation":null}"#, false),
            (r#"{"conversation":"c","truncation":"disabled"}"#, false),
            (r#"{"conversation":"c","truncation":"auto"}"#, true),
            (r#"{"conversation":"c","truncation":"auto"}"#, true),
            (r#"{"conversation":"c","truncation":"disabled"}"#, false),
            (r#"{"conversation":"c","truncation":{"type":"auto"}}"#, true),
            (r#"{"conversation":"c","truncation":"something-new"}"#, true),
        ];
        for (body, want) in cases {
            let top = json::scan_object_watching(body.as_bytes(), watch_list(Responses)).expect("valid JSON");
            assert_eq!(truncates(body.as_bytes(), &top), want, "{body}");
        }
    }

    #[test]
    fn watch_lists_fit_the_scanner_and_their_bit_masks() {
        for endpoint in [Chat, Responses, Messages, GenerateContent] {
            assert!(watch_list(endpoint).entries().len() <= json::MAX_WATCHED, "{endpoint:?}");
        }
        assert_eq!(RESPONSES.len(), 12);
        assert_eq!(RESPONSES[6], "id");
        assert_eq!(RESPONSES[7], "reasoning");
        assert_eq!(RESPONSES_TOOLS >> 8, (1 << (RESPONSES.len() - 8)) - 1);
        assert_eq!(ANTHROPIC_TOOLS >> 3, (1 << (ANTHROPIC.len() - 3)) - 1);
        assert_eq!(GEMINI_TOOLS >> 4, (1 << (GEMINI.len() - 4)) - 1);
    }
}
