//! The `tollgate-counter` command line: `serve` runs the service; the other subcommands call its
//! admin API (so an operator never needs curl); `bench` measures it.

mod gov;

use crate::budget::{BudgetFile, BudgetSpec, ExemptionSpec};
use crate::client::Client;
use crate::clock::{Clock, SystemClock};
use crate::report;
use crate::server::{apply_budget_file, run_with, Auth};
use crate::store::redis::{RedisOptions, RedisStore};
use crate::store::sqlite::{SqliteOptions, SqliteStore, Synchronous};
use crate::store::{BudgetState, GroupBy, ReportRow, Store};
use clap::{Args, Parser, Subcommand, ValueEnum};
use serde_json::{json, Value};
use std::path::PathBuf;
use std::sync::Arc;

mod governance;

#[derive(Parser, Debug)]
#[command(name = "tollgate-counter", version, about = "Tollgate's shared counter: budgets, leases, usage ledger, reports.")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the counter service.
    Serve(ServeArgs),
    /// List, show, set or delete budgets.
    Budgets {
        #[command(flatten)]
        conn: Conn,
        #[command(subcommand)]
        command: BudgetsCommand,
    },
    /// Add, list or revoke exemptions (temporary extra allowance on a scope).
    Exemption {
        #[command(flatten)]
        conn: Conn,
        #[command(subcommand)]
        command: ExemptionCommand,
    },
    /// Print the spend report from the ledger.
    Report(ReportArgs),
    /// Print every budget's utilization.
    Utilization {
        #[command(flatten)]
        conn: Conn,
        #[arg(long, value_enum, default_value = "table")]
        format: Format,
    },
    /// Print the audit log of budget and exemption changes, newest first.
    Audit {
        #[command(flatten)]
        conn: Conn,
        /// Only this budget id (or `exemption:<id>`).
        #[arg(long)]
        subject: Option<String>,
        /// Only changes at or after this time (YYYY-MM-DD, RFC 3339 or unix ms).
        #[arg(long)]
        since: Option<String>,
        #[arg(long, default_value_t = 50)]
        limit: usize,
        #[arg(long, value_enum, default_value = "table")]
        format: Format,
    },
    /// Measure usage records/s and lease calls/s against an in-process server on loopback.
    Bench(BenchArgs),
    /// Replay the ledger's requests of a period through a candidate routing table (and prices).
    Simulate(crate::simulate::SimulateArgs),
    /// List, show, set (from a file) or delete workflows; their caps become budgets.
    Workflows {
        #[command(flatten)]
        conn: Conn,
        #[command(subcommand)]
        command: gov::WorkflowsCommand,
    },
    /// File, list, approve or reject exemption requests.
    Requests {
        #[command(flatten)]
        conn: Conn,
        #[command(subcommand)]
        command: gov::RequestsCommand,
    },
    /// Record or list outcomes (merged PRs, resolved tickets, ...).
    Outcomes {
        #[command(flatten)]
        conn: Conn,
        #[command(subcommand)]
        command: gov::OutcomesCommand,
    },
    /// Cost per outcome, spend vs output trend, model mix, budget utilization by team.
    Insights {
        #[command(flatten)]
        conn: Conn,
        #[command(subcommand)]
        command: gov::InsightsCommand,
    },
    /// The monthly review of every workflow, with a suggested action and the rule behind it.
    Review {
        #[command(flatten)]
        conn: Conn,
        /// YYYY-MM.
        #[arg(long)]
        month: String,
        #[arg(long, value_enum, default_value = "table")]
        format: Format,
    },
    /// Print the events log (thresholds, hard stops, anomalies, overdue reviews), newest first.
    Events(governance::EventsArgs),
    /// Print daily spend baselines and suggested monthly limits per team, user, use case or model.
    Baseline(governance::BaselineArgs),
    /// Print per budget and workflow the projected spend at the window's end and the day the hard
    /// limit is reached at the current pace (weekday-aware; docs/counter.md "Forecasts").
    Forecast {
        #[command(flatten)]
        conn: Conn,
        #[arg(long, value_enum, default_value = "table")]
        format: Format,
    },
    /// Print the runs (task ids), workflow days and days whose cost is far above their own
    /// baseline (median + k x MAD), with what explains each; never a ranking of people.
    Outliers {
        #[command(flatten)]
        conn: Conn,
        /// Start of the period (YYYY-MM-DD, RFC 3339 or unix ms); default: 30 days before --to.
        #[arg(long)]
        from: Option<String>,
        /// End of the period (exclusive); default: now.
        #[arg(long)]
        to: Option<String>,
        /// The factor of the MAD (e.g. 3 or 2.5); default: the governance file's, else 3.
        #[arg(long)]
        k: Option<String>,
        #[arg(long, value_enum, default_value = "table")]
        format: Format,
    },
    /// Print seats beside usage per team and role for a month, with who is outside their role's band.
    Seats {
        #[command(flatten)]
        conn: Conn,
        /// YYYY-MM.
        #[arg(long)]
        month: String,
        #[arg(long, value_enum, default_value = "table")]
        format: Format,
    },
    /// Print one task's (or agent session's) cost handoff: requests, models, tokens, cost,
    /// checkpoints (Markdown; --json for JSON).
    Task {
        #[command(flatten)]
        conn: Conn,
        /// The task id, as the gateway attributes it.
        id: String,
        #[arg(long)]
        json: bool,
    },
    /// Record a human checkpoint on a task: the retry guard may let its next attempt through.
    Checkpoint {
        #[command(flatten)]
        conn: Conn,
        /// The task id.
        task: String,
        /// Why (kept in the audit log and the task summary).
        #[arg(long)]
        note: Option<String>,
    },
}

