"""The interrupt watcher: turns threads paused by ``HumanInTheLoopMiddleware`` on the
configured LangGraph deployments into reviews, so an agent developer adds the middleware,
points the bridge at the deployment, and needs no other code.

Each pending interrupt becomes one review, exactly once: it is submitted like any API
request (``api_key`` ``langgraph:<deployment>``, ``Idempotency-Key`` = the interrupt id),
so a restart, a second worker or the next poll finds the same review instead of making
another. The review is routed like any other and carries
``resume: {"langgraph": {url, thread_id, assistant_id, interrupt_id}}``, so its decision
resumes the thread through the outbox (``worker.deliver_decision``).
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from connectors.errors import ConnectorError

from . import reviews
from .config import LangGraphDeployment
from .errors import BridgeError, ConflictError
from .langgraph import action_requests, allowed_union, hitl_kind, langgraph_client, pending_interrupts
from .runtime import Runtime
from .schemas import ReviewRequest

log = logging.getLogger("bridge.watcher")
PAGE = 100
RESERVED_METADATA = {"graph_id", "assistant_id", "thread_id", "run_id", "run_attempt", "user_id"}


def review_for(deployment: LangGraphDeployment, thread: dict[str, Any], interrupt: dict[str, Any]) -> ReviewRequest:
    """The review a pending middleware interrupt stands for (deterministic: the same
    interrupt always gives the same request, so resubmitting is a no-op)."""
    actions = action_requests(interrupt["value"], interrupt.get("response_schema"))
    thread_meta = thread.get("metadata") or {}
    graph_id = thread_meta.get("graph_id") or ""
    names = ", ".join(dict.fromkeys(a.name for a in actions))
    title = deployment.title.replace("{actions}", names).replace("{thread_id}", thread["thread_id"]).replace("{graph_id}", graph_id)
    user_meta = {k: v for k, v in thread_meta.items() if k not in RESERVED_METADATA and not k.startswith("hitl_bridge")}
    metadata = {
        **user_meta,
        **deployment.metadata,
        "langgraph": {"deployment": deployment.name, "thread_id": thread["thread_id"], "graph_id": graph_id or None},
    }
    return ReviewRequest.model_validate(
        {
            "title": title[:255] or "Approve the agent's action",
            "action_requests": [a.model_dump(exclude_none=True) for a in actions],
            "allowed_decisions": allowed_union(actions),
            "input": _input(thread),
            "metadata": metadata,
            "resume": {
                "langgraph": {
                    "url": deployment.url,
                    "thread_id": thread["thread_id"],
                    "assistant_id": thread_meta.get("assistant_id") or deployment.assistant_id,
                    "interrupt_id": interrupt["id"],
                }
            },
        }
    )


def _input(thread: dict[str, Any]) -> dict[str, Any]:
    """The user's latest request in the thread, for the reviewer's context."""
    messages = (thread.get("values") or {}).get("messages") if isinstance(thread.get("values"), dict) else None
    for message in reversed(messages or []):
        if isinstance(message, dict) and message.get("type") == "human":
            content = message.get("content")
            return {"query": content[:5000] if isinstance(content, str) else str(content)[:5000]}
    return {}


class InterruptWatcher:
    """One polling thread per deployment; safe to run in several processes at once."""

    def __init__(self, rt: Runtime):
        self.rt = rt
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._seen: set[tuple[str, str]] = set()

    def start(self) -> None:
        for deployment in self.rt.settings.langgraph:
            thread = threading.Thread(target=self._loop, args=(deployment,), name=f"watch-{deployment.name}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=timeout)

    def _loop(self, deployment: LangGraphDeployment) -> None:
        while not self._stop.is_set():
            try:
                self.poll(deployment)
            except ConnectorError as exc:
                log.warning("watcher.poll_failed", extra={"deployment": deployment.name, "error": str(exc)})
            except Exception:  # the loop must outlive anything one poll meets
                log.exception("watcher.loop_error", extra={"deployment": deployment.name})
            self._stop.wait(deployment.poll_seconds)

    def poll(self, deployment: LangGraphDeployment) -> int:
        """Submit a review for each new pending interrupt; returns how many were new."""
        api_key = deployment.api_key.get_secret_value() if deployment.api_key else None
        created = 0
        with langgraph_client(deployment.url, api_key, operation="watch_interrupts") as client:
            offset = 0
            while True:
                threads = client.threads.search(status="interrupted", limit=PAGE, offset=offset)
                for thread in threads:
                    if deployment.assistant_id and deployment.assistant_id not in (
                        (thread.get("metadata") or {}).get("assistant_id"),
                        (thread.get("metadata") or {}).get("graph_id"),
                    ):
                        continue
                    for interrupt in pending_interrupts(thread.get("interrupts") or {}):
                        created += self._submit(deployment, thread, interrupt)
                if len(threads) < PAGE:
                    break
                offset += PAGE
        return created

    def _submit(self, deployment: LangGraphDeployment, thread: dict[str, Any], interrupt: dict[str, Any]) -> int:
        seen_key = (deployment.name, interrupt["id"])
        if seen_key in self._seen or not hitl_kind(interrupt.get("value")):
            return 0
        try:
            request = review_for(deployment, thread, interrupt)
            review, created = reviews.submit(
                self.rt, request, api_key=f"langgraph:{deployment.name}", idempotency_key=interrupt["id"]
            )
        except ConflictError:
            created = False  # reviewed before, under other deployment defaults: still once
            review = None
        except (BridgeError, ValueError) as exc:
            log.warning("watcher.interrupt_skipped", extra={"deployment": deployment.name, "thread_id": thread["thread_id"],
                                                           "interrupt_id": interrupt["id"], "error": str(exc)[:500]})
            self._seen.add(seen_key)
            return 0
        self._seen.add(seen_key)
        if created:
            log.info("watcher.review_submitted", extra={"deployment": deployment.name, "thread_id": thread["thread_id"],
                                                       "interrupt_id": interrupt["id"], "review_id": review.id})
        return int(created)
