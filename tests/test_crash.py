"""A bridge process killed (SIGKILL) mid-work and restarted on the same database loses
nothing and creates no second ticket."""

from __future__ import annotations

import pytest

from harness import Bridge
from helpers import wait_for


@pytest.fixture
def bridge(tmp_path):
    b = Bridge(tmp_path)
    yield b
    b.stop()


def hitl_tickets(bridge: Bridge, review_id: str) -> list[dict]:
    return [t for t in bridge.tickets() if f"hitl-{review_id}" in (t["fields"].get("labels") or [])]


def test_kill_between_upstream_create_and_commit_makes_one_ticket(bridge):
    bridge.start_process()
    jira = bridge.emulators["jira"].emulator
    # Jira stores the issue, then holds its answer: the bridge dies before it hears back.
    jira.settings.write_delay_ms = 5000
    review = bridge.submit()
    wait_for(lambda: hitl_tickets(bridge, review["id"]), what="the emulator to store the issue")
    bridge.kill()
    jira.settings.write_delay_ms = 0

    bridge.start_process()
    opened = bridge.wait_ticket(review["id"])
    assert opened["status"] == "open"
    tickets = hitl_tickets(bridge, review["id"])
    assert len(tickets) == 1
    assert opened["ticket"]["key"] == tickets[0]["key"]

    bridge.act("jira", tickets[0]["key"], "approve")
    bridge.wait_status(review["id"], "approved")
    wait_for(lambda: bridge.callbacks_for(review["id"]), what="callback after restart")


def test_kill_while_the_agent_is_down_delivers_after_restart(bridge):
    bridge.start_process()
    bridge.callbacks.status = 503  # the agent is down
    review = bridge.submit()
    key = bridge.wait_ticket(review["id"])["ticket"]["key"]
    bridge.act("jira", key, "approve")
    bridge.wait_review(review["id"], lambda r: r["delivery"]["attempts"] >= 1 and r["delivery"]["state"] == "pending",
                       what="a failed delivery attempt")
    bridge.kill()
    bridge.callbacks.status = 200
    bridge.start_process()
    delivered = bridge.wait_review(review["id"], lambda r: r["delivery"]["state"] == "delivered", timeout=30, what="delivery")
    assert delivered["delivery"]["attempts"] >= 2
    ids = {hit.headers["webhook-id"] for hit in bridge.callbacks_for(review["id"])}
    assert ids == {f"msg_{review['id']}"}
