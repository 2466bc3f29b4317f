"""The one suite every connector passes, against its own emulator over real HTTP."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from email.utils import format_datetime
from pathlib import Path

import pytest

from bridge.mapping import parse_mapping
from connectors import config_for, connector_for
from connectors.emulators import EMULATORS, Act, start_emulator
from connectors.errors import (
    AuthError,
    RateLimitedError,
    RemoteNotFoundError,
    RetryableError,
    WebhookVerificationError,
    retry_after_seconds,
)
from helpers import ForwardProxy, wait_for

ROOT = Path(__file__).resolve().parents[2]
VENDORS = sorted(EMULATORS)


class System:
    def __init__(self, vendor: str, recorder):
        self.vendor = vendor
        self.emulator = EMULATORS[vendor](webhook_url=recorder.url + "/hook")
        self.running = start_emulator(self.emulator)
        self.recorder = recorder
        self.config = config_for(self.running.connection(vendor))
        self.connector = connector_for(self.config)
        self.mapping = parse_mapping((ROOT / "mappings" / f"{vendor}_review.yaml").read_text(), file=f"{vendor}_review.yaml")

    def connector_with(self, **overrides):
        return connector_for(config_for(self.running.connection(self.vendor, **overrides)))

    def create(self, review_id: str = "rev_contract_1"):
        return self.connector.create_ticket(self.emulator.contract_fields(), review_id=review_id)

    def close(self):
        self.connector.close()
        self.running.stop()


@pytest.fixture(params=VENDORS)
def system(request, recorder):
    sys_ = System(request.param, recorder)
    yield sys_
    sys_.close()


def test_check_returns_the_bridge_account(system):
    me = system.connector.check()
    assert me.id


def test_calls_go_through_the_proxy_the_environment_names(system, monkeypatch):
    """As with requests: HTTP(S)_PROXY and NO_PROXY are honoured (read once per host)."""
    proxy = ForwardProxy().start()
    for name in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.setenv(name, proxy.url)
    for name in ("no_proxy", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
    try:
        connector = system.connector_with()
        ref = connector.create_ticket(system.emulator.contract_fields(), review_id="rev_proxied")
        assert connector.get_ticket(ref.key).ref.key == ref.key
        connector.close()
        assert set(proxy.hosts) == {system.running.url.split("://", 1)[1]}
    finally:
        proxy.stop()


def test_the_connections_ca_bundle_wins_over_requests_ca_bundle(system, monkeypatch):
    """requests lets REQUESTS_CA_BUNDLE replace a session's own bundle; a system behind a
    private CA (the TLS emulators) is still verified with the connection's ``ca_bundle``."""
    import certifi

    monkeypatch.setenv("REQUESTS_CA_BUNDLE", certifi.where())  # public roots only: not the emulators' CA
    connector = system.connector_with()
    try:
        ref = connector.create_ticket(system.emulator.contract_fields(), review_id="rev_private_ca")
        assert connector.get_ticket(ref.key).ref.key == ref.key
    finally:
        connector.close()


def test_create_then_get_and_find(system):
    ref = system.create("rev_abc")
    assert ref.key and ref.url and ref.display
    ticket = system.connector.get_ticket(ref.key)
    assert ticket.ref.key == ref.key
    assert system.connector.find_ticket("rev_abc") == ref
    assert system.connector.find_ticket("rev_nobody") is None


def test_find_after_lost_response(system):
    """The upstream stores the ticket but its answer never arrives: find_ticket recovers it."""
    slow = system.connector_with(timeout_seconds=0.5)
    system.emulator.settings.write_delay_ms = 1500
    with pytest.raises(RetryableError):
        slow.create_ticket(system.emulator.contract_fields(), review_id="rev_lost")
    system.emulator.settings.write_delay_ms = 0
    found = system.connector.find_ticket("rev_lost")
    assert found is not None
    assert len([t for t in system.emulator.list_tickets() if t["key"] == found.key]) == 1
    slow.close()


def test_comments_keep_their_visibility(system):
    ref = system.create()
    system.connector.add_comment(ref.key, "internal note for reviewers", public=False)
    system.connector.add_comment(ref.key, "hello customer", public=True)
    comments = system.connector.get_ticket(ref.key).comments
    bodies = {c.body.strip(): c for c in comments}
    assert "internal note for reviewers" in bodies and "hello customer" in bodies
    assert bodies["hello customer"].public is True
    assert bodies["hello customer"].by_bridge is True


