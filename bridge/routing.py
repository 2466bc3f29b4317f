"""Routes: ordered rules that decide whether a review needs a human, and where it goes.

Conditions are Jinja2 expressions compiled in the sandboxed environment: admins write
``confidence < 0.8 and metadata.tier == 'gold'``; nothing they write can call into Python.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from jinja2 import TemplateError, meta
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from .errors import MappingError
from .mapping import ENV, Mapping, describe_validation_error
from .schemas import ReviewRequest


class Route(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    when: str = Field(default="true", description="Sandboxed Jinja2 expression over the review.")
    mapping: str
    mode: Literal["enforce", "shadow"] = "enforce"
    sample: float = Field(default=1.0, ge=0, le=1, description="Share of matching reviews routed (canary).")

    @model_validator(mode="after")
    def _compiles(self) -> "Route":
        try:
            ENV.compile_expression(self.when)
        except TemplateError as exc:
            raise ValueError(f"`when` does not compile: {exc}") from exc
        return self


class RoutesFile(BaseModel):
    model_config = ConfigDict(extra="forbid")
    routes: list[Route] = Field(default_factory=list)

    @model_validator(mode="after")
    def _unique(self) -> "RoutesFile":
        names = [r.name for r in self.routes]
        duplicates = {n for n in names if names.count(n) > 1}
        if duplicates:
            raise ValueError(f"route names must be unique: {sorted(duplicates)}")
        return self


@dataclass(frozen=True)
class RouteDecision:
    route: Route | None
    reason: str

    @property
    def needs_ticket(self) -> bool:
        return self.route is not None


def routing_context(request: ReviewRequest, *, policy: bool = True, dumped: dict[str, Any] | None = None) -> dict[str, Any]:
    """What route conditions see. ``policy``: run the content detectors (a tenth of intake's
    time, mostly the phone-number scan), skipped when no condition names ``policy``.
    ``dumped``: ``request.model_dump(mode="json")`` when the caller has it already."""
    data = dumped if dumped is not None else request.model_dump(mode="json")
    return {
        "confidence": data["confidence"],
        "cost": data["cost"],
        "title": data["title"],
        "actions": data["action_requests"],
        "action_names": [a["name"] for a in data["action_requests"]],
        "metadata": data["metadata"],
        "origin": data["origin"],
        "allowed_decisions": data["allowed_decisions"],
        "requested_by": data["requested_by"],
        "policy": _policy(request) if policy else {},
    }


def _policy(request: ReviewRequest) -> dict[str, Any]:
    from .policy import detect  # content policy detectors (issue 9)

    return detect(request)


def sample_draw(review_id: str, route_name: str) -> float:
    """A stable number in [0, 1) per review and route: a retried submission routes the same."""
    digest = hashlib.sha256(f"{route_name}:{review_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


class Router:
    def __init__(self, routes: list[Route]):
        self.routes = routes
        self._compiled = [(route, ENV.compile_expression(route.when)) for route in routes]
        self._needs_policy = any("policy" in meta.find_undeclared_variables(ENV.parse(f"{{{{ {route.when} }}}}"))
                                 for route in routes)

    def route(self, review_id: str, request: ReviewRequest, *, dumped: dict[str, Any] | None = None) -> RouteDecision:
        context = routing_context(request, policy=self._needs_policy, dumped=dumped)
        for route, condition in self._compiled:
            try:
                matched = bool(condition(**context))
            except Exception as exc:  # a condition over data the review lacks: not a match
                matched = False
                _ = exc
            if not matched:
                continue
            if route.sample < 1 and sample_draw(review_id, route.name) >= route.sample:
                continue
            return RouteDecision(route, f"matched route {route.name!r}: {route.when}")
        return RouteDecision(None, "no route requires review" if self.routes else "no routes are configured")

    def check_mappings(self, mappings: dict[str, Mapping], connections: set[str]) -> None:
        for route in self.routes:
            if route.mapping not in mappings:
                raise MappingError(
                    f"routes.yaml: route {route.name!r} names mapping {route.mapping!r}, which does not exist",
                    details=[{"file": "routes.yaml", "field": f"{route.name}.mapping", "reason": "unknown mapping"}],
                )


def parse_routes(text: str, *, file: str = "routes.yaml") -> list[Route]:
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        line = getattr(getattr(exc, "problem_mark", None), "line", None)
        raise MappingError(
            f"{file}: not valid YAML: {exc}",
            details=[{"file": file, "line": None if line is None else line + 1, "reason": str(exc)}],
        ) from exc
    try:
        return RoutesFile.model_validate(data).routes
    except ValidationError as exc:
        details = describe_validation_error(exc, file, text)
        raise MappingError(f"{file}: {details[0]['field']}: {details[0]['reason']}", details=details) from exc


def load_routes(directory: Path) -> list[Route]:
    path = directory / "routes.yaml"
    return parse_routes(path.read_text(), file=str(path)) if path.exists() else []