#[derive(Args, Debug)]
pub struct ServeArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8787")]
    pub listen: String,
    /// Data directory (holds counter.sqlite3 and its WAL). Not used with --redis-url.
    #[arg(long, required_unless_present = "redis_url")]
    pub data: Option<PathBuf>,
    /// Keep all state in Redis instead of --data, so several counter instances can share it:
    /// `redis://[:password@]host:port[/db]`. See docs/counter-redis.md.
    #[arg(long, env = "TOLLGATE_REDIS_URL", hide_env_values = true, conflicts_with = "data")]
    pub redis_url: Option<String>,
    /// Hash tag of every Redis key: one namespace per deployment (or per independent tenant).
    #[arg(long, env = "TOLLGATE_REDIS_NAMESPACE", default_value = "tollgate")]
    pub redis_namespace: String,
    /// Days a usage record id is remembered in Redis; a duplicate arriving later counts again.
    #[arg(long, env = "TOLLGATE_REDIS_IDEMPOTENCY_DAYS", default_value_t = 7)]
    pub redis_idempotency_days: u64,
    /// Days of ledger kept in the Redis stream (0: keep everything); export before it ages out.
    #[arg(long, env = "TOLLGATE_REDIS_LEDGER_DAYS", default_value_t = 400)]
    pub redis_ledger_days: u64,
    /// Budgets file (JSON, `{"budgets": [...]}`) applied at start-up.
    #[arg(long)]
    pub budgets: Option<PathBuf>,
    /// Tokens file: `{"gateway": {"name": "secret"}, "admin": {"alice": "secret"}}`. Adds to the
    /// TOLLGATE_GATEWAY_TOKENS / TOLLGATE_ADMIN_TOKENS environment variables (`name=secret,...`).
    #[arg(long)]
    pub tokens: Option<PathBuf>,
    /// Governance file (JSON): extra outcome kinds and the GitHub webhook (secret, repo → team,
    /// author → user, task id pattern). See docs/counter.md, "Governance".
    #[arg(long)]
    pub governance: Option<PathBuf>,
    /// Require a token (any admin-side role) on GET /metrics.
    #[arg(long, env = "TOLLGATE_METRICS_REQUIRE_TOKEN")]
    pub metrics_require_token: bool,
    /// How long a lease slice lives unless renewed.
    #[arg(long, default_value_t = 30)]
    pub lease_ttl_secs: u64,
    /// `full`: fsync at every (group) commit, survives power loss. `normal`: survives a process
    /// crash, may lose the last commits on power loss.
    #[arg(long, value_enum, default_value = "full")]
    pub sync: SyncArg,
    /// Notify config (JSON): webhooks, threshold and anomaly rules, delivery settings. Without it
    /// threshold events are still logged (GET /admin/events) but nothing is sent. docs/counter.md.
    #[arg(long, env = "TOLLGATE_NOTIFY_CONFIG")]
    pub notify: Option<PathBuf>,
}

