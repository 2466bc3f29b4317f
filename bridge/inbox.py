"""The webhook inbox: verified ticket events recorded once, each queuing a read-back.

An event names a ticket. It is matched to the review that made the ticket, recorded once
(its id is unique per connection, so a resent webhook is a duplicate) and, while the review
waits for a decision, queues a read-back of the ticket (``sync_ticket``) unless one is
pending already: a burst of events about one ticket needs one look. The worker's read-back
decides; an event never does, so a forged or stale one can at most cause a look.
"""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import Connection, bindparam, select, text
from sqlalchemy.orm import Session

from connectors import TicketEvent

from . import outbox
from .db import insert_once, utcnow
from .errors import NotFoundError
from .models import Job, Review, WebhookEvent
from .outbox import SYNC
from .runtime import Runtime
from .schemas import Status

# The few columns the ack needs, not the review's large JSON columns (the ack's hot path).
_MATCH_TICKET = (
    select(Review.id, Review.status, Review.route_mode, Review.shadow_decision)
    .where(Review.ticket_connection == bindparam("connection"), Review.ticket_key == bindparam("key"))
    .order_by(Review.id.desc())
    .limit(1)
)
_PENDING_SYNC = select(Job.id).where(Job.review_id == bindparam("review_id"), Job.kind == SYNC, Job.state == "pending").limit(1)
_WEBHOOK_EVENTS = WebhookEvent.__table__

# PostgreSQL: the match, the event and the read-back in one statement that commits by itself
# (AUTOCOMMIT), one round trip where BEGIN, four statements and COMMIT made six; each round
# trip of a thread gives up the GIL and waits to take it back from the worker's threads
# (bench/README.md). The same steps as ``_record``: "waiting" is ``status = open``, or a
# shadow review without its shadow decision (a JSON column: SQL NULL, or JSON null).
_ACK = text("""
WITH given AS (
    SELECT CAST(:connection AS varchar) AS connection, CAST(:ticket_key AS varchar) AS ticket_key,
           CAST(:event_id AS varchar) AS event_id, CAST(:open AS varchar) AS open, CAST(:kind AS varchar) AS kind,
           CAST(:payload AS json) AS payload, CAST(:max_attempts AS int) AS max_attempts, CAST(:now AS timestamptz) AS now
), review AS (
    SELECT r.id, (r.status = given.open OR (r.route_mode = 'shadow'
                  AND (r.shadow_decision IS NULL OR json_typeof(r.shadow_decision) = 'null'))) AS waiting
    FROM reviews AS r, given
    WHERE r.ticket_connection = given.connection AND r.ticket_key = given.ticket_key
    ORDER BY r.id DESC
    LIMIT 1
), event AS (
    INSERT INTO webhook_events (connection, event_id, ticket_key, received_at)
    SELECT given.connection, given.event_id, given.ticket_key, given.now FROM given, review
    ON CONFLICT DO NOTHING
    RETURNING id
), job AS (
    INSERT INTO jobs (review_id, kind, dedupe_key, payload, run_at, max_attempts, state, attempts, created_at)
    SELECT review.id, kind, kind || ':' || review.id || ':' || event_id, payload, now, max_attempts, 'pending', 0, now
    FROM given, review
    WHERE review.waiting AND EXISTS (SELECT FROM event)
      AND NOT EXISTS (SELECT FROM jobs WHERE jobs.review_id = review.id AND jobs.kind = given.kind AND jobs.state = 'pending')
    ON CONFLICT DO NOTHING
)
SELECT EXISTS (SELECT FROM review) AS known, EXISTS (SELECT FROM event) AS recorded,
       COALESCE((SELECT waiting FROM review), false) AS waiting
""")


def accept(rt: Runtime, connection: str, events: list[TicketEvent]) -> dict[str, Any]:
    """Record verified events once and queue a read-back of each ticket they name: how many
    were accepted, duplicates, ignored (the review is decided) or unknown. NotFoundError
    (nothing recorded) when no event names a ticket the bridge made."""
    if rt.db.one_writer:  # acks waiting for SQLite's one writer go together (Core only: safe to run again)
        seen = rt.db.grouped(lambda session: [_record(session, connection, event) for event in events])
    else:  # PostgreSQL runs them side by side; grouped, they queued behind one leader (bench/README.md)
        with rt.db.short_write() as sql:
            seen = [_record_in_one_statement(sql, connection, event) for event in events]
    outcome = {"accepted": 0, "duplicate": 0, "ignored": 0, "unknown": 0}
    for known, recorded, waiting in seen:
        # a duplicate also when the same event arrives twice at once: one insert wins
        outcome["accepted" if waiting else "ignored" if recorded else "duplicate" if known else "unknown"] += 1
    if events and outcome["unknown"] == len(events):
        raise NotFoundError(
            "the webhook names no ticket the bridge created",
            code="unknown_ticket",
            details={"tickets": sorted({e.ticket_key for e in events})},
        )
    rt.wake()
    return outcome


def _record(session: Session, connection: str, event: TicketEvent) -> tuple[bool, bool, bool]:
    """(the ticket is a review's, the event is new, a read-back is queued or pending)."""
    sql = session.connection()
    review = sql.execute(_MATCH_TICKET, {"connection": connection, "key": event.ticket_key}).first()
    if review is None:
        return False, False, False
    if insert_once(session, _WEBHOOK_EVENTS, {"connection": connection, "event_id": event.event_id,
                                             "ticket_key": event.ticket_key, "received_at": utcnow()}) is None:
        return True, False, False
    waiting = review.status == Status.open or (review.route_mode == "shadow" and review.shadow_decision is None)
    if waiting and sql.execute(_PENDING_SYNC, {"review_id": review.id}).first() is None:
        outbox.enqueue(session, review.id, SYNC, dedupe_key=f"{SYNC}:{review.id}:{event.event_id}")
    return True, True, waiting


def _record_in_one_statement(sql: Connection, connection: str, event: TicketEvent) -> tuple[bool, bool, bool]:
    """``_record`` on PostgreSQL: the same answer, from ``_ACK``."""
    job = outbox.job_values("", SYNC)  # a new job's defaults; its review and dedupe key come from the statement
    row = sql.execute(_ACK, {"open": Status.open.value, "connection": connection, "ticket_key": event.ticket_key,
                             "event_id": event.event_id, "now": job["created_at"], "kind": SYNC,
                             "payload": json.dumps(job["payload"]), "max_attempts": job["max_attempts"]}).one()
    return row.known, row.recorded, row.recorded and row.waiting
