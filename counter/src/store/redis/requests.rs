//! The ledger's records of a period, for the policy simulator (`GET /admin/reports/requests`).
//! The ledger stream is in ingestion order, not finish order, so the whole stream is scanned (as
//! the spend report does) and the matching records sorted by `finished_at_ms`, then id.

use super::{field, LedgerEntry, RedisStore};
use crate::store::{RequestsQuery, StoreResult};
use tollgate_core::protocol::UsageRecord;

pub(super) async fn list(store: &RedisStore, q: RequestsQuery) -> StoreResult<Vec<UsageRecord>> {
    let mut out = Vec::new();
    store
        .scan_stream("requests report", &format!("{}ledger", store.prefix), false, |fields| {
            if let Some(entry) = field(fields, "r").and_then(|r| serde_json::from_slice::<LedgerEntry>(r).ok()) {
                let r = entry.record;
                if r.finished_at_ms >= q.from_ms && r.finished_at_ms < q.to_ms {
                    out.push(r);
                }
            }
            true
        })
        .await?;
    out.sort_by(|a, b| (a.finished_at_ms, &a.id).cmp(&(b.finished_at_ms, &b.id)));
    out.truncate(q.limit);
    Ok(out)
}
