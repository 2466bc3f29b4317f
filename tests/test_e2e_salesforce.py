"""End to end over real HTTP with Salesforce: agent -> bridge -> Salesforce emulator (TLS,
the real `simple-salesforce` client: SOAP login or the JWT bearer flow, REST sObjects and
SOQL) -> a reviewer changes the Case's Status -> a notification (a signed Flow callout, or a
SOAP Outbound Message that must be acknowledged) -> read-back through the REST API ->
decision -> signed callback; replies as CaseComments or EmailMessages; reviewer groups from
queues and permission sets."""

from __future__ import annotations

import json
import time
from contextlib import contextmanager

import httpx2
import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.pool import NullPool

from connectors import config_for
from connectors.emulators.salesforce import ORG_ID
from connectors.salesforce import ACK_BODY
from bridge.db import normalize_url
from connectors.signing import hmac_sha256_hex
from harness import Bridge, mapping_variant
from helpers import wait_for

ROUTES = """
routes:
  - name: salesforce-email
    when: "metadata.queue == 'salesforce-email'"
    mapping: salesforce_email
  - name: salesforce-grouped
    when: "metadata.queue == 'salesforce-grouped'"
    mapping: salesforce_grouped
  - name: salesforce-managers
    when: "metadata.queue == 'salesforce-managers'"
    mapping: salesforce_managers
  - name: salesforce-queue
    when: "metadata.queue == 'salesforce'"
    mapping: salesforce_review
"""
MAPPINGS = {
    # The approved reply goes to the customer as an e-mail on their Case, which is then closed.
    "salesforce_email": mapping_variant("salesforce_review", "salesforce_email",
                                        reply={"channel": "email", "fields": {"status": "Closed"}}),
    # Only the Refund Approvers queue (by API name) or the HITL Refund Reviewer permission set
    # (by label) may decide.
    "salesforce_grouped": mapping_variant("salesforce_review", "salesforce_grouped",
                                          reviewers={"groups": ["Refund_Approvers", "HITL Refund Reviewer"]}),
    # The Managers public group, whose member is CEO's role-and-subordinates group.
    "salesforce_managers": mapping_variant("salesforce_review", "salesforce_managers", reviewers={"groups": ["Managers"]}),
}


@pytest.fixture(scope="module")
def bridge(tmp_path_factory):
    b = Bridge(tmp_path_factory.mktemp("salesforce"), vendors=("salesforce",), routes=ROUTES, mappings=MAPPINGS).start()
    yield b
    b.stop()


@pytest.fixture(scope="module")
def jwt_bridge(tmp_path_factory):
    """A bridge whose Salesforce connection logs in with the JWT bearer flow (no password)."""
    b = Bridge(tmp_path_factory.mktemp("salesforce-jwt"), vendors=("salesforce",), routes=ROUTES, mappings=MAPPINGS)
    running = b.emulators["salesforce"]
    b.settings.connections["salesforce"] = config_for(running.connection("salesforce", **running.emulator.jwt_credentials()))
    b.start()
    yield b
    b.stop()


# ----- helpers -------------------------------------------------------------------------


def emulator(bridge: Bridge):
    return bridge.emulators["salesforce"].emulator


def submit(bridge: Bridge, **overrides) -> dict:
    return bridge.submit(**{"metadata": {"queue": "salesforce", "customer_tier": "gold"}, **overrides})


def open_case(bridge: Bridge, **overrides) -> tuple[dict, str]:
    review = submit(bridge, **overrides)
    opened = bridge.wait_ticket(review["id"])
    assert opened["status"] == "open", opened
    return review, opened["ticket"]["key"]






def db_rows(bridge: Bridge, sql: str, *args) -> list[tuple]:
    """Rows from the test bridge's database, SQLite or PostgreSQL (``?`` placeholders)."""
    parts = sql.split("?")
    named = parts[0] + "".join(f":p{i}{part}" for i, part in enumerate(parts[1:]))
    engine = create_engine(normalize_url(bridge.database_url), poolclass=NullPool)
    try:
        with engine.connect() as conn:
            return [tuple(row) for row in conn.execute(text(named), {f"p{i}": arg for i, arg in enumerate(args)})]
    finally:
        engine.dispose()


def case_deliveries(bridge: Bridge, case_id: str) -> list:
    return [d for d in emulator(bridge).webhooks.deliveries if case_id in d.body]


