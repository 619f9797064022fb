//! kill -9 while batches are in flight, restart on the same data directory: every acknowledged
//! record is there exactly once, every batch is all-or-nothing, and spend matches the ledger.

mod common;

use common::record;
use serde_json::{json, Value};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tollgate_counter::clock::Stopwatch;
use tollgate_counter::client::Client;

const GW: &str = "crash-gw-token";
const ADMIN: &str = "crash-admin-token";
const BATCH: usize = 200;

/// (worker, batch number, cost, acknowledged?)
type Sent = (usize, usize, i64, bool);

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn spawn(data: &std::path::Path, budgets: &std::path::Path, port: u16) -> Child {
    Command::new(env!("CARGO_BIN_EXE_tollgate-counter"))
        .args(["serve", "--listen", &format!("127.0.0.1:{port}"), "--data"])
        .arg(data)
        .arg("--budgets")
        .arg(budgets)
        .env("TOLLGATE_GATEWAY_TOKENS", format!("gw={GW}"))
        .env("TOLLGATE_ADMIN_TOKENS", format!("ops={ADMIN}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("the tollgate-counter binary starts")
}

async fn wait_healthy(url: &str) {
    let (waited, limit) = (Stopwatch::start(), Duration::from_secs(20));
    while waited.elapsed() < limit {
        if let Ok(mut c) = Client::connect(url).await {
            if c.get("/healthz", None).await.map(|a| a.status == 200).unwrap_or(false) {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the counter at {url} did not become healthy");
}

fn batch(worker: usize, n: usize) -> (Value, i64) {
    let records: Vec<Value> = (0..BATCH).map(|i| record(&format!("w{worker}-b{n}-r{i}"), "platform", 1 + (i as i64 % 7))).collect();
    let cost = (0..BATCH).map(|i| 1 + (i as i64 % 7)).sum();
    (json!({"gateway_id": format!("gw{worker}"), "records": records}), cost)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn acknowledged_records_survive_kill_9_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let budgets = dir.path().join("budgets.json");
    std::fs::write(&budgets, r#"{"budgets":[{"id":"platform","scope":"team:platform","limit":"1000000","window":"month"},
            {"id":"tiny","scope":"org:tiny","limit":"1","window":"none"}]}"#).unwrap();
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let mut child = spawn(&data, &budgets, port);
    wait_healthy(&url).await;
    let lease = |gw: &str| json!({"gateway_id": gw, "scopes": ["org:tiny"], "want_micros": 1_000_000});
    let mut c = Client::connect(&url).await.unwrap();
    let granted = c.post_json("/v1/leases", Some(GW), &lease("holder")).await.unwrap().json().unwrap();
    assert_eq!(granted["budgets"][0]["granted_micros"], 1_000_000);

    let sent: Arc<Mutex<Vec<Sent>>> = Arc::default();
    let mut workers = Vec::new();
    for w in 0..4 {
        let (url, sent) = (url.clone(), Arc::clone(&sent));
        workers.push(tokio::spawn(async move {
            let Ok(mut c) = Client::connect(&url).await else { return };
            for n in 0..10_000 {
                let (body, cost) = batch(w, n);
                let acked = match c.post_json("/v1/usage", Some(GW), &body).await {
                    Ok(a) if a.status == 200 => {
                        assert_eq!(a.json().unwrap()["accepted"], BATCH as u64);
                        true
                    }
                    _ => false,
                };
                sent.lock().unwrap().push((w, n, cost, acked));
                if !acked {
                    return; // the server is gone
                }
            }
        }));
    }
    // Kill once a fair number of batches were acknowledged (bounded wait).
    let (waited, limit) = (Stopwatch::start(), Duration::from_secs(20));
    while sent.lock().unwrap().iter().filter(|s| s.3).count() < 40 && waited.elapsed() < limit {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    for w in workers {
        w.await.unwrap();
    }
    let sent = sent.lock().unwrap().clone();
    let acked: Vec<_> = sent.iter().filter(|s| s.3).cloned().collect();
    let unacked: Vec<_> = sent.iter().filter(|s| !s.3).cloned().collect();
    assert!(acked.len() >= 40, "only {} batches were acknowledged before the kill", acked.len());

    let mut child = spawn(&data, &budgets, port);
    wait_healthy(&url).await;
    let mut c = Client::connect(&url).await.unwrap();
    let other = c.post_json("/v1/leases", Some(GW), &lease("other")).await.unwrap().json().unwrap();
    assert_eq!(other["budgets"][0]["granted_micros"], 0, "the slice granted before the crash still holds the headroom");
    let totals = c.get("/admin/reports/spend", Some(ADMIN)).await.unwrap().json().unwrap();
    let ledger_requests = totals["total"]["requests"].as_u64().unwrap();
    let ledger_cost = totals["total"]["cost_micros"].as_i64().unwrap();
    let spent = c.get("/admin/budgets/platform", Some(ADMIN)).await.unwrap().json().unwrap()["spent_micros"].as_i64().unwrap();

    // Every acknowledged batch is there in full: re-sending it finds only duplicates.
    for (w, n, _, _) in &acked {
        let a = c.post_json("/v1/usage", Some(GW), &batch(*w, *n).0).await.unwrap().json().unwrap();
        assert_eq!((a["accepted"].as_u64(), a["duplicates"].as_u64()), (Some(0), Some(BATCH as u64)), "acked batch w{w} b{n}");
    }
    // A batch in flight at the kill is either wholly there or wholly absent.
    let (mut present, mut present_cost) = (acked.len() as u64, acked.iter().map(|s| s.2).sum::<i64>());
    for (w, n, cost, _) in &unacked {
        let a = c.post_json("/v1/usage", Some(GW), &batch(*w, *n).0).await.unwrap().json().unwrap();
        match a["accepted"].as_u64() {
            Some(0) => {
                present += 1;
                present_cost += cost;
            }
            Some(x) if x == BATCH as u64 => {}
            other => panic!("batch w{w} b{n} was half stored: accepted {other:?}"),
        }
    }
    eprintln!("acknowledged {} batches, {} in flight at the kill, {present} stored", acked.len(), unacked.len());
    assert_eq!(ledger_requests, present * BATCH as u64, "each stored record is in the ledger exactly once");
    assert_eq!(ledger_cost, present_cost);
    assert_eq!(spent, ledger_cost, "the budget's spend counter matches the ledger after the crash");

    child.kill().unwrap();
    child.wait().unwrap();
}
