"""The audit trail is append-only in effect: any edit, deletion or reordering is caught."""

from __future__ import annotations

import threading

import pytest
from sqlalchemy import delete, event, select, update
from typer.testing import CliRunner

from bridge import audit
from bridge.cli import app
from bridge.db import Database
from bridge.models import AuditEvent


@pytest.fixture
def db(db):
    """Five events on SQLite, or on PostgreSQL under HITL_TEST_DATABASE_URL (where a
    transaction's events are appended in one statement)."""
    with db.transaction() as session:
        for n in range(5):
            audit.record(session, "review.submitted", actor="api_key:agent", review_id=f"rev_{n}", n=n)
    return db


def verify(db):
    with db.transaction() as session:
        return audit.verify(session)


def test_intact_chain_verifies(db):
    result = verify(db)
    assert result.ok and result.checked == 5


def test_a_transactions_events_keep_their_order_and_content(db):
    """Several events of one transaction join the chain in the order they were recorded,
    each with its own content (kept apart, so retention can purge it)."""
    with db.transaction() as session:
        audit.record(session, "review.submitted", actor="api_key:agent", review_id="rev_a", title="Refund $750", n=1.5)
        audit.record(session, "ticket.created", actor="bridge", review_id="rev_a", key="HITL-1")
        audit.record(session, "review.decided", actor="reviewer:ana@acme.com", review_id="rev_a",
                     decision={"type": "reject", "message": "Not eligible: \"final sale\""})
    with db.read() as session:
        events = list(session.execute(select(AuditEvent).where(AuditEvent.review_id == "rev_a").order_by(AuditEvent.id)).scalars())
        shown = audit.with_content(session, events)
    assert [e["kind"] for e in shown] == ["review.submitted", "ticket.created", "review.decided"]
    assert shown[0]["data"] == {"title": "Refund $750", "n": 1.5, "content_sha256": shown[0]["data"]["content_sha256"]}
    assert shown[1]["data"] == {"key": "HITL-1"}
    assert shown[2]["data"]["decision"] == {"type": "reject", "message": 'Not eligible: "final sale"'}
    assert [e["prev_hash"] for e in shown[1:]] == [e["hash"] for e in shown[:-1]]
    result = verify(db)
    assert result.ok and result.checked == 8, result.problem


def test_edited_event_is_caught(db):
    with db.transaction() as session:
        session.execute(update(AuditEvent).where(AuditEvent.id == 3).values(actor="api_key:mallory"))
    result = verify(db)
    assert not result.ok and "event 3" in result.problem


def test_deleted_event_is_caught(db):
    with db.transaction() as session:
        session.execute(delete(AuditEvent).where(AuditEvent.id == 2))
    assert not verify(db).ok


def test_deleted_newest_event_is_caught(db):
    with db.transaction() as session:
        session.execute(delete(AuditEvent).where(AuditEvent.id == 5))
    assert not verify(db).ok


def test_reordered_events_are_caught(db):
    with db.transaction() as session:
        rows = {e.id: e for e in session.execute(select(AuditEvent)).scalars()}
        a, b = rows[2], rows[4]
        fields = ("review_id", "at", "actor", "kind", "data", "prev_hash", "hash")
        va, vb = [getattr(a, f) for f in fields], [getattr(b, f) for f in fields]
        for f, x, y in zip(fields, va, vb):
            setattr(a, f, y)
            setattr(b, f, x)
    assert not verify(db).ok


def test_cli_verify(db, tmp_path, monkeypatch):
    config = tmp_path / "c.yaml"
    config.write_text(f"database_url: {db.url}\n")
    ok = CliRunner().invoke(app, ["audit", "verify", "--config", str(config)])
    assert ok.exit_code == 0 and "5 events" in ok.output
    with db.transaction() as session:
        session.execute(update(AuditEvent).where(AuditEvent.id == 1).values(data={"n": 99}))
    bad = CliRunner().invoke(app, ["audit", "verify", "--config", str(config)])
    assert bad.exit_code == 1 and "event 1" in bad.output


def test_instances_appending_in_turn_keep_one_chain(db):
    """Each instance chains onto the head it moved last while that is still the head; when
    another instance moved it since, or its own transaction rolled back, it reads the head."""
    other = Database(db.url)
    try:
        for n in range(4):
            for writer in (db, other, other, db):
                with writer.transaction() as session:
                    audit.record(session, "review.submitted", actor="api_key:agent", review_id=f"rev_turn_{n}")
        with pytest.raises(RuntimeError):
            with other.transaction() as session:
                audit.record(session, "review.submitted", actor="api_key:agent", review_id="rev_rolled_back")
                session.flush()
                audit._append_pending(session)  # the head moved in a transaction that then fails
                raise RuntimeError("the transaction fails after the head moved")
        with other.transaction() as session:
            audit.record(session, "review.submitted", actor="api_key:agent", review_id="rev_after")
    finally:
        other.dispose()
    result = verify(db)
    assert result.ok, result.problem
    assert result.checked == 5 + 16 + 1


def test_threads_of_one_instance_append_in_turn(db):
    """Eight threads of one instance auditing at once keep one chain, and none finds the head
    moved by a sibling (on PostgreSQL each such append read the head again under lock and
    appended a second time: nearly all of them, at twice the CPU)."""
    head_reads = []

    def count(conn, cursor, statement, *rest):
        if statement.startswith("SELECT audit_head.hash"):
            head_reads.append(statement)

    def append(thread: int) -> None:
        for n in range(25):
            with db.transaction() as session:
                audit.record(session, "review.submitted", actor="api_key:agent", review_id=f"rev_{thread}_{n}")

    event.listen(db.engine, "before_cursor_execute", count)
    try:
        threads = [threading.Thread(target=append, args=(t,)) for t in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
    finally:
        event.remove(db.engine, "before_cursor_execute", count)
    result = verify(db)
    assert result.ok, result.problem
    assert result.checked == 5 + 8 * 25
    assert head_reads == []


def test_events_carrying_a_nul_character_are_stored_and_verify(db):
    """A reviewer's comment may carry a NUL (JSON ``\\u0000``): its events are appended, on
    PostgreSQL too (whose JSON recordsets refuse that escape unless it travels as text)."""
    for _ in range(2):  # the second append chains onto this process's head in one statement
        with db.transaction() as session:
            audit.record(session, "review.decided", actor="jira:alice", review_id="rev_nul",
                         decision={"message": "approved\u0000 with a NUL"}, note="a\u0000b")
    result = verify(db)
    assert result.ok, result.problem
    with db.transaction() as session:
        events = audit.with_content(session, list(session.execute(
            select(AuditEvent).where(AuditEvent.review_id == "rev_nul")).scalars()))
    assert [e["data"]["decision"]["message"] for e in events] == ["approved\u0000 with a NUL"] * 2
    assert [e["data"]["note"] for e in events] == ["a\u0000b"] * 2
