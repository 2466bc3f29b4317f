"""ServiceNow emulator (Table API subset + the Business Rule's signed notification)."""

from .emulator import ServiceNowEmulator

__all__ = ["ServiceNowEmulator"]
