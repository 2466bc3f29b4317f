"""End to end over real HTTP with Zendesk: agent -> bridge -> Zendesk emulator (TLS, real
`zenpy` client) -> a reviewer acts on the ticket -> signed webhook -> read-back through the
API -> decision -> signed callback to the agent, and the approved reply to the customer.

Two review styles: the shipped mapping reviews inside the customer's own ticket (an
internal note, decided by tags); ``zendesk_ticket`` opens a separate review ticket (HTML
internal note, decided by the "AI review decision" drop-down)."""

from __future__ import annotations

import json
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import httpx2
import pytest
import yaml
from typer.testing import CliRunner

from connectors.emulators.zendesk import DECISION_FIELD_ID, EDITED_REPLY_FIELD_ID, USERS
from connectors.signing import hmac_sha256_b64
from harness import Bridge
from helpers import wait_for

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = yaml.safe_load((ROOT / "mappings" / "zendesk_review.yaml").read_text())
DECISION = f"custom_fields.{DECISION_FIELD_ID}"
EDITED = f"custom_fields.{EDITED_REPLY_FIELD_ID}"

ROUTES = """
routes:
  - {name: zendesk-ticket, when: "metadata.queue == 'zendesk-ticket'", mapping: zendesk_ticket}
  - {name: zendesk-queue, when: "metadata.queue == 'zendesk'", mapping: zendesk_review}
"""

# Separate review ticket: its own subject, tags, priority, group, assignee and custom fields,
# the sample's HTML note as an internal comment, decided by the drop-down.
TICKET_MAPPING = {
    **SAMPLE,
    "name": "zendesk_ticket",
    "description": "A separate review ticket in the AI Review group.",
    "ticket": {
        "target": "new",
        "fields": {
            "subject": "[AI review] {{ review.title }}",
            "tags": ["ai_review", "tier_{{ review.metadata.customer_tier }}"],
            "priority": "{{ 'high' if review.confidence is not none and review.confidence < 0.5 else 'normal' }}",
            "group_id": 360002,
            "assignee_id": USERS["alice"][0],
            "custom_fields": [{"id": DECISION_FIELD_ID, "value": None}],
        },
        "comment": SAMPLE["ticket"]["comment"],
    },
    "decision": {
        "field": DECISION,
        "values": {"ai_decision_approve": "approve", "ai_decision_reject": "reject", "ai_decision_respond": "respond"},
        "edit_field": EDITED,
        "edit_prefix": "/edit",
        "message_from": "internal_comment",
    },
    "on_decided": {"fields": {"status": "solved"}},
    "on_cancel": {"fields": {"status": "solved"}, "comment": "The agent withdrew this review; nothing to decide."},
    "reply": {"public": True, "fields": {"status": "pending"}},
}


@pytest.fixture(scope="module")
def bridge(tmp_path_factory):
    b = Bridge(tmp_path_factory.mktemp("zendesk"), vendors=("zendesk",), routes=ROUTES,
               mappings={"zendesk_ticket": yaml.safe_dump(TICKET_MAPPING)}).start()
    yield b
    b.stop()


# ----- helpers -----------------------------------------------------------------------


def emulator(bridge: Bridge):
    return bridge.emulators["zendesk"].emulator


def customer_ticket(bridge: Bridge, subject: str = "Refund for damaged blender") -> str:
    return emulator(bridge).open_customer_ticket(subject, "My blender (order A-100) arrived with a cracked jar. Refund please?")


def submit_reply(bridge: Bridge, origin: str, draft: str, *, queue: str = "zendesk", **overrides) -> dict:
    return bridge.submit(
        title="Reply to the customer about order A-100",
        action_requests=[{"name": "reply", "args": {"body": draft}, "description": "Draft answer to the customer"}],
        origin={"connection": "zendesk", "ticket_id": origin},
        metadata={"queue": queue, "customer_tier": "gold"},
        **overrides,
    )






