"""Anomaly alerts when clocks misbehave: steps, skewed hosts, far-off stamps.

Records are stamped by wall clocks; the monitor a governor makes counts them
on a clock of its own that cannot step (``AnomalyMonitor(clock="live")``),
and the detector times episodes by the latest time seen. Also the settings
that made the detector divide by zero or count calls twice.
"""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from governor import Governor, PolicyError
from governor.anomaly import (
    Alert,
    Anomalies,
    AnomalyDetector,
    AnomalyMonitor,
    Tighten,
)
from governor.spend import SpendRecord

T0 = datetime(2026, 12, 1, tzinfo=UTC)
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


def record(ts: datetime, team: str = "search", usd: str = "0.001") -> SpendRecord:
    n = next(_calls)
    return SpendRecord(
        ts=ts,
        task_id=f"t{n}",
        call_id=f"c{n}",
        model="gpt-4o-mini",
        cost_usd=Decimal(usd),
        input_tokens=1000,
        team=team,
    )


def live_monitor(
    clocks: FakeClocks, settings: Anomalies, requests: list[Tighten] | None = None
) -> AnomalyMonitor:
    return AnomalyMonitor(
        settings,
        on_tighten=None if requests is None else requests.append,
        restores=True,
        clock="live",
        monotonic=lambda: clocks.mono,
        wall_time=lambda: clocks.wall,
    )


def steady(monitor: AnomalyMonitor, clocks: FakeClocks, minutes: int) -> list[Alert]:
    """20 calls a minute on team 'search', each stamped when it is fed."""
    alerts: list[Alert] = []
    for _ in range(minutes * 20):
        clocks.tick(3)
        alerts += monitor.observe(record(clocks.now()))
    return alerts


def test_backward_clock_step_raises_no_alert() -> None:
    """Steady traffic whose stamps go back an hour (NTP stepping this host's
    wall clock) raises no alert."""
    clocks = FakeClocks()
    monitor = live_monitor(clocks, Anomalies(scopes=("all", "team")))
    assert steady(monitor, clocks, 40) == []
    clocks.wall -= 3600
    assert steady(monitor, clocks, 30) == []


