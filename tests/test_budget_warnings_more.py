"""Budget warnings in tokens and again after spend goes; refusals that tell
waiting from spent budgets; what is left never below zero."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest

from conftest import SpanCapture
from governor import Attribution, Budget, BudgetExceeded, Governor, Policy
from governor._calls import CallRequest, CallResult
from governor.cli._budget import _table, describe
from governor.policies import Price, Pricing
from governor.pricing import Usage
from governor.stores import Balance, Line, MemoryLedger
from governor.stores._redis import RedisLedger
from governor.telemetry import attributes as attr

pytest_plugins = ["_redis_fixtures"]

# $1 per million input tokens, $2 per million output tokens.
PRICING = Pricing(
    overrides={
        "m1": Price(
            input_usd_per_mtok="1",
            output_usd_per_mtok="2",
            max_output_tokens=1000,
            max_input_tokens=100_000,
        )
    }
)


def _policy(*budgets: Budget, **scopes: str) -> Policy:
    return Policy(
        pricing=PRICING, budgets=list(budgets), attribution=Attribution(**scopes)
    )


def _request(prompt: int, output: int) -> CallRequest:
    return CallRequest(
        model="m1",
        messages=[{"role": "user", "content": "x"}],
        max_output_tokens=max(output, 1),
        prompt_tokens=prompt,
    )


def _call(gov: Governor, prompt: int = 100, output: int = 50) -> None:
    """One call settled at its usage: $0.0002 for the default 150 tokens."""
    admission = gov.begin_call(_request(prompt, output))
    usage = Usage(prompt_tokens=prompt, completion_tokens=output)
    gov.end_call(admission, CallResult(usage=usage))


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "has used" in r.getMessage()]


class CountingLedger(MemoryLedger):
    """A memory ledger counting the balance reads of each line."""

    def __init__(self) -> None:
        super().__init__()
        self.reads: dict[str, int] = {}

    def balance(self, key: str) -> Balance | None:
        self.reads[key] = self.reads.get(key, 0) + 1
        return super().balance(key)


@pytest.fixture
def no_rare_reads(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every settle reads its lines (no waiting a second between reads)."""
    from governor import _engine

    monkeypatch.setattr(_engine, "_WARN_EVERY_S", 0.0)


# -- B1: token limits warn -------------------------------------------------


