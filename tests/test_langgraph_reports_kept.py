"""A governed graph keeps the reports of its last 1,000 invocations only.

It kept every report: 3,000 invocations held 3,200 reports (~1.5 MiB), and
a long-lived server's graph grew without end.
"""

from __future__ import annotations

from typing import TypedDict

from langgraph.graph import END, START, StateGraph

from governor import Governor, govern


class _State(TypedDict):
    n: int


def _graph() -> object:
    builder = StateGraph(_State)
    builder.add_node("step", lambda state: {"n": state["n"] + 1})
    builder.add_edge(START, "step")
    builder.add_edge("step", END)
    return builder.compile()


def test_only_the_last_thousand_reports_are_kept() -> None:
    """1,010 invocations keep the last 1,000 reports, oldest first; a run's
    report is found by the task id it was given."""
    agent = govern(_graph(), Governor())
    for i in range(1010):
        agent.invoke({"n": i}, {"metadata": {"task_id": f"run-{i}"}})
    reports = agent.reports
    assert len(reports) == 1000
    assert [r.task_id for r in reports] == [f"run-{i}" for i in range(10, 1010)]
    assert agent.last_report is reports[-1]
    (mine,) = [r for r in agent.reports if r.task_id == "run-500"]
    assert mine.stop_reason is None
