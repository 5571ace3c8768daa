"""Readers of recorded per-model outcomes into replay rows.

Layouts (gzip accepted for every file, by the ``.gz`` suffix):

* RouterBench CSV: per model ``M`` the columns ``M`` (correctness in [0, 1]),
  ``M|model_response`` and ``M|total_cost`` (USD); ``prompt``, ``eval_name``
  and an unnamed first index column. A directory reads every such file.
* JSONL (the documented equivalent), one row per line::

    {"id": "q1", "prompt": "...", "group": "arc",
     "outcomes": {"model-a": {"score": 1.0, "response": "B",
                              "cost_usd": "0.00012", "judge_cost_usd": "0"}}}

  ``score`` in [0, 1]; ``cost_usd`` a number or a decimal string;
  ``group`` and ``judge_cost_usd`` optional.
* RouteLLM GSM8K CSV (``prompt``, ``M``: True/False, ``M_response``) and
  Arena-Bench-v1 (``question.jsonl``, ``model_answers.jsonl.gz``,
  ``judgments.jsonl.gz`` with 1-10 grades): these carry no costs, so a
  :class:`Prices` table prices them from estimated token counts.
"""

from __future__ import annotations

import ast
import csv
import gzip
import io
import json
import math
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any, TextIO

from governor._errors import ConfigError
from governor.cascade._replay import Recorded, ReplayRow

__all__ = [
    "BYTES_PER_TOKEN",
    "Prices",
    "estimate_tokens",
    "load_arena",
    "load_jsonl",
    "load_routellm_gsm8k",
    "load_routerbench",
    "load_rows",
]

BYTES_PER_TOKEN = 4
"""Token estimate for data sets without counts: one token per 4 UTF-8 bytes,
the usual rule of thumb for English text under byte-pair encodings."""

_COST = "|total_cost"
_RESPONSE = "|model_response"


def estimate_tokens(text: str) -> int:
    """Estimate a text's token count as ``ceil(bytes / BYTES_PER_TOKEN)``."""
    return math.ceil(len(text.encode("utf-8")) / BYTES_PER_TOKEN)


@dataclass(frozen=True, slots=True)
class Prices:
    """Per-token list prices for data sets that record no cost.

    Attributes:
        per_model: model name in the data -> (input, output) USD per token.
        judge: the judge model's (input, output) USD per token, if graded.
        source: where the prices come from, for the report.
    """

    per_model: Mapping[str, tuple[Decimal, Decimal]]
    judge: tuple[Decimal, Decimal] | None = None
    source: str = ""

    def call_usd(self, model: str, prompt: str, response: str) -> Decimal | None:
        """Price one call from estimated tokens; None if the model is unpriced."""
        price = self.per_model.get(model)
        if price is None:
            return None
        return _priced(price, prompt, response)

    def judge_usd(self, judge_prompt: str, judgment: str) -> Decimal:
        """Price one judge call from estimated tokens; zero without a judge."""
        return _priced(self.judge, judge_prompt, judgment) if self.judge else Decimal(0)


def _priced(price: tuple[Decimal, Decimal], prompt: str, response: str) -> Decimal:
    return price[0] * estimate_tokens(prompt) + price[1] * estimate_tokens(response)


def _open_text(path: Path) -> TextIO:
    if path.suffix == ".gz":
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8", newline="")
    return path.open(encoding="utf-8", newline="")


def _listed_text(cell: str) -> str:
    """RouterBench stores texts as a printed Python list of strings."""
    if not cell.startswith("["):
        return cell
    try:
        value = ast.literal_eval(cell)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        return cell
    if isinstance(value, list):
        return "".join(str(part) for part in value)
    return cell


def _csv_rows(path: Path) -> Iterator[dict[str, str]]:
    csv.field_size_limit(1 << 30)  # responses exceed the 128 KiB default
    with _open_text(path) as handle:
        yield from csv.DictReader(handle)