#[derive(Copy, Clone, Debug, ValueEnum)]
pub enum SyncArg {
    Full,
    Normal,
}

impl From<SyncArg> for Synchronous {
    fn from(s: SyncArg) -> Synchronous {
        match s {
            SyncArg::Full => Synchronous::Full,
            SyncArg::Normal => Synchronous::Normal,
        }
    }
}

/// Where the admin API is and which token to use.
#[derive(Args, Debug, Clone)]
pub struct Conn {
    #[arg(long, env = "TOLLGATE_COUNTER_URL", default_value = "http://127.0.0.1:8787", global = true)]
    pub url: String,
    /// Admin bearer token.
    #[arg(long, env = "TOLLGATE_ADMIN_TOKEN", hide_env_values = true, global = true)]
    pub token: Option<String>,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Table,
    Csv,
    Json,
}

#[derive(Subcommand, Debug)]
pub enum BudgetsCommand {
    /// List every budget with its spend and status.
    List {
        #[arg(long, value_enum, default_value = "table")]
        format: Format,
    },
    /// Show one budget as JSON.
    Get { id: String },
    /// Create or replace a budget, from flags or from a JSON file (one spec, or a budgets file).
    Set(SetArgs),
    /// Delete a budget (its spend counters go too; the ledger keeps every record).
    Delete { id: String },
    /// Raise a budget's limit by an amount of dollars (for `window: none` balances).
    Topup { id: String, amount: String },
}

#[derive(Args, Debug)]
pub struct SetArgs {
    /// A JSON file: one budget spec, or `{"budgets": [...]}`.
    #[arg(long, conflicts_with_all = ["id", "scope", "limit", "window"])]
    pub file: Option<PathBuf>,
    #[arg(long)]
    pub id: Option<String>,
    /// Scope key, e.g. team:platform.
    #[arg(long)]
    pub scope: Option<String>,
    /// Dollars, e.g. 800.00.
    #[arg(long)]
    pub limit: Option<String>,
    /// day, week, month, rolling:N or none.
    #[arg(long)]
    pub window: Option<String>,
    #[arg(long, default_value = "UTC")]
    pub utc_offset: String,
    /// An IANA time zone (America/Los_Angeles), with daylight saving time; instead of --utc-offset.
    #[arg(long)]
    pub time_zone: Option<String>,
    /// What a request reserves: worst_case (default) or p99 (docs/counter.md, "Reservation policies").
    #[arg(long)]
    pub reserve: Option<String>,
    /// With --reserve p99: dollars spend may pass the hard limit by in one window.
    #[arg(long)]
    pub reserve_excess_limit: Option<String>,
    /// With --reserve p99: days of ledger the p99 is taken over (default 7).
    #[arg(long)]
    pub reserve_lookback_days: Option<u32>,
    /// With --reserve p99: requests to a model needed before its p99 is used (default 20).
    #[arg(long)]
    pub reserve_min_samples: Option<u32>,
    /// Comma-separated percentages.
    #[arg(long, default_value = "80", value_delimiter = ',')]
    pub soft: Vec<u32>,
    #[arg(long, default_value_t = 100)]
    pub hard_pct: u32,
    /// enforce or observe.
    #[arg(long, default_value = "enforce")]
    pub mode: String,
    #[arg(long)]
    pub token_limit: Option<u64>,
}

#[derive(Subcommand, Debug)]
pub enum ExemptionCommand {
    /// Grant extra allowance on a scope for a time.
    Add {
        #[arg(long)]
        scope: String,
        /// Dollars, e.g. 100.00.
        #[arg(long)]
        amount: String,
        /// Default: now.
        #[arg(long)]
        starts_at: Option<String>,
        #[arg(long)]
        ends_at: String,
        #[arg(long)]
        reason: String,
        #[arg(long)]
        approver: String,
    },
    /// List exemptions, active or not.
    List,
    /// End an exemption now.
    Revoke { id: u64 },
}

#[derive(Args, Debug)]
pub struct ReportArgs {
    #[command(flatten)]
    pub conn: Conn,
    /// Comma-separated: org, cost_center, team, user, key, use_case, model, day.
    #[arg(long, default_value = "")]
    pub group_by: String,
    /// Start (inclusive): YYYY-MM-DD, RFC 3339 or unix ms.
    #[arg(long)]
    pub from: Option<String>,
    /// End (exclusive).
    #[arg(long)]
    pub to: Option<String>,
    /// `seats`: each team's seats beside its usage (with --group-by team, over one UTC month).
    #[arg(long)]
    pub with: Option<String>,
    #[arg(long, value_enum, default_value = "table")]
    pub format: Format,
}