def jobs_done(bridge: Bridge, review_id: str) -> None:
    wait_for(
        lambda: not db_rows(bridge, "SELECT id FROM jobs WHERE review_id = ? AND state IN ('pending', 'running')", review_id),
        what="the review's jobs to finish",
    )


def settle(bridge: Bridge, review_id: str, case_id: str) -> None:
    """Wait until every notification about the Case was delivered and every job the review
    has is finished, so the bridge reads nothing more on its own."""
    wait_for(lambda: all(d.status is not None for d in case_deliveries(bridge, case_id)), what="notifications delivered")
    jobs_done(bridge, review_id)


@contextmanager
def silent(bridge: Bridge):
    """The org's notifications switched off: changes happen without telling the bridge."""
    emu = emulator(bridge)
    with emu.lock:
        url = emu.settings.webhook_url
        emu.settings.webhook_url = None
        try:
            yield
        finally:
            emu.settings.webhook_url = url


def flow_callout(bridge: Bridge, case_id: str, *, event_id: str, secret: str | None = None,
                 stamp: int | None = None, sent_stamp: int | None = None) -> httpx2.Response:
    """A Flow/Apex callout as docs/salesforce.md describes it; ``sent_stamp`` sends another
    timestamp than the one signed."""
    body = json.dumps({"record_id": case_id, "object": "Case", "event_id": event_id, "kind": "status_changed"}).encode()
    signed = str(stamp if stamp is not None else int(time.time()))
    signature = hmac_sha256_hex(secret or emulator(bridge).settings.webhook_secret, signed.encode() + b"." + body)
    headers = {"Content-Type": "application/json", "X-Hitl-Signature": signature,
               "X-Hitl-Timestamp": str(sent_stamp) if sent_stamp is not None else signed}
    return httpx2.post(f"{bridge.url}/v1/webhooks/salesforce", content=body, headers=headers, timeout=10)


def outbound_message(case_id: str, *, note_id: str, org: str = ORG_ID, doctype: str = "") -> bytes:
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n' + doctype +
        '<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/" '
        'xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"><soapenv:Body>'
        '<notifications xmlns="http://soap.sforce.com/2005/09/outbound">'
        f"<OrganizationId>{org}</OrganizationId><ActionId>04k5g0000000001AAA</ActionId>"
        f"<Notification><Id>{note_id}</Id>"
        '<sObject xsi:type="sf:Case" xmlns:sf="urn:sobject.enterprise.soap.sforce.com">'
        f"<sf:Id>{case_id}</sf:Id><sf:Status>Approved</sf:Status></sObject></Notification>"
        "</notifications></soapenv:Body></soapenv:Envelope>"
    ).encode()


def post_xml(bridge: Bridge, body: bytes) -> httpx2.Response:
    return httpx2.post(f"{bridge.url}/v1/webhooks/salesforce", content=body,
                       headers={"Content-Type": "text/xml; charset=utf-8", "SOAPAction": '""'}, timeout=10)


def record(bridge: Bridge, sobject: str, record_id: str) -> dict:
    emu = emulator(bridge)
    with emu.lock:
        return dict(emu.records[sobject][record_id])


def case_comments(bridge: Bridge, case_id: str) -> list[dict]:
    emu = emulator(bridge)
    with emu.lock:
        return [dict(c) for c in emu.records["CaseComment"].values() if c["ParentId"] == case_id]


# ----- login and create ----------------------------------------------------------------


def test_login_and_create_a_case_with_the_reviewers_view(bridge):
    review, key = open_case(bridge)
    assert review["route"]["name"] == "salesforce-queue"
    ticket = bridge.review(review["id"])["ticket"]
    assert ticket["connection"] == "salesforce"
    assert ticket["url"] == f"{bridge.emulators['salesforce'].url}/lightning/r/Case/{key}/view"

    case = record(bridge, "Case", key)
    assert ticket["display"] == f"Case {case['CaseNumber']}"
    assert case["HITL_Review_Id__c"] == review["id"]
    assert case["Subject"] == "[AI review] Refund $750 to order A-100"
    assert case["Origin"] == "AI Agent" and case["Priority"] == "Medium" and case["Status"] == "New"
    for expected in ("AI REVIEW: Refund $750 to order A-100", "PROPOSED ACTION 1: issue_refund", "order_id", "A-100",
                     "62%", "policy allows refunds", "https://shop.example/orders/A-100",
                     "https://smith.langchain.com/r/9d3f1a52", "set Status to Approved", review["id"]):
        assert expected in case["Description"], expected

    bridge_user = emulator(bridge).user_id("bridge")
    assert case["CreatedById"] == bridge_user  # the SOAP login's session, not somebody else's
    [comment] = case_comments(bridge, key)
    assert comment["IsPublished"] is False
    assert comment["CreatedById"] == bridge_user
    assert comment["CommentBody"].startswith("AI review summary: Refund $750 to order A-100")
    assert "1 proposed action(s): issue_refund" in comment["CommentBody"]


