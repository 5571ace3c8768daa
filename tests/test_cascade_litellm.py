"""The cascade runner driving real LiteLLM calls (mock_response, no network)."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import httpx
import litellm
import pytest

from governor.cascade import (
    Answer,
    Cascade,
    CascadeExhausted,
    CascadeRunner,
    Retry,
    Tier,
    classify_error,
)
from governor.pricing import RateCard, Usage

MESSAGES = [{"role": "user", "content": "Name a prime number."}]


RATES = RateCard()


def _answer(response: Any) -> Answer:
    usage = Usage(
        prompt_tokens=response.usage.prompt_tokens,
        completion_tokens=response.usage.completion_tokens,
    )
    cost = RATES.cost(response.model, usage).usd
    return Answer(
        response.choices[0].message.content, response.model, cost, raw=response
    )


def complete(tier: Tier, messages: list[dict[str, str]]) -> Answer:
    """Send one tier's call through litellm with its SDK retries turned off."""
    response = litellm.completion(
        model=tier.model, messages=messages, num_retries=0, max_retries=0, **tier.params
    )
    return _answer(response)


async def acomplete(tier: Tier, messages: list[dict[str, str]]) -> Answer:
    """The async twin of :func:`complete`, through litellm.acompletion."""
    response = await litellm.acompletion(
        model=tier.model, messages=messages, num_retries=0, max_retries=0, **tier.params
    )
    return _answer(response)


def cascade(failure: str, retries: int = 0) -> Cascade:
    """gpt-4o-mini failing with ``failure``, then gpt-4o answering 'Seven'."""
    return Cascade(
        tiers=[
            Tier(name="cheap", model="gpt-4o-mini", params={"mock_response": failure}),
            Tier(name="premium", model="gpt-4o", params={"mock_response": "Seven"}),
        ],
        retry=Retry(max_retries_per_tier=retries, jitter_s=0, backoff_initial_s=0.25),
    )


def test_rate_limit_is_retried_then_falls_back() -> None:
    """litellm's RateLimitError is retried with backoff, then gpt-4o answers."""
    slept: list[float] = []
    runner = CascadeRunner(cascade("litellm.RateLimitError", retries=2))
    result = runner.run(MESSAGES, call=complete, sleep=slept.append)
    kinds = [a.error_kind for a in result.attempts]
    assert kinds == ["rate_limit", "rate_limit", "rate_limit", None]
    assert slept == [0.25, 0.5]
    assert (result.tier.name, result.answer.text) == ("premium", "Seven")


def test_internal_server_error_falls_back_to_the_next_tier() -> None:
    """litellm's InternalServerError is a server failure; the next tier answers."""
    runner = CascadeRunner(cascade("litellm.InternalServerError"))
    result = runner.run(MESSAGES, call=complete, sleep=lambda s: None)
    assert [a.error_kind for a in result.attempts] == ["server", None]
    # Mock calls report 10 prompt and 20 completion tokens: gpt-4o's price.
    assert result.cost_usd == Decimal("0.000225")


def test_context_window_error_falls_back_without_retry() -> None:
    """litellm's ContextWindowExceededError goes straight to the next tier."""
    slept: list[float] = []
    runner = CascadeRunner(cascade("litellm.ContextWindowExceededError", retries=2))
    result = runner.run(MESSAGES, call=complete, sleep=slept.append)
    assert ([a.error_kind for a in result.attempts], slept) == (
        ["context_window", None],
        [],
    )


def test_retry_after_header_of_a_real_rate_limit_error_is_honoured() -> None:
    """A RateLimitError carrying Retry-After: 7 makes the runner wait 7 s."""
    request = httpx.Request("POST", "http://127.0.0.1:9/v1/chat/completions")
    limited = litellm.RateLimitError(
        "rate limited",
        llm_provider="openai",
        model="gpt-4o-mini",
        response=httpx.Response(429, headers={"retry-after": "7"}, request=request),
    )
    calls: list[str] = []

    def call(tier: Tier, messages: list[dict[str, str]]) -> Answer:
        calls.append(tier.name)
        if len(calls) == 1:
            raise limited
        return complete(tier, messages)

    slept: list[float] = []
    runner = CascadeRunner(cascade("Three", retries=1))
    result = runner.run(MESSAGES, call=call, sleep=slept.append)
    assert (slept, calls, result.answer.text) == ([7.0], ["cheap", "cheap"], "Three")


