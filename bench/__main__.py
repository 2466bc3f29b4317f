"""``python -m bench``: run every benchmark section and write ``bench/results/<date>.json``
and ``<date>.md``. See bench/README.md for what each section measures and how.

    .venv/bin/python -m bench                       # SQLite, default sizes (a few minutes)
    .venv/bin/python -m bench --full                # adds 1M stored reviews (slow on SQLite)
    .venv/bin/python -m bench --database-url postgresql://postgres@127.0.0.1:5432/postgres
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

from . import intake, scale, upstream, webhooks
from .common import ROOT, Callbacks, say, start_upstream
from .report import markdown

SECTIONS = ("intake", "webhooks", "upstream", "scale")


def _ints(text: str) -> list[int]:
    return [int(float(part)) for part in text.split(",") if part.strip()]


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench", description="hitl-bridge benchmarks (loopback only, bounded).")
    p.add_argument("--database-url", default=os.environ.get("HITL_BENCH_DATABASE_URL"),
                   help="A PostgreSQL server (any database on it; the bench creates and drops its own) to run every "
                        "section on as well as SQLite. Also HITL_BENCH_DATABASE_URL. Not given: SQLite only.")
    p.add_argument("--only", default=",".join(SECTIONS), help=f"Comma-separated sections: {', '.join(SECTIONS)}.")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results", help="Where the .json and .md go.")
    p.add_argument("--concurrency", type=_ints, default=[1, 16, 64], help="Intake concurrencies.")
    p.add_argument("--intake-seconds", type=float, default=5.0, help="Time cap of each intake measurement.")
    p.add_argument("--intake-requests", type=int, default=3000, help="Request cap of each intake measurement.")
    p.add_argument("--rates", type=_ints, default=[50, 200], help="Webhooks per second.")
    p.add_argument("--latencies", type=_ints, default=[0, 100], help="Emulator latencies (ms) for the webhook section.")
    p.add_argument("--webhook-seconds", type=float, default=4.0, help="How long each webhook rate is held.")
    p.add_argument("--worker-concurrency", type=int, default=32, help="Worker threads for the webhook section.")
    p.add_argument("--webhook-layouts", type=_ints, default=None,
                   help="Webhook section layouts: 0 = worker in the API process, N = API process + N worker processes. "
                        "Default: 0 on SQLite (its one writer across processes makes acks wait on SQLite's busy handler), "
                        "0,1 on PostgreSQL.")
    p.add_argument("--slow-latency", type=int, default=300, help="Emulator latency (ms) against the naive pattern.")
    p.add_argument("--rate-limit", type=float, default=10.0, help="Emulator rate limit (calls/s) against the naive pattern.")
    p.add_argument("--naive-reviews", type=int, default=120, help="Reviews per design and upstream speed.")
    p.add_argument("--sizes", type=_ints, default=[10_000, 100_000], help="Stored reviews for the scale section.")
    p.add_argument("--full", action="store_true", help="Scale up to 1,000,000 stored reviews (slow on SQLite).")
    p.add_argument("--samples", type=int, default=200, help="Calls per scale measurement.")
    p.add_argument("--memory-reviews", type=int, default=2000, help="Open reviews for memory per review.")
    p.add_argument("--tiny", action="store_true", help="Tiny sizes, for the smoke test: checks the bench runs, measures nothing.")
    args = p.parse_args(argv)
    if args.full and 1_000_000 not in args.sizes:
        args.sizes = sorted(set(args.sizes) | {1_000_000})
    if args.tiny:
        args.concurrency, args.intake_seconds, args.intake_requests = [1, 4], 1.0, 40
        args.rates, args.latencies, args.webhook_seconds, args.worker_concurrency = [20], [0], 0.5, 4
        args.slow_latency, args.rate_limit, args.naive_reviews = 50, 50.0, 6
        args.sizes, args.samples, args.memory_reviews = [300, 600], 5, 20
    args.only = [s for s in args.only.split(",") if s]
    return args


def run_backend(args: argparse.Namespace, server_url: str | None, workdir: Path) -> dict:
    results: dict = {}
    up = start_upstream()
    callbacks = Callbacks().start()
    try:
        if "intake" in args.only:
            results["intake"] = intake.run(workdir, up, callbacks, server_url=server_url, concurrencies=args.concurrency,
                                           seconds=args.intake_seconds, max_requests=args.intake_requests)
        if "webhooks" in args.only:
            results["webhooks"] = webhooks.run(workdir, up, callbacks, server_url=server_url, rates=args.rates,
                                               latencies_ms=args.latencies, seconds=args.webhook_seconds,
                                               worker_concurrency=args.worker_concurrency,
                                               layouts=args.webhook_layouts or ([0, 1] if server_url else [0]))
        if "upstream" in args.only:
            results["upstream"] = upstream.run(workdir, up, callbacks, server_url=server_url, reviews=args.naive_reviews,
                                               concurrency=16, latency_ms=args.slow_latency, rate_limit=args.rate_limit)
        if "scale" in args.only:
            results["memory"] = scale.memory(workdir, up, callbacks, server_url=server_url, reviews_n=args.memory_reviews)
            results["scale"] = scale.latency(workdir, up, callbacks, server_url=server_url, sizes=args.sizes,
                                             samples=args.samples)
    finally:
        callbacks.stop()
        up.stop()
    return results


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    started = time.monotonic()
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    dirty = bool(subprocess.run(["git", "status", "--porcelain", "bridge"], cwd=ROOT, capture_output=True, text=True).stdout.strip())
    report = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "commit": commit + ("+uncommitted" if dirty else ""),
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "database_url"},
        "backends": {},
    }
    backends = [("sqlite", None)] + ([("postgresql", args.database_url)] if args.database_url else [])
    with tempfile.TemporaryDirectory(prefix="hitl-bench-") as tmp:
        for name, server_url in backends:
            say(f"--- {name} ---")
            workdir = Path(tmp) / name
            workdir.mkdir()
            report["backends"][name] = run_backend(args, server_url, workdir)
    report["seconds"] = round(time.monotonic() - started, 1)
    args.out.mkdir(parents=True, exist_ok=True)
    stem = datetime.now().strftime("%Y-%m-%d")
    (args.out / f"{stem}.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.out / f"{stem}.md").write_text(markdown(report))
    say(f"wrote {args.out / (stem + '.json')} and .md in {report['seconds']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
