"""When an answer enters the response cache, and which answers do.

A call stores its answer before it gives its fan-out slot back: a repeat
queued behind the cap looks in the cache again once it has the slot, and
must find the answer there (a burst pays for its first wave only). A cascade
stores only the answer it accepts: a rejected one is never served, neither
to a later tier of the run nor to a later run, and a tier served from the
cache reports that nothing was sent.

The window between a slot's release and the store is widened with events,
not delays: a store that finds its slot already given back waits until the
call queued behind it has looked again, so the wrong order always shows as a
paid repeat, and the right one never waits.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from governor import Cache, Fanout, Governor, Policy
from governor.adapters.litellm import GovernedLiteLLM
from governor.cache import ResponseCache
from governor.cascade import AgreementCheck, Cascade, MatchCheck, Tier
from governor.stores import LocalSemaphore, RedisLedger, RedisSemaphore
from governor.testing import (
    OfflineProvider,
    install_offline_provider,
    offline_model,
    uninstall_offline_provider,
)

MINI = offline_model("gpt-4o-mini")
BIG = offline_model("gpt-4o")
QUESTION = [{"role": "user", "content": "Which planet is the largest?"}]
REPEATS = 5
HANG_GUARD_S = 30


@pytest.fixture
def provider() -> Iterator[OfflineProvider]:
    """The offline provider, answering the same text to every call."""
    installed = install_offline_provider(lambda m, msgs, t: "Jupiter.", speed=0)
    installed.clear_calls()
    yield installed
    uninstall_offline_provider()


class StoreWindow:
    """Holds a store open, when its call's slot went back first, until a call
    queued behind that slot has looked in the cache again."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.released = threading.Event()
        self.rechecked = threading.Event()
        for kind in (LocalSemaphore, RedisSemaphore):
            monkeypatch.setattr(kind, "release", self._releasing(kind.release))
            monkeypatch.setattr(kind, "arelease", self._areleasing(kind.arelease))
        recheck, store = ResponseCache.recheck, ResponseCache.store

        def rechecking(cache: ResponseCache, *args: Any, **kwargs: Any) -> Any:
            after_release = self.released.is_set()  # not the first call's own
            try:
                return recheck(cache, *args, **kwargs)
            finally:
                if after_release:
                    self.rechecked.set()

        def storing(cache: ResponseCache, *args: Any, **kwargs: Any) -> Any:
            if self.released.is_set():  # the slot went back before the store
                assert self.rechecked.wait(HANG_GUARD_S), "no call looked again"
            return store(cache, *args, **kwargs)

        monkeypatch.setattr(ResponseCache, "recheck", rechecking)
        monkeypatch.setattr(ResponseCache, "store", storing)

    def _releasing(self, release: Any) -> Any:
        def releasing(semaphore: Any, token: str) -> None:
            release(semaphore, token)
            self.released.set()

        return releasing

    def _areleasing(self, arelease: Any) -> Any:
        async def areleasing(semaphore: Any, token: str) -> None:
            await arelease(semaphore, token)
            self.released.set()

        return areleasing


def _text(answer: Any, stream: bool) -> str:
    if not stream:
        return str(answer.choices[0].message.content)
    return "".join(chunk.choices[0].delta.content or "" for chunk in answer)


async def _atext(answer: Any, stream: bool) -> str:
    if not stream:
        return str(answer.choices[0].message.content)
    return "".join([chunk.choices[0].delta.content or "" async for chunk in answer])


def _ask(llm: GovernedLiteLLM, stream: bool) -> str:
    answer = llm.completion(model=MINI, messages=QUESTION, max_tokens=20, stream=stream)
    return _text(answer, stream)


async def _aask(llm: GovernedLiteLLM, stream: bool) -> str:
    answer = await llm.acompletion(
        model=MINI, messages=QUESTION, max_tokens=20, stream=stream
    )
    return await _atext(answer, stream)


# -- a call's answer is stored before its slot goes back ---------------------


@pytest.mark.parametrize("stream", [False, True])
def test_threads_queued_behind_a_cap_pay_for_the_first_answer_only(
    provider: OfflineProvider, monkeypatch: pytest.MonkeyPatch, stream: bool
) -> None:
    """Five threads of one task, one slot: one call is sent, four served."""
    StoreWindow(monkeypatch)
    gov = Governor(
        Policy(cache=Cache(embedder="hashing"), fanout=Fanout(max_inflight_calls=1))
    )
    llm = GovernedLiteLLM(gov)
    with gov.task() as task, ThreadPoolExecutor(REPEATS) as pool:
        one = task.bind(lambda _: _ask(llm, stream))
        texts = list(pool.map(one, range(REPEATS)))
    gov.close()
    assert texts == ["Jupiter."] * REPEATS
    assert len(provider.calls) == 1
    assert (task.report().calls, task.report().cache_hits) == (1, REPEATS - 1)


