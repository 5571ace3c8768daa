"""Calls cut short by an interrupt, and closing without blocking the loop.

A sync call is cut by ``KeyboardInterrupt`` (Ctrl-C, a Jupyter interrupt)
where an async one is cut by a cancellation; either way its hold goes back or
its spend is accounted for, once. The ledgers here interrupt one reserve or
settle, before or after the real step ran (a Redis step that ran, then the
interrupt arrived before its reply was read).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator, Sequence
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from _switched_store import SwitchedStore

from conftest import SpanCapture
from governor import Budget, Cascade, Fanout, Governor, Policy
from governor._calls import CallRequest, CallResult
from governor._money import usd_to_nanos
from governor.adapters.litellm import GovernedLiteLLM
from governor.pricing import Usage
from governor.stores import Balance, FailoverLedger, Line, MemoryLedger, Refusal
from governor.stores._redis import RedisLedger
from governor.testing import install_offline_provider

MESSAGES = [{"role": "user", "content": "What is the capital of Peru?"}]
USAGE = Usage(prompt_tokens=10, completion_tokens=5)
TEAM = "team:search"


class _Cuts:
    """Raises KeyboardInterrupt once, at ``cut = (step, "before" | "after")``."""

    cut: tuple[str, str] | None = None

    def _maybe_cut(self, step: str, when: str) -> None:
        if self.cut == (step, when):
            self.cut = None
            raise KeyboardInterrupt

    def reserve(
        self,
        hold_id: str,
        lines: Sequence[Line],
        nanos: int,
        tokens: int,
        ttl_s: float,
    ) -> Refusal | None:
        self._maybe_cut("reserve", "before")
        refusal: Refusal | None = super().reserve(  # type: ignore[misc]
            hold_id, lines, nanos, tokens, ttl_s
        )
        self._maybe_cut("reserve", "after")
        return refusal

    def settle(
        self, hold_id: str, keys: Sequence[str], nanos: int, tokens: int
    ) -> None:
        self._maybe_cut("settle", "before")
        super().settle(hold_id, keys, nanos, tokens)  # type: ignore[misc]
        self._maybe_cut("settle", "after")


class CutMemory(_Cuts, MemoryLedger):
    """An in-process ledger whose next cut step is interrupted."""


class CutRedis(_Cuts, RedisLedger):
    """A real Redis ledger whose next cut step is interrupted."""


@pytest.fixture(params=["memory", "redis"])
def ledger(request: pytest.FixtureRequest) -> Iterator[CutMemory | CutRedis]:
    """A cuttable ledger: in memory, or on the shared Redis under a new prefix."""
    if request.param == "memory":
        yield CutMemory()
        return
    url = request.getfixturevalue("redis_url")
    redis_ledger = CutRedis(url, prefix=request.getfixturevalue("redis_prefix"))
    yield redis_ledger
    redis_ledger.close()


def _governor(ledger: Any, **kwargs: Any) -> Governor:
    policy = Policy(
        budgets=[Budget(scope="team", max_usd="1")],
        fanout=Fanout(scope_caps={"team": 1}, on_cap="refuse"),
    )
    return Governor(policy, ledger=ledger, **kwargs)


def _request() -> CallRequest:
    return CallRequest(model="gpt-4o-mini", messages=MESSAGES, max_output_tokens=20)


def _team(gov: Governor) -> Balance:
    balance = gov.ledger.balance(TEAM)
    assert balance is not None
    return balance


def _records(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


# -- a sync call cut while reserving ----------------------------------------


@pytest.mark.parametrize("when", ["before", "after"])
def test_a_reserve_cut_by_an_interrupt_leaves_no_hold(
    ledger: CutMemory | CutRedis, when: str
) -> None:
    """The hold a cut reserve may have made is released; the slot comes back."""
    gov = _governor(ledger)
    with gov.task(team="search"):
        ledger.cut = ("reserve", when)
        with pytest.raises(KeyboardInterrupt):
            gov.begin_call(_request())
        admission = gov.begin_call(_request())  # the team's one slot is free
        cost = gov.end_call(admission, CallResult(usage=USAGE))
    balance = _team(gov)
    assert (balance.reserved_nanos, balance.reserved_tokens) == (0, 0)
    assert balance.spent_nanos == usd_to_nanos(cost) > 0
    gov.close()


# -- a sync call cut while settling -----------------------------------------


@pytest.mark.parametrize("when", ["before", "after"])
def test_a_settle_cut_by_an_interrupt_is_accounted_and_charged_once(
    ledger: CutMemory | CutRedis, when: str, tmp_path: Path, capture: SpanCapture
) -> None:
    """Task, span, spend record and store all agree on the call's cost."""
    spend = tmp_path / "spend.jsonl"
    gov = _governor(ledger, spend=spend, tracer_provider=capture.provider)
    with gov.task(team="search") as task:
        admission = gov.begin_call(_request())
        ledger.cut = ("settle", when)
        with pytest.raises(KeyboardInterrupt):
            gov.end_call(admission, CallResult(usage=USAGE))
        report = task.report()
        again = gov.end_call(admission, CallResult(usage=USAGE))
    gov.close()
    assert report.cost_usd > 0
    assert again == 0  # settled once
    (call_span,) = capture.calls()
    assert call_span.attributes is not None
    assert call_span.attributes["gen_ai.usage.cost.amount"] == float(report.cost_usd)
    (record,) = _records(spend)
    assert Decimal(record["cost_usd"]) == report.cost_usd
    balance = _team(gov)
    assert balance.spent_nanos == usd_to_nanos(report.cost_usd)
    assert (balance.reserved_nanos, balance.reserved_tokens) == (0, 0)


