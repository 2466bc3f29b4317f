"""Two versions side by side during a deploy (docs/operations.md): migrations only add, a
bridge serves on a database a newer version has migrated, and instances starting at once
migrate one at a time."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest
from sqlalchemy import create_engine, inspect, text
from sqlalchemy.pool import NullPool

from bridge.db import normalize_url
from bridge.migrate import MIGRATIONS, alembic_config, upgrade
from harness import Bridge
from procs import Proc

VERSIONS = MIGRATIONS / "versions"
FUTURE = "9000_from_a_newer_version"

# Operations that take away something the previous version still reads or writes.
REMOVING = {"drop_table", "drop_column", "rename_table", "alter_column", "drop_constraint", "drop_index",
            "drop_table_comment", "drop_column_comment"}
ALLOWED = "# contract:"  # on the line of (or the line above) a removal that is meant: the contract step


def removals(source: str) -> list[str]:
    """What ``upgrade()`` in a migration's source does that an older version could trip on:
    removing or changing a table, column, index or constraint, raw SQL that drops, renames
    or alters, or a new NOT NULL column without a server default (the older version's
    inserts leave it out). Calls marked with ``# contract: <why>`` are allowed."""
    lines = source.splitlines()
    tree = ast.parse(source)
    upgrade_fn = next((n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "upgrade"), None)
    if upgrade_fn is None:
        return []
    found = []
    for node in ast.walk(upgrade_fn):
        if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
            continue
        marked = any(ALLOWED in lines[i] for i in (node.lineno - 1, node.lineno - 2) if 0 <= i < len(lines))
        name = node.func.attr
        problem = None
        if name in REMOVING:
            problem = name
        elif name == "execute" and node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str):
            sql = " ".join(node.args[0].value.upper().split())
            if any(word in sql for word in ("DROP ", "RENAME ", "ALTER COLUMN", "TRUNCATE ", "DELETE ")):
                problem = f"execute({node.args[0].value.strip()[:60]!r})"
        elif name == "execute":
            problem = "execute(<not a plain SQL string>)"
        elif name == "add_column":
            column = next((a for a in node.args if isinstance(a, ast.Call) and getattr(a.func, "attr", "") == "Column"), None)
            keywords = {k.arg: k.value for k in column.keywords} if column is not None else {}
            not_null = isinstance(keywords.get("nullable"), ast.Constant) and keywords["nullable"].value is False
            if not_null and "server_default" not in keywords:
                problem = "add_column(NOT NULL without server_default)"
        if problem and not marked:
            found.append((node.lineno, problem))
    return [f"line {lineno}: {problem}" for lineno, problem in sorted(found)]


def test_the_checker_finds_what_would_break_the_previous_version():
    bad = '''
def upgrade():
    op.drop_column("reviews", "title")
    with op.batch_alter_table("jobs") as batch_op:
        batch_op.alter_column("kind", new_column_name="job_kind")
    op.add_column("reviews", sa.Column("tenant", sa.String(), nullable=False))
    op.execute("ALTER TABLE reviews RENAME COLUMN title TO name")
    # contract: 0007 stopped reading legacy_note; every instance runs 0007 or later
    op.drop_column("reviews", "legacy_note")
    op.add_column("reviews", sa.Column("region", sa.String(), nullable=False, server_default="eu"))
    op.create_table("later", sa.Column("id", sa.Integer(), primary_key=True))

def downgrade():
    op.drop_table("later")
'''
    found = removals(bad)
    assert [f.split(": ", 1)[1] for f in found] == [
        "drop_column", "alter_column", "add_column(NOT NULL without server_default)",
        "execute('ALTER TABLE reviews RENAME COLUMN title TO name')",
    ]


@pytest.mark.parametrize("path", sorted(VERSIONS.glob("[0-9]*.py")), ids=lambda p: p.name)
def test_every_migration_only_adds(path: Path):
    """Expand/contract: a migration may not take away what the version before it uses,
    since that version keeps serving while the new one rolls out. A removal is a later,
    separate contract step, marked ``# contract: <why it is safe now>``."""
    assert removals(path.read_text()) == []


