"""LangChain v1 / LangGraph, in the agent's own process (no LangGraph server).

Three ways in:

- ``resume_command`` / ``aresume_command``: a graph with a checkpointer paused by
  ``HumanInTheLoopMiddleware`` returns ``__interrupt__``; submit it as reviews, wait for the
  ticket's decision, and get the ``Command(resume=...)`` that continues the graph.
  Each interrupt is submitted with its id as ``Idempotency-Key``, so an agent process that
  restarts and asks again gets the same review, not a second ticket.
- ``gate_tool``: any LangChain tool behind a review, for agents not on the middleware.
- ``LowConfidenceReview``: a callback handler that submits the final answer for review
  when a scorer says the agent is unsure, and tags the LangSmith run.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from typing import Any
from uuid import UUID

from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage
from langchain_core.tools import BaseTool
from langgraph.types import Command
from pydantic import BaseModel, ConfigDict

from ..client import AsyncBridgeClient, BridgeClient
from ..langgraph import action_requests, allowed_union, hitl_kind, resume_value
from ..schemas import Decision, ReviewOut, ReviewRequest

log = logging.getLogger("bridge.integrations.langchain")
REVIEW_TAG = "human_review_required"


# ----- in-process graphs: __interrupt__ -> reviews -> Command(resume=...) -------------------


def interrupts_of(result: Any) -> list[Any]:
    """The interrupts of a graph result: ``invoke()``'s dict, a v2 ``GraphOutput``, or a list."""
    if isinstance(result, dict):
        return list(result.get("__interrupt__") or [])
    if hasattr(result, "interrupts"):
        return list(result.interrupts or [])
    return list(result or [])


def _field(interrupt: Any, name: str) -> Any:
    return interrupt.get(name) if isinstance(interrupt, dict) else getattr(interrupt, name, None)


def review_request(interrupt: Any, *, title: str = "Approve {actions}", **fields: Any) -> ReviewRequest:
    """The review for one middleware interrupt; ``fields`` are any other review fields
    (``metadata``, ``confidence``, ``origin``, ``reasoning``...)."""
    value = _field(interrupt, "value")
    if not hitl_kind(value):
        raise ValueError(f"interrupt {_field(interrupt, 'id')} was not raised by HumanInTheLoopMiddleware")
    actions = action_requests(value, _field(interrupt, "response_schema"))
    names = ", ".join(dict.fromkeys(a.name for a in actions))
    body = {
        "title": title.replace("{actions}", names)[:255],
        "action_requests": [a.model_dump(exclude_none=True) for a in actions],
        "allowed_decisions": allowed_union(actions),
        **fields,
    }
    return ReviewRequest.model_validate(body)


def _answer(interrupt: Any, decisions: list[Decision]) -> Any:
    return resume_value(_field(interrupt, "value"), decisions, _field(interrupt, "response_schema"))


def resume_command(result: Any, bridge: BridgeClient, *, timeout: float | None = None, title: str = "Approve {actions}",
                   on_review: Callable[[ReviewOut], None] | None = None, **fields: Any) -> Command:
    """Submit every pending interrupt, wait for each decision, return the resume Command.
    ``on_review`` sees each review as it is submitted (to log or show its ticket)."""
    interrupts = interrupts_of(result)
    if not interrupts:
        raise ValueError("the graph is not interrupted: nothing to review")
    submitted = [
        (interrupt, bridge.submit(review_request(interrupt, title=title, **fields), idempotency_key=_field(interrupt, "id")))
        for interrupt in interrupts
    ]
    for _, review in submitted:
        if on_review is not None:
            on_review(review)
    answers = {}
    for interrupt, review in submitted:
        record = bridge.wait(review.id, timeout=timeout)
        answers[_field(interrupt, "id")] = _answer(interrupt, record.decisions)
    return Command(resume=answers)


