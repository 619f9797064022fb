//! Which LLM API a request speaks, recognised from its `:path` alone.
//!
//! Recognition is by exact path shape (after an operator-configured mount prefix and with the query
//! string ignored), never by sniffing the body: a path Tollgate does not know passes through
//! untouched and unmetered (the plugin counts it), so an unusual client can never make the filter
//! misread a request. Envoy's `normalize_path` / `merge_slashes` should be on so `/v1//messages`
//! cannot sidestep recognition (README.md says so).
//!
//! | dialect        | paths (after a mount prefix)                                             |
//! |----------------|--------------------------------------------------------------------------|
//! | `openai`       | `/v1/chat/completions`, `/v1/completions`, `/v1/embeddings`, `/v1/responses` |
//! | `azure_openai` | `/openai/deployments/{deployment}/chat/completions` \| `completions` \| `embeddings` |
//! | `anthropic`    | `/v1/messages`                                                           |
//! | `gemini`       | `/v1beta/models/{model}:generateContent` \| `:streamGenerateContent` (also `/v1/models/…`); `/v1beta/cachedContents` (context-cache creation) |
//!
//! Gemini documents `cachedContents` under `v1beta` only (the `v1` reference has no cache
//! resource), so `/v1/cachedContents` is not recognised. Only the collection itself (`create`, a
//! POST with a body) is: `GET` / `PATCH` / `DELETE` of `cachedContents/{id}` pass through.
//!
//! For Azure and Gemini the model lives in the path; [`Recognised::path_model`] carries it with its
//! byte range in `:path`, so routing can replace exactly that segment.

use std::ops::Range;

/// The API family a request speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Dialect {
    OpenAi,
    AzureOpenAi,
    Anthropic,
    Gemini,
}

impl Dialect {
    pub const ALL: [Dialect; 4] = [Dialect::OpenAi, Dialect::AzureOpenAi, Dialect::Anthropic, Dialect::Gemini];

    /// The name used in usage records, metrics and config: `openai`, `azure_openai`, `anthropic`,
    /// `gemini`.
    pub fn as_str(self) -> &'static str {
        match self {
            Dialect::OpenAi => "openai",
            Dialect::AzureOpenAi => "azure_openai",
            Dialect::Anthropic => "anthropic",
            Dialect::Gemini => "gemini",
        }
    }

    /// Parses the config / metrics name back.
    pub fn parse(text: &str) -> Option<Dialect> {
        Dialect::ALL.into_iter().find(|d| d.as_str() == text)
    }

    /// Whether the model is named in the path (Azure deployment, Gemini model) rather than the body.
    pub fn model_in_path(self) -> bool {
        matches!(self, Dialect::AzureOpenAi | Dialect::Gemini)
    }
}

/// The operation a request calls, which decides the shape of its response.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Endpoint {
    /// OpenAI / Azure `chat/completions`.
    Chat,
    /// OpenAI / Azure legacy `completions`.
    Completions,
    /// OpenAI / Azure `embeddings`.
    Embeddings,
    /// OpenAI `responses`.
    Responses,
    /// Anthropic `messages`.
    Messages,
    /// Gemini `:generateContent`.
    GenerateContent,
    /// Gemini `:streamGenerateContent`.
    StreamGenerateContent,
    /// Gemini `cachedContents` (create a context cache): the model is in the body
    /// (`models/{model}`), the response is the cache resource, not a generation.
    CreateCachedContent,
}

impl Endpoint {
    pub fn as_str(self) -> &'static str {
        match self {
            Endpoint::Chat => "chat",
            Endpoint::Completions => "completions",
            Endpoint::Embeddings => "embeddings",
            Endpoint::Responses => "responses",
            Endpoint::Messages => "messages",
            Endpoint::GenerateContent => "generate_content",
            Endpoint::StreamGenerateContent => "stream_generate_content",
            Endpoint::CreateCachedContent => "create_cached_content",
        }
    }
}

