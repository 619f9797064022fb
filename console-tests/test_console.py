"""The console in a real browser, page by page: every figure a page shows equals what the report
API (the CLI's source) answers at the same moment; the simulator page's figures equal
`tollgate-counter simulate`'s. One screenshot per page lands in the shots directory."""
import csv
import io
import json
import os
import time
from pathlib import Path

import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from conftest import ADMIN_TOKEN, MONTH_FROM, MONTH_TO, Counter, cost_micros, records

WAIT_S = 30


def usd(micros):
    sign = "-" if micros < 0 else ""
    micros = abs(micros)
    return f"{sign}{micros // 1_000_000}.{micros % 1_000_000:06d}"


def open_page(browser, counter, page, query=""):
    """Goes to `#page?query` and waits until the page has rendered (or failed)."""
    browser.execute_script("document.getElementById('page').removeAttribute('data-ready')")
    # A fresh `n` makes every visit a hash change, so the page renders even when the address is the same.
    open_page.visits += 1
    browser.execute_script("location.hash = arguments[0]", f"{page}?{query}&n={open_page.visits}" if query else f"{page}?n={open_page.visits}")
    WebDriverWait(browser, WAIT_S).until(lambda d: d.find_element(By.ID, "page").get_attribute("data-ready") == page)
    errors = browser.find_elements(By.ID, "page-error")
    assert not errors, errors[0].text


open_page.visits = 0


def cells(browser, table_id):
    return browser.execute_script(
        "const t = document.getElementById(arguments[0]); if (!t) return null;"
        "return [...t.tBodies[0].rows].map(r => [...r.cells].filter(c => c.dataset.col).map(c => c.textContent));", table_id)


def header(browser, table_id):
    return browser.execute_script("return [...document.getElementById(arguments[0]).tHead.rows[0].cells].map(c => c.textContent)", table_id)


def shot(browser, shots, name):
    browser.save_screenshot(str(shots / f"{name}.png"))


@pytest.fixture(scope="module")
def signed_in(browser, counter):
    browser.get(counter.url + "/console/")
    WebDriverWait(browser, WAIT_S).until(lambda d: d.find_element(By.ID, "signin").is_displayed())
    browser.find_element(By.ID, "token").send_keys(ADMIN_TOKEN)
    browser.find_element(By.CSS_SELECTOR, "#signin button").click()
    WebDriverWait(browser, WAIT_S).until(lambda d: d.find_element(By.ID, "page").get_attribute("data-ready") == "overview")
    return browser


def test_a_wrong_token_is_refused_and_nothing_is_shown(browser, counter, shots):
    browser.get(counter.url + "/console/#budgets")
    browser.execute_script("sessionStorage.clear(); location.reload()")
    WebDriverWait(browser, WAIT_S).until(lambda d: d.find_element(By.ID, "signin").is_displayed())
    browser.find_element(By.ID, "token").send_keys("not-a-token")
    browser.find_element(By.CSS_SELECTOR, "#signin button").click()
    WebDriverWait(browser, WAIT_S).until(lambda d: "401" in d.find_element(By.ID, "signin-error").text)
    assert browser.find_element(By.ID, "signin").is_displayed()
    assert browser.execute_script("return sessionStorage.getItem('tollgate.admin_token')") is None
    assert cells(browser, "budgets-team") is None
    shot(browser, shots, "signin")


