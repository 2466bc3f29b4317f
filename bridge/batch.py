"""New rows and the audit events that record them, written as one unit: a submission's
review, its jobs and its ``review.submitted`` event.

On PostgreSQL a batch, or a group commit's batches together, is one statement that commits
by itself: the rows go in as JSON recordsets inside the audit chain's append
(``audit.append_with``). One round trip where BEGIN, an INSERT a table, the append and
COMMIT were five; in-process A/B, a submission went from 1.6 to 0.95 ms and from 1.08 to
0.62 ms of CPU (bench/README.md). On SQLite, where a round trip costs nothing, or when another
instance moved the chain's head, or when a claimed key is taken or being written (``claim``),
a batch is applied in a transaction like any other write.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from datetime import datetime
from functools import lru_cache
from typing import Any

from sqlalchemy import JSON, Column, Insert, Table, insert, text
from sqlalchemy.dialects import postgresql
from sqlalchemy.orm import Session

from . import audit, outbox
from .db import Database, insert_once


@dataclass
class Batch:
    rows: list[tuple[Table, dict[str, Any]]] = field(default_factory=list)
    events: list[tuple] = field(default_factory=list)
    claims: list[tuple[Table, dict[str, Any]]] = field(default_factory=list)

    def insert(self, table: Table, values: dict[str, Any]) -> None:
        """A new row (a unique key already taken fails the whole batch: IntegrityError).
        Columns left out take their default, as in ``insert(table)``."""
        for column in table.columns:
            if column.key not in values and column.default is not None:
                default = column.default
                values[column.key] = default.arg if default.is_scalar else default.arg(None)
        self.rows.append((table, values))

    def enqueue(self, review_id: str, kind: str, **options: Any) -> None:
        """A job, as ``outbox.enqueue`` adds one (none if its dedupe key is taken)."""
        self.rows.append((outbox.JOBS, outbox.job_values(review_id, kind, **options)))

    def record(self, kind: str, *, actor: str, review_id: str | None = None, **data: Any) -> None:
        """An audit event, as ``audit.record`` adds one."""
        self.events.append(audit.pending(kind, actor, review_id, data))

    def claim(self, table: Table, **key: Any) -> None:
        """Say that the batch writes the unique ``key`` of ``table`` (a review's API key and
        Idempotency-Key), which a retry may have written or be writing at this moment.

        An INSERT that meets a row with the key, and another transaction writing that row,
        waits for that transaction. The one statement may not wait for a transaction of this
        process, which may be waiting for the turn the statement holds: it writes only if no
        row has the key and it gets the key's advisory lock at once; a transaction takes the
        lock before it writes, waiting if it must. A key with a None in it claims nothing."""
        if all(value is not None for value in key.values()):
            self.claims.append((table, key))

    def apply(self, session: Session) -> None:
        """Write the batch in the caller's transaction, after what the session has pending
        (its claims' locks first, before any of their rows is written)."""
        connection = session.connection()
        if connection.dialect.name == "postgresql":
            for lock in _lock_ids(self.claims):  # in order: two transactions never wait for each other
                connection.execute(_WAIT_FOR_LOCK, {"lock": lock})
        session.flush()
        for table, values in self.rows:
            if table is outbox.JOBS:
                insert_once(session, table, values)
            else:
                connection.execute(_insert(table), values)
        audit.add_pending(session, self.events)


def write(db: Database, batch: Batch) -> None:
    """Write ``batch`` now, in a group commit with the batches other threads are writing."""
    if db.one_writer:
        db.grouped(batch.apply)
    else:
        db.grouped(batch, run=_in_one_statement)


def _in_one_statement(db: Database, batches: list[Batch]) -> list[None]:
    together = Batch([row for b in batches for row in b.rows], [event for b in batches for event in b.events],
                     [claim for b in batches for claim in b.claims])
    rows, taken = _by_table(together.rows), _by_table(together.claims)
    inserts = tuple(_recordset_insert(table, frozenset().union(*values)) for table, values in rows.items())
    only_if = tuple(_not_taken(table, frozenset().union(*keys)) for table, keys in taken.items())
    parameters = {f"rows_{table.name}": _json_rows(table, values) for table, values in rows.items()}
    parameters.update({f"taken_{table.name}": _json_rows(table, keys) for table, keys in taken.items()})
    if taken:
        parameters["locks"] = _json(_lock_ids(together.claims))
        only_if += (_LOCKED_AT_ONCE,)
    with db.short_write(turn=True) as connection:
        written = audit.append_with(connection, together.events, inserts, only_if, parameters)
    if not written:
        with db.transaction() as session:
            together.apply(session)
    return [None] * len(batches)


def _by_table(rows: list[tuple[Table, dict[str, Any]]]) -> dict[Table, list[dict[str, Any]]]:
    grouped: dict[Table, list[dict[str, Any]]] = {}
    for table, values in rows:
        grouped.setdefault(table, []).append(values)
    return grouped


@lru_cache(maxsize=None)
def _insert(table: Table) -> Insert:
    return insert(table)


@lru_cache(maxsize=64)
def _recordset_insert(table: Table, keys: frozenset[str]) -> str:
    """An INSERT of the rows in the JSON array ``:rows_<table>``, for ``audit.append_with``."""
    columns = [column for column in table.columns if column.key in keys]
    names = ", ".join(f'"{column.name}"' for column in columns)
    values = ", ".join(f'CAST(r."{column.name}" AS json)' if _is_json(column) else f'r."{column.name}"' for column in columns)
    conflict = " ON CONFLICT (dedupe_key) DO NOTHING" if table is outbox.JOBS else ""
    return (f'INSERT INTO "{table.name}" ({names}) SELECT {values} FROM {_recordset(columns, f"rows_{table.name}")} '
            f"WHERE {audit.IF_APPENDED}{conflict}")


@lru_cache(maxsize=16)
def _not_taken(table: Table, keys: frozenset[str]) -> str:
    """No stored row of ``table`` has a claimed key (``:taken_<table>``)."""
    columns = [column for column in table.columns if column.key in keys]
    match = " AND ".join(f't."{column.name}" = r."{column.name}"' for column in columns)
    return f'NOT EXISTS (SELECT FROM "{table.name}" AS t JOIN {_recordset(columns, f"taken_{table.name}")} ON {match})'


def _recordset(columns: list[Column], parameter: str) -> str:
    """The rows of the JSON array ``:<parameter>`` with ``columns``' types. A JSON column
    comes as its JSON text (``_json_rows``): PostgreSQL reads a JSON value nested in a
    recordset as text, and refuses a ``\\u0000`` in it, which a JSON column stores."""
    types = ", ".join(f'"{column.name}" ' + ("text" if _is_json(column) else column.type.compile(dialect=_POSTGRESQL))
                      for column in columns)
    return f"json_to_recordset(CAST(:{parameter} AS json)) AS r({types})"


def _json_rows(table: Table, rows: list[dict[str, Any]]) -> str:
    encoded = _json_columns(table)
    return _json([{key: json.dumps(value) if key in encoded else value for key, value in row.items()} for row in rows])


@lru_cache(maxsize=None)
def _json_columns(table: Table) -> frozenset[str]:
    return frozenset(column.key for column in table.columns if _is_json(column))


def _is_json(column: Column) -> bool:
    return isinstance(column.type, JSON)


_POSTGRESQL = postgresql.dialect()
_LOCKED_AT_ONCE = ("(SELECT coalesce(bool_and(pg_try_advisory_xact_lock(CAST(lock AS bigint))), true) "
                   "FROM json_array_elements_text(CAST(:locks AS json)) AS lock)")
_WAIT_FOR_LOCK = text("SELECT pg_advisory_xact_lock(:lock)")


def _lock_ids(claims: list[tuple[Table, dict[str, Any]]]) -> list[int]:
    """The claimed keys' advisory locks, in order: 64 bits of each key's hash (a collision
    only makes two different keys wait for each other)."""
    names = {"\x1f".join([table.name, *(f"{column}={value}" for column, value in sorted(key.items()))]) for table, key in claims}
    return sorted(int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True) for name in names)


def _json(value: Any) -> str:
    return json.dumps(value, default=_json_value, separators=(",", ":"))


def _json_value(value: Any) -> str:
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} is not a column value a batch can write")
