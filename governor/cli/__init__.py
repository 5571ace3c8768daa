"""The ``governor`` command line.

Each command lives in its own private module ``governor.cli._<name>`` that
defines ``register(subparsers)``; modules load only when their command runs,
so ``governor --help`` stays fast.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import sys
from collections.abc import Sequence
from typing import Any

__all__ = ["main"]

DISTRIBUTION = "llm-governor"
"""The package name whose version ``governor --version`` prints."""

ENV_DEBUG = "GOVERNOR_DEBUG"
"""Set to show Python tracebacks instead of one-line errors."""

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


def _build_parser(argv: Sequence[str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="governor", description="Govern what AI agents spend."
    )
    parser.add_argument(
        "--version", action=_Version, help="print the version of llm-governor"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    wanted = next((a for a in argv if not a.startswith("-")), None)
    for name, (module_name, help_text) in _COMMANDS.items():
        if name != wanted:
            sub.add_parser(name, help=help_text)
            continue
        module = importlib.import_module(f"governor.cli.{module_name}")
        module.register(sub, name, help_text)
    return parser


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
    parser = _build_parser(args_list)
    args = parser.parse_args(args_list)
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
        if os.environ.get(ENV_DEBUG):
            raise
        print(
            f"{_command_name(args)}: {_describe(exc)} "
            f"(set {ENV_DEBUG}=1 for the traceback)",
            file=sys.stderr,
        )
        return 1
    return code


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
