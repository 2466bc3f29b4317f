"""Salesforce quirks, end to end: real simple-salesforce over TLS against the emulator."""

from __future__ import annotations

import json
import time

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from pydantic import ValidationError
from simple_salesforce import Salesforce
from simple_salesforce.exceptions import SalesforceMalformedRequest
from simple_salesforce.login import SalesforceLogin

from connectors import config_for, connector_for
from connectors.emulators import Act, start_emulator
from connectors.emulators.salesforce import SalesforceEmulator
from connectors.base import Person
from connectors.errors import AuthError, PermanentError, RateLimitedError, WebhookVerificationError
from connectors.http import PinnedSession
from connectors.salesforce import ACK_BODY
from connectors.signing import hmac_sha256_hex
from helpers import wait_for

FIELDS = {"Subject": "Refund $750 to order A-100", "Description": "review", "Origin": "AI Agent", "Priority": "High"}


@pytest.fixture
def org(recorder):
    emulator = SalesforceEmulator(webhook_url=recorder.url + "/hook", webhook_attempts=3)
    running = start_emulator(emulator)
    yield running
    running.stop()


def connect(org, **overrides):
    return connector_for(config_for(org.connection("salesforce", **overrides)))


@pytest.fixture
def sf(org):
    connector = connect(org)
    yield connector
    connector.close()


def hooks(recorder, count=1):
    return wait_for(lambda: [r for r in recorder.requests if r.path == "/hook"][count - 1:] and
                    [r for r in recorder.requests if r.path == "/hook"], what="webhook")


def library_client(org) -> Salesforce:
    """The plain library, for the API shapes the connector hides."""
    conn = org.connection("salesforce")
    session = PinnedSession().pin(timeout=5, ca_bundle=conn["ca_bundle"])
    session_id, instance = SalesforceLogin(username=conn["username"], password=conn["password"],
                                           security_token=conn["security_token"], session=session,
                                           scratch_url=org.url)
    return Salesforce(session_id=session_id, instance=instance, session=session)


# ----- login -------------------------------------------------------------------------------

def test_soap_login_and_the_bridge_user(sf):
    me = sf.check()
    assert me.id.startswith("005") and len(me.id) == 18
    assert me.name == "HITL Bridge Integration"


def test_oauth_client_credentials_login(org):
    app = org.emulator.connected_app
    connector = connect(org, username=None, password=None, security_token="",
                        consumer_key=app["key"], consumer_secret=app["secret"])
    assert connector.check().name == "HITL Bridge Integration"
    connector.close()
    wrong = connect(org, username=None, password=None, consumer_key=app["key"], consumer_secret="nope-secret")
    with pytest.raises(AuthError):
        wrong.check()
    wrong.close()


def other_rsa_key() -> str:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()).decode()


def test_jwt_bearer_login_signs_a_short_assertion_the_org_verifies(org):
    seen = []
    connector = connect(org, **org.emulator.jwt_credentials())
    session = connector._session()
    session.hooks["response"].append(lambda response, **kw: seen.append(response.request))
    me = connector.check()
    assert me.name == "HITL Bridge Integration"
    [token_call] = [r for r in seen if r.url.endswith("/services/oauth2/token")]
    form = dict(pair.split("=", 1) for pair in token_call.body.split("&"))
    assert form["grant_type"] == "urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Ajwt-bearer"
    assertion = form["assertion"]
    public = org.emulator.connected_app["jwt_public_key"]
    claims = jwt.decode(assertion, public, algorithms=["RS256"], audience=org.url)
    assert claims["iss"] == org.emulator.connected_app["key"] and claims["sub"] == "bridge@hitl.example"
    assert 0 < claims["exp"] - time.time() <= 180
    assert jwt.get_unverified_header(assertion)["alg"] == "RS256"
    ref = connector.create_ticket(FIELDS, review_id="rev_jwt")
    assert connector.get_ticket(ref.key).fields["CreatedById"] == me.id
    connector.close()


def test_jwt_session_is_refreshed_with_a_new_assertion(org):
    connector = connect(org, **org.emulator.jwt_credentials())
    ref = connector.create_ticket(FIELDS, review_id="rev_jwt_refresh")
    before = set(org.emulator.sessions)
    org.emulator.expire_sessions()
    connector.update_ticket(ref.key, {"status": "Working"})
    assert connector.get_ticket(ref.key).status == "Working"
    assert org.emulator.sessions and not set(org.emulator.sessions) & before
    connector.close()


