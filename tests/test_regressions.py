"""Defects found by trying the governor as a new user would, kept fixed."""

from __future__ import annotations

import asyncio
import operator
import sqlite3
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any, TypedDict

import litellm
import pytest
from langgraph.graph import END, START, StateGraph

from governor import (
    Attribution,
    Budget,
    BudgetExceeded,
    ConfigError,
    Governor,
    Policy,
    PolicyError,
    Price,
    Pricing,
    govern,
)
from governor.adapters.litellm import GovernedLiteLLM
from governor.cli import main


def images(count: int) -> list[dict[str, Any]]:
    parts: list[dict[str, Any]] = [{"type": "text", "text": "Describe these."}]
    url = {"url": "https://example.invalid/cat.png"}
    parts += [{"type": "image_url", "image_url": url} for _ in range(count)]
    return [{"role": "user", "content": parts}]


def test_images_are_reserved_by_size_not_by_url_length() -> None:
    """Twenty images need far more room than a 100-token budget: refused."""
    sent: list[int] = []

    def provider(**kwargs: Any) -> Any:
        sent.append(1)
        return litellm.completion(**kwargs)

    gov = Governor(Policy(budgets=[Budget(max_tokens=100)]))
    llm = GovernedLiteLLM(gov, completion=provider)
    with pytest.raises(BudgetExceeded), gov.task():
        llm.completion(
            model="gpt-4o-mini", messages=images(20), mock_response="x", max_tokens=10
        )
    assert sent == []


def test_tools_keep_the_prompt_bound_when_counting() -> None:
    """Tool schemas count towards the prompt, so a big schema is refused."""
    tool = {
        "type": "function",
        "function": {
            "name": "lookup",
            "description": "word " * 400,
            "parameters": {"type": "object", "properties": {}},
        },
    }
    gov = Governor(Policy(budgets=[Budget(max_tokens=100)]))
    with pytest.raises(BudgetExceeded), gov.task():
        GovernedLiteLLM(gov).completion(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": "hi"}],
            tools=[tool],
            mock_response="x",
            max_tokens=10,
        )


def test_n_choices_multiply_the_output_reservation() -> None:
    """n=8 reserves eight answers' worth of output."""
    gov = Governor()
    request_kwargs = {
        "model": "gpt-4o-mini",
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 100,
    }
    from governor.adapters.litellm import _request

    one = gov.begin_call(_request(request_kwargs))
    eight = gov.begin_call(_request({**request_kwargs, "n": 8}))
    out_price = 100 * Decimal("0.6e-6")
    assert eight.hold_nanos - one.hold_nanos == int(7 * out_price * 10**9)
    assert eight.hold_tokens - one.hold_tokens == 700


def test_per_second_prices_reserve_the_call_time() -> None:
    """A model priced per second reserves Policy.max_call_s of time."""
    price = Price(usd_per_second="0.01")
    policy = Policy(
        pricing=Pricing(overrides={"selfhosted/llama": price}),
        budgets=[Budget(max_usd="0.5")],
        max_call_s=60,
    )
    gov = Governor(policy)
    with pytest.raises(BudgetExceeded) as info, gov.task():
        GovernedLiteLLM(gov).completion(
            model="selfhosted/llama",
            messages=[{"role": "user", "content": "hi"}],
            mock_response="x",
            max_tokens=10,
        )
    assert info.value.requested >= Decimal("0.6")
    assert "priced per second" in str(info.value)
    assert "Policy.max_call_s (60 s)" in str(info.value)


