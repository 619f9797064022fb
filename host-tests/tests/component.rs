//! Tollgate's policy component (`tollgate_component.wasm`, built for wasm32-wasip2 by `make
//! component`) under wasmtime's component model, as a gateway that hosts components would run it:
//! the shared case table (`component/cases.json`) gives the answers `tollgate-core` gives natively
//! (`cargo test -p tollgate-component`), checked by the same rule (`tollgate_component::cases`).
//! Every failure is a typed value: any trap fails the test, including on garbage input.
//!
//! The component imports the WASI interfaces Rust's std links (stdio, environment, exit, random
//! seed); none is called on these paths, so they are defined as traps (the insecure seed, which a
//! hash map may ask for, answers a constant).

use serde_json::{json, Value};
use std::path::PathBuf;
use tollgate_component::cases;
use wasmtime::component::{Component, Linker, ResourceAny};
use wasmtime::{Config, Engine, Store};

wasmtime::component::bindgen!({ world: "policy", path: "../wit" });

use exports::tollgate::policy::api as wit;

fn component_path() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"));
    target.join("wasm32-wasip2/release/tollgate_component.wasm")
}

fn table() -> Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../component/cases.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

struct Host {
    store: Store<()>,
    policy: Policy,
}

impl Host {
    fn start() -> Host {
        let path = component_path();
        assert!(path.exists(), "{} is missing: run `make component`", path.display());
        let engine = Engine::new(&Config::new()).unwrap();
        let component = Component::from_file(&engine, &path).unwrap();
        let mut linker: Linker<()> = Linker::new(&engine);
        linker
            .instance("wasi:random/insecure-seed@0.2.6")
            .unwrap()
            .func_wrap("insecure-seed", |_, (): ()| Ok(((0x7011_6a7e_u64, 0x5eed_u64),)))
            .unwrap();
        linker.define_unknown_imports_as_traps(&component).unwrap();
        let mut store = Store::new(&engine, ());
        let policy = Policy::instantiate(&mut store, &component, &linker).unwrap();
        Host { store, policy }
    }

    fn api(&self) -> &wit::Guest {
        self.policy.tollgate_policy_api()
    }

    fn engine(&mut self, config: &str) -> Result<ResourceAny, wit::ConfigError> {
        let api = self.policy.tollgate_policy_api();
        api.engine().call_create(&mut self.store, config).expect("create never traps")
    }

    fn engine_for(&mut self, table: &Value, case: &Value) -> ResourceAny {
        self.engine(&cases::config_text(table, case)).expect("the case's configuration compiles")
    }
}

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