@pytest.mark.parametrize(("overrides", "clock", "says"), [
    ({"private_key": "other"}, 0, "invalid assertion: the assertion's signature does not verify"),
    ({"jwt_audience": "https://login.salesforce.com"}, 0, "audience is invalid: aud must be the login host"),
    ({}, 600, "expired authorization code: the assertion has expired"),
    ({"consumer_key": "3MVG9someOtherApp"}, 0, "client identifier invalid: consumer_key is not"),
    ({"username": "alice@hitl.example"}, 0, "user hasn't approved this consumer: the user is not pre-authorized"),
])
@pytest.mark.filterwarnings("ignore:\\s*If your connected app policy:UserWarning")  # simple_salesforce's advice, expected here
def test_refused_jwt_is_an_auth_error_saying_why(org, overrides, clock, says):
    if overrides.get("private_key") == "other":
        overrides = {"private_key": other_rsa_key()}
    org.emulator.clock_offset_seconds = clock  # the org's clock is 10 minutes ahead: the 3-minute assertion is stale
    connector = connect(org, **{**org.emulator.jwt_credentials(), **overrides})
    with pytest.raises(AuthError) as caught:
        connector.check()
    assert says in str(caught.value)
    assert "PRIVATE KEY" not in str(caught.value) and "BEGIN" not in str(caught.value)
    assert not org.emulator.sessions
    connector.close()


def test_jwt_configuration_mistakes_are_clear(org, tmp_path):
    creds = org.emulator.jwt_credentials()
    with pytest.raises(ValidationError, match="not an unencrypted PEM private key"):
        config_for(org.connection("salesforce", **{**creds, "private_key": "not a key"}))
    ec_key = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()).decode()
    with pytest.raises(ValidationError, match="must be an RSA key"):
        config_for(org.connection("salesforce", **{**creds, "private_key": ec_key}))
    with pytest.raises(ValidationError, match="needs consumer_key and username"):
        config_for(org.connection("salesforce", **{**creds, "username": None}))
    with pytest.raises(ValidationError, match="not several"):
        config_for(org.connection("salesforce", **{**creds, "password": "bridge-password"}))
    # The key from a file works like the key inline; an unreadable file is a clear AuthError.
    key_file = tmp_path / "sf.pem"
    key_file.write_text(creds["private_key"])
    from_file = connect(org, **{**creds, "private_key": None, "private_key_file": str(key_file)})
    assert from_file.check().name == "HITL Bridge Integration"
    from_file.close()
    missing = connect(org, **{**creds, "private_key": None, "private_key_file": str(tmp_path / "nope.pem")})
    with pytest.raises(AuthError, match="private_key_file cannot be read"):
        missing.check()
    missing.close()


def test_wrong_token_is_an_auth_error_without_secrets(org):
    connector = connect(org, security_token="WRONGTOKEN99")
    with pytest.raises(AuthError) as caught:
        connector.check()
    assert "INVALID_LOGIN" in str(caught.value) and "WRONGTOKEN99" not in str(caught.value)
    connector.close()


def test_expired_session_is_refreshed_transparently(org, sf):
    ref = sf.create_ticket(FIELDS, review_id="rev_refresh")
    sessions_before = set(org.emulator.sessions)
    org.emulator.expire_sessions()
    assert sf.get_ticket(ref.key).ref == ref
    assert set(org.emulator.sessions) and not set(org.emulator.sessions) & sessions_before
    org.emulator.expire_sessions()
    assert sf.check().name == "HITL Bridge Integration"  # userinfo answers 403 Bad_OAuth_Token instead
    org.emulator.expire_sessions()
    sf.update_ticket(ref.key, {"status": "Working"})
    assert sf.get_ticket(ref.key).status == "Working"


# ----- records -----------------------------------------------------------------------------

def test_create_stamps_the_external_id_and_refs_read_like_salesforce(org, sf):
    ref = sf.create_ticket(FIELDS, review_id="rev_o'brien")
    assert ref.key.startswith("500") and len(ref.key) == 18
    assert ref.display.startswith("Case 0000")
    assert ref.url == f"{org.url}/lightning/r/Case/{ref.key}/view"
    ticket = sf.get_ticket(ref.key)
    assert ticket.fields["HITL_Review_Id__c"] == "rev_o'brien"
    assert ticket.fields["Origin"] == "AI Agent" and ticket.status == "New"
    assert sf.find_ticket("rev_o'brien") == ref
    assert sf.find_ticket("x' OR Subject != 'y") is None  # quoted, not injected
    by_number = sf.get_ticket(ref.display.split()[1])
    assert by_number.ref == ref


