//! tollgate-core: the pure logic shared by the Envoy filter (`plugin/`) and the counter service
//! (`counter/`).
//!
//! Everything here is plain data in, plain data out: no proxy-wasm, no tokio, no clock, no I/O.
//! That keeps the hot path testable natively (unit and property tests) and lets the same code run
//! inside a wasm VM in Envoy and in a native service.
//!
//! # Layout
//! - [`protocol`]: the JSON wire types between gateways and `tollgate-counter` (principal, scope
//!   keys, leases, usage records). Both sides compile against this one definition.
//! - [`money`]: integer money (micro-dollars) and prices (pico-dollars per token).
//! - [`section`]: [`section::ConfigError`] (a mistake named by its field) and the section parser;
//!   imports nothing of the crate, so every section's compiler can use it.
//! - [`config`]: the filter's configuration, in two phases: raw serde input, then a validated,
//!   compiled form built once per VM.
//! - [`dialect`]: which LLM API a request speaks, recognised by its path.
//! - [`bytes`]: byte searches, the scanners' inner loops: sixteen bytes per step with wasm SIMD
//!   (the filter's build), word at a time elsewhere.
//! - [`json`]: a validating scanner for top-level JSON object members and the byte-exact splice
//!   used to rewrite the model without re-serializing the body.
//! - [`json_writer`]: JSON written by hand on hot paths, byte for byte what serde_json writes.
//! - [`attribution`]: who is calling: the principal from trusted headers, virtual keys, body metadata.
//! - [`routing`]: the ordered routing table: match, then set model / set route header / deny.
//! - [`errors`]: error bodies in each dialect's own JSON shape.
//! - [`usage`]: incremental usage scanning of JSON and SSE responses, split-point independent.
//! - [`pricing`]: the price table (LiteLLM format + overrides) and integer cost arithmetic.
//! - [`estimate`]: token estimates for the request's worst case and for streams cut short.
//! - [`guard`]: agent guards: the retry-loop guard (request fingerprints counted per principal
//!   and task), premium runs that need a task id.
//! - [`prompt_bound`]: requests whose billed prompt can exceed their body (stored conversations,
//!   caches, files, media, hosted tools), recognised per dialect so the reservation stays a bound.
//! - [`context_memory`]: the response-id memory: the context a stored response was billed, so a
//!   request continuing it reserves that prefix plus its body instead of the context window.
//! - [`banner`]: the budget banner on a chat UI's HTML pages: its routes, which responses are
//!   rewritten, which budget it names and its text (the plugin streams the page through lol_html).

pub mod attribution;
pub mod banner;
pub mod bytes;
pub mod config;
pub mod context_memory;
pub mod dialect;
pub mod enforce;
pub mod errors;
pub mod estimate;
pub mod guard;
pub mod json;
pub mod json_writer;
pub mod money;
pub mod pricing;
pub mod prompt_bound;
pub mod protocol;
pub mod routing;
pub mod section;
pub mod usage;
pub mod value_hash;
