"""`governor demo` runs the example agents offline and stops the small budget."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path

import pytest

from governor.cli import main
from governor.telemetry import attributes as attr
from governor.telemetry import read_spans


def test_demo_runs_every_agent_and_stops_the_underfunded_task(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Each agent completes its task; the $0.001 task is stopped within budget."""
    traces = tmp_path / "traces.jsonl"
    code = main(
        ["demo", "--count", "1", "--speed", "0", "--json", "--traces", str(traces)]
    )
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    rows = {row["agent"]: row for row in result["tasks"]}
    assert sorted(rows) == [
        "faq (cache)",
        "math-tools",
        "research",
        "research (budget $0.001)",
        "runaway (loop guard)",
        "triage (cascade)",
    ]
    assert rows["research"]["stop_reason"] == "completed"
    assert rows["math-tools"]["stop_reason"] == "completed"
    small = rows["research (budget $0.001)"]
    assert small["stop_reason"] == "budget_exceeded"
    assert Decimal(small["cost_usd"]) <= Decimal("0.001")
    assert "was not sent" in small["detail"]
    faq = rows["faq (cache)"]
    assert (faq["calls"], faq["cache_hits"]) == (2, 2)
    assert Decimal(faq["saved_usd"]) == Decimal(faq["cost_usd"])
    runaway = rows["runaway (loop guard)"]
    assert runaway["stop_reason"] == "loop_detected"
    assert runaway["calls"] <= 5

    spans = read_spans(traces)
    tasks = {
        s["attributes"][attr.TASK_ID]: s for s in spans if s["name"] == "governor.task"
    }
    for row in result["tasks"]:
        task_span = tasks[row["task_id"]]
        calls = [
            s
            for s in spans
            if s["name"].startswith("chat ")
            and s["attributes"][attr.TASK_ID] == row["task_id"]
        ]
        hits = [c for c in calls if c["attributes"].get(attr.CACHE_HIT)]
        assert (len(calls) - len(hits), len(hits)) == (row["calls"], row["cache_hits"])
        summed = sum(Decimal(str(c["attributes"][attr.LLM_COST_TOTAL])) for c in calls)
        assert summed == Decimal(row["cost_usd"])
        assert task_span["attributes"][attr.TASK_COST_USD] == float(row["cost_usd"])
