//! Usage scanning, specified by realistic responses of every dialect, then by properties: the
//! outcome never depends on how the bytes are split, and no input makes the scanner panic.

use super::*;
use proptest::prelude::*;

fn scan(dialect: Dialect, endpoint: Endpoint, format: ResponseFormat, body: &[u8]) -> ScanOutcome {
    let mut scanner = UsageScanner::new(dialect, endpoint, format);
    scanner.feed(body);
    scanner.finish()
}

fn scan_chunks(dialect: Dialect, endpoint: Endpoint, format: ResponseFormat, chunks: &[&[u8]]) -> ScanOutcome {
    let mut scanner = UsageScanner::new(dialect, endpoint, format);
    for chunk in chunks {
        scanner.feed(chunk);
    }
    scanner.finish()
}

fn tokens(input: u64, output: u64, cache_read: u64, cache_write: u64, reasoning: u64) -> Option<Tokens> {
    Some(Tokens { input, output, cache_read, cache_write, reasoning, ..Tokens::default() })
}

/// A realistic response and what scanning it must give.
struct Case {
    name: &'static str,
    dialect: Dialect,
    endpoint: Endpoint,
    format: ResponseFormat,
    body: &'static str,
    tokens: Option<Tokens>,
    partial: Option<Tokens>,
    model: Option<&'static str>,
    content_bytes: u64,
    terminal: Option<TerminalEvent>,
}

use Dialect::*;
use Endpoint::*;
use ResponseFormat::{Json, Sse};
use TerminalEvent::*;

const OPENAI_CHAT_SSE: &str = concat!(
    "data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"gpt-4o-2024-08-06\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\",\"refusal\":null},\"logprobs\":null,\"finish_reason\":null}],\"usage\":null}\n\n",
    "data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"gpt-4o-2024-08-06\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hello\"},\"logprobs\":null,\"finish_reason\":null}],\"usage\":null}\n\n",
    "data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"gpt-4o-2024-08-06\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\" w\\u00f6rld\"},\"logprobs\":null,\"finish_reason\":null}],\"usage\":null}\n\n",
    "data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"gpt-4o-2024-08-06\",\"choices\":[{\"index\":0,\"delta\":{},\"logprobs\":null,\"finish_reason\":\"stop\"}],\"usage\":null}\n\n",
    "data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"gpt-4o-2024-08-06\",\"choices\":[],\"usage\":{\"prompt_tokens\":1000,\"completion_tokens\":300,\"total_tokens\":1300,\"prompt_tokens_details\":{\"cached_tokens\":400,\"audio_tokens\":0},\"completion_tokens_details\":{\"reasoning_tokens\":120,\"audio_tokens\":0,\"accepted_prediction_tokens\":0,\"rejected_prediction_tokens\":0}}}\n\n",
    "data: [DONE]\n\n",
);

const OPENAI_CHAT_JSON: &str = r#"{
  "id": "chatcmpl-2", "object": "chat.completion", "created": 1, "model": "gpt-4o-mini-2024-07-18",
  "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hi there", "refusal": null,
    "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{\"a\":1}"}}]},
    "logprobs": null, "finish_reason": "stop"}],
  "usage": {"prompt_tokens": 19, "completion_tokens": 10, "total_tokens": 29,
    "prompt_tokens_details": {"cached_tokens": 0}, "completion_tokens_details": {"reasoning_tokens": 0}},
  "system_fingerprint": "fp_1"
}"#;

const OPENAI_COMPLETIONS_SSE: &str = concat!(
    "data: {\"id\":\"cmpl-1\",\"object\":\"text_completion\",\"created\":1,\"choices\":[{\"text\":\"Once\",\"index\":0,\"logprobs\":null,\"finish_reason\":null}],\"model\":\"gpt-3.5-turbo-instruct\",\"usage\":null}\n\n",
    "data: {\"id\":\"cmpl-1\",\"object\":\"text_completion\",\"created\":1,\"choices\":[{\"text\":\" upon\",\"index\":0,\"logprobs\":null,\"finish_reason\":\"length\"}],\"model\":\"gpt-3.5-turbo-instruct\",\"usage\":null}\n\n",
    "data: {\"id\":\"cmpl-1\",\"object\":\"text_completion\",\"created\":1,\"choices\":[],\"model\":\"gpt-3.5-turbo-instruct\",\"usage\":{\"prompt_tokens\":5,\"completion_tokens\":2,\"total_tokens\":7}}\n\n",
    "data: [DONE]\n\n",
);

const OPENAI_EMBEDDINGS_JSON: &str = r#"{"object":"list","data":[{"object":"embedding","index":0,"embedding":[0.0023064255,-0.009327292,-0.0028842222]}],"model":"text-embedding-3-small","usage":{"prompt_tokens":8,"total_tokens":8}}"#;

const RESPONSES_SSE: &str = concat!(
    "event: response.created\n",
    "data: {\"type\":\"response.created\",\"sequence_number\":0,\"response\":{\"id\":\"resp_1\",\"object\":\"response\",\"status\":\"in_progress\",\"model\":\"o4-mini-2025-04-16\",\"output\":[],\"usage\":null}}\n\n",
    "event: response.output_text.delta\n",
    "data: {\"type\":\"response.output_text.delta\",\"sequence_number\":4,\"item_id\":\"msg_1\",\"output_index\":1,\"content_index\":0,\"delta\":\"Hi\"}\n\n",
    "event: response.output_text.delta\n",
    "data: {\"type\":\"response.output_text.delta\",\"sequence_number\":5,\"item_id\":\"msg_1\",\"output_index\":1,\"content_index\":0,\"delta\":\" there!\"}\n\n",
    "event: response.completed\n",
    "data: {\"type\":\"response.completed\",\"sequence_number\":9,\"response\":{\"id\":\"resp_1\",\"object\":\"response\",\"status\":\"completed\",\"model\":\"o4-mini-2025-04-16\",",
    "\"output\":[{\"type\":\"reasoning\",\"id\":\"rs_1\",\"summary\":[]},{\"type\":\"message\",\"id\":\"msg_1\",\"status\":\"completed\",\"role\":\"assistant\",\"content\":[{\"type\":\"output_text\",\"text\":\"Hi there!\",\"annotations\":[]}]}],",
    "\"usage\":{\"input_tokens\":2000,\"input_tokens_details\":{\"cached_tokens\":1500},\"output_tokens\":700,\"output_tokens_details\":{\"reasoning_tokens\":640},\"total_tokens\":2700}}}\n\n",
);

const RESPONSES_INCOMPLETE_SSE: &str = concat!(
    "event: response.output_text.delta\n",
    "data: {\"type\":\"response.output_text.delta\",\"delta\":\"abcd\"}\n\n",
    "event: response.incomplete\n",
    "data: {\"type\":\"response.incomplete\",\"response\":{\"status\":\"incomplete\",\"incomplete_details\":{\"reason\":\"max_output_tokens\"},\"model\":\"gpt-4.1\",\"usage\":{\"input_tokens\":10,\"input_tokens_details\":{\"cached_tokens\":0},\"output_tokens\":16,\"output_tokens_details\":{\"reasoning_tokens\":0},\"total_tokens\":26}}}\n\n",
);

const RESPONSES_FAILED_SSE: &str = concat!(
    "event: response.failed\n",
    "data: {\"type\":\"response.failed\",\"response\":{\"status\":\"failed\",\"error\":{\"code\":\"server_error\",\"message\":\"x\"},\"model\":\"gpt-4.1\",\"usage\":{\"input_tokens\":10,\"output_tokens\":3}}}\n\n",
);

const RESPONSES_JSON: &str = r#"{"id":"resp_2","object":"response","created_at":1,"status":"incomplete","error":null,
  "incomplete_details":{"reason":"max_output_tokens"},"model":"gpt-4.1-2025-04-14",
  "output":[{"type":"message","id":"msg_2","status":"incomplete","role":"assistant","content":[{"type":"output_text","text":"Hello","annotations":[]}]}],
  "usage":{"input_tokens":36,"input_tokens_details":{"cached_tokens":6},"output_tokens":87,"output_tokens_details":{"reasoning_tokens":0},"total_tokens":123}}"#;

const ANTHROPIC_SSE: &str = concat!(
    "event: message_start\n",
    "data: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_1\",\"type\":\"message\",\"role\":\"assistant\",\"content\":[],\"model\":\"claude-sonnet-4-5-20250929\",\"stop_reason\":null,\"stop_sequence\":null,\"usage\":{\"input_tokens\":25,\"cache_creation_input_tokens\":100,\"cache_read_input_tokens\":50,\"output_tokens\":1}}}\n\n",
    "event: content_block_start\n",
    "data: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n",
    "event: ping\n",
    "data: {\"type\": \"ping\"}\n\n",
    "event: content_block_delta\n",
    "data: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Hello\"}}\n\n",
    "event: content_block_delta\n",
    "data: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"!\"}}\n\n",
    "event: content_block_stop\n",
    "data: {\"type\":\"content_block_stop\",\"index\":0}\n\n",
    "event: message_delta\n",
    "data: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\",\"stop_sequence\":null},\"usage\":{\"output_tokens\":9}}\n\n",
    "event: message_delta\n",
    "data: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\",\"stop_sequence\":null},\"usage\":{\"output_tokens\":15}}\n\n",
    "event: message_stop\n",
    "data: {\"type\":\"message_stop\"}\n\n",
);

const ANTHROPIC_JSON: &str = r#"{"id":"msg_2","type":"message","role":"assistant","model":"claude-haiku-4-5-20251001",
  "content":[{"type":"thinking","thinking":"hmm","signature":"sig"},{"type":"text","text":"Hi!"},{"type":"tool_use","id":"t","name":"f","input":{"a":"long text not counted"}}],
  "stop_reason":"end_turn","stop_sequence":null,
  "usage":{"input_tokens":12,"cache_creation_input_tokens":0,"cache_read_input_tokens":2048,"output_tokens":6,"service_tier":"standard"}}"#;

