//! The case table every host of the component runs (`component/cases.json`): the native policy
//! (`tests/cases.rs`), wasmtime (`host-tests/tests/component.rs`) and Node through jco
//! (`component/node/cases.mjs`). Each host turns its result into an *answer* (plain JSON, the
//! shape below) and checks it against the case's `expect` with the same rule:
//! every key of `expect` must be in the answer with an equal value, except `<key>_contains`,
//! a list of substrings the answer's string `<key>` must contain. So one file states the answers,
//! and every host proves it gets them.
//!
//! Answers: a decision is `{"kind": "pass-through"}`, `{"kind": "forward", "dialect", "endpoint",
//! "principal": {set fields}, "requested_model", "routed_model", "rule", "set_headers": [[name,
//! value]], "path", "body" (text or null), "streaming", "max_output_tokens"}` or `{"kind": "deny",
//! "status", "code", "message", "param", "body"}`; a meter's `{"usage": {"input", "output",
//! "cache_read", "cache_write", "reasoning"} | null, "model", "completed", "content_bytes"}`; a
//! price `{"ok": {"micros", "known_price", "long_context"}}` or `{"error": "unknown-model",
//! "message"}`; a configuration `{"ok": true}` or `{"error": {"field", "problem"}}`.

use crate::policy::{ConfigError, Cost, Decision, Metered};
use serde_json::{json, Map, Value};
use tollgate_core::protocol::Principal;

/// Checks `answer` against `expect` (see the module doc); the error names the key.
pub fn check(expect: &Value, answer: &Value) -> Result<(), String> {
    let Some(expect) = expect.as_object() else { return Err("`expect` must be an object".to_owned()) };
    for (key, want) in expect {
        if let Some(field) = key.strip_suffix("_contains") {
            let got = answer.get(field).and_then(Value::as_str).unwrap_or_default();
            for part in want.as_array().into_iter().flatten() {
                let part = part.as_str().unwrap_or_default();
                if !got.contains(part) {
                    return Err(format!("`{field}` should contain {part:?}, got {got:?}"));
                }
            }
        } else {
            let got = answer.get(key).unwrap_or(&Value::Null);
            if let (Some(want_obj), Some(_)) = (want.as_object(), got.as_object()) {
                check(&Value::Object(want_obj.clone()), got).map_err(|e| format!("{key}.{e}"))?;
            } else if got != want {
                return Err(format!("`{key}` should be {want}, got {got}"));
            }
        }
    }
    Ok(())
}

pub fn principal(p: &Principal) -> Value {
    let mut m = Map::new();
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

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

pub fn decision(d: &Decision) -> Value {
    match d {
        Decision::PassThrough => json!({"kind": "pass-through"}),
        Decision::Deny(d) => json!({
            "kind": "deny", "status": d.status, "code": d.code, "message": d.message, "param": d.param,
            "body": text(&d.body),
        }),
        Decision::Forward(r) => json!({
            "kind": "forward", "dialect": r.dialect.as_str(), "endpoint": r.endpoint,
            "principal": principal(&r.principal), "requested_model": r.requested_model,
            "routed_model": r.routed_model, "rule": r.rule,
            "set_headers": r.set_headers.iter().map(|(n, v)| json!([n, v])).collect::<Vec<_>>(),
            "path": r.path, "body": r.body.as_deref().map(text), "streaming": r.stream,
            "max_output_tokens": r.max_output_tokens,
        }),
    }
}

pub fn metered(m: &Metered) -> Value {
    json!({
        "usage": m.usage.map(|t| json!({"input": t.input, "output": t.output, "cache_read": t.cache_read,
                                        "cache_write": t.cache_write, "reasoning": t.reasoning})),
        "model": m.model, "completed": m.completed, "content_bytes": m.content_bytes,
    })
}

pub fn price(p: &Result<Cost, String>) -> Value {
    match p {
        Ok(c) => json!({"ok": {"micros": c.micros, "known_price": c.known_price, "long_context": c.long_context}}),
        Err(message) => json!({"error": "unknown-model", "message": message}),
    }
}

pub fn config(c: &Result<(), ConfigError>) -> Value {
    match c {
        Ok(()) => json!({"ok": true}),
        Err(e) => json!({"error": {"field": e.field, "problem": e.problem}}),
    }
}

/// A case's request body: `body` (text) or `body_bytes` (a list of byte values,
/// for bodies that are not UTF-8).
pub fn body(request: &Value) -> Vec<u8> {
    if let Some(bytes) = request.get("body_bytes").and_then(Value::as_array) {
        return bytes.iter().filter_map(Value::as_u64).filter_map(|b| u8::try_from(b).ok()).collect();
    }
    request.get("body").and_then(Value::as_str).unwrap_or_default().as_bytes().to_vec()
}

/// A case's configuration document: `config_text` as written, else the named config from `configs`.
pub fn config_text(table: &Value, case: &Value) -> String {
    if let Some(text) = case.get("config_text").and_then(Value::as_str) {
        return text.to_owned();
    }
    let name = case.get("config").and_then(Value::as_str).unwrap_or("main");
    table.get("configs").and_then(|c| c.get(name)).map(Value::to_string).unwrap_or_default()
}
