"""Readers of recorded per-model outcomes into replay rows.

The layout of a file is told by its content (CSV header columns, the keys of
the first JSON line; see :mod:`governor.cascade._sniff`), gzip by its magic
bytes, so the file name does not matter. Layouts:

* RouterBench CSV: per model ``M`` the columns ``M`` (correctness in [0, 1]),
  ``M|model_response`` and ``M|total_cost`` (USD); ``prompt``, ``eval_name``
  and an unnamed first index column. A folder reads every such file.
* JSONL (the documented equivalent), one row per line::

    {"id": "q1", "prompt": "...", "group": "arc",
     "outcomes": {"model-a": {"score": 1.0, "response": "B",
                              "cost_usd": "0.00012", "judge_cost_usd": "0"}}}

  ``score`` in [0, 1]; ``cost_usd`` a number or a decimal string;
  ``group`` and ``judge_cost_usd`` optional.
* RouteLLM CSV (``prompt``, ``M``: True/False, ``M_response``) and
  Arena-Bench-v1 (a folder of question, model-answer, reference-answer and
  judgment JSONL files with 1-10 grades): these carry no costs, so a
  :class:`Prices` table prices them from estimated token counts.

A correctness cell reads a number in [0, 1] or a boolean word (true/false,
yes/no, correct/incorrect, any case). A cell that reads as neither, or a cost
that is not a number, is refused naming the file and row; an empty cell
means the model has no outcome on that row. A CSV row with fewer cells than
the header is left out and counted (:class:`LoadedRows`).
"""

from __future__ import annotations

import ast
import csv
import json
import logging
import math
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

from governor._errors import ConfigError
from governor.cascade._replay import Recorded, ReplayRow
from governor.cascade._sniff import (
    ARENA_ANSWERS,
    ARENA_JUDGMENTS,
    ARENA_QUESTIONS,
    COST_SUFFIX,
    REPLAY_JSONL,
    RESPONSE_SUFFIX,
    ROUTELLM,
    ROUTELLM_RESPONSE,
    ROUTERBENCH,
    Sniffed,
    open_text,
    reading,
    sniff,
)

__all__ = [
    "BYTES_PER_TOKEN",
    "LoadedRows",
    "Prices",
    "estimate_tokens",
    "load_arena",
    "load_jsonl",
    "load_routellm_gsm8k",
    "load_routerbench",
    "load_rows",
    "read_rows",
]

logger = logging.getLogger(__name__)

BYTES_PER_TOKEN = 4
"""Token estimate for data sets without counts: one token per 4 UTF-8 bytes,
the usual rule of thumb for English text under byte-pair encodings."""

SHORT_ROW = "fewer cells than the header"
"""The reason a CSV row with missing trailing cells is left out."""

_TRUTH: Mapping[str, float] = {
    "true": 1.0,
    "yes": 1.0,
    "correct": 1.0,
    "false": 0.0,
    "no": 0.0,
    "incorrect": 0.0,
}


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


@dataclass(frozen=True, slots=True)
class LoadedRows:
    """Replay rows read from a file or folder, and what was left out.

    Attributes:
        rows: the rows read.
        read: data rows read, the left-out ones included.
        left_out: reason -> number of rows left out for it.
        unpriced: models the data records that the price table lacks
            (cost-less layouts only); their outcomes are left out.
    """

    rows: tuple[ReplayRow, ...]
    read: int
    left_out: Mapping[str, int]
    unpriced: frozenset[str] = frozenset()


@dataclass(slots=True)
class _Tally:
    """Counts kept while reading: rows read, rows left out by reason."""

    read: int = 0
    left_out: Counter[str] = field(default_factory=Counter)
    unpriced: set[str] = field(default_factory=set)

    def leave_out(self, reason: str, where: str) -> None:
        self.left_out[reason] += 1
        logger.warning("%s: %s; row left out", where, reason)


# -- cells ---------------------------------------------------------------------


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


