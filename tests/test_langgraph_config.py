"""The LangGraph adapter reads bound configs and refuses what it cannot run."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest
from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.runnables import RunnableBinding
from langgraph.graph import END, START, StateGraph
from test_langgraph_adapter import (
    CALL_COST,
    FanState,
    ScriptedChatModel,
    fan_out_graph,
)

from governor import Budget, BudgetExceeded, ConfigError, Governor, Policy, govern

ADS_BUDGET = Policy(budgets=[Budget(scope="team", key="ads", max_usd="0")])
INPUT: Any = {"items": ["a"], "answers": []}


def _run(graph: Any, how: str) -> None:
    if how == "invoke":
        graph.invoke(INPUT)
    elif how == "ainvoke":
        asyncio.run(graph.ainvoke(INPUT))
    else:
        list(graph.stream(INPUT))


@pytest.mark.parametrize("how", ["invoke", "ainvoke", "stream"])
def test_with_config_metadata_is_charged_to_its_team(how: str) -> None:
    """A team bound with with_config() meets that team's budget at every entry."""
    agent = govern(fan_out_graph(ScriptedChatModel()), Governor(ADS_BUDGET))
    bound = agent.with_config({"metadata": {"team": "ads"}})
    with pytest.raises(BudgetExceeded, match="team:ads"):
        _run(bound, how)
    report = bound.last_report
    assert report is not None
    assert (report.calls, report.stop_reason) == (0, "budget_exceeded")
    assert report.attribution == {"team": "ads"}


@pytest.mark.parametrize("binding", ["with_config", "RunnableBinding"])
def test_graph_bound_before_govern_keeps_its_config(binding: str) -> None:
    """govern() of an already bound graph reads the bound metadata too."""
    compiled = fan_out_graph(ScriptedChatModel())
    config: Any = {"metadata": {"team": "ads"}}
    if binding == "with_config":
        graph = compiled.with_config(config)
    else:
        graph = RunnableBinding(bound=compiled, config=config)
    agent = govern(graph, Governor(ADS_BUDGET))
    with pytest.raises(BudgetExceeded, match="team:ads"):
        agent.invoke(INPUT)
    report = agent.last_report
    assert report is not None
    assert report.attribution == {"team": "ads"}


def test_call_config_wins_over_bound_config_and_callbacks_fire_once() -> None:
    """Bound task id, feature and thread count; the call's team wins; no doubles."""
    seen: list[str] = []

    class Recorder(BaseCallbackHandler):
        def on_chat_model_start(self, *args: Any, **kwargs: Any) -> None:
            seen.append("chat")

    agent = govern(fan_out_graph(ScriptedChatModel()), Governor())
    bound = agent.with_config(
        {
            "callbacks": [Recorder()],
            "metadata": {"task_id": "job-9", "team": "ads", "feature": "qa"},
            "configurable": {"thread_id": "thread-1"},
        }
    )
    bound.invoke({"items": ["a", "b"], "answers": []}, {"metadata": {"team": "search"}})
    report = bound.last_report
    assert report is not None
    assert seen == ["chat", "chat"]
    assert (report.task_id, report.calls, report.cost_usd) == (
        "job-9",
        2,
        CALL_COST * 2,
    )
    assert report.attribution == {
        "team": "search",
        "feature": "qa",
        "session": "thread-1",
    }


def test_uncompiled_state_graph_is_refused() -> None:
    """govern() says to compile a StateGraph, and refuses non-runnables."""
    with pytest.raises(ConfigError, match=r"call \.compile\(\) first"):
        govern(StateGraph(FanState), Governor())
    with pytest.raises(ConfigError, match=r"with invoke and stream\), got object"):
        govern(object(), Governor())


def test_a_governed_graph_is_not_governed_twice() -> None:
    """govern(govern(graph)) would charge each call twice: refused, saying
    what to use instead."""
    gov = Governor()
    agent = govern(fan_out_graph(ScriptedChatModel()), gov)
    with pytest.raises(ConfigError, match="governed already"):
        govern(agent, gov)


def test_compiled_graph_as_a_node_is_governed_by_the_parent_task() -> None:
    """A compiled graph as a node is charged to the governed parent's task.

    A GovernedGraph is not a Runnable and cannot be a node itself.
    """
    inner = fan_out_graph(ScriptedChatModel())
    parent = StateGraph(FanState)
    parent.add_node("inner", inner)
    parent.add_edge(START, "inner")
    parent.add_edge("inner", END)
    agent = govern(parent.compile(), Governor(ADS_BUDGET))
    out = agent.invoke({"items": ["x", "y"], "answers": []})
    report = agent.last_report
    assert report is not None
    assert out["answers"] == ["ok", "ok"]
    assert (report.calls, report.cost_usd) == (2, CALL_COST * 2)
    with pytest.raises(BudgetExceeded, match="team:ads"):
        agent.invoke(INPUT, {"metadata": {"team": "ads"}})
    with pytest.raises(TypeError, match="Expected a Runnable"):
        StateGraph(FanState).add_node("inner", govern(inner, Governor()))


@pytest.mark.parametrize("given", ["", "  "])
def test_an_empty_task_id_is_refused_not_replaced(given: str) -> None:
    """metadata task_id "" would lose a retry's shared budget: it is refused."""
    agent = govern(fan_out_graph(ScriptedChatModel()), Governor())
    with pytest.raises(ConfigError, match="task_id"):
        agent.invoke(INPUT, {"metadata": {"task_id": given}})


@pytest.mark.parametrize(
    "config",
    [{"task_id": "job-17"}, {"configurable": {"task_id": "job-17"}}],
)
def test_a_task_id_outside_the_metadata_is_warned_of(
    config: dict[str, Any],
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Only config['metadata']['task_id'] names the task: one given elsewhere
    is not read (a new task, a new budget), and a warning says where to move
    it."""
    from governor.adapters import langgraph as adapter

    monkeypatch.setattr(adapter, "_MISPLACED_WARNED", set())
    agent = govern(fan_out_graph(ScriptedChatModel()), Governor())
    with caplog.at_level(logging.WARNING, logger=adapter.__name__):
        agent.invoke(INPUT, config)
    report = agent.last_report
    assert report is not None
    assert report.task_id != "job-17"
    assert "Move it into the metadata" in caplog.text