const ANTHROPIC_ERROR_SSE: &str = concat!(
    "event: message_start\n",
    "data: {\"type\":\"message_start\",\"message\":{\"model\":\"claude-opus-4-5\",\"usage\":{\"input_tokens\":7,\"output_tokens\":1}}}\n\n",
    "event: error\n",
    "data: {\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\",\"message\":\"Overloaded\"}}\n\n",
);

const GEMINI_JSON: &str = r#"{
  "candidates": [{"content": {"parts": [{"text": "Four."}], "role": "model"}, "finishReason": "STOP", "index": 0}],
  "usageMetadata": {"promptTokenCount": 1200, "candidatesTokenCount": 40, "totalTokenCount": 1340,
    "cachedContentTokenCount": 1000, "thoughtsTokenCount": 100,
    "promptTokensDetails": [{"modality": "TEXT", "tokenCount": 1200}]},
  "modelVersion": "gemini-2.5-flash", "responseId": "r1"
}"#;

const GEMINI_SSE: &str = concat!(
    "data: {\"candidates\": [{\"content\": {\"parts\": [{\"text\": \"The\"}],\"role\": \"model\"},\"index\": 0}],\"usageMetadata\": {\"promptTokenCount\": 9,\"totalTokenCount\": 9,\"promptTokensDetails\": [{\"modality\": \"TEXT\",\"tokenCount\": 9}]},\"modelVersion\": \"gemini-2.5-pro\"}\r\n\r\n",
    "data: {\"candidates\": [{\"content\": {\"parts\": [{\"text\": \" answer\"}],\"role\": \"model\"},\"index\": 0}],\"usageMetadata\": {\"promptTokenCount\": 9,\"totalTokenCount\": 9},\"modelVersion\": \"gemini-2.5-pro\"}\r\n\r\n",
    "data: {\"candidates\": [{\"content\": {\"parts\": [{\"text\": \" is 4\"}],\"role\": \"model\"},\"finishReason\": \"STOP\",\"index\": 0}],\"usageMetadata\": {\"promptTokenCount\": 9,\"candidatesTokenCount\": 5,\"totalTokenCount\": 44,\"thoughtsTokenCount\": 30},\"modelVersion\": \"gemini-2.5-pro\"}\r\n\r\n",
);

const GEMINI_ARRAY_STREAM: &str = r#"[{
  "candidates": [{"content": {"parts": [{"text": "Hel"}], "role": "model"}, "index": 0}],
  "usageMetadata": {"promptTokenCount": 6, "totalTokenCount": 6},
  "modelVersion": "gemini-2.0-flash"
}
,
{
  "candidates": [{"content": {"parts": [{"text": "lo"}], "role": "model"}, "finishReason": "STOP", "index": 0}],
  "usageMetadata": {"promptTokenCount": 6, "candidatesTokenCount": 2, "totalTokenCount": 8},
  "modelVersion": "gemini-2.0-flash"
}
]"#;

/// SSE framing details: CRLF and lone CR line ends, comments, `event` after `data`, no space after
/// the colon, JSON split over several `data` lines, an unknown field, `retry`, `id`.
const SSE_FRAMING: &str = concat!(
    ": keep-alive comment\r\n\r\n",
    "id: 1\rretry: 1000\r",
    "data:{\"type\":\"message_start\",\r\n",
    "data:  \"message\":{\"model\":\"claude-3-5-haiku-20241022\",\n",
    "data: \"usage\":{\"input_tokens\":3,\"output_tokens\":1}}}\n",
    "event: message_start\n",
    "weird-field: x\n",
    "\n",
    "event:content_block_delta\ndata:{\"type\":\"content_block_delta\",\"delta\":{\"type\":\"text_delta\",\"text\":\"ab\\\"c\"}}\r\r",
    "data: {\"type\":\"message_delta\",\"usage\":{\"output_tokens\":4}}\n\n",
);

fn cases() -> Vec<Case> {
    vec![
        Case {
            name: "openai chat stream with usage chunk",
            dialect: OpenAi,
            endpoint: Chat,
            format: Sse,
            body: OPENAI_CHAT_SSE,
            tokens: tokens(600, 300, 400, 0, 120),
            partial: None,
            model: Some("gpt-4o-2024-08-06"),
            content_bytes: 5 + 11,
            terminal: Some(Completed),
        },
        Case {
            name: "openai chat json",
            dialect: OpenAi,
            endpoint: Chat,
            format: Json,
            body: OPENAI_CHAT_JSON,
            tokens: tokens(19, 10, 0, 0, 0),
            partial: None,
            model: Some("gpt-4o-mini-2024-07-18"),
            content_bytes: 8 + 9,
            terminal: Some(Completed),
        },
        Case {
            name: "azure completions stream",
            dialect: AzureOpenAi,
            endpoint: Completions,
            format: Sse,
            body: OPENAI_COMPLETIONS_SSE,
            tokens: tokens(5, 2, 0, 0, 0),
            partial: None,
            model: Some("gpt-3.5-turbo-instruct"),
            content_bytes: 9,
            terminal: Some(Completed),
        },
        Case {
            name: "openai embeddings",
            dialect: OpenAi,
            endpoint: Embeddings,
            format: Json,
            body: OPENAI_EMBEDDINGS_JSON,
            tokens: tokens(8, 0, 0, 0, 0),
            partial: None,
            model: Some("text-embedding-3-small"),
            content_bytes: 0,
            terminal: Some(Completed),
        },
        Case {
            name: "responses stream completed",
            dialect: OpenAi,
            endpoint: Responses,
            format: Sse,
            body: RESPONSES_SSE,
            tokens: tokens(500, 700, 1500, 0, 640),
            partial: None,
            model: Some("o4-mini-2025-04-16"),
            content_bytes: 2 + 7,
            terminal: Some(Completed),
        },
        Case {
            name: "responses stream incomplete",
            dialect: OpenAi,
            endpoint: Responses,
            format: Sse,
            body: RESPONSES_INCOMPLETE_SSE,
            tokens: tokens(10, 16, 0, 0, 0),
            partial: None,
            model: Some("gpt-4.1"),
            content_bytes: 4,
            terminal: Some(Incomplete),
        },
        Case {
            name: "responses stream failed still bills its usage",
            dialect: OpenAi,
            endpoint: Responses,
            format: Sse,
            body: RESPONSES_FAILED_SSE,
            tokens: tokens(10, 3, 0, 0, 0),
            partial: None,
            model: Some("gpt-4.1"),
            content_bytes: 0,
            terminal: Some(Failed),
        },
        Case {
            name: "responses json incomplete",
            dialect: AzureOpenAi,
            endpoint: Responses,
            format: Json,
            body: RESPONSES_JSON,
            tokens: tokens(30, 87, 6, 0, 0),
            partial: None,
            model: Some("gpt-4.1-2025-04-14"),
            content_bytes: 5,
            terminal: Some(Incomplete),
        },
        Case {
            name: "anthropic stream: message_start plus cumulative message_delta",
            dialect: Anthropic,
            endpoint: Messages,
            format: Sse,
            body: ANTHROPIC_SSE,
            tokens: tokens(25, 15, 50, 100, 0),
            partial: None,
            model: Some("claude-sonnet-4-5-20250929"),
            content_bytes: 6,
            terminal: Some(Completed),
        },
        Case {
            name: "anthropic json",
            dialect: Anthropic,
            endpoint: Messages,
            format: Json,
            body: ANTHROPIC_JSON,
            tokens: tokens(12, 6, 2048, 0, 0),
            partial: None,
            model: Some("claude-haiku-4-5-20251001"),
            content_bytes: 3 + 3,
            terminal: Some(Completed),
        },
        Case {
            name: "anthropic stream error after message_start",
            dialect: Anthropic,
            endpoint: Messages,
            format: Sse,
            body: ANTHROPIC_ERROR_SSE,
            tokens: None,
            partial: tokens(7, 1, 0, 0, 0),
            model: Some("claude-opus-4-5"),
            content_bytes: 0,
            terminal: Some(Failed),
        },
        Case {
            name: "gemini json with cache and thoughts",
            dialect: Gemini,
            endpoint: GenerateContent,
            format: Json,
            body: GEMINI_JSON,
            tokens: tokens(200, 140, 1000, 0, 100),
            partial: None,
            model: Some("gemini-2.5-flash"),
            content_bytes: 5,
            terminal: Some(Completed),
        },
        Case {
            name: "gemini sse (alt=sse), CRLF, last usageMetadata wins",
            dialect: Gemini,
            endpoint: StreamGenerateContent,
            format: Sse,
            body: GEMINI_SSE,
            tokens: tokens(9, 35, 0, 0, 30),
            partial: None,
            model: Some("gemini-2.5-pro"),
            content_bytes: 3 + 7 + 5,
            terminal: Some(Completed),
        },
        Case {
            name: "gemini json-array stream",
            dialect: Gemini,
            endpoint: StreamGenerateContent,
            format: Json,
            body: GEMINI_ARRAY_STREAM,
            tokens: tokens(6, 2, 0, 0, 0),
            partial: None,
            model: Some("gemini-2.0-flash"),
            content_bytes: 5,
            terminal: Some(Completed),
        },
        Case {
            name: "sse framing details",
            dialect: Anthropic,
            endpoint: Messages,
            format: Sse,
            body: SSE_FRAMING,
            tokens: tokens(3, 4, 0, 0, 0),
            partial: None,
            model: Some("claude-3-5-haiku-20241022"),
            content_bytes: 5,
            terminal: None,
        },
    ]
}

fn outcome_of(case: &Case) -> ScanOutcome {
    scan(case.dialect, case.endpoint, case.format, case.body.as_bytes())
}

