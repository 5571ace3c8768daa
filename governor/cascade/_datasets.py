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

  ``score`` in [0, 1]; ``response`` a string; ``cost_usd`` a number or a
  decimal string; ``id``, ``group`` and ``judge_cost_usd`` optional.
* RouteLLM CSV (``prompt``, ``M``: True/False, ``M_response``) and
  Arena-Bench-v1 (a folder of question, model-answer, reference-answer and
  judgment JSONL files with 1-10 grades, flat or in the upstream
  ``model_answer/``, ``model_judgment/`` and ``reference_answer/``
  subfolders): these carry no costs, so a :class:`Prices` table prices them
  from estimated token counts.

A correctness cell reads a number in [0, 1] or a boolean word (true/false,
yes/no, correct/incorrect, any case). A cell that reads as neither, or a cost
that is not a number, is refused naming the file and row; an empty cell
means the model has no outcome on that row. A CSV row with fewer cells than
the header is left out and counted (:class:`LoadedRows`).

A row that repeats an earlier one would sit on both sides of the fit /
held-out split. A RouterBench row with the ``sample_id`` and prompt of an
earlier row, a RouteLLM row with an earlier row's prompt, an Arena-Bench
question line repeating an earlier one and a JSONL line without ``id`` equal
to an earlier one are left out and counted; a JSONL ``id`` given twice, or
an Arena-Bench ``question_id`` given twice with two prompts, is refused.
"""

from __future__ import annotations

import ast
import csv
import gzip
import json
import logging
import math
import zlib
from collections import Counter
from collections.abc import (
    Callable,
    Collection,
    Hashable,
    Iterable,
    Iterator,
    Mapping,
)
from dataclasses import dataclass, field, replace
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

from governor._errors import ConfigError
from governor._textlines import open_bytes
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
    "refuse_unanswered",
    "refuse_unpriced",
]

logger = logging.getLogger(__name__)

BYTES_PER_TOKEN = 4
"""Token estimate for data sets without counts: one token per 4 UTF-8 bytes,
the usual rule of thumb for English text under byte-pair encodings."""

SHORT_ROW = "fewer cells than the header"
"""The reason a CSV row with missing trailing cells is left out."""

REPEATED_ROW = "repeats an earlier row"
"""The reason a row that repeats an earlier one is left out (see the module
docstring for what makes two rows the same in each layout)."""

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


PerToken = tuple[Decimal, Decimal]
"""(input, output) USD per token."""

PriceLookup = Callable[[str], PerToken | str]
"""Prices a model by name: its per-token prices, or why it has none."""


@dataclass(frozen=True, slots=True)
class Prices:
    """Per-token list prices for data sets that record no cost.

    Attributes:
        per_model: model name in the data -> (input, output) USD per token.
        judge: the judge model's (input, output) USD per token, if graded.
        source: where the prices come from, for the report.
        lookup: prices a model ``per_model`` lacks, or says why it has no
            price; None leaves every other model unpriced.
    """

    per_model: Mapping[str, PerToken]
    judge: PerToken | None = None
    source: str = ""
    lookup: PriceLookup | None = None
    _looked_up: dict[str, PerToken | str] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )

    def price(self, model: str) -> PerToken | str:
        """Return ``model``'s (input, output) USD per token, or why it has none."""
        known = self.per_model.get(model)
        if known is not None:
            return known
        if self.lookup is None:
            return "not in the price table"
        if model not in self._looked_up:
            self._looked_up[model] = self.lookup(model)
        return self._looked_up[model]

    def call_usd(self, model: str, prompt: str, response: str) -> Decimal | None:
        """Price one call from estimated tokens; None if the model is unpriced."""
        price = self.price(model)
        if isinstance(price, str):
            return None
        return _priced(price, prompt, response)

    def judge_usd(self, judge_prompt: str, judgment: str) -> Decimal:
        """Price one judge call from estimated tokens; zero without a judge."""
        return _priced(self.judge, judge_prompt, judgment) if self.judge else Decimal(0)


def _priced(price: PerToken, prompt: str, response: str) -> Decimal:
    return price[0] * estimate_tokens(prompt) + price[1] * estimate_tokens(response)


@dataclass(frozen=True, slots=True)
class LoadedRows:
    """Replay rows read from a file or folder, and what was left out.

    Attributes:
        rows: the rows read.
        read: data rows read, the left-out ones included.
        left_out: reason -> number of rows left out for it.
        unpriced: model the data records that nothing prices (cost-less
            layouts only) -> why; its outcomes are left out.
        unanswered: a RouteLLM column without its ``_response`` column (a
            model's correctness without its answers, or a column that is no
            model) -> the file; not read.
    """

    rows: tuple[ReplayRow, ...]
    read: int
    left_out: Mapping[str, int]
    unpriced: Mapping[str, str] = field(default_factory=dict)
    unanswered: Mapping[str, str] = field(default_factory=dict)


