//! The Redis store's side of the cost handoff (`crate::task`).
//!
//! ```text
//! {ns}:checkpoints:<task>  hash    checkpoint number -> checkpoint json
//! {ns}:checkpoints:seq     string  the checkpoint numbers
//! {ns}:checkpoints:recent  zset    checkpoint number \t task, by time (delivered to gateways)
//! {ns}:guard:ev:<key>      hash    record id -> gateway, kind, time: one retry count's attempts,
//!                                  or one task's outcomes (its failure streak)
//! {ns}:guard:task:<task>   hash    record id -> kind, retry: the task's guard events
//! {ns}:guard:keys:<task>   set     the retry counts' keys seen with the task
//! ```
//! Guard events are stored and answered by one script (`guard_exchange.lua`), HSETNX by record
//! id (a redelivered batch counts once); their keys expire after `task::GUARD_RETAIN_MS`.
//! A summary scans the retained ledger stream (as the spend report does) and folds the task's
//! records with the same [`crate::task::summarise`] as the embedded store.

use super::{json, LedgerEntry, RedisStore};
use crate::store::{StoreError, StoreResult};
use crate::task::{self, summarise_with_guard, Checkpoint, Row, TaskSummary};
use redis::Script;
use std::sync::OnceLock;
use redis::FromRedisValue;
use tollgate_core::protocol::{GuardAnswer, GuardCheckpoint, GuardCount, GuardEvent, GuardEventKind, GuardStreak, UsageRecord};

fn guard_exchange_script() -> &'static Script {
    static SCRIPT: OnceLock<Script> = OnceLock::new();
    SCRIPT.get_or_init(|| Script::new(&format!("{}\n{}", include_str!("common.lua"), include_str!("guard_exchange.lua"))))
}

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
        let mut guard: Vec<(GuardEventKind, u32)> = Vec::new();
        for (_, value) in self.hgetall("task guard events", format!("{}guard:task:{task}", self.prefix)).await? {
            let (kind, retry) = value.split_once('\t').unwrap_or((value.as_str(), "0"));
            let kind = GuardEventKind::parse(kind).unwrap_or(GuardEventKind::Passed);
            guard.push((kind, retry.parse().unwrap_or(0)));
        }
        Ok(summarise_with_guard(
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
            guard,
        ))
    }

    pub(super) async fn exchange_guard_events(&self, gateway_id: &str, events: Vec<GuardEvent>, now_ms: i64) -> StoreResult<GuardAnswer> {
        let mut args = vec![
            gateway_id.to_owned(),
            now_ms.to_string(),
            task::GUARD_RETAIN_MS.to_string(),
            task::RECENT_CHECKPOINT_MS.to_string(),
            task::MAX_DELIVERED_CHECKPOINTS.to_string(),
            task::MAX_KEYS_PER_TASK.to_string(),
        ];
        for e in &events {
            args.extend([
                e.id.clone(),
                e.key.clone(),
                e.task.clone().unwrap_or_default(),
                e.kind.as_str().to_owned(),
                e.retry.to_string(),
                e.at_ms.to_string(),
                e.since_ms.to_string(),
            ]);
        }
        let v = self.eval("guard exchange", guard_exchange_script(), &args).await?;
        let bad = |e: redis::RedisError| StoreError::Internal(format!("redis: unexpected guard exchange answer: {e}"));
        let (counts, checkpoints, streaks) = <(Vec<String>, Vec<String>, Vec<String>)>::from_redis_value(&v).map_err(bad)?;
        let number = |s: &str| s.parse::<f64>().map(|f| f as i64).unwrap_or(0);
        Ok(GuardAnswer {
            counts: counts
                .chunks_exact(3)
                .map(|c| GuardCount { key: c[0].clone(), since_ms: number(&c[1]), others: u32::try_from(number(&c[2])).unwrap_or(0) })
                .collect(),
            streaks: streaks
                .chunks_exact(5)
                .map(|c| GuardStreak {
                    key: c[0].clone(),
                    since_ms: number(&c[1]),
                    others: u32::try_from(number(&c[2])).unwrap_or(0),
                    ended_ms: (!c[3].is_empty()).then(|| number(&c[3])),
                    own_since_end: u32::try_from(number(&c[4])).unwrap_or(0),
                })
                .collect(),
            checkpoints: checkpoints.chunks_exact(3).map(|c| GuardCheckpoint { key: c[0].clone(), checkpoint: c[1].clone(), at_ms: number(&c[2]) }).collect(),
        })
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
