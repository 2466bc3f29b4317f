"""The admin page at /admin: sign in with an admin API key, see the queue (open reviews per
route, age, SLA, failures with a retry button), reverse a decision, and edit mappings (validation as you type,
preview, diff against the saved file, save, history, restore).

Server-rendered Jinja2 pages; the editor's bit of JavaScript calls the same /v1 API as any
admin tool, authenticated by the session cookie and a CSRF token (``bridge.sessions``).
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import quote

from fastapi import APIRouter, Form, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse
from jinja2 import Environment, FileSystemLoader, select_autoescape
from pydantic import ValidationError

from . import keys, operations, reversal, sessions, stats, versions
from .config import ApiKey
from .deps import RuntimeDep
from .errors import BridgeError
from .schemas import Decision, DecisionReversal

TEMPLATES = Environment(loader=FileSystemLoader(Path(__file__).parent / "templates"), autoescape=select_autoescape(["html"]))
router = APIRouter(prefix="/admin", tags=["admin page"], include_in_schema=False)
_HEADERS = {"Cache-Control": "no-store", "X-Frame-Options": "DENY", "Referrer-Policy": "same-origin"}


def _session(request: Request, rt) -> tuple[ApiKey | None, str | None]:
    cookie = request.cookies.get(sessions.COOKIE)
    return sessions.verify(lambda name: keys.by_name(rt, name), cookie), cookie


def _page(template: str, status: int = 200, **context) -> HTMLResponse:
    return HTMLResponse(TEMPLATES.get_template(template).render(**context), status_code=status, headers=_HEADERS)


def _to_login() -> RedirectResponse:
    return RedirectResponse("/admin/login", status_code=303)


def _duration(seconds: int | None) -> str:
    """3d 4h, 2h 5m, 4m 10s, 12s (negative: overdue)."""
    if seconds is None:
        return "-"
    sign, s = ("-" if seconds < 0 else ""), abs(int(seconds))
    if s >= 86400:
        return f"{sign}{s // 86400}d {s % 86400 // 3600}h"
    if s >= 3600:
        return f"{sign}{s // 3600}h {s % 3600 // 60}m"
    if s >= 60:
        return f"{sign}{s // 60}m {s % 60}s"
    return f"{sign}{s}s"


TEMPLATES.filters["duration"] = _duration


@router.get("/login", response_class=HTMLResponse)
def login_page(request: Request, rt: RuntimeDep) -> HTMLResponse:
    return _page("admin_login.html", error=None)


@router.post("/login")
def login(rt: RuntimeDep, api_key: str = Form(...)):
    key, why = keys.lookup(rt, api_key.strip())  # config keys, then keys made with `hitl-bridge keys create`
    if key is None or "admin" not in key.scopes:
        error = "That API key has expired." if why == "expired" else "That is not an admin API key."
        return _page("admin_login.html", status=401, error=error)
    response = RedirectResponse("/admin", status_code=303)
    response.set_cookie(sessions.COOKIE, sessions.issue(key), max_age=sessions.LIFETIME_SECONDS, httponly=True,
                        samesite="strict", secure=rt.settings.public_url.startswith("https"), path="/")
    return response


@router.post("/logout")
def logout(request: Request, rt: RuntimeDep, csrf_token: str = Form("")):
    key, cookie = _session(request, rt)
    response = _to_login()
    if key is not None and sessions.csrf_ok(key, cookie, csrf_token):
        response.delete_cookie(sessions.COOKIE, path="/")
    return response


@router.get("", response_class=HTMLResponse)
def queue_page(request: Request, rt: RuntimeDep, notice: str | None = None, error: str | None = None,
               days: int = Query(stats.DEFAULT_DAYS, ge=1, le=3650)):
    key, cookie = _session(request, rt)
    if key is None:
        return _to_login()
    with rt.db.read() as session:
        rollout = stats.route_stats(session, rt.router.routes, since=stats.window_start(days))
    return _page("admin_queue.html", key=key, csrf=sessions.csrf_token(key, cookie), queue=operations.queue_overview(rt),
                 rollout=rollout, days=days, mappings=versions.names(rt), notice=notice, error=error, active="queue")


@router.post("/reviews/{review_id}/retry")
def retry(review_id: str, request: Request, rt: RuntimeDep, csrf_token: str = Form("")):
    key, cookie = _session(request, rt)
    if key is None:
        return _to_login()
    if not sessions.csrf_ok(key, cookie, csrf_token):
        return _back(error="The form expired; try again.")
    try:
        operations.retry_failed(rt, review_id, actor=f"api_key:{key.name}")
    except BridgeError as exc:
        return _back(error=exc.message)
    return _back(notice=f"Review {review_id} queued again.")


@router.post("/reviews/reverse")
def reverse(request: Request, rt: RuntimeDep, csrf_token: str = Form(""), review_id: str = Form(""),
            decision: str = Form(""), message: str = Form(""), reason: str = Form("")):
    """The page's form for ``POST /v1/reviews/{id}/decision``: one decision for every action
    (an edit takes its arguments through the API or ``hitl-bridge reviews reverse --decisions``)."""
    key, cookie = _session(request, rt)
    if key is None:
        return _to_login()
    if not sessions.csrf_ok(key, cookie, csrf_token):
        return _back(error="The form expired; try again.")
    review_id = review_id.strip()
    if not review_id or not reason.strip():
        return _back(error="Give the review's id and the reason for the reversal.")
    if decision not in ("approve", "reject", "respond"):
        return _back(error="Choose approve, reject or respond.")
    try:
        with rt.db.read() as session:
            decisions = reversal.for_every_action(session, review_id, Decision(type=decision, message=message.strip() or None))
        out = reversal.reverse_review(rt, review_id, DecisionReversal(decisions=decisions, reason=reason),
                                      actor=f"api_key:{key.name}")
    except BridgeError as exc:
        return _back(error=exc.message)
    except ValidationError as exc:  # e.g. a reason past 2,000 characters
        problem = exc.errors()[0]
        return _back(error=f"{'.'.join(map(str, problem['loc'])) or 'form'}: {problem['msg']}")
    return _back(notice=f"Review {review_id} is now {out.status} (decision version {out.decision.version}); "
                        "the agent is sent the new decision.")


def _back(**message: str) -> RedirectResponse:
    """To the queue page, saying how the form went (``notice`` or ``error``)."""
    (kind, text), = message.items()
    return RedirectResponse(f"/admin?{kind}=" + quote(text), status_code=303)


@router.get("/mappings/{name}", response_class=HTMLResponse)
def editor_page(name: str, request: Request, rt: RuntimeDep):
    key, cookie = _session(request, rt)
    if key is None:
        return _to_login()
    text = versions.read(rt, name)
    return _page("admin_editor.html", key=key, csrf=sessions.csrf_token(key, cookie), name=name, text=text,
                 etag=versions.etag(text), mappings=versions.names(rt), is_routes=name == versions.ROUTES, active=name)