def test_reviewer_decision_is_read_back_after_a_signed_webhook(system):
    ref = system.create("rev_decide")
    system.emulator.act(Act(key=ref.key, action="approve", body="Looks right to me"))
    delivered = wait_for(lambda: [r for r in system.recorder.requests if r.path == "/hook"], what="webhook")
    events = []
    for hit in delivered:
        events += system.connector.verify_and_parse_webhook(hit.headers, hit.body)
    assert ref.key in {e.ticket_key for e in events}
    assert all(e.event_id for e in events)
    ticket = system.connector.get_ticket(ref.key)
    spec = system.mapping.decision
    values = ticket.fields.get(spec.field)
    candidates = set(values) if isinstance(values, list) else {values, ticket.labels.get(spec.field)}
    assert {k for k, v in spec.values.items() if v == "approve"} & {str(c) for c in candidates if c is not None}
    assert ticket.changed_by is not None and ticket.changed_by.id
    assert any(c.body.strip() == "Looks right to me" and not c.by_bridge for c in ticket.comments)


def test_tampered_webhook_is_refused(system):
    ref = system.create("rev_tamper")
    system.emulator.act(Act(key=ref.key, action="comment", body="a comment"))
    hit = wait_for(lambda: [r for r in system.recorder.requests if r.path == "/hook"], what="webhook")[0]
    with pytest.raises(WebhookVerificationError):
        system.connector.verify_and_parse_webhook(hit.headers, hit.body + b" ")
    unsigned = {k: v for k, v in hit.headers.items() if "sign" not in k.lower() and "hub" not in k.lower()}
    with pytest.raises(WebhookVerificationError):
        system.connector.verify_and_parse_webhook(unsigned, hit.body)


def test_rate_limit_is_classified_with_retry_after(system):
    ref = system.create()
    system.emulator.settings.faults = [{"status": 429, "times": 1, "retry_after": 2}]
    with pytest.raises(RateLimitedError) as caught:
        system.connector.get_ticket(ref.key)
    assert caught.value.retry_after == 2
    assert system.connector.get_ticket(ref.key).ref.key == ref.key


def test_retry_after_as_a_date_is_read_as_the_seconds_until_it(system):
    ref = system.create()
    later = datetime.now(timezone.utc) + timedelta(seconds=30)
    system.emulator.settings.faults = [{"status": 429, "times": 1, "retry_after": format_datetime(later, usegmt=True)}]
    with pytest.raises(RateLimitedError) as caught:
        system.connector.get_ticket(ref.key)
    assert 25 < caught.value.retry_after <= 30


def test_server_error_is_retryable(system):
    ref = system.create()
    system.emulator.settings.faults = [{"status": 503, "times": 1}]
    with pytest.raises(RetryableError):
        system.connector.get_ticket(ref.key)


def test_unknown_ticket_is_not_found(system):
    with pytest.raises(RemoteNotFoundError):
        system.connector.get_ticket(system.emulator.missing_key())


def test_bad_credentials_are_auth_errors(system):
    bad = system.connector_with(**system.emulator.bad_credentials())
    with pytest.raises(AuthError):
        bad.check()
    bad.close()


def test_reviewer_groups_errors_are_classified(system):
    """``groups_of`` (optional; all four vendors have it) goes through the same translation."""
    me = system.connector.check()
    system.emulator.settings.faults = [{"status": 429, "times": 1, "retry_after": 3}]
    with pytest.raises(RateLimitedError) as caught:
        system.connector.groups_of(me)
    assert caught.value.retry_after == 3 and caught.value.operation == "groups_of"
    bad = system.connector_with(**system.emulator.bad_credentials())
    with pytest.raises(AuthError):
        bad.groups_of(me)
    bad.close()


def test_update_moves_the_status(system):
    ref = system.create()
    status = system.emulator.contract_close_status()
    system.connector.update_ticket(ref.key, {"status": status})
    assert system.connector.get_ticket(ref.key).status == status


def test_errors_never_leak_secrets(system):
    bad = system.connector_with(**system.emulator.bad_credentials())
    with pytest.raises(AuthError) as caught:
        bad.check()
    for value in system.emulator.bad_credentials().values():
        if isinstance(value, str) and len(value) > 6:
            assert value not in str(caught.value)
    bad.close()


@pytest.mark.parametrize("header, seconds", [
    ("120", 120.0), (" 3 ", 3.0), ("1.5", 1.5), ("Sun, 06 Dec 2026 12:00:30 GMT", 30.0),
    ("Sun, 06 Dec 2026 11:00:00 GMT", 0.0),  # a date gone by: at once
    ("9" * 40, 86_400.0),  # a day at most: the retry's date arithmetic must not overflow
    (None, None), ("", None), ("-1", None), ("\u00b2", None), ("1e400", None), ("NaN", None), ("soon", None),
    ("Sun, 06 Dec 2026 99:00:00 GMT", None),
])
def test_retry_after_headers_are_read_as_rfc_9110_says(header, seconds):
    now = datetime(2026, 12, 6, 12, 0, 0, tzinfo=timezone.utc)
    assert retry_after_seconds(header, now=now) == seconds
