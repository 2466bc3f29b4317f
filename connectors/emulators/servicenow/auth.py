"""How the ServiceNow emulator authenticates: basic auth with the users' passwords, or OAuth
bearer tokens from the password grant at ``/oauth_token.do`` (what pysnow's OAuthClient and
our connector's OAuth session use). Errors mirror the instance's ``access_denied``."""

from __future__ import annotations

import base64
import secrets
from urllib.parse import parse_qsl

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

OAUTH_CLIENT = ("hitl-bridge-oauth", "oauth-client-secret-0451")
"""The Application Registry entry the emulator knows (client id, client secret)."""


def authenticate(emulator, request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer":
        return emulator.tokens.get(value)
    if scheme.lower() != "basic":
        return None
    try:
        user, _, password = base64.b64decode(value).decode().partition(":")
    except ValueError:
        return None
    known = emulator.passwords.get(user)
    return user if known is not None and secrets.compare_digest(known, password) else None


async def token_endpoint(emulator, request: Request) -> Response:
    form = dict(parse_qsl((await request.body()).decode()))  # no python-multipart needed
    if (form.get("client_id"), form.get("client_secret")) != OAUTH_CLIENT:
        return JSONResponse({"error_description": "access_denied", "error": "server_error"}, status_code=401)
    with emulator.lock:
        if form.get("grant_type") == "password":
            user = form.get("username")
            if emulator.passwords.get(str(user)) != form.get("password"):
                return JSONResponse({"error_description": "access_denied", "error": "server_error"}, status_code=401)
        elif form.get("grant_type") == "refresh_token" and form.get("refresh_token") in emulator.tokens:
            user = emulator.tokens[str(form.get("refresh_token"))]
        else:
            return JSONResponse({"error_description": "access_denied", "error": "server_error"}, status_code=401)
        access, refresh = secrets.token_urlsafe(24), secrets.token_urlsafe(24)
        emulator.tokens[access] = emulator.tokens[refresh] = str(user)
    return JSONResponse({"access_token": access, "refresh_token": refresh, "scope": "useraccount",
                         "token_type": "Bearer", "expires_in": 1799})
