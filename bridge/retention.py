"""Retention: purge the content of finished reviews after a configurable period.

What goes: the request's text and arguments (title, reasoning, evidence, input, metadata,
action arguments and descriptions), decision messages and edited arguments, job payloads
(reply and comment bodies) and the content part of the review's audit events. What stays:
ids, statuses, routes, times, decision types and who decided, so the audit trail and the
route statistics still hold. The audit chain still verifies: an event's hash covers only a
salted digest of its content (``bridge/audit.py``), and ``review.purged`` records the purge.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from . import audit
from .db import utcnow
from .models import AuditContent, Job, Review
from .schemas import FINAL

PURGED_TITLE = "(purged)"


def _purged_request(request: dict[str, Any]) -> dict[str, Any]:
    return {
        "title": PURGED_TITLE,
        "action_requests": [{"name": a.get("name", "action"), "args": {}} for a in request.get("action_requests") or []],
        "allowed_decisions": request.get("allowed_decisions") or ["approve", "edit", "reject"],
        "confidence": request.get("confidence"),
        "cost": request.get("cost"),
        "origin": request.get("origin"),
        "resume": request.get("resume"),
    }


def _purged_decision(record: dict[str, Any] | None) -> dict[str, Any] | None:
    if record is None:
        return None
    decisions = []
    for d in record.get("decisions") or []:
        edited = d.get("edited_action")
        decisions.append({"type": d.get("type"), "message": None,
                          "edited_action": {"name": edited.get("name"), "args": {}} if edited else None})
    return {**record, "decisions": decisions, "reason": None}


def purge(session: Session, *, older_than_days: float, actor: str) -> list[str]:
    """Purge finished reviews decided (or last changed) more than ``older_than_days`` ago."""
    cutoff = utcnow() - timedelta(days=older_than_days)
    rows = session.execute(
        select(Review).where(
            Review.status.in_([s.value for s in FINAL]),
            func.coalesce(Review.decided_at, Review.updated_at) < cutoff,
            Review.title != PURGED_TITLE,
        )
    ).scalars().all()
    purged = []
    for row in rows:
        row.request = _purged_request(row.request or {})
        row.title = PURGED_TITLE
        row.decision = _purged_decision(row.decision)
        row.shadow_decision = _purged_decision(row.shadow_decision)
        row.error = None
        for job in session.execute(select(Job).where(Job.review_id == row.id, Job.state != "pending")).scalars():
            job.payload, job.last_error = {}, None
        session.execute(delete(AuditContent).where(AuditContent.review_id == row.id))
        audit.record(session, "review.purged", actor=actor, review_id=row.id, older_than_days=older_than_days)
        purged.append(row.id)
    return purged
