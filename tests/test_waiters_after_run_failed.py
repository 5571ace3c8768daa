"""Calls queued for a fan-out slot when a sync graph run fails are not sent.

With ``Fanout(max_inflight_calls=1)`` one branch's call holds the task's only
slot while the other branches' calls queue for it. A branch that fails ends
the run: LangGraph waits for the branches still running, and each queued
call, given the slot in turn, is refused unsent with the run's ending error,
not sent and billed for an answer nobody reads. An async run cancels its
async nodes' queued calls; its sync nodes' are refused as in a sync run.

The first call of the run answers only once the failure has ended the run,
and branch 0 fails only once every other call is queued, so nothing here is
timed.
"""

from __future__ import annotations

import asyncio
import operator
import threading
from typing import Annotated, Any, TypedDict

import pytest
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from langgraph.graph import END, START, StateGraph
from langgraph.types import Send
from pydantic import ConfigDict, Field

import governor.adapters.langgraph as langgraph_adapter
from governor import Budget, Fanout, Governor, Policy, govern
from governor._money import nanos_to_usd
from governor.stores import MemoryLedger

BRANCHES = 6  # branch 0 fails; the other five make one model call each
HANG_GUARD_S = 30.0


class Gates:
    """Events the run's parts wait for instead of sleeping."""

    def __init__(self) -> None:
        self.ended = threading.Event()  # the failure has ended the run
        self.queued = threading.Event()  # every call has asked for a slot
        self.first_sent = threading.Event()
        self.lock = threading.Lock()
        self.asked = 0