#[test]
fn every_dialect_reports_its_usage() {
    for case in cases() {
        let got = outcome_of(&case);
        let want = ScanOutcome {
            tokens: case.tokens,
            partial_tokens: case.partial,
            model: case.model.map(str::to_owned),
            streamed_content_bytes: case.content_bytes,
            terminal: case.terminal,
            response_id: None,
            expires_at_ms: None,
        };
        // Response ids have their own test (`responses_ids_are_read_from_the_body_or_the_stream`).
        assert_eq!(ScanOutcome { response_id: None, ..got }, want, "{}", case.name);
    }
}

#[test]
fn every_split_point_gives_the_same_outcome() {
    for case in cases() {
        let whole = outcome_of(&case);
        let body = case.body.as_bytes();
        for at in 0..=body.len() {
            let (a, b) = body.split_at(at);
            let split = scan_chunks(case.dialect, case.endpoint, case.format, &[a, b]);
            assert_eq!(split, whole, "{} split at {at}", case.name);
        }
        let bytes: Vec<&[u8]> = body.chunks(1).collect();
        assert_eq!(scan_chunks(case.dialect, case.endpoint, case.format, &bytes), whole, "{} byte by byte", case.name);
    }
}

#[test]
fn openai_stream_without_include_usage_has_no_tokens_but_counts_content() {
    let body = OPENAI_CHAT_SSE.replace(
        "\"usage\":{\"prompt_tokens\":1000,\"completion_tokens\":300,\"total_tokens\":1300,\"prompt_tokens_details\":{\"cached_tokens\":400,\"audio_tokens\":0},\"completion_tokens_details\":{\"reasoning_tokens\":120,\"audio_tokens\":0,\"accepted_prediction_tokens\":0,\"rejected_prediction_tokens\":0}}",
        "\"usage\":null",
    );
    let got = scan(OpenAi, Chat, Sse, body.as_bytes());
    assert_eq!(got.tokens, None);
    assert_eq!(got.streamed_content_bytes, 16);
    assert_eq!(got.terminal, Some(Completed));
}

#[test]
fn a_stream_cut_before_usage_has_content_but_no_tokens_and_no_end() {
    let cut = OPENAI_CHAT_SSE.find("\"choices\":[],\"usage\":{").unwrap_or(0) + 30;
    let got = scan(OpenAi, Chat, Sse, &OPENAI_CHAT_SSE.as_bytes()[..cut]);
    assert_eq!(got.tokens, None, "the usage event never completed");
    assert_eq!(got.streamed_content_bytes, 16);
    assert_eq!(got.terminal, None);
    assert_eq!(got.model.as_deref(), Some("gpt-4o-2024-08-06"));
}

#[test]
fn an_anthropic_stream_cut_after_message_start_reports_partial_usage_only() {
    let cut = ANTHROPIC_SSE.find("event: message_delta").unwrap_or(0);
    let got = scan(Anthropic, Messages, Sse, &ANTHROPIC_SSE.as_bytes()[..cut]);
    assert_eq!(got.tokens, None, "message_start's output count is a placeholder");
    assert_eq!(got.partial_tokens, tokens(25, 1, 50, 100, 0), "its input and cache counts are exact");
    assert_eq!(got.streamed_content_bytes, 6);
    assert_eq!(got.terminal, None);
}

#[test]
fn a_gemini_stream_cut_before_its_last_chunk_reports_partial_usage_only() {
    let cut = GEMINI_SSE.find("data: {\"candidates\": [{\"content\": {\"parts\": [{\"text\": \" is 4").unwrap_or(0);
    let got = scan(Gemini, StreamGenerateContent, Sse, &GEMINI_SSE.as_bytes()[..cut]);
    assert_eq!((got.tokens, got.partial_tokens), (None, tokens(9, 0, 0, 0, 0)));
    let cut = GEMINI_ARRAY_STREAM.find("lo").unwrap_or(0);
    let got = scan(Gemini, StreamGenerateContent, Json, &GEMINI_ARRAY_STREAM.as_bytes()[..cut]);
    assert_eq!((got.tokens, got.partial_tokens), (None, tokens(6, 0, 0, 0, 0)));
}

#[test]
fn a_whole_gemini_body_is_final_even_without_a_finish_reason() {
    let blocked = r#"{"promptFeedback":{"blockReason":"SAFETY"},"usageMetadata":{"promptTokenCount":12,"totalTokenCount":12},"modelVersion":"gemini-2.5-flash"}"#;
    let got = scan(Gemini, GenerateContent, Json, blocked.as_bytes());
    assert_eq!((got.tokens, got.partial_tokens), (tokens(12, 0, 0, 0, 0), None));
}

#[test]
fn a_truncated_json_body_reports_nothing_complete() {
    let got = scan(OpenAi, Chat, Json, &OPENAI_CHAT_JSON.as_bytes()[..OPENAI_CHAT_JSON.len() - 3]);
    assert_eq!(got.tokens, None);
    assert_eq!(got.terminal, None);
}

#[test]
fn a_last_event_without_its_blank_line_still_counts() {
    let body = "data: {\"model\":\"m\",\"choices\":[],\"usage\":{\"prompt_tokens\":4,\"completion_tokens\":2}}";
    assert_eq!(scan(OpenAi, Chat, Sse, body.as_bytes()).tokens, tokens(4, 2, 0, 0, 0));
    let cut = &body[..body.len() - 1];
    assert_eq!(scan(OpenAi, Chat, Sse, cut.as_bytes()).tokens, None, "an unfinished object never counts");
}

