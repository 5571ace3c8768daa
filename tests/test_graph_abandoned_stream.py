"""A node that stops reading a model stream leaves no provider stream running.

A node breaks out of ``model.stream()`` / ``model.astream()`` (ChatLiteLLM)
after three chunks. LiteLLM keeps the provider's connection in a reference
cycle, so it streams on, billed, until the garbage collector runs; the
collector is off in these tests, so that only the governor can close it.
With LiteLLM instrumented the governor closes it and charges what arrived;
under ``govern()`` alone it cannot, and charges the call's hold.

The provider is a local SSE server that counts the chunks it sent and says
whether the client hung up before the end.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from decimal import Decimal
from typing import Any, TypedDict

import pytest
from _sse_streams import CHUNKS, SSEServer, SSEStream, serving_without_gc
from langchain_core.messages import HumanMessage
from langchain_litellm import ChatLiteLLM
from langgraph.graph import END, START, StateGraph

from governor import Budget, Governor, Policy, govern
from governor.adapters import langgraph as graph_adapter
from governor.adapters.litellm import instrument

MAX_TOKENS = 1000
READ = 3  # chunks a node reads before it stops: " w0 w1 w2", six tokens
READ_TOKENS = 6
IN_PRICE = Decimal("0.15e-6")  # gpt-4o-mini, per token
OUT_PRICE = Decimal("0.6e-6")


@pytest.fixture
def server() -> Iterator[SSEServer]:
    with serving_without_gc() as sse:
        yield sse


@pytest.fixture(autouse=True)
def warnings_unsaid(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test sees the once-per-process warnings afresh."""
    monkeypatch.setattr(graph_adapter, "_UNREAD_WARNED", set(), raising=False)


class State(TypedDict, total=False):
    text: str


def _graph(
    sse: SSEServer,
    *,
    use_async: bool,
    keep: list[Any] | None = None,
    limit: int | None = READ,
) -> Any:
    """A graph whose node reads ``limit`` chunks of a model stream (all for
    None), then stops: it breaks out, or, with ``keep``, keeps the stream
    there unread."""
    model = _model(sse)

    def read(state: State) -> State:
        words = []
        for chunk in model.stream([HumanMessage("Write an essay.")]):
            words.append(str(chunk.content))
            if len(words) == limit:
                break
        return {"text": "".join(words)}

    def keep_unread(state: State) -> State:
        stream = model.stream([HumanMessage("Write an essay.")])
        words = [str(next(stream).content) for _ in range(READ)]
        assert keep is not None
        keep.append(stream)
        return {"text": "".join(words)}

    async def aread(state: State) -> State:
        words = []
        async for chunk in model.astream([HumanMessage("Write an essay.")]):
            words.append(str(chunk.content))
            if len(words) == limit:
                break
        return {"text": "".join(words)}

    async def akeep(state: State) -> State:
        stream = model.astream([HumanMessage("Write an essay.")])
        words = [str((await anext(stream)).content) for _ in range(READ)]
        assert keep is not None
        keep.append(stream)
        return {"text": "".join(words)}

    if keep is None:
        node = aread if use_async else read
    else:
        node = akeep if use_async else keep_unread
    return _one_node(node)


def _model(sse: SSEServer) -> ChatLiteLLM:
    """The chat model the nodes stream from, on the test's SSE server."""
    return ChatLiteLLM(
        model="openai/gpt-4o-mini",
        api_base=sse.base_url,
        api_key="sk-local",
        max_tokens=MAX_TOKENS,
        max_retries=0,
    )


def _one_node(node: Any, name: str = "read") -> Any:
    """A compiled graph that runs ``node``, named ``name``, once."""
    builder = StateGraph(State)
    builder.add_node(name, node)
    builder.add_edge(START, name)
    builder.add_edge(name, END)
    return builder.compile()


def _run(graph: Any, sse: SSEServer, *, use_async: bool) -> tuple[Any, SSEStream]:
    """Run the graph; its output, and the server's stream once it ended.

    An async run waits for the stream on its event loop: a loop that ends
    closes the async streams left open (``asyncio.run``), which would hide
    whether the governor closed them.
    """
    if not use_async:
        return graph.invoke({}), sse.only_stream()

    async def run() -> tuple[Any, SSEStream]:
        output = await graph.ainvoke({})
        return output, await asyncio.to_thread(sse.only_stream)

    return asyncio.run(run())


def _assert_charged(gov: Governor, graph: Any, output_tokens: int) -> None:
    """The report, the task's budget line and the price agree exactly."""
    report = graph.last_report
    assert report is not None
    assert (report.calls, report.stop_reason) == (1, None)
    assert report.output_tokens == output_tokens
    assert report.input_tokens > 0
    cost = report.input_tokens * IN_PRICE + output_tokens * OUT_PRICE
    assert report.cost_usd == cost
    balance = gov.ledger.balance(f"task:{report.task_id}")
    assert balance.reserved_nanos == 0
    assert balance.spent_nanos == int(cost * 10**9)


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.levelno == logging.WARNING and "stopped reading" in r.getMessage()
    ]


