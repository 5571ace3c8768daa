"""Cache hits on the governed path: the task's stops apply, and caches are shared.

A hit costs nothing and reserves nothing, but it is a call of its task: a
stopped task, a blocked scope and the loop guard's ceilings and rules refuse
it as they would refuse a call to the provider.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
from types import SimpleNamespace
from typing import Any

import pytest

from conftest import CountingLiteLLM
from governor import Budget, BudgetExceeded, Cache, Governor, Policy, ScopeBlocked
from governor.adapters.litellm import GovernedLiteLLM
from governor.loops import LoopDetected
from governor.policies import Loops

CACHE = Cache(embedder="hashing")


def ask(llm: GovernedLiteLLM, question: str = "Is the export job done yet?") -> Any:
    return llm.completion(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": question}],
        mock_response="Still checking, one moment.",
        max_tokens=20,
    )


def governed(policy: Policy) -> tuple[Governor, GovernedLiteLLM, CountingLiteLLM]:
    counter = CountingLiteLLM()
    gov = Governor(policy)
    llm = GovernedLiteLLM(
        gov, completion=counter.completion, acompletion=counter.acompletion
    )
    return gov, llm, counter


def served_until_refused(llm: GovernedLiteLLM, limit: int = 50) -> tuple[int, Any]:
    """Ask the same question until a call raises; the count and the error."""
    for served in range(limit):
        try:
            ask(llm)
        except Exception as exc:
            return served, exc
    return limit, None


def test_same_call_stops_an_agent_fed_from_the_cache() -> None:
    """The 12th identical answer is the last, whether sent or served."""
    gov, llm, counter = governed(Policy(cache=CACHE, loops=Loops()))
    with gov.task():
        served, error = served_until_refused(llm)
    assert isinstance(error, LoopDetected)
    assert (served, counter.sent) == (12, 1)


def test_max_model_calls_counts_calls_answered_from_the_cache() -> None:
    """Loops(max_model_calls=3): three answers, one of them sent, then a stop."""
    gov, llm, counter = governed(Policy(cache=CACHE, loops=Loops(max_model_calls=3)))
    with gov.task() as task:
        served, error = served_until_refused(llm)
    assert isinstance(error, LoopDetected)
    assert (served, counter.sent, task.report().cache_hits) == (3, 1, 2)


def test_max_wall_s_stops_a_task_served_from_the_cache() -> None:
    """A task past its wall-time ceiling gets no more cached answers."""
    gov, llm, _ = governed(Policy(cache=CACHE, loops=Loops(max_wall_s=60)))
    with gov.task() as task:
        ask(llm)
        ask(llm)
        task.started_at -= 61
        with pytest.raises(LoopDetected, match="max_wall_s"):
            ask(llm)
    assert task.report().cache_hits == 1


def test_a_task_the_loop_guard_stopped_is_served_nothing_from_the_cache() -> None:
    """After LoopDetected, an answer already cached is refused too."""
    gov, llm, _ = governed(Policy(cache=CACHE, loops=Loops(max_model_calls=2)))
    with gov.task() as task:
        ask(llm, "A?")
        ask(llm, "B?")
        with pytest.raises(LoopDetected):
            ask(llm, "C?")
        with pytest.raises(LoopDetected):
            ask(llm, "A?")
    assert (task.report().cache_hits, task.report().refused) == (0, 2)


def test_a_blocked_scope_is_served_nothing_from_the_cache() -> None:
    """Auto-tighten 'block' stops cached answers as well as sent calls."""
    gov, llm, counter = governed(Policy(cache=CACHE))
    with gov.task(team="runaway"):
        ask(llm)
    gov.apply_tighten(SimpleNamespace(mode="block", scope="team:runaway", factor=0))
    with pytest.raises(ScopeBlocked), gov.task(team="runaway"):
        ask(llm)
    assert counter.sent == 1


def test_budgets_never_refuse_a_hit() -> None:
    """A task too poor for any call, or whose budget refused a dearer call
    (it falls back to a cheaper model, as the refusal advises), is served."""
    gov, llm, counter = governed(Policy(cache=CACHE))
    with gov.task():
        ask(llm)
    poor = Policy(budgets=[Budget(max_usd="0.000001")])
    with gov.task(policy=poor) as task:
        ask(llm)
        with pytest.raises(BudgetExceeded):
            ask(llm, "Another question, not cached yet.")
        ask(llm)
    report = task.report()
    assert (counter.sent, report.cache_hits, report.refused) == (1, 2, 1)


def test_hits_of_a_few_recurring_questions_are_not_a_loop() -> None:
    """A help desk cycling through three questions with sentence-long
    answers, and a fan-out of one question, are served, not stopped."""
    gov, llm, counter = governed(Policy(cache=CACHE))
    questions = [f"What is the refund policy for plan {n}?" for n in "ABC"]
    answer = "Refunds are granted within thirty days of purchase for every plan."

    def faq(question: str) -> Any:
        return llm.completion(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": question}],
            mock_response=answer,
            max_tokens=40,
        )

    with gov.task() as task:
        for question in questions * 3:
            faq(question)

    async def fan_out() -> Any:
        async with gov.atask() as fanned:
            calls = [asyncio.to_thread(faq, questions[0]) for _ in range(5)]
            await asyncio.gather(*calls)
        return fanned.report()

    fanned = asyncio.run(fan_out())
    report = task.report()
    assert (counter.sent, report.cache_hits, fanned.cache_hits) == (3, 6, 5)
    assert (report.stop_reason, fanned.stop_reason) == (None, None)


def test_async_hits_are_refused_for_a_stopped_task() -> None:
    """acompletion serves from the cache through the same checks."""
    gov, llm, _ = governed(Policy(cache=CACHE, loops=Loops(max_model_calls=1)))

    async def run() -> None:
        async with gov.atask():
            for _ in range(2):
                await llm.acompletion(
                    model="gpt-4o-mini",
                    messages=[{"role": "user", "content": "Is it done?"}],
                    mock_response="Not yet.",
                    max_tokens=20,
                )

    with pytest.raises(LoopDetected):
        asyncio.run(run())


def test_task_overrides_with_equal_cache_settings_share_one_cache() -> None:
    """An override built per request with the same Cache hits what the last
    one stored, and caches naming one embedder share it."""
    gov, llm, counter = governed(Policy(cache=CACHE))
    for _ in range(3):
        tenant = Policy(cache=Cache(embedder="hashing", partition_by=("team", "user")))
        with gov.task(team="t", user="u1", policy=tenant):
            ask(llm)
    other = Policy(cache=Cache(embedder="hashing", max_entries=5))
    assert counter.sent == 1
    assert gov.cache_for(other).embedder is gov.cache_for(gov.policy).embedder


def test_caches_are_kept_a_bounded_number_at_a_time() -> None:
    """Many distinct settings forget the oldest, never the governor's own."""
    gov = Governor(Policy(cache=CACHE))
    own = gov.cache_for(gov.policy)
    first = Policy(cache=Cache(embedder="hashing", max_entries=1))
    made = gov.cache_for(first)
    for entries in range(2, 100):
        gov.cache_for(Policy(cache=Cache(embedder="hashing", max_entries=entries)))
    assert gov.cache_for(gov.policy) is own
    assert gov.cache_for(first) is not made


