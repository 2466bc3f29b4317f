"""``bridge.rows``: the review a job's result transaction locks, changes and writes back (the
configured test database: SQLite, or PostgreSQL with HITL_TEST_DATABASE_URL)."""

from __future__ import annotations

import threading
import time

import pytest

from bridge import rows
from bridge.models import Review


def add_review(db, review_id: str = "rev_1") -> None:
    with db.transaction() as session:
        session.add(Review(id=review_id, status="open", title="Refund order A-100", request={"title": "t"},
                           api_key_name="agent", request_hash="h", ticket_key="HITL-1"))


def read(db, review_id: str = "rev_1") -> Review:
    with db.read() as session:
        return session.get(Review, review_id)


def test_what_is_set_on_a_locked_row_is_written_and_nothing_else(db):
    add_review(db)
    before = read(db)
    with db.transaction() as session:
        row = rows.lock(session, Review, "rev_1")
        assert (row.status, row.title, row.ticket_key, row.request) == ("open", "Refund order A-100", "HITL-1", {"title": "t"})
        row.status, row.decision = "approved", {"decisions": [{"type": "approve"}], "note": "ünïcode"}
        assert row.status == "approved"  # reads see what was set
        with pytest.raises(AttributeError, match="no column 'statuz'"):
            row.statuz = "approved"
        rows.save(session, row)
    after = read(db)
    assert (after.status, after.decision) == ("approved", {"decisions": [{"type": "approve"}], "note": "ünïcode"})
    assert (after.title, after.ticket_key, after.request, after.created_at) == ("Refund order A-100", "HITL-1", {"title": "t"},
                                                                               before.created_at)
    assert after.updated_at > before.updated_at


def test_a_row_that_is_not_there_is_none(db):
    with db.transaction() as session:
        assert rows.lock(session, Review, "rev_missing") is None


def test_transactions_locking_the_same_row_take_turns_and_lose_no_change(db):
    """Each transaction reads the row, waits a little, and appends to a column: with the
    lock (FOR UPDATE on PostgreSQL) the second reads what the first wrote, never a stale copy."""
    add_review(db)

    def append(letter: str) -> None:
        for _ in range(4):
            with db.transaction() as session:
                row = rows.lock(session, Review, "rev_1")
                seen = row.refusal or ""
                time.sleep(0.01)
                row.refusal = seen + letter
                rows.save(session, row)

    threads = [threading.Thread(target=append, args=(letter,)) for letter in "abc"]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(read(db).refusal) == sorted("aaaabbbbcccc")
