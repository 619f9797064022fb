//! The events log and webhook outbox of the embedded store ([`EventLog`], contract in
//! `notify/mod.rs`).
//!
//! Events are rare (a few per budget per window), so they do not ride the writer thread's group
//! commit: they use their own connection to the same database file (WAL allows one writer at a
//! time; `busy_timeout` waits out the writer's short transactions), on the blocking pool, with
//! `synchronous=FULL` so a recorded event survives `kill -9` and power loss. The dedup key is the
//! `events.key` UNIQUE constraint: a key recorded before a restart stays recorded after it.

use super::{internal, SqliteStore};
use crate::notify::{Claimed, Delivery, Event, EventDraft, EventLog, EventQuery, EventRow};
use crate::store::{StoreError, StoreResult};
use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};
use std::path::Path;
use std::sync::{Arc, Mutex};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS events (
  seq INTEGER PRIMARY KEY AUTOINCREMENT, key TEXT NOT NULL UNIQUE, at_ms INTEGER NOT NULL,
  kind TEXT NOT NULL, scope TEXT NOT NULL, subject TEXT, body TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS events_at ON events (at_ms);
CREATE TABLE IF NOT EXISTS outbox (
  seq INTEGER NOT NULL, target TEXT NOT NULL, attempts INTEGER NOT NULL, next_at_ms INTEGER NOT NULL,
  delivered_at_ms INTEGER, last_error TEXT, PRIMARY KEY (seq, target)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS outbox_due ON outbox (next_at_ms) WHERE delivered_at_ms IS NULL;
";

/// The events connection.
pub(super) type EventsDb = Arc<Mutex<Connection>>;

/// Opens the events connection on the store's file and creates the tables.
pub(super) fn open(path: &Path) -> StoreResult<EventsDb> {
    let conn = Connection::open(path).map_err(internal)?;
    conn.execute_batch("PRAGMA synchronous=FULL; PRAGMA busy_timeout=10000;").map_err(internal)?;
    conn.execute_batch(SCHEMA).map_err(internal)?;
    Ok(Arc::new(Mutex::new(conn)))
}

impl SqliteStore {
    async fn events_db<T: Send + 'static>(&self, op: impl FnOnce(&mut Connection) -> rusqlite::Result<T> + Send + 'static) -> StoreResult<T> {
        let db = Arc::clone(&self.events);
        tokio::task::spawn_blocking(move || {
            let mut conn = db.lock().unwrap_or_else(|p| p.into_inner());
            op(&mut *conn).map_err(|e| StoreError::Unavailable(format!("sqlite events: {e}; retry")))
        })
        .await
        .map_err(internal)?
    }
}

fn deliveries(conn: &Connection, seq: i64) -> rusqlite::Result<Vec<Delivery>> {
    let mut stmt = conn.prepare_cached(
        "SELECT target, attempts, next_at_ms, delivered_at_ms, last_error FROM outbox WHERE seq = ?1 ORDER BY target",
    )?;
    let rows = stmt.query_map(params![seq], |r| {
        Ok(Delivery {
            seq: seq.max(0) as u64,
            target: r.get(0)?,
            attempts: r.get::<_, i64>(1)?.clamp(0, i64::from(u32::MAX)) as u32,
            next_at_ms: r.get(2)?,
            delivered_at_ms: r.get(3)?,
            last_error: r.get(4)?,
        })
    })?;
    rows.collect()
}

fn parse_event(body: &str) -> rusqlite::Result<Event> {
    serde_json::from_str(body).map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))
}

