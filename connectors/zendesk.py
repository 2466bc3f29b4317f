"""Zendesk Support connector, through the ``zenpy`` client (API token authentication).

Review tickets are stamped with ``external_id = review_id`` and the tag ``hitl_<review_id>``
so a retried create finds the first ticket instead of making a second. Decisions are read
back from the ticket (status, tags, ``custom_fields``) and its audits (who changed them).
Webhooks (trigger or event subscription, both HMAC-signed by Zendesk) are verified and parsed
in ``zendesk_webhooks``.

zenpy builds ``https://{subdomain}.{domain}/api/v2`` URLs. Instead of its process-global
``ZENPY_FORCE_NETLOC`` override, each connector splits its own ``base_url`` into that
subdomain and domain (``https://acme.zendesk.com`` -> ``acme`` + ``zendesk.com``;
``https://127.0.0.1:8443`` -> ``127`` + ``0.0.1:8443``), so several connections to
different hosts live side by side in one process.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, ClassVar
from urllib.parse import quote, urlsplit

import requests
from pydantic import Field, SecretStr, model_validator
from zenpy import Zenpy
from zenpy.lib.api import BaseApi
from zenpy.lib.api_objects import Comment as ZenpyComment
from zenpy.lib.api_objects import Ticket as ZenpyTicket
from zenpy.lib.exception import APIException, ZenpyException

from .http import PinnedSession
from .base import (Comment, ConnectionConfig, FieldUse, MappingProblem, Person, PlannedRequest, Ticket, TicketEvent, TicketRef,
                   bridge_account, remember_account)
from .errors import (
    AuthError,
    ConnectorError,
    PermanentError,
    RateLimitedError,
    RemoteNotFoundError,
    RetryableError,
    retry_after_seconds,
)
from .zendesk_webhooks import RECOMMENDED_WEBHOOK_BODY, ensure_webhook_and_trigger, parse_webhook
from .zendesk_webhooks import parse_time as _parse_time

# Audit fields whose change can be a decision (custom fields appear as their numeric id).
DECIDING_AUDIT_FIELDS = {"status", "tags"}


class ZendeskConfig(ConnectionConfig):
    """A Zendesk account reached with an agent's email and API token."""

    email: str = Field(description="Email of the agent the bridge signs in as.")
    api_token: SecretStr = Field(description="Admin Center > Apps and integrations > Zendesk API token.")
    author_id: int | None = Field(
        default=None, description="User id that posts the bridge's comments (default: the signed-in agent)."
    )

    @model_validator(mode="after")
    def _base_url_has_a_subdomain(self) -> "ZendeskConfig":
        _split_base_url(self.base_url)
        return self

    @property
    def subdomain(self) -> str:
        return _split_base_url(self.base_url)[1]


def _split_base_url(base_url: str) -> tuple[str, str, str]:
    """(scheme, subdomain, domain) such that zenpy's ``{subdomain}.{domain}`` is our host."""
    parts = urlsplit(base_url)
    if parts.scheme not in ("https", "http") or not parts.netloc:
        raise ValueError("base_url must look like https://yourcompany.zendesk.com")
    if parts.path.strip("/"):
        raise ValueError("base_url must not have a path: zenpy always calls /api/v2 at the host's root")
    subdomain, dot, domain = parts.netloc.partition(".")
    if not dot or not subdomain or not domain or "@" in subdomain:
        raise ValueError("base_url's host must be a dotted name or IPv4 address, e.g. acme.zendesk.com")
    return parts.scheme, subdomain, domain


def stamp_tag(review_id: str) -> str:
    """``hitl_<review_id>``: Zendesk tags are lower-case and cannot hold spaces."""
    return "hitl_" + re.sub(r"[^a-z0-9_\-]", "_", review_id.lower())


class _RateLimited(Exception):
    """Raised from the session's response hook so zenpy never sleeps on a 429 itself."""

    def __init__(self, retry_after: float | None):
        self.retry_after = retry_after