def test_salesforce_error_array_becomes_a_short_permanent_error(sf):
    with pytest.raises(PermanentError) as caught:
        sf.create_ticket({**FIELDS, "Bogus__c": "x"}, review_id="rev_bad_field")
    assert "INVALID_FIELD" in str(caught.value) and "HTTP 400" in str(caught.value)
    with pytest.raises(PermanentError, match="INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST"):
        sf.create_ticket({**FIELDS, "Status": "Maybe"}, review_id="rev_bad_status")


def test_emulator_speaks_the_rest_shapes(org):
    client = library_client(org)
    status = next(f for f in client.Case.describe()["fields"] if f["name"] == "Status")
    assert [p["value"] for p in status["picklistValues"]][:5] == ["New", "Working", "Escalated", "Approved", "Rejected"]
    with pytest.raises(SalesforceMalformedRequest) as caught:
        client.CaseComment.create({"CommentBody": "orphan"})
    assert caught.value.content == [{"message": "Required fields are missing: [ParentId]",
                                     "errorCode": "REQUIRED_FIELD_MISSING", "fields": ["ParentId"]}]
    case = client.Case.create({"Subject": "ext id", "HITL_Review_Id__c": "rev_ext"})
    assert case["success"] is True and case["errors"] == []
    assert client.Case.get_by_custom_id("HITL_Review_Id__c", "rev_ext")["Id"] == case["id"]
    rows = client.query(f"SELECT Id, LastModifiedBy.Name FROM Case WHERE Id = '{case['id']}' LIMIT 1")["records"]
    assert rows[0]["LastModifiedBy"]["Name"] == "HITL Bridge Integration"
    client.session.close()


def test_request_limit_exceeded_is_rate_limited(org, sf):
    sf.check()
    org.emulator.api_limit = org.emulator.api_used
    with pytest.raises(RateLimitedError, match="REQUEST_LIMIT_EXCEEDED"):
        sf.find_ticket("rev_any")


# ----- decisions ---------------------------------------------------------------------------

@pytest.mark.parametrize(("action", "status"), [("approve", "Approved"), ("edit", "Approved"), ("reject", "Rejected")])
def test_decisions_are_read_back_from_status_and_last_modified_by(sf, org, action, status):
    ref = sf.create_ticket(FIELDS, review_id=f"rev_{action}")
    sf.add_comment(ref.key, "AI review summary", public=False)
    org.emulator.act(Act(key=ref.key, action=action, body="Use the gentler wording" if action != "approve" else None))
    ticket = sf.get_ticket(ref.key)
    assert ticket.status == status and ticket.fields["Status"] == status
    assert ticket.changed_by.name == "Alice Reviewer" and ticket.changed_by.email == "alice@example.com"
    assert ticket.comments[0].by_bridge and not ticket.comments[0].public
    if action != "approve":
        last = ticket.comments[-1]
        assert not last.by_bridge and not last.public and last.author.name == "Alice Reviewer"
        assert last.body == ("/edit Use the gentler wording" if action == "edit" else "Use the gentler wording")


def test_the_bridges_user_is_asked_once_for_every_thread(recorder):
    """Each worker thread has its own connector; who the bridge is (its comments are told
    apart by it) is asked once per process and org, not once per thread."""
    class Counting(SalesforceEmulator):
        asked = 0

        async def _userinfo(self, request):
            Counting.asked += 1
            return await super()._userinfo(request)

    running = start_emulator(Counting(webhook_url=recorder.url + "/hook"))
    connectors = [connect(running) for _ in range(3)]
    try:
        ref = connectors[0].create_ticket(FIELDS, review_id="rev_user_once")
        connectors[0].add_comment(ref.key, "AI review summary", public=False)
        for connector in connectors:
            assert connector.get_ticket(ref.key).comments[0].by_bridge
        assert Counting.asked == 1
    finally:
        for connector in connectors:
            connector.close()
        running.stop()


