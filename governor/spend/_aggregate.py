"""Sums of spend records by team, feature, model, day and other keys."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal

from governor._errors import ConfigError, decimal_text
from governor.policies._model import as_name
from governor.spend._record import SpendRecord

__all__ = ["GROUPINGS", "Group", "SpendSummary", "Totals", "summarize"]

GROUPINGS: tuple[str, ...] = (
    "team",
    "feature",
    "model",
    "day",
    "hour",
    "environment",
    "provider",
    "user",
    "session",
    "org",
    "task",
)
"""Keys spend can be grouped by; ``"tag.<name>"`` groups by a free-form tag."""

NONE_KEY = "(none)"
"""The key of the row of calls with the grouped field unset (see ``Group.unset``)."""
_TIME_ORDERED = ("day", "hour")


@dataclass(slots=True)
class Totals:
    """Sums over a set of calls. Money is exact Decimal dollars."""

    calls: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: Decimal = Decimal(0)
    saved_usd: Decimal = Decimal(0)
    cache_hits: int = 0
    refused: int = 0
    errors: int = 0

    def add(self, rec: SpendRecord) -> None:
        """Count one record in."""
        self.calls += 1
        self.input_tokens += rec.input_tokens
        self.output_tokens += rec.output_tokens
        self.cost_usd += rec.cost_usd
        self.saved_usd += rec.saved_usd
        self.cache_hits += rec.cache_hit
        self.refused += rec.outcome == "refused"
        self.errors += rec.outcome == "error"

    def to_json_dict(self) -> dict[str, object]:
        """JSON-safe values; money as plain decimal strings (never "1E-7")."""
        return {
            "calls": self.calls,
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "cost_usd": decimal_text(self.cost_usd),
            "saved_usd": decimal_text(self.saved_usd),
            "cache_hits": self.cache_hits,
            "refused": self.refused,
            "errors": self.errors,
        }


@dataclass(frozen=True, slots=True)
class Group:
    """One row of a grouping: the key's value and its totals.

    ``unset`` marks the row of calls whose grouped field is unset (None, an
    empty or a blank string); its ``key`` is ``"(none)"``, which a value
    named "(none)" shares, so tell the two apart by ``unset``.
    """

    key: str
    totals: Totals
    unset: bool = False

    @property
    def label(self) -> str:
        """The key as tables and charts show it: never read as the unset row.

        The unset row reads ``(none)``; a value that would read the same, or
        that starts with a double quote, is quoted as JSON writes it.
        """
        if self.unset:
            return NONE_KEY
        if self.key == NONE_KEY or self.key.startswith('"'):
            return json.dumps(self.key, ensure_ascii=False)
        return self.key


@dataclass(frozen=True, slots=True)
class SpendSummary:
    """A report's numbers: overall totals, each grouping, the first and last call."""

    total: Totals
    groups: dict[str, list[Group]]
    first_ts: datetime | None
    last_ts: datetime | None
    by: tuple[str, ...] = field(default=())


def check_grouping(by: str) -> str:
    """Return ``by`` if spend can be grouped by it, else raise ConfigError.

    A tag name is returned composed (NFC), as records keep their tags.
    """
    if by in GROUPINGS:
        return by
    if by.startswith("tag.") and len(by) > len("tag."):
        return as_name(by)
    raise ConfigError(
        f"cannot group spend by {by!r}; use one of {', '.join(GROUPINGS)} "
        "or 'tag.<name>'"
    )


def key_of(rec: SpendRecord, by: str) -> str | None:
    """The value of grouping ``by`` for one record, None when unset.

    An empty or blank attribution value counts as unset: the governor never
    records one (``Attribution`` refuses it), so only hand-made records carry
    it, and a row of its own would read as a blank name.
    """
    if by == "day":
        return rec.ts.date().isoformat()  # four-digit years, as ISO 8601
    if by == "hour":
        return f"{rec.ts.date().isoformat()}T{rec.ts.hour:02d}:00Z"
    if by == "task":
        return rec.task_id
    if by.startswith("tag."):
        value = rec.tags.get(by[len("tag.") :])
    else:
        value = getattr(rec, by)
    return None if value is None or not str(value).strip() else str(value)


def summarize(records: Iterable[SpendRecord], by: Sequence[str]) -> SpendSummary:
    """Sum ``records`` once per grouping in ``by``, in one pass.

    Groups are sorted by cost, highest first; ``day`` and ``hour`` by time.
    Calls with the grouped field unset share one row (``Group.unset``).
    """
    wanted = tuple(check_grouping(b) for b in by)
    total = Totals()
    tables: dict[str, dict[str | None, Totals]] = {b: {} for b in wanted}
    first: datetime | None = None
    last: datetime | None = None
    for rec in records:
        total.add(rec)
        first = rec.ts if first is None or rec.ts < first else first
        last = rec.ts if last is None or rec.ts > last else last
        for b, table in tables.items():
            table.setdefault(key_of(rec, b), Totals()).add(rec)
    groups = {b: _ordered(b, table) for b, table in tables.items()}
    return SpendSummary(total, groups, first, last, wanted)


def _ordered(by: str, table: dict[str | None, Totals]) -> list[Group]:
    rows = [
        Group(NONE_KEY if key is None else key, totals, unset=key is None)
        for key, totals in table.items()
    ]
    if by in _TIME_ORDERED:
        return sorted(rows, key=lambda g: g.key)
    return sorted(rows, key=lambda g: (-g.totals.cost_usd, g.key, g.unset))
