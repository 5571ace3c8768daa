"""Pick a candidate cascade on one part of the rows, report it on the rest.

The split is a seeded shuffle of the row keys. Selection looks at the fit
rows only: the cheapest candidate whose quality ratio reaches the target
(the better of equally cheap ones); failing that, the best quality within
the cost target; failing that, the best quality. A selected candidate
that the always-best model dominates on the fit rows (it costs at least as
much, with no better quality) gives way to the always-best model alone.
The held-out rows are replayed once per candidate for the cost-quality
curve, never to choose.

Every candidate's ratios are taken against one always-best model, so that
they can be compared: the premium model, which is the candidates' last-tier
model with the best accuracy on the fit rows (the dearer there of equally
good ones; the first candidate's of equally dear ones). Candidates that
share their last tier share it as it is.

A ratio has no value when the always-best model costs nothing (a free
premium tier) or scores 0. Then the target is met as it would be on the
figures themselves (any accuracy is at least the target times 0; only a
cost of 0 is within the target times 0), and candidates are ordered as if
a cost or accuracy above the always-best model's 0 were infinitely above
it, ties broken by the dollars and accuracy themselves.
"""

from __future__ import annotations

import math
import random
from collections import Counter
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from governor._errors import ConfigError
from governor.cascade._builtin import NamedPolicy
from governor.cascade._checks import build_check, normalise, resolve_callable
from governor.cascade._complexity import Estimator, heuristic_complexity
from governor.cascade._replay import RECORDED_JUDGE, ReplayReport, ReplayRow, replay
from governor.policies._cascade import AgreementCheck, Normaliser

__all__ = [
    "ALWAYS_BEST",
    "CurvePoint",
    "FitResult",
    "fit_and_report",
    "formless_answers",
    "narrow_rows",
    "premium_model",
    "split_rows",
]

ALWAYS_BEST = "always-best"
"""The label selected when the always-best model dominates the pick."""

_SAME_ACCURACY = 1e-9  # float sums in another order may differ by this much
_LISTED_MODELS = 3


@dataclass(frozen=True, slots=True)
class CurvePoint:
    """One candidate's ratios on the fit rows and on the held-out rows.

    The fit ratios are None when no row was used to choose (a fit fraction
    of 0), as a ratio is where the always-best model's figure is 0.
    """

    label: str
    fit_cost_ratio: float | None
    fit_quality_ratio: float | None
    cost_ratio: float | None
    quality_ratio: float | None
    on_fit_frontier: bool


@dataclass(frozen=True, slots=True)
class FitResult:
    """The selected candidate's held-out report, and every candidate's figures.

    ``selected`` is :data:`ALWAYS_BEST` when the candidate the rule picked is
    dominated by the always-best model on the fit rows; ``dominated`` then
    names that candidate.
    """

    selected: str
    report: ReplayReport
    fit_rows: int
    curve: tuple[CurvePoint, ...]
    dominated: str | None = None


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


def _ordered(ratio: float | None, figure: float) -> float:
    """A ratio to order by; with no ratio, 1 for a figure of 0, else infinity."""
    if ratio is not None:
        return ratio
    return math.inf if figure else 1.0


def _cost_key(report: ReplayReport) -> tuple[float, float]:
    cost = float(report.summary.cost_usd)
    return _ordered(report.cost_ratio, cost), cost


def _quality_key(report: ReplayReport) -> tuple[float, float]:
    accuracy = report.summary.accuracy
    return _ordered(report.quality_ratio, accuracy), accuracy


def _reaches(report: ReplayReport, target_quality: float) -> bool:
    ratio = report.quality_ratio
    return True if ratio is None else ratio >= target_quality


def _within(report: ReplayReport, target_cost: float) -> bool:
    ratio = report.cost_ratio
    return not report.summary.cost_usd if ratio is None else ratio <= target_cost


def _select(
    reports: Sequence[tuple[str, ReplayReport]],
    target_quality: float,
    target_cost: float,
) -> str:
    def cheapest(r: tuple[str, ReplayReport]) -> tuple[tuple[float, float], ...]:
        quality, accuracy = _quality_key(r[1])
        return _cost_key(r[1]), (-quality, -accuracy)

    def best(r: tuple[str, ReplayReport]) -> tuple[tuple[float, float], ...]:
        cost, dollars = _cost_key(r[1])
        return _quality_key(r[1]), (-cost, -dollars)

    good = [r for r in reports if _reaches(r[1], target_quality)]
    if good:
        return min(good, key=cheapest)[0]
    cheap = [r for r in reports if _within(r[1], target_cost)]
    return max(cheap or list(reports), key=best)[0]


