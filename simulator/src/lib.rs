//! tollgate-simulator: "what would last month have cost with this routing table?"
//!
//! The console's simulator page and `tollgate-counter simulate` replay the ledger's requests of a
//! period (principal, dialect, requested model, tokens by kind — `GET /admin/reports/requests`)
//! through a *candidate* routing table and price table, and compare with what was billed. Both run
//! this crate, which calls `tollgate-core`'s own routing ([`RoutingTable::route`]) and pricing
//! ([`PriceTable::cost`]) — the code the filter runs in Envoy, not a port — so the page (compiled
//! to `wasm32-unknown-unknown` with wasm-bindgen, [`wasm`]) and the CLI (native) print the same
//! figures from the same input. Everything is integers (micro-dollars); the output JSON is
//! deterministic (groups and budgets sorted), so the two can be compared byte for byte.
//!
//! # What a replay assumes (docs/console.md says the same to users)
//! - A rerouted request is assumed to use the same tokens on the new model (no tokenizer differs).
//! - Rules gated on `budget_utilization_at_least_pct` never match: utilization at each request's
//!   time is not replayed (enforcement supplies it live; the ledger has no such figure).
//! - The ledger keeps neither the 1-hour share of cache writes nor hosted-tool calls, so those are
//!   repriced at the plain cache-write rate and not at all; "as billed" is the ledger's own cost.
//! - A request refused by the candidate (a `deny` rule, or an alias no rule resolves) costs 0.
//! - Budgets are replayed per window (day, ISO week, month, rolling N days in the budget's fixed
//!   UTC offset; `none` is the whole period) with their current limits, exemptions included.

use serde::{Deserialize, Serialize};
use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use tollgate_core::dialect::Dialect;
use tollgate_core::money::{self, format_micros, Micros};
use tollgate_core::pricing::{PriceLookup, PriceTable, PricingConfig};
use tollgate_core::protocol::{Principal, Tokens};
use tollgate_core::routing::{RouteInput, RoutingConfig, RoutingTable};
use tollgate_core::section::parse_at;

#[cfg(target_arch = "wasm32")]
pub mod wasm;

/// One ledger request, as `GET /admin/reports/requests` lists it (unknown members are ignored, so
/// the report can grow).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LedgerRequest {
    pub principal: Principal,
    pub dialect: String,
    pub requested_model: String,
    pub routed_model: String,
    pub tokens: Tokens,
    pub cost_micros: Micros,
    pub finished_at_ms: i64,
}

/// The report document: `{"records": [...], ...}`.
#[derive(Debug, Clone, Deserialize)]
pub struct LedgerDocument {
    pub records: Vec<LedgerRequest>,
}

/// A budget as `GET /admin/budgets` lists it (only what the replay needs).
#[derive(Debug, Clone, Deserialize)]
pub struct BudgetInput {
    pub budget: BudgetSpecInput,
    pub effective_limit_micros: Micros,
    pub hard_limit_micros: Micros,
}

#[derive(Debug, Clone, Deserialize)]
pub struct BudgetSpecInput {
    pub id: String,
    pub scope: String,
    pub window: String,
    #[serde(default = "utc")]
    pub utc_offset: String,
}

fn utc() -> String {
    "UTC".into()
}

/// `{"budgets": [...]}`.
#[derive(Debug, Clone, Deserialize)]
pub struct BudgetsDocument {
    pub budgets: Vec<BudgetInput>,
}

/// The candidate: a routing table (the filter config's `routing` section) and optionally a
/// `pricing` section (default: the bundled prices, as the filter would have).
pub struct Candidate {
    routing: RoutingTable,
    prices: PriceTable,
}

