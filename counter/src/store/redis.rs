//! The Redis backend: the same [`Store`] contract as the embedded store, with every piece of state
//! in Redis (7 / Valkey) so several counter instances can share budgets.
//!
//! # Why this shape
//! Several counter instances serve many gateways; the lease invariant (`spent + live slices <= hard
//! limit`) and idempotent ingestion must hold across all of them, so no instance may decide from
//! its own memory. Each decision is one **Lua script** (EVALSHA, loaded on NOSCRIPT by the client)
//! that reads and writes every key it needs atomically: Redis runs one script at a time.
//!
//! # Keys (all under one hash tag)
//! Every key starts with `{<namespace>}:` (default namespace `tollgate`):
//! ```text
//! {ns}:config:version   string  bumped by every budget/exemption change (see "Config cache")
//! {ns}:budgets          hash    budget id -> canonical spec JSON
//! {ns}:exemptions       hash    exemption id -> exemption JSON;  {ns}:exemptions:seq  its ids
//! {ns}:spend:<budget>   hash    m:<day bucket> -> micros, t:<day bucket> -> billed tokens,
//!                               x:<day bucket> -> reservation excess (`reserve: p99`, crate::reserve)
//! {ns}:lease:<budget>   hash    lease holder (gateway id; `<gateway>@<key>` for a selector budget)
//!                               -> "<slice micros>:<expires_at_ms>"
//! {ns}:seen:<record id> string  idempotency key, PX idempotency_ttl
//! {ns}:ledger           stream  one entry per accepted record: r = {"gateway_id","ingested_at_ms","record"}
//! {ns}:audit            stream  one entry per change;  {ns}:audit:seq  its sequence numbers
//! {ns}:checkpoints:<task> hash  checkpoint number -> json (`redis/task.rs`); {ns}:checkpoints:seq
//! {ns}:health           string  written by `/healthz` (a write, so a replica or a full Redis fails)
//! ```
//! The hash tag puts a namespace on **one Cluster slot**. A usage record touches every budget on
//! its chain (org, team, user, ... each shared with other chains) plus its idempotency key, and a
//! lease reads a whole chain; with one slot each is a single atomic script, with no cross-slot
//! coordination and no partial charge. On a Cluster the store follows the `MOVED` answer of any
//! node to the one serving that slot. The price: one namespace's load is served by one shard.
//! To scale out, run one namespace per independent tenant (budgets never span namespaces). The
//! rejected alternative — a slot per budget with an idempotency-first script that records the
//! charge in an outbox and per-budget scripts that apply it — spreads load but makes the
//! chain charge eventually consistent and the lease invariant per budget only; see
//! docs/counter-redis.md.
//!
//! # The ledger
//! Accepted records are appended to the `{ns}:ledger` stream **in the same script** that sets their
//! idempotency keys and charges them, so a record is in the ledger exactly when it was counted.
//! Retention is a `MAXLEN ~` and/or a `MINID ~` (age) trim; reports scan the retained stream.
//! Export for finance or a warehouse is `XRANGE` (documented in docs/counter-redis.md).
//!
//! # Config cache
//! Budgets and exemptions change rarely and every decision needs them (windows, scopes, hard
//! limits), so each instance keeps a copy tagged with `{ns}:config:version`. Every script that
//! decides from that copy checks the version first and answers `stale` if another instance changed
//! it; the store then reloads and runs the script again. No extra round trip on the hot path.
//!
//! # Failures
//! Connection errors, timeouts and `LOADING` are retried with exponential backoff, a bounded number
//! of times, on a fresh connection; then the call fails with [`StoreError::Unavailable`] (503) and
//! `/healthz` reports unhealthy until Redis answers again. Every retried write is safe to repeat:
//! ingestion is idempotent by record id, a lease grant sets (not adds) the slice, budget puts
//! compare first, exemption ids are taken before the write. An answer is sent only after Redis
//! replied, so with `appendonly yes` + `appendfsync always` an acknowledged record is on disk.
//!
//! Amounts cross into Lua as doubles: exact up to 2^53 micro-dollars ($9 billion); larger limits
//! and wants are clamped to that.

mod requests;
mod gov;
mod events;
mod task;

use super::book::{lease_holder, ScopeIndex};
use super::RequestsQuery;
use super::{starts_from_ledger, AuditEntry, AuditQuery, BudgetState, GroupBy, LedgerStart, PutOutcome, ReportQuery, ReportRow, Store, StoreError, StoreResult};
use crate::budget::{assess, Budget, BudgetSpec, Exemption};
use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, ErrorKind, FromRedisValue, RedisError, RedisResult, Script, Value};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tollgate_core::money::Micros;
use tollgate_core::protocol::{BudgetLease, BudgetMode, GuardAnswer, GuardEvent, LeaseRequest, LeaseResponse, UsageAck, UsageBatch, UsageRecord};

/// Largest amount that crosses into Lua exactly (2^53 - 1).
const MAX_LUA_INT: i64 = (1 << 53) - 1;

/// How the Redis store connects, names its keys and keeps its data.
#[derive(Debug, Clone)]
pub struct RedisOptions {
    /// `redis://[:password@]host:port[/db]`. TLS (`rediss://`) is not built in: use a TLS sidecar.
    pub url: String,
    /// The hash tag of every key: one deployment (or tenant) per namespace.
    pub namespace: String,
    /// How long a lease slice lives unless renewed.
    pub lease_ttl_ms: i64,
    /// How long a record id is remembered (a duplicate arriving later is counted again).
    pub idempotency_ttl_ms: i64,
    /// Ledger stream cap (`XADD MAXLEN ~`); `None`: no cap by length.
    pub ledger_max_len: Option<u64>,
    /// Ledger age cap (`XTRIM MINID ~`, by Redis server time); `None`: no cap by age.
    pub ledger_retention_ms: Option<i64>,
    pub connect_timeout: Duration,
    /// Per-command response timeout.
    pub op_timeout: Duration,
    /// Retries after the first attempt, on connection errors, timeouts and `LOADING`.
    pub retries: u32,
    /// First backoff; doubles per retry.
    pub retry_backoff: Duration,
    /// No retry starts after this much time was spent on one call (a hung Redis must not hold a
    /// request for `retries x op_timeout`).
    pub retry_budget: Duration,
}

