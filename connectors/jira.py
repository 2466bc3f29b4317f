"""Jira connector (Cloud or Server/Data Center, REST v2 through the ``jira`` library).

A review ticket is stamped with the label ``hitl-<review_id>`` so ``find_ticket`` finds it
again after a lost response. ``TicketRef.key`` is the issue's numeric id: it never changes
(a key does when an issue moves project) and it is the one identifier every webhook form
carries, including Server's comment events that name the issue only in the comment's URL.
``display`` is the key people know (HITL-7). Status changes go through workflow transitions.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from typing import Any, Callable, TypeVar

import requests
from jira import JIRA, JIRAError
from pydantic import Field, SecretStr

from .http import pace, read_environment_once
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
    WebhookVerificationError,
)
from .signing import check_timestamp, hmac_sha256_hex, verify_signature

T = TypeVar("T")
SIGNATURE_HEADER = "X-Hub-Signature"
DELIVERY_HEADER = "X-Atlassian-Webhook-Identifier"
_COMMENT_URL = re.compile(r"/issue/(\d+)/comment/")


class JiraConfig(ConnectionConfig):
    email: str = Field(description="The bridge account's email (Cloud) or username (Server).")
    api_token: SecretStr = Field(description="The account's API token (Cloud) or password.")


def review_label(review_id: str) -> str:
    """Jira labels cannot contain spaces; review ids normally have none."""
    return "hitl-" + re.sub(r"\s+", "_", review_id.strip())


def translate_error(exc: BaseException, *, operation: str) -> ConnectorError:
    """The one place the library's exceptions become ``connectors.errors``.

    ``str(JIRAError)`` dumps request headers (the Authorization header among them), so only
    the status and Jira's own short message are kept.
    """
    if isinstance(exc, ConnectorError):
        return exc
    if isinstance(exc, (requests.Timeout, requests.ConnectionError)):
        return RetryableError(f"Jira unreachable ({type(exc).__name__})", operation=operation)
    response = getattr(exc, "response", None)
    status = getattr(exc, "status_code", None) or getattr(response, "status_code", None)
    message = (getattr(exc, "text", None) if isinstance(exc, JIRAError) else None) or "request failed"
    message = str(message).splitlines()[0][:200] if str(message).strip() else "request failed"
    if status is None:
        if isinstance(exc, (KeyError, ValueError)) and not isinstance(exc, JIRAError):
            message = str(exc)[:200]  # the library's own lookups, e.g. "Issue type 'X' is unknown."
        return PermanentError(f"Jira client error: {message}", operation=operation)
    if status == 429:
        retry_after = retry_after_seconds((getattr(response, "headers", None) or {}).get("Retry-After"))
        return RateLimitedError("rate limited by Jira", retry_after=retry_after, status=status, operation=operation)
    if status >= 500:
        return RetryableError(message, status=status, operation=operation)
    if status in (401, 403):
        return AuthError(message, status=status, operation=operation)
    if status == 404:
        return RemoteNotFoundError(message, status=status, operation=operation)
    return PermanentError(message, status=status, operation=operation)


def _parse_time(value: Any) -> datetime | None:
    """Jira writes ``2019-02-15T19:11:18.321-0800`` (offset without a colon), which
    ``fromisoformat`` reads since Python 3.11 (130 times faster than ``strptime``, and a
    read-back parses every comment's and change's time). None unless it has an offset."""
    if not value:
        return None
    try:
        parsed = datetime.fromisoformat(str(value))
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else None


def person(user: Mapping[str, Any] | None) -> Person | None:
    """Cloud users carry ``accountId``; Server/Data Center users ``key``/``name``."""
    if not user:
        return None
    user_id = user.get("accountId") or user.get("key") or user.get("name")
    if not user_id:
        return None
    return Person(id=str(user_id), name=user.get("displayName"), email=user.get("emailAddress"))


def comment_is_public(raw: Mapping[str, Any]) -> bool:
    """Internal in Service Management (``jsdPublic`` false or the ``sd.public.comment``
    property) or restricted to a role/group (``visibility``) means not public."""
    if raw.get("jsdPublic") is False or raw.get("visibility"):
        return False
    for prop in raw.get("properties") or []:
        if prop.get("key") == "sd.public.comment" and (prop.get("value") or {}).get("internal"):
            return False
    return True


def _is_status_item(item: Mapping[str, Any]) -> bool:
    """Cloud has ``fieldId``; Server has only ``field``, which is "Status" on create events."""
    if item.get("fieldId"):
        return str(item["fieldId"]) == "status"
    return str(item.get("field", "")).lower() == "status"


_PROJECT_TYPES: dict[tuple[str, str], str] = {}  # (server, issue) -> projectTypeKey
_SERVER_INFO: dict[str, dict[str, Any]] = {}  # server -> its serverInfo


class JiraConnector:
    name = "jira"
    config_model = JiraConfig

    def __init__(self, config: JiraConfig):
        self.config = config
        self._client: JIRA | None = None

    # ----- plumbing --------------------------------------------------------------
    def _call(self, operation: str, fn: Callable[[JIRA], T]) -> T:
        try:
            return fn(self._jira())
        except Exception as exc:  # noqa: BLE001 - translated, never swallowed
            raise translate_error(exc, operation=operation) from None

    def _jira(self) -> JIRA:
        """Built on first use, paced, then told the server's version (it decides which calls
        exist): asked once per process and server, not once per worker thread (each thread
        has its own connector; a cold thread's first job paid a round trip more, 100 ms of a
        slow Jira, and every thread spent a call of the rate limit on it)."""
        if self._client is None:
            client = JIRA(
                server=self.config.base_url,
                basic_auth=(self.config.email, self.config.api_token.get_secret_value()),
                options={"verify": self.config.ca_bundle or True},
                max_retries=0,  # the bridge's worker alone retries
                timeout=self.config.timeout_seconds,
                get_server_info=False,  # asked below, once the session is paced
                logging=False,
            )
            pace(client._session, self.config.rate_limit_per_second, name=self.config.name)
            read_environment_once(client._session)
            info = _SERVER_INFO.get(self.config.base_url)
            if info is None:  # what get_server_info=True would do in the constructor
                info = _SERVER_INFO[self.config.base_url] = client.server_info()
            client._version = tuple(info["versionNumbers"])
            client.deploymentType = info.get("deploymentType")
            self._client = client
        return self._client

    def _ref(self, issue_id: Any, key: str) -> TicketRef:
        return TicketRef(key=str(issue_id), display=key, url=f"{self.config.base_url}/browse/{key}")

    def _bridge_account(self) -> Person:
        return bridge_account(self.config.base_url, self.config.email, self.check)

    # ----- the protocol ----------------------------------------------------------
    def check(self) -> Person:
        raw = self._call("check", lambda jira: jira.myself())
        me = person(raw)
        if me is None:
            raise PermanentError("Jira did not say who the bridge account is", operation="check")
        return remember_account(self.config.base_url, self.config.email, me)

    def create_ticket(self, fields: Mapping[str, Any], *, review_id: str) -> TicketRef:
        payload = dict(fields)
        status = payload.pop("status", None)
        label = review_label(review_id)
        labels = list(payload.get("labels") or [])
        payload["labels"] = labels + ([label] if label not in labels else [])
        created = self._call("create_ticket", lambda jira: jira.create_issue(fields=payload, prefetch=False))
        ref = self._ref(created.raw["id"], created.raw["key"])
        if status:
            self.update_ticket(ref.key, {"status": status})
        return ref

    def find_ticket(self, review_id: str) -> TicketRef | None:
        label = review_label(review_id).replace("\\", "\\\\").replace('"', '\\"')
        found = self._call(
            "find_ticket",
            lambda jira: jira.search_issues(f'labels = "{label}" ORDER BY created ASC', maxResults=10, fields="key"),
        )
        if not found:
            return None
        oldest = min(found, key=lambda issue: int(issue.raw["id"]))  # a duplicate after a race: keep the first
        return self._ref(oldest.raw["id"], oldest.raw["key"])

    def get_ticket(self, key: str) -> Ticket:
        # The issue's JSON as the library fetches it, without its Resource tree (a fifth of a
        # read-back's CPU went to building one, for the raw dict we read: bench/).
        raw = self._call("get_ticket", lambda jira: jira._get_json(f"issue/{key}", params={"expand": "changelog"}))
        fields = dict(raw.get("fields") or {})
        project = fields.get("project")
        if isinstance(project, dict) and project.get("projectTypeKey"):  # add_comment need not ask again
            self._remember_project_type(key, project["projectTypeKey"])
        labels = {name: value["name"] for name, value in fields.items() if isinstance(value, dict) and "name" in value}
        status = labels.get("status")
        fields["status"] = status
        fields["labels"] = list(fields.get("labels") or [])
        comment_page = fields.get("comment") or {}
        comments_raw = list(comment_page.get("comments") or [])
        if comment_page.get("total", 0) > len(comments_raw):
            comments_raw = [c.raw for c in self._call("get_ticket", lambda jira: jira.comments(key))]
        bridge_id = self._bridge_account().id
        comments = [self._comment(c, bridge_id) for c in comments_raw]
        return Ticket(
            ref=self._ref(raw["id"], raw["key"]),
            status=status,
            fields=fields,
            labels=labels,
            comments=sorted(comments, key=lambda c: (c.created or datetime.min.replace(tzinfo=timezone.utc))),
            changed_by=self._status_changer(raw.get("changelog") or {}),
            changed_at=self._status_changed_at(raw.get("changelog") or {}),
            updated=_parse_time(fields.get("updated")),
        )

    def update_ticket(self, key: str, fields: Mapping[str, Any]) -> None:
        changes = dict(fields)
        status = changes.pop("status", None)
        if changes:
            def edit(jira: JIRA) -> None:
                jira.issue(key, fields="status").update(fields=changes)
            self._call("update_ticket", edit)
        if status is not None:
            target = status.get("name") if isinstance(status, Mapping) else str(status)
            self._call("update_ticket", lambda jira: self._move(jira, key, str(target)))

    def add_comment(self, key: str, body: str, *, public: bool) -> Comment:
        internal = not public and self._supports_internal(key)
        created = self._call("add_comment", lambda jira: jira.add_comment(key, body, is_internal=internal))
        raw = dict(created.raw)
        if internal and "jsdPublic" not in raw:
            raw["jsdPublic"] = False
        return self._comment(raw, self._bridge_account().id)

    def verify_and_parse_webhook(self, headers: Mapping[str, str], raw_body: bytes) -> list[TicketEvent]:
        lowered = {k.lower(): v for k, v in headers.items()}
        verify_signature(
            lowered.get(SIGNATURE_HEADER.lower()),
            self.config.secrets(),
            lambda secret: "sha256=" + hmac_sha256_hex(secret, raw_body),
            header=SIGNATURE_HEADER,
        )
        try:
            payload = json.loads(raw_body)
        except ValueError as exc:
            raise WebhookVerificationError("webhook body is not JSON") from exc
        if not isinstance(payload, dict):
            raise WebhookVerificationError("webhook body is not a JSON object")
        stamp = check_timestamp(payload.get("timestamp"), tolerance=self.config.webhook_tolerance_seconds)
        event_id = lowered.get(DELIVERY_HEADER.lower()) or hashlib.sha256(raw_body).hexdigest()
        try:
            return parse_webhook(payload, event_id=event_id, occurred_at=datetime.fromtimestamp(stamp, timezone.utc))
        except (AttributeError, TypeError, ValueError) as exc:  # signed, but not the shape Jira sends
            raise WebhookVerificationError(f"webhook body is not a Jira event: {type(exc).__name__}") from None

    def acknowledge(self, events: list[TicketEvent]) -> tuple[bytes, str] | None:
        return None

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    # ----- admin: preview and doctor ---------------------------------------------
    def plan_requests(
        self, fields: Mapping[str, Any], *, review_id: str, comment: str | None, origin_key: str | None = None
    ) -> list[PlannedRequest]:
        api = f"{self.config.base_url}/rest/api/2"
        payload = dict(fields)
        status = payload.pop("status", None)
        if origin_key:
            key, planned = origin_key, [PlannedRequest("PUT", f"{api}/issue/{origin_key}", {"fields": payload}, "update the origin issue")] if payload else []
        else:
            label = review_label(review_id)
            payload["labels"] = list(payload.get("labels") or []) + ([label] if label not in (payload.get("labels") or []) else [])
            key, planned = "{new issue id}", [PlannedRequest("POST", f"{api}/issue", {"fields": payload}, "create the review issue")]
        if status:
            target = status.get("name") if isinstance(status, Mapping) else status
            planned.append(PlannedRequest("POST", f"{api}/issue/{key}/transitions",
                                          {"transition": {"id": f"{{the transition to {target}}}"}}, f"move to {target}"))
        if comment:
            planned.append(PlannedRequest("POST", f"{api}/issue/{key}/comment", {"body": comment}, "the opening comment"))
        return planned

    def check_mapping(self, uses: Sequence[FieldUse]) -> list[MappingProblem]:
        """Project, issue type, fields (settable ones for create and update) and the statuses
        in the issue type's workflow, which the connector's transitions can reach."""
        problems: list[MappingProblem] = []
        by_field = {u.field: u for u in uses if u.role == "create"}
        project_use, type_use = by_field.get("project"), by_field.get("issuetype")
        project = issue_type = None
        if project_use is not None and isinstance(project_use.value, Mapping):
            wanted = project_use.value.get("key") or project_use.value.get("id")
            try:
                project = self._call("check_mapping", lambda jira: jira._get_json(f"project/{wanted}", params={"expand": "issueTypes"}))
            except RemoteNotFoundError:
                problems.append(MappingProblem(project_use.where, f"Jira has no project {wanted!r} (or the bridge account cannot see it)"))
        if project and type_use is not None and isinstance(type_use.value, Mapping):
            wanted = type_use.value.get("name") or type_use.value.get("id")
            types = project.get("issueTypes") or []
            issue_type = next((t for t in types if wanted in (t.get("name"), str(t.get("id")))), None)
            if issue_type is None:
                problems.append(MappingProblem(
                    type_use.where, f"project {project['key']} has no issue type {wanted!r}; it has {[t.get('name') for t in types]}"))
        fields = {f["id"]: f for f in self._call("check_mapping", lambda jira: jira.fields())}
        names = {str(f.get("name", "")).casefold(): f["id"] for f in fields.values()}
        statuses: set[str] | None = None
        if project and issue_type:
            workflows = self._call("check_mapping", lambda jira: jira._get_json(f"project/{project['key']}/statuses"))
            flow = next((w for w in workflows if str(w.get("id")) == str(issue_type.get("id"))), None)
            statuses = {s["name"] for s in (flow or {}).get("statuses") or []}
        elif project is None and project_use is None:
            statuses = {s.name for s in self._call("check_mapping", lambda jira: jira.statuses())}
        for use in uses:
            if use.field == "status":
                if use.value is not None and statuses is not None:
                    value = use.value.get("name") if isinstance(use.value, Mapping) else str(use.value)
                    if value not in statuses:
                        problems.append(MappingProblem(
                            use.where, f"status {value!r} is not in the workflow of this issue type; transitions reach {sorted(statuses)}"))
                continue
            if use.field in ("project", "issuetype"):
                continue
            field = fields.get(use.field)
            if field is None:
                hint = f" (did you mean {names[use.field.casefold()]!r}? Jira takes field ids)" if use.field.casefold() in names else ""
                problems.append(MappingProblem(use.where, f"Jira has no field {use.field!r}{hint}"))
            elif use.role in ("create", "update") and not field.get("orderable", True):
                problems.append(MappingProblem(use.where, f"field {use.field!r} ({field.get('name')}) cannot be set"))
        return problems

    # ----- helpers -----------------------------------------------------------------
    def _move(self, jira: JIRA, key: str, target: str) -> None:
        """Run the transition named after ``target`` (or leading to it); already there is fine."""
        wanted = target.casefold()
        for transition in jira.transitions(key):
            to_name = str((transition.get("to") or {}).get("name", ""))
            if wanted in (str(transition.get("name", "")).casefold(), to_name.casefold()):
                jira.transition_issue(key, str(transition["id"]))
                return
        current = jira.issue(key, fields="status").raw["fields"]["status"]["name"]
        if current.casefold() != wanted:
            raise PermanentError(f"no transition to status {target!r} from {current!r}", operation="update_ticket")

    def _supports_internal(self, key: str) -> bool:
        """Only Service Management projects have internal comments."""
        known = _PROJECT_TYPES.get((self.config.base_url, key))
        if known is None:
            project = self._call("add_comment", lambda jira: jira.issue(key, fields="project")).raw["fields"]["project"]
            known = self._remember_project_type(key, project.get("projectTypeKey", "software"))
        return known == "service_desk"

    def _remember_project_type(self, key: str, project_type: str) -> str:
        """Shared by this process's connectors (one per worker thread), bounded: a comment
        job usually runs on another thread than the read-back that saw the project."""
        if len(_PROJECT_TYPES) > 10_000:
            _PROJECT_TYPES.clear()
        _PROJECT_TYPES[(self.config.base_url, key)] = project_type
        return project_type

    def _comment(self, raw: Mapping[str, Any], bridge_id: str) -> Comment:
        author = person(raw.get("author"))
        return Comment(
            id=str(raw.get("id")),
            body=raw.get("body") or "",
            author=author,
            public=comment_is_public(raw),
            created=_parse_time(raw.get("created")),
            by_bridge=author is not None and author.id == bridge_id,
        )

    def _status_changer(self, changelog: Mapping[str, Any]) -> Person | None:
        histories = [h for h in changelog.get("histories") or [] if any(_is_status_item(i) for i in h.get("items", []))]
        if not histories:
            return None
        epoch = datetime.min.replace(tzinfo=timezone.utc)

        def order(history: Mapping[str, Any]) -> tuple[datetime, int]:
            history_id = str(history.get("id", ""))
            return _parse_time(history.get("created")) or epoch, int(history_id) if history_id.isdecimal() else 0

        newest = max(histories, key=order)
        return person(newest.get("author"))

    def _status_changed_at(self, changelog: Mapping[str, Any]) -> datetime | None:
        times = [_parse_time(h.get("created")) for h in changelog.get("histories") or []
                 if any(_is_status_item(i) for i in h.get("items", []))]
        return max((t for t in times if t is not None), default=None)

    def groups_of(self, person: Person) -> set[str]:
        """Jira groups of a user (``GET /user?accountId=...&expand=groups``)."""
        raw = self._call("groups_of", lambda jira: jira.user(person.id, expand="groups")).raw
        return {str(g.get("name")) for g in (raw.get("groups") or {}).get("items") or [] if g.get("name")}


def parse_webhook(
    payload: Mapping[str, Any], *, event_id: str, occurred_at: datetime | None = None
) -> list[TicketEvent]:
    """Events from a verified Jira webhook payload (Cloud or Server, old and new comment forms)."""
    event = str(payload.get("webhookEvent") or "")
    type_name = str(payload.get("issue_event_type_name") or "")
    issue = payload.get("issue") or {}
    comment = payload.get("comment") or {}
    ticket_key = issue.get("id")
    if not ticket_key and isinstance(comment, Mapping):
        match = _COMMENT_URL.search(str(comment.get("self") or ""))
        ticket_key = match.group(1) if match else None
    if not ticket_key:
        return []
    items = (payload.get("changelog") or {}).get("items") or []
    if event == "jira:issue_created":
        kind = "created"
    elif event == "jira:issue_deleted":
        kind = "deleted"
    elif event == "comment_created" or (event == "jira:issue_updated" and type_name == "issue_commented"
                                        and not any(_is_status_item(i) for i in items)):
        kind = "comment_added"
    elif event == "jira:issue_updated" and any(_is_status_item(i) for i in items):
        kind = "status_changed"
    elif event in ("jira:issue_updated", "comment_updated", "comment_deleted"):
        kind = "updated"
    else:
        return []
    return [TicketEvent(event_id=event_id, ticket_key=str(ticket_key), kind=kind, occurred_at=occurred_at)]
