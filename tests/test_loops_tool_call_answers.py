"""The same prompt answered with the same tool calls, through LiteLLM.

An answer that only calls tools carries no text, so the same-call rule never
saw it: a history trimmed to the question and the last call with its result
sent the same prompt, got the same call and ran until the budget was spent.
"""

from __future__ import annotations

from typing import Any

import pytest

from governor import Governor, LoopDetected
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
