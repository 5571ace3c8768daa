"""Fan-out caps: model calls in flight per task and per scope."""

from __future__ import annotations

import asyncio
from typing import Any, TypedDict

import pytest
from _inflight import InFlightProvider

from conftest import SpanCapture
from governor import Fanout, Governor, Policy, Price, Pricing, govern
from governor import _slots as slots_module
from governor._slots import Held, release
from governor.adapters.litellm import GovernedLiteLLM
from governor.stores import RedisLedger, SlotUnavailable
from governor.stores._semaphore import LocalSemaphore
from governor.telemetry import attributes as attr

MESSAGES = [{"role": "user", "content": "Count to three."}]


async def burst(llm: GovernedLiteLLM, count: int) -> list[str]:
    async def one() -> str:
        try:
            await llm.acompletion(
                model="gpt-4o-mini",
                messages=MESSAGES,
                mock_response="1 2 3",
                max_tokens=20,
            )
        except SlotUnavailable:
            return "refused"
        return "ok"

    return list(await asyncio.gather(*(one() for _ in range(count))))


def test_inflight_calls_per_task_wait_for_a_slot(capture: SpanCapture) -> None:
    """With on_cap='wait', at most N calls of a task run at once; all finish."""
    provider = InFlightProvider()
    gov = Governor(
        Policy(fanout=Fanout(max_inflight_calls=3)), tracer_provider=capture.provider
    )
    llm = GovernedLiteLLM(gov, acompletion=provider.acompletion)

    async def run() -> list[str]:
        async with gov.atask():
            return await burst(llm, 10)

    assert asyncio.run(run()) == ["ok"] * 10
    assert provider.peak == 3
    task = capture.task()
    assert task.attributes[attr.TASK_PEAK_INFLIGHT] == 3
    waits = [s.attributes[attr.FANOUT_WAIT_S] for s in capture.calls()]
    assert max(waits) > 0


def test_refuse_mode_raises_past_the_cap() -> None:
    """With on_cap='refuse', calls past the cap fail at once with a typed error."""
    provider = InFlightProvider()
    policy = Policy(fanout=Fanout(max_inflight_calls=2, on_cap="refuse"))
    gov = Governor(policy)
    llm = GovernedLiteLLM(gov, acompletion=provider.acompletion)

    async def run() -> list[str]:
        async with gov.atask():
            return await burst(llm, 6)

    outcomes = asyncio.run(run())
    assert outcomes.count("ok") == 2
    assert outcomes.count("refused") == 4


def test_scope_cap_spans_tasks() -> None:
    """A team cap limits calls in flight across every task of the team."""
    provider = InFlightProvider()
    policy = Policy(fanout=Fanout(scope_caps={"team": 2}))
    gov = Governor(policy)
    llm = GovernedLiteLLM(gov, acompletion=provider.acompletion)

    async def one_task() -> list[str]:
        async with gov.atask(team="search"):
            return await burst(llm, 3)

    async def run() -> list[list[str]]:
        return list(await asyncio.gather(*(one_task() for _ in range(3))))

    assert asyncio.run(run()) == [["ok"] * 3] * 3
    assert provider.peak == 2


def test_scope_cap_uses_redis_slots_with_a_redis_ledger(
    redis_url: str, redis_prefix: str
) -> None:
    """With a Redis ledger the scope cap is a Redis semaphore shared by workers."""
    provider = InFlightProvider()
    policy = Policy(fanout=Fanout(scope_caps={"team": 2}))
    workers = [
        Governor(policy, ledger=RedisLedger(redis_url, prefix=redis_prefix))
        for _ in range(2)
    ]

    async def one_task(gov: Governor) -> list[str]:
        llm = GovernedLiteLLM(gov, acompletion=provider.acompletion)
        async with gov.atask(team="search"):
            return await burst(llm, 3)

    async def run() -> list[list[str]]:
        return list(await asyncio.gather(*(one_task(g) for g in workers)))

    assert asyncio.run(run()) == [["ok"] * 3] * 2
    assert provider.peak == 2


