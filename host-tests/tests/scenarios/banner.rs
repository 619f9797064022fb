//! The budget banner (issue 13 §3) on the real wasm: a chat UI's HTML page gets the principal's
//! budget status right after `<body>`, streamed through lol_html at any chunking; everything else
//! on the route, and every other route, passes through byte for byte.

use crate::common::*;
use serde_json::{json, Value};
use tollgate_host_tests::fixtures::{cases, refs, Case, TEST_CONFIG};
use tollgate_host_tests::*;

const CLUSTER: &str = "tollgate_counter";
const OPEN: &str = "<div id=\"tollgate-banner\" role=\"status\" style=\"padding:4px 12px;background:#fff4ce;color:#222;font:14px/1.4 system-ui,sans-serif;border-bottom:1px solid #e0c97a\">";

/// A small page; [`page`] makes a realistic one.
const PAGE: &str = "<!doctype html><html><head><title>Chat</title></head><body class=\"app\"><div id=\"root\">hi</div></body></html>";

fn config(enforcement: bool) -> String {
    let mut v: Value = serde_json::from_str(TEST_CONFIG).expect("TEST_CONFIG is JSON");
    if enforcement {
        v["enforcement"] = json!({
            "counter_cluster": CLUSTER,
            "gateway_token": "gt-secret",
            "lease_slice_usd": "1",
            "failure_mode": "fail_closed",
            "flush_interval_ms": 1000,
            "call_timeout_ms": 500,
            "default_max_output_tokens": 1000
        });
    }
    v["banner"] = json!({
        "routes": [{"host": "chat.internal", "path_prefix": "/"}, {"host": "*.tools.internal", "path_prefix": "/webui/"}],
        "template": "{scope}: {pct} % of the budget used"
    });
    v.to_string()
}

/// A gateway whose counter grants every scope; the team's budget is 82 % spent, the org's 40 %.
fn gateway() -> Gateway {
    let gw = Gateway::new(config(true));
    gw.auto_answer(|call| {
        if call.path() != "/v1/leases" {
            return Answer::status(503);
        }
        let req = call.json();
        let budgets: Vec<Value> = req["scopes"]
            .as_array()
            .map(|a| a.as_slice())
            .unwrap_or_default()
            .iter()
            .map(|scope| {
                let spent = if scope.as_str().is_some_and(|s| s.starts_with("team:")) { 8_200_000 } else { 4_000_000 };
                json!({
                    "budget_id": format!("b-{}", scope.as_str().unwrap_or("?")),
                    "scope": scope,
                    "mode": "enforce",
                    "granted_micros": 1_000_000,
                    "spent_micros": spent,
                    "limit_micros": 10_000_000,
                    "hard_limit_micros": 12_000_000,
                    "soft_threshold_pct": 90,
                    "status": "ok",
                    "resets_at": 4_000_000_000i64,
                    "lease_expires_at_ms": 4_000_000_000_000i64
                })
            })
            .collect();
        Answer::json(200, &json!({ "budgets": budgets }))
    });
    gw
}

fn chat() -> Case {
    cases().into_iter().find(|c| c.name == "openai chat json").expect("fixture")
}

/// One LLM call by `team`, so the gateway holds a lease (and the status) on its budgets.
fn spend(gw: &Gateway, team: &str) {
    let c = chat();
    let mut s = gw.stream();
    s.send_request(&refs(&with(c.headers(), "x-auth-team", team)), &c.request);
    gw.advance(Duration::from_millis(1));
    s.expect_upstream_body(&c.upstream_request);
    s.respond(&refs(&c.response_headers()), &c.response);
    gw.advance(Duration::from_millis(20));
}

fn get(authority: &str, path: &str, team: Option<&str>) -> Vec<(String, String)> {
    let mut h = vec![
        (":method".to_string(), "GET".to_string()),
        (":path".to_string(), path.to_string()),
        (":authority".to_string(), authority.to_string()),
        (":scheme".to_string(), "http".to_string()),
    ];
    if let Some(team) = team {
        h.push(("x-auth-team".into(), team.into()));
    }
    h
}

fn html_headers(len: usize, extra: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut h = vec![
        (":status".to_string(), "200".to_string()),
        ("content-type".to_string(), "text/html; charset=utf-8".to_string()),
        ("content-length".to_string(), len.to_string()),
        ("etag".to_string(), "\"v1\"".to_string()),
    ];
    h.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    h
}

