"""Structured JSON logs; every line inside a review's work carries its correlation id."""

from __future__ import annotations

import contextvars
import logging
import sys
from contextlib import contextmanager

from pythonjsonlogger.json import JsonFormatter

review_var: contextvars.ContextVar[str | None] = contextvars.ContextVar("review_id", default=None)


class _Correlation(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        review_id = review_var.get()
        if review_id and not hasattr(record, "review_id"):
            record.review_id = review_id
            record.correlation_id = review_id
        return True


class _Stderr(logging.StreamHandler):
    """Writes to ``sys.stderr`` as it is when a line is logged, not as it was when logging was
    configured: a test runner swaps it per test, and a closed one made every later line a
    "Logging error" (an embedding program may swap it too)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, _value) -> None:
        pass


def configure(level: str = "INFO") -> None:
    handler = _Stderr()
    handler.setFormatter(JsonFormatter("%(asctime)s %(levelname)s %(name)s %(message)s", rename_fields={"levelname": "level"}))
    handler.addFilter(_Correlation())
    from .redact import LogRedaction  # card numbers and secrets never reach a log line

    handler.addFilter(LogRedaction())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for noisy in ("urllib3", "httpx", "httpx2", "uvicorn.access", "jira", "simple_salesforce", "zenpy"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


@contextmanager
def correlation(review_id: str | None):
    token = review_var.set(review_id)
    try:
        yield
    finally:
        review_var.reset(token)
