"""FailoverLedger: fail closed or open when the store is down, then reconcile."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, Literal

import pytest
from _redis_fixtures import OwnRedis
from _switched_store import SwitchedStore

from governor import Governor, Policy
from governor._errors import StoreUnavailable
from governor.stores import Balance, Line, MemoryLedger, Refusal
from governor.stores._failover import (
    EVENT_FAIL_CLOSED,
    EVENT_FAIL_OPEN,
    EVENT_RECONCILED,
    EVENT_SETTLE_QUEUED,
    FailoverLedger,
)
from governor.stores._redis import RedisConfig, RedisLedger

pytest_plugins = ["_redis_fixtures"]

LINE = Line("team:x", 100, None)


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _spent(store: MemoryLedger, key: str) -> int:
    balance = MemoryLedger.balance(store, key)
    return -1 if balance is None else balance.spent_nanos


def test_closed_mode_refuses_with_the_documented_error() -> None:
    """Fail closed: a reservation while the store is down raises StoreUnavailable."""
    store = SwitchedStore()
    store.down = True
    events: list[str] = []
    ledger = FailoverLedger(store, mode="closed", on_degraded=events.append)
    with pytest.raises(StoreUnavailable, match="failure_mode='open'"):
        ledger.reserve("h", [LINE], 10, 0, 60)
    assert events == [EVENT_FAIL_CLOSED]


def test_entering_degraded_mode_logs_one_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Going degraded logs one WARNING, not one per call."""
    store = SwitchedStore()
    store.down = True
    ledger = FailoverLedger(store, mode="open", probe_interval_s=0)
    with caplog.at_level(logging.WARNING, logger="governor.stores._failover"):
        ledger.reserve("h1", [LINE], 10, 0, 60)
        ledger.reserve("h2", [LINE], 10, 0, 60)
    assert [r.levelname for r in caplog.records] == ["WARNING"]
    assert "failing open" in caplog.records[0].getMessage()


def test_open_mode_admits_under_a_shadow_with_the_same_limits() -> None:
    """Fail open: the shadow budget refuses what the line's limit refuses."""
    store = SwitchedStore()
    store.down = True
    events: list[str] = []
    ledger = FailoverLedger(store, mode="open", on_degraded=events.append)
    assert ledger.reserve("h1", [LINE], 60, 0, 60) is None
    refusal = ledger.reserve("h2", [LINE], 60, 0, 60)
    assert refusal is not None
    assert (refusal.balance.key, refusal.balance.limit_nanos) == ("team:x", 100)
    assert events == [EVENT_FAIL_OPEN, EVENT_FAIL_OPEN]


def test_open_mode_reconciles_shadow_spend_when_store_returns() -> None:
    """Spend settled under the shadow reaches the store once it answers."""
    store = SwitchedStore()
    events: list[str] = []
    ledger = FailoverLedger(
        store, mode="open", on_degraded=events.append, probe_interval_s=0
    )
    store.down = True
    ledger.reserve("h1", [LINE], 60, 0, 60)
    ledger.settle("h1", ["team:x"], 25, 0)
    store.down = False
    assert ledger.reserve("h2", [LINE], 10, 0, 60) is None
    assert _spent(store, "team:x") == 25
    assert ledger.degraded is False
    assert events[-1] == EVENT_RECONCILED


def test_settle_of_a_store_hold_during_outage_is_queued_not_raised() -> None:
    """A settle that cannot reach the store waits for it, in closed mode too."""
    store = SwitchedStore()
    events: list[str] = []
    ledger = FailoverLedger(
        store, mode="closed", on_degraded=events.append, probe_interval_s=0
    )
    ledger.reserve("h1", [LINE], 60, 0, 60)
    store.down = True
    ledger.settle("h1", ["team:x"], 40, 0)
    queued = ledger.pending_settles
    store.down = False
    ledger.reserve("h2", [LINE], 10, 0, 60)
    assert queued == 1
    assert EVENT_SETTLE_QUEUED in events
    assert _spent(store, "team:x") == 40
    assert ledger.pending_settles == 0