/// The page asked for on `authority` + `path` by `team`, answered with `headers` and `body` in
/// chunks of `sizes`; what the client got.
fn load(gw: &Gateway, authority: &str, path: &str, team: Option<&str>, headers: &[(String, String)], body: &[u8], sizes: &[usize]) -> ClientResponse {
    let mut s = gw.stream();
    s.send_request(&refs(&get(authority, path, team)), b"");
    assert!(s.upstream().complete, "a page request goes upstream untouched");
    s.respond_chunked(&refs(headers), body, sizes);
    assert!(gw.traps().is_empty(), "no trap: {:?}", gw.traps());
    s.client()
}

fn with_banner(page: &str, text: &str) -> String {
    page.replacen("<body class=\"app\">", &format!("<body class=\"app\">{OPEN}{text}</div>"), 1)
}

/// A chat UI's page of about `kib` KiB: head, an inline script, then the body's markup.
pub fn page(kib: usize) -> String {
    let mut p = String::from("<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>Open WebUI</title>");
    p.push_str("<script>window.__cfg = {\"theme\": \"dark\", \"items\": [");
    while p.len() < kib * 1024 / 3 {
        p.push_str("{\"id\": 12345, \"name\": \"model <b>&amp; co\"}, ");
    }
    p.push_str("{}]};</script></head><body class=\"app\">");
    while p.len() < kib * 1024 {
        p.push_str("<div class=\"msg\"><span data-role=\"user\">Hello &amp; welcome</span><img src=\"/a.png\" alt=\"x\"></div>\n");
    }
    p.push_str("</body></html>");
    p
}

#[test]
fn the_banner_follows_body_at_every_split_of_the_body_tag() {
    let gw = gateway();
    spend(&gw, "platform");
    let want = with_banner(PAGE, "team platform: 82 % of the budget used");
    let at = PAGE.find("<body").expect("the page has a body tag");
    let tag_end = at + "<body class=\"app\">".len();
    for cut in at.saturating_sub(2)..=tag_end + 2 {
        let got = load(&gw, "chat.internal", "/", Some("platform"), &html_headers(PAGE.len(), &[]), PAGE.as_bytes(), &[cut, usize::MAX]);
        assert_eq!(got.status(), Some(200));
        assert_eq!(got.body_text(), want, "body cut at byte {cut}");
        assert_eq!(got.header("content-length"), None, "the page grew: its length is gone (cut at {cut})");
        assert_eq!(got.header("etag"), None, "its validator named the page without the banner");
    }
    // Byte by byte, and a realistic page in 16 KiB chunks.
    let got = load(&gw, "chat.internal", "/c/123?x=1", Some("platform"), &html_headers(PAGE.len(), &[]), PAGE.as_bytes(), &[1]);
    assert_eq!(got.body_text(), want);
    let big = page(50);
    let got = load(&gw, "a.tools.internal:8443", "/webui/", Some("platform"), &html_headers(big.len(), &[]), big.as_bytes(), &[16 * 1024]);
    assert_eq!(got.body_text(), with_banner(&big, "team platform: 82 % of the budget used"));
    flush_counters(&gw);
    assert_eq!(gw.counter("tollgate_banner_injected"), (tag_end + 2 - at.saturating_sub(2) + 1 + 2) as u64);
    assert_eq!(gw.counter("tollgate_banner_failed"), 0);
}

#[test]
fn values_in_the_banner_are_escaped() {
    let gw = gateway();
    let team = "<script>alert(1)</script>&";
    spend(&gw, team);
    let got = load(&gw, "chat.internal", "/", Some(team), &html_headers(PAGE.len(), &[]), PAGE.as_bytes(), &[40]);
    let body = got.body_text();
    assert_eq!(body, with_banner(PAGE, "team &lt;script&gt;alert(1)&lt;/script&gt;&amp;: 82 % of the budget used"));
    assert!(!body.contains("<script>"), "{body}");
}

