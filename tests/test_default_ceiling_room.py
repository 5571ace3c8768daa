"""The governor's default output ceiling fits the room the prompt leaves in
the model's context window; a ``max_tokens`` the caller set is never changed.

Real LiteLLM calls against a stub server on 127.0.0.1: a prompt near the
window sent with the default 4096 is what OpenAI refuses with
``context_length_exceeded``, although it takes the same call without
``max_tokens``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import litellm
import pytest

import governor.adapters.litellm as litellm_adapter
from governor import Governor, Policy, TaskReport
from governor.adapters.litellm import GovernedLiteLLM
from governor.testing import StubBehaviour, StubServer

MODEL = "openai/gpt-4o-mini"
WINDOW = 128_000  # gpt-4o-mini's max_input_tokens in LiteLLM's map
DEFAULT = 4096
NEAR_FULL = [{"role": "user", "content": "word " * 127_000}]
LITTLE_ROOM = [{"role": "user", "content": "word " * 127_400}]
OVER_FULL = [{"role": "user", "content": "word " * 130_000}]


@pytest.fixture
def stub(monkeypatch: pytest.MonkeyPatch) -> Iterator[StubServer]:
    monkeypatch.setattr(litellm, "suppress_debug_info", True)
    with StubServer(default=StubBehaviour(answer="ok")) as server:
        yield server


@pytest.fixture
def counts(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Every prompt count the LiteLLM adapter takes, as counted."""
    taken: list[int] = []
    real = litellm_adapter.count_prompt_tokens

    def counting(*args: Any, **kwargs: Any) -> int:
        taken.append(real(*args, **kwargs))
        return taken[-1]

    monkeypatch.setattr(litellm_adapter, "count_prompt_tokens", counting)
    return taken


def _kwargs(stub: StubServer, messages: Any, **extra: Any) -> dict[str, Any]:
    return {
        "model": MODEL,
        "messages": messages,
        "api_base": stub.base_url + "/v1",
        "api_key": "sk-test",
        **extra,
    }


def _governed() -> GovernedLiteLLM:
    return GovernedLiteLLM(Governor(Policy(default_max_output_tokens=DEFAULT)))


def _counted(messages: Any) -> int:
    return int(litellm.token_counter(model="gpt-4o-mini", messages=messages))


def test_the_default_ceiling_leaves_the_prompt_its_window(
    stub: StubServer, counts: list[int]
) -> None:
    _governed().completion(**_kwargs(stub, NEAR_FULL))
    sent = stub.requests[0].body["max_tokens"]
    assert sent >= 1
    assert _counted(NEAR_FULL) + sent <= WINDOW
    assert counts == [_counted(NEAR_FULL)]  # counted once, for the room


def test_the_hold_reserves_the_ceiling_sent(
    monkeypatch: pytest.MonkeyPatch, counts: list[int]
) -> None:
    monkeypatch.setattr(litellm, "suppress_debug_info", True)
    slow = StubBehaviour(answer="ok", delay_s=2)
    llm = _governed()
    gov = llm.governor

    async def cut_off(stub: StubServer) -> TaskReport:
        async with gov.atask() as task:
            call = asyncio.ensure_future(llm.acompletion(**_kwargs(stub, NEAR_FULL)))
            while not stub.requests:
                await asyncio.sleep(0.01)
            call.cancel()
            with pytest.raises(asyncio.CancelledError):
                await call
        return task.report()

    with StubServer(default=slow) as stub:
        report = asyncio.run(cut_off(stub))
        sent = stub.requests[0].body["max_tokens"]
    # Cut off after sending, the call is charged its hold: the output it
    # holds is the max_tokens sent, and the prompt was counted only once.
    assert report.output_tokens == sent < DEFAULT
    assert len(counts) == 1
    assert counts[0] + sent <= WINDOW
    assert report.input_tokens <= WINDOW


@pytest.mark.parametrize(
    "messages", [LITTLE_ROOM, OVER_FULL], ids=["little-room", "over"]
)
def test_a_prompt_leaving_too_little_room_keeps_the_default(
    stub: StubServer, messages: Any
) -> None:
    """A few tokens of answer would be bought at a whole prompt's price: the
    call goes as before, the provider refuses it as too long, and a
    context-window fallback (a Router's, a cascade's) takes it elsewhere."""
    room = WINDOW - _counted(messages)
    assert room < 256
    _governed().completion(**_kwargs(stub, messages))
    assert stub.requests[0].body["max_tokens"] == DEFAULT


@pytest.mark.parametrize("messages", [NEAR_FULL, OVER_FULL], ids=["near", "over"])
def test_a_callers_max_tokens_is_sent_as_written(
    stub: StubServer, messages: Any
) -> None:
    _governed().completion(**_kwargs(stub, messages, max_tokens=DEFAULT))
    assert stub.requests[0].body["max_tokens"] == DEFAULT


def test_a_prompt_far_from_the_window_keeps_the_default_uncounted(
    stub: StubServer, counts: list[int]
) -> None:
    _governed().completion(**_kwargs(stub, [{"role": "user", "content": "hi"}]))
    assert stub.requests[0].body["max_tokens"] == DEFAULT
    assert counts == []
