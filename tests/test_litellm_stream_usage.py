"""Streams under the LiteLLM adapter: the usage chunk the governor asks for,
usage LiteLLM counted itself, and the finish reasons on the call's span.

The governor always asks a stream for usage; a caller that did not ask gets
the stream LiteLLM would have given it, without the usage chunk (which has
no choices, so ``chunk.choices[0]`` would fail on it).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import litellm
import pytest

from conftest import SpanCapture
from governor import Cache, Governor, Policy
from governor.adapters.litellm import GovernedLiteLLM, instrument
from governor.telemetry import attributes as attr
from governor.testing import StubBehaviour, StubServer

MODEL = "openai/gpt-4o-mini"
MESSAGES = [{"role": "user", "content": "Which planet is known as the red planet?"}]
ANSWER = "Mars is known as the red planet."
IN_PRICE, OUT_PRICE = Decimal("0.15e-6"), Decimal("0.6e-6")
REPORTED = StubBehaviour(answer=ANSWER, prompt_tokens=31, completion_tokens=9)


@pytest.fixture
def stub(monkeypatch: pytest.MonkeyPatch) -> Iterator[StubServer]:
    monkeypatch.setattr(litellm, "suppress_debug_info", True)
    with StubServer(default=REPORTED) as server:
        yield server


def request(stub: StubServer, **extra: Any) -> dict[str, Any]:
    args: dict[str, Any] = {
        "model": MODEL,
        "messages": MESSAGES,
        "api_base": stub.base_url + "/v1",
        "api_key": "sk-test",
        "max_tokens": 50,
        "stream": True,
    }
    return {**args, **extra}


def read(call: Any, use_async: bool, **kwargs: Any) -> list[Any]:
    """Call ``call`` (completion or acompletion) and read its stream out."""
    if not use_async:
        return list(call(**kwargs))

    async def main() -> list[Any]:
        return [chunk async for chunk in await call(**kwargs)]

    return asyncio.run(main())


def text_of(chunks: list[Any]) -> str:
    """The answer, read the way LiteLLM's README reads a stream."""
    return "".join(part.choices[0].delta.content or "" for part in chunks)


@pytest.mark.parametrize("use_async", [False, True], ids=["sync", "async"])
@pytest.mark.parametrize("options", [None, {"include_usage": False}])
def test_a_caller_that_did_not_ask_for_usage_gets_no_usage_chunk(
    stub: StubServer,
    capture: SpanCapture,
    use_async: bool,
    options: dict[str, Any] | None,
) -> None:
    """Every chunk has a choice, and the call is still settled from the
    provider's usage."""
    gov = Governor(tracer_provider=capture.provider)
    llm = GovernedLiteLLM(gov)
    call = llm.acompletion if use_async else llm.completion
    extra = {} if options is None else {"stream_options": options}
    with gov.task() as task:
        chunks = read(call, use_async, **request(stub, **extra))
    assert all(chunk.choices for chunk in chunks)
    assert text_of(chunks) == ANSWER
    assert stub.requests[0].body["stream_options"] == {"include_usage": True}
    report = task.report()
    assert (report.input_tokens, report.output_tokens) == (31, 9)
    assert report.cost_usd == 31 * IN_PRICE + 9 * OUT_PRICE
    (span,) = capture.calls()
    assert span.attributes[attr.CALL_COST_ESTIMATED] is False


@pytest.mark.parametrize("use_async", [False, True], ids=["sync", "async"])
def test_instrumented_code_reading_choices_zero_works(
    stub: StubServer, use_async: bool
) -> None:
    """Plain litellm.completion / acompletion code, governed by instrument()."""
    gov = Governor()
    with instrument(gov), gov.task() as task:
        call = litellm.acompletion if use_async else litellm.completion
        chunks = read(call, use_async, **request(stub))
    assert text_of(chunks) == ANSWER
    assert task.report().cost_usd == 31 * IN_PRICE + 9 * OUT_PRICE


