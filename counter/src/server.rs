//! The HTTP API: routing, bearer-token auth, JSON in and out, one `Store` call per request.
//!
//! ```text
//! POST   /v1/leases                      gateway token   LeaseRequest -> LeaseResponse
//! POST   /v1/usage                       gateway token   UsageBatch   -> UsageAck
//! GET    /healthz                        none            {"status":"ok"} or 503
//! GET    /metrics                        none (or viewer) Prometheus text
//! GET    /admin/budgets                  admin token     {"budgets":[BudgetState], "templates":[{"template", "budgets_made"}]}
//! GET    /admin/budgets/{id}             admin token     BudgetState
//! PUT    /admin/budgets/{id}             admin token     BudgetSpec -> {"outcome", "budget"}
//! DELETE /admin/budgets/{id}             admin token     {"deleted": BudgetSpec}
//! POST   /admin/budgets/{id}/topup       admin token     {"amount":"100.00"} -> {"outcome", "budget"}
//! GET    /admin/exemptions               admin token     {"exemptions":[Exemption + active]}
//! POST   /admin/exemptions               admin token     ExemptionSpec -> Exemption (201)
//! DELETE /admin/exemptions/{id}          admin token     revokes -> Exemption
//! GET    /admin/reports/spend            admin token     ?group_by=team,model&from=&to=&format=json|csv
//! GET    /admin/reports/utilization      admin token     ?format=json|csv
//! GET    /admin/audit                    admin token     ?subject=&since=&limit=
//! GET    /admin/reports/requests         admin token     ?from=&to=&limit=&format=json|csv (simulate.rs)
//! GET    /reports/principal              personal token  ?scope=&from=&to=&format=json|csv: one principal's
//!                                        (or viewer)     budgets and spend by day and model (server/principal.rs)
//! GET    /whoami                         any admin-side  {"kind","name","role"|"scope"}: what the token is
//!                                        or personal
//! GET    /console/...                    none (assets)   the web console; its pages call the admin API (console/)
//! ...    workflows, exemption requests, outcomes, the GitHub webhook, outcome reports and the
//!        monthly review: see `crate::gov_api`.
//! GET    /admin/events                   admin token     ?kind=&scope=&subject=&since=&until=&limit=&format=
//! GET    /admin/reports/baseline         admin token     ?scope=team|team:platform&days=60&to=&format=json|csv
//! GET    /admin/reports/forecast         admin token     ?format=json|csv: projected window-end spend and hard-limit day
//!                                                        per budget and workflow (server/planning.rs, crate::forecast)
//! GET    /admin/reports/outliers         admin token     ?from=&to=&k=3&min_samples=5&format=json|csv: runs, workflow days
//!                                                        and days far above their own baseline (crate::outliers)
//! GET|PUT /admin/seats                   admin token     SeatsSpec (crate::seats): seat costs, users' roles, bands
//! GET    /admin/reports/seats            admin token     ?month=YYYY-MM&format=json|csv: seats beside usage per team and role
//! GET    /admin/tasks/{id}               admin token     ?format=json|markdown -> TaskSummary (crate::task)
//! POST   /admin/checkpoints              admin token     {"task","note"?} -> Checkpoint (201)
//! GET    /tasks/{id}/summary             gateway token   + x-tollgate-key-id: the task's own key (crate::task)
//! ```
//!
//! "admin token" above: read-only (GET) endpoints need the `viewer` role or above, changes need
//! `admin` (roles: `crate::auth`).
//!
//! Every error is a `protocol::ApiError` JSON body with a machine code and a message that says what
//! to do. Bodies are parsed here (not by an extractor) so that malformed JSON, unknown fields and
//! bad values all get that same shape. Tokens are compared in constant time and never logged.

// Helpers return `Result<_, Response>` so a handler can `tri!` its way to the error answer; the
// large `Err` is the HTTP response itself and is built only on the error path.
#![allow(clippy::result_large_err)]

use crate::budget::{valid_id, Budget, BudgetFile, BudgetSpec, Exemption, ExemptionSpec};
use crate::clock::Clock;
use crate::metrics::{inc, Metrics};
use crate::report;
use crate::store::{validate_batch, validate_lease_request, AuditQuery, BudgetState, GroupBy, PutOutcome, ReportQuery, Store, StoreError};
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::Router;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::json;
use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use tokio::net::TcpListener;
use tollgate_core::money::{parse_decimal_scaled, Micros};
use tollgate_core::protocol::{ApiError, ApiErrorBody, LeaseRequest, UsageBatch};

