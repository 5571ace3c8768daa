"""Which budgets apply to a call, and the ledger lines that enforce them.

A budget applies to a call when the call's attribution has a value for the
budget's scope (the task id for ``scope="task"``) and, for a budget with a
``key``, that value equals the key. Each applying budget becomes one ledger
line named ``"<scope>:<value>"`` plus its window's suffix, e.g.
``"team:search#day:2026-12-04@UTC"``; the engine reserves on all of them in
one atomic step, so a call must fit every budget at once.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Final

from governor._money import usd_to_nanos
from governor.budgets._periods import Window, window_for
from governor.policies import SCOPES, Budget, Scope
from governor.policies._model import with_limits_from
from governor.stores import Line

__all__ = [
    "DEFAULT_TASK_TTL_S",
    "SESSION_TTL_S",
    "LineSpec",
    "RollingLine",
    "lines_for",
]

DEFAULT_TASK_TTL_S: Final = 86400.0
"""How long a task's line outlives its last change: a day, for reports."""

SESSION_TTL_S: Final = 30 * 86400.0
"""How long a session's whole-session line (period ``total``) outlives its
last change: a conversation idle for 30 days starts afresh. Sessions come
and go like tasks, so without an end their lines would pile up for ever."""

_ORDER: Final = {scope: index for index, scope in enumerate(SCOPES)}


@dataclass(frozen=True, slots=True)
class RollingLine(Line):
    """A :class:`Line` whose spend counts only for the last ``window_s`` seconds.

    Both stores read ``window_s`` and keep the spend in sub-buckets that
    leave the window as they age; a store that did not would treat the line
    as a plain one living ``ttl_s`` after its last change, which errs on the
    safe side (spend is never forgotten early).
    """

    window_s: float | None = None


@dataclass(frozen=True, slots=True)
class LineSpec:
    """One applying budget, ready for the ledger.

    Attributes:
        key: the ledger line key, window suffix included.
        scope: the budget's scope.
        value: the attribution value (the task id for ``task``).
        limit_nanos: the dollar limit in nano-dollars, or None.
        limit_tokens: the token limit, or None.
        window: the current window (reset time, ttl).
        budget: the budget this line enforces (``warn_at`` and so on).
    """

    key: str
    scope: Scope
    value: str
    limit_nanos: int | None
    limit_tokens: int | None
    window: Window
    budget: Budget

    def line(self, *, task_ttl_s: float = DEFAULT_TASK_TTL_S) -> Line:
        """Return the ledger :class:`Line` for this budget.

        Args:
            task_ttl_s: how long a task line outlives its last change.
        """
        ttl_s = self.window.ttl_s
        if self.scope == "task":
            ttl_s = task_ttl_s
        elif self.scope == "session" and ttl_s is None:
            ttl_s = SESSION_TTL_S
        if self.window.window_s is not None:
            return RollingLine(
                self.key,
                self.limit_nanos,
                self.limit_tokens,
                ttl_s,
                self.window.window_s,
            )
        return Line(self.key, self.limit_nanos, self.limit_tokens, ttl_s)


def lines_for(
    policy_budgets: Iterable[Budget],
    attribution_values: Mapping[str, str],
    task_id: str,
    now: datetime,
) -> list[LineSpec]:
    """Return a line for every budget that applies to a call, narrowest first.

    A budget with a ``key`` overrides the scope-wide budget (no key) of the
    same scope, period and rolling window for that value, whatever the time
    zone of either, limit by limit: the limits it sets (``max_usd``,
    ``max_tokens``) replace the scope-wide one's, and a limit it leaves unset
    is inherited from it. "Every team $1, team search $0.0001" gives team
    search one line, at $0.0001; "every team $1 a month, team search 1M
    tokens a month" gives it one monthly line at $1 and 1M tokens. The line
    is the keyed budget's in every other respect (its window, time zone and
    ``warn_at``), and :attr:`LineSpec.budget` is the keyed budget with the
    inherited limits filled in.

    Args:
        policy_budgets: the policy's budgets.
        attribution_values: the call's scope values, e.g. ``{"team": "search"}``
            (:meth:`governor.policies.Attribution.scope_values`).
        task_id: the id of the task the call belongs to.
        now: an aware datetime, the moment of the call.
    """
    # A policy holds one budget per scope, key, period and rolling window
    # (time zones aside), so a keyed budget overrides the one in its slot
    # whatever its own time zone; rolling budgets of other windows (an hour
    # and a day) all apply.
    by_slot: dict[tuple[str, str, float | None], _Slot] = {}
    for budget in policy_budgets:
        value = (
            task_id if budget.scope == "task" else attribution_values.get(budget.scope)
        )
        if value is None or (budget.key is not None and budget.key != value):
            continue
        slot = by_slot.setdefault(
            (budget.scope, budget.period, budget.window_s), _Slot(value)
        )
        if budget.key is not None:
            slot.keyed = budget
        elif slot.wide is None:
            slot.wide = budget
    specs = [_spec(slot.budget(), slot.value, now) for slot in by_slot.values()]
    return sorted(specs, key=lambda spec: _ORDER[spec.scope])


@dataclass(slots=True)
class _Slot:
    """The budgets of one scope, period and rolling window for one value."""

    value: str
    wide: Budget | None = None
    keyed: Budget | None = None

    def budget(self) -> Budget:
        """The budget that applies: the keyed one, with any limit it leaves
        unset taken from the scope-wide one; else the scope-wide one."""
        if self.keyed is None:
            assert self.wide is not None  # a slot is made for a budget
            return self.wide
        if self.wide is None:
            return self.keyed
        return with_limits_from(self.keyed, self.wide)


def _spec(budget: Budget, value: str, now: datetime) -> LineSpec:
    window = window_for(budget, now)
    limit_nanos = None if budget.max_usd is None else usd_to_nanos(budget.max_usd)
    return LineSpec(
        key=f"{budget.scope}:{value}{window.key_suffix}",
        scope=budget.scope,
        value=value,
        limit_nanos=limit_nanos,
        limit_tokens=budget.max_tokens,
        window=window,
        budget=budget,
    )
