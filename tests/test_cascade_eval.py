"""Offline evaluation: loaders, replay on recorded responses, fit, CLI, chart."""

from __future__ import annotations

import csv
import gzip
import json
import pickle
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
from governor.cascade._fit import (
    ALWAYS_BEST,
    _frontier,
    _select,
    fit_and_report,
    split_rows,
)
from governor.cascade._replay import (
    RECORDED_JUDGE,
    Recorded,
    ReplayReport,
    ReplayRow,
    replay,
    report,
)
from governor.cli import main
from governor.policies import Pricing

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
    # A JSONL row's key is its id, so give each copy its own id.
    copies = [{**r, "id": f"{r['id']}-{i}"} for i, r in enumerate(TWO_ROWS * 4)]
    rows = load_jsonl(_jsonl(tmp_path / "rows.jsonl", copies))
    candidates = (
        ("strict", Cascade(tiers=["small", "large"], checks=[{"kind": "json"}])),
        ("lenient", Cascade(tiers=["small", "large"])),
        ("premium", Cascade(tiers=["large"])),
    )
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
    error = json.loads(capsys.readouterr().out)["error"]
    assert "routerbench-cascade" in error["message"]


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
    mixtral = prices.price("mistralai/Mixtral-8x7B-Instruct-v0.1")
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


# -- held-back data: any model priced, undefined ratios, upstream layouts ----------

FREE = "my-local-model"
REPEATED_ROW = "repeats an earlier row"  # the left-out reason for a repeated row


def _routellm(path: Path, models: list[str], rows: int = 4) -> Path:
    """A RouteLLM-style CSV: every model right, answering ``#### 12``."""
    header = ["prompt", *models, *(m + "_response" for m in models)]
    body = [
        [f"What is 5 + {i}?", *("True" for _ in models), *(SOLVED for _ in models)]
        for i in range(rows)
    ]
    return _write_csv(path, [header, *body])


def _policy_file(path: Path, body: dict[str, object]) -> Path:
    path.write_text(json.dumps(body), encoding="utf-8")
    return path


