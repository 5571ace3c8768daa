"""A call's time starts once it holds its fan-out slot, not when it was admitted.

A model priced per second is billed for the time its call runs; a call that
first waited for a fan-out slot (``Fanout(on_cap="wait")``) was not running
then. The wait must not be billed, count against ``Policy.max_call_s`` (the
hold, the stream deadline, the warning), nor go into ``latency_s`` or the
duration histogram; ``governor.fanout.wait_s`` still reports it.

The engine's clock is a fake one that only the provider moves: the first call
runs 2 s once the second is queued for the slot, the second runs 1 s, so the
figures are exact and nothing is timed.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

import governor._engine as engine_module
import governor.adapters._ceiling as ceiling_module
from conftest import SpanCapture
from governor import Fanout, Governor, Policy, Price, Pricing
from governor.adapters.litellm import GovernedLiteLLM
from governor.spend import JsonlSpendStore
from governor.telemetry import attributes as attr

MODEL = "openai/gpt-4o-mini"
PRICING = Pricing(overrides={MODEL: Price(usd_per_second="0.01")})
MAX_CALL_S = 2.5  # holds $0.025; the queued call would be billed 3 s ($0.03)
HOLD = Decimal("0.025")
MESSAGES = [{"role": "user", "content": "hi"}]
HANG_GUARD_S = 30.0


class FakeClock:
    """Stands in for the ``time`` module: ``monotonic`` moves only when told."""

    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)


class Provider:
    """Stands in for litellm: the call holding the slot runs 2 s once the
    other one is queued for it (``queued``); the other runs 1 s."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.queued = threading.Event()
        self.aqueued = asyncio.Event()
        self._sent = 0
        self._lock = threading.Lock()

    def _run_s(self) -> float:
        with self._lock:
            self._sent += 1
            return 2.0 if self._sent == 1 else 1.0

    def completion(self, **kwargs: Any) -> Any:
        import litellm

        run_s = self._run_s()
        if run_s == 2.0:
            assert self.queued.wait(HANG_GUARD_S), "the second call never queued"
        self.clock.now += run_s
        kwargs.pop("timeout", None)
        kwargs.setdefault("mock_response", "ok")
        return litellm.completion(**kwargs)

    async def acompletion(self, **kwargs: Any) -> Any:
        import litellm

        run_s = self._run_s()
        if run_s == 2.0:
            await asyncio.wait_for(self.aqueued.wait(), HANG_GUARD_S)
        self.clock.now += run_s
        kwargs.pop("timeout", None)
        kwargs.setdefault("mock_response", "ok")
        return await litellm.acompletion(**kwargs)


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeClock]:
    """The fake clock, read by the engine and the stream ceiling."""
    fake = FakeClock()
    with monkeypatch.context() as patch:
        patch.setattr(engine_module, "time", fake)
        patch.setattr(ceiling_module, "time", fake)
        yield fake


def governor(
    tmp_path: Path, reader: InMemoryMetricReader, capture: SpanCapture
) -> Governor:
    policy = Policy(
        max_call_s=MAX_CALL_S,
        pricing=PRICING,
        fanout=Fanout(max_inflight_calls=1, on_cap="wait"),
    )
    return Governor(
        policy,
        spend=tmp_path / "spend.jsonl",
        meter_provider=MeterProvider(metric_readers=[reader]),
        tracer_provider=capture.provider,
    )


def signal_when_queued(
    monkeypatch: pytest.MonkeyPatch, gov: Governor, provider: Provider
) -> None:
    """Tell the provider once the second call asks for a slot: it was
    admitted (its old clock read) and now waits for the first call."""
    asked: list[int] = []
    acquire, aacquire = gov.slots.acquire, gov.slots.aacquire

    def counted() -> None:
        asked.append(1)
        if len(asked) == 2:
            provider.queued.set()
            provider.aqueued.set()

    def acquire_counted(*args: Any) -> Any:
        counted()
        return acquire(*args)

    async def aacquire_counted(*args: Any) -> Any:
        counted()
        return await aacquire(*args)

    monkeypatch.setattr(gov.slots, "acquire", acquire_counted)
    monkeypatch.setattr(gov.slots, "aacquire", aacquire_counted)


