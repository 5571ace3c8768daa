"""A cascade's limits: every tier reachable, the saving of an answer from cache.

Real LiteLLM calls to a stub OpenAI-compatible server on 127.0.0.1, with the
stub's models priced by ``Pricing(overrides=...)``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest

from conftest import SpanCapture
from governor import Cache, Governor, Policy
from governor.adapters.litellm import GovernedLiteLLM
from governor.policies import Price, Pricing
from governor.policies._cascade import Cascade, JsonCheck, Retry, Tier
from governor.telemetry import attributes as attr
from governor.testing import StubBehaviour, StubServer

MESSAGES = [{"role": "user", "content": "Reply with the answer as JSON."}]
NOT_JSON = StubBehaviour(answer="maybe later", prompt_tokens=100, completion_tokens=10)
JSON = StubBehaviour(answer='{"answer": 42}', prompt_tokens=100, completion_tokens=50)
CHEAP = Price(input_usd_per_mtok=1, output_usd_per_mtok=2)
PREMIUM = Price(input_usd_per_mtok=10, output_usd_per_mtok=30)
NO_WAIT = {"backoff_initial_s": 0, "jitter_s": 0}


def cost(price: Price, behaviour: StubBehaviour) -> Decimal:
    """What one answer of ``behaviour`` costs at ``price``."""
    assert behaviour.prompt_tokens is not None
    assert behaviour.completion_tokens is not None
    return (
        price.input_usd_per_mtok * behaviour.prompt_tokens
        + price.output_usd_per_mtok * behaviour.completion_tokens
    ) / 1_000_000


@pytest.fixture
def stub() -> Iterator[StubServer]:
    """The stub server; each test sets its models' behaviours."""
    with StubServer() as server:
        yield server


def tier(stub: StubServer, name: str, **params: Any) -> Tier:
    """A tier calling the stub's model ``name`` through LiteLLM's OpenAI route."""
    return Tier(
        name=name,
        model=f"openai/{name}",
        params={"api_base": stub.base_url + "/v1", "api_key": "sk-stub", **params},
    )


def priced(*names: str, premium: str) -> Pricing:
    """Every named model at the cheap price, ``premium`` at the premium one."""
    overrides = {f"openai/{name}": CHEAP for name in names}
    return Pricing(overrides={**overrides, f"openai/{premium}": PREMIUM})


# -- every tier reachable ----------------------------------------------------


