"""Roll-out measures per route: what the agent did (its proposal, auto-approved on shadow
routes) against what the human decided, so a team can see when a route is safe to automate.

- ``volume``: reviews routed there; ``decided``: of those, decided by a human on the ticket.
- ``decision_mix``: the human decisions by type (approve, edit, reject, respond), plus
  ``expired`` and ``pending``.
- ``agreement_rate``: the share of human decisions that approved the agent's proposal as is.
- ``time_to_decision_seconds``: median, p90 and mean from submission to the human decision.

Over the reviews submitted in the last ``days`` (30 by default): what the route does now,
after the last prompt or model change, is what decides a roll-out, and the count costs the
window's reviews, not every review ever stored (ids are time-ordered, so the window is a
range of the primary key: at 100,000 stored the admin page counted all of them, 0.64 s on
SQLite, about 10 times that at 1,000,000).
"""

from __future__ import annotations

import statistics
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session

from .db import utcnow
from .decide import overall_type
from .models import Review
from .schemas import STATUS_FOR_DECISION, Decision


def _human(review: Any) -> tuple[str | None, float | None]:
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


_KIND_OF_STATUS = {status.value: kind for kind, status in STATUS_FOR_DECISION.items()}  # "approved" -> "approve"
_NOT_SHADOW = or_(Review.route_mode.is_(None), Review.route_mode != "shadow")


def _undecided(status: str) -> str:
    """How a review no human decided counts in the mix."""
    return status if status in ("expired", "cancelled", "failed") else "pending"


def _seconds_to_decision(dialect: str) -> Any:
    """Computed by the database: one float a row instead of two timestamps to convert."""
    if dialect == "sqlite":
        return (func.julianday(Review.decided_at) - func.julianday(Review.created_at)) * 86400.0
    return func.extract("epoch", Review.decided_at - Review.created_at)


DEFAULT_DAYS = 30


def window_start(days: float = DEFAULT_DAYS) -> datetime:
    return utcnow() - timedelta(days=days)


def _first_id(at: datetime) -> str:
    """Below every review id made at or after ``at`` (``models.new_id``)."""
    return f"rev_{int(at.timestamp() * 1000):012x}"


def route_stats(session: Session, routes: list[Any], *, since: datetime) -> list[dict[str, Any]]:
    """Counted in the database, not row by row in Python (the admin page asks on every view:
    it read every review whole, 25 s at 100,000 stored). A review outside shadow mode has its
    human decision in its status (a ticket's decision or an admin's reversal sets it); a
    shadow review keeps it beside the automatic approval, so only shadow rows are read."""
    configured = {r.name: r for r in routes}
    by_route: dict[str, dict[str, Any]] = {}

    def entry(name: str) -> dict[str, Any]:
        return by_route.setdefault(name, {"volume": 0, "mix": {}, "times": [], "modes": set()})

    def count(e: dict[str, Any], kind: str, n: int = 1) -> None:
        e["mix"][kind] = e["mix"].get(kind, 0) + n

    # The window is a range of the primary key (ids are time-ordered: models.new_id), closed
    # a minute ahead for other instances' clocks. Not open-ended and not with "route_name IS
    # NOT NULL": with either, SQLite's planner walked the whole route index instead.
    in_window = Review.id.between(_first_id(since), _first_id(utcnow() + timedelta(minutes=1)))
    for name, mode, status, n in session.execute(
        select(Review.route_name, Review.route_mode, Review.status, func.count()).where(in_window)
        .group_by(Review.route_name, Review.route_mode, Review.status)
    ):
        if name is None:  # no route
            continue
        e = entry(name)
        e["volume"] += n
        e["modes"].add(mode or "enforce")
        if mode != "shadow":
            count(e, _KIND_OF_STATUS.get(status) or _undecided(status), n)
    for name, seconds in session.execute(
        select(Review.route_name, _seconds_to_decision(session.get_bind().dialect.name))
        .where(in_window, _NOT_SHADOW, Review.decided_at.is_not(None), Review.decision["source"].as_string() == "ticket")
    ):
        if name is not None:
            entry(name)["times"].append(max(0.0, float(seconds)))
    shadow = select(Review.route_name, Review.route_mode, Review.status, Review.created_at, Review.decision,
                    Review.shadow_decision).where(in_window, Review.route_mode == "shadow")
    for review in session.execute(shadow.execution_options(yield_per=1000)):
        e = entry(review.route_name)
        kind, seconds = _human(review)
        if kind is None:
            kind = _undecided(review.status)
        elif seconds is not None:
            e["times"].append(seconds)
        count(e, kind)
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
