"""End to end with a real LangGraph server: an agent made with ``create_agent`` and
``HumanInTheLoopMiddleware`` pauses; the bridge's watcher turns the interrupt into a Jira
ticket (emulator, real client); the reviewer acts on the ticket; the thread resumes."""

from __future__ import annotations

import json
import uuid
from datetime import datetime, timezone

import pytest

from bridge.config import LangGraphDeployment
from bridge.langgraph import resume_thread
from bridge.schemas import Decision, DecisionRecord, LangGraphTarget
from connectors.errors import PermanentError
from harness import Bridge
from helpers import wait_for
from lg_support import ai_texts, start_langgraph, tool_messages


@pytest.fixture(scope="module")
def langgraph(tmp_path_factory):
    server = start_langgraph(tmp_path_factory.mktemp("langgraph"))
    yield server
    server.stop()


def watching(tmp_path, langgraph, graph: str = "agent") -> tuple[Bridge, str]:
    """A bridge that watches a fresh assistant of the test server (so only this test's threads)."""
    assistant_id = langgraph.assistant(graph)
    bridge = Bridge(tmp_path)
    deployment = LangGraphDeployment(name="agents", url=langgraph.url, assistant_id=assistant_id, poll_seconds=0.2,
                                     metadata={"queue": "jira"})
    bridge.settings = bridge.settings.model_copy(update={"langgraph": [deployment]})
    return bridge, assistant_id


@pytest.fixture
def setup(tmp_path, langgraph):
    bridge, assistant_id = watching(tmp_path, langgraph)
    bridge.start()
    yield bridge, assistant_id
    bridge.stop()


def reviews_for(bridge: Bridge, thread_id: str) -> list[dict]:
    with bridge.client() as client:
        items = client.get("/v1/reviews", params={"limit": 200}).json()["items"]
    return [r for r in items if ((r["request"].get("resume") or {}).get("langgraph") or {}).get("thread_id") == thread_id]


def opened_review(bridge: Bridge, thread_id: str, count: int = 1) -> list[dict]:
    found = wait_for(lambda: (rs := reviews_for(bridge, thread_id)) and len(rs) >= count and all(r["ticket"] for r in rs) and rs,
                     timeout=20, what=f"{count} review(s) with a ticket for thread {thread_id}")
    return sorted(found, key=lambda r: r["id"])


def refund(order: str, amount: float = 750) -> dict:
    return {"name": "issue_refund", "args": {"order_id": order, "amount": amount}}


def order_id() -> str:
    return f"A-{uuid.uuid4().hex[:8]}"


def test_tool_runs_only_after_approval(setup, langgraph):
    bridge, assistant_id = setup
    order = order_id()
    thread_id = langgraph.start_run(assistant_id, [refund(order)])
    (review,) = opened_review(bridge, thread_id)
    assert review["status"] == "open" and review["route"]["name"] == "jira-queue"
    assert review["request"]["action_requests"][0]["name"] == "issue_refund"
    assert review["request"]["resume"]["langgraph"]["interrupt_id"]
    ticket = bridge.ticket("jira", review["ticket"]["key"])
    assert ticket["title"] == "[AI review] Approve issue_refund"
    assert f"|order_id|{order}|" in ticket["description"]
    assert langgraph.thread(thread_id)["status"] == "interrupted"
    assert langgraph.tool_runs(order) == []

    bridge.act("jira", review["ticket"]["key"], "approve")
    values = langgraph.wait_done(thread_id)
    assert langgraph.tool_runs(order) == [{"tool": "issue_refund", "args": {"order_id": order, "amount": 750}}]
    assert ai_texts(values)[-1] == f"Done. issue_refund: refunded 750 on {order}"
    delivered = bridge.wait_review(review["id"], lambda r: r["delivery"]["state"] == "delivered", what="delivery")
    assert delivered["status"] == "approved"
    wait_for(lambda: any("reached the agent" in c["body"] for c in bridge.ticket("jira", review["ticket"]["key"])["comments"]),
             what="delivery comment")