#[test]
fn error_bodies_end_failed_without_tokens() {
    let check = |dialect: Dialect, endpoint: Endpoint, body: &str| {
        let got = scan(dialect, endpoint, Json, body.as_bytes());
        assert_eq!((got.tokens, got.terminal), (None, Some(Failed)), "{body}");
    };
    check(
        OpenAi,
        Chat,
        r#"{"error":{"message":"Rate limit","type":"requests","param":null,"code":"rate_limit_exceeded"}}"#,
    );
    check(Anthropic, Messages, r#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#);
    check(
        Gemini,
        GenerateContent,
        r#"{"error":{"code":400,"message":"API key not valid","status":"INVALID_ARGUMENT"}}"#,
    );
    let sse = "data: {\"error\":{\"message\":\"boom\"}}\n\n";
    assert_eq!(scan(OpenAi, Chat, Sse, sse.as_bytes()).terminal, Some(Failed));
}

#[test]
fn escaped_model_names_are_decoded() {
    let body = r#"{"model":"gpt\u002d4o\/x \"q\" \ud83d\ude00","usage":{"prompt_tokens":1,"completion_tokens":1}}"#;
    assert_eq!(scan(OpenAi, Chat, Json, body.as_bytes()).model.as_deref(), Some("gpt-4o/x \"q\" \u{1F600}"));
}

#[test]
fn the_last_usage_object_wins_as_a_whole_for_openai_and_gemini() {
    let body = concat!(
        "data: {\"usageMetadata\":{\"promptTokenCount\":10,\"cachedContentTokenCount\":4}}\n\n",
        "data: {\"candidates\":[{\"finishReason\":\"STOP\"}],\"usageMetadata\":{\"promptTokenCount\":10,\"candidatesTokenCount\":3}}\n\n",
    );
    assert_eq!(scan(Gemini, StreamGenerateContent, Sse, body.as_bytes()).tokens, tokens(10, 3, 0, 0, 0));
}

#[test]
fn nonsense_counts_are_clamped_not_wrapped() {
    let body = r#"{"usage":{"prompt_tokens":5,"completion_tokens":2,"prompt_tokens_details":{"cached_tokens":9},"completion_tokens_details":{"reasoning_tokens":7}}}"#;
    assert_eq!(scan(OpenAi, Chat, Json, body.as_bytes()).tokens, tokens(0, 2, 5, 0, 2));
    let body = r#"{"usage":{"prompt_tokens":-5,"completion_tokens":2.5,"total_tokens":99999999999999999999999}}"#;
    assert_eq!(scan(OpenAi, Chat, Json, body.as_bytes()).tokens, None, "no readable count");
}

#[test]
fn a_malformed_event_is_skipped_and_the_next_one_read() {
    let deep = "[".repeat(MAX_DEPTH + 5);
    let body = format!(
        "data: {{\"usage\":{{\"prompt_tokens\":1,,}}}}\n\ndata: {deep}\n\ndata: {{\"usage\":{{\"prompt_tokens\":3,\"completion_tokens\":1}}}}\n\ndata: [DONE]\n\n"
    );
    let got = scan(OpenAi, Chat, Sse, body.as_bytes());
    assert_eq!(got.tokens, tokens(3, 1, 0, 0, 0));
    assert_eq!(got.terminal, Some(Completed));
}

#[test]
fn skimmed_content_events_count_their_content_and_a_changed_model_is_still_read() {
    let body = concat!(
        "data: {\"model\":\"a\",\"choices\":[{\"delta\":{\"content\":\"xy\"}}],\"usage\":null}\n\n",
        "data: {\"model\":\"a\",\"choices\":[{\"delta\":{\"content\":\"z\\\"\"}}],\"usage\":null}\n\n",
        "data: {\"model\":\"b\",\"choices\":[{\"delta\":{\"tool_calls\":[{\"type\":\"function\",\"function\":{\"arguments\":\"{\\\"k\\\":1}\"}}]}}]}\n\n",
    );
    let got = scan(OpenAi, Chat, Sse, body.as_bytes());
    assert_eq!(got.model.as_deref(), Some("b"), "an event with another model is parsed, not skimmed");
    assert_eq!(got.streamed_content_bytes, 2 + 3 + 9, "escapes count as written, as the parser counts them");
}

/// The stream's first model is read from a skimmed event, so the first content event already
/// teaches the shape the next ones are matched by; what skimming cannot read exactly is still
/// left to the parser: an escaped model, two different models in one event, data that is not
/// one object.
#[test]
fn the_first_content_event_gives_the_model_and_the_shape() {
    let first = "data: {\"model\":\"m-1\",\"choices\":[{\"delta\":{\"content\":\"ab\"}}]}\n\n";
    let mut s = UsageScanner::new(OpenAi, Chat, Sse);
    s.feed(first.as_bytes());
    assert!(s.sse.template.valid, "the first event taught the shape");
    let got = s.finish();
    assert_eq!((got.model.as_deref(), got.streamed_content_bytes), (Some("m-1"), 2));
    let escaped = "data: {\"model\":\"m\\u002d1\",\"choices\":[{\"delta\":{\"content\":\"ab\"}}]}\n\n";
    assert_eq!(scan(OpenAi, Chat, Sse, escaped.as_bytes()).model.as_deref(), Some("m-1"), "decoded by the parser");
    let two = "data: {\"model\":\"a\",\"x\":{\"model\":\"b\"},\"choices\":[{\"delta\":{\"content\":\"ab\"}}]}\n\n";
    assert_eq!(scan(OpenAi, Chat, Sse, two.as_bytes()).model.as_deref(), Some("a"), "the parser reads the top-level one");
    let not_object = "data: \"model\":\"m\"\n\n";
    assert_eq!(scan(OpenAi, Chat, Sse, not_object.as_bytes()).model, None);
}

/// An event whose data spans two `data` lines teaches a shape with a line break in it; raw bytes
/// that look the same but whose second line is not `data` are a different event, and count so.
#[test]
fn a_two_line_event_shape_is_not_matched_against_raw_bytes() {
    let body = concat!(
        "data: {\"model\":\"m\",\"choices\":[{\"delta\":{\"content\":\"a\"}}]}\n\n",
        "data: {\"model\":\"m\",\"choices\":[{\"delta\":{\"content\":\"b\"},\ndata: \"refusal\":\"qq\"}]}\n\n",
        "data: {\"model\":\"m\",\"choices\":[{\"delta\":{\"content\":\"b\"},\n\"refusal\":\"ZZZ\"}]}\n\n",
    );
    let got = scan(OpenAi, Chat, Sse, body.as_bytes());
    // "a", then "b" + "qq", then only "b": the last event's second line is not data.
    assert_eq!(got.streamed_content_bytes, 1 + 3 + 1);
}

#[test]
fn huge_content_is_counted_without_being_kept() {
    let big = "x".repeat(4 << 20);
    let event = format!(
        "data: {{\"type\":\"content_block_delta\",\"delta\":{{\"type\":\"text_delta\",\"text\":\"{big}\"}}}}\n\n"
    );
    let mut scanner = UsageScanner::new(Anthropic, Messages, Sse);
    for chunk in event.as_bytes().chunks(16 * 1024) {
        scanner.feed(chunk);
    }
    scanner.feed(b"data: {\"type\":\"message_delta\",\"usage\":{\"output_tokens\":1048576}}\n\n");
    assert!(scanner.json.stack.capacity() <= MAX_DEPTH, "only the bracket stack grows, and it is bounded");
    assert!(scanner.message.model.capacity() <= CAPTURE_CAP);
    let got = scanner.finish();
    assert_eq!(got.streamed_content_bytes, 4 << 20);
    assert_eq!(got.tokens, tokens(0, 1_048_576, 0, 0, 0));
}

#[test]
fn finish_is_idempotent_and_later_chunks_are_ignored() {
    let mut scanner = UsageScanner::new(Anthropic, Messages, Sse);
    scanner.feed(ANTHROPIC_SSE.as_bytes());
    let first = scanner.finish();
    scanner.feed(b"data: {\"type\":\"message_delta\",\"usage\":{\"output_tokens\":99}}\n\n");
    assert_eq!(scanner.finish(), first);
}

#[test]
fn keys_that_only_look_like_usage_are_ignored() {
    // Usage nested where the dialect does not put it, and content that mentions usage.
    let body = r#"{"choices":[{"message":{"content":"\"usage\":{\"prompt_tokens\":5}","usage":{"prompt_tokens":7}}}],"meta":{"usage":{"prompt_tokens":9}}}"#;
    assert_eq!(scan(OpenAi, Chat, Json, body.as_bytes()).tokens, None);
}

/// A content string as an upstream could send it: plain text, escapes (`\"`, `\\`, `\n`,
/// `\u00e9`), UTF-8, and the odd raw quote or trailing backslash that breaks the event.
fn content_text() -> impl Strategy<Value = String> {
    proptest::collection::vec(
        prop_oneof![
            Just("a"), Just("Hello"), Just(" "), Just("\\\""), Just("\\\\"), Just("\\n"), Just("\\u00e9"), Just("é"),
            Just("\""), Just("\\"), Just("\"},\"usage\":{\"prompt_tokens\":9}"), Just("\n"), Just("\r\n"), Just("\\\n")
        ],
        0..6,
    )
    .prop_map(|parts| parts.concat())
}

/// One SSE event of a stream: mostly content deltas of one shape, sometimes another shape,
/// another model, a usage report or the end.
fn stream_event(dialect: Dialect) -> impl Strategy<Value = String> {
    (0u8..14, content_text(), prop_oneof![Just("gpt-4o"), Just("gpt-4o-mini")]).prop_map(move |(kind, text, model)| {
        if dialect == Anthropic {
            return match kind {
                0 => "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"model\":\"claude\",\"usage\":{\"input_tokens\":7,\"output_tokens\":1}}}\n\n".to_owned(),
                1 => "event: message_delta\ndata: {\"type\":\"message_delta\",\"usage\":{\"output_tokens\":5}}\n\n".to_owned(),
                2 => format!("event: content_block_delta\ndata: {{\"type\":\"content_block_delta\",\"index\":1,\"delta\":{{\"type\":\"thinking_delta\",\"thinking\":\"{text}\"}}}}\n\n"),
                3 => format!("event: ping\ndata: {{\"type\":\"content_block_delta\",\"index\":0,\"delta\":{{\"type\":\"text_delta\",\"text\":\"{text}\"}}}}\n\n"),
                _ => format!("event: content_block_delta\ndata: {{\"type\":\"content_block_delta\",\"index\":0,\"delta\":{{\"type\":\"text_delta\",\"text\":\"{text}\"}}}}\n\n"),
            };
        }
        match kind {
            0 => format!("data: {{\"id\":\"c1\",\"model\":\"{model}\",\"choices\":[],\"usage\":{{\"prompt_tokens\":11,\"completion_tokens\":{}}}}}\n\n", text.len()),
            1 => format!("data: {{\"id\":\"c1\",\"model\":\"{model}\",\"choices\":[{{\"delta\":{{\"refusal\":\"{text}\"}}}}],\"usage\":null}}\n\n"),
            2 => format!("data: {{\"id\":\"c1\",\"model\":\"{model}\",\"choices\":[{{\"delta\":{{\"content\":\"{text}\"}},\"finish_reason\":\"stop\"}}],\"usage\":null}}\n\n"),
            3 => format!("data: {{\"id\":\"c1\",\"model\":\"{model}\",\"choices\":[{{\"delta\":{{\"content\":\"{text}\"}},\"finish_reason\":null}}],\"usage\":null}}\r\n\r\n"),
            4 => format!("data:{{\"id\":\"c1\",\"model\":\"{model}\",\"choices\":[{{\"delta\":{{\"content\":\"{text}\"}},\"finish_reason\":null}}],\"usage\":null}}\n\n"),
            5 => format!("data: {{\"id\":\"c1\",\"model\":\"{model}\",\"choices\":[{{\"delta\":{{\"content\":\"{text}\"}},\ndata: \"finish_reason\":null}}]}}\n\n"),
            _ => format!("data: {{\"id\":\"c1\",\"model\":\"{model}\",\"choices\":[{{\"delta\":{{\"content\":\"{text}\"}},\"finish_reason\":null}}],\"usage\":null}}\n\n"),
        }
    })
}

/// All four dialects and both formats, for inputs that are not one dialect's fixtures.
fn any_scanner_kind() -> impl Strategy<Value = (Dialect, Endpoint, ResponseFormat)> {
    (
        prop_oneof![Just(OpenAi), Just(AzureOpenAi), Just(Anthropic), Just(Gemini)],
        prop_oneof![Just(Chat), Just(Responses), Just(Messages), Just(StreamGenerateContent)],
        prop_oneof![Just(Json), Just(Sse)],
    )
}

/// Scans `body` cut at the given points (sorted and clamped to the body).
fn scan_at(kind: (Dialect, Endpoint, ResponseFormat), body: &[u8], cuts: &[usize]) -> ScanOutcome {
    let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (body.len() + 1)).collect();
    cuts.sort_unstable();
    let mut scanner = UsageScanner::new(kind.0, kind.1, kind.2);
    let mut start = 0;
    for cut in cuts {
        scanner.feed(body.get(start..cut).unwrap_or(&[]));
        start = cut;
    }
    scanner.feed(body.get(start..).unwrap_or(&[]));
    scanner.finish()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn fixtures_give_the_same_outcome_under_random_multi_splits(
        index in 0usize..15,
        cuts in proptest::collection::vec(0usize..100_000, 0..40),
    ) {
        let cases = cases();
        let case = &cases[index % cases.len()];
        let kind = (case.dialect, case.endpoint, case.format);
        prop_assert_eq!(scan_at(kind, case.body.as_bytes(), &cuts), outcome_of(case), "{}", case.name);
    }

    /// Cutting a response anywhere never yields final tokens other than the whole response's
    /// (Anthropic's fixtures send a `message_delta` twice, so they are left out).
    #[test]
    fn a_cut_response_never_reports_wrong_final_tokens(index in 0usize..15, cut in 0usize..100_000) {
        let cases: Vec<Case> = cases().into_iter().filter(|c| c.dialect != Anthropic).collect();
        let case = &cases[index % cases.len()];
        let body = case.body.as_bytes();
        let got = scan(case.dialect, case.endpoint, case.format, &body[..cut % (body.len() + 1)]);
        prop_assert!(got.tokens.is_none() || got.tokens == case.tokens, "{}: {:?}", case.name, got.tokens);
    }

    #[test]
    fn damaged_fixtures_never_panic_and_ignore_splits(
        index in 0usize..15,
        edits in proptest::collection::vec((0usize..100_000, any::<u8>(), 0u8..3), 1..8),
        cuts in proptest::collection::vec(0usize..100_000, 0..20),
    ) {
        let cases = cases();
        let case = &cases[index % cases.len()];
        let mut body = case.body.as_bytes().to_vec();
        for (at, byte, op) in edits {
            let at = at % (body.len() + 1);
            match op {
                0 => body.insert(at, byte),
                1 if at < body.len() => { body.remove(at); }
                _ => if let Some(b) = body.get_mut(at) { *b = byte },
            }
        }
        let kind = (case.dialect, case.endpoint, case.format);
        prop_assert_eq!(scan_at(kind, &body, &cuts), scan_at(kind, &body, &[]));
    }

    /// Recognising an event by the shape of the one before it ([`EventTemplate`]) finds exactly
    /// what skimming (or parsing) it would, whatever its content string holds.
    #[test]
    fn event_templates_change_no_outcome(
        dialect in prop_oneof![Just(OpenAi), Just(Anthropic)],
        events in proptest::collection::vec(stream_event(OpenAi), 1..12),
        anthropic_events in proptest::collection::vec(stream_event(Anthropic), 1..12),
        cuts in proptest::collection::vec(0usize..3000, 0..6),
    ) {
        let (endpoint, events) = if dialect == Anthropic { (Messages, anthropic_events) } else { (Chat, events) };
        let body = events.concat();
        let reference = {
            let mut s = UsageScanner::new(dialect, endpoint, Sse).without_event_templates();
            s.feed(body.as_bytes());
            s.finish()
        };
        prop_assert_eq!(scan_at((dialect, endpoint, Sse), body.as_bytes(), &cuts), reference);
    }

    #[test]
    fn garbage_never_panics_and_ignores_splits(
        kind in any_scanner_kind(),
        body in proptest::collection::vec(
            prop_oneof![
                any::<u8>(),
                proptest::sample::select(b"{}[]\":,\\ \r\n0123456789dataevent-.etrufalsn".to_vec()),
            ],
            0..600,
        ),
        cuts in proptest::collection::vec(0usize..1000, 0..20),
    ) {
        prop_assert_eq!(scan_at(kind, &body, &cuts), scan_at(kind, &body, &[]));
    }
}

