//! Notifications: threshold, hard-stop, anomaly and overdue-review events, an events log, and
//! signed webhook deliveries through a durable outbox.
//!
//! # Why this shape
//! - **Nothing on the hot path.** A lease or usage call only pokes a [`tokio::sync::Notify`]
//!   (O(1), coalescing). A background evaluator then reads budget states and the ledger; a second
//!   background task delivers. A webhook that is slow or down can never slow a lease or a usage ack.
//! - **Once per window and scope.** Every event has a dedup key (`threshold:<budget>:80:<window
//!   start>`, `anomaly:team:platform:2026-11-25`, ...). The store claims the key atomically
//!   (SQLite: a primary key, so across restarts; Redis: `SET NX` inside a Lua script, so across
//!   counter instances sharing the namespace): only the claimant records the event and its
//!   deliveries.
//! - **No event lost.** The event and one outbox row per webhook are written in the same atomic
//!   step. A delivery is removed from the outbox only after the receiver answered 2xx; failures are
//!   retried with exponential backoff (capped), across restarts. Delivery is at least once: a crash
//!   between the receiver's 2xx and the outbox update sends it again, with the same
//!   `X-Tollgate-Event` id, so receivers can drop the repeat.
//! - **Time is the injected clock.** Windows, days, backoff and signature timestamps come from
//!   [`crate::clock::Clock`]; real time only paces the background loops.
//!
//! # Layout
//! - [`rules`]: the pure evaluators (thresholds, anomalies, overdue reviews) and their config.
//! - [`webhook`]: the Slack and generic bodies, HMAC-SHA256 signing and verification, one POST.
//! - [`outbox`]: the background evaluator and delivery loops ([`Notifier`]), backoff, metrics.
//! - [`EventLog`]: what a store keeps (implemented in `store/sqlite/events.rs` and
//!   `store/redis/events.rs`; the contract is below).
//!
//! # Contract every [`EventLog`] keeps
//! - [`EventLog::record_event`]: if no event with this `key` was ever recorded, records it with the
//!   next sequence number and one pending delivery per target, atomically, durable before `Ok`;
//!   returns `Some(event)`. Otherwise changes nothing and returns `None`, whichever instance or
//!   process recorded the first.
//! - [`EventLog::claim_deliveries`]: pending deliveries whose `next_at_ms <= now`, at most `limit`,
//!   oldest first; each claimed one is not handed out again (to this or another instance) before
//!   `now + claim_ms` unless it is settled.
//! - [`EventLog::settle_delivery`]: `Ok(true)` → delivered, never handed out again;
//!   otherwise → pending again at `next_at_ms` with the attempt count and error.

pub mod outbox;
pub mod rules;
pub mod webhook;

pub use outbox::Notifier;
pub use rules::NotifyConfig;

use crate::store::StoreResult;
use serde::{Deserialize, Serialize};
use std::future::Future;

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// Spend in a budget's window reached a percentage of its limit (soft thresholds and 100 %).
    Threshold,
    /// The budget is at its hard limit: enforce-mode requests on it are refused.
    HardStop,
    /// Today's spend on a scope is at least `factor` times its trailing 7-day daily average.
    Anomaly,
    /// A workflow's review date has passed.
    ReviewOverdue,
    /// At the current pace (crate::forecast) a budget reaches its hard limit before its window ends.
    ProjectedOverrun,
}

impl EventKind {
    pub const ALL: [EventKind; 5] = [EventKind::Threshold, EventKind::HardStop, EventKind::Anomaly, EventKind::ReviewOverdue, EventKind::ProjectedOverrun];

    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Threshold => "threshold",
            EventKind::HardStop => "hard_stop",
            EventKind::Anomaly => "anomaly",
            EventKind::ReviewOverdue => "review_overdue",
            EventKind::ProjectedOverrun => "projected_overrun",
        }
    }

    pub fn parse(text: &str) -> Result<EventKind, String> {
        EventKind::ALL
            .into_iter()
            .find(|k| k.as_str() == text)
            .ok_or_else(|| format!("`{text}` is not an event kind; use threshold, hard_stop, anomaly, review_overdue or projected_overrun"))
    }
}

