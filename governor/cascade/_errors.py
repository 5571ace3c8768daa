"""Errors a cascade raises when no tier gives an answer it can return."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from decimal import Decimal
from typing import Any

from governor._errors import BudgetExceeded, GovernorHalt
from governor.cascade._types import Attempt
from governor.policies._base import mask_credentials

__all__ = ["CascadeBudgetExceeded", "CascadeExhausted"]


_ADVICE = "Add a tier, relax the checks, or raise Cascade.retry.max_attempts."


def _listing(attempts: Sequence[Attempt]) -> str:
    """The attempts in order, ending without a full stop (one follows)."""
    if not attempts:
        return "no tier was tried"
    return "; ".join(
        f"{i}. {a.describe().rstrip('. ')}" for i, a in enumerate(attempts, 1)
    )


class CascadeExhausted(GovernorHalt):
    """Every tier of a cascade failed, was rejected or was skipped.

    Attributes:
        attempts: every attempt in order, each with its outcome and reason.
        tiers: the names of the tiers considered.
        reason: why no answer was returned, in words.
        spent_usd: what the cascade run spent (every attempt, and the calls
            made on its behalf, such as an LLM judge's), not the task's.
        spent_tokens: the tokens of those calls, likewise the run's.
    """

    code = "cascade_exhausted"

    def __init__(
        self,
        attempts: Sequence[Attempt],
        *,
        reason: str,
        tiers: Sequence[str] = (),
        task_id: str | None = None,
        spent_usd: Decimal = Decimal(0),
        spent_tokens: int = 0,
        advice: str = _ADVICE,
    ) -> None:
        self.attempts = tuple(_masked(a) for a in attempts)
        self.tiers = tuple(tiers)
        self.reason = mask_credentials(reason)
        # Named, not super(): in CascadeBudgetExceeded the next class in the
        # MRO is BudgetExceeded, whose constructor takes the budget fields.
        GovernorHalt.__init__(
            self,
            f"the cascade found no answer to return: {self.reason}. Attempts: "
            f"{_listing(self.attempts)}. {advice}",
            task_id=task_id,
            spent_usd=spent_usd,
            spent_tokens=spent_tokens,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            **super().to_dict(),
            "tiers": list(self.tiers),
            "attempts": [_attempt_dict(a) for a in self.attempts],
        }


class CascadeBudgetExceeded(CascadeExhausted, BudgetExceeded):
    """No tier of a cascade fits the remaining budget; nothing more was sent.

    It is a :class:`~governor.BudgetExceeded` too, so handlers of budget stops
    catch it. The budget fields come from the cheapest tier's refusal when
    the budget probe returned one; otherwise they are zero and ``scope`` is
    ``"unknown"``. As on any :class:`CascadeExhausted`, ``spent_usd`` and
    ``spent_tokens`` are the cascade run's spend, not the task's.
    """

    code = "cascade_budget_exceeded"

    def __init__(
        self,
        attempts: Sequence[Attempt],
        *,
        tiers: Sequence[str],
        refusal: BudgetExceeded | None = None,
        task_id: str | None = None,
        spent_usd: Decimal = Decimal(0),
        spent_tokens: int = 0,
    ) -> None:
        zero = Decimal(0)
        self.scope = refusal.scope if refusal else "unknown"
        self.unit = refusal.unit if refusal else "usd"
        self.limit = refusal.limit if refusal else zero
        self.spent = refusal.spent if refusal else zero
        self.reserved = refusal.reserved if refusal else zero
        self.requested = refusal.requested if refusal else zero
        self.model = refusal.model if refusal else ""
        self.holds_lapse_s = refusal.holds_lapse_s if refusal else None
        self.resets_at = refusal.resets_at if refusal else None
        detail = f" ({refusal})" if refusal else ""
        CascadeExhausted.__init__(
            self,
            attempts,
            reason=f"no tier fits the remaining budget of the tiers considered "
            f"{', '.join(tiers)}{detail}",
            tiers=tiers,
            task_id=task_id,
            spent_usd=spent_usd,
            spent_tokens=spent_tokens,
            advice="Raise the budget's limit, lower max_tokens, or add a cheaper tier.",
        )


def _masked(attempt: Attempt) -> Attempt:
    """A failed attempt with credentials its provider's error echoed masked
    in its reason: the error's message, ``to_dict()`` and pickles never
    carry them. A check's reason is kept as it is."""
    if attempt.outcome != "error":
        return attempt
    reason = mask_credentials(attempt.reason)
    return attempt if reason == attempt.reason else replace(attempt, reason=reason)


def _attempt_dict(attempt: Attempt) -> dict[str, Any]:
    return {
        "tier": attempt.tier,
        "model": attempt.model,
        "outcome": attempt.outcome,
        "reason": attempt.reason,
        "sent": attempt.sent,
        "cost_usd": None if attempt.cost_usd is None else str(attempt.cost_usd),
        "error_kind": attempt.error_kind,
    }
