"""A refund agent whose refunds wait for a human in Jira.

    hitl-bridge serve --sandbox            # in one terminal
    python examples/refund_agent.py        # decide on http://127.0.0.1:8080/sandbox/ui
    python examples/refund_agent.py --auto edit --edit '{"order_id": "A-100", "amount": 500}'

The agent is a plain LangChain v1 agent with HumanInTheLoopMiddleware and a checkpointer;
``resume_command`` turns its pause into a Jira ticket and the reviewer's decision into the
``Command`` that continues it. A deterministic fake model stands in for the LLM.
"""

from __future__ import annotations

import sys
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from langchain.agents import create_agent  # noqa: E402
from langchain.agents.middleware import HumanInTheLoopMiddleware  # noqa: E402
from langchain_core.messages import AIMessage  # noqa: E402
from langchain_core.tools import tool  # noqa: E402
from langgraph.checkpoint.memory import InMemorySaver  # noqa: E402

from bridge.client import BridgeClient  # noqa: E402
from bridge.integrations.langchain import resume_command  # noqa: E402
from fake_model import scripted  # noqa: E402
from sandbox import decide_later, facts, parse_args  # noqa: E402


@tool
def issue_refund(order_id: str, amount: float) -> str:
    """Refund an order (here: pretend to)."""
    return f"Refunded ${amount:g} on order {order_id}."


def build_agent():
    model = scripted(
        AIMessage(content="", tool_calls=[{"name": "issue_refund", "args": {"order_id": "A-100", "amount": 750}, "id": "call_1"}]),
        AIMessage(content="The refund is sorted; I told the customer."),
    )
    return create_agent(
        model,
        tools=[issue_refund],
        middleware=[HumanInTheLoopMiddleware(interrupt_on={"issue_refund": {"allowed_decisions": ["approve", "edit", "reject"]}})],
        checkpointer=InMemorySaver(),
    )


def main() -> None:
    args = parse_args(__doc__.splitlines()[0])
    sandbox = facts(args.bridge)
    agent_key = sandbox["api_keys"]["agent"]
    agent = build_agent()
    config = {"configurable": {"thread_id": str(uuid.uuid4())}}
    result = agent.invoke({"messages": [{"role": "user", "content": "My order A-100 arrived broken, refund me."}]}, config)

    def submitted(review):
        print(f"review {review.id} submitted; decide it on {sandbox['page_url']}")
        if args.auto:
            decide_later(args.bridge, agent_key, sandbox, review.id, args.auto,
                         args.edit or ("Outside the return window." if args.auto == "reject" else None))

    with BridgeClient(args.bridge, agent_key) as bridge:
        while "__interrupt__" in result:
            command = resume_command(result, bridge, metadata={"queue": "jira"}, confidence=0.62, on_review=submitted,
                                     reasoning="Photo shows a broken item; policy allows refunds under $1000.")
            result = agent.invoke(command, config)
    for message in result["messages"][1:]:
        print(f"{message.type:>5}: {message.content}")


if __name__ == "__main__":
    main()
