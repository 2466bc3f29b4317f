"""2. Webhook to agent: a signed Jira webhook arrives, the agent's callback is received.

Reviews are submitted and their tickets created first (emulator at 0 ms). For each phase,
tickets are moved to Approved inside the emulator, which signs the webhook Jira would send;
the bench keeps those webhooks and posts them itself at a fixed rate (open loop), noting
when each was sent. The callback receiver notes when each review's callback arrived. The
emulator notes how long it spent on every request about each issue (its configured latency
included), so the bridge's own share of a review is

    (callback received - webhook sent) - upstream time on that issue before the callback
                                       - the callback hop (median round trip of a plain POST)
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from .common import (
    AGENT_KEY,
    Callbacks,
    Database,
    Upstream,
    bridge_settings,
    closed_loop,
    count_rows,
    cpu_seconds,
    machine_jiffies,
    open_loop,
    percentile,
    review_body,
    say,
    start_layout,
    summary,
    wait_until,
)


def _open_reviews(database_url: str, limit: int) -> list[tuple[str, str]]:
    from sqlalchemy import create_engine, text
    from sqlalchemy.pool import NullPool

    from bridge.db import normalize_url

    engine = create_engine(normalize_url(database_url), poolclass=NullPool)
    try:
        with engine.connect() as connection:
            rows = connection.execute(
                text("SELECT id, ticket_key FROM reviews WHERE status = 'open' ORDER BY id LIMIT :n"), {"n": limit}
            )
            return [(r[0], r[1]) for r in rows]
    finally:
        engine.dispose()


def _approve(upstream: Upstream, reviews: list[tuple[str, str]]) -> list[tuple[str, bytes, dict[str, str]]]:
    """Approve each review's ticket in the emulator; return the signed webhooks it made."""
    emulator = upstream.emulator
    with emulator.lock:
        emulator.webhooks.captured.clear()
        for _, ticket_key in reviews:
            emulator._transition(emulator.issues[ticket_key], "Approved", "alice")
        captured = list(emulator.webhooks.captured)
        emulator.webhooks.captured.clear()
    review_for_ticket = {ticket_key: review_id for review_id, ticket_key in reviews}
    items = []
    for raw, headers in captured:
        ticket_key = json.loads(raw)["issue"]["id"]
        items.append((review_for_ticket[ticket_key], raw.encode(), headers))
    return items


def run(workdir: Path, upstream: Upstream, callbacks: Callbacks, *, server_url: str | None, rates: list[int],
        latencies_ms: list[int], seconds: float, worker_concurrency: int, layouts: tuple[int, ...] = (0,)) -> dict[str, Any]:
    """Each phase for each layout: ``0`` = the worker in the API process (the default),
    N = ``serve --no-worker`` plus N ``hitl-bridge worker`` processes."""
    hop_p50 = percentile(callbacks.hop_seconds(), 50) or 0.0  # measured once, subtracted in every layout
    rows: list[dict[str, Any]] = []
    for workers in layouts:
        rows += _run_layout(workdir, upstream, callbacks, server_url=server_url, rates=rates, latencies_ms=latencies_ms,
                            seconds=seconds, worker_concurrency=worker_concurrency, workers=workers, hop_p50=hop_p50)
    return {
        "rows": rows, "worker_concurrency": worker_concurrency, "callback_hop_p50_ms": round(hop_p50 * 1000, 2),
        "goals": "ack p99 < 10 ms; bridge share p99 < 20 ms",
        "met": bool(rows) and all((r["ack"]["p99_ms"] or 1e9) < 10 and (r["bridge_share"]["p99_ms"] or 1e9) < 20
                                  and r["callbacks_missing"] == 0 for r in rows),
    }


def layout_name(workers: int) -> str:
    return "worker in-process" if workers == 0 else f"API + {workers} worker process{'es' if workers > 1 else ''}"