/// Largest request body accepted (a usage batch of ~50k records).
pub const MAX_BODY_BYTES: usize = 32 * 1024 * 1024;

pub use crate::auth::{Auth, Role};

/// Shared by every handler.
pub struct App<S> {
    pub store: Arc<S>,
    pub clock: Arc<dyn Clock>,
    pub auth: Arc<Auth>,
    pub metrics: Arc<Metrics>,
    /// Outcome kinds and the GitHub webhook's settings (`crate::outcome::GovConfig`).
    pub gov: Arc<crate::outcome::GovConfig>,
    /// Notifications: evaluated and delivered in the background; usage only pokes it.
    pub notifier: Arc<crate::notify::Notifier>,
    /// The p99 tables of `reserve: p99` budgets, filled into leases (crate::reserve).
    pub reservations: Arc<crate::reserve::Reservations>,
}

impl<S> Clone for App<S> {
    fn clone(&self) -> Self {
        App {
            store: Arc::clone(&self.store),
            clock: Arc::clone(&self.clock),
            auth: Arc::clone(&self.auth),
            metrics: Arc::clone(&self.metrics),
            gov: Arc::clone(&self.gov),
            notifier: Arc::clone(&self.notifier),
            reservations: Arc::clone(&self.reservations),
        }
    }
}

/// Serves the API on `listener` until `shutdown` resolves, then drains in-flight requests and shuts
/// the store down (which flushes every accepted write).
pub async fn run<S: Store>(
    listener: TcpListener,
    store: Arc<S>,
    clock: Arc<dyn Clock>,
    auth: Auth,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    run_with(listener, store, clock, auth, crate::outcome::GovConfig::default(), crate::notify::NotifyConfig::default(), shutdown).await
}

/// [`run`] with the governance settings (`serve --governance FILE`) and the notify config
/// (webhooks and rules; `serve --notify FILE`).
pub async fn run_with<S: Store>(
    listener: TcpListener,
    store: Arc<S>,
    clock: Arc<dyn Clock>,
    auth: Auth,
    gov: crate::outcome::GovConfig,
    notify: crate::notify::NotifyConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let addr = listener.local_addr()?;
    let notifier = crate::notify::Notifier::new(notify, Arc::clone(&clock));
    let background = notifier.spawn(Arc::clone(&store));
    let app = App { store: Arc::clone(&store), clock, auth: Arc::new(auth), metrics: Arc::default(), gov: Arc::new(gov), notifier, reservations: Arc::default() };
    crate::log::info("listening", json!({"addr": addr.to_string()}));
    let served = axum::serve(listener, router(app)).with_graceful_shutdown(shutdown).await;
    for task in background {
        task.abort();
    }
    served?;
    match store.shutdown().await {
        Ok(()) => crate::log::info("stopped; store flushed", json!({})),
        Err(e) => crate::log::error("store shutdown failed", json!({"error": e.to_string()})),
    }
    Ok(())
}

