"""Measure hits and wrong hits of the cache on labelled question pairs.

Both protocols drive the real :class:`ResponseCache` (keys, scoping, store,
safety gate); only the embeddings are computed up front, in batches.

* pairwise: each pair alone: store text_a's answer, ask text_b.
* retrieval (GPTCache's protocol): store every text_a in one cache, then ask
  every text_b. A hit on the pair's own text_a, or on another entry holding
  the same question (after folding case, spacing and punctuation) in the
  same conversation, is right when the label is 1; every other hit is wrong.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import json
import logging
import os
import re
import tarfile
import zipfile
import zlib
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal, NamedTuple

import numpy as np

from governor._errors import ConfigError
from governor._textlines import is_gzip
from governor.cache._cache import ResponseCache
from governor.cache._embed import Embedder, Vectors
from governor.cache._request import KeyOptions, build_keys
from governor.cache._store import MemoryCacheStore
from governor.cache._types import CacheHit, CacheMiss
from governor.policies import Cache

__all__ = [
    "EvalPair",
    "Mode",
    "PairSet",
    "PrecomputedEmbedder",
    "evaluate",
    "expand_conversations",
    "load_pairs",
    "precompute",
    "questions",
    "read_pairs",
    "replace_policy",
    "sweep",
    "without_gate",
]

logger = logging.getLogger(__name__)

# What reading an embeddings file that is not one can raise.
_UNREADABLE = (
    OSError,
    ValueError,
    EOFError,
    KeyError,
    TypeError,
    AttributeError,
    UnicodeError,
    zipfile.BadZipFile,
    zlib.error,
)

Mode = Literal["pairwise", "retrieval"]
Message = dict[str, Any]
_MODEL = "eval-model"
_FOLD = re.compile(r"[\W_]+")


@dataclass(frozen=True, slots=True)
class EvalPair:
    """Two requests (chat messages) and whether one's answer serves the other."""

    a: tuple[Message, ...]
    b: tuple[Message, ...]
    label: int


@dataclass(frozen=True, slots=True)
class PairSet:
    """Pairs read from a file and the protocol that suits them by default.

    ``without_negatives`` counts, for a file of MeanCache conversations, the
    conversations that gave no label-0 pair because no other conversation
    starts with another question; it is None for other files.
    """

    pairs: list[EvalPair]
    mode: Mode
    without_negatives: int | None = None


def load_pairs(path: Path) -> tuple[list[EvalPair], Mode]:
    """Read labelled pairs and the protocol that suits them by default.

    The forms are those of :func:`read_pairs`; conversations left without a
    label-0 pair are logged as a warning.

    Raises:
        ConfigError: as :func:`read_pairs`.
    """
    found = read_pairs(path)
    if found.without_negatives:
        logger.warning(
            "%s: %d conversation(s) gave no label-0 pair: no other "
            "conversation in the file starts with a different first question",
            path,
            found.without_negatives,
        )
    return found.pairs, found.mode


def read_pairs(path: Path) -> PairSet:
    """Read labelled pairs, the protocol that suits them, and what was skipped.

    The file may be gzip-compressed (recognised by its bytes, whatever its
    name), and may be a tar archive of one file, as GPTCache ships its QQP
    pairs. Accepted, as JSONL (one object a line) or as one JSON list:

    * ``{"text_a", "text_b", "label"}``, QQP's ``question1``,
      ``question2`` and ``is_duplicate``, or PAWS's and GLUE's
      ``sentence1``, ``sentence2`` and ``label`` (a row giving two names of
      a column must give the same value under both). A label is 0 or 1,
      true or false, or "True", "False", "1.0" or "0.0" as CSV writers
      spell them. A text is a string or a list of chat messages, each with
      a role and its content; the last is the user's question, the ones
      before it its conversation. CSV or tab-separated text with a header
      naming these columns, in any case, is read too;
    * ``{"origin", "similar"}`` paraphrases (label 1, retrieval by default);
    * MeanCache conversations (``u0``, ``u0_duplicate``, ``system_q0``,
      ``u1``, ``u1_duplicate``), expanded by :func:`expand_conversations`.

    Raises:
        ConfigError: the file cannot be read, is not UTF-8 text of one of
            these forms, or holds no pair; the message names the file and,
            where it can, the line or item, and lists the accepted forms.
    """
    raw = _read_text(path)
    head = raw.lstrip()
    first_line = raw[: len(raw) - len(head)].count("\n") + 1  # the first not blank
    if head.startswith("["):
        rows = _json_list(path, raw)
    elif _is_table(head):
        rows = _table_rows(path, head, first_line)
    elif _is_other_table(head):
        raise _unknown_header(f"{path}:{first_line}", head)
    else:
        rows = _jsonl_rows(path, raw)
    found = _from_rows(rows)
    if not found.pairs:
        raise ConfigError(
            f"{path} holds no pairs; give a file with at least one labelled "
            "pair (text_a, text_b, label), paraphrase or conversation"
        )
    return found


