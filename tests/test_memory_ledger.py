"""The in-memory ledger: atomic reserve over lines, settle, release, leases."""

from __future__ import annotations

import threading

import pytest

from governor import ConfigError
from governor.stores import Line, MemoryLedger


class FakeClock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_reserve_refuses_on_every_line_when_one_lacks_room() -> None:
    """A refusal on one line leaves no hold on the others."""
    ledger = MemoryLedger()
    lines = [Line("task:a", 100, None), Line("team:x", 50, None)]
    refusal = ledger.reserve("h1", lines, 60, 0, 10)
    assert refusal is not None
    assert (refusal.unit, refusal.balance.key) == ("usd", "team:x")
    task = ledger.balance("task:a")
    assert task is not None
    assert task.reserved_nanos == 0


def test_token_limit_refuses_with_tokens_unit() -> None:
    """A line limited in tokens refuses in tokens."""
    ledger = MemoryLedger()
    refusal = ledger.reserve("h", [Line("task:a", None, 10)], 0, 11, 10)
    assert refusal is not None
    assert refusal.unit == "tokens"


def test_settle_replaces_hold_by_actual_spend() -> None:
    """Settling charges the actual amount and frees the rest of the hold."""
    ledger = MemoryLedger()
    lines = [Line("task:a", 100, 1000)]
    assert ledger.reserve("h", lines, 80, 500, 10) is None
    ledger.settle("h", ["task:a"], 30, 200)
    balance = ledger.balance("task:a")
    assert balance is not None
    assert (balance.spent_nanos, balance.reserved_nanos) == (30, 0)
    assert (balance.spent_tokens, balance.left_tokens) == (200, 800)


def test_settle_is_idempotent_per_hold() -> None:
    """A retried settle with the same hold id counts once."""
    ledger = MemoryLedger()
    ledger.reserve("h", [Line("task:a", 100)], 50, 0, 10)
    ledger.settle("h", ["task:a"], 40, 0)
    ledger.settle("h", ["task:a"], 40, 0)
    balance = ledger.balance("task:a")
    assert balance is not None
    assert balance.spent_nanos == 40


def test_release_frees_without_spend() -> None:
    """Releasing a hold returns its room and charges nothing."""
    ledger = MemoryLedger()
    ledger.reserve("h", [Line("task:a", 100)], 100, 0, 10)
    ledger.release("h")
    balance = ledger.balance("task:a")
    assert balance is not None
    assert (balance.spent_nanos, balance.reserved_nanos, balance.left_nanos) == (
        0,
        0,
        100,
    )


def test_expired_hold_returns_its_room() -> None:
    """A hold past its lease no longer blocks other reservations."""
    clock = FakeClock()
    ledger = MemoryLedger(clock=clock)
    line = [Line("task:a", 100)]
    assert ledger.reserve("h1", line, 100, 0, 5) is None
    assert ledger.reserve("h2", line, 1, 0, 5) is not None
    clock.now = 6.0
    assert ledger.reserve("h2", line, 100, 0, 5) is None


def test_late_settle_after_expiry_still_charges() -> None:
    """Spend that really happened is recorded even when its hold expired."""
    clock = FakeClock()
    ledger = MemoryLedger(clock=clock)
    ledger.reserve("h1", [Line("task:a", 100)], 100, 0, 5)
    clock.now = 6.0
    ledger.settle("h1", ["task:a"], 70, 0)
    balance = ledger.balance("task:a")
    assert balance is not None
    assert (balance.spent_nanos, balance.reserved_nanos) == (70, 0)


def test_threads_never_overspend() -> None:
    """Concurrent reserve-and-settle from threads admits exactly what fits."""
    ledger = MemoryLedger()
    line = [Line("task:a", 1000)]
    admitted: list[int] = []
    lock = threading.Lock()

    def worker(n: int) -> None:
        for i in range(25):
            hold = f"{n}-{i}"
            if ledger.reserve(hold, line, 30, 0, 10) is None:
                ledger.settle(hold, ["task:a"], 30, 0)
                with lock:
                    admitted.append(1)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    balance = ledger.balance("task:a")
    assert balance is not None
    assert len(admitted) == 33
    assert balance.spent_nanos == 990


def test_retried_reserve_holds_once() -> None:
    """A reserve repeated with the same hold id does not hold twice."""
    ledger = MemoryLedger()
    line = [Line("task:a", 100)]
    assert ledger.reserve("h", line, 60, 0, 10) is None
    assert ledger.reserve("h", line, 60, 0, 10) is None
    balance = ledger.balance("task:a")
    assert balance is not None
    assert balance.reserved_nanos == 60


