//! The policy simulator's counter side: the requests report it replays and `tollgate-counter
//! simulate`.
//!
//! `GET /admin/reports/requests?from=&to=&limit=&format=json|csv` (admin token) lists the ledger's
//! records of a period one by one (principal, dialect, requested and billed model, tokens by kind,
//! cost) — the input the console's simulator page hands to the wasm build of `tollgate-simulator`.
//! `tollgate-counter simulate --routing FILE [--prices FILE] --from --to` fetches the same report
//! and `GET /admin/budgets` and calls the same `tollgate_simulator::simulate_json` natively, so the
//! page and the CLI print the same figures (envoy/tests/test_console.py compares them).

use crate::cli::{admin_call, Conn, Format};
use crate::report;
use crate::server::{check_params, csv_response, invalid, ok_json, store_error, time_param, App};
use crate::store::{RequestsQuery, Store};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use clap::Args;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::path::PathBuf;
use tollgate_core::money::format_micros;

/// Rows answered when `limit` is not given.
pub const DEFAULT_REQUESTS_LIMIT: usize = 200_000;
/// The most rows one call answers (a browser holds them all; page by `from`/`to` for more).
pub const MAX_REQUESTS_LIMIT: usize = 1_000_000;

/// The CSV columns of the requests report.
const REQUEST_COLUMNS: [&str; 21] = [
    "id", "finished_at_ms", "org", "cost_center", "team", "user", "key_id", "use_case", "tier", "task", "dialect",
    "requested_model", "routed_model", "input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens",
    "reasoning_tokens", "cost_micros", "status", "estimated",
];

/// `GET /admin/reports/requests`.
pub async fn requests_report<S: Store>(State(app): State<App<S>>, headers: HeaderMap, Query(params): Query<HashMap<String, String>>) -> Response {
    // A read: the viewer role or above (crate::auth).
    if let Err(r) = app.role(&headers, crate::auth::Role::Viewer) {
        return r;
    }
    let parsed = (|| {
        check_params(&params, &["from", "to", "limit", "format"])?;
        let csv = match params.get("format").map(String::as_str) {
            None | Some("json") => false,
            Some("csv") => true,
            Some(other) => return Err(invalid(format!("format: `{other}` is not supported; use json or csv"))),
        };
        let from_ms = time_param(&params, "from", 0)?;
        let to_ms = time_param(&params, "to", i64::MAX)?;
        if to_ms <= from_ms {
            return Err(invalid("to: must be after from"));
        }
        let limit = match params.get("limit").map(|l| l.parse::<usize>()) {
            None => DEFAULT_REQUESTS_LIMIT,
            Some(Ok(l)) if (1..=MAX_REQUESTS_LIMIT).contains(&l) => l,
            Some(_) => return Err(invalid(format!("limit: give a number between 1 and {MAX_REQUESTS_LIMIT}"))),
        };
        Ok((csv, from_ms, to_ms, limit))
    })();
    let (csv, from_ms, to_ms, limit) = match parsed {
        Ok(p) => p,
        Err(r) => return r,
    };
    // One more than asked says whether the period holds more.
    let mut records = match app.store.requests(RequestsQuery { from_ms, to_ms, limit: limit.saturating_add(1) }).await {
        Ok(r) => r,
        Err(e) => return store_error(&app.metrics, e),
    };
    let truncated = records.len() > limit;
    records.truncate(limit);
    if csv {
        let header: Vec<String> = REQUEST_COLUMNS.iter().map(|c| c.to_string()).collect();
        let o = |v: &Option<String>| v.clone().unwrap_or_default();
        let cells: Vec<Vec<String>> = records
            .iter()
            .map(|r| {
                let p = &r.principal;
                vec![
                    r.id.clone(), r.finished_at_ms.to_string(), o(&p.org), o(&p.cost_center), o(&p.team), o(&p.user), o(&p.key_id),
                    o(&p.use_case), o(&p.tier), o(&p.task), r.dialect.clone(), r.requested_model.clone(), r.routed_model.clone(),
                    r.tokens.input.to_string(), r.tokens.output.to_string(), r.tokens.cache_read.to_string(),
                    r.tokens.cache_write.to_string(), r.tokens.reasoning.to_string(), r.cost_micros.to_string(), r.status.to_string(),
                    r.estimated.to_string(),
                ]
            })
            .collect();
        return csv_response("tollgate-requests.csv", report::to_csv(&header, &cells));
    }
    ok_json(
        StatusCode::OK,
        &json!({
            "from_ms": from_ms,
            "to_ms": if to_ms == i64::MAX { None } else { Some(to_ms) },
            "count": records.len(),
            "truncated": truncated,
            "records": records,
        }),
    )
}

