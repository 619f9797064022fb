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
/// means costs one match, and nothing under a `Dead` container is looked at (not even its keys).
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
pub(super) fn step(dialect: Dialect, node: Node, step: Step<'_>) -> Node {
    use Node::*;
    use Step::{Index as I, Key as K};
    let leaf = Leaf;
    let usage = |field: Field| Leaf(Target::Usage(field));
    match (node, step) {
        (Stream, I) => Root,
        (Root, K(key)) => root_step(dialect, key),
        // OpenAI / Azure: chat, completions, embeddings, Responses.
        (OResponse, K(b"model")) => leaf(Target::Model),
        (OResponse, K(b"usage")) => OUsage,
        (OResponse, K(b"output")) => OFinalOutput,
        (OResponse, K(b"id")) => leaf(Target::ResponseId),
        (OFinalOutput, I) => OFinalItem,
        (OFinalItem | OOutputItem, K(b"type")) => leaf(Target::OutputType),
        (OUsage, K(b"prompt_tokens" | b"input_tokens")) => usage(Field::Prompt),
        (OUsage, K(b"completion_tokens" | b"output_tokens")) => usage(Field::Completion),
        (OUsage, K(b"prompt_tokens_details" | b"input_tokens_details")) => OPromptDetails,
        (OUsage, K(b"completion_tokens_details" | b"output_tokens_details")) => OCompletionDetails,
        (OPromptDetails, K(b"cached_tokens")) => usage(Field::CacheRead),
        (OCompletionDetails, K(b"reasoning_tokens")) => usage(Field::Reasoning),
        (OChoices, I) => OChoice,
        (OChoice, K(b"delta" | b"message")) => OChoiceMessage,
        (OChoice, K(b"text")) => leaf(Target::Content),
        (OChoiceMessage, K(b"content" | b"refusal" | b"reasoning_content")) => leaf(Target::Content),
        (OChoiceMessage, K(b"tool_calls")) => OToolCalls,
        (OToolCalls, I) => OToolCall,
        (OToolCall, K(b"function")) => OFunction,
        (OFunction, K(b"arguments")) => leaf(Target::Content),
        (OOutput, I) => OOutputItem,
        (OOutputItem, K(b"content")) => OOutputContent,
        (OOutputItem, K(b"arguments")) => leaf(Target::Content),
        (OOutputContent, I) => OOutputPart,
        (OOutputPart, K(b"text")) => leaf(Target::Content),
        // Anthropic. `message.usage` is message_start's: its output count is a placeholder.
        (AMessage, K(b"model")) => leaf(Target::Model),
        (AMessage, K(b"usage")) => AEarlyUsage,
        (AUsage, K(field)) => anthropic_usage(field),
        (AEarlyUsage, K(field)) => match anthropic_usage(field) {
            Leaf(Target::Usage(field)) => Leaf(Target::EarlyUsage(field)),
            ACacheCreation => AEarlyCacheCreation,
            AServerTools => AEarlyServerTools,
            other => other,
        },
        (ACacheCreation, K(b"ephemeral_5m_input_tokens")) => usage(Field::CacheWrite5m),
        (ACacheCreation, K(b"ephemeral_1h_input_tokens")) => usage(Field::CacheWrite1h),
        (AEarlyCacheCreation, K(b"ephemeral_5m_input_tokens")) => Leaf(Target::EarlyUsage(Field::CacheWrite5m)),
        (AEarlyCacheCreation, K(b"ephemeral_1h_input_tokens")) => Leaf(Target::EarlyUsage(Field::CacheWrite1h)),
        (AServerTools, K(b"web_search_requests")) => usage(Field::WebSearches),
        (AEarlyServerTools, K(b"web_search_requests")) => Leaf(Target::EarlyUsage(Field::WebSearches)),
        (ADelta, K(b"text" | b"partial_json" | b"thinking")) => leaf(Target::Content),
        (AContent, I) => AContentItem,
        (AContentItem, K(b"text" | b"thinking")) => leaf(Target::Content),
        // Gemini.
        (GUsage, K(b"promptTokenCount")) => usage(Field::Prompt),
        (GUsage, K(b"candidatesTokenCount")) => usage(Field::Completion),
        (GUsage, K(b"cachedContentTokenCount")) => usage(Field::CacheRead),
        (GUsage, K(b"thoughtsTokenCount")) => usage(Field::Thoughts),
        (GUsage, K(b"toolUsePromptTokenCount")) => usage(Field::ToolPrompt),
        (GUsage, K(b"totalTokenCount")) => leaf(Target::CacheTokens),
        (GCandidates, I) => GCandidate,
        (GCandidate, K(b"finishReason")) => leaf(Target::Finish),
        (GCandidate, K(b"content")) => GContent,
        (GContent, K(b"parts")) => GParts,
        (GParts, I) => GPart,
        (GPart, K(b"text")) => leaf(Target::Content),
        _ => Dead,
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
            b"delta" => leaf(Target::Content),
            b"output" => OOutput,
            b"id" => leaf(Target::RootId),
            _ => Dead,
        },
    }
}

pub(super) fn anthropic_usage(field: &[u8]) -> Node {
    let usage = |field: Field| Node::Leaf(Target::Usage(field));
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
