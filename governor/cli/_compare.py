"""``governor compare``: cost per task under two policies or two models."""

from __future__ import annotations

import argparse
import json
from decimal import Decimal
from typing import Any

from governor.cli._fail import fail
from governor.cli._policy import POLICY_HELP, load_policy, unpriced_advice
from governor.cli._replay import (
    SourceError,
    add_source_arguments,
    add_verbose_argument,
    check_swaps,
    held_budget_warnings,
    load_records,
)
from governor.cli._text import given

__all__ = ["register"]

_COMMAND = "governor compare"


def register(sub: Any, name: str, help_text: str) -> None:
    """Add ``compare`` to the command line."""
    parser: argparse.ArgumentParser = sub.add_parser(
        name,
        help=help_text,
        description=(
            "Replay recorded traffic twice, under policy A and policy B (or "
            "with models swapped in B), and print cost per task, quality where "
            "the records carry it, and the difference: the figure to paste "
            "into a pull request that changes a model or a policy."
        ),
    )
    add_source_arguments(parser)
    parser.add_argument(
        "--a",
        default="default",
        type=given("a policy"),
        help=f"policy A, the baseline: {POLICY_HELP}",
    )
    parser.add_argument(
        "--b",
        default=None,
        type=given("a policy"),
        help="policy B; give --b, --model OLD=NEW or both (with --model "
        "alone, B is policy A with the models swapped)",
    )
    parser.add_argument(
        "--model",
        action="append",
        default=[],
        metavar="OLD=NEW",
        help="in run B, replay calls to OLD as calls to NEW (repeatable)",
    )
    parser.add_argument("--json", action="store_true", help="print JSON")
    add_verbose_argument(parser)
    parser.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    from governor._errors import ConfigError, PriceUnknown
    from governor._replay import replay, swaps_from

    try:
        records = load_records(args)
    except SourceError as exc:
        return fail(args, _COMMAND, exc, exc.status, code=exc.code)
    if args.b is None and not args.model:
        return fail(args, _COMMAND, "give --b POLICY or --model OLD=NEW", 2)
    try:
        swaps = swaps_from(args.model)
        check_swaps(records, swaps)
        policy_a = load_policy(args.a)
        policy_b = load_policy(args.b) if args.b else policy_a
        label_b = f"B: {args.b or args.a}" + "".join(f" {m}" for m in args.model)
        with held_budget_warnings(_COMMAND, verbose=args.verbose):
            run_a = replay(records, policy_a, label=f"A: {args.a}")
            run_b = replay(records, policy_b, label=label_b, model_map=swaps)
    except ConfigError as exc:
        return fail(args, _COMMAND, exc, 2)
    except PriceUnknown as exc:
        advice = unpriced_advice(exc.model, exc.reason, "--a and --b")
        return fail(args, _COMMAND, exc, 2, message=advice)
    _print(args, run_a, run_b)
    return 0


def _print(args: argparse.Namespace, run_a: Any, run_b: Any) -> None:
    a, b = run_a.as_dict(), run_b.as_dict()
    per_a = Decimal(a["cost_per_task_usd"])
    per_b = Decimal(b["cost_per_task_usd"])
    change = _change_pct(per_a, per_b)
    if args.json:
        pct = None if change is None else float(change)
        document = {"a": a, "b": b, "cost_per_task_change_pct": pct}
        print(json.dumps(document, allow_nan=False))  # JSON has no NaN
        return
    header = ("", "tasks", "cost USD", "per task", "stopped", "quality")
    print("{:<4}{:>6}  {:>14}  {:>14}  {:>7}  {}".format(*header))
    for name, run in (("A", a), ("B", b)):
        quality = "n/a" if run["quality"] is None else f"{run['quality']:.3f}"
        print(
            f"{name:<4}{run['tasks']:>6}  {run['cost_usd']:>14}  "
            f"{run['cost_per_task_usd']:>14}  {run['stopped']:>7}  {quality}"
        )
    for name, run in (("A", a), ("B", b)):
        if run["stopped_recorded_good"]:
            print(
                f"{name} stopped {run['stopped_recorded_good']} task(s) recorded "
                "as good; a stopped task counts at quality 0"
            )
    print(f"\n{run_a.label}\n{run_b.label}")
    shown = "n/a: A costs nothing" if change is None else f"{change:+.1f}%"
    cost_a, cost_b = a["cost_per_task_usd"], b["cost_per_task_usd"]
    print(f"Cost per task: ${cost_a} -> ${cost_b} ({shown})")


def _change_pct(per_a: Decimal, per_b: Decimal) -> Decimal | None:
    """B's cost per task against A's, in percent; None when A costs nothing
    and B does (no percentage of zero says how much dearer B is)."""
    if per_a:
        return (per_b - per_a) / per_a * 100
    return Decimal(0) if not per_b else None
