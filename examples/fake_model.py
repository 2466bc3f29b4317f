"""A deterministic chat model so the examples run without a model key.

LangChain's ``GenericFakeChatModel`` replays the messages it is given; agents need
``bind_tools``, which here is a no-op (the replayed messages already hold the tool calls).
Swap in a real model (``init_chat_model("openai:gpt-5")``) and nothing else changes.
"""

from __future__ import annotations

from typing import Any

from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessage


class ScriptedModel(GenericFakeChatModel):
    def bind_tools(self, tools: Any, **kwargs: Any) -> "ScriptedModel":
        return self


def scripted(*messages: AIMessage) -> ScriptedModel:
    return ScriptedModel(messages=iter(messages))
