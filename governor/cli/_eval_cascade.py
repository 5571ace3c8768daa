"""``governor eval cascade``: replay recorded per-model outcomes through a cascade."""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections import Counter
from collections.abc import Sequence
from decimal import Decimal
from pathlib import Path
from typing import Any

from governor.cli._fail import fail, too_deep
from governor.cli._text import (
    check_output,
    given,
    refuse_overwriting,
    same_file,
    write_atomically,
)

__all__ = ["register_eval"]

_COMMAND = "governor eval cascade"


def register_eval(sub: Any, name: str, help_text: str) -> None:
    """Add ``eval cascade`` to the command line."""
    parser: argparse.ArgumentParser = sub.add_parser(
        name,
        help=help_text,
        description=(
            "Replay recorded per-model outcomes (RouterBench CSV, the JSONL "
            "equivalent, RouteLLM GSM8K, Arena-Bench-v1) through a cascade "
            "policy. Candidates of a named policy are chosen on a seeded fit "
            "part of the rows and reported on the rest."
        ),
    )
    parser.add_argument(
        "data",
        metavar="DATA",
        type=given("a data file or folder", required=True),
        help="a data file or folder",
    )
    parser.add_argument(
        "--policy",
        required=True,
        metavar="NAME_OR_FILE",
        help="a built-in name (routerbench-3tier, routerbench-cascade, "
        "gsm8k-2tier, arena-3tier, arena-3tier-judge), pack:NAME of a policy "
        "pack with a cascade (pack:cost_saver), a .json file, or "
        "package.module:attribute",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON doc")
    parser.add_argument(
        "--seed", type=int, default=0, help="split seed, any whole number (0)"
    )
    parser.add_argument(
        "--fit-fraction",
        type=_fit_fraction,
        default=0.5,
        help="share of rows used to choose a candidate, at least 0 and below 1 "
        "(0.5); 0 reports a one-candidate policy on every row",
    )
    parser.add_argument(
        "--target-quality",
        type=_quality_target,
        default=0.98,
        help="quality ratio to reach, from 0 to 1: a share of the always-best "
        "model's accuracy (0.98)",
    )
    parser.add_argument(
        "--target-cost",
        type=_cost_target,
        default=0.30,
        help="cost ratio to stay within, 0 or more: a share of the always-best "
        "model's cost (0.30)",
    )
    parser.add_argument(
        "--png",
        metavar="PATH",
        type=given("a file name"),
        help="also write the cost-quality chart here",
    )
    parser.set_defaults(handler=_run)


def _number(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    return value


def _fit_fraction(text: str) -> float:
    """An argparse type: a share of the rows, 0 up to (not including) 1."""
    value = _number(text)
    if not 0 <= value < 1:  # NaN fails this too
        raise argparse.ArgumentTypeError(
            f"must be a number from 0 up to, not including, 1, got {text!r}"
        )
    return value


def _quality_target(text: str) -> float:
    """An argparse type: a quality ratio, 0 to 1."""
    value = _number(text)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(
            "must be a number from 0 to 1 (a share of the always-best model's "
            f"accuracy, e.g. 0.98), got {text!r}"
        )
    return value


def _cost_target(text: str) -> float:
    """An argparse type: a cost ratio, 0 or more."""
    value = _number(text)
    if not 0 <= value < math.inf:
        raise argparse.ArgumentTypeError(
            "must be a number of 0 or more (a share of the always-best model's "
            f"cost, e.g. 0.3), got {text!r}"
        )
    return value


def _run(args: argparse.Namespace) -> int:
    from governor._errors import ConfigError
    from governor.cascade._builtin import price_table
    from governor.cascade._datasets import (
        read_rows,
        refuse_unanswered,
        refuse_unpriced,
    )
    from governor.cascade._fit import fit_and_report, formless_answers, narrow_rows

    try:
        png = _writable(args.png, args.data, args.policy)
        policy = _policy(args.policy)
        tiers = [tier for _, c in policy.candidates for tier in c.tiers]
        loaded = read_rows(
            Path(args.data), lambda layout: price_table(layout, policy.pricing, tiers)
        )
        models = [tier.model for tier in tiers]
        refuse_unanswered(loaded, models)
        refuse_unpriced(loaded, models, policy.name)
        rows, dropped = narrow_rows(policy, loaded.rows, loaded.unpriced)
        _warn_formless(formless_answers(policy, rows))
        result = fit_and_report(
            policy,
            rows,
            fit_fraction=args.fit_fraction,
            seed=args.seed,
            target_quality=args.target_quality,
            target_cost=args.target_cost,
        )
    except (OSError, ConfigError) as exc:
        return fail(args, _COMMAND, exc, 2)
    if png is not None:  # before the report, so that stdout holds one document
        try:
            _chart(png, result, args)
        except OSError as exc:
            message = f"cannot write the chart to {png}: {exc.strerror or exc}"
            return fail(args, _COMMAND, exc, 2, message=message)
    left_out = Counter(loaded.left_out) + Counter(dropped)
    doc = {
        **result.report.to_json(),
        "rows_read": loaded.read,
        "left_out": dict(left_out.most_common()),
        "note": _note(result),
    }
    if args.json:
        json.dump(doc, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        sys.stdout.write(_text(result, doc, args))
    return 0


# What each agreement form reads, for the warning when no answer has it.
_FORMS = {
    "choice": "a multiple-choice letter A-J, e.g. 'B' or 'the answer is B'",
    "number": "a number",
    "json": "JSON",
    "text": "any text",
}


def _warn_formless(formless: Sequence[tuple[str, str]]) -> None:
    """Say which models' answers never have the form an agreement check reads."""
    for model, form in formless:
        print(
            f"governor eval cascade: warning: no recorded answer of {model!r} has "
            f"a {form!r} form ({_FORMS[form]}), so the agreement check on its tier "
            "never passes and every row goes on to the next tier; check the "
            "answers' form in the data (a printed list such as \"['B\\n']\" "
            "is read as its text only when every answer of the model is one)",
            file=sys.stderr,
        )


def _writable(path_text: str | None, data: str, policy: str) -> Path | None:
    """Check that the chart can be written before the run, not after it, and
    that it would not overwrite the data or the policy file."""
    from governor._errors import ConfigError

    path = check_output("--png", path_text)
    if path is None:
        return None
    policy_file = policy if Path(policy).is_file() else None
    refuse_overwriting(
        [("--png", path_text)], [("DATA", data), ("--policy", policy_file)]
    )
    folder = Path(data)
    if path.is_file() and folder.is_dir() and _inside(path, folder):
        raise ConfigError(
            f"--png {path} is a file in the DATA folder {data}, which may be "
            "read as data; writing the chart would destroy it: give --png a "
            "new file name or a path outside the folder"
        )
    return path


def _inside(path: Path, folder: Path) -> bool:
    """Whether ``path`` is in ``folder`` or a subfolder of it (as read)."""
    return any(same_file(parent, folder) for parent in path.resolve().parents)


def _policy(spec: str) -> Any:
    """The cascade policy ``spec`` names; ``pack:NAME`` is a policy pack's
    cascade, with the pack's pricing."""
    from governor._errors import ConfigError
    from governor.cascade._builtin import BUILTIN_POLICIES, NamedPolicy, load_policy

    if not spec.startswith("pack:"):
        try:
            return load_policy(spec)
        except RecursionError as exc:
            raise ConfigError(too_deep(spec, "a cascade policy")) from exc
    from governor.policies.packs import PACKS, by_name

    name = spec.removeprefix("pack:")
    pack = by_name(name)
    if pack.cascade is None:
        with_one = [f"pack:{n}" for n, make in PACKS.items() if make().cascade]
        raise ConfigError(
            f"{spec}: the pack has no cascade, so there is nothing to evaluate; "
            f"give a pack with one ({', '.join(with_one) or 'none has one'}) or "
            f"a built-in cascade policy ({', '.join(BUILTIN_POLICIES)})"
        )
    cascade = ((pack.name, pack.cascade),)
    return NamedPolicy(spec, f"the {name} pack", cascade, pricing=pack.pricing)


def _note(result: Any) -> str | None:
    """Why the always-best model was selected in place of a candidate."""
    if result.dominated is None:
        return None
    point = next(p for p in result.curve if p.label == result.dominated)
    return (
        f"selected the always-best model alone: the pick on the fit rows, "
        f"{result.dominated!r}, costs at least as much (cost ratio "
        f"{_shown(point.fit_cost_ratio)}) with no better quality (quality ratio "
        f"{_shown(point.fit_quality_ratio)})"
    )


# From here on a ratio is shown in scientific notation, not as a row of digits.
_LARGE_RATIO = 1e6


def _shown(ratio: float | None) -> str:
    """A ratio to three places (in scientific notation from a million on), or
    n/a where the always-best figure is 0."""
    if ratio is None:
        return "n/a"
    return f"{ratio:.3e}" if abs(ratio) >= _LARGE_RATIO else f"{ratio:.3f}"


def _read_line(doc: dict[str, Any]) -> str:
    line = f"data     {doc['rows_read']} rows read, "
    left_out = doc["left_out"]
    line += f"{sum(left_out.values())} left out"
    if left_out:
        reasons = "; ".join(f"{why}: {count}" for why, count in left_out.items())
        line += f" ({reasons})"
    return line


def _text(result: Any, doc: dict[str, Any], args: argparse.Namespace) -> str:
    held = doc["rows"]
    lines = [
        f"policy   {doc['policy']}",
        _read_line(doc),
        f"rows     {held} held out, {result.fit_rows} used to choose (seed "
        f"{args.seed})",
        f"cascade  cost ${Decimal(doc['cost_usd']):.4f}  accuracy "
        f"{doc['accuracy']:.4f}  cost_ratio {_shown(doc['cost_ratio'])}  quality_ratio "
        f"{_shown(doc['quality_ratio'])}",
    ]
    if doc["note"]:
        lines.append(f"note     {doc['note']}")
    for name, base in doc["baselines"].items():
        model = f"  ({base['model']})" if base.get("model") else ""
        lines.append(
            f"{name:<16} cost ${Decimal(base['cost_usd']):.4f}  accuracy "
            f"{base['accuracy']:.4f}{model}"
        )
    lines.append(f"final tier counts: {dict(result.report.final_tiers)}")
    lines.append("")
    lines.extend(_curve_table(result))
    return "\n".join(lines) + "\n"


def _curve_table(result: Any) -> list[str]:
    lines = [
        "| candidate | fit cost | fit quality | held-out cost | held-out quality |",
        "|---|---|---|---|---|",
    ]
    for point in sorted(result.curve, key=_by_cost):
        mark = " (selected)" if point.label == result.selected else ""
        star = "*" if point.on_fit_frontier else ""
        lines.append(
            f"| {point.label}{star}{mark} | {_shown(point.fit_cost_ratio)} | "
            f"{_shown(point.fit_quality_ratio)} | {_shown(point.cost_ratio)} | "
            f"{_shown(point.quality_ratio)} |"
        )
    if result.dominated is not None:
        lines.append(_always_best_line(result))
    lines.append("(* on the fit rows' cost-quality frontier)")
    return lines


def _always_best_line(result: Any) -> str:
    """The always-best model against itself: 1, or n/a where its figure is 0."""
    point = next(p for p in result.curve if p.label == result.dominated)
    report = result.report
    ratios = (point.fit_cost_ratio, point.fit_quality_ratio)
    cells = [*("n/a" if r is None else "1.000" for r in ratios)]
    cells += [_shown(report.cost_ratio), _shown(report.quality_ratio)]
    return f"| always-best (selected) | {' | '.join(cells)} |"


def _by_cost(point: Any) -> tuple[bool, float]:
    """Held-out cost ratio, the points without one last."""
    return point.cost_ratio is None, point.cost_ratio or 0.0


def _plotted(points: Any) -> list[tuple[float, float]]:
    """(cost, quality) ratios of the points that have both."""
    return [
        (p.cost_ratio, p.quality_ratio)
        for p in points
        if p.cost_ratio is not None and p.quality_ratio is not None
    ]


def _chart(path: Path, result: Any, args: argparse.Namespace) -> None:
    from governor.cascade._chart import Series, encode_png, render_chart
    from governor.cascade._published import FRUGALGPT_POINTS, ROUTELLM_POINTS

    frontier = sorted(_plotted(p for p in result.curve if p.on_fit_frontier))
    others = _plotted(result.curve)
    picked = [p for p in result.curve if p.label == result.selected]
    # No candidate selected: the always-best model was.
    chosen = _plotted(picked) if picked else [(1.0, 1.0)]
    base = result.report.baselines
    best = base.always_best
    cheap = base.always_cheapest
    oracle = base.oracle
    series = [
        Series("RouteLLM (published)", list(ROUTELLM_POINTS.values()), (150, 90, 30)),
        Series(
            "FrugalGPT (published)",
            [pt for pts in FRUGALGPT_POINTS.values() for pt in pts],
            (140, 60, 170),
        ),
        Series("candidates", others, (170, 170, 170), marker_px=2),
        Series("cascade frontier", frontier, (30, 90, 200), line=True),
        Series("selected", chosen, (20, 40, 140), marker_px=6),
        Series("always-cheapest", _ratios(cheap, best), (230, 140, 20), marker_px=5),
        Series("oracle", _ratios(oracle, best), (30, 150, 60), marker_px=5),
        Series("always-best", [(1.0, 1.0)], (0, 0, 0), marker_px=5),
    ]
    title = f"{result.report.policy.split('/')[0]} held-out rows"
    target = (args.target_cost, args.target_quality)
    write_atomically(path, encode_png(render_chart(series, title=title, target=target)))


def _ratios(summary: Any, best: Any) -> list[tuple[float, float]]:
    """The baseline's point, or none where a ratio has no value."""
    from governor.cascade._replay import cost_ratio, quality_ratio

    cost, quality = cost_ratio(summary, best), quality_ratio(summary, best)
    return [] if cost is None or quality is None else [(cost, quality)]