def posted(bridge: Bridge, review_id: str, **kw) -> dict:
    return bridge.wait_review(review_id, lambda r: r["postback"]["state"] == "delivered", what="post-back", **kw)


def wait_clean(bridge: Bridge, key: str) -> dict:
    """on_decided ran: no decision tags, no pending marker, no edited text left."""
    def clean():
        fields = bridge.ticket("zendesk", key)["fields"]
        return not {"review_approved", "review_rejected", "review_responded", "ai_review_pending"} & set(fields["tags"]) \
            and fields[EDITED] is None and fields
    return wait_for(clean, what="decision tags removed")




def hook_body(bridge: Bridge, key: str) -> str:
    """The trigger body docs/zendesk.md recommends, for the ticket as it is now."""
    t = emulator(bridge).tickets[int(key)]
    return json.dumps({"ticket_id": key, "external_id": t["external_id"] or "", "status": t["status"],
                       "tags": " ".join(t["tags"]), "updated_at": t["updated_at"], "event": "ticket_updated"})


def post_hook(bridge: Bridge, body: str, headers: dict[str, str]) -> httpx2.Response:
    return httpx2.post(f"{bridge.url}/v1/webhooks/zendesk", content=body.encode(), headers=headers, timeout=10)


class quiet_webhooks:
    """The emulator sends no webhooks inside this block (the test sends them itself)."""

    def __init__(self, bridge: Bridge):
        self.settings = emulator(bridge).settings

    def __enter__(self):
        self.url, self.settings.webhook_url = self.settings.webhook_url, None

    def __exit__(self, *exc):
        self.settings.webhook_url = self.url


# ----- same ticket: the shipped mapping -------------------------------------------------


def test_same_ticket_approve_posts_the_draft_publicly_once_with_the_mappings_status(bridge):
    origin = customer_ticket(bridge)
    draft = "Hi Carol, we have refunded order A-100 in full. Sorry for the cracked jar!"
    review = submit_reply(bridge, origin, draft)
    opened = bridge.wait_ticket(review["id"])
    assert opened["status"] == "open" and opened["route"]["name"] == "zendesk-queue"
    assert opened["ticket"]["key"] == origin and opened["ticket"]["display"] == f"#{origin}"
    ticket = bridge.ticket("zendesk", origin)
    assert "ai_review_pending" in ticket["fields"]["tags"]
    assert ticket["title"] == "Refund for damaged blender"  # the customer's subject is kept
    note = next(c for c in ticket["comments"] if "AI draft waiting for your review" in c["body"])
    assert note["public"] is False and draft in note["body"] and review["id"] in note["body"]
    assert bridge.comments("zendesk", origin, public=True) == [ticket["description"]]  # the customer sees nothing yet

    bridge.act("zendesk", origin, "approve", "Checked the order, fine.")
    decided = bridge.wait_status(review["id"], "approved")
    assert decided["decision"]["decisions"] == [{"type": "approve", "edited_action": None, "message": None}]
    assert decided["decision"]["reviewer"]["email"] == "alice@example.com"
    payload = bridge.verified_callback(review["id"])
    assert payload["decisions"] == [{"type": "approve"}] and payload["status"] == "approved"
    assert posted(bridge, review["id"])["postback"]["attempts"] == 1
    fields = wait_clean(bridge, origin)
    assert fields["status"] == "pending"
    assert bridge.comments("zendesk", origin, public=True).count(draft) == 1
    bridge_author = USERS["bridge"][1]
    reply = next(c for c in bridge.ticket("zendesk", origin)["comments"] if c["body"] == draft)
    assert reply["author"] == bridge_author and reply["public"] is True


