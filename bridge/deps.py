"""FastAPI dependencies: the runtime and API-key authentication with scopes.

They are ``async``: FastAPI runs each sync dependency in the thread pool, a thread hop per
dependency per request on the intake's hot path (bench/). What reads the database (a key
made with `hitl-bridge keys create`, the admin session's key) still runs in the pool."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from fastapi.concurrency import run_in_threadpool

from . import keys
from .config import ApiKey
from .errors import AuthenticationError, ForbiddenError
from .runtime import Runtime


async def get_runtime(request: Request) -> Runtime:
    return request.app.state.runtime


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]


def require(scope: str):
    """A dependency that admits a bearer key holding ``scope`` (``admin`` holds every scope)."""

    async def check(request: Request, rt: RuntimeDep) -> ApiKey:
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise AuthenticationError("send an API key as 'Authorization: Bearer <key>'", code="missing_api_key")
        token = token.strip()
        # config keys, then keys made with `hitl-bridge keys create`
        key, why = keys.configured(rt, token) or await run_in_threadpool(keys.stored, rt, token)
        if key is None:
            if why == "expired":
                raise AuthenticationError("the API key has expired", code="expired_api_key")
            raise AuthenticationError("the API key is not valid", code="invalid_api_key")
        if scope not in key.scopes and "admin" not in key.scopes:
            raise ForbiddenError(
                f"the API key {key.name!r} lacks the {scope!r} scope",
                code="missing_scope",
                details={"required": scope, "granted": key.scopes},
            )
        return key

    return check


WriteKey = Annotated[ApiKey, Depends(require("reviews:write"))]
ReadKey = Annotated[ApiKey, Depends(require("reviews:read"))]
AdminKey = Annotated[ApiKey, Depends(require("admin"))]
AuditKey = Annotated[ApiKey, Depends(require("audit"))]


async def require_admin_or_session(request: Request, rt: RuntimeDep) -> ApiKey:
    """An admin bearer key, or the admin page's session cookie (with its CSRF token on any
    request that changes something)."""
    from . import sessions

    if request.headers.get("authorization"):
        return await require("admin")(request, rt)
    cookie = request.cookies.get(sessions.COOKIE)
    key = await run_in_threadpool(sessions.verify, lambda name: keys.by_name(rt, name), cookie)
    if key is None:
        raise AuthenticationError("send an API key as 'Authorization: Bearer <key>'", code="missing_api_key")
    if request.method not in ("GET", "HEAD", "OPTIONS") and not sessions.csrf_ok(key, cookie, request.headers.get(sessions.CSRF_HEADER)):
        raise ForbiddenError("the admin page's CSRF token is missing or wrong; reload the page", code="csrf_failed")
    return key


AdminActor = Annotated[ApiKey, Depends(require_admin_or_session)]
