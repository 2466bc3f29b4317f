"""``hitl-bridge mappings``: check, preview and describe the files admins edit."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from .common import ConfigOpt, refuse_mappings

app = typer.Typer(no_args_is_help=True, help="Validate and preview mappings.")


@app.command("validate")
def mappings_validate(
    directory: Annotated[Path, typer.Option("--dir", help="The mappings folder.")] = Path("mappings"),
    config: ConfigOpt = None,
) -> None:
    """Check every mapping and routes.yaml; errors name file, field and reason."""
    from ..errors import MappingError
    from ..mapping import load_mappings
    from ..routing import Router, load_routes

    try:
        mappings = load_mappings(directory)
        router = Router(load_routes(directory))
        router.check_mappings(mappings, set())
    except MappingError as exc:
        refuse_mappings(exc, "invalid", 1)
    typer.echo(f"ok: {len(mappings)} mappings, {len(router.routes)} routes")


@app.command("preview")
def mappings_preview(
    mapping: Annotated[str, typer.Argument(help="Mapping name or file.")],
    review: Annotated[Path, typer.Argument(help="A review request as JSON.")],
    directory: Annotated[Path, typer.Option("--dir")] = Path("mappings"),
) -> None:
    """Print the exact fields and comment the connector would send."""
    from ..errors import MappingError
    from ..mapping import parse_mapping, render_ticket
    from ..schemas import ReviewRequest

    path = Path(mapping) if mapping.endswith((".yaml", ".yml")) else directory / f"{mapping}.yaml"
    try:
        parsed = parse_mapping(path.read_text(), file=str(path))
        request = ReviewRequest.model_validate_json(review.read_text())
        rendered = render_ticket(parsed, "rev_preview", request)
    except MappingError as exc:
        refuse_mappings(exc, "invalid", 1)
    except ValueError as exc:
        typer.echo(f"invalid review: {exc}", err=True)
        raise typer.Exit(1) from None
    typer.echo(json.dumps({"connection": parsed.connection, **rendered.model_dump()}, indent=2, ensure_ascii=False))


@app.command("schema")
def mappings_schema(
    directory: Annotated[Path, typer.Option("--dir", help="The mappings folder.")] = Path("mappings"),
    write: Annotated[bool, typer.Option("--write", help="Write <dir>/schema/*.schema.yaml.")] = False,
) -> None:
    """The JSON Schema of mapping files and routes.yaml (generated from the models)."""
    from .. import file_schema

    if write:
        for path in file_schema.write(directory):
            typer.echo(f"wrote {path}")
        return
    typer.echo(json.dumps({kind: file_schema.schema(kind) for kind in file_schema.KINDS}, indent=2))
