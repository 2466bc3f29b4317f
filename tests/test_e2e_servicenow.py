"""End to end over real HTTP with ServiceNow: agent -> bridge -> ServiceNow emulator (real
`pysnow` client, Table API) -> reviewer acts -> the Business Rule's signed notification ->
read-back through the Table API -> decision -> signed callback to the agent."""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path

import httpx2
import pytest
import yaml

from connectors.signing import hmac_sha256_b64
from harness import Bridge
from helpers import wait_for

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = yaml.safe_load((ROOT / "mappings" / "servicenow_review.yaml").read_text())

ROUTES = """
routes:
  - {name: servicenow-state, when: "metadata.queue == 'servicenow-state'", mapping: servicenow_state}
  - {name: servicenow-reply, when: "metadata.queue == 'servicenow-reply'", mapping: servicenow_reply}
  - {name: servicenow-queue, when: "metadata.queue == 'servicenow'", mapping: servicenow_review}
"""

# Decide by `state` on an incident, as docs/servicenow.md shows: codes and labels both work.
STATE_MAPPING = {
    **SAMPLE,
    "name": "servicenow_state",
    "ticket": {
        "fields": {
            "__table": "incident",
            "short_description": "[AI review] {{ review.title }}",
            "description": SAMPLE["ticket"]["fields"]["description"],
            "assignment_group": "AI Review",
            "urgency": "2",
            "impact": "3",
        },
        "comment": SAMPLE["ticket"]["comment"],
    },
    "decision": {"field": "state", "values": {"6": "approve", "Resolved": "approve", "8": "reject", "Canceled": "reject"}},
    "on_cancel": {"fields": {"status": "Canceled"}, "comment": "The agent withdrew this review; nothing to decide."},
    "on_decided": {"fields": {}},
}

# The sample mapping, but the origin incident is resolved once the reply is posted.
REPLY_MAPPING = {**SAMPLE, "name": "servicenow_reply", "reply": {"public": True, "fields": {"status": "Resolved"}}}


@pytest.fixture(scope="module")
def bridge(tmp_path_factory):
    b = Bridge(
        tmp_path_factory.mktemp("servicenow"),
        vendors=("servicenow",),
        routes=ROUTES,
        mappings={"servicenow_state": yaml.safe_dump(STATE_MAPPING), "servicenow_reply": yaml.safe_dump(REPLY_MAPPING)},
    ).start()
    yield b
    b.stop()


def emulator(bridge: Bridge):
    return bridge.emulators["servicenow"].emulator


def submit(bridge: Bridge, queue: str = "servicenow", **overrides) -> dict:
    return bridge.submit(metadata={"queue": queue, "customer_tier": "gold"}, **overrides)






def records_for(bridge: Bridge, review_id: str) -> list[dict]:
    return [t for t in bridge.tickets("servicenow") if t["fields"].get("correlation_id") == review_id]


def notification(bridge: Bridge, key: str, *, secret: str, timestamp: int | None = None, changes=("approval",)) -> tuple[bytes, dict]:
    """A notification exactly as the Business Rule builds it, signed with ``secret``."""
    table, _, sys_id = key.rpartition(":")
    record = bridge.ticket("servicenow", key)
    stamp = str(timestamp if timestamp is not None else int(time.time()))
    body = json.dumps({
        "event_id": uuid.uuid4().hex, "table": table or "u_ai_review", "sys_id": sys_id, "number": record["display"],
        "timestamp": stamp, "changes": list(changes), "updated_by": "alice",
    }, separators=(",", ":")).encode()
    headers = {"Content-Type": "application/json", "X-Hitl-Timestamp": stamp,
               "X-Hitl-Signature": hmac_sha256_b64(secret, stamp.encode() + b"." + body)}
    return body, headers


# ----- decisions -------------------------------------------------------------------------


