"""API keys made with ``hitl-bridge keys create``: stored hashed in the database, scoped,
optionally expiring and rate-limited (a window shared by every instance), revocable; every
change is an audited admin action. Keys listed in the config file keep working beside them."""

from __future__ import annotations

import math
import secrets
import time
from datetime import datetime

from sqlalchemy import delete, select
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from . import audit
from .config import ApiKey, hash_api_key
from .db import utcnow
from .errors import BridgeError, ConflictError, NotFoundError
from .models import RateWindow, StoredApiKey

SCOPES = ("reviews:write", "reviews:read", "admin", "audit")


class RateLimitedError(BridgeError):
    status_code = 429
    code = "rate_limited"

    def __init__(self, message: str, *, retry_after: int, details=None):
        super().__init__(message, details=details)
        self.headers = {"Retry-After": str(retry_after)}


def create(
    session: Session,
    name: str,
    scopes: list[str],
    *,
    actor: str,
    expires_at: datetime | None = None,
    rate_limit_per_minute: int | None = None,
) -> str:
    """Make a key; returns it in plain text (shown once, only its hash is stored)."""
    unknown = sorted(set(scopes) - set(SCOPES))
    if unknown or not scopes:
        raise BridgeError(f"unknown or no scopes {unknown}; use {', '.join(SCOPES)}", code="invalid_scope")
    if session.execute(select(StoredApiKey.id).where(StoredApiKey.name == name)).first():
        raise ConflictError(f"a key named {name!r} exists already", code="key_exists")
    key = "hb_" + secrets.token_urlsafe(32)
    session.add(StoredApiKey(name=name, hash=hash_api_key(key), scopes=list(scopes), created_by=actor,
                             expires_at=expires_at, rate_limit_per_minute=rate_limit_per_minute))
    audit.record(session, "admin.key_created", actor=actor, name=name, scopes=list(scopes),
                 expires_at=expires_at.isoformat() if expires_at else None, rate_limit_per_minute=rate_limit_per_minute)
    return key


def revoke(session: Session, name: str, *, actor: str) -> None:
    row = session.execute(select(StoredApiKey).where(StoredApiKey.name == name)).scalar_one_or_none()
    if row is None:
        raise NotFoundError(f"no key named {name!r} (keys in the config file are removed there)")
    if row.revoked_at is None:
        row.revoked_at = utcnow()
        audit.record(session, "admin.key_revoked", actor=actor, name=name)


def list_keys(session: Session) -> list[dict]:
    now = utcnow()
    return [
        {"name": r.name, "scopes": r.scopes, "created_at": r.created_at.isoformat(), "created_by": r.created_by,
         "expires_at": r.expires_at.isoformat() if r.expires_at else None,
         "revoked_at": r.revoked_at.isoformat() if r.revoked_at else None,
         "rate_limit_per_minute": r.rate_limit_per_minute,
         "state": "revoked" if r.revoked_at else ("expired" if r.expires_at and r.expires_at <= now else "active")}
        for r in session.execute(select(StoredApiKey).order_by(StoredApiKey.id)).scalars()
    ]


def lookup(rt, token: str) -> tuple[ApiKey | None, str | None]:
    """(key, None) for a valid key; (None, why) otherwise ("invalid" or "expired")."""
    found = configured(rt, token)
    return found if found is not None else stored(rt, token)


def configured(rt, token: str) -> tuple[ApiKey | None, str | None] | None:
    """``lookup`` among the config file's keys, without the database: None when the token
    is not one of them (it may be a key made with `hitl-bridge keys create`)."""
    key = rt.settings.key_by_hash().get(hash_api_key(token))
    if key is None:
        return None
    if key.expires_at is not None and key.expires_at <= utcnow():
        return None, "expired"
    return key, None


def stored(rt, token: str) -> tuple[ApiKey | None, str | None]:
    """``lookup`` among the keys made with `hitl-bridge keys create` (a database read)."""
    digest = hash_api_key(token)
    with rt.db.read() as session:
        row = session.execute(select(StoredApiKey).where(StoredApiKey.hash == digest)).scalar_one_or_none()
        return _usable(row, utcnow())


