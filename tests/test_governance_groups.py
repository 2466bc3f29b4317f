"""Governance (issue 9): `reviewers.groups` resolved in ServiceNow (sys_user_grmember) and
Zendesk (a user's groups), end to end: the real clients against the emulators, the decision
read back, refused with a comment or delivered to the agent. Jira's are in test_governance.py."""

from __future__ import annotations

import pytest

from harness import Bridge, mapping_variant

ROUTES = """
routes:
  - {name: servicenow-grouped, when: "metadata.queue == 'servicenow-grouped'", mapping: servicenow_grouped}
  - {name: zendesk-grouped, when: "metadata.queue == 'zendesk-grouped'", mapping: zendesk_grouped}
"""
VENDORS = ("servicenow", "zendesk")
# What bob does to put a refused approval back, so that his own approval is a change again.
REOPEN = {
    "servicenow": {"field": "approval", "value": "requested"},
    "zendesk": {"field": "remove_tags", "value": ["review_approved"]},
}


@pytest.fixture(scope="module")
def bridge(tmp_path_factory):
    b = Bridge(
        tmp_path_factory.mktemp("governance_groups"),
        vendors=VENDORS,
        routes=ROUTES,
        mappings={f"{v}_grouped": mapping_variant(f"{v}_review", f"{v}_grouped", reviewers={"groups": ["AI Review"]})
                  for v in VENDORS},
    ).start()
    yield b
    b.stop()


@pytest.mark.parametrize("vendor", VENDORS)
def test_group_member_decides_and_others_are_refused(bridge, vendor):
    review = bridge.submit(metadata={"queue": f"{vendor}-grouped"})
    key = bridge.wait_ticket(review["id"])["ticket"]["key"]
    bridge.act(vendor, key, "approve", user="alice")  # in the emulator's other group only
    bridge.wait_comment(vendor, key, "alice@example.com is not allowed to decide")
    assert bridge.review(review["id"])["status"] == "open"
    assert not bridge.callbacks_for(review["id"])
    bridge.act(vendor, key, "set_field", user="bob", **REOPEN[vendor])
    bridge.act(vendor, key, "approve", user="bob")  # in AI Review, resolved through the ticket system
    decided = bridge.wait_status(review["id"], "approved")
    assert decided["decision"]["reviewer"]["email"] == "bob@example.com"
    payload = bridge.verified_callback(review["id"])
    assert payload["status"] == "approved" and payload["decision"]["reviewer"]["email"] == "bob@example.com"
    bridge.wait_review(review["id"], lambda r: r["delivery"]["state"] == "delivered", what="delivery")


@pytest.mark.parametrize("vendor", VENDORS)
def test_group_membership_is_read_from_the_ticket_system_at_decision_time(bridge, vendor):
    emulator = bridge.emulators[vendor].emulator
    review = bridge.submit(metadata={"queue": f"{vendor}-grouped"})
    key = bridge.wait_ticket(review["id"])["ticket"]["key"]
    with emulator.lock:
        before = list(emulator.groups["alice"])
        emulator.groups["alice"] = [*before, "AI Review"]
    try:
        bridge.act(vendor, key, "reject", "No.", user="alice")
        decided = bridge.wait_status(review["id"], "rejected")
        assert decided["decision"]["reviewer"]["email"] == "alice@example.com"
        assert decided["decision"]["decisions"][0]["message"] == "No."
    finally:
        with emulator.lock:
            emulator.groups["alice"] = before