#[test]
fn other_responses_and_routes_pass_through_untouched() {
    let gw = gateway();
    spend(&gw, "platform");
    let page = PAGE.as_bytes();
    // Not HTML, not 200, not UTF-8, or not on a banner route: byte for byte, length kept.
    let untouched: Vec<(&str, &str, Vec<(String, String)>)> = vec![
        ("chat.internal", "/app.js", vec![(":status".into(), "200".into()), ("content-type".into(), "application/javascript".into()), ("content-length".into(), page.len().to_string())]),
        ("chat.internal", "/api/models", vec![(":status".into(), "200".into()), ("content-type".into(), "application/json".into()), ("content-length".into(), page.len().to_string())]),
        ("chat.internal", "/missing", vec![(":status".into(), "404".into()), ("content-type".into(), "text/html".into()), ("content-length".into(), page.len().to_string())]),
        ("chat.internal", "/", vec![(":status".into(), "200".into()), ("content-type".into(), "text/html; charset=iso-8859-1".into()), ("content-length".into(), page.len().to_string())]),
        ("wiki.internal", "/", html_headers(page.len(), &[])),
        ("a.tools.internal", "/other/", html_headers(page.len(), &[])),
        ("chat.internal.example", "/", html_headers(page.len(), &[])),
    ];
    for (authority, path, headers) in untouched {
        let got = load(&gw, authority, path, Some("platform"), &headers, page, &[30]);
        assert_eq!(got.body, page, "{authority}{path}");
        assert_eq!(got.header("content-length"), Some(page.len().to_string().as_str()), "{authority}{path}");
    }
    // Compressed HTML cannot be rewritten: untouched, and counted.
    let gzipped = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\x03garbage";
    let got = load(&gw, "chat.internal", "/", Some("platform"), &html_headers(gzipped.len(), &[("content-encoding", "gzip")]), gzipped, &[5]);
    assert_eq!(got.body, gzipped);
    assert_eq!(got.header("content-length"), Some(gzipped.len().to_string().as_str()));
    flush_counters(&gw);
    assert_eq!(gw.counter("tollgate_banner_skipped_encoded"), 1);
    assert_eq!(gw.counter("tollgate_banner_injected"), 0);
}

#[test]
fn a_malformed_document_passes_through_unchanged() {
    let gw = gateway();
    spend(&gw, "platform");
    let documents: [&[u8]; 4] = [
        b"<html><p>no body tag at all</p></html>",
        b"<<<>>>&&& <!-- unterminated <body",
        b"\xff\xfe\x00<\x00b\x00o\x00d\x00y\x00>",
        b"<script>document.write('<body>')</script><!-- <body> --><textarea><body></textarea>",
    ];
    for doc in documents {
        for size in [1, 7, usize::MAX] {
            let got = load(&gw, "chat.internal", "/", Some("platform"), &html_headers(doc.len(), &[]), doc, &[size]);
            assert_eq!(got.body, doc, "{}", String::from_utf8_lossy(doc));
            assert!(got.complete);
        }
    }
    // A body tag larger than the rewriter may hold (1 MiB): lol_html gives up, every byte passes.
    let mut huge = b"<html><body data-x=\"".to_vec();
    huge.extend(std::iter::repeat_n(b'a', (1 << 20) + 100));
    huge.extend(b"\">x</body></html>");
    let got = load(&gw, "chat.internal", "/", Some("platform"), &html_headers(huge.len(), &[]), &huge, &[100_000]);
    assert!(got.body == huge, "the oversized page passed through unchanged ({} bytes of {})", got.body.len(), huge.len());
    flush_counters(&gw);
    assert_eq!(gw.counter("tollgate_banner_failed"), 1);
    assert_eq!(gw.counter("tollgate_banner_injected"), 0);
}

#[test]
fn no_banner_without_a_known_budget_or_without_enforcement() {
    // Enforcement on, but this team has made no call yet: the gateway knows no budget of its.
    let gw = gateway();
    let got = load(&gw, "chat.internal", "/", Some("newcomers"), &html_headers(PAGE.len(), &[]), PAGE.as_bytes(), &[20]);
    assert_eq!(got.body_text(), PAGE);
    assert_eq!(got.header("content-length"), Some(PAGE.len().to_string().as_str()));
    flush_counters(&gw);
    assert_eq!(gw.counter("tollgate_banner_no_status"), 1);

    // No enforcement: no status, so no banner, and the operator is told at configure time.
    let gw = Gateway::new(config(false));
    let got = load(&gw, "chat.internal", "/", Some("platform"), &html_headers(PAGE.len(), &[]), PAGE.as_bytes(), &[20]);
    assert_eq!(got.body_text(), PAGE);
    assert_eq!(got.header("content-length"), Some(PAGE.len().to_string().as_str()));
    assert_eq!(gw.logs_containing("banner is configured but enforcement is not").len(), 1);
    flush_counters(&gw);
    assert_eq!(gw.counter("tollgate_banner_no_status"), 0, "not even looked at");
}

#[test]
fn a_bad_banner_section_is_refused_naming_the_field() {
    let mut v: Value = serde_json::from_str(&config(true)).expect("JSON");
    v["banner"]["routes"][1]["path_prefix"] = json!("webui");
    let refusal = Gateway::new(v.to_string()).try_start().expect_err("refused");
    assert!(refusal.log_text().contains("banner.routes[1].path_prefix"), "{}", refusal.log_text());
}