def test_reply_is_a_public_case_comment_on_the_origin_case(org, sf):
    origin = next(t for t in org.emulator.list_tickets() if t["fields"]["SuppliedEmail"] == "carol@example.com")
    number = origin["display"].split()[1]
    comment = sf.add_comment(number, "We have refunded order A-100.", public=True)
    assert comment.public and comment.by_bridge and comment.id.startswith("00a")
    seen = org.emulator.list_tickets()
    mine = next(t for t in seen if t["key"] == origin["key"])["comments"][-1]
    assert mine == {**mine, "author": "HITL Bridge Integration", "public": True, "body": "We have refunded order A-100."}
    customer = sf.get_ticket(number).comments[0]
    assert customer.author.email == "carol@example.com" and customer.public and not customer.by_bridge


def emails_on(org, case_id):
    with org.emulator.lock:
        return [dict(e) for e in org.emulator.emails(case_id)]


def test_email_reply_is_an_outgoing_email_message_on_the_case_once(org, sf):
    origin = next(t for t in org.emulator.list_tickets() if t["title"] == "Espresso machine arrived damaged")
    assert sf.reply_by_email(origin["display"].split()[1], "We have refunded order A-100.") is True
    assert sf.reply_by_email(origin["key"], "We have refunded order A-100.") is False  # a retried job
    [email] = emails_on(org, origin["key"])
    assert email["ToAddress"] == "carol@example.com" and email["Incoming"] is False and email["Status"] == "3"
    assert email["Subject"] == "Re: Espresso machine arrived damaged"
    assert email["TextBody"] == "We have refunded order A-100."
    assert email["FromAddress"] == "hitl-bridge@example.com" and email["CreatedById"] == org.emulator.user_id("bridge")
    assert sf.reply_by_email(origin["key"], "A second, different reply.") is True
    assert len(emails_on(org, origin["key"])) == 2


def test_email_reply_goes_to_the_contact_without_a_supplied_email_or_fails_clearly(org, sf):
    with org.emulator.lock:
        contact = org.emulator.records["User"][org.emulator.user_id("carol")]["ContactId"]
        by_contact = org.emulator.create("Case", {"Subject": "Phone call", "ContactId": contact}, org.emulator.user_id("carol"))
        nobody = org.emulator.create("Case", {"Subject": "Walk-in"}, org.emulator.user_id("carol"))
    sf.reply_by_email(by_contact, "Thanks for calling.")
    assert [e["ToAddress"] for e in emails_on(org, by_contact)] == ["carol@example.com"]
    with pytest.raises(PermanentError, match="no SuppliedEmail and no Contact email"):
        sf.reply_by_email(nobody, "Hello?")
    assert emails_on(org, nobody) == []


def test_groups_of_reads_queues_public_groups_and_permission_sets(org, sf):
    def groups(who):
        user = org.emulator.records["User"][org.emulator.user_id(who)]
        return sf.groups_of(Person(id=user["Id"], name=user["Name"], email=user["Email"]))

    # Queues and public groups (not the role groups themselves), directly and through the
    # Support Agents group inside All Support; permission sets (not the profile's own).
    everyone = {"Support_Agents", "Support Agents", "All_Support", "All Support"}
    assert groups("bob") == {"Refund_Approvers", "Refund Approvers"} | everyone
    # Alice holds Support Manager, below CEO, whose role-and-subordinates group is in Managers.
    assert groups("alice") == {"Managers"} | everyone
    with org.emulator.lock:
        org.emulator.create("PermissionSetAssignment", {"AssigneeId": org.emulator.user_id("alice"),
                                                        "PermissionSetId": org.emulator.permission_set("HITL_Refund_Reviewer")},
                            org.emulator.user_id("bridge"))
    assert groups("alice") == {"Managers", "HITL_Refund_Reviewer", "HITL Refund Reviewer"} | everyone
    assert sf.groups_of(Person(id="x' OR Name != 'y")) == set()  # not an id: nothing asked


