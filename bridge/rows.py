"""A row locked by a transaction, read and changed as attributes, written back in one UPDATE.

The worker records each job's result on the review it locks (``Worker._finish``). Through
the ORM, that row's load (identity map, instrumented attributes) and its flush (a unit of
work for one row) were a sixth of a webhook's CPU (bench/README.md). ``Locked`` is the
row's columns as plain attributes: code that reads and sets a review's attributes works on
it unchanged, and what it set is written with one Core UPDATE of those columns.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Table, bindparam, update
from sqlalchemy.orm import Session

_LOCK: dict[str, Any] = {}
_SAVE: dict[tuple[str, tuple[str, ...]], Any] = {}


class Locked:
    """A locked row's columns as attributes; setting one records the change (``save``).
    A JSON column is changed by setting it, as with the ORM (in-place edits go unseen)."""

    def __init__(self, table: Table, values: dict[str, Any]):
        self.__dict__.update(values)
        self.__dict__["_table"], self.__dict__["_changes"] = table, {}

    def __setattr__(self, name: str, value: Any) -> None:
        if name not in self._table.c:
            raise AttributeError(f"{self._table.name} has no column {name!r}")
        self.__dict__[name] = value
        self._changes[name] = value


def lock(session: Session, model: type, key: Any) -> Locked | None:
    """The row of ``model`` with primary key ``key``, locked until the transaction ends
    (``FOR UPDATE`` on PostgreSQL; SQLite's write lock is the whole database), or None."""
    table: Table = model.__table__  # type: ignore[attr-defined]
    statement = _LOCK.get(table.name)
    if statement is None:
        (primary_key,) = table.primary_key.columns
        statement = _LOCK[table.name] = table.select().where(primary_key == bindparam("key")).with_for_update()
    row = session.connection().execute(statement, {"key": key}).first()
    return None if row is None else Locked(table, dict(row._mapping))


def save(session: Session, row: Locked) -> None:
    """Write the columns set on ``row`` since ``lock`` (nothing if none was), with their
    ``onupdate`` defaults (``updated_at``)."""
    if not row._changes:
        return
    table = row._table
    (primary_key,) = table.primary_key.columns
    columns = tuple(sorted(row._changes))
    statement = _SAVE.get((table.name, columns))
    if statement is None:  # one per set of columns, built once: a job sets the same few each time
        statement = _SAVE[(table.name, columns)] = (
            update(table).where(primary_key == bindparam("_key")).values({name: bindparam(name) for name in columns}))
    session.connection().execute(statement, {"_key": row.__dict__[primary_key.name], **row._changes})
    row._changes.clear()
