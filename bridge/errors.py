"""Errors the bridge raises to its callers; each maps to one HTTP status."""

from __future__ import annotations

from typing import Any


class BridgeError(Exception):
    status_code = 400
    code = "bad_request"

    def __init__(self, message: str, *, details: Any = None, code: str | None = None):
        super().__init__(message)
        self.message = message
        self.details = details
        if code:
            self.code = code


class MappingError(BridgeError):
    """A mapping or routes file is wrong in a way an admin can fix."""

    status_code = 422
    code = "invalid_mapping"


class NotFoundError(BridgeError):
    status_code = 404
    code = "not_found"


class ConflictError(BridgeError):
    status_code = 409
    code = "conflict"


class AuthenticationError(BridgeError):
    status_code = 401
    code = "unauthenticated"


class ForbiddenError(BridgeError):
    status_code = 403
    code = "forbidden"
