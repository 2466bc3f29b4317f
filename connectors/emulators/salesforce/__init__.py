"""Salesforce Service Cloud emulator: SOAP login, OAuth, the REST sObject/query subset, and
notifications (a signed Flow callout by default, or SOAP Outbound Messages resent until acked).

``simple-salesforce`` builds ``https://`` URLs itself, so this emulator serves TLS (``tls``).
Sessions can be expired (``expire_sessions()``) to exercise the client's re-login; a daily
API limit (``api_limit``) answers 403 REQUEST_LIMIT_EXCEEDED like a real org.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import secrets
import time
from datetime import datetime, timezone
from typing import Any, Literal
from urllib.parse import parse_qs
from xml.sax.saxutils import escape

import httpx2
from defusedxml.ElementTree import fromstring as safe_fromstring
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from ...signing import hmac_sha256_hex
from ..base import Act, Emulator

ORG_ID = "00D5g000004HITLEAY"
PARTNER_NS = "urn:partner.soap.sforce.com"
STATUSES = ["New", "Working", "Escalated", "Approved", "Rejected", "Responded", "Closed"]
CLOSED = {"Closed", "Approved", "Rejected"}
_LOGIN_PATHS = ("/services/Soap/u/", "/services/oauth2/token")
_ERROR_CODES = {400: "MALFORMED_QUERY", 401: "INVALID_SESSION_ID", 403: "REQUEST_LIMIT_EXCEEDED",
                404: "NOT_FOUND", 429: "REQUEST_LIMIT_EXCEEDED", 500: "UNKNOWN_EXCEPTION", 503: "SERVER_UNAVAILABLE"}


def _f(kind: str, *, create: bool = True, update: bool = True, length: int | None = None,
       required: bool = False, values: list[str] | None = None, restricted: bool = False,
       unique: bool = False) -> dict[str, Any]:
    return dict(type=kind, createable=create, updateable=update, length=length, required=required,
                values=values, restricted=restricted, unique=unique)


_RO = dict(create=False, update=False)
_AUDIT = {"CreatedDate": _f("datetime", **_RO), "CreatedById": _f("reference", **_RO),
          "LastModifiedDate": _f("datetime", **_RO), "LastModifiedById": _f("reference", **_RO),
          "SystemModstamp": _f("datetime", **_RO), "IsDeleted": _f("boolean", **_RO)}
SCHEMA: dict[str, dict[str, Any]] = {
    "Case": {"prefix": "500", "fields": {
        "Id": _f("id", **_RO), "CaseNumber": _f("string", **_RO), "Subject": _f("string", length=255),
        "Description": _f("textarea", length=32000), "Status": _f("picklist", values=STATUSES, restricted=True),
        "Priority": _f("picklist", values=["High", "Medium", "Low"]),
        "Origin": _f("picklist", values=["Phone", "Email", "Web", "AI Agent"]),
        "Type": _f("picklist", values=["Question", "Problem", "Feature Request"]),
        "Reason": _f("string", length=255), "ContactId": _f("reference"), "OwnerId": _f("reference"),
        "SuppliedEmail": _f("email", length=80), "SuppliedName": _f("string", length=80),
        "IsClosed": _f("boolean", **_RO), "IsEscalated": _f("boolean"), "ClosedDate": _f("datetime", **_RO),
        "HITL_Review_Id__c": _f("string", length=255, unique=True),
        "AI_Review_Decision__c": _f("picklist", values=["Approved", "Rejected", "Responded"]),
        "AI_Edited_Reply__c": _f("textarea", length=32768), **_AUDIT}},
    "CaseComment": {"prefix": "00a", "fields": {
        "Id": _f("id", **_RO), "ParentId": _f("reference", update=False, required=True),
        "CommentBody": _f("textarea", length=4000), "IsPublished": _f("boolean"), **_AUDIT}},
    "User": {"prefix": "005", "fields": {
        "Id": _f("id", **_RO), "Username": _f("string", **_RO), "Name": _f("string", **_RO),
        "Email": _f("email", **_RO), "IsActive": _f("boolean", **_RO), "UserType": _f("string", **_RO),
        "ContactId": _f("reference", **_RO)}},
    "Contact": {"prefix": "003", "fields": {
        "Id": _f("id", **_RO), "FirstName": _f("string"), "LastName": _f("string", required=True),
        "Name": _f("string", **_RO), "Email": _f("email"), **_AUDIT}},
}


def sf_id(prefix: str, number: int) -> str:
    """An 18-char Salesforce id: 15 case-sensitive chars plus the real case-checksum suffix."""
    base = f"{prefix}5g{number:010d}"
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZ012345"
    suffix = ""
    for chunk in range(3):
        bits = sum(1 << i for i, ch in enumerate(base[chunk * 5:chunk * 5 + 5]) if ch.isupper())
        suffix += alphabet[bits]
    return base + suffix


def _now() -> str:
    now = datetime.now(timezone.utc)
    return now.strftime("%Y-%m-%dT%H:%M:%S.") + f"{now.microsecond // 1000:03d}+0000"


def _errors(status: int, code: str, message: str, fields: list[str] | None = None, **headers: str) -> JSONResponse:
    body: dict[str, Any] = {"message": message, "errorCode": code}
    if fields is not None:
        body["fields"] = fields
    return JSONResponse([body], status_code=status, headers=headers or None)


class SfError(Exception):
    def __init__(self, status: int, code: str, message: str, fields: list[str] | None = None):
        super().__init__(message)
        self.response = _errors(status, code, message, fields)


def _soap_fault(code: str, message: str) -> Response:
    xml = ('<?xml version="1.0" encoding="UTF-8"?><soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/" '
           'xmlns:sf="urn:fault.partner.soap.sforce.com" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">'
           f"<soapenv:Body><soapenv:Fault><faultcode>{code}</faultcode><faultstring>{code}: {escape(message)}</faultstring>"
           f'<detail><sf:LoginFault xsi:type="sf:LoginFault"><sf:exceptionCode>{code}</sf:exceptionCode>'
           f"<sf:exceptionMessage>{escape(message)}</sf:exceptionMessage></sf:LoginFault></detail>"
           "</soapenv:Fault></soapenv:Body></soapenv:Envelope>")
    return Response(xml, status_code=500, media_type="text/xml")


class SalesforceEmulator(Emulator):
    write_delay_exempt = _LOGIN_PATHS  # a login is not a ticket write
    vendor = "salesforce"
    tls = True

    def __init__(self, *, notify: Literal["flow", "outbound_message"] = "flow", **settings: Any):
        self.notify = notify
        """How changes are announced: "flow" (a signed JSON callout, the default because it
        is the only authenticated kind) or "outbound_message" (SOAP, resent until acked)."""
        self.api_limit = 100_000
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
                                             "Email": email, "IsActive": True, "UserType": kind, "ContactId": None}
            self.users[short] = {"id": user_id, "password": f"{short}-password", "token": f"{short}TOKEN"}
        self.connected_app = {"key": "3MVG9hitlBridgeConsumerKey", "secret": "hitl-consumer-secret", "user": "bridge"}
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
        if sobject == "CaseComment" and creating and self._find(str(data["ParentId"]))[0] != "Case":
            raise SfError(400, "FIELD_INTEGRITY_EXCEPTION", "Parent ID: id value of incorrect type", ["ParentId"])
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

    # ----- notifications -----------------------------------------------------
    def _announce(self, sobject: str, record: dict[str, Any], kind: str) -> None:
        if sobject not in ("Case", "CaseComment") or not self.settings.webhook_url:
            return
        if self.notify == "outbound_message":
            self.webhooks.send(self.outbound_message([(sobject, record)]), {"Content-Type": "text/xml; charset=utf-8",
                                                                              "SOAPAction": '""'})
            return
        case_id = record["ParentId"] if sobject == "CaseComment" else record["Id"]
        kind = "comment_added" if sobject == "CaseComment" else kind
        self._notification += 1
        body = json.dumps({"record_id": case_id, "object": "Case", "event_id": f"evt-{self._notification:06d}-"
                           f"{secrets.token_hex(4)}", "timestamp": _now(), "kind": kind}).encode()
        stamp = str(int(time.time()))
        signature = hmac_sha256_hex(self.settings.webhook_secret or "", stamp.encode() + b"." + body)
        self.webhooks.send(body, {"Content-Type": "application/json", "X-Hitl-Timestamp": stamp,
                                  "X-Hitl-Signature": signature})

    def outbound_message(self, items: list[tuple[str, dict[str, Any]]]) -> str:
        """A SOAP ``notifications`` envelope as Salesforce's Outbound Message action sends it."""
        shown = {"Case": ["Id", "CaseNumber", "Status", "LastModifiedById", "LastModifiedDate", "HITL_Review_Id__c"],
                 "CaseComment": ["Id", "ParentId", "IsPublished", "CreatedById", "CreatedDate"]}
        notes = []
        for sobject, record in items:
            self._notification += 1
            values = "".join(f"<sf:{name}>{escape(str(record[name]).lower() if isinstance(record[name], bool) else str(record[name]))}"
                             f"</sf:{name}>" for name in shown[sobject] if record.get(name) is not None)
            notes.append(f"<Notification><Id>{sf_id('04l', self._notification)}</Id>"
                         f'<sObject xsi:type="sf:{sobject}" xmlns:sf="urn:sobject.enterprise.soap.sforce.com">'
                         f"{values}</sObject></Notification>")
        api = f"{self.base_url}/services/Soap"
        return ('<?xml version="1.0" encoding="UTF-8"?>\n<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/" '
                'xmlns:xsd="http://www.w3.org/2001/XMLSchema" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">'
                '<soapenv:Body><notifications xmlns="http://soap.sforce.com/2005/09/outbound">'
                f"<OrganizationId>{ORG_ID}</OrganizationId><ActionId>{sf_id('04k', 1)}</ActionId>"
                f'<SessionId xsi:nil="true"/><EnterpriseUrl>{api}/c/59.0/{ORG_ID[:15]}</EnterpriseUrl>'
                f"<PartnerUrl>{api}/u/59.0/{ORG_ID[:15]}</PartnerUrl>{''.join(notes)}"
                "</notifications></soapenv:Body></soapenv:Envelope>")

    def delivered(self, response: httpx2.Response) -> bool:
        """Outbound Messages count only when answered with ``<Ack>true</Ack>``. A Flow/Apex
        callout is not resent after a 4xx (e.g. 404 for a Case the bridge did not create),
        as in a real org; only a 5xx or no answer is tried again."""
        if "xml" not in response.request.headers.get("content-type", ""):
            return response.status_code < 500
        if not 200 <= response.status_code < 300:
            return False
        return re.search(r"<(\w+:)?Ack>\s*true\s*</(\w+:)?Ack>", response.text) is not None

    # ----- HTTP ------------------------------------------------------------------
    def routes(self) -> list:
        return [
            Route("/services/Soap/u/{version}", self._soap_login, methods=["POST"]),
            Route("/services/oauth2/token", self._oauth_token, methods=["POST"]),
            Route("/services/oauth2/userinfo", self._userinfo, methods=["GET", "POST"]),
            Route("/services/data/{version}/{rest:path}", self._data, methods=["GET", "POST", "PATCH", "DELETE"]),
            Route("/_emulator/salesforce", self._control, methods=["GET", "POST"]),
        ]

    def error_response(self, status: int, message: str, *, retry_after: int | None = None) -> Response:
        headers = {"Retry-After": str(retry_after)} if retry_after is not None else {}
        return _errors(status, _ERROR_CODES.get(status, "UNKNOWN_EXCEPTION"), message, **headers)

    def _session_for(self, user_short: str) -> str:
        session = f"{ORG_ID[:15]}!{secrets.token_urlsafe(40)}"
        self.sessions[session] = self.user_id(user_short)
        return session

    async def _soap_login(self, request: Request) -> Response:
        try:
            root = safe_fromstring(await request.body(), forbid_dtd=True)
            username = root.findtext(f".//{{{PARTNER_NS}}}username") or ""
            password = root.findtext(f".//{{{PARTNER_NS}}}password") or ""
        except Exception:  # noqa: BLE001 - any unreadable envelope is a client fault
            return _soap_fault("INVALID_LOGIN", "Invalid username, password, security token; or user locked out.")
        with self.lock:
            short = next((s for s, u in self.users.items() if self.records["User"][u["id"]]["Username"] == username), None)
            if short is None or password != self.users[short]["password"] + self.users[short]["token"]:
                return _soap_fault("INVALID_LOGIN", "Invalid username, password, security token; or user locked out.")
            session, user = self._session_for(short), self.records["User"][self.users[short]["id"]]
        version = request.path_params["version"]
        server = f"https://{request.headers['host']}/services/Soap/u/{version}/{ORG_ID[:15]}"
        xml = ('<?xml version="1.0" encoding="UTF-8"?><soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/" '
               f'xmlns="{PARTNER_NS}" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"><soapenv:Body><loginResponse><result>'
               f"<metadataServerUrl>{server.replace('/u/', '/m/')}</metadataServerUrl><passwordExpired>false</passwordExpired>"
               f"<sandbox>false</sandbox><serverUrl>{server}</serverUrl><sessionId>{session}</sessionId>"
               f"<userId>{user['Id']}</userId><userInfo><organizationId>{ORG_ID}</organizationId>"
               f"<organizationName>HITL Emulator Org</organizationName><sessionSecondsValid>7200</sessionSecondsValid>"
               f"<userEmail>{user['Email']}</userEmail><userFullName>{escape(user['Name'])}</userFullName>"
               f"<userId>{user['Id']}</userId><userName>{user['Username']}</userName><userType>Standard</userType>"
               "</userInfo></result></loginResponse></soapenv:Body></soapenv:Envelope>")
        return Response(xml, media_type="text/xml")

    async def _oauth_token(self, request: Request) -> Response:
        form = {k: v[-1] for k, v in parse_qs((await request.body()).decode(errors="replace")).items()}
        key, secret = form.get("client_id"), form.get("client_secret")
        auth = request.headers.get("authorization", "")
        if auth.lower().startswith("basic "):
            key, _, secret = base64.b64decode(auth[6:]).decode(errors="replace").partition(":")
        if form.get("grant_type") != "client_credentials":
            return JSONResponse({"error": "unsupported_grant_type", "error_description": "grant type not supported"}, 400)
        if key != self.connected_app["key"] or secret != self.connected_app["secret"]:
            return JSONResponse({"error": "invalid_client", "error_description": "invalid client credentials"}, 400)
        with self.lock:
            session, user_id = self._session_for(self.connected_app["user"]), self.user_id(self.connected_app["user"])
        base = f"https://{request.headers['host']}"
        return JSONResponse({"access_token": session, "signature": base64.b64encode(hashlib.sha256(session.encode()).digest()).decode(),
                             "scope": "api", "instance_url": base, "id": f"{base}/id/{ORG_ID}/{user_id}",
                             "token_type": "Bearer", "issued_at": str(int(time.time() * 1000))})

    def _caller(self, request: Request) -> str | None:
        auth = request.headers.get("authorization", "")
        return self.sessions.get(auth[7:]) if auth.startswith("Bearer ") else None

    async def _userinfo(self, request: Request) -> Response:
        with self.lock:
            user_id = self._caller(request)
            if user_id is None:
                return PlainTextResponse("Bad_OAuth_Token", status_code=403)
            user = self.records["User"][user_id]
        first, _, last = user["Name"].partition(" ")
        return JSONResponse({"sub": f"{self.base_url}/id/{ORG_ID}/{user_id}", "user_id": user_id, "organization_id": ORG_ID,
                             "preferred_username": user["Username"], "nickname": user["Username"].split("@")[0],
                             "name": user["Name"], "email": user["Email"], "email_verified": True, "given_name": first,
                             "family_name": last, "user_type": "STANDARD", "active": True, "language": "en_US"})

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
        """Vendor-specific controls: ``{"notify": "flow"|"outbound_message", "expire_sessions": true}``."""
        if request.method == "POST":
            changes = json.loads(await request.body() or b"{}")
            if changes.get("notify") in ("flow", "outbound_message"):
                self.notify = changes["notify"]
            if changes.get("expire_sessions"):
                self.expire_sessions()
            if isinstance(changes.get("api_limit"), int):
                self.api_limit = changes["api_limit"]
        return JSONResponse({"notify": self.notify, "sessions": len(self.sessions), "api_used": self.api_used,
                             "api_limit": self.api_limit, "organization_id": ORG_ID})

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
                "fields": dict(case)}

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

    def contract_fields(self) -> dict[str, Any]:
        return {"Subject": "Contract test review", "Description": "Created by the contract suite.",
                "Origin": "AI Agent", "Priority": "Medium"}

    def missing_key(self) -> str:
        return sf_id("500", 999_999)

    def bad_credentials(self) -> dict[str, Any]:
        return {"password": "not-the-bridge-password"}

    def contract_close_status(self) -> str:
        return "Closed"
