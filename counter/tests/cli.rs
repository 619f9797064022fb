//! The operator CLI against a live counter, and the `serve` binary's graceful shutdown.

mod common;

use common::*;
use std::process::{Command, Stdio};
use std::time::Duration;
use tollgate_counter::clock::Stopwatch;

fn cli(h: &Harness, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_tollgate-counter"))
        .args(args)
        .env("TOLLGATE_COUNTER_URL", &h.url)
        .env("TOLLGATE_ADMIN_TOKEN", BOB_TOKEN)
        .output()
        .unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_manages_budgets_and_reads_reports_without_curl() {
    let h = Harness::start().await;
    let h = tokio::task::spawn_blocking(move || {
        let (ok, out, err) = cli(&h, &["budgets", "set", "--id", "platform", "--scope", "team:platform", "--limit", "800.00", "--window", "month", "--soft", "80,95"]);
        assert!(ok, "{err}");
        assert_eq!(out, "budget platform: created\n");
        h
    })
    .await
    .unwrap();
    h.usage("gw1", vec![record("r1", "platform", 2_500_000)]).await;
    tokio::task::spawn_blocking(move || {
        let (ok, out, _) = cli(&h, &["budgets", "list"]);
        assert!(ok);
        assert!(out.lines().nth(1).unwrap().starts_with("platform  team:platform  month   enforce  2.500000   800.000000"), "{out}");

        let (ok, out, _) = cli(&h, &["report", "--group-by", "team,model", "--format", "csv"]);
        assert!(ok);
        assert_eq!(out.lines().nth(1), Some("platform,gpt-4o-mini,1,2.500000,2500000,100,20,0,0,0"), "{out}");

        let (ok, out, err) = cli(&h, &["exemption", "add", "--scope", "team:platform", "--amount", "100", "--ends-at", "2026-12-01", "--reason", "launch", "--approver", "cfo"]);
        assert!(ok, "{err}");
        assert_eq!(out, "exemption 1 added: 100.000000 on team:platform until 2026-12-01T00:00:00Z\n");

        let (ok, out, _) = cli(&h, &["audit", "--format", "csv"]);
        assert!(ok);
        let actions: Vec<&str> = out.lines().skip(1).map(|l| l.split(',').nth(3).unwrap()).collect();
        assert_eq!(actions, ["exemption.add", "budget.create"]);
        assert!(out.contains(",bob,"), "the audit names the admin token: {out}");

        let p99 = ["budgets", "set", "--id", "bots", "--scope", "team:bots", "--limit", "5", "--window", "day", "--reserve", "p99"];
        let (ok, _, err) = cli(&h, &p99);
        assert!(!ok && err.contains("reserve_excess_limit: required"), "the policy's missing field is named: {err}");
        let (ok, _, err) = cli(&h, &[&p99[..], &["--reserve-excess-limit", "0.50", "--reserve-min-samples", "50"]].concat());
        assert!(ok, "{err}");
        let (ok, out, _) = cli(&h, &["budgets", "get", "bots"]);
        assert!(ok && out.contains(r#""reserve": "p99""#) && out.contains(r#""reserve_min_samples": 50"#), "{out}");

        let (ok, _, err) = cli(&h, &["budgets", "delete", "nope"]);
        assert!(!ok);
        assert!(err.contains("404") && err.contains("no budget `nope`"), "{err}");

        let out = Command::new(env!("CARGO_BIN_EXE_tollgate-counter"))
            .args(["budgets", "list", "--url", &h.url, "--token", "wrong"])
            .env_remove("TOLLGATE_ADMIN_TOKEN")
            .output()
            .unwrap();
        assert!(!out.status.success());
        assert!(String::from_utf8_lossy(&out.stderr).contains("401"));
    })
    .await
    .unwrap();
}

#[test]
fn sigterm_drains_and_exits_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let child = Command::new(env!("CARGO_BIN_EXE_tollgate-counter"))
        .args(["serve", "--listen", &format!("127.0.0.1:{port}"), "--data"])
        .arg(dir.path())
        .env("TOLLGATE_GATEWAY_TOKENS", "gw=secret-gw")
        .env("TOLLGATE_ADMIN_TOKENS", "ops=secret-admin")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (waited, limit) = (Stopwatch::start(), Duration::from_secs(20));
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(waited.elapsed() < limit, "the counter did not start listening");
        std::thread::sleep(Duration::from_millis(20));
    }
    let kill = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert!(kill.success());
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success(), "exit status {:?}", output.status);
    let logs = String::from_utf8_lossy(&output.stderr);
    assert!(logs.contains("\"msg\":\"stopped; store flushed\""), "{logs}");
    assert!(!logs.contains("secret-gw") && !logs.contains("secret-admin"), "tokens never reach the logs: {logs}");
    assert!(!dir.path().join("counter.sqlite3-wal").exists() || std::fs::metadata(dir.path().join("counter.sqlite3-wal")).unwrap().len() == 0, "the WAL was checkpointed");
}

#[test]
fn the_bench_prints_one_line_per_figure() {
    let out = Command::new(env!("CARGO_BIN_EXE_tollgate-counter"))
        .args(["bench", "--seconds", "0.3", "--batch", "50", "--concurrency", "2", "--sync", "normal"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{stdout}");
    assert!(lines[0].starts_with("usage_records_per_sec="), "{stdout}");
    assert!(lines[1].starts_with("lease_calls_per_sec="), "{stdout}");
}
