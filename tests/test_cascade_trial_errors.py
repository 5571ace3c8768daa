"""Cascade fixes found by a trial: runs that end in an error, refusals' kinds.

A run that ends without an answer, whatever ended it, takes what it spent off
the task's saving against the premium tier. A content-policy refusal gets
advice about the prompt; a 422 is handled as a 400.
"""

from __future__ import annotations

import asyncio
from decimal import Decimal
from typing import Any

import httpx
import litellm
import openai
import pytest

from conftest import MOCK_COST, SpanCapture
from governor import Budget, BudgetExceeded, Governor, LoopDetected, Policy
from governor.adapters import litellm as adapter
from governor.adapters.litellm import GovernedLiteLLM
from governor.cascade import (
    Answer,
    CallableCheck,
    Cascade,
    CascadeExhausted,
    CascadeRunner,
    MatchCheck,
    Tier,
    classify_error,
)
from governor.policies import Loops
from governor.pricing import Usage
from governor.telemetry import attributes as attr

MESSAGES = [{"role": "user", "content": "hi"}]
TIERS = [Tier(name="cheap", model="gpt-4o-mini"), Tier(name="top", model="gpt-4o")]
REJECT_CHEAP = MatchCheck(pattern="premium")


def fake(**kwargs: Any) -> Any:
    """litellm.completion answering from its mock: each tier names itself."""
    text = "cheap" if kwargs["model"] == "gpt-4o-mini" else "premium"
    return litellm.completion(**{**kwargs, "mock_response": text})


async def afake(**kwargs: Any) -> Any:
    """Async form of :func:`fake`."""
    text = "cheap" if kwargs["model"] == "gpt-4o-mini" else "premium"
    return await litellm.acompletion(**{**kwargs, "mock_response": text})


def governed(
    capture: SpanCapture, cascade: Cascade, **options: Any
) -> tuple[Governor, GovernedLiteLLM]:
    policy = Policy(cascade=cascade, **options.pop("policy", {}))
    gov = Governor(policy, tracer_provider=capture.provider)
    options.setdefault("completion", fake)
    options.setdefault("acompletion", afake)
    return gov, GovernedLiteLLM(gov, **options)


def shown_saving(capture: SpanCapture) -> float:
    """The task span's saving against the premium tier."""
    saved = capture.task().attributes[attr.CASCADE_SAVED_USD]
    assert isinstance(saved, float)
    return saved


def assert_lost_its_spend(capture: SpanCapture, task: Any) -> None:
    """The task's saving is minus what it spent, on the task and its span."""
    spent = task.report().cost_usd
    assert spent > 0
    assert task.cascade_saved_usd == -spent
    assert shown_saving(capture) == pytest.approx(float(-spent))


# -- A. every run that ends without an answer takes its spend off ------------


def _check_bug(answer: Any, history: Any) -> bool:
    raise ValueError("check bug")


@pytest.mark.parametrize("use_async", [False, True])
def test_a_check_that_raises_takes_the_runs_spend_off_the_saving(
    capture: SpanCapture, use_async: bool
) -> None:
    """The cheap answer was paid, then its check raised: the run saved
    nothing and shows the loss; the check's error goes on unchanged."""
    cascade = Cascade(tiers=TIERS, checks=[CallableCheck(ref="bug")])
    gov, llm = governed(capture, cascade, callables={"bug": _check_bug})
    with gov.task() as task:
        with pytest.raises(ValueError, match="check bug"):
            if use_async:
                asyncio.run(llm.acascade(MESSAGES, max_tokens=50))
            else:
                llm.cascade(MESSAGES, max_tokens=50)
        assert task.report().cost_usd == MOCK_COST
    assert_lost_its_spend(capture, task)


def test_a_judge_refused_by_the_budget_takes_the_runs_spend_off_the_saving(
    capture: SpanCapture,
) -> None:
    """An LLM judge whose own call the budget refuses stops the run after the
    cheap tier was paid: BudgetExceeded propagates, naming the task."""
    clients: list[GovernedLiteLLM] = []

    def judge(answer: Any, history: Any) -> bool:
        clients[0].completion(model="gpt-4o", messages=MESSAGES, max_tokens=10**6)
        return True

    cascade = Cascade(tiers=TIERS, checks=[CallableCheck(ref="judge")])
    options = {"budgets": [Budget(max_usd="0.01")]}
    gov, llm = governed(capture, cascade, callables={"judge": judge}, policy=options)
    clients.append(llm)
    with gov.task() as task, pytest.raises(BudgetExceeded) as caught:
        llm.cascade(MESSAGES, max_tokens=50)
    assert caught.value.task_id == task.id
    assert task.report().cost_usd == MOCK_COST
    assert_lost_its_spend(capture, task)


