//! The governance subcommands: `workflows`, `requests`, `outcomes`, `insights`, `review`. Each calls
//! the admin API (`crate::gov_api`) with the token of `--token` / `TOLLGATE_ADMIN_TOKEN`, whatever
//! its role; the server decides what that role may do.

use super::{admin_call, encode_query, print_json, Conn, Format};
use crate::approval::ExemptionRequestSpec;
use crate::outcome::OutcomeSpec;
use crate::report::to_table;
use crate::workflow::WorkflowSpec;
use clap::Subcommand;
use hyper::Method;
use serde_json::{json, Value};
use std::path::PathBuf;

#[derive(Subcommand, Debug)]
pub enum WorkflowsCommand {
    /// List every workflow (owner, class, caps, review date, overdue).
    List {
        #[arg(long, value_enum, default_value = "table")]
        format: Format,
    },
    /// Show one workflow as JSON.
    Get { id: String },
    /// Create or replace workflows from a JSON file: one spec, or `{"workflows": [...]}` (a budgets file works).
    Set {
        #[arg(long)]
        file: PathBuf,
    },
    /// Delete a workflow and its cap budgets.
    Delete { id: String },
}

#[derive(Subcommand, Debug)]
pub enum RequestsCommand {
    /// List exemption requests.
    List {
        /// pending, approved or rejected.
        #[arg(long)]
        state: Option<String>,
    },
    /// Ask for a temporary increase (needs the requester role).
    Add {
        #[arg(long)]
        scope: String,
        /// Dollars, e.g. 250.00.
        #[arg(long)]
        amount: String,
        #[arg(long)]
        starts_at: Option<String>,
        #[arg(long)]
        ends_at: String,
        #[arg(long)]
        reason: String,
        /// The workflow it is for.
        #[arg(long)]
        use_case: Option<String>,
    },
    /// Approve a request filed by someone else (needs the approver role).
    Approve {
        id: u64,
        #[arg(long)]
        note: Option<String>,
    },
    /// Reject a request.
    Reject {
        id: u64,
        #[arg(long)]
        note: Option<String>,
    },
}

#[derive(Subcommand, Debug)]
pub enum OutcomesCommand {
    /// Record an outcome (idempotent by --id).
    Add {
        #[arg(long)]
        id: String,
        /// merged_pr, resolved_ticket, approved_brief or a configured kind.
        #[arg(long)]
        kind: String,
        #[arg(long)]
        team: Option<String>,
        #[arg(long)]
        user: Option<String>,
        #[arg(long)]
        use_case: Option<String>,
        #[arg(long)]
        task_id: Option<String>,
        #[arg(long)]
        at: Option<String>,
        #[arg(long)]
        url: Option<String>,
    },
    /// List outcomes.
    List {
        #[arg(long)]
        from: Option<String>,
        #[arg(long)]
        to: Option<String>,
        #[arg(long)]
        kind: Option<String>,
        #[arg(long, value_enum, default_value = "table")]
        format: Format,
    },
}

#[derive(Subcommand, Debug)]
pub enum InsightsCommand {
    /// Cost per outcome grouped by team, use_case and/or month.
    CostPerOutcome {
        #[arg(long, default_value = "team")]
        group_by: String,
        #[arg(long)]
        from: Option<String>,
        #[arg(long)]
        to: Option<String>,
        #[arg(long)]
        kind: Option<String>,
        #[arg(long, value_enum, default_value = "table")]
        format: Format,
    },
    /// Spend trend vs output trend per month or week.
    Trend {
        #[arg(long, default_value = "month")]
        period: String,
        #[arg(long)]
        from: Option<String>,
        #[arg(long)]
        to: Option<String>,
        #[arg(long)]
        team: Option<String>,
        #[arg(long)]
        use_case: Option<String>,
        #[arg(long, value_enum, default_value = "table")]
        format: Format,
    },
    /// Share of spend per model within each use case.
    ModelMix {
        #[arg(long)]
        from: Option<String>,
        #[arg(long)]
        to: Option<String>,
        #[arg(long, value_enum, default_value = "table")]
        format: Format,
    },
    /// Budget utilization by team.
    TeamUtilization {
        #[arg(long, value_enum, default_value = "table")]
        format: Format,
    },
}

