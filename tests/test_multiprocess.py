"""Three ``hitl-bridge serve`` processes and two ``hitl-bridge worker`` processes on one
PostgreSQL database, behind a small round-robin balancer, while processes are killed
(SIGKILL) and restarted at random: every review ends decided and delivered, no ticket is
duplicated, no decision is lost, and the audit trail verifies."""

from __future__ import annotations

import json
import random
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import httpx2
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from typer.testing import CliRunner

from bridge.cli import app as cli
from connectors.emulators.base import serve as serve_app
from harness import KEYS, Bridge, TestDatabase
from helpers import wait_for
from procs import Proc

pytestmark = pytest.mark.skipif(not TestDatabase.postgres_configured(),
                                reason="several instances share PostgreSQL (HITL_TEST_DATABASE_URL)")


class Balancer:
    """Round-robin over the live serve processes; a refused or dropped connection is tried
    on the next one (as a load balancer with health checks would)."""

    def __init__(self, backends: list[Proc]):
        self.backends = backends
        self.client = httpx2.Client(timeout=30)
        self._next = 0
        self.server = serve_app(Starlette(routes=[Route("/{path:path}", self._forward, methods=["GET", "POST", "PUT"])]),
                                name="balancer")

    @property
    def url(self) -> str:
        return self.server.url

    def _forward_sync(self, method: str, path: str, headers: dict, body: bytes) -> httpx2.Response | None:
        for _ in range(3 * len(self.backends)):
            self._next = (self._next + 1) % len(self.backends)
            backend = self.backends[self._next]
            if not backend.running:
                continue
            try:
                return self.client.request(method, f"{backend.url}/{path}", content=body, headers=headers)
            except httpx2.HTTPError:
                continue
        return None

    async def _forward(self, request: Request) -> Response:
        from starlette.concurrency import run_in_threadpool

        headers = {k: v for k, v in request.headers.items() if k.lower() not in ("host", "content-length")}
        answer = await run_in_threadpool(self._forward_sync, request.method, request.url.path.lstrip("/") +
                                         (f"?{request.url.query}" if request.url.query else ""), headers, await request.body())
        if answer is None:
            return Response(b'{"error": "no backend"}', status_code=503, media_type="application/json")
        return Response(answer.content, status_code=answer.status_code, media_type=answer.headers.get("content-type"))

    def stop(self) -> None:
        self.server.stop()
        self.client.close()


def run_cluster(tmp_path, *, reviews: int, chaos_seconds: float, kill_every: float):
    bridge = Bridge(tmp_path)
    bridge.worker_settings = bridge.worker_settings.model_copy(update={"concurrency": 2, "lease_seconds": 5})
    bridge.settings = bridge.settings.model_copy(update={"worker": bridge.worker_settings})
    config = bridge.config_file()
    jira = bridge.emulators["jira"].emulator
    jira.settings.webhook_attempts = 100
    servers = [Proc(config, tmp_path / f"serve{n}.log") for n in range(3)]
    workers = [Proc(config, tmp_path / f"worker{n}.log", kind="worker") for n in range(2)]
    processes = servers + workers
    balancer = None
    try:
        servers[0].start()  # migrates the database first
        for proc in servers[1:] + workers:
            proc.start(wait=False)
        for proc in servers:
            proc.wait_ready()
        balancer = Balancer(servers)
        bridge._wire(balancer.url)

        agent = httpx2.Client(base_url=balancer.url, headers={"Authorization": f"Bearer {KEYS['agent']}"}, timeout=30)

        def submit(n: int) -> str:
            key = f"review-{n}-{uuid.uuid4()}"
            body = bridge.review_body(title=f"Refund #{n}")
            for _ in range(50):
                try:
                    response = agent.post("/v1/reviews", json=body, headers={"Idempotency-Key": key})
                    if response.status_code in (200, 201):
                        return response.json()["id"]
                except httpx2.HTTPError:
                    pass
                time.sleep(0.2)
            raise AssertionError(f"review {n} could not be submitted")

        def status(review_id: str) -> dict | None:
            try:
                response = agent.get(f"/v1/reviews/{review_id}")
                return response.json() if response.status_code == 200 else None
            except httpx2.HTTPError:
                return None

        stop_chaos = threading.Event()
        kills = []

        def chaos() -> None:
            rng = random.Random(6)
            # The first kill comes at once, while reviews are still being submitted: on a quiet
            # machine the whole run can end before a first kill at the usual pace would.
            pause = 0.3
            while not stop_chaos.wait(pause):
                pause = kill_every * rng.uniform(0.5, 1.5)
                victim = rng.choice(processes)
                if not victim.running:
                    continue
                victim.kill()
                kills.append(victim.log.name)
                time.sleep(rng.uniform(0.1, 0.8))
                victim.start(wait=False)

        chaos_thread = threading.Thread(target=chaos, daemon=True)
        chaos_thread.start()
        deadline = time.monotonic() + chaos_seconds
        with ThreadPoolExecutor(8) as pool:
            review_ids = list(pool.map(submit, range(reviews)))
        decided: set[str] = set()
        while len(decided) < len(review_ids):
            for review_id in review_ids:
                if review_id in decided:
                    continue
                review = status(review_id)
                if review and review["status"] == "open" and review["ticket"]:
                    bridge.act("jira", review["ticket"]["key"], "approve")
                    decided.add(review_id)
            if time.monotonic() > deadline + 120:
                raise AssertionError(f"only {len(decided)} of {len(review_ids)} reviews got a ticket")
            time.sleep(0.2)

        def all_delivered() -> bool:
            return all((r := status(review_id)) and r["status"] == "approved" and r["delivery"]["state"] == "delivered"
                       for review_id in review_ids)

        # the kills go on while decisions are read back and delivered, then everything restarts
        while time.monotonic() < deadline and not all_delivered():
            time.sleep(1.0)
        stop_chaos.set()
        chaos_thread.join(timeout=30)
        for proc in processes:
            if not proc.running:
                proc.start(wait=False)
        for proc in servers:
            proc.wait_ready()
        wait_for(all_delivered, timeout=180 + reviews // 10, interval=1.0, what="every review decided and delivered")
        # no duplicate ticket, every decision delivered with one webhook-id per review
        for review_id in review_ids:
            labelled = [t for t in jira.list_tickets() if f"hitl-{review_id}" in (t["fields"].get("labels") or [])]
            assert len(labelled) == 1, (review_id, len(labelled))
            hits = bridge.callbacks_for(review_id)
            assert hits and {h.headers["webhook-id"] for h in hits} == {f"msg_{review_id}"}
            assert {json.loads(h.body)["status"] for h in hits} == {"approved"}
        verified = CliRunner().invoke(cli, ["audit", "verify", "--config", str(config)])
        assert verified.exit_code == 0, verified.output
        print(f"{reviews} reviews, {len(kills)} kills ({', '.join(kills)})")
        assert kills
        agent.close()
    finally:
        for proc in processes:
            proc.kill()
        if balancer is not None:
            balancer.stop()
        bridge.stop()


@pytest.mark.timeout(420)  # past the run's own waits, which then say what is stuck (a busy CI machine restarts slowly)
def test_three_bridges_and_two_workers_survive_random_kills(tmp_path):
    run_cluster(tmp_path, reviews=60, chaos_seconds=20, kill_every=2.0)


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_2000_reviews_through_three_bridges_and_two_workers_with_random_kills(tmp_path):
    run_cluster(tmp_path, reviews=2000, chaos_seconds=300, kill_every=3.0)
