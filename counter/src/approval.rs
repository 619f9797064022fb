//! Exemption requests with approval: a team lead asks for a temporary increase, someone else with
//! the `approver` role approves or rejects it, and only an approved request becomes an
//! [`Exemption`] — the existing mechanism, which takes effect at its start and ends by itself.
//!
//! ```text
//! POST /admin/exemption-requests            requester  {"scope","amount","starts_at"?,"ends_at","reason","use_case"?}
//! POST /admin/exemption-requests/{id}/approve  approver   {"note"?}  -> the request + the exemption it created
//! POST /admin/exemption-requests/{id}/reject   approver   {"note"?}
//! ```
//!
//! A request is decided once (pending → approved | rejected). The approver's token name must differ
//! from the requester's. Approving marks the request and adds the exemption in one atomic store
//! step, so there is never an approved request without its exemption or the reverse; every step is
//! in the audit log (`exemption_request.create|approve|reject`, subject `exemption_request:<id>`,
//! and `exemption.add` for the exemption).

use crate::budget::{Exemption, ExemptionSpec};
use serde::{Deserialize, Serialize};
use tollgate_core::money::Micros;

/// What a requester sends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExemptionRequestSpec {
    pub scope: String,
    /// Extra dollars, decimal string.
    pub amount: String,
    /// Default: now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub starts_at: Option<String>,
    pub ends_at: String,
    pub reason: String,
    /// The workflow (use case) it is for; shows in that workflow's monthly review.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub use_case: Option<String>,
}

/// Where a request stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RequestState {
    Pending,
    Approved,
    Rejected,
}

/// A stored request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExemptionRequest {
    pub id: u64,
    pub scope: String,
    pub amount_micros: Micros,
    pub starts_at_ms: i64,
    pub ends_at_ms: i64,
    pub reason: String,
    #[serde(default)]
    pub use_case: Option<String>,
    pub requested_by: String,
    pub requested_at_ms: i64,
    pub state: RequestState,
    #[serde(default)]
    pub decided_by: Option<String>,
    #[serde(default)]
    pub decided_at_ms: Option<i64>,
    #[serde(default)]
    pub note: Option<String>,
    /// The exemption an approval created.
    #[serde(default)]
    pub exemption_id: Option<u64>,
}

/// The body of approve / reject (may be empty).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DecisionBody {
    #[serde(default)]
    pub note: Option<String>,
}

/// A decision as the store applies it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub approve: bool,
    pub note: Option<String>,
}

/// What [`crate::store::gov::GovStore::decide_exemption_request`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecideOutcome {
    /// Decided now; with the exemption an approval created.
    Decided(ExemptionRequest, Option<Exemption>),
    /// Already approved or rejected: nothing changed.
    AlreadyDecided(ExemptionRequest),
    /// The caller filed it: requester ≠ approver.
    OwnRequest(ExemptionRequest),
    /// Its window is over; approving it would grant nothing.
    Expired(ExemptionRequest),
    NotFound,
}

impl ExemptionRequest {
    /// Validates a spec with the same rules as an exemption (scope, amount, times, reason).
    pub fn from_spec(spec: ExemptionRequestSpec, requested_by: &str, now_ms: i64) -> Result<ExemptionRequest, String> {
        if let Some(u) = &spec.use_case {
            if !crate::budget::valid_id(u) {
                return Err(format!("use_case: `{u}` is not a workflow id (1-128 of A-Z a-z 0-9 . _ -)"));
            }
        }
        let as_exemption = ExemptionSpec {
            scope: spec.scope,
            amount: spec.amount,
            starts_at: spec.starts_at,
            ends_at: spec.ends_at,
            reason: spec.reason,
            approver: "pending".into(),
        };
        let e = Exemption::from_spec(as_exemption, requested_by, now_ms)?;
        if e.amount_micros <= 0 {
            return Err("amount: ask for more than 0".into());
        }
        Ok(ExemptionRequest {
            id: 0,
            scope: e.scope,
            amount_micros: e.amount_micros,
            starts_at_ms: e.starts_at_ms,
            ends_at_ms: e.ends_at_ms,
            reason: e.reason,
            use_case: spec.use_case,
            requested_by: requested_by.into(),
            requested_at_ms: now_ms,
            state: RequestState::Pending,
            decided_by: None,
            decided_at_ms: None,
            note: None,
            exemption_id: None,
        })
    }

