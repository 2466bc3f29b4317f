"""Who may decide (groups, quorum) and the SLA's reminders and escalations.

Quorum: each approving status change by a distinct allowed reviewer is one approval. Until
``reviewers.quorum`` is reached, each is recorded (``review_approvals``, one row per person,
so the same person twice counts once), audited as ``decision.approval_recorded``, answered
with a comment, and the ticket is put back by ``reviewers.reopen`` so the next approver can
approve the same way. Any reject ends the review at once.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from connectors import Person

from . import audit, decisions, outbox
from .decide import Approval, Decided, _matches, person_key
from .mapping import ActionSpec, Mapping, render_action, template_context
from .models import Job, Review, ReviewApproval
from .redact import redact_value
from .schemas import ReviewRequest, Status

if TYPE_CHECKING:
    from .batch import Batch
    from .worker import Worker

REMIND, ESCALATE, TICKET_FIELDS = "sla_remind", "sla_escalate", "ticket_fields"


def groups_for(connector: Any, mapping: Mapping, person: Person | None) -> set[str] | None:
    """The changer's groups, asked of the connector only when the mapping needs them."""
    spec = mapping.reviewers
    if not spec.groups or person is None or _matches(person, spec.allow):
        return None
    groups_of = getattr(connector, "groups_of", None)
    return set(groups_of(person)) if groups_of is not None else None


def approvals_of(db: Any, review_id: str) -> list[tuple[str, str]]:
    with db.read() as session:
        rows = session.execute(select(ReviewApproval).where(ReviewApproval.review_id == review_id)).scalars()
        return [(r.person_key, r.change_ref) for r in rows]


def record_approval(session: Session, review: Review, mapping: Mapping, approval: Approval) -> None:
    reviewer = approval.reviewer.model_dump() if approval.reviewer else None
    if session.execute(select(ReviewApproval.id).where(
        ReviewApproval.review_id == review.id, ReviewApproval.person_key == approval.person_key
    )).first():
        return  # read back twice concurrently: counted once
    session.add(ReviewApproval(review_id=review.id, person_key=approval.person_key, change_ref=approval.change_ref,
                               reviewer=reviewer))
    who = (approval.reviewer.email or approval.reviewer.name or approval.reviewer.id) if approval.reviewer else "a reviewer"
    audit.record(session, "decision.approval_recorded", actor=decisions.actor_of(approval.reviewer), review_id=review.id,
                 reviewer=reviewer, count=approval.count, quorum=approval.quorum)
    body = (f"hitl-bridge: approval {approval.count} of {approval.quorum} recorded ({who}). "
            f"{approval.quorum - approval.count} more from other reviewers needed; the review is still open.")
    outbox.enqueue(session, review.id, outbox.COMMENT, dedupe_key=f"approval:{review.id}:{approval.person_key}",
                   payload={"body": body})
    if mapping.reviewers.reopen:
        outbox.enqueue(session, review.id, TICKET_FIELDS, dedupe_key=f"reopen:{review.id}:{approval.person_key}",
                       payload={"fields": mapping.reviewers.reopen, "kind": "reopen"})


def quorum_met(session: Session, review: Review, mapping: Mapping, decided: Decided, person: Person | None) -> None:
    """The final approval of a quorum: recorded and audited with every approver."""
    if mapping.reviewers.quorum <= 1 or decided.reviewer is None:
        return
    from .decide import overall_type

    if overall_type(decided.decisions) not in ("approve", "edit"):
        return
    session.add(ReviewApproval(review_id=review.id, person_key=person_key(person), change_ref="final",
                               reviewer=decided.reviewer.model_dump()))
    approvers = [r.reviewer for r in session.execute(select(ReviewApproval).where(ReviewApproval.review_id == review.id)).scalars()]
    audit.record(session, "decision.quorum_met", actor=decisions.actor_of(decided.reviewer), review_id=review.id,
                 quorum=mapping.reviewers.quorum, approvers=approvers + [decided.reviewer.model_dump()])


def schedule_sla(rows: Batch, review: Review, mapping: Mapping) -> None:
    """Reminder and escalation jobs (expiry is queued by ``reviews._queue``)."""
    sla = mapping.sla
    if sla is None:
        return
    if sla.remind_after_seconds:
        rows.enqueue(review.id, REMIND, delay_seconds=sla.remind_after_seconds)
    if sla.escalate_after_seconds:
        rows.enqueue(review.id, ESCALATE, delay_seconds=sla.escalate_after_seconds)


class GovernanceJobs:
    """The worker's SLA and reopen job kinds (registered in ``Worker.handlers``)."""

    def __init__(self, worker: "Worker"):
        self.worker = worker

    def handlers(self) -> dict[str, Any]:
        return {REMIND: self.remind, ESCALATE: self.escalate, TICKET_FIELDS: self.set_fields}

    def _open(self, job: Job) -> tuple[Review, Mapping] | None:
        review = self.worker._load(job.review_id)
        mapping = decisions.snapshot_mapping(review)
        if review.status != Status.open or not review.ticket_key or mapping is None or mapping.sla is None:
            return None
        return review, mapping

    def remind(self, job: Job) -> None:
        found = self._open(job)
        if found is None:
            return self.worker._finish(job)
        review, mapping = found
        self._apply(job, review, mapping, ActionSpec(comment=mapping.sla.remind_message), "sla.reminded")

    def escalate(self, job: Job) -> None:
        found = self._open(job)
        if found is None:
            return self.worker._finish(job)
        review, mapping = found
        context = template_context(review.id, ReviewRequest.model_validate(review.request), status=review.status)
        self._apply(job, review, mapping, render_action(mapping.sla.escalate, context, "sla.escalate"), "sla.escalated")

    def set_fields(self, job: Job) -> None:
        review = self.worker._load(job.review_id)
        mapping = decisions.snapshot_mapping(review)
        if review.status != Status.open or not review.ticket_key or mapping is None:
            return self.worker._finish(job)
        self._apply(job, review, mapping, ActionSpec(fields=job.payload.get("fields") or {}), f"ticket.{job.payload.get('kind', 'fields')}")

    def _apply(self, job: Job, review: Review, mapping: Mapping, action: ActionSpec, kind: str) -> None:
        connector = self.worker._connector(review.ticket_connection)
        comment = redact_value(action.comment, mapping.redaction) if action.comment else None
        if comment:
            comments = connector.get_ticket(review.ticket_key).comments
            if not any(c.by_bridge and c.body.strip() == comment.strip() for c in comments):
                connector.add_comment(review.ticket_key, comment, public=action.public)
        fields = redact_value(action.fields, mapping.redaction)
        if fields:
            connector.update_ticket(review.ticket_key, fields)

        def apply(session: Session, row: Review) -> None:
            audit.record(session, kind, actor="bridge", review_id=row.id, fields=fields)

        self.worker._finish(job, apply)