def _correctness(cell: str, model: str, where: str) -> float:
    """Read a correctness cell: a boolean word in any case, or a number."""
    text = cell.strip()
    if text.lower() in _TRUTH:
        return _TRUTH[text.lower()]
    try:
        return float(text)
    except ValueError:
        raise ConfigError(
            f"{where}: model {model!r} has correctness {cell!r}; write a number "
            "in [0, 1] or true/false (also yes/no, correct/incorrect, 1/0)"
        ) from None


def _usd(cell: str, model: str, where: str) -> Decimal:
    try:
        return Decimal(cell.strip())
    except InvalidOperation:
        raise ConfigError(
            f"{where}: model {model!r} has cost {cell!r}; a cost is a plain "
            "number of US dollars, e.g. 0.00123"
        ) from None


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


# -- CSV layouts -----------------------------------------------------------------


def _csv_records(path: Path, delimiter: str) -> Iterator[tuple[int, dict[Any, Any]]]:
    """Yield (data row number from 1, record) of a CSV file."""
    csv.field_size_limit(1 << 30)  # responses exceed the 128 KiB default
    with reading(path), open_text(path) as handle:
        yield from enumerate(csv.DictReader(handle, delimiter=delimiter), 1)


def _cells_fit(record: Mapping[Any, Any], where: str, tally: _Tally) -> bool:
    """False (and counted) for a short row; a long row is refused."""
    if None in record:
        extra = len(record[None])
        raise ConfigError(
            f"{where}: {extra} more cell(s) than the header; quote cells that "
            "hold the delimiter"
        )
    if None in record.values():
        tally.leave_out(SHORT_ROW, where)
        return False
    return True


def _where(path: Path, number: int, index: str | None = None) -> str:
    place = f"{path.name} row {number}"
    return f"{place} (index {index})" if index else place


def _routerbench_models(path: Path, columns: tuple[str, ...]) -> list[str]:
    """Models of a RouterBench header; each needs its three columns."""
    models = [c[: -len(COST_SUFFIX)] for c in columns if c.endswith(COST_SUFFIX)]
    for model in models:
        for column in (model, model + RESPONSE_SUFFIX):
            if column not in columns:
                raise ConfigError(
                    f"{path}: model {model!r} has a cost column but no "
                    f"{column!r} column; a RouterBench file gives each model "
                    "'M', 'M|model_response' and 'M|total_cost'"
                )
    return models


def _read_routerbench(path: Path, found: Sniffed, tally: _Tally) -> Iterator[ReplayRow]:
    models = _routerbench_models(path, found.columns)
    stem = path.name.split(".")[0]
    for number, record in _csv_records(path, found.delimiter):
        tally.read += 1
        index = record.get("") or record.get("sample_id") or ""
        where = _where(path, number, index)
        if _cells_fit(record, where, tally):
            yield ReplayRow(
                key=f"{stem}:{index}",
                prompt=_listed_text(record.get("prompt") or ""),
                outcomes=_routerbench_outcomes(record, models, where),
                group=record.get("eval_name") or "",
            )


def _routerbench_outcomes(
    record: Mapping[str, str], models: list[str], where: str
) -> dict[str, Recorded]:
    outcomes: dict[str, Recorded] = {}
    for model in models:
        score, cost = record[model], record[model + COST_SUFFIX]
        if not score.strip() or not cost.strip():
            continue  # a model without an outcome on this row
        recorded = Recorded(
            _correctness(score, model, where),
            _listed_text(record[model + RESPONSE_SUFFIX]),
            _usd(cost, model, where),
        )
        outcomes[model] = _checked(recorded, model, where)
    return outcomes


