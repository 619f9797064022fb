//! The Redis store's side of the cost handoff (`crate::task`).
//!
//! ```text
//! {ns}:checkpoints:<task>  hash    checkpoint number -> checkpoint json
//! {ns}:checkpoints:seq     string  the checkpoint numbers
//! ```
//! A summary scans the retained ledger stream (as the spend report does) and folds the task's
//! records with the same [`crate::task::summarise`] as the embedded store.

use super::{json, LedgerEntry, RedisStore};
use crate::store::{StoreError, StoreResult};
use crate::task::{summarise, Checkpoint, Row, TaskSummary};
use redis::Script;
use std::sync::OnceLock;
use tollgate_core::protocol::UsageRecord;

fn add_checkpoint_script() -> &'static Script {
    static SCRIPT: OnceLock<Script> = OnceLock::new();
    SCRIPT.get_or_init(|| Script::new(&format!("{}\n{}", include_str!("common.lua"), include_str!("add_checkpoint.lua"))))
}

impl RedisStore {
    pub(super) async fn read_task_summary(&self, task: &str) -> StoreResult<TaskSummary> {
        let mut records: Vec<UsageRecord> = Vec::new();
        self.scan_stream("task summary", &format!("{}ledger", self.prefix), false, |fields| {
            if let Some(entry) = super::field(fields, "r").and_then(|r| serde_json::from_slice::<LedgerEntry>(r).ok()) {
                if entry.record.principal.task.as_deref() == Some(task) {
                    records.push(entry.record);
                }
            }
            true
        })
        .await?;
        let mut checkpoints: Vec<(u64, Checkpoint)> = Vec::new();
        for (n, body) in self.hgetall("task checkpoints", format!("{}checkpoints:{task}", self.prefix)).await? {
            let c: Checkpoint = serde_json::from_str(&body).map_err(|e| StoreError::Internal(format!("redis: checkpoint {n}: {e}")))?;
            checkpoints.push((n.parse().unwrap_or(u64::MAX), c));
        }
        checkpoints.sort_by_key(|(n, _)| *n);
        Ok(summarise(
            task,
            records.iter().map(|r| Row {
                key_id: r.principal.key_id.as_deref(),
                routed_model: &r.routed_model,
                tokens: &r.tokens,
                cost_micros: r.cost_micros,
                status: r.status,
                estimated: r.estimated,
                started_at_ms: r.started_at_ms,
                finished_at_ms: r.finished_at_ms,
            }),
            checkpoints.into_iter().map(|(_, c)| c).collect(),
        ))
    }

    pub(super) async fn write_checkpoint(&self, mut checkpoint: Checkpoint, actor: &str) -> StoreResult<Checkpoint> {
        let seq_key = format!("{}checkpoints:seq", self.prefix);
        // The number is taken first and separately, like an exemption id: a retried store then
        // finds it taken instead of recording the checkpoint twice.
        let n: u64 = self
            .retry("add checkpoint", |mut conn| {
                let key = seq_key.clone();
                async move { redis::cmd("INCR").arg(key).query_async(&mut conn).await }
            })
            .await?;
        checkpoint.id = format!("cp-{n}");
        checkpoint.actor = actor.to_owned();
        let args = [n.to_string(), checkpoint.task.clone(), json(&checkpoint)?, actor.to_owned(), checkpoint.at_ms.to_string()];
        self.eval("add checkpoint", add_checkpoint_script(), &args).await?;
        Ok(checkpoint)
    }
}