impl Candidate {
    /// Compiles both sections with core's own validation; errors name the field
    /// (`routing.rules[0].match.model: …`).
    pub fn from_json(routing: &str, pricing: Option<&str>) -> Result<Candidate, String> {
        let routing_value: serde_json::Value =
            serde_json::from_str(routing).map_err(|e| format!("routing: not JSON ({e}); give the filter config's routing section, {{\"rules\": [...]}}"))?;
        // Accept a whole filter config too: take its `routing` member.
        let routing_value = match routing_value.get("routing") {
            Some(inner) if routing_value.get("rules").is_none() => inner.clone(),
            _ => routing_value,
        };
        let raw: RoutingConfig = parse_at(routing_value, "routing").map_err(config_error)?;
        let routing = RoutingTable::compile(raw, "routing").map_err(config_error)?;
        let pricing_raw: PricingConfig = match pricing.map(str::trim).filter(|p| !p.is_empty()) {
            None => PricingConfig::default(),
            Some(text) => {
                let value: serde_json::Value =
                    serde_json::from_str(text).map_err(|e| format!("pricing: not JSON ({e}); give the filter config's pricing section"))?;
                let value = match value.get("pricing") {
                    Some(inner) => inner.clone(),
                    None => value,
                };
                parse_at(value, "pricing").map_err(config_error)?
            }
        };
        let prices = PriceTable::from_config(&pricing_raw).map_err(|e| format!("{}: {}", e.path, e.problem))?;
        Ok(Candidate { routing, prices })
    }
}

/// `routing.rules[0].name: …` (core's error without the filter's "tollgate config:" prefix).
fn config_error(e: tollgate_core::section::ConfigError) -> String {
    let text = e.to_string();
    text.strip_prefix("tollgate config: ").map(str::to_owned).unwrap_or(text)
}

/// What the candidate does with one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Forwarded to `model` at `cost_micros` (`priced`: false when the model has no price and
    /// the unknown-model policy charged nothing or the default).
    Forwarded { model: String, cost_micros: Micros, priced: bool },
    /// Refused (a deny rule, or an alias no rule resolves) or, under `unknown_model: deny`, unpriced.
    Refused,
}

impl Candidate {
    /// Replays one request through core's routing and pricing.
    pub fn replay(&self, request: &LedgerRequest) -> Outcome {
        let Some(dialect) = Dialect::parse(&request.dialect) else { return Outcome::Refused };
        let routed = self.routing.route(RouteInput {
            principal: &request.principal,
            dialect,
            requested_model: &request.requested_model,
            budget_utilization_pct: None,
        });
        // A deny rule (403) or an alias no rule resolves (400): the filter would refuse it.
        let Ok(routed) = routed else { return Outcome::Refused };
        let model = routed.model;
        match self.prices.cost(&model, &request.tokens) {
            Ok(cost) => Outcome::Forwarded { model, cost_micros: cost.micros, priced: cost.known },
            Err(_) => Outcome::Refused,
        }
    }
}

/// One team × use case of the replay.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct GroupResult {
    pub team: String,
    pub use_case: String,
    pub requests: u64,
    pub billed_micros: Micros,
    pub candidate_micros: Micros,
    /// Sent to another model than the one billed.
    pub rerouted: u64,
    /// Refused by the candidate.
    pub denied: u64,
    /// Forwarded to a model the candidate's price table does not know.
    pub unpriced: u64,
}

/// One budget of the replay: its worst window, as billed and with the candidate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BudgetResult {
    pub id: String,
    pub scope: String,
    pub window: String,
    pub limit_micros: Micros,
    pub hard_limit_micros: Micros,
    /// Windows of the period with any request on the budget's scope.
    pub windows: u64,
    pub billed_peak_micros: Micros,
    pub candidate_peak_micros: Micros,
    /// Windows whose spend reached the limit (the budget's `soft`/`hard` line), as billed.
    pub billed_windows_over_limit: u64,
    pub candidate_windows_over_limit: u64,
    /// Windows whose spend reached the hard limit (where an enforce budget refuses).
    pub billed_windows_over_hard: u64,
    pub candidate_windows_over_hard: u64,
}

/// The whole answer; `*_usd` fields are the same integers formatted for people.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Simulation {
    pub requests: u64,
    pub billed_micros: Micros,
    pub candidate_micros: Micros,
    pub billed_usd: String,
    pub candidate_usd: String,
    pub rerouted: u64,
    pub denied: u64,
    pub unpriced: u64,
    pub groups: Vec<GroupResult>,
    pub budgets: Vec<BudgetResult>,
}

/// How a budget's window buckets a moment: a key per window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum WindowKind {
    Day,
    Week,
    Month,
    Rolling(u32),
    None,
}

