"""`governor replay` and `governor compare` on records that `governor report`
reads: names the live governor refuses, exact quality means, plain money."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest

from governor import _replay
from governor.cli import main

TIGHT = {
    "budgets": [
        {"max_usd": "0.0005"},
        {"scope": "team", "max_usd": "0.0009", "period": "day"},
    ]
}
"""$0.0005 a task, $0.0009 a team a day: two $0.00045 calls of one team fit."""


@pytest.fixture(autouse=True)
def _fresh_warnings(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test sees the replay's once-only warnings afresh."""
    monkeypatch.setattr(_replay, "_WARNED", set())


def _trace(tmp_path: Path, lines: list[dict[str, Any]]) -> str:
    """A spend JSONL file of ``lines``, each completed to a recorded call."""
    path = tmp_path / "trace.jsonl"
    rows = []
    for i, line in enumerate(lines):
        row = {
            "v": 1,
            "ts": f"2026-12-01T23:00:{i:02d}Z",
            "call_id": f"c{i}",
            "model": "gpt-4o-mini",
            "input_tokens": 1000,
            "output_tokens": 500,
            "cost_usd": "0.00045",
            **line,
        }
        rows.append(json.dumps(row))
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return str(path)


def _policy(tmp_path: Path) -> str:
    path = tmp_path / "tight.json"
    path.write_text(json.dumps(TIGHT), encoding="utf-8")
    return str(path)


def _json_out(capsys: pytest.CaptureFixture[str]) -> Any:
    return json.loads(capsys.readouterr().out)


def test_a_usable_team_is_charged_its_team_budget(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The baseline: three tasks of team 'ab' cross its day budget once."""
    trace = _trace(tmp_path, [{"task_id": f"t{i}", "team": "ab"} for i in range(3)])
    args = ["replay", "--db", trace, "--policy", _policy(tmp_path), "--json"]
    assert main(args) == 0
    out = _json_out(capsys)
    assert (out["stopped"], out["cost_usd"]) == (1, "0.00090")


@pytest.mark.parametrize("team", ["a#b", " ab", "a\tb"])
def test_a_team_the_live_governor_refuses_is_named_not_dropped(
    team: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A recorded team the live governor refuses as a name (it never charges
    a call to it) is charged to no team, and a warning names it once, per
    value, even when compare replays twice; the warning that the tasks name
    no team, when every record names one, is not given."""
    trace = _trace(tmp_path, [{"task_id": f"t{i}", "team": team} for i in range(3)])
    policy = _policy(tmp_path)
    with caplog.at_level(logging.WARNING):
        assert main(["replay", "--db", trace, "--policy", policy, "--json"]) == 0
    out = _json_out(capsys)
    assert (out["stopped"], out["cost_usd"]) == (0, "0.00135")
    said = f"3 recorded call(s) name team {team!r}, which the live governor refuses"
    assert caplog.text.count(said) == 1
    assert "so team budgets skip them" in caplog.text
    assert "a task names no team" not in caplog.text

    caplog.clear()
    _replay._WARNED.clear()
    with caplog.at_level(logging.WARNING):
        assert main(["compare", "--db", trace, "--b", policy, "--json"]) == 0
    assert caplog.text.count(said) == 1
    assert "a task names no team" not in caplog.text


@pytest.mark.parametrize("task_id", ["job#1", "job\x01", " "])
def test_a_task_id_a_live_task_may_not_take_is_replayed(
    task_id: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A recorded task id with '#' or a control character, or a blank one,
    is replayed (not the whole store refused) and shown as recorded; its
    task budget is its own, not that of a task whose id its escaped form
    would be; --task picks it by its recorded id."""
    lines = [{"task_id": task_id}, {"task_id": "job%231"}] * 2
    trace = _trace(tmp_path, lines)
    policy = _policy(tmp_path)
    with caplog.at_level(logging.WARNING, logger="governor._replay"):
        assert main(["replay", "--db", trace, "--policy", policy, "--json"]) == 0
    out = _json_out(capsys)
    per_task = [(t["task_id"], t["calls"], t["stop_reason"]) for t in out["per_task"]]
    assert per_task == [
        (task_id, 1, "budget_exceeded"),
        ("job%231", 1, "budget_exceeded"),
    ]
    assert f"e.g. {task_id!r}" in caplog.text

    assert main(["replay", "--db", trace, "--task", task_id, "--json"]) == 0
    assert [t["task_id"] for t in _json_out(capsys)["per_task"]] == [task_id]
    assert main(["compare", "--db", trace, "--b", policy, "--json"]) == 0
    assert _json_out(capsys)["b"]["stopped"] == 2


def test_tasks_that_all_scored_1_have_quality_exactly_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Ten tasks tagged quality 1 mean 1.0, not 0.9999999999999999."""
    lines = [{"task_id": f"t{i}", "tags": {"quality": "1"}} for i in range(10)]
    trace = _trace(tmp_path, lines)
    assert main(["replay", "--db", trace, "--json"]) == 0
    assert _json_out(capsys)["quality"] == 1.0
    swap = ["--model", "gpt-4o-mini=gpt-4o-mini"]
    assert main(["compare", "--db", trace, *swap, "--json"]) == 0
    out = _json_out(capsys)
    assert (out["a"]["quality"], out["b"]["quality"]) == (1.0, 1.0)


def test_quality_tags_near_the_float_limit_keep_a_finite_mean(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Two tags of 1e308, whose sum is past a float, mean 1e308."""
    lines = [{"task_id": f"t{i}", "tags": {"quality": "1e308"}} for i in range(2)]
    assert main(["replay", "--db", _trace(tmp_path, lines), "--json"]) == 0
    assert _json_out(capsys)["quality"] == 1e308


def test_replay_and_compare_text_print_tiny_money_plainly(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A $0.00000075 call reads so on each task's line and in compare's cost
    per task, never as 7.5E-7."""
    tiny = {"input_tokens": 1, "output_tokens": 1, "cost_usd": "0.00000075"}
    trace = _trace(tmp_path, [{"task_id": "t0", **tiny}])
    assert main(["replay", "--db", trace]) == 0
    out = capsys.readouterr().out
    assert "  t0     1 call   $0.00000075\n" in out
    assert "E-" not in out
    assert main(["compare", "--db", trace, "--model", "gpt-4o-mini=gpt-4o"]) == 0
    out = capsys.readouterr().out
    assert "Cost per task: $0.00000075 -> $0.0000125 " in out
    assert "E-" not in out
