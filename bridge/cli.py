"""The ``hitl-bridge`` command line."""

from __future__ import annotations

import json
import secrets
import signal
import sys
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, NoReturn, Optional

import typer

app = typer.Typer(no_args_is_help=True, help="Human approvals for AI agents inside your ticket tools.")
mappings_app = typer.Typer(no_args_is_help=True, help="Validate and preview mappings.")
keys_app = typer.Typer(no_args_is_help=True, help="API keys: create, list, revoke (stored hashed; `new` prints a config entry).")
audit_app = typer.Typer(no_args_is_help=True, help="The audit trail.")
setup_app = typer.Typer(no_args_is_help=True, help="Configure a ticket system to send webhooks.")
app.add_typer(mappings_app, name="mappings")
app.add_typer(keys_app, name="keys")
app.add_typer(audit_app, name="audit")
app.add_typer(setup_app, name="setup")
jobs_app = typer.Typer(no_args_is_help=True, help="The dead-letter list: jobs that ran out of attempts.")
app.add_typer(jobs_app, name="jobs")

ConfigOpt = Annotated[Optional[Path], typer.Option("--config", "-c", help="Config YAML (default: $HITL_BRIDGE_CONFIG).")]


def _settings(config: Path | None):
    """The settings, or a clear exit 2 naming the file and what is wrong in it."""
    import yaml
    from pydantic import ValidationError

    from .config import load_settings

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


def _refuse_mappings(exc, label: str, code: int) -> NoReturn:
    """Say what is wrong with the mapping files (each detail names file, field and reason), and exit."""
    typer.echo(f"{label}: {exc.message}", err=True)
    for detail in exc.details or []:
        typer.echo(f"  {json.dumps(detail)}", err=True)
    raise typer.Exit(code) from None


def _runtime(settings):
    """The runtime, or a clear exit 2 when its mappings cannot be loaded."""
    from .errors import MappingError
    from .runtime import Runtime

    try:
        return Runtime(settings)
    except MappingError as exc:
        _refuse_mappings(exc, "error", 2)


@contextmanager
def _transaction(url: str):
    """One transaction for a one-shot command; a BridgeError becomes a clear exit 1."""
    from .db import Database
    from .errors import BridgeError

    db = Database(url)
    try:
        with db.transaction() as session:
            yield session
    except BridgeError as exc:
        typer.echo(f"error: {exc.message}", err=True)
        raise typer.Exit(1) from None
    finally:
        db.dispose()


@app.command()
def serve(
    config: ConfigOpt = None,
    sandbox: Annotated[bool, typer.Option("--sandbox", help="No credentials: emulators, SQLite, a reviewer page.")] = False,
    host: str = "127.0.0.1",
    port: int = 8080,
    database: Annotated[Optional[str], typer.Option(help="Sandbox database file or URL.")] = None,
    worker: Annotated[bool, typer.Option(help="Run the worker in this process.")] = True,
) -> None:
    """Run the API (and, by default, the worker)."""
    import uvicorn

    from . import logs
    from .app import create_app

    info = None
    if sandbox:
        from . import sandbox as sandbox_mod

        settings, info = sandbox_mod.build(host=host, port=port, database=database)
    else:
        settings = _settings(config)
    settings = settings.model_copy(update={"run_worker": worker and settings.run_worker})
    logs.configure(settings.log_level)
    runtime = _runtime(settings)
    application = create_app(settings, runtime=runtime)
    application.state.sandbox = info
    if info is not None:
        keys = info.api_keys
        typer.echo(
            f"\nhitl-bridge sandbox on http://{host}:{port}\n"
            f"  reviewer page : http://{host}:{port}/sandbox/ui\n"
            f"  sandbox facts : http://{host}:{port}/sandbox\n"
            f"  agent API key : {keys['agent']}\n"
            f"  admin API key : {keys['admin']}\n\n"
            "Submit a first review:\n"
            f"  curl -s -X POST http://{host}:{port}/v1/reviews -H 'Authorization: Bearer {keys['agent']}' "
            "-H 'Content-Type: application/json' -d '{\"title\": \"Refund $750 to order A-100\", "
            "\"action_requests\": [{\"name\": \"issue_refund\", \"args\": {\"order_id\": \"A-100\", \"amount\": 750}}], "
            "\"confidence\": 0.62, \"metadata\": {\"queue\": \"jira\"}}'\n",
            err=True,
        )
    try:
        uvicorn.run(application, host=host, port=port, log_config=None, access_log=False)
    finally:
        runtime.close()
        if info is not None:
            info.stop()


