"""HMAC helpers shared by every connector's webhook verification.

Verification always runs on the raw body, before any parsing, compares in constant time,
accepts any of several secrets (so a secret can be rotated without downtime) and checks
a timestamp against a replay window.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import math
import re
import time
from collections.abc import Iterable
from datetime import datetime, timezone

from .errors import WebhookVerificationError

DEFAULT_TOLERANCE_SECONDS = 300


def hmac_sha256(secret: str | bytes, message: bytes) -> bytes:
    key = secret.encode() if isinstance(secret, str) else secret
    return hmac.new(key, message, hashlib.sha256).digest()


def hmac_sha256_hex(secret: str | bytes, message: bytes) -> str:
    return hmac_sha256(secret, message).hex()


def hmac_sha256_b64(secret: str | bytes, message: bytes) -> str:
    return base64.b64encode(hmac_sha256(secret, message)).decode()


def verify_signature(
    provided: str | None,
    secrets: Iterable[str],
    expected_for: "callable[[str], str]",
    *,
    header: str,
) -> None:
    """Raise unless ``provided`` equals ``expected_for(secret)`` for one of ``secrets``."""
    if not provided:
        raise WebhookVerificationError(f"missing signature header {header}")
    secrets = [s for s in secrets if s]
    if not secrets:
        raise WebhookVerificationError("no webhook secret is configured for this connection")
    for secret in secrets:
        if hmac.compare_digest(provided.strip().encode(), expected_for(secret).encode()):
            return
    raise WebhookVerificationError(f"signature in {header} does not match")


def parse_timestamp(value: str | int | float | None) -> float:
    """Epoch seconds from epoch seconds, epoch milliseconds or an ISO-8601 string."""
    if value is None or value == "":
        raise WebhookVerificationError("missing timestamp")
    if isinstance(value, bool):
        raise _unreadable(value)
    if isinstance(value, (int, float)) or _EPOCH.fullmatch(str(value).strip()):
        try:  # a JSON number may be too large for a float, or NaN / Infinity (Python's json reads those)
            number = float(value)
        except (OverflowError, ValueError):
            raise _unreadable(value) from None
        if not math.isfinite(number):
            raise _unreadable(value)
        return number / 1000.0 if number > 1e11 else number
    try:
        parsed = datetime.fromisoformat(str(value).strip().replace("Z", "+00:00"))
    except ValueError:
        raise _unreadable(value) from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=timezone.utc)
    return parsed.timestamp()


def _unreadable(value: object) -> WebhookVerificationError:
    return WebhookVerificationError(f"unreadable timestamp {str(value)[:40]!r}")


_EPOCH = re.compile(r"-?[0-9]+")  # ASCII digits: str.isdigit() also takes "²", which float() refuses


def check_timestamp(
    value: str | int | float | None,
    *,
    tolerance: float = DEFAULT_TOLERANCE_SECONDS,
    now: float | None = None,
) -> float:
    """Raise unless the timestamp is within ``tolerance`` seconds of now (either way)."""
    stamp = parse_timestamp(value)
    current = time.time() if now is None else now
    if abs(current - stamp) > tolerance:
        raise WebhookVerificationError(
            f"timestamp outside the {int(tolerance)} s replay window"
        )
    return stamp