def test_approve_by_approval_field_reaches_the_agent_with_the_reviewer(bridge):
    review = submit(bridge)
    assert review["route"]["name"] == "servicenow-queue"
    opened = bridge.wait_ticket(review["id"])
    assert opened["status"] == "open"
    assert opened["ticket"]["connection"] == "servicenow"
    assert opened["ticket"]["display"].startswith("AIR")
    [record] = records_for(bridge, review["id"])
    fields = record["fields"]
    assert record["key"] == opened["ticket"]["key"] and fields["table"] == "u_ai_review"
    assert fields["approval"] == "requested" and fields["correlation_display"] == "hitl-bridge"
    assert fields["u_review_id"] == review["id"] and fields["urgency"] == "2"
    for expected in ("PROPOSED ACTION 1: issue_refund", "order_id : A-100", "62%", "policy allows refunds",
                     "https://smith.langchain.com/r/9d3f1a52", 'set Approval to "Approved"'):
        assert expected in record["description"], expected
    [opening] = record["comments"]
    assert not opening["public"] and opening["author"] == "hitl.bridge" and "[code]<table" in opening["body"]

    bridge.act("servicenow", record["key"], "approve", user="bob")
    decided = bridge.wait_status(review["id"], "approved")
    assert decided["decision"]["decisions"] == [{"type": "approve", "edited_action": None, "message": None}]
    assert decided["decision"]["reviewer"] == {"id": "bob", "name": "Bob Approver", "email": "bob@example.com"}
    assert decided["decision"]["ticket"]["key"] == record["key"]
    payload = bridge.verified_callback(review["id"])
    assert payload["decisions"] == [{"type": "approve"}] and payload["status"] == "approved"
    assert payload["decision"]["reviewer"]["email"] == "bob@example.com"
    delivered = bridge.wait_review(review["id"], lambda r: r["delivery"]["state"] == "delivered", what="delivery")
    assert delivered["delivery"]["attempts"] == 1
    # on_decided closes the record; the bridge's own notes are work notes, never customer-visible.
    closed = wait_for(lambda: (t := bridge.ticket("servicenow", record["key"])) and t["status"] == "Closed Complete" and t,
                      what="record closed complete")
    wait_for(lambda: any("reached the agent" in c["body"] for c in bridge.ticket("servicenow", record["key"])["comments"]),
             what="delivery work note")
    assert not [c for c in bridge.ticket("servicenow", record["key"])["comments"] if c["public"]]
    assert closed["fields"]["approval"] == "approved"


def test_approve_by_state_on_an_incident(bridge):
    review = submit(bridge, "servicenow-state")
    key = bridge.wait_ticket(review["id"])["ticket"]["key"]
    assert key.startswith("incident:")
    record = bridge.ticket("servicenow", key)
    assert record["display"].startswith("INC") and record["status"] == "New"
    # A state the mapping does not name leaves the review open.
    bridge.act("servicenow", key, "set_field", field="state", value="2", user="alice")
    time.sleep(0.5)
    assert bridge.review(review["id"])["status"] == "open"
    bridge.act("servicenow", key, "set_field", field="state", value="6", user="alice")
    decided = bridge.wait_status(review["id"], "approved")
    assert decided["decision"]["reviewer"] == {"id": "alice", "name": "Alice Reviewer", "email": "alice@example.com"}
    assert bridge.verified_callback(review["id"])["decisions"] == [{"type": "approve"}]


def test_reject_carries_the_newest_work_note(bridge):
    review = submit(bridge)
    key = bridge.wait_ticket(review["id"])["ticket"]["key"]
    bridge.act("servicenow", key, "comment", "Looking into it.", user="alice")
    bridge.act("servicenow", key, "customer_reply", "Any news on my refund?")  # customer-visible: not the message
    bridge.act("servicenow", key, "reject", "Order was already refunded last week.", user="alice")
    decided = bridge.wait_status(review["id"], "rejected")
    payload = bridge.verified_callback(review["id"])
    assert payload["decisions"] == [{"type": "reject", "message": "Order was already refunded last week."}]
    assert decided["decision"]["reviewer"]["name"] == "Alice Reviewer"


def test_respond_answers_the_agent(bridge):
    review = submit(bridge)
    key = bridge.wait_ticket(review["id"])["ticket"]["key"]
    bridge.act("servicenow", key, "respond", "Ask the customer for a photo of the label first.")
    bridge.wait_status(review["id"], "responded")
    payload = bridge.verified_callback(review["id"])
    assert payload["decisions"] == [{"type": "respond", "message": "Ask the customer for a photo of the label first."}]


def test_edit_via_work_note_sends_the_edited_arguments(bridge):
    review = submit(bridge)
    key = bridge.wait_ticket(review["id"])["ticket"]["key"]
    bridge.act("servicenow", key, "edit", json.dumps({"order_id": "A-100", "amount": 500}))
    note = bridge.ticket("servicenow", key)["comments"][-1]
    assert note["body"].startswith("/edit ") and not note["public"]
    decided = bridge.wait_status(review["id"], "edited")
    payload = bridge.verified_callback(review["id"])
    assert payload["decisions"] == [{"type": "edit", "edited_action": {"name": "issue_refund", "args": {"order_id": "A-100", "amount": 500}}}]
    assert decided["decision"]["decisions"][0]["edited_action"]["args"]["amount"] == 500


