//! The governance endpoints (issue 11 §1, §4, §5, §6), merged into the server's router.
//!
//! ```text
//! GET    /admin/workflows                           viewer     {"workflows":[WorkflowView]}
//! GET    /admin/workflows/{id}                      viewer     WorkflowView
//! PUT    /admin/workflows/{id}                      admin      WorkflowSpec -> {"outcome","workflow","budgets":{id: outcome}}
//! DELETE /admin/workflows/{id}                      admin      {"deleted": spec, "budgets": {id: "deleted"}}
//! GET    /admin/exemption-requests                  viewer     ?state=pending|approved|rejected
//! POST   /admin/exemption-requests                  requester  ExemptionRequestSpec -> request (201)
//! POST   /admin/exemption-requests/{id}/approve     approver   {"note"?} -> {"request","exemption"}
//! POST   /admin/exemption-requests/{id}/reject      approver   {"note"?} -> {"request"}
//! POST   /outcomes                                  requester  OutcomeSpec -> {"outcome","duplicate"} (201 new, 200 repeat)
//! GET    /admin/outcomes                            viewer     ?from=&to=&kind=&format=json|csv
//! POST   /webhooks/github                           X-Hub-Signature-256 (no bearer token)
//! GET    /admin/reports/outcomes                    viewer     ?group_by=team,use_case,month&from=&to=&kind=&format=
//! GET    /admin/reports/trend                       viewer     ?period=month|week&from=&to=&team=&use_case=&format=
//! GET    /admin/reports/model-mix                   viewer     ?from=&to=&format=
//! GET    /admin/reports/team-utilization            viewer     ?format=
//! GET    /admin/reports/review                      viewer     ?month=YYYY-MM&format=json|csv
//! ```
//!
//! Bodies are parsed by the server's `parse_body` (unknown fields are a 400 naming them) and
//! validated by the domain modules (errors name the field). Saving a workflow also saves its cap
//! budgets ([`save_workflow`]): two store steps, each atomic and audited; if the second fails the
//! call answers an error and repeating it converges (the workflow is then `unchanged`).

#![allow(clippy::result_large_err)]

use crate::approval::{DecideOutcome, Decision, DecisionBody, ExemptionRequest, ExemptionRequestSpec, RequestState};
use crate::auth::Role;
use crate::notify::{EventKind, EventQuery};
use crate::outcome::{Outcome, OutcomeSpec, PullRequestEvent};
use crate::report::to_csv;
use crate::review::{self, AnomalyEvent, Month, OutcomeDim, Period, ReviewExemption, ReviewInput, SpendRow};
use crate::server::{check_params, csv_response, error, format_param, invalid, ok_json, parse_body, store_error, time_param, App, Body};
use crate::store::gov::PutWorkflow;
use crate::store::{GroupBy, PutOutcome, ReportQuery, Store, StoreResult};
use crate::workflow::{Workflow, WorkflowSpec};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::routing::{get, post, put};
use axum::Router;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::fmt::Write;
use tollgate_core::money::{format_micros, Micros};

macro_rules! tri {
    ($e:expr) => {
        match $e {
            Ok(v) => v,
            Err(response) => return response,
        }
    };
}

/// The routes of this module (state: the server's [`App`]).
pub fn routes<S: Store>() -> Router<App<S>> {
    Router::new()
        .route("/admin/workflows", get(list_workflows::<S>))
        .route("/admin/workflows/{id}", put(put_workflow::<S>).get(get_workflow::<S>).delete(delete_workflow::<S>))
        .route("/admin/exemption-requests", get(list_requests::<S>).post(add_request::<S>))
        .route("/admin/exemption-requests/{id}/approve", post(approve::<S>))
        .route("/admin/exemption-requests/{id}/reject", post(reject::<S>))
        .route("/outcomes", post(add_outcome::<S>))
        .route("/admin/outcomes", get(list_outcomes::<S>))
        .route("/webhooks/github", post(github::<S>))
        .route("/admin/reports/outcomes", get(outcomes_report::<S>))
        .route("/admin/reports/trend", get(trend_report::<S>))
        .route("/admin/reports/model-mix", get(model_mix_report::<S>))
        .route("/admin/reports/team-utilization", get(team_utilization_report::<S>))
        .route("/admin/reports/review", get(review_report::<S>))
}

