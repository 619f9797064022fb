"""The console's governance pages in a real browser: workflows, exemption requests (filed, approved
and refused with tokens of different roles), the events log with anomalies and deliveries, cost per
outcome and the monthly review. Every table equals what the API answers for the same query (for
reports that offer `format=csv`, the server's CSV itself, which is what the CLI prints), and every
CSV download is checked.

The counter here is its own: four tokens (admin, viewer, requester, approver), a notify file with
an anomaly rule and two webhooks (one answering, one down), two months of ledger rows (October and
November 2026), and today's spike on one team; workflows and outcomes are added through the API.
"""
import csv
import io
import json
import threading
import time
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from conftest import ADMIN_TOKEN, DAY_MS, Counter, cost_micros, free_port, http, records
from test_console import WAIT_S, cells, header, open_page, shot, usd

VIEWER = ("vera", "console-viewer-secret")
REQUESTER = ("rita", "console-requester-secret")
APPROVER = ("alex", "console-approver-secret")
# bob's personal token: his own spend and nothing else.
BOB_OWN = ("user:bob", "console-bob-personal-secret")

WORKFLOWS = [
    {"id": "ci-agent", "team": "platform", "owner": "alice", "class": "team_tool", "default_tier": "standard", "escalation_tier": "premium",
     "success_metric": {"description": "PRs merged by the CI agent", "outcome_kind": "merged_pr"},
     "weekly_cap": "150", "monthly_cap": "400", "review_date": "2027-06-01"},
    {"id": "code-review", "team": "search", "owner": "carol", "class": "production_tool",
     "success_metric": {"description": "PRs merged after AI review", "outcome_kind": "merged_pr"},
     "weekly_cap": "50.00", "monthly_cap": "150.00", "review_date": "2026-11-20", "exception_path": "ask in #ai-budget"},
    {"id": "agent", "team": "research", "owner": "dave", "class": "experiment", "review_date": "2026-10-31"},
    {"id": "ghost", "team": "platform", "owner": "bob", "class": "experiment", "review_date": "2027-01-31"},
]


def parse_csv(text):
    return list(csv.reader(io.StringIO(text, newline="")))


def today_start_ms():
    return int(time.time() * 1000) // DAY_MS * DAY_MS


def date_of(ms):
    return datetime.fromtimestamp(ms / 1000, timezone.utc).strftime("%Y-%m-%d")


class Receiver(BaseHTTPRequestHandler):
    received = []

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        Receiver.received.append((self.headers.get("X-Tollgate-Event"), body))
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def receiver():
    server = ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()