class GatedModel(BaseChatModel):
    """A gpt-4o stand-in: the first call sent answers once the run has
    ended; every call sent is recorded, with whether the run had ended."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    gates: Gates
    sent: list[tuple[str, bool]] = Field(default_factory=list)

    @property
    def _llm_type(self) -> str:
        return "gated"

    def _get_ls_params(self, stop: Any = None, **kwargs: Any) -> Any:
        return {"ls_provider": "openai", "ls_model_name": "gpt-4o", "ls_max_tokens": 5}

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: Any = None,
        run_manager: Any = None,
        **kwargs: Any,
    ) -> ChatResult:
        gates = self.gates
        with gates.lock:
            self.sent.append((str(messages[-1].content), gates.ended.is_set()))
            first = len(self.sent) == 1
        if first:
            gates.first_sent.set()
            assert gates.ended.wait(HANG_GUARD_S), "the run never failed"
        return ChatResult(generations=[ChatGeneration(message=AIMessage("ok"))])


class State(TypedDict, total=False):
    done: Annotated[list[int], operator.add]


@pytest.fixture
def gates(monkeypatch: pytest.MonkeyPatch) -> Gates:
    """Gates set by the run's end (the adapter's sync and async forms)."""
    made = Gates()
    end_sync, ahang_up = langgraph_adapter._end_sync_run, langgraph_adapter._ahang_up

    def end_sync_run(task: Any) -> None:
        end_sync(task)
        made.ended.set()

    async def ahang_up_then_set(task: Any) -> None:
        await ahang_up(task)
        made.ended.set()

    monkeypatch.setattr(langgraph_adapter, "_end_sync_run", end_sync_run)
    monkeypatch.setattr(langgraph_adapter, "_ahang_up", ahang_up_then_set)
    return made


def _governor(
    gates: Gates, ledger: MemoryLedger, monkeypatch: pytest.MonkeyPatch
) -> Governor:
    """One call in flight at a time; each call asking for its slot counted."""
    policy = Policy(budgets=[Budget(max_usd="1")], fanout=Fanout(max_inflight_calls=1))
    gov = Governor(policy, ledger=ledger)
    acquire, aacquire = gov.slots.acquire, gov.slots.aacquire

    def asked() -> None:
        with gates.lock:
            gates.asked += 1
            if gates.asked == BRANCHES - 1:
                gates.queued.set()

    def acquire_counted(*args: Any) -> Any:
        asked()
        return acquire(*args)

    async def aacquire_counted(*args: Any) -> Any:
        asked()
        return await aacquire(*args)

    monkeypatch.setattr(gov.slots, "acquire", acquire_counted)
    monkeypatch.setattr(gov.slots, "aacquire", aacquire_counted)
    return gov


def _fail_once_all_queued(gates: Gates) -> None:
    assert gates.first_sent.wait(HANG_GUARD_S), "no call was sent"
    assert gates.queued.wait(HANG_GUARD_S), "the calls never queued"
    raise ValueError("branch 0 failed")


def _graph(model: GatedModel, outcomes: list[str], *, sync_nodes: bool) -> Any:
    """Branch 0 fails once the others' calls are queued; each other branch
    makes one call and records how it ended."""

    def work(item: dict[str, int]) -> State:
        if item["i"] == 0:
            _fail_once_all_queued(model.gates)
        try:
            model.invoke(f"essay {item['i']}")
        except BaseException as exc:
            outcomes.append(type(exc).__name__)
            raise
        outcomes.append("answered")
        return {"done": [item["i"]]}

    async def awork(item: dict[str, int]) -> State:
        if item["i"] == 0:
            await asyncio.to_thread(_fail_once_all_queued, model.gates)
        try:
            await model.ainvoke(f"essay {item['i']}")
        except BaseException as exc:
            outcomes.append(type(exc).__name__)
            raise
        outcomes.append("answered")
        return {"done": [item["i"]]}

    builder = StateGraph(State)
    builder.add_node("w", work if sync_nodes else awork)  # type: ignore[call-overload]
    builder.add_conditional_edges(
        START, lambda state: [Send("w", {"i": i}) for i in range(BRANCHES)], ["w"]
    )
    builder.add_edge("w", END)
    return builder.compile()


def _check_spend(agent: Any, ledger: MemoryLedger, model: GatedModel) -> None:
    """Nothing sent after the failure; only the first call is charged."""
    assert [sent for sent in model.sent if sent[1]] == []
    assert len(model.sent) == 1
    report = agent.last_report
    assert report is not None
    assert report.calls == 1
    assert report.stop_reason == "error:ValueError"
    balances = list(map(ledger.balance, ledger.keys()))
    assert balances
    for balance in balances:
        assert balance is not None
        assert balance.reserved_nanos == 0
        assert nanos_to_usd(balance.spent_nanos) == report.cost_usd > 0


def test_sync_run_failure_refuses_the_calls_queued_for_a_slot(
    gates: Gates, monkeypatch: pytest.MonkeyPatch
) -> None:
    ledger = MemoryLedger()
    model = GatedModel(gates=gates, sent=[])
    outcomes: list[str] = []
    agent = govern(
        _graph(model, outcomes, sync_nodes=True), _governor(gates, ledger, monkeypatch)
    )

    with pytest.raises(ValueError, match="branch 0 failed"):
        agent.invoke({"done": []})

    # The call in flight answers; every queued one is refused as it gets
    # the slot, so the error surfaces once the call in flight is done.
    assert sorted(outcomes) == ["_RunEnded"] * (BRANCHES - 2) + ["answered"]
    _check_spend(agent, ledger, model)


@pytest.mark.parametrize("sync_nodes", [True, False], ids=["sync-nodes", "async-nodes"])
def test_async_run_failure_sends_no_call_queued_for_a_slot(
    gates: Gates, monkeypatch: pytest.MonkeyPatch, sync_nodes: bool
) -> None:
    ledger = MemoryLedger()
    model = GatedModel(gates=gates, sent=[])
    outcomes: list[str] = []
    graph = _graph(model, outcomes, sync_nodes=sync_nodes)
    agent = govern(graph, _governor(gates, ledger, monkeypatch))

    with pytest.raises(ValueError, match="branch 0 failed"):
        asyncio.run(agent.ainvoke({"done": []}))

    if sync_nodes:  # threads LangGraph cannot cancel
        expected = ["_RunEnded"] * (BRANCHES - 2) + ["answered"]
    else:  # the call in flight too, cut off
        expected = ["CancelledError"] * (BRANCHES - 1)
    assert sorted(outcomes) == expected
    _check_spend(agent, ledger, model)
