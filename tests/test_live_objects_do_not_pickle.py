"""Live objects refuse pickling with a message that names them and the way out."""

from __future__ import annotations

import pickle
from typing import Any, TypedDict

import pytest
from langgraph.graph import END, START, StateGraph

from governor import Governor, Policy, govern
from governor.adapters.litellm import GovernedLiteLLM


class _State(TypedDict):
    n: int


def _graph() -> Any:
    builder = StateGraph(_State)
    builder.add_node("step", lambda state: {"n": state["n"] + 1})
    builder.add_edge(START, "step")
    builder.add_edge("step", END)
    return builder.compile()


def test_each_live_object_names_itself_and_what_to_send_instead() -> None:
    gov = Governor(Policy())
    with gov.task("t-1") as task:
        live = {
            "a Governor cannot": (gov, "Governor(policy, ...)"),
            "a Task cannot": (task, "task.report()"),
            "a GovernedLiteLLM cannot": (
                GovernedLiteLLM(gov),
                "GovernedLiteLLM(Governor(policy, ...))",
            ),
            "a GovernedGraph cannot": (
                govern(_graph(), gov),
                "govern(graph, Governor(policy, ...))",
            ),
        }
        for start, (obj, advice) in live.items():
            with pytest.raises(TypeError) as raised:
                pickle.dumps(obj)
            assert str(raised.value).startswith(start)
            assert advice in str(raised.value)

        report = pickle.loads(pickle.dumps(task.report()))
    assert report.task_id == "t-1"