# ----- decisions through Status ------------------------------------------------------------


def test_approve_reaches_the_agent_with_the_reviewer(bridge):
    review, key = open_case(bridge)
    bridge.act("salesforce", key, "approve", "Checked the photos, fine.")
    decided = bridge.wait_status(review["id"], "approved")
    assert decided["decision"]["decisions"] == [{"type": "approve", "edited_action": None, "message": None}]
    reviewer = decided["decision"]["reviewer"]
    assert reviewer == {"id": emulator(bridge).user_id("alice"), "name": "Alice Reviewer", "email": "alice@example.com"}
    payload = bridge.verified_callback(review["id"])
    assert payload["decisions"] == [{"type": "approve"}]
    assert payload["status"] == "approved"
    assert payload["decision"]["reviewer"]["email"] == "alice@example.com"
    wait_for(lambda: any("reached the agent" in c["CommentBody"] and not c["IsPublished"] for c in case_comments(bridge, key)),
             what="private delivery comment on the Case")


def test_edit_through_a_private_edit_comment(bridge):
    review, key = open_case(bridge)
    bridge.act("salesforce", key, "edit", json.dumps({"order_id": "A-100", "amount": 500}), user="bob")
    edit = next(c for c in case_comments(bridge, key) if c["CommentBody"].startswith("/edit"))
    assert edit["IsPublished"] is False
    decided = bridge.wait_status(review["id"], "edited")
    assert decided["decision"]["reviewer"]["name"] == "Bob Approver"
    assert decided["decision"]["reviewer"]["email"] == "bob@example.com"
    payload = bridge.verified_callback(review["id"])
    assert payload["decisions"] == [
        {"type": "edit", "edited_action": {"name": "issue_refund", "args": {"order_id": "A-100", "amount": 500}}}
    ]


def test_reject_carries_the_reviewers_private_comment(bridge):
    review, key = open_case(bridge)
    bridge.act("salesforce", key, "reject", "Order was already refunded last week.")
    decided = bridge.wait_status(review["id"], "rejected")
    assert decided["decision"]["reviewer"]["email"] == "alice@example.com"
    payload = bridge.verified_callback(review["id"])
    assert payload["decisions"] == [{"type": "reject", "message": "Order was already refunded last week."}]


# ----- notifications -------------------------------------------------------------------------


def test_flow_callouts_are_signed_and_resends_give_one_decision(bridge):
    review, key = open_case(bridge)
    bridge.act("salesforce", key, "approve")
    bridge.wait_status(review["id"], "approved")
    hooks = wait_for(lambda: [d for d in case_deliveries(bridge, key) if '"status_changed"' in d.body and d.status],
                     what="status callout")
    assert all(d.headers["Content-Type"] == "application/json" and d.headers["X-Hitl-Signature"] for d in hooks)
    for delivery in hooks:
        again = httpx2.post(delivery.url, content=delivery.body.encode(), headers=delivery.headers, timeout=10)
        assert again.status_code == 202 and again.json()["duplicate"] == 1, again.text
    wait_for(lambda: bridge.review(review["id"])["delivery"]["state"] == "delivered", what="delivery")
    assert bridge.audit_kinds(review["id"]).count("review.decided") == 1
    assert len(bridge.callbacks_for(review["id"])) == 1