def test_store_is_probed_at_most_once_per_interval() -> None:
    """While degraded, calls skip the store until the probe interval passes."""
    store = SwitchedStore()
    store.down = True
    clock = Clock()
    ledger = FailoverLedger(store, mode="open", probe_interval_s=5, clock=clock)
    for index in range(3):
        ledger.reserve(f"h{index}", [Line("team:y")], 1, 0, 60)
    calls_before = store.calls
    clock.now = 6.0
    ledger.reserve("h9", [Line("team:y")], 1, 0, 60)
    assert (calls_before, store.calls) == (1, 2)


def test_failing_hook_does_not_break_the_call() -> None:
    """An exception inside on_degraded is logged and the decision stands."""
    store = SwitchedStore()
    store.down = True

    def broken(event: str) -> None:
        raise RuntimeError(event)

    ledger = FailoverLedger(store, mode="open", on_degraded=broken)
    assert ledger.reserve("h", [LINE], 10, 0, 60) is None


async def test_async_open_mode_reconciles() -> None:
    """The async steps fail open and reconcile like the sync ones."""
    store = SwitchedStore()
    ledger = FailoverLedger(store, mode="open", probe_interval_s=0)
    store.down = True
    assert await ledger.areserve("h1", [LINE], 60, 0, 60) is None
    await ledger.asettle("h1", ["team:x"], 30, 0)
    store.down = False
    assert await ledger.areserve("h2", [LINE], 10, 0, 60) is None
    assert _spent(store, "team:x") == 30


class StepStore(SwitchedStore):
    """A switched store whose failures name their step, as RedisLedger's do."""

    def _gate(self) -> None:
        self.calls += 1

    def _down(self, step: str) -> None:
        if self.down:
            error = StoreUnavailable(f"did not answer {step}")
            error.cause = f"{step} failed: Timeout reading from 127.0.0.1:1"
            raise error

    def reserve(
        self,
        hold_id: str,
        lines: Sequence[Line],
        nanos: int,
        tokens: int,
        ttl_s: float,
    ) -> Refusal | None:
        self._down("reserve")
        return super().reserve(hold_id, lines, nanos, tokens, ttl_s)

    def settle(
        self, hold_id: str, keys: Sequence[str], nanos: int, tokens: int
    ) -> None:
        self._down("settle")
        super().settle(hold_id, keys, nanos, tokens)

    def balance(self, key: str) -> Balance | None:
        self._down("balance")
        return super().balance(key)


def _refusal(ledger: FailoverLedger, hold_id: str) -> str:
    with pytest.raises(StoreUnavailable) as caught:
        ledger.reserve(hold_id, [LINE], 10, 0, 60)
    return str(caught.value)


def test_a_refused_reserve_says_it_was_refused_and_what_failed_when() -> None:
    """The refusal names the reserve, not the settle that marked the store down.

    Skipped between probes it says since when and after which step the
    store is down; refused after writing a queued step failed, it says that.
    """
    store = StepStore()
    clock = Clock()
    ledger = FailoverLedger(store, mode="closed", probe_interval_s=1, clock=clock)
    assert ledger.reserve("h1", [LINE], 10, 0, 60) is None
    store.down = True
    ledger.settle("h1", ["team:x"], 5, 0)
    clock.now = 0.4
    assert _refusal(ledger, "h2").startswith(
        "reserve refused: the budget store has been unavailable since a settle "
        "failed 0.4 s ago (Timeout reading from 127.0.0.1:1); it is tried again "
        "at most once every 1 s, so this reserve did not try it. The policy fails "
        "closed, so the call was refused before it was sent."
    )
    clock.now = 1.5  # a probe is due: the queued settle is written first
    assert _refusal(ledger, "h3").startswith(
        "reserve refused: the budget store is unavailable (writing the settle "
        "queued while it was down failed just now: Timeout reading from "
        "127.0.0.1:1). "
    )
    clock.now = 2.0
    assert _refusal(ledger, "h4").startswith(
        "reserve refused: the budget store has been unavailable for 2.0 s; the "
        "last try, a settle 0.5 s ago, failed (Timeout reading from "
        "127.0.0.1:1); "
    )