#[derive(Args, Debug)]
pub struct BenchArgs {
    /// Seconds per phase.
    #[arg(long, default_value_t = 5.0)]
    pub seconds: f64,
    /// Records per usage batch.
    #[arg(long, default_value_t = 1000)]
    pub batch: usize,
    /// Concurrent usage connections (lease phase uses 4x).
    #[arg(long, default_value_t = 4)]
    pub concurrency: usize,
    #[arg(long, value_enum, default_value = "full")]
    pub sync: SyncArg,
    /// Bench the Redis store at this URL (a fresh namespace, deleted afterwards) instead of SQLite.
    #[arg(long)]
    pub redis_url: Option<String>,
}

/// Entry point of the binary. Returns the process exit code.
pub fn main() -> i32 {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("tollgate-counter: cannot start the async runtime: {e}");
            return 1;
        }
    };
    match runtime.block_on(dispatch(cli.command)) {
        Ok(()) => 0,
        Err(message) => {
            eprintln!("tollgate-counter: {message}");
            1
        }
    }
}

async fn dispatch(command: Command) -> Result<(), String> {
    match command {
        Command::Serve(args) => serve(args).await,
        Command::Budgets { conn, command } => budgets(conn, command).await,
        Command::Exemption { conn, command } => exemption(conn, command).await,
        Command::Report(args) => spend_report(args).await,
        Command::Simulate(args) => crate::simulate::simulate(args).await,
        Command::Utilization { conn, format } => utilization(conn, format).await,
        Command::Audit { conn, subject, since, limit, format } => audit(conn, subject, since, limit, format).await,
        Command::Workflows { conn, command } => gov::workflows(conn, command).await,
        Command::Requests { conn, command } => gov::requests(conn, command).await,
        Command::Outcomes { conn, command } => gov::outcomes(conn, command).await,
        Command::Insights { conn, command } => gov::insights(conn, command).await,
        Command::Review { conn, month, format } => gov::review(conn, month, format).await,
        Command::Events(a) => governance::events(a).await,
        Command::Baseline(a) => governance::baseline(a).await,
        Command::Forecast { conn, format } => gov::show(&conn, "/admin/reports/forecast", &[], format).await,
        Command::Outliers { conn, from, to, k, format } => {
            gov::show(&conn, "/admin/reports/outliers", &[("from", from.as_deref()), ("to", to.as_deref()), ("k", k.as_deref())], format).await
        }
        Command::Seats { conn, month, format } => gov::show(&conn, "/admin/reports/seats", &[("month", Some(month.as_str()))], format).await,
        Command::Task { conn, id, json } => task(conn, id, json).await,
        Command::Checkpoint { conn, task, note } => checkpoint(conn, task, note).await,
        Command::Bench(a) => {
            crate::bench::bench(crate::bench::BenchOptions { seconds: a.seconds, batch: a.batch.max(1), concurrency: a.concurrency.max(1), synchronous: a.sync.into(), redis_url: a.redis_url })
                .await
        }
    }
}