@app.command("worker")
def run_worker(config: ConfigOpt = None) -> None:
    """Run the worker alone (scale out next to API-only instances)."""
    from . import logs, versions
    from .migrate import upgrade
    from .worker import Worker

    settings = _settings(config)
    logs.configure(settings.log_level)
    if settings.auto_migrate:
        upgrade(settings.database_url)
    runtime = _runtime(settings)
    stop_checkpoints = runtime.db.checkpoint_in_background()
    follower = versions.Follower(runtime, settings.mappings_follow_seconds).start()  # it routes LangSmith runs
    worker = Worker(runtime)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    worker.start()
    watcher = None
    if settings.langgraph:
        from .watcher import InterruptWatcher

        watcher = InterruptWatcher(runtime)
        watcher.start()
    stop.wait()
    if watcher is not None:
        watcher.stop()
    worker.stop()
    follower.stop()
    stop_checkpoints()
    runtime.close()


@mappings_app.command("validate")
def mappings_validate(
    directory: Annotated[Path, typer.Option("--dir", help="The mappings folder.")] = Path("mappings"),
    config: ConfigOpt = None,
) -> None:
    """Check every mapping and routes.yaml; errors name file, field and reason."""
    from .errors import MappingError
    from .mapping import load_mappings
    from .routing import Router, load_routes

    try:
        mappings = load_mappings(directory)
        router = Router(load_routes(directory))
        router.check_mappings(mappings, set())
    except MappingError as exc:
        _refuse_mappings(exc, "invalid", 1)
    typer.echo(f"ok: {len(mappings)} mappings, {len(router.routes)} routes")


@mappings_app.command("preview")
def mappings_preview(
    mapping: Annotated[str, typer.Argument(help="Mapping name or file.")],
    review: Annotated[Path, typer.Argument(help="A review request as JSON.")],
    directory: Annotated[Path, typer.Option("--dir")] = Path("mappings"),
) -> None:
    """Print the exact fields and comment the connector would send."""
    from .errors import MappingError
    from .mapping import parse_mapping, render_ticket
    from .schemas import ReviewRequest

    path = Path(mapping) if mapping.endswith((".yaml", ".yml")) else directory / f"{mapping}.yaml"
    try:
        parsed = parse_mapping(path.read_text(), file=str(path))
        request = ReviewRequest.model_validate_json(review.read_text())
        rendered = render_ticket(parsed, "rev_preview", request)
    except MappingError as exc:
        _refuse_mappings(exc, "invalid", 1)
    except ValueError as exc:
        typer.echo(f"invalid review: {exc}", err=True)
        raise typer.Exit(1) from None
    typer.echo(json.dumps({"connection": parsed.connection, **rendered.model_dump()}, indent=2, ensure_ascii=False))


@keys_app.command("new")
def keys_new(
    name: str,
    scope: Annotated[list[str], typer.Option("--scope", help="reviews:write, reviews:read, admin, audit")] = ["reviews:write", "reviews:read"],
) -> None:
    """Make a key: prints the key once (give it to the agent) and the config entry."""
    from .config import hash_api_key

    key = "hb_" + secrets.token_urlsafe(32)
    typer.echo(f"key (shown once): {key}")
    typer.echo("config entry:\n" + json.dumps({"name": name, "hash": hash_api_key(key), "scopes": scope}))


@audit_app.command("verify")
def audit_verify(config: ConfigOpt = None) -> None:
    """Check the audit trail's hash chain; exit 1 naming the first bad event."""
    from . import audit

    with _transaction(_settings(config).database_url) as session:
        result = audit.verify(session)
    if not result.ok:
        typer.echo(f"audit trail broken after {result.checked} good events: {result.problem}", err=True)
        raise typer.Exit(1)
    typer.echo(f"ok: {result.checked} events, chain intact")


def _operator() -> str:
    import getpass

    try:
        return f"cli:{getpass.getuser()}"
    except Exception:  # no user name (some containers): still say where it came from
        return "cli"


@jobs_app.command("list")
def jobs_list(
    config: ConfigOpt = None,
    state: Annotated[str, typer.Option(help="dead (default), pending, running, done, cancelled or discarded.")] = "dead",
    limit: int = 100,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per line.")] = False,
) -> None:
    """List jobs (by default the dead-letter list), oldest first."""
    from . import outbox

    with _transaction(_settings(config).database_url) as session:
        jobs = outbox.list_jobs(session, state=state, limit=limit)
        rows = [
            {"id": j.id, "review_id": j.review_id, "kind": j.kind, "state": j.state, "attempts": j.attempts,
             "last_error": j.last_error, "finished_at": j.finished_at.isoformat() if j.finished_at else None}
            for j in jobs
        ]
    for row in rows:
        if as_json:
            typer.echo(json.dumps(row))
        else:
            typer.echo(f"{row['id']:>8}  {row['kind']:<18} {row['review_id']}  attempts={row['attempts']}  {row['last_error'] or ''}")
    if not as_json:
        typer.echo(f"{len(rows)} {state} job(s)", err=True)


