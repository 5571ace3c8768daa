"""A tool-using agent that solves GSM8K word problems with a calculator.

A ReAct-style LangGraph graph: the model either calls the ``calculate`` tool
or answers; a ToolNode runs the tool and hands the result back. The policy caps
model calls per task, so a model that keeps calling tools cannot loop forever.

Run it alone:  python examples/agents/math_tools.py
"""

from __future__ import annotations

import ast
import operator
import re
from typing import Annotated, Any, TypedDict

from langchain_core.messages import AnyMessage, HumanMessage, SystemMessage
from langchain_core.tools import tool
from langgraph.graph import START, StateGraph
from langgraph.graph.message import add_messages
from langgraph.prebuilt import ToolNode, tools_condition

from governor import Attribution, Budget, Loops, Policy
from governor.testing import OfflineAnswer, load_prompts, offline_model

MODEL = "gpt-4o-mini"

POLICY = Policy(
    name="math-tools",
    budgets=[Budget(max_usd="0.005"), Budget(scope="team", max_usd="1.00")],
    attribution=Attribution(team="tutoring", feature="math-help"),
    loops=Loops(max_model_calls=10),
)
"""Half a cent and ten model calls per problem; a dollar for the whole team."""

_SYSTEM = (
    "You solve math word problems. Use the calculate tool for every "
    "arithmetic step, then reply 'The answer is N.'"
)

_OPS: dict[type, Any] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.Pow: operator.pow,
    ast.USub: operator.neg,
}


@tool
def calculate(expression: str) -> str:
    """Evaluate an arithmetic expression with + - * / ** and parentheses."""
    try:
        value = _evaluate(ast.parse(expression, mode="eval").body)
    except (SyntaxError, ValueError, ZeroDivisionError) as exc:
        return f"error: {exc}"
    return f"{value:g}"


def _evaluate(node: ast.AST) -> float:
    if isinstance(node, ast.Constant) and isinstance(node.value, int | float):
        return float(node.value)
    if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
        return float(_OPS[type(node.op)](_evaluate(node.left), _evaluate(node.right)))
    if isinstance(node, ast.UnaryOp) and type(node.op) in _OPS:
        return float(_OPS[type(node.op)](_evaluate(node.operand)))
    raise ValueError("only numbers and + - * / ** are allowed")


class MathState(TypedDict):
    messages: Annotated[list[AnyMessage], add_messages]


def build_graph(chat_model: Any = None) -> Any:
    """Compile the tool-using graph; ``chat_model(name, max_tokens)`` builds it."""
    make = chat_model or _chat_litellm
    model = make(MODEL, 256).bind_tools([calculate])

    def agent(state: MathState) -> MathState:
        return {"messages": [model.invoke(state["messages"])]}

    graph = StateGraph(MathState)
    graph.add_node("agent", agent)
    graph.add_node("tools", ToolNode([calculate]))
    graph.add_edge(START, "agent")
    graph.add_conditional_edges("agent", tools_condition)
    graph.add_edge("tools", "agent")
    return graph.compile()


def task_input(problem: dict[str, Any]) -> MathState:
    """The graph input for one GSM8K problem."""
    return {"messages": [SystemMessage(_SYSTEM), HumanMessage(problem["question"])]}


def problems(count: int) -> list[dict[str, Any]]:
    """The first ``count`` GSM8K test problems shipped with the governor."""
    return load_prompts("gsm8k")[:count]


def _chat_litellm(model: str, max_tokens: int) -> Any:
    from langchain_litellm import ChatLiteLLM

    return ChatLiteLLM(model=offline_model(model), max_tokens=max_tokens)


# -- the offline script: the worked solution's calculator steps --------------

_STEPS: dict[str, tuple[list[str], str]] = {}


def offline_responder(
    model: str, messages: list[dict[str, Any]], tools: Any
) -> str | OfflineAnswer | None:
    """Replay GSM8K's annotated calculator steps as tool calls, then answer."""
    if not messages or messages[0].get("content") != _SYSTEM:
        return None
    question = next(str(m.get("content")) for m in messages if m.get("role") == "user")
    steps, final = _solution(question)
    done = sum(1 for m in messages if m.get("role") == "tool")
    if done < len(steps):
        call = {"name": "calculate", "arguments": {"expression": steps[done]}}
        return OfflineAnswer(tool_calls=[call])
    return f"The answer is {final}."


def _solution(question: str) -> tuple[list[str], str]:
    if not _STEPS:
        for item in load_prompts("gsm8k"):
            # GSM8K marks each calculator step as <<expression=result>>.
            steps = re.findall(r"<<([^=>]+)=", item["answer"])
            _STEPS[item["question"]] = (steps, item["final_answer"])
    return _STEPS.get(question, ([], "unknown"))


if __name__ == "__main__":
    from governor import Governor, govern
    from governor.testing import install_offline_provider

    install_offline_provider(offline_responder)
    agent = govern(build_graph(), Governor(POLICY))
    for item in problems(2):
        result = agent.invoke(task_input(item))
        report = agent.last_report
        assert report is not None
        print(f"{item['question'][:70]}...\n  -> {result['messages'][-1].content}")
        print(f"  {report.calls} calls, ${report.cost_usd}")
