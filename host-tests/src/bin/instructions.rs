//! Wasm instructions the filter executes per request, for reference workloads: a figure machine
//! noise cannot move (wasmtime fuel = instructions executed), so a regression shows in review.
//!
//! `cargo run --release -p tollgate-host-tests --features bench --bin instructions`
//! (`make bench` runs it). Uses `$TOLLGATE_WASM` or the built `tollgate.wasm` (see `module`), and
//! the no-op filter beside it, if built, as the floor every wasm filter pays.

use tollgate_host_tests::fixtures::{openai_chat_request, openai_chat_sse, refs};
use tollgate_host_tests::module;
use std::collections::{BTreeMap, BTreeSet};
use tollgate_host_tests::{Answer, Gateway};

/// A production-like configuration: the bundled price table, attribution, a few routing rules.
const CONFIG: &str = r#"{
  "gateway_id": "bench",
  "attribution": {
    "trusted_headers": { "team": "x-auth-team", "use_case": "x-auth-use-case" },
    "defaults": { "org": "acme" }
  },
  "routing": { "rules": [
    { "name": "no-legacy", "match": { "model": "gpt-4-32k*" }, "deny": true, "message": "retired" },
    { "name": "premium", "match": { "model": "tier:premium" }, "set_model": "gpt-4o", "set_headers": { "x-tollgate-provider": "openai" } },
    { "name": "chat", "match": { "dialect": "openai", "model": "gpt-4o*" }, "set_headers": { "x-tollgate-provider": "openai" } }
  ] }
}"#;

struct Workload {
    name: &'static str,
    request: Vec<u8>,
    response_headers: Vec<(&'static str, &'static str)>,
    /// Response body chunks, as the upstream sends them.
    response: Vec<Vec<u8>>,
}

fn workloads() -> Vec<Workload> {
    // One SSE event per chunk, as a provider flushes them.
    let sse = openai_chat_sse("gpt-4o-2024-08-06", 40, 520, 160, 0, 0);
    let events: Vec<Vec<u8>> = sse
        .split_inclusive(|b| *b == b'\n')
        .collect::<Vec<_>>()
        .chunks(2)
        .map(|pair| pair.concat())
        .collect();
    let agent = openai_chat_request("gpt-4o", false, 200 * 1024);
    let agent_response = br#"{"id":"chatcmpl-9","object":"chat.completion","created":1767225600,"model":"gpt-4o-2024-08-06","choices":[{"index":0,"message":{"role":"assistant","content":"Here is the plan."},"finish_reason":"stop"}],"usage":{"prompt_tokens":51200,"completion_tokens":420,"total_tokens":51620,"prompt_tokens_details":{"cached_tokens":40960}}}"#;
    vec![
        Workload {
            name: "chat 2 KB request, 40-event SSE response",
            request: openai_chat_request("gpt-4o", true, 2048).into_bytes(),
            response_headers: vec![(":status", "200"), ("content-type", "text/event-stream")],
            response: events,
        },
        Workload {
            name: "agent 200 KB request, JSON response",
            request: agent.into_bytes(),
            response_headers: vec![(":status", "200"), ("content-type", "application/json")],
            response: vec![agent_response.to_vec()],
        },
    ]
}

/// (request phase, response phase incl. log/done/delete) instructions for one request.
fn measure(gw: &Gateway, w: &Workload) -> (u64, u64) {
    let headers = vec![
        (":method".to_string(), "POST".to_string()),
        (":path".to_string(), "/v1/chat/completions".to_string()),
        (":authority".to_string(), "llm.internal".to_string()),
        ("content-type".to_string(), "application/json".to_string()),
        ("content-length".to_string(), w.request.len().to_string()),
        ("x-auth-team".to_string(), "platform".to_string()),
    ];
    let mut s = gw.stream();
    // Envoy delivers a large body in ~16 KiB reads.
    s.send_request_chunked(&refs(&headers), &w.request, &[16 * 1024]);
    assert!(s.upstream().complete, "{}: the request did not reach the upstream: {:?}", w.name, s.client());
    let request = s.instructions();
    s.response_headers(&w.response_headers, false);
    let last = w.response.len() - 1;
    for (i, chunk) in w.response.iter().enumerate() {
        s.response_body(chunk, i == last);
    }
    assert!(s.finished(), "{}: the stream did not finish", w.name);
    (request, s.instructions() - request)
}

