"""What a budget refusal tells a web service: room left, when held room
comes back and when a calendar window resets (``to_dict()`` carries each)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from governor import Attribution, Budget, BudgetExceeded, Governor, Policy
from governor._calls import CallRequest, CallResult
from governor.policies import Price, Pricing
from governor.pricing import Usage
from governor.stores import MemoryLedger
from governor.stores._redis import RedisLedger

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
HOLD_TTL_S = 40


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


def _governor(ledger: Any, *budgets: Budget) -> Governor:
    policy = Policy(
        pricing=PRICING,
        budgets=list(budgets),
        attribution=Attribution(team="t"),
        hold_ttl_s=HOLD_TTL_S,
    )
    return Governor(policy, ledger=ledger)


def _request(prompt: int, output: int) -> CallRequest:
    return CallRequest(
        model="m1",
        messages=[{"role": "user", "content": "x"}],
        max_output_tokens=output,
        prompt_tokens=prompt,
    )


def _call(gov: Governor, prompt: int, output: int) -> None:
    admission = gov.begin_call(_request(prompt, output))
    usage = Usage(prompt_tokens=prompt, completion_tokens=output)
    gov.end_call(admission, CallResult(usage=usage))


def test_a_spent_calendar_budget_says_when_it_resets(ledger: Any) -> None:
    """A day budget in Paris time resets at the next Paris midnight."""
    paris = ZoneInfo("Europe/Paris")
    gov = _governor(
        ledger,
        Budget(scope="team", max_usd="0.0005", period="day", timezone="Europe/Paris"),
    )
    before = datetime.now(paris)
    with gov.task():
        _call(gov, 100, 100)  # $0.0003
        with pytest.raises(BudgetExceeded) as refused:
            _call(gov, 100, 100)
    error = refused.value
    assert error.resets_at is not None
    local = error.resets_at.astimezone(paris)
    assert (local.hour, local.minute, local.second) == (0, 0, 0)
    assert 0 < (local - before).total_seconds() <= 25 * 3600
    assert error.to_dict()["resets_at"] == error.resets_at.isoformat()
    assert (error.left, error.to_dict()["left"]) == (Decimal("0.0002"), "0.0002")
    assert (error.in_flight_only, error.holds_lapse_s) == (False, None)


def test_a_refusal_for_held_room_says_when_the_holds_lapse(ledger: Any) -> None:
    """Room held by a call in flight: in_flight_only, and holds_lapse_s is
    at most the policy's hold_ttl_s; a total budget has no reset."""
    gov = _governor(ledger, Budget(scope="team", max_usd="0.0005"))
    with gov.task():
        held = gov.begin_call(_request(100, 100))  # holds $0.0003
        with pytest.raises(BudgetExceeded) as refused:
            _call(gov, 100, 100)
        gov.end_call(held, CallResult(usage=Usage(prompt_tokens=1)))
    error = refused.value
    assert error.in_flight_only is True
    assert error.holds_lapse_s is not None
    assert 0 < error.holds_lapse_s <= HOLD_TTL_S
    fields = error.to_dict()
    assert (fields["holds_lapse_s"], fields["resets_at"]) == (
        error.holds_lapse_s,
        None,
    )
    assert fields["left"] == "0.0002"


def test_left_is_never_below_zero_when_spend_passed_the_limit() -> None:
    """A provider that ignored max_tokens put spend over the limit."""
    gov = _governor(MemoryLedger(), Budget(scope="team", max_usd="0.0002"))
    with gov.task():
        admission = gov.begin_call(_request(10, 50))
        gov.end_call(
            admission,
            CallResult(usage=Usage(prompt_tokens=10, completion_tokens=500)),
        )
        with pytest.raises(BudgetExceeded) as refused:
            _call(gov, 10, 10)
    assert refused.value.spent > refused.value.limit
    assert (refused.value.left, refused.value.to_dict()["left"]) == (Decimal(0), "0")
