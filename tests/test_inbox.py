"""The webhook inbox (``bridge/inbox.py``) on both databases: what an acknowledged event
counts as, when it queues a read-back of its ticket, and that on PostgreSQL an event is one
statement that commits by itself."""

from __future__ import annotations

import pytest
from sqlalchemy import event, select

from bridge import inbox
from bridge.errors import NotFoundError
from bridge.models import Job, Review, WebhookEvent
from bridge.runtime import Runtime
from connectors import TicketEvent


def add_review(rt: Runtime, review_id: str, ticket_key: str, *, status: str = "open", route_mode: str = "enforce",
               shadow_decision: dict | None = None) -> None:
    with rt.db.transaction() as session:
        session.add(Review(id=review_id, status=status, title="t", request={}, api_key_name="agent", request_hash="h",
                           route_mode=route_mode, ticket_connection="jira", ticket_key=ticket_key,
                           shadow_decision=shadow_decision))


def sync_jobs(rt: Runtime, review_id: str) -> list[str]:
    with rt.db.read() as session:
        return list(session.execute(select(Job.dedupe_key).where(Job.review_id == review_id, Job.kind == "sync_ticket")).scalars())


def ack(rt: Runtime, *events: tuple[str, str]) -> dict:
    return inbox.accept(rt, "jira", [TicketEvent(event_id=e, ticket_key=k, kind="status_changed") for e, k in events])


def test_an_event_queues_one_read_back_and_a_resend_is_a_duplicate(rt):
    add_review(rt, "rev_1", "HITL-1")
    assert ack(rt, ("evt-1", "HITL-1")) == {"accepted": 1, "duplicate": 0, "ignored": 0, "unknown": 0}
    assert ack(rt, ("evt-1", "HITL-1")) == {"accepted": 0, "duplicate": 1, "ignored": 0, "unknown": 0}
    assert sync_jobs(rt, "rev_1") == ["sync_ticket:rev_1:evt-1"]


def test_a_burst_about_one_ticket_needs_one_pending_read_back(rt):
    add_review(rt, "rev_1", "HITL-1")
    assert ack(rt, ("evt-1", "HITL-1"), ("evt-2", "HITL-1"))["accepted"] == 2
    assert ack(rt, ("evt-3", "HITL-1"))["accepted"] == 1
    assert sync_jobs(rt, "rev_1") == ["sync_ticket:rev_1:evt-1"]
    with rt.db.transaction() as session:  # the worker took it: the next event queues another look
        session.execute(Job.__table__.update().values(state="done"))
    ack(rt, ("evt-4", "HITL-1"))
    assert sorted(sync_jobs(rt, "rev_1")) == ["sync_ticket:rev_1:evt-1", "sync_ticket:rev_1:evt-4"]


def test_decided_reviews_are_ignored_but_a_shadow_review_is_read_back_until_its_shadow_decision(rt):
    add_review(rt, "rev_decided", "HITL-1", status="approved")
    add_review(rt, "rev_shadow", "HITL-2", status="auto_approved", route_mode="shadow")
    add_review(rt, "rev_shadowed", "HITL-3", status="auto_approved", route_mode="shadow", shadow_decision={"source": "ticket"})
    outcome = ack(rt, ("evt-1", "HITL-1"), ("evt-2", "HITL-2"), ("evt-3", "HITL-3"), ("evt-4", "HITL-404"))
    assert outcome == {"accepted": 1, "duplicate": 0, "ignored": 2, "unknown": 1}
    assert sync_jobs(rt, "rev_shadow") and not sync_jobs(rt, "rev_decided") and not sync_jobs(rt, "rev_shadowed")
    with rt.db.read() as session:  # ignored events are recorded (a resend is a duplicate); unknown ones are not
        assert sorted(session.execute(select(WebhookEvent.event_id)).scalars()) == ["evt-1", "evt-2", "evt-3"]


def test_a_webhook_about_no_ticket_of_ours_is_not_found_and_records_nothing(rt):
    with pytest.raises(NotFoundError) as refused:
        ack(rt, ("evt-1", "HITL-9"), ("evt-2", "HITL-8"))
    assert refused.value.details == {"tickets": ["HITL-8", "HITL-9"]}
    with rt.db.read() as session:
        assert session.execute(select(WebhookEvent.id)).first() is None


def test_on_postgresql_an_event_is_one_statement_without_a_transaction(rt):
    if rt.db.one_writer:
        pytest.skip("PostgreSQL only: SQLite's acks share a group commit")
    add_review(rt, "rev_1", "HITL-1")
    seen: list[str] = []
    listener = lambda conn, cursor, statement, *rest: seen.append(statement.split()[0])  # noqa: E731
    event.listen(rt.db.engine, "before_cursor_execute", listener)
    try:
        ack(rt, ("evt-1", "HITL-1"))
    finally:
        event.remove(rt.db.engine, "before_cursor_execute", listener)
    assert seen == ["WITH"]
    assert sync_jobs(rt, "rev_1") == ["sync_ticket:rev_1:evt-1"]
