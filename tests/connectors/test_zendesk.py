"""Zendesk quirks, with the real zenpy client over real HTTPS against the emulator."""

from __future__ import annotations

import json
import threading
from datetime import datetime, timedelta, timezone

import pytest
import requests

from connectors import Person, config_for, connector_for
from connectors.emulators import Act, start_emulator
from connectors.emulators.zendesk import DECISION_FIELD_ID, EDITED_REPLY_FIELD_ID, USERS, ZendeskEmulator
from connectors.errors import AuthError, PermanentError, RemoteNotFoundError, WebhookVerificationError
from connectors.signing import hmac_sha256_b64
from connectors.zendesk import RECOMMENDED_WEBHOOK_BODY, ZendeskConfig, stamp_tag
from helpers import wait_for

SECRET = "zendesk-test-secret"


@pytest.fixture
def zd():
    emulator = ZendeskEmulator(webhook_secret=SECRET)
    running = start_emulator(emulator)
    connector = connector_for(config_for(running.connection("zendesk")))
    yield emulator, running, connector
    connector.close()
    running.stop()


def _stamp(delta: float = 0) -> str:
    return (datetime.now(timezone.utc) + timedelta(seconds=delta)).strftime("%Y-%m-%dT%H:%M:%SZ")


def _signed(body: dict | bytes, *, secret: str = SECRET, stamp: str | None = None, lower: bool = True, **extra) -> tuple[dict, bytes]:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    stamp = stamp or _stamp()
    headers = {
        "X-Zendesk-Webhook-Signature": hmac_sha256_b64(secret, stamp.encode() + raw),
        "X-Zendesk-Webhook-Signature-Timestamp": stamp,
        **extra,
    }
    return ({k.lower(): v for k, v in headers.items()} if lower else headers), raw


def _origin(emulator) -> str:
    return next(t["key"] for t in emulator.list_tickets() if t["title"] == "Refund for damaged blender")


# ----- webhooks -------------------------------------------------------------------------


def test_trigger_webhook_with_the_recommended_body(zd):
    _, _, connector = zd
    body = {**RECOMMENDED_WEBHOOK_BODY, "ticket_id": "35436", "status": "Open", "tags": "a b", "updated_at": _stamp()}
    headers, raw = _signed(body, lower=False, **{"X-Zendesk-Webhook-Invocation-Id": "8350205582"})
    [event] = connector.verify_and_parse_webhook(headers, raw)
    assert (event.event_id, event.ticket_key, event.kind) == ("8350205582", "35436", "updated")
    headers, raw = _signed(body)  # lower-cased headers, no invocation id: a hash of the body
    assert connector.verify_and_parse_webhook(headers, raw)[0].event_id == connector.verify_and_parse_webhook(headers, raw)[0].event_id


def test_event_subscription_webhooks(zd, contracts):
    _, _, connector = zd
    sample = json.loads((contracts / "zendesk" / "thirdparty_dust_event_ticket_comment_added.json").read_text())
    headers, raw = _signed(sample)
    [event] = connector.verify_and_parse_webhook(headers, raw)
    assert (event.ticket_key, event.kind, event.event_id) == ("5158", "comment_added", sample["id"])
    status = dict(sample, type="zen:event-type:ticket.status_changed", event={"current": "SOLVED", "previous": "OPEN"})
    assert connector.verify_and_parse_webhook(*_signed(status))[0].kind == "status_changed"
    tags = dict(sample, type="zen:event-type:ticket.tags_changed", detail={}, event={"tags_added": ["review_approved"]})
    [event] = connector.verify_and_parse_webhook(*_signed(tags))
    assert (event.ticket_key, event.kind) == ("5158", "updated")  # ticket id read from subject
    user_event = json.loads((contracts / "zendesk" / "docs_event_webhook_envelope_user_active_changed.json").read_text())
    with pytest.raises(WebhookVerificationError):
        connector.verify_and_parse_webhook(*_signed(user_event))