impl Default for RedisOptions {
    fn default() -> Self {
        RedisOptions {
            url: "redis://127.0.0.1:6379".into(),
            namespace: "tollgate".into(),
            lease_ttl_ms: 30_000,
            idempotency_ttl_ms: 7 * 86_400_000,
            ledger_max_len: None,
            ledger_retention_ms: Some(400 * 86_400_000),
            connect_timeout: Duration::from_secs(1),
            op_timeout: Duration::from_secs(2),
            retries: 4,
            retry_backoff: Duration::from_millis(50),
            retry_budget: Duration::from_secs(3),
        }
    }
}

/// The scripts, compiled once (each is `common.lua` + its body; the client sends EVALSHA and
/// loads the script on NOSCRIPT, e.g. after a Redis restart).
struct Scripts {
    load: Script,
    lease: Script,
    states: Script,
    ingest: Script,
    put_budget: Script,
    add_late_spend: Script,
    delete_budget: Script,
    add_exemption: Script,
    revoke_exemption: Script,
}

impl Scripts {
    fn new() -> Scripts {
        let s = |body: &str| Script::new(&format!("{}\n{}", include_str!("redis/common.lua"), body));
        Scripts {
            load: s(include_str!("redis/load.lua")),
            lease: s(include_str!("redis/lease.lua")),
            states: s(include_str!("redis/states.lua")),
            ingest: s(include_str!("redis/ingest.lua")),
            put_budget: s(include_str!("redis/put_budget.lua")),
            add_late_spend: s(include_str!("redis/add_late_spend.lua")),
            delete_budget: s(include_str!("redis/delete_budget.lua")),
            add_exemption: s(include_str!("redis/add_exemption.lua")),
            revoke_exemption: s(include_str!("redis/revoke_exemption.lua")),
        }
    }
}

/// Budgets and exemptions as of one `config:version`.
#[derive(Debug, Default)]
struct Config {
    version: String,
    budgets: BTreeMap<String, Arc<Budget>>,
    index: Arc<ScopeIndex>,
    exemptions: Vec<Exemption>,
}

impl Config {
    fn exempt_micros(&self, scope: &str, now_ms: i64) -> Micros {
        self.exemptions
            .iter()
            .filter(|e| e.scope == scope && e.active_at(now_ms))
            .fold(0, |sum: Micros, e| sum.saturating_add(e.amount_micros))
    }

    /// The budgets covering `scopes` with the key each is answered under and its lease holder, in
    /// request order: each budget once, a selector budget once per key ([`lease_holder`]).
    fn chain(&self, gateway_id: &str, scopes: &[String]) -> Vec<(Arc<Budget>, String, String)> {
        let mut seen = HashSet::new();
        let mut out = Vec::new();
        for scope in scopes {
            for budget in self.index.covering(scope) {
                let holder = lease_holder(gateway_id, budget, scope);
                if seen.insert((budget.id.clone(), holder.clone())) {
                    out.push((Arc::clone(budget), scope.clone(), holder));
                }
            }
        }
        out
    }
}

/// What the ledger stream holds per accepted record (field `r`).
#[derive(Serialize)]
struct LedgerEntryRef<'a> {
    gateway_id: &'a str,
    ingested_at_ms: i64,
    record: &'a UsageRecord,
}

#[derive(Deserialize)]
struct LedgerEntry {
    #[allow(dead_code)]
    gateway_id: String,
    ingested_at_ms: i64,
    record: UsageRecord,
}

/// The Redis node this store talks to (on Cluster: the one serving the namespace's slot, learnt
/// from a `MOVED` redirect), and its `host:port` for messages (the URL may hold a password).
struct Node {
    client: redis::Client,
    address: String,
}

/// The Redis store. Cheap to share behind an `Arc`; one multiplexed connection serves every call.
pub struct RedisStore {
    /// A std mutex: held only to clone or replace the client.
    node: Mutex<Node>,
    /// The live connection, if any. A tokio mutex: a reconnect awaits while holding it, so that
    /// concurrent callers wait for one reconnect instead of each opening their own.
    conn: tokio::sync::Mutex<Option<MultiplexedConnection>>,
    /// A std mutex: held only to swap or clone the `Arc`, never across an `.await`.
    config: Mutex<Arc<Config>>,
    scripts: Scripts,
    /// `{ns}:` and `{ns}:config:version`.
    prefix: String,
    version_key: String,
    options: RedisOptions,
}

fn transient(e: &RedisError) -> bool {
    e.is_io_error()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || e.is_timeout()
        || matches!(
            e.kind(),
            ErrorKind::BusyLoadingError | ErrorKind::TryAgain | ErrorKind::MasterDown | ErrorKind::ReadOnly | ErrorKind::Ask | ErrorKind::ClusterDown
        )
}

fn breaks_connection(e: &RedisError) -> bool {
    e.is_io_error() || e.is_connection_dropped() || e.is_connection_refusal() || e.is_timeout()
}

fn text(v: &Value) -> String {
    String::from_redis_value(v).unwrap_or_default()
}

fn number(v: Option<&Value>) -> StoreResult<i64> {
    let v = v.ok_or_else(|| StoreError::Internal("redis: a script answered fewer values than expected".into()))?;
    i64::from_redis_value(v).map_err(|e| StoreError::Internal(format!("redis: unexpected script answer: {e}")))
}

fn lua_int(v: i64) -> String {
    v.clamp(-MAX_LUA_INT, MAX_LUA_INT).to_string()
}

fn json<T: Serialize>(value: &T) -> StoreResult<String> {
    serde_json::to_string(value).map_err(|e| StoreError::Internal(format!("cannot encode JSON: {e}")))
}