// ---- A reset scanner is a new one (UsageScanner::reset) ----

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Whatever a scanner read before (a fixture, damaged or cut anywhere, with or without the
    /// usage chunk dropped, finished or not), reset it is in the state of a new one: its `Debug`
    /// shows every field (`Capped` only what it holds; a `Vec`'s spare capacity is not state).
    #[test]
    fn a_reset_scanner_is_a_new_one(
        before in any_scanner_kind(),
        after in any_scanner_kind(),
        index in 0usize..15,
        cut in 0usize..100_000,
        dropping in any::<bool>(),
        finished in any::<bool>(),
    ) {
        let cases = cases();
        let case = &cases[index % cases.len()];
        let body = case.body.as_bytes();
        let mut scanner = UsageScanner::new(before.0, before.1, before.2);
        if dropping {
            scanner.start_dropping_usage_chunk();
        }
        let _ = scanner.feed_forward(body.get(..cut % (body.len() + 1)).unwrap_or_default(), false);
        if finished {
            scanner.finish();
        }
        scanner.reset(after.0, after.1, after.2);
        prop_assert_eq!(format!("{scanner:?}"), format!("{:?}", UsageScanner::new(after.0, after.1, after.2)));
    }

    /// And it reads the next response as a new one would: the same outcome, and the same bytes
    /// forwarded to the client with the usage chunk dropped.
    #[test]
    fn a_reset_scanner_reads_the_next_response_as_a_new_one(
        first in 0usize..15,
        second in 0usize..15,
        cuts in proptest::collection::vec(0usize..100_000, 0..10),
    ) {
        let cases = cases();
        let (first, second) = (&cases[first % cases.len()], &cases[second % cases.len()]);
        let mut scanner = UsageScanner::new(first.dialect, first.endpoint, first.format);
        scanner.feed(first.body.as_bytes());
        scanner.finish();
        scanner.reset(second.dialect, second.endpoint, Sse);
        let reused = forward_through(scanner, second.body.as_bytes(), &cuts);
        prop_assert_eq!(reused, forward_at(second.dialect, second.endpoint, second.body.as_bytes(), &cuts));
    }
}

// ---- The usage chunk Tollgate asked for stays out of the client's stream (usage/strip.rs) ----

/// What the client receives, chunk by chunk, with the usage-only chunk dropped; and the outcome.
fn forward_at(dialect: Dialect, endpoint: Endpoint, body: &[u8], cuts: &[usize]) -> (Vec<u8>, ScanOutcome) {
    forward_through(UsageScanner::new(dialect, endpoint, Sse), body, cuts)
}

/// [`forward_at`] through `scanner`.
fn forward_through(scanner: UsageScanner, body: &[u8], cuts: &[usize]) -> (Vec<u8>, ScanOutcome) {
    let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (body.len() + 1)).collect();
    cuts.sort_unstable();
    cuts.push(body.len());
    let mut scanner = scanner.drop_usage_chunk();
    let mut client = Vec::new();
    // What the host holds: what the filter held back, then the new chunk (Envoy's buffering).
    let mut host = Vec::new();
    let mut start = 0;
    let last = cuts.len() - 1;
    for (i, cut) in cuts.into_iter().enumerate() {
        host.extend_from_slice(body.get(start..cut).unwrap_or(&[]));
        let forward = scanner.feed_forward(&host, i == last);
        if let Some(bytes) = forward.replace {
            host = bytes;
        }
        if !forward.hold {
            client.append(&mut host);
        }
        start = cut;
    }
    assert!(host.is_empty(), "everything reaches the client at the end");
    (client, scanner.finish())
}

/// The usage event of [`OPENAI_CHAT_SSE`], as the upstream sends it.
fn openai_usage_event() -> &'static str {
    let start = OPENAI_CHAT_SSE.find("data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"gpt-4o-2024-08-06\",\"choices\":[]").unwrap_or(0);
    let end = OPENAI_CHAT_SSE.find("data: [DONE]").unwrap_or(0);
    &OPENAI_CHAT_SSE[start..end]
}

#[test]
fn the_injected_usage_chunk_is_read_and_not_forwarded() {
    let want = OPENAI_CHAT_SSE.replace(openai_usage_event(), "");
    assert!(want.ends_with("\"finish_reason\":\"stop\"}],\"usage\":null}\n\ndata: [DONE]\n\n"), "{want}");
    let (client, outcome) = forward_at(OpenAi, Chat, OPENAI_CHAT_SSE.as_bytes(), &[]);
    assert_eq!(String::from_utf8_lossy(&client), want);
    assert_eq!(outcome, scan(OpenAi, Chat, Sse, OPENAI_CHAT_SSE.as_bytes()), "metered exactly as before");
    assert_eq!(outcome.tokens, tokens(600, 300, 400, 0, 120));
}

#[test]
fn the_usage_chunk_is_dropped_at_every_split_point_and_byte_by_byte() {
    let whole = scan(OpenAi, Chat, Sse, OPENAI_CHAT_SSE.as_bytes());
    let body = OPENAI_CHAT_SSE.as_bytes();
    let want = OPENAI_CHAT_SSE.replace(openai_usage_event(), "").into_bytes();
    for at in 0..=body.len() {
        let (client, outcome) = forward_at(OpenAi, Chat, body, &[at]);
        assert_eq!(client, want, "split at {at}");
        assert_eq!(outcome, whole, "split at {at}");
    }
    let every: Vec<usize> = (0..body.len()).collect();
    assert_eq!(forward_at(OpenAi, Chat, body, &every), (want, whole), "byte by byte");
}

#[test]
fn every_line_ending_and_the_usage_chunk_with_done_in_one_chunk() {
    for (name, brk) in [("lf", "\n"), ("crlf", "\r\n"), ("cr", "\r")] {
        let body = OPENAI_CHAT_SSE.replace('\n', brk);
        let usage = openai_usage_event().replace('\n', brk);
        let want = body.replace(&usage, "");
        let whole = scan(OpenAi, Chat, Sse, body.as_bytes());
        assert_eq!(whole.tokens, tokens(600, 300, 400, 0, 120), "{name}");
        // Split inside `data:` of the usage event, inside its JSON, right before its blank line,
        // right after it, and inside [DONE]; and the usage event and [DONE] in one chunk.
        let usage_at = body.find(&usage).unwrap_or(0);
        let done_at = body.find("data: [DONE]").unwrap_or(0);
        for cuts in [
            vec![usage_at + 2],
            vec![usage_at + 40, usage_at + 200],
            vec![done_at - 1],
            vec![done_at - brk.len() + 1],
            vec![done_at + 3],
            vec![usage_at],
            vec![usage_at, body.len() - 1],
        ] {
            let (client, outcome) = forward_at(OpenAi, Chat, body.as_bytes(), &cuts);
            assert_eq!(String::from_utf8_lossy(&client), want, "{name} cut at {cuts:?}");
            assert_eq!(outcome, whole, "{name} cut at {cuts:?}");
        }
    }
}

