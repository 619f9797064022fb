//! Reference filters for `make bench`: what a proxy-wasm filter costs before it does any work.
//!
//! - Default (no configuration, or `{"mode":"noop"}`): every callback returns `Continue`. This is
//!   the floor every wasm filter pays in Envoy (V8 calls, context lifecycle); Tollgate's throughput
//!   is reported as a ratio to it.
//! - `{"mode":"naive"}`: buffers the request body, parses it into `serde_json::Value` and writes
//!   it back re-serialized: the obvious way to rewrite a model field, which Tollgate avoids (it
//!   splices bytes instead). Shown for comparison only.
//! - `{"mode":"calls"}`: makes the host calls Tollgate makes on the benchmark's request, and
//!   nothing else: read the request headers, replace `accept-encoding`, read the clock, pause;
//!   read the body and write it back, replace `content-length` and set a route header; read the
//!   response headers and every response body chunk; set one filter-state value at the end.
//!   What the same conversation with Envoy costs without any of Tollgate's own work (parsing,
//!   routing, metering), so `make bench` can show how much of Tollgate's cost is that floor.
//!   It is kept equal to the filter's calls: host-tests `host_calls.rs` compares them by name
//!   and count. Where the usage-only event of the OpenAI stream passes, it writes the response
//!   chunk back (Tollgate strips that event from the client's stream: one body write).
//! - `{"mode":"calls-v1"}`: the `calls` floor as it was before issue 17 corrected it (bench
//!   figures up to 2026-11-23): the same calls without that response-body write. Kept so one
//!   `make bench` run shows the old and the corrected floor side by side, and how much of the
//!   change in "Tollgate keeps N % of `calls`" is the reference, not Tollgate.
//!
//! It never panics: a body that is not JSON is forwarded untouched.

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Warn);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root { mode: Mode::Noop }) });
}}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Noop,
    Naive,
    Calls,
    CallsV1,
}

struct Root {
    mode: Mode,
}

impl Context for Root {}

impl RootContext for Root {
    fn on_configure(&mut self, _size: usize) -> bool {
        let config = self.get_plugin_configuration().unwrap_or_default();
        let text = String::from_utf8_lossy(&config);
        self.mode = if text.contains("\"naive\"") {
            Mode::Naive
        } else if text.contains("\"calls-v1\"") {
            Mode::CallsV1
        } else if text.contains("\"calls\"") {
            Mode::Calls
        } else {
            Mode::Noop
        };
        true
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        match self.mode {
            Mode::Naive => Some(Box::new(Naive)),
            Mode::Calls => Some(Box::new(Calls { v1: false })),
            Mode::CallsV1 => Some(Box::new(Calls { v1: true })),
            Mode::Noop => Some(Box::new(Noop)),
        }
    }
}

/// Does nothing: the SDK's default callbacks all continue.
struct Noop;

impl Context for Noop {}
impl HttpContext for Noop {}

/// Parses and re-serializes the request body.
struct Naive;

impl Context for Naive {}

impl HttpContext for Naive {
    fn on_http_request_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        if !end_of_stream {
            // The re-serialized body may differ in length.
            self.set_http_request_header("content-length", None);
        }
        Action::Continue
    }

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        if !end_of_stream {
            return Action::Pause;
        }
        let Some(body) = self.get_http_request_body(0, body_size) else {
            return Action::Continue;
        };
        if let Ok(value) = serde_json::from_slice::<serde_json::Value>(&body) {
            if let Ok(out) = serde_json::to_vec(&value) {
                self.set_http_request_body(0, body_size, &out);
            }
        }
        Action::Continue
    }
}

/// Tollgate's host calls on the benchmark request, without Tollgate's work.
struct Calls {
    /// The pre-issue-17 set (`calls-v1`): no response-body write.
    v1: bool,
}

/// How the usage-only chunk of an OpenAI stream starts (`"choices":[]`, then the usage).
const USAGE_ONLY: &[u8] = br#""choices":[],"usage""#;

/// Whether `body` holds the usage-only event: the least work that decides where the one body
/// write goes, so the floor stays Envoy's conversation and not a search. Core's byte search finds
/// each `[` (sixteen bytes per step in the filter's wasm, as Tollgate's own scans do) and only
/// there are the bytes around it compared. A byte-window comparison at every offset cost the
/// chat workload 225 k wasm instructions, more than twice Tollgate's whole work on it (BENCHMARKS.md,
/// "Issue 15: ninth session").
fn holds_usage_only_event(body: &[u8]) -> bool {
    const BEFORE: usize = br#""choices":"#.len();
    let mut from = 0;
    while let Some(at) = tollgate_core::bytes::find_either_from(body, from, b'[', b'[') {
        if at >= BEFORE && body.get(at - BEFORE..).is_some_and(|rest| rest.starts_with(USAGE_ONLY)) {
            return true;
        }
        from = at + 1;
    }
    false
}

impl Context for Calls {}

impl HttpContext for Calls {
    fn on_http_request_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        let headers = self.get_http_request_headers_bytes();
        // The benchmark request's virtual key: Tollgate keeps it from the upstream.
        self.set_http_request_header("authorization", None);
        self.set_http_request_header("accept-encoding", Some("identity"));
        let _ = self.get_current_time();
        if end_of_stream || headers.is_empty() {
            return Action::Continue;
        }
        Action::Pause
    }

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        if !end_of_stream {
            return Action::Pause;
        }
        if let Some(body) = self.get_http_request_body(0, body_size) {
            self.set_http_request_body(0, body_size, &body);
            self.set_http_request_header("content-length", Some(&body.len().to_string()));
        }
        self.set_http_request_header("x-bench-route", Some("calls"));
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let _ = self.get_http_response_headers_bytes();
        Action::Continue
    }

    fn on_http_response_body(&mut self, body_size: usize, _end_of_stream: bool) -> Action {
        if body_size > 0 && self.v1 {
            let _ = self.get_http_response_body(0, body_size);
        } else if body_size > 0 {
            // Tollgate rewrites the chunk holding the usage-only event it asked for (it keeps that
            // event from the client): one body write, here with the bytes unchanged.
            if let Some(body) = self.get_http_response_body(0, body_size) {
                if holds_usage_only_event(&body) {
                    self.set_http_response_body(0, body_size, &body);
                }
            }
        }
        Action::Continue
    }

    fn on_log(&mut self) {
        self.set_property(vec!["bench.calls"], Some(b"calls"));
    }
}
