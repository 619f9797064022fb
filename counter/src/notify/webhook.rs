//! Webhook bodies, signatures and the one POST a delivery makes.
//!
//! # Bodies
//! - `slack`: `{"text": <title>, "blocks": [header, section with the numbers, context]}`: what a
//!   Slack incoming webhook (or Mattermost, Rocket.Chat, ...) accepts.
//! - `json`: the event itself (`seq`, `at_ms`, `key`, `kind`, `scope`, `subject`, `window`, `title`,
//!   `details`).
//!
//! # Signature
//! Every delivery carries
//! ```text
//! X-Tollgate-Event: <event key>          (dedup key: drop a repeat you already handled)
//! X-Tollgate-Timestamp: <unix seconds>   (when this attempt was signed, by the counter's clock)
//! X-Tollgate-Signature: v1=<hex HMAC-SHA256(secret, "<timestamp>.<body>")>
//! ```
//! A receiver recomputes the HMAC over the timestamp header, a `.`, and the raw body bytes,
//! compares in constant time, and refuses a timestamp more than [`REPLAY_WINDOW_SECS`] from its own
//! clock (a captured request cannot be replayed later). [`verify`] does exactly that.

use super::rules::Webhook;
use super::Event;
use hmac::{Hmac, Mac};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::Request;
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use sha2::Sha256;
use std::time::Duration;

/// How far a receiver should accept a signature's timestamp from its own clock.
pub const REPLAY_WINDOW_SECS: i64 = 300;

type HmacSha256 = Hmac<Sha256>;