/// Minimal RFC 4180 reader for the server's CSV (quoted fields may hold commas and quotes).
fn parse_csv(text: &str) -> Vec<Vec<String>> {
    let mut rows = Vec::new();
    for line in text.split("\r\n").filter(|l| !l.is_empty()) {
        let (mut cells, mut cell, mut quoted, mut chars) = (Vec::new(), String::new(), false, line.chars().peekable());
        while let Some(c) = chars.next() {
            match (c, quoted) {
                ('"', true) if chars.peek() == Some(&'"') => {
                    cell.push('"');
                    chars.next();
                }
                ('"', _) => quoted = !quoted,
                (',', false) => cells.push(std::mem::take(&mut cell)),
                (c, _) => cell.push(c),
            }
        }
        cells.push(cell);
        rows.push(cells);
    }
    rows
}

/// Prints a CSV endpoint's answer as CSV, JSON (from the JSON endpoint) or an aligned table.
pub(super) async fn show(conn: &Conn, path: &str, pairs: &[(&str, Option<&str>)], format: Format) -> Result<(), String> {
    let mut pairs = pairs.to_vec();
    pairs.push(("format", Some(if format == Format::Json { "json" } else { "csv" })));
    let answer = admin_call(conn, Method::GET, &format!("{path}{}", encode_query(&pairs)), None).await?;
    match format {
        Format::Json => print_json(&answer.json()?),
        Format::Csv => print!("{}", answer.text()),
        Format::Table => {
            let mut rows = parse_csv(&answer.text());
            if rows.is_empty() {
                return Ok(());
            }
            let header = rows.remove(0);
            print!("{}", to_table(&header, &rows));
        }
    }
    Ok(())
}

pub(super) async fn workflows(conn: Conn, command: WorkflowsCommand) -> Result<(), String> {
    match command {
        WorkflowsCommand::List { format } => {
            let v = admin_call(&conn, Method::GET, "/admin/workflows", None).await?.json()?;
            if format == Format::Json {
                print_json(&v);
                return Ok(());
            }
            let header = ["id", "team", "owner", "class", "weekly_cap", "monthly_cap", "review_date", "overdue"].map(String::from).to_vec();
            let s = |w: &Value, k: &str| match &w[k] {
                Value::String(s) => s.clone(),
                Value::Null => String::new(),
                other => other.to_string(),
            };
            let cells: Vec<Vec<String>> = v["workflows"].as_array().map(|l| l.iter().map(|w| header.iter().map(|h| s(w, h)).collect()).collect()).unwrap_or_default();
            match format {
                Format::Csv => print!("{}", crate::report::to_csv(&header, &cells)),
                _ => print!("{}", to_table(&header, &cells)),
            }
        }
        WorkflowsCommand::Get { id } => print_json(&admin_call(&conn, Method::GET, &format!("/admin/workflows/{id}"), None).await?.json()?),
        WorkflowsCommand::Delete { id } => {
            admin_call(&conn, Method::DELETE, &format!("/admin/workflows/{id}"), None).await?;
            println!("deleted workflow {id} and its cap budgets");
        }
        WorkflowsCommand::Set { file } => {
            let text = std::fs::read_to_string(&file).map_err(|e| format!("cannot read {}: {e}", file.display()))?;
            let specs: Vec<WorkflowSpec> = match serde_json::from_str::<WorkflowSpec>(&text) {
                Ok(spec) => vec![spec],
                Err(_) => serde_json::from_str::<crate::budget::BudgetFile>(&text).map_err(|e| format!("{}: {e}", file.display()))?.workflows,
            };
            for spec in specs {
                let id = spec.id.clone();
                let body = serde_json::to_value(&spec).map_err(|e| e.to_string())?;
                let v = admin_call(&conn, Method::PUT, &format!("/admin/workflows/{id}"), Some(body)).await?.json()?;
                let budgets: Vec<String> = v["budgets"].as_object().map(|o| o.iter().map(|(k, v)| format!("{k} {}", v.as_str().unwrap_or("?"))).collect()).unwrap_or_default();
                println!("workflow {id}: {}{}", v["outcome"].as_str().unwrap_or("?"), if budgets.is_empty() { String::new() } else { format!(" (budgets: {})", budgets.join(", ")) });
            }
        }
    }
    Ok(())
}

