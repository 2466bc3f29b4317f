"""Decisions are reversible only by a new, audited decision: an admin's reversal reaches
the agent as a new version (its own webhook-id, signed), the audit trail keeps both
decisions and still verifies, the ticket says who reversed it and why, and a LangGraph
thread that was resumed already is recorded as not deliverable instead of failing forever."""

from __future__ import annotations

import json

import pytest
from standardwebhooks import Webhook
from typer.testing import CliRunner

from bridge.cli import app as cli
from bridge.config import LangGraphDeployment
from bridge.langgraph import AlreadyResumed, resume_thread
from bridge.schemas import DecisionRecord, LangGraphTarget
from harness import CALLBACK_SECRET, Bridge
from helpers import wait_for


@pytest.fixture(scope="module")
def bridge(tmp_path_factory):
    b = Bridge(tmp_path_factory.mktemp("reversal")).start()
    b.config = b.config_file()
    yield b
    b.stop()


def decided(bridge: Bridge, action: str = "approve", **overrides) -> dict:
    """A review a reviewer decided on its Jira ticket."""
    review = bridge.submit(**overrides)
    key = bridge.wait_ticket(review["id"])["ticket"]["key"]
    bridge.act("jira", key, action, "Looks fine." if action != "approve" else None)
    return bridge.wait_review(review["id"], lambda r: r["decision"] is not None, what="a decision")


def reverse(bridge: Bridge, review_id: str, decisions: list[dict], reason: str = "Refund policy changed", key: str = "admin"):
    with bridge.client(key) as client:
        return client.post(f"/v1/reviews/{review_id}/decision", json={"decisions": decisions, "reason": reason})


def callback(bridge: Bridge, review_id: str, webhook_id: str) -> dict:
    """The agent's callback with this webhook-id, its Standard Webhooks signature checked."""
    hit = wait_for(lambda: next((r for r in bridge.callbacks_for(review_id) if r.headers["webhook-id"] == webhook_id), None),
                   what=f"callback {webhook_id}")
    return Webhook(CALLBACK_SECRET).verify(hit.body, hit.headers)


def audit_events(bridge: Bridge, review_id: str) -> list[dict]:
    with bridge.client("admin") as client:
        return client.get("/v1/audit", params={"review_id": review_id}).json()["items"]


def test_reversal_reaches_the_agent_as_a_new_version_and_the_audit_keeps_both(bridge):
    review = decided(bridge)
    assert review["status"] == "approved" and review["decision"]["version"] == 1
    first = bridge.verified_callback(review["id"])
    assert first["type"] == "review.decided" and first["version"] == 1

    response = reverse(bridge, review["id"], [{"type": "reject", "message": "Fraud pattern found after approval"}])
    assert response.status_code == 200, response.text
    reversed_ = response.json()
    assert reversed_["status"] == "rejected"
    assert reversed_["decision"]["version"] == 2 and reversed_["decision"]["supersedes"] == 1
    assert reversed_["decision"]["source"] == "reversal" and reversed_["decision"]["reason"] == "Refund policy changed"

    second = callback(bridge, review["id"], f"msg_{review['id']}_v2")
    assert second["type"] == "review.decision_reversed"
    assert (second["version"], second["supersedes"], second["status"]) == (2, 1, "rejected")
    assert second["decisions"] == [{"type": "reject", "message": "Fraud pattern found after approval"}]
    assert second["reason"] == "Refund policy changed"
    assert len(bridge.callbacks_for(review["id"])) == 2  # the first version is not sent again

    delivered = bridge.wait_review(review["id"], lambda r: r["delivery"]["state"] == "delivered", what="v2 delivered")
    assert delivered["decision"]["version"] == 2
    with bridge.client("reader") as client:
        polled = client.get(f"/v1/reviews/{review['id']}/decision").json()
    assert polled["status"] == "rejected" and polled["decision"]["version"] == 2

    events = audit_events(bridge, review["id"])
    decided_event = next(e for e in events if e["kind"] == "review.decided")
    reversal = next(e for e in events if e["kind"] == "decision.reversed")
    assert decided_event["data"]["decision"]["decisions"] == [{"type": "approve", "edited_action": None, "message": None}]
    assert reversal["actor"] == "api_key:admin" and reversal["data"]["reason"] == "Refund policy changed"
    assert reversal["data"]["before"]["decisions"][0]["type"] == "approve" and reversal["data"]["before"]["version"] == 1
    assert reversal["data"]["after"]["decisions"][0]["type"] == "reject" and reversal["data"]["after"]["version"] == 2
    assert [e["data"].get("version") for e in events if e["kind"] == "decision.delivered"] == [1, 2]

    bridge.wait_comment("jira", review["ticket"]["key"], "the decision was reversed by api_key:admin")
    comment = next(c for c in bridge.comments("jira", review["ticket"]["key"]) if "reversed by" in c)
    assert "approved -> rejected" in comment and "Refund policy changed" in comment
    verified = CliRunner().invoke(cli, ["audit", "verify", "--config", str(bridge.config)])
    assert verified.exit_code == 0 and "chain intact" in verified.output


