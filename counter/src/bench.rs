//! `tollgate-counter bench`: measures usage records/s (batched) and lease calls/s over real HTTP
//! on loopback against an in-process server with a fresh SQLite store in a temporary directory,
//! or (`--redis-url`) a Redis store in a fresh namespace that is deleted afterwards.
//!
//! Client and server share the machine (on the 2-core CI box they share both cores), so the figures
//! are a floor for a dedicated counter host. Each phase runs for a fixed time and prints one line.

use crate::budget::{Budget, BudgetSpec};
use crate::client::Client;
use crate::clock::{Clock, Stopwatch, SystemClock};
use crate::server::{run, Auth};
use crate::store::redis::{RedisOptions, RedisStore};
use crate::store::sqlite::{SqliteOptions, SqliteStore, Synchronous};
use crate::store::Store;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::oneshot;

#[derive(Debug, Clone)]
pub struct BenchOptions {
    pub seconds: f64,
    pub batch: usize,
    pub concurrency: usize,
    pub synchronous: Synchronous,
    /// Bench the Redis store at this URL instead of SQLite.
    pub redis_url: Option<String>,
}

const GATEWAY_TOKEN: &str = "bench-gateway-token";

fn batch_body(gateway: &str, prefix: &str, start: u64, n: usize) -> Vec<u8> {
    let mut s = String::with_capacity(n * 330 + 64);
    let _ = write!(s, "{{\"gateway_id\":\"{gateway}\",\"records\":[");
    for i in 0..n as u64 {
        let k = start + i;
        if i > 0 {
            s.push(',');
        }
        let _ = write!(
            s,
            "{{\"id\":\"{:016x}-{prefix}-{k}\",\"principal\":{{\"org\":\"acme\",\"team\":\"t{}\",\"user\":\"u{}\",\"use_case\":\"chat\"}},\
             \"dialect\":\"openai\",\"requested_model\":\"gpt-4o\",\"routed_model\":\"gpt-4o-mini\",\
             \"tokens\":{{\"input\":{},\"output\":{}}},\"cost_micros\":{},\"status\":200,\
             \"started_at_ms\":{},\"finished_at_ms\":{}}}",
            scatter(k),
            k % 10,
            k % 100,
            100 + k % 900,
            k % 500,
            10 + k % 90,
            finished_at_ms(k) - 400,
            finished_at_ms(k),
        );
    }
    s.push_str("]}");
    s.into_bytes()
}

/// Record `k`'s finish time. A gateway queues records as they finish, so the finish times a
/// connection sends advance (here 16 records a millisecond). The SQLite ledger is keyed by finish
/// time first: a fixed time would make every insert land at a random place in one key range, which
/// no real traffic does (it would measure what the id-keyed ledger did: 37k records/s).
fn finished_at_ms(k: u64) -> u64 {
    1_763_900_000_400 + k / 16
}

