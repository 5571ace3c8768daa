"""The ``governor`` command line.

Each command lives in its own private module ``governor.cli._<name>`` that
defines ``register(subparsers)``; modules load only when their command runs,
so ``governor --help`` stays fast.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import itertools
import json
import os
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

from governor.cli._fail import BAD_INPUT, ENV_DEBUG, JSON_ERRORS, debugging

__all__ = ["main"]

DISTRIBUTION = "llm-governor"
"""The package name whose version ``governor --version`` prints."""

# command name -> (module, one-line help)
_COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("_demo", "run the example agents offline under their policies"),
    "pricing": ("_pricing", "print the rate-card entry used for a model"),
    "budget": ("_budget", "show or reset budgets in the configured store"),
    "eval": ("_eval", "evaluate a policy part on recorded data"),
    "report": ("_report", "report recorded spend by team, feature, model, day"),
    "replay": ("_replay", "replay recorded traffic through a policy"),
    "policy": ("_policy", "list the ready-made policy packs or print a policy"),
    "compare": ("_compare", "compare two policies or models on recorded traffic"),
}


def _build_parser(
    argv: Sequence[str],
) -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    """The command line's parser, and each command's own by its name."""
    wanted = next((a for a in argv if not a.startswith("-")), None)
    parser_class = (
        _JsonUsageErrors
        if wanted in JSON_ERRORS and _json_asked(argv)
        else argparse.ArgumentParser
    )
    parser = parser_class(prog="governor", description="Govern what AI agents spend.")
    parser.add_argument(
        "--version", action=_Version, help="print the version of llm-governor"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module_name, help_text) in _COMMANDS.items():
        if name != wanted:
            sub.add_parser(name, help=help_text)
            continue
        module = importlib.import_module(f"governor.cli.{module_name}")
        module.register(sub, name, help_text)
    return parser, sub.choices


def _innermost(
    parser: argparse.ArgumentParser, argv: Sequence[str]
) -> argparse.ArgumentParser:
    """The parser of the deepest subcommand ``argv`` names under ``parser``
    (``governor eval loops``'s, not ``governor eval``'s)."""
    while True:
        choices: dict[str, argparse.ArgumentParser] = {}
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                choices = action.choices
        named = next((arg for arg in argv if arg in choices), None)
        if named is None:
            return parser
        parser = choices[named]


def _json_asked(argv: Sequence[str]) -> bool:
    """Whether the command line asks for JSON output (``--json``,
    ``--format json``), as far as can be told before it is parsed."""
    return (
        "--json" in argv
        or "--format=json" in argv
        or any(pair == ("--format", "json") for pair in itertools.pairwise(argv))
    )


class _JsonUsageErrors(argparse.ArgumentParser):
    """A parser (and, by argparse's default, its subcommands' parsers) whose
    usage errors are a JSON error document on stdout, exit 2, as the
    command's own errors are when it is asked for JSON (see ``_fail``)."""

    def error(self, message: str) -> NoReturn:
        """Print ``{"error": {"code": "config_error", ...}}`` and exit 2."""
        text = f"{message}; see {self.prog} --help"
        print(json.dumps({"error": {"code": BAD_INPUT, "message": text}}))
        self.exit(2)


class _Version(argparse.Action):
    """``governor --version``: the installed distribution's version, then exit.

    Read only when asked, so that other commands never look it up.
    """

    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, **kwargs)

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        from importlib.metadata import PackageNotFoundError, version

        try:
            found = version(DISTRIBUTION)
        except PackageNotFoundError:
            found = f"unknown ({DISTRIBUTION} is not installed)"
        print(f"{parser.prog} {found}")
        parser.exit()


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line and return its exit status.

    A reader that closes the pipe early (``governor report | head``) ends
    the command quietly: stdout goes to the null device so that nothing
    complains about the lost output when the interpreter exits.
    """
    try:
        try:
            return _main(argv)
        finally:
            sys.stdout.flush()
    except BrokenPipeError:
        _stdout_to_devnull()
        return 1
    except KeyboardInterrupt:  # before or after the command's own work
        _interrupted("governor")
        return 130


def _stdout_to_devnull() -> None:
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):
        return  # not a real file (a test's capture): nothing is flushed later
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, fd)
    finally:
        os.close(devnull)


def _main(argv: Sequence[str] | None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    parser, commands = _build_parser(args_list)
    args, unknown = parser.parse_known_args(args_list)
    if unknown:  # the command's own usage, not the top level's, says so
        command = commands.get(getattr(args, "command", None) or "", parser)
        command = _innermost(command, args_list)
        command.error(f"unrecognized arguments: {' '.join(unknown)}")
    handler = getattr(args, "handler", None)
    if handler is None:
        parser.print_help()
        return 2
    try:
        code: int = handler(args)
    except KeyboardInterrupt:
        _interrupted(_command_name(args))
        return 130
    except BrokenPipeError:
        raise  # main() ends quietly
    except Exception as exc:
        if debugging():
            raise
        return _failed(args, exc)
    return code


def _failed(args: argparse.Namespace, exc: Exception) -> int:
    """An error the command did not handle: exit 1, in JSON when asked.

    A GovernorError keeps its code; anything else is ``unexpected_error``.
    """
    from governor._errors import GovernorError
    from governor.cli._fail import fail

    message = f"{_describe(exc)} (set {ENV_DEBUG}=1 for the traceback)"
    code = None if isinstance(exc, GovernorError) else "unexpected_error"
    return fail(args, _command_name(args), exc, 1, message=message, code=code)


def _interrupted(command: str) -> None:
    """Say on stderr, in one line, that Ctrl-C ended the command (exit 130)."""
    with contextlib.suppress(OSError, ValueError):  # stderr closed: 130 says it
        print(f"{command}: interrupted", file=sys.stderr, flush=True)


def _command_name(args: argparse.Namespace) -> str:
    """The command as typed, with its subcommand: ``governor eval cascade``."""
    words = ["governor", args.command, getattr(args, "target", None)]
    return " ".join(word for word in words if word)


def _describe(exc: Exception) -> str:
    from governor._errors import GovernorError

    if isinstance(exc, GovernorError | OSError | ValueError):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"
