"""ServiceNow quirks, over real HTTP: pysnow against the emulator."""

from __future__ import annotations

import gc
import json
import time
from pathlib import Path

import pytest
import requests

from bridge.mapping import parse_mapping, render_ticket
from bridge.schemas import ReviewRequest
from connectors import Person, config_for, connector_for
from connectors.emulators import Act, start_emulator
from connectors.emulators.servicenow import ServiceNowEmulator
from connectors.errors import AuthError, PermanentError, RateLimitedError, WebhookVerificationError
from connectors.signing import hmac_sha256_b64
from helpers import wait_for

ROOT = Path(__file__).resolve().parents[2]
MAPPING = parse_mapping((ROOT / "mappings" / "servicenow_review.yaml").read_text(), file="servicenow_review.yaml")


@pytest.fixture
def snow(recorder):
    emulator = ServiceNowEmulator(webhook_url=recorder.url + "/v1/webhooks/servicenow")
    running = start_emulator(emulator)
    connector = connector_for(config_for(running.connection("servicenow")))
    yield emulator, running, connector
    connector.close()
    running.stop()


def review(**extra) -> ReviewRequest:
    return ReviewRequest.model_validate({
        "title": "Refund $750 to order A-100",
        "action_requests": [
            {"name": "issue_refund", "args": {"order_id": "A-100", "amount": 750}, "description": "Damaged item"},
            {"name": "reply", "args": {"body": "Sorry! Your refund is on its way."}},
        ],
        "confidence": 0.42, "cost": 750, "reasoning": "Photos show the damage.",
        "evidence": [{"title": "Photo", "url": "https://example.com/p.jpg"}],
        "langsmith": {"trace_url": "https://smith.langchain.com/r/1"},
        **extra,
    })


def create_from_mapping(connector, review_id="rev_snow_1"):
    rendered = render_ticket(MAPPING, review_id, review())
    ref = connector.create_ticket(rendered.fields, review_id=review_id)
    connector.add_comment(ref.key, rendered.comment, public=False)
    return ref


def decided(ticket, mapping) -> str | None:
    field = mapping.decision.field
    for candidate in (ticket.fields.get(field), ticket.labels.get(field)):
        if candidate in mapping.decision.values:
            return mapping.decision.values[candidate]
    return None


def test_sample_mapping_creates_a_review_record(snow):
    emulator, running, connector = snow
    ref = create_from_mapping(connector)
    assert ref.display.startswith("AIR") and ref.url.endswith(f"u_ai_review.do?sys_id={ref.key}")
    ticket = connector.get_ticket(ref.key)
    assert ticket.fields["correlation_id"] == "rev_snow_1" and ticket.fields["correlation_display"] == "hitl-bridge"
    assert "__table" not in ticket.fields and ticket.fields["u_review_id"] == "rev_snow_1"
    assert "PROPOSED ACTION 1: issue_refund" in ticket.fields["description"]
    assert ticket.fields["approval"] == "requested" and ticket.labels["approval"] == "Requested"
    assert ticket.labels["assignment_group"] == "AI Review" and len(ticket.fields["assignment_group"]) == 32
    assert ticket.fields["work_notes"] == "" and ticket.fields["comments"] == ""  # journals read back empty
    [note] = ticket.comments
    assert note.public is False and note.by_bridge and note.body.startswith("AI review opened")
    assert "[code]<table" in note.body
    assert connector.find_ticket("rev_snow_1") == ref
    assert decided(ticket, MAPPING) is None


def test_approve_by_approval_field_with_reviewer_resolved(snow):
    emulator, running, connector = snow
    ref = create_from_mapping(connector)
    emulator.act(Act(key=ref.key, action="approve", user="bob"))
    connector.add_comment(ref.key, "thanks, noted", public=False)  # the bridge writes after the reviewer
    ticket = connector.get_ticket(ref.key)
    assert ticket.fields["approval"] == "approved" and ticket.labels["approval"] == "Approved"
    assert decided(ticket, MAPPING) == "approve"
    assert ticket.fields["sys_updated_by"] == "hitl.bridge"
    assert ticket.changed_by.id == "bob"
    assert (ticket.changed_by.name, ticket.changed_by.email) == ("Bob Approver", "bob@example.com")


