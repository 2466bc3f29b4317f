"""A support agent whose drafted Zendesk reply is reviewed in the customer's own ticket.

    hitl-bridge serve --sandbox            # in one terminal
    python examples/support_agent.py       # review the draft on http://127.0.0.1:8080/sandbox/ui
    python examples/support_agent.py --auto edit --edit "Hi! Your refund is on its way."

The draft is the action ``reply`` (``args: {"body": ...}``) and the review's ``origin`` is
the customer's ticket: the sandbox's Zendesk mapping puts the draft there as an internal
note, the agent tags the ticket ``review_approved`` (after an optional ``/edit`` comment),
and the bridge posts the approved text as the public reply. A fake model drafts the reply.
"""

from __future__ import annotations

import sys
import time
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
from sandbox import decide_later, emulator, facts, parse_args  # noqa: E402

DRAFT = "Hi, sorry your order arrived damaged. We have refunded it in full; you will see it in 3-5 days."


@tool
def reply(body: str) -> str:
    """Reply to the customer on their ticket."""
    return "Your reply was approved; the bridge posts it on the ticket."


def main() -> None:
    args = parse_args(__doc__.splitlines()[0])
    sandbox = facts(args.bridge)
    agent_key = sandbox["api_keys"]["agent"]
    with emulator(sandbox, "zendesk") as zendesk:
        customer_ticket = zendesk.get("/_emulator/tickets").json()[0]
    print(f"working on Zendesk ticket {customer_ticket['key']}: {customer_ticket['title']}")

    model = scripted(
        AIMessage(content="", tool_calls=[{"name": "reply", "args": {"body": DRAFT}, "id": "call_1"}]),
        AIMessage(content="Replied to the customer."),
    )
    agent = create_agent(model, tools=[reply], checkpointer=InMemorySaver(),
                         middleware=[HumanInTheLoopMiddleware(interrupt_on={"reply": {"allowed_decisions": ["approve", "edit", "reject"]}})])
    config = {"configurable": {"thread_id": str(uuid.uuid4())}}
    result = agent.invoke({"messages": [{"role": "user", "content": customer_ticket["description"] or "help"}]}, config)

    def submitted(review):
        print(f"review {review.id} submitted; the draft is on the ticket for review ({sandbox['page_url']})")
        if args.auto:
            decide_later(args.bridge, agent_key, sandbox, review.id, args.auto, args.edit)

    with BridgeClient(args.bridge, agent_key) as bridge:
        review_ids = []
        while "__interrupt__" in result:
            command = resume_command(
                result, bridge, title="Reply to the customer", metadata={"queue": "zendesk"},
                origin={"connection": "zendesk", "ticket_id": customer_ticket["key"]},
                on_review=lambda r: (review_ids.append(r.id), submitted(r)),
            )
            result = agent.invoke(command, config)
        for review_id in review_ids:  # the public reply is posted by the bridge, tracked as the post-back
            for _ in range(100):
                if bridge.get(review_id).postback.state in ("delivered", "not_needed", "dead"):
                    break
                time.sleep(0.1)
    print(f"agent: {result['messages'][-1].content}")
    with emulator(sandbox, "zendesk") as zendesk:
        ticket = next(t for t in zendesk.get("/_emulator/tickets").json() if t["key"] == customer_ticket["key"])
    for comment in ticket["comments"]:
        print(f"  [{'public' if comment.get('public') else 'internal'}] {comment['body'][:120]}")


if __name__ == "__main__":
    main()
