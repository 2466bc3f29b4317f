"""/v1/stats/routes: roll-out measures per route (bridge/stats.py)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query

from .. import stats
from ..deps import AdminActor, RuntimeDep

router = APIRouter(tags=["operations"])


@router.get("/v1/stats/routes")
def route_stats(rt: RuntimeDep, key: AdminActor,
                days: Annotated[int, Query(ge=1, le=3650, description="Reviews submitted in the last this many days.")]
                = stats.DEFAULT_DAYS) -> dict[str, Any]:
    """Per route: volume, decision mix, agreement between the agent and the human, time to decision."""
    since = stats.window_start(days)
    with rt.db.read() as session:
        routes = stats.route_stats(session, rt.router.routes, since=since)
    return {"days": days, "since": since.isoformat(), "routes": routes}