fn run(kind: &str, mut answer: impl FnMut(&mut Host, &Value, &Value) -> Value) {
    let t = table();
    let mut host = Host::start();
    let list = t[kind].as_array().unwrap();
    assert!(list.len() >= 3, "too few {kind} cases");
    let mut failures = Vec::new();
    for case in list {
        let got = answer(&mut host, &t, case);
        if let Err(e) = cases::check(&case["expect"], &got) {
            failures.push(format!("{kind} `{}`: {e}\n  answer: {got}", case["name"]));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn configurations_compile_or_name_the_field_at_fault() {
    run("config", |host, t, case| match host.engine(&cases::config_text(t, case)) {
        Ok(_) => json!({"ok": true}),
        Err(e) => json!({"error": {"field": e.field, "problem": e.problem}}),
    });
}

#[test]
fn requests_are_recognised_routed_or_refused_as_core_does() {
    run("recognise", |host, t, case| {
        let engine = host.engine_for(t, case);
        let req = request(&case["request"]);
        let api = host.policy.tollgate_policy_api();
        let d = api.engine().call_recognise(&mut host.store, engine, &req).expect("recognise never traps");
        decision(&d)
    });
}

#[test]
fn responses_are_metered_as_core_does_whatever_the_chunking() {
    run("meter", |host, t, case| {
        let engine = host.engine_for(t, case);
        let format = if case["format"] == "sse" { wit::ResponseFormat::Sse } else { wit::ResponseFormat::Json };
        let api = host.policy.tollgate_policy_api();
        let Some(meter) = api.engine().call_meter(&mut host.store, engine, case["path"].as_str().unwrap(), format).unwrap() else {
            return Value::Null;
        };
        for chunk in case["chunks"].as_array().unwrap() {
            api.meter().call_feed(&mut host.store, meter, chunk.as_str().unwrap().as_bytes()).expect("feed never traps");
        }
        let m = api.meter().call_finish(&mut host.store, meter).expect("finish never traps");
        json!({
            "usage": m.usage.map(|u| json!({"input": u.input, "output": u.output, "cache_read": u.cache_read,
                                            "cache_write": u.cache_write, "reasoning": u.reasoning})),
            "model": m.model, "completed": m.completed, "content_bytes": m.content_bytes,
        })
    });
}

#[test]
fn usage_is_priced_as_core_does() {
    run("price", |host, t, case| {
        let engine = host.engine_for(t, case);
        let u = &case["usage"];
        let n = |k: &str| u[k].as_u64().unwrap_or(0);
        let usage = wit::Usage { input: n("input"), output: n("output"), cache_read: n("cache_read"), cache_write: n("cache_write"), reasoning: n("reasoning") };
        let api = host.policy.tollgate_policy_api();
        match api.engine().call_price(&mut host.store, engine, case["model"].as_str().unwrap(), usage).expect("price never traps") {
            Ok(c) => json!({"ok": {"micros": c.micros, "known_price": c.known_price, "long_context": c.long_context}}),
            Err(wit::PriceError::UnknownModel(message)) => json!({"error": "unknown-model", "message": message}),
        }
    });
}

/// Bytes from a fixed-seed generator (xorshift): the same garbage on every run.
fn garbage(seed: &mut u64, len: usize) -> Vec<u8> {
    (0..len)
        .map(|_| {
            *seed ^= *seed << 13;
            *seed ^= *seed >> 7;
            *seed ^= *seed << 17;
            (*seed >> 24) as u8
        })
        .collect()
}

#[test]
fn garbage_and_cut_input_gets_typed_answers_never_a_trap() {
    let t = table();
    let mut host = Host::start();
    let engine = host.engine(&t["configs"]["main"].to_string()).unwrap();
    let api = host.api().clone();
    let valid = br#"{"model": "case-chat", "stream": true, "messages": [{"role": "user", "content": "hi \u00e9"}]}"#;
    let mut seed = 0x2545_f491_4f6c_dd1d_u64;
    let mut denied = 0;
    for i in 0..300 {
        // Every prefix of a valid body, then random bytes, then a valid body with a flipped byte.
        let body = match i {
            0..=99 => valid[..valid.len() * i / 100].to_vec(),
            100..=199 => garbage(&mut seed, i - 100),
            _ => {
                let mut b = valid.to_vec();
                let at = (i * 7) % b.len();
                b[at] ^= garbage(&mut seed, 1)[0] | 1;
                b
            }
        };
        let path = ["/v1/chat/completions", "/v1/messages", "/v1beta/models/x:generateContent", "/openai/deployments/d/chat/completions"][i % 4];
        let req = wit::HttpRequest { method: "POST".into(), path: path.into(), headers: vec![], body: body.clone() };
        let d = api.engine().call_recognise(&mut host.store, engine, &req).unwrap_or_else(|e| panic!("trap on body {i}: {e}"));
        if let wit::Decision::Deny(d) = &d {
            assert!(matches!(d.status, 400 | 403 | 413), "{i}: {}", d.status);
            assert!(serde_json::from_slice::<Value>(&d.body).is_ok(), "{i}: the refusal is JSON in the dialect's shape");
            denied += 1;
        }
        let meter = api.engine().call_meter(&mut host.store, engine, path, if i % 2 == 0 { wit::ResponseFormat::Sse } else { wit::ResponseFormat::Json }).unwrap().unwrap();
        for chunk in body.chunks(1 + i % 9) {
            api.meter().call_feed(&mut host.store, meter, chunk).unwrap_or_else(|e| panic!("trap metering {i}: {e}"));
        }
        api.meter().call_finish(&mut host.store, meter).unwrap_or_else(|e| panic!("trap finishing {i}: {e}"));
        meter.resource_drop(&mut host.store).unwrap();
    }
    assert!(denied >= 200, "most of this input is refused with a typed answer ({denied})");
}