def _dominated(report: ReplayReport) -> bool:
    """True when the always-best model costs no more and scores no less."""
    best = report.baselines.always_best
    return (
        report.summary.cost_usd >= best.cost_usd
        and report.summary.accuracy <= best.accuracy + _SAME_ACCURACY
    )


def _always_best(
    name: str, policy: NamedPolicy, selected: str, report: ReplayReport
) -> ReplayReport:
    """``report``'s always-best baseline reported as the policy itself.

    Its final tier is the last tier that calls the premium model: the
    selected candidate's when it does, else the first such candidate's.
    """
    best = report.baselines.always_best
    model = report.baselines.best_model
    lasts = [cascade.tiers[-1] for _, cascade in policy.candidates]
    own = dict(policy.candidates)[selected].tiers[-1]
    tier = own if own.model == model else next(t for t in lasts if t.model == model)
    tiers = {tier.name: best.rows}
    return ReplayReport(f"{name}/{ALWAYS_BEST}", best, report.baselines, tiers)


def premium_model(policy: NamedPolicy, rows: Sequence[ReplayRow]) -> str:
    """The always-best model every candidate of ``policy`` is compared with.

    Among the candidates' last-tier models, the one with the best accuracy
    on ``rows`` (the fit rows); of equally good ones the dearer on them, of
    equally dear ones the first candidate's. With one last-tier model (or
    no rows) it is the first candidate's last tier.
    """
    lasts = list(dict.fromkeys(c.tiers[-1].model for _, c in policy.candidates))
    if len(lasts) == 1 or not rows:
        return lasts[0]

    def merit(model: str) -> tuple[float, Decimal]:
        score = sum(row.outcomes[model].score for row in rows)
        cost = sum((row.outcomes[model].cost_usd for row in rows), Decimal(0))
        return score, cost

    return max(lasts, key=merit)


def _needed_models(policy: NamedPolicy) -> list[str]:
    """Every model any candidate uses, in order of first use."""
    needed: dict[str, None] = {}
    for _, cascade in policy.candidates:
        needed.update((tier.model, None) for tier in cascade.tiers)
    return list(needed)


def formless_answers(
    policy: NamedPolicy, rows: Sequence[ReplayRow]
) -> list[tuple[str, Normaliser]]:
    """(model, form) where a checked tier's agreement check compares a form
    that none of the model's recorded answers has.

    Such a check never passes on that tier (an agreement inside ``any_of``
    may be passed by the other checks, and is not looked at), so every row
    goes on to the next one: the answers are probably not in the form the
    check reads (e.g. RouterBench's printed lists, ``['B\\n']``, where a
    letter is expected).
    """
    wanted: dict[tuple[str, Normaliser], None] = {}
    for _, cascade in policy.candidates:
        checked = cascade.tiers if cascade.check_last_tier else cascade.tiers[:-1]
        for tier in checked:
            checks = cascade.checks if tier.checks is None else tier.checks
            forms = {c.normalise for c in checks if isinstance(c, AgreementCheck)}
            wanted.update(((tier.model, form), None) for form in sorted(forms))
    return [
        (model, form)
        for model, form in wanted
        if not any(
            model in row.outcomes
            and normalise(row.outcomes[model].response, form) is not None
            for row in rows
        )
    ]


def _missing_reason(row: ReplayRow, needed: Sequence[str]) -> str:
    if not row.outcomes:
        return "no outcome for any model"
    missing = [m for m in needed if m not in row.outcomes]
    listed = ", ".join(missing[:_LISTED_MODELS])
    more = len(missing) - _LISTED_MODELS
    return f"no outcome for {listed}{f' and {more} more' if more > 0 else ''}"


def narrow_rows(
    policy: NamedPolicy, rows: Sequence[ReplayRow], unpriced: Collection[str] = ()
) -> tuple[list[ReplayRow], dict[str, int]]:
    """Keep the rows recording every model any candidate uses.

    Args:
        policy: the named policy whose candidates will replay the rows.
        rows: the rows read.
        unpriced: models the data holds but no price table prices, named
            in the error when no row is left.

    Returns:
        The rows kept, and the number of rows left out per reason.

    Raises:
        ConfigError: no row is left; the message names the models the
            policy needs and those the data records.
    """
    needed = _needed_models(policy)
    kept: list[ReplayRow] = []
    left_out: Counter[str] = Counter()
    for row in rows:
        if all(model in row.outcomes for model in needed):
            kept.append(row)
        else:
            left_out[_missing_reason(row, needed)] += 1
    if not kept:
        raise ConfigError(_no_rows_message(policy.name, needed, rows, unpriced))
    return kept, dict(left_out)