@pytest.mark.parametrize("step", ["reserve", "settle"])
def test_a_one_call_task_cut_by_an_interrupt_is_closed(
    step: str, capture: SpanCapture
) -> None:
    """A call outside any task: its task's span ends though the call was cut."""
    ledger = CutMemory()
    gov = _governor(ledger, tracer_provider=capture.provider)
    request = CallRequest(
        model="gpt-4o-mini",
        messages=MESSAGES,
        max_output_tokens=20,
        attribution={"team": "search"},
    )
    ledger.cut = (step, "after")
    with pytest.raises(KeyboardInterrupt):
        admission = gov.begin_call(request)
        gov.end_call(admission, CallResult(usage=USAGE))
    assert capture.task().attributes is not None
    assert _team(gov).reserved_nanos == 0


class StalledReserve(MemoryLedger):
    """An in-process ledger whose async reserve runs, then never answers."""

    def __init__(self) -> None:
        super().__init__()
        self.reserved = asyncio.Event()

    async def areserve(
        self,
        hold_id: str,
        lines: Sequence[Line],
        nanos: int,
        tokens: int,
        ttl_s: float,
    ) -> Refusal | None:
        refusal = self.reserve(hold_id, lines, nanos, tokens, ttl_s)
        self.reserved.set()
        await asyncio.Event().wait()
        return refusal


def test_a_one_call_task_cancelled_while_reserving_is_closed(
    capture: SpanCapture,
) -> None:
    """The async form: the hold is released and the task's span ends."""
    ledger = StalledReserve()
    gov = _governor(ledger, tracer_provider=capture.provider)
    request = CallRequest(
        model="gpt-4o-mini",
        messages=MESSAGES,
        max_output_tokens=20,
        attribution={"team": "search"},
    )

    async def cut_off() -> None:
        call = asyncio.create_task(gov.abegin_call(request))
        await ledger.reserved.wait()
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call

    asyncio.run(cut_off())
    assert capture.task().attributes is not None
    assert _team(gov).reserved_nanos == 0


# -- interrupts while the store is read ---------------------------------------


class CutBalance(MemoryLedger):
    """An in-process ledger whose next ``cuts`` balance reads are interrupted."""

    cuts = 0

    def balance(self, key: str) -> Balance | None:
        if self.cuts:
            self.cuts -= 1
            raise KeyboardInterrupt
        return super().balance(key)


def test_a_task_interrupted_while_reading_its_budget_left_ends_its_span(
    capture: SpanCapture,
) -> None:
    """close_task, cut while reading the budget left: the span still ends."""
    ledger = CutBalance()
    gov = _governor(ledger, tracer_provider=capture.provider)
    with pytest.raises(KeyboardInterrupt), gov.task(team="search"):
        ledger.cuts = 1
    assert capture.task().attributes is not None


def test_a_call_interrupted_while_reading_its_warnings_closes_its_task(
    capture: SpanCapture,
) -> None:
    """A one-call task is closed though the budget-warning read was cut."""
    ledger = CutBalance()
    policy = Policy(budgets=[Budget(scope="team", max_usd="1", warn_at=(0.5,))])
    gov = Governor(policy, ledger=ledger, tracer_provider=capture.provider)
    request = CallRequest(
        model="gpt-4o-mini",
        messages=MESSAGES,
        max_output_tokens=20,
        attribution={"team": "search"},
    )
    admission = gov.begin_call(request)
    ledger.cuts = 1
    with pytest.raises(KeyboardInterrupt):
        gov.end_call(admission, CallResult(usage=USAGE))
    assert capture.task().attributes is not None


# -- acascade closes its task by async steps ----------------------------------


