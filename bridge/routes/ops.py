"""Liveness, readiness, metrics and the audit trail."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import select, text

from .. import audit
from ..deps import AuditKey, RuntimeDep
from ..models import AuditEvent

router = APIRouter(tags=["operations"])


@router.get("/healthz")
def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz")
def readyz(request: Request, rt: RuntimeDep) -> Response:
    checks: dict[str, Any] = {}
    try:
        with rt.db.read() as session:
            session.execute(text("SELECT 1"))
        checks["database"] = "ok"
    except Exception as exc:  # report, do not raise: this is the readiness answer
        checks["database"] = f"error: {type(exc).__name__}"
    worker = getattr(request.app.state, "worker", None)
    if rt.settings.run_worker:
        checks["worker"] = "ok" if worker is not None and worker.alive else "not running"
    ready = all(v == "ok" for v in checks.values())
    return JSONResponse({"status": "ready" if ready else "not ready", "checks": checks}, status_code=200 if ready else 503)


@router.get("/metrics")
def metrics(rt: RuntimeDep) -> Response:
    return Response(generate_latest(rt.metrics.registry), media_type=CONTENT_TYPE_LATEST)


@router.get("/v1/audit")
def audit_trail(
    rt: RuntimeDep,
    key: AuditKey,
    review_id: Annotated[str | None, Query(max_length=48)] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 200,
    after: Annotated[int, Query(ge=0, le=2_147_483_647)] = 0,  # ids are 32-bit on PostgreSQL
) -> dict[str, Any]:
    query = select(AuditEvent).where(AuditEvent.id > after).order_by(AuditEvent.id).limit(limit)
    if review_id:
        query = query.where(AuditEvent.review_id == review_id)
    with rt.db.read() as session:
        events = audit.with_content(session, list(session.execute(query).scalars()))
    return {"items": events, "next_after": events[-1]["id"] if len(events) == limit else None}
