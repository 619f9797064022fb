//! kill -9 while outcomes are being recorded, restart on the same data directory: every
//! acknowledged outcome is there, exactly once, and an approved exemption request still has its
//! exemption (the pattern of tests/crash.rs).

use serde_json::{json, Value};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tollgate_counter::client::Client;
use tollgate_counter::clock::Stopwatch;

const GW: &str = "crash-gw-token";
const ADMIN: &str = "crash-admin-token";
const RITA: &str = "crash-requester-token";

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn spawn(data: &std::path::Path, port: u16) -> Child {
    Command::new(env!("CARGO_BIN_EXE_tollgate-counter"))
        .args(["serve", "--listen", &format!("127.0.0.1:{port}"), "--data"])
        .arg(data)
        .env("TOLLGATE_GATEWAY_TOKENS", format!("gw={GW}"))
        .env("TOLLGATE_ADMIN_TOKENS", format!("ops={ADMIN}"))
        .env("TOLLGATE_REQUESTER_TOKENS", format!("rita={RITA}"))
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

fn outcome(worker: usize, n: usize) -> Value {
    json!({"id": format!("w{worker}-o{n}"), "kind": "merged_pr", "team": "platform", "use_case": "code-review"})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn acknowledged_outcomes_survive_kill_9_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let mut child = spawn(&data, port);
    wait_healthy(&url).await;

    let mut c = Client::connect(&url).await.unwrap();
    let ask = json!({"scope": "team:platform", "amount": "5", "ends_at": "2999-01-01", "reason": "crash test"});
    assert_eq!(c.post_json("/admin/exemption-requests", Some(RITA), &ask).await.unwrap().status, 201);
    let approved = c.post_json("/admin/exemption-requests/1/approve", Some(ADMIN), &json!({})).await.unwrap();
    assert_eq!(approved.status, 200, "{}", approved.text());

    // (worker, n, acknowledged?)
    let sent: Arc<Mutex<Vec<(usize, usize, bool)>>> = Arc::default();
    let mut workers = Vec::new();
    for w in 0..3 {
        let (url, sent) = (url.clone(), Arc::clone(&sent));
        workers.push(tokio::spawn(async move {
            let Ok(mut c) = Client::connect(&url).await else { return };
            for n in 0..20_000 {
                let acked = matches!(c.post_json("/outcomes", Some(RITA), &outcome(w, n)).await, Ok(a) if a.status == 201);
                sent.lock().unwrap().push((w, n, acked));
                if !acked {
                    return; // the server is gone
                }
            }
        }));
    }
    let (waited, limit) = (Stopwatch::start(), Duration::from_secs(20));
    while sent.lock().unwrap().iter().filter(|s| s.2).count() < 60 && waited.elapsed() < limit {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    for w in workers {
        w.await.unwrap();
    }
    let sent = sent.lock().unwrap().clone();
    let acked: Vec<_> = sent.iter().filter(|s| s.2).cloned().collect();
    assert!(acked.len() >= 60, "only {} outcomes were acknowledged before the kill", acked.len());

    let mut child = spawn(&data, port);
    wait_healthy(&url).await;
    let mut c = Client::connect(&url).await.unwrap();
    let listed = c.get("/admin/outcomes", Some(ADMIN)).await.unwrap().json().unwrap();
    let ids: std::collections::HashSet<String> = listed["outcomes"].as_array().unwrap().iter().map(|o| o["id"].as_str().unwrap().to_owned()).collect();
    assert_eq!(ids.len(), listed["outcomes"].as_array().unwrap().len(), "each outcome once");
    for (w, n, _) in &acked {
        assert!(ids.contains(&format!("w{w}-o{n}")), "acknowledged outcome w{w}-o{n} is missing after kill -9");
        let again = c.post_json("/outcomes", Some(RITA), &outcome(*w, *n)).await.unwrap();
        assert_eq!((again.status, again.json().unwrap()["duplicate"].as_bool()), (200, Some(true)));
    }
    assert!(ids.len() <= sent.len(), "nothing appears that was not sent");
    eprintln!("{} outcomes acknowledged before the kill, {} stored", acked.len(), ids.len());

    let requests = c.get("/admin/exemption-requests", Some(ADMIN)).await.unwrap().json().unwrap();
    let exemptions = c.get("/admin/exemptions", Some(ADMIN)).await.unwrap().json().unwrap();
    assert_eq!(requests["requests"][0]["state"], "approved");
    assert_eq!(requests["requests"][0]["exemption_id"], exemptions["exemptions"][0]["id"], "the approval and its exemption survive together");
    assert_eq!(exemptions["exemptions"][0]["active"], true);

    child.kill().unwrap();
    child.wait().unwrap();
}
