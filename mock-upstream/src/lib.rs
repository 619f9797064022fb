//! mock-llm: a fast mock LLM upstream for Tollgate's end-to-end tests, the demo and `make bench`.
//!
//! It answers OpenAI (chat/completions, completions, embeddings, responses), Azure OpenAI
//! (deployments), Anthropic (messages) and Gemini (generateContent, streamGenerateContent, cachedContents creation) requests,
//! JSON and SSE, with usage objects shaped like the real APIs and token counts derived
//! deterministically from the request (see [`llm`]). Tests steer it with `x-mock-*` request headers
//! (see [`controls`]) and read back what it received at `GET /__mock/requests`, so an e2e test can
//! assert what Envoy and the filter actually sent upstream.
//!
//! # Layout
//! - [`http`]: a small HTTP/1.1 keep-alive server, one thread per connection.
//! - [`controls`]: the `x-mock-*` switches (delay, events, chunking, cut, status, gzip, tokens).
//! - [`llm`]: path recognition, request reading, and the response bodies of every dialect.
//! - [`record`]: the bounded log of received requests behind `/__mock/requests`.
//!
//! # Control endpoints
//! - `GET /__mock/health` → `ok`.
//! - `GET /__mock/requests` → `{"requests":[{seq, method, target, path, headers, body, body_base64, body_len}]}`.
//! - `DELETE /__mock/requests` → clears the log.
//!
//! `GET /ui/...` answers a small chat UI page ([`UI_PAGE`], `text/html`), for the budget banner.
//! Any other path (or a non-POST to an LLM path) gets a JSON echo: `{"mock":"echo",...}`.

pub mod clock;
pub mod controls;
pub mod http;
pub mod llm;
pub mod record;

use std::io::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use controls::{accepts_gzip, Controls};
use http::{Handler, Request, Response};
use llm::{Api, Family, Usage};
use record::Recorder;

/// The mock's request handler.
pub struct Mock {
    seq: AtomicU64,
    recorder: Recorder,
}

impl Mock {
    /// A mock that keeps the last `record_limit` requests (0: record nothing, for benchmarks).
    pub fn new(record_limit: usize) -> Mock {
        Mock { seq: AtomicU64::new(0), recorder: Recorder::new(record_limit) }
    }

    fn control(&self, req: &Request) -> Option<Response> {
        match (req.method.as_str(), req.path()) {
            ("GET", "/__mock/health") => Some(plain(200, "text/plain", "ok\n".into())),
            ("GET", "/__mock/requests") => Some(plain(200, "application/json", self.recorder.to_json())),
            ("DELETE", "/__mock/requests") => {
                self.recorder.clear();
                Some(plain(200, "application/json", "{\"cleared\":true}".into()))
            }
            (_, p) if p.starts_with("/__mock/") => Some(plain(404, "text/plain", "unknown mock control endpoint\n".into())),
            _ => None,
        }
    }
}

fn plain(status: u16, content_type: &str, body: String) -> Response {
    Response {
        status,
        headers: vec![("content-type", content_type.to_string())],
        pieces: vec![body.into_bytes()],
        chunked: false,
        write_each_piece: false,
        piece_delay: Duration::ZERO,
        cut: false,
    }
}

impl Handler for Mock {
    fn handle(&self, req: &Request) -> Response {
        if let Some(resp) = self.control(req) {
            return resp;
        }
        let seq = self.seq.fetch_add(1, Ordering::Relaxed) + 1;
        self.recorder.push(seq, req);
        let controls = Controls::from_headers(req.headers.iter().map(|(n, v)| (n.as_str(), v.as_str())));
        if !controls.delay.is_zero() {
            std::thread::sleep(controls.delay);
        }
        let mut resp = self.respond(req, &controls, seq);
        resp.headers.push(("x-mock-seq", seq.to_string()));
        let accepted = req.header("accept-encoding").is_some_and(accepts_gzip);
        let gzip = controls.gzip_allowed && (accepted || controls.gzip_forced) && resp.status < 300;
        shape(&mut resp, &controls, gzip);
        resp
    }
}

