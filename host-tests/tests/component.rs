//! Tollgate's policy component (`tollgate_component.wasm`, built for wasm32-wasip2 by `make
//! component`) under wasmtime's component model, as a Rust gateway that hosts components would run
//! it (docs/component.md, "Embedding in a Rust host"). The second host beside Node through jco
//! (`component/node/`), on the same case table (`component/cases.json`).
//!
//! Every case's answer is checked twice: against the case's `expect` with the table's own rule
//! (`tollgate_component::cases::check`, the rule `cases.mjs` copies), and against the whole answer
//! `tollgate-core` gives natively for the same input (`tollgate_component::policy`). Malformed and
//! garbage input (cut and corrupted bodies, random bytes and headers, cut configurations, garbage
//! upstream responses) must get the native answer as a typed value: a trap anywhere fails the test.
//!
//! WASI: the component imports only the WASI interfaces Rust's std links (stdio, environment, exit,
//! the insecure random seed). The seed is the one the policy calls (std's hash maps ask for it): it
//! answers a fixed value, another in each test. Every other import is defined as a trap, so a test
//! that passes has also proved that the policy calls no other WASI function.

use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use tollgate_component::cases;
use tollgate_component::policy as native;
use tollgate_core::protocol::Tokens;
use tollgate_core::usage::ResponseFormat;
use wasmtime::component::{Component, Linker, ResourceAny};
use wasmtime::{Config, Engine, Store};

wasmtime::component::bindgen!({ world: "policy", path: "../wit" });

use exports::tollgate::policy::api as wit;

/// Where the component is: `$TOLLGATE_COMPONENT`, else
/// `$CARGO_TARGET_DIR/wasm32-wasip2/release/tollgate_component.wasm`, else the workspace's `target/`.
fn component_path() -> PathBuf {
    if let Some(path) = std::env::var_os("TOLLGATE_COMPONENT") {
        return PathBuf::from(path);
    }
    let relative = Path::new("wasm32-wasip2").join("release").join("tollgate_component.wasm");
    if let Some(dir) = std::env::var_os("CARGO_TARGET_DIR") {
        let candidate = PathBuf::from(dir).join(&relative);
        if candidate.exists() {
            return candidate;
        }
    }
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join("target").join(relative)
}

/// The engine and the compiled component, once per process (compiling it takes seconds).
fn loaded() -> &'static (Engine, Component) {
    static LOADED: OnceLock<(Engine, Component)> = OnceLock::new();
    LOADED.get_or_init(|| {
        let path = component_path();
        let bytes = std::fs::read(&path).unwrap_or_else(|e| {
            panic!(
                "host-tests: cannot read the policy component at {}: {e}.\n\
                 Build it first with `make component` (or point TOLLGATE_COMPONENT at a built tollgate_component.wasm).",
                path.display()
            )
        });
        let engine = Engine::new(&Config::new()).unwrap_or_else(|e| panic!("host-tests: no wasmtime engine: {e}"));
        let component = Component::new(&engine, &bytes)
            .unwrap_or_else(|e| panic!("host-tests: {} is not a loadable component: {e}", path.display()));
        (engine, component)
    })
}

fn table() -> Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../component/cases.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// One instance of the component in its own store, and the calls of `wit/tollgate.wit` with a
/// trap turned into a test failure that says which call trapped.
struct Host {
    store: Store<()>,
    policy: Policy,
}

impl Host {
    /// An instance whose `wasi:random/insecure-seed` answers `seed` (std seeds its hash maps with
    /// it; every test uses another one, and the answers must not depend on it).
    fn start(seed: u64) -> Host {
        let (engine, component) = loaded();
        let mut linker: Linker<()> = Linker::new(engine);
        let ty = component.component_type();
        for (name, _) in ty.imports(engine).filter(|(name, _)| name.starts_with("wasi:random/insecure-seed@")) {
            linker
                .instance(name)
                .unwrap()
                .func_wrap("insecure-seed", move |_, (): ()| Ok(((seed, !seed),)))
                .unwrap();
        }
        linker.define_unknown_imports_as_traps(component).unwrap();
        let mut store = Store::new(engine, ());
        let policy = Policy::instantiate(&mut store, component, &linker)
            .unwrap_or_else(|e| panic!("host-tests: the policy component does not instantiate: {e:?}"));
        Host { store, policy }
    }