@pytest.mark.parametrize("stream", [False, True])
def test_coroutines_queued_behind_a_cap_pay_for_the_first_answer_only(
    provider: OfflineProvider, monkeypatch: pytest.MonkeyPatch, stream: bool
) -> None:
    """The same with acompletion: the store in a worker thread is no pause
    in which a queued call can take the slot."""
    StoreWindow(monkeypatch)
    gov = Governor(
        Policy(cache=Cache(embedder="hashing"), fanout=Fanout(max_inflight_calls=1))
    )
    llm = GovernedLiteLLM(gov)

    async def run() -> tuple[list[str], Any]:
        async with gov.atask() as task:
            texts = await asyncio.gather(*(_aask(llm, stream) for _ in range(REPEATS)))
        return list(texts), task.report()

    texts, report = asyncio.run(run())
    gov.close()
    assert texts == ["Jupiter."] * REPEATS
    assert len(provider.calls) == 1
    assert (report.calls, report.cache_hits) == (1, REPEATS - 1)


def test_tasks_queued_behind_a_redis_scope_cap_pay_for_the_first_answer_only(
    provider: OfflineProvider,
    monkeypatch: pytest.MonkeyPatch,
    redis_url: str,
    redis_prefix: str,
) -> None:
    """A scope cap's slots and the cache both in Redis: five tasks of one
    org, one slot, one call sent."""
    StoreWindow(monkeypatch)
    gov = Governor(
        Policy(
            cache=Cache(store="redis", embedder="hashing"),
            fanout=Fanout(scope_caps={"org": 1}),
        ),
        ledger=RedisLedger(redis_url, prefix=redis_prefix),
    )
    llm = GovernedLiteLLM(gov)

    async def one() -> tuple[str, Any]:
        async with gov.atask(org="acme") as task:
            text = await _aask(llm, stream=False)
        return text, task.report()

    async def run() -> list[tuple[str, Any]]:
        return list(await asyncio.gather(*(one() for _ in range(REPEATS))))

    done = asyncio.run(run())
    gov.close()
    assert [text for text, _ in done] == ["Jupiter."] * REPEATS
    assert len(provider.calls) == 1
    assert sum(report.cache_hits for _, report in done) == REPEATS - 1


# -- a cascade stores only the answer it accepts -----------------------------


@pytest.fixture
def numbered() -> Iterator[OfflineProvider]:
    """A provider whose every answer differs: "The answer is 41", 42, ..."""
    count = [0]

    def answer(model: str, messages: Any, tools: Any) -> str:
        count[0] += 1
        return f"The answer is {40 + count[0]}"

    installed = install_offline_provider(answer, speed=0)
    installed.clear_calls()
    yield installed
    uninstall_offline_provider()


SAMPLED = [
    Tier(name="s1", model=MINI, params={"temperature": 0.7, "seed": 1}),
    Tier(name="s2", model=MINI, params={"temperature": 0.7, "seed": 2}),
    Tier(name="big", model=BIG),
]
AGREEING = [AgreementCheck(min_agreeing=1, normalise="number")]
SIX_TIMES_SEVEN = [{"role": "user", "content": "What is six times seven?"}]


def _cascade(gov: Governor, messages: Any, use_async: bool) -> Any:
    llm = GovernedLiteLLM(gov)

    async def arun() -> Any:
        async with gov.atask():
            return await llm.acascade(messages, max_tokens=30)

    if use_async:
        return asyncio.run(arun())
    with gov.task():
        return llm.cascade(messages, max_tokens=30)


@pytest.mark.parametrize("use_async", [False, True])
def test_a_later_tier_is_not_served_a_rejected_answer_of_its_run(
    numbered: OfflineProvider, use_async: bool
) -> None:
    """Tiers that differ only in their sampling share a semantic scope: the
    second is sent, not served the first's rejected "41", which would agree
    with itself; no sample agrees, so the last tier answers."""
    policy = Policy(
        cache=Cache(embedder="hashing"),
        cascade=Cascade(tiers=SAMPLED, checks=AGREEING),
    )
    result = _cascade(Governor(policy), SIX_TIMES_SEVEN, use_async)
    assert [(a.tier, a.outcome, a.sent) for a in result.attempts] == [
        ("s1", "rejected", True),
        ("s2", "rejected", True),
        ("big", "accepted", True),
    ]
    assert (result.tier.name, result.answer.text) == ("big", "The answer is 43")
    assert len(numbered.calls) == 3
    assert result.sent_attempts == 3