def _raise_on_429(response: requests.Response, *args: Any, **kwargs: Any) -> None:
    if response.status_code == 429:
        _close_response(response)
        raise _RateLimited(retry_after_seconds(response.headers.get("Retry-After")))


def _short_message(response: requests.Response | None) -> str:
    """The vendor's short message: ``error``/``description`` and a first validation detail."""
    if response is None:
        return "Zendesk error"
    try:
        body = response.json()
    except ValueError:
        return response.reason or "Zendesk error"
    if isinstance(body, dict) and isinstance(body.get("errors"), list) and body["errors"]:
        first = body["errors"][0] if isinstance(body["errors"][0], dict) else {}
        return str(first.get("detail") or first.get("title") or "Zendesk error")[:200]
    if not isinstance(body, dict):
        return "Zendesk error"
    error = body.get("error")
    if isinstance(error, dict):
        error = error.get("title") or error.get("message")
    message = str(body.get("description") or error or "Zendesk error")
    details = body.get("details")
    if isinstance(details, dict):
        for items in details.values():
            if isinstance(items, list) and items and isinstance(items[0], dict) and items[0].get("description"):
                message = f"{message}: {items[0]['description']}"
                break
    return message[:200]


def translate_error(exc: BaseException, operation: str) -> ConnectorError:
    """The one place zenpy's and requests' errors become ``connectors.errors``."""
    if isinstance(exc, ConnectorError):
        return exc
    if isinstance(exc, _RateLimited):
        return RateLimitedError("rate limited by Zendesk", retry_after=exc.retry_after, status=429, operation=operation)
    if isinstance(exc, (requests.Timeout, requests.ConnectionError)):
        return RetryableError(f"Zendesk unreachable ({type(exc).__name__})", operation=operation)
    response = getattr(exc, "response", None)
    if isinstance(exc, (APIException, requests.HTTPError)) and response is not None:
        status = response.status_code
        message = _short_message(response)
        if status in (401, 403):
            return AuthError(message, status=status, operation=operation)
        if status == 404:
            return RemoteNotFoundError(message, status=status, operation=operation)
        if status >= 500 or status == 409:
            return RetryableError(message, status=status, operation=operation)
        return PermanentError(message, status=status, operation=operation)
    if isinstance(exc, requests.RequestException):
        return RetryableError(f"Zendesk request failed ({type(exc).__name__})", operation=operation)
    if isinstance(exc, ZenpyException):
        return PermanentError(f"unexpected Zendesk answer ({type(exc).__name__})", operation=operation)
    return PermanentError(f"{type(exc).__name__} talking to Zendesk", operation=operation)


def _close_response(response: Any) -> None:
    """Close an error response for good: the exception chain may outlive the session, and
    an unclosed body keeps its TLS socket open (a server then waits on it at shutdown)."""
    if isinstance(response, requests.Response):
        response.close()
        if response.raw is not None:
            response.raw.close()


def _present(fields: Mapping[str, Any]) -> dict[str, Any]:
    """Top-level fields minus those that rendered to nothing (None or blank text)."""
    return {k: v for k, v in fields.items() if v is not None and not (isinstance(v, str) and not v.strip())}


def _as_dict(obj: Any) -> dict[str, Any]:
    return obj.to_dict() if hasattr(obj, "to_dict") else dict(obj or {})


