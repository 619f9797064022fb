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
///
/// A match on the container's node picks a small table of its keys, searched by one shared loop
/// ([`find`]). Matches on the key bytes compiled to a decision tree per match whose blocks one
/// usage event walked most of (3.6 k wasm instructions of code, then 2.4 k with one match per
/// node): code that a proxy, running other requests between a filter's callbacks, fetches again
/// for every event (BENCHMARKS.md, "Issue 15: tenth session").
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

/// A key of a table: its length and its first eight bytes as one number, compared before any
/// byte comparison (a `memcmp` is a call in wasm), and the whole key for longer ones.
#[derive(Debug, Clone, Copy)]
struct Key {
    len: usize,
    word: u64,
    bytes: &'static [u8],
}

const fn k(bytes: &'static [u8]) -> Key {
    Key { len: bytes.len(), word: key_word(bytes), bytes }
}

/// The value a table gives `key`, if it lists it.
#[inline(never)]
fn find<T: Copy>(table: &[(Key, T)], key: &[u8]) -> Option<T> {
    let word = match key.first_chunk::<8>() {
        Some(eight) => u64::from_le_bytes(*eight),
        None => key_word(key),
    };
    table.iter().find(|(k, _)| k.len == key.len() && k.word == word && (k.len <= 8 || k.bytes == key)).map(|&(_, v)| v)
}

type Keys = &'static [(Key, Node)];

const fn usage(field: Field) -> Node {
    Node::Leaf(Target::Usage(field))
}

const fn early(field: Field) -> Node {
    Node::Leaf(Target::EarlyUsage(field))
}

const CONTENT: Node = Node::Leaf(Target::Content);

// OpenAI / Azure: chat, completions, embeddings, Responses.
const OPENAI_ROOT: Keys = &[
    (k(b"model"), Node::Leaf(Target::Model)),
    (k(b"type"), Node::Leaf(Target::Type)),
    (k(b"error"), Node::Leaf(Target::Error)),
    (k(b"status"), Node::Leaf(Target::Status)),
    (k(b"usage"), Node::OUsage),
    (k(b"response"), Node::OResponse),
    (k(b"choices"), Node::OChoices),
    // Responses API streaming deltas (`response.output_text.delta` and friends).
    (k(b"delta"), CONTENT),
    (k(b"output"), Node::OOutput),
    (k(b"id"), Node::Leaf(Target::RootId)),
];
const O_RESPONSE: Keys = &[
    (k(b"model"), Node::Leaf(Target::Model)),
    (k(b"usage"), Node::OUsage),
    (k(b"output"), Node::OFinalOutput),
    (k(b"id"), Node::Leaf(Target::ResponseId)),
];
const O_FINAL_ITEM: Keys = &[(k(b"type"), Node::Leaf(Target::OutputType))];
const O_OUTPUT_ITEM: Keys = &[
    (k(b"type"), Node::Leaf(Target::OutputType)),
    (k(b"content"), Node::OOutputContent),
    (k(b"arguments"), CONTENT),
];
const O_USAGE: Keys = &[
    (k(b"prompt_tokens"), usage(Field::Prompt)),
    (k(b"input_tokens"), usage(Field::Prompt)),
    (k(b"completion_tokens"), usage(Field::Completion)),
    (k(b"output_tokens"), usage(Field::Completion)),
    (k(b"prompt_tokens_details"), Node::OPromptDetails),
    (k(b"input_tokens_details"), Node::OPromptDetails),
    (k(b"completion_tokens_details"), Node::OCompletionDetails),
    (k(b"output_tokens_details"), Node::OCompletionDetails),
];
const O_PROMPT_DETAILS: Keys = &[(k(b"cached_tokens"), usage(Field::CacheRead))];
const O_COMPLETION_DETAILS: Keys = &[(k(b"reasoning_tokens"), usage(Field::Reasoning))];
const O_CHOICE: Keys = &[(k(b"delta"), Node::OChoiceMessage), (k(b"message"), Node::OChoiceMessage), (k(b"text"), CONTENT)];
const O_CHOICE_MESSAGE: Keys = &[
    (k(b"content"), CONTENT),
    (k(b"refusal"), CONTENT),
    (k(b"reasoning_content"), CONTENT),
    (k(b"tool_calls"), Node::OToolCalls),
];
const O_TOOL_CALL: Keys = &[(k(b"function"), Node::OFunction)];
const O_FUNCTION: Keys = &[(k(b"arguments"), CONTENT)];
const O_OUTPUT_PART: Keys = &[(k(b"text"), CONTENT)];

// Anthropic. `message.usage` is message_start's: its output count is a placeholder.
const ANTHROPIC_ROOT: Keys = &[
    (k(b"model"), Node::Leaf(Target::Model)),
    (k(b"type"), Node::Leaf(Target::Type)),
    (k(b"error"), Node::Leaf(Target::Error)),
    (k(b"usage"), Node::AUsage),
    (k(b"message"), Node::AMessage),
    (k(b"delta"), Node::ADelta),
    (k(b"content"), Node::AContent),
];
const A_MESSAGE: Keys = &[(k(b"model"), Node::Leaf(Target::Model)), (k(b"usage"), Node::AEarlyUsage)];
const A_USAGE: Keys = &[
    (k(b"input_tokens"), usage(Field::Prompt)),
    (k(b"output_tokens"), usage(Field::Completion)),
    (k(b"cache_read_input_tokens"), usage(Field::CacheRead)),
    (k(b"cache_creation_input_tokens"), usage(Field::CacheWrite)),
    (k(b"cache_creation"), Node::ACacheCreation),
    (k(b"server_tool_use"), Node::AServerTools),
];
const A_CACHE_CREATION: Keys = &[
    (k(b"ephemeral_5m_input_tokens"), usage(Field::CacheWrite5m)),
    (k(b"ephemeral_1h_input_tokens"), usage(Field::CacheWrite1h)),
];
const A_EARLY_CACHE_CREATION: Keys = &[
    (k(b"ephemeral_5m_input_tokens"), early(Field::CacheWrite5m)),
    (k(b"ephemeral_1h_input_tokens"), early(Field::CacheWrite1h)),
];
const A_SERVER_TOOLS: Keys = &[(k(b"web_search_requests"), usage(Field::WebSearches))];
const A_EARLY_SERVER_TOOLS: Keys = &[(k(b"web_search_requests"), early(Field::WebSearches))];
const A_DELTA: Keys = &[(k(b"text"), CONTENT), (k(b"partial_json"), CONTENT), (k(b"thinking"), CONTENT)];
const A_CONTENT_ITEM: Keys = &[(k(b"text"), CONTENT), (k(b"thinking"), CONTENT)];

