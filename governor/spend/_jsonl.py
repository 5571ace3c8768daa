"""Spend records as a JSONL trace file, one JSON object per line."""

from __future__ import annotations

import gzip
import json
import logging
import os
import sys
import threading
import zlib
from collections.abc import Iterable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any, BinaryIO, Literal

from governor._errors import ConfigError
from governor._files import SQLITE_HEADER
from governor._forks import start_over_in_children
from governor._textlines import open_bytes
from governor.spend._record import SpendDataError, SpendRecord, load_json
from governor.spend._store import (
    Filters,
    check_bounds,
    check_filters,
    in_range,
    matches,
)
from governor.spend._time import to_us

__all__ = ["JSONL_SUFFIXES", "JsonlSpendStore", "is_sqlite_file", "jsonl_kind"]

logger = logging.getLogger(__name__)

# Binary on Windows too: lines end in "\n" whatever the platform.
_APPEND_FLAGS = os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_BINARY", 0)

_JSON_KINDS = {
    list: "array",
    str: "string",
    int: "number",
    float: "number",
    bool: "boolean",
    type(None): "null",
}
_FIX = "fix or delete this line"

JSONL_SUFFIXES = (".jsonl", ".ndjson")
"""The name endings of a spend JSONL file, in any case (``.JSONL`` too)."""
_GZ = ".gz"

# A query's sort key holds a line's byte offset in its low bits (256 TiB).
_OFFSET_BITS = 48
_OFFSET_MASK = (1 << _OFFSET_BITS) - 1

_Source = gzip.GzipFile | BinaryIO


def jsonl_kind(target: str | Path) -> Literal["plain", "gzip"] | None:
    """Whether ``target`` is named as a spend JSONL file, and how.

    ``"plain"`` for a name ending in ``.jsonl`` or ``.ndjson``, ``"gzip"``
    for one ending in ``.jsonl.gz`` or ``.ndjson.gz``, None for any other
    (a SQLite file or a URL). Case is ignored: ``spend.JSONL`` is JSONL.
    An existing file that starts with the SQLite header is None whatever its
    name: earlier releases created SQLite stores at ``.ndjson`` paths.
    """
    if is_sqlite_file(target):
        return None
    name = str(target).lower()
    if name.endswith(JSONL_SUFFIXES):
        return "plain"
    if name.endswith(tuple(suffix + _GZ for suffix in JSONL_SUFFIXES)):
        return "gzip"
    return None


def is_sqlite_file(target: str | Path) -> bool:
    """Whether ``target`` is an existing file that starts with the SQLite header.

    Only a regular file is opened: a named pipe would block the open.
    """
    try:
        if not Path(target).is_file():
            return False
        with open(target, "rb") as handle:
            return handle.read(len(SQLITE_HEADER)) == SQLITE_HEADER
    except (OSError, ValueError):  # missing, a folder, unreadable, a bad name
        return False