impl Mock {
    fn respond(&self, req: &Request, c: &Controls, seq: u64) -> Response {
        let route = match llm::recognise(req.path()) {
            Some(r) if req.method == "POST" => r,
            _ if req.method == "GET" && req.path().starts_with("/ui/") => {
                return plain(200, "text/html; charset=utf-8", UI_PAGE.to_owned());
            }
            _ => return echo(req),
        };
        let family = route.api.family();
        let error = |status: u16, message: &str| {
            let mut r = plain(status, "application/json", llm::error_body(family, status, message));
            r.headers.push(("x-request-id", format!("mock-{seq}")));
            r
        };
        if let Some(status) = c.status {
            if status >= 400 {
                return error(status, &format!("mock-llm: status {status} requested by x-mock-status"));
            }
        }
        let ask = match llm::read_ask(&route, &req.body, req.query()) {
            Ok(a) => a,
            Err(msg) => return error(400, &msg),
        };
        let usage = Usage::compute(route.api, req.body.len(), &ask, c);
        let body = match route.api {
            Api::GeminiCreateCache => llm::cached_content(&ask, &usage, seq, clock::now_ms()),
            _ => llm::answer(&route, &ask, &usage, c.events, seq),
        };
        let mut resp = plain(200, body.content_type, String::new());
        resp.headers.push(("x-request-id", format!("mock-{seq}")));
        if family == Family::Anthropic {
            resp.headers.push(("request-id", format!("req_mock_{seq}")));
        }
        resp.chunked = body.streaming;
        let cut_at = c.cut_after_events.map(|n| (n as usize).min(body.content.len()));
        let mut pieces: Vec<Vec<u8>> = Vec::with_capacity(body.prelude.len() + body.content.len() + body.trailer.len());
        pieces.extend(body.prelude.into_iter().map(String::into_bytes));
        match cut_at {
            Some(n) if body.streaming => {
                pieces.extend(body.content.into_iter().take(n).map(String::into_bytes));
                resp.cut = true;
                resp.write_each_piece = true;
            }
            Some(_) => {
                // A JSON answer cut half-way: chunked framing that never ends, so the peer sees
                // the connection close before the body is complete.
                let doc = body.content.concat().into_bytes();
                pieces.push(doc[..doc.len() / 2].to_vec());
                resp.chunked = true;
                resp.cut = true;
                resp.write_each_piece = true;
            }
            None => {
                pieces.extend(body.content.into_iter().map(String::into_bytes));
                pieces.extend(body.trailer.into_iter().map(String::into_bytes));
            }
        }
        resp.pieces = pieces;
        if body.streaming && !c.event_delay.is_zero() {
            resp.write_each_piece = true;
            resp.piece_delay = c.event_delay;
        }
        resp
    }
}

/// Applies gzip and N-byte write chunking to a built response.
fn shape(resp: &mut Response, c: &Controls, gzip: bool) {
    if gzip {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        for p in &resp.pieces {
            let _ = enc.write_all(p);
        }
        if let Ok(z) = enc.finish() {
            resp.pieces = vec![z];
            resp.headers.push(("content-encoding", "gzip".to_string()));
            resp.headers.push(("vary", "accept-encoding".to_string()));
        }
    }
    if let Some(n) = c.chunk_bytes {
        let whole: Vec<u8> = resp.pieces.concat();
        resp.pieces = whole.chunks(n).map(<[u8]>::to_vec).collect();
        resp.write_each_piece = true;
        resp.piece_delay = c.chunk_delay;
    }
}

/// The chat UI page behind `GET /ui/...` (the budget banner goes after its `<body>`).
pub const UI_PAGE: &str = "<!doctype html><html><head><meta charset=\"utf-8\"><title>Chat</title></head><body class=\"app\"><div id=\"root\">Loading&hellip;</div></body></html>\n";

fn echo(req: &Request) -> Response {
    let body = serde_json::json!({
        "mock": "echo",
        "method": req.method,
        "path": req.path(),
        "body_bytes": req.body.len(),
    });
    plain(200, "application/json", body.to_string())
}
