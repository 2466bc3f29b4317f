"""PostgreSQL: when the server ends the bridge's sessions (a restart, a failover,
``pg_terminate_backend``), the next request and the worker's next job run on new
connections: nothing fails, nothing is lost."""

from __future__ import annotations

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.pool import NullPool

from bridge.db import normalize_url
from harness import Bridge, TestDatabase

pytestmark = pytest.mark.skipif(not TestDatabase.postgres_configured(),
                                reason="needs a PostgreSQL server (HITL_TEST_DATABASE_URL)")


def end_every_session(database_url: str) -> int:
    """What the server does to its sessions on a restart: ends them (but for this one)."""
    admin = create_engine(normalize_url(database_url), poolclass=NullPool, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as connection:
            return len(connection.execute(text(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )).all())
    finally:
        admin.dispose()


def test_sessions_ended_by_the_server_are_replaced_before_use(tmp_path):
    bridge = Bridge(tmp_path).start()
    try:
        first = bridge.submit()
        bridge.wait_ticket(first["id"])
        for _ in range(3):  # every pooled connection of the API and the worker, each time
            assert end_every_session(bridge.database_url) > 0
            review = bridge.submit()  # answered 201 on a new connection
            assert bridge.review(review["id"])["status"] in {"queued", "open"}
            key = bridge.wait_ticket(review["id"])["ticket"]["key"]  # the worker's jobs too
        bridge.act("jira", key, "approve")
        assert bridge.verified_callback(review["id"])["status"] == "approved"
    finally:
        bridge.stop()
