"""Eval commands on held-back-like input: raw TSV quotes, rows of too many or
too few cells, and token counts no call can have."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import pytest

from governor.cache._evaluate import read_pairs
from governor.cli import main

# -- eval cache ------------------------------------------------------------------

QQP_HEADER = "id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate\n"


def _eval(
    capsys: pytest.CaptureFixture[str], command: str, path: Path, *args: str
) -> tuple[int, Any]:
    """Exit code and the JSON report, or the error's message."""
    code = main(["eval", command, str(path), "--json", *args])
    out = capsys.readouterr().out
    document = json.loads(out)
    if code != 0:
        return code, str(document["error"]["message"])
    return code, document


def _cache(capsys: pytest.CaptureFixture[str], path: Path) -> tuple[int, Any]:
    return _eval(capsys, "cache", path, "--embedder", "hashing")


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_a_raw_tsv_reads_quotes_as_text(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """GLUE/Quora TSV is written without quoting: a question starting with a
    quote does not take in the lines after it, and a cell quoted whole, as a
    CSV writer quotes one, loses its outer quotes."""
    rows = [
        ("How do I learn Python?", "How can I learn Python?", 1),
        ('"Why is the sky blue?', "What is Camel Crush made of?", 0),
        ('What does "AI" mean?', 'What is the word "quote"', 0),
        ("Who wrote Hamlet?", "How tall is Everest?", 0),
        ('"What does ""ML"" mean?"', '"AI" and "ML"', 0),
        ("What is a CPU?", "What is a GPU?", 0),
    ]
    text = QQP_HEADER + "".join(
        f"{n}\t{2 * n}\t{2 * n + 1}\t{a}\t{b}\t{label}\n"
        for n, (a, b, label) in enumerate(rows)
    )
    path = _write(tmp_path / "quora.tsv", text)
    code, report = _cache(capsys, path)
    assert (code, report["pairs"]) == (0, len(rows))
    read = [(p.a[-1]["content"], p.b[-1]["content"]) for p in read_pairs(path).pairs]
    assert read[1] == ('"Why is the sky blue?', "What is Camel Crush made of?")
    assert read[2] == ('What does "AI" mean?', 'What is the word "quote"')
    assert read[4] == ('What does "ML" mean?', '"AI" and "ML"')


@pytest.mark.parametrize(
    ("name", "text", "says"),
    [
        (
            "quora.csv",
            "question1,question2,is_duplicate\n"
            "How do I learn Python?,How can I learn Python?,1\n"
            "Who wrote Hamlet?,How tall,is Everest?,0,x\n",
            "quora.csv:3: 2 more cell(s) than the header (3 columns: "
            "'question1', 'question2', 'is_duplicate'); quote cells that hold "
            "the delimiter",
        ),
        (
            "paws.tsv",
            "id\tsentence1\tsentence2\tlabel\n"
            "0\tHow do I learn Python?\tHow can I\tlearn Python?\t1\n",
            "paws.tsv:2: 1 more cell(s) than the header (4 columns: 'id', "
            "'sentence1', 'sentence2', 'label'); a tab inside a cell splits it",
        ),
    ],
    ids=["csv", "tsv"],
)
def test_a_row_of_more_cells_than_the_header_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str, text: str, says: str
) -> None:
    """Cells past the header's are not dropped silently: a split cell shifts
    the row's values into the wrong columns."""
    code, message = _cache(capsys, _write(tmp_path / name, text))
    assert code == 2
    assert message.startswith(str(tmp_path / says))


@pytest.mark.parametrize("name", ["quora.csv", "quora.tsv"])
def test_a_short_row_names_the_files_own_columns(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str
) -> None:
    """A row cut short is named with the file's columns, not as a JSON object."""
    sep = "\t" if name.endswith(".tsv") else ","
    lines = [
        ["id", "qid1", "qid2", "question1", "question2", "is_duplicate"],
        ["0", "1", "2", "How do I learn Python?", "How can I learn Python?", "1"],
        ["3", "7", "8", "How do I learn Python?"],
    ]
    text = "".join(sep.join(line) + "\n" for line in lines)
    code, message = _cache(capsys, _write(tmp_path / name, text))
    assert code == 2
    assert message.startswith(
        f"{tmp_path / name}:3: 4 cell(s), too few to reach the 'question2', "
        "'is_duplicate' column(s) (the header has 6 columns: 'id', 'qid1', "
        "'qid2', 'question1', 'question2', 'is_duplicate'); a line break inside"
    )
    assert "JSON" not in message