def test_flow_callout_with_a_bad_signature_is_refused_and_changes_nothing(bridge):
    review, key = open_case(bridge)
    settle(bridge, review["id"], key)
    with silent(bridge):  # the Case is approved, but nobody tells the bridge yet
        bridge.act("salesforce", key, "approve")
    before = bridge.audit_kinds(review["id"])

    forged = flow_callout(bridge, key, event_id="forged-1", secret="not-the-connection-secret")
    assert forged.status_code == 401, forged.text
    error = forged.json()["error"]
    assert error["code"] == "invalid_webhook" and "X-Hitl-Signature" in error["message"]
    old = int(time.time()) - 3600
    tampered = flow_callout(bridge, key, event_id="forged-2", stamp=old, sent_stamp=int(time.time()))
    assert tampered.status_code == 401, tampered.text  # the signature covers the timestamp
    replayed = flow_callout(bridge, key, event_id="forged-3", stamp=old)  # validly signed, an hour ago
    assert replayed.status_code == 401, replayed.text
    assert replayed.json()["error"]["code"] == "invalid_webhook"

    time.sleep(0.5)
    assert bridge.review(review["id"])["status"] == "open"
    assert bridge.audit_kinds(review["id"]) == before
    assert not db_rows(bridge, "SELECT id FROM webhook_events WHERE event_id LIKE 'flow:forged-%'")
    assert not bridge.callbacks_for(review["id"])

    # The same callout, signed with the connection's secret, makes the bridge look.
    genuine = flow_callout(bridge, key, event_id="genuine-1")
    assert genuine.status_code == 202 and genuine.json()["accepted"] == 1, genuine.text
    bridge.wait_status(review["id"], "approved")
    assert bridge.verified_callback(review["id"])["decisions"] == [{"type": "approve"}]


def test_outbound_messages_are_acknowledged_and_resends_give_one_decision(bridge):
    emu = emulator(bridge)
    # The bridge's connection carries the org id the emulator's Outbound Messages name.
    assert bridge.settings.connections["salesforce"].organization_id == ORG_ID
    emu.notify = "outbound_message"
    try:
        review, key = open_case(bridge)
        bridge.act("salesforce", key, "approve", "Fine by me.")
        decided = bridge.wait_status(review["id"], "approved")
        assert decided["decision"]["reviewer"]["email"] == "alice@example.com"
        assert bridge.verified_callback(review["id"])["decisions"] == [{"type": "approve"}]

        messages = wait_for(lambda: (found := case_deliveries(bridge, key)) and all(d.status for d in found) and found,
                            what="outbound messages delivered")
        assert all(d.headers["Content-Type"].startswith("text/xml") and "<notifications" in d.body for d in messages)
        # Even the first one (the Case's creation, before the bridge knew its Id) was acked:
        # Salesforce would otherwise resend it for 24 hours.
        for delivery in messages:
            assert delivery.status == 200 and delivery.attempts == 1, delivery
            assert "<Ack>true</Ack>" in delivery.response

        # Salesforce resends what it thinks was not acknowledged: each resend is acked again
        # and changes nothing.
        status_messages = [d for d in messages if "<sf:Status>Approved</sf:Status>" in d.body]
        assert status_messages
        for delivery in messages:
            again = httpx2.post(delivery.url, content=delivery.body.encode(), headers=delivery.headers, timeout=10)
            assert again.status_code == 200, again.text
            assert again.headers["content-type"].startswith("text/xml")
            assert again.content == ACK_BODY
        wait_for(lambda: bridge.review(review["id"])["delivery"]["state"] == "delivered", what="delivery")
        assert bridge.audit_kinds(review["id"]).count("review.decided") == 1
        assert len(bridge.callbacks_for(review["id"])) == 1

        # An Outbound Message from another org is refused (they are unsigned: the org id is the check).
        other = post_xml(bridge, outbound_message(key, note_id="04l5g0000000999AAA", org="00D000000000001AAA"))
        assert other.status_code == 401 and "another organization" in other.json()["error"]["message"]
    finally:
        emu.notify = "flow"


HOSTILE = {
    "billion laughs": (
        '<!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol1 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">'
        '<!ENTITY lol2 "&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;">'
        '<!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">]>\n',
        "DTD",
    ),
    "external entity": ('<!DOCTYPE foo [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>\n', "DTD"),
    "external DTD": ('<!DOCTYPE notifications SYSTEM "http://127.0.0.1:9/evil.dtd">\n', "DTD"),
}