fn put_label(p: &PutOutcome) -> &'static str {
    match p {
        PutOutcome::Created => "created",
        PutOutcome::Updated { .. } => "updated",
        PutOutcome::Unchanged => "unchanged",
    }
}

/// A workflow as the API shows it: the spec plus where its caps live and whether it is overdue.
pub fn workflow_view(w: &Workflow, now_ms: i64) -> Value {
    let mut v = serde_json::to_value(&w.spec).unwrap_or_default();
    if let Some(obj) = v.as_object_mut() {
        obj.insert("scope".into(), json!(w.scope()));
        obj.insert("cap_budgets".into(), json!(w.cap_budgets().iter().map(|b| b.id.clone()).collect::<Vec<_>>()));
        obj.insert("overdue".into(), json!(w.overdue(now_ms)));
    }
    v
}

/// Saves a workflow and its cap budgets (created, updated, or deleted when the cap is gone).
pub async fn save_workflow<S: Store>(store: &S, workflow: Workflow, actor: &str, now_ms: i64) -> StoreResult<(PutWorkflow, Vec<(String, &'static str)>)> {
    let caps = workflow.cap_budgets();
    let outcome = store.put_workflow(workflow.clone(), actor, now_ms).await?;
    let mut budgets = Vec::new();
    for b in &caps {
        let id = b.id.clone();
        budgets.push((id, put_label(&store.put_budget(b.clone(), actor, now_ms).await?)));
    }
    let existing = store.list_budgets(now_ms).await?;
    for id in Workflow::cap_budget_ids(workflow.id()) {
        if !caps.iter().any(|b| b.id == id) && existing.iter().any(|b| b.budget.id == id) {
            store.delete_budget(&id, actor, now_ms).await?;
            budgets.push((id, "deleted"));
        }
    }
    Ok((outcome, budgets))
}

fn validate_workflow(app_kinds: &crate::outcome::OutcomeKinds, spec: WorkflowSpec) -> Result<Workflow, String> {
    if let Some(m) = &spec.success_metric {
        app_kinds.check("success_metric.outcome_kind", &m.outcome_kind)?;
    }
    Workflow::from_spec(spec)
}

/// Applies the `workflows` of the budgets file at start-up (audited as `file:<path>`), after the
/// budgets. Errors name the entry and field: `budgets file: workflows[1].owner: ...`.
pub async fn apply_workflow_file<S: Store>(store: &S, path: &std::path::Path, kinds: &crate::outcome::OutcomeKinds, now_ms: i64) -> Result<(usize, usize), String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read budgets file {}: {e}", path.display()))?;
    let file: crate::budget::BudgetFile = serde_json::from_str(&text).map_err(|e| format!("budgets file: {e}"))?;
    let mut workflows = Vec::new();
    for (i, spec) in file.workflows.into_iter().enumerate() {
        let w = validate_workflow(kinds, spec).map_err(|e| format!("budgets file: workflows[{i}].{e}"))?;
        if workflows.iter().any(|x: &Workflow| x.id() == w.id()) {
            return Err(format!("budgets file: workflows[{i}].id: `{}` appears twice; ids must be unique", w.id()));
        }
        workflows.push(w);
    }
    let actor = format!("file:{}", path.display());
    let (mut changed, total) = (0, workflows.len());
    for w in workflows {
        let (outcome, budgets) = save_workflow(store, w, &actor, now_ms).await.map_err(|e| e.to_string())?;
        if outcome != PutWorkflow::Unchanged || budgets.iter().any(|(_, o)| *o != "unchanged") {
            changed += 1;
        }
    }
    Ok((changed, total))
}

