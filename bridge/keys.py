"""API keys made with ``hitl-bridge keys create``: stored hashed in the database, scoped,
optionally expiring and rate-limited, revocable; every change is an audited admin action.
Keys listed in the config file keep working beside them."""

from __future__ import annotations

import math
import secrets
import threading
import time
from collections import deque
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from . import audit
from .config import ApiKey, hash_api_key
from .db import utcnow
from .errors import BridgeError, ConflictError, NotFoundError
from .models import StoredApiKey

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
    digest = hash_api_key(token)
    now = utcnow()
    key = rt.settings.key_by_hash().get(digest)
    if key is not None:
        if key.expires_at is not None and key.expires_at <= now:
            return None, "expired"
        return key, None
    with rt.db.transaction() as session:
        row = session.execute(select(StoredApiKey).where(StoredApiKey.hash == digest)).scalar_one_or_none()
        if row is None or row.revoked_at is not None:
            return None, "invalid"
        if row.expires_at is not None and row.expires_at <= now:
            return None, "expired"
        return ApiKey(name=row.name, hash=row.hash, scopes=row.scopes, rate_limit_per_minute=row.rate_limit_per_minute,
                      expires_at=row.expires_at), None


class RateLimiter:
    """A sliding one-minute window per key, in this process (with several API instances
    behind a balancer, each allows the limit: set it per instance)."""

    def __init__(self, clock=time.monotonic):
        self._clock = clock
        self._lock = threading.Lock()
        self._hits: dict[str, deque[float]] = {}

    def check(self, name: str, per_minute: int) -> None:
        now = self._clock()
        with self._lock:
            hits = self._hits.setdefault(name, deque())
            while hits and hits[0] <= now - 60:
                hits.popleft()
            if len(hits) >= per_minute:
                retry_after = max(1, math.ceil(hits[0] + 60 - now))
                raise RateLimitedError(
                    f"the API key {name!r} may submit {per_minute} reviews a minute; retry in {retry_after} s",
                    retry_after=retry_after,
                    details={"limit_per_minute": per_minute, "retry_after_seconds": retry_after},
                )
            hits.append(now)
