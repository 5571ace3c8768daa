"""Past max_series: which series goes, and nothing it tightened stays tightened."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from governor._errors import PolicyError
from governor.anomaly import Anomalies, AnomalyDetector, AnomalyMonitor, Tighten
from governor.spend import SpendRecord

T0 = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
BASE = [100, 110, 90, 100, 105]


def settings(**changes: object) -> Anomalies:
    """Tokens only, 60 s intervals, a five-interval window, a 120 s cooldown.

    k = 2 with no count-noise allowance and no burst or peers rule, so only a
    scope's own deviation trips.
    """
    values: dict[str, object] = {
        "k": 2.0,
        "count_noise": False,
        "interval_s": 60,
        "window_intervals": 5,
        "min_history_intervals": 5,
        "metrics": ("tokens",),
        "scopes": ("team",),
        "cooldown_s": 120,
        "burst_factor": 1000,
        "peers": False,
    }
    values.update(changes)
    return Anomalies(**values)  # type: ignore[arg-type]  # mixed value types by field


def at(interval: int, second: float = 1.0) -> datetime:
    """A time ``second`` seconds into interval ``interval`` after T0."""
    return T0 + timedelta(seconds=60 * interval + second)


def feed(detector: AnomalyDetector, scope: str, ts: datetime, tokens: int) -> int:
    """Observe one call; the number of alerts it raised."""
    return len(detector.observe(scope, ts, usd=Decimal(0), tokens=tokens))


def spike(detector: AnomalyDetector, scope: str) -> None:
    """Five steady intervals, then a spike in interval 5 that opens an episode."""
    for i, tokens in enumerate(BASE):
        assert feed(detector, scope, at(i), tokens) == 0
    assert feed(detector, scope, at(5), 500) == 1


def test_a_scope_in_an_episode_outlives_a_flood_of_new_scopes() -> None:
    """New scopes push out idle series, not one whose episode is open."""
    ended: list[tuple[str, datetime]] = []
    detector = AnomalyDetector(
        settings(), max_series=3, on_episode_end=lambda s, t: ended.append((s, t))
    )
    spike(detector, "team:a")
    for n in range(5):
        assert feed(detector, f"team:new{n}", at(5, 2), 1) == 0
    assert detector.evicted == 3
    # Still in its episode: a second spike raises nothing new ...
    assert feed(detector, "team:a", at(5, 3), 500) == 0
    # ... and the episode is seen to end once the cooldown has passed.
    assert feed(detector, "team:a", at(8), 100) == 0
    assert ended == [("team:a", at(8))]


def test_when_every_series_has_an_episode_the_dropped_one_is_ended() -> None:
    """The least recently fed goes, its episode ended through on_episode_end."""
    ended: list[tuple[str, datetime]] = []
    detector = AnomalyDetector(
        settings(), max_series=2, on_episode_end=lambda s, t: ended.append((s, t))
    )
    spike(detector, "team:a")
    spike(detector, "team:b")
    assert feed(detector, "team:c", at(5, 2), 1) == 0
    assert ended == [("team:a", at(5, 2))]
    assert detector.evicted == 1
    # team:b kept its baseline and its episode.
    assert feed(detector, "team:b", at(5, 3), 500) == 0
    assert feed(detector, "team:b", at(8), 100) == 0
    assert ended[1:] == [("team:b", at(8))]


def test_an_episode_that_is_over_is_ended_and_dropped_first() -> None:
    """A scope quiet since its cooldown passed goes before an idle baseline."""
    ended: list[tuple[str, datetime]] = []
    detector = AnomalyDetector(
        settings(), max_series=3, on_episode_end=lambda s, t: ended.append((s, t))
    )
    for i, tokens in enumerate(BASE):
        assert feed(detector, "team:b", at(i), tokens) == 0
    spike(detector, "team:a")
    assert feed(detector, "team:c", at(5, 2), 1) == 0
    # Two intervals after team:a's last trip its episode is over, unseen.
    assert feed(detector, "team:d", at(8), 1) == 0
    assert ended == [("team:a", at(8))]
    assert detector.evicted == 1
    assert feed(detector, "team:b", at(8, 2), 1) == 0
    assert detector.evicted == 1  # team:b's series was still there


def record(n: int, user: str, ts: datetime) -> SpendRecord:
    """One call of 100 + 100 tokens and $0.001 by ``user``."""
    return SpendRecord(
        ts=ts,
        task_id=f"t{n}",
        call_id=f"c{n}",
        model="gpt-4o-mini",
        input_tokens=100,
        output_tokens=100,
        cost_usd=Decimal("0.001"),
        user=user,
    )


def test_a_lowered_limit_is_restored_after_a_flood_of_new_users() -> None:
    """A runaway user, then more one-off users than max_series: still restored."""
    got: list[tuple[str, str]] = []

    def on_tighten(request: Tighten) -> None:
        got.append((request.scope, request.mode))

    monitor = AnomalyMonitor(
        Anomalies(scopes=("user",), auto_tighten="lower", max_series=40),
        on_tighten=on_tighten,
        restores=True,
    )
    calls = iter(range(1_000_000))
    for step in range(90):
        for u in range(10):
            ts = T0 + timedelta(seconds=10 * step)
            monitor.observe(record(next(calls), f"u{u}", ts))
    start = T0 + timedelta(seconds=900)
    for j in range(60):  # a runaway
        ts = start + timedelta(seconds=j / 10)
        monitor.observe(record(next(calls), "u7", ts))
    assert got == [("user:u7", "lower")]
    for j in range(30):  # 60 new series, 40 kept
        monitor.observe(record(next(calls), f"new{j}", start))
    for step in range(1, 90):
        for u in range(10):
            ts = start + timedelta(seconds=10 * step)
            monitor.observe(record(next(calls), f"u{u}", ts))
    assert got == [("user:u7", "lower"), ("user:u7", "restore")]


def test_dropping_series_warns_at_most_once_a_minute(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The warning gives the cap, the count, and what to do about it."""
    from governor._quiet import Quiet

    clock = [1000.0]
    monitor = AnomalyMonitor(settings(scopes=("session",), max_series=4))
    monkeypatch.setattr(monitor, "_quiet", Quiet(clock=lambda: clock[0]))
    caplog.set_level(logging.WARNING, logger="governor.anomaly._monitor")

    def sessions(first: int, count: int) -> None:
        for n in range(first, first + count):
            session = SpendRecord(
                ts=at(0),
                task_id=f"t{n}",
                call_id=f"c{n}",
                model="gpt-4o-mini",
                input_tokens=1,
                output_tokens=1,
                session=f"s{n}",
            )
            monitor.observe(session)

    def warnings() -> list[str]:
        return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]

    sessions(0, 5)
    assert len(warnings()) == 1
    message = warnings()[0]
    assert "dropped 1 scope series (1 in all so far)" in message
    assert "max_series=4" in message
    assert "such as 'session', from Anomalies.scopes" in message
    assert "Anomalies(max_series=...)" in message
    clock[0] += 59
    sessions(5, 3)
    assert len(warnings()) == 1
    clock[0] += 2
    sessions(8, 1)
    assert len(warnings()) == 2
    assert "dropped 4 scope series (5 in all so far)" in warnings()[1]


