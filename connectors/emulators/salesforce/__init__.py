"""Salesforce Service Cloud emulator: SOAP login, OAuth (client credentials and the JWT bearer
flow, in ``login``), the REST sObject/query subset, and notifications (a signed Flow callout
by default, or SOAP Outbound Messages resent until acked).

``simple-salesforce`` builds ``https://`` URLs itself, so this emulator serves TLS (``tls``).
Sessions can be expired (``expire_sessions()``) to exercise the client's re-login; a daily
API limit (``api_limit``) answers 403 REQUEST_LIMIT_EXCEEDED like a real org. The org has
queues, public groups and permission sets (``groups_of`` reads them) and stores the
EmailMessages posted on Cases.
"""

from __future__ import annotations

import json
from typing import Any, Literal

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ..base import Act, Emulator
from .login import LoginRoutes, connected_app_key
from .notify import Notifications
from .schema import CLOSED, ORG_ID, PARENT_TYPES, SCHEMA, STATUSES, sf_id
from .schema import now as _now

__all__ = ["ORG_ID", "SCHEMA", "STATUSES", "SalesforceEmulator", "SfError", "sf_id"]

_LOGIN_PATHS = ("/services/Soap/u/", "/services/oauth2/token")
_ERROR_CODES = {400: "MALFORMED_QUERY", 401: "INVALID_SESSION_ID", 403: "REQUEST_LIMIT_EXCEEDED",
                404: "NOT_FOUND", 429: "REQUEST_LIMIT_EXCEEDED", 500: "UNKNOWN_EXCEPTION", 503: "SERVER_UNAVAILABLE"}


def _errors(status: int, code: str, message: str, fields: list[str] | None = None, **headers: str) -> JSONResponse:
    body: dict[str, Any] = {"message": message, "errorCode": code}
    if fields is not None:
        body["fields"] = fields
    return JSONResponse([body], status_code=status, headers=headers or None)


class SfError(Exception):
    def __init__(self, status: int, code: str, message: str, fields: list[str] | None = None):
        super().__init__(message)
        self.response = _errors(status, code, message, fields)


