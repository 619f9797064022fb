//! Shaping report rows for people and spreadsheets: JSON objects, CSV (the finance export) and a
//! plain text table for the CLI. Money is printed from integers with `money::format_micros`.

use crate::store::{BudgetState, GroupBy, ReportRow};
use crate::window::format_time_ms;
use serde_json::{json, Map, Value};
use tollgate_core::money::format_micros;

pub const SPEND_COLUMNS: [&str; 8] = [
    "requests",
    "cost_usd",
    "cost_micros",
    "input_tokens",
    "output_tokens",
    "cache_read_tokens",
    "cache_write_tokens",
    "estimated_requests",
];

/// One report row as a JSON object: the group dimensions by name, then the figures.
pub fn spend_row_json(group_by: &[GroupBy], row: &ReportRow) -> Value {
    let mut obj = Map::new();
    for (g, k) in group_by.iter().zip(&row.keys) {
        obj.insert(g.as_str().into(), Value::String(k.clone()));
    }
    obj.insert("requests".into(), json!(row.requests));
    obj.insert("cost_usd".into(), json!(format_micros(row.cost_micros)));
    obj.insert("cost_micros".into(), json!(row.cost_micros));
    obj.insert("input_tokens".into(), json!(row.input_tokens));
    obj.insert("output_tokens".into(), json!(row.output_tokens));
    obj.insert("cache_read_tokens".into(), json!(row.cache_read_tokens));
    obj.insert("cache_write_tokens".into(), json!(row.cache_write_tokens));
    obj.insert("estimated_requests".into(), json!(row.estimated_requests));
    Value::Object(obj)
}

/// The `total` object of a spend answer: requests and cost summed over `rows` (saturating).
pub fn total_json(rows: &[ReportRow]) -> Value {
    let cost_micros = rows.iter().fold(0 as tollgate_core::money::Micros, |s, r| s.saturating_add(r.cost_micros));
    let requests: u64 = rows.iter().map(|r| r.requests).sum();
    json!({"requests": requests, "cost_micros": cost_micros, "cost_usd": format_micros(cost_micros)})
}

/// Quotes a CSV field when it needs it (RFC 4180).
pub fn csv_field(text: &str) -> String {
    if text.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", text.replace('"', "\"\""))
    } else {
        text.to_owned()
    }
}

/// Rows of cells → CSV text with a header.
pub fn to_csv(header: &[String], rows: &[Vec<String>]) -> String {
    let mut out = String::new();
    let line = |cells: &[String], out: &mut String| {
        let fields: Vec<String> = cells.iter().map(|c| csv_field(c)).collect();
        out.push_str(&fields.join(","));
        out.push_str("\r\n");
    };
    line(header, &mut out);
    for r in rows {
        line(r, &mut out);
    }
    out
}

/// Rows of cells → an aligned text table.
pub fn to_table(header: &[String], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = String::new();
    let line = |cells: &[String], out: &mut String| {
        let padded: Vec<String> = cells.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect();
        out.push_str(padded.join("  ").trim_end());
        out.push('\n');
    };
    line(header, &mut out);
    for r in rows {
        line(r, &mut out);
    }
    out
}

/// The spend report as header + cells.
pub fn spend_cells(group_by: &[GroupBy], rows: &[ReportRow]) -> (Vec<String>, Vec<Vec<String>>) {
    let mut header: Vec<String> = group_by.iter().map(|g| g.as_str().to_owned()).collect();
    header.extend(SPEND_COLUMNS.iter().map(|c| c.to_string()));
    let cells = rows
        .iter()
        .map(|r| {
            let mut c = r.keys.clone();
            c.extend([
                r.requests.to_string(),
                format_micros(r.cost_micros),
                r.cost_micros.to_string(),
                r.input_tokens.to_string(),
                r.output_tokens.to_string(),
                r.cache_read_tokens.to_string(),
                r.cache_write_tokens.to_string(),
                r.estimated_requests.to_string(),
            ]);
            c
        })
        .collect();
    (header, cells)
}

/// Seats beside one team's usage in the spend report (`with=seats`, issue 18 §4): the users the
/// seats config puts in the team and what their seats cost in the month.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TeamSeats {
    pub users: u64,
    pub seats_micros: tollgate_core::money::Micros,
}

