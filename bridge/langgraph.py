"""LangGraph threads paused by LangChain's ``HumanInTheLoopMiddleware``: reading their
interrupts as reviews, and resuming them with the decision, exactly once.

The middleware pauses in one of two shapes (langchain v1):

- batched (default): one interrupt per model turn whose value is a ``HITLRequest``
  (``{"action_requests": [...], "review_configs": [...]}``); it is answered with
  ``{"decisions": [...]}``, one decision per action request, in order;
- per call (``interrupt_mode="per_call"``): one interrupt per gated tool call whose value
  is a ``ToolApprovalRequest`` (``{"type": "tool_approval", "tool_call_id", "name", "args",
  "description"}``) and whose ``response_schema`` says which decisions the tool allows; it
  is answered with one decision.

Either way the answer is sent keyed by the interrupt's id (``Command(resume={id: value})``),
so it can only ever answer the question it was made for. Before resuming, the thread's
pending interrupts are read: a decision for an interrupt that is no longer waiting fails
loudly (``PermanentError``, so the worker dead-letters it) instead of being ignored.
Servers that offer the API's strict resume (``/info`` flag ``strict_resume``) also get it.
The run is tagged with a fingerprint of the decision, so a retry after a lost response
finds its own run rather than failing as stale, and with the review and the decision's
version: a thread resumed with one version is never resumed with a reversal of it
(``AlreadyResumed``; the worker records that delivery as undeliverable).

langgraph-sdk's errors are translated to the connector error tree in ``translate`` only.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import jsonschema
from langgraph_sdk import get_sync_client
from langgraph_sdk.client import SyncLangGraphClient

from connectors.errors import (
    AuthError,
    ConnectorError,
    PermanentError,
    RateLimitedError,
    RemoteNotFoundError,
    RetryableError,
    retry_after_seconds,
)

from .schemas import DECISION_TYPES, ActionRequest, Decision, DecisionRecord, LangGraphTarget

RESUME_KEY = "hitl_bridge_resume_key"
REVIEW_KEY, VERSION_KEY = "hitl_bridge_review_id", "hitl_bridge_decision_version"
FINAL_RUN_STATES = {"success", "error", "timeout", "interrupted"}
MAX_DESCRIPTION = 20_000


# ----- interrupt shapes --------------------------------------------------------------


def hitl_kind(value: Any) -> str | None:
    """``"batched"``, ``"per_call"``, or None for an interrupt the middleware did not raise."""
    if isinstance(value, dict):
        if value.get("type") == "tool_approval" and "name" in value:
            return "per_call"
        if isinstance(value.get("action_requests"), list) and isinstance(value.get("review_configs"), list):
            return "batched"
    return None


def _schema_members(schema: dict[str, Any]) -> list[dict[str, Any]]:
    defs = schema.get("$defs", {})
    members = schema.get("oneOf") or schema.get("anyOf") or [schema]
    out = []
    for member in members:
        ref = member.get("$ref", "")
        out.append(defs.get(ref.rsplit("/", 1)[-1], member) if ref.startswith("#/$defs/") else member)
    return out


def allowed_from_schema(schema: dict[str, Any] | None) -> list[str]:
    """The decision types a per-call ``response_schema`` accepts."""
    if not schema:
        return list(DECISION_TYPES)
    found = []
    for member in _schema_members(schema):
        kind = member.get("properties", {}).get("type", {}).get("const")
        if kind in DECISION_TYPES and kind not in found:
            found.append(kind)
    return found or list(DECISION_TYPES)


def edit_args_schema(schema: dict[str, Any] | None) -> dict[str, Any] | None:
    """The tool's argument schema an edit must satisfy, self-contained (``$defs`` kept)."""
    if not schema:
        return None
    defs = schema.get("$defs", {})
    for member in _schema_members(schema):
        if member.get("properties", {}).get("type", {}).get("const") != "edit":
            continue
        edited = member["properties"].get("edited_action", {})
        if "$ref" in edited:
            edited = defs.get(edited["$ref"].rsplit("/", 1)[-1], {})
        args = edited.get("properties", {}).get("args")
        if not args:
            return None
        if "$ref" in args:
            args = defs.get(args["$ref"].rsplit("/", 1)[-1], {})
        return {**args, "$defs": defs} if defs else dict(args)
    return None