def _read_routellm(
    path: Path, found: Sniffed, prices: Prices, tally: _Tally
) -> Iterator[ReplayRow]:
    cut = len(ROUTELLM_RESPONSE)
    models = [
        c[:-cut]
        for c in found.columns
        if c.endswith(ROUTELLM_RESPONSE) and c[:-cut] in found.columns
    ]
    # gsm8k_responses.csv keys its rows gsm8k:0, gsm8k:1, ...
    prefix = path.name.split(".")[0].removesuffix("_responses")
    for number, record in _csv_records(path, found.delimiter):
        tally.read += 1
        where = _where(path, number)
        if not _cells_fit(record, where, tally):
            continue
        prompt = record["prompt"]
        outcomes: dict[str, Recorded] = {}
        for model in models:
            if not record[model].strip():
                continue  # no outcome for this model on this row
            score = _correctness(record[model], model, where)
            text = record[model + ROUTELLM_RESPONSE]
            cost = prices.call_usd(model, prompt, text)
            if cost is None:
                tally.unpriced.add(model)
                continue
            outcomes[model] = _checked(Recorded(score, text, cost), model, where)
        yield ReplayRow(f"{prefix}:{number - 1}", prompt, outcomes, prefix)


# -- JSON layouts ----------------------------------------------------------------


def _json_lines(path: Path) -> Iterator[tuple[str, Any]]:
    """Yield (``file:line``, parsed object) for each non-blank line."""
    with reading(path), open_text(path) as handle:
        for number, line in enumerate(handle, 1):
            if line.strip():
                where = f"{path.name}:{number}"
                yield where, _parsed(line, where)


def _parsed(line: str, where: str) -> Any:
    try:
        return json.loads(line)
    except json.JSONDecodeError as exc:
        raise ConfigError(
            f"{where}: not a JSON line ({exc.msg}, column {exc.colno}); each "
            "line must hold one JSON object"
        ) from exc


def _read_jsonl(path: Path, tally: _Tally) -> Iterator[ReplayRow]:
    for where, data in _json_lines(path):
        tally.read += 1
        yield _jsonl_row(data, where)


def _score(value: Any, model: str, where: str) -> float:
    if isinstance(value, str):
        return _correctness(value, model, where)
    return float(value)


