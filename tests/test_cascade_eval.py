"""Offline evaluation: loaders, replay on recorded responses, fit, CLI, chart."""

from __future__ import annotations

import csv
import gzip
import json
import struct
import zlib
from decimal import Decimal
from pathlib import Path

import numpy as np
import pytest

from governor._errors import ConfigError
from governor.cascade import Answer, Cascade, JudgeCheck, Tier
from governor.cascade._builtin import (
    NamedPolicy,
    arithmetic_check,
    load_policy,
    price_table,
)
from governor.cascade._chart import Series, encode_png, write_chart
from governor.cascade._datasets import estimate_tokens, load_jsonl, load_routerbench
from governor.cascade._fit import fit_and_report, split_rows
from governor.cascade._replay import RECORDED_JUDGE, report
from governor.cli import main

SAMPLE = Path(__file__).parent / "data" / "routerbench_sample.csv.gz"
MIXTRAL = "mistralai/mixtral-8x7b-chat"
YI = "zero-one-ai/Yi-34B-Chat"
GPT4 = "gpt-4-1106-preview"
# Rows where Mixtral and Yi give different letters, or no letter (MBPP code).
ESCALATED = {"507", "816", "681", "36455", "36363", "35267"}


def _source_rows() -> list[dict[str, str]]:
    csv.field_size_limit(1 << 30)
    with gzip.open(SAMPLE, "rt", encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle))


def test_routerbench_loader_reads_every_row_and_model() -> None:
    """The sample's 22 rows each record all 11 models, costs as exact Decimals."""
    rows = load_routerbench(SAMPLE)
    first = rows[0]
    assert (len(rows), len(first.outcomes), first.key) == (
        22,
        11,
        "routerbench_sample:507",
    )
    assert first.outcomes[GPT4].cost_usd == Decimal("0.00533")
    assert first.outcomes[MIXTRAL].response == "D\n"


def test_three_tier_replay_matches_a_hand_count() -> None:
    """Replaying routerbench-3tier charges Mixtral+Yi always and GPT-4 on escalation."""
    ((label, cascade),) = load_policy("routerbench-3tier").candidates
    result = report(label, cascade, load_routerbench(SAMPLE))
    expected = Decimal(0)
    for row in _source_rows():
        expected += Decimal(row[MIXTRAL + "|total_cost"])
        expected += Decimal(row[YI + "|total_cost"])
        if row[""] in ESCALATED or row["eval_name"] == "mbpp":
            expected += Decimal(row[GPT4 + "|total_cost"])
    assert result.summary.cost_usd == expected
    assert (result.summary.accuracy, result.quality_ratio) == (20 / 22, 20 / 21)


def test_baselines_use_the_first_and_last_tiers() -> None:
    """Always-cheapest is Mixtral alone; always-best is GPT-4 alone."""
    ((label, cascade),) = load_policy("routerbench-3tier").candidates
    result = report(label, cascade, load_routerbench(SAMPLE))
    rows = _source_rows()
    gpt4 = sum((Decimal(r[GPT4 + "|total_cost"]) for r in rows), Decimal(0))
    mixtral_right = sum(float(r[MIXTRAL]) for r in rows)
    assert result.baselines.always_best.cost_usd == gpt4
    assert result.baselines.always_cheapest.accuracy == mixtral_right / 22


def _jsonl(path: Path, rows: list[dict[str, object]]) -> Path:
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    return path


TWO_ROWS: list[dict[str, object]] = [
    {
        "id": "q1",
        "prompt": "Is 7 prime? Answer A) yes B) no",
        "outcomes": {
            "small": {"score": 1, "response": '{"answer": "A"}', "cost_usd": "0.001"},
            "large": {"score": 1, "response": '{"answer": "A"}', "cost_usd": "0.010"},
        },
    },
    {
        "id": "q2",
        "prompt": "Reply in JSON.",
        "outcomes": {
            "small": {"score": 0, "response": "sure!", "cost_usd": "0.002"},
            "large": {"score": 1, "response": '{"ok": true}', "cost_usd": "0.020"},
        },
    },
]


def test_jsonl_rows_replay_with_real_checks(tmp_path: Path) -> None:
    """A JSON check accepts the JSON answer and escalates the other one."""
    rows = load_jsonl(_jsonl(tmp_path / "rows.jsonl", TWO_ROWS))
    cascade = Cascade(tiers=["small", "large"], checks=[{"kind": "json"}])
    result = report("json", cascade, rows)
    # q1: small answers JSON (0.001); q2: "sure!" is not JSON (0.002 + 0.020).
    assert (result.summary.cost_usd, result.summary.accuracy) == (
        Decimal("0.023"),
        1.0,
    )
    assert result.final_tiers == {"small": 1, "large": 1}


