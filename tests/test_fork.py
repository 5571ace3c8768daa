"""A governor built before os.fork() keeps working in the child.

Servers that import the app once and fork workers (gunicorn --preload,
Celery prefork, multiprocessing with "fork") copy the governor but not its
threads. Each test forks for real and runs its checks in the child, which
reports through its exit status (its tracebacks go to the captured stderr).
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import _forking as forking
import pytest
from _switched_store import SwitchedStore

from governor import Budget, Governor, Policy, StoreUnavailable
from governor._calls import CallRequest, CallResult
from governor._recorder import SpendRecorder
from governor.pricing import Usage
from governor.spend import JsonlSpendStore, SpendRecord, SQLiteSpendStore
from governor.stores import FailoverLedger, Line, MemoryLedger
from governor.stores._redis import RedisLedger
from governor.stores._retry import Retrier

pytest_plugins = ["_redis_fixtures"]

pytestmark = [
    pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork()"),
    # Python 3.12+ warns that forking a threaded process may deadlock:
    # that risk is what these tests check the governor handles.
    pytest.mark.filterwarnings("ignore:.*fork.*:DeprecationWarning"),
]

MESSAGES = [{"role": "user", "content": "Name three rivers in Peru."}]
USAGE = Usage(prompt_tokens=10, completion_tokens=5)
LINE = Line("team:x", 10**9, None)
# Generous bounds for waiting on background threads; never asserted on.
WAIT_S = 20.0
CHILD_HANG_S = 60


def in_child(body: Callable[[], None]) -> None:
    """Fork; run ``body`` in the child; fail here if it raised or hung."""
    forking.in_child(body, limit_s=CHILD_HANG_S + 2)


def eventually(check: Callable[[], bool]) -> bool:
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.02)
    return check()


def call(gov: Governor, team: str = "search") -> None:
    """One governed call, settled at once."""
    request = CallRequest(model="gpt-4o-mini", messages=MESSAGES, max_output_tokens=20)
    with gov.task(team=team):
        gov.end_call(gov.begin_call(request), CallResult(usage=USAGE))


def record(call_id: str) -> SpendRecord:
    return SpendRecord(
        ts=datetime(2026, 1, 5, 9, 0, tzinfo=UTC),
        task_id="t",
        call_id=call_id,
        model="gpt-4o-mini",
        input_tokens=10,
    )


# -- the spend writer ------------------------------------------------------


def test_a_child_writes_its_spend_records_to_sqlite(tmp_path: Path) -> None:
    """The child gets a writer of its own; no record is lost at its close."""
    db = tmp_path / "spend.sqlite3"
    gov = Governor(Policy(budgets=[Budget(max_usd="1")]), spend=db)
    call(gov)
    assert gov.flush() == 0

    def child() -> None:
        for _ in range(3):
            call(gov)
        assert gov.close() == 0

    in_child(child)
    assert gov.close() == 0
    with sqlite3.connect(db) as conn:
        (count,) = conn.execute("SELECT count(*) FROM spend").fetchone()
    assert count == 4


def test_a_child_opens_its_own_sqlite_connection(tmp_path: Path) -> None:
    """The parent's SQLite connection and its lock are not used in the child."""
    store = SQLiteSpendStore(tmp_path / "spend.sqlite3")
    recorder = SpendRecorder(store)

    def child() -> None:
        recorder.submit(record("c1"))
        assert recorder.close(timeout=WAIT_S) == 0
        assert recorder.store is not store

    with store._lock:  # as if the parent's writer were mid-write at the fork
        in_child(child)
    assert recorder.close() == 0
    assert [rec.call_id for rec in store.query()] == ["c1"]
    store.close()


def test_records_queued_at_the_fork_are_written_once_by_the_parent(
    tmp_path: Path,
) -> None:
    """The child writes only its records; those queued at the fork are the parent's."""
    path = tmp_path / "spend.jsonl"
    parent = os.getpid()
    gate = threading.Event()
    observed: list[str] = []

    def observer(rec: SpendRecord) -> None:
        observed.append(rec.call_id)
        if os.getpid() == parent:
            gate.wait()  # holds the parent's writer: p2 stays queued

    recorder = SpendRecorder(JsonlSpendStore(path), observers=[observer])
    recorder.submit(record("p1"))
    recorder.submit(record("p2"))
    assert eventually(lambda: observed == ["p1"])

    def child() -> None:
        recorder.submit(record("c1"))
        assert recorder.close() == 0
        assert observed == ["p1", "c1"]  # the child's monitor sees its record

    in_child(child)
    gate.set()
    assert recorder.close() == 0
    ids = [json.loads(line)["call_id"] for line in path.read_text().splitlines()]
    assert sorted(ids) == ["c1", "p1", "p2"]


