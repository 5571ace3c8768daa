"""The governor over a real Redis ledger: shared budgets and failure modes."""

from __future__ import annotations

import asyncio
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from conftest import MOCK_COST, SpanCapture
from governor import (
    Budget,
    BudgetExceeded,
    Fanout,
    Governor,
    Policy,
    StoreUnavailable,
)
from governor.adapters.litellm import GovernedLiteLLM
from governor.spend import RedisSpendStore
from governor.stores import FailoverLedger, RedisConfig, RedisLedger
from governor.stores._semaphore import RedisSemaphore

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


# LiteLLM leaves its inner provider coroutine unawaited when wait_for cuts it.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_a_timed_out_async_call_on_redis_is_recorded_as_charged(
    redis_url: str, redis_prefix: str, tmp_path: Path, capture: SpanCapture
) -> None:
    """wait_for cuts the call: Redis, the report, the record and the span agree.

    The settle runs while the task's cancellation is being handled; it used
    to raise CancelledError after Redis had settled, so nothing else saw it.
    """
    import asyncio

    import litellm

    from governor.spend import JsonlSpendStore
    from governor.testing import StubBehaviour, StubServer

    litellm.suppress_debug_info = True
    spend = tmp_path / "spend.jsonl"
    ledger = RedisLedger(redis_url, prefix=redis_prefix)
    policy = Policy(budgets=[Budget(scope="team", max_usd="1")])
    gov = Governor(
        policy, ledger=ledger, spend=str(spend), tracer_provider=capture.provider
    )

    async def cut_off() -> None:
        async with gov.atask(team="t") as task:
            call = GovernedLiteLLM(gov).acompletion(
                model="openai/gpt-4o-mini",
                messages=[{"role": "user", "content": "hi"}],
                api_base=stub.base_url + "/v1",
                api_key="sk-test",
                max_retries=0,
                max_tokens=100,
            )
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(call, 0.3)
        reports.append(task.report())

    reports: list[Any] = []
    with StubServer(default=StubBehaviour(delay_s=2.0)) as stub:
        asyncio.run(cut_off())
    gov.close()
    balance = ledger.balance("team:t")
    records = list(JsonlSpendStore(spend).query())
    assert balance is not None
    charged = Decimal(balance.spent_nanos) / 10**9
    assert charged > 0
    assert (reports[0].cost_usd, [r.cost_usd for r in records]) == (charged, [charged])
    assert [s.name for s in capture.calls()] == ["chat openai/gpt-4o-mini"]


def test_spend_records_land_under_the_ledger_prefix(
    redis_url: str, redis_prefix: str
) -> None:
    """spend='redis://...' writes under the RedisLedger's prefix.

    Two deployments sharing one Redis with distinct ledger prefixes keep
    their records apart, so a report of one never counts the other's calls.
    """
    for name in ("a", "b"):
        ledger = RedisLedger(redis_url, prefix=f"{redis_prefix}{name}:")
        gov = Governor(Policy(), ledger=ledger, spend=redis_url)
        with gov.task(team=f"team-{name}"):
            call(gov)
        gov.close()
        ledger.close()
    teams = {}
    for name in ("a", "b"):
        with RedisSpendStore.from_url(redis_url, prefix=f"{redis_prefix}{name}:") as s:
            teams[name] = [record.team for record in s.query()]
            assert s.hash_key == f"{redis_prefix}{name}:{{spend}}:h"
    assert teams == {"a": ["team-a"], "b": ["team-b"]}


def test_a_default_ledger_prefix_keeps_spend_under_governor(redis_url: str) -> None:
    """With RedisLedger's default prefix, spend stays at governor:{spend}.

    So records written before the store followed the ledger stay readable;
    nothing is written here.
    """
    ledger = RedisLedger(redis_url)
    gov = Governor(Policy(), ledger=ledger, spend=redis_url)
    assert gov.recorder is not None
    assert isinstance(gov.recorder.store, RedisSpendStore)
    assert gov.recorder.store.hash_key == "governor:{spend}:h"
    gov.close()
    ledger.close()


async def _slow_provider(**kwargs: Any) -> Any:
    """A LiteLLM mock call that takes a while."""
    import litellm

    await asyncio.sleep(0.3)
    return await litellm.acompletion(**kwargs)


async def _ask(llm: GovernedLiteLLM, text: str) -> None:
    await llm.acompletion(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": text}],
        mock_response="ok",
        max_tokens=20,
    )


async def _cancel_until_done(call: asyncio.Task[Any]) -> None:
    """Cancel ``call`` at every turn of the loop until it ends, as anyio does."""
    while not call.done():
        call.cancel()
        await asyncio.sleep(0)


async def _all_back(semaphore: RedisSemaphore) -> bool:
    """Whether the semaphore's slots come back within two seconds."""
    deadline = time.monotonic() + 2.0
    while semaphore.in_use() and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    return semaphore.in_use() == 0


def _capped(redis_url: str, prefix: str) -> tuple[Governor, RedisSemaphore]:
    """A governor capping calls per task and per team, and the team's cap."""
    fanout = Fanout(max_inflight_calls=1, scope_caps={"team": 2}, on_cap="refuse")
    ledger = RedisLedger(redis_url, prefix=prefix)
    gov = Governor(Policy(fanout=fanout), ledger=ledger)
    return gov, ledger.semaphore("slots:team:search", 2, 60.0)


def test_calls_cut_off_by_a_cancel_scope_give_their_slots_back(
    redis_url: str, redis_prefix: str
) -> None:
    """A deadline that cancels at every await (anyio, Starlette) leaves no slot.

    The release in aend_call was itself cancelled and never retried: the
    team's slots stayed taken for hold_ttl_s (15 minutes), the task's own
    slot for the task's life.
    """
    anyio = pytest.importorskip("anyio")
    gov, team = _capped(redis_url, redis_prefix)
    llm = GovernedLiteLLM(gov, acompletion=_slow_provider)

    async def request(text: str) -> int:
        async with gov.atask(team="search") as task:
            with anyio.move_on_after(0.05):  # a web request's deadline
                await _ask(llm, text)
            return int(task.extras["slots"].in_use())

    async def run() -> tuple[list[int], bool]:
        busy = list(await asyncio.gather(request("a"), request("b")))
        back = await _all_back(team)
        async with gov.atask(team="search"):
            await _ask(llm, "next")
        return busy, back

    assert asyncio.run(run()) == ([0, 0], True)
    gov.close()


def test_a_call_cancelled_while_reserving_gives_its_slots_back(
    redis_url: str, redis_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A call cancelled while reserving, and again while undoing it, frees its slots.

    The undo of the reserve was shielded; the slot releases after it were
    skipped.
    """
    gov, team = _capped(redis_url, redis_prefix)
    llm = GovernedLiteLLM(gov, acompletion=_slow_provider)
    reserve = gov.ledger.areserve

    async def slow_reserve(*args: Any) -> Any:  # a store slow to answer
        await asyncio.sleep(0.2)
        return await reserve(*args)

    monkeypatch.setattr(gov.ledger, "areserve", slow_reserve)

    async def run() -> tuple[int, bool]:
        async with gov.atask(team="search") as task:
            call = asyncio.create_task(_ask(llm, "hi"))
            await asyncio.sleep(0.05)
            await _cancel_until_done(call)
            return int(task.extras["slots"].in_use()), await _all_back(team)

    assert asyncio.run(run()) == (0, True)
    gov.close()
