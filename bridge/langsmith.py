"""LangSmith: reviews built from runs, reviews from automation rules, decisions back as feedback.

Three ways LangSmith and the bridge meet, each through the outbox so an outage of
LangSmith delays work and loses none:

* ``POST /v1/reviews`` with only ``langsmith.run_id`` (plus routing hints) is accepted as
  ``queued``; the ``langsmith_read_run`` job reads the run (inputs, outputs, the tool runs
  below it, metadata, tags, trace link, a confidence from its outputs or feedback), fills
  the review in, and only then routes it, like any other review.
* An automation rule's webhook (``POST /v1/intake/langsmith``) makes one such review per
  run, idempotent on the run id.
* Every decision on a review with a run id queues ``langsmith_feedback``: ``create_feedback``
  on the run and, for edits, one example in the corrections dataset. Both writes use ids
  derived from the review, so a retried job never doubles them. An admin's reversal queues
  it again: the run's feedback is updated to the new verdict (one verdict per run, not an
  average of both), the earlier correction is removed and the new one, if any, added.
"""

from __future__ import annotations

import json
import logging
import uuid
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from connectors.errors import ConnectorError, PermanentError
from connectors.langsmith import LangSmithConnector, RunView, stable_id

from . import audit, outbox, reviews
from .config import LangSmithSettings
from .decide import overall_type
from .errors import BridgeError, ConflictError
from .models import Job, Review
from .runtime import Runtime
from .schemas import DecisionRecord, ReviewRequest, Status

if TYPE_CHECKING:
    from .worker import Worker

log = logging.getLogger("bridge.langsmith")
INTAKE_API_KEY = "langsmith-intake"
"""The ``api_key_name`` reviews from automation rules are recorded under."""
SNIPPET = 4000


@lru_cache(maxsize=8)
def _connector(api_url: str, api_key: str | None, web_url: str | None, timeout: float) -> LangSmithConnector:
    return LangSmithConnector(api_url=api_url, api_key=api_key, web_url=web_url, timeout_seconds=timeout)


def connector_for(settings: LangSmithSettings) -> LangSmithConnector:
    key = settings.api_key.get_secret_value() if settings.api_key else None
    return _connector(settings.api_url, key, settings.web_url, settings.timeout_seconds)


def example_id(review_id: str, part: str, version: int) -> str:
    """The corrections example a decision's version adds (the first keeps its original id)."""
    return stable_id(review_id, "correction", part, *([f"v{version}"] if version > 1 else []))


# ----- the reviewer's view of a run --------------------------------------------------------


def _dump(value: Any, limit: int = SNIPPET) -> str:
    text = json.dumps(value, ensure_ascii=False, sort_keys=True, default=str)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def run_confidence(run: RunView, key: str) -> float | None:
    """``outputs[key]`` when it is a number in [0, 1], else the average score of feedback ``key``."""
    candidates = [(run.outputs or {}).get(key), (run.feedback_stats.get(key) or {}).get("avg")]
    for value in candidates:
        if isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value <= 1:
            return float(value)
    return None


def review_from_run(request: ReviewRequest, run: RunView, *, confidence_key: str) -> ReviewRequest:
    """The submitted hints, filled in from the run. What the caller sent always wins."""
    data = request.model_dump(mode="json")
    tools = [f"{t['name']}({_dump(t['inputs'], 500)}) -> {_dump(t['error'] or t['outputs'], 500)}" for t in run.tools]
    summary = [f"LangSmith {run.run_type} run {run.name!r} ({run.status or 'unknown status'})."]
    summary.append(f"Inputs: {_dump(run.inputs)}")
    summary.append(f"Outputs: {_dump(run.outputs)}" if run.error is None else f"Error: {run.error[:SNIPPET]}")
    if tools:
        summary.append("Tools called: " + "; ".join(tools))
    if run.tags:
        summary.append("Tags: " + ", ".join(run.tags))
    if run.metadata:
        summary.append(f"Metadata: {_dump(run.metadata, 2000)}")
    evidence = [
        {"title": f"Tool call: {t['name']}", "snippet": f"{_dump(t['inputs'], 2000)} -> {_dump(t['error'] or t['outputs'], 2000)}"}
        for t in run.tools
    ]
    if run.url:
        evidence.append({"title": "LangSmith trace", "url": run.url})
    data["title"] = request.title or f"Review the output of {run.name}"[:255]
    data["action_requests"] = [{
        "name": run.name[:200] or "run_output",
        "args": run.outputs or {},
        "description": f"The agent's output for these inputs: {_dump(run.inputs, 10_000)}",
    }]
    data["reasoning"] = request.reasoning or "\n".join(summary)
    data["evidence"] = (data["evidence"] + evidence)[:100]
    data["input"] = request.input or run.inputs
    metadata = {**run.metadata, **({"tags": run.tags} if run.tags else {})}
    data["metadata"] = {**metadata, **request.metadata}
    if request.confidence is None:
        data["confidence"] = run_confidence(run, confidence_key)
    data["langsmith"] = {
        "run_id": run.id,
        "trace_url": request.langsmith.trace_url or run.url,
        "project": request.langsmith.project or run.session_id,
    }
    return ReviewRequest.model_validate(data)


