"""The ``hitl-bridge`` command line, a module per job: running the bridge (``serving``),
the ticket systems' connections, the mapping files, and governance."""

from __future__ import annotations

import typer

from . import connections, governance, mappings, serving

app = typer.Typer(no_args_is_help=True, help="Human approvals for AI agents inside your ticket tools.")
for commands in (serving.app, connections.app, governance.app):
    app.add_typer(commands)
app.add_typer(mappings.app, name="mappings")


def main() -> None:  # pragma: no cover
    app()
