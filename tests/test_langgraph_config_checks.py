"""A governed graph refuses a run config whose parts are not dicts, by name."""

from __future__ import annotations

import asyncio
from typing import Any, TypedDict

import pytest
from langgraph.graph import END, START, StateGraph

from governor import ConfigError, Governor, PolicyError, govern


class _State(TypedDict):
    n: int


def _agent(gov: Governor) -> Any:
    graph = StateGraph(_State)
    graph.add_node("step", lambda state: {"n": state["n"] + 1})
    graph.add_edge(START, "step")
    graph.add_edge("step", END)
    return govern(graph.compile(), gov)


@pytest.mark.parametrize("key", ["metadata", "configurable"])
@pytest.mark.parametrize("value", ["team=a", ["team", "a"]])
def test_metadata_or_configurable_that_is_no_dict_is_a_policy_error(
    key: str, value: Any
) -> None:
    gov = Governor()

    with pytest.raises(PolicyError, match=rf"config\['{key}'\] must be a dict"):
        _agent(gov).invoke({"n": 0}, {key: value})


def test_a_config_that_is_no_dict_is_a_config_error_naming_it() -> None:
    with pytest.raises(ConfigError, match=r"config must be a dict.*got str 'x'"):
        _agent(Governor()).invoke({"n": 0}, "x")


def test_async_runs_check_the_config_too() -> None:
    agent = _agent(Governor())

    with pytest.raises(PolicyError, match=r"config\['metadata'\]"):
        asyncio.run(agent.ainvoke({"n": 0}, {"metadata": "x"}))


def test_a_good_config_still_runs() -> None:
    result = _agent(Governor()).invoke({"n": 0}, {"metadata": {"team": "a"}})

    assert result == {"n": 1}