/// `tollgate_counter_workflow_review_overdue` (and the caps) for `/metrics`.
pub async fn workflow_metrics<S: Store>(store: &S, now_ms: i64) -> String {
    let workflows = store.list_workflows().await.unwrap_or_default();
    let mut out = String::new();
    let label = |v: &str| v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n");
    let _ = writeln!(out, "# HELP tollgate_counter_workflow_review_overdue 1 when the workflow's review date has passed.\n# TYPE tollgate_counter_workflow_review_overdue gauge");
    for w in &workflows {
        let _ = writeln!(
            out,
            "tollgate_counter_workflow_review_overdue{{workflow=\"{}\",team=\"{}\",owner=\"{}\",class=\"{}\"}} {}",
            label(w.id()),
            label(&w.spec.team),
            label(&w.spec.owner),
            w.spec.class.as_str(),
            u8::from(w.overdue(now_ms))
        );
    }
    out
}

async fn list_workflows<S: Store>(State(app): State<App<S>>, headers: HeaderMap) -> Response {
    tri!(app.role(&headers, Role::Viewer));
    let now = app.clock.now_ms();
    match app.store.list_workflows().await {
        Ok(list) => ok_json(StatusCode::OK, &json!({"workflows": list.iter().map(|w| workflow_view(w, now)).collect::<Vec<_>>()})),
        Err(e) => store_error(&app.metrics, e),
    }
}

async fn find_workflow<S: Store>(app: &App<S>, id: &str) -> Result<Workflow, Response> {
    let list = app.store.list_workflows().await.map_err(|e| store_error(&app.metrics, e))?;
    list.into_iter()
        .find(|w| w.id() == id)
        .ok_or_else(|| error(StatusCode::NOT_FOUND, "not_found", format!("no workflow `{id}`; list them with GET /admin/workflows")))
}

async fn get_workflow<S: Store>(State(app): State<App<S>>, headers: HeaderMap, Path(id): Path<String>) -> Response {
    tri!(app.role(&headers, Role::Viewer));
    let w = tri!(find_workflow(&app, &id).await);
    ok_json(StatusCode::OK, &workflow_view(&w, app.clock.now_ms()))
}

async fn put_workflow<S: Store>(State(app): State<App<S>>, headers: HeaderMap, Path(id): Path<String>, body: Body) -> Response {
    let actor = tri!(app.role(&headers, Role::Admin)).name;
    let mut spec: WorkflowSpec = tri!(parse_body(&body));
    if spec.id.is_empty() {
        spec.id = id.clone();
    } else if spec.id != id {
        return invalid(format!("id: the body says `{}` but the path says `{id}`; make them match or omit id", spec.id));
    }
    let workflow = tri!(validate_workflow(&app.gov.kinds, spec).map_err(invalid));
    let now = app.clock.now_ms();
    let (outcome, budgets) = match save_workflow(app.store.as_ref(), workflow, &actor, now).await {
        Ok(r) => r,
        Err(e) => return store_error(&app.metrics, e),
    };
    crate::log::info("workflow saved", json!({"workflow": id, "outcome": outcome.as_str(), "actor": actor}));
    let w = tri!(find_workflow(&app, &id).await);
    let budgets: serde_json::Map<String, Value> = budgets.into_iter().map(|(id, o)| (id, json!(o))).collect();
    ok_json(StatusCode::OK, &json!({"outcome": outcome.as_str(), "workflow": workflow_view(&w, now), "budgets": budgets}))
}

async fn delete_workflow<S: Store>(State(app): State<App<S>>, headers: HeaderMap, Path(id): Path<String>) -> Response {
    let actor = tri!(app.role(&headers, Role::Admin)).name;
    let now = app.clock.now_ms();
    let deleted = match app.store.delete_workflow(&id, &actor, now).await {
        Ok(Some(spec)) => spec,
        Ok(None) => return error(StatusCode::NOT_FOUND, "not_found", format!("no workflow `{id}`; nothing deleted")),
        Err(e) => return store_error(&app.metrics, e),
    };
    let mut budgets = serde_json::Map::new();
    for b in Workflow::cap_budget_ids(&id) {
        match app.store.delete_budget(&b, &actor, now).await {
            Ok(Some(_)) => {
                budgets.insert(b, json!("deleted"));
            }
            Ok(None) => {}
            Err(e) => return store_error(&app.metrics, e),
        }
    }
    crate::log::info("workflow deleted", json!({"workflow": id, "actor": actor}));
    ok_json(StatusCode::OK, &json!({"deleted": deleted, "budgets": budgets}))
}

