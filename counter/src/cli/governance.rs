//! `events` and `baseline` subcommands, and loading `serve --notify FILE`.

use super::{admin_call, encode_query, print_cells, print_json, Conn, Format};
use crate::notify::NotifyConfig;
use clap::Args;
use serde_json::Value;
use std::path::PathBuf;
use tollgate_core::money::format_micros;

#[derive(Args, Debug)]
pub struct EventsArgs {
    #[command(flatten)]
    pub conn: Conn,
    /// threshold, hard_stop, anomaly, review_overdue or projected_overrun.
    #[arg(long)]
    pub kind: Option<String>,
    /// Exact scope key, e.g. team:platform.
    #[arg(long)]
    pub scope: Option<String>,
    /// Budget or workflow id.
    #[arg(long)]
    pub subject: Option<String>,
    /// Only events at or after this time (YYYY-MM-DD, RFC 3339 or unix ms).
    #[arg(long)]
    pub since: Option<String>,
    #[arg(long)]
    pub until: Option<String>,
    #[arg(long, default_value_t = 50)]
    pub limit: usize,
    #[arg(long, value_enum, default_value = "table")]
    pub format: Format,
}

#[derive(Args, Debug)]
pub struct BaselineArgs {
    #[command(flatten)]
    pub conn: Conn,
    /// team, user, use_case, model, org or cost_center; or one value (team:platform).
    #[arg(long, default_value = "team")]
    pub scope: String,
    /// Full UTC days before --to.
    #[arg(long, default_value_t = 60)]
    pub days: u32,
    /// End of the period (exclusive, a day); default: today.
    #[arg(long)]
    pub to: Option<String>,
    #[arg(long, value_enum, default_value = "table")]
    pub format: Format,
}

/// Reads and validates the notify file (secrets from `secret_env` come from the environment).
pub fn load_notify(path: Option<&PathBuf>) -> Result<NotifyConfig, String> {
    let Some(path) = path else { return Ok(NotifyConfig::default()) };
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read notify config {}: {e}", path.display()))?;
    let config = NotifyConfig::parse(&text, &|var| std::env::var(var).ok()).map_err(|e| format!("{}: {e}", path.display()))?;
    crate::log::info(
        "notify config loaded",
        serde_json::json!({"file": path.display().to_string(), "webhooks": config.webhooks.iter().map(|w| w.name.clone()).collect::<Vec<_>>(),
            "threshold_rules": config.thresholds.len(), "anomaly_rules": config.anomalies.len()}),
    );
    Ok(config)
}

pub async fn events(a: EventsArgs) -> Result<(), String> {
    let limit = a.limit.to_string();
    let csv = a.format == Format::Csv;
    let query = encode_query(&[
        ("kind", a.kind.as_deref()),
        ("scope", a.scope.as_deref()),
        ("subject", a.subject.as_deref()),
        ("since", a.since.as_deref()),
        ("until", a.until.as_deref()),
        ("limit", Some(limit.as_str())),
        ("format", Some(if csv { "csv" } else { "json" })),
    ]);
    let answer = admin_call(&a.conn, hyper::Method::GET, &format!("/admin/events{query}"), None).await?;
    if csv {
        print!("{}", answer.text());
        return Ok(());
    }
    let v = answer.json()?;
    if a.format == Format::Json {
        print_json(&v);
        return Ok(());
    }
    let header: Vec<String> = ["seq", "at", "kind", "scope", "title", "deliveries"].map(String::from).to_vec();
    let cells: Vec<Vec<String>> = v["events"]
        .as_array()
        .map(|events| {
            events
                .iter()
                .map(|e| {
                    let deliveries: Vec<String> = e["deliveries"]
                        .as_array()
                        .map(|d| {
                            d.iter()
                                .map(|d| {
                                    let state = if d["delivered_at_ms"].is_null() { format!("pending({} attempts)", d["attempts"]) } else { "delivered".into() };
                                    format!("{}:{state}", d["target"].as_str().unwrap_or(""))
                                })
                                .collect()
                        })
                        .unwrap_or_default();
                    vec![
                        e["seq"].to_string(),
                        crate::window::format_time_ms(e["at_ms"].as_i64().unwrap_or(0)),
                        e["kind"].as_str().unwrap_or("").to_owned(),
                        e["scope"].as_str().unwrap_or("").to_owned(),
                        e["title"].as_str().unwrap_or("").to_owned(),
                        if deliveries.is_empty() { "-".into() } else { deliveries.join(" ") },
                    ]
                })
                .collect()
        })
        .unwrap_or_default();
    print_cells(a.format, &header, &cells);
    Ok(())
}

pub async fn baseline(a: BaselineArgs) -> Result<(), String> {
    let days = a.days.to_string();
    let csv = a.format == Format::Csv;
    let query = encode_query(&[
        ("scope", Some(a.scope.as_str())),
        ("days", Some(days.as_str())),
        ("to", a.to.as_deref()),
        ("format", Some(if csv { "csv" } else { "json" })),
    ]);
    let answer = admin_call(&a.conn, hyper::Method::GET, &format!("/admin/reports/baseline{query}"), None).await?;
    if csv {
        print!("{}", answer.text());
        return Ok(());
    }
    let v = answer.json()?;
    if a.format == Format::Json {
        print_json(&v);
        return Ok(());
    }
    let usd = |r: &Value, k: &str| format!("${}", format_micros(r[k].as_i64().unwrap_or(0)));
    let header: Vec<String> = ["scope", "active days", "mean/day", "p50/day", "p95/day", "max/day", "baseline/month", "130 %", "150 %", "budgets"]
        .map(String::from)
        .to_vec();
    let cells: Vec<Vec<String>> = v["rows"]
        .as_array()
        .map(|rows| {
            rows.iter()
                .map(|r| {
                    vec![
                        r["scope"].as_str().unwrap_or("").to_owned(),
                        r["active_days"].to_string(),
                        usd(r, "mean_micros"),
                        usd(r, "p50_micros"),
                        usd(r, "p95_micros"),
                        usd(r, "max_micros"),
                        usd(r, "baseline_monthly_micros"),
                        usd(r, "suggested_monthly_130_micros"),
                        usd(r, "suggested_monthly_150_micros"),
                        r["budgets"]
                            .as_array()
                            .map(|b| b.iter().map(|b| format!("{}({})", b["id"].as_str().unwrap_or(""), b["mode"].as_str().unwrap_or(""))).collect::<Vec<_>>().join(" "))
                            .unwrap_or_default(),
                    ]
                })
                .collect()
        })
        .unwrap_or_default();
    println!("{} full UTC days from {} to {} (exclusive)", v["days"], v["from"].as_str().unwrap_or("?"), v["to"].as_str().unwrap_or("?"));
    print_cells(a.format, &header, &cells);
    Ok(())
}
