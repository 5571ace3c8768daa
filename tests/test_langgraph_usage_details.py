"""A governed graph's calls are priced from the provider's whole usage, and
their spans name the finish reasons."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from decimal import Decimal
from typing import Any, TypedDict

import pytest
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from langchain_litellm import ChatLiteLLM
from langgraph.graph import END, START, StateGraph

from conftest import SpanCapture
from governor import Governor, Policy, govern
from governor.telemetry import attributes as attr
from governor.testing import StubBehaviour, StubServer

AUDIO_MODEL = "gpt-4o-audio-preview-2024-12-17"
AUDIO_USAGE = {
    "prompt_tokens": 1000,
    "completion_tokens": 500,
    "total_tokens": 1500,
    "prompt_tokens_details": {"audio_tokens": 600},
    "completion_tokens_details": {"audio_tokens": 400},
}
# The price map's gpt-4o-audio-preview: text in 2.5e-6, audio in 4e-5, text
# out 1e-5, audio out 8e-5.
AUDIO_COST = (
    400 * Decimal("2.5e-6")
    + 600 * Decimal("4e-5")
    + 100 * Decimal("1e-5")
    + 400 * Decimal("8e-5")
)
CACHED_USAGE = {
    "prompt_tokens": 1000,
    "completion_tokens": 500,
    "total_tokens": 1500,
    "prompt_tokens_details": {"cached_tokens": 400},
    "completion_tokens_details": {"reasoning_tokens": 50},
}
# gpt-4o: input 2.5e-6, cache read 1.25e-6, output 1e-5.
CACHED_COST = 600 * Decimal("2.5e-6") + 400 * Decimal("1.25e-6") + 500 * Decimal("1e-5")


class State(TypedDict):
    q: str
    a: str


def _graph(model: BaseChatModel, *, streamed: bool) -> Any:
    def node(state: State) -> dict[str, str]:
        if streamed:
            return {"a": "".join(str(c.content) for c in model.stream(state["q"]))}
        return {"a": str(model.invoke(state["q"]).content)}

    graph = StateGraph(State)
    graph.add_node("n", node)
    graph.add_edge(START, "n")
    graph.add_edge("n", END)
    return graph.compile()


def _run_stub(
    model: str, usage: Mapping[str, Any], capture: SpanCapture, *, streamed: bool
) -> Decimal:
    """Run a one-call graph of ChatLiteLLM against the stub; its cost."""
    with StubServer({model: StubBehaviour(usage=usage)}) as stub:
        chat = ChatLiteLLM(
            model="openai/" + model,
            api_base=stub.base_url + "/v1",
            api_key="sk-test",
            max_tokens=600,
        )
        gov = Governor(Policy(), tracer_provider=capture.provider)
        agent = govern(_graph(chat, streamed=streamed), gov)
        agent.invoke({"q": "hello", "a": ""})
    report = agent.last_report
    assert report is not None
    return report.cost_usd


def _call_span(capture: SpanCapture) -> Mapping[str, Any]:
    (span,) = capture.calls()
    return span.attributes or {}


def test_chat_litellm_audio_tokens_are_billed_at_audio_prices(
    capture: SpanCapture,
) -> None:
    """ChatLiteLLM's usage_metadata has no audio; its token_usage has."""
    assert _run_stub(AUDIO_MODEL, AUDIO_USAGE, capture, streamed=False) == AUDIO_COST
    span = _call_span(capture)
    assert (
        span[attr.GEN_AI_USAGE_INPUT_TOKENS],
        span[attr.GEN_AI_USAGE_OUTPUT_TOKENS],
    ) == (1000, 500)


@pytest.mark.parametrize("streamed", [False, True], ids=["invoke", "stream"])
def test_chat_litellm_cache_and_reasoning_still_come_through(
    capture: SpanCapture, streamed: bool
) -> None:
    """Cached prompt and reasoning tokens are read, streamed and not."""
    cost = _run_stub("gpt-4o", CACHED_USAGE, capture, streamed=streamed)
    assert cost == CACHED_COST
    span = _call_span(capture)
    assert (
        span[attr.GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS],
        span[attr.GEN_AI_USAGE_REASONING_OUTPUT_TOKENS],
    ) == (400, 50)


@pytest.mark.parametrize("streamed", [False, True], ids=["invoke", "stream"])
def test_chat_litellm_finish_reason_is_on_the_call_span(
    capture: SpanCapture, streamed: bool
) -> None:
    """The span names the finish reason ChatLiteLLM passed on."""
    _run_stub("gpt-4o", CACHED_USAGE, capture, streamed=streamed)
    assert _call_span(capture)[attr.GEN_AI_RESPONSE_FINISH_REASONS] == ("stop",)


