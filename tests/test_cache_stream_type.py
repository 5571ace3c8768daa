"""A streamed cache hit is LiteLLM's own stream type, as every governed
LiteLLM stream is (docs/adapters.md): ``litellm.CustomStreamWrapper``, the
only stream type ``litellm.Router`` wraps. Real LiteLLM, offline with
``mock_response``; a real Router with the governor instrumented."""

from __future__ import annotations

import asyncio
from decimal import Decimal
from typing import Any

import litellm
import pytest

from governor import Governor, Policy
from governor.adapters.litellm import GovernedLiteLLM, instrument
from governor.policies import Cache

TEXT = "Paris is the capital of France.\n\nIt lies on the Seine, in the north."
MESSAGES = [{"role": "user", "content": "Where is Paris?"}]
USAGE = {"stream_options": {"include_usage": True}}


def _governor() -> Governor:
    return Governor(Policy(cache=Cache(embedder="hashing", partition_by=())))


def _text(chunks: list[Any]) -> str:
    return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


def _usages(chunks: list[Any]) -> list[tuple[int, float]]:
    """The usage of each chunk without choices (the usage chunk)."""
    return [(c.usage.total_tokens, c.usage.cost) for c in chunks if not c.choices]


def _read(stream: Any, is_async: bool) -> list[Any]:
    if not is_async:
        return list(stream)

    async def read() -> list[Any]:
        return [chunk async for chunk in stream]

    return asyncio.run(read())


def _call(call: Any, acall: Any, is_async: bool, **request: Any) -> Any:
    """``call(**request)``, or ``acall``'s awaited answer."""
    if not is_async:
        return call(**request)

    async def ask() -> Any:
        return await acall(**request)

    return asyncio.run(ask())


@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
@pytest.mark.parametrize("options", [{}, USAGE], ids=["plain", "usage"])
def test_a_streamed_hit_is_litellm_s_stream_type(
    is_async: bool, options: dict[str, Any]
) -> None:
    """The hit is a ``CustomStreamWrapper`` like the miss, replays the miss's
    text (and a zero usage chunk when asked), rebuilds with
    ``stream_chunk_builder``, and costs nothing."""
    gov = _governor()
    llm = GovernedLiteLLM(gov)
    request = {
        "model": "gpt-4o-mini",
        "messages": MESSAGES,
        "mock_response": TEXT,
        "stream": True,
        **options,
    }
    with gov.task() as task:
        miss = _call(llm.completion, llm.acompletion, is_async, **request)
        missed = _read(miss, is_async)
        spent = task.report().cost_usd
        hit = _call(llm.completion, llm.acompletion, is_async, **request)
        replayed = _read(hit, is_async)
    assert isinstance(miss, litellm.CustomStreamWrapper)
    assert isinstance(hit, litellm.CustomStreamWrapper)
    assert (task.report().cache_hits, task.report().cost_usd) == (1, spent)
    assert spent > Decimal(0)
    assert _text(replayed) == _text(missed) == TEXT
    assert len(_usages(missed)) == len(_usages(replayed)) == (1 if options else 0)
    assert _usages(replayed) == ([(0, 0.0)] if options else [])
    rebuilt = litellm.stream_chunk_builder(hit.chunks)
    assert rebuilt.choices[0].message.content == TEXT
    assert hit._hidden_params["cache_hit"] is True


def test_a_closed_hit_stops_replaying() -> None:
    """``close()`` (and leaving ``with``) ends the replay, as on a live stream."""
    gov = _governor()
    llm = GovernedLiteLLM(gov)
    request = {"model": "gpt-4o-mini", "messages": MESSAGES, "mock_response": TEXT}
    with gov.task():
        list(llm.completion(stream=True, **request))
        with llm.completion(stream=True, **request) as hit:
            first = next(hit)
        rest = list(hit)
    assert (first.choices[0].delta.role, rest) == ("assistant", [])


def _routed() -> tuple[litellm.Router, dict[str, Any]]:
    """A Router with one offline deployment, and a streamed request to it
    that may be cached (a Router passes caching=False unless told)."""
    router = litellm.Router(
        model_list=[
            {
                "model_name": "g",
                "litellm_params": {"model": "gpt-4o-mini", "mock_response": TEXT},
            }
        ]
    )
    request = {
        "model": "g",
        "messages": MESSAGES,
        "stream": True,
        "caching": True,
        **USAGE,
    }
    return router, request


def test_a_router_stream_is_served_from_the_cache() -> None:
    """Through ``litellm.Router`` (instrumented), a streamed hit is wrapped
    by the Router like any LiteLLM stream and reads as the miss did (before,
    the Router took the replay for an async iterator and ``for`` failed).

    The Router gives each call its own ``litellm_trace_id`` (not keyed);
    ``caching=True`` because the Router passes ``caching=False`` unless told
    to cache.
    """
    router, request = _routed()
    gov = _governor()
    with instrument(gov), gov.task() as task:
        missed = list(router.completion(**request))
        spent = task.report().cost_usd
        hit = router.completion(**request)
        replayed = list(hit)
    assert (task.report().cache_hits, task.report().cost_usd) == (1, spent)
    assert isinstance(hit, litellm.CustomStreamWrapper)
    assert _text(replayed) == _text(missed) == TEXT
    assert _usages(replayed) == [(0, 0.0)]
    rebuilt = litellm.stream_chunk_builder(replayed)
    assert rebuilt.choices[0].message.content == TEXT


def test_an_async_router_stream_is_served_from_the_cache() -> None:
    """The async Router adds per-call state of its own (a trace id, a
    ``_context_compaction_state`` object): neither keeps a repeat from hitting."""
    router, request = _routed()

    async def both() -> tuple[list[Any], list[Any], Any]:
        async with gov.atask() as task:
            missed = [chunk async for chunk in await router.acompletion(**request)]
            hit = await router.acompletion(**request)
            replayed = [chunk async for chunk in hit]
        return missed, replayed, task

    gov = _governor()
    with instrument(gov):
        missed, replayed, task = asyncio.run(both())
    assert task.report().cache_hits == 1
    assert _text(replayed) == _text(missed) == TEXT
