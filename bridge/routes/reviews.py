"""/v1/reviews: submit, read, long-poll, cancel, list, and an admin's reversal of a decision."""

from __future__ import annotations

import asyncio
import time
from typing import Annotated

from fastapi import APIRouter, Header, Path, Query, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse

from .. import reversal, reviews
from . import run_write
from ..deps import AdminKey, ReadKey, RuntimeDep, WriteKey
from ..schemas import DecisionRecord, DecisionReversal, DecisionWaitOut, ErrorOut, ReviewOut, ReviewPage, ReviewRequest, Status

router = APIRouter(prefix="/v1/reviews", tags=["reviews"])
ERRORS = {r: {"model": ErrorOut} for r in (400, 401, 403, 404, 409, 413, 422, 429)}
ReviewId = Annotated[str, Path(pattern=r"^rev_[0-9a-f]{28}$", description="The review's id.")]


@router.post("", status_code=201, response_model=ReviewOut, responses=ERRORS)
async def submit_review(
    body: ReviewRequest,
    rt: RuntimeDep,
    key: WriteKey,
    idempotency_key: Annotated[str | None, Header(max_length=255)] = None,
) -> Response:
    """429 with Retry-After beyond the key's submissions a minute (counted across instances)."""
    review, created = await run_write(rt.db, reviews.submit, rt, body, api_key=key.name, idempotency_key=idempotency_key,
                                      rate_limit=key.rate_limit_per_minute)
    # Serialised here, once: returned as a model, FastAPI would validate and dump it again
    # (the intake's hot path, bench/). ``response_model`` still documents it.
    return Response(review.model_dump_json(), status_code=201 if created else 200, media_type="application/json",
                    headers={"Location": f"/v1/reviews/{review.id}"})


@router.get("", response_model=ReviewPage, responses=ERRORS)
def list_reviews(
    rt: RuntimeDep,
    key: ReadKey,
    status: Status | None = None,
    route: Annotated[str | None, Query(max_length=100)] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
) -> ReviewPage:
    return reviews.list_reviews(rt, status=status, route=route, limit=limit, cursor=cursor)


@router.get("/{review_id}", response_model=ReviewOut, responses=ERRORS)
def get_review(review_id: ReviewId, rt: RuntimeDep, key: ReadKey) -> ReviewOut:
    return reviews.get(rt, review_id)


@router.get(
    "/{review_id}/decision",
    response_model=DecisionWaitOut,
    responses={**ERRORS, 202: {"model": DecisionWaitOut, "description": "No decision yet."}},
)
async def wait_for_decision(
    review_id: ReviewId,
    rt: RuntimeDep,
    key: ReadKey,
    wait: Annotated[float, Query(ge=0, le=60, description="Seconds to wait for a decision.")] = 0,
):
    """Long-poll: 200 with the decision as soon as there is one, else 202 with the status."""
    deadline = time.monotonic() + wait
    pause = 0.05
    while True:
        review, ready = await run_in_threadpool(reviews.decision_if_ready, rt, review_id)
        if ready:
            return DecisionWaitOut(id=review.id, status=Status(review.status), decision=DecisionRecord.model_validate(review.decision))
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            body = DecisionWaitOut(id=review.id, status=Status(review.status))
            return JSONResponse(body.model_dump(mode="json"), status_code=202)
        await asyncio.sleep(min(pause, remaining))
        pause = min(pause * 2, 0.5)


@router.post("/{review_id}/cancel", response_model=ReviewOut, responses=ERRORS)
def cancel_review(review_id: ReviewId, rt: RuntimeDep, key: WriteKey) -> ReviewOut:
    return reviews.cancel(rt, review_id, api_key=key.name)


@router.post("/{review_id}/decision", response_model=ReviewOut, responses=ERRORS)
def reverse_decision(review_id: ReviewId, body: DecisionReversal, rt: RuntimeDep, key: AdminKey) -> ReviewOut:
    """Admins: reverse a decided review's decision with a new one (checked as a reviewer's
    is) and a reason. The decision gets the next ``version``; the audit trail keeps both; the
    agent is sent the new version (callback ``type: review.decision_reversed`` with a new
    ``webhook-id``; a LangGraph thread resumed already cannot be resumed again, so that
    delivery is recorded as ``undeliverable``); the ticket gets a comment. 409 unless decided."""
    return reversal.reverse_review(rt, review_id, body, actor=f"api_key:{key.name}")
