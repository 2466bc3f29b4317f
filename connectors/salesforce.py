"""Salesforce Service Cloud through ``simple-salesforce``: Cases, CaseComments, notifications.

Reviews become Cases (or a custom object) stamped with the review id in an external-id
field, so a lost create response is recovered by a SOQL lookup instead of a duplicate.
Salesforce pushes two kinds of notification, and both only name the record to read back:
Outbound Messages (SOAP, unsigned: authenticated by the organization id, parsed with a
hardened XML parser and answered with the SOAP Ack Salesforce needs), and a JSON callout
from a Flow or Apex, signed with the connection's secret (HMAC-SHA256, replay window).
"""

from __future__ import annotations

import base64
import json
import re
import threading
import xml.etree.ElementTree as ET
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timezone
from typing import Any, TypeVar

import requests
from defusedxml import DefusedXmlException, DTDForbidden, EntitiesForbidden, ExternalReferenceForbidden
from defusedxml.ElementTree import fromstring as safe_fromstring
from pydantic import Field, SecretStr, model_validator
from simple_salesforce import Salesforce
from simple_salesforce.exceptions import SalesforceAuthenticationFailed, SalesforceError
from simple_salesforce.format import format_soql
from simple_salesforce.login import SalesforceLogin, token_login

from .http import PinnedSession
from .base import Comment, ConnectionConfig, FieldUse, MappingProblem, Person, PlannedRequest, Ticket, TicketEvent, TicketRef
from .errors import (
    AuthError,
    ConnectorError,
    PermanentError,
    RateLimitedError,
    RemoteNotFoundError,
    RetryableError,
    WebhookVerificationError,
)
from .signing import check_timestamp, hmac_sha256_hex, verify_signature

T = TypeVar("T")

MAX_WEBHOOK_BYTES = 1024 * 1024
OUTBOUND_NS = "http://soap.sforce.com/2005/09/outbound"
SOBJECT_NS = "urn:sobject.enterprise.soap.sforce.com"
XSI_TYPE = "{http://www.w3.org/2001/XMLSchema-instance}type"
OUTBOUND_EVENT_PREFIX = "om:"
TIMESTAMP_HEADER = "X-Hitl-Timestamp"
SIGNATURE_HEADER = "X-Hitl-Signature"
ACK_BODY = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n'
    b'<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/">'
    b'<soapenv:Body><notificationsResponse xmlns="http://soap.sforce.com/2005/09/outbound">'
    b"<Ack>true</Ack></notificationsResponse></soapenv:Body></soapenv:Envelope>"
)
_RECORD_ID = re.compile(r"[A-Za-z0-9]{15}(?:[A-Za-z0-9]{3})?")
_OBJECT_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,79}")
_EVENT_KINDS = {"status_changed", "comment_added", "updated", "created", "deleted"}
_RATE_CODES = {"REQUEST_LIMIT_EXCEEDED", "LOGIN_RATE_EXCEEDED", "TOO_MANY_REQUESTS"}
_RETRY_CODES = {"SERVER_UNAVAILABLE", "UNKNOWN_EXCEPTION", "UNABLE_TO_LOCK_ROW"}


class SalesforceConfig(ConnectionConfig):
    """A Salesforce org. ``base_url`` is the login host (https://login.salesforce.com,
    https://test.salesforce.com or the org's My Domain); the instance URL comes from login."""

    username: str | None = Field(default=None, description="The integration user's username.")
    password: SecretStr | None = None
    security_token: SecretStr = Field(
        default=SecretStr(""), description="Appended to the password; empty when the IP is trusted."
    )
    consumer_key: str | None = Field(
        default=None, description="Connected app key, for the OAuth client-credentials flow."
    )
    consumer_secret: SecretStr | None = None
    organization_id: str | None = Field(
        default=None, description="The org's 15/18-char id; Outbound Messages from other orgs are refused."
    )
    external_id_field: str = Field(default="HITL_Review_Id__c", pattern=r"^[A-Za-z][A-Za-z0-9_]*$")
    api_version: str = Field(default="59.0", pattern=r"^\d+\.\d$")
    object: str = Field(default="Case", pattern=r"^[A-Za-z][A-Za-z0-9_]*$")

    @model_validator(mode="after")
    def _one_way_to_log_in(self) -> "SalesforceConfig":
        if not (self.username and self.password) and not (self.consumer_key and self.consumer_secret):
            raise ValueError("set username and password, or consumer_key and consumer_secret")
        return self