def test_the_newest_approval_change_names_the_changer(snow):
    """Several changes within one second: sys_audit's ORDERBYDESC picks the newest."""
    emulator, running, connector = snow
    ref = create_from_mapping(connector)
    emulator.act(Act(key=ref.key, action="approve", user="alice"))
    emulator.act(Act(key=ref.key, action="set_field", user="bob", field="approval", value="requested"))
    emulator.act(Act(key=ref.key, action="approve", user="bob"))
    assert connector.get_ticket(ref.key).changed_by.id == "bob"


def test_approve_by_state_mapping(snow):
    emulator, running, connector = snow
    by_state = MAPPING.model_copy(update={"decision": MAPPING.decision.model_copy(
        update={"field": "state", "values": {"3": "approve", "Closed Incomplete": "reject"}})})
    ref = create_from_mapping(connector)
    emulator.act(Act(key=ref.key, action="set_field", field="state", value="3"))
    ticket = connector.get_ticket(ref.key)
    assert ticket.status == "Closed Complete" and ticket.fields["state"] == "3"
    assert decided(ticket, by_state) == "approve" and ticket.changed_by.email == "alice@example.com"
    connector.update_ticket(ref.key, {"status": "Closed Incomplete"})
    assert decided(connector.get_ticket(ref.key), by_state) == "reject"
    connector.update_ticket(ref.key, {"status": "2"})
    assert connector.get_ticket(ref.key).status == "Work in Progress"
    with pytest.raises(PermanentError):
        connector.update_ticket(ref.key, {"status": "Teleported"})


def test_reject_with_a_work_note_message(snow):
    emulator, running, connector = snow
    ref = create_from_mapping(connector)
    emulator.act(Act(key=ref.key, action="reject", body="Refund is above your limit"))
    ticket = connector.get_ticket(ref.key)
    assert decided(ticket, MAPPING) == "reject"
    latest = [c for c in ticket.comments if not c.public and not c.by_bridge][-1]
    assert latest.body == "Refund is above your limit" and latest.author.name == "Alice Reviewer"


def test_edit_via_work_note_is_readable(snow):
    emulator, running, connector = snow
    ref = create_from_mapping(connector)
    emulator.act(Act(key=ref.key, action="edit", body='{"order_id": "A-100", "amount": 500}'))
    ticket = connector.get_ticket(ref.key)
    edit = [c for c in ticket.comments if c.body.startswith(MAPPING.decision.edit_prefix)][-1]
    assert json.loads(edit.body.removeprefix("/edit").strip()) == {"order_id": "A-100", "amount": 500}
    assert edit.public is False and decided(ticket, MAPPING) == "approve"


def test_comments_and_work_notes_keep_visibility_and_order(snow):
    emulator, running, connector = snow
    ref = create_from_mapping(connector)
    connector.add_comment(ref.key, "internal", public=False)
    made = connector.add_comment(ref.key, "public", public=True)
    emulator.act(Act(key=ref.key, action="customer_reply", body="from the customer"))
    assert made.public and made.by_bridge and made.body == "public" and made.author.name == "HITL Bridge"
    comments = connector.get_ticket(ref.key).comments
    assert [(c.body, c.public) for c in comments[1:]] == [
        ("internal", False), ("public", True), ("from the customer", True)]
    assert comments[-1].author.email == "carol@example.com" and not comments[-1].by_bridge


def test_origin_incident_by_number_gets_a_public_reply(snow):
    emulator, running, connector = snow
    origin = next(t for t in emulator.list_tickets() if t["display"] == "INC0010001")
    connector.add_comment("INC0010001", "Your refund is on its way.", public=True)
    ticket = connector.get_ticket("INC0010001")
    assert ticket.ref.key == origin["key"] and ticket.ref.key.startswith("incident:")
    assert ticket.status == "New" and ticket.labels["caller_id"] == "Carol Customer"
    reply = ticket.comments[-1]
    assert reply.public and reply.body == "Your refund is on its way."
    assert emulator.list_tickets()[0]["comments"][-1]["public"] is True
    connector.update_ticket("incident:" + origin["fields"]["sys_id"], {"status": "In Progress"})
    assert connector.get_ticket(origin["key"]).status == "In Progress"


