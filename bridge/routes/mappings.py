"""/v1/mappings: admins read, change (validated, versioned, If-Match), restore and preview
mappings and ``routes.yaml``; /v1/schema publishes their JSON Schema."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Header, Path, Request, Response
from pydantic import BaseModel, Field

from .. import file_schema, versions
from ..deps import AdminActor, RuntimeDep
from ..errors import MappingError, NotFoundError
from ..preview import preview
from ..schemas import ReviewRequest

router = APIRouter(prefix="/v1/mappings", tags=["mappings"])
schema_router = APIRouter(prefix="/v1/schema", tags=["mappings"])
IfMatch = Annotated[str | None, Header(description="The ETag you read; a file changed since is a 409.")]


def _author(key) -> str:
    return f"api_key:{key.name}"


async def _text(request: Request) -> str:
    try:
        return (await request.body()).decode("utf-8", errors="strict")
    except UnicodeDecodeError:
        raise MappingError("the body must be UTF-8 YAML text", code="invalid_body") from None


@router.get("")
def list_mappings(rt: RuntimeDep, key: AdminActor) -> dict[str, Any]:
    items = []
    for name in versions.names(rt):
        text = versions.read(rt, name)
        mapping = rt.mappings.get(name)
        items.append({"name": name, "etag": versions.etag(text), "version": mapping.version if mapping else None,
                      "connection": mapping.connection if mapping else None})
    return {"items": items}


@router.get("/{name}")
def get_mapping(name: str, rt: RuntimeDep, key: AdminActor, response: Response) -> dict[str, Any]:
    text = versions.read(rt, name)
    response.headers["ETag"] = versions.etag(text)
    return {"name": name, "yaml": text, "etag": versions.etag(text),
            "version": rt.mapping(name).version if name in rt.mappings else None}


@router.put("/{name}")
async def put_mapping(name: str, request: Request, rt: RuntimeDep, key: AdminActor, response: Response, if_match: IfMatch = None) -> dict[str, Any]:
    """Replace a file's YAML (written as sent, comments and all). Send the ETag you read as
    If-Match: a changed file is a 409. Validated first; recorded as a new version; live at once."""
    saved = versions.save(rt, name, await _text(request), author=_author(key), if_match=if_match)
    response.headers["ETag"] = saved.etag
    return saved.as_dict()


@router.patch("/{name}")
def patch_mapping(name: str, changes: dict[str, Any], rt: RuntimeDep, key: AdminActor, response: Response, if_match: IfMatch = None) -> dict[str, Any]:
    """A JSON merge patch (RFC 7396) applied to the YAML structurally: comments, key order
    and quoting elsewhere in the file are kept."""
    saved = versions.patch(rt, name, changes, author=_author(key), if_match=if_match)
    response.headers["ETag"] = saved.etag
    return saved.as_dict()


@router.post("/{name}/validate")
async def validate_mapping(name: str, request: Request, rt: RuntimeDep, key: AdminActor) -> dict[str, Any]:
    """Check YAML without saving (the admin page calls this as you type). Always 200:
    ``valid`` and, if not, ``problems`` with file, line, field and reason."""
    text = await _text(request)
    saved = None
    try:
        saved = versions.read(rt, name)
    except NotFoundError:
        pass
    diff = versions.unified_diff(saved, text, name, old_label="saved", new_label="editing")
    try:
        checked = versions.validate(rt, name, text)
    except MappingError as exc:
        details = exc.details if isinstance(exc.details, list) else [exc.details or {}]
        problems = [{"file": f"{name}.yaml", "line": None, "field": None, "reason": exc.message, **d} for d in details]
        return {"valid": False, "problems": problems, "message": exc.message, "diff": diff}
    return {"valid": True, "problems": [], "version": checked.mapping_version, "diff": diff}


class PreviewIn(BaseModel):
    review: ReviewRequest | None = Field(default=None, description="A sample review (the built-in one when none is given).")
    review_id: str | None = Field(default=None, max_length=48, description="Render a stored review instead.")
    yaml: str | None = Field(default=None, description="Preview this unsaved text instead of the saved mapping.")


@router.post("/{name}/preview")
def preview_mapping(name: str, body: PreviewIn, rt: RuntimeDep, key: AdminActor) -> dict[str, Any]:
    """The exact fields, opening comment and HTTP requests the connector would send for a
    review, and the ticket as the reviewer will see it. Nothing is sent."""
    mapping = versions.validate(rt, name, body.yaml).mapping if body.yaml is not None else rt.mapping(name)
    if mapping is None:
        raise MappingError("routes.yaml has no preview; preview a mapping", code="not_a_mapping")
    return preview(rt, mapping, review=body.review, review_id=body.review_id)


@router.get("/{name}/versions")
def list_versions(name: str, rt: RuntimeDep, key: AdminActor) -> dict[str, Any]:
    return {"name": name, "items": versions.history(rt, name)}


# Versions count from 1, and the column is a 32-bit integer on PostgreSQL: any other number
# is a 422 saying so, not a database error (a fuzzed -6735966827691700393 was a 500).
VersionNumber = Annotated[int, Path(ge=1, le=2_147_483_647, description="A version's number, from 1.")]


@router.get("/{name}/versions/{number}")
def get_version(name: str, number: VersionNumber, rt: RuntimeDep, key: AdminActor) -> dict[str, Any]:
    return versions.get_version(rt, name, number)


@router.post("/{name}/versions/{number}/restore")
def restore_version(name: str, number: VersionNumber, rt: RuntimeDep, key: AdminActor, response: Response, if_match: IfMatch = None) -> dict[str, Any]:
    """Make an earlier version current again (recorded as a new version)."""
    saved = versions.restore(rt, name, number, author=_author(key), if_match=if_match)
    response.headers["ETag"] = saved.etag
    return saved.as_dict()


@schema_router.get("/{kind}")
def get_schema(kind: str) -> dict[str, Any]:
    """JSON Schema of a mapping file (``mapping``) or ``routes.yaml`` (``routes``)."""
    if kind.removesuffix(".json") not in file_schema.KINDS:
        raise NotFoundError(f"no schema {kind!r}; there are {sorted(file_schema.KINDS)}")
    return file_schema.schema(kind.removesuffix(".json"))
