//! The events log and webhook outbox of the Redis store ([`EventLog`], contract in
//! `notify/mod.rs`). Every step is one Lua script, so counter instances sharing a namespace
//! agree: the first to `SET NX` an event's key records it; a claimed delivery is re-scored into
//! the future, so no other instance takes it until the claim runs out.
//!
//! ```text
//! {ns}:event:key:<key>   string  seq of the event recorded under that dedup key (SET NX)
//! {ns}:events            hash    seq -> {"event": Event (seq 0), "targets": [webhook names]}
//! {ns}:events:seq        string  last seq
//! {ns}:outbox            zset    "<seq>|<webhook>" scored by next attempt (ms); only undelivered
//! {ns}:outbox:state      hash    "<seq>|<webhook>" -> Delivery JSON (attempts, error, delivered_at_ms)
//! ```

use super::{number, text, RedisStore};
use crate::notify::{Claimed, Delivery, Event, EventDraft, EventLog, EventQuery, EventRow};
use crate::store::{StoreError, StoreResult};
use redis::{FromRedisValue, Script, Value};
use serde::{Deserialize, Serialize};
use std::sync::LazyLock;

/// ARGV: prefix, key, event json, then one (member, state json) pair per target.
/// Returns the new seq, or 0 if the key was recorded before.
const RECORD: &str = r#"
local P = ARGV[1]
if not redis.call('SET', P .. 'event:key:' .. ARGV[2], '0', 'NX') then return 0 end
local seq = redis.call('INCR', P .. 'events:seq')
redis.call('SET', P .. 'event:key:' .. ARGV[2], seq)
redis.call('HSET', P .. 'events', seq, ARGV[3])
local now = ARGV[4]
for i = 5, #ARGV, 2 do
  local member = seq .. '|' .. ARGV[i]
  redis.call('ZADD', P .. 'outbox', now, member)
  redis.call('HSET', P .. 'outbox:state', member, ARGV[i + 1])
end
return seq
"#;

