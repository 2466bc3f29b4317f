"""Salesforce Service Cloud through ``simple-salesforce``: Cases, CaseComments, EmailMessages.

Reviews become Cases (or a custom object) stamped with the review id in an external-id
field, so a lost create response is recovered by a SOQL lookup instead of a duplicate.
Logging in (password, client credentials, JWT bearer) is in ``salesforce_auth``; verifying
and parsing Salesforce's notifications (Outbound Messages, signed Flow callouts) in
``salesforce_webhooks``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timezone
from typing import Any, TypeVar

import requests
from simple_salesforce import Salesforce
from simple_salesforce.exceptions import SalesforceAuthenticationFailed, SalesforceError
from simple_salesforce.format import format_soql

from .http import PinnedSession
from .base import (Comment, FieldUse, MappingProblem, Person, PlannedRequest, Ticket, TicketEvent, TicketRef,
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
from .salesforce_auth import SalesforceConfig, login
from .salesforce_webhooks import ACK_BODY, OBJECT_NAME as _OBJECT_NAME, RECORD_ID as _RECORD_ID
from .salesforce_webhooks import acknowledgement, parse_notification

__all__ = ["ACK_BODY", "SalesforceConfig", "SalesforceConnector", "translate_error"]

T = TypeVar("T")

_RATE_CODES = {"REQUEST_LIMIT_EXCEEDED", "LOGIN_RATE_EXCEEDED", "TOO_MANY_REQUESTS"}
_RETRY_CODES = {"SERVER_UNAVAILABLE", "UNKNOWN_EXCEPTION", "UNABLE_TO_LOCK_ROW"}
EMAIL_SENT = "3"  # EmailMessage.Status: 0 New, 1 Read, 2 Replied, 3 Sent, 4 Forwarded, 5 Draft


def _first_error(content: Any) -> tuple[str, str]:
    """errorCode and message from Salesforce's error array (or anything else, briefly)."""
    if isinstance(content, list) and content and isinstance(content[0], dict):
        return str(content[0].get("errorCode", "")), str(content[0].get("message", ""))[:200]
    if isinstance(content, dict):
        return str(content.get("error", "")), str(content.get("error_description", ""))[:200]
    return "", ""


def translate_error(exc: Exception, operation: str, *, retry_after: str | None = None) -> ConnectorError:
    """The one place library exceptions and HTTP statuses become ``connectors.errors``."""
    if isinstance(exc, ConnectorError):
        return exc
    if isinstance(exc, (requests.Timeout, requests.ConnectionError)):
        return RetryableError(f"Salesforce unreachable: {type(exc).__name__}", operation=operation)
    if isinstance(exc, requests.RequestException):
        return RetryableError(f"request failed: {type(exc).__name__}", operation=operation)
    if isinstance(exc, SalesforceAuthenticationFailed):
        code, message = exc.code, str(exc.auth_message)[:200]
        if isinstance(code, int):  # not a SOAP fault: an HTTP error page or our own JSON
            status, message = code, "login endpoint answered without a SOAP fault"
            if status == 429:
                return RateLimitedError(message, retry_after=retry_after_seconds(retry_after), status=status, operation=operation)
            if status >= 500:
                return RetryableError(message, status=status, operation=operation)
            return AuthError(message, status=status, operation=operation)
        if code in _RATE_CODES:
            return RateLimitedError(f"login refused: {code}", retry_after=retry_after_seconds(retry_after), operation=operation)
        if code in _RETRY_CODES:
            return RetryableError(f"login failed: {code}", operation=operation)
        return AuthError(f"login refused: {code}: {message}", operation=operation)
    if isinstance(exc, SalesforceError):
        status = exc.status
        code, message = _first_error(exc.content)
        text = f"{code}: {message}" if code else f"Salesforce error on {exc.resource_name or 'request'}"
        if status == 429 or code in _RATE_CODES:
            return RateLimitedError(text, retry_after=retry_after_seconds(retry_after), status=status, operation=operation)
        if status in (401, 403):
            return AuthError(text, status=status, operation=operation)
        if status == 404:
            return RemoteNotFoundError(text, status=status, operation=operation)
        if status >= 500 or code in _RETRY_CODES:
            return RetryableError(text, status=status, operation=operation)
        return PermanentError(text, status=status, operation=operation)
    return RetryableError(f"unexpected {type(exc).__name__}", operation=operation)


