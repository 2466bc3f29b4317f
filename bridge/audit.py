"""The append-only audit trail: every event's hash covers its content and the previous hash,
so an edited, deleted or reordered row breaks the chain and ``audit verify`` says where."""

from __future__ import annotations

import hashlib
import json
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from sqlalchemy import TextClause, bindparam, insert, select, text, update
from sqlalchemy import event as orm_events
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from .db import IN_TURN, utcnow
from .models import AuditContent, AuditEvent, AuditHead

GENESIS = "0" * 64
_HEAD, _EVENTS, _CONTENT = AuditHead.__table__, AuditEvent.__table__, AuditContent.__table__
_READ_HEAD = select(_HEAD.c.hash).where(_HEAD.c.id == 1).with_for_update()
_ADD_EVENTS = insert(_EVENTS).returning(_EVENTS.c.id, sort_by_parameter_order=True)
_ADD_CONTENT = insert(_CONTENT)
_MOVE_HEAD_FROM = (update(_HEAD).where(_HEAD.c.id == 1, _HEAD.c.hash == bindparam("old_hash"))
                   .values(hash=bindparam("new_hash"), count=_HEAD.c.count + bindparam("added")))
_PENDING = "hitl_audit_pending"
CONTENT_KEYS = frozenset({"title", "decision", "reason", "body", "message", "before", "after"})
"""Data keys that carry review content: kept beside the event (``audit_content``) and
covered by a salted digest in the event, so retention can purge them and the chain holds."""


