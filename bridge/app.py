"""The FastAPI application: routes, error shapes, body limits, and the worker's lifecycle."""

from __future__ import annotations

import logging
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DataError, OperationalError
from starlette.exceptions import HTTPException as StarletteHTTPException

from . import __version__, versions
from .config import Settings, get_settings
from .errors import BridgeError
from .migrate import upgrade
from .outbox import queue_depth
from .routes import mappings, ops, reviews, webhooks
from .routes import langsmith as langsmith_intake
from .runtime import Runtime
from .worker import Worker

log = logging.getLogger("bridge.app")


def error(status: int, code: str, message: str, details=None) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message, "details": details}}, status_code=status)


class BodyLimit:
    """Refuse bodies over ``limit`` bytes with 413, before the route reads them all."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            return await self._refuse(scope, receive, send)
        seen = 0

        async def counting_receive():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise _TooLarge()
            return message

        try:
            await self.app(scope, counting_receive, send)
        except _TooLarge:
            await self._refuse(scope, receive, send)

    async def _refuse(self, scope, receive, send):
        response = error(413, "body_too_large", f"the request body is over {self.limit} bytes")
        await response(scope, receive, send)


class _TooLarge(Exception):
    pass


def _validation_details(exc: RequestValidationError) -> tuple[int, str, str, list]:
    errors = exc.errors()
    if any(e.get("type") == "json_invalid" for e in errors):
        first = next(e for e in errors if e.get("type") == "json_invalid")
        return 400, "malformed_json", f"the body is not valid JSON: {first.get('ctx', {}).get('error', 'parse error')}", []
    details = [
        {"field": ".".join(str(p) for p in e["loc"] if p != "body"), "reason": e["msg"], "type": e["type"]} for e in errors
    ]
    first = details[0]
    return 422, "invalid_request", f"{first['field'] or 'body'}: {first['reason']}", details


def create_app(settings: Settings | None = None, *, runtime: Runtime | None = None, start_worker: bool | None = None) -> FastAPI:
    settings = settings or (runtime.settings if runtime else get_settings())

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        if settings.auto_migrate:
            upgrade(settings.database_url)
        rt = runtime or Runtime(settings)
        stop_checkpoints = rt.db.checkpoint_in_background()
        follower = versions.Follower(rt, settings.mappings_follow_seconds).start()
        rt.metrics.watch_queue(lambda: _depth(rt))
        app.state.runtime = rt
        worker = None
        if start_worker if start_worker is not None else settings.run_worker:
            worker = Worker(rt)
            worker.start()
        app.state.worker = worker
        watcher = None
        if worker is not None and settings.langgraph:
            from .watcher import InterruptWatcher

            watcher = InterruptWatcher(rt)
            watcher.start()
        log.info("bridge.started", extra={"version": __version__, "worker": worker is not None})
        try:
            yield
        finally:
            if watcher is not None:
                watcher.stop()
            if worker is not None:
                worker.stop()
            follower.stop()
            stop_checkpoints()
            if runtime is None:
                rt.close()

    app = FastAPI(
        title="hitl-bridge",
        version=__version__,
        description="Human approvals for AI agents inside Jira, ServiceNow, Zendesk and Salesforce.",
        lifespan=lifespan,
    )

    @app.exception_handler(BridgeError)
    async def _bridge_error(request: Request, exc: BridgeError):
        response = error(exc.status_code, exc.code, exc.message, exc.details)
        response.headers.update(getattr(exc, "headers", None) or {})  # e.g. Retry-After on a 429
        return response

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        status, code, message, details = _validation_details(exc)
        return error(status, code, message, details)

    @app.exception_handler(OperationalError)
    async def _database_unavailable(request: Request, exc: OperationalError):
        # The database is down or refusing connections (a restart, a failover): nothing was
        # written, so the caller may send the same request again (the Python client does,
        # with the same Idempotency-Key). Never the driver's text: it can name hosts and users.
        log.error("database.unavailable", extra={"error": type(exc.orig).__name__, "path": request.url.path})
        response = error(503, "database_unavailable", "the bridge cannot reach its database; retry shortly")
        response.headers["Retry-After"] = "1"
        return response

    @app.exception_handler(DataError)
    async def _unstorable(request: Request, exc: DataError):
        # A value the database refuses (PostgreSQL: text with a NUL character, a number past
        # its column) in a parameter no validation rule caught: nothing was written. The
        # driver's own text may quote the value; its kind does not.
        reason = "text may not contain NUL (0x00) characters" if "NUL" in str(exc.orig) else type(exc.orig).__name__
        log.warning("database.refused_value", extra={"error": type(exc.orig).__name__, "path": request.url.path})
        return error(422, "invalid_request", f"the request holds a value the database cannot store: {reason}")

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException):
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return error(exc.status_code, code, str(exc.detail))

    for module in (reviews, webhooks, mappings, ops):
        app.include_router(module.router)
    from . import admin as admin_page
    from .routes import admin as admin_api

    app.include_router(mappings.schema_router)
    app.include_router(admin_api.router)
    app.include_router(admin_page.router)
    app.include_router(langsmith_intake.router)
    from .routes import stats as route_stats  # roll-out measures (issue 9)

    app.include_router(route_stats.router)
    if settings.sandbox:
        from . import sandbox

        app.include_router(sandbox.router)
    app.add_middleware(BodyLimit, limit=settings.max_body_bytes)
    return app


def _depth(rt: Runtime):
    with rt.db.read() as session:
        return queue_depth(session)
