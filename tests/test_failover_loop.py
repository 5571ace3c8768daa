"""Queued budget steps written from an event loop never block that loop.

A settle cut off by a cancellation is queued by the failover wrapper and
written by the next ledger step. When that step was async, it held a thread
lock while it awaited the write; a sync read on the same loop (a task's
budget left when ``async with gov.atask()`` ends, a budget warning) then
waited on that lock for good, and the loop with it. Each scenario runs on a
loop in a thread of its own, so a hang fails the test instead of the run.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Callable, Coroutine, Iterator, Mapping, Sequence
from decimal import Decimal
from pathlib import Path
from typing import Any, TypeVar

import pytest

from conftest import SpanCapture
from governor import Budget, Governor, Policy
from governor._calls import CallRequest, CallResult
from governor._task import Task
from governor.pricing import Usage
from governor.stores import FailoverLedger, Line, RedisLedger
from governor.telemetry.attributes import TASK_ID

pytest_plugins = ["_redis_fixtures"]

T = TypeVar("T")

LINE = Line("team:x", 10**9, None)
NANOS = 1_234_567
MESSAGES = [{"role": "user", "content": "What is the capital of Peru?"}]
USAGE = Usage(prompt_tokens=10, completion_tokens=5)
HANG_S = 20.0  # far past any real run: only a hung loop reaches it


class GatedLedger(RedisLedger):
    """A Redis ledger whose async settles wait at a gate (a stalled store)."""

    def __init__(self, url: str, prefix: str) -> None:
        super().__init__(url, prefix=prefix)
        self.gate: asyncio.Event | None = None
        self.waiting = 0

    def close_gate(self) -> asyncio.Event:
        self.gate = asyncio.Event()
        return self.gate

    async def asettle(
        self, hold_id: str, keys: Sequence[str], nanos: int, tokens: int
    ) -> None:
        if self.gate is not None and not self.gate.is_set():
            self.waiting += 1
            try:
                await self.gate.wait()
            finally:
                self.waiting -= 1
        await super().asettle(hold_id, keys, nanos, tokens)


@pytest.fixture
def primary(redis_url: str, redis_prefix: str) -> Iterator[GatedLedger]:
    ledger = GatedLedger(redis_url, redis_prefix)
    yield ledger
    ledger.close()


def _failover(primary: GatedLedger) -> FailoverLedger:
    # No probe in the test's time: only the test's own steps write the queue.
    return FailoverLedger(primary, probe_interval_s=3600)


def _bounded(main: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run ``main`` on a fresh loop in a thread; fail if that loop hangs."""
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["result"] = asyncio.run(main())
        except BaseException as exc:  # handed to the test below
            box["error"] = exc

    thread = threading.Thread(target=run, name="test-loop", daemon=True)
    thread.start()
    thread.join(HANG_S)
    if thread.is_alive():
        pytest.fail(
            "the event loop hung: a sync ledger step on the loop thread waits "
            "for a coroutine on that same loop"
        )
    if "error" in box:
        raise box["error"]
    result: T = box["result"]
    return result


async def _until(check: Callable[[], bool]) -> None:
    """Let the loop run until ``check`` holds."""
    while not check():
        await asyncio.sleep(0)


async def _queue_cut_off_settle(
    ledger: FailoverLedger, primary: GatedLedger, hold_id: str
) -> None:
    """Reserve, then cut the settle off on the wire: the failover queues it."""
    assert await ledger.areserve(hold_id, [LINE], NANOS, 10, 600) is None
    settle = asyncio.create_task(ledger.asettle(hold_id, [LINE.key], NANOS, 10))
    await _until(lambda: primary.waiting == 1)
    settle.cancel()
    with pytest.raises(asyncio.CancelledError):
        await settle
    assert ledger.pending_settles == 1


def _spent(primary: RedisLedger, key: str = LINE.key) -> tuple[int, int]:
    balance = primary.balance(key)
    assert balance is not None
    return balance.spent_nanos, balance.reserved_nanos


def test_a_sync_read_while_a_coroutine_writes_the_queue_does_not_hang(
    primary: GatedLedger,
) -> None:
    """The sync read goes on; the queued settle is charged once, when written."""
    ledger = _failover(primary)

    async def main() -> tuple[int, int, int, int]:
        gate = primary.close_gate()
        await _queue_cut_off_settle(ledger, primary, "h1")
        writer = asyncio.create_task(ledger.abalance(LINE.key))
        await _until(lambda: primary.waiting == 1)  # the queued settle, stalled
        during = ledger.balance(LINE.key)  # on the loop thread
        assert during is not None
        gate.set()
        after = await writer
        assert after is not None
        return (
            during.spent_nanos,
            after.spent_nanos,
            after.reserved_nanos,
            ledger.pending_settles,
        )

    assert _bounded(main) == (0, NANOS, 0, 0)
    assert _spent(primary) == (NANOS, 0)


def test_a_queued_settle_whose_write_is_cut_off_stays_queued(
    primary: GatedLedger,
) -> None:
    """Cancelled while writing the queue: the settle waits and lands once."""
    ledger = _failover(primary)

    async def main() -> tuple[int, int]:
        gate = primary.close_gate()
        await _queue_cut_off_settle(ledger, primary, "h2")
        writer = asyncio.create_task(ledger.areserve("h3", [LINE], 1, 1, 600))
        await _until(lambda: primary.waiting == 1)
        writer.cancel()
        with pytest.raises(asyncio.CancelledError):
            await writer
        queued = ledger.pending_settles
        gate.set()
        await ledger.asettle("h4", [LINE.key], 5, 1)  # writes the queue first
        return queued, ledger.pending_settles

    assert _bounded(main) == (1, 0)
    assert _spent(primary) == (NANOS + 5, 0)


