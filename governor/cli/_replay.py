"""``governor replay``: recorded traffic through a policy."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import sys
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from governor._errors import decimal_text
from governor.cli._fail import BAD_INPUT, fail, too_deep
from governor.cli._policy import POLICY_HELP, load_policy, unpriced_advice
from governor.cli._spend_source import (
    check_prefix_shown,
    redis_down,
    shown_target,
    unreachable,
)
from governor.cli._text import given, ljust, printable, width

__all__ = [
    "SourceError",
    "add_source_arguments",
    "add_verbose_argument",
    "check_swaps",
    "held_budget_warnings",
    "load_records",
    "register",
]

_COMMAND = "governor replay"

_MODELS_SHOWN = 10
"""How many recorded models an unmatched ``--model OLD=NEW`` error lists."""

_ID_COLUMNS_MOST = 48
"""Widest task id column; a longer id keeps its start and end around an ellipsis."""


def register(sub: Any, name: str, help_text: str) -> None:
    """Add ``replay`` to the command line."""
    parser: argparse.ArgumentParser = sub.add_parser(
        name,
        help=help_text,
        description=(
            "Replay the calls in a spend store (SQLite, spend JSONL or Redis) "
            "through a policy: each call is reserved and settled with its "
            "recorded tokens under the policy's prices and budgets."
        ),
    )
    add_source_arguments(parser)
    parser.add_argument(
        "--policy",
        default="default",
        type=given("a policy"),
        help=POLICY_HELP,
    )
    parser.add_argument(
        "--model",
        action="append",
        default=[],
        metavar="OLD=NEW",
        help="replay calls to OLD as calls to NEW (repeatable, one NEW per OLD)",
    )
    parser.add_argument("--json", action="store_true", help="print JSON")
    add_verbose_argument(parser)
    parser.set_defaults(handler=_run)


def add_verbose_argument(parser: argparse.ArgumentParser) -> None:
    """``-v``/``--verbose``: print each budget warning the replay logs."""
    parser.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="print each budget warn_at warning the replay logs (by default "
        "one line on stderr counts them)",
    )


_ENGINE_LOGGER = "governor._engine"
"""The logger of the governor's budget warn_at warnings."""


class _BudgetWarnings(logging.Filter):
    """Counts the budget warn_at warnings, held back unless ``show``."""

    def __init__(self, show: bool) -> None:
        super().__init__()
        self.show = show
        self.count = 0
        self.lines: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        """Let every other record through; count a budget warning."""
        if record.levelno != logging.WARNING or not str(record.msg).startswith(
            "budget %s has used "
        ):
            return True
        self.count += 1
        if isinstance(record.args, tuple) and record.args:
            self.lines.add(str(record.args[0]))
        return self.show


@contextlib.contextmanager
def held_budget_warnings(command: str, *, verbose: bool) -> Iterator[None]:
    """Replay without one warning per budget line and threshold on stderr.

    A replay crosses each budget's ``warn_at`` fractions on every line and
    window of the recorded traffic: a long record can log hundreds. They are
    counted and said in one line on stderr when the block ends, or printed
    each as logged with ``verbose``. Other log records pass as they are.
    """
    held = _BudgetWarnings(show=verbose)
    logger = logging.getLogger(_ENGINE_LOGGER)
    logger.addFilter(held)
    try:
        yield
    finally:
        logger.removeFilter(held)
    if held.count and not verbose:
        warnings = _count(held.count, "budget warning")
        lines = _count(len(held.lines), "budget line")
        print(
            f"{command}: {warnings} (a line past a warn_at fraction) on "
            f"{lines} held back; pass --verbose to print each",
            file=sys.stderr,
        )


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}" + ("" if number == 1 else "s")


