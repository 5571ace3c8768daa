"""An offline LangChain chat model that counts what it is sent."""

from __future__ import annotations

from typing import Any

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from pydantic import Field


class CountingChat(BaseChatModel):
    """gpt-4o-mini at max_tokens 10, answering offline: ``reply`` every time,
    or "answer N" for its Nth call when ``reply`` is empty."""

    reply: str = ""
    sent: list[int] = Field(default_factory=list)

    @property
    def _llm_type(self) -> str:
        return "counting"

    def _get_ls_params(self, stop: Any = None, **kwargs: Any) -> Any:
        return {
            "ls_provider": "openai",
            "ls_model_name": "gpt-4o-mini",
            "ls_max_tokens": 10,
        }

    def _generate(
        self, messages: list[BaseMessage], stop: Any = None, **kwargs: Any
    ) -> ChatResult:
        self.sent.append(1)
        answer = AIMessage(self.reply or f"answer {len(self.sent)}")
        return ChatResult(generations=[ChatGeneration(message=answer)])

    async def _agenerate(
        self, messages: list[BaseMessage], stop: Any = None, **kwargs: Any
    ) -> ChatResult:
        return self._generate(messages, stop, **kwargs)