# ----- decisions back to LangSmith ------------------------------------------------------


def corrected_output(request: ReviewRequest, record: DecisionRecord) -> dict[str, Any] | None:
    """What the human made of the agent's output: the edited arguments (None without edits)."""
    if not any(d.type == "edit" and d.edited_action for d in record.decisions):
        return None
    if len(request.action_requests) == 1:
        return dict(record.decisions[0].edited_action.args)
    return {"actions": [
        {"name": action.name, "args": decision.edited_action.args if decision.type == "edit" and decision.edited_action else action.args}
        for action, decision in zip(request.action_requests, record.decisions)
    ]}


def agent_output(request: ReviewRequest) -> dict[str, Any]:
    if len(request.action_requests) == 1:
        return dict(request.action_requests[0].args)
    return {"actions": [{"name": a.name, "args": a.args} for a in request.action_requests]}


def source_info(review: Review, record: DecisionRecord, *, public_url: str, shadow: bool) -> dict[str, Any]:
    reviewer = record.reviewer
    ticket = record.ticket
    return {
        "hitl_bridge": {"review_id": review.id, "review_url": f"{public_url.rstrip('/')}/v1/reviews/{review.id}"},
        "ticket_url": ticket.url if ticket else None,
        "ticket": ticket.model_dump(mode="json") if ticket else None,
        "reviewer_id": (reviewer.id or reviewer.email) if reviewer else None,
        "reviewer": reviewer.model_dump(mode="json") if reviewer else None,
        "decision_source": record.source,
        "decided_at": record.decided_at.isoformat(),
        "shadow": shadow,
    }