def test_edit_changes_the_arguments_the_tool_runs_with(setup, langgraph):
    bridge, assistant_id = setup
    order = order_id()
    thread_id = langgraph.start_run(assistant_id, [refund(order)])
    (review,) = opened_review(bridge, thread_id)
    bridge.act("jira", review["ticket"]["key"], "edit", json.dumps({"order_id": order, "amount": 500}))
    values = langgraph.wait_done(thread_id)
    assert langgraph.tool_runs(order) == [{"tool": "issue_refund", "args": {"order_id": order, "amount": 500}}]
    assert "refunded 500" in tool_messages(values)[-1]["content"]
    assert bridge.review(review["id"])["status"] == "edited"


def test_rejection_message_reaches_the_model_and_the_tool_never_runs(setup, langgraph):
    bridge, assistant_id = setup
    order = order_id()
    thread_id = langgraph.start_run(assistant_id, [refund(order)])
    (review,) = opened_review(bridge, thread_id)
    bridge.act("jira", review["ticket"]["key"], "reject", "Order was already refunded last week.")
    values = langgraph.wait_done(thread_id)
    assert langgraph.tool_runs(order) == []
    assert ai_texts(values)[-1] == (
        "Done. issue_refund: User rejected the tool call for `issue_refund` with reason: Order was already refunded last week."
    )


def test_respond_decision_becomes_the_tool_result(setup, langgraph):
    bridge, assistant_id = setup
    order = order_id()
    thread_id = langgraph.start_run(assistant_id, [refund(order)])
    (review,) = opened_review(bridge, thread_id)
    bridge.act("jira", review["ticket"]["key"], "respond", "Store credit of $750 issued instead.")
    values = langgraph.wait_done(thread_id)
    assert langgraph.tool_runs(order) == []
    (message,) = tool_messages(values)
    assert message["content"] == "Store credit of $750 issued instead." and message["status"] == "success"
    assert ai_texts(values)[-1] == "Done. issue_refund: Store credit of $750 issued instead."


def test_two_tool_calls_in_one_turn_get_two_decisions_in_order(setup, langgraph):
    bridge, assistant_id = setup
    order = order_id()
    email = {"name": "send_email", "args": {"to": f"{order}@example.com", "body": "Your refund is on its way."}}
    thread_id = langgraph.start_run(assistant_id, [refund(order), email])
    (review,) = opened_review(bridge, thread_id)
    actions = review["request"]["action_requests"]
    assert [a["name"] for a in actions] == ["issue_refund", "send_email"]
    assert actions[1]["allowed_decisions"] == ["approve", "reject"]
    key = review["ticket"]["key"]

    # send_email allows no "respond": the reviewer is told so on the ticket, nothing is sent.
    bridge.act("jira", key, "respond", "Tell them to wait.")
    wait_for(lambda: any("'respond' is not allowed for 'send_email'; allowed: approve, reject" in c["body"]
                         for c in bridge.ticket("jira", key)["comments"]), what="refusal comment")
    assert bridge.review(review["id"])["status"] == "open"
    assert langgraph.thread(thread_id)["status"] == "interrupted"

    bridge.act("jira", key, "edit", "issue_refund " + json.dumps({"order_id": order, "amount": 300}))
    values = langgraph.wait_done(thread_id)
    decided = bridge.review(review["id"])
    assert [d["type"] for d in decided["decision"]["decisions"]] == ["edit", "approve"]
    assert sorted(langgraph.tool_runs(order), key=lambda r: r["tool"]) == [  # parallel tool tasks: any order
        {"tool": "issue_refund", "args": {"order_id": order, "amount": 300}},
        {"tool": "send_email", "args": {"to": f"{order}@example.com", "body": "Your refund is on its way."}},
    ]
    assert f"send_email: emailed {order}@example.com" in ai_texts(values)[-1] and "refunded 300" in ai_texts(values)[-1]