def test_groups_of_follows_the_role_hierarchy_and_groups_in_groups(org, sf):
    """Membership as Salesforce counts it: a role's own group holds only that role, a
    role-and-subordinates group every role below it; a group in a group in a queue makes its
    members the queue's."""
    emulator, bridge = org.emulator, org.emulator.user_id("bridge")

    def role_group(role_name, kind):
        role = next(r["Id"] for r in emulator.records["UserRole"].values() if r["DeveloperName"] == role_name)
        return next(g["Id"] for g in emulator.records["Group"].values() if g["RelatedId"] == role and g["Type"] == kind)

    def group(name):
        return next(g["Id"] for g in emulator.records["Group"].values() if g["DeveloperName"] == name)

    def groups(who):
        return sf.groups_of(Person(id=emulator.user_id(who)))

    with emulator.lock:
        ceo_only = emulator.create("Group", {"Name": "CEO Office", "DeveloperName": "CEO_Office", "Type": "Regular"}, bridge)
        emulator.create("GroupMember", {"GroupId": ceo_only, "UserOrGroupId": role_group("CEO", "Role")}, bridge)
        managers_team = emulator.create("Group", {"Name": "Manager Team", "DeveloperName": "Manager_Team", "Type": "Regular"},
                                        bridge)
        emulator.create("GroupMember", {"GroupId": managers_team, "UserOrGroupId": role_group("Support_Manager", "Role")},
                        bridge)
        escalations = emulator.create("Group", {"Name": "Escalations", "DeveloperName": "Escalations", "Type": "Queue"}, bridge)
        emulator.create("GroupMember", {"GroupId": escalations, "UserOrGroupId": group("All_Support")}, bridge)
        emulator.create("GroupMember", {"GroupId": group("All_Support"), "UserOrGroupId": escalations}, bridge)  # a cycle
    alice, bob = groups("alice"), groups("bob")
    assert "Manager_Team" in alice and "CEO_Office" not in alice  # her role's group, not her boss's
    assert "Escalations" in alice and "Escalations" in bob  # Support Agents -> All Support -> Escalations
    assert "Managers" not in bob and "Manager_Team" not in bob  # no role
    with emulator.lock:  # promoted: CEO's own group now, and still CEO's role-and-subordinates
        emulator.records["User"][emulator.user_id("alice")]["UserRoleId"] = emulator.records["Group"][
            role_group("CEO", "Role")]["RelatedId"]
    assert {"CEO_Office", "Managers"} <= groups("alice") and "Manager_Team" not in groups("alice")


# ----- Flow callouts -------------------------------------------------------------------------

def signed(secret, payload, *, stamp=None):
    body = json.dumps(payload).encode()
    stamp = str(int(time.time()) if stamp is None else stamp)
    return {"X-Hitl-Timestamp": stamp, "X-Hitl-Signature": hmac_sha256_hex(secret, stamp.encode() + b"." + body),
            "Content-Type": "application/json"}, body


def test_flow_callout_is_verified_then_names_the_record(org, sf, recorder):
    ref = sf.create_ticket(FIELDS, review_id="rev_flow")
    org.emulator.act(Act(key=ref.key, action="approve"))
    hit = hooks(recorder, 2)[-1]
    (event,) = sf.verify_and_parse_webhook(hit.headers, hit.body)
    assert event.ticket_key == ref.key and event.kind == "status_changed" and event.event_id.startswith("flow:")
    assert sf.acknowledge([event]) is None


def test_flow_callout_with_bad_signature_stale_timestamp_or_rotated_secret(org):
    payload = {"record_id": "5005g0000000010AAA", "object": "Case", "event_id": "e1", "timestamp": "now"}
    rotated = connect(org, webhook_secrets=["new-secret", org.emulator.settings.webhook_secret])
    headers, body = signed("some-other-secret", payload)
    with pytest.raises(WebhookVerificationError, match="does not match"):
        rotated.verify_and_parse_webhook(headers, body)
    headers, body = signed("new-secret", payload, stamp=int(time.time()) - 3600)
    with pytest.raises(WebhookVerificationError, match="replay window"):
        rotated.verify_and_parse_webhook(headers, body)
    headers, body = signed("new-secret", payload)
    assert rotated.verify_and_parse_webhook({k.lower(): v for k, v in headers.items()}, body)[0].event_id == "flow:e1"
    rotated.close()


# ----- Outbound Messages -------------------------------------------------------------------

