"""Small real servers tests need: a recorder of incoming HTTP requests (agent callbacks,
webhook receivers), an HTTP forward proxy, and polling helpers."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from connectors.emulators.base import RunningServer, serve


@dataclass
class Recorded:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    at: float = field(default_factory=time.monotonic)


@dataclass
class Recorder:
    """Records every request; answers with ``status`` (``body``, ``headers``), which tests may change."""

    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b'{"ok": true}'
    content_type: str = "application/json"
    delay: float = 0.0  # seconds to hold each answer after recording the request (crash tests)
    requests: list[Recorded] = field(default_factory=list)
    server: RunningServer | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    async def _handle(self, request: Request) -> Response:
        body = await request.body()
        with self._lock:
            self.requests.append(Recorded(request.method, request.url.path, dict(request.headers), body))
        if self.delay:
            await asyncio.sleep(self.delay)
        return Response(self.body, status_code=self.status, media_type=self.content_type, headers=self.headers)

    def start(self) -> "Recorder":
        app = Starlette(routes=[Route("/{path:path}", self._handle, methods=["GET", "POST", "PUT", "PATCH", "DELETE"])])
        self.server = serve(app, name="recorder")
        return self

    @property
    def url(self) -> str:
        assert self.server
        return self.server.url

    def stop(self) -> None:
        if self.server:
            self.server.stop()


class ForwardProxy:
    """An HTTP forward proxy on loopback, as a company network puts in front of the vendors:
    CONNECT tunnels (https) and absolute-form requests (http), each connection piped to the
    host its first request names. ``hosts`` lists the ``host:port`` it carried traffic to."""

    def __init__(self) -> None:
        self.hosts: list[str] = []
        self._loop = asyncio.new_event_loop()
        self._server: asyncio.base_events.Server | None = None

    def start(self) -> "ForwardProxy":
        threading.Thread(target=self._loop.run_forever, name="forward-proxy", daemon=True).start()
        self._server = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._client, "127.0.0.1", 0), self._loop).result(10)
        return self

    @property
    def url(self) -> str:
        assert self._server
        return "http://127.0.0.1:%d" % self._server.sockets[0].getsockname()[1]

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            method, target, _ = head.split(b"\r\n", 1)[0].decode().split(" ", 2)
            host = target if method == "CONNECT" else target.split("://", 1)[1].split("/", 1)[0]
            name, _, port = host.rpartition(":")
            upstream_reader, upstream_writer = await asyncio.open_connection(name, int(port))
            self.hosts.append(host)
            if method == "CONNECT":
                writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
            else:
                upstream_writer.write(head)
            await asyncio.gather(self._pipe(reader, upstream_writer), self._pipe(upstream_reader, writer))
        except (OSError, ValueError, asyncio.IncompleteReadError):
            writer.close()

    @staticmethod
    async def _pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        try:
            while data := await source.read(65536):
                sink.write(data)
                await sink.drain()
        except OSError:
            pass
        finally:
            sink.close()

    def stop(self) -> None:
        async def shutdown() -> None:
            if self._server:
                self._server.close()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(shutdown(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)


def wait_for(predicate: Callable[[], Any], *, timeout: float = 10.0, interval: float = 0.05, what: str = "condition") -> Any:
    """Poll until ``predicate()`` is truthy; return its value or fail naming ``what``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)
