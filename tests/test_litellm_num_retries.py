"""LiteLLM's ``num_retries`` under the governor: each attempt a governed call.

LiteLLM retries a failed call inside that one call (its ``@client`` wrapper
calls ``completion_with_retries``, and the OpenAI SDK is sent
``max_retries=num_retries``), so requests went out that no budget held.
Governed, the retries are made around the call: each attempt is reserved and
charged on its own, and a refusal is never retried. Real LiteLLM calls
against ``governor.testing.StubServer`` on 127.0.0.1, set to fail a number of
requests before it answers; it records every request it gets.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from dataclasses import replace
from decimal import Decimal
from typing import Any

import litellm
import pytest

from governor import Budget, BudgetExceeded, Governor, Policy
from governor.adapters.litellm import GovernedLiteLLM, instrument
from governor.testing import StubBehaviour, StubServer

CHAT = "openai/gpt-4o"
MESSAGES = [{"role": "user", "content": "What is the red planet?"}]
# What one answer of the server costs at gpt-4o's list prices: 50 prompt
# tokens at $2.50/M and 20 completion tokens at $10/M.
ANSWER_USD = Decimal("0.000325")
ANSWER = StubBehaviour(answer="Mars.", prompt_tokens=50, completion_tokens=20)
MODEL = CHAT.split("/", 1)[1]  # the model name LiteLLM sends to the server


def _fail(times: int | None) -> StubBehaviour:
    """Answer 500 to the first ``times`` requests (all if ``None``), then 200."""
    return replace(ANSWER, status=500, fail_times=times)


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> Iterator[StubServer]:
    monkeypatch.setattr(litellm, "suppress_debug_info", True)
    # LiteLLM clears its global num_retries after a failure: set it back.
    monkeypatch.setattr(litellm, "num_retries", None)
    with StubServer(default=ANSWER) as srv:
        yield srv


def _v1(server: StubServer) -> str:
    """The ``api_base`` of ``server``."""
    return server.base_url + "/v1"


def _instrumented(gov: Governor, api: str) -> Any:
    """LiteLLM instrumented by ``gov`` for the ``instrumented`` api; as it is
    for ``GovernedLiteLLM``."""
    return instrument(gov) if api == "instrumented" else contextlib.nullcontext()


def _complete(gov: Governor, api: str, how: str, **kwargs: Any) -> Any:
    """A chat completion, sync or async, through ``GovernedLiteLLM`` or
    through LiteLLM instrumented by ``gov`` (see :func:`_instrumented`)."""
    if api == "governed":
        client = GovernedLiteLLM(gov)
        complete, acomplete = client.completion, client.acompletion
    else:
        complete, acomplete = litellm.completion, litellm.acompletion
    args = {"model": CHAT, "messages": MESSAGES, "api_key": "sk-test", **kwargs}
    if how == "sync":
        return complete(**args)
    return asyncio.run(acomplete(**args))


def _governor(max_usd: str = "1") -> Governor:
    return Governor(Policy(budgets=[Budget(max_usd=max_usd)]))


APIS = ["governed", "instrumented"]
HOWS = ["sync", "async"]


@pytest.mark.parametrize("how", HOWS)
@pytest.mark.parametrize("api", APIS)
def test_each_of_num_retries_attempts_is_a_governed_call(
    server: StubServer, api: str, how: str
) -> None:
    server.set_behaviour(MODEL, _fail(2))
    gov = _governor()
    with _instrumented(gov, api), gov.task() as task:
        answer = _complete(
            gov, api, how, api_base=_v1(server), max_tokens=20, num_retries=2
        )
        report = task.report()
    gov.close()
    assert answer.choices[0].message.content == "Mars."
    assert len(server.requests) == 3
    assert report.calls == 3
    assert report.cost_usd == ANSWER_USD  # the two 500 answers are free


@pytest.mark.parametrize("how", HOWS)
@pytest.mark.parametrize("api", APIS)
def test_litellms_global_num_retries_is_governed_the_same(
    server: StubServer, api: str, how: str
) -> None:
    server.set_behaviour(MODEL, _fail(2))
    litellm.num_retries = 2  # the fixture puts it back
    gov = _governor()
    with _instrumented(gov, api), gov.task() as task:
        answer = _complete(gov, api, how, api_base=_v1(server), max_tokens=20)
        report = task.report()
    gov.close()
    assert answer.choices[0].message.content == "Mars."
    assert len(server.requests) == 3
    assert report.calls == 3
    assert report.cost_usd == ANSWER_USD


@pytest.mark.parametrize("how", HOWS)
def test_the_last_attempts_error_is_raised_once_retries_run_out(
    server: StubServer, how: str
) -> None:
    server.set_behaviour(MODEL, _fail(None))
    gov = _governor()
    with instrument(gov), gov.task() as task:
        with pytest.raises(litellm.InternalServerError):
            _complete(gov, "instrumented", how, api_base=_v1(server), num_retries=2)
        report = task.report()
    gov.close()
    assert len(server.requests) == 3
    assert report.calls == 3
    assert report.cost_usd == 0


@pytest.mark.parametrize("how", HOWS)
@pytest.mark.parametrize("api", APIS)
def test_a_retry_the_budget_cannot_hold_is_refused_not_retried(
    server: StubServer, api: str, how: str
) -> None:
    # A timed-out attempt may be billed: it is charged its hold (1000 output
    # tokens, $0.01 and a little input), and the rest of the $0.015 budget
    # cannot hold the next attempt.
    server.set_behaviour(MODEL, replace(ANSWER, delay_s=1))
    gov = _governor("0.015")
    with _instrumented(gov, api), gov.task() as task:
        with pytest.raises(BudgetExceeded):
            _complete(
                gov,
                api,
                how,
                api_base=_v1(server),
                max_tokens=1000,
                num_retries=2,
                timeout=0.3,
            )
        report = task.report()
    gov.close()
    assert len(server.requests) == 1
    assert report.calls == 1
    assert Decimal("0.01") < report.cost_usd < Decimal("0.015")


def _waited(error: BaseException, attempt: int = 1) -> float:
    """The wait the governed retries take after ``error`` on ``attempt``."""
    import tenacity

    from governor.adapters.litellm import _retry_plan

    plan = _retry_plan({"model": "gpt-4o"}, 3)
    state = tenacity.RetryCallState(tenacity.Retrying(), None, (), {})
    state.attempt_number = attempt
    state.set_exception((type(error), error, None))
    return float(plan["wait"](state))


def _status_error(status: int, headers: dict[str, str]) -> BaseException:
    import httpx

    request = httpx.Request("POST", "http://127.0.0.1/v1/chat/completions")
    response = httpx.Response(status, headers=headers, request=request)
    error_class = (
        litellm.RateLimitError if status == 429 else litellm.InternalServerError
    )
    return error_class("boom", llm_provider="openai", model="gpt-4o", response=response)


def test_a_retry_waits_what_the_provider_asks_for() -> None:
    """Retry-After is honoured, as the SDK's own retries honour it."""
    assert _waited(_status_error(429, {"retry-after": "3"})) == 3.0
    assert _waited(_status_error(503, {"retry-after-ms": "1500"})) == 1.5
    assert _waited(_status_error(429, {"retry-after": "3600"})) == 60.0


def test_a_retry_without_retry_after_backs_off() -> None:
    """A 5xx or a rate limit without Retry-After waits 0.5 s, then more."""
    first = _waited(_status_error(500, {}), attempt=1)
    third = _waited(_status_error(500, {}), attempt=3)
    assert 0.5 <= first <= 0.75
    assert 2.0 <= third <= 2.25
