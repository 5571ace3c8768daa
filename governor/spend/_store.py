"""The spend store interface and the record filter every store shares."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from datetime import datetime
from typing import Protocol, runtime_checkable

from governor._errors import ConfigError
from governor.policies._model import as_name
from governor.spend._record import OUTCOMES, SpendRecord

__all__ = [
    "FILTER_FIELDS",
    "Filters",
    "SpendStore",
    "check_bounds",
    "check_filters",
    "in_range",
    "matches",
]

FILTER_FIELDS: tuple[str, ...] = (
    "task_id",
    "call_id",
    "model",
    "provider",
    "outcome",
    "team",
    "feature",
    "environment",
    "user",
    "session",
    "org",
)
TAG_PREFIX = "tag."

Filters = Mapping[str, str | None]
"""Equality filters: a field of :data:`FILTER_FIELDS` or ``"tag.<name>"`` to the
value it must have; None matches records where it is unset."""


@runtime_checkable
class SpendStore(Protocol):
    """Where spend records go. Implementations must be thread-safe."""

    def record(self, rec: SpendRecord) -> None:
        """Store one record."""
        ...

    def record_many(self, recs: Iterable[SpendRecord]) -> None:
        """Store several records in one write where the backend allows it."""
        ...

    def query(
        self,
        since: datetime | None = None,
        until: datetime | None = None,
        filters: Filters | None = None,
    ) -> Iterator[SpendRecord]:
        """Yield the records with ``since <= ts < until`` that match ``filters``.

        Records come in time order. Either bound may be None (open).
        """
        ...


def check_filters(filters: Filters | None) -> dict[str, str | None]:
    """Return the filters as a dict, or raise ConfigError naming a bad key.

    Names and values are returned composed (NFC), as records are read, so a
    value typed decomposed matches.
    """
    out: dict[str, str | None] = {}
    for key, value in (filters or {}).items():
        if key not in FILTER_FIELDS and not key.startswith(TAG_PREFIX):
            raise ConfigError(
                f"unknown spend filter {key!r}; use one of "
                f"{', '.join(FILTER_FIELDS)} or 'tag.<name>'"
            )
        composed = None if value is None else as_name(value)
        if key == "outcome" and composed not in OUTCOMES:
            raise ConfigError(
                f"spend filter outcome={value!r} matches no call: an outcome "
                f"is one of {', '.join(OUTCOMES)}"
            )
        out[as_name(key)] = composed
    return out


def matches(rec: SpendRecord, filters: Mapping[str, str | None]) -> bool:
    """Whether a record passes every filter (keys already checked).

    A None filter keeps the records where the field is unset the way a report
    groups it: None, empty or blank.
    """
    for key, wanted in filters.items():
        if key.startswith(TAG_PREFIX):
            actual = rec.tags.get(key[len(TAG_PREFIX) :])
        else:
            actual = getattr(rec, key)
        if wanted is None:
            if actual is not None and actual.strip():
                return False
        elif actual != wanted:
            return False
    return True


def in_range(rec: SpendRecord, since: datetime | None, until: datetime | None) -> bool:
    """Whether ``since <= rec.ts < until``, treating None as open."""
    if since is not None and rec.ts < since:
        return False
    return until is None or rec.ts < until


def check_bounds(*bounds: datetime | None) -> None:
    """Raise ConfigError when a query bound is a naive datetime."""
    for bound in bounds:
        if bound is not None and bound.utcoffset() is None:
            raise ConfigError(
                f"spend query bound {bound.isoformat()} has no time zone; "
                "pass an aware datetime, e.g. datetime(..., tzinfo=UTC)"
            )