@dataclass(slots=True)
class _Tally:
    """Counts kept while reading: rows read, rows left out by reason, the
    identities of the rows kept (to find repeats) and unpriced models."""

    read: int = 0
    left_out: Counter[str] = field(default_factory=Counter)
    unpriced: dict[str, str] = field(default_factory=dict)
    seen: dict[Hashable, str] = field(default_factory=dict)
    unanswered: dict[str, str] = field(default_factory=dict)

    def leave_out(self, reason: str, where: str) -> None:
        self.left_out[reason] += 1
        logger.warning("%s: %s; row left out", where, reason)

    def repeated(self, identity: Hashable, where: str) -> bool:
        """True (and counted) when a row with this identity was kept before."""
        if identity in self.seen:
            self.left_out[REPEATED_ROW] += 1
            logger.debug("%s: repeats %s; row left out", where, self.seen[identity])
            return True
        self.seen[identity] = where
        return False

    def call_usd(
        self, prices: Prices, model: str, prompt: str, text: str
    ) -> Decimal | None:
        """The call's estimated cost, or None for an unpriced model (noted)."""
        price = prices.price(model)
        if isinstance(price, str):
            self.unpriced.setdefault(model, price)
            return None
        return _priced(price, prompt, text)


def _log_repeats(path: Path, tally: _Tally, before: int) -> None:
    """One warning per file for its rows that repeat earlier ones."""
    repeats = tally.left_out[REPEATED_ROW] - before
    if repeats:
        logger.warning(
            "%s: %d row(s) repeat earlier rows; left out, counted as %r",
            path.name,
            repeats,
            REPEATED_ROW,
        )


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


def _usd(cell: str, model: str, where: str, name: str = "cost") -> Decimal:
    try:
        return Decimal(cell.strip())
    except InvalidOperation:
        raise ConfigError(
            f"{where}: model {model!r} has {name} {cell!r}; a cost is a plain "
            "number of US dollars, e.g. 0.00123"
        ) from None


# No single call costs a trillion dollars: more means a corrupt record (as
# ``governor report`` refuses a spend record's cost).
_MOST_USD = Decimal(10) ** 12


def _checked(
    recorded: Recorded, model: str, where: str, cost: str = "cost_usd"
) -> Recorded:
    """Refuse a recorded outcome no replay can use: a score outside [0, 1],
    or a cost that is negative, NaN, infinite or over a trillion dollars.
    ``cost`` names the cost's field in the file."""
    if not 0 <= recorded.score <= 1:  # NaN fails this too
        raise ConfigError(
            f"{where}: model {model!r} has score {recorded.score}; a score is a "
            "number in [0, 1] (scale a grade g of 1-10 as g / 10)"
        )
    costs = {cost: recorded.cost_usd, "judge_cost_usd": recorded.judge_cost_usd}
    for name, value in costs.items():
        if not value.is_finite() or value < 0:
            raise ConfigError(
                f"{where}: model {model!r} has {name} {value}; a cost is a "
                "finite number of US dollars, 0 or more"
            )
        if value > _MOST_USD:
            raise ConfigError(
                f"{where}: model {model!r} has {name} {value:.3e}; that many "
                "dollars for one call cannot be right, the record is corrupt: "
                "a cost is US dollars per call, e.g. 0.00123"
            )
    return recorded


# -- CSV layouts -----------------------------------------------------------------


# Responses exceed csv's 128 KiB default; a field past this is no response.
_FIELD_LIMIT = 1 << 30


def _csv_records(path: Path, delimiter: str) -> Iterator[tuple[int, dict[Any, Any]]]:
    """Yield (data row number from 1, record) of a CSV file.

    A CSV fault, such as a field of more than 1 GiB (a quote left open
    makes one of the rest of the file), is a ConfigError naming the line.
    """
    csv.field_size_limit(_FIELD_LIMIT)
    with reading(path), open_text(path) as handle:
        records = csv.DictReader(handle, delimiter=delimiter)
        number = 0
        while True:
            try:
                record = next(records)
            except StopIteration:
                return
            except csv.Error as exc:
                raise ConfigError(
                    f"{path}:{records.line_num}: not readable as CSV ({exc}); "
                    f"{_CSV_ADVICE}"
                ) from exc
            number += 1
            yield number, record


