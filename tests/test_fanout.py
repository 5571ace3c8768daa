"""Fan-out caps: model calls in flight per task and per scope."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest

from conftest import SpanCapture
from governor import Fanout, Governor, Policy
from governor.adapters.litellm import GovernedLiteLLM
from governor.stores import RedisLedger, SlotUnavailable
from governor.telemetry import attributes as attr

MESSAGES = [{"role": "user", "content": "Count to three."}]


class SlowProvider:
    """Real litellm mock calls that take a while and count concurrency."""

    def __init__(self) -> None:
        self.now = 0
        self.peak = 0
        self._lock = threading.Lock()

    async def acompletion(self, **kwargs: Any) -> Any:
        import litellm

        with self._lock:
            self.now += 1
            self.peak = max(self.peak, self.now)
        try:
            await asyncio.sleep(0.05)
            return await litellm.acompletion(**kwargs)
        finally:
            with self._lock:
                self.now -= 1


async def burst(llm: GovernedLiteLLM, count: int) -> list[str]:
    async def one() -> str:
        try:
            await llm.acompletion(
                model="gpt-4o-mini",
                messages=MESSAGES,
                mock_response="1 2 3",
                max_tokens=20,
            )
        except SlotUnavailable:
            return "refused"
        return "ok"

    return list(await asyncio.gather(*(one() for _ in range(count))))


def test_inflight_calls_per_task_wait_for_a_slot(capture: SpanCapture) -> None:
    """With on_cap='wait', at most N calls of a task run at once; all finish."""
    provider = SlowProvider()
    gov = Governor(
        Policy(fanout=Fanout(max_inflight_calls=3)), tracer_provider=capture.provider
    )
    llm = GovernedLiteLLM(gov, acompletion=provider.acompletion)

    async def run() -> list[str]:
        async with gov.atask():
            return await burst(llm, 10)

    assert asyncio.run(run()) == ["ok"] * 10
    assert provider.peak == 3
    task = capture.task()
    assert task.attributes[attr.TASK_PEAK_INFLIGHT] == 3
    waits = [s.attributes[attr.FANOUT_WAIT_S] for s in capture.calls()]
    assert max(waits) > 0


def test_refuse_mode_raises_past_the_cap() -> None:
    """With on_cap='refuse', calls past the cap fail at once with a typed error."""
    provider = SlowProvider()
    policy = Policy(fanout=Fanout(max_inflight_calls=2, on_cap="refuse"))
    gov = Governor(policy)
    llm = GovernedLiteLLM(gov, acompletion=provider.acompletion)

    async def run() -> list[str]:
        async with gov.atask():
            return await burst(llm, 6)

    outcomes = asyncio.run(run())
    assert outcomes.count("ok") == 2
    assert outcomes.count("refused") == 4


def test_scope_cap_spans_tasks() -> None:
    """A team cap limits calls in flight across every task of the team."""
    provider = SlowProvider()
    policy = Policy(fanout=Fanout(scope_caps={"team": 2}))
    gov = Governor(policy)
    llm = GovernedLiteLLM(gov, acompletion=provider.acompletion)

    async def one_task() -> list[str]:
        async with gov.atask(team="search"):
            return await burst(llm, 3)

    async def run() -> list[list[str]]:
        return list(await asyncio.gather(*(one_task() for _ in range(3))))

    assert asyncio.run(run()) == [["ok"] * 3] * 3
    assert provider.peak == 2


def test_scope_cap_uses_redis_slots_with_a_redis_ledger(
    redis_url: str, redis_prefix: str
) -> None:
    """With a Redis ledger the scope cap is a Redis semaphore shared by workers."""
    provider = SlowProvider()
    policy = Policy(fanout=Fanout(scope_caps={"team": 2}))
    workers = [
        Governor(policy, ledger=RedisLedger(redis_url, prefix=redis_prefix))
        for _ in range(2)
    ]

    async def one_task(gov: Governor) -> list[str]:
        llm = GovernedLiteLLM(gov, acompletion=provider.acompletion)
        async with gov.atask(team="search"):
            return await burst(llm, 3)

    async def run() -> list[list[str]]:
        return list(await asyncio.gather(*(one_task(g) for g in workers)))

    assert asyncio.run(run()) == [["ok"] * 3] * 2
    assert provider.peak == 2


def test_slots_come_back_after_errors() -> None:
    """A failed call releases its slot, so later calls are not starved."""
    gov = Governor(Policy(fanout=Fanout(max_inflight_calls=1, on_cap="refuse")))
    llm = GovernedLiteLLM(gov)
    with gov.task():
        for _ in range(3):
            with pytest.raises(Exception, match="RateLimit"):
                llm.completion(
                    model="gpt-4o-mini",
                    messages=MESSAGES,
                    mock_response="litellm.RateLimitError",
                    max_tokens=20,
                )
        llm.completion(
            model="gpt-4o-mini", messages=MESSAGES, mock_response="ok", max_tokens=20
        )


def test_refusal_advice_fits_the_mode() -> None:
    """Refuse mode never waits, so its advice is to queue, not to wait longer."""
    refused = SlotUnavailable("task:t1", 2, 0.0)
    waited = SlotUnavailable("team:search", 2, 5.0)
    assert "on_cap='wait'" in str(refused)
    assert "wait_timeout_s" not in str(refused)
    assert "Fanout.max_inflight_calls" in str(refused)
    assert "stayed busy for 5.0 s" in str(waited)
    assert "Fanout.wait_timeout_s" in str(waited)