/// An event as an evaluator proposes it (before the store claims its key).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventDraft {
    /// The dedup key: one event per key, ever.
    pub key: String,
    pub kind: EventKind,
    /// The scope key the event is about (`team:platform`, `use_case:chat`, `workflow:review-bot`).
    pub scope: String,
    /// The budget or workflow id, if the event is about one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    /// The window the event is for: `YYYY-MM-DD` for a day, or the window start in unix seconds.
    pub window: String,
    /// One line for people (Slack's `text`).
    pub title: String,
    /// Numbers behind the event (kind-specific; documented in docs/counter.md).
    pub details: serde_json::Value,
}

/// A recorded event: the draft plus its sequence number and when it was recorded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    pub seq: u64,
    pub at_ms: i64,
    #[serde(flatten)]
    pub draft: EventDraft,
}

/// One webhook delivery of one event, as the outbox holds it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Delivery {
    pub seq: u64,
    /// The webhook's name in the config.
    pub target: String,
    pub attempts: u32,
    pub next_at_ms: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivered_at_ms: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

/// An event with the state of its deliveries (`GET /admin/events`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventRow {
    #[serde(flatten)]
    pub event: Event,
    pub deliveries: Vec<Delivery>,
}

/// `GET /admin/events` filters; newest first, at most `limit`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct EventQuery {
    pub kind: Option<EventKind>,
    /// Exact scope key.
    pub scope: Option<String>,
    /// Exact subject (budget or workflow id).
    pub subject: Option<String>,
    pub since_ms: Option<i64>,
    pub until_ms: Option<i64>,
    pub limit: usize,
}

impl EventQuery {
    pub fn matches(&self, e: &Event) -> bool {
        self.kind.is_none_or(|k| k == e.draft.kind)
            && self.scope.as_ref().is_none_or(|s| *s == e.draft.scope)
            && self.subject.as_ref().is_none_or(|s| Some(s) == e.draft.subject.as_ref())
            && self.since_ms.is_none_or(|t| e.at_ms >= t)
            && self.until_ms.is_none_or(|t| e.at_ms < t)
    }
}

/// A claimed delivery, with the event to send.
#[derive(Debug, Clone, PartialEq)]
pub struct Claimed {
    pub event: Event,
    pub delivery: Delivery,
}

/// The events log and the outbox. See the module docs for the contract.
pub trait EventLog: Send + Sync + 'static {
    /// Records `draft` with a pending delivery per `targets`, unless its key was recorded before.
    fn record_event(&self, draft: &EventDraft, targets: &[String], now_ms: i64) -> impl Future<Output = StoreResult<Option<Event>>> + Send;

    /// Events, newest first, with their deliveries.
    fn list_events(&self, query: &EventQuery) -> impl Future<Output = StoreResult<Vec<EventRow>>> + Send;

    /// Claims due deliveries (see the contract).
    fn claim_deliveries(&self, now_ms: i64, limit: usize, claim_ms: i64) -> impl Future<Output = StoreResult<Vec<Claimed>>> + Send;

    /// Settles a claimed delivery: `delivered` or pending again at `next_at_ms` (attempts + 1).
    fn settle_delivery(
        &self,
        delivery: &Delivery,
        delivered: bool,
        error: Option<String>,
        next_at_ms: i64,
        now_ms: i64,
    ) -> impl Future<Output = StoreResult<()>> + Send;

    /// Deliveries not yet delivered (the `/metrics` outbox gauge).
    fn pending_deliveries(&self) -> impl Future<Output = StoreResult<u64>> + Send;
}

/// Dollars for people: at least two decimals, no trailing zeros beyond them (`0.85`, `0.012345`).
pub fn usd(micros: tollgate_core::money::Micros) -> String {
    let s = tollgate_core::money::format_micros(micros);
    let keep = s.find('.').map(|i| i + 3).unwrap_or(s.len());
    let trimmed = s.trim_end_matches('0');
    if trimmed.len() < keep { s[..keep].to_owned() } else { trimmed.to_owned() }
}

/// `300` → `3`, `250` → `2.5`.
pub fn factor_text(pct: u32) -> String {
    let s = format!("{}.{:02}", pct / 100, pct % 100);
    s.trim_end_matches('0').trim_end_matches('.').to_owned()
}