class ZendeskConnector:
    name: ClassVar[str] = "zendesk"
    config_model: ClassVar[type[ZendeskConfig]] = ZendeskConfig

    def __init__(self, config: ZendeskConfig):
        self.config = config
        self._zenpy: Zenpy | None = None
        self._session: requests.Session | None = None
        self._users: dict[int, Person] = {}
        self._field_labels: dict[int, dict[str, str]] | None = None

    # ----- plumbing --------------------------------------------------------------
    @property
    def client(self) -> Zenpy:
        """zenpy on our own session: TLS bundle, no transport retries, 429 raised not slept."""
        if self._zenpy is None:
            scheme, subdomain, domain = _split_base_url(self.config.base_url)
            session = PinnedSession().pin_to(self.config)
            session.hooks["response"].append(_raise_on_429)
            client = Zenpy(subdomain=subdomain, domain=domain, email=self.config.email,
                           token=self.config.api_token.get_secret_value(), session=session,
                           timeout=self.config.timeout_seconds, disable_cache=True)
            for api in _apis(client):
                api.protocol = scheme
            self._session, self._zenpy = session, client
        return self._zenpy

    @contextmanager
    def _calling(self, operation: str) -> Iterator[None]:
        """Translate whatever escapes into ``connectors.errors``."""
        try:
            yield
        except Exception as exc:  # noqa: BLE001 - translated, never swallowed
            _close_response(getattr(exc, "response", None))
            raise translate_error(exc, operation) from None

    def _ref(self, ticket_id: int | str) -> TicketRef:
        return TicketRef(key=str(ticket_id), display=f"#{ticket_id}", url=f"{self.config.base_url}/agent/tickets/{ticket_id}")

    @staticmethod
    def _ticket_id(key: str, operation: str) -> int:
        if not str(key).isdecimal():
            raise RemoteNotFoundError(f"{key!r} is not a Zendesk ticket id", operation=operation)
        return int(key)

    # ----- the Connector protocol -------------------------------------------------
    def check(self) -> Person:
        with self._calling("check"):
            me = self.client.users.me()
        return remember_account(self.config.base_url, self.config.email, Person(id=str(me.id), name=me.name, email=me.email))

    def _bridge_account(self) -> Person:
        return bridge_account(self.config.base_url, self.config.email, self.check)

    def create_ticket(self, fields: Mapping[str, Any], *, review_id: str) -> TicketRef:
        """Create a ticket; ``additional_tags`` fold into ``tags``; empty fields are left out."""
        data = _present(fields)
        tags = [t for t in data.pop("tags", None) or [] if t]
        tags += [t for t in data.pop("additional_tags", None) or [] if t not in tags]
        data.pop("remove_tags", None)  # an update-only parameter; nothing to remove on a new ticket
        data["tags"] = tags + [stamp_tag(review_id)]
        data["external_id"] = review_id
        if not data.get("comment") and not data.get("description"):
            data["comment"] = {"body": data.get("subject") or f"hitl-bridge review {review_id}", "public": False}
        data["comment"] = self._comment_payload(data["comment"]) if data.get("comment") else None
        with self._calling("create_ticket"):
            audit = self.client.tickets.create(ZenpyTicket(**{k: v for k, v in data.items() if v is not None}))
        return self._ref(audit.ticket.id)

    def find_ticket(self, review_id: str) -> TicketRef | None:
        with self._calling("find_ticket"):
            ids = sorted(t.id for t in self.client.tickets(external_id=quote(review_id, safe="")))
            if not ids:
                ids = sorted(r.id for r in self.client.search(type="ticket", tags=stamp_tag(review_id)))
        return self._ref(ids[0]) if ids else None

    def get_ticket(self, key: str) -> Ticket:
        ticket_id = self._ticket_id(key, "get_ticket")
        with self._calling("get_ticket"):
            raw = _as_dict(self.client.tickets(id=ticket_id))
            comments = [_as_dict(c) for c in self.client.tickets.comments(ticket=ticket_id)]
            audits = [_as_dict(a) for a in self.client.tickets.audits(ticket=ticket_id)]
            bridge_ids = self._bridge_ids()
            changed_by = self._changed_by(audits, bridge_ids)
            people = {c["author_id"]: self._person(c["author_id"]) for c in comments if c.get("author_id")}
            labels = self._labels(raw.get("custom_fields") or [])
        fields = dict(raw)
        fields.pop("fields", None)
        for item in raw.get("custom_fields") or []:
            fields[f"custom_fields.{item['id']}"] = item.get("value")
        return Ticket(
            ref=self._ref(ticket_id),
            status=raw.get("status"),
            fields=fields,
            labels=labels,
            comments=[
                Comment(id=str(c["id"]), body=c.get("body") or c.get("plain_body") or "",
                        author=people.get(c.get("author_id")), public=bool(c.get("public")),
                        created=_parse_time(c.get("created_at")), by_bridge=str(c.get("author_id")) in bridge_ids)
                for c in comments
            ],
            changed_by=changed_by,
            updated=_parse_time(raw.get("updated_at")),
        )

    def update_ticket(self, key: str, fields: Mapping[str, Any]) -> None:
        """Plain Tickets API update (``status``, ``additional_tags``, ``remove_tags``,
        ``custom_fields``...). Top-level fields that rendered empty are left out, so one
        mapping can serve both a create and an update (e.g. ``subject`` only on a create)."""
        ticket_id = self._ticket_id(key, "update_ticket")
        data = {k: v for k, v in _present(fields).items() if k != "id"}
        if not data:
            return
        if data.get("comment"):
            data["comment"] = self._comment_payload(data["comment"])
        with self._calling("update_ticket"):
            self.client.tickets.update(ZenpyTicket(id=ticket_id, **data))

    def add_comment(self, key: str, body: str, *, public: bool) -> Comment:
        ticket_id = self._ticket_id(key, "add_comment")
        payload = self._comment_payload({"body": body, "public": public})
        with self._calling("add_comment"):
            audit = self.client.tickets.update(ZenpyTicket(id=ticket_id, comment=payload))
            me = self._bridge_account()
        event = next((_as_dict(e) for e in (_as_dict(audit.audit).get("events") or []) if _as_dict(e).get("type") == "Comment"), {})
        author_id = str(event.get("author_id") or self.config.author_id or me.id)
        author = me if author_id == me.id else Person(id=author_id)
        return Comment(id=str(event.get("id") or ""), body=body, author=author, public=public,
                       created=_parse_time(_as_dict(audit.audit).get("created_at")), by_bridge=True)

    def groups_of(self, person: Person) -> set[str]:
        """Names of the Zendesk groups an agent belongs to (``GET /api/v2/users/{id}/groups.json``,
        every page). An end user, an unknown or deleted user belongs to no group. Read at each
        call, never cached, so a change in Zendesk takes effect at the next decision."""
        if not str(person.id).isdecimal():
            return set()
        try:
            with self._calling("groups_of"):
                groups = [_as_dict(g) for g in self.client.users.groups(int(person.id))]
        except RemoteNotFoundError:
            return set()
        return {str(g["name"]) for g in groups if g.get("name") and not g.get("deleted")}

    # ----- admin: preview and doctor ---------------------------------------------
    def plan_requests(
        self, fields: Mapping[str, Any], *, review_id: str, comment: str | None, origin_key: str | None = None
    ) -> list[PlannedRequest]:
        api = f"{self.config.base_url}/api/v2"

        def comment_json(body: Any) -> dict[str, Any]:
            data = {"body": body} if isinstance(body, str) else dict(body)
            if str(data.get("body") or "").lstrip().startswith("<") and "html_body" not in data:
                data["html_body"] = data.pop("body")
            if self.config.author_id is not None:
                data.setdefault("author_id", self.config.author_id)
            return data

        if origin_key:
            data = {k: v for k, v in _present(fields).items() if k != "id"}
            if data.get("comment"):
                data["comment"] = comment_json(data["comment"])
            ticket_url = f"{api}/tickets/{origin_key}.json"
            planned = [PlannedRequest("PUT", ticket_url, {"ticket": data}, "update the customer's ticket")] if data else []
        else:
            data = _present(fields)
            tags = [t for t in data.pop("tags", None) or [] if t]
            tags += [t for t in data.pop("additional_tags", None) or [] if t not in tags]
            data.pop("remove_tags", None)
            data["tags"] = tags + [stamp_tag(review_id)]
            data["external_id"] = review_id
            if not data.get("comment") and not data.get("description"):
                data["comment"] = {"body": data.get("subject") or f"hitl-bridge review {review_id}", "public": False}
            data["comment"] = comment_json(data["comment"]) if data.get("comment") else None
            ticket_url = f"{api}/tickets/{{new ticket id}}.json"
            planned = [PlannedRequest("POST", f"{api}/tickets.json", {"ticket": {k: v for k, v in data.items() if v is not None}},
                                      "create the review ticket")]
        if comment:
            planned.append(PlannedRequest("PUT", ticket_url, {"ticket": {"comment": comment_json({"body": comment, "public": False})}},
                                          "the opening internal note"))
        return planned

    SYSTEM_FIELDS: ClassVar[dict[str, tuple[str, ...] | None]] = {
        "subject": None, "comment": None, "description": None, "tags": None, "additional_tags": None, "remove_tags": None,
        "priority": ("low", "normal", "high", "urgent"), "status": ("new", "open", "pending", "hold", "solved", "closed"),
        "type": ("problem", "incident", "question", "task"), "group_id": None, "assignee_id": None, "assignee_email": None,
        "requester_id": None, "requester": None, "external_id": None, "due_at": None, "custom_fields": None,
        "collaborator_ids": None, "email_ccs": None, "followers": None, "brand_id": None, "ticket_form_id": None,
        "organization_id": None, "problem_id": None, "submitter_id": None, "safe_update": None, "updated_stamp": None,
    }

    def check_mapping(self, uses: Sequence[FieldUse]) -> list[MappingProblem]:
        """Ticket properties, custom ticket fields (``custom_fields.<id>``, ``custom_fields``
        lists) and their drop-down options, groups and status/priority values."""
        problems: list[MappingProblem] = []
        with self._calling("check_mapping"):
            fields = {int(f["id"]): f for f in (_as_dict(x) for x in self.client.ticket_fields())}
            groups = {int(g["id"]): g for g in (_as_dict(x) for x in self.client.groups())}

        def check_custom(where: str, field_id: Any, value: Any) -> None:
            field = fields.get(int(field_id)) if str(field_id).isdecimal() else None
            if field is None:
                problems.append(MappingProblem(where, f"Zendesk has no ticket field {field_id}"))
                return
            options = [_as_dict(o).get("value") for o in field.get("custom_field_options") or []]
            if options and value not in (None, "") and not isinstance(value, (list, dict)) and str(value) not in options:
                problems.append(MappingProblem(where, f"{value!r} is not an option of {field.get('title')!r} ({field_id}); options: {options}"))

        for use in uses:
            name, value = use.field, use.value
            if name.startswith("custom_fields."):
                check_custom(use.where, name.split(".", 1)[1], value)
            elif name == "custom_fields":
                for item in value or []:
                    if isinstance(item, Mapping):
                        check_custom(use.where, item.get("id"), item.get("value"))
            elif name not in self.SYSTEM_FIELDS:
                problems.append(MappingProblem(use.where, f"{name!r} is not a Zendesk ticket property; custom fields are custom_fields.<id>"))
            elif name == "group_id" and value not in (None, ""):
                if not str(value).isdecimal() or int(value) not in groups:
                    problems.append(MappingProblem(use.where, f"Zendesk has no group {value}; groups: {sorted((g['id'], g['name']) for g in groups.values())}"))
            elif self.SYSTEM_FIELDS[name] and value not in (None, "") and isinstance(value, str) and value not in self.SYSTEM_FIELDS[name]:
                problems.append(MappingProblem(use.where, f"{value!r} is not a Zendesk {name}; one of {list(self.SYSTEM_FIELDS[name])}"))
        return problems

    def verify_and_parse_webhook(self, headers: Mapping[str, str], raw_body: bytes) -> list[TicketEvent]:
        return parse_webhook(self.config, headers, raw_body)

    def acknowledge(self, events: list[TicketEvent]) -> tuple[bytes, str] | None:
        return None

    def close(self) -> None:
        if self._session is not None:
            self._session.close()
        self._session = self._zenpy = None

    # ----- setup: webhook + trigger (zendesk_webhooks) ------------------------------------
    def ensure_webhook_and_trigger(self, *, endpoint_url: str, name: str = "hitl-bridge") -> dict[str, Any]:
        """Create (or find by name) the webhook and the trigger that calls it; idempotent.

        Returns ``webhook_id``, ``trigger_id``, ``signing_secret`` (to put in the connection's
        ``webhook_secrets``) and ``created`` (whether anything was created this time).
        """
        with self._calling("setup"):
            return ensure_webhook_and_trigger(self.client, endpoint_url=endpoint_url, name=name)

    # ----- helpers --------------------------------------------------------------------
    def _comment_payload(self, comment: Any) -> ZenpyComment:
        data = {"body": comment} if isinstance(comment, str) else dict(comment)
        body = str(data.get("body") or "")
        if body.lstrip().startswith("<") and "html_body" not in data:
            data["html_body"] = data.pop("body")  # the mapping rendered HTML: Zendesk takes it as html_body
        if self.config.author_id is not None:
            data.setdefault("author_id", self.config.author_id)
        return ZenpyComment(**data)

    def _bridge_ids(self) -> set[str]:
        ids = {self._bridge_account().id}
        if self.config.author_id is not None:
            ids.add(str(self.config.author_id))
        return ids

    def _person(self, user_id: int) -> Person:
        if user_id not in self._users:
            user = self.client.users(id=user_id)
            self._users[user_id] = Person(id=str(user.id), name=user.name, email=user.email)
        return self._users[user_id]

    def _changed_by(self, audits: list[dict[str, Any]], bridge_ids: set[str]) -> Person | None:
        """Author of the newest non-bridge audit that changed the status, tags or a custom field."""
        for audit in reversed(audits):
            if str(audit.get("author_id")) in bridge_ids or not audit.get("author_id"):
                continue
            for event in audit.get("events") or []:
                event = _as_dict(event)
                name = str(event.get("field_name") or "")
                if event.get("type") in ("Change", "Create") and (name in DECIDING_AUDIT_FIELDS or name.isdecimal()):
                    return self._person(int(audit["author_id"]))
        return None

    def _labels(self, custom_fields: list[dict[str, Any]]) -> dict[str, str]:
        """Drop-down option names for coded custom-field values (``custom_fields.<id>``)."""
        if not any(isinstance(item.get("value"), str) for item in custom_fields):
            return {}
        if self._field_labels is None:
            self._field_labels = {}
            for field in self.client.ticket_fields():
                options = _as_dict(field).get("custom_field_options") or []
                self._field_labels[field.id] = {_as_dict(o).get("value"): _as_dict(o).get("name") for o in options}
        labels = {}
        for item in custom_fields:
            label = self._field_labels.get(item["id"], {}).get(item.get("value"))
            if label:
                labels[f"custom_fields.{item['id']}"] = label
        return labels


def _apis(client: Zenpy) -> Iterator[BaseApi]:
    """Every zenpy API object of one client (they each build their own URLs)."""
    seen: set[int] = set()
    stack = list(vars(client).values())
    while stack:
        value = stack.pop()
        if isinstance(value, BaseApi) and id(value) not in seen:
            seen.add(id(value))
            yield value
            stack.extend(v for v in vars(value).values() if isinstance(v, BaseApi))


__all__ = ["RECOMMENDED_WEBHOOK_BODY", "ZendeskConfig", "ZendeskConnector", "stamp_tag", "translate_error"]
