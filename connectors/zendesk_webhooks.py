"""Zendesk's webhooks: verified and parsed into ``TicketEvent`` hints, and set up through the API.

A webhook arrives either from a trigger (the JSON body in ``RECOMMENDED_WEBHOOK_BODY``) or
from an event subscription (``zen:event-type:ticket.*``). Both are signed by Zendesk:
``X-Zendesk-Webhook-Signature = base64(HMAC-SHA256(secret, timestamp + body))``, with the
timestamp in its own header and checked against the replay window. Either only names the
ticket to read back.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from zenpy.lib.api_objects import Trigger, Webhook

from .base import TicketEvent
from .errors import WebhookVerificationError
from .signing import check_timestamp, hmac_sha256_b64, verify_signature

if TYPE_CHECKING:
    from zenpy import Zenpy

    from .zendesk import ZendeskConfig

SIGNATURE_HEADER = "x-zendesk-webhook-signature"
TIMESTAMP_HEADER = "x-zendesk-webhook-signature-timestamp"
INVOCATION_HEADER = "x-zendesk-webhook-invocation-id"

# The body a trigger's "Notify active webhook" action should send (docs/zendesk.md).
RECOMMENDED_WEBHOOK_BODY = {
    "ticket_id": "{{ticket.id}}",
    "external_id": "{{ticket.external_id}}",
    "status": "{{ticket.status}}",
    "tags": "{{ticket.tags}}",
    "updated_at": "{{ticket.updated_at_with_timestamp}}",
    "event": "ticket_updated",
}
EVENT_KINDS = {
    "status_changed": "status_changed",
    "comment_added": "comment_added",
    "created": "created",
    "ticket_created": "created",
    "deleted": "deleted",
    "soft_deleted": "deleted",
    "permanently_deleted": "deleted",
}


def parse_time(value: Any) -> datetime | None:
    if isinstance(value, datetime):
        return value
    if not value:
        return None
    try:
        return datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return None


def parse_webhook(config: "ZendeskConfig", headers: Mapping[str, str], raw_body: bytes) -> list[TicketEvent]:
    """Verify first (signature, then the replay window), then parse either kind of body."""
    lowered = {k.lower(): v for k, v in headers.items()}
    stamp = lowered.get(TIMESTAMP_HEADER)
    if not stamp:
        raise WebhookVerificationError(f"missing timestamp header {TIMESTAMP_HEADER}")
    verify_signature(lowered.get(SIGNATURE_HEADER), config.secrets(),
                     lambda secret: hmac_sha256_b64(secret, stamp.encode() + raw_body), header=SIGNATURE_HEADER)
    occurred = check_timestamp(stamp, tolerance=config.webhook_tolerance_seconds)
    try:
        body = json.loads(raw_body)
    except ValueError as exc:
        raise WebhookVerificationError("webhook body is not JSON") from exc
    if not isinstance(body, dict):
        raise WebhookVerificationError("webhook body is not a JSON object")
    event_id = lowered.get(INVOCATION_HEADER)
    if str(body.get("type", "")).startswith("zen:event"):
        ticket_id, kind = _parse_event_subscription(body)
        event_id = event_id or str(body.get("id") or "")
        when = parse_time(body.get("time"))
    else:
        ticket_id = str(body.get("ticket_id") or body.get("id") or "").strip()
        kind = EVENT_KINDS.get(str(body.get("event") or "").lower(), "updated")
        when = parse_time(body.get("updated_at"))
    if not ticket_id.isdecimal():
        raise WebhookVerificationError("webhook body names no ticket id")
    event_id = event_id or hashlib.sha256(raw_body).hexdigest()
    return [TicketEvent(event_id=event_id, ticket_key=ticket_id, kind=kind,
                        occurred_at=when or datetime.fromtimestamp(occurred, tz=timezone.utc))]


def _parse_event_subscription(body: dict[str, Any]) -> tuple[str, str]:
    detail = body.get("detail") if isinstance(body.get("detail"), dict) else {}
    ticket_id = str(detail.get("id") or "")
    subject = str(body.get("subject") or "")
    if not ticket_id and subject.startswith("zen:ticket:"):
        ticket_id = subject.rsplit(":", 1)[1]
    event_type = str(body["type"]).rsplit(":", 1)[-1]  # zen:event-type:ticket.status_changed
    if not event_type.startswith("ticket."):
        raise WebhookVerificationError(f"not a ticket event: {event_type[:60]}")
    return ticket_id, EVENT_KINDS.get(event_type.split(".", 1)[1], "updated")


def ensure_webhook_and_trigger(client: "Zenpy", *, endpoint_url: str, name: str) -> dict[str, Any]:
    """Create (or find by name) the webhook and the trigger that calls it; idempotent.
    Zendesk's errors escape untranslated: the connector translates them."""
    created = False
    webhook = next((w for w in client.webhooks.list(filter=name) if w.name == name), None)
    if webhook is None:
        webhook = client.webhooks.create(Webhook(
            name=name, status="active", endpoint=endpoint_url, http_method="POST", request_format="json",
            subscriptions=["conditional_ticket_events"],
            description="hitl-bridge: ticket changes that may decide a review"))
        created = True
    trigger = next((t for t in client.triggers() if t.title == name), None)
    if trigger is None:
        trigger = client.triggers.create(Trigger(
            title=name, description="Tells hitl-bridge a ticket changed; the bridge reads the decision back.",
            conditions={"all": [{"field": "update_type", "operator": "is", "value": "Change"}], "any": []},
            actions=[{"field": "notification_webhook",
                      "value": [webhook.id, json.dumps(RECOMMENDED_WEBHOOK_BODY, indent=2)]}]))
        created = True
    secret = client.webhooks.show_secret(webhook.id)
    secret = secret.to_dict() if hasattr(secret, "to_dict") else dict(secret or {})
    return {"webhook_id": webhook.id, "trigger_id": trigger.id, "endpoint": webhook.endpoint,
            "signing_secret": secret.get("secret"), "created": created}