/// The columns `with=seats` adds; `total` is the row's usage plus its seats.
pub const SEAT_COLUMNS: [&str; 5] = ["seat_users", "seats_usd", "seats_micros", "total_usd", "total_micros"];

/// [`spend_cells`] with the seat columns after the figures (`seats[i]` beside `rows[i]`).
pub fn spend_cells_with_seats(group_by: &[GroupBy], rows: &[ReportRow], seats: &[TeamSeats]) -> (Vec<String>, Vec<Vec<String>>) {
    let (mut header, mut cells) = spend_cells(group_by, rows);
    header.extend(SEAT_COLUMNS.iter().map(|c| c.to_string()));
    for ((c, r), s) in cells.iter_mut().zip(rows).zip(seats) {
        let total = r.cost_micros.saturating_add(s.seats_micros);
        c.extend([s.users.to_string(), format_micros(s.seats_micros), s.seats_micros.to_string(), format_micros(total), total.to_string()]);
    }
    (header, cells)
}

/// The utilization report as header + cells.
pub fn utilization_cells(budgets: &[BudgetState]) -> (Vec<String>, Vec<Vec<String>>) {
    utilization_cells_with(budgets, None)
}

/// The utilization report with the forecast columns (`projected_end_usd`, `hard_limit_day`,
/// `projected_to_exceed`; empty when a budget has no forecast or it does not apply).
pub fn utilization_cells_with(budgets: &[BudgetState], forecasts: Option<&crate::forecast::Forecasts>) -> (Vec<String>, Vec<Vec<String>>) {
    let (mut header, mut cells) = utilization_base(budgets);
    if let Some(f) = forecasts {
        header.extend(["projected_end_usd", "hard_limit_day", "projected_to_exceed"].map(String::from));
        for (row, b) in cells.iter_mut().zip(budgets) {
            let fc = f.budget(&b.budget.id);
            row.push(fc.and_then(|x| x.projection.projected_end_micros).map(format_micros).unwrap_or_default());
            row.push(fc.and_then(|x| x.projection.hard_limit_day.clone()).unwrap_or_default());
            row.push(fc.map(|x| x.projection.projected_to_exceed.to_string()).unwrap_or_default());
        }
    }
    (header, cells)
}

fn utilization_base(budgets: &[BudgetState]) -> (Vec<String>, Vec<Vec<String>>) {
    let header = [
        "budget", "scope", "window", "mode", "spent_usd", "limit_usd", "hard_limit_usd", "utilization_pct", "status",
        "leased_usd", "exemption_usd", "window_start", "resets_at",
    ]
    .map(String::from)
    .to_vec();
    let cells = budgets
        .iter()
        .map(|b| {
            vec![
                b.budget.id.clone(),
                b.budget.scope.clone(),
                b.budget.window.clone(),
                serde_json::to_value(b.budget.mode).ok().and_then(|v| v.as_str().map(String::from)).unwrap_or_default(),
                format_micros(b.spent_micros),
                format_micros(b.effective_limit_micros),
                format_micros(b.hard_limit_micros),
                format!("{:.1}", b.utilization() * 100.0),
                serde_json::to_value(b.status).ok().and_then(|v| v.as_str().map(String::from)).unwrap_or_default(),
                format_micros(b.leased_micros),
                format_micros(b.exemption_micros),
                format_time_ms(b.window_start * 1000),
                b.resets_at.map(|t| format_time_ms(t * 1000)).unwrap_or_default(),
            ]
        })
        .collect();
    (header, cells)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_quotes_only_what_needs_it() {
        assert_eq!(csv_field("plain"), "plain");
        assert_eq!(csv_field("a,b"), "\"a,b\"");
        assert_eq!(csv_field("say \"hi\""), "\"say \"\"hi\"\"\"");
        let csv = to_csv(&["team".into(), "cost_usd".into()], &[vec!["a,b".into(), "1.000000".into()]]);
        assert_eq!(csv, "team,cost_usd\r\n\"a,b\",1.000000\r\n");
    }

    #[test]
    fn tables_align_columns() {
        let t = to_table(&["a".into(), "bb".into()], &[vec!["long".into(), "x".into()]]);
        assert_eq!(t, "a     bb\nlong  x\n");
    }
}
