"""ServiceNow emulator: the Table API subset the connector uses, and the Business Rule's
signed notification (docs/servicenow.md), served over real HTTP so ``pysnow`` talks to it
unmodified.

Behaviour copied from the real Table API (NOTES.md §2): ``{"result": ...}`` wrapper, 201 +
``Location`` on POST, string values, reference fields as ``{link, value}``,
``sysparm_display_value`` false/true/all, journal fields (``comments``, ``work_notes``) that
append to ``sys_journal_field`` and read back as ``""``, unknown fields silently ignored,
pysnow's extra sysparm parameters tolerated, errors as ``{"error": {message, detail},
"status": "failure"}``. Field changes are recorded in ``sys_audit`` as the real instance does
for audited task tables.
"""

from __future__ import annotations

import json
import time
import uuid
from datetime import datetime, timezone
from functools import partial
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ...signing import hmac_sha256_b64
from ..base import Act, Emulator
from .auth import OAUTH_CLIENT, authenticate, token_endpoint  # noqa: F401  (OAUTH_CLIENT re-exported)
from .data import (
    BRIDGE_USER,
    CHOICES,
    GROUPS,
    JOURNAL,
    MEMBERS,
    NOTIFY_ON,
    PREFIXES,
    READ_ONLY,
    REVIEW_TABLE,
    TABLE_FIELDS,
    TASK_FIELDS,
    TASK_TABLES,
    USERS,
    dictionary,
    matches,
    parse_query,
    reference,
)
from .groups import sync_memberships

def now_text() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


def new_sys_id() -> str:
    return uuid.uuid4().hex


