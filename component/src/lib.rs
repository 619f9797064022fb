//! Tollgate's policy as a WebAssembly component (`wit/tollgate.wit`, world `policy`), for hosts
//! outside proxy-wasm: a gateway that hosts components, a Node/JS proxy through jco, a batch job.
//! Guide: docs/component.md.
//!
//! Why a component and not a second library: the policy is the part of Tollgate that must give the
//! same answer everywhere (which model a request is routed to, what it costs, what is refused and
//! how the refusal reads). A component is that one build of `tollgate-core`, with a typed
//! interface any component host can call, so no host re-implements it.
//!
//! # Layout
//! - [`cases`]: the shared case table's answers and their check (`component/cases.json`).
//! - [`policy`]: the policy in plain Rust over `tollgate-core` (the filter's request and response
//!   path without budgets); natively tested on the shared case table (`component/cases.json`).
//! - `bindings` (wasm32 only): the wit-bindgen exports, converting types and nothing else.
//!
//! Build: `make component` (`cargo build --release --target wasm32-wasip2 -p tollgate-component`),
//! giving `tollgate_component.wasm`. Proven on the same case table natively, under wasmtime's
//! component model (`host-tests/tests/component.rs`, `make test-host`) and from Node through jco
//! (`component/node/`, `make test-component`); docs/component.md.

pub mod cases;
pub mod policy;

#[cfg(target_arch = "wasm32")]
mod bindings;
