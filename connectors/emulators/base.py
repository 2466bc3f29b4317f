"""What every ticket-system emulator shares.

An emulator is a stateful fake of a vendor's REST API served over real HTTP on loopback,
so the real client libraries talk to it unmodified. Each vendor module subclasses
``Emulator`` and supplies its routes and its uniform view of tickets; this module adds:

* ``/_emulator/*`` control endpoints, the same for every vendor (the sandbox page and the
  tests use them): list tickets, act as a reviewer or customer, configure webhooks,
  latency and injected faults, inspect webhook deliveries, reset;
* a fault/latency middleware (``latency_ms``, ``write_delay_ms``: the response to a write is
  held back *after* the write is stored, which is how crash tests kill the bridge between
  the upstream's commit and its own), and one-shot faults (429 with Retry-After, 5xx,
  a request held past the client's timeout before or after it is served);
* ``RunningEmulator.refuse_connections()`` / ``accept_connections()``: the system is down
  (connections refused on its port) and back, its state kept;
* a background webhook sender that retries like the vendors do;
* ``serve()``: run any ASGI app on a free loopback port, with TLS from a test CA when the
  vendor's client library insists on https.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import queue
import secrets
import socket
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, ClassVar, Literal

import httpx2
import uvicorn
from pydantic import BaseModel, ConfigDict, Field
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

log = logging.getLogger("connectors.emulator")


class Fault(BaseModel):
    """Answer the next ``times`` matching requests with ``status`` instead of serving them.

    ``hang_ms``: hold the request that long first (then answer ``status``, nothing stored):
    a client with a shorter timeout gives up, as behind a gateway that timed out.
    ``late_ms``: serve the request (a write is stored), then hold its answer that long: a
    client with a shorter timeout never hears that its write succeeded. ``status`` is unused.
    """

    status: int = 500
    times: int = 1
    retry_after: int | str | None = None  # seconds, or an HTTP-date (RFC 9110)
    method: str | None = None
    path_prefix: str | None = None
    hang_ms: int = Field(default=0, ge=0)
    late_ms: int = Field(default=0, ge=0)

    def matches(self, method: str, path: str) -> bool:
        if self.times <= 0:
            return False
        if self.method and self.method.upper() != method.upper():
            return False
        return not self.path_prefix or path.startswith(self.path_prefix)


class EmulatorSettings(BaseModel):
    model_config = ConfigDict(validate_assignment=True)

    webhook_url: str | None = None
    webhook_secret: str | None = None
    latency_ms: int = 0
    write_delay_ms: int = 0
    faults: list[Fault] = Field(default_factory=list)
    webhook_attempts: int = 5
    rate_limit_per_second: float = Field(default=0, ge=0, description="A token bucket over the vendor API (0: none).")
    rate_limit_burst: int = Field(default=0, ge=0, description="The bucket's size (0: one second's worth).")


class Act(BaseModel):
    """One thing a person does to a ticket, the same words for every vendor.

    approve / reject / respond set the sample mapping's deciding status or field; ``body``
    (when given) is added first as the reviewer's comment (internal where the system has
    internal comments). ``edit`` adds ``/edit <body>`` and approves. ``comment`` only
    comments; ``customer_reply`` comments as the customer; ``set_field`` sets ``field``.
    """

    key: str
    action: Literal["approve", "reject", "respond", "edit", "comment", "set_field", "customer_reply"]
    body: str | None = None
    field: str | None = None
    value: Any = None
    user: str | None = None
    internal: bool = True


@dataclass
class Delivery:
    url: str
    body: str
    headers: dict[str, str]
    status: int | None = None
    attempts: int = 0
    error: str | None = None
    response: str | None = None


class WebhookSender:
    """Posts webhooks from a background thread, retrying like the vendors do."""

    def __init__(self, emulator: "Emulator"):
        self._emulator = emulator
        self._queue: queue.Queue[Delivery | None] = queue.Queue()
        self.deliveries: list[Delivery] = []
        self._thread = threading.Thread(target=self._run, name=f"{emulator.vendor}-webhooks", daemon=True)
        self._thread.start()

    def send(self, body: bytes | str, headers: dict[str, str]) -> Delivery | None:
        url = self._emulator.settings.webhook_url
        if not url:
            return None
        text = body.decode() if isinstance(body, bytes) else body
        delivery = Delivery(url=url, body=text, headers=headers)
        self.deliveries.append(delivery)
        self._queue.put(delivery)
        return delivery

    def _run(self) -> None:
        with httpx2.Client(timeout=10.0) as client:
            while True:
                delivery = self._queue.get()
                if delivery is None:
                    return
                self._deliver(client, delivery)

    def _deliver(self, client: httpx2.Client, delivery: Delivery) -> None:
        attempts = max(1, self._emulator.settings.webhook_attempts)
        for attempt in range(attempts):
            delivery.attempts = attempt + 1
            try:
                response = client.post(delivery.url, content=delivery.body.encode(), headers=delivery.headers)
                delivery.status = response.status_code
                delivery.response = response.text[:2000]
                delivery.error = None
                if response.status_code < 500 and self._emulator.delivered(response):
                    return
            except httpx2.HTTPError as exc:
                delivery.error = type(exc).__name__
            time.sleep(min(0.2 * 2**attempt, 2.0))

    def stop(self) -> None:
        self._queue.put(None)


class Emulator:
    """Base of every vendor emulator. Subclasses set ``vendor`` and implement the hooks."""

    vendor: ClassVar[str] = ""
    tls: ClassVar[bool] = False
    write_delay_exempt: ClassVar[tuple[str, ...]] = ()
    """Path prefixes that ``write_delay_ms`` never holds back (logins are not ticket writes)."""

    def __init__(self, **settings: Any):
        settings.setdefault("webhook_secret", f"{self.vendor}-emulator-{secrets.token_urlsafe(16)}")
        self.settings = EmulatorSettings(**settings)
        self.lock = threading.RLock()
        self.webhooks = WebhookSender(self)
        self.base_url = "http://127.0.0.1"
        self.reset()

    # ----- hooks for vendors -------------------------------------------------
    def reset(self) -> None:
        """Forget all state (tickets, comments, users created at run time)."""
        raise NotImplementedError

    def routes(self) -> list:
        """The vendor's REST API as Starlette routes (or a single Mount)."""
        raise NotImplementedError

    def error_response(self, status: int, message: str, *, retry_after: int | str | None = None) -> Response:
        """An error in the vendor's own shape."""
        headers = {"Retry-After": str(retry_after)} if retry_after is not None else {}
        return JSONResponse({"error": message}, status_code=status, headers=headers)

    def list_tickets(self) -> list[dict[str, Any]]:
        """Uniform view: key, display, url, title, status, description, comments, fields."""
        raise NotImplementedError

    def act(self, act: Act) -> dict[str, Any]:
        """Do what a person would do in the vendor's UI; sends the same webhooks."""
        raise NotImplementedError

    def connection(self, *, base_url: str, ca_bundle: str | None) -> dict[str, Any]:
        """Settings of a bridge connection that reaches this emulator (without ``name``)."""
        raise NotImplementedError

    def contract_fields(self) -> dict[str, Any]:
        """Minimal valid ticket fields, in the vendor's shape, for the contract suite."""
        raise NotImplementedError

    def missing_key(self) -> str:
        """A well-formed key of a ticket that does not exist (contract suite)."""
        raise NotImplementedError

    def bad_credentials(self) -> dict[str, Any]:
        """Connection overrides with wrong credentials (contract suite)."""
        raise NotImplementedError

    def contract_close_status(self) -> str:
        """A status ``update_ticket(key, {"status": ...})`` can move a new ticket to."""
        raise NotImplementedError

    def delivered(self, response: httpx2.Response) -> bool:
        """Whether a webhook response counts as delivered (Salesforce wants a SOAP Ack)."""
        return 200 <= response.status_code < 300

    # ----- shared machinery --------------------------------------------------
    def take_fault(self, method: str, path: str) -> Fault | None:
        with self.lock:
            for fault in self.settings.faults:
                if fault.matches(method, path):
                    fault.times -= 1
                    return fault
        return None

    def take_token(self) -> float | None:
        """The rate limit's token bucket: None when the request may go on, else the seconds
        until a token is back (for Retry-After)."""
        rate = self.settings.rate_limit_per_second
        burst = self.settings.rate_limit_burst or max(1, int(rate))
        with self.lock:
            now = time.monotonic()
            tokens, last = getattr(self, "_bucket", (float(burst), now))
            tokens = min(float(burst), tokens + (now - last) * rate)
            if tokens < 1:
                self._bucket = (tokens, now)
                return (1 - tokens) / rate
            self._bucket = (tokens - 1, now)
            return None

    def build_app(self) -> Starlette:
        control = [
            Route("/_emulator/health", self._health, methods=["GET"]),
            Route("/_emulator/tickets", self._tickets, methods=["GET"]),
            Route("/_emulator/act", self._act, methods=["POST"]),
            Route("/_emulator/config", self._config, methods=["GET", "POST"]),
            Route("/_emulator/webhooks", self._deliveries, methods=["GET"]),
            Route("/_emulator/reset", self._reset, methods=["POST"]),
        ]
        app = Starlette(routes=control + list(self.routes()))
        return FaultMiddleware(app, self)  # type: ignore[return-value]

    async def _health(self, request: Request) -> Response:
        return JSONResponse({"vendor": self.vendor, "ok": True})

    async def _tickets(self, request: Request) -> Response:
        with self.lock:
            return JSONResponse(self.list_tickets())

    async def _act(self, request: Request) -> Response:
        try:
            act = Act.model_validate_json(await request.body())
        except ValueError as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        try:
            with self.lock:
                result = self.act(act)
        except KeyError as exc:
            return JSONResponse({"error": f"no ticket {exc.args[0]!r}"}, status_code=404)
        except ValueError as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        return JSONResponse(result)

    async def _config(self, request: Request) -> Response:
        if request.method == "POST":
            changes = json.loads(await request.body() or b"{}")
            with self.lock:
                merged = self.settings.model_dump() | changes
                self.settings = EmulatorSettings.model_validate(merged)
        return JSONResponse(self.settings.model_dump())

    async def _deliveries(self, request: Request) -> Response:
        return JSONResponse([d.__dict__ for d in self.webhooks.deliveries])

    async def _reset(self, request: Request) -> Response:
        with self.lock:
            self.reset()
            self.webhooks.deliveries.clear()
        return JSONResponse({"ok": True})