@pytest.mark.parametrize("use_async", [False, True], ids=["sync", "async"])
def test_a_caller_that_asked_for_usage_gets_the_usage_chunk(
    stub: StubServer, use_async: bool
) -> None:
    """include_usage=True: the stream ends with the usage chunk, as LiteLLM's."""
    gov = Governor()
    llm = GovernedLiteLLM(gov)
    call = llm.acompletion if use_async else llm.completion
    options = {"include_usage": True}
    with gov.task() as task:
        chunks = read(call, use_async, **request(stub, stream_options=options))
    last = chunks[-1]
    assert (last.choices, last.usage.prompt_tokens) == ([], 31)
    assert task.report().cost_usd == 31 * IN_PRICE + 9 * OUT_PRICE


@pytest.mark.parametrize("use_async", [False, True], ids=["sync", "async"])
def test_usage_litellm_counted_itself_is_marked_estimated(
    stub: StubServer, capture: SpanCapture, use_async: bool
) -> None:
    """A provider that sends no usage: LiteLLM ends the stream with its own
    count, which is settled as a local count, marked estimated."""
    stub.set_behaviour("gpt-4o-mini", StubBehaviour(answer=ANSWER, usage={}))
    gov = Governor(tracer_provider=capture.provider)
    llm = GovernedLiteLLM(gov)
    call = llm.acompletion if use_async else llm.completion
    with gov.task() as task:
        chunks = read(call, use_async, **request(stub))
    prompt = int(litellm.token_counter(model=MODEL, messages=MESSAGES))
    output = int(litellm.token_counter(model=MODEL, text=ANSWER))
    report = task.report()
    assert text_of(chunks) == ANSWER
    assert (report.input_tokens, report.output_tokens) == (prompt, output)
    (span,) = capture.calls()
    assert span.attributes[attr.CALL_COST_ESTIMATED] is True
    assert span.attributes[attr.GEN_AI_USAGE_COST_SOURCE] == "estimated"


def test_a_cached_stream_replays_without_a_usage_chunk(stub: StubServer) -> None:
    """The repeat is served from the cache; neither stream has a chunk
    without choices, and the first was settled from its usage."""
    gov = Governor(Policy(cache=Cache(embedder="hashing")))
    llm = GovernedLiteLLM(gov)
    with gov.task() as first:
        streamed = list(llm.completion(**request(stub)))
    with gov.task() as second:
        replayed = list(llm.completion(**request(stub)))
    assert (text_of(streamed), text_of(replayed)) == (ANSWER, ANSWER)
    assert len(stub.requests) == 1
    assert first.report().cost_usd == 31 * IN_PRICE + 9 * OUT_PRICE
    assert second.report().cache_hits == 1


@pytest.mark.parametrize("use_async", [False, True], ids=["sync", "async"])
def test_a_streamed_call_span_has_its_finish_reasons(
    stub: StubServer, capture: SpanCapture, use_async: bool
) -> None:
    """The same attribute, in the same form, as a call that is not streamed."""
    gov = Governor(tracer_provider=capture.provider)
    llm = GovernedLiteLLM(gov)
    call = llm.acompletion if use_async else llm.completion
    with gov.task():
        read(call, use_async, **request(stub))
        llm.completion(**request(stub, stream=False))
    streamed, plain = capture.calls()
    reasons = attr.GEN_AI_RESPONSE_FINISH_REASONS
    assert streamed.attributes[reasons] == plain.attributes[reasons] == ("stop",)


def test_finish_reasons_of_several_choices_are_in_choice_order(
    capture: SpanCapture,
) -> None:
    """n=2: each choice's last finish reason, ordered by its index."""

    def provider(**_: Any) -> Iterator[Any]:
        def chunk(index: int, content: str | None, reason: str | None) -> Any:
            choice = {"index": index, "delta": {"content": content}}
            return litellm.ModelResponseStream(
                model="gpt-4o-mini", choices=[{**choice, "finish_reason": reason}]
            )

        yield chunk(0, "Mars", None)
        yield chunk(1, "The red planet is", None)
        yield chunk(1, None, "length")
        yield chunk(0, None, "stop")

    gov = Governor(tracer_provider=capture.provider)
    llm = GovernedLiteLLM(gov, completion=provider)
    with gov.task():
        list(
            llm.completion(
                model="gpt-4o-mini", messages=MESSAGES, n=2, max_tokens=5, stream=True
            )
        )
    (span,) = capture.calls()
    reasons = span.attributes[attr.GEN_AI_RESPONSE_FINISH_REASONS]
    assert reasons == ("stop", "length")
