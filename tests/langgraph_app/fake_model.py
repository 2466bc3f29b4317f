"""A deterministic chat model for tests: no model key, same answer every time.

The user's message is a script, JSON: ``{"tool_calls": [{"name", "args"}, ...]}``. The
model asks for those tool calls; once tool results come back, it answers with what each
tool message said, so a test can see exactly what reached the model.
"""

from __future__ import annotations

import json
from typing import Any

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, ToolMessage
from langchain_core.outputs import ChatGeneration, ChatResult


class ScriptedChatModel(BaseChatModel):
    @property
    def _llm_type(self) -> str:
        return "scripted"

    def bind_tools(self, tools: Any, **kwargs: Any) -> "ScriptedChatModel":
        return self

    def _generate(self, messages: list[BaseMessage], stop: Any = None, run_manager: Any = None, **kwargs: Any) -> ChatResult:
        return ChatResult(generations=[ChatGeneration(message=self._answer(messages))])

    def _answer(self, messages: list[BaseMessage]) -> AIMessage:
        last = messages[-1]
        if isinstance(last, HumanMessage):
            try:
                script = json.loads(last.content if isinstance(last.content, str) else "")
            except json.JSONDecodeError:
                script = None
            if isinstance(script, dict) and script.get("tool_calls"):
                turn = sum(isinstance(m, HumanMessage) for m in messages)
                calls = [
                    {"name": c["name"], "args": c.get("args", {}), "id": f"call_{turn}_{i}", "type": "tool_call"}
                    for i, c in enumerate(script["tool_calls"])
                ]
                return AIMessage(content="", tool_calls=calls)
            return AIMessage(content=f"You said: {last.content}")
        results: list[str] = []
        for message in reversed(messages):
            if isinstance(message, ToolMessage):
                results.append(f"{message.name}: {message.content}")
            else:
                break
        return AIMessage(content="Done. " + " | ".join(reversed(results)))