def test_notification_duplicates_share_an_id_and_forgeries_are_refused(snow, recorder):
    emulator, running, connector = snow
    ref = create_from_mapping(connector)
    emulator.act(Act(key=ref.key, action="approve"))
    hits = wait_for(lambda: [r for r in recorder.requests if b'"approval"' in r.body], what="approval notification")
    hit = hits[0]
    first = connector.verify_and_parse_webhook(hit.headers, hit.body)
    again = connector.verify_and_parse_webhook(hit.headers, hit.body)
    assert first == again and first[0].ticket_key == ref.key and first[0].kind == "status_changed"
    secret = emulator.settings.webhook_secret

    def signed(body: bytes, timestamp: str, key: str = secret) -> dict[str, str]:
        return {"x-hitl-timestamp": timestamp, "x-hitl-signature": hmac_sha256_b64(key, timestamp.encode() + b"." + body)}

    now = str(int(time.time()))
    forged = json.dumps({"event_id": "x" * 32, "table": "u_ai_review", "sys_id": ref.key, "timestamp": now}).encode()
    with pytest.raises(WebhookVerificationError):
        connector.verify_and_parse_webhook(signed(forged, now, "not-the-secret"), forged)
    old = str(int(time.time()) - 3600)
    stale = json.dumps({"table": "u_ai_review", "sys_id": ref.key, "timestamp": old}).encode()
    with pytest.raises(WebhookVerificationError):
        connector.verify_and_parse_webhook(signed(stale, old), stale)  # a replay outside the window
    with pytest.raises(WebhookVerificationError):
        connector.verify_and_parse_webhook(signed(stale, now), stale)  # body timestamp is not the signed one
    with pytest.raises(WebhookVerificationError):
        connector.verify_and_parse_webhook({**hit.headers, "x-hitl-signature": hmac_sha256_b64(
            secret, hit.body).strip()}, hit.body)  # signed without the timestamp
    rotated = connector_for(config_for(running.connection("servicenow", webhook_secrets=["new-secret", secret])))
    assert rotated.verify_and_parse_webhook(hit.headers, hit.body)[0].event_id == first[0].event_id
    rotated.close()


def test_rate_limit_burst_then_retry_creates_one_record(snow):
    emulator, running, connector = snow
    emulator.settings.faults = [{"status": 429, "times": 2, "retry_after": 7, "method": "POST"}]
    fields = emulator.contract_fields()
    for _ in range(2):
        with pytest.raises(RateLimitedError) as caught:
            connector.create_ticket(fields, review_id="rev_burst")
        assert caught.value.retry_after == 7 and caught.value.status == 429
        assert connector.find_ticket("rev_burst") is None
    ref = connector.create_ticket(fields, review_id="rev_burst")
    assert connector.find_ticket("rev_burst") == ref
    assert [t["key"] for t in emulator.list_tickets() if t["fields"]["correlation_id"] == "rev_burst"] == [ref.key]


class TlsServiceNow(ServiceNowEmulator):
    tls = True  # oauthlib refuses plain http; this also exercises ca_bundle


def test_oauth_password_grant_over_tls():
    from connectors.emulators.servicenow.emulator import OAUTH_CLIENT

    running = start_emulator(TlsServiceNow())
    assert running.url.startswith("https://")
    oauth = connector_for(config_for(running.connection(
        "servicenow", oauth_client_id=OAUTH_CLIENT[0], oauth_client_secret=OAUTH_CLIENT[1])))
    assert oauth.check().email == "hitl-bridge@example.com"
    oauth.close()
    wrong = connector_for(config_for(running.connection(
        "servicenow", oauth_client_id=OAUTH_CLIENT[0], oauth_client_secret="nope")))
    with pytest.raises(AuthError) as caught:
        wrong.check()
    assert "nope" not in str(caught.value)
    wrong.close()
    del caught
    gc.collect()  # the refused token exchange's socket sits in a traceback cycle; let the server stop now
    running.stop()


