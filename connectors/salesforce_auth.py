"""A Salesforce connection's settings, and logging in: username and password (SOAP), OAuth
client credentials, or the OAuth 2.0 JWT bearer flow, each aimed at the connection's ``base_url``.

simple-salesforce has helpers for all three but builds ``https://{domain}.salesforce.com``
itself for the OAuth ones, which cannot reach a My Domain host with a port (or the
emulator). So the token requests are built here and sent through the library's own
``token_login`` (which reads Salesforce's success and ``{"error", "error_description"}``
answers), and the JWT is signed with PyJWT, as the library itself does.
"""

from __future__ import annotations

import base64
import time
from pathlib import Path
from typing import Literal

import jwt
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from pydantic import Field, SecretStr, model_validator
from simple_salesforce.exceptions import SalesforceAuthenticationFailed
from simple_salesforce.login import SalesforceLogin, token_login

from .base import ConnectionConfig
from .errors import AuthError
from .http import PinnedSession

JWT_GRANT = "urn:ietf:params:oauth:grant-type:jwt-bearer"
ASSERTION_LIFETIME_SECONDS = 180  # Salesforce wants a short exp; the library uses 3 minutes too

# Salesforce's error_description for a refused JWT says little; what each means for the admin.
_JWT_HINTS = {
    "invalid assertion": "the assertion's signature does not verify against the certificate uploaded "
    "to the connected app (wrong private_key?), or the assertion is malformed",
    "audience is invalid": "aud must be the login host (https://login.salesforce.com, "
    "https://test.salesforce.com or the site URL): set jwt_audience",
    "expired authorization code": "the assertion has expired (is this machine's clock right?)",
    "user hasn't approved this consumer": "the user is not pre-authorized: set the connected app's "
    "Permitted Users to 'Admin approved users are pre-authorized' and add the user's profile or "
    "permission set",
    "invalid_client_id": "consumer_key is not the connected app's consumer key",
    "client identifier invalid": "consumer_key is not the connected app's consumer key",
}


def load_private_key(pem: bytes, *, where: str) -> RSAPrivateKey:
    """An unencrypted RSA key from PEM, or a ValueError that names ``where`` but never the key."""
    try:
        key = load_pem_private_key(pem, password=None)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"{where} is not an unencrypted PEM private key ({type(exc).__name__})") from None
    if not isinstance(key, RSAPrivateKey):
        raise ValueError(f"{where} must be an RSA key (the JWT bearer flow signs with RS256)")
    return key


class SalesforceConfig(ConnectionConfig):
    """A Salesforce org. ``base_url`` is the login host (https://login.salesforce.com,
    https://test.salesforce.com or the org's My Domain); the instance URL comes from login."""

    username: str | None = Field(default=None, description="The integration user's username.")
    password: SecretStr | None = None
    security_token: SecretStr = Field(
        default=SecretStr(""), description="Appended to the password; empty when the IP is trusted."
    )
    consumer_key: str | None = Field(
        default=None, description="Connected app consumer key, for client credentials or the JWT bearer flow."
    )
    consumer_secret: SecretStr | None = Field(default=None, description="With consumer_key: client credentials.")
    private_key: SecretStr | None = Field(
        default=None,
        description="JWT bearer flow: the RSA private key (PEM) whose certificate is uploaded to the connected "
        "app; with consumer_key and username.",
    )
    private_key_file: str | None = Field(default=None, description="JWT bearer flow: the private key as a PEM file.")
    jwt_audience: str | None = Field(
        default=None,
        description="JWT bearer flow: the assertion's aud, https://login.salesforce.com or https://test.salesforce.com "
        "(default: base_url). Set it when base_url is the org's My Domain.",
    )
    organization_id: str | None = Field(
        default=None, description="The org's 15/18-char id; Outbound Messages from other orgs are refused."
    )
    external_id_field: str = Field(default="HITL_Review_Id__c", pattern=r"^[A-Za-z][A-Za-z0-9_]*$")
    api_version: str = Field(default="59.0", pattern=r"^\d+\.\d$")
    object: str = Field(default="Case", pattern=r"^[A-Za-z][A-Za-z0-9_]*$")

    @property
    def login_flow(self) -> Literal["password", "client_credentials", "jwt"]:
        if self.password is not None:
            return "password"
        return "jwt" if self.private_key is not None or self.private_key_file else "client_credentials"

    @model_validator(mode="after")
    def _one_way_to_log_in(self) -> "SalesforceConfig":
        ways = [name for name, given in (("username and password", self.password is not None),
                                         ("consumer_secret (client credentials)", self.consumer_secret is not None),
                                         ("a private key (JWT bearer)", bool(self.private_key or self.private_key_file)))
                if given]
        if len(ways) > 1:
            raise ValueError(f"set one way to log in, not several: {', '.join(ways)}")
        if self.private_key is not None and self.private_key_file:
            raise ValueError("set private_key or private_key_file, not both")
        flow = self.login_flow if ways else None
        if flow == "password" and not self.username:
            raise ValueError("password login needs username")
        if flow == "client_credentials" and not self.consumer_key:
            raise ValueError("client credentials need consumer_key with consumer_secret")
        if flow == "jwt":
            if not (self.consumer_key and self.username):
                raise ValueError("the JWT bearer flow needs consumer_key and username with the private key")
            if self.private_key is not None:
                load_private_key(self.private_key.get_secret_value().encode(), where="private_key")
        if flow is None:
            raise ValueError("set username and password, consumer_key and consumer_secret, "
                             "or consumer_key, username and private_key (or private_key_file)")
        return self


