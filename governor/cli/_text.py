"""Text helpers shared by the command-line tables."""

from __future__ import annotations

__all__ = ["printable"]


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