def test_slots_come_back_after_errors() -> None:
    """A failed call releases its slot, so later calls are not starved."""
    gov = Governor(Policy(fanout=Fanout(max_inflight_calls=1, on_cap="refuse")))
    llm = GovernedLiteLLM(gov)
    with gov.task():
        for _ in range(3):
            with pytest.raises(Exception, match="RateLimit"):
                llm.completion(
                    model="gpt-4o-mini",
                    messages=MESSAGES,
                    mock_response="litellm.RateLimitError",
                    max_tokens=20,
                )
        llm.completion(
            model="gpt-4o-mini", messages=MESSAGES, mock_response="ok", max_tokens=20
        )


def test_refusal_advice_fits_the_mode() -> None:
    """Refuse mode never waits, so its advice is to queue, not to wait longer."""
    refused = SlotUnavailable("task:t1", 2, 0.0)
    waited = SlotUnavailable("team:search", 2, 5.0)
    assert "on_cap='wait'" in str(refused)
    assert "wait_timeout_s" not in str(refused)
    assert "Fanout.max_inflight_calls" in str(refused)
    assert "stayed busy for 5.0 s" in str(waited)
    assert "Fanout.wait_timeout_s" in str(waited)


def test_sub_task_calls_count_against_the_parent_cap() -> None:
    """Sub-agents opened inside a task share its max_inflight_calls.

    Their spend counts against the parent's budgets; their calls used to
    bypass its cap (20 in flight under a cap of 3).
    """
    provider = InFlightProvider()
    gov = Governor(Policy(fanout=Fanout(max_inflight_calls=2)))
    llm = GovernedLiteLLM(gov, acompletion=provider.acompletion)

    async def sub_agent() -> list[str]:
        async with gov.atask():
            return await burst(llm, 2)

    async def run() -> list[list[str]]:
        async with gov.atask():
            return list(await asyncio.gather(*(sub_agent() for _ in range(4))))

    assert asyncio.run(run()) == [["ok"] * 2] * 4
    assert provider.peak == 2


def test_a_governed_graph_run_from_a_node_does_not_wait_on_its_parent() -> None:
    """A node holds no call slot, so a graph it runs shares the parent's cap
    of one call in flight without waiting on the parent.
    """
    from langchain_core.language_models.fake_chat_models import FakeListChatModel
    from langgraph.graph import END, START, StateGraph

    class State(TypedDict):
        q: str

    model = FakeListChatModel(responses=["ok"] * 10)
    price = Price(input_usd_per_mtok=1, output_usd_per_mtok=1)
    fanout = Fanout(max_inflight_calls=1, wait_timeout_s=2)
    gov = Governor(Policy(fanout=fanout, pricing=Pricing(default=price)))

    def graph(node: Any) -> Any:
        builder = StateGraph(State)
        builder.add_node("n", node)
        builder.add_edge(START, "n")
        builder.add_edge("n", END)
        return govern(builder.compile(), gov)

    inner = graph(lambda s: {"q": str(model.invoke(s["q"]).content)})

    async def ask_then_run_inner(state: State) -> Any:
        await model.ainvoke(state["q"])
        return await inner.ainvoke(state)

    def ask_then_run_inner_sync(state: State) -> Any:
        model.invoke(state["q"])
        return inner.invoke(state)

    assert graph(ask_then_run_inner_sync).invoke({"q": "hi"}) == {"q": "ok"}
    outer = graph(ask_then_run_inner)
    assert asyncio.run(outer.ainvoke({"q": "hi"})) == {"q": "ok"}


def _call_in_session(gov: Governor, session: str) -> None:
    with gov.task(session=session):
        GovernedLiteLLM(gov).completion(
            model="gpt-4o-mini", messages=MESSAGES, mock_response="ok", max_tokens=20
        )


