"""An async run that ends while a sync node's thread is ending a model call.

LangGraph runs a sync node in a worker thread that a cancelled run does not
stop. When the run ends, the node's model call may be ending in that thread
at the same moment: taken off the handler's open calls, its charge not yet
on the task; or being opened: past the run's checks, not yet counted. The
run's report must still count it, once, and its spend record say
``cancelled``. The interleaving is forced: the run's end waits until the
thread has reached that point, and the thread goes on once the report is
taken, or after a while when the report waits for it.
"""

from __future__ import annotations

import asyncio
import logging
import operator
import threading
from collections.abc import Iterator
from decimal import Decimal
from typing import Annotated, Any, TypedDict

import pytest
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessageChunk, BaseMessage
from langchain_core.outputs import ChatGenerationChunk, ChatResult
from langgraph.graph import END, START, StateGraph
from langgraph.types import Send

from governor import Budget, Governor, Policy, govern
from governor.adapters import langgraph as adapter
from governor.spend import JsonlSpendStore

WAIT_S = 10.0
"""How long a step waits for a step it needs; only a broken run waits it out."""

HELD_S = 0.3
"""How long the thread's charge is held when the report waits for it."""


class Outputs(TypedDict, total=False):
    out: Annotated[list[str], operator.add]


class GatedChatModel(BaseChatModel):
    """Streams one word, then the next once ``go`` is set."""

    go: Any
    streaming_now: Any

    @property
    def _llm_type(self) -> str:
        return "gated"

    def _get_ls_params(self, stop: Any = None, **kwargs: Any) -> Any:
        return {"ls_provider": "openai", "ls_model_name": "gpt-4o", "ls_max_tokens": 50}

    def _generate(
        self, messages: list[BaseMessage], stop: Any = None, **kwargs: Any
    ) -> ChatResult:
        raise NotImplementedError("stream it")

    def _stream(
        self, messages: list[BaseMessage], stop: Any = None, **kwargs: Any
    ) -> Iterator[ChatGenerationChunk]:
        yield ChatGenerationChunk(message=AIMessageChunk(content="first "))
        self.streaming_now.set()
        self.go.wait(WAIT_S)
        yield ChatGenerationChunk(message=AIMessageChunk(content="second "))
        yield ChatGenerationChunk(message=AIMessageChunk(content="third"))


class State(TypedDict, total=False):
    text: str


def _graph(model: GatedChatModel) -> Any:
    def talk(state: State) -> State:  # a sync node: it runs in a worker thread
        return {"text": "".join(str(c.content) for c in model.stream("hi"))}

    builder = StateGraph(State)
    builder.add_node("talk", talk)
    builder.add_edge(START, "talk")
    builder.add_edge("talk", END)
    return builder.compile()


def _end_as_the_run_ends(
    gov: Governor, monkeypatch: pytest.MonkeyPatch, held_s: float
) -> Any:
    """Run a graph whose node's thread takes its call off the open calls
    just before the cancelled run collects them, and holds the call's
    charge until the run's report is taken (or ``held_s``); the graph."""
    go, streaming_now = threading.Event(), threading.Event()
    agent = govern(_graph(GatedChatModel(go=go, streaming_now=streaming_now)), gov)
    loop_thread = threading.get_ident()
    taken = threading.Event()  # the node's thread is ending the call
    reported = threading.Event()  # the run's report is taken

    end_call = gov.end_call

    def held_end_call(admission: Any, result: Any) -> Decimal:
        if threading.get_ident() != loop_thread and not taken.is_set():
            taken.set()
            reported.wait(held_s)
        return end_call(admission, result)

    monkeypatch.setattr(gov, "end_call", held_end_call)

    abandoned = adapter._HandlerCore._abandoned

    def abandoned_after_the_thread(self: Any) -> Any:
        if not go.is_set():
            go.set()  # the next token reaches the ending run
            assert taken.wait(WAIT_S), "the node's thread did not end its call"
        return abandoned(self)

    monkeypatch.setattr(adapter._HandlerCore, "_abandoned", abandoned_after_the_thread)
    _tell_when_reported(agent, reported, monkeypatch)
    _cancel_once(agent, streaming_now)
    return agent