/// The routes, for embedding or testing without a listener.
pub fn router<S: Store>(app: App<S>) -> Router {
    Router::new()
        .route("/v1/leases", post(leases::<S>))
        .route("/v1/usage", post(usage::<S>))
        .route("/healthz", get(healthz::<S>))
        .route("/metrics", get(metrics::<S>))
        .route("/admin/budgets", get(list_budgets::<S>))
        .route("/admin/budgets/{id}", put(put_budget::<S>).get(get_budget::<S>).delete(delete_budget::<S>))
        .route("/admin/budgets/{id}/topup", post(topup::<S>))
        .route("/admin/exemptions", get(list_exemptions::<S>).post(add_exemption::<S>))
        .route("/admin/exemptions/{id}", axum::routing::delete(revoke_exemption::<S>))
        .route("/admin/reports/spend", get(spend_report::<S>))
        .route("/admin/reports/utilization", get(utilization_report::<S>))
        .route("/admin/audit", get(audit::<S>))
        .route("/admin/reports/requests", get(crate::simulate::requests_report::<S>))
        .merge(crate::console::routes())
        .merge(crate::gov_api::routes::<S>())
        .route("/admin/events", get(governance::events::<S>))
        .route("/admin/reports/baseline", get(governance::baseline::<S>))
        .route("/admin/reports/forecast", get(planning::forecast_report::<S>))
        .route("/admin/reports/outliers", get(planning::outliers_report::<S>))
        .route("/admin/seats", get(planning::get_seats::<S>).put(planning::put_seats::<S>))
        .route("/admin/reports/seats", get(planning::seats_report::<S>))
        .route("/reports/principal", get(principal::principal_report::<S>))
        .route("/whoami", get(principal::whoami::<S>))
        .merge(crate::task::routes::<S>())
        .fallback(|| async { error(StatusCode::NOT_FOUND, "not_found", "no such endpoint; see docs/counter.md for the API") })
        .method_not_allowed_fallback(|| async {
            error(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", "this endpoint does not take that method; see docs/counter.md")
        })
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(app)
}

/// An `ApiError` response.
pub fn error(status: StatusCode, code: &str, message: impl Into<String>) -> Response {
    let body = ApiError { error: ApiErrorBody { code: code.into(), message: message.into() } };
    ok_json(status, &body)
}

pub(crate) fn ok_json<T: Serialize>(status: StatusCode, value: &T) -> Response {
    match serde_json::to_vec(value) {
        Ok(bytes) => (status, [(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))], bytes).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("cannot encode the answer: {e}")).into_response(),
    }
}

pub(crate) fn invalid(message: impl Into<String>) -> Response {
    error(StatusCode::BAD_REQUEST, "invalid_request", message)
}

pub(crate) fn store_error(metrics: &Metrics, e: StoreError) -> Response {
    match e {
        StoreError::Invalid(m) => invalid(m),
        StoreError::NotFound(m) => error(StatusCode::NOT_FOUND, "not_found", m),
        StoreError::Unavailable(m) => {
            inc(&metrics.store_errors, 1);
            error(StatusCode::SERVICE_UNAVAILABLE, "unavailable", m)
        }
        StoreError::Internal(m) => {
            inc(&metrics.store_errors, 1);
            crate::log::error("store error", json!({"error": m}));
            error(StatusCode::INTERNAL_SERVER_ERROR, "internal", format!("{m}; see the counter's logs"))
        }
    }
}

/// A request body as extracted: too large or unreadable bodies become JSON errors too.
pub(crate) type Body = Result<Bytes, axum::extract::rejection::BytesRejection>;

pub(crate) fn parse_body<T: DeserializeOwned>(body: &Body) -> Result<T, Response> {
    let bytes = body.as_ref().map_err(|rejection| {
        let status = rejection.status();
        let message = if status == StatusCode::PAYLOAD_TOO_LARGE {
            format!("request body larger than {MAX_BODY_BYTES} bytes; send smaller batches")
        } else {
            format!("request body could not be read: {rejection}")
        };
        error(status, "invalid_request", message)
    })?;
    serde_json::from_slice(bytes).map_err(|e| invalid(format!("request body: {e}; fix the JSON and send it again")))
}

impl<S: Store> App<S> {
    pub(crate) fn gateway(&self, headers: &HeaderMap) -> Result<(), Response> {
        self.auth.gateway(headers).map(|_| ()).ok_or_else(|| self.unauthorized("a gateway"))
    }

    /// The admin token's name (for the audit log); the token must hold the `admin` role.
    pub(crate) fn admin(&self, headers: &HeaderMap) -> Result<String, Response> {
        self.role(headers, Role::Admin).map(|c| c.name)
    }

    /// The caller, if its token holds at least `needed` (see `crate::auth`): 401 without a valid
    /// admin-side token, 403 naming the role needed otherwise. Every admin endpoint goes through here.
    pub fn role(&self, headers: &HeaderMap, needed: Role) -> Result<crate::auth::Caller, Response> {
        self.auth.check(headers, needed).map_err(|denied| match denied {
            crate::auth::Denied::Unauthenticated => self.unauthorized("an admin-side"),
            crate::auth::Denied::Forbidden { name, role, needed } => {
                inc(&self.metrics.unauthorized, 1);
                error(
                    StatusCode::FORBIDDEN,
                    "forbidden",
                    format!("token `{name}` has the {} role; this endpoint needs {} (or above); ask an admin", role.as_str(), needed.as_str()),
                )
            }
        })
    }

