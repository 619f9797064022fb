//! Planning endpoints (issue 18 §1, §4, §5): forecasts (`GET /admin/reports/forecast`), seats
//! beside tokens and outliers. Same conventions as the rest of the API: admin-side token, unknown
//! query parameters refused, every bad value a 400 naming the parameter, JSON or CSV.

use super::{check_params, csv_response, format_param, ok_json, store_error, App};
use crate::forecast;
use crate::report;
use crate::store::Store;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use serde_json::json;
use tollgate_core::money::format_micros;
use std::collections::HashMap;

pub(super) async fn forecast_report<S: Store>(State(app): State<App<S>>, headers: HeaderMap, Query(params): Query<HashMap<String, String>>) -> Response {
    tri!(app.role(&headers, crate::auth::Role::Viewer));
    tri!(check_params(&params, &["format"]));
    let csv = tri!(format_param(&params));
    let now = app.clock.now_ms();
    let f = match forecast::load(app.store.as_ref(), now).await {
        Ok(f) => f,
        Err(e) => return store_error(&app.metrics, e),
    };
    if csv {
        let (header, cells) = forecast::cells(&f);
        return csv_response("tollgate-forecast.csv", report::to_csv(&header, &cells));
    }
    ok_json(StatusCode::OK, &json!({"at_ms": now, "method": f.method, "budgets": f.budgets, "workflows": f.workflows}))
}

/// Records read for one outliers answer at most (the answer says `truncated` beyond).
pub const OUTLIER_RECORDS_MAX: usize = 1_000_000;

pub(super) async fn outliers_report<S: Store>(State(app): State<App<S>>, headers: HeaderMap, Query(params): Query<HashMap<String, String>>) -> Response {
    tri!(app.role(&headers, crate::auth::Role::Viewer));
    tri!(check_params(&params, &["from", "to", "k", "min_samples", "format"]));
    let csv = tri!(format_param(&params));
    let now = app.clock.now_ms();
    let to_ms = tri!(super::time_param(&params, "to", now));
    let from_ms = tri!(super::time_param(&params, "from", to_ms - 30 * forecast::DAY_MS));
    if to_ms <= from_ms {
        return super::invalid("to: must be after from");
    }
    let k_tenths = match params.get("k") {
        Some(k) => tri!(crate::outliers::parse_k(k).map_err(super::invalid)),
        None => app.gov.outlier_k_tenths.unwrap_or(30),
    };
    let min_samples = match params.get("min_samples").map(|m| m.parse::<usize>()) {
        None => 5,
        Some(Ok(m)) if (3..=1000).contains(&m) => m,
        Some(_) => return super::invalid("min_samples: give a number between 3 and 1000 (members a baseline needs)"),
    };
    let mut records = match app.store.requests(crate::store::RequestsQuery { from_ms, to_ms, limit: OUTLIER_RECORDS_MAX + 1 }).await {
        Ok(r) => r,
        Err(e) => return store_error(&app.metrics, e),
    };
    let truncated = records.len() > OUTLIER_RECORDS_MAX;
    records.truncate(OUTLIER_RECORDS_MAX);
    let rows = crate::outliers::find(&records, crate::outliers::Settings { k_tenths, min_samples });
    if csv {
        let (header, cells) = crate::outliers::cells(&rows);
        return csv_response("tollgate-outliers.csv", report::to_csv(&header, &cells));
    }
    ok_json(
        StatusCode::OK,
        &json!({
            "from_ms": from_ms, "to_ms": to_ms, "k": format!("{}.{}", k_tenths / 10, k_tenths % 10), "min_samples": min_samples,
            "records": records.len(), "truncated": truncated,
            "rule": "cost > median + k x MAD of its own group (runs: the workflow's runs; workflow days: the workflow's days; days: the period's days); MAD floored at max(ceil(median/20), 1)",
            "outliers": rows,
        }),
    )
}

