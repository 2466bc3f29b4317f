"""The ticket systems' side: check each connection, and set one up to send webhooks."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from .common import ConfigOpt, read_settings, refuse_mappings

app = typer.Typer()
setup_app = typer.Typer(no_args_is_help=True, help="Configure a ticket system to send webhooks.")
app.add_typer(setup_app, name="setup")


@app.command()
def doctor(
    config: ConfigOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Check each connection's credentials and that everything its mappings name exists
    (project, issue type, fields, statuses, tables, groups, options, picklist values)."""
    from .. import doctor as doctor_mod
    from ..errors import MappingError

    settings = read_settings(config)
    try:
        reports = doctor_mod.run(settings)
    except MappingError as exc:
        refuse_mappings(exc, "invalid mappings", 1)
    if as_json:
        typer.echo(json.dumps(doctor_mod.as_json(reports), indent=2))
    for report in reports if not as_json else ():
        names = ", ".join(report.mappings) or "no mappings"
        if report.ok:
            typer.echo(f"ok    {report.name} ({report.type}): signed in as {report.account}; {names}")
            continue
        typer.echo(f"FAIL  {report.name} ({report.type}): {len(report.problems)} problem(s); {names}")
        for problem in report.problems:
            typer.echo(f"      {problem.location()}: {problem.message}")
    raise typer.Exit(0 if all(r.ok for r in reports) else 1)


@setup_app.command("zendesk")
def setup_zendesk(
    connection: str,
    url: Annotated[str, typer.Option(help="The bridge's public base URL.")],
    config: ConfigOpt = None,
) -> None:
    """Create (once) the Zendesk webhook and trigger that notify the bridge."""
    from connectors import connector_for

    settings = read_settings(config)
    conn = settings.connections.get(connection)
    if conn is None or conn.type != "zendesk":
        typer.echo(f"no zendesk connection named {connection!r}", err=True)
        raise typer.Exit(1)
    connector = connector_for(conn)
    try:
        result = connector.ensure_webhook_and_trigger(endpoint_url=f"{url.rstrip('/')}/v1/webhooks/{connection}")
    finally:
        connector.close()  # no keep-alive sockets left behind (CliRunner runs in-process)
    secret = result.pop("signing_secret", None)
    typer.echo(json.dumps(result, indent=2))
    if secret:
        typer.echo("Put the webhook's signing secret in the connection's webhook_secrets (shown once):", err=True)
        typer.echo(secret, err=True)


