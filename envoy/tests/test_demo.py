"""`make run`'s walkthrough, run as printed.

The demo (scripts/run-demo.sh) prints numbered steps, each a comment saying what happens and the
commands to paste. This test starts the demo on free ports, reads the printed steps and runs every
command with bash, in order, as a newcomer would, and checks that each step does what its comment
says: alice's first request succeeds, her budget then reaches the soft alert and the 429, the
refusal names her budget, and so on. It also checks that the access log prints what the filter
publishes (no column that is always null).
"""
import json
import os
import re
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from harness import REPO, _die_with_parent, free_port, stop

START_TIMEOUT = 60  # seconds for the demo to print its walkthrough
STEP_TIMEOUT = 30  # seconds for one printed command


def printed_steps(text):
    """{step number: [command, ...]} from the walkthrough after "Try": a step starts at a
    `# N.` comment; a command is a non-comment line, with `\\` continuation lines joined."""
    steps, current, pending = {}, None, ""
    for line in text.split("Try", 1)[1].splitlines()[1:]:
        if not line.startswith("  "):
            break
        body = line.strip()
        m = re.match(r"# (\d+)\.", body)
        if m:
            current = int(m.group(1))
            steps[current] = []
            continue
        if body.startswith("#") or current is None:
            continue
        pending += body[:-1] + " " if body.endswith("\\") else body
        if not body.endswith("\\"):
            steps[current].append(pending)
            pending = ""
    return steps


def run(command):
    done = subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=STEP_TIMEOUT, cwd=REPO)
    assert done.returncode == 0, f"`{command}` exited {done.returncode}: {done.stderr}"
    return done.stdout


@pytest.fixture(scope="module")
def demo():
    with tempfile.TemporaryDirectory(prefix="tollgate-demo-") as d:
        env = dict(os.environ, DEMO_DIR=d, LISTEN_PORT=str(free_port()), ADMIN_PORT=str(free_port()),
                   MOCK_PORT=str(free_port()), COUNTER_PORT=str(free_port()))
        out = Path(d) / "stdout"
        with open(out, "wb") as f:
            proc = subprocess.Popen(["bash", "scripts/run-demo.sh"], cwd=REPO, env=env, stdout=f,
                                    stderr=subprocess.STDOUT, preexec_fn=_die_with_parent, start_new_session=True)
        try:
            deadline = time.monotonic() + START_TIMEOUT
            while "Try" not in out.read_text(errors="replace"):
                assert proc.poll() is None, f"the demo exited: {out.read_text(errors='replace')}"
                assert time.monotonic() < deadline, f"the demo printed no walkthrough within {START_TIMEOUT}s"
                time.sleep(0.2)
            text = out.read_text(errors="replace")
            yield printed_steps(text), out, text
        finally:
            stop(proc)


def test_the_printed_walkthrough_does_what_it_says(demo):
    steps, out, text = demo
    assert sorted(steps) == [1, 2, 3, 4, 5, 6, 7, 8], f"the walkthrough's steps changed: {steps}"

    # 1. alice's first request is routed to gpt-4o and answered.
    first = json.loads(run(steps[1][0]))
    assert first["model"] == "gpt-4o" and first["choices"][0]["message"]["content"], first

    # 2. the loop prints one line per request: 200s, then 200 soft, then 429 at the hard limit.
    lines = run(steps[2][0]).split("\n")[:-1]
    statuses = [line.split()[0] for line in lines]
    assert len(lines) == 15, lines
    assert statuses[0] == "200", f"alice's second request was refused: {lines}"
    assert "200 soft" in lines, f"no soft alert before the hard stop: {lines}"
    assert statuses[-1] == "429", f"the hard limit was not reached within the printed loop: {lines}"
    first_429 = statuses.index("429")
    assert all(s == "200" for s in statuses[:first_429]) and all(s == "429" for s in statuses[first_429:]), "\n".join(lines)
    assert lines.index("200 soft") < first_429

    # 3. the refusal is OpenAI's error shape and names her budget.
    refusal = json.loads(run(steps[3][0]))
    assert "alice-daily" in refusal["error"]["message"], refusal

    # 4. Anthropic streaming, routed to claude-haiku-4-5, ends with message_stop.
    stream = run(steps[4][0])
    assert "claude-haiku-4-5" in stream and "event: message_stop" in stream, stream

    # 5. the retired model is denied with the rule's message.
    denied = json.loads(run(steps[5][0]))
    assert "gpt-4-32k is retired" in denied["error"]["message"], denied

    # 6. the meters: Envoy counts the requests; the counter reports alice's budget at its limit and
    #    spend by team and model.
    stats, utilization, report = (run(c) for c in steps[6])
    assert re.search(r"tollgate_requests_openai_metered: [1-9]", stats), stats
    assert "alice-daily" in utilization, utilization
    assert "search" in report and "gpt-4o" in report, report

    # 7. the events log shows alice's soft alert, delivered to the demo's webhook receiver, which
    #    printed it (signature checked) on the demo's terminal.
    events = run(steps[7][0])
    soft = [line for line in events.splitlines() if "threshold" in line and "alice-daily" in line]
    assert soft and "passed 50 %" in soft[0] and "demo-slack:delivered" in soft[0], events
    printed = out.read_text(errors="replace")
    assert "webhook receiver: threshold:alice-daily:50:" in printed and "(signature ok)" in printed, printed[-2000:]

    # 8. alice's personal token shows her own budget and spend: the requests above, nobody else's.
    own = json.loads(run(steps[8][0]))
    assert own["scope"] == "user:alice" and [b["budget"]["id"] for b in own["budgets"]] == ["alice-daily"], own
    assert own["total"]["requests"] >= 2 and own["total"]["cost_micros"] >= own["budgets"][0]["spent_micros"] > 0, own

    # The access log prints the filter's summary and no column that is always null.
    log = [json.loads(line) for line in out.read_text(errors="replace").splitlines() if line.startswith("{")]
    assert log, "no access-log lines"
    for entry in log:
        assert "cost_micros" not in entry and "dialect" not in entry, f"the demo prints unused columns: {entry}"
    assert any("user=alice" in (e.get("tollgate") or "") and "cost_micros=" in e["tollgate"] for e in log), log