def test_cancel_closes_the_record_with_a_work_note(bridge):
    review = submit(bridge)
    key = bridge.wait_ticket(review["id"])["ticket"]["key"]
    with bridge.client() as client:
        response = client.post(f"/v1/reviews/{review['id']}/cancel")
    assert response.status_code == 200 and response.json()["status"] == "cancelled"
    record = wait_for(lambda: (t := bridge.ticket("servicenow", key)) and t["status"] == "Closed Skipped" and t,
                      what="record closed skipped")
    assert record["fields"]["approval"] == "cancelled"
    assert any("withdrew" in c["body"] and not c["public"] for c in record["comments"])
    bridge.act("servicenow", key, "approve")
    time.sleep(0.3)
    assert bridge.review(review["id"])["status"] == "cancelled"
    assert not bridge.callbacks_for(review["id"])


# ----- replies to the customer's own incident ------------------------------------------


def test_approved_reply_goes_into_the_origin_incidents_comments_once_then_resolves_it(bridge):
    origin = next(t for t in bridge.tickets("servicenow") if t["title"] == "Order A-100 arrived damaged")
    assert origin["status"] == "New"
    draft = "Hi Carol, we have refunded your order A-100. Sorry for the trouble!"
    review = submit(bridge, "servicenow-reply", title="Reply to the customer",
                    action_requests=[{"name": "reply", "args": {"body": draft}}],
                    origin={"connection": "servicenow", "ticket_id": origin["display"]})
    key = bridge.wait_ticket(review["id"])["ticket"]["key"]
    assert key != origin["key"]
    bridge.act("servicenow", key, "approve")
    posted = bridge.wait_review(review["id"], lambda r: r["postback"]["state"] == "delivered", what="post-back")
    assert posted["status"] == "approved" and posted["postback"]["attempts"] == 1
    after = bridge.ticket("servicenow", origin["key"])
    replies = [c for c in after["comments"] if c["body"] == draft]
    assert len(replies) == 1
    assert replies[0]["public"] and replies[0]["author"] == "hitl.bridge"  # comments, never work_notes
    assert after["status"] == "Resolved" and after["fields"]["state"] == "6"
    # The review record itself got no customer-visible text.
    assert not [c for c in bridge.ticket("servicenow", key)["comments"] if c["public"]]
    assert bridge.audit_kinds(review["id"]).count("reply.posted") == 1


def test_edited_reply_is_what_the_customer_gets(bridge):
    origin = next(t for t in bridge.tickets("servicenow") if t["title"] == "Cannot log in to my account")
    review = submit(bridge, title="Reply", action_requests=[{"name": "reply", "args": {"body": "Reset done."}}],
                    origin={"connection": "servicenow", "ticket_id": origin["key"]})
    key = bridge.wait_ticket(review["id"])["ticket"]["key"]
    bridge.act("servicenow", key, "edit", "Hi Carol, we sent a new reset link; check your spam folder too.")
    bridge.wait_review(review["id"], lambda r: r["postback"]["state"] == "delivered", what="post-back")
    after = bridge.ticket("servicenow", origin["key"])
    public = [c["body"] for c in after["comments"] if c["public"]]
    assert "Hi Carol, we sent a new reset link; check your spam folder too." in public
    assert "Reset done." not in [c["body"] for c in after["comments"]]
    assert after["status"] == "New"  # the sample mapping moves nothing after posting


# ----- notifications -----------------------------------------------------------------------


def test_duplicate_notifications_give_one_decision(bridge):
    review = submit(bridge)
    key = bridge.wait_ticket(review["id"])["ticket"]["key"]
    bridge.act("servicenow", key, "approve")
    bridge.wait_status(review["id"], "approved")
    hooks = wait_for(lambda: [d for d in emulator(bridge).webhooks.deliveries
                              if key in d.body and '"approval"' in d.body and d.status == 202], what="notification")
    for delivery in hooks:
        again = httpx2.post(delivery.url, content=delivery.body.encode(), headers=delivery.headers)
        assert again.status_code == 202 and again.json()["duplicate"] == 1
    assert bridge.audit_kinds(review["id"]).count("review.decided") == 1
    wait_for(lambda: bridge.review(review["id"])["delivery"]["state"] == "delivered", what="delivery")
    time.sleep(0.3)
    assert len(bridge.callbacks_for(review["id"])) == 1