def _revision(url: str) -> list[str]:
    engine = create_engine(normalize_url(url), poolclass=NullPool)
    try:
        with engine.connect() as connection:
            return [row[0] for row in connection.execute(text("SELECT version_num FROM alembic_version"))]
    finally:
        engine.dispose()


def _head() -> str:
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()


def expand_as_a_newer_version(url: str) -> None:
    """What a newer version's expand migration leaves: more tables and nullable columns,
    and a revision this code has never heard of."""
    engine = create_engine(normalize_url(url), poolclass=NullPool)
    try:
        with engine.begin() as connection:
            connection.execute(text("ALTER TABLE reviews ADD COLUMN tenant VARCHAR(64)"))
            connection.execute(text("ALTER TABLE jobs ADD COLUMN priority INTEGER DEFAULT 0"))
            connection.execute(text("CREATE TABLE tenants (id VARCHAR(64) PRIMARY KEY, name VARCHAR(200))"))
            connection.execute(text("UPDATE alembic_version SET version_num = :rev"), {"rev": FUTURE})
    finally:
        engine.dispose()


@pytest.fixture
def bridge(tmp_path):
    b = Bridge(tmp_path)
    yield b
    b.stop()


def test_a_bridge_keeps_serving_a_database_that_a_newer_version_has_migrated(bridge):
    """The old version during a deploy: it must not fail on the unknown revision (Alembic's
    "Can't locate revision"), must not migrate, and must go on working end to end."""
    assert upgrade(bridge.database_url) is True
    expand_as_a_newer_version(bridge.database_url)

    bridge.start_process()  # ``hitl-bridge serve``: migrates on start by default
    review = bridge.submit()
    key = bridge.wait_ticket(review["id"])["ticket"]["key"]
    bridge.act("jira", key, "approve")
    assert bridge.verified_callback(review["id"])["status"] == "approved"
    bridge.wait_review(review["id"], lambda r: r["delivery"]["state"] == "delivered", what="delivery")

    assert _revision(bridge.database_url) == [FUTURE]  # left as the newer version put it
    engine = create_engine(normalize_url(bridge.database_url), poolclass=NullPool)
    try:
        assert "tenant" in {c["name"] for c in inspect(engine).get_columns("reviews")}
    finally:
        engine.dispose()
    logged = [json.loads(line) for line in (bridge.tmp_path / "bridge.log").read_text().splitlines() if line.startswith("{")]
    skipped = [line for line in logged if line.get("message") == "migrations.skipped"]
    assert skipped and skipped[0]["level"] == "WARNING"
    assert skipped[0]["database_revision"] == FUTURE and skipped[0]["code_revision"] == _head()


def test_instances_starting_at_once_on_an_empty_database_migrate_once_and_all_work(bridge):
    """An API instance and a worker start together on a database nobody has migrated yet
    (PostgreSQL under HITL_TEST_DATABASE_URL, else SQLite): both migrate on start, one
    waits for the other, and the pair then handles a review end to end."""
    config = bridge.config_file()
    api = Proc(config, bridge.tmp_path / "api.log", worker=False)
    worker = Proc(config, bridge.tmp_path / "worker.log", kind="worker")
    try:
        worker.start(wait=False)
        api.start(wait=False)
        api.wait_ready(timeout=60)
        assert worker.running, (bridge.tmp_path / "worker.log").read_text()[-2000:]
        bridge._wire(api.url)
        review = bridge.submit()
        key = bridge.wait_ticket(review["id"])["ticket"]["key"]  # the worker process made it
        bridge.act("jira", key, "approve")
        assert bridge.verified_callback(review["id"])["status"] == "approved"
        assert _revision(bridge.database_url) == [_head()]
        assert worker.running and api.running
    finally:
        worker.kill()
        api.kill()