async def test_async_calls_fall_back_on_a_rate_limit() -> None:
    """Through litellm.acompletion, a rate-limited tier falls back as well."""
    runner = CascadeRunner(cascade("litellm.RateLimitError"))

    async def no_wait(seconds: float) -> None:
        return None

    result = await runner.arun(MESSAGES, call=acomplete, sleep=no_wait)
    assert [a.outcome for a in result.attempts] == ["error", "accepted"]


def test_exhausted_cascade_lists_each_litellm_failure() -> None:
    """When every tier fails, the error names each attempt's litellm error."""
    failing = Cascade(
        tiers=[
            Tier(
                name="a",
                model="gpt-4o-mini",
                params={"mock_response": "litellm.RateLimitError"},
            ),
            Tier(
                name="b",
                model="gpt-4o",
                params={"mock_response": "litellm.InternalServerError"},
            ),
        ],
        retry=Retry(max_retries_per_tier=0),
    )
    with pytest.raises(CascadeExhausted) as caught:
        CascadeRunner(failing).run(MESSAGES, call=complete)
    reasons = [a.reason.split(":")[1].strip() for a in caught.value.attempts]
    assert reasons == ["RateLimitError", "InternalServerError"]


def test_real_content_policy_and_timeout_errors_are_classified() -> None:
    """litellm's ContentPolicyViolationError and Timeout get their own kinds."""
    refused = litellm.ContentPolicyViolationError(
        "flagged", model="gpt-4o-mini", llm_provider="openai"
    )
    slow = litellm.Timeout("timed out", model="gpt-4o-mini", llm_provider="openai")
    assert (classify_error(refused), classify_error(slow)) == (
        "content_policy",
        "timeout",
    )


def test_a_bad_request_and_its_subclasses_are_classified() -> None:
    """litellm's 400s fall back; its named subclasses keep their own kinds."""
    bad = litellm.BadRequestError(
        "Unsupported parameter: 'temperature'", model="o1", llm_provider="openai"
    )
    unsupported = litellm.UnsupportedParamsError("no 'seed' here", model="m")
    window = litellm.ContextWindowExceededError(
        "too long", model="gpt-4o-mini", llm_provider="openai"
    )
    assert [classify_error(e) for e in (bad, unsupported, window)] == [
        "bad_request",
        "bad_request",
        "context_window",
    ]


def test_a_bad_request_on_the_cheap_tier_falls_back_to_the_next() -> None:
    """A 400 from litellm on the cheap tier: the next tier answers, no retry."""
    refused = litellm.BadRequestError(
        "Unsupported value: 'temperature' does not support 0.2",
        model="gpt-4o-mini",
        llm_provider="openai",
    )
    cheap = Tier(name="cheap", model="gpt-4o-mini", params={"mock_response": refused})
    premium = Tier(name="premium", model="gpt-4o", params={"mock_response": "Seven"})
    failing = cascade("unused", retries=2).model_copy(
        update={"tiers": (cheap, premium)}
    )
    slept: list[float] = []
    result = CascadeRunner(failing).run(MESSAGES, call=complete, sleep=slept.append)
    assert [(a.tier, a.error_kind) for a in result.attempts] == [
        ("cheap", "bad_request"),
        ("premium", None),
    ]
    assert (result.answer.text, slept) == ("Seven", [])


async def test_a_nan_retry_after_of_a_real_rate_limit_error_does_not_hang() -> None:
    """litellm's RateLimitError with Retry-After: nan waits the backoff in arun."""
    import asyncio

    request = httpx.Request("POST", "http://127.0.0.1:9/v1/chat/completions")
    limited = litellm.RateLimitError(
        "rate limited",
        llm_provider="openai",
        model="gpt-4o-mini",
        response=httpx.Response(429, headers={"retry-after": "nan"}, request=request),
    )
    calls: list[str] = []

    async def call(tier: Tier, messages: list[dict[str, str]]) -> Answer:
        calls.append(tier.name)
        if len(calls) == 1:
            raise limited
        return await acomplete(tier, messages)

    runner = CascadeRunner(cascade("Three", retries=1))
    result = await asyncio.wait_for(runner.arun(MESSAGES, call=call), timeout=5)
    assert (calls, result.answer.text) == (["cheap", "cheap"], "Three")