def by_name(rt, name: str) -> ApiKey | None:
    """The usable key called ``name`` (config first, then the database; revoked or expired:
    None). The admin page's session cookie names its key and is checked against it."""
    now = utcnow()
    key = next((k for k in rt.settings.api_keys if k.name == name), None)
    if key is not None:
        return key if key.expires_at is None or key.expires_at > now else None
    with rt.db.read() as session:
        row = session.execute(select(StoredApiKey).where(StoredApiKey.name == name)).scalar_one_or_none()
        return _usable(row, now)[0]


def _usable(row: StoredApiKey | None, now: datetime) -> tuple[ApiKey | None, str | None]:
    if row is None or row.revoked_at is not None:
        return None, "invalid"
    if row.expires_at is not None and row.expires_at <= now:
        return None, "expired"
    return ApiKey(name=row.name, hash=row.hash, scopes=row.scopes, rate_limit_per_minute=row.rate_limit_per_minute,
                  expires_at=row.expires_at), None


WINDOW_SECONDS = 60
_WINDOWS = RateWindow.__table__
_UPSERT = {"sqlite": sqlite_insert, "postgresql": postgresql_insert}


def count_submission(session: Session, name: str, per_minute: int, *, now: float | None = None) -> None:
    """Count one submission by the key ``name``, inside the submit's transaction; beyond
    ``per_minute`` in the last 60 seconds, a 429 whose rollback takes the count back with it.

    The counts are rows every instance on the database shares, one per key and clock minute:
    one ``INSERT ... ON CONFLICT DO UPDATE count = count + 1 RETURNING count`` for this
    minute. Concurrent submissions by one key queue on that row (PostgreSQL) or the write
    lock (SQLite). The last 60 seconds are estimated as this minute's count plus the previous
    minute's, weighted by the share of it still inside them (a sliding window counter): a
    fixed minute let twice the limit through around its boundary, and exact counting would
    take a row a submission. The key's first submission in a minute deletes the minutes
    before the previous one."""
    now = time.time() if now is None else now
    start = int(now // WINDOW_SECONDS) * WINDOW_SECONDS
    connection = session.connection()
    dialect_insert = _UPSERT.get(connection.dialect.name)
    if dialect_insert is not None:
        statement = dialect_insert(_WINDOWS).values(key_name=name, window_start=start, count=1).on_conflict_do_update(
            index_elements=[_WINDOWS.c.key_name, _WINDOWS.c.window_start], set_={"count": _WINDOWS.c.count + 1}
        )
        count = connection.execute(statement.returning(_WINDOWS.c.count)).scalar_one()
    else:  # other databases: lock the row, or make it
        row = session.get(RateWindow, (name, start), with_for_update=True)
        if row is None:
            row = RateWindow(key_name=name, window_start=start, count=0)
            session.add(row)
        row.count += 1
        session.flush()
        count = row.count
    if count == 1:
        connection.execute(delete(_WINDOWS).where(_WINDOWS.c.key_name == name,
                                                  _WINDOWS.c.window_start < start - WINDOW_SECONDS))
    previous = connection.execute(select(_WINDOWS.c.count).where(
        _WINDOWS.c.key_name == name, _WINDOWS.c.window_start == start - WINDOW_SECONDS)).scalar() or 0
    elapsed = now - start
    if previous * (1 - elapsed / WINDOW_SECONDS) + count > per_minute:
        retry_after = _retry_after(per_minute, count, previous, elapsed)
        raise RateLimitedError(
            f"the API key {name!r} may submit {per_minute} reviews a minute; retry in {retry_after} s",
            retry_after=retry_after,
            details={"limit_per_minute": per_minute, "retry_after_seconds": retry_after},
        )


def _retry_after(per_minute: int, count: int, previous: int, elapsed: float) -> int:
    """Seconds until a submission refused with ``count`` (itself included) this minute and
    ``previous`` last minute would fit: the previous minute's weight falls as time passes;
    if this minute alone is over, into the next, where this minute's admitted submissions
    (``count - 1``) are the previous ones."""
    if count <= per_minute:  # previous * (1 - t / 60) + count <= per_minute
        fits_at = WINDOW_SECONDS * (1 - (per_minute - count) / previous)
    else:  # (count - 1) * (1 - u / 60) + 1 <= per_minute, u seconds into the next minute
        fits_at = WINDOW_SECONDS + max(0.0, WINDOW_SECONDS * (1 - (per_minute - 1) / (count - 1)))
    return max(1, math.ceil(fits_at - elapsed))
