"""Mappings: how a review becomes a ticket, and how that ticket's changes become a decision.

A mapping is one YAML file in ``mappings/``. Ticket fields are Jinja2 templates rendered in
an ``ImmutableSandboxedEnvironment`` (admins edit them; a template can format, never execute
code, reach Python internals or change the data it is shown). Rendered fields are handed to
the connector in the vendor's shape.
"""

from __future__ import annotations

import hashlib
import html
import json
import re
from collections.abc import Mapping as MappingABC
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

import yaml
from jinja2 import StrictUndefined, TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator

from .errors import MappingError
from .schemas import ReviewRequest


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TicketSpec(_Model):
    target: Literal["new", "origin"] = Field(
        default="new",
        description="new: create a review ticket; origin: review inside the customer's own ticket.",
    )
    fields: dict[str, Any] = Field(
        default_factory=dict, description="Vendor-shaped fields; every string is a Jinja2 template."
    )
    comment: str | None = Field(
        default=None, description="Template of an opening internal note (work note, private comment)."
    )


class DecisionSpec(_Model):
    field: str = Field(default="status", description="The ticket field whose value decides.")
    values: dict[str, Literal["approve", "reject", "respond"]] = Field(
        description="Field value (or its display label) -> decision type. Other values: still open."
    )
    edit_field: str | None = Field(
        default=None, description="Field holding edited reply text or arguments as JSON."
    )
    edit_prefix: str = Field(default="/edit", description="A comment starting with this is an edit.")
    message_from: Literal["internal_comment", "any_comment"] = "internal_comment"


class ReviewersSpec(_Model):
    allow: list[str] = Field(
        default_factory=list, description="Ids or emails allowed to decide; with `groups` also empty, anyone may."
    )
    groups: list[str] = Field(
        default_factory=list,
        description="Groups in the ticket system (resolved by the connector) whose members may decide.",
    )
    service_accounts: list[str] = Field(
        default_factory=list, description="The agent's own accounts in the ticket system: never allowed to decide."
    )
    quorum: int = Field(
        default=1, ge=1, le=10, description="Distinct approvals before an approve counts; any reject ends it."
    )
    reopen: dict[str, Any] = Field(
        default_factory=dict,
        description="Fields set on the ticket after a partial approval (e.g. status: In Review), so the next "
        "approver can approve the same way.",
    )


Clearance = Literal["public", "internal", "confidential", "restricted"]


class PatternSpec(_Model):
    name: str = Field(pattern=r"^[A-Za-z0-9_-]+$")
    regex: str
    show_from: Clearance | None = Field(
        default=None, description="The lowest clearance that sees it unmasked; none: always masked."
    )

    @field_validator("regex")
    @classmethod
    def _compiles(cls, value: str) -> str:
        try:
            re.compile(value)
        except re.error as exc:
            raise ValueError(f"not a valid regular expression: {exc}") from exc
        return value


class RedactionSpec(_Model):
    """What is masked before text reaches the ticket system (bridge/redact.py has the table)."""

    clearance: Clearance = Field(
        default="internal",
        description="public: masks everything; internal: shows emails and phones; confidential: also IBANs and "
        "national ids; restricted: also custom patterns that allow it. Card numbers and secrets are always masked.",
    )
    patterns: list[PatternSpec] = Field(default_factory=list, description="Custom patterns to mask.")
    phone_region: str = Field(default="US", description="Region for phone numbers written without +country code.")


class ActionSpec(_Model):
    """Something the bridge does to a ticket: optional field changes and a comment."""

    fields: dict[str, Any] = Field(default_factory=dict)
    comment: str | None = None
    public: bool = False


class ReplySpec(_Model):
    """How an approved reply is posted back to the origin ticket."""

    public: bool = True
    channel: Literal["comment", "email"] = Field(
        default="comment",
        description="comment: a comment on the origin ticket (public unless `public: false`); email: an e-mail to "
        "the customer, recorded on the ticket (Salesforce only: an outgoing EmailMessage on the Case, sent to its "
        "SuppliedEmail or its Contact's email). An origin in a system without e-mail replies fails the post-back "
        "with an error saying so.",
    )
    fields: dict[str, Any] = Field(
        default_factory=dict, description="Set on the origin ticket after the reply, e.g. status."
    )


class SlaSpec(_Model):
    expire_after_seconds: int = Field(gt=0)
    on_expire: Literal["approve", "reject"] = "reject"
    message: str = "The review expired before anyone decided."
    remind_after_seconds: int | None = Field(default=None, gt=0, description="Comment on the ticket if still open.")
    remind_message: str = "Reminder: this review is still waiting for a decision."
    escalate_after_seconds: int | None = Field(default=None, gt=0, description="Apply `escalate` if still open.")
    escalate: ActionSpec = Field(
        default_factory=lambda: ActionSpec(comment="Escalated: this review is overdue."),
        description="Fields (a priority bump, another assignee) and a comment applied on escalation.",
    )


