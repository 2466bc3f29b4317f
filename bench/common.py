"""What every benchmark section shares: servers in child processes (so the load generator
never shares a GIL with the server it measures), the Jira emulator and the agent's callback
receiver on loopback in this process, fresh databases, load generators and percentiles.

Every loop here is bounded in count and in time, and every address is on loopback."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx2
import yaml
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from bridge.config import ApiKey, Settings, WorkerSettings, hash_api_key
from bridge.db import create_database, drop_database, normalize_url
from connectors.emulators import JiraEmulator
from connectors.emulators.base import RunningEmulator, RunningServer, serve, start_emulator

ROOT = Path(__file__).resolve().parents[1]
AGENT_KEY = "bench-agent-key-0123456789"
CALLBACK_SECRET = "whsec_" + base64.b64encode(b"callback-secret-for-the-bench").decode()
ROUTES = """
routes:
  - name: jira-queue
    when: "metadata.queue == 'jira'"
    mapping: jira_review
"""


# ----- numbers ---------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100); None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, min(len(ordered), int(round(q / 100 * len(ordered) + 0.5))))
    return ordered[rank - 1]


def ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 2)


def summary(latencies: list[float]) -> dict[str, Any]:
    return {"n": len(latencies), "p50_ms": ms(percentile(latencies, 50)), "p99_ms": ms(percentile(latencies, 99)),
            "max_ms": ms(max(latencies)) if latencies else None}


# ----- databases -------------------------------------------------------------------


class Database:
    """A fresh, empty database: a SQLite file under ``workdir``, or a new database on the
    PostgreSQL server ``server_url`` names (created here, dropped by ``drop()``)."""

    def __init__(self, workdir: Path, name: str, server_url: str | None):
        self.server_url = server_url
        self.name: str | None = None
        if not server_url:
            path = workdir / f"{name}.db"
            for suffix in ("", "-wal", "-shm"):
                Path(f"{path}{suffix}").unlink(missing_ok=True)
            self.url = f"sqlite:///{path}"
            self.path: Path | None = path
            return
        self.path = None
        self.name = f"hitl_bench_{name}_{os.getpid()}_{os.urandom(3).hex()}"
        self.url = create_database(server_url, self.name)

    @property
    def kind(self) -> str:
        return "sqlite" if self.server_url is None else "postgresql"

    def size_bytes(self) -> int | None:
        if self.path is not None:
            return sum(Path(f"{self.path}{s}").stat().st_size for s in ("", "-wal") if Path(f"{self.path}{s}").exists())
        from sqlalchemy import create_engine, text
        from sqlalchemy.pool import NullPool

        engine = create_engine(normalize_url(self.url), poolclass=NullPool)
        try:
            with engine.connect() as connection:
                return int(connection.execute(text("SELECT pg_database_size(current_database())")).scalar())
        finally:
            engine.dispose()

    def drop(self) -> None:
        if self.name is not None:
            drop_database(self.server_url or "", self.name)
            self.name = None


# ----- the upstream: a Jira emulator that also keeps time ----------------------------


class _CaptureSender:
    """Stands in for the emulator's webhook sender: keeps the signed webhooks (raw body and
    headers, exactly as Jira's would be) so the bench sends them itself, at its own rate."""

    def __init__(self):
        self.captured: list[tuple[str, dict[str, str]]] = []
        self.deliveries: list = []

    def send(self, body, headers):
        self.captured.append((body.decode() if isinstance(body, bytes) else body, dict(headers)))
        return None

    def stop(self) -> None:
        pass


class BenchJira(JiraEmulator):
    """The Jira emulator, plus when each review's ticket was created (by its label)."""

    def reset(self) -> None:
        super().reset()
        self.created_at: dict[str, float] = {}

    def _create(self, fields, username, *, notify=True):
        issue = super()._create(fields, username, notify=notify)
        for label in issue["fields"].get("labels") or []:
            if label.startswith("hitl-rev_"):
                self.created_at[label[5:]] = time.monotonic()
        return issue


@dataclass
class Served:
    method: str
    path: str
    status: int
    started: float
    finished: float