fn request_json(r: &ExemptionRequest, now_ms: i64) -> Value {
    let mut v = serde_json::to_value(r).unwrap_or_default();
    if let Some(obj) = v.as_object_mut() {
        obj.insert("amount".into(), json!(format_micros(r.amount_micros)));
        obj.insert("window_open".into(), json!(r.starts_at_ms <= now_ms && now_ms < r.ends_at_ms));
    }
    v
}

async fn list_requests<S: Store>(State(app): State<App<S>>, headers: HeaderMap, Query(params): Query<HashMap<String, String>>) -> Response {
    tri!(app.role(&headers, Role::Viewer));
    tri!(check_params(&params, &["state"]));
    let state = match params.get("state").map(String::as_str) {
        None => None,
        Some("pending") => Some(RequestState::Pending),
        Some("approved") => Some(RequestState::Approved),
        Some("rejected") => Some(RequestState::Rejected),
        Some(other) => return invalid(format!("state: `{other}` is not a state; use pending, approved or rejected")),
    };
    let now = app.clock.now_ms();
    match app.store.list_exemption_requests().await {
        Ok(list) => ok_json(
            StatusCode::OK,
            &json!({"requests": list.iter().filter(|r| state.is_none_or(|s| r.state == s)).map(|r| request_json(r, now)).collect::<Vec<_>>()}),
        ),
        Err(e) => store_error(&app.metrics, e),
    }
}

async fn add_request<S: Store>(State(app): State<App<S>>, headers: HeaderMap, body: Body) -> Response {
    let actor = tri!(app.role(&headers, Role::Requester)).name;
    let spec: ExemptionRequestSpec = tri!(parse_body(&body));
    let now = app.clock.now_ms();
    let request = tri!(ExemptionRequest::from_spec(spec, &actor, now).map_err(invalid));
    match app.store.add_exemption_request(request, &actor, now).await {
        Ok(r) => {
            crate::log::info("exemption requested", json!({"request": r.id, "scope": r.scope, "actor": actor}));
            ok_json(StatusCode::CREATED, &request_json(&r, now))
        }
        Err(e) => store_error(&app.metrics, e),
    }
}

async fn decide<S: Store>(app: App<S>, headers: HeaderMap, id: String, body: Body, approve: bool) -> Response {
    let actor = tri!(app.role(&headers, Role::Approver)).name;
    let Ok(id) = id.parse::<u64>() else { return invalid(format!("`{id}` is not an exemption request id (a number)")) };
    // An empty body is an empty decision; anything else must be a valid DecisionBody.
    let note = match &body {
        Ok(bytes) if bytes.is_empty() => None,
        _ => tri!(parse_body::<DecisionBody>(&body)).note,
    };
    let now = app.clock.now_ms();
    match app.store.decide_exemption_request(id, Decision { approve, note }, &actor, now).await {
        Ok(DecideOutcome::Decided(r, exemption)) => {
            crate::log::info("exemption request decided", json!({"request": id, "approved": approve, "actor": actor}));
            let exemption = exemption.map(|e| {
                let mut v = serde_json::to_value(&e).unwrap_or_default();
                if let Some(o) = v.as_object_mut() {
                    o.insert("active".into(), json!(e.active_at(now)));
                }
                v
            });
            ok_json(StatusCode::OK, &json!({"request": request_json(&r, now), "exemption": exemption}))
        }
        Ok(DecideOutcome::AlreadyDecided(r)) => error(
            StatusCode::CONFLICT,
            "conflict",
            format!("exemption request {id} was already {} by {}; file a new request", if r.state == RequestState::Approved { "approved" } else { "rejected" }, r.decided_by.unwrap_or_default()),
        ),
        Ok(DecideOutcome::OwnRequest(_)) => error(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!("`{actor}` filed exemption request {id}; someone else with the approver role must decide it"),
        ),
        Ok(DecideOutcome::Expired(_)) => error(StatusCode::CONFLICT, "conflict", format!("exemption request {id} ended before it was approved; file a new request with new dates")),
        Ok(DecideOutcome::NotFound) => error(StatusCode::NOT_FOUND, "not_found", format!("no exemption request {id}")),
        Err(e) => store_error(&app.metrics, e),
    }
}