@pytest.mark.parametrize("bad", [-(10**8), 0, 2.5, True, False])
def test_bad_max_tokens_is_refused(bad: Any) -> None:
    """max_tokens must be a positive whole number; nothing is reserved."""
    gov = Governor(Policy(budgets=[Budget(scope="team", max_usd="0.001")]))
    refusal = pytest.raises(ConfigError, match="max_tokens must be a positive")
    with refusal, gov.task(team="x"):
        GovernedLiteLLM(gov).completion(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": "hi"}],
            mock_response="x",
            max_tokens=bad,
        )
    assert gov.ledger.balance("team:x") is None


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ({"max_completion_tokens": True}, "max_tokens must be a positive"),
        ({"n": True, "max_tokens": 10}, "n must be a positive"),
        ({"n": 0, "max_tokens": 10}, "n must be a positive"),
        ({"n": False, "max_tokens": 10}, "n must be a positive"),
        (
            {"max_tokens": 100, "max_completion_tokens": True},
            "max_tokens must be a positive",
        ),
    ],
)
def test_a_bool_for_a_token_count_or_n_is_refused_unsent(
    setting: dict[str, Any], message: str
) -> None:
    """True is not a count: refused before anything is reserved or sent."""
    sent: list[dict[str, Any]] = []

    def provider(**kwargs: Any) -> Any:
        sent.append(kwargs)
        return litellm.completion(**kwargs)

    gov = Governor(Policy(budgets=[Budget(scope="team", max_usd="1")]))
    llm = GovernedLiteLLM(gov, completion=provider)
    with pytest.raises(ConfigError, match=message), gov.task(team="x"):
        llm.completion(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": "hi"}],
            mock_response="x",
            **setting,
        )
    assert (sent, gov.ledger.balance("team:x")) == ([], None)


class State(TypedDict):
    items: list[str]
    answers: Annotated[list[str], operator.add]


def chat_graph(text: str) -> Any:
    from test_langgraph_adapter import ScriptedChatModel

    model = ScriptedChatModel(answer=text)

    def node(state: State) -> dict[str, list[str]]:
        return {"answers": [str(model.invoke("q").content)]}

    graph = StateGraph(State)
    graph.add_node("node", node)
    graph.add_edge(START, "node")
    graph.add_edge("node", END)
    return graph.compile()


def test_nested_governed_graphs_charge_each_call_once() -> None:
    """A sub-agent's call is charged once, to the sub-task and the parent budget."""
    gov = Governor(Policy(budgets=[Budget(max_usd=1)]))
    inner = govern(chat_graph("inner"), gov)

    def outer_node(state: State) -> dict[str, list[str]]:
        return {"answers": inner.invoke({"items": [], "answers": []})["answers"]}

    outer_graph = StateGraph(State)
    outer_graph.add_node("outer", outer_node)
    outer_graph.add_edge(START, "outer")
    outer_graph.add_edge("outer", END)
    outer = govern(outer_graph.compile(), gov)
    outer.invoke({"items": [], "answers": []})
    inner_report, outer_report = inner.last_report, outer.last_report
    assert inner_report is not None
    assert outer_report is not None
    assert (inner_report.calls, outer_report.calls) == (1, 0)
    parent_line = gov.ledger.balance(f"task:{outer_report.task_id}")
    assert parent_line is not None
    assert parent_line.spent_nanos * Decimal("1e-9") == inner_report.cost_usd


def test_with_config_and_events_stay_governed() -> None:
    """with_config() and astream_events() run under the governor's budget."""
    gov = Governor(Policy(budgets=[Budget(max_usd="0.00001")]))
    graph = govern(chat_graph("x"), gov)
    with pytest.raises(BudgetExceeded):
        graph.with_config({"tags": ["t"]}).invoke({"items": [], "answers": []})

    async def events() -> None:
        async for _ in graph.astream_events({"items": [], "answers": []}):
            pass

    with pytest.raises(BudgetExceeded):
        asyncio.run(events())


def test_ungoverned_runnable_methods_are_refused() -> None:
    """Methods that would run the graph around the governor raise instead."""
    graph = govern(chat_graph("x"), Governor())
    with pytest.raises(AttributeError, match="without the governor"):
        graph.astream_log  # noqa: B018


def test_batch_can_return_exceptions() -> None:
    """batch(return_exceptions=True) returns a refusal in the failing slot."""
    gov = Governor(Policy(budgets=[Budget(max_usd="0.00001")]))
    graph = govern(chat_graph("x"), gov)
    out = graph.batch([{"items": [], "answers": []}], return_exceptions=True)
    assert isinstance(out[0], BudgetExceeded)


