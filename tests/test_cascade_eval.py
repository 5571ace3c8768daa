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
from governor.cascade._datasets import (
    estimate_tokens,
    load_jsonl,
    load_routerbench,
    read_rows,
)
from governor.cascade._fit import ALWAYS_BEST, fit_and_report, split_rows
from governor.cascade._replay import RECORDED_JUDGE, Recorded, ReplayRow, report
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
        "rows_read",
        "left_out",
        "note",
    ]
    assert list(doc["baselines"]) == ["always-cheapest", "always-best", "oracle"]
    assert (doc["rows"], doc["quality_ratio"]) == (22, 0.952381)
    assert (doc["rows_read"], doc["left_out"], doc["note"]) == (22, {}, None)


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


# -- rows left out, cells read, layouts told by content ---------------------------

GSM_MIXTRAL = "mistralai/Mixtral-8x7B-Instruct-v0.1"
SOLVED = "5 + 7 = <<5+7=12>>12\n#### 12"


def _write_csv(path: Path, rows: list[list[str]]) -> Path:
    with path.open("w", encoding="utf-8", newline="") as handle:
        csv.writer(handle).writerows(rows)
    return path


def _gsm8k_rows(cells: list[tuple[str, str]]) -> list[list[str]]:
    """A RouteLLM GSM8K table: one row per (Mixtral, GPT-4) correctness pair."""
    header = [
        "prompt",
        GSM_MIXTRAL,
        GPT4,
        GSM_MIXTRAL + "_response",
        GPT4 + "_response",
    ]
    return [header] + [
        [f"What is 5 + {i}?", mixtral, gpt4, SOLVED, SOLVED]
        for i, (mixtral, gpt4) in enumerate(cells)
    ]


def _routerbench_table() -> list[list[str]]:
    source = _source_rows()
    header = list(source[0])
    return [header] + [[row[c] for c in header] for row in source]