async fn approve<S: Store>(State(app): State<App<S>>, headers: HeaderMap, Path(id): Path<String>, body: Body) -> Response {
    decide(app, headers, id, body, true).await
}

async fn reject<S: Store>(State(app): State<App<S>>, headers: HeaderMap, Path(id): Path<String>, body: Body) -> Response {
    decide(app, headers, id, body, false).await
}

async fn record<S: Store>(app: &App<S>, outcome: Outcome) -> Response {
    match app.store.record_outcome(outcome).await {
        Ok((stored, created)) => {
            let status = if created { StatusCode::CREATED } else { StatusCode::OK };
            ok_json(status, &json!({"outcome": stored, "duplicate": !created}))
        }
        Err(e) => store_error(&app.metrics, e),
    }
}

async fn add_outcome<S: Store>(State(app): State<App<S>>, headers: HeaderMap, body: Body) -> Response {
    let actor = tri!(app.role(&headers, Role::Requester)).name;
    let spec: OutcomeSpec = tri!(parse_body(&body));
    let outcome = tri!(Outcome::from_spec(spec, &app.gov.kinds, format!("api:{actor}"), app.clock.now_ms()).map_err(invalid));
    record(&app, outcome).await
}

async fn github<S: Store>(State(app): State<App<S>>, headers: HeaderMap, body: Body) -> Response {
    let Some(config) = app.gov.github.as_ref() else {
        return error(StatusCode::NOT_FOUND, "not_found", "the GitHub webhook is not configured; set github.secret in the governance file (serve --governance)");
    };
    let bytes = match &body {
        Ok(b) => b,
        Err(_) => return parse_body::<Value>(&body).err().unwrap_or_default(),
    };
    let signature = headers.get("x-hub-signature-256").and_then(|v| v.to_str().ok());
    if !crate::outcome::verify_github_signature(&config.secret, bytes, signature) {
        crate::metrics::inc(&app.metrics.unauthorized, 1);
        return error(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "X-Hub-Signature-256 is missing or does not match this body; check the webhook secret configured in GitHub and in the governance file",
        );
    }
    let event = headers.get("x-github-event").and_then(|v| v.to_str().ok()).unwrap_or("");
    if event != "pull_request" {
        return ok_json(StatusCode::OK, &json!({"recorded": false, "reason": format!("event `{event}` is not recorded; only pull_request")}));
    }
    let event: PullRequestEvent = match serde_json::from_slice(bytes) {
        Ok(e) => e,
        Err(e) => return invalid(format!("pull_request event: {e}; expected GitHub's pull_request payload")),
    };
    match config.outcome(&event, app.clock.now_ms()) {
        Ok(outcome) => record(&app, outcome).await,
        Err(reason) => ok_json(StatusCode::OK, &json!({"recorded": false, "reason": reason})),
    }
}

fn outcome_cells(list: &[Outcome]) -> (Vec<String>, Vec<Vec<String>>) {
    let header = ["id", "kind", "team", "user", "use_case", "task_id", "at", "url", "source"].map(String::from).to_vec();
    let o = |v: &Option<String>| v.clone().unwrap_or_default();
    let cells = list
        .iter()
        .map(|x| vec![x.id.clone(), x.kind.clone(), o(&x.team), o(&x.user), o(&x.use_case), o(&x.task_id), crate::window::format_time_ms(x.at_ms), o(&x.url), x.source.clone()])
        .collect();
    (header, cells)
}

fn range(params: &HashMap<String, String>) -> Result<(i64, i64), Response> {
    let from_ms = time_param(params, "from", 0)?;
    let to_ms = time_param(params, "to", i64::MAX)?;
    if to_ms <= from_ms {
        return Err(invalid("to: must be after from"));
    }
    Ok((from_ms, to_ms))
}

fn kind_param<S: Store>(app: &App<S>, params: &HashMap<String, String>) -> Result<Option<String>, Response> {
    match params.get("kind") {
        None => Ok(None),
        Some(k) => app.gov.kinds.check("kind", k).map(|_| Some(k.clone())).map_err(invalid),
    }
}