def test_a_reserve_that_fails_itself_is_named_with_its_own_error() -> None:
    """A reserve that reached for the store and failed names its own failure."""
    store = StepStore()
    store.down = True
    ledger = FailoverLedger(store, mode="closed", probe_interval_s=1, clock=Clock())
    message = _refusal(ledger, "h1")
    assert message.startswith(
        "reserve refused: the budget store is unavailable (reserve failed: "
        "Timeout reading from 127.0.0.1:1). The policy fails closed"
    )
    assert "failure_mode='open'" in message


async def test_async_refusals_and_balance_reads_say_what_was_refused() -> None:
    """areserve words its refusal as reserve does; a balance read says its own."""
    store = StepStore()
    clock = Clock()
    ledger = FailoverLedger(store, mode="closed", probe_interval_s=1, clock=clock)
    store.down = True
    ledger.settle("h0", ["team:x"], 5, 0)
    clock.now = 0.3
    with pytest.raises(StoreUnavailable) as caught:
        await ledger.areserve("h1", [LINE], 10, 0, 60)
    assert str(caught.value).startswith(
        "reserve refused: the budget store has been unavailable since a settle "
        "failed 0.3 s ago"
    )
    with pytest.raises(StoreUnavailable) as caught:
        await ledger.abalance("team:x")
    message = str(caught.value)
    assert message.startswith("balance read refused: ")
    assert "so this balance read did not try it" in message
    assert "the budget left cannot be read" in message
    assert "the call was refused" not in message


def _redis_failover(
    server: OwnRedis, mode: Literal["closed", "open"]
) -> FailoverLedger:
    config = RedisConfig(
        url=server.url,
        attempts=2,
        retry_wait_s=0.01,
        socket_timeout_s=0.5,
        connect_timeout_s=0.5,
    )
    primary = RedisLedger(config)
    return FailoverLedger(primary, mode=mode, probe_interval_s=0)


def test_redis_killed_fail_closed_refuses_then_recovers(own_redis: OwnRedis) -> None:
    """Redis killed: fail_closed raises StoreUnavailable; restarted, it admits."""
    ledger = _redis_failover(own_redis, "closed")
    assert ledger.reserve("h1", [LINE], 10, 0, 60) is None
    own_redis.kill()
    with pytest.raises(StoreUnavailable):
        ledger.reserve("h2", [LINE], 10, 0, 60)
    own_redis.start()
    assert ledger.reserve("h3", [LINE], 10, 0, 60) is None


def test_redis_killed_fail_open_continues_and_reconciles(own_redis: OwnRedis) -> None:
    """With Redis killed, fail_open keeps admitting; its spend lands in Redis after."""
    ledger = _redis_failover(own_redis, "open")
    own_redis.kill()
    for index in range(3):
        assert ledger.reserve(f"h{index}", [LINE], 30, 0, 60) is None
        ledger.settle(f"h{index}", ["team:x"], 20, 0)
    own_redis.start()  # same port, empty: nothing persisted
    assert ledger.reserve("after", [LINE], 30, 0, 60) is None
    balance = RedisLedger(own_redis.url).balance("team:x")
    assert ledger.degraded is False
    assert balance is not None
    assert (balance.spent_nanos, balance.reserved_nanos) == (60, 30)


def test_paused_redis_counts_as_unavailable(own_redis: OwnRedis) -> None:
    """A Redis that stops answering (too slow) is treated like a dead one."""
    ledger = _redis_failover(own_redis, "closed")
    ledger.reserve("h1", [LINE], 10, 0, 60)
    own_redis.pause()
    try:
        with pytest.raises(StoreUnavailable):
            ledger.reserve("h2", [LINE], 10, 0, 60)
    finally:
        own_redis.resume()