fn parse_window(text: &str) -> Option<WindowKind> {
    match text {
        "day" => Some(WindowKind::Day),
        "week" => Some(WindowKind::Week),
        "month" => Some(WindowKind::Month),
        "none" => Some(WindowKind::None),
        other => other.strip_prefix("rolling:").and_then(|n| n.parse().ok()).filter(|n| (1..=366).contains(n)).map(WindowKind::Rolling),
    }
}

/// `UTC` or `±HH:MM` → minutes east of UTC.
fn parse_offset_minutes(text: &str) -> Option<i64> {
    if text.eq_ignore_ascii_case("utc") || text == "Z" {
        return Some(0);
    }
    let (sign, rest) = match text.as_bytes().first()? {
        b'+' => (1, text.get(1..)?),
        b'-' => (-1, text.get(1..)?),
        _ => return None,
    };
    let (h, m) = rest.split_once(':')?;
    let (h, m): (i64, i64) = (h.parse().ok()?, m.parse().ok()?);
    (h <= 23 && m <= 59).then_some(sign * (h * 60 + m))
}

/// Days since 1970-01-01 → (year, month 1-12) (Howard Hinnant's civil-from-days).
fn year_month(days: i64) -> (i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(month <= 2), month)
}

/// The window key of a moment; for rolling windows, the local day (summed over N days later).
fn window_key(kind: WindowKind, offset_minutes: i64, at_ms: i64) -> i64 {
    let day = (at_ms + offset_minutes * 60_000).div_euclid(86_400_000);
    match kind {
        WindowKind::Day | WindowKind::Rolling(_) => day,
        // 1970-01-01 was a Thursday: +3 makes weeks start on Monday (ISO).
        WindowKind::Week => (day + 3).div_euclid(7),
        WindowKind::Month => {
            let (y, m) = year_month(day);
            y * 12 + m
        }
        WindowKind::None => 0,
    }
}

/// Window spend → per-window totals; rolling windows sum each day with the N-1 days before it.
fn windows(kind: WindowKind, buckets: &BTreeMap<i64, (Micros, Micros)>) -> Vec<(Micros, Micros)> {
    match kind {
        WindowKind::Rolling(n) => buckets
            .keys()
            .map(|&day| {
                buckets.range(day - i64::from(n) + 1..=day).fold((0 as Micros, 0 as Micros), |(b, c), (_, (db, dc))| (b.saturating_add(*db), c.saturating_add(*dc)))
            })
            .collect(),
        _ => buckets.values().copied().collect(),
    }
}

struct BudgetReplay {
    input: BudgetInput,
    kind: WindowKind,
    offset_minutes: i64,
    /// window key → (billed, candidate)
    buckets: BTreeMap<i64, (Micros, Micros)>,
}

/// A ledger request as read from the report, its strings borrowed from the JSON text (100k rows
/// replay without allocating per row; escaped strings are owned).
#[derive(Debug, Clone, Deserialize)]
struct RowRef<'a> {
    #[serde(borrow)]
    principal: PrincipalRef<'a>,
    #[serde(borrow)]
    dialect: Cow<'a, str>,
    #[serde(borrow)]
    requested_model: Cow<'a, str>,
    #[serde(borrow)]
    routed_model: Cow<'a, str>,
    tokens: Tokens,
    cost_micros: Micros,
    finished_at_ms: i64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Deserialize)]
struct PrincipalRef<'a> {
    #[serde(borrow, default)]
    org: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    cost_center: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    team: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    user: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    key_id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    use_case: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    tier: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    task: Option<Cow<'a, str>>,
}

impl PrincipalRef<'_> {
    fn to_principal(&self) -> Principal {
        let o = |v: &Option<Cow<'_, str>>| v.as_ref().map(|s| s.to_string());
        Principal {
            org: o(&self.org),
            cost_center: o(&self.cost_center),
            team: o(&self.team),
            user: o(&self.user),
            key_id: o(&self.key_id),
            use_case: o(&self.use_case),
            tier: o(&self.tier),
            task: o(&self.task),
        }
    }
}

fn borrow(p: &Option<String>) -> Option<Cow<'_, str>> {
    p.as_deref().map(Cow::Borrowed)
}