def test_more_tiers_than_the_default_max_attempts_is_warned_of(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Seven tiers and the default six attempts: the seventh is never tried
    when the six before it are all sent, which the warning says with the fix."""
    tiers = [f"model-{i}" for i in range(7)]
    with caplog.at_level(logging.WARNING, logger="governor.policies._cascade"):
        Cascade(tiers=tiers, checks=[JsonCheck()])
    assert "7 tiers but retry.max_attempts is 6 (default)" in caplog.text
    assert "['model-6'] are never tried" in caplog.text
    assert "Raise Retry.max_attempts to at least 7" in caplog.text


def test_enough_attempts_give_no_warning(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="governor.policies._cascade"):
        Cascade(tiers=["a", "b", "c"], retry=Retry(max_attempts=3))
    assert caplog.text == ""


def test_a_tier_past_max_attempts_answers_when_tiers_before_it_are_skipped(
    stub: StubServer,
) -> None:
    """Skipped tiers use no attempt: with three tiers, two attempts and the
    first tier skipped by its context window, the third is reached."""
    names = ("s-small", "s-mid", "s-premium")
    stub.set_behaviour("s-mid", NOT_JSON)
    stub.set_behaviour("s-premium", JSON)
    tiers = [tier(stub, n) for n in names]
    tiers[0] = tiers[0].model_copy(update={"context_window_tokens": 1})
    cascade = Cascade(
        tiers=tiers, checks=[JsonCheck()], retry=Retry(max_attempts=2, **NO_WAIT)
    )
    gov = Governor(Policy(cascade=cascade, pricing=priced(*names, premium=names[2])))
    with gov.task():
        result = GovernedLiteLLM(gov).cascade(MESSAGES, max_tokens=60)
    outcomes = [(a.tier, a.outcome) for a in result.attempts]
    assert outcomes == [
        ("s-small", "skipped"),
        ("s-mid", "rejected"),
        ("s-premium", "accepted"),
    ]


@pytest.mark.parametrize("use_async", [False, True])
def test_with_one_attempt_per_tier_the_seventh_tier_answers(
    stub: StubServer, use_async: bool
) -> None:
    """Six tiers failing the JSON check, then a premium tier that passes it:
    with max_attempts at the number of tiers, the premium tier is reached."""
    names = [f"m{i}" for i in range(6)]
    for name in names:
        stub.set_behaviour(name, NOT_JSON)
    stub.set_behaviour("premium", JSON)
    cascade = Cascade(
        tiers=[tier(stub, n) for n in (*names, "premium")],
        checks=[JsonCheck()],
        retry=Retry(max_attempts=7, **NO_WAIT),
    )
    gov = Governor(Policy(cascade=cascade, pricing=priced(*names, premium="premium")))
    llm = GovernedLiteLLM(gov)
    with gov.task():
        if use_async:
            result = asyncio.run(llm.acascade(MESSAGES, max_tokens=60))
        else:
            result = llm.cascade(MESSAGES, max_tokens=60)
    assert (result.tier.name, result.accepted) == ("premium", True)
    assert [a.outcome for a in result.attempts] == ["rejected"] * 6 + ["accepted"]


def test_two_failing_tiers_leave_the_third_its_request(stub: StubServer) -> None:
    """Three tiers and three attempts, the first two answering 500: the
    third is called once and answers; the failing ones are not retried."""
    failing = StubBehaviour(status=500)
    stub.set_behaviour("s-cheap", failing)
    stub.set_behaviour("s-mid", failing)
    stub.set_behaviour("s-premium", JSON)
    names = ("s-cheap", "s-mid", "s-premium")
    cascade = Cascade(
        tiers=[tier(stub, n) for n in names],
        retry=Retry(max_attempts=3, **NO_WAIT),
    )
    gov = Governor(Policy(cascade=cascade, pricing=priced(*names, premium=names[2])))
    with gov.task():
        result = GovernedLiteLLM(gov).cascade(MESSAGES, max_tokens=60)
    assert result.tier.name == "s-premium"
    assert [r.body["model"] for r in stub.requests] == list(names)


# -- the saving of an answer served from the cache ---------------------------


@pytest.mark.parametrize("use_async", [False, True])
def test_a_premium_answer_from_cache_saves_the_premium_call(
    stub: StubServer, capture: SpanCapture, use_async: bool
) -> None:
    """The cheap tier is paid each run; the second run's premium answer comes
    from the cache, so it saves the premium call less the cheap one."""
    stub.set_behaviour("c-cheap", NOT_JSON)
    stub.set_behaviour("c-premium", JSON)
    cascade = Cascade(
        tiers=[tier(stub, "c-cheap", caching=False), tier(stub, "c-premium")],
        checks=[JsonCheck()],
        retry=Retry(**NO_WAIT),
    )
    policy = Policy(
        cascade=cascade,
        cache=Cache(semantic=False),
        pricing=priced("c-cheap", premium="c-premium"),
    )
    gov = Governor(policy, tracer_provider=capture.provider)
    llm = GovernedLiteLLM(gov)
    results = []
    for _ in range(2):
        with gov.task():
            if use_async:
                results.append(asyncio.run(llm.acascade(MESSAGES, max_tokens=60)))
            else:
                results.append(llm.cascade(MESSAGES, max_tokens=60))
    models = [r.body["model"] for r in stub.requests]
    assert models == ["c-cheap", "c-premium", "c-cheap"]
    cheap, premium = cost(CHEAP, NOT_JSON), cost(PREMIUM, JSON)
    assert [r.cost_usd for r in results] == [cheap + premium, cheap]
    tasks = capture.named("governor.task")
    saved = [span.attributes[attr.CASCADE_SAVED_USD] for span in tasks]
    assert saved == [
        pytest.approx(float(premium - (cheap + premium))),
        pytest.approx(float(premium - cheap)),
    ]
    assert saved[1] > 0


# -- the saving of a task with several cascades ------------------------------


@pytest.mark.parametrize("use_async", [False, True])
def test_a_tasks_saving_sums_its_cascades_an_exhausted_one_counting_its_spend(
    stub: StubServer, capture: SpanCapture, use_async: bool
) -> None:
    """Two answered cascades and one exhausted, in one task: the task span's
    saving is the sum of the answered ones' savings, less what the exhausted
    one spent; the task's cost counts all three."""
    from governor.cascade import CascadeExhausted

    stub.set_behaviour("t-cheap", JSON)
    stub.set_behaviour("t-premium", JSON)
    cascade = Cascade(
        tiers=[tier(stub, "t-cheap"), tier(stub, "t-premium")],
        checks=[JsonCheck()],
        check_last_tier=True,
        retry=Retry(**NO_WAIT),
    )
    policy = Policy(cascade=cascade, pricing=priced("t-cheap", premium="t-premium"))
    gov = Governor(policy, tracer_provider=capture.provider)
    llm = GovernedLiteLLM(gov)

    def run() -> Any:
        if use_async:
            return asyncio.run(llm.acascade(MESSAGES, max_tokens=60))
        return llm.cascade(MESSAGES, max_tokens=60)

    with gov.task() as task:
        first = run()  # the cheap tier answers
        stub.set_behaviour("t-cheap", NOT_JSON)
        second = run()  # the cheap answer is rejected, the premium one passes
        stub.set_behaviour("t-premium", NOT_JSON)
        with pytest.raises(CascadeExhausted) as caught:
            run()  # both answers rejected: paid, nothing saved
    cheap, premium = cost(CHEAP, JSON), cost(PREMIUM, JSON)
    assert (first.cost_usd, second.cost_usd) == (cheap, cost(CHEAP, NOT_JSON) + premium)
    lost = caught.value.spent_usd
    assert lost == cost(CHEAP, NOT_JSON) + cost(PREMIUM, NOT_JSON)
    expected = (premium - first.cost_usd) + (premium - second.cost_usd) - lost
    assert task.report().cost_usd == first.cost_usd + second.cost_usd + lost
    saved = capture.task().attributes[attr.CASCADE_SAVED_USD]
    assert saved == pytest.approx(float(expected))
    assert task.cascade_saved_usd == expected
