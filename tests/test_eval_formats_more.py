"""Public-data layouts the eval commands and `governor replay` read.

Chat content given as parts, empty questions, PAWS/GLUE and pandas-written
pair files (`eval cache`); Arena-Hard-Auto turns and FastChat MT-Bench
judgments (`eval cascade`); `true`/`false` quality tags (`replay`); and
BurstGPT's columns (`eval anomalies`).
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from governor import Policy
from governor._errors import ConfigError
from governor._replay import replay
from governor.anomaly._eval import load_trace
from governor.cache import _evaluate as ev
from governor.cascade._builtin import price_table
from governor.cascade._datasets import read_rows
from governor.cli import main
from governor.spend import SpendRecord

# Pairs the hashing embedder scores apart: some hit (case and spacing), some not.
PAIRS = [
    ("How do I learn Python?", "how do i learn python", 1),
    ("What is the capital of France?", "WHAT IS THE CAPITAL OF FRANCE?  ", 1),
    ("Who wrote Hamlet?", "How tall is Mount Everest?", 0),
    ("What is a CPU?", "What is a GPU?", 0),
    ("Why is the sky blue?", "Why is the sky  blue?", 1),
]


def _jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _eval_cache(capsys: pytest.CaptureFixture[str], path: Path, *args: str) -> Any:
    code = main(["eval", "cache", str(path), "--embedder", "hashing", "--json", *args])
    out, err = capsys.readouterr()
    assert code == 0, err
    return json.loads(out)


def _figures(report: dict[str, Any]) -> tuple[Any, ...]:
    keys = ("pairs", "hits", "wrong_hits", "positives", "layers", "misses")
    return tuple(report[key] for key in keys)


def _parts(text: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": [{"type": "text", "text": text}]}]


# -- eval cache ------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["pairwise", "retrieval"])
def test_content_parts_give_the_figures_of_plain_strings(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], mode: str
) -> None:
    """A question given as a list of text parts is embedded as the text the
    live cache reads from it, so the figures are those of the strings."""
    plain = _jsonl(
        tmp_path / "plain.jsonl",
        [{"text_a": a, "text_b": b, "label": y} for a, b, y in PAIRS],
    )
    parts = _jsonl(
        tmp_path / "parts.jsonl",
        [{"text_a": _parts(a), "text_b": _parts(b), "label": y} for a, b, y in PAIRS],
    )
    expected = _eval_cache(capsys, plain, "--mode", mode)
    assert expected["hits"] > 0
    assert "store_error" not in expected["misses"]
    assert _figures(_eval_cache(capsys, parts, "--mode", mode)) == _figures(expected)


def test_questions_are_the_queries_the_live_cache_embeds() -> None:
    """`questions` gives each request's cache query: the text of one text
    part, and nothing for a request the semantic layer skips."""
    two_parts = [
        {"role": "user", "content": [{"type": "text", "text": "a"}, "b"]},
    ]
    pairs = [
        ev.EvalPair(tuple(_parts("  Hello\u00a0 there ")), tuple(_parts("")), 1),
        ev.EvalPair(tuple(two_parts), ({"role": "user", "content": "Hi"},), 0),
    ]
    assert ev.questions(pairs) == ["Hello there", "Hi"]


@pytest.mark.parametrize("mode", ["pairwise", "retrieval"])
def test_an_empty_question_is_always_an_empty_query_miss(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], mode: str
) -> None:
    """Empty or blank questions never hit, not even the exact layer on an
    empty stored one; each is counted as an empty_query miss."""
    rows = [
        {"text_a": "", "text_b": "", "label": 0},
        {"text_a": "   ", "text_b": "", "label": 0},
        {"text_a": "", "text_b": "  \n ", "label": 1},
        {"text_a": "What is love?", "text_b": "", "label": 0},
        {"text_a": _parts(""), "text_b": _parts(" "), "label": 0},
    ]
    report = _eval_cache(capsys, _jsonl(tmp_path / "e.jsonl", rows), "--mode", mode)
    assert (report["hits"], report["misses"]) == (0, {"empty_query": 5})


def _pair_table(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize(
    "text",
    [
        # PAWS's and GLUE's (MRPC-style) TSV.
        "id\tsentence1\tsentence2\tlabel\n"
        "0\tHow do I learn Python?\thow do i learn python\t1\n"
        "1\tWho wrote Hamlet?\tHow tall is Mount Everest?\t0\n",
        # pandas writes booleans as True/False ...
        "question1,question2,is_duplicate\n"
        "How do I learn Python?,how do i learn python,True\n"
        "Who wrote Hamlet?,How tall is Mount Everest?,false\n",
        # ... and an integer column that held a blank as floats.
        "question1,question2,is_duplicate\n"
        "How do I learn Python?,how do i learn python,1.0\n"
        "Who wrote Hamlet?,How tall is Mount Everest?,0.0\n",
        # A header in another case.
        "Question1,Question2,Is_Duplicate\n"
        "How do I learn Python?,how do i learn python,1\n"
        "Who wrote Hamlet?,How tall is Mount Everest?,0\n",
        "TEXT_A\tText_B\tLABEL\n"
        "How do I learn Python?\thow do i learn python\t1\n"
        "Who wrote Hamlet?\tHow tall is Mount Everest?\t0\n",
    ],
    ids=["paws-tsv", "csv-true-false", "csv-floats", "csv-caps", "tsv-caps"],
)
def test_common_public_layouts_read_as_text_a_text_b_label(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str
) -> None:
    """The same pairs in another public layout give the same figures."""
    same = _jsonl(
        tmp_path / "pairs.jsonl",
        [
            {"text_a": "How do I learn Python?", "text_b": "how do i learn python"}
            | {"label": 1},
            {"text_a": "Who wrote Hamlet?", "text_b": "How tall is Mount Everest?"}
            | {"label": 0},
        ],
    )
    other = _pair_table(tmp_path / "pairs.csv", text)
    assert ev.read_pairs(other).pairs == ev.read_pairs(same).pairs
    expected = _figures(_eval_cache(capsys, same))
    assert _figures(_eval_cache(capsys, other)) == expected


def test_sentence_pairs_read_as_jsonl_and_other_labels_are_still_refused(
    tmp_path: Path,
) -> None:
    """sentence1/sentence2 JSON lines read; a label word that is no 0/1
    (an STS score, "yes") is still refused naming the line."""
    path = _jsonl(
        tmp_path / "paws.jsonl",
        [{"sentence1": "a b", "sentence2": "a  b", "label": 1}],
    )
    assert [p.label for p in ev.read_pairs(path).pairs] == [1]
    bad = _pair_table(tmp_path / "sts.tsv", "sentence1\tsentence2\tlabel\na\tb\t3.8\n")
    with pytest.raises(ConfigError, match=r"sts.tsv:2: label must be 0 or 1"):
        ev.read_pairs(bad)


# -- eval cascade ----------------------------------------------------------------

MODELS = ["gpt-4o-mini", "gpt-4o"]


def _arena(folder: Path, objects: bool, judgments: list[dict[str, Any]]) -> Path:
    """A tiny Arena-Bench folder in the upstream layout; ``objects`` writes
    turns as Arena-Hard-Auto does, ``{"content": ...}``."""

    def turn(text: str) -> Any:
        return {"content": text, "token_len": 3} if objects else text

    def answer(qid: str, model: str) -> dict[str, Any]:
        text = f"{model} answers {qid}"
        return {
            "question_id": qid,
            "model_id": model,
            "choices": [{"turns": [turn(text)]}],
        }

    for sub in ("model_answer", "model_judgment", "reference_answer"):
        (folder / sub).mkdir(parents=True)
    questions = [{"question_id": q, "turns": [turn(f"Question {q}?")]} for q in "ab"]
    _jsonl(folder / "question.jsonl", questions)
    for model in MODELS:
        _jsonl(
            folder / "model_answer" / f"{model}.jsonl", [answer(q, model) for q in "ab"]
        )
    _jsonl(
        folder / "reference_answer" / "gpt-4.jsonl", [answer(q, "gpt-4") for q in "ab"]
    )
    _jsonl(folder / "model_judgment" / "gpt-4_single.jsonl", judgments)
    return folder


def _grades(**extra: Any) -> list[dict[str, Any]]:
    return [
        {"question_id": q, "model": m, "judgment": "[[8]]", "score": 8, **extra}
        for q in "ab"
        for m in MODELS
    ]


def _policy(tmp_path: Path) -> Path:
    policy = {
        "tiers": [
            {"name": "small", "model": MODELS[0]},
            {"name": "large", "model": MODELS[1]},
        ]
    }
    path = tmp_path / "policy.json"
    path.write_text(json.dumps(policy | {"checks": [{"kind": "non_empty"}]}))
    return path


def test_arena_hard_turns_as_objects_read_as_their_content(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Questions and answers whose turns are {"content": ...} objects read
    as the same rows as plain strings, and the command runs."""
    objects = read_rows(_arena(tmp_path / "hard", True, _grades()), price_table)
    plain = read_rows(_arena(tmp_path / "plain", False, _grades()), price_table)
    assert objects.rows == plain.rows
    assert objects.rows[0].prompt == "Question a?"
    assert objects.rows[0].outcomes["gpt-4o"].response == "gpt-4o answers a"
    args = ["--policy", str(_policy(tmp_path)), "--fit-fraction", "0", "--json"]
    code = main(["eval", "cascade", str(tmp_path / "hard"), *args])
    out, err = capsys.readouterr()
    assert (code, json.loads(out)["rows"]) == (0, 2), err