_FORMS = (
    "accepted: JSONL or a JSON list (gzipped too) of text_a/text_b/label "
    "objects (or QQP's question1/question2/is_duplicate, or PAWS/GLUE's "
    "sentence1/sentence2/label), of origin/similar paraphrases, or of "
    "MeanCache conversations (u0, u0_duplicate, system_q0, u1, "
    "u1_duplicate); or CSV/TSV with a question1/question2/is_duplicate, "
    "sentence1/sentence2/label or text_a/text_b/label header"
)
_WANTED = (
    "one JSON object with text_a, text_b and label (or QQP's question1, "
    "question2 and is_duplicate, or sentence1, sentence2 and label)"
)
_TEXT_KEYS = ("text_a", "text_b", "question1", "question2", "sentence1", "sentence2")
_ALIASES = {
    "text_a": ("text_a", "question1", "sentence1"),
    "text_b": ("text_b", "question2", "sentence2"),
    "label": ("label", "is_duplicate"),
}
_KNOWN_COLUMNS = frozenset(name for names in _ALIASES.values() for name in names)
_COLUMNS = (
    "a CSV/TSV header names question1, question2 and is_duplicate (QQP's "
    "names) or text_a, text_b and label, or sentence1, sentence2 and label "
    "(PAWS's and GLUE's), in any case"
)
# Label cells as CSV writers spell them: pandas writes booleans True/False
# and a column of integers holding a blank as floats (1.0/0.0).
_LABEL_WORDS = {"true": 1, "false": 0, "1.0": 1, "0.0": 0}
_CONVERSATION_KEYS = ("u0", "u0_duplicate", "system_q0", "u1", "u1_duplicate")
_GZIP_MAGIC = b"\x1f\x8b"
# Rows as read, each with where it was: "FILE:LINE" or "FILE: item N".
Rows = list[tuple[str, dict[str, Any]]]


def _read_text(path: Path) -> str:
    """The file's text, gunzipped and untarred; ConfigError names what failed."""
    try:
        if path.suffix == ".gz" or is_gzip(path):
            with gzip.open(path, "rb") as packed:
                data = packed.read()
        else:
            data = path.read_bytes()
        data = _untar(path, data)
        if data.startswith(_GZIP_MAGIC):  # a .gz file inside the archive
            data = gzip.decompress(data)
    except (OSError, EOFError, zlib.error, tarfile.TarError) as exc:
        reason = getattr(exc, "strerror", None) or exc
        raise ConfigError(f"cannot read pairs file {path}: {reason}; {_FORMS}") from exc
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise ConfigError(
            f"{path}:{line}: not UTF-8 text (byte 0x{data[exc.start]:02x}); "
            "save the pairs file as UTF-8"
        ) from exc


def _untar(path: Path, data: bytes) -> bytes:
    """The one file inside a tar archive; other data as it is."""
    if data[257:262] != b"ustar":
        return data
    with tarfile.open(fileobj=io.BytesIO(data)) as archive:
        files = [m for m in archive.getmembers() if m.isfile()]
        if len(files) != 1:
            raise ConfigError(
                f"{path} is a tar archive of {len(files)} files; give the one "
                f"pairs file itself, or an archive holding only it; {_FORMS}"
            )
        unpacked = archive.extractfile(files[0])
        assert unpacked is not None  # a regular file always has its data
        return unpacked.read()


def _json_list(path: Path, raw: str) -> Rows:
    """The objects of a JSON list, each with its item number."""
    try:
        items = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ConfigError(
            f"{path}:{exc.lineno}: not JSON ({exc.msg} at column {exc.colno}); {_FORMS}"
        ) from exc
    if items and all(isinstance(item, str) for item in items):
        raise ConfigError(
            f"{path}: a JSON list of strings (such as MeanCache's unique_u0.json "
            f"or unique_u1.json) holds questions without labels, not pairs; {_FORMS}"
        )
    if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
        raise ConfigError(
            f"{path}: a JSON list whose items are not all objects; {_FORMS}"
        )
    return [(f"{path}: item {n}", item) for n, item in enumerate(items, start=1)]