impl EventLog for SqliteStore {
    async fn record_event(&self, draft: &EventDraft, targets: &[String], now_ms: i64) -> StoreResult<Option<Event>> {
        let (draft, targets) = (draft.clone(), targets.to_vec());
        self.events_db(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let inserted = tx.execute(
                "INSERT OR IGNORE INTO events (key, at_ms, kind, scope, subject, body) VALUES (?1, ?2, ?3, ?4, ?5, '{}')",
                params![draft.key, now_ms, draft.kind.as_str(), draft.scope, draft.subject],
            )?;
            if inserted == 0 {
                return Ok(None);
            }
            let seq = tx.last_insert_rowid();
            let event = Event { seq: seq.max(0) as u64, at_ms: now_ms, draft };
            let body = serde_json::to_string(&event).map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))?;
            tx.execute("UPDATE events SET body = ?1 WHERE seq = ?2", params![body, seq])?;
            for t in &targets {
                tx.execute("INSERT INTO outbox (seq, target, attempts, next_at_ms) VALUES (?1, ?2, 0, ?3)", params![seq, t, now_ms])?;
            }
            tx.commit()?;
            Ok(Some(event))
        })
        .await
    }

    async fn list_events(&self, query: &EventQuery) -> StoreResult<Vec<EventRow>> {
        let q = query.clone();
        self.events_db(move |conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT seq, body FROM events WHERE (?1 IS NULL OR kind = ?1) AND (?2 IS NULL OR scope = ?2)
                 AND (?3 IS NULL OR subject = ?3) AND (?4 IS NULL OR at_ms >= ?4) AND (?5 IS NULL OR at_ms < ?5)
                 ORDER BY seq DESC LIMIT ?6",
            )?;
            let limit = i64::try_from(q.limit).unwrap_or(i64::MAX);
            let rows: Vec<(i64, String)> = stmt
                .query_map(params![q.kind.map(|k| k.as_str()), q.scope, q.subject, q.since_ms, q.until_ms, limit], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect::<rusqlite::Result<_>>()?;
            rows.into_iter().map(|(seq, body)| Ok(EventRow { event: parse_event(&body)?, deliveries: deliveries(conn, seq)? })).collect()
        })
        .await
    }

    async fn claim_deliveries(&self, now_ms: i64, limit: usize, claim_ms: i64) -> StoreResult<Vec<Claimed>> {
        self.events_db(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let due: Vec<(i64, String, i64, i64, String)> = {
                let mut stmt = tx.prepare_cached(
                    "SELECT o.seq, o.target, o.attempts, o.next_at_ms, e.body FROM outbox o JOIN events e ON e.seq = o.seq
                     WHERE o.delivered_at_ms IS NULL AND o.next_at_ms <= ?1 ORDER BY o.next_at_ms, o.seq LIMIT ?2",
                )?;
                let rows = stmt
                    .query_map(params![now_ms, i64::try_from(limit).unwrap_or(i64::MAX)], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)))?
                    .collect::<rusqlite::Result<Vec<_>>>()?;
                rows
            };
            let mut out = Vec::with_capacity(due.len());
            for (seq, target, attempts, next_at_ms, body) in due {
                tx.execute("UPDATE outbox SET next_at_ms = ?1 WHERE seq = ?2 AND target = ?3", params![now_ms.saturating_add(claim_ms), seq, target])?;
                out.push(Claimed {
                    event: parse_event(&body)?,
                    delivery: Delivery {
                        seq: seq.max(0) as u64,
                        target,
                        attempts: attempts.clamp(0, i64::from(u32::MAX)) as u32,
                        next_at_ms,
                        delivered_at_ms: None,
                        last_error: None,
                    },
                });
            }
            tx.commit()?;
            Ok(out)
        })
        .await
    }

    async fn settle_delivery(&self, delivery: &Delivery, delivered: bool, error: Option<String>, next_at_ms: i64, now_ms: i64) -> StoreResult<()> {
        let (seq, target) = (i64::try_from(delivery.seq).unwrap_or(i64::MAX), delivery.target.clone());
        self.events_db(move |conn| {
            conn.execute(
                "UPDATE outbox SET attempts = attempts + 1, delivered_at_ms = ?1, next_at_ms = ?2, last_error = ?3
                 WHERE seq = ?4 AND target = ?5 AND delivered_at_ms IS NULL",
                params![delivered.then_some(now_ms), next_at_ms, error, seq, target],
            )?;
            Ok(())
        })
        .await
    }

    async fn pending_deliveries(&self) -> StoreResult<u64> {
        self.events_db(|conn| {
            conn.query_row("SELECT COUNT(*) FROM outbox WHERE delivered_at_ms IS NULL", [], |r| r.get::<_, i64>(0))
                .optional()
                .map(|n| n.unwrap_or(0).max(0) as u64)
        })
        .await
    }
}
