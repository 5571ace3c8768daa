"""How a governed graph's model calls are held and charged, and how its
streamed runs report the way they ended."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from decimal import Decimal
from typing import Any, TypedDict

import pytest
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from langchain_core.runnables import RunnableLambda
from langgraph.graph import END, START, StateGraph

from governor import Budget, Governor, Policy, govern
from governor.adapters._tokens import count_message_tokens, count_prompt_tokens

TOOL = {
    "type": "function",
    "function": {
        "name": "search",
        "description": "Search the knowledge base. " * 60,
        "parameters": {"type": "object", "properties": {"q": {"type": "string"}}},
    },
}


class QuietChatModel(BaseChatModel):
    """A gpt-4o stand-in with max_tokens 10 that reports no usage."""

    answer: str = "fine thanks"
    delay_s: float = 0.0

    @property
    def _llm_type(self) -> str:
        return "quiet"

    def _get_ls_params(self, stop: Any = None, **kwargs: Any) -> Any:
        return {"ls_provider": "openai", "ls_model_name": "gpt-4o", "ls_max_tokens": 10}

    def _generate(
        self, messages: list[BaseMessage], stop: Any = None, **kwargs: Any
    ) -> ChatResult:
        message = AIMessage(content=self.answer)
        return ChatResult(generations=[ChatGeneration(message=message)])

    async def _agenerate(
        self, messages: list[BaseMessage], stop: Any = None, **kwargs: Any
    ) -> ChatResult:
        await asyncio.sleep(self.delay_s)
        return self._generate(messages, stop, **kwargs)

    def _stream(
        self, messages: list[BaseMessage], stop: Any = None, **kwargs: Any
    ) -> Iterator[ChatGenerationChunk]:
        for word in self.answer.split():
            yield ChatGenerationChunk(message=AIMessageChunk(content=word + " "))


class State(TypedDict):
    text: str


def _graph(model: Any, steps: int = 1) -> Any:
    def ask(state: State) -> State:
        return {"text": str(model.invoke(state["text"]).content)}

    async def aask(state: State) -> State:
        return {"text": str((await model.ainvoke(state["text"])).content)}

    builder = StateGraph(State)
    names = [f"ask{i}" for i in range(steps)]
    for name in names:
        builder.add_node(name, RunnableLambda(ask, afunc=aask))
    for a, b in zip([START, *names], [*names, END], strict=True):
        builder.add_edge(a, b)
    return builder.compile()


def test_a_call_that_fits_only_by_its_exact_count_is_admitted() -> None:
    """The byte bound of a 700-word prompt is ~6x its tokens: when the bound
    does not fit, the prompt is counted with the tokenizer, as for LiteLLM."""
    prompt = "hello " * 700  # 4,200 bytes, about 700 tokens
    # gpt-4o: $2.50 in, $10 out per million. Exact: ~$0.0019; bound: ~$0.011.
    gov = Governor(Policy(budgets=[Budget(max_usd=Decimal("0.004"))]))
    agent = govern(_graph(QuietChatModel()), gov)
    out = agent.invoke({"text": prompt})
    report = agent.last_report
    assert report is not None
    assert (out["text"], report.calls, report.stop_reason) == ("fine thanks", 1, None)
    expected = count_message_tokens("gpt-4o", [{"role": "user", "content": prompt}])
    assert report.input_tokens == expected


def test_a_locally_counted_prompt_includes_the_bound_tools() -> None:
    """A model reporting no usage is charged its tools' schema as prompt."""
    agent = govern(_graph(QuietChatModel().bind(tools=[TOOL])), Governor())
    agent.invoke({"text": "hi"})
    report = agent.last_report
    assert report is not None
    messages = [{"role": "user", "content": "hi"}]
    with_tools = count_prompt_tokens("gpt-4o", messages, {"tools": [TOOL]})
    assert with_tools > count_message_tokens("gpt-4o", messages) + 300
    assert report.input_tokens == with_tools


