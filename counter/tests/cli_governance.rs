//! The governance subcommands of the operator CLI against a live counter: workflows from a file,
//! an exemption request filed by a requester and approved by an approver, outcomes, the reports and
//! the monthly review.

mod common;

use common::*;
use std::process::Command;

fn cli(h: &Harness, token: &str, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_tollgate-counter"))
        .args(args)
        .env("TOLLGATE_COUNTER_URL", &h.url)
        .env("TOLLGATE_ADMIN_TOKEN", token)
        .output()
        .unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_runs_the_governance_process_from_the_cli() {
    let h = Harness::start().await;
    let file = h.dir.path().join("workflows.json");
    std::fs::write(
        &file,
        r#"{"workflows": [
          {"id": "code-review", "team": "platform", "owner": "alice", "class": "team_tool", "weekly_cap": "50", "monthly_cap": "150",
           "success_metric": {"description": "merged PRs", "outcome_kind": "merged_pr"}, "review_date": "2026-11-01"},
          {"id": "summaries", "team": "data", "owner": "dana", "class": "experiment"}]}"#,
    )
    .unwrap();
    let h = tokio::task::spawn_blocking(move || {
        let (ok, out, err) = cli(&h, BOB_TOKEN, &["workflows", "set", "--file", file.to_str().unwrap()]);
        assert!(ok, "{err}");
        assert_eq!(out, "workflow code-review: created (budgets: workflow.code-review.monthly created, workflow.code-review.weekly created)\nworkflow summaries: created\n");
        let (ok, out, _) = cli(&h, VIC_TOKEN, &["workflows", "list", "--format", "csv"]);
        assert!(ok);
        assert_eq!(out.lines().nth(1), Some("code-review,platform,alice,team_tool,50.000000,150.000000,2026-11-01,true"), "{out}");

        let (ok, _, err) = cli(&h, VIC_TOKEN, &["requests", "add", "--scope", "workflow:platform/code-review", "--amount", "25", "--ends-at", "2026-12-01", "--reason", "launch"]);
        assert!(!ok && err.contains("403"), "a viewer cannot file a request: {err}");
        let (ok, out, err) = cli(&h, RITA_TOKEN, &["requests", "add", "--scope", "workflow:platform/code-review", "--amount", "25", "--ends-at", "2026-12-01", "--reason", "launch", "--use-case", "code-review"]);
        assert!(ok, "{err}");
        assert_eq!(out, "exemption request 1 filed: 25.000000 on workflow:platform/code-review, pending approval\n");
        let (ok, out, err) = cli(&h, AVERY_TOKEN, &["requests", "approve", "1", "--note", "ok"]);
        assert!(ok, "{err}");
        assert_eq!(out, "exemption request 1 approved: exemption 1 active from 2026-11-25T10:00:00Z\n");

        let (ok, out, err) = cli(&h, RITA_TOKEN, &["outcomes", "add", "--id", "pr-1", "--kind", "merged_pr", "--team", "platform", "--use-case", "code-review"]);
        assert!(ok, "{err}");
        assert_eq!(out, "outcome pr-1 recorded\n");
        let (_, out, _) = cli(&h, RITA_TOKEN, &["outcomes", "add", "--id", "pr-1", "--kind", "merged_pr"]);
        assert_eq!(out, "outcome pr-1 already recorded\n");
        h
    })
    .await
    .unwrap();
    let mut r = record("u1", "platform", 2_000_000);
    r["principal"]["use_case"] = serde_json::json!("code-review");
    r["finished_at_ms"] = serde_json::json!(at("2026-11-25T09:00:00Z"));
    r["started_at_ms"] = serde_json::json!(at("2026-11-25T08:59:00Z"));
    h.usage("gw1", vec![r]).await;
    tokio::task::spawn_blocking(move || {
        let (ok, out, err) = cli(&h, VIC_TOKEN, &["insights", "cost-per-outcome", "--group-by", "use_case", "--format", "csv"]);
        assert!(ok, "{err}");
        assert_eq!(out, "use_case,spend_usd,outcomes,cost_per_outcome_usd\r\ncode-review,2.000000,1,2.000000\r\n");
        let (ok, out, _) = cli(&h, VIC_TOKEN, &["insights", "model-mix"]);
        assert!(ok);
        assert_eq!(out.lines().nth(1), Some("code-review  gpt-4o-mini  2.000000   100.0"), "{out}");

        let (ok, out, err) = cli(&h, VIC_TOKEN, &["review", "--month", "2026-11", "--format", "csv"]);
        assert!(ok, "{err}");
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 3, "{out}");
        assert!(lines[1].starts_with("code-review,platform,alice,team_tool,50.000000,150.000000,2.000000,0.000000,"), "{out}");
        assert!(lines[1].ends_with(",true,cap,cap.pressure,1 exemption(s) this month: review the cap"), "{out}");
        assert!(lines[2].contains(",retire,retire.idle,"), "{out}");
        let (ok, out, _) = cli(&h, VIC_TOKEN, &["review", "--month", "2026-11"]);
        assert!(ok);
        assert!(out.starts_with("workflow     team      owner  class"), "a table: {out}");
        let (ok, _, err) = cli(&h, VIC_TOKEN, &["review", "--month", "November"]);
        assert!(!ok && err.contains("month"), "{err}");
    })
    .await
    .unwrap();
}
