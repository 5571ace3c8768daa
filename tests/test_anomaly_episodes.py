"""Count noise, episodes, restoring a lowered limit, and which scope to tighten."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from governor import Budget, Governor, Policy
from governor.anomaly import (
    Alert,
    Anomalies,
    AnomalyDetector,
    AnomalyMonitor,
    Tighten,
)
from governor.anomaly._detector import noisy_threshold
from governor.spend import SpendRecord
from governor.spend._time import to_us

T0 = datetime(2026, 3, 2, tzinfo=UTC)
T0_US = to_us(T0)


def poisson_times(
    per_minute: Callable[[float], float], seconds: float, seed: int
) -> Iterator[float]:
    """Seconds after T0 of Poisson arrivals (thinned at 1,000 calls a minute)."""
    rng = random.Random(seed)
    top = 1000 / 60
    t = 0.0
    while (t := t + rng.expovariate(top)) < seconds:
        if rng.random() * top < per_minute(t) / 60:
            yield t


def replay(detector: AnomalyDetector, times: Iterator[float], seed: int) -> list[float]:
    """One call per arrival ($0.01 and 1,000 tokens, +-20 %); alert times."""
    rng = random.Random(seed)
    found: list[float] = []
    for t in times:
        size = rng.uniform(0.8, 1.2)
        alerts = detector.observe_units(
            "team:search",
            T0_US + int(t * 1_000_000),
            usd_nanos=int(10_000_000 * size),
            tokens=int(1000 * size),
        )
        found += [t] * len(alerts)
    return found


@pytest.mark.parametrize("per_minute", [20.0, 1.0])
def test_a_steady_poisson_day_raises_no_alert(per_minute: float) -> None:
    """A day of Poisson calls at a constant rate is not an anomaly."""
    times = poisson_times(lambda t: per_minute, 86_400, seed=3)
    assert replay(AnomalyDetector(Anomalies()), times, seed=3) == []


def test_a_tenfold_runaway_is_caught_within_seconds() -> None:
    """20 calls a minute for two hours, then 200: an alert within 30 s."""
    start = 7200.5
    times = poisson_times(lambda t: 200.0 if t >= start else 20.0, 8000, seed=5)
    found = replay(AnomalyDetector(Anomalies()), times, seed=5)
    assert found
    assert start <= found[0] <= start + 30


def test_count_noise_threshold_is_the_poisson_quantile() -> None:
    """One call per interval at k = 4: 1 + 4 x 1 + (16 - 1) / 6 = 7.5 calls."""
    assert noisy_threshold(1.0, 0.0, 1.0, 4.0) == pytest.approx(7.5)
    # A measured spread above the count noise is used as it is.
    assert noisy_threshold(100.0, 20.0, 1.0, 4.0) == pytest.approx(182.5)


def record(
    second: float, *, user: str = "u1", team: str = "search", size: int = 1
) -> SpendRecord:
    """A call of ``size`` x ($0.001, 100 tokens), ``second`` s after T0."""
    return SpendRecord(
        ts=T0 + timedelta(seconds=second),
        task_id="t",
        call_id=f"{user}-{second}",
        model="gpt-4o-mini",
        input_tokens=100 * size,
        cost_usd=Decimal("0.001") * size,
        team=team,
        user=user,
    )


def steady(
    monitor: AnomalyMonitor,
    minutes: range,
    users: tuple[str, ...] = ("u1", "u2"),
    per_minute: int = 6,
) -> list[Alert]:
    """``per_minute`` evenly spaced calls a minute for each user."""
    alerts: list[Alert] = []
    for minute in minutes:
        for i in range(per_minute):
            for user in users:
                second = 60 * minute + (i + 0.5) * 60 / per_minute
                alerts += monitor.observe(record(second, user=user))
    return alerts


def runaway(monitor: AnomalyMonitor, minute: int, user: str, calls: int) -> list[Alert]:
    """``calls`` calls by ``user`` within one minute."""
    alerts: list[Alert] = []
    for i in range(calls):
        second = 60 * minute + 0.25 + i * 50 / calls
        alerts += monitor.observe(record(second, user=user))
    return alerts


def watching(**changes: object) -> Anomalies:
    values: dict[str, object] = {"scopes": ("all", "team", "user")}
    values.update(changes)
    return Anomalies(**values)  # type: ignore[arg-type]  # mixed value types by field


def test_one_alert_per_scope_per_episode_with_every_finding() -> None:
    """A spike on both metrics and rules is one alert per scope, not one each."""
    monitor = AnomalyMonitor(watching(scopes=("all", "team")))
    steady(monitor, range(15))
    alerts = runaway(monitor, 15, "u1", 300)
    alerts += runaway(monitor, 16, "u1", 300)  # still the same episode
    assert sorted(a.scope for a in alerts) == ["all", "team:search"]
    # The burst rule fires first, on both metrics, and opens the episode; the
    # deviation rule fires later in it and raises nothing new.
    found = [(f.metric, f.rule) for f in alerts[0].findings]
    assert found == [("usd", "burst"), ("tokens", "burst")]
    assert [f["metric"] for f in alerts[0].to_json_dict()["findings"]] == [
        f.metric for f in alerts[0].findings
    ]


def test_lower_once_per_episode_then_restore() -> None:
    """A spike lowers the team once; back to normal, the lowering is undone."""
    requests: list[Tighten] = []
    settings = watching(scopes=("team",), auto_tighten="lower")
    monitor = AnomalyMonitor(settings, on_tighten=requests.append, restores=True)
    steady(monitor, range(15))
    for minute in range(15, 18):
        runaway(monitor, minute, "u1", 200)
    assert [(r.scope, r.mode) for r in requests] == [("team:search", "lower")]
    steady(monitor, range(18, 40))
    assert [(r.mode, r.factor) for r in requests] == [("lower", 0.5), ("restore", 2.0)]
    assert requests[1].alert == requests[0].alert


def test_the_governors_limit_is_back_after_two_episodes() -> None:
    """Lowered and restored twice, the team's budget is at its full limit again."""
    gov = Governor(Policy(budgets=[Budget(scope="team", max_usd="100")]))
    settings = watching(scopes=("team",), auto_tighten="lower")
    monitor = AnomalyMonitor(settings, on_tighten=gov.apply_tighten, restores=True)
    steady(monitor, range(15))
    runaway(monitor, 15, "u1", 200)
    lowered = gov._factors.get("team:search")
    steady(monitor, range(16, 45))
    runaway(monitor, 45, "u1", 200)
    steady(monitor, range(46, 75))
    gov.close()
    assert (lowered, gov._factors.get("team:search", 1.0)) == (0.5, 1.0)


