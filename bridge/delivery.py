"""Resuming the agent: a decision's delivery job, as a signed callback (Standard Webhooks) or
a LangGraph thread resumed with the decision.

Delivery runs at least once: a callback keeps its ``webhook-id`` across retries, so the
agent deduplicates; a LangGraph thread can be resumed only once, so a reversed decision it
can no longer take is recorded and said on the ticket, not retried. After a delivery the
ticket gets a comment that the decision reached the agent (chained: ``Worker._finish``).
"""

from __future__ import annotations

import json
import logging
from datetime import datetime
from typing import TYPE_CHECKING, Any

import httpx2
from sqlalchemy.orm import Session
from standardwebhooks import Webhook

from connectors.errors import PermanentError, RateLimitedError, RetryableError, retry_after_seconds

from . import audit, outbox
from .db import utcnow
from .models import Job, Review
from .schemas import DecisionRecord, ReviewRequest

if TYPE_CHECKING:
    from .worker import Worker

log = logging.getLogger("bridge.worker")


class CallbackError(RetryableError):
    pass


class DeliveryJobs:
    """The worker's delivery job kind (registered in ``Worker.handlers``)."""

    def __init__(self, worker: "Worker"):
        self.worker = worker
        self.http = httpx2.Client(timeout=10.0)

    def handlers(self) -> dict[str, Any]:
        return {outbox.DELIVER: self.deliver}

    def close(self) -> None:
        self.http.close()

    def deliver(self, job: Job) -> None:
        review = self.worker._load(job.review_id)
        request = ReviewRequest.model_validate(review.request)
        if review.decision is None or request.resume is None:
            return self.worker._finish(job)
        record = DecisionRecord.model_validate(review.decision)
        if record.version > job.payload.get("version", 1):
            return self.worker._finish(job)  # reversed since it was queued: the new version's job delivers that
        if request.resume.callback_url is not None:
            self._post_callback(str(request.resume.callback_url), review, record)
        else:
            from .langgraph import AlreadyResumed, api_key_for, resume_thread  # optional path, imported only when used

            target = request.resume.langgraph
            try:
                if record.version > 1 and review.delivered_at is not None:
                    raise AlreadyResumed(f"thread {target.thread_id} was resumed with an earlier version of this decision")
                resume_thread(target, record, api_key=api_key_for(self.worker.rt.settings, str(target.url)), review_id=review.id)
            except AlreadyResumed as exc:
                if record.version == 1:
                    raise
                return self._undeliverable(job, record, f"{exc}; a LangGraph thread cannot be resumed twice")

        def apply(session: Session, row: Review) -> None:
            row.delivered_at = utcnow()
            audit.record(session, "decision.delivered", actor="bridge", review_id=row.id, version=record.version,
                         via="callback" if request.resume.callback_url else "langgraph", attempts=job.attempts)
            if row.ticket_key and row.route_mode != "shadow":
                what = row.status if record.version == 1 else f"{row.status}, version {record.version}"
                outbox.enqueue(session, row.id, outbox.COMMENT,
                               dedupe_key=f"delivered:{row.id}" + (f":v{record.version}" if record.version > 1 else ""),
                               payload={"body": f"hitl-bridge: the decision ({what}) reached the agent."})

        self.worker._finish(job, apply)

    def _undeliverable(self, job: Job, record: DecisionRecord, why: str) -> None:
        """A reversed decision the agent can no longer take: recorded and said on the ticket,
        not retried (the job ends ``undeliverable``)."""
        with self.worker.rt.db.transaction() as session:
            outbox.finish(session, job.id, state="undeliverable", error=why)
            review = session.get(Review, job.review_id)
            audit.record(session, "decision.undeliverable", actor="bridge", review_id=review.id, version=record.version, why=why)
            if review.ticket_key:
                outbox.enqueue(session, review.id, outbox.COMMENT, dedupe_key=f"undeliverable:{review.id}:v{record.version}",
                               payload={"body": f"hitl-bridge: the reversed decision (version {record.version}) "
                                                f"could not be sent to the agent: {why}."})
        log.warning("decision.undeliverable", extra={"job_id": job.id, "version": record.version})

    def _post_callback(self, url: str, review: Review, record: DecisionRecord) -> None:
        """Standard Webhooks: one ``webhook-id`` per decision version, stable across retries
        (agents deduplicate on it): ``msg_<review>`` for the first, ``msg_<review>_v<N>`` after."""
        payload = {
            "type": "review.decided" if record.version == 1 else "review.decision_reversed",
            "review_id": review.id,
            "status": review.status,
            "version": record.version,
            "decisions": [d.as_langchain() for d in record.decisions],
            "decision": record.model_dump(mode="json"),
        }
        if record.version > 1:
            payload.update(supersedes=record.supersedes, reason=record.reason)
        body = json.dumps(payload, separators=(",", ":"))
        message_id = f"msg_{review.id}" if record.version == 1 else f"msg_{review.id}_v{record.version}"
        timestamp = datetime.now(tz=utcnow().tzinfo)
        signature = Webhook(self.worker.rt.callback_secret).sign(message_id, timestamp, body)
        headers = {
            "content-type": "application/json",
            "webhook-id": message_id,
            "webhook-timestamp": str(int(timestamp.timestamp())),
            "webhook-signature": signature,
        }
        try:
            response = self.http.post(url, content=body.encode(), headers=headers)
        except httpx2.HTTPError as exc:
            raise CallbackError(f"callback failed: {type(exc).__name__}", operation="deliver_decision") from exc
        if response.status_code == 410:
            raise PermanentError("the agent answered 410 Gone", status=410, operation="deliver_decision")
        if not 200 <= response.status_code < 300:
            if response.status_code == 429:
                raise RateLimitedError("the agent is rate limiting callbacks", status=429, operation="deliver_decision",
                                       retry_after=retry_after_seconds(response.headers.get("retry-after")))
            raise CallbackError("the agent did not accept the callback", status=response.status_code, operation="deliver_decision")
