"""A help-desk agent whose users ask the same questions again and again.

One session answers a queue of HotpotQA questions in which each comes back
later, retyped with stray spaces, as users do. The policy turns the
response cache on: a repeat is answered from cache at no cost, and the task's
report shows the hits and the money saved.

Run it alone:  python examples/agents/faq.py
"""

from __future__ import annotations

from typing import Any, TypedDict

from langgraph.graph import END, START, StateGraph

from governor import Attribution, Budget, Cache, Policy
from governor.testing import load_prompts, offline_model

MODEL = "gpt-4o"

POLICY = Policy(
    name="faq",
    budgets=[Budget(max_usd="0.05")],
    attribution=Attribution(team="support", feature="faq"),
    cache=Cache(),
)
"""Five cents per session, answers cached per team."""

_SYSTEM = "You answer help-desk questions in one short sentence."


class FaqState(TypedDict, total=False):
    questions: list[str]
    answers: list[str]


def build_graph(llm: Any) -> Any:
    """Compile the FAQ graph around a ``GovernedLiteLLM``."""

    def answer_all(state: FaqState) -> FaqState:
        answers = []
        for question in state["questions"]:
            reply = llm.completion(
                model=offline_model(MODEL),
                messages=[
                    {"role": "system", "content": _SYSTEM},
                    {"role": "user", "content": question},
                ],
                max_tokens=80,
            )
            answers.append(str(reply.choices[0].message.content))
        return {"answers": answers}

    graph = StateGraph(FaqState)
    graph.add_node("answer_all", answer_all)
    graph.add_edge(START, "answer_all")
    graph.add_edge("answer_all", END)
    return graph.compile()


def session(distinct: int) -> FaqState:
    """A queue of ``distinct`` questions, each asked again with stray spaces."""
    asked = [q["question"] for q in load_prompts("hotpotqa")[:distinct]]
    again = ["  " + " ".join(q.split()).replace(" ", "  ", 1) + " " for q in asked]
    return {"questions": [*asked, *again]}


def offline_responder(
    model: str, messages: list[dict[str, Any]], tools: Any
) -> str | None:
    """Answer with the data set's gold answer."""
    if not messages or messages[0].get("content") != _SYSTEM:
        return None
    question = " ".join(str(messages[-1].get("content", "")).split()).lower()
    for item in load_prompts("hotpotqa"):
        if item["question"].lower() == question:
            return f"The answer is {item['answer']}."
    return "I do not know."


if __name__ == "__main__":
    from governor import Governor, govern
    from governor.adapters.litellm import GovernedLiteLLM
    from governor.testing import install_offline_provider

    install_offline_provider(offline_responder)
    gov = Governor(POLICY)
    agent = govern(build_graph(GovernedLiteLLM(gov)), gov)
    agent.invoke(session(3))
    report = agent.last_report
    assert report is not None
    print(
        f"{report.calls} calls, {report.cache_hits} cache hits, "
        f"${report.cost_usd} spent, ${report.saved_usd} saved"
    )
