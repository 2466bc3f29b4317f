"""The outbox on the configured test database (SQLite, or PostgreSQL with
HITL_TEST_DATABASE_URL): concurrent claims, leases, release, and cross-process wake-ups."""

from __future__ import annotations

import threading
import time

import pytest

from bridge import outbox
from bridge.db import Database
from bridge.models import Job, Review
from harness import Bridge, TestDatabase
from helpers import wait_for
from procs import Proc

def add_review(db: Database, review_id: str) -> None:
    with db.transaction() as session:
        session.add(Review(id=review_id, status="open", title="t", request={}, api_key_name="k", request_hash="h"))


def test_concurrent_claims_take_each_job_once(db):
    add_review(db, "rev_1")
    with db.transaction() as session:
        for n in range(120):
            outbox.enqueue(session, "rev_1", "ticket_comment", dedupe_key=f"c:{n}")
    claimed: list[int] = []
    lock = threading.Lock()

    def drain(name: str) -> None:
        while (job := outbox.claim(db, name, lease_seconds=60)[0]) is not None:
            with lock:
                claimed.append(job.id)
            with db.transaction() as session:
                outbox.finish(session, job.id)

    threads = [threading.Thread(target=drain, args=(f"w{n}",)) for n in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert len(claimed) == 120 and len(set(claimed)) == 120


def test_a_claim_says_whether_another_job_is_due(db):
    """The worker looks again at once only if another job was due when it claimed one; a
    job delayed into the future, or held under a lease, is not due."""
    add_review(db, "rev_1")
    with db.transaction() as session:
        outbox.enqueue(session, "rev_1", "ticket_comment", dedupe_key="a")
        outbox.enqueue(session, "rev_1", "ticket_comment", dedupe_key="b")
        outbox.enqueue(session, "rev_1", "expire_review", delay_seconds=600)
    first, more = outbox.claim(db, "w", lease_seconds=60)
    assert first is not None and more
    second, more = outbox.claim(db, "w", lease_seconds=60)
    assert second is not None and second.id != first.id and not more
    assert outbox.claim(db, "w", lease_seconds=60) == (None, False)


def test_an_expired_lease_is_claimed_again_and_a_released_job_at_once(db):
    add_review(db, "rev_1")
    with db.transaction() as session:
        outbox.enqueue(session, "rev_1", "ticket_comment", dedupe_key="a")
        outbox.enqueue(session, "rev_1", "ticket_comment", dedupe_key="b")
    first = outbox.claim(db, "dead-worker", lease_seconds=0.3)[0]
    second = outbox.claim(db, "leaving-worker", lease_seconds=600)[0]
    assert outbox.claim(db, "other", lease_seconds=60)[0] is None
    # A worker shutting down hands its job back: claimable now, the attempt not counted.
    assert outbox.release(db, "leaving-worker") == 1
    again = outbox.claim(db, "other", lease_seconds=60)[0]
    assert again.id == second.id and again.attempts == 1
    time.sleep(0.4)
    taken_over = outbox.claim(db, "other", lease_seconds=60)[0]
    assert taken_over.id == first.id and taken_over.attempts == 2


def test_a_chained_job_is_held_by_the_worker_that_queued_it_until_its_lease_runs_out(db):
    """A delivery queued in a worker's transaction is claimed in it (that worker runs it
    next); if that worker dies first, another takes it over after the lease, not before."""
    add_review(db, "rev_1")
    with db.transaction() as session:
        chain = session.info[outbox.CHAIN] = outbox.Chain("dying-worker", 0.3, frozenset({"deliver_decision"}))
        outbox.enqueue(session, "rev_1", "deliver_decision")
        outbox.enqueue(session, "rev_1", "ticket_comment", dedupe_key="c")  # not a chained kind: queued as usual
    assert [(j.kind, j.state, j.locked_by, j.attempts) for j in chain.jobs] == [("deliver_decision", "running", "dying-worker", 1)]
    comment = outbox.claim(db, "other", lease_seconds=60)[0]
    assert comment.kind == "ticket_comment"
    assert outbox.claim(db, "other", lease_seconds=60)[0] is None  # the delivery's lease holds
    time.sleep(0.4)
    taken_over = outbox.claim(db, "other", lease_seconds=60)[0]
    assert (taken_over.id, taken_over.kind, taken_over.attempts) == (chain.jobs[0].id, "deliver_decision", 2)


def test_a_job_that_outlasts_its_lease_keeps_it_and_runs_once(tmp_path):
    """A slow upstream: each call takes longer than the lease, which the worker renews."""
    bridge = Bridge(tmp_path)
    bridge.settings.worker.lease_seconds = 1.0
    jira = bridge.emulators["jira"].emulator
    jira.settings.latency_ms = 1500
    bridge.start()
    try:
        review = bridge.wait_ticket(bridge.submit()["id"])
        db = Database(bridge.database_url)
        with db.read() as session:
            create = session.query(Job).filter_by(review_id=review["id"], kind="create_ticket").one()
        db.dispose()
        assert create.state == "done" and create.attempts == 1
        labelled = [t for t in jira.list_tickets() if f"hitl-{review['id']}" in (t["fields"].get("labels") or [])]
        assert len(labelled) == 1
    finally:
        bridge.stop()


def test_a_job_kind_from_a_newer_version_is_handed_back_at_once_not_held_for_a_lease(tmp_path):
    """Rolling deploys: an old worker meets a job kind only the new version knows."""
    bridge = Bridge(tmp_path)
    bridge.settings.worker.lease_seconds = 600  # held for a lease, the job would not come back in time
    bridge.start()
    try:
        review = bridge.wait_ticket(bridge.submit()["id"])
        db = Database(bridge.database_url)
        with db.transaction() as session:
            job_id = outbox.enqueue(session, review["id"], "added_in_a_later_version")

        def handed_back() -> Job | None:
            with db.read() as session:
                job = session.get(Job, job_id)
                return job if job.last_error and job.state == "pending" else None

        job = wait_for(handed_back, timeout=10, what="the unknown job handed back")
        assert "does not know job kind 'added_in_a_later_version'" in job.last_error
        assert job.attempts == 0 and job.locked_until is None
        db.dispose()
    finally:
        bridge.stop()


def polling_every_30_seconds(tmp_path) -> Bridge:
    """A bridge whose worker polls only every 30 s: only a wake-up finds a job sooner."""
    bridge = Bridge(tmp_path)
    slow_poll = bridge.worker_settings.model_copy(update={"poll_interval_seconds": 30})
    bridge.settings = bridge.settings.model_copy(update={"worker": slow_poll})
    return bridge


def assert_jobs_run_at_once(bridge: Bridge) -> None:
    """A review's ticket within seconds, and its decision at the agent within 1.5 s of the
    reviewer's act (webhook -> sync job -> read-back -> delivery job -> callback)."""
    review = bridge.submit()
    started = time.monotonic()
    key = bridge.wait_ticket(review["id"])["ticket"]["key"]
    assert time.monotonic() - started < 5
    started = time.monotonic()
    bridge.act("jira", key, "approve")
    wait_for(lambda: bridge.callbacks_for(review["id"]), timeout=5, interval=0.005, what="the callback")
    elapsed = time.monotonic() - started
    print(f"decision reached the agent {elapsed * 1000:.0f} ms after the reviewer acted")
    assert elapsed < 1.5, f"decision took {elapsed:.3f}s to reach the agent"


@pytest.mark.skipif(not TestDatabase.postgres_configured(), reason="LISTEN/NOTIFY needs HITL_TEST_DATABASE_URL (PostgreSQL)")
def test_notify_wakes_a_worker_in_another_process_within_milliseconds(tmp_path):
    """API and worker in separate processes: only the NOTIFY sent with each job can make
    the decision reach the agent this fast."""
    bridge = polling_every_30_seconds(tmp_path)
    config = bridge.config_file()
    api = Proc(config, tmp_path / "api.log", worker=False)
    worker = Proc(config, tmp_path / "worker.log", kind="worker")
    try:
        api.start()
        worker.start()
        bridge._wire(api.url)
        time.sleep(2)  # the worker has migrated, is listening and has found nothing to do
        assert_jobs_run_at_once(bridge)
    finally:
        api.kill()
        worker.kill()
        bridge.stop()


@pytest.mark.skipif(not TestDatabase.postgres_configured(), reason="LISTEN/NOTIFY needs HITL_TEST_DATABASE_URL (PostgreSQL)")
def test_a_listening_worker_in_the_api_process_is_woken_by_the_database(tmp_path):
    """API and worker in one process on PostgreSQL: the worker hears of new jobs from the
    database's NOTIFY alone (the API does not wake it a second time, which cost an empty
    claim a job), and still at once."""
    bridge = polling_every_30_seconds(tmp_path).start()
    try:
        time.sleep(1)  # the worker is listening and has found nothing to do
        assert_jobs_run_at_once(bridge)
    finally:
        bridge.stop()


def test_a_stopping_worker_claims_nothing_more(tmp_path):
    """stop() wakes the idle worker to end it, not to look for work: a job that became due
    unannounced (no wake-up, no NOTIFY) is left for the next worker, untouched."""
    from sqlalchemy import insert, update

    bridge = polling_every_30_seconds(tmp_path).start()
    db = Database(bridge.database_url)
    try:
        time.sleep(1)  # the worker has looked, found nothing and waits for a wake-up
        add_review(db, "rev_quiet")
        with db.transaction() as session:  # written cancelled and made due by an UPDATE: nobody is told
            job_id = session.execute(insert(Job).values(review_id="rev_quiet", kind="ticket_comment", dedupe_key="quiet",
                                                        state="cancelled", payload={"body": "x"}).returning(Job.id)).scalar()
        with db.transaction() as session:
            session.execute(update(Job).where(Job.id == job_id).values(state="pending"))
        bridge.server.stop()  # the app's shutdown stops its worker
        bridge.server = None
        with db.read() as session:
            job = session.get(Job, job_id)
            assert (job.state, job.attempts, job.locked_by) == ("pending", 0, None)
    finally:
        db.dispose()
        bridge.stop()
