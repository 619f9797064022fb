//! Error bodies in each dialect's own JSON shape, so a client's SDK raises its usual exception
//! with Tollgate's message in it instead of failing to parse a foreign error format.
//!
//! | dialect              | shape                                                                |
//! |----------------------|----------------------------------------------------------------------|
//! | OpenAI, Azure OpenAI | `{"error":{"message","type","param","code"}}`                        |
//! | Anthropic            | `{"type":"error","error":{"type","message"}}`                        |
//! | Gemini               | `{"error":{"code","message","status"}}`                              |
//!
//! Every failure the filter answers itself goes through [`Failure`] and [`error_body`], in one
//! place, so the status, the machine-readable kind and the human message stay consistent.

use crate::dialect::Dialect;
use serde_json::json;

/// What went wrong, mapped to each dialect's error type names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// 400: malformed JSON, wrong types, missing or unresolved model.
    InvalidRequest,
    /// 403: a routing rule denies this caller or model.
    Denied,
    /// 413: body over `max_request_body_bytes`.
    TooLarge,
    /// 429: a budget's hard limit is reached (enforcement).
    BudgetExceeded,
    /// 503: the budget service cannot be reached and the policy is fail-closed (enforcement).
    Unavailable,
    /// 429: the retry-loop guard (`core::guard`): the same work asked again too often without a
    /// human checkpoint.
    GuardRefused,
}

impl ErrorKind {
    /// The HTTP status this kind is answered with.
    pub fn status(self) -> u16 {
        match self {
            ErrorKind::InvalidRequest => 400,
            ErrorKind::Denied => 403,
            ErrorKind::TooLarge => 413,
            ErrorKind::BudgetExceeded | ErrorKind::GuardRefused => 429,
            ErrorKind::Unavailable => 503,
        }
    }

    /// Stable machine-readable code (OpenAI `code`; also used in metrics and logs).
    pub fn code(self) -> &'static str {
        match self {
            ErrorKind::InvalidRequest => "invalid_request",
            ErrorKind::Denied => "denied_by_policy",
            ErrorKind::TooLarge => "request_too_large",
            ErrorKind::BudgetExceeded => "budget_exceeded",
            ErrorKind::Unavailable => "budget_service_unavailable",
            ErrorKind::GuardRefused => "retry_guard",
        }
    }

    fn openai_type(self) -> &'static str {
        match self {
            ErrorKind::InvalidRequest | ErrorKind::TooLarge => "invalid_request_error",
            ErrorKind::Denied => "permission_error",
            ErrorKind::BudgetExceeded => "insufficient_quota",
            ErrorKind::Unavailable => "service_unavailable",
            ErrorKind::GuardRefused => "rate_limit_error",
        }
    }

    fn anthropic_type(self) -> &'static str {
        match self {
            ErrorKind::InvalidRequest => "invalid_request_error",
            ErrorKind::Denied => "permission_error",
            ErrorKind::TooLarge => "request_too_large",
            ErrorKind::BudgetExceeded | ErrorKind::GuardRefused => "rate_limit_error",
            ErrorKind::Unavailable => "overloaded_error",
        }
    }

    fn gemini_status(self) -> &'static str {
        match self {
            ErrorKind::InvalidRequest | ErrorKind::TooLarge => "INVALID_ARGUMENT",
            ErrorKind::Denied => "PERMISSION_DENIED",
            ErrorKind::BudgetExceeded | ErrorKind::GuardRefused => "RESOURCE_EXHAUSTED",
            ErrorKind::Unavailable => "UNAVAILABLE",
        }
    }
}

/// A response the filter sends itself instead of forwarding the request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub kind: ErrorKind,
    /// What went wrong and what the caller should do about it.
    pub message: String,
    /// The request field at fault, when there is one (OpenAI `param`).
    pub param: Option<String>,
}

impl Failure {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Failure {
        Failure { kind, message: message.into(), param: None }
    }

    pub fn with_param(mut self, param: impl Into<String>) -> Failure {
        self.param = Some(param.into());
        self
    }

    pub fn status(&self) -> u16 {
        self.kind.status()
    }

    /// The body in `dialect`'s shape.
    pub fn body(&self, dialect: Dialect) -> Vec<u8> {
        error_body_with_param(dialect, self.kind.status(), self.kind, &self.message, self.param.as_deref())
    }
}

/// An error body in `dialect`'s own JSON shape (`content-type: application/json`).
pub fn error_body(dialect: Dialect, status: u16, kind: ErrorKind, message: &str) -> Vec<u8> {
    error_body_with_param(dialect, status, kind, message, None)
}

fn error_body_with_param(dialect: Dialect, status: u16, kind: ErrorKind, message: &str, param: Option<&str>) -> Vec<u8> {
    let value = match dialect {
        Dialect::OpenAi | Dialect::AzureOpenAi => json!({
            "error": { "message": message, "type": kind.openai_type(), "param": param, "code": kind.code() }
        }),
        Dialect::Anthropic => json!({
            "type": "error",
            "error": { "type": kind.anthropic_type(), "message": message }
        }),
        Dialect::Gemini => json!({
            "error": { "code": status, "message": message, "status": kind.gemini_status() }
        }),
    };
    serde_json::to_vec(&value).unwrap_or_else(|_| b"{}".to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn parse(body: Vec<u8>) -> Value {
        serde_json::from_slice(&body).unwrap()
    }

    #[test]
    fn openai_and_azure_errors_have_the_openai_shape() {
        let f = Failure::new(ErrorKind::InvalidRequest, "\"model\" must be a string").with_param("model");
        for d in [Dialect::OpenAi, Dialect::AzureOpenAi] {
            assert_eq!(
                parse(f.body(d)),
                json!({"error": {"message": "\"model\" must be a string", "type": "invalid_request_error", "param": "model", "code": "invalid_request"}})
            );
        }
    }

    #[test]
    fn anthropic_errors_have_the_anthropic_shape() {
        assert_eq!(
            parse(error_body(Dialect::Anthropic, 403, ErrorKind::Denied, "denied by rule \"no-opus\"")),
            json!({"type": "error", "error": {"type": "permission_error", "message": "denied by rule \"no-opus\""}})
        );
        assert_eq!(parse(Failure::new(ErrorKind::TooLarge, "x").body(Dialect::Anthropic))["error"]["type"], "request_too_large");
    }

    #[test]
    fn gemini_errors_have_the_google_shape_with_the_http_code() {
        assert_eq!(
            parse(Failure::new(ErrorKind::BudgetExceeded, "over budget").body(Dialect::Gemini)),
            json!({"error": {"code": 429, "message": "over budget", "status": "RESOURCE_EXHAUSTED"}})
        );
    }

    #[test]
    fn each_kind_has_its_status() {
        let statuses: Vec<u16> = [ErrorKind::InvalidRequest, ErrorKind::Denied, ErrorKind::TooLarge, ErrorKind::BudgetExceeded, ErrorKind::Unavailable]
            .into_iter()
            .map(ErrorKind::status)
            .collect();
        assert_eq!(statuses, [400, 403, 413, 429, 503]);
    }
}