def action_requests(value: dict[str, Any], response_schema: dict[str, Any] | None = None) -> list[ActionRequest]:
    """A middleware interrupt's actions, in the review's shape, with what each allows."""
    kind = hitl_kind(value)
    if kind == "per_call":
        return [
            ActionRequest(
                name=value["name"],
                args=value.get("args") or {},
                description=(value.get("description") or None) and value["description"][:MAX_DESCRIPTION],
                allowed_decisions=allowed_from_schema(response_schema),
                args_schema=edit_args_schema(response_schema),
            )
        ]
    if kind == "batched":
        configs = value["review_configs"]
        out = []
        for index, action in enumerate(value["action_requests"]):
            config = configs[index] if index < len(configs) and configs[index].get("action_name") == action["name"] else next(
                (c for c in configs if c.get("action_name") == action["name"]), {}
            )
            description = action.get("description")
            out.append(
                ActionRequest(
                    name=action["name"],
                    args=action.get("args") or {},
                    description=description[:MAX_DESCRIPTION] if description else None,
                    allowed_decisions=config.get("allowed_decisions") or None,
                    args_schema=config.get("args_schema"),
                )
            )
        return out
    raise ValueError("not an interrupt raised by HumanInTheLoopMiddleware")


def allowed_union(actions: list[ActionRequest]) -> list[str]:
    seen = {kind for action in actions for kind in (action.allowed_decisions or DECISION_TYPES)}
    return [kind for kind in DECISION_TYPES if kind in seen]


class AlreadyResumed(PermanentError):
    """The thread was resumed with an earlier version of the review's decision (reversed
    since): a resumed interrupt cannot be answered again."""

    def __init__(self, message: str):
        super().__init__(message, operation="resume_thread")


class ResumeMismatch(ValueError):
    """The decisions do not fit the interrupt they would answer."""


def resume_value(value: dict[str, Any], decisions: list[Decision], response_schema: dict[str, Any] | None = None) -> Any:
    """What the middleware expects back for this interrupt, checked against what it allows."""
    actions = action_requests(value, response_schema)
    if len(decisions) != len(actions):
        raise ResumeMismatch(f"the interrupt asks about {len(actions)} action(s) but {len(decisions)} decision(s) were made")
    answers = []
    for action, decision in zip(actions, decisions):
        allowed = action.allowed_decisions or list(DECISION_TYPES)
        if decision.type not in allowed:
            raise ResumeMismatch(f"{decision.type!r} is not allowed for {action.name!r}; allowed: {', '.join(allowed)}")
        if decision.type == "edit":
            if decision.edited_action is None or decision.edited_action.name != action.name:
                raise ResumeMismatch(f"an edit of {action.name!r} must keep the tool name")
            if action.args_schema:
                try:
                    jsonschema.validate(decision.edited_action.args, action.args_schema)
                except jsonschema.ValidationError as exc:
                    raise ResumeMismatch(f"the edited arguments do not fit {action.name!r}: {exc.message}") from None
        if decision.type == "respond" and not decision.message:
            raise ResumeMismatch("a respond decision needs a message")
        answers.append(decision.as_langchain())
    if hitl_kind(value) == "per_call":
        if response_schema:
            try:
                jsonschema.validate(answers[0], response_schema)
            except jsonschema.ValidationError as exc:
                raise ResumeMismatch(f"the decision does not fit the interrupt's response_schema: {exc.message}") from None
        return answers[0]
    return {"decisions": answers}


