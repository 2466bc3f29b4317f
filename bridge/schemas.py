"""The HTTP API's request and response shapes (PRODUCT.md, "HTTP API (v1)").

Decisions use exactly the shapes of LangChain's ``HumanInTheLoopMiddleware``.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import AnyHttpUrl, BaseModel, ConfigDict, Field, StringConstraints, field_validator, model_validator

DecisionType = Literal["approve", "edit", "reject", "respond"]
DECISION_TYPES: tuple[str, ...] = ("approve", "edit", "reject", "respond")


class Status(StrEnum):
    queued = "queued"
    open = "open"
    approved = "approved"
    edited = "edited"
    rejected = "rejected"
    responded = "responded"
    expired = "expired"
    cancelled = "cancelled"
    auto_approved = "auto_approved"
    failed = "failed"


DECIDED = {Status.approved, Status.edited, Status.rejected, Status.responded, Status.expired}
FINAL = DECIDED | {Status.cancelled, Status.auto_approved}
STATUS_FOR_DECISION = {
    "approve": Status.approved,
    "edit": Status.edited,
    "reject": Status.rejected,
    "respond": Status.responded,
}


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ActionRequest(Strict):
    name: str = Field(min_length=1, max_length=200, description="The tool (or `reply`).")
    args: dict[str, Any] = Field(default_factory=dict)
    description: str | None = Field(default=None, max_length=20_000)
    args_schema: dict[str, Any] | None = Field(
        default=None, description="JSON Schema the tool's arguments must satisfy (checked on edit)."
    )
    allowed_decisions: list[DecisionType] | None = Field(
        default=None, description="Per-action override of the review's allowed_decisions."
    )


class Evidence(Strict):
    title: str | None = Field(default=None, max_length=1000)
    url: str | None = Field(default=None, max_length=4000)
    snippet: str | None = Field(default=None, max_length=20_000)


class Origin(Strict):
    connection: str = Field(min_length=1)
    ticket_id: str = Field(min_length=1)


class LangSmithRef(Strict):
    run_id: str | None = None
    trace_url: str | None = None
    project: str | None = None


class LangGraphTarget(Strict):
    url: AnyHttpUrl
    thread_id: str
    assistant_id: str | None = None
    interrupt_id: str | None = None


class Resume(Strict):
    callback_url: AnyHttpUrl | None = None
    langgraph: LangGraphTarget | None = None

    @model_validator(mode="after")
    def _one_target(self) -> "Resume":
        if (self.callback_url is None) == (self.langgraph is None):
            raise ValueError("resume takes exactly one of callback_url or langgraph")
        return self


class ReviewRequest(Strict):
    title: str = Field(default="", max_length=255, description="Required unless the review is built from a LangSmith run.")
    action_requests: list[ActionRequest] = Field(
        default_factory=list, max_length=50, description="At least one, unless the review is built from a LangSmith run."
    )
    allowed_decisions: list[DecisionType] = Field(
        default_factory=lambda: ["approve", "edit", "reject"], min_length=1
    )
    confidence: float | None = Field(default=None, ge=0, le=1)
    cost: float | None = Field(default=None, ge=0, description="What the action would cost, for routing.")
    reasoning: str | None = Field(default=None, max_length=50_000)
    evidence: list[Evidence] = Field(default_factory=list, max_length=100)
    input: dict[str, Any] = Field(default_factory=dict)
    metadata: dict[str, Any] = Field(default_factory=dict)
    origin: Origin | None = None
    langsmith: LangSmithRef | None = None
    resume: Resume | None = None
    requested_by: str | None = Field(
        default=None, description="The agent's or requester's identity in the ticket system (four-eyes)."
    )

    def allowed_for(self, index: int) -> list[str]:
        action = self.action_requests[index]
        return list(action.allowed_decisions or self.allowed_decisions)

    @property
    def from_langsmith_run(self) -> bool:
        """Only ``langsmith.run_id`` (plus routing hints): the worker reads the run to fill the rest."""
        return not self.action_requests and self.langsmith is not None and bool(self.langsmith.run_id)

    @field_validator("title")
    @classmethod
    def _one_line_of_text(cls, title: str) -> str:
        if "\x00" in title:  # PostgreSQL cannot store it, and no ticket system shows it
            raise ValueError("may not contain NUL (0x00) characters")
        return title

    @model_validator(mode="after")
    def _content_or_run(self) -> "ReviewRequest":
        if self.from_langsmith_run:
            return self
        unless = "unless the review is built from a LangSmith run (send langsmith.run_id without action_requests)"
        if not self.action_requests:
            raise ValueError(f"action_requests: at least one action request is required {unless}")
        if not self.title:
            raise ValueError(f"title: a title of at least one character is required {unless}")
        return self


class Reviewer(BaseModel):
    id: str | None = None
    name: str | None = None
    email: str | None = None


class EditedAction(Strict):
    name: str
    args: dict[str, Any]


class Decision(BaseModel):
    """One decision per action request, in LangChain's shape."""

    type: DecisionType
    edited_action: EditedAction | None = None
    message: str | None = None

    def as_langchain(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": self.type}
        if self.type == "edit" and self.edited_action:
            out["edited_action"] = self.edited_action.model_dump()
        if self.type in ("reject", "respond") and self.message is not None:
            out["message"] = self.message
        return out


class DecisionRecord(BaseModel):
    decisions: list[Decision]
    reviewer: Reviewer | None = None
    decided_at: datetime
    ticket: "TicketOut | None" = None
    source: Literal["ticket", "route", "expiry", "shadow", "reversal"] = "ticket"
    reason: str | None = None
    version: int = Field(default=1, ge=1, description="1 for the first decision; each reversal adds one.")
    supersedes: int | None = Field(default=None, description="The version a reversal replaced.")


class DecisionReversal(Strict):
    """An admin's new decision for a decided review (``POST /v1/reviews/{id}/decision``)."""

    decisions: list[Decision] = Field(
        min_length=1, max_length=50, description="The new decision, one per action request, checked as a reviewer's is."
    )
    reason: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=2000)] = Field(
        description="Why the decision is reversed: audited, and posted on the ticket."
    )


class TicketOut(BaseModel):
    connection: str
    key: str
    display: str | None = None
    url: str | None = None


class DeliveryState(BaseModel):
    state: Literal["not_needed", "pending", "delivered", "dead", "cancelled", "undeliverable"]
    """``undeliverable``: a reversed decision for a LangGraph thread the first one already resumed."""
    attempts: int = 0
    last_error: str | None = None
    delivered_at: datetime | None = None


class RouteOut(BaseModel):
    name: str | None
    mode: Literal["enforce", "shadow"] | None = None
    mapping: str | None = None
    reason: str


class ReviewOut(BaseModel):
    id: str
    status: Status
    title: str
    created_at: datetime
    updated_at: datetime
    route: RouteOut
    ticket: TicketOut | None = None
    decision: DecisionRecord | None = None
    shadow_decision: DecisionRecord | None = None
    delivery: DeliveryState
    postback: DeliveryState
    error: dict[str, Any] | None = None
    request: ReviewRequest


class ReviewPage(BaseModel):
    items: list[ReviewOut]
    next_cursor: str | None = None


class DecisionWaitOut(BaseModel):
    id: str
    status: Status
    decision: DecisionRecord | None = None


class ErrorBody(BaseModel):
    code: str
    message: str
    details: Any = None


class ErrorOut(BaseModel):
    error: ErrorBody


DecisionRecord.model_rebuild()