def _first_error(content: Any) -> tuple[str, str]:
    """errorCode and message from Salesforce's error array (or anything else, briefly)."""
    if isinstance(content, list) and content and isinstance(content[0], dict):
        return str(content[0].get("errorCode", "")), str(content[0].get("message", ""))[:200]
    if isinstance(content, dict):
        return str(content.get("error", "")), str(content.get("error_description", ""))[:200]
    return "", ""


def _retry_after(value: str | None) -> float | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


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
                return RateLimitedError(message, retry_after=_retry_after(retry_after), status=status, operation=operation)
            if status >= 500:
                return RetryableError(message, status=status, operation=operation)
            return AuthError(message, status=status, operation=operation)
        if code in _RATE_CODES:
            return RateLimitedError(f"login refused: {code}", retry_after=_retry_after(retry_after), operation=operation)
        if code in _RETRY_CODES:
            return RetryableError(f"login failed: {code}", operation=operation)
        return AuthError(f"login refused: {code}: {message}", operation=operation)
    if isinstance(exc, SalesforceError):
        status = exc.status
        code, message = _first_error(exc.content)
        text = f"{code}: {message}" if code else f"Salesforce error on {exc.resource_name or 'request'}"
        if status == 429 or code in _RATE_CODES:
            return RateLimitedError(text, retry_after=_retry_after(retry_after), status=status, operation=operation)
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


def _header(headers: Mapping[str, str], name: str) -> str | None:
    wanted = name.lower()
    return next((v for k, v in headers.items() if k.lower() == wanted), None)