def _run_cli(
    capsys: pytest.CaptureFixture[str], data: Path, *extra: str
) -> tuple[int, str, str]:
    code = main(["eval", "cascade", str(data), *extra])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_rows_left_out_are_counted_by_reason(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A short row and a row without GPT-4's outcome are read, left out and
    counted by reason in the text and the JSON output."""
    table = _routerbench_table()
    header = table[0]
    table[3] = table[3][:5]
    for column in (GPT4, GPT4 + "|total_cost"):
        table[5][header.index(column)] = ""
    path = _write_csv(tmp_path / "rb.csv", table)
    args = ["--policy", "routerbench-3tier", "--fit-fraction", "0"]
    code, out, _ = _run_cli(capsys, path, *args)
    expected = (
        "data     22 rows read, 2 left out (fewer cells than the header: 1; "
        f"no outcome for {GPT4}: 1)"
    )
    assert (code, out.splitlines()[1]) == (0, expected)
    code, out, _ = _run_cli(capsys, path, *args, "--json")
    doc = json.loads(out)
    assert (doc["rows"], doc["rows_read"], doc["left_out"]) == (
        20,
        22,
        {"fewer cells than the header": 1, f"no outcome for {GPT4}": 1},
    )


@pytest.mark.parametrize(
    ("right", "wrong"),
    [
        ("True", "False"),
        ("true", "false"),
        ("YES", "no"),
        ("1", "0"),
        ("Correct", "incorrect"),
        ("1.0", "0.0"),
    ],
)
def test_correctness_reads_common_boolean_spellings(
    tmp_path: Path, right: str, wrong: str
) -> None:
    """Every spelling of a 0/1 correctness is read; no row is left out."""
    table = _gsm8k_rows([(right, right), (wrong, right), (right, wrong)])
    path = _write_csv(tmp_path / "gsm8k_responses.csv", table)
    loaded = read_rows(path, price_table)
    scores = [
        (row.outcomes[GSM_MIXTRAL].score, row.outcomes[GPT4].score)
        for row in loaded.rows
    ]
    assert (loaded.read, loaded.left_out) == (3, {})
    assert scores == [(1.0, 1.0), (0.0, 1.0), (1.0, 0.0)]


def test_an_unreadable_correctness_names_its_file_and_row(tmp_path: Path) -> None:
    """`maybe` is neither a number nor a boolean word: refused, not dropped."""
    table = _gsm8k_rows([("True", "True"), ("True", "maybe")])
    path = _write_csv(tmp_path / "g.csv", table)
    with pytest.raises(
        ConfigError, match=rf"^g.csv row 2: model '{GPT4}' has correctness 'maybe'"
    ):
        read_rows(path, price_table)


def test_an_unreadable_cost_names_its_file_and_row(tmp_path: Path) -> None:
    """A RouterBench cost of `$0.01` is refused naming file, row and model."""
    table = _routerbench_table()
    table[2][table[0].index(GPT4 + "|total_cost")] = "$0.01"
    path = _write_csv(tmp_path / "rb.csv", table)
    with pytest.raises(
        ConfigError, match=rf"^rb.csv row 2 \(index \d+\): model '{GPT4}' has cost"
    ):
        read_rows(path, price_table)


def test_layout_is_told_by_content_not_name(tmp_path: Path) -> None:
    """GSM8K rows read alike under any name, gzipped or not, in a folder."""
    table = _gsm8k_rows([("True", "True"), ("False", "True")])
    plain = _write_csv(tmp_path / "test_split.csv", table)
    packed = tmp_path / "renamed.data"
    packed.write_bytes(gzip.compress(plain.read_bytes()))
    folder = tmp_path / "folder"
    folder.mkdir()
    _write_csv(folder / "gsm8k_responses.csv", table)
    for path in (plain, packed, folder):
        loaded = read_rows(path, price_table)
        assert [sorted(r.outcomes) for r in loaded.rows] == [[GPT4, GSM_MIXTRAL]] * 2


def _arena_folder(folder: Path, gz: bool) -> Path:
    models = [GSM_MIXTRAL, "gpt-3.5-turbo-1106", GPT4]
    parts: dict[str, list[dict[str, object]]] = {
        "question": [{"question_id": "q1", "turns": ["Say hi"]}],
        "model_answers": [
            {"question_id": "q1", "model_id": m, "choices": [{"turns": ["hi"]}]}
            for m in models
        ],
        "reference_answer_gpt-4": [
            {"question_id": "q1", "model_id": "gpt-4", "choices": [{"turns": ["hi"]}]}
        ],
        "judgments": [
            {"question_id": "q1", "model": m, "judgment": "[[8]]", "score": 8}
            for m in models
        ],
    }
    folder.mkdir()
    for name, lines in parts.items():
        text = "".join(json.dumps(line) + "\n" for line in lines).encode()
        target = folder / (name + (".jsonl.gz" if gz else ".jsonl"))
        target.write_bytes(gzip.compress(text) if gz else text)
    return folder


@pytest.mark.parametrize("gz", [True, False], ids=["gzip", "plain"])
def test_an_arena_folder_reads_plain_or_gzip_files(tmp_path: Path, gz: bool) -> None:
    """Arena-Bench files read whether or not they are compressed."""
    loaded = read_rows(_arena_folder(tmp_path / "arena", gz), price_table)
    ((row,),) = (loaded.rows,)
    assert (loaded.read, len(row.outcomes), row.outcomes[GPT4].score) == (1, 3, 0.8)


def test_a_file_without_answer_texts_says_so(tmp_path: Path) -> None:
    """An MMLU-like file (correctness, no responses) is named as such."""
    path = _write_csv(
        tmp_path / "mmlu_responses.csv",
        [["subject", "prompt", GSM_MIXTRAL, GPT4], ["math", "2+2?", "True", "True"]],
    )
    with pytest.raises(ConfigError, match="correctness without answer texts"):
        read_rows(path, price_table)


def test_missing_models_are_named_with_those_the_data_has(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The error lists the policy's models and the data's, not just 'no row'."""
    path = _jsonl(tmp_path / "rows.jsonl", TWO_ROWS)
    code, _, err = _run_cli(capsys, path, "--policy", "gsm8k-2tier")
    assert code == 2
    assert f"it needs ['{GSM_MIXTRAL}', '{GPT4}'], the data records ['large'" in err


def test_missing_paths_say_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A missing data path or policy file is named as missing."""
    code, _, err = _run_cli(capsys, tmp_path / "nope", "--policy", "gsm8k-2tier")
    assert (code, err.strip()) == (
        2,
        f"governor eval cascade: {tmp_path / 'nope'}: no such file or directory",
    )
    policy = str(tmp_path / "nope.json")
    code, _, err = _run_cli(capsys, SAMPLE, "--policy", policy)
    assert code == 2
    assert f"{policy}: no such policy file" in err


def _dominated_rows() -> list[ReplayRow]:
    """Rows where the small tier never passes the JSON check."""
    outcomes = {
        "small": Recorded(0.0, "sure!", Decimal("0.001")),
        "large": Recorded(1.0, '{"ok": 1}', Decimal("0.010")),
    }
    return [ReplayRow(f"q{i}", "p", outcomes) for i in range(8)]


def test_always_best_replaces_a_candidate_it_dominates() -> None:
    """small>large costs more than large alone for the same quality: the
    always-best model is selected instead, and the candidate is named."""
    cascade = Cascade(tiers=["small", "large"], checks=[{"kind": "json"}])
    policy = NamedPolicy("toy", "", (("small>large", cascade),))
    result = fit_and_report(policy, _dominated_rows(), seed=0)
    summary = result.report.summary
    assert (result.selected, result.dominated, result.report.policy) == (
        ALWAYS_BEST,
        "small>large",
        "toy/always-best",
    )
    assert (summary.cost_usd, summary.accuracy) == (Decimal("0.040"), 1.0)


def test_cli_says_when_always_best_was_selected(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The text and JSON outputs say why the always-best model was chosen."""
    policy = tmp_path / "toy.json"
    policy.write_text(
        json.dumps(
            {"name": "toy", "tiers": ["small", "large"], "checks": [{"kind": "json"}]}
        )
    )
    rows = [
        {
            "id": f"q{i}",
            "prompt": "p",
            "outcomes": {
                "small": {"score": 0, "response": "sure!", "cost_usd": "0.001"},
                "large": {"score": 1, "response": '{"a": 1}', "cost_usd": "0.01"},
            },
        }
        for i in range(8)
    ]
    path = _jsonl(tmp_path / "rows.jsonl", rows)
    code, out, _ = _run_cli(capsys, path, "--policy", str(policy), "--json")
    doc = json.loads(out)
    assert (code, doc["policy"], doc["cost_ratio"]) == (0, "toy/always-best", 1.0)
    assert "costs at least as much (cost ratio 1.100)" in doc["note"]
    code, out, _ = _run_cli(capsys, path, "--policy", str(policy))
    assert "note     selected the always-best model alone" in out


def test_an_unwritable_png_path_fails_before_the_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A chart path in a missing folder exits 2 at once, with a clear error."""
    png = tmp_path / "missing" / "curve.png"
    args = ["--policy", "routerbench-3tier", "--png", str(png)]
    code, out, err = _run_cli(capsys, SAMPLE, *args)
    assert (code, out) == (2, "")
    assert f"--png {png}: no such folder" in err


def test_an_unexpected_error_names_the_subcommand(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A bug surfacing in `eval cascade` is reported under its full name."""

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr("governor.cascade._fit.fit_and_report", broken)
    code, _, err = _run_cli(capsys, SAMPLE, "--policy", "routerbench-3tier")
    assert code == 1
    assert err.startswith("governor eval cascade: RuntimeError: boom")