pub(super) async fn requests(conn: Conn, command: RequestsCommand) -> Result<(), String> {
    match command {
        RequestsCommand::List { state } => {
            let q = encode_query(&[("state", state.as_deref())]);
            print_json(&admin_call(&conn, Method::GET, &format!("/admin/exemption-requests{q}"), None).await?.json()?);
        }
        RequestsCommand::Add { scope, amount, starts_at, ends_at, reason, use_case } => {
            let spec = ExemptionRequestSpec { scope, amount, starts_at, ends_at, reason, use_case };
            let body = serde_json::to_value(&spec).map_err(|e| e.to_string())?;
            let v = admin_call(&conn, Method::POST, "/admin/exemption-requests", Some(body)).await?.json()?;
            println!("exemption request {} filed: {} on {}, pending approval", v["id"], v["amount"].as_str().unwrap_or("?"), v["scope"].as_str().unwrap_or("?"));
        }
        RequestsCommand::Approve { id, note } => {
            let v = admin_call(&conn, Method::POST, &format!("/admin/exemption-requests/{id}/approve"), Some(json!({"note": note}))).await?.json()?;
            println!("exemption request {id} approved: exemption {} active from {}", v["exemption"]["id"], crate::window::format_time_ms(v["exemption"]["starts_at_ms"].as_i64().unwrap_or(0)));
        }
        RequestsCommand::Reject { id, note } => {
            admin_call(&conn, Method::POST, &format!("/admin/exemption-requests/{id}/reject"), Some(json!({"note": note}))).await?;
            println!("exemption request {id} rejected");
        }
    }
    Ok(())
}

pub(super) async fn outcomes(conn: Conn, command: OutcomesCommand) -> Result<(), String> {
    match command {
        OutcomesCommand::Add { id, kind, team, user, use_case, task_id, at, url } => {
            let spec = OutcomeSpec { id, kind, team, user, use_case, task_id, at, url };
            let body = serde_json::to_value(&spec).map_err(|e| e.to_string())?;
            let v = admin_call(&conn, Method::POST, "/outcomes", Some(body)).await?.json()?;
            let what = if v["duplicate"] == true { "already recorded" } else { "recorded" };
            println!("outcome {} {what}", v["outcome"]["id"].as_str().unwrap_or("?"));
        }
        OutcomesCommand::List { from, to, kind, format } => {
            show(&conn, "/admin/outcomes", &[("from", from.as_deref()), ("to", to.as_deref()), ("kind", kind.as_deref())], format).await?;
        }
    }
    Ok(())
}

pub(super) async fn insights(conn: Conn, command: InsightsCommand) -> Result<(), String> {
    match command {
        InsightsCommand::CostPerOutcome { group_by, from, to, kind, format } => {
            let pairs = [("group_by", Some(group_by.as_str())), ("from", from.as_deref()), ("to", to.as_deref()), ("kind", kind.as_deref())];
            show(&conn, "/admin/reports/outcomes", &pairs, format).await
        }
        InsightsCommand::Trend { period, from, to, team, use_case, format } => {
            let pairs = [("period", Some(period.as_str())), ("from", from.as_deref()), ("to", to.as_deref()), ("team", team.as_deref()), ("use_case", use_case.as_deref())];
            show(&conn, "/admin/reports/trend", &pairs, format).await
        }
        InsightsCommand::ModelMix { from, to, format } => show(&conn, "/admin/reports/model-mix", &[("from", from.as_deref()), ("to", to.as_deref())], format).await,
        InsightsCommand::TeamUtilization { format } => show(&conn, "/admin/reports/team-utilization", &[], format).await,
    }
}

pub(super) async fn review(conn: Conn, month: String, format: Format) -> Result<(), String> {
    show(&conn, "/admin/reports/review", &[("month", Some(month.as_str()))], format).await
}

#[cfg(test)]
mod tests {
    #[test]
    fn csv_is_read_back_with_quotes() {
        assert_eq!(super::parse_csv("a,b\r\n\"x, y\",\"say \"\"hi\"\"\"\r\n"), [vec!["a", "b"], vec!["x, y", "say \"hi\""]]);
    }
}
