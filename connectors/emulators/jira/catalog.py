"""What the Jira emulator's site contains, and the rules Jira applies to input.

Projects, issue types, statuses, priorities and fields; field validation with Jira's own
error messages; the small JQL subset the connector and ``doctor`` send.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

STATUSES = ["To Do", "In Review", "Approved", "Rejected", "Responded", "Cancelled", "Done"]
_CATEGORY = {"To Do": (2, "new", "To Do"), "In Review": (4, "indeterminate", "In Progress")}
ISSUE_TYPES = {"10001": "Task", "10002": "Bug", "10003": "Service Request"}
PRIORITIES = {"1": "Highest", "2": "High", "3": "Medium", "4": "Low", "5": "Lowest"}
PROJECTS = {
    "HITL": {"id": "10000", "name": "Human review", "projectTypeKey": "software", "types": ["10001", "10002"]},
    "SUP": {"id": "10001", "name": "Customer support", "projectTypeKey": "service_desk", "types": ["10003", "10001"]},
}
# id, display name, JQL clause names, schema type
FIELDS = [
    ("summary", "Summary", "string"), ("description", "Description", "string"),
    ("project", "Project", "project"), ("issuetype", "Issue Type", "issuetype"),
    ("labels", "Labels", "array"), ("priority", "Priority", "priority"),
    ("assignee", "Assignee", "user"), ("reporter", "Reporter", "user"),
    ("duedate", "Due date", "date"), ("environment", "Environment", "string"),
    ("status", "Status", "status"), ("comment", "Comment", "comments-page"),
    ("created", "Created", "datetime"), ("updated", "Updated", "datetime"),
    ("customfield_10050", "AI confidence", "number"), ("customfield_10051", "Review link", "string"),
]
SETTABLE = {"summary", "description", "project", "issuetype", "labels", "priority", "assignee",
            "reporter", "duedate", "environment", "customfield_10050", "customfield_10051"}
NOT_FOUND = "Issue does not exist or you do not have permission to see it."


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "+0000"



def normalize_fields(
    fields: dict[str, Any], *, creating: bool, resolve_user: Callable[[Any], str | None]
) -> dict[str, Any]:
    """Validate fields the way Jira does; returns stored values or raises ValueError(errors)."""
    errors: dict[str, str] = {}
    out: dict[str, Any] = {}
    for name, value in fields.items():
        if name not in SETTABLE or (name in ("project", "issuetype") and not creating):
            errors[name] = f"Field '{name}' cannot be set. It is not on the appropriate screen, or unknown."
        elif name == "project":
            key = next((k for k, p in PROJECTS.items() if isinstance(value, dict)
                        and (value.get("key") == k or str(value.get("id")) == p["id"])), None)
            if key is None:
                errors["project"] = "Specify a valid project ID or key"
            out["project"] = key
        elif name == "issuetype":
            type_id = next((i for i, n in ISSUE_TYPES.items() if isinstance(value, dict)
                            and (value.get("name") == n or str(value.get("id")) == i)), None)
            if type_id is None:
                errors["issuetype"] = "Specify a valid issue type"
            out["issuetype"] = type_id
        elif name == "priority":
            prio = next((i for i, n in PRIORITIES.items() if isinstance(value, dict)
                         and (value.get("name") == n or str(value.get("id")) == i)), None)
            if prio is None:
                errors["priority"] = "Specify a valid priority"
            out["priority"] = prio
        elif name == "labels":
            bad = [v for v in value or [] if not isinstance(v, str) or not v or re.search(r"\s", v)]
            if not isinstance(value, list) or bad:
                errors["labels"] = f"The label '{bad[0] if bad else value}' contains spaces which is invalid."
            out["labels"] = list(dict.fromkeys(value or []))
        elif name in ("assignee", "reporter"):
            try:
                out[name] = resolve_user(value)
            except ValueError as exc:
                errors[name] = str(exc)
        elif name == "summary" and (not isinstance(value, str) or "\n" in value or len(value) > 255):
            errors["summary"] = "Summary must be less than 255 characters and contain no newlines."
        else:
            out[name] = value
    if creating:
        if not fields.get("summary"):
            errors.setdefault("summary", "You must specify a summary of the issue.")
        if "project" not in fields:
            errors["project"] = "Specify a valid project ID or key"
        if "issuetype" not in fields:
            errors["issuetype"] = "Specify an issue type"
        if out.get("project") and out.get("issuetype") and out["issuetype"] not in PROJECTS[out["project"]]["types"]:
            errors["issuetype"] = "The issue type selected is invalid."
    if errors:
        raise ValueError(errors)
    return out


def filter_jql(issues: list[dict[str, Any]], jql: str) -> list[dict[str, Any]]:
    """The JQL the connector and doctor send: clauses ``field = value`` joined by AND."""
    query = re.split(r"(?i)\border\s+by\b", jql, maxsplit=1)[0]
    for clause in [c for c in re.split(r"(?i)\s+and\s+", query.strip()) if c]:
        match = re.fullmatch(r'\s*(\w+)\s*(=|~|in)\s*(?:"((?:[^"\\]|\\.)*)"|\(([^)]*)\)|([\w.-]+))\s*', clause, re.I)
        if not match:
            raise ValueError(f"Error in the JQL Query: unable to parse '{clause[:60]}'.")
        field, value = match.group(1).lower(), match.group(3) or match.group(5) or ""
        listed = match.group(4)
        values = [v.strip().strip('"') for v in listed.split(",")] if listed else [value.replace('\\"', '"')]
        if field == "project" and not any(v.upper() in PROJECTS for v in values):
            raise ValueError(f"The value '{values[0]}' does not exist for the field 'project'.")
        getter = {"labels": lambda i: i["fields"]["labels"], "project": lambda i: [i["project"]],
                  "key": lambda i: [i["key"], i["id"]], "issue": lambda i: [i["key"], i["id"]],
                  "id": lambda i: [i["id"]], "status": lambda i: [i["fields"]["status"]]}.get(field)
        if getter is None:
            raise ValueError(f"Field '{field}' does not exist or you do not have permission to view it.")
        wanted = {v.upper() for v in values}
        issues = [i for i in issues if wanted & {str(v).upper() for v in getter(i)}]
    return issues