async fn list_outcomes<S: Store>(State(app): State<App<S>>, headers: HeaderMap, Query(params): Query<HashMap<String, String>>) -> Response {
    tri!(app.role(&headers, Role::Viewer));
    tri!(check_params(&params, &["from", "to", "kind", "format"]));
    let csv = tri!(format_param(&params));
    let (from_ms, to_ms) = tri!(range(&params));
    let kind = tri!(kind_param(&app, &params));
    let list: Vec<Outcome> = match app.store.list_outcomes(from_ms, to_ms).await {
        Ok(l) => l.into_iter().filter(|o| kind.as_ref().is_none_or(|k| o.kind == *k)).collect(),
        Err(e) => return store_error(&app.metrics, e),
    };
    if csv {
        let (h, c) = outcome_cells(&list);
        return csv_response("tollgate-outcomes.csv", to_csv(&h, &c));
    }
    ok_json(StatusCode::OK, &json!({"outcomes": list}))
}

/// Ledger spend by team, use case, model and day over `[from, to)`.
async fn spend_rows<S: Store>(app: &App<S>, from_ms: i64, to_ms: i64) -> Result<Vec<SpendRow>, Response> {
    let query = ReportQuery::utc(vec![GroupBy::Team, GroupBy::UseCase, GroupBy::Model, GroupBy::Day], from_ms, to_ms);
    let rows = app.store.report(query).await.map_err(|e| store_error(&app.metrics, e))?;
    Ok(rows
        .into_iter()
        .map(|r| {
            let mut k = r.keys.into_iter();
            let mut next = || k.next().unwrap_or_default();
            SpendRow { team: next(), use_case: next(), model: next(), day: next(), cost_micros: r.cost_micros }
        })
        .collect())
}

fn usd(m: Option<Micros>) -> Value {
    m.map_or(Value::Null, |m| json!(format_micros(m)))
}

async fn outcomes_report<S: Store>(State(app): State<App<S>>, headers: HeaderMap, Query(params): Query<HashMap<String, String>>) -> Response {
    tri!(app.role(&headers, Role::Viewer));
    tri!(check_params(&params, &["group_by", "from", "to", "kind", "format"]));
    let csv = tri!(format_param(&params));
    let group_by = tri!(OutcomeDim::parse_list(params.get("group_by").map(String::as_str).unwrap_or("team")).map_err(invalid));
    let (from_ms, to_ms) = tri!(range(&params));
    let kind = tri!(kind_param(&app, &params));
    let spend = tri!(spend_rows(&app, from_ms, to_ms).await);
    let outcomes = match app.store.list_outcomes(from_ms, to_ms).await {
        Ok(o) => o,
        Err(e) => return store_error(&app.metrics, e),
    };
    let rows = review::cost_per_outcome(&spend, &outcomes, &group_by, kind.as_deref());
    if csv {
        let mut header: Vec<String> = group_by.iter().map(|d| d.as_str().to_owned()).collect();
        header.extend(["spend_usd", "outcomes", "cost_per_outcome_usd"].map(String::from));
        let cells: Vec<Vec<String>> = rows
            .iter()
            .map(|r| {
                let mut c = r.keys.clone();
                c.extend([format_micros(r.spend_micros), r.outcomes.to_string(), r.cost_per_outcome_micros.map(format_micros).unwrap_or_default()]);
                c
            })
            .collect();
        return csv_response("tollgate-cost-per-outcome.csv", to_csv(&header, &cells));
    }
    let rows: Vec<Value> = rows
        .iter()
        .map(|r| {
            let mut obj = serde_json::Map::new();
            for (d, k) in group_by.iter().zip(&r.keys) {
                obj.insert(d.as_str().into(), json!(k));
            }
            obj.insert("spend_micros".into(), json!(r.spend_micros));
            obj.insert("spend_usd".into(), json!(format_micros(r.spend_micros)));
            obj.insert("outcomes".into(), json!(r.outcomes));
            obj.insert("cost_per_outcome_micros".into(), json!(r.cost_per_outcome_micros));
            obj.insert("cost_per_outcome_usd".into(), usd(r.cost_per_outcome_micros));
            Value::Object(obj)
        })
        .collect();
    ok_json(StatusCode::OK, &json!({"group_by": group_by, "kind": kind, "rows": rows}))
}

