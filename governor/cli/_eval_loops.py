"""``governor eval loops``: replay agent trajectories through the loop guard."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from governor.cli._fail import fail, too_deep
from governor.cli._text import given

__all__ = ["register_eval"]

_COMMAND = "governor eval loops"

_HEADLINE = (
    "false_stop_rate",
    "detection_rate",
    "median_delay_repeats",
    "max_delay_repeats",
    "failed_runs_flagged",
    "failed_spend_after_flag_usd",
)
_USAGE = ("calls", "calls_without_cost", "calls_without_tokens")
# Progress lines come at least this many runs apart.
_PROGRESS_RUNS = 100


def register_eval(sub: Any, name: str, help_text: str) -> None:
    """Add ``eval loops`` to the command line."""
    parser: argparse.ArgumentParser = sub.add_parser(
        name,
        help=help_text,
        description=(
            "Replay each run's calls through the loop guard at the default "
            "settings and report false stops on resolved runs, detection of "
            "spliced loops (--inject) and flags among failed runs."
        ),
    )
    parser.add_argument(
        "path",
        metavar="PATH",
        type=given("a file or folder of runs", required=True),
        help=(
            "a file of runs, gzipped or not: trajectory-format JSONL (docs/loops.md), "
            "a mini-swe-agent .traj.json file (one run), or JSONL of mini-swe-agent "
            "runs such as the compacted SWE-bench data set "
            "(trajectories.jsonl.gz); or a folder, read with its sub-folders, of "
            "such files (*.traj.json, *.json, *.jsonl; .gz too; a *.traj file "
            "is read as JSON in these formats: SWE-agent's own .traj format is "
            "not read)"
        ),
    )
    parser.add_argument("--json", action="store_true", help="print one JSON doc")
    parser.add_argument(
        "--inject", action="store_true", help="splice seeded loops into copies"
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="injection seed, any whole number (0)"
    )
    parser.add_argument(
        "--sweep", action="store_true", help="also vary one setting at a time"
    )
    parser.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    from governor._errors import ConfigError
    from governor.loops._eval import evaluate, sweep
    from governor.loops._files import read_trajectories
    from governor.policies._loops import Loops

    try:
        runs = list(read_trajectories(args.path, on_skip=_note_skipped))
    except OSError as exc:
        message = f"cannot read {args.path}: {exc}"
        return fail(args, _COMMAND, exc, 2, message=message)
    except RecursionError as exc:
        return fail(args, _COMMAND, exc, 2, message=_too_deep(args.path))
    except ConfigError as exc:
        return fail(args, _COMMAND, exc, 2)
    if not runs:
        message = (
            f"{args.path} holds no runs; give a file or a folder with at least "
            "one run (trajectory-format JSONL, mini-swe-agent .traj.json files "
            "or the mini-swe-agent data set)"
        )
        return fail(args, _COMMAND, message, 2)
    loops = Loops()
    progress = _progress("replayed")
    report = evaluate(
        runs, loops, injecting=args.inject, seed=args.seed, progress=progress
    )
    _note_unlabelled(report["all"])
    _note_usage(report["all"])
    doc: dict[str, Any] = {key: report["all"][key] for key in _HEADLINE}
    doc.update(
        {
            "runs": len(runs),
            "unlabelled_runs": report["all"]["unlabelled_runs"],
            **{key: report["all"][key] for key in _USAGE},
            "seed": args.seed,
            "inject": args.inject,
            "settings": loops.model_dump(mode="json"),
            "defaults": report,
        }
    )
    if args.sweep:
        doc["sweep"] = sweep(
            runs,
            loops,
            injecting=args.inject,
            seed=args.seed,
            progress=_progress("sweep: replayed"),
        )
    if args.json:
        json.dump(doc, sys.stdout, indent=2, default=str)
        sys.stdout.write("\n")
    else:
        sys.stdout.write(_table(doc))
    return 0


def _too_deep(path: str) -> str:
    """A run that nests too deeply; in a folder, the file is not known."""
    if Path(path).is_dir():
        return too_deep(f"a run file in {path}", "a run")
    return too_deep(path, "a run")


def _progress(label: str) -> Callable[[int, int], None]:
    """Print ``label done/total runs`` on stderr about 20 times, 100 runs apart
    at least; nothing for fewer than 100 runs."""

    def show(done: int, total: int) -> None:
        step = max(_PROGRESS_RUNS, total // 20)
        if total >= _PROGRESS_RUNS and (done % step == 0 or done == total):
            print(f"governor eval loops: {label} {done}/{total} runs", file=sys.stderr)

    return show


def _note_unlabelled(summary: dict[str, Any]) -> None:
    """Say on stderr how many runs had no outcome label."""
    unlabelled = summary["unlabelled_runs"]
    if unlabelled:
        print(
            f"governor eval loops: {unlabelled} of {summary['runs']} runs have no "
            "outcome label ('resolved' or 'outcome' missing, null or 'unknown'): "
            "they count as neither resolved nor failed runs; label them to "
            "measure false stops",
            file=sys.stderr,
        )


def _note_skipped(path: Path, reason: str) -> None:
    print(f"governor eval loops: skipped {path}: {reason}", file=sys.stderr)


def _note_usage(summary: dict[str, Any]) -> None:
    """Say on stderr how many calls have no cost or no token counts."""
    calls, no_cost = summary["calls"], summary["calls_without_cost"]
    where = (
        "'cost_usd', or in mini-swe-agent files extra.cost or extra.response.usage.cost"
    )
    if no_cost and summary["failed_spend_usd"] is None:
        print(
            f"governor eval loops: {no_cost} of {calls} calls have no cost "
            f"({where}): the spend figures are null, not zero; record each "
            "call's cost to measure them",
            file=sys.stderr,
        )
    elif no_cost:
        print(
            f"governor eval loops: {no_cost} of {calls} calls have no cost "
            f"({where}): the spend figures sum the other {calls - no_cost} "
            "calls only, so they are lower bounds",
            file=sys.stderr,
        )
    no_tokens = summary["calls_without_tokens"]
    if no_tokens:
        print(
            f"governor eval loops: {no_tokens} of {calls} calls have no token "
            "counts ('prompt_tokens' / 'completion_tokens', or in mini-swe-agent "
            "files extra.response.usage); no figure here uses them",
            file=sys.stderr,
        )


def _cells(report: dict[str, Any]) -> list[str]:
    detection = report["detection_rate"]
    return [
        f"{report['false_stops']}/{report['resolved_runs']} "
        f"({_pct(report['false_stop_rate'])})",
        "-" if detection is None else f"{_pct(detection)}",
        _num(report["median_delay_repeats"]),
        _num(report["max_delay_repeats"]),
        f"{report['failed_runs_flagged']}/{report['failed_runs']}",
        _dollars(report["failed_spend_after_flag_usd"]),
    ]


def _dollars(amount: str | None) -> str:
    return "-" if amount is None else f"${float(amount):.2f}"


def _pct(rate: float | None) -> str:
    return "-" if rate is None else f"{100 * rate:.1f}%"


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:g}"


def _table(doc: dict[str, Any]) -> str:
    head = (
        "| setting | split | false stops | detection | median delay | max delay "
        "| failed runs flagged | failed spend after flag |\n"
        "|---|---|---|---|---|---|---|---|\n"
    )
    lines = []
    for split in ("all", "train", "test"):
        cells = _cells(doc["defaults"][split])
        lines.append("| defaults | " + split + " | " + " | ".join(cells) + " |")
    for row in doc.get("sweep", []):
        for split in ("train", "test"):
            cells = _cells(row[split])
            label = f"{row['setting']}={row['value']}"
            lines.append(f"| {label} | {split} | " + " | ".join(cells) + " |")
    return head + "\n".join(lines) + "\n" + _false_stops(doc["defaults"]["all"])


# How many falsely stopped runs the text output names; the JSON names all.
_NAMED_STOPS = 10


def _false_stops(report: dict[str, Any]) -> str:
    """The resolved runs the defaults stop, to look at: id, rule and call."""
    runs = report["false_stop_runs"]
    if not runs:
        return ""
    named = ", ".join(
        f"{r['id']} ({r['rule']}, call {r['call'] + 1})" for r in runs[:_NAMED_STOPS]
    )
    more = len(runs) - _NAMED_STOPS
    tail = f" and {more} more (--json lists every one)" if more > 0 else ""
    return f"\nResolved runs the defaults stop: {named}{tail}.\n"
