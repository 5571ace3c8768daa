"""Late records in the burst window: a host whose clock is behind.

Records stamped before the latest time a series has seen count in its burst
window at that latest time. While no call on time moves that time on, the
late stamps' own spacing moves them out of the window again, so steady
traffic from a lagging host is no burst, and many calls in a short span
from it still are.
"""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from governor.anomaly import Alert, Anomalies, AnomalyDetector, AnomalyMonitor
from governor.spend import SpendRecord

T0 = datetime(2027, 3, 1, tzinfo=UTC)
BEHIND = timedelta(hours=1)
_calls = itertools.count()


class FakeClocks:
    """A monotonic and a wall clock the test moves by hand."""

    def __init__(self) -> None:
        self.mono = 1000.0
        self.wall = T0.timestamp()

    def tick(self, seconds: float) -> None:
        self.mono += seconds
        self.wall += seconds

    def now(self) -> datetime:
        return datetime.fromtimestamp(self.wall, UTC)


def record(ts: datetime) -> SpendRecord:
    n = next(_calls)
    return SpendRecord(
        ts=ts,
        task_id=f"t{n}",
        call_id=f"c{n}",
        model="gpt-4o-mini",
        cost_usd=Decimal("0.001"),
        input_tokens=1000,
        team="a",
    )


def live_monitor(clocks: FakeClocks) -> AnomalyMonitor:
    return AnomalyMonitor(
        Anomalies(scopes=("all", "team")),
        clock="live",
        monotonic=lambda: clocks.mono,
        wall_time=lambda: clocks.wall,
    )


def feed(
    monitor: AnomalyMonitor,
    clocks: FakeClocks,
    calls: int,
    *,
    every_s: float = 3,
    skew: timedelta = timedelta(0),
) -> list[Alert]:
    """``calls`` calls on team 'a', one every ``every_s``, stamped ``skew``
    off the wall clock."""
    alerts: list[Alert] = []
    for _ in range(calls):
        clocks.tick(every_s)
        alerts += monitor.observe(record(clocks.now() + skew))
    return alerts


def burst_usd(monitor: AnomalyMonitor) -> Decimal:
    """Team a's spend in its burst window, in USD."""
    series = monitor._detector._series[("team:a", "usd")]
    return Decimal(series.recent_sum) / 10**9


def test_steady_host_behind_raises_no_burst_alert() -> None:
    """40 steady minutes, then the same rate from a host an hour behind: the
    burst window holds the last 10 s on time and the last 10 s of late
    stamps (8 calls), not every late call since (13 gave a burst alert)."""
    clocks = FakeClocks()
    monitor = live_monitor(clocks)
    assert feed(monitor, clocks, 800) == []
    assert feed(monitor, clocks, 39, skew=-BEHIND) == []
    assert burst_usd(monitor) == Decimal("0.008")
    assert len(monitor._detector._series[("team:a", "usd")].late) == 4


def test_burst_from_host_behind_still_alerts() -> None:
    """Many calls within a second from a host an hour behind are a burst."""
    clocks = FakeClocks()
    monitor = live_monitor(clocks)
    assert feed(monitor, clocks, 800) == []
    alerts = feed(monitor, clocks, 25, every_s=0.04, skew=-BEHIND)
    assert [(a.scope, a.rule) for a in alerts] == [
        ("all", "burst"),
        ("team:a", "burst"),
    ]
    assert alerts[0].observed == Decimal("0.017")


def test_stamps_stepped_back_keep_their_spacing_in_the_burst_window() -> None:
    """Replayed at their own stamps, an hour of calls stepped back keeps the
    window at its usual 4 calls of late stamps, held in 4 entries. (They
    pile up in the open interval, as documented: the deviation rule fires.)"""
    detector = AnomalyDetector(Anomalies(scopes=("all",), metrics=("usd",)))
    rules = []
    for i in range(1200):  # a call every 3 s; stamps step back an hour at 30 min
        ts = T0 + timedelta(seconds=3 * i) - (BEHIND if i >= 600 else timedelta(0))
        alerts = detector.observe("all", ts, usd=Decimal("0.001"), tokens=0)
        rules += [f.rule for alert in alerts for f in alert.all_findings()]
    assert rules == ["deviation"]
    series = detector._series[("all", "usd")]
    assert series.recent_sum == 8 * 1_000_000
    assert (len(series.recent), len(series.late)) == (4, 4)


def test_stamps_that_keep_falling_keep_one_window_of_late_entries() -> None:
    """A trace fed newest first: the burst window holds the calls within a
    window of the latest late stamp, not every call fed (memory bounded)."""
    settings = Anomalies()
    detector = AnomalyDetector(settings)
    start_us = int(T0.timestamp() * 1_000_000)
    step_us = 10_000  # 10 ms between calls, falling
    for i in range(3_000):
        detector.observe_units(
            "task:x", start_us - i * step_us, usd_nanos=1_000, tokens=10
        )
    series = detector._series[("task:x", "usd")]
    in_window = int(settings.burst_window_s * 1_000_000) // step_us
    assert len(series.late) == in_window
    assert series.recent_sum == (in_window + 1) * 1_000  # and the first, on time