async fn trend_report<S: Store>(State(app): State<App<S>>, headers: HeaderMap, Query(params): Query<HashMap<String, String>>) -> Response {
    tri!(app.role(&headers, Role::Viewer));
    tri!(check_params(&params, &["period", "from", "to", "team", "use_case", "kind", "format"]));
    let csv = tri!(format_param(&params));
    let period = match params.get("period").map(String::as_str) {
        None | Some("month") => Period::Month,
        Some("week") => Period::Week,
        Some(other) => return invalid(format!("period: `{other}` is not a period; use month or week")),
    };
    let (from_ms, to_ms) = tri!(range(&params));
    let kind = tri!(kind_param(&app, &params));
    let (team, use_case) = (params.get("team"), params.get("use_case"));
    let spend: Vec<SpendRow> = tri!(spend_rows(&app, from_ms, to_ms).await)
        .into_iter()
        .filter(|r| team.is_none_or(|t| r.team == *t) && use_case.is_none_or(|u| r.use_case == *u))
        .collect();
    let outcomes: Vec<Outcome> = match app.store.list_outcomes(from_ms, to_ms).await {
        Ok(o) => o
            .into_iter()
            .filter(|o| {
                team.is_none_or(|t| o.team.as_ref() == Some(t)) && use_case.is_none_or(|u| o.use_case.as_ref() == Some(u)) && kind.as_ref().is_none_or(|k| o.kind == *k)
            })
            .collect(),
        Err(e) => return store_error(&app.metrics, e),
    };
    let rows = review::trend(&spend, &outcomes, period);
    if csv {
        let header = ["period", "spend_usd", "outcomes", "cost_per_outcome_usd", "spend_change_pct", "outcomes_change_pct"].map(String::from).to_vec();
        let pct = |p: Option<f64>| p.map(|p| format!("{p:.1}")).unwrap_or_default();
        let cells: Vec<Vec<String>> = rows
            .iter()
            .map(|r| {
                vec![r.period.clone(), format_micros(r.spend_micros), r.outcomes.to_string(), r.cost_per_outcome_micros.map(format_micros).unwrap_or_default(), pct(r.spend_change_pct), pct(r.outcomes_change_pct)]
            })
            .collect();
        return csv_response("tollgate-trend.csv", to_csv(&header, &cells));
    }
    ok_json(StatusCode::OK, &json!({"period": if period == Period::Week { "week" } else { "month" }, "rows": rows}))
}

async fn model_mix_report<S: Store>(State(app): State<App<S>>, headers: HeaderMap, Query(params): Query<HashMap<String, String>>) -> Response {
    tri!(app.role(&headers, Role::Viewer));
    tri!(check_params(&params, &["from", "to", "format"]));
    let csv = tri!(format_param(&params));
    let (from_ms, to_ms) = tri!(range(&params));
    let rows = review::model_mix(&tri!(spend_rows(&app, from_ms, to_ms).await));
    if csv {
        let header = ["use_case", "model", "spend_usd", "share_pct"].map(String::from).to_vec();
        let cells: Vec<Vec<String>> = rows
            .iter()
            .flat_map(|u| u.models.iter().map(move |m| vec![u.use_case.clone(), m.model.clone(), format_micros(m.spend_micros), format!("{:.1}", m.share_pct)]))
            .collect();
        return csv_response("tollgate-model-mix.csv", to_csv(&header, &cells));
    }
    ok_json(StatusCode::OK, &json!({"use_cases": rows}))
}