    fn unauthorized(&self, who: &str) -> Response {
        inc(&self.metrics.unauthorized, 1);
        let mut r = error(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            format!("missing or wrong bearer token; send `Authorization: Bearer <token>` with {who} token"),
        );
        r.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        r
    }
}

macro_rules! tri {
    ($e:expr) => {
        match $e {
            Ok(v) => v,
            Err(response) => return response,
        }
    };
}

mod governance;
pub mod planning;
mod principal;

/// Makes, from the templates (budgets on `<kind>:*`), the budget of every scope in `scopes` that has
/// none of its own, before the lease or the charge that needs it: each is an ordinary budget from
/// then on (leases, the overspend bound, both stores), audited as created by `template:<id>`, and it
/// starts from what the ledger holds for its scope this window like any new budget. Concurrent calls
/// for the same new scope put identical specs: one creates, the others are `Unchanged`.
async fn apply_templates<S: Store>(app: &App<S>, scopes: impl Iterator<Item = String>) -> Result<(), Response> {
    // Per scope: one lookup when it has a budget (the usual case), two when it has none.
    let index = app.store.scope_index();
    let mut seen = std::collections::HashSet::new();
    for scope in scopes {
        if index.contains_key(&scope) {
            continue;
        }
        let Some(templates) = crate::budget::template_scope(&scope).and_then(|t| index.get(&t)) else { continue };
        if !seen.insert(scope.clone()) {
            continue;
        }
        for template in templates {
            let Some(instance) = template.instance_for(&scope) else { continue };
            let (id, actor) = (instance.id.clone(), format!("template:{}", template.id));
            match app.store.put_budget(instance, &actor, app.clock.now_ms()).await {
                Ok(PutOutcome::Created) => crate::log::info("budget made from a template", json!({"budget": id, "scope": scope, "template": template.id})),
                Ok(_) => {}
                Err(e) => return Err(store_error(&app.metrics, e)),
            }
        }
    }
    Ok(())
}

async fn leases<S: Store>(State(app): State<App<S>>, headers: HeaderMap, body: Body) -> Response {
    tri!(app.gateway(&headers));
    let request: LeaseRequest = match parse_body(&body).and_then(|r| validate_lease_request(&r).map(|_| r).map_err(invalid)) {
        Ok(r) => r,
        Err(response) => {
            inc(&app.metrics.lease_requests_rejected, 1);
            return response;
        }
    };
    tri!(apply_templates(&app, request.scopes.iter().cloned()).await);
    let now_ms = app.clock.now_ms();
    let granted = match app.store.grant_leases(&request, now_ms).await {
        Ok(mut answer) => app.reservations.fill(&*app.store, &mut answer, now_ms).await.map(|()| answer),
        Err(e) => Err(e),
    };
    match granted {
        Ok(answer) => {
            inc(&app.metrics.lease_requests, 1);
            for b in &answer.budgets {
                app.metrics.count_grant(b.status);
            }
            ok_json(StatusCode::OK, &answer)
        }
        Err(e) => store_error(&app.metrics, e),
    }
}

async fn usage<S: Store>(State(app): State<App<S>>, headers: HeaderMap, body: Body) -> Response {
    tri!(app.gateway(&headers));
    let batch: UsageBatch = match parse_body(&body).and_then(|b| validate_batch(&b).map(|_| b).map_err(invalid)) {
        Ok(b) => b,
        Err(response) => {
            inc(&app.metrics.usage_batches_rejected, 1);
            return response;
        }
    };
    tri!(apply_templates(&app, batch.records.iter().flat_map(|r| r.principal.scope_keys())).await);
    let now_ms = app.clock.now_ms();
    // Finished in a task of its own: a gateway that hangs up (its call timed out) drops this
    // handler's future, but the writer commits the records regardless, so the guard exchange and
    // the metrics must follow them. Were they cancelled with the handler, the gateway's re-send
    // would be answered as duplicates and `usage_records_total{result="accepted"}` would stay short
    // of the ledger for good.
    match tokio::spawn(ingest(app, batch, now_ms)).await {
        Ok(response) => response,
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, "internal", format!("usage ingest task failed: {e}")),
    }
}