#[derive(Args, Debug)]
pub struct SimulateArgs {
    #[command(flatten)]
    pub conn: Conn,
    /// The candidate routing table: the filter config's `routing` section (`{"rules": [...]}`) or
    /// a whole filter config.
    #[arg(long)]
    pub routing: PathBuf,
    /// A `pricing` section (or a whole filter config) to price with; default: the bundled prices.
    #[arg(long)]
    pub prices: Option<PathBuf>,
    /// Start (inclusive): YYYY-MM-DD, RFC 3339 or unix ms.
    #[arg(long)]
    pub from: String,
    /// End (exclusive).
    #[arg(long)]
    pub to: String,
    /// At most this many ledger requests (the report says when the period holds more).
    #[arg(long, default_value_t = DEFAULT_REQUESTS_LIMIT)]
    pub limit: usize,
    #[arg(long, value_enum, default_value = "table")]
    pub format: Format,
}

/// `tollgate-counter simulate`.
pub async fn simulate(args: SimulateArgs) -> Result<(), String> {
    let read = |p: &PathBuf| std::fs::read_to_string(p).map_err(|e| format!("cannot read {}: {e}", p.display()));
    let routing = read(&args.routing)?;
    let prices = args.prices.as_ref().map(read).transpose()?;
    // Fail on a bad candidate before fetching anything.
    tollgate_simulator::Candidate::from_json(&routing, prices.as_deref()).map_err(|e| format!("{}: {e}", args.routing.display()))?;
    let query = format!(
        "/admin/reports/requests?from={}&to={}&limit={}",
        encode(&args.from),
        encode(&args.to),
        args.limit
    );
    let ledger = admin_call(&args.conn, hyper::Method::GET, &query, None).await?.text();
    let truncated = serde_json::from_str::<Value>(&ledger).ok().and_then(|v| v["truncated"].as_bool()).unwrap_or(false);
    let budgets = admin_call(&args.conn, hyper::Method::GET, "/admin/budgets", None).await?.text();
    let answer = tollgate_simulator::simulate_json(&ledger, &routing, prices.as_deref(), &budgets)?;
    if truncated {
        eprintln!("warning: the period holds more than {} requests; only the first were replayed (raise --limit or shorten the period)", args.limit);
    }
    if args.format == Format::Json {
        println!("{answer}");
        return Ok(());
    }
    let v: Value = serde_json::from_str(&answer).map_err(|e| e.to_string())?;
    let (header, cells) = group_cells(&v);
    match args.format {
        Format::Csv => print!("{}", report::to_csv(&header, &cells)),
        _ => {
            print!("{}", report::to_table(&header, &cells));
            println!(
                "total: {} requests, billed ${}, with the candidate ${}; {} rerouted, {} denied, {} unpriced",
                v["requests"], s(&v["billed_usd"]), s(&v["candidate_usd"]), v["rerouted"], v["denied"], v["unpriced"]
            );
            let (header, cells) = budget_cells(&v);
            if !cells.is_empty() {
                println!();
                print!("{}", report::to_table(&header, &cells));
            }
        }
    }
    Ok(())
}

fn s(v: &Value) -> String {
    v.as_str().unwrap_or("").to_owned()
}

fn usd(v: &Value) -> String {
    format_micros(v.as_i64().unwrap_or(0))
}

/// Per team × use case, as the page's table shows it.
pub fn group_cells(v: &Value) -> (Vec<String>, Vec<Vec<String>>) {
    let header = ["team", "use_case", "requests", "billed_usd", "candidate_usd", "rerouted", "denied", "unpriced"].map(String::from).to_vec();
    let cells = v["groups"]
        .as_array()
        .map(|gs| {
            gs.iter()
                .map(|g| {
                    vec![s(&g["team"]), s(&g["use_case"]), g["requests"].to_string(), usd(&g["billed_micros"]), usd(&g["candidate_micros"]),
                        g["rerouted"].to_string(), g["denied"].to_string(), g["unpriced"].to_string()]
                })
                .collect()
        })
        .unwrap_or_default();
    (header, cells)
}

/// Per budget: the worst window, as billed and with the candidate.
pub fn budget_cells(v: &Value) -> (Vec<String>, Vec<Vec<String>>) {
    let header = ["budget", "scope", "window", "limit_usd", "hard_limit_usd", "billed_peak_usd", "candidate_peak_usd", "billed_windows_over_hard",
        "candidate_windows_over_limit", "candidate_windows_over_hard"]
        .map(String::from)
        .to_vec();
    let cells = v["budgets"]
        .as_array()
        .map(|bs| {
            bs.iter()
                .map(|b| {
                    vec![s(&b["id"]), s(&b["scope"]), s(&b["window"]), usd(&b["limit_micros"]), usd(&b["hard_limit_micros"]),
                        usd(&b["billed_peak_micros"]), usd(&b["candidate_peak_micros"]), b["billed_windows_over_hard"].to_string(),
                        b["candidate_windows_over_limit"].to_string(), b["candidate_windows_over_hard"].to_string()]
                })
                .collect()
        })
        .unwrap_or_default();
    (header, cells)
}

fn encode(text: &str) -> String {
    text.bytes()
        .map(|b| if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) { (b as char).to_string() } else { format!("%{b:02X}") })
        .collect()
}
