"""Fan-out caps set by a task override: per call, and inherited by sub-tasks.

A scope cap is one count of calls in flight per scope value, shared by every
task of that value; each call is admitted against the limit of its own
task's policy. It used to be the limit of whichever task used the scope
value first, for every later task. A task opened inside an override task
(a nested ``gov.task()``, a governed graph run from a node) used to drop the
parent's ``scope_caps`` and ``max_branches`` for the governor's.
"""

from __future__ import annotations

import asyncio
import operator
import time
from collections.abc import Callable
from typing import Annotated, Any, TypedDict

import pytest
from _inflight import InFlightProvider, Peak

from governor import Attribution, Fanout, Governor, Policy, govern
from governor.adapters.litellm import GovernedLiteLLM
from governor.stores import RedisLedger, SlotUnavailable
from governor.stores._semaphore import LocalSemaphore

MESSAGES = [{"role": "user", "content": "Count to three."}]
TEAM_CAP_5 = Policy(
    fanout=Fanout(scope_caps={"team": 5}), attribution=Attribution(team="search")
)
TEAM_CAP_2 = Policy(fanout=Fanout(scope_caps={"team": 2}))


async def _call(llm: GovernedLiteLLM) -> str:
    try:
        await llm.acompletion(
            model="gpt-4o-mini", messages=MESSAGES, mock_response="1 2 3", max_tokens=20
        )
    except SlotUnavailable as exc:
        return f"refused under {exc.limit}"
    return "ok"


async def _peak(
    gov: Governor, provider: InFlightProvider, override: Policy | None
) -> int:
    """The most calls of one task in flight at once, out of a burst of 10."""
    provider.peak = 0
    llm = GovernedLiteLLM(gov, acompletion=provider.acompletion)
    async with gov.atask(policy=override):
        answers = await asyncio.gather(*(_call(llm) for _ in range(10)))
    assert answers == ["ok"] * 10
    return provider.peak


def _peaks_in_order(gov: Governor, override_first: bool) -> dict[str, int]:
    provider = InFlightProvider()

    async def run() -> dict[str, int]:
        order = [TEAM_CAP_2, None] if override_first else [None, TEAM_CAP_2]
        peaks = [await _peak(gov, provider, policy) for policy in order]
        return dict(
            zip(["override" if p else "default" for p in order], peaks, strict=True)
        )

    return asyncio.run(run())


def test_an_acquire_waits_under_its_own_limit_on_a_shared_count() -> None:
    """A waiter is granted once fewer slots than its own limit are taken; a
    newcomer whose limit leaves room goes first meanwhile."""
    sem = LocalSemaphore(5, key="team:search")

    async def run() -> list[int]:
        held = [sem.acquire() for _ in range(3)]
        with pytest.raises(SlotUnavailable, match="all 2 slots of 'team:search'"):
            sem.acquire(0, limit=2)
        held.append(sem.acquire(0))  # 3 < 5: granted past the refused one
        waiter = asyncio.ensure_future(sem.aacquire(None, limit=2))
        await asyncio.sleep(0)
        counts = []
        for token in held[:3]:
            sem.release(token)
            counts.append(sem.in_use())
        held.append(await asyncio.wait_for(waiter, 10))
        for token in held[3:]:
            sem.release(token)
        return [*counts, sem.in_use()]

    # 4 held: 3 and 2 leave the waiter waiting, 1 lets it in (2 then).
    assert asyncio.run(run()) == [3, 2, 2, 0]


@pytest.mark.parametrize("override_first", [False, True])
def test_each_task_gets_its_own_scope_cap(override_first: bool) -> None:
    """team:2 in a task override caps that task at 2 calls in flight while
    the governor's team:5 still lets a default task run 5, in either order."""
    peaks = _peaks_in_order(Governor(TEAM_CAP_5), override_first)
    assert peaks == {"default": 5, "override": 2}


@pytest.mark.parametrize("override_first", [False, True])
def test_each_task_gets_its_own_scope_cap_on_redis(
    redis_url: str, redis_prefix: str, override_first: bool
) -> None:
    """The same with the scope's slots in Redis."""
    ledger = RedisLedger(redis_url, prefix=redis_prefix)
    peaks = _peaks_in_order(Governor(TEAM_CAP_5, ledger=ledger), override_first)
    assert peaks == {"default": 5, "override": 2}


async def _hold(
    gov: Governor, provider: InFlightProvider, override: Policy | None, n: int
) -> asyncio.Future[list[str]]:
    """Start ``n`` calls of a task that stay in flight until the gate opens."""
    llm = GovernedLiteLLM(gov, acompletion=provider.acompletion)
    before = provider.now

    async def task() -> list[str]:
        async with gov.atask(policy=override):
            return list(await asyncio.gather(*(_call(llm) for _ in range(n))))

    held = asyncio.ensure_future(task())
    await provider.reach(before + n)
    return held


