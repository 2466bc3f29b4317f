"""Use cases behind the API. Each runs in one database transaction and does no network I/O:
anything that must reach another system is written to the outbox for the worker."""

from __future__ import annotations

import base64
import hashlib
import json
from datetime import timedelta
from typing import Any

from sqlalchemy import Row, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from . import audit, batch, decisions, keys, outbox
from .batch import Batch
from .db import utcnow
from .errors import BridgeError, ConflictError, NotFoundError
from .models import Job, Review, new_id
from .outbox import CLOSE, CREATE, DELIVER, EXPIRE, POST_REPLY, READ_RUN, SYNC
from .runtime import Runtime
from .schemas import (
    DECIDED,
    Decision,
    DecisionRecord,
    DeliveryState,
    ReviewOut,
    ReviewPage,
    ReviewRequest,
    RouteOut,
    Status,
)


def request_hash(dumped: dict[str, Any]) -> str:
    """The hash of a request (``model_dump(mode="json")``) that tells a replay from a reuse
    of its Idempotency-Key."""
    canonical = json.dumps(dumped, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


# ----- submit ----------------------------------------------------------------------


def submit(rt: Runtime, request: ReviewRequest, *, api_key: str, idempotency_key: str | None,
           rate_limit: int | None = None) -> tuple[ReviewOut, bool]:
    """Accept a review in one transaction (on PostgreSQL usually a single statement:
    ``bridge/batch.py``); returns (review, created). Same key and body:
    the same review; same key, other body: 409. ``rate_limit``: the key's submissions a
    minute, counted in the same transaction (429 beyond)."""
    if request.origin and request.origin.connection not in rt.settings.connections:
        raise BridgeError(
            f"origin.connection {request.origin.connection!r} is not a configured connection",
            code="unknown_connection",
            details={"field": "origin.connection", "known": sorted(rt.settings.connections)},
        )
    # Routing and building the row are CPU work: done before the transaction, they do not
    # hold SQLite's one write lock while other submissions wait for it.
    review, routed = _new_review(rt, request, api_key=api_key, idempotency_key=idempotency_key)
    digest = review.request_hash
    decided = _decided_on_arrival(routed)
    rows = _submission(rt, review, request, routed, decided=decided)

    def write(session: Session) -> ReviewOut | None:
        if rate_limit:
            keys.count_submission(session, api_key, rate_limit)
        if decided:
            session.add(review)  # the ORM tracks the decision's changes to the row
        rows.apply(session)
        if decided:
            _approve_on_arrival(session, rt, review, request, routed)
        session.flush()
        # a queued review has no delivery or reply job yet: nothing to read back
        return None if review.status == Status.queued else to_out(session, review, request=request)

    try:
        if decided:
            with rt.db.transaction() as session:  # through the ORM: alone
                out = write(session)
        elif rate_limit:  # Core only, so it may share a group commit, but counted in a transaction
            out = rt.db.grouped(write, order=f"{api_key}\x1f{idempotency_key or ''}")  # its locks, in one order
        else:  # new rows only: one statement on PostgreSQL (bridge/batch.py)
            batch.write(rt.db, rows)
            out = None
        out = out or to_out(None, review, request=request, jobs={})
    except IntegrityError:
        # The Idempotency-Key is taken (a retry, or a concurrent request that won): answer
        # with its review. Trying the insert first saves a lookup on every other submit.
        with rt.db.transaction() as session:
            existing = _by_idempotency(session, api_key, idempotency_key or "")
            if existing is None:
                raise
            return _replayed(session, existing, digest), False
    rt.wake()
    rt.metrics.reviews.labels(out.status, out.route.name or "").inc()
    return out, True


def _replayed(session: Session, existing: Review, digest: str) -> ReviewOut:
    if existing.request_hash != digest:
        raise ConflictError(
            "this Idempotency-Key was used with a different request body",
            code="idempotency_conflict",
            details={"review_id": existing.id},
        )
    return to_out(session, existing)


def _by_idempotency(session: Session, api_key: str, key: str) -> Review | None:
    return session.execute(
        select(Review).where(Review.api_key_name == api_key, Review.idempotency_key == key)
    ).scalar_one_or_none()


def _new_review(rt: Runtime, request: ReviewRequest, *, api_key: str, idempotency_key: str | None) -> tuple[Review, Any]:
    """The review's row, routed and placed (mapping snapshot and all): CPU work, done before
    the transaction so it does not hold SQLite's one write lock. The request is dumped once
    for its hash, its routing and its column."""
    review_id = new_id("rev")
    dumped = request.model_dump(mode="json")
    digest = request_hash(dumped)
    from_run = request.from_langsmith_run  # routed once the worker has read the run (READ_RUN)
    routed = None if from_run else rt.router.route(review_id, request, dumped=dumped)
    now = utcnow()
    review = Review(
        id=review_id,
        created_at=now,
        updated_at=now,
        status=Status.queued,
        title=request.title or f"LangSmith run {request.langsmith.run_id}"[:255],
        request=dumped,
        api_key_name=api_key,
        idempotency_key=idempotency_key,
        request_hash=digest,
        route_reason=routed.reason if routed else "waiting for the LangSmith run to be read",
    )
    if routed is not None:
        _place(rt, review, routed)
    return review, routed


def _submission(rt: Runtime, review: Review, request: ReviewRequest, routed: Any, *, decided: bool) -> Batch:
    """A new review's row (unless the ORM tracks it: ``decided``), its jobs and its
    ``review.submitted`` event."""
    rows = Batch()
    rows.claim(REVIEWS, api_key_name=review.api_key_name, idempotency_key=review.idempotency_key)
    if not decided:
        rows.insert(REVIEWS, {key: value for key, value in vars(review).items() if not key.startswith("_")})
    submitted_by = f"api_key:{review.api_key_name}"
    if routed is None:
        rows.record("review.submitted", actor=submitted_by, review_id=review.id, title=request.title)
        rows.enqueue(review.id, READ_RUN, max_attempts=rt.settings.worker.max_attempts)
    else:
        _queue(rows, rt, review, request, routed, submitted_by=submitted_by)
    return rows


def _decided_on_arrival(routed: Any) -> bool:
    """No route, or a shadow route: approved as it arrives (through the ORM, so its write
    may not share a group commit). ``routed`` None: waiting for its LangSmith run."""
    return routed is not None and (routed.route is None or routed.route.mode == "shadow")


REVIEWS = Review.__table__


def route_review(session: Session, rt: Runtime, review: Review, request: ReviewRequest, routed: Any) -> None:
    """Send a review where its route says once a LangSmith run has filled it in."""
    _place(rt, review, routed)
    rows = Batch()
    _queue(rows, rt, review, request, routed)
    rows.apply(session)
    if _decided_on_arrival(routed):
        _approve_on_arrival(session, rt, review, request, routed)


def _place(rt: Runtime, review: Review, routed: Any) -> None:
    """The row's route and mapping columns."""
    review.route_reason = routed.reason
    if routed.route is None:
        return
    mapping = rt.mapping(routed.route.mapping)
    review.route_name, review.route_mode = routed.route.name, routed.route.mode
    review.mapping_name, review.mapping_version = mapping.name, mapping.version
    review.mapping_snapshot = mapping.model_dump(mode="json")
    review.ticket_connection = mapping.connection
    if mapping.sla:
        review.expires_at = utcnow() + timedelta(seconds=mapping.sla.expire_after_seconds)


def _queue(rows: Batch, rt: Runtime, review: Review, request: ReviewRequest, routed: Any, *,
           submitted_by: str | None = None) -> None:
    """The jobs and audit event of a placed review (its approval on arrival, if any, is
    ``_approve_on_arrival``'s). ``submitted_by``: routed as it is submitted, so one
    ``review.submitted`` event carries the route too (one audit append per submit, not two)."""
    review_id = review.id
    if routed.route is None:
        if submitted_by:
            rows.record("review.submitted", actor=submitted_by, review_id=review_id, title=request.title, route=None)
        return
    route, mapping = routed.route, decisions.snapshot_mapping(review)
    if mapping.sla:
        rows.enqueue(review_id, EXPIRE, delay_seconds=mapping.sla.expire_after_seconds)
        from .governance import schedule_sla  # remind and escalate (issue 9)

        schedule_sla(rows, review, mapping)
    rows.enqueue(review_id, CREATE, max_attempts=rt.settings.worker.max_attempts)
    where = {"route": route.name, "mode": route.mode, "mapping": mapping.name}
    if submitted_by:
        rows.record("review.submitted", actor=submitted_by, review_id=review_id, title=request.title, **where)
    else:
        rows.record("review.routed", actor="bridge", review_id=review_id, **where)


def _approve_on_arrival(session: Session, rt: Runtime, review: Review, request: ReviewRequest, routed: Any) -> None:
    """No route, or a shadow route: the review is approved as it arrives (after ``_queue``)."""
    route = routed.route
    reason = routed.reason if route is None else f"shadow route {route.name!r}: the agent is not held"
    auto = [Decision(type="approve") for _ in request.action_requests]
    decisions.apply_decision(session, rt, review, auto, reviewer=None, source="route", reason=reason)


# ----- read ------------------------------------------------------------------------


def get(rt: Runtime, review_id: str) -> ReviewOut:
    with rt.db.read() as session:
        review = session.get(Review, review_id)
        if review is None:
            raise NotFoundError(f"no review {review_id!r}")
        return to_out(session, review)


def _job_state(job: Job | None) -> DeliveryState:
    if job is None:
        return DeliveryState(state="not_needed")
    state = {"pending": "pending", "running": "pending", "done": "delivered", "dead": "dead", "discarded": "dead",
             "cancelled": "cancelled", "undeliverable": "undeliverable"}[job.state]
    return DeliveryState(
        state=state, attempts=job.attempts, last_error=job.last_error, delivered_at=job.finished_at if job.state == "done" else None
    )


def to_out(session: Session | None, review: Review, *, jobs: dict[str, Job] | None = None,
           request: ReviewRequest | None = None) -> ReviewOut:
    """``jobs``: the review's delivery and reply jobs by kind, and ``request``: its parsed
    request, when the caller has them."""
    if jobs is None:
        jobs = {
            job.kind: job
            for job in session.execute(
                select(Job).where(Job.review_id == review.id, Job.kind.in_((DELIVER, POST_REPLY))).order_by(Job.id)
            ).scalars()  # the newest of each kind (a reversed decision is delivered again)
        }
    if request is None:
        request = ReviewRequest.model_validate(review.request)
    if request.resume is None:
        delivery = DeliveryState(state="delivered", delivered_at=review.delivered_at) if review.delivered_at else DeliveryState(state="pending")
    else:
        delivery = _job_state(jobs.get(DELIVER)) if DELIVER in jobs else DeliveryState(state="pending")
    return ReviewOut(
        id=review.id,
        status=Status(review.status),
        title=review.title,
        created_at=review.created_at,
        updated_at=review.updated_at,
        route=RouteOut(name=review.route_name, mode=review.route_mode, mapping=review.mapping_name, reason=review.route_reason),
        ticket=decisions.ticket_out(review),
        decision=DecisionRecord.model_validate(review.decision) if review.decision else None,
        shadow_decision=DecisionRecord.model_validate(review.shadow_decision) if review.shadow_decision else None,
        delivery=delivery,
        postback=_job_state(jobs.get(POST_REPLY)),
        error=review.error,
        request=request,
    )


def _encode_cursor(review_id: str) -> str:
    return base64.urlsafe_b64encode(review_id.encode()).decode().rstrip("=")


def _decode_cursor(cursor: str) -> str:
    try:
        value = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
    except (ValueError, UnicodeDecodeError):
        value = ""
    if not value.startswith("rev_"):
        raise BridgeError("cursor is not one this API returned", code="invalid_cursor", details={"field": "cursor"})
    return value


def list_reviews(rt: Runtime, *, status: Status | None, route: str | None, limit: int, cursor: str | None) -> ReviewPage:
    query = select(Review).order_by(Review.id.desc()).limit(limit + 1)
    if status:
        query = query.where(Review.status == status)
    if route:
        query = query.where(Review.route_name == route)
    if cursor:
        query = query.where(Review.id < _decode_cursor(cursor))
    with rt.db.read() as session:
        rows = list(session.execute(query).scalars())
        # One query for the page's jobs, not one per review (a page of 50: 28-48 ms -> 9-13 ms, bench/).
        jobs: dict[str, dict[str, Job]] = {r.id: {} for r in rows[:limit]}
        if jobs:
            for job in session.execute(
                select(Job).where(Job.review_id.in_(list(jobs)), Job.kind.in_((DELIVER, POST_REPLY))).order_by(Job.id)
            ).scalars():
                jobs[job.review_id][job.kind] = job
        items = [to_out(session, r, jobs=jobs[r.id]) for r in rows[:limit]]
    return ReviewPage(items=items, next_cursor=_encode_cursor(rows[limit - 1].id) if len(rows) > limit else None)


def decision_if_ready(rt: Runtime, review_id: str) -> tuple[Row, bool]:
    """For the long-poll: the review, and whether it has a decision to hand over now.

    Polls read without taking the write lock; only the hand-over itself is written."""
    review = rt.db.fetch(Review, review_id)
    if review is None:
        raise NotFoundError(f"no review {review_id!r}")
    ready = review.decision is not None
    if ready and review.delivered_at is None and review.request.get("resume") is None:
        with rt.db.transaction() as session:
            row = session.get(Review, review_id, with_for_update=True)
            if row.delivered_at is None:
                row.delivered_at = utcnow()
                audit.record(session, "decision.delivered", actor="bridge", review_id=row.id, via="long_poll",
                             version=(row.decision or {}).get("version", 1))
    return review, ready


# ----- cancel ----------------------------------------------------------------------


def cancel(rt: Runtime, review_id: str, *, api_key: str) -> ReviewOut:
    with rt.db.transaction() as session:
        review = session.get(Review, review_id)
        if review is None:
            raise NotFoundError(f"no review {review_id!r}")
        if review.status in {s.value for s in DECIDED} | {Status.auto_approved.value, Status.cancelled.value}:
            raise ConflictError(f"review {review_id} is already {review.status}", code="already_final", details={"status": review.status})
        review.status = Status.cancelled
        outbox.cancel_jobs(session, review.id, (SYNC, EXPIRE))
        if review.ticket_connection:
            outbox.enqueue(session, review.id, CLOSE, dedupe_key=f"on_cancel:{review.id}", payload={"action": "on_cancel"})
        audit.record(session, "review.cancelled", actor=f"api_key:{api_key}", review_id=review.id)
        out = to_out(session, review)
    rt.wake()
    rt.metrics.reviews.labels(Status.cancelled, out.route.name or "").inc()
    return out