/// A script's answer: `{'stale'}` or `{'ok' | outcome, values...}`.
fn answer(v: Value) -> StoreResult<(String, Vec<Value>)> {
    let mut items = Vec::<Value>::from_redis_value(&v).map_err(|e| StoreError::Internal(format!("redis: unexpected script answer: {e}")))?;
    if items.is_empty() {
        return Err(StoreError::Internal("redis: empty script answer".into()));
    }
    let status = text(&items.remove(0));
    Ok((status, items))
}

/// How many times a `stale` answer is followed by a reload before giving up (admin changes would
/// have to land faster than a reload, every time).
const STALE_RETRIES: usize = 8;

impl RedisStore {
    /// Connects, checks Redis answers, warns about persistence settings that would lose
    /// acknowledged writes, and loads the configuration.
    pub async fn connect(options: RedisOptions) -> StoreResult<RedisStore> {
        if options.namespace.is_empty() || options.namespace.contains(['{', '}']) {
            return Err(StoreError::Invalid(format!(
                "redis namespace `{}`: use a non-empty name without braces (it becomes the keys' hash tag)",
                options.namespace
            )));
        }
        let client = redis::Client::open(options.url.as_str())
            .map_err(|e| StoreError::Invalid(format!("redis url: {e}; write redis://[:password@]host:port[/db]")))?;
        let address = client.get_connection_info().addr.to_string();
        let prefix = format!("{{{}}}:", options.namespace);
        let store = RedisStore {
            node: Mutex::new(Node { client, address }),
            conn: tokio::sync::Mutex::new(None),
            config: Mutex::new(Arc::default()),
            scripts: Scripts::new(),
            version_key: format!("{prefix}config:version"),
            prefix,
            options,
        };
        store.reload().await?;
        store.check_persistence().await;
        Ok(store)
    }

    /// The key prefix, `{<namespace>}:`.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Deletes every key of this namespace (benches and throw-away environments); returns how many.
    pub async fn delete_namespace(&self) -> StoreResult<u64> {
        let pattern = format!("{}*", self.prefix);
        let mut cursor = 0u64;
        let mut deleted = 0u64;
        loop {
            let (next, keys): (u64, Vec<String>) = self
                .retry("delete namespace", |mut conn| {
                    let pattern = pattern.clone();
                    async move { redis::cmd("SCAN").arg(cursor).arg("MATCH").arg(pattern).arg("COUNT").arg(1000).query_async(&mut conn).await }
                })
                .await?;
            if !keys.is_empty() {
                let n: u64 = self
                    .retry("delete namespace", |mut conn| {
                        let keys = keys.clone();
                        async move { redis::cmd("UNLINK").arg(keys).query_async(&mut conn).await }
                    })
                    .await?;
                deleted += n;
            }
            if next == 0 {
                break;
            }
            cursor = next;
        }
        self.reload().await?;
        Ok(deleted)
    }

    fn node(&self) -> std::sync::MutexGuard<'_, Node> {
        self.node.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `host:port` of the Redis node in use.
    pub fn address(&self) -> String {
        self.node().address.clone()
    }

    /// On Redis Cluster, a node that does not serve the namespace's slot answers
    /// `MOVED <slot> <host>:<port>`: every key of the namespace is in that one slot, so the store
    /// simply moves to that node (same credentials) for good. Returns false if the answer is not
    /// a redirect it can follow.
    fn follow_redirect(&self, e: &RedisError) -> bool {
        let Some(target) = e.detail().and_then(|d| d.split_whitespace().nth(1)) else { return false };
        let Some((host, port)) = target.rsplit_once(':') else { return false };
        let Ok(port) = port.parse::<u16>() else { return false };
        let mut node = self.node();
        let mut info = node.client.get_connection_info().clone();
        info.addr = redis::ConnectionAddr::Tcp(host.trim_matches(['[', ']']).to_owned(), port);
        let Ok(client) = redis::Client::open(info) else { return false };
        crate::log::info("redis cluster: the namespace's slot is on another node; moving there", serde_json::json!({"from": node.address, "to": target}));
        *node = Node { client, address: target.to_owned() };
        true
    }

    async fn connection(&self) -> RedisResult<MultiplexedConnection> {
        let mut slot = self.conn.lock().await;
        if let Some(c) = slot.as_ref() {
            return Ok(c.clone());
        }
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(self.options.connect_timeout)
            .set_response_timeout(self.options.op_timeout);
        let client = self.node().client.clone();
        let c = client.get_multiplexed_async_connection_with_config(&config).await?;
        *slot = Some(c.clone());
        Ok(c)
    }

    async fn forget_connection(&self) {
        *self.conn.lock().await = None;
    }

    /// Runs `op` on a connection, retrying transient failures with backoff (bounded).
    async fn retry<T, F, Fut>(&self, what: &str, mut op: F) -> StoreResult<T>
    where
        F: FnMut(MultiplexedConnection) -> Fut,
        Fut: Future<Output = RedisResult<T>>,
    {
        let started = crate::clock::Stopwatch::start();
        let mut delay = self.options.retry_backoff;
        let mut attempt = 0;
        loop {
            let result = match self.connection().await {
                Ok(conn) => op(conn).await,
                Err(e) => Err(e),
            };
            match result {
                Ok(v) => return Ok(v),
                Err(e) => {
                    if e.kind() == ErrorKind::Moved && attempt < self.options.retries && self.follow_redirect(&e) {
                        attempt += 1;
                        self.forget_connection().await;
                        continue;
                    }
                    if breaks_connection(&e) {
                        self.forget_connection().await;
                    }
                    let in_budget = started.elapsed() + delay < self.options.retry_budget;
                    if transient(&e) && attempt < self.options.retries && in_budget {
                        attempt += 1;
                        tokio::time::sleep(delay).await;
                        delay = delay.saturating_mul(2);
                        continue;
                    }
                    return Err(self.failure(what, &e, attempt));
                }
            }
        }
    }

