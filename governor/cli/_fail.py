"""How the commands report an error: one line on stderr, or, when a
command is asked for JSON (``--json``, ``--format json``), one JSON document
on stdout, so that a program reading its JSON output gets JSON whatever
happens. With ``GOVERNOR_DEBUG`` set, the traceback of the error follows on
stderr.

The document is ``{"error": {"code": ..., "message": ...}}``: ``code`` is a
:class:`~governor.GovernorError`'s code (``config_error`` for a bad option or
input file, ``store_unavailable`` for a store that does not answer), and
``message`` the same text the line on stderr would give.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import traceback
from collections.abc import Mapping
from typing import Any

__all__ = ["ENV_DEBUG", "JSON_ERRORS", "debugging", "fail", "too_deep", "wants_json"]

JSON_ERRORS = frozenset(
    {"pricing", "budget", "replay", "compare", "report", "eval", "demo", "policy"}
)
"""The commands whose errors are JSON documents when JSON is asked for: every
command that takes ``--json`` or ``--format json``."""

ENV_DEBUG = "GOVERNOR_DEBUG"
"""Set (to 1, true, yes or on) to show Python tracebacks as well as one-line
errors; 0, false, no, off or empty leave them off."""

_OFF = frozenset({"", "0", "false", "no", "off"})

BAD_INPUT = "config_error"
"""The ``code`` of an error that is not a GovernorError: a bad option or file."""


def wants_json(args: argparse.Namespace) -> bool:
    """Whether an error is to be a JSON document: one of :data:`JSON_ERRORS`
    asked for JSON (``--json``, ``--format json``)."""
    if getattr(args, "command", None) not in JSON_ERRORS:
        return False
    return bool(getattr(args, "json", False)) or getattr(args, "fmt", None) == "json"


def debugging() -> bool:
    """Whether ``GOVERNOR_DEBUG`` asks for tracebacks: set, and not to 0,
    false, no, off or nothing (in any case, spaces around ignored)."""
    return os.environ.get(ENV_DEBUG, "").strip().lower() not in _OFF


def fail(
    args: argparse.Namespace,
    command: str,
    error: BaseException | str,
    status: int,
    *,
    message: str | None = None,
    code: str | None = None,
    document: Mapping[str, Any] | None = None,
) -> int:
    """Report ``error`` as the command was asked to, and return ``status``.

    Args:
        args: the parsed command line; see :func:`wants_json` for when the
            report is a JSON document on stdout rather than a line on stderr.
        command: the command as typed, ``governor pricing``, which starts
            the line on stderr.
        error: the exception (a GovernorError gives its code and fields; any
            exception's traceback goes to stderr first when
            :func:`debugging`) or the message itself.
        status: the exit status, returned.
        message: the text to give in place of ``str(error)``.
        code: the code to give in place of the error's own.
        document: other top-level members of the JSON document
            (``{"requested": MODEL}``).
    """
    from governor._errors import GovernorError

    if isinstance(error, BaseException) and debugging():
        traceback.print_exception(error, file=sys.stderr)
    fields: dict[str, Any] = {"code": BAD_INPUT}
    if isinstance(error, GovernorError):
        fields = error.to_dict()
    fields["message"] = message if message is not None else str(error)
    if code is not None:
        fields["code"] = code
    if wants_json(args):
        print(json.dumps({**(document or {}), "error": fields}))
    else:
        print(f"{command}: {fields['message']}", file=sys.stderr)
    return status


def too_deep(name: object, what: str) -> str:
    """Say that the JSON in ``name`` nests deeper than it can be read.

    Python's JSON reader stops (``RecursionError``) at about as many
    arrays or objects inside one another as the interpreter's recursion
    limit: no real input comes near it.

    Args:
        name: the file (or folder) read.
        what: what the file should hold, for the advice (``a policy``).
    """
    return (
        f"{name}: nests too deeply to be read: JSON arrays or objects inside "
        f"one another about {sys.getrecursionlimit()} levels deep or more; "
        f"{what} nests a few levels, so check that this is the file you meant"
    )