def _session_calls(gov: Governor, sessions: range) -> None:
    for number in sessions:
        _call_in_session(gov, f"s-{number}")


def test_idle_scope_semaphores_are_forgotten(monkeypatch: pytest.MonkeyPatch) -> None:
    """A worker serving many sessions keeps a bounded number of semaphores.

    It used to keep one per session seen for the life of the governor.
    """
    monkeypatch.setattr(slots_module, "_SCOPES_KEPT", 4, raising=False)
    gov = Governor(Policy(fanout=Fanout(scope_caps={"session": 3})))
    _session_calls(gov, range(40))
    assert len(gov.slots._scopes) <= 8


def test_a_busy_scope_semaphore_is_not_forgotten(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A local semaphore with a slot taken stays, so its cap still holds."""
    monkeypatch.setattr(slots_module, "_SCOPES_KEPT", 2, raising=False)
    gov = Governor(Policy(fanout=Fanout(scope_caps={"session": 1}, on_cap="refuse")))
    with gov.task(session="busy") as task:
        held = gov.slots.acquire(task)
    _session_calls(gov, range(20))
    assert len(gov.slots._scopes) <= 4
    with pytest.raises(SlotUnavailable, match="session:busy"):
        _call_in_session(gov, "busy")
    release(held)
    _call_in_session(gov, "busy")


def test_a_semaphore_forgotten_before_its_slot_is_taken_is_looked_up_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Forgotten (idle) between look-up and take, a local semaphore is not
    used: a slot on it and one on the key's new semaphore would double the cap.
    """
    gov = Governor(Policy(fanout=Fanout(scope_caps={"session": 1}, on_cap="refuse")))
    keeper = gov.slots
    take = keeper._take
    forgotten: list[Any] = []

    def forget_first(
        semaphore: Any, timeout: float, limit: int | None = None
    ) -> str | None:
        if not forgotten:  # another thread forgets it just now
            with keeper._lock:
                forgotten.append(keeper._scopes.pop("session:s1"))
        return take(semaphore, timeout, limit)

    monkeypatch.setattr(keeper, "_take", forget_first)
    with gov.task(session="s1") as task:
        held = keeper.acquire(task)
    [(semaphore, _)] = held.slots
    assert semaphore is keeper._scopes.get("session:s1")
    assert forgotten[0].in_use() == 0
    with gov.task(session="s1") as other, pytest.raises(SlotUnavailable):
        keeper.acquire(other)
    release(held)


def test_redis_scope_handles_are_forgotten_and_the_cap_still_holds(
    redis_url: str, redis_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A Redis semaphore is a handle: one forgotten while its slot is taken
    is made again on the same Redis key, which still counts that slot.
    """
    monkeypatch.setattr(slots_module, "_SCOPES_KEPT", 2, raising=False)
    policy = Policy(fanout=Fanout(scope_caps={"session": 1}, on_cap="refuse"))
    gov = Governor(policy, ledger=RedisLedger(redis_url, prefix=redis_prefix))
    with gov.task(session="busy") as task:
        held = gov.slots.acquire(task)
    _session_calls(gov, range(10))
    assert len(gov.slots._scopes) <= 4
    assert "session:busy" not in gov.slots._scopes
    with pytest.raises(SlotUnavailable, match="session:busy"):
        _call_in_session(gov, "busy")
    release(held)
    _call_in_session(gov, "busy")
    gov.close()


def test_an_interrupted_release_still_gives_back_the_other_slots() -> None:
    """KeyboardInterrupt on one slot's release goes on after the others."""

    class Interrupted(LocalSemaphore):
        def release(self, token: str) -> None:
            raise KeyboardInterrupt

    first, second = LocalSemaphore(1), Interrupted(1)
    held = Held([(first, first.acquire()), (second, second.acquire())], 0.0)
    with pytest.raises(KeyboardInterrupt):
        release(held)
    assert first.in_use() == 0
