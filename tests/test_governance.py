"""Governance (issue 9): who may decide (groups, service accounts, quorum), redaction before
anything reaches a ticket, SLA reminders and escalations. Each test tries to break it."""

from __future__ import annotations

import json
import logging
import time

import pytest

from harness import Bridge, mapping_variant
from helpers import wait_for

CARD = "4111 1111 1111 1111"
CARD_DIGITS = CARD.replace(" ", "")


ROUTES = """
routes:
  - {name: grouped, when: "metadata.queue == 'grouped'", mapping: grouped_review}
  - {name: quorum, when: "metadata.queue == 'quorum'", mapping: quorum_review}
  - {name: service, when: "metadata.queue == 'service'", mapping: service_review}
  - {name: public, when: "metadata.queue == 'public'", mapping: public_review}
  - {name: sla, when: "metadata.queue == 'sla'", mapping: sla_review}
  - {name: jira-queue, when: "metadata.queue == 'jira'", mapping: jira_review}
"""


@pytest.fixture(scope="module")
def bridge(tmp_path_factory):
    b = Bridge(
        tmp_path_factory.mktemp("governance"),
        routes=ROUTES,
        mappings={
            "grouped_review": mapping_variant("jira_review", "grouped_review", reviewers={"groups": ["refund-approvers"]}),
            "quorum_review": mapping_variant("jira_review", "quorum_review", reviewers={"quorum": 2, "reopen": {"status": "In Review"}}),
            "service_review": mapping_variant("jira_review", "service_review", reviewers={"service_accounts": ["alice@example.com"]}),
            "public_review": mapping_variant("jira_review", "public_review", redaction={
                "clearance": "public", "patterns": [{"name": "order", "regex": r"A-\d{3}"}]}),
            "sla_review": mapping_variant("jira_review", "sla_review", sla={
                "expire_after_seconds": 60, "remind_after_seconds": 1, "remind_message": "Reminder: please decide.",
                "escalate_after_seconds": 1, "escalate": {"fields": {"priority": {"name": "Highest"}}, "comment": "Escalated."}}),
        },
    ).start()
    yield b
    b.stop()


# ----- who may decide ----------------------------------------------------------------


def test_group_member_decides_and_others_are_refused(bridge):
    review = bridge.submit(metadata={"queue": "grouped"})
    key = bridge.wait_ticket(review["id"])["ticket"]["key"]
    bridge.act("jira", key, "approve", user="alice")  # in jira-software-users only
    bridge.wait_comment("jira", key, "alice@example.com is not allowed to decide")
    assert bridge.review(review["id"])["status"] == "open"
    bridge.act("jira", key, "set_field", user="bob", field="status", value="In Review")
    bridge.act("jira", key, "approve", user="bob")  # in refund-approvers (resolved through Jira)
    decided = bridge.wait_status(review["id"], "approved")
    assert decided["decision"]["reviewer"]["email"] == "bob@example.com"


def test_group_membership_is_read_from_the_ticket_system_at_decision_time(bridge):
    jira = bridge.emulators["jira"].emulator
    review = bridge.submit(metadata={"queue": "grouped"})
    key = bridge.wait_ticket(review["id"])["ticket"]["key"]
    with jira.lock:
        jira.groups["alice"] = ["jira-software-users", "refund-approvers"]
    try:
        bridge.act("jira", key, "reject", "No.", user="alice")
        assert bridge.wait_status(review["id"], "rejected")["decision"]["reviewer"]["email"] == "alice@example.com"
    finally:
        with jira.lock:
            jira.groups["alice"] = ["jira-software-users"]


def test_agents_service_account_can_never_decide(bridge):
    review = bridge.submit(metadata={"queue": "service"})
    key = bridge.wait_ticket(review["id"])["ticket"]["key"]
    bridge.act("jira", key, "approve", user="alice")
    bridge.wait_comment("jira", key, "service account and can never decide")
    assert bridge.review(review["id"])["status"] == "open"
    assert not bridge.callbacks_for(review["id"])


