"""Sandbox mode: every ticket system emulated on loopback, no credentials, a reviewer page.

``build()`` starts the emulators and returns settings whose connections point at them;
``router`` serves ``GET /sandbox`` (what other tools need to talk to the sandbox) and the
page where a person acts as the reviewer or the customer.
"""

from __future__ import annotations

import base64
import secrets
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx2
from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse
from jinja2 import Environment, FileSystemLoader, select_autoescape

from connectors.emulators import EMULATORS, RunningEmulator, start_emulator
from connectors.emulators.langsmith import LangSmithEmulator

from .config import ApiKey, LangSmithSettings, Settings, hash_api_key

TEMPLATES = Environment(
    loader=FileSystemLoader(Path(__file__).parent / "templates"), autoescape=select_autoescape(["html"])
)
router = APIRouter(tags=["sandbox"], include_in_schema=False)


@dataclass
class Sandbox:
    api_keys: dict[str, str]
    callback_secret: str
    emulators: dict[str, RunningEmulator] = field(default_factory=dict)
    bridge_url: str = ""
    langsmith: RunningEmulator | None = None

    def describe(self) -> dict[str, Any]:
        connections = []
        for name, running in self.emulators.items():
            conn = running.connection(name)
            connections.append({
                "name": name,
                "type": conn["type"],
                "base_url": running.url,
                "credentials": {k: v for k, v in conn.items() if k not in ("name", "type", "base_url", "ca_bundle", "webhook_secrets")},
                "ca_bundle": running.server.ca_bundle,
                "webhook_secret": running.emulator.settings.webhook_secret,
            })
        return {
            "api_keys": self.api_keys,
            "callback_secret": self.callback_secret,
            "connections": connections,
            "page_url": f"{self.bridge_url}/sandbox/ui",
            **({"langsmith": self.langsmith_description()} if self.langsmith else {}),
        }

    def langsmith_description(self) -> dict[str, Any]:
        emulator = self.langsmith.emulator
        return {"api_url": self.langsmith.url, "api_key": emulator.api_key, "intake_secret": emulator.settings.webhook_secret,
                "fire_rule_url": f"{self.langsmith.url}/_emulator/rules/fire"}

    def stop(self) -> None:
        for running in self.emulators.values():
            running.stop()
        if self.langsmith:
            self.langsmith.stop()


def build(*, host: str, port: int, database: str | None = None, vendors: list[str] | None = None) -> tuple[Settings, Sandbox]:
    bridge_url = f"http://{host}:{port}"
    keys = {"agent": "hb_agent_" + secrets.token_urlsafe(24), "admin": "hb_admin_" + secrets.token_urlsafe(24)}
    sandbox = Sandbox(api_keys=keys, callback_secret="whsec_" + base64.b64encode(secrets.token_bytes(24)).decode(), bridge_url=bridge_url)
    connections = {}
    for name in vendors or sorted(EMULATORS):
        emulator = EMULATORS[name](webhook_url=f"{bridge_url}/v1/webhooks/{name}")
        running = start_emulator(emulator, host="127.0.0.1")
        sandbox.emulators[name] = running
        connections[name] = running.connection(name)
    intake_secret = secrets.token_urlsafe(24)  # LangSmith: runs from automation rules go to the Jira sample mapping
    sandbox.langsmith = start_emulator(LangSmithEmulator(
        webhook_url=f"{bridge_url}/v1/intake/langsmith?secret={intake_secret}", webhook_secret=intake_secret))
    if database is None:
        database = str(Path(tempfile.mkdtemp(prefix="hitl-sandbox-")) / "bridge.db")
    settings = Settings(
        database_url=database if "://" in database else f"sqlite:///{database}",
        connections=connections,
        api_keys=[
            ApiKey(name="agent", hash=hash_api_key(keys["agent"]), scopes=["reviews:write", "reviews:read"]),
            ApiKey(name="admin", hash=hash_api_key(keys["admin"]), scopes=["admin", "audit"]),
        ],
        callback_secret=sandbox.callback_secret,
        public_url=bridge_url,
        sandbox=True,
        langsmith=LangSmithSettings(
            api_url=sandbox.langsmith.url, api_key=sandbox.langsmith.emulator.api_key, web_url=sandbox.langsmith.url,
            intake_secrets=[intake_secret], intake_metadata={"queue": "jira"},
        ),
    )
    return settings, sandbox


def _client(running: RunningEmulator) -> httpx2.Client:
    return httpx2.Client(timeout=10.0, verify=running.server.ca_bundle or True)


def _sandbox(request: Request) -> Sandbox:
    return request.app.state.sandbox


@router.get("/sandbox")
def describe(request: Request) -> JSONResponse:
    return JSONResponse(_sandbox(request).describe())


@router.get("/sandbox/ui", response_class=HTMLResponse)
def page(request: Request, notice: str | None = None) -> HTMLResponse:
    sandbox = _sandbox(request)
    systems = []
    for name, running in sandbox.emulators.items():
        with _client(running) as client:
            try:
                tickets = client.get(f"{running.url}/_emulator/tickets").json()
                error = None
            except httpx2.HTTPError as exc:
                tickets, error = [], type(exc).__name__
            systems.append({"name": name, "url": running.url, "tickets": tickets, "error": error})
    html = TEMPLATES.get_template("sandbox.html").render(
        systems=systems, notice=notice, api_key=sandbox.api_keys["agent"], bridge_url=sandbox.bridge_url
    )
    return HTMLResponse(html)


@router.post("/sandbox/act")
def act(
    request: Request,
    system: str = Form(...),
    key: str = Form(...),
    action: str = Form(...),
    body: str = Form(""),
) -> RedirectResponse:
    sandbox = _sandbox(request)
    running = sandbox.emulators.get(system)
    notice = f"{action} sent to {system} {key}"
    if running is None:
        notice = f"no emulated system {system!r}"
    else:
        payload = {"key": key, "action": action, "body": body or None, "internal": action != "customer_reply"}
        with _client(running) as client:
            response = client.post(f"{running.url}/_emulator/act", json=payload)
        if response.status_code >= 400:
            notice = f"{system} refused: {response.text[:200]}"
    return RedirectResponse(f"/sandbox/ui?notice={httpx2.QueryParams({'n': notice})['n']}", status_code=303)
