"""Static breakpoints and thread ids under ``govern()``.

A run paused at ``interrupt_before``/``interrupt_after`` (compiled in or
given at the call) ends without an error: its report still says
``"interrupted"``, as a run paused by ``interrupt()`` does, and the resumed
run completes. A thread id that is no valid name never breaks a graph that
runs ungoverned: ``#`` is written ``%23`` in the session, and an id that
cannot name a session sets none, with one warning.
"""

from __future__ import annotations

import logging
import operator
from decimal import Decimal
from typing import Annotated, Any, TypedDict

import pytest
from langchain_core.messages import HumanMessage
from langchain_litellm import ChatLiteLLM
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.graph import END, START, StateGraph

from conftest import SpanCapture
from governor import Budget, Governor, Policy, PolicyError, govern
from governor.adapters import langgraph as adapter
from governor.telemetry import attributes as attr


class _State(TypedDict):
    out: Annotated[list[str], operator.add]


def _model() -> ChatLiteLLM:
    return ChatLiteLLM(
        model="gpt-4o-mini",
        model_kwargs={"mock_response": "hi"},
        max_tokens=20,
        max_retries=0,
    )


def _graph(**compiled: Any) -> Any:
    """Two nodes, ``a`` then ``b``, each one model call, with a checkpointer."""
    model = _model()

    def a(state: _State) -> dict[str, list[str]]:
        return {"out": ["a:" + str(model.invoke([HumanMessage("a")]).content)]}

    async def b(state: _State) -> dict[str, list[str]]:
        answer = await model.ainvoke([HumanMessage("b")])
        return {"out": ["b:" + str(answer.content)]}

    def b_sync(state: _State) -> dict[str, list[str]]:
        return {"out": ["b:" + str(model.invoke([HumanMessage("b")]).content)]}

    builder = StateGraph(_State)
    builder.add_node("a", a)
    builder.add_node("b", b_sync if compiled.pop("sync_only", True) else b)
    builder.add_edge(START, "a")
    builder.add_edge("a", "b")
    builder.add_edge("b", END)
    return builder.compile(checkpointer=InMemorySaver(), **compiled)


def _thread(name: str) -> dict[str, Any]:
    return {"configurable": {"thread_id": name}}


def _task_reason(capture: SpanCapture) -> list[Any]:
    return [
        span.attributes.get(attr.TASK_STOP_REASON) if span.attributes else None
        for span in capture.named("governor.task")
    ]


def test_compiled_breakpoint_pauses_as_interrupted(capture: SpanCapture) -> None:
    """interrupt_before at compile time: invoke pauses before ``b``; the
    report and the task span say interrupted, and the resume completes."""
    graph = _graph(interrupt_before=["b"])
    agent = govern(graph, Governor(Policy(), tracer_provider=capture.provider))
    config = _thread("t1")
    assert agent.invoke({"out": []}, config) == {"out": ["a:hi"]}
    assert agent.get_state(config).next == ("b",)
    report = agent.last_report
    assert report is not None
    assert report.calls == 1
    assert report.stop_reason == "interrupted"
    assert agent.invoke(None, config) == {"out": ["a:hi", "b:hi"]}
    assert agent.get_state(config).next == ()
    assert agent.last_report is not None
    assert agent.last_report.stop_reason is None
    assert _task_reason(capture) == ["interrupted", "completed"]


