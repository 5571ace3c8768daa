"""Budget periods: which window a moment falls in, its line-key suffix and reset.

Calendar periods (hour, day, week, month) are wall-clock windows in the budget's
time zone: a day runs from local midnight to local midnight (23 or 25 hours on
daylight-saving days), a week is an ISO week starting Monday, a month is the
calendar month. Each window gets its own ledger line, named by a key suffix
such as ``#month:2026-12@Europe/Paris``, so a new window starts from zero with
no reset job, and old windows expire from the store on their own.

A rolling window (``period="rolling"``, the last ``window_s`` seconds) keeps
one line whose spend is kept in :data:`ROLLING_BUCKETS` sub-buckets by the
store; spend leaves the window when its whole bucket is older than the window,
so a charge counts for between ``window_s`` and ``window_s * (1 + 1/60)``
seconds. The error is on the safe side: spend is never forgotten early.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Final, Literal
from zoneinfo import ZoneInfo

from governor._errors import ConfigError
from governor.policies import Budget, Period

__all__ = [
    "ROLLING_BUCKETS",
    "KeyWindow",
    "Window",
    "parse_line_key",
    "window_at",
    "window_for",
]

ROLLING_BUCKETS: Final = 60
"""Sub-buckets per rolling window: the granularity at which spend rolls off."""

_SEP: Final = "#"
_NOMINAL_S: Final[dict[str, float]] = {
    "hour": 3600.0,
    "day": 86400.0,
    "week": 7 * 86400.0,
    "month": 31 * 86400.0,
}
_Calendar = Literal["hour", "day", "week", "month"]


@dataclass(frozen=True, slots=True)
class Window:
    """The budget window a moment falls in.

    Attributes:
        period: the budget's period.
        key_suffix: appended to ``"<scope>:<value>"`` to name the window's line;
            empty for ``total``.
        starts_at: when the window began (rolling: ``window_s`` ago); None for
            ``total``.
        resets_at: when the next window starts; None for ``total`` and
            ``rolling`` (spend rolls off continuously).
        ttl_s: how long the line's counters should live after their last
            change: the rest of the window plus one period, so last window's
            figures stay readable; None keeps them for ever.
        window_s: the rolling window's length, else None.
    """

    period: Period
    key_suffix: str
    starts_at: datetime | None
    resets_at: datetime | None
    ttl_s: float | None
    window_s: float | None = None


@dataclass(frozen=True, slots=True)
class KeyWindow:
    """What a line key says about its window (see :func:`parse_line_key`)."""

    base: str
    period: Period
    timezone: str | None
    starts_at: datetime | None
    resets_at: datetime | None
    window_s: float | None


def window_for(budget: Budget, now: datetime) -> Window:
    """Return the window of ``budget`` that contains ``now``.

    Args:
        budget: the budget; its ``period``, ``timezone`` and ``window_s`` count.
        now: an aware datetime (the engine's clock; tests inject one).

    Raises:
        ConfigError: ``now`` is naive.
    """
    return window_at(budget.period, budget.timezone, now, window_s=budget.window_s)


def window_at(
    period: Period, timezone: str, now: datetime, *, window_s: float | None = None
) -> Window:
    """Return the ``period`` window in ``timezone`` that contains ``now``."""
    if now.tzinfo is None or now.utcoffset() is None:
        raise ConfigError(
            f"now must be an aware datetime, got naive {now.isoformat()}; "
            "pass datetime.now(UTC) or attach a tzinfo"
        )
    if period == "total":
        return Window("total", "", None, None, None)
    if period == "rolling":
        return _rolling(now, window_s)
    return _calendar(period, ZoneInfo(timezone), now)


def parse_line_key(key: str) -> KeyWindow:
    """Read the period and window back from a line key made by this module.

    Keys without a recognised window suffix read as ``total``.
    """
    base, sep, suffix = key.rpartition(_SEP)
    period, _, rest = suffix.partition(":")
    if not sep or not rest:
        return KeyWindow(key, "total", None, None, None, None)
    if period == "rolling" and rest.endswith("s"):
        seconds = _float_or_none(rest[:-1])
        if seconds is not None and seconds > 0:
            return KeyWindow(base, "rolling", None, None, None, seconds)
    if period in _NOMINAL_S:
        parsed = _parse_calendar(period, rest)  # type: ignore[arg-type]  # checked above
        if parsed is not None:
            return KeyWindow(base, *parsed, window_s=None)
    return KeyWindow(key, "total", None, None, None, None)


def _rolling(now: datetime, window_s: float | None) -> Window:
    if window_s is None or window_s <= 0:
        raise ConfigError(
            f"a rolling window needs window_s > 0 seconds, got {window_s!r}"
        )
    suffix = f"{_SEP}rolling:{_seconds_label(window_s)}s"
    ttl_s = float(math.ceil(window_s * (1 + 1 / ROLLING_BUCKETS)))
    start = now - timedelta(seconds=window_s)
    return Window("rolling", suffix, start, None, ttl_s, window_s)


def _calendar(period: _Calendar, zone: ZoneInfo, now: datetime) -> Window:
    local = now.astimezone(zone)
    start, end = _bounds(period, zone, local)
    suffix = f"{_SEP}{period}:{_window_id(period, start)}@{zone.key}"
    return Window(period, suffix, start, end, calendar_ttl(period, end, now))


def calendar_ttl(period: str, resets_at: datetime, now: datetime) -> float:
    """How long a calendar window's line lives after a change at ``now``:
    the rest of the window plus one period, in whole seconds rounded up."""
    return float(math.ceil((resets_at - now).total_seconds() + _NOMINAL_S[period]))


def _bounds(
    period: _Calendar, zone: ZoneInfo, local: datetime
) -> tuple[datetime, datetime]:
    if period == "hour":
        return _hour_bounds(zone, local)
    day = local.date()
    if period == "day":
        first, after = day, day + timedelta(days=1)
    elif period == "week":
        first = day - timedelta(days=day.weekday())
        after = first + timedelta(days=7)
    else:
        first = day.replace(day=1)
        after = _next_month(first)
    return _midnight(first, zone), _midnight(after, zone)


def _hour_bounds(zone: ZoneInfo, local: datetime) -> tuple[datetime, datetime]:
    """The wall-clock hour holding ``local``, in real time.

    Stepped back and forward in real time at the current UTC offset, so a
    fall-back night's two 01:00 hours are two windows. A clock change inside
    that span cuts the hour there: after Lord Howe's half-hour change at
    02:00, local "02:30" to "03:00" is an hour window of 30 minutes, as a
    spring-forward day is a day of 23 hours; windows never overlap.
    """
    now = local.astimezone(UTC)
    into = timedelta(
        minutes=local.minute, seconds=local.second, microseconds=local.microsecond
    )
    start, end = now - into, now - into + timedelta(hours=1)
    offset = local.utcoffset()
    if start.astimezone(zone).utcoffset() != offset:
        start = _clock_change(zone, start, now)
    if (end - _SECOND).astimezone(zone).utcoffset() != offset:
        end = _clock_change(zone, now, end - _SECOND)
    return start.astimezone(zone), end.astimezone(zone)


_SECOND = timedelta(seconds=1)


def _clock_change(zone: ZoneInfo, before: datetime, after: datetime) -> datetime:
    """The first whole second after ``before`` at which ``zone`` has the UTC
    offset it has at ``after`` (one change lies between them)."""
    wanted = after.astimezone(zone).utcoffset()
    low = before.replace(microsecond=0)
    high = after.replace(microsecond=0) + _SECOND
    while high - low > _SECOND:
        middle = low + (high - low) / 2
        middle = middle.replace(microsecond=0)
        if middle.astimezone(zone).utcoffset() == wanted:
            high = middle
        else:
            low = middle
    return high


def _midnight(day: date, zone: ZoneInfo) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=zone)


def _next_month(first: date) -> date:
    if first.month == 12:
        return date(first.year + 1, 1, 1)
    return date(first.year, first.month + 1, 1)


def _window_id(period: _Calendar, start: datetime) -> str:
    if period == "hour":
        # The UTC offset tells apart the two 01:00 hours of a fall-back night;
        # minutes appear only for hours that start at a half hour (Lord Howe).
        return start.strftime("%Y-%m-%dT%H%M%z" if start.minute else "%Y-%m-%dT%H%z")
    if period == "day":
        return start.strftime("%Y-%m-%d")
    if period == "week":
        year, week, _ = start.isocalendar()
        return f"{year:04d}-W{week:02d}"
    return start.strftime("%Y-%m")


def _parse_calendar(
    period: _Calendar, rest: str
) -> tuple[Period, str, datetime, datetime] | None:
    window_id, at, zone_name = rest.rpartition("@")
    if not at:
        return None
    try:
        zone = ZoneInfo(zone_name)
        start = _start_from_id(period, window_id, zone)
    except (ValueError, KeyError):
        return None
    first, after = _bounds(period, zone, start.astimezone(zone))
    return period, zone.key, first, after


def _start_from_id(period: _Calendar, window_id: str, zone: ZoneInfo) -> datetime:
    if period == "hour":
        with_minutes = len(window_id.partition("T")[2]) > len("HH+hhmm")
        return datetime.strptime(
            window_id, "%Y-%m-%dT%H%M%z" if with_minutes else "%Y-%m-%dT%H%z"
        )
    if period == "week":
        return datetime.strptime(window_id + "-1", "%G-W%V-%u").replace(tzinfo=zone)
    fmt = "%Y-%m-%d" if period == "day" else "%Y-%m"
    return datetime.strptime(window_id, fmt).replace(tzinfo=zone)


def _seconds_label(seconds: float) -> str:
    return str(int(seconds)) if float(seconds).is_integer() else repr(float(seconds))


def _float_or_none(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None