def load_routerbench(path: Path) -> list[ReplayRow]:
    """Read RouterBench CSV files (a file, or every ``*.csv[.gz]`` in a folder)."""
    files = sorted(path.glob("*.csv*")) if path.is_dir() else [path]
    rows: list[ReplayRow] = []
    for file in files:
        for record in _csv_rows(file):
            rows.append(_routerbench_row(file, record))
    return rows


def _routerbench_row(file: Path, record: Mapping[str, str]) -> ReplayRow:
    models = [c[: -len(_COST)] for c in record if c.endswith(_COST)]
    outcomes: dict[str, Recorded] = {}
    index = record.get("") or record.get("sample_id", "")
    for model in models:
        score = record.get(model)
        text = record.get(model + _RESPONSE)
        cost = record[model + _COST]
        if not score or text is None or not cost:
            continue  # a model without an outcome on this row
        recorded = Recorded(float(score), _listed_text(text), Decimal(cost))
        outcomes[model] = _checked(recorded, model, f"{file.name} row {index}")
    stem = file.name.split(".")[0]
    return ReplayRow(
        key=f"{stem}:{index}",
        prompt=_listed_text(record.get("prompt", "")),
        outcomes=outcomes,
        group=record.get("eval_name", ""),
    )


def load_jsonl(path: Path) -> list[ReplayRow]:
    """Read the JSONL layout described in this module's docstring."""
    rows: list[ReplayRow] = []
    with _open_text(path) as handle:
        for number, line in enumerate(handle, 1):
            if line.strip():
                where = f"{path.name}:{number}"
                rows.append(_jsonl_row(_parsed(line, where), where))
    return rows


def _parsed(line: str, where: str) -> Any:
    try:
        return json.loads(line)
    except json.JSONDecodeError as exc:
        raise ConfigError(
            f"{where}: not a JSON line ({exc.msg} at column {exc.colno}); each "
            "line must hold one JSON object"
        ) from exc


def _checked(recorded: Recorded, model: str, where: str) -> Recorded:
    """Refuse a recorded outcome no replay can use: a score outside [0, 1],
    or a cost that is negative, NaN or infinite."""
    if not 0 <= recorded.score <= 1:  # NaN fails this too
        raise ConfigError(
            f"{where}: model {model!r} has score {recorded.score}; a score is a "
            "number in [0, 1] (scale a grade g of 1-10 as g / 10)"
        )
    costs = {"cost_usd": recorded.cost_usd, "judge_cost_usd": recorded.judge_cost_usd}
    for name, value in costs.items():
        if not value.is_finite() or value < 0:
            raise ConfigError(
                f"{where}: model {model!r} has {name} {value}; a cost is a "
                "finite number of US dollars, 0 or more"
            )
    return recorded


def _jsonl_row(data: Mapping[str, Any], where: str) -> ReplayRow:
    try:
        outcomes = {
            model: _checked(
                Recorded(
                    float(o["score"]),
                    str(o.get("response", "")),
                    Decimal(str(o["cost_usd"])),
                    Decimal(str(o.get("judge_cost_usd", "0"))),
                ),
                str(model),
                where,
            )
            for model, o in data["outcomes"].items()
        }
        return ReplayRow(
            str(data.get("id", where)),
            str(data["prompt"]),
            outcomes,
            str(data.get("group", "")),
        )
    except ConfigError:
        raise
    except (KeyError, TypeError, ArithmeticError, ValueError) as exc:
        raise ConfigError(
            f"{where}: not a replay row ({exc!r}); expected "
            '{"prompt": str, "outcomes": {model: {"score", "response", "cost_usd"}}}'
        ) from exc


def load_routellm_gsm8k(path: Path, prices: Prices) -> list[ReplayRow]:
    """Read RouteLLM's ``gsm8k_responses.csv[.gz]``, priced by ``prices``."""
    rows: list[ReplayRow] = []
    for number, record in enumerate(_csv_rows(path)):
        prompt = record["prompt"]
        outcomes: dict[str, Recorded] = {}
        for column, text in record.items():
            if not column.endswith("_response"):
                continue
            model = column[: -len("_response")]
            cost = prices.call_usd(model, prompt, text)
            if cost is not None and record.get(model) in ("True", "False"):
                score = 1.0 if record[model] == "True" else 0.0
                outcomes[model] = Recorded(score, text, cost)
        rows.append(ReplayRow(f"gsm8k:{number}", prompt, outcomes, "gsm8k"))
    return rows