def _signing_key(cfg: SalesforceConfig) -> RSAPrivateKey:
    if cfg.private_key is not None:
        return load_private_key(cfg.private_key.get_secret_value().encode(), where="private_key")
    assert cfg.private_key_file
    try:
        pem = Path(cfg.private_key_file).read_bytes()
    except OSError as exc:
        raise AuthError(f"private_key_file cannot be read: {type(exc).__name__}", operation="login") from None
    try:
        return load_private_key(pem, where="private_key_file")
    except ValueError as exc:
        raise AuthError(str(exc), operation="login") from None


def jwt_assertion(cfg: SalesforceConfig, *, now: float | None = None) -> str:
    """The RS256-signed assertion: iss = consumer key, sub = username, aud = login host."""
    issued = int(now if now is not None else time.time())
    claims = {"iss": cfg.consumer_key, "sub": cfg.username, "aud": cfg.jwt_audience or cfg.base_url,
              "exp": issued + ASSERTION_LIFETIME_SECONDS}
    return jwt.encode(claims, _signing_key(cfg), algorithm="RS256")


def _jwt_login(cfg: SalesforceConfig, session: PinnedSession) -> tuple[str, str]:
    assert cfg.consumer_key
    try:
        return token_login(f"{cfg.base_url}/services/oauth2/token", {"grant_type": JWT_GRANT, "assertion": jwt_assertion(cfg)},
                           "login", cfg.consumer_key, None, None, session)
    except SalesforceAuthenticationFailed as exc:
        description = str(exc.auth_message or "")
        hint = _JWT_HINTS.get(description.strip().lower()) or _JWT_HINTS.get(str(exc.code).lower())
        if isinstance(exc.code, str) and hint:
            raise AuthError(f"JWT bearer login refused: {exc.code}: {description[:200]}: {hint}", operation="login") from exc
        raise


def login(cfg: SalesforceConfig, session: PinnedSession) -> tuple[str, str]:
    """(session id, instance host) by the connection's one way to log in."""
    flow = cfg.login_flow
    if flow == "password":
        assert cfg.username and cfg.password
        return SalesforceLogin(
            username=cfg.username,
            password=cfg.password.get_secret_value(),
            security_token=cfg.security_token.get_secret_value(),
            sf_version=cfg.api_version,
            session=session,
            scratch_url=cfg.base_url,
        )
    if flow == "jwt":
        return _jwt_login(cfg, session)
    assert cfg.consumer_key and cfg.consumer_secret
    basic = base64.b64encode(f"{cfg.consumer_key}:{cfg.consumer_secret.get_secret_value()}".encode()).decode()
    return token_login(f"{cfg.base_url}/services/oauth2/token", {"grant_type": "client_credentials"}, "login",
                       cfg.consumer_key, {"Authorization": f"Basic {basic}"}, None, session)