class Mapping(_Model):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    connection: str
    description: str | None = None
    ticket: TicketSpec
    decision: DecisionSpec
    reviewers: ReviewersSpec = Field(default_factory=ReviewersSpec)
    on_cancel: ActionSpec = Field(
        default_factory=lambda: ActionSpec(comment="The agent withdrew this review; nothing to decide.")
    )
    on_decided: ActionSpec = Field(default_factory=ActionSpec)
    reply: ReplySpec = Field(default_factory=ReplySpec)
    sla: SlaSpec | None = None
    redaction: RedactionSpec = Field(default_factory=RedactionSpec)

    @field_validator("ticket")
    @classmethod
    def _templates_compile(cls, ticket: TicketSpec) -> TicketSpec:
        for path, template in _walk_templates(ticket.fields, "ticket.fields"):
            _compile(template, path)
        if ticket.comment:
            _compile(ticket.comment, "ticket.comment")
        return ticket

    _version: str | None = PrivateAttr(default=None)

    @property
    def version(self) -> str:
        """Content hash: a review records the version it was rendered with. Computed once
        (a mapping is not changed after loading: edits make a new one)."""
        if self._version is None:
            self._version = hashlib.sha256(self.model_dump_json().encode()).hexdigest()[:12]
        return self._version


# ----- the sandboxed template environment --------------------------------------


def _jira_escape(value: Any) -> str:
    """Make text safe inside Jira wiki markup (no accidental tables, macros or links)."""
    text = "" if value is None else str(value)
    text = re.sub(r"([{}\[\]|!])", r"\\\1", text)
    # Emphasis marks only act at word edges ("issue_refund" and "A-100" stay as they are).
    return re.sub(r"(?<!\w)([*_+^~#-])|([*_+^~-])(?!\w)", lambda m: "\\" + (m.group(1) or m.group(2)), text)


def _cell(value: Any) -> str:
    if isinstance(value, (dict, list)):
        return json.dumps(value, ensure_ascii=False, sort_keys=True)
    return "" if value is None else str(value)


def _jira_table(args: MappingABC | None, header: tuple[str, str] = ("Argument", "Value")) -> str:
    """A Jira wiki-markup table of a dict (``||head||`` then ``|cell|`` rows)."""
    if not args:
        return "_(no arguments)_"
    rows = [f"||{header[0]}||{header[1]}||"]
    for key, value in args.items():
        cell = _jira_escape(_cell(value)).replace("\n", " ") or " "
        rows.append(f"|{_jira_escape(key)}|{cell}|")
    return "\n".join(rows)


def _html_table(args: MappingABC | None) -> str:
    if not args:
        return "<p><em>(no arguments)</em></p>"
    rows = "".join(
        f"<tr><td>{html.escape(str(k))}</td><td>{html.escape(_cell(v))}</td></tr>" for k, v in args.items()
    )
    return f"<table><tr><th>Argument</th><th>Value</th></tr>{rows}</table>"


def _text_table(args: MappingABC | None) -> str:
    if not args:
        return "(no arguments)"
    width = max(len(str(k)) for k in args)
    return "\n".join(f"  {str(k).ljust(width)} : {_cell(v)}" for k, v in args.items())


def _tojson(value: Any, indent: int | None = None) -> str:
    return json.dumps(value, ensure_ascii=False, indent=indent, sort_keys=True, default=str)


def _percent(value: Any) -> str:
    return "n/a" if value is None else f"{float(value) * 100:.0f}%"


class _Env(ImmutableSandboxedEnvironment):
    """Sandboxed, and lists and dicts are read-only: a template or route condition may not
    change the review it is shown (routing sees the very dict that is stored)."""


ENV = _Env(undefined=StrictUndefined, autoescape=False, keep_trailing_newline=False)
ENV.filters.update(
    jira_escape=_jira_escape,
    jira_table=_jira_table,
    html_table=_html_table,
    text_table=_text_table,
    tojson=_tojson,
    percent=_percent,
    html_escape=lambda v: html.escape("" if v is None else str(v)),
)


@lru_cache(maxsize=1024)
def _compile(source: str, path: str):
    """Compiled once per template text: reading a review's mapping snapshot and rendering
    its fields compiled every template again (40% of the worker's time per webhook, bench/).
    A compiled template is immutable and safe to render from several threads."""
    try:
        return ENV.from_string(source)
    except TemplateError as exc:
        raise MappingError(f"{path}: template does not compile: {exc}", details={"field": path}) from exc


def _walk_templates(value: Any, path: str):
    if isinstance(value, str):
        yield path, value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _walk_templates(item, f"{path}.{key}")
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _walk_templates(item, f"{path}[{index}]")