class JsonlSpendStore:
    """Spend records appended to a JSONL file (the trace format of ``docs/reports.md``).

    Writes append whole lines under a lock, so one process's threads never
    interleave, and under an exclusive file lock (``flock``, on POSIX
    systems), so several processes may append to one local file. A batch
    is appended whole or not at all. A repeated ``call_id`` is appended again,
    but a query keeps only the first line of each ``call_id``, as the SQLite
    and Redis stores keep the first record, and logs a warning with the number
    skipped (also left in :attr:`skipped_duplicates`; set
    :attr:`warn_duplicates` False to skip the warning when the caller tells
    its user itself, as ``governor report``'s table does). A query reads the whole
    file, gzip-compressed or not, and yields the records sorted by time (read
    twice, so that memory holds no whole file); a compressed file is read
    only.

    Args:
        path: the file; missing parent folders are created on first write.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        # Lines the last query skipped for repeating an earlier call_id.
        self.skipped_duplicates = 0
        # Whether a query that skips such lines logs a warning saying so.
        self.warn_duplicates = True
        start_over_in_children(self)

    def _forget_parent(self) -> None:
        """In a forked child: a lock of its own (the parent's may have been
        held by one of its threads, appending, at the fork)."""
        self._lock = threading.Lock()

    def record(self, rec: SpendRecord) -> None:
        """Append one record."""
        self.record_many((rec,))

    def record_many(self, recs: Iterable[SpendRecord]) -> None:
        """Append several records with one write, all of them or none.

        A write that fails part way (a full disk) is cut back off the file
        before the error is raised, so retrying the batch appends no record
        twice and leaves no torn line. Every record ends with a newline, and
        a file whose last line has none (cut short, or saved by an editor
        without one) gets one first, so each record is a whole line. Several
        processes may append to one file: each append holds an exclusive
        lock on it (``flock``, on POSIX systems), so one process's cut never
        takes another's records.
        """
        text = "".join(
            json.dumps(rec.to_json_dict(), separators=(",", ":")) + "\n" for rec in recs
        )
        if not text:
            return
        if self.path.suffix.lower() == _GZ:
            raise ConfigError(
                f"{self.path} is gzip-compressed: the governor reads such a "
                "spend JSONL but cannot append to it; record to a .jsonl path"
            )
        with self._lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, _APPEND_FLAGS, 0o666)
            try:
                _hold_for_append(fd)
                start = os.lseek(fd, 0, os.SEEK_END)
                if start and is_sqlite_file(self.path):
                    raise ConfigError(
                        f"{self.path} is a SQLite database, not spend JSONL: "
                        "appending JSON lines would corrupt it; open it as a "
                        "SQLite spend store (governor.spend.open_store) or "
                        "record to another .jsonl path"
                    )
                data = text.encode("utf-8")
                if start and not _ends_line(self.path, start):
                    # A line cut short (a writer killed mid-write) stays its
                    # own bad line rather than swallowing this batch's first.
                    data = b"\n" + data
                try:
                    _write_all(fd, data)
                except BaseException:
                    os.ftruncate(fd, start)
                    raise
            finally:
                _let_go(fd)

    def query(
        self,
        since: datetime | None = None,
        until: datetime | None = None,
        filters: Filters | None = None,
    ) -> Iterator[SpendRecord]:
        """Yield matching records in time order; see :class:`SpendStore`.

        The file is read twice: first to check every line and note the time
        and place of each match, then to read the matches in time order, so
        that memory holds a few numbers per match rather than every record.
        A last line with no final newline that is not whole JSON yet is left
        out with a warning: its writer may still be appending it.

        Raises:
            SpendDataError: a line is not a valid record (the message names
                it), or the file changed other than by appending while read.
        """
        check_bounds(since, until)
        wanted = check_filters(filters)
        self.skipped_duplicates = 0
        if not self.path.exists():
            return iter(())
        with open_bytes(self.path) as fh:
            keys = self._matching(fh, since, until, wanted)
        return self._reading(keys)

    def _reading(self, keys: list[int]) -> Iterator[SpendRecord]:
        """The records ``keys`` name, in order, from the file opened again
        only once they are asked for (an iterator never used holds no file)."""
        if keys:
            yield from self._in_order(open_bytes(self.path), keys)

    def _matching(
        self,
        fh: _Source,
        since: datetime | None,
        until: datetime | None,
        wanted: Filters,
    ) -> list[int]:
        """The sorted keys of the matching first record of each ``call_id``.

        A key is the record's time in epoch microseconds shifted left by
        ``_OFFSET_BITS``, plus its line's byte offset: sorted, the records
        come in time order, those of one time in file order.
        """
        seen: set[str] = set()
        keys: list[int] = []
        skipped = 0
        for offset, number, raw in self._lines(fh):
            rec = self._parse(raw, number)
            if rec.call_id in seen:
                skipped += 1
                continue
            seen.add(rec.call_id)
            if in_range(rec, since, until) and matches(rec, wanted):
                keys.append((to_us(rec.ts) << _OFFSET_BITS) + offset)
        self.skipped_duplicates = skipped
        if skipped and self.warn_duplicates:
            logger.warning(
                "%s: skipped %d line(s) repeating the call_id of an earlier "
                "line; the first record of each call was kept",
                self.path,
                skipped,
            )
        keys.sort()
        return keys

    def _lines(self, fh: _Source) -> Iterator[tuple[int, int, bytes]]:
        """Yield ``(byte offset, line number, line)`` for each non-blank line.

        A last line with no final newline that is not whole JSON yet is a
        record still being written: it is left out with a warning.
        """
        number = 0
        offset = 0
        # Lines are decoded one at a time so that bad bytes name their line.
        try:
            for number, raw in enumerate(fh, start=1):
                start, offset = offset, offset + len(raw)
                if not raw.strip():
                    continue
                if not raw.endswith(b"\n") and _unfinished(raw, number):
                    logger.warning(
                        "%s: the last line (%d) is incomplete (being written?); "
                        "it was left out",
                        self.path,
                        number,
                    )
                    return
                yield start, number, raw
        except (EOFError, gzip.BadGzipFile, zlib.error) as exc:
            raise SpendDataError(
                f"{self.path}:{number + 1}: the gzip data is cut short or "
                f"corrupt ({exc}); compress the spend JSONL again"
            ) from exc

    def _parse(self, raw: bytes, number: int) -> SpendRecord:
        try:
            return SpendRecord.from_json_dict(_json_object(raw, number))
        except ValueError as exc:
            raise SpendDataError(f"{self.path}:{number}: {exc}") from exc

    def _in_order(self, fh: _Source, keys: list[int]) -> Iterator[SpendRecord]:
        """The records ``keys`` name, in key order; ``fh`` is closed after."""
        with fh:
            if isinstance(fh, gzip.GzipFile):
                yield from self._in_order_gzip(fh, keys)
                return
            for key in keys:
                fh.seek(key & _OFFSET_MASK)
                yield self._reread(fh.readline(), key)

    def _in_order_gzip(
        self, fh: gzip.GzipFile, keys: list[int]
    ) -> Iterator[SpendRecord]:
        """The records ``keys`` name, read again from the start of the stream
        (a compressed file cannot be read at an offset cheaply): the lines
        met before their turn are held, few in a file written in time order."""
        places = sorted(key & _OFFSET_MASK for key in keys)
        held: dict[int, bytes] = {}
        turn = found = 0
        fh.seek(0)
        for offset, _, raw in self._lines(fh):
            if found == len(places):
                break
            if offset != places[found]:
                continue
            found += 1
            held[offset] = raw
            while turn < len(keys) and keys[turn] & _OFFSET_MASK in held:
                raw = held.pop(keys[turn] & _OFFSET_MASK)
                yield self._reread(raw, keys[turn])
                turn += 1
        if turn < len(keys):
            raise self._changed(keys[turn])

    def _reread(self, raw: bytes, key: int) -> SpendRecord:
        """The record of a line read again, checked to be the one first read."""
        offset = key & _OFFSET_MASK
        try:
            rec = SpendRecord.from_json_dict(_json_object(raw, 2 if offset else 1))
        except ValueError:
            raise self._changed(key) from None
        if to_us(rec.ts) != key >> _OFFSET_BITS:
            raise self._changed(key)
        return rec

    def _changed(self, key: int) -> SpendDataError:
        return SpendDataError(
            f"{self.path} changed while it was read (the line at byte "
            f"{key & _OFFSET_MASK} is no longer the record first read there); "
            "a spend JSONL may only be appended to: run the command again"
        )

    def close(self) -> None:
        """Nothing to release; present for symmetry with the other stores."""

    def __enter__(self) -> JsonlSpendStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _json_object(raw: bytes, number: int) -> dict[str, Any]:
    """Decode one trace line; SpendDataError says what is wrong with it."""
    try:
        # A byte-order mark that an editor put at the start is not data.
        text = raw.decode("utf-8-sig" if number == 1 else "utf-8")
    except UnicodeDecodeError as exc:
        raise SpendDataError(
            f"not UTF-8 text (byte 0x{raw[exc.start]:02x} at position "
            f"{exc.start + 1}); a spend trace is UTF-8 JSON: {_FIX}"
        ) from exc
    text = text.rstrip("\r\n")
    try:
        # The line's own end is not part of it (inside a cut-off string it
        # would read as a control character, not as the string's end).
        data = load_json(text)
    except json.JSONDecodeError as exc:
        if "\r" in text:
            raise SpendDataError(
                "not JSON, and carriage returns inside the line: records "
                "separated by CR alone (old Mac line endings) read as one "
                "line; end each record with a newline, e.g. "
                "tr '\\r' '\\n' < FILE > FIXED.jsonl"
            ) from exc
        # "Unterminated string starting at" already ends with its "at".
        raise SpendDataError(
            f"not JSON ({exc.msg.removesuffix(' at')} at column {exc.colno}); "
            "each line must be "
            f"one spend record as a JSON object: {_FIX}"
        ) from exc
    if not isinstance(data, dict):
        kind = _JSON_KINDS.get(type(data), type(data).__name__)
        raise SpendDataError(
            f"a JSON {kind}, not a spend record; each line must be one "
            f"spend record as a JSON object: {_FIX}"
        )
    return data


def _ends_line(path: Path, size: int) -> bool:
    """Whether the file's last byte (at ``size - 1``) is a newline; True when
    it cannot be read (append-only permissions), as earlier releases assumed."""
    try:
        with open(path, "rb") as handle:
            handle.seek(size - 1)
            return handle.read(1) in (b"\n", b"")
    except OSError:
        return True


def _unfinished(raw: bytes, number: int) -> bool:
    """Whether a last line with no final newline is a record its writer is
    still appending: the start of one JSON object, cut short.

    A line that could never become one (carriage returns between records,
    bytes that are not UTF-8 before its end, anything but an object) is not
    waiting for more: it is read, and named as the bad line it is.
    """
    try:
        text = raw.decode("utf-8-sig" if number == 1 else "utf-8")
    except UnicodeDecodeError as exc:
        return exc.end == len(raw) and exc.reason == "unexpected end of data"
    if not text.lstrip().startswith("{"):
        return False
    try:
        json.loads(text)
    except json.JSONDecodeError:
        return "\r" not in text.rstrip("\r")
    except ValueError:  # whole JSON, but a number too long: _parse says so
        return False
    return False


def _write_all(fd: int, data: bytes) -> None:
    """Write every byte of ``data`` to ``fd`` (``os.write`` may write fewer)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _hold_for_append(fd: int) -> None:
    """Lock the file open on ``fd`` against other processes' appends until
    :func:`_let_go`: its end, the newline check and a failed write's cut
    are then this append's alone. Windows has no ``flock``: there an append
    is locked within this process only."""
    if sys.platform != "win32":
        import fcntl

        fcntl.flock(fd, fcntl.LOCK_EX)


def _let_go(fd: int) -> None:
    """Unlock and close ``fd``. Unlocked first: a child forked during the
    append holds a copy of ``fd``, which would keep the lock (and every
    other process's appends waiting) for as long as the child lives."""
    try:
        if sys.platform != "win32":
            import fcntl

            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