def test_a_cascade_outside_its_task_skips_a_partitioned_cache() -> None:
    """cascade() in a worker thread runs in a task of its own, which must not
    count as the tenant's task: its answers stay out of the shared cache."""
    from governor.cascade import Cascade

    policy = Policy(cache=CACHE, cascade=Cascade(tiers=["gpt-4o-mini", "gpt-4o"]))
    gov, llm, counter = governed(policy)
    question = [{"role": "user", "content": "How do I reset my password?"}]
    for team in ("a", "b"):
        with gov.task(team=team), concurrent.futures.ThreadPoolExecutor(1) as pool:
            answer = "Open Settings, then Security, and choose Reset password."
            pool.submit(
                llm.cascade, question, max_tokens=30, mock_response=answer
            ).result()
    assert counter.sent == 2


def test_a_call_outside_its_task_skips_a_partitioned_cache(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A worker thread that did not inherit its task names no tenant: its
    answer is neither served to nor taken from another tenant's such call."""
    gov, llm, counter = governed(Policy(cache=CACHE))
    with caplog.at_level(logging.WARNING, logger="governor._engine"):
        for team in ("a", "b"):
            with (
                gov.task(team=team),
                concurrent.futures.ThreadPoolExecutor(1) as pool,
            ):
                pool.submit(ask, llm).result()
    assert counter.sent == 2
    assert "response cache" in caplog.text
