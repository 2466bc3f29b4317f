"""The append-only audit trail: every event's hash covers its content and the previous hash,
so an edited, deleted or reordered row breaks the chain and ``audit verify`` says where."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from .db import utcnow
from .models import AuditEvent, AuditHead

GENESIS = "0" * 64


def event_hash(prev_hash: str, *, review_id: str | None, at: str, actor: str, kind: str, data: dict[str, Any]) -> str:
    body = json.dumps(
        {"prev": prev_hash, "review_id": review_id, "at": at, "actor": actor, "kind": kind, "data": data},
        sort_keys=True,
        separators=(",", ":"),
        default=str,
    )
    return hashlib.sha256(body.encode()).hexdigest()


def record(session: Session, kind: str, *, actor: str, review_id: str | None = None, **data: Any) -> AuditEvent:
    """Append one event in the caller's transaction (the head row lock serialises writers)."""
    head = session.execute(select(AuditHead).where(AuditHead.id == 1).with_for_update()).scalar_one_or_none()
    if head is None:
        head = AuditHead(id=1, hash=GENESIS, count=0)
        session.add(head)
        session.flush()
    at = utcnow()
    data = json.loads(json.dumps(data, default=str))
    digest = event_hash(head.hash, review_id=review_id, at=at.isoformat(), actor=actor, kind=kind, data=data)
    event = AuditEvent(review_id=review_id, at=at, actor=actor, kind=kind, data=data, prev_hash=head.hash, hash=digest)
    session.add(event)
    head.hash = digest
    head.count += 1
    return event


@dataclass
class Verification:
    ok: bool
    checked: int
    problem: str | None = None


def _events(session: Session) -> Iterator[AuditEvent]:
    yield from session.execute(select(AuditEvent).order_by(AuditEvent.id).execution_options(yield_per=1000)).scalars()


def verify(session: Session) -> Verification:
    prev = GENESIS
    checked = 0
    for event in _events(session):
        if event.prev_hash != prev:
            return Verification(False, checked, f"event {event.id}: chain broken (a row before it was changed, removed or moved)")
        expected = event_hash(
            prev, review_id=event.review_id, at=event.at.isoformat(), actor=event.actor, kind=event.kind, data=event.data
        )
        if expected != event.hash:
            return Verification(False, checked, f"event {event.id}: content does not match its hash (edited)")
        prev = event.hash
        checked += 1
    head = session.get(AuditHead, 1)
    if head is not None and (head.hash != prev or head.count != checked):
        return Verification(False, checked, "the newest events are missing (head does not match)")
    return Verification(True, checked)