/// A request the filter passes through (no LLM API on its path): what every other request on an
/// LLM gateway's listener pays, steady state.
fn measure_passthrough(gw: &Gateway) -> (u64, u64) {
    let once = || {
        let mut s = gw.stream();
        s.request_headers(&[(":method", "GET"), (":path", "/healthz"), (":authority", "llm.internal")], true);
        let request = s.instructions();
        s.response_headers(&[(":status", "200"), ("content-type", "application/json")], false);
        s.response_body(br#"{"status":"ok"}"#, true);
        assert!(s.finished(), "the passed-through stream did not finish");
        (request, s.instructions() - request)
    };
    once();
    let steady = once();
    assert_eq!(steady, once(), "instruction counts are deterministic");
    steady
}

/// The enforcement workload: [`CONFIG`] plus enforcement against a counter played here, with a
/// budget on `org:acme` only (as in the Envoy bench): the chain's other scope (`team:platform`)
/// has none. Steady state: the slice is in hand, no request waits.
fn enforcing_gateway() -> Gateway {
    enforcing_gateway_with(serde_json::Value::Null)
}

/// [`enforcing_gateway`] with `banner` as its `banner` section (`null`: none).
fn enforcing_gateway_with(banner: serde_json::Value) -> Gateway {
    enforcing_gateway_answering(banner, std::time::Duration::ZERO)
}

/// [`enforcing_gateway_with`], the counter answering usage posts `usage_delay` after they are
/// made (so a post and its acknowledgement run in separate root callbacks, as on a real network).
fn enforcing_gateway_answering(banner: serde_json::Value, usage_delay: std::time::Duration) -> Gateway {
    let mut v: serde_json::Value = serde_json::from_str(CONFIG).expect("CONFIG is JSON");
    if !banner.is_null() {
        v["banner"] = banner;
    }
    v["enforcement"] = serde_json::json!({
        "counter_cluster": "tollgate_counter",
        "gateway_token": "t",
        "lease_slice_usd": "1000000",
        "flush_interval_ms": 1000
    });
    let gw = Gateway::new(v.to_string());
    gw.start();
    gw.auto_answer(move |call| {
        let req = call.json();
        if call.path() == "/v1/usage" {
            let n = req["records"].as_array().map_or(0, |r| r.len());
            return Answer::json(200, &serde_json::json!({"accepted": n, "duplicates": 0})).after(usage_delay);
        }
        let budgets: Vec<serde_json::Value> = req["scopes"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|s| s.as_str() == Some("org:acme"))
            .map(|scope| {
                serde_json::json!({
                    "budget_id": "acme-monthly", "scope": scope, "mode": "enforce",
                    "granted_micros": req["want_micros"], "spent_micros": 0,
                    "limit_micros": 1_000_000_000_000i64, "hard_limit_micros": 1_000_000_000_000i64,
                    "soft_threshold_pct": 80, "status": "ok", "resets_at": null,
                    "lease_expires_at_ms": 4_000_000_000_000u64
                })
            })
            .collect();
        Answer::json(200, &serde_json::json!({ "budgets": budgets }))
    });
    gw
}

/// Enforcement per request: the stream's own instructions in steady state, and everything the
/// filter executed (streams plus root ticks: usage batches, acknowledgements) over `N` requests
/// and the ticks that deliver their records, divided by `N`.
fn measure_enforcement(w: &Workload) -> (u64, u64, u64) {
    const N: u64 = 50;
    let gw = enforcing_gateway();
    for _ in 0..3 {
        measure(&gw, w);
        gw.advance(std::time::Duration::from_millis(1000));
    }
    let (req, resp) = measure(&gw, w);
    gw.advance(std::time::Duration::from_millis(1000));
    let before = gw.instructions();
    let version = |scope: &str| gw.shared_data(&format!("tollgate.lease.{scope}")).map(|(_, cas)| cas);
    let (org, team) = (version("org:acme"), version("team:platform"));
    for _ in 0..N {
        measure(&gw, w);
    }
    // Between ticks, a request touches shared data only for the scope with a budget.
    assert_ne!(version("org:acme"), org, "requests reserve and settle on org:acme");
    assert_eq!(version("team:platform"), team, "the unbudgeted scope is not written per request");
    gw.advance(std::time::Duration::from_millis(1000));
    assert!(gw.pending_calls().is_empty(), "the counter answered everything");
    (req, resp, (gw.instructions() - before) / N)
}

/// [`CONFIG`] plus the retry guard counting every request (issue 12, docs/guards.md), in observe
/// mode so the same request measured again is counted, never refused: the fingerprint of the
/// body, the count read and written in shared data, on every request.
fn guarded_gateway() -> Gateway {
    let mut v: serde_json::Value = serde_json::from_str(CONFIG).expect("CONFIG is JSON");
    v["guards"] = serde_json::json!({ "retry": { "mode": "observe" } });
    let gw = Gateway::new(v.to_string());
    gw.start();
    gw
}

/// A chat UI page of about 50 KiB: a head with an inline script, then the body's markup.
fn chat_page() -> String {
    let mut p = String::from("<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>Open WebUI</title>");
    p.push_str("<script>window.__cfg = {\"items\": [");
    while p.len() < 16 * 1024 {
        p.push_str("{\"id\": 12345, \"name\": \"model <b>&amp; co\"}, ");
    }
    p.push_str("{}]};</script></head><body class=\"app\">");
    while p.len() < 50 * 1024 {
        p.push_str("<div class=\"msg\"><span data-role=\"user\">Hello &amp; welcome</span><img src=\"/a.png\" alt=\"x\"></div>\n");
    }
    p.push_str("</body></html>");
    p
}

/// The budget banner (issue 13): one 50 KiB page in 16 KiB chunks, the whole stream's
/// instructions, with the banner configured and without (the page then only passes through).
fn measure_banner() -> (u64, u64) {
    let page = chat_page();
    let load = |gw: &Gateway| {
        let headers = [(":method", "GET"), (":path", "/"), (":authority", "chat.internal"), (":scheme", "http"), ("x-auth-team", "platform")];
        let len = page.len().to_string();
        let mut s = gw.stream();
        s.send_request(&headers, b"");
        s.respond_chunked(&[(":status", "200"), ("content-type", "text/html; charset=utf-8"), ("content-length", &len)], page.as_bytes(), &[16 * 1024]);
        assert!(s.finished(), "the page stream finished");
        (s.instructions(), s.client().body_text().contains("tollgate-banner"))
    };
    let banner = enforcing_gateway_with(serde_json::json!({"routes": [{"host": "chat.internal", "path_prefix": "/"}]}));
    // One LLM call gives the gateway its lease, hence the status on org:acme.
    let w = workloads().remove(1);
    measure(&banner, &w);
    banner.advance(std::time::Duration::from_millis(1000));
    load(&banner);
    let (with, injected) = load(&banner);
    assert!(injected, "the banner went in");
    let plain = enforcing_gateway();
    measure(&plain, &w);
    load(&plain);
    let (without, injected) = load(&plain);
    assert!(!injected);
    (with, without)
}

fn main() {
    if cfg!(feature = "profile") && std::env::var_os("TOLLGATE_PERFMAP").is_some() {
        return profile_loop();
    }
    let wasm = module::tollgate_wasm_path();
    println!("# wasm instructions per request (wasmtime fuel), deterministic");
    println!("# command: cargo run --release -p tollgate-host-tests --features bench --bin instructions");
    println!("# filter: {}", wasm.display());
    let gw = Gateway::new(CONFIG);
    gw.start();
    let startup = gw.instructions();
    println!("startup (instantiate + configure, bundled price table): {startup} instructions");
    match std::env::var("BENCH_CALLBACKS").as_deref() {
        Ok("enforcement") => return print_response_callbacks(&enforcing_gateway()),
        Ok(_) => return print_response_callbacks(&gw),
        Err(_) => {}
    }
    let noop = wasm.with_file_name("noop_filter.wasm");
    let floor = noop.exists().then(|| Gateway::new("").module(module::load_module(&noop)));
    let calls_floor = noop.exists().then(|| Gateway::new(r#"{"mode":"calls"}"#).module(module::load_module(&noop)));
    println!();
    println!("| workload | request phase | response phase | total | no-op filter total | `calls` filter total |");
    println!("|---|---:|---:|---:|---:|---:|");
    for w in workloads() {
        // The first request pays one-time lazy initialisation; the steady state is what matters.
        let (cold_req, cold_resp) = measure(&gw, &w);
        // The second request still allocates what the first one's reused scanner kept
        // (`plugin::scanners`); from the third on every request is the same.
        measure(&gw, &w);
        let (req, resp) = measure(&gw, &w);
        let again = measure(&gw, &w);
        assert_eq!((req, resp), again, "instruction counts are deterministic");
        let total = |g: &Option<Gateway>| {
            g.as_ref().map(|f| {
                let (a, b) = measure(f, &w);
                (a + b).to_string()
            })
        };
        let (floor_total, calls_total) = (total(&floor), total(&calls_floor));
        println!(
            "| {} | {req} | {resp} | {} | {} | {} |",
            w.name,
            req + resp,
            floor_total.unwrap_or_else(|| "(noop_filter.wasm not built)".into()),
            calls_total.unwrap_or_default()
        );
        println!("|   first request (cold) | {cold_req} | {cold_resp} | {} | | |", cold_req + cold_resp);
        let guarded = guarded_gateway();
        measure(&guarded, &w);
        measure(&guarded, &w);
        let (greq, gresp) = measure(&guarded, &w);
        println!("|   with the retry guard (every request counted) | {greq} | {gresp} | {} | | |", greq + gresp);
        let (ereq, eresp, amortized) = measure_enforcement(&w);
        println!("|   with enforcement (budget on org:acme) | {ereq} | {eresp} | {} | | |", ereq + eresp);
        println!("|   with enforcement, incl. root ticks (usage delivery), per request over 50 | | | {amortized} | | |");
    }
    let (pass_req, pass_resp) = measure_passthrough(&gw);
    println!("| a request on a path that is not an LLM API (`GET /healthz`, passed through untouched) | {pass_req} | {pass_resp} | {} | | |", pass_req + pass_resp);
    print_delivery();
    memory_after_many_requests();
    let (with, without) = measure_banner();
    println!("| budget banner: 50 KiB HTML page in 16 KiB chunks, with enforcement (page passed through without a banner section: {without}) | | | {with} | |");
    print_host_calls();
    print_pooled();
}

/// For `perf record` (feature `profile`, `TOLLGATE_PERFMAP=1`): only the chat workload, many times,
/// so the samples are the filter's steady state. `BENCH_PROFILE_CASE` = `metering` (default) or
/// `enforcement` (steady traffic: four requests per 20 ms tick), `content` (one long stream of
/// content events), `first` (streams of one event) or `ends` (streams of the fixed-cost events), `BENCH_PROFILE_REQUESTS` (20,000).
fn profile_loop() {
    let chat = workloads().into_iter().next().expect("the chat workload");
    let requests: u64 = std::env::var("BENCH_PROFILE_REQUESTS").ok().and_then(|v| v.parse().ok()).unwrap_or(20_000);
    let case = std::env::var("BENCH_PROFILE_CASE").unwrap_or_default();
    if case == "content" {
        return profile_content_events(&chat, requests);
    }
    if case == "first" {
        return profile_short_streams(&chat, requests, &[0], "streams of one event");
    }
    if case == "ends" {
        let n = chat.response.len();
        return profile_short_streams(&chat, requests, &[0, n - 3, n - 2], "streams of their first, finish and usage events");
    }
    let enforcing = case == "enforcement";
    let gw = if enforcing {
        enforcing_gateway()
    } else {
        let gw = Gateway::new(CONFIG);
        gw.start();
        gw
    };
    for n in 0..requests {
        measure(&gw, &chat);
        if enforcing && n % 4 == 3 {
            gw.advance(std::time::Duration::from_millis(20));
        }
    }
    println!("profiled {requests} chat requests ({}): {} instructions", if enforcing { "enforcement" } else { "metering" }, gw.instructions());
}

/// The request headers [`measure`] sends, for a body of `content_length` bytes.
fn chat_request_headers(content_length: &str) -> [(&'static str, &str); 6] {
    [
        (":method", "POST"),
        (":path", "/v1/chat/completions"),
        (":authority", "llm.internal"),
        ("content-type", "application/json"),
        ("content-length", content_length),
        ("x-auth-team", "platform"),
    ]
}

/// `BENCH_PROFILE_CASE=content`: one chat stream whose response is `requests` × 39 content
/// events, each its own body chunk (the events a stream repeats, recognised by their template:
/// the response phase's steady state, without the request and settlement around it).
fn profile_content_events(chat: &Workload, requests: u64) {
    let gw = Gateway::new(CONFIG);
    gw.start();
    measure(&gw, chat);
    let content_length = chat.request.len().to_string();
    let headers = chat_request_headers(&content_length);
    let mut s = gw.stream();
    s.send_request_chunked(&headers, &chat.request, &[16 * 1024]);
    s.response_headers(&chat.response_headers, false);
    let content = chat.response.get(1..40).expect("the chat workload has 40 content events, the first learns the template");
    let before = s.instructions();
    for _ in 0..requests {
        for chunk in content {
            s.response_body(chunk, false);
        }
    }
    let events = requests * content.len() as u64;
    println!("profiled {events} content events: {} instructions each", (s.instructions() - before) / events);
}

/// `BENCH_PROFILE_CASE=first`: chat streams that end after their first event (`[DONE]` next):
/// the first event of a stream is skimmed and teaches the template; this profiles that callback
/// among the request and settlement around it. `ends`: the first event, the finish event and
/// the usage chunk (the response's fixed costs), then `[DONE]`.
fn profile_short_streams(chat: &Workload, requests: u64, events: &[usize], what: &str) {
    let gw = Gateway::new(CONFIG);
    gw.start();
    let short = Workload {
        name: chat.name,
        request: chat.request.clone(),
        response_headers: chat.response_headers.clone(),
        response: events.iter().chain([&(chat.response.len() - 1)]).map(|&i| chat.response[i].clone()).collect(),
    };
    for _ in 0..requests {
        measure(&gw, &short);
    }
    println!("profiled {requests} {what}: {} instructions", gw.instructions());
}

/// `BENCH_CALLBACKS=1`: the chat workload's response phase per host callback in the steady
/// state (the request as [`measure`] sends it), to see where it goes (`BENCH_CALLBACKS=enforcement`:
/// with enforcement, one request a second: the shared path). The last body callback is
/// followed by the stream's log, done and delete, counted apart.
fn print_response_callbacks(gw: &Gateway) {
    let chat = workloads().into_iter().next().expect("the chat workload");
    measure(gw, &chat);
    measure(gw, &chat);
    let content_length = chat.request.len().to_string();
    let headers = chat_request_headers(&content_length);
    let mut s = gw.stream();
    s.send_request_chunked(&headers, &chat.request, &[16 * 1024]);
    let mut at = s.instructions();
    let mut step = |s: &tollgate_host_tests::Stream, what: String| {
        println!("| {what} | {} |", s.instructions() - at);
        at = s.instructions();
    };
    println!("| {}: response phase by host callback | instructions |", chat.name);
    println!("|---|---:|");
    s.response_headers(&chat.response_headers, false);
    step(&s, "response headers".into());
    let last = chat.response.len() - 1;
    for (i, chunk) in chat.response.iter().enumerate() {
        s.response_body(chunk, i == last);
        let what = String::from_utf8_lossy(chunk.get(..chunk.len().min(40)).unwrap_or_default()).trim_end().replace('|', "\\|");
        step(&s, format!("body chunk {i}, {} bytes (`{what}`…){}", chunk.len(), if i == last { ", then log, done, delete" } else { "" }));
    }
}

/// Enforcement under steady traffic (issue 15 §3): two requests or more a tick on the worker, so
/// it holds lease pools (`core::enforce::pool`) and a request reserves and settles in its memory.
/// The chat workload's instructions and host calls per request, beside the table above's
/// enforcement column (one request a second: the shared path).
fn print_pooled() {
    let chat = workloads().into_iter().next().expect("the chat workload");
    let gw = enforcing_gateway();
    for _ in 0..5 {
        for _ in 0..4 {
            measure(&gw, &chat);
        }
        gw.advance(std::time::Duration::from_millis(20));
    }
    // The first request after a tick also counts the worker's outbox into the process-wide
    // unacknowledged count (one shared-data read and write, usage delivery's, not the lease
    // book's); the ones after it do not.
    let first = gw.host_calls();
    measure(&gw, &chat);
    let after_first = gw.host_calls();
    let first_shared: u64 =
        after_first.iter().filter(|(name, _)| name.contains("shared_data")).map(|(name, n)| n - first.get(name).copied().unwrap_or(0)).sum();
    let before = gw.host_calls();
    let (req, resp) = measure(&gw, &chat);
    let after = gw.host_calls();
    let calls: BTreeMap<&str, u64> = after.into_iter().map(|(name, n)| (name, n - before.get(name).copied().unwrap_or(0))).filter(|(_, n)| *n > 0).collect();
    println!();
    println!("| {}, with enforcement under steady traffic (worker-local lease pools) | request phase | response phase | total |", chat.name);
    println!("|---|---:|---:|---:|");
    println!("| instructions | {req} | {resp} | {} |", req + resp);
    let shared: u64 = calls.iter().filter(|(name, _)| name.contains("shared_data")).map(|(_, n)| n).sum();
    println!("| host calls (shared data: {shared}; the first request after a tick: {first_shared}) | | | {} |", calls.values().sum::<u64>());
}

/// The host calls one request makes, by kind (issue 15 §3: in V8 each crossing costs as much as
/// scanning hundreds of bytes). Steady state; enforcement's root ticks are not per request.
fn print_host_calls() {
    let chat = workloads().into_iter().next().expect("the chat workload");
    let response_bytes: usize = chat.response.iter().map(Vec::len).sum();
    let metering = started(CONFIG);
    measure(&metering, &chat);
    measure(&metering, &chat);
    let (_, resp) = measure(&metering, &chat);
    println!();
    println!("response phase per SSE byte ({}: {response_bytes} bytes): {:.1} instructions", chat.name, resp as f64 / response_bytes as f64);
    let calls = |gw: &Gateway| {
        for _ in 0..3 {
            measure(gw, &chat);
            gw.advance(std::time::Duration::from_millis(1000));
        }
        let before = gw.host_calls();
        measure(gw, &chat);
        let after = gw.host_calls();
        after.into_iter().map(|(name, n)| (name, n - before.get(name).copied().unwrap_or(0))).filter(|(_, n)| *n > 0).collect::<BTreeMap<_, _>>()
    };
    let metering = calls(&metering);
    let enforcing = calls(&enforcing_gateway());
    let names: BTreeSet<&str> = metering.keys().chain(enforcing.keys()).copied().collect();
    let mut rows: Vec<(&str, &str)> = names.into_iter().map(|name| (call_kind(name), name)).collect();
    rows.sort();
    println!();
    println!("| host calls per request ({}), by kind | metering | with enforcement |", chat.name);
    println!("|---|---:|---:|");
    for (kind, name) in rows {
        let n = |m: &BTreeMap<&str, u64>| m.get(name).copied().unwrap_or(0);
        println!("| {kind}: `{name}` | {} | {} |", n(&metering), n(&enforcing));
    }
    let total = |m: &BTreeMap<&str, u64>| m.values().sum::<u64>();
    println!("| **total** | {} | {} |", total(&metering), total(&enforcing));
}

fn started(config: &str) -> Gateway {
    let gw = Gateway::new(config);
    gw.start();
    gw
}

/// The issue's kinds of host call, by proxy-wasm import name.
fn call_kind(name: &str) -> &'static str {
    match name {
        n if n.contains("header_map") => "headers",
        n if n.contains("buffer") => "body",
        n if n.contains("shared_data") => "shared data",
        n if n.contains("queue") => "queue",
        n if n.contains("time") => "clock",
        n if n.contains("metric") => "metrics",
        n if n.contains("property") => "properties",
        n if n.contains("log") => "log",
        n if n.contains("http_call") || n.contains("dispatch") => "calls",
        _ => "other",
    }
}

/// What delivering usage costs the root context (issue 15 §2): `n` chat requests with enforcement
/// end between two ticks, then virtual time moves on in 1 ms steps (the counter answering each
/// post 1 ms later) until every record is acknowledged and the flush interval has passed. Each
/// step runs at most one root callback (a tick or an acknowledgement), so the largest step is the
/// longest a request queued behind the root could wait. Returns, beyond what the same span costs
/// with no record waiting: the largest callback, the largest after the first tick (that tick also
/// writes the `n` settlements to the lease book), how many callbacks did more than 1,000
/// instructions of work, and the root's instructions per record.
fn measure_delivery(w: &Workload, n: usize) -> (u64, u64, usize, u64) {
    let run = |n: usize| {
        let gw = enforcing_gateway_answering(serde_json::Value::Null, std::time::Duration::from_millis(1));
        for _ in 0..3 {
            measure(&gw, w);
            gw.advance(std::time::Duration::from_millis(1500));
        }
        // Start right after a tick, so every run sees the same tick phase.
        gw.advance(std::time::Duration::from_millis(20 - gw.now_ms() % 20));
        for _ in 0..n {
            measure(&gw, w);
        }
        let mut steps = Vec::new();
        for _ in 0..1_500 {
            let before = gw.instructions();
            gw.advance(std::time::Duration::from_millis(1));
            steps.push(gw.instructions() - before);
        }
        assert!(gw.pending_calls().is_empty(), "the counter answered everything");
        assert_eq!(gw.queue_len("tollgate.usage"), 0, "every record was delivered");
        steps
    };
    let idle = run(0);
    let busy = run(n);
    let extra: Vec<u64> = busy.iter().zip(&idle).map(|(b, i)| b.saturating_sub(*i)).collect();
    let first = extra.iter().position(|e| *e > 1_000).unwrap_or(0);
    let largest = extra.iter().copied().max().unwrap_or(0);
    let after_first = extra.iter().skip(first + 1).copied().max().unwrap_or(0);
    let working = extra.iter().filter(|e| **e > 1_000).count();
    let total: u64 = extra.iter().sum();
    (largest, after_first, working, total / n.max(1) as u64)
}

/// Rows for [`measure_delivery`]: a tick's worth at 1,600 req/s (32 records), a full default
/// batch, and backlogs of several batches.
fn print_delivery() {
    let chat = workloads().into_iter().next().expect("the chat workload");
    println!();
    println!("| enforcement: usage delivery on the root ({}), N records settled between two ticks | largest root callback | largest after the first tick (posts, acknowledgements) | root callbacks doing > 1 k instructions | root instructions per record (ticks + acks) |", chat.name);
    println!("|---|---:|---:|---:|---:|");
    for n in [32, 500, 1_600, 5_000] {
        let (largest, after_first, callbacks, per_record) = measure_delivery(&chat, n);
        println!("| N = {n} | {largest} | {after_first} | {callbacks} | {per_record} |");
    }
}

/// Per-VM memory under a long run (issue 15 §5): the chat workload with enforcement, its usage
/// delivered on the tick every 1,000 requests, the VM's linear memory read at checkpoints. A wasm
/// memory never shrinks, so a flat line means the heap found its steady size; growth would be a
/// leak. `BENCH_MEMORY_REQUESTS` (default 1,000,000) bounds the run.
fn memory_after_many_requests() {
    let total: u64 = std::env::var("BENCH_MEMORY_REQUESTS").ok().and_then(|v| v.parse().ok()).unwrap_or(1_000_000);
    let w = workloads().into_iter().next().expect("the chat workload");
    let gw = enforcing_gateway();
    let mut marks = Vec::new();
    let mut next_mark = 1_000u64;
    for n in 1..=total {
        measure(&gw, &w);
        if n % 1_000 == 0 {
            gw.advance(std::time::Duration::from_millis(1000));
        }
        if n == next_mark || n == total {
            marks.push((n, gw.memory_bytes().iter().sum::<usize>()));
            next_mark *= 10;
        }
    }
    let row: Vec<String> = marks.iter().map(|(n, bytes)| format!("{n}: {} KiB", bytes / 1024)).collect();
    println!("| per-VM linear memory, chat workload with enforcement, after N requests | {} | | | |", row.join(", "));
}