def add_source_arguments(parser: argparse.ArgumentParser) -> None:
    """The options that say which recorded traffic to read."""
    parser.add_argument(
        "--db",
        default=None,
        type=given("a spend store's path or URL"),
        help="spend store to read (default: GOVERNOR_SPEND_DB or "
        ".governor/spend.sqlite3); a .jsonl or .ndjson path (.gz too) reads a "
        "spend JSONL file",
    )
    parser.add_argument(
        "--prefix",
        default=None,
        metavar="PREFIX",
        help="key prefix of a redis:// store: the RedisLedger prefix of the "
        "deployment that recorded it (default: governor:)",
    )
    parser.add_argument("--task", action="append", default=[], help="only these tasks")


class SourceError(Exception):
    """The recorded traffic cannot be read; the message says what to do.

    ``status`` is the exit status: 2 for a bad option or a missing store,
    1 for a store that does not answer or cannot be read, as ``governor
    report`` exits. ``code`` is the code of its ``--json`` error document.
    """

    def __init__(self, message: str, status: int, code: str = BAD_INPUT) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


def load_records(args: argparse.Namespace) -> list[Any]:
    """Read the records the arguments name.

    Raises:
        SourceError: the store is missing, or does not answer, or no recorded
            call belongs to a ``--task``.
    """
    from pathlib import Path

    from governor._errors import ConfigError
    from governor.spend import default_spend_target
    from governor.spend._open import is_redis_target

    target = args.db or default_spend_target()
    try:
        check_prefix_shown(target, args.prefix)
    except ConfigError as exc:
        raise SourceError(f"--prefix: {exc}", 2) from exc
    if not is_redis_target(target) and not Path(target).exists():
        raise SourceError(
            f"no spend store at {shown_target(target)}; run `governor demo` or "
            "point --db at a store or spend JSONL file",
            2,
        )
    records = _query(args, target)
    if args.task:
        wanted = set(args.task)
        missing = sorted(wanted - {r.task_id for r in records})
        if missing:
            prefix = "" if args.prefix is None else f" --prefix {args.prefix}"
            shown = shown_target(target)
            raise SourceError(
                f"no recorded call of task(s) {', '.join(missing)} in {shown}; "
                f"`governor report --db {shown}{prefix} --by task` "
                "lists them",
                2,
            )
        records = [r for r in records if r.task_id in wanted]
    return records


def _query(args: argparse.Namespace, target: str) -> list[Any]:
    """Every record of the store, read one at a time into the compact form a
    replay keeps (:class:`governor._replay.RecordedCall`). A Redis store
    with no record under its prefix gets the note ``governor report`` prints.

    Raises:
        SourceError: the store does not answer (a Redis that is down), or
            cannot be read (not a spend store, a malformed record).
    """
    from governor._errors import GovernorError
    from governor._replay import recorded_calls
    from governor.cli._report import note_if_nothing_stored
    from governor.spend import SpendDataError, open_store

    try:
        store = open_store(target, existing=True, prefix=args.prefix)
    except GovernorError as exc:
        raise SourceError(str(exc), 1, exc.code) from exc
    try:
        records = recorded_calls(store.query())
        if not records:
            note_if_nothing_stored(store)
        return records
    except RecursionError as exc:
        message = too_deep(shown_target(target), "a spend record")
        raise SourceError(message, 1, SpendDataError.code) from exc
    except GovernorError as exc:
        raise SourceError(str(exc), 1, exc.code) from exc
    except Exception as exc:
        if redis_down(target, exc):
            given = bool(args.db)
            message = unreachable(target, exc, option="--db", given=given)
            raise SourceError(message, 1, "store_unavailable") from exc
        raise
    finally:
        store.close()