    fn api(&self) -> wit::Guest {
        self.policy.tollgate_policy_api().clone()
    }

    fn create(&mut self, config: &str) -> Result<ResourceAny, wit::ConfigError> {
        let api = self.api();
        api.engine().call_create(&mut self.store, config).unwrap_or_else(|e| panic!("engine.create trapped: {e:?}"))
    }

    fn recognise(&mut self, engine: ResourceAny, request: &wit::HttpRequest) -> wit::Decision {
        let api = self.api();
        api.engine()
            .call_recognise(&mut self.store, engine, request)
            .unwrap_or_else(|e| panic!("engine.recognise trapped on {} {}: {e:?}", request.method, request.path))
    }

    fn meter(&mut self, engine: ResourceAny, path: &str, format: wit::ResponseFormat) -> Option<ResourceAny> {
        let api = self.api();
        api.engine().call_meter(&mut self.store, engine, path, format).unwrap_or_else(|e| panic!("engine.meter trapped: {e:?}"))
    }

    fn feed(&mut self, meter: ResourceAny, chunk: &[u8]) {
        let api = self.api();
        api.meter().call_feed(&mut self.store, meter, chunk).unwrap_or_else(|e| panic!("meter.feed trapped: {e:?}"))
    }

    fn finish(&mut self, meter: ResourceAny) -> wit::Metered {
        let api = self.api();
        api.meter().call_finish(&mut self.store, meter).unwrap_or_else(|e| panic!("meter.finish trapped: {e:?}"))
    }

    fn price(&mut self, engine: ResourceAny, model: &str, usage: wit::Usage) -> Result<wit::Cost, wit::PriceError> {
        let api = self.api();
        api.engine().call_price(&mut self.store, engine, model, usage).unwrap_or_else(|e| panic!("engine.price trapped: {e:?}"))
    }

    fn release(&mut self, resource: ResourceAny) {
        resource.resource_drop(&mut self.store).unwrap_or_else(|e| panic!("dropping a resource trapped: {e:?}"))
    }
}

// The component's answers in the table's shape (`tollgate_component::cases`, module doc).

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn dialect(d: wit::Dialect) -> &'static str {
    match d {
        wit::Dialect::Openai => "openai",
        wit::Dialect::AzureOpenai => "azure_openai",
        wit::Dialect::Anthropic => "anthropic",
        wit::Dialect::Gemini => "gemini",
    }
}

fn principal(p: &wit::Principal) -> Value {
    let mut m = serde_json::Map::new();
    for (k, v) in [
        ("org", &p.org),
        ("cost_center", &p.cost_center),
        ("team", &p.team),
        ("user", &p.user),
        ("key_id", &p.key_id),
        ("use_case", &p.use_case),
        ("tier", &p.tier),
        ("task", &p.task),
    ] {
        if let Some(v) = v {
            m.insert(k.to_owned(), json!(v));
        }
    }
    Value::Object(m)
}

fn decision(d: &wit::Decision) -> Value {
    match d {
        wit::Decision::PassThrough => json!({"kind": "pass-through"}),
        wit::Decision::Deny(d) => json!({
            "kind": "deny", "status": d.status, "code": d.code, "message": d.message, "param": d.param,
            "body": text(&d.body),
        }),
        wit::Decision::Forward(r) => json!({
            "kind": "forward", "dialect": dialect(r.dialect), "endpoint": r.endpoint,
            "principal": principal(&r.principal), "requested_model": r.requested_model,
            "routed_model": r.routed_model, "rule": r.rule,
            "set_headers": r.set_headers.iter().map(|h| json!([h.name, h.value])).collect::<Vec<_>>(),
            "path": r.path, "body": r.body.as_deref().map(text), "streaming": r.streaming,
            "max_output_tokens": r.max_output_tokens,
        }),
    }
}

fn metered(m: &wit::Metered) -> Value {
    json!({
        "usage": m.usage.map(|u| json!({"input": u.input, "output": u.output, "cache_read": u.cache_read,
                                        "cache_write": u.cache_write, "reasoning": u.reasoning})),
        "model": m.model, "completed": m.completed, "content_bytes": m.content_bytes,
    })
}

fn cost(c: &Result<wit::Cost, wit::PriceError>) -> Value {
    match c {
        Ok(c) => json!({"ok": {"micros": c.micros, "known_price": c.known_price, "long_context": c.long_context}}),
        Err(wit::PriceError::UnknownModel(message)) => json!({"error": "unknown-model", "message": message}),
    }
}

