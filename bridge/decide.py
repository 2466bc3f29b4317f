"""Turn a ticket, as read back through the API, into decisions, or into a refusal.

Only what the ticket system's API says counts (webhooks are hints). A decision is checked
against what the request allows before anything is sent: the allowed decision types, the
tool's argument schema, and the tool name, which an edit may never change.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import jsonschema

from connectors.base import Comment, Person, Ticket

from .mapping import Mapping
from .schemas import ActionRequest, Decision, EditedAction, Reviewer, ReviewRequest

CLOCK_SKEW = timedelta(seconds=5)


@dataclass(frozen=True)
class Decided:
    decisions: list[Decision]
    reviewer: Reviewer | None


@dataclass(frozen=True)
class Refused:
    reason: str
    reviewer: Reviewer | None


@dataclass(frozen=True)
class Approval:
    """One approval towards a quorum that is not reached yet (recorded, audited, not sent)."""

    reviewer: Reviewer | None
    person_key: str
    change_ref: str
    count: int
    quorum: int


def person_key(person: Person | None) -> str:
    """Who counts as the same approver: the ticket system's account id."""
    return str(person.id).lower() if person is not None else ""


def change_ref(ticket: Ticket) -> str:
    """Which status change an approval came from: the same change read back twice counts
    once, a new change by the same person is a second approval (refused)."""
    when = ticket.changed_at or ticket.updated
    return when.isoformat() if when else ""


def reviewer_of(person: Person | None) -> Reviewer | None:
    return Reviewer(id=person.id, name=person.name, email=person.email) if person else None


def deciding_type(ticket: Ticket, mapping: Mapping) -> str | None:
    spec = mapping.decision
    value = ticket.fields.get(spec.field)
    if spec.field == "status" and value is None:
        value = ticket.status
    candidates = list(value) if isinstance(value, (list, tuple, set)) else [value, ticket.labels.get(spec.field)]
    lowered = {str(k).lower(): v for k, v in spec.values.items()}
    for candidate in candidates:
        if candidate is None:
            continue
        if str(candidate).lower() in lowered:
            return lowered[str(candidate).lower()]
    return None


def _matches(person: Person | None, entries: list[str]) -> bool:
    if person is None:
        return False
    names = {str(x).lower() for x in (person.id, person.email, person.name) if x}
    return any(entry.lower() in names for entry in entries)


def _reviewer_comments(ticket: Ticket, mapping: Mapping, since: datetime | None) -> list[Comment]:
    comments = [c for c in ticket.comments if not c.by_bridge]
    if since is not None:
        comments = [c for c in comments if c.created is None or c.created >= since - CLOCK_SKEW]
    if mapping.decision.message_from == "internal_comment":
        internal = [c for c in comments if not c.public]
        comments = internal or comments
    return comments


def _edit_text(ticket: Ticket, mapping: Mapping, comments: list[Comment]) -> str | None:
    spec = mapping.decision
    if spec.edit_field:
        value = ticket.fields.get(spec.edit_field)
        if value not in (None, "", [], {}):
            return value if isinstance(value, str) else json.dumps(value)
    for comment in reversed(comments):
        body = comment.body.strip()
        if body.startswith(spec.edit_prefix):
            return body[len(spec.edit_prefix) :].strip()
    return None


def _message(mapping: Mapping, comments: list[Comment]) -> str | None:
    for comment in reversed(comments):
        body = comment.body.strip()
        if body and not body.startswith(mapping.decision.edit_prefix):
            return body
    return None


class EditError(ValueError):
    pass


def parse_edit(text: str, request: ReviewRequest) -> tuple[int, EditedAction]:
    """``/edit [action_name] <new reply text | new arguments as JSON>`` -> (index, action)."""
    actions = request.action_requests
    index = 0
    first, _, rest = text.partition(" ")
    names = [a.name for a in actions]
    if len(actions) > 1 and first.strip() in names:
        index, text = names.index(first.strip()), rest.strip()
    action = actions[index]
    if not text:
        raise EditError("an /edit needs the new text or arguments after it")
    parsed: Any = None
    if text[:1] in "{[":
        try:
            parsed = json.loads(text)
        except json.JSONDecodeError as exc:
            raise EditError(f"the /edit arguments are not valid JSON: {exc.msg} at position {exc.pos}") from exc
    if isinstance(parsed, dict):
        if set(parsed) == {"name", "args"}:
            if parsed["name"] != action.name:
                raise EditError(f"an edit may not change the tool name ({action.name!r} to {parsed['name']!r})")
            parsed = parsed["args"]
        if not isinstance(parsed, dict):
            raise EditError("the edited arguments must be a JSON object")
        args = parsed
    elif parsed is not None:
        raise EditError("the edited arguments must be a JSON object")
    elif "body" in action.args or action.name == "reply":
        args = {**action.args, "body": text}
    else:
        raise EditError(f"for {action.name!r}, /edit takes the new arguments as a JSON object")
    _check_args(action, args)
    return index, EditedAction(name=action.name, args=args)