class LoopChecked(MemoryLedger):
    """An in-process ledger whose sync steps refuse to run on an event loop."""

    def _off_loop(self) -> None:
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return
        raise AssertionError("a sync ledger step ran on the event loop")

    def reserve(self, *args: Any) -> Refusal | None:
        self._off_loop()
        return super().reserve(*args)

    def settle(self, *args: Any) -> None:
        self._off_loop()
        super().settle(*args)

    def release(self, hold_id: str) -> None:
        self._off_loop()
        super().release(hold_id)

    def balance(self, key: str) -> Balance | None:
        self._off_loop()
        return super().balance(key)

    async def areserve(self, *args: Any) -> Refusal | None:
        return MemoryLedger.reserve(self, *args)

    async def asettle(self, *args: Any) -> None:
        MemoryLedger.settle(self, *args)

    async def arelease(self, hold_id: str) -> None:
        MemoryLedger.release(self, hold_id)

    async def abalance(self, key: str) -> Balance | None:
        return MemoryLedger.balance(self, key)


def test_acascade_outside_a_task_never_reads_the_store_on_the_loop() -> None:
    """The task acascade opens for its run is closed by the async steps."""
    install_offline_provider(lambda model, messages, tools: "B", speed=0)
    cascade = Cascade(tiers=["offline/gpt-4o-mini", "offline/gpt-4o"])
    policy = Policy(cascade=cascade, budgets=[Budget(scope="team", max_usd="1")])
    gov = Governor(policy, ledger=LoopChecked())
    llm = GovernedLiteLLM(gov)
    metadata = {"team": "search"}
    result = asyncio.run(llm.acascade(MESSAGES, max_tokens=50, metadata=metadata))
    assert result.cost_usd > 0
    balance = MemoryLedger.balance(gov.ledger, TEAM)  # type: ignore[arg-type]
    assert balance is not None
    assert balance.spent_nanos == usd_to_nanos(result.cost_usd)


def test_arequest_task_closes_its_task_by_async_steps() -> None:
    """arequest_task reads the budget left without a sync store step."""
    gov = Governor(Policy(budgets=[Budget(max_usd="1")]), ledger=LoopChecked())

    async def run() -> Any:
        async with gov.arequest_task() as task:
            admission = await gov.abegin_call(_request())
            await gov.aend_call(admission, CallResult(usage=USAGE))
        return task.report()

    report = asyncio.run(run())
    assert report.cost_usd > 0
    assert report.budget_left_usd == 1 - report.cost_usd


# -- aclose ---------------------------------------------------------------


def _queued_settle(tmp_path: Path) -> tuple[Governor, SwitchedStore]:
    """A governor with a settle queued for a store that is down."""
    store = SwitchedStore()
    ledger = FailoverLedger(store, mode="open", probe_interval_s=0.05)
    policy = Policy(budgets=[Budget(scope="team", max_usd="1")], failure_mode="open")
    gov = Governor(policy, ledger=ledger, spend=tmp_path / "spend.jsonl")
    store.down = True
    with gov.task(team="search"):
        admission = gov.begin_call(_request())
        gov.end_call(admission, CallResult(usage=USAGE))
    assert ledger.pending_settles == 1
    return gov, store


def test_aclose_waits_for_queued_steps_without_blocking_the_loop(
    tmp_path: Path,
) -> None:
    """The loop keeps running while aclose gives the store its time."""
    gov, store = _queued_settle(tmp_path)

    async def close() -> tuple[int, int]:
        ticks = 0

        async def tick() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        ticker = asyncio.create_task(tick())
        lost = await gov.aclose(timeout_s=0.5)
        ticker.cancel()
        return lost, ticks

    lost, ticks = asyncio.run(close())
    store.down = False  # the queued settle can go, and its thread stop
    assert isinstance(gov.ledger, FailoverLedger)
    assert gov.ledger.drain(5.0) == 0
    assert lost == 0
    assert ticks >= 10
    assert len(_records(tmp_path / "spend.jsonl")) == 1


def test_async_with_closes_the_governor_once(tmp_path: Path) -> None:
    """Leaving ``async with`` writes the records; closing again does nothing."""
    spend = tmp_path / "spend.jsonl"

    async def run() -> tuple[Governor, int]:
        async with Governor(Policy(), spend=spend) as gov:
            admission = await gov.abegin_call(_request())
            await gov.aend_call(admission, CallResult(usage=USAGE))
        return gov, await gov.aclose()

    gov, again = asyncio.run(run())
    assert again == 0
    assert gov.close() == 0
    assert gov.recorder is None
    assert len(_records(spend)) == 1


def test_ctrl_c_in_a_sync_task_records_it_cancelled() -> None:
    """Ctrl-C is the caller stopping the task, as a cancelled atask is; it is
    not a node's error."""
    gov = Governor()
    with pytest.raises(KeyboardInterrupt), gov.task() as task:
        raise KeyboardInterrupt
    assert task.report().stop_reason == "cancelled"
