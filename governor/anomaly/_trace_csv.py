"""Read request-trace CSV files such as the Azure LLM inference trace.

A folder holds one file per service; each file's scope comes from its name.
Rows are ``TIMESTAMP, ContextTokens, GeneratedTokens`` in any order and case;
BurstGPT's names for the token columns, ``Request tokens`` and ``Response
tokens``, are read too (its ``Timestamp`` is seconds from the trace's start,
read as Unix seconds: only the times between rows count). Rows that repeat
another exactly are kept: identical requests at one time are real traffic
in a trace of whole seconds. A value that cannot be read raises
:class:`ConfigError` naming the file, the line and what is accepted.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Collection, Iterator, Sequence
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any, NamedTuple

from governor._errors import ConfigError
from governor._textlines import numbered_lines
from governor.spend._time import to_us

__all__ = ["read_rows", "rows_at", "scope_name", "trace_files"]

_S = 1_000_000
# The Azure trace's file names start with this; it is not part of the scope.
_PREFIX = "azurellminferencetrace_"
_SUFFIXES = (".csv.gz", ".csv")
_COLUMNS = ("TIMESTAMP", "ContextTokens", "GeneratedTokens")
# Other names of the columns: BurstGPT's.
_ALIASES = {
    "ContextTokens": ("Request tokens",),
    "GeneratedTokens": ("Response tokens",),
}
_FORM = (
    "a trace file is comma-separated UTF-8 text (gzipped too) with the columns "
    "TIMESTAMP, ContextTokens and GeneratedTokens (or BurstGPT's Timestamp, "
    "Request tokens and Response tokens), in any order and case"
)
_TIME_FORM = (
    "is not a time; give an ISO 8601 time such as 2023-11-16 18:15:46.68 "
    "(UTC unless it has an offset) or Unix seconds such as 1700158546.68"
)
# Unix seconds from this on are taken for milliseconds or finer: refused.
_MAX_EPOCH_S = Decimal("1e11")
# More than six fractional digits (the trace's 100-ns times): the rest is dropped.
_EXTRA_DIGITS = re.compile(r"(\.\d{6})\d+")


def trace_files(path: Path) -> dict[str, Path]:
    """The trace files of a folder (``*.csv``, ``*.csv.gz``) or one file, by scope.

    A scope is ``team:`` and the file name less a leading
    ``AzureLLMInferenceTrace_`` and ``.csv`` / ``.csv.gz``; two files with the
    same scope raise :class:`ConfigError` naming both.
    """
    return _scopes(_files(path))


def _files(path: Path) -> list[Path]:
    if not path.is_dir():
        return [path]
    files = sorted(
        f for f in path.iterdir() if f.name.lower().endswith(_SUFFIXES) and f.is_file()
    )
    if not files:
        raise ConfigError(
            f"no CSV trace files (*.csv or *.csv.gz) in {path}; point at a "
            "folder of them or at one file"
        )
    return files


def _scopes(files: Sequence[Path]) -> dict[str, Path]:
    """Each file's scope; ConfigError when two files give the same one."""
    sources: dict[str, Path] = {}
    for file in files:
        scope = "team:" + scope_name(file.name)
        if scope in sources:
            raise ConfigError(
                f"{sources[scope]} and {file} both give scope {scope} (a file's "
                "scope is its name less 'AzureLLMInferenceTrace_' and '.csv' or "
                "'.csv.gz'); rename or remove one of them"
            )
        sources[scope] = file
    return sources


def scope_name(name: str) -> str:
    """A trace file's name less ``AzureLLMInferenceTrace_`` and ``.csv(.gz)``."""
    lower = name.lower()
    suffix = next((s for s in _SUFFIXES if lower.endswith(s)), None)
    stem = name[: -len(suffix)] if suffix else Path(name).stem
    if stem.lower().startswith(_PREFIX) and len(stem) > len(_PREFIX):
        return stem[len(_PREFIX) :]
    return stem


