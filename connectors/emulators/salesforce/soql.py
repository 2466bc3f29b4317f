"""The SOQL the connector sends, and no more: ``SELECT f, Rel.f FROM Object [WHERE f = 'v'
[AND g IN ('a', 'b') ...]] [ORDER BY f [ASC|DESC]] [LIMIT n]``, answered in the REST query shape."""

from __future__ import annotations

import re
from typing import Any

from . import SCHEMA, SfError

_QUERY = re.compile(
    r"^\s*SELECT\s+(?P<fields>.+?)\s+FROM\s+(?P<object>\w+)"
    r"(?:\s+WHERE\s+(?P<where>.+?))?"
    r"(?:\s+ORDER\s+BY\s+(?P<order>[\w.]+)(?:\s+(?P<direction>ASC|DESC))?)?"
    r"(?:\s+LIMIT\s+(?P<limit>\d+))?\s*$",
    re.IGNORECASE | re.DOTALL,
)
_LITERAL = r"'(?:[^'\\]|\\.)*'|true|false|null|-?\d+(?:\.\d+)?"
_CONDITION = re.compile(
    rf"\s*(?P<field>[\w.]+)\s*(?:(?P<op>!=|=)\s*(?P<value>{_LITERAL})"
    rf"|(?P<in>NOT\s+IN|IN)\s*\((?P<values>\s*(?:{_LITERAL})(?:\s*,\s*(?:{_LITERAL}))*)\s*\))\s*",
    re.IGNORECASE,
)
_ITEM = re.compile(_LITERAL, re.IGNORECASE)
_AND = re.compile(r"AND\b", re.IGNORECASE)
_UNESCAPE = {"n": "\n", "r": "\r", "t": "\t", "b": "\b", "f": "\f"}
_PARENTS = {"LastModifiedBy": "User", "CreatedBy": "User", "Owner": "User", "Parent": "Case", "Contact": "Contact",
            "Group": "Group", "PermissionSet": "PermissionSet", "Assignee": "User"}


def _literal(token: str) -> Any:
    lowered = token.lower()
    if token.startswith("'"):
        return re.sub(r"\\(.)", lambda m: _UNESCAPE.get(m.group(1), m.group(1)), token[1:-1])
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered == "null":
        return None
    return float(token) if "." in token else int(token)


def _no_column(name: str, sobject: str) -> SfError:
    return SfError(400, "INVALID_FIELD", f"No such column '{name}' on entity '{sobject}'. If you are attempting to use "
                   "a custom field, be sure to append the '__c' after the custom field name. Please reference your "
                   "WSDL or the describe call for the appropriate names.")


def _where(text: str | None) -> list[tuple[str, str, Any]]:
    conditions, position = [], 0
    while text and position < len(text):
        match = _CONDITION.match(text, position)
        if match is None:
            raise SfError(400, "MALFORMED_QUERY", f"unexpected token near: {text[position:position + 30]!r}")
        if match["in"]:
            values = [_literal(item) for item in _ITEM.findall(match["values"])]
            conditions.append((match["field"], "not in" if match["in"].lower().startswith("not") else "in", values))
        else:
            conditions.append((match["field"], match["op"], _literal(match["value"])))
        position = match.end()
        joiner = _AND.match(text, position)
        if joiner:
            position = joiner.end()
        elif position < len(text):
            raise SfError(400, "MALFORMED_QUERY", "only AND-joined =, != and IN conditions are supported")
    return conditions


def _check(sobject: str, path: str) -> None:
    relation, _, name = path.rpartition(".")
    fields = SCHEMA[sobject]["fields"]
    if not relation:
        if name not in fields:
            raise _no_column(name, sobject)
        return
    parent = _PARENTS.get(relation)
    if parent is None or f"{relation}Id" not in fields:
        raise SfError(400, "INVALID_FIELD", f"Didn't understand relationship '{relation}' in field path.")
    if name not in SCHEMA[parent]["fields"]:
        raise _no_column(name, parent)


def _value(emulator, sobject: str, record: dict[str, Any], path: str) -> Any:
    """A field or a parent's field (``LastModifiedBy.Name`` follows ``LastModifiedById``)."""
    fields = SCHEMA[sobject]["fields"]
    if "." not in path:
        if path not in fields:
            raise _no_column(path, sobject)
        return record.get(path)
    relation, _, name = path.partition(".")
    if f"{relation}Id" not in fields or fields[f"{relation}Id"]["type"] != "reference":
        raise SfError(400, "INVALID_FIELD", f"Didn't understand relationship '{relation}' in field path.")
    parent_id = record.get(f"{relation}Id")
    hit = emulator._find(parent_id) if parent_id else None
    if hit is None:
        return None
    parent_type, parent = hit
    if name not in SCHEMA[parent_type]["fields"]:
        raise _no_column(name, parent_type)
    return parent.get(name)


def _matches(value: Any, op: str, expected: Any) -> bool:
    if op in ("in", "not in"):
        found = any(_matches(value, "=", item) for item in expected)
        return found if op == "in" else not found
    if isinstance(value, str) and isinstance(expected, str):
        same = value.casefold() == expected.casefold() or (
            len(value) in (15, 18) and len(expected) in (15, 18) and value[:15] == expected[:15]
        )
    else:
        same = value == expected
    return same if op == "=" else not same


def _row(emulator, sobject: str, record: dict[str, Any], paths: list[str]) -> dict[str, Any]:
    row: dict[str, Any] = {"attributes": {"type": sobject, "url": f"/services/data/v59.0/sobjects/{sobject}/{record['Id']}"}}
    for path in paths:
        value = _value(emulator, sobject, record, path)
        if "." not in path:
            row[path] = value
            continue
        relation, _, name = path.partition(".")
        parent_id = record.get(f"{relation}Id")
        if parent_id is None or emulator._find(parent_id) is None:
            row[relation] = None
            continue
        parent_type = emulator._find(parent_id)[0]
        nested = row.get(relation) or {"attributes": {"type": parent_type,
                                                      "url": f"/services/data/v59.0/sobjects/{parent_type}/{parent_id}"}}
        nested[name] = value
        row[relation] = nested
    return row


def run_query(emulator, soql: str) -> dict[str, Any]:
    match = _QUERY.match(soql)
    if match is None:
        raise SfError(400, "MALFORMED_QUERY", "unexpected token: the emulator understands SELECT ... FROM ... "
                      "[WHERE a = 'b' AND ...] [ORDER BY f] [LIMIT n]")
    sobject = match["object"]
    if sobject not in SCHEMA:
        raise SfError(400, "INVALID_TYPE", f"sObject type '{sobject}' is not supported.")
    paths = [p.strip() for p in match["fields"].split(",") if p.strip()]
    conditions = _where(match["where"])
    records = list(emulator.records[sobject].values())
    for path in paths + [c[0] for c in conditions] + ([match["order"]] if match["order"] else []):
        _check(sobject, path)  # unknown columns fail even when nothing matches, as in Salesforce
    chosen = [r for r in records if all(_matches(_value(emulator, sobject, r, f), op, v) for f, op, v in conditions)]
    if match["order"]:
        chosen.sort(key=lambda r: str(_value(emulator, sobject, r, match["order"]) or ""),
                    reverse=(match["direction"] or "").upper() == "DESC")
    if match["limit"]:
        chosen = chosen[: int(match["limit"])]
    rows = [_row(emulator, sobject, r, paths) for r in chosen]
    return {"totalSize": len(rows), "done": True, "records": rows}
