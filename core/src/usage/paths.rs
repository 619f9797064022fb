//! Where usage lives in each dialect: a small trie of paths (`Node`, `step`), what the value at
//! a path means (`Target`), the upstream's token fields (`Field`) and their normalisation into
//! `Tokens`, and the event types and statuses that end a response.

use super::*;

/// Token counts by the upstream's own field, before normalisation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Field {
    /// `prompt_tokens`, `input_tokens`, `promptTokenCount`.
    Prompt = 0,
    /// `completion_tokens`, `output_tokens`, `candidatesTokenCount`.
    Completion = 1,
    /// `cached_tokens`, `cache_read_input_tokens`, `cachedContentTokenCount`.
    CacheRead = 2,
    /// `cache_creation_input_tokens`.
    CacheWrite = 3,
    /// `reasoning_tokens` (already inside the completion count).
    Reasoning = 4,
    /// Gemini `thoughtsTokenCount` (not inside `candidatesTokenCount`).
    Thoughts = 5,
    /// Gemini `toolUsePromptTokenCount` (not inside `promptTokenCount`).
    ToolPrompt = 6,
    /// Anthropic `cache_creation.ephemeral_5m_input_tokens` (part of the cache writes).
    CacheWrite5m = 7,
    /// Anthropic `cache_creation.ephemeral_1h_input_tokens` (part of the cache writes).
    CacheWrite1h = 8,
    /// Hosted web-search calls: Anthropic `server_tool_use.web_search_requests`, or the number of
    /// OpenAI Responses `web_search_call` output items. Not a token count: a message with only
    /// this is not a usage report.
    WebSearches = 9,
}

pub(super) const FIELDS: usize = 10;
pub(super) type RawUsage = [Option<u64>; FIELDS];

pub(super) fn normalise(dialect: Dialect, usage: &RawUsage) -> Tokens {
    let get = |field: Field| usage.get(field as usize).copied().flatten().unwrap_or(0);
    match dialect {
        Dialect::Anthropic => {
            // The total, or the two lifetimes' counts if they add up to more (as LiteLLM bills).
            let cache_write_1h = get(Field::CacheWrite1h);
            let by_lifetime = get(Field::CacheWrite5m).saturating_add(cache_write_1h);
            Tokens {
                input: get(Field::Prompt),
                output: get(Field::Completion),
                cache_read: get(Field::CacheRead),
                cache_write: get(Field::CacheWrite).max(by_lifetime),
                reasoning: 0,
                cache_write_1h,
                web_searches: get(Field::WebSearches),
            }
        }
        Dialect::Gemini => {
            let prompt = get(Field::Prompt);
            let cache_read = get(Field::CacheRead).min(prompt);
            let thoughts = get(Field::Thoughts);
            Tokens {
                input: (prompt - cache_read).saturating_add(get(Field::ToolPrompt)),
                output: get(Field::Completion).saturating_add(thoughts),
                cache_read,
                cache_write: 0,
                reasoning: thoughts,
                cache_write_1h: 0,
                web_searches: 0,
            }
        }
        Dialect::OpenAi | Dialect::AzureOpenAi => {
            let prompt = get(Field::Prompt);
            let cache_read = get(Field::CacheRead).min(prompt);
            let output = get(Field::Completion);
            Tokens {
                input: prompt - cache_read,
                output,
                cache_read,
                cache_write: 0,
                reasoning: get(Field::Reasoning).min(output),
                cache_write_1h: 0,
                web_searches: get(Field::WebSearches),
            }
        }
    }
}

/// What the value at a path means to us.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Target {
    None,
    Usage(Field),
    /// A usage count the stream will report again, final, later (Anthropic `message_start`).
    EarlyUsage(Field),
    Model,
    Type,
    Status,
    Finish,
    /// An `error` member at the message root (an object there means the upstream failed).
    Error,
    /// Generated content: counted, never stored.
    Content,
    /// The `type` of an OpenAI Responses output item (`web_search_call` items are counted).
    OutputType,
    /// `response.id` of a Responses stream event.
    ResponseId,
    /// The `id` at a message's root: a Responses JSON body's own id (a Gemini cache's `name`).
    RootId,
    /// A Gemini cache's `usageMetadata.totalTokenCount`: the tokens it holds.
    CacheTokens,
    /// A Gemini cache's `expireTime` (RFC 3339).
    ExpireTime,
}

