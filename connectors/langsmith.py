"""LangSmith, through the real ``langsmith`` SDK: read runs, leave feedback, add examples.

Not a ticket system (it is not in ``CONNECTORS``): the bridge reads the runs that ask for
review from it and writes every human decision back to it. As with the ticket connectors,
vendor I/O and error classification live here and policy lives in the bridge.

The SDK is set up so that every call is one synchronous HTTP request the worker can retry:
no background batching (``auto_batch_tracing=False``, so ``create_feedback`` is a plain
``POST /feedback``), no urllib3 retries and one attempt per SDK call (the worker alone
retries, with its own backoff).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import requests
from urllib3.util.retry import Retry

from .errors import (
    AuthError,
    ConnectorError,
    PermanentError,
    RateLimitedError,
    RemoteNotFoundError,
    RetryableError,
    retry_after_seconds,
)

log = logging.getLogger("connectors.langsmith")
IDS = uuid.UUID("6f1c9c39-3a3e-4c55-9a44-5b0e8e0f6a11")  # namespace for the ids we derive


def stable_id(*parts: str) -> str:
    """A UUID derived from ``parts``: a retried write reuses its id, so it is never doubled."""
    return str(uuid.uuid5(IDS, ":".join(parts)))


try:  # the SDK silences its own deprecation warnings this way (a context variable: thread-safe)
    from langsmith._internal._beta_decorator import suppress_deprecation_warning as _quiet
except ImportError:  # pragma: no cover - other SDK versions
    _quiet = contextlib.nullcontext  # type: ignore[assignment]


@dataclass
class RunView:
    """What the bridge needs of a run: plain JSON-ready data."""

    id: str
    name: str
    run_type: str
    trace_id: str
    session_id: str | None
    start_time: datetime | None
    status: str | None
    inputs: dict[str, Any]
    outputs: dict[str, Any] | None
    error: str | None
    metadata: dict[str, Any]
    tags: list[str]
    feedback_stats: dict[str, Any]
    url: str | None
    dotted_order: str = ""
    tools: list[dict[str, Any]] = field(default_factory=list)


def translate_error(exc: BaseException, *, operation: str) -> ConnectorError:
    """The one place the SDK's exceptions become ``connectors.errors``.

    The SDK raises ``LangSmithError`` subclasses for 401/404/409/429/500 but a plain
    ``LangSmithError`` for other statuses (a 503 among them); the ``requests`` error it was
    raised from still carries the response, so the status is read from there.
    """
    if isinstance(exc, ConnectorError):
        return exc
    from langsmith import utils as ls_utils

    status = _status_of(exc)
    if isinstance(exc, (ls_utils.LangSmithConnectionError, requests.ConnectionError, requests.Timeout)) and status is None:
        return RetryableError(f"LangSmith unreachable ({type(exc).__name__})", operation=operation)
    if isinstance(exc, ls_utils.LangSmithRateLimitError) or status == 429:
        return RateLimitedError("rate limited by LangSmith", retry_after=_retry_after(exc), status=429, operation=operation)
    if isinstance(exc, ls_utils.LangSmithAuthError) or status in (401, 403):
        return AuthError("LangSmith refused the API key", status=status or 401, operation=operation)
    if isinstance(exc, ls_utils.LangSmithNotFoundError) or status == 404:
        return RemoteNotFoundError("not found in LangSmith", status=404, operation=operation)
    if isinstance(exc, ls_utils.LangSmithConflictError) or status == 409:
        return PermanentError("conflict in LangSmith", status=409, operation=operation)
    if isinstance(exc, (ls_utils.LangSmithAPIError, ls_utils.LangSmithRequestTimeout)) or (status and status >= 500) or status == 408:
        return RetryableError("LangSmith server error", status=status, operation=operation)
    if status is not None:
        return PermanentError("LangSmith rejected the request", status=status, operation=operation)
    if isinstance(exc, ls_utils.LangSmithConnectionError):
        return RetryableError("LangSmith unreachable", operation=operation)
    return PermanentError(f"LangSmith client error ({type(exc).__name__})", operation=operation)


def _response_of(exc: BaseException) -> requests.Response | None:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        response = getattr(current, "response", None)
        if isinstance(response, requests.Response):
            return response
        current = current.__cause__ or current.__context__
    return None


def _status_of(exc: BaseException) -> int | None:
    response = _response_of(exc)
    return response.status_code if response is not None else None


def _retry_after(exc: BaseException) -> float | None:
    response = _response_of(exc)
    return retry_after_seconds(response.headers.get("retry-after")) if response is not None else None


def is_conflict(error: ConnectorError) -> bool:
    return error.status == 409


class LangSmithConnector:
    """One SDK ``Client`` per thread (its ``requests`` session is not shared across threads)."""

    def __init__(self, *, api_url: str, api_key: str | None, web_url: str | None = None, timeout_seconds: float = 10.0):
        self.api_url, self.web_url = api_url.rstrip("/"), web_url
        self._api_key = api_key
        self._timeout_ms = int(timeout_seconds * 1000)
        self._local = threading.local()

    @property
    def client(self):
        client = getattr(self._local, "client", None)
        if client is None:
            from langsmith import Client

            client = Client(
                api_url=self.api_url,
                api_key=self._api_key,
                web_url=self.web_url,
                auto_batch_tracing=False,
                retry_config=Retry(total=0, raise_on_status=False, raise_on_redirect=False),
                timeout_ms=self._timeout_ms,
            )
            self._local.client = client
        return client

    def _call(self, operation: str, fn, *args, **kwargs):
        try:
            with _quiet():
                return fn(*args, **kwargs)
        except Exception as exc:
            raise translate_error(exc, operation=operation) from exc

    # ----- runs ------------------------------------------------------------------------
    def read_run(self, run_id: str, *, with_tools: bool = True) -> RunView:
        """The run, and (``with_tools``) the tool runs below it in its trace, in order."""
        run = self._call("read_run", self.client.read_run, run_id)
        view = RunView(
            id=str(run.id),
            name=run.name,
            run_type=run.run_type,
            trace_id=str(run.trace_id),
            session_id=str(run.session_id) if run.session_id else None,
            start_time=run.start_time,
            status=run.status,
            inputs=dict(run.inputs or {}),
            outputs=dict(run.outputs) if run.outputs is not None else None,
            error=run.error,
            metadata=dict((run.extra or {}).get("metadata") or {}),
            tags=list(run.tags or []),
            feedback_stats=dict(run.feedback_stats or {}),
            url=run.url,
            dotted_order=run.dotted_order or "",
        )
        if with_tools:
            view.tools = self.tool_runs(view)
        return view

    def tool_runs(self, run: RunView) -> list[dict[str, Any]]:
        """Child runs of type ``tool`` anywhere below ``run`` (``list_runs`` on its trace)."""
        def query():
            return list(self.client.list_runs(trace_id=run.trace_id, run_type="tool", is_root=False))

        children = self._call("list_runs", query)
        below = [c for c in children if str(c.id) != run.id and run.id in _ancestors(c.dotted_order or "")]
        below.sort(key=lambda c: c.dotted_order or "")
        return [
            {"name": c.name, "inputs": dict(c.inputs or {}), "outputs": dict(c.outputs) if c.outputs is not None else None,
             "error": c.error, "run_id": str(c.id)}
            for c in below
        ]

    # ----- feedback and datasets -------------------------------------------------------
    def create_feedback(self, run: RunView, *, feedback_id: str, key: str, score: float | None, value: Any,
                        correction: Any, comment: str | None, source_info: dict[str, Any]) -> bool:
        """Leave feedback on ``run``; False when feedback with this id was already there."""
        try:
            self._call(
                "create_feedback",
                self.client.create_feedback,
                run.id,
                key,
                score=score,
                value=value,
                trace_id=run.trace_id,
                correction=correction,
                comment=comment,
                source_info=source_info,
                feedback_id=feedback_id,
                session_id=run.session_id,
                start_time=run.start_time,
                stop_after_attempt=1,
            )
        except PermanentError as exc:
            if is_conflict(exc):
                return False
            raise
        return True

    def update_feedback(self, feedback_id: str, *, score: float | None, value: Any, correction: Any,
                        comment: str | None) -> None:
        """Change feedback left before (a reversed decision): the run shows one verdict, the last."""
        self._call("update_feedback", self.client.update_feedback, feedback_id, score=score, value=value,
                   correction=correction, comment=comment)

    def ensure_dataset(self, name: str, *, description: str) -> str:
        """The dataset's id, creating it when missing (a concurrent create is fine too)."""
        try:
            return str(self._call("read_dataset", self.client.read_dataset, dataset_name=name).id)
        except RemoteNotFoundError:
            pass
        try:
            return str(self._call("create_dataset", self.client.create_dataset, name, description=description).id)
        except PermanentError as exc:
            if not is_conflict(exc):
                raise
            return str(self._call("read_dataset", self.client.read_dataset, dataset_name=name).id)

    def create_example(self, dataset_id: str, *, example_id: str, inputs: dict[str, Any], outputs: dict[str, Any],
                       metadata: dict[str, Any], source_run_id: str | None) -> bool:
        """Add an example; False when one with this id was already there."""
        try:
            self._call(
                "create_example",
                self.client.create_example,
                inputs=inputs,
                dataset_id=dataset_id,
                reference_outputs=outputs,
                metadata=metadata,
                example_id=example_id,
                source_run_id=source_run_id,
            )
        except PermanentError as exc:
            if is_conflict(exc):
                return False
            raise
        return True


    def delete_example(self, example_id: str) -> bool:
        """Remove an example; False when there was none with this id."""
        try:
            self._call("delete_example", self.client.delete_example, example_id)
        except RemoteNotFoundError:
            return False
        return True


def _ancestors(dotted_order: str) -> set[str]:
    return {segment.split("Z", 1)[1] for segment in dotted_order.split(".") if "Z" in segment}