def test_overview_shows_the_periods_and_budgets_the_api_reports(signed_in, counter, shots):
    open_page(signed_in, counter, "overview", "asof=2026-11-18")
    rows = cells(signed_in, "overview-spend")
    # Wednesday 2026-11-18: the week began on Monday the 16th, the month on the 1st.
    expected = []
    for period, start in [("today", "2026-11-18"), ("week", "2026-11-16"), ("month", "2026-11-01")]:
        total = counter.get(f"/admin/reports/spend?from={start}&to=2026-11-19")["total"]
        expected.append([period, start, "2026-11-19", str(total["requests"]), total["cost_usd"]])
    assert rows == expected
    assert int(expected[0][3]) > 0 and int(expected[0][3]) < int(expected[1][3]) < int(expected[2][3]), "the seed spans the month"
    assert signed_in.find_element(By.ID, "spend-month").text.endswith("$" + expected[2][4])
    budgets = counter.get("/admin/budgets")["budgets"]
    shown = cells(signed_in, "overview-budgets")
    assert [r[0] for r in shown] == [b["budget"]["id"] for b in budgets]
    for row, b in zip(shown, budgets):
        assert row[3:] == [usd(b["spent_micros"]), usd(b["effective_limit_micros"] * min(b["budget"]["soft_thresholds_pct"]) // 100),
                           usd(b["effective_limit_micros"]), usd(b["hard_limit_micros"]), b["status"]], row
    # One bar per budget, with its soft, limit and hard lines.
    assert len(signed_in.find_elements(By.CSS_SELECTOR, "#budget-bars rect")) == len(budgets)
    assert len(signed_in.find_elements(By.CSS_SELECTOR, "#budget-bars line")) == 3 * len(budgets)
    shot(signed_in, shots, "overview")


def test_budgets_page_groups_the_utilization_report_by_scope_kind(signed_in, counter, shots):
    open_page(signed_in, counter, "budgets")
    report = counter.get("/admin/reports/utilization")["budgets"]
    seen = 0
    for kind in ["team", "cost_center", "user", "workflow", "org"]:
        shown = cells(signed_in, f"budgets-{kind}")
        mine = [b for b in report if b["scope"].startswith(kind + ":")]
        assert shown is not None and len(shown) == len(mine), kind
        for row, b in zip(shown, mine):
            assert row[:10] == [b["budget"], b["scope"], b["window"], b["mode"], usd(b["spent_micros"]), usd(b["limit_micros"]),
                                usd(b["hard_limit_micros"]), f"{b['utilization'] * 100:.1f}", b["status"], usd(b["leased_micros"])], row
            seen += 1
    assert seen == len(report) == 7
    statuses = {b["status"] for b in report}
    assert len(statuses) > 1, f"the seed should put budgets in more than one status, got {statuses}"
    leased = sum(b["leased_micros"] for b in report)
    assert signed_in.find_element(By.ID, "budgets-leased").text.endswith("$" + usd(leased))
    shot(signed_in, shots, "budgets")


@pytest.mark.parametrize("dim", ["team", "use_case", "model"])
def test_spend_over_time_is_the_spend_report_by_day(signed_in, counter, shots, dim):
    open_page(signed_in, counter, "spend", f"from={MONTH_FROM}&to={MONTH_TO}&dim={dim}")
    answer = counter.get(f"/admin/reports/spend?group_by=day,{dim}&from={MONTH_FROM}&to={MONTH_TO}")
    expected = [[r["day"], r[dim], str(r["requests"]), r["cost_usd"], str(r["input_tokens"]), str(r["output_tokens"]),
                 str(r["cache_read_tokens"]), str(r["cache_write_tokens"])] for r in answer["rows"]]
    assert cells(signed_in, "spend-rows") == expected
    assert len({r[0] for r in expected}) == 30
    assert signed_in.find_element(By.ID, "spend-total").text.endswith("$" + answer["total"]["cost_usd"])
    # One stacked segment per (day, series) that has spend.
    assert len(signed_in.find_elements(By.CSS_SELECTOR, "#spend-chart rect")) == len(expected)
    if dim == "team":
        shot(signed_in, shots, "spend")


def test_model_mix_is_the_spend_report_by_use_case_and_model(signed_in, counter, shots):
    open_page(signed_in, counter, "mix", f"from={MONTH_FROM}&to={MONTH_TO}")
    answer = counter.get(f"/admin/reports/spend?group_by=use_case,model&from={MONTH_FROM}&to={MONTH_TO}")
    shown = cells(signed_in, "mix-rows")
    assert [r[:4] for r in shown] == [[r["use_case"], r["model"], str(r["requests"]), r["cost_usd"]] for r in answer["rows"]]
    for use_case in {r["use_case"] for r in answer["rows"]}:
        shares = [float(r[4]) for r in shown if r[0] == use_case]
        assert abs(sum(shares) - 100) < 0.5, (use_case, shares)
    shot(signed_in, shots, "mix")


def test_every_table_downloads_the_cells_it_shows_as_csv(signed_in, counter):
    open_page(signed_in, counter, "mix", f"from={MONTH_FROM}&to={MONTH_TO}")
    links = signed_in.find_elements(By.CSS_SELECTOR, "a.csv")
    assert [l.get_attribute("data-csv") for l in links] == ["mix-rows"]
    target = signed_in.downloads / "tollgate-mix-rows.csv"
    links[0].click()
    deadline = time.monotonic() + 15
    while not target.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert target.exists(), "the CSV was not downloaded"
    parsed = list(csv.reader(io.StringIO(target.read_text())))
    assert parsed[0] == header(signed_in, "mix-rows")
    assert parsed[1:] == cells(signed_in, "mix-rows")
    for page in ["overview", "budgets", "spend", "exemptions"]:
        open_page(signed_in, counter, page, f"from={MONTH_FROM}&to={MONTH_TO}")
        tables = signed_in.find_elements(By.CSS_SELECTOR, "#page table")
        with_csv = {l.get_attribute("data-csv") for l in signed_in.find_elements(By.CSS_SELECTOR, "a.csv")}
        assert tables and {t.get_attribute("id") for t in tables} == with_csv, page


def test_an_exemption_added_and_revoked_on_the_page_is_what_the_api_lists(signed_in, counter, shots):
    open_page(signed_in, counter, "exemptions")
    form = signed_in.find_element(By.ID, "exemption-form")
    for name, value in [("scope", "team:search"), ("amount", "250"), ("ends_at", "2099-01-01"), ("reason", "launch week"), ("approver", "cfo")]:
        form.find_element(By.NAME, name).send_keys(value)
    form.find_element(By.CSS_SELECTOR, "button").click()
    WebDriverWait(signed_in, WAIT_S).until(lambda d: any(r[5] == "launch week" for r in (cells(d, "exemptions") or [])))
    listed = counter.get("/admin/exemptions")["exemptions"]
    mine = [e for e in listed if e["reason"] == "launch week"]
    assert len(mine) == 1 and mine[0]["active"] and mine[0]["amount"] == "250.000000" and mine[0]["created_by"] == "admin"
    row = [r for r in cells(signed_in, "exemptions") if r[0] == str(mine[0]["id"])][0]
    assert row[1:3] + row[5:] == ["team:search", "250.000000", "launch week", "cfo", "admin", "true"]
    # The exemption raises the budget's limit, on the budgets page too.
    search = [b for b in counter.get("/admin/budgets")["budgets"] if b["budget"]["id"] == "search-monthly"][0]
    assert search["effective_limit_micros"] == 550_000_000
    shot(signed_in, shots, "exemptions")
    signed_in.find_element(By.CSS_SELECTOR, f"button[data-revoke='{mine[0]['id']}']").click()
    WebDriverWait(signed_in, WAIT_S).until(lambda d: any(r[0] == str(mine[0]["id"]) and r[-1] == "false" for r in (cells(d, "exemptions") or [])))
    assert [e["active"] for e in counter.get("/admin/exemptions")["exemptions"] if e["id"] == mine[0]["id"]] == [False]
    # A bad amount is refused with the API's message, naming the field.
    form = signed_in.find_element(By.ID, "exemption-form")
    for name, value in [("scope", "team:search"), ("amount", "lots"), ("ends_at", "2099-01-01"), ("reason", "x"), ("approver", "y")]:
        form.find_element(By.NAME, name).send_keys(value)
    form.find_element(By.CSS_SELECTOR, "button").click()
    WebDriverWait(signed_in, WAIT_S).until(lambda d: "amount" in d.find_element(By.ID, "exemption-message").text)


CANDIDATE_ROUTING = {"rules": [
    {"name": "research-no-opus", "match": {"team": "research", "model": "claude-opus*"}, "deny": True},
    {"name": "autocomplete-mini", "match": {"use_case": "autocomplete"}, "set_model": "gpt-4o-mini"},
    {"name": "review-sonnet", "match": {"use_case": "code-review", "dialect": "anthropic"}, "set_model": "claude-sonnet-4-5"},
]}
CANDIDATE_PRICING = {"models": {"gpt-4o-mini": {"input_per_mtok": "0.10", "output_per_mtok": "0.40"}}}


def run_simulator(browser, counter, routing, pricing, period=(MONTH_FROM, MONTH_TO)):
    open_page(browser, counter, "simulator", f"from={period[0]}&to={period[1]}")
    for element_id, text in [("sim-routing", routing), ("sim-pricing", pricing)]:
        browser.execute_script("document.getElementById(arguments[0]).value = arguments[1]", element_id, text)
    browser.find_element(By.ID, "sim-run").click()
    WebDriverWait(browser, 120).until(lambda d: d.find_element(By.ID, "sim-status").get_attribute("data-elapsed-ms")
                                      or "error" in d.find_element(By.ID, "sim-status").get_attribute("class"))
    status = browser.find_element(By.ID, "sim-status")
    assert status.get_attribute("data-elapsed-ms"), status.text
    return json.loads(browser.find_element(By.ID, "sim-json").get_attribute("textContent")), float(status.get_attribute("data-elapsed-ms"))


def test_the_simulator_page_gives_the_clis_figures(signed_in, counter, shots, workdir):
    routing, pricing = Path(workdir) / "routing.json", Path(workdir) / "pricing.json"
    routing.write_text(json.dumps(CANDIDATE_ROUTING))
    pricing.write_text(json.dumps(CANDIDATE_PRICING))
    page, _ = run_simulator(signed_in, counter, routing.read_text(), pricing.read_text())
    cli = json.loads(counter.cli("simulate", "--routing", str(routing), "--prices", str(pricing), "--from", MONTH_FROM, "--to", MONTH_TO, "--format", "json"))
    assert page == cli
    # An oracle written here: the same rules and prices applied to the seeded records in Python.
    expected = {}
    for r in records(3000):
        p, model = r["principal"], r["requested_model"]
        g = expected.setdefault((p["team"], p["use_case"]), {"requests": 0, "billed": 0, "candidate": 0, "rerouted": 0, "denied": 0})
        g["requests"] += 1
        g["billed"] += r["cost_micros"]
        if p["team"] == "research" and model.startswith("claude-opus"):
            g["denied"] += 1
            continue
        if p["use_case"] == "autocomplete":
            model = "gpt-4o-mini"
        elif p["use_case"] == "code-review" and r["dialect"] == "anthropic":
            model = "claude-sonnet-4-5"
        g["rerouted"] += model != r["routed_model"]
        g["candidate"] += cost_micros(model, r["tokens"]["input"], r["tokens"]["output"], {"gpt-4o-mini": ("0.10", "0.40")})
    assert {(g["team"], g["use_case"]): {"requests": g["requests"], "billed": g["billed_micros"], "candidate": g["candidate_micros"],
                                         "rerouted": g["rerouted"], "denied": g["denied"]} for g in page["groups"]} == expected
    assert page["unpriced"] == 0
    # Not a trivial replay: the candidate reroutes, denies and saves, and the billed side is the ledger's.
    month = counter.get(f"/admin/reports/spend?from={MONTH_FROM}&to={MONTH_TO}")["total"]
    assert (page["requests"], page["billed_micros"]) == (month["requests"], month["cost_micros"])
    assert page["rerouted"] > 0 and page["denied"] > 0 and page["candidate_micros"] < page["billed_micros"]
    assert [b["id"] for b in page["budgets"]] == sorted(b["budget"]["id"] for b in counter.get("/admin/budgets")["budgets"])
    # The tables show the same figures.
    shown = cells(signed_in, "sim-groups")
    assert shown == [[g["team"], g["use_case"], str(g["requests"]), usd(g["billed_micros"]), usd(g["candidate_micros"]),
                      str(g["rerouted"]), str(g["denied"]), str(g["unpriced"])] for g in page["groups"]]
    assert signed_in.find_element(By.ID, "sim-candidate").text.endswith("$" + page["candidate_usd"])
    # The CLI's table prints the same totals.
    table = counter.cli("simulate", "--routing", str(routing), "--prices", str(pricing), "--from", MONTH_FROM, "--to", MONTH_TO)
    assert f"billed ${page['billed_usd']}, with the candidate ${page['candidate_usd']}" in table
    shot(signed_in, shots, "simulator")


def test_a_bad_candidate_is_named_on_the_page(signed_in, counter):
    open_page(signed_in, counter, "simulator", f"from={MONTH_FROM}&to={MONTH_TO}")
    signed_in.execute_script("document.getElementById('sim-routing').value = arguments[0]", json.dumps({"rules": [{"name": "x", "match": {"modle": "a"}}]}))
    signed_in.find_element(By.ID, "sim-run").click()
    WebDriverWait(signed_in, WAIT_S).until(lambda d: "routing.rules[0].match" in d.find_element(By.ID, "sim-status").text)


def test_my_spend_shows_one_users_budgets_and_spend(signed_in, counter, shots):
    open_page(signed_in, counter, "me", f"kind=user&who=alice&from={MONTH_FROM}&to={MONTH_TO}")
    days = [r for r in counter.get(f"/admin/reports/spend?group_by=user,day&from={MONTH_FROM}&to={MONTH_TO}")["rows"] if r["user"] == "alice"]
    assert cells(signed_in, "me-days") == [[r["day"], str(r["requests"]), r["cost_usd"]] for r in days]
    total = sum(r["cost_micros"] for r in days)
    assert signed_in.find_element(By.ID, "me-total").text.endswith("$" + usd(total))
    models = [r for r in counter.get(f"/admin/reports/spend?group_by=user,model&from={MONTH_FROM}&to={MONTH_TO}")["rows"] if r["user"] == "alice"]
    assert cells(signed_in, "me-models") == [[r["model"], str(r["requests"]), r["cost_usd"]] for r in models]
    alice = [b for b in counter.get("/admin/budgets")["budgets"] if b["budget"]["scope"] == "user:alice"][0]
    assert f"${usd(alice['spent_micros'])} of ${usd(alice['effective_limit_micros'])}" in signed_in.find_element(By.ID, "me-budget-alice-rolling").text
    # Nobody else's rows.
    assert all(r[0] for r in cells(signed_in, "me-days"))
    shot(signed_in, shots, "me")


@pytest.mark.skipif(not os.environ.get("TOLLGATE_CONSOLE_BENCH"), reason="the 100k-row measurement runs with TOLLGATE_CONSOLE_BENCH=1 (not a timed test)")
def test_measure_the_simulator_on_100k_ledger_rows(browser, workdir, shots):
    big = Counter(workdir, name="bench-counter")
    try:
        big.seed(records(100_000, seed=7, prefix="bench"), batch=10_000)
        browser.get(big.url + "/console/")
        browser.execute_script("sessionStorage.setItem('tollgate.admin_token', arguments[0])", ADMIN_TOKEN)
        browser.get(big.url + "/console/#simulator")
        WebDriverWait(browser, WAIT_S).until(lambda d: d.find_element(By.ID, "page").get_attribute("data-ready") == "simulator")
        routing = json.dumps(CANDIDATE_ROUTING)
        figures = []
        in_month = big.get(f"/admin/reports/spend?from={MONTH_FROM}&to={MONTH_TO}")["total"]["requests"]
        assert in_month > 99_900
        for _ in range(3):
            page, elapsed = run_simulator(browser, big, routing, json.dumps(CANDIDATE_PRICING))
            assert page["requests"] == in_month
            figures.append(elapsed)
        print(f"\nsimulator, {in_month} ledger rows in the browser: {', '.join(f'{f:.0f} ms' for f in figures)}")
        (shots / "bench-simulator.txt").write_text(" ".join(f"{f:.1f}" for f in figures) + "\n")
    finally:
        big.close()
