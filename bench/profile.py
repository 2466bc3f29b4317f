"""Profile the bridge's intake or webhook path with py-spy while the bench loads it.

    .venv/bin/python -m bench.profile intake   [--seconds 8] [--concurrency 16]
    .venv/bin/python -m bench.profile webhooks [--seconds 8] [--rate 100] [--gil]

Writes py-spy's collapsed stacks, a speedscope JSON and a plain-text summary (the functions
with the most busy samples, inclusive and self) under bench/results/profiles/. Needs py-spy
(``pip install py-spy``) and the right to ptrace a child process (root here)."""

from __future__ import annotations

import argparse
import collections
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from .common import (AGENT_KEY, ROOT, Callbacks, Database, bridge_settings, closed_loop, count_rows, open_loop,
                     review_body, say, start_bridge, start_upstream, wait_until)
from .webhooks import _approve, _open_reviews


def _record(pid: int, seconds: float, out: Path, fmt: str, gil: bool) -> subprocess.Popen:
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    return subprocess.Popen([spy, "record", "--pid", str(pid), "--duration", str(int(seconds)), "--rate", "250",
                             "--format", fmt, "--output", str(out), "--nonblocking", "--threads", *(["--gil"] if gil else [])],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def summarize(raw: Path, top: int = 45) -> str:
    """Inclusive and self sample shares per function from py-spy's collapsed stacks,
    leaving out threads that were idle (waiting on a lock, an event or a selector)."""
    inclusive: collections.Counter = collections.Counter()
    own: collections.Counter = collections.Counter()
    total = 0
    idle = ("wait (threading.py", "select (selectors.py", "_worker (concurrent/futures/thread.py", "run_forever", "_run_once (asyncio")
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = [f for f in stack.split(";") if f and not f.startswith(("thread ", "process "))]
        if not frames or any(mark in frames[-1] for mark in idle) or "wait (threading.py" in ";".join(frames[-2:]):
            continue
        total += n
        for frame in set(frames):
            inclusive[frame] += n
        own[frames[-1]] += n
    total = total or 1
    lines = [f"busy samples: {total}", "", "inclusive:"]
    lines += [f"{100 * c / total:5.1f}%  {f}" for f, c in inclusive.most_common(top)]
    lines += ["", "self:"] + [f"{100 * c / total:5.1f}%  {f}" for f, c in own.most_common(top)]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.profile")
    parser.add_argument("path", choices=["intake", "webhooks"])
    parser.add_argument("--seconds", type=float, default=8)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--rate", type=int, default=100)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "profiles")
    parser.add_argument("--database-url", default=None, help="A PostgreSQL server to profile on (default: SQLite).")
    parser.add_argument("--gil", action="store_true",
                        help="Sample only the thread holding the GIL: where the process's Python CPU goes.")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    up = start_upstream()
    callbacks = Callbacks().start()
    raw, speedscope = args.out / f"{args.path}.collapsed.txt", args.out / f"{args.path}.speedscope.json"
    with tempfile.TemporaryDirectory(prefix="hitl-profile-") as tmp:
        workdir = Path(tmp)
        db = Database(workdir, "profile", args.database_url)
        bridge = start_bridge(bridge_settings(db.url, up, workdir, worker={"concurrency": 16}), workdir,
                              worker=args.path == "webhooks", name="profile-bridge")
        auth = {"authorization": f"Bearer {AGENT_KEY}"}
        try:
            if args.path == "intake":
                bodies = [review_body(callbacks.url, n) for n in range(20000)]
                closed_loop(bridge.url, "/v1/reviews", bodies[:200], concurrency=4, max_seconds=10, headers=auth)
                spies = [_record(bridge.pid, args.seconds, path, fmt, args.gil) for path, fmt in ((raw, "raw"), (speedscope, "speedscope"))]
                closed_loop(bridge.url, "/v1/reviews", bodies[200:], concurrency=args.concurrency,
                            max_seconds=args.seconds, headers=auth)
            else:
                n = int(args.rate * args.seconds)
                closed_loop(bridge.url, "/v1/reviews", [review_body(callbacks.url, i) for i in range(n)], concurrency=16,
                            max_seconds=300, headers=auth)
                wait_until(lambda: count_rows(db.url, "SELECT count(*) FROM reviews WHERE status = 'open'") >= n, timeout=300)
                items = _approve(up, _open_reviews(db.url, n))
                spies = [_record(bridge.pid, args.seconds, path, fmt, args.gil) for path, fmt in ((raw, "raw"), (speedscope, "speedscope"))]
                open_loop(f"{bridge.url}/v1/webhooks/jira", items, rate=args.rate)
            for spy in spies:
                spy.wait(timeout=args.seconds + 60)
        finally:
            bridge.stop()
            callbacks.stop()
            up.stop()
    text = summarize(raw)
    (args.out / f"{args.path}.summary.txt").write_text(text)
    print(text)
    say(f"wrote {raw}, {speedscope} and {args.path}.summary.txt")
    return 0


if __name__ == "__main__":
    sys.exit(main())
