//! A wasmtime host for the proxy-wasm ABI 0.2.1 that runs the real `tollgate.wasm`, and the
//! scenario API the tests in `tests/` are written in.
//!
//! Envoy end-to-end tests cannot control time or make a dependency fail at an exact moment; this
//! host can. It plays Envoy's part faithfully — same status codes, same buffering, same order of
//! callbacks — so a scenario that passes here means the same thing in Envoy. The official
//! proxy-wasm test framework is unpublished and cannot run wasm32-wasip1 builds, hence this crate.
//!
//! # Layout
//! - [`abi`]: the ABI's numbers and the header-map wire format.
//! - [`module`]: finding `tollgate.wasm`, compiling it once per process (and caching it on disk).
//! - [`shared`]: what Envoy keeps process-wide: clock, shared data (CAS), queues, metrics, calls, log.
//! - [`vm`]: one worker VM and every host function (proxy-wasm imports and WASI preview1).
//! - [`gateway`]: the scenario API — [`Gateway`], [`Stream`], [`Answer`] — on virtual time.
//! - [`fixtures`]: request and response bodies for every dialect, and a deterministic RNG.
//!
//! # Example
//! ```no_run
//! use tollgate_host_tests::*;
//! let gw = Gateway::new(r#"{"gateway_id":"gw-1"}"#).workers(2);
//! let mut s = gw.stream();
//! s.send_request(&[(":method", "POST"), (":path", "/v1/chat/completions")], br#"{"model":"gpt-4o","messages":[]}"#);
//! s.respond(&[(":status", "200"), ("content-type", "application/json")], b"{}");
//! assert_eq!(s.client().status(), Some(200));
//! ```

pub mod abi;
pub mod fixtures;
pub mod gateway;
pub mod module;
pub mod shared;
pub mod vm;

pub use gateway::{chunks, Answer, ClientResponse, Gateway, Refusal, Stream, UpstreamRequest};
pub use abi::{BufferType, Status};
pub use shared::{HttpCall, LogLine, Metric};
pub use std::time::Duration;
