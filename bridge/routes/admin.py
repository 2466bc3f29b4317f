"""/v1/admin and /v1/doctor: the queue at a glance, retrying failed reviews, and checking
every connection against its live system."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.concurrency import run_in_threadpool

from .. import doctor, operations
from ..deps import AdminActor, RuntimeDep
from ..schemas import ReviewOut

router = APIRouter(tags=["admin"])


@router.get("/v1/admin/queue")
def queue(rt: RuntimeDep, key: AdminActor) -> dict[str, Any]:
    """Open reviews per route with age and SLA, failed reviews with errors, dead jobs."""
    return operations.queue_overview(rt)


@router.post("/v1/admin/reviews/{review_id}/retry", response_model=ReviewOut)
def retry(review_id: str, rt: RuntimeDep, key: AdminActor) -> ReviewOut:
    """Queue a failed review's ticket creation again, with the mapping as it is now (audited)."""
    return operations.retry_failed(rt, review_id, actor=f"api_key:{key.name}")


@router.get("/v1/doctor")
async def run_doctor(rt: RuntimeDep, key: AdminActor) -> dict[str, Any]:
    """Per connection: do the credentials work, and does everything its mappings name exist
    (read-only metadata calls)? Each problem names the mapping file and line to fix."""
    reports = await run_in_threadpool(doctor.run, rt.settings, mappings=rt.mappings)
    return doctor.as_json(reports)
