"""ServiceNow connector: reviews as Table API records, through ``pysnow``.

Mechanics that stay here (STYLE.md): the review id rides in ``correlation_id``; the table
comes from the mapping's ``__table`` key (default ``config.table``); ``status`` means the
``state`` field, given as a value or its label; ``comments`` (public) and ``work_notes``
(internal) are journal fields that append, read back from ``sys_journal_field``; who changed
the deciding fields comes from ``sys_audit`` (falling back to ``sys_updated_by``), resolved to
a ``sys_user``. Notifications come from the Business Rule in docs/servicenow.md, signed with
base64 HMAC-SHA256 over ``timestamp + "." + body``.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime, timezone
from typing import Any, ClassVar
from urllib.parse import urlsplit

import pysnow
import requests
from pydantic import Field, SecretStr
from pysnow import exceptions as snow_errors

from .http import PinnedSession
from .base import Comment, ConnectionConfig, FieldUse, MappingProblem, Person, PlannedRequest, Ticket, TicketEvent, TicketRef
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
from .signing import check_timestamp, hmac_sha256_b64, verify_signature

TABLE_KEY = "__table"
JOURNAL = ("comments", "work_notes")
DECIDING = ("state", "approval")
SYS_ID = re.compile(r"^[0-9a-f]{32}$")
TABLE_NAME = re.compile(r"^[a-z][a-z0-9_]{0,79}$")
NUMBER = re.compile(r"^([A-Z]+)(\d{5,})$")
NUMBER_TABLES = {"INC": "incident", "SCTASK": "sc_task", "CS": "sn_customerservice_case",
                 "RITM": "sc_req_item", "CHG": "change_request", "PRB": "problem", "TASK": "task"}
INCIDENT_STATES = {"1": "New", "2": "In Progress", "3": "On Hold", "6": "Resolved", "7": "Closed",
                   "8": "Canceled"}
"""Fallback when ``sys_choice`` cannot be read (the well-known incident codes)."""
TIMESTAMP_HEADER, SIGNATURE_HEADER = "X-Hitl-Timestamp", "X-Hitl-Signature"
GROUP_PAGE, GROUP_PAGES = 100, 50
"""``sys_user_grmember`` rows per request, and at most this many requests for one user."""


class ServiceNowConfig(ConnectionConfig):
    """Basic auth by default; OAuth (password grant at ``/oauth_token.do``) when a client id is set."""

    username: str = Field(description="The integration user the bridge acts as (e.g. hitl.bridge).")
    password: SecretStr
    table: str = Field(default="incident", pattern=TABLE_NAME.pattern,
                       description="Table used when a mapping or key names none.")
    oauth_client_id: str | None = Field(default=None, description="Application Registry client id.")
    oauth_client_secret: SecretStr | None = None


def translate(exc: Exception, operation: str) -> ConnectorError:
    """The one place pysnow / requests / oauthlib failures become connectors.errors."""
    if isinstance(exc, ConnectorError):
        return exc
    if isinstance(exc, (requests.Timeout, requests.ConnectionError)):
        return RetryableError(f"{type(exc).__name__} talking to ServiceNow", operation=operation)
    if isinstance(exc, requests.HTTPError) and exc.response is not None:
        response = exc.response
        status = response.status_code
        message = _short_message(response)
        if status == 429:
            return RateLimitedError(message, retry_after=retry_after_seconds(response.headers.get("Retry-After")), status=status, operation=operation)
        if status in (401, 403):
            return AuthError(message, status=status, operation=operation)
        if status == 404:
            return RemoteNotFoundError(message, status=status, operation=operation)
        if status >= 500:
            return RetryableError(message, status=status, operation=operation)
        return PermanentError(message, status=status, operation=operation)
    if isinstance(exc, snow_errors.NoResults):
        return RemoteNotFoundError("No Record found", operation=operation)
    if isinstance(exc, (snow_errors.TokenCreateError, snow_errors.MissingToken)):
        return AuthError("OAuth token request refused", operation=operation)
    if type(exc).__module__.startswith("oauthlib"):
        if getattr(exc, "error", "") == "insecure_transport":
            return PermanentError("OAuth needs an https base_url", operation=operation)
        status = getattr(exc, "status_code", None)
        return AuthError(f"OAuth: {getattr(exc, 'error', 'error')}", status=status, operation=operation)
    if isinstance(exc, snow_errors.ResponseError):
        return PermanentError(str(getattr(exc, "message", "error in response"))[:200], operation=operation)
    if isinstance(exc, (ValueError, snow_errors.PysnowException)):
        return RetryableError(f"unreadable ServiceNow response ({type(exc).__name__})", operation=operation)
    return RetryableError(f"unexpected {type(exc).__name__}", operation=operation)


def _short_message(response: requests.Response) -> str:
    try:
        error = response.json().get("error") or {}
        message = error.get("message") if isinstance(error, dict) else str(error)
    except (ValueError, AttributeError):
        message = None
    return str(message or response.reason or f"HTTP {response.status_code}")[:200]


def _parse_time(text: str | None) -> datetime | None:
    try:
        return datetime.strptime(text or "", "%Y-%m-%d %H:%M:%S").replace(tzinfo=timezone.utc)
    except ValueError:
        return None


class ServiceNowConnector:
    name: ClassVar[str] = "servicenow"
    config_model: ClassVar[type[ConnectionConfig]] = ServiceNowConfig

    def __init__(self, config: ServiceNowConfig):
        self.config = config
        self._client: pysnow.Client | None = None
        self._session: requests.Session | None = None
        self._people: dict[str, Person] = {}
        self._choices: dict[tuple[str, str], dict[str, str]] = {}

    # ----- plumbing ----------------------------------------------------------
    def _snow(self) -> pysnow.Client:
        """Built on first use (no network in __init__). OAuth uses our own OAuth2Session
        because pysnow.OAuthClient ignores ca_bundle and timeouts."""
        if self._client is None:
            parts = urlsplit(self.config.base_url)
            if self.config.oauth_client_id:
                session = self._oauth_session()
            else:
                session = PinnedSession().pin_to(self.config)
                session.auth = (self.config.username, self.config.password.get_secret_value())
            self._session = session
            self._client = pysnow.Client(host=parts.netloc + parts.path, use_ssl=parts.scheme == "https",
                                         session=session)
        return self._client

    def _oauth_session(self) -> requests.Session:
        from oauthlib.oauth2 import LegacyApplicationClient
        from requests_oauthlib import OAuth2Session

        class _PinnedOAuth(PinnedSession, OAuth2Session):
            pass

        secret = self.config.oauth_client_secret.get_secret_value() if self.config.oauth_client_secret else ""
        token_url = f"{self.config.base_url}/oauth_token.do"
        session = _PinnedOAuth(client=LegacyApplicationClient(client_id=self.config.oauth_client_id),
                               auto_refresh_url=token_url,
                               auto_refresh_kwargs={"client_id": self.config.oauth_client_id, "client_secret": secret},
                               token_updater=lambda token: None)
        session.pin_to(self.config)
        try:
            session.fetch_token(token_url=token_url, username=self.config.username,
                                password=self.config.password.get_secret_value(),
                                client_id=self.config.oauth_client_id, client_secret=secret,
                                include_client_id=True, verify=session.verify)
        except Exception:
            session.close()
            raise
        return session

    def _table(self, table: str):
        # A fresh Resource per call: pysnow's parameters leak from one call to the next otherwise.
        return self._snow().resource(api_path=f"/table/{table}", timeout=self.config.timeout_seconds)

    @contextmanager
    def _calling(self, operation: str) -> Iterator[None]:
        try:
            yield
        except Exception as exc:  # translated once, here
            raise translate(exc, operation) from exc

    def _query(self, table: str, query: str, *, limit: int = 100, display: bool | str = False,
               offset: int = 0, fields: Sequence[str] = ()) -> list[dict]:
        try:
            return list(self._table(table).get(query=query, limit=limit, offset=offset, fields=list(fields),
                                               display_value=display).all())
        except requests.HTTPError as exc:
            if exc.response is not None and exc.response.status_code == 404:
                return []  # old instances (and /v1) answer an empty list with 404
            raise

    def _key(self, table: str, sys_id: str) -> str:
        return sys_id if table == self.config.table else f"{table}:{sys_id}"

    def _ref(self, table: str, record: Mapping[str, Any]) -> TicketRef:
        sys_id, number = _value(record.get("sys_id")), _value(record.get("number"))
        url = f"{self.config.base_url}/nav_to.do?uri={table}.do?sys_id={sys_id}"
        return TicketRef(key=self._key(table, sys_id), display=number or sys_id, url=url)

    def _locate(self, key: str) -> tuple[str, str]:
        """``table:sys_id``, a plain sys_id (default table) or a number such as INC0010001."""
        table, _, ident = key.strip().rpartition(":")
        table = table or self.config.table
        if not TABLE_NAME.match(table):
            raise PermanentError(f"not a ServiceNow table name: {table[:80]!r}")
        if SYS_ID.match(ident):
            return table, ident
        number = NUMBER.match(ident.upper())
        if not number:
            raise RemoteNotFoundError(f"not a ServiceNow sys_id or number: {ident[:80]!r}")
        if ":" not in key:
            table = NUMBER_TABLES.get(number.group(1), self.config.table)
        rows = self._query(table, f"number={ident.upper()}", limit=1)
        if not rows:
            raise RemoteNotFoundError(f"no {table} record numbered {ident.upper()}")
        return table, rows[0]["sys_id"]

    def _person(self, user_name: str) -> Person:
        if user_name not in self._people:
            rows = self._query("sys_user", f"user_name={user_name}", limit=1)
            row = rows[0] if rows else {}
            self._people[user_name] = Person(id=user_name, name=row.get("name") or None, email=row.get("email") or None)
        return self._people[user_name]

    def _state_value(self, table: str, status: str) -> str:
        """A state label or value -> its value, from sys_choice (the table's, then Task's)."""
        for owner in (table, "task"):
            if (table, owner) not in self._choices:
                rows = self._query("sys_choice", f"name={owner}^element=state^inactive=false", limit=200)
                self._choices[(table, owner)] = {r["label"].lower(): r["value"] for r in rows}
            choices = self._choices[(table, owner)]
            if choices:
                if status in choices.values():
                    return status
                if status.lower() in choices:
                    return choices[status.lower()]
                break
        by_label = {label.lower(): value for value, label in INCIDENT_STATES.items()}
        if status.lower() in by_label:
            return by_label[status.lower()]
        if status.lstrip("-").isdecimal():
            return status
        raise PermanentError(f"{table} has no state called {status[:80]!r}")

    # ----- the Connector protocol ----------------------------------------------
    def check(self) -> Person:
        with self._calling("check"):
            rows = self._query("sys_user", f"user_name={self.config.username}", limit=1)
            if not rows:
                return Person(id=self.config.username)
            return Person(id=self.config.username, name=rows[0].get("name"), email=rows[0].get("email"))

    def create_ticket(self, fields: Mapping[str, Any], *, review_id: str) -> TicketRef:
        payload = dict(fields)
        table = str(payload.pop(TABLE_KEY, None) or self.config.table)
        payload.update(correlation_id=review_id, correlation_display="hitl-bridge")
        with self._calling("create_ticket"):
            if not TABLE_NAME.match(table):
                raise PermanentError(f"not a ServiceNow table name: {table[:80]!r}")
            record = self._table(table).create(payload=payload).one()
            return self._ref(table, record)

    def find_ticket(self, review_id: str, *, table: str | None = None) -> TicketRef | None:
        table = table or self.config.table
        query = f"correlation_id={review_id}^ORDERBYsys_created_on"
        with self._calling("find_ticket"):
            rows = self._query(table, query, limit=5)
            # An instance ignores unknown query fields: check the stamp ourselves.
            rows = [r for r in rows if r.get("correlation_id") == review_id]
            if not rows and table != "task":
                # The mapping may have put the record in another table (__table): every table a
                # review can live in extends Task, and a Task query returns its children too.
                try:
                    found = self._query("task", query, limit=5)
                except requests.HTTPError as exc:  # no read access to task: nothing more to find
                    if exc.response is None or exc.response.status_code != 403:
                        raise
                    found = []
                rows = [r for r in found if r.get("correlation_id") == review_id
                        and TABLE_NAME.match(str(r.get("sys_class_name") or ""))]
                if rows:
                    table = rows[0]["sys_class_name"]
        return self._ref(table, rows[0]) if rows else None

    def get_ticket(self, key: str) -> Ticket:
        with self._calling("get_ticket"):
            table, sys_id = self._locate(key)
            record = self._table(table).get(query=f"sys_id={sys_id}", limit=1, display_value="all").one()
            fields = {name: _value(value) for name, value in record.items()}
            labels = {name: str(value["display_value"]) for name, value in record.items()
                      if isinstance(value, dict) and value.get("display_value") not in (None, fields[name])}
            comments = self._comments(sys_id)
            changed_by = self._changed_by(sys_id, fields.get("sys_updated_by"))
        return Ticket(ref=self._ref(table, fields), status=labels.get("state") or fields.get("state"),
                      fields=fields, labels=labels, comments=comments, changed_by=changed_by,
                      updated=_parse_time(fields.get("sys_updated_on")))

    def _comments(self, sys_id: str) -> list[Comment]:
        rows = self._query("sys_journal_field", f"element_id={sys_id}^ORDERBYsys_created_on", limit=1000)
        return [self._comment(r) for r in rows if r.get("element") in JOURNAL]

    def _comment(self, row: Mapping[str, Any]) -> Comment:
        author = row.get("sys_created_by") or ""
        return Comment(id=row["sys_id"], body=row.get("value", ""), author=self._person(author) if author else None,
                       public=row.get("element") == "comments", created=_parse_time(row.get("sys_created_on")),
                       by_bridge=author == self.config.username)

    def _changed_by(self, sys_id: str, updated_by: str | None) -> Person | None:
        """Whoever last changed state or approval (sys_audit); else the last updater."""
        try:
            rows = self._query("sys_audit", f"documentkey={sys_id}^fieldnameINstate,approval^ORDERBYDESCsys_created_on",
                               limit=20)
        except requests.HTTPError as exc:  # audit history is often ACL-protected: fall back
            if exc.response is None or exc.response.status_code != 403:
                raise
            rows = []
        rows = [r for r in rows if r.get("documentkey") == sys_id and r.get("fieldname") in DECIDING]
        user = rows[0].get("user") if rows else updated_by
        return self._person(user) if user else None

    def update_ticket(self, key: str, fields: Mapping[str, Any]) -> None:
        payload = {k: v for k, v in fields.items() if k != TABLE_KEY}
        with self._calling("update_ticket"):
            table, sys_id = self._locate(key)
            if "status" in payload:
                payload["state"] = self._state_value(table, str(payload.pop("status")))
            if payload:
                self._table(table).request("PATCH", path_append=f"/{sys_id}", data=json.dumps(payload)).one()

    def add_comment(self, key: str, body: str, *, public: bool) -> Comment:
        element = "comments" if public else "work_notes"
        with self._calling("add_comment"):
            table, sys_id = self._locate(key)
            self._table(table).request("PATCH", path_append=f"/{sys_id}", data=json.dumps({element: body})).one()
            rows = self._query("sys_journal_field", f"element_id={sys_id}^element={element}"
                               f"^sys_created_by={self.config.username}^ORDERBYDESCsys_created_on", limit=1)
            if rows:
                return self._comment(rows[0])
        return Comment(id=f"{sys_id}:{element}", body=body, author=Person(id=self.config.username),
                       public=public, by_bridge=True)

    def groups_of(self, person: Person) -> set[str]:
        """Names of the active groups ``person`` is a member of (``sys_user_grmember``).

        ``person.id`` is a ``user_name`` (what ``sys_audit`` and ``sys_updated_by`` hold) or a
        ``sys_user`` sys_id; an unknown user belongs to no group. Memberships are read at each
        call, never cached, so a change in ServiceNow takes effect at the next decision."""
        with self._calling("groups_of"):
            user = self._user_sys_id(person.id)
            if user is None:
                return set()
            names: set[str] = set()
            seen: set[str] = set()
            for page in range(GROUP_PAGES):
                rows = self._query("sys_user_grmember", f"user={user}", limit=GROUP_PAGE, offset=page * GROUP_PAGE,
                                   fields=("sys_id", "user", "group.name", "group.active"))
                fresh = [r for r in rows if _value(r.get("sys_id")) not in seen]
                seen.update(_value(r.get("sys_id")) for r in fresh)
                # The instance ignores a query term it cannot read: check the user ourselves.
                names.update(str(r["group.name"]) for r in fresh if _value(r.get("user")) == user
                             and r.get("group.name") and r.get("group.active") != "false")
                if len(rows) < GROUP_PAGE or not fresh:
                    break
            return names

    def _user_sys_id(self, ident: str) -> str | None:
        """The sys_id of the ``sys_user`` whose user_name (or sys_id) is ``ident``."""
        if not ident:
            return None
        field = "sys_id" if SYS_ID.match(ident) else "user_name"
        rows = self._query("sys_user", f"{field}={ident}", limit=1, fields=("sys_id", "user_name"))
        match = next((r for r in rows if r.get(field) == ident), None)
        return str(match["sys_id"]) if match else None

    # ----- admin: preview and doctor ---------------------------------------------
    def plan_requests(
        self, fields: Mapping[str, Any], *, review_id: str, comment: str | None, origin_key: str | None = None
    ) -> list[PlannedRequest]:
        api = f"{self.config.base_url}/api/now/table"
        payload = dict(fields)
        table = str(payload.pop(TABLE_KEY, None) or self.config.table)
        if origin_key:
            table, _, sys_id = origin_key.rpartition(":")
            target = f"{api}/{table or self.config.table}/{sys_id}"
            planned = [PlannedRequest("PATCH", target, payload, "update the origin record")] if payload else []
        else:
            payload.update(correlation_id=review_id, correlation_display="hitl-bridge")
            target = f"{api}/{table}/{{new sys_id}}"
            planned = [PlannedRequest("POST", f"{api}/{table}", payload, f"create the review record in {table}")]
        if comment:
            planned.append(PlannedRequest("PATCH", target, {"work_notes": comment}, "the opening work note"))
        return planned

    def check_mapping(self, uses: Sequence[FieldUse]) -> list[MappingProblem]:
        """The table (and the tables it extends) in ``sys_db_object``, each field in
        ``sys_dictionary``, choice values in ``sys_choice`` and referenced records by name."""
        problems: list[MappingProblem] = []
        table_use = next((u for u in uses if u.field == TABLE_KEY), None)
        table = str(table_use.value) if table_use and table_use.value else self.config.table
        with self._calling("check_mapping"):
            chain = self._table_chain(table)
            if not chain:
                where = table_use.where if table_use else "connection"
                return [MappingProblem(where, f"ServiceNow has no table {table!r} (or the bridge account cannot read it)")]
            names = ",".join(chain)
            columns = {_value(r.get("element")): r for r in self._query("sys_dictionary", f"nameIN{names}", limit=2000)}
            choices: dict[str, dict[str, str]] = {}
            for row in self._query("sys_choice", f"nameIN{names}^inactive=false", limit=5000):
                element = _value(row.get("element"))
                choices.setdefault(element, {})[_value(row.get("value"))] = _value(row.get("label"))
            for use in uses:
                if use.field == TABLE_KEY:
                    continue
                field = "state" if use.field == "status" and use.role == "update" else use.field
                column = columns.get(field)
                if column is None:
                    problems.append(MappingProblem(use.where, f"table {table} has no field {field!r}"))
                    continue
                if use.value is None or isinstance(use.value, (dict, list)) or str(use.value) == "":
                    continue
                value = str(use.value)
                if field in choices and value not in choices[field] and value not in choices[field].values():
                    known = sorted(choices[field])
                    problems.append(MappingProblem(use.where, f"{value!r} is not a choice of {table}.{field}; choices: {known}"))
                reference = _value(column.get("reference"))
                if reference and _value(column.get("internal_type")) == "reference" and not SYS_ID.match(value):
                    label_field = "user_name" if reference == "sys_user" else "name"
                    if not self._query(reference, f"{label_field}={value}", limit=1):
                        problems.append(MappingProblem(use.where, f"{table}.{field} refers to {reference}, which has no {value!r}"))
        return problems

    def _table_chain(self, table: str) -> list[str]:
        """``table`` and every table it extends (``u_ai_review`` -> task), or [] if unknown."""
        chain: list[str] = []
        rows = self._query("sys_db_object", f"name={table}", limit=1)
        while rows and len(chain) < 10:
            chain.append(_value(rows[0].get("name")))
            parent = _value(rows[0].get("super_class"))
            rows = self._query("sys_db_object", f"sys_id={parent}", limit=1) if parent else []
        return chain

    def verify_and_parse_webhook(self, headers: Mapping[str, str], raw_body: bytes) -> list[TicketEvent]:
        lowered = {k.lower(): v for k, v in headers.items()}
        timestamp = lowered.get(TIMESTAMP_HEADER.lower(), "").strip()
        signature = lowered.get(SIGNATURE_HEADER.lower())
        if not timestamp:
            raise WebhookVerificationError(f"missing {TIMESTAMP_HEADER} header")
        verify_signature(signature, self.config.secrets(),
                         lambda secret: hmac_sha256_b64(secret, timestamp.encode() + b"." + raw_body),
                         header=SIGNATURE_HEADER)
        stamp = check_timestamp(timestamp, tolerance=self.config.webhook_tolerance_seconds)
        try:
            body = json.loads(raw_body)
        except ValueError as exc:
            raise WebhookVerificationError("notification body is not JSON") from exc
        if not isinstance(body, dict):
            raise WebhookVerificationError("notification body is not a JSON object")
        sys_id, table = str(body.get("sys_id", "")), str(body.get("table", ""))
        if not SYS_ID.match(sys_id) or not TABLE_NAME.match(table):
            raise WebhookVerificationError("notification lacks a valid sys_id and table")
        if str(body.get("timestamp", timestamp)) != timestamp:
            raise WebhookVerificationError("body timestamp differs from the signed header")
        changes = body.get("changes") or []
        kind = "status_changed" if set(changes) & set(DECIDING) or not changes else "comment_added"
        event_id = str(body.get("event_id") or hashlib.sha256(raw_body).hexdigest())
        return [TicketEvent(event_id=event_id, ticket_key=self._key(table, sys_id), kind=kind,
                            occurred_at=datetime.fromtimestamp(stamp, tz=timezone.utc))]

    def acknowledge(self, events: list[TicketEvent]) -> tuple[bytes, str] | None:
        return None

    def close(self) -> None:
        if self._session is not None:
            self._session.close()
        self._client = self._session = None


def _value(value: Any) -> Any:
    """The raw value of a field as any sysparm_display_value mode returns it."""
    if isinstance(value, dict):
        return value.get("value", "")
    return value
