"""The same prompt answered with the same tool calls, through LiteLLM.

An answer that only calls tools carries no text, so the same-call rule never
saw it: a history trimmed to the question and the last call with its result
sent the same prompt, got the same call and ran until the budget was spent.
"""

from __future__ import annotations

from typing import Any, TypedDict

import pytest
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from langgraph.graph import END, START, StateGraph

from governor import Governor, LoopDetected, govern
from governor.adapters.litellm import GovernedLiteLLM
from governor.testing import OfflineAnswer, install_offline_provider, offline_model


@pytest.mark.parametrize("keep", [2, 6])
def test_the_same_tool_call_to_a_trimmed_prompt_is_stopped(keep: int) -> None:
    """Question + last messages, the same lookup each time: same_call stops it."""
    sent = {"n": 0}

    def responder(model: str, messages: Any, tools: Any) -> Any:
        sent["n"] += 1
        return OfflineAnswer(tool_calls=[{"name": "lookup", "arguments": {"q": "x"}}])

    install_offline_provider(responder, speed=0)
    gov = Governor()
    llm = GovernedLiteLLM(gov)
    question = {"role": "user", "content": "find it"}
    history: list[dict[str, Any]] = []
    with gov.task() as task, pytest.raises(LoopDetected) as info:
        for _ in range(100):
            prompt = [question, *history[-keep:]]
            answer = llm.completion(model=offline_model("gpt-4o-mini"), messages=prompt)
            made = [c.model_dump() for c in answer.choices[0].message.tool_calls]
            history.append({"role": "assistant", "content": None, "tool_calls": made})
            history += [
                {"role": "tool", "tool_call_id": c["id"], "content": "not found"}
                for c in made
            ]
    assert (info.value.rule, info.value.setting) == ("same_call", "max_identical_calls")
    assert 'lookup({"q":"x"})' in str(info.value)
    # The prompt stops changing once it is full; then 12 alike calls.
    assert sent["n"] < 20
    assert task.report().stop_reason == "loop_detected"


class _Caller(BaseChatModel):
    """A chat model that answers every prompt with one tool call."""

    @property
    def _llm_type(self) -> str:
        return "caller"

    def _get_ls_params(self, stop: Any = None, **kwargs: Any) -> Any:
        return {"ls_model_name": "gpt-4o-mini", "ls_max_tokens": 20}

    def _generate(
        self, messages: list[BaseMessage], stop: Any = None, **kwargs: Any
    ) -> ChatResult:
        call = {"name": "lookup", "args": {"q": "x"}, "id": "c1"}
        message = AIMessage(content="", tool_calls=[call])
        return ChatResult(generations=[ChatGeneration(message=message)])


class _Steps(TypedDict):
    n: int


def test_a_chat_model_repeating_one_tool_call_to_one_prompt_is_stopped() -> None:
    """LangGraph adapter: the same prompt answered with the same tool call
    again and again is a same_call loop, as for LiteLLM."""
    model = _Caller()

    def ask(state: _Steps) -> _Steps:
        model.invoke("Find x.")  # one call a step, the state moves on
        return {"n": state["n"] + 1}

    def again(state: _Steps) -> str:
        return "ask" if state["n"] < 60 else END

    builder = StateGraph(_Steps)
    builder.add_node("ask", ask)
    builder.add_edge(START, "ask")
    builder.add_conditional_edges("ask", again, ["ask", END])
    agent = govern(builder.compile(), Governor())
    with pytest.raises(LoopDetected) as stopped:
        agent.invoke({"n": 0}, {"recursion_limit": 500})
    report = agent.last_report
    assert report is not None
    assert stopped.value.rule == "same_call"
    assert report.calls < 20