def test_hostile_xml_is_refused_with_a_clear_error_and_nothing_happens(bridge):
    review, key = open_case(bridge)
    settle(bridge, review["id"], key)
    with silent(bridge):  # if anything made the bridge read the Case back, it would decide
        bridge.act("salesforce", key, "approve")
    before = bridge.audit_kinds(review["id"])

    for n, (name, (doctype, words)) in enumerate(HOSTILE.items()):
        body = outbound_message(key, note_id=f"04l5g00000HOST{n}AAA", doctype=doctype)
        response = post_xml(bridge, body)
        assert response.status_code == 401, (name, response.text)
        error = response.json()["error"]
        assert error["code"] == "invalid_webhook" and words in error["message"], (name, error)
        assert response.content != ACK_BODY

    malformed = post_xml(bridge, outbound_message(key, note_id="04l5g00000HOSTMAAA")[:-40])
    assert malformed.status_code == 401 and "malformed XML" in malformed.json()["error"]["message"]
    not_soap = post_xml(bridge, b"<?xml version='1.0'?><html><body>hello</body></html>")
    assert not_soap.status_code == 401 and "not a Salesforce Outbound Message" in not_soap.json()["error"]["message"]
    huge = post_xml(bridge, outbound_message(key, note_id="04l5g00000HOSTHAAA").replace(b"<soapenv:Body>", b"<soapenv:Body>" + b" " * 1_100_000))
    assert huge.status_code == 413 and huge.json()["error"]["code"] == "body_too_large"

    time.sleep(0.5)
    assert bridge.review(review["id"])["status"] == "open"
    assert bridge.audit_kinds(review["id"]) == before
    assert not db_rows(bridge, "SELECT id FROM webhook_events WHERE event_id LIKE 'om:04l5g00000HOST%'")
    assert not bridge.callbacks_for(review["id"])
    with bridge.client() as client:
        assert client.get("/healthz").status_code == 200


# ----- sessions ------------------------------------------------------------------------------


def test_an_expired_session_is_refreshed_transparently(bridge):
    emu = emulator(bridge)
    review, key = open_case(bridge)
    settle(bridge, review["id"], key)
    with emu.lock:
        old_sessions = set(emu.sessions)
    assert old_sessions
    emu.expire_sessions()  # between ticket creation and the decision's read-back

    bridge.act("salesforce", key, "reject", "Not with this evidence.")
    decided = bridge.wait_status(review["id"], "rejected")
    assert decided["decision"]["reviewer"]["email"] == "alice@example.com"
    assert bridge.verified_callback(review["id"])["decisions"] == [{"type": "reject", "message": "Not with this evidence."}]
    with emu.lock:
        assert emu.sessions and not set(emu.sessions) & old_sessions  # logged in again
    # No job had to be retried: the connector logged in again inside the same call.
    failed = db_rows(bridge, "SELECT kind, last_error FROM jobs WHERE review_id = ? AND (attempts > 1 OR last_error IS NOT NULL)",
                     review["id"])
    assert failed == []
    assert "job.dead" not in bridge.audit_kinds(review["id"])


# ----- the reply on the customer's Case ------------------------------------------------------


def origin_case(bridge: Bridge, subject: str) -> dict:
    return next(t for t in bridge.tickets("salesforce") if t["title"] == subject)


@pytest.mark.parametrize("how", ["approve", "edit"])
def test_reply_is_posted_once_as_a_public_case_comment_on_the_origin_case(bridge, how):
    origin = origin_case(bridge, "Espresso machine arrived damaged")
    origin_id = origin["key"]
    draft = f"Hi Carol, we have refunded your order A-100 ({how}). Sorry for the trouble!"
    final = draft if how == "approve" else f"Hi Carol, your refund of $750 is on its way ({how})."
    review, key = open_case(
        bridge,
        title="Reply to the customer's Case",
        action_requests=[{"name": "reply", "args": {"body": draft}}],
        # by Case Id, or by CaseNumber as an agent reading the Case page would give it
        origin={"connection": "salesforce", "ticket_id": origin_id if how == "approve" else origin["fields"]["CaseNumber"]},
    )
    assert key != origin_id
    if how == "approve":
        bridge.act("salesforce", key, "approve")
    else:
        bridge.act("salesforce", key, "edit", final)
    posted = bridge.wait_review(review["id"], lambda r: r["postback"]["state"] == "delivered", what="post-back")
    assert posted["status"] == ("approved" if how == "approve" else "edited")

    def replies() -> list[dict]:
        return [c for c in case_comments(bridge, origin_id) if c["CommentBody"] in (draft, final)]

    [reply] = replies()
    assert reply["CommentBody"] == final
    assert reply["IsPublished"] is True  # the customer sees it
    assert reply["CreatedById"] == emulator(bridge).user_id("bridge")
    assert not any(c["CommentBody"] in (draft, final) for c in case_comments(bridge, key))  # not on the review Case

    # Resent notifications about the review Case post nothing more.
    for delivery in case_deliveries(bridge, key):
        if delivery.status is not None:
            again = httpx2.post(delivery.url, content=delivery.body.encode(), headers=delivery.headers, timeout=10)
            assert again.status_code == 202 and again.json()["accepted"] == 0, again.text
    jobs_done(bridge, review["id"])
    assert len(replies()) == 1
    assert bridge.audit_kinds(review["id"]).count("reply.posted") == 1