def _dead_letter_action(action: str, job_ids: list[int], every: bool, config: Path | None) -> None:
    from . import outbox

    if not job_ids and not every:
        typer.echo("name job ids, or --all for the whole dead-letter list", err=True)
        raise typer.Exit(2)
    with _transaction(_settings(config).database_url) as session:
        if every:
            job_ids = [j.id for j in outbox.list_jobs(session, state="dead", limit=1_000_000)]
        change = outbox.retry_dead if action == "retry" else outbox.discard_dead
        done = [j.id for j in change(session, job_ids, actor=_operator())]
    missing = sorted(set(job_ids) - set(done))
    typer.echo(f"{'retried' if action == 'retry' else 'discarded'}: {len(done)} job(s)")
    if missing:
        typer.echo(f"not in the dead-letter list: {', '.join(map(str, missing))}", err=True)
        raise typer.Exit(1)


@jobs_app.command("retry")
def jobs_retry(
    job_ids: Annotated[Optional[list[int]], typer.Argument(help="Dead job ids.")] = None,
    every: Annotated[bool, typer.Option("--all", help="Every dead job.")] = False,
    config: ConfigOpt = None,
) -> None:
    """Run dead jobs again now, with a fresh set of attempts (audited)."""
    _dead_letter_action("retry", job_ids or [], every, config)


@jobs_app.command("discard")
def jobs_discard(
    job_ids: Annotated[Optional[list[int]], typer.Argument(help="Dead job ids.")] = None,
    every: Annotated[bool, typer.Option("--all", help="Every dead job.")] = False,
    config: ConfigOpt = None,
) -> None:
    """Give up on dead jobs for good (audited; the audit trail keeps them)."""
    _dead_letter_action("discard", job_ids or [], every, config)


@app.command()
def doctor(
    config: ConfigOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Check each connection's credentials and that everything its mappings name exists
    (project, issue type, fields, statuses, tables, groups, options, picklist values)."""
    from . import doctor as doctor_mod
    from .errors import MappingError

    settings = _settings(config)
    try:
        reports = doctor_mod.run(settings)
    except MappingError as exc:
        _refuse_mappings(exc, "invalid mappings", 1)
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


@mappings_app.command("schema")
def mappings_schema(
    directory: Annotated[Path, typer.Option("--dir", help="The mappings folder.")] = Path("mappings"),
    write: Annotated[bool, typer.Option("--write", help="Write <dir>/schema/*.schema.yaml.")] = False,
) -> None:
    """The JSON Schema of mapping files and routes.yaml (generated from the models)."""
    from . import file_schema

    if write:
        for path in file_schema.write(directory):
            typer.echo(f"wrote {path}")
        return
    typer.echo(json.dumps({kind: file_schema.schema(kind) for kind in file_schema.KINDS}, indent=2))


@setup_app.command("zendesk")
def setup_zendesk(
    connection: str,
    url: Annotated[str, typer.Option(help="The bridge's public base URL.")],
    config: ConfigOpt = None,
) -> None:
    """Create (once) the Zendesk webhook and trigger that notify the bridge."""
    from connectors import connector_for

    settings = _settings(config)
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


# ----- governance (issue 9): API keys in the database, audit export, retention -----------------


@keys_app.command("create")
def keys_create(
    name: str,
    scope: Annotated[list[str], typer.Option("--scope", help="reviews:write, reviews:read, admin, audit")] = ["reviews:write", "reviews:read"],
    expires_in_days: Annotated[Optional[float], typer.Option(help="Refuse the key after this many days.")] = None,
    rate_limit: Annotated[Optional[int], typer.Option(help="Review submissions a minute (429 beyond).")] = None,
    config: ConfigOpt = None,
) -> None:
    """Make a key stored (hashed) in the database; prints it once. Audited."""
    from datetime import timedelta

    from . import keys
    from .db import utcnow

    with _transaction(_settings(config).database_url) as session:
        expires = utcnow() + timedelta(days=expires_in_days) if expires_in_days else None
        key = keys.create(session, name, scope, actor=_operator(), expires_at=expires, rate_limit_per_minute=rate_limit)
    typer.echo(f"key (shown once): {key}")


@keys_app.command("list")
def keys_list(config: ConfigOpt = None) -> None:
    """Keys in the database (never the keys themselves) and the config's key names."""
    from . import keys

    settings = _settings(config)
    with _transaction(settings.database_url) as session:
        rows = keys.list_keys(session)
    for row in rows:
        typer.echo(json.dumps(row))
    for key in settings.api_keys:
        typer.echo(json.dumps({"name": key.name, "scopes": key.scopes, "state": "config"}))


@keys_app.command("revoke")
def keys_revoke(name: str, config: ConfigOpt = None) -> None:
    """Revoke a key made with `keys create` (refused from the next request on). Audited."""
    from . import keys

    with _transaction(_settings(config).database_url) as session:
        keys.revoke(session, name, actor=_operator())
    typer.echo(f"revoked: {name}")


@audit_app.command("export")
def audit_export(
    config: ConfigOpt = None,
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="File to write (default: stdout).")] = None,
    after: Annotated[int, typer.Option(help="Only events after this id (incremental export).")] = 0,
) -> None:
    """Write the audit trail as JSON Lines (one event per line, with its hashes) for a SIEM."""
    from sqlalchemy import select

    from . import audit
    from .db import Database
    from .models import AuditEvent

    db = Database(_settings(config).database_url)
    stream = out.open("w") if out else sys.stdout
    count = 0
    try:
        while True:
            with db.transaction() as session:
                batch = list(session.execute(
                    select(AuditEvent).where(AuditEvent.id > after).order_by(AuditEvent.id).limit(1000)).scalars())
                rows = audit.with_content(session, batch)
            if not rows:
                break
            for row in rows:
                stream.write(json.dumps(row, ensure_ascii=False, sort_keys=True) + "\n")
            count += len(rows)
            after = rows[-1]["id"]
    finally:
        if out:
            stream.close()
        db.dispose()
    typer.echo(f"exported {count} events", err=True)


