"""Errors a connector raises, grouped by what the caller should do next.

Each vendor module has one function that turns its client library's exceptions and
HTTP status codes into this tree. ``str()`` of any of these never includes secrets or
whole response bodies: only the status, the vendor's short message and the operation.
"""

from __future__ import annotations

import re
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime


class ConnectorError(Exception):
    """Base for everything a connector raises."""

    def __init__(self, message: str, *, status: int | None = None, operation: str | None = None):
        super().__init__(message)
        self.message = message
        self.status = status
        self.operation = operation

    def __str__(self) -> str:
        parts = [self.message]
        if self.operation:
            parts.insert(0, f"{self.operation}:")
        if self.status is not None:
            parts.append(f"(HTTP {self.status})")
        return " ".join(parts)


class RetryableError(ConnectorError):
    """Timeouts, refused connections, 5xx: the same request may succeed later."""


class RateLimitedError(RetryableError):
    """429 or a quota: retry after ``retry_after`` seconds (None when the vendor did not say)."""

    def __init__(self, message: str, *, retry_after: float | None = None, **kwargs):
        super().__init__(message, **kwargs)
        self.retry_after = retry_after


# A wait longer than this is read as this: a vendor's (or a forged) "Retry-After: 10**30"
# must not overflow the date arithmetic that schedules the retry.
MAX_RETRY_AFTER_SECONDS = 86_400.0
_DELAY = re.compile(r"\d+(?:\.\d+)?", re.ASCII)


def retry_after_seconds(value: object, *, now: datetime | None = None) -> float | None:
    """The wait a ``Retry-After`` header asks for, in seconds, or None if absent or unreadable.

    RFC 9110 allows delay-seconds (``120``; some vendors send ``1.5``) or an HTTP-date
    (``Wed, 21 Oct 2026 07:28:00 GMT``), read against ``now``. Never negative, at most a day.
    """
    text = str(value).strip() if value is not None else ""
    if _DELAY.fullmatch(text):
        return min(float(text), MAX_RETRY_AFTER_SECONDS)
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:  # "-0000" or no zone: RFC 5322 says UTC
        when = when.replace(tzinfo=timezone.utc)
    wait = (when - (now or datetime.now(timezone.utc))).total_seconds()
    return min(max(wait, 0.0), MAX_RETRY_AFTER_SECONDS)


class PermanentError(ConnectorError):
    """The same request fails again (400, 409, 422): a person must change something."""


class AuthError(PermanentError):
    """401/403: the connection's credentials are wrong or lack a permission."""


class RemoteNotFoundError(PermanentError):
    """The ticket, project or record does not exist (or is hidden from us)."""


class WebhookVerificationError(ConnectorError):
    """A webhook's signature is missing or wrong, its timestamp is stale, or it is malformed."""
