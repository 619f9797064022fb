//! Enforcement: budgets held inside the gateway with leases, settled request by request.
//!
//! A gateway cannot ask the counter service before every request (a network round trip per call),
//! so it holds a *lease* on each budget it uses: a slice of the budget's headroom the counter has
//! set aside for it. Requests reserve their worst-case cost against the slices locally, settle to
//! their real cost when the response ends, and the usage records flow to the counter in batches.
//! Slices are topped up in the background before they run dry, so in steady state no request
//! waits on the network. docs/enforcement.md states the overspend bound this design keeps and why.
//!
//! Everything here is pure: time comes in as `now_ms`, storage through the [`chain::LeaseStore`]
//! trait, calls to the counter as plain request/response values. The plugin
//! (`plugin/src/enforce/`) is the adapter onto Envoy shared data, queues and HTTP calls.
//!
//! # Layout
//! - [`config`]: the `enforcement` config section, validated into [`EnforcementSettings`].
//! - [`book`]: one scope's lease entry: slices, reservations, the local mirror of the counter's
//!   slice, and its compact shared-data encoding.
//! - [`chain`]: decisions across a principal's chain over a versioned store: reserve, release,
//!   settle, lease calls, acknowledgements; refusals, warnings, Retry-After.
//! - [`pool`]: worker-local lease pools: a worker's share of a scope's slice, so a request in
//!   steady state reserves and settles in worker memory.
//! - [`queue`]: the usage queue's policy: batching, the bound, batch bodies, acknowledgements.
//! - [`rounds`]: a paused request's lease rounds: how many, how much each asks, how they end.
//! - [`reservation`]: a request's worst case, what it reserves: the prompt bound (body or context
//!   window), the output it assumes (request cap, operator override, price table), the price.

pub mod book;
pub mod chain;
pub mod config;
pub mod pool;
pub mod queue;
pub mod reservation;
pub mod rounds;

pub use chain::{Decision, LeaseStore, Refusal, Reservation, Settled, StoreError};
pub use config::{EnforcementConfig, EnforcementConfigError, EnforcementSettings, FailureMode};

#[cfg(test)]
mod simulation;