impl<'a> RowRef<'a> {
    fn of(r: &'a LedgerRequest) -> RowRef<'a> {
        let p = &r.principal;
        RowRef {
            principal: PrincipalRef {
                org: borrow(&p.org),
                cost_center: borrow(&p.cost_center),
                team: borrow(&p.team),
                user: borrow(&p.user),
                key_id: borrow(&p.key_id),
                use_case: borrow(&p.use_case),
                tier: borrow(&p.tier),
                task: borrow(&p.task),
            },
            dialect: Cow::Borrowed(&r.dialect),
            requested_model: Cow::Borrowed(&r.requested_model),
            routed_model: Cow::Borrowed(&r.routed_model),
            tokens: r.tokens,
            cost_micros: r.cost_micros,
            finished_at_ms: r.finished_at_ms,
        }
    }
}

/// What routing and pricing decided for one (principal, dialect, requested model): the same for
/// every request that shares them (utilization is not replayed), so it is computed once.
struct Decision {
    /// `None`: refused. Else the routed model and its price (core's `PriceTable::price`).
    forwarded: Option<(String, PriceLookup)>,
    group: usize,
    /// Indexes of the budgets on the principal's scope keys.
    budgets: Vec<usize>,
}

/// Replays `requests` through `candidate`, grouped by team × use case, and each budget's windows.
pub fn simulate(candidate: &Candidate, requests: &[LedgerRequest], budgets: Vec<BudgetInput>) -> Result<Simulation, String> {
    let rows: Vec<RowRef<'_>> = requests.iter().map(RowRef::of).collect();
    simulate_rows(candidate, &rows, budgets)
}

fn simulate_rows(candidate: &Candidate, rows: &[RowRef<'_>], budgets: Vec<BudgetInput>) -> Result<Simulation, String> {
    let mut replays = Vec::with_capacity(budgets.len());
    for (i, b) in budgets.into_iter().enumerate() {
        let kind = parse_window(&b.budget.window).ok_or_else(|| format!("budgets[{i}].budget.window: `{}` is not a window", b.budget.window))?;
        let offset_minutes =
            parse_offset_minutes(&b.budget.utc_offset).ok_or_else(|| format!("budgets[{i}].budget.utc_offset: `{}` is not UTC or ±HH:MM", b.budget.utc_offset))?;
        replays.push(BudgetReplay { input: b, kind, offset_minutes, buckets: BTreeMap::new() });
    }
    let mut groups: Vec<GroupResult> = Vec::new();
    let mut group_index: HashMap<(String, String), usize> = HashMap::new();
    let mut decisions: HashMap<(&PrincipalRef<'_>, &str, &str), Decision> = HashMap::new();
    for row in rows {
        let key = (&row.principal, row.dialect.as_ref(), row.requested_model.as_ref());
        let decision = decisions.entry(key).or_insert_with(|| {
            let principal = row.principal.to_principal();
            let forwarded = Dialect::parse(&row.dialect).and_then(|dialect| {
                // A deny rule (403) or an alias no rule resolves (400): the filter would refuse it.
                let routed = candidate
                    .routing
                    .route(RouteInput { principal: &principal, dialect, requested_model: &row.requested_model, budget_utilization_pct: None })
                    .ok()?;
                // Under `unknown_model: deny` the filter refuses an unpriced model too.
                let price = candidate.prices.price(&routed.model).ok()?;
                Some((routed.model, price))
            });
            let team = principal.team.clone().unwrap_or_default();
            let use_case = principal.use_case.clone().unwrap_or_default();
            let group = *group_index.entry((team.clone(), use_case.clone())).or_insert_with(|| {
                groups.push(GroupResult { team, use_case, ..Default::default() });
                groups.len() - 1
            });
            let keys = principal.scope_keys();
            let budgets = replays.iter().enumerate().filter(|(_, r)| keys.contains(&r.input.budget.scope)).map(|(i, _)| i).collect();
            Decision { forwarded, group, budgets }
        });
        let Some(group) = groups.get_mut(decision.group) else { continue };
        group.requests += 1;
        group.billed_micros = group.billed_micros.saturating_add(row.cost_micros);
        let candidate_cost = match &decision.forwarded {
            None => {
                group.denied += 1;
                0
            }
            Some((model, lookup)) => {
                group.rerouted += u64::from(*model != row.routed_model);
                group.unpriced += u64::from(!lookup.known);
                // `PriceTable::cost`, with the lookup done once per decision.
                money::picos_to_micros_ceil(lookup.price.cost_picos(&row.tokens).0)
            }
        };
        group.candidate_micros = group.candidate_micros.saturating_add(candidate_cost);
        for &i in &decision.budgets {
            if let Some(r) = replays.get_mut(i) {
                let key = window_key(r.kind, r.offset_minutes, row.finished_at_ms);
                let slot = r.buckets.entry(key).or_insert((0, 0));
                slot.0 = slot.0.saturating_add(row.cost_micros);
                slot.1 = slot.1.saturating_add(candidate_cost);
            }
        }
    }
    groups.sort_by(|a, b| (&a.team, &a.use_case).cmp(&(&b.team, &b.use_case)));
    let sum = |f: fn(&GroupResult) -> u64| groups.iter().map(f).sum::<u64>();
    let billed_micros = groups.iter().fold(0 as Micros, |s, g| s.saturating_add(g.billed_micros));
    let candidate_micros = groups.iter().fold(0 as Micros, |s, g| s.saturating_add(g.candidate_micros));
    let mut budgets: Vec<BudgetResult> = replays
        .into_iter()
        .map(|r| {
            let totals = windows(r.kind, &r.buckets);
            let (limit, hard) = (r.input.effective_limit_micros, r.input.hard_limit_micros);
            let count = |f: &dyn Fn(&(Micros, Micros)) -> bool| totals.iter().filter(|t| f(t)).count() as u64;
            BudgetResult {
                id: r.input.budget.id,
                scope: r.input.budget.scope,
                window: r.input.budget.window,
                limit_micros: limit,
                hard_limit_micros: hard,
                windows: r.buckets.len() as u64,
                billed_peak_micros: totals.iter().map(|t| t.0).max().unwrap_or(0),
                candidate_peak_micros: totals.iter().map(|t| t.1).max().unwrap_or(0),
                billed_windows_over_limit: count(&|t| t.0 > 0 && t.0 >= limit),
                candidate_windows_over_limit: count(&|t| t.1 > 0 && t.1 >= limit),
                billed_windows_over_hard: count(&|t| t.0 > 0 && t.0 >= hard),
                candidate_windows_over_hard: count(&|t| t.1 > 0 && t.1 >= hard),
            }
        })
        .collect();
    budgets.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(Simulation {
        requests: sum(|g| g.requests),
        billed_micros,
        candidate_micros,
        billed_usd: format_micros(billed_micros),
        candidate_usd: format_micros(candidate_micros),
        rerouted: sum(|g| g.rerouted),
        denied: sum(|g| g.denied),
        unpriced: sum(|g| g.unpriced),
        groups,
        budgets,
    })
}

/// The report document, its rows borrowed from the text.
#[derive(Deserialize)]
struct LedgerDocumentRef<'a> {
    #[serde(borrow)]
    records: Vec<RowRef<'a>>,
}

/// The one entry point both the page and the CLI call: the report documents as JSON text in, the
/// [`Simulation`] as JSON text out. `budgets` may be empty (no budget replay).
pub fn simulate_json(ledger: &str, routing: &str, pricing: Option<&str>, budgets: &str) -> Result<String, String> {
    let candidate = Candidate::from_json(routing, pricing)?;
    let ledger: LedgerDocumentRef<'_> =
        serde_json::from_str(ledger).map_err(|e| format!("ledger: {e}; give the answer of GET /admin/reports/requests"))?;
    let budgets: Vec<BudgetInput> = if budgets.trim().is_empty() {
        Vec::new()
    } else {
        serde_json::from_str::<BudgetsDocument>(budgets).map_err(|e| format!("budgets: {e}; give the answer of GET /admin/budgets"))?.budgets
    };
    let result = simulate_rows(&candidate, &ledger.records, budgets)?;
    serde_json::to_string(&result).map_err(|e| format!("cannot encode the simulation: {e}"))
}

#[cfg(test)]
mod tests;