async fn team_utilization_report<S: Store>(State(app): State<App<S>>, headers: HeaderMap, Query(params): Query<HashMap<String, String>>) -> Response {
    tri!(app.role(&headers, Role::Viewer));
    tri!(check_params(&params, &["format"]));
    let csv = tri!(format_param(&params));
    let budgets = match app.store.list_budgets(app.clock.now_ms()).await {
        Ok(b) => crate::store::BudgetState::without_templates(b),
        Err(e) => return store_error(&app.metrics, e),
    };
    let teams = review::team_utilization(&budgets);
    if csv {
        let header = ["team", "budget", "scope", "window", "spent_usd", "limit_usd", "utilization_pct", "status"].map(String::from).to_vec();
        let cells: Vec<Vec<String>> = teams
            .iter()
            .flat_map(|t| {
                t.budgets.iter().map(move |b| {
                    let status = serde_json::to_value(b.status).ok().and_then(|v| v.as_str().map(String::from)).unwrap_or_default();
                    vec![t.team.clone(), b.budget.clone(), b.scope.clone(), b.window.clone(), format_micros(b.spent_micros), format_micros(b.limit_micros), format!("{:.1}", b.utilization_pct), status]
                })
            })
            .collect();
        return csv_response("tollgate-team-utilization.csv", to_csv(&header, &cells));
    }
    ok_json(StatusCode::OK, &json!({"teams": teams}))
}

async fn review_report<S: Store>(State(app): State<App<S>>, headers: HeaderMap, Query(params): Query<HashMap<String, String>>) -> Response {
    tri!(app.role(&headers, Role::Viewer));
    tri!(check_params(&params, &["month", "format"]));
    let csv = tri!(format_param(&params));
    let Some(month) = params.get("month") else { return invalid("month: give the month to review, ?month=YYYY-MM") };
    let month = tri!(Month::parse(month).map_err(|e| invalid(format!("month: {e}"))));
    let (prev_from, _) = month.previous().range_ms();
    let (_, to_ms) = month.range_ms();
    let now = app.clock.now_ms();
    let spend = tri!(spend_rows(&app, prev_from, to_ms).await);
    let (workflows, outcomes, exemptions, requests) = match tokio::try_join!(
        app.store.list_workflows(),
        app.store.list_outcomes(prev_from, to_ms),
        app.store.list_exemptions(),
        app.store.list_exemption_requests()
    ) {
        Ok(all) => all,
        Err(e) => return store_error(&app.metrics, e),
    };
    let exemptions: Vec<ReviewExemption> = exemptions
        .into_iter()
        .map(|e| {
            let use_case = requests.iter().find(|r| r.exemption_id == Some(e.id)).and_then(|r| r.use_case.clone());
            ReviewExemption { exemption: e, use_case }
        })
        .collect();
    let anomalies = tri!(anomalies_for_review(&app, prev_from, to_ms).await);
    let rows = review::review(&ReviewInput {
        month,
        now_ms: now,
        workflows: &workflows,
        spend: &spend,
        outcomes: &outcomes,
        exemptions: &exemptions,
        anomalies: &anomalies,
    });
    if csv {
        let (h, c) = review::review_cells(&rows);
        return csv_response(&format!("tollgate-review-{month}.csv"), to_csv(&h, &c));
    }
    // Seats beside tokens (crate::seats): per team and role, when a seats config is stored.
    let seats = match crate::server::planning::seats_rows(app.store.as_ref(), month).await {
        Ok(rows) => rows,
        Err(e) => return store_error(&app.metrics, e),
    };
    ok_json(StatusCode::OK, &json!({"month": month.label(), "workflows": rows, "seats": seats}))
}

/// The anomaly events recorded in `[from_ms, to_ms)` plus a day either side (an anomaly is
/// recorded on its own day, by the counter's clock; the review keeps those whose day is in the
/// month).
async fn anomalies_for_review<S: Store>(app: &App<S>, from_ms: i64, to_ms: i64) -> Result<Vec<AnomalyEvent>, Response> {
    const DAY_MS: i64 = 86_400_000;
    let query = EventQuery {
        kind: Some(EventKind::Anomaly),
        since_ms: Some(from_ms - DAY_MS),
        until_ms: Some(to_ms + DAY_MS),
        limit: 100_000,
        ..EventQuery::default()
    };
    let rows = app.store.list_events(&query).await.map_err(|e| store_error(&app.metrics, e))?;
    Ok(rows
        .into_iter()
        .map(|row| {
            let d = row.event.draft;
            AnomalyEvent { scope: d.scope, day: d.window, amount_micros: d.details.get("today_micros").and_then(Value::as_i64).unwrap_or(0) }
        })
        .collect())
}