def test_a_model_call_limit_stop_takes_the_runs_spend_off_the_saving(
    capture: SpanCapture,
) -> None:
    """max_model_calls stops the run at the top tier, after the cheap answer
    was paid and rejected."""
    cascade = Cascade(tiers=TIERS, checks=[REJECT_CHEAP])
    options = {"loops": Loops(max_model_calls=1)}
    gov, llm = governed(capture, cascade, policy=options)
    with gov.task() as task, pytest.raises(LoopDetected):
        llm.cascade(MESSAGES, max_tokens=50)
    assert task.report().cost_usd == MOCK_COST
    assert_lost_its_spend(capture, task)


def test_an_unclassified_provider_error_takes_the_runs_spend_off_the_saving(
    capture: SpanCapture,
) -> None:
    """A 409 is no failure the cascade handles: it stops the run unchanged
    (a 4xx the table does not name), and the cheap tier's spend is lost."""
    conflict = openai.ConflictError(
        "conflict",
        response=httpx.Response(409, request=httpx.Request("POST", "http://x")),
        body=None,
    )

    def completion(**kwargs: Any) -> Any:
        if kwargs["model"] == "gpt-4o":
            raise conflict
        return fake(**kwargs)

    cascade = Cascade(tiers=TIERS, checks=[REJECT_CHEAP])
    gov, llm = governed(capture, cascade, completion=completion)
    with gov.task() as task, pytest.raises(openai.ConflictError) as caught:
        llm.cascade(MESSAGES, max_tokens=50)
    assert caught.value is conflict
    assert task.report().cost_usd == MOCK_COST
    assert_lost_its_spend(capture, task)


def _hanging(started: asyncio.Event) -> Any:
    """An acompletion whose top tier never answers; ``started`` is set then."""

    async def acompletion(**kwargs: Any) -> Any:
        if kwargs["model"] == "gpt-4o":
            started.set()
            await asyncio.sleep(3600)
        return await afake(**kwargs)

    return acompletion


def test_a_timed_out_run_takes_its_spend_off_the_saving(
    capture: SpanCapture,
) -> None:
    """asyncio.wait_for cancels the run while the top tier is in flight."""
    cascade = Cascade(tiers=TIERS, checks=[REJECT_CHEAP])

    async def main() -> Any:
        started = asyncio.Event()
        gov, llm = governed(capture, cascade, acompletion=_hanging(started))
        async with gov.atask() as task:
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(llm.acascade(MESSAGES, max_tokens=50), 0.5)
        return task

    task = asyncio.run(main())
    assert task.report().cost_usd >= MOCK_COST
    assert_lost_its_spend(capture, task)


def test_a_cancelled_run_takes_its_spend_off_and_stays_cancelled(
    capture: SpanCapture,
) -> None:
    """The CancelledError goes on unchanged: the asyncio task ends cancelled."""
    cascade = Cascade(tiers=TIERS, checks=[REJECT_CHEAP])

    async def main() -> tuple[Any, bool]:
        started = asyncio.Event()
        gov, llm = governed(capture, cascade, acompletion=_hanging(started))
        async with gov.atask() as task:
            job = asyncio.create_task(llm.acascade(MESSAGES, max_tokens=50))
            await started.wait()
            job.cancel()
            with pytest.raises(asyncio.CancelledError):
                await job
        return task, job.cancelled()

    task, cancelled = asyncio.run(main())
    assert cancelled
    assert task.report().cost_usd > MOCK_COST  # the top tier's hold too
    assert_lost_its_spend(capture, task)


