"""Rolling windows in the in-memory ledger, as in the Redis store.

A rolling line keeps its spend in 60 sub-buckets of the window: a charge
counts for between ``window_s`` and ``window_s * 61/60`` seconds, never less,
so steady traffic under the limit is always admitted. Time moves by the
ledger's injected clock; the comparison with the Redis store sleeps a short
window instead (Redis keeps its own clock).
"""

from __future__ import annotations

import time

import litellm
import pytest

from governor import Budget, BudgetExceeded, ConfigError, Governor, Policy
from governor.adapters.litellm import GovernedLiteLLM
from governor.budgets import ROLLING_BUCKETS, RollingLine
from governor.stores import Line, MemoryLedger
from governor.stores._base import Balance
from governor.stores._redis import RedisLedger

pytest_plugins = ["_redis_fixtures"]

WINDOW_S = 60.0
BUCKET_S = WINDOW_S / ROLLING_BUCKETS
LONGEST_S = WINDOW_S * (ROLLING_BUCKETS + 1) / ROLLING_BUCKETS


class FakeClock:
    """A clock the test moves by hand."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def _line(limit_nanos: int | None = 100, ttl_s: float = 3600.0) -> Line:
    """A rolling line of WINDOW_S. It lives an hour after a change unless
    told otherwise, so that what leaves its window leaves by rolling off,
    not because the whole line expired."""
    return RollingLine("team:t#rolling:60s", limit_nanos, None, ttl_s, WINDOW_S)


def _charge(ledger: MemoryLedger, hold_id: str, nanos: int, tokens: int = 0) -> None:
    assert ledger.reserve(hold_id, [_line(None)], nanos, tokens, 600) is None
    ledger.settle(hold_id, [_line(None).key], nanos, tokens)


def _spent(ledger: MemoryLedger) -> int:
    balance = ledger.balance(_line().key)
    assert balance is not None
    return balance.spent_nanos


def test_steady_traffic_under_the_limit_is_always_admitted() -> None:
    """25 every 20 s under 100 per 60 s: at most 75 in any window plus a
    bucket, so every call fits, for ever (the old ledger refused from the
    fifth call on and kept refusing while calls kept coming). A plain line
    charged by the same calls keeps all of its spend."""
    clock = FakeClock(1000.123)
    ledger = MemoryLedger(clock=clock)
    line = _line(100)
    plain = Line("team:t", None, None, None)
    admitted = []
    for call in range(60):
        refusal = ledger.reserve(f"h{call}", [line, plain], 25, 0, 600)
        admitted.append(refusal is None)
        if refusal is None:
            ledger.settle(f"h{call}", [line.key, plain.key], 25, 0)
        clock.now += 20.0
    assert all(admitted), "".join("Y" if a else "n" for a in admitted)
    assert _spent(ledger) <= 100
    assert ledger.balance(plain.key) == Balance(plain.key, None, None, 1500, 0, 0, 0)


def test_steady_calls_through_the_governor_are_always_admitted() -> None:
    """The trial's traffic: 30 tokens a call, a call per 0.7 window, a limit
    of 150 tokens per window, on the default (memory) store."""
    clock = FakeClock()
    ledger = MemoryLedger(clock=clock)
    policy = Policy(
        budgets=[Budget(scope="team", max_tokens=150, period="rolling", window_s=2.0)]
    )
    gov = Governor(policy, ledger=ledger)

    def fake(**_: object) -> litellm.ModelResponse:
        return litellm.ModelResponse(
            model="gpt-4o-mini",
            choices=[
                {
                    "message": {"role": "assistant", "content": "hello"},
                    "finish_reason": "stop",
                    "index": 0,
                }
            ],
            usage={"prompt_tokens": 10, "completion_tokens": 20, "total_tokens": 30},
        )

    llm = GovernedLiteLLM(gov, completion=fake)
    answers = []
    try:
        for _ in range(20):
            try:
                with gov.task(team="t"):
                    llm.completion(
                        model="gpt-4o-mini",
                        messages=[{"role": "user", "content": "hi"}],
                        max_tokens=20,
                    )
                answers.append("Y")
            except BudgetExceeded:
                answers.append("n")
            clock.now += 1.4
    finally:
        gov.close()
    assert "".join(answers) == "Y" * 20


@pytest.mark.parametrize("start", [1000.0, 1000.5, 1000.999, 1234.5678, 7.25])
def test_a_charge_counts_at_least_the_window_and_at_most_61_60_of_it(
    start: float,
) -> None:
    """Never forgotten before window_s, always gone by window_s * 61/60."""
    clock = FakeClock(start)
    ledger = MemoryLedger(clock=clock)
    _charge(ledger, "h", 40)
    for after in (0.0, 1.0, WINDOW_S / 2, WINDOW_S - BUCKET_S, WINDOW_S - 1e-6):
        clock.now = start + after
        assert _spent(ledger) == 40, after
    clock.now = start + WINDOW_S
    assert _spent(ledger) == 40
    clock.now = start + LONGEST_S + 1e-6
    assert _spent(ledger) == 0


def test_spend_rolls_off_bucket_by_bucket() -> None:
    """Charges a few buckets apart leave one at a time, oldest first."""
    clock = FakeClock(3000.0)
    ledger = MemoryLedger(clock=clock)
    for step, nanos in enumerate((1, 10, 100)):
        clock.now = 3000.0 + 10.0 * step
        _charge(ledger, f"h{step}", nanos, tokens=nanos)
    for moment, spent in ((3030.0, 111), (3061.5, 110), (3071.5, 100), (3081.5, 0)):
        clock.now = moment
        balance = ledger.balance(_line().key)
        assert balance is not None
        assert (balance.spent_nanos, balance.spent_tokens) == (spent, spent)


def test_a_refused_budget_admits_again_once_its_spend_rolls_off() -> None:
    """A full window refuses, and admits once the spend has left it."""
    clock = FakeClock()
    ledger = MemoryLedger(clock=clock)
    line = _line(100)
    _charge(ledger, "h1", 100)
    assert ledger.reserve("h2", [line], 1, 0, 600) is not None
    clock.now += WINDOW_S - 1.0
    assert ledger.reserve("h3", [line], 1, 0, 600) is not None
    clock.now += 1.0 + BUCKET_S
    assert ledger.reserve("h4", [line], 100, 0, 600) is None


def test_holds_count_in_full_until_settled() -> None:
    """A hold never rolls off: it counts until settled, then as spend from
    the settle on, for a window."""
    clock = FakeClock()
    ledger = MemoryLedger(clock=clock)
    line = _line(100)
    assert ledger.reserve("long", [line], 80, 0, 10 * WINDOW_S) is None
    clock.now += 5 * WINDOW_S
    balance = ledger.balance(line.key)
    assert balance == Balance(line.key, 100, None, 0, 0, 80, 0)
    assert ledger.reserve("other", [line], 21, 0, 600) is not None
    ledger.settle("long", [line.key], 70, 0)
    assert ledger.balance(line.key) == Balance(line.key, 100, None, 70, 0, 0, 0)
    assert ledger.reserve("other2", [line], 31, 0, 600) is not None
    clock.now += WINDOW_S - 1.0
    assert _spent(ledger) == 70
    clock.now += 1.0 + BUCKET_S
    assert _spent(ledger) == 0
    # A hold not settled within its lease stops counting, as on plain lines.
    assert ledger.reserve("lapses", [line], 100, 0, 30) is None
    clock.now += 31.0
    assert ledger.reserve("after", [line], 100, 0, 30) is None


def test_balance_shows_the_spend_of_the_window_only() -> None:
    """balance() reports what the window holds, in dollars and tokens."""
    clock = FakeClock(500.0)
    ledger = MemoryLedger(clock=clock)
    _charge(ledger, "a", 5, tokens=50)
    clock.now = 530.0
    _charge(ledger, "b", 7, tokens=70)
    clock.now = 580.0
    assert ledger.reserve("c", [_line(None)], 3, 30, 600) is None
    assert ledger.balance(_line().key) == Balance(_line().key, None, None, 7, 70, 3, 30)


def test_reset_clears_the_windows_buckets() -> None:
    """After a reset, old buckets rolling off take nothing from new spend."""
    clock = FakeClock()
    ledger = MemoryLedger(clock=clock)
    _charge(ledger, "old", 60)
    ledger.reset(_line().key)
    assert _spent(ledger) == 0
    clock.now += 30.0
    _charge(ledger, "new", 10)
    clock.now += 40.0  # the old charge's bucket is gone, the new one is not
    assert _spent(ledger) == 10
    clock.now += 40.0
    assert _spent(ledger) == 0


def test_a_rolling_line_lives_61_60_of_its_window_after_its_last_change() -> None:
    """Gone (listed no more) a window and a bucket after its last change,
    even when the line brought a shorter ttl; kept while a hold is on it."""
    clock = FakeClock()
    ledger = MemoryLedger(clock=clock)
    short = RollingLine("team:s#rolling:60s", None, None, 5.0, WINDOW_S)
    assert ledger.reserve("h", [short], 1, 0, 600) is None
    clock.now += 300.0
    assert ledger.keys() == [short.key]  # held
    ledger.settle("h", [short.key], 1, 0)
    clock.now += WINDOW_S
    assert ledger.keys() == [short.key]
    assert ledger.balance(short.key) is not None
    clock.now += LONGEST_S - WINDOW_S + 1e-6
    assert ledger.balance(short.key) is None
    assert ledger.keys() == []


def test_spend_settled_on_a_vanished_line_rolls_once_reserved_again() -> None:
    """A settle after the hold lapsed and the line expired makes the line
    again with a day's lease; the next reserve restores the window and puts
    that spend in the current bucket, so it counts a window from then."""
    clock = FakeClock()
    ledger = MemoryLedger(clock=clock)
    line = _line(100, ttl_s=61.0)  # as the engine makes it
    assert ledger.reserve("late", [line], 50, 0, 10) is None
    clock.now += 200.0
    assert ledger.balance(line.key) is None  # lapsed, then expired
    ledger.settle("late", [line.key], 50, 0)
    clock.now += 3600.0
    assert _spent(ledger) == 50  # no window known: kept, on the safe side
    assert ledger.reserve("next", [line], 50, 0, 600) is None
    ledger.release("next")
    clock.now += WINDOW_S - 1.0
    assert _spent(ledger) == 50
    assert ledger.reserve("touch", [line], 0, 0, 600) is None  # keeps the line
    ledger.release("touch")
    clock.now += 1.0 + BUCKET_S
    assert _spent(ledger) == 0


def test_an_orphan_settle_lives_a_day_as_in_redis() -> None:
    """A line made by a settle with no line and no hold lives a day."""
    clock = FakeClock()
    ledger = MemoryLedger(clock=clock)
    ledger.settle("never-held", ["team:o"], 5, 0)
    clock.now += 86399.0
    assert ledger.keys() == ["team:o"]
    clock.now += 2.0
    assert ledger.keys() == []


@pytest.mark.parametrize("window_s", [0.0, -1.0, float("nan"), float("inf")])
def test_a_rolling_line_without_a_usable_window_is_refused(window_s: float) -> None:
    """window_s must be a positive number of seconds."""
    line = RollingLine("team:w#rolling:x", None, None, 60.0, window_s)
    with pytest.raises(ConfigError, match="window_s > 0"):
        MemoryLedger().reserve("h", [line], 1, 0, 60)


def _state(ledger: MemoryLedger | RedisLedger, key: str) -> tuple[int, ...]:
    balance = ledger.balance(key)
    assert balance is not None
    return (
        balance.spent_nanos,
        balance.spent_tokens,
        balance.reserved_nanos,
        balance.reserved_tokens,
    )


def test_the_memory_and_redis_stores_agree_on_a_rolling_window(
    redis_ledger: RedisLedger,
) -> None:
    """One script on both stores, read well clear of bucket edges (a bucket is
    1/30 s here): the same admissions and the same balances."""
    window_s = 2.0
    line = RollingLine("team:r#rolling:2s", 100, 1000, 3.0, window_s)
    memory = MemoryLedger()
    start = time.monotonic()

    def at(moment: float) -> None:
        time.sleep(max(0.0, start + moment - time.monotonic()))

    seen: dict[str, list[object]] = {"memory": [], "redis": []}

    def step(name: str, ledger: MemoryLedger | RedisLedger, action: str) -> None:
        out = seen[name]
        if action == "a":  # 60 spent at 0 s
            out.append(ledger.reserve("a", [line], 60, 600, 30) is None)
            ledger.settle("a", [line.key], 60, 600)
        elif action == "b":  # 30 held at 0.6 s, settled later
            out.append(ledger.reserve("b", [line], 30, 300, 30) is None)
        elif action == "c":  # refused: 60 + 30 held + 20 > 100
            out.append(ledger.reserve("c", [line], 20, 0, 30) is None)
        elif action == "settle-b":
            ledger.settle("b", [line.key], 25, 250)
        elif action == "d":  # admitted once a's spend rolled off
            out.append(ledger.reserve("d", [line], 70, 0, 30) is None)
            ledger.release("d")
        out.append(_state(ledger, line.key))

    script = [
        (0.0, "a"),
        (0.6, "b"),
        (1.0, "c"),
        (1.3, "settle-b"),
        (1.6, "c"),
        (2.4, "d"),  # a (0 s) is gone by 2.034 s; b (1.3 s) counts
        (3.5, "d"),  # b is gone by 3.334 s
    ]
    for moment, action in script:
        at(moment)
        step("memory", memory, action)
        step("redis", redis_ledger, action)
    assert seen["memory"] == seen["redis"]
    assert seen["memory"][-4:] == [True, (25, 250, 0, 0), True, (0, 0, 0, 0)]