class ChunkedAudioModel(BaseChatModel):
    """A gpt-4o-audio stand-in whose chunks carry the provider's usage in
    their response metadata: on the last chunk, or as a running total on
    every chunk (which LangChain adds up where two chunks' counts differ)."""

    token_usage_on_every_chunk: bool = False

    @property
    def _llm_type(self) -> str:
        return "chunked-audio"

    def _get_ls_params(self, stop: Any = None, **kwargs: Any) -> Any:
        return {"ls_model_name": AUDIO_MODEL, "ls_max_tokens": 600}

    def _generate(
        self, messages: list[BaseMessage], stop: Any = None, **kwargs: Any
    ) -> ChatResult:
        raise NotImplementedError("this model only streams")

    def _stream(
        self, messages: list[BaseMessage], stop: Any = None, **kwargs: Any
    ) -> Iterator[ChatGenerationChunk]:
        standard = {"input_tokens": 1000, "output_tokens": 500, "total_tokens": 1500}
        first: dict[str, Any] = {}
        if self.token_usage_on_every_chunk:
            running = {"prompt_tokens": 1000, "completion_tokens": 1}
            first = {"token_usage": {**running, "total_tokens": 1001}}
        yield ChatGenerationChunk(
            message=AIMessageChunk(content="an answer", response_metadata=first)
        )
        last = {"token_usage": dict(AUDIO_USAGE), "finish_reason": "length"}
        yield ChatGenerationChunk(
            message=AIMessageChunk(
                content="", usage_metadata=standard, response_metadata=last
            )
        )


def _run_chunked(model: ChunkedAudioModel, capture: SpanCapture) -> Decimal:
    gov = Governor(Policy(), tracer_provider=capture.provider)
    agent = govern(_graph(model, streamed=True), gov)
    agent.invoke({"q": "hello", "a": ""})
    report = agent.last_report
    assert report is not None
    return report.cost_usd


def test_streamed_token_usage_is_read_with_the_finish_reason(
    capture: SpanCapture,
) -> None:
    """A stream whose chunks carry the provider's usage is billed by it."""
    assert _run_chunked(ChunkedAudioModel(), capture) == AUDIO_COST
    assert _call_span(capture)[attr.GEN_AI_RESPONSE_FINISH_REASONS] == ("length",)


def test_token_usage_summed_over_chunks_is_not_trusted(
    capture: SpanCapture,
) -> None:
    """Running totals on every chunk add up past the call's usage when
    merged (501 completion tokens); the call is then billed at
    usage_metadata's counts, as text."""
    model = ChunkedAudioModel(token_usage_on_every_chunk=True)
    text_cost = 1000 * Decimal("2.5e-6") + 500 * Decimal("1e-5")
    assert _run_chunked(model, capture) == text_cost


class TwoAnswerModel(BaseChatModel):
    """Two answers to one prompt, finish reasons in the generation info only."""

    @property
    def _llm_type(self) -> str:
        return "two-answers"

    def _get_ls_params(self, stop: Any = None, **kwargs: Any) -> Any:
        return {"ls_model_name": "gpt-4o", "ls_max_tokens": 64}

    def _generate(
        self, messages: list[BaseMessage], stop: Any = None, **kwargs: Any
    ) -> ChatResult:
        usage = {"input_tokens": 10, "output_tokens": 4, "total_tokens": 14}
        generations = [
            ChatGeneration(
                message=AIMessage(content="a b", usage_metadata=usage),
                generation_info={"finish_reason": reason},
            )
            for reason in ("stop", "length")
        ]
        return ChatResult(generations=generations)


def test_each_answer_gives_its_finish_reason(capture: SpanCapture) -> None:
    """Finish reasons come one per answer, in order."""
    gov = Governor(Policy(), tracer_provider=capture.provider)
    govern(_graph(TwoAnswerModel(), streamed=False), gov).invoke(
        {"q": "hello", "a": ""}
    )
    reasons = _call_span(capture)[attr.GEN_AI_RESPONSE_FINISH_REASONS]
    assert reasons == ("stop", "length")


class TwoUsagesModel(BaseChatModel):
    """A gpt-4o stand-in that reports its usage twice: LangChain's form with
    the cache read, the provider's without details."""

    @property
    def _llm_type(self) -> str:
        return "two-usages"

    def _get_ls_params(self, stop: Any = None, **kwargs: Any) -> Any:
        return {"ls_model_name": "gpt-4o", "ls_max_tokens": 600}

    def _generate(
        self, messages: list[BaseMessage], stop: Any = None, **kwargs: Any
    ) -> ChatResult:
        standard: Any = {
            "input_tokens": 1000,
            "output_tokens": 500,
            "total_tokens": 1500,
            "input_token_details": {"cache_read": 400},
        }
        provided = {"prompt_tokens": 1000, "completion_tokens": 500}
        message = AIMessage(
            content="an answer",
            usage_metadata=standard,
            response_metadata={"token_usage": provided},
        )
        return ChatResult(generations=[ChatGeneration(message=message)])


def test_parts_the_provider_left_out_come_from_usage_metadata(
    capture: SpanCapture,
) -> None:
    """The provider's usage lacks the cache read that usage_metadata has."""
    gov = Governor(Policy(), tracer_provider=capture.provider)
    agent = govern(_graph(TwoUsagesModel(), streamed=False), gov)
    agent.invoke({"q": "hello", "a": ""})
    report = agent.last_report
    assert report is not None
    assert report.cost_usd == CACHED_COST
    assert _call_span(capture)[attr.GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS] == 400


def test_a_provider_usage_with_parts_is_taken_whole() -> None:
    """A part the provider gives as 0 is 0: its audio was all read from the
    cache, so LangChain's audio input count must not be added to it."""
    from governor.adapters.langgraph import _merged_usage
    from governor.pricing import Usage

    detailed = Usage(
        prompt_tokens=1000,
        completion_tokens=500,
        cache_read_tokens=600,
        audio_cache_read_tokens=500,
    )
    standard = Usage(prompt_tokens=1000, completion_tokens=500, audio_input_tokens=400)
    assert _merged_usage(detailed, standard) == detailed
