"""A governed LiteLLM stream dropped before its end leaves no provider stream.

The caller reads three chunks of a stream, then drops it without closing
it. The governed stream settles at once, at what arrived; LiteLLM keeps its
own stream (the provider's connection) in a reference cycle, so it would
stream on, billed, until the garbage collector runs. The collector is off
in these tests, so only the governor can close it. The same goes for an
async stream hung up on from sync code (``hang_up()``).

The provider is a local SSE server that counts the chunks it sent and says
whether the client hung up before the end.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from decimal import Decimal
from typing import Any

import litellm
import pytest
from _sse_streams import CHUNKS, SSEServer, serving_without_gc

from governor import Budget, Governor, Policy
from governor._task import Task
from governor.adapters.litellm import GovernedLiteLLM, instrument

MAX_TOKENS = 1000
READ = 3  # chunks read before the stream is dropped: " w0 w1 w2", six tokens
READ_TOKENS = 6
IN_PRICE = Decimal("0.15e-6")  # gpt-4o-mini, per token
OUT_PRICE = Decimal("0.6e-6")
MESSAGES = [{"role": "user", "content": "Write an essay."}]
WAYS = ["governed", "instrumented"]


def _request(server: SSEServer) -> dict[str, Any]:
    """A streamed request to ``server`` (without usage asked for)."""
    return {
        "model": "openai/gpt-4o-mini",
        "messages": MESSAGES,
        "api_base": server.base_url,
        "api_key": "sk-local",
        "max_tokens": MAX_TOKENS,
        "stream": True,
    }


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> Iterator[SSEServer]:
    monkeypatch.setattr(litellm, "suppress_debug_info", True)
    with serving_without_gc() as sse:
        yield sse


def _governing(gov: Governor, way: str) -> contextlib.AbstractContextManager[Any]:
    """``instrument(gov)`` for the instrumented way, nothing for the other."""
    return contextlib.nullcontext() if way == "governed" else instrument(gov)


def _completion(gov: Governor, way: str) -> Callable[..., Any]:
    """``completion`` as the caller sees it: the governed client's, or
    LiteLLM's own (instrumented, see :func:`_governing`)."""
    return GovernedLiteLLM(gov).completion if way == "governed" else litellm.completion


def _acompletion(gov: Governor, way: str) -> Callable[..., Awaitable[Any]]:
    """Async form of :func:`_completion`."""
    if way == "governed":
        return GovernedLiteLLM(gov).acompletion
    return litellm.acompletion


def _read(stream: Iterator[Any]) -> str:
    return "".join(str(next(stream).choices[0].delta.content) for _ in range(READ))


async def _aread(stream: AsyncIterator[Any]) -> str:
    words = [(await anext(stream)).choices[0].delta.content for _ in range(READ)]
    return "".join(str(word) for word in words)


def _assert_charged_what_arrived(gov: Governor, task: Task) -> None:
    """The task's report and its budget line charge the chunks read, exactly."""
    report = task.report()
    assert report.calls == 1
    assert report.output_tokens == READ_TOKENS
    assert report.input_tokens > 0
    cost = report.input_tokens * IN_PRICE + READ_TOKENS * OUT_PRICE
    assert report.cost_usd == cost
    balance = gov.ledger.balance(f"task:{task.id}")
    assert balance is not None
    assert balance.reserved_nanos == 0
    assert balance.spent_nanos == int(cost * 10**9)


def _assert_hung_up(server: SSEServer) -> None:
    stream = server.only_stream()
    assert stream.how == "hung up"
    assert stream.sent < CHUNKS


@pytest.mark.parametrize("way", WAYS)
def test_a_dropped_sync_stream_is_closed(server: SSEServer, way: str) -> None:
    """The provider sees the hang-up; the call is charged what arrived."""
    gov = Governor(Policy(budgets=[Budget(max_usd=1)]))
    with _governing(gov, way), gov.task() as task:
        stream = _completion(gov, way)(**_request(server))
        assert _read(stream) == " w0 w1 w2"
        del stream
        _assert_hung_up(server)
    _assert_charged_what_arrived(gov, task)


@pytest.mark.parametrize("way", WAYS)
def test_a_dropped_async_stream_is_closed(server: SSEServer, way: str) -> None:
    """Closed on the stream's event loop, which goes on running."""
    gov = Governor(Policy(budgets=[Budget(max_usd=1)]))

    async def run() -> Task:
        async with gov.atask() as task:
            stream = await _acompletion(gov, way)(**_request(server))
            assert await _aread(stream) == " w0 w1 w2"
            del stream
            await asyncio.to_thread(_assert_hung_up, server)
        return task

    with _governing(gov, way):
        task = asyncio.run(run())
    _assert_charged_what_arrived(gov, task)


@pytest.mark.parametrize("way", WAYS)
def test_an_async_stream_hung_up_on_from_sync_code_is_closed(
    server: SSEServer, way: str
) -> None:
    """hang_up(), which cannot await, has the stream's event loop close it."""
    gov = Governor(Policy(budgets=[Budget(max_usd=1)]))
    kept: list[Any] = []

    async def run() -> Task:
        async with gov.atask() as task:
            stream = await _acompletion(gov, way)(**_request(server))
            kept.append(stream)
            assert await _aread(stream) == " w0 w1 w2"
            stream.hang_up()
            await asyncio.to_thread(_assert_hung_up, server)
        return task

    with _governing(gov, way):
        task = asyncio.run(run())
    assert kept  # still held: hang_up() closed it
    _assert_charged_what_arrived(gov, task)
