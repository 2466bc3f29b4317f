"""Zendesk Support API v2 emulator: the subset hitl-bridge's connector (through zenpy) uses.

Tickets (create/show/update with audits), comments (public and internal), audits, users,
ticket fields, groups and a user's groups (``groups``: login -> group names, which tests
change as with the Jira emulator), search by tag or external id, webhooks and triggers (for
``hitl-bridge setup zendesk``). Shapes follow Zendesk's documented responses: 201 with a
``Location`` header and ``{ticket, audit}``, ``RecordNotFound``/``RecordInvalid`` errors,
``Couldn't authenticate you`` on 401, cursor pagination with ``meta``/``links``.
zenpy only speaks https, so this emulator is served with TLS (``tls = True``).

Every ticket change, by any user and through the API or ``act()``, sends the trigger-style
webhook body hitl-bridge recommends (docs/zendesk.md), signed the Zendesk way:
``X-Zendesk-Webhook-Signature = base64(HMAC-SHA256(secret, timestamp + body))``.
"""

from __future__ import annotations

import base64
import binascii
import html as htmllib
import json
import re
import secrets as secrets_module
from datetime import datetime, timezone
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ..signing import hmac_sha256_b64
from .base import Act, Emulator

ACCOUNT_ID = 22129848
DECISION_FIELD_ID = 360000101
EDITED_REPLY_FIELD_ID = 360000102
STATUSES = ("new", "open", "pending", "hold", "solved", "closed")
PRIORITIES = (None, "low", "normal", "high", "urgent")
TYPES = (None, "question", "incident", "problem", "task")
DECISION_TAGS = {"approve": "review_approved", "reject": "review_rejected", "respond": "review_responded"}
SIMPLE_FIELDS = ("subject", "priority", "type", "group_id", "assignee_id", "requester_id", "external_id", "due_at", "brand_id")

USERS = {  # login -> (id, name, email, role, api token)
    "bridge": (9000001, "HITL Bridge", "bridge@example.com", "admin", "bridge-api-token"),
    "alice": (9000002, "Alice Reviewer", "alice@example.com", "agent", "alice-api-token"),
    "bob": (9000003, "Bob Approver", "bob@example.com", "agent", "bob-api-token"),
    "carol": (9000004, "Carol Customer", "carol@example.com", "end-user", "carol-api-token"),
}
MEMBERS = {"bridge": ["Support"], "alice": ["Support"], "bob": ["Support", "AI Review"], "carol": []}
"""login -> the groups an agent starts in (end users are in none)."""


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _error(status: int, error: str, description: str | None = None, **extra: Any) -> JSONResponse:
    body: dict[str, Any] = {"error": error}
    if description is not None:
        body["description"] = description
    return JSONResponse(body | extra, status_code=status)


def _invalid(field: str, message: str, code: str = "InvalidValue") -> JSONResponse:
    details = {field: [{"description": message, "error": code}]}
    return _error(422, "RecordInvalid", "Record validation errors", details=details)


def _tags(value: Any) -> list[str]:
    """Zendesk lower-cases tags and splits them on spaces."""
    items = value.split() if isinstance(value, str) else list(value or [])
    return [t for item in items for t in str(item).lower().split() if t]


def _plain(html_text: str) -> str:
    """Roughly what Zendesk stores as ``body`` for a comment sent as ``html_body``."""
    text = re.sub(r"<(br|/p|/tr|/h\d|/li)\s*/?>", "\n", html_text, flags=re.I)
    return htmllib.unescape(re.sub(r"<[^>]+>", "", text)).strip()


class _Invalid(Exception):
    def __init__(self, response: JSONResponse):
        self.response = response


