//! `tollgate-counter`: the shared counter service every Tollgate gateway talks to.
//!
//! A team's $800 a month is one number however many Envoy processes serve the team. Gateways ask
//! this service for **leases** (slices of a budget's headroom they may spend locally) and post
//! **usage** batches (settled requests, idempotent by record id). The service keeps budgets and
//! their windows, a durable ledger of every record, exemptions, an audit log of every change, and
//! serves reports, metrics and an operator CLI. The wire contract is `tollgate_core::protocol`.
//!
//! # Layout
//! - [`clock`]: the injectable time source (tests roll windows over with a manual clock).
//! - [`window`]: calendar, rolling and open-ended windows; fixed UTC offsets; day buckets.
//! - [`budget`]: budget and exemption specs, their validation, and the status decision.
//! - [`store`]: the [`store::Store`] trait (the storage contract), the in-memory [`store::book`]
//!   with the lease and charging rules, the embedded SQLite backend [`store::sqlite`] (default)
//!   and the shared Redis backend [`store::redis`].
//! - [`task`]: the cost handoff: a task's summary from the ledger, human checkpoints.
//! - [`report`]: JSON, CSV and table shapes of the reports.
//! - [`server`]: the HTTP API (`run(listener, store, clock, auth, shutdown)`), auth, errors.
//! - [`metrics`]: Prometheus text.
//! - [`log`]: structured JSON-line logs to stderr.
//! - [`client`]: a small HTTP/1.1 client used by the CLI, the bench and the tests.
//! - [`cli`]: the `tollgate-counter` command line (`serve`, admin subcommands).
//! - [`bench`](mod@bench): `tollgate-counter bench`, records/s and lease calls/s over loopback HTTP.

pub mod bench;
pub mod budget;
pub mod cli;
pub mod client;
pub mod log;
pub mod metrics;
pub mod report;
pub mod server;
pub mod clock;
pub mod store;
pub mod task;
pub mod window;
