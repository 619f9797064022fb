//! Test harness: a real counter on 127.0.0.1:0 with a SQLite store in a temp dir and a manual
//! clock, plus helpers that speak JSON over real HTTP.
//!
//! The same suites run on Redis: a test binary whose name starts with `redis` (e.g.
//! tests/redis_api.rs, which includes api.rs) gets a [`RedisStore`] backed by a real redis-server
//! started in the harness's temp dir ([`redis_server`]).
#![allow(dead_code)]

pub mod receiver;
pub mod redis_server;

use serde_json::{json, Value};
use std::sync::Arc;
use tokio::sync::oneshot;
use tollgate_counter::client::Client;
use tollgate_counter::clock::ManualClock;
use tollgate_counter::notify::NotifyConfig;
use tollgate_counter::server::{run_with, Auth, Role};
use tollgate_counter::store::redis::{RedisOptions, RedisStore};
use tollgate_counter::store::sqlite::{SqliteOptions, SqliteStore};
use tollgate_counter::store::Store;
use tollgate_counter::window::parse_time_ms;

pub const GATEWAY_TOKEN: &str = "gw-secret-token";
pub const ALICE_TOKEN: &str = "alice-admin-token";
pub const BOB_TOKEN: &str = "bob-admin-token";
pub const LEASE_TTL_MS: i64 = 30_000;
/// Admin-side tokens with narrower roles (tollgate_counter::auth): vic views, rita requests,
/// avery approves. alice and bob are admins.
pub const VIC_TOKEN: &str = "vic-viewer-token";
pub const RITA_TOKEN: &str = "rita-requester-token";
pub const AVERY_TOKEN: &str = "avery-approver-token";
/// Personal tokens: carol's own (`user:carol`) and key k-7's own (`key:k-7`).
pub const CAROL_OWN_TOKEN: &str = "carol-personal-token";
pub const K7_OWN_TOKEN: &str = "k7-personal-token";
/// The GitHub webhook secret of the harness's governance settings ([`gov_config`]).
pub const GITHUB_SECRET: &str = "It's a Secret to Everybody";

/// The harness's governance settings: one extra outcome kind and a GitHub mapping.
pub fn gov_config() -> tollgate_counter::outcome::GovConfig {
    let file = json!({"outcome_kinds": ["incident_closed"],
        "github": {"secret": GITHUB_SECRET, "repos": {"octo-org/hello-world": {"team": "platform", "use_case": "code-review"}},
                   "users": {"octocat": "alice"}, "task_id_pattern": "%-#"}});
    tollgate_counter::outcome::GovConfig::parse(&file.to_string(), None).unwrap()
}

pub fn at(text: &str) -> i64 {
    parse_time_ms(text).unwrap()
}

pub struct Harness {
    pub url: String,
    pub clock: Arc<ManualClock>,
    pub dir: tempfile::TempDir,
    stop: Option<oneshot::Sender<()>>,
    server: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
    /// The redis-server behind a Redis-backed harness.
    pub redis: Option<redis_server::RedisServer>,
}

/// True in test binaries named `redis*`: the suite runs against the Redis store.
pub fn on_redis() -> bool {
    env!("CARGO_CRATE_NAME").starts_with("redis")
}

/// Redis store options for tests: the harness's lease TTL, quick retries.
pub fn redis_options(url: &str) -> RedisOptions {
    RedisOptions {
        url: url.into(),
        lease_ttl_ms: LEASE_TTL_MS,
        retries: 3,
        retry_backoff: std::time::Duration::from_millis(20),
        ..RedisOptions::default()
    }
}

impl Harness {
    /// A fresh counter whose clock reads 2026-11-25T10:00:00Z (a Wednesday).
    pub async fn start() -> Harness {
        Harness::start_in(tempfile::tempdir().unwrap(), at("2026-11-25T10:00:00Z")).await
    }

