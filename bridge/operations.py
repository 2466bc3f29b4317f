"""Admin use cases: the queue at a glance, and retrying a review whose ticket could not be
created once its mapping is fixed. One transaction each, no network I/O."""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime
from typing import Any

from sqlalchemy import select

from . import audit, outbox
from .db import utcnow
from .errors import ConflictError, NotFoundError
from .models import Job, Review
from .outbox import CREATE
from .reviews import to_out
from .runtime import Runtime
from .schemas import ReviewOut, Status

WAITING = (Status.queued.value, Status.open.value)
_SHOWN = (Review.id, Review.title, Review.route_name, Review.mapping_name, Review.created_at)


def _age_seconds(since: datetime | None, now: datetime) -> int | None:
    return int((now - since).total_seconds()) if since else None


def queue_overview(rt: Runtime, *, limit: int = 500) -> dict[str, Any]:
    """Open reviews per route (oldest first, with age and time left on the SLA), failed
    reviews with their errors, and dead-lettered jobs."""
    now = utcnow()
    with rt.db.read() as session:  # the columns shown, not whole rows (a request and a mapping each)
        waiting = session.execute(
            select(*_SHOWN, Review.status, Review.mapping_version, Review.expires_at, Review.ticket_key,
                   Review.ticket_display, Review.ticket_url)
            .where(Review.status.in_(WAITING)).order_by(Review.id).limit(limit)  # ids are time-ordered (oldest first)
        ).all()
        failed = session.execute(
            select(*_SHOWN, Review.error).where(Review.status == Status.failed.value).order_by(Review.id.desc()).limit(limit)
        ).all()
        dead = session.execute(
            select(Job).where(Job.state == "dead").order_by(Job.id.desc()).limit(limit)
        ).scalars().all()
        routes: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for review in waiting:
            routes[review.route_name or "(none)"].append({
                "id": review.id, "title": review.title, "status": review.status, "mapping": review.mapping_name,
                "mapping_version": review.mapping_version, "created_at": review.created_at.isoformat(),
                "age_seconds": _age_seconds(review.created_at, now),
                "expires_at": review.expires_at.isoformat() if review.expires_at else None,
                "sla_left_seconds": int((review.expires_at - now).total_seconds()) if review.expires_at else None,
                "ticket": {"display": review.ticket_display, "url": review.ticket_url} if review.ticket_key else None,
            })
        return {
            "routes": [
                {"route": name, "open": len(items), "oldest_age_seconds": items[0]["age_seconds"], "reviews": items}
                for name, items in sorted(routes.items())
            ],
            "failed": [
                {"id": r.id, "title": r.title, "route": r.route_name, "mapping": r.mapping_name,
                 "age_seconds": _age_seconds(r.created_at, now), "error": r.error}
                for r in failed
            ],
            "dead_jobs": [  # a failed review's create_ticket job is shown with the review above
                {"id": j.id, "review_id": j.review_id, "kind": j.kind, "attempts": j.attempts, "error": j.last_error,
                 "finished_at": j.finished_at.isoformat() if j.finished_at else None}
                for j in dead if not (j.kind == CREATE and j.review_id in {r.id for r in failed})
            ],
        }


def retry_failed(rt: Runtime, review_id: str, *, actor: str) -> ReviewOut:
    """Re-enqueue a failed review's create_ticket job, rendered with the mapping as it is
    now: the review never had a ticket, so nothing a reviewer saw changes."""
    with rt.db.transaction() as session:
        review = session.get(Review, review_id, with_for_update=True)
        if review is None:
            raise NotFoundError(f"no review {review_id!r}")
        if review.status != Status.failed.value:
            raise ConflictError(f"review {review_id} is {review.status}, not failed", code="not_failed",
                                details={"status": review.status})
        previous = review.mapping_version
        mapping = rt.mappings.get(review.mapping_name or "")
        if mapping is not None:
            review.mapping_version, review.mapping_snapshot = mapping.version, mapping.model_dump(mode="json")
        review.status, review.error = Status.queued, None
        job = session.execute(
            select(Job).where(Job.review_id == review_id, Job.kind == CREATE).order_by(Job.id.desc()).limit(1)
        ).scalar_one_or_none()
        if job is not None and job.state in ("dead", "cancelled", "done"):
            job.state, job.attempts, job.run_at = "pending", 0, utcnow()
            job.last_error = job.finished_at = job.locked_until = job.locked_by = None
            outbox.notify(session)  # due again: only a new job's INSERT notifies by itself
        elif job is None:
            outbox.enqueue(session, review_id, CREATE, max_attempts=rt.settings.worker.max_attempts)
        audit.record(session, "review.retried", actor=actor, review_id=review_id,
                     mapping=review.mapping_name, mapping_version=review.mapping_version, previous_version=previous)
        out = to_out(session, review)
    rt.wake()
    return out