class ZendeskEmulator(Emulator):
    vendor = "zendesk"
    tls = True

    # ----- state ---------------------------------------------------------------
    def reset(self) -> None:
        with self.lock:
            self.users = {
                uid: {"id": uid, "name": name, "email": email, "role": role, "active": True,
                      "created_at": "2024-01-02T09:00:00Z", "time_zone": "UTC", "locale": "en-US"}
                for uid, name, email, role, _ in USERS.values()
            }
            self.tokens = {email: (uid, token) for uid, _, email, _, token in USERS.values()}
            self.tickets: dict[int, dict[str, Any]] = {}
            self.comments: dict[int, list[dict[str, Any]]] = {}
            self.audits: dict[int, list[dict[str, Any]]] = {}
            self.webhook_objects: dict[str, dict[str, Any]] = {}
            self.triggers: dict[int, dict[str, Any]] = {}
            self._next_id = 1000
            self._next_ticket = 35436
            self.group_records = [
                {"id": 360001, "name": "Support", "is_public": True, "default": True, "deleted": False},
                {"id": 360002, "name": "AI Review", "is_public": True, "default": False, "deleted": False},
            ]
            self.groups: dict[str, list[str]] = {login: list(names) for login, names in MEMBERS.items()}
            self._quiet = True  # seeded tickets exist "before" anyone listens: no webhooks
            for subject, body in (
                ("Refund for damaged blender", "My blender (order A-100) arrived with a cracked jar. Can I get a refund?"),
                ("Where is my order?", "Order B-220 was due on Monday and the tracking page has not moved since."),
            ):
                self._create({"subject": subject, "comment": {"body": body}, "priority": "normal",
                              "tags": ["customer"], "group_id": 360001}, actor=9000004, via="web")
            self._quiet = False

    def _id(self) -> int:
        self._next_id += 1
        return self._next_id

    # ----- ticket mechanics (shared by the REST API and act) ---------------------
    def _create(self, data: dict[str, Any], *, actor: int, via: str = "api") -> tuple[dict, dict]:
        comment = data.get("comment") or ({"body": data["description"]} if data.get("description") else None)
        if isinstance(comment, str):
            comment = {"body": comment}
        if not comment or not str(comment.get("body") or comment.get("html_body") or "").strip():
            raise _Invalid(_invalid("description", "Description: cannot be blank", "BlankValue"))
        fields = {k: v for k, v in data.items() if k not in ("comment", "description")}
        fields.setdefault("status", "open" if data.get("assignee_id") else "new")
        self._validate(fields)
        ticket_id = self._next_ticket
        self._next_ticket += 1
        now = _now()
        ticket = {
            "id": ticket_id, "external_id": None,
            "via": {"channel": via, "source": {"from": {}, "to": {}, "rel": None}},
            "created_at": now, "updated_at": now, "type": None, "subject": None, "raw_subject": None,
            "description": str(comment.get("body") or _plain(comment.get("html_body") or "")), "priority": None, "status": "new",
            "recipient": None, "requester_id": actor, "submitter_id": actor, "assignee_id": None,
            "organization_id": None, "group_id": None, "collaborator_ids": [], "follower_ids": [],
            "email_cc_ids": [], "is_public": bool(comment.get("public", True)), "due_at": None, "tags": [],
            "custom_fields": [{"id": DECISION_FIELD_ID, "value": None}, {"id": EDITED_REPLY_FIELD_ID, "value": None}],
            "satisfaction_rating": None, "brand_id": 360000001, "ticket_form_id": 360000201,
        }
        self.tickets[ticket_id] = ticket
        self.comments[ticket_id] = []
        self.audits[ticket_id] = []
        audit = self._apply(ticket, fields, comment, actor=actor, kind="Create")
        return ticket, audit

    def _apply(self, ticket: dict, data: dict[str, Any], comment: dict | None, *, actor: int, kind: str = "Change") -> dict:
        """Validate and apply one update; record one audit; fire one webhook."""
        data = dict(data)
        self._validate(data)
        events: list[dict[str, Any]] = []
        if comment:
            author = int(comment.get("author_id") or actor)
            body = str(comment.get("body") or _plain(comment.get("html_body") or ""))
            events.append(self._add_comment(ticket, body, public=bool(comment.get("public", True)), author=author,
                                             html=comment.get("html_body")))
        old_tags = list(ticket["tags"])
        tags = _tags(data["tags"]) if "tags" in data else list(old_tags)
        tags += [t for t in _tags(data.get("additional_tags")) if t not in tags]
        tags = [t for t in tags if t not in _tags(data.get("remove_tags"))]
        for key in SIMPLE_FIELDS + ("status",):
            if key in data and data[key] != ticket.get(key):
                events.append({"id": self._id(), "type": kind, "field_name": key, "value": data[key],
                               "previous_value": ticket.get(key)})
                ticket[key] = data[key]
                if key == "subject":
                    ticket["raw_subject"] = data[key]
        if tags != old_tags:
            events.append({"id": self._id(), "type": kind, "field_name": "tags", "value": tags, "previous_value": old_tags})
            ticket["tags"] = tags
        for item in data.get("custom_fields") or data.get("fields") or []:
            current = next((f for f in ticket["custom_fields"] if f["id"] == int(item["id"])), None)
            if current is None:
                current = {"id": int(item["id"]), "value": None}
                ticket["custom_fields"].append(current)
            if current["value"] != item.get("value"):
                events.append({"id": self._id(), "type": kind, "field_name": str(item["id"]),
                               "value": item.get("value"), "previous_value": current["value"]})
                current["value"] = item.get("value")
        ticket["fields"] = ticket["custom_fields"]
        ticket["updated_at"] = _now()
        audit = {"id": self._id(), "ticket_id": ticket["id"], "created_at": ticket["updated_at"], "author_id": actor,
                 "metadata": {"system": {"client": "hitl-bridge emulator"}, "custom": {}},
                 "events": events, "via": {"channel": "api", "source": {"from": {}, "to": {}, "rel": None}}}
        for event in events:
            if event["type"] == "Comment":
                event["audit_id"] = audit["id"]
        self.audits[ticket["id"]].append(audit)
        self._fire(ticket, "ticket_created" if kind == "Create" else "ticket_updated")
        return audit

    def _validate(self, data: dict[str, Any]) -> None:
        status = data.get("status")
        if status is not None and status not in STATUSES:
            raise _Invalid(_invalid("status", f"Status: {status} is not a valid status"))
        if data.get("priority", None) not in PRIORITIES:
            raise _Invalid(_invalid("priority", "Priority: is invalid"))
        if data.get("type", None) not in TYPES:
            raise _Invalid(_invalid("type", "Type: is invalid"))
        for key in ("requester_id", "assignee_id"):
            if data.get(key) is not None and int(data[key]) not in self.users:
                raise _Invalid(_invalid(key, f"{key}: is invalid"))

    def _add_comment(self, ticket: dict, body: str, *, public: bool, author: int, html: str | None = None) -> dict:
        comment = {
            "id": self._id(), "type": "Comment", "author_id": author, "body": body,
            "html_body": html or f'<div class="zd-comment" dir="auto"><p dir="auto">{htmllib.escape(body)}</p></div>',
            "plain_body": body, "public": public, "attachments": [],
            "via": {"channel": "api", "source": {"from": {}, "to": {}, "rel": None}},
            "created_at": _now(), "metadata": {"system": {}, "custom": {}},
        }
        self.comments[ticket["id"]].append(comment)
        return comment

    def _fire(self, ticket: dict, event: str) -> None:
        """The trigger-style webhook docs/zendesk.md recommends, signed like Zendesk signs."""
        if not self.settings.webhook_url or getattr(self, "_quiet", False):
            return
        body = json.dumps({
            "ticket_id": str(ticket["id"]), "external_id": ticket["external_id"] or "",
            "status": ticket["status"], "tags": " ".join(ticket["tags"]),
            "updated_at": ticket["updated_at"], "event": event,
        })
        self.webhooks.send(body, self.signed_headers(body))

    def signed_headers(self, body: str, *, timestamp: str | None = None) -> dict[str, str]:
        stamp = timestamp or _now()
        return {
            "Content-Type": "application/json",
            "X-Zendesk-Account-Id": str(ACCOUNT_ID),
            "X-Zendesk-Webhook-Id": "01HITLBRIDGEEMULATORHOOK01",
            "X-Zendesk-Webhook-Invocation-Id": str(self._id() * 7919),
            "X-Zendesk-Webhook-Signature": hmac_sha256_b64(self.settings.webhook_secret or "", (stamp + body).encode()),
            "X-Zendesk-Webhook-Signature-Timestamp": stamp,
        }

    # ----- HTTP plumbing -------------------------------------------------------------
    def _auth(self, request: Request) -> int | None:
        header = request.headers.get("authorization", "")
        if not header.lower().startswith("basic "):
            return None
        try:
            login, _, secret = base64.b64decode(header[6:]).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return None
        email, _, kind = login.partition("/")
        known = self.tokens.get(email)
        if kind != "token" or not known or not secrets_module.compare_digest(known[1], secret):
            return None
        return known[0]

    def _endpoint(self, handler):
        async def endpoint(request: Request) -> Response:
            actor = self._auth(request)
            if actor is None:
                return JSONResponse({"error": "Couldn't authenticate you"}, status_code=401)
            try:
                payload = json.loads(await request.body() or b"{}") if request.method in ("POST", "PUT") else {}
            except ValueError:
                return _error(400, "InvalidJSON", "The request body is not valid JSON")
            try:
                with self.lock:
                    return handler(request, actor, payload)
            except _Invalid as exc:
                return exc.response
        return endpoint

    def _page(self, request: Request, items: list, key: str, **extra: Any) -> JSONResponse:
        """Zendesk cursor pagination: page[size], page[after]; meta.has_more and links.next."""
        size = max(1, min(100, int(request.query_params.get("page[size]") or 100)))
        after = request.query_params.get("page[after]")
        start = int(base64.urlsafe_b64decode(after.encode()).decode()) if after else 0
        chunk = items[start:start + size]
        has_more = start + size < len(items)
        cursor = base64.urlsafe_b64encode(str(start + size).encode()).decode()
        before = base64.urlsafe_b64encode(str(max(0, start - size)).encode()).decode()
        base = f"{self.base_url}{request.url.path}?page%5Bsize%5D={size}"
        return JSONResponse({key: chunk, "meta": {"has_more": has_more, "after_cursor": cursor, "before_cursor": before},
                             "links": {"next": f"{base}&page%5Bafter%5D={cursor}" if has_more else None,
                                       "prev": f"{base}&page%5Bbefore%5D={before}"}} | extra)

    def _out(self, ticket: dict) -> dict:
        """A ticket as the API shows it (its url names wherever this emulator is served)."""
        return {"url": f"{self.base_url}/api/v2/tickets/{ticket['id']}.json", **ticket}

    def _ticket_or_404(self, request: Request) -> dict:
        ticket = self.tickets.get(int(request.path_params["ticket_id"]))
        if ticket is None:
            raise _Invalid(_error(404, "RecordNotFound", "Not found"))
        return ticket

    def routes(self) -> list:
        r, e = Route, self._endpoint
        return [
            r("/api/v2/users/me.json", e(lambda q, a, p: JSONResponse({"user": self.users[a]})), methods=["GET"]),
            r("/api/v2/users/{user_id:int}.json", e(self._show_user), methods=["GET"]),
            r("/api/v2/users/{user_id:int}/groups.json", e(self._user_groups), methods=["GET"]),
            r("/api/v2/tickets.json", e(self._tickets_collection), methods=["GET", "POST"]),
            r("/api/v2/tickets/{ticket_id:int}.json", e(self._ticket), methods=["GET", "PUT"]),
            r("/api/v2/tickets/{ticket_id:int}/comments.json", e(
                lambda q, a, p: self._page(q, self.comments[self._ticket_or_404(q)["id"]], "comments")), methods=["GET"]),
            r("/api/v2/tickets/{ticket_id:int}/audits.json", e(
                lambda q, a, p: self._page(q, self.audits[self._ticket_or_404(q)["id"]], "audits")), methods=["GET"]),
            r("/api/v2/search.json", e(self._search), methods=["GET"]),
            r("/api/v2/ticket_fields.json", e(lambda q, a, p: JSONResponse(
                {"ticket_fields": self.ticket_fields(), "next_page": None, "previous_page": None, "count": 4})), methods=["GET"]),
            r("/api/v2/groups.json", e(lambda q, a, p: self._page(
                q, [self._group_out(g) for g in self.group_records], "groups")), methods=["GET"]),
            r("/api/v2/webhooks", e(self._webhooks_collection), methods=["GET", "POST"]),
            r("/api/v2/webhooks/{webhook_id}", e(self._show_webhook), methods=["GET"]),
            r("/api/v2/webhooks/{webhook_id}/signing_secret", e(self._signing_secret), methods=["GET"]),
            r("/api/v2/triggers.json", e(self._triggers_collection), methods=["GET", "POST"]),
            r("/api/v2/triggers/{trigger_id:int}.json", e(self._show_trigger), methods=["GET"]),
            r("/{path:path}", e(lambda q, a, p: _error(404, "InvalidEndpoint", "Not found")),
              methods=["GET", "POST", "PUT", "PATCH", "DELETE"]),
        ]

    # ----- REST handlers -------------------------------------------------------------
    def _show_user(self, request: Request, actor: int, payload: dict) -> Response:
        user = self.users.get(int(request.path_params["user_id"]))
        return JSONResponse({"user": user}) if user else _error(404, "RecordNotFound", "Not found")

    def _user_groups(self, request: Request, actor: int, payload: dict) -> Response:
        """The groups an agent is in (``groups[login]``); a name not yet known becomes a group."""
        user_id = int(request.path_params["user_id"])
        if user_id not in self.users:
            return _error(404, "RecordNotFound", "Not found")
        login = next((name for name, row in USERS.items() if row[0] == user_id), "")
        names = self.groups.get(login, []) if self.users[user_id]["role"] != "end-user" else []
        for name in names:
            if not any(g["name"] == name for g in self.group_records):
                self.group_records.append({"id": 360001 + len(self.group_records), "name": name, "is_public": True,
                                           "default": False, "deleted": False})
        found = [self._group_out(g) for g in self.group_records if g["name"] in names and not g["deleted"]]
        return self._page(request, found, "groups")

    def _group_out(self, group: dict) -> dict:
        return {"url": f"{self.base_url}/api/v2/groups/{group['id']}.json", **group, "description": "",
                "created_at": "2024-01-02T09:00:00Z", "updated_at": "2024-01-02T09:00:00Z"}

    def _tickets_collection(self, request: Request, actor: int, payload: dict) -> Response:
        if request.method == "GET":
            wanted = request.query_params.get("external_id")
            items = [self._out(t) for t in self.tickets.values() if wanted is None or t["external_id"] == wanted]
            return self._page(request, items, "tickets")
        if not isinstance(payload.get("ticket"), dict):
            return _invalid("ticket", "Ticket: is required", "BlankValue")
        ticket, audit = self._create(payload["ticket"], actor=actor)
        shown = self._out(ticket)
        return JSONResponse({"ticket": shown, "audit": audit}, status_code=201, headers={"Location": shown["url"]})

    def _ticket(self, request: Request, actor: int, payload: dict) -> Response:
        ticket = self._ticket_or_404(request)
        if request.method == "GET":
            return JSONResponse({"ticket": self._out(ticket)})
        data = dict(payload.get("ticket") or {})
        comment = data.pop("comment", None)
        comment = {"body": comment} if isinstance(comment, str) else comment
        audit = self._apply(ticket, data, comment, actor=actor)
        return JSONResponse({"ticket": self._out(ticket), "audit": audit})

    def _search(self, request: Request, actor: int, payload: dict) -> Response:
        """Enough of Zendesk's search syntax for ``type:ticket tags:x external_id:y`` queries."""
        terms = [t.strip('"') for t in request.query_params.get("query", "").split()]
        results = []
        for ticket in self.tickets.values():
            ok = True
            for term in terms:
                key, sep, value = term.partition(":")
                if not sep:
                    text = f"{ticket['subject']} {ticket['description']}".lower()
                    ok = ok and key.lower() in text
                elif key == "type":
                    ok = ok and value == "ticket"
                elif key in ("tags", "tag"):
                    ok = ok and value.lower() in ticket["tags"]
                elif key in ("external_id", "status", "priority"):
                    ok = ok and str(ticket.get(key) or "") == value
            if ok:
                results.append(self._out(ticket) | {"result_type": "ticket"})
        return JSONResponse({"results": results, "facets": None, "next_page": None, "previous_page": None,
                             "count": len(results)})

    def _webhooks_collection(self, request: Request, actor: int, payload: dict) -> Response:
        if request.method == "GET":
            contains = (request.query_params.get("filter[name_contains]") or "").lower()
            items = [w for w in self.webhook_objects.values() if contains in w["name"].lower()]
            return self._page(request, items, "webhooks")
        hook = dict(payload.get("webhook") or {})
        missing = [k for k in ("name", "endpoint", "http_method", "request_format", "subscriptions") if not hook.get(k)]
        if missing:
            return JSONResponse({"errors": [{"code": "InvalidInput", "title": "Invalid input",
                                             "detail": f"{missing[0]} is required", "source": {"pointer": f"/webhook/{missing[0]}"}}]},
                                status_code=400)
        auth = hook.get("authentication")
        if isinstance(auth, dict) and isinstance(auth.get("data"), dict):
            auth["data"] = {k: v for k, v in auth["data"].items() if k not in ("password", "token")}
        hook.update(id=f"01HITL{self._id():020d}", status=hook.get("status", "active"),
                    created_at=_now(), created_by=str(actor))
        self.webhook_objects[hook["id"]] = hook
        return JSONResponse({"webhook": hook}, status_code=201)

    def _show_webhook(self, request: Request, actor: int, payload: dict) -> Response:
        hook = self.webhook_objects.get(request.path_params["webhook_id"])
        if hook is None:
            return JSONResponse({"errors": [{"code": "WebhookNotFound", "title": "Webhook not found"}]}, status_code=404)
        return JSONResponse({"webhook": hook})

    def _signing_secret(self, request: Request, actor: int, payload: dict) -> Response:
        if request.path_params["webhook_id"] not in self.webhook_objects:
            return JSONResponse({"errors": [{"code": "WebhookNotFound", "title": "Webhook not found"}]}, status_code=404)
        return JSONResponse({"signing_secret": {"secret": self.settings.webhook_secret, "algorithm": "SHA256"}})

    def _triggers_collection(self, request: Request, actor: int, payload: dict) -> Response:
        if request.method == "GET":
            return self._page(request, list(self.triggers.values()), "triggers")
        data = dict(payload.get("trigger") or {})
        if not data.get("title"):
            return _invalid("title", "Title: cannot be blank", "BlankValue")
        if not data.get("actions"):
            return _invalid("actions", "Actions: cannot be blank", "BlankValue")
        conditions = data.get("conditions") or {"all": data.pop("all", []), "any": data.pop("any", [])}
        trigger_id = self._id()
        trigger = {"url": f"{self.base_url}/api/v2/triggers/{trigger_id}.json", "id": trigger_id,
                   "title": data["title"], "raw_title": data["title"], "active": data.get("active", True),
                   "default": False, "actions": data["actions"], "conditions": conditions,
                   "description": data.get("description"), "position": len(self.triggers) + 1,
                   "category_id": "360000301", "created_at": _now(), "updated_at": _now()}
        self.triggers[trigger_id] = trigger
        return JSONResponse({"trigger": trigger}, status_code=201)

    def _show_trigger(self, request: Request, actor: int, payload: dict) -> Response:
        trigger = self.triggers.get(int(request.path_params["trigger_id"]))
        return JSONResponse({"trigger": trigger}) if trigger else _error(404, "RecordNotFound", "Not found")

    def ticket_fields(self) -> list[dict[str, Any]]:
        def field(fid, ftype, title, options=None, system=False):
            data = {"url": f"{self.base_url}/api/v2/ticket_fields/{fid}.json", "id": fid, "type": ftype,
                    "title": title, "raw_title": title, "active": True, "required": False, "removable": not system,
                    "description": "", "position": fid % 100, "tag": None}
            if options is not None:
                data["custom_field_options"] = [{"id": fid * 10 + i, "name": n, "raw_name": n, "value": v, "default": False}
                                                for i, (n, v) in enumerate(options)]
            return data

        return [
            field(360000001, "subject", "Subject", system=True),
            field(360000002, "status", "Status", system=True),
            field(DECISION_FIELD_ID, "tagger", "AI review decision", [
                ("Approve", "ai_decision_approve"), ("Reject", "ai_decision_reject"),
                ("Respond", "ai_decision_respond"), ("Edit", "ai_decision_edit")]),
            field(EDITED_REPLY_FIELD_ID, "textarea", "AI edited reply"),
        ]

    def open_customer_ticket(self, subject: str, body: str, *, login: str = "carol") -> str:
        """A customer writes in (web form): a new ticket, without a webhook (the trigger
        ``setup zendesk`` creates fires on updates only). Returns its id."""
        with self.lock:
            quiet, self._quiet = getattr(self, "_quiet", False), True
            try:
                ticket, _ = self._create({"subject": subject, "comment": {"body": body}, "priority": "normal",
                                          "tags": ["customer"], "group_id": 360001}, actor=USERS[login][0], via="web")
            finally:
                self._quiet = quiet
            return str(ticket["id"])

    # ----- uniform hooks -------------------------------------------------------------
    def list_tickets(self) -> list[dict[str, Any]]:
        with self.lock:
            return [self._uniform(t) for t in self.tickets.values()]

    def _uniform(self, ticket: dict) -> dict[str, Any]:
        fields = {"status": ticket["status"], "tags": list(ticket["tags"]), "priority": ticket["priority"],
                  "external_id": ticket["external_id"], "group_id": ticket["group_id"],
                  "requester": self.users[ticket["requester_id"]]["name"]}
        fields |= {f"custom_fields.{f['id']}": f["value"] for f in ticket["custom_fields"]}
        return {
            "key": str(ticket["id"]), "display": f"#{ticket['id']}", "url": f"{self.base_url}/agent/tickets/{ticket['id']}",
            "title": ticket["subject"] or "", "status": ticket["status"], "description": ticket["description"],
            "comments": [{"author": self.users[c["author_id"]]["name"], "body": c["body"], "public": c["public"],
                          "created": c["created_at"]} for c in self.comments[ticket["id"]]],
            "fields": fields,
        }

    def act(self, act: Act) -> dict[str, Any]:
        with self.lock:
            ticket = self.tickets.get(int(act.key)) if act.key.isdecimal() else None
            if ticket is None:
                raise KeyError(act.key)
            login = "carol" if act.action == "customer_reply" else (act.user or "alice")
            if login not in USERS:
                raise ValueError(f"unknown user {login!r}")
            actor = USERS[login][0]
            data: dict[str, Any] = {}
            body = act.body
            if act.action == "edit":
                body, decision = f"/edit {act.body or ''}".strip(), "approve"
            else:
                decision = act.action if act.action in DECISION_TAGS else None
            if decision:
                data["additional_tags"] = [DECISION_TAGS[decision]]
                data["remove_tags"] = [t for t in DECISION_TAGS.values() if t != DECISION_TAGS[decision]]
            if act.action == "set_field":
                if not act.field:
                    raise ValueError("set_field needs a field")
                if act.field.startswith("custom_fields."):
                    data["custom_fields"] = [{"id": int(act.field.split(".", 1)[1]), "value": act.value}]
                else:
                    data[act.field] = act.value
            comment = None
            if body:
                public = act.action == "customer_reply" or not act.internal
                comment = {"body": body, "public": public, "author_id": actor}
                if act.action == "customer_reply" and ticket["status"] in ("pending", "solved"):
                    data["status"] = "open"
            try:
                self._apply(ticket, data, comment, actor=actor)
            except _Invalid as exc:
                raise ValueError(exc.response.body.decode()) from exc
            return self._uniform(ticket)

    def connection(self, *, base_url: str, ca_bundle: str | None) -> dict[str, Any]:
        _, _, email, _, token = USERS["bridge"]
        return {"type": "zendesk", "base_url": base_url, "email": email, "api_token": token,
                "ca_bundle": ca_bundle, "webhook_secrets": [self.settings.webhook_secret]}

    def contract_fields(self) -> dict[str, Any]:
        return {"subject": "[AI review] contract ticket", "comment": {"body": "Opened by the contract suite.", "public": False},
                "tags": ["ai_review"], "priority": "normal"}

    def missing_key(self) -> str:
        return "99999999"

    def bad_credentials(self) -> dict[str, Any]:
        return {"email": "bridge@example.com", "api_token": "wrong-token-for-the-bridge"}

    def contract_close_status(self) -> str:
        return "solved"

    def delivered(self, response) -> bool:
        """Zendesk retries a webhook only on 409, 429 and 5xx; any other answer is final
        (a 404 for a ticket the receiver does not know is not sent again)."""
        return response.status_code not in (409, 429)

    def error_response(self, status: int, message: str, *, retry_after: int | str | None = None) -> Response:
        headers = {"Retry-After": str(retry_after)} if retry_after is not None else {}
        if status == 429:
            return JSONResponse({"error": "APIRateLimitExceeded", "description": message}, status_code=429, headers=headers)
        return JSONResponse({"error": "ServerError" if status >= 500 else "Error", "description": message},
                            status_code=status, headers=headers)


__all__ = ["ZendeskEmulator", "DECISION_FIELD_ID", "EDITED_REPLY_FIELD_ID", "USERS"]