/// Reads gateway and admin-side tokens (with their roles) from the environment and the optional
/// tokens file: `TOLLGATE_{GATEWAY,ADMIN,VIEWER,REQUESTER,APPROVER}_TOKENS` (`name=secret,...`) and
/// the file's `gateway`, `admin`, `viewer`, `requester`, `approver` sections; personal tokens from
/// `TOLLGATE_PERSONAL_TOKENS` (`user:alice=secret,key:k-42=secret`) and the file's `personal` section.
fn load_auth(file: Option<&PathBuf>) -> Result<Auth, String> {
    use crate::auth::Role;
    let mut gateways = Auth::parse_list(&std::env::var("TOLLGATE_GATEWAY_TOKENS").unwrap_or_default());
    let mut admins: Vec<(String, String, Role)> = Vec::new();
    let mut personal = Auth::parse_list(&std::env::var("TOLLGATE_PERSONAL_TOKENS").unwrap_or_default());
    for role in Role::ALL {
        admins.extend(Auth::parse_list(&std::env::var(role.env_var()).unwrap_or_default()).into_iter().map(|(n, s)| (n, s, role)));
    }
    if let Some(path) = file {
        #[derive(serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        struct TokensFile {
            #[serde(default)]
            gateway: std::collections::BTreeMap<String, String>,
            #[serde(default)]
            admin: std::collections::BTreeMap<String, String>,
            #[serde(default)]
            viewer: std::collections::BTreeMap<String, String>,
            #[serde(default)]
            requester: std::collections::BTreeMap<String, String>,
            #[serde(default)]
            approver: std::collections::BTreeMap<String, String>,
            #[serde(default)]
            personal: std::collections::BTreeMap<String, String>,
        }
        let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read tokens file {}: {e}", path.display()))?;
        let t: TokensFile = serde_json::from_str(&text).map_err(|e| format!("tokens file {}: {e}", path.display()))?;
        gateways.extend(t.gateway);
        personal.extend(t.personal);
        for (role, tokens) in [(Role::Admin, t.admin), (Role::Viewer, t.viewer), (Role::Requester, t.requester), (Role::Approver, t.approver)] {
            admins.extend(tokens.into_iter().map(|(n, s)| (n, s, role)));
        }
    }
    Auth::with_roles(gateways, admins)?.with_personal(personal)
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(s) => s,
            Err(_) => {
                let _ = ctrl_c.await;
                return;
            }
        };
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
    crate::log::info("shutdown requested; draining requests and flushing the store", json!({}));
}

async fn serve(args: ServeArgs) -> Result<(), String> {
    // The one clock of this process: every `now` the store and the server use comes from it.
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let auth = load_auth(args.tokens.as_ref())?.require_metrics_token(args.metrics_require_token);
    let ttl_ms = i64::try_from(args.lease_ttl_secs.saturating_mul(1000)).unwrap_or(i64::MAX);
    if ttl_ms <= 0 {
        return Err("--lease-ttl-secs must be at least 1".into());
    }
    if let Some(url) = &args.redis_url {
        let days_ms = |days: u64| i64::try_from(days.saturating_mul(86_400_000)).unwrap_or(i64::MAX);
        let options = RedisOptions {
            url: url.clone(),
            namespace: args.redis_namespace.clone(),
            lease_ttl_ms: ttl_ms,
            idempotency_ttl_ms: days_ms(args.redis_idempotency_days.max(1)),
            ledger_retention_ms: (args.redis_ledger_days > 0).then(|| days_ms(args.redis_ledger_days)),
            ..RedisOptions::default()
        };
        let store = Arc::new(RedisStore::connect(options).await.map_err(|e| format!("redis store: {e}"))?);
        return serve_store(store, clock, args, auth).await;
    }
    let data = args.data.clone().ok_or("--data DIR is needed (or --redis-url): where the counter keeps its state")?;
    let options = SqliteOptions { lease_ttl_ms: ttl_ms, synchronous: args.sync.into(), ..SqliteOptions::default() };
    let store = Arc::new(SqliteStore::open(&data, options, clock.now_ms()).map_err(|e| e.to_string())?);
    serve_store(store, clock, args, auth).await
}

/// Applies the budgets file, listens and serves until a shutdown signal, on either store.
async fn serve_store<S: Store>(store: Arc<S>, clock: Arc<dyn Clock>, args: ServeArgs, auth: Auth) -> Result<(), String> {
    if let Some(path) = &args.budgets {
        let (changed, total) = apply_budget_file(store.as_ref(), path, clock.now_ms()).await?;
        crate::log::info("budgets file applied", json!({"file": path.display().to_string(), "budgets": total, "changed": changed}));
    }
    let gov = load_governance(args.governance.as_ref())?;
    if let Some(path) = &args.budgets {
        let (changed, total) = crate::gov_api::apply_workflow_file(store.as_ref(), path, &gov.kinds, clock.now_ms()).await?;
        crate::log::info("workflows of the budgets file applied", json!({"file": path.display().to_string(), "workflows": total, "changed": changed}));
        if let Some(outcome) = crate::server::planning::apply_seats_file(store.as_ref(), path, clock.now_ms()).await? {
            crate::log::info("seats of the budgets file applied", json!({"file": path.display().to_string(), "outcome": outcome}));
        }
    }
    let listener = tokio::net::TcpListener::bind(&args.listen).await.map_err(|e| format!("cannot listen on {}: {e}", args.listen))?;
    crate::log::info(
        "counter starting",
        json!({"data": args.data.as_ref().map(|d| d.display().to_string()), "redis_namespace": args.redis_url.as_ref().map(|_| &args.redis_namespace), "lease_ttl_secs": args.lease_ttl_secs, "sync": format!("{:?}", args.sync).to_lowercase(), "auth": format!("{auth:?}")}),
    );
    let notify = governance::load_notify(args.notify.as_ref())?;
    run_with(listener, store, clock, auth, gov, notify, shutdown_signal()).await.map_err(|e| format!("server: {e}"))
}

