"""Engine and sessions. SQLite by default (WAL, immediate transactions), PostgreSQL for
several instances; nothing here or in the models is SQLite-only."""

from __future__ import annotations

import logging
import select
import sqlite3
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from datetime import datetime, timezone
from typing import Any, TypeVar

from psycopg.pq import ConnStatus
from sqlalchemy import DateTime, Row, Table, bindparam, create_engine, event
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DisconnectionError, OperationalError
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.types import TypeDecorator

log = logging.getLogger("bridge.db")
BUSY_TIMEOUT_MS = 30_000
"""How long a SQLite connection waits for another process's write lock (the event loop's
writes do not wait at all: Database.writing_now)."""


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class UTCDateTime(TypeDecorator):
    """Timezone-aware UTC on the way in and out, whatever the backend stores."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value, dialect):
        if value is not None and value.tzinfo is None:
            raise ValueError("naive datetime given to the database")
        return value.astimezone(timezone.utc) if value is not None else None

    def process_result_value(self, value, dialect):
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=timezone.utc)
        return value


def normalize_url(url: str) -> str:
    """``postgresql://`` and ``postgres://`` mean psycopg 3 here (SQLAlchemy's default driver
    for them is psycopg2, which the bridge does not ship)."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix):]
    return url


def admin(server_url: str, statement: str, **parameters: Any) -> list:
    """``statement`` on the server ``server_url`` reaches, outside any transaction and on a
    connection of its own (CREATE DATABASE and the like; tests end sessions with it); its
    rows, if it returns any."""
    from sqlalchemy import text
    from sqlalchemy.pool import NullPool

    engine = create_engine(normalize_url(server_url), isolation_level="AUTOCOMMIT", poolclass=NullPool)
    try:
        with engine.connect() as connection:
            result = connection.execute(text(statement), parameters)
            return result.all() if result.returns_rows else []
    finally:
        engine.dispose()


def create_database(server_url: str, name: str) -> str:
    """Create database ``name`` on the PostgreSQL server ``server_url`` reaches (any database
    on it will do) and return its URL. For throwaway databases: tests and benchmarks."""
    from sqlalchemy.engine import make_url

    admin(server_url, f'CREATE DATABASE "{name}"')
    return make_url(normalize_url(server_url)).set(database=name).render_as_string(hide_password=False)


