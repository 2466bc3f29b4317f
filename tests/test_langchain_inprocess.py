"""LangChain in the agent's own process, through a real bridge and the Jira emulator:
the ``__interrupt__`` helper (sync and async), the tool wrapper, the callback handler."""

from __future__ import annotations

import asyncio
import json
import sys
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from langchain.agents import create_agent
from langchain.agents.middleware import HumanInTheLoopMiddleware
from langchain_core.messages import AIMessage, ToolMessage
from langchain_core.tools import tool
from langgraph.checkpoint.memory import InMemorySaver

from bridge.client import AsyncBridgeClient, BridgeClient, BridgeClientError, ReviewNotDecided
from bridge.integrations.langchain import LowConfidenceReview, aresume_command, gate_tool, resume_command
from harness import KEYS, Bridge
from helpers import wait_for

sys.path.insert(0, str(Path(__file__).parent / "langgraph_app"))
from fake_model import ScriptedChatModel  # noqa: E402

ROUTING = {"metadata": {"queue": "jira"}}


@pytest.fixture
def bridge(tmp_path):
    b = Bridge(tmp_path).start()
    yield b
    b.stop()


@pytest.fixture
def client(bridge):
    with BridgeClient(bridge.url, KEYS["agent"]) as c:
        yield c


class Tools:
    """Tools that record what they ran with."""

    def __init__(self):
        self.runs: list[tuple[str, dict]] = []
        runs = self.runs

        @tool
        def issue_refund(order_id: str, amount: float) -> str:
            """Refund an order."""
            runs.append(("issue_refund", {"order_id": order_id, "amount": amount}))
            return f"refunded {amount:g} on {order_id}"

        @tool
        def send_email(to: str, body: str) -> str:
            """Email a customer."""
            runs.append(("send_email", {"to": to, "body": body}))
            return f"emailed {to}"

        self.issue_refund, self.send_email = issue_refund, send_email


def script(*calls: dict) -> dict:
    return {"messages": [{"role": "user", "content": json.dumps({"tool_calls": list(calls)})}]}


def refund(amount: float = 750) -> dict:
    return {"name": "issue_refund", "args": {"order_id": "A-100", "amount": amount}}


EMAIL = {"name": "send_email", "args": {"to": "carol@example.com", "body": "Refunded."}}


def middleware_agent(tools: Tools, mode: str = "batched"):
    gated = {"issue_refund": True, "send_email": {"allowed_decisions": ["approve", "reject"]}}
    return create_agent(ScriptedChatModel(), tools=[tools.issue_refund, tools.send_email], checkpointer=InMemorySaver(),
                        middleware=[HumanInTheLoopMiddleware(interrupt_on=gated, interrupt_mode=mode)])


def in_background(fn):
    pool = ThreadPoolExecutor(max_workers=1)
    future = pool.submit(fn)
    pool.shutdown(wait=False)
    return future


def next_ticket(bridge: Bridge, seen: set[str]) -> tuple[str, str]:
    """The (review id, ticket key) of the next review that got a ticket."""
    def find():
        with bridge.client() as c:
            for review in c.get("/v1/reviews", params={"limit": 100}).json()["items"]:
                if review["id"] not in seen and review["ticket"] and review["status"] == "open":
                    return review["id"], review["ticket"]["key"]
        return None
    review_id, key = wait_for(find, timeout=15, what="a new ticket")
    seen.add(review_id)
    return review_id, key


def final_text(result) -> str:
    return [m for m in result["messages"] if isinstance(m, AIMessage)][-1].content


# ----- __interrupt__ helper ------------------------------------------------------------------


def test_in_process_two_calls_edit_then_approve_in_order(bridge, client):
    tools = Tools()
    agent = middleware_agent(tools)
    config = {"configurable": {"thread_id": str(uuid.uuid4())}}
    paused = agent.invoke(script(refund(), EMAIL), config)
    assert "__interrupt__" in paused and tools.runs == []

    command = in_background(lambda: resume_command(paused, client, timeout=20, **ROUTING))
    review_id, key = next_ticket(bridge, set())
    assert [a["name"] for a in bridge.review(review_id)["request"]["action_requests"]] == ["issue_refund", "send_email"]
    assert tools.runs == []
    bridge.act("jira", key, "edit", "issue_refund " + json.dumps({"order_id": "A-100", "amount": 500}))
    result = agent.invoke(command.result(timeout=20), config)
    assert [d["type"] for d in bridge.review(review_id)["decision"]["decisions"]] == ["edit", "approve"]
    # The two tools run as parallel tasks: which finishes first is not fixed.
    assert sorted(tools.runs) == [("issue_refund", {"order_id": "A-100", "amount": 500}), ("send_email", EMAIL["args"])]
    assert "send_email: emailed carol@example.com" in final_text(result) and "refunded 500" in final_text(result)

    # Asking again for the same interrupt (an agent restarted from its checkpoint) is the same review.
    again = client.submit(bridge.review(review_id)["request"], idempotency_key=paused["__interrupt__"][0].id)
    assert again.id == review_id


