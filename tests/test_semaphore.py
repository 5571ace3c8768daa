"""Concurrency caps: local and Redis semaphores, on every exit path."""

from __future__ import annotations

import asyncio
import multiprocessing
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from _redis_fixtures import slot_worker

from governor.stores._redis import RedisLedger
from governor.stores._semaphore import (
    LocalSemaphore,
    RedisSemaphore,
    Semaphore,
    SlotUnavailable,
)

pytest_plugins = ["_redis_fixtures"]


class Peak:
    """Counts calls inside a slot and remembers the most at once."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.now = 0
        self.most = 0

    def enter(self) -> None:
        with self._lock:
            self.now += 1
            self.most = max(self.most, self.now)

    def leave(self) -> None:
        with self._lock:
            self.now -= 1


@pytest.fixture(params=["local", "redis"])
def semaphore(request: pytest.FixtureRequest) -> Iterator[Semaphore]:
    """A two-slot semaphore of each kind."""
    if request.param == "local":
        yield LocalSemaphore(2, key="team:x")
        return
    url = request.getfixturevalue("redis_url")
    prefix = request.getfixturevalue("redis_prefix")
    yield RedisSemaphore("team:x", 2, 30.0, config=url, prefix=prefix)


def test_threads_never_exceed_the_limit(semaphore: Semaphore) -> None:
    """Eight threads through a two-slot semaphore run at most two at once."""
    peak = Peak()

    def call(_: int) -> None:
        with semaphore.slot(timeout_s=30):
            peak.enter()
            time.sleep(0.01)
            peak.leave()

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(call, range(24)))
    assert (peak.most, semaphore.in_use()) == (2, 0)


async def test_tasks_never_exceed_the_limit(semaphore: Semaphore) -> None:
    """Twenty asyncio tasks through a two-slot semaphore run at most two at once."""
    peak = Peak()

    async def call() -> None:
        async with semaphore.aslot(timeout_s=30):
            peak.enter()
            await asyncio.sleep(0.01)
            peak.leave()

    await asyncio.gather(*(call() for _ in range(20)))
    assert (peak.most, semaphore.in_use()) == (2, 0)


def test_slot_is_released_when_the_call_raises(semaphore: Semaphore) -> None:
    """A provider error inside the block gives the slot back."""
    with pytest.raises(RuntimeError), semaphore.slot():
        raise RuntimeError("provider error")
    assert semaphore.in_use() == 0


async def test_slot_is_released_when_the_call_times_out(semaphore: Semaphore) -> None:
    """A call cut off by a timeout gives its slot back."""

    async def slow_call() -> None:
        async with semaphore.aslot():
            await asyncio.sleep(30)

    with pytest.raises(TimeoutError):
        await asyncio.wait_for(slow_call(), 0.05)
    assert semaphore.in_use() == 0


async def test_slot_is_released_when_the_task_is_cancelled(
    semaphore: Semaphore,
) -> None:
    """A cancelled task gives its slot back."""
    entered = asyncio.Event()

    async def call() -> None:
        async with semaphore.aslot():
            entered.set()
            await asyncio.sleep(30)

    task = asyncio.create_task(call())
    await entered.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert semaphore.in_use() == 0


def test_full_semaphore_times_out_with_slot_unavailable(semaphore: Semaphore) -> None:
    """A wait that outlasts its timeout raises SlotUnavailable naming the cap."""
    tokens = [semaphore.acquire(), semaphore.acquire()]
    with pytest.raises(SlotUnavailable, match="all 2 slots of 'team:x'"):
        semaphore.acquire(timeout_s=0.05)
    for token in tokens:
        semaphore.release(token)
    assert semaphore.in_use() == 0


def test_release_is_idempotent(semaphore: Semaphore) -> None:
    """Releasing the same token twice frees one slot only."""
    first, second = semaphore.acquire(), semaphore.acquire()
    semaphore.release(first)
    semaphore.release(first)
    assert semaphore.in_use() == 1
    semaphore.release(second)


async def test_cancelled_waiter_does_not_keep_a_slot(semaphore: Semaphore) -> None:
    """A waiter cancelled in the queue leaves no slot behind."""
    tokens = [await semaphore.aacquire(), await semaphore.aacquire()]
    waiter = asyncio.create_task(semaphore.aacquire())
    await asyncio.sleep(0.02)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    for token in tokens:
        await semaphore.arelease(token)
    assert semaphore.in_use() == 0


def test_local_semaphore_is_shared_by_threads_and_tasks() -> None:
    """Sync threads and asyncio tasks on one LocalSemaphore share its slots."""
    semaphore = LocalSemaphore(3)
    peak = Peak()

    def thread_call(_: int) -> None:
        with semaphore.slot(timeout_s=30):
            peak.enter()
            time.sleep(0.005)
            peak.leave()

    async def task_call() -> None:
        async with semaphore.aslot(timeout_s=30):
            peak.enter()
            await asyncio.sleep(0.005)
            peak.leave()

    async def tasks() -> None:
        await asyncio.gather(*(task_call() for _ in range(30)))

    with ThreadPoolExecutor(6) as pool:
        threads = pool.map(thread_call, range(30))
        asyncio.run(tasks())
        list(threads)
    assert (peak.most, semaphore.in_use()) == (3, 0)


def test_local_slot_goes_to_the_waiter_first_in_line() -> None:
    """A freed slot is handed to the queued waiter, not to a newcomer."""
    semaphore = LocalSemaphore(1)
    token = semaphore.acquire()
    got_slot, done = threading.Event(), threading.Event()

    def waiter() -> None:
        with semaphore.slot(timeout_s=30):
            got_slot.set()
            done.wait(30)

    thread = threading.Thread(target=waiter)
    thread.start()
    while not semaphore._waiters:  # until the waiter has queued
        time.sleep(0.001)
    semaphore.release(token)
    with pytest.raises(SlotUnavailable):
        semaphore.acquire(timeout_s=0)
    done.set()
    thread.join()
    assert got_slot.is_set()
    assert semaphore.in_use() == 0


def test_redis_renew_keeps_a_slot_past_its_lease(
    redis_url: str, redis_prefix: str
) -> None:
    """A renewed slot outlives its first lease."""
    semaphore = RedisSemaphore("k", 1, 0.3, config=redis_url, prefix=redis_prefix)
    token = semaphore.acquire()
    time.sleep(0.2)
    assert semaphore.renew(token) is True
    time.sleep(0.2)
    assert semaphore.in_use() == 1
    semaphore.release(token)


def test_ledger_semaphore_shares_prefix_and_pool(
    redis_url: str, redis_prefix: str
) -> None:
    """RedisLedger.semaphore() caps on the ledger's prefix with its pools."""
    ledger = RedisLedger(redis_url, prefix=redis_prefix)
    semaphore = ledger.semaphore("team:x", 1, 30.0)
    other = RedisSemaphore("team:x", 1, 30.0, config=redis_url, prefix=redis_prefix)
    token = semaphore.acquire()
    assert other.try_acquire() is None
    semaphore.release(token)
    assert semaphore.connections is ledger.connections


