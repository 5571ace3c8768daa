"""``governor eval``: evaluate one policy part on recorded data."""

from __future__ import annotations

import argparse
import importlib
from typing import Any

# eval target -> (module defining register_eval(subparsers, name, help), help)
_TARGETS: dict[str, tuple[str, str]] = {
    "loops": ("_eval_loops", "replay agent trajectories through the loop guard"),
    "cascade": ("_eval_cascade", "replay per-model outcomes through a cascade"),
    "cache": ("_eval_cache", "measure cache hits and wrong hits on labelled pairs"),
    "anomalies": ("_eval_anomalies", "replay request traces through spend alerts"),
}


# Every target's --help ends with it, and so does `governor eval --help`.
EXIT_STATUS = (
    "Exit status: 0 with the report; 2 when the input cannot be used "
    "(missing, unreadable, malformed or empty) or an option is wrong."
)


def register(sub: Any, name: str, help_text: str) -> None:
    """Add ``eval`` and its targets to the command line."""
    parser: argparse.ArgumentParser = sub.add_parser(
        name, help=help_text, description=help_text, epilog=EXIT_STATUS
    )
    targets = parser.add_subparsers(dest="target", metavar="TARGET", required=True)
    for target, (module_name, target_help) in _TARGETS.items():
        try:
            module = importlib.import_module(f"governor.cli.{module_name}")
        except ModuleNotFoundError:
            continue
        module.register_eval(targets, target, target_help)
    for target_parser in targets.choices.values():
        target_parser.epilog = EXIT_STATUS