    fn failure(&self, what: &str, e: &RedisError, retries: u32) -> StoreError {
        if transient(e) {
            crate::log::warn("redis unavailable", serde_json::json!({"redis": self.address(), "op": what, "error": e.to_string(), "retries": retries}));
            StoreError::Unavailable(format!(
                "{what}: redis at {} is unavailable ({e}) after {retries} retries; nothing of this request is \
                 acknowledged: send it again, repeating is safe (check that Redis is up and reachable)",
                self.address()
            ))
        } else if e.code() == Some("OOM") {
            StoreError::Unavailable(format!(
                "{what}: redis at {} is out of memory ({e}); nothing was applied. Raise maxmemory or shorten the ledger retention",
                self.address()
            ))
        } else {
            StoreError::Internal(format!("{what}: redis at {} refused: {e}", self.address()))
        }
    }

    /// Runs a script with KEYS[1] = the version key, ARGV[1] = the prefix, then `args`.
    async fn eval(&self, what: &str, script: &Script, args: &[String]) -> StoreResult<Value> {
        self.retry(what, |mut conn| {
            let mut call = script.prepare_invoke();
            call.key(&self.version_key).arg(&self.prefix);
            for a in args {
                call.arg(a.as_str());
            }
            async move { call.invoke_async::<Value>(&mut conn).await }
        })
        .await
    }

    /// Reads the configuration and replaces the cached copy.
    async fn reload(&self) -> StoreResult<Arc<Config>> {
        let v = self.eval("load configuration", &self.scripts.load, &[]).await?;
        let (version, values) = answer(v)?;
        let pairs = |v: Option<&Value>| -> Vec<(String, String)> {
            let flat = v.map(|v| Vec::<String>::from_redis_value(v).unwrap_or_default()).unwrap_or_default();
            flat.chunks_exact(2).map(|p| (p[0].clone(), p[1].clone())).collect()
        };
        let mut config = Config { version, ..Config::default() };
        for (id, spec) in pairs(values.first()) {
            let spec: BudgetSpec =
                serde_json::from_str(&spec).map_err(|e| StoreError::Internal(format!("redis: budget {id} is not a budget spec: {e}")))?;
            let budget = Budget::from_spec(spec).map_err(|e| StoreError::Internal(format!("redis: budget {id}: {e}")))?;
            config.budgets.insert(id, Arc::new(budget));
        }
        config.index = Arc::new(ScopeIndex::build(config.budgets.values()));
        for (id, body) in pairs(values.get(1)) {
            let e: Exemption = serde_json::from_str(&body).map_err(|e| StoreError::Internal(format!("redis: exemption {id}: {e}")))?;
            config.exemptions.push(e);
        }
        config.exemptions.sort_by_key(|e| e.id);
        let config = Arc::new(config);
        *self.config.lock().unwrap_or_else(|p| p.into_inner()) = Arc::clone(&config);
        Ok(config)
    }

