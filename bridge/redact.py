"""Redaction: what is masked before text leaves the bridge for a ticket system.

The mapping's ``redaction.clearance`` says what its reviewers may see. The review itself
is stored unmasked (the agent gets its decision against the real arguments); only what is
sent to a ticket system (fields, comments, actions) goes through ``redact_value``. An
approved reply is posted to the customer as approved and is never masked.

| kind          | public | internal | confidential | restricted |
| ------------- | ------ | -------- | ------------ | ---------- |
| email, phone  | masked | shown    | shown        | shown      |
| iban, national_id | masked | masked | shown      | shown      |
| custom        | masked unless the pattern's ``show_from`` allows it                 |
| card, secret  | always masked (a card keeps its last four digits)                    |
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import phonenumbers
from stdnum import iban as stdnum_iban
from stdnum import luhn

from .mapping import RedactionSpec

LEVELS = {"public": 0, "internal": 1, "confidential": 2, "restricted": 3}
SHOWN_FROM: dict[str, str | None] = {
    "secret": None,
    "card": None,
    "iban": "confidential",
    "national_id": "confidential",
    "email": "internal",
    "phone": "internal",
}
PRIORITY = ["secret", "card", "iban", "national_id", "custom", "email", "phone"]

_SECRETS = re.compile(
    r"(?:sk-[A-Za-z0-9_-]{20,}|gh[pousr]_[A-Za-z0-9]{30,}|AKIA[0-9A-Z]{16}|xox[abprs]-[A-Za-z0-9-]{10,}"
    r"|hb_[A-Za-z0-9_-]{30,}|whsec_[A-Za-z0-9+/=]{16,}|(?i:bearer)\s+[A-Za-z0-9._~+/-]{20,}=*"
    r"|-----BEGIN [A-Z ]*PRIVATE KEY-----[\s\S]*?-----END [A-Z ]*PRIVATE KEY-----)"
)
_CARD = re.compile(r"(?<![\w-])\d(?:[ -]?\d){12,18}(?![\w-])")  # not inside ids or hex
_IBAN = re.compile(r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]){11,30}")
_NATIONAL_IDS = [
    re.compile(r"(?<![\d-])(?!000|666|9\d\d)\d{3}-(?!00)\d{2}-(?!0000)\d{4}(?![\d-])"),  # US SSN
    re.compile(r"\b(?![DFIQUV])[A-Z](?![DFIOQUV])[A-Z] ?\d{2} ?\d{2} ?\d{2} ?[A-D]\b"),  # UK NINO
]
_EMAIL = re.compile(r"(?<![\w.+-])[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}\b")


@dataclass(frozen=True)
class Finding:
    kind: str
    name: str
    start: int
    end: int
    replacement: str


def _cards(text: str) -> Iterable[tuple[int, int, str]]:
    for match in _CARD.finditer(text):
        digits = re.sub(r"\D", "", match.group())
        if 13 <= len(digits) <= 19 and luhn.is_valid(digits):
            yield match.start(), match.end(), f"[card ****{digits[-4:]}]"


def _ibans(text: str) -> Iterable[tuple[int, int, str]]:
    for match in _IBAN.finditer(text):
        raw = match.group()
        # The pattern may run into a following word in capitals: take the longest valid prefix.
        for end in range(len(raw), 14, -1):
            if raw[end - 1] != " " and stdnum_iban.is_valid(raw[:end]):
                yield match.start(), match.start() + end, "[iban redacted]"
                break


def _phones(text: str, region: str) -> Iterable[tuple[int, int, str]]:
    for match in phonenumbers.PhoneNumberMatcher(text, region, leniency=phonenumbers.Leniency.VALID):
        yield match.start, match.end, "[phone redacted]"


def findings(text: str, spec: RedactionSpec) -> list[Finding]:
    """Everything in ``text`` that this mapping's clearance masks, without overlaps."""
    level = LEVELS[spec.clearance]
    masked = {kind for kind, shown in SHOWN_FROM.items() if shown is None or level < LEVELS[shown]}
    found: list[Finding] = []
    if "secret" in masked:
        found += [Finding("secret", "secret", m.start(), m.end(), "[secret redacted]") for m in _SECRETS.finditer(text)]
    if "card" in masked:
        found += [Finding("card", "card", s, e, r) for s, e, r in _cards(text)]
    if "iban" in masked:
        found += [Finding("iban", "iban", s, e, r) for s, e, r in _ibans(text)]
    if "national_id" in masked:
        for pattern in _NATIONAL_IDS:
            found += [Finding("national_id", "national_id", m.start(), m.end(), "[national id redacted]") for m in pattern.finditer(text)]
    for custom in spec.patterns:
        if custom.show_from is None or level < LEVELS[custom.show_from]:
            found += [Finding("custom", custom.name, m.start(), m.end(), f"[{custom.name} redacted]")
                      for m in re.finditer(custom.regex, text) if m.end() > m.start()]
    if "email" in masked:
        found += [Finding("email", "email", m.start(), m.end(), "[email redacted]") for m in _EMAIL.finditer(text)]
    if "phone" in masked:
        found += [Finding("phone", "phone", s, e, r) for s, e, r in _phones(text, spec.phone_region)]
    kept: list[Finding] = []
    for finding in sorted(found, key=lambda f: (PRIORITY.index(f.kind), f.start)):
        if all(finding.end <= k.start or finding.start >= k.end for k in kept):
            kept.append(finding)
    return sorted(kept, key=lambda f: f.start)


def redact_text(text: str, spec: RedactionSpec) -> str:
    out, last = [], 0
    for finding in findings(text, spec):
        out += [text[last:finding.start], finding.replacement]
        last = finding.end
    return "".join(out) + text[last:]


def redact_value(value: Any, spec: RedactionSpec) -> Any:
    """Every string in a nested structure (rendered fields, an action's fields)."""
    if isinstance(value, str):
        return redact_text(value, spec)
    if isinstance(value, dict):
        return {key: redact_value(item, spec) for key, item in value.items()}
    if isinstance(value, list):
        return [redact_value(item, spec) for item in value]
    return value


def masked_report(value: Any, spec: RedactionSpec, path: str = "") -> list[dict[str, Any]]:
    """For the preview: where something will be masked, of which kind, and what replaces it
    (never the value itself: previews are shown and logged)."""
    if isinstance(value, str):
        return [{"field": path or "(text)", "kind": f.kind, "name": f.name, "replacement": f.replacement}
                for f in findings(value, spec)]
    if isinstance(value, dict):
        return [r for key, item in value.items() for r in masked_report(item, spec, f"{path}.{key}" if path else str(key))]
    if isinstance(value, list):
        return [r for i, item in enumerate(value) for r in masked_report(item, spec, f"{path}[{i}]")]
    return []


_ALWAYS = RedactionSpec(clearance="restricted")  # cards and secrets only


class LogRedaction(logging.Filter):
    """Masks card numbers and secrets in every log line, whatever logged them."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str):
            record.msg = redact_text(record.msg, _ALWAYS)
        if record.args:
            record.args = tuple(redact_text(a, _ALWAYS) if isinstance(a, str) else a for a in record.args) \
                if isinstance(record.args, tuple) else record.args
        for key, value in list(record.__dict__.items()):
            if isinstance(value, str) and key not in ("msg", "name", "levelname", "pathname", "filename", "module", "funcName"):
                record.__dict__[key] = redact_text(value, _ALWAYS)
        if record.exc_info and record.exc_info[1] is not None:
            record.exc_text = redact_text(logging.Formatter().formatException(record.exc_info), _ALWAYS)
            record.exc_info = None  # formatters would format the raw traceback again
        return True