#[test]
fn completions_streams_lose_their_usage_chunk_too_and_other_streams_pass_untouched() {
    let usage_start = OPENAI_COMPLETIONS_SSE.find("data: {\"id\":\"cmpl-1\",\"object\":\"text_completion\",\"created\":1,\"choices\":[]").unwrap_or(0);
    let usage_end = OPENAI_COMPLETIONS_SSE.find("data: [DONE]").unwrap_or(0);
    let want = [&OPENAI_COMPLETIONS_SSE[..usage_start], &OPENAI_COMPLETIONS_SSE[usage_end..]].concat();
    let (client, outcome) = forward_at(OpenAi, Completions, OPENAI_COMPLETIONS_SSE.as_bytes(), &[100]);
    assert_eq!(String::from_utf8_lossy(&client), want);
    assert_eq!(outcome.tokens, tokens(5, 2, 0, 0, 0));
    // Usage with choices (not the usage-only chunk), and other dialects' usage events, pass.
    for case in cases().into_iter().filter(|c| c.format == Sse && c.endpoint != Completions && c.body != OPENAI_CHAT_SSE) {
        let (client, outcome) = forward_at(case.dialect, case.endpoint, case.body.as_bytes(), &[7, 300]);
        assert_eq!(String::from_utf8_lossy(&client), case.body, "{}", case.name);
        assert_eq!(outcome, outcome_of(&case), "{}", case.name);
    }
    let with_choices = "data: {\"id\":\"c\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"x\"}}],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":1}}\n\ndata: [DONE]\n\n";
    assert_eq!(forward_at(OpenAi, Chat, with_choices.as_bytes(), &[]).0, with_choices.as_bytes());
}

#[test]
fn without_drop_usage_chunk_every_chunk_passes_unchanged() {
    let mut scanner = UsageScanner::new(OpenAi, Chat, Sse);
    for chunk in OPENAI_CHAT_SSE.as_bytes().chunks(37) {
        assert_eq!(scanner.feed_forward(chunk, false), Forward::default());
    }
    assert_eq!(scanner.finish().tokens, tokens(600, 300, 400, 0, 120));
    let mut json = UsageScanner::new(OpenAi, Chat, Json).drop_usage_chunk();
    let body = OPENAI_CHAT_JSON.as_bytes();
    assert_eq!(json.feed_forward(&body[..50], false), Forward::default(), "JSON bodies are never held");
    assert_eq!(json.feed_forward(&body[50..], true), Forward::default(), "nor changed");
}

#[test]
fn chunks_that_end_on_event_ends_need_no_rewrite_until_the_usage_chunk() {
    let mut scanner = UsageScanner::new(OpenAi, Chat, Sse).drop_usage_chunk();
    let events: Vec<String> = OPENAI_CHAT_SSE.split_inclusive("\n\n").map(str::to_owned).collect();
    let last = events.len() - 1;
    for (i, event) in events.iter().enumerate() {
        let got = scanner.feed_forward(event.as_bytes(), i == last);
        if event.as_str() == openai_usage_event() {
            assert_eq!(got, Forward { replace: Some(Vec::new()), hold: false }, "the usage chunk");
        } else {
            assert_eq!(got, Forward::default(), "{event}");
        }
    }
    assert_eq!(scanner.dropped_usage_chunks(), 1);
}

#[test]
fn an_event_longer_than_the_hold_passes_whole_and_a_cut_stream_keeps_its_tail() {
    let long = format!("data: {{\"choices\":[{{\"delta\":{{\"content\":\"{}\"}}}}]}}\n\n", "x".repeat(HOLD_CAP * 2));
    let body = format!("{long}{}", OPENAI_CHAT_SSE);
    let want = body.replace(openai_usage_event(), "");
    let cuts: Vec<usize> = (1..body.len()).step_by(1000).collect();
    assert_eq!(String::from_utf8_lossy(&forward_at(OpenAi, Chat, body.as_bytes(), &cuts).0), want);
    // A stream that ends inside an event: the client gets every byte the upstream sent.
    let cut = OPENAI_CHAT_SSE.find("\"choices\":[],\"usage\"").unwrap_or(0);
    let partial = &OPENAI_CHAT_SSE.as_bytes()[..cut];
    assert_eq!(forward_at(OpenAi, Chat, partial, &[cut - 10]).0, partial);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// The chunking Envoy usually hands over, one event per chunk (some merged, a few cut
    /// anywhere): a chunk that is one event shaped like the last skimmed one is counted without
    /// framing it (`take_template_chunk`). The client gets the same bytes and the metering is the
    /// same as for the whole stream read without event templates, with the strip and without.
    #[test]
    fn streams_chunked_event_by_event_forward_and_meter_like_whole_ones(
        dialect in prop_oneof![Just(OpenAi), Just(Anthropic)],
        events in proptest::collection::vec(stream_event(OpenAi), 1..16),
        anthropic_events in proptest::collection::vec(stream_event(Anthropic), 1..16),
        merged in proptest::collection::vec(any::<bool>(), 16),
        cuts in proptest::collection::vec(0usize..3000, 0..3),
        strip in any::<bool>(),
    ) {
        let (endpoint, events) = if dialect == Anthropic { (Messages, anthropic_events) } else { (Chat, events) };
        let body = events.concat();
        let mut at = 0;
        let mut cuts = cuts;
        for (event, merged) in events.iter().zip(merged.iter().chain(std::iter::repeat(&false))) {
            at += event.len();
            if !merged {
                cuts.push(at);
            }
        }
        let reference = {
            let mut s = UsageScanner::new(dialect, endpoint, Sse).without_event_templates();
            s.feed(body.as_bytes());
            s.finish()
        };
        let scanner = UsageScanner::new(dialect, endpoint, Sse);
        let (client, outcome) = if strip {
            forward_through(scanner, body.as_bytes(), &cuts)
        } else {
            let mut scanner = scanner;
            let mut points: Vec<usize> = cuts.iter().map(|c| c % (body.len() + 1)).collect();
            points.sort_unstable();
            points.push(body.len());
            let mut start = 0;
            let mut client = Vec::new();
            for (i, &cut) in points.iter().enumerate() {
                let chunk = body.as_bytes().get(start..cut).unwrap_or(&[]);
                let forward = scanner.feed_forward(chunk, i == points.len() - 1);
                prop_assert_eq!(forward, Forward::default(), "without the strip every chunk passes");
                client.extend_from_slice(chunk);
                start = cut;
            }
            (client, scanner.finish())
        };
        let want: String = if strip && dialect == OpenAi {
            events.iter().filter(|e| !e.contains("\"choices\":[],\"usage\":{")).cloned().collect()
        } else {
            body.clone()
        };
        prop_assert_eq!(String::from_utf8_lossy(&client), want);
        prop_assert_eq!(outcome, reference);
    }

    /// Whatever the events and however they are cut, the client gets exactly the stream without
    /// its usage-only events, and the metering is the scanner's on the whole stream.
    #[test]
    fn dropping_the_usage_chunk_ignores_chunking(
        events in proptest::collection::vec(stream_event(OpenAi), 1..12),
        cuts in proptest::collection::vec(0usize..3000, 0..8),
    ) {
        let body = events.concat();
        // Only the usage event of `stream_event` has an empty `choices`.
        let want: String = events.iter().filter(|e| !e.contains("\"choices\":[],\"usage\":{")).cloned().collect();
        let (client, outcome) = forward_at(OpenAi, Chat, body.as_bytes(), &cuts);
        prop_assert_eq!(String::from_utf8_lossy(&client), want);
        prop_assert_eq!(outcome, scan(OpenAi, Chat, Sse, body.as_bytes()));
    }
}

// ---- A leading byte order mark, and keys written with escapes ----

#[test]
fn a_stream_or_body_starting_with_a_byte_order_mark_is_read_like_any_other() {
    for case in cases() {
        let with_bom = [b"\xEF\xBB\xBF".as_slice(), case.body.as_bytes()].concat();
        let want = outcome_of(&case);
        for at in 0..6 {
            let (a, b) = with_bom.split_at(at);
            assert_eq!(scan_chunks(case.dialect, case.endpoint, case.format, &[a, b]), want, "{} split at {at}", case.name);
        }
    }
    // Bytes that only start like a mark are data.
    let body = b"\xEF\xBBdata: {\"choices\":[],\"usage\":{\"prompt_tokens\":1}}\n\n";
    assert_eq!(scan(OpenAi, Chat, Sse, body).tokens, None, "a broken first line is not usage");
}

#[test]
fn keys_written_with_unicode_escapes_are_read_like_any_other() {
    let escape = |key: &str| key.chars().map(|c| format!("\\u{:04x}", c as u32)).collect::<String>();
    for case in cases() {
        let mut body = case.body.to_owned();
        for key in [
            "usage", "prompt_tokens", "completion_tokens", "cached_tokens", "input_tokens", "output_tokens",
            "cache_read_input_tokens", "cache_creation_input_tokens", "usageMetadata", "promptTokenCount",
            "candidatesTokenCount", "model", "type", "response", "message",
        ] {
            body = body.replace(&format!("\"{key}\":"), &format!("\"{}\":", escape(key)));
            body = body.replace(&format!("\"{key}\": "), &format!("\"{}\": ", escape(key)));
        }
        assert_ne!(body, case.body, "{}", case.name);
        let got = scan(case.dialect, case.endpoint, case.format, body.as_bytes());
        assert_eq!(got, outcome_of(&case), "{}", case.name);
    }
    // Partly escaped, and a type value written with escapes.
    let body = "event: x\ndata: {\"type\":\"message\\u005fdelta\",\"u\\u0073age\":{\"output_tokens\":5}}\n\ndata: {\"type\":\"message_\\u0073top\"}\n\n";
    let got = scan(Anthropic, Messages, Sse, body.as_bytes());
    assert_eq!((got.tokens, got.terminal), (tokens(0, 5, 0, 0, 0), Some(Completed)));
}

// ---- Agent shapes: 1-hour cache writes and hosted web-search calls ----

