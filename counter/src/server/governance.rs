//! Governance endpoints: the events log (`GET /admin/events`) and baselines
//! (`GET /admin/reports/baseline`). Same conventions as the rest of the API: admin token, unknown
//! query parameters refused, every bad value a 400 naming the parameter, JSON or CSV.

use super::{check_params, csv_response, format_param, invalid, ok_json, store_error, time_param, App};
use crate::baseline::{self, DAY_MS};
use crate::notify::{EventKind, EventQuery};
use crate::report;
use crate::store::{GroupBy, ReportQuery, Store};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use serde_json::json;
use std::collections::HashMap;

fn limit_param(params: &HashMap<String, String>) -> Result<usize, Response> {
    match params.get("limit").map(|l| l.parse::<usize>()) {
        None => Ok(100),
        Some(Ok(l)) if (1..=10_000).contains(&l) => Ok(l),
        Some(_) => Err(invalid("limit: give a number between 1 and 10000")),
    }
}

pub(super) async fn events<S: Store>(State(app): State<App<S>>, headers: HeaderMap, Query(params): Query<HashMap<String, String>>) -> Response {
    tri!(app.role(&headers, crate::auth::Role::Viewer));
    tri!(check_params(&params, &["kind", "scope", "subject", "since", "until", "limit", "format"]));
    let csv = tri!(format_param(&params));
    let kind = match params.get("kind") {
        Some(k) => Some(tri!(EventKind::parse(k).map_err(|e| invalid(format!("kind: {e}"))))),
        None => None,
    };
    let since_ms = match params.get("since") {
        Some(_) => Some(tri!(time_param(&params, "since", 0))),
        None => None,
    };
    let until_ms = match params.get("until") {
        Some(_) => Some(tri!(time_param(&params, "until", 0))),
        None => None,
    };
    if let (Some(s), Some(u)) = (since_ms, until_ms) {
        if u <= s {
            return invalid("until: must be after since");
        }
    }
    let query = EventQuery { kind, scope: params.get("scope").cloned(), subject: params.get("subject").cloned(), since_ms, until_ms, limit: tri!(limit_param(&params)) };
    let rows = match app.store.list_events(&query).await {
        Ok(rows) => rows,
        Err(e) => return store_error(&app.metrics, e),
    };
    if csv {
        let header: Vec<String> = ["seq", "at", "key", "kind", "scope", "subject", "window", "title", "delivered", "pending"].map(String::from).to_vec();
        let cells: Vec<Vec<String>> = rows
            .iter()
            .map(|r| {
                let e = &r.event;
                let delivered = r.deliveries.iter().filter(|d| d.delivered_at_ms.is_some()).count();
                vec![
                    e.seq.to_string(),
                    crate::window::format_time_ms(e.at_ms),
                    e.draft.key.clone(),
                    e.draft.kind.as_str().to_owned(),
                    e.draft.scope.clone(),
                    e.draft.subject.clone().unwrap_or_default(),
                    e.draft.window.clone(),
                    e.draft.title.clone(),
                    delivered.to_string(),
                    (r.deliveries.len() - delivered).to_string(),
                ]
            })
            .collect();
        return csv_response("tollgate-events.csv", report::to_csv(&header, &cells));
    }
    ok_json(StatusCode::OK, &json!({ "events": rows }))
}

pub(super) async fn baseline<S: Store>(State(app): State<App<S>>, headers: HeaderMap, Query(params): Query<HashMap<String, String>>) -> Response {
    tri!(app.role(&headers, crate::auth::Role::Viewer));
    tri!(check_params(&params, &["scope", "days", "to", "format"]));
    let csv = tri!(format_param(&params));
    let Some(scope) = params.get("scope") else {
        return invalid("scope: required; use team, user, use_case, model, org or cost_center (optionally team:platform for one)");
    };
    let (dim, only) = tri!(baseline::parse_dimension(scope).map_err(invalid));
    let days = match params.get("days").map(|d| d.parse::<u32>()) {
        None => 60,
        Some(Ok(d)) if (1..=400).contains(&d) => d,
        Some(_) => return invalid("days: give a number of days between 1 and 400"),
    };
    let now = app.clock.now_ms();
    let to_ms = tri!(time_param(&params, "to", now)).div_euclid(DAY_MS) * DAY_MS;
    let from_ms = to_ms - i64::from(days) * DAY_MS;
    let rows = match app.store.report(ReportQuery::utc(vec![dim, GroupBy::Day], from_ms, to_ms)).await {
        Ok(rows) => rows,
        Err(e) => return store_error(&app.metrics, e),
    };
    let budgets = crate::store::BudgetState::without_templates(app.store.list_budgets(now).await.unwrap_or_default());
    let result = baseline::compute(dim.as_str(), &rows, from_ms, days, only.as_deref(), &budgets);
    if csv {
        let (header, cells) = baseline::cells(&result);
        return csv_response("tollgate-baseline.csv", report::to_csv(&header, &cells));
    }
    ok_json(
        StatusCode::OK,
        &json!({
            "scope": scope, "dimension": dim.as_str(), "days": days,
            "from": crate::window::utc_date(from_ms.div_euclid(1000)), "to": crate::window::utc_date(to_ms.div_euclid(1000)),
            "from_ms": from_ms, "to_ms": to_ms,
            "rounding": "mean floors; p50/p95 nearest rank; baseline_monthly = ceil(total x 30 / days); suggested = ceil(baseline_monthly x 130|150 / 100); integer micro-dollars",
            "rows": result,
        }),
    )
}