def template_context(review_id: str, request: ReviewRequest, **extra: Any) -> dict[str, Any]:
    """What a template can read. Plain data only: the sandbox sees no Python objects."""
    data = request.model_dump(mode="json")
    reply = next((a["args"].get("body") for a in data["action_requests"] if a["name"] == "reply"), None)
    return {
        "review": {"id": review_id, **data},
        "actions": data["action_requests"],
        "reply": reply,
        **extra,
    }


def render_value(value: Any, context: dict[str, Any], path: str) -> Any:
    """Render every string in a nested structure; other values pass through."""
    if isinstance(value, str):
        if "{{" not in value and "{%" not in value:
            return value
        try:
            return _compile(value, path).render(context).strip("\n")
        except MappingError:
            raise
        except Exception as exc:  # the sandbox raises SecurityError, UndefinedError, TypeError...
            raise MappingError(f"{path}: {type(exc).__name__}: {exc}", details={"field": path}) from exc
    if isinstance(value, dict):
        return {key: render_value(item, context, f"{path}.{key}") for key, item in value.items()}
    if isinstance(value, list):
        return [render_value(item, context, f"{path}[{i}]") for i, item in enumerate(value)]
    return value


class RenderedTicket(BaseModel):
    fields: dict[str, Any]
    comment: str | None = None


def render_ticket(mapping: Mapping, review_id: str, request: ReviewRequest, **extra: Any) -> RenderedTicket:
    context = template_context(review_id, request, mapping=mapping.name, **extra)
    fields = render_value(mapping.ticket.fields, context, "ticket.fields")
    comment = render_value(mapping.ticket.comment, context, "ticket.comment") if mapping.ticket.comment else None
    return RenderedTicket(fields=fields, comment=comment)


def render_action(spec: ActionSpec, context: dict[str, Any], path: str) -> ActionSpec:
    return ActionSpec(
        fields=render_value(spec.fields, context, f"{path}.fields"),
        comment=render_value(spec.comment, context, f"{path}.comment") if spec.comment else None,
        public=spec.public,
    )


# ----- loading ------------------------------------------------------------------


def describe_validation_error(exc: ValidationError, file: str, text: str | None = None) -> list[dict[str, Any]]:
    """One detail per problem: file, line (when ``text`` is given), field and reason."""
    return [
        {
            "file": file,
            "line": yaml_line(text, err["loc"]) if text is not None else None,
            "field": ".".join(str(p) for p in err["loc"]) or "(root)",
            "reason": err["msg"],
        }
        for err in exc.errors()
    ]


def yaml_line(text: str, path: Any) -> int | None:
    """The 1-based line where ``path`` (``("ticket", "fields", "summary")`` or
    ``"ticket.fields.summary"``) is written in ``text``: the deepest key or item found, so
    an admin is sent to the line to fix even for a key that is missing below it."""
    if isinstance(path, str):
        path = [int(p) if p.isdecimal() else p for p in re.split(r"\.|\[(\d+)\]", path) if p]
    try:
        node = yaml.compose(text)
    except yaml.YAMLError:
        return None
    line = None
    for part in path:
        if isinstance(node, yaml.MappingNode):
            match = next(((k, v) for k, v in node.value if str(k.value) == str(part)), None)
            if match is None:
                return line
            line, node = match[0].start_mark.line + 1, match[1]
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            node = node.value[part]
            line = node.start_mark.line + 1
        else:
            return line
    return line if line is not None else (1 if node is not None else None)


def parse_mapping(text: str, *, file: str) -> Mapping:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        line = getattr(getattr(exc, "problem_mark", None), "line", None)
        raise MappingError(
            f"{file}: not valid YAML", details=[{"file": file, "line": None if line is None else line + 1, "reason": str(exc)}]
        ) from exc
    if not isinstance(data, dict):
        raise MappingError(f"{file}: a mapping file must hold a YAML mapping", details=[{"file": file}])
    data.setdefault("name", Path(file).stem)
    try:
        return Mapping.model_validate(data)
    except ValidationError as exc:
        details = describe_validation_error(exc, file, text)
        first = details[0]
        raise MappingError(f"{file}: {first['field']}: {first['reason']}", details=details) from exc
    except MappingError as exc:  # a template that does not compile (raised by a validator)
        field = exc.details.get("field") if isinstance(exc.details, dict) else None
        if field:
            exc.details = [{"file": file, "line": yaml_line(text, field), "field": field, "reason": exc.message}]
        raise


def load_mappings(directory: Path) -> dict[str, Mapping]:
    """Every ``*.yaml`` in ``directory`` except ``routes.yaml``; errors name the file."""
    mappings: dict[str, Mapping] = {}
    for path in sorted(directory.glob("*.y*ml")):
        if path.stem == "routes" or path.suffix not in (".yaml", ".yml"):
            continue
        mapping = parse_mapping(path.read_text(), file=str(path))
        if mapping.name in mappings:
            raise MappingError(f"{path}: mapping name {mapping.name!r} is used twice")
        mappings[mapping.name] = mapping
    return mappings
