//! Budget enforcement inside Envoy: `core::enforce` behind the filter's [`Enforcer`] hooks.
//! `core::enforce` decides (lease arithmetic, rounds, batching); this is its Envoy side.
//!
//! ```text
//! per request (LeaseEnforcer)                  per worker (Worker, owned by the root context)
//! ───────────────────────────                  ──────────────────────────────────────────────
//! utilization_pct  chain utilization → routing  on_tick  background top-ups, usage batches
//! admit            reserve the worst case:      on_http_call_response
//!                  Proceed | Wait (lease call          top-up answers, usage acks → redelivery
//!                  from this context) | 429/503
//! on_http_call_response  apply the grant, decide again
//! settle           real cost replaces the reservation; the record joins the worker's outbox,
//!                  queued (one shared-queue item per tick) by on_tick / on_drain
//! drop             a reservation never settled is released
//! ```
//!
//! Calls a paused request makes are its own (dispatched from its HTTP context), so its answer
//! comes back to it and resumes it; several may be in flight at once, which `core::enforce` makes
//! safe. Background top-ups and usage posts leave from the root context on its tick, so they
//! outlive the request that noticed the need. The lease book is process-wide shared data
//! ([`store::SharedStore`]); the usage queue is a process-wide shared queue; everything else here
//! is per worker. Host calls are what a request pays for in V8, so the per-request path keeps them
//! few: scopes known to have no budget are answered from the worker's memory
//! ([`store::CachedStore`]), records wait in a per-worker outbox and reach the shared queue once
//! per tick, and zero-valued counter increments are skipped.
//!
//! # Layout
//! - [`EnforcementRoot`] (here): the per-VM side the root context owns; `None` in the filter
//!   when the configuration has no `enforcement` section.
//! - [`worker`]: one worker's state, shared by the root and its requests ([`worker::SharedWorker`]).
//! - [`lease`]: one request's enforcement ([`lease::LeaseEnforcer`]).
//! - [`store`]: the lease book and the unacknowledged count in Envoy shared data.
//! - [`counters`]: enforcement's counters, by name.

pub mod counters;
pub mod lease;
mod store;
pub mod worker;

use crate::admission::Enforcer;
use lease::LeaseEnforcer;
use tollgate_core::config::CompiledConfig;
use worker::{SharedWorker, Worker};

pub use lease::REQUEST_ID_HEADER;

/// The per-VM side of enforcement, owned by the root context; it exists only when the
/// configuration has an `enforcement` section (no enforcement is `None`, nothing else: metering
/// alone makes no enforcement host calls).
pub struct EnforcementRoot {
    /// This worker's enforcement (`crate::enforce`).
    worker: SharedWorker,
}

impl EnforcementRoot {
    /// `None` when the configuration has no `enforcement` section.
    pub fn new(config: &CompiledConfig) -> Option<EnforcementRoot> {
        let settings = config.enforcement.clone()?;
        let worker = Worker::start(settings, &config.gateway_id);
        // The retry guard's window, for the counter's shared counts (`crate::guard::apply_answer`).
        if let (Some(retry), Ok(mut w)) = (config.guards.as_ref().and_then(|g| g.retry.as_ref()), worker.try_borrow_mut()) {
            w.guard_window_ms = retry.limits.window_ms;
        }
        Some(EnforcementRoot { worker })
    }

    /// How often the root context should tick.
    pub fn tick_period_ms(&self) -> Option<u64> {
        self.worker.try_borrow_mut().ok().map(|w| w.tick_period_ms())
    }

    pub fn on_tick(&self, now_ms: i64) {
        if let Ok(mut w) = self.worker.try_borrow_mut() {
            w.on_tick(now_ms);
        }
    }

    /// The answer to a call the root context made (lease top-ups, usage batches).
    pub fn on_http_call_response(&self, token: u32, status: Option<u16>, body: &[u8], now_ms: i64) {
        if let Ok(mut w) = self.worker.try_borrow_mut() {
            w.on_http_call_response(token, status, body, now_ms);
        }
    }

    /// The root context is done (the plugin replaced, or Envoy stopping): hand everything to the
    /// shared lease book and usage queue (`Worker::on_drain`).
    pub fn on_done(&self, now_ms: i64) {
        if let Ok(mut w) = self.worker.try_borrow_mut() {
            w.on_drain(now_ms);
        }
    }

    /// A fresh enforcer for one request.
    pub fn for_request(&self) -> Box<dyn Enforcer> {
        Box::new(LeaseEnforcer::new(self.worker.clone()))
    }
}