fn config_error(e: &wit::ConfigError) -> Value {
    json!({"error": {"field": e.field, "problem": e.problem}})
}

// The same inputs, natively (`tollgate_component::policy` over `tollgate-core`).

fn native_policy(config: &str) -> native::Policy {
    native::Policy::new(config).unwrap_or_else(|e| panic!("the configuration compiles natively: {e:?}"))
}

fn native_request(r: &wit::HttpRequest) -> native::Request {
    native::Request {
        method: r.method.clone(),
        path: r.path.clone(),
        headers: r.headers.iter().map(|h| (h.name.clone(), h.value.clone())).collect(),
        body: r.body.clone(),
    }
}

fn native_format(f: wit::ResponseFormat) -> ResponseFormat {
    match f {
        wit::ResponseFormat::Json => ResponseFormat::Json,
        wit::ResponseFormat::Sse => ResponseFormat::Sse,
    }
}

/// A response metered by the component and natively, chunk by chunk; both answers.
fn meter_both(host: &mut Host, engine: ResourceAny, policy: &native::Policy, path: &str, format: wit::ResponseFormat, chunks: &[&[u8]]) -> (Value, Value) {
    let native = match policy.meter(path, native_format(format)) {
        Some(mut meter) => {
            for chunk in chunks {
                meter.feed(chunk);
            }
            cases::metered(&meter.finish())
        }
        None => Value::Null,
    };
    let Some(meter) = host.meter(engine, path, format) else { return (Value::Null, native) };
    for chunk in chunks {
        host.feed(meter, chunk);
    }
    let first = metered(&host.finish(meter));
    // `finish` may be called again, with the same answer; bytes fed after it change nothing.
    host.feed(meter, br#"{"usage": {"prompt_tokens": 999}}"#);
    let again = metered(&host.finish(meter));
    assert_eq!(first, again, "meter.finish answers the same when called again");
    host.release(meter);
    (first, native)
}

fn request(r: &Value) -> wit::HttpRequest {
    wit::HttpRequest {
        method: r["method"].as_str().unwrap_or("POST").to_owned(),
        path: r["path"].as_str().unwrap().to_owned(),
        headers: r["headers"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|h| wit::Header { name: h[0].as_str().unwrap().to_owned(), value: h[1].as_str().unwrap().to_owned() })
            .collect(),
        body: cases::body(r),
    }
}

/// Runs every case of `kind`: `answer` gives the component's answer and the native one; the first
/// must meet the case's `expect` and equal the second. Returns how many cases ran.
fn run(kind: &str, mut answer: impl FnMut(&mut Host, &Value, &Value) -> (Value, Value)) -> usize {
    let t = table();
    let mut host = Host::start(kind.bytes().fold(0x5eed, |h, b| h.wrapping_mul(31) ^ u64::from(b)));
    let list = t[kind].as_array().unwrap_or_else(|| panic!("cases.json has no `{kind}` list"));
    assert!(list.len() >= 3, "too few {kind} cases");
    let mut failures = Vec::new();
    for case in list {
        let (got, native) = answer(&mut host, &t, case);
        if let Err(e) = cases::check(&case["expect"], &got) {
            failures.push(format!("{kind} `{}`: {e}\n  answer: {got}", case["name"]));
        } else if got != native {
            failures.push(format!("{kind} `{}`: the component and core differ\n  component: {got}\n  core:      {native}", case["name"]));
        }
    }
    assert!(failures.is_empty(), "{} of {} {kind} cases fail under wasmtime:\n{}", failures.len(), list.len(), failures.join("\n"));
    eprintln!("wasmtime: {} of {} {kind} cases give core's answers", list.len(), list.len());
    list.len()
}

#[test]
fn the_component_imports_nothing_but_wasi() {
    let (engine, component) = loaded();
    let ty = component.component_type();
    let imports: Vec<&str> = ty.imports(engine).map(|(name, _)| name).collect();
    let foreign: Vec<&&str> = imports.iter().filter(|name| !name.starts_with("wasi:")).collect();
    assert!(foreign.is_empty(), "the policy world imports nothing, yet the component imports {foreign:?}");
    let exports: Vec<&str> = ty.exports(engine).map(|(name, _)| name).collect();
    assert_eq!(exports, ["tollgate:policy/api@0.1.0"], "the component exports the policy's api and nothing else");
}

#[test]
fn configurations_compile_or_name_the_field_at_fault() {
    run("config", |host, t, case| {
        let text = cases::config_text(t, case);
        let got = match host.create(&text) {
            Ok(engine) => {
                host.release(engine);
                json!({"ok": true})
            }
            Err(e) => config_error(&e),
        };
        (got, cases::config(&native::Policy::new(&text).map(|_| ())))
    });
}

#[test]
fn requests_are_recognised_routed_or_refused_as_core_does() {
    run("recognise", |host, t, case| {
        let text = cases::config_text(t, case);
        let engine = host.create(&text).expect("the case's configuration compiles");
        let req = request(&case["request"]);
        let got = decision(&host.recognise(engine, &req));
        host.release(engine);
        (got, cases::decision(&native_policy(&text).recognise(&native_request(&req))))
    });
}

#[test]
fn responses_are_metered_as_core_does_whatever_the_chunking() {
    run("meter", |host, t, case| {
        let text = cases::config_text(t, case);
        let engine = host.create(&text).expect("the case's configuration compiles");
        let format = if case["format"] == "sse" { wit::ResponseFormat::Sse } else { wit::ResponseFormat::Json };
        let chunks: Vec<&[u8]> = case["chunks"].as_array().unwrap().iter().map(|c| c.as_str().unwrap().as_bytes()).collect();
        let answers = meter_both(host, engine, &native_policy(&text), case["path"].as_str().unwrap(), format, &chunks);
        host.release(engine);
        answers
    });
}

#[test]
fn usage_is_priced_as_core_does() {
    run("price", |host, t, case| {
        let text = cases::config_text(t, case);
        let engine = host.create(&text).expect("the case's configuration compiles");
        let u = &case["usage"];
        let n = |k: &str| u[k].as_u64().unwrap_or(0);
        let usage = wit::Usage { input: n("input"), output: n("output"), cache_read: n("cache_read"), cache_write: n("cache_write"), reasoning: n("reasoning") };
        let model = case["model"].as_str().unwrap();
        let got = cost(&host.price(engine, model, usage));
        host.release(engine);
        let tokens = Tokens { input: n("input"), output: n("output"), cache_read: n("cache_read"), cache_write: n("cache_write"), reasoning: n("reasoning"), ..Tokens::default() };
        (got, cases::price(&native_policy(&text).price(model, &tokens)))
    });
}

/// Bytes from a fixed-seed generator (xorshift64): the same garbage on every run.
struct Garbage(u64);

impl Garbage {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| (self.next() >> 24) as u8).collect()
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

#[test]
fn garbage_requests_get_core_s_typed_answer_never_a_trap() {
    let t = table();
    let config = t["configs"]["main"].to_string();
    let mut host = Host::start(0x5eef_0002);
    let engine = host.create(&config).unwrap();
    let policy = native_policy(&config);
    let valid = br#"{"model": "case-chat", "stream": true, "max_tokens": 5, "messages": [{"role": "user", "content": "hi \u00e9"}]}"#;
    let paths = [
        "/v1/chat/completions",
        "/llm/openai/v1/chat/completions",
        "/v1/messages",
        "/v1beta/models/case-gemini:generateContent?key=abc",
        "/v1beta/models/case-gemini:streamGenerateContent?alt=sse",
        "/openai/deployments/case-deployment/chat/completions?api-version=2024-10-21",
        "/v1/embeddings",
        "/v1/responses",
        "/healthz",
    ];
    let mut seed = Garbage(0x2545_f491_4f6c_dd1d);
    let (mut denied, mut forwarded) = (0, 0);
    for i in 0..400 {
        // Every cut of a valid body, random bytes, a valid body with one byte changed, a body past
        // the size limit; with now and then garbage in the headers.
        let body = match i {
            0..=99 => valid[..valid.len() * i / 100].to_vec(),
            100..=199 => seed.bytes(i - 100),
            200..=379 => {
                let mut b = valid.to_vec();
                let at = seed.below(b.len());
                b[at] ^= (seed.next() as u8) | 1;
                b
            }
            _ => [valid.as_slice(), &seed.bytes(1024)].concat(),
        };
        let mut headers = vec![wit::Header { name: "content-type".into(), value: "application/json".into() }];
        if i % 3 == 0 {
            let len = seed.below(40);
            let junk = text(&seed.bytes(len));
            headers.push(wit::Header { name: ["authorization", "x-api-key", "x-case-team", "x-goog-api-key"][i % 4].into(), value: format!("Bearer {junk}") });
        }
        let path = paths[i % paths.len()];
        let req = wit::HttpRequest { method: "POST".into(), path: path.into(), headers, body };
        let got = decision(&host.recognise(engine, &req));
        let want = cases::decision(&policy.recognise(&native_request(&req)));
        assert_eq!(got, want, "request {i} to {path}: the component and core differ");
        match got["kind"].as_str() {
            Some("deny") => {
                let status = got["status"].as_u64().unwrap();
                assert!(matches!(status, 400 | 403 | 413), "request {i}: status {status}");
                let body = got["body"].as_str().unwrap();
                assert!(serde_json::from_str::<Value>(body).is_ok(), "request {i}: the refusal is JSON in the dialect's shape: {body}");
                denied += 1;
            }
            Some("forward") => forwarded += 1,
            _ => {}
        }
        if (100..200).contains(&i) {
            assert_ne!(got["kind"], "forward", "random bytes {i} are never forwarded as a valid request");
        }
    }
    assert!(denied > 100 && forwarded > 10, "the garbage reaches both the refusal and the routing paths ({denied} refused, {forwarded} forwarded)");
    host.release(engine);
}

#[test]
fn garbage_responses_are_metered_as_core_does_never_a_trap() {
    let t = table();
    let config = t["configs"]["main"].to_string();
    let mut host = Host::start(0x5ef0_0003);
    let engine = host.create(&config).unwrap();
    let policy = native_policy(&config);
    let openai_sse = b"data: {\"choices\":[{\"delta\":{\"content\":\"hi\"}}]}\n\ndata: {\"choices\":[],\"usage\":{\"prompt_tokens\":9,\"completion_tokens\":2}}\n\ndata: [DONE]\n\n";
    let anthropic_json = br#"{"type":"message","model":"claude-haiku-4-5","content":[{"type":"text","text":"hi"}],"stop_reason":"end_turn","usage":{"input_tokens":7,"output_tokens":3}}"#;
    let mut seed = Garbage(0x9e37_79b9_7f4a_7c15);
    for i in 0..300 {
        let (path, format, valid): (&str, _, &[u8]) = if i % 2 == 0 {
            ("/v1/chat/completions", wit::ResponseFormat::Sse, openai_sse)
        } else {
            ("/v1/messages", wit::ResponseFormat::Json, anthropic_json)
        };
        let body = match i {
            0..=99 => valid[..valid.len() * i / 100].to_vec(),
            100..=199 => seed.bytes(i),
            _ => {
                let mut b = valid.to_vec();
                for _ in 0..1 + i % 3 {
                    let at = seed.below(b.len());
                    b[at] ^= (seed.next() as u8) | 1;
                }
                b
            }
        };
        let chunks: Vec<&[u8]> = body.chunks(1 + i % 13).collect();
        let (got, want) = meter_both(&mut host, engine, &policy, path, format, &chunks);
        assert_eq!(got, want, "response {i} on {path}: the component and core differ");
        assert!(got.is_object(), "response {i}: {path} is metered");
    }
    host.release(engine);
}

#[test]
fn cut_and_corrupted_configurations_get_core_s_typed_error_never_a_trap() {
    let t = table();
    let config = t["configs"]["main"].to_string();
    let mut host = Host::start(0x5ef1_0004);
    let mut seed = Garbage(0x0123_4567_89ab_cdef);
    let mut errors = 0;
    for i in 0..120 {
        let text = match i {
            0..=59 => config[..config.len() * i / 60].to_owned(),
            _ => {
                // A byte changed, kept as text (the interface takes a string).
                let mut b = config.clone().into_bytes();
                let at = seed.below(b.len());
                let replacement = b" {}[]\":,0aZ-_";
                b[at] = replacement[seed.below(replacement.len())];
                String::from_utf8_lossy(&b).into_owned()
            }
        };
        let got = match host.create(&text) {
            Ok(engine) => {
                host.release(engine);
                json!({"ok": true})
            }
            Err(e) => {
                errors += 1;
                config_error(&e)
            }
        };
        assert_eq!(got, cases::config(&native::Policy::new(&text).map(|_| ())), "configuration {i}: the component and core differ");
    }
    assert!(errors > 60, "cut configurations are refused with a typed error ({errors})");
}