def test_in_process_reject_and_respond_reach_the_model(bridge, client):
    tools = Tools()
    agent = middleware_agent(tools)
    seen: set[str] = set()
    for action, message, expected in [
        ("reject", "Already refunded.", "User rejected the tool call for `issue_refund` with reason: Already refunded."),
        ("respond", "Gave store credit instead.", "Gave store credit instead."),
    ]:
        config = {"configurable": {"thread_id": str(uuid.uuid4())}}
        paused = agent.invoke(script(refund()), config)
        command = in_background(lambda: resume_command(paused, client, timeout=20, **ROUTING))
        _, key = next_ticket(bridge, seen)
        bridge.act("jira", key, action, message)
        result = agent.invoke(command.result(timeout=20), config)
        (tool_message,) = [m for m in result["messages"] if isinstance(m, ToolMessage)]
        assert tool_message.content == expected
        assert final_text(result) == f"Done. issue_refund: {expected}"
    assert tools.runs == []


def test_in_process_async_per_call_mode(bridge):
    tools = Tools()
    agent = middleware_agent(tools, mode="per_call")
    config = {"configurable": {"thread_id": str(uuid.uuid4())}}
    decided = threading.Event()

    def reviewer():
        seen: set[str] = set()
        for _ in range(2):
            review_id, key = next_ticket(bridge, seen)
            name = bridge.review(review_id)["request"]["action_requests"][0]["name"]
            if name == "issue_refund":
                bridge.act("jira", key, "approve")
            else:
                bridge.act("jira", key, "reject", "No email.")
        decided.set()

    async def run():
        paused = await agent.ainvoke(script(refund(), EMAIL), config)
        assert len(paused["__interrupt__"]) == 2
        async with AsyncBridgeClient(bridge.url, KEYS["agent"]) as abridge:
            command = await aresume_command(paused, abridge, timeout=20, **ROUTING)
        return await agent.ainvoke(command, config)

    in_background(reviewer)
    result = asyncio.run(run())
    assert decided.wait(5)
    assert tools.runs == [("issue_refund", {"order_id": "A-100", "amount": 750})]
    contents = sorted(m.content for m in result["messages"] if isinstance(m, ToolMessage))
    assert contents == ["User rejected the tool call for `send_email` with reason: No email.", "refunded 750 on A-100"]


def test_client_errors_carry_the_api_error(bridge, client):
    with pytest.raises(BridgeClientError) as caught:
        client.get("rev_" + "0" * 28)
    assert caught.value.code == "not_found" and caught.value.status == 404
    review = client.submit({"title": "t", "action_requests": [{"name": "x"}], **ROUTING})
    with pytest.raises(ReviewNotDecided) as waited:
        client.wait(review.id, timeout=0.3)
    assert waited.value.code == "timeout"
    assert client.cancel(review.id).status == "cancelled"
    with pytest.raises(ReviewNotDecided, match="cancelled"):
        client.wait(review.id, timeout=5)


# ----- tool wrapper ---------------------------------------------------------------------------


def test_gated_tool_runs_with_approved_or_edited_args_and_returns_rejections(bridge, client):
    tools = Tools()
    gated = gate_tool(tools.issue_refund, client, timeout=20, **ROUTING)
    agent = create_agent(ScriptedChatModel(), tools=[gated])
    assert gated.name == "issue_refund" and gated.args == tools.issue_refund.args
    seen: set[str] = set()
    outcomes = []
    for action, body in [("approve", None), ("edit", json.dumps({"order_id": "A-100", "amount": 90})), ("reject", "Not eligible.")]:
        running = in_background(lambda: agent.invoke(script(refund())))
        review_id, key = next_ticket(bridge, seen)
        assert bridge.review(review_id)["request"]["action_requests"][0]["args_schema"]["required"] == ["order_id", "amount"]
        bridge.act("jira", key, action, body)
        outcomes.append(final_text(running.result(timeout=20)))
    assert tools.runs == [("issue_refund", {"order_id": "A-100", "amount": 750}), ("issue_refund", {"order_id": "A-100", "amount": 90})]
    assert outcomes == [
        "Done. issue_refund: refunded 750 on A-100",
        "Done. issue_refund: refunded 90 on A-100",
        "Done. issue_refund: A human reviewer rejected the call to issue_refund, so it did not run: Not eligible.",
    ]


# ----- callback handler -----------------------------------------------------------------------


def test_low_confidence_answer_is_reviewed_and_the_run_tagged(bridge, client, recorder):
    from langsmith import Client as LangSmith

    langsmith = LangSmith(api_url=recorder.url, api_key="test-key", auto_batch_tracing=False)
    handler = LowConfidenceReview(client, lambda answer, outputs: 0.3 if "refund" in answer else 0.95, threshold=0.8,
                                  langsmith_client=langsmith, **ROUTING)
    agent = create_agent(ScriptedChatModel(), tools=[])
    agent.invoke({"messages": [{"role": "user", "content": "Can I get a refund?"}]}, {"callbacks": [handler], "tags": ["support"]})
    agent.invoke({"messages": [{"role": "user", "content": "Hello"}]}, {"callbacks": [handler]})

    (run_id, review), = handler.reviews.items()
    shown = bridge.wait_ticket(review.id)
    request = shown["request"]
    assert request["action_requests"] == [{"name": "reply", "args": {"body": "You said: Can I get a refund?"},
                                           "description": "Confidence 30% is below 80%.", "args_schema": None,
                                           "allowed_decisions": None}]
    assert request["confidence"] == 0.3 and request["langsmith"]["run_id"] == str(run_id)
    assert request["input"] == {"query": "Can I get a refund?"}
    patches = wait_for(lambda: [r for r in recorder.requests if r.method == "PATCH" and str(run_id) in r.path], what="LangSmith PATCH")
    assert json.loads(patches[0].body)["tags"] == ["support", "human_review_required"]
