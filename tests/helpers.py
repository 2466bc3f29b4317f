"""Small real servers tests need: a recorder of incoming HTTP requests (agent callbacks,
webhook receivers) and polling helpers."""

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


@dataclass
class Recorder:
    """Records every request; answers with ``status`` (and ``body``), which tests may change."""

    status: int = 200
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
        return Response(self.body, status_code=self.status, media_type=self.content_type)

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
