"""Roll-out measures per route: what the agent did (its proposal, auto-approved on shadow
routes) against what the human decided, so a team can see when a route is safe to automate.

- ``volume``: reviews routed there; ``decided``: of those, decided by a human on the ticket.
- ``decision_mix``: the human decisions by type (approve, edit, reject, respond), plus
  ``expired`` and ``pending``.
- ``agreement_rate``: the share of human decisions that approved the agent's proposal as is.
- ``time_to_decision_seconds``: median, p90 and mean from submission to the human decision.
"""

from __future__ import annotations

import statistics
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from .decide import overall_type
from .models import Review
from .schemas import Decision


def _human(review: Review) -> tuple[str | None, float | None]:
    """(the human's overall decision type, seconds to it), or (None, None)."""
    record = review.shadow_decision if review.route_mode == "shadow" else review.decision
    if not record or record.get("source") not in ("ticket", "reversal"):
        return None, None
    kind = overall_type([Decision.model_validate(d) for d in record.get("decisions") or []])
    decided_at = record.get("decided_at")
    seconds = None
    if decided_at and review.created_at and record.get("source") == "ticket":  # an admin's reversal: its type, not its time
        when = datetime.fromisoformat(decided_at) if isinstance(decided_at, str) else decided_at
        seconds = max(0.0, (when - review.created_at).total_seconds())
    return kind, seconds


def route_stats(session: Session, routes: list[Any]) -> list[dict[str, Any]]:
    configured = {r.name: r for r in routes}
    rows = session.execute(select(Review).where(Review.route_name.is_not(None)).execution_options(yield_per=1000)).scalars()
    by_route: dict[str, dict[str, Any]] = {}
    for review in rows:
        entry = by_route.setdefault(review.route_name, {"volume": 0, "mix": {}, "times": [], "modes": set()})
        entry["volume"] += 1
        entry["modes"].add(review.route_mode or "enforce")
        kind, seconds = _human(review)
        if kind is None:
            kind = review.status if review.status in ("expired", "cancelled", "failed") else "pending"
        elif seconds is not None:
            entry["times"].append(seconds)
        entry["mix"][kind] = entry["mix"].get(kind, 0) + 1
    out = []
    for name in sorted(set(by_route) | set(configured)):
        entry = by_route.get(name, {"volume": 0, "mix": {}, "times": [], "modes": set()})
        route = configured.get(name)
        human = sum(entry["mix"].get(k, 0) for k in ("approve", "edit", "reject", "respond"))
        times = sorted(entry["times"])
        out.append({
            "route": name,
            "mode": route.mode if route else "/".join(sorted(entry["modes"])) or None,
            "sample": route.sample if route else None,
            "configured": route is not None,
            "volume": entry["volume"],
            "decided": human,
            "decision_mix": entry["mix"],
            "agreement_rate": round(entry["mix"].get("approve", 0) / human, 4) if human else None,
            "time_to_decision_seconds": {
                "median": statistics.median(times),
                "p90": times[min(len(times) - 1, int(0.9 * len(times)))],
                "mean": statistics.fmean(times),
            } if times else None,
        })
    return out
