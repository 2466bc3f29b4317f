"""hitl-bridge: human approvals for AI agents inside the ticket tools people already use."""

__version__ = "0.1.0"
