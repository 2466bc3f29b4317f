"""Errors a connector raises, grouped by what the caller should do next.

Each vendor module has one function that turns its client library's exceptions and
HTTP status codes into this tree. ``str()`` of any of these never includes secrets or
whole response bodies: only the status, the vendor's short message and the operation.
"""

from __future__ import annotations


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


class PermanentError(ConnectorError):
    """The same request fails again (400, 409, 422): a person must change something."""


class AuthError(PermanentError):
    """401/403: the connection's credentials are wrong or lack a permission."""


class RemoteNotFoundError(PermanentError):
    """The ticket, project or record does not exist (or is hidden from us)."""


class WebhookVerificationError(ConnectorError):
    """A webhook's signature is missing or wrong, its timestamp is stale, or it is malformed."""
