"""`governor demo` runs the example agents offline and stops the small budget."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import pytest

from governor.cli import main
from governor.spend import open_store
from governor.telemetry import attributes as attr
from governor.telemetry import read_spans


@pytest.fixture(autouse=True)
def _cwd_stays_clean(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> Iterator[None]:
    """Each test runs in an empty folder and must leave no ./.governor there.

    The demo writes spans and spend records to ./.governor/ by default: a test
    that forgot --traces or --spend-db would write into the user's own files.
    """
    cwd = tmp_path_factory.mktemp("cwd")
    monkeypatch.chdir(cwd)
    yield
    assert not (cwd / ".governor").exists(), "a test wrote the default ./.governor"


def _demo(tmp_path: Path, *extra: str) -> int:
    """Run the demo instantly with its spans and spend records under tmp_path."""
    return main(
        [
            "demo",
            "--speed",
            "0",
            "--traces",
            str(tmp_path / "traces.jsonl"),
            "--spend-db",
            str(tmp_path / "spend.sqlite3"),
            *extra,
        ]
    )


def test_demo_runs_every_agent_and_stops_the_underfunded_task(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Each agent completes its task; the $0.001 task is stopped within budget."""
    traces = tmp_path / "traces.jsonl"
    code = _demo(tmp_path, "--count", "1", "--json")
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    assert result["spend"] == str(tmp_path / "spend.sqlite3")
    store = open_store(result["spend"], existing=True)
    try:
        recorded = {record.task_id for record in store.query()}
    finally:
        store.close()
    assert recorded <= {row["task_id"] for row in result["tasks"]}
    assert recorded
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


@pytest.mark.parametrize("speed", ["inf", "-inf", "nan", "-1", "fast"])
def test_demo_refuses_a_speed_it_cannot_sleep(
    speed: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--speed must be a finite number >= 0; anything else is a usage error."""
    with pytest.raises(SystemExit) as exit_info:
        _demo(tmp_path, "--count", "1", "--json", f"--speed={speed}")
    assert exit_info.value.code == 2
    err = json.loads(capsys.readouterr().out)["error"]["message"]  # --json
    assert "argument --speed" in err
    assert repr(speed) in err
    assert not (tmp_path / "spend.sqlite3").exists()


def test_the_totals_line_names_what_the_spend_report_also_counts() -> None:
    """The table counts calls sent; the spend report also counts cache hits
    and refused calls: the totals line says both, so the two agree."""
    from governor.cli._demo import _Row, _summary

    def row(calls: int, hits: int, refused: int) -> _Row:
        return _Row(
            agent="a",
            task_id="t",
            calls=calls,
            tokens=0,
            cost_usd="0.1",
            budget_left_usd="-",
            stop_reason="completed",
            seconds=0.0,
            cache_hits=hits,
            refused=refused,
        )

    assert _summary([row(3, 0, 0)], "0.1") == "1 tasks, 3 model calls sent, $0.1"
    assert _summary([row(4, 4, 0), row(3, 0, 1)], "0.2") == (
        "2 tasks, 7 model calls sent, $0.2; 4 answered from the cache and 1 "
        "refused before sending (the spend report counts all 12)"
    )


def test_a_warning_to_the_same_pipe_starts_its_own_line(tmp_path: Path) -> None:
    """stdout and stderr into one pipe (2>&1 | less): the loop guard's
    warning does not land inside the runaway agent's progress line."""
    files = [
        "--traces",
        str(tmp_path / "t.jsonl"),
        "--spend-db",
        str(tmp_path / "s.db"),
    ]
    shown = subprocess.run(
        [
            sys.executable,
            "-m",
            "governor",
            "demo",
            "--speed",
            "0",
            "--count",
            "1",
            *files,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=120,  # a hang guard
        check=True,
    ).stdout.splitlines()
    progress = [line for line in shown if "rerun the same failing tests" in line]
    warnings = [line for line in shown if "WARNING governor._loopwatch" in line]
    assert len(progress) == 1
    assert len(warnings) == 1
    assert progress[0].rstrip().endswith("rerun the same failing tests forever")