def test_a_recorder_closed_before_the_fork_stays_closed() -> None:
    recorder = SpendRecorder(None, observers=[lambda rec: None])
    assert recorder.close() == 0

    def child() -> None:
        assert not recorder._thread.is_alive()
        assert recorder.close() == 0

    in_child(child)


# -- leases, queued budget steps and retried writes ------------------------


@pytest.mark.redis
def test_a_child_renews_its_own_calls_only(redis_url: str, redis_prefix: str) -> None:
    """A call in flight at the fork stays the parent's; the child renews its own."""
    ledger = RedisLedger(redis_url, prefix=redis_prefix)
    gov = Governor(Policy(hold_ttl_s=1), ledger=ledger)
    renewed: list[tuple[int, str]] = []
    renew = gov.ledger.renew  # type: ignore[attr-defined]

    def counting(hold_id: str, ttl_s: float) -> bool:
        renewed.append((os.getpid(), hold_id))
        return bool(renew(hold_id, ttl_s))

    gov.ledger.renew = counting  # type: ignore[attr-defined]
    request = CallRequest(model="gpt-4o-mini", messages=MESSAGES, max_output_tokens=20)
    with gov.task(team="search"):
        in_flight = gov.begin_call(request)

        def child() -> None:
            with gov.task(team="search"):
                own = gov.begin_call(request)
                mine = (os.getpid(), own.call_id)
                assert eventually(lambda: mine in renewed), "never renewed"
                gov.end_call(own, CallResult(usage=USAGE))
            assert (os.getpid(), in_flight.call_id) not in renewed
            gov.close()

        in_child(child)
        gov.end_call(in_flight, CallResult(usage=USAGE))
    gov.close()
    ledger.close()


def test_a_child_writes_its_own_queued_settles() -> None:
    """A settle queued in the child reaches the store; the parent's stays its own."""
    store = SwitchedStore()
    ledger = FailoverLedger(store, mode="closed", probe_interval_s=0.05)
    ledger.reserve("parent", [LINE], 60, 0, 60)
    ledger.reserve("child", [LINE], 60, 0, 60)
    store.down = True
    ledger.settle("parent", ["team:x"], 40, 0)  # queued: the drain thread runs

    def child() -> None:
        assert ledger.pending_settles == 0
        ledger.settle("child", ["team:x"], 25, 0)
        store.down = False
        assert ledger.drain(WAIT_S) == 0
        assert spent(store) == 25

    in_child(child)
    store.down = False
    assert ledger.drain(WAIT_S) == 0
    assert spent(store) == 40


def spent(store: MemoryLedger) -> int:
    balance = MemoryLedger.balance(store, "team:x")
    return -1 if balance is None else balance.spent_nanos


def test_a_child_retries_its_own_writes() -> None:
    """A write kept in the child is retried by a thread of its own."""
    retrier = Retrier("test-retries", interval_s=0.05)
    down = True
    written: list[str] = []

    def write(name: str) -> Callable[[], None]:
        def attempt() -> None:
            if down:
                raise StoreUnavailable("switched off by the test")
            written.append(name)

        return attempt

    retrier.add("parent", write("parent"))  # fails: the retry thread runs

    def child() -> None:
        nonlocal down
        assert retrier.pending == 0
        down = False
        retrier.add("child", write("child"))
        assert retrier.drain(WAIT_S) == 0
        assert written == ["child"]

    in_child(child)
    down = False
    assert retrier.drain(WAIT_S) == 0
    assert written == ["parent"]


@pytest.mark.redis
def test_a_child_shares_no_redis_connection_with_the_parent(
    redis_url: str, redis_prefix: str
) -> None:
    """redis-py gives the child's pool connections of its own."""
    ledger = RedisLedger(redis_url, prefix=redis_prefix)
    gov = Governor(Policy(budgets=[Budget(scope="team", max_usd="1")]), ledger=ledger)
    call(gov)
    client = ledger.connections.client()
    parent_id = client.client_id()

    def child() -> None:
        assert client.client_id() != parent_id
        call(gov)
        gov.close()

    in_child(child)
    assert client.client_id() == parent_id
    balance = gov.ledger.balance("team:search")
    assert balance is not None
    assert balance.spent_nanos > 0
    gov.close()
    ledger.close()
