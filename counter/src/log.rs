//! Structured logs: one JSON object per line on stderr (`ts`, `level`, `msg`, then fields).
//!
//! A few lines instead of `tracing` + `tracing-subscriber`: the service logs little (start, stop,
//! rejected requests, store failures) and the CI compiles every dependency. Never pass a token here.

use serde_json::{Map, Value};

fn emit(level: &str, msg: &str, fields: Value) {
    let mut line = Map::new();
    line.insert("ts".into(), Value::String(crate::window::format_time_ms(crate::clock::Clock::now_ms(&crate::clock::SystemClock))));
    line.insert("level".into(), Value::String(level.into()));
    line.insert("msg".into(), Value::String(msg.into()));
    if let Value::Object(fields) = fields {
        line.extend(fields);
    }
    // eprintln!, not a raw write: the test harness captures it per test.
    eprintln!("{}", Value::Object(line));
}

pub fn info(msg: &str, fields: Value) {
    emit("info", msg, fields)
}

pub fn warn(msg: &str, fields: Value) {
    emit("warn", msg, fields)
}

pub fn error(msg: &str, fields: Value) {
    emit("error", msg, fields)
}