/// Where a container sits on the paths we read: a node of a small trie per dialect, kept in each
/// stack frame. A value's node is one step from its container's, so finding out what a value
/// means costs a match or two, and nothing under a `Dead` container is looked at (not even its keys).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Node {
    /// Nothing we read is in here.
    Dead,
    /// A JSON body's top-level array whose elements are messages (Gemini's array stream).
    Stream,
    /// A message's root object.
    Root,
    /// A value we read.
    Leaf(Target),
    // OpenAI / Azure
    OResponse,
    OUsage,
    OPromptDetails,
    OCompletionDetails,
    OChoices,
    OChoice,
    OChoiceMessage,
    OToolCalls,
    OToolCall,
    OFunction,
    OOutput,
    OOutputItem,
    OOutputContent,
    OOutputPart,
    /// `response.output` of a Responses stream event (the final event repeats every item).
    OFinalOutput,
    OFinalItem,
    // Anthropic
    AMessage,
    AUsage,
    AEarlyUsage,
    ADelta,
    AContent,
    AContentItem,
    ACacheCreation,
    AEarlyCacheCreation,
    AServerTools,
    AEarlyServerTools,
    // Gemini
    GUsage,
    GCandidates,
    GCandidate,
    GContent,
    GParts,
    GPart,
}

/// How a value hangs off its container.
#[derive(Debug, Clone, Copy)]
pub(super) enum Step<'a> {
    Key(&'a [u8]),
    Index,
}

/// The node of a value, from its container's node and its key or index.
///
/// One match on the container's node, then a small match on the key for that node alone. (One
/// match on `(node, step)` compiled to a decision tree whose blocks one usage event walked
/// almost all of: 3.6 k of its 4.2 k wasm instructions of code, code that a proxy, running other
/// requests between a filter's callbacks, fetches again for every event; BENCHMARKS.md, "Issue
/// 15: tenth session". Tables searched by one shared loop cut the code further but executed
/// more instructions per key than these matches, which compare a length and a word or two.)
pub(super) fn step(dialect: Dialect, node: Node, step: Step<'_>) -> Node {
    match step {
        Step::Index => index_step(node),
        Step::Key(key) => key_step(dialect, node, key),
    }
}

/// An array element's node.
fn index_step(node: Node) -> Node {
    use Node::*;
    match node {
        Stream => Root,
        OFinalOutput => OFinalItem,
        OChoices => OChoice,
        OToolCalls => OToolCall,
        OOutput => OOutputItem,
        OOutputContent => OOutputPart,
        AContent => AContentItem,
        GCandidates => GCandidate,
        GParts => GPart,
        _ => Dead,
    }
}

const fn usage(field: Field) -> Node {
    Node::Leaf(Target::Usage(field))
}

const fn early(field: Field) -> Node {
    Node::Leaf(Target::EarlyUsage(field))
}

const CONTENT: Node = Node::Leaf(Target::Content);

