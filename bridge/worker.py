"""The worker: claims outbox jobs and does all network work (tickets, callbacks, replies).

Each job does its I/O first, then records the result and marks itself done in one
transaction. Every handler is safe to run again after a crash at any point: ticket
creation finds the ticket it made before, a reply is not posted twice, a callback keeps its
``webhook-id``. Retries are decided here and only here: connector errors say whether a
retry can help (``RetryableError``, with ``Retry-After`` for 429s), tenacity's backoff says
when. The ticket's jobs are here; the delivery to the agent is in ``delivery.py``, the SLA
jobs in ``governance.py``, LangSmith's in ``langsmith.py``.
"""

from __future__ import annotations

import hashlib
import logging
import os
import socket
import threading
import time
from collections.abc import Callable

from sqlalchemy import Row
from sqlalchemy.orm import Session

from connectors.errors import ConnectorError, PermanentError, RateLimitedError, RetryableError

from . import audit, decisions, outbox, rows
from .breaker import CircuitBreakers, CircuitOpenError
from .delivery import DeliveryJobs
from .decide import Approval, Decided, Refused, decide
from .governance import GovernanceJobs, approvals_of, groups_for, quorum_met, record_approval
from .redact import redact_value
from .errors import MappingError
from .langsmith import LangSmithJobs
from .logs import correlation
from .mapping import ActionSpec, RedactionSpec, ReplySpec, render_action, render_ticket, render_value, template_context
from .models import Job, Review
from .runtime import Runtime
from .wakeups import Listener
from .schemas import Decision, ReviewRequest, Status

log = logging.getLogger("bridge.worker")
# Run by the thread whose transaction queued them: a decision's delivery, and a comment on
# the ticket (the "reached the agent" one after every delivery). Claimed as they are
# queued, they cost no claim and no read of the review (bench/README.md).
CHAINED = frozenset({outbox.DELIVER, outbox.COMMENT})