// Gemini.
const GEMINI_ROOT: Keys = &[
    (k(b"modelVersion"), Node::Leaf(Target::Model)),
    (k(b"usageMetadata"), Node::GUsage),
    (k(b"candidates"), Node::GCandidates),
    // A cache resource (`cachedContents` create): read only on that endpoint.
    (k(b"name"), Node::Leaf(Target::RootId)),
    (k(b"expireTime"), Node::Leaf(Target::ExpireTime)),
    (k(b"error"), Node::Leaf(Target::Error)),
];
const G_USAGE: Keys = &[
    (k(b"promptTokenCount"), usage(Field::Prompt)),
    (k(b"candidatesTokenCount"), usage(Field::Completion)),
    (k(b"cachedContentTokenCount"), usage(Field::CacheRead)),
    (k(b"thoughtsTokenCount"), usage(Field::Thoughts)),
    (k(b"toolUsePromptTokenCount"), usage(Field::ToolPrompt)),
    (k(b"totalTokenCount"), Node::Leaf(Target::CacheTokens)),
];
const G_CANDIDATE: Keys = &[(k(b"finishReason"), Node::Leaf(Target::Finish)), (k(b"content"), Node::GContent)];
const G_CONTENT: Keys = &[(k(b"parts"), Node::GParts)];
const G_PART: Keys = &[(k(b"text"), CONTENT)];

/// The keys a container's members are looked up in; `None`: nothing in it is read.
fn keys(dialect: Dialect, node: Node) -> Option<Keys> {
    use Node::*;
    Some(match node {
        Root => match dialect {
            Dialect::Gemini => GEMINI_ROOT,
            Dialect::Anthropic => ANTHROPIC_ROOT,
            Dialect::OpenAi | Dialect::AzureOpenAi => OPENAI_ROOT,
        },
        OResponse => O_RESPONSE,
        OFinalItem => O_FINAL_ITEM,
        OOutputItem => O_OUTPUT_ITEM,
        OUsage => O_USAGE,
        OPromptDetails => O_PROMPT_DETAILS,
        OCompletionDetails => O_COMPLETION_DETAILS,
        OChoice => O_CHOICE,
        OChoiceMessage => O_CHOICE_MESSAGE,
        OToolCall => O_TOOL_CALL,
        OFunction => O_FUNCTION,
        OOutputPart => O_OUTPUT_PART,
        AMessage => A_MESSAGE,
        AUsage | AEarlyUsage => A_USAGE,
        ACacheCreation => A_CACHE_CREATION,
        AEarlyCacheCreation => A_EARLY_CACHE_CREATION,
        AServerTools => A_SERVER_TOOLS,
        AEarlyServerTools => A_EARLY_SERVER_TOOLS,
        ADelta => A_DELTA,
        AContentItem => A_CONTENT_ITEM,
        GUsage => G_USAGE,
        GCandidate => G_CANDIDATE,
        GContent => G_CONTENT,
        GPart => G_PART,
        // Containers with no keys we read (arrays, leaves, dead ends).
        Dead | Stream | Leaf(_) | OChoices | OToolCalls | OOutput | OOutputContent | OFinalOutput | AContent | GCandidates
        | GParts => return None,
    })
}

/// An object member's node.
fn key_step(dialect: Dialect, node: Node, key: &[u8]) -> Node {
    let Some(found) = keys(dialect, node).and_then(|table| find(table, key)) else { return Node::Dead };
    if node != Node::AEarlyUsage {
        return found;
    }
    // `message.usage`'s counts are reported again, final, later.
    match found {
        Node::Leaf(Target::Usage(field)) => early(field),
        Node::ACacheCreation => Node::AEarlyCacheCreation,
        Node::AServerTools => Node::AEarlyServerTools,
        other => other,
    }
}

const TERMINAL_TYPES: &[(Key, TerminalEvent)] = &[
    (k(b"response.completed"), TerminalEvent::Completed),
    (k(b"message_stop"), TerminalEvent::Completed),
    (k(b"response.incomplete"), TerminalEvent::Incomplete),
    (k(b"response.failed"), TerminalEvent::Failed),
    (k(b"error"), TerminalEvent::Failed),
];

const TERMINAL_STATUSES: &[(Key, TerminalEvent)] = &[
    (k(b"completed"), TerminalEvent::Completed),
    (k(b"incomplete"), TerminalEvent::Incomplete),
    (k(b"failed"), TerminalEvent::Failed),
];

pub(super) fn terminal_for_type(kind: &[u8]) -> Option<TerminalEvent> {
    find(TERMINAL_TYPES, kind)
}

pub(super) fn terminal_for_status(status: &[u8]) -> Option<TerminalEvent> {
    find(TERMINAL_STATUSES, status)
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