def test_quorum_of_two_same_person_twice_counts_once(bridge):
    review = bridge.submit(metadata={"queue": "quorum"})
    key = bridge.wait_ticket(review["id"])["ticket"]["key"]
    bridge.act("jira", key, "approve", user="alice")
    bridge.wait_comment("jira", key, "approval 1 of 2 recorded (alice@example.com)")
    wait_for(lambda: bridge.ticket("jira", key)["status"] == "In Review", what="ticket reopened")
    assert bridge.review(review["id"])["status"] == "open"
    bridge.act("jira", key, "approve", user="alice")  # the same person again
    bridge.wait_comment("jira", key, "alice@example.com has already approved")
    assert bridge.review(review["id"])["status"] == "open"
    assert not bridge.callbacks_for(review["id"])
    bridge.act("jira", key, "set_field", user="bob", field="status", value="In Review")
    bridge.act("jira", key, "approve", user="bob")
    decided = bridge.wait_status(review["id"], "approved")
    assert decided["decision"]["reviewer"]["email"] == "bob@example.com"
    kinds = bridge.audit_kinds(review["id"])
    assert kinds.count("decision.approval_recorded") == 1 and "decision.quorum_met" in kinds
    wait_for(lambda: len(bridge.callbacks_for(review["id"])) == 1, what="one callback")


def test_quorum_any_reject_ends_it(bridge):
    review = bridge.submit(metadata={"queue": "quorum"})
    key = bridge.wait_ticket(review["id"])["ticket"]["key"]
    bridge.act("jira", key, "approve", user="alice")
    bridge.wait_comment("jira", key, "approval 1 of 2")
    wait_for(lambda: bridge.ticket("jira", key)["status"] == "In Review", what="ticket reopened")
    bridge.act("jira", key, "reject", "Not this one.", user="bob")
    decided = bridge.wait_status(review["id"], "rejected")
    assert decided["decision"]["decisions"][0]["message"] == "Not this one."


# ----- redaction -----------------------------------------------------------------------


def test_card_number_and_secrets_never_reach_the_ticket_a_comment_or_a_log_line(bridge, caplog):
    from bridge.redact import LogRedaction

    secret = "sk-live0123456789abcdefghijklmnop"
    review = bridge.submit(
        metadata={"queue": "public"},
        reasoning=f"Customer paid with {CARD}; mail jane.doe@example.org, IBAN DE89 3704 0044 0532 0130 00, key {secret}",
        action_requests=[{"name": "issue_refund", "args": {"order_id": "A-100", "card": CARD_DIGITS, "amount": 750},
                          "args_schema": {"type": "object", "properties": {"amount": {"type": "number"}}}}],
    )
    key = bridge.wait_ticket(review["id"])["ticket"]["key"]
    # An edit whose schema error would echo the card back into a refusal comment.
    bridge.act("jira", key, "edit", json.dumps({"order_id": "A-100", "amount": f"{CARD}"}), user="bob")
    bridge.wait_comment("jira", key, "do not fit")
    raw = bridge.ticket("jira", key)
    # Everything the bridge wrote (the reviewer's own comment is theirs, not the bridge's).
    ticket = json.dumps({**raw, "comments": [c for c in raw["comments"] if c["author"] == "HITL Bridge"]})
    for leaked in (CARD, CARD_DIGITS, secret, "jane.doe@example.org", "DE89 3704 0044 0532 0130 00", "A-100"):
        assert leaked not in ticket, leaked
    assert "[card ****1111]" in ticket and "[order redacted]" in ticket
    # The unmasked review stays in the bridge for the agent.
    assert bridge.review(review["id"])["request"]["action_requests"][0]["args"]["card"] == CARD_DIGITS
    # Log lines: the filter the bridge's log handler carries masks cards and secrets.
    record = logging.LogRecord("bridge.worker", logging.WARNING, __file__, 1, f"job.failed {CARD}", None, None)
    record.error = f"PermanentError: {secret} {CARD_DIGITS}"
    LogRedaction().filter(record)
    line = record.getMessage() + record.error
    assert CARD not in line and CARD_DIGITS not in line and secret not in line


def test_log_lines_of_a_configured_bridge_mask_card_numbers(capsys):
    from bridge import logs

    logs.configure("INFO")
    try:
        raise ValueError(f"bad card {CARD_DIGITS}")
    except ValueError:
        logging.getLogger("bridge.test").exception("job.crashed", extra={"error": f"card {CARD}"})
    err = capsys.readouterr().err
    assert "job.crashed" in err and CARD_DIGITS not in err and CARD not in err


