"""/v1/stats/routes: roll-out measures per route (bridge/stats.py)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from .. import stats
from ..deps import AdminActor, RuntimeDep

router = APIRouter(tags=["operations"])


@router.get("/v1/stats/routes")
def route_stats(rt: RuntimeDep, key: AdminActor) -> dict[str, Any]:
    """Per route: volume, decision mix, agreement between the agent and the human, time to decision."""
    with rt.db.read() as session:
        return {"routes": stats.route_stats(session, rt.router.routes)}