@pytest.mark.parametrize("use_async", [False, True])
def test_a_cached_answer_is_served_to_one_attempt_of_a_run_only(
    numbered: OfflineProvider, use_async: bool
) -> None:
    """An answer cached before the run is served to s1 (an exact match) and
    rejected; s2 matches it semantically but is sent: one answer served
    twice would agree with itself."""
    policy = Policy(
        cache=Cache(embedder="hashing"),
        cascade=Cascade(tiers=SAMPLED, checks=AGREEING),
    )
    gov = Governor(policy)
    with gov.task():
        GovernedLiteLLM(gov).completion(
            model=MINI, messages=SIX_TIMES_SEVEN, max_tokens=30, **SAMPLED[0].params
        )
    numbered.clear_calls()
    result = _cascade(gov, SIX_TIMES_SEVEN, use_async)
    assert [(a.tier, a.outcome, a.sent) for a in result.attempts] == [
        ("s1", "rejected", False),
        ("s2", "rejected", True),
        ("big", "accepted", True),
    ]
    assert [a.answer.text for a in numbered.calls] == [
        "The answer is 42",
        "The answer is 43",
    ]
    assert result.sent_attempts == 2


@pytest.mark.parametrize("use_async", [False, True])
def test_only_the_accepted_answer_is_stored_and_a_served_tier_is_not_sent(
    use_async: bool,
) -> None:
    """Two runs of one question: the cheap tier's rejected draft is never
    stored, so the second run sends it again; the premium answer the first
    run accepted is stored, and serving it sends nothing."""

    def answer(model: str, messages: Any, tools: Any) -> str:
        return "a rough draft" if "mini" in model else "a GOOD answer"

    provider = install_offline_provider(answer, speed=0)
    provider.clear_calls()
    try:
        tiers = [Tier(name="cheap", model=MINI), Tier(name="premium", model=BIG)]
        policy = Policy(
            cache=Cache(embedder="hashing"),
            cascade=Cascade(tiers=tiers, checks=[MatchCheck(pattern="GOOD")]),
        )
        gov = Governor(policy)
        first = _cascade(gov, QUESTION, use_async)
        second = _cascade(gov, QUESTION, use_async)
        models = [call.model for call in provider.calls]
    finally:
        uninstall_offline_provider()
    assert models == ["gpt-4o-mini", "gpt-4o", "gpt-4o-mini"]
    assert [(a.tier, a.outcome, a.sent) for a in second.attempts] == [
        ("cheap", "rejected", True),
        ("premium", "accepted", False),
    ]
    assert (first.sent_attempts, second.sent_attempts) == (2, 1)
    assert second.answer.text == "a GOOD answer"
    assert second.attempts[1].cost_usd == 0
    assert second.cost_usd == first.attempts[0].cost_usd


@pytest.mark.parametrize("use_async", [False, True])
def test_an_answer_accepted_after_a_repeat_hit_is_stored_for_later_runs(
    use_async: bool,
) -> None:
    """s2 is sent because its run was served that entry already (to s1); the
    answer it gets and the run accepts is stored under s2's own keys, so
    later runs are served it instead of paying for s2 each time."""
    install_offline_provider(lambda m, msgs, t: "a rough draft", speed=0)
    policy = Policy(
        cache=Cache(embedder="hashing", partition_by=()),
        cascade=Cascade(tiers=SAMPLED[:2], checks=[MatchCheck(pattern="GOOD")]),
    )
    gov = Governor(policy)
    with gov.task():
        GovernedLiteLLM(gov).completion(
            model=MINI, messages=QUESTION, max_tokens=30, **SAMPLED[0].params
        )
    provider = install_offline_provider(lambda m, msgs, t: "a GOOD answer", speed=0)
    try:
        runs = []
        for _ in range(3):
            provider.clear_calls()
            result = _cascade(gov, QUESTION, use_async)
            attempts = [(a.tier, a.sent) for a in result.attempts]
            runs.append((attempts, len(provider.calls)))
    finally:
        uninstall_offline_provider()
    assert [attempts for attempts, _ in runs] == [
        [("s1", False), ("s2", True)],
        [("s1", False), ("s2", False)],
        [("s1", False), ("s2", False)],
    ]
    assert [sent for _, sent in runs] == [1, 0, 0]
