"""A runaway agent: it reruns the same failing test and never changes anything.

The model keeps asking for ``run_tests`` with the same arguments, the tool
keeps returning the same failure, and the graph's edges would let it go on
until LangGraph's recursion limit (10,007 steps by default). The governor's
loop guard stops it, by default, after a few identical repeats, before the
next paid call.

Run it alone:  python examples/agents/runaway.py
"""

from __future__ import annotations

from typing import Annotated, Any, TypedDict

from langchain_core.messages import AnyMessage, HumanMessage, SystemMessage
from langchain_core.tools import tool
from langgraph.graph import START, StateGraph
from langgraph.graph.message import add_messages
from langgraph.prebuilt import ToolNode, tools_condition

from governor import Attribution, Budget, Policy
from governor.testing import OfflineAnswer, offline_model

MODEL = "gpt-4o-mini"

POLICY = Policy(
    name="runaway",
    budgets=[Budget(max_usd="0.05")],
    attribution=Attribution(team="platform", feature="ci-fixer"),
)
"""Five cents and the default loop rules; no step or call ceiling is set."""

_SYSTEM = "You fix failing tests. Run the tests with run_tests until they pass."


@tool
def run_tests(path: str) -> str:
    """Run the test suite under ``path`` and return its summary."""
    return f"FAILED {path}/test_parser.py::test_empty_input - AssertionError"


class FixState(TypedDict):
    messages: Annotated[list[AnyMessage], add_messages]


def build_graph(chat_model: Any = None) -> Any:
    """Compile the looping graph; ``chat_model(name, max_tokens)`` builds it."""
    make = chat_model or _chat_litellm
    model = make(MODEL, 128).bind_tools([run_tests])

    def agent(state: FixState) -> FixState:
        return {"messages": [model.invoke(state["messages"])]}

    graph = StateGraph(FixState)
    graph.add_node("agent", agent)
    graph.add_node("tools", ToolNode([run_tests]))
    graph.add_edge(START, "agent")
    graph.add_conditional_edges("agent", tools_condition)
    graph.add_edge("tools", "agent")
    return graph.compile()


def task_input() -> FixState:
    """The one task this agent is given."""
    return {
        "messages": [
            SystemMessage(_SYSTEM),
            HumanMessage("The parser tests fail on empty input. Make them pass."),
        ]
    }


def _chat_litellm(model: str, max_tokens: int) -> Any:
    from langchain_litellm import ChatLiteLLM

    return ChatLiteLLM(model=offline_model(model), max_tokens=max_tokens)


def offline_responder(
    model: str, messages: list[dict[str, Any]], tools: Any
) -> str | OfflineAnswer | None:
    """Always ask to run the same tests again: the loop a real agent falls into."""
    if not messages or messages[0].get("content") != _SYSTEM:
        return None
    call = {"name": "run_tests", "arguments": {"path": "tests/parser"}}
    return OfflineAnswer(tool_calls=[call])


if __name__ == "__main__":
    from governor import Governor, govern
    from governor.loops import LoopDetected
    from governor.testing import install_offline_provider

    install_offline_provider(offline_responder)
    agent = govern(build_graph(), Governor(POLICY))
    try:
        agent.invoke(task_input())
    except LoopDetected as stop:
        print(f"stopped: {stop}")
    report = agent.last_report
    assert report is not None
    print(f"{report.calls} calls, ${report.cost_usd}, stop: {report.stop_reason}")