class Timing:
    """ASGI middleware around the emulator: how long the upstream spent on each request, as
    the upstream sees it (its configured latency included), and every status it answered."""

    def __init__(self, app):
        self.app = app
        self.served: list[Served] = []

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["path"].startswith("/_emulator"):
            return await self.app(scope, receive, send)
        started = time.monotonic()
        status = 0

        async def keep_status(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        await self.app(scope, receive, keep_status)
        self.served.append(Served(scope["method"], scope["path"], status, started, time.monotonic()))

    def by_issue(self, since: float) -> dict[str, list[Served]]:
        """Requests about each issue (``/issue/{id}...``) that started after ``since``."""
        out: dict[str, list[Served]] = {}
        for s in list(self.served):
            if s.started >= since and "/issue/" in s.path:
                out.setdefault(s.path.split("/issue/", 1)[1].split("/", 1)[0], []).append(s)
        return out

    def statuses(self, since: float) -> Counter:
        return Counter(s.status for s in self.served if s.started >= since)


@dataclass
class Upstream:
    emulator: BenchJira
    running: RunningEmulator
    timing: Timing

    def configure(self, **changes: Any) -> None:
        with self.emulator.lock:
            self.emulator.settings = self.emulator.settings.model_copy(update=changes)

    def stop(self) -> None:
        self.running.stop()


def start_upstream() -> Upstream:
    emulator = BenchJira(webhook_url="http://webhooks.captured.invalid/")  # never posted: captured
    emulator.webhooks.stop()
    emulator.webhooks = _CaptureSender()  # type: ignore[assignment]
    timing = Timing(None)
    original = emulator.build_app

    def build_app():
        timing.app = original()
        return timing

    emulator.build_app = build_app  # type: ignore[method-assign]
    return Upstream(emulator, start_emulator(emulator), timing)


# ----- the agent's callback receiver -------------------------------------------------


@dataclass
class Callbacks:
    """Records when each review's decision callback arrived (monotonic clock, this process)."""

    received: dict[str, float] = field(default_factory=dict)
    server: RunningServer | None = None

    async def _handle(self, request: Request) -> Response:
        body = await request.body()
        arrived = time.monotonic()
        try:
            review_id = json.loads(body).get("review_id")
        except ValueError:
            review_id = None
        if review_id:
            self.received.setdefault(review_id, arrived)
        return Response(b'{"ok":true}', media_type="application/json")

    def start(self) -> "Callbacks":
        self.server = serve(Starlette(routes=[Route("/{path:path}", self._handle, methods=["POST"])]), name="callbacks")
        return self

    @property
    def url(self) -> str:
        assert self.server
        return self.server.url

    def hop_seconds(self, n: int = 50) -> list[float]:
        """Round trips of plain POSTs of a callback-sized body: the callback hop's own cost."""
        body = json.dumps({"type": "probe", "review_id": None, "pad": "x" * 600}).encode()
        out = []
        with httpx2.Client(timeout=10) as client:
            for _ in range(n):
                started = time.perf_counter()
                client.post(f"{self.url}/probe", content=body, headers={"content-type": "application/json"})
                out.append(time.perf_counter() - started)
        return out

    def stop(self) -> None:
        if self.server:
            self.server.stop()


# ----- servers in child processes ----------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def bridge_settings(database_url: str, upstream: Upstream, workdir: Path, *, worker: dict[str, Any] | None = None) -> Settings:
    mappings = workdir / "mappings"
    mappings.mkdir(parents=True, exist_ok=True)
    shutil.copy(ROOT / "mappings" / "jira_review.yaml", mappings)
    (mappings / "routes.yaml").write_text(ROUTES)
    return Settings(
        database_url=database_url,
        mappings_dir=mappings,
        connections={"jira": upstream.running.connection("jira")},
        api_keys=[ApiKey(name="agent", hash=hash_api_key(AGENT_KEY), scopes=["reviews:write", "reviews:read"])],
        callback_secret=CALLBACK_SECRET,
        log_level="WARNING",
        worker=WorkerSettings(**(worker or {})),
    )


def write_config(settings: Settings, path: Path) -> Path:
    data = settings.model_dump(mode="json")
    data["callback_secret"] = CALLBACK_SECRET
    for name, conn in settings.connections.items():
        data["connections"][name] = {k: (v.get_secret_value() if hasattr(v, "get_secret_value") else v) for k, v in dict(conn).items()}
        data["connections"][name]["webhook_secrets"] = conn.secrets()
    data["mappings_dir"] = str(settings.mappings_dir)
    path.write_text(yaml.safe_dump(data))
    return path


class Server:
    """A server in a child process on a free loopback port: the bridge (``hitl-bridge serve``)
    or one of the bench's comparison apps (``python -m bench.serve``), same uvicorn settings."""

    def __init__(self, argv: list[str], *, log: Path, ready_path: str, env: dict[str, str] | None = None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        self.process = subprocess.Popen(
            [sys.executable, *argv, "--port", str(self.port)],
            cwd=ROOT,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
            stdout=subprocess.DEVNULL,
            stderr=open(log, "ab"),
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                break
            try:
                if httpx2.get(self.url + ready_path, timeout=2).status_code == 200:
                    return
            except httpx2.HTTPError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"server {argv} did not start: {log.read_text()[-2000:]}")

    @property
    def pid(self) -> int:
        return self.process.pid

    def rss_bytes(self) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        return 0

    def stop(self) -> None:
        _stop(self.process)


def _stop(process: subprocess.Popen) -> None:
    """SIGTERM (the bridge shuts down gracefully), then SIGKILL after 20 s."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


def start_bridge(settings: Settings, workdir: Path, *, worker: bool, name: str = "bridge") -> Server:
    config = write_config(settings, workdir / f"{name}.yaml")
    argv = ["-m", "bridge.cli", "serve", "--config", str(config)] + ([] if worker else ["--no-worker"])
    return Server(argv, log=workdir / f"{name}.log", ready_path="/readyz")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far (Linux ``/proc``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_jiffies() -> tuple[int, int]:
    """(busy, total) clock ticks of all this machine's CPUs so far (``/proc/stat``): the
    share busy over a phase says whether the machine itself ran out of CPU."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = values[3] + (values[4] if len(values) > 4 else 0)  # idle + iowait
    total = sum(values[:8])  # guest time is already counted in user
    return total - idle, total


class WorkerProcess:
    """``hitl-bridge worker`` in a child process (no HTTP: it is ready when jobs move)."""

    def __init__(self, config: Path, *, log: Path):
        self.process = subprocess.Popen([sys.executable, "-m", "bridge.cli", "worker", "--config", str(config)], cwd=ROOT,
                                        env={**os.environ, "PYTHONUNBUFFERED": "1"}, stdout=subprocess.DEVNULL,
                                        stderr=open(log, "ab"))

    @property
    def pid(self) -> int:
        return self.process.pid

    def stop(self) -> None:
        _stop(self.process)


def start_layout(settings: Settings, workdir: Path, *, workers: int, name: str) -> tuple[Server, list[WorkerProcess]]:
    """``workers`` = 0: one ``serve`` with its worker in-process (the default deployment);
    N > 0: ``serve --no-worker`` and N ``hitl-bridge worker`` processes (scaled out)."""
    bridge = start_bridge(settings, workdir, worker=workers == 0, name=name)
    config = workdir / f"{name}.yaml"
    return bridge, [WorkerProcess(config, log=workdir / f"{name}-worker-{n}.log") for n in range(workers)]


def start_app(kind: str, workdir: Path, *, database_url: str, config: Path | None = None) -> Server:
    argv = ["-m", "bench.serve", kind, "--database-url", database_url] + (["--config", str(config)] if config else [])
    return Server(argv, log=workdir / f"{kind}.log", ready_path="/healthz")


# ----- load ------------------------------------------------------------------------


def review_body(callback_url: str, n: int) -> bytes:
    """The same review an agent sends in the tests (tests/harness.py), numbered."""
    return json.dumps({
        "title": f"Refund $750 to order A-{n}",
        "action_requests": [
            {"name": "issue_refund", "args": {"order_id": f"A-{n}", "amount": 750}, "description": "Customer reports a damaged item"}
        ],
        "allowed_decisions": ["approve", "edit", "reject", "respond"],
        "confidence": 0.62,
        "reasoning": "The photo shows a broken item; policy allows refunds under $1000.",
        "evidence": [{"title": f"Order A-{n}", "url": f"https://shop.example/orders/A-{n}", "snippet": "Delivered 2 days ago"}],
        "metadata": {"queue": "jira", "customer_tier": "gold"},
        "langsmith": {"run_id": "9d3f1a52-5b2c-4c39-9a44-0e5b7c1d2f00", "trace_url": "https://smith.langchain.com/r/9d3f1a52"},
        "resume": {"callback_url": f"{callback_url}/hitl"},
    }).encode()


@dataclass
class LoadResult:
    latencies: list[float]
    statuses: Counter
    elapsed: float
    sent_at: list[float]
    responses: list[Any]

    def throughput(self) -> float:
        ok = sum(n for status, n in self.statuses.items() if 200 <= status < 300)
        return round(ok / self.elapsed, 1) if self.elapsed > 0 else 0.0

    def row(self) -> dict[str, Any]:
        return {"requests": len(self.latencies), "ok_per_s": self.throughput(), **{k: v for k, v in summary(self.latencies).items() if k != "n"},
                "statuses": {str(k): v for k, v in sorted(self.statuses.items())}}


async def _closed_loop(url: str, path: str, bodies: list[bytes], *, concurrency: int, max_seconds: float,
                       headers: dict[str, str], keep: bool, keyed: bool) -> LoadResult:
    limits = httpx2.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    latencies: list[float] = []
    statuses: Counter = Counter()
    sent_at: list[float] = []
    responses: list[Any] = []
    next_index = 0
    async with httpx2.AsyncClient(base_url=url, headers=headers, timeout=60, limits=limits) as client:
        started = time.perf_counter()
        deadline = started + max_seconds
        last = started

        async def one() -> None:
            nonlocal next_index, last
            while next_index < len(bodies) and time.perf_counter() < deadline:
                body = bodies[next_index]
                next_index += 1
                sent = time.monotonic()
                t0 = time.perf_counter()
                try:
                    # the key bridge.client sends: a new one for each review (retries would reuse it)
                    extra = {"idempotency-key": f"bench-{next_index}-{uuid.uuid4().hex}"} if keyed else None
                    response = await client.post(path, content=body, headers=extra)
                    status = response.status_code
                except httpx2.HTTPError:
                    response, status = None, 599
                t1 = time.perf_counter()
                latencies.append(t1 - t0)
                statuses[status] += 1
                sent_at.append(sent)
                if keep:
                    responses.append(response.json() if response is not None and status < 300 else None)
                last = max(last, t1)

        await asyncio.gather(*(one() for _ in range(concurrency)))
    return LoadResult(latencies, statuses, last - started, sent_at, responses)


def closed_loop(url: str, path: str, bodies: list[bytes], *, concurrency: int, max_seconds: float,
                headers: dict[str, str] | None = None, keep: bool = False, keyed: bool = False) -> LoadResult:
    """``concurrency`` clients each sending the next body as soon as their last answer came,
    until the bodies or ``max_seconds`` run out. ``keyed``: each with an Idempotency-Key of its own."""
    headers = {"content-type": "application/json", **(headers or {})}
    return asyncio.run(_closed_loop(url, path, bodies, concurrency=concurrency, max_seconds=max_seconds,
                                    headers=headers, keep=keep, keyed=keyed))


async def _open_loop(url: str, items: list[tuple[str, bytes, dict[str, str]]], rate: float) -> tuple[dict[str, float], list[float], Counter]:
    sent_at: dict[str, float] = {}
    acks: list[float] = []
    statuses: Counter = Counter()
    limits = httpx2.Limits(max_connections=256, max_keepalive_connections=256)
    async with httpx2.AsyncClient(timeout=60, limits=limits) as client:

        async def one(tag: str, body: bytes, headers: dict[str, str]) -> None:
            sent_at[tag] = time.monotonic()
            t0 = time.perf_counter()
            try:
                status = (await client.post(url, content=body, headers=headers)).status_code
            except httpx2.HTTPError:
                status = 599
            acks.append(time.perf_counter() - t0)
            statuses[status] += 1

        start = time.perf_counter() + 0.05
        tasks = []
        for i, (tag, body, headers) in enumerate(items):
            delay = start + i / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(tag, body, headers)))
        await asyncio.gather(*tasks)
    return sent_at, acks, statuses


def open_loop(url: str, items: list[tuple[str, bytes, dict[str, str]]], *, rate: float):
    """Send each item at its slot (``rate`` per second) whatever the answers do: webhooks
    arrive when the ticket system sends them, not when the bridge is ready."""
    return asyncio.run(_open_loop(url, items, rate))


def wait_until(predicate, *, timeout: float, interval: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())


def count_rows(database_url: str, sql: str) -> int:
    from sqlalchemy import create_engine, text
    from sqlalchemy.pool import NullPool

    engine = create_engine(normalize_url(database_url), poolclass=NullPool)
    try:
        with engine.connect() as connection:
            return int(connection.execute(text(sql)).scalar() or 0)
    finally:
        engine.dispose()


def say(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)
