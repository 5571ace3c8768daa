"""A lock another thread holds at os.fork() does not deadlock the child.

A fork copies a held lock as held, and the thread that held it is not in the
child: without a fresh lock, the child's first use of the part hangs for
good. Each test holds the part's lock in a second thread, forks, and uses the
part in the child, which reports through its exit status. The parent never
waits on the child for more than ``CHILD_LIMIT_S``: then it kills the child
and fails (the child's stack is dumped to stderr first).
"""

from __future__ import annotations

import asyncio
import functools
import os
import sqlite3
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import _forking as forking
import pytest

from governor._recorder import SpendRecorder
from governor._slots import release
from governor.anomaly import AnomalyMonitor
from governor.spend import SpendRecord
from governor.stores import Line, MemoryLedger
from governor.stores._redis import RedisLedger

pytest_plugins = ["_redis_fixtures"]

pytestmark = [
    pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork()"),
    # Python 3.12+ warns that forking a threaded process may deadlock:
    # that risk is what these tests check the governor handles.
    pytest.mark.filterwarnings("ignore:.*fork.*:DeprecationWarning"),
]

CHILD_LIMIT_S = 10.0
LINE = Line("team:x", 10**9, None)


# Fork a child for a test body, hold a lock in a second thread: each with
# this file's hang guard.
in_child = functools.partial(forking.in_child, limit_s=CHILD_LIMIT_S)
held_by_another_thread = functools.partial(
    forking.held_by_another_thread, limit_s=CHILD_LIMIT_S
)


# -- the in-memory ledger --------------------------------------------------


def test_a_memory_ledger_locked_at_the_fork_works_in_the_child() -> None:
    ledger = MemoryLedger()

    def child() -> None:
        assert ledger.reserve("c1", [LINE], 100, 0, 60) is None
        ledger.settle("c1", ["team:x"], 40, 0)
        balance = ledger.balance("team:x")
        assert balance is not None
        assert balance.spent_nanos == 40

    with held_by_another_thread(ledger._lock):
        in_child(child)
    assert ledger.balance("team:x") is None  # the child's spend stayed there


def test_a_child_keeps_the_spend_but_not_the_parents_holds() -> None:
    """In-memory budgets are per process: the child starts from a copy."""
    ledger = MemoryLedger()
    assert ledger.reserve("p1", [LINE], 300, 0, 60) is None
    ledger.settle("p1", ["team:x"], 200, 0)
    assert ledger.reserve("p2", [LINE], 500, 0, 60) is None  # in flight

    def child() -> None:
        balance = ledger.balance("team:x")
        assert balance is not None
        assert (balance.spent_nanos, balance.reserved_nanos) == (200, 0)
        assert ledger.renew("p2", 60) is False  # the parent's call
        assert ledger.reserve("c1", [LINE], 10**9 - 200, 0, 60) is None

    in_child(child)
    balance = ledger.balance("team:x")
    assert balance is not None
    assert (balance.spent_nanos, balance.reserved_nanos) == (200, 500)
    ledger.settle("p2", ["team:x"], 500, 0)


# -- the anomaly monitor ---------------------------------------------------


def test_an_anomaly_monitor_locked_at_the_fork_works_in_the_child() -> None:
    monitor = AnomalyMonitor()
    rec = SpendRecord(
        ts=datetime(2026, 1, 5, 9, 0, tzinfo=UTC),
        task_id="t",
        call_id="c1",
        model="gpt-4o-mini",
        input_tokens=10,
    )

    def child() -> None:
        assert monitor.observe(rec) == []

    with held_by_another_thread(monitor._lock):
        in_child(child)


# -- the Redis connections -------------------------------------------------


@pytest.mark.redis
def test_redis_connections_locked_at_the_fork_work_in_the_child(
    redis_url: str, redis_prefix: str
) -> None:
    ledger = RedisLedger(redis_url, prefix=redis_prefix)

    def child() -> None:
        assert ledger.reserve("c1", [LINE], 100, 0, 60) is None
        ledger.settle("c1", ["team:x"], 40, 0)
        ledger.close()

    with held_by_another_thread(ledger.connections._lock):
        in_child(child)
    balance = ledger.balance("team:x")
    assert balance is not None
    assert balance.spent_nanos == 40
    ledger.close()