def test_a_turn_that_is_no_text_is_refused_naming_its_line(tmp_path: Path) -> None:
    """A turn neither a string nor an object with content exits 2, not 1."""
    folder = _arena(tmp_path / "hard", True, _grades())
    question = folder / "question.jsonl"
    question.write_text(
        question.read_text() + json.dumps({"question_id": "c", "turns": [7]}) + "\n"
    )
    with pytest.raises(ConfigError, match=r"question.jsonl:3: not an Arena-Bench"):
        read_rows(folder, price_table)


def test_fastchat_unrated_and_later_turn_grades_are_left_out_and_said(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A -1 grade (FastChat could not read the rating) is a missing grade,
    not an error; turn-2 grades are left out; both are counted in a warning."""
    grades = _grades(judge=["gpt-4", "single-v1"], turn=1)
    grades[0]["score"] = -1
    grades += _grades(judge=["gpt-4", "single-v1-multi-turn"], turn=2)
    caplog.set_level(logging.WARNING)
    loaded = read_rows(_arena(tmp_path / "mt", False, grades), price_table)
    assert [sorted(row.outcomes) for row in loaded.rows] == [["gpt-4o"], sorted(MODELS)]
    assert "1 grade(s) of -1 left out" in caplog.text
    assert "4 grade(s) of a second or later turn left out" in caplog.text


def test_grades_of_two_judges_are_refused_naming_the_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A folder with gpt-4's and claude's grade files exits 2 naming both,
    instead of letting the first file in sorted order win."""
    folder = _arena(tmp_path / "mt", False, _grades(judge=["gpt-4", "single-v1"]))
    _jsonl(
        folder / "model_judgment" / "claude-3-opus_single.jsonl",
        _grades(judge=["claude-3-opus", "single-v1"]),
    )
    with pytest.raises(ConfigError) as caught:
        read_rows(folder, price_table)
    message = str(caught.value)
    assert "judge grades by 2 judge models: 'claude-3-opus' in " in message
    assert "claude-3-opus_single.jsonl; 'gpt-4' in " in message
    assert "move the others out" in message
    args = ["--policy", str(_policy(tmp_path))]
    assert main(["eval", "cascade", str(folder), *args]) == 2
    assert "judge grades by 2 judge models" in capsys.readouterr().err


# -- replay ----------------------------------------------------------------------


def _tagged(task: str, value: str) -> SpendRecord:
    return SpendRecord(
        ts=datetime(2026, 12, 1, tzinfo=UTC) + timedelta(seconds=len(task)),
        task_id=task,
        call_id=f"call-{task}",
        model="gpt-4o",
        input_tokens=100,
        output_tokens=10,
        cost_usd=Decimal("0.0004"),
        tags={"correct": value},
    )


def test_replay_reads_yes_no_quality_words_and_warns_once_of_others(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """true/false/yes/no in any case are 1/0; a value it cannot read leaves
    the task without quality, with one warning for all of them."""
    values = {"t-true": "true", "t-no": "No", "t-yes": " YES ", "t-false": "False"}
    values |= {"t-one": "1", "t-maybe": "maybe", "t-unsure": "unsure"}
    caplog.set_level(logging.WARNING, logger="governor._replay")
    run = replay([_tagged(task, v) for task, v in values.items()], Policy())
    qualities = {task: t.recorded_quality for task, t in run.tasks.items()}
    assert qualities == {
        "t-true": 1.0,
        "t-no": 0.0,
        "t-yes": 1.0,
        "t-false": 0.0,
        "t-one": 1.0,
        "t-maybe": None,
        "t-unsure": None,
    }
    warnings = [r for r in caplog.records if r.name == "governor._replay"]
    assert len(warnings) == 1
    assert "2 quality/correct tag value(s) could not be read" in warnings[0].message


# -- eval anomalies --------------------------------------------------------------

BURST_ROWS = [(t // 3, 100 + t, 10 + t % 7) for t in range(60)]


def _trace(path: Path, header: str, rows: list[tuple[int, int, int]]) -> Path:
    lines = [header] + [
        f"{t},ChatGPT,{i},{o},{i + o},Conversation log" for t, i, o in rows
    ]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_burstgpt_columns_read_as_the_azure_ones(tmp_path: Path) -> None:
    """BurstGPT's Timestamp (seconds from its start, read as Unix seconds),
    Request tokens and Response tokens give the events of the Azure names."""
    burst = _trace(
        tmp_path / "BurstGPT_1.csv",
        "Timestamp,Model,Request tokens,Response tokens,Total tokens,Log Type",
        BURST_ROWS,
    )
    azure = _trace(
        tmp_path / "azure.csv",
        "TIMESTAMP,Model,ContextTokens,GeneratedTokens,Total tokens,Log Type",
        BURST_ROWS,
    )
    events = load_trace(burst).events["team:BurstGPT_1"]
    assert events == load_trace(azure).events["team:azure"]
    assert (events[0][0], events[-1][0]) == (0, 19 * 1_000_000)


def test_a_burstgpt_bad_count_names_its_column(tmp_path: Path) -> None:
    """An unreadable token count is named by the file's own column name."""
    path = _trace(
        tmp_path / "b.csv",
        "Timestamp,Model,Request tokens,Response tokens,Total tokens,Log Type",
        BURST_ROWS,
    )
    path.write_text(path.read_text() + "30,ChatGPT,abc,1,1,Conversation log\n")
    with pytest.raises(ConfigError, match=r"b.csv:62: Request tokens 'abc' is not"):
        load_trace(path)


def test_rows_that_repeat_exactly_are_kept_as_traffic(tmp_path: Path) -> None:
    """Identical requests in the same second are real traffic: kept."""
    rows = BURST_ROWS + BURST_ROWS[:5]
    path = _trace(
        tmp_path / "dups.csv",
        "Timestamp,Model,Request tokens,Response tokens,Total tokens,Log Type",
        rows,
    )
    assert len(load_trace(path).events["team:dups"]) == len(rows)
