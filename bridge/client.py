"""Python clients for the bridge's HTTP API (v1), sync and async, on httpx2.

Typed with the API's own models (``bridge.schemas``). Every non-2xx answer is raised as a
``BridgeClientError`` carrying the API's ``{"error": {code, message, details}}``; transport
failures are ``BridgeClientError`` too, with ``code="unreachable"``.

    with BridgeClient("http://127.0.0.1:8080", api_key) as bridge:
        review = bridge.submit(ReviewRequest(...), idempotency_key="order-A-100")
        record = bridge.wait(review.id, timeout=3600)
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import httpx2
from tenacity import AsyncRetrying, Retrying, retry_if_exception, stop_after_attempt, wait_exponential_jitter

from .schemas import DecisionRecord, DecisionWaitOut, ReviewOut, ReviewRequest, Status

LONG_POLL_MAX = 60.0


class BridgeClientError(Exception):
    def __init__(self, message: str, *, code: str, status: int | None = None, details: Any = None):
        super().__init__(message)
        self.message, self.code, self.status, self.details = message, code, status, details

    def __str__(self) -> str:
        return f"{self.code}: {self.message}" + (f" (HTTP {self.status})" if self.status else "")


class ReviewNotDecided(BridgeClientError):
    """``wait`` ended without a decision: ``code`` is ``timeout``, ``cancelled`` or ``failed``;
    ``review_status`` is the review's status then."""

    def __init__(self, message: str, *, code: str, review_status: Status):
        super().__init__(message, code=code)
        self.review_status = review_status


_NO_DECISION_COMING = {Status.cancelled: "cancelled", Status.failed: "failed"}


def _request_body(request: ReviewRequest | dict[str, Any]) -> dict[str, Any]:
    model = request if isinstance(request, ReviewRequest) else ReviewRequest.model_validate(request)
    return model.model_dump(mode="json", exclude_none=True)


def _raise_for(response: httpx2.Response) -> None:
    if response.status_code < 400:
        return
    try:
        error = response.json().get("error") or {}
    except (ValueError, AttributeError):
        error = {}
    raise BridgeClientError(
        error.get("message") or f"the bridge answered HTTP {response.status_code}",
        code=error.get("code") or "http_error",
        status=response.status_code,
        details=error.get("details"),
    )


def _submit_retrying(retrying: type[Retrying] | type[AsyncRetrying], attempts: int) -> Any:
    """Submissions are retried when the answer may have been lost (the bridge unreachable,
    or 502/503/504 on the way), always with the same Idempotency-Key: a review the bridge
    stored before the answer went missing comes back instead of a second review and
    ticket."""
    return retrying(stop=stop_after_attempt(attempts), wait=wait_exponential_jitter(multiplier=0.2, max=2.0),
                    retry=retry_if_exception(_lost_answer), reraise=True)


def _lost_answer(exc: BaseException) -> bool:
    return isinstance(exc, BridgeClientError) and (exc.code == "unreachable" or exc.status in (502, 503, 504))


def _idempotency_key(given: str | None) -> str:
    return given or f"client-{uuid.uuid4().hex}"


def _headers(api_key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key}", "User-Agent": "hitl-bridge-client"}


def _wait_result(response: httpx2.Response) -> DecisionRecord | DecisionWaitOut:
    _raise_for(response)
    body = DecisionWaitOut.model_validate(response.json())
    if response.status_code == 200 and body.decision is not None:
        return body.decision
    if body.status in _NO_DECISION_COMING:
        raise ReviewNotDecided(f"review {body.id} is {body.status}; no decision will come",
                               code=_NO_DECISION_COMING[body.status], review_status=body.status)
    return body