def test_failing_open_does_not_advise_failing_open(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A real Redis outage in open mode logs what failed, not 'set ...open'."""
    from conftest import free_port
    from governor.stores import RedisConfig, RedisLedger

    config = RedisConfig(url=f"redis://127.0.0.1:{free_port()}/0", attempts=1)
    ledger = FailoverLedger(RedisLedger(config), mode="open", probe_interval_s=60)
    with caplog.at_level(logging.WARNING, logger="governor.stores._failover"):
        admitted = ledger.reserve("h1", [LINE], 10, 0, 60)
    (record,) = caplog.records
    message = record.getMessage()
    assert admitted is None
    assert "failing open until it answers: reserve failed:" in message
    assert "failure_mode='open'" not in message


def test_a_call_refused_for_an_unreachable_store_is_recorded(tmp_path: Any) -> None:
    """Reports count outage refusals, and the one-call task is closed."""
    from governor import Budget, Governor, Policy
    from governor._calls import CallRequest
    from governor.spend import JsonlSpendStore

    store = SwitchedStore()
    store.down = True
    ledger = FailoverLedger(store, mode="closed")
    path = tmp_path / "spend.jsonl"
    gov = Governor(Policy(budgets=[Budget(max_usd=1)]), ledger=ledger, spend=path)
    request = CallRequest(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}]
    )
    with pytest.raises(StoreUnavailable):
        gov.begin_call(request)
    gov.close(timeout_s=0.1)  # the hold's queued release cannot be written
    (record,) = JsonlSpendStore(path).query()
    assert (record.outcome, record.stop_reason) == ("refused", "store_unavailable")
    assert len(gov._open_tasks) == 0


class HungSettleStore(SwitchedStore):
    """A store whose settles hang, while ``hang``, until the test lets go."""

    def __init__(self) -> None:
        super().__init__()
        import threading

        self.hang = False
        self.entered = threading.Event()
        self.let_go = threading.Event()

    def settle(
        self, hold_id: str, keys: Sequence[str], nanos: int, tokens: int
    ) -> None:
        if self.hang:
            self.entered.set()
            self.let_go.wait(10)
        super().settle(hold_id, keys, nanos, tokens)


def test_a_caller_does_not_wait_on_another_threads_write_to_a_slow_store() -> None:
    """A queued settle that one thread is writing to a store that hangs does
    not hold up another thread's reserve: that one goes on with its own
    attempt (the docs bound its wait by its own attempts)."""
    import threading

    store = HungSettleStore()
    ledger = FailoverLedger(store, mode="closed", probe_interval_s=0)
    ledger.reserve("h1", [LINE], 60, 0, 60)
    store.down = True
    ledger.settle("h1", ["team:x"], 40, 0)  # fails at once: queued
    store.down, store.hang = False, True
    assert ledger.pending_settles == 1

    writer = threading.Thread(
        target=ledger.reserve, args=("h2", [LINE], 1, 0, 60), daemon=True
    )
    writer.start()
    assert store.entered.wait(5)  # the writer is stuck writing the queued settle

    outcome: list[object] = []
    caller = threading.Thread(
        target=lambda: outcome.append(ledger.reserve("h3", [LINE], 1, 0, 60)),
        daemon=True,
    )
    caller.start()
    caller.join(5)
    decided_while_hung = not caller.is_alive()
    store.let_go.set()
    writer.join(5)
    caller.join(5)
    assert (decided_while_hung, outcome) == (True, [None])
    assert _spent(store, "team:x") == 40


@pytest.mark.parametrize(
    ("governor_mode", "task_mode"), [("open", "closed"), ("closed", "open")]
)
def test_a_task_policy_asking_another_failure_mode_is_warned_of(
    governor_mode: Literal["open", "closed"],
    task_mode: Literal["open", "closed"],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Either way round, "closed" (the default) included: the task runs in
    the governor's mode and the warning says how to get the other."""
    gov = Governor(Policy(failure_mode=governor_mode))
    other = Policy(failure_mode=task_mode)
    same = Policy(name="same mode", failure_mode=governor_mode)
    with caplog.at_level(logging.WARNING, logger="governor._engine"):
        for policy in (other, same):
            with gov.task(policy=policy):
                pass
    warned = [
        r.getMessage() for r in caplog.records if "failure_mode" in r.getMessage()
    ]
    assert warned == [
        f"a task policy sets failure_mode={task_mode!r} but the governor's ledger "
        f"was built for {governor_mode!r}; failure_mode applies per Governor, so "
        "make a Governor with that policy instead"
    ]
    gov.close()