def test_tool_calls_are_counted_in_either_shape() -> None:
    """OpenAI's and LangChain's tool-call shapes count the same, arguments
    included; a history with a tool call counts more than its text."""
    args = {"q": "weather in Paris " * 20}
    openai_call = {
        "id": "c1",
        "type": "function",
        "function": {"name": "search", "arguments": __import__("json").dumps(args)},
    }
    langchain_call = {"id": "c1", "name": "search", "args": args, "type": "tool_call"}

    def history(call: dict[str, Any]) -> list[dict[str, Any]]:
        return [
            {"role": "user", "content": "weather?"},
            {"role": "assistant", "content": "", "tool_calls": [call]},
            {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
        ]

    text_only = [{"role": m["role"], "content": m["content"]} for m in history({})]
    openai = count_message_tokens("gpt-4o", history(openai_call))
    assert count_message_tokens("gpt-4o", history(langchain_call)) == openai
    assert openai > count_message_tokens("gpt-4o", text_only) + 60


def test_a_pydantic_response_format_is_counted_by_its_schema() -> None:
    """A response format given as a model class counts as its JSON schema."""
    from pydantic import BaseModel

    class Answer(BaseModel):
        city_name_in_full: str
        population_in_millions: float
        country_of_the_city: str

    messages = [{"role": "user", "content": "hi"}]
    counted = count_prompt_tokens("gpt-4o", messages, {"response_format": Answer})
    assert counted > count_message_tokens("gpt-4o", messages) + 30


def _stopped_report(how: str) -> Any:
    model = QuietChatModel(delay_s=0.3 if how == "cancel" else 0.0)
    agent = govern(_graph(model, steps=3), Governor())

    async def cancel_reader() -> None:
        async def read() -> None:
            async for _ in agent.astream({"text": "hi"}):
                pass

        reader = asyncio.ensure_future(read())
        await asyncio.sleep(0.45)  # the second call is in flight
        reader.cancel()
        with pytest.raises(asyncio.CancelledError):
            await reader

    async def break_async() -> None:
        stream = agent.astream({"text": "hi"})
        async for _ in stream:
            break
        await stream.aclose()  # type: ignore[attr-defined]

    if how == "sync break":
        for _ in agent.stream({"text": "hi"}):
            break
    elif how == "async break":
        asyncio.run(break_async())
    elif how == "cancel":
        asyncio.run(cancel_reader())
    else:
        list(agent.stream({"text": "hi"}))
    return agent.last_report


@pytest.mark.parametrize(
    ("how", "reason"),
    [
        ("sync break", "closed"),
        ("async break", "closed"),
        ("cancel", "cancelled"),
        ("read whole", None),
    ],
)
def test_a_stream_stopped_early_is_not_reported_completed(
    how: str, reason: str | None
) -> None:
    """A reader that stops early or is cancelled is not a completed run."""
    report = _stopped_report(how)
    assert report is not None
    assert report.stop_reason == reason
    assert report.calls == {"closed": 1, "cancelled": 2, None: 3}[reason]


def test_a_thread_id_in_the_metadata_is_the_session() -> None:
    """LangGraph's thread_id counts as the session from either place."""
    agent = govern(_graph(QuietChatModel()), Governor())
    agent.invoke({"text": "hi"}, {"metadata": {"thread_id": "t-9"}})
    first = agent.last_report
    agent.invoke({"text": "hi"}, {"configurable": {"thread_id": "t-8"}})
    second = agent.last_report
    assert first is not None
    assert second is not None
    assert first.attribution == {"session": "t-9"}
    assert second.attribution == {"session": "t-8"}


@pytest.mark.parametrize("how", ["timeout", "aclose"])
def test_a_call_cut_off_by_the_runs_end_is_recorded_cancelled(
    tmp_path: Any, how: str
) -> None:
    """Cancelled with its run, or left open by an event stream closed early:
    the call's spend record says so, as under instrument()."""
    from governor.spend import JsonlSpendStore

    path = tmp_path / "spend.jsonl"
    gov = Governor(spend=path)
    agent = govern(_graph(QuietChatModel(delay_s=5.0)), gov)

    async def main() -> None:
        if how == "timeout":
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(agent.ainvoke({"text": "hi"}), 0.2)
            return
        events = agent.astream_events({"text": "hi"}, version="v2")
        async for event in events:
            if event["event"] == "on_chat_model_start":
                break
        await events.aclose()  # type: ignore[attr-defined]

    asyncio.run(main())
    gov.close()
    records = [(r.outcome, r.cost_estimated) for r in JsonlSpendStore(path).query()]
    assert records == [("cancelled", True)]