def _parse_datetime(value: Any) -> datetime | None:
    """Salesforce writes 2024-05-01T12:00:00.000+0000."""
    if not value:
        return None
    try:
        return datetime.strptime(str(value), "%Y-%m-%dT%H:%M:%S.%f%z")
    except ValueError:
        try:
            return datetime.fromisoformat(str(value).replace("Z", "+00:00"))
        except ValueError:
            return None


_NESTING = 10
"""Levels of groups in groups, and of roles above roles, followed at most (each level is a query)."""


class SalesforceConnector:
    name = "salesforce"
    config_model = SalesforceConfig

    def __init__(self, config: SalesforceConfig):
        self.config = config
        self._http: PinnedSession | None = None
        self._sf: Salesforce | None = None
        self._lock = threading.Lock()

    # ----- session -----------------------------------------------------------
    def _session(self) -> PinnedSession:
        if self._http is None:
            self._http = PinnedSession().pin_to(self.config)
        return self._http

    def _login(self) -> Salesforce:
        session_id, instance = login(self.config, self._session())
        return Salesforce(session_id=session_id, instance=instance, session=self._session(), version=self.config.api_version)

    def _client(self, operation: str) -> Salesforce:
        with self._lock:
            if self._sf is None:
                try:
                    self._sf = self._login()
                except Exception as exc:
                    raise translate_error(exc, "login", retry_after=self._session().last_header("Retry-After")) from exc
            return self._sf

    def _call(self, operation: str, action: Callable[[Salesforce], T]) -> T:
        """Run ``action`` with a live session: on INVALID_SESSION_ID log in again, once."""
        for attempt in (1, 2):
            sf = self._client(operation)
            try:
                return action(sf)
            except SalesforceError as exc:
                expired = (exc.status == 401 and _first_error(exc.content)[0] == "INVALID_SESSION_ID") or (
                    exc.status == 403 and exc.content == "Bad_OAuth_Token"  # what userinfo answers
                )
                if expired and attempt == 1:
                    with self._lock:
                        if self._sf is sf:
                            self._sf = None
                    continue
                raise translate_error(exc, operation, retry_after=self._session().last_header("Retry-After")) from exc
            except Exception as exc:
                raise translate_error(exc, operation, retry_after=self._session().last_header("Retry-After")) from exc
        raise AssertionError("unreachable")

    def _query(self, operation: str, soql: str) -> list[dict[str, Any]]:
        return self._call(operation, lambda sf: sf.query_all(soql))["records"]

    # ----- keys ----------------------------------------------------------------
    def _instance_url(self) -> str:
        return f"https://{self._client('url').sf_instance}"

    def _ref(self, sobject: str, record: Mapping[str, Any]) -> TicketRef:
        record_id = record["Id"]
        key = record_id if sobject == self.config.object else f"{sobject}/{record_id}"
        number = record.get("CaseNumber") or record.get("Name") or record_id
        url = f"{self._instance_url()}/lightning/r/{sobject}/{record_id}/view"
        return TicketRef(key=key, display=f"{sobject} {number}", url=url)

    def _resolve(self, key: str) -> tuple[str, str]:
        """(object, record Id) for a key: an Id, ``Object/Id``, or a CaseNumber."""
        sobject, _, record_id = key.rpartition("/")
        sobject = sobject or self.config.object
        if not _OBJECT_NAME.fullmatch(sobject):
            raise RemoteNotFoundError(f"not a Salesforce object name: {sobject[:40]!r}")
        if record_id.isdecimal():
            rows = self._query("resolve", format_soql("SELECT Id FROM Case WHERE CaseNumber = {}", record_id))
            if not rows:
                raise RemoteNotFoundError(f"no Case numbered {record_id}")
            return "Case", rows[0]["Id"]
        if not _RECORD_ID.fullmatch(record_id):
            raise RemoteNotFoundError(f"not a Salesforce record id: {record_id[:40]!r}")
        return sobject, record_id

    # ----- the Connector protocol ----------------------------------------------
    def check(self) -> Person:
        info = self._call("check", lambda sf: sf.oauth2("userinfo")) or {}
        me = Person(id=str(info.get("user_id", "")), name=info.get("name"), email=info.get("email"))
        return remember_account(self.config.base_url, self._login_name(), me)

    def _bridge_user(self) -> Person:
        """Who the bridge is (its comments are marked ``by_bridge``): asked once per process."""
        return bridge_account(self.config.base_url, self._login_name(), self.check)

    def _login_name(self) -> str:
        """Whom the bridge logs in as: the integration user, or the connected app's run-as
        user for client credentials."""
        return self.config.username or self.config.consumer_key or ""

    def create_ticket(self, fields: Mapping[str, Any], *, review_id: str) -> TicketRef:
        data = dict(fields)
        sobject = str(data.pop("__object", None) or self.config.object)
        if not _OBJECT_NAME.fullmatch(sobject):
            raise PermanentError(f"__object is not a Salesforce object name: {sobject[:40]!r}")
        data[self.config.external_id_field] = review_id
        created = self._call("create_ticket", lambda sf: getattr(sf, sobject).create(data))
        number = "CaseNumber" if sobject == "Case" else "Name"
        record = self._call("create_ticket", lambda sf: getattr(sf, sobject).get(created["id"], params={"fields": f"Id,{number}"}))
        return self._ref(sobject, record)

    def find_ticket(self, review_id: str) -> TicketRef | None:
        sobject, field = self.config.object, self.config.external_id_field
        number = "CaseNumber" if sobject == "Case" else "Name"
        soql = format_soql(f"SELECT Id, {number} FROM {sobject} WHERE {field} = {{}} LIMIT 1", review_id)
        rows = self._query("find_ticket", soql)
        return self._ref(sobject, rows[0]) if rows else None

    def get_ticket(self, key: str) -> Ticket:
        sobject, record_id = self._resolve(key)
        record = self._call("get_ticket", lambda sf: getattr(sf, sobject).get(record_id))
        fields = {k: v for k, v in record.items() if k != "attributes"}
        changer = self._query(
            "get_ticket",
            format_soql(f"SELECT LastModifiedById, LastModifiedBy.Name, LastModifiedBy.Email FROM {sobject} WHERE Id = {{}}", record_id),
        )
        changed_by = None
        if changer and changer[0].get("LastModifiedById"):
            who = changer[0].get("LastModifiedBy") or {}
            changed_by = Person(id=changer[0]["LastModifiedById"], name=who.get("Name"), email=who.get("Email"))
        comments = self._comments(record_id) if sobject == "Case" else []
        return Ticket(
            ref=self._ref(sobject, record),
            status=fields.get("Status"),
            fields=fields,
            labels={},
            comments=comments,
            changed_by=changed_by,
            updated=_parse_datetime(fields.get("LastModifiedDate")),
        )

    def _comments(self, case_id: str) -> list[Comment]:
        me = self._bridge_user()
        rows = self._query(
            "get_ticket",
            format_soql(
                "SELECT Id, CommentBody, IsPublished, CreatedDate, CreatedById, CreatedBy.Name, CreatedBy.Email "
                "FROM CaseComment WHERE ParentId = {} ORDER BY CreatedDate ASC",
                case_id,
            ),
        )
        comments = []
        for row in rows:
            author_id = row.get("CreatedById") or ""
            who = row.get("CreatedBy") or {}
            comments.append(
                Comment(
                    id=row["Id"],
                    body=row.get("CommentBody") or "",
                    author=Person(id=author_id, name=who.get("Name"), email=who.get("Email")),
                    public=bool(row.get("IsPublished")),
                    created=_parse_datetime(row.get("CreatedDate")),
                    by_bridge=bool(me.id) and author_id[:15] == me.id[:15],
                )
            )
        return comments

    def update_ticket(self, key: str, fields: Mapping[str, Any]) -> None:
        sobject, record_id = self._resolve(key)
        data = {("Status" if k == "status" else k): v for k, v in fields.items()}
        if data:
            self._call("update_ticket", lambda sf: getattr(sf, sobject).update(record_id, data))

    def add_comment(self, key: str, body: str, *, public: bool) -> Comment:
        sobject, record_id = self._resolve(key)
        if sobject != "Case":
            raise PermanentError(f"comments are CaseComments; {sobject} records have none")
        data = {"ParentId": record_id, "CommentBody": body, "IsPublished": bool(public)}
        created = self._call("add_comment", lambda sf: sf.CaseComment.create(data))
        return Comment(
            id=created["id"], body=body, author=self._bridge_user(), public=bool(public),
            created=datetime.now(timezone.utc), by_bridge=True,
        )

    def reply_by_email(self, key: str, body: str) -> bool:
        """Post ``body`` as an outgoing EmailMessage on the Case, to the customer's address
        (the Case's SuppliedEmail, else its Contact's Email). Safe to call again: an outgoing
        email with the same body already on the Case is not created twice. True when this
        call created it. (TextBody is a long text area, which SOQL cannot filter on, so the
        comparison is made here.)"""
        sobject, case_id = self._resolve(key)
        if sobject != "Case":
            raise PermanentError(f"email replies are EmailMessages on Cases; {sobject} records have none")
        sent = self._query("reply_by_email", format_soql(
            "SELECT Id, TextBody FROM EmailMessage WHERE ParentId = {} AND Incoming = false", case_id))
        if any((row.get("TextBody") or "").strip() == body.strip() for row in sent):
            return False
        rows = self._query("reply_by_email", format_soql(
            "SELECT Id, CaseNumber, Subject, SuppliedEmail, Contact.Email FROM Case WHERE Id = {}", case_id))
        if not rows:
            raise RemoteNotFoundError(f"no Case {case_id}", operation="reply_by_email")
        case = rows[0]
        to = case.get("SuppliedEmail") or (case.get("Contact") or {}).get("Email")
        if not to:
            raise PermanentError(f"Case {case.get('CaseNumber')} has no SuppliedEmail and no Contact email to reply to",
                                 operation="reply_by_email")
        me = self._bridge_user()
        email = {"ParentId": case_id, "Incoming": False, "Status": EMAIL_SENT, "ToAddress": to, "TextBody": body,
                 "Subject": f"Re: {case.get('Subject') or 'Case ' + str(case.get('CaseNumber'))}"[:3000],
                 "FromName": me.name, "FromAddress": me.email,
                 "MessageDate": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.000+0000")}
        self._call("reply_by_email", lambda sf: sf.EmailMessage.create({k: v for k, v in email.items() if v is not None}))
        return True

    def groups_of(self, person: Person) -> set[str]:
        """The user's queues and public groups (API and display names), and permission sets
        (API names and labels, not the ones profiles own). Group membership counts as
        Salesforce counts it: directly, through a group inside a group, and through the
        user's role (a role's group, and the role-and-subordinates groups of the role and of
        every role above it)."""
        if not _RECORD_ID.fullmatch(person.id or ""):
            return set()
        names: set[str] = set()
        seen: set[str] = set()
        members = {person.id} | self._role_groups(person.id)
        for _ in range(_NESTING):
            rows = self._query("groups_of", format_soql(
                "SELECT GroupId, Group.DeveloperName, Group.Name, Group.Type FROM GroupMember WHERE UserOrGroupId IN {}",
                sorted(members)))
            seen |= members
            members = set()
            for row in rows:
                group = row.get("Group") or {}
                if group.get("Type") in ("Queue", "Regular"):
                    names.update(str(group[field]) for field in ("DeveloperName", "Name") if group.get(field))
                if row.get("GroupId") and row["GroupId"] not in seen:
                    members.add(row["GroupId"])  # a group in this group: the groups it is in come next
            if not members:
                break
        assigned = self._query("groups_of", format_soql(
            "SELECT PermissionSet.Name, PermissionSet.Label FROM PermissionSetAssignment "
            "WHERE AssigneeId = {} AND PermissionSet.IsOwnedByProfile = false", person.id))
        names.update(str(value) for row in assigned for field in ("Name", "Label")
                     if (value := (row.get("PermissionSet") or {}).get(field)))
        return names

    def _role_groups(self, user_id: str) -> set[str]:
        """The groups Salesforce keeps for roles that the user is in: their role's ``Role``
        group, and the ``RoleAndSubordinates`` groups of their role and the roles above it
        (the ``Internal`` kind only for an internal user)."""
        users = self._query("groups_of", format_soql("SELECT UserRoleId, UserType FROM User WHERE Id = {}", user_id))
        role = users[0].get("UserRoleId") if users else None
        if not role:
            return set()
        chain = [role]
        while len(chain) < _NESTING:
            rows = self._query("groups_of", format_soql("SELECT ParentRoleId FROM UserRole WHERE Id = {}", chain[-1]))
            parent = rows[0].get("ParentRoleId") if rows else None
            if not parent or parent in chain:
                break
            chain.append(parent)
        kinds = ["Role", "RoleAndSubordinates"] + (["RoleAndSubordinatesInternal"] if users[0].get("UserType") == "Standard" else [])
        groups = self._query("groups_of", format_soql(
            "SELECT Id, Type, RelatedId FROM Group WHERE RelatedId IN {} AND Type IN {}", chain, kinds))
        return {g["Id"] for g in groups if g.get("Type") != "Role" or g.get("RelatedId") == role}

    # ----- admin: preview and doctor ---------------------------------------------
    def plan_requests(
        self, fields: Mapping[str, Any], *, review_id: str, comment: str | None, origin_key: str | None = None
    ) -> list[PlannedRequest]:
        """No login for a preview: the instance URL (known after login) is shown as {instance_url}."""
        api = f"{{instance_url}}/services/data/v{self.config.api_version}/sobjects"
        data = dict(fields)
        sobject = str(data.pop("__object", None) or self.config.object)
        if origin_key:
            data = {("Status" if k == "status" else k): v for k, v in data.items()}
            record_id = origin_key.rpartition(":")[2]
            planned = [PlannedRequest("PATCH", f"{api}/{sobject}/{record_id}", data, "update the origin record")] if data else []
        else:
            data[self.config.external_id_field] = review_id
            record_id = "{new record id}"
            planned = [PlannedRequest("POST", f"{api}/{sobject}/", data, f"create the review {sobject}")]
        if comment:
            planned.append(PlannedRequest("POST", f"{api}/CaseComment/",
                                          {"ParentId": record_id, "CommentBody": comment, "IsPublished": False},
                                          "the opening private case comment"))
        return planned

    def check_mapping(self, uses: Sequence[FieldUse]) -> list[MappingProblem]:
        """The object's describe: each field exists (createable for a new record, updateable
        for an update) and literal values are among a picklist's active values."""
        object_use = next((u for u in uses if u.field == "__object"), None)
        sobject = str(object_use.value) if object_use and object_use.value else self.config.object
        try:
            described = self._call("check_mapping", lambda sf: getattr(sf, sobject).describe())
        except RemoteNotFoundError:
            where = object_use.where if object_use else "connection"
            return [MappingProblem(where, f"Salesforce has no object {sobject!r} (or the bridge user cannot see it)")]
        fields = {f["name"]: f for f in described.get("fields") or []}
        problems: list[MappingProblem] = []
        for use in uses:
            if use.field == "__object":
                continue
            name = "Status" if use.field == "status" and use.role == "update" else use.field
            field = fields.get(name)
            if field is None:
                problems.append(MappingProblem(use.where, f"{sobject} has no field {name!r}"))
                continue
            if use.role == "create" and not field.get("createable"):
                problems.append(MappingProblem(use.where, f"{sobject}.{name} cannot be set on create"))
            if use.role == "update" and not field.get("updateable"):
                problems.append(MappingProblem(use.where, f"{sobject}.{name} cannot be updated"))
            values = [p["value"] for p in field.get("picklistValues") or [] if p.get("active", True)]
            if values and use.value not in (None, "") and not isinstance(use.value, (dict, list)) and str(use.value) not in values:
                problems.append(MappingProblem(use.where, f"{use.value!r} is not a value of the {sobject}.{name} picklist; values: {values}"))
        return problems

    # ----- notifications (salesforce_webhooks) -------------------------------------
    def verify_and_parse_webhook(self, headers: Mapping[str, str], raw_body: bytes) -> list[TicketEvent]:
        return parse_notification(self.config, headers, raw_body)

    def acknowledge(self, events: list[TicketEvent]) -> tuple[bytes, str] | None:
        return acknowledgement(events)

    def close(self) -> None:
        with self._lock:
            self._sf = None
            if self._http is not None:
                self._http.close()
                self._http = None