def _jsonl_row(data: Mapping[str, Any], where: str) -> ReplayRow:
    try:
        outcomes = {
            model: _checked(
                Recorded(
                    _score(o["score"], str(model), where),
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


# -- Arena-Bench-v1 ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _ArenaFiles:
    """An Arena-Bench folder's files, each part possibly split over files."""

    questions: tuple[Path, ...]
    answers: tuple[Path, ...]
    references: tuple[Path, ...]
    judgments: tuple[Path, ...]


def _arena_files(folder: Path, found: Mapping[Path, Sniffed]) -> _ArenaFiles | None:
    """The Arena-Bench parts of a folder, or None when it is not one."""

    def of(layout: str) -> tuple[Path, ...]:
        return tuple(p for p, s in found.items() if s.layout == layout)

    questions, judgments = of(ARENA_QUESTIONS), of(ARENA_JUDGMENTS)
    if not questions or not judgments:
        return None
    answering = of(ARENA_ANSWERS)
    references = tuple(p for p in answering if "reference" in p.name.lower())
    answers = tuple(p for p in answering if p not in references)
    for part, files in (("model answer", answers), ("reference answer", references)):
        if not files:
            raise ConfigError(
                f"{folder}: an Arena-Bench folder without a {part} file "
                "(JSON lines with question_id and choices; a reference file has "
                "'reference' in its name)"
            )
    return _ArenaFiles(questions, answers, references, judgments)


def _arena_field(path: Path, kind: str, read: Callable[[Any], Any]) -> Iterator[Any]:
    for where, line in _json_lines(path):
        try:
            yield read(line)
        except (KeyError, IndexError, TypeError) as exc:
            raise ConfigError(
                f"{where}: not an Arena-Bench {kind} line (missing {exc})"
            ) from exc


def _first_turns(files: tuple[Path, ...]) -> dict[Any, str]:
    def read(a: Any) -> tuple[Any, str]:
        return a["question_id"], a["choices"][0]["turns"][0]

    return dict(pair for path in files for pair in _arena_field(path, "answer", read))


def _answers(files: tuple[Path, ...]) -> dict[tuple[Any, str], str]:
    def read(a: Any) -> tuple[tuple[Any, str], str]:
        return (a["question_id"], a["model_id"]), a["choices"][0]["turns"][0]

    return dict(pair for path in files for pair in _arena_field(path, "answer", read))


def _questions(files: tuple[Path, ...]) -> dict[Any, str]:
    def read(q: Any) -> tuple[Any, str]:
        return q["question_id"], q["turns"][0]

    return dict(pair for path in files for pair in _arena_field(path, "question", read))


def _grade(value: Any, model: str, where: str) -> float:
    """An Arena-Bench grade (1-10, number or numeric string) as a score."""
    try:
        grade = float(value)
    except (TypeError, ValueError):
        raise ConfigError(
            f"{where}: model {model!r} has grade {value!r}; a grade is a number "
            "from 1 to 10"
        ) from None
    if not 0 <= grade <= 10:  # NaN fails this too
        raise ConfigError(
            f"{where}: model {model!r} has grade {grade:g}; a grade is a number "
            "from 1 to 10"
        )
    return grade / 10


def _read_arena(files: _ArenaFiles, prices: Prices, tally: _Tally) -> list[ReplayRow]:
    questions = _questions(files.questions)
    references = _first_turns(files.references)
    answers = _answers(files.answers)
    tally.read += len(questions)
    rows: dict[Any, dict[str, Recorded]] = {qid: {} for qid in questions}
    for path in files.judgments:
        for where, grade in _json_lines(path):
            qid, model = _graded(grade, where)
            if grade.get("turn", 1) != 1 or grade.get("score") is None:
                continue
            text = answers.get((qid, model))
            if qid not in rows or model in rows[qid] or text is None:
                continue  # unknown question, a repeated grade, or no answer text
            cost = prices.call_usd(model, questions[qid], text)
            if cost is None:
                tally.unpriced.add(model)
                continue
            judge_prompt = questions[qid] + references.get(qid, "") + text
            judge = prices.judge_usd(judge_prompt, str(grade.get("judgment", "")))
            score = _grade(grade["score"], model, where)
            recorded = Recorded(score, text, cost, judge)
            rows[qid][model] = _checked(recorded, model, where)
    return [
        ReplayRow(f"arena:{qid}", questions[qid], outcomes, "arena")
        for qid, outcomes in rows.items()
    ]


def _graded(grade: Any, where: str) -> tuple[Any, str]:
    """A judgment line's (question id, graded model)."""
    if not isinstance(grade, dict) or not isinstance(grade.get("model"), str):
        raise ConfigError(
            f"{where}: not an Arena-Bench judgment (a JSON object with "
            "question_id, model, score and judgment)"
        )
    return grade.get("question_id"), grade["model"]


# -- entry points ------------------------------------------------------------------

PricesFor = Callable[[str], Prices]
_LAYOUTS_HELP = (
    "expected a RouterBench CSV (columns M, M|model_response, M|total_cost), a "
    "RouteLLM CSV (prompt, M, M_response), replay JSONL (a JSON object with "
    "'prompt' and 'outcomes' per line) or an Arena-Bench-v1 folder"
)


def _read_file(
    path: Path, found: Sniffed, prices_for: PricesFor, tally: _Tally
) -> list[ReplayRow]:
    if found.layout == ROUTERBENCH:
        return list(_read_routerbench(path, found, tally))
    if found.layout == ROUTELLM:
        prices = prices_for("routellm-gsm8k")
        return list(_read_routellm(path, found, prices, tally))
    if found.layout == REPLAY_JSONL:
        return list(_read_jsonl(path, tally))
    if found.layout in (ARENA_QUESTIONS, ARENA_ANSWERS, ARENA_JUDGMENTS):
        raise ConfigError(
            f"{path}: one file of Arena-Bench-v1 ({found.why}); give the folder "
            "that holds its question, answer, reference and judgment files"
        )
    raise ConfigError(f"{path}: unknown layout: {found.why}; {_LAYOUTS_HELP}")


def _quiet_sniff(path: Path) -> Sniffed:
    """A folder's file that cannot be read is skipped, not fatal."""
    try:
        return sniff(path)
    except (ConfigError, OSError) as exc:
        return Sniffed(None, str(exc))


def _read_folder(folder: Path, prices_for: PricesFor, tally: _Tally) -> list[ReplayRow]:
    files = sorted(
        p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")
    )
    found = {path: _quiet_sniff(path) for path in files}
    arena = _arena_files(folder, found)
    if arena is not None:
        return _read_arena(arena, prices_for("arena"), tally)
    wanted = (ROUTERBENCH, ROUTELLM, REPLAY_JSONL)
    loadable = [p for p in files if found[p].layout in wanted]
    if not loadable:
        seen = "; ".join(f"{p.name}: {found[p].why}" for p in files[:6])
        raise ConfigError(
            f"{folder}: no RouterBench, RouteLLM, replay JSONL or Arena-Bench "
            f"files found ({seen or 'the folder is empty'}); {_LAYOUTS_HELP}"
        )
    rows: list[ReplayRow] = []
    for path in loadable:
        rows.extend(_read_file(path, found[path], prices_for, tally))
    return rows


def read_rows(path: Path, prices_for: PricesFor) -> LoadedRows:
    """Read ``path`` in whichever supported layout its content shows.

    Args:
        path: a file or a folder.
        prices_for: returns the price table for a cost-less layout, by name
            (``"routellm-gsm8k"`` or ``"arena"``).

    Returns:
        The rows, how many data rows were read, and the rows left out by
        reason (a CSV row shorter than its header).

    Raises:
        ConfigError: the path does not exist, holds no known layout or no
            data rows, or a value cannot be read (naming file and row).
    """
    if not path.exists():
        raise ConfigError(f"{path}: no such file or directory")
    tally = _Tally()
    if path.is_dir():
        rows = _read_folder(path, prices_for, tally)
    else:
        rows = _read_file(path, sniff(path), prices_for, tally)
    if not tally.read:
        raise ConfigError(f"{path}: holds no data rows, only a header or nothing")
    return LoadedRows(
        tuple(rows), tally.read, dict(tally.left_out), frozenset(tally.unpriced)
    )


def load_rows(path: Path, prices_for: PricesFor) -> list[ReplayRow]:
    """Read ``path`` like :func:`read_rows` and return the rows only."""
    return list(read_rows(path, prices_for).rows)


def load_routerbench(path: Path) -> list[ReplayRow]:
    """Read RouterBench CSV files (a file, or every such file in a folder)."""
    files = sorted(path.iterdir()) if path.is_dir() else [path]
    rows: list[ReplayRow] = []
    for file in files:
        found = _quiet_sniff(file) if path.is_dir() else sniff(file)
        if found.layout == ROUTERBENCH:
            rows.extend(_read_routerbench(file, found, _Tally()))
    return rows


def load_jsonl(path: Path) -> list[ReplayRow]:
    """Read the JSONL layout described in this module's docstring."""
    return list(_read_jsonl(path, _Tally()))


def load_routellm_gsm8k(path: Path, prices: Prices) -> list[ReplayRow]:
    """Read a RouteLLM CSV such as ``gsm8k_responses.csv``, priced by ``prices``."""
    found = sniff(path)
    if found.layout != ROUTELLM:
        raise ConfigError(f"{path}: not a RouteLLM CSV ({found.why})")
    return list(_read_routellm(path, found, prices, _Tally()))


def load_arena(folder: Path, prices: Prices) -> list[ReplayRow]:
    """Read Arena-Bench-v1; a grade g in 1-10 becomes the score g / 10.

    Models without a price, and answers without a parsed grade, are left
    out of the row. The judge's cost is its prompt (question, reference
    answer, model answer) and its written judgment at ``prices.judge``.
    """
    found = {p: _quiet_sniff(p) for p in sorted(folder.iterdir()) if p.is_file()}
    files = _arena_files(folder, found)
    if files is None:
        raise ConfigError(f"{folder}: no Arena-Bench question and judgment files")
    return _read_arena(files, prices, _Tally())
