"""The console's planning views in a real browser (issue 18): the budgets page's forecast columns
and the outliers page. Every figure shown equals what the API answers at the same moment.

Runs on the session counter of conftest.py (a month of November 2026 ledger rows) plus a handful
of task runs added here: six ordinary CI runs and one far above them.
"""
import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from conftest import ADMIN_TOKEN, GATEWAY_TOKEN, NOV_1_MS, DAY_MS, http
from test_console import WAIT_S, cells, header, open_page, shot, usd


@pytest.fixture(scope="module")
def signed_in(browser, counter):
    # The session's browser may be signed in already (other modules ran first): start afresh.
    browser.get(counter.url + "/console/")
    browser.execute_script("sessionStorage.clear()")
    browser.get(counter.url + "/console/")
    WebDriverWait(browser, WAIT_S).until(lambda d: d.find_element(By.ID, "signin").is_displayed())
    browser.find_element(By.ID, "token").send_keys(ADMIN_TOKEN)
    browser.find_element(By.CSS_SELECTOR, "#signin button").click()
    WebDriverWait(browser, WAIT_S).until(lambda d: d.find_element(By.ID, "page").get_attribute("data-ready") == "overview")
    return browser


def run_records():
    out = []

    def rec(rid, task, cost, model, status, finished):
        return {"id": f"planning:{rid}", "principal": {"org": "acme", "team": "platform", "user": "alice", "use_case": "nightly-fix", "task": task},
                "dialect": "openai", "requested_model": model, "routed_model": model, "tokens": {"input": 1000, "output": 200},
                "cost_micros": cost, "status": status, "estimated": False, "started_at_ms": finished - 1000, "finished_at_ms": finished}

    for i in range(6):
        out.append(rec(f"r{i}", f"nightly-{i}", 100_000 + i * 1000, "gpt-4o-mini", 200, NOV_1_MS + (10 + i) * DAY_MS + 3_600_000))
    for j in range(8):
        out.append(rec(f"x{j}", "nightly-bad", 500_000, "gpt-4o", 500 if j < 3 else 200, NOV_1_MS + 15 * DAY_MS + 7_200_000 + j * 1000))
    return out


def test_the_outliers_page_shows_what_the_api_flags_and_ranks_nobody(signed_in, counter, shots):
    status, body = http(counter.port, "POST", "/v1/usage", {"gateway_id": "planning", "records": run_records()}, token=GATEWAY_TOKEN)
    assert status == 200, body
    query = "from=2026-11-01&to=2026-12-01"
    open_page(signed_in, counter, "outliers", query)
    api = counter.get(f"/admin/reports/outliers?{query}")
    shown = cells(signed_in, "outliers-rows")
    assert header(signed_in, "outliers-rows")[:4] == ["kind", "id", "workflow", "day"]
    assert "user" not in header(signed_in, "outliers-rows"), "outliers, not people"
    assert len(shown) == len(api["outliers"]) > 0
    for row, o in zip(shown, api["outliers"]):
        assert row[:8] == [o["kind"], o["id"], o.get("workflow") or "", o["day"], usd(o["cost_micros"]), usd(o["baseline"]["median_micros"]),
                           usd(o["baseline"]["threshold_micros"]), "" if o["pct_of_median"] is None else str(o["pct_of_median"])], row
    bad = [r for r in shown if r[0] == "run" and r[1] == "nightly-bad"]
    assert len(bad) == 1, shown
    assert bad[0][8:10] == ["8", "3"], "8 requests, 3 of them failed"
    assert bad[0][12] == "gpt-4o 8x $4.000000"
    assert not [r for r in shown if r[0] == "run" and r[1] != "nightly-bad" and r[2] == "platform/nightly-fix"], "its siblings are not outliers"
    assert signed_in.find_element(By.ID, "outliers-count").text.endswith(str(len(api["outliers"])))
    shot(signed_in, shots, "outliers")


def test_the_budgets_page_shows_each_budgets_forecast(signed_in, counter, shots):
    open_page(signed_in, counter, "budgets")
    report = {b["budget"]: b for b in counter.get("/admin/reports/utilization")["budgets"]}
    hdr = header(signed_in, "budgets-team")
    assert hdr[-2:] == ["projected_end_usd", "hard_limit_day"]
    seen = 0
    for kind in ["team", "cost_center", "user", "workflow", "org"]:
        for row in cells(signed_in, f"budgets-{kind}") or []:
            f = report[row[0]]["forecast"]
            # The pace runs on the wall clock here: the page and the API read it a moment apart.
            if f["projected_end_micros"] is None:
                assert row[-2] == "", row
            else:
                shown_micros = round(float(row[-2]) * 1_000_000)
                assert abs(shown_micros - f["projected_end_micros"]) <= max(50_000, f["projected_end_micros"] // 100), (row, f)
            assert row[-1] == (f["hard_limit_day"] if f["projected_to_exceed"] else ""), row
            seen += 1
    assert seen == len(report)
    over = sum(1 for b in report.values() if b["forecast"]["projected_to_exceed"])
    assert signed_in.find_element(By.ID, "budgets-projected-over").text.endswith(str(over))
    shot(signed_in, shots, "budgets-forecast")
