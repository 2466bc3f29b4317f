"""Jira quirks: the webhook forms Cloud and Server send, signing and rotation, transitions,
Service Management internal comments, create errors, and who changed the status."""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections import Counter
from datetime import datetime, timezone

import pytest
from jira import JIRA

from connectors import config_for, connector_for
from connectors.emulators import Act, start_emulator
from connectors.emulators.jira import JiraEmulator
from connectors.errors import PermanentError, RemoteNotFoundError, WebhookVerificationError
from connectors.jira import _parse_time
from connectors.signing import hmac_sha256_hex
from helpers import wait_for

SECRET = "jira-test-secret"

# contract file -> (kind, ticket_key)
WEBHOOKS = {
    "webhook_cloud_comment_created.json": ("comment_added", "10040"),
    "webhook_cloud_issue_created.json": ("created", "10040"),
    "webhook_cloud_issue_updated_custom_field.json": ("updated", "10368"),
    "webhook_cloud_issue_updated_labels.json": ("updated", "10040"),
    "webhook_cloud_issue_updated_priority.json": ("updated", "10040"),
    "webhook_cloud_issue_updated_status_todo_to_inprogress.json": ("status_changed", "10040"),
    "webhook_server_comment_created.json": ("comment_added", "10013"),  # issue id only in comment.self
    "webhook_server_issue_updated_status_in_progress.json": ("status_changed", "10300"),
}


@pytest.fixture
def jira(recorder):
    emulator = JiraEmulator(webhook_url=recorder.url + "/hook", webhook_secret=SECRET)
    running = start_emulator(emulator)
    connector = connector_for(config_for(running.connection("jira")))
    yield emulator, running, connector
    connector.close()
    running.stop()


def offline_connector(*secrets: str, tolerance: float = 300):
    config = config_for({"name": "jira", "type": "jira", "base_url": "http://127.0.0.1:9", "email": "x@example.com",
                         "api_token": "t", "webhook_secrets": list(secrets), "webhook_tolerance_seconds": tolerance})
    return connector_for(config)


def signed(body: bytes, secret: str = SECRET, **extra: str) -> dict[str, str]:
    return {"x-hub-signature": "sha256=" + hmac_sha256_hex(secret, body), **extra}


def fresh(payload: dict) -> bytes:
    return json.dumps(payload | {"timestamp": int(time.time() * 1000)}).encode()


@pytest.mark.parametrize("name", sorted(WEBHOOKS))
def test_documented_webhooks_parse(contracts, name):
    payload = json.loads((contracts / "jira" / name).read_text())
    body = fresh(payload)
    events = offline_connector(SECRET).verify_and_parse_webhook(signed(body), body)
    kind, key = WEBHOOKS[name]
    assert [(e.kind, e.ticket_key) for e in events] == [(kind, key)]
    assert events[0].event_id == hashlib.sha256(body).hexdigest()  # no delivery header: hash of the body


def test_documented_webhook_with_its_own_old_timestamp_is_stale(contracts):
    body = (contracts / "jira" / "webhook_cloud_issue_updated_status_todo_to_inprogress.json").read_bytes()
    with pytest.raises(WebhookVerificationError, match="replay window"):
        offline_connector(SECRET).verify_and_parse_webhook(signed(body), body)


def test_old_server_issue_commented_form_is_a_comment():
    body = fresh({"webhookEvent": "jira:issue_updated", "issue_event_type_name": "issue_commented",
                  "issue": {"id": "10301", "key": "OPS-3"}, "comment": {"id": "1", "body": "hi"}})
    events = offline_connector(SECRET).verify_and_parse_webhook(signed(body), body)
    assert [(e.kind, e.ticket_key) for e in events] == [("comment_added", "10301")]


def test_signature_rotation_headers_and_delivery_id():
    body = fresh({"webhookEvent": "jira:issue_updated", "issue": {"id": "7"},
                  "changelog": {"items": [{"field": "Status", "fieldtype": "jira"}]}})
    connector = offline_connector("new-secret", "old-secret")
    headers = {"X-Hub-Signature": "sha256=" + hmac_sha256_hex("old-secret", body),
               "X-Atlassian-Webhook-Identifier": "delivery-123"}
    [event] = connector.verify_and_parse_webhook(headers, body)
    assert (event.event_id, event.kind) == ("delivery-123", "status_changed")
    with pytest.raises(WebhookVerificationError):
        connector.verify_and_parse_webhook(signed(body, "someone-else"), body)
    with pytest.raises(WebhookVerificationError):  # X-Hub-Signature-256 is GitHub's, not Jira's
        connector.verify_and_parse_webhook({"X-Hub-Signature-256": headers["X-Hub-Signature"]}, body)
    with pytest.raises(WebhookVerificationError):
        connector.verify_and_parse_webhook(signed(b"[1, 2"), b"[1, 2")