    fn cached(&self) -> Arc<Config> {
        Arc::clone(&self.config.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Runs a config-dependent script: `args(config)` builds its arguments (after the version);
    /// a `stale` answer reloads the configuration and runs it again.
    async fn with_config<T>(
        &self,
        what: &str,
        script: &Script,
        mut args: impl FnMut(&Config) -> StoreResult<(Vec<String>, T)>,
    ) -> StoreResult<(Arc<Config>, T, Vec<Value>)> {
        let mut config = self.cached();
        for _ in 0..STALE_RETRIES {
            let (mut a, extra) = args(&config)?;
            a.insert(0, config.version.clone());
            let (status, values) = answer(self.eval(what, script, &a).await?)?;
            if status == "stale" {
                config = self.reload().await?;
                continue;
            }
            return Ok((config, extra, values));
        }
        Err(StoreError::Unavailable(format!("{what}: budgets kept changing while this ran; retry")))
    }

    /// Logs a warning when Redis is configured in a way that can lose acknowledged writes.
    async fn check_persistence(&self) {
        let get = |name: &'static str| async move {
            self.retry("CONFIG GET", |mut conn| async move {
                redis::cmd("CONFIG").arg("GET").arg(name).query_async::<Vec<String>>(&mut conn).await
            })
            .await
            .ok()
            .and_then(|v| v.get(1).cloned())
        };
        let appendonly = get("appendonly").await;
        let fsync = get("appendfsync").await;
        let policy = get("maxmemory-policy").await;
        let fields = serde_json::json!({"redis": self.address(), "namespace": self.options.namespace, "appendonly": appendonly, "appendfsync": fsync, "maxmemory_policy": policy});
        if appendonly.as_deref() == Some("no") {
            crate::log::warn("redis has appendonly no: acknowledged usage is lost if Redis restarts; set appendonly yes", fields.clone());
        }
        if fsync.as_deref() == Some("no") {
            crate::log::warn("redis has appendfsync no: acknowledged usage can be lost on a crash; use always or everysec", fields.clone());
        }
        if policy.as_deref().is_some_and(|p| p != "noeviction") {
            crate::log::warn("redis evicts keys under memory pressure: spend, leases or idempotency keys could vanish; set maxmemory-policy noeviction", fields.clone());
        }
        crate::log::info("redis store ready", fields);
    }

    /// Reads a hash as (field, value) strings.
    async fn hgetall(&self, what: &str, key: String) -> StoreResult<Vec<(String, String)>> {
        let flat: Vec<String> = self
            .retry(what, |mut conn| {
                let key = key.clone();
                async move { redis::cmd("HGETALL").arg(key).query_async(&mut conn).await }
            })
            .await?;
        Ok(flat.chunks_exact(2).map(|p| (p[0].clone(), p[1].clone())).collect())
    }

    /// Reads a stream in pages: `XRANGE` (oldest first) or `XREVRANGE` (newest first); `visit`
    /// returns false to stop.
    async fn scan_stream(&self, what: &str, key: &str, reverse: bool, mut visit: impl FnMut(&[Vec<u8>]) -> bool) -> StoreResult<()> {
        const PAGE: usize = 2000;
        let mut cursor: Option<String> = None;
        loop {
            let (command, start, end) = match (&cursor, reverse) {
                (None, false) => ("XRANGE", "-".to_owned(), "+".to_owned()),
                (Some(c), false) => ("XRANGE", format!("({c}"), "+".to_owned()),
                (None, true) => ("XREVRANGE", "+".to_owned(), "-".to_owned()),
                (Some(c), true) => ("XREVRANGE", format!("({c}"), "-".to_owned()),
            };
            let page: Vec<(String, Vec<Vec<u8>>)> = self
                .retry(what, |mut conn| {
                    let (start, end) = (start.clone(), end.clone());
                    async move { redis::cmd(command).arg(key).arg(start).arg(end).arg("COUNT").arg(PAGE).query_async(&mut conn).await }
                })
                .await?;
            let full = page.len() == PAGE;
            for (id, fields) in &page {
                if !visit(fields) {
                    return Ok(());
                }
                cursor = Some(id.clone());
            }
            if !full {
                return Ok(());
            }
        }
    }

    /// Adds the ledger entries after `after` (an entry id, `""` for the start) to `start` (see
    /// [`LedgerStart`]) and returns the id of the last entry read (`after` if there was none).
    /// Adds the ledger entries after `after` ('' = from the start) up to `until` (inclusive; '' =
    /// the end) to `start`; returns the last entry id read (`after` when there was none).
    async fn read_ledger_start(&self, budget: &Budget, now_ms: i64, after: &str, until: &str, start: &mut LedgerStart) -> StoreResult<String> {
        const PAGE: usize = 2000;
        let key = format!("{}ledger", self.prefix);
        let to = if until.is_empty() { "+".to_owned() } else { until.to_owned() };
        let mut cursor = after.to_owned();
        loop {
            let from = if cursor.is_empty() { "-".to_owned() } else { format!("({cursor}") };
            let page: Vec<(String, Vec<Vec<u8>>)> = self
                .retry("put budget: read the ledger", |mut conn| {
                    let (key, from, to) = (key.clone(), from.clone(), to.clone());
                    async move { redis::cmd("XRANGE").arg(key).arg(from).arg(to).arg("COUNT").arg(PAGE).query_async(&mut conn).await }
                })
                .await?;
            for (id, fields) in &page {
                if let Some(e) = field(fields, "r").and_then(|r| serde_json::from_slice::<LedgerEntry>(r).ok()) {
                    let r = &e.record;
                    // Up to a given entry: records ingested while a put ran, maybe after `now_ms`
                    // (the put's clock reading); each counts as its own ingestion charged it.
                    let at = if until.is_empty() { now_ms } else { now_ms.max(e.ingested_at_ms) };
                    start.add(budget, at, e.ingested_at_ms, &r.principal, r.cost_micros, r.tokens.total());
                }
                cursor = id.clone();
            }
            if page.len() < PAGE {
                return Ok(cursor);
            }
        }
    }

    /// Charges a budget just created with the ledger entries in `(after, until]` of its scope and
    /// window: the records ingested while the put ran, which no ingestion charged (the budget did
    /// not exist yet) and the put's own sums did not hold. Once (add_late_spend.lua keeps a marker,
    /// so a retried call adds nothing twice); a counter that stops between the put and this
    /// undercounts those few records.
    async fn add_ledger_between(&self, budget: &Budget, now_ms: i64, after: &str, until: &str) -> StoreResult<()> {
        let mut late = LedgerStart::default();
        self.read_ledger_start(budget, now_ms, after, until, &mut late).await?;
        let mut args = vec![budget.id.clone(), until.to_owned(), late.buckets.len().to_string()];
        for (bucket, spend) in &late.buckets {
            args.push(bucket.to_string());
            args.push(lua_int(spend.micros));
            args.push(lua_int(i64::try_from(spend.tokens).unwrap_or(i64::MAX)));
        }
        self.eval("put budget: charge the records ingested meanwhile", &self.scripts.add_late_spend, &args).await?;
        Ok(())
    }

    fn state(config: &Config, budget: &Budget, now_ms: i64, spent: Micros, tokens: u64, leased: Micros, excess: Micros) -> BudgetState {
        let span = budget.span(now_ms);
        let exempt = config.exempt_micros(&budget.scope, now_ms);
        let a = assess(budget, spent, tokens, exempt);
        BudgetState {
            budget: budget.to_spec(),
            spent_micros: spent,
            tokens_used: tokens,
            exemption_micros: exempt,
            effective_limit_micros: a.effective_limit_micros,
            hard_limit_micros: a.hard_limit_micros,
            leased_micros: leased,
            status: a.status,
            window_start: span.from,
            resets_at: span.resets_at,
            reserve_excess_micros: excess,
        }
    }
}

/// Picks a stream entry's field value.
fn field<'a>(fields: &'a [Vec<u8>], name: &str) -> Option<&'a [u8]> {
    fields.chunks_exact(2).find(|p| p[0] == name.as_bytes()).map(|p| p[1].as_slice())
}

fn group_key(g: GroupBy, r: &UsageRecord, day_zone: &crate::window::Zone) -> String {
    let p = &r.principal;
    let opt = |v: &Option<String>| v.clone().unwrap_or_default();
    match g {
        GroupBy::Org => opt(&p.org),
        GroupBy::CostCenter => opt(&p.cost_center),
        GroupBy::Team => opt(&p.team),
        GroupBy::User => opt(&p.user),
        GroupBy::Key => opt(&p.key_id),
        GroupBy::UseCase => opt(&p.use_case),
        GroupBy::Model => r.routed_model.clone(),
        GroupBy::Day => day_zone.local_date(r.finished_at_ms.div_euclid(1000)),
    }
}

impl Store for RedisStore {
    fn scope_index(&self) -> Arc<ScopeIndex> {
        Arc::clone(&self.cached().index)
    }

