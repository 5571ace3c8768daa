"""A LangChain chat model that streams far past its max_tokens is stopped.

The model below ignores its limit the way a misconfigured provider or proxy
does: it reports ``max_tokens`` 64 to LangChain and streams a 3,000-word
answer regardless. The governor's callback stops the stream once the output
is surely past the reservation, and the call is charged what arrived.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from typing import Any, TypedDict

import pytest
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from langgraph.graph import END, START, StateGraph

from governor import Governor, OutputLimitExceeded, govern
from governor.adapters.langgraph import _chunk_output

RUNAWAY = " ".join(f"word{i}" for i in range(3000))
MAX_TOKENS = 64
CEILING_CHARS = 16 * MAX_TOKENS + 256


class RunawayChatModel(BaseChatModel):
    """Says it sends at most 64 tokens, then streams ``answer`` word by word."""

    answer: str = RUNAWAY
    as_tool_call: bool = False
    chunks_sent: int = 0

    @property
    def _llm_type(self) -> str:
        return "runaway"

    def _get_ls_params(self, stop: Any = None, **kwargs: Any) -> Any:
        return {
            "ls_provider": "openai",
            "ls_model_name": "gpt-4o",
            "ls_max_tokens": MAX_TOKENS,
        }

    def _generate(
        self, messages: list[BaseMessage], stop: Any = None, **kwargs: Any
    ) -> ChatResult:
        message = AIMessage(content=self.answer)
        return ChatResult(generations=[ChatGeneration(message=message)])

    def _chunk(self, word: str) -> ChatGenerationChunk:
        self.chunks_sent += 1
        if not self.as_tool_call:
            return ChatGenerationChunk(message=AIMessageChunk(content=word + " "))
        piece = {"name": None, "args": word + " ", "id": None, "index": 0}
        return ChatGenerationChunk(
            message=AIMessageChunk(content="", tool_call_chunks=[piece])
        )

    def _stream(
        self, messages: list[BaseMessage], stop: Any = None, **kwargs: Any
    ) -> Iterator[ChatGenerationChunk]:
        for word in self.answer.split():
            yield self._chunk(word)

    async def _astream(
        self, messages: list[BaseMessage], stop: Any = None, **kwargs: Any
    ) -> AsyncIterator[ChatGenerationChunk]:
        for word in self.answer.split():
            yield self._chunk(word)


class State(TypedDict):
    text: str


def _graph(model: RunawayChatModel, *, use_async: bool) -> Any:
    def write(state: State) -> State:
        return {"text": "".join(str(c.content) for c in model.stream("essay"))}

    async def awrite(state: State) -> State:
        parts = [str(c.content) async for c in model.astream("essay")]
        return {"text": "".join(parts)}

    builder = StateGraph(State)
    builder.add_node("write", awrite if use_async else write)
    builder.add_edge(START, "write")
    builder.add_edge("write", END)
    return builder.compile()


@pytest.mark.parametrize("use_async", [False, True])
@pytest.mark.parametrize("as_tool_call", [False, True])
def test_a_chat_model_stream_past_its_ceiling_is_stopped(
    use_async: bool, as_tool_call: bool
) -> None:
    """Text or tool-call arguments: the stream stops near its ceiling."""
    model = RunawayChatModel(as_tool_call=as_tool_call)
    graph = govern(_graph(model, use_async=use_async), Governor())
    with pytest.raises(OutputLimitExceeded) as raised:
        if use_async:
            asyncio.run(graph.ainvoke({"text": ""}))
        else:
            graph.invoke({"text": ""})
    error = raised.value
    report = graph.last_report
    assert report is not None
    assert (error.model, error.reserved_tokens) == ("gpt-4o", MAX_TOKENS)
    assert CEILING_CHARS < error.streamed_chars < CEILING_CHARS + 20
    assert model.chunks_sent < 300  # of 3,000
    assert report.stop_reason == "output_limit_exceeded"
    assert report.calls == 1
    # Charged a local count of what arrived: past the reservation, far
    # below the whole answer's thousands of tokens.
    assert MAX_TOKENS < report.output_tokens < 1000


def test_an_answer_within_its_ceiling_streams_whole() -> None:
    """A long answer under 16 characters a token is never stopped."""
    answer = " ".join(["abcdefghijklmn"] * 60)  # 899 chars, under 1,280
    model = RunawayChatModel(answer=answer)
    out = govern(_graph(model, use_async=False), Governor()).invoke({"text": ""})
    assert out["text"].split() == answer.split()


def test_content_blocks_and_reasoning_count_as_output() -> None:
    """Text and thinking blocks, tool-call chunks and reasoning are all read."""
    message = AIMessageChunk(
        content="",
        tool_call_chunks=[
            {"name": "search", "args": '{"q": 1}', "id": "c", "index": 0}
        ],
        additional_kwargs={"reasoning_content": "hmm"},
    )
    token = [
        {"type": "text", "text": "Hello"},
        {"type": "thinking", "thinking": "let me see"},
        {"type": "image", "url": "x"},
        "plain",
    ]
    parts = list(_chunk_output(token, ChatGenerationChunk(message=message)))
    assert parts == ["Hello", "let me see", "plain", "search", '{"q": 1}', "hmm"]
