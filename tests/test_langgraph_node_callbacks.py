"""A node that passes callbacks of its own is still governed, and a chat
model's ``model_kwargs`` are reserved for.

LangChain replaces the inherited callbacks with ones given explicitly
(``config={"callbacks": [...]}``, ``model.with_config(callbacks=...)``,
``callbacks: []``), so the run's handler reaches such calls through
LangChain's configure hook. Real graphs, ChatLiteLLM, a local stub server.
"""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Callable, Iterator
from decimal import Decimal
from typing import Any, TypedDict

import pytest
from langchain_core.callbacks import BaseCallbackHandler
from langchain_litellm import ChatLiteLLM
from langgraph.graph import END, START, StateGraph

from conftest import SpanCapture
from governor import Budget, BudgetExceeded, Governor, Policy, govern
from governor.telemetry import attributes as attr
from governor.testing import StubBehaviour, StubServer

# LangChain creates a coroutine for each handler that does not run inline;
# when the governor's inline handler refuses a call first, those for the
# user's tracer are never awaited, and Python warns when they are collected.
pytestmark = pytest.mark.filterwarnings(
    "ignore:coroutine 'ahandle_event' was never awaited:RuntimeWarning"
)

PROMPT_TOKENS = 10
ANSWER_TOKENS = 1000
# gpt-4o: input 2.5e-6, output 1e-5 per token.
CALL_COST = PROMPT_TOKENS * Decimal("2.5e-6") + ANSWER_TOKENS * Decimal("1e-5")
CALLS = 4

MODES = ["own_callbacks", "no_callbacks", "with_config"]


class State(TypedDict):
    out: list[str]


class Tracer(BaseCallbackHandler):
    """The user's own handler (a Langfuse or LangSmith tracer, say).

    Run inline: LangChain awaits a handler that is not only after the
    inline ones, so for a call the governor refuses its start coroutine is
    never awaited (see docs/adapters.md), which these tests need not show.
    """

    run_inline = True

    def __init__(self) -> None:
        self.starts = 0
        self.ends = 0

    def on_chat_model_start(self, *args: Any, **kwargs: Any) -> None:
        self.starts += 1

    def on_llm_end(self, *args: Any, **kwargs: Any) -> None:
        self.ends += 1


@pytest.fixture(autouse=True)
def _collect_unawaited() -> Iterator[None]:
    """Collect those coroutines here, where their warning is expected."""
    yield
    gc.collect()


@pytest.fixture
def stub() -> Iterator[StubServer]:
    answer = StubBehaviour(prompt_tokens=PROMPT_TOKENS, completion_tokens=ANSWER_TOKENS)
    with StubServer(default=answer) as server:
        yield server


def _model(stub: StubServer, **kwargs: Any) -> ChatLiteLLM:
    settings: dict[str, Any] = {"max_tokens": ANSWER_TOKENS, **kwargs}
    return ChatLiteLLM(
        model="openai/gpt-4o",
        api_base=stub.base_url + "/v1",
        api_key="sk-stub",
        max_retries=0,
        **settings,
    )


def _call(model: ChatLiteLLM, tracer: Tracer, mode: str) -> Callable[[str], Any]:
    """One model call the way ``mode`` names."""
    if mode == "own_callbacks":
        return lambda q: model.invoke(q, config={"callbacks": [tracer]})
    if mode == "no_callbacks":
        return lambda q: model.invoke(q, config={"callbacks": []})
    if mode == "with_config":
        return model.with_config(callbacks=[tracer]).invoke
    if mode == "ctor_callbacks":
        return model.model_copy(update={"callbacks": [tracer]}).invoke
    assert mode == "plain"
    return model.invoke


def _acall(model: ChatLiteLLM, tracer: Tracer, mode: str) -> Callable[[str], Any]:
    """Async form of :func:`_call`."""
    if mode == "own_callbacks":
        return lambda q: model.ainvoke(q, config={"callbacks": [tracer]})
    if mode == "no_callbacks":
        return lambda q: model.ainvoke(q, config={"callbacks": []})
    if mode == "with_config":
        return model.with_config(callbacks=[tracer]).ainvoke
    assert mode == "plain"
    return model.ainvoke


def _graph(call: Callable[[str], Any], *, use_async: bool = False) -> Any:
    """A graph whose one node makes :data:`CALLS` model calls."""

    def node(state: State) -> dict[str, list[str]]:
        return {"out": [str(call(f"q{i}").content) for i in range(CALLS)]}

    async def anode(state: State) -> dict[str, list[str]]:
        return {"out": [str((await call(f"q{i}")).content) for i in range(CALLS)]}

    graph = StateGraph(State)
    graph.add_node("n", anode if use_async else node)
    graph.add_edge(START, "n")
    graph.add_edge("n", END)
    return graph.compile()


@pytest.mark.parametrize("use_async", [False, True], ids=["invoke", "ainvoke"])
@pytest.mark.parametrize("mode", MODES)
def test_a_node_with_its_own_callbacks_is_refused_at_the_budget(
    stub: StubServer, mode: str, use_async: bool
) -> None:
    """Each call is reserved and charged; the third no longer fits $0.025."""
    tracer = Tracer()
    model = _model(stub)
    call = _acall(model, tracer, mode) if use_async else _call(model, tracer, mode)
    gov = Governor(Policy(budgets=[Budget(max_usd="0.025")]))
    agent = govern(_graph(call, use_async=use_async), gov)
    with pytest.raises(BudgetExceeded):
        if use_async:
            asyncio.run(agent.ainvoke({"out": []}))
        else:
            agent.invoke({"out": []})
    report = agent.last_report
    assert report is not None
    assert len(stub.requests) == 2
    assert (report.calls, report.cost_usd) == (2, 2 * CALL_COST)
    if mode != "no_callbacks":
        assert tracer.ends == 2  # the user's handler still sees each answer


