"""Run Alembic migrations from code (``hitl-bridge serve`` does it on start by default).

Deploys run two versions side by side for a while (docs/operations.md): the new one
migrates, the old one keeps serving. Migrations only add (expand), so the old code's
tables and columns are all still there; this module makes the rest safe:

* a database at a revision this code does not know (a newer version has migrated it) is
  left alone: a warning, no migration, and the bridge serves on;
* instances starting at once migrate one at a time (a PostgreSQL advisory lock, a file lock
  on a SQLite database), and the later ones find nothing left to do.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

from .db import normalize_url

log = logging.getLogger("bridge.migrate")

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
MIGRATION_LOCK = 0x68697474  # the PostgreSQL advisory lock key (migrations/env.py takes it too)


def alembic_config(url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.set_main_option("sqlalchemy.url", normalize_url(url).replace("%", "%%"))
    return config


def upgrade(url: str, revision: str = "head") -> bool:
    """Migrate to ``revision``; False (and nothing done) when the database is already at a
    revision newer than this code's migrations."""
    config = alembic_config(url)
    script = ScriptDirectory.from_config(config)
    engine = create_engine(normalize_url(url), poolclass=NullPool)
    try:
        with _sqlite_lock(url), engine.begin() as connection:
            if connection.dialect.name == "postgresql":
                connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK})
            current = MigrationContext.configure(connection).get_current_heads()
            known = {rev.revision for rev in script.walk_revisions()}
            unknown = [rev for rev in current if rev not in known]
            if unknown:
                log.warning("migrations.skipped", extra={
                    "reason": "the database was migrated by a newer version of hitl-bridge",
                    "database_revision": ",".join(unknown), "code_revision": script.get_current_head(),
                })
                return False
            config.attributes["connection"] = connection  # env.py migrates in this transaction
            command.upgrade(config, revision)
        return True
    finally:
        engine.dispose()


@contextmanager
def _sqlite_lock(url: str) -> Iterator[None]:
    """Hold an exclusive ``flock`` on the SQLite database file while migrating. SQLite's own
    locks (POSIX record locks) are separate, so this never blocks the database itself."""
    parsed = make_url(normalize_url(url))
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        yield
        return
    try:
        import fcntl
    except ImportError:  # not on POSIX: one instance per SQLite file is the rule there anyway
        yield
        return
    with open(parsed.database, "ab") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