class Worker:
    def __init__(self, rt: Runtime, *, name: str | None = None):
        self.rt = rt
        self.id = name or f"{socket.gethostname()}:{os.getpid()}:{id(self):x}"
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._listener: Listener | None = None
        settings = rt.settings.worker
        self.breakers = CircuitBreakers(threshold=settings.breaker_threshold, cooldown_seconds=settings.breaker_cooldown_seconds)
        self._calls = threading.local()  # the connections the current job has used
        self._looking = threading.Lock()  # held by the one idle thread looking for a job
        self._more_due = True  # the last look saw another job due: look again at once
        self._chained = threading.local()  # the jobs this thread claimed in its last transaction
        self.handlers: dict[str, Callable[[Job], None]] = {
            outbox.CREATE: self.create_ticket,
            outbox.SYNC: self.sync_ticket,
            outbox.POST_REPLY: self.post_reply,
            outbox.COMMENT: self.comment_on_ticket,
            outbox.CLOSE: self.ticket_action,
            outbox.EXPIRE: self.expire_review,
        }
        self.delivery = DeliveryJobs(self)
        self.handlers.update(self.delivery.handlers())
        self.handlers.update(LangSmithJobs(self).handlers())
        self.handlers.update(GovernanceJobs(self).handlers())

    # ----- loop ------------------------------------------------------------------------
    def start(self) -> None:
        if Listener.supported(self.rt.settings.database_url):
            self._listener = Listener(self.rt.settings.database_url, self.rt.wakeup.set, listening=self.rt.listening).start()
        for n in range(self.rt.settings.worker.concurrency):
            thread = threading.Thread(target=self._loop, name=f"worker-{n}", daemon=True)
            thread.start()
            self._threads.append(thread)
        threading.Thread(target=self._renew_leases, name="worker-leases", daemon=True).start()

    def stop(self, timeout: float | None = None) -> None:
        """Claim no more; let the jobs in hand finish for up to ``timeout`` seconds (the
        shutdown grace), then release the rest so another worker takes them at once
        instead of after their lease (SIGTERM, deploys)."""
        self._stop.set()
        self.rt.wakeup.set()
        grace = self.rt.settings.worker.shutdown_grace_seconds if timeout is None else timeout
        deadline = time.monotonic() + grace
        for thread in self._threads:
            thread.join(timeout=max(deadline - time.monotonic(), 0))
        try:
            released = outbox.release(self.rt.db, self.id)
        except Exception:  # the database may be what is going away
            log.exception("worker.release_failed")
            released = 0
        if released:
            log.warning("worker.released", extra={"jobs": released, "worker": self.id})
        if self._listener is not None:
            self._listener.stop()
        if not any(t.is_alive() for t in self._threads):
            self.delivery.close()

    @property
    def alive(self) -> bool:
        return bool(self._threads) and all(t.is_alive() for t in self._threads)

    def _loop(self) -> None:
        interval = self.rt.settings.worker.poll_interval_seconds
        while not self._stop.is_set():
            # One idle thread looks for work at a time; the others queue on ``_looking``. A
            # wake-up then costs one claim, not one per thread (each a write transaction:
            # with 32 threads that herd swamped webhook acks, measured in bench/). A thread
            # that claimed a job hands the look-out on before running it; the next looks at
            # once only if another job was due, else it waits to hear of one (or polls).
            with self._looking:
                if self._stop.is_set():
                    return
                if not self._more_due:
                    self.rt.wakeup.wait(interval)
                    if self._stop.is_set():  # stop() wakes the waiting: claim no more
                        return
                # Cleared before looking, not after: a wake-up that arrives while we look is
                # kept, so the wait above returns at once instead of after the poll interval.
                self.rt.wakeup.clear()
                try:
                    job, self._more_due = outbox.claim(self.rt.db, self.id, lease_seconds=self.rt.settings.worker.lease_seconds)
                except Exception:  # the loop must survive anything, e.g. a database restart
                    log.exception("worker.loop_error")
                    job, self._more_due = None, False
                if job is None:
                    continue
            self._chained.jobs, self._chained.review = [job], None
            while self._chained.jobs:  # the job, then any it chained (a decision's delivery, its comment)
                job = self._chained.jobs.pop(0)
                try:
                    with correlation(job.review_id):
                        self._run(job)
                except Exception:
                    log.exception("worker.loop_error")
            self.rt.wake()  # the job may have queued others (a reply, an on_decided update): look now

    def _renew_leases(self) -> None:
        """Every third of a lease, extend the leases of the jobs in hand (one statement)."""
        lease = self.rt.settings.worker.lease_seconds
        while not self._stop.wait(lease / 3):
            try:
                outbox.renew(self.rt.db, self.id, lease_seconds=lease)
            except Exception:  # e.g. a database restart: the next round tries again
                log.exception("worker.renew_failed")

    def _run(self, job: Job) -> None:
        handler = self.handlers.get(job.kind)
        if handler is None:
            # A kind a newer version added, met during a rolling deploy: hand it back at once
            # (attempt not counted) for a newer worker, instead of holding it for a lease.
            log.warning("job.unknown_kind", extra={"job_id": job.id, "kind": job.kind})
            with self.rt.db.transaction() as session:
                outbox.fail(session, job, f"this worker does not know job kind {job.kind!r}", retry_in=1.0,
                            count_attempt=False)
            return
        settings = self.rt.settings.worker
        self._calls.connections = []
        try:
            handler(job)
        except CircuitOpenError as exc:
            self._failed(job, exc, retry_in=exc.retry_after, count_attempt=False)
        except (PermanentError, MappingError) as exc:
            self._circuit_result(ok=True)  # the system answered: it is up
            self._failed(job, exc, retry_in=None)
        except ConnectorError as exc:
            retry_after = exc.retry_after if isinstance(exc, RateLimitedError) else None
            used = getattr(self._calls, "connections", [])
            if retry_after and used:
                self.breakers.hold(used[-1], retry_after)  # rate limited: it is up, but wants a pause
            else:
                self._circuit_result(ok=not isinstance(exc, RetryableError))
            delay = outbox.backoff_seconds(
                job.attempts, initial=settings.backoff_initial_seconds, maximum=settings.backoff_max_seconds, retry_after=retry_after
            )
            self._failed(job, exc, retry_in=delay)
        except Exception as exc:
            log.exception("job.crashed", extra={"job_id": job.id, "kind": job.kind})
            self._circuit_result(ok=False)
            delay = outbox.backoff_seconds(job.attempts, initial=settings.backoff_initial_seconds, maximum=settings.backoff_max_seconds)
            self._failed(job, exc, retry_in=delay)
        else:
            self._circuit_result(ok=True)
            self.rt.metrics.job_runs.labels(job.kind, "done").inc()

    def _connector(self, connection: str):
        """The connection's connector, unless its circuit is open (then CircuitOpenError)."""
        self.breakers.check(connection)
        self._calls.__dict__.setdefault("connections", []).append(connection)
        return self.rt.connector(connection)

    def _circuit_result(self, *, ok: bool) -> None:
        used = getattr(self._calls, "connections", [])
        if not used:
            return
        if ok:
            for connection in set(used):
                self.breakers.succeeded(connection)
        elif self.breakers.failed(used[-1]):  # the last one called is the one that failed
            log.warning("circuit.opened", extra={"connection": used[-1], "cooldown": self.breakers.cooldown})

    def _failed(self, job: Job, exc: Exception, *, retry_in: float | None, count_attempt: bool = True) -> None:
        error = f"{type(exc).__name__}: {exc}"
        with self.rt.db.transaction() as session:
            state = outbox.fail(session, job, error, retry_in=retry_in, count_attempt=count_attempt)
            if state == "dead":
                self._dead(session, job, error)
        self.rt.metrics.job_runs.labels(job.kind, state).inc()
        if state == "pending":
            self.rt.metrics.job_retries.labels(job.kind).inc()
        log.warning("job.failed", extra={"job_id": job.id, "kind": job.kind, "state": state, "error": error, "retry_in": retry_in})

    def _dead(self, session: Session, job: Job, error: str) -> None:
        review = session.get(Review, job.review_id)
        if review is None:
            return
        audit.record(session, "job.dead", actor="bridge", review_id=review.id, job=job.kind, error=error)
        if job.kind == outbox.CREATE and review.status == Status.queued:
            review.status = Status.failed
            review.error = {"code": "ticket_not_created", "message": error}

    # ----- helpers ---------------------------------------------------------------------
    def _load(self, review_id: str) -> Review | Row:
        """The review as a job reads it before its network work: its columns as attributes,
        never written (a job's result is recorded on the locked row in ``_finish``)."""
        handed = getattr(self._chained, "review", None)
        if handed is not None and handed.id == review_id:
            self._chained.review = None
            return handed  # a chained job: the row as the transaction that queued it committed it
        return self.rt.db.fetch(Review, review_id)  # queues behind no writer (webhook acks are writers)

    def _finish(self, job: Job, apply: Callable[[Session, Review], None] | None = None) -> None:
        """Record a job's result and end it in one transaction. ``apply`` gets the review
        locked, as a ``rows.Locked``: what it sets is written when it returns. A delivery or
        comment it queues (a decision made from a read-back) is claimed in that transaction
        and run next by this thread: the agent hears at once, not after the queue
        (outbox.Chain)."""
        if apply is None:
            return outbox.finish_alone(self.rt.db, job.id)
        chain = outbox.Chain(self.id, self.rt.settings.worker.lease_seconds, CHAINED)
        with self.rt.db.transaction() as session:
            session.info[outbox.CHAIN] = chain
            review = rows.lock(session, Review, job.review_id)
            apply(session, review)
            rows.save(session, review)
            outbox.finish(session, job.id)
        self._chained.__dict__.setdefault("jobs", []).extend(chain.jobs)
        self._chained.review = review if chain.jobs else None  # the chained job need not read it again

    # ----- handlers --------------------------------------------------------------------
    def create_ticket(self, job: Job) -> None:
        review = self._load(job.review_id)
        if review.ticket_key or review.status not in (Status.queued, Status.auto_approved):
            return self._finish(job)
        mapping = decisions.snapshot_mapping(review)
        request = ReviewRequest.model_validate(review.request)
        connector = self._connector(mapping.connection)
        rendered = render_ticket(mapping, review.id, request, bridge_url=self.rt.settings.public_url)
        rendered = rendered.model_copy(update=redact_value(rendered.model_dump(), mapping.redaction))  # nothing unmasked leaves
        origin = request.origin
        if mapping.ticket.target == "origin" and origin and origin.connection == mapping.connection:
            ticket = connector.get_ticket(origin.ticket_id)
            if rendered.fields:
                connector.update_ticket(ticket.ref.key, rendered.fields)
            if rendered.comment and not any(c.by_bridge and review.id in c.body for c in ticket.comments):
                connector.add_comment(ticket.ref.key, rendered.comment, public=False)
            ref, adopted = ticket.ref, False
        else:
            # Only an attempt that may have made the ticket already (a retry, a job taken over
            # after a crash or released) looks for it by the review's label: a first attempt
            # cannot have, and the search was half of a ticket's calls against the vendor's
            # rate limit (bench/).
            ref = connector.find_ticket(review.id) if _maybe_done(job) else None
            adopted = ref is not None
            if ref is None:
                ref = connector.create_ticket(rendered.fields, review_id=review.id)
            if rendered.comment:
                existing = connector.get_ticket(ref.key).comments if adopted else ()
                if not any(c.by_bridge and c.body.strip() == rendered.comment.strip() for c in existing):
                    connector.add_comment(ref.key, rendered.comment, public=False)

        def apply(session: Session, row: Review) -> None:
            row.ticket_key, row.ticket_display, row.ticket_url = ref.key, ref.display, ref.url
            if row.status == Status.queued:
                row.status = Status.open
            audit.record(session, "ticket.created", actor="bridge", review_id=row.id, connection=mapping.connection,
                         key=ref.key, display=ref.display, adopted=adopted)
            self.rt.metrics.reviews.labels(row.status, row.route_name or "").inc()

        self._finish(job, apply)

    def sync_ticket(self, job: Job) -> None:
        review = self._load(job.review_id)
        if not _waiting(review):
            return self._finish(job)
        mapping = decisions.snapshot_mapping(review)
        request = ReviewRequest.model_validate(review.request)
        account = self.rt.bridge_account(mapping.connection)  # first: a connector that asked keeps the answer
        ticket = self._connector(mapping.connection).get_ticket(review.ticket_key)
        groups = groups_for(self._connector(mapping.connection), mapping, ticket.changed_by)
        approvals = approvals_of(self.rt.db, review.id) if mapping.reviewers.quorum > 1 else ()
        result = decide(ticket, mapping, request, since=review.created_at, bridge_account=account, groups=groups, approvals=approvals)

        def apply(session: Session, row: Review) -> None:
            if not _waiting(row) or result is None:
                return
            if isinstance(result, Approval):
                record_approval(session, row, mapping, result)
                return
            if isinstance(result, Decided):
                quorum_met(session, row, mapping, result, ticket.changed_by)
                decisions.apply_decision(session, self.rt, row, result.decisions, reviewer=result.reviewer, source="ticket")
                return
            assert isinstance(result, Refused)
            fingerprint = hashlib.sha256(f"{result.reason}|{ticket.status}|{ticket.changed_at or ticket.updated}".encode()).hexdigest()[:32]
            if row.refusal == fingerprint:
                return
            row.refusal = fingerprint
            reviewer = result.reviewer.model_dump() if result.reviewer else None
            audit.record(session, "decision.refused", actor="bridge", review_id=row.id, reason=result.reason, reviewer=reviewer)
            body = f"hitl-bridge could not accept this decision: {result.reason}. The review is still open."
            outbox.enqueue(session, row.id, outbox.COMMENT, dedupe_key=f"refusal:{row.id}:{fingerprint}", payload={"body": body})

        self._finish(job, apply)

    def post_reply(self, job: Job) -> None:
        review = self._load(job.review_id)
        request = ReviewRequest.model_validate(review.request)
        mapping = decisions.snapshot_mapping(review)
        spec = mapping.reply if mapping else ReplySpec()
        origin = request.origin
        body = job.payload["body"]
        connector = self._connector(origin.connection)
        ticket = connector.get_ticket(origin.ticket_id)
        if spec.channel == "email":
            reply_by_email = getattr(connector, "reply_by_email", None)
            if reply_by_email is None:
                raise PermanentError(f"reply.channel is email, but connection {origin.connection!r} "
                                     f"({connector.name}) has no e-mail replies", operation="post_reply")
            already = not reply_by_email(ticket.ref.key, body)  # finds an identical earlier e-mail itself
        else:
            already = any(c.by_bridge and c.body.strip() == body.strip() for c in ticket.comments)
            if not already:
                connector.add_comment(ticket.ref.key, body, public=spec.public)
        if spec.fields and mapping is not None and mapping.connection == origin.connection:
            # reply.fields are in the mapping's vendor shape: only for origins in that system.
            fields = render_value(spec.fields, template_context(review.id, request), "reply.fields")
            connector.update_ticket(ticket.ref.key, fields)

        def apply(session: Session, row: Review) -> None:
            audit.record(session, "reply.posted", actor="bridge", review_id=row.id, connection=origin.connection,
                         ticket=ticket.ref.key, channel=spec.channel, already_there=already)

        self._finish(job, apply)

    def comment_on_ticket(self, job: Job) -> None:
        review = self._load(job.review_id)
        if not review.ticket_key:
            return self._finish(job)
        connector = self._connector(review.ticket_connection)
        mapping = decisions.snapshot_mapping(review)
        body = redact_value(job.payload["body"], mapping.redaction if mapping else RedactionSpec())
        if not _maybe_done(job) or not any(c.by_bridge and c.body.strip() == body.strip()
                                           for c in connector.get_ticket(review.ticket_key).comments):
            connector.add_comment(review.ticket_key, body, public=bool(job.payload.get("public", False)))
        self._finish(job)

    def ticket_action(self, job: Job) -> None:
        review = self._load(job.review_id)
        mapping = decisions.snapshot_mapping(review)
        if not review.ticket_key or mapping is None:
            return self._finish(job)
        spec = getattr(mapping, job.payload["action"])
        context = template_context(review.id, ReviewRequest.model_validate(review.request), status=review.status)
        action = render_action(spec, context, job.payload["action"])
        action = ActionSpec.model_validate(redact_value(action.model_dump(), mapping.redaction))
        connector = self._connector(review.ticket_connection)
        if action.comment:
            comments = connector.get_ticket(review.ticket_key).comments
            if not any(c.by_bridge and c.body.strip() == action.comment.strip() for c in comments):
                connector.add_comment(review.ticket_key, action.comment, public=action.public)
        if action.fields:
            connector.update_ticket(review.ticket_key, action.fields)

        def apply(session: Session, row: Review) -> None:
            audit.record(session, f"ticket.{job.payload['action']}", actor="bridge", review_id=row.id, fields=action.fields)

        self._finish(job, apply)

    def expire_review(self, job: Job) -> None:
        def apply(session: Session, row: Review) -> None:
            if row.status not in (Status.open, Status.queued):
                return
            mapping = decisions.snapshot_mapping(row)
            sla = mapping.sla
            request = ReviewRequest.model_validate(row.request)
            expired = [
                Decision(type=sla.on_expire, message=sla.message if sla.on_expire == "reject" else None)
                for _ in request.action_requests
            ]
            decisions.apply_decision(session, self.rt, row, expired, reviewer=None, source="expiry", reason=sla.message)
            if row.ticket_key:
                outbox.enqueue(session, row.id, outbox.COMMENT, dedupe_key=f"expired:{row.id}",
                               payload={"body": f"hitl-bridge: {sla.message} Applied: {sla.on_expire}."})

        self._finish(job, apply)


def _maybe_done(job: Job) -> bool:
    """Whether an earlier attempt of this job may have done its work already: only then is
    the ticket looked for, or read to look. Claiming counts each attempt, and a failed or
    released one leaves its ``last_error``, so a job's first run never needs to."""
    return job.attempts > 1 or job.last_error is not None


def _waiting(review: Review) -> bool:
    if review.status == Status.open:
        return True
    return review.route_mode == "shadow" and review.ticket_key is not None and review.shadow_decision is None
