"""Offline replay: run a cascade over recorded per-model outcomes.

Each row holds, for several models, the answer the model gave, its cost and
its score (1/0 correctness, or a grade scaled to [0, 1]). Replaying sends the
row through the real :class:`CascadeRunner`; the "call" looks the tier's
model up in the row, and the policy's checks run on the recorded answer
text. Nothing is sent anywhere.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Final

from governor._errors import ConfigError, decimal_text
from governor.cascade._errors import CascadeExhausted
from governor.cascade._runner import CascadeRunner
from governor.cascade._types import Answer
from governor.policies._cascade import Cascade, Tier

__all__ = [
    "RECORDED_JUDGE",
    "Baselines",
    "Recorded",
    "ReplayReport",
    "ReplayRow",
    "Summary",
    "baselines",
    "cost_ratio",
    "quality_ratio",
    "replay",
    "report",
    "usable_rows",
]

_NANO_USD: Final = Decimal("1e-9")

RECORDED_JUDGE = "recorded-score"
"""The judge name that reads a row's recorded score (an oracle-like judge).

A policy using it sees the grade the evaluation itself scores with, so its
figures are an upper bound on what a real judge model could reach; the
judge's own cost (when the data set prices it) is charged per use.
"""


@dataclass(frozen=True, slots=True)
class Recorded:
    """One model's recorded outcome on one row."""

    score: float
    response: str
    cost_usd: Decimal
    judge_cost_usd: Decimal = Decimal(0)


@dataclass(frozen=True, slots=True)
class ReplayRow:
    """One prompt and every model's recorded outcome on it."""

    key: str
    prompt: str
    outcomes: Mapping[str, Recorded]
    group: str = ""


@dataclass(frozen=True, slots=True)
class Summary:
    """Total cost and mean score over a set of rows."""

    rows: int
    cost_usd: Decimal
    accuracy: float


@dataclass(frozen=True, slots=True)
class Baselines:
    """The reference points of a replay, over the same rows and tiers.

    ``best_model`` is the model the always-best figures are for: the
    policy's last tier, or the premium model shared by every candidate of a
    fitted run (see :func:`baselines`).
    """

    always_cheapest: Summary
    always_best: Summary
    oracle: Summary
    best_model: str = ""


@dataclass(frozen=True, slots=True)
class ReplayReport:
    """A policy's replay figures beside its baselines."""

    policy: str
    summary: Summary
    baselines: Baselines
    final_tiers: Mapping[str, int] = field(default_factory=dict)

    @property
    def cost_ratio(self) -> float | None:
        """Cost over the always-best cost; None when always-best costs nothing
        (a free premium tier), where no ratio exists."""
        return cost_ratio(self.summary, self.baselines.always_best)

    @property
    def quality_ratio(self) -> float | None:
        """Accuracy over the always-best accuracy; None when always-best
        scores 0 on these rows, where no ratio exists."""
        return quality_ratio(self.summary, self.baselines.always_best)

    def to_json(self) -> dict[str, Any]:
        """Return the report with exactly the keys ``governor eval`` prints."""
        return {
            "rows": self.summary.rows,
            "policy": self.policy,
            "cost_usd": _usd(self.summary.cost_usd),
            "accuracy": round(self.summary.accuracy, 6),
            "baselines": {
                "always-cheapest": _summary_json(self.baselines.always_cheapest),
                "always-best": {
                    **_summary_json(self.baselines.always_best),
                    "model": self.baselines.best_model,
                },
                "oracle": _summary_json(self.baselines.oracle),
            },
            "cost_ratio": _rounded(self.cost_ratio),
            "quality_ratio": _rounded(self.quality_ratio),
        }


def cost_ratio(summary: Summary, best: Summary) -> float | None:
    """``summary``'s cost over ``best``'s; None when ``best`` costs nothing."""
    return float(summary.cost_usd / best.cost_usd) if best.cost_usd else None


def quality_ratio(summary: Summary, best: Summary) -> float | None:
    """``summary``'s accuracy over ``best``'s; None when ``best`` scores 0."""
    return summary.accuracy / best.accuracy if best.accuracy else None


def _rounded(ratio: float | None) -> float | None:
    return None if ratio is None else round(ratio, 6)


def _usd(value: Decimal) -> str:
    """A report's amount as the decimal string other commands write,
    rounded to the nano-dollar, e.g. ``"0.025"``."""
    return decimal_text(value.quantize(_NANO_USD).normalize())


def _summary_json(summary: Summary) -> dict[str, Any]:
    return {"cost_usd": _usd(summary.cost_usd), "accuracy": round(summary.accuracy, 6)}


