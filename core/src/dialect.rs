//! Which LLM API a request speaks.
//!
//! Seeded by the metering work with only the two enums both sides need (usage scanning and pricing
//! are keyed on them); path recognition (`Recognised`, detection from `:path`) belongs to the filter
//! owner, who extends this file.

/// The API family a request speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Dialect {
    OpenAi,
    AzureOpenAi,
    Anthropic,
    Gemini,
}

impl Dialect {
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
}