@pytest.mark.parametrize(
    ("mode", "use_async"),
    [
        *((mode, False) for mode in ["plain", "ctor_callbacks", *MODES]),
        *((mode, True) for mode in ["plain", *MODES]),
    ],
)
def test_each_call_is_charged_once_and_seen_once_by_the_users_handler(
    stub: StubServer, mode: str, use_async: bool
) -> None:
    """The run's handler, inherited and hooked, counts a call once; the
    user's handler runs once per call too."""
    tracer = Tracer()
    model = _model(stub)
    call = _acall(model, tracer, mode) if use_async else _call(model, tracer, mode)
    gov = Governor(Policy(budgets=[Budget(max_usd=1)]))
    agent = govern(_graph(call, use_async=use_async), gov)
    if use_async:
        asyncio.run(agent.ainvoke({"out": []}))
    else:
        agent.invoke({"out": []})
    report = agent.last_report
    assert report is not None
    assert len(stub.requests) == CALLS
    assert (report.calls, report.cost_usd) == (CALLS, CALLS * CALL_COST)
    balance = gov.ledger.balance(f"task:{report.task_id}")
    assert balance is not None
    assert balance.spent_nanos * Decimal("1e-9") == CALLS * CALL_COST
    expected = 0 if mode in ("plain", "no_callbacks") else CALLS
    assert (tracer.starts, tracer.ends) == (expected, expected)


def test_a_stream_of_the_graph_governs_a_node_with_its_own_callbacks(
    stub: StubServer,
) -> None:
    """``stream()`` sets the run's handler while the graph computes."""
    tracer = Tracer()
    gov = Governor(Policy(budgets=[Budget(max_usd="0.025")]))
    agent = govern(_graph(_call(_model(stub), tracer, "own_callbacks")), gov)
    with pytest.raises(BudgetExceeded):
        for _ in agent.stream({"out": []}):
            pass
    report = agent.last_report
    assert report is not None
    assert (len(stub.requests), report.calls) == (2, 2)


@pytest.mark.parametrize("mode", MODES)
def test_nested_governed_graphs_charge_each_call_once(
    stub: StubServer, mode: str
) -> None:
    """A sub-agent's calls are its own task's, the outer node's the outer's,
    each charged once, though every node passes callbacks of its own."""
    tracer = Tracer()
    model = _model(stub)
    call = _call(model, tracer, mode)
    gov = Governor(Policy(budgets=[Budget(max_usd=1)]))
    inner = govern(_graph(call), gov)

    def outer_node(state: State) -> dict[str, list[str]]:
        first = str(call("outer before").content)
        answers = inner.invoke({"out": []})["out"]
        return {"out": [first, *answers, str(call("outer after").content)]}

    outer_graph = StateGraph(State)
    outer_graph.add_node("outer", outer_node)
    outer_graph.add_edge(START, "outer")
    outer_graph.add_edge("outer", END)
    outer = govern(outer_graph.compile(), gov)
    outer.invoke({"out": []})
    inner_report, outer_report = inner.last_report, outer.last_report
    assert inner_report is not None
    assert outer_report is not None
    assert len(stub.requests) == CALLS + 2
    assert (inner_report.calls, outer_report.calls) == (CALLS, 2)
    assert inner_report.cost_usd == CALLS * CALL_COST
    assert outer_report.cost_usd == 2 * CALL_COST
    # The parent's budget line gets its own calls and the sub-agent's, once.
    parent_line = gov.ledger.balance(f"task:{outer_report.task_id}")
    assert parent_line is not None
    assert parent_line.spent_nanos * Decimal("1e-9") == (CALLS + 2) * CALL_COST


@pytest.mark.parametrize(
    ("settings", "sent"),
    [
        ({"model_kwargs": {"n": 5}}, {"n": 5}),
        ({"n": 5}, {"n": 5}),
        (
            {"max_tokens": 100, "model_kwargs": {"max_completion_tokens": 3000}},
            {"max_tokens": 100, "max_completion_tokens": 3000},
        ),
    ],
    ids=["n_in_model_kwargs", "n_field", "max_completion_tokens_in_model_kwargs"],
)
def test_model_kwargs_are_reserved_for(
    stub: StubServer, settings: dict[str, Any], sent: dict[str, Any]
) -> None:
    """Five answers of up to 1,000 tokens, or one of up to 3,000, do not
    fit $0.02: the call is refused before it is sent."""
    model = _model(stub, **settings)
    gov = Governor(Policy(budgets=[Budget(max_usd="0.02")]))
    agent = govern(_graph(_call(model, Tracer(), "plain")), gov)
    with pytest.raises(BudgetExceeded):
        agent.invoke({"out": []})
    assert stub.requests == []
    # Within a budget the call goes out with those settings.
    roomy = govern(_graph(_call(model, Tracer(), "plain")), Governor())
    roomy.invoke({"out": []})
    body = stub.requests[0].body
    assert {key: body.get(key) for key in sent} == sent


@pytest.mark.parametrize("mode", MODES)
def test_a_call_with_the_nodes_own_callbacks_is_in_the_node_span(
    stub: StubServer, capture: SpanCapture, mode: str
) -> None:
    """Such a call has no LangChain parent run; its span is the node's child."""
    gov = Governor(Policy(), tracer_provider=capture.provider)
    agent = govern(_graph(_call(_model(stub), Tracer(), mode)), gov)
    agent.invoke({"out": []})
    (node,) = capture.named(attr.SPAN_NODE_PREFIX)
    calls = capture.calls()
    assert len(calls) == CALLS
    assert {call.parent.span_id for call in calls if call.parent} == {
        node.context.span_id
    }