def drop_database(server_url: str, name: str) -> None:
    admin(server_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def is_postgres(url: str) -> bool:
    return url.startswith(("postgresql", "postgres:"))


def make_engine(url: str) -> Engine:
    url = normalize_url(url)
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": BUSY_TIMEOUT_MS / 1000})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection, record):
            # Let SQLAlchemy, not pysqlite, decide when transactions begin (see below).
            dbapi_connection.isolation_level = None
            cursor = dbapi_connection.cursor()
            cursor.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
            # Set WAL only when it is not yet: setting it can fail at once with "database is
            # locked", busy timeout or not, while other connections write (seen in the tests).
            if cursor.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
                cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.close()

        @event.listens_for(engine, "begin")
        def _begin_immediate(connection):
            # Take the write lock up front: two writers never deadlock upgrading read locks.
            # Reads (Database.read) begin deferred: in WAL mode they never wait for a writer.
            if connection.get_execution_options().get("hitl_read_only"):
                connection.exec_driver_sql("BEGIN")
            elif _NOW.on:
                _begin_without_waiting(connection)
            else:
                connection.exec_driver_sql("BEGIN IMMEDIATE")

        return engine
    engine = create_engine(url, pool_size=10, max_overflow=20)
    event.listen(engine, "checkout", _drop_if_hung_up)
    return engine


def _drop_if_hung_up(dbapi_connection, record, proxy) -> None:
    """A pooled PostgreSQL connection the server has hung up on is replaced before use.

    In place of SQLAlchemy's ``pool_pre_ping``, which sends a query on every checkout: a
    round trip per transaction, ~1 in 6 of the worker's round trips on PostgreSQL (bench/).
    A server that ends a session (restart, shutdown, failover, ``pg_terminate_backend``)
    says so on the socket and closes it, so an idle connection whose socket has something to
    read, or that libpq knows is bad, is gone: SQLAlchemy then connects anew
    (``DisconnectionError`` on checkout), as a failed ping would. What a ping finds and this
    cannot, a peer that vanished without a word, a ping would wait out too. Something to
    read on a healthy idle connection (a setting the server reports, after a reload) costs
    one needless reconnect. Tested in tests/test_reconnect.py."""
    if dbapi_connection.closed or dbapi_connection.pgconn.status != ConnStatus.OK:
        raise DisconnectionError("the connection is closed")
    poller = select.poll()
    poller.register(dbapi_connection.pgconn.socket, select.POLLIN | select.POLLPRI)
    if poller.poll(0):
        raise DisconnectionError("the server hung up on this idle connection")


def _begin_without_waiting(connection) -> None:
    """BEGIN IMMEDIATE that fails at once with WriterBusy where another process (a CLI
    command, a worker of its own) holds SQLite's write lock, instead of waiting in SQLite's
    busy handler: the caller is the event loop, which must not wait (Database.writing_now)."""
    driver = connection.connection.driver_connection
    driver.execute("PRAGMA busy_timeout=0")
    try:
        connection.exec_driver_sql("BEGIN IMMEDIATE")
    except OperationalError as exc:
        if getattr(exc.orig, "sqlite_errorcode", 0) & 0xFF == sqlite3.SQLITE_BUSY:  # and its extended codes
            raise WriterBusy() from None
        raise
    finally:
        driver.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")


class WriterBusy(Exception):
    """Another process holds SQLite's write lock: do the write where waiting is harmless."""


def _rare_autocheckpoint(dbapi_connection, record, proxy) -> None:
    if not record.info.get("hitl_rare_autocheckpoint"):  # once per connection, pooled ones too
        dbapi_connection.execute(f"PRAGMA wal_autocheckpoint={SAFETY_NET_PAGES}")
        record.info["hitl_rare_autocheckpoint"] = True


SAFETY_NET_PAGES = 4000
"""With checkpoints in the background, a commit still checkpoints once the log passes this
many pages (16 MiB; SQLite's default is 1,000): only if the background falls that far behind."""


class _Now(threading.local):
    on = False  # this thread is inside Database.writing_now


_NOW = _Now()
_SQLITE_WRITERS: dict[str, threading.RLock] = {}
T = TypeVar("T")


class _Work:
    """One caller's part of a group commit, and how it came out."""

    __slots__ = ("work", "run", "order", "done", "value", "error")

    def __init__(self, work: Any, run: Callable[["Database", list], list] | None, order: str):
        self.work, self.run, self.order, self.done, self.value, self.error = work, run, order, False, None, None

    def outcome(self) -> Any:
        if self.error is not None:
            raise self.error
        return self.value


class Database:
    def __init__(self, url: str):
        self.url = url
        self.engine = make_engine(url)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        self._readers = sessionmaker(self.engine.execution_options(hitl_read_only=True), expire_on_commit=False)
        # One statement needs no transaction of its own on PostgreSQL: there, BEGIN and the
        # ROLLBACK that ends a read are two round trips of three (Database.fetch: 669 -> 509
        # us of CPU and 967 -> 634 us a look at a review, in-process A/B).
        fetching = {"isolation_level": "AUTOCOMMIT"} if self.engine.dialect.name == "postgresql" else {}
        self._fetching = self.engine.execution_options(hitl_read_only=True, **fetching)
        self._autocommit = self.engine.execution_options(isolation_level="AUTOCOMMIT")
        # SQLite has one writer at a time and every transaction here takes the write lock
        # (BEGIN IMMEDIATE). Threads of this process queue for it on a lock, which hands it
        # over at once; SQLite's busy handler, which other processes still meet, sleeps up
        # to 100 ms between tries (seconds of p99 under concurrent intake, measured in bench/).
        self._writer = _SQLITE_WRITERS.setdefault(url, threading.RLock()) if self.engine.dialect.name == "sqlite" else None
        self._leader = self._writer or threading.Lock()
        self._waiting: list[_Work] = []
        self._waiting_lock = threading.Lock()
        # PostgreSQL: this process's transactions that end in an IN_TURN commit take turns
        # (SQLite's writer lock already makes them). See ``transaction``.
        self._turn = threading.Lock() if self._writer is None else None

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        """One unit of work: commits on success, rolls back on any exception.

        A transaction marked ``IN_TURN`` (one that appends to the audit chain, whose head
        row every append locks until commit) flushes, then waits for this process's turn to
        commit. Appends of one process then never race each other for the head: each finds
        the head where the last one left it and moves it in one statement. Racing, nearly
        every append of 8 threads found the head moved, read it again under lock and
        appended a second time: twice the CPU, half the throughput of one thread (bench/).
        Only the append and COMMIT happen in turn (nothing that waits for another thread)."""
        lock = self._writer or nullcontext()
        with lock, self._sessions() as session:
            session.begin()
            try:
                yield session
                if self._turn is not None and session.info.get(IN_TURN):
                    session.flush()
                    with self._turn:
                        session.commit()
                else:
                    session.commit()
            except BaseException:
                session.rollback()
                raise

    @contextmanager
    def short_write(self, *, turn: bool = False) -> Iterator[Connection]:
        """A connection for writes that need no transaction together: on PostgreSQL each
        statement commits by itself (AUTOCOMMIT: a claim or a job's end is one round trip,
        was three with BEGIN and COMMIT, bench/); on SQLite the block is one write
        transaction, as any other (its write lock, BEGIN IMMEDIATE). ``turn``: the block
        appends to the audit chain, so on PostgreSQL it runs in the process's turn with the
        audited transactions (see ``transaction``)."""
        if self._writer is None:
            with self._autocommit.connect() as connection, (self._turn if turn else nullcontext()):
                yield connection
            return
        with self._writer, self.engine.begin() as connection:
            yield connection

    @contextmanager
    def writing_now(self) -> Iterator[bool]:
        """True if this thread can write at once, without waiting for anyone: SQLite, and no
        thread of this process holds the write lock (taken here without waiting, and held for
        the block). The block's transactions then never wait either: a group commit runs its
        own part alone, and another process's hold on SQLite's lock raises WriterBusy at
        once. The API's event loop uses it to do a short write itself, instead of handing it
        to a thread and back, a hop that costs more CPU than the write (bench/README.md).
        False on PostgreSQL (network round trips) or when the lock is taken: write in a
        thread, where waiting holds up nobody else."""
        if self._writer is None or not self._writer.acquire(blocking=False):
            yield False
            return
        _NOW.on = True
        try:
            yield True
        finally:
            _NOW.on = False
            self._writer.release()

    @property
    def one_writer(self) -> bool:
        """Every write transaction waits for the one write lock (SQLite)."""
        return self._writer is not None

    def grouped(self, work: Callable[[Session], T] | Any, run: Callable[["Database", list], list] | None = None,
                *, order: str = "") -> T:
        """``work(session)`` in a write transaction it may share with other threads' grouped
        work (a group commit): whoever gets the write lock runs everything waiting for it in
        one transaction. A request still commits before it answers, and the transaction's
        fixed costs (begin, the audit chain's head, commit, the write lock's handoff) are paid
        once per group instead of once per request (intake under concurrency, bench/). If the
        group fails, each part runs again alone, so one part's error (a 409, a 429) is its own.
        ``work`` must be safe to run twice and may not open a transaction of its own.

        ``run``: the group is written by ``run(database, works)`` instead, which returns each
        work's value in order or raises (``batch.write``: one statement on PostgreSQL). A
        group holds only works given the same ``run``.

        ``order``: a group's transaction runs its parts sorted by it. Parts that lock rows
        by a key (a rate-limited API key's window, an Idempotency-Key's advisory lock) give
        the key, so that two instances' groups take the same locks in the same order:
        in arrival order, two groups with the same two keys could each hold one and wait for
        the other until PostgreSQL broke the deadlock a second later."""
        mine = _Work(work, run, order)
        if _NOW.on:  # writing_now: alone, so no other thread's part meets WriterBusy
            self._commit([mine])
            return mine.outcome()
        with self._waiting_lock:
            self._waiting.append(mine)
        with self._leader:
            if not mine.done:
                with self._waiting_lock:
                    group = [part for part in self._waiting if part.run is run]
                    self._waiting = [part for part in self._waiting if part.run is not run]
                if mine not in group:  # taken by a leader that was interrupted before it finished
                    group.append(mine)
                self._commit(group)
        return mine.outcome()

    def _commit(self, group: list[_Work]) -> None:
        try:
            run = group[0].run
            if run is not None:
                values = run(self, [part.work for part in group])
            else:
                group.sort(key=lambda part: part.order)
                with self.transaction() as session:
                    values = [part.work(session) for part in group]
        except Exception as exc:
            if len(group) > 1:
                for part in group:
                    self._commit([part])
                return
            values, group[0].error = [None], exc
        for part, value in zip(group, values):
            part.value, part.done = value, True

    def checkpoint_in_background(self, *, every_seconds: float = 0.1) -> Callable[[], None]:
        """Copy SQLite's write-ahead log back into the database from a thread of its own
        (``PRAGMA wal_checkpoint(PASSIVE)``, which waits for no writer) instead of in
        whichever commit takes the log past 1,000 pages: about every 50th submission paid
        ~12 ms for it, on the event loop when the loop wrote that one (``writing_now``).
        Returns what stops it; nothing to do on PostgreSQL. Only the serving processes
        start it: any other process checkpoints as SQLite does by default."""
        path = self.engine.url.database
        if self._writer is None or not path or path == ":memory:":
            return lambda: None
        event.listen(self.engine, "checkout", _rare_autocheckpoint)
        stop = threading.Event()

        def checkpoint(connection: sqlite3.Connection) -> None:
            try:
                connection.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
            except sqlite3.Error as exc:  # e.g. the file is gone: try again next round
                log.warning("sqlite.checkpoint_failed", extra={"error": str(exc)})

        def run() -> None:
            connection = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            try:
                while not stop.wait(every_seconds):
                    checkpoint(connection)
                checkpoint(connection)  # what the last commits wrote
            finally:
                connection.close()

        thread = threading.Thread(target=run, name="sqlite-checkpoints", daemon=True)
        thread.start()

        def stop_checkpoints() -> None:
            stop.set()
            thread.join(10)
            event.remove(self.engine, "checkout", _rare_autocheckpoint)

        return stop_checkpoints

    @contextmanager
    def read(self) -> Iterator[Session]:
        """A read-only unit of work: a consistent snapshot that queues behind no writer
        (requests that only look, such as GET and the long-poll). Never commits: closing the
        session ends the snapshot, and what was loaded stays readable."""
        with self._readers() as session:
            yield session

    def fetch(self, model: type, key: Any) -> Row | None:
        """The row of ``model`` with primary key ``key``, or None: a read-only row with the
        model's columns as attributes. One statement, queued behind no writer (the worker's
        look at a review before each job). A Core row, not an ORM object: the ORM's load was
        half of this call's CPU (in-process: 268 -> 103 us on SQLite, 480 -> 250 on PostgreSQL)."""
        statement = _FETCH.get(model)
        if statement is None:
            table = model.__table__
            (primary_key,) = table.primary_key.columns
            statement = _FETCH[model] = table.select().where(primary_key == bindparam("key"))
        with self._fetching.connect() as connection:
            return connection.execute(statement, {"key": key}).first()

    def dispose(self) -> None:
        self.engine.dispose()


IN_TURN = "hitl_commit_in_turn"
"""``session.info`` key: this transaction commits in its process's turn (Database.transaction)."""

_FETCH: dict[type, object] = {}
_INSERTS = {"sqlite": sqlite_insert, "postgresql": postgresql_insert}
_ONCE: dict[tuple[str, str], object] = {}


def insert_once(session: Session, table: Table, values: dict) -> object | None:
    """``INSERT ... ON CONFLICT DO NOTHING RETURNING <primary key>`` on the session's
    connection: the new row's key, or None when a unique key was taken already. One
    prepared statement per table, run after flushing the session's pending rows (which it
    may reference); no lookup, savepoint or ORM flush of its own (a hot path: bench/)."""
    dialect = session.get_bind().dialect.name
    statement = _ONCE.get((dialect, table.name))
    if statement is None:
        statement = _INSERTS[dialect](table).on_conflict_do_nothing().returning(*table.primary_key.columns)
        _ONCE[(dialect, table.name)] = statement
    session.flush()
    return session.connection().execute(statement, values).scalar()