class SalesforceConnector:
    name = "salesforce"
    config_model = SalesforceConfig

    def __init__(self, config: SalesforceConfig):
        self.config = config
        self._http: PinnedSession | None = None
        self._sf: Salesforce | None = None
        self._me: Person | None = None
        self._lock = threading.Lock()

    # ----- session -----------------------------------------------------------
    def _session(self) -> PinnedSession:
        if self._http is None:
            self._http = PinnedSession().pin(timeout=self.config.timeout_seconds, ca_bundle=self.config.ca_bundle)
        return self._http

    def _login(self) -> Salesforce:
        """Log in through the library's own helpers, aimed at ``base_url`` (it would
        otherwise build https://{domain}.salesforce.com itself)."""
        cfg, session = self.config, self._session()
        if cfg.username and cfg.password:
            session_id, instance = SalesforceLogin(
                username=cfg.username,
                password=cfg.password.get_secret_value(),
                security_token=cfg.security_token.get_secret_value(),
                sf_version=cfg.api_version,
                session=session,
                scratch_url=cfg.base_url,
            )
        else:
            assert cfg.consumer_key and cfg.consumer_secret
            basic = base64.b64encode(f"{cfg.consumer_key}:{cfg.consumer_secret.get_secret_value()}".encode()).decode()
            session_id, instance = token_login(
                f"{cfg.base_url}/services/oauth2/token",
                {"grant_type": "client_credentials"},
                "login",
                cfg.consumer_key,
                {"Authorization": f"Basic {basic}"},
                None,
                session,
            )
        return Salesforce(session_id=session_id, instance=instance, session=session, version=cfg.api_version)

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
        if record_id.isdigit():
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
        self._me = Person(id=str(info.get("user_id", "")), name=info.get("name"), email=info.get("email"))
        return self._me

    def _bridge_user(self) -> Person:
        """Who the bridge is, looked up once: its comments are marked ``by_bridge``."""
        return self._me or self.check()

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

    # ----- notifications ---------------------------------------------------------
    def verify_and_parse_webhook(self, headers: Mapping[str, str], raw_body: bytes) -> list[TicketEvent]:
        if len(raw_body) > MAX_WEBHOOK_BYTES:
            raise WebhookVerificationError(f"notification body is larger than {MAX_WEBHOOK_BYTES} bytes")
        content_type = (_header(headers, "content-type") or "").lower()
        start = raw_body.lstrip(b"\xef\xbb\xbf \t\r\n")[:1]
        if "xml" in content_type or start == b"<":
            return self._outbound_message(raw_body)
        return self._flow_callout(headers, raw_body)

    def _flow_callout(self, headers: Mapping[str, str], raw_body: bytes) -> list[TicketEvent]:
        """A Flow/Apex callout: hex HMAC-SHA256(secret, timestamp + "." + body)."""
        timestamp = _header(headers, TIMESTAMP_HEADER)
        if not timestamp:
            raise WebhookVerificationError(f"missing {TIMESTAMP_HEADER} header")
        signed = timestamp.encode() + b"." + raw_body
        verify_signature(
            _header(headers, SIGNATURE_HEADER), self.config.secrets(),
            lambda secret: hmac_sha256_hex(secret, signed), header=SIGNATURE_HEADER,
        )
        stamp = check_timestamp(timestamp, tolerance=self.config.webhook_tolerance_seconds)
        try:
            payload = json.loads(raw_body)
        except ValueError as exc:
            raise WebhookVerificationError("callout body is not JSON") from exc
        if not isinstance(payload, dict) or not isinstance(payload.get("record_id"), str):
            raise WebhookVerificationError("callout body needs a record_id string")
        record_id, sobject = payload["record_id"], str(payload.get("object") or self.config.object)
        if not _RECORD_ID.fullmatch(record_id) or not _OBJECT_NAME.fullmatch(sobject):
            raise WebhookVerificationError("callout names no valid record")
        kind = payload.get("kind") if payload.get("kind") in _EVENT_KINDS else "updated"
        event_id = str(payload.get("event_id") or hmac_sha256_hex("salesforce-flow", raw_body))[:200]
        key = record_id if sobject == self.config.object else f"{sobject}/{record_id}"
        occurred = datetime.fromtimestamp(stamp, timezone.utc)
        return [TicketEvent(event_id=f"flow:{event_id}", ticket_key=key, kind=kind, occurred_at=occurred)]

    def _outbound_message(self, raw_body: bytes) -> list[TicketEvent]:
        """SOAP ``notifications``: unsigned, so the organization id must match ours."""
        expected = (self.config.organization_id or "").strip()
        if not expected:
            raise WebhookVerificationError("Outbound Messages need organization_id on the connection")
        root = _parse_xml(raw_body)
        body = root.find("{http://schemas.xmlsoap.org/soap/envelope/}Body")
        notifications = None if body is None else body.find(f"{{{OUTBOUND_NS}}}notifications")
        if notifications is None:
            raise WebhookVerificationError("not a Salesforce Outbound Message (no soapenv:Body/notifications)")
        org = (notifications.findtext(f"{{{OUTBOUND_NS}}}OrganizationId") or "").strip()
        if not org or org[:15] != expected[:15]:
            raise WebhookVerificationError("Outbound Message is from another organization")
        events = []
        for note in notifications.findall(f"{{{OUTBOUND_NS}}}Notification"):
            note_id = (note.findtext(f"{{{OUTBOUND_NS}}}Id") or "").strip()
            sobject = note.find(f"{{{OUTBOUND_NS}}}sObject")
            if not note_id or sobject is None:
                raise WebhookVerificationError("Notification without Id or sObject")
            type_name = (sobject.get(XSI_TYPE) or "").split(":")[-1] or self.config.object
            record_id = (sobject.findtext(f"{{{SOBJECT_NS}}}Id") or "").strip()
            kind = "updated"
            if type_name == "CaseComment":  # a comment names its Case
                type_name, kind = "Case", "comment_added"
                record_id = (sobject.findtext(f"{{{SOBJECT_NS}}}ParentId") or "").strip()
            if not _RECORD_ID.fullmatch(record_id) or not _OBJECT_NAME.fullmatch(type_name):
                raise WebhookVerificationError("Notification names no valid record")
            key = record_id if type_name == self.config.object else f"{type_name}/{record_id}"
            events.append(TicketEvent(event_id=f"{OUTBOUND_EVENT_PREFIX}{note_id}", ticket_key=key, kind=kind))
        return events

    def acknowledge(self, events: list[TicketEvent]) -> tuple[bytes, str] | None:
        """Outbound Messages need the SOAP Ack, or Salesforce resends them (an empty
        ``notifications`` gets one too: only Outbound Messages can parse to no events)."""
        if not events or any(e.event_id.startswith(OUTBOUND_EVENT_PREFIX) for e in events):
            return ACK_BODY, "text/xml; charset=utf-8"
        return None

    def close(self) -> None:
        with self._lock:
            self._sf = None
            if self._http is not None:
                self._http.close()
                self._http = None


def _parse_xml(raw_body: bytes) -> ET.Element:
    """defusedxml with DTDs forbidden: no entity expansion, no external entities."""
    try:
        return safe_fromstring(raw_body, forbid_dtd=True, forbid_entities=True, forbid_external=True)
    except DTDForbidden as exc:
        raise WebhookVerificationError("refused XML with a DTD (entity expansion or external entities)") from exc
    except EntitiesForbidden as exc:
        raise WebhookVerificationError("refused XML that declares entities") from exc
    except ExternalReferenceForbidden as exc:
        raise WebhookVerificationError("refused XML that references external entities") from exc
    except (ET.ParseError, DefusedXmlException, ValueError) as exc:
        raise WebhookVerificationError(f"malformed XML: {type(exc).__name__}") from exc
