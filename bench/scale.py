"""4. Scale: memory per open review, and lookup / list / webhook-matching latency as the
store grows.

Memory: a bridge process (``hitl-bridge serve`` with its worker) is warmed up with some
reviews, then takes ``n`` more through the API until every one has its ticket and is open;
memory per open review is that process's RSS growth divided by ``n``. The bridge keeps no
per-review state in memory (the database holds it), so this measures what caches and
allocator arenas grow by; the database's own bytes per review are reported beside it.

Latency: rows are bulk-inserted with SQLAlchemy Core (10% open, the rest approved and
delivered; each with its ticket, mapping snapshot and jobs, as the bridge writes them), then
the bridge's own use cases run in-process against that store: ``reviews.get``,
``reviews.list_reviews`` (newest open, and a page deep in the middle by cursor) and
``inbox.accept`` for an open review's ticket (the match, the dedupe check and the
inserts it makes).
"""

from __future__ import annotations

import random
import time
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import func, insert, select

from bridge import inbox, outbox, reviews
from bridge.db import utcnow
from bridge.migrate import upgrade
from bridge.models import Job, Review
from bridge.runtime import Runtime
from bridge.schemas import ReviewRequest, Status
from connectors import TicketEvent

from .common import (
    AGENT_KEY,
    Callbacks,
    Database,
    Upstream,
    bridge_settings,
    closed_loop,
    count_rows,
    review_body,
    say,
    start_bridge,
    summary,
    wait_until,
)

import json

CHUNK = 5000


