//! One principal's own page: `GET /reports/principal` (its budgets and its spend by day and by
//! model) and `GET /whoami` (what the presented token is).
//!
//! Why a separate endpoint rather than the console filtering `/admin/reports/spend`: an engineer's
//! personal token (`crate::auth`, scoped to `user:<id>` or `key:<id>`) must see their own rows and
//! *nobody else's*, so the filtering happens here, on the counter, where the token is checked. A
//! personal token reads only its own scope (a `scope` naming another principal is a 403 naming
//! both); an admin-side token with the viewer role or above reads any principal's page by naming
//! it. The figures come from the same ledger queries as the spend report, so the two agree to the
//! micro-dollar.

use super::{check_params, csv_response, error, format_param, invalid, ok_json, store_error, time_param, App};
use crate::auth::Role;
use crate::report;
use crate::store::{GroupBy, ReportQuery, ReportRow, Store};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use serde_json::json;
use std::collections::HashMap;

/// A principal scope: `user:<id>` or `key:<id>`, with the spend report's dimension for it.
fn principal(scope: &str) -> Option<(GroupBy, &str)> {
    match scope.split_once(':') {
        Some(("user", id)) if !id.is_empty() => Some((GroupBy::User, id)),
        Some(("key", id)) if !id.is_empty() => Some((GroupBy::Key, id)),
        _ => None,
    }
}

/// Whose page the caller may read: the personal token's own scope, or (viewer and above) the one
/// named by `scope`.
fn readable_scope<S: Store>(app: &App<S>, headers: &HeaderMap, asked: Option<&String>) -> Result<String, Response> {
    if let Some(own) = app.auth.personal(headers) {
        return match asked {
            Some(other) if other != own => {
                Err(error(StatusCode::FORBIDDEN, "forbidden", format!("this personal token may read `{own}` only, not `{other}`; omit scope or ask a viewer")))
            }
            _ => Ok(own.to_owned()),
        };
    }
    app.role(headers, Role::Viewer)?;
    let scope = asked.ok_or_else(|| invalid("scope: name the principal, `user:<id>` or `key:<id>` (e.g. scope=user:alice)"))?;
    match principal(scope) {
        Some(_) => Ok(scope.clone()),
        None => Err(invalid(format!("scope: `{scope}` is not a principal; write `user:<id>` or `key:<id>`"))),
    }
}

/// The ledger's rows of one principal, grouped by that principal's dimension and `then`.
async fn rows_of<S: Store>(app: &App<S>, dimension: GroupBy, id: &str, then: &[GroupBy], from_ms: i64, to_ms: i64) -> Result<Vec<ReportRow>, Response> {
    let group_by = std::iter::once(dimension).chain(then.iter().copied()).collect();
    let rows = app.store.report(ReportQuery::utc(group_by, from_ms, to_ms)).await.map_err(|e| store_error(&app.metrics, e))?;
    Ok(rows
        .into_iter()
        .filter(|r| r.keys.first().is_some_and(|k| k == id))
        .map(|mut r| {
            r.keys.remove(0);
            r
        })
        .collect())
}

pub(super) async fn principal_report<S: Store>(State(app): State<App<S>>, headers: HeaderMap, Query(params): Query<HashMap<String, String>>) -> Response {
    let scope = tri!(readable_scope(&app, &headers, params.get("scope")));
    tri!(check_params(&params, &["scope", "from", "to", "format"]));
    let csv = tri!(format_param(&params));
    let from_ms = tri!(time_param(&params, "from", 0));
    let to_ms = tri!(time_param(&params, "to", i64::MAX));
    if to_ms <= from_ms {
        return invalid("to: must be after from");
    }
    // Personal tokens are checked to be principals at start-up (`Auth::with_personal`).
    let Some((dimension, id)) = principal(&scope) else { return invalid("scope: write `user:<id>` or `key:<id>`") };
    if csv {
        let then = [GroupBy::Day, GroupBy::Model];
        let rows = tri!(rows_of(&app, dimension, id, &then, from_ms, to_ms).await);
        let (header, cells) = report::spend_cells(&then, &rows);
        return csv_response("tollgate-principal.csv", report::to_csv(&header, &cells));
    }
    let by_day = tri!(rows_of(&app, dimension, id, &[GroupBy::Day], from_ms, to_ms).await);
    let by_model = tri!(rows_of(&app, dimension, id, &[GroupBy::Model], from_ms, to_ms).await);
    let budgets = match app.store.list_budgets(app.clock.now_ms()).await {
        // Its own budgets, and the selector budgets it shares with other scopes.
        Ok(all) => all
            .into_iter()
            .filter(|b| b.budget.scope == scope || crate::budget::Selector::parse(&b.budget.scope).and_then(Result::ok).is_some_and(|s| s.covers_key(&scope)))
            .collect::<Vec<_>>(),
        Err(e) => return store_error(&app.metrics, e),
    };
    ok_json(
        StatusCode::OK,
        &json!({
            "scope": scope,
            "from_ms": from_ms,
            "to_ms": if to_ms == i64::MAX { None } else { Some(to_ms) },
            "budgets": budgets,
            "by_day": by_day.iter().map(|r| report::spend_row_json(&[GroupBy::Day], r)).collect::<Vec<_>>(),
            "by_model": by_model.iter().map(|r| report::spend_row_json(&[GroupBy::Model], r)).collect::<Vec<_>>(),
            "total": report::total_json(&by_day),
        }),
    )
}

/// What the presented token is: `{"kind":"personal","name":"user:alice","scope":"user:alice"}` or
/// `{"kind":"admin_side","name":"vic","role":"viewer"}`; 401 for anything else (gateway tokens too).
pub(super) async fn whoami<S: Store>(State(app): State<App<S>>, headers: HeaderMap) -> Response {
    if let Some(scope) = app.auth.personal(&headers) {
        return ok_json(StatusCode::OK, &json!({"kind": "personal", "name": scope, "scope": scope}));
    }
    let caller = tri!(app.role(&headers, Role::Viewer));
    ok_json(StatusCode::OK, &json!({"kind": "admin_side", "name": caller.name, "role": caller.role.as_str()}))
}