# ----- JWT bearer login ----------------------------------------------------------------------


def test_jwt_bearer_login_end_to_end_with_a_refreshed_session(jwt_bridge):
    emu = emulator(jwt_bridge)
    connection = jwt_bridge.settings.connections["salesforce"]
    assert connection.login_flow == "jwt" and connection.password is None
    review, key = open_case(jwt_bridge)
    case = record(jwt_bridge, "Case", key)
    assert case["HITL_Review_Id__c"] == review["id"]
    assert case["CreatedById"] == emu.user_id("bridge")  # the JWT's sub, not somebody else
    settle(jwt_bridge, review["id"], key)
    with emu.lock:
        old_sessions = set(emu.sessions)
    emu.expire_sessions()  # the read-back logs in again with a new assertion

    assert jwt_bridge.act("salesforce", key, "approve", "Photos check out.", user="bob")["status"] == "Approved"
    decided = jwt_bridge.wait_status(review["id"], "approved")
    assert decided["decision"]["reviewer"] == {"id": emu.user_id("bob"), "name": "Bob Approver", "email": "bob@example.com"}
    assert jwt_bridge.verified_callback(review["id"])["decisions"] == [{"type": "approve"}]
    with emu.lock:
        assert emu.sessions and not set(emu.sessions) & old_sessions
    failed = db_rows(jwt_bridge, "SELECT kind FROM jobs WHERE review_id = ? AND (attempts > 1 OR last_error IS NOT NULL)",
                     review["id"])
    assert failed == []


# ----- the reply as an EmailMessage ------------------------------------------------------------


def customer_case(bridge: Bridge, subject: str, email: str) -> str:
    """A customer's Case that came in by e-mail (Email-to-Case sets SuppliedEmail)."""
    emu = emulator(bridge)
    with silent(bridge), emu.lock:
        return emu.create("Case", {"Subject": subject, "Origin": "Email", "SuppliedEmail": email,
                                   "SuppliedName": "Dave Customer"}, emu.user_id("carol"))


def test_reply_by_email_is_one_email_message_on_the_origin_case_even_when_retried(bridge):
    emu = emulator(bridge)
    origin_id = customer_case(bridge, "Refund for order C-300?", "dave@example.com")
    draft = "Hi Dave, your refund for order C-300 is on its way."
    api = "/services/data/v59.0/sobjects"
    review, key = open_case(bridge, metadata={"queue": "salesforce-email"}, title="Reply to Dave",
                            action_requests=[{"name": "reply", "args": {"body": draft}}],
                            origin={"connection": "salesforce", "ticket_id": origin_id})
    settle(bridge, review["id"], key)
    # The first e-mail create fails (503); on the next try the e-mail is stored but closing
    # the Case fails (503), so the job runs a third time with the e-mail already there.
    emu.settings.faults = [{"status": 503, "method": "POST", "path_prefix": f"{api}/EmailMessage"},
                           {"status": 503, "method": "PATCH", "path_prefix": f"{api}/Case/{origin_id}"}]
    try:
        bridge.act("salesforce", key, "approve")
        posted = bridge.wait_review(review["id"], lambda r: r["postback"]["state"] == "delivered", what="post-back")
    finally:
        used = [f.times for f in emu.settings.faults]
        emu.settings.faults = []
    assert used == [0, 0]  # both faults were hit
    assert posted["status"] == "approved"

    with emu.lock:
        emails = [dict(e) for e in emu.emails(origin_id)]
        case = dict(emu.records["Case"][origin_id])
    [email] = emails
    assert email["TextBody"] == draft and email["ToAddress"] == "dave@example.com"
    assert email["Incoming"] is False and email["Status"] == "3"
    assert email["Subject"] == "Re: Refund for order C-300?"
    assert email["CreatedById"] == emu.user_id("bridge")
    assert case["Status"] == "Closed"  # reply.fields, after the e-mail
    assert not any(c["CommentBody"] == draft for c in case_comments(bridge, origin_id))  # an e-mail, not a comment
    assert bridge.ticket("salesforce", origin_id)["emails"][0]["body"] == draft  # what the sandbox page shows
    assert posted["postback"]["attempts"] == 3
    assert bridge.audit_kinds(review["id"]).count("reply.posted") == 1


