"""3. Against the naive pattern: a slow, rate-limited ticket system.

The emulator answers every call in ``latency`` ms and allows ``rate_limit`` calls per
second (a token bucket; past it, 429 with Retry-After). The same reviews go to

* the bridge (``hitl-bridge serve``, its worker in-process at its default settings): intake
  answers once the review is stored; the worker creates the ticket;
* the naive app (``bench/serve.py naive``): the ticket is created inside the request
  handler with the same connector and mapping, as the seed did.

Intake is measured with the emulator at 0 ms and at ``latency`` ms for both, in one run;
the bridge takes the two in the order 0, slow, slow, 0 (each turn with its own reviews, its
tickets all made before the next), and each speed's intake is its two turns together. With
one turn each (0 then slow, 60 reviews, ~0.2 s of intake a turn) the drift between turns was
counted as the upstream's doing: on PostgreSQL 0.49-0.56 with slow second, 1.0-1.07 with
slow first. Time to ticket, tickets/s and 429s are the first turn's. Time to ticket is from
the agent's request being sent to the emulator storing the ticket.
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path
from typing import Any

from .common import (
    AGENT_KEY,
    Callbacks,
    Database,
    LoadResult,
    Upstream,
    bridge_settings,
    closed_loop,
    review_body,
    say,
    start_app,
    start_bridge,
    summary,
    wait_until,
    write_config,
)


def _phase(upstream: Upstream, url: str, bodies: list[bytes], *, concurrency: int, headers: dict[str, str],
           wait_tickets: bool, rate_limit: float) -> tuple[dict[str, Any], LoadResult]:
    since = time.monotonic()
    result = closed_loop(url, "/v1/reviews", bodies, concurrency=concurrency, max_seconds=120, headers=headers, keep=True)
    accepted_at = {}
    for sent, answer in zip(result.sent_at, result.responses):
        if answer and "id" in answer:
            accepted_at[answer["id"]] = sent
    created = upstream.emulator.created_at
    if wait_tickets:
        budget = 30 + 3 * len(accepted_at) / max(rate_limit / 2, 1)
        wait_until(lambda: all(i in created for i in accepted_at), timeout=budget, interval=0.2)
    to_ticket = [created[i] - sent for i, sent in accepted_at.items() if i in created]
    times = sorted(created[i] for i in accepted_at if i in created)
    statuses = upstream.timing.statuses(since)
    upstream_calls = sum(statuses.values())
    window = (max(s.finished for s in upstream.timing.served if s.started >= since) - since) if upstream_calls else 0
    return {
        "intake": result.row(),
        "time_to_ticket": summary(to_ticket),
        "tickets": len(to_ticket),
        "tickets_missing": len(accepted_at) - len(to_ticket),
        "tickets_per_s": round((len(times) - 1) / (times[-1] - times[0]), 2) if len(times) > 1 and times[-1] > times[0] else None,
        "upstream_calls": upstream_calls,
        "upstream_calls_per_s": round(upstream_calls / window, 2) if window else None,
        "upstream_429": statuses.get(429, 0),
    }, result


def _merged(turns: list[LoadResult]) -> dict[str, Any]:
    """One intake row for several turns at the same upstream speed."""
    return LoadResult(latencies=[x for t in turns for x in t.latencies], statuses=sum((t.statuses for t in turns), Counter()),
                      elapsed=sum(t.elapsed for t in turns), sent_at=[], responses=[]).row()


def run(workdir: Path, upstream: Upstream, callbacks: Callbacks, *, server_url: str | None, reviews: int,
        concurrency: int, latency_ms: int, rate_limit: float) -> dict[str, Any]:
    bridge_db = Database(workdir, "upstream_bridge", server_url)
    naive_db = Database(workdir, "upstream_naive", server_url)
    upstream.configure(latency_ms=0, rate_limit_per_second=0)
    settings = bridge_settings(bridge_db.url, upstream, workdir)
    naive = start_app("naive", workdir, database_url=naive_db.url, config=write_config(settings, workdir / "naive.yaml"))
    # The bridge's connection is told the vendor's documented limit (rate_limit_per_second),
    # as an admin would configure it; the naive design has no such setting.
    paced = settings.connections["jira"].model_copy(update={"rate_limit_per_second": rate_limit})
    settings = settings.model_copy(update={"connections": {"jira": paced}})
    bridge = start_bridge(settings, workdir, worker=True, name="upstream-bridge")
    auth = {"authorization": f"Bearer {AGENT_KEY}"}
    counter = iter(range(10**9))

    def bodies() -> list[bytes]:
        return [review_body(callbacks.url, next(counter)) for _ in range(reviews)]

    out: dict[str, Any] = {"latency_ms": latency_ms, "rate_limit_per_s": rate_limit, "reviews": reviews,
                           "concurrency": concurrency}
    try:
        for name, server, headers in (("bridge", bridge, auth), ("naive", naive, {})):
            closed_loop(server.url, "/v1/reviews", bodies()[:20], concurrency=4, max_seconds=30, headers=headers)  # warm-up
        time.sleep(2)
        for name, server, headers in (("bridge", bridge, auth), ("naive", naive, {})):
            speeds = (0, latency_ms, latency_ms, 0) if name == "bridge" else (0, latency_ms)
            phases: dict[int, dict[str, Any]] = {}
            turns: dict[int, list[LoadResult]] = {0: [], latency_ms: []}
            for speed in speeds:
                upstream.configure(latency_ms=speed, rate_limit_per_second=rate_limit if speed else 0)
                upstream.emulator.__dict__.pop("_bucket", None)  # a full bucket for each design
                phase, result = _phase(upstream, server.url, bodies(), concurrency=concurrency, headers=headers,
                                       wait_tickets=name == "bridge", rate_limit=rate_limit if speed else 1000)
                phases.setdefault(speed, phase)
                turns[speed].append(result)
            for speed, phase in phases.items():
                phase.update(intake=_merged(turns[speed]), intake_turns=len(turns[speed]))
            fast, slow = phases[0], phases[latency_ms]
            out[name] = {"upstream_0ms": fast, f"upstream_{latency_ms}ms": slow}
            say(f"naive-vs-bridge {name}: intake {fast['intake']['ok_per_s']}/s at 0 ms, {slow['intake']['ok_per_s']}/s at "
                f"{latency_ms} ms; {slow['tickets_per_s']} tickets/s, {slow['upstream_429']} x 429")
            upstream.configure(latency_ms=0, rate_limit_per_second=0)
            time.sleep(2)
    finally:
        bridge.stop()
        naive.stop()
        upstream.configure(latency_ms=0, rate_limit_per_second=0)
        bridge_db.drop()
        naive_db.drop()
    slow_key = f"upstream_{latency_ms}ms"
    fast_b, slow_b = out["bridge"]["upstream_0ms"]["intake"]["ok_per_s"], out["bridge"][slow_key]["intake"]["ok_per_s"]
    out["bridge_intake_slow_over_fast"] = round(slow_b / fast_b, 3) if fast_b else None
    out["goals"] = "bridge intake independent of upstream latency; tickets at the upstream's rate limit, no 429 storm"
    return out