/// ARGV: prefix, now, limit, claimed-until. Returns member, event, state triples.
const CLAIM: &str = r#"
local P = ARGV[1]
local due = redis.call('ZRANGEBYSCORE', P .. 'outbox', '-inf', ARGV[2], 'LIMIT', 0, tonumber(ARGV[3]))
local out = {}
for _, m in ipairs(due) do
  redis.call('ZADD', P .. 'outbox', ARGV[4], m)
  local seq = string.match(m, '^(%d+)|')
  out[#out + 1] = m
  out[#out + 1] = redis.call('HGET', P .. 'events', seq) or ''
  out[#out + 1] = redis.call('HGET', P .. 'outbox:state', m) or ''
end
return out
"#;

/// ARGV: prefix, member, delivered ('1'/'0'), next_at, state json. A delivered one is not touched.
const SETTLE: &str = r#"
local P = ARGV[1]
if not redis.call('ZSCORE', P .. 'outbox', ARGV[2]) then return 0 end
if ARGV[3] == '1' then
  redis.call('ZREM', P .. 'outbox', ARGV[2])
else
  redis.call('ZADD', P .. 'outbox', ARGV[4], ARGV[2])
end
redis.call('HSET', P .. 'outbox:state', ARGV[2], ARGV[5])
return 1
"#;

/// Wraps each script like the store's own: KEYS[1] (the version key) routes it to the namespace's slot.
static SCRIPTS: LazyLock<[Script; 3]> = LazyLock::new(|| [Script::new(RECORD), Script::new(CLAIM), Script::new(SETTLE)]);

#[derive(Serialize, Deserialize)]
struct Stored {
    event: Event,
    targets: Vec<String>,
}

fn bad(e: impl std::fmt::Display) -> StoreError {
    StoreError::Internal(format!("redis events: {e}"))
}

fn member(seq: u64, target: &str) -> String {
    format!("{seq}|{target}")
}

fn state(seq: u64, text: &str, target: &str) -> Delivery {
    let mut d: Delivery = serde_json::from_str(text).unwrap_or(Delivery {
        seq,
        target: target.to_owned(),
        attempts: 0,
        next_at_ms: 0,
        delivered_at_ms: None,
        last_error: None,
    });
    d.seq = seq;
    d
}

impl EventLog for RedisStore {
    async fn record_event(&self, draft: &EventDraft, targets: &[String], now_ms: i64) -> StoreResult<Option<Event>> {
        let stored = Stored { event: Event { seq: 0, at_ms: now_ms, draft: draft.clone() }, targets: targets.to_vec() };
        let mut args = vec![draft.key.clone(), serde_json::to_string(&stored).map_err(bad)?, now_ms.to_string()];
        for t in targets {
            let d = Delivery { seq: 0, target: t.clone(), attempts: 0, next_at_ms: now_ms, delivered_at_ms: None, last_error: None };
            args.push(t.clone());
            args.push(serde_json::to_string(&d).map_err(bad)?);
        }
        let v = self.eval("record event", &SCRIPTS[0], &args).await?;
        let seq = number(Some(&v))?;
        if seq <= 0 {
            return Ok(None);
        }
        let mut event = stored.event;
        event.seq = seq as u64;
        Ok(Some(event))
    }

    async fn list_events(&self, query: &EventQuery) -> StoreResult<Vec<EventRow>> {
        let last: Option<i64> = self
            .retry("list events", |mut conn| {
                let key = format!("{}events:seq", self.prefix);
                async move { redis::cmd("GET").arg(key).query_async(&mut conn).await }
            })
            .await?;
        let mut out = Vec::new();
        let mut seq = last.unwrap_or(0);
        while seq > 0 && out.len() < query.limit {
            let ids: Vec<i64> = (seq.saturating_sub(199).max(1)..=seq).rev().collect();
            seq = ids.last().copied().unwrap_or(1) - 1;
            let bodies: Vec<Option<String>> = self
                .retry("list events", |mut conn| {
                    let (key, ids) = (format!("{}events", self.prefix), ids.clone());
                    async move { redis::cmd("HMGET").arg(key).arg(ids).query_async(&mut conn).await }
                })
                .await?;
            for (id, body) in ids.iter().zip(bodies) {
                let Some(body) = body else { continue };
                let mut stored: Stored = serde_json::from_str(&body).map_err(bad)?;
                stored.event.seq = *id as u64;
                if !query.matches(&stored.event) || out.len() >= query.limit {
                    continue;
                }
                let mut deliveries = Vec::new();
                if !stored.targets.is_empty() {
                    let members: Vec<String> = stored.targets.iter().map(|t| member(*id as u64, t)).collect();
                    let states: Vec<Option<String>> = self
                        .retry("list events", |mut conn| {
                            let (key, members) = (format!("{}outbox:state", self.prefix), members.clone());
                            async move { redis::cmd("HMGET").arg(key).arg(members).query_async(&mut conn).await }
                        })
                        .await?;
                    for (t, s) in stored.targets.iter().zip(states) {
                        deliveries.push(state(*id as u64, s.as_deref().unwrap_or(""), t));
                    }
                }
                out.push(EventRow { event: stored.event, deliveries });
            }
        }
        Ok(out)
    }

    async fn claim_deliveries(&self, now_ms: i64, limit: usize, claim_ms: i64) -> StoreResult<Vec<Claimed>> {
        let args = [now_ms.to_string(), limit.to_string(), now_ms.saturating_add(claim_ms).to_string()];
        let v = self.eval("claim deliveries", &SCRIPTS[1], &args).await?;
        let items = Vec::<Value>::from_redis_value(&v).map_err(bad)?;
        let mut out = Vec::new();
        for chunk in items.chunks(3) {
            let [m, body, st] = chunk else { break };
            let m = text(m);
            let Some((seq, target)) = m.split_once('|') else { continue };
            let seq: u64 = seq.parse().map_err(bad)?;
            let mut stored: Stored = serde_json::from_str(&text(body)).map_err(bad)?;
            stored.event.seq = seq;
            out.push(Claimed { event: stored.event, delivery: state(seq, &text(st), target) });
        }
        Ok(out)
    }

    async fn settle_delivery(&self, delivery: &Delivery, delivered: bool, error: Option<String>, next_at_ms: i64, now_ms: i64) -> StoreResult<()> {
        let after = Delivery {
            seq: delivery.seq,
            target: delivery.target.clone(),
            attempts: delivery.attempts.saturating_add(1),
            next_at_ms,
            delivered_at_ms: delivered.then_some(now_ms),
            last_error: error,
        };
        let args = [
            member(delivery.seq, &delivery.target),
            if delivered { "1".into() } else { "0".into() },
            next_at_ms.to_string(),
            serde_json::to_string(&after).map_err(bad)?,
        ];
        self.eval("settle delivery", &SCRIPTS[2], &args).await?;
        Ok(())
    }

    async fn pending_deliveries(&self) -> StoreResult<u64> {
        let n: u64 = self
            .retry("count outbox", |mut conn| {
                let key = format!("{}outbox", self.prefix);
                async move { redis::cmd("ZCARD").arg(key).query_async(&mut conn).await }
            })
            .await?;
        Ok(n)
    }
}