/// An object member's node.
fn key_step(dialect: Dialect, node: Node, key: &[u8]) -> Node {
    use Node::*;
    let leaf = Leaf;
    match node {
        Root => root_step(dialect, key),
        // OpenAI / Azure: chat, completions, embeddings, Responses.
        OResponse => match key {
            b"model" => leaf(Target::Model),
            b"usage" => OUsage,
            b"output" => OFinalOutput,
            b"id" => leaf(Target::ResponseId),
            _ => Dead,
        },
        OFinalItem => match key {
            b"type" => leaf(Target::OutputType),
            _ => Dead,
        },
        OOutputItem => match key {
            b"type" => leaf(Target::OutputType),
            b"content" => OOutputContent,
            b"arguments" => CONTENT,
            _ => Dead,
        },
        OUsage => match key {
            b"prompt_tokens" | b"input_tokens" => usage(Field::Prompt),
            b"completion_tokens" | b"output_tokens" => usage(Field::Completion),
            b"prompt_tokens_details" | b"input_tokens_details" => OPromptDetails,
            b"completion_tokens_details" | b"output_tokens_details" => OCompletionDetails,
            _ => Dead,
        },
        OPromptDetails => match key {
            b"cached_tokens" => usage(Field::CacheRead),
            _ => Dead,
        },
        OCompletionDetails => match key {
            b"reasoning_tokens" => usage(Field::Reasoning),
            _ => Dead,
        },
        OChoice => match key {
            b"delta" | b"message" => OChoiceMessage,
            b"text" => CONTENT,
            _ => Dead,
        },
        OChoiceMessage => match key {
            b"content" | b"refusal" | b"reasoning_content" => CONTENT,
            b"tool_calls" => OToolCalls,
            _ => Dead,
        },
        OToolCall => match key {
            b"function" => OFunction,
            _ => Dead,
        },
        OFunction => match key {
            b"arguments" => CONTENT,
            _ => Dead,
        },
        OOutputPart => match key {
            b"text" => CONTENT,
            _ => Dead,
        },
        // Anthropic. `message.usage` is message_start's: its output count is a placeholder.
        AMessage => match key {
            b"model" => leaf(Target::Model),
            b"usage" => AEarlyUsage,
            _ => Dead,
        },
        AUsage => anthropic_usage(key),
        AEarlyUsage => match anthropic_usage(key) {
            Leaf(Target::Usage(field)) => early(field),
            ACacheCreation => AEarlyCacheCreation,
            AServerTools => AEarlyServerTools,
            other => other,
        },
        ACacheCreation => match key {
            b"ephemeral_5m_input_tokens" => usage(Field::CacheWrite5m),
            b"ephemeral_1h_input_tokens" => usage(Field::CacheWrite1h),
            _ => Dead,
        },
        AEarlyCacheCreation => match key {
            b"ephemeral_5m_input_tokens" => early(Field::CacheWrite5m),
            b"ephemeral_1h_input_tokens" => early(Field::CacheWrite1h),
            _ => Dead,
        },
        AServerTools => match key {
            b"web_search_requests" => usage(Field::WebSearches),
            _ => Dead,
        },
        AEarlyServerTools => match key {
            b"web_search_requests" => early(Field::WebSearches),
            _ => Dead,
        },
        ADelta => match key {
            b"text" | b"partial_json" | b"thinking" => CONTENT,
            _ => Dead,
        },
        AContentItem => match key {
            b"text" | b"thinking" => CONTENT,
            _ => Dead,
        },
        // Gemini.
        GUsage => match key {
            b"promptTokenCount" => usage(Field::Prompt),
            b"candidatesTokenCount" => usage(Field::Completion),
            b"cachedContentTokenCount" => usage(Field::CacheRead),
            b"thoughtsTokenCount" => usage(Field::Thoughts),
            b"toolUsePromptTokenCount" => usage(Field::ToolPrompt),
            b"totalTokenCount" => leaf(Target::CacheTokens),
            _ => Dead,
        },
        GCandidate => match key {
            b"finishReason" => leaf(Target::Finish),
            b"content" => GContent,
            _ => Dead,
        },
        GContent => match key {
            b"parts" => GParts,
            _ => Dead,
        },
        GPart => match key {
            b"text" => CONTENT,
            _ => Dead,
        },
        // Containers with no keys we read (arrays, leaves, dead ends).
        Dead | Stream | Leaf(_) | OChoices | OToolCalls | OOutput | OOutputContent | OFinalOutput | AContent | GCandidates
        | GParts => Dead,
    }
}

/// A message root's key: one match per dialect, each a plain match on the key's bytes (its
/// length first, then one comparison per key of that length).
fn root_step(dialect: Dialect, key: &[u8]) -> Node {
    use Node::*;
    let leaf = Leaf;
    match dialect {
        Dialect::Gemini => match key {
            b"modelVersion" => leaf(Target::Model),
            b"usageMetadata" => GUsage,
            b"candidates" => GCandidates,
            // A cache resource (`cachedContents` create): read only on that endpoint.
            b"name" => leaf(Target::RootId),
            b"expireTime" => leaf(Target::ExpireTime),
            b"error" => leaf(Target::Error),
            _ => Dead,
        },
        Dialect::Anthropic => match key {
            b"model" => leaf(Target::Model),
            b"type" => leaf(Target::Type),
            b"error" => leaf(Target::Error),
            b"usage" => AUsage,
            b"message" => AMessage,
            b"delta" => ADelta,
            b"content" => AContent,
            _ => Dead,
        },
        Dialect::OpenAi | Dialect::AzureOpenAi => match key {
            b"model" => leaf(Target::Model),
            b"type" => leaf(Target::Type),
            b"error" => leaf(Target::Error),
            b"status" => leaf(Target::Status),
            b"usage" => OUsage,
            b"response" => OResponse,
            b"choices" => OChoices,
            // Responses API streaming deltas (`response.output_text.delta` and friends).
            b"delta" => CONTENT,
            b"output" => OOutput,
            b"id" => leaf(Target::RootId),
            _ => Dead,
        },
    }
}