def test_a_settle_cut_off_while_it_writes_the_queue_is_queued_too(
    primary: GatedLedger,
) -> None:
    """A settle cancelled before its own turn is kept, not lost with its hold."""
    ledger = _failover(primary)

    async def main() -> tuple[int, int]:
        gate = primary.close_gate()
        assert await ledger.areserve("h6", [LINE], 7, 1, 600) is None
        await _queue_cut_off_settle(ledger, primary, "h5")
        settle = asyncio.create_task(ledger.asettle("h6", [LINE.key], 7, 1))
        await _until(lambda: primary.waiting == 1)  # writing h5's settle
        settle.cancel()
        with pytest.raises(asyncio.CancelledError):
            await settle
        queued = ledger.pending_settles
        gate.set()
        await ledger.abalance(LINE.key)
        return queued, ledger.pending_settles

    assert _bounded(main) == (2, 0)
    assert _spent(primary) == (NANOS + 7, 0)


def _request(team: Mapping[str, str] | None = None) -> CallRequest:
    return CallRequest(
        model="gpt-4o-mini", messages=MESSAGES, max_output_tokens=20, attribution=team
    )


async def _cut_off_call(gov: Governor, primary: GatedLedger) -> None:
    """A one-call task whose settle a deadline cuts off on the wire: queued."""
    admission = await gov.abegin_call(_request({"team": "a"}))
    call = asyncio.create_task(gov.aend_call(admission, CallResult(usage=USAGE)))
    await _until(lambda: primary.waiting == 1)
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call


def test_leaving_atask_while_the_queue_is_written_does_not_hang(
    primary: GatedLedger, tmp_path: Path
) -> None:
    """A task ends while another call writes a settle cut off earlier.

    The loop used to hang in ``atask``'s exit (its budget-left read); now
    both calls are charged once and the ledger agrees with the records.
    """
    spend = tmp_path / "spend.jsonl"
    # No warnings: a sync warning read in the cut-off call would have written
    # the queue itself, before the task's end.
    policy = Policy(budgets=[Budget(scope="team", max_usd="1", warn_at=())])
    gov = Governor(policy, ledger=_failover(primary), spend=str(spend))

    async def one_call() -> None:
        async with gov.atask(team="a"):
            admission = await gov.abegin_call(_request())
            await gov.aend_call(admission, CallResult(usage=USAGE))

    async def main() -> int:
        gate = primary.close_gate()
        await _cut_off_call(gov, primary)
        caller = asyncio.create_task(one_call())  # writes the queue first
        await _until(lambda: primary.waiting == 1)
        async with gov.atask(team="a"):
            pass
        gate.set()
        await caller
        return primary.waiting

    assert _bounded(main) == 0
    gov.close()
    records = [json.loads(line) for line in spend.read_text().splitlines()]
    spent, reserved = _spent(primary, "team:a")
    cost = sum(Decimal(str(r["cost_usd"])) for r in records)
    assert (len(records), reserved) == (2, 0)
    assert Decimal(spent) / 10**9 == cost


def test_a_task_end_cut_off_while_reading_still_ends_the_task(
    primary: GatedLedger, capture: SpanCapture
) -> None:
    """Cancelled in ``atask``'s exit, the task still closes and its span ends.

    The call cut off before it closes its own task without reading the
    store, which the caller had given up waiting on.
    """
    policy = Policy(budgets=[Budget(scope="team", max_usd="1")])
    ledger = _failover(primary)
    gov = Governor(policy, ledger=ledger, tracer_provider=capture.provider)
    tasks: list[Task] = []

    async def leave() -> None:
        async with gov.atask(team="a") as task:
            tasks.append(task)

    async def main() -> tuple[int, int]:
        gate = primary.close_gate()
        await _cut_off_call(gov, primary)
        leaving = asyncio.create_task(leave())
        await _until(lambda: primary.waiting == 1)  # its read writes the queue
        leaving.cancel()
        with pytest.raises(asyncio.CancelledError):
            await leaving
        queued = ledger.pending_settles
        gate.set()
        await ledger.abalance("team:a")
        return queued, ledger.pending_settles

    assert _bounded(main) == (1, 0)
    (task,) = tasks
    ended = [s.attributes.get(TASK_ID) for s in capture.named("governor.task")]
    gov.close()
    assert task.closed
    assert task.id in ended
    assert len(ended) == 2  # this task's and the cut-off call's own
    assert _spent(primary, "team:a")[1] == 0


def test_async_task_ends_and_warnings_read_balances_by_async_steps(
    primary: GatedLedger, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No sync balance read on the loop: the report's figure comes from abalance."""
    policy = Policy(budgets=[Budget(scope="team", max_usd="1")])
    gov = Governor(policy, ledger=_failover(primary))

    def no_sync_read(key: str) -> None:
        raise AssertionError(f"sync balance read of {key!r} on the event loop")

    monkeypatch.setattr(gov.ledger, "balance", no_sync_read)

    async def main() -> tuple[Decimal | None, Decimal]:
        async with gov.atask(team="a") as task:
            admission = await gov.abegin_call(_request())
            cost = await gov.aend_call(admission, CallResult(usage=USAGE))
        return task.report().budget_left_usd, cost

    left, cost = _bounded(main)
    gov.close()
    assert left == Decimal(1) - cost
