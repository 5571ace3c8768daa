"""``governor eval anomalies PATH``: spike detection on recorded request traces."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from typing import Any

from governor.cli._fail import fail
from governor.cli._text import given_path, positive_count

_COMMAND = "governor eval anomalies"

_GIVE = (
    "give a folder of Azure LLM inference trace CSV files (.csv or .csv.gz, "
    "columns TIMESTAMP, ContextTokens, GeneratedTokens) or one such file "
    "that you can read"
)

# Progress lines come at least this many replayed calls apart.
_PROGRESS_CALLS = 100_000


def register_eval(sub: Any, name: str, help_text: str) -> None:
    """Add ``eval anomalies`` to the command line."""
    parser: argparse.ArgumentParser = sub.add_parser(
        name, help=help_text, description=help_text
    )
    parser.add_argument(
        "path",
        type=given_path("a folder or file of trace CSVs", required=True),
        metavar="PATH",
        help=(
            "a folder of Azure LLM inference trace CSV files (.csv or .csv.gz), "
            "or one such file; each file is one scope"
        ),
    )
    parser.add_argument(
        "--json", action="store_true", help="print one JSON document to stdout"
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="injection seed, any whole number (0)"
    )
    parser.add_argument(
        "--trials",
        type=positive_count,
        default=20,
        help="spikes per scope and kind (20)",
    )
    parser.add_argument(
        "--model",
        default="gpt-4o-mini",
        help="model whose list price prices the trace tokens (gpt-4o-mini)",
    )
    parser.add_argument(
        "--defaults-only",
        action="store_true",
        help=(
            "run the default settings only, not the sweeps and variants "
            "(1 configuration of 14; for long traces)"
        ),
    )
    parser.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    from governor._errors import GovernorError, PriceUnknown
    from governor.anomaly._eval import run_eval

    if not args.path.exists():
        message = f"{args.path}: no such file or folder; {_GIVE}"
        return fail(args, _COMMAND, message, 2)
    try:
        document = run_eval(
            args.path,
            seed=args.seed,
            trials=args.trials,
            model=args.model,
            defaults_only=args.defaults_only,
            progress=_progress(),
            warn=_warn,
        )
    except PriceUnknown as exc:
        return fail(args, _COMMAND, exc, 2, message=_unpriced(exc))
    except GovernorError as exc:
        return fail(args, _COMMAND, exc, 2)
    except OSError as exc:
        where = exc.filename or args.path
        why = exc.strerror or str(exc)
        message = f"cannot read {where}: {why}; {_GIVE}"
        return fail(args, _COMMAND, exc, 2, message=message)
    print(json.dumps(document, indent=2) if args.json else render(document))
    return 0


def _warn(message: str) -> None:
    print(f"governor eval anomalies: warning: {message}", file=sys.stderr)


def _unpriced(exc: Any) -> str:
    """The price error in command-line terms: choose a model that has one."""
    detail = f" ({exc.reason})" if exc.reason else ""
    return (
        f"--model {exc.model}: no price is known for it{detail}. The trace's "
        "tokens are priced at a model's list price from LiteLLM's bundled price "
        "map: give --model a model it prices, such as gpt-4o-mini (the "
        "default); `governor pricing MODEL` shows whether a model has a price"
    )


def _progress() -> Callable[[int, int], None]:
    """Print ``replayed done/total calls`` on stderr when the replay starts and
    then about 20 times, 100,000 calls apart at least; nothing for fewer than
    100,000 calls in all."""
    shown = -1

    def show(done: int, total: int) -> None:
        nonlocal shown
        step = max(_PROGRESS_CALLS, total // 20)
        if total < _PROGRESS_CALLS or done == shown:
            return
        if done == 0 or done == total or done // step > shown // step:
            shown = done
            print(
                f"governor eval anomalies: replayed {done:,}/{total:,} calls "
                f"({100 * done // total}%)",
                file=sys.stderr,
            )

    return show


def _delay(spike: dict[str, Any]) -> str:
    if spike["median_delay_s"] is None:
        return "-"
    return f"{spike['median_delay_s']:.0f} / {spike['p90_delay_s']:.0f}"


def _row(result: dict[str, Any], label: str) -> str:
    cells = [
        label,
        f"{result['k']:g}",
        str(result["window_intervals"]),
        f"{result['burst_factor']:g}",
    ]
    for spike in result["spikes"]:
        cells += [f"{spike['detected']}/{spike['trials']}", _delay(spike)]
    rules = result["false_alert_intervals_by_rule"]
    cells += [
        f"{result['false_alert_intervals']} ({rules['deviation']} + {rules['burst']})",
        f"{result['false_alert_intervals_per_scope_day']:.0f}",
    ]
    return "| " + " | ".join(cells) + " |"


def render(document: dict[str, Any]) -> str:
    """Markdown: what was replayed, then one table row per configuration."""
    trace = document["trace"]
    scopes = ", ".join(f"{s} ({n} calls)" for s, n in trace["scopes"].items())
    price = trace["usd_per_mtok"]
    head = [
        f"Trace: {scopes}; priced as {trace['model']} at ${price['input']} / "
        f"${price['output']} per million input / output tokens.",
        f"Seed {document['seed']}, {document['trials_per_scope_and_kind']} "
        "spikes per scope and kind; delays in seconds from spike start "
        "(median / p90); false alerts are alerting intervals on the "
        "uninjected trace (deviation + burst), extrapolated per scope-day.",
        "",
        "| settings | k | window | burst factor | loop found | loop delay s "
        "| burst found | burst delay s | false alerts | per scope-day |",
        "|---|---|---|---|---|---|---|---|---|---|",
        _row(document["defaults"], "**defaults**"),
    ]
    key = _key(document["defaults"])
    rows = [
        _row(result, "sweep")
        for result in document.get("sweep", []) + document.get("burst_sweep", [])
        if _key(result) != key
    ]
    rows += [_row(result, result["label"]) for result in document.get("variants", [])]
    return "\n".join(head + rows)


def _key(result: dict[str, Any]) -> tuple[Any, ...]:
    return (result["k"], result["window_intervals"], result["burst_factor"])