def test_max_series_must_be_positive() -> None:
    """Zero series kept is refused, by the settings and by the detector."""
    with pytest.raises(PolicyError, match="max_series"):
        Anomalies(max_series=0)
    with pytest.raises(ValueError, match="max_series must be at least 1"):
        AnomalyDetector(Anomalies(), max_series=0)


def test_an_episode_ended_on_its_own_call_keeps_its_series() -> None:
    """Episodes over when a call comes: the scopes that call feeds keep their
    baselines; a silent one's series goes first."""
    ended: list[str] = []
    detector = AnomalyDetector(
        settings(scopes=("user", "team")),
        max_series=2,
        on_episode_end=lambda scope, ts: ended.append(scope),
    )

    def call(interval: int, user: str, tokens: int) -> list[str]:
        rec = SpendRecord(
            ts=at(interval),
            task_id="t",
            call_id=f"{user}-{interval}-{tokens}",
            model="gpt-4o-mini",
            input_tokens=tokens,
            team="a",
            user=user,
        )
        return [alert.scope for alert in detector.observe_record(rec)]

    for i, tokens in enumerate(BASE):
        assert call(i, "x", tokens) == []
    assert call(5, "x", 500) == ["user:x", "team:a"]
    assert call(8, "z", 100) == []  # user:z's new series drops one
    assert sorted(ended) == ["team:a", "user:x"]
    assert detector.evicted == 1
    # team:a kept its baseline: a spike on it alerts at once.
    assert call(8, "z", 500) == ["team:a"]
