"""/v1/intake/langsmith: LangSmith automation rules send matching runs here.

LangSmith signs nothing, so the rule's webhook URL carries a shared secret: in its query
string (``?secret=...``, as LangSmith advises) or in an ``X-Webhook-Secret`` header (rules
can set headers). It is compared in constant time against every configured secret
(several during rotation) before the body is parsed. A replayed delivery creates nothing:
reviews are idempotent on the run id.
"""

from __future__ import annotations

import hmac
import json
from typing import Annotated

from fastapi import APIRouter, Header, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse

from .. import langsmith
from ..deps import RuntimeDep
from ..errors import AuthenticationError, BridgeError, NotFoundError

router = APIRouter(prefix="/v1/intake", tags=["langsmith"])


def _secret_matches(given: str | None, secrets: list) -> bool:
    if not given:
        return False
    results = [hmac.compare_digest(given.encode(), s.get_secret_value().encode()) for s in secrets]
    return any(results)


@router.post("/langsmith", status_code=202, responses={400: {}, 401: {}, 404: {}, 413: {}})
async def langsmith_rule(
    request: Request,
    rt: RuntimeDep,
    secret: Annotated[str | None, Query(max_length=500, description="The intake secret (or send X-Webhook-Secret).")] = None,
    x_webhook_secret: Annotated[str | None, Header(max_length=500)] = None,
) -> JSONResponse:
    """One review per run in an automation rule's payload; 202 with the review ids."""
    raw_body = await request.body()
    settings = rt.settings.langsmith
    if settings is None or not settings.intake_secrets:
        raise NotFoundError("LangSmith intake is not configured (langsmith.intake_secrets)", code="intake_not_configured")
    if not (_secret_matches(secret, settings.intake_secrets) or _secret_matches(x_webhook_secret, settings.intake_secrets)):
        raise AuthenticationError("the intake secret is missing or wrong", code="invalid_intake_secret")
    try:
        payload = json.loads(raw_body or b"null")
    except ValueError as exc:
        raise BridgeError(f"the body is not valid JSON: {exc}", code="malformed_json") from None
    outcome = await run_in_threadpool(langsmith.accept_automation, rt, payload)
    return JSONResponse(outcome, status_code=202)