    /// Decides a request read from the store (pure: the store applies the answer atomically).
    /// Returns the request after the decision and, for an approval, the exemption to add (its id
    /// is assigned by the store).
    pub fn decide(&self, decision: &Decision, actor: &str, now_ms: i64) -> DecideOutcome {
        if self.state != RequestState::Pending {
            return DecideOutcome::AlreadyDecided(self.clone());
        }
        if self.requested_by == actor {
            return DecideOutcome::OwnRequest(self.clone());
        }
        if decision.approve && self.ends_at_ms <= now_ms {
            return DecideOutcome::Expired(self.clone());
        }
        let mut after = self.clone();
        after.state = if decision.approve { RequestState::Approved } else { RequestState::Rejected };
        after.decided_by = Some(actor.into());
        after.decided_at_ms = Some(now_ms);
        after.note = decision.note.clone().filter(|n| !n.trim().is_empty());
        let exemption = decision.approve.then(|| Exemption {
            id: 0,
            scope: self.scope.clone(),
            amount_micros: self.amount_micros,
            starts_at_ms: self.starts_at_ms,
            ends_at_ms: self.ends_at_ms,
            reason: format!("request {}: {}", self.id, self.reason),
            approver: actor.into(),
            created_by: actor.into(),
            created_at_ms: now_ms,
            revoked_at_ms: None,
        });
        DecideOutcome::Decided(after, exemption)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request() -> ExemptionRequest {
        let spec: ExemptionRequestSpec = serde_json::from_value(serde_json::json!({
            "scope": "team:platform", "amount": "250", "starts_at": "2026-11-26", "ends_at": "2026-12-01",
            "reason": "launch week", "use_case": "code-review"})).unwrap();
        ExemptionRequest::from_spec(spec, "rita", 1_000).unwrap()
    }

    #[test]
    fn requests_are_validated_like_exemptions() {
        let bad = |json: serde_json::Value, field: &str| {
            let spec: ExemptionRequestSpec = serde_json::from_value(json).unwrap();
            let err = ExemptionRequest::from_spec(spec, "rita", 1_000).unwrap_err();
            assert!(err.starts_with(field), "{err}");
        };
        bad(serde_json::json!({"scope": "galaxy:x", "amount": "1", "ends_at": "5000", "reason": "r"}), "scope:");
        bad(serde_json::json!({"scope": "team:x", "amount": "lots", "ends_at": "5000", "reason": "r"}), "amount:");
        bad(serde_json::json!({"scope": "team:x", "amount": "0", "ends_at": "5000", "reason": "r"}), "amount:");
        bad(serde_json::json!({"scope": "team:x", "amount": "1", "ends_at": "500", "reason": "r"}), "ends_at:");
        bad(serde_json::json!({"scope": "team:x", "amount": "1", "ends_at": "5000", "reason": " "}), "reason:");
        bad(serde_json::json!({"scope": "team:x", "amount": "1", "ends_at": "5000", "reason": "r", "use_case": "a b"}), "use_case:");
        assert!(serde_json::from_value::<ExemptionRequestSpec>(serde_json::json!({"scope": "team:x", "amount": "1", "ends_at": "5000", "reason": "r", "approver": "me"})).is_err(),
            "a requester cannot name the approver");
    }

    #[test]
    fn only_someone_else_decides_and_only_once() {
        let r = request();
        let approve = Decision { approve: true, note: Some("ok for launch".into()) };
        assert!(matches!(r.decide(&approve, "rita", 2_000), DecideOutcome::OwnRequest(_)));
        let DecideOutcome::Decided(after, Some(e)) = r.decide(&approve, "avery", 2_000) else { panic!("approved") };
        assert_eq!((after.state, after.decided_by.as_deref(), after.note.as_deref()), (RequestState::Approved, Some("avery"), Some("ok for launch")));
        assert_eq!((e.scope.as_str(), e.amount_micros, e.starts_at_ms, e.ends_at_ms, e.approver.as_str()), ("team:platform", 250_000_000, r.starts_at_ms, r.ends_at_ms, "avery"));
        assert!(matches!(after.decide(&approve, "ada", 3_000), DecideOutcome::AlreadyDecided(_)));
        let DecideOutcome::Decided(rejected, None) = r.decide(&Decision { approve: false, note: None }, "avery", 2_000) else { panic!("rejected") };
        assert_eq!(rejected.state, RequestState::Rejected);
        assert!(matches!(r.decide(&approve, "avery", r.ends_at_ms), DecideOutcome::Expired(_)));
    }
}
