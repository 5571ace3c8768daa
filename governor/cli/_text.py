"""Helpers shared by the command lines: table text, arguments, output files."""

from __future__ import annotations

import argparse
import contextlib
import os
import secrets
import stat
import unicodedata
from collections.abc import Callable, Iterable
from pathlib import Path

__all__ = [
    "check_output",
    "count",
    "given",
    "positive_count",
    "printable",
    "refuse_overwriting",
    "same_file",
    "write_atomically",
]


def printable(text: str) -> str:
    """Escape what a terminal would not show as one plain character.

    Scopes carry callers' task, team and user names: a tab, a newline or an
    escape sequence in one would break the table or drive the terminal. Such
    characters are written as Python's ``repr`` writes them (``\\t``,
    ``\\n``, ``\\x1b``, ``\\u202e``); JSON output keeps the raw names.
    """
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in text)


def count(text: str) -> int:
    """An argparse type: a whole number, 0 or more (``--skip``)."""
    return _whole_number(text, least=0, wanted="a whole number, 0 or more")


def positive_count(text: str) -> int:
    """An argparse type: a whole number, 1 or more (``--top``, ``--limit``)."""
    return _whole_number(text, least=1, wanted="a positive whole number (1 or more)")


def _whole_number(text: str, *, least: int, wanted: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = least - 1
    if value < least:
        raise argparse.ArgumentTypeError(f"must be {wanted}, got {text!r}")
    return value


def width(text: str) -> int:
    """Columns ``text`` takes in a terminal: wide (CJK) characters take two,
    combining marks none."""
    return sum(_char_width(ch) for ch in text)


def _char_width(ch: str) -> int:
    if unicodedata.combining(ch):
        return 0
    return 2 if unicodedata.east_asian_width(ch) in ("W", "F") else 1


def ljust(text: str, columns: int) -> str:
    """``text`` padded on the right to ``columns`` terminal columns."""
    return text + " " * max(0, columns - width(text))


def rjust(text: str, columns: int) -> str:
    """``text`` padded on the left to ``columns`` terminal columns."""
    return " " * max(0, columns - width(text)) + text


def given(what: str, *, required: bool = False) -> Callable[[str], str]:
    """An argparse type: any text but an empty one (``--redis-url "$URL"``
    with ``URL`` unset), which is refused rather than read as "not given".

    Args:
        what: what to give instead, for the message (``a redis:// URL``).
        required: an argument with no default (the message then does not
            offer to leave it out).
    """
    leave_out = "" if required else ", or leave the option out for its default"

    def check(text: str) -> str:
        if not text.strip():
            raise argparse.ArgumentTypeError(
                f"is empty (an unset shell variable?); give {what}{leave_out}"
            )
        return text

    return check


def given_path(what: str, *, required: bool = False) -> Callable[[str], Path]:
    """Like :func:`given`, for an option or argument that names a path."""
    check = given(what, required=required)

    def path(text: str) -> Path:
        return Path(check(text))

    return path


def same_file(first: Path, second: Path) -> bool:
    """Whether two paths name one file: the same file when both exist (hard
    and symbolic links included), else the same resolved path."""
    try:
        return os.path.samefile(first, second)
    except OSError:
        pass  # one of them does not exist (yet)
    try:
        return first.resolve() == second.resolve()
    except (OSError, RuntimeError):  # a symlink loop
        return False


def refuse_overwriting(
    outputs: Iterable[tuple[str, str | None]], inputs: Iterable[tuple[str, str | None]]
) -> None:
    """Refuse an output path that names an input the command reads, or another
    output: writing it would destroy the data before (or after) it is read.

    Args:
        outputs: (option, path) of each file the command writes; None paths
            (options not given) are skipped.
        inputs: (what, path) of each file the command reads, ``what`` naming
            it in the message (``--db``, ``DATA``).

    Raises:
        ConfigError: naming both and saying what to do.
    """
    from governor._errors import ConfigError

    written = [(option, path) for option, path in outputs if path]
    read = [(what, path) for what, path in inputs if path]
    for index, (option, path) in enumerate(written):
        for what, source in read + written[:index]:
            if same_file(Path(path), Path(source)):
                raise ConfigError(
                    f"{option} {path} is the same file as {what} {source}; "
                    f"writing it would destroy {what}: give {option} another "
                    "file name"
                )


def check_output(option: str, path_text: str | None) -> Path | None:
    """Check, before any work, that an output file can be written.

    Raises:
        ConfigError: the path is a folder, its folder does not exist, or it
            cannot be written; the message names the option and what to do.
    """
    from governor._errors import ConfigError

    if path_text is None:
        return None
    path = Path(path_text)
    suffix = option.removeprefix("--")
    if path.is_dir():
        raise ConfigError(
            f"{option} {path} is a folder; give a file name such as "
            f"{path / ('report.' + suffix)}"
        )
    if path.exists():
        if os.access(path, os.W_OK) and (
            not path.is_file() or os.access(path.parent, os.W_OK | os.X_OK)
        ):
            return path
    else:
        folder = path.parent
        if not folder.is_dir():
            raise ConfigError(
                f"{option} {path}: no such folder {folder}; create it or give a "
                "path in a folder that exists"
            )
        if os.access(folder, os.W_OK | os.X_OK):
            return path
    raise ConfigError(
        f"{option} {path}: cannot write there (permission denied); give a "
        "path in a folder you can write to"
    )


def write_atomically(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` whole or not at all.

    The bytes go to a new file beside ``path`` that then replaces it, so
    that a failure (a full disk, an interruption) never leaves a partly
    written file in place of an earlier one. A symbolic link is written
    through; a path that is not a regular file (``/dev/stdout``, a pipe) is
    written directly. A replaced file keeps its permission bits.

    Raises:
        OSError: the file could not be written; ``path`` is left as it was.
    """
    target = Path(os.path.realpath(path))
    try:
        mode: int | None = stat.S_IMODE(target.stat().st_mode)
        regular = target.is_file()
    except FileNotFoundError:
        mode, regular = None, True
    if not regular:
        with target.open("wb") as handle:
            handle.write(data)
        return
    temporary = target.with_name(f".{target.name}.{secrets.token_hex(4)}.tmp")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        if mode is not None:
            os.chmod(temporary, mode)
        os.replace(temporary, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