def test_replay_window_rotation_and_malformed_bodies(zd):
    _, running, connector = zd
    body = {"ticket_id": "35436", "event": "ticket_updated"}
    with pytest.raises(WebhookVerificationError):
        connector.verify_and_parse_webhook(*_signed(body, stamp=_stamp(-3600)))
    with pytest.raises(WebhookVerificationError):
        connector.verify_and_parse_webhook(*_signed(body, secret="someone-else"))
    headers, raw = _signed(body)
    with pytest.raises(WebhookVerificationError):
        connector.verify_and_parse_webhook({k: v for k, v in headers.items() if "timestamp" not in k}, raw)
    with pytest.raises(WebhookVerificationError):
        connector.verify_and_parse_webhook(*_signed(b"not json"))
    with pytest.raises(WebhookVerificationError):
        connector.verify_and_parse_webhook(*_signed({"event": "ticket_updated"}))
    rotated = connector_for(config_for(running.connection("zendesk", webhook_secrets=["new-secret", SECRET])))
    assert rotated.verify_and_parse_webhook(*_signed(body, secret="new-secret"))[0].ticket_key == "35436"
    assert rotated.verify_and_parse_webhook(*_signed(body))[0].ticket_key == "35436"
    rotated.close()


def test_emulator_webhooks_are_signed_and_parse(recorder):
    emulator = ZendeskEmulator(webhook_url=recorder.url + "/hook", webhook_secret=SECRET)
    running = start_emulator(emulator)
    connector = connector_for(config_for(running.connection("zendesk")))
    try:
        origin = _origin(emulator)
        emulator.act(Act(key=origin, action="customer_reply", body="Any news?"))
        hit = wait_for(lambda: [r for r in recorder.requests if r.path == "/hook"], what="webhook")[0]
        assert "x-zendesk-webhook-invocation-id" in hit.headers
        [event] = connector.verify_and_parse_webhook(hit.headers, hit.body)
        assert event.ticket_key == origin and event.event_id == hit.headers["x-zendesk-webhook-invocation-id"]
    finally:
        connector.close()
        running.stop()


# ----- same-ticket review -----------------------------------------------------------------


def test_same_ticket_review_round_trip(zd):
    emulator, _, connector = zd
    origin = _origin(emulator)
    connector.update_ticket(origin, {"subject": "", "priority": "", "additional_tags": ["ai_review_pending"]})
    note = connector.add_comment(origin, "<h2>AI draft</h2><table><tr><td>amount</td><td>750</td></tr></table>", public=False)
    assert note.by_bridge and note.public is False
    emulator.act(Act(key=origin, action="approve", body="Good to send", user="alice"))
    ticket = connector.get_ticket(origin)
    assert ticket.fields["subject"] == "Refund for damaged blender"  # empty template = not touched
    assert {"review_approved", "ai_review_pending", "customer"} <= set(ticket.fields["tags"])
    assert ticket.changed_by.email == "alice@example.com" and ticket.changed_by.name == "Alice Reviewer"
    first, draft, message = ticket.comments
    assert first.public and first.author.email == "carol@example.com" and not first.by_bridge
    assert draft.by_bridge and not draft.public and "AI draft" in draft.body
    assert message.body == "Good to send" and not message.public and message.author.name == "Alice Reviewer"
    connector.add_comment(origin, "Your refund of $750 is on its way.", public=True)
    connector.update_ticket(origin, {"status": "pending", "remove_tags": ["review_approved", "ai_review_pending"]})
    ticket = connector.get_ticket(origin)
    assert ticket.status == "pending" and "review_approved" not in ticket.fields["tags"]
    assert ticket.changed_by.email == "alice@example.com"  # the bridge's own changes never count
    customer_view = [c for c in emulator.list_tickets() if c["key"] == origin][0]["comments"]
    assert [c["body"] for c in customer_view if c["public"]][-1] == "Your refund of $750 is on its way."


def test_edit_via_custom_field_and_dropdown_labels(zd):
    emulator, _, connector = zd
    ref = connector.create_ticket({"subject": "[AI review] refund", "comment": {"body": "review me", "public": False}}, review_id="rev_edit")
    emulator.act(Act(key=ref.key, action="set_field", field=f"custom_fields.{EDITED_REPLY_FIELD_ID}", value="Better reply", user="bob"))
    emulator.act(Act(key=ref.key, action="set_field", field=f"custom_fields.{DECISION_FIELD_ID}", value="ai_decision_approve", user="bob"))
    ticket = connector.get_ticket(ref.key)
    assert ticket.fields[f"custom_fields.{EDITED_REPLY_FIELD_ID}"] == "Better reply"
    assert ticket.labels[f"custom_fields.{DECISION_FIELD_ID}"] == "Approve"
    assert ticket.changed_by.email == "bob@example.com"
    assert {"id": DECISION_FIELD_ID, "value": "ai_decision_approve"} in ticket.fields["custom_fields"]


# ----- separate review ticket -------------------------------------------------------------