class LangSmithJobs:
    """The worker's LangSmith job kinds (registered in ``Worker.handlers``)."""

    def __init__(self, worker: "Worker"):
        self.worker = worker
        self.rt: Runtime = worker.rt

    def handlers(self) -> dict[str, Any]:
        return {outbox.READ_RUN: self.read_run, outbox.LANGSMITH_FEEDBACK: self.send_feedback}

    def read_run(self, job: Job) -> None:
        review = self.worker._load(job.review_id)
        request = ReviewRequest.model_validate(review.request)
        if review.status != Status.queued or not request.from_langsmith_run:
            return self.worker._finish(job)
        settings = self.rt.settings.langsmith
        if settings is None:
            self._fail(job, "langsmith_not_configured", "the review names a LangSmith run, but LangSmith is not configured")
            return self.worker._finish(job)
        try:
            run = connector_for(settings).read_run(request.langsmith.run_id)
        except PermanentError as exc:
            self._fail(job, "langsmith_run_unreadable", str(exc))
            return self.worker._finish(job)
        except ConnectorError as exc:
            if job.attempts >= job.max_attempts:
                self._fail(job, "langsmith_run_unreadable", str(exc))
            raise
        filled = review_from_run(request, run, confidence_key=settings.confidence_key)

        def apply(session, row: Review) -> None:
            if row.status != Status.queued or row.route_name is not None or not ReviewRequest.model_validate(row.request).from_langsmith_run:
                return
            row.request, row.title = filled.model_dump(mode="json"), filled.title
            audit.record(session, "langsmith.run_read", actor="bridge", review_id=row.id, run_id=run.id,
                         tools=len(run.tools), confidence=filled.confidence)
            reviews.route_review(session, self.rt, row, filled, self.rt.router.route(row.id, filled))
            self.rt.metrics.reviews.labels(row.status, row.route_name or "").inc()

        self.worker._finish(job, apply)
        self.rt.wake()

    def _fail(self, job: Job, code: str, message: str) -> None:
        with self.rt.db.transaction() as session:
            row = session.get(Review, job.review_id, with_for_update=True)
            if row is not None and row.status == Status.queued:
                row.status, row.error = Status.failed, {"code": code, "message": message}
                audit.record(session, "review.failed", actor="bridge", review_id=row.id, code=code, message=message)

    def send_feedback(self, job: Job) -> None:
        review = self.worker._load(job.review_id)
        request = ReviewRequest.model_validate(review.request)
        settings = self.rt.settings.langsmith
        if settings is None or request.langsmith is None or not request.langsmith.run_id:
            return self.worker._finish(job)
        record = DecisionRecord.model_validate(job.payload["decision"])
        shadow = job.dedupe_key.endswith(":shadow")
        if not shadow and record.version < (review.decision or {}).get("version", 1):
            return self.worker._finish(job)  # reversed since it was queued: the new version's job says that
        kind = overall_type(record.decisions)
        messages = [d.message for d in record.decisions if d.message] or ([record.reason] if record.reason else [])
        correction = corrected_output(request, record)
        connector = connector_for(settings)
        run = connector.read_run(request.langsmith.run_id, with_tools=False)
        part = "shadow" if shadow else "decision"
        feedback_id, comment = stable_id(review.id, "feedback", part), "\n\n".join(messages) or None
        created = connector.create_feedback(
            run,
            feedback_id=feedback_id,
            key=settings.feedback_key,
            score=getattr(settings.scores, kind),
            value=kind,
            correction=correction,
            comment=comment,
            source_info=source_info(review, record, public_url=self.rt.settings.public_url, shadow=shadow),
        )
        if not created and record.version > 1:  # a reversal: the run keeps one verdict, the last
            connector.update_feedback(feedback_id, score=getattr(settings.scores, kind), value=kind,
                                      correction=correction, comment=comment)
        # an earlier version's correction no longer stands (deleted as it is found)
        removed = [e for e in (example_id(review.id, part, v) for v in range(1, record.version)) if connector.delete_example(e)]
        example = None
        if correction is not None:
            dataset_id = connector.ensure_dataset(
                settings.corrections_dataset, description="Agent outputs corrected by human reviewers (hitl-bridge)."
            )
            example = example_id(review.id, part, record.version)
            connector.create_example(
                dataset_id,
                example_id=example,
                inputs=run.inputs or request.input,
                outputs=correction,
                metadata={"agent_output": agent_output(request), "review_id": review.id, "run_id": run.id,
                          "ticket_url": record.ticket.url if record.ticket else None,
                          "reviewer_id": source_info(review, record, public_url="", shadow=shadow)["reviewer_id"]},
                source_run_id=run.id,
            )

        def apply(session, row: Review) -> None:
            audit.record(session, "langsmith.feedback", actor="bridge", review_id=row.id, run_id=run.id, key=settings.feedback_key,
                         value=kind, already_there=not created, example_id=example, shadow=shadow, version=record.version,
                         examples_removed=removed)

        self.worker._finish(job, apply)


# ----- automation-rule intake --------------------------------------------------------------


def accept_automation(rt: Runtime, payload: Any) -> dict[str, Any]:
    """One review per run of a rule's webhook, idempotent on the run id; each is routed once
    the worker has read its run."""
    settings = rt.settings.langsmith
    runs = payload.get("runs") if isinstance(payload, dict) else None
    if not isinstance(runs, list) or not all(isinstance(r, dict) for r in runs):
        raise BridgeError("the body must be a LangSmith rule payload: {\"rule_id\", \"runs\": [{\"id\", ...}]}",
                          code="invalid_payload", details={"field": "runs"})
    outcome: dict[str, Any] = {"created": [], "duplicate": [], "invalid": []}
    for run in runs:
        try:
            run_id = str(uuid.UUID(str(run.get("id"))))
        except ValueError:
            outcome["invalid"].append(str(run.get("id"))[:100])
            continue
        metadata = dict(settings.intake_metadata) if settings else {}
        request = ReviewRequest(langsmith={"run_id": run_id}, metadata=metadata)
        try:
            review, created = reviews.submit(rt, request, api_key=INTAKE_API_KEY, idempotency_key=f"langsmith-run:{run_id}")
        except ConflictError as exc:  # the same run again, after the intake's hints changed
            outcome["duplicate"].append((exc.details or {}).get("review_id"))
            continue
        outcome["created" if created else "duplicate"].append(review.id)
    log.info("langsmith.intake", extra={"rule_id": payload.get("rule_id"), "reviews_created": len(outcome["created"]),
                                        "runs_duplicate": len(outcome["duplicate"]), "runs_invalid": len(outcome["invalid"])})
    return outcome
