"""Jira Cloud emulator (REST v2 subset the ``jira`` library calls, signed admin webhooks)."""

from .emulator import JiraEmulator

__all__ = ["JiraEmulator"]