def usable_rows(rows: Iterable[ReplayRow], policy: Cascade) -> list[ReplayRow]:
    """Keep the rows that record an outcome for every tier's model."""
    models = {tier.model for tier in policy.tiers}
    return [row for row in rows if models <= row.outcomes.keys()]


def _recorded_score(answer: Answer, history: Sequence[Answer]) -> float:
    recorded = answer.raw
    if not isinstance(recorded, Recorded):
        raise ConfigError(f"the {RECORDED_JUDGE!r} judge works in replays only")
    return recorded.score * 10


def replay(
    name: str,
    policy: Cascade,
    rows: Sequence[ReplayRow],
    *,
    callables: Mapping[str, Callable[..., Any]] | None = None,
    best_model: str | None = None,
) -> ReplayReport:
    """Replay ``rows`` through ``policy`` and compare it with its baselines.

    Rows missing a tier's model must be dropped first (:func:`usable_rows`).
    The recorded judge (``RECORDED_JUDGE``) scores on a 0-10 scale.
    ``best_model`` is the always-best model the ratios are taken against
    (the policy's last tier when None); candidates compared with each other
    must share it, or their ratios are on different yardsticks.
    """
    judge_spend: list[Decimal] = []

    def recorded_judge(answer: Answer, history: Sequence[Answer]) -> float:
        # Charged per judgement made: a judge skipped (an earlier check
        # failed, or the last tier goes unchecked) costs nothing.
        if isinstance(answer.raw, Recorded):
            judge_spend.append(answer.raw.judge_cost_usd)
        return _recorded_score(answer, history)

    known = {RECORDED_JUDGE: recorded_judge, **(callables or {})}
    runner = CascadeRunner(policy, callables=known)

    def call(tier: Tier, row: ReplayRow) -> Answer:
        recorded = row.outcomes[tier.model]
        return Answer(recorded.response, tier.model, recorded.cost_usd, raw=recorded)

    total_cost = Decimal(0)
    total_score = 0.0
    final: Counter[str] = Counter()
    for row in rows:
        try:
            result = runner.run(row, call=call, prompt_text=row.prompt)
        except CascadeExhausted as exc:
            total_cost += exc.spent_usd
            final["(none)"] += 1
            continue
        total_cost += result.cost_usd
        final[result.tier.name] += 1
        if isinstance(result.answer.raw, Recorded):
            total_score += result.answer.raw.score
    total_cost += sum(judge_spend, Decimal(0))
    summary = Summary(len(rows), total_cost, total_score / len(rows) if rows else 0.0)
    references = baselines(policy, rows, best_model)
    return ReplayReport(name, summary, references, dict(final))


def baselines(
    policy: Cascade, rows: Sequence[ReplayRow], best_model: str | None = None
) -> Baselines:
    """Always the first tier, always the best model, and the per-row oracle.

    The best model is ``best_model``, else the policy's last tier. The
    oracle picks, per row, the cheapest tier with the best recorded score,
    and pays for that one call only.

    Raises:
        ConfigError: a row records no outcome for ``best_model``.
    """
    models = [tier.model for tier in policy.tiers]
    best = models[-1] if best_model is None else best_model
    if any(best not in row.outcomes for row in rows):
        raise ConfigError(
            f"the always-best model {best!r} has no outcome on some rows; keep "
            "only the rows that record it (as narrow_rows does for a fitted run)"
        )
    return Baselines(
        always_cheapest=_always(models[0], rows),
        always_best=_always(best, rows),
        oracle=_oracle(models, rows),
        best_model=best,
    )


def _always(model: str, rows: Sequence[ReplayRow]) -> Summary:
    cost = sum((row.outcomes[model].cost_usd for row in rows), Decimal(0))
    score = sum(row.outcomes[model].score for row in rows)
    return Summary(len(rows), cost, score / len(rows) if rows else 0.0)


def _oracle(models: Sequence[str], rows: Sequence[ReplayRow]) -> Summary:
    cost = Decimal(0)
    score = 0.0
    for row in rows:
        picks = [row.outcomes[m] for m in models]
        best = max(p.score for p in picks)
        pick = min((p for p in picks if p.score == best), key=lambda p: p.cost_usd)
        cost += pick.cost_usd
        score += pick.score
    return Summary(len(rows), cost, score / len(rows) if rows else 0.0)


def report(
    name: str,
    policy: Cascade,
    rows: Sequence[ReplayRow],
    *,
    callables: Mapping[str, Callable[..., Any]] | None = None,
) -> ReplayReport:
    """Drop rows the policy cannot replay, then :func:`replay` the rest."""
    kept = usable_rows(rows, policy)
    if not kept:
        models = [tier.model for tier in policy.tiers]
        raise ConfigError(
            f"no row records every model of policy {name!r} ({models}); check the "
            "tier models against the data set's model names"
        )
    return replay(name, policy, kept, callables=callables)