fn anthropic_usage(field: &[u8]) -> Node {
    match field {
        b"input_tokens" => usage(Field::Prompt),
        b"output_tokens" => usage(Field::Completion),
        b"cache_read_input_tokens" => usage(Field::CacheRead),
        b"cache_creation_input_tokens" => usage(Field::CacheWrite),
        b"cache_creation" => Node::ACacheCreation,
        b"server_tool_use" => Node::AServerTools,
        _ => Node::Dead,
    }
}

pub(super) fn terminal_for_type(kind: &[u8]) -> Option<TerminalEvent> {
    match kind {
        b"response.completed" | b"message_stop" => Some(TerminalEvent::Completed),
        b"response.incomplete" => Some(TerminalEvent::Incomplete),
        b"response.failed" | b"error" => Some(TerminalEvent::Failed),
        _ => None,
    }
}

pub(super) fn terminal_for_status(status: &[u8]) -> Option<TerminalEvent> {
    match status {
        b"completed" => Some(TerminalEvent::Completed),
        b"incomplete" => Some(TerminalEvent::Incomplete),
        b"failed" => Some(TerminalEvent::Failed),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Node::*;

    fn key(dialect: Dialect, node: Node, key: &str) -> Node {
        step(dialect, node, Step::Key(key.as_bytes()))
    }

    #[test]
    fn each_dialect_reaches_its_usage_fields_and_nothing_else() {
        let (o, a, g) = (Dialect::OpenAi, Dialect::Anthropic, Dialect::Gemini);
        let cases: &[(Dialect, Node, &str, Node)] = &[
            (o, Root, "usage", OUsage),
            (Dialect::AzureOpenAi, Root, "choices", OChoices),
            (o, OUsage, "prompt_tokens", usage(Field::Prompt)),
            (o, OUsage, "input_tokens", usage(Field::Prompt)),
            (o, OUsage, "output_tokens_details", OCompletionDetails),
            (o, OPromptDetails, "cached_tokens", usage(Field::CacheRead)),
            (o, OCompletionDetails, "reasoning_tokens", usage(Field::Reasoning)),
            (o, OChoiceMessage, "reasoning_content", CONTENT),
            (o, OOutputItem, "arguments", CONTENT),
            (o, OFinalItem, "arguments", Dead),
            // Same length as a key read there, other bytes.
            (o, OUsage, "total_tokens", Dead),
            (o, OPromptDetails, "audio_tokens", Dead),
            // A key of another dialect's root.
            (o, Root, "usageMetadata", Dead),
            (a, Root, "message", AMessage),
            (a, AUsage, "cache_creation", ACacheCreation),
            (a, ACacheCreation, "ephemeral_1h_input_tokens", usage(Field::CacheWrite1h)),
            // message_start's usage is reported again, final, later.
            (a, AMessage, "usage", AEarlyUsage),
            (a, AEarlyUsage, "input_tokens", early(Field::Prompt)),
            (a, AEarlyUsage, "cache_creation", AEarlyCacheCreation),
            (a, AEarlyUsage, "server_tool_use", AEarlyServerTools),
            (a, AEarlyCacheCreation, "ephemeral_5m_input_tokens", early(Field::CacheWrite5m)),
            (a, AEarlyServerTools, "web_search_requests", early(Field::WebSearches)),
            (g, Root, "usageMetadata", GUsage),
            (g, GUsage, "totalTokenCount", Node::Leaf(Target::CacheTokens)),
            (g, GCandidate, "finishReason", Node::Leaf(Target::Finish)),
            (g, Root, "usage", Dead),
            // Nothing under a container with no keys we read.
            (o, Dead, "usage", Dead),
            (o, OChoices, "usage", Dead),
            (o, CONTENT, "usage", Dead),
        ];
        for &(dialect, node, k, want) in cases {
            assert_eq!(key(dialect, node, k), want, "{dialect:?} {node:?} .{k}");
        }
        assert_eq!(step(o, Stream, Step::Index), Root);
        assert_eq!(step(o, OChoices, Step::Index), OChoice);
        assert_eq!(step(o, Root, Step::Index), Dead);
    }

    #[test]
    fn terminal_types_and_statuses() {
        assert_eq!(terminal_for_type(b"message_stop"), Some(TerminalEvent::Completed));
        assert_eq!(terminal_for_type(b"response.failed"), Some(TerminalEvent::Failed));
        assert_eq!(terminal_for_type(b"response.created"), None);
        assert_eq!(terminal_for_status(b"incomplete"), Some(TerminalEvent::Incomplete));
        assert_eq!(terminal_for_status(b"in_progress"), None);
    }
}
