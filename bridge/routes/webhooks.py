"""/v1/webhooks/{connection}: authenticated, deduplicated, acknowledged at once.

The body is verified by the connection's connector before anything is parsed; a verified
webhook only makes the bridge look: the worker reads the ticket back to decide.
"""

from __future__ import annotations

import logging

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

from connectors.errors import WebhookVerificationError

from .. import inbox
from ..deps import RuntimeDep
from ..errors import AuthenticationError, BridgeError, NotFoundError
from . import run_write

router = APIRouter(prefix="/v1/webhooks", tags=["webhooks"])
log = logging.getLogger("bridge.webhooks")


@router.post("/{connection}", status_code=202, responses={401: {}, 404: {}, 413: {}})
async def receive_webhook(connection: str, request: Request, rt: RuntimeDep) -> Response:
    raw_body = await request.body()
    if connection not in rt.settings.connections:
        rt.metrics.webhooks.labels("unknown", "unknown_connection").inc()
        raise NotFoundError(f"no connection named {connection!r}", code="unknown_connection")
    return await run_write(rt.db, _handle, rt, connection, dict(request.headers), raw_body)


def _handle(rt, connection: str, headers: dict[str, str], raw_body: bytes) -> Response:
    connector = rt.connector(connection)
    try:
        events = connector.verify_and_parse_webhook(headers, raw_body)
    except WebhookVerificationError as exc:
        rt.metrics.webhooks.labels(connection, "refused").inc()
        log.warning("webhook.refused", extra={"connection": connection, "reason": exc.message})
        raise AuthenticationError(f"webhook refused: {exc.message}", code="invalid_webhook") from None
    ack = connector.acknowledge(events)
    try:
        outcome = inbox.accept(rt, connection, events)
    except BridgeError:
        rt.metrics.webhooks.labels(connection, "unknown_ticket").inc()
        if ack is None:
            raise
        # Vendors that resend until acknowledged (Salesforce) get their Ack for tickets
        # that are not ours too; nothing was recorded.
        outcome = {}
    for name, count in outcome.items():
        if count:
            rt.metrics.webhooks.labels(connection, name).inc(count)
    if ack is not None:
        body, content_type = ack
        return Response(body, status_code=200, media_type=content_type)
    return JSONResponse(outcome, status_code=202)