async def _one(
    gov: Governor, provider: InFlightProvider, override: Policy | None
) -> str:
    """One call of a task of its own, while the others stay in flight.

    Refused, it ends at once; admitted, it reaches the provider, and the
    gate opens to let it (and the calls held) finish.
    """
    llm = GovernedLiteLLM(gov, acompletion=provider.acompletion)
    before = provider.now
    async with gov.atask(policy=override):
        call = asyncio.ensure_future(_call(llm))

        async def settled() -> None:
            while not call.done() and provider.now == before:
                await asyncio.sleep(0.005)

        await asyncio.wait_for(settled(), 10)
        if provider.now != before:
            provider.gate.set()
        return await asyncio.wait_for(call, 10)


def _shared_count(first: Governor, second: Governor) -> list[str]:
    """Calls of one team, default and override tasks, counted together.

    Each governor takes the team's slots under one limit first, then under
    the other.
    """
    provider = InFlightProvider(gated=True)

    async def run() -> list[str]:
        defaults = await _hold(first, provider, None, 3)
        seen = [await _one(second, provider, TEAM_CAP_2)]  # 3 in flight, not under 2
        provider.gate.set()
        seen += await defaults
        provider.gate.clear()
        overrides = await _hold(first, provider, TEAM_CAP_2, 2)
        seen.append(await _one(first, provider, TEAM_CAP_2))  # 2 in flight, not under 2
        seen.append(await _one(second, provider, None))  # 2 in flight, under 5
        provider.gate.set()
        return seen + await overrides

    return asyncio.run(run())


REFUSE = Policy(fanout=Fanout(on_cap="refuse"))
SHARED = ["refused under 2", "ok", "ok", "ok", "refused under 2", "ok", "ok", "ok"]


def test_tasks_of_one_team_share_one_count_under_their_own_limits() -> None:
    """3 default calls in flight refuse a call of a team:2 task; 2 calls of
    team:2 tasks in flight refuse a third of theirs, not a default one."""
    gov = Governor(TEAM_CAP_5.merged(REFUSE))
    assert _shared_count(gov, gov) == SHARED


def test_tasks_of_one_team_share_one_count_across_workers_on_redis(
    redis_url: str, redis_prefix: str
) -> None:
    """The same with two workers sharing the team's slots in Redis."""
    first, second = (
        Governor(
            TEAM_CAP_5.merged(REFUSE),
            ledger=RedisLedger(redis_url, prefix=redis_prefix),
        )
        for _ in range(2)
    )
    assert _shared_count(first, second) == SHARED


def test_a_sub_task_starts_from_its_parents_override() -> None:
    """A nested task's policy is its parent's, override included, with its
    own override laid over it; a top-level task's is the governor's."""
    gov = Governor(TEAM_CAP_5.merged(Policy(fanout=Fanout(max_branches=6))))
    outer = Policy(fanout=Fanout(scope_caps={"team": 2}, max_branches=2))
    inner = Policy(fanout=Fanout(max_branches=3))
    with gov.task(policy=outer), gov.task(policy=inner) as task:
        fanout = task.policy.fanout
        assert (dict(fanout.scope_caps), fanout.max_branches) == ({"team": 2}, 3)
    with gov.task(policy=inner) as task:
        fanout = task.policy.fanout
        assert (dict(fanout.scope_caps), fanout.max_branches) == ({"team": 5}, 3)


def test_a_nested_task_keeps_its_parents_scope_cap() -> None:
    """Calls of a gov.task() opened inside a team:2 override task: 2 in flight."""
    gov = Governor(TEAM_CAP_5)
    provider = InFlightProvider()
    llm = GovernedLiteLLM(gov, acompletion=provider.acompletion)

    async def run() -> list[str]:
        async with gov.atask(policy=TEAM_CAP_2), gov.atask():
            return list(await asyncio.gather(*(_call(llm) for _ in range(10))))

    assert asyncio.run(run()) == ["ok"] * 10
    assert provider.peak == 2


class FanState(TypedDict):
    items: list[str]
    done: Annotated[list[str], operator.add]


def _fan_out_graph(gov: Governor, node: Callable[[str], None]) -> Any:
    from langgraph.graph import END, START, StateGraph
    from langgraph.types import Send

    def fan(state: FanState) -> list[Any]:
        return [Send("worker", {"items": [i], "done": []}) for i in state["items"]]

    def worker(state: FanState) -> dict[str, list[str]]:
        node(state["items"][0])
        return {"done": state["items"]}

    builder = StateGraph(FanState)
    builder.add_node("worker", worker)
    builder.add_conditional_edges(START, fan, ["worker"])
    builder.add_edge("worker", END)
    return govern(builder.compile(), gov)


def test_a_graph_run_inside_an_override_task_keeps_its_max_branches() -> None:
    """A governed graph run inside a max_branches=2 override task fans out 2
    branches at a time, not the governor's 6."""
    running = Peak()

    def node(_: str) -> None:
        with running.held():
            time.sleep(0.05)

    gov = Governor(Policy(fanout=Fanout(max_branches=6)))
    graph = _fan_out_graph(gov, node)
    state = {"items": list("abcdefgh"), "done": []}
    with gov.task(policy=Policy(fanout=Fanout(max_branches=2))):
        out = graph.invoke(state)
    assert (sorted(out["done"]), running.peak) == (list("abcdefgh"), 2)
    running.peak = 0
    graph.invoke(state)
    assert running.peak == 6