def test_bad_jsonl_row_names_the_expected_shape(tmp_path: Path) -> None:
    """A JSONL row without outcomes is refused with the expected layout."""
    path = _jsonl(tmp_path / "bad.jsonl", [{"prompt": "x"}])
    with pytest.raises(ConfigError, match=r"bad.jsonl:1: not a replay row"):
        load_jsonl(path)


def test_recorded_judge_is_charged_where_it_is_used(tmp_path: Path) -> None:
    """The recorded-score judge's cost is added to the tiers it checks only."""
    rows_data = [
        {
            "prompt": "p",
            "outcomes": {
                "small": {
                    "score": 0.4,
                    "response": "meh",
                    "cost_usd": "0.001",
                    "judge_cost_usd": "0.005",
                },
                "large": {
                    "score": 0.9,
                    "response": "good",
                    "cost_usd": "0.010",
                    "judge_cost_usd": "0.005",
                },
            },
        }
    ]
    rows = load_jsonl(_jsonl(tmp_path / "graded.jsonl", rows_data))
    judge = JudgeCheck(judge=RECORDED_JUDGE, min_score=7)
    cascade = Cascade(tiers=["small", "large"], checks=[judge])
    result = report("judge", cascade, rows)
    # small judged 4/10 (rejected, judge charged); large accepted unchecked.
    assert (result.summary.cost_usd, result.summary.accuracy) == (
        Decimal("0.016"),
        0.9,
    )


def test_split_is_seeded_disjoint_and_complete() -> None:
    """The same seed gives the same split; fit and held-out cover every row once."""
    rows = load_routerbench(SAMPLE)
    fit, held = split_rows(rows, 0.5, seed=3)
    again, _ = split_rows(rows, 0.5, seed=3)
    keys = [r.key for r in fit + held]
    assert ([r.key for r in fit] == [r.key for r in again], len(fit)) == (True, 11)
    assert sorted(keys) == sorted(r.key for r in rows)


def test_fit_selects_on_fit_rows_only(tmp_path: Path) -> None:
    """The cheapest candidate meeting the quality target on fit rows is chosen."""
    rows = load_jsonl(_jsonl(tmp_path / "rows.jsonl", TWO_ROWS * 4))
    candidates = (
        ("strict", Cascade(tiers=["small", "large"], checks=[{"kind": "json"}])),
        ("lenient", Cascade(tiers=["small", "large"])),
        ("premium", Cascade(tiers=["large"])),
    )
    # A JSONL row's key is its id, so give each copy its own id.
    rows = [
        type(r)(f"{r.key}-{i}", r.prompt, r.outcomes, r.group)
        for i, r in enumerate(rows)
    ]
    result = fit_and_report(NamedPolicy("toy", "", candidates), rows, seed=0)
    assert result.selected == "strict"
    assert result.report.policy == "toy/strict"


def test_cli_prints_exactly_the_report_keys(capsys: pytest.CaptureFixture[str]) -> None:
    """`governor eval cascade --json` prints one doc with exactly the issue's keys."""
    code = main(
        [
            "eval",
            "cascade",
            str(SAMPLE),
            "--policy",
            "routerbench-3tier",
            "--fit-fraction",
            "0",
            "--json",
        ]
    )
    doc = json.loads(capsys.readouterr().out)
    assert code == 0
    assert list(doc) == [
        "rows",
        "policy",
        "cost_usd",
        "accuracy",
        "baselines",
        "cost_ratio",
        "quality_ratio",
    ]
    assert list(doc["baselines"]) == ["always-cheapest", "always-best", "oracle"]
    assert (doc["rows"], doc["quality_ratio"]) == (22, 0.952381)