/// Stores a validated batch, exchanges its retry-guard events and counts it: the part of `/v1/usage`
/// that runs to the end whether or not the gateway is still waiting for the answer.
async fn ingest<S: Store>(app: App<S>, mut batch: UsageBatch, now_ms: i64) -> Response {
    let (gateway_id, events) = (batch.gateway_id.clone(), std::mem::take(&mut batch.guard_events));
    match app.store.ingest(batch, now_ms).await {
        Ok(mut ack) => {
            // The retry guard's events ride the same post (docs/guards.md); their answer is the
            // shared counts and recent checkpoints. Records are already durable: a failure here
            // is logged and answered without counts, never a reason to send the records again.
            match app.store.guard_exchange(&gateway_id, events, now_ms).await {
                Ok(guard) => ack.guard = guard,
                Err(e) => crate::log::warn("retry-guard events not stored; the gateways keep their own counts", serde_json::json!({"gateway_id": gateway_id, "error": e.to_string()})),
            }
            inc(&app.metrics.usage_batches, 1);
            inc(&app.metrics.usage_records_accepted, ack.accepted);
            inc(&app.metrics.usage_records_duplicate, ack.duplicates);
            if ack.accepted > 0 {
                app.notifier.poke();
            }
            ok_json(StatusCode::OK, &ack)
        }
        Err(e) => store_error(&app.metrics, e),
    }
}

async fn healthz<S: Store>(State(app): State<App<S>>) -> Response {
    match app.store.health().await {
        Ok(()) => ok_json(StatusCode::OK, &json!({"status": "ok"})),
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, "unavailable", e.to_string()),
    }
}

async fn metrics<S: Store>(State(app): State<App<S>>, headers: HeaderMap) -> Response {
    if app.auth.metrics_needs_token() {
        tri!(app.role(&headers, Role::Viewer));
    }
    // The forecasts first: the computation counter rendered below then counts this scrape's.
    let forecasts = app.metrics.forecasts.get(app.store.as_ref(), app.clock.now_ms()).await;
    // Templates charge nobody: no gauges of theirs (the budgets they made have their own).
    let budgets = BudgetState::without_templates(app.store.list_budgets(app.clock.now_ms()).await.unwrap_or_default());
    let mut text = app.metrics.render(&budgets);
    if let Ok((at, f)) = forecasts {
        text.push_str(&crate::metrics::render_forecasts(&f, at));
    }
    text.push_str(&crate::gov_api::workflow_metrics(app.store.as_ref(), app.clock.now_ms()).await);
    text.push_str(&app.notifier.render_metrics(crate::notify::EventLog::pending_deliveries(app.store.as_ref()).await.ok()));
    let mut r = text.into_response();
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"));
    r
}

/// `{"budgets": [BudgetState], "templates": [{"template": BudgetSpec, "budgets_made": n}]}`: the
/// budgets that charge someone (those written by hand and those made from templates), and the
/// templates apart, with how many budgets each has made (a template's own spend is always zero:
/// it is not a budget anyone is charged to).
async fn list_budgets<S: Store>(State(app): State<App<S>>, headers: HeaderMap) -> Response {
    tri!(app.role(&headers, Role::Viewer));
    match app.store.list_budgets(app.clock.now_ms()).await {
        Ok(all) => {
            let (templates, budgets): (Vec<BudgetState>, Vec<BudgetState>) = all.into_iter().partition(BudgetState::is_template);
            let templates: Vec<_> = templates
                .into_iter()
                .map(|t| {
                    let made = budgets.iter().filter(|b| b.budget.template.as_deref() == Some(t.budget.id.as_str())).count();
                    json!({"template": t.budget, "budgets_made": made})
                })
                .collect();
            ok_json(StatusCode::OK, &json!({ "budgets": budgets, "templates": templates }))
        }
        Err(e) => store_error(&app.metrics, e),
    }
}

async fn budget_state<S: Store>(app: &App<S>, id: &str) -> Result<crate::store::BudgetState, Response> {
    let budgets = app.store.list_budgets(app.clock.now_ms()).await.map_err(|e| store_error(&app.metrics, e))?;
    budgets
        .into_iter()
        .find(|b| b.budget.id == id)
        .ok_or_else(|| error(StatusCode::NOT_FOUND, "not_found", format!("no budget `{id}`; list them with GET /admin/budgets")))
}

