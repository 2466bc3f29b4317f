"""What every command shares: the config option, and clear exits for a bad config,
mappings that do not load, or a one-shot transaction's error."""

from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, NoReturn, Optional

import typer

ConfigOpt = Annotated[Optional[Path], typer.Option("--config", "-c", help="Config YAML (default: $HITL_BRIDGE_CONFIG).")]


def read_settings(config: Path | None):
    """The settings, or a clear exit 2 naming the file and what is wrong in it."""
    import yaml
    from pydantic import ValidationError

    from ..config import load_settings

    try:
        return load_settings(config)
    except OSError as exc:
        message = f"cannot read the config file {exc.filename}: {exc.strerror}"
    except yaml.YAMLError as exc:
        message = f"the config file is not valid YAML: {exc}"
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or '(top)'}: {e['msg']}" for e in exc.errors())
        message = f"the config is not valid: {problems}"
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(2)


def refuse_mappings(exc, label: str, code: int) -> NoReturn:
    """Say what is wrong with the mapping files (each detail names file, field and reason), and exit."""
    typer.echo(f"{label}: {exc.message}", err=True)
    for detail in exc.details or []:
        typer.echo(f"  {json.dumps(detail)}", err=True)
    raise typer.Exit(code) from None


def open_runtime(settings):
    """The runtime, or a clear exit 2 when its mappings cannot be loaded."""
    from ..errors import MappingError
    from ..runtime import Runtime

    try:
        return Runtime(settings)
    except MappingError as exc:
        refuse_mappings(exc, "error", 2)


@contextmanager
def transaction(url: str):
    """One transaction for a one-shot command; a BridgeError becomes a clear exit 1."""
    from ..db import Database
    from ..errors import BridgeError

    db = Database(url)
    try:
        with db.transaction() as session:
            yield session
    except BridgeError as exc:
        typer.echo(f"error: {exc.message}", err=True)
        raise typer.Exit(1) from None
    finally:
        db.dispose()


def operator() -> str:
    import getpass

    try:
        return f"cli:{getpass.getuser()}"
    except Exception:  # no user name (some containers): still say where it came from
        return "cli"