#[test]
fn anthropic_cache_lifetimes_and_web_searches_are_read_json_and_sse() {
    let json = r#"{"id":"msg_1","type":"message","model":"claude-sonnet-4-5","content":[{"type":"text","text":"ok"}],
        "usage":{"input_tokens":10,"cache_creation_input_tokens":500,"cache_read_input_tokens":20,
        "cache_creation":{"ephemeral_5m_input_tokens":200,"ephemeral_1h_input_tokens":300},"output_tokens":40,
        "server_tool_use":{"web_search_requests":2,"web_fetch_requests":1}}}"#;
    let want = Tokens { input: 10, output: 40, cache_read: 20, cache_write: 500, cache_write_1h: 300, web_searches: 2, ..Tokens::default() };
    assert_eq!(scan(Anthropic, Messages, Json, json.as_bytes()).tokens, Some(want));
    let sse = concat!(
        "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"model\":\"claude-sonnet-4-5\",\"usage\":{\"input_tokens\":10,\"cache_creation_input_tokens\":500,\"cache_read_input_tokens\":20,\"cache_creation\":{\"ephemeral_5m_input_tokens\":200,\"ephemeral_1h_input_tokens\":300},\"output_tokens\":1}}}\n\n",
        "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"ok\"}}\n\n",
        "event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\"},\"usage\":{\"output_tokens\":40,\"server_tool_use\":{\"web_search_requests\":2}}}\n\n",
        "event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n",
    );
    for at in 0..=sse.len() {
        let (a, b) = sse.as_bytes().split_at(at);
        assert_eq!(scan_chunks(Anthropic, Messages, Sse, &[a, b]).tokens, Some(want), "split at {at}");
    }
    // Lifetime counts that add up to more than the total are billed as counted (as LiteLLM does).
    let odd = r#"{"type":"message","usage":{"input_tokens":1,"output_tokens":1,"cache_creation_input_tokens":100,"cache_creation":{"ephemeral_5m_input_tokens":80,"ephemeral_1h_input_tokens":70}}}"#;
    let got = scan(Anthropic, Messages, Json, odd.as_bytes()).tokens;
    assert_eq!(got.map(|t| (t.cache_write, t.cache_write_1h)), Some((150, 70)));
}

#[test]
fn responses_web_search_calls_are_counted_once_from_the_final_output() {
    let json = r#"{"id":"resp_1","object":"response","status":"completed","model":"gpt-5",
        "output":[{"type":"web_search_call","id":"ws_1","status":"completed"},{"type":"web_search_call","id":"ws_2","status":"completed"},
          {"type":"message","content":[{"type":"output_text","text":"Found it."}]}],
        "usage":{"input_tokens":100,"output_tokens":20,"input_tokens_details":{"cached_tokens":0},"output_tokens_details":{"reasoning_tokens":0}}}"#;
    let got = scan(OpenAi, Responses, Json, json.as_bytes()).tokens;
    assert_eq!(got, Some(Tokens { input: 100, output: 20, web_searches: 2, ..Tokens::default() }));
    let sse = concat!(
        "event: response.output_item.done\ndata: {\"type\":\"response.output_item.done\",\"output_index\":0,\"item\":{\"type\":\"web_search_call\",\"id\":\"ws_1\",\"status\":\"completed\"}}\n\n",
        "event: response.output_text.delta\ndata: {\"type\":\"response.output_text.delta\",\"item_id\":\"msg_1\",\"output_index\":1,\"content_index\":0,\"delta\":\"Found it.\"}\n\n",
        "event: response.completed\ndata: {\"type\":\"response.completed\",\"response\":{\"id\":\"resp_1\",\"status\":\"completed\",\"model\":\"gpt-5\",\"output\":[{\"type\":\"web_search_call\",\"id\":\"ws_1\"},{\"type\":\"message\",\"content\":[{\"type\":\"output_text\",\"text\":\"Found it.\"}]}],\"usage\":{\"input_tokens\":100,\"output_tokens\":20}}}\n\n",
    );
    let got = scan(OpenAi, Responses, Sse, sse.as_bytes());
    assert_eq!(got.tokens, Some(Tokens { input: 100, output: 20, web_searches: 1, ..Tokens::default() }), "the item event is not counted again");
    assert_eq!(got.streamed_content_bytes, 9, "the final output's text is not counted as streamed content again");
    // An output listing without usage is not a usage report.
    let listing = "data: {\"type\":\"response.in_progress\",\"response\":{\"output\":[{\"type\":\"web_search_call\"}],\"usage\":null}}\n\n";
    assert_eq!(scan(OpenAi, Responses, Sse, listing.as_bytes()).tokens, None);
}

#[test]
fn responses_ids_are_read_from_the_body_or_the_stream_and_nowhere_else() {
    // (name, dialect, endpoint, format, body, response id)
    let chat_json = r#"{"id":"chatcmpl-1","object":"chat.completion","model":"gpt-4o","choices":[],"usage":{"prompt_tokens":1,"completion_tokens":1}}"#;
    let escaped = r#"{"id":"resp_\u0041","object":"response","status":"completed","model":"m","usage":{"input_tokens":1,"output_tokens":1}}"#;
    let sse_root_id = "data: {\"type\":\"response.completed\",\"id\":\"evt_1\",\"response\":{\"status\":\"completed\",\"usage\":{\"input_tokens\":1,\"output_tokens\":1}}}\n\n";
    let cases: &[(&str, Dialect, Endpoint, ResponseFormat, &str, Option<&str>)] = &[
        ("responses stream", OpenAi, Responses, Sse, RESPONSES_SSE, Some("resp_1")),
        ("responses json", AzureOpenAi, Responses, Json, RESPONSES_JSON, Some("resp_2")),
        ("an escaped id is decoded", OpenAi, Responses, Json, escaped, Some("resp_A")),
        ("a stream event's own id is not the response's", OpenAi, Responses, Sse, sse_root_id, None),
        ("chat completions ids are not response ids", OpenAi, Chat, Json, chat_json, None),
        ("nor are chat stream ids", OpenAi, Chat, Sse, OPENAI_CHAT_SSE, None),
    ];
    for (name, dialect, endpoint, format, body, want) in cases {
        let whole = scan(*dialect, *endpoint, *format, body.as_bytes());
        assert_eq!(whole.response_id.as_deref(), *want, "{name}");
        for at in 0..=body.len() {
            let (a, b) = body.as_bytes().split_at(at);
            assert_eq!(scan_chunks(*dialect, *endpoint, *format, &[a, b]).response_id.as_deref(), *want, "{name} split at {at}");
        }
    }
}

/// A `cachedContents` create response, as the Gemini API documents it.
const GEMINI_CACHE: &str = r#"{
  "name": "cachedContents/4d2kd477o3pg",
  "model": "models/gemini-2.5-flash",
  "createTime": "2025-06-24T12:29:56.123456Z",
  "updateTime": "2025-06-24T12:29:56.123456Z",
  "expireTime": "2025-06-24T12:34:56.123456Z",
  "displayName": "contract",
  "usageMetadata": {"totalTokenCount": 40321}
}"#;

#[test]
fn a_created_gemini_cache_reports_its_name_size_and_expiry_only_on_that_endpoint() {
    let want_expiry = crate::context_memory::timestamp_ms("2025-06-24T12:34:56.123Z");
    assert!(want_expiry.is_some());
    let body = GEMINI_CACHE.as_bytes();
    for at in 0..=body.len() {
        let (a, b) = body.split_at(at);
        let got = scan_chunks(Gemini, CreateCachedContent, Json, &[a, b]);
        assert_eq!(got.tokens, tokens(40321, 0, 0, 0, 0), "the cache's tokens are its billed prompt (split at {at})");
        assert_eq!(got.response_id.as_deref(), Some("cachedContents/4d2kd477o3pg"), "split at {at}");
        assert_eq!(got.expires_at_ms, want_expiry, "split at {at}");
        assert_eq!(got.model, None, "the resource name models/… is not a priced model: the routed model prices it");
        assert_eq!(got.terminal, Some(TerminalEvent::Completed));
    }
    // The same fields in a generation's response mean nothing: `totalTokenCount` is not the
    // prompt there, and a generation has no name or expiry.
    let generation = r#"{"name":"cachedContents/x","expireTime":"2025-06-24T12:34:56Z","candidates":[{"content":{"parts":[{"text":"hi"}]},"finishReason":"STOP"}],"usageMetadata":{"promptTokenCount":10,"candidatesTokenCount":2,"totalTokenCount":12}}"#;
    for endpoint in [GenerateContent, StreamGenerateContent] {
        let got = scan(Gemini, endpoint, Json, generation.as_bytes());
        assert_eq!((got.tokens, got.response_id, got.expires_at_ms), (tokens(10, 2, 0, 0, 0), None, None), "{endpoint:?}");
    }
    // An error body creates nothing.
    let error = r#"{"error":{"code":400,"message":"Cached content is too small","status":"INVALID_ARGUMENT"}}"#;
    let got = scan(Gemini, CreateCachedContent, Json, error.as_bytes());
    assert_eq!((got.tokens, got.response_id.as_deref(), got.terminal), (None, None, Some(TerminalEvent::Failed)));
    // A cache whose expiry is not a timestamp keeps only the memory's TTL.
    let odd = GEMINI_CACHE.replace("2025-06-24T12:34:56.123456Z", "soon");
    assert_eq!(scan(Gemini, CreateCachedContent, Json, odd.as_bytes()).expires_at_ms, None);
}

// ---- Held events parsed in one pass (usage/held.rs) ----

/// Scans `body` as an SSE stream of `dialect`, every parsed event read by the lexer alone.
fn scan_with_lexer_only(dialect: Dialect, endpoint: Endpoint, body: &[u8]) -> ScanOutcome {
    let mut s = UsageScanner::new(dialect, endpoint, Sse).without_held_parse();
    s.feed(body);
    s.finish()
}

/// Whether the one-pass parse reads `data` itself (`true`) or leaves it to the lexer.
fn one_pass(dialect: Dialect, endpoint: Endpoint, data: &str) -> bool {
    UsageScanner::new(dialect, endpoint, Sse).parse_held(data.as_bytes())
}