/// A recognised LLM API call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recognised {
    pub dialect: Dialect,
    pub endpoint: Endpoint,
    /// For Azure (deployment) and Gemini (model): the model named in the path, percent-decoded,
    /// and the byte range of its raw segment in the `:path` it was recognised from.
    pub path_model: Option<(String, Range<usize>)>,
}

/// Where each dialect is mounted: path prefixes prepended to the canonical paths.
///
/// The empty prefix means "at the root". Prefixes are normalised at config time: they start with
/// `/` and never end with `/`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mounts {
    /// `(dialect, prefix)` pairs, longest prefix first, so `/llm/openai` is tried before `/llm`.
    entries: Vec<(Dialect, String)>,
}

impl Default for Mounts {
    /// Every dialect at the root.
    fn default() -> Self {
        Mounts { entries: Dialect::ALL.into_iter().map(|d| (d, String::new())).collect() }
    }
}

impl Mounts {
    /// Builds the matcher. Prefixes must be `""` or start with `/` and not end with `/`
    /// (validated by `config`). A dialect absent from `entries` is not recognised at all.
    pub fn new(mut entries: Vec<(Dialect, String)>) -> Mounts {
        entries.sort_by_key(|e| std::cmp::Reverse(e.1.len()));
        Mounts { entries }
    }

    /// The conversation id of an OpenAI `POST /v1/conversations/{id}/items` (adds items to a
    /// conversation without a model call) under the `openai` mount, if `path` is one. Not an LLM
    /// call: it passes through unmetered, but the conversation memory must know the conversation
    /// changed (`core::context_memory`, conversations). The query string is ignored.
    pub fn conversation_items<'p>(&self, path: &'p str) -> Option<&'p str> {
        let path_only = path.split('?').next().unwrap_or(path);
        self.entries.iter().filter(|(dialect, _)| *dialect == Dialect::OpenAi).find_map(|(_, prefix)| {
            let id = path_only.strip_prefix(prefix.as_str())?.strip_prefix("/v1/conversations/")?.strip_suffix("/items")?;
            (!id.is_empty() && !id.contains('/')).then_some(id)
        })
    }

    /// Recognises an LLM call from `:path`. The query string is ignored.
    pub fn recognise(&self, path: &str) -> Option<Recognised> {
        let path_only = match path.find('?') {
            Some(q) => path.get(..q)?,
            None => path,
        };
        for (dialect, prefix) in &self.entries {
            let Some(rest) = path_only.strip_prefix(prefix.as_str()) else { continue };
            if let Some(found) = recognise_canonical(*dialect, rest, prefix.len()) {
                return Some(found);
            }
        }
        None
    }
}

/// Matches one dialect's canonical paths; `offset` is where `rest` starts inside `:path`.
fn recognise_canonical(dialect: Dialect, rest: &str, offset: usize) -> Option<Recognised> {
    let plain = |endpoint| Some(Recognised { dialect, endpoint, path_model: None });
    match dialect {
        Dialect::OpenAi => match rest {
            "/v1/chat/completions" => plain(Endpoint::Chat),
            "/v1/completions" => plain(Endpoint::Completions),
            "/v1/embeddings" => plain(Endpoint::Embeddings),
            "/v1/responses" => plain(Endpoint::Responses),
            _ => None,
        },
        Dialect::Anthropic => match rest {
            "/v1/messages" => plain(Endpoint::Messages),
            _ => None,
        },
        Dialect::AzureOpenAi => {
            const HEAD: &str = "/openai/deployments/";
            let after = rest.strip_prefix(HEAD)?;
            let slash = after.find('/')?;
            let (segment, tail) = after.split_at(slash);
            let endpoint = match tail {
                "/chat/completions" => Endpoint::Chat,
                "/completions" => Endpoint::Completions,
                "/embeddings" => Endpoint::Embeddings,
                _ => return None,
            };
            let start = offset + HEAD.len();
            with_path_model(dialect, endpoint, segment, start)
        }
        Dialect::Gemini => {
            if rest == "/v1beta/cachedContents" {
                return plain(Endpoint::CreateCachedContent);
            }
            let after = rest.strip_prefix("/v1beta/models/").or_else(|| rest.strip_prefix("/v1/models/"))?;
            let head_len = rest.len() - after.len();
            let colon = after.rfind(':')?;
            let (segment, action) = after.split_at(colon);
            let endpoint = match action {
                ":generateContent" => Endpoint::GenerateContent,
                ":streamGenerateContent" => Endpoint::StreamGenerateContent,
                _ => return None,
            };
            if segment.contains('/') {
                return None;
            }
            with_path_model(dialect, endpoint, segment, offset + head_len)
        }
    }
}

