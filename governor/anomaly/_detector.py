"""The anomaly detector: a pure state machine fed with timestamped spend.

It does no I/O and reads no clock: time is the timestamp of each observation,
so replaying a trace gives the alerts a live run would have given. Not
thread-safe; :class:`governor.anomaly.AnomalyMonitor` adds the lock.
"""

from __future__ import annotations

import math
import statistics
from collections import OrderedDict, deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from itertools import islice, pairwise
from typing import Any, Literal

from governor._money import nanos_to_usd, usd_to_nanos
from governor.anomaly._settings import Anomalies, Metric
from governor.spend._record import SpendRecord
from governor.spend._time import from_us, to_us

__all__ = ["Alert", "AnomalyDetector", "Rule", "scopes_of"]

Rule = Literal["deviation", "burst"]


@dataclass(frozen=True, slots=True)
class Alert:
    """One anomaly: which scope and metric, which rule, and the numbers.

    Amounts are in the metric's unit (US dollars or tokens). ``observed`` is
    the interval's spend so far for the deviation rule and the burst window's
    spend for the burst rule; ``threshold`` is what it exceeded.
    ``baseline_mean`` and ``baseline_std`` are the per-interval baseline the
    threshold came from: for the deviation rule the level and spread it used
    (with ``deviation_baseline="trend"``, the recent level and the spread of
    interval-to-interval changes), for the burst rule the window's mean and
    standard deviation.
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

    def describe(self) -> str:
        """A one-line account of the alert for logs and messages."""
        unit = "USD" if self.metric == "usd" else "tokens"
        where = "this interval" if self.rule == "deviation" else "the burst window"
        return (
            f"spend anomaly ({self.rule}) on {self.scope}: {self.observed} {unit} "
            f"in {where} exceeds {self.threshold} (baseline mean "
            f"{self.baseline_mean}, std {self.baseline_std} per interval)"
        )

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


class _Series:
    """One scope's and metric's intervals, in integer units (nanos or tokens)."""

    __slots__ = (
        "alerted_index",
        "current",
        "history",
        "index",
        "last_alert_us",
        "level",
        "level_intervals",
        "mean",
        "peak",
        "peak_median",
        "peaks",
        "recent",
        "recent_sum",
        "spread",
        "std",
        "trend",
        "window",
    )

    def __init__(self, settings: Anomalies, index: int) -> None:
        self.window = settings.window_intervals
        self.trend = settings.deviation_baseline == "trend"
        self.level_intervals = settings.level_intervals
        self.index = index
        self.current = 0
        self.history: deque[int] = deque(maxlen=self.window)
        self.recent: deque[tuple[int, int]] = deque()
        self.recent_sum = 0
        self.mean = 0.0
        self.std = 0.0
        self.level = 0.0
        self.spread = 0.0
        # Peak burst-window spend per closed interval, kept only when the
        # burst rule compares against the scope's usual peaks.
        self.peaks: deque[int] | None = None
        if settings.burst_peak_factor is not None:
            self.peaks = deque(maxlen=self.window)
        self.peak = 0
        self.peak_median = 0.0
        self.alerted_index = -1
        self.last_alert_us: dict[Rule, int] = {}

    def roll(self, index: int) -> None:
        """Close intervals up to ``index``; silent intervals count as zero."""
        if index <= self.index:
            return  # a late observation is counted in the open interval
        gap = min(index - self.index - 1, self.window)
        self.history.append(self.current)
        self.history.extend([0] * gap)
        if self.peaks is not None:
            self.peaks.append(self.peak)
            self.peaks.extend([0] * gap)
            self.peak_median = statistics.median(self.peaks)
        self.index, self.current, self.peak = index, 0, 0
        self.mean, self.std = _mean_std(self.history)
        self.level, self.spread = self.mean, self.std
        if self.trend:
            self.level, self.spread = _trend_baseline(
                self.history, self.mean, self.std, self.level_intervals
            )

    def add(self, ts_us: int, amount: int, burst_us: int) -> None:
        """Count ``amount`` in the open interval and the burst window."""
        self.current += amount
        self.recent.append((ts_us, amount))
        self.recent_sum += amount
        while self.recent and self.recent[0][0] <= ts_us - burst_us:
            self.recent_sum -= self.recent.popleft()[1]
        self.peak = max(self.peak, self.recent_sum)


def _mean_std(values: deque[int]) -> tuple[float, float]:
    count = len(values)
    if count < 2:
        return (float(values[0]) if values else 0.0), 0.0
    mean = sum(values) / count
    variance = sum((v - mean) ** 2 for v in values) / (count - 1)
    return mean, math.sqrt(variance)


def _trend_baseline(
    values: Sequence[int], mean: float, std: float, level_intervals: int
) -> tuple[float, float]:
    """The level expected for the open interval and the spread around it.

    The level is the mean of the last ``level_intervals`` values carried
    forward by the window's average interval-to-interval change, never below
    the window's mean (a lull must not make usual spend look high). The
    spread is the standard deviation of those changes over the square root
    of two, which a steady drift does not inflate, never above the window's
    standard deviation. Below three values: the window's mean and std.
    """
    count = len(values)
    if count < 3:
        return mean, std
    recent = list(islice(reversed(values), level_intervals))
    diffs = [b - a for a, b in pairwise(values)]
    diff_mean = sum(diffs) / len(diffs)
    diff_var = sum((d - diff_mean) ** 2 for d in diffs) / (len(diffs) - 1)
    # The recent mean sits (len + 1) / 2 intervals behind the open one: carry
    # it forward along the window's average change, so a ramp is not a spike.
    level = sum(recent) / len(recent) + diff_mean * (len(recent) + 1) / 2
    return max(level, mean), min(math.sqrt(diff_var / 2), std)


class AnomalyDetector:
    """A deviation rule (level + k spreads) and a burst rule, per scope and metric.

    Args:
        settings: the rules' parameters.
        max_series: scope-and-metric series kept; the least recently fed
            one is dropped first (bounds memory for user and session scopes).
    """

    def __init__(self, settings: Anomalies, *, max_series: int = 10_000) -> None:
        self.settings = settings
        self._interval_us = round(settings.interval_s * 1_000_000)
        self._burst_us = round(settings.burst_window_s * 1_000_000)
        self._cooldown_us = round(settings.cooldown_s * 1_000_000)
        self._floors = {
            "usd": usd_to_nanos(settings.min_usd_per_interval),
            "tokens": settings.min_tokens_per_interval,
        }
        self._series: OrderedDict[tuple[str, Metric], _Series] = OrderedDict()
        self._max_series = max_series

    def observe_record(self, rec: SpendRecord) -> list[Alert]:
        """Feed one spend record into every scope it counts towards.

        Tokens are input plus output tokens, except that a cache hit counts
        none (nothing was sent to a provider); USD is ``cost_usd``.
        """
        tokens = 0 if rec.cache_hit else rec.total_tokens
        alerts: list[Alert] = []
        for scope in scopes_of(rec, self.settings.scopes):
            alerts += self.observe(scope, rec.ts, usd=rec.cost_usd, tokens=tokens)
        return alerts

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
        amounts: dict[Metric, int] = {"usd": usd_nanos, "tokens": tokens}
        alerts: list[Alert] = []
        for metric in self.settings.metrics:
            alerts += self._step(scope, metric, ts_us, amounts[metric])
        return alerts

    def _series_for(self, scope: str, metric: Metric, index: int) -> _Series:
        key = (scope, metric)
        series = self._series.get(key)
        if series is None:
            series = _Series(self.settings, index)
            self._series[key] = series
            if len(self._series) > self._max_series:
                self._series.popitem(last=False)
        else:
            self._series.move_to_end(key)
        return series

    def _step(self, scope: str, metric: Metric, ts_us: int, amount: int) -> list[Alert]:
        index = ts_us // self._interval_us
        series = self._series_for(scope, metric, index)
        series.roll(index)
        series.add(ts_us, amount, self._burst_us)
        if len(series.history) < self.settings.min_history_intervals:
            return []
        found = [
            alert
            for alert in (
                self._deviation(scope, metric, series, ts_us),
                self._burst(scope, metric, series, ts_us),
            )
            if alert is not None
        ]
        return found

    def _deviation(
        self, scope: str, metric: Metric, series: _Series, ts_us: int
    ) -> Alert | None:
        threshold = series.level + self.settings.k * series.spread
        if series.current <= threshold or series.current < self._floors[metric]:
            return None
        if series.alerted_index == series.index:
            return None
        if not self._cooled(series, "deviation", ts_us):
            return None
        series.alerted_index = series.index
        return self._alert(scope, metric, "deviation", series, ts_us, threshold)

    def _burst(
        self, scope: str, metric: Metric, series: _Series, ts_us: int
    ) -> Alert | None:
        share = self._burst_us / self._interval_us
        threshold = self.settings.burst_factor * series.mean * share
        if (peak_factor := self.settings.burst_peak_factor) is not None:
            threshold = max(threshold, peak_factor * series.peak_median)
        if series.recent_sum <= threshold or series.recent_sum < self._floors[metric]:
            return None
        if not self._cooled(series, "burst", ts_us):
            return None
        return self._alert(scope, metric, "burst", series, ts_us, threshold)

    def _cooled(self, series: _Series, rule: Rule, ts_us: int) -> bool:
        last = series.last_alert_us.get(rule)
        if last is not None and ts_us - last < self._cooldown_us:
            return False
        series.last_alert_us[rule] = ts_us
        return True

    def _alert(
        self,
        scope: str,
        metric: Metric,
        rule: Rule,
        series: _Series,
        ts_us: int,
        threshold: float,
    ) -> Alert:
        if rule == "deviation":
            observed, mean, std = series.current, series.level, series.spread
        else:
            observed, mean, std = series.recent_sum, series.mean, series.std
        return Alert(
            scope=scope,
            metric=metric,
            rule=rule,
            ts=from_us(ts_us),
            interval_start=from_us(series.index * self._interval_us),
            observed=_amount(metric, observed),
            threshold=_amount(metric, threshold),
            baseline_mean=_amount(metric, mean),
            baseline_std=_amount(metric, std),
        )


def _amount(metric: Metric, units: float) -> Decimal:
    # Statistics are floats over integer units; round them back to whole units
    # (nano-dollars or tokens) so alerts carry exact, comparable Decimals.
    whole = round(units)
    return nanos_to_usd(whole) if metric == "usd" else Decimal(whole)
