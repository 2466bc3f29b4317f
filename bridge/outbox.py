"""The job outbox: enqueue in the caller's transaction, claim with a lease, finish or retry.

A job is written in the same transaction as the state change that needs it, so a crash
never loses one; a claimed job whose worker died is claimed again when its lease runs out.
Connectors do the work only through ``worker``; this module never touches the network.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta

from sqlalchemy import and_, bindparam, exists, func, or_, select, text, update
from sqlalchemy.orm import Session
from tenacity import wait_exponential_jitter

from .db import Database, insert_once, utcnow
from .models import Job
from .wakeups import CHANNEL

ACTIVE = ("pending", "running")
# The kinds of job (each names the worker's handler for it).
DELIVER, POST_REPLY, CREATE, SYNC, COMMENT, CLOSE, EXPIRE = (
    "deliver_decision",
    "post_reply",
    "create_ticket",
    "sync_ticket",
    "ticket_comment",
    "ticket_action",
    "expire_review",
)
READ_RUN, LANGSMITH_FEEDBACK = "langsmith_read_run", "langsmith_feedback"  # bridge/langsmith.py
JOBS = Job.__table__
CHAIN = "outbox.chain"  # session.info key: see Chain


@dataclass
class Chain:
    """Set in a worker's transaction (``session.info[CHAIN]``): jobs of ``kinds`` enqueued in
    it are inserted already claimed by ``worker`` and collected in ``jobs``, for that worker
    to run as soon as the transaction commits (a decision's delivery right after the
    read-back that made it: no claim, no wait behind the queue). If the worker dies first,
    the lease runs out and any worker claims them as usual."""

    worker: str
    lease_seconds: float
    kinds: frozenset[str]
    jobs: list[Job] = field(default_factory=list)


def enqueue(
    session: Session,
    review_id: str,
    kind: str,
    *,
    dedupe_key: str | None = None,
    payload: dict | None = None,
    delay_seconds: float = 0.0,
    max_attempts: int = 12,
) -> int | None:
    """Add a job unless one with the same ``dedupe_key`` exists (then None); its id. One
    ``INSERT ... ON CONFLICT DO NOTHING`` (a lookup, a savepoint and an ORM flush per job
    were a third of intake's time: bench/)."""
    values = job_values(review_id, kind, dedupe_key=dedupe_key, payload=payload, delay_seconds=delay_seconds,
                        max_attempts=max_attempts)
    chain: Chain | None = session.info.get(CHAIN)
    chained = chain is not None and kind in chain.kinds and not delay_seconds
    if chained:
        values.update(state="running", locked_by=chain.worker, attempts=1,
                      locked_until=values["created_at"] + timedelta(seconds=chain.lease_seconds))
    job_id = insert_once(session, JOBS, values)
    if job_id is None:
        return None
    if chained:
        chain.jobs.append(Job(id=job_id, **values))
    return job_id


def job_values(review_id: str, kind: str, *, dedupe_key: str | None = None, payload: dict | None = None,
               delay_seconds: float = 0.0, max_attempts: int = 12) -> dict:
    """A new pending job's row, every column that has a value (``enqueue``; ``batch.Batch``)."""
    now = utcnow()
    return {"review_id": review_id, "kind": kind, "dedupe_key": dedupe_key or f"{kind}:{review_id}",
            "payload": payload or {}, "run_at": now + timedelta(seconds=delay_seconds), "max_attempts": max_attempts,
            "state": "pending", "attempts": 0, "created_at": now}


def notify(session: Session) -> None:
    """Wake every listening worker when this transaction commits (PostgreSQL; elsewhere the
    in-process event and polling do). Several in one transaction arrive as one. A new
    pending job needs none: its INSERT notifies from a trigger (migration 0005)."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SELECT pg_notify(:channel, '')"), {"channel": CHANNEL})


def _due(table, now):
    return and_(table.c.state.in_(ACTIVE), table.c.run_at <= now,
                or_(table.c.locked_until.is_(None), table.c.locked_until < now))


def _claim_statement(dialect: str):
    now = bindparam("now")
    due = select(JOBS.c.id).where(_due(JOBS, now)).order_by(JOBS.c.run_at, JOBS.c.id).limit(1)
    returning = list(JOBS.c)
    if dialect == "postgresql":
        due = due.with_for_update(skip_locked=True)
        other = JOBS.alias("other")
        returning.append(exists().where(_due(other, now), other.c.id != JOBS.c.id).label("more_due"))
    return (
        update(JOBS)
        .where(JOBS.c.id == due.scalar_subquery())
        .values(state="running", locked_by=bindparam("worker"), locked_until=bindparam("lease_end"), attempts=JOBS.c.attempts + 1)
        .returning(*returning)
    )


_CLAIM = {dialect: _claim_statement(dialect) for dialect in ("sqlite", "postgresql")}
_MORE_DUE = select(exists().where(_due(JOBS, bindparam("now"))))


def claim(db: Database, worker_id: str, *, lease_seconds: float) -> tuple[Job | None, bool]:
    """Take the oldest due job (or one whose lease expired) for ``lease_seconds``, and say
    whether another is due as well: ``UPDATE ... WHERE id = (oldest due) RETURNING``, built
    once (an ORM select-then-flush was two statements and most of a claim's CPU, bench/).
    On PostgreSQL (``FOR UPDATE SKIP LOCKED``) the same statement returns ``EXISTS (another
    due)`` and commits by itself: one round trip, where BEGIN, a second SELECT and COMMIT
    made four. SQLite writes a RETURNING clause's columns without their table, so it asks
    in a second statement, in the same transaction. The worker looks again at once only
    when another is due: it used to after every job, and that look mostly found nothing."""
    now = utcnow()
    with db.short_write() as sql:
        row = sql.execute(_CLAIM[db.engine.dialect.name],
                          {"now": now, "worker": worker_id, "lease_end": now + timedelta(seconds=lease_seconds)}).first()
        if row is None:
            return None, False
        values = dict(row._mapping)
        more = values.pop("more_due", None)
        if more is None:
            more = sql.execute(_MORE_DUE, {"now": now}).scalar()
    return Job(**values), bool(more)


def renew(db: Database, worker_id: str, *, lease_seconds: float) -> int:
    """Extend the leases of the jobs ``worker_id`` is running: a job that takes longer than
    one lease (a slow or paced upstream) is not claimed a second time while it runs. A dead
    worker renews nothing, so its jobs are still taken over after one lease."""
    with db.transaction() as session:
        return session.execute(
            update(Job)
            .where(Job.locked_by == worker_id, Job.state == "running")
            .values(locked_until=utcnow() + timedelta(seconds=lease_seconds))
        ).rowcount


def release(db: Database, worker_id: str) -> int:
    """Hand back the jobs ``worker_id`` still holds (graceful shutdown): claimable by any
    worker at once instead of after the lease, and the interrupted attempt not counted."""
    with db.transaction() as session:
        result = session.execute(
            update(Job)
            .where(Job.locked_by == worker_id, Job.state == "running")
            .values(state="pending", locked_until=None, locked_by=None, last_error="released at shutdown",
                    attempts=func.max(Job.attempts - 1, 0)
                    if db.engine.dialect.name == "sqlite" else func.greatest(Job.attempts - 1, 0))
        )
        if result.rowcount:
            notify(session)
        return result.rowcount


def finish(session: Session, job_id: int, *, state: str = "done", error: str | None = None) -> None:
    """End a job: ``done``, or another final state with the reason (``undeliverable``)."""
    session.connection().execute(_FINISH, {"job_id": job_id, "new_state": state, "at": utcnow(),
                                           "error": error[:2000] if error else None})


def finish_alone(db: Database, job_id: int) -> None:
    """End a job that records nothing else as done (one statement: on PostgreSQL without
    BEGIN and COMMIT, two round trips of three)."""
    with db.short_write() as sql:
        sql.execute(_FINISH, {"job_id": job_id, "new_state": "done", "at": utcnow(), "error": None})


_FINISH = (update(JOBS).where(JOBS.c.id == bindparam("job_id"))
           .values(state=bindparam("new_state"), finished_at=bindparam("at"), locked_until=None, last_error=bindparam("error")))


@dataclass(frozen=True)
class _Attempt:
    """What tenacity's wait strategies read from a retry state."""

    attempt_number: int


def backoff_seconds(attempt: int, *, initial: float, maximum: float, retry_after: float | None = None) -> float:
    """Exponential backoff with jitter (tenacity's strategy), never sooner than Retry-After."""
    delay = wait_exponential_jitter(multiplier=initial, max=maximum, jitter=initial)(_Attempt(attempt))  # type: ignore[arg-type]
    return max(delay, retry_after or 0.0)


def fail(session: Session, job: Job, error: str, *, retry_in: float | None, count_attempt: bool = True) -> str:
    """Reschedule (``retry_in`` seconds) or, out of attempts or not retryable, dead-letter.
    ``count_attempt=False``: the job never ran (an open circuit), so it keeps its attempts."""
    if not count_attempt:
        job.attempts -= 1
    state = "pending" if retry_in is not None and job.attempts < job.max_attempts else "dead"
    values = {"state": state, "last_error": error[:2000], "locked_until": None, "attempts": job.attempts}
    if state == "pending":
        values["run_at"] = utcnow() + timedelta(seconds=retry_in or 0)
    else:
        values["finished_at"] = utcnow()
    session.connection().execute(update(JOBS).where(JOBS.c.id == job.id).values(**values))
    return state


def cancel_jobs(session: Session, review_id: str, kinds: tuple[str, ...]) -> None:
    # Core on the session's connection: the ORM's bulk UPDATE (it synchronises the session
    # and builds a cache key per call) was 8% of a webhook's CPU (bench/)
    session.connection().execute(_CANCEL, {"for_review": review_id, "kinds": list(kinds), "at": utcnow()})


_CANCEL = (update(JOBS)
           .where(JOBS.c.review_id == bindparam("for_review"), JOBS.c.kind.in_(bindparam("kinds", expanding=True)),
                  JOBS.c.state.in_(ACTIVE))
           .values(state="cancelled", finished_at=bindparam("at"), locked_until=None))


def queue_depth(session: Session) -> dict[tuple[str, str], int]:
    rows = session.execute(
        select(Job.kind, Job.state, func.count()).where(Job.state.in_(ACTIVE + ("dead",))).group_by(Job.kind, Job.state)
    )
    return {(kind, state): count for kind, state, count in rows}


# ----- the dead-letter list ----------------------------------------------------------


def list_jobs(session: Session, *, state: str = "dead", limit: int = 100) -> list[Job]:
    return list(session.execute(select(Job).where(Job.state == state).order_by(Job.id).limit(limit)).scalars())


def retry_dead(session: Session, job_ids: list[int], *, actor: str) -> list[Job]:
    """Give dead jobs a fresh set of attempts, now. A review that failed because its ticket
    could not be created goes back to ``queued`` (its mapping has presumably been fixed)."""
    from . import audit
    from .models import Review

    jobs = list(session.execute(select(Job).where(Job.id.in_(job_ids), Job.state == "dead").with_for_update()).scalars())
    for job in jobs:
        job.state, job.attempts, job.run_at, job.finished_at, job.locked_until = "pending", 0, utcnow(), None, None
        review = session.get(Review, job.review_id)
        if review is not None and job.kind == "create_ticket" and review.status == "failed":
            review.status, review.error = "queued", None
        audit.record(session, "job.retried", actor=actor, review_id=job.review_id, job_id=job.id, job=job.kind,
                     last_error=job.last_error)
    if jobs:
        notify(session)
    return jobs


def discard_dead(session: Session, job_ids: list[int], *, actor: str) -> list[Job]:
    """Give up on dead jobs for good: they leave the dead-letter list, the audit keeps them."""
    from . import audit

    jobs = list(session.execute(select(Job).where(Job.id.in_(job_ids), Job.state == "dead").with_for_update()).scalars())
    for job in jobs:
        job.state = "discarded"
        audit.record(session, "job.discarded", actor=actor, review_id=job.review_id, job_id=job.id, job=job.kind,
                     last_error=job.last_error)
    return jobs