@pytest.mark.parametrize("stall_s", [30, 600, 3600])
def test_a_backlog_the_writer_catches_up_on_raises_no_alert(stall_s: int) -> None:
    """The spend writer stalls (a slow store) while calls go on at the same
    rate, then feeds the backlog at once: each record keeps its own time, so
    the backlog is not one burst, however long the stall."""
    clocks = FakeClocks()
    monitor = live_monitor(clocks, Anomalies(scopes=("all", "team")))
    assert steady(monitor, clocks, 40) == []
    stamps = []
    for _ in range(stall_s // 3):  # a call every 3 s, none fed
        clocks.tick(3)
        stamps.append(clocks.now())
    backlog = [alert for ts in stamps for alert in monitor.observe(record(ts))]
    assert backlog == []
    assert steady(monitor, clocks, 10) == []


def test_backward_step_in_record_time_still_alerts() -> None:
    """The same stamps counted at their own time (clock="records") pile an
    hour of calls into one interval: what the live clock is for."""
    clocks = FakeClocks()
    monitor = AnomalyMonitor(Anomalies(scopes=("team",)))
    assert steady(monitor, clocks, 40) == []
    clocks.wall -= 3600
    assert steady(monitor, clocks, 30) != []


def test_late_records_do_not_grow_the_burst_window() -> None:
    """Records behind the series' latest time join the burst window's entry
    for that time: it holds no more entries than the window spans, instead
    of one per record until the stamps catch up."""
    detector = AnomalyDetector(Anomalies(scopes=("all",), metrics=("usd",)))
    for i in range(1200):  # a call every 3 s; stamps step back an hour at 30 min
        ts = T0 + timedelta(seconds=3 * i - (3600 if i >= 600 else 0))
        detector.observe("all", ts, usd=Decimal("0.001"), tokens=0)
    series = detector._series[("all", "usd")]
    assert len(series.recent) <= 10 // 3 + 1


def skewed_runaway(skew: timedelta) -> list[tuple[str, datetime, datetime]]:
    """(team, true time, stamp) of 40 steady minutes on teams a and b, a's
    stamps shifted by ``skew``, then two minutes of team b running away
    while team a goes on."""
    events = []
    for i in range(400):
        ts = T0 + timedelta(seconds=6 * i)
        events += [("a", ts, ts + skew), ("b", ts, ts)]
    now = T0 + timedelta(minutes=40)
    for j in range(480):
        ts = now + timedelta(seconds=j / 4)
        events.append(("b", ts, ts))
        if j % 24 == 0:
            events.append(("a", ts, ts + skew))
    return events


def test_host_an_hour_ahead_gives_one_alert_per_runaway() -> None:
    """One runaway is one alert while another host's stamps run an hour
    ahead: a record stamped ahead does not end the runaway's episode."""
    detector = AnomalyDetector(Anomalies(scopes=("team",)))
    alerts: list[Alert] = []
    for team, _, stamp in skewed_runaway(timedelta(hours=1)):
        alerts += detector.observe(
            f"team:{team}", stamp, usd=Decimal("0.001"), tokens=1000
        )
    assert [a.scope for a in alerts] == ["team:b"]


def test_host_an_hour_ahead_lowers_once_on_the_live_clock() -> None:
    """Through a live monitor fed as the calls happen, the runaway lowers its
    team once, and its restore comes once the cooldown has passed."""
    clocks, requests = FakeClocks(), []
    settings = Anomalies(scopes=("team",), auto_tighten="lower")
    monitor = live_monitor(clocks, settings, requests)
    alerts: list[Alert] = []
    for team, true_ts, stamp in skewed_runaway(timedelta(hours=1)):
        clocks.tick((true_ts - clocks.now()).total_seconds())
        alerts += monitor.observe(record(stamp, team=team))
    for _ in range(200):  # team b back to normal
        clocks.tick(6)
        monitor.observe(record(clocks.now(), team="b"))
    assert [a.scope for a in alerts] == ["team:b"]
    assert [(r.scope, r.mode) for r in requests] == [
        ("team:b", "lower"),
        ("team:b", "restore"),
    ]


def test_future_stamp_does_not_hold_another_scope_lowered() -> None:
    """A record stamped a day ahead (a spike of its own on team a) does not
    keep team b lowered: b's restore comes once the cooldown has passed
    without a rule firing on it."""
    clocks, requests = FakeClocks(), []
    settings = Anomalies(scopes=("team",), auto_tighten="lower", cooldown_s=300)
    monitor = live_monitor(clocks, settings, requests)
    for _ in range(400):  # 40 steady minutes on both teams
        clocks.tick(6)
        monitor.observe(record(clocks.now(), team="a"))
        monitor.observe(record(clocks.now(), team="b"))
    monitor.observe(record(clocks.now() + timedelta(days=1), team="a", usd="0.5"))
    for _ in range(200):  # team b runs away
        clocks.tick(0.3)
        monitor.observe(record(clocks.now(), team="b"))
    runaway_end, restored_after = clocks.mono, None
    for _ in range(200):  # team b back to normal
        clocks.tick(6)
        monitor.observe(record(clocks.now(), team="b"))
        if restored_after is None and ("team:b", "restore") in modes(requests):
            restored_after = clocks.mono - runaway_end
    assert [m for m in modes(requests) if m[0] == "team:b"] == [
        ("team:b", "lower"),
        ("team:b", "restore"),
    ]
    assert restored_after is not None
    assert restored_after <= 300 + 60


def modes(requests: list[Tighten]) -> list[tuple[str, str]]:
    return [(r.scope, r.mode) for r in requests]


def test_governor_monitor_counts_on_the_live_clock() -> None:
    """The monitor Governor(anomalies=Anomalies(...)) makes uses the live
    clock; one made by hand counts record time unless told otherwise."""
    gov = Governor(anomalies=Anomalies())
    assert gov.monitor is not None
    assert gov.monitor._clock is not None
    gov.close()
    assert AnomalyMonitor(Anomalies())._clock is None


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"clock": "wall"}, "clock must be 'records' or 'live'"),
        ({"clock": "live", "max_record_lead_s": -1}, "max_record_lead_s must be"),
        ({"clock": "live", "max_record_lead_s": float("nan")}, "max_record_lead_s"),
    ],
)
def test_bad_clock_options_are_refused(
    changes: dict[str, object], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        AnomalyMonitor(Anomalies(), **changes)  # type: ignore[arg-type]


@pytest.mark.parametrize("field", ["interval_s", "burst_window_s", "cooldown_s"])
def test_durations_under_a_microsecond_are_refused(field: str) -> None:
    """A duration that rounds to no microseconds is refused with what to give
    (it made every record raise ZeroDivisionError)."""
    with pytest.raises(PolicyError, match=f"{field}: must be at least 0.000001"):
        Anomalies(**{field: 1e-7})  # type: ignore[arg-type]


def test_a_microsecond_and_no_cooldown_are_accepted() -> None:
    settings = Anomalies(interval_s=1e-6, burst_window_s=1e-6, cooldown_s=0)
    detector = AnomalyDetector(settings)
    for i in range(20):
        ts = T0 + timedelta(microseconds=i)
        assert detector.observe("all", ts, usd=Decimal(1), tokens=1) == []


@pytest.mark.parametrize(
    ("changes", "repeated"),
    [
        ({"scopes": ("team", "all", "team")}, "scopes: names 'team' more than once"),
        ({"metrics": ("usd", "usd")}, "metrics: names 'usd' more than once"),
    ],
)
def test_repeated_scopes_and_metrics_are_refused(
    changes: dict[str, object], repeated: str
) -> None:
    """A scope or metric listed twice would count every call twice."""
    with pytest.raises(PolicyError, match=repeated):
        Anomalies(**changes)  # type: ignore[arg-type]


# -- late records in the burst window: a host whose clock is behind ----------
# Records stamped before the latest time a series has seen count in its burst
# window at that latest time. While no call on time moves that time on, the
# late stamps' own spacing moves them out of the window again, so steady
# traffic from a lagging host is no burst, and many calls in a short span
# from it still are.

BEHIND = timedelta(hours=1)


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
        alerts += monitor.observe(record(clocks.now() + skew, team="a"))
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
    monitor = live_monitor(clocks, Anomalies(scopes=("all", "team")))
    assert feed(monitor, clocks, 800) == []
    assert feed(monitor, clocks, 39, skew=-BEHIND) == []
    assert burst_usd(monitor) == Decimal("0.008")
    assert len(monitor._detector._series[("team:a", "usd")].late) == 4


def test_burst_from_host_behind_still_alerts() -> None:
    """Many calls within a second from a host an hour behind are a burst."""
    clocks = FakeClocks()
    monitor = live_monitor(clocks, Anomalies(scopes=("all", "team")))
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