def _jsonl_rows(path: Path, raw: str) -> Rows:
    """One JSON object per non-blank line; errors name the line."""
    rows: Rows = []
    # Split on newlines only: a JSON string may hold U+2028 and the like.
    for number, line in enumerate(raw.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ConfigError(
                f"{path}:{number}: not JSON ({exc.msg} at column {exc.colno}); "
                f"each line must be {_WANTED}"
            ) from exc
        if not isinstance(row, dict):
            raise ConfigError(
                f"{path}:{number}: not a JSON object; each line must be {_WANTED}"
            )
        rows.append((f"{path}:{number}", row))
    return rows


def _is_table(head: str) -> bool:
    """Whether the first line is a CSV/TSV header naming the pair columns."""
    first = head.split("\n", 1)[0]
    if first.startswith("{"):
        return False
    cells = {cell.strip().strip('"').strip() for cell in re.split("[,\t]", first)}
    return bool({cell.lower() for cell in cells} & set(_TEXT_KEYS))


def _is_other_table(head: str) -> bool:
    """Whether the first line, not JSON, has columns as a CSV/TSV header has."""
    first = head.split("\n", 1)[0].strip()
    if first.startswith("{") or not any(sep in first for sep in ",;\t"):
        return False
    try:
        json.loads(first)
    except json.JSONDecodeError:
        return True
    return False


def _header_cells(first: str, delimiter: str) -> list[str]:
    cells = next(csv.reader([first], delimiter=delimiter), [])
    return [cell.strip() for cell in cells]


def _columns(cells: Sequence[str]) -> str:
    shown = ", ".join(repr(cell) for cell in cells[:8])
    return shown + (f" and {len(cells) - 8} more" if len(cells) > 8 else "")


def _unknown_header(where: str, head: str) -> ConfigError:
    """The error for a first line read as a CSV/TSV header of no pair column."""
    first = head.split("\n", 1)[0].strip()
    delimiter = "\t" if "\t" in first else "," if "," in first else ";"
    cells = _header_cells(first, delimiter)
    if delimiter == ";" and _KNOWN_COLUMNS & {cell.lower() for cell in cells}:
        return ConfigError(
            f"{where}: read as CSV (the first line is not JSON), but its header's "
            f"columns ({_columns(cells)}) are separated by ';': only commas or "
            f"tabs separate the columns; save the file comma- or tab-separated; "
            f"{_COLUMNS}"
        )
    separated = ", separated by ';'" if delimiter == ";" else ""
    return ConfigError(
        f"{where}: read as CSV/TSV (the first line is not JSON), but its header "
        f"names none of the pair columns (its columns: {_columns(cells)}{separated}); "
        f"{_COLUMNS}, separated by commas or tabs; rename the header's columns "
        f"to these, or give the pairs as JSONL; {_FORMS}"
    )


def _table_rows(path: Path, text: str, first_line: int) -> Rows:
    """The rows of CSV or tab-separated text under its header line.

    ``text`` starts with the header, on line ``first_line`` of the file.
    Tab-separated text is read as GLUE, PAWS and Quora write it, without
    quoting (see :func:`_tsv_cell`). A row of more cells than the header,
    or of too few to reach a pair column, raises :class:`ConfigError`.
    """
    tabbed = "\t" in text.split("\n", 1)[0]
    table = _Table(path, first_line - 1, tabbed)
    reader = table.reader(text)
    lines = table.checked(reader)
    header = table.header(next(lines, []))
    rows: Rows = []
    for cells in lines:
        if any(cell.strip() for cell in cells):
            where = f"{path}:{table.offset + reader.line_num}"
            rows.append((where, table.row(where, header, cells)))
    return rows


class _Table(NamedTuple):
    """How one CSV or TSV file of pairs is read, and its errors."""

    path: Path
    offset: int  # the file's line before the header
    tabbed: bool

    def reader(self, text: str) -> Any:
        if self.tabbed:
            return csv.reader(io.StringIO(text), delimiter="\t", quoting=csv.QUOTE_NONE)
        return csv.reader(io.StringIO(text))

    def cells(self, cells: Sequence[str]) -> list[str]:
        return [_tsv_cell(cell) for cell in cells] if self.tabbed else list(cells)

    def header(self, cells: Sequence[str]) -> list[str]:
        """The header's column names; ConfigError if a pair column lacks."""
        names = [_column(name) for name in self.cells(cells)]
        lacking = [
            " or ".join(aliases)
            for aliases in _ALIASES.values()
            if not any(name in names for name in aliases)
        ]
        if lacking:
            raise ConfigError(
                f"{self.path}:{self.offset + 1}: the CSV/TSV header lacks "
                f"{', '.join(lacking)} (its columns: {_columns(names)}); "
                f"{_COLUMNS}; add or rename the missing columns"
            )
        twice = sorted({n for n in names if n in _KNOWN_COLUMNS and names.count(n) > 1})
        if twice:
            raise ConfigError(
                f"{self.path}:{self.offset + 1}: the CSV/TSV header names "
                f"{', '.join(map(repr, twice))} more than once (its columns: "
                f"{_columns(names)}); which one holds the pair is unclear, so "
                "rename or drop the extra column"
            )
        return names

    def checked(self, reader: Any) -> Iterator[list[str]]:
        """The reader's rows; a CSV fault is a ConfigError naming the line."""
        rows = iter(reader)
        while True:
            try:
                cells: list[str] = next(rows)
            except StopIteration:
                return
            except csv.Error as exc:
                line = self.offset + reader.line_num
                quote = "field limit" in str(exc) and not self.tabbed
                advice = _OPEN_QUOTE if quote else _FORMS
                raise ConfigError(f"{self.path}:{line}: {exc}; {advice}") from exc
            if not self.tabbed and any(len(cell) > _LONGEST_CELL for cell in cells):
                # Said whatever csv.field_size_limit() this process has set.
                line = self.offset + reader.line_num
                raise ConfigError(
                    f"{self.path}:{line}: field larger than field limit "
                    f"({_LONGEST_CELL} characters); {_OPEN_QUOTE}"
                )
            yield cells

    def row(
        self, where: str, header: Sequence[str], cells: Sequence[str]
    ) -> dict[str, Any]:
        """The row by column name; a row that does not fit is refused.

        Empty cells past the header's (a trailing delimiter) are dropped.
        """
        if len(cells) > len(header) and not any(
            c.strip() for c in cells[len(header) :]
        ):
            cells = cells[: len(header)]
        if len(cells) > len(header):
            raise ConfigError(
                f"{where}: {len(cells) - len(header)} more cell(s) than the "
                f"header ({len(header)} columns: {_columns(header)}); "
                + (_TAB_INSIDE if self.tabbed else _COMMA_INSIDE)
            )
        absent = [name for name in header[len(cells) :] if name in _KNOWN_COLUMNS]
        if absent:
            raise ConfigError(
                f"{where}: {len(cells)} cell(s), too few to reach the "
                f"{', '.join(map(repr, absent))} column(s) (the header has "
                f"{len(header)} columns: {_columns(header)}); "
                + (_BREAK_INSIDE_TSV if self.tabbed else _BREAK_INSIDE_CSV)
            )
        values: list[str | None] = [*self.cells(cells)]
        values += [None] * (len(header) - len(cells))
        return dict(zip(header, values, strict=True))


_COMMA_INSIDE = (
    "quote cells that hold the delimiter (a comma inside an unquoted cell "
    "splits it in two), or fix or drop the row"
)
_TAB_INSIDE = (
    "a tab inside a cell splits it in two: tab-separated cells are read as "
    "written, without quoting, so replace tabs inside cells with spaces, or "
    "fix or drop the row"
)
_BREAK_INSIDE_CSV = (
    "a line break inside an unquoted cell ends its row early: quote such "
    "cells, or fix or drop the row"
)
_BREAK_INSIDE_TSV = (
    "a line break inside a cell ends its row early: tab-separated cells are "
    "read as written, without quoting, so replace line breaks inside cells "
    "with spaces, or fix or drop the row"
)
# The longest cell a pair file holds: the csv module's default field limit,
# which another part of the process may have raised.
_LONGEST_CELL = 131_072
_OPEN_QUOTE = (
    'a cell that long is a quote (") left open on this line or one before it '
    "that takes in the rest of the file: close the quote, or double each "
    "quote inside a quoted cell"
)


def _tsv_cell(cell: str) -> str:
    """A tab-separated cell as written, less the quotes of a cell quoted whole.

    A cell that starts and ends with a double quote and holds no other
    quote but doubled ones (``""``), as a CSV writer quotes a cell, is read
    without its outer quotes and with each ``""`` as one quote. Any other
    quote is text: a question may start with one.
    """
    if len(cell) >= 2 and cell[0] == cell[-1] == '"':
        inner = cell[1:-1]
        if '"' not in inner.replace('""', ""):
            return inner.replace('""', '"')
    return cell


def _column(name: str) -> str:
    """A header cell: a pair column's name in lower case, others as written."""
    name = name.strip()
    return name.lower() if name.lower() in _KNOWN_COLUMNS else name


def _from_rows(rows: Rows) -> PairSet:
    """Pairs of the kind the first row shows; errors name the row."""
    if not rows:
        return PairSet([], "pairwise")
    where, first = rows[0]
    if "origin" in first:
        return PairSet([_paraphrase(w, row) for w, row in rows], "retrieval")
    if "u0" in first:
        conversations = [_conversation(w, row) for w, row in rows]
        pairs, alone = _expand(conversations)
        return PairSet(pairs, "pairwise", alone)
    if any(key in first for key in _TEXT_KEYS):
        return PairSet([_labelled_pair(w, row) for w, row in rows], "pairwise")
    if "Main Query" in first:
        raise ConfigError(
            f"{where}: MeanCache's Main Query/Follow-Up Query files hold no "
            f"paraphrase and so no pair this command can score; {_FORMS}"
        )
    keys = ", ".join(map(repr, list(first)[:6])) or "none"
    raise ConfigError(f"{where}: rows of unknown keys ({keys}); {_FORMS}")


def _paraphrase(where: str, row: Mapping[str, Any]) -> EvalPair:
    try:
        return _pair(row["origin"], row["similar"], 1, where, ("origin", "similar"))
    except KeyError as exc:
        raise ConfigError(f"{where}: an item lacks the key {exc}; {_FORMS}") from exc


def _labelled_pair(where: str, row: Mapping[str, Any]) -> EvalPair:
    """Read text_a, text_b and label, or QQP's names for them.

    A row may give a column under both names only with the same value.
    """
    given = {key: _given(row, names) for key, names in _ALIASES.items()}
    missing = [key for key, values in given.items() if not values]
    if missing:
        names = ", ".join(map(repr, missing))
        raise ConfigError(
            f"{where}: missing {names}; each line or item must be {_WANTED}"
        )
    a, b = (
        [(name, _text(where, name, value)) for name, value in given[key]]
        for key in ("text_a", "text_b")
    )
    labels = [(name, _label(where, value)) for name, value in given["label"]]
    _agree(where, a)
    _agree(where, b)
    _agree(where, labels)
    return EvalPair(a[0][1], b[0][1], labels[0][1])


def _given(row: Mapping[str, Any], names: Sequence[str]) -> list[tuple[str, Any]]:
    """The row's values under ``names``; nulls left out, and blanks too
    where another name holds a value (a CSV cell left empty)."""
    given = [(name, row[name]) for name in names if row.get(name) is not None]
    filled = [(name, value) for name, value in given if value != ""]
    return filled or given[:1]


def _label(where: str, label: Any) -> int:
    """A label 0 or 1: a number, a JSON boolean, or a cell as CSV writers
    spell them ("1", "True", "1.0", any case)."""
    if isinstance(label, str):
        label = label.strip()
        label = _LABEL_WORDS.get(label.lower(), label)
    if label not in (0, 1, "0", "1"):
        raise ConfigError(
            f"{where}: label must be 0 or 1 (also true/false or 1.0/0.0), got {label!r}"
        )
    return int(label)


def _text(where: str, name: str, text: Any) -> tuple[Message, ...]:
    try:
        return _messages(text, name)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from exc


def _agree(where: str, read: Sequence[tuple[str, Any]]) -> None:
    """Refuse a column given under both its names with different values."""
    (name, value), *others = read
    for other, different in others:
        if different != value:
            raise ConfigError(
                f"{where}: {name} and {other} differ ({_short(value)} against "
                f"{_short(different)}); a row that gives a column under two "
                "names (text_a/text_b/label, QQP's question1/question2/"
                "is_duplicate, sentence1/sentence2) must give the same value "
                "under both; keep one set of names"
            )


def _short(value: Any) -> str:
    if isinstance(value, tuple) and len(value) == 1 and value[0].get("role") == "user":
        value = value[0]["content"]  # a text given as a plain string
    shown = repr(value)
    return shown if len(shown) <= 80 else shown[:77] + "..."


class _Conversation(NamedTuple):
    """The fields of a MeanCache conversation that the pairs use."""

    u0: str
    u0_duplicate: str
    system_q0: str
    u1: str
    u1_duplicate: str


def _conversation(where: str, row: Mapping[str, Any]) -> _Conversation:
    for key in _CONVERSATION_KEYS:
        if key not in row:
            raise ConfigError(f"{where}: an item lacks the key {key!r}; {_FORMS}")
        if not isinstance(row[key], str):
            raise ConfigError(
                f"{where}: {key} must be a string, got {row[key]!r}; {_FORMS}"
            )
    return _Conversation(*(row[key] for key in _CONVERSATION_KEYS))


def expand_conversations(rows: Sequence[Mapping[str, str]]) -> list[EvalPair]:
    """Turn MeanCache two-turn conversations into labelled pairs.

    For each conversation: ``u0`` against its paraphrase (label 1); the
    follow-up against its paraphrase after the same first turn (label 1);
    and the follow-up, then its paraphrase, asked after the first turn of
    another conversation (label 0: the answer depends on it). That other is
    the next one, wrapping, whose first question is neither this one's nor
    its paraphrase (compared with case, spacing and punctuation folded); a
    conversation with none gives no label-0 pair, and a warning counts them.
    Each pair is counted once: conversations that differ only in fields the
    pairs do not use (``system_q1``) are one, and a first question with
    several follow-ups gives its own pair once.

    Raises:
        ConfigError: a conversation lacks one of those fields or holds a
            value that is not a string.
    """
    conversations = [
        _conversation(f"conversation {n}", row) for n, row in enumerate(rows, start=1)
    ]
    pairs, alone = _expand(conversations)
    if alone:
        logger.warning(
            "%d conversation(s) gave no label-0 pair: no other conversation "
            "starts with a different first question",
            alone,
        )
    return pairs


def _expand(rows: Sequence[_Conversation]) -> tuple[list[EvalPair], int]:
    """The distinct pairs of the conversations, and how many had no negative."""
    conversations = list(dict.fromkeys(rows))
    firsts = [_fold(c.u0) for c in conversations]
    pairs: list[EvalPair] = []
    alone = 0
    for i, row in enumerate(conversations):
        context = _turn(row)
        follow = (*context, _user(row.u1))
        pairs.append(_pair(row.u0, row.u0_duplicate, 1))
        pairs.append(EvalPair(follow, (*context, _user(row.u1_duplicate)), 1))
        own = {firsts[i], _fold(row.u0_duplicate)}
        other = _other(conversations, firsts, own, i)
        if other is None:
            alone += 1
            continue
        elsewhere = _turn(other)
        pairs.append(EvalPair(follow, (*elsewhere, _user(row.u1)), 0))
        pairs.append(EvalPair(follow, (*elsewhere, _user(row.u1_duplicate)), 0))
    distinct = {json.dumps([p.a, p.b, p.label]): p for p in pairs}
    return list(distinct.values()), alone


def _other(
    conversations: Sequence[_Conversation],
    firsts: Sequence[str],
    own: set[str],
    index: int,
) -> _Conversation | None:
    """The next conversation, wrapping, whose first question is not in ``own``.

    ``firsts`` are the folded first questions; ``own`` holds this one's and
    its paraphrase, folded.
    """
    count = len(conversations)
    for step in range(1, count):
        j = (index + step) % count
        if firsts[j] not in own:
            return conversations[j]
    return None


def _turn(row: _Conversation) -> tuple[Message, Message]:
    return _user(row.u0), {"role": "assistant", "content": row.system_q0}


def _user(text: str) -> Message:
    return {"role": "user", "content": text}


def _pair(
    a: Any,
    b: Any,
    label: int,
    where: str | None = None,
    names: tuple[str, str] = ("text_a", "text_b"),
) -> EvalPair:
    if where is None:
        return EvalPair(_messages(a), _messages(b), label)
    return EvalPair(_text(where, names[0], a), _text(where, names[1], b), label)


def _messages(text: Any, name: str = "the text") -> tuple[Message, ...]:
    """A text as chat messages; ConfigError says what is wrong with ``name``."""
    if isinstance(text, str):
        return (_user(text),)
    if not (isinstance(text, list) and text and all(isinstance(m, dict) for m in text)):
        raise ConfigError(
            f"a text must be a string or a list of messages, got {name} {_short(text)}"
        )
    for number, message in enumerate(text, start=1):
        _check_message(f"{name}'s message {number} of {len(text)}", message)
    role = text[-1]["role"]
    if role != "user":
        raise ConfigError(
            f"{name}'s last message is from {role!r}, but the last message must "
            "be the user's question (the ones before it are its conversation); end "
            "the text with the user message to ask"
        )
    return tuple(dict(m) for m in text)


def _check_message(which: str, message: Mapping[str, Any]) -> None:
    """Refuse a chat message without a role or without its content."""
    role = message.get("role")
    if not isinstance(role, str) or not role:
        got = "has no 'role'" if role is None else f"has a bad role {role!r}"
        raise ConfigError(
            f"{which} {got}; each message needs a role such as 'user', "
            f"'assistant' or 'system', and its content: {_short(message)}"
        )
    content = message.get("content")
    if content is None:
        if role == "assistant" and message.get("tool_calls"):
            return  # a tool call's message may carry no text
        raise ConfigError(
            f"{which} ({role!r}) has no 'content'; give each message its "
            f"text as content: {_short(message)}"
        )
    if not isinstance(content, str | list):
        raise ConfigError(
            f"{which} ({role!r}) has content {_short(content)}; a message's "
            "content is a string or a list of content parts"
        )


def questions(pairs: Iterable[EvalPair]) -> list[str]:
    """Return the distinct normalized questions the cache would embed.

    Each is the query the live cache keys a request on (see
    :func:`~governor.cache._request.build_keys`): a question given as a
    list of content parts is embedded as the text the cache reads from
    them, and a request the semantic layer skips (an empty question, or
    parts that are not one text) gives none.
    """
    seen: dict[str, None] = {}
    for pair in pairs:
        for messages in (pair.a, pair.b):
            query = _query(messages)
            if query is not None:
                seen.setdefault(query, None)
    return list(seen)


_QUERY_OPTIONS = KeyOptions()


def _query(messages: Sequence[Message]) -> str | None:
    """The text the cache embeds for ``messages``; the scoping options do
    not change it."""
    keys = build_keys(
        model=_MODEL, messages=messages, params={}, partition={}, options=_QUERY_OPTIONS
    )
    return keys.query


class PrecomputedEmbedder:
    """Serves vectors computed up front; unknown texts are an error."""

    def __init__(
        self,
        name: str,
        threshold: float,
        table: Mapping[str, Vectors],
        fits: Callable[[str], bool] | None = None,
    ):
        """Look texts up in ``table`` under another embedder's name.

        ``fits`` is that embedder's test of whether it reads a text whole,
        so that the cache skips the same long texts as with the embedder.
        """
        self.name = name
        self.default_threshold = threshold
        self._table = table
        self._fits = fits

    def fits(self, text: str) -> bool:
        """Whether the original embedder reads ``text`` whole."""
        if text in self._table or self._fits is None:
            return True
        return bool(self._fits(text))

    def embed(self, texts: Sequence[str]) -> Vectors:
        """Return the stored vectors of ``texts``."""
        return np.stack([self._table[t] for t in texts]).astype(np.float32)


def precompute(
    embedder: Embedder,
    texts: Sequence[str],
    *,
    cache_file: Path | None = None,
    batch: int = 64,
    progress: Callable[[int, int], None] | None = None,
    max_chars: int | None = None,
) -> PrecomputedEmbedder:
    """Embed ``texts`` in batches, reusing and extending ``cache_file`` if given.

    Texts the cache would not embed are skipped, as the cache skips them
    (``too_long``): those longer than ``max_chars`` (pass the policy's
    ``max_semantic_chars``) or than the embedder reads whole.

    The file keeps each vector under the SHA-256 of its text, so its size
    does not grow with the length of the texts. A file written for another
    embedder is replaced, with a warning.

    A file that cannot be written (a missing folder, a full disk) is
    reported as a warning: the vectors are still returned.

    Raises:
        ConfigError: ``cache_file`` exists but is not an embeddings file that
            this function wrote; the message names it.
    """
    fits = getattr(embedder, "fits", None)
    wanted = [
        t
        for t in dict.fromkeys(texts)
        if (max_chars is None or len(t) <= max_chars) and (fits is None or fits(t))
    ]
    table: dict[str, Vectors] = {}
    stale = False
    if cache_file is not None and cache_file.exists():
        table, stale = _read_vectors(cache_file, embedder.name)
    digests = {t: _digest(t) for t in wanted}
    missing = [t for t in wanted if digests[t] not in table]
    for start in range(0, len(missing), batch):
        chunk = missing[start : start + batch]
        vectors = embedder.embed(chunk)
        table.update(zip((digests[t] for t in chunk), vectors, strict=True))
        if progress is not None:
            progress(start + len(chunk), len(missing))
    if cache_file is not None and (missing or stale):
        _keep_vectors(cache_file, embedder.name, table)
    found = {t: table[digests[t]] for t in wanted}
    return PrecomputedEmbedder(embedder.name, embedder.default_threshold, found, fits)


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def _read_vectors(path: Path, name: str) -> tuple[dict[str, Vectors], bool]:
    """The vectors in ``path`` by text digest, and whether to rewrite the file.

    A file of the first format (texts stored whole) is read and rewritten.
    """
    try:
        data = np.load(path, allow_pickle=False)
    except _UNREADABLE as exc:
        raise _unreadable(path, exc) from exc
    if not isinstance(data, np.lib.npyio.NpzFile):
        raise _unreadable(path, "one array, not an .npz archive")
    with data:
        try:
            return _vectors_in(data, name, path)
        except _UNREADABLE as exc:
            raise _unreadable(path, exc) from exc


def _vectors_in(data: Any, name: str, path: Path) -> tuple[dict[str, Vectors], bool]:
    stored = str(data["name"][()])
    if stored != name:
        logger.warning(
            "%s holds embeddings of %r, not %r; they are replaced",
            path,
            stored,
            name,
        )
        return {}, True
    vectors = np.asarray(data["vectors"], dtype=np.float32)
    legacy = "hashes" not in data.files
    if legacy:
        digests = [_digest(t) for t in data["texts"].tolist()]
    else:
        digests = [h.decode("ascii") for h in data["hashes"].tolist()]
    if vectors.ndim != 2 or len(digests) != len(vectors):
        raise ValueError(f"{len(digests)} keys for vectors of shape {vectors.shape}")
    return dict(zip(digests, vectors, strict=True)), legacy


def _unreadable(path: Path, reason: object) -> ConfigError:
    return ConfigError(
        f"embedding cache {path} is not an .npz of embeddings that governor eval "
        f"cache wrote ({reason}); delete it or give another file"
    )


def _keep_vectors(path: Path, name: str, table: Mapping[str, Vectors]) -> None:
    """Write the vectors; a failure loses them for later runs, not this one."""
    try:
        _write_vectors(path, name, table)
    except OSError as exc:
        logger.warning(
            "cannot write the embedding cache %s (%s); this run goes on, but "
            "its embeddings are not kept for the next",
            path,
            exc.strerror or exc,
        )


def _write_vectors(path: Path, name: str, table: Mapping[str, Vectors]) -> None:
    """Write ``table`` to ``path`` at once: an interrupted run leaves the old."""
    digests = list(table)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with temporary.open("wb") as out:
            np.savez(
                out,
                name=np.array(name),
                hashes=np.array([d.encode("ascii") for d in digests], dtype="S64"),
                vectors=np.array([table[d] for d in digests], dtype=np.float32),
            )
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def evaluate(
    pairs: Sequence[EvalPair], *, mode: Mode, policy: Cache, embedder: Embedder
) -> dict[str, Any]:
    """Run one protocol and return the figures ``governor eval cache`` prints."""
    run = _pairwise if mode == "pairwise" else _retrieval
    outcome = run(pairs, policy, embedder)
    cache = ResponseCache(policy, embedder=embedder)
    return outcome.report(len(pairs), mode, cache.threshold, pairs)


def sweep(
    pairs: Sequence[EvalPair],
    *,
    mode: Mode,
    policy: Cache,
    embedder: Embedder,
    thresholds: Sequence[float],
) -> list[dict[str, Any]]:
    """Evaluate at each threshold, with the policy's gate setting."""
    rows = []
    for threshold in thresholds:
        at = replace_policy(policy, similarity_threshold=threshold)
        rows.append(evaluate(pairs, mode=mode, policy=at, embedder=embedder))
    return rows


@dataclass(slots=True)
class _Outcome:
    hits: int = 0
    wrong: int = 0
    right: int = 0
    layers: Counter[str] | None = None
    misses: Counter[str] | None = None

    def count(self, layer: str | None, right: bool, reason: str | None) -> None:
        assert self.layers is not None
        assert self.misses is not None
        if layer is None:
            self.misses[reason or "not_found"] += 1
            return
        self.hits += 1
        self.layers[layer] += 1
        if right:
            self.right += 1
        else:
            self.wrong += 1

    def report(
        self, n: int, mode: Mode, threshold: float, pairs: Sequence[EvalPair]
    ) -> dict[str, Any]:
        positives = sum(1 for p in pairs if p.label == 1)
        # With no hit, nothing was served wrongly (false_hit_rate 0) but
        # precision, right hits over hits, is undefined: None, not 1.0.
        false_rate = self.wrong / self.hits if self.hits else 0.0
        return {
            "pairs": n,
            "mode": mode,
            "threshold": round(threshold, 4),
            "hit_rate": _round(self.hits / n if n else 0.0),
            "false_hit_rate": _round(false_rate),
            "precision": _round(1.0 - false_rate) if self.hits else None,
            "recall": _round(self.right / positives if positives else 0.0),
            "hits": self.hits,
            "wrong_hits": self.wrong,
            "positives": positives,
            "layers": dict(self.layers or {}),
            "misses": dict(sorted((self.misses or {}).items())),
        }


def _round(value: float) -> float:
    return round(value, 4)


def _new_outcome() -> _Outcome:
    return _Outcome(layers=Counter(), misses=Counter())


def _answer(index: int) -> Message:
    return {"role": "assistant", "content": f"answer {index}"}


def _pairwise(pairs: Sequence[EvalPair], policy: Cache, embedder: Embedder) -> _Outcome:
    outcome = _new_outcome()
    store = MemoryCacheStore(max_entries=16)
    cache = ResponseCache(policy, embedder=embedder, store=store)
    for index, pair in enumerate(pairs):
        store.clear()
        _seed(cache, pair.a, index)
        result = _ask(cache, pair.b)
        if result.hit:
            outcome.count(result.layer, pair.label == 1, None)
        else:
            outcome.count(None, False, result.reason)
    return outcome


def _retrieval(
    pairs: Sequence[EvalPair], policy: Cache, embedder: Embedder
) -> _Outcome:
    outcome = _new_outcome()
    store = MemoryCacheStore(max_entries=2 * len(pairs) + 16)
    cache = ResponseCache(policy, embedder=embedder, store=store)
    for index, pair in enumerate(pairs):
        _seed(cache, pair.a, index)
    for pair in pairs:
        result = _ask(cache, pair.b)
        if not result.hit:
            outcome.count(None, False, result.reason)
            continue
        own = cache.keys(model=_MODEL, messages=pair.a)
        asked = cache.keys(model=_MODEL, messages=pair.b)
        same_question = result.key == own.exact or (
            own.scope == asked.scope
            and _fold(result.cached_query) == _fold(own.text or own.query)
        )
        outcome.count(result.layer, same_question and pair.label == 1, None)
    return outcome


def _ask(cache: ResponseCache, messages: Sequence[Message]) -> CacheHit | CacheMiss:
    """Look ``messages`` up; an empty or blank question is an ``empty_query``
    miss.

    The live cache never embeds such a question, but its exact layer would
    serve a repeat of the very same request ("" after "", or "   " after
    ""); a label on two empty questions says nothing about whether answers
    can be shared, so the evaluation counts every one as a miss.
    """
    keys = cache.keys(model=_MODEL, messages=messages)
    if keys.semantic_skip == "empty_query":
        return CacheMiss("empty_query", keys, storable=False)
    return cache.lookup(model=_MODEL, messages=messages)


def _seed(cache: ResponseCache, messages: Sequence[Message], index: int) -> None:
    keys = cache.keys(model=_MODEL, messages=messages)
    if keys.uncacheable is None:
        miss = CacheMiss("seed", keys)
        cache.store(miss, message=_answer(index), model=_MODEL, cost_usd=Decimal(0))


def _fold(text: str | None) -> str:
    return " ".join(_FOLD.sub(" ", (text or "").lower()).split())


def without_gate(policy: Cache) -> Cache:
    """Return ``policy`` with the safety gate off (for comparisons)."""
    return replace_policy(policy, safety_gate=False)


def replace_policy(policy: Cache, **changes: Any) -> Cache:
    """Return a copy of ``policy`` with ``changes``, validated."""
    return Cache(**{**policy.model_dump(), **changes})