class FaultMiddleware:
    """Latency, write delays and injected faults for every non-control request."""

    def __init__(self, app: Starlette, emulator: Emulator):
        self.app = app
        self.emulator = emulator

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope["path"].startswith("/_emulator"):
            await self.app(scope, receive, send)
            return
        settings = self.emulator.settings
        if settings.rate_limit_per_second:
            wait = self.emulator.take_token()
            if wait is not None:
                response = self.emulator.error_response(429, "rate limit exceeded", retry_after=max(1, math.ceil(wait)))
                await response(scope, receive, send)
                return
        if settings.latency_ms:
            await asyncio.sleep(settings.latency_ms / 1000)
        fault = self.emulator.take_fault(scope["method"], scope["path"])
        if fault is not None and fault.late_ms:
            await self._answer_late(scope, receive, send, fault.late_ms)
            return
        if fault is not None:
            if fault.hang_ms:
                await asyncio.sleep(fault.hang_ms / 1000)
            response = self.emulator.error_response(
                fault.status, "injected fault", retry_after=fault.retry_after
            )
            await response(scope, receive, send)
            return
        exempt = self.emulator.write_delay_exempt and scope["path"].startswith(self.emulator.write_delay_exempt)
        if settings.write_delay_ms and scope["method"] not in ("GET", "HEAD") and not exempt:
            await self._answer_late(scope, receive, send, settings.write_delay_ms)
            return
        await self.app(scope, receive, send)

    async def _answer_late(self, scope, receive, send, delay_ms: int) -> None:
        """Serve the request (its write is stored), then hold the answer ``delay_ms``."""
        held: list[dict] = []

        async def hold(message: dict) -> None:
            held.append(message)

        await self.app(scope, receive, hold)
        await asyncio.sleep(delay_ms / 1000)
        for message in held:
            await send(message)


