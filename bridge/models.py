"""Tables: reviews, the job outbox, processed webhook events and the audit trail."""

from __future__ import annotations

import os
import time
from datetime import datetime
from typing import Any

from sqlalchemy import JSON, ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from .db import UTCDateTime, utcnow


class Base(DeclarativeBase):
    type_annotation_map = {datetime: UTCDateTime(), dict[str, Any]: JSON(), list[Any]: JSON()}


def new_id(prefix: str) -> str:
    """Time-ordered ids (48-bit milliseconds + 64 random bits): newest-first lists and
    cursors are a plain index scan on the primary key."""
    return f"{prefix}_{int(time.time() * 1000):012x}{os.urandom(8).hex()}"


class Review(Base):
    __tablename__ = "reviews"

    id: Mapped[str] = mapped_column(String(48), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
    status: Mapped[str] = mapped_column(String(20))
    title: Mapped[str] = mapped_column(String(255))
    request: Mapped[dict[str, Any]]
    api_key_name: Mapped[str] = mapped_column(String(100))
    idempotency_key: Mapped[str | None] = mapped_column(String(255))
    request_hash: Mapped[str] = mapped_column(String(64))

    route_name: Mapped[str | None] = mapped_column(String(100))
    route_mode: Mapped[str | None] = mapped_column(String(20))
    route_reason: Mapped[str] = mapped_column(Text, default="")
    mapping_name: Mapped[str | None] = mapped_column(String(100))
    mapping_version: Mapped[str | None] = mapped_column(String(32))
    mapping_snapshot: Mapped[dict[str, Any] | None]

    ticket_connection: Mapped[str | None] = mapped_column(String(100))
    ticket_key: Mapped[str | None] = mapped_column(String(255))
    ticket_display: Mapped[str | None] = mapped_column(String(255))
    ticket_url: Mapped[str | None] = mapped_column(Text)

    decision: Mapped[dict[str, Any] | None]
    decided_at: Mapped[datetime | None]
    delivered_at: Mapped[datetime | None]
    shadow_decision: Mapped[dict[str, Any] | None]
    refusal: Mapped[str | None] = mapped_column(String(64))
    error: Mapped[dict[str, Any] | None]
    expires_at: Mapped[datetime | None]

    __table_args__ = (
        UniqueConstraint("api_key_name", "idempotency_key", name="uq_reviews_idempotency"),
        Index("ix_reviews_ticket", "ticket_connection", "ticket_key"),
        Index("ix_reviews_status_id", "status", "id"),
        Index("ix_reviews_route_id", "route_name", "id"),
    )


class Job(Base):
    """The outbox: every piece of network work, written in the same transaction as the
    state change that calls for it, and done by the worker at least once."""

    __tablename__ = "jobs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    review_id: Mapped[str] = mapped_column(ForeignKey("reviews.id"), index=True)
    kind: Mapped[str] = mapped_column(String(40))
    dedupe_key: Mapped[str] = mapped_column(String(200), unique=True)
    state: Mapped[str] = mapped_column(String(20), default="pending")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    max_attempts: Mapped[int] = mapped_column(Integer, default=12)
    run_at: Mapped[datetime] = mapped_column(default=utcnow)
    locked_until: Mapped[datetime | None]
    locked_by: Mapped[str | None] = mapped_column(String(100))
    last_error: Mapped[str | None] = mapped_column(Text)
    payload: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[datetime | None]

    __table_args__ = (Index("ix_jobs_due", "state", "run_at"),)


class WebhookEvent(Base):
    __tablename__ = "webhook_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    connection: Mapped[str] = mapped_column(String(100))
    event_id: Mapped[str] = mapped_column(String(255))
    ticket_key: Mapped[str] = mapped_column(String(255))
    received_at: Mapped[datetime] = mapped_column(default=utcnow)

    __table_args__ = (UniqueConstraint("connection", "event_id", name="uq_webhook_events"),)


class AuditEvent(Base):
    """Append-only and hash-chained: each row's hash covers its content and the previous hash."""

    __tablename__ = "audit_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    review_id: Mapped[str | None] = mapped_column(String(48), index=True)
    at: Mapped[datetime] = mapped_column(default=utcnow)
    actor: Mapped[str] = mapped_column(String(255))
    kind: Mapped[str] = mapped_column(String(60))
    data: Mapped[dict[str, Any]] = mapped_column(default=dict)
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64))