def memory(workdir: Path, upstream: Upstream, callbacks: Callbacks, *, server_url: str | None, reviews_n: int) -> dict[str, Any]:
    db = Database(workdir, "memory", server_url)
    upstream.configure(latency_ms=0, rate_limit_per_second=0)
    bridge = start_bridge(bridge_settings(db.url, upstream, workdir, worker={"concurrency": 8}), workdir, worker=True,
                          name="memory-bridge")
    auth = {"authorization": f"Bearer {AGENT_KEY}"}
    warm = max(20, reviews_n // 10)
    try:
        def submit(start: int, n: int, total: int) -> None:
            closed_loop(bridge.url, "/v1/reviews", [review_body(callbacks.url, start + i) for i in range(n)],
                        concurrency=8, max_seconds=600, headers=auth)
            if not wait_until(lambda: count_rows(db.url, "SELECT count(*) FROM reviews WHERE status = 'open'") >= total,
                              timeout=60 + n / 5, interval=0.5):
                raise RuntimeError("the bridge did not open every review in time")

        submit(0, warm, warm)
        time.sleep(1)
        before, size_before = bridge.rss_bytes(), db.size_bytes() or 0
        submit(warm, reviews_n, warm + reviews_n)
        time.sleep(1)
        after, size_after = bridge.rss_bytes(), db.size_bytes() or 0
    finally:
        bridge.stop()
        db.drop()
    per_review = (after - before) / reviews_n
    return {"open_reviews": reviews_n, "warmup_reviews": warm, "rss_before_mib": round(before / 2**20, 1),
            "rss_after_mib": round(after / 2**20, 1), "rss_bytes_per_open_review": round(per_review, 1),
            "database_bytes_per_review": round((size_after - size_before) / reviews_n, 1),
            "goal": "< 2048 bytes per open review", "met": per_review < 2048}


def _rows(start: int, n: int, *, snapshot: dict, request: dict, decision: dict) -> tuple[list[dict], list[dict]]:
    now = utcnow()
    reviews_rows, jobs_rows = [], []
    for i in range(start, start + n):
        review_id = f"rev_{(1_700_000_000_000 + i * 10):012x}{i:016x}"
        is_open = i % 10 == 0
        created = now - timedelta(seconds=(10**7 - i))
        reviews_rows.append({
            "id": review_id, "created_at": created, "updated_at": created, "status": "open" if is_open else "approved",
            "title": f"Refund $750 to order A-{i}", "request": request, "api_key_name": "agent", "idempotency_key": None,
            "request_hash": "0" * 64, "route_name": "jira-queue", "route_mode": "enforce", "route_reason": "matched",
            "mapping_name": "jira_review", "mapping_version": snapshot.get("version"), "mapping_snapshot": snapshot,
            "ticket_connection": "jira", "ticket_key": str(100000 + i), "ticket_display": f"HITL-{i}",
            "ticket_url": f"http://jira.invalid/browse/HITL-{i}",
            "decision": None if is_open else decision, "decided_at": None if is_open else created,
            "delivered_at": None if is_open else created,
        })
        jobs_rows.append({"review_id": review_id, "kind": outbox.CREATE, "dedupe_key": f"{outbox.CREATE}:{review_id}",
                          "state": "done", "attempts": 1, "max_attempts": 12, "run_at": created, "payload": {},
                          "created_at": created, "finished_at": created})
        if not is_open:
            jobs_rows.append({"review_id": review_id, "kind": outbox.DELIVER, "dedupe_key": f"{outbox.DELIVER}:{review_id}",
                              "state": "done", "attempts": 1, "max_attempts": 12, "run_at": created, "payload": {},
                              "created_at": created, "finished_at": created})
    return reviews_rows, jobs_rows


def _fill(rt: Runtime, upto: int, template: dict[str, Any]) -> float:
    started = time.perf_counter()
    with rt.db.engine.begin() as connection:
        have = connection.execute(select(func.count()).select_from(Review)).scalar() or 0
    for start in range(have, upto, CHUNK):
        review_rows, job_rows = _rows(start, min(CHUNK, upto - start), **template)
        with rt.db.engine.begin() as connection:
            connection.execute(insert(Review), review_rows)
            connection.execute(insert(Job), job_rows)
    if rt.db.engine.dialect.name == "postgresql":
        # Planner statistics, as autovacuum keeps them for a table that grew to this size;
        # straight after a bulk insert there are none, and a page of open reviews took
        # 34 ms at 100,000 stored against 7 ms with them (the plan, not the size).
        with rt.db.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
            connection.exec_driver_sql("ANALYZE")
    return time.perf_counter() - started


def _timed(fn, n: int) -> dict[str, Any]:
    times = []
    for _ in range(n):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return summary(times)


def latency(workdir: Path, upstream: Upstream, callbacks: Callbacks, *, server_url: str | None, sizes: list[int],
            samples: int) -> dict[str, Any]:
    db = Database(workdir, "scale", server_url)
    upgrade(db.url)
    settings = bridge_settings(db.url, upstream, workdir).model_copy(update={"run_worker": False})
    rt = Runtime(settings)
    request = ReviewRequest.model_validate(json.loads(review_body(callbacks.url, 0))).model_dump(mode="json")
    template = {
        "snapshot": rt.mapping("jira_review").model_dump(mode="json"),
        "request": request,
        "decision": {"decisions": [{"type": "approve"}], "reviewer": {"id": "alice", "name": "Alice", "email": "alice@example.com"},
                     "decided_at": utcnow().isoformat(), "ticket": None, "source": "ticket", "reason": None},
    }
    rng = random.Random(11)
    rows = []
    try:
        for size in sorted(sizes):
            filled = _fill(rt, size, template)
            say(f"scale: {size} reviews stored ({filled:.1f} s to insert)")
            open_ids = [i for i in range(0, size, 10)]

            def review_id(i: int) -> str:
                return f"rev_{(1_700_000_000_000 + i * 10):012x}{i:016x}"

            middle = reviews._encode_cursor(review_id(size // 2))
            row = {
                "stored_reviews": size, "insert_seconds": round(filled, 1),
                "lookup": _timed(lambda: reviews.get(rt, review_id(rng.randrange(size))), samples),
                "list_open_newest": _timed(lambda: reviews.list_reviews(rt, status=Status.open, route=None, limit=50, cursor=None),
                                           max(10, samples // 4)),
                "list_page_middle": _timed(lambda: reviews.list_reviews(rt, status=None, route=None, limit=50, cursor=middle),
                                           max(10, samples // 4)),
                "webhook_match": _timed(lambda: inbox.accept(rt, "jira", [TicketEvent(
                    event_id=str(uuid.uuid4()), ticket_key=str(100000 + rng.choice(open_ids)), kind="status_changed")]), samples),
            }
            rows.append(row)
            say(f"scale {size}: lookup p50 {row['lookup']['p50_ms']} ms, list p50 {row['list_open_newest']['p50_ms']} ms, "
                f"webhook match p50 {row['webhook_match']['p50_ms']} ms")
    finally:
        rt.close()
        db.drop()
    return {"rows": rows, "goal": "flat from the smallest to the largest store (indexes)"}