def test_same_ticket_edit_via_the_ai_edited_reply_field(bridge):
    origin = customer_ticket(bridge)
    review = submit_reply(bridge, origin, "Refund done.")
    bridge.wait_ticket(review["id"])
    edited = "Hi Carol, your refund of $750 is on its way; expect it within 3 days."
    bridge.act("zendesk", origin, "set_field", field=EDITED, value=edited)
    bridge.act("zendesk", origin, "approve")
    decided = bridge.wait_status(review["id"], "edited")
    assert decided["decision"]["decisions"][0]["edited_action"] == {"name": "reply", "args": {"body": edited}}
    assert bridge.verified_callback(review["id"])["decisions"] == [
        {"type": "edit", "edited_action": {"name": "reply", "args": {"body": edited}}}]
    posted(bridge, review["id"])
    wait_clean(bridge, origin)
    public = bridge.comments("zendesk", origin, public=True)
    assert public.count(edited) == 1 and "Refund done." not in public


def test_same_ticket_reject_leaves_the_customer_untouched(bridge):
    origin = customer_ticket(bridge)
    review = submit_reply(bridge, origin, "Hi Carol, refund approved!")
    bridge.wait_ticket(review["id"])
    before = bridge.ticket("zendesk", origin)
    bridge.act("zendesk", origin, "reject", "Order was already refunded last week.")
    decided = bridge.wait_status(review["id"], "rejected")
    assert decided["decision"]["reviewer"]["email"] == "alice@example.com"
    assert bridge.verified_callback(review["id"])["decisions"] == [{"type": "reject", "message": "Order was already refunded last week."}]
    wait_for(lambda: any("draft was rejected" in b for b in bridge.comments("zendesk", origin, public=False)), what="internal rejection note")
    after = bridge.ticket("zendesk", origin)
    assert decided["postback"]["state"] == "not_needed"
    assert bridge.comments("zendesk", origin, public=True) == [c["body"] for c in before["comments"] if c["public"]]
    assert after["status"] == before["status"] == "new"
    assert "Order was already refunded last week." in bridge.comments("zendesk", origin, public=False)
    wait_clean(bridge, origin)


def test_same_ticket_respond_answers_the_agent_only(bridge):
    origin = customer_ticket(bridge)
    review = submit_reply(bridge, origin, "Hi Carol, refund approved!")
    bridge.wait_ticket(review["id"])
    public_before = bridge.comments("zendesk", origin, public=True)
    bridge.act("zendesk", origin, "respond", "Ask the customer for a photo of the label first.")
    bridge.wait_status(review["id"], "responded")
    assert bridge.verified_callback(review["id"])["decisions"] == [
        {"type": "respond", "message": "Ask the customer for a photo of the label first."}]
    wait_clean(bridge, origin)
    assert bridge.comments("zendesk", origin, public=True) == public_before
    assert bridge.review(review["id"])["postback"]["state"] == "not_needed"


def test_a_second_review_on_the_same_ticket_starts_clean(bridge):
    origin = customer_ticket(bridge)
    first_text = "Hi Carol, a replacement jar is on its way."
    first = submit_reply(bridge, origin, "Draft one.")
    bridge.wait_ticket(first["id"])
    bridge.act("zendesk", origin, "set_field", field=EDITED, value=first_text)
    bridge.act("zendesk", origin, "approve")
    bridge.wait_status(first["id"], "edited")
    posted(bridge, first["id"])
    wait_clean(bridge, origin)  # on_decided removed the decision tags and the edited text

    # Even if the next review came before on_decided had run (its tag and text still there),
    # the new review's opening update clears them.
    with quiet_webhooks(bridge):
        bridge.act("zendesk", origin, "set_field", field=EDITED, value="stale edited text")
        bridge.act("zendesk", origin, "approve")
    second_text = "Hi Carol, we have refunded the $9.90 shipping too."
    second = submit_reply(bridge, origin, second_text)
    assert bridge.wait_ticket(second["id"])["ticket"]["key"] == origin
    fields = bridge.ticket("zendesk", origin)["fields"]
    assert "review_approved" not in fields["tags"] and fields[EDITED] is None
    assert "ai_review_pending" in fields["tags"]

    deliveries = emulator(bridge).webhooks.deliveries
    seen = len(deliveries)
    bridge.act("zendesk", origin, "customer_reply", "Thanks! Can you also refund the shipping?")
    wait_for(lambda: any(d.status == 202 for d in deliveries[seen:]), what="the customer's webhook accepted")
    time.sleep(0.5)  # the bridge read the ticket back: nothing decided
    assert bridge.review(second["id"])["status"] == "open"
    assert bridge.review(first["id"])["status"] == "edited"

    bridge.act("zendesk", origin, "approve", user="bob")
    decided = bridge.wait_status(second["id"], "approved")  # not an edit with stale text
    assert decided["decision"]["reviewer"]["email"] == "bob@example.com"
    posted(bridge, second["id"])
    wait_clean(bridge, origin)
    public = bridge.comments("zendesk", origin, public=True)
    assert public[1:] == [first_text, "Thanks! Can you also refund the shipping?", second_text]
    assert bridge.ticket("zendesk", origin)["status"] == "pending"
    assert len(bridge.callbacks_for(first["id"])) == 1


