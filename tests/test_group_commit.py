"""``Database.grouped``: many threads' writes share one transaction, each still commits before
it returns, and a part that fails fails alone."""

from __future__ import annotations

import threading
import time

import pytest
from sqlalchemy import event, func, insert, select
from sqlalchemy.exc import IntegrityError

from bridge import audit
from bridge.db import Database
from bridge.models import AuditEvent, RateWindow, Review

REVIEWS = Review.__table__


def add(review_id: str):
    def work(session):
        session.connection().execute(insert(REVIEWS).values(id=review_id, status="queued", title="t", request={},
                                                            api_key_name="k", request_hash="h"))
        audit.record(session, "review.submitted", actor="test", review_id=review_id)
        return review_id

    return work


def run_behind_a_slow_leader(db: Database, works: list) -> tuple[list, int]:
    """The first work holds the write transaction while the others queue behind it, so
    they form one group; returns each work's result (or error) and the commits made."""
    commits = []
    event.listen(db.engine, "commit", lambda connection: commits.append(1))
    first_running = threading.Event()

    def slow(session):
        first_running.set()
        time.sleep(0.5)
        return add("rev_slow")(session)

    results: list = [None] * len(works)

    def call(index: int, work) -> None:
        try:
            results[index] = db.grouped(work)
        except Exception as exc:
            results[index] = exc

    leader = threading.Thread(target=call, args=(0, slow))
    leader.start()
    first_running.wait(5)
    threads = [threading.Thread(target=call, args=(n, w)) for n, w in enumerate(works) if n]
    for thread in threads:
        thread.start()
    for thread in [leader, *threads]:
        thread.join(30)
    return results, len(commits)


def stored(db: Database) -> list[str]:
    with db.read() as session:
        return sorted(session.scalars(select(Review.id)))


def test_waiting_writes_commit_together_and_each_caller_gets_its_own_result(db):
    works = [None] + [add(f"rev_{n:02d}") for n in range(1, 25)]
    results, commits = run_behind_a_slow_leader(db, works)
    assert results == ["rev_slow"] + [f"rev_{n:02d}" for n in range(1, 25)]
    assert stored(db) == sorted(["rev_slow"] + [f"rev_{n:02d}" for n in range(1, 25)])
    assert commits <= 3  # the slow one, then the 24 that queued behind it (in one or two groups)
    with db.read() as session:
        assert session.scalar(select(func.count()).select_from(AuditEvent)) == 25
        assert audit.verify(session).ok


def test_a_part_that_fails_fails_alone_and_the_others_commit_once(db):
    def broken(session):
        add("rev_05")(session)  # a duplicate key: the whole group's transaction fails
        raise AssertionError("not reached")

    works = [None] + [add(f"rev_{n:02d}") for n in range(1, 10)] + [broken]
    results, _ = run_behind_a_slow_leader(db, works)
    assert isinstance(results[-1], IntegrityError)
    assert results[1:-1] == [f"rev_{n:02d}" for n in range(1, 10)]
    assert stored(db) == sorted(["rev_slow"] + [f"rev_{n:02d}" for n in range(1, 10)])
    with db.read() as session:  # the failed group left no events behind; the chain holds
        assert session.scalar(select(func.count()).select_from(AuditEvent)) == 10
        assert audit.verify(session).ok


def test_an_error_raised_by_the_work_reaches_its_caller(db):
    def refuse(session):
        raise ValueError("over the limit")

    with pytest.raises(ValueError, match="over the limit"):
        db.grouped(refuse)
    assert db.grouped(add("rev_after")) == "rev_after"
    assert stored(db) == ["rev_after"]


def test_two_instances_groups_take_the_same_keys_locks_in_one_order(db):
    """Two instances each group a submission of two rate-limited API keys, in opposite
    arrival order. Each part locks its key's rate window until commit, so in arrival
    order each group held one key and waited for the other, until PostgreSQL broke the
    deadlock a second later by failing one group, whose parts then ran again alone. Sorted
    by key, the second group waits for the first, and every part runs once."""
    if db.engine.dialect.name != "postgresql":
        pytest.skip("SQLite has one writer at a time: no two transactions hold locks at once")
    from collections import Counter

    from bridge import keys

    other = Database(db.url)
    ran: Counter = Counter()
    both_hold_a_key = threading.Barrier(2)

    def part(instance: str, key: str):
        def work(session):
            first = not any(name == instance for name, _ in ran)
            ran[instance, key] += 1
            keys.count_submission(session, key, 1000)
            if first:  # hold the first key until the other group holds one too (or 2 s)
                try:
                    both_hold_a_key.wait(timeout=2)
                except threading.BrokenBarrierError:
                    pass
        return work

    def queue(instance: Database, name: str, keys_in_arrival_order: list[str]) -> list[threading.Thread]:
        threads = []
        for key in keys_in_arrival_order:
            threads.append(threading.Thread(target=instance.grouped, args=(part(name, key),), kwargs={"order": key}))
            threads[-1].start()
            wait_until_waiting = time.monotonic() + 5
            while len(instance._waiting) < len(threads) and time.monotonic() < wait_until_waiting:
                time.sleep(0.005)
        return threads

    try:
        with db._leader, other._leader:  # each instance's two parts queue, to run as one group
            threads = queue(db, "a", ["key_1", "key_2"]) + queue(other, "b", ["key_2", "key_1"])
        for thread in threads:
            thread.join(30)
        assert dict(ran) == {("a", "key_1"): 1, ("a", "key_2"): 1, ("b", "key_1"): 1, ("b", "key_2"): 1}
        with db.read() as session:
            counts = dict(session.execute(select(RateWindow.key_name, RateWindow.count)).all())
        assert counts == {"key_1": 2, "key_2": 2}
    finally:
        other.dispose()