def read_rows(file: Path) -> list[tuple[int, int, int]]:
    """(epoch microseconds, context tokens, generated tokens), in time order.

    A file whose ISO times mix ones with a UTC offset (or Unix seconds) and
    ones without is refused naming the first row that differs: a time
    without an offset is read as UTC, so a row written in local time beside
    UTC ones would sit hours away from its neighbours.
    """
    rows = [row for _, row in _numbered_rows(file)]
    if not rows:
        raise ConfigError(f"trace file {file} has no rows; {_FORM}")
    rows.sort()
    return rows


def rows_at(file: Path, stamps: Collection[int]) -> list[tuple[int, str]]:
    """(line number, TIMESTAMP as written) of the rows at the times ``stamps``.

    The file is read again: used only to name the few rows an evaluation
    leaves out.
    """
    return [
        (line, text)
        for line, row, text in _numbered_rows(file, with_text=True)
        if row[0] in stamps
    ]


def _numbered_rows(file: Path, *, with_text: bool = False) -> Iterator[Any]:
    """Yield (line, row), or (line, row, TIMESTAMP text) ``with_text``."""
    reader = csv.reader(text for _, text in numbered_lines(file))
    header: _Header | None = None
    zone = _Zone()
    for fields in _checked_fields(reader, file):
        if not any(f.strip() for f in fields):
            continue
        where = f"{file}:{reader.line_num}"
        if header is None:
            header = _header(fields, where)
            continue
        row = _row(fields, header, where, zone)
        if with_text:
            yield reader.line_num, row, fields[header.positions[0]].strip()
        else:
            yield reader.line_num, row


def _checked_fields(reader: Any, file: Path) -> Iterator[list[str]]:
    """The reader's rows; a CSV fault (a field past csv's size limit, which
    a quote left open makes of the rest of the file) is a ConfigError
    naming the file and line."""
    rows = iter(reader)
    while True:
        try:
            fields: list[str] = next(rows)
        except StopIteration:
            return
        except csv.Error as exc:
            advice = "fix or drop the line"
            if "field limit" in str(exc):
                advice = (
                    "a trace field is a time or a token count, so a field that "
                    'long is a quote (") left open on this line or one before '
                    "it: close or remove the quote"
                )
            raise ConfigError(
                f"{file}:{reader.line_num}: not readable as CSV ({exc}); {advice}"
            ) from exc
        yield fields


class _Zone:
    """The first row's kind of time, to refuse rows of the other kind."""

    def __init__(self) -> None:
        self.first: tuple[str, str, str] | None = None  # (kind, where, text)

    def check(self, kind: str, text: str, where: str) -> None:
        """Refuse a time read as UTC in a file of zoned times, or the reverse."""
        if self.first is None:
            self.first = (kind, where, text)
            return
        first_kind, first_where, first_text = self.first
        if (kind == _NAIVE) == (first_kind == _NAIVE):
            return
        line = first_where.rsplit(":", 1)[-1]
        raise ConfigError(
            f"{where}: TIMESTAMP {text!r} {kind}, but line {line}'s "
            f"{first_text!r} {first_kind}; a time without an offset is read as "
            "UTC, so mixing the two puts rows hours apart. Write every time of "
            "a file the same way: all with an offset (or in Unix seconds), or "
            "all in UTC without one"
        )


# The kinds of time, as the message about mixing them says them.
_NAIVE = "has no UTC offset"
_OFFSET = "has a UTC offset"
_UNIX = "is in Unix seconds"


class _Header(NamedTuple):
    """Where each of ``_COLUMNS`` is in a row, and its name as messages say it."""

    positions: tuple[int, int, int]
    names: tuple[str, str, str]
    width: int  # how many cells the header has