def test_forged_notifications_are_refused_and_change_nothing(bridge):
    review = submit(bridge)
    key = bridge.wait_ticket(review["id"])["ticket"]["key"]
    url = f"{bridge.url}/v1/webhooks/servicenow"
    secret = emulator(bridge).settings.webhook_secret
    time.sleep(0.3)  # let the opening work note's notification settle
    before = bridge.audit_kinds(review["id"])

    wrong_key, headers = notification(bridge, key, secret="not-the-secret")
    stale, stale_headers = notification(bridge, key, secret=secret, timestamp=int(time.time()) - 3600)
    good, good_headers = notification(bridge, key, secret=secret)
    tampered = good.replace(b'"approval"', b'"state"')
    for body, hdrs in ((wrong_key, headers), (stale, stale_headers), (tampered, good_headers),
                       (good, {"Content-Type": "application/json"})):
        response = httpx2.post(url, content=body, headers=hdrs)
        assert response.status_code == 401, response.text
        assert response.json()["error"]["code"] == "invalid_webhook"
    assert bridge.review(review["id"])["status"] == "open"
    assert bridge.audit_kinds(review["id"]) == before

    # A genuine notification that claims a decision only makes the bridge look: the record
    # still says "requested", so nothing is decided.
    response = httpx2.post(url, content=good, headers=good_headers)
    assert response.status_code == 202 and response.json()["accepted"] == 1
    time.sleep(0.5)
    assert bridge.review(review["id"])["status"] == "open"
    assert not bridge.callbacks_for(review["id"])
    assert bridge.audit_kinds(review["id"]) == before


# ----- faults ------------------------------------------------------------------------------


def test_rate_limit_burst_on_create_is_retried_without_a_duplicate_record(bridge):
    snow = emulator(bridge)
    snow.settings.faults = [{"status": 429, "times": 3, "retry_after": 1, "method": "POST",
                             "path_prefix": "/api/now/table/u_ai_review"}]
    try:
        review = submit(bridge)
        opened = bridge.wait_ticket(review["id"])
        assert opened["status"] == "open"
        assert all(f.times == 0 for f in snow.settings.faults)
    finally:
        snow.settings.faults = []
    assert len(records_for(bridge, review["id"])) == 1
    kinds = bridge.audit_kinds(review["id"])
    assert kinds.count("ticket.created") == 1
    bridge.act("servicenow", opened["ticket"]["key"], "approve")
    bridge.wait_status(review["id"], "approved")


@pytest.fixture
def impatient_bridge(tmp_path):
    """Its connector gives up on ServiceNow after 1.5 s, so a held response looks lost."""
    b = Bridge(tmp_path, vendors=("servicenow",), routes=ROUTES,
               mappings={"servicenow_state": yaml.safe_dump(STATE_MAPPING), "servicenow_reply": yaml.safe_dump(REPLY_MAPPING)})
    b.settings.connections["servicenow"].timeout_seconds = 1.5
    yield b.start()
    b.stop()


def test_a_lost_create_response_on_another_table_does_not_make_a_second_record(impatient_bridge):
    """The mapping puts reviews in `incident` (not the connection's table): a retried create
    must still find the record it made by correlation_id."""
    bridge = impatient_bridge
    snow = emulator(bridge)
    snow.settings = snow.settings.model_copy(update={"write_delay_ms": 3000})
    try:
        review = submit(bridge, "servicenow-state")
        wait_for(lambda: records_for(bridge, review["id"]), what="the record, stored before its response is held")
    finally:
        # A new settings object: the held request keeps its delay, later ones have none.
        snow.settings = snow.settings.model_copy(update={"write_delay_ms": 0})
    opened = bridge.wait_ticket(review["id"])
    assert opened["ticket"]["key"].startswith("incident:")
    time.sleep(0.5)
    assert len(records_for(bridge, review["id"])) == 1
    with bridge.client("admin") as client:
        events = client.get("/v1/audit", params={"review_id": review["id"]}).json()["items"]
    [created] = [e for e in events if e["kind"] == "ticket.created"]
    assert created["data"]["adopted"] is True and created["data"]["key"] == opened["ticket"]["key"]
