"""What the ServiceNow emulator knows about tables, choices and users, and its encoded-query
matcher. Kept apart from the HTTP code so the table layout reads like a data dictionary."""

from __future__ import annotations

BRIDGE_USER = "hitl.bridge"
REVIEW_TABLE = "u_ai_review"
"""The sample mapping's table: a custom table extending Task (docs/servicenow.md)."""

USERS = [
    {"user_name": BRIDGE_USER, "name": "HITL Bridge", "first_name": "HITL", "last_name": "Bridge",
     "email": "hitl-bridge@example.com", "password": "bridge-api-password"},
    {"user_name": "alice", "name": "Alice Reviewer", "first_name": "Alice", "last_name": "Reviewer",
     "email": "alice@example.com", "password": "alice-password"},
    {"user_name": "bob", "name": "Bob Approver", "first_name": "Bob", "last_name": "Approver",
     "email": "bob@example.com", "password": "bob-password"},
    {"user_name": "carol", "name": "Carol Customer", "first_name": "Carol", "last_name": "Customer",
     "email": "carol@example.com", "password": "carol-password"},
]

GROUPS = {"AI Review": "Reviews AI agents' actions", "Service Desk": "First-line support"}
MEMBERS = {BRIDGE_USER: [], "alice": ["Service Desk"], "bob": ["AI Review", "Service Desk"], "carol": []}
"""user_name -> the groups (``sys_user_grmember``) the emulator starts with; tests change them."""

JOURNAL = ("comments", "work_notes")
NOTIFY_ON = ("state", "approval", "comments", "work_notes")
"""The fields whose change fires the Business Rule (docs/servicenow.md)."""

TASK_FIELDS = {
    "number", "short_description", "description", "state", "approval", "priority", "impact", "urgency",
    "assignment_group", "assigned_to", "correlation_id", "correlation_display", "comments", "work_notes",
    "comments_and_work_notes", "active", "opened_at", "opened_by", "closed_at", "closed_by", "close_notes",
    "due_date", "contact_type", "watch_list", "work_notes_list", "parent", "company", "location",
    "sys_class_name", "sys_id", "sys_created_on", "sys_created_by", "sys_updated_on", "sys_updated_by",
    "sys_mod_count", "sys_domain_path", "upon_approval", "upon_reject", "approval_history", "escalation",
}
TABLE_FIELDS: dict[str, set[str]] = {
    "incident": TASK_FIELDS | {"caller_id", "category", "subcategory", "incident_state", "close_code",
                               "hold_reason", "severity", "problem_id", "resolved_at", "resolved_by"},
    "sc_task": TASK_FIELDS | {"request_item", "request", "cat_item"},
    "sn_customerservice_case": TASK_FIELDS | {"contact", "account", "consumer", "product", "resolution_code",
                                              "cause", "resolved_at", "resolved_by"},
    REVIEW_TABLE: set(TASK_FIELDS),
    "sys_user": {"sys_id", "user_name", "name", "first_name", "last_name", "email", "active",
                 "sys_created_on"},
    "sys_user_group": {"sys_id", "name", "description", "active", "sys_created_on"},
    "sys_user_grmember": {"sys_id", "user", "group", "sys_created_on"},
    "sys_journal_field": {"sys_id", "element", "element_id", "name", "value", "sys_created_on",
                          "sys_created_by"},
    "sys_audit": {"sys_id", "tablename", "documentkey", "fieldname", "oldvalue", "newvalue", "user",
                  "sys_created_on"},
    "sys_choice": {"sys_id", "name", "element", "value", "label", "sequence", "language", "inactive",
                   "sys_created_on"},
}
TABLE_FIELDS["sys_db_object"] = {"sys_id", "name", "label", "super_class", "sys_created_on"}
TABLE_FIELDS["sys_dictionary"] = {"sys_id", "name", "element", "column_label", "internal_type", "reference",
                                  "max_length", "active", "sys_created_on"}
REVIEW_COLUMNS = {"u_review_id": "string", "u_confidence": "string", "u_trace_url": "url"}
"""The columns docs/servicenow.md adds to the review table (the emulator accepts any u_ field)."""
TASK_TABLES = ("incident", "sc_task", "sn_customerservice_case", REVIEW_TABLE)
PREFIXES = {"incident": "INC", "sc_task": "SCTASK", "sn_customerservice_case": "CS", REVIEW_TABLE: "AIR"}
READ_ONLY = {"sys_user", "sys_user_group", "sys_user_grmember", "sys_journal_field", "sys_audit", "sys_choice", "sys_db_object", "sys_dictionary"}
REFERENCES = {
    "assignment_group": "sys_user_group", "assigned_to": "sys_user", "caller_id": "sys_user",
    "opened_by": "sys_user", "closed_by": "sys_user", "resolved_by": "sys_user", "contact": "sys_user",
}
TABLE_REFERENCES = {"sys_user_grmember": {"user": "sys_user", "group": "sys_user_group"}}
"""References that only one table has (``sys_audit.user``, for one, is a plain user_name)."""