def test_separate_review_ticket_is_stamped_and_found(zd):
    emulator, _, connector = zd
    fields = {"subject": "[AI review] Refund $750", "comment": {"body": "<p>Review <b>this</b></p>", "public": False},
              "tags": ["ai_review"], "additional_tags": ["ai_review_pending"], "remove_tags": ["x"], "priority": "high",
              "group_id": 360002, "type": "task", "custom_fields": [{"id": DECISION_FIELD_ID, "value": None}]}
    ref = connector.create_ticket(fields, review_id="Rev 42/A")
    assert ref.display == f"#{ref.key}" and ref.url.endswith(f"/agent/tickets/{ref.key}")
    ticket = connector.get_ticket(ref.key)
    assert ticket.fields["external_id"] == "Rev 42/A"
    assert set(ticket.fields["tags"]) == {"ai_review", "ai_review_pending", stamp_tag("Rev 42/A")}
    assert ticket.fields["group_id"] == 360002 and ticket.fields["priority"] == "high"
    assert ticket.comments[0].body == "Review this" and ticket.comments[0].public is False
    assert connector.find_ticket("Rev 42/A") == ref
    emulator.tickets[int(ref.key)]["external_id"] = "changed-by-an-admin"
    assert connector.find_ticket("Rev 42/A") == ref  # found again by its hitl_ tag (search)


def test_create_without_comment_gets_a_description(zd):
    _, _, connector = zd
    ref = connector.create_ticket({"subject": "[AI review] no note yet"}, review_id="rev_nocomment")
    assert connector.get_ticket(ref.key).comments[0].body == "[AI review] no note yet"


def test_comments_follow_cursor_pagination(zd):
    emulator, _, connector = zd
    origin = _origin(emulator)
    for number in range(105):
        emulator.act(Act(key=origin, action="comment", body=f"note {number}"))
    comments = connector.get_ticket(origin).comments
    assert len(comments) == 106 and comments[-1].body == "note 104"


# ----- errors, auth, configuration --------------------------------------------------------


def test_validation_errors_are_permanent_with_zendesk_message(zd):
    emulator, _, connector = zd
    with pytest.raises(PermanentError) as caught:
        connector.update_ticket(_origin(emulator), {"status": "approved"})
    assert "Status" in str(caught.value) and caught.value.status == 422
    with pytest.raises(RemoteNotFoundError):
        connector.update_ticket("not-a-number", {"status": "open"})
    with pytest.raises(RemoteNotFoundError):
        connector.add_comment("99999999", "hello", public=True)


def test_reviewer_tokens_work_and_wrong_ones_do_not(zd):
    _, running, _ = zd
    alice = connector_for(config_for(running.connection("zendesk", email="alice@example.com", api_token="alice-api-token")))
    assert alice.check().name == "Alice Reviewer"
    alice.close()
    wrong = connector_for(config_for(running.connection("zendesk", email="alice@example.com", api_token="bridge-api-token")))
    with pytest.raises(AuthError) as caught:
        wrong.check()
    assert "bridge-api-token" not in str(caught.value) and caught.value.status == 401
    wrong.close()


def test_author_id_posts_as_the_configured_agent(zd):
    emulator, running, _ = zd
    connector = connector_for(config_for(running.connection("zendesk", author_id=9000003)))
    origin = _origin(emulator)
    comment = connector.add_comment(origin, "Posted as Bob", public=True)
    assert comment.author.id == "9000003"
    last = connector.get_ticket(origin).comments[-1]
    assert last.author.email == "bob@example.com" and last.by_bridge
    connector.close()


def test_two_connections_in_one_process_stay_apart(zd):
    emulator, _, connector = zd
    other_emulator = ZendeskEmulator(webhook_secret=SECRET)
    other = start_emulator(other_emulator)
    other_connector = connector_for(config_for(other.connection("zendesk")))
    try:
        ref = connector.create_ticket({"subject": "only here", "comment": "x"}, review_id="rev_apart")
        assert other_connector.find_ticket("rev_apart") is None
        assert connector.find_ticket("rev_apart") == ref
    finally:
        other_connector.close()
        other.stop()


def test_config_derives_the_subdomain():
    base = {"name": "zd", "type": "zendesk", "email": "a@b.c", "api_token": "t"}
    assert ZendeskConfig(**base, base_url="https://acme.zendesk.com/").subdomain == "acme"
    for bad in ("https://localhost:8443", "https://acme.zendesk.com/api/v2", "ftp://acme.zendesk.com"):
        with pytest.raises(ValueError):
            ZendeskConfig(**base, base_url=bad)


