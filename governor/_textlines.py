"""Numbered lines of a UTF-8 data file, gunzipped when the bytes say so.

The evaluation commands read recorded data that people rename, compress and
re-save: a gzip file is recognised by its magic bytes whatever its name, a
byte-order mark that an editor put at the start is not data, and a line that
is not UTF-8 or a gzip stream cut short is reported with its file and line.
"""

from __future__ import annotations

import gzip
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from governor._errors import ConfigError

__all__ = ["is_gzip", "numbered_lines", "open_bytes"]

_GZIP_MAGIC = b"\x1f\x8b"


def is_gzip(path: Path) -> bool:
    """True when the file starts with the gzip magic bytes (False if unreadable)."""
    try:
        with path.open("rb") as raw:
            return raw.read(len(_GZIP_MAGIC)) == _GZIP_MAGIC
    except OSError:
        return False


def open_bytes(path: Path) -> gzip.GzipFile | BinaryIO:
    """The file for reading bytes, gunzipped on the fly when it is gzip."""
    if is_gzip(path):
        return gzip.open(path, "rb")
    return path.open("rb")


def numbered_lines(path: Path) -> Iterator[tuple[int, str]]:
    """Yield ``(line number, text)`` for each line of a UTF-8 file.

    The file is gunzipped when it starts with the gzip magic bytes, with or
    without a ``.gz`` name. A leading byte-order mark is dropped. Text that is
    not UTF-8 and a damaged gzip stream raise :class:`ConfigError` naming the
    file and line; ``OSError`` (a missing file, a folder) passes through.
    """
    number = 0
    with open_bytes(path) as raw:
        try:
            for number, data in enumerate(raw, start=1):
                yield number, _decode(path, number, data)
        except (EOFError, zlib.error, gzip.BadGzipFile) as exc:
            raise ConfigError(
                f"{path}:{number + 1}: the gzip data is cut short or damaged "
                f"({exc}); compress the whole file again or give it uncompressed"
            ) from exc


def _decode(path: Path, number: int, data: bytes) -> str:
    try:
        return data.decode("utf-8-sig" if number == 1 else "utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"{path}:{number}: not UTF-8 text (byte 0x{data[exc.start]:02x} at "
            f"column {exc.start + 1}); save the file as UTF-8"
        ) from exc
