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

    An empty file, a JSONL file and anything that is not a regular file
    (``/dev/stdout``, a pipe) are taken as they are; so is a file that cannot
    be read (its writer reports that).
    """
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
    if b"\x00" in head:
        return "binary data, not text"
    # A multi-byte character cut at the end of the sample is not an error.
    decoder = codecs.getincrementaldecoder("utf-8")()
    try:
        text = decoder.decode(head, final=len(head) < _HEAD_BYTES)
    except UnicodeDecodeError:
        return "not UTF-8 text"
    first = next((line.strip() for line in text.splitlines() if line.strip()), None)
    if first is not None and not first.startswith("{"):
        return "its first line does not start with '{'"
    return None
