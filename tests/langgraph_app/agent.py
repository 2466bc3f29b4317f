"""The agent the tests' LangGraph server serves: ``create_agent`` with
``HumanInTheLoopMiddleware`` and a scripted model. Tools append what they ran with to
``$HITL_TEST_TOOL_LOG`` so a test can see whether, and how, a tool ran."""

from __future__ import annotations

import json
import os

from langchain.agents import create_agent
from langchain.agents.middleware import HumanInTheLoopMiddleware
from langchain_core.tools import tool

from fake_model import ScriptedChatModel


def _ran(name: str, args: dict) -> None:
    path = os.environ.get("HITL_TEST_TOOL_LOG")
    if path:
        with open(path, "a") as log:
            log.write(json.dumps({"tool": name, "args": args}) + "\n")


@tool
def issue_refund(order_id: str, amount: float) -> str:
    """Refund an order."""
    _ran("issue_refund", {"order_id": order_id, "amount": amount})
    return f"refunded {amount:g} on {order_id}"


@tool
def send_email(to: str, body: str) -> str:
    """Email a customer."""
    _ran("send_email", {"to": to, "body": body})
    return f"emailed {to}"


TOOLS = [issue_refund, send_email]
GATED = {"issue_refund": True, "send_email": {"allowed_decisions": ["approve", "reject"]}}

agent = create_agent(ScriptedChatModel(), tools=TOOLS, middleware=[HumanInTheLoopMiddleware(interrupt_on=GATED)])
agent_per_call = create_agent(
    ScriptedChatModel(), tools=TOOLS, middleware=[HumanInTheLoopMiddleware(interrupt_on=GATED, interrupt_mode="per_call")]
)