def test_an_error_after_the_saving_was_counted_does_not_count_it_again(
    capture: SpanCapture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run whose saving is on the task, then raises (the loop watch on its
    answer), is not taken off again; a later run whose check raises is."""

    class Stopping:
        def after_answer(self, text: Any, step: int) -> None:
            raise RuntimeError("stopped after the answer")

    calls = {"n": 0}

    def check(answer: Any, history: Any) -> bool:
        calls["n"] += 1
        if calls["n"] > 1:
            raise ValueError("check bug")
        return True

    cascade = Cascade(tiers=TIERS, checks=[CallableCheck(ref="check")])
    gov, llm = governed(capture, cascade, callables={"check": check})
    with gov.task() as task:
        with monkeypatch.context() as patch:
            patch.setattr(adapter, "loop_watch", lambda task, telemetry: Stopping())
            with pytest.raises(RuntimeError, match="stopped after the answer"):
                llm.cascade(MESSAGES, max_tokens=50)
        # The cheap answer (the mock's 10 + 20 tokens) priced at the top tier.
        top = gov.rate_card.rate("gpt-4o").cost(Usage(10, 20)).usd
        answered = top - MOCK_COST
        assert task.cascade_saved_usd == answered
        with pytest.raises(ValueError, match="check bug"):
            llm.cascade(MESSAGES, max_tokens=50)
    assert task.report().cost_usd == 2 * MOCK_COST
    assert task.cascade_saved_usd == answered - MOCK_COST
    assert shown_saving(capture) == pytest.approx(float(answered - MOCK_COST))


# -- B. a content-policy refusal: change the prompt ---------------------------


def test_content_policy_refusals_advise_changing_the_prompt() -> None:
    """Every tier's content filter refused: the advice is about the prompt,
    not the providers' status."""
    refusal = litellm.ContentPolicyViolationError(
        "flagged", model="gpt-4o", llm_provider="openai"
    )
    assert classify_error(refusal) == "content_policy"

    def call(tier: Tier, request: Any) -> Answer:
        raise refusal

    with pytest.raises(CascadeExhausted) as caught:
        CascadeRunner(Cascade(tiers=TIERS)).run(MESSAGES, call=call)
    text = str(caught.value)
    assert [a.error_kind for a in caught.value.attempts] == ["content_policy"] * 2
    assert "content filter refused the request" in text
    assert "change the prompt" in text
    assert "providers' status" not in text


# -- C. a 422 is handled as a 400 ---------------------------------------------


def _unprocessable(model: str) -> Exception:
    response = httpx.Response(422, request=httpx.Request("POST", "http://x"))
    return litellm.UnprocessableEntityError(
        f"{model}: unprocessable", model=model, llm_provider="openai", response=response
    )


def test_a_422_falls_back_to_the_next_tier() -> None:
    """A 422 on the cheap tier falls back at once, as a 400 does."""

    def call(tier: Tier, request: Any) -> Answer:
        if tier.name == "cheap":
            raise _unprocessable(tier.model)
        return Answer("premium", tier.model, Decimal(0))

    result = CascadeRunner(Cascade(tiers=TIERS)).run(MESSAGES, call=call)
    assert result.tier.name == "top"
    first = result.attempts[0]
    assert (first.outcome, first.error_kind) == ("error", "bad_request")


def test_422s_on_every_tier_exhaust_with_the_advice_for_a_400() -> None:
    last = _unprocessable("gpt-4o")

    def call(tier: Tier, request: Any) -> Answer:
        raise last if tier.name == "top" else _unprocessable(tier.model)

    with pytest.raises(CascadeExhausted) as caught:
        CascadeRunner(Cascade(tiers=TIERS)).run(MESSAGES, call=call)
    assert caught.value.__cause__ is last
    assert "could not process it (HTTP 422)" in str(caught.value)
    assert "providers' status" not in str(caught.value)


def test_a_nested_runs_exhaustion_is_taken_off_once(capture: SpanCapture) -> None:
    """A check that runs a cascade of its own, which finds no answer: the
    inner run takes its spend off, the outer run only its own, so the loss
    is what the task spent, not more."""
    clients: list[GovernedLiteLLM] = []
    depth: list[int] = []

    def nested(answer: Any, history: Any) -> bool:
        if depth:  # the inner run pays a judge, then accepts nothing
            clients[0].completion(model="gpt-4o", messages=MESSAGES, max_tokens=10)
            return False
        depth.append(1)
        clients[0].cascade(MESSAGES, max_tokens=50)  # raises CascadeExhausted
        return True

    def complete(**kwargs: Any) -> Any:
        if depth and kwargs["max_tokens"] == 50 and kwargs["model"] == "gpt-4o":
            raise litellm.ContentPolicyViolationError("flagged", "gpt-4o", "openai")
        return fake(**kwargs)

    cascade = Cascade(tiers=TIERS, checks=[CallableCheck(ref="nested")])
    gov, llm = governed(
        capture, cascade, callables={"nested": nested}, completion=complete
    )
    clients.append(llm)
    with gov.task() as task:
        with pytest.raises(CascadeExhausted) as ended:
            llm.cascade(MESSAGES, max_tokens=50)
        inner_spent = ended.value.spent_usd
    assert MOCK_COST < inner_spent < task.report().cost_usd
    assert_lost_its_spend(capture, task)


def test_a_missing_api_key_is_an_auth_failure_not_a_server_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """LiteLLM raises the OpenAI SDK's "Missing credentials" as an
    InternalServerError; nothing was sent, so it is not retried as a 500."""
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(litellm.InternalServerError) as raised:
        litellm.completion(
            model="gpt-4o-mini",
            messages=MESSAGES,
            base_url="http://127.0.0.1:9/v1",  # never reached: no key
            num_retries=0,
        )
    assert "Missing credentials" in str(raised.value)
    assert classify_error(raised.value) == "auth"
    served = litellm.InternalServerError("upstream failed", "openai", "gpt-4o")
    assert classify_error(served) == "server"