_CSV_ADVICE = (
    'a field that long is a quote (") left open on this line or one before it '
    "that takes in the rest of the file: close the quote, or double each quote "
    "inside a quoted field"
)


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
    answered = [
        c[: -len(RESPONSE_SUFFIX)] for c in columns if c.endswith(RESPONSE_SUFFIX)
    ]
    for model in models + [m for m in answered if m not in models]:
        for column in (model, model + RESPONSE_SUFFIX, model + COST_SUFFIX):
            if column not in columns:
                raise ConfigError(
                    f"{path}: model {model!r} has no {column!r} column; a "
                    "RouterBench file gives each model 'M' (correctness), "
                    "'M|model_response' and 'M|total_cost' (USD per call)"
                )
    return models


def _read_routerbench(path: Path, found: Sniffed, tally: _Tally) -> Iterator[ReplayRow]:
    models = _routerbench_models(path, found.columns)
    stem = path.name.split(".")[0]
    for number, record in _csv_records(path, found.delimiter):
        tally.read += 1
        index = record.get("") or record.get("sample_id") or ""
        where = _where(path, number, index)
        if not _cells_fit(record, where, tally):
            continue
        prompt = _listed_text(record.get("prompt") or "")
        identity = (ROUTERBENCH, record.get("sample_id") or index, prompt)
        if tally.repeated(identity, where):
            continue
        yield ReplayRow(
            key=f"{stem}:{index}",
            prompt=prompt,
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
        outcomes[model] = _checked(recorded, model, where, COST_SUFFIX[1:])
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
    for column in found.columns:
        if column not in (*models, "prompt") and not column.endswith(ROUTELLM_RESPONSE):
            tally.unanswered.setdefault(column, str(path))
    # gsm8k_responses.csv keys its rows gsm8k:0, gsm8k:1, ...
    prefix = path.name.split(".")[0].removesuffix("_responses")
    for number, record in _csv_records(path, found.delimiter):
        tally.read += 1
        where = _where(path, number)
        if not _cells_fit(record, where, tally):
            continue
        prompt = record["prompt"]
        if tally.repeated((ROUTELLM, prompt), where):
            continue
        outcomes: dict[str, Recorded] = {}
        for model in models:
            if not record[model].strip():
                continue  # no outcome for this model on this row
            score = _correctness(record[model], model, where)
            text = record[model + ROUTELLM_RESPONSE]
            cost = tally.call_usd(prices, model, prompt, text)
            if cost is not None:
                recorded = Recorded(score, text, cost)
                outcomes[model] = _checked(recorded, model, where)
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


_ROW_SHAPE = (
    '{"prompt": str, "outcomes": {model: {"score": number, "response": str, '
    '"cost_usd": number}}}'
)
_OUTCOME_FIELDS = ("score", "response", "cost_usd")


def _read_jsonl(path: Path, tally: _Tally) -> list[ReplayRow]:
    """The rows of a JSONL file, RouterBench's printed lists read as text."""
    rows = list(_jsonl_rows(path, tally))
    listed = _listing_models(rows)
    if not listed:
        return rows
    logger.info(
        "%s: the responses of %s are printed Python lists, as RouterBench "
        "writes them; read as the text they hold",
        path.name,
        ", ".join(sorted(listed)),
    )
    return [_unlisted(row, listed) for row in rows]


def _listing_models(rows: Iterable[ReplayRow]) -> set[str]:
    """Models whose every response is a printed Python list of strings
    (RouterBench's ``['B\\n']``), one at least in Python's quotes: a JSON
    array of strings is an answer in its own right, not a printed list."""
    listed: dict[str, bool] = {}  # model -> some response is not JSON
    plain: set[str] = set()
    for row in rows:
        for model, recorded in row.outcomes.items():
            text = recorded.response
            if model in plain or not text:
                continue
            if _printed_strings(text) is None:
                plain.add(model)
                listed.pop(model, None)
            elif not listed.get(model):
                listed[model] = not _is_json(text)
    return {model for model, python in listed.items() if python}


def _printed_strings(text: str) -> str | None:
    """The text of a printed Python list of strings, or None for other text."""
    if not text.startswith("["):
        return None
    try:
        value = ast.literal_eval(text)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return None
    if isinstance(value, list) and all(isinstance(part, str) for part in value):
        return "".join(value)
    return None


def _is_json(text: str) -> bool:
    try:
        json.loads(text)
    except ValueError:
        return False
    return True


def _unlisted(row: ReplayRow, listed: Collection[str]) -> ReplayRow:
    outcomes = {
        model: replace(recorded, response=_printed_strings(recorded.response) or "")
        if model in listed and recorded.response
        else recorded
        for model, recorded in row.outcomes.items()
    }
    return replace(row, outcomes=outcomes)


def _jsonl_rows(path: Path, tally: _Tally) -> Iterator[ReplayRow]:
    for where, data in _json_lines(path):
        tally.read += 1
        row = _jsonl_row(data, where)
        if "id" in data:
            _unique_id(row.key, where, tally)
        elif tally.repeated(
            (REPLAY_JSONL, "row", json.dumps(data, sort_keys=True)), where
        ):
            continue
        yield row


def _unique_id(key: str, where: str, tally: _Tally) -> None:
    """Refuse a JSONL id given on an earlier line: the split follows ids."""
    identity = (REPLAY_JSONL, "id", key)
    earlier = tally.seen.get(identity)
    if earlier is not None:
        raise ConfigError(
            f"{where}: id {key!r} is also on {earlier}; give each row its own "
            "id (the fit/held-out split follows it) or drop the repeat"
        )
    tally.seen[identity] = where


def _score(value: Any, model: str, where: str) -> float:
    if isinstance(value, str):
        return _correctness(value, model, where)
    if isinstance(value, int | float):
        return float(value)
    raise ConfigError(
        f"{where}: model {model!r} has score {json.dumps(value)}; a score is a "
        "number in [0, 1] or true/false"
    )


def _json_usd(value: Any, name: str, model: str, where: str) -> Decimal:
    if isinstance(value, int | float | str) and not isinstance(value, bool):
        return _usd(str(value), model, where, name)
    raise ConfigError(
        f"{where}: model {model!r} has {name} {json.dumps(value)}; a cost is a "
        'number of US dollars or a decimal string, e.g. "0.00123"'
    )


def _missing(data: Mapping[str, Any], names: Iterable[str]) -> list[str]:
    return [repr(name) for name in names if name not in data]


def _not_a_row(where: str, what: str) -> ConfigError:
    return ConfigError(f"{where}: not a replay row: {what}; expected {_ROW_SHAPE}")


def _jsonl_row(data: Any, where: str) -> ReplayRow:
    if not isinstance(data, dict):
        raise _not_a_row(where, f"a JSON {type(data).__name__}")
    missing = _missing(data, ("prompt", "outcomes"))
    if missing:
        fields = f"field{'s' if len(missing) > 1 else ''} {' and '.join(missing)}"
        raise _not_a_row(where, f"missing {fields}")
    outcomes = data["outcomes"]
    if not isinstance(outcomes, dict):
        raise _not_a_row(where, f"'outcomes' is a JSON {type(outcomes).__name__}")
    return ReplayRow(
        str(data.get("id", where)),
        str(data["prompt"]),
        {str(m): _jsonl_outcome(o, str(m), where) for m, o in outcomes.items()},
        str(data.get("group", "")),
    )


def _jsonl_outcome(outcome: Any, model: str, where: str) -> Recorded:
    if not isinstance(outcome, dict):
        raise _not_a_row(where, f"model {model!r} has a JSON {type(outcome).__name__}")
    missing = _missing(outcome, _OUTCOME_FIELDS)
    if missing:
        what = f"field{'s' if len(missing) > 1 else ''} {' and '.join(missing)}"
        raise _not_a_row(where, f"model {model!r} is missing {what}")
    response = outcome["response"]
    if not isinstance(response, str):
        raise _not_a_row(
            where,
            f"model {model!r} has response {json.dumps(response)}, not a string",
        )
    recorded = Recorded(
        _score(outcome["score"], model, where),
        response,
        _json_usd(outcome["cost_usd"], "cost_usd", model, where),
        _json_usd(outcome.get("judge_cost_usd", "0"), "judge_cost_usd", model, where),
    )
    return _checked(recorded, model, where)


# -- Arena-Bench-v1 ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _ArenaFiles:
    """An Arena-Bench folder's files, each part possibly split over files."""

    questions: tuple[Path, ...]
    answers: tuple[Path, ...]
    references: tuple[Path, ...]
    judgments: tuple[Path, ...]


def _arena_files(
    folder: Path, top: Mapping[Path, Sniffed], nested: Mapping[Path, Sniffed]
) -> _ArenaFiles | None:
    """The Arena-Bench parts of a folder, or None when it is not one.

    The question file lies in the folder itself; answers, references and
    judgments lie beside it or one subfolder down, as upstream keeps them
    (``model_answer/``, ``reference_answer/``, ``model_judgment/``).
    """
    every = {**top, **nested}

    def of(found: Mapping[Path, Sniffed], layout: str) -> tuple[Path, ...]:
        return tuple(p for p, s in found.items() if s.layout == layout)

    questions, judgments = of(top, ARENA_QUESTIONS), of(every, ARENA_JUDGMENTS)
    if not questions or not judgments:
        return None
    answering = of(every, ARENA_ANSWERS)
    references = tuple(
        p for p in answering if "reference" in p.relative_to(folder).as_posix().lower()
    )
    answers = tuple(p for p in answering if p not in references)
    for part, files in (("model answer", answers), ("reference answer", references)):
        if not files:
            raise ConfigError(
                f"{folder}: an Arena-Bench folder without a {part} file "
                "(JSON lines with question_id and choices, beside question.jsonl "
                "or in a subfolder; a reference file has 'reference' in its "
                "name or its subfolder's, as reference_answer/gpt-4.jsonl)"
            )
    return _ArenaFiles(questions, answers, references, judgments)


class _BadTurn(Exception):
    """A turn that is neither text nor an object holding its text."""


def _turn_text(turn: Any) -> str:
    """A turn's text: the string itself (MT-Bench, Arena-Bench-v1), or the
    ``content`` of an object (Arena-Hard-Auto: ``{"content": "..."}``)."""
    if isinstance(turn, str):
        return turn
    content = turn.get("content") if isinstance(turn, dict) else None
    if isinstance(content, str):
        return content
    raise _BadTurn(
        f"its first turn is {json.dumps(turn)[:80]}; a turn is a string, or an "
        'object with its text as "content" (as Arena-Hard-Auto writes it)'
    )


def _arena_field(
    path: Path, kind: str, read: Callable[[Any], Any]
) -> Iterator[tuple[str, Any]]:
    """Yield (``file:line``, what ``read`` takes from the line)."""
    for where, line in _json_lines(path):
        try:
            yield where, read(line)
        except _BadTurn as exc:
            raise ConfigError(
                f"{where}: not an Arena-Bench {kind} line: {exc}"
            ) from exc
        except (KeyError, IndexError, TypeError) as exc:
            raise ConfigError(
                f"{where}: not an Arena-Bench {kind} line (missing {exc})"
            ) from exc


def _first_turns(files: tuple[Path, ...]) -> dict[Any, str]:
    def read(a: Any) -> tuple[Any, str]:
        return a["question_id"], _turn_text(a["choices"][0]["turns"][0])

    return dict(
        pair for path in files for _, pair in _arena_field(path, "answer", read)
    )


def _answers(files: tuple[Path, ...]) -> dict[tuple[Any, str], str]:
    def read(a: Any) -> tuple[tuple[Any, str], str]:
        text = _turn_text(a["choices"][0]["turns"][0])
        return (a["question_id"], a["model_id"]), text

    return dict(
        pair for path in files for _, pair in _arena_field(path, "answer", read)
    )


def _questions(files: tuple[Path, ...], tally: _Tally) -> dict[Any, str]:
    """Question id -> prompt; a repeated line is counted, a conflicting one
    refused."""

    def read(q: Any) -> tuple[Any, str]:
        return q["question_id"], _turn_text(q["turns"][0])

    questions: dict[Any, str] = {}
    for path in files:
        before = tally.left_out[REPEATED_ROW]
        for where, (qid, prompt) in _arena_field(path, "question", read):
            tally.read += 1
            if qid in questions and questions[qid] != prompt:
                raise ConfigError(
                    f"{where}: question_id {qid!r} is also on "
                    f"{tally.seen[(ARENA_QUESTIONS, qid)]} with another prompt; "
                    "give each question its own id"
                )
            if not tally.repeated((ARENA_QUESTIONS, qid), where):
                questions[qid] = prompt
        _log_repeats(path, tally, before)
    return questions


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
    questions = _questions(files.questions, tally)
    references = _first_turns(files.references)
    answers = _answers(files.answers)
    rows: dict[Any, dict[str, Recorded]] = {qid: {} for qid in questions}
    judges: dict[str, list[Path]] = {}
    skipped: Counter[str] = Counter()
    for path in files.judgments:
        for where, grade in _json_lines(path):
            qid, model = _graded(grade, where)
            _note_judge(judges, grade, path)
            if grade.get("turn", 1) != 1:
                skipped[_LATER_TURN] += 1
                continue
            if grade.get("score") is None:
                continue
            if _unrated(grade["score"]):
                skipped[_UNRATED] += 1
                continue
            text = answers.get((qid, model))
            if qid not in rows or model in rows[qid] or text is None:
                continue  # unknown question, a repeated grade, or no answer text
            cost = tally.call_usd(prices, model, questions[qid], text)
            if cost is None:
                continue
            judge_prompt = questions[qid] + references.get(qid, "") + text
            judge = prices.judge_usd(judge_prompt, str(grade.get("judgment", "")))
            score = _grade(grade["score"], model, where)
            recorded = Recorded(score, text, cost, judge)
            rows[qid][model] = _checked(recorded, model, where)
    _refuse_judges(judges)
    _log_skipped(files.judgments, skipped)
    return [
        ReplayRow(f"arena:{qid}", questions[qid], outcomes, "arena")
        for qid, outcomes in rows.items()
    ]


_LATER_TURN = "later turn"
_UNRATED = "unrated"


def _unrated(score: Any) -> bool:
    """FastChat's -1: the judge's rating could not be read from its text."""
    try:
        return float(score) == -1
    except (TypeError, ValueError):
        return False


def _note_judge(judges: dict[str, list[Path]], grade: Any, path: Path) -> None:
    """Note the judge model a grade names (FastChat: ``["gpt-4", "single-v1"]``)."""
    named = grade.get("judge")
    if isinstance(named, list) and named:
        named = named[0]
    if isinstance(named, str) and named:
        files = judges.setdefault(named, [])
        if path not in files:
            files.append(path)


def _refuse_judges(judges: Mapping[str, list[Path]]) -> None:
    """Refuse grades by more than one judge model: which one scores a row
    would depend on the order the files are read in."""
    if len(judges) < 2:
        return
    named = "; ".join(
        f"{judge!r} in {', '.join(str(p) for p in files)}"
        for judge, files in sorted(judges.items())
    )
    raise ConfigError(
        f"judge grades by {len(judges)} judge models: {named}; a replay scores "
        "each answer by one judge, so keep one judge's grade files in the "
        "folder (FastChat names them JUDGE_single.jsonl) and move the others out"
    )


def _log_skipped(judgments: tuple[Path, ...], skipped: Mapping[str, int]) -> None:
    """Say how many grades were not used, and why."""
    where = ", ".join(p.name for p in judgments)
    if skipped.get(_UNRATED):
        logger.warning(
            "%s: %d grade(s) of -1 left out: FastChat writes -1 where it could "
            "not read the judge's rating; those answers have no outcome, as "
            "without a grade",
            where,
            skipped[_UNRATED],
        )
    if skipped.get(_LATER_TURN):
        logger.warning(
            "%s: %d grade(s) of a second or later turn left out: a row is a "
            "question's first turn, which every model answers from the same "
            "prompt; a later turn's grade scores an answer to a conversation "
            "that holds the model's own earlier answer",
            where,
            skipped[_LATER_TURN],
        )


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


_LABELS: Mapping[str | None, str] = {
    ROUTERBENCH: "RouterBench CSV",
    ROUTELLM: "RouteLLM CSV",
    REPLAY_JSONL: "replay JSONL",
    ARENA_QUESTIONS: "Arena-Bench questions",
    ARENA_ANSWERS: "Arena-Bench answers",
    ARENA_JUDGMENTS: "judge grades (Arena-Bench, MT-Bench)",
    None: "other",
}
_SHOWN_FILES = 6
_ARENA_PARTS: Mapping[str, str] = {
    ARENA_QUESTIONS: "questions",
    ARENA_ANSWERS: "model answers",
    ARENA_JUDGMENTS: "judge grades",
}


def _read_file(
    path: Path, found: Sniffed, prices_for: PricesFor, tally: _Tally
) -> list[ReplayRow]:
    before = tally.left_out[REPEATED_ROW]
    if found.layout == ROUTERBENCH:
        rows = list(_read_routerbench(path, found, tally))
    elif found.layout == ROUTELLM:
        prices = prices_for("routellm-gsm8k")
        rows = list(_read_routellm(path, found, prices, tally))
    elif found.layout == REPLAY_JSONL:
        rows = _read_jsonl(path, tally)
    elif found.layout is not None and found.layout in _ARENA_PARTS:
        raise ConfigError(
            f"{path}: {_ARENA_PARTS[found.layout]} only ({found.why}, as "
            "FastChat's llm_judge writes for MT-Bench and Arena-Bench-v1); a "
            "replay needs a prompt, each model's answer text "
            "(which the checks read) and a score per row. Give an Arena-Bench-v1 "
            "folder: question.jsonl, with the model-answer, reference-answer and "
            "judgment files beside it or one subfolder down"
        )
    else:
        raise ConfigError(f"{path}: unknown layout: {found.why}; {_LAYOUTS_HELP}")
    _log_repeats(path, tally, before)
    return rows


def _is_pickle(path: Path) -> bool:
    """True for a Python pickle (protocol 2 or later), gzip or not."""
    try:
        with open_bytes(path) as handle:
            head = handle.read(2)
    except (OSError, EOFError, zlib.error, gzip.BadGzipFile):
        return False  # the sniffer reports what is wrong with the file
    return len(head) == 2 and head[0] == 0x80 and 2 <= head[1] <= 5


def _sniffed(path: Path) -> Sniffed:
    """The file's layout; a pickle is refused saying how to convert it."""
    if _is_pickle(path):
        raise ConfigError(
            f"{path}: a Python pickle (as RouterBench's routerbench_0shot.pkl); "
            "pickles are not read, since loading one runs code. Convert it to "
            'CSV once where pandas is installed, e.g. python -c "import pandas '
            f"as pd; pd.read_pickle('{path.name}').to_csv('{path.stem}.csv')\", "
            "and give the CSV"
        )
    try:
        found = sniff(path)
    except csv.Error as exc:
        raise ConfigError(
            f"{path}: the header line is not readable as CSV ({exc}); a header "
            'names the columns, so a field that long is a quote (") left open: '
            "close or remove it"
        ) from exc
    answered = [c for c in found.columns if c.endswith(RESPONSE_SUFFIX)]
    if found.layout is None and answered:
        model = answered[0][: -len(RESPONSE_SUFFIX)]
        why = (
            f"{found.why}: RouterBench answer columns without cost columns "
            f"(no {model + COST_SUFFIX!r}); each model needs 'M|total_cost'"
        )
        return Sniffed(None, why, found.columns, found.delimiter)
    return found


def _quiet_sniff(path: Path) -> Sniffed:
    """A folder's file that cannot be read is skipped, not fatal."""
    try:
        return _sniffed(path)
    except (ConfigError, OSError) as exc:
        return Sniffed(None, str(exc))


def _listing(folder: Path) -> tuple[list[Path], list[Path]]:
    """A folder's files and subfolders, hidden ones left out, sorted."""
    entries = sorted(p for p in folder.iterdir() if not p.name.startswith("."))
    return [p for p in entries if p.is_file()], [p for p in entries if p.is_dir()]


def _sniff_folder(
    folder: Path,
) -> tuple[dict[Path, Sniffed], dict[Path, dict[Path, Sniffed]]]:
    """The layouts of a folder's files, and of each subfolder's files."""
    files, subfolders = _listing(folder)
    nested = {sub: {p: _quiet_sniff(p) for p in _listing(sub)[0]} for sub in subfolders}
    return {p: _quiet_sniff(p) for p in files}, nested


def _read_folder(folder: Path, prices_for: PricesFor, tally: _Tally) -> list[ReplayRow]:
    top, nested = _sniff_folder(folder)
    below = {p: s for found in nested.values() for p, s in found.items()}
    arena = _arena_files(folder, top, below)
    if arena is not None:
        return _read_arena(arena, prices_for("arena"), tally)
    wanted = (ROUTERBENCH, ROUTELLM, REPLAY_JSONL)
    loadable = [p for p, found in top.items() if found.layout in wanted]
    if not loadable:
        raise ConfigError(_nothing_found(folder, top, nested))
    rows: list[ReplayRow] = []
    for path in loadable:
        rows.extend(_read_file(path, top[path], prices_for, tally))
    return rows


def _nothing_found(
    folder: Path,
    top: Mapping[Path, Sniffed],
    nested: Mapping[Path, Mapping[Path, Sniffed]],
) -> str:
    """Say what a folder without data holds, its subfolders included."""
    shown = list(top.items())[:_SHOWN_FILES]
    seen = "; ".join(f"{p.name}: {found.why}" for p, found in shown)
    message = (
        f"{folder}: no RouterBench, RouteLLM, replay JSONL or Arena-Bench "
        f"files found ({seen or 'no files in the folder itself'})"
    )
    if nested:
        held = ", ".join(
            f"{sub.name}/ ({_held(found)})"
            for sub, found in list(nested.items())[:_SHOWN_FILES]
        )
        more = len(nested) - _SHOWN_FILES
        message += (
            f"; subfolders looked into: {held}{f' and {more} more' if more > 0 else ''}"
            ". Subfolders are read only for Arena-Bench's answer, reference and "
            "judgment files beside a question file; give the folder that holds "
            "a data set itself"
        )
    return f"{message}; {_LAYOUTS_HELP}"


def _held(found: Mapping[Path, Sniffed]) -> str:
    """What a subfolder holds, e.g. ``2 RouterBench CSV, 1 other``."""
    if not found:
        return "no files"
    counts = Counter(_LABELS[s.layout] for s in found.values())
    return ", ".join(f"{n} {label}" for label, n in counts.most_common())


def read_rows(path: Path, prices_for: PricesFor) -> LoadedRows:
    """Read ``path`` in whichever supported layout its content shows.

    Args:
        path: a file or a folder.
        prices_for: returns the price table for a cost-less layout, by name
            (``"routellm-gsm8k"`` or ``"arena"``).

    Returns:
        The rows, how many data rows were read, the rows left out by
        reason (a CSV row shorter than its header, a row repeating an
        earlier one) and the models left out for want of a price.

    Raises:
        ConfigError: the path does not exist, holds no known layout or no
            data rows, is a pickle, a JSONL id is given twice, or a value
            cannot be read (naming file and row).
    """
    if not path.exists():
        raise ConfigError(f"{path}: no such file or directory")
    tally = _Tally()
    if path.is_dir():
        rows = _read_folder(path, prices_for, tally)
    else:
        rows = _read_file(path, _sniffed(path), prices_for, tally)
    if not tally.read:
        raise ConfigError(f"{path}: holds no data rows, only a header or nothing")
    return LoadedRows(
        tuple(rows),
        tally.read,
        dict(tally.left_out),
        tally.unpriced,
        tally.unanswered,
    )


def refuse_unanswered(loaded: LoadedRows, models: Iterable[str]) -> None:
    """Refuse a policy model that a RouteLLM file records without answers:
    its correctness column has no ``M_response`` column beside it.

    Raises:
        ConfigError: naming the file and the missing column.
    """
    recorded = {model for row in loaded.rows for model in row.outcomes}
    for model in models:
        if model in loaded.unanswered and model not in recorded:
            raise ConfigError(
                f"{loaded.unanswered[model]}: model {model!r} has no "
                f"{model + ROUTELLM_RESPONSE!r} column; a RouteLLM file gives each "
                f"model 'M' (correct or not) and 'M{ROUTELLM_RESPONSE}' (its answer "
                "text, which the checks read)"
            )


def refuse_unpriced(loaded: LoadedRows, models: Iterable[str], policy: str) -> None:
    """Refuse a policy that uses a model the data records but nothing prices.

    Raises:
        ConfigError: naming each such model, why it has no price and how to
            give one in the policy.
    """
    missing = {m: loaded.unpriced[m] for m in models if m in loaded.unpriced}
    if not missing:
        return
    named = "; ".join(f"{m!r} ({why})" for m, why in missing.items())
    example = json.dumps(
        {"pricing": {"overrides": {next(iter(missing)): _EXAMPLE_PRICE}}}
    )
    raise ConfigError(
        f"{policy} uses models that the data records without costs and that "
        f"have no list price to estimate them from: {named}. Price them in the "
        f"policy: in a JSON policy file {example[1:-1]} (USD per million "
        "tokens; {} prices a free self-hosted model at zero), in Python "
        "NamedPolicy(..., pricing=Pricing(overrides={...})) or a Policy with "
        "a cascade and pricing"
    )


_EXAMPLE_PRICE = {"input_usd_per_mtok": 0.5, "output_usd_per_mtok": 1.5}


def load_rows(path: Path, prices_for: PricesFor) -> list[ReplayRow]:
    """Read ``path`` like :func:`read_rows` and return the rows only."""
    return list(read_rows(path, prices_for).rows)


def load_routerbench(path: Path) -> list[ReplayRow]:
    """Read RouterBench CSV files (a file, or every such file in a folder)."""
    files = sorted(path.iterdir()) if path.is_dir() else [path]
    rows: list[ReplayRow] = []
    tally = _Tally()
    for file in files:
        found = _quiet_sniff(file) if path.is_dir() else _sniffed(file)
        if found.layout == ROUTERBENCH:
            rows.extend(_read_routerbench(file, found, tally))
    return rows


def load_jsonl(path: Path) -> list[ReplayRow]:
    """Read the JSONL layout described in this module's docstring."""
    return _read_jsonl(path, _Tally())


def load_routellm_gsm8k(path: Path, prices: Prices) -> list[ReplayRow]:
    """Read a RouteLLM CSV such as ``gsm8k_responses.csv``, priced by ``prices``."""
    found = _sniffed(path)
    if found.layout != ROUTELLM:
        raise ConfigError(f"{path}: not a RouteLLM CSV ({found.why})")
    return list(_read_routellm(path, found, prices, _Tally()))


def load_arena(folder: Path, prices: Prices) -> list[ReplayRow]:
    """Read Arena-Bench-v1; a grade g in 1-10 becomes the score g / 10.

    The folder holds the question file and, beside it or one subfolder
    down, the answer, reference and judgment files. Models without a price,
    and answers without a parsed grade, are left out of the row. The judge's
    cost is its prompt (question, reference answer, model answer) and its
    written judgment at ``prices.judge``.
    """
    top, nested = _sniff_folder(folder)
    below = {p: s for found in nested.values() for p, s in found.items()}
    files = _arena_files(folder, top, below)
    if files is None:
        raise ConfigError(f"{folder}: no Arena-Bench question and judgment files")
    return _read_arena(files, prices, _Tally())