# ----- webhooks: duplicates, forgeries, replays ------------------------------------------


def test_reply_is_posted_once_when_the_webhook_arrives_three_times(bridge):
    origin = customer_ticket(bridge)
    draft = "Hi Carol, your refund is on its way."
    review = submit_reply(bridge, origin, draft)
    bridge.wait_ticket(review["id"])
    with quiet_webhooks(bridge):
        bridge.act("zendesk", origin, "approve")
    body = hook_body(bridge, origin)
    # Three deliveries with their own invocation ids, at once, while the review is still open.
    sent = [emulator(bridge).signed_headers(body) for _ in range(3)]
    answers: list[httpx2.Response] = []
    threads = [threading.Thread(target=lambda h=h: answers.append(post_hook(bridge, body, h))) for h in sent]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(a.status_code for a in answers) == [202, 202, 202]
    bridge.wait_status(review["id"], "approved")
    posted(bridge, review["id"])
    # ... and Zendesk's own retry of one of them (same invocation id) is a duplicate.
    again = post_hook(bridge, body, sent[0])
    assert again.status_code == 202 and again.json()["duplicate"] == 1
    wait_clean(bridge, origin)
    wait_for(lambda: bridge.review(review["id"])["delivery"]["state"] == "delivered", what="delivery")
    assert bridge.comments("zendesk", origin, public=True).count(draft) == 1
    kinds = bridge.audit_kinds(review["id"])
    assert kinds.count("review.decided") == 1 and kinds.count("reply.posted") == 1
    assert len(bridge.callbacks_for(review["id"])) == 1


