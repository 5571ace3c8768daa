"""A map-reduce research agent over HotpotQA multi-hop questions.

The graph plans sub-questions with a cheap model, researches each in its own
Send branch (fan-out), and writes the answer with a stronger model. Every model
call goes through LangChain's ChatLiteLLM, so the governor sees it through
LangGraph's callbacks.

Run it alone:  python examples/agents/research.py
Offline by default; ``GOVERNOR_PROVIDER=live`` sends the same calls to the
real models (set the provider's API key).
"""

from __future__ import annotations

import operator
import re
from typing import Annotated, Any, TypedDict

from langchain_core.messages import HumanMessage, SystemMessage
from langgraph.graph import END, START, StateGraph
from langgraph.types import Send

from governor import Attribution, Budget, Fanout, Loops, Policy
from governor.testing import OfflineAnswer, load_prompts, offline_model

PLANNER = "gpt-4o-mini"
RESEARCHER = "gpt-4o-mini"
WRITER = "gpt-4o"

POLICY = Policy(
    name="research",
    budgets=[Budget(max_usd="0.02")],
    attribution=Attribution(team="research", feature="multi-hop-qa"),
    loops=Loops(max_model_calls=12),
    fanout=Fanout(max_inflight_calls=4),
)
"""Two cents and twelve model calls per question, four calls in flight."""

_PLAN_PROMPT = (
    "You plan research. Split the question into at most three short, "
    "self-contained sub-questions, one per line, nothing else."
)
_RESEARCH_PROMPT = "You research one sub-question. Answer in two sentences."
_WRITE_PROMPT = (
    "You write the final answer from research notes. Reply with a short "
    "answer, then one sentence of justification."
)


class ResearchState(TypedDict, total=False):
    question: str
    sub_questions: list[str]
    notes: Annotated[list[str], operator.add]
    answer: str


class BranchState(TypedDict):
    question: str
    sub_question: str


def build_graph(chat_model: Any = None) -> Any:
    """Compile the research graph; ``chat_model(name, max_tokens)`` builds models."""
    make = chat_model or _chat_litellm
    planner = make(PLANNER, 200)
    researcher = make(RESEARCHER, 200)
    writer = make(WRITER, 300)

    def plan(state: ResearchState) -> ResearchState:
        reply = planner.invoke(
            [SystemMessage(_PLAN_PROMPT), HumanMessage(state["question"])]
        )
        lines = [s.strip(" -*") for s in str(reply.content).splitlines()]
        return {"sub_questions": [s for s in lines if s][:3]}

    def fan_out(state: ResearchState) -> list[Send]:
        return [
            Send("research", {"question": state["question"], "sub_question": s})
            for s in state["sub_questions"]
        ]

    def research(state: BranchState) -> ResearchState:
        reply = researcher.invoke(
            [SystemMessage(_RESEARCH_PROMPT), HumanMessage(state["sub_question"])]
        )
        return {"notes": [f"{state['sub_question']} -> {reply.content}"]}

    def write(state: ResearchState) -> ResearchState:
        notes = "\n".join(state.get("notes", []))
        prompt = f"Question: {state['question']}\nNotes:\n{notes}"
        reply = writer.invoke([SystemMessage(_WRITE_PROMPT), HumanMessage(prompt)])
        return {"answer": str(reply.content)}

    graph = StateGraph(ResearchState)
    graph.add_node("plan", plan)
    graph.add_node("research", research)
    graph.add_node("write", write)
    graph.add_edge(START, "plan")
    graph.add_conditional_edges("plan", fan_out, ["research"])
    graph.add_edge("research", "write")
    graph.add_edge("write", END)
    return graph.compile()


def questions(count: int) -> list[dict[str, Any]]:
    """The first ``count`` HotpotQA dev questions shipped with the governor."""
    return load_prompts("hotpotqa")[:count]


def _chat_litellm(model: str, max_tokens: int) -> Any:
    from langchain_litellm import ChatLiteLLM

    return ChatLiteLLM(model=offline_model(model), max_tokens=max_tokens)


# -- the offline script: what the stand-in models answer ---------------------

_GOLD: dict[str, str] = {}


def offline_responder(
    model: str, messages: list[dict[str, Any]], tools: Any
) -> str | OfflineAnswer | None:
    """Answer this agent's prompts offline; None leaves other prompts alone."""
    system = str(messages[0].get("content", "")) if messages else ""
    user = str(messages[-1].get("content", ""))
    if system == _PLAN_PROMPT:
        return "\n".join(_sub_questions(user))
    if system == _RESEARCH_PROMPT:
        return (
            f"Sources agree on the facts asked about in '{user}'. "
            "The notes below record them for the writer."
        )
    if system == _WRITE_PROMPT:
        question = user.split("\n", 1)[0].removeprefix("Question: ")
        gold = _gold().get(question, "unknown")
        return f"{gold}. The research notes support this answer."
    return None


def _sub_questions(question: str) -> list[str]:
    names = re.findall(
        r"(?:[A-Z][\w'.-]+(?:\s+(?:of|the|and)?\s*[A-Z][\w'.-]+)*)", question
    )
    entities = [n for n in dict.fromkeys(names) if n.lower() not in {"what", "which"}]
    asks = [f"What is known about {name}?" for name in entities[:2]]
    return [*asks, question][:3]


def _gold() -> dict[str, str]:
    if not _GOLD:
        _GOLD.update({q["question"]: q["answer"] for q in load_prompts("hotpotqa")})
    return _GOLD


if __name__ == "__main__":
    from governor import Governor, govern
    from governor.testing import install_offline_provider

    install_offline_provider(offline_responder)
    agent = govern(build_graph(), Governor(POLICY))
    for item in questions(2):
        result = agent.invoke({"question": item["question"]})
        report = agent.last_report
        assert report is not None
        print(f"{item['question']}\n  -> {result['answer']}")
        print(f"  {report.calls} calls, ${report.cost_usd}")