async fn get_budget<S: Store>(State(app): State<App<S>>, headers: HeaderMap, Path(id): Path<String>) -> Response {
    tri!(app.role(&headers, Role::Viewer));
    ok_json(StatusCode::OK, &tri!(budget_state(&app, &id).await))
}

async fn save_budget<S: Store>(app: &App<S>, actor: &str, budget: Budget) -> Response {
    let id = budget.id.clone();
    let outcome = match app.store.put_budget(budget, actor, app.clock.now_ms()).await {
        Ok(PutOutcome::Created) => "created",
        Ok(PutOutcome::Updated { .. }) => "updated",
        Ok(PutOutcome::Unchanged) => "unchanged",
        Err(e) => return store_error(&app.metrics, e),
    };
    crate::log::info("budget saved", json!({"budget": id, "outcome": outcome, "actor": actor}));
    // An explicit budget overrides what a template made for its scope: those budgets go (audited).
    let budgets = tri!(app.store.list_budgets(app.clock.now_ms()).await.map_err(|e| store_error(&app.metrics, e)));
    if let Some(saved) = budgets.iter().find(|b| b.budget.id == id).filter(|b| b.budget.template.is_none()) {
        for made in budgets.iter().filter(|b| b.budget.scope == saved.budget.scope && b.budget.template.is_some()) {
            tri!(app.store.delete_budget(&made.budget.id, actor, app.clock.now_ms()).await.map_err(|e| store_error(&app.metrics, e)));
        }
    }
    let state = tri!(budget_state(app, &id).await);
    ok_json(StatusCode::OK, &json!({ "outcome": outcome, "budget": state }))
}