def pending_interrupts(interrupts: Any) -> list[dict[str, Any]]:
    """Flatten a thread's ``interrupts`` (``{task_id: [..]}``) or a state's list into dicts."""
    if isinstance(interrupts, dict):
        items = [i for group in interrupts.values() for i in group]
    else:
        items = list(interrupts or [])
    return [i for i in items if isinstance(i, dict) and i.get("id")]


# ----- the LangGraph API --------------------------------------------------------------


def translate(exc: Exception, operation: str) -> ConnectorError:
    """langgraph-sdk (httpx) errors -> the connector error tree, in one place."""
    if isinstance(exc, httpx.HTTPStatusError):
        status = exc.response.status_code
        message = _message(exc.response)
        if status == 429:
            return RateLimitedError(message, status=status, operation=operation,
                                    retry_after=retry_after_seconds(exc.response.headers.get("retry-after")))
        if status >= 500:
            return RetryableError(message, status=status, operation=operation)
        if status in (401, 403):
            return AuthError(message, status=status, operation=operation)
        if status == 404:
            return RemoteNotFoundError(message, status=status, operation=operation)
        if status == 409:  # a run is in flight on the thread (multitask_strategy=reject): later
            return RetryableError(message, status=status, operation=operation)
        return PermanentError(message, status=status, operation=operation)
    if isinstance(exc, (httpx.TransportError, httpx.TimeoutException)):
        return RetryableError(f"cannot reach the LangGraph server: {type(exc).__name__}", operation=operation)
    return RetryableError(f"unexpected error: {type(exc).__name__}", operation=operation)


