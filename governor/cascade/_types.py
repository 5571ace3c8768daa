"""The values a cascade trades in: answers, check results, attempts, results."""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal
from typing import Literal

from governor._errors import ConfigError
from governor.policies._cascade import Tier

__all__ = [
    "Answer",
    "Attempt",
    "CascadeResult",
    "CheckResult",
    "ErrorKind",
    "Outcome",
    "ToolCall",
]

ErrorKind = Literal[
    "rate_limit",
    "server",
    "timeout",
    "connection",
    "content_policy",
    "context_window",
    "auth",
    "not_found",
    "bad_request",
    "budget",
]
"""Provider failures the cascade recognises; anything else propagates."""

Outcome = Literal["accepted", "rejected", "error", "skipped"]
"""``skipped`` attempts were never sent: over budget, cooling down, too long."""


@dataclass(frozen=True, slots=True)
class ToolCall:
    """One tool call an answer makes.

    Attributes:
        name: the function's name.
        arguments: its arguments as the model wrote them (JSON text).
    """

    name: str
    arguments: str = ""


@dataclass(frozen=True, slots=True)
class Answer:
    """One model answer, as the caller's ``call`` function reports it.

    Attributes:
        text: the answer text (first choice).
        model: the model that produced it, as the provider named it.
        cost_usd: what the call cost, when known.
        samples: the texts of further choices (a call with ``n`` > 1), which
            the agreement check counts.
        token_logprobs: per-token log-probabilities, when the provider
            returned them.
        tool_calls: the tool calls of the first choice, when it calls tools;
            the checks judge such an answer by its calls (see
            ``docs/cascade.md``).
        raw: the provider's response object, untouched, for the caller.
    """

    text: str
    model: str = ""
    cost_usd: Decimal | None = None
    samples: tuple[str, ...] = ()
    token_logprobs: tuple[float, ...] | None = None
    tool_calls: tuple[ToolCall, ...] = ()
    raw: object = field(default=None, compare=False, repr=False)


@dataclass(frozen=True, slots=True)
class CheckResult:
    """What one check said about one answer.

    ``score`` is the number the check compared, when it has one (a judge's
    score, a mean log-probability, an agreeing-sample count).
    """

    check: str
    passed: bool
    reason: str = ""
    score: float | None = None

    def __post_init__(self) -> None:
        passed = truth(self.passed)
        if passed is None:
            raise ConfigError(
                f"CheckResult of check {self.check!r} has passed="
                f"{shown(self.passed)}; give True or False (a string such as "
                "'False' or a number is not read as a verdict)"
            )
        object.__setattr__(self, "passed", passed)  # NumPy's bool_ as bool


@dataclass(frozen=True, slots=True)
class Attempt:
    """One step of a cascade run, sent or skipped.

    Attributes:
        tier: the tier's name.
        model: the tier's model.
        outcome: ``accepted``, ``rejected`` (a check failed), ``error`` (the
            provider failed) or ``skipped`` (never sent).
        reason: why, in words, e.g. ``"rate_limit: retry after 2.0 s"``.
        sent: True when the request went to the provider (False when the
            attempt was skipped or answered from the response cache).
        cost_usd: the attempt's cost when known; None for errors the
            provider did not bill and for skips.
        error_kind: the classified provider error, for ``error`` and for
            budget skips.
        checks: every check's result, for ``accepted`` and ``rejected``.
        wait_s: seconds slept after this attempt before the next one.
        started_ns: wall-clock start of a sent attempt, in epoch nanoseconds
            (for a span's start time); None for skips.
        ended_ns: its end, likewise.
        brief: the reason without text of the conversation (a provider
            error's kind and class, the failed check's name), for telemetry
            that captures no message content; empty when ``reason`` holds
            none.
    """

    tier: str
    model: str
    outcome: Outcome
    reason: str
    sent: bool
    cost_usd: Decimal | None = None
    error_kind: ErrorKind | None = None
    checks: tuple[CheckResult, ...] = ()
    wait_s: float = 0.0
    started_ns: int | None = None
    ended_ns: int | None = None
    brief: str = ""

    def describe(self) -> str:
        """Return a one-line account, e.g. ``"cheap (gpt-4o-mini): error ..."``."""
        return f"{self.tier} ({self.model}): {self.outcome}: {self.reason}"


@dataclass(frozen=True, slots=True)
class CascadeResult:
    """The answer a cascade settled on and how it got there.

    Attributes:
        answer: the answer returned to the caller.
        tier: the tier that produced it.
        accepted: False when no answer passed its checks and the policy
            (``on_all_rejected="return"``) returns the best one anyway.
        attempts: every attempt in order, skipped ones included.
        start_tier: the index of the first tier tried (pre-call tiering).
        complexity: the pre-call estimate, when pre-call tiering ran.
        other_cost_usd: what governed calls made on the run's behalf that
            are not attempts cost: an LLM judge's calls, a model used as the
            pre-call classifier. ``GovernedLiteLLM.cascade`` measures it;
            a caller driving the runner itself may set it.
    """

    answer: Answer
    tier: Tier
    accepted: bool
    attempts: tuple[Attempt, ...]
    start_tier: int = 0
    complexity: float | None = None
    other_cost_usd: Decimal = Decimal(0)

    @property
    def attempts_cost_usd(self) -> Decimal:
        """The known cost of every attempt, rejected ones included."""
        return sum(
            (a.cost_usd for a in self.attempts if a.cost_usd is not None), Decimal(0)
        )

    @property
    def cost_usd(self) -> Decimal:
        """What the run cost: every attempt, and the calls made on its behalf."""
        return self.attempts_cost_usd + self.other_cost_usd

    @property
    def sent_attempts(self) -> int:
        """How many requests went to a provider."""
        return sum(1 for a in self.attempts if a.sent)


def truth(value: object) -> bool | None:
    """``value`` as a bool when it is one: Python's, or NumPy's ``bool_``."""
    if isinstance(value, bool):
        return value
    kind = type(value)
    if kind.__module__ == "numpy" and kind.__name__ in ("bool", "bool_"):
        return bool(value)  # NumPy 2 names its scalar type "bool", 1 "bool_"
    return None


def shown(value: object) -> str:
    """A value's type and a short repr, for error messages."""
    text = repr(value)
    text = text if len(text) <= 60 else text[:57] + "..."
    kind = type(value)
    module = "" if kind.__module__ == "builtins" else kind.__module__ + "."
    return f"{module}{kind.__qualname__} {text}"
