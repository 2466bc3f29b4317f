"""Ticket-system connectors: one module per vendor, one registry.

``connectors`` never imports ``bridge``.
"""

from .base import ConnectionConfig, Connector, Person, Ticket, TicketEvent, TicketRef, Comment
from .base import FieldUse, MappingProblem, PlannedRequest
from .jira import JiraConnector
from .servicenow import ServiceNowConnector
from .zendesk import ZendeskConnector
from .salesforce import SalesforceConnector

CONNECTORS: dict[str, type[Connector]] = {
    "jira": JiraConnector,
    "servicenow": ServiceNowConnector,
    "zendesk": ZendeskConnector,
    "salesforce": SalesforceConnector,
}


def config_for(raw: dict) -> ConnectionConfig:
    """Validate a connection's settings with its vendor's model."""
    vendor = raw.get("type")
    if vendor not in CONNECTORS:
        raise ValueError(f"unknown connection type {vendor!r}; expected one of {sorted(CONNECTORS)}")
    return CONNECTORS[vendor].config_model.model_validate(raw)


def connector_for(config: ConnectionConfig) -> Connector:
    return CONNECTORS[config.type](config)


__all__ = [
    "CONNECTORS",
    "Comment",
    "ConnectionConfig",
    "Connector",
    "FieldUse",
    "MappingProblem",
    "PlannedRequest",
    "Person",
    "Ticket",
    "TicketEvent",
    "TicketRef",
    "config_for",
    "connector_for",
]
