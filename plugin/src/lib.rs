//! `tollgate.wasm`: Tollgate's proxy-wasm filter for Envoy — a thin adapter over `tollgate-core`.
//!
//! It recognises LLM API calls by path, attributes them to a principal, routes them (model
//! rewrite, provider header, deny), meters usage from the response as it streams past, prices it
//! in integer micro-dollars and publishes the result as Envoy stats and access-log filter state.
//! Budget enforcement plugs in at two points (see [`admission`]).
//!
//! # Layout
//! - [`abi`]: the callbacks the host calls (the proxy-wasm ABI's exports) and the contexts they
//!   reach; never traps on an id or token it does not know.
//! - [`filter`]: the root and HTTP contexts; each callback advances the request's phase.
//! - [`admission`]: the admission / settlement hooks (imports nothing of the crate).
//! - [`enforce`]: budget enforcement behind those hooks (leases in shared data, usage queue);
//!   absent (`None`) when the configuration has no `enforcement` section.
//! - [`context_memory`]: the response-id memory in shared data (the context a stored response
//!   was billed, so its continuation reserves that instead of the window); with enforcement only.
//! - [`guard`]: agent guards' Envoy side: retry counts in shared data, the checkpoint header,
//!   the `tollgate_guard_*` counters.
//! - [`banner`]: the budget banner's Envoy side: a chat UI's HTML page streamed through lol_html,
//!   the banner put after `<body>`, its counters (`core::banner` decides).
//! - [`settle`]: pure settlement rules (metered, estimated, upstream error) → a price, and the
//!   `UsageRecord` when enforcement or the debug log reads one.
//! - [`metrics`]: the `tollgate_*` counters.
//! - [`scanners`]: usage scanners reused across a VM's responses (reset in place, not rebuilt).
//! - [`access_log`]: the access-log filter state (one summary, single fields, or nothing).
//! - [`host`]: every raw host call, with every status handled (the SDK's hostcalls panic).
//! - [`wire`]: the header-map wire format, decoded without panicking.
//! - [`small_alloc`]: the VM's allocator (free lists per size class before wasi-libc's malloc).
//! - [`mem_compare`]: the VM's `memcmp` (words, not wasi-libc's byte loop).
//!
//! Nothing here may panic: a panic traps the VM (`[lints.clippy]` denies unwrap/expect/panic).

pub mod abi;
pub mod access_log;
pub mod admission;
pub mod banner;
pub mod context_memory;
pub mod enforce;
pub mod filter;
pub mod guard;
pub mod host;
pub mod mem_compare;
pub mod metrics;
pub mod scanners;
pub mod settle;
pub mod small_alloc;
pub mod wire;

#[cfg(all(target_arch = "wasm32", not(target_feature = "atomics")))]
#[global_allocator]
static ALLOCATOR: small_alloc::SmallAlloc = small_alloc::SmallAlloc::new();

