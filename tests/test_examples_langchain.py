"""The LangChain examples run as a user would run them: against `hitl-bridge serve --sandbox`,
with the stand-in reviewer (`--auto`) acting through the emulators' REST API."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from procs import Proc

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sandbox")
    bridge = Proc(None, tmp / "sandbox.log", options=("--sandbox", "--database", str(tmp / "sandbox.db"))).start()
    try:
        yield bridge.url
    finally:
        bridge.terminate(timeout=15)


def run_example(name: str, url: str, *args: str) -> str:
    done = subprocess.run([sys.executable, str(ROOT / "examples" / name), "--bridge", url, *args],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-4000:]
    return done.stdout


def test_refund_agent_runs_the_edited_refund(sandbox):
    out = run_example("refund_agent.py", sandbox, "--auto", "edit", "--edit", '{"order_id": "A-100", "amount": 500}')
    assert "Refunded $500 on order A-100." in out
    out = run_example("refund_agent.py", sandbox, "--auto", "reject")
    assert "User rejected the tool call for `issue_refund` with reason: Outside the return window." in out
    assert "Refunded" not in out


def test_support_agent_posts_the_edited_reply_on_the_customer_ticket(sandbox):
    out = run_example("support_agent.py", sandbox, "--auto", "edit", "--edit", "Hi! Your refund is on its way.")
    assert "[public] Hi! Your refund is on its way." in out
    assert "[public] Hi, sorry your order" not in out
