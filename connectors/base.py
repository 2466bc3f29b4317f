"""The one interface every ticket system implements, and the small values it returns.

Connectors do vendor I/O and classify errors (``connectors.errors``); the bridge decides
policy. Fields reach a connector already rendered into the vendor's own shape by the
mapping engine; vendor mechanics (Jira transitions, ServiceNow journals, Zendesk audits,
Salesforce CaseComments) stay inside the connector.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, ClassVar, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

from .signing import DEFAULT_TOLERANCE_SECONDS


class ConnectionConfig(BaseModel):
    """What every connection has. Vendors subclass it with their credentials.

    Secrets are ``SecretStr`` so they never show up in ``repr``, logs or error messages.
    The model doubles as the admin page's form schema.
    """

    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="The connection's name, used in URLs and mappings.")
    type: str = Field(description="jira, servicenow, zendesk or salesforce")
    base_url: str = Field(description="The system's base URL, e.g. https://acme.atlassian.net")
    webhook_secrets: list[SecretStr] = Field(
        default_factory=list,
        description="Secrets accepted on incoming webhooks; several during a rotation.",
    )
    webhook_tolerance_seconds: float = Field(
        default=DEFAULT_TOLERANCE_SECONDS, description="Replay window for webhook timestamps."
    )
    ca_bundle: str | None = Field(
        default=None, description="PEM file of extra certificate authorities to trust."
    )
    timeout_seconds: float = Field(default=30.0, gt=0)
    rate_limit_per_second: float | None = Field(
        default=None, gt=0,
        description="Pace this worker's calls to the system under its API rate limit (per worker process).",
    )

    @field_validator("base_url")
    @classmethod
    def _strip_slash(cls, value: str) -> str:
        return value.rstrip("/")

    def secrets(self) -> list[str]:
        return [s.get_secret_value() for s in self.webhook_secrets]


@dataclass(frozen=True)
class Person:
    """Someone as the ticket system knows them."""

    id: str
    name: str | None = None
    email: str | None = None


_ACCOUNTS: dict[tuple[str, str], Person] = {}


def remember_account(server: str, login: str, account: Person) -> Person:
    """Keep who the bridge is on ``server`` when logged in as ``login`` (``check``'s answer)."""
    _ACCOUNTS[(server, login)] = account
    return account


def bridge_account(server: str, login: str, check: Callable[[], Person]) -> Person:
    """Who the bridge is on ``server`` as ``login`` (its own comments and changes are told
    apart by it): asked once per process, not once per worker thread. Each thread has its
    own connector, and each asked on its first job, against the API's rate limit (a cold
    bench phase: 38 calls to Jira's /myself)."""
    return _ACCOUNTS.get((server, login)) or check()


@dataclass(frozen=True)
class TicketRef:
    """Where a ticket is.

    ``key`` is what the API addresses it by and what webhooks carry (Jira issue id,
    ServiceNow sys_id, Zendesk id, Salesforce record Id); ``display`` is what people call it (HITL-7, INC0010001, #35436,
    Case 00001026); ``url`` opens it in a browser.
    """

    key: str
    display: str
    url: str


@dataclass(frozen=True)
class Comment:
    id: str
    body: str
    author: Person | None
    public: bool
    created: datetime | None = None
    by_bridge: bool = False
    """True when the bridge's own account wrote it (such comments never decide anything)."""


@dataclass(frozen=True)
class Ticket:
    """A ticket as read back through the API: the only thing decisions are made from."""

    ref: TicketRef
    status: str | None
    fields: Mapping[str, Any]
    """Vendor field name -> raw value (status, approval, tags, customfield_10050, ...)."""
    labels: Mapping[str, str] = field(default_factory=dict)
    """Display labels for fields whose raw value is a code (ServiceNow choices, ...)."""
    comments: Sequence[Comment] = ()
    """Oldest first."""
    changed_by: Person | None = None
    """Who made the most recent change to the status (or to the deciding field)."""
    changed_at: datetime | None = None
    """When that change was made, where the system says (tells one approval from the next)."""
    updated: datetime | None = None


@dataclass(frozen=True)
class TicketEvent:
    """What a verified webhook says happened. A hint: the ticket is read back to decide."""

    event_id: str
    """Stable across the vendor's retries of the same delivery; used to deduplicate."""
    ticket_key: str
    kind: str
    """status_changed, comment_added, updated, created, deleted."""
    occurred_at: datetime | None = None


@dataclass(frozen=True)
class PlannedRequest:
    """One HTTP call a connector would make, shown to an admin by the preview (never sent).
    No credentials: the Authorization header is left out."""

    method: str
    url: str
    body: Any
    purpose: str


@dataclass(frozen=True)
class FieldUse:
    """Something a mapping names in the vendor's system, for ``doctor`` to look up.

    ``where`` is opaque to the connector (the bridge turns it into a file and line) and is
    echoed back in every problem about this use."""

    where: str
    field: str
    """The vendor field as the mapping writes it (``issuetype``, ``__table``, ``custom_fields.360000102``)."""
    value: Any = None
    """A literal value the mapping sets or expects (None: only the field must exist)."""
    role: str = "create"
    """create (a new ticket's field), update (set on an existing ticket), decide (read to decide)."""


@dataclass(frozen=True)
class MappingProblem:
    where: str
    message: str


@runtime_checkable
class Connector(Protocol):
    name: ClassVar[str]
    config_model: ClassVar[type[ConnectionConfig]]

    def check(self) -> Person:
        """Cheap credential check; returns the account the bridge acts as."""

    def create_ticket(self, fields: Mapping[str, Any], *, review_id: str) -> TicketRef:
        """Create a ticket stamped with ``review_id`` so ``find_ticket`` can find it again."""

    def find_ticket(self, review_id: str) -> TicketRef | None:
        """The ticket created for ``review_id``, if any (after a lost response or a crash)."""

    def get_ticket(self, key: str) -> Ticket:
        """Read a ticket back with its status, fields, comments and last changer."""

    def update_ticket(self, key: str, fields: Mapping[str, Any]) -> None:
        """Change fields; a ``status`` entry moves the ticket the vendor's way."""

    def add_comment(self, key: str, body: str, *, public: bool) -> Comment:
        """Add a comment: public reaches the customer, otherwise an internal note."""

    def verify_and_parse_webhook(
        self, headers: Mapping[str, str], raw_body: bytes
    ) -> list[TicketEvent]:
        """Verify first (raise WebhookVerificationError), then parse into events."""

    def acknowledge(self, events: list[TicketEvent]) -> tuple[bytes, str] | None:
        """The body and content type the vendor needs in reply to a webhook (Salesforce's
        SOAP Ack), or None when a plain JSON 202 will do."""

    def close(self) -> None:
        """Release sessions and sockets."""

    # Optional: the bridge calls these only when a connector has them (``getattr``).
    def plan_requests(
        self, fields: Mapping[str, Any], *, review_id: str, comment: str | None, origin_key: str | None = None
    ) -> list[PlannedRequest]:
        """Optional. The requests ``create_ticket`` (or, with ``origin_key``,
        ``update_ticket``) and the opening ``add_comment`` would send, for the preview."""

    def check_mapping(self, uses: Sequence[FieldUse]) -> list[MappingProblem]:
        """Optional. Read-only metadata calls: does everything the mapping names exist
        (project, issue type, table, object, fields, statuses, choice and picklist values)?"""

    def groups_of(self, person: Person) -> set[str]:
        """Optional. The names of the groups (Jira groups, ServiceNow groups, Zendesk groups,
        Salesforce queues or permission sets) ``person`` belongs to, for ``reviewers.groups``."""

    def reply_by_email(self, key: str, body: str) -> bool:
        """Optional. Send ``body`` to the ticket's customer as an e-mail recorded on the ticket
        (``reply.channel: email``; Salesforce: an EmailMessage). Idempotent: False when the
        same e-mail is already there, True when this call created it."""
