"""Content policy detectors, computed on a review before routing, so a route can say "any
reply with PII goes to the compliance queue" (``when: "policy.pii"``).

``policy`` in a route condition holds: ``pii`` (bool) and ``pii_kinds`` (email, phone,
card, iban, national_id, secret) found in the actions' arguments, the reasoning or the
input; ``hedging`` (bool) and ``hedges`` (the phrases) in a drafted reply; ``schema_ok``
(bool) and ``schema_failures`` (action names whose arguments fail the ``args_schema`` the
agent declared); ``max_amount`` (the largest amount among the arguments and metadata, 0
when there is none).
"""

from __future__ import annotations

import json
import re
from typing import Any

import jsonschema

from .mapping import RedactionSpec
from .schemas import ReviewRequest

HEDGES = re.compile(
    r"\b(i think|i believe|i guess|i'm not sure|i am not sure|not sure|probably|maybe|perhaps|possibly|"
    r"might be|it seems|as far as i know|should be fine|hopefully)\b",
    re.IGNORECASE,
)
AMOUNT_KEYS = {"amount", "total", "refund_amount", "price", "value", "sum", "credit"}
_DETECT_ALL = RedactionSpec(clearance="public")


def _amounts(value: Any, key: str | None = None) -> list[float]:
    if isinstance(value, dict):
        return [a for k, v in value.items() for a in _amounts(v, str(k).lower())]
    if isinstance(value, list):
        return [a for v in value for a in _amounts(v, key)]
    if key in AMOUNT_KEYS and isinstance(value, (int, float)) and not isinstance(value, bool):
        return [float(value)]
    if key in AMOUNT_KEYS and isinstance(value, str):
        try:
            return [float(value.replace(",", "").lstrip("$€£"))]
        except ValueError:
            return []
    return []


def detect(request: ReviewRequest) -> dict[str, Any]:
    from .redact import findings

    data = request.model_dump(mode="json")
    text = json.dumps([data["action_requests"], data["reasoning"], data["input"], data["title"]], ensure_ascii=False)
    kinds = sorted({f.kind for f in findings(text, _DETECT_ALL)})
    reply = next((a.args.get("body") for a in request.action_requests if a.name == "reply"), None)
    hedges = sorted({m.group(0).lower() for m in HEDGES.finditer(reply)}) if isinstance(reply, str) else []
    failures = []
    for action in request.action_requests:
        if action.args_schema:
            try:
                jsonschema.validate(action.args, action.args_schema)
            except (jsonschema.ValidationError, jsonschema.SchemaError):
                failures.append(action.name)
    amounts = _amounts(data["metadata"]) + _amounts([a["args"] for a in data["action_requests"]])
    return {
        "pii": bool(kinds),
        "pii_kinds": kinds,
        "hedging": bool(hedges),
        "hedges": hedges,
        "schema_ok": not failures,
        "schema_failures": failures,
        "max_amount": max(amounts, default=0.0),
    }