def _check_args(action: ActionRequest, args: dict[str, Any]) -> None:
    if action.args_schema:
        try:
            jsonschema.validate(args, action.args_schema)
        except jsonschema.ValidationError as exc:
            where = "/".join(str(p) for p in exc.absolute_path) or "arguments"
            raise EditError(f"the edited arguments do not fit {action.name!r}: {where}: {exc.message}") from exc
        except jsonschema.SchemaError as exc:
            raise EditError(f"the tool's argument schema is invalid: {exc.message}") from exc


def check_decisions(request: ReviewRequest, decisions: Sequence[Decision]) -> str | None:
    """Why ``decisions`` do not fit what the request allows, or None: one per action request,
    each of an allowed type, an edit keeping the tool name and fitting its argument schema, a
    response carrying its message. A reviewer's decision and an admin's reversal pass the same."""
    actions = request.action_requests
    if len(decisions) != len(actions):
        return f"the review asks about {len(actions)} action(s) but {len(decisions)} decision(s) were given"
    for i, (action, decision) in enumerate(zip(actions, decisions)):
        allowed = request.allowed_for(i)
        if decision.type not in allowed:
            return f"{decision.type!r} is not allowed for {action.name!r}; allowed: {', '.join(allowed)}"
        if decision.type == "edit":
            edited = decision.edited_action
            if edited is None:
                return f"an edit of {action.name!r} needs edited_action with the new arguments"
            if edited.name != action.name:
                return f"an edit may not change the tool name ({action.name!r} to {edited.name!r})"
            try:
                _check_args(action, edited.args)
            except EditError as exc:
                return str(exc)
        if decision.type == "respond" and not (decision.message or "").strip():
            return f"a response to {action.name!r} needs a message"
    return None


def decide(
    ticket: Ticket,
    mapping: Mapping,
    request: ReviewRequest,
    *,
    since: datetime | None = None,
    bridge_account: Person | None = None,
    groups: set[str] | None = None,
    approvals: Sequence[tuple[str, str]] = (),
) -> Decided | Refused | Approval | None:
    """None while the ticket is still open; otherwise decisions, or why they are refused.

    ``groups`` are the changer's groups in the ticket system (resolved by the connector when
    the mapping names ``reviewers.groups``); ``approvals`` are the (person_key, change_ref)
    pairs already recorded towards ``reviewers.quorum``."""
    kind = deciding_type(ticket, mapping)
    if kind is None:
        return None
    person = ticket.changed_by
    reviewer = reviewer_of(person)
    if bridge_account is not None and person is not None and person.id == bridge_account.id:
        return None  # the bridge's own change (e.g. closing on cancel) never decides
    who = (person.email or person.name or person.id) if person else "an unknown user"
    spec = mapping.reviewers
    if person is None and (spec.allow or spec.groups or spec.quorum > 1):
        return Refused("the ticket system does not say who made this change", reviewer)
    if spec.service_accounts and _matches(person, spec.service_accounts):
        return Refused(f"{who} is the agent's service account and can never decide (four-eyes rule)", reviewer)
    if spec.allow or spec.groups:
        in_group = bool(groups and {g.lower() for g in groups} & {g.lower() for g in spec.groups})
        if not (_matches(person, spec.allow) or in_group):
            return Refused(f"{who} is not allowed to decide this review", reviewer)
    if request.requested_by and _matches(person, [request.requested_by]):
        return Refused("the requester cannot decide their own review (four-eyes rule)", reviewer)

    comments = _reviewer_comments(ticket, mapping, since)
    message = _message(mapping, comments)
    decisions: list[Decision] = []
    if kind == "approve":
        edit_text = _edit_text(ticket, mapping, comments)
        edits: dict[int, EditedAction] = {}
        if edit_text is not None:
            try:
                index, edited = parse_edit(edit_text, request)
            except EditError as exc:
                return Refused(str(exc), reviewer)
            edits[index] = edited
        for i, _action in enumerate(request.action_requests):
            decisions.append(Decision(type="edit", edited_action=edits[i]) if i in edits else Decision(type="approve"))
    elif kind == "reject":
        text = message or "Rejected by the reviewer."
        decisions = [Decision(type="reject", message=text) for _ in request.action_requests]
    else:
        if not message:
            return Refused("a response needs your answer as a comment before the status change", reviewer)
        decisions = [Decision(type="respond", message=message) for _ in request.action_requests]

    problem = check_decisions(request, decisions)
    if problem is not None:
        return Refused(problem, reviewer)
    if spec.quorum > 1 and overall_type(decisions) in ("approve", "edit"):
        recorded = dict(approvals)
        key, ref = person_key(person), change_ref(ticket)
        if key in recorded:
            if recorded[key] == ref:
                return None  # this approval is already counted; still waiting for the others
            return Refused(
                f"{who} has already approved; {spec.quorum - len(recorded)} more approval(s) from other reviewers "
                f"are needed ({len(recorded)} of {spec.quorum})",
                reviewer,
            )
        if len(recorded) + 1 < spec.quorum:
            return Approval(reviewer, key, ref, len(recorded) + 1, spec.quorum)
    return Decided(decisions, reviewer)


def overall_type(decisions: list[Decision]) -> str:
    """The review's status word for a list of per-action decisions."""
    types = {d.type for d in decisions}
    for kind in ("reject", "respond", "edit"):
        if kind in types:
            return kind
    return "approve"