def test_emulator_webhooks_are_signed_and_name_the_ticket(jira, recorder):
    emulator, running, connector = jira
    ref = connector.create_ticket(emulator.contract_fields(), review_id="rev_hooks")
    connector.update_ticket(ref.key, {"summary": "[AI review] renamed", "status": "In Review"})
    hooks = lambda: [r for r in recorder.requests if r.path == "/hook"]  # noqa: E731
    hits = wait_for(lambda: hooks()[:3] if len(hooks()) >= 3 else None, what="three webhooks")
    events = [e for hit in hits for e in connector.verify_and_parse_webhook(hit.headers, hit.body)]
    assert [e.kind for e in events] == ["created", "updated", "status_changed"]
    assert {e.ticket_key for e in events} == {ref.key}
    assert len({e.event_id for e in events}) == 3
    payload = json.loads(hits[2].body)
    assert payload["issue"]["fields"]["status"]["name"] == "In Review"
    assert payload["changelog"]["items"][0]["toString"] == "In Review"


def test_decision_read_back_names_the_reviewer_not_the_bridge(jira):
    emulator, running, connector = jira
    ref = connector.create_ticket(emulator.contract_fields(), review_id="rev_bob")
    connector.update_ticket(ref.key, {"status": "In Review"})
    assert connector.get_ticket(ref.key).changed_by.email == "hitl-bridge@example.com"
    connector.add_comment(ref.key, "Waiting for a reviewer", public=False)
    emulator.act(Act(key=ref.display, action="reject", body="Amount too high", user="bob"))
    ticket = connector.get_ticket(ref.key)
    assert ticket.status == "Rejected" and ticket.fields["status"] == "Rejected"
    assert ticket.changed_by.email == "bob@example.com" and ticket.changed_by.name == "Bob Approver"
    assert [(c.body, c.by_bridge) for c in ticket.comments] == [
        ("Waiting for a reviewer", True),
        ("Amount too high", False),
    ]
    assert "hitl-rev_bob" in ticket.fields["labels"] and "ai-review" in ticket.fields["labels"]
    assert ticket.labels["issuetype"] == "Task" and ticket.updated is not None
    assert ticket.ref.display.startswith("HITL-") and ticket.ref.url.endswith("/browse/" + ticket.ref.display)


def test_status_updates_are_idempotent_and_unknown_statuses_refused(jira):
    emulator, running, connector = jira
    ref = connector.create_ticket(emulator.contract_fields() | {"status": "In Review"}, review_id="rev_move")
    assert connector.get_ticket(ref.key).status == "In Review"
    connector.update_ticket(ref.key, {"status": "cancelled"})  # case-insensitive
    connector.update_ticket(ref.key, {"status": "Cancelled"})  # a retry: already there
    assert connector.get_ticket(ref.key).status == "Cancelled"
    with pytest.raises(PermanentError, match="no transition"):
        connector.update_ticket(ref.key, {"status": "Escalated"})


def test_service_management_comments_can_be_internal(jira):
    emulator, running, connector = jira
    origin = next(t for t in emulator.list_tickets() if t["display"] == "SUP-1")
    note = connector.add_comment(origin["key"], "internal: refund approved", public=False)
    reply = connector.add_comment(origin["display"], "Your refund is on its way.", public=True)
    assert (note.public, reply.public) == (False, True)
    comments = connector.get_ticket(origin["key"]).comments
    assert [c.public for c in comments] == [True, True, False, True]
    assert comments[0].author.email == "carol@example.com"
    seen_by_customer = [c["body"] for c in emulator.list_tickets()[0]["comments"] if c["public"]]
    assert "internal: refund approved" not in seen_by_customer


def test_plain_jira_has_no_internal_comments(jira):
    emulator, running, connector = jira
    ref = connector.create_ticket(emulator.contract_fields(), review_id="rev_plain")
    assert connector.add_comment(ref.key, "note", public=False).public is True


