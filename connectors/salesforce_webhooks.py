"""Salesforce's two kinds of notification, verified and parsed into ``TicketEvent`` hints.

Outbound Messages (SOAP) are unsigned: authenticated by the organization id, parsed with a
hardened XML parser and answered with the SOAP Ack Salesforce needs (or it resends for 24
hours). A Flow or Apex callout is JSON signed with the connection's secret (HMAC-SHA256 over
timestamp + "." + body, with a replay window). Either only names the record to read back.
"""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from datetime import datetime, timezone
from typing import TYPE_CHECKING

from defusedxml import DefusedXmlException, DTDForbidden, EntitiesForbidden, ExternalReferenceForbidden
from defusedxml.ElementTree import fromstring as safe_fromstring

from .base import TicketEvent
from .errors import WebhookVerificationError
from .signing import check_timestamp, hmac_sha256_hex, verify_signature

if TYPE_CHECKING:
    from .salesforce_auth import SalesforceConfig

MAX_WEBHOOK_BYTES = 1024 * 1024
OUTBOUND_NS = "http://soap.sforce.com/2005/09/outbound"
SOBJECT_NS = "urn:sobject.enterprise.soap.sforce.com"
XSI_TYPE = "{http://www.w3.org/2001/XMLSchema-instance}type"
OUTBOUND_EVENT_PREFIX = "om:"
TIMESTAMP_HEADER = "X-Hitl-Timestamp"
SIGNATURE_HEADER = "X-Hitl-Signature"
ACK_BODY = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n'
    b'<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/">'
    b'<soapenv:Body><notificationsResponse xmlns="http://soap.sforce.com/2005/09/outbound">'
    b"<Ack>true</Ack></notificationsResponse></soapenv:Body></soapenv:Envelope>"
)
RECORD_ID = re.compile(r"[A-Za-z0-9]{15}(?:[A-Za-z0-9]{3})?")
OBJECT_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,79}")
_EVENT_KINDS = {"status_changed", "comment_added", "updated", "created", "deleted"}


def _header(headers: Mapping[str, str], name: str) -> str | None:
    wanted = name.lower()
    return next((v for k, v in headers.items() if k.lower() == wanted), None)


def parse_notification(config: "SalesforceConfig", headers: Mapping[str, str], raw_body: bytes) -> list[TicketEvent]:
    """Verify first, then parse: an Outbound Message (XML) or a signed Flow/Apex callout."""
    if len(raw_body) > MAX_WEBHOOK_BYTES:
        raise WebhookVerificationError(f"notification body is larger than {MAX_WEBHOOK_BYTES} bytes")
    content_type = (_header(headers, "content-type") or "").lower()
    start = raw_body.lstrip(b"\xef\xbb\xbf \t\r\n")[:1]
    if "xml" in content_type or start == b"<":
        return _outbound_message(config, raw_body)
    return _flow_callout(config, headers, raw_body)


def acknowledgement(events: list[TicketEvent]) -> tuple[bytes, str] | None:
    """Outbound Messages need the SOAP Ack, or Salesforce resends them (an empty
    ``notifications`` gets one too: only Outbound Messages can parse to no events)."""
    if not events or any(e.event_id.startswith(OUTBOUND_EVENT_PREFIX) for e in events):
        return ACK_BODY, "text/xml; charset=utf-8"
    return None


