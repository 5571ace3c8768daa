"""Pre-call complexity estimates: which tier a prompt should start at.

The built-in estimator is a fast heuristic over the prompt text (a few regular
expressions, microseconds per prompt). Any callable ``text -> float in [0, 1]``
can replace it, for instance a small model used as a classifier through
:func:`from_labels`.
"""

from __future__ import annotations

import bisect
import math
import re
from collections.abc import Callable, Mapping, Sequence

from governor._errors import ConfigError

__all__ = ["Estimator", "from_labels", "heuristic_complexity", "start_tier"]

Estimator = Callable[[str], float]
"""Maps a prompt's text to a complexity in [0, 1]."""

_SCAN_CHARS = 4000
"""Only the prompt's first characters are scanned, to bound the cost."""

# Matched against the lower-cased text; one leading \b per alternation
# keeps each search near linear (about 20 us for a 1.5 kB prompt).
_CODE = re.compile(
    r"```|\b(?:def |class |function\b|implement|refactor|debug|sql\b|regex|"
    r"algorithm|write (?:a |an )?(?:python |java |c\+\+ |rust |go )?"
    r"(?:program|script|function|method|query|class))"
)
_MATH = re.compile(
    r"\b(?:prove\b|proof\b|derive\b|integral|derivative|equation|solve\b|"
    r"calculate\b|probability\b)|\d\s*[-+*/^=]\s*\d"
)
_REASONING = re.compile(
    r"step[- ]by[- ]step|\b(?:explain why\b|analy[sz]e\b|compare\b|design\b|"
    r"trade-?offs?\b|evaluate\b|strategy\b|pros and cons\b)"
)
_PARTS = re.compile(r"\?|^\s*(?:\d+[.)]|[-*])\s", re.MULTILINE)


def heuristic_complexity(text: str) -> float:
    """Estimate how hard a prompt is, in [0, 1], from its text alone.

    Length adds up to 0.25 (on a log scale, saturating near 10k tokens), a
    coding request 0.35, mathematics 0.2, open-ended reasoning 0.15, and
    each part of a multi-part request beyond the first 0.05 (at most 0.15).
    Patterns are looked for in the first 4,000 characters only. The weights
    are a starting point: fit thresholds on your own traffic.
    """
    approx_tokens = len(text.encode("utf-8")) / 4
    lowered = text[:_SCAN_CHARS].lower()
    score = min(math.log10(1 + approx_tokens) / 4, 1.0) * 0.25
    score += 0.35 if _CODE.search(lowered) else 0.0
    score += 0.2 if _MATH.search(lowered) else 0.0
    score += 0.15 if _REASONING.search(lowered) else 0.0
    score += min(max(len(_PARTS.findall(text)) - 1, 0) * 0.05, 0.15)
    return round(min(score, 1.0), 4)


def from_labels(
    classify: Callable[[str], str], scores: Mapping[str, float]
) -> Estimator:
    """Turn a label classifier (e.g. a small model) into an estimator.

    Args:
        classify: returns a label such as ``"easy"`` or ``"hard"`` for a prompt.
        scores: the complexity of each label, e.g. ``{"easy": 0.1, "hard": 0.9}``.
    """
    if any(not 0 <= s <= 1 for s in scores.values()):
        raise ConfigError("label scores must lie in [0, 1]")
    from governor.cascade._checks import refuse_async

    refuse_async(classify, "from_labels' classifier", "returns the label")

    def estimate(text: str) -> float:
        label = classify(text).strip().lower()
        if label not in scores:
            raise ConfigError(
                f"classifier returned label {label!r}; known: {sorted(scores)}"
            )
        return scores[label]

    return estimate


def start_tier(complexity: float, thresholds: Sequence[float]) -> int:
    """Return the index of the first tier: how many thresholds are reached."""
    return bisect.bisect_right(list(thresholds), complexity)
