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