def check_billed_run_time_only(
    gov: Governor,
    tmp_path: Path,
    reader: InMemoryMetricReader,
    capture: SpanCapture,
) -> None:
    """Each call is billed, and timed, for its own run: 2 s and 1 s."""
    gov.close()
    records = list(JsonlSpendStore(tmp_path / "spend.jsonl").query())
    billed = sorted((r.cost_usd, r.latency_s) for r in records)
    assert billed == [(Decimal("0.01"), 1.0), (Decimal("0.02"), 2.0)]
    assert all(cost <= HOLD for cost, _ in billed)
    (duration,) = points(reader, "gen_ai.client.operation.duration")
    assert (duration.count, duration.sum, duration.max) == (2, 3.0, 2.0)
    waits = [s.attributes[attr.FANOUT_WAIT_S] for s in capture.calls()]
    assert len(waits) == 2
    assert max(waits) > 0  # the wait is still reported, on its own attribute


def points(reader: InMemoryMetricReader, name: str) -> list[Any]:
    data = reader.get_metrics_data()
    found: list[Any] = []
    for resource in data.resource_metrics if data else ():
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                if metric.name == name:
                    found.extend(metric.data.data_points)
    return found


def test_threads_waiting_for_a_slot_are_billed_only_their_run(
    tmp_path: Path,
    clock: FakeClock,
    capture: SpanCapture,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The trial's case: two threads of one task, one slot. The queued call
    ran 1 s after a 2 s wait: it is billed $0.01, within its $0.025 hold,
    and no warning says it ran past max_call_s."""
    caplog.set_level(logging.WARNING)
    reader = InMemoryMetricReader()
    gov = governor(tmp_path, reader, capture)
    provider = Provider(clock)
    signal_when_queued(monkeypatch, gov, provider)
    llm = GovernedLiteLLM(gov, completion=provider.completion)

    def call(_: int) -> None:
        llm.completion(model=MODEL, messages=MESSAGES, max_tokens=10)

    with gov.task() as task, ThreadPoolExecutor(2) as pool:
        list(pool.map(task.bind(call), range(2)))
    assert task.report().cost_usd == Decimal("0.03")
    assert not [r for r in caplog.records if "max_call_s" in r.getMessage()]
    check_billed_run_time_only(gov, tmp_path, reader, capture)


def test_async_calls_waiting_for_a_slot_are_billed_only_their_run(
    tmp_path: Path,
    clock: FakeClock,
    capture: SpanCapture,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The same with ``asyncio.gather`` (the async admission path)."""
    caplog.set_level(logging.WARNING)
    reader = InMemoryMetricReader()
    gov = governor(tmp_path, reader, capture)
    provider = Provider(clock)
    signal_when_queued(monkeypatch, gov, provider)
    llm = GovernedLiteLLM(gov, acompletion=provider.acompletion)

    async def run() -> Decimal:
        async with gov.atask() as task:
            await asyncio.gather(
                *(
                    llm.acompletion(model=MODEL, messages=MESSAGES, max_tokens=10)
                    for _ in range(2)
                )
            )
        return task.report().cost_usd

    assert asyncio.run(run()) == Decimal("0.03")
    assert not [r for r in caplog.records if "max_call_s" in r.getMessage()]
    check_billed_run_time_only(gov, tmp_path, reader, capture)


def test_a_queued_stream_is_not_cut_for_the_time_it_waited(
    tmp_path: Path,
    clock: FakeClock,
    capture: SpanCapture,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The max_call_s deadline of a stream counts from its slot: the queued
    stream ran 1 s of its 2.5 s, so it is read to the end, not closed as past
    max_call_s for the 2 s it waited."""
    caplog.set_level(logging.WARNING)
    reader = InMemoryMetricReader()
    gov = governor(tmp_path, reader, capture)
    provider = Provider(clock)
    signal_when_queued(monkeypatch, gov, provider)
    llm = GovernedLiteLLM(gov, completion=provider.completion)
    answer = "one two three four five six seven"

    def call(_: int) -> str:
        stream = llm.completion(
            model=MODEL,
            messages=MESSAGES,
            max_tokens=50,
            stream=True,
            mock_response=answer,
        )
        return "".join(c.choices[0].delta.content or "" for c in stream if c.choices)

    with gov.task() as task, ThreadPoolExecutor(2) as pool:
        texts = list(pool.map(task.bind(call), range(2)))
    assert texts == [answer, answer]
    assert not [r for r in caplog.records if "max_call_s" in r.getMessage()]
    check_billed_run_time_only(gov, tmp_path, reader, capture)