def _message(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return "the LangGraph server refused the request"
    detail = body.get("detail") or body.get("message") or body.get("error") if isinstance(body, dict) else None
    return str(detail)[:300] if detail else "the LangGraph server refused the request"


@contextmanager
def langgraph_client(url: str, api_key: str | None = None, *, operation: str = "langgraph") -> Iterator[SyncLangGraphClient]:
    """An SDK client whose errors come out translated. ``api_key=None`` never falls back to
    the process's LANGSMITH_API_KEY: a key goes only to the deployment it was set for."""
    client = get_sync_client(url=url.rstrip("/"), api_key=api_key, timeout=httpx.Timeout(30.0, connect=5.0))
    try:
        yield client
    except (httpx.HTTPError, httpx.HTTPStatusError) as exc:
        raise translate(exc, operation) from exc
    finally:
        client.http.client.close()


def api_key_for(settings: Any, url: str) -> str | None:
    """The configured deployment's key for ``url`` (None for any other URL)."""
    wanted = url.rstrip("/")
    for deployment in getattr(settings, "langgraph", []):
        if deployment.url.rstrip("/") == wanted and deployment.api_key is not None:
            return deployment.api_key.get_secret_value()
    return None


_STRICT: dict[str, bool] = {}


def _supports_strict_resume(client: SyncLangGraphClient, url: str) -> bool:
    if url not in _STRICT:
        try:
            info = client.http.get("/info")
        except (httpx.HTTPError, httpx.HTTPStatusError):
            return False
        _STRICT[url] = bool((info or {}).get("flags", {}).get("strict_resume"))
    return _STRICT[url]


def resume_key(interrupt_id: str, record: DecisionRecord) -> str:
    canonical = json.dumps(
        {"interrupt": interrupt_id, "decisions": [d.as_langchain() for d in record.decisions], "at": record.decided_at.isoformat()},
        sort_keys=True,
    )
    return hashlib.sha256(canonical.encode()).hexdigest()[:40]


def resume_thread(
    target: LangGraphTarget, record: DecisionRecord, *, api_key: str | None = None, wait_seconds: float = 30.0,
    review_id: str | None = None,
) -> dict[str, Any]:
    """Resume the thread with the decision; returns the run. Raises PermanentError for a
    stale, duplicate or ill-fitting decision (``AlreadyResumed`` when the run tagged with
    ``review_id`` carried another version of its decision), RetryableError when a retry can help."""
    url = str(target.url).rstrip("/")
    with langgraph_client(url, api_key, operation="resume_thread") as client:
        runs = list(client.runs.list(target.thread_id, limit=100))
        if review_id is not None:
            for run in runs:
                metadata = run.get("metadata") or {}
                if metadata.get(REVIEW_KEY) == review_id and metadata.get(VERSION_KEY, 1) != record.version:
                    raise AlreadyResumed(f"thread {target.thread_id} was resumed with version {metadata.get(VERSION_KEY, 1)} "
                                         f"of this review's decision (run {run.get('run_id')})")
        thread = client.threads.get(target.thread_id)
        pending = pending_interrupts(thread.get("interrupts") or {})
        hitl = [i for i in pending if hitl_kind(i.get("value"))]
        if target.interrupt_id:
            interrupt = next((i for i in pending if i["id"] == target.interrupt_id), None)
            interrupt_id = target.interrupt_id
        elif len(hitl) == 1:
            interrupt, interrupt_id = hitl[0], hitl[0]["id"]
        elif not hitl:
            raise PermanentError(f"thread {target.thread_id} has no pending HITL interrupt to resume", operation="resume_thread")
        else:
            raise PermanentError(
                f"thread {target.thread_id} has {len(hitl)} pending interrupts; the review's resume must name interrupt_id",
                operation="resume_thread",
            )
        key = resume_key(interrupt_id, record)
        earlier = next((r for r in runs if (r.get("metadata") or {}).get(RESUME_KEY) == key), None)
        if earlier is not None:  # a retry after a lost response: the run was made
            return _settle(client, target.thread_id, earlier, interrupt_id, wait_seconds)
        if interrupt is None:
            raise PermanentError(
                f"stale decision: interrupt {interrupt_id} is no longer pending on thread {target.thread_id} "
                f"(answered already, or the run moved on); pending: {[i['id'] for i in pending] or 'none'}",
                operation="resume_thread",
            )
        try:
            value = resume_value(interrupt["value"], record.decisions, interrupt.get("response_schema"))
        except ResumeMismatch as exc:
            raise PermanentError(str(exc), operation="resume_thread") from None
        assistant_id = target.assistant_id or (thread.get("metadata") or {}).get("assistant_id") or (thread.get("metadata") or {}).get("graph_id")
        if not assistant_id:
            raise PermanentError(f"no assistant_id for thread {target.thread_id}", operation="resume_thread")
        run = client.runs.create(
            target.thread_id,
            assistant_id,
            command={"resume": {interrupt_id: value}},
            multitask_strategy="reject",
            metadata={RESUME_KEY: key, "hitl_bridge_interrupt_id": interrupt_id,
                      **({REVIEW_KEY: review_id, VERSION_KEY: record.version} if review_id else {})},
            strict_resume=True if _supports_strict_resume(client, url) else None,
        )
        return _settle(client, target.thread_id, run, interrupt_id, wait_seconds)


def _settle(client: SyncLangGraphClient, thread_id: str, run: dict[str, Any], interrupt_id: str, wait_seconds: float) -> dict[str, Any]:
    """Wait (bounded) for the resumed run; one that failed before consuming the interrupt
    (e.g. the server refused the answer) is a permanent failure, not a delivery."""
    deadline = time.monotonic() + wait_seconds
    pause = 0.05
    while run.get("status") not in FINAL_RUN_STATES and time.monotonic() < deadline:
        time.sleep(pause)
        pause = min(pause * 2, 0.5)
        run = client.runs.get(thread_id, run["run_id"])
    if run.get("status") in ("error", "timeout"):
        still = pending_interrupts(client.threads.get(thread_id).get("interrupts") or {})
        if any(i["id"] == interrupt_id for i in still):
            raise PermanentError(
                f"the thread refused the resume (run {run['run_id']} ended in {run['status']}); the interrupt is still pending",
                operation="resume_thread",
            )
    return run
