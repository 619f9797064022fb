//! The Redis side of [`GovStore`]. Keys (same hash tag as everything else, see `redis.rs`):
//!
//! ```text
//! {ns}:workflows               hash    workflow id -> canonical spec JSON
//! {ns}:exemption_requests      hash    request id -> request JSON;  {ns}:exemption_requests:seq  its ids
//! {ns}:outcomes                hash    outcome id -> outcome JSON (HSETNX: the first write wins)
//! {ns}:outcomes:at             zset    outcome id scored by at_ms (ranged reads)
//! ```
//!
//! Each write is one Lua script that also appends its audit entry. A decision is compare-and-set:
//! the script applies it only if the request is still what was read (else the store reads again,
//! at most [`STALE_RETRIES`] times); an approval stores the exemption in the same script and bumps
//! the config version, so every counter instance reloads its exemptions before its next decision.

use super::{answer, json, text, RedisStore, STALE_RETRIES};
use crate::approval::{DecideOutcome, Decision, ExemptionRequest};
use crate::outcome::Outcome;
use crate::store::gov::{load_workflow, GovStore, PutWorkflow};
use crate::store::{StoreError, StoreResult};
use crate::workflow::{Workflow, WorkflowSpec};
use redis::Script;
use std::sync::OnceLock;

struct GovScripts {
    put: Script,
    delete: Script,
    add_request: Script,
    decide: Script,
    outcome: Script,
}

fn scripts() -> &'static GovScripts {
    static SCRIPTS: OnceLock<GovScripts> = OnceLock::new();
    SCRIPTS.get_or_init(|| {
        let s = |body: &str| Script::new(&format!("{}\n{}", include_str!("common.lua"), body));
        GovScripts {
            put: s(include_str!("gov_put.lua")),
            delete: s(include_str!("gov_delete.lua")),
            add_request: s(include_str!("gov_add_request.lua")),
            decide: s(include_str!("gov_decide.lua")),
            outcome: s(include_str!("gov_outcome.lua")),
        }
    })
}

fn bad(what: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Internal(format!("redis: stored {what}: {e}"))
}

impl RedisStore {
    async fn next_id(&self, what: &str, key: String) -> StoreResult<u64> {
        self.retry(what, |mut conn| {
            let key = key.clone();
            async move { redis::cmd("INCR").arg(key).query_async(&mut conn).await }
        })
        .await
    }

    async fn request(&self, id: u64) -> StoreResult<Option<String>> {
        let key = format!("{}exemption_requests", self.prefix);
        self.retry("read exemption request", |mut conn| {
            let key = key.clone();
            async move { redis::cmd("HGET").arg(key).arg(id).query_async(&mut conn).await }
        })
        .await
    }
}

impl GovStore for RedisStore {
    async fn put_workflow(&self, workflow: Workflow, actor: &str, now_ms: i64) -> StoreResult<PutWorkflow> {
        let id = workflow.id().to_owned();
        let args = [
            "workflows".to_owned(),
            id.clone(),
            json(&workflow.spec)?,
            actor.to_owned(),
            now_ms.to_string(),
            "workflow".into(),
            format!("workflow:{id}"),
        ];
        let (status, values) = answer(self.eval("put workflow", &scripts().put, &args).await?)?;
        match status.as_str() {
            "unchanged" => Ok(PutWorkflow::Unchanged),
            "created" => Ok(PutWorkflow::Created),
            "updated" => Ok(PutWorkflow::Updated {
                before: serde_json::from_str(&values.first().map(text).unwrap_or_default()).map_err(|e| bad("workflow", e))?,
            }),
            other => Err(StoreError::Internal(format!("redis: put workflow answered `{other}`"))),
        }
    }

    async fn delete_workflow(&self, id: &str, actor: &str, now_ms: i64) -> StoreResult<Option<WorkflowSpec>> {
        let args = ["workflows".to_owned(), id.to_owned(), actor.to_owned(), now_ms.to_string(), "workflow".into(), format!("workflow:{id}")];
        let (status, values) = answer(self.eval("delete workflow", &scripts().delete, &args).await?)?;
        match status.as_str() {
            "none" => Ok(None),
            _ => serde_json::from_str(&values.first().map(text).unwrap_or_default()).map(Some).map_err(|e| bad("workflow", e)),
        }
    }

    async fn put_seats(&self, seats: crate::seats::Seats, actor: &str, now_ms: i64) -> StoreResult<crate::seats::PutSeats> {
        use crate::seats::PutSeats;
        let args = ["documents".to_owned(), "seats".to_owned(), json(&seats.spec)?, actor.to_owned(), now_ms.to_string(), "seats".into(), "seats".into()];
        let (status, _) = answer(self.eval("put seats", &scripts().put, &args).await?)?;
        match status.as_str() {
            "unchanged" => Ok(PutSeats::Unchanged),
            "created" => Ok(PutSeats::Created),
            "updated" => Ok(PutSeats::Updated),
            other => Err(StoreError::Internal(format!("redis: put seats answered `{other}`"))),
        }
    }