def check_swaps(records: Sequence[Any], swaps: Mapping[str, str]) -> None:
    """Refuse ``--model OLD=NEW`` swaps whose OLD no recorded call uses.

    A misspelt OLD would otherwise change nothing and report the same cost
    under both names. The error lists the models the records do use, the
    most called first, so that the right name can be copied.

    Raises:
        ConfigError: a swap matches no recorded call.
    """
    from governor._errors import ConfigError

    counts = Counter(str(record.model) for record in records)
    missing = [f"{old}={new}" for old, new in swaps.items() if old not in counts]
    if not missing:
        return
    if not counts:
        used = "the records hold no calls"
    else:
        shown = ", ".join(
            f"{model!r} ({calls} call{'s' if calls != 1 else ''})"
            for model, calls in counts.most_common(_MODELS_SHOWN)
        )
        more = len(counts) - _MODELS_SHOWN
        used = f"the records use {shown}" + (f" and {more} more" if more > 0 else "")
    olds = [old for old in swaps if old not in counts]
    named = ", ".join(repr(old) for old in olds)
    plural = "s" if len(olds) > 1 else ""
    raise ConfigError(
        f"--model {' '.join(missing)}: no recorded call uses the model{plural} "
        f"{named}, so swapping it would change nothing; {used}"
    )


def _run(args: argparse.Namespace) -> int:
    from governor._errors import ConfigError, PriceUnknown
    from governor._replay import replay, swaps_from

    try:
        records = load_records(args)
    except SourceError as exc:
        return fail(args, _COMMAND, exc, exc.status, code=exc.code)
    try:
        swaps = swaps_from(args.model)
        check_swaps(records, swaps)
        policy = load_policy(args.policy)
        named = policy.name != "default" or args.policy == "default"
        label = policy.name if named else args.policy
        with held_budget_warnings(_COMMAND, verbose=args.verbose):
            run = replay(records, policy, label=label, model_map=swaps)
    except ConfigError as exc:
        return fail(args, _COMMAND, exc, 2)
    except PriceUnknown as exc:
        advice = unpriced_advice(exc.model, exc.reason)
        return fail(args, _COMMAND, exc, 2, message=advice)
    if args.json:
        tasks = [
            {
                "task_id": t.task_id,
                "calls": t.calls,
                "cost_usd": decimal_text(t.cost_usd),
                "stop_reason": t.stop_reason,
            }
            for t in run.tasks.values()
        ]
        document = {**run.as_dict(), "per_task": tasks}
        print(json.dumps(document, allow_nan=False))  # JSON has no NaN
        return 0
    _print_text(run)
    return 0


def _print_text(run: Any) -> None:
    """The summary line, then one line per task with its whole id."""
    summary = run.as_dict()
    print(
        f"{summary['tasks']} tasks replayed under {run.label!r}: "
        f"${summary['cost_usd']} (${summary['cost_per_task_usd']} per task), "
        f"{summary['stopped']} stopped by the policy{_cut_off(summary)}"
        f"{_quality(summary)}"
    )
    ids = {t.task_id: printable(t.task_id) for t in run.tasks.values()}
    columns = min(max((width(i) for i in ids.values()), default=0), _ID_COLUMNS_MOST)
    for task in run.tasks.values():
        stop = f"  stopped: {task.stop_reason}" if task.stop_reason else ""
        shown = ljust(_shorten(ids[task.task_id], columns), columns)
        calls = "call " if task.calls == 1 else "calls"
        cost = decimal_text(task.cost_usd)
        print(f"  {shown}  {task.calls:>4} {calls}  ${cost}{stop}")


def _cut_off(summary: Mapping[str, Any]) -> str:
    """How many stopped tasks had been recorded as good, if any."""
    good = summary["stopped_recorded_good"]
    if not good:
        return ""
    return f" ({good} of them recorded as good, counted at quality 0)"


def _quality(summary: Mapping[str, Any]) -> str:
    quality = summary["quality"]
    return "" if quality is None else f"; quality {quality:.3f}"


def _shorten(text: str, columns: int) -> str:
    """``text`` cut in the middle to ``columns``, so that its start and end show."""
    if width(text) <= columns:
        return text
    tail = (columns - 1) // 2
    return text[: columns - 1 - tail] + "\u2026" + (text[-tail:] if tail else "")
