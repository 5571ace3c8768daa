"""Ctrl-C during a sync governed run stops its nodes' model calls at once.

LangGraph waits for a sync run's node threads before the KeyboardInterrupt
reaches the caller; the calls those nodes start meanwhile are refused.
"""

from __future__ import annotations

import operator
import os
import signal
import threading
import time
from collections.abc import Iterator
from typing import Annotated, Any, TypedDict

import pytest
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from langgraph.graph import END, START, StateGraph
from langgraph.types import Send
from pydantic import Field

from governor import Governor, govern

CALLS_PER_BRANCH = 5
BRANCHES = 3
WAIT_S = 10.0


class CountingModel(BaseChatModel):
    """A gpt-4o stand-in that takes ``delay_s`` per call and counts them."""

    delay_s: float = 0.05
    sent: list[str] = Field(default_factory=list)

    @property
    def _llm_type(self) -> str:
        return "counting"

    def _get_ls_params(self, stop: Any = None, **kwargs: Any) -> Any:
        return {"ls_provider": "openai", "ls_model_name": "gpt-4o", "ls_max_tokens": 5}

    def _generate(
        self, messages: list[BaseMessage], stop: Any = None, **kwargs: Any
    ) -> ChatResult:
        self.sent.append(str(messages[-1].content))
        time.sleep(self.delay_s)
        return ChatResult(generations=[ChatGeneration(message=AIMessage("ok"))])


class State(TypedDict):
    ids: list[int]
    done: Annotated[list[int], operator.add]


@pytest.fixture
def interrupted() -> Iterator[threading.Event]:
    """Set by the application's own SIGINT handler, which then raises
    KeyboardInterrupt as Python's default one does: the governor's handler
    goes in front of it while a run waits."""
    seen = threading.Event()

    def on_interrupt(signum: int, frame: Any) -> None:
        seen.set()
        raise KeyboardInterrupt

    before = signal.signal(signal.SIGINT, on_interrupt)
    yield seen
    signal.signal(signal.SIGINT, before)


def _graph(model: CountingModel, interrupted: threading.Event) -> Any:
    """Branch 0 presses Ctrl-C after its first call; every branch makes its
    next calls once the application's handler has seen the interrupt."""

    def branch(item: dict[str, int]) -> dict[str, list[int]]:
        if item["i"] != 0:
            interrupted.wait(WAIT_S)
        for step in range(CALLS_PER_BRANCH):
            model.invoke(f"branch {item['i']} step {step}")
            if item["i"] == 0 and step == 0:
                os.kill(os.getpid(), signal.SIGINT)
                interrupted.wait(WAIT_S)
        return {"done": [item["i"]]}

    def fan_out(state: State) -> list[Send]:
        return [Send("branch", {"i": i}) for i in state["ids"]]

    builder = StateGraph(State)
    builder.add_node("branch", branch)
    builder.add_conditional_edges(START, fan_out, ["branch"])
    builder.add_edge("branch", END)
    return builder.compile()


@pytest.fixture
def model() -> CountingModel:
    return CountingModel(sent=[])


def test_ctrl_c_during_invoke_refuses_the_nodes_later_calls(
    model: CountingModel, interrupted: threading.Event
) -> None:
    before = signal.getsignal(signal.SIGINT)
    agent = govern(_graph(model, interrupted), Governor())

    with pytest.raises(KeyboardInterrupt):
        agent.invoke({"ids": list(range(BRANCHES)), "done": []})

    assert model.sent == ["branch 0 step 0"]
    assert agent.last_report is not None
    assert agent.last_report.stop_reason == "cancelled"
    assert signal.getsignal(signal.SIGINT) is before


def test_ctrl_c_while_reading_a_stream_refuses_the_nodes_later_calls(
    model: CountingModel, interrupted: threading.Event
) -> None:
    before = signal.getsignal(signal.SIGINT)
    agent = govern(_graph(model, interrupted), Governor())

    with pytest.raises(KeyboardInterrupt):
        for _ in agent.stream({"ids": list(range(BRANCHES)), "done": []}):
            pass

    assert model.sent == ["branch 0 step 0"]
    assert signal.getsignal(signal.SIGINT) is before


def test_ctrl_c_during_a_batch_refuses_every_runs_later_calls(
    model: CountingModel, interrupted: threading.Event
) -> None:
    agent = govern(_graph(model, interrupted), Governor())
    inputs = [{"ids": [i], "done": []} for i in range(BRANCHES)]

    with pytest.raises(KeyboardInterrupt):
        agent.batch(inputs)

    assert model.sent == ["branch 0 step 0"]


def test_a_run_on_another_thread_leaves_the_handler_alone(
    model: CountingModel, interrupted: threading.Event
) -> None:
    """Only the main thread may place a handler; a worker's run still works."""
    agent = govern(_graph(model, interrupted), Governor())
    seen: list[Any] = []

    def run() -> None:
        model.delay_s = 0
        graph = StateGraph(State)
        graph.add_node("one", lambda state: {"done": [1]})
        graph.add_edge(START, "one")
        graph.add_edge("one", END)
        seen.append(govern(graph.compile(), Governor()).invoke({"ids": []}))

    worker = threading.Thread(target=run)
    worker.start()
    worker.join()

    assert seen == [{"ids": [], "done": [1]}]
    assert agent.last_report is None