/// `v1=<hex>` over `"<timestamp>.<body>"`.
pub fn sign(secret: &[u8], timestamp: i64, body: &[u8]) -> String {
    // HMAC takes keys of any length; `new_from_slice` cannot fail for it.
    let Ok(mut mac) = HmacSha256::new_from_slice(secret) else { return String::new() };
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    let bytes = mac.finalize().into_bytes();
    let mut out = String::with_capacity(3 + bytes.len() * 2);
    out.push_str("v1=");
    for b in bytes {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

/// What a receiver does: checks the signature header against the body and the timestamp against
/// its clock (`now_secs`), allowing [`REPLAY_WINDOW_SECS`] either way.
pub fn verify(secret: &[u8], timestamp_header: &str, signature_header: &str, body: &[u8], now_secs: i64) -> Result<(), String> {
    let ts: i64 = timestamp_header.trim().parse().map_err(|_| "X-Tollgate-Timestamp: not unix seconds".to_string())?;
    if (now_secs - ts).abs() > REPLAY_WINDOW_SECS {
        return Err(format!("X-Tollgate-Timestamp: {ts} is more than {REPLAY_WINDOW_SECS} s from now ({now_secs}); refusing a replay"));
    }
    let hex = signature_header.trim().strip_prefix("v1=").ok_or("X-Tollgate-Signature: expected v1=<hex>")?;
    let bytes: Vec<u8> = (0..hex.len() / 2).filter_map(|i| hex.get(2 * i..2 * i + 2).and_then(|h| u8::from_str_radix(h, 16).ok())).collect();
    if bytes.len() != 32 || hex.len() != 64 {
        return Err("X-Tollgate-Signature: not 32 hex bytes".into());
    }
    let mut mac = HmacSha256::new_from_slice(secret).map_err(|e| e.to_string())?;
    mac.update(ts.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    mac.verify_slice(&bytes).map_err(|_| "X-Tollgate-Signature: does not match the body".to_string())
}

/// The generic JSON body: the event.
pub fn json_body(event: &Event) -> Value {
    serde_json::to_value(event).unwrap_or_default()
}

/// The Slack-compatible body.
pub fn slack_body(event: &Event) -> Value {
    let d = &event.draft;
    let mut fields: Vec<String> = vec![format!("*Kind:* `{}`", d.kind.as_str()), format!("*Scope:* `{}`", d.scope)];
    if let Some(s) = &d.subject {
        fields.push(format!("*Subject:* `{s}`"));
    }
    let money = |k: &str| d.details.get(k).and_then(Value::as_i64).map(|m| format!("${}", super::usd(m)));
    for (label, key) in [("Spent", "spent_micros"), ("Limit", "limit_micros"), ("Today", "today_micros"), ("7-day average", "average_micros")] {
        if let Some(m) = money(key) {
            fields.push(format!("*{label}:* {m}"));
        }
    }
    let mut blocks = vec![
        json!({"type": "header", "text": {"type": "plain_text", "text": header(event)}}),
        json!({"type": "section", "text": {"type": "mrkdwn", "text": d.title}}),
        json!({"type": "section", "fields": fields.iter().map(|f| json!({"type": "mrkdwn", "text": f})).collect::<Vec<_>>()}),
    ];
    if let Some(rows) = d.details.get("breakdown").and_then(Value::as_array).filter(|r| !r.is_empty()) {
        let lines: Vec<String> = rows
            .iter()
            .map(|r| {
                format!(
                    "• `{}` / `{}`: ${} ({} requests)",
                    r["model"].as_str().unwrap_or(""),
                    r["use_case"].as_str().filter(|u| !u.is_empty()).unwrap_or("-"),
                    super::usd(r["cost_micros"].as_i64().unwrap_or(0)),
                    r["requests"]
                )
            })
            .collect();
        blocks.push(json!({"type": "section", "text": {"type": "mrkdwn", "text": format!("*Today by model / use case:*\n{}", lines.join("\n"))}}));
    }
    blocks.push(json!({"type": "context", "elements": [{"type": "mrkdwn", "text": format!("Tollgate event `{}` · {}", d.key, crate::window::format_time_ms(event.at_ms))}]}));
    json!({"text": format!("Tollgate: {}", d.title), "blocks": blocks})
}

fn header(event: &Event) -> String {
    let what = match event.draft.kind {
        super::EventKind::Threshold => match event.draft.details.get("pct").and_then(Value::as_u64) {
            Some(p) => format!("Budget at {p} %"),
            None => "Budget threshold".into(),
        },
        super::EventKind::HardStop => "Budget hard stop".into(),
        super::EventKind::Anomaly => "Spend anomaly".into(),
        super::EventKind::ReviewOverdue => "Workflow review overdue".into(),
        super::EventKind::ProjectedOverrun => "Projected to exceed the hard limit".into(),
    };
    format!("Tollgate: {what}")
}

/// The body bytes for `webhook`.
pub fn body(webhook: &Webhook, event: &Event) -> Vec<u8> {
    let v = if webhook.slack { slack_body(event) } else { json_body(event) };
    serde_json::to_vec(&v).unwrap_or_default()
}

/// POSTs one signed delivery; `Ok` only for a 2xx answer.
pub async fn post(webhook: &Webhook, event: &Event, now_ms: i64, timeout: Duration) -> Result<(), String> {
    let body = body(webhook, event);
    let ts = now_ms.div_euclid(1000);
    let signature = sign(&webhook.secret, ts, &body);
    let attempt = async {
        let stream = tokio::net::TcpStream::connect(&webhook.authority).await.map_err(|e| format!("connect {}: {e}", webhook.authority))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(|e| format!("handshake: {e}"))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let request = Request::post(&webhook.path)
            .header(hyper::header::HOST, &webhook.authority)
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .header(hyper::header::USER_AGENT, "tollgate-counter")
            .header("x-tollgate-event", &event.draft.key)
            .header("x-tollgate-timestamp", ts.to_string())
            .header("x-tollgate-signature", signature)
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| format!("request: {e}"))?;
        let response = sender.send_request(request).await.map_err(|e| format!("send: {e}"))?;
        let status = response.status();
        let _ = response.into_body().collect().await;
        if status.is_success() { Ok(()) } else { Err(format!("the receiver answered {status}")) }
    };
    match tokio::time::timeout(timeout, attempt).await {
        Ok(r) => r,
        Err(_) => Err(format!("no answer within {} ms", timeout.as_millis())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::notify::{EventDraft, EventKind};

    #[test]
    fn a_signature_verifies_only_with_its_secret_body_and_a_fresh_timestamp() {
        let secret = b"0123456789abcdef";
        let body = br#"{"text":"hi"}"#;
        let sig = sign(secret, 1_764_064_800, body);
        assert!(sig.starts_with("v1=") && sig.len() == 67, "{sig}");
        assert_eq!(verify(secret, "1764064800", &sig, body, 1_764_064_800 + 299), Ok(()));
        let cases: [(&[u8], &str, &[u8], i64, &str); 4] = [
            (b"another-secret-xx", "1764064800", body, 1_764_064_800, "does not match"),
            (secret, "1764064800", br#"{"text":"hI"}"#, 1_764_064_800, "does not match"),
            (secret, "1764064801", body, 1_764_064_800, "does not match"),
            (secret, "1764064800", body, 1_764_064_800 + 301, "replay"),
        ];
        for (key, ts, b, now, needle) in cases {
            let e = verify(key, ts, &sig, b, now).unwrap_err();
            assert!(e.contains(needle), "{e}");
        }
    }

    #[test]
    fn the_slack_body_has_text_blocks_and_the_breakdown() {
        let event = Event {
            seq: 7,
            at_ms: 1_764_064_800_000,
            draft: EventDraft {
                key: "anomaly:team:a:2026-11-25".into(),
                kind: EventKind::Anomaly,
                scope: "team:a".into(),
                subject: None,
                window: "2026-11-25".into(),
                title: "Spend anomaly on team:a".into(),
                details: json!({"today_micros": 30_000_000, "average_micros": 1_000_000,
                    "breakdown": [{"model": "big", "use_case": "review", "requests": 3, "cost_micros": 29_000_000}]}),
            },
        };
        let v = slack_body(&event);
        assert_eq!(v["text"], "Tollgate: Spend anomaly on team:a");
        let blocks = v["blocks"].as_array().unwrap();
        assert_eq!(blocks[0]["type"], "header");
        let all = v.to_string();
        assert!(all.contains("$30.00") && all.contains("`big` / `review`: $29.00 (3 requests)") && all.contains("anomaly:team:a:2026-11-25"), "{all}");
        let j = json_body(&event);
        assert_eq!((j["seq"].as_u64(), j["kind"].as_str(), j["key"].as_str()), (Some(7), Some("anomaly"), Some("anomaly:team:a:2026-11-25")));
    }
}
