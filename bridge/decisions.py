"""Recording a decision, and queueing everything it sets off: the agent's delivery, the
reply on the origin ticket, the ticket's own update, LangSmith feedback, metrics."""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from . import audit, outbox
from .db import utcnow
from .decide import overall_type
from .mapping import Mapping
from .models import Review
from .outbox import CLOSE, DELIVER, EXPIRE, LANGSMITH_FEEDBACK, POST_REPLY
from .runtime import Runtime
from .schemas import STATUS_FOR_DECISION, Decision, DecisionRecord, ReviewRequest, Status, TicketOut


def snapshot_mapping(review: Review) -> Mapping | None:
    """The mapping a review was routed with. Validated once per mapping version and process:
    every job of every review reads it (bench/), and a version is a hash of the content."""
    if not review.mapping_snapshot:
        return None
    if not review.mapping_version:
        return Mapping.model_validate(review.mapping_snapshot)
    key = (review.mapping_name, review.mapping_version)
    mapping = _SNAPSHOTS.get(key)
    if mapping is None:
        mapping = Mapping.model_validate(review.mapping_snapshot)
        if len(_SNAPSHOTS) > 256:
            _SNAPSHOTS.clear()
        _SNAPSHOTS[key] = mapping
    return mapping


_SNAPSHOTS: dict[tuple[str | None, str], Mapping] = {}


def ticket_out(review: Review) -> TicketOut | None:
    if not review.ticket_key or not review.ticket_connection:
        return None
    return TicketOut(connection=review.ticket_connection, key=review.ticket_key, display=review.ticket_display, url=review.ticket_url)


def apply_decision(
    session: Session,
    rt: Runtime,
    review: Review,
    decisions: list[Decision],
    *,
    reviewer: Any,
    source: str,
    reason: str | None = None,
) -> None:
    """Record a decision and queue everything it sets off (delivery, reply, ticket update)."""
    request = ReviewRequest.model_validate(review.request)
    record = DecisionRecord(
        decisions=decisions, reviewer=reviewer, decided_at=utcnow(), ticket=ticket_out(review), source=source, reason=reason
    )
    if source != "route" and rt.settings.langsmith and request.langsmith and request.langsmith.run_id:
        shadow = review.route_mode == "shadow" and source == "ticket"
        outbox.enqueue(session, review.id, LANGSMITH_FEEDBACK, dedupe_key=f"{LANGSMITH_FEEDBACK}:{review.id}:{'shadow' if shadow else 'decision'}",
                       payload={"decision": record.model_dump(mode="json")}, max_attempts=rt.settings.worker.max_attempts)
    if review.route_mode == "shadow" and source == "ticket":
        review.shadow_decision = record.model_dump(mode="json")
        audit.record(session, "review.shadow_decided", actor=actor_of(reviewer), review_id=review.id, decision=review.shadow_decision)
        return
    kind = overall_type(decisions)
    review.status = Status.auto_approved if source == "route" else (Status.expired if source == "expiry" else STATUS_FOR_DECISION[kind])
    review.decision = record.model_dump(mode="json")
    review.decided_at = record.decided_at
    audit.record(session, "review.decided", actor=actor_of(reviewer), review_id=review.id, status=review.status, decision=review.decision)
    if review.expires_at is not None:  # it has an SLA, so an expiry job (a statement less a decision without)
        outbox.cancel_jobs(session, review.id, (EXPIRE,))
    if request.resume is not None:
        outbox.enqueue(session, review.id, DELIVER, max_attempts=rt.settings.worker.max_attempts)
    reply = final_reply(request, decisions)
    if reply is not None and request.origin is not None:
        outbox.enqueue(session, review.id, POST_REPLY, payload={"body": reply}, max_attempts=rt.settings.worker.max_attempts)
    mapping = snapshot_mapping(review)
    if source != "route" and mapping and (mapping.on_decided.fields or mapping.on_decided.comment):
        outbox.enqueue(session, review.id, CLOSE, dedupe_key=f"on_decided:{review.id}", payload={"action": "on_decided"})
    if source == "ticket" and review.created_at:
        rt.metrics.time_to_decision.labels(review.route_name or "").observe((record.decided_at - review.created_at).total_seconds())
    rt.metrics.reviews.labels(review.status, review.route_name or "").inc()


def final_reply(request: ReviewRequest, decisions: list[Decision]) -> str | None:
    """The text to post on the origin ticket: an approved or edited ``reply`` action."""
    for action, decision in zip(request.action_requests, decisions):
        if action.name != "reply":
            continue
        if decision.type == "approve":
            return action.args.get("body")
        if decision.type == "edit" and decision.edited_action:
            return decision.edited_action.args.get("body")
    return None


def actor_of(reviewer: Any) -> str:
    if reviewer is None:
        return "bridge"
    return f"reviewer:{reviewer.email or reviewer.id or reviewer.name}"
