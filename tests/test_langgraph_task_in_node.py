"""A chat model call inside a sub-task a node opens is the sub-task's.

A node of a governed graph may open ``with gov.task(policy=...)`` around
some of its calls. Its LiteLLM calls were the sub-task's already; its
LangChain chat model calls were charged to the graph run's task, sent past
the sub-task's budget, and left out of the sub-task's report. Now both are
admitted, refused, reported and charged on the sub-task, in sync and async
nodes, and a call of the node outside the sub-task is still the run's.
"""

from __future__ import annotations

import asyncio
from typing import Any, TypedDict

import pytest
from _chat_models import CountingChat
from langchain_core.messages import HumanMessage
from langgraph.graph import END, START, StateGraph

from governor import Budget, BudgetExceeded, Governor, Policy, Task, govern
from governor.adapters.litellm import GovernedLiteLLM
from governor.testing import install_offline_provider, offline_model

PROMPT = "hi there, how are you today?"
CALL_TOKENS = 18  # the prompt, and "answer N", counted locally
TIGHT = Policy(name="sub", budgets=[Budget(scope="task", max_tokens=15)])
ROOMY = Policy(name="sub", budgets=[Budget(scope="task", max_tokens=1000)])


class State(TypedDict, total=False):
    done: bool


def _graph(node: Any, gov: Governor) -> Any:
    builder = StateGraph(State)
    builder.add_node("n", node)
    builder.add_edge(START, "n")
    builder.add_edge("n", END)
    return govern(builder.compile(), gov)


def _run(graph: Any, mode: str) -> None:
    if mode == "sync":
        graph.invoke({})
    else:
        asyncio.run(graph.ainvoke({}))


def _call(model: CountingChat, mode: str) -> Any:
    """The node's chat model call, as a sync node makes it or an async one."""
    message = [HumanMessage(PROMPT)]
    return model.invoke(message) if mode == "sync" else model.ainvoke(message)


def _node(body: Any, mode: str) -> Any:
    """A sync node running ``body``, or an async node awaiting it."""
    if mode == "sync":

        def node(state: State) -> State:
            body()
            return {"done": True}

        return node

    async def anode(state: State) -> State:
        await body()
        return {"done": True}

    return anode


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_the_sub_task_budget_refuses_the_chat_model_call_as_its_litellm_call(
    mode: str,
) -> None:
    install_offline_provider(speed=0)
    gov = Governor(Policy(name="base"))
    llm = GovernedLiteLLM(gov)
    model = CountingChat()
    seen: dict[str, Any] = {}

    def litellm_call() -> None:
        llm.completion(
            model=offline_model("gpt-4o-mini"),
            messages=[{"role": "user", "content": PROMPT}],
            max_tokens=10,
        )

    def sync_body() -> None:
        with gov.task(policy=TIGHT) as sub:
            seen["sub"] = sub
            with pytest.raises(BudgetExceeded):
                litellm_call()
            with pytest.raises(BudgetExceeded) as refused:
                _call(model, "sync")
            seen["error"] = refused.value

    async def async_body() -> None:
        async with gov.atask(policy=TIGHT) as sub:
            seen["sub"] = sub
            with pytest.raises(BudgetExceeded):
                litellm_call()
            with pytest.raises(BudgetExceeded) as refused:
                await _call(model, "async")
            seen["error"] = refused.value

    graph = _graph(_node(sync_body if mode == "sync" else async_body, mode), gov)
    _run(graph, mode)

    sub: Task = seen["sub"]
    assert model.sent == []
    assert seen["error"].task_id == sub.id
    report = sub.report()
    assert (report.calls, report.refused, report.tokens) == (0, 2, 0)
    assert report.stop_reason == "budget_exceeded"
    run = graph.last_report
    assert (run.calls, run.refused, run.tokens) == (0, 0, 0)


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_sub_task_calls_are_reported_on_it_and_other_calls_on_the_run(
    mode: str,
) -> None:
    gov = Governor(Policy(name="base"))
    model = CountingChat()
    seen: dict[str, Any] = {}

    def sync_body() -> None:
        with gov.task(policy=ROOMY) as sub:
            seen["sub"] = sub
            _call(model, "sync")
            _call(model, "sync")
        _call(model, "sync")

    async def async_body() -> None:
        async with gov.atask(policy=ROOMY) as sub:
            seen["sub"] = sub
            await _call(model, "async")
            await _call(model, "async")
        await _call(model, "async")

    graph = _graph(_node(sync_body if mode == "sync" else async_body, mode), gov)
    _run(graph, mode)

    assert len(model.sent) == 3
    report = seen["sub"].report()
    assert (report.calls, report.refused, report.tokens) == (2, 0, 2 * CALL_TOKENS)
    assert report.policy == "sub"
    run = graph.last_report
    assert (run.calls, run.refused, run.tokens) == (1, 0, CALL_TOKENS)
    assert run.policy == "base"


def test_a_task_of_another_governor_leaves_the_call_to_the_run() -> None:
    gov, other = Governor(Policy(name="base")), Governor(Policy(name="other"))
    model = CountingChat()
    seen: dict[str, Any] = {}

    def body() -> None:
        with other.task(policy=TIGHT) as foreign:
            seen["foreign"] = foreign
            _call(model, "sync")

    graph = _graph(_node(body, "sync"), gov)
    graph.invoke({})

    assert len(model.sent) == 1
    assert seen["foreign"].report().calls == 0
    assert graph.last_report.calls == 1