def test_routellm_models_outside_the_alias_tables_are_priced(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """gpt-4o-mini and gpt-4o are priced from the rate card by their own names."""
    data = _routellm(tmp_path / "r.csv", ["gpt-4o-mini", "gpt-4o"])
    loaded = read_rows(data, price_table)
    assert loaded.unpriced == {}
    policy = _policy_file(tmp_path / "p.json", {"tiers": ["gpt-4o-mini", "gpt-4o"]})
    code, out, err = _run_cli(
        capsys, data, "--policy", str(policy), "--fit-fraction", "0", "--json"
    )
    doc = json.loads(out)
    # gpt-4o-mini costs 1/16.7 of gpt-4o per token in and out.
    assert (code, err, doc["rows"], doc["accuracy"]) == (0, "", 4, 1.0)
    assert 0 < doc["cost_ratio"] < 0.1


def test_the_policy_pricing_prices_models_the_map_lacks(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A JSON policy's overrides price a model, a data name an alias covers
    included; Price() makes a free tier, not an unpriced one."""
    data = _routellm(tmp_path / "r.csv", [FREE, GSM_MIXTRAL], rows=1)
    overrides = {
        FREE: {},
        GSM_MIXTRAL: {"input_usd_per_mtok": 1, "output_usd_per_mtok": 2},
    }
    pricing = Pricing(overrides=overrides)
    (row,) = read_rows(data, lambda layout: price_table(layout, pricing)).rows
    prompt_tokens, answer_tokens = estimate_tokens(row.prompt), estimate_tokens(SOLVED)
    expected = (prompt_tokens * 1 + answer_tokens * 2) * Decimal("1e-6")
    assert row.outcomes[FREE].cost_usd == 0
    assert row.outcomes[GSM_MIXTRAL].cost_usd == expected
    body = {"tiers": [FREE, GSM_MIXTRAL], "pricing": {"overrides": overrides}}
    policy = _policy_file(tmp_path / "p.json", body)
    args = ["--policy", str(policy), "--fit-fraction", "0", "--json"]
    code, out, _ = _run_cli(capsys, data, *args)
    assert (code, json.loads(out)["cost_usd"]) == (0, "0")


def test_a_python_policy_carries_its_pricing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A Policy with a cascade, named as module:attribute, brings its pricing."""
    (tmp_path / "evalpolicy.py").write_text(
        "from governor.policies import Cascade, Policy, Price, Pricing\n"
        "POLICY = Policy(\n"
        f"    cascade=Cascade(tiers=[{FREE!r}, 'gpt-4o']),\n"
        f"    pricing=Pricing(overrides={{{FREE!r}: Price()}}),\n"
        ")\n",
        encoding="utf-8",
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    policy = load_policy("evalpolicy:POLICY")
    assert policy.pricing is not None
    prices = price_table("routellm-gsm8k", policy.pricing)
    assert prices.price(FREE) == (Decimal(0), Decimal(0))


def test_an_unpriced_tier_is_named_with_how_to_price_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A tier the rate card cannot price is refused by name, with the policy
    pricing to add; a price-map entry of zero (ollama) is not a price."""
    data = _routellm(tmp_path / "r.csv", [FREE, "ollama/llama2", GPT4])
    loaded = read_rows(data, price_table)
    assert sorted(loaded.unpriced) == [FREE, "ollama/llama2"]
    assert "no token prices" in loaded.unpriced["ollama/llama2"]
    policy = _policy_file(tmp_path / "p.json", {"name": "p", "tiers": [FREE, GPT4]})
    code, _, err = _run_cli(capsys, data, "--policy", str(policy))
    assert code == 2
    assert "p uses models that the data records without costs" in err
    assert f"'{FREE}' (not in LiteLLM's price map" in err
    assert f'"pricing": {{"overrides": {{"{FREE}": {{' in err
    assert "name the data's models in the policy's tiers" not in err


def _free_best_reports() -> list[tuple[str, ReplayReport]]:
    """Two candidates as good as a free premium tier; "cheap" costs less."""
    outcomes = {
        "pricey": Recorded(1.0, "A", Decimal("0.010")),
        "cheap": Recorded(1.0, "A", Decimal("0.001")),
        "large": Recorded(1.0, "A", Decimal(0)),
    }
    rows = [ReplayRow(f"q{i}", "p", outcomes) for i in range(4)]
    return [
        (name, replay(name, Cascade(tiers=[name, "large"]), rows))
        for name in ("pricey", "cheap")
    ]


def test_a_free_premium_tier_has_no_cost_ratio(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Always-best costs nothing: cost_ratio is null in JSON and n/a in text."""
    reports = _free_best_reports()
    assert reports[0][1].cost_ratio is None
    assert reports[0][1].to_json()["cost_ratio"] is None
    rows = [
        {
            "id": f"q{i}",
            "prompt": "p",
            "outcomes": {
                "small": {"score": 1, "response": "A", "cost_usd": "0.001"},
                "large": {"score": 1, "response": "A", "cost_usd": "0"},
            },
        }
        for i in range(4)
    ]
    data = _jsonl(tmp_path / "rows.jsonl", rows)
    policy = _policy_file(tmp_path / "p.json", {"tiers": ["small", "large"]})
    args = ["--policy", str(policy), "--fit-fraction", "0"]
    code, out, _ = _run_cli(capsys, data, *args, "--json")
    assert (code, json.loads(out)["cost_ratio"]) == (0, None)
    code, out, _ = _run_cli(capsys, data, *args)
    assert "cost_ratio n/a  quality_ratio 1.000" in out


def test_a_premium_tier_scoring_zero_has_no_quality_ratio() -> None:
    """Always-best scores 0: quality_ratio is None, not 0 beside accuracy 1."""
    outcomes = {
        "small": Recorded(1.0, "A", Decimal("0.001")),
        "large": Recorded(0.0, "B", Decimal("0.010")),
    }
    rows = [ReplayRow(f"q{i}", "p", outcomes) for i in range(4)]
    result = replay("x", Cascade(tiers=["small", "large"]), rows)
    doc = result.to_json()
    assert (doc["accuracy"], doc["quality_ratio"]) == (1.0, None)


def test_selection_and_frontier_order_by_cost_when_premium_is_free() -> None:
    """With no cost ratio, the cheaper of two equal candidates is picked and
    alone on the frontier (not a tie at a cost ratio of 0)."""
    reports = _free_best_reports()
    assert _select(reports, 0.98, 0.30) == "cheap"
    assert _select(reports[::-1], 0.98, 0.30) == "cheap"
    assert _frontier(reports) == {"cheap"}


def test_frontier_orders_by_accuracy_when_premium_scores_zero() -> None:
    """With no quality ratio, the more accurate of two equal-cost candidates
    beats the other and is picked (not a tie at a quality ratio of 0)."""
    rows = [
        ReplayRow(
            f"q{i}",
            "p",
            {
                "good": Recorded(float(i % 2), "A", Decimal("0.001")),
                "bad": Recorded(0.0, "A", Decimal("0.001")),
                "large": Recorded(0.0, "B", Decimal("0.010")),
            },
        )
        for i in range(4)
    ]
    reports = [
        (name, replay(name, Cascade(tiers=[name, "large"]), rows))
        for name in ("bad", "good")
    ]
    assert _frontier(reports) == {"good"}
    assert _select(reports, 0.98, 0.30) == "good"


def _upstream_arena(folder: Path) -> Path:
    """Arena-Bench as its repository keeps it: question.jsonl at the top,
    model_answer/, model_judgment/ and reference_answer/ below it."""
    flat = _arena_folder(folder.parent / "flat", gz=False)
    for sub in ("model_answer", "model_judgment", "reference_answer"):
        (folder / sub).mkdir(parents=True)
    (folder / "question.jsonl").write_bytes((flat / "question.jsonl").read_bytes())
    answers = (flat / "model_answers.jsonl").read_text().splitlines()
    judgments = (flat / "judgments.jsonl").read_text().splitlines()
    for answer, judgment in zip(answers, judgments, strict=True):
        model = json.loads(answer)["model_id"].rsplit("/", 1)[-1]
        (folder / "model_answer" / f"{model}.jsonl").write_text(answer + "\n")
        (folder / "model_judgment" / f"{model}.jsonl").write_text(judgment + "\n")
    reference = (flat / "reference_answer_gpt-4.jsonl").read_bytes()
    (folder / "reference_answer" / "gpt-4.jsonl").write_bytes(reference)
    return folder


def test_the_upstream_arena_layout_reads_like_the_flat_one(tmp_path: Path) -> None:
    """Answers, judgments and the reference in their subfolders are found."""
    upstream = read_rows(_upstream_arena(tmp_path / "arena-bench-v1"), price_table)
    flat = read_rows(tmp_path / "flat", price_table)
    assert upstream.rows == flat.rows
    assert (upstream.read, len(upstream.rows[0].outcomes)) == (1, 3)


def test_a_folder_without_data_names_the_subfolders_looked_into(
    tmp_path: Path,
) -> None:
    """A parent of data folders is refused, saying what each subfolder holds."""
    (tmp_path / "parent").mkdir()
    _arena_folder(tmp_path / "parent" / "arena", gz=False)
    (tmp_path / "parent" / "README.md").write_text("# data\n")
    with pytest.raises(ConfigError) as caught:
        read_rows(tmp_path / "parent", price_table)
    message = str(caught.value)
    assert "subfolders looked into: arena/ (" in message
    assert "1 Arena-Bench questions" in message
    assert "give the folder that holds a data set itself" in message


def test_repeated_csv_rows_are_left_out_and_counted(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A RouterBench file holding its rows twice keeps each once; the repeats
    are counted, so fit and held-out rows never share a prompt."""
    table = _routerbench_table()
    path = _write_csv(tmp_path / "rb.csv", table + table[1:])
    loaded = read_rows(path, price_table)
    assert (loaded.read, len(loaded.rows)) == (44, 22)
    assert loaded.left_out == {REPEATED_ROW: 22}
    args = ["--policy", "routerbench-3tier", "--fit-fraction", "0", "--json"]
    code, out, err = _run_cli(capsys, path, *args)
    doc = json.loads(out)
    assert (code, doc["rows"], doc["left_out"]) == (0, 22, {REPEATED_ROW: 22})
    assert err == ""
    assert "rb.csv: 22 row(s) repeat earlier rows; left out" in caplog.text
    code, out, _ = _run_cli(capsys, path, *args[:-1])
    assert "44 rows read, 22 left out (repeats an earlier row: 22)" in out


def test_a_repeated_routellm_prompt_is_left_out(tmp_path: Path) -> None:
    """A RouteLLM row with an earlier row's prompt is counted, not kept."""
    table = _gsm8k_rows([("True", "True"), ("False", "True")])
    path = _write_csv(tmp_path / "g.csv", [*table, table[1]])
    loaded = read_rows(path, price_table)
    assert (loaded.read, len(loaded.rows), loaded.left_out) == (3, 2, {REPEATED_ROW: 1})


def test_a_repeated_jsonl_id_is_refused(tmp_path: Path) -> None:
    """An id on two lines is refused naming both, as `eval loops` does."""
    path = _jsonl(tmp_path / "rows.jsonl", [*TWO_ROWS, TWO_ROWS[0]])
    with pytest.raises(
        ConfigError, match=r"^rows.jsonl:3: id 'q1' is also on rows.jsonl:1"
    ):
        read_rows(path, price_table)


def test_a_repeated_jsonl_line_without_id_is_left_out(tmp_path: Path) -> None:
    """Without ids, a line equal to an earlier one is counted, not kept."""
    rows = [{k: v for k, v in r.items() if k != "id"} for r in TWO_ROWS]
    loaded = read_rows(_jsonl(tmp_path / "rows.jsonl", [*rows, rows[1]]), price_table)
    assert (loaded.read, len(loaded.rows), loaded.left_out) == (3, 2, {REPEATED_ROW: 1})


def test_a_repeated_arena_question_is_counted_or_refused(tmp_path: Path) -> None:
    """The same question line twice is counted; one id with two prompts is refused."""
    folder = _arena_folder(tmp_path / "arena", gz=False)
    question = folder / "question.jsonl"
    line = question.read_text()
    question.write_text(line * 2)
    loaded = read_rows(folder, price_table)
    assert (loaded.read, len(loaded.rows), loaded.left_out) == (2, 1, {REPEATED_ROW: 1})
    question.write_text(line + line.replace("Say hi", "Say bye"))
    with pytest.raises(ConfigError, match=r"question.jsonl:2: question_id 'q1'"):
        read_rows(folder, price_table)


def test_a_routerbench_model_without_its_cost_column_is_named(tmp_path: Path) -> None:
    """A model with answers but no `|total_cost` column is refused by name."""
    table = _routerbench_table()
    gone = table[0].index(YI + "|total_cost")
    path = _write_csv(tmp_path / "rb.csv", [r[:gone] + r[gone + 1 :] for r in table])
    with pytest.raises(ConfigError, match=rf"model '{YI}' has no '{YI}\|total_cost'"):
        read_rows(path, price_table)
    costs = [i for i, c in enumerate(table[0]) if c.endswith("|total_cost")]
    path = _write_csv(
        tmp_path / "rb2.csv",
        [[c for i, c in enumerate(r) if i not in costs] for r in table],
    )
    with pytest.raises(ConfigError, match="without cost columns"):
        read_rows(path, price_table)


@pytest.mark.parametrize("gz", [False, True], ids=["plain", "gzip"])
def test_a_pickle_is_refused_saying_how_to_convert_it(tmp_path: Path, gz: bool) -> None:
    """RouterBench's .pkl gets a conversion hint, not an encoding one."""
    data = pickle.dumps({"prompt": ["x"]}, protocol=4)
    path = tmp_path / "routerbench_0shot.pkl"
    path.write_bytes(gzip.compress(data) if gz else data)
    with pytest.raises(ConfigError) as caught:
        read_rows(path, price_table)
    message = str(caught.value)
    assert "a Python pickle" in message
    assert "pd.read_pickle('routerbench_0shot.pkl').to_csv(" in message
    assert "iconv" not in message


@pytest.mark.parametrize(
    ("drop", "message"),
    [
        ("response", r"model 'small' is missing field 'response'"),
        ("cost_usd", r"model 'small' is missing field 'cost_usd'"),
        ("score", r"model 'small' is missing field 'score'"),
    ],
)
def test_a_jsonl_outcome_missing_a_field_is_named(
    tmp_path: Path, drop: str, message: str
) -> None:
    """Every outcome field is required; the error names it, not a KeyError."""
    second = json.loads(json.dumps(TWO_ROWS[1]))
    del second["outcomes"]["small"][drop]
    path = _jsonl(tmp_path / "rows.jsonl", [TWO_ROWS[0], second])
    with pytest.raises(
        ConfigError, match="^rows.jsonl:2: not a replay row: " + message
    ):
        read_rows(path, price_table)
    with pytest.raises(ConfigError) as caught:
        read_rows(path, price_table)
    assert "KeyError" not in str(caught.value)


def test_a_jsonl_row_without_outcomes_names_the_field(tmp_path: Path) -> None:
    """A missing top-level field is named plainly."""
    path = _jsonl(tmp_path / "bad.jsonl", [{"prompt": "x"}])
    with pytest.raises(
        ConfigError, match=r"not a replay row: missing field 'outcomes'"
    ):
        load_jsonl(path)


# -- input checks from a user trial ----------------------------------------------


@pytest.mark.parametrize("cost", ["1e20", "1e300", 10**40])
def test_a_cost_no_call_can_have_is_refused_naming_file_line_and_field(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], cost: object
) -> None:
    """A JSONL cost of 1e20 dollars or more is a corrupt record, refused at load
    (exit 2), not a decimal overflow in the report (exit 1, no file named)."""
    second = json.loads(json.dumps(TWO_ROWS[1]))
    second["outcomes"]["large"]["cost_usd"] = cost
    data = _jsonl(tmp_path / "rows.jsonl", [TWO_ROWS[0], second])
    policy = _policy_file(tmp_path / "p.json", {"tiers": ["small", "large"]})
    code, _, err = _run_cli(capsys, data, "--policy", str(policy))
    assert code == 2
    assert "rows.jsonl:2: model 'large' has cost_usd " in err
    assert "dollars for one call cannot be right" in err


def test_a_routerbench_cost_no_call_can_have_names_its_column(
    tmp_path: Path,
) -> None:
    """A RouterBench |total_cost of 1e300 is refused naming the row and field."""
    table = _routerbench_table()
    column = table[0].index(GPT4 + "|total_cost")
    table[3][column] = "1e300"
    path = _write_csv(tmp_path / "rb.csv", table)
    with pytest.raises(
        ConfigError,
        match=r"^rb.csv row 3 \(index \d+\): model 'gpt-4-1106-preview' "
        r"has total_cost 1.000e\+300; that many dollars for one call cannot be right",
    ):
        read_rows(path, price_table)


def _letters(path: Path, answers: list[tuple[str, str]]) -> Path:
    """JSONL rows where ``small`` and ``large`` give these answers, both right."""
    rows = [
        {
            "id": f"q{i}",
            "prompt": f"Question {i}? A) yes B) no",
            "outcomes": {
                "small": {"score": 1, "response": small, "cost_usd": "0.001"},
                "large": {"score": 1, "response": large, "cost_usd": "0.010"},
            },
        }
        for i, (small, large) in enumerate(answers)
    ]
    return _jsonl(path, rows)


def test_routerbench_printed_lists_in_jsonl_are_read_as_their_text(
    tmp_path: Path,
) -> None:
    """RouterBench's printed answers (``['D\\n']``) in JSONL are unwrapped as the
    CSV reader unwraps them; a JSON array of strings is an answer and stays."""
    printed = [(repr(["D\n"]), repr(["It's D"])), (repr(["B\n"]), repr(["B"]))]
    rows = load_jsonl(_letters(tmp_path / "printed.jsonl", printed))
    assert [r.outcomes["small"].response for r in rows] == ["D\n", "B\n"]
    assert [r.outcomes["large"].response for r in rows] == ["It's D", "B"]
    arrays = [('["a", "b"]', '["c"]'), ('["d"]', '["e"]')]
    rows = load_jsonl(_letters(tmp_path / "arrays.jsonl", arrays))
    assert rows[0].outcomes["small"].response == '["a", "b"]'


def test_printed_lists_keep_a_choice_cascade_from_escalating_everything(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """With RouterBench's printed answers the cheap tiers' letters are read, so
    the second tier agreeing with the first is accepted instead of every row
    going on to the last tier (a cost ratio above 1)."""
    rows = [
        {
            "id": f"q{i}",
            "prompt": f"Question {i}? A) B) C) D)",
            "outcomes": {
                name: {"score": 1, "response": repr([f"{c}\n"]), "cost_usd": cost}
                for name, cost in (("small", "1"), ("mid", "1"), ("large", "10"))
            },
        }
        for i, c in enumerate("ABCD")
    ]
    data = _jsonl(tmp_path / "rows.jsonl", rows)
    body = {
        "tiers": ["small", "mid", "large"],
        "checks": [{"kind": "agreement", "normalise": "choice"}],
    }
    policy = _policy_file(tmp_path / "p.json", body)
    args = ("--policy", str(policy), "--fit-fraction", "0", "--json")
    code, out, err = _run_cli(capsys, data, *args)
    assert code == 0, err
    assert json.loads(out)["cost_ratio"] == 0.2  # small and mid, never large
    assert "warning" not in err


def test_answers_without_the_agreement_form_are_warned_of(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """When no answer of a checked tier has a letter, the choice agreement can
    never pass: stderr says so instead of a silent always-best result."""
    answers = [("I think so", "A"), ("maybe", "B")]
    data = _letters(tmp_path / "rows.jsonl", answers)
    body = {
        "tiers": ["small", "large"],
        "checks": [{"kind": "agreement", "normalise": "choice"}],
    }
    policy = _policy_file(tmp_path / "p.json", body)
    code, _, err = _run_cli(
        capsys, data, "--policy", str(policy), "--fit-fraction", "0"
    )
    assert code == 0
    assert "warning: no recorded answer of 'small' has a 'choice' form" in err
    assert "'large'" not in err  # the last tier's answers are not checked


@pytest.mark.parametrize(
    ("option", "value", "says"),
    [
        ("--target-cost", "-1", "must be a number of 0 or more"),
        ("--target-cost", "nan", "must be a number of 0 or more"),
        ("--target-quality", "2", "must be a number from 0 to 1"),
        ("--target-quality", "-0.5", "must be a number from 0 to 1"),
        ("--fit-fraction", "1", "must be a number from 0 up to, not including, 1"),
        ("--fit-fraction", "-0.1", "must be a number from 0 up to"),
    ],
)
def test_option_values_out_of_range_are_refused(
    capsys: pytest.CaptureFixture[str], option: str, value: str, says: str
) -> None:
    """Targets and the fit fraction outside their ranges exit 2 at once."""
    with pytest.raises(SystemExit) as caught:
        main(
            [
                "eval",
                "cascade",
                str(SAMPLE),
                "--policy",
                "routerbench-3tier",
                option,
                value,
            ]
        )
    assert caught.value.code == 2
    assert f"argument {option}: {says}" in capsys.readouterr().err


def test_a_zero_fit_fraction_with_candidates_says_to_raise_it(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """--fit-fraction 0 leaves nothing to choose routerbench-cascade's
    candidates on: the message says to give it above 0."""
    code, _, err = _run_cli(
        capsys, SAMPLE, "--policy", "routerbench-cascade", "--fit-fraction", "0"
    )
    assert code == 2
    assert "routerbench-cascade has 25 candidates to choose from" in err
    assert "give a fit fraction above 0 (--fit-fraction" in err


def test_a_tier_without_a_name_is_named_without_a_list_length_echo(
    tmp_path: Path,
) -> None:
    """A policy file's tier missing 'name' is named by its place; pydantic's
    "Tuple should have at least 1 item" echo of it is not shown."""
    path = _policy_file(
        tmp_path / "p.json",
        {"cascade": {"tiers": [{"model": "mixtral-8x7b"}, {"model": "gpt-4o"}]}},
    )
    with pytest.raises(ConfigError) as caught:
        load_policy(str(path))
    message = str(caught.value)
    assert message.startswith(f"{path}: tiers[0]: invalid Tier: name: Field required")
    assert "Tuple should have" not in message


def test_a_routellm_model_without_its_response_column_is_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """GPT-4's correctness without 'gpt-4-1106-preview_response' names that
    column, as the RouterBench reader names a missing column."""
    header = ["prompt", GSM_MIXTRAL, GPT4, GSM_MIXTRAL + "_response"]
    rows = [[f"What is 5 + {i}?", "True", "True", SOLVED] for i in range(4)]
    data = _write_csv(tmp_path / "gsm8k.csv", [header, *rows])
    code, _, err = _run_cli(capsys, data, "--policy", "gsm8k-2tier")
    assert code == 2
    assert f"model {GPT4!r} has no '{GPT4}_response' column" in err


def test_judge_grades_alone_are_described_as_such(tmp_path: Path) -> None:
    """RouteLLM's MT-Bench judgements (judge grades in FastChat's format) given
    alone are named as judge grades, not as a part of Arena-Bench-v1."""
    line = {
        "question_id": 81,
        "model": GPT4,
        "judge": ["gpt-4", "single-v1"],
        "judgment": "[[9]]",
        "score": 9,
        "turn": 1,
    }
    path = _jsonl(tmp_path / "judgements.jsonl", [line])
    with pytest.raises(ConfigError) as caught:
        read_rows(path, price_table)
    message = str(caught.value)
    assert "judgements.jsonl: judge grades only" in message
    assert "one file of Arena-Bench-v1" not in message


def test_a_huge_cost_ratio_is_shown_in_scientific_notation() -> None:
    """A ratio of 1e300 is a short number in the note and table, not 300 digits."""
    from governor.cli._eval_cascade import _shown

    assert _shown(3.85e299) == "3.850e+299"
    assert (_shown(1.14), _shown(None)) == ("1.140", "n/a")
