"""Loop guard fixes from a combined-features trial: calls refused before they
were sent do not count toward ``Loops.max_model_calls``, and a cascade's
answer is judged by the output rules as a single call's is (not when it ran
side by side with another call of its task, nor when served from the cache).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import pytest

from governor import (
    Budget,
    BudgetExceeded,
    Cache,
    Cascade,
    Fanout,
    Governor,
    LoopDetected,
    Loops,
    Policy,
    SlotUnavailable,
)
from governor.adapters.litellm import GovernedLiteLLM
from governor.cascade import CascadeExhausted, NonEmptyCheck, Tier
from governor.testing import (
    install_offline_provider,
    offline_model,
    uninstall_offline_provider,
)

CHEAP = offline_model("gpt-4o-mini")
STRONG = offline_model("gpt-4o")

FAQ = {
    "reset": (
        "To reset your password open Settings, choose Security, press Reset "
        "password and follow the emailed link within one hour."
    ),
    "refund": (
        "Refunds are issued to the original card within five business days "
        "after our warehouse receives and inspects the returned parcel."
    ),
    "ship": (
        "Standard shipping takes three to five days; express orders placed "
        "before noon leave the same afternoon by courier service."
    ),
    "cancel": (
        "You may cancel an order from the Orders page until it is packed; "
        "after packing, decline the delivery and we refund it."
    ),
}


def _answer(model: str, messages: Sequence[Mapping[str, Any]], tools: Any) -> str:
    """A long answer, alike for every question; "idk" from the cheap tier
    for a HARD one (rejected by NonEmptyCheck(min_chars=20)); FAQ answers."""
    last = str(messages[-1].get("content") or "")
    for word, text in FAQ.items():
        if word in last.lower():
            return text
    if "HARD" in last and "mini" in model:
        return "idk"
    return f"[{model}] A thorough answer to: {last[:60]} -- with enough words."


@pytest.fixture
def offline() -> Iterator[None]:
    install_offline_provider(_answer, speed=0)
    yield
    uninstall_offline_provider()


def _ask(text: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": text}]


def _cascade(**kwargs: Any) -> Cascade:
    return Cascade(
        tiers=[Tier(name="cheap", model=CHEAP), Tier(name="premium", model=STRONG)],
        checks=[NonEmptyCheck(min_chars=20)],
        **kwargs,
    )


# -- B3: refused calls give their count back ---------------------------------


def test_calls_refused_for_a_fanout_slot_do_not_count_toward_the_ceiling(
    offline: None,
) -> None:
    """max_model_calls=3 and one slot held by a stream: three calls refused
    for the slot leave room for two more sent calls; the 4th call stops."""
    policy = Policy(
        fanout=Fanout(max_inflight_calls=1, on_cap="refuse"),
        loops=Loops(max_model_calls=3),
    )
    gov = Governor(policy)
    llm = GovernedLiteLLM(gov)
    with gov.task() as task:
        stream = llm.completion(
            model=CHEAP, messages=_ask("Stream about volcanoes"), stream=True
        )
        next(iter(stream))  # the only slot is held
        for i in range(3):
            with pytest.raises(SlotUnavailable):
                llm.completion(model=CHEAP, messages=_ask(f"q{i}"), max_tokens=40)
        for _ in stream:
            pass
        for i in range(2):
            llm.completion(model=CHEAP, messages=_ask(f"then {i}"), max_tokens=40)
        assert task.model_calls == 3
        with pytest.raises(LoopDetected, match="model calls reached 4"):
            llm.completion(model=CHEAP, messages=_ask("one more"), max_tokens=40)
    report = task.report()
    assert (report.calls, report.refused) == (3, 4)
    assert report.stop_reason == "slot_unavailable"  # the refusal's, as before
    gov.close()


def test_calls_timed_out_waiting_for_a_slot_give_their_count_back() -> None:
    """Async: two calls gathered beside a slow one time out waiting for the
    only slot; they were never sent, so two more calls still fit under 3."""
    install_offline_provider(_answer, speed=1)
    try:
        policy = Policy(
            fanout=Fanout(max_inflight_calls=1, wait_timeout_s=0.05),
            loops=Loops(max_model_calls=3),
        )
        gov = Governor(policy)
        llm = GovernedLiteLLM(gov)

        async def run() -> list[Any]:
            calls = [
                llm.acompletion(model=CHEAP, messages=_ask(q), max_tokens=20)
                for q in ("slow one", "waits 1", "waits 2")
            ]
            return await asyncio.gather(*calls, return_exceptions=True)

        with gov.task() as task:
            got = asyncio.run(run())
            kinds = [type(r).__name__ for r in got]
            assert kinds.count("SlotUnavailable") == 2, kinds
            install_offline_provider(_answer, speed=0)
            for i in range(2):
                llm.completion(model=CHEAP, messages=_ask(f"next {i}"), max_tokens=20)
        assert (task.calls, task.report().stop_reason) == (3, "slot_unavailable")
        gov.close()
    finally:
        uninstall_offline_provider()


def test_cascade_tiers_skipped_for_budget_do_not_count_toward_the_ceiling(
    offline: None,
) -> None:
    """max_model_calls=3, a premium tier the budget never fits: each run sends
    its cheap tier only, so two runs make two calls and are not stopped."""
    policy = Policy(
        budgets=[Budget(max_usd="0.0006")],
        loops=Loops(max_model_calls=3),
        cascade=_cascade(),
    )
    gov = Governor(policy)
    llm = GovernedLiteLLM(gov)
    with gov.task() as task:
        for i in range(2):
            with pytest.raises(CascadeExhausted):
                llm.cascade(_ask(f"HARD question {i}"), max_tokens=200)
    report = task.report()
    assert (report.calls, report.refused) == (2, 2)
    assert report.stop_reason != "loop_detected"
    gov.close()


# -- B4 and B5: a cascade's answer is judged as a single call's ---------------


def test_parallel_cascade_runs_that_agree_are_fan_out_not_a_loop() -> None:
    """Six acascade() runs under asyncio.gather with near-identical answers
    stop nothing, as the same six acompletion() calls do not."""
    install_offline_provider(_answer, speed=0.05)
    try:
        gov = Governor(Policy(fanout=Fanout(max_inflight_calls=8), cascade=_cascade()))
        llm = GovernedLiteLLM(gov)

        async def run() -> list[Any]:
            runs = [
                llm.acascade(_ask(f"Parallel question {i} about bees?"), max_tokens=40)
                for i in range(6)
            ]
            return await asyncio.gather(*runs)

        with gov.task() as task:
            results = asyncio.run(run())
            assert [r.tier.name for r in results] == ["cheap"] * 6
            assert task.peak_inflight > 1
            llm.completion(model=CHEAP, messages=_ask("Unrelated next"), max_tokens=40)
        assert task.report().stop_reason is None
        gov.close()
    finally:
        uninstall_offline_provider()


def test_cascade_runs_one_after_another_that_agree_are_still_a_loop(
    offline: None,
) -> None:
    """The same near-identical answers from cascade runs made in turn are
    still judged: the fan-out exemption is for runs side by side only."""
    gov = Governor(Policy(cascade=_cascade()))
    llm = GovernedLiteLLM(gov)
    with gov.task() as task, pytest.raises(LoopDetected, match="near-duplicate"):
        for i in range(6):
            llm.cascade(_ask(f"Parallel question {i} about bees?"), max_tokens=40)
    assert task.report().stop_reason == "loop_detected"
    gov.close()


def test_cascade_answers_served_from_the_cache_are_not_compared(
    offline: None,
) -> None:
    """A help desk cycling four FAQ questions three times through cascade():
    the repeats are cache hits, not compared with earlier outputs."""
    gov = Governor(Policy(cache=Cache(embedder="hashing"), cascade=_cascade()))
    llm = GovernedLiteLLM(gov)
    questions = [
        "How do I reset my password?",
        "When will I get my refund?",
        "How long does ship take?",
        "How do I cancel an order?",
    ]
    with gov.task() as task:
        for _ in range(3):
            for question in questions:
                llm.cascade(_ask(question), max_tokens=60)
    report = task.report()
    assert (report.calls, report.cache_hits) == (4, 8)
    assert report.stop_reason is None
    gov.close()


def test_a_task_retrying_a_refused_call_forever_is_still_stopped() -> None:
    """Refusals give their count back only as many times as the ceiling
    allows calls: a retry loop that never gets a call through still ends."""
    gov = Governor(
        Policy(budgets=[Budget(max_usd="0.0000001")], loops=Loops(max_model_calls=3))
    )
    llm = GovernedLiteLLM(gov)
    refused = 0
    with gov.task(), pytest.raises(LoopDetected) as stopped:
        for _ in range(100):
            try:
                llm.completion(
                    model=CHEAP,
                    messages=[{"role": "user", "content": "hi"}],
                    max_tokens=50,
                )
            except BudgetExceeded:
                refused += 1

    assert stopped.value.rule == "max_model_calls"
    assert refused == 10 * 3 + 3