def test_reversing_twice_gives_version_3(bridge):
    review = decided(bridge, "reject")
    assert reverse(bridge, review["id"], [{"type": "approve"}]).json()["decision"]["version"] == 2
    edit = {"type": "edit", "edited_action": {"name": "issue_refund", "args": {"order_id": "A-100", "amount": 300}}}
    third = reverse(bridge, review["id"], [edit], reason="Partial refund agreed with the customer")
    assert third.status_code == 200, third.text
    assert third.json()["status"] == "edited"
    assert (third.json()["decision"]["version"], third.json()["decision"]["supersedes"]) == (3, 2)
    payload = callback(bridge, review["id"], f"msg_{review['id']}_v3")
    assert payload["version"] == 3 and payload["supersedes"] == 2
    assert payload["decisions"] == [edit]
    kinds = bridge.audit_kinds(review["id"])
    assert kinds.count("decision.reversed") == 2 and kinds.count("review.decided") == 1


def test_long_polling_agent_gets_the_newest_version(bridge):
    review = decided(bridge, resume=None)
    with bridge.client() as client:
        assert client.get(f"/v1/reviews/{review['id']}/decision").json()["decision"]["version"] == 1
        assert reverse(bridge, review["id"], [{"type": "reject", "message": "no"}]).status_code == 200
        assert bridge.review(review["id"])["delivery"]["state"] == "pending"  # the new version is not handed over yet
        polled = client.get(f"/v1/reviews/{review['id']}/decision", params={"wait": 1})
    assert polled.status_code == 200 and polled.json()["decision"]["version"] == 2
    assert bridge.review(review["id"])["delivery"]["state"] == "delivered"


def test_only_admins_may_reverse(bridge):
    review = decided(bridge)
    for key in ("agent", "reader"):
        refused = reverse(bridge, review["id"], [{"type": "reject", "message": "no"}], key=key)
        assert refused.status_code == 403 and refused.json()["error"]["code"] == "missing_scope"
    assert bridge.review(review["id"])["decision"]["version"] == 1


def test_an_undecided_or_unknown_review_cannot_be_reversed(bridge):
    review = bridge.submit()
    bridge.wait_ticket(review["id"])
    conflict = reverse(bridge, review["id"], [{"type": "reject", "message": "no"}])
    assert conflict.status_code == 409 and conflict.json()["error"]["code"] == "not_decided"
    assert "is open: only a decided review can be reversed" in conflict.json()["error"]["message"]
    missing = reverse(bridge, "rev_" + "0" * 28, [{"type": "approve"}])
    assert missing.status_code == 404 and "no review" in missing.json()["error"]["message"]
    assert "decision.reversed" not in bridge.audit_kinds(review["id"])


@pytest.mark.parametrize("decisions, message", [
    ([{"type": "respond", "message": "hi"}], "'respond' is not allowed for 'issue_refund'; allowed: approve, edit, reject"),
    ([{"type": "edit", "edited_action": {"name": "wire_money", "args": {}}}],
     "an edit may not change the tool name ('issue_refund' to 'wire_money')"),
    ([{"type": "edit", "edited_action": {"name": "issue_refund", "args": {"order_id": "A-100", "amount": 5000}}}],
     "do not fit 'issue_refund': amount: 5000 is greater than the maximum of 1000"),
    ([{"type": "approve"}, {"type": "approve"}], "the review asks about 1 action(s) but 2 decision(s) were given"),
])
def test_a_decision_that_does_not_fit_is_a_clear_422(bridge, decisions, message):
    schema = {"type": "object", "properties": {"amount": {"type": "number", "maximum": 1000}}}
    review = decided(bridge, allowed_decisions=["approve", "edit", "reject"],
                     action_requests=[{"name": "issue_refund", "args": {"order_id": "A-100", "amount": 750}, "args_schema": schema}])
    response = reverse(bridge, review["id"], decisions)
    assert response.status_code == 422 and response.json()["error"]["code"] == "invalid_decision"
    assert message in response.json()["error"]["message"]
    assert bridge.review(review["id"])["decision"]["version"] == 1


