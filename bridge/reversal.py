"""Reversing a decision: only by a new, audited decision, never by editing history.

An admin sends a new decision (checked exactly as a reviewer's is, ``decide.check_decisions``)
and a reason. In one transaction the review's decision becomes the new one with the next
``version``, the audit trail records ``decision.reversed`` with the decision before and
after, and the outbox gets the new version's delivery (a callback with its own
``webhook-id``, or a LangGraph resume the worker declines if the thread was resumed
already), a comment on the ticket, the customer reply if the new decision approves one, and
LangSmith feedback for a review with a run (``langsmith.py``).
"""

from __future__ import annotations

from sqlalchemy.orm import Session

from . import audit, outbox
from .db import utcnow
from .decide import check_decisions, overall_type
from .decisions import final_reply, ticket_out
from .errors import BridgeError, ConflictError, NotFoundError
from .models import Review
from .outbox import COMMENT, DELIVER, LANGSMITH_FEEDBACK, POST_REPLY
from .retention import PURGED_TITLE
from .reviews import to_out
from .runtime import Runtime
from .schemas import DECIDED, STATUS_FOR_DECISION, Decision, DecisionRecord, DecisionReversal, Reviewer, ReviewOut, ReviewRequest, Status

REVERSIBLE = {s.value for s in DECIDED} | {Status.auto_approved.value}


class InvalidDecisionError(BridgeError):
    status_code = 422
    code = "invalid_decision"


def reverse(
    session: Session, review_id: str, decisions: list[Decision], *, reason: str, actor: str, max_attempts: int = 12,
    langsmith: bool = False,
) -> Review:
    """Replace a decided review's decision with a new version (see the module's docstring).
    404 for an unknown review, 409 for one not decided, 422 for a decision that does not fit.
    ``langsmith``: LangSmith is configured, so a review with a run hears the new verdict."""
    review = session.get(Review, review_id, with_for_update=True)
    if review is None:
        raise NotFoundError(f"no review {review_id!r}")
    if review.decision is None or review.status not in REVERSIBLE:
        raise ConflictError(
            f"review {review_id} is {review.status}: only a decided review can be reversed"
            + (" (cancel it instead)" if review.status in (Status.queued, Status.open) else ""),
            code="not_decided",
            details={"status": review.status},
        )
    if review.title == PURGED_TITLE:
        raise ConflictError(f"review {review_id}'s content was purged (retention); it can no longer be reversed",
                            code="purged", details={"status": review.status})
    request = ReviewRequest.model_validate(review.request)
    problem = check_decisions(request, decisions)
    if problem is not None:
        raise InvalidDecisionError(f"decisions: {problem}", details={"field": "decisions"})

    before = DecisionRecord.model_validate(review.decision)
    version = before.version + 1
    record = DecisionRecord(
        decisions=decisions, reviewer=Reviewer(id=actor), decided_at=utcnow(), ticket=ticket_out(review),
        source="reversal", reason=reason, version=version, supersedes=before.version,
    )
    status_before = review.status
    review.status = STATUS_FOR_DECISION[overall_type(decisions)]
    review.decision = record.model_dump(mode="json")
    review.decided_at = record.decided_at
    audit.record(session, "decision.reversed", actor=actor, review_id=review.id, version=version, supersedes=before.version,
                 status_before=status_before, status=review.status, before=before.model_dump(mode="json"),
                 after=review.decision, reason=reason)

    outbox.cancel_jobs(session, review.id, (DELIVER,))  # an older version not sent yet never will be
    if request.resume is None:
        review.delivered_at = None  # the next long-poll hands the new version over
    else:
        outbox.enqueue(session, review.id, DELIVER, dedupe_key=f"{DELIVER}:{review.id}:v{version}",
                       payload={"version": version}, max_attempts=max_attempts)
    reply = final_reply(request, decisions)
    if request.origin is not None and reply != final_reply(request, before.decisions):
        outbox.cancel_jobs(session, review.id, (POST_REPLY,))  # the earlier reply, if not posted yet, never will be
        if reply is not None:
            outbox.enqueue(session, review.id, POST_REPLY, dedupe_key=f"{POST_REPLY}:{review.id}:v{version}",
                           payload={"body": reply}, max_attempts=max_attempts)
    if langsmith and request.langsmith and request.langsmith.run_id:
        outbox.enqueue(session, review.id, LANGSMITH_FEEDBACK, dedupe_key=f"{LANGSMITH_FEEDBACK}:{review.id}:decision:v{version}",
                       payload={"decision": review.decision}, max_attempts=max_attempts)
    if review.ticket_key:
        body = (f"hitl-bridge: the decision was reversed by {actor} ({status_before} -> {review.status}, "
                f"version {version}). Reason: {reason}")
        outbox.enqueue(session, review.id, COMMENT, dedupe_key=f"reversed:{review.id}:v{version}", payload={"body": body})
    return review


def for_every_action(session: Session, review_id: str, decision: Decision) -> list[Decision]:
    """``decision`` once for each of the review's action requests (the command line's
    ``--decision`` and the admin page's form, which give one decision for all)."""
    review = session.get(Review, review_id)
    if review is None:
        raise NotFoundError(f"no review {review_id!r}")
    return [decision] * max(1, len((review.request or {}).get("action_requests") or []))


def reverse_review(rt: Runtime, review_id: str, body: DecisionReversal, *, actor: str) -> ReviewOut:
    with rt.db.transaction() as session:
        review = reverse(session, review_id, body.decisions, reason=body.reason, actor=actor,
                         max_attempts=rt.settings.worker.max_attempts, langsmith=rt.settings.langsmith is not None)
        out = to_out(session, review)
    rt.wake()
    rt.metrics.reviews.labels(out.status, out.route.name or "").inc()
    return out
