"""A scope that falls silent and resumes: steady traffic after a pause is no anomaly."""

from __future__ import annotations

import random
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from governor.anomaly import Alert, Anomalies, AnomalyDetector, AnomalyMonitor, Tighten
from governor.spend import SpendRecord

T0 = datetime(2026, 1, 1, tzinfo=UTC)
SCOPES = ("all", "team")


def record(ts: datetime, team: str = "search") -> SpendRecord:
    """One $0.001, 110-token call by ``team`` at ``ts``."""
    return SpendRecord(
        ts=ts,
        task_id="t",
        call_id=f"{team}-{ts.isoformat()}",
        model="gpt-4o",
        input_tokens=100,
        output_tokens=10,
        cost_usd=Decimal("0.001"),
        team=team,
    )


def steady(start_min: float, minutes: int, per_minute: int) -> Iterator[datetime]:
    """``per_minute`` evenly spaced calls a minute for ``minutes`` minutes."""
    for minute in range(minutes):
        for call in range(per_minute):
            second = 60 * (start_min + minute) + call * 60 / per_minute
            yield T0 + timedelta(seconds=second)


def feed(
    detector: AnomalyDetector, times: Iterator[datetime], team: str
) -> list[Alert]:
    """Every call at ``times`` by ``team``; the alerts raised."""
    alerts: list[Alert] = []
    for ts in times:
        alerts += detector.observe_record(record(ts, team))
    return alerts


@pytest.mark.parametrize(
    ("per_minute", "pause_min"),
    [(10, 31), (10, 120), (10, 720), (10, 25), (10, 29), (40, 18), (100, 22)],
)
def test_steady_traffic_resumed_after_a_pause_raises_no_alert(
    per_minute: int, pause_min: int
) -> None:
    """An hour steady, a pause, the same rate again: nothing alerts.

    A pause of the whole window (30 intervals) leaves a window of zeros, and
    a shorter one a window mostly of zeros: neither may make the usual rate
    look like a spike.
    """
    detector = AnomalyDetector(Anomalies(scopes=SCOPES))
    assert feed(detector, steady(0, 60, per_minute), "search") == []
    resumed = steady(60 + pause_min, 40, per_minute)
    assert feed(detector, resumed, "search") == []


def test_a_night_off_does_not_block_the_team_in_the_morning() -> None:
    """With auto_tighten='block', resuming the usual rate sends no request."""
    requests: list[Tighten] = []
    monitor = AnomalyMonitor(
        Anomalies(scopes=SCOPES, auto_tighten="block"), on_tighten=requests.append
    )
    for ts in [*steady(0, 60, 10), *steady(60 + 8 * 60, 60, 10)]:
        assert monitor.observe(record(ts)) == []
    monitor.close()
    assert requests == []


def test_poisson_traffic_resumed_after_pauses_raises_no_alert() -> None:
    """Poisson calls at 20 a minute, with pauses of 20 to 120 minutes."""
    rng = random.Random(7)
    detector = AnomalyDetector(Anomalies(scopes=SCOPES))
    start, alerts = 0.0, []
    for pause_min in (20, 25, 31, 120, 27, 45):
        t = start
        while (t := t + rng.expovariate(20 / 60)) < start + 3600:
            alerts += detector.observe_record(record(T0 + timedelta(seconds=t)))
        start += 3600 + 60 * pause_min
    assert alerts == []


@pytest.mark.parametrize("pause_min", [31, 120, 720])
def test_a_runaway_that_starts_as_the_scope_resumes_is_caught(pause_min: int) -> None:
    """A window gone silent keeps the baseline it had: a tenfold rate on
    resuming alerts, with no peer to compare with."""
    detector = AnomalyDetector(Anomalies(scopes=("team",)))
    assert feed(detector, steady(0, 60, 10), "search") == []

    alerts = feed(detector, steady(60 + pause_min, 1, 100), "search")

    assert [a.scope for a in alerts] == ["team:search"]
    assert alerts[0].rule in ("deviation", "burst")


def test_a_sparse_scope_silent_for_a_window_still_catches_a_runaway() -> None:
    """One call every ten minutes, then a hundred a minute after an hour off."""
    detector = AnomalyDetector(Anomalies(scopes=("team",)))
    sparse = (T0 + timedelta(minutes=10 * i) for i in range(30))
    assert feed(detector, sparse, "search") == []

    alerts = feed(detector, steady(300 + 60, 2, 100), "search")

    assert [a.scope for a in alerts] == ["team:search"]


