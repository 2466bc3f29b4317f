"""A submission's new rows and its audit event are written together (``bridge/batch.py``):
on PostgreSQL as one statement that commits by itself, in a transaction when another
instance moved the audit chain's head; grouped with other submissions, a part whose
Idempotency-Key is taken fails alone. Every test here runs on both databases."""

from __future__ import annotations

import threading
import time

import pytest
from sqlalchemy import event, func, select
from typer.testing import CliRunner

from bridge import audit, outbox, reviews
from bridge.cli import app
from bridge.models import Job, Review
from bridge.runtime import Runtime
from bridge.schemas import ReviewRequest
from harness import Bridge, TestDatabase


@pytest.fixture
def bridge(idle_bridge):
    return idle_bridge


def submit(rt: Runtime, bridge: Bridge, key: str | None = None, **overrides) -> tuple[dict, bool]:
    request = ReviewRequest.model_validate(bridge.review_body(**overrides))
    out, created = reviews.submit(rt, request, api_key="agent", idempotency_key=key)
    return out.model_dump(mode="json"), created


def statements_of(rt: Runtime, call) -> list[str]:
    seen: list[str] = []

    def note(conn, cursor, statement, *rest):
        seen.append(" ".join(statement.split()[:3]))

    event.listen(rt.db.engine, "before_cursor_execute", note)
    try:
        call()
    finally:
        event.remove(rt.db.engine, "before_cursor_execute", note)
    return seen


def chain_ok(rt: Runtime) -> int:
    with rt.db.transaction() as session:
        result = audit.verify(session)
    assert result.ok, result.problem
    return result.checked


def test_a_submission_reads_back_as_it_was_sent(rt, bridge):
    """Text, numbers, nested metadata and times survive the write (on PostgreSQL: the JSON
    recordset of one statement), and the review's jobs and event are there with it."""
    metadata = {"queue": "jira", "note": "naïve café ✓ \"quoted\" \\ back", "nested": {"n": [1, 2.5, None, True]}, "nul": "a\u0000b"}
    first, _ = submit(rt, bridge, title="Refund «750» to order A-100", metadata=metadata, confidence=0.123456789)
    second, _ = submit(rt, bridge, key="order-A-100", metadata=metadata)
    for sent in (first, second):
        stored = reviews.get(rt, sent["id"]).model_dump(mode="json")
        assert stored == sent
        assert stored["request"]["metadata"] == metadata
    assert reviews.get(rt, first["id"]).request.confidence == 0.123456789
    assert reviews.get(rt, first["id"]).title == "Refund «750» to order A-100"
    with rt.db.read() as session:
        jobs = session.execute(select(Job.review_id, Job.kind, Job.state, Job.attempts)).all()
        assert sorted(jobs) == sorted((r["id"], outbox.CREATE, "pending", 0) for r in (first, second))
        row = session.get(Review, second["id"])
        assert row.created_at.tzinfo is not None and row.idempotency_key == "order-A-100"
    assert chain_ok(rt) == 2


@pytest.mark.skipif(not TestDatabase.postgres_configured(), reason="one statement on PostgreSQL; SQLite has no round trips")
def test_on_postgresql_a_submission_is_one_statement_until_another_instance_moves_the_head(rt, bridge):
    submit(rt, bridge)  # this process's first append reads the chain's head
    assert statements_of(rt, lambda: submit(rt, bridge)) == ["WITH head AS"]
    assert statements_of(rt, lambda: submit(rt, bridge, key="order-A-100")) == ["WITH head AS"]

    result = CliRunner().invoke(app, ["keys", "create", "ops-bot", "--config", str(bridge.config_file())])
    assert result.exit_code == 0, result.output  # another instance appended: the head moved

    fell_back = statements_of(rt, lambda: submit(rt, bridge))
    assert fell_back[0] == "WITH head AS"  # wrote nothing: then a transaction, which reads the head
    assert "SELECT audit_head.hash FROM" in fell_back
    assert statements_of(rt, lambda: submit(rt, bridge)) == ["WITH head AS"]
    assert chain_ok(rt) == 6
    with rt.db.read() as session:
        assert session.scalar(select(func.count()).select_from(Review)) == 5
        assert session.scalar(select(func.count()).select_from(Job)) == 5


def test_submissions_at_once_with_a_taken_key_each_get_their_own_answer(rt, bridge):
    """Submissions waiting together share one write; a key used twice at once makes one
    review (the second gets it back), a key reused with another body is a 409, and every
    other submission is written once."""
    submit(rt, bridge)
    outcomes: dict[int, object] = {}
    start = threading.Barrier(24)

    def call(n: int) -> None:
        key = "shared" if n < 4 else "reused" if n < 6 else f"own-{n}"
        title = "Another body" if n == 5 else "Refund $750 to order A-100"
        start.wait(10)
        try:
            outcomes[n] = submit(rt, bridge, key=key, title=title)
        except Exception as exc:  # noqa: BLE001 - the outcome under test
            outcomes[n] = exc

    threads = [threading.Thread(target=call, args=(n,)) for n in range(24)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)

    shared = {outcomes[n][0]["id"] for n in range(4)}
    assert len(shared) == 1 and sorted(outcomes[n][1] for n in range(4)) == [False, False, False, True]
    errors = [outcomes[n] for n in (4, 5) if isinstance(outcomes[n], Exception)]
    assert len(errors) == 1 and getattr(errors[0], "code", None) == "idempotency_conflict"
    assert all(outcomes[n][1] for n in range(6, 24))
    with rt.db.read() as session:
        assert session.scalar(select(func.count()).select_from(Review)) == 1 + 1 + 1 + 18
        assert session.scalar(select(func.count()).select_from(Job)) == 21
    assert chain_ok(rt) == 21


def test_a_retry_while_the_worker_writes_its_review_waits_for_that_write_only(rt, bridge):
    """A retry with a taken Idempotency-Key arrives while a worker transaction is changing
    that review and about to commit. The retry's write must not wait for that transaction
    while holding what the transaction needs to commit (on PostgreSQL: this process's turn
    and the audit chain's head): it answers with the review once the worker has committed."""
    first, _ = submit(rt, bridge, key="order-A-100")
    flushed, answered = threading.Event(), {}

    def worker_transaction() -> None:
        with rt.db.transaction() as session:
            row = session.get(Review, first["id"], with_for_update=True)
            row.status = "open"
            audit.record(session, "ticket.created", actor="bridge", review_id=row.id, key="HITL-1")
            session.flush()
            flushed.set()
            time.sleep(1.0)  # the retry meets the changed row now; then this commits

    def retry() -> None:
        answered["review"], answered["created"] = submit(rt, bridge, key="order-A-100")

    worker = threading.Thread(target=worker_transaction, daemon=True)
    worker.start()
    assert flushed.wait(10)
    agent = threading.Thread(target=retry, daemon=True)
    agent.start()
    agent.join(20)
    worker.join(20)
    assert not agent.is_alive() and not worker.is_alive(), "the retry and the worker's commit waited for each other"
    assert answered["created"] is False and answered["review"]["id"] == first["id"]
    assert answered["review"]["status"] == "open"
    assert chain_ok(rt) == 2