# ----- serving ---------------------------------------------------------------


@lru_cache(maxsize=1)
def test_ca():
    """One certificate authority per process for every TLS emulator (trustme)."""
    import trustme

    return trustme.CA()


@dataclass
class RunningServer:
    url: str
    server: uvicorn.Server
    thread: threading.Thread
    ca_bundle: str | None = None
    _files: list[Path] = field(default_factory=list)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


def free_socket(host: str = "127.0.0.1") -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, 0))
    sock.listen(128)
    return sock


def serve(
    app: Callable, *, host: str = "127.0.0.1", port: int = 0, tls: bool = False, name: str = "server",
    sock: socket.socket | None = None,
) -> RunningServer:
    """Run an ASGI app on loopback in a daemon thread; returns once it accepts connections.
    ``sock``: a bound, listening socket to serve on (else ``port``, else a free port)."""
    if sock is None and port == 0:
        sock = free_socket(host)
    ssl_kwargs: dict[str, Any] = {}
    ca_bundle = None
    files: list[Path] = []
    if tls:
        ca = test_ca()
        workdir = Path(tempfile.mkdtemp(prefix=f"hitl-{name}-tls-"))
        cert = ca.issue_cert("127.0.0.1", "localhost")
        cert_file, key_file, ca_file = workdir / "cert.pem", workdir / "key.pem", workdir / "ca.pem"
        cert.cert_chain_pems[0].write_to_path(str(cert_file))
        for extra in cert.cert_chain_pems[1:]:
            extra.write_to_path(str(cert_file), append=True)
        cert.private_key_pem.write_to_path(str(key_file))
        ca.cert_pem.write_to_path(str(ca_file))
        ssl_kwargs = {"ssl_certfile": str(cert_file), "ssl_keyfile": str(key_file)}
        ca_bundle = str(ca_file)
        files = [cert_file, key_file, ca_file]
    config = uvicorn.Config(
        app, host=host, port=port, log_level="warning", access_log=False, lifespan="auto", **ssl_kwargs
    )
    server = uvicorn.Server(config)
    server.install_signal_handlers = lambda: None  # type: ignore[method-assign]  # not the main thread
    sockets = [sock] if sock else None
    thread = threading.Thread(target=server.run, kwargs={"sockets": sockets}, name=name, daemon=True)
    thread.start()
    deadline = time.monotonic() + 15
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError(f"{name} did not start")
        time.sleep(0.01)
    bound_port = sock.getsockname()[1] if sock else port
    scheme = "https" if tls else "http"
    return RunningServer(f"{scheme}://{host}:{bound_port}", server, thread, ca_bundle, files)