def test_outbound_message_is_parsed_acked_and_resent_with_the_same_ids(org, sf, recorder):
    org.emulator.notify = "outbound_message"
    ref = sf.create_ticket(FIELDS, review_id="rev_om")  # recorder answers JSON: not an Ack, so resent
    first = wait_for(lambda: org.emulator.webhooks.deliveries and org.emulator.webhooks.deliveries[0].attempts == 3
                     and org.emulator.webhooks.deliveries[0], what="three attempts")
    # attempts counts a try as it starts: wait for the third request itself to arrive
    resent = wait_for(lambda: len(hits := [r for r in recorder.requests if r.path == "/hook"]) >= 3 and hits,
                      what="three requests")
    assert len(resent) == 3 and len({r.body for r in resent}) == 1 and first.attempts == 3
    ids = [[e.event_id for e in sf.verify_and_parse_webhook(r.headers, r.body)] for r in resent]
    assert ids[0] == ids[1] == ids[2] and ids[0][0].startswith("om:04l")

    recorder.requests.clear()
    recorder.body, recorder.content_type = ACK_BODY, "text/xml"
    org.emulator.act(Act(key=ref.key, action="approve", body="fine"))
    wait_for(lambda: len([r for r in recorder.requests if r.path == "/hook"]) >= 2, what="comment and status")
    time.sleep(0.3)  # acked: no resends
    acked = [r for r in recorder.requests if r.path == "/hook"]
    assert len(acked) == 2
    events = [e for r in acked for e in sf.verify_and_parse_webhook(r.headers, r.body)]
    assert {e.ticket_key for e in events} == {ref.key}
    assert {e.kind for e in events} == {"comment_added", "updated"}
    assert sf.acknowledge(events) == (ACK_BODY, "text/xml; charset=utf-8")


def test_outbound_message_from_another_org_is_refused(org, sf, contracts):
    body = (contracts / "salesforce" / "outbound_message_notifications_2x_lead.xml").read_bytes()
    with pytest.raises(WebhookVerificationError, match="another organization"):
        sf.verify_and_parse_webhook({"Content-Type": "text/xml"}, body)
    no_org = connect(org, organization_id=None)
    with pytest.raises(WebhookVerificationError, match="organization_id"):
        no_org.verify_and_parse_webhook({"Content-Type": "text/xml"}, body)


def test_documented_outbound_messages_parse(org, contracts):
    vendor = connect(org, organization_id="0123456789ABCDENNN")
    body = (contracts / "salesforce" / "outbound_message_notifications_2x_lead.xml").read_bytes()
    events = vendor.verify_and_parse_webhook({"content-type": "text/xml; charset=utf-8"}, body)
    assert [e.event_id for e in events] == ["om:04l37000000L0E5AAK", "om:14l37000123L0E5AAK", "om:24l37123450L0E5AAK"]
    assert events[0].ticket_key == "Lead1/0123456789ABCDEEAE"
    empty = (contracts / "salesforce" / "outbound_message_notifications_empty.xml").read_bytes()
    with pytest.raises(WebhookVerificationError, match="another organization"):  # no OrganizationId at all
        vendor.verify_and_parse_webhook({}, empty)
    assert vendor.acknowledge([]) == (ACK_BODY, "text/xml; charset=utf-8")


BILLION_LAUGHS = b"""<?xml version="1.0"?>
<!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
<!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">]>
<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/"><soapenv:Body>
<notifications xmlns="http://soap.sforce.com/2005/09/outbound"><OrganizationId>&lol3;</OrganizationId></notifications>
</soapenv:Body></soapenv:Envelope>"""
EXTERNAL_ENTITY = b"""<?xml version="1.0"?><!DOCTYPE x [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>
<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/"><soapenv:Body>
<notifications xmlns="http://soap.sforce.com/2005/09/outbound"><OrganizationId>&xxe;</OrganizationId></notifications>
</soapenv:Body></soapenv:Envelope>"""


@pytest.mark.parametrize(("body", "reason"), [
    (BILLION_LAUGHS, "DTD"),
    (EXTERNAL_ENTITY, "DTD"),
    (b"<x>" + b" " * (1024 * 1024) + b"</x>", "larger than"),
    (b"<soapenv:Envelope xmlns:soapenv='http://schemas.xmlsoap.org/soap/envelope/'><soapenv:Body>", "malformed XML"),
    (b"<plain>not soap</plain>", "not a Salesforce Outbound Message"),
])
def test_hostile_xml_is_refused_and_nothing_happens(org, sf, body, reason):
    sf.check()
    used = org.emulator.api_used
    with pytest.raises(WebhookVerificationError, match=reason):
        sf.verify_and_parse_webhook({"Content-Type": "text/xml"}, body)
    assert org.emulator.api_used == used
