//! Every scenario, in one test binary: the release profile links with LTO, so each extra test
//! binary would cost minutes of linking wasmtime; modules keep the files apart instead.
//!
//! - `host`: the host itself, with its own probe filter.
//! - `dialects`: every dialect routed byte-exact and metered, any chunking.
//! - `requests`: attribution, routing rules, denials, malformed input, 413, refused configs.
//! - `usage_split`: the usage event split at every byte.
//! - `randomized`: garbage and random chunking never trap the VM (fixed seeds, bounded).
//! - `lifecycle`: cut streams, upstream errors, resets.
//! - `host_calls`: host calls per request (clock reads; the bench's `calls` floor matches the filter).
//! - `prompt_bound`: prompts the provider holds reserve the context window, every dialect, any chunking.
//! - `guards`: agent guards: the retry-loop guard and premium runs that need a task.
//! - `client_stream`: the injected usage chunk kept from the client; BOM, escaped keys, `?key=`.
//! - `context_memory`: a continued response reserves its remembered context, not the window.
//! - `banner`: the budget banner on a chat UI's HTML pages, at any chunking; everything else untouched.
//! - `pools`: worker-local lease pools: no shared-data call per request in steady state, the same
//!   refusal point.

mod banner;
mod client_stream;
mod common;
mod context_memory;
mod dialects;
mod enforcement;
mod guards;
mod host;
mod host_calls;
mod lifecycle;
mod pools;
mod prompt_bound;
mod randomized;
mod requests;
mod usage_split;