def test_a_reason_is_required(bridge):
    review = decided(bridge)
    response = reverse(bridge, review["id"], [{"type": "reject", "message": "no"}], reason="  ")
    assert response.status_code == 422 and response.json()["error"]["message"].startswith("reason:")


def test_cli_reverse(bridge):
    review = decided(bridge)
    result = CliRunner().invoke(cli, ["reviews", "reverse", review["id"], "--decision", "reject", "--message", "Duplicate order",
                                      "--reason", "Found a duplicate", "--config", str(bridge.config)])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output.strip().splitlines()[-1]) == {"id": review["id"], "status": "rejected", "version": 2}
    payload = callback(bridge, review["id"], f"msg_{review['id']}_v2")
    assert payload["decisions"] == [{"type": "reject", "message": "Duplicate order"}]
    reversal = next(e for e in audit_events(bridge, review["id"]) if e["kind"] == "decision.reversed")
    assert reversal["actor"].startswith("cli")
    undecided = bridge.submit()
    refused = CliRunner().invoke(cli, ["reviews", "reverse", undecided["id"], "--decision", "approve", "--reason", "x",
                                       "--config", str(bridge.config)])
    assert refused.exit_code == 1 and "only a decided review can be reversed" in refused.output


# ----- a LangGraph thread resumes once -------------------------------------------------------


def test_a_reversal_for_a_resumed_langgraph_thread_is_recorded_not_deliverable(tmp_path):
    from lg_support import start_langgraph

    langgraph = start_langgraph(tmp_path / "lg")
    try:
        assistant_id = langgraph.assistant("agent")
        bridge = Bridge(tmp_path)
        deployment = LangGraphDeployment(name="agents", url=langgraph.url, assistant_id=assistant_id, poll_seconds=0.2,
                                         metadata={"queue": "jira"})
        bridge.settings = bridge.settings.model_copy(update={"langgraph": [deployment]})
        bridge.start()
        try:
            order = "A-rev-1"
            thread_id = langgraph.start_run(assistant_id, [{"name": "issue_refund", "args": {"order_id": order, "amount": 750}}])
            with bridge.client() as client:
                review = wait_for(lambda: next((r for r in client.get("/v1/reviews").json()["items"]
                                                if r["ticket"] and r["request"]["resume"]["langgraph"]["thread_id"] == thread_id), None),
                                  timeout=20, what="the thread's review")
            bridge.act("jira", review["ticket"]["key"], "approve")
            langgraph.wait_done(thread_id)
            bridge.wait_review(review["id"], lambda r: r["delivery"]["state"] == "delivered", what="v1 delivered")

            assert reverse(bridge, review["id"], [{"type": "reject", "message": "too late?"}]).status_code == 200
            after = bridge.wait_review(review["id"], lambda r: r["delivery"]["state"] == "undeliverable", what="undeliverable")
            assert "cannot be resumed twice" in after["delivery"]["last_error"]
            assert after["status"] == "rejected" and after["decision"]["version"] == 2
            assert "decision.undeliverable" in bridge.audit_kinds(review["id"])
            bridge.wait_comment("jira", review["ticket"]["key"], "could not be sent to the agent")
            assert langgraph.tool_runs(order) == [{"tool": "issue_refund", "args": {"order_id": order, "amount": 750}}]
            runs = langgraph.client.runs.list(thread_id)
            assert len([r for r in runs if (r.get("metadata") or {}).get("hitl_bridge_review_id") == review["id"]]) == 1
            # the thread itself says so too: its run is tagged with the review and the version it resumed
            target = LangGraphTarget.model_validate(review["request"]["resume"]["langgraph"])
            record = DecisionRecord.model_validate(after["decision"])
            with pytest.raises(AlreadyResumed, match="was resumed with version 1 of this review's decision"):
                resume_thread(target, record, review_id=review["id"])
        finally:
            bridge.stop()
    finally:
        langgraph.stop()