    pub async fn start_in(dir: tempfile::TempDir, now_ms: i64) -> Harness {
        Harness::start_in_with(dir, now_ms, NotifyConfig::default()).await
    }

    /// [`Harness::start_in`] with a notify config (webhooks, rules).
    pub async fn start_in_with(dir: tempfile::TempDir, now_ms: i64, notify: NotifyConfig) -> Harness {
        let clock = Arc::new(ManualClock::new(now_ms));
        if on_redis() {
            let server = redis_server::RedisServer::start(dir.path());
            let store = Arc::new(RedisStore::connect(redis_options(&server.url())).await.unwrap());
            let mut h = Harness::with_store_notify(store, clock, dir, notify).await;
            h.redis = Some(server);
            return h;
        }
        let options = SqliteOptions { lease_ttl_ms: LEASE_TTL_MS, ..SqliteOptions::default() };
        let store = Arc::new(SqliteStore::open(dir.path(), options, now_ms).unwrap());
        Harness::with_store_notify(store, clock, dir, notify).await
    }

    /// A counter serving `store` (e.g. a second instance on the same Redis).
    pub async fn with_store<S: Store>(store: Arc<S>, clock: Arc<ManualClock>, dir: tempfile::TempDir) -> Harness {
        Harness::with_store_notify(store, clock, dir, NotifyConfig::default()).await
    }

    /// [`Harness::with_store`] with a notify config.
    pub async fn with_store_notify<S: Store>(store: Arc<S>, clock: Arc<ManualClock>, dir: tempfile::TempDir, notify: NotifyConfig) -> Harness {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let role = |n: &str, t: &str, r: Role| (n.to_owned(), t.to_owned(), r);
        let auth = Auth::with_roles(
            vec![("gw".into(), GATEWAY_TOKEN.into())],
            vec![
                role("alice", ALICE_TOKEN, Role::Admin),
                role("bob", BOB_TOKEN, Role::Admin),
                role("vic", VIC_TOKEN, Role::Viewer),
                role("rita", RITA_TOKEN, Role::Requester),
                role("avery", AVERY_TOKEN, Role::Approver),
            ],
        )
        .unwrap()
        .with_personal(vec![("user:carol".into(), CAROL_OWN_TOKEN.into()), ("key:k-7".into(), K7_OWN_TOKEN.into())])
        .unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let server = tokio::spawn(run_with(listener, store, clock.clone(), auth, gov_config(), notify, async {
            let _ = stopped.await;
        }));
        Harness { url, clock, dir, stop: Some(stop), server: Some(server), redis: None }
    }

    /// Graceful stop (flushes the store, stops its redis-server); returns the data dir for a restart.
    pub async fn stop(mut self) -> tempfile::TempDir {
        let _ = self.stop.take().unwrap().send(());
        self.server.take().unwrap().await.unwrap().unwrap();
        if let Some(redis) = self.redis.take() {
            redis.stop();
        }
        let dir = tempfile::tempdir().unwrap();
        std::mem::replace(&mut self.dir, dir)
    }

    pub async fn client(&self) -> Client {
        Client::connect(&self.url).await.unwrap()
    }

    pub async fn call(&self, method: &str, path: &str, token: Option<&str>, body: Option<Value>) -> (u16, Value) {
        let mut c = self.client().await;
        let method = hyper::Method::from_bytes(method.as_bytes()).unwrap();
        let a = c.send(method, path, token, body.map(|b| serde_json::to_vec(&b).unwrap())).await.unwrap();
        let v = serde_json::from_slice(&a.body).unwrap_or(Value::String(a.text()));
        (a.status, v)
    }

    pub async fn raw(&self, method: &str, path: &str, token: Option<&str>, body: &[u8]) -> (u16, String) {
        let mut c = self.client().await;
        let method = hyper::Method::from_bytes(method.as_bytes()).unwrap();
        let a = c.send(method, path, token, Some(body.to_vec())).await.unwrap();
        (a.status, a.text())
    }