def test_a_token_only_budget_warns_at_each_threshold(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """150 tokens a call against 1000: 50% is passed at 600, 80% at 900."""
    budget = Budget(scope="user", max_tokens=1000, warn_at=(0.5, 0.8))
    gov = Governor(_policy(budget, user="u1"))
    with caplog.at_level(logging.WARNING, logger="governor"), gov.task():
        for _ in range(6):
            _call(gov)
    assert _warnings(caplog) == [
        "budget user:u1 has used 60% of its token limit (600 of 1000 tokens, "
        "past its warn_at 50%)",
        "budget user:u1 has used 90% of its token limit (900 of 1000 tokens, "
        "past its warn_at 80%)",
    ]


def test_each_unit_of_a_two_unit_budget_warns_once(
    caplog: pytest.LogCaptureFixture, capture: SpanCapture
) -> None:
    """The token side warns though dollars are far from their limit; the
    dollar side warns on its own; span events carry the unit."""
    budget = Budget(scope="org", max_usd="0.001", max_tokens=1000, warn_at=(0.5,))
    gov = Governor(_policy(budget, org="o1"), tracer_provider=capture.provider)
    with caplog.at_level(logging.WARNING, logger="governor"), gov.task():
        for _ in range(4):  # $0.0002 and 150 tokens each
            _call(gov)
    assert _warnings(caplog) == [
        "budget org:o1 has used 60% of its limit (past its warn_at 50%)",
        "budget org:o1 has used 60% of its token limit (600 of 1000 tokens, "
        "past its warn_at 50%)",
    ]
    events = [
        dict(e.attributes or {})
        for e in capture.task().events
        if e.name == attr.EVENT_WARNING
    ]
    assert events == [
        {"scope": "org:o1", "unit": "usd", "fraction": 0.5},
        {"scope": "org:o1", "unit": "tokens", "fraction": 0.5},
    ]


def test_async_calls_warn_of_token_limits_too(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """aend_call reads the balance by the async step, with the same warning."""
    budget = Budget(scope="user", max_tokens=1000, warn_at=(0.5,))
    gov = Governor(_policy(budget, user="u1"))

    async def calls() -> None:
        async with gov.atask():
            for _ in range(4):
                admission = await gov.abegin_call(_request(100, 50))
                usage = Usage(prompt_tokens=100, completion_tokens=50)
                await gov.aend_call(admission, CallResult(usage=usage))

    with caplog.at_level(logging.WARNING, logger="governor"):
        asyncio.run(calls())
    assert _warnings(caplog) == [
        "budget user:u1 has used 60% of its token limit (600 of 1000 tokens, "
        "past its warn_at 50%)"
    ]


def test_token_lines_are_read_rarely_but_a_crossing_at_once(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Below its thresholds a token line is read once however many calls
    settle within the read interval; the call whose tokens may cross a
    threshold reads it and warns at once."""
    from governor import _engine

    monkeypatch.setattr(_engine, "_WARN_EVERY_S", 3600.0)
    ledger = CountingLedger()
    budget = Budget(scope="user", max_tokens=1000, warn_at=(0.5,))
    gov = Governor(_policy(budget, user="u1"), ledger=ledger)
    with caplog.at_level(logging.WARNING, logger="governor"), gov.task():
        for _ in range(3):  # 150, 300, 450 tokens
            _call(gov)
        assert (ledger.reads.get("user:u1"), _warnings(caplog)) == (1, [])
        _call(gov)  # 600
        assert ledger.reads["user:u1"] == 2
        assert len(_warnings(caplog)) == 1
        _call(gov)  # 750: announced already, no read due
        assert ledger.reads["user:u1"] == 2
    assert len(_warnings(caplog)) == 1


# -- B1b: thresholds armed again once spend goes ---------------------------


def test_a_reset_line_warns_again_when_it_crosses_again(
    caplog: pytest.LogCaptureFixture, no_rare_reads: None
) -> None:
    """After a reset the line's 50% is announced again when crossed again;
    without a drop in spend it is said once however often it is read."""
    ledger = MemoryLedger()
    budget = Budget(scope="team", max_usd="0.001", max_tokens=1000, warn_at=(0.5,))
    gov = Governor(_policy(budget, team="t1"), ledger=ledger)
    with caplog.at_level(logging.WARNING, logger="governor"), gov.task():
        _call(gov, output=250)  # $0.0006, 350 tokens
        _call(gov, output=0)  # $0.0007, 450 tokens: no new warning
        ledger.reset("team:t1")
        _call(gov, output=50)  # $0.0002 since the reset: armed again
        _call(gov, output=250)  # $0.0008, 500 tokens
    assert _warnings(caplog) == [
        "budget team:t1 has used 60% of its limit (past its warn_at 50%)",
        "budget team:t1 has used 80% of its limit (past its warn_at 50%)",
        "budget team:t1 has used 50% of its token limit (500 of 1000 tokens, "
        "past its warn_at 50%)",
    ]


def test_a_rolling_budget_warns_again_after_its_spend_rolls_off(
    caplog: pytest.LogCaptureFixture,
    redis_url: str,
    redis_prefix: str,
    no_rare_reads: None,
) -> None:
    """Each time the window's spend climbs past 50% again, it is announced."""
    ledger = RedisLedger(redis_url, prefix=redis_prefix)
    budget = Budget(
        scope="user", max_usd="0.001", period="rolling", window_s=1, warn_at=(0.5,)
    )
    gov = Governor(_policy(budget, user="r"), ledger=ledger)
    try:
        with caplog.at_level(logging.WARNING, logger="governor"):
            for _ in range(2):
                with gov.task():
                    _call(gov, output=250)  # $0.0006: 60%
                time.sleep(1.2)  # the spend rolls off
    finally:
        ledger.close()
    line = "budget user:r#rolling:1s has used 60% of its limit (past its warn_at 50%)"
    assert _warnings(caplog) == [line, line]


# -- B3: in_flight_only only when every line would fit ----------------------


@pytest.fixture(params=["memory", "redis"])
def ledger(request: pytest.FixtureRequest) -> Iterator[Any]:
    if request.param == "memory":
        yield MemoryLedger()
        return
    url = request.getfixturevalue("redis_url")
    prefix = request.getfixturevalue("redis_prefix")
    redis_ledger = RedisLedger(url, prefix=prefix)
    yield redis_ledger
    redis_ledger.close()


def test_a_spent_budget_is_named_before_one_held_by_calls_in_flight(
    ledger: Any,
) -> None:
    """The task line lacks room only for what a call in flight holds, the
    team line for its spend: the refusal is the team's, and waiting will not
    cure it (in_flight_only is False, and stays so for the retry)."""
    policy = _policy(
        Budget(max_usd="0.0004"),
        Budget(scope="team", max_usd="0.0005", period="day"),
        team="t",
    )
    gov = Governor(policy, ledger=ledger)
    with gov.task():
        _call(gov, output=100)  # $0.0003 of the team's day
    with gov.task():
        held = gov.begin_call(_request(50, 50))  # holds $0.00015
        with pytest.raises(BudgetExceeded) as first:
            _call(gov, output=100)  # needs $0.0003
        gov.end_call(held, CallResult(usage=Usage(prompt_tokens=1)))
        with pytest.raises(BudgetExceeded) as retry:
            _call(gov, output=100)
    for error in (first.value, retry.value):
        assert error.scope.startswith("team:t#day:")
        assert (error.in_flight_only, error.to_dict()["in_flight_only"]) == (
            False,
            False,
        )


def test_a_refusal_held_on_every_line_is_in_flight_only(ledger: Any) -> None:
    """Both lines would fit once the call in flight settles: in_flight_only."""
    policy = _policy(
        Budget(max_usd="0.0004"),
        Budget(scope="team", max_usd="0.0005", period="day"),
        team="t",
    )
    gov = Governor(policy, ledger=ledger)
    with gov.task():
        held = gov.begin_call(_request(100, 100))  # holds $0.0003
        with pytest.raises(BudgetExceeded) as info:
            _call(gov, output=100)
        gov.end_call(held, CallResult(usage=Usage(prompt_tokens=1)))
        _call(gov, output=100)  # the retry passes
    assert info.value.scope.startswith("task:")
    assert info.value.in_flight_only is True


def test_a_unit_short_by_spend_is_named_before_one_short_by_holds(
    ledger: Any,
) -> None:
    """Dollars lack room only for a hold, tokens for their spend."""
    line = Line("team:x", limit_nanos=1000, limit_tokens=100)
    assert ledger.reserve("spend", [line], 0, 90, 60) is None
    ledger.settle("spend", [line.key], 0, 90)
    assert ledger.reserve("held", [line], 900, 0, 60) is None
    refusal = ledger.reserve("next", [line], 200, 20, 60)
    assert refusal is not None
    assert (refusal.unit, refusal.balance.spent_tokens) == ("tokens", 90)
    refusal = ledger.reserve("small", [line], 200, 5, 60)  # tokens fit
    assert refusal is not None
    assert refusal.unit == "usd"


# -- B4: left never below zero ---------------------------------------------


def test_an_overrun_budget_says_nothing_is_left_and_by_how_much_it_is_over() -> None:
    """A provider that ignored max_tokens took the task past its limit."""
    gov = Governor(_policy(Budget(max_usd="0.01")))
    with gov.task() as task:
        admission = gov.begin_call(_request(10, 10))
        usage = Usage(prompt_tokens=10, completion_tokens=50_000)
        gov.end_call(admission, CallResult(usage=usage))
        with pytest.raises(BudgetExceeded) as info:
            _call(gov, prompt=1, output=1)
        assert task.report().budget_left_usd == 0
    message = str(info.value)
    assert (
        "nothing left of 0.01 (spent 0.10001, over its limit by 0.09001). " in message
    )
    assert "-0.0" not in message
    assert info.value.in_flight_only is False


def test_a_refusal_message_keeps_held_room_and_never_a_negative_left() -> None:
    """Spend within the limit but holds past it: nothing left, no overrun."""
    error = BudgetExceeded(
        scope="team:a",
        unit="tokens",
        limit=Decimal(100),
        spent=Decimal(90),
        reserved=Decimal(20),
        requested=Decimal(5),
        model="m1",
    )
    assert "5 tokens (the most it can cost), nothing left of 100 (spent 90, " in str(
        error
    )
    assert error.in_flight_only is True


def test_status_gives_left_0_and_the_overrun_of_a_line_past_its_limit() -> None:
    """left_* never below 0; over_* only on a line spent past its limit."""
    over = Balance("team:a", 10_000_000, 5000, 19_905_000, 9995, 0, 0)
    row = describe("team:a", over)
    assert (row["left_usd"], row["over_usd"]) == ("0", "0.009905")
    assert (row["left_tokens"], row["over_tokens"]) == (0, 4995)
    within = describe("team:b", Balance("team:b", 10_000_000, None, 5, 7, 0, 0))
    assert (within["left_usd"], within["left_tokens"]) == ("0.009999995", None)
    assert "over_usd" not in within
    assert "over_tokens" not in within
    table = _table([row, within])
    assert "$0.019905 / 9995 tok (over by $0.009905 / 4995 tok)" in table
    assert "over by" not in table.splitlines()[2]


def test_a_warning_is_not_repeated_when_another_thread_read_the_call_first(
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
    no_rare_reads: None,
) -> None:
    """Thread A settles past 80%; thread B settles, reads and announces 80%
    before A's own check runs. A's read holds its spend already: no drop in
    spend, so 80% is not armed again and said twice."""
    import threading

    budget = Budget(scope="team", max_usd="0.001", warn_at=(0.8,))
    gov = Governor(_policy(budget, team="t"))
    _call(gov, prompt=500, output=0)  # 50%
    b_done = threading.Event()
    check = Governor._check_warnings

    def ordered(self: Governor, *args: Any) -> None:
        if threading.current_thread().name == "A":
            b_done.wait(5)
        check(self, *args)
        if threading.current_thread().name == "B":
            b_done.set()

    monkeypatch.setattr(Governor, "_check_warnings", ordered)
    a = threading.Thread(target=_call, args=(gov, 350, 0), name="A")  # to 85%
    with caplog.at_level(logging.WARNING, logger="governor"):
        a.start()
        time.sleep(0.2)  # A has settled and waits before its check
        b = threading.Thread(target=_call, args=(gov, 10, 0), name="B")  # 86%
        b.start()
        b.join()
        a.join()

    assert _warnings(caplog) == [
        "budget team:t has used 86% of its limit (past its warn_at 80%)"
    ]
