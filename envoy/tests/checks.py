"""Assertions shared by the e2e tests: stats lookups, error shapes, access-log fields."""
import json

from harness import stats_delta


def stat_increase(before, after, *needles):
    """Sum of the increases of every stat whose name contains all `needles`."""
    return sum(v for k, v in stats_delta(before, after).items() if all(n in k for n in needles))


def outcome_count(stats, dialect, outcome):
    """The filter's per-dialect outcome counter (`tollgate_requests_<dialect>_<outcome>`)."""
    return stats.get(f"wasmcustom.tollgate_requests_{dialect}_{outcome}", 0)


def assert_outcome_counted(before, after, dialect, outcome):
    name = f"wasmcustom.tollgate_requests_{dialect}_{outcome}"
    assert after.get(name, 0) - before.get(name, 0) == 1, f"{name} did not count the request: {stats_delta(before, after)}"


def assert_error_shape(dialect, resp, status):
    """The body is the dialect's own error JSON (what its SDKs parse), with a non-empty message."""
    assert resp.status == status, resp
    assert (resp.header("content-type") or "").startswith("application/json"), resp.headers
    body = resp.json()
    if dialect in ("openai", "azure_openai"):
        assert set(body) == {"error"}, body
        assert isinstance(body["error"]["message"], str) and body["error"]["message"], body
        assert "type" in body["error"], body
        return body["error"]["message"]
    if dialect == "anthropic":
        assert body["type"] == "error", body
        assert isinstance(body["error"]["type"], str), body
        assert isinstance(body["error"]["message"], str) and body["error"]["message"], body
        return body["error"]["message"]
    if dialect == "gemini":
        assert body["error"]["code"] == status, body
        assert isinstance(body["error"]["status"], str), body
        assert isinstance(body["error"]["message"], str) and body["error"]["message"], body
        return body["error"]["message"]
    raise AssertionError(f"unknown dialect {dialect}")


def log_int(entry, field):
    """An integer access-log field (filter state is printed as text)."""
    value = entry.get(field)
    assert value not in (None, "-", ""), f"access log has no {field}: {json.dumps(entry)}"
    return int(value)
