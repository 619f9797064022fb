//! The SQLite side of [`GovStore`]: three tables, written by the store's one writer thread (each
//! change its own transaction, committed before the answer), read through the reader connection.
//!
//! An approval writes the decided request, the new exemption and both audit rows in one
//! transaction, then puts the exemption in the in-memory book (as `add_exemption` does), so leases
//! see it from the next call.

use super::{internal, lock, sat, Job, Reply, SqliteStore, Writer};
use crate::approval::{DecideOutcome, Decision, ExemptionRequest};
use crate::outcome::Outcome;
use crate::store::gov::{load_workflow, GovStore, PutWorkflow};
use crate::store::StoreResult;
use crate::workflow::{Workflow, WorkflowSpec};
use rusqlite::{params, OptionalExtension, TransactionBehavior};

pub(super) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS workflows (id TEXT PRIMARY KEY, spec TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS exemption_requests (id INTEGER PRIMARY KEY AUTOINCREMENT, body TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS outcomes (id TEXT PRIMARY KEY, at_ms INTEGER NOT NULL, body TEXT NOT NULL) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS outcomes_at ON outcomes (at_ms);
CREATE TABLE IF NOT EXISTS documents (name TEXT PRIMARY KEY, body TEXT NOT NULL);
";

/// Governance work for the writer thread.
pub(crate) enum GovJob {
    PutWorkflow { workflow: Workflow, actor: String, now_ms: i64, reply: Reply<PutWorkflow> },
    DeleteWorkflow { id: String, actor: String, now_ms: i64, reply: Reply<Option<WorkflowSpec>> },
    AddRequest { request: ExemptionRequest, actor: String, now_ms: i64, reply: Reply<ExemptionRequest> },
    Decide { id: u64, decision: Decision, actor: String, now_ms: i64, reply: Reply<DecideOutcome> },
    Outcome { outcome: Outcome, reply: Reply<(Outcome, bool)> },
    PutSeats { seats: crate::seats::Seats, actor: String, now_ms: i64, reply: Reply<crate::seats::PutSeats> },
}

fn json<T: serde::Serialize>(v: &T) -> StoreResult<String> {
    serde_json::to_string(v).map_err(internal)
}

impl Writer {
    pub(super) fn gov(&mut self, job: GovJob) {
        match job {
            GovJob::PutWorkflow { workflow, actor, now_ms, reply } => {
                let _ = reply.send(self.put_workflow(workflow, &actor, now_ms));
            }
            GovJob::DeleteWorkflow { id, actor, now_ms, reply } => {
                let _ = reply.send(self.delete_workflow(&id, &actor, now_ms));
            }
            GovJob::AddRequest { request, actor, now_ms, reply } => {
                let _ = reply.send(self.add_request(request, &actor, now_ms));
            }
            GovJob::Decide { id, decision, actor, now_ms, reply } => {
                let _ = reply.send(self.decide(id, &decision, &actor, now_ms));
            }
            GovJob::Outcome { outcome, reply } => {
                let _ = reply.send(self.record_outcome(outcome));
            }
            GovJob::PutSeats { seats, actor, now_ms, reply } => {
                let _ = reply.send(self.put_seats(seats, &actor, now_ms));
            }
        }
    }

    fn put_workflow(&mut self, workflow: Workflow, actor: &str, now_ms: i64) -> StoreResult<PutWorkflow> {
        let id = workflow.id().to_owned();
        let after = json(&workflow.spec)?;
        let tx = self.conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(internal)?;
        let before: Option<String> =
            tx.query_row("SELECT spec FROM workflows WHERE id = ?1", params![id], |r| r.get(0)).optional().map_err(internal)?;
        if before.as_deref() == Some(after.as_str()) {
            return Ok(PutWorkflow::Unchanged);
        }
        tx.execute("INSERT OR REPLACE INTO workflows (id, spec) VALUES (?1, ?2)", params![id, after]).map_err(internal)?;
        let action = if before.is_some() { "workflow.update" } else { "workflow.create" };
        Self::audit_row(&tx, now_ms, actor, action, &format!("workflow:{id}"), before.clone(), Some(after)).map_err(internal)?;
        tx.commit().map_err(internal)?;
        Ok(match before {
            Some(b) => PutWorkflow::Updated { before: serde_json::from_str(&b).map_err(internal)? },
            None => PutWorkflow::Created,
        })
    }

    fn put_seats(&mut self, seats: crate::seats::Seats, actor: &str, now_ms: i64) -> StoreResult<crate::seats::PutSeats> {
        use crate::seats::PutSeats;
        let after = json(&seats.spec)?;
        let tx = self.conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(internal)?;
        let before: Option<String> =
            tx.query_row("SELECT body FROM documents WHERE name = 'seats'", [], |r| r.get(0)).optional().map_err(internal)?;
        if before.as_deref() == Some(after.as_str()) {
            return Ok(PutSeats::Unchanged);
        }
        tx.execute("INSERT OR REPLACE INTO documents (name, body) VALUES ('seats', ?1)", params![after]).map_err(internal)?;
        let action = if before.is_some() { "seats.update" } else { "seats.create" };
        Self::audit_row(&tx, now_ms, actor, action, "seats", before.clone(), Some(after)).map_err(internal)?;
        tx.commit().map_err(internal)?;
        Ok(if before.is_some() { PutSeats::Updated } else { PutSeats::Created })
    }

    fn delete_workflow(&mut self, id: &str, actor: &str, now_ms: i64) -> StoreResult<Option<WorkflowSpec>> {
        let tx = self.conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(internal)?;
        let before: Option<String> =
            tx.query_row("SELECT spec FROM workflows WHERE id = ?1", params![id], |r| r.get(0)).optional().map_err(internal)?;
        let Some(before) = before else { return Ok(None) };
        tx.execute("DELETE FROM workflows WHERE id = ?1", params![id]).map_err(internal)?;
        Self::audit_row(&tx, now_ms, actor, "workflow.delete", &format!("workflow:{id}"), Some(before.clone()), None).map_err(internal)?;
        tx.commit().map_err(internal)?;
        Ok(Some(serde_json::from_str(&before).map_err(internal)?))
    }

    fn add_request(&mut self, mut request: ExemptionRequest, actor: &str, now_ms: i64) -> StoreResult<ExemptionRequest> {
        let tx = self.conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(internal)?;
        tx.execute("INSERT INTO exemption_requests (body) VALUES ('{}')", []).map_err(internal)?;
        request.id = tx.last_insert_rowid().max(0) as u64;
        let body = json(&request)?;
        tx.execute("UPDATE exemption_requests SET body = ?1 WHERE id = ?2", params![body, sat(request.id)]).map_err(internal)?;
        Self::audit_row(&tx, now_ms, actor, "exemption_request.create", &format!("exemption_request:{}", request.id), None, Some(body))
            .map_err(internal)?;
        tx.commit().map_err(internal)?;
        Ok(request)
    }

    fn decide(&mut self, id: u64, decision: &Decision, actor: &str, now_ms: i64) -> StoreResult<DecideOutcome> {
        let tx = self.conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(internal)?;
        let before: Option<String> = tx
            .query_row("SELECT body FROM exemption_requests WHERE id = ?1", params![sat(id)], |r| r.get(0))
            .optional()
            .map_err(internal)?;
        let Some(before) = before else { return Ok(DecideOutcome::NotFound) };
        let request: ExemptionRequest = serde_json::from_str(&before).map_err(internal)?;
        let DecideOutcome::Decided(mut after, exemption) = request.decide(decision, actor, now_ms) else {
            return Ok(request.decide(decision, actor, now_ms));
        };
        let exemption = match exemption {
            Some(mut e) => {
                tx.execute("INSERT INTO exemptions (body) VALUES ('{}')", []).map_err(internal)?;
                e.id = tx.last_insert_rowid().max(0) as u64;
                let body = json(&e)?;
                tx.execute("UPDATE exemptions SET body = ?1 WHERE id = ?2", params![body, sat(e.id)]).map_err(internal)?;
                Self::audit_row(&tx, now_ms, actor, "exemption.add", &format!("exemption:{}", e.id), None, Some(body)).map_err(internal)?;
                after.exemption_id = Some(e.id);
                Some(e)
            }
            None => None,
        };
        let body = json(&after)?;
        tx.execute("UPDATE exemption_requests SET body = ?1 WHERE id = ?2", params![body, sat(id)]).map_err(internal)?;
        let action = if decision.approve { "exemption_request.approve" } else { "exemption_request.reject" };
        Self::audit_row(&tx, now_ms, actor, action, &format!("exemption_request:{id}"), Some(before), Some(body)).map_err(internal)?;
        tx.commit().map_err(internal)?;
        if let Some(e) = &exemption {
            lock(&self.book).put_exemption(e.clone());
        }
        Ok(DecideOutcome::Decided(after, exemption))
    }

    fn record_outcome(&mut self, outcome: Outcome) -> StoreResult<(Outcome, bool)> {
        let body = json(&outcome)?;
        let tx = self.conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(internal)?;
        let inserted = tx
            .execute("INSERT OR IGNORE INTO outcomes (id, at_ms, body) VALUES (?1, ?2, ?3)", params![outcome.id, outcome.at_ms, body])
            .map_err(internal)?;
        if inserted == 1 {
            tx.commit().map_err(internal)?;
            return Ok((outcome, true));
        }
        let stored: String = tx.query_row("SELECT body FROM outcomes WHERE id = ?1", params![outcome.id], |r| r.get(0)).map_err(internal)?;
        Ok((serde_json::from_str(&stored).map_err(internal)?, false))
    }
}

impl GovStore for SqliteStore {
    async fn put_workflow(&self, workflow: Workflow, actor: &str, now_ms: i64) -> StoreResult<PutWorkflow> {
        let actor = actor.to_owned();
        self.submit(|reply| Job::Gov(GovJob::PutWorkflow { workflow, actor, now_ms, reply })).await
    }

    async fn delete_workflow(&self, id: &str, actor: &str, now_ms: i64) -> StoreResult<Option<WorkflowSpec>> {
        let (id, actor) = (id.to_owned(), actor.to_owned());
        self.submit(|reply| Job::Gov(GovJob::DeleteWorkflow { id, actor, now_ms, reply })).await
    }

    async fn list_workflows(&self) -> StoreResult<Vec<Workflow>> {
        let rows = self
            .read(|conn| {
                let mut stmt = conn.prepare_cached("SELECT id, spec FROM workflows ORDER BY id")?;
                let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?;
                rows.collect::<rusqlite::Result<Vec<_>>>()
            })
            .await?;
        rows.iter().map(|(id, spec)| load_workflow(id, spec)).collect()
    }

    async fn add_exemption_request(&self, request: ExemptionRequest, actor: &str, now_ms: i64) -> StoreResult<ExemptionRequest> {
        let actor = actor.to_owned();
        self.submit(|reply| Job::Gov(GovJob::AddRequest { request, actor, now_ms, reply })).await
    }

    async fn list_exemption_requests(&self) -> StoreResult<Vec<ExemptionRequest>> {
        let rows = self
            .read(|conn| {
                let mut stmt = conn.prepare_cached("SELECT body FROM exemption_requests ORDER BY id")?;
                let rows = stmt.query_map([], |r| r.get::<_, String>(0))?;
                rows.collect::<rusqlite::Result<Vec<_>>>()
            })
            .await?;
        rows.iter().map(|b| serde_json::from_str(b).map_err(internal)).collect()
    }

    async fn decide_exemption_request(&self, id: u64, decision: Decision, actor: &str, now_ms: i64) -> StoreResult<DecideOutcome> {
        let actor = actor.to_owned();
        self.submit(|reply| Job::Gov(GovJob::Decide { id, decision, actor, now_ms, reply })).await
    }

    async fn record_outcome(&self, outcome: Outcome) -> StoreResult<(Outcome, bool)> {
        self.submit(|reply| Job::Gov(GovJob::Outcome { outcome, reply })).await
    }

    async fn list_outcomes(&self, from_ms: i64, to_ms: i64) -> StoreResult<Vec<Outcome>> {
        let rows = self
            .read(move |conn| {
                let mut stmt = conn.prepare_cached("SELECT body FROM outcomes WHERE at_ms >= ?1 AND at_ms < ?2 ORDER BY at_ms, id")?;
                let rows = stmt.query_map(params![from_ms, to_ms], |r| r.get::<_, String>(0))?;
                rows.collect::<rusqlite::Result<Vec<_>>>()
            })
            .await?;
        rows.iter().map(|b| serde_json::from_str(b).map_err(internal)).collect()
    }

    async fn put_seats(&self, seats: crate::seats::Seats, actor: &str, now_ms: i64) -> StoreResult<crate::seats::PutSeats> {
        let actor = actor.to_owned();
        self.submit(|reply| Job::Gov(GovJob::PutSeats { seats, actor, now_ms, reply })).await
    }

    async fn get_seats(&self) -> StoreResult<Option<crate::seats::SeatsSpec>> {
        let body = self
            .read(|conn| conn.query_row("SELECT body FROM documents WHERE name = 'seats'", [], |r| r.get::<_, String>(0)).optional())
            .await?;
        body.map(|b| serde_json::from_str(&b).map_err(internal)).transpose()
    }
}
