from __future__ import annotations

from pathlib import Path

import pytest

from helpers import Recorder

ROOT = Path(__file__).resolve().parents[1]

SHARED_CONTRACTS = ROOT.parent / "shared" / "contracts"


@pytest.fixture
def db(tmp_path):
    """A migrated, empty database (SQLite, or PostgreSQL when ``HITL_TEST_DATABASE_URL``
    names a server) and a ``Database`` on it."""
    from bridge.db import Database
    from bridge.migrate import upgrade
    from harness import TestDatabase

    database = TestDatabase(tmp_path)
    upgrade(database.url)
    handle = Database(database.url)
    yield handle
    handle.dispose()
    database.drop()


@pytest.fixture
def idle_bridge(tmp_path):
    """A bridge's settings on a migrated test database, nothing started: for calling the
    bridge's use cases in-process (``rt``)."""
    from bridge.migrate import upgrade
    from harness import Bridge

    bridge = Bridge(tmp_path)
    upgrade(bridge.database_url)
    yield bridge
    bridge.stop()


@pytest.fixture
def rt(idle_bridge):
    """A ``Runtime`` on ``idle_bridge``'s settings (no worker, no server)."""
    from bridge.runtime import Runtime

    runtime = Runtime(idle_bridge.settings)
    yield runtime
    runtime.close()


@pytest.fixture
def recorder():
    rec = Recorder().start()
    yield rec
    rec.stop()


@pytest.fixture
def contracts() -> Path:
    """The vendors' documented payloads, beside the repo; tests that read them skip without it."""
    if not SHARED_CONTRACTS.is_dir():
        pytest.skip("../shared/contracts is not beside this checkout")
    return SHARED_CONTRACTS
