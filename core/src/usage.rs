//! Incremental usage scanning of LLM responses (JSON and SSE, every dialect).
//!
//! Work in progress: the public API below is final (see docs/contracts.md); the scanner body lands
//! in the next commit.

use crate::dialect::{Dialect, Endpoint};
use crate::protocol::Tokens;

/// How the response body is framed, from its `content-type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResponseFormat {
    /// `application/json` (including Gemini's JSON-array stream form).
    Json,
    /// `text/event-stream`.
    Sse,
}

/// How the upstream said the response ended, when it said so.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TerminalEvent {
    /// The response ended normally.
    Completed,
    /// The upstream stopped early but billed what it produced (`response.incomplete`).
    Incomplete,
    /// The upstream reported an error (`response.failed`, an `error` event or body).
    Failed,
}

/// What a scanned response said about itself.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ScanOutcome {
    /// Billed tokens as the upstream reported them, normalised; `None` if no usage arrived.
    pub tokens: Option<Tokens>,
    /// The model the upstream says it used (last one reported).
    pub model: Option<String>,
    /// Bytes of generated content seen (text, tool arguments, thinking), for estimates.
    pub streamed_content_bytes: u64,
    /// How the response ended, if the upstream said so.
    pub terminal: Option<TerminalEvent>,
}

/// Reads usage from a response body fed chunk by chunk, with bounded memory.
#[derive(Debug, Clone)]
pub struct UsageScanner {
    dialect: Dialect,
    endpoint: Endpoint,
    format: ResponseFormat,
}

impl UsageScanner {
    pub fn new(dialect: Dialect, endpoint: Endpoint, format: ResponseFormat) -> UsageScanner {
        UsageScanner { dialect, endpoint, format }
    }

    /// Feeds the next chunk of the response body.
    pub fn feed(&mut self, chunk: &[u8]) {
        let _ = (chunk, self.dialect, self.endpoint, self.format);
    }

    /// Ends the body and returns what was found. Calling it again returns the same outcome.
    pub fn finish(&mut self) -> ScanOutcome {
        ScanOutcome::default()
    }
}