def test_bad_signature_stale_timestamp_and_unknown_ticket_are_refused_and_change_nothing(bridge):
    origin = customer_ticket(bridge)
    review = submit_reply(bridge, origin, "Hi Carol, refund approved.")
    bridge.wait_ticket(review["id"])
    wait_for(lambda: "ticket.created" in bridge.audit_kinds(review["id"]), what="ticket created")
    time.sleep(0.3)  # let the bridge's own update's webhooks settle
    with quiet_webhooks(bridge):  # the reviewer approves; the webhook is lost
        bridge.act("zendesk", origin, "approve")
    body = hook_body(bridge, origin)
    ticket_before = bridge.ticket("zendesk", origin)
    kinds_before = bridge.audit_kinds(review["id"])
    zd = emulator(bridge)

    forged = zd.signed_headers(body)
    forged["X-Zendesk-Webhook-Signature"] = hmac_sha256_b64("not-the-secret", (forged["X-Zendesk-Webhook-Signature-Timestamp"] + body).encode())
    bad = post_hook(bridge, body, forged)
    assert bad.status_code == 401 and bad.json()["error"]["code"] == "invalid_webhook"

    old = (datetime.now(timezone.utc) - timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    stale = post_hook(bridge, body, zd.signed_headers(body, timestamp=old))
    assert stale.status_code == 401 and "replay window" in stale.json()["error"]["message"]

    stranger = customer_ticket(bridge, "Where is my order?")
    unknown_body = hook_body(bridge, stranger)
    unknown = post_hook(bridge, unknown_body, zd.signed_headers(unknown_body))
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "unknown_ticket"

    time.sleep(0.5)
    assert bridge.review(review["id"])["status"] == "open"  # the bridge did not even look
    assert bridge.audit_kinds(review["id"]) == kinds_before
    assert bridge.ticket("zendesk", origin) == ticket_before
    assert not bridge.callbacks_for(review["id"])

    good = post_hook(bridge, body, zd.signed_headers(body))  # the genuine one makes it look
    assert good.status_code == 202 and good.json()["accepted"] == 1
    bridge.wait_status(review["id"], "approved")


# ----- separate review ticket -----------------------------------------------------------


def test_separate_review_ticket_with_an_html_note_and_the_dropdown(bridge):
    origin = customer_ticket(bridge)
    draft = "Hi Carol, we are refunding order A-100 & shipping <today>."
    review = submit_reply(bridge, origin, draft, queue="zendesk-ticket")
    opened = bridge.wait_ticket(review["id"])
    key = opened["ticket"]["key"]
    assert key != origin and opened["route"]["name"] == "zendesk-ticket"
    ticket = bridge.ticket("zendesk", key)
    assert ticket["title"] == "[AI review] Reply to the customer about order A-100"
    fields = ticket["fields"]
    assert fields["external_id"] == review["id"] and f"hitl_{review['id'].lower()}" in fields["tags"]
    assert {"ai_review", "tier_gold"} <= set(fields["tags"])
    assert fields["priority"] == "normal" and fields["group_id"] == 360002
    assert emulator(bridge).tickets[int(key)]["assignee_id"] == USERS["alice"][0]
    raw = [c for c in emulator(bridge).comments[int(key)] if "AI draft waiting" in c["body"]]
    assert len(raw) == 1 and raw[0]["public"] is False
    html = raw[0]["html_body"]
    for expected in ("<h2>AI draft waiting for your review</h2>", "<td>62%</td>", "&amp; shipping &lt;today&gt;",
                     '<a href="https://smith.langchain.com/r/9d3f1a52">', '<a href="https://shop.example/orders/A-100">'):
        assert expected in html, expected
    assert not [c for c in bridge.ticket("zendesk", key)["comments"] if c["public"]]
    assert len(bridge.comments("zendesk", origin)) == 1  # the customer's ticket is not touched while under review

    bridge.act("zendesk", key, "comment", "Looks right.")
    bridge.act("zendesk", key, "set_field", field=DECISION, value="ai_decision_approve", user="bob")
    decided = bridge.wait_status(review["id"], "approved")
    assert decided["decision"]["reviewer"]["email"] == "bob@example.com"
    assert decided["decision"]["ticket"]["key"] == key
    posted(bridge, review["id"])
    assert bridge.comments("zendesk", origin, public=True).count(draft) == 1
    wait_for(lambda: bridge.ticket("zendesk", origin)["status"] == "pending", what="origin pending")
    wait_for(lambda: bridge.ticket("zendesk", key)["status"] == "solved", what="review ticket solved")


def test_separate_review_ticket_edit_via_an_edit_note(bridge):
    origin = customer_ticket(bridge)
    review = submit_reply(bridge, origin, "Refund done.", queue="zendesk-ticket")
    key = bridge.wait_ticket(review["id"])["ticket"]["key"]
    edited = "Hi Carol,\nyour refund of $750 is on its way."
    bridge.act("zendesk", key, "comment", f"/edit {edited}")
    bridge.act("zendesk", key, "set_field", field=DECISION, value="ai_decision_approve")
    decided = bridge.wait_status(review["id"], "edited")
    assert decided["decision"]["decisions"][0]["edited_action"] == {"name": "reply", "args": {"body": edited}}
    posted(bridge, review["id"])
    public = bridge.comments("zendesk", origin, public=True)
    assert public.count(edited) == 1 and "Refund done." not in public


def test_separate_review_ticket_reject_leaves_the_customer_untouched(bridge):
    origin = customer_ticket(bridge)
    review = submit_reply(bridge, origin, "Hi Carol, refund approved!", queue="zendesk-ticket")
    key = bridge.wait_ticket(review["id"])["ticket"]["key"]
    before = bridge.ticket("zendesk", origin)
    bridge.act("zendesk", key, "comment", "We never refund opened items.")
    bridge.act("zendesk", key, "set_field", field=DECISION, value="ai_decision_reject")
    bridge.wait_status(review["id"], "rejected")
    assert bridge.verified_callback(review["id"])["decisions"] == [{"type": "reject", "message": "We never refund opened items."}]
    wait_for(lambda: bridge.ticket("zendesk", key)["status"] == "solved", what="review ticket solved")
    assert bridge.ticket("zendesk", origin) == before


# ----- setup ------------------------------------------------------------------------------


def test_setup_zendesk_twice_creates_one_webhook_and_one_trigger(bridge):
    from bridge.cli import app

    config = bridge.config_file()
    runner = CliRunner()
    args = ["setup", "zendesk", "zendesk", "--url", bridge.url, "--config", str(config)]
    first = runner.invoke(app, args)
    assert first.exit_code == 0, first.output
    second = runner.invoke(app, args)
    assert second.exit_code == 0, second.output
    zd = emulator(bridge)
    assert len(zd.webhook_objects) == 1 and len(zd.triggers) == 1
    hook = next(iter(zd.webhook_objects.values()))
    trigger = next(iter(zd.triggers.values()))
    assert hook["endpoint"] == f"{bridge.url}/v1/webhooks/zendesk"
    assert trigger["actions"][0]["field"] == "notification_webhook" and trigger["actions"][0]["value"][0] == hook["id"]
    body = json.loads(trigger["actions"][0]["value"][1])
    assert body["ticket_id"] == "{{ticket.id}}"
    out1, out2 = (json.loads(r.stdout[r.stdout.index("{"):r.stdout.rindex("}") + 1]) for r in (first, second))
    assert out1["created"] is True and out2["created"] is False
    assert (out1["webhook_id"], out1["trigger_id"]) == (out2["webhook_id"], out2["trigger_id"])
    assert zd.settings.webhook_secret in first.output  # the signing secret, for webhook_secrets


# ----- a worker killed mid-post -------------------------------------------------------------


def test_worker_killed_after_zendesk_stored_the_reply_posts_it_once(tmp_path):
    b = Bridge(tmp_path, vendors=("zendesk",), routes=ROUTES, mappings={"zendesk_ticket": yaml.safe_dump(TICKET_MAPPING)})
    try:
        b.start_process()
        zd = b.emulators["zendesk"].emulator
        origin = zd.open_customer_ticket("Broken jar", "The jar is cracked.")
        draft = "Hi Carol, we are sending a new jar today."
        review = submit_reply(b, origin, draft)
        b.wait_ticket(review["id"])
        # Zendesk stores the comment, then holds its answer: the bridge dies before it hears back.
        zd.settings.write_delay_ms = 5000
        b.act("zendesk", origin, "approve")
        wait_for(lambda: draft in b.comments("zendesk", origin, public=True), timeout=15, what="the emulator to store the reply")
        b.kill()
        zd.settings.write_delay_ms = 0

        b.start_process()
        done = posted(b, review["id"], timeout=30)
        assert done["status"] == "approved" and done["postback"]["attempts"] >= 2
        assert b.comments("zendesk", origin, public=True).count(draft) == 1
        with b.client("admin") as client:
            events = client.get("/v1/audit", params={"review_id": review["id"]}).json()["items"]
        assert [e["data"]["already_there"] for e in events if e["kind"] == "reply.posted"] == [True]
        wait_for(lambda: b.ticket("zendesk", origin)["fields"]["status"] == "pending", what="origin pending")
        wait_for(lambda: b.review(review["id"])["delivery"]["state"] == "delivered", what="delivery")
        assert {hit.headers["webhook-id"] for hit in b.callbacks_for(review["id"])} == {f"msg_{review['id']}"}
    finally:
        b.stop()
