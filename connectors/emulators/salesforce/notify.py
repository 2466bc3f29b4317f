"""How the emulated org announces Case and CaseComment changes: a signed JSON callout (as a
Flow calling invocable Apex would send it) or a SOAP Outbound Message, resent until acked."""

from __future__ import annotations

import json
import re
import secrets
import time
from typing import Any
from xml.sax.saxutils import escape

import httpx2

from ...signing import hmac_sha256_hex
from .schema import ORG_ID, now as _now, sf_id


class Notifications:
    """Mixed into ``SalesforceEmulator``: uses its ``settings``, ``webhooks``, ``notify`` and
    ``base_url``, and counts notifications in ``_notification``."""

    settings: Any
    webhooks: Any
    notify: str
    base_url: str
    _notification: int

    def _announce(self, sobject: str, record: dict[str, Any], kind: str) -> None:
        if sobject not in ("Case", "CaseComment") or not self.settings.webhook_url:
            return
        if self.notify == "outbound_message":
            self.webhooks.send(self.outbound_message([(sobject, record)]), {"Content-Type": "text/xml; charset=utf-8",
                                                                              "SOAPAction": '""'})
            return
        case_id = record["ParentId"] if sobject == "CaseComment" else record["Id"]
        kind = "comment_added" if sobject == "CaseComment" else kind
        self._notification += 1
        body = json.dumps({"record_id": case_id, "object": "Case", "event_id": f"evt-{self._notification:06d}-"
                           f"{secrets.token_hex(4)}", "timestamp": _now(), "kind": kind}).encode()
        stamp = str(int(time.time()))
        signature = hmac_sha256_hex(self.settings.webhook_secret or "", stamp.encode() + b"." + body)
        self.webhooks.send(body, {"Content-Type": "application/json", "X-Hitl-Timestamp": stamp,
                                  "X-Hitl-Signature": signature})

    def outbound_message(self, items: list[tuple[str, dict[str, Any]]]) -> str:
        """A SOAP ``notifications`` envelope as Salesforce's Outbound Message action sends it."""
        shown = {"Case": ["Id", "CaseNumber", "Status", "LastModifiedById", "LastModifiedDate", "HITL_Review_Id__c"],
                 "CaseComment": ["Id", "ParentId", "IsPublished", "CreatedById", "CreatedDate"]}
        notes = []
        for sobject, record in items:
            self._notification += 1
            values = "".join(f"<sf:{name}>{escape(str(record[name]).lower() if isinstance(record[name], bool) else str(record[name]))}"
                             f"</sf:{name}>" for name in shown[sobject] if record.get(name) is not None)
            notes.append(f"<Notification><Id>{sf_id('04l', self._notification)}</Id>"
                         f'<sObject xsi:type="sf:{sobject}" xmlns:sf="urn:sobject.enterprise.soap.sforce.com">'
                         f"{values}</sObject></Notification>")
        api = f"{self.base_url}/services/Soap"
        return ('<?xml version="1.0" encoding="UTF-8"?>\n<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/" '
                'xmlns:xsd="http://www.w3.org/2001/XMLSchema" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">'
                '<soapenv:Body><notifications xmlns="http://soap.sforce.com/2005/09/outbound">'
                f"<OrganizationId>{ORG_ID}</OrganizationId><ActionId>{sf_id('04k', 1)}</ActionId>"
                f'<SessionId xsi:nil="true"/><EnterpriseUrl>{api}/c/59.0/{ORG_ID[:15]}</EnterpriseUrl>'
                f"<PartnerUrl>{api}/u/59.0/{ORG_ID[:15]}</PartnerUrl>{''.join(notes)}"
                "</notifications></soapenv:Body></soapenv:Envelope>")

    def delivered(self, response: httpx2.Response) -> bool:
        """Outbound Messages count only when answered with ``<Ack>true</Ack>``. A Flow/Apex
        callout is not resent after a 4xx (e.g. 404 for a Case the bridge did not create),
        as in a real org; only a 5xx or no answer is tried again."""
        if "xml" not in response.request.headers.get("content-type", ""):
            return response.status_code < 500
        if not 200 <= response.status_code < 300:
            return False
        return re.search(r"<(\w+:)?Ack>\s*true\s*</(\w+:)?Ack>", response.text) is not None