def test_error_answers_do_not_echo_a_card_number(bridge):
    with bridge.client() as client:
        response = client.post("/v1/reviews", json=bridge.review_body(confidence=CARD_DIGITS))
    assert response.status_code == 422
    assert CARD_DIGITS not in response.text


def test_higher_clearance_shows_more_and_cards_never(bridge):
    from bridge.mapping import RedactionSpec
    from bridge.redact import redact_text

    text = f"mail a@example.com, IBAN GB82WEST12345698765432, ssn 123-45-6789, card {CARD}, phone +1 415-555-0132"
    public = redact_text(text, RedactionSpec(clearance="public"))
    internal = redact_text(text, RedactionSpec(clearance="internal"))
    confidential = redact_text(text, RedactionSpec(clearance="confidential"))
    assert "a@example.com" not in public and "+1 415-555-0132" not in public
    assert "a@example.com" in internal and "GB82WEST" not in internal and "123-45-6789" not in internal
    assert "GB82WEST12345698765432" in confidential and "123-45-6789" in confidential
    for masked in (public, internal, confidential, redact_text(text, RedactionSpec(clearance="restricted"))):
        assert CARD not in masked
    # Not every long number is a card (Luhn), and an invalid IBAN is left alone.
    assert "4111 1111 1111 1112" in redact_text("4111 1111 1111 1112", RedactionSpec(clearance="public"))
    assert "GB00WEST12345698765432" in redact_text("GB00WEST12345698765432", RedactionSpec(clearance="public"))


def test_preview_shows_what_will_be_masked(bridge):
    with bridge.client("admin") as client:
        response = client.post("/v1/mappings/public_review/preview",
                               json={"review": bridge.review_body(reasoning=f"card {CARD}")})
    assert response.status_code == 200, response.text
    body = response.json()
    assert CARD not in json.dumps(body["fields"])
    kinds = {m["kind"] for m in body["masked"]}
    assert {"card", "custom"} <= kinds


# ----- SLA -------------------------------------------------------------------------------


def test_sla_reminds_and_escalates_an_open_review_once(bridge):
    review = bridge.submit(metadata={"queue": "sla"})
    key = bridge.wait_ticket(review["id"])["ticket"]["key"]
    bridge.wait_comment("jira", key, "Reminder: please decide.")
    bridge.wait_comment("jira", key, "Escalated.")
    wait_for(lambda: bridge.ticket("jira", key)["fields"]["priority"] == "Highest", what="priority bumped")
    time.sleep(0.5)
    assert sum("Reminder" in c for c in bridge.comments("jira", key)) == 1
    kinds = bridge.audit_kinds(review["id"])
    assert kinds.count("sla.reminded") == 1 and kinds.count("sla.escalated") == 1
    assert bridge.review(review["id"])["status"] == "open"


def test_sla_does_nothing_once_decided(bridge):
    review = bridge.submit(metadata={"queue": "sla"})
    key = bridge.wait_ticket(review["id"])["ticket"]["key"]
    bridge.act("jira", key, "approve", user="bob")
    bridge.wait_status(review["id"], "approved")
    time.sleep(1.5)
    assert not any("Reminder" in c or "Escalated." in c for c in bridge.comments("jira", key))


def test_card_numbers_are_not_found_inside_ids():
    from bridge.redact import _cards

    text = "review rev_01a2124111111111111111ab, card 4111 1111 1111 1111."
    assert [replacement for _, _, replacement in _cards(text)] == ["[card ****1111]"]


def test_log_lines_go_to_stderr_as_it_is_when_they_are_logged(monkeypatch):
    """A test runner swaps sys.stderr per test and closes the old one; lines logged later
    reach the new one instead of failing as 'Logging error'."""
    import io
    import sys

    from bridge import logs

    first, second = io.StringIO(), io.StringIO()
    monkeypatch.setattr(sys, "stderr", first)
    logs.configure("INFO")
    first.close()
    monkeypatch.setattr(sys, "stderr", second)
    logging.getLogger("bridge.test").warning("after.swap")
    written = second.getvalue()
    assert "Logging error" not in written
    assert json.loads(written.splitlines()[-1])["message"] == "after.swap"