def _tell_when_reported(
    agent: Any, reported: threading.Event, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Set ``reported`` once the run's report is kept."""
    keep = agent._keep

    def keep_and_tell(report: Any) -> None:
        keep(report)
        reported.set()

    monkeypatch.setattr(agent, "_keep", keep_and_tell)


def _cancel_once(agent: Any, ready: threading.Event) -> None:
    """Start an async run and cancel it once ``ready`` is set."""

    async def main() -> None:
        run = asyncio.ensure_future(agent.ainvoke({"text": "hi"}))
        assert await asyncio.to_thread(ready.wait, WAIT_S)
        run.cancel()
        with pytest.raises(asyncio.CancelledError):
            await run

    asyncio.run(main())


def _one_cancelled_call_reported(gov: Governor, agent: Any, path: Any) -> None:
    """The run's report counts its one call, cancelled, at what the ledger
    charged, with nothing left held, and the spend record agrees."""
    gov.close()
    report = agent.last_report
    assert report is not None
    assert (report.calls, report.stop_reason) == (1, "cancelled")
    line = gov.ledger.balance(f"task:{report.task_id}")
    assert line is not None
    assert line.reserved_nanos == 0
    assert report.cost_usd > 0
    assert Decimal(line.spent_nanos) / 10**9 == report.cost_usd
    records = [(r.outcome, r.cost_usd) for r in JsonlSpendStore(path).query()]
    assert records == [("cancelled", report.cost_usd)]


def test_a_call_a_sync_node_is_ending_as_the_async_run_ends_is_reported(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The node's thread takes the call off the open calls just before the
    cancelled run collects them: the report still charges it, as the ledger
    does, and its spend record says cancelled."""
    path = tmp_path / "spend.jsonl"
    gov = Governor(Policy(budgets=[Budget(max_usd="1")]), spend=path)
    agent = _end_as_the_run_ends(gov, monkeypatch, HELD_S)
    _one_cancelled_call_reported(gov, agent, path)


def test_the_runs_end_waits_for_a_stuck_settle_only_so_long(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A charge that does not land in time (a store that hangs) does not
    hold the run's end: the report goes without it, with a warning."""
    monkeypatch.setattr(adapter, "_SETTLE_WAIT_S", 0.05)
    gov = Governor(Policy(budgets=[Budget(max_usd="1")]))
    with caplog.at_level(logging.WARNING, logger=adapter.__name__):
        agent = _end_as_the_run_ends(gov, monkeypatch, WAIT_S)
    report = agent.last_report
    assert report is not None
    assert (report.calls, report.cost_usd) == (1, 0)
    assert "report leaves out what they cost" in caplog.text


def test_a_call_a_sync_node_is_opening_as_the_async_run_ends_is_reported(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The node's thread is reserving its call as the cancelled run collects
    the open calls: the report counts the call and its charge (its hold),
    as the ledger does, and its spend record says cancelled."""
    path = tmp_path / "spend.jsonl"
    gov = Governor(Policy(budgets=[Budget(max_usd="1")]), spend=path)
    go, streaming_now = threading.Event(), threading.Event()
    go.set()
    agent = govern(_graph(GatedChatModel(go=go, streaming_now=streaming_now)), gov)
    loop_thread = threading.get_ident()
    opening = threading.Event()  # the node's thread is reserving the call
    reported = threading.Event()  # the run's report is taken

    reserve = gov.ledger.reserve  # after the checks of a run that is ending

    def held_reserve(*args: Any, **kwargs: Any) -> Any:
        if threading.get_ident() != loop_thread and not opening.is_set():
            opening.set()
            reported.wait(HELD_S)
        return reserve(*args, **kwargs)

    monkeypatch.setattr(gov.ledger, "reserve", held_reserve)
    _tell_when_reported(agent, reported, monkeypatch)
    _cancel_once(agent, opening)
    _one_cancelled_call_reported(gov, agent, path)


def test_a_litellm_call_a_sync_node_is_making_as_the_async_run_ends_is_reported(
    tmp_path: Any,
) -> None:
    """Under instrument(), a sync node's LiteLLM call goes through the LiteLLM
    adapter, not the callback handler: one branch fails while another's call
    is still running in its thread. The run's end waits for that call, so
    the report's cost is the ledger's and the spend store's."""
    import time

    import litellm

    from governor.adapters.litellm import instrument
    from governor.testing import (
        install_offline_provider,
        offline_model,
        uninstall_offline_provider,
    )

    started = threading.Event()

    def slow(model: str, messages: Any, tools: Any) -> str:
        started.set()
        time.sleep(HELD_S)
        return "a short answer"

    def fan(state: Outputs) -> list[Send]:
        return [Send("work", {"branch": b}) for b in (0, 1)]

    def work(state: dict[str, Any]) -> dict[str, Any]:
        if state["branch"] == 0:
            assert started.wait(WAIT_S)
            raise ValueError("branch 0 fails while branch 1's call runs")
        answer = litellm.completion(
            model=offline_model("gpt-4o-mini"),
            messages=[{"role": "user", "content": "hi"}],
            max_tokens=20,
        )
        return {"out": [answer.choices[0].message.content]}

    builder = StateGraph(Outputs)
    builder.add_node("work", work)
    builder.add_conditional_edges(START, fan, ["work"])
    builder.add_edge("work", END)
    store = JsonlSpendStore(tmp_path / "spend.jsonl")
    gov = Governor(Policy(budgets=[Budget(max_usd="1")]), spend=store)
    agent = govern(builder.compile(), gov)

    async def run() -> None:
        with pytest.raises(ValueError, match="branch 0 fails"):
            await agent.ainvoke({}, {"metadata": {"task_id": "t1"}})

    install_offline_provider(slow, speed=0)
    try:
        with instrument(gov):
            asyncio.run(run())
    finally:
        uninstall_offline_provider()
    report = agent.last_report
    assert report is not None
    gov.close()
    balance = gov.ledger.balance("task:t1")
    assert balance is not None
    records = [(r.outcome, r.cost_usd) for r in store.query(None, None, {})]
    assert records == [("ok", report.cost_usd)]
    assert report.cost_usd == Decimal(balance.spent_nanos) / 10**9 > 0
