"""``hitl-bridge doctor`` and ``GET /v1/doctor``: for each connection, do the credentials
work, and does everything its mappings name exist in the live system?

The bridge lists what each mapping names (``FieldUse``: literal values only; a templated
value can only be checked by rendering it, which the preview does); each connector looks
them up with read-only metadata calls. Every problem comes back with the mapping file and
the line to fix.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from connectors import FieldUse, connector_for
from connectors.errors import AuthError, ConnectorError

from .config import Settings
from .mapping import Mapping, load_mappings, yaml_line


@dataclass
class Problem:
    message: str
    mapping: str | None = None
    file: str | None = None
    line: int | None = None
    field: str | None = None

    def location(self) -> str:
        where = f"{self.file}:{self.line}" if self.file and self.line else (self.file or "")
        return " ".join(p for p in (where, self.field or "") if p)


@dataclass
class ConnectionReport:
    name: str
    type: str
    ok: bool = True
    account: str | None = None
    mappings: list[str] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)


def _templated(value: Any) -> bool:
    if isinstance(value, str):
        return "{{" in value or "{%" in value
    if isinstance(value, dict):
        return any(_templated(v) for v in value.values())
    if isinstance(value, list):
        return any(_templated(v) for v in value)
    return False


def field_uses(mapping: Mapping) -> list[FieldUse]:
    """What ``mapping`` names in its connection's system, each with the path it is written at."""
    uses: list[FieldUse] = []
    for name, value in mapping.ticket.fields.items():
        uses.append(FieldUse(f"ticket.fields.{name}", name, None if _templated(value) else value, "create"))
    decision = mapping.decision
    uses.append(FieldUse("decision.field", decision.field, None, "decide"))
    for value in decision.values:
        uses.append(FieldUse(f"decision.values.{value}", decision.field, value, "decide"))
    if decision.edit_field:
        uses.append(FieldUse("decision.edit_field", decision.edit_field, None, "decide"))
    for action in ("on_cancel", "on_decided"):
        for name, value in getattr(mapping, action).fields.items():
            uses.append(FieldUse(f"{action}.fields.{name}", name, None if _templated(value) else value, "update"))
    return uses


def run(settings: Settings, *, mappings: dict[str, Mapping] | None = None) -> list[ConnectionReport]:
    directory = Path(settings.mappings_dir)
    mappings = mappings if mappings is not None else load_mappings(directory)
    reports = []
    for name, config in settings.connections.items():
        report = ConnectionReport(name=name, type=config.type)
        reports.append(report)
        connector = connector_for(config)
        try:
            try:
                me = connector.check()
                report.account = me.email or me.name or me.id
            except AuthError as exc:
                report.problems.append(Problem(f"the credentials do not work: {exc}", field="connection"))
                continue
            except ConnectorError as exc:
                report.problems.append(Problem(f"cannot reach {config.type}: {exc}", field="connection"))
                continue
            for mapping in sorted((m for m in mappings.values() if m.connection == name), key=lambda m: m.name):
                report.mappings.append(mapping.name)
                report.problems += check_mapping(connector, mapping, directory / f"{mapping.name}.yaml")
        finally:
            report.ok = not report.problems
            connector.close()
    return reports


def check_mapping(connector: Any, mapping: Mapping, path: Path) -> list[Problem]:
    check = getattr(connector, "check_mapping", None)
    if check is None:
        return []
    text = path.read_text() if path.exists() else ""
    try:
        found = check(field_uses(mapping))
    except ConnectorError as exc:
        return [Problem(f"metadata lookup failed: {exc}", mapping=mapping.name, file=str(path))]
    return [
        Problem(p.message, mapping=mapping.name, file=str(path), field=p.where,
                line=yaml_line(text, p.where) if p.where != "connection" else yaml_line(text, "connection"))
        for p in found
    ]


def as_json(reports: list[ConnectionReport]) -> dict[str, Any]:
    return {"ok": all(r.ok for r in reports), "connections": [asdict(r) for r in reports]}