def reference(table: str, element: str) -> str | None:
    """The table ``table.element`` refers to, or None when it is no reference field."""
    return TABLE_REFERENCES.get(table, {}).get(element) or REFERENCES.get(element)


APPROVAL = [("not requested", "Not Yet Requested"), ("requested", "Requested"), ("approved", "Approved"),
            ("rejected", "Rejected"), ("cancelled", "Cancelled"), ("not_required", "No Longer Required")]
CHOICES: dict[tuple[str, str], list[tuple[str, str]]] = {
    ("task", "state"): [("-5", "Pending"), ("1", "Open"), ("2", "Work in Progress"), ("3", "Closed Complete"),
                        ("4", "Closed Incomplete"), ("7", "Closed Skipped")],
    ("task", "approval"): APPROVAL,
    ("task", "impact"): [("1", "1 - High"), ("2", "2 - Medium"), ("3", "3 - Low")],
    ("task", "urgency"): [("1", "1 - High"), ("2", "2 - Medium"), ("3", "3 - Low")],
    ("task", "priority"): [("1", "1 - Critical"), ("2", "2 - High"), ("3", "3 - Moderate"), ("4", "4 - Low"),
                           ("5", "5 - Planning")],
    ("incident", "state"): [("1", "New"), ("2", "In Progress"), ("3", "On Hold"), ("6", "Resolved"),
                            ("7", "Closed"), ("8", "Canceled")],
    ("sn_customerservice_case", "state"): [("1", "New"), ("10", "Open"), ("18", "Awaiting Info"),
                                           ("6", "Resolved"), ("3", "Closed"), ("7", "Cancelled")],
    # docs/servicenow.md adds "Responded" to approval on the review table (a table-specific choice).
    (REVIEW_TABLE, "approval"): APPROVAL + [("responded", "Responded")],
}


def parse_query(query: str) -> tuple[list[tuple[str, str, str]], list[tuple[str, bool]]]:
    """An encoded query's AND terms (field, operator, value) and its ORDERBY clauses.

    Supports ``=``, ``!=``, ``IN``, ``STARTSWITH``; other or malformed terms are ignored, as
    the real instance does unless ``glide.invalid_query.returns_no_rows`` is set.
    """
    terms: list[tuple[str, str, str]] = []
    order: list[tuple[str, bool]] = []
    for part in (query or "").split("^"):
        part = part.strip()
        if part.startswith("ORDERBYDESC"):
            order.append((part[len("ORDERBYDESC"):], True))
        elif part.startswith("ORDERBY"):
            order.append((part[len("ORDERBY"):], False))
        elif not part or part.startswith("OR") or part == "EQ":
            continue  # ^OR terms widen a query: ignoring them only ever returns fewer rows
        elif "!=" in part:
            field, _, value = part.partition("!=")
            terms.append((field, "!=", value))
        elif "=" in part:
            field, _, value = part.partition("=")
            terms.append((field, "=", value))
        else:
            for operator in ("STARTSWITH", "IN"):
                field, found, value = part.partition(operator)
                if found and field and field.replace("_", "").isalnum():
                    terms.append((field, operator, value))
                    break
    return terms, order


def matches(record: dict[str, str], terms: list[tuple[str, str, str]]) -> bool:
    for field, operator, value in terms:
        if field not in record:
            continue  # unknown fields in a query are ignored by the real instance too
        actual = record[field]
        if operator == "=" and actual != value:
            return False
        if operator == "!=" and actual == value:
            return False
        if operator == "IN" and actual not in value.split(","):
            return False
        if operator == "STARTSWITH" and not actual.startswith(value):
            return False
    return True


def dictionary() -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    """Rows of ``sys_db_object`` (tables; task tables name ``task`` as their super class) and
    ``sys_dictionary`` (each table's own columns; inherited ones live on the parent), as a real
    instance keeps them. ``super_class`` holds the parent's name here, filled in as a sys_id
    by the emulator."""
    tables = [{"name": "task", "label": "Task", "super_class": ""}]
    columns: list[dict[str, str]] = [_column("task", f) for f in sorted(TASK_FIELDS)]
    for table, fields in TABLE_FIELDS.items():
        parent = "task" if table in TASK_TABLES else ""
        tables.append({"name": table, "label": table.replace("_", " ").title(), "super_class": parent})
        own = fields - TASK_FIELDS if parent else fields
        if table == REVIEW_TABLE:
            own = own | set(REVIEW_COLUMNS)
        columns += [_column(table, f) for f in sorted(own)]
    return tables, columns


def _column(table: str, element: str) -> dict[str, str]:
    target = reference(table, element)
    kind = "reference" if target else ("journal_input" if element in JOURNAL else REVIEW_COLUMNS.get(element, "string"))
    return {"name": table, "element": element, "column_label": element.replace("_", " ").title(),
            "internal_type": kind, "reference": target or "", "max_length": "4000", "active": "true"}
