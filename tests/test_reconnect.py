"""PostgreSQL: when the server ends the bridge's sessions (a restart, a failover,
``pg_terminate_backend``), the next request and the worker's next job run on new
connections: nothing fails, nothing is lost."""

from __future__ import annotations

import pytest

from bridge.db import admin
from harness import Bridge, TestDatabase

pytestmark = pytest.mark.skipif(not TestDatabase.postgres_configured(),
                                reason="needs a PostgreSQL server (HITL_TEST_DATABASE_URL)")


def end_every_session(database: TestDatabase) -> int:
    """What the server does to a database's sessions on a restart: ends them."""
    return len(admin(database.server_url,
                     "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :name",
                     name=database.name))


def set_connections(database: TestDatabase, *, allowed: bool) -> None:
    admin(database.server_url, f'ALTER DATABASE "{database.name}" ALLOW_CONNECTIONS {str(allowed).lower()}')


def test_sessions_ended_by_the_server_are_replaced_before_use(tmp_path):
    bridge = Bridge(tmp_path).start()
    try:
        first = bridge.submit()
        bridge.wait_ticket(first["id"])
        for _ in range(3):  # every pooled connection of the API and the worker, each time
            assert end_every_session(bridge.database) > 0
            review = bridge.submit()  # answered 201 on a new connection
            assert bridge.review(review["id"])["status"] in {"queued", "open"}
            key = bridge.wait_ticket(review["id"])["ticket"]["key"]  # the worker's jobs too
        bridge.act("jira", key, "approve")
        assert bridge.verified_callback(review["id"])["status"] == "approved"
    finally:
        bridge.stop()


def test_a_database_that_refuses_connections_is_a_503_to_retry(tmp_path):
    """While the database refuses connections, a submission is answered 503 with
    Retry-After in the bridge's error shape (clients retry it); once it is back, the same
    submission is accepted and the review goes on."""
    bridge = Bridge(tmp_path).start()
    try:
        bridge.wait_ticket(bridge.submit()["id"])
        set_connections(bridge.database, allowed=False)
        end_every_session(bridge.database)
        with bridge.client() as client:
            refused = client.post("/v1/reviews", json=bridge.review_body(), headers={"Idempotency-Key": "outage-1"})
        assert refused.status_code == 503, refused.text
        assert refused.headers["retry-after"] == "1"
        assert refused.json()["error"]["code"] == "database_unavailable"
        assert bridge.database.name not in refused.text and "postgres" not in refused.text.lower()
        set_connections(bridge.database, allowed=True)
        with bridge.client() as client:
            accepted = client.post("/v1/reviews", json=bridge.review_body(), headers={"Idempotency-Key": "outage-1"})
        assert accepted.status_code == 201, accepted.text
        bridge.wait_ticket(accepted.json()["id"])
    finally:
        set_connections(bridge.database, allowed=True)
        bridge.stop()