#[test]
fn held_events_are_parsed_in_one_pass_or_left_to_the_lexer() {
    let deep = |n: usize| format!("{{\"usage\":{{\"prompt_tokens\":3}},\"x\":{}1{}}}", "[".repeat(n), "]".repeat(n));
    let long_model = format!("{{\"model\":\"{}\",\"choices\":[],\"usage\":{{\"prompt_tokens\":3}}}}", "m".repeat(300));
    let rows: Vec<(Dialect, Endpoint, String, bool)> = vec![
        // What providers send: read in one pass.
        (OpenAi, Chat, r#"{"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"gpt-4o-2024-08-06","system_fingerprint":null,"service_tier":"default","choices":[],"usage":{"prompt_tokens":520,"completion_tokens":160,"total_tokens":680,"prompt_tokens_details":{"cached_tokens":128,"audio_tokens":0},"completion_tokens_details":{"reasoning_tokens":64,"audio_tokens":0,"accepted_prediction_tokens":0,"rejected_prediction_tokens":0}},"obfuscation":"x1"}"#.into(), true),
        (OpenAi, Chat, "{ \"choices\" : [ ] ,\n \"usage\" : { \"prompt_tokens\" : 5 } }  \n".into(), true),
        (Anthropic, Messages, r#"{"type":"message_start","message":{"id":"msg_1","type":"message","role":"assistant","model":"claude","content":[],"usage":{"input_tokens":60,"output_tokens":1,"cache_creation":{"ephemeral_1h_input_tokens":4}}}}"#.into(), true),
        (Anthropic, Messages, r#"{"type":"message_delta","delta":{"stop_reason":"end_turn"},"usage":{"output_tokens":15,"server_tool_use":{"web_search_requests":2}}}"#.into(), true),
        (Gemini, StreamGenerateContent, r#"{"candidates":[{"content":{"role":"model","parts":[{"text":"Nile."}]},"finishReason":"STOP"}],"usageMetadata":{"promptTokenCount":12,"candidatesTokenCount":9},"modelVersion":"tg-gemini"}"#.into(), true),
        (OpenAi, Responses, r#"{"type":"response.completed","response":{"id":"resp_1","status":"completed","model":"gpt-5","output":[{"type":"web_search_call"},{"type":"message","content":[{"type":"output_text","text":"hi"}]}],"usage":{"input_tokens":40,"output_tokens":22}}}"#.into(), true),
        (OpenAi, Chat, r#"{"error":{"message":"overloaded","type":"server_error"}}"#.into(), true),
        (OpenAi, Chat, r#"{"id":"x","meta":{"\u0075sage":1,"a\"b":[1,2]},"choices":[],"usage":{"prompt_tokens":2}}"#.into(), true),
        (OpenAi, Chat, long_model, true),
        (OpenAi, Chat, deep(20), true),
        // Everything else goes to the lexer, from the event's start.
        (OpenAi, Chat, r#"{"\u0075sage":{"prompt_tokens":7}}"#.into(), false),
        (OpenAi, Chat, r#"{"usage":{"prompt_tokens" 7}}"#.into(), false),
        (OpenAi, Chat, r#"{"usage":{"prompt_tokens":7},}"#.into(), false),
        (OpenAi, Chat, r#"{"usage":{"prompt_tokens":7}} x"#.into(), false),
        (OpenAi, Chat, r#"{"usage":{"prompt_tokens":7}"#.into(), false),
        (OpenAi, Chat, r#"{"usage":{"prompt_tokens":7"#.into(), false),
        (OpenAi, Chat, r#"{"model":"gpt-4o"#.into(), false),
        (OpenAi, Chat, r#"{"usage":nul}"#.into(), false),
        (OpenAi, Chat, r#"{"usage":[1,]}"#.into(), false),
        (OpenAi, Chat, r#"[{"usage":{"prompt_tokens":7}}]"#.into(), false),
        (OpenAi, Chat, "".into(), false),
        (OpenAi, Chat, deep(40), false),
    ];
    for (dialect, endpoint, data, handled) in rows {
        assert_eq!(one_pass(dialect, endpoint, &data), handled, "{data}");
        let body = format!("data: {data}\n\n");
        let want = scan_with_lexer_only(dialect, endpoint, body.as_bytes());
        assert_eq!(scan(dialect, endpoint, Sse, body.as_bytes()), want, "{data}");
        let lexer_only = UsageScanner::new(dialect, endpoint, Sse).without_held_parse();
        assert_eq!(forward_at(dialect, endpoint, body.as_bytes(), &[]), forward_through(lexer_only, body.as_bytes(), &[]), "{data}");
    }
}

#[test]
fn scalar_bytes_are_ascii_letters_digits_and_sign_and_point() {
    for b in 0..=255u8 {
        assert_eq!(is_scalar_byte(b), b.is_ascii_alphanumeric() || matches!(b, b'-' | b'+' | b'.'), "{b:#04x}");
    }
}

#[test]
fn token_counts_are_read_as_str_parse_reads_them() {
    for text in ["", "0", "007", "18446744073709551615", "18446744073709551616", "18446744073709551610", "18446744073709551619", "1844674407370955161", "184467440737095516150", "99999999999999999999", "1.0", "-1", "+1", "1e3", "12a"] {
        assert_eq!(parse_count(text.as_bytes()), text.parse::<u64>().ok().filter(|_| text.bytes().all(|b| b.is_ascii_digit())), "{text}");
    }
}

/// A JSON-ish value built from the keys and values the path tries read, escapes, odd
/// whitespace and a few malformed pieces.
fn json_value() -> impl Strategy<Value = String> {
    let leaf = prop_oneof![
        proptest::sample::select(vec![
            "0", "12", "-1", "1.5", "1e3", "99999999999999999999999", "true", "false", "null", "nul", "\"gpt-4o\"",
            "\"message_stop\"", "\"response.completed\"", "\"completed\"", "\"incomplete\"", "\"web_search_call\"",
            "\"resp_1\"", "\"STOP\"", "\"2025-01-01T00:00:00Z\"", "\"\\u006d\"", "[]", "{}", "[ ]", "{ }",
        ])
        .prop_map(str::to_owned),
        content_text().prop_map(|t| format!("\"{t}\"")),
    ];
    let key = proptest::sample::select(vec![
        "usage", "model", "type", "status", "error", "id", "choices", "delta", "content", "text", "message", "response",
        "output", "prompt_tokens", "completion_tokens", "input_tokens", "output_tokens", "cached_tokens",
        "prompt_tokens_details", "reasoning_tokens", "completion_tokens_details", "cache_read_input_tokens",
        "cache_creation", "ephemeral_1h_input_tokens", "server_tool_use", "web_search_requests", "usageMetadata",
        "promptTokenCount", "candidatesTokenCount", "candidates", "finishReason", "parts", "modelVersion",
        "\\u0075sage", "x", "",
    ]);
    let ws = proptest::sample::select(vec!["", "", "", " ", "\n", "\t "]);
    leaf.prop_recursive(5, 48, 6, move |inner| {
        prop_oneof![
            (proptest::collection::vec(inner.clone(), 0..5), ws.clone()).prop_map(|(v, w)| format!("[{w}{}]", v.join(","))),
            proptest::collection::vec((key.clone(), inner, ws.clone()), 0..6).prop_map(|members| {
                let members: Vec<String> = members.iter().map(|(k, v, w)| format!("{w}\"{k}\"{w}:{w}{v}{w}")).collect();
                format!("{{{}}}", members.join(","))
            }),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// Whether the one-pass parse or the lexer reads a held event changes no outcome, for any
    /// event (damaged or not) of any dialect, however the stream is cut.
    #[test]
    fn the_one_pass_parse_changes_no_outcome(
        kind in any_scanner_kind(),
        values in proptest::collection::vec(json_value(), 1..5),
        edits in proptest::collection::vec((0usize..100_000, proptest::sample::select(b"{}[]\":,\\ \nx0".to_vec()), 0u8..3), 0..3),
        cuts in proptest::collection::vec(0usize..3000, 0..6),
    ) {
        let mut body: Vec<u8> = values.iter().flat_map(|v| format!("data: {{\"model\":\"m\",\"choices\":[],\"usage\":{v}}}\n\ndata: {v}\n\n").into_bytes()).collect();
        for (at, byte, op) in edits {
            let at = at % (body.len() + 1);
            match op {
                0 => body.insert(at, byte),
                1 if at < body.len() => { body.remove(at); }
                _ => if let Some(b) = body.get_mut(at) { *b = byte },
            }
        }
        let want = scan_with_lexer_only(kind.0, kind.1, &body);
        prop_assert_eq!(scan_at((kind.0, kind.1, Sse), &body, &cuts), want);
        // And the same usage-only events are left out of the client's stream.
        let lexer_only = UsageScanner::new(kind.0, kind.1, Sse).without_held_parse();
        prop_assert_eq!(forward_through(UsageScanner::new(kind.0, kind.1, Sse), &body, &cuts), forward_through(lexer_only, &body, &[]));
    }

    /// The same over the stream events of the other properties (content, usage, ends, escapes).
    #[test]
    fn the_one_pass_parse_changes_no_outcome_of_streams(
        dialect in prop_oneof![Just(OpenAi), Just(Anthropic)],
        events in proptest::collection::vec(stream_event(OpenAi), 1..12),
        anthropic_events in proptest::collection::vec(stream_event(Anthropic), 1..12),
        cuts in proptest::collection::vec(0usize..3000, 0..6),
    ) {
        let (endpoint, events) = if dialect == Anthropic { (Messages, anthropic_events) } else { (Chat, events) };
        let body = events.concat();
        prop_assert_eq!(scan_at((dialect, endpoint, Sse), body.as_bytes(), &cuts), scan_with_lexer_only(dialect, endpoint, body.as_bytes()));
        let lexer_only = UsageScanner::new(dialect, endpoint, Sse).without_held_parse();
        prop_assert_eq!(forward_at(dialect, endpoint, body.as_bytes(), &cuts), forward_through(lexer_only, body.as_bytes(), &[]));
    }
}
