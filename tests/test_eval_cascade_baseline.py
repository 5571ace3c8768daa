"""`governor eval cascade`: candidates ending at different models share one
always-best baseline, so that their ratios can be compared.

Graded scores, the same on every row, keep the figures independent of the
seeded fit / held-out split: weak scores 0.5 at $0.001, mid 0.9 at $0.0025
(always accepted by the json check), strong 1.0 at $0.01.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from governor.cli import main

ROWS = 20  # 10 used to choose, 10 held out


def _rows(path: Path, extra: dict[str, Any] | None = None) -> Path:
    outcomes = {
        "weak": {"score": 0.5, "response": "maybe", "cost_usd": "0.001"},
        "mid": {"score": 0.9, "response": '{"a": 1}', "cost_usd": "0.0025"},
        "strong": {"score": 1, "response": '{"a": 2}', "cost_usd": "0.01"},
        **(extra or {}),
    }
    lines = (
        json.dumps({"id": f"q{i:02d}", "prompt": f"question {i}", "outcomes": outcomes})
        for i in range(ROWS)
    )
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def _policy(path: Path, candidates: dict[str, Any]) -> Path:
    path.write_text(json.dumps({"name": "mixed", "candidates": candidates}))
    return path


def _eval(
    capsys: pytest.CaptureFixture[str], data: Path, policy: Path
) -> dict[str, Any]:
    code = main(["eval", "cascade", str(data), "--policy", str(policy), "--json"])
    out = capsys.readouterr().out
    assert code == 0
    doc: dict[str, Any] = json.loads(out)
    return doc


def test_a_one_tier_weak_candidate_is_not_its_own_yardstick(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """weak-only is 0.5 of strong's quality at 0.1 of its cost; mid>strong
    0.9 at 0.25. Neither reaches 0.98, both are within 0.30: the better one,
    mid>strong, is selected, against strong as always-best. (Against itself
    weak-only scored 1.000 / 1.000 and was reported as always-best.)"""
    candidates = {
        "weak-only": {"tiers": ["weak"]},
        "mid>strong": {"tiers": ["mid", "strong"], "checks": [{"kind": "json"}]},
    }
    doc = _eval(
        capsys, _rows(tmp_path / "rows.jsonl"), _policy(tmp_path / "p.json", candidates)
    )
    assert (doc["policy"], doc["rows"], doc["note"]) == ("mixed/mid>strong", 10, None)
    assert (doc["cost_usd"], doc["accuracy"]) == ("0.025", 0.9)
    assert (doc["cost_ratio"], doc["quality_ratio"]) == (0.25, 0.9)
    assert doc["baselines"]["always-best"] == {
        "cost_usd": "0.1",
        "accuracy": 1.0,
        "model": "strong",
    }


def test_the_premium_model_is_the_best_last_tier_the_dearer_of_equals(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """strong and strong2 both score 1.0; strong2, the dearer, is always-best
    for both candidates, so strong alone, at half its cost, is selected.
    (Each against itself, both scored 1.000 / 1.000 and the pick gave way to
    an always-best model.)"""
    extra = {"strong2": {"score": 1, "response": "{}", "cost_usd": "0.02"}}
    candidates = {
        "strong-only": {"tiers": ["strong"]},
        "strong2-only": {"tiers": ["strong2"]},
    }
    data = _rows(tmp_path / "rows.jsonl", extra)
    doc = _eval(capsys, data, _policy(tmp_path / "p.json", candidates))
    assert (doc["policy"], doc["cost_ratio"], doc["quality_ratio"]) == (
        "mixed/strong-only",
        0.5,
        1.0,
    )
    assert doc["baselines"]["always-best"] == {
        "cost_usd": "0.2",
        "accuracy": 1.0,
        "model": "strong2",
    }


def test_a_dominated_pick_gives_way_to_the_premium_of_another_candidate(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """x (weak, always rejected, then strong) costs 1.048 of strong2, the
    premium that only y ends at: strong2 alone is selected, and its tier in
    y, "top", answers every held-out row."""
    extra = {"strong2": {"score": 1, "response": "{}", "cost_usd": "0.0105"}}
    top = {"name": "top", "model": "strong2"}
    candidates = {
        "x": {"tiers": ["weak", "strong"], "checks": [{"kind": "json"}]},
        "y": {"tiers": ["mid", top], "checks": [{"kind": "json"}]},
    }
    data = _rows(tmp_path / "rows.jsonl", extra)
    policy = _policy(tmp_path / "p.json", candidates)
    doc = _eval(capsys, data, policy)
    assert (doc["policy"], doc["cost_usd"], doc["accuracy"]) == (
        "mixed/always-best",
        "0.105",
        1.0,
    )
    assert doc["baselines"]["always-best"]["model"] == "strong2"
    assert "'x', costs at least as much (cost ratio 1.048)" in doc["note"]
    assert main(["eval", "cascade", str(data), "--policy", str(policy)]) == 0
    assert "final tier counts: {'top': 10}" in capsys.readouterr().out
