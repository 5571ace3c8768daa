"""The anomaly detector: a pure state machine fed with timestamped spend.

It does no I/O and reads no clock: time is the timestamp of each observation,
so replaying a trace gives the alerts a live run would have given. Not
thread-safe; :class:`governor.anomaly.AnomalyMonitor` adds the lock.
"""

from __future__ import annotations

import math
import statistics
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from decimal import Decimal
from itertools import islice, pairwise
from typing import Any, Literal

from governor._money import nanos_to_usd, usd_to_nanos
from governor.anomaly._settings import Anomalies, Metric
from governor.spend._record import SpendRecord
from governor.spend._time import from_us, to_us

__all__ = ["Alert", "AnomalyDetector", "Finding", "Rule", "scopes_of"]

Rule = Literal["deviation", "burst", "peers"]

# Kinds of scope, narrowest first: a scope can explain an alert only on a scope
# of a wider kind (a session's spend is part of its user's, a user's part of its
# team's, a team's part of everything).
_NARROW_RANK = {
    "session": 0,
    "user": 1,
    "feature": 2,
    "team": 3,
    "org": 4,
    "environment": 5,
    "model": 6,
    "provider": 7,
    "all": 8,
}


@dataclass(frozen=True, slots=True)
class Finding:
    """One rule that fired on one metric: the numbers behind an alert.

    Amounts are in the metric's unit (US dollars or tokens). ``observed`` is
    the interval's spend so far for the deviation and peers rules and the
    burst window's spend for the burst rule; ``threshold`` is what it
    exceeded. ``baseline_mean`` and ``baseline_std`` are the per-interval
    level and spread the threshold came from (for the peers rule, the typical
    established peer's level and spread).
    """

    metric: Metric
    rule: Rule
    observed: Decimal
    threshold: Decimal
    baseline_mean: Decimal
    baseline_std: Decimal

    def describe(self) -> str:
        """``0.41 USD in this interval exceeds 0.28 (...)``."""
        unit = "USD" if self.metric == "usd" else "tokens"
        where = "the burst window" if self.rule == "burst" else "this interval"
        return (
            f"{self.observed} {unit} in {where} exceeds {self.threshold} "
            f"(baseline mean {self.baseline_mean}, std {self.baseline_std} "
            "per interval)"
        )

    def to_json_dict(self) -> dict[str, str]:
        """JSON-safe values; amounts as decimal strings."""
        return {
            "metric": self.metric,
            "rule": self.rule,
            "observed": str(self.observed),
            "threshold": str(self.threshold),
            "baseline_mean": str(self.baseline_mean),
            "baseline_std": str(self.baseline_std),
        }


@dataclass(frozen=True, slots=True)
class Alert:
    """One anomaly episode on one scope: when it began and every rule that fired.

    A scope raises one alert per episode. The top-level ``metric``, ``rule``,
    ``observed``, ``threshold``, ``baseline_mean`` and ``baseline_std`` are
    those of the first entry of ``findings``, which lists every metric and
    rule that fired on the call that opened the episode. ``explained_by``
    names the scopes of a narrower kind seen under this one in the interval
    (the users of a team, say), whatever call crossed the line, whose own
    excess accounts for this scope's (a regular job within its own rules'
    line never does): narrowest kind first, then the largest excess.
    Auto-tighten acts on the first of them it may tighten rather than on
    ``scope``.
    """

    scope: str
    metric: Metric
    rule: Rule
    ts: datetime
    interval_start: datetime
    observed: Decimal
    threshold: Decimal
    baseline_mean: Decimal
    baseline_std: Decimal
    findings: tuple[Finding, ...] = ()
    explained_by: tuple[str, ...] = ()

    def all_findings(self) -> tuple[Finding, ...]:
        """``findings``, or the top-level numbers when built without them."""
        if self.findings:
            return self.findings
        return (
            Finding(
                self.metric,
                self.rule,
                self.observed,
                self.threshold,
                self.baseline_mean,
                self.baseline_std,
            ),
        )

    def describe(self) -> str:
        """A one-line account of the alert for logs and messages."""
        first, *rest = self.all_findings()
        text = f"spend anomaly ({first.rule}) on {self.scope}: {first.describe()}"
        if rest:
            also = ", ".join(
                f"{f.rule} {f.metric} {f.observed} > {f.threshold}" for f in rest
            )
            text += f"; also {also}"
        if self.explained_by:
            text += f"; explained by {', '.join(self.explained_by)}"
        return text

    def to_json_dict(self) -> dict[str, Any]:
        """JSON-safe values; amounts as decimal strings, times as ISO 8601."""
        return {
            "scope": self.scope,
            "metric": self.metric,
            "rule": self.rule,
            "ts": self.ts.isoformat(),
            "interval_start": self.interval_start.isoformat(),
            "observed": str(self.observed),
            "threshold": str(self.threshold),
            "baseline_mean": str(self.baseline_mean),
            "baseline_std": str(self.baseline_std),
            "findings": [f.to_json_dict() for f in self.all_findings()],
            "explained_by": list(self.explained_by),
            "message": self.describe(),
        }