@pytest.mark.parametrize("limit", [None, 1 << 30])
def test_a_csv_quote_left_open_is_named_as_such(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], limit: int | None
) -> None:
    """A CSV quote that takes in the rest of a large file is named as the
    cause, whatever field limit other code in the process has set."""
    if limit is not None:
        saved = csv.field_size_limit(limit)
        try:
            _quote_left_open(tmp_path, capsys)
        finally:
            csv.field_size_limit(saved)
    else:
        _quote_left_open(tmp_path, capsys)


def _quote_left_open(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rows = "".join(f"Question {n}?,Another question {n}?,0\n" for n in range(6000))
    text = 'question1,question2,is_duplicate\n"Why is the sky blue?,a,1\n' + rows
    code, message = _cache(capsys, _write(tmp_path / "quora.csv", text))
    assert code == 2
    assert "field larger than field limit" in message
    assert 'a quote (") left open on this line or one before it' in message


# -- eval anomalies --------------------------------------------------------------


def _trace(path: Path, cells: list[str]) -> Path:
    """A trace of 200 calls a second apart, with ``cells`` as line 5's counts."""
    lines = ["TIMESTAMP,ContextTokens,GeneratedTokens"]
    lines += [f"2023-11-16 18:{n // 60:02d}:{n % 60:02d},1200,80" for n in range(200)]
    lines[4] = ",".join(["2023-11-16 18:00:03", *cells])
    return _write(path, "\n".join(lines) + "\n")


def _anomalies(capsys: pytest.CaptureFixture[str], path: Path) -> tuple[int, Any]:
    return _eval(capsys, "anomalies", path, "--defaults-only", "--trials", "1")


def test_a_thousands_separator_in_a_trace_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """4,808 unquoted is two cells: refused, not read as 4 and 808 tokens."""
    path = _trace(tmp_path / "code.csv", ["4", "808", "10"])
    code, message = _anomalies(capsys, path)
    assert code == 2
    assert message.startswith(f"{path}:5: 1 more cell(s) than the header (3 columns)")
    assert "thousands separator" in message


@pytest.mark.parametrize(
    ("cells", "shown"),
    [
        (["1" + "0" * 308, "80"], "1.000e+308"),
        (["1e400", "80"], "1.000e+400"),
        (["9" * 400, "80"], "1.000e+400"),
        (["1200", "1e23"], "1.000e+23"),
        (["1000000000001", "80"], "1.000e+12"),
    ],
    ids=["1e308", "1e400", "400-digits", "1e23-generated", "just-over"],
)
def test_a_token_count_over_a_trillion_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], cells: list[str], shown: str
) -> None:
    """No call takes 10**12 tokens: refused naming the file, line and column,
    not an OverflowError nor a silently distorted token rate."""
    path = _trace(tmp_path / "code.csv", cells)
    code, message = _anomalies(capsys, path)
    assert code == 2
    column = "GeneratedTokens" if cells[0] == "1200" else "ContextTokens"
    assert message.startswith(f"{path}:5: {column} ")
    assert f"is {shown} tokens; more than a trillion (10**12) tokens" in message


# -- eval loops ------------------------------------------------------------------


def _own_run(tokens: int | float) -> dict[str, Any]:
    calls = [{"output": "ls", "prompt_tokens": 1662}, {"output": "cat x"}]
    calls[1]["completion_tokens"] = tokens
    return {"id": "r1", "outcome": "resolved", "calls": calls}


def _mini_run(tokens: int | float) -> dict[str, Any]:
    reply = {"extra": {"response": {"usage": {"completion_tokens": tokens}}}}
    return {
        "info": {"exit_status": "Submitted"},
        "messages": [
            {"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": "Fix the bug."},
            {"role": "assistant", "content": "ls"} | reply,
        ],
    }


@pytest.mark.parametrize(
    "tokens", [10**400, 1e23, 10**12 + 1], ids=["1e400", "1e23", "just-over"]
)
@pytest.mark.parametrize(
    ("run", "where"),
    [
        (_own_run, "calls[1].completion_tokens"),
        (_mini_run, "model call 1's completion_tokens"),
    ],
    ids=["trajectory", "mini-swe-agent"],
)
def test_eval_loops_refuses_a_token_count_over_a_trillion(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    tokens: int | float,
    run: Any,
    where: str,
) -> None:
    """As eval anomalies does: a corrupt count is named, not read; a
    trillion itself is still a count."""
    path = _write(tmp_path / "runs.jsonl", json.dumps(run(tokens)) + "\n")
    code, message = _eval(capsys, "loops", path)
    assert code == 2
    assert message.startswith(f"{path}:1: {where} is ")
    assert "more than a trillion (10**12) tokens in one call" in message
    at_most = _write(tmp_path / "ok.jsonl", json.dumps(run(10**12)) + "\n")
    code, report = _eval(capsys, "loops", at_most)
    assert (code, report["calls_without_tokens"]) == (0, 0)