def _run_layout(workdir: Path, upstream: Upstream, callbacks: Callbacks, *, server_url: str | None, rates: list[int],
                latencies_ms: list[int], seconds: float, worker_concurrency: int, workers: int,
                hop_p50: float) -> list[dict[str, Any]]:
    db = Database(workdir, f"webhooks_{workers}", server_url)
    upstream.configure(latency_ms=0, rate_limit_per_second=0)
    # A worker in its own process hears of a SQLite job by polling (PostgreSQL wakes it with NOTIFY)
    worker = {"concurrency": worker_concurrency, **({"poll_interval_seconds": 0.02} if workers and not server_url else {})}
    settings = bridge_settings(db.url, upstream, workdir, worker=worker)
    bridge, processes = start_layout(settings, workdir, workers=workers, name=f"webhooks-bridge-{workers}")
    phases = [(latency, rate, max(1, int(rate * seconds))) for latency in latencies_ms for rate in rates]
    needed = sum(n for _, _, n in phases)
    rows: list[dict[str, Any]] = []
    try:
        bodies = [review_body(callbacks.url, n) for n in range(needed)]
        submitted = closed_loop(bridge.url, "/v1/reviews", bodies, concurrency=16, max_seconds=600,
                                headers={"authorization": f"Bearer {AGENT_KEY}"})
        say(f"webhooks ({layout_name(workers)}): submitted {len(submitted.latencies)} reviews; waiting for their tickets")
        ready = wait_until(lambda: count_rows(db.url, "SELECT count(*) FROM reviews WHERE status = 'open'") >= needed,
                           timeout=max(120.0, needed / 5), interval=0.5)
        if not ready:
            raise RuntimeError("the bridge did not open every review's ticket in time")
        time.sleep(1.0)  # let the tickets' follow-up work drain
        pool = _open_reviews(db.url, needed)
        for latency, rate, count in phases:
            batch, pool = pool[:count], pool[count:]
            items = _approve(upstream, batch)
            # Each phase from an idle bridge: a phase past capacity (200/s) leaves its
            # "reached the agent" comments running after the last callback, and the next
            # phase measured them (PostgreSQL, 100 ms at 50/s after 200/s: share p99 846 ms).
            wait_until(lambda: count_rows(db.url, "SELECT count(*) FROM jobs WHERE state IN ('pending', 'running')") == 0,
                       timeout=120, interval=0.2)
            upstream.configure(latency_ms=latency)
            time.sleep(0.5)
            pids = [bridge.pid] + [p.pid for p in processes]
            cpu_before, own_before, machine_before = sum(cpu_seconds(pid) for pid in pids), cpu_seconds(os.getpid()), machine_jiffies()
            since = time.monotonic()
            sent_at, acks, statuses = open_loop(f"{bridge.url}/v1/webhooks/jira", items, rate=rate)
            sent_seconds = time.monotonic() - since
            ids = [review_id for review_id, _ in batch]
            wait_until(lambda: all(i in callbacks.received for i in ids), timeout=60 + count / 10, interval=0.1)
            cpu_ms = (sum(cpu_seconds(pid) for pid in pids) - cpu_before) * 1000 / count  # its comments may still be running
            bench_cpu_ms = (cpu_seconds(os.getpid()) - own_before) * 1000 / count  # sender, emulator, callback receiver
            busy_ticks, all_ticks = (now - before for now, before in zip(machine_jiffies(), machine_before))
            spent = upstream.timing.by_issue(since)
            end_to_end, own = [], []
            for review_id, ticket_key in batch:
                arrived = callbacks.received.get(review_id)
                if arrived is None or review_id not in sent_at:
                    continue
                total = arrived - sent_at[review_id]
                upstream_seconds = sum(s.finished - s.started for s in spent.get(ticket_key, []) if s.finished <= arrived)
                end_to_end.append(total)
                own.append(total - upstream_seconds - hop_p50)
            row = {
                "layout": layout_name(workers), "worker_processes": workers,
                "emulator_latency_ms": latency, "rate_per_s": rate, "webhooks": count, "sent_in_s": round(sent_seconds, 2),
                "ack": summary(acks), "ack_statuses": {str(k): v for k, v in sorted(statuses.items())},
                "webhook_to_callback": summary(end_to_end), "bridge_share": summary(own),
                "callbacks_missing": count - len(end_to_end), "bridge_cpu_ms_per_webhook": round(cpu_ms, 1),
                "bench_cpu_ms_per_webhook": round(bench_cpu_ms, 1),
                "machine_busy_pct": round(100 * busy_ticks / all_ticks, 1) if all_ticks else None,
            }
            rows.append(row)
            say(f"webhooks ({row['layout']}) {latency} ms @ {rate}/s: ack p99 {row['ack']['p99_ms']} ms, to callback p99 "
                f"{row['webhook_to_callback']['p99_ms']} ms, bridge share p99 {row['bridge_share']['p99_ms']} ms, "
                f"missing {row['callbacks_missing']}")
            upstream.configure(latency_ms=0)
            time.sleep(1.0)  # let the follow-up comments of this phase drain before the next
    finally:
        for process in processes:
            process.stop()
        bridge.stop()
        upstream.configure(latency_ms=0)
        db.drop()
    return rows