class SalesforceEmulator(LoginRoutes, Notifications, Emulator):
    write_delay_exempt = _LOGIN_PATHS  # a login is not a ticket write
    vendor = "salesforce"
    tls = True

    def __init__(self, *, notify: Literal["flow", "outbound_message"] = "flow", **settings: Any):
        self.notify = notify
        """How changes are announced: "flow" (a signed JSON callout, the default because it
        is the only authenticated kind) or "outbound_message" (SOAP, resent until acked)."""
        self.api_limit = 100_000
        self.clock_offset_seconds = 0.0
        """How far this org's clock is ahead of the bridge's (JWT assertions expire sooner)."""
        super().__init__(**settings)

    # ----- state -------------------------------------------------------------
    def reset(self) -> None:
        self.records: dict[str, dict[str, dict[str, Any]]] = {name: {} for name in SCHEMA}
        self.sessions: dict[str, str] = {}
        self.api_used = 0
        self._counter = 0
        self._case_number = 1000
        self._notification = 0
        self.users: dict[str, dict[str, Any]] = {}
        people = [("bridge", "HITL Bridge Integration", "hitl-bridge@example.com", "Standard"),
                  ("alice", "Alice Reviewer", "alice@example.com", "Standard"),
                  ("bob", "Bob Approver", "bob@example.com", "Standard"),
                  ("carol", "Carol Customer", "carol@example.com", "PowerCustomerSuccess")]
        for short, name, email, kind in people:
            user_id = self._new_id("User")
            self.records["User"][user_id] = {"Id": user_id, "Username": f"{short}@hitl.example", "Name": name,
                                             "Email": email, "IsActive": True, "UserType": kind, "ContactId": None, "UserRoleId": None}
            self.users[short] = {"id": user_id, "password": f"{short}-password", "token": f"{short}TOKEN"}
        private_pem, public_pem = connected_app_key()
        # The connected app: a consumer secret (client credentials, run as the bridge user) and
        # an uploaded certificate (JWT bearer; the bridge holds the private key) with the users
        # that are pre-authorized for it.
        self.connected_app = {"key": "3MVG9hitlBridgeConsumerKey", "secret": "hitl-consumer-secret", "user": "bridge",
                              "jwt_public_key": public_pem, "jwt_private_key": private_pem, "jwt_users": {"bridge"}}
        self._seed_groups()
        carol = self.user_id("carol")
        contact = self._insert("Contact", {"FirstName": "Carol", "LastName": "Customer", "Name": "Carol Customer",
                                           "Email": "carol@example.com"}, carol)
        self.records["User"][carol]["ContactId"] = contact
        seeds = [("Espresso machine arrived damaged",
                  "The espresso machine from order A-100 arrived with a cracked water tank. I'd like a refund.", "High"),
                 ("Where is my refund for order B-200?",
                  "I returned the grinder two weeks ago and have not been refunded yet.", "Medium")]
        for subject, description, priority in seeds:
            case_id = self._insert("Case", {"Subject": subject, "Description": description, "Priority": priority,
                                            "Origin": "Email", "ContactId": contact, "SuppliedEmail": "carol@example.com",
                                            "SuppliedName": "Carol Customer"}, carol)
            self._insert("CaseComment", {"ParentId": case_id, "CommentBody": description, "IsPublished": True}, carol)

    def _seed_groups(self) -> None:
        """Bob is in the Refund Approvers queue; alice and bob in the Support Agents public
        group, which is itself a member of All Support. Alice holds the Support Manager role,
        below CEO; the Managers public group has CEO's role-and-subordinates group as its
        member, so alice is in it through the hierarchy. Everyone has their profile's
        permission set; nobody has HITL Refund Reviewer yet."""
        bridge = self.user_id("bridge")
        queue = self._insert("Group", {"Name": "Refund Approvers", "DeveloperName": "Refund_Approvers", "Type": "Queue"}, bridge)
        team = self._insert("Group", {"Name": "Support Agents", "DeveloperName": "Support_Agents", "Type": "Regular"}, bridge)
        everyone = self._insert("Group", {"Name": "All Support", "DeveloperName": "All_Support", "Type": "Regular"}, bridge)
        managers = self._insert("Group", {"Name": "Managers", "DeveloperName": "Managers", "Type": "Regular"}, bridge)
        ceo = self._insert("UserRole", {"Name": "CEO", "DeveloperName": "CEO"}, bridge)
        manager = self._insert("UserRole", {"Name": "Support Manager", "DeveloperName": "Support_Manager",
                                            "ParentRoleId": ceo}, bridge)
        role_groups = {}
        for role, name in ((ceo, "CEO"), (manager, "Support_Manager")):  # what Salesforce makes for every role
            for kind in ("Role", "RoleAndSubordinates", "RoleAndSubordinatesInternal"):
                role_groups[name, kind] = self._insert("Group", {"Name": name, "DeveloperName": name, "Type": kind,
                                                                 "RelatedId": role}, bridge)
        self.records["User"][self.user_id("alice")]["UserRoleId"] = manager
        members = [(queue, self.user_id("bob")), (team, self.user_id("alice")), (team, self.user_id("bob")),
                   (everyone, team), (managers, role_groups["CEO", "RoleAndSubordinates"])]
        for group, member in members:
            self._insert("GroupMember", {"GroupId": group, "UserOrGroupId": member}, bridge)
        self._insert("PermissionSet", {"Name": "HITL_Refund_Reviewer", "Label": "HITL Refund Reviewer",
                                       "IsOwnedByProfile": False}, bridge)
        profile = self._insert("PermissionSet", {"Name": "X00e5g000001StandardUser", "Label": "00e5g000001StandardUser",
                                                 "IsOwnedByProfile": True}, bridge)
        for short in self.users:
            self._insert("PermissionSetAssignment", {"AssigneeId": self.user_id(short), "PermissionSetId": profile}, bridge)

    def permission_set(self, name: str) -> str:
        return next(p["Id"] for p in self.records["PermissionSet"].values() if p["Name"] == name)

    def user_id(self, who: str) -> str:
        if who in self.users:
            return self.users[who]["id"]
        for user in self.records["User"].values():
            if who in (user["Id"], user["Email"], user["Username"]):
                return user["Id"]
        raise ValueError(f"no user {who!r}")

    def expire_sessions(self) -> None:
        """Every session id stops working, as after a timeout or a password reset."""
        with self.lock:
            self.sessions.clear()

    def _new_id(self, sobject: str) -> str:
        self._counter += 1
        return sf_id(SCHEMA[sobject]["prefix"], self._counter)

    def _insert(self, sobject: str, values: dict[str, Any], user_id: str) -> str:
        record_id, stamp = self._new_id(sobject), _now()
        record = {name: None for name in SCHEMA[sobject]["fields"]} | values
        record.update(Id=record_id, CreatedDate=stamp, CreatedById=user_id, LastModifiedDate=stamp,
                      LastModifiedById=user_id, SystemModstamp=stamp, IsDeleted=False)
        if sobject == "Case":
            self._case_number += 1
            record.update(CaseNumber=f"{self._case_number:08d}", OwnerId=record.get("OwnerId") or user_id)
            record["Status"] = record.get("Status") or "New"
            record["IsEscalated"] = bool(record.get("IsEscalated"))
            self._closed(record)
        if sobject == "CaseComment":
            record["IsPublished"] = bool(record.get("IsPublished"))
        if sobject == "EmailMessage":
            record["Incoming"] = bool(record.get("Incoming"))
            record["IsExternallyVisible"] = record.get("IsExternallyVisible") is not False
        self.records[sobject][record_id] = record
        return record_id

    @staticmethod
    def _closed(record: dict[str, Any]) -> None:
        record["IsClosed"] = record["Status"] in CLOSED
        record["ClosedDate"] = (record.get("ClosedDate") or _now()) if record["IsClosed"] else None

    def _find(self, record_id: str) -> tuple[str, dict[str, Any]] | None:
        for sobject, table in self.records.items():
            for key, record in table.items():
                if key[:15] == record_id[:15] and len(record_id) in (15, 18):
                    return sobject, record
        return None

    # ----- writes (REST and act() share them, and both notify) ---------------
    def _validate(self, sobject: str, data: Any, *, creating: bool, record_id: str | None = None) -> dict[str, Any]:
        if not isinstance(data, dict):
            raise SfError(400, "JSON_PARSER_ERROR", "The request body must be a JSON object")
        fields = SCHEMA[sobject]["fields"]
        if "Id" in data and creating:
            raise SfError(400, "INVALID_FIELD", "The Id field should not be specified in the sobject data.")
        for name, value in data.items():
            if name == "attributes" or (name == "Id" and value == record_id):
                continue
            spec = fields.get(name)
            if spec is None:
                raise SfError(400, "INVALID_FIELD", f"No such column '{name}' on sobject of type {sobject}")
            if not spec["createable" if creating else "updateable"]:
                raise SfError(400, "INVALID_FIELD_FOR_INSERT_UPDATE",
                              f"Unable to create/update fields: {name}. Please check the security settings of this "
                              "field and verify that it is read/write for your profile or permission set.", [name])
            if spec["length"] and isinstance(value, str) and len(value) > spec["length"]:
                raise SfError(400, "STRING_TOO_LONG", f"{name}: data value too large: {value[:20]}... "
                              f"(max length={spec['length']})", [name])
            if spec["restricted"] and value not in spec["values"]:
                raise SfError(400, "INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST",
                              f"{name}: bad value for restricted picklist field: {value}", [name])
            if spec["type"] == "reference" and value and self._find(str(value)) is None:
                raise SfError(400, "FIELD_INTEGRITY_EXCEPTION", f"{name}: id value of incorrect type: {value}", [name])
            if spec["unique"] and value and any(r.get(name) == value for r in self.records[sobject].values()
                                                if r["Id"] != record_id):
                other = next(r["Id"] for r in self.records[sobject].values() if r.get(name) == value)
                raise SfError(400, "DUPLICATE_VALUE", f"duplicate value found: {name} duplicates value on record "
                              f"with id: {other}", [name])
        missing = [n for n, s in fields.items() if creating and s["required"] and not data.get(n)]
        if missing:
            raise SfError(400, "REQUIRED_FIELD_MISSING", f"Required fields are missing: [{', '.join(missing)}]", missing)
        parent_field = next((n for n in ("ParentId", "GroupId", "PermissionSetId") if n in fields), None)
        if creating and sobject in PARENT_TYPES and data.get(parent_field) \
                and self._find(str(data[parent_field]))[0] != PARENT_TYPES[sobject]:
            raise SfError(400, "FIELD_INTEGRITY_EXCEPTION", f"{parent_field}: id value of incorrect type", [parent_field])
        return {k: v for k, v in data.items() if k not in ("attributes", "Id")}

    def create(self, sobject: str, data: Any, user_id: str) -> str:
        values = self._validate(sobject, data, creating=True)
        record_id = self._insert(sobject, values, user_id)
        self._announce(sobject, self.records[sobject][record_id], "created")
        return record_id

    def update(self, sobject: str, record: dict[str, Any], data: Any, user_id: str) -> None:
        values = self._validate(sobject, data, creating=False, record_id=record["Id"])
        values.pop("Id", None)
        status_before = record.get("Status")
        stamp = _now()
        record.update(values, LastModifiedDate=stamp, LastModifiedById=user_id, SystemModstamp=stamp)
        if sobject == "Case":
            self._closed(record)
        changed = "status_changed" if record.get("Status") != status_before else "updated"
        self._announce(sobject, record, changed)

    # ----- HTTP ------------------------------------------------------------------
    def routes(self) -> list:
        return [
            Route("/services/Soap/u/{version}", self._soap_login, methods=["POST"]),
            Route("/services/oauth2/token", self._oauth_token, methods=["POST"]),
            Route("/services/oauth2/userinfo", self._userinfo, methods=["GET", "POST"]),
            Route("/services/data/{version}/{rest:path}", self._data, methods=["GET", "POST", "PATCH", "DELETE"]),
            Route("/_emulator/salesforce", self._control, methods=["GET", "POST"]),
        ]

    def error_response(self, status: int, message: str, *, retry_after: int | str | None = None) -> Response:
        headers = {"Retry-After": str(retry_after)} if retry_after is not None else {}
        return _errors(status, _ERROR_CODES.get(status, "UNKNOWN_EXCEPTION"), message, **headers)

    async def _data(self, request: Request) -> Response:
        body = await request.body()
        with self.lock:
            user_id = self._caller(request)
            if user_id is None:
                return _errors(401, "INVALID_SESSION_ID", "Session expired or invalid")
            if self.api_used >= self.api_limit:
                return _errors(403, "REQUEST_LIMIT_EXCEEDED", "TotalRequests Limit exceeded.")
            self.api_used += 1
            try:
                response = self._dispatch(request.method, request.path_params["rest"].strip("/").split("/"),
                                          request, body, user_id)
            except SfError as exc:
                response = exc.response
            response.headers["Sforce-Limit-Info"] = f"api-usage={self.api_used}/{self.api_limit}"
            return response

    def _dispatch(self, method: str, parts: list[str], request: Request, body: bytes, user_id: str) -> Response:
        from .soql import run_query  # noqa: PLC0415 - the query engine needs this module

        if parts[0] in ("query", "queryAll") and method == "GET":
            return JSONResponse(run_query(self, request.query_params.get("q", "")))
        if parts[0] != "sobjects" or len(parts) < 2 or parts[1] not in SCHEMA:
            raise SfError(404, "NOT_FOUND", "The requested resource does not exist")
        sobject, rest = parts[1], parts[2:]
        try:
            data = json.loads(body) if body else {}
        except ValueError:
            raise SfError(400, "JSON_PARSER_ERROR", "Unexpected character in the request body") from None
        if not rest and method == "POST":
            record_id = self.create(sobject, data, user_id)
            return JSONResponse({"id": record_id, "success": True, "errors": []}, status_code=201)
        if rest == ["describe"] and method == "GET":
            return JSONResponse(self.describe(sobject))
        if len(rest) == 2 and method == "GET":
            field, value = rest
            if not SCHEMA[sobject]["fields"].get(field, {}).get("unique"):
                raise SfError(404, "NOT_FOUND", f"Provided external ID field does not exist or is not accessible: {field}")
            found = [r for r in self.records[sobject].values() if r.get(field) == value]
            if not found:
                raise SfError(404, "NOT_FOUND", "The requested resource does not exist")
            return JSONResponse(self.render(sobject, found[0]))
        if len(rest) != 1:
            raise SfError(404, "NOT_FOUND", "The requested resource does not exist")
        hit = self._find(rest[0])
        if hit is None or hit[0] != sobject:
            raise SfError(404, "NOT_FOUND", "The requested resource does not exist")
        record = hit[1]
        if method == "GET":
            wanted = request.query_params.get("fields")
            return JSONResponse(self.render(sobject, record, wanted.split(",") if wanted else None))
        if method == "PATCH":
            self.update(sobject, record, data, user_id)
            return Response(status_code=204)
        if method == "DELETE":
            del self.records[sobject][record["Id"]]
            return Response(status_code=204)
        raise SfError(405, "METHOD_NOT_ALLOWED", f"HTTP Method '{method}' not allowed. Allowed are GET,PATCH,DELETE")

    def render(self, sobject: str, record: dict[str, Any], fields: list[str] | None = None) -> dict[str, Any]:
        url = f"/services/data/v59.0/sobjects/{sobject}/{record['Id']}"
        names = [f.strip() for f in fields] if fields else list(SCHEMA[sobject]["fields"])
        unknown = [n for n in names if n not in SCHEMA[sobject]["fields"]]
        if unknown:
            raise SfError(400, "INVALID_FIELD", f"No such column '{unknown[0]}' on sobject of type {sobject}")
        return {"attributes": {"type": sobject, "url": url}, **{n: record.get(n) for n in names}}

    def describe(self, sobject: str) -> dict[str, Any]:
        fields = []
        for name, spec in SCHEMA[sobject]["fields"].items():
            picks = [{"active": True, "defaultValue": v == "New", "label": v, "validFor": None, "value": v}
                     for v in spec["values"] or []]
            fields.append({"name": name, "label": name.replace("__c", "").replace("_", " "), "type": spec["type"],
                           "length": spec["length"] or 0, "createable": spec["createable"], "updateable": spec["updateable"],
                           "nillable": not spec["required"], "externalId": spec["unique"], "unique": spec["unique"],
                           "custom": name.endswith("__c"), "picklistValues": picks, "restrictedPicklist": spec["restricted"]})
        return {"name": sobject, "label": sobject, "keyPrefix": SCHEMA[sobject]["prefix"], "createable": True,
                "updateable": True, "queryable": True, "custom": False, "fields": fields}

    async def _control(self, request: Request) -> Response:
        """Vendor-specific controls: ``{"notify": "flow"|"outbound_message", "expire_sessions": true,
        "api_limit": N, "clock_offset_seconds": S}``."""
        if request.method == "POST":
            changes = json.loads(await request.body() or b"{}")
            if changes.get("notify") in ("flow", "outbound_message"):
                self.notify = changes["notify"]
            if changes.get("expire_sessions"):
                self.expire_sessions()
            if isinstance(changes.get("api_limit"), int):
                self.api_limit = changes["api_limit"]
            if isinstance(changes.get("clock_offset_seconds"), (int, float)):
                self.clock_offset_seconds = float(changes["clock_offset_seconds"])
        return JSONResponse({"notify": self.notify, "sessions": len(self.sessions), "api_used": self.api_used,
                             "api_limit": self.api_limit, "organization_id": ORG_ID,
                             "clock_offset_seconds": self.clock_offset_seconds})

    # ----- the uniform hooks ----------------------------------------------------
    def _case(self, key: str) -> dict[str, Any]:
        hit = self._find(key) if len(key) in (15, 18) else None
        if hit is None:
            hit = next((("Case", r) for r in self.records["Case"].values() if r["CaseNumber"] == key), None)
        if hit is None or hit[0] != "Case":
            raise KeyError(key)
        return hit[1]

    def _uniform(self, case: dict[str, Any]) -> dict[str, Any]:
        comments = sorted((c for c in self.records["CaseComment"].values() if c["ParentId"] == case["Id"]),
                          key=lambda c: c["CreatedDate"])
        return {"key": case["Id"], "display": f"Case {case['CaseNumber']}",
                "url": f"{self.base_url}/lightning/r/Case/{case['Id']}/view", "title": case["Subject"],
                "status": case["Status"], "description": case["Description"],
                "comments": [{"author": self.records["User"][c["CreatedById"]]["Name"], "body": c["CommentBody"],
                              "public": c["IsPublished"], "created": c["CreatedDate"]} for c in comments],
                "emails": [{"from": e["FromAddress"], "to": e["ToAddress"], "subject": e["Subject"], "body": e["TextBody"],
                            "incoming": e["Incoming"], "status": e["Status"], "created": e["CreatedDate"]}
                           for e in self.emails(case["Id"])],
                "fields": dict(case)}

    def emails(self, case_id: str) -> list[dict[str, Any]]:
        """The EmailMessages on a Case, oldest first."""
        return sorted((e for e in self.records["EmailMessage"].values() if e["ParentId"] == case_id),
                      key=lambda e: e["CreatedDate"])

    def list_tickets(self) -> list[dict[str, Any]]:
        return [self._uniform(c) for c in self.records["Case"].values()]

    def act(self, act: Act) -> dict[str, Any]:
        with self.lock:
            case = self._case(act.key)
            actor = self.user_id(act.user or ("carol" if act.action == "customer_reply" else "alice"))
            decision = {"approve": "Approved", "edit": "Approved", "reject": "Rejected", "respond": "Responded"}
            body = f"/edit {act.body or ''}".strip() if act.action == "edit" else act.body
            if act.action == "customer_reply":
                self.create("CaseComment", {"ParentId": case["Id"], "CommentBody": body or "", "IsPublished": True}, actor)
            elif body and act.action != "set_field":
                self.create("CaseComment", {"ParentId": case["Id"], "CommentBody": body,
                                            "IsPublished": not act.internal}, actor)
            if act.action in decision:
                self.update("Case", case, {"Status": decision[act.action]}, actor)
            elif act.action == "set_field":
                if not act.field:
                    raise ValueError("set_field needs a field")
                try:
                    self.update("Case", case, {act.field: act.value}, actor)
                except SfError as exc:
                    raise ValueError(exc.args[0]) from exc
            return self._uniform(case)

    def connection(self, *, base_url: str, ca_bundle: str | None) -> dict[str, Any]:
        bridge = self.users["bridge"]
        return {"type": "salesforce", "base_url": base_url, "username": "bridge@hitl.example",
                "password": bridge["password"], "security_token": bridge["token"], "organization_id": ORG_ID,
                "ca_bundle": ca_bundle, "webhook_secrets": [self.settings.webhook_secret]}

    def jwt_credentials(self) -> dict[str, Any]:
        """Connection overrides that log in with the JWT bearer flow instead of a password."""
        app = self.connected_app
        return {"password": None, "security_token": "", "username": "bridge@hitl.example",
                "consumer_key": app["key"], "private_key": app["jwt_private_key"]}

    def contract_fields(self) -> dict[str, Any]:
        return {"Subject": "Contract test review", "Description": "Created by the contract suite.",
                "Origin": "AI Agent", "Priority": "Medium"}

    def missing_key(self) -> str:
        return sf_id("500", 999_999)

    def bad_credentials(self) -> dict[str, Any]:
        return {"password": "not-the-bridge-password"}

    def contract_close_status(self) -> str:
        return "Closed"
