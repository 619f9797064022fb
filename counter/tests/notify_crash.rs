//! kill -9 with an event recorded but not yet delivered (the receiver is down), restart on the same
//! data directory: the event is delivered once the receiver is back, exactly once, and is not
//! recorded a second time. The real binary, its real clock (a `window: none` budget, so the date
//! does not matter), a receiver on 127.0.0.1.

mod common;

use common::receiver::Receiver;
use common::record;
use serde_json::{json, Value};
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use tollgate_counter::client::Client;
use tollgate_counter::clock::{Clock, Stopwatch, SystemClock};
use tollgate_counter::notify::webhook;

const GW: &str = "crash-gw-token";
const ADMIN: &str = "crash-admin-token";
const SECRET: &str = "crash-webhook-secret-0123456789";

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn spawn(dir: &std::path::Path, port: u16) -> Child {
    Command::new(env!("CARGO_BIN_EXE_tollgate-counter"))
        .args(["serve", "--listen", &format!("127.0.0.1:{port}"), "--data"])
        .arg(dir.join("data"))
        .arg("--budgets")
        .arg(dir.join("budgets.json"))
        .arg("--notify")
        .arg(dir.join("notify.json"))
        .env("TOLLGATE_GATEWAY_TOKENS", format!("gw={GW}"))
        .env("TOLLGATE_ADMIN_TOKENS", format!("ops={ADMIN}"))
        .env("CRASH_HOOK_SECRET", SECRET)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("the tollgate-counter binary starts")
}

async fn until<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let waited = Stopwatch::start();
    while waited.elapsed() < Duration::from_secs(20) {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for {what}");
}

async fn get(url: &str, path: &str) -> Option<Value> {
    let mut c = Client::connect(url).await.ok()?;
    let a = c.get(path, Some(ADMIN)).await.ok()?;
    (a.status == 200).then(|| a.json().ok()).flatten()
}

async fn healthy(url: &str) -> bool {
    match Client::connect(url).await {
        Ok(mut c) => c.get("/healthz", None).await.map(|a| a.status == 200).unwrap_or(false),
        Err(_) => false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recorded_event_is_delivered_after_kill_9_exactly_once() {
    let receiver = Receiver::start().await;
    receiver.answer(503);
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("budgets.json"), r#"{"budgets":[{"id":"platform","scope":"team:platform","limit":"1.00","window":"none"}]}"#).unwrap();
    let notify = json!({
        "webhooks": [{"name": "ops", "url": format!("{}/hook", receiver.url), "secret_env": "CRASH_HOOK_SECRET"}],
        "evaluation": {"tick_ms": 50},
        "delivery": {"retry_base_ms": 100, "retry_max_ms": 200, "claim_ms": 500, "timeout_ms": 1000},
    });
    std::fs::write(dir.path().join("notify.json"), notify.to_string()).unwrap();
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");

    let mut child = spawn(dir.path(), port);
    until("the counter to be healthy", || healthy(&url)).await;
    let mut c = Client::connect(&url).await.unwrap();
    let batch = json!({"gateway_id": "gw1", "records": [record("r1", "platform", 850_000)]});
    assert_eq!(c.post_json("/v1/usage", Some(GW), &batch).await.unwrap().status, 200);
    until("failed attempts at the down receiver", || async { receiver.all().len() >= 2 }).await;
    let before = get(&url, "/admin/events").await.unwrap();
    assert_eq!(before["events"].as_array().unwrap().len(), 1, "{before}");
    assert!(before["events"][0]["deliveries"][0]["delivered_at_ms"].is_null());

    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    receiver.answer(200);
    let attempts_before_restart = receiver.all().len();

    let mut child = spawn(dir.path(), port);
    until("the counter to be healthy again", || healthy(&url)).await;
    until("the delivery after the restart", || async { !receiver.delivered().is_empty() }).await;
    // Let the restarted counter evaluate and poll its outbox many more times.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let delivered = receiver.delivered();
    assert_eq!(delivered.len(), 1, "exactly one delivery of the event");
    assert!(receiver.all().len() > attempts_before_restart);
    let got = &delivered[0];
    assert_eq!(got.event, "threshold:platform:80:0");
    let now_secs = SystemClock.now_ms() / 1000;
    webhook::verify(SECRET.as_bytes(), &got.timestamp, &got.signature, &got.body, now_secs).unwrap();
    assert!(got.json()["text"].as_str().unwrap().contains("passed 80 %"));
    let after = get(&url, "/admin/events").await.unwrap();
    assert_eq!(after["events"].as_array().unwrap().len(), 1, "not recorded a second time: {after}");
    assert!(after["events"][0]["deliveries"][0]["delivered_at_ms"].is_i64(), "{after}");

    child.kill().unwrap();
    child.wait().unwrap();
}
