"""On SQLite a serving bridge copies the write-ahead log back into the database from a
thread of its own (``Database.checkpoint_in_background``), so no commit pays for it, and
the log stays small however much is written."""

from __future__ import annotations

import os
import time

from sqlalchemy import insert

from bridge.db import Database
from bridge.migrate import upgrade
from bridge.models import Review, new_id

PAGE = 4096


def test_the_write_ahead_log_is_checkpointed_in_the_background(tmp_path):
    url = f"sqlite:///{tmp_path / 'bridge.db'}"
    upgrade(url)
    db = Database(url)
    stop = db.checkpoint_in_background(every_seconds=0.05)
    try:
        for _ in range(8):  # ~8 pages a review: ~400 a round, ~3,200 in all
            for _ in range(50):
                with db.transaction() as session:
                    session.connection().execute(insert(Review.__table__).values(
                        id=new_id("rev"), status="queued", title="t", request={"reasoning": "x" * 3000},
                        api_key_name="agent", request_hash="h"))
            time.sleep(0.3)  # the checkpointer's turns
        high_water = os.path.getsize(f"{tmp_path / 'bridge.db'}-wal") // PAGE  # reused from its start, never shrunk
    finally:
        stop()
        db.dispose()
    # No background checkpoint: SQLite checkpoints in the commit that takes the log past 1,000 pages
    # (or, with the background one's safety net but no background, 3,200 pages).
    assert high_water < 900, f"the log grew to {high_water} pages"