@pytest.mark.redis
def test_a_child_makes_redis_pools_of_its_own(
    redis_url: str, redis_prefix: str
) -> None:
    """Neither the sync pool nor the asyncio one of the parent is used."""
    ledger = RedisLedger(redis_url, prefix=redis_prefix)
    conn = ledger.connections
    sync_pool = conn.client().connection_pool
    loop = asyncio.new_event_loop()

    async def client_id() -> int:
        return int(await conn.aclient().client_id())

    parent_id = loop.run_until_complete(client_id())

    def child() -> None:
        assert conn.client().connection_pool is not sync_pool
        # The parent's asyncio pool does not check the pid: reused, its
        # connection would carry the child's commands.
        assert loop.run_until_complete(client_id()) != parent_id
        ledger.close()

    try:
        in_child(child)
        assert loop.run_until_complete(client_id()) == parent_id
        loop.run_until_complete(ledger.aclose())
    finally:
        loop.close()
        ledger.close()


# -- prices ------------------------------------------------------------------


def test_a_price_map_fetch_in_flight_at_the_fork_does_not_hang_the_child() -> None:
    """The parent's fetch holds the map's lock; the child prices on its own."""
    from governor.pricing import RateCard, _pricemap

    card = RateCard(price_map=None)

    def child() -> None:
        assert card.rate("gpt-4o-mini").model == "gpt-4o-mini"
        assert _pricemap.remote_price_map("http://127.0.0.1:9/", timeout_s=0.5)

    with (
        held_by_another_thread(_pricemap._lock),
        held_by_another_thread(card._lock),
    ):
        in_child(child)


# -- fan-out slots -----------------------------------------------------------


def test_a_child_starts_with_every_in_process_slot_free() -> None:
    """Slots the parent's calls held at the fork are theirs, not the child's."""
    from governor import Fanout, Governor, Policy

    gov = Governor(Policy(fanout=Fanout(scope_caps={"team": 1}, wait_timeout_s=1)))
    with gov.task(team="t1") as task:
        parents = gov.slots.acquire(task)  # the parent's call in flight

        def child() -> None:
            with gov.task(team="t1") as own:
                held = gov.slots.acquire(own)  # SlotUnavailable if still taken
                release(held)
            release(parents)  # the parent's slot, released here: a no-op

        in_child(child)
        release(parents)


# -- spend records -------------------------------------------------------------


def test_a_fork_waits_for_a_sqlite_spend_write_in_flight(tmp_path: Path) -> None:
    """A child forked in the middle of the parent's write transaction would
    find the file locked for good; the fork waits for the write instead."""
    from governor.spend import SQLiteSpendStore

    writing, go_on = threading.Event(), threading.Event()

    class SlowStore(SQLiteSpendStore):
        def record_many(self, records: Any) -> None:
            if not go_on.is_set():  # the first write: hold its transaction
                self._conn.execute("BEGIN IMMEDIATE")
                writing.set()
                go_on.wait(CHILD_LIMIT_S)
                self._conn.rollback()
            super().record_many(records)

    path = tmp_path / "spend.sqlite3"
    recorder = SpendRecorder(SlowStore(path))
    recorder.submit(spend_record("p1"))
    assert writing.wait(CHILD_LIMIT_S)
    threading.Timer(0.3, go_on.set).start()  # the write ends while fork() waits

    def child() -> None:
        for n in range(3):
            recorder.submit(spend_record(f"c{n}"))
        assert recorder.close(5.0) == 0  # nothing lost to a locked file

    in_child(child)
    recorder.close(5.0)
    rows = sqlite3.connect(path).execute("select call_id from spend").fetchall()
    assert sorted(r[0] for r in rows) == ["c0", "c1", "c2", "p1"]


def spend_record(call_id: str) -> SpendRecord:
    return SpendRecord(
        ts=datetime(2026, 1, 5, 9, 0, tzinfo=UTC),
        task_id="t",
        call_id=call_id,
        model="gpt-4o-mini",
        input_tokens=10,
    )
