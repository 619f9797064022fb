//! The embedded store's side of the cost handoff (`crate::task`): a task's ledger rows (indexed by
//! `ledger_task`) folded into a summary, and checkpoints in their own table, written on the
//! writer thread with their audit row in one transaction. The retry guard's events
//! (`guard_events`, one row per counted request and one per settled attempt of a task, its
//! outcome; `INSERT OR IGNORE` by record id) are stored and answered on the writer thread too, so
//! an answer always sees the events it was sent.

use super::{internal, Job, SqliteStore, Writer};
use crate::store::StoreResult;
use crate::task::{self, summarise_with_guard, Checkpoint, Row, StoredGuardEvent, TaskSummary};
use rusqlite::{params, TransactionBehavior};
use tokio::sync::oneshot;
use std::collections::BTreeMap;
use tollgate_core::protocol::{GuardAnswer, GuardCheckpoint, GuardCount, GuardEvent, GuardEventKind, GuardStreak, Tokens};

fn kind_of(text: &str) -> GuardEventKind {
    GuardEventKind::parse(text).unwrap_or(GuardEventKind::Passed)
}

/// The row id of an event: the record id for a counted attempt, `<record id>#outcome` for the
/// same request's outcome (its failure streak), so both are stored once each.
fn row_id(e: &GuardEvent) -> String {
    if e.kind.is_outcome() {
        format!("{}#outcome", e.id)
    } else {
        e.id.clone()
    }
}

/// One ledger row as read (owned, so the rows outlive the statement).
struct Owned {
    key_id: Option<String>,
    routed_model: String,
    tokens: Tokens,
    cost_micros: i64,
    status: u16,
    estimated: bool,
    started_at_ms: i64,
    finished_at_ms: i64,
}

impl SqliteStore {
    pub(super) async fn read_task_summary(&self, task: &str) -> StoreResult<TaskSummary> {
        let task = task.to_owned();
        self.read(move |conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT routed_model, input_tokens, output_tokens, cache_read_tokens, cache_write_tokens, reasoning_tokens,
                        cost_micros, status, estimated, started_at_ms, finished_at_ms, key_id
                 FROM ledger WHERE task = ?1",
            )?;
            let u = |v: i64| v.max(0) as u64;
            let rows = stmt
                .query_map(params![task], |r| {
                    Ok(Owned {
                        key_id: r.get(11)?,
                        routed_model: r.get(0)?,
                        tokens: Tokens {
                            input: u(r.get(1)?),
                            output: u(r.get(2)?),
                            cache_read: u(r.get(3)?),
                            cache_write: u(r.get(4)?),
                            reasoning: u(r.get(5)?),
                            ..Tokens::default()
                        },
                        cost_micros: r.get(6)?,
                        status: u16::try_from(r.get::<_, i64>(7)?).unwrap_or(0),
                        estimated: r.get::<_, i64>(8)? != 0,
                        started_at_ms: r.get(9)?,
                        finished_at_ms: r.get(10)?,
                    })
                })?
                .collect::<rusqlite::Result<Vec<Owned>>>()?;
            let mut stmt = conn.prepare_cached("SELECT seq, at_ms, actor, note FROM checkpoints WHERE task = ?1 ORDER BY seq")?;
            let checkpoints = stmt
                .query_map(params![task], |r| {
                    Ok(Checkpoint { id: format!("cp-{}", r.get::<_, i64>(0)?), task: task.clone(), at_ms: r.get(1)?, actor: r.get(2)?, note: r.get(3)? })
                })?
                .collect::<rusqlite::Result<Vec<Checkpoint>>>()?;
            let mut stmt = conn.prepare_cached("SELECT kind, retry FROM guard_events WHERE task = ?1 AND kind IN ('passed', 'observed', 'refused')")?;
            let guard = stmt
                .query_map(params![task], |r| Ok((kind_of(&r.get::<_, String>(0)?), u32::try_from(r.get::<_, i64>(1)?).unwrap_or(0))))?
                .collect::<rusqlite::Result<Vec<(GuardEventKind, u32)>>>()?;
            Ok(summarise_with_guard(
                &task,
                rows.iter().map(|o| Row {
                    key_id: o.key_id.as_deref(),
                    routed_model: &o.routed_model,
                    tokens: &o.tokens,
                    cost_micros: o.cost_micros,
                    status: o.status,
                    estimated: o.estimated,
                    started_at_ms: o.started_at_ms,
                    finished_at_ms: o.finished_at_ms,
                }),
                checkpoints,
                guard,
            ))
        })
        .await
    }

    pub(super) async fn exchange_guard_events(&self, gateway_id: &str, events: Vec<GuardEvent>, now_ms: i64) -> StoreResult<GuardAnswer> {
        let gateway = gateway_id.to_owned();
        self.submit(move |reply: oneshot::Sender<StoreResult<GuardAnswer>>| {
            Job::Run(Box::new(move |writer: &mut Writer| {
                let _ = reply.send(writer.guard_exchange(&gateway, &events, now_ms).map_err(super::internal));
            }))
        })
        .await
    }

    pub(super) async fn write_checkpoint(&self, checkpoint: Checkpoint, actor: &str) -> StoreResult<Checkpoint> {
        let actor = actor.to_owned();
        self.submit(move |reply: oneshot::Sender<StoreResult<Checkpoint>>| {
            Job::Run(Box::new(move |writer: &mut Writer| {
                let _ = reply.send(writer.add_checkpoint(checkpoint, &actor));
            }))
        })
        .await
    }
}