class ServiceNowEmulator(Emulator):
    vendor = "servicenow"

    # ----- state -------------------------------------------------------------
    def reset(self) -> None:
        with self.lock:
            self.tables: dict[str, dict[str, dict[str, str]]] = {t: {} for t in TABLE_FIELDS}
            self.counters = {table: 10000 for table in PREFIXES}
            self.seq = 0
            self.passwords: dict[str, str] = {}
            self.tokens: dict[str, str] = {}
            for user in USERS:
                record = {"sys_id": new_sys_id(), "active": "true", **{k: v for k, v in user.items() if k != "password"}}
                self._store("sys_user", record)
                self.passwords[user["user_name"]] = user["password"]
            for name, description in GROUPS.items():
                self._store("sys_user_group", {"sys_id": new_sys_id(), "name": name, "description": description,
                                               "active": "true"})
            self.groups: dict[str, list[str]] = {user: list(names) for user, names in MEMBERS.items()}
            tables, columns = dictionary()
            ids = {t["name"]: new_sys_id() for t in tables}
            for table in tables:
                self._store("sys_db_object", {**table, "sys_id": ids[table["name"]], "super_class": ids.get(table["super_class"], "")})
            for column in columns:
                self._store("sys_dictionary", {"sys_id": new_sys_id(), **column})
            for (table, element), choices in CHOICES.items():
                for order, (value, label) in enumerate(choices):
                    self._store("sys_choice", {
                        "sys_id": new_sys_id(), "name": table, "element": element, "value": value,
                        "label": label, "sequence": str(order), "language": "en", "inactive": "false",
                    })
            carol = self.user("carol")
            for short, text in (
                ("Order A-100 arrived damaged", "The vase in order A-100 arrived in pieces. I would like a refund."),
                ("Cannot log in to my account", "Password reset e-mails never arrive. Please help."),
            ):
                self._insert("incident", {
                    "short_description": short, "description": text, "caller_id": carol["sys_id"],
                    "contact_type": "email", "impact": "3", "urgency": "2",
                }, user="carol")

    def _store(self, table: str, record: dict[str, str]) -> dict[str, str]:
        self.seq += 1
        record.setdefault("sys_created_on", now_text())
        record["_seq"] = str(self.seq)
        self.tables[table][record["sys_id"]] = record
        return record

    def user(self, user_name: str) -> dict[str, str]:
        for record in self.tables["sys_user"].values():
            if record["user_name"] == user_name:
                return record
        raise KeyError(user_name)

    # ----- writes (shared by the REST API and act()) ---------------------------
    def _clean(self, table: str, body: dict[str, Any]) -> dict[str, str]:
        """Keep the fields the table has (unknown ones are silently ignored, as the real API
        does); store references as sys_ids, matching a display value when one is given."""
        known = TABLE_FIELDS[table]
        clean: dict[str, str] = {}
        for name, value in body.items():
            if not (name in known or (table.startswith("u_") and name.startswith("u_"))):
                continue
            if isinstance(value, dict) and "value" in value:
                value = value["value"]
            text = "" if value is None else (json.dumps(value) if isinstance(value, (list, dict)) else str(value))
            if isinstance(value, bool):
                text = str(value).lower()
            if reference(table, name) and text:
                text = self._reference(str(reference(table, name)), text)
            clean[name] = text
        return clean

    def _reference(self, table: str, text: str) -> str:
        rows = self.tables.get(table, {})
        if text in rows:
            return text
        for row in rows.values():
            if text in (row.get("name"), row.get("user_name"), row.get("email")):
                return row["sys_id"]
        return text

    def _insert(self, table: str, body: dict[str, Any], *, user: str) -> dict[str, str]:
        fields = self._clean(table, body)
        journal = {k: fields.pop(k) for k in JOURNAL if k in fields}
        stamp = now_text()
        record = {name: "" for name in TABLE_FIELDS[table]}
        if table in TASK_TABLES:
            self.counters[table] += 1
            record.update(number=f"{PREFIXES[table]}{self.counters[table]:07d}", state="1", approval="not requested",
                          active="true", opened_at=stamp, opened_by=self.user(user)["sys_id"], priority="4",
                          impact="3", urgency="3", sys_class_name=table)
        record.update(fields)
        record.update(sys_id=new_sys_id(), sys_created_on=stamp, sys_created_by=user, sys_updated_on=stamp,
                      sys_updated_by=user, sys_mod_count="0")
        if table == "incident":
            record["incident_state"] = record["state"]
        self._store(table, record)
        for element, value in journal.items():
            self._journal(table, record["sys_id"], element, value, user=user)
        return record

    def _update(self, table: str, sys_id: str, body: dict[str, Any], *, user: str) -> dict[str, str]:
        record = self.tables[table][sys_id]
        fields = self._clean(table, body)
        for protected in ("sys_id", "number", "sys_created_on", "sys_created_by", "sys_class_name"):
            fields.pop(protected, None)
        journal = {name: fields.pop(name) for name in JOURNAL if fields.get(name)}
        fields = {k: v for k, v in fields.items() if k not in JOURNAL}
        for element, value in journal.items():
            self._journal(table, sys_id, element, value, user=user)
        changed = list(journal)
        for name, value in fields.items():
            if record.get(name, "") != value:
                self._store("sys_audit", {
                    "sys_id": new_sys_id(), "tablename": table, "documentkey": sys_id, "fieldname": name,
                    "oldvalue": record.get(name, ""), "newvalue": value, "user": user,
                })
                record[name] = value
                changed.append(name)
        if table == "incident" and "state" in fields:
            record["incident_state"] = record["state"]
        if changed:
            record.update(sys_updated_on=now_text(), sys_updated_by=user,
                          sys_mod_count=str(int(record.get("sys_mod_count") or 0) + 1))
            self._notify(table, record, changed, user=user)
        return record

    def _journal(self, table: str, sys_id: str, element: str, value: str, *, user: str) -> None:
        if value:
            self._store("sys_journal_field", {
                "sys_id": new_sys_id(), "element": element, "element_id": sys_id, "name": table,
                "value": value, "sys_created_by": user,
            })

    def _notify(self, table: str, record: dict[str, str], changed: list[str], *, user: str) -> None:
        """What the Business Rule in docs/servicenow.md sends, signed the same way."""
        changes = [name for name in NOTIFY_ON if name in changed]
        if not changes or not self.settings.webhook_url or not self.settings.webhook_secret:
            return
        timestamp = str(int(time.time()))
        body = json.dumps({
            "event_id": new_sys_id(), "table": table, "sys_id": record["sys_id"], "number": record["number"],
            "timestamp": timestamp, "changes": changes, "updated_by": user,
        }, separators=(",", ":"))
        signature = hmac_sha256_b64(self.settings.webhook_secret, f"{timestamp}.{body}".encode())
        self.webhooks.send(body, {
            "Content-Type": "application/json", "X-Hitl-Timestamp": timestamp, "X-Hitl-Signature": signature,
        })

    # ----- reading -----------------------------------------------------------
    def render(self, table: str, record: dict[str, str], params: dict[str, str]) -> dict[str, Any]:
        mode = params.get("sysparm_display_value", "false").lower()
        no_links = params.get("sysparm_exclude_reference_link", "false").lower() == "true"
        wanted = [f.strip() for f in params.get("sysparm_fields", "").split(",") if f.strip()]
        out: dict[str, Any] = {}
        for name in wanted or [n for n in record if not n.startswith("_")]:
            if "." in name:  # dot-walked through references: group.name on sys_user_grmember
                walked = self._dot_walk(table, record, name)
                if walked is not None:
                    value, display = walked
                    out[name] = display if mode == "true" else ({"display_value": display, "value": value}
                                                                if mode == "all" else value)
                continue
            if name not in record or name.startswith("_"):
                continue
            value = record[name]
            display = self.display(table, name, value)
            link = None
            if reference(table, name) and value and not no_links:
                link = f"{self.base_url}/api/now/table/{reference(table, name)}/{value}"
            if mode == "true":
                out[name] = display
            elif mode == "all":
                out[name] = {"display_value": display, "value": value} | ({"link": link} if link else {})
            else:
                out[name] = {"link": link, "value": value} if link else value
        return out

    def _dot_walk(self, table: str, record: dict[str, str], path: str) -> tuple[str, str] | None:
        """(value, display value) at the end of ``path``; None when a hop is no reference."""
        *hops, name = path.split(".")
        for hop in hops:
            target = reference(table, hop)
            if target is None or hop not in record:
                return None
            record, table = self.tables.get(target, {}).get(record[hop]) or {}, target
        if name.startswith("_") or (record and name not in record):
            return None
        value = record.get(name, "")
        return value, self.display(table, name, value)

    def display(self, table: str, name: str, value: str) -> str:
        if not value:
            return ""
        if reference(table, name):
            row = self.tables.get(str(reference(table, name)), {}).get(value)
            return (row.get("name") or row.get("user_name") or value) if row else value
        for key in ((table, name), ("task", name)):
            for code, label in CHOICES.get(key, ()):
                if code == value:
                    return label
        return value

    # ----- REST routes ---------------------------------------------------------
    def routes(self) -> list:
        paths = ["/api/now/table", "/api/now/v1/table", "/api/now/v2/table"]
        routes = [Route("/oauth_token.do", partial(token_endpoint, self), methods=["POST"])]
        for base in paths:
            routes += [
                Route(base + "/{table}", self._collection, methods=["GET", "POST"]),
                Route(base + "/{table}/{sys_id}", self._record, methods=["GET", "PUT", "PATCH", "DELETE"]),
            ]
        return routes

    def error_response(self, status: int, message: str, *, retry_after: int | str | None = None) -> Response:
        details = {
            401: ("User Not Authenticated", "Required to provide Auth information"),
            404: ("No Record found", "Record doesn't exist or ACL restricts the record retrieval"),
            429: ("Rate limit exceeded", "Rate limit of 100 requests per hour for Table API exceeded"),
        }
        title, detail = details.get(status, (message, message))
        if status >= 500:
            title, detail = "Internal Server Error", message
        headers = {"Retry-After": str(retry_after)} if retry_after is not None else {}
        if status == 429:
            wait = retry_after if isinstance(retry_after, int) else 60  # an HTTP-date's reset: the hour's default
            headers |= {"X-RateLimit-Limit": "100", "X-RateLimit-Reset": str(int(time.time()) + wait)}
        return JSONResponse({"error": {"message": title, "detail": detail}, "status": "failure"},
                            status_code=status, headers=headers)

    async def _guard(self, request: Request) -> tuple[str | None, str, Response | None]:
        user = authenticate(self, request)
        table = request.path_params["table"]
        if user is None:
            return None, table, self.error_response(401, "User Not Authenticated")
        if table == "task" and request.method == "GET" and "sys_id" not in request.path_params:
            return user, table, None  # the parent table: lists the records of every table extending Task
        if table not in self.tables:
            return user, table, self._failure(400, f"Invalid table {table}", None)
        if request.method != "GET" and table in READ_ONLY:
            return user, table, self._failure(403, "Operation Failed", "ACL Exception Insert Failed due to security constraints")
        return user, table, None

    @staticmethod
    def _failure(status: int, message: str, detail: str | None) -> Response:
        return JSONResponse({"error": {"message": message, "detail": detail}, "status": "failure"}, status_code=status)

    async def _body(self, request: Request) -> dict[str, Any] | Response:
        try:
            body = json.loads(await request.body() or b"{}")
        except ValueError:
            return self._failure(400, "Exception while reading request", "The payload is not valid JSON.")
        if isinstance(body, list):  # the real API uses only the first record
            body = body[0] if body else {}
        if not isinstance(body, dict):
            return self._failure(400, "Exception while reading request", "The payload is not valid JSON.")
        return body

    async def _collection(self, request: Request) -> Response:
        user, table, refused = await self._guard(request)
        if refused:
            return refused
        params = dict(request.query_params)
        if request.method == "POST":
            body = await self._body(request)
            if isinstance(body, Response):
                return body
            with self.lock:
                record = self._insert(table, body, user=str(user))
                result = self.render(table, record, params)
            location = f"{self.base_url}/api/now/table/{table}/{record['sys_id']}"
            return JSONResponse({"result": result}, status_code=201, headers={"Location": location})
        terms, order = parse_query(params.get("sysparm_query", ""))
        with self.lock:
            self._sync_groups(table)
            if table == "task":  # a child record read through Task shows Task's fields only
                sources = [{k: v for k, v in r.items() if k in TASK_FIELDS or k.startswith("_")}
                           for name in TASK_TABLES for r in self.tables[name].values()]
            else:
                sources = list(self.tables[table].values())
            rows = [r for r in sources if matches(r, terms)]
            for field, descending in reversed(order):
                rows.sort(key=lambda r, f=field: (r.get(f, ""), int(r["_seq"])), reverse=descending)
            total = len(rows)
            offset = _int(params.get("sysparm_offset"), 0)
            rows = rows[offset: offset + _int(params.get("sysparm_limit"), 10000)]
            result = [self.render(r.get("sys_class_name") or table, r, params) for r in rows]
        if not result and "/v1/" in request.url.path:
            return self.error_response(404, "No Record found")
        return JSONResponse({"result": result}, headers={"X-Total-Count": str(total)})

    async def _record(self, request: Request) -> Response:
        user, table, refused = await self._guard(request)
        if refused:
            return refused
        sys_id = request.path_params["sys_id"]
        params = dict(request.query_params)
        with self.lock:
            self._sync_groups(table)
            if sys_id not in self.tables[table]:
                return self.error_response(404, "No Record found")
        if request.method == "GET":
            with self.lock:
                return JSONResponse({"result": self.render(table, self.tables[table][sys_id], params)})
        if request.method == "DELETE":
            with self.lock:
                self.tables[table].pop(sys_id, None)
            return Response(status_code=204)
        body = await self._body(request)
        if isinstance(body, Response):
            return body
        with self.lock:
            record = self._update(table, sys_id, body, user=str(user))
            return JSONResponse({"result": self.render(table, record, params)})

    def _sync_groups(self, table: str) -> None:
        if table in ("sys_user_grmember", "sys_user_group"):
            sync_memberships(self.tables, self.groups, self._store)

    # ----- uniform hooks ---------------------------------------------------------
    def key_of(self, table: str, sys_id: str) -> str:
        return sys_id if table == REVIEW_TABLE else f"{table}:{sys_id}"

    def locate(self, key: str) -> tuple[str, str]:
        table, _, sys_id = key.rpartition(":")
        for name in [table] if table else [REVIEW_TABLE, *TASK_TABLES]:
            rows = self.tables.get(name, {})
            if sys_id in rows:
                return name, sys_id
            for row in rows.values():
                if row.get("number") == sys_id:
                    return name, row["sys_id"]
        raise KeyError(key)

    def ticket_view(self, table: str, record: dict[str, str]) -> dict[str, Any]:
        entries = sorted((e for e in self.tables["sys_journal_field"].values() if e["element_id"] == record["sys_id"]),
                         key=lambda e: int(e["_seq"]))
        return {
            "key": self.key_of(table, record["sys_id"]), "display": record["number"],
            "url": f"{self.base_url}/nav_to.do?uri={table}.do?sys_id={record['sys_id']}",
            "title": record.get("short_description", ""), "status": self.display(table, "state", record["state"]),
            "description": record.get("description", ""),
            "comments": [{"author": e["sys_created_by"], "body": e["value"], "public": e["element"] == "comments",
                          "created": e["sys_created_on"]} for e in entries],
            "fields": {k: v for k, v in record.items() if not k.startswith("_")} | {"table": table},
        }

    def list_tickets(self) -> list[dict[str, Any]]:
        with self.lock:
            return [self.ticket_view(t, r) for t in TASK_TABLES for r in self.tables[t].values()]

    def act(self, act: Act) -> dict[str, Any]:
        with self.lock:
            table, sys_id = self.locate(act.key)
            user = act.user or "alice"
            self.user(user)
            decision = {"approve": "approved", "reject": "rejected", "respond": "responded", "edit": "approved"}
            if act.action == "customer_reply":
                self._update(table, sys_id, {"comments": act.body or ""}, user=act.user or "carol")
            elif act.action == "set_field":
                if not act.field:
                    raise ValueError("set_field needs a field")
                self._update(table, sys_id, {act.field: act.value}, user=user)
            else:
                body = f"/edit {act.body or ''}".strip() if act.action == "edit" else act.body
                if body:
                    self._update(table, sys_id, {"work_notes" if act.internal else "comments": body}, user=user)
                if act.action in decision:
                    self._update(table, sys_id, {"approval": decision[act.action]}, user=user)
            return self.ticket_view(table, self.tables[table][sys_id])

    def delivered(self, response) -> bool:
        """The Business Rule sends once (``executeAsync``) and does not retry an answer: a 4xx
        (e.g. 404 for a record the bridge did not create, such as an origin incident) is final.
        Only 5xx and network errors are retried, as a resilient outbound queue would."""
        return response.status_code < 500

    def connection(self, *, base_url: str, ca_bundle: str | None) -> dict[str, Any]:
        return {
            "type": "servicenow", "base_url": base_url, "username": BRIDGE_USER,
            "password": self.passwords[BRIDGE_USER], "table": REVIEW_TABLE, "ca_bundle": ca_bundle,
            "webhook_secrets": [self.settings.webhook_secret],
        }

    def contract_fields(self) -> dict[str, Any]:
        return {"short_description": "Contract test review", "description": "Please review.", "urgency": "2"}

    def missing_key(self) -> str:
        return "0" * 32

    def bad_credentials(self) -> dict[str, Any]:
        return {"password": "wrong-password-for-sure"}

    def contract_close_status(self) -> str:
        return "Closed Complete"


def _int(value: str | None, default: int) -> int:
    try:
        return int(value) if value not in (None, "") else default
    except ValueError:
        return default
