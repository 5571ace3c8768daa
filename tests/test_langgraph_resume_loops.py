"""What docs/loops.md says of max_steps and of interrupt() / resume.

``max_steps`` counts node runs, not supersteps; a resumed thread whose runs
share the thread id as task id shares its budget, starts its call counters
again on each resume, and is still judged by the rules that read its
history.
"""

from __future__ import annotations

import operator
from decimal import Decimal
from typing import Annotated, Any, TypedDict

import pytest
from _chat_models import CountingChat
from langchain_core.messages import BaseMessage, HumanMessage
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.graph import END, START, StateGraph
from langgraph.graph.message import add_messages
from langgraph.types import Command, Send, interrupt

from governor import Budget, BudgetExceeded, LoopDetected, Policy, govern
from governor.policies import Loops

_RULES_OFF = dict.fromkeys(
    (
        "max_repeats",
        "max_cycle_repeats",
        "max_stale_steps",
        "max_same_result_repeats",
        "max_identical_calls",
        "max_near_duplicate_outputs",
        "max_repeated_turns",
    )
)


class _Counts(TypedDict):
    n: Annotated[list[int], operator.add]


def test_max_steps_counts_node_runs_not_supersteps() -> None:
    """10 Send branches and one node: two supersteps, 11 node runs (and the
    router's __start__); max_steps=5 stops the 6th node run before it runs."""
    ran: list[str] = []

    def node(name: str) -> Any:
        return lambda state: ran.append(name) or {"n": [1]}

    builder = StateGraph(_Counts)
    builder.add_node("work", node("work"))
    builder.add_node("done", node("done"))
    builder.add_conditional_edges(START, lambda s: [Send("work", s)] * 10)
    builder.add_edge("work", "done")
    builder.add_edge("done", END)
    policy = Policy(loops=Loops(max_steps=5))
    with pytest.raises(LoopDetected, match="steps reached 6, over the ceiling of 5"):
        govern(builder.compile(), policy).invoke({"n": []})
    assert ran == ["work"] * 4  # run 1 was __start__; run 6 was stopped
    # 12 node runs in all: __start__, 10 branches, done.
    govern(builder.compile(), Policy(loops=Loops(max_steps=12))).invoke({"n": []})


class _Chat(TypedDict):
    messages: Annotated[list[BaseMessage], add_messages]


def _paused_thread(model: CountingChat, calls: int, history: bool) -> Any:
    """A graph that asks ``calls`` times, then waits for a human, in a loop."""

    def ask(state: _Chat) -> dict[str, Any]:
        question = [HumanMessage("Is job 1 done?")]
        answers = [
            model.invoke(state["messages"] if history else question)
            for _ in range(calls)
        ]
        return {"messages": answers}

    def wait(state: _Chat) -> dict[str, Any]:
        return {"messages": [HumanMessage(interrupt("again?"))]}

    builder = StateGraph(_Chat)
    builder.add_node("ask", ask)
    builder.add_node("wait", wait)
    builder.add_edge(START, "ask")
    builder.add_edge("ask", "wait")
    builder.add_edge("wait", "ask")
    return builder.compile(checkpointer=InMemorySaver())


def _resume(agent: Any, thread: str, runs: int) -> int:
    """Start the thread and resume it until ``runs`` runs or a stop: the
    number of runs that finished."""
    config = {"configurable": {"thread_id": thread}, "metadata": {"task_id": thread}}
    agent.invoke({"messages": [HumanMessage("start")]}, config)
    for done in range(1, runs):
        try:
            agent.invoke(Command(resume="continue"), config)
        except (LoopDetected, BudgetExceeded):
            return done
    return runs


def test_call_counters_start_again_at_each_resume() -> None:
    """max_model_calls=3, 2 calls a run: 8 resumes go through."""
    model = CountingChat(reply="Retrying now.")
    policy = Policy(loops=Loops(max_model_calls=3, **_RULES_OFF))
    agent = govern(_paused_thread(model, calls=2, history=False), policy)
    assert _resume(agent, "calls", runs=9) == 9
    assert len(model.sent) == 18
    assert {r.task_id for r in agent.reports} == {"calls"}


def test_repeated_turns_carry_across_resumes() -> None:
    """The model fed its own answer once a run is stopped on the 4th resume."""
    model = CountingChat(reply="Retrying now.")
    policy = Policy(loops=Loops(**{**_RULES_OFF, "max_repeated_turns": 2}))
    agent = govern(_paused_thread(model, calls=1, history=True), policy)
    assert _resume(agent, "turns", runs=9) == 4
    assert agent.last_report is not None
    assert agent.last_report.stop_reason == "loop_detected"


def test_the_budget_is_shared_by_the_task_id() -> None:
    """Each run spends from the one budget of the thread's task id."""
    model = CountingChat(reply="Retrying now.")
    policy = Policy(
        budgets=[Budget(max_usd=Decimal("0.001"))], loops=Loops(**_RULES_OFF)
    )
    agent = govern(_paused_thread(model, calls=1, history=False), policy)
    _resume(agent, "budget", runs=3)
    left = [r.budget_left_usd for r in agent.reports]
    cost = agent.reports[0].cost_usd
    assert cost > 0
    assert left == [Decimal("0.001") - cost * k for k in (1, 2, 3)]