def _header(fields: Sequence[str], where: str) -> _Header:
    """The position of each of ``_COLUMNS`` (or an alias) in a header row,
    any case; a column given under its own name wins over an alias."""
    names = [f.strip().lower() for f in fields]
    found = [
        next((n for n in (c, *_ALIASES.get(c, ())) if n.lower() in names), None)
        for c in _COLUMNS
    ]
    missing = [c for c, name in zip(_COLUMNS, found, strict=True) if name is None]
    if missing:
        noun = "column" if len(missing) == 1 else "columns"
        raise ConfigError(
            f"{where}: no {', '.join(missing)} {noun} in the header "
            f"{', '.join(fields)!r}; {_FORM}"
        )
    stamp, context, generated = (name or "" for name in found)
    at = (names.index(stamp.lower()), names.index(context.lower()))
    positions = (*at, names.index(generated.lower()))
    return _Header(positions, (stamp, context, generated), len(fields))


def _row(
    fields: Sequence[str], header: _Header, where: str, zone: _Zone
) -> tuple[int, int, int]:
    columns = header.positions
    if len(fields) > header.width and any(c.strip() for c in fields[header.width :]):
        raise ConfigError(
            f"{where}: {len(fields) - header.width} more cell(s) than the header "
            f"({header.width} columns), so the row's values cannot be matched to "
            "its columns; a comma inside a cell, such as a thousands separator "
            "in 4,808, splits it in two: write token counts without separators "
            "(4808), and quote any other cell that holds a comma"
        )
    if len(fields) <= max(columns):
        last = max(columns)
        name = header.names[columns.index(last)]
        raise ConfigError(
            f"{where}: the row has {len(fields)} field(s) but {name} is column "
            f"{last + 1}; fix or drop the row"
        )
    stamp, context, generated = (fields[i].strip() for i in columns)
    epoch_us, kind = _epoch_us(stamp, where)
    zone.check(kind, stamp, where)
    return (
        epoch_us,
        _tokens(context, header.names[1], where),
        _tokens(generated, header.names[2], where),
    )


def _epoch_us(text: str, where: str) -> tuple[int, str]:
    """An ISO 8601 time (UTC without an offset) or Unix seconds, in
    microseconds, and its kind (:data:`_NAIVE`, :data:`_OFFSET`, :data:`_UNIX`)."""
    try:
        seconds = Decimal(text)
    except ArithmeticError:  # decimal.InvalidOperation: not a number
        moment = _iso_time(text, where)
        if moment.tzinfo is None:
            return to_us(moment.replace(tzinfo=UTC)), _NAIVE
        return to_us(moment), _OFFSET
    if not seconds.is_finite() or not 0 <= seconds < _MAX_EPOCH_S:
        raise ConfigError(f"{where}: TIMESTAMP {text!r} {_TIME_FORM}")
    return int((seconds * _S).to_integral_value()), _UNIX


def _iso_time(text: str, where: str) -> datetime:
    try:
        return datetime.fromisoformat(_EXTRA_DIGITS.sub(r"\1", text))
    except ValueError as exc:
        raise ConfigError(f"{where}: TIMESTAMP {text!r} {_TIME_FORM}") from exc


# No single call takes a trillion tokens: more means a corrupt row.
_MOST_TOKENS = 10**12


def _tokens(text: str, column: str, where: str) -> int:
    """A whole number of tokens, at least 0 and at most :data:`_MOST_TOKENS`
    (``1200.0`` is read as 1200)."""
    try:
        count = Decimal(text)
    except ArithmeticError:  # decimal.InvalidOperation: not a number
        count = Decimal("NaN")
    if not count.is_finite() or count < 0 or count != count.to_integral_value():
        raise ConfigError(
            f"{where}: {column} {text!r} is not a token count; give a whole "
            "number of at least 0, or fix or drop the row"
        )
    if count > _MOST_TOKENS:
        raise ConfigError(
            f"{where}: {column} {_shown(text)} is {count:.3e} tokens; more than "
            "a trillion (10**12) tokens in one call cannot be right, the row is "
            "corrupt: give the call's own token count, or fix or drop the row"
        )
    return int(count)


def _shown(text: str) -> str:
    """A cell as messages show it: a long one cut short."""
    return repr(text) if len(text) <= 40 else repr(text[:37] + "...")