def today_spike(counter):
    """Records finishing today on team platform worth twice what an anomaly (3x the trailing 7-day
    daily average, at least $1) needs, read from the spend report."""
    today = today_start_ms()
    trailing = counter.get(f"/admin/reports/spend?group_by=team&from={today - 7 * DAY_MS}&to={today}")["rows"]
    trailing = sum(r["cost_micros"] for r in trailing if r["team"] == "platform")
    assert trailing > 0, "the November seed should give platform a trailing week"
    needed = 2 * max(1_000_000, -(-3 * trailing // 7))
    now = int(time.time() * 1000)
    out, total, i = [], 0, 0
    plan = [("anthropic", "claude-opus-4-5", "ci-agent"), ("openai", "gpt-4o", "chat"), ("anthropic", "claude-opus-4-5", "chat")]
    while total < needed or i < len(plan):
        dialect, model, use_case = plan[i % len(plan)]
        inp, outp = 150_000, 12_000
        cost = cost_micros(model, inp, outp)
        finished = max(today + 1000, now - 60_000 + i)
        out.append({
            "id": f"spike:{i}", "principal": {"org": "acme", "cost_center": "cc-eng", "team": "platform", "user": "alice", "key_id": "key-alice", "use_case": use_case},
            "dialect": dialect, "requested_model": model, "routed_model": model, "tokens": {"input": inp, "output": outp}, "cost_micros": cost,
            "status": 200, "estimated": False, "started_at_ms": finished - 1500, "finished_at_ms": finished,
        })
        total += cost
        i += 1
    return out


def settled(counter):
    """The events log once every delivery has been tried: `ops` delivered, `down` failed once."""
    deadline = time.monotonic() + 60
    last = None
    while time.monotonic() < deadline:
        events = counter.get("/admin/events?limit=1000")["events"]
        kinds = {e["kind"] for e in events}
        done = all(
            any(d["target"] == "ops" and d.get("delivered_at_ms") for d in e["deliveries"])
            and any(d["target"] == "down" and d["attempts"] >= 1 and d.get("last_error") for d in e["deliveries"])
            for e in events)
        if {"anomaly", "review_overdue"} <= kinds and done and events == last:
            return events
        last = events
        time.sleep(0.5)
    raise AssertionError(f"the events log did not settle: {json.dumps(last)[:2000]}")


@pytest.fixture(scope="module")
def gov(workdir, receiver):
    notify = {
        "webhooks": [
            {"name": "ops", "url": f"http://127.0.0.1:{receiver}/hooks/ops", "format": "json", "secret": "console-ops-webhook-secret"},
            {"name": "down", "url": f"http://127.0.0.1:{free_port()}/hooks/down", "format": "json", "secret": "console-down-webhook-secret"},
        ],
        "anomalies": [{"scope": "team:*", "factor_pct": 300, "min_spend": "1.00"}],
        "delivery": {"retry_base_ms": 3600000, "retry_max_ms": 3600000, "timeout_ms": 2000},
        "evaluation": {"tick_ms": 200, "anomaly_every_ms": 0},
    }
    path = f"{workdir}/gov-notify.json"
    with open(path, "w") as f:
        json.dump(notify, f)
    env = {"TOLLGATE_VIEWER_TOKENS": "=".join(VIEWER), "TOLLGATE_REQUESTER_TOKENS": "=".join(REQUESTER),
           "TOLLGATE_APPROVER_TOKENS": "=".join(APPROVER), "TOLLGATE_PERSONAL_TOKENS": "=".join(BOB_OWN)}
    c = Counter(workdir, name="gov-counter", env=env, args=["--notify", path])
    try:
        c.seed(records(3000, seed=29, prefix="gov-nov"))
        october = records(900, seed=31, prefix="gov-oct")
        for r in october:  # 30 days earlier: 2026-10-02 .. 2026-10-31
            r["started_at_ms"] -= 30 * DAY_MS
            r["finished_at_ms"] -= 30 * DAY_MS
        c.seed(october)
        c.seed(today_spike(c))
        for w in WORKFLOWS:
            c.call("PUT", f"/admin/workflows/{w['id']}", w)
        outcomes = ([("merged_pr", "platform", "ci-agent", f"2026-11-{d:02d}") for d in range(2, 28, 2)]
                    + [("merged_pr", "platform", "ci-agent", f"2026-10-{d:02d}") for d in (5, 12, 19, 26)]
                    + [("merged_pr", "search", "code-review", f"2026-11-{d:02d}") for d in (3, 9, 17)]
                    + [("resolved_ticket", "search", "chat", f"2026-11-{d:02d}") for d in (4, 24)])
        for i, (kind, team, use_case, at) in enumerate(outcomes):
            c.call("POST", "/outcomes", {"id": f"gh:acme/api#{i}", "kind": kind, "team": team, "use_case": use_case, "at": at,
                                         "url": f"https://example.invalid/pr/{i}"}, token=REQUESTER[1])
        c.events = settled(c)
        yield c
    finally:
        c.close()


def sign_in(browser, counter, token, lands_on="overview"):
    browser.get(counter.url + "/console/")
    browser.execute_script("sessionStorage.clear()")
    browser.get(counter.url + "/console/#overview")
    WebDriverWait(browser, WAIT_S).until(lambda d: d.find_element(By.ID, "signin").is_displayed())
    browser.find_element(By.ID, "token").send_keys(token)
    browser.find_element(By.CSS_SELECTOR, "#signin button").click()
    WebDriverWait(browser, WAIT_S).until(lambda d: d.find_element(By.ID, "page").get_attribute("data-ready") == lands_on)
    errors = browser.find_elements(By.ID, "page-error")
    assert not errors, errors[0].text


def download(browser, table_id):
    """Clicks the table's CSV link and returns the file's text (bytes as sent, CRLF kept)."""
    target = browser.downloads / f"tollgate-{table_id}.csv"
    if target.exists():
        target.unlink()
    browser.find_element(By.CSS_SELECTOR, f"a.csv[data-csv='{table_id}']").click()
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if target.exists() and not list(browser.downloads.glob("*.crdownload")):
            time.sleep(0.1)
            return target.read_bytes().decode()
        time.sleep(0.1)
    raise AssertionError(f"{table_id}: the CSV was not downloaded")


def csv_link_source(browser, table_id):
    return browser.find_element(By.CSS_SELECTOR, f"a.csv[data-csv='{table_id}']").get_attribute("data-source")


def same_as_server_csv(browser, counter, table_id, path):
    """The table shows the rows of the endpoint's CSV, and its CSV link downloads exactly that CSV."""
    assert csv_link_source(browser, table_id) == path.split("?")[0]
    sep = "&" if "?" in path else "?"
    text = counter.get_text(f"{path}{sep}format=csv")
    parsed = parse_csv(text)
    assert header(browser, table_id) == parsed[0], table_id
    assert cells(browser, table_id) == parsed[1:], table_id
    assert download(browser, table_id) == text, table_id
    return parsed


# ---- workflows ---------------------------------------------------------------------------------------

def test_workflows_page_lists_the_registry_as_the_api_and_the_cli_do(browser, gov, shots):
    sign_in(browser, gov, ADMIN_TOKEN)
    open_page(browser, gov, "workflows")
    listed = gov.get("/admin/workflows")["workflows"]
    assert sorted(w["id"] for w in listed) == sorted(w["id"] for w in WORKFLOWS)
    s = lambda v: "" if v is None else str(v)
    expected = [[w["id"], w["team"], w["owner"], w["class"], s(w.get("weekly_cap")), s(w.get("monthly_cap")), s(w.get("review_date")),
                 str(w["overdue"]).lower(), s(w.get("default_tier")), s(w.get("escalation_tier")), w.get("cap_mode", "enforce"),
                 (w.get("success_metric") or {}).get("outcome_kind", ""), w["scope"], ";".join(w["cap_budgets"]), s(w.get("exception_path"))]
                for w in listed]
    shown = cells(browser, "workflows")
    assert shown == expected
    # The first eight columns are `tollgate-counter workflows list --format csv`.
    cli = parse_csv(gov.cli("workflows", "list", "--format", "csv"))
    assert header(browser, "workflows")[:8] == cli[0]
    assert [r[:8] for r in shown] == cli[1:]
    # Overdue: the review date has passed (code-review 2026-11-20, agent 2026-10-31; today is later).
    overdue = {r[0]: r[7] for r in shown}
    assert overdue == {"ci-agent": "false", "code-review": "true", "agent": "true", "ghost": "false"}
    assert browser.find_element(By.ID, "workflows-overdue").text.endswith(str(sum(w["overdue"] for w in listed)))
    assert {r[0]: r[13] for r in shown}["ci-agent"] == "workflow.ci-agent.weekly;workflow.ci-agent.monthly"
    # No format=csv on this endpoint: the CSV is the cells shown.
    assert csv_link_source(browser, "workflows") == "page"
    assert parse_csv(download(browser, "workflows")) == [header(browser, "workflows")] + shown
    shot(browser, shots, "workflows")


# ---- exemption requests --------------------------------------------------------------------------------

def fill(form, values):
    for name, value in values.items():
        field = form.find_element(By.NAME, name)
        field.clear()
        field.send_keys(value)
    form.find_element(By.CSS_SELECTOR, "button[type=submit]").click()


def wait_message(browser, *needles):
    WebDriverWait(browser, WAIT_S).until(lambda d: all(n in d.find_element(By.ID, "request-message").text for n in needles))
    return browser.find_element(By.ID, "request-message").text


def request_rows(requests):
    t = lambda ms: "" if ms is None else datetime.fromtimestamp(ms / 1000, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    s = lambda v: "" if v is None else str(v)
    return [[str(r["id"]), r["scope"], r["amount"], t(r["starts_at_ms"]), t(r["ends_at_ms"]), r["reason"], s(r.get("use_case")), r["requested_by"],
             t(r["requested_at_ms"]), r["state"], s(r.get("decided_by")), t(r.get("decided_at_ms")), s(r.get("note")), s(r.get("exemption_id"))]
            for r in requests]


def wait_for_row(browser, predicate):
    WebDriverWait(browser, WAIT_S).until(lambda d: d.find_element(By.ID, "page").get_attribute("data-ready") == "requests"
                                         and any(predicate(r) for r in (cells(d, "requests") or [])))


CRUNCH = {"scope": "workflow:platform/ci-agent", "amount": "50", "starts_at": "2026-11-10", "ends_at": "2099-01-01", "reason": "release crunch", "use_case": "ci-agent"}


def test_a_viewer_cannot_file_a_request_and_the_page_says_why(browser, gov):
    sign_in(browser, gov, VIEWER[1])
    open_page(browser, gov, "requests")
    fill(browser.find_element(By.ID, "request-form"), CRUNCH)
    text = wait_message(browser, "403")
    assert "viewer" in text and "requester" in text, text
    assert gov.get("/admin/exemption-requests")["requests"] == []
    # The page still works: reads are a viewer's.
    assert cells(browser, "requests") == []
    # And the older admin-only form says so too.
    open_page(browser, gov, "exemptions")
    fill(browser.find_element(By.ID, "exemption-form"), {"scope": "team:search", "amount": "5", "ends_at": "2099-01-01", "reason": "x", "approver": "y"})
    WebDriverWait(browser, WAIT_S).until(lambda d: "403" in d.find_element(By.ID, "exemption-message").text)
    assert "admin" in browser.find_element(By.ID, "exemption-message").text
    assert gov.get("/admin/exemptions")["exemptions"] == []


def test_a_request_is_filed_by_a_requester_and_approved_by_someone_else(browser, gov, shots):
    # The requester files it; it is pending, and they cannot approve it (their role is too small).
    sign_in(browser, gov, REQUESTER[1])
    open_page(browser, gov, "requests")
    fill(browser.find_element(By.ID, "request-form"), CRUNCH)
    wait_for_row(browser, lambda r: r[5] == "release crunch")
    filed = [r for r in gov.get("/admin/exemption-requests")["requests"] if r["reason"] == "release crunch"]
    assert len(filed) == 1 and filed[0]["state"] == "pending" and filed[0]["requested_by"] == "rita" and filed[0]["amount"] == "50.000000"
    rid = filed[0]["id"]
    assert cells(browser, "requests") == request_rows(gov.get("/admin/exemption-requests")["requests"])
    browser.find_element(By.CSS_SELECTOR, f"button[data-approve='{rid}']").click()
    text = wait_message(browser, "403")
    assert "requester" in text and "approver" in text, text
    # A second request, to be rejected.
    open_page(browser, gov, "requests")
    fill(browser.find_element(By.ID, "request-form"), {"scope": "team:search", "amount": "75.5", "ends_at": "2099-02-01", "reason": "just because"})
    wait_for_row(browser, lambda r: r[5] == "just because")
    second = [r for r in gov.get("/admin/exemption-requests")["requests"] if r["reason"] == "just because"][0]

    # The approver: their own request is refused by the server (requester ≠ approver), shown as it answered.
    sign_in(browser, gov, APPROVER[1])
    open_page(browser, gov, "requests")
    fill(browser.find_element(By.ID, "request-form"), {"scope": "team:research", "amount": "20", "ends_at": "2099-01-01", "reason": "my own"})
    wait_for_row(browser, lambda r: r[5] == "my own")
    own = [r for r in gov.get("/admin/exemption-requests")["requests"] if r["reason"] == "my own"][0]
    assert own["requested_by"] == "alex"
    open_page(browser, gov, "requests")
    browser.find_element(By.CSS_SELECTOR, f"button[data-approve='{own['id']}']").click()
    text = wait_message(browser, "403", "alex")
    assert f"filed exemption request {own['id']}" in text and "someone else" in text, text
    assert [r["state"] for r in gov.get("/admin/exemption-requests")["requests"] if r["id"] == own["id"]] == ["pending"]

    # ...and someone else's is approved, with a note: the request and its exemption, as the API has them.
    open_page(browser, gov, "requests")
    browser.find_element(By.CSS_SELECTOR, f"input[data-note='{rid}']").send_keys("ok for the crunch")
    browser.find_element(By.CSS_SELECTOR, f"button[data-approve='{rid}']").click()
    wait_for_row(browser, lambda r: r[0] == str(rid) and r[9] == "approved")
    decided = [r for r in gov.get("/admin/exemption-requests")["requests"] if r["id"] == rid][0]
    assert decided["state"] == "approved" and decided["decided_by"] == "alex" and decided["note"] == "ok for the crunch"
    exemption = [e for e in gov.get("/admin/exemptions")["exemptions"] if e["id"] == decided["exemption_id"]]
    assert len(exemption) == 1 and exemption[0]["approver"] == "alex" and exemption[0]["scope"] == CRUNCH["scope"] and exemption[0]["active"]
    assert cells(browser, "requests") == request_rows(gov.get("/admin/exemption-requests")["requests"])
    # The page moved to the request's audit trail: its own entries and its exemption's, newest first.
    assert browser.execute_script("return location.hash").startswith(f"#requests?audit={rid}")
    entries = (gov.get(f"/admin/audit?subject=exemption_request:{rid}")["entries"]
               + gov.get(f"/admin/audit?subject=exemption:{decided['exemption_id']}")["entries"])
    entries.sort(key=lambda e: -e["seq"])
    assert {e["action"] for e in entries} == {"exemption_request.create", "exemption_request.approve", "exemption.add"}
    t = lambda ms: datetime.fromtimestamp(ms / 1000, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    j = lambda v: "" if v is None else json.dumps(v, separators=(",", ":"), ensure_ascii=False)
    audit = cells(browser, "request-audit")
    assert [r[:5] for r in audit] == [[str(e["seq"]), t(e["at_ms"]), e["actor"], e["action"], e["subject"]] for e in entries]
    assert [json.loads(r[8]) if r[8] else None for r in audit] == [e["after"] for e in entries]
    assert [r[2] for r in audit if r[3] == "exemption_request.approve"] == ["alex"]
    assert [r[2] for r in audit if r[3] == "exemption_request.create"] == ["rita"]
    shot(browser, shots, "requests")

    # Reject the second one.
    open_page(browser, gov, "requests", "state=pending")
    assert {r[0] for r in cells(browser, "requests")} == {str(r["id"]) for r in gov.get("/admin/exemption-requests?state=pending")["requests"]} == {str(second["id"]), str(own["id"])}
    browser.execute_script("document.getElementById('page').removeAttribute('data-ready')")
    browser.find_element(By.CSS_SELECTOR, f"button[data-reject='{second['id']}']").click()
    WebDriverWait(browser, WAIT_S).until(lambda d: d.find_element(By.ID, "page").get_attribute("data-ready") == "requests"
                                         and d.execute_script("return location.hash").startswith(f"#requests?state=pending&audit={second['id']}"))
    assert [r["state"] for r in gov.get("/admin/exemption-requests")["requests"] if r["id"] == second["id"]] == ["rejected"]
    assert [r[0] for r in cells(browser, "requests")] == [str(own["id"])]
    assert [r[3] for r in cells(browser, "request-audit")] == ["exemption_request.reject", "exemption_request.create"]
    # Without a chosen request: every request and exemption change, newest first, as the audit log has them.
    open_page(browser, gov, "requests")
    everything = [e for e in gov.get("/admin/audit?limit=1000")["entries"] if e["action"].startswith(("exemption_request.", "exemption."))]
    assert [r[0] for r in cells(browser, "request-audit")] == [str(e["seq"]) for e in everything]
    assert len(everything) == 6  # 3 creates, 1 approve + its exemption.add, 1 reject
    assert browser.find_element(By.ID, "requests-pending").text.endswith("1")
    for table_id in ["requests", "request-audit"]:
        assert csv_link_source(browser, table_id) == "page"
        assert parse_csv(download(browser, table_id)) == [header(browser, table_id)] + cells(browser, table_id)


# ---- events --------------------------------------------------------------------------------------------

def test_events_page_shows_the_log_anomalies_and_deliveries(browser, gov, shots):
    sign_in(browser, gov, VIEWER[1])
    open_page(browser, gov, "events", "limit=1000")
    parsed = same_as_server_csv(browser, gov, "events", "/admin/events?limit=1000")
    events = gov.get("/admin/events?limit=1000")["events"]
    assert [r[0] for r in parsed[1:]] == [str(e["seq"]) for e in events]
    kinds = {e["kind"] for e in events}
    assert {"anomaly", "review_overdue"} <= kinds, kinds
    # Anomalies, with the numbers behind them and their breakdown.
    anomalies = [e for e in events if e["kind"] == "anomaly"]
    assert [e["scope"] for e in anomalies] == ["team:platform"]
    assert cells(browser, "anomalies") == [[str(e["seq"]), e["scope"], e["details"]["day"], usd(e["details"]["today_micros"]), usd(e["details"]["average_micros"]),
                                            usd(e["details"]["trailing_7d_micros"]), str(e["details"]["factor_pct"]), usd(e["details"]["min_spend_micros"])]
                                           for e in anomalies]
    a = anomalies[0]
    assert a["details"]["day"] == date_of(today_start_ms())
    assert a["details"]["today_micros"] * 700 >= 300 * a["details"]["trailing_7d_micros"] > 0
    breakdown = cells(browser, f"anomaly-{a['seq']}")
    assert breakdown == [[b["model"], b["use_case"], str(b["requests"]), usd(b["cost_micros"])] for b in a["details"]["breakdown"]]
    assert {(r[0], r[1]) for r in breakdown} == {("claude-opus-4-5", "ci-agent"), ("gpt-4o", "chat"), ("claude-opus-4-5", "chat")}
    assert sum(b["cost_micros"] for b in a["details"]["breakdown"]) == a["details"]["today_micros"]
    # Delivery state: the answering webhook has every event, the one that is down has none (and says why).
    deliveries = cells(browser, "deliveries")
    assert len(deliveries) == 2 * len(events)
    assert {r[3] for r in deliveries if r[2] == "ops"} == {"delivered"}
    assert {r[3] for r in deliveries if r[2] == "down"} == {"pending"}
    assert all(r[7] for r in deliveries if r[2] == "down") and not any(r[7] for r in deliveries if r[2] == "ops")
    assert {k for k, _ in Receiver.received} >= {e["key"] for e in events}
    assert browser.find_element(By.ID, "events-pending").text.endswith(str(len(events)))
    shot(browser, shots, "events")
    # Filters: the same query to the API.
    open_page(browser, gov, "events", "kind=anomaly&scope=team:platform")
    same_as_server_csv(browser, gov, "events", "/admin/events?kind=anomaly&scope=team%3Aplatform")
    assert [r[3] for r in cells(browser, "events")] == ["anomaly"]
    open_page(browser, gov, "events", "kind=review_overdue")
    parsed = same_as_server_csv(browser, gov, "events", "/admin/events?kind=review_overdue")
    assert sorted(r[5] for r in parsed[1:]) == ["agent", "code-review"]
    assert cells(browser, "anomalies") == []
    # The form writes the filters into the address.
    form = browser.find_element(By.ID, "events-form")
    form.find_element(By.CSS_SELECTOR, "select[name=kind] option[value=threshold]").click()
    browser.execute_script("document.getElementById('page').removeAttribute('data-ready')")
    form.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    WebDriverWait(browser, WAIT_S).until(lambda d: d.find_element(By.ID, "page").get_attribute("data-ready") == "events")
    assert browser.execute_script("return location.hash") == "#events?kind=threshold"
    assert [r[0] for r in cells(browser, "events")] == [str(e["seq"]) for e in gov.get("/admin/events?kind=threshold")["events"]]


# ---- outcomes ------------------------------------------------------------------------------------------

def test_cost_per_outcome_is_the_outcome_reports(browser, gov, shots):
    sign_in(browser, gov, VIEWER[1])
    period = "from=2026-10-01&to=2026-12-01"
    open_page(browser, gov, "outcomes", f"{period}&group_by=team,use_case")
    rows = same_as_server_csv(browser, gov, "outcomes-cost", f"/admin/reports/outcomes?group_by=team%2Cuse_case&{period}")
    # An oracle from the spend report and the outcomes posted above: platform / ci-agent.
    spend = sum(r["cost_micros"] for r in gov.get(f"/admin/reports/spend?group_by=team,use_case&{period}")["rows"]
                if r["team"] == "platform" and r["use_case"] == "ci-agent")
    ci = [r for r in rows[1:] if r[:2] == ["platform", "ci-agent"]][0]
    assert ci[2:] == [usd(spend), "17", usd(spend // 17)]
    assert [r for r in rows[1:] if r[:2] == ["search", "autocomplete"]] == []
    assert any(r[4] == "" for r in rows[1:]), "a group without outcomes has no cost per outcome"
    same_as_server_csv(browser, gov, "outcomes-trend", f"/admin/reports/trend?period=month&{period}")
    assert [r[0] for r in cells(browser, "outcomes-trend")] == ["2026-10", "2026-11"]
    mix = same_as_server_csv(browser, gov, "outcomes-mix", f"/admin/reports/model-mix?{period}")
    for use_case in {r[0] for r in mix[1:]}:
        assert abs(sum(float(r[3]) for r in mix[1:] if r[0] == use_case) - 100) < 0.5
    listed = same_as_server_csv(browser, gov, "outcomes-list", f"/admin/outcomes?{period}")
    assert len(listed) - 1 == 22
    total = sum(r["spend_micros"] for r in gov.get(f"/admin/reports/outcomes?group_by=team&{period}")["rows"])
    assert browser.find_element(By.ID, "outcomes-spend").text.endswith("$" + usd(total))
    shot(browser, shots, "outcomes")
    # One kind, by use case and month, trend by week.
    open_page(browser, gov, "outcomes", f"{period}&group_by=use_case,month&kind=merged_pr&period=week")
    rows = same_as_server_csv(browser, gov, "outcomes-cost", f"/admin/reports/outcomes?group_by=use_case%2Cmonth&{period}&kind=merged_pr")
    assert header(browser, "outcomes-cost")[:2] == ["use_case", "month"]
    assert {(r[0], r[1]): r[3] for r in rows[1:] if r[0] in ("ci-agent", "code-review")} == {
        ("ci-agent", "2026-10"): "4", ("ci-agent", "2026-11"): "13", ("code-review", "2026-10"): "0", ("code-review", "2026-11"): "3"}
    same_as_server_csv(browser, gov, "outcomes-trend", f"/admin/reports/trend?period=week&{period}&kind=merged_pr")
    same_as_server_csv(browser, gov, "outcomes-list", f"/admin/outcomes?{period}&kind=merged_pr")
    assert {r[1] for r in cells(browser, "outcomes-list")} == {"merged_pr"}
    # A bad kind is the API's 400, named.
    open_page_error = lambda: browser.find_element(By.ID, "page-error").text
    browser.execute_script("document.getElementById('page').removeAttribute('data-ready'); location.hash = 'outcomes?kind=nope'")
    WebDriverWait(browser, WAIT_S).until(lambda d: d.find_element(By.ID, "page").get_attribute("data-ready") == "outcomes")
    assert "400" in open_page_error() and "kind" in open_page_error()


# ---- the monthly review --------------------------------------------------------------------------------

def test_the_monthly_review_shows_each_workflows_action_and_rule(browser, gov, shots):
    sign_in(browser, gov, VIEWER[1])
    open_page(browser, gov, "review", "month=2026-11")
    rows = same_as_server_csv(browser, gov, "review", "/admin/reports/review?month=2026-11")
    review = gov.get("/admin/reports/review?month=2026-11")
    assert [r[0] for r in rows[1:]] == [w["workflow"] for w in review["workflows"]] == sorted(w["id"] for w in WORKFLOWS)
    col = {h: i for i, h in enumerate(rows[0])}
    by = {r[0]: r for r in rows[1:]}
    for w in review["workflows"]:
        r = by[w["workflow"]]
        assert (r[col["action"]], r[col["rule"]], r[col["reason"]]) == (w["action"], w["rule"], w["reason"])
        assert r[col["spend_usd"]] == usd(w["spend_micros"]) and r[col["outcomes"]] == str(w["outcomes"])
    # The summary of actions at the top: the same action, rule and reason per workflow.
    assert cells(browser, "review-actions") == [[w["workflow"], w["team"], w["owner"], w["action"], w["rule"], w["reason"]] for w in review["workflows"]]
    assert parse_csv(download(browser, "review-actions")) == [header(browser, "review-actions")] + cells(browser, "review-actions")
    # What the seed was built for: an idle experiment, an overdue one without outcomes, and the approved
    # exemption (starting 2026-11-10, for use case ci-agent) in ci-agent's month.
    assert (by["ghost"][col["action"]], by["ghost"][col["rule"]]) == ("retire", "retire.idle")
    assert (by["agent"][col["action"]], by["agent"][col["rule"]]) == ("retire", "retire.experiment_overdue")
    assert by["ci-agent"][col["exemptions"]] == "1" and by["ci-agent"][col["exemption_usd"]] == "50.000000"
    assert by["ci-agent"][col["outcomes"]] == "13" and by["ci-agent"][col["previous_outcomes"]] == "4"
    spend = sum(r["cost_micros"] for r in gov.get("/admin/reports/spend?group_by=team,use_case&from=2026-11-01&to=2026-12-01")["rows"]
                if r["team"] == "platform" and r["use_case"] == "ci-agent")
    assert by["ci-agent"][col["spend_usd"]] == usd(spend) and by["ci-agent"][col["cost_per_outcome_usd"]] == usd(spend // 13)
    for action in ["keep", "cap", "reroute", "retire"]:
        n = sum(w["action"] == action for w in review["workflows"])
        assert browser.find_element(By.ID, f"review-{action}").text.endswith(str(n)), action
    shot(browser, shots, "review")
    # Another month through the form; a bad month is the API's 400.
    form = browser.find_element(By.ID, "review-form")
    browser.execute_script("document.getElementById('page').removeAttribute('data-ready')")
    fill(form, {"month": "2026-10"})
    WebDriverWait(browser, WAIT_S).until(lambda d: d.find_element(By.ID, "page").get_attribute("data-ready") == "review")
    same_as_server_csv(browser, gov, "review", "/admin/reports/review?month=2026-10")
    browser.execute_script("document.getElementById('page').removeAttribute('data-ready'); location.hash = 'review?month=2026-13'")
    WebDriverWait(browser, WAIT_S).until(lambda d: d.find_element(By.ID, "page").get_attribute("data-ready") == "review")
    assert "400" in browser.find_element(By.ID, "page-error").text and "month" in browser.find_element(By.ID, "page-error").text


def test_every_governance_table_has_a_csv_link(browser, gov):
    sign_in(browser, gov, VIEWER[1])
    for page, query in [("workflows", ""), ("requests", ""), ("events", ""), ("outcomes", "from=2026-10-01&to=2026-12-01"), ("review", "month=2026-11")]:
        open_page(browser, gov, page, query)
        tables = browser.find_elements(By.CSS_SELECTOR, "#page table")
        with_csv = {l.get_attribute("data-csv") for l in browser.find_elements(By.CSS_SELECTOR, "a.csv")}
        assert tables and {t.get_attribute("id") for t in tables} == with_csv, page


def test_a_personal_token_sees_its_own_spend_and_nobody_elses(browser, gov, shots):
    period = "from=2026-11-01&to=2026-12-01"
    sign_in(browser, gov, BOB_OWN[1], lands_on="me")
    visible = [a.get_attribute("href").split("#")[1] for a in browser.find_elements(By.CSS_SELECTOR, "#nav a") if a.is_displayed()]
    assert visible == ["me"], visible
    assert "personal token of user bob" in browser.find_element(By.ID, "me-who").text
    open_page(browser, gov, "me", period)
    # Exactly bob's rows of the spend report an admin reads, nobody else's.
    days = [r for r in gov.get(f"/admin/reports/spend?group_by=user,day&{period}")["rows"] if r["user"] == "bob"]
    assert days and cells(browser, "me-days") == [[r["day"], str(r["requests"]), r["cost_usd"]] for r in days]
    models = [r for r in gov.get(f"/admin/reports/spend?group_by=user,model&{period}")["rows"] if r["user"] == "bob"]
    assert cells(browser, "me-models") == [[r["model"], str(r["requests"]), r["cost_usd"]] for r in models]
    assert browser.find_element(By.ID, "me-total").text.endswith("$" + usd(sum(r["cost_micros"] for r in days)))
    # The page asks for no one: the address cannot name another user, and any other page is "My spend".
    open_page(browser, gov, "me", f"kind=user&who=alice&{period}")
    assert cells(browser, "me-days") == [[r["day"], str(r["requests"]), r["cost_usd"]] for r in days]
    shot(browser, shots, "me-personal")
    browser.execute_script("document.getElementById('page').removeAttribute('data-ready'); location.hash = 'budgets'")
    WebDriverWait(browser, WAIT_S).until(lambda d: d.find_element(By.ID, "page").get_attribute("data-ready") == "me")
    assert not browser.find_elements(By.ID, "budgets")
    # The counter refuses the token everywhere else; the page did not decide that.
    assert http(gov.port, "GET", "/admin/reports/spend", token=BOB_OWN[1])[0] == 401
    status, body = http(gov.port, "GET", "/reports/principal?scope=user:alice", token=BOB_OWN[1])
    assert status == 403 and b"`user:bob` only" in body, body