def test_reply_by_email_to_a_case_without_an_address_fails_with_a_clear_error(bridge):
    emu = emulator(bridge)
    with silent(bridge), emu.lock:
        origin_id = emu.create("Case", {"Subject": "Walk-in customer", "Origin": "Phone"}, emu.user_id("carol"))
    review, key = open_case(bridge, metadata={"queue": "salesforce-email"}, title="Reply to a walk-in",
                            action_requests=[{"name": "reply", "args": {"body": "Thanks for visiting."}}],
                            origin={"connection": "salesforce", "ticket_id": origin_id})
    bridge.act("salesforce", key, "approve")
    failed = bridge.wait_review(review["id"], lambda r: r["postback"]["state"] not in ("not_needed", "pending"),
                                what="post-back to give up")
    postback = failed["postback"]
    assert postback["state"] == "dead" and postback["attempts"] == 1, postback  # permanent: not retried
    assert "no SuppliedEmail and no Contact email" in postback["last_error"]
    with emu.lock:
        assert emu.emails(origin_id) == []


# ----- reviewer groups: queues and permission sets ------------------------------------------------


def test_only_members_of_the_queue_or_permission_set_decide(bridge):
    review, key = open_case(bridge, metadata={"queue": "salesforce-grouped"})
    bridge.act("salesforce", key, "approve", user="alice")  # in the Support Agents group only
    bridge.wait_comment("salesforce", key, "alice@example.com is not allowed to decide")
    [refusal] = [c for c in case_comments(bridge, key) if "is not allowed to decide" in c["CommentBody"]]
    assert refusal["IsPublished"] is False and refusal["CreatedById"] == emulator(bridge).user_id("bridge")
    time.sleep(0.3)
    assert bridge.review(review["id"])["status"] == "open"
    assert not bridge.callbacks_for(review["id"])

    bridge.act("salesforce", key, "set_field", user="bob", field="Status", value="Working")
    bridge.act("salesforce", key, "approve", user="bob")  # in the Refund Approvers queue
    decided = bridge.wait_status(review["id"], "approved")
    assert decided["decision"]["reviewer"]["email"] == "bob@example.com"
    assert bridge.verified_callback(review["id"])["decisions"] == [{"type": "approve"}]


def test_a_permission_set_granted_in_salesforce_counts_at_decision_time(bridge):
    emu = emulator(bridge)
    review, key = open_case(bridge, metadata={"queue": "salesforce-grouped"})
    with emu.lock:
        emu.create("PermissionSetAssignment", {"AssigneeId": emu.user_id("alice"),
                                               "PermissionSetId": emu.permission_set("HITL_Refund_Reviewer")},
                   emu.user_id("bridge"))
    try:
        bridge.act("salesforce", key, "reject", "Not with this evidence.", user="alice")
        decided = bridge.wait_status(review["id"], "rejected")
        assert decided["decision"]["reviewer"]["email"] == "alice@example.com"
    finally:
        with emu.lock:
            granted = [a for a in emu.records["PermissionSetAssignment"].values()
                       if a["PermissionSetId"] == emu.permission_set("HITL_Refund_Reviewer")]
            for assignment in granted:
                del emu.records["PermissionSetAssignment"][assignment["Id"]]


def test_a_group_reached_through_the_role_hierarchy_decides(bridge):
    """Managers has CEO's role-and-subordinates group as its member: alice, in the Support
    Manager role below CEO, may decide; bob, in no role, may not."""
    review, key = open_case(bridge, metadata={"queue": "salesforce-managers"})
    bridge.act("salesforce", key, "approve", user="bob")
    bridge.wait_comment("salesforce", key, "bob@example.com is not allowed to decide")
    assert bridge.review(review["id"])["status"] == "open"
    bridge.act("salesforce", key, "set_field", user="alice", field="Status", value="Working")
    bridge.act("salesforce", key, "approve", user="alice")
    decided = bridge.wait_status(review["id"], "approved")
    assert decided["decision"]["reviewer"]["email"] == "alice@example.com"
