"""Admin page sessions: a signed cookie instead of a bearer header, and CSRF tokens.

The cookie holds ``<key name>.<expiry>.<signature>``, signed with HMAC keyed by that API
key's stored hash (never sent to a browser), so it is stateless across instances, holds no
secret, and stops working when the key is removed, rotated, revoked or expires (config keys
and keys made with ``hitl-bridge keys create`` alike). It is HttpOnly and
SameSite=Strict. Requests that change something also carry ``X-CSRF-Token`` (or a
``csrf_token`` form field): an HMAC of the cookie that only a page the bridge rendered knows.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Callable

from .config import ApiKey

COOKIE = "hitl_admin"
CSRF_HEADER = "x-csrf-token"
LIFETIME_SECONDS = 8 * 3600


def _sign(key: ApiKey, message: str) -> str:
    return hmac.new(key.hash.encode(), message.encode(), hashlib.sha256).hexdigest()


def issue(key: ApiKey, *, now: float | None = None) -> str:
    expires = int((now or time.time()) + LIFETIME_SECONDS)
    body = f"{key.name}.{expires}"
    return f"{body}.{_sign(key, 'session|' + body)}"


def verify(find_key: Callable[[str], ApiKey | None], cookie: str | None, *, now: float | None = None) -> ApiKey | None:
    """The admin key a session cookie stands for, or None (unsigned, expired, key gone).
    ``find_key(name)``: the usable key of that name (``keys.by_name``: config or database)."""
    if not cookie or cookie.count(".") < 2:
        return None
    body, _, signature = cookie.rpartition(".")
    name, _, expires = body.rpartition(".")
    if not expires.isdecimal() or int(expires) < (now or time.time()):
        return None
    key = find_key(name)
    if key is None or "admin" not in key.scopes:
        return None
    if not hmac.compare_digest(signature, _sign(key, "session|" + body)):
        return None
    return key


def csrf_token(key: ApiKey, cookie: str) -> str:
    return _sign(key, "csrf|" + cookie)[:40]


def csrf_ok(key: ApiKey, cookie: str, token: str | None) -> bool:
    return bool(token) and hmac.compare_digest(str(token), csrf_token(key, cookie))