/// The governance file (`--governance`) and `TOLLGATE_GITHUB_WEBHOOK_SECRET`.
fn load_governance(file: Option<&PathBuf>) -> Result<crate::outcome::GovConfig, String> {
    let secret = std::env::var("TOLLGATE_GITHUB_WEBHOOK_SECRET").ok();
    match file {
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read governance file {}: {e}", path.display()))?;
            crate::outcome::GovConfig::parse(&text, secret)
        }
        None => crate::outcome::GovConfig::from_file(Default::default(), secret),
    }
}

pub(crate) async fn admin_call(conn: &Conn, method: hyper::Method, path: &str, body: Option<Value>) -> Result<crate::client::Answer, String> {
    let token = conn.token.as_deref().ok_or("no admin token: set TOLLGATE_ADMIN_TOKEN or pass --token")?;
    let mut client = Client::connect(&conn.url).await?;
    let body = body.map(|b| serde_json::to_vec(&b)).transpose().map_err(|e| e.to_string())?;
    let answer = client.send(method, path, Some(token), body).await?;
    if answer.status >= 400 {
        let message = answer
            .json()
            .ok()
            .and_then(|v| v["error"]["message"].as_str().map(String::from))
            .unwrap_or_else(|| answer.text());
        return Err(format!("the counter refused ({}): {message}", answer.status));
    }
    Ok(answer)
}

fn print_json(v: &Value) {
    println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
}

fn print_cells(format: Format, header: &[String], cells: &[Vec<String>]) {
    match format {
        Format::Csv => print!("{}", report::to_csv(header, cells)),
        _ => print!("{}", report::to_table(header, cells)),
    }
}

async fn budgets(conn: Conn, command: BudgetsCommand) -> Result<(), String> {
    use hyper::Method;
    match command {
        BudgetsCommand::List { format } => {
            let v = admin_call(&conn, Method::GET, "/admin/budgets", None).await?.json()?;
            if format == Format::Json {
                print_json(&v);
                return Ok(());
            }
            let states: Vec<BudgetState> = serde_json::from_value(v["budgets"].clone()).map_err(|e| e.to_string())?;
            let (header, cells) = report::utilization_cells(&states);
            print_cells(format, &header, &cells);
            // Templates apart (they charge nobody), in the table only: a CSV stays one table.
            let templates = v["templates"].as_array().cloned().unwrap_or_default();
            if format == Format::Table && !templates.is_empty() {
                let header = ["template", "scope", "limit_usd", "window", "mode", "budgets_made"].map(String::from).to_vec();
                let text = |t: &serde_json::Value, f: &str| t["template"][f].as_str().unwrap_or_default().to_owned();
                let cells: Vec<Vec<String>> =
                    templates.iter().map(|t| vec![text(t, "id"), text(t, "scope"), text(t, "limit"), text(t, "window"), text(t, "mode"), t["budgets_made"].to_string()]).collect();
                println!("\nTemplates (each makes a budget for every new scope of its kind):");
                print_cells(format, &header, &cells);
            }
        }
        BudgetsCommand::Get { id } => print_json(&admin_call(&conn, Method::GET, &format!("/admin/budgets/{id}"), None).await?.json()?),
        BudgetsCommand::Delete { id } => {
            admin_call(&conn, Method::DELETE, &format!("/admin/budgets/{id}"), None).await?;
            println!("deleted budget {id}");
        }
        BudgetsCommand::Topup { id, amount } => {
            let v = admin_call(&conn, Method::POST, &format!("/admin/budgets/{id}/topup"), Some(json!({"amount": amount}))).await?.json()?;
            println!("budget {id}: limit now {}", v["budget"]["budget"]["limit"].as_str().unwrap_or("?"));
        }
        BudgetsCommand::Set(args) => {
            let specs: Vec<BudgetSpec> = match &args.file {
                Some(path) => {
                    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
                    match serde_json::from_str::<BudgetSpec>(&text) {
                        Ok(spec) => vec![spec],
                        Err(_) => BudgetFile::parse(&text)?.into_iter().map(|b| b.to_spec()).collect(),
                    }
                }
                None => {
                    let need = |v: &Option<String>, flag: &str| v.clone().ok_or(format!("--{flag} is needed (or use --file)"));
                    let mode = serde_json::from_value(json!(args.mode)).map_err(|_| format!("--mode `{}`: use enforce or observe", args.mode))?;
                    vec![BudgetSpec {
                        id: need(&args.id, "id")?,
                        scope: need(&args.scope, "scope")?,
                        limit: need(&args.limit, "limit")?,
                        token_limit: args.token_limit,
                        window: need(&args.window, "window")?,
                        utc_offset: args.utc_offset.clone(),
                        time_zone: args.time_zone.clone(),
                        template: None,
                        reserve: args.reserve.clone(),
                        reserve_excess_limit: args.reserve_excess_limit.clone(),
                        reserve_lookback_days: args.reserve_lookback_days,
                        reserve_min_samples: args.reserve_min_samples,
                        soft_thresholds_pct: args.soft.clone(),
                        hard_limit_pct: args.hard_pct,
                        mode,
                    }]
                }
            };
            for spec in specs {
                let id = spec.id.clone();
                let body = serde_json::to_value(&spec).map_err(|e| e.to_string())?;
                let v = admin_call(&conn, Method::PUT, &format!("/admin/budgets/{id}"), Some(body)).await?.json()?;
                println!("budget {id}: {}", v["outcome"].as_str().unwrap_or("?"));
            }
        }
    }
    Ok(())
}

