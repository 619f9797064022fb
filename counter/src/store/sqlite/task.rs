//! The embedded store's side of the cost handoff (`crate::task`): a task's ledger rows (indexed by
//! `ledger_task`) folded into a summary, and checkpoints in their own table, written on the
//! writer thread with their audit row in one transaction.

use super::{internal, Job, SqliteStore, Writer};
use crate::store::StoreResult;
use crate::task::{summarise, Checkpoint, Row, TaskSummary};
use rusqlite::{params, TransactionBehavior};
use tokio::sync::oneshot;
use tollgate_core::protocol::Tokens;

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
            Ok(summarise(
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
            ))
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
