//! The bounded log of received requests, served at `GET /__mock/requests`.
//!
//! Tests assert on what the upstream actually got (the routed model, the headers the filter
//! removed or set), so every request is kept verbatim: method, target, headers in order, body.
//! The log is a ring of the last `limit` requests so a long benchmark cannot exhaust memory;
//! `limit = 0` turns recording off.

use std::collections::VecDeque;
use std::sync::Mutex;

use crate::http::Request;

struct Entry {
    seq: u64,
    req: Request,
}

/// A std `Mutex` is right here: the critical sections are a push or a copy, never held across I/O.
pub struct Recorder {
    limit: usize,
    entries: Mutex<VecDeque<Entry>>,
}

impl Recorder {
    pub fn new(limit: usize) -> Recorder {
        Recorder { limit, entries: Mutex::new(VecDeque::new()) }
    }

    pub fn push(&self, seq: u64, req: &Request) {
        if self.limit == 0 {
            return;
        }
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        while entries.len() >= self.limit {
            entries.pop_front();
        }
        entries.push_back(Entry { seq, req: req.clone() });
    }

    pub fn clear(&self) {
        self.entries.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }

    pub fn to_json(&self) -> String {
        let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        let list: Vec<serde_json::Value> = entries
            .iter()
            .map(|e| {
                serde_json::json!({
                    "seq": e.seq,
                    "method": e.req.method,
                    "target": e.req.target,
                    "path": e.req.path(),
                    "headers": e.req.headers.iter().map(|(n, v)| [n, v]).collect::<Vec<_>>(),
                    "body": String::from_utf8_lossy(&e.req.body),
                    "body_base64": base64(&e.req.body),
                    "body_len": e.req.body.len(),
                })
            })
            .collect();
        serde_json::json!({ "requests": list }).to_string()
    }
}

/// Standard base64 with padding (RFC 4648), so tests compare bodies byte for byte.
pub fn base64(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_rfc4648_vectors() {
        for (input, expected) in [("", ""), ("f", "Zg=="), ("fo", "Zm8="), ("foo", "Zm9v"), ("foob", "Zm9vYg=="), ("fooba", "Zm9vYmE="), ("foobar", "Zm9vYmFy")] {
            assert_eq!(base64(input.as_bytes()), expected);
        }
    }

    #[test]
    fn the_log_keeps_the_last_requests_only() {
        let r = Recorder::new(2);
        for seq in 1..=3 {
            r.push(seq, &Request { method: "POST".into(), target: format!("/r{seq}"), ..Request::default() });
        }
        let v: serde_json::Value = serde_json::from_str(&r.to_json()).unwrap();
        let targets: Vec<&str> = v["requests"].as_array().unwrap().iter().map(|e| e["target"].as_str().unwrap()).collect();
        assert_eq!(targets, ["/r2", "/r3"]);
        r.clear();
        assert_eq!(r.to_json(), r#"{"requests":[]}"#);
        let off = Recorder::new(0);
        off.push(1, &Request::default());
        assert_eq!(off.to_json(), r#"{"requests":[]}"#);
    }
}
