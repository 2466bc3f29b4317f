"""End to end over real HTTP: agent -> bridge -> Jira emulator (real `jira` client) ->
reviewer acts -> signed webhook -> read-back -> decision -> signed callback to the agent."""

from __future__ import annotations

import json

import pytest

from harness import Bridge
from helpers import wait_for


@pytest.fixture
def bridge(tmp_path):
    b = Bridge(tmp_path).start()
    yield b
    b.stop()




def test_approve_reaches_the_agent_with_a_signed_callback(bridge):
    review = bridge.submit()
    assert review["status"] == "queued"
    assert review["route"]["name"] == "jira-queue"
    opened = bridge.wait_ticket(review["id"])
    assert opened["status"] == "open"
    ticket = bridge.ticket("jira", opened["ticket"]["key"])
    assert ticket["title"] == "[AI review] Refund $750 to order A-100"
    description = ticket["description"]
    for expected in ("issue_refund", "||Argument||Value||", "|order_id|A-100|", "62%", "policy allows refunds",
                     "[Order A-100|https://shop.example/orders/A-100]", "https://smith.langchain.com/r/9d3f1a52",
                     "move the issue to *Approved*", review["id"]):
        assert expected in description, expected
    assert f"hitl-{review['id']}" in ticket["fields"]["labels"]

    bridge.act("jira", opened["ticket"]["key"], "approve", "Checked the photos, fine.")
    decided = bridge.wait_status(review["id"], "approved")
    assert decided["decision"]["decisions"] == [{"type": "approve", "edited_action": None, "message": None}]
    assert decided["decision"]["reviewer"]["email"] == "alice@example.com"
    payload = bridge.verified_callback(review["id"])
    assert payload["decisions"] == [{"type": "approve"}]
    assert payload["status"] == "approved"
    delivered = bridge.wait_review(review["id"], lambda r: r["delivery"]["state"] == "delivered")
    assert delivered["delivery"]["attempts"] == 1
    wait_for(lambda: any("reached the agent" in c["body"] for c in bridge.ticket("jira", opened["ticket"]["key"])["comments"]),
             what="delivery comment on the ticket")


def test_edit_sends_the_edited_arguments(bridge):
    review = bridge.submit()
    key = bridge.wait_ticket(review["id"])["ticket"]["key"]
    bridge.act("jira", key, "edit", json.dumps({"order_id": "A-100", "amount": 500}))
    decided = bridge.wait_status(review["id"], "edited")
    payload = bridge.verified_callback(review["id"])
    assert payload["decisions"] == [{"type": "edit", "edited_action": {"name": "issue_refund", "args": {"order_id": "A-100", "amount": 500}}}]
    assert decided["decision"]["decisions"][0]["edited_action"]["args"]["amount"] == 500


def test_reject_carries_the_reviewers_message(bridge):
    review = bridge.submit()
    key = bridge.wait_ticket(review["id"])["ticket"]["key"]
    bridge.act("jira", key, "reject", "Order was already refunded last week.")
    bridge.wait_status(review["id"], "rejected")
    payload = bridge.verified_callback(review["id"])
    assert payload["decisions"] == [{"type": "reject", "message": "Order was already refunded last week."}]


def test_respond_answers_the_agent(bridge):
    review = bridge.submit()
    key = bridge.wait_ticket(review["id"])["ticket"]["key"]
    bridge.act("jira", key, "respond", "Ask the customer for a photo of the label first.")
    bridge.wait_status(review["id"], "responded")
    payload = bridge.verified_callback(review["id"])
    assert payload["decisions"] == [{"type": "respond", "message": "Ask the customer for a photo of the label first."}]


def test_cancel_closes_the_ticket_with_a_comment(bridge):
    review = bridge.submit()
    key = bridge.wait_ticket(review["id"])["ticket"]["key"]
    with bridge.client() as client:
        response = client.post(f"/v1/reviews/{review['id']}/cancel")
    assert response.status_code == 200 and response.json()["status"] == "cancelled"
    ticket = wait_for(lambda: (t := bridge.ticket("jira", key)) and t["status"] == "Cancelled" and t, what="ticket cancelled")
    assert any("withdrew" in c["body"] for c in ticket["comments"])
    with bridge.client() as client:
        again = client.post(f"/v1/reviews/{review['id']}/cancel")
    assert again.status_code == 409 and again.json()["error"]["code"] == "already_final"
    # A reviewer acting on the closed ticket changes nothing.
    bridge.act("jira", key, "approve")
    assert bridge.review(review["id"])["status"] == "cancelled"
    assert not bridge.callbacks_for(review["id"])