    async fn get_seats(&self) -> StoreResult<Option<crate::seats::SeatsSpec>> {
        let all = self.hgetall("get seats", format!("{}documents", self.prefix)).await?;
        all.into_iter().find(|(k, _)| k == "seats").map(|(_, v)| serde_json::from_str(&v).map_err(|e| bad("seats", e))).transpose()
    }

    async fn list_workflows(&self) -> StoreResult<Vec<Workflow>> {
        let mut out = Vec::new();
        for (id, spec) in self.hgetall("list workflows", format!("{}workflows", self.prefix)).await? {
            out.push(load_workflow(&id, &spec)?);
        }
        out.sort_by(|a, b| a.spec.id.cmp(&b.spec.id));
        Ok(out)
    }

    async fn add_exemption_request(&self, mut request: ExemptionRequest, actor: &str, now_ms: i64) -> StoreResult<ExemptionRequest> {
        // The id is taken first: a retried script then finds it taken instead of storing twice.
        request.id = self.next_id("add exemption request", format!("{}exemption_requests:seq", self.prefix)).await?;
        let args = [request.id.to_string(), json(&request)?, actor.to_owned(), now_ms.to_string()];
        self.eval("add exemption request", &scripts().add_request, &args).await?;
        Ok(request)
    }

    async fn list_exemption_requests(&self) -> StoreResult<Vec<ExemptionRequest>> {
        let mut out = Vec::new();
        for (_, body) in self.hgetall("list exemption requests", format!("{}exemption_requests", self.prefix)).await? {
            out.push(serde_json::from_str::<ExemptionRequest>(&body).map_err(|e| bad("exemption request", e))?);
        }
        out.sort_by_key(|r| r.id);
        Ok(out)
    }

    async fn decide_exemption_request(&self, id: u64, decision: Decision, actor: &str, now_ms: i64) -> StoreResult<DecideOutcome> {
        for _ in 0..STALE_RETRIES {
            let Some(before) = self.request(id).await? else { return Ok(DecideOutcome::NotFound) };
            let request: ExemptionRequest = serde_json::from_str(&before).map_err(|e| bad("exemption request", e))?;
            let DecideOutcome::Decided(mut after, exemption) = request.decide(&decision, actor, now_ms) else {
                return Ok(request.decide(&decision, actor, now_ms));
            };
            let exemption = match exemption {
                Some(mut e) => {
                    e.id = self.next_id("approve exemption request", format!("{}exemptions:seq", self.prefix)).await?;
                    after.exemption_id = Some(e.id);
                    Some(e)
                }
                None => None,
            };
            let action = if decision.approve { "exemption_request.approve" } else { "exemption_request.reject" };
            let args = [
                id.to_string(),
                before,
                json(&after)?,
                action.to_owned(),
                exemption.as_ref().map(|e| e.id.to_string()).unwrap_or_default(),
                exemption.as_ref().map(json).transpose()?.unwrap_or_default(),
                actor.to_owned(),
                now_ms.to_string(),
            ];
            let (status, _) = answer(self.eval("decide exemption request", &scripts().decide, &args).await?)?;
            if status == "ok" {
                return Ok(DecideOutcome::Decided(after, exemption));
            }
        }
        Err(StoreError::Unavailable(format!("exemption request {id}: it kept changing while this ran; retry")))
    }

    async fn record_outcome(&self, outcome: Outcome) -> StoreResult<(Outcome, bool)> {
        let args = [outcome.id.clone(), outcome.at_ms.to_string(), json(&outcome)?];
        let (status, values) = answer(self.eval("record outcome", &scripts().outcome, &args).await?)?;
        match status.as_str() {
            "created" => Ok((outcome, true)),
            _ => Ok((serde_json::from_str(&values.first().map(text).unwrap_or_default()).map_err(|e| bad("outcome", e))?, false)),
        }
    }

    async fn list_outcomes(&self, from_ms: i64, to_ms: i64) -> StoreResult<Vec<Outcome>> {
        let index = format!("{}outcomes:at", self.prefix);
        let ids: Vec<String> = self
            .retry("list outcomes", |mut conn| {
                let index = index.clone();
                let to = if to_ms == i64::MAX { "+inf".to_owned() } else { format!("({to_ms}") };
                async move { redis::cmd("ZRANGEBYSCORE").arg(index).arg(from_ms).arg(to).query_async(&mut conn).await }
            })
            .await?;
        let mut out = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(1000) {
            let key = format!("{}outcomes", self.prefix);
            let bodies: Vec<Option<String>> = self
                .retry("list outcomes", |mut conn| {
                    let (key, chunk) = (key.clone(), chunk.to_vec());
                    async move { redis::cmd("HMGET").arg(key).arg(chunk).query_async(&mut conn).await }
                })
                .await?;
            for body in bodies.into_iter().flatten() {
                out.push(serde_json::from_str::<Outcome>(&body).map_err(|e| bad("outcome", e))?);
            }
        }
        out.sort_by(|a, b| (a.at_ms, &a.id).cmp(&(b.at_ms, &b.id)));
        Ok(out)
    }
}
