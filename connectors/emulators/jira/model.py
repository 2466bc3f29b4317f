"""The Jira emulator's state: issues, comments and changelogs in memory, their REST v2
representations, and the changes every caller (REST or ``act()``) goes through, each of
which sends the webhook Jira Cloud would send."""

from __future__ import annotations

import json
import secrets
import time
import uuid
from typing import Any

from ...signing import hmac_sha256_hex
from .catalog import _CATEGORY, ISSUE_TYPES, PRIORITIES, PROJECTS, STATUSES, _now, normalize_fields


class JiraModel:
    """Mixed into ``JiraEmulator``; relies on its ``lock``, ``settings``, ``webhooks`` and ``base_url``."""

    # ----- state ---------------------------------------------------------------
    def reset(self) -> None:
        with self.lock:
            self.users: dict[str, dict[str, Any]] = {}
            for username, name, email, kind in [
                ("hitl-bridge", "HITL Bridge", "hitl-bridge@example.com", "atlassian"),
                ("alice", "Alice Reviewer", "alice@example.com", "atlassian"),
                ("bob", "Bob Approver", "bob@example.com", "atlassian"),
                ("carol", "Carol Customer", "carol@example.com", "customer"),
            ]:
                self.users[username] = {
                    "accountId": f"5b10ac8d82e05b22cc7d4e{len(self.users):02d}", "displayName": name,
                    "emailAddress": email, "accountType": kind, "token": secrets.token_urlsafe(18),
                }
            self.bridge_token = self.users["hitl-bridge"]["token"]
            self.groups: dict[str, list[str]] = {  # username -> Jira group names (tests change them)
                "alice": ["jira-software-users"], "bob": ["jira-software-users", "refund-approvers"],
                "hitl-bridge": ["jira-software-users"], "carol": [],
            }
            self.issues: dict[str, dict[str, Any]] = {}
            self.counters = {"issue": 10000, "comment": 10000, "history": 10000, "project": {}}
            self._seed()

    def _seed(self) -> None:
        for summary, description, reply in [
            ("Damaged blender on delivery", "My order A-100 arrived with a cracked jug. I'd like a refund.",
             "Sorry to hear that! Could you send a photo of the damage?"),
            ("Where is my order A-204?", "It has been 10 days and tracking has not moved.",
             "We are checking with the carrier and will update you within a day."),
        ]:
            issue = self._create({"project": {"key": "SUP"}, "issuetype": {"name": "Service Request"},
                                  "summary": summary, "description": description}, "carol", notify=False)
            self._comment(issue, "carol", "Attached the photo now." if "blender" in summary else "Any news?",
                          internal=False, notify=False)
            self._comment(issue, "alice", reply, internal=False, notify=False)

    def _user(self, username: str | None) -> dict[str, Any] | None:
        if not username or username not in self.users:
            return None
        user = self.users[username]
        return {"self": f"{self.base_url}/rest/api/2/user?accountId={user['accountId']}",
                "accountId": user["accountId"], "emailAddress": user["emailAddress"],
                "displayName": user["displayName"], "active": True, "timeZone": "Etc/UTC",
                "accountType": user["accountType"]}

    def _username_for(self, ref: Any) -> str | None:
        if ref is None:
            return None
        wanted = ref.get("accountId") or ref.get("name") or ref.get("id") if isinstance(ref, dict) else ref
        for username, user in self.users.items():
            if wanted in (username, user["accountId"], user["emailAddress"]):
                return username
        raise ValueError(f"User '{wanted}' does not exist.")

    def _find(self, id_or_key: str) -> dict[str, Any] | None:
        issue = self.issues.get(str(id_or_key))
        if issue is None:
            issue = next((i for i in self.issues.values() if i["key"].upper() == str(id_or_key).upper()), None)
        return issue

    # ----- REST representations ------------------------------------------------
    def _project(self, key: str, *, expand: bool = False) -> dict[str, Any]:
        project = PROJECTS[key]
        body = {"self": f"{self.base_url}/rest/api/2/project/{project['id']}", "id": project["id"], "key": key,
                "name": project["name"], "projectTypeKey": project["projectTypeKey"], "simplified": False}
        if expand:
            body["issueTypes"] = [self._issuetype(t) for t in project["types"]]
        return body

    def _issuetype(self, type_id: str) -> dict[str, Any]:
        return {"self": f"{self.base_url}/rest/api/2/issuetype/{type_id}", "id": type_id,
                "name": ISSUE_TYPES[type_id], "description": "", "subtask": False}

    def _status(self, name: str) -> dict[str, Any]:
        status_id = str(10000 + STATUSES.index(name))
        cat_id, cat_key, cat_name = _CATEGORY.get(name, (3, "done", "Done"))
        return {"self": f"{self.base_url}/rest/api/2/status/{status_id}", "id": status_id, "name": name,
                "description": "", "statusCategory": {"id": cat_id, "key": cat_key, "name": cat_name}}

    def _comment_json(self, issue: dict[str, Any], comment: dict[str, Any]) -> dict[str, Any]:
        body = {"self": f"{self.base_url}/rest/api/2/issue/{issue['id']}/comment/{comment['id']}",
                "id": comment["id"], "author": self._user(comment["author"]), "body": comment["body"],
                "updateAuthor": self._user(comment["author"]), "created": comment["created"],
                "updated": comment["created"]}
        if PROJECTS[issue["project"]]["projectTypeKey"] == "service_desk":
            body["jsdPublic"] = not comment["internal"]
        return body

    def _fields_json(self, issue: dict[str, Any], wanted: set[str] | None = None) -> dict[str, Any]:
        raw = issue["fields"]
        fields: dict[str, Any] = {
            "summary": raw.get("summary"), "description": raw.get("description"),
            "project": self._project(issue["project"]), "issuetype": self._issuetype(raw["issuetype"]),
            "labels": list(raw.get("labels", [])), "status": self._status(raw["status"]),
            "priority": {"self": f"{self.base_url}/rest/api/2/priority/{raw['priority']}", "id": raw["priority"],
                         "name": PRIORITIES[raw["priority"]]},
            "assignee": self._user(raw.get("assignee")), "reporter": self._user(raw.get("reporter")),
            "creator": self._user(raw.get("reporter")), "created": issue["created"], "updated": issue["updated"],
            "duedate": raw.get("duedate"), "environment": raw.get("environment"),
            "resolution": None if _CATEGORY.get(raw["status"]) else {"id": "10000", "name": "Done"},
            "customfield_10050": raw.get("customfield_10050"), "customfield_10051": raw.get("customfield_10051"),
            "comment": {"comments": [self._comment_json(issue, c) for c in issue["comments"]],
                        "maxResults": len(issue["comments"]), "total": len(issue["comments"]), "startAt": 0},
        }
        if wanted and not wanted & {"*all", "*navigable"}:
            fields = {k: v for k, v in fields.items() if k in wanted}
        return fields

    def _issue_json(self, issue: dict[str, Any], *, wanted: set[str] | None = None, changelog: bool = False) -> dict:
        body = {"expand": "renderedFields,names,schema,operations,editmeta,changelog,versionedRepresentations",
                "id": issue["id"], "self": f"{self.base_url}/rest/api/2/issue/{issue['id']}", "key": issue["key"],
                "fields": self._fields_json(issue, wanted)}
        if changelog:
            histories = [{"id": h["id"], "author": self._user(h["author"]), "created": h["created"],
                          "items": h["items"]} for h in issue["histories"]]
            body["changelog"] = {"startAt": 0, "maxResults": len(histories), "total": len(histories),
                                 "histories": histories}
        return body

    # ----- mutations (shared by REST and act) ----------------------------------
    def _create(self, fields: dict[str, Any], username: str, *, notify: bool = True) -> dict[str, Any]:
        values = normalize_fields(fields, creating=True, resolve_user=self._username_for)
        project = values.pop("project")
        self.counters["issue"] += 1
        number = self.counters["project"][project] = self.counters["project"].get(project, 0) + 1
        stamp = _now()
        issue = {"id": str(self.counters["issue"]), "key": f"{project}-{number}", "project": project,
                 "created": stamp, "updated": stamp, "comments": [], "histories": [],
                 "fields": {"status": "To Do", "priority": "3", "reporter": username, "labels": []} | values}
        self.issues[issue["id"]] = issue
        if notify:
            self._notify("jira:issue_created", "issue_created", issue, username)
        return issue

    def _history(self, issue: dict[str, Any], username: str, items: list[dict[str, Any]]) -> dict[str, Any]:
        self.counters["history"] += 1
        history = {"id": str(self.counters["history"]), "author": username, "created": _now(), "items": items}
        issue["histories"].append(history)
        issue["updated"] = history["created"]
        return history

    def _edit(self, issue: dict[str, Any], fields: dict[str, Any], username: str, *,
              event: str = "issue_updated") -> None:
        values = normalize_fields(fields, creating=False, resolve_user=self._username_for)
        items = []
        for name, value in values.items():
            old = issue["fields"].get(name)
            if old == value:
                continue
            issue["fields"][name] = value
            as_text = (lambda v: " ".join(v) if isinstance(v, list) else (None if v is None else str(v)))
            items.append({"field": name, "fieldtype": "custom" if name.startswith("customfield_") else "jira",
                          "fieldId": name, "from": None, "fromString": as_text(old),
                          "to": None, "toString": as_text(value)})
        if items:
            history = self._history(issue, username, items)
            self._notify("jira:issue_updated", event, issue, username, changelog=history)

    def _transition(self, issue: dict[str, Any], target: str, username: str) -> None:
        old = issue["fields"]["status"]
        issue["fields"]["status"] = target
        item = {"field": "status", "fieldtype": "jira", "fieldId": "status",
                "from": self._status(old)["id"], "fromString": old,
                "to": self._status(target)["id"], "toString": target}
        history = self._history(issue, username, [item])
        self._notify("jira:issue_updated", "issue_generic", issue, username, changelog=history)

    def _comment(self, issue: dict[str, Any], username: str, body: str, *, internal: bool, notify: bool = True) -> dict:
        self.counters["comment"] += 1
        service_desk = PROJECTS[issue["project"]]["projectTypeKey"] == "service_desk"
        comment = {"id": str(self.counters["comment"]), "author": username, "body": body,
                   "internal": internal and service_desk, "created": _now()}
        issue["comments"].append(comment)
        issue["updated"] = comment["created"]
        if notify:
            self._notify("comment_created", "issue_commented", issue, username, comment=comment)
        return comment

    def _notify(self, event: str, type_name: str, issue: dict[str, Any], username: str, *,
                changelog: dict | None = None, comment: dict | None = None) -> None:
        """Send the webhook Jira Cloud sends for this change (when a webhook URL is set)."""
        if not self.settings.webhook_url:
            return
        payload: dict[str, Any] = {"timestamp": int(time.time() * 1000), "webhookEvent": event}
        if event != "comment_created":
            payload["issue_event_type_name"] = type_name
        payload["user"] = self._user(username)
        full = self._issue_json(issue)
        full["fields"].pop("comment", None)
        if comment is not None:
            payload["comment"] = self._comment_json(issue, comment)
            keep = ("summary", "issuetype", "project", "assignee", "priority", "status")
            full["fields"] = {k: v for k, v in full["fields"].items() if k in keep}
        payload["issue"] = full
        if changelog is not None:
            payload["changelog"] = {"id": changelog["id"], "items": changelog["items"]}
        raw = json.dumps(payload)
        headers = {"Content-Type": "application/json; charset=utf-8",
                   "User-Agent": "Atlassian Webhook HTTP Client",
                   "X-Atlassian-Webhook-Identifier": str(uuid.uuid4()),
                   "X-Atlassian-Webhook-Flow": "Primary", "X-Atlassian-Webhook-Retry": "0"}
        if self.settings.webhook_secret:
            headers["X-Hub-Signature"] = "sha256=" + hmac_sha256_hex(self.settings.webhook_secret, raw.encode())
        self.webhooks.send(raw, headers)
