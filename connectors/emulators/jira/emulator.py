"""Jira Cloud emulator: the REST v2 subset the ``jira`` library calls, and signed admin webhooks.

Two projects: HITL (a software project where review tickets go; its comments have no
internal flag) and SUP (a Service Management project with customer tickets, where comments
carry ``jsdPublic``). Every status can transition to every other, each transition named after
its target. Every change, through REST or ``act()``, sends the webhook Jira Cloud would send:
``X-Hub-Signature: sha256=<hex>`` over the raw body and a fresh ``X-Atlassian-Webhook-Identifier``.
"""

from __future__ import annotations

import base64
import json
import secrets
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ..base import Act, Emulator
from .catalog import FIELDS, ISSUE_TYPES, NOT_FOUND, PRIORITIES, PROJECTS, SETTABLE, STATUSES, _now, filter_jql
from .model import JiraModel


def _error(status: int, messages: list[str] | None = None, errors: dict | None = None, **headers: str) -> Response:
    body = {"errorMessages": messages or [], "errors": errors or {}}
    return JSONResponse(body, status_code=status, headers=headers or None)



class JiraEmulator(JiraModel, Emulator):
    vendor = "jira"

    # ----- HTTP ----------------------------------------------------------------
    def routes(self) -> list:
        api = "/rest/api/2"
        handlers = [
            ("/serverInfo", ["GET"], self._r_server_info), ("/myself", ["GET"], self._r_myself),
            ("/user", ["GET"], self._r_user), ("/field", ["GET"], self._r_fields),
            ("/project/{key}", ["GET"], self._r_project), ("/issuetype", ["GET"], self._r_issuetypes),
            ("/project/{key}/statuses", ["GET"], self._r_project_statuses),
            ("/status", ["GET"], self._r_statuses), ("/search", ["GET", "POST"], self._r_search),
            ("/search/jql", ["GET", "POST"], self._r_search), ("/issue", ["POST"], self._r_create),
            ("/issue/{key}", ["GET", "PUT"], self._r_issue),
            ("/issue/{key}/transitions", ["GET", "POST"], self._r_transitions),
            ("/issue/{key}/comment", ["GET", "POST"], self._r_comments),
        ]
        return [Route(api + path, self._authenticated(handler), methods=methods) for path, methods, handler in handlers]

    def _authenticated(self, handler):
        async def endpoint(request: Request) -> Response:
            username = self._authenticate(request.headers.get("authorization", ""))
            if username is None:
                return _error(401, ["Client must be authenticated to access this resource."],
                              **{"WWW-Authenticate": 'Basic realm="protected-area"'})
            raw = await request.body()
            try:
                body = json.loads(raw) if raw else {}
            except ValueError:
                return _error(400, ["Unexpected character in the request body."])
            with self.lock:
                try:
                    return handler(request, username, body)
                except ValueError as exc:
                    detail = exc.args[0] if exc.args else "Bad request"
                    if isinstance(detail, dict):
                        return _error(400, errors=detail)
                    return _error(400, [str(detail)])
        return endpoint

    def _authenticate(self, header: str) -> str | None:
        if not header.lower().startswith("basic "):
            return None
        try:
            email, _, token = base64.b64decode(header[6:]).decode().partition(":")
        except (ValueError, UnicodeDecodeError):
            return None
        for username, user in self.users.items():
            if email in (user["emailAddress"], username) and secrets.compare_digest(token, user["token"]):
                return username
        return None

    def _r_server_info(self, request, username, body):
        return JSONResponse({"baseUrl": self.base_url, "version": "1001.0.0-SNAPSHOT",
                             "versionNumbers": [1001, 0, 0], "deploymentType": "Cloud", "buildNumber": 100204,
                             "buildDate": "2024-01-01T00:00:00.000+0000", "serverTime": _now(),
                             "scmInfo": "emulator", "serverTitle": "Jira", "defaultLocale": {"locale": "en_US"}})

    def _r_myself(self, request, username, body):
        return JSONResponse(self._user(username) | {"locale": "en_US", "groups": {"size": 1, "items": []}})

    def _r_user(self, request, username, body):
        found = self._username_for(request.query_params.get("accountId") or request.query_params.get("username"))
        user = self._user(found)
        if user is not None and "groups" in request.query_params.get("expand", ""):
            names = self.groups.get(found, [])
            user["groups"] = {"size": len(names), "items": [{"name": n, "groupId": f"g-{n}"} for n in names]}
        return JSONResponse(user)

    def _r_fields(self, request, username, body):
        return JSONResponse([{"id": fid, "key": fid, "name": name, "custom": fid.startswith("customfield_"),
                              "orderable": fid in SETTABLE, "navigable": True, "searchable": True,
                              "clauseNames": [fid, f"cf[{fid[12:]}]"] if fid.startswith("customfield_") else [fid],
                              "schema": {"type": kind, "system": fid}} for fid, name, kind in FIELDS])

    def _r_project(self, request, username, body):
        key = request.path_params["key"]
        found = next((k for k, p in PROJECTS.items() if key in (k, p["id"])), None)
        if found is None:
            return _error(404, [f"No project could be found with key '{key}'."])
        return JSONResponse(self._project(found, expand="issueTypes" in request.query_params.get("expand", "")))

    def _r_project_statuses(self, request, username, body):
        """Each issue type's workflow statuses (every status transitions to every other here)."""
        key = request.path_params["key"]
        found = next((k for k, p in PROJECTS.items() if key in (k, p["id"])), None)
        if found is None:
            return _error(404, [f"No project could be found with key '{key}'."])
        return JSONResponse([self._issuetype(t) | {"statuses": [self._status(s) for s in STATUSES]}
                             for t in PROJECTS[found]["types"]])

    def _r_issuetypes(self, request, username, body):
        return JSONResponse([self._issuetype(t) for t in ISSUE_TYPES])

    def _r_statuses(self, request, username, body):
        return JSONResponse([self._status(s) for s in STATUSES])

    def _r_create(self, request, username, body):
        if not isinstance(body.get("fields"), dict):
            raise ValueError("one of 'fields' or 'update' required")
        issue = self._create(body["fields"], username)
        return JSONResponse({"id": issue["id"], "key": issue["key"],
                             "self": f"{self.base_url}/rest/api/2/issue/{issue['id']}"}, status_code=201)

    def _r_issue(self, request, username, body):
        issue = self._find(request.path_params["key"])
        if issue is None:
            return _error(404, [NOT_FOUND])
        if request.method == "PUT":
            fields = dict(body.get("fields") or {})
            for name, operations in (body.get("update") or {}).items():
                for operation in operations:
                    if name == "comment" and "add" in operation:
                        self._comment(issue, username, operation["add"]["body"], internal=False)
                    elif name == "labels":
                        labels = list(fields.get("labels", issue["fields"]["labels"]))
                        if "add" in operation:
                            labels.append(operation["add"])
                        if "remove" in operation:
                            labels = [v for v in labels if v != operation["remove"]]
                        fields["labels"] = operation.get("set", labels)
                    elif "set" in operation:
                        fields[name] = operation["set"]
            if "status" in fields:
                raise ValueError({"status": "Field 'status' cannot be set. It is not on the appropriate screen, "
                                            "or unknown."})
            self._edit(issue, fields, username)
            return Response(status_code=204)
        wanted = set(",".join(request.query_params.getlist("fields")).split(",")) - {""} or None
        changelog = "changelog" in request.query_params.get("expand", "")
        return JSONResponse(self._issue_json(issue, wanted=wanted, changelog=changelog))

    def _r_transitions(self, request, username, body):
        issue = self._find(request.path_params["key"])
        if issue is None:
            return _error(404, [NOT_FOUND])
        if request.method == "GET":
            return JSONResponse({"expand": "transitions", "transitions": [
                {"id": str(11 + 10 * i), "name": s, "to": self._status(s), "hasScreen": False, "isGlobal": True,
                 "isInitial": False, "isAvailable": True, "isConditional": False, "isLooped": False}
                for i, s in enumerate(STATUSES) if s != issue["fields"]["status"]]})
        transition_id = str((body.get("transition") or {}).get("id", ""))
        target = next((s for i, s in enumerate(STATUSES) if str(11 + 10 * i) == transition_id), None)
        if target is None or target == issue["fields"]["status"]:
            raise ValueError(f"Transition id '{transition_id}' is not valid for this issue.")
        for operation in (body.get("update") or {}).get("comment", []):
            self._comment(issue, username, operation["add"]["body"], internal=False)
        if body.get("fields"):
            self._edit(issue, body["fields"], username)
        self._transition(issue, target, username)
        return Response(status_code=204)

    def _r_comments(self, request, username, body):
        issue = self._find(request.path_params["key"])
        if issue is None:
            return _error(404, [NOT_FOUND])
        if request.method == "GET":
            comments = [self._comment_json(issue, c) for c in issue["comments"]]
            return JSONResponse({"startAt": 0, "maxResults": max(50, len(comments)), "total": len(comments),
                                 "comments": comments})
        if not isinstance(body.get("body"), str) or not body["body"].strip():
            raise ValueError({"comment": "Comment body can not be empty!"})
        internal = any(p.get("key") == "sd.public.comment" and (p.get("value") or {}).get("internal")
                       for p in body.get("properties") or [])
        comment = self._comment(issue, username, body["body"], internal=internal)
        return JSONResponse(self._comment_json(issue, comment), status_code=201)

    def _r_search(self, request, username, body):
        params = dict(request.query_params) | (body if isinstance(body, dict) else {})
        newest_first = sorted(self.issues.values(), key=lambda i: int(i["id"]), reverse=True)
        matches = filter_jql(newest_first, str(params.get("jql") or ""))
        fields = params.get("fields") or ["*navigable"]
        wanted = set(fields.split(",") if isinstance(fields, str) else fields)
        start, limit = int(params.get("startAt") or 0), int(params.get("maxResults") or 50)
        expand = "changelog" in str(params.get("expand") or "")
        page = [self._issue_json(i, wanted=wanted, changelog=expand) for i in matches[start:start + limit]]
        if request.url.path.endswith("/jql"):
            return JSONResponse({"issues": page, "isLast": True})
        return JSONResponse({"expand": "schema,names", "startAt": start, "maxResults": limit,
                             "total": len(matches), "issues": page})

    # ----- uniform hooks -------------------------------------------------------
    def error_response(self, status: int, message: str, *, retry_after: int | str | None = None) -> Response:
        headers = {}
        if retry_after is not None:
            headers = {"Retry-After": str(retry_after), "X-RateLimit-Limit": "100", "X-RateLimit-Remaining": "0",
                       "RateLimit-Reason": "jira-burst-based"}
        return _error(status, [message], **headers)

    def list_tickets(self) -> list[dict[str, Any]]:
        with self.lock:
            return [self._uniform(i) for i in sorted(self.issues.values(), key=lambda i: int(i["id"]))]

    def _uniform(self, issue: dict[str, Any]) -> dict[str, Any]:
        raw = issue["fields"]
        fields = {k: v for k, v in raw.items() if k not in ("issuetype", "priority")}
        fields |= {"issuetype": ISSUE_TYPES[raw["issuetype"]], "priority": PRIORITIES[raw["priority"]],
                   "project": issue["project"]}
        return {"key": issue["id"], "display": issue["key"], "url": f"{self.base_url}/browse/{issue['key']}",
                "title": raw.get("summary"), "status": raw["status"], "description": raw.get("description"),
                "comments": [{"author": self.users[c["author"]]["displayName"], "body": c["body"],
                              "public": not c["internal"], "created": c["created"]} for c in issue["comments"]],
                "fields": fields}

    def act(self, act: Act) -> dict[str, Any]:
        with self.lock:
            issue = self._find(act.key)
            if issue is None:
                raise KeyError(act.key)
            user = act.user or ("carol" if act.action == "customer_reply" else "alice")
            if user not in self.users:
                raise ValueError(f"unknown user {user!r}")
            target = {"approve": "Approved", "edit": "Approved", "reject": "Rejected", "respond": "Responded"}
            if act.action in ("customer_reply", "comment") or (act.body and act.action in target):
                body = f"/edit {act.body}" if act.action == "edit" else act.body
                if not body:
                    raise ValueError("a comment needs a body")
                self._comment(issue, user, body, internal=act.internal and act.action != "customer_reply")
            if act.action in target and issue["fields"]["status"] != target[act.action]:
                self._transition(issue, target[act.action], user)
            elif act.action == "set_field":
                if act.field == "status":
                    if act.value not in STATUSES:
                        raise ValueError(f"unknown status {act.value!r}")
                    if issue["fields"]["status"] != act.value:
                        self._transition(issue, act.value, user)
                else:
                    named = act.field in ("priority", "issuetype") and isinstance(act.value, str)
                    self._edit(issue, {act.field or "": {"name": act.value} if named else act.value}, user)
            return self._uniform(issue)

    def connection(self, *, base_url: str, ca_bundle: str | None) -> dict[str, Any]:
        return {"type": "jira", "base_url": base_url, "email": self.users["hitl-bridge"]["emailAddress"],
                "api_token": self.bridge_token, "ca_bundle": ca_bundle,
                "webhook_secrets": [self.settings.webhook_secret]}

    def contract_fields(self) -> dict[str, Any]:
        return {"project": {"key": "HITL"}, "issuetype": {"name": "Task"}, "summary": "[AI review] contract test",
                "description": "h2. Contract test\nA ticket the contract suite creates.", "labels": ["ai-review"]}

    def missing_key(self) -> str:
        return "HITL-99999"

    def bad_credentials(self) -> dict[str, Any]:
        return {"api_token": "not-the-right-api-token-9f8e7d"}

    def contract_close_status(self) -> str:
        return "Done"