def test_cli_reads_a_json_policy_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A JSON policy file with tiers runs like a built-in policy."""
    policy = tmp_path / "gpt4-only.json"
    policy.write_text(json.dumps({"name": "gpt4-only", "tiers": [GPT4]}))
    args = ["eval", "cascade", str(SAMPLE), "--policy", str(policy)]
    code = main([*args, "--fit-fraction", "0", "--json"])
    doc = json.loads(capsys.readouterr().out)
    assert (code, doc["policy"], doc["cost_ratio"]) == (0, "gpt4-only/gpt4-only", 1.0)


def test_cli_refuses_an_unknown_policy(capsys: pytest.CaptureFixture[str]) -> None:
    """An unknown policy name exits 2 and lists the built-in names."""
    code = main(["eval", "cascade", str(SAMPLE), "--policy", "nope", "--json"])
    assert code == 2
    assert "routerbench-cascade" in capsys.readouterr().err


def test_png_encoder_writes_a_decodable_image() -> None:
    """The PNG has the signature, the size in IHDR and the pixels in IDAT."""
    pixels = np.array([[[255, 0, 0], [0, 0, 255]]], dtype=np.uint8)
    data = encode_png(pixels)
    width, height = struct.unpack(">II", data[16:24])
    idat_length = struct.unpack(">I", data[33:37])[0]
    raw = zlib.decompress(data[41 : 41 + idat_length])
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert (width, height, raw) == (2, 1, bytes([0, 255, 0, 0, 0, 0, 255]))


def test_chart_is_written_at_its_size(tmp_path: Path) -> None:
    """A chart file is a 960 by 640 PNG."""
    path = tmp_path / "curve.png"
    series = [Series("cascade", [(0.2, 0.9), (0.5, 0.98)], (30, 90, 200), line=True)]
    write_chart(path, series, title="test", target=(0.3, 0.98))
    assert struct.unpack(">II", path.read_bytes()[16:24]) == (960, 640)


def test_arithmetic_check_accepts_correct_steps() -> None:
    """Correct annotated steps, with thousands separators, pass."""
    answer = Answer("16 - 3 = <<16-3=13>>13, then 1,000 * 2 = <<1,000*2=2,000>>2,000")
    result = arithmetic_check(answer, [])
    assert (result.passed, result.score) == (True, 2.0)


def test_gsm8k_prices_come_from_the_rate_card() -> None:
    """Mixtral is priced at Together AI's $0.60 per million tokens, both ways."""
    prices = price_table("routellm-gsm8k")
    mixtral = prices.per_model["mistralai/Mixtral-8x7B-Instruct-v0.1"]
    assert mixtral == (Decimal("6E-7"), Decimal("6E-7"))


def test_token_estimate_is_four_bytes_per_token() -> None:
    """Nine bytes estimate to three tokens."""
    assert estimate_tokens("abcdefghi") == 3


def test_tier_missing_from_the_data_is_a_config_error() -> None:
    """A policy naming a model the data lacks is refused with the models."""
    cascade = Cascade(tiers=[Tier(name="x", model="not-in-data")])
    with pytest.raises(ConfigError, match="no row records every model"):
        report("x", cascade, load_routerbench(SAMPLE))


@pytest.mark.parametrize(
    ("outcome", "message"),
    [
        ({"score": 7}, r"score 7.0; a score is a number in \[0, 1\]"),
        ({"score": "nan"}, r"score nan"),
        ({"cost_usd": "-5"}, r"cost_usd -5; a cost is a finite number"),
        ({"cost_usd": "NaN"}, r"cost_usd NaN"),
        ({"cost_usd": "Infinity"}, r"cost_usd Infinity"),
        ({"judge_cost_usd": "-1"}, r"judge_cost_usd -1"),
    ],
    ids=["score-7", "score-nan", "cost-negative", "cost-nan", "cost-inf", "judge"],
)
def test_an_unusable_score_or_cost_names_its_file_and_line(
    tmp_path: Path, outcome: dict[str, object], message: str
) -> None:
    """Scores outside [0, 1] and negative or non-finite costs are refused."""
    second = json.loads(json.dumps(TWO_ROWS[1]))
    second["outcomes"]["small"].update(outcome)
    path = _jsonl(tmp_path / "rows.jsonl", [TWO_ROWS[0], second])
    with pytest.raises(
        ConfigError, match="^rows.jsonl:2: model 'small' has " + message
    ):
        load_jsonl(path)


def test_a_line_that_is_not_json_names_its_file_and_line(tmp_path: Path) -> None:
    """A broken second line is reported as rows.jsonl:2, not 'line 1'."""
    path = tmp_path / "rows.jsonl"
    path.write_text(json.dumps(TWO_ROWS[0]) + "\n{not json\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"^rows.jsonl:2: not a JSON line"):
        load_jsonl(path)


def test_cli_refuses_a_file_that_is_not_utf8(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A Latin-1 file exits 2 saying it is not UTF-8."""
    path = tmp_path / "latin1.jsonl"
    path.write_bytes(
        json.dumps(TWO_ROWS[0]).replace("prime", "premi\u00e8re").encode("latin-1")
    )
    code = main(["eval", "cascade", str(path), "--policy", "routerbench-3tier"])
    assert code == 2
    assert "latin1.jsonl: not UTF-8 text" in capsys.readouterr().err


def test_a_candidate_that_is_not_an_object_is_refused(tmp_path: Path) -> None:
    """A policy file's candidate given as a string names the candidate."""
    path = tmp_path / "pol.json"
    path.write_text(json.dumps({"candidates": {"x": {"tiers": ["a"]}, "y": "oops"}}))
    with pytest.raises(
        ConfigError, match=r"candidate 'y' is a str; expected a Cascade"
    ):
        load_policy(str(path))