async fn put_budget<S: Store>(State(app): State<App<S>>, headers: HeaderMap, Path(id): Path<String>, body: Body) -> Response {
    let actor = tri!(app.admin(&headers));
    let mut spec: BudgetSpec = tri!(parse_body(&body));
    if spec.id.is_empty() {
        spec.id = id.clone();
    } else if spec.id != id {
        return invalid(format!("id: the body says `{}` but the path says `{id}`; make them match or omit id", spec.id));
    }
    let budget = tri!(Budget::from_spec(spec).map_err(invalid));
    save_budget(&app, &actor, budget).await
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct TopUp {
    amount: String,
}

async fn topup<S: Store>(State(app): State<App<S>>, headers: HeaderMap, Path(id): Path<String>, body: Body) -> Response {
    let actor = tri!(app.admin(&headers));
    let TopUp { amount } = tri!(parse_body(&body));
    let Some(add) = parse_decimal_scaled(&amount, 6).and_then(|m| Micros::try_from(m).ok()) else {
        return invalid(format!("amount: `{amount}` is not an amount of dollars; write a decimal such as \"100.00\""));
    };
    let state = tri!(budget_state(&app, &id).await);
    let mut budget = tri!(Budget::from_spec(state.budget).map_err(|e| error(StatusCode::INTERNAL_SERVER_ERROR, "internal", e)));
    budget.limit_micros = budget.limit_micros.saturating_add(add);
    save_budget(&app, &actor, budget).await
}

async fn delete_budget<S: Store>(State(app): State<App<S>>, headers: HeaderMap, Path(id): Path<String>) -> Response {
    let actor = tri!(app.admin(&headers));
    match app.store.delete_budget(&id, &actor, app.clock.now_ms()).await {
        Ok(Some(spec)) => {
            crate::log::info("budget deleted", json!({"budget": id, "actor": actor}));
            ok_json(StatusCode::OK, &json!({ "deleted": spec }))
        }
        Ok(None) => error(StatusCode::NOT_FOUND, "not_found", format!("no budget `{id}`; nothing deleted")),
        Err(e) => store_error(&app.metrics, e),
    }
}

fn exemption_json(e: &Exemption, now_ms: i64) -> serde_json::Value {
    let mut v = serde_json::to_value(e).unwrap_or_default();
    if let Some(obj) = v.as_object_mut() {
        obj.insert("active".into(), json!(e.active_at(now_ms)));
        obj.insert("amount".into(), json!(tollgate_core::money::format_micros(e.amount_micros)));
    }
    v
}

async fn list_exemptions<S: Store>(State(app): State<App<S>>, headers: HeaderMap) -> Response {
    tri!(app.role(&headers, Role::Viewer));
    let now = app.clock.now_ms();
    match app.store.list_exemptions().await {
        Ok(list) => ok_json(StatusCode::OK, &json!({ "exemptions": list.iter().map(|e| exemption_json(e, now)).collect::<Vec<_>>() })),
        Err(e) => store_error(&app.metrics, e),
    }
}

async fn add_exemption<S: Store>(State(app): State<App<S>>, headers: HeaderMap, body: Body) -> Response {
    let actor = tri!(app.admin(&headers));
    let spec: ExemptionSpec = tri!(parse_body(&body));
    let now = app.clock.now_ms();
    let exemption = tri!(Exemption::from_spec(spec, &actor, now).map_err(invalid));
    match app.store.add_exemption(exemption, &actor, now).await {
        Ok(e) => {
            crate::log::info("exemption added", json!({"exemption": e.id, "scope": e.scope, "actor": actor}));
            ok_json(StatusCode::CREATED, &exemption_json(&e, now))
        }
        Err(e) => store_error(&app.metrics, e),
    }
}

async fn revoke_exemption<S: Store>(State(app): State<App<S>>, headers: HeaderMap, Path(id): Path<String>) -> Response {
    let actor = tri!(app.admin(&headers));
    let Ok(id) = id.parse::<u64>() else { return invalid(format!("`{id}` is not an exemption id (a number)")) };
    let now = app.clock.now_ms();
    match app.store.revoke_exemption(id, &actor, now).await {
        Ok(Some(e)) => ok_json(StatusCode::OK, &exemption_json(&e, now)),
        Ok(None) => error(StatusCode::NOT_FOUND, "not_found", format!("no exemption {id}")),
        Err(e) => store_error(&app.metrics, e),
    }
}

/// Refuses query parameters the endpoint does not know (a typo is an error, not a silent default).
pub(crate) fn check_params(params: &HashMap<String, String>, known: &[&str]) -> Result<(), Response> {
    match params.keys().find(|k| !known.contains(&k.as_str())) {
        Some(k) => Err(invalid(format!("unknown query parameter `{k}`; this endpoint takes {}", known.join(", ")))),
        None => Ok(()),
    }
}

pub(crate) fn format_param(params: &HashMap<String, String>) -> Result<bool, Response> {
    match params.get("format").map(String::as_str) {
        None | Some("json") => Ok(false),
        Some("csv") => Ok(true),
        Some(other) => Err(invalid(format!("format: `{other}` is not supported; use json or csv"))),
    }
}

pub(crate) fn time_param(params: &HashMap<String, String>, name: &str, default: i64) -> Result<i64, Response> {
    match params.get(name) {
        None => Ok(default),
        Some(t) => crate::window::parse_time_ms(t).map_err(|e| invalid(format!("{name}: {e}"))),
    }
}

pub(crate) fn csv_response(filename: &str, text: String) -> Response {
    let mut r = text.into_response();
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/csv; charset=utf-8"));
    if let Ok(v) = HeaderValue::from_str(&format!("attachment; filename=\"{filename}\"")) {
        r.headers_mut().insert(header::CONTENT_DISPOSITION, v);
    }
    r
}

async fn spend_report<S: Store>(State(app): State<App<S>>, headers: HeaderMap, Query(params): Query<HashMap<String, String>>) -> Response {
    tri!(app.role(&headers, Role::Viewer));
    tri!(check_params(&params, &["group_by", "from", "to", "format", "with"]));
    let csv = tri!(format_param(&params));
    let group_by = tri!(GroupBy::parse_list(params.get("group_by").map(String::as_str).unwrap_or("")).map_err(invalid));
    let from_ms = tri!(time_param(&params, "from", 0));
    let to_ms = tri!(time_param(&params, "to", i64::MAX));
    if to_ms <= from_ms {
        return invalid("to: must be after from");
    }
    let rows = match app.store.report(ReportQuery::utc(group_by.clone(), from_ms, to_ms)).await {
        Ok(rows) => rows,
        Err(e) => return store_error(&app.metrics, e),
    };
    match params.get("with").map(String::as_str) {
        None | Some("") => {}
        Some("seats") => return planning::spend_with_seats(&app, &group_by, rows, from_ms, to_ms, csv).await,
        Some(other) => return invalid(format!("with: `{other}` is not something the spend report can add; use with=seats")),
    }
    if csv {
        let (header, cells) = report::spend_cells(&group_by, &rows);
        return csv_response("tollgate-spend.csv", report::to_csv(&header, &cells));
    }
    ok_json(
        StatusCode::OK,
        &json!({
            "group_by": group_by,
            "from_ms": from_ms,
            "to_ms": if to_ms == i64::MAX { None } else { Some(to_ms) },
            "rows": rows.iter().map(|r| report::spend_row_json(&group_by, r)).collect::<Vec<_>>(),
            "total": report::total_json(&rows),
        }),
    )
}

async fn utilization_report<S: Store>(State(app): State<App<S>>, headers: HeaderMap, Query(params): Query<HashMap<String, String>>) -> Response {
    tri!(app.role(&headers, Role::Viewer));
    tri!(check_params(&params, &["format"]));
    let csv = tri!(format_param(&params));
    // The forecasts read the budget states themselves; one read serves both.
    let forecasts = match crate::forecast::load(app.store.as_ref(), app.clock.now_ms()).await {
        Ok(f) => f,
        Err(e) => return store_error(&app.metrics, e),
    };
    let budgets = match app.store.list_budgets(app.clock.now_ms()).await {
        Ok(b) => BudgetState::without_templates(b),
        Err(e) => return store_error(&app.metrics, e),
    };
    if csv {
        let (header, cells) = report::utilization_cells_with(&budgets, Some(&forecasts));
        return csv_response("tollgate-utilization.csv", report::to_csv(&header, &cells));
    }
    let rows: Vec<_> = budgets
        .iter()
        .map(|b| {
            let forecast = forecasts.budget(&b.budget.id).map(|f| {
                json!({"trailing_7d_micros": f.trailing_7d_micros, "pace_today_micros": f.pace_today_micros,
                    "projected_end_micros": f.projection.projected_end_micros, "hard_limit_at": f.projection.hard_limit_at,
                    "hard_limit_day": f.projection.hard_limit_day, "projected_to_exceed": f.projection.projected_to_exceed})
            });
            json!({
                "budget": b.budget.id, "scope": b.budget.scope, "window": b.budget.window, "mode": b.budget.mode,
                "spent_micros": b.spent_micros, "limit_micros": b.effective_limit_micros, "hard_limit_micros": b.hard_limit_micros,
                "utilization": b.utilization(), "status": b.status, "leased_micros": b.leased_micros,
                "exemption_micros": b.exemption_micros, "window_start": b.window_start, "resets_at": b.resets_at,
                "forecast": forecast,
            })
        })
        .collect();
    ok_json(StatusCode::OK, &json!({ "budgets": rows }))
}

async fn audit<S: Store>(State(app): State<App<S>>, headers: HeaderMap, Query(params): Query<HashMap<String, String>>) -> Response {
    tri!(app.role(&headers, Role::Viewer));
    tri!(check_params(&params, &["subject", "since", "limit"]));
    let since_ms = match params.get("since") {
        Some(t) => Some(tri!(crate::window::parse_time_ms(t).map_err(|e| invalid(format!("since: {e}"))))),
        None => None,
    };
    let limit = match params.get("limit").map(|l| l.parse::<usize>()) {
        None => 100,
        Some(Ok(l)) if (1..=10_000).contains(&l) => l,
        Some(_) => return invalid("limit: give a number between 1 and 10000"),
    };
    let query = AuditQuery { subject: params.get("subject").cloned(), since_ms, limit };
    match app.store.audit(query).await {
        Ok(entries) => ok_json(StatusCode::OK, &json!({ "entries": entries })),
        Err(e) => store_error(&app.metrics, e),
    }
}

/// Applies the budgets file at start-up: each budget is created or updated (audited as
/// `file:<path>`) unless identical to the stored one. Budgets not in the file are left alone.
pub async fn apply_budget_file<S: Store>(store: &S, path: &std::path::Path, now_ms: i64) -> Result<(usize, usize), String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read budgets file {}: {e}", path.display()))?;
    let budgets = BudgetFile::parse(&text)?;
    let actor = format!("file:{}", path.display());
    let (mut changed, total) = (0, budgets.len());
    for budget in budgets {
        if !valid_id(&budget.id) {
            continue;
        }
        match store.put_budget(budget, &actor, now_ms).await.map_err(|e| e.to_string())? {
            PutOutcome::Unchanged => {}
            _ => changed += 1,
        }
    }
    Ok((changed, total))
}
