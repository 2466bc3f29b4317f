"""Decisions are checked before anything is sent; refusals are answered on the ticket;
upstream faults delay work without losing or duplicating it."""

from __future__ import annotations


import pytest

from harness import Bridge, mapping_variant, shipped_mapping
from helpers import wait_for

JIRA = shipped_mapping("jira_review")


ROUTES = """
routes:
  - {name: strict, when: "metadata.queue == 'strict'", mapping: strict_review}
  - {name: broken, when: "metadata.queue == 'broken'", mapping: broken_review}
  - {name: timed, when: "metadata.queue == 'timed'", mapping: timed_review}
  - {name: jira-queue, when: "metadata.queue == 'jira'", mapping: jira_review}
"""


@pytest.fixture(scope="module")
def bridge(tmp_path_factory):
    broken_fields = {**JIRA["ticket"]["fields"], "customfield_99999": "x"}
    b = Bridge(
        tmp_path_factory.mktemp("decisions"),
        routes=ROUTES,
        mappings={
            "strict_review": mapping_variant("jira_review", "strict_review", reviewers={"allow": ["bob@example.com"]}),
            "broken_review": mapping_variant("jira_review", "broken_review", ticket={"fields": broken_fields}),
            "timed_review": mapping_variant("jira_review", "timed_review", sla={"expire_after_seconds": 1, "on_expire": "reject", "message": "Nobody decided in time."}),
        },
    ).start()
    yield b
    b.stop()






def test_unlisted_reviewer_is_refused_on_the_ticket_and_the_review_stays_open(bridge):
    review = bridge.submit(metadata={"queue": "strict"})
    key = bridge.wait_ticket(review["id"])["ticket"]["key"]
    bridge.act("jira", key, "approve", user="alice")
    bridge.wait_comment("jira", key, "alice@example.com is not allowed to decide")
    assert bridge.review(review["id"])["status"] == "open"
    bridge.act("jira", key, "comment", "Moving back for Bob", user="alice")
    bridge.act("jira", key, "reject", "Not with this evidence.", user="bob")
    decided = bridge.wait_status(review["id"], "rejected")
    assert decided["decision"]["reviewer"]["email"] == "bob@example.com"


def test_requester_cannot_approve_their_own_review(bridge):
    review = bridge.submit(requested_by="alice@example.com")
    key = bridge.wait_ticket(review["id"])["ticket"]["key"]
    bridge.act("jira", key, "approve", user="alice")
    bridge.wait_comment("jira", key, "four-eyes")
    assert bridge.review(review["id"])["status"] == "open"
    assert not bridge.callbacks_for(review["id"])


def test_edit_that_is_not_allowed_is_refused(bridge):
    review = bridge.submit(allowed_decisions=["approve", "reject"])
    key = bridge.wait_ticket(review["id"])["ticket"]["key"]
    bridge.act("jira", key, "edit", '{"order_id": "A-100", "amount": 1}')
    bridge.wait_comment("jira", key, "'edit' is not allowed for 'issue_refund'; allowed: approve, reject")
    assert bridge.review(review["id"])["status"] == "open"


def test_edit_must_fit_the_tools_schema_and_keep_its_name(bridge):
    schema = {"type": "object", "properties": {"order_id": {"type": "string"}, "amount": {"type": "number", "maximum": 1000}},
              "required": ["order_id", "amount"], "additionalProperties": False}
    review = bridge.submit(action_requests=[{"name": "issue_refund", "args": {"order_id": "A-100", "amount": 750}, "args_schema": schema}])
    key = bridge.wait_ticket(review["id"])["ticket"]["key"]
    bridge.act("jira", key, "edit", '{"order_id": "A-100", "amount": 5000}')
    bridge.wait_comment("jira", key, "do not fit 'issue_refund': amount: 5000 is greater than the maximum of 1000")
    bridge.act("jira", key, "comment", "trying again", user="bob")
    bridge.act("jira", key, "edit", '{"name": "delete_account", "args": {}}', user="bob")
    bridge.wait_comment("jira", key, "may not change the tool name")
    bridge.act("jira", key, "edit", '{"order_id": "A-100", "amount": 400}', user="bob")
    decided = bridge.wait_status(review["id"], "edited")
    assert decided["decision"]["decisions"][0]["edited_action"] == {"name": "issue_refund", "args": {"order_id": "A-100", "amount": 400}}


def test_rate_limit_burst_is_retried_without_a_duplicate_ticket(bridge):
    jira = bridge.emulators["jira"].emulator
    jira.settings.faults = [{"status": 429, "times": 3, "retry_after": 1, "method": "POST", "path_prefix": "/rest/api/2/issue"}]
    review = bridge.submit()
    opened = bridge.wait_ticket(review["id"])
    assert opened["status"] == "open"
    assert len([t for t in bridge.tickets() if f"hitl-{review['id']}" in t["fields"]["labels"]]) == 1
    with bridge.client("admin") as client:
        kinds = [e["kind"] for e in client.get("/v1/audit", params={"review_id": review["id"]}).json()["items"]]
    assert kinds.count("ticket.created") == 1


def test_a_mapping_the_project_cannot_take_fails_with_its_error(bridge):
    review = bridge.submit(metadata={"queue": "broken"})
    failed = bridge.wait_status(review["id"], "failed")
    assert "customfield_99999" in failed["error"]["message"]
    assert failed["ticket"] is None


def test_sla_expiry_applies_on_expire_once(bridge):
    review = bridge.submit(metadata={"queue": "timed"})
    key = bridge.wait_ticket(review["id"])["ticket"]["key"]
    expired = bridge.wait_status(review["id"], "expired")
    assert expired["decision"]["source"] == "expiry"
    assert expired["decision"]["decisions"] == [{"type": "reject", "edited_action": None, "message": "Nobody decided in time."}]
    bridge.wait_comment("jira", key, "Nobody decided in time.")
    wait_for(lambda: len(bridge.callbacks_for(review["id"])) == 1, what="one callback")
    bridge.act("jira", key, "approve", user="bob")
    import time

    time.sleep(0.5)
    assert bridge.review(review["id"])["status"] == "expired"
    assert len(bridge.callbacks_for(review["id"])) == 1
