"""What an existing file holds, for outputs that append to it."""

from __future__ import annotations

import codecs
from pathlib import Path

__all__ = ["SQLITE_HEADER", "not_json_lines"]

SQLITE_HEADER = b"SQLite format 3\x00"

# Enough of a file's start to tell JSON lines from anything else.
_HEAD_BYTES = 4096


def not_json_lines(path: Path) -> str | None:
    """What an existing file is when it is not JSON lines, or None.

    An empty file, a JSONL file and anything that is not a regular file are
    taken as they are; so is a path given as a link (``/dev/stdout``, which
    may lead to a log file) or under ``/dev`` or ``/proc``, and a file that
    cannot be read (its writer reports that). A file is JSON lines when one
    of the lines at its start opens a JSON object: a byte-order mark, a
    first line cut short (a trimmed file) or zero bytes a crash left are no
    reason to refuse it.
    """
    if path.is_symlink() or path.parts[1:2] in (("dev",), ("proc",)):
        return None
    if not path.is_file():
        return None
    try:
        with path.open("rb") as handle:
            head = handle.read(_HEAD_BYTES)
    except OSError:
        return None
    if head.startswith(SQLITE_HEADER):
        return "a SQLite database"
    if head.startswith(b"\x1f\x8b"):
        return "gzip-compressed data"
    # A multi-byte character cut at the end of the sample is not an error.
    decoder = codecs.getincrementaldecoder("utf-8-sig")()
    try:
        text = decoder.decode(head, final=len(head) < _HEAD_BYTES)
    except UnicodeDecodeError:
        return "binary data, not text" if b"\x00" in head else "not UTF-8 text"
    lines = [line.strip("\x00 \t\r") for line in text.splitlines()]
    lines = [line for line in lines if line]
    if not lines or any(line.startswith("{") for line in lines):
        return None
    if "\x00" in text:
        return "binary data, not text"
    return "no line at its start opens a JSON object"