def test_call_breakpoint_reads_state_only_when_set(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A run without breakpoints reads no state; interrupt_before given to
    invoke pauses the run, and its report says interrupted."""
    graph = _graph()
    reads: list[Any] = []
    get_state = graph.get_state
    monkeypatch.setattr(
        graph, "get_state", lambda config: reads.append(config) or get_state(config)
    )
    agent = govern(graph, Policy())
    agent.invoke({"out": []}, _thread("plain"))
    assert agent.last_report is not None
    assert agent.last_report.stop_reason is None
    assert reads == []
    config = _thread("t2")
    agent.invoke({"out": []}, config, interrupt_before=["b"])
    assert agent.last_report is not None
    assert agent.last_report.stop_reason == "interrupted"
    assert reads == [{"configurable": {"thread_id": "t2"}}]
    agent.invoke(None, config)
    assert agent.last_report.stop_reason is None
    assert agent.get_state(config).values == {"out": ["a:hi", "b:hi"]}


async def test_async_breakpoints_pause_as_interrupted() -> None:
    """ainvoke with interrupt_before at the call, astream with
    interrupt_after compiled in: both paused runs report interrupted."""
    agent = govern(_graph(sync_only=False), Policy())
    config = _thread("t3")
    await agent.ainvoke({"out": []}, config, interrupt_before=["b"])
    assert agent.last_report is not None
    assert agent.last_report.stop_reason == "interrupted"
    assert await agent.ainvoke(None, config) == {"out": ["a:hi", "b:hi"]}
    assert agent.last_report.stop_reason is None

    after = govern(_graph(sync_only=False, interrupt_after=["a"]), Policy())
    config = _thread("t4")
    chunks = [c async for c in after.astream({"out": []}, config)]
    assert chunks[-1] == {"__interrupt__": ()}
    assert after.last_report is not None
    assert after.last_report.stop_reason == "interrupted"
    assert [c async for c in after.astream(None, config)]
    assert after.last_report.stop_reason is None
    assert (await after.aget_state(config)).next == ()


def test_stream_and_batch_breakpoints_pause_as_interrupted() -> None:
    """stream with interrupt_after at the call, and each input of a batch
    paused by a compiled breakpoint, report interrupted."""
    agent = govern(_graph(), Policy())
    config = _thread("t5")
    chunks = list(agent.stream({"out": []}, config, interrupt_after=["a"]))
    assert chunks[-1] == {"__interrupt__": ()}
    assert agent.last_report is not None
    assert agent.last_report.stop_reason == "interrupted"
    list(agent.stream(None, config))
    assert agent.last_report.stop_reason is None

    paused = govern(_graph(interrupt_before=["b"]), Policy())
    configs = [_thread("t6"), _thread("t7")]
    paused.batch([{"out": []}, {"out": []}], configs)  # type: ignore[arg-type]
    assert [r.stop_reason for r in paused.reports] == ["interrupted"] * 2


def test_a_reader_that_stops_at_the_pause_leaves_it_interrupted() -> None:
    """The usual approval loop breaks at the ``__interrupt__`` update: the
    thread is paused, so the run is interrupted, not closed; a reader that
    stops before the pause did cut the run off."""
    agent = govern(_graph(interrupt_after=["a"]), Policy())
    for chunk in agent.stream({"out": []}, _thread("t8"), stream_mode="updates"):
        if "__interrupt__" in chunk:
            break
    assert agent.last_report is not None
    assert agent.last_report.stop_reason == "interrupted"
    assert agent.get_state(_thread("t8")).next == ("b",)

    modes = agent.stream({"out": []}, _thread("t9"), stream_mode=["updates"])
    for _mode, chunk in modes:
        if "__interrupt__" in chunk:
            break
    modes.close()
    assert agent.last_report.stop_reason == "interrupted"

    early = agent.stream({"out": []}, _thread("t10"), stream_mode="updates")
    next(early)  # node a's update: the run goes on after it
    early.close()
    assert agent.last_report.stop_reason == "closed"


async def test_an_async_reader_that_stops_at_the_pause_leaves_it_interrupted() -> None:
    agent = govern(_graph(sync_only=False, interrupt_before=["b"]), Policy())
    stream = agent.astream({"out": []}, _thread("t11"), stream_mode="updates")
    async for chunk in stream:
        if "__interrupt__" in chunk:
            break
    await stream.aclose()
    assert agent.last_report is not None
    assert agent.last_report.stop_reason == "interrupted"


def test_thread_id_with_hash_is_an_escaped_session() -> None:
    """``a#b`` runs as session ``a%23b``, which a session budget keyed so
    applies to; a session given in the metadata is still checked strictly."""
    budget = Budget(scope="session", key="a%23b", max_usd="0.5")
    agent = govern(_graph(), Policy(budgets=[budget]))
    agent.invoke({"out": []}, _thread("a#b"))
    report = agent.last_report
    assert report is not None
    assert report.calls == 2
    assert report.attribution["session"] == "a%23b"
    assert report.budget_left_usd == Decimal("0.5") - report.cost_usd
    agent.invoke({"out": []}, _thread("slack#C123#1700.1"))
    assert agent.last_report is not None
    assert agent.last_report.attribution["session"] == "slack%23C123%231700.1"
    with pytest.raises(PolicyError, match="without '#'"):
        agent.invoke({"out": []}, {**_thread("c"), "metadata": {"session": "a#b"}})


def test_thread_id_that_names_no_session_runs_with_one_warning(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """An empty thread id and one with a space in front run as ungoverned
    (LangGraph takes them), charged to no session, with one warning."""
    monkeypatch.setattr(adapter, "_UNNAMED_THREADS", [], raising=False)
    graph = _graph()
    assert graph.invoke({"out": []}, _thread("")) == {"out": ["a:hi", "b:hi"]}
    agent = govern(graph, Policy(budgets=[Budget(scope="session", max_usd="1")]))
    with caplog.at_level(logging.WARNING, logger=adapter.__name__):
        for thread in ("", " x", ""):
            agent.invoke({"out": []}, _thread(thread))
            report = agent.last_report
            assert report is not None
            assert report.calls == 2
            assert "session" not in report.attribution
            assert report.stop_reason is None
    messages = [r.getMessage() for r in caplog.records]
    warnings = [m for m in messages if "cannot name a session" in m]
    assert len(warnings) == 1
    assert "thread_id '' cannot name a session" in warnings[0]
    assert "must be a non-empty name" in warnings[0]
    assert "metadata={'session': ...}" in warnings[0]


def test_a_sub_agent_with_breakpoints_and_no_saver_runs_without_warnings(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A governed graph compiled with a breakpoint but no checkpointer of its
    own, run from a node of a checkpointed governed parent, has no state to
    read: it reads none and warns nothing, run after run."""
    gov = Governor()
    model = _model()

    def answer(state: _State) -> dict[str, list[str]]:
        return {"out": [str(model.invoke([HumanMessage("x")]).content)]}

    inner_builder = StateGraph(_State)
    inner_builder.add_node("answer", answer)
    inner_builder.add_node("after", lambda state: {"out": ["after"]})
    inner_builder.add_edge(START, "answer")
    # The breakpoint's node is never reached: every run completes.
    inner_builder.add_conditional_edges("answer", lambda state: END, [END, "after"])
    inner_builder.add_edge("after", END)
    inner = govern(inner_builder.compile(interrupt_before=["after"]), gov)

    def delegate(state: _State) -> dict[str, list[str]]:
        return {"out": inner.invoke({"out": []})["out"]}

    outer_builder = StateGraph(_State)
    outer_builder.add_node("delegate", delegate)
    outer_builder.add_edge(START, "delegate")
    outer_builder.add_edge("delegate", END)
    outer = govern(outer_builder.compile(checkpointer=InMemorySaver()), gov)
    with caplog.at_level(logging.WARNING, logger="governor"):
        for run in range(3):
            outer.invoke({"out": []}, _thread(f"t{run}"))
    assert [r.getMessage() for r in caplog.records] == []
    assert [r.stop_reason for r in inner.reports] == [None, None, None]


def test_a_thread_id_with_hash_passed_as_the_task_id_is_escaped_too() -> None:
    """The quickstart's advice (thread id as task id) works for any id."""
    agent = govern(_graph(), Governor())
    thread = "slack#C123#1700.1"
    config = {**_thread(thread), "metadata": {"task_id": thread}}
    agent.invoke({"out": []}, config)
    assert agent.last_report is not None
    assert agent.last_report.task_id == "slack%23C123%231700.1"
