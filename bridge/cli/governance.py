"""Governance: API keys, the audit trail, the dead-letter list, retention, and an
admin's reversal of a decision. Each change is audited with the operator's name."""

from __future__ import annotations

import json
import secrets
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from .common import ConfigOpt, operator, read_settings, transaction

app = typer.Typer()
keys_app = typer.Typer(no_args_is_help=True, help="API keys: create, list, revoke (stored hashed; `new` prints a config entry).")
audit_app = typer.Typer(no_args_is_help=True, help="The audit trail.")
jobs_app = typer.Typer(no_args_is_help=True, help="The dead-letter list: jobs that ran out of attempts.")
retention_app = typer.Typer(no_args_is_help=True, help="Purge finished reviews' content after the retention period.")
reviews_app = typer.Typer(no_args_is_help=True, help="Reviews: reverse a decision with a new, audited one.")
for sub, name in ((keys_app, "keys"), (audit_app, "audit"), (jobs_app, "jobs"), (retention_app, "retention"), (reviews_app, "reviews")):
    app.add_typer(sub, name=name)


@keys_app.command("new")
def keys_new(
    name: str,
    scope: Annotated[list[str], typer.Option("--scope", help="reviews:write, reviews:read, admin, audit")] = ["reviews:write", "reviews:read"],
) -> None:
    """Make a key: prints the key once (give it to the agent) and the config entry."""
    from ..config import hash_api_key

    key = "hb_" + secrets.token_urlsafe(32)
    typer.echo(f"key (shown once): {key}")
    typer.echo("config entry:\n" + json.dumps({"name": name, "hash": hash_api_key(key), "scopes": scope}))


@audit_app.command("verify")
def audit_verify(config: ConfigOpt = None) -> None:
    """Check the audit trail's hash chain; exit 1 naming the first bad event."""
    from .. import audit

    with transaction(read_settings(config).database_url) as session:
        result = audit.verify(session)
    if not result.ok:
        typer.echo(f"audit trail broken after {result.checked} good events: {result.problem}", err=True)
        raise typer.Exit(1)
    typer.echo(f"ok: {result.checked} events, chain intact")


@jobs_app.command("list")
def jobs_list(
    config: ConfigOpt = None,
    state: Annotated[str, typer.Option(help="dead (default), pending, running, done, cancelled or discarded.")] = "dead",
    limit: int = 100,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per line.")] = False,
) -> None:
    """List jobs (by default the dead-letter list), oldest first."""
    from .. import outbox

    with transaction(read_settings(config).database_url) as session:
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
    from .. import outbox

    if not job_ids and not every:
        typer.echo("name job ids, or --all for the whole dead-letter list", err=True)
        raise typer.Exit(2)
    with transaction(read_settings(config).database_url) as session:
        if every:
            job_ids = [j.id for j in outbox.list_jobs(session, state="dead", limit=1_000_000)]
        change = outbox.retry_dead if action == "retry" else outbox.discard_dead
        done = [j.id for j in change(session, job_ids, actor=operator())]
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

    from .. import keys
    from ..db import utcnow

    with transaction(read_settings(config).database_url) as session:
        expires = utcnow() + timedelta(days=expires_in_days) if expires_in_days else None
        key = keys.create(session, name, scope, actor=operator(), expires_at=expires, rate_limit_per_minute=rate_limit)
    typer.echo(f"key (shown once): {key}")


@keys_app.command("list")
def keys_list(config: ConfigOpt = None) -> None:
    """Keys in the database (never the keys themselves) and the config's key names."""
    from .. import keys

    settings = read_settings(config)
    with transaction(settings.database_url) as session:
        rows = keys.list_keys(session)
    for row in rows:
        typer.echo(json.dumps(row))
    for key in settings.api_keys:
        typer.echo(json.dumps({"name": key.name, "scopes": key.scopes, "state": "config"}))


@keys_app.command("revoke")
def keys_revoke(name: str, config: ConfigOpt = None) -> None:
    """Revoke a key made with `keys create` (refused from the next request on). Audited."""
    from .. import keys

    with transaction(read_settings(config).database_url) as session:
        keys.revoke(session, name, actor=operator())
    typer.echo(f"revoked: {name}")


@audit_app.command("export")
def audit_export(
    config: ConfigOpt = None,
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="File to write (default: stdout).")] = None,
    after: Annotated[int, typer.Option(help="Only events after this id (incremental export).")] = 0,
) -> None:
    """Write the audit trail as JSON Lines (one event per line, with its hashes) for a SIEM."""
    from sqlalchemy import select

    from .. import audit
    from ..db import Database
    from ..models import AuditEvent

    db = Database(read_settings(config).database_url)
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


@retention_app.command("purge")
def retention_purge(
    config: ConfigOpt = None,
    older_than_days: Annotated[Optional[float], typer.Option(help="Default: the config's retention_days.")] = None,
) -> None:
    """Purge the content of reviews finished longer ago than the retention period (run it
    daily, e.g. from cron); `audit verify` keeps passing."""
    from .. import retention

    settings = read_settings(config)
    days = older_than_days or settings.retention_days
    if not days:
        typer.echo("no retention period: set retention_days in the config or pass --older-than-days", err=True)
        raise typer.Exit(2)
    with transaction(settings.database_url) as session:
        purged = retention.purge(session, older_than_days=days, actor=operator())
    typer.echo(f"purged {len(purged)} review(s)")


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

    from .. import reversal
    from ..schemas import Decision

    if (decision is None) == (decisions is None) or not reason.strip():
        typer.echo("give --reason and one of --decision or --decisions", err=True)
        raise typer.Exit(2)
    settings = read_settings(config)
    with transaction(settings.database_url) as session:
        try:
            new = (TypeAdapter(list[Decision]).validate_json(decisions) if decisions
                   else reversal.for_every_action(session, review_id, Decision(type=decision, message=message)))
        except ValidationError as exc:
            typer.echo(f"error: invalid decision: {exc.errors()[0]['msg']}", err=True)
            raise typer.Exit(2) from None
        row = reversal.reverse(session, review_id, new, reason=reason.strip(), actor=operator(),
                               max_attempts=settings.worker.max_attempts, langsmith=settings.langsmith is not None)
        out = {"id": row.id, "status": row.status, "version": row.decision["version"]}
    typer.echo(json.dumps(out))