def test_a_runaway_after_the_history_rebuilds_is_caught() -> None:
    """After a pause and ten steady intervals, a tenfold jump alerts."""
    detector = AnomalyDetector(Anomalies(scopes=("team",)))
    assert feed(detector, steady(0, 60, 10), "search") == []
    assert feed(detector, steady(91, 10, 10), "search") == []
    alerts = feed(detector, steady(101, 1, 100), "search")
    assert [a.scope for a in alerts] == ["team:search"]
    assert alerts[0].rule in ("deviation", "burst")


@pytest.mark.parametrize("pause_min", [20, 25, 29])
def test_a_runaway_after_a_partial_pause_is_caught(pause_min: int) -> None:
    """The level while active judges a mostly silent window: 10x still alerts."""
    detector = AnomalyDetector(Anomalies(scopes=("team",)))
    assert feed(detector, steady(0, 60, 10), "search") == []
    alerts = feed(detector, steady(60 + pause_min, 1, 100), "search")
    assert [a.scope for a in alerts] == ["team:search"]


@pytest.mark.parametrize("seed", [1, 6, 7, 9])
def test_traffic_resumed_mid_interval_after_a_pause_raises_no_alert(seed: int) -> None:
    """Poisson calls at 20 a minute, a 31-minute pause starting and ending
    mid-interval, then the usual rate: the intervals cut short by the pause
    must not become the baseline the resumed traffic is judged by."""
    rng = random.Random(seed)
    detector = AnomalyDetector(Anomalies())
    paused_at = 7200 + rng.uniform(0, 600)
    resumed_at = paused_at + 31 * 60
    alerts: list[Alert] = []
    t = 0.0
    while (t := t + rng.expovariate(20 / 60)) < resumed_at + 600:
        if paused_at <= t < resumed_at:
            continue
        size = rng.uniform(0.8, 1.2)
        ts = T0 + timedelta(seconds=t)
        alerts += detector.observe(
            "team:search",
            ts,
            usd=Decimal("0.01") * Decimal(size),
            tokens=int(1000 * size),
        )
    assert alerts == []


def test_an_hourly_job_raises_no_alert() -> None:
    """Ten calls within 20 s, once an hour: a scope active only in single
    intervals, and never busy, is judged by its usual active interval."""
    detector = AnomalyDetector(Anomalies())
    alerts: list[Alert] = []
    for hour in range(8):
        for call in range(10):
            ts = T0 + timedelta(hours=hour, seconds=2 * call)
            alerts += detector.observe_record(record(ts, "nightly"))
    assert alerts == []


def test_a_runaway_after_a_busy_hour_and_a_sparse_day_is_caught() -> None:
    """A busy hour long gone does not set the level a sparse scope is judged by."""
    rng = random.Random(0)
    detector = AnomalyDetector(Anomalies(scopes=("team",)))
    t = 0.0
    while (t := t + rng.expovariate(100 / 60)) < 3600:
        assert detector.observe_record(record(T0 + timedelta(seconds=t))) == []
    for i in range(72):  # one call every 20 minutes for a day
        ts = T0 + timedelta(seconds=3600 + 1200 * i + rng.uniform(0, 60))
        assert detector.observe_record(record(ts)) == []
    start = 3600 + 1200 * 72

    alerts = feed(detector, steady(start / 60, 2, 30), "search")

    assert [a.scope for a in alerts] == ["team:search"]


def _job(detector: AnomalyDetector, runs: int, calls: int, start_s: float) -> list:
    """An hourly job of ``calls`` calls 0.3 s apart from ``start_s`` into
    the hour (the last run ``calls`` times ten when a runaway is wanted)."""
    alerts = []
    for run in range(runs):
        for call in range(calls):
            ts = T0 + timedelta(hours=run, seconds=start_s + 0.3 * call)
            alerts += detector.observe_record(record(ts, "job"))
    return alerts


def test_a_job_firing_within_seconds_across_a_minute_raises_no_alert() -> None:
    """Ten calls within 3 s that straddle a minute (7 and 3 in two
    intervals): after a pause, the job's usual burst is its baseline."""
    detector = AnomalyDetector(Anomalies())

    assert _job(detector, runs=12, calls=10, start_s=58) == []


def test_a_job_that_runs_away_still_alerts() -> None:
    detector = AnomalyDetector(Anomalies(scopes=("team",)))
    assert _job(detector, runs=12, calls=10, start_s=58) == []

    alerts = []
    for call in range(100):
        ts = T0 + timedelta(hours=12, seconds=58 + 0.03 * call)
        alerts += detector.observe_record(record(ts, "job"))

    assert [a.scope for a in alerts] == ["team:job"]
