"""Which replay-data layout a file holds, read from its content.

The header columns of a CSV file, or the keys of the first JSON line, name
the layout; the file name is consulted only when the file is empty. Gzip is
recognised by its magic bytes and a UTF-8 byte-order mark is skipped, so
``x.csv``, ``x.csv.gz`` and a gzip file without the suffix read alike.
"""

from __future__ import annotations

import csv
import gzip
import json
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from governor._errors import ConfigError
from governor._textlines import is_gzip

__all__ = [
    "ARENA_ANSWERS",
    "ARENA_JUDGMENTS",
    "ARENA_QUESTIONS",
    "REPLAY_JSONL",
    "ROUTELLM",
    "ROUTERBENCH",
    "Sniffed",
    "open_text",
    "reading",
    "sniff",
]

ROUTERBENCH = "routerbench"
ROUTELLM = "routellm"
REPLAY_JSONL = "replay-jsonl"
ARENA_QUESTIONS = "arena-questions"
ARENA_ANSWERS = "arena-answers"
ARENA_JUDGMENTS = "arena-judgments"

COST_SUFFIX = "|total_cost"
RESPONSE_SUFFIX = "|model_response"
ROUTELLM_RESPONSE = "_response"

_FIRST_LINE_MAX_CHARS = 1 << 26
_SHOWN_COLUMNS = 8


@dataclass(frozen=True, slots=True)
class Sniffed:
    """What a file's first line says about it.

    Attributes:
        layout: one of the layout names, or None for none of them.
        why: what was found, for a message.
        columns: a CSV file's header columns.
        delimiter: a CSV file's delimiter (comma, or tab for a TSV header).
    """

    layout: str | None
    why: str
    columns: tuple[str, ...] = ()
    delimiter: str = ","


def open_text(path: Path) -> TextIO:
    """Open a file as UTF-8 text, through gzip when it starts like gzip."""
    if is_gzip(path):
        return gzip.open(path, "rt", encoding="utf-8-sig", newline="")
    return path.open(encoding="utf-8-sig", newline="")


@contextmanager
def reading(path: Path) -> Iterator[None]:
    """Turn a file's encoding, compression and CSV faults into a ConfigError."""
    try:
        yield
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"{path}: not UTF-8 text ({exc.reason}); save the file as UTF-8, "
            "e.g. iconv -f latin1 -t utf-8"
        ) from exc
    except (EOFError, gzip.BadGzipFile, zlib.error) as exc:
        raise ConfigError(
            f"{path}: the gzip data is damaged or cut short ({exc}); compress "
            "the file again"
        ) from exc
    except csv.Error as exc:
        raise ConfigError(f"{path}: not a readable CSV file ({exc})") from exc


def sniff(path: Path) -> Sniffed:
    """Tell a file's layout from its first non-blank line."""
    with reading(path), open_text(path) as handle:
        first = _first_line(handle)
    if first is None:
        return _by_name(path)
    if first.startswith("{"):
        return _json_layout(first)
    if first.startswith("["):
        return Sniffed(None, "a JSON array; write one JSON object per line (JSONL)")
    return _csv_layout(first)


def _first_line(handle: TextIO) -> str | None:
    while True:
        line = handle.readline(_FIRST_LINE_MAX_CHARS)
        if not line:
            return None
        if line.strip():
            return line.strip()


def _by_name(path: Path) -> Sniffed:
    """An empty file: its name is all there is to go by."""
    name = path.name.lower()
    if ".jsonl" in name:
        return Sniffed(REPLAY_JSONL, "an empty file")
    if ".csv" in name:
        layout = ROUTELLM if name.startswith("gsm8k_responses") else ROUTERBENCH
        return Sniffed(layout, "an empty file")
    return Sniffed(None, "an empty file")


def _json_layout(first: str) -> Sniffed:
    try:
        data = json.loads(first)
    except json.JSONDecodeError as exc:
        return Sniffed(None, f"the first line is not JSON ({exc.msg})")
    if not isinstance(data, dict):
        return Sniffed(None, f"the first line is a JSON {type(data).__name__}")
    keys = set(data)
    if "outcomes" in keys:
        return Sniffed(REPLAY_JSONL, "JSON lines with 'outcomes'")
    if "question_id" in keys:
        if {"model", "score", "judgment"} <= keys:
            return Sniffed(
                ARENA_JUDGMENTS, "JSON lines with question_id, model, score, judgment"
            )
        if "choices" in keys:
            return Sniffed(ARENA_ANSWERS, "JSON lines with question_id and choices")
        if "turns" in keys:
            return Sniffed(ARENA_QUESTIONS, "JSON lines with question_id and turns")
    return Sniffed(None, f"JSON lines with keys {_shown(sorted(keys))}")


def _csv_layout(first: str) -> Sniffed:
    delimiter = "\t" if "\t" in first and "," not in first else ","
    columns = tuple(next(csv.reader([first], delimiter=delimiter)))
    found = f"CSV columns {_shown(columns)}"
    if any(c.endswith(COST_SUFFIX) for c in columns):
        return Sniffed(ROUTERBENCH, found, columns, delimiter)
    responses = [c for c in columns if c.endswith(ROUTELLM_RESPONSE)]
    if "prompt" in columns and any(
        c[: -len(ROUTELLM_RESPONSE)] in columns for c in responses
    ):
        return Sniffed(ROUTELLM, found, columns, delimiter)
    if "prompt" in columns and not responses:
        found += (
            ": per-model correctness without answer texts (no 'M_response' "
            "columns), which the checks need"
        )
    return Sniffed(None, found, columns, delimiter)


def _shown(names: tuple[str, ...] | list[str]) -> str:
    listed = ", ".join(repr(n) for n in names[:_SHOWN_COLUMNS])
    more = len(names) - _SHOWN_COLUMNS
    return f"[{listed}{f', ... {more} more' if more > 0 else ''}]"
