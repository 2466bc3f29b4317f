"""1. Intake: ``POST /v1/reviews`` accepted per second next to a bare FastAPI app that does
one insert of the same row, same server settings, same database settings, same run.

The bridge runs as ``hitl-bridge serve --no-worker`` (the API process; its worker would
otherwise compete for the same two cores while the emulator answers it in this process),
and once more with its worker in-process at one concurrency, for the record."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from .common import (AGENT_KEY, Callbacks, Database, LoadResult, Upstream, bridge_settings, closed_loop, cpu_seconds,
                     review_body, say, start_app, start_bridge)

WARMUP = 100
KEYED = " + Idempotency-Key"
TURNS = 3
"""Baseline and bridge take turns at each concurrency (each turn a third of the time and
requests), so the machine's drift over a run hits both alike."""


def run(workdir: Path, upstream: Upstream, callbacks: Callbacks, *, server_url: str | None, concurrencies: list[int],
        seconds: float, max_requests: int) -> dict[str, Any]:
    base_db = Database(workdir, "intake_baseline", server_url)
    bridge_db = Database(workdir, "intake_bridge", server_url)
    worker_db = Database(workdir, "intake_bridge_worker", server_url)
    baseline = start_app("baseline", workdir, database_url=base_db.url)
    bridge = start_bridge(bridge_settings(bridge_db.url, upstream, workdir), workdir, worker=False, name="intake-bridge")
    auth = {"authorization": f"Bearer {AGENT_KEY}"}
    counter = iter(range(10**9))
    # Each concurrency without Idempotency-Key, then the middle one with a key on every
    # request, as bridge.client sends (the baseline stores the key in the same column).
    pairs = [(c, "") for c in concurrencies] + [(16 if 16 in concurrencies else concurrencies[-1], KEYED)]

    def measured(server, *, concurrency: int, headers: dict[str, str], turns: int = 1,
                 keyed: bool = False) -> tuple[LoadResult, float]:
        """One turn of ``turns``: a closed loop with its share of the time and requests, and
        the server process's CPU seconds during it."""
        before = cpu_seconds(server.pid)
        result = closed_loop(server.url, "/v1/reviews", bodies(max_requests // turns), concurrency=concurrency,
                             max_seconds=seconds / turns, headers=headers, keyed=keyed)
        return result, cpu_seconds(server.pid) - before

    def row(concurrency: int, turns: list[tuple[LoadResult, float]]) -> dict[str, Any]:
        """The turns' results merged into one table row."""
        results, cpu = [result for result, _ in turns], sum(cpu_s for _, cpu_s in turns)
        merged = LoadResult(latencies=[x for r in results for x in r.latencies], statuses=sum((r.statuses for r in results), Counter()),
                            elapsed=sum(r.elapsed for r in results), sent_at=[], responses=[])
        cpu_ms = cpu * 1000 / max(1, len(merged.latencies))
        return {"concurrency": concurrency, **merged.row(), "server_cpu_ms_per_request": round(cpu_ms, 2)}

    def bodies(n: int) -> list[bytes]:
        return [review_body(callbacks.url, next(counter)) for _ in range(n)]

    rows: list[dict[str, Any]] = []
    try:
        ceiling = closed_loop(baseline.url, "/noop", bodies(min(max_requests, 3000)), concurrency=16, max_seconds=seconds)
        rows.append({"system": "ceiling (no-op POST)", "concurrency": 16, **ceiling.row()})
        for name, server, headers in (("baseline", baseline, {}), ("bridge", bridge, auth)):
            closed_loop(server.url, "/v1/reviews", bodies(WARMUP), concurrency=4, max_seconds=seconds, headers=headers)
        for concurrency, suffix in pairs:
            turns: dict[str, list] = {"baseline": [], "bridge": []}
            for _ in range(TURNS):
                for name, server, headers in (("baseline", baseline, {}), ("bridge", bridge, auth)):
                    turns[name].append(measured(server, concurrency=concurrency, headers=headers, turns=TURNS, keyed=bool(suffix)))
            for name in turns:
                rows.append({"system": name + suffix, **row(concurrency, turns[name])})
                say(f"intake {name} c={concurrency}: {rows[-1]['ok_per_s']}/s p99 {rows[-1]['p99_ms']} ms, "
                    f"{rows[-1]['server_cpu_ms_per_request']} ms CPU a request")
    finally:
        baseline.stop()
        bridge.stop()
    with_worker = start_bridge(bridge_settings(worker_db.url, upstream, workdir), workdir, worker=True, name="intake-bridge-worker")
    try:
        concurrency = 16 if 16 in concurrencies else concurrencies[-1]
        closed_loop(with_worker.url, "/v1/reviews", bodies(WARMUP), concurrency=4, max_seconds=seconds, headers=auth)
        rows.append({"system": "bridge + worker in-process", **row(concurrency, [measured(with_worker, concurrency=concurrency, headers=auth)])})
        say(f"intake bridge+worker c={concurrency}: {rows[-1]['ok_per_s']}/s")
    finally:
        with_worker.stop()
        for db in (base_db, bridge_db, worker_db):
            db.drop()
    ratios = {}
    for concurrency, suffix in pairs:
        base = next(r for r in rows if r["system"] == "baseline" + suffix and r["concurrency"] == concurrency)
        ours = next(r for r in rows if r["system"] == "bridge" + suffix and r["concurrency"] == concurrency)
        ratios[f"{concurrency}{suffix}"] = round(ours["ok_per_s"] / base["ok_per_s"], 3) if base["ok_per_s"] else None
    return {"rows": rows, "bridge_over_baseline": ratios, "goal": "bridge >= 0.70 x baseline throughput",
            "met": all(r is not None and r >= 0.7 for r in ratios.values())}