@pytest.mark.parametrize("use_async", [False, True])
def test_an_instrumented_stream_a_node_breaks_out_of_is_closed(
    server: SSEServer, use_async: bool, caplog: pytest.LogCaptureFixture
) -> None:
    """The provider's stream is closed, and the call charged what arrived."""
    gov = Governor(Policy(budgets=[Budget(max_usd=1)]))
    graph = govern(_graph(server, use_async=use_async), gov)
    with instrument(gov):
        output, stream = _run(graph, server, use_async=use_async)
    assert output == {"text": " w0 w1 w2"}
    assert stream.how == "hung up"
    assert stream.sent < CHUNKS
    _assert_charged(gov, graph, READ_TOKENS)
    (warning,) = _warnings(caplog)
    assert "the governor closed the provider's stream" in warning
    assert "contextlib.aclosing" in warning


@pytest.mark.parametrize("use_async", [False, True])
def test_an_instrumented_stream_a_node_keeps_unread_is_closed_at_the_end(
    server: SSEServer, use_async: bool, caplog: pytest.LogCaptureFixture
) -> None:
    """A node holding its stream unread past the run: the run's end hangs
    up on it, and its report charges what arrived."""
    kept: list[Any] = []
    gov = Governor(Policy(budgets=[Budget(max_usd=1)]))
    graph = govern(_graph(server, use_async=use_async, keep=kept), gov)
    with instrument(gov):
        _, stream = _run(graph, server, use_async=use_async)
    assert kept  # still held: only the run's end closed it
    assert stream.how == "hung up"
    _assert_charged(gov, graph, READ_TOKENS)
    assert len(_warnings(caplog)) == 1


def test_an_instrumented_stream_read_to_the_end_is_left_alone(
    server: SSEServer, caplog: pytest.LogCaptureFixture
) -> None:
    """A stream read out is charged as usual, without a warning."""
    server.chunks = READ
    gov = Governor(Policy(budgets=[Budget(max_usd=1)]))
    graph = govern(_graph(server, use_async=True, limit=None), gov)
    with instrument(gov):
        _, stream = _run(graph, server, use_async=True)
    assert stream.how == "finished"
    _assert_charged(gov, graph, READ_TOKENS)
    assert _warnings(caplog) == []


@pytest.mark.parametrize("use_async", [False, True])
def test_a_stream_a_node_breaks_out_of_under_govern_alone_is_charged_its_hold(
    server: SSEServer, use_async: bool, caplog: pytest.LogCaptureFixture
) -> None:
    """The handler cannot close ChatLiteLLM's connection, which streams on:
    the call is charged its hold, each time, with one warning."""
    gov = Governor(Policy(budgets=[Budget(max_usd=1)]))
    graph = govern(_graph(server, use_async=use_async), gov)
    for _ in range(2):
        output = asyncio.run(graph.ainvoke({})) if use_async else graph.invoke({})
        assert output == {"text": " w0 w1 w2"}
        _assert_charged(gov, graph, MAX_TOKENS)
    (warning,) = _warnings(caplog)
    assert "charged its hold" in warning
    assert "instrument(gov)" in warning


def test_a_node_failing_mid_stream_under_govern_alone_is_charged_its_hold(
    server: SSEServer,
) -> None:
    """The traceback keeps the failed node's stream open: its hold is charged."""
    model = _model(server)

    def fail(state: State) -> State:
        for i, _ in enumerate(model.stream([HumanMessage("Write an essay.")])):
            if i == READ - 1:
                raise ValueError("no more")
        return {}

    gov = Governor(Policy(budgets=[Budget(max_usd=1)]))
    graph = govern(_one_node(fail, "fail"), gov)
    with pytest.raises(ValueError, match="no more"):
        graph.invoke({})
    report = graph.last_report
    assert report is not None
    assert report.stop_reason == "error:ValueError"
    assert report.output_tokens == MAX_TOKENS
    assert gov.ledger.balance(f"task:{report.task_id}").reserved_nanos == 0


@pytest.mark.parametrize("use_async", [False, True])
def test_a_node_stopping_at_the_finish_reason_chunk_is_charged_what_arrived(
    server: SSEServer, use_async: bool, caplog: pytest.LogCaptureFixture
) -> None:
    """Breaking out at the chunk that carries the finish reason (a common
    "done" test) leaves nothing unread: no hold (it was charged 1000 output
    tokens for 6), no warning."""
    server.chunks = READ
    model = _model(server)

    def read(state: State) -> State:
        words = []
        for chunk in model.stream([HumanMessage("Write an essay.")]):
            words.append(str(chunk.content))
            if chunk.response_metadata.get("finish_reason"):
                break
        return {"text": "".join(words)}

    async def aread(state: State) -> State:
        words = []
        async for chunk in model.astream([HumanMessage("Write an essay.")]):
            words.append(str(chunk.content))
            if chunk.response_metadata.get("finish_reason"):
                break
        return {"text": "".join(words)}

    gov = Governor(Policy(budgets=[Budget(max_usd=1)]))
    graph = govern(_one_node(aread if use_async else read), gov)
    output = asyncio.run(graph.ainvoke({})) if use_async else graph.invoke({})
    assert output == {"text": " w0 w1 w2"}
    report = graph.last_report
    assert report is not None
    assert report.output_tokens == READ_TOKENS
    balance = gov.ledger.balance(f"task:{report.task_id}")
    assert balance.reserved_nanos == 0
    assert balance.spent_nanos == int(report.cost_usd * 10**9)
    assert _warnings(caplog) == []
