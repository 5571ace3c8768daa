"""Pick a candidate cascade on one part of the rows, report it on the rest.

The split is a seeded shuffle of the row keys. Selection looks at the fit
rows only: the cheapest candidate whose quality ratio reaches the target;
failing that, the best quality within the cost target; failing that, the
best quality. The held-out rows are replayed once per candidate for the
cost-quality curve, never to choose.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

from governor._errors import ConfigError
from governor.cascade._builtin import NamedPolicy
from governor.cascade._complexity import Estimator, heuristic_complexity
from governor.cascade._replay import ReplayReport, ReplayRow, replay, usable_rows

__all__ = ["CurvePoint", "FitResult", "fit_and_report", "split_rows"]


@dataclass(frozen=True, slots=True)
class CurvePoint:
    """One candidate's ratios on the fit rows and on the held-out rows."""

    label: str
    fit_cost_ratio: float
    fit_quality_ratio: float
    cost_ratio: float
    quality_ratio: float
    on_fit_frontier: bool


@dataclass(frozen=True, slots=True)
class FitResult:
    """The selected candidate's held-out report, and every candidate's figures."""

    selected: str
    report: ReplayReport
    fit_rows: int
    curve: tuple[CurvePoint, ...]


def _memoised(estimate: Estimator) -> Estimator:
    """Remember estimates: every candidate replays the same prompts."""
    seen: dict[str, float] = {}

    def cached(text: str) -> float:
        if text not in seen:
            seen[text] = estimate(text)
        return seen[text]

    return cached


def split_rows(
    rows: Sequence[ReplayRow], fit_fraction: float, seed: int
) -> tuple[list[ReplayRow], list[ReplayRow]]:
    """Split rows into (fit, held-out) by a seeded shuffle of their keys."""
    if not 0 <= fit_fraction < 1:
        raise ConfigError(f"fit fraction must be in [0, 1), got {fit_fraction}")
    ordered = sorted(rows, key=lambda row: row.key)
    random.Random(seed).shuffle(ordered)
    cut = round(len(ordered) * fit_fraction)
    return ordered[:cut], ordered[cut:]


def _select(
    reports: Sequence[tuple[str, ReplayReport]],
    target_quality: float,
    target_cost: float,
) -> str:
    good = [r for r in reports if r[1].quality_ratio >= target_quality]
    if good:
        return min(good, key=lambda r: r[1].cost_ratio)[0]
    cheap = [r for r in reports if r[1].cost_ratio <= target_cost]
    pool = cheap or list(reports)
    return max(pool, key=lambda r: (r[1].quality_ratio, -r[1].cost_ratio))[0]


def _frontier(reports: Sequence[tuple[str, ReplayReport]]) -> set[str]:
    """Labels no other candidate beats on both cost and quality."""
    keep: set[str] = set()
    for label, mine in reports:
        beaten = any(
            other.cost_ratio <= mine.cost_ratio
            and other.quality_ratio >= mine.quality_ratio
            and (
                other.cost_ratio < mine.cost_ratio
                or other.quality_ratio > mine.quality_ratio
            )
            for _, other in reports
        )
        if not beaten:
            keep.add(label)
    return keep


def fit_and_report(
    policy: NamedPolicy,
    rows: Sequence[ReplayRow],
    *,
    fit_fraction: float = 0.5,
    seed: int = 0,
    target_quality: float = 0.98,
    target_cost: float = 0.30,
) -> FitResult:
    """Select a candidate on the fit rows and replay it on the held-out rows.

    Rows are first narrowed to those recording every model any candidate
    uses, so every candidate and baseline sees the same rows. A family of
    one candidate may use ``fit_fraction=0`` to report on every row.
    """
    for _, cascade in policy.candidates:
        rows = usable_rows(rows, cascade)
    if not rows:
        raise ConfigError(f"no row records every model that {policy.name} uses")
    fit_part, held_out = split_rows(rows, fit_fraction, seed)
    if len(policy.candidates) > 1 and not fit_part:
        raise ConfigError(f"{policy.name} has candidates to choose from; fit on rows")
    known = {"heuristic": _memoised(heuristic_complexity), **policy.callables}
    on_fit = (
        [
            (label, replay(label, c, fit_part, callables=known))
            for label, c in policy.candidates
        ]
        if fit_part
        else []
    )
    selected = (
        _select(on_fit, target_quality, target_cost)
        if on_fit
        else policy.candidates[0][0]
    )
    on_held = [
        (label, replay(label, c, held_out, callables=known))
        for label, c in policy.candidates
    ]
    frontier = _frontier(on_fit) if on_fit else {label for label, _ in on_held}
    fit_by_label = dict(on_fit)
    curve = tuple(
        CurvePoint(
            label,
            fit_by_label[label].cost_ratio if on_fit else report.cost_ratio,
            fit_by_label[label].quality_ratio if on_fit else report.quality_ratio,
            report.cost_ratio,
            report.quality_ratio,
            label in frontier,
        )
        for label, report in on_held
    )
    chosen = dict(on_held)[selected]
    named = ReplayReport(
        f"{policy.name}/{selected}",
        chosen.summary,
        chosen.baselines,
        chosen.final_tiers,
    )
    return FitResult(selected, named, len(fit_part), curve)