/// A bijection of `k` (splitmix64's finaliser) that puts consecutive records' ids far apart, as
/// the request ids gateways send are (Envoy's generated `x-request-id` is a random UUID): records
/// that finished in the same millisecond are ordered by id in the SQLite ledger, and the Redis
/// store keys its idempotency check by id alone.
fn scatter(k: u64) -> u64 {
    let mut z = k.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Runs both phases and prints `usage_records_per_sec=…` and `lease_calls_per_sec=…` lines.
pub async fn bench(options: BenchOptions) -> Result<(), String> {
    if let Some(url) = &options.redis_url {
        let namespace = format!("tollgate-bench-{}", std::process::id());
        let store = Arc::new(RedisStore::connect(RedisOptions { url: url.clone(), namespace, ..RedisOptions::default() }).await.map_err(|e| e.to_string())?);
        let result = bench_with(Arc::clone(&store), &options, "store=redis").await;
        store.delete_namespace().await.map_err(|e| e.to_string())?;
        return result;
    }
    let dir = std::env::temp_dir().join(format!("tollgate-counter-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let store = Arc::new(
        SqliteStore::open(&dir, SqliteOptions { synchronous: options.synchronous, ..SqliteOptions::default() }, SystemClock.now_ms()).map_err(|e| e.to_string())?,
    );
    let sync = match options.synchronous {
        Synchronous::Full => "synchronous=full",
        Synchronous::Normal => "synchronous=normal",
    };
    let result = bench_with(store, &options, sync).await;
    let _ = std::fs::remove_dir_all(&dir);
    result
}

/// Both phases against a server on `store`; `store_label` goes into the usage line.
async fn bench_with<S: Store>(store: Arc<S>, options: &BenchOptions, store_label: &str) -> Result<(), String> {
    let now = SystemClock.now_ms();
    let mut specs = vec![r#"{"id":"org","scope":"org:acme","limit":"100000000","window":"month"}"#.to_string()];
    for t in 0..10 {
        specs.push(format!(r#"{{"id":"team-{t}","scope":"team:t{t}","limit":"1000000","window":"day"}}"#));
    }
    for spec in specs {
        let spec: BudgetSpec = serde_json::from_str(&spec).map_err(|e| e.to_string())?;
        store.put_budget(Budget::from_spec(spec)?, "bench", now).await.map_err(|e| e.to_string())?;
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.map_err(|e| e.to_string())?;
    let url = format!("http://{}", listener.local_addr().map_err(|e| e.to_string())?);
    let auth = Auth::new(vec![("bench".into(), GATEWAY_TOKEN.into())], vec![("bench-admin".into(), "bench-admin-token".into())])?;
    let (stop, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(run(listener, Arc::clone(&store), Arc::new(SystemClock), auth, async {
        let _ = stopped.await;
    }));

    // Phase 1: usage batches.
    let run_for = Duration::from_secs_f64(options.seconds);
    let records = Arc::new(AtomicU64::new(0));
    let started = Stopwatch::start();
    let mut tasks = Vec::new();
    for worker in 0..options.concurrency {
        let (url, records, batch) = (url.clone(), Arc::clone(&records), options.batch);
        tasks.push(tokio::spawn(async move {
            let mut client = Client::connect(&url).await?;
            let mut next = 0u64;
            while started.elapsed() < run_for {
                let body = batch_body(&format!("gw-{worker}"), &format!("w{worker}"), next, batch);
                next += batch as u64;
                let answer = client.send(hyper::Method::POST, "/v1/usage", Some(GATEWAY_TOKEN), Some(body)).await?;
                if answer.status != 200 {
                    return Err(format!("usage batch answered {}: {}", answer.status, answer.text()));
                }
                records.fetch_add(batch as u64, Ordering::Relaxed);
            }
            Ok::<(), String>(())
        }));
    }
    for t in tasks {
        t.await.map_err(|e| e.to_string())??;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let n = records.load(Ordering::Relaxed);
    println!(
        "usage_records_per_sec={:.0} (records={n}, seconds={elapsed:.2}, batch={}, concurrency={}, {store_label}, http=loopback)",
        n as f64 / elapsed,
        options.batch,
        options.concurrency
    );

    // Phase 2: lease calls.
    let run_for = Duration::from_secs_f64(options.seconds);
    let calls = Arc::new(AtomicU64::new(0));
    let started = Stopwatch::start();
    let mut tasks = Vec::new();
    for worker in 0..options.concurrency.max(1) * 4 {
        let (url, calls) = (url.clone(), Arc::clone(&calls));
        tasks.push(tokio::spawn(async move {
            let mut client = Client::connect(&url).await?;
            let body = format!(
                r#"{{"gateway_id":"gw-{worker}","scopes":["org:acme","team:t{}","user:u{worker}"],"want_micros":5000000}}"#,
                worker % 10
            )
            .into_bytes();
            while started.elapsed() < run_for {
                let answer = client.send(hyper::Method::POST, "/v1/leases", Some(GATEWAY_TOKEN), Some(body.clone())).await?;
                if answer.status != 200 {
                    return Err(format!("lease answered {}: {}", answer.status, answer.text()));
                }
                calls.fetch_add(1, Ordering::Relaxed);
            }
            Ok::<(), String>(())
        }));
    }
    for t in tasks {
        t.await.map_err(|e| e.to_string())??;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let n = calls.load(Ordering::Relaxed);
    println!(
        "lease_calls_per_sec={:.0} (calls={n}, seconds={elapsed:.2}, connections={}, budgets_per_call=2, http=loopback)",
        n as f64 / elapsed,
        options.concurrency.max(1) * 4
    );

    let _ = stop.send(());
    server.await.map_err(|e| e.to_string())?.map_err(|e| e.to_string())?;
    Ok(())
}