async fn exemption(conn: Conn, command: ExemptionCommand) -> Result<(), String> {
    use hyper::Method;
    match command {
        ExemptionCommand::Add { scope, amount, starts_at, ends_at, reason, approver } => {
            let spec = ExemptionSpec { scope, amount, starts_at, ends_at, reason, approver };
            let body = serde_json::to_value(&spec).map_err(|e| e.to_string())?;
            let v = admin_call(&conn, Method::POST, "/admin/exemptions", Some(body)).await?.json()?;
            println!("exemption {} added: {} on {} until {}", v["id"], v["amount"].as_str().unwrap_or("?"), v["scope"].as_str().unwrap_or("?"),
                crate::window::format_time_ms(v["ends_at_ms"].as_i64().unwrap_or(0)));
        }
        ExemptionCommand::List => print_json(&admin_call(&conn, Method::GET, "/admin/exemptions", None).await?.json()?),
        ExemptionCommand::Revoke { id } => {
            admin_call(&conn, Method::DELETE, &format!("/admin/exemptions/{id}"), None).await?;
            println!("exemption {id} revoked");
        }
    }
    Ok(())
}

fn encode_query(pairs: &[(&str, Option<&str>)]) -> String {
    let enc = |s: &str| {
        s.bytes()
            .map(|b| if b.is_ascii_alphanumeric() || b"-_.~,".contains(&b) { (b as char).to_string() } else { format!("%{b:02X}") })
            .collect::<String>()
    };
    let parts: Vec<String> = pairs.iter().filter_map(|(k, v)| v.map(|v| format!("{k}={}", enc(v)))).collect();
    if parts.is_empty() { String::new() } else { format!("?{}", parts.join("&")) }
}