def test_shadow_route_does_not_hold_the_agent_but_records_the_human(bridge):
    review = bridge.submit(metadata={"queue": "shadow"})
    assert review["status"] == "auto_approved"
    assert review["route"]["mode"] == "shadow"
    payload = bridge.verified_callback(review["id"])
    assert payload["decisions"] == [{"type": "approve"}]
    ticket = bridge.wait_review(review["id"], lambda r: r["ticket"] is not None, what="shadow ticket")["ticket"]
    bridge.act("jira", ticket["key"], "reject", "I would not have refunded this.")
    shadowed = bridge.wait_review(review["id"], lambda r: r["shadow_decision"] is not None, what="shadow decision")
    assert shadowed["status"] == "auto_approved"
    assert shadowed["shadow_decision"]["decisions"][0]["type"] == "reject"
    assert len(bridge.callbacks_for(review["id"])) == 1


def test_no_matching_route_auto_approves_and_says_why(bridge):
    review = bridge.submit(confidence=0.97, metadata={})
    assert review["status"] == "auto_approved"
    assert review["ticket"] is None
    assert review["decision"]["source"] == "route"
    assert "no route requires review" in review["route"]["reason"]
    assert bridge.verified_callback(review["id"])["decisions"] == [{"type": "approve"}]
    assert not [t for t in bridge.tickets("jira") if t["display"].startswith("HITL")]


def test_long_poll_returns_202_then_the_decision(bridge):
    review = bridge.submit(resume=None)
    key = bridge.wait_ticket(review["id"])["ticket"]["key"]
    with bridge.client() as client:
        pending = client.get(f"/v1/reviews/{review['id']}/decision", params={"wait": 0.3})
        assert pending.status_code == 202 and pending.json()["status"] == "open"
        bridge.act("jira", key, "approve")
        done = client.get(f"/v1/reviews/{review['id']}/decision", params={"wait": 15})
    assert done.status_code == 200
    assert done.json()["decision"]["decisions"][0]["type"] == "approve"
    assert bridge.review(review["id"])["delivery"]["state"] == "delivered"


def test_duplicate_webhooks_give_one_decision(bridge):
    review = bridge.submit()
    key = bridge.wait_ticket(review["id"])["ticket"]["key"]
    emulator = bridge.emulators["jira"].emulator
    bridge.act("jira", key, "approve")
    bridge.wait_status(review["id"], "approved")
    status_hooks = wait_for(lambda: [d for d in emulator.webhooks.deliveries if '"status"' in d.body and key in d.body and d.status], what="webhook")
    import httpx2

    for delivery in status_hooks:
        again = httpx2.post(delivery.url, content=delivery.body.encode(), headers=delivery.headers)
        assert again.status_code == 202 and again.json()["duplicate"] == 1
    with bridge.client("admin") as client:
        events = client.get("/v1/audit", params={"review_id": review["id"]}).json()["items"]
    assert [e["kind"] for e in events].count("review.decided") == 1
    wait_for(lambda: bridge.review(review["id"])["delivery"]["state"] == "delivered", what="delivery")
    assert len(bridge.callbacks_for(review["id"])) == 1