def test_create_errors_are_permanent_with_jiras_message(jira):
    emulator, running, connector = jira
    with pytest.raises(PermanentError, match="priorityX") as caught:
        connector.create_ticket(emulator.contract_fields() | {"priorityX": {"name": "High"}}, review_id="rev_bad")
    assert caught.value.status == 400
    with pytest.raises(PermanentError, match="summary"):
        connector.create_ticket({"project": {"key": "HITL"}, "issuetype": {"name": "Task"}}, review_id="rev_bad")
    with pytest.raises(RemoteNotFoundError, match="does not exist"):
        connector.add_comment("HITL-4242", "hello", public=True)


def test_find_returns_the_first_of_duplicates(jira):
    emulator, running, connector = jira
    first = connector.create_ticket(emulator.contract_fields(), review_id="rev dup")
    connector.create_ticket(emulator.contract_fields(), review_id="rev dup")
    assert connector.find_ticket("rev dup") == first


def test_the_library_searches_and_reads_projects(jira):
    emulator, running, connector = jira
    settings = running.connection("jira")
    client = JIRA(server=running.url, basic_auth=(settings["email"], settings["api_token"]), max_retries=0)
    assert {i.key for i in client.search_issues("project = SUP ORDER BY created DESC")} == {"SUP-1", "SUP-2"}
    assert client.search_issues('project = SUP AND key = "SUP-2"')[0].fields.summary.startswith("Where is")
    assert client.project("SUP").projectTypeKey == "service_desk"
    assert client.issue_type_by_name("Task", project="HITL").id == "10001"
    issue = client.create_issue(fields={"project": "HITL", "issuetype": "Bug", "summary": "via names"})
    assert issue.key.startswith("HITL-") and issue.fields.status.name == "To Do"
    client.close()


def test_the_servers_version_and_the_bridges_account_are_asked_once_for_every_thread(recorder):
    """Each worker thread has its own connector; the server's version and who the bridge is
    there are asked once per process and server, not once per thread (a round trip and a
    call of the rate limit each)."""
    class Counting(JiraEmulator):
        asked: Counter = Counter()

        def _r_server_info(self, request, username, body):
            Counting.asked["serverInfo"] += 1
            return super()._r_server_info(request, username, body)

        def _r_myself(self, request, username, body):
            Counting.asked["myself"] += 1
            return super()._r_myself(request, username, body)

    running = start_emulator(Counting(webhook_url=recorder.url + "/hook", webhook_secret=SECRET))
    config = config_for(running.connection("jira"))
    connectors = [connector_for(config) for _ in range(4)]
    try:
        ref = connectors[0].create_ticket({"project": {"key": "HITL"}, "issuetype": {"name": "Task"}, "summary": "One"},
                                          review_id="rev_version_once")
        connectors[0].get_ticket(ref.key)  # the first asks; threads racing it might ask too
        threads = [threading.Thread(target=c.get_ticket, args=(ref.key,)) for c in connectors[1:]]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert all(c.get_ticket(ref.key).ref.key == ref.key for c in connectors)
        assert Counting.asked == {"serverInfo": 1, "myself": 1}
    finally:
        for connector in connectors:
            connector.close()
        running.stop()


@pytest.mark.parametrize("written, expected", [
    ("2019-02-15T19:11:18.321-0800", datetime(2019, 2, 16, 3, 11, 18, 321000, tzinfo=timezone.utc)),
    ("2019-02-15T19:11:18+0000", datetime(2019, 2, 15, 19, 11, 18, tzinfo=timezone.utc)),
    ("2019-02-15T19:11:18.321", None),  # no offset: not a time Jira writes
    ("yesterday", None),
    (None, None),
])
def test_times_as_jira_writes_them(written, expected):
    assert _parse_time(written) == expected


def test_the_connections_ca_bundle_wins_over_requests_ca_bundle(recorder, monkeypatch):
    """requests lets REQUESTS_CA_BUNDLE replace a session's own bundle: a Jira behind a
    private CA must still be verified with the connection's ``ca_bundle``."""
    import certifi

    class PrivateJira(JiraEmulator):
        tls = True

    monkeypatch.setenv("REQUESTS_CA_BUNDLE", certifi.where())  # public roots only: not the private CA
    running = start_emulator(PrivateJira(webhook_url=recorder.url + "/hook", webhook_secret=SECRET))
    connector = connector_for(config_for(running.connection("jira")))
    try:
        assert running.url.startswith("https://")
        assert connector.check().id
    finally:
        connector.close()
        running.stop()