    async fn list_budgets(&self, now_ms: i64) -> StoreResult<Vec<BudgetState>> {
        let (config, (), values) = self
            .with_config("list budgets", &self.scripts.states, |config| {
                let mut a = vec![now_ms.to_string(), config.budgets.len().to_string()];
                for b in config.budgets.values() {
                    a.push(b.id.clone());
                    a.push(b.span(now_ms).from.to_string());
                }
                Ok((a, ()))
            })
            .await?;
        let mut values = values.iter();
        let mut out = Vec::with_capacity(config.budgets.len());
        for budget in config.budgets.values() {
            let spent = number(values.next())?;
            let tokens = number(values.next())?.max(0) as u64;
            let leased = number(values.next())?;
            let excess = number(values.next())?;
            out.push(Self::state(&config, budget, now_ms, spent, tokens, leased, excess));
        }
        Ok(out)
    }

    async fn put_budget(&self, budget: Budget, actor: &str, now_ms: i64) -> StoreResult<PutOutcome> {
        let spec = json(&budget.to_spec())?;
        let budgets_key = format!("{}budgets", self.prefix);
        let mut stored: String = self
            .retry("put budget", |mut conn| {
                let (key, id) = (budgets_key.clone(), budget.id.clone());
                async move { redis::cmd("HGET").arg(key).arg(id).query_async::<Option<String>>(&mut conn).await }
            })
            .await?
            .unwrap_or_default();
        // The ledger summed so far for a start from the ledger, and the last entry id it covers:
        // when the script answers `moved`, only what was added since is read.
        let mut start = LedgerStart::default();
        let mut read_to = String::new();
        for _ in 0..STALE_RETRIES {
            let before = if stored.is_empty() { None } else { serde_json::from_str::<BudgetSpec>(&stored).ok().and_then(|s| Budget::from_spec(s).ok()) };
            let seed = starts_from_ledger(before.as_ref(), &budget);
            if seed {
                read_to = self.read_ledger_start(&budget, now_ms, &read_to, "", &mut start).await?;
            }
            let mut args = vec![
                budget.id.clone(),
                spec.clone(),
                actor.to_owned(),
                now_ms.to_string(),
                stored.clone(),
                if seed { "1" } else { "0" }.to_owned(),
                read_to.clone(),
                if seed { start.note() } else { String::new() },
                if seed { start.buckets.len() } else { 0 }.to_string(),
            ];
            if seed {
                for (bucket, s) in &start.buckets {
                    args.push(bucket.to_string());
                    args.push(lua_int(s.micros));
                    args.push(lua_int(i64::try_from(s.tokens).unwrap_or(i64::MAX)));
                }
            }
            let (status, values) = answer(self.eval("put budget", &self.scripts.put_budget, &args).await?)?;
            match status.as_str() {
                "unchanged" => return Ok(PutOutcome::Unchanged),
                "created" => {
                    // Records ingested after the ledger read and before the budget existed: no
                    // ingestion charged them, so they are added now (later ones were charged).
                    let last_id = values.first().map(text).unwrap_or_default();
                    if seed && last_id != read_to {
                        self.add_ledger_between(&budget, now_ms, &read_to, &last_id).await?;
                    }
                    return Ok(PutOutcome::Created);
                }
                "updated" => {
                    let before: BudgetSpec = serde_json::from_str(&values.first().map(text).unwrap_or_default())
                        .map_err(|e| StoreError::Internal(format!("redis: stored budget {}: {e}", budget.id)))?;
                    return Ok(PutOutcome::Updated { before });
                }
                "moved" => stored = values.first().map(text).unwrap_or_default(),
                other => return Err(StoreError::Internal(format!("redis: put budget answered `{other}`"))),
            }
        }
        Err(StoreError::Unavailable(format!("put budget {}: the budget kept changing while this ran; retry", budget.id)))
    }

    async fn delete_budget(&self, id: &str, actor: &str, now_ms: i64) -> StoreResult<Option<BudgetSpec>> {
        let args = [id.to_owned(), actor.to_owned(), now_ms.to_string()];
        let (status, values) = answer(self.eval("delete budget", &self.scripts.delete_budget, &args).await?)?;
        match status.as_str() {
            "none" => Ok(None),
            _ => serde_json::from_str(&values.first().map(text).unwrap_or_default())
                .map(Some)
                .map_err(|e| StoreError::Internal(format!("redis: stored budget {id}: {e}"))),
        }
    }

    async fn add_exemption(&self, mut exemption: Exemption, actor: &str, now_ms: i64) -> StoreResult<Exemption> {
        let seq_key = format!("{}exemptions:seq", self.prefix);
        // The id is taken first and separately: a retried store below then finds it taken
        // (`exists`) instead of adding the exemption twice. A failed call leaves a gap in the ids.
        let id: u64 = self
            .retry("add exemption", |mut conn| {
                let key = seq_key.clone();
                async move { redis::cmd("INCR").arg(key).query_async(&mut conn).await }
            })
            .await?;
        exemption.id = id;
        let args = [id.to_string(), json(&exemption)?, actor.to_owned(), now_ms.to_string()];
        self.eval("add exemption", &self.scripts.add_exemption, &args).await?;
        Ok(exemption)
    }

    async fn revoke_exemption(&self, id: u64, actor: &str, now_ms: i64) -> StoreResult<Option<Exemption>> {
        let key = format!("{}exemptions", self.prefix);
        for _ in 0..STALE_RETRIES {
            let before: Option<String> = self
                .retry("revoke exemption", |mut conn| {
                    let key = key.clone();
                    async move { redis::cmd("HGET").arg(key).arg(id).query_async(&mut conn).await }
                })
                .await?;
            let Some(before) = before else { return Ok(None) };
            let mut exemption: Exemption =
                serde_json::from_str(&before).map_err(|e| StoreError::Internal(format!("redis: exemption {id}: {e}")))?;
            if exemption.revoked_at_ms.is_some() {
                return Ok(Some(exemption));
            }
            exemption.revoked_at_ms = Some(now_ms);
            let args = [id.to_string(), before, json(&exemption)?, actor.to_owned(), now_ms.to_string()];
            let (status, _) = answer(self.eval("revoke exemption", &self.scripts.revoke_exemption, &args).await?)?;
            if status == "ok" {
                return Ok(Some(exemption));
            }
        }
        Err(StoreError::Unavailable(format!("revoke exemption {id}: it kept changing while this ran; retry")))
    }