def _jsonl(path: Path) -> Iterator[dict[str, Any]]:
    with _open_text(path) as handle:
        for line in handle:
            if line.strip():
                yield json.loads(line)


def load_arena(folder: Path, prices: Prices) -> list[ReplayRow]:
    """Read Arena-Bench-v1; a grade g in 1-10 becomes the score g / 10.

    Models without a price, and answers without a parsed grade, are left
    out of the row. The judge's cost is its prompt (question, reference
    answer, model answer) and its written judgment at ``prices.judge``.
    """
    questions = {
        q["question_id"]: q["turns"][0] for q in _jsonl(folder / "question.jsonl")
    }
    references = _first_turns(folder / "reference_answer_gpt-4.jsonl.gz")
    answers = _answers(folder / "model_answers.jsonl.gz")
    rows: dict[str, dict[str, Recorded]] = {qid: {} for qid in questions}
    for grade in _jsonl(folder / "judgments.jsonl.gz"):
        qid, model = grade["question_id"], grade["model"]
        if grade.get("turn", 1) != 1 or grade.get("score") is None:
            continue
        text = answers.get((qid, model))
        if qid not in rows or model in rows[qid] or text is None:
            continue  # unknown question, a repeated grade, or no answer text
        cost = prices.call_usd(model, questions[qid], text)
        if cost is None:
            continue
        judge_prompt = questions[qid] + references.get(qid, "") + text
        judge_cost = prices.judge_usd(judge_prompt, str(grade.get("judgment", "")))
        rows[qid][model] = Recorded(float(grade["score"]) / 10, text, cost, judge_cost)
    return [
        ReplayRow(f"arena:{qid}", questions[qid], outcomes, "arena")
        for qid, outcomes in rows.items()
    ]


def _first_turns(path: Path) -> dict[str, str]:
    return {a["question_id"]: a["choices"][0]["turns"][0] for a in _jsonl(path)}


def _answers(path: Path) -> dict[tuple[str, str], str]:
    return {
        (a["question_id"], a["model_id"]): a["choices"][0]["turns"][0]
        for a in _jsonl(path)
    }


Loader = Callable[[Path], list[ReplayRow]]


def load_rows(path: Path, prices_for: Callable[[str], Prices]) -> list[ReplayRow]:
    """Read ``path`` in whichever supported layout it holds.

    Args:
        path: a file or a folder.
        prices_for: returns the price table for a cost-less layout, by name
            (``"routellm-gsm8k"`` or ``"arena"``).
    """
    if path.is_dir():
        if (path / "judgments.jsonl.gz").exists():
            return load_arena(path, prices_for("arena"))
        gsm8k = path / "gsm8k_responses.csv.gz"
        if gsm8k.exists():
            return load_routellm_gsm8k(gsm8k, prices_for("routellm-gsm8k"))
        if any(path.glob("*.csv*")):
            return load_routerbench(path)
        raise ConfigError(f"{path}: no RouterBench, RouteLLM or Arena files found")
    try:
        return _load_file(path, prices_for)
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"{path}: not UTF-8 text ({exc.reason}); save the file as UTF-8, "
            "e.g. iconv -f latin1 -t utf-8"
        ) from exc


def _load_file(path: Path, prices_for: Callable[[str], Prices]) -> list[ReplayRow]:
    name = path.name
    if ".jsonl" in name:
        return load_jsonl(path)
    if name.startswith("gsm8k_responses"):
        return load_routellm_gsm8k(path, prices_for("routellm-gsm8k"))
    if ".csv" in name:
        return load_routerbench(path)
    raise ConfigError(f"{path}: unknown layout; give a .csv[.gz] or .jsonl[.gz] file")
