"""A call that runs longer than its lease keeps its hold and its slots."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from governor import (
    Budget,
    BudgetExceeded,
    Fanout,
    Governor,
    Policy,
    SlotUnavailable,
)
from governor._calls import Admission, CallRequest, CallResult
from governor.pricing import Usage
from governor.stores._redis import RedisLedger

pytest_plugins = ["_redis_fixtures"]

MESSAGES = [{"role": "user", "content": "Summarise the quarterly report."}]
TTL_S = 1.0
# Long enough for an unrenewed hold to expire twice over.
CALL_S = 3 * TTL_S


def request() -> CallRequest:
    return CallRequest(model="gpt-4o-mini", messages=MESSAGES, max_output_tokens=500)


def one_hold_budget(gov: Governor) -> Policy:
    """A team budget with room for one call's hold, not two."""
    probe = gov.begin_call(request())
    hold = probe.hold_nanos
    gov.end_call(probe, CallResult())
    return Policy(
        budgets=[Budget(scope="team", max_usd=hold * 1.5 / 1e9)],
        hold_ttl_s=TTL_S,
    )


@pytest.fixture
def gov() -> Iterator[Governor]:
    governor = Governor(Policy(hold_ttl_s=TTL_S))
    yield governor
    governor.close()


def assert_long_call_keeps_its_room(gov: Governor, policy: Policy) -> Admission:
    """Run one call past its lease; a second call must still find no room."""
    with gov.task(policy=policy, team="search"):
        long_call = gov.begin_call(request())
        time.sleep(CALL_S)
    with gov.task(policy=policy, team="search"), pytest.raises(BudgetExceeded):
        gov.begin_call(request())
    return long_call


def test_a_long_call_keeps_its_hold_past_the_lease(gov: Governor) -> None:
    """Without renewal the first hold expires and a second call gets its room."""
    long_call = assert_long_call_keeps_its_room(gov, one_hold_budget(gov))
    gov.end_call(long_call, CallResult(usage=Usage(prompt_tokens=10)))


def test_a_settled_call_is_no_longer_renewed(gov: Governor) -> None:
    """Once settled, the room comes back at once and stays back."""
    policy = one_hold_budget(gov)
    with gov.task(policy=policy, team="search"):
        gov.end_call(gov.begin_call(request()), CallResult())
        time.sleep(TTL_S)
        second = gov.begin_call(request())
    gov.end_call(second, CallResult())


def test_a_long_call_keeps_its_redis_hold_and_fanout_slot(
    redis_ledger: RedisLedger,
) -> None:
    """Across processes both are Redis leases; both are renewed."""
    policy = Policy(
        fanout=Fanout(scope_caps={"team": 1}, on_cap="refuse"),
        hold_ttl_s=TTL_S,
    )
    gov = Governor(policy, ledger=redis_ledger)
    with gov.task(team="search"):
        long_call = gov.begin_call(request())
        time.sleep(CALL_S)
    with gov.task(team="search"), pytest.raises(SlotUnavailable):
        gov.begin_call(request())
    gov.end_call(long_call, CallResult())
    with gov.task(team="search"):
        gov.end_call(gov.begin_call(request()), CallResult())


def test_a_short_lease_added_while_the_keeper_sleeps_is_renewed_in_time() -> None:
    """The keeper wakes early for a call whose lease is shorter than its wait."""
    gov = Governor(Policy(hold_ttl_s=600))
    with gov.task():
        slow = gov.begin_call(request())  # the keeper now sleeps ~200 s
    long_call = assert_long_call_keeps_its_room(gov, one_hold_budget(gov))
    gov.end_call(long_call, CallResult())
    gov.end_call(slow, CallResult())