    async fn list_exemptions(&self) -> StoreResult<Vec<Exemption>> {
        let mut out = Vec::new();
        for (id, body) in self.hgetall("list exemptions", format!("{}exemptions", self.prefix)).await? {
            out.push(serde_json::from_str::<Exemption>(&body).map_err(|e| StoreError::Internal(format!("redis: exemption {id}: {e}")))?);
        }
        out.sort_by_key(|e| e.id);
        Ok(out)
    }

    async fn grant_leases(&self, request: &LeaseRequest, now_ms: i64) -> StoreResult<LeaseResponse> {
        let expires_at_ms = now_ms.saturating_add(self.options.lease_ttl_ms);
        let (config, chain, values) = self
            .with_config("grant leases", &self.scripts.lease, |config| {
                let chain = config.chain(&request.gateway_id, &request.scopes);
                let mut a = vec![
                    now_ms.to_string(),
                    request.gateway_id.clone(),
                    expires_at_ms.to_string(),
                    lua_int(request.want_micros),
                    chain.len().to_string(),
                ];
                for (b, _, holder) in &chain {
                    let exempt = config.exempt_micros(&b.scope, now_ms);
                    a.push(b.id.clone());
                    a.push(b.span(now_ms).from.to_string());
                    a.push(lua_int(assess(b, 0, 0, exempt).hard_limit_micros));
                    a.push(b.token_limit.map_or_else(|| "-1".to_owned(), |t| lua_int(i64::try_from(t).unwrap_or(i64::MAX))));
                    a.push(if b.mode == BudgetMode::Observe { "1" } else { "0" }.to_owned());
                    a.push(request.known_lease(&b.id).map_or_else(String::new, |at| at.to_string()));
                    a.push(holder.clone());
                }
                Ok((a, chain))
            })
            .await?;
        let mut values = values.iter();
        let mut out = Vec::with_capacity(chain.len());
        for (budget, key, _) in &chain {
            let granted = number(values.next())?;
            let spent = number(values.next())?;
            let tokens = number(values.next())?.max(0) as u64;
            let excess = number(values.next())?;
            let span = budget.span(now_ms);
            let a = assess(budget, spent, tokens, config.exempt_micros(&budget.scope, now_ms));
            out.push(BudgetLease {
                budget_id: budget.id.clone(),
                scope: key.clone(),
                mode: budget.mode,
                granted_micros: granted,
                spent_micros: spent,
                limit_micros: a.effective_limit_micros,
                hard_limit_micros: a.hard_limit_micros,
                soft_threshold_pct: budget.soft_thresholds_pct.first().copied().unwrap_or(100),
                status: a.status,
                resets_at: span.resets_at,
                lease_expires_at_ms: expires_at_ms,
                reserve_output_tokens: Default::default(),
                reserve_excess_micros: crate::reserve::excess_headroom(budget, granted, a.hard_limit_micros, excess),
            });
        }
        Ok(LeaseResponse { budgets: out })
    }

    async fn ingest(&self, batch: UsageBatch, now_ms: i64) -> StoreResult<UsageAck> {
        if batch.records.is_empty() {
            return Ok(UsageAck { accepted: 0, duplicates: 0, guard: Default::default() });
        }
        // The ledger entries do not depend on the configuration: encode them once.
        let mut entries = Vec::with_capacity(batch.records.len());
        for r in &batch.records {
            entries.push(json(&LedgerEntryRef { gateway_id: &batch.gateway_id, ingested_at_ms: now_ms, record: r })?);
        }
        let horizon = now_ms / 1000 - 367 * crate::window::DAY_SECS;
        let (_, (), values) = self
            .with_config("store usage", &self.scripts.ingest, |config| {
                // Records of one principal share a charge set: (budget, bucket, lease holder)
                // triples, sent once; each budget once per record (Charges::charge's rule).
                let mut sets: HashMap<Vec<(String, i64, String)>, usize> = HashMap::new();
                let mut set_args: Vec<String> = Vec::new();
                let mut record_args: Vec<String> = Vec::with_capacity(batch.records.len() * 5 + 1);
                record_args.push(batch.records.len().to_string());
                for (r, entry) in batch.records.iter().zip(&entries) {
                    let mut charges: Vec<(String, i64, String)> = Vec::new();
                    let mut excess: Vec<(String, Micros)> = Vec::new();
                    for key in r.principal.scope_keys() {
                        for budget in config.index.covering(&key) {
                            if !charges.iter().any(|c| c.0 == budget.id) {
                                charges.push((budget.id.clone(), budget.span(now_ms).bucket, lease_holder(&batch.gateway_id, budget, &key)));
                                let x = crate::reserve::record_excess(&r.p99_reservations, &budget.id, r.cost_micros);
                                if x > 0 {
                                    excess.push((budget.id.clone(), x));
                                }
                            }
                        }
                    }
                    let next = sets.len() + 1;
                    let set = *sets.entry(charges).or_insert_with_key(|charges| {
                        set_args.push(charges.len().to_string());
                        for (id, bucket, holder) in charges {
                            set_args.push(id.clone());
                            set_args.push(bucket.to_string());
                            set_args.push(holder.clone());
                        }
                        next
                    });
                    record_args.push(r.id.clone());
                    record_args.push(lua_int(r.cost_micros));
                    record_args.push(lua_int(i64::try_from(r.tokens.total()).unwrap_or(i64::MAX)));
                    record_args.push(entry.clone());
                    record_args.push(set.to_string());
                    record_args.push(excess.len().to_string());
                    for (id, x) in excess {
                        record_args.push(id);
                        record_args.push(lua_int(x));
                    }
                }
                let mut a = vec![
                    now_ms.to_string(),
                    batch.gateway_id.clone(),
                    self.options.idempotency_ttl_ms.max(1).to_string(),
                    horizon.to_string(),
                    self.options.ledger_max_len.map(|n| n.to_string()).unwrap_or_default(),
                    self.options.ledger_retention_ms.unwrap_or(0).max(0).to_string(),
                    sets.len().to_string(),
                ];
                a.extend(set_args);
                a.extend(record_args);
                Ok((a, ()))
            })
            .await?;
        let accepted = number(values.first())?.max(0) as u64;
        let duplicates = number(values.get(1))?.max(0) as u64;
        Ok(UsageAck { accepted, duplicates, guard: Default::default() })
    }

