"""Replaying a cached answer as a stream."""

from __future__ import annotations

import os
from decimal import Decimal
from typing import Any

import pytest

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

from conftest import CountingLiteLLM
from governor import Governor, Policy
from governor.adapters.litellm import GovernedLiteLLM
from governor.cache import (
    CacheHit,
    CacheMiss,
    ResponseCache,
    areplay_chunks,
    replay_chunks,
    split_text,
)
from governor.policies import Cache

TEXT = "Paris is the capital of France.\n\nIt lies on the Seine, in the north."


def hit(message: dict[str, Any] | None = None) -> CacheHit:
    return CacheHit(
        layer="exact",
        similarity=1.0,
        message=message or {"role": "assistant", "content": TEXT},
        model="gpt-4o-mini",
        saved_usd=Decimal("0.002"),
        saved_input_tokens=12,
        saved_output_tokens=20,
        cached_query="capital of France?",
        key="0123456789abcdef0123",
        age_s=3.0,
    )


def test_split_text_rejoins_exactly() -> None:
    """The pieces of a text join back into the same text."""
    pieces = split_text(TEXT, chunk_chars=8)
    assert ("".join(pieces), len(pieces) > 3) == (TEXT, True)


def test_chunks_carry_the_text_then_a_stop() -> None:
    """Deltas join into the answer and the last chunk stops, with no usage."""
    chunks = list(replay_chunks(hit(), chunk_chars=10, created=7))
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)
    last = chunks[-1]
    assert (text, last["choices"][0]["finish_reason"]) == (TEXT, "stop")
    assert [c for c in chunks if "usage" in c] == []


def test_litellm_rebuilds_the_streamed_answer() -> None:
    """LiteLLM's own chunk builder turns the replay into the cached message."""
    import litellm

    chunks = [
        litellm.ModelResponseStream(**c)
        for c in replay_chunks(hit(), include_usage=True)
    ]
    rebuilt = litellm.stream_chunk_builder(chunks)
    assert (rebuilt.choices[0].message.content, rebuilt.usage.total_tokens) == (TEXT, 0)


def shape(chunks: list[Any]) -> list[tuple[int, str | None, bool]]:
    """Each chunk's number of choices, finish reason and whether it has a
    usage, with runs of the same shape (the text chunks) kept once."""
    shapes: list[tuple[int, str | None, bool]] = []
    for c in chunks:
        reason = c.choices[0].finish_reason if c.choices else None
        one = (len(c.choices), reason, getattr(c, "usage", None) is not None)
        if not shapes or shapes[-1] != one:
            shapes.append(one)
    return shapes


@pytest.mark.parametrize("include_usage", [False, True], ids=["plain", "usage"])
def test_the_replay_has_the_shape_of_litellm_s_own_stream(include_usage: bool) -> None:
    """As LiteLLM streams an answer: no usage unless asked for, and then in
    a last chunk of its own, without choices (as the OpenAI API sends it)."""
    import litellm

    options = {"stream_options": {"include_usage": True}} if include_usage else {}
    live = litellm.completion(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "capital of France?"}],
        stream=True,
        mock_response=TEXT,
        **options,
    )
    replay = [
        litellm.ModelResponseStream(**c)
        for c in replay_chunks(hit(), include_usage=include_usage)
    ]
    assert shape(replay) == shape(list(live))
    assert shape(replay)[-1] == (
        (0, None, True) if include_usage else (1, "stop", False)
    )


async def test_openai_sdk_code_reads_a_zero_usage_from_the_last_chunk() -> None:
    """``if not chunk.choices: usage = chunk.usage`` gets a usage of zero
    tokens and zero cost, sync and async."""
    import litellm

    def usage_of(chunks: list[dict[str, Any]]) -> Any:
        usage = None
        for chunk in (litellm.ModelResponseStream(**c) for c in chunks):
            if not chunk.choices:
                usage = chunk.usage
        return usage

    sync = usage_of(list(replay_chunks(hit(), include_usage=True)))
    chunks = [c async for c in areplay_chunks(hit(), include_usage=True)]
    for usage in (sync, usage_of(chunks)):
        assert (usage.total_tokens, usage.prompt_tokens, usage.cost) == (0, 0, 0.0)
    assert usage_of(list(replay_chunks(hit()))) is None


def test_tool_calls_replay_with_their_finish_reason() -> None:
    """A cached tool call comes back whole, finishing with tool_calls."""
    call = {
        "id": "call_1",
        "type": "function",
        "function": {"name": "lookup", "arguments": '{"q": "x"}'},
    }
    chunks = list(
        replay_chunks(hit({"role": "assistant", "content": None, "tool_calls": [call]}))
    )
    calls = [c for c in chunks if c["choices"][0]["delta"].get("tool_calls")]
    assert calls[0]["choices"][0]["delta"]["tool_calls"] == [{"index": 0, **call}]
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"


async def test_a_streamed_request_is_served_from_cache() -> None:
    """A stream=True repeat is a hit, replayed asynchronously."""
    cache = ResponseCache(Cache(embedder="hashing"))
    messages = [{"role": "user", "content": "Where is Paris?"}]
    miss = cache.lookup(model="gpt-4o-mini", messages=messages, params={"stream": True})
    assert isinstance(miss, CacheMiss)
    cache.store(
        miss,
        message={"role": "assistant", "content": TEXT},
        model="gpt-4o-mini",
        cost_usd=Decimal("0.002"),
    )
    found = cache.lookup(
        model="gpt-4o-mini", messages=messages, params={"stream": True}
    )
    assert isinstance(found, CacheHit)
    pieces = [
        c["choices"][0]["delta"].get("content") async for c in areplay_chunks(found)
    ]
    assert "".join(p or "" for p in pieces) == TEXT