def test_idempotency_key_returns_the_same_review(bridge):
    with bridge.client() as client:
        created = client.post("/v1/reviews", json=bridge.review_body(), headers={"Idempotency-Key": "order-A-100"})
        again = client.post("/v1/reviews", json=bridge.review_body(), headers={"Idempotency-Key": "order-A-100"})
        other = client.post("/v1/reviews", json=bridge.review_body(title="Something else"), headers={"Idempotency-Key": "order-A-100"})
    first = created.json()
    assert created.status_code == 201 and created.headers["content-type"] == "application/json"
    assert created.headers["location"] == f"/v1/reviews/{first['id']}" and first["status"] == "queued"
    assert again.status_code == 200 and again.json()["id"] == first["id"]
    assert again.headers["location"] == created.headers["location"]
    assert other.status_code == 409 and other.json()["error"]["code"] == "idempotency_conflict"
    wait_for(lambda: bridge.review(first["id"])["ticket"], what="ticket")
    assert len([t for t in bridge.tickets() if first["id"] in str(t["fields"].get("labels"))]) == 1


def test_approved_reply_is_posted_once_on_the_origin_ticket(bridge):
    origin = next(t for t in bridge.tickets() if t["display"].startswith("SUP"))
    draft = "Hi Carol, we have refunded your order A-100. Sorry for the trouble!"
    review = bridge.submit(
        title="Reply to SUP ticket",
        action_requests=[{"name": "reply", "args": {"body": draft}}],
        origin={"connection": "jira", "ticket_id": origin["key"]},
    )
    key = bridge.wait_ticket(review["id"])["ticket"]["key"]
    bridge.act("jira", key, "approve")
    posted = bridge.wait_review(review["id"], lambda r: r["postback"]["state"] == "delivered", what="post-back")
    assert posted["status"] == "approved"
    comments = bridge.ticket("jira", origin["key"])["comments"]
    assert [c["body"] for c in comments].count(draft) == 1


def test_edited_reply_is_what_the_customer_gets(bridge):
    origin = next(t for t in bridge.tickets() if t["display"].startswith("SUP"))
    review = bridge.submit(
        title="Reply",
        action_requests=[{"name": "reply", "args": {"body": "Refund done."}}],
        origin={"connection": "jira", "ticket_id": origin["key"]},
    )
    key = bridge.wait_ticket(review["id"])["ticket"]["key"]
    bridge.act("jira", key, "edit", "Hi Carol, your refund of $750 is on its way.")
    bridge.wait_review(review["id"], lambda r: r["postback"]["state"] == "delivered", what="post-back")
    bodies = [c["body"] for c in bridge.ticket("jira", origin["key"])["comments"]]
    assert "Hi Carol, your refund of $750 is on its way." in bodies
    assert "Refund done." not in bodies


def test_sample_rate_sends_a_share_to_humans_and_lets_the_rest_through(tmp_path):
    routes = """
routes:
  - name: refunds-canary
    when: "'issue_refund' in action_names"
    mapping: jira_review
    sample: 0.5
"""
    canary = Bridge(tmp_path, routes=routes).start()
    try:
        reviews = [canary.submit(metadata={}, resume=None) for _ in range(24)]
    finally:
        canary.stop()
    routed = [r for r in reviews if r["route"]["name"] == "refunds-canary"]
    passed = [r for r in reviews if r["route"]["name"] is None]
    assert routed and passed and len(routed) + len(passed) == 24
    assert all(r["status"] == "queued" for r in routed)
    assert all(r["status"] == "auto_approved" and "no route requires review" in r["route"]["reason"] for r in passed)


def test_decisions_at_once_on_a_fresh_bridge_ask_jira_who_the_bridge_is_once(tmp_path, monkeypatch):
    """Worker threads creating tickets and reading decisions back at the same moment share
    one answer to "who is the bridge here" (it tells the bridge's own changes and comments
    apart): one call, not one per thread, against a rate-limited API."""
    from connectors.emulators.jira import JiraEmulator

    asked = []
    plain = JiraEmulator._r_myself
    monkeypatch.setattr(JiraEmulator, "_r_myself", lambda self, *a: asked.append(1) or plain(self, *a))
    bridge = Bridge(tmp_path, worker={"concurrency": 8}).start()
    try:
        reviews = [bridge.submit() for _ in range(8)]
        keys = [bridge.wait_ticket(r["id"])["ticket"]["key"] for r in reviews]
        for key in keys:
            bridge.act("jira", key, "approve")
        for review in reviews:
            assert bridge.verified_callback(review["id"])["status"] == "approved"
        assert len(asked) == 1
    finally:
        bridge.stop()