@dataclass
class RunningEmulator:
    emulator: Emulator
    server: RunningServer
    _closed_port: socket.socket | None = field(default=None, repr=False)  # while refusing connections

    @property
    def url(self) -> str:
        return self.server.url

    def connection(self, name: str, **overrides: Any) -> dict[str, Any]:
        settings = self.emulator.connection(base_url=self.url, ca_bundle=self.server.ca_bundle)
        return {"name": name, **settings, **overrides}

    def stop(self) -> None:
        self.server.stop()
        if self._closed_port is not None:
            self._closed_port.close()
            self._closed_port = None
        self.emulator.webhooks.stop()

    def refuse_connections(self) -> None:
        """The system goes down: stop serving and keep its port bound but not listening, so
        connections to it are refused (and no other server takes the port meanwhile)."""
        if self._closed_port is not None:
            return
        port = int(self.url.rsplit(":", 1)[1])
        self.server.stop()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        deadline = time.monotonic() + 10
        while True:  # the old listener's socket may take a moment to close
            try:
                sock.bind(("127.0.0.1", port))
                break
            except OSError:
                if time.monotonic() > deadline:
                    sock.close()
                    raise
                time.sleep(0.05)
        self._closed_port = sock

    def accept_connections(self) -> None:
        """The system is back on the same URL, with the state it had."""
        sock, self._closed_port = self._closed_port, None
        if sock is None:
            return
        sock.listen(128)
        name = f"{self.emulator.vendor}-emulator"
        self.server = serve(self.emulator.build_app(), tls=self.emulator.tls, name=name, sock=sock)


def start_emulator(emulator: Emulator, *, host: str = "127.0.0.1", port: int = 0) -> RunningEmulator:
    running = serve(emulator.build_app(), host=host, port=port, tls=emulator.tls, name=f"{emulator.vendor}-emulator")
    emulator.base_url = running.url
    return RunningEmulator(emulator, running)
