"""The governor over a real Redis ledger: shared budgets and failure modes."""

from __future__ import annotations

import pytest

from conftest import MOCK_COST, SpanCapture
from governor import Budget, BudgetExceeded, Governor, Policy, StoreUnavailable
from governor.adapters.litellm import GovernedLiteLLM
from governor.stores import FailoverLedger, RedisConfig, RedisLedger

MESSAGES = [{"role": "user", "content": "What is the capital of Peru?"}]


def call(gov: Governor) -> None:
    GovernedLiteLLM(gov).completion(
        model="gpt-4o-mini", messages=MESSAGES, mock_response="Lima", max_tokens=20
    )


def test_two_governors_share_one_team_budget(redis_url: str, redis_prefix: str) -> None:
    """Two governors (as two workers would) draw on one Redis team budget."""
    policy = Policy(budgets=[Budget(scope="team", max_usd="0.00005")])
    workers = [
        Governor(policy, ledger=RedisLedger(redis_url, prefix=redis_prefix))
        for _ in range(2)
    ]
    admitted = 0
    with pytest.raises(BudgetExceeded) as info:
        for i in range(10):
            with workers[i % 2].task(team="search"):
                call(workers[i % 2])
                admitted += 1
    assert info.value.scope == "team:search"
    assert admitted == 3
    balance = workers[0].ledger.balance("team:search")
    assert balance is not None
    assert balance.spent_nanos == 3 * 13_500


def test_networked_ledger_is_put_behind_the_failure_mode(redis_url: str) -> None:
    """A Redis ledger is wrapped so the policy's failure mode applies."""
    gov = Governor(Policy(failure_mode="open"), ledger=RedisLedger(redis_url))
    assert isinstance(gov.ledger, FailoverLedger)
    assert gov.ledger.mode == "open"


def test_unreachable_store_fails_closed_by_default(capture: SpanCapture) -> None:
    """With Redis down and the default policy, calls are refused, not sent."""
    config = RedisConfig(
        url="redis://127.0.0.1:9/0", socket_timeout_s=0.2, connect_timeout_s=0.2
    )
    gov = Governor(
        Policy(budgets=[Budget(max_usd=1)]),
        ledger=RedisLedger(config),
        tracer_provider=capture.provider,
    )
    with pytest.raises(StoreUnavailable), gov.task():
        call(gov)
    task_span = capture.task()
    assert [e.name for e in task_span.events] == ["store.fail_closed"]
    assert task_span.attributes["governor.degraded"] == "store.fail_closed"


def test_unreachable_store_fails_open_when_asked() -> None:
    """With failure_mode='open', calls go on under the local shadow budget."""
    config = RedisConfig(
        url="redis://127.0.0.1:9/0", socket_timeout_s=0.2, connect_timeout_s=0.2
    )
    policy = Policy(budgets=[Budget(max_usd=1)], failure_mode="open")
    gov = Governor(policy, ledger=RedisLedger(config))
    with gov.task() as task:
        call(gov)
    assert task.report().cost_usd == MOCK_COST