fn with_path_model(dialect: Dialect, endpoint: Endpoint, segment: &str, start: usize) -> Option<Recognised> {
    let model = percent_decode(segment)?;
    if model.is_empty() {
        return None;
    }
    Some(Recognised { dialect, endpoint, path_model: Some((model, start..start + segment.len())) })
}

/// Decodes `%XX` escapes the way the upstream will, so the model routed and priced is the model
/// the upstream acts on. `None` for a malformed escape, non-UTF-8 result, or a decoded `/`, `?`, `:`
/// (which would make the upstream read a different path).
fn percent_decode(segment: &str) -> Option<String> {
    if !segment.contains('%') {
        return Some(segment.to_owned());
    }
    let bytes = segment.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        if b == b'%' {
            let hex = |at: usize| bytes.get(at).and_then(|c| (*c as char).to_digit(16));
            let value = hex(i + 1)? * 16 + hex(i + 2)?;
            let value = u8::try_from(value).ok()?;
            if matches!(value, b'/' | b'?' | b':' | b'#') {
                return None;
            }
            out.push(value);
            i += 3;
        } else {
            out.push(b);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(mounts: &Mounts, path: &str, expected: Option<(Dialect, Endpoint, Option<&str>)>) {
        let got = mounts.recognise(path);
        let got = got.as_ref().map(|r| (r.dialect, r.endpoint, r.path_model.as_ref().map(|(m, _)| m.as_str())));
        assert_eq!(got, expected, "{path}");
        if let Some(Recognised { path_model: Some((model, range)), .. }) = mounts.recognise(path) {
            let raw = path.get(range).unwrap_or_default();
            assert_eq!(percent_decode(raw).as_deref(), Some(model.as_str()), "range covers the model in {path}");
        }
    }

    #[test]
    fn canonical_paths_of_every_dialect_are_recognised() {
        use Dialect::*;
        use Endpoint::*;
        let m = Mounts::default();
        check(&m, "/v1/chat/completions", Some((OpenAi, Chat, None)));
        check(&m, "/v1/completions", Some((OpenAi, Completions, None)));
        check(&m, "/v1/embeddings", Some((OpenAi, Embeddings, None)));
        check(&m, "/v1/responses", Some((OpenAi, Responses, None)));
        check(&m, "/v1/messages", Some((Anthropic, Messages, None)));
        check(
            &m,
            "/openai/deployments/gpt4o-prod/chat/completions?api-version=2024-10-21",
            Some((AzureOpenAi, Chat, Some("gpt4o-prod"))),
        );
        check(&m, "/openai/deployments/emb/embeddings", Some((AzureOpenAi, Embeddings, Some("emb"))));
        check(&m, "/openai/deployments/old/completions", Some((AzureOpenAi, Completions, Some("old"))));
        check(&m, "/v1beta/models/gemini-2.0-flash:generateContent", Some((Gemini, GenerateContent, Some("gemini-2.0-flash"))));
        check(
            &m,
            "/v1beta/models/gemini-2.0-flash:streamGenerateContent?alt=sse",
            Some((Gemini, StreamGenerateContent, Some("gemini-2.0-flash"))),
        );
        check(&m, "/v1/models/gemini-1.5-pro:generateContent", Some((Gemini, GenerateContent, Some("gemini-1.5-pro"))));
        check(&m, "/v1beta/cachedContents", Some((Gemini, CreateCachedContent, None)));
        check(&m, "/v1beta/cachedContents?key=k", Some((Gemini, CreateCachedContent, None)));
    }

    #[test]
    fn anything_else_is_not_recognised() {
        let m = Mounts::default();
        for path in [
            "/",
            "/v1/models",
            "/v1/chat/completions/",
            "/v1/chat/completionsX",
            "/V1/chat/completions",
            "/v2/messages",
            "/openai/deployments//chat/completions",
            "/openai/deployments/a/b/chat/completions",
            "/openai/deployments/a/images/generations",
            "/v1beta/models/gemini:countTokens",
            "/v1beta/models/:generateContent",
            "/v1beta/models/a/b:generateContent",
            "/v1beta/models/gemini%2Fx:generateContent",
            "/v1beta/models/bad%zz:generateContent",
            "/x/v1/messages",
            // Only cache creation: reading, updating or deleting a cache passes through.
            "/v1beta/cachedContents/abc",
            "/v1beta/cachedContents/",
            "/v1/cachedContents",
            "/v1beta/models/cachedContents",
        ] {
            check(&m, path, None);
        }
    }

    #[test]
    fn mount_prefixes_are_honoured_and_only_where_configured() {
        let m = Mounts::new(vec![
            (Dialect::OpenAi, "/llm/openai".into()),
            (Dialect::Anthropic, "/llm/anthropic".into()),
            (Dialect::Anthropic, String::new()),
        ]);
        check(&m, "/llm/openai/v1/chat/completions", Some((Dialect::OpenAi, Endpoint::Chat, None)));
        check(&m, "/v1/chat/completions", None);
        check(&m, "/llm/anthropic/v1/messages", Some((Dialect::Anthropic, Endpoint::Messages, None)));
        check(&m, "/v1/messages", Some((Dialect::Anthropic, Endpoint::Messages, None)));
        check(&m, "/v1beta/models/g:generateContent", None);
        let g = Mounts::new(vec![(Dialect::Gemini, "/gemini".into())]);
        check(&g, "/gemini/v1beta/cachedContents", Some((Dialect::Gemini, Endpoint::CreateCachedContent, None)));
        check(&g, "/v1beta/cachedContents", None);
        let path = "/gemini/v1beta/models/gemini-2.0-flash:generateContent";
        let r = g.recognise(path).unwrap();
        let (_, range) = r.path_model.unwrap();
        assert_eq!(&path[range], "gemini-2.0-flash");
    }

    #[test]
    fn conversation_item_posts_are_found_under_the_openai_mount_only() {
        let m = Mounts::new(vec![(Dialect::OpenAi, "/llm/openai".into()), (Dialect::Anthropic, String::new())]);
        // (path, conversation id)
        let cases = [
            ("/llm/openai/v1/conversations/conv_1/items", Some("conv_1")),
            ("/llm/openai/v1/conversations/conv_1/items?include=x", Some("conv_1")),
            ("/v1/conversations/conv_1/items", None),
            ("/llm/openai/v1/conversations/conv_1", None),
            ("/llm/openai/v1/conversations//items", None),
            ("/llm/openai/v1/conversations/conv_1/items/msg_1", None),
            ("/llm/openai/v1/conversations/a/b/items", None),
        ];
        for (path, want) in cases {
            assert_eq!(m.conversation_items(path), want, "{path}");
        }
        assert_eq!(Mounts::default().conversation_items("/v1/conversations/conv_9/items"), Some("conv_9"));
        assert_eq!(m.recognise("/llm/openai/v1/conversations/conv_1/items"), None, "not an LLM call");
    }

    #[test]
    fn percent_escapes_in_path_models_decode_as_the_upstream_will() {
        let m = Mounts::default();
        check(&m, "/v1beta/models/gemini%2D2.0:generateContent", Some((Dialect::Gemini, Endpoint::GenerateContent, Some("gemini-2.0"))));
    }

    #[test]
    fn names_round_trip() {
        for d in Dialect::ALL {
            assert_eq!(Dialect::parse(d.as_str()), Some(d));
        }
        assert_eq!(Dialect::parse("bedrock"), None);
    }
}