def test_error_shapes_match_the_documented_ones(snow, contracts):
    emulator, running, connector = snow
    auth = ("hitl.bridge", emulator.passwords["hitl.bridge"])
    documented = json.loads((contracts / "servicenow" / "error_generic_format.json").read_text())
    missing = requests.get(f"{running.url}/api/now/table/incident/{'0' * 32}", auth=auth, timeout=5)
    assert missing.status_code == 404 and missing.json().keys() == documented.keys()
    assert missing.json()["error"]["message"] == "No Record found"
    assert requests.get(f"{running.url}/api/now/table/incident", timeout=5).json()["error"]["message"] == \
        "User Not Authenticated"
    assert requests.get(f"{running.url}/api/now/v1/table/incident?sysparm_query=number=NONE", auth=auth,
                        timeout=5).status_code == 404
    assert requests.get(f"{running.url}/api/now/v2/table/incident?sysparm_query=number=NONE", auth=auth,
                        timeout=5).json() == {"result": []}
    sample = json.loads((contracts / "servicenow" / "table_get_incident_by_sys_id_200.json").read_text())["result"]
    key = emulator.list_tickets()[0]["fields"]["sys_id"]
    ours = requests.get(f"{running.url}/api/now/table/incident/{key}", auth=auth, timeout=5).json()["result"]
    for name in ("number", "state", "approval", "caller_id", "opened_by", "sys_updated_by", "comments"):
        assert type(ours[name]) is type(sample[name]), name
    created = requests.post(f"{running.url}/api/now/table/incident", auth=auth, timeout=5,
                            json={"short_description": "x", "no_such_field": "ignored", "work_notes": "hi"})
    assert created.status_code == 201 and created.headers["Location"].endswith(created.json()["result"]["sys_id"])
    assert "no_such_field" not in created.json()["result"] and created.json()["result"]["work_notes"] == ""


# ----- reviewers.groups: sys_user_grmember ----------------------------------------------


def test_groups_of_reads_the_users_memberships_at_each_call(snow):
    emulator, running, connector = snow
    assert connector.groups_of(Person("bob")) == {"AI Review", "Service Desk"}
    assert connector.groups_of(Person(emulator.user("bob")["sys_id"])) == {"AI Review", "Service Desk"}
    assert connector.groups_of(Person("alice")) == {"Service Desk"}
    assert connector.groups_of(Person("carol")) == set()
    assert connector.groups_of(Person("nobody")) == set()  # no such sys_user: no group
    assert connector.groups_of(Person("bob^ORuser_name=alice")) == set()  # no query smuggled in
    teams = {f"Team {n:03d}" for n in range(150)}  # more than one page of memberships
    with emulator.lock:
        emulator.groups["alice"] = sorted(teams)
        emulator.groups["bob"] = ["AI Review"]
    assert connector.groups_of(Person("alice")) == teams
    assert connector.groups_of(Person("bob")) == {"AI Review"}
    with emulator.lock:  # an inactive group grants nothing
        next(g for g in emulator.tables["sys_user_group"].values() if g["name"] == "AI Review")["active"] = "false"
    assert connector.groups_of(Person("bob")) == set()


def test_groups_of_is_read_through_the_table_api_as_documented(snow):
    emulator, running, connector = snow
    auth = ("hitl.bridge", emulator.passwords["hitl.bridge"])
    bob = emulator.user("bob")["sys_id"]
    rows = requests.get(f"{running.url}/api/now/table/sys_user_grmember", auth=auth, timeout=5, params={
        "sysparm_query": f"user={bob}", "sysparm_fields": "user,group,group.name"}).json()["result"]
    assert {r["group.name"] for r in rows} == {"AI Review", "Service Desk"}
    assert all(r["user"] == {"link": f"{running.url}/api/now/table/sys_user/{bob}", "value": bob} for r in rows)
    assert all(set(r["group"]) == {"link", "value"} for r in rows)
    shown = requests.get(f"{running.url}/api/now/table/sys_user_grmember", auth=auth, timeout=5, params={
        "sysparm_query": f"user={bob}", "sysparm_display_value": "true"}).json()["result"]
    assert {r["group"] for r in shown} == {"AI Review", "Service Desk"} and {r["user"] for r in shown} == {"Bob Approver"}
    refused = requests.post(f"{running.url}/api/now/table/sys_user_grmember", auth=auth, timeout=5,
                            json={"user": bob, "group": "AI Review"})
    assert refused.status_code == 403