class AuditHead(Base):
    """One row: the chain's latest hash. Updating it serialises appends on every backend."""

    __tablename__ = "audit_head"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    hash: Mapped[str] = mapped_column(String(64))
    count: Mapped[int] = mapped_column(Integer, default=0)


class MappingVersion(Base):
    """One saved state of a file in ``mappings/`` (a mapping or ``routes.yaml``): the full
    text, who saved it, and the diff from the version before. The file stays the source of
    truth; these rows are its history, so any earlier state can be restored."""

    __tablename__ = "mapping_versions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(100))
    number: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    author: Mapped[str] = mapped_column(String(255))
    action: Mapped[str] = mapped_column(String(20))
    """baseline (the file as found on disk), save, patch, restore."""
    restored_from: Mapped[int | None] = mapped_column(Integer)
    etag: Mapped[str] = mapped_column(String(40))
    mapping_version: Mapped[str | None] = mapped_column(String(32))
    text: Mapped[str] = mapped_column(Text)
    diff: Mapped[str] = mapped_column(Text, default="")

    __table_args__ = (UniqueConstraint("name", "number", name="uq_mapping_versions_number"),)


# ----- governance (issue 9): approvals towards a quorum, API keys, purgeable audit content -----


class ReviewApproval(Base):
    """One reviewer's approval towards a mapping's quorum; one row per person per review, so
    the same person approving twice counts once."""

    __tablename__ = "review_approvals"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    review_id: Mapped[str] = mapped_column(ForeignKey("reviews.id"), index=True)
    person_key: Mapped[str] = mapped_column(String(255))
    change_ref: Mapped[str] = mapped_column(String(64))
    reviewer: Mapped[dict[str, Any] | None]
    at: Mapped[datetime] = mapped_column(default=utcnow)

    __table_args__ = (UniqueConstraint("review_id", "person_key", name="uq_review_approvals_person"),)


class StoredApiKey(Base):
    """An API key made with ``hitl-bridge keys create``: only its hash is kept."""

    __tablename__ = "api_keys"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    hash: Mapped[str] = mapped_column(String(80), unique=True)
    scopes: Mapped[list[Any]]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    created_by: Mapped[str] = mapped_column(String(255))
    expires_at: Mapped[datetime | None]
    revoked_at: Mapped[datetime | None]
    rate_limit_per_minute: Mapped[int | None] = mapped_column(Integer)


class AuditContent(Base):
    """The content part of an audit event (titles, decisions, messages). The event's hash
    covers only a salted digest of it, so retention can delete this row and the chain
    still verifies."""

    __tablename__ = "audit_content"

    event_id: Mapped[int] = mapped_column(ForeignKey("audit_events.id"), primary_key=True)
    review_id: Mapped[str | None] = mapped_column(String(48), index=True)
    salt: Mapped[str] = mapped_column(String(32))
    content: Mapped[dict[str, Any]]


class RateWindow(Base):
    """Submissions per API key in one fixed one-minute window, shared by every instance on
    the database (``keys.count_submission``); a key's older windows are deleted as it
    opens a new one."""

    __tablename__ = "rate_windows"

    key_name: Mapped[str] = mapped_column(String(100), primary_key=True)
    window_start: Mapped[int] = mapped_column(Integer, primary_key=True)
    """Unix seconds at the start of the minute."""
    count: Mapped[int] = mapped_column(Integer, default=0)