/// The seats report of one month: `Ok(None)` when no seats config is stored.
pub(crate) async fn seats_rows<S: Store>(store: &S, month: crate::review::Month) -> crate::store::StoreResult<Option<Vec<crate::seats::TeamRoleRow>>> {
    let Some(spec) = store.get_seats().await? else { return Ok(None) };
    // A stored config passed validation when it was saved; an older one that no longer does is
    // reported as far as it goes (roles it cannot price count 0).
    let seats = crate::seats::Seats::from_spec(spec.clone()).unwrap_or(crate::seats::Seats { spec, roles: Default::default() });
    let (from_ms, to_ms) = month.range_ms();
    let rows = store.report(crate::store::ReportQuery::utc(vec![crate::store::GroupBy::Team, crate::store::GroupBy::User], from_ms, to_ms)).await?;
    let usage: Vec<(String, String, tollgate_core::money::Micros)> =
        rows.into_iter().map(|r| (r.keys.first().cloned().unwrap_or_default(), r.keys.get(1).cloned().unwrap_or_default(), r.cost_micros)).collect();
    Ok(Some(crate::seats::report(&seats, &usage)))
}

/// `GET /admin/reports/spend?group_by=team&with=seats` (issue 18 §4): each team's usage with its
/// seats beside it — the users the seats config puts in the team, their seats' cost in the month,
/// usage + seats as the total, and per role (`roles`) the seats report's row (usage by configured
/// team, band and who is outside it). Seats are paid per month, so the period is one UTC month;
/// teams with seats and no usage get a row of their own. Without a seats config the seat figures
/// are 0.
pub(super) async fn spend_with_seats<S: Store>(
    app: &App<S>,
    group_by: &[crate::store::GroupBy],
    mut rows: Vec<crate::store::ReportRow>,
    from_ms: i64,
    to_ms: i64,
    csv: bool,
) -> Response {
    if group_by != [crate::store::GroupBy::Team] {
        return super::invalid("with: seats sit beside usage per team: use group_by=team with with=seats (per role: each row's `roles`, or GET /admin/reports/seats)");
    }
    let month = crate::review::Month::of_day(&crate::window::utc_date(from_ms.div_euclid(1000))).filter(|m| m.range_ms() == (from_ms, to_ms));
    let Some(month) = month else {
        return super::invalid("from: seats are paid per month: with=seats needs from and to to span one UTC month, e.g. from=2026-11-01&to=2026-12-01");
    };
    let seat_rows = match seats_rows(app.store.as_ref(), month).await {
        Ok(rows) => rows.unwrap_or_default(),
        Err(e) => return super::store_error(&app.metrics, e),
    };
    for team in seat_rows.iter().map(|r| &r.team) {
        if !rows.iter().any(|r| r.keys.first() == Some(team)) {
            rows.push(crate::store::ReportRow { keys: vec![team.clone()], ..Default::default() });
        }
    }
    rows.sort_by(|a, b| a.keys.cmp(&b.keys));
    let of_team = |team: &str| -> Vec<&crate::seats::TeamRoleRow> { seat_rows.iter().filter(|r| r.team == team).collect() };
    let seats: Vec<report::TeamSeats> = rows
        .iter()
        .map(|r| {
            let team = r.keys.first().map(String::as_str).unwrap_or_default();
            // Users without a seats entry (role "") hold no seat.
            of_team(team).into_iter().filter(|s| !s.role.is_empty()).fold(report::TeamSeats::default(), |t, s| report::TeamSeats {
                users: t.users + s.users,
                seats_micros: t.seats_micros.saturating_add(s.seats_micros),
            })
        })
        .collect();
    if csv {
        let (header, cells) = report::spend_cells_with_seats(group_by, &rows, &seats);
        return csv_response(&format!("tollgate-spend-seats-{month}.csv"), report::to_csv(&header, &cells));
    }
    let out: Vec<serde_json::Value> = rows
        .iter()
        .zip(&seats)
        .map(|(r, s)| {
            let mut row = report::spend_row_json(group_by, r);
            let total = r.cost_micros.saturating_add(s.seats_micros);
            let team = r.keys.first().map(String::as_str).unwrap_or_default();
            row["seats"] = json!({
                "users": s.users, "seats_micros": s.seats_micros, "seats_usd": format_micros(s.seats_micros),
                "total_micros": total, "total_usd": format_micros(total),
                "roles": of_team(team),
            });
            row
        })
        .collect();
    let seats_total = seats.iter().fold(0 as tollgate_core::money::Micros, |a, s| a.saturating_add(s.seats_micros));
    let mut total = report::total_json(&rows);
    total["seats_micros"] = json!(seats_total);
    total["total_with_seats_micros"] = json!(total["cost_micros"].as_i64().unwrap_or(0).saturating_add(seats_total));
    ok_json(StatusCode::OK, &json!({"group_by": group_by, "month": month.to_string(), "from_ms": from_ms, "to_ms": to_ms, "rows": out, "total": total}))
}