@pytest.mark.parametrize("use_async", [False, True], ids=["sync", "async"])
@pytest.mark.parametrize("include_usage", [False, True], ids=["plain", "usage"])
def test_a_hit_streams_as_the_same_request_sent_to_litellm(
    include_usage: bool, use_async: bool
) -> None:
    """Through the adapter, a streamed hit has the shape of the stream the
    same request got from LiteLLM; its usage chunk, when asked for, is zero."""
    import asyncio

    gov = Governor(Policy(cache=Cache(embedder="hashing")))
    llm = GovernedLiteLLM(gov, completion=CountingLiteLLM().completion)
    options = {"stream_options": {"include_usage": True}} if include_usage else {}
    request = {
        "model": "gpt-4o-mini",
        "messages": [{"role": "user", "content": "Where is Paris?"}],
        "mock_response": TEXT,
        "stream": True,
        **options,
    }

    async def read_async() -> list[Any]:
        return [c async for c in await llm.acompletion(**request)]

    with gov.task() as task:
        live = list(llm.completion(**request))
        replay = (
            asyncio.run(read_async()) if use_async else list(llm.completion(**request))
        )
    assert task.report().cache_hits == 1
    assert shape(replay) == shape(live)
    usage = [c.usage for c in replay if not c.choices]
    assert [(u.total_tokens, u.cost) for u in usage] == (
        [(0, 0.0)] if include_usage else []
    )


@pytest.mark.parametrize("use_async", [False, True], ids=["sync", "async"])
def test_a_streamed_hit_has_the_attributes_of_litellm_s_stream(
    use_async: bool,
) -> None:
    """model, response_id, custom_llm_provider and chunks read as on LiteLLM's
    stream object; the chunks rebuild the answer with stream_chunk_builder."""
    import asyncio

    import litellm

    gov = Governor(Policy(cache=Cache(embedder="hashing")))
    llm = GovernedLiteLLM(gov, completion=CountingLiteLLM().completion)
    request = {
        "model": "gpt-4o-mini",
        "messages": [{"role": "user", "content": "Where is Paris?"}],
        "mock_response": TEXT,
        "stream": True,
    }

    async def read_async() -> Any:
        stream = await llm.acompletion(**request)
        assert stream.response_id is None
        _ = [c async for c in stream]
        return stream

    def read_sync() -> Any:
        stream = llm.completion(**request)
        assert stream.response_id is None
        _ = list(stream)
        return stream

    with gov.task() as task:
        list(llm.completion(**request))
        stream = asyncio.run(read_async()) if use_async else read_sync()
        again = asyncio.run(read_async()) if use_async else read_sync()
    assert task.report().cache_hits == 2
    assert (stream.model, stream.custom_llm_provider) == ("gpt-4o-mini", None)
    assert stream.response_id == stream.chunks[0].id
    assert stream.response_id.startswith("chatcmpl-cache-")
    assert again.response_id != stream.response_id  # one id per answer served
    rebuilt = litellm.stream_chunk_builder(stream.chunks)
    assert rebuilt.choices[0].message.content == TEXT


def _stream_of(*chunks: dict[str, Any]) -> Any:
    """A provider stand-in that streams ``chunks`` as its answer (any request)."""
    import litellm

    def complete(**kwargs: Any) -> Any:
        return iter(
            [
                litellm.ModelResponseStream(
                    model="gpt-4o-mini", choices=[{"index": 0, **chunk}]
                )
                for chunk in chunks
            ]
        )

    return complete


_TEXT = {"delta": {"content": "Paris is the capital"}, "finish_reason": None}
_CALL = {
    "delta": {
        "tool_calls": [
            {
                "index": 0,
                "id": "call_1",
                "type": "function",
                "function": {"name": "lookup", "arguments": "{}"},
            }
        ]
    },
    "finish_reason": None,
}


def _finish(reason: str) -> dict[str, Any]:
    return {"delta": {}, "finish_reason": reason}


@pytest.mark.parametrize(
    "chunks",
    [
        (_TEXT, _finish("length")),
        (_TEXT, _finish("content_filter")),
        (_TEXT,),
        (_TEXT, _CALL, _finish("tool_calls")),
    ],
    ids=["length", "filtered", "no finish", "tool call"],
)
def test_a_streamed_answer_that_did_not_stop_plainly_is_not_cached(
    chunks: tuple[dict[str, Any], ...],
) -> None:
    """A stream read to its end is stored only when it finished with 'stop'
    and called no tool; a plain one is (the control case)."""

    def hits_after(*streamed: dict[str, Any]) -> int:
        gov = Governor(Policy(cache=Cache(embedder="hashing")))
        messages = [{"role": "user", "content": "Where is Paris?"}]
        llm = GovernedLiteLLM(gov, completion=_stream_of(*streamed))
        request = {"messages": messages, "mock_response": "In France."}
        with gov.task():
            list(llm.completion(model="gpt-4o-mini", stream=True, **request))
        llm = GovernedLiteLLM(gov, completion=CountingLiteLLM().completion)
        with gov.task() as task:
            llm.completion(model="gpt-4o-mini", **request)
        return task.report().cache_hits

    assert (hits_after(*chunks), hits_after(_TEXT, _finish("stop"))) == (0, 1)
