"""/v1/mappings: admins read, change (validated, If-Match) and preview mappings."""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Body, Header, Request, Response
from pydantic import BaseModel

from .. import audit
from ..deps import AdminKey, RuntimeDep
from ..errors import ConflictError, MappingError, NotFoundError
from ..mapping import parse_mapping, render_ticket
from ..schemas import ReviewRequest

router = APIRouter(prefix="/v1/mappings", tags=["mappings"])


def _path(rt, name: str) -> Path:
    if not name.replace("_", "").replace("-", "").isalnum():
        raise NotFoundError(f"no mapping named {name!r}")
    return rt.settings.mappings_dir / f"{name}.yaml"


def _etag(text: str) -> str:
    return '"' + hashlib.sha256(text.encode()).hexdigest()[:16] + '"'


@router.get("/{name}")
def get_mapping(name: str, rt: RuntimeDep, key: AdminKey, response: Response) -> dict[str, Any]:
    path = _path(rt, name)
    if not path.exists():
        raise NotFoundError(f"no mapping named {name!r}")
    text = path.read_text()
    response.headers["ETag"] = _etag(text)
    return {"name": name, "yaml": text, "version": rt.mapping(name).version if name in rt.mappings else None}


@router.put("/{name}")
async def put_mapping(
    name: str,
    request: Request,
    rt: RuntimeDep,
    key: AdminKey,
    response: Response,
    if_match: Annotated[str | None, Header()] = None,
) -> dict[str, Any]:
    """Replace a mapping's YAML. Send the ETag you read as If-Match: a changed file is a 409."""
    text = (await request.body()).decode("utf-8", errors="strict")
    path = _path(rt, name)
    current = path.read_text() if path.exists() else None
    if current is not None and if_match is None:
        raise ConflictError("send If-Match with the ETag you read, so no one else's change is lost", code="if_match_required")
    if current is not None and if_match != _etag(current):
        raise ConflictError("the mapping changed since you read it; reload and apply your change again", code="stale_etag")
    mapping = parse_mapping(text, file=path.name)
    if mapping.name != name:
        raise MappingError(f"{path.name}: name must be {name!r}", details=[{"file": path.name, "field": "name", "reason": "must match the URL"}])
    if mapping.connection not in rt.settings.connections:
        raise MappingError(f"{path.name}: connection {mapping.connection!r} is not configured",
                           details=[{"file": path.name, "field": "connection", "reason": "unknown connection"}])
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{name}.", suffix=".yaml")
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    os.replace(tmp, path)
    rt.reload()
    with rt.db.transaction() as session:
        audit.record(session, "mapping.changed", actor=f"api_key:{key.name}", name=name, version=mapping.version)
    response.headers["ETag"] = _etag(text)
    return {"name": name, "version": mapping.version}


class PreviewIn(BaseModel):
    review: ReviewRequest


@router.post("/{name}/preview")
def preview_mapping(name: str, body: PreviewIn, rt: RuntimeDep, key: AdminKey) -> dict[str, Any]:
    """The exact fields and opening comment the connector would send for this review."""
    mapping = rt.mapping(name)
    rendered = render_ticket(mapping, "rev_preview", body.review, bridge_url=rt.settings.public_url)
    return {"mapping": name, "connection": mapping.connection, "version": mapping.version, **rendered.model_dump()}