def _flow_callout(config: "SalesforceConfig", headers: Mapping[str, str], raw_body: bytes) -> list[TicketEvent]:
    """A Flow/Apex callout: hex HMAC-SHA256(secret, timestamp + "." + body)."""
    timestamp = _header(headers, TIMESTAMP_HEADER)
    if not timestamp:
        raise WebhookVerificationError(f"missing {TIMESTAMP_HEADER} header")
    signed = timestamp.encode() + b"." + raw_body
    verify_signature(
        _header(headers, SIGNATURE_HEADER), config.secrets(),
        lambda secret: hmac_sha256_hex(secret, signed), header=SIGNATURE_HEADER,
    )
    stamp = check_timestamp(timestamp, tolerance=config.webhook_tolerance_seconds)
    try:
        payload = json.loads(raw_body)
    except ValueError as exc:
        raise WebhookVerificationError("callout body is not JSON") from exc
    if not isinstance(payload, dict) or not isinstance(payload.get("record_id"), str):
        raise WebhookVerificationError("callout body needs a record_id string")
    record_id, sobject = payload["record_id"], str(payload.get("object") or config.object)
    if not RECORD_ID.fullmatch(record_id) or not OBJECT_NAME.fullmatch(sobject):
        raise WebhookVerificationError("callout names no valid record")
    kind = payload.get("kind") if payload.get("kind") in _EVENT_KINDS else "updated"
    event_id = str(payload.get("event_id") or hmac_sha256_hex("salesforce-flow", raw_body))[:200]
    key = record_id if sobject == config.object else f"{sobject}/{record_id}"
    occurred = datetime.fromtimestamp(stamp, timezone.utc)
    return [TicketEvent(event_id=f"flow:{event_id}", ticket_key=key, kind=kind, occurred_at=occurred)]


def _outbound_message(config: "SalesforceConfig", raw_body: bytes) -> list[TicketEvent]:
    """SOAP ``notifications``: unsigned, so the organization id must match ours."""
    expected = (config.organization_id or "").strip()
    if not expected:
        raise WebhookVerificationError("Outbound Messages need organization_id on the connection")
    root = _parse_xml(raw_body)
    body = root.find("{http://schemas.xmlsoap.org/soap/envelope/}Body")
    notifications = None if body is None else body.find(f"{{{OUTBOUND_NS}}}notifications")
    if notifications is None:
        raise WebhookVerificationError("not a Salesforce Outbound Message (no soapenv:Body/notifications)")
    org = (notifications.findtext(f"{{{OUTBOUND_NS}}}OrganizationId") or "").strip()
    if not org or org[:15] != expected[:15]:
        raise WebhookVerificationError("Outbound Message is from another organization")
    events = []
    for note in notifications.findall(f"{{{OUTBOUND_NS}}}Notification"):
        note_id = (note.findtext(f"{{{OUTBOUND_NS}}}Id") or "").strip()
        sobject = note.find(f"{{{OUTBOUND_NS}}}sObject")
        if not note_id or sobject is None:
            raise WebhookVerificationError("Notification without Id or sObject")
        type_name = (sobject.get(XSI_TYPE) or "").split(":")[-1] or config.object
        record_id = (sobject.findtext(f"{{{SOBJECT_NS}}}Id") or "").strip()
        kind = "updated"
        if type_name == "CaseComment":  # a comment names its Case
            type_name, kind = "Case", "comment_added"
            record_id = (sobject.findtext(f"{{{SOBJECT_NS}}}ParentId") or "").strip()
        if not RECORD_ID.fullmatch(record_id) or not OBJECT_NAME.fullmatch(type_name):
            raise WebhookVerificationError("Notification names no valid record")
        key = record_id if type_name == config.object else f"{type_name}/{record_id}"
        events.append(TicketEvent(event_id=f"{OUTBOUND_EVENT_PREFIX}{note_id}", ticket_key=key, kind=kind))
    return events


def _parse_xml(raw_body: bytes) -> ET.Element:
    """defusedxml with DTDs forbidden: no entity expansion, no external entities."""
    try:
        return safe_fromstring(raw_body, forbid_dtd=True, forbid_entities=True, forbid_external=True)
    except DTDForbidden as exc:
        raise WebhookVerificationError("refused XML with a DTD (entity expansion or external entities)") from exc
    except EntitiesForbidden as exc:
        raise WebhookVerificationError("refused XML that declares entities") from exc
    except ExternalReferenceForbidden as exc:
        raise WebhookVerificationError("refused XML that references external entities") from exc
    except (ET.ParseError, DefusedXmlException, ValueError) as exc:
        raise WebhookVerificationError(f"malformed XML: {type(exc).__name__}") from exc