# ----- setup command ----------------------------------------------------------------------


def test_setup_is_idempotent(zd):
    emulator, _, connector = zd
    first = connector.ensure_webhook_and_trigger(endpoint_url="https://bridge.example/v1/webhooks/zendesk")
    second = connector.ensure_webhook_and_trigger(endpoint_url="https://bridge.example/v1/webhooks/zendesk")
    assert first["created"] is True and second["created"] is False
    assert (first["webhook_id"], first["trigger_id"]) == (second["webhook_id"], second["trigger_id"])
    assert len(emulator.webhook_objects) == 1 and len(emulator.triggers) == 1
    assert first["signing_secret"] == SECRET
    hook = emulator.webhook_objects[first["webhook_id"]]
    assert hook["subscriptions"] == ["conditional_ticket_events"] and hook["http_method"] == "POST"
    [action] = emulator.triggers[first["trigger_id"]]["actions"]
    assert action["field"] == "notification_webhook" and action["value"][0] == first["webhook_id"]
    assert json.loads(action["value"][1]) == RECOMMENDED_WEBHOOK_BODY


# ----- reviewers.groups: a user's groups -------------------------------------------------


def _user(login: str) -> Person:
    return Person(id=str(USERS[login][0]))


def test_groups_of_reads_the_agents_groups_at_each_call(zd):
    emulator, _, connector = zd
    assert connector.groups_of(_user("bob")) == {"Support", "AI Review"}
    assert connector.groups_of(_user("alice")) == {"Support"}
    assert connector.groups_of(_user("carol")) == set()  # an end user is in no group
    assert connector.groups_of(Person(id="424242")) == set()  # no such user (404): no group
    assert connector.groups_of(Person(id="bob@example.com")) == set()  # not a Zendesk user id
    teams = {f"Team {n:03d}" for n in range(150)}  # more than one page (cursor pagination)
    with emulator.lock:
        emulator.groups["alice"] = sorted(teams)
        emulator.groups["bob"] = ["AI Review"]
    assert connector.groups_of(_user("alice")) == teams
    assert connector.groups_of(_user("bob")) == {"AI Review"}
    with emulator.lock:  # a deleted group grants nothing
        next(g for g in emulator.group_records if g["name"] == "AI Review")["deleted"] = True
    assert connector.groups_of(_user("bob")) == set()


def test_user_groups_endpoint_answers_in_zendesks_shape(zd):
    emulator, running, _ = zd
    auth = ("bridge@example.com/token", "bridge-api-token")
    ca = running.connection("zendesk")["ca_bundle"]
    answer = requests.get(f"{running.url}/api/v2/users/{USERS['bob'][0]}/groups.json", auth=auth, verify=ca, timeout=5).json()
    assert {g["name"] for g in answer["groups"]} == {"Support", "AI Review"}
    assert {"id", "url", "name", "is_public", "default", "deleted", "created_at"} <= set(answer["groups"][0])
    assert answer["meta"]["has_more"] is False and answer["links"]["next"] is None
    missing = requests.get(f"{running.url}/api/v2/users/424242/groups.json", auth=auth, verify=ca, timeout=5)
    assert missing.status_code == 404 and missing.json()["error"] == "RecordNotFound"


def test_who_the_bridge_is_is_asked_once_for_every_thread():
    """Each worker thread has its own connector; who the bridge is in Zendesk (its own
    comments and changes are told apart by it) is asked once per process and account."""
    emulator = ZendeskEmulator(webhook_secret=SECRET)
    asked = []
    build = emulator.build_app

    def counting_app():
        app = build()

        async def counted(scope, receive, send):
            if scope["type"] == "http" and scope["path"] == "/api/v2/users/me.json":
                asked.append(1)
            await app(scope, receive, send)
        return counted

    emulator.build_app = counting_app
    running = start_emulator(emulator)
    connectors = [connector_for(config_for(running.connection("zendesk"))) for _ in range(4)]
    try:
        origin = _origin(emulator)
        assert connectors[0].add_comment(origin, "Waiting for a reviewer", public=False).by_bridge
        threads = [threading.Thread(target=c.get_ticket, args=(origin,)) for c in connectors[1:]]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert all(c.get_ticket(origin).comments[-1].by_bridge for c in connectors)
        assert len(asked) == 1
    finally:
        for connector in connectors:
            connector.close()
        running.stop()