class BridgeClient:
    def __init__(self, url: str, api_key: str, *, timeout: float = 30.0, http: httpx2.Client | None = None,
                 submit_attempts: int = 4):
        self._http = http or httpx2.Client(base_url=url.rstrip("/"), headers=_headers(api_key), timeout=timeout)
        self._submit_attempts = submit_attempts

    def __enter__(self) -> "BridgeClient":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _send(self, method: str, path: str, **kwargs: Any) -> httpx2.Response:
        try:
            return self._http.request(method, path, **kwargs)
        except httpx2.HTTPError as exc:
            raise BridgeClientError(f"cannot reach the bridge: {type(exc).__name__}", code="unreachable") from exc

    def submit(self, request: ReviewRequest | dict[str, Any], *, idempotency_key: str | None = None) -> ReviewOut:
        """Without an ``idempotency_key``, one is made for this call (see ``_submit_retrying``)."""
        body, headers = _request_body(request), {"Idempotency-Key": _idempotency_key(idempotency_key)}
        for attempt in _submit_retrying(Retrying, self._submit_attempts):
            with attempt:
                response = self._send("POST", "/v1/reviews", json=body, headers=headers)
                _raise_for(response)
        return ReviewOut.model_validate(response.json())

    def get(self, review_id: str) -> ReviewOut:
        response = self._send("GET", f"/v1/reviews/{review_id}")
        _raise_for(response)
        return ReviewOut.model_validate(response.json())

    def wait(self, review_id: str, *, timeout: float | None = None) -> DecisionRecord:
        """Block until the review is decided (``timeout`` seconds at most; None: no limit)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            remaining = LONG_POLL_MAX if deadline is None else min(LONG_POLL_MAX, max(0.0, deadline - time.monotonic()))
            response = self._send("GET", f"/v1/reviews/{review_id}/decision", params={"wait": round(remaining, 3)},
                                  timeout=remaining + 30)
            result = _wait_result(response)
            if isinstance(result, DecisionRecord):
                return result
            if deadline is not None and time.monotonic() >= deadline:
                raise ReviewNotDecided(f"review {review_id} was not decided within {timeout}s", code="timeout",
                                       review_status=result.status)

    def cancel(self, review_id: str) -> ReviewOut:
        response = self._send("POST", f"/v1/reviews/{review_id}/cancel")
        _raise_for(response)
        return ReviewOut.model_validate(response.json())


class AsyncBridgeClient:
    def __init__(self, url: str, api_key: str, *, timeout: float = 30.0, http: httpx2.AsyncClient | None = None,
                 submit_attempts: int = 4):
        self._http = http or httpx2.AsyncClient(base_url=url.rstrip("/"), headers=_headers(api_key), timeout=timeout)
        self._submit_attempts = submit_attempts

    async def __aenter__(self) -> "AsyncBridgeClient":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _send(self, method: str, path: str, **kwargs: Any) -> httpx2.Response:
        try:
            return await self._http.request(method, path, **kwargs)
        except httpx2.HTTPError as exc:
            raise BridgeClientError(f"cannot reach the bridge: {type(exc).__name__}", code="unreachable") from exc

    async def submit(self, request: ReviewRequest | dict[str, Any], *, idempotency_key: str | None = None) -> ReviewOut:
        body, headers = _request_body(request), {"Idempotency-Key": _idempotency_key(idempotency_key)}
        async for attempt in _submit_retrying(AsyncRetrying, self._submit_attempts):
            with attempt:
                response = await self._send("POST", "/v1/reviews", json=body, headers=headers)
                _raise_for(response)
        return ReviewOut.model_validate(response.json())

    async def get(self, review_id: str) -> ReviewOut:
        response = await self._send("GET", f"/v1/reviews/{review_id}")
        _raise_for(response)
        return ReviewOut.model_validate(response.json())

    async def wait(self, review_id: str, *, timeout: float | None = None) -> DecisionRecord:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            remaining = LONG_POLL_MAX if deadline is None else min(LONG_POLL_MAX, max(0.0, deadline - time.monotonic()))
            response = await self._send("GET", f"/v1/reviews/{review_id}/decision", params={"wait": round(remaining, 3)},
                                        timeout=remaining + 30)
            result = _wait_result(response)
            if isinstance(result, DecisionRecord):
                return result
            if deadline is not None and time.monotonic() >= deadline:
                raise ReviewNotDecided(f"review {review_id} was not decided within {timeout}s", code="timeout",
                                       review_status=result.status)

    async def cancel(self, review_id: str) -> ReviewOut:
        response = await self._send("POST", f"/v1/reviews/{review_id}/cancel")
        _raise_for(response)
        return ReviewOut.model_validate(response.json())