def test_renew_extends_a_lease() -> None:
    """A renewed hold outlives its first deadline."""
    clock = FakeClock()
    ledger = MemoryLedger(clock=clock)
    line = [Line("task:a", 100)]
    ledger.reserve("h", line, 100, 0, 5)
    clock.now = 4.0
    assert ledger.renew("h", 5) is True
    clock.now = 8.0
    assert ledger.reserve("other", line, 1, 0, 5) is not None
    assert ledger.renew("missing", 5) is False


def test_a_line_expires_its_ttl_after_its_last_change() -> None:
    """As a Redis key would: gone ttl_s after the last settle, not before."""
    clock = FakeClock()
    ledger = MemoryLedger(clock=clock)
    line = Line("task:a", 1000, None, ttl_s=100)
    ledger.reserve("h1", [line], 10, 0, 30)
    ledger.settle("h1", ["task:a"], 7, 0)
    clock.now = 99.0
    alive = ledger.balance("task:a")
    clock.now = 100.0
    assert (alive is not None, alive.spent_nanos if alive else None) == (True, 7)
    assert (ledger.balance("task:a"), ledger.keys()) == (None, [])


def test_a_held_line_outlives_its_ttl_until_settled() -> None:
    """A call running past the line's lifetime keeps the line and its spend."""
    clock = FakeClock()
    ledger = MemoryLedger(clock=clock)
    ledger.reserve("h1", [Line("day:x", 1000, None, ttl_s=10)], 50, 0, 600)
    clock.now = 300.0
    held = ledger.balance("day:x")
    ledger.settle("h1", ["day:x"], 40, 0)
    clock.now = 309.0
    settled = ledger.balance("day:x")
    assert (held.reserved_nanos if held else None) == 50
    assert (settled.spent_nanos if settled else None) == 40


def test_an_expired_line_starts_again_from_zero() -> None:
    """A reserve after the lifetime meets an empty line, not the old spend."""
    clock = FakeClock()
    ledger = MemoryLedger(clock=clock)
    line = Line("team:x", 100, None, ttl_s=10)
    ledger.reserve("h1", [line], 90, 0, 5)
    ledger.settle("h1", ["team:x"], 90, 0)
    refused = ledger.reserve("h2", [line], 20, 0, 5)
    clock.now = 11.0
    admitted = ledger.reserve("h3", [line], 20, 0, 5)
    assert (refused is not None, admitted) == (True, None)


def test_lines_without_a_ttl_never_expire() -> None:
    """A line built without ttl_s stays (the sweep leaves it alone)."""
    clock = FakeClock()
    ledger = MemoryLedger(clock=clock)
    ledger.reserve("h1", [Line("team:x", None, None)], 1, 0, 5)
    ledger.settle("h1", ["team:x"], 1, 0)
    clock.now = 10**9
    assert ledger.keys() == ["team:x"]


@pytest.mark.parametrize(("nanos", "tokens"), [(-1, 0), (0, -5)])
def test_negative_amounts_are_refused_as_in_redis(nanos: int, tokens: int) -> None:
    """A negative hold would hand room back: refused, and nothing changes."""
    ledger = MemoryLedger()
    line = Line("team:a", limit_nanos=100, limit_tokens=None)
    with pytest.raises(ConfigError, match="at least 0"):
        ledger.reserve("h1", [line], nanos, tokens, 60)
    assert ledger.reserve("h2", [line], 10, 0, 60) is None
    with pytest.raises(ConfigError, match="at least 0"):
        ledger.settle("h2", ["team:a"], nanos, tokens)
    balance = ledger.balance("team:a")
    assert balance is not None
    assert (balance.spent_nanos, balance.reserved_nanos) == (0, 10)


async def test_async_keys_reset_and_close_match_the_redis_ledgers() -> None:
    """The async admin methods exist, as on RedisLedger, and do the same."""
    ledger = MemoryLedger()
    lines = [Line("team:x", 1_000, None), Line("task:a", None, 500)]
    assert await ledger.areserve("h1", lines, 300, 40, 10) is None
    await ledger.asettle("h1", ["team:x", "task:a"], 250, 30)

    assert await ledger.akeys() == ["task:a", "team:x"]
    await ledger.areset("team:x")
    team = await ledger.abalance("team:x")
    task = await ledger.abalance("task:a")
    assert team is not None
    assert task is not None
    assert (team.spent_nanos, task.spent_tokens) == (0, 30)

    assert ledger.ping() is True
    ledger.close()
    await ledger.aclose()
    assert ledger.balance("task:a") == task