async fn spend_report(args: ReportArgs) -> Result<(), String> {
    let group_by = GroupBy::parse_list(&args.group_by)?;
    let format = match args.format {
        Format::Csv => "csv",
        _ => "json",
    };
    let query = encode_query(&[
        ("group_by", Some(args.group_by.as_str()).filter(|g| !g.is_empty())),
        ("from", args.from.as_deref()),
        ("to", args.to.as_deref()),
        ("with", args.with.as_deref()),
        ("format", Some(format)),
    ]);
    let answer = admin_call(&args.conn, hyper::Method::GET, &format!("/admin/reports/spend{query}"), None).await?;
    match args.format {
        Format::Csv => print!("{}", answer.text()),
        Format::Json => print_json(&answer.json()?),
        Format::Table => {
            let v = answer.json()?;
            let rows: Vec<ReportRow> = v["rows"]
                .as_array()
                .map(|rows| {
                    rows.iter()
                        .map(|r| ReportRow {
                            keys: group_by.iter().map(|g| r[g.as_str()].as_str().unwrap_or("").to_owned()).collect(),
                            requests: r["requests"].as_u64().unwrap_or(0),
                            cost_micros: r["cost_micros"].as_i64().unwrap_or(0),
                            input_tokens: r["input_tokens"].as_u64().unwrap_or(0),
                            output_tokens: r["output_tokens"].as_u64().unwrap_or(0),
                            cache_read_tokens: r["cache_read_tokens"].as_u64().unwrap_or(0),
                            cache_write_tokens: r["cache_write_tokens"].as_u64().unwrap_or(0),
                            estimated_requests: r["estimated_requests"].as_u64().unwrap_or(0),
                        })
                        .collect()
                })
                .unwrap_or_default();
            let (header, cells) = if args.with.as_deref() == Some("seats") {
                let seats: Vec<report::TeamSeats> = v["rows"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|r| report::TeamSeats { users: r["seats"]["users"].as_u64().unwrap_or(0), seats_micros: r["seats"]["seats_micros"].as_i64().unwrap_or(0) })
                    .collect();
                report::spend_cells_with_seats(&group_by, &rows, &seats)
            } else {
                report::spend_cells(&group_by, &rows)
            };
            print!("{}", report::to_table(&header, &cells));
            println!("total: {} requests, ${}", v["total"]["requests"], v["total"]["cost_usd"].as_str().unwrap_or("?"));
        }
    }
    Ok(())
}

/// The utilization report as the server shapes it (with the forecast columns).
async fn utilization(conn: Conn, format: Format) -> Result<(), String> {
    gov::show(&conn, "/admin/reports/utilization", &[], format).await
}

async fn audit(conn: Conn, subject: Option<String>, since: Option<String>, limit: usize, format: Format) -> Result<(), String> {
    let limit = limit.to_string();
    let query = encode_query(&[("subject", subject.as_deref()), ("since", since.as_deref()), ("limit", Some(limit.as_str()))]);
    let v = admin_call(&conn, hyper::Method::GET, &format!("/admin/audit{query}"), None).await?.json()?;
    if format == Format::Json {
        print_json(&v);
        return Ok(());
    }
    let header: Vec<String> = ["seq", "at", "actor", "action", "subject", "before", "after"].map(String::from).to_vec();
    let cells: Vec<Vec<String>> = v["entries"]
        .as_array()
        .map(|entries| {
            entries
                .iter()
                .map(|e| {
                    let j = |v: &Value| if v.is_null() { "-".to_owned() } else { v.to_string() };
                    vec![
                        e["seq"].to_string(),
                        crate::window::format_time_ms(e["at_ms"].as_i64().unwrap_or(0)),
                        e["actor"].as_str().unwrap_or("").to_owned(),
                        e["action"].as_str().unwrap_or("").to_owned(),
                        e["subject"].as_str().unwrap_or("").to_owned(),
                        j(&e["before"]),
                        j(&e["after"]),
                    ]
                })
                .collect()
        })
        .unwrap_or_default();
    print_cells(format, &header, &cells);
    Ok(())
}

async fn task(conn: Conn, id: String, json_out: bool) -> Result<(), String> {
    let format = if json_out { "json" } else { "markdown" };
    let answer = admin_call(&conn, hyper::Method::GET, &format!("/admin/tasks/{}?format={format}", encode_segment(&id)), None).await?;
    if json_out {
        print_json(&answer.json()?);
    } else {
        print!("{}", answer.text());
    }
    Ok(())
}

async fn checkpoint(conn: Conn, task: String, note: Option<String>) -> Result<(), String> {
    let body = json!({"task": task, "note": note});
    let body = if note_is_none(&body) { json!({"task": body["task"]}) } else { body };
    let v = admin_call(&conn, hyper::Method::POST, "/admin/checkpoints", Some(body)).await?.json()?;
    println!("checkpoint {} recorded on task {}", v["id"].as_str().unwrap_or("?"), v["task"].as_str().unwrap_or("?"));
    Ok(())
}

fn note_is_none(body: &Value) -> bool {
    body["note"].is_null()
}

/// Percent-encodes a path segment (a task id may hold any printable character).
fn encode_segment(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
