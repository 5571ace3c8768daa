"""Positional arguments after (model, messages) reach LiteLLM as it names them.

``litellm.completion(model, messages, timeout, temperature, ...)``: the
governed functions map further positional arguments onto the signature of
the function they wrap (``acompletion`` and ``embedding`` order theirs
differently), and refuse what they cannot map instead of dropping it.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Iterator
from typing import Any

import litellm
import pytest

from governor import Governor
from governor.adapters.litellm import GovernedLiteLLM, instrument
from governor.testing import StubServer

MODEL = "openai/gpt-4o-mini"
MESSAGES = [{"role": "user", "content": "Name three primary colours."}]
EMBEDDER = "text-embedding-3-small"


@pytest.fixture
def stub() -> Iterator[StubServer]:
    with StubServer() as server:
        yield server


def test_completion_positionals_follow_litellm_signature(stub: StubServer) -> None:
    """completion(model, messages, timeout, temperature) sends temperature."""
    gov = Governor()
    url = stub.base_url + "/v1"
    with instrument(gov), gov.task() as task:
        litellm.completion(MODEL, MESSAGES, 30, 0.2, api_base=url, api_key="sk-t")
    assert stub.requests[0].body["temperature"] == 0.2
    assert task.report().calls == 1


def test_acompletion_positionals_follow_its_own_signature(stub: StubServer) -> None:
    """acompletion takes (model, messages, functions, function_call, timeout,
    temperature, ...) by position: a different order from completion's."""
    gov = Governor()
    llm = GovernedLiteLLM(gov)
    url = stub.base_url + "/v1"

    async def main() -> None:
        async with gov.atask():
            await llm.acompletion(
                MODEL, MESSAGES, None, None, 30, 0.2, api_base=url, api_key="sk-t"
            )

    asyncio.run(main())
    assert stub.requests[0].body["temperature"] == 0.2


def _embedding_recorder(seen: list[dict[str, Any]]) -> Any:
    """A stand-in with litellm.embedding's signature that records its call."""

    @functools.wraps(litellm.embedding)
    def embedding(**kwargs: Any) -> Any:
        seen.append(kwargs)
        return litellm.EmbeddingResponse(
            model=EMBEDDER,
            data=[{"object": "embedding", "index": 0, "embedding": [0.1, 0.2]}],
            usage=litellm.Usage(prompt_tokens=3, total_tokens=3),
        )

    return embedding


def test_embedding_positionals_follow_litellm_signature() -> None:
    """embedding(model, input, dimensions) and aembedding(*args), which hands
    its arguments to embedding, both send dimensions."""
    seen: list[dict[str, Any]] = []
    embedding = _embedding_recorder(seen)

    async def aembedding(*args: Any, **kwargs: Any) -> Any:
        return embedding(**kwargs)

    gov = Governor()
    llm = GovernedLiteLLM(gov, embedding=embedding, aembedding=aembedding)
    with gov.task():
        llm.embedding(EMBEDDER, ["red"], 64)
        asyncio.run(llm.aembedding(EMBEDDER, ["red"], 64))
    assert [call["dimensions"] for call in seen] == [64, 64]


def test_positionals_a_wrapped_function_cannot_take_are_refused() -> None:
    """A stand-in taking keywords only: a third positional is an error that
    says what to do, and nothing is sent."""
    sent: list[dict[str, Any]] = []

    def provider(**kwargs: Any) -> Any:
        sent.append(kwargs)
        return litellm.completion(**kwargs, mock_response="red")

    gov = Governor()
    llm = GovernedLiteLLM(gov, completion=provider)
    with gov.task(), pytest.raises(TypeError, match="pass the others by name"):
        llm.completion("gpt-4o-mini", MESSAGES, 30)
    with gov.task(), pytest.raises(TypeError, match="multiple values"):
        llm.completion("gpt-4o-mini", MESSAGES, model="gpt-4o")
    assert sent == []


@pytest.mark.parametrize("use_async", [False, True])
def test_stream_options_that_are_not_a_mapping_are_refused_before_admission(
    use_async: bool,
) -> None:
    """Nothing is held or sent: the next call in the task still gets its slot."""
    from governor import ConfigError, Fanout, Policy

    gov = Governor(Policy(fanout=Fanout(max_inflight_calls=1, on_cap="refuse")))
    llm = GovernedLiteLLM(gov)
    kwargs: dict[str, Any] = {
        "model": "gpt-4o-mini",
        "messages": [{"role": "user", "content": "hi"}],
        "mock_response": "ok",
        "max_tokens": 5,
    }

    async def both() -> Any:
        with pytest.raises(ConfigError, match="stream_options must be a mapping"):
            await llm.acompletion(**kwargs, stream=True, stream_options=True)
        return await llm.acompletion(**kwargs)

    with gov.task() as task:
        if use_async:
            answer = asyncio.run(both())
        else:
            with pytest.raises(ConfigError, match="stream_options must be a mapping"):
                llm.completion(**kwargs, stream=True, stream_options=True)
            answer = llm.completion(**kwargs)
    assert answer.choices[0].message.content == "ok"
    assert (task.report().calls, task.report().refused) == (1, 0)