async def aresume_command(result: Any, bridge: AsyncBridgeClient, *, timeout: float | None = None,
                          title: str = "Approve {actions}", on_review: Callable[[ReviewOut], None] | None = None,
                          **fields: Any) -> Command:
    """``resume_command`` for async agents: all interrupts are waited on together."""
    interrupts = interrupts_of(result)
    if not interrupts:
        raise ValueError("the graph is not interrupted: nothing to review")
    reviews = [
        await bridge.submit(review_request(interrupt, title=title, **fields), idempotency_key=_field(interrupt, "id"))
        for interrupt in interrupts
    ]
    for review in reviews:
        if on_review is not None:
            on_review(review)
    records = await asyncio.gather(*(bridge.wait(review.id, timeout=timeout) for review in reviews))
    return Command(resume={_field(i, "id"): _answer(i, r.decisions) for i, r in zip(interrupts, records)})


# ----- a tool behind a review -----------------------------------------------------------------


def _args_schema(tool: BaseTool) -> dict[str, Any] | None:
    schema = tool.tool_call_schema
    if isinstance(schema, dict):
        return schema
    if isinstance(schema, type) and issubclass(schema, BaseModel):
        return schema.model_json_schema()
    return None


class ReviewedTool(BaseTool):
    """Runs ``tool`` only after a reviewer approves (or edits) the call; a rejection's
    message, or a reviewer's direct answer, becomes the tool result the model sees."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    tool: BaseTool
    bridge: BridgeClient | None = None
    abridge: AsyncBridgeClient | None = None
    allowed_decisions: list[str] = ["approve", "edit", "reject", "respond"]
    review_title: str = "Approve {actions}"
    review_fields: dict[str, Any] = {}
    timeout: float | None = None

    def _request(self, args: dict[str, Any]) -> ReviewRequest:
        action = {"name": self.tool.name, "args": args, "description": self.tool.description[:20_000] or None,
                  "args_schema": _args_schema(self.tool)}
        return ReviewRequest.model_validate({
            "title": self.review_title.replace("{actions}", self.tool.name)[:255],
            "action_requests": [{k: v for k, v in action.items() if v is not None}],
            "allowed_decisions": self.allowed_decisions,
            **self.review_fields,
        })

    def _outcome(self, decision: Decision, args: dict[str, Any]) -> tuple[dict[str, Any] | None, str | None]:
        """(arguments to run the tool with, or the text to answer the model with)."""
        if decision.type == "approve":
            return args, None
        if decision.type == "edit" and decision.edited_action is not None:
            return decision.edited_action.args, None
        if decision.type == "respond":
            return None, decision.message or ""
        reason = decision.message or "no reason given"
        return None, f"A human reviewer rejected the call to {self.tool.name}, so it did not run: {reason}"

    def _run(self, *args: Any, run_manager: Any = None, **kwargs: Any) -> Any:
        if self.bridge is None:
            raise RuntimeError("gate_tool(..., bridge=BridgeClient(...)) is needed to run synchronously")
        call_args = dict(kwargs)
        review = self.bridge.submit(self._request(call_args))
        record = self.bridge.wait(review.id, timeout=self.timeout)
        run_args, answer = self._outcome(record.decisions[0], call_args)
        return answer if run_args is None else self.tool.invoke(run_args)

    async def _arun(self, *args: Any, run_manager: Any = None, **kwargs: Any) -> Any:
        if self.abridge is None:
            return await asyncio.to_thread(self._run, *args, **kwargs)
        call_args = dict(kwargs)
        review = await self.abridge.submit(self._request(call_args))
        record = await self.abridge.wait(review.id, timeout=self.timeout)
        run_args, answer = self._outcome(record.decisions[0], call_args)
        return answer if run_args is None else await self.tool.ainvoke(run_args)


def gate_tool(
    tool: BaseTool,
    bridge: BridgeClient | None = None,
    *,
    abridge: AsyncBridgeClient | None = None,
    allowed_decisions: Sequence[str] = ("approve", "edit", "reject", "respond"),
    title: str = "Approve {actions}",
    timeout: float | None = None,
    **review_fields: Any,
) -> ReviewedTool:
    """``tool`` behind a review: same name, description and arguments, so the model sees
    no difference. ``review_fields`` go into every review (``metadata``, ``origin``...)."""
    return ReviewedTool(
        name=tool.name,
        description=tool.description,
        args_schema=tool.args_schema,
        tool=tool,
        bridge=bridge,
        abridge=abridge,
        allowed_decisions=list(allowed_decisions),
        review_title=title,
        review_fields=review_fields,
        timeout=timeout,
    )


# ----- low-confidence answers -> review + LangSmith tag ------------------------------------------


def final_answer(outputs: Any) -> str | None:
    """The text of a chain's or agent's final answer (last AI message, ``output``, or text)."""
    if isinstance(outputs, str):
        return outputs
    if isinstance(outputs, BaseMessage):
        return outputs.text if isinstance(outputs.content, list) else str(outputs.content)
    if isinstance(outputs, dict):
        messages = outputs.get("messages")
        if isinstance(messages, list):
            for message in reversed(messages):
                if isinstance(message, AIMessage):
                    return final_answer(message)
            return None
        if isinstance(outputs.get("output"), (str, BaseMessage)):
            return final_answer(outputs["output"])
    return None


def _question(inputs: Any) -> str | None:
    if isinstance(inputs, dict):
        for message in reversed(inputs.get("messages") or []):
            if isinstance(message, HumanMessage):
                return str(message.content)
            if isinstance(message, dict) and message.get("role") in ("user", "human"):
                return str(message.get("content"))
        if isinstance(inputs.get("input"), str):
            return inputs["input"]
    return inputs if isinstance(inputs, str) else None


class LowConfidenceReview(BaseCallbackHandler):
    """Submits the final answer as a ``reply`` review when ``scorer(answer, outputs)`` is
    below ``threshold``, and tags the LangSmith run ``human_review_required``.

    The run is not held: this is review after the fact, for teams not on the middleware.
    ``reviews`` maps each flagged root run id to its review.
    """

    def __init__(
        self,
        bridge: BridgeClient,
        scorer: Callable[[str, Any], float | None],
        *,
        threshold: float = 0.8,
        title: str = "Review a low-confidence answer",
        langsmith_client: Any = None,
        tag: str = REVIEW_TAG,
        **review_fields: Any,
    ):
        self.bridge, self.scorer, self.threshold, self.title = bridge, scorer, threshold, title
        self.langsmith_client, self.tag, self.review_fields = langsmith_client, tag, review_fields
        self.reviews: dict[UUID, ReviewOut] = {}
        self._roots: dict[UUID, dict[str, Any]] = {}

    def on_chain_start(self, serialized: Any, inputs: Any, *, run_id: UUID, parent_run_id: UUID | None = None,
                       tags: list[str] | None = None, **kwargs: Any) -> None:
        if parent_run_id is None:
            self._roots[run_id] = {"tags": list(tags or []), "question": _question(inputs)}

    def on_chain_error(self, error: BaseException, *, run_id: UUID, **kwargs: Any) -> None:
        self._roots.pop(run_id, None)

    def on_chain_end(self, outputs: Any, *, run_id: UUID, parent_run_id: UUID | None = None, **kwargs: Any) -> None:
        root = self._roots.pop(run_id, None) if parent_run_id is None else None
        if root is None:
            return
        answer = final_answer(outputs)
        if not answer:
            return
        score = self.scorer(answer, outputs)
        if score is None or score >= self.threshold:
            return
        fields = dict(self.review_fields)
        if root["question"] and "input" not in fields:
            fields["input"] = {"query": root["question"][:5000]}
        request = ReviewRequest.model_validate({
            "title": self.title[:255],
            "action_requests": [{"name": "reply", "args": {"body": answer}, "description": f"Confidence {score:.0%} is below {self.threshold:.0%}."}],
            "confidence": max(0.0, min(1.0, score)),
            "langsmith": {"run_id": str(run_id)},
            **fields,
        })
        self.reviews[run_id] = self.bridge.submit(request, idempotency_key=f"langchain-run:{run_id}")
        if self.langsmith_client is not None:
            self.langsmith_client.update_run(run_id, tags=[*root["tags"], self.tag])
