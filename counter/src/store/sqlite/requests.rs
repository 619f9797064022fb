//! The ledger's records of a period, one by one: the policy simulator replays them
//! (`GET /admin/reports/requests`). A range scan on the `finished_at_ms` index, oldest first.

use super::super::RequestsQuery;
use rusqlite::{params, Connection};
use tollgate_core::protocol::{Tokens, UsageRecord};

pub(super) fn list(conn: &Connection, q: &RequestsQuery) -> rusqlite::Result<Vec<UsageRecord>> {
    let mut stmt = conn.prepare_cached(
        "SELECT id, org, cost_center, team, user, key_id, use_case, tier, task, dialect, requested_model, routed_model,
                input_tokens, output_tokens, cache_read_tokens, cache_write_tokens, reasoning_tokens,
                cost_micros, status, estimated, started_at_ms, finished_at_ms
         FROM ledger WHERE finished_at_ms >= ?1 AND finished_at_ms < ?2 ORDER BY finished_at_ms, id LIMIT ?3",
    )?;
    let limit = i64::try_from(q.limit).unwrap_or(i64::MAX);
    let rows = stmt.query_map(params![q.from_ms, q.to_ms, limit], |r| {
        let n = |i: usize| r.get::<_, i64>(i).map(|v| v.max(0) as u64);
        Ok(UsageRecord {
            id: r.get(0)?,
            principal: super::principal_at(r, 1)?,
            dialect: r.get(9)?,
            requested_model: r.get(10)?,
            routed_model: r.get(11)?,
            tokens: Tokens {
                input: n(12)?,
                output: n(13)?,
                cache_read: n(14)?,
                cache_write: n(15)?,
                reasoning: n(16)?,
                ..Default::default()
            },
            cost_micros: r.get(17)?,
            status: u16::try_from(r.get::<_, i64>(18)?).unwrap_or(0),
            estimated: r.get::<_, i64>(19)? != 0,
            started_at_ms: r.get(20)?,
            finished_at_ms: r.get(21)?,
            p99_reservations: Vec::new(),
        })
    })?;
    rows.collect()
}