def content_digest(salt: str, content: dict[str, Any]) -> str:
    body = json.dumps(content, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(f"{salt}:{body}".encode()).hexdigest()


def event_hash(prev_hash: str, *, review_id: str | None, at: str, actor: str, kind: str, data: dict[str, Any]) -> str:
    body = json.dumps(
        {"prev": prev_hash, "review_id": review_id, "at": at, "actor": actor, "kind": kind, "data": data},
        sort_keys=True,
        separators=(",", ":"),
        default=str,
    )
    return hashlib.sha256(body.encode()).hexdigest()


def record(session: Session, kind: str, *, actor: str, review_id: str | None = None, **data: Any) -> None:
    """Add one event to the caller's transaction. It joins the chain just before that
    transaction commits (``_append_pending``): the chain's head row, which serialises every
    append, is then locked for the commit alone, not from a transaction's first event to its
    end (on PostgreSQL every auditing transaction queued behind it: bench/README.md)."""
    add_pending(session, [pending(kind, actor, review_id, data)])


def pending(kind: str, actor: str, review_id: str | None, data: dict[str, Any]) -> tuple:
    """An event as it waits to join the chain (``record``; ``batch.Batch.record``)."""
    return kind, actor, review_id, utcnow(), json.loads(json.dumps(data, default=str))


def add_pending(session: Session, events: list[tuple]) -> None:
    """Events made by ``pending``, added to the caller's transaction as ``record`` adds one."""
    session.info.setdefault(_PENDING, []).extend(events)
    session.info[IN_TURN] = True


@orm_events.listens_for(Session, "before_commit")
def _append_pending(session: Session) -> None:
    """Append the transaction's events in order, on its connection.

    The chain's head is usually the one this process moved last: the events are chained
    onto that and appended only if it still is the head (``_APPEND``); otherwise the head
    is read, locked, and the events chained onto it. A hint that lost a race, or whose
    transaction rolled back, only costs that second try."""
    pending = session.info.pop(_PENDING, None)
    if not pending:
        return
    connection = session.connection()
    key = id(connection.engine.pool)
    append = _APPEND[connection.dialect.name]
    hint = _HEADS.get(key)
    new_hash = append(connection, pending, hint) if hint is not None else None
    if new_hash is None:
        new_hash = append(connection, pending, _locked_head(connection))
        if new_hash is None:  # cannot happen: the head row is locked by this transaction
            raise RuntimeError("the audit chain's head moved while locked")
    _HEADS[key] = new_hash


_HEADS: dict[int, str] = {}
"""Per engine (keyed by its pool, which its execution options share): the head this process
moved last. Only a hint: an append moves the head only if it is still that hash, and a head
that has a hash is the chain's tip."""


def _append_statements(connection, pending: list, prev_hash: str) -> str | None:
    """Chain ``pending`` onto ``prev_hash`` if that is the head, in up to three prepared Core
    statements (SQLite: no round trips to save). The new head, or None (not the head)."""
    events, contents, new_hash = _chain(pending, prev_hash)
    if connection.execute(_MOVE_HEAD_FROM, {"old_hash": prev_hash, "new_hash": new_hash, "added": len(pending)}).rowcount != 1:
        return None
    # One INSERT for all the events (a group commit's submissions bring several), ids in
    # order; a lone row goes as a plain execute, cheaper than a batch of one.
    event_ids = connection.execute(_ADD_EVENTS, _one_or_many(events)).scalars().all()
    rows = [{"event_id": event_id, **content} for event_id, content in zip(event_ids, contents) if content]
    if rows:
        connection.execute(_ADD_CONTENT, _one_or_many(rows))
    return new_hash


# PostgreSQL: the head's move, the events and their content rows in one statement, one
# round trip instead of three for every audited transaction (intake at one request at a
# time, bench/README.md). Raw SQL because it is one data-modifying CTE over JSON
# recordsets, which SQLAlchemy Core would build and compile anew for each number of
# events. The events get their ids in chain order (ORDER BY n) while the head row is
# locked, as the three statements did; the content rows find their event by its hash.
# JSON values travel as their text: PostgreSQL refuses a \u0000 escape in a recordset's
# JSON, which a json column stores (a reviewer's comment may carry one).
# ``with_rows``: more CTEs in the same statement (``append_with``), each of which writes
# only ``WHERE {IF_APPENDED}``; ``only_if``: conditions on which the head moves at all.
IF_APPENDED = "EXISTS (SELECT FROM head)"


@lru_cache(maxsize=64)
def _append_sql(with_rows: tuple[str, ...] = (), only_if: tuple[str, ...] = ()) -> TextClause:
    rows = "".join(f"), rows_{n} AS (\n    {body}\n" for n, body in enumerate(with_rows))
    conditions = "".join(f"\n      AND {condition}" for condition in only_if)
    return text(f"""
WITH head AS (
    UPDATE audit_head SET hash = :new_hash, count = count + :added
    WHERE id = 1 AND hash = :old_hash{conditions}
    RETURNING id
{rows}), event AS (
    INSERT INTO audit_events (review_id, at, actor, kind, data, prev_hash, hash)
    SELECT e.review_id, e.at, e.actor, e.kind, CAST(e.data AS json), e.prev_hash, e.hash
    FROM json_to_recordset(CAST(:events AS json))
         AS e(n int, review_id varchar, at timestamptz, actor varchar, kind varchar, data text, prev_hash varchar, hash varchar)
    WHERE {IF_APPENDED}
    ORDER BY e.n
    RETURNING id, hash
), content AS (
    INSERT INTO audit_content (event_id, review_id, salt, content)
    SELECT event.id, c.review_id, c.salt, CAST(c.content AS json)
    FROM event JOIN json_to_recordset(CAST(:contents AS json))
                    AS c(hash varchar, review_id varchar, salt varchar, content text) USING (hash)
)
SELECT count(*) FROM head
""")


def _append_one_statement(connection, pending: list, prev_hash: str, with_rows: tuple[str, ...] = (),
                          only_if: tuple[str, ...] = (), parameters: dict[str, Any] | None = None) -> str | None:
    events, contents, new_hash = _chain(pending, prev_hash)
    rows = [{**event, "n": n, "at": event["at"].isoformat(), "data": json.dumps(event["data"])} for n, event in enumerate(events)]
    content_rows = [{**content, "hash": event["hash"], "content": json.dumps(content["content"])}
                    for event, content in zip(events, contents) if content]
    moved = connection.execute(_append_sql(with_rows, only_if), {
        **(parameters or {}), "old_hash": prev_hash, "new_hash": new_hash, "added": len(pending),
        "events": json.dumps(rows, separators=(",", ":")), "contents": json.dumps(content_rows, separators=(",", ":")),
    }).scalar()
    return new_hash if moved else None


def append_with(connection, pending: list, with_rows: tuple[str, ...], only_if: tuple[str, ...],
                parameters: dict[str, Any]) -> bool:
    """PostgreSQL, in one statement on an AUTOCOMMIT ``connection``: append ``pending`` (made
    by ``pending``) to the chain and run the CTEs ``with_rows`` (their ``parameters``), if
    the head is still where this process moved it last and every condition ``only_if``
    holds. False, and nothing written, if not (or if this process has not appended yet):
    then write them in a transaction (``add_pending``), which reads and locks the head.

    The caller holds its process's turn (``Database.short_write(turn=True)``), and the
    statement holds the chain's head: nothing in it may wait for another transaction of
    this process, which may be waiting for that turn (``batch.Batch.claim``)."""
    key = id(connection.engine.pool)
    hint = _HEADS.get(key)
    new_hash = _append_one_statement(connection, pending, hint, with_rows, only_if, parameters) if hint is not None else None
    if new_hash is None:
        return False
    _HEADS[key] = new_hash
    return True


_APPEND = {"sqlite": _append_statements, "postgresql": _append_one_statement}


def _locked_head(connection) -> str:
    head = connection.execute(_READ_HEAD).first()
    if head is None:
        try:
            with connection.begin_nested():  # two first events at once: one inserts, the other waits
                connection.execute(insert(_HEAD), {"id": 1, "hash": GENESIS, "count": 0})
        except IntegrityError:
            pass
        head = connection.execute(_READ_HEAD).one()
    return head.hash


def _chain(pending: list, prev_hash: str) -> tuple[list[dict[str, Any]], list[dict[str, Any] | None], str]:
    """The pending events' rows chained onto ``prev_hash``, their content rows, the new head."""
    events, contents = [], []
    for kind, actor, review_id, at, data in pending:
        data = dict(data)
        content = {key: data.pop(key) for key in sorted(data) if key in CONTENT_KEYS}
        salt = secrets.token_hex(16)
        if content:
            data["content_sha256"] = content_digest(salt, content)
        digest = event_hash(prev_hash, review_id=review_id, at=at.isoformat(), actor=actor, kind=kind, data=data)
        events.append({"review_id": review_id, "at": at, "actor": actor, "kind": kind, "data": data,
                       "prev_hash": prev_hash, "hash": digest})
        contents.append({"review_id": review_id, "salt": salt, "content": content} if content else None)
        prev_hash = digest
    return events, contents, prev_hash


def _one_or_many(rows: list[dict[str, Any]]) -> dict[str, Any] | list[dict[str, Any]]:
    return rows[0] if len(rows) == 1 else rows


@orm_events.listens_for(Session, "after_rollback")
def _drop_pending(session: Session) -> None:
    session.info.pop(_PENDING, None)


def as_dict(event: AuditEvent, content: AuditContent | None) -> dict[str, Any]:
    """An event as the API and the export show it: its data with its content merged back
    (or ``"content": "purged"`` once retention removed it)."""
    data = dict(event.data or {})
    if "content_sha256" in data:
        if content is not None:
            data.update(content.content)
        else:
            data["content"] = "purged"
    return {"id": event.id, "review_id": event.review_id, "at": event.at.isoformat(), "actor": event.actor,
            "kind": event.kind, "data": data, "prev_hash": event.prev_hash, "hash": event.hash}


def with_content(session: Session, events: list[AuditEvent]) -> list[dict[str, Any]]:
    ids = [e.id for e in events if "content_sha256" in (e.data or {})]
    contents = {c.event_id: c for c in session.execute(select(AuditContent).where(AuditContent.event_id.in_(ids))).scalars()} if ids else {}
    return [as_dict(e, contents.get(e.id)) for e in events]


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
    purged = {r for (r,) in session.execute(select(AuditEvent.review_id).where(AuditEvent.kind == "review.purged"))}
    contents = {c.event_id: c for c in session.execute(select(AuditContent)).scalars()}
    for event in _events(session):
        if event.prev_hash != prev:
            return Verification(False, checked, f"event {event.id}: chain broken (a row before it was changed, removed or moved)")
        expected = event_hash(
            prev, review_id=event.review_id, at=event.at.isoformat(), actor=event.actor, kind=event.kind, data=event.data
        )
        if expected != event.hash:
            return Verification(False, checked, f"event {event.id}: content does not match its hash (edited)")
        sealed = (event.data or {}).get("content_sha256")
        content = contents.pop(event.id, None)
        if sealed and content is None and event.review_id not in purged:
            return Verification(False, checked, f"event {event.id}: its content was removed without a purge")
        if content is not None and (not sealed or content_digest(content.salt, content.content) != sealed):
            return Verification(False, checked, f"event {event.id}: its content does not match its digest (edited)")
        prev = event.hash
        checked += 1
    head = session.get(AuditHead, 1)
    if head is not None and (head.hash != prev or head.count != checked):
        return Verification(False, checked, "the newest events are missing (head does not match)")
    return Verification(True, checked)