pub(super) async fn get_seats<S: Store>(State(app): State<App<S>>, headers: HeaderMap) -> Response {
    tri!(app.role(&headers, crate::auth::Role::Viewer));
    match app.store.get_seats().await {
        Ok(Some(spec)) => ok_json(StatusCode::OK, &spec),
        Ok(None) => super::error(StatusCode::NOT_FOUND, "not_found", "no seats config yet; PUT /admin/seats (or \"seats\" in the budgets file) sets one"),
        Err(e) => store_error(&app.metrics, e),
    }
}

pub(super) async fn put_seats<S: Store>(State(app): State<App<S>>, headers: HeaderMap, body: super::Body) -> Response {
    let actor = tri!(app.role(&headers, crate::auth::Role::Admin)).name;
    let spec: crate::seats::SeatsSpec = tri!(super::parse_body(&body));
    let seats = tri!(crate::seats::Seats::from_spec(spec).map_err(super::invalid));
    let spec = seats.spec.clone();
    match app.store.put_seats(seats, &actor, app.clock.now_ms()).await {
        Ok(outcome) => {
            crate::log::info("seats saved", json!({"outcome": outcome.as_str(), "actor": actor}));
            ok_json(StatusCode::OK, &json!({"outcome": outcome.as_str(), "seats": spec}))
        }
        Err(e) => store_error(&app.metrics, e),
    }
}

pub(super) async fn seats_report<S: Store>(State(app): State<App<S>>, headers: HeaderMap, Query(params): Query<HashMap<String, String>>) -> Response {
    tri!(app.role(&headers, crate::auth::Role::Viewer));
    tri!(check_params(&params, &["month", "format"]));
    let csv = tri!(format_param(&params));
    let Some(month) = params.get("month") else { return super::invalid("month: give the month, ?month=YYYY-MM") };
    let month = tri!(crate::review::Month::parse(month).map_err(|e| super::invalid(format!("month: {e}"))));
    let rows = match seats_rows(app.store.as_ref(), month).await {
        Ok(Some(rows)) => rows,
        Ok(None) => return super::error(StatusCode::NOT_FOUND, "not_found", "no seats config yet; PUT /admin/seats (or \"seats\" in the budgets file) sets one"),
        Err(e) => return store_error(&app.metrics, e),
    };
    if csv {
        let (header, cells) = crate::seats::cells(&rows);
        return csv_response(&format!("tollgate-seats-{month}.csv"), report::to_csv(&header, &cells));
    }
    ok_json(StatusCode::OK, &json!({"month": month.label(), "rows": rows}))
}

/// Applies the `seats` of the budgets file at start-up (audited as `file:<path>`; unchanged is not
/// audited). Errors name the field: `budgets file: seats.users.bob.role: ...`.
pub async fn apply_seats_file<S: Store>(store: &S, path: &std::path::Path, now_ms: i64) -> Result<Option<&'static str>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read budgets file {}: {e}", path.display()))?;
    let file: crate::budget::BudgetFile = serde_json::from_str(&text).map_err(|e| format!("budgets file: {e}"))?;
    let Some(spec) = file.seats else { return Ok(None) };
    let seats = crate::seats::Seats::from_spec(spec).map_err(|e| format!("budgets file: seats.{e}"))?;
    let outcome = store.put_seats(seats, &format!("file:{}", path.display()), now_ms).await.map_err(|e| e.to_string())?;
    Ok(Some(outcome.as_str()))
}