def _no_rows_message(
    name: str,
    needed: Sequence[str],
    rows: Sequence[ReplayRow],
    unpriced: Collection[str],
) -> str:
    has = sorted({model for row in rows for model in row.outcomes})
    message = (
        f"no row records every model that {name} uses; it needs {needed}, the "
        f"data records {has}"
    )
    if unpriced:
        message += (
            f" (and {sorted(unpriced)}, left out: no list price in the rate card)"
        )
    return message + "; name the data's models in the policy's tiers"


def _frontier(reports: Sequence[tuple[str, ReplayReport]]) -> set[str]:
    """Labels no other candidate beats on both cost and quality."""
    keys = [(label, _cost_key(r), _quality_key(r)) for label, r in reports]
    keep: set[str] = set()
    for label, cost, quality in keys:
        beaten = any(
            other_cost <= cost
            and other_quality >= quality
            and (other_cost < cost or other_quality > quality)
            for _, other_cost, other_quality in keys
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
    uses (:func:`narrow_rows`), so every candidate and baseline sees the
    same rows, and every candidate's ratios are over one always-best model
    (:func:`premium_model`, chosen on the fit rows). A family of one
    candidate may use ``fit_fraction=0`` to report on every row; then
    nothing is selected and nothing replaced.
    Without fit rows, a candidate's fit figures are None (nothing was
    measured on them).
    """
    rows, _ = narrow_rows(policy, rows)
    fit_part, held_out = split_rows(rows, fit_fraction, seed)
    if len(policy.candidates) > 1 and not fit_part:
        raise ConfigError(
            f"{policy.name} has {len(policy.candidates)} candidates to choose "
            f"from, but a fit fraction of {fit_fraction:g} of {len(rows)} rows "
            "leaves no row to choose on; give a fit fraction above 0 "
            "(--fit-fraction, 0.5 by default), or a policy with one candidate"
        )
    known = {"heuristic": _memoised(heuristic_complexity), **policy.callables}
    _check_names(policy, known)
    best = premium_model(policy, fit_part)
    on_fit = (
        [
            (label, replay(label, c, fit_part, callables=known, best_model=best))
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
        (label, replay(label, c, held_out, callables=known, best_model=best))
        for label, c in policy.candidates
    ]
    curve = _curve(on_fit, on_held)
    chosen = dict(on_held)[selected]
    if on_fit and _dominated(dict(on_fit)[selected]):
        alone = _always_best(policy.name, policy, selected, chosen)
        return FitResult(ALWAYS_BEST, alone, len(fit_part), curve, selected)
    named = ReplayReport(
        f"{policy.name}/{selected}",
        chosen.summary,
        chosen.baselines,
        chosen.final_tiers,
    )
    return FitResult(selected, named, len(fit_part), curve)


def _placeholder_judge(answer: Any, history: Any) -> float:
    """Stands in for the recorded judge, which replay() itself provides."""
    return 0.0


def _check_names(policy: NamedPolicy, known: Mapping[str, Any]) -> None:
    """Refuse a check, judge or estimator name nothing resolves, naming the
    policy (its file) and the place in it, before any row is replayed."""
    names = {**known, RECORDED_JUDGE: _placeholder_judge}
    for label, cascade in policy.candidates:
        where = f"{policy.name} ({policy.description})"
        if len(policy.candidates) > 1:
            where += f": candidate {label!r}"
        places: list[tuple[str, Any]] = [
            (f"checks[{i}]", spec) for i, spec in enumerate(cascade.checks)
        ]
        for t, tier in enumerate(cascade.tiers):
            places += [
                (f"tiers[{t}].checks[{i}]", spec)
                for i, spec in enumerate(tier.checks or ())
            ]
        try:
            for place, spec in places:
                at = place
                build_check(spec, names)
            if cascade.precall is not None:
                at = "precall.estimator"
                resolve_callable(cascade.precall.estimator, names)
        except ConfigError as exc:
            raise ConfigError(f"{where}: {at}: {exc}") from exc


def _curve(
    on_fit: Sequence[tuple[str, ReplayReport]],
    on_held: Sequence[tuple[str, ReplayReport]],
) -> tuple[CurvePoint, ...]:
    frontier = _frontier(on_fit) if on_fit else {label for label, _ in on_held}
    fit_by_label = dict(on_fit)
    return tuple(
        CurvePoint(
            label,
            fit_by_label[label].cost_ratio if on_fit else None,
            fit_by_label[label].quality_ratio if on_fit else None,
            report.cost_ratio,
            report.quality_ratio,
            label in frontier,
        )
        for label, report in on_held
    )