def scopes_of(rec: SpendRecord, scopes: Iterable[str]) -> list[str]:
    """The scope keys a record counts towards, e.g. ``["all", "team:search"]``.

    A scope whose attribute the record lacks is skipped.
    """
    keys: list[str] = []
    for scope in scopes:
        if scope == "all":
            keys.append("all")
        elif (value := getattr(rec, scope)) is not None:
            keys.append(f"{scope}:{value}")
    return keys


@dataclass(frozen=True, slots=True)
class _Trip:
    """A rule over its threshold on one call, in integer units as floats.

    ``regular``: the spend of the regular jobs under the scope left to their
    own rules, which ``threshold`` allows on top of the scope's own line (see
    :meth:`AnomalyDetector._regular_allowance`).
    """

    metric: Metric
    rule: Rule
    observed: float
    threshold: float
    mean: float
    std: float
    regular: float = 0.0


class _Series:
    """One scope's and metric's intervals, in integer units (nanos or tokens)."""

    __slots__ = (
        "active",
        "active_peak",
        "closed",
        "current",
        "current_sq",
        "history",
        "index",
        "late",
        "level",
        "level_intervals",
        "mean",
        "paused",
        "peak",
        "peak_median",
        "peaks",
        "recent",
        "recent_sum",
        "regular",
        "regular_before",
        "spread",
        "squares",
        "std",
        "trend",
        "under",
        "unit",
        "window",
    )

    def __init__(self, settings: Anomalies, index: int) -> None:
        self.window = settings.window_intervals
        self.trend = settings.deviation_baseline == "trend"
        self.level_intervals = settings.level_intervals
        self.index = index
        self.current = 0
        self.current_sq = 0
        self.history: deque[int] = deque(maxlen=self.window)
        # Per closed interval, the sum of each call's amount squared: with the
        # sums it gives the size of a typical call, the unit of count noise.
        self.squares: deque[int] = deque(maxlen=self.window)
        self.recent: deque[tuple[int, int]] = deque()
        # Late observations in the burst window, in order of arrival: the
        # latest time seen when each came (see add), its own stamp, amount.
        self.late: deque[tuple[int, int, int]] = deque()
        self.recent_sum = 0
        self.mean = 0.0
        self.std = 0.0
        self.level = 0.0
        self.spread = 0.0
        self.unit = 0.0
        # Peak burst-window spend per closed interval, kept only when the
        # burst rule compares against the scope's usual peaks.
        self.peaks: deque[int] | None = None
        if settings.burst_peak_factor is not None:
            self.peaks = deque(maxlen=self.window)
        self.peak = 0
        self.peak_median = 0.0
        # The usual spend and call size of an interval the scope is active
        # in, as moving averages (see _Active): a window mostly silent after
        # a pause (a night off) is judged by them. ``closed`` holds the last
        # two closed intervals' spend and sum of squares.
        self.active = _Active(min(self.level_intervals, self.window))
        # The usual peak burst-window spend of an interval with spend, and
        # whether the window is one after a pause (see roll).
        self.active_peak = 0.0
        self.paused = False
        self.closed: deque[tuple[int, int]] = deque(maxlen=2)
        # The scopes of narrower kinds fed with this one in the open interval;
        # those of them judged as regular jobs (see _note_regular), and those
        # of the interval before when it directly precedes the open one (their
        # calls may still be in the burst window).
        self.under: set[str] = set()
        self.regular: set[str] = set()
        self.regular_before: set[str] = set()

    def roll(self, index: int) -> None:
        """Close intervals up to ``index``; silent intervals count as zero.

        A window mostly silent after a long pause (a night off, an hourly
        job, see :func:`_paused`) says little of the rate the scope runs at
        while active: its level is at least the scope's usual spend in an
        interval with spend (a moving average, which follows a scope that
        changes its rhythm), so traffic that resumes at its usual rate does
        not alert and a runaway that starts as it resumes does.
        """
        if index <= self.index:
            return  # a late observation is counted in the open interval
        self._fold(self.current, self.current_sq, index - self.index - 1)
        if self.current:
            # Its first interval with spend sets it, as _Active's averages
            # start at their first point: from zero, a job seen a few times
            # would be taken to peak at a fraction of what it does.
            w = self.active.weight if self.active_peak else 1.0
            self.active_peak += w * (self.peak - self.active_peak)
        gap = min(index - self.index - 1, self.window)
        self.history.append(self.current)
        self.history.extend([0] * gap)
        self.squares.append(self.current_sq)
        self.squares.extend([0] * gap)
        if self.peaks is not None:
            self.peaks.append(self.peak)
            self.peaks.extend([0] * gap)
        self.regular_before = self.regular if index == self.index + 1 else set()
        self.index, self.current, self.current_sq, self.peak = index, 0, 0, 0
        self.under, self.regular = set(), set()
        if self.peaks is not None:
            self.peak_median = statistics.median(self.peaks)
        self.mean, self.std = _mean_std(self.history)
        self.level, self.spread = self.mean, self.std
        if self.trend:
            self.level, self.spread = _trend_baseline(
                self.history, self.mean, self.std, self.level_intervals
            )
        total = sum(self.history)
        self.unit = sum(self.squares) / total if total else 0.0
        usual = self.active.usual()
        self.paused = usual is not None and _paused(self.history, self._pause)
        if usual is not None and self.paused:
            level, unit = usual
            self.level = max(self.level, level)
            self.unit = self.unit or unit

    def _fold(self, amount: int, squares: int, silent: int) -> None:
        """Fold the interval just closed, and the ``silent`` ones after it,
        into the usual active level."""
        for closed in [(amount, squares), *[(0, 0)] * min(silent, 2)]:
            last = self.closed
            if len(last) == 2 and last[0][0] and last[1][0] and closed[0]:
                self.active.add(*last[1], whole=True)
            if closed[0]:
                self.active.add(*closed, whole=False)
            last.append(closed)

    @property
    def _pause(self) -> int:
        """Silent intervals in a row that make a pause: half the window, and
        at least the intervals of the trend level."""
        return max(min(self.level_intervals, self.window), self.window // 2)

    def add(self, ts_us: int, amount: int, burst_us: int) -> None:
        """Count ``amount`` in the open interval and the burst window.

        A late observation (stamped before the latest time the series has
        seen) joins the burst window at that latest time, and leaves it once
        the window has moved on from that time or once the late stamps have
        moved on from its own: traffic from a host whose clock is behind
        keeps its own spacing, so calls spread over a minute never sum up as
        if made within the window while no call on time moves it on.
        """
        self.current += amount
        self.current_sq += amount * amount
        self.recent_sum += amount
        if self.recent and self.recent[-1][0] > ts_us:
            self._add_late(ts_us, amount, burst_us)
        elif self.recent and self.recent[-1][0] == ts_us:
            self.recent[-1] = (ts_us, self.recent[-1][1] + amount)
        else:
            self.recent.append((ts_us, amount))
        newest = self.recent[-1][0]
        while self.recent[0][0] <= newest - burst_us:
            self.recent_sum -= self.recent.popleft()[1]
        late = self.late
        while late and late[0][0] <= newest - burst_us:
            self.recent_sum -= late.popleft()[2]
        self.peak = max(self.peak, self.recent_sum)

    def _add_late(self, ts_us: int, amount: int, burst_us: int) -> None:
        """Put a late observation in the burst window; drop the earlier late
        ones whose stamps are a burst window or more from its own, behind it
        or ahead of it (stamps that keep falling, a trace fed newest first,
        keep one window of late entries, not every one)."""
        late, newest = self.late, self.recent[-1][0]
        while late and abs(late[0][1] - ts_us) >= burst_us:
            self.recent_sum -= late.popleft()[2]
        if late and late[-1][:2] == (newest, ts_us):
            late[-1] = (newest, ts_us, late[-1][2] + amount)
        else:
            late.append((newest, ts_us, amount))

    def window_sum(self, ts_us: int, burst_us: int) -> int:
        """Spend in the burst window that ends at ``ts_us``, leaving it as is."""
        total = self.recent_sum
        for seen_us, amount in self.recent:
            if seen_us > ts_us - burst_us:
                break
            total -= amount
        for seen_us, _, amount in self.late:
            if seen_us > ts_us - burst_us:
                break
            total -= amount
        return total

    def call_unit(self) -> float:
        """The typical call's amount: sum of squares over sum, in the window.

        A window without spend falls back to the open interval's calls.
        """
        if self.unit:
            return self.unit
        return self.current_sq / self.current if self.current else 0.0


def _mean_std(values: deque[int]) -> tuple[float, float]:
    count = len(values)
    if count < 2:
        return (float(values[0]) if values else 0.0), 0.0
    mean = sum(values) / count
    variance = sum((v - mean) ** 2 for v in values) / (count - 1)
    return mean, math.sqrt(variance)


class _Active:
    """Moving averages of a scope's spend and call size in an interval with
    spend: over the intervals with spend on both sides (whole ones; the first
    after a silence and the last before one may be cut short), which the
    other intervals with spend move a quarter as much; else over every
    interval with spend (a scope that is only ever active in single
    intervals, such as an hourly job)."""

    __slots__ = ("any", "weight", "whole")

    def __init__(self, intervals: int) -> None:
        self.weight = 2 / (intervals + 1)
        self.whole: tuple[float, float] | None = None
        self.any: tuple[float, float] | None = None

    def add(self, amount: int, squares: int, *, whole: bool) -> None:
        """Fold one interval's spend and sum of squared call amounts."""
        point = (float(amount), squares / amount)
        if whole:
            self.whole = self._moved(self.whole, point, self.weight)
            return
        self.any = self._moved(self.any, point, self.weight)
        if self.whole is not None:
            # A scope whose rhythm turned sparse (single intervals, no
            # whole ones) must not be judged by a busy day long gone.
            self.whole = self._moved(self.whole, point, self.weight / 4)

    def usual(self) -> tuple[float, float] | None:
        """The usual (level, call size) while active, or None before any."""
        return self.whole or self.any

    @staticmethod
    def _moved(
        average: tuple[float, float] | None, point: tuple[float, float], w: float
    ) -> tuple[float, float]:
        if average is None:
            return point
        return (
            average[0] + w * (point[0] - average[0]),
            average[1] + w * (point[1] - average[1]),
        )


def _paused(values: Sequence[int], pause: int) -> bool:
    """Whether a window mostly silent holds a pause of ``pause`` silent
    intervals in a row, as when a scope resumes after a night off (quiet
    intervals scattered through a window are a sparse scope's own rhythm)."""
    active = longest = run = 0
    for value in values:
        run = 0 if value else run + 1
        longest = max(longest, run)
        active += bool(value)
    return 2 * active < len(values) and longest >= pause


def _trend_baseline(
    values: Sequence[int], mean: float, std: float, level_intervals: int
) -> tuple[float, float]:
    """The level expected for the open interval and the spread around it.

    The level is the median of the last ``level_intervals`` values carried
    forward by the window's slope (the change between the medians of its
    older and newer halves, per interval), never below the window's mean (a
    lull must not make usual spend look high). Medians let a spike that
    lasts fewer than half of ``level_intervals`` leave the level where it
    was, so the intervals after it are still judged against it. The spread
    is the standard deviation of interval-to-interval changes over the
    square root of two, which a steady drift does not inflate, never above
    the window's standard deviation. Below three values: the window's mean
    and std.
    """
    count = len(values)
    if count < 3:
        return mean, std
    recent = list(islice(reversed(values), level_intervals))
    half = count // 2
    older = statistics.median(islice(values, half))
    newer = statistics.median(islice(values, count - half, count))
    slope = (newer - older) / (count - half)
    diffs = [b - a for a, b in pairwise(values)]
    diff_mean = sum(diffs) / len(diffs)
    diff_var = sum((d - diff_mean) ** 2 for d in diffs) / (len(diffs) - 1)
    # The recent median sits (len + 1) / 2 intervals behind the open one:
    # carry it forward along the slope, so a ramp is not a spike.
    level = statistics.median(recent) + slope * (len(recent) + 1) / 2
    return max(level, mean), min(math.sqrt(diff_var / 2), std)


def noisy_threshold(level: float, spread: float, unit: float, k: float) -> float:
    """``level`` plus ``k`` spreads, allowing for the noise of call counts.

    Spend per interval is a sum over a random number of calls: with calls of
    ``unit`` each, its count-noise spread is ``sqrt(level * unit)`` (Poisson),
    which a spread measured over a few intervals often underestimates. The
    spread used is at least that, and the threshold adds ``(k**2 - 1) / 6``
    calls, the skew term of the Poisson quantile (Cornish-Fisher), so that
    few calls per interval are not judged as if they were many: at a level
    of one call per interval and ``k = 4`` it takes 8 calls.
    """
    noise = math.sqrt(max(level, 0.0) * unit)
    skew = max(k * k - 1, 0.0) / 6
    return level + k * max(spread, noise) + skew * unit


class AnomalyDetector:
    """Deviation, burst and peers rules per scope and metric, grouped in episodes.

    A scope's episode is over once no rule has fired on it for ``cooldown_s``
    (and at least one interval); it is seen to end at the next call on any
    scope, so a scope that falls silent (blocked, or its runaway stopped)
    does not hold its episode open for good. Episodes are timed by the
    latest timestamp seen so far, never by a call's own when it is earlier:
    calls out of order (hosts whose clocks disagree) neither end an episode
    nor open another; a call stamped far ahead moves that time on, and so
    ends the quiet episodes early. Feed calls on one clock that does not
    step (see ``clock`` of :class:`~governor.anomaly.AnomalyMonitor`).

    Memory is bounded by ``max_series`` scope-and-metric series. A new series
    past it drops the least recently fed one whose scope has no open episode,
    with its baseline, in constant time; the series of a scope whose episode
    was seen to end because time passed, not on a call of its own, go first.
    Only when every series kept has an open episode is the least recently
    fed of those dropped, its episode ended with ``on_episode_end``, so that
    nothing it tightened stays tightened for good. :attr:`evicted` counts
    the series dropped.

    Args:
        settings: the rules' parameters.
        max_series: scope-and-metric series kept (at least 1); None:
            ``settings.max_series``.
        on_episode_end: called with a scope and the time its anomaly episode
            was seen to end: that of the first call, on any scope, once
            ``cooldown_s`` (and at least one interval) has passed since the
            scope's last trip, or of the call whose new series drops the
            scope's, as above.
    """

    def __init__(
        self,
        settings: Anomalies,
        *,
        max_series: int | None = None,
        on_episode_end: Callable[[str, datetime], None] | None = None,
    ) -> None:
        self.settings = settings
        self._interval_us = round(settings.interval_s * 1_000_000)
        self._burst_us = round(settings.burst_window_s * 1_000_000)
        self._episode_us = max(
            round(settings.cooldown_s * 1_000_000), self._interval_us
        )
        self._floors = {
            "usd": usd_to_nanos(settings.min_usd_per_interval),
            "tokens": settings.min_tokens_per_interval,
        }
        if max_series is None:
            max_series = settings.max_series
        if max_series < 1:
            raise ValueError(
                f"max_series must be at least 1, got {max_series}; give the "
                "number of scope-and-metric series to keep, e.g. 10000"
            )
        self._series: dict[tuple[str, Metric], _Series] = {}
        # The series' keys, least recently fed first: those whose scope has no
        # open episode, and those whose scope has one (dropped last).
        self._idle: OrderedDict[tuple[str, Metric], None] = OrderedDict()
        self._busy: OrderedDict[tuple[str, Metric], None] = OrderedDict()
        self._max_series = max_series
        self._evicted = 0
        # Open episodes: scope -> time of its latest trip, oldest trip first.
        # Trips are timed by ``_now_us``, the latest timestamp seen, so the
        # order holds whatever order the calls come in.
        self._episodes: OrderedDict[str, int] = OrderedDict()
        self._now_us: int | None = None
        self._on_episode_end = on_episode_end
        self._peer_cache: dict[tuple[str, Metric], tuple[int, _Trip | None]] = {}

    @property
    def evicted(self) -> int:
        """Series dropped so far to stay within ``max_series``."""
        return self._evicted

    def observe_record(
        self, rec: SpendRecord, *, at: datetime | None = None
    ) -> list[Alert]:
        """Feed one spend record into every scope it counts towards.

        ``at``: the time to count the record at, in place of ``rec.ts``
        (:class:`~governor.anomaly.AnomalyMonitor` gives its own clock's).

        Tokens are input plus output tokens, except that a cache hit counts
        none (nothing was sent to a provider); USD is ``cost_usd``. An alert
        on a scope names in ``explained_by`` the scopes of narrower kinds seen
        under it in the interval (this record's or earlier ones') whose own
        excess accounts for its excess.
        """
        tokens = 0 if rec.cache_hit else rec.total_tokens
        ts_us, nanos = to_us(rec.ts if at is None else at), usd_to_nanos(rec.cost_usd)
        keys = scopes_of(rec, self.settings.scopes)
        now_us = self._advance(ts_us)
        self._end_quiet_episodes(now_us, keys)
        ranks = [_rank(key) for key in keys]
        opened = [
            (scope, trips)
            for scope, rank in zip(keys, ranks, strict=True)
            if (
                trips := self._observe(
                    scope,
                    (ts_us, now_us),
                    nanos,
                    tokens,
                    [k for k, r in zip(keys, ranks, strict=True) if r < rank],
                )
            )
        ]
        self._note_regular(keys, ranks)
        return [
            self._alert(scope, ts_us, trips, self._explain(scope, trips, ts_us))
            for scope, trips in opened
        ]

    def observe(
        self, scope: str, ts: datetime, *, usd: Decimal, tokens: int
    ) -> list[Alert]:
        """Feed one call's spend on ``scope`` at time ``ts``; return new alerts."""
        return self.observe_units(
            scope, to_us(ts), usd_nanos=usd_to_nanos(usd), tokens=tokens
        )

    def observe_units(
        self, scope: str, ts_us: int, *, usd_nanos: int, tokens: int
    ) -> list[Alert]:
        """:meth:`observe` in integer units: epoch microseconds, nano-dollars.

        The fast path for replaying long traces.
        """
        now_us = self._advance(ts_us)
        self._end_quiet_episodes(now_us, (scope,))
        trips = self._observe(scope, (ts_us, now_us), usd_nanos, tokens, ())
        return [self._alert(scope, ts_us, trips, ())] if trips else []

    def _observe(
        self,
        scope: str,
        times: tuple[int, int],
        usd_nanos: int,
        tokens: int,
        narrower: Sequence[str],
    ) -> list[_Trip]:
        """Step every metric; the trips when they open an episode, else [].

        ``times``: the call's timestamp and the latest seen, in microseconds.
        ``narrower``: the record's scopes of narrower kinds than ``scope``.
        """
        ts_us, now_us = times
        amounts: dict[Metric, int] = {"usd": usd_nanos, "tokens": tokens}
        trips: list[_Trip] = []
        for metric in self.settings.metrics:
            trips += self._step(scope, metric, ts_us, amounts[metric], narrower)
        return trips if self._opens_episode(scope, now_us, bool(trips)) else []

    def _note_regular(self, keys: Sequence[str], ranks: Sequence[int]) -> None:
        """Note the record's scopes that are regular jobs in its wider scopes'
        series: established, and judged by their usual spend while active
        (paused, see :meth:`_Series.roll`). Their spend is left to their own
        rules (see :meth:`_regular_allowance`)."""
        needed = self.settings.min_history_intervals
        for metric in self.settings.metrics:
            for key, rank in zip(keys, ranks, strict=True):
                narrow = self._series.get((key, metric))
                if narrow is None or not narrow.paused:
                    continue
                if len(narrow.history) < needed:
                    continue
                for wide_key, wide_rank in zip(keys, ranks, strict=True):
                    wide = self._series.get((wide_key, metric))
                    if wide_rank > rank and wide is not None:
                        wide.regular.add(key)

    def _advance(self, ts_us: int) -> int:
        """Move the latest time seen on to ``ts_us`` if later; return it."""
        if self._now_us is None or ts_us > self._now_us:
            self._now_us = ts_us
        return self._now_us

    def _end_quiet_episodes(self, now_us: int, fed: Sequence[str]) -> None:
        """End every episode with no trip for ``cooldown_s`` before ``now_us``,
        the latest time seen.

        The series of those scopes this call does not feed (``fed``) go first
        among the idle ones, to be dropped next.
        """
        while self._episodes:
            scope, last = next(iter(self._episodes.items()))
            if now_us - last < self._episode_us:
                return
            self._end_episode(scope, now_us, first=scope not in fed)

    def _opens_episode(self, scope: str, now_us: int, tripped: bool) -> bool:
        """Track the scope's episode; whether this call opens a new one.

        The trip is timed by ``now_us``, the latest time seen, which keeps
        ``_episodes`` in order of last trip. An episode that is over has
        already been ended by :meth:`_end_quiet_episodes`.
        """
        if not tripped:
            return False
        opens = scope not in self._episodes
        if opens:
            self._move(scope, self._idle, self._busy)
        self._episodes[scope] = now_us
        self._episodes.move_to_end(scope)
        return opens

    def _end_episode(self, scope: str, ts_us: int, *, first: bool = False) -> None:
        """Close the scope's episode; its series join the idle ones.

        ``first``: as the least recently fed of them, to be dropped next.
        """
        del self._episodes[scope]
        self._move(scope, self._busy, self._idle, first=first)
        if self._on_episode_end is not None:
            self._on_episode_end(scope, from_us(ts_us))

    def _move(
        self,
        scope: str,
        source: OrderedDict[tuple[str, Metric], None],
        target: OrderedDict[tuple[str, Metric], None],
        *,
        first: bool = False,
    ) -> None:
        for metric in self.settings.metrics:
            key = (scope, metric)
            if key in source:
                del source[key]
                target[key] = None
                if first:
                    target.move_to_end(key, last=False)

    def _series_for(self, scope: str, metric: Metric, index: int) -> _Series:
        key = (scope, metric)
        series = self._series.get(key)
        if series is None:
            if len(self._series) >= self._max_series:
                self._evict()
            series = _Series(self.settings, index)
            self._series[key] = series
            order = self._busy if scope in self._episodes else self._idle
            order[key] = None
        elif scope in self._episodes:
            self._busy.move_to_end(key)
        else:
            self._idle.move_to_end(key)
        return series

    def _evict(self) -> None:
        """Drop one series to make room for a new one, in constant time.

        The least recently fed series with an open episode goes first if that
        episode is over (``cooldown_s`` since its last trip) or if no series
        without one is left, its episode ended with ``on_episode_end`` (a
        tightening must not outlive its series); else the least recently fed
        series without one.
        """
        if self._busy:
            scope = next(iter(self._busy))[0]
            now_us = self._now_us or 0
            over = now_us - self._episodes[scope] >= self._episode_us
            if over or not self._idle:
                self._end_episode(scope, now_us, first=True)
        key, _ = self._idle.popitem(last=False)
        del self._series[key]
        self._evicted += 1

    def _step(
        self,
        scope: str,
        metric: Metric,
        ts_us: int,
        amount: int,
        narrower: Sequence[str],
    ) -> list[_Trip]:
        index = ts_us // self._interval_us
        series = self._series_for(scope, metric, index)
        series.roll(index)
        series.add(ts_us, amount, self._burst_us)
        series.under.update(narrower)
        if len(series.history) < self.settings.min_history_intervals:
            peers = self._peers(scope, metric, series, index)
            return [] if peers is None else [peers]
        found = (
            self._deviation(metric, series, ts_us),
            self._burst(metric, series, ts_us),
        )
        return [trip for trip in found if trip is not None]

    def _threshold(self, level: float, spread: float, unit: float) -> float:
        if not self.settings.count_noise:
            return level + self.settings.k * spread
        return noisy_threshold(level, spread, unit, self.settings.k)

    def _deviation(self, metric: Metric, series: _Series, ts_us: int) -> _Trip | None:
        threshold = self._threshold(series.level, series.spread, series.call_unit())
        if series.current <= threshold or series.current < self._floors[metric]:
            return None
        regular = self._regular_allowance(series, metric, "deviation", ts_us)
        if series.current <= threshold + regular:
            return None
        return _Trip(
            metric,
            "deviation",
            series.current,
            threshold + regular,
            series.level,
            series.spread,
            regular,
        )

    def _burst_base(self, series: _Series, level: float) -> float:
        """The usual burst-window spend of a series whose level is ``level``."""
        base = level * self._burst_us / self._interval_us
        if series.paused:
            # After a pause its usual bursts are the baseline: a job that
            # fires its calls within seconds is not a burst of itself.
            base = max(base, series.active_peak)
        return base

    def _burst_threshold(self, series: _Series) -> float:
        """The burst rule's line for the series' burst window."""
        base = self._burst_base(series, series.level)
        threshold = self.settings.burst_factor * base
        if self.settings.count_noise:
            # The window slides and is checked at every call, so it is tested
            # far more often than an interval: one standard deviation more.
            noise = noisy_threshold(base, 0.0, series.call_unit(), self.settings.k + 1)
            threshold = max(threshold, noise)
        if (peak_factor := self.settings.burst_peak_factor) is not None:
            threshold = max(threshold, peak_factor * series.peak_median)
        return threshold

    def _burst(self, metric: Metric, series: _Series, ts_us: int) -> _Trip | None:
        threshold = self._burst_threshold(series)
        if series.recent_sum <= threshold or series.recent_sum < self._floors[metric]:
            return None
        regular = self._regular_allowance(series, metric, "burst", ts_us)
        if series.recent_sum <= threshold + regular:
            return None
        return _Trip(
            metric,
            "burst",
            series.recent_sum,
            threshold + regular,
            series.level,
            series.spread,
            regular,
        )

    def _regular_allowance(
        self, series: _Series, metric: Metric, rule: Rule, ts_us: int
    ) -> float:
        """The spend of the regular jobs under a scope left to their own rules.

        A narrower scope whose rules judge it by its usual spend while active
        (an hourly job: its window is paused, see :meth:`_Series.roll`)
        spends that much each time it runs, which this scope's baseline, a
        median over mostly steady intervals, does not hold. Each such scope
        seen under this one in the interval (for the burst rule, also in the
        one before) counts its spend in ``rule``'s terms (for the burst rule,
        in the burst window), up to its own rule's line: what its
        rule finds usual is not this scope's anomaly, what it does not is.
        Scopes of one kind are disjoint, so their parts add up; kinds
        overlap, so the largest kind's sum counts. A paused scope already
        judges by its usual spend while active, and gets none.
        """
        if series.paused:
            return 0.0
        jobs = series.regular
        if rule == "burst":
            jobs = jobs | series.regular_before
        by_kind: dict[str, float] = {}
        for scope in jobs:
            narrow = self._series.get((scope, metric))
            line = None if narrow is None else self._own_line(narrow, rule, ts_us)
            if line is not None:
                kind = scope.partition(":")[0]
                by_kind[kind] = by_kind.get(kind, 0.0) + min(line)
        return max(by_kind.values(), default=0.0)

    def _own_line(
        self, series: _Series, rule: Rule, ts_us: int
    ) -> tuple[float, float] | None:
        """A regular job's spend in ``rule``'s terms and its own rule's line.

        None unless the series is established (its own rules run) and paused
        (they judge it by its usual spend while active).
        """
        if not series.paused:
            return None
        if len(series.history) < self.settings.min_history_intervals:
            return None
        if rule == "burst":
            observed = series.window_sum(ts_us, self._burst_us)
            return float(observed), self._burst_threshold(series)
        line = self._threshold(series.level, series.spread, series.call_unit())
        return float(series.current), line

    def _peers(
        self, scope: str, metric: Metric, series: _Series, index: int
    ) -> _Trip | None:
        """The peers rule for a scope too new for a baseline of its own."""
        kind = scope.partition(":")[0]
        if kind == "all" or not self.settings.peers:
            return None
        typical = self._typical_peer(kind, metric, index)
        if typical is None:
            return None
        threshold = max(typical.threshold, self.settings.burst_factor * typical.mean)
        if series.current <= threshold or series.current < self._floors[metric]:
            return None
        return replace(typical, observed=series.current, threshold=threshold)

    def _typical_peer(self, kind: str, metric: Metric, index: int) -> _Trip | None:
        """Median level, spread and threshold of the kind's established series.

        Computed at most once per interval for each kind and metric.
        """
        cached = self._peer_cache.get((kind, metric))
        if cached is not None and cached[0] == index:
            return cached[1]
        prefix, needed = f"{kind}:", self.settings.min_history_intervals
        peers = [
            s
            for (scope, m), s in self._series.items()
            if m == metric and scope.startswith(prefix) and len(s.history) >= needed
        ]
        typical = None
        if peers:
            typical = _Trip(
                metric,
                "peers",
                0.0,
                statistics.median(self._peer_threshold(s) for s in peers),
                statistics.median(s.level for s in peers),
                statistics.median(s.spread for s in peers),
            )
        self._peer_cache[(kind, metric)] = (index, typical)
        return typical

    def _peer_threshold(self, series: _Series) -> float:
        return self._threshold(series.level, series.spread, series.unit)

    def _explain(
        self, scope: str, trips: Sequence[_Trip], ts_us: int
    ) -> tuple[str, ...]:
        """The narrower scopes seen under ``scope`` whose excess explains it.

        Every scope of a narrower kind fed with ``scope`` in the open interval
        is a candidate, not only those of the call that crossed the line; one
        explains the alert when it accounts for every trip. Narrowest kind
        first, then the largest excess.
        """
        seen: set[str] = set()
        for metric in {trip.metric for trip in trips}:
            series = self._series.get((scope, metric))
            if series is not None:
                seen |= series.under
        found = []
        for other in seen:
            excesses = [self._excess(other, trip, ts_us) for trip in trips]
            if all(map(self._explains, trips, excesses)):
                found.append((_rank(other), -excesses[0], other))
        return tuple(other for *_, other in sorted(found))

    def _explains(self, trip: _Trip, excess: float) -> bool:
        """Whether a narrower scope's ``excess`` accounts for a wider one's trip.

        It must be at least half of the wider scope's excess over its usual
        level (less the spend of its regular jobs left to their own rules),
        and without it the wider scope must be back under its threshold.
        """
        wide_excess = trip.observed - trip.mean * self._share(trip.rule) - trip.regular
        return (
            excess > 0
            and 2 * excess >= wide_excess
            and trip.observed - excess <= trip.threshold
        )

    def _share(self, rule: Rule) -> float:
        """The part of an interval a rule's observed spend covers."""
        return self._burst_us / self._interval_us if rule == "burst" else 1.0

    def _excess(self, scope: str, trip: _Trip, ts_us: int) -> float:
        """How far ``scope`` is above its usual level, in ``trip``'s terms.

        A scope with fewer than ``min_history_intervals`` closed intervals
        has no usual level of its own yet (its first intervals may be the
        runaway's): it is held to the lower of its own level and the typical
        established scope's of its kind, as the peers rule judges it. For the
        burst rule, the usual spend is what its own burst rule takes as usual:
        after a pause (an hourly job), its usual peak burst-window spend.
        """
        series = self._series.get((scope, trip.metric))
        if series is None:
            return 0.0
        own = self._own_line(series, trip.rule, ts_us)
        if own is not None and own[0] <= own[1]:
            return 0.0  # a regular job within what its own rule allows
        level = series.level
        if len(series.history) < self.settings.min_history_intervals:
            kind = scope.partition(":")[0]
            index = ts_us // self._interval_us
            typical = self._typical_peer(kind, trip.metric, index)
            if typical is not None:
                level = min(level, typical.mean)
        if trip.rule == "burst":
            usual = self._burst_base(series, level)
            observed = series.window_sum(ts_us, self._burst_us)
        else:
            usual = level
            observed = series.current
        return max(observed - usual, 0.0)

    def _alert(
        self, scope: str, ts_us: int, trips: Sequence[_Trip], explained: tuple[str, ...]
    ) -> Alert:
        findings = tuple(_finding(trip) for trip in trips)
        first = findings[0]
        return Alert(
            scope=scope,
            metric=first.metric,
            rule=first.rule,
            ts=from_us(ts_us),
            interval_start=from_us(ts_us // self._interval_us * self._interval_us),
            observed=first.observed,
            threshold=first.threshold,
            baseline_mean=first.baseline_mean,
            baseline_std=first.baseline_std,
            findings=findings,
            explained_by=explained,
        )


def _rank(scope: str) -> int:
    """How narrow the scope's kind is: 0 for a session, 8 for ``all``."""
    return _NARROW_RANK[scope.partition(":")[0]]


def _finding(trip: _Trip) -> Finding:
    return Finding(
        metric=trip.metric,
        rule=trip.rule,
        observed=_amount(trip.metric, trip.observed),
        threshold=_amount(trip.metric, trip.threshold),
        baseline_mean=_amount(trip.metric, trip.mean),
        baseline_std=_amount(trip.metric, trip.std),
    )


def _amount(metric: Metric, units: float) -> Decimal:
    # Statistics are floats over integer units; round them back to whole units
    # (nano-dollars or tokens) so alerts carry exact, comparable Decimals.
    whole = round(units)
    return nanos_to_usd(whole) if metric == "usd" else Decimal(whole)