def test_redis_slot_expires_after_its_lease(redis_url: str, redis_prefix: str) -> None:
    """A slot never released (a dead worker) frees itself when its lease ends."""
    semaphore = RedisSemaphore("k", 1, 0.2, config=redis_url, prefix=redis_prefix)
    semaphore.acquire()
    time.sleep(0.3)
    assert semaphore.in_use() == 0


async def test_a_cancelled_redis_release_is_given_back_in_the_background(
    redis_url: str, redis_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A release cancelled on its way to Redis is queued, not lost.

    It used to raise CancelledError past the retry queue, so the slot stayed
    taken until its lease ended.
    """
    semaphore = RedisSemaphore("k", 1, 60.0, config=redis_url, prefix=redis_prefix)
    token = await semaphore.aacquire()
    started = asyncio.Event()

    async def stalled(op: Any, what: str) -> None:  # Redis slow to answer
        started.set()
        await asyncio.sleep(30)

    monkeypatch.setattr(semaphore.connections, "acall", stalled)
    release = asyncio.create_task(semaphore.arelease(token))
    await started.wait()
    release.cancel()
    with pytest.raises(asyncio.CancelledError):
        await release
    assert semaphore.connections.retries.drain(5.0) == 0
    assert semaphore.in_use() == 0


def test_an_interrupted_redis_release_is_given_back_in_the_background(
    redis_url: str, redis_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A sync release interrupted (KeyboardInterrupt) is queued, then re-raised."""
    semaphore = RedisSemaphore("k", 1, 60.0, config=redis_url, prefix=redis_prefix)
    token = semaphore.acquire()
    calls = {"n": 0}
    real = semaphore.connections.call

    def interrupted_once(op: Any, what: str) -> Any:
        calls["n"] += 1
        if calls["n"] == 1:
            raise KeyboardInterrupt
        return real(op, what)

    monkeypatch.setattr(semaphore.connections, "call", interrupted_once)
    with pytest.raises(KeyboardInterrupt):
        semaphore.release(token)
    assert semaphore.connections.retries.drain(5.0) == 0
    assert semaphore.in_use() == 0


@pytest.mark.slow
def test_redis_cap_holds_across_processes(redis_url: str, redis_prefix: str) -> None:
    """Three processes of four threads each never hold more than the cap."""
    ctx = multiprocessing.get_context("spawn")
    counter = ctx.Array("i", [0, 0])  # in flight now, most in flight at once
    args = (redis_url, redis_prefix, "team:x", 2, 20, counter)
    workers = [ctx.Process(target=slot_worker, args=args) for _ in range(3)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=120)
    assert [worker.exitcode for worker in workers] == [0, 0, 0]
    assert (counter[0], counter[1]) == (0, 2)


def test_a_cap_of_one_says_its_one_slot_is_busy() -> None:
    """'all 1 slots' read oddly: a single slot is named as such."""
    from governor._errors import _slot_message

    assert _slot_message("team:x", 1, 0).startswith(
        "the one slot of 'team:x' is busy and Fanout(on_cap='refuse')"
    )
    assert _slot_message("team:x", 3, 2.0).startswith(
        "all 3 slots of 'team:x' stayed busy for 2.0 s."
    )


def test_a_blocking_wait_on_an_event_loop_says_so(semaphore: Semaphore) -> None:
    """A sync wait for a slot made on a loop's thread cannot see the loop's own
    calls end; the timeout says so and names the async API. A wait from a
    plain thread does not get that advice."""
    held = [semaphore.acquire(), semaphore.acquire()]

    async def blocking_wait_on_the_loop() -> str:
        with pytest.raises(SlotUnavailable) as caught:
            semaphore.acquire(timeout_s=0.05)
        return str(caught.value)

    on_loop = asyncio.run(blocking_wait_on_the_loop())
    with pytest.raises(SlotUnavailable) as plain:
        semaphore.acquire(timeout_s=0.05)
    for token in held:
        semaphore.release(token)
    assert "blocked the thread of a running event loop" in on_loop
    assert "event loop" not in str(plain.value)