    async fn report(&self, query: ReportQuery) -> StoreResult<Vec<ReportRow>> {
        let mut rows: BTreeMap<Vec<String>, ReportRow> = BTreeMap::new();
        if query.group_by.is_empty() {
            rows.insert(Vec::new(), ReportRow::default());
        }
        let mut bad = 0u64;
        self.scan_stream("spend report", &format!("{}ledger", self.prefix), false, |fields| {
            let Some(entry) = field(fields, "r").and_then(|r| serde_json::from_slice::<LedgerEntry>(r).ok()) else {
                bad += 1;
                return true;
            };
            let r = entry.record;
            if r.finished_at_ms < query.from_ms || r.finished_at_ms >= query.to_ms {
                return true;
            }
            let keys: Vec<String> = query.group_by.iter().map(|g| group_key(*g, &r, &query.day_zone)).collect();
            let row = rows.entry(keys.clone()).or_insert_with(|| ReportRow { keys, ..Default::default() });
            let t = &r.tokens;
            row.requests += 1;
            row.cost_micros = row.cost_micros.saturating_add(r.cost_micros);
            row.input_tokens = row.input_tokens.saturating_add(t.input);
            row.output_tokens = row.output_tokens.saturating_add(t.output);
            row.cache_read_tokens = row.cache_read_tokens.saturating_add(t.cache_read);
            row.cache_write_tokens = row.cache_write_tokens.saturating_add(t.cache_write);
            row.estimated_requests += u64::from(r.estimated);
            true
        })
        .await?;
        if bad > 0 {
            crate::log::warn("ledger entries that are not usage records were skipped", serde_json::json!({"entries": bad}));
        }
        Ok(rows.into_values().collect())
    }

    async fn requests(&self, query: RequestsQuery) -> StoreResult<Vec<UsageRecord>> {
        requests::list(self, query).await
    }

    async fn audit(&self, query: AuditQuery) -> StoreResult<Vec<AuditEntry>> {
        let mut out = Vec::new();
        if query.limit == 0 {
            return Ok(out);
        }
        self.scan_stream("audit log", &format!("{}audit", self.prefix), true, |fields| {
            let s = |name: &str| field(fields, name).map(|v| String::from_utf8_lossy(v).into_owned()).unwrap_or_default();
            let value = |name: &str| field(fields, name).filter(|v| !v.is_empty()).and_then(|v| serde_json::from_slice(v).ok());
            let entry = AuditEntry {
                seq: s("seq").parse().unwrap_or(0),
                at_ms: s("at").parse().unwrap_or(0),
                actor: s("actor"),
                action: s("action"),
                subject: s("subject"),
                before: value("before"),
                after: value("after"),
                note: field(fields, "note").map(|v| String::from_utf8_lossy(v).into_owned()),
            };
            let wanted = query.subject.as_ref().is_none_or(|want| *want == entry.subject) && query.since_ms.is_none_or(|since| entry.at_ms >= since);
            if wanted {
                out.push(entry);
            }
            out.len() < query.limit
        })
        .await?;
        Ok(out)
    }

    async fn task_summary(&self, task: &str) -> StoreResult<crate::task::TaskSummary> {
        self.read_task_summary(task).await
    }

    async fn add_checkpoint(&self, checkpoint: crate::task::Checkpoint, actor: &str) -> StoreResult<crate::task::Checkpoint> {
        self.write_checkpoint(checkpoint, actor).await
    }

    async fn guard_exchange(&self, gateway_id: &str, events: Vec<GuardEvent>, now_ms: i64) -> StoreResult<GuardAnswer> {
        self.exchange_guard_events(gateway_id, events, now_ms).await
    }

    async fn health(&self) -> StoreResult<()> {
        // A write, not a PING: a replica (READONLY after a failover), a full Redis (OOM with
        // noeviction) or a node that lost the slot cannot take writes, and neither can we.
        let key = format!("{}health", self.prefix);
        let mut result = Ok(());
        for _ in 0..2 {
            let probe = async {
                let mut conn = self.connection().await?;
                redis::cmd("SET").arg(&key).arg("ok").arg("PX").arg(60_000).query_async::<()>(&mut conn).await
            };
            result = match tokio::time::timeout(self.options.op_timeout, probe).await {
                Ok(r) => r,
                Err(_) => Err(RedisError::from(std::io::Error::new(std::io::ErrorKind::TimedOut, "no answer in time"))),
            };
            match &result {
                Err(e) if e.kind() == ErrorKind::Moved && self.follow_redirect(e) => self.forget_connection().await,
                _ => break,
            }
        }
        result.map_err(|e| {
            if breaks_connection(&e) {
                // Do not wait on the connection lock here; the next call reconnects.
                if let Ok(mut slot) = self.conn.try_lock() {
                    *slot = None;
                }
            }
            StoreError::Unavailable(format!(
                "redis at {} cannot take writes ({e}); check that Redis is up, reachable, a primary and not out of memory",
                self.address()
            ))
        })
    }

    async fn shutdown(&self) -> StoreResult<()> {
        // Nothing is buffered: every acknowledged write was answered by Redis first.
        self.forget_connection().await;
        Ok(())
    }
}

