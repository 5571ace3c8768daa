"""Helpers shared by the command lines: table text and number arguments."""

from __future__ import annotations

import argparse
import unicodedata

__all__ = ["count", "positive_count", "printable"]


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