retention_app = typer.Typer(no_args_is_help=True, help="Purge finished reviews' content after the retention period.")
app.add_typer(retention_app, name="retention")


@retention_app.command("purge")
def retention_purge(
    config: ConfigOpt = None,
    older_than_days: Annotated[Optional[float], typer.Option(help="Default: the config's retention_days.")] = None,
) -> None:
    """Purge the content of reviews finished longer ago than the retention period (run it
    daily, e.g. from cron); `audit verify` keeps passing."""
    from . import retention

    settings = _settings(config)
    days = older_than_days or settings.retention_days
    if not days:
        typer.echo("no retention period: set retention_days in the config or pass --older-than-days", err=True)
        raise typer.Exit(2)
    with _transaction(settings.database_url) as session:
        purged = retention.purge(session, older_than_days=days, actor=_operator())
    typer.echo(f"purged {len(purged)} review(s)")


reviews_app = typer.Typer(no_args_is_help=True, help="Reviews: reverse a decision with a new, audited one.")
app.add_typer(reviews_app, name="reviews")


@reviews_app.command("reverse")
def reviews_reverse(
    review_id: str,
    reason: Annotated[str, typer.Option(help="Why (audited, and posted on the ticket).")],
    decision: Annotated[Optional[str], typer.Option(help="approve, reject or respond, for every action.")] = None,
    message: Annotated[Optional[str], typer.Option(help="The reject or respond message.")] = None,
    decisions: Annotated[Optional[str], typer.Option(help="The decisions as a JSON list instead (e.g. an edit).")] = None,
    config: ConfigOpt = None,
) -> None:
    """Replace a decided review's decision with a new version; the agent is sent it (as
    POST /v1/reviews/{id}/decision does)."""
    from pydantic import TypeAdapter, ValidationError

    from . import reversal
    from .models import Review
    from .schemas import Decision

    if (decision is None) == (decisions is None) or not reason.strip():
        typer.echo("give --reason and one of --decision or --decisions", err=True)
        raise typer.Exit(2)
    settings = _settings(config)
    with _transaction(settings.database_url) as session:
        review = session.get(Review, review_id)
        count = len((review.request or {}).get("action_requests") or []) if review else 1
        try:
            new = (TypeAdapter(list[Decision]).validate_json(decisions) if decisions
                   else [Decision(type=decision, message=message)] * count)
        except ValidationError as exc:
            typer.echo(f"error: invalid decision: {exc.errors()[0]['msg']}", err=True)
            raise typer.Exit(2) from None
        row = reversal.reverse(session, review_id, new, reason=reason.strip(), actor=_operator(),
                               max_attempts=settings.worker.max_attempts, langsmith=settings.langsmith is not None)
        out = {"id": row.id, "status": row.status, "version": row.decision["version"]}
    typer.echo(json.dumps(out))


def main() -> None:  # pragma: no cover
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