def test_per_call_mode_gets_one_review_per_tool_call(tmp_path, langgraph):
    bridge, assistant_id = watching(tmp_path, langgraph, graph="agent_per_call")
    bridge.start()
    try:
        order = order_id()
        email = {"name": "send_email", "args": {"to": f"{order}@example.com", "body": "Refunded."}}
        thread_id = langgraph.start_run(assistant_id, [refund(order), email])
        first, second = sorted(opened_review(bridge, thread_id, count=2), key=lambda r: r["request"]["action_requests"][0]["name"])
        assert first["request"]["action_requests"][0]["name"] == "issue_refund"
        assert second["request"]["action_requests"][0]["allowed_decisions"] == ["approve", "reject"]
        schema = first["request"]["action_requests"][0]["args_schema"]
        assert schema["required"] == ["order_id", "amount"]  # from the interrupt's response_schema

        # An edit that breaks the tool's schema is refused on the ticket, not sent.
        bridge.act("jira", first["ticket"]["key"], "edit", json.dumps({"order_id": order, "amount": "lots"}))
        wait_for(lambda: any("do not fit 'issue_refund'" in c["body"] for c in bridge.ticket("jira", first["ticket"]["key"])["comments"]),
                 what="schema refusal")
        bridge.act("jira", second["ticket"]["key"], "reject", "No email, we call the customer.")
        bridge.wait_review(second["id"], lambda r: r["delivery"]["state"] == "delivered", what="second delivered")
        assert langgraph.thread(thread_id)["status"] == "interrupted"  # the refund is still waiting

        bridge.act("jira", first["ticket"]["key"], "set_field", field="status", value="In Review")
        bridge.act("jira", first["ticket"]["key"], "edit", json.dumps({"order_id": order, "amount": 120}))
        values = langgraph.wait_done(thread_id)
        assert langgraph.tool_runs(order) == [{"tool": "issue_refund", "args": {"order_id": order, "amount": 120}}]
        contents = sorted(m["content"] for m in tool_messages(values))
        assert any("refunded 120" in c for c in contents)
        assert "User rejected the tool call for `send_email` with reason: No email, we call the customer." in contents
    finally:
        bridge.stop()


def test_bridge_restart_while_the_thread_waits_loses_nothing(tmp_path, langgraph):
    bridge, assistant_id = watching(tmp_path, langgraph)
    bridge.start_process()
    try:
        order = order_id()
        thread_id = langgraph.start_run(assistant_id, [refund(order)])
        (review,) = opened_review(bridge, thread_id)
        bridge.kill()
        bridge.start_process()  # same database, config and emulators
        wait_for(lambda: len(reviews_for(bridge, thread_id)) == 1, what="the review after the restart")
        bridge.act("jira", review["ticket"]["key"], "approve")
        langgraph.wait_done(thread_id)
        assert langgraph.tool_runs(order) == [{"tool": "issue_refund", "args": {"order_id": order, "amount": 750}}]
        assert [r["id"] for r in reviews_for(bridge, thread_id)] == [review["id"]]
        assert len([t for t in bridge.tickets() if review["id"] in str(t["fields"].get("labels"))]) == 1
    finally:
        bridge.stop()


def test_a_stale_decision_fails_loudly_and_is_dead_lettered(setup, langgraph):
    bridge, assistant_id = setup
    order = order_id()
    thread_id = langgraph.start_run(assistant_id, [refund(order)])
    (review,) = opened_review(bridge, thread_id)
    target = LangGraphTarget.model_validate(review["request"]["resume"]["langgraph"])
    elsewhere = DecisionRecord(decisions=[Decision(type="reject", message="handled by phone")], decided_at=datetime.now(timezone.utc))
    resume_thread(target, elsewhere)  # someone answered the thread another way
    resume_thread(target, elsewhere)  # the same answer again (a retry) is still one resume
    langgraph.wait_done(thread_id)

    bridge.act("jira", review["ticket"]["key"], "approve")
    dead = bridge.wait_review(review["id"], lambda r: r["delivery"]["state"] == "dead", what="dead delivery")
    assert "stale decision" in dead["delivery"]["last_error"] and "PermanentError" in dead["delivery"]["last_error"]
    assert langgraph.tool_runs(order) == []
    with pytest.raises(PermanentError, match="no longer pending"):
        resume_thread(target, DecisionRecord(decisions=[Decision(type="approve")], decided_at=datetime.now(timezone.utc)))
    runs = langgraph.client.runs.list(thread_id)
    assert len([r for r in runs if (r.get("metadata") or {}).get("hitl_bridge_interrupt_id") == target.interrupt_id]) == 1