impl Writer {
    fn add_checkpoint(&mut self, mut checkpoint: Checkpoint, actor: &str) -> StoreResult<Checkpoint> {
        let tx = self.conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(internal)?;
        tx.execute(
            "INSERT INTO checkpoints (task, at_ms, actor, note) VALUES (?1, ?2, ?3, ?4)",
            params![checkpoint.task, checkpoint.at_ms, actor, checkpoint.note],
        )
        .map_err(internal)?;
        checkpoint.id = format!("cp-{}", tx.last_insert_rowid());
        checkpoint.actor = actor.to_owned();
        let body = serde_json::to_string(&checkpoint).map_err(internal)?;
        Self::audit_row(&tx, checkpoint.at_ms, actor, "checkpoint.add", &format!("task:{}", checkpoint.task), None, Some(body)).map_err(internal)?;
        tx.commit().map_err(internal)?;
        Ok(checkpoint)
    }
}

impl Writer {
    fn guard_exchange(&mut self, gateway: &str, events: &[GuardEvent], now_ms: i64) -> rusqlite::Result<GuardAnswer> {
        let tx = self.conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        {
            let mut insert = tx.prepare_cached("INSERT OR IGNORE INTO guard_events (id, key, task, gateway, kind, retry, at_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)")?;
            for e in events {
                insert.execute(params![row_id(e), e.key, e.task, gateway, e.kind.as_str(), i64::from(e.retry), e.at_ms])?;
            }
            if !events.is_empty() {
                tx.execute("DELETE FROM guard_events WHERE at_ms < ?1", params![now_ms.saturating_sub(task::GUARD_RETAIN_MS)])?;
            }
        }
        let mut answer = GuardAnswer::default();
        {
            let mut newest_checkpoint = tx.prepare_cached("SELECT MAX(at_ms) FROM checkpoints WHERE task = ?1")?;
            let mut by_key = tx.prepare_cached("SELECT gateway, kind, at_ms FROM guard_events WHERE key = ?1 AND at_ms >= ?2")?;
            let mut streak_of = tx.prepare_cached("SELECT gateway, kind, at_ms FROM guard_events WHERE key = ?1 AND (at_ms >= ?2 OR kind = 'succeeded')")?;
            for (key, b) in task::batch_keys(events) {
                let checkpoint_at = match b.task {
                    Some(t) => newest_checkpoint.query_row(params![t], |r| r.get::<_, Option<i64>>(0))?.unwrap_or(i64::MIN),
                    None => i64::MIN,
                };
                let read = |r: &rusqlite::Row<'_>| Ok(StoredGuardEvent { gateway: r.get(0)?, kind: kind_of(&r.get::<_, String>(1)?), at_ms: r.get(2)? });
                if b.streak {
                    // Successes before `since_ms` too: the newest success anywhere ends the streak.
                    let stored = streak_of.query_map(params![key, b.since_ms], read)?.collect::<rusqlite::Result<Vec<_>>>()?;
                    answer.streaks.push(GuardStreak { key: key.to_owned(), ..task::streak(&stored, gateway, b.since_ms, checkpoint_at) });
                } else {
                    let stored = by_key.query_map(params![key, b.since_ms], read)?.collect::<rusqlite::Result<Vec<_>>>()?;
                    answer.counts.push(GuardCount { key: key.to_owned(), since_ms: b.since_ms, others: task::others(&stored, gateway, b.since_ms, checkpoint_at) });
                }
            }
            // The newest checkpoint of each task checkpointed recently, for every key of that task.
            let mut recent = tx.prepare_cached("SELECT task, MAX(seq), MAX(at_ms) FROM checkpoints WHERE at_ms >= ?1 GROUP BY task ORDER BY MAX(seq) DESC LIMIT ?2")?;
            let recent = recent
                .query_map(params![now_ms.saturating_sub(task::RECENT_CHECKPOINT_MS), task::MAX_DELIVERED_CHECKPOINTS as i64], |r| {
                    Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?, r.get::<_, i64>(2)?))
                })?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            let mut keys_of = tx.prepare_cached("SELECT DISTINCT key FROM guard_events WHERE task = ?1 LIMIT ?2")?;
            let mut seen: BTreeMap<String, ()> = BTreeMap::new();
            for (task_id, seq, at_ms) in recent {
                for key in keys_of.query_map(params![task_id, task::MAX_KEYS_PER_TASK as i64], |r| r.get::<_, String>(0))? {
                    let key = key?;
                    if seen.insert(key.clone(), ()).is_none() {
                        answer.checkpoints.push(GuardCheckpoint { key, checkpoint: format!("cp-{seq}"), at_ms });
                    }
                }
            }
        }
        tx.commit()?;
        Ok(answer)
    }
}