def test_a_runaway_user_is_blocked_not_the_team() -> None:
    """The team's excess is one user's: the user is blocked, the team is not."""
    requests: list[Tighten] = []
    settings = watching(auto_tighten="block")
    monitor = AnomalyMonitor(settings, on_tighten=requests.append)
    steady(monitor, range(15))
    alerts = runaway(monitor, 15, "u1", 120)
    explained = {a.scope: a.explained_by for a in alerts}
    assert explained["team:search"][0] == "user:u1"
    assert [r.scope for r in requests] == ["user:u1"]


def test_a_new_users_runaway_blocks_that_user() -> None:
    """A user with no history floods the team: the team's alert names the user."""
    requests: list[Tighten] = []
    settings = watching(auto_tighten="block", peers=False)
    monitor = AnomalyMonitor(settings, on_tighten=requests.append)
    steady(monitor, range(15))
    alerts = runaway(monitor, 15, "newcomer", 120)
    assert "team:search" in {a.scope for a in alerts}
    assert [r.scope for r in requests] == ["user:newcomer"]


def test_a_team_wide_rise_tightens_the_team() -> None:
    """Every user spending five times as much is not one user's doing."""
    requests: list[Tighten] = []
    users = ("u1", "u2", "u3", "u4")
    settings = watching(scopes=("team", "user"), auto_tighten="block")
    monitor = AnomalyMonitor(settings, on_tighten=requests.append)
    steady(monitor, range(15), users=users)
    steady(monitor, range(15, 16), users=users, per_minute=30)
    assert "team:search" in [r.scope for r in requests]


def test_a_new_user_far_above_its_peers_alerts() -> None:
    """No history of its own: a new user is judged against the typical user."""
    monitor = AnomalyMonitor(watching(scopes=("user",)))
    steady(monitor, range(15), users=("u1", "u2", "u3"))
    usual = steady(monitor, range(15, 16), users=("u4",))
    (alert,) = runaway(monitor, 15, "u9", 60)
    assert usual == []
    assert (alert.scope, alert.rule) == ("user:u9", "peers")


def test_monitor_forgets_an_episode_only_after_quiet() -> None:
    """Trips within cooldown_s keep the episode open: no second alert or lower."""
    requests: list[Tighten] = []
    settings = watching(scopes=("team",), auto_tighten="lower", cooldown_s=600)
    monitor = AnomalyMonitor(settings, on_tighten=requests.append)
    steady(monitor, range(15))
    alerts = runaway(monitor, 15, "u1", 200)
    steady(monitor, range(16, 20))
    alerts += runaway(monitor, 20, "u1", 400)
    assert ([a.scope for a in alerts], len(requests)) == (["team:search"], 1)


def test_a_restore_after_an_unblock_does_not_raise_the_limit() -> None:
    """unblock() mid-episode already undid the lowering: the restore that
    follows leaves the limit at 1.0, not twice it."""
    gov = Governor(Policy(budgets=[Budget(scope="team", max_usd="100")]))
    requests: list[Tighten] = []
    settings = watching(scopes=("team",), auto_tighten="lower")
    monitor = AnomalyMonitor(settings, on_tighten=requests.append, restores=True)
    steady(monitor, range(15))
    runaway(monitor, 15, "u1", 200)
    steady(monitor, range(16, 45))
    assert [r.mode for r in requests] == ["lower", "restore"]
    gov.apply_tighten(requests[0])
    gov.unblock("team:search")
    gov.apply_tighten(requests[1])
    gov.close()
    assert gov._factors.get("team:search", 1.0) == 1.0


def test_a_callback_gets_no_restore_unless_it_asks() -> None:
    """A callback written for "lower" and "block" alone never sees "restore"."""
    requests: list[Tighten] = []
    settings = watching(scopes=("team",), auto_tighten="lower")
    monitor = AnomalyMonitor(settings, on_tighten=requests.append)
    steady(monitor, range(15))
    runaway(monitor, 15, "u1", 200)
    steady(monitor, range(16, 45))
    assert [r.mode for r in requests] == ["lower"]


def test_a_governors_own_monitor_restores_the_limit() -> None:
    """Governor(anomalies=...) makes its monitor with restores on."""
    from governor.anomaly import Anomalies

    gov = Governor(Policy(), anomalies=Anomalies(auto_tighten="lower"))
    assert gov.monitor is not None
    assert gov.monitor._restores is True
    gov.close()
