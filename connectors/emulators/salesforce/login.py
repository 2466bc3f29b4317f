"""How clients log in to the emulated org: the SOAP ``login`` simple-salesforce sends, the
OAuth token endpoint (client credentials, and the JWT bearer flow verified for real against
the connected app's registered public key), and ``userinfo``.

Error answers are Salesforce's own: a SOAP ``LoginFault``, or ``{"error",
"error_description"}`` with HTTP 400 from the token endpoint.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
import time
from functools import lru_cache
from typing import Any
from urllib.parse import parse_qs
from xml.sax.saxutils import escape

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from defusedxml.ElementTree import fromstring as safe_fromstring
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response

from .schema import ORG_ID

PARTNER_NS = "urn:partner.soap.sforce.com"
JWT_GRANT = "urn:ietf:params:oauth:grant-type:jwt-bearer"


@lru_cache(maxsize=1)
def connected_app_key() -> tuple[str, str]:
    """(private PEM, public PEM) of the connected app's certificate, one per process: the
    admin would generate the pair and upload the certificate; the bridge keeps the key."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption()).decode()
    public = key.public_key().public_bytes(serialization.Encoding.PEM,
                                           serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    return private, public


def _soap_fault(code: str, message: str) -> Response:
    xml = ('<?xml version="1.0" encoding="UTF-8"?><soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/" '
           'xmlns:sf="urn:fault.partner.soap.sforce.com" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">'
           f"<soapenv:Body><soapenv:Fault><faultcode>{code}</faultcode><faultstring>{code}: {escape(message)}</faultstring>"
           f'<detail><sf:LoginFault xsi:type="sf:LoginFault"><sf:exceptionCode>{code}</sf:exceptionCode>'
           f"<sf:exceptionMessage>{escape(message)}</sf:exceptionMessage></sf:LoginFault></detail>"
           "</soapenv:Fault></soapenv:Body></soapenv:Envelope>")
    return Response(xml, status_code=500, media_type="text/xml")


def _oauth_error(error: str, description: str) -> JSONResponse:
    return JSONResponse({"error": error, "error_description": description}, 400)


class LoginRoutes:
    """Mixed into ``SalesforceEmulator``: uses its ``lock``, ``users``, ``records``,
    ``sessions``, ``connected_app``, ``clock_offset_seconds`` and ``base_url``."""

    lock: Any
    users: dict[str, dict[str, Any]]
    records: dict[str, dict[str, dict[str, Any]]]
    sessions: dict[str, str]
    connected_app: dict[str, Any]
    clock_offset_seconds: float
    base_url: str
    user_id: Any  # the emulator's method: a user's short name or id -> Id

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
            short = self._short_name(username)
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

    def _short_name(self, username: str) -> str | None:
        return next((s for s, u in self.users.items() if self.records["User"][u["id"]]["Username"] == username), None)

    async def _oauth_token(self, request: Request) -> Response:
        form = {k: v[-1] for k, v in parse_qs((await request.body()).decode(errors="replace")).items()}
        grant = form.get("grant_type")
        if grant == JWT_GRANT:
            return self._jwt_bearer(request, form.get("assertion") or "")
        if grant != "client_credentials":
            return _oauth_error("unsupported_grant_type", "grant type not supported")
        key, secret = form.get("client_id"), form.get("client_secret")
        auth = request.headers.get("authorization", "")
        if auth.lower().startswith("basic "):
            key, _, secret = base64.b64decode(auth[6:]).decode(errors="replace").partition(":")
        if key != self.connected_app["key"] or secret != self.connected_app["secret"]:
            return _oauth_error("invalid_client", "invalid client credentials")
        return self._token(request, self.connected_app["user"], signed=True)

    def _jwt_bearer(self, request: Request, assertion: str) -> Response:
        """Verify the assertion as Salesforce does: RS256 signature against the certificate
        uploaded to the connected app, iss = its consumer key, aud = this login host, exp not
        passed (by this org's clock), sub = a pre-authorized user."""
        app = self.connected_app
        try:
            claims = jwt.decode(assertion, app["jwt_public_key"], algorithms=["RS256"], audience=self.base_url,
                                options={"require": ["iss", "sub", "aud", "exp"], "verify_exp": False})
        except jwt.InvalidAudienceError:
            return _oauth_error("invalid_grant", "audience is invalid")
        except jwt.InvalidTokenError:  # bad signature, malformed, a claim missing
            return _oauth_error("invalid_grant", "invalid assertion")
        if claims["iss"] != app["key"]:
            return _oauth_error("invalid_client_id", "client identifier invalid")
        if not isinstance(claims["exp"], (int, float)) or claims["exp"] <= time.time() + self.clock_offset_seconds:
            return _oauth_error("invalid_grant", "expired authorization code")
        with self.lock:
            short = self._short_name(str(claims["sub"]))
        if short is None or short not in app["jwt_users"]:
            return _oauth_error("invalid_grant", "user hasn't approved this consumer")
        return self._token(request, short, signed=False)

    def _token(self, request: Request, short: str, *, signed: bool) -> JSONResponse:
        """The token endpoint's success answer (the JWT flow's carries no ``signature``)."""
        with self.lock:
            session, user_id = self._session_for(short), self.user_id(short)
        base = f"https://{request.headers['host']}"
        body = {"access_token": session, "scope": "api", "instance_url": base, "id": f"{base}/id/{ORG_ID}/{user_id}",
                "token_type": "Bearer", "issued_at": str(int(time.time() * 1000))}
        if signed:
            body["signature"] = base64.b64encode(hashlib.sha256(session.encode()).digest()).decode()
        return JSONResponse(body)

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
