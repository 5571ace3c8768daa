"""Exact conversions between aware datetimes and integer epoch microseconds."""

from __future__ import annotations

from datetime import UTC, datetime

__all__ = ["from_us", "to_us"]

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def to_us(ts: datetime) -> int:
    """Microseconds since the Unix epoch; integer arithmetic keeps them exact."""
    delta = ts - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def from_us(ts_us: int) -> datetime:
    """The UTC datetime ``ts_us`` microseconds after the Unix epoch."""
    seconds, micros = divmod(ts_us, 1_000_000)
    return datetime.fromtimestamp(seconds, UTC).replace(microsecond=micros)
