"""Stateful fakes of each ticket system's REST API and webhooks, served over real HTTP.

They ship with the package because ``hitl-bridge serve --sandbox`` runs them.
"""

from .base import Act, Emulator, RunningEmulator, serve, start_emulator
from .jira import JiraEmulator
from .servicenow import ServiceNowEmulator
from .zendesk import ZendeskEmulator
from .salesforce import SalesforceEmulator

EMULATORS: dict[str, type[Emulator]] = {
    "jira": JiraEmulator,
    "servicenow": ServiceNowEmulator,
    "zendesk": ZendeskEmulator,
    "salesforce": SalesforceEmulator,
}

__all__ = ["Act", "EMULATORS", "Emulator", "RunningEmulator", "serve", "start_emulator"]
