//! The shared case table (`component/cases.json`) on the policy natively: `tollgate-core` gives
//! the answers the file states. The wasmtime and Node hosts run the same file on the component.

use serde_json::Value;
use tollgate_component::cases;
use tollgate_component::policy::{Policy, Request};
use tollgate_core::protocol::Tokens;
use tollgate_core::usage::ResponseFormat;

fn table() -> Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/cases.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn cases<'t>(table: &'t Value, kind: &str) -> &'t Vec<Value> {
    table[kind].as_array().unwrap_or_else(|| panic!("cases.json has no `{kind}` list"))
}

fn run(table: &Value, kind: &str, answer: impl Fn(&Value) -> Value) {
    let mut failures = Vec::new();
    for case in cases(table, kind) {
        let got = answer(case);
        if let Err(e) = cases::check(&case["expect"], &got) {
            failures.push(format!("{kind} `{}`: {e}\n  answer: {got}", case["name"]));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert!(cases(table, kind).len() >= 3, "too few {kind} cases");
}

fn policy(table: &Value, case: &Value) -> Policy {
    Policy::new(&cases::config_text(table, case)).unwrap()
}

#[test]
fn configurations_compile_or_name_the_field_at_fault() {
    let t = table();
    run(&t, "config", |case| cases::config(&Policy::new(&cases::config_text(&t, case)).map(|_| ())));
}

#[test]
fn requests_are_recognised_routed_or_refused_as_the_filter_does() {
    let t = table();
    run(&t, "recognise", |case| {
        let r = &case["request"];
        let request = Request {
            method: r["method"].as_str().unwrap_or("POST").to_owned(),
            path: r["path"].as_str().unwrap().to_owned(),
            headers: r["headers"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|h| (h[0].as_str().unwrap().to_owned(), h[1].as_str().unwrap().to_owned()))
                .collect(),
            body: cases::body(r),
        };
        cases::decision(&policy(&t, case).recognise(&request))
    });
}

#[test]
fn responses_are_metered_whatever_the_chunking() {
    let t = table();
    run(&t, "meter", |case| {
        let format = if case["format"] == "sse" { ResponseFormat::Sse } else { ResponseFormat::Json };
        let Some(mut meter) = policy(&t, case).meter(case["path"].as_str().unwrap(), format) else {
            return Value::Null;
        };
        for chunk in case["chunks"].as_array().unwrap() {
            meter.feed(chunk.as_str().unwrap().as_bytes());
        }
        cases::metered(&meter.finish())
    });
}

#[test]
fn usage_is_priced_in_integer_micro_dollars() {
    let t = table();
    run(&t, "price", |case| {
        let u = &case["usage"];
        let n = |k: &str| u[k].as_u64().unwrap_or(0);
        let tokens = Tokens { input: n("input"), output: n("output"), cache_read: n("cache_read"), cache_write: n("cache_write"), reasoning: n("reasoning"), ..Tokens::default() };
        cases::price(&policy(&t, case).price(case["model"].as_str().unwrap(), &tokens))
    });
}