    pub async fn gateway(&self, path: &str, body: Value) -> (u16, Value) {
        self.call("POST", path, Some(GATEWAY_TOKEN), Some(body)).await
    }

    pub async fn admin(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        self.call(method, path, Some(ALICE_TOKEN), body).await
    }

    /// PUTs a budget spec (as alice) and asserts it was stored.
    pub async fn budget(&self, spec: Value) {
        let id = spec["id"].as_str().unwrap().to_owned();
        let (status, body) = self.admin("PUT", &format!("/admin/budgets/{id}"), Some(spec)).await;
        assert_eq!(status, 200, "{body}");
    }

    pub async fn lease(&self, gateway: &str, scopes: &[&str], want: i64) -> Value {
        let (status, body) = self.gateway("/v1/leases", json!({"gateway_id": gateway, "scopes": scopes, "want_micros": want})).await;
        assert_eq!(status, 200, "{body}");
        body
    }

    pub async fn usage(&self, gateway: &str, records: Vec<Value>) -> (u64, u64) {
        let (status, body) = self.gateway("/v1/usage", json!({"gateway_id": gateway, "records": records})).await;
        assert_eq!(status, 200, "{body}");
        (body["accepted"].as_u64().unwrap(), body["duplicates"].as_u64().unwrap())
    }

    /// Holds the store's writes until the guard is dropped: on SQLite another connection's write
    /// transaction (the counter's writer waits for it, `busy_timeout`), on Redis the server stopped
    /// (SIGSTOP; every command waits). Reads of the in-memory budget index go on. Keep a hold well
    /// under a second: both stores give up waiting after a few.
    pub fn hold_writes(&self) -> WriteHold<'_> {
        if let Some(redis) = &self.redis {
            redis.pause();
            return WriteHold { sqlite: None, redis: Some(redis) };
        }
        let conn = rusqlite::Connection::open(self.dir.path().join(tollgate_counter::store::sqlite::DB_FILE)).unwrap();
        conn.execute_batch("BEGIN IMMEDIATE").unwrap();
        WriteHold { sqlite: Some(conn), redis: None }
    }

    /// A counter's value as /metrics renders it (`name` with its labels), 0 when absent.
    pub async fn counter_total(&self, name: &str) -> u64 {
        let text = self.client().await.get("/metrics", None).await.unwrap().text();
        let prefix = format!("{name} ");
        text.lines().find_map(|l| l.strip_prefix(&prefix)).map_or(0, |v| v.parse().unwrap())
    }

    pub async fn spent(&self, budget: &str) -> i64 {
        let (status, body) = self.admin("GET", &format!("/admin/budgets/{budget}"), None).await;
        assert_eq!(status, 200, "{body}");
        body["spent_micros"].as_i64().unwrap()
    }
}

/// Writes held back by [`Harness::hold_writes`]; dropping it lets them through.
pub struct WriteHold<'a> {
    sqlite: Option<rusqlite::Connection>,
    redis: Option<&'a redis_server::RedisServer>,
}

impl Drop for WriteHold<'_> {
    fn drop(&mut self) {
        if let Some(conn) = self.sqlite.take() {
            conn.execute_batch("COMMIT").unwrap();
        }
        if let Some(redis) = self.redis {
            redis.resume();
        }
    }
}

/// A usage record for `team` (org acme, user bob, use case chat) costing `cost` micro-dollars.
pub fn record(id: &str, team: &str, cost: i64) -> Value {
    json!({
        "id": id,
        "principal": {"org": "acme", "team": team, "user": "bob", "use_case": "chat"},
        "dialect": "openai", "requested_model": "gpt-4o", "routed_model": "gpt-4o-mini",
        "tokens": {"input": 100, "output": 20},
        "cost_micros": cost, "status": 200,
        "started_at_ms": 1_764_064_800_000i64, "finished_at_ms": 1_764_064_801_000i64
    })
}
