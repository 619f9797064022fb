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
//! - [`notify`]: threshold / hard-stop / anomaly / overdue-review events, the events log, signed
//!   webhooks through a durable outbox.
//! - [`baseline`]: daily spend baselines and suggested monthly limits (observe first).
//! - [`forecast`]: projected spend at a window's end and the day the hard limit is reached
//!   (weekday-aware pace from the ledger).
//! - [`outliers`]: runs, workflow days and days far above their own baseline (median + k·MAD),
//!   with what explains them; never a ranking of people.
//! - [`seats`]: seat costs per role and product, users' roles, spend bands; seats beside usage.
//! - [`log`]: structured JSON-line logs to stderr.
//! - [`client`]: a small HTTP/1.1 client used by the CLI, the bench and the tests.
//! - [`cli`]: the `tollgate-counter` command line (`serve`, admin subcommands).
//! - [`simulate`]: the requests report the policy simulator replays, and `tollgate-counter simulate`.
//! - [`console`]: the web console at `/console/` (assets embedded; its pages call the admin API).
//! - [`auth`]: named bearer tokens and the roles of admin-side tokens (viewer, requester,
//!   approver, admin); the one role check every admin endpoint uses.
//! - [`workflow`]: workflows (owner, class, tiers, success metric, caps, review date) and their
//!   policy; caps become budgets on `workflow:<team>/<use_case>`.
//! - [`approval`]: exemption requests, approved or rejected by someone else.
//! - [`outcome`]: outcomes (merged PRs, resolved tickets…), the GitHub webhook, the governance file.
//! - [`review`]: the outcome reports (cost per outcome, trends, model mix) and the monthly review,
//!   pure functions over their inputs.
//! - [`gov_api`]: the HTTP endpoints of the above (`/admin/workflows`, `/admin/exemption-requests`,
//!   `/outcomes`, `/webhooks/github`, `/admin/reports/{outcomes,trend,model-mix,team-utilization,review}`).
//! - [`bench`](mod@bench): `tollgate-counter bench`, records/s and lease calls/s over loopback HTTP.

pub mod approval;
pub mod auth;
pub mod bench;
pub mod budget;
pub mod cli;
pub mod console;
pub mod client;
pub mod log;
pub mod gov_api;
pub mod metrics;
pub mod outcome;
pub mod review;
pub mod notify;
pub mod baseline;
pub mod forecast;
pub mod outliers;
pub mod seats;
pub mod report;
pub mod reserve;
pub mod server;
pub mod simulate;
pub mod clock;
pub mod store;
pub mod task;
pub mod window;
pub mod workflow;