def test_stream_is_an_iterator_and_an_unread_stream_is_settled() -> None:
    """next() works on a governed stream; a dropped one frees its hold."""
    gov = Governor(Policy(budgets=[Budget(max_usd=1)]))
    llm = GovernedLiteLLM(gov)
    kwargs: dict[str, Any] = {
        "model": "gpt-4o-mini",
        "messages": [{"role": "user", "content": "hi"}],
        "mock_response": "hello there",
        "max_tokens": 20,
        "stream": True,
    }
    with gov.task() as task:
        first = next(llm.completion(**kwargs))
        unread = llm.completion(**kwargs)
        unread.close()
    assert first.choices[0].delta.content
    balance = gov.ledger.balance(f"task:{task.id}")
    assert balance is not None
    assert balance.reserved_nanos == 0


def test_hash_in_an_attribution_value_is_refused() -> None:
    """'#' separates a line key from its window, so names may not hold it."""
    with pytest.raises(PolicyError, match="without '#'"):
        Attribution(team="search#eu")


def test_report_leaves_a_foreign_sqlite_file_alone(tmp_path: Path) -> None:
    """governor report on an unrelated SQLite file refuses and changes nothing."""
    path = tmp_path / "app.sqlite3"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE customers (id INTEGER)")
    before = path.read_bytes()
    assert main(["report", "--db", str(path)]) == 1
    assert path.read_bytes() == before


def test_governor_refuses_a_budget_in_place_of_a_policy() -> None:
    """Governor(Budget(...)) says to wrap it in a Policy."""
    with pytest.raises(TypeError, match="takes a Policy"):
        Governor(Budget(max_usd=1))  # type: ignore[arg-type]


def test_single_budget_is_accepted_by_policy() -> None:
    """Policy(budgets=Budget(...)) is read as a list of one."""
    assert len(Policy(budgets=Budget(max_usd=1)).budgets) == 1  # type: ignore[arg-type]


def test_sync_node_in_an_async_graph_is_refused() -> None:
    """In ainvoke, a sync node's over-budget call raises instead of running."""
    gov = Governor(Policy(budgets=[Budget(max_usd="0.00001")]))
    graph = govern(chat_graph("x"), gov)
    with pytest.raises(BudgetExceeded):
        asyncio.run(graph.ainvoke({"items": [], "answers": []}))


def test_sync_call_inside_an_async_node_is_governed_once() -> None:
    """A blocking model call inside an async node is charged exactly once."""
    from test_langgraph_adapter import ScriptedChatModel

    model = ScriptedChatModel(answer="x")

    async def node(state: State) -> dict[str, list[str]]:
        return {"answers": [str(model.invoke("q").content)]}

    builder = StateGraph(State)
    builder.add_node("node", node)
    builder.add_edge(START, "node")
    builder.add_edge("node", END)
    graph = govern(builder.compile(), Governor())
    asyncio.run(graph.ainvoke({"items": [], "answers": []}))
    report = graph.last_report
    assert report is not None
    assert report.calls == 1


def test_sub_agent_under_the_same_caps_does_not_deadlock() -> None:
    """A governed agent calling a governed sub-agent never waits on its own slot."""
    from governor import Fanout

    policy = Policy(
        fanout=Fanout(max_inflight_calls=1, scope_caps={"team": 1}, wait_timeout_s=5)
    )
    gov = Governor(policy)
    inner = govern(chat_graph("inner"), gov)
    from test_langgraph_adapter import ScriptedChatModel

    model = ScriptedChatModel(answer="outer")

    def outer_node(state: State) -> dict[str, list[str]]:
        first = str(model.invoke("q").content)
        nested = inner.invoke({"items": [], "answers": []}, {"metadata": {"team": "a"}})
        return {"answers": [first, *nested["answers"]]}

    builder = StateGraph(State)
    builder.add_node("outer", outer_node)
    builder.add_edge(START, "outer")
    builder.add_edge("outer", END)
    outer = govern(builder.compile(), gov)
    out = outer.invoke({"items": [], "answers": []}, {"metadata": {"team": "a"}})
    assert out["answers"] == ["outer", "inner"]
