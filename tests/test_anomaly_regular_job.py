"""A regular job on a busy scope: its usual runs are no anomaly of the wider scope.

Steady web traffic (10 calls a minute) and an hourly job (20 calls within
5 s) share the `all` scope, and sometimes a team. The job's own scopes know
it is regular; the wider ones must not alert on each run and block the job,
while a real runaway on top of the same traffic is still blocked where it is.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from governor.anomaly import Alert, Anomalies, AnomalyMonitor, Tighten
from governor.spend import SpendRecord

T0 = datetime(2026, 11, 2, tzinfo=UTC)
HOURS = 7
RUNAWAY_HOUR = 5

Call = tuple[float, str, str]  # seconds after T0, team, feature


def web(team: str = "web", feature: str = "chat") -> list[Call]:
    """A call every 6 s for the whole run."""
    return [(float(s), team, feature) for s in range(0, HOURS * 3600, 6)]


def job(
    team: str = "batch",
    calls: Callable[[int], int] = lambda hour: 20,
    offset_s: float = 0.0,
    step_s: float = 0.25,
) -> list[Call]:
    """An hourly job, feature etl: ``calls(hour)`` calls ``step_s`` apart."""
    return [
        (hour * 3600 + offset_s + j * step_s, team, "etl")
        for hour in range(HOURS)
        for j in range(calls(hour))
        if hour * 3600 + offset_s >= 0
    ]


def burst(second: float, team: str, feature: str, calls: int = 30) -> list[Call]:
    """``calls`` calls 0.3 s apart from ``second`` on."""
    return [(second + j * 0.3, team, feature) for j in range(calls)]


class Run:
    """A monitor with ``auto_tighten="block"`` fed the calls in time order."""

    def __init__(self, calls: list[Call], **settings: object) -> None:
        self.alerts: list[Alert] = []
        self.tightens: list[Tighten] = []
        monitor = AnomalyMonitor(
            Anomalies(auto_tighten="block", **settings),
            hooks=[self.alerts.append],
            on_tighten=self.tightens.append,
        )
        for i, (second, team, feature) in enumerate(sorted(calls)):
            monitor.observe(
                SpendRecord(
                    ts=T0 + timedelta(seconds=second),
                    task_id=f"t{i}",
                    call_id=f"c{i}",
                    model="gpt-4o-mini",
                    input_tokens=1000,
                    output_tokens=250,
                    cost_usd=Decimal("0.0003"),
                    team=team,
                    feature=feature,
                )
            )
        monitor.close()

    def blocked(self) -> list[tuple[str, datetime]]:
        """(scope, time of the alert) of each block requested."""
        return [(t.scope, t.alert.ts) for t in self.tightens if t.mode == "block"]

    def explained(self, scope: str) -> list[tuple[str, ...]]:
        """``explained_by`` of each alert on ``scope``."""
        return [a.explained_by for a in self.alerts if a.scope == scope]


def at(hour: int, second: float = 0.0) -> datetime:
    return T0 + timedelta(hours=hour, seconds=second)


@pytest.mark.parametrize("job_team", ["batch", "web"])
@pytest.mark.parametrize("peak_factor", [None, 2.5])
def test_an_hourly_job_on_a_busy_scope_is_neither_alerted_nor_blocked(
    job_team: str, peak_factor: float | None
) -> None:
    """Every run is the job's usual: no alert on `all` or the team, no block.

    Before the fix each run from the second on raised a burst alert on `all`
    (and on the team the job shares with steady traffic) explained by
    `feature:etl`, which was blocked every hour.
    """
    run = Run(web() + job(job_team), burst_peak_factor=peak_factor)
    assert run.alerts == []
    assert run.tightens == []


def test_a_job_that_ends_just_before_a_minute_boundary_raises_no_alert() -> None:
    """The job's calls still in the burst window after the interval closes
    count as the job's: a web call just after the boundary does not alert.

    The job's first run (a scope never seen, bursting) may alert; none after.
    """
    run = Run(web() + job(offset_s=-5.0, step_s=0.2))
    assert [a for a in run.alerts if a.ts > at(1, 60)] == []
    assert [b for b in run.blocked() if b[1] > at(1, 60)] == []


@pytest.mark.parametrize("step_s", [0.25, 0.025])
def test_a_job_ten_times_its_usual_is_blocked_once_at_its_own_scope(
    step_s: float,
) -> None:
    """200 calls instead of 20: the job is blocked on that run only."""
    calls = job(calls=lambda hour: 200 if hour == RUNAWAY_HOUR else 20, step_s=step_s)
    run = Run(web() + calls)
    assert {scope for scope, _ in run.blocked()} == {"feature:etl"}
    assert all(at(RUNAWAY_HOUR) <= ts < at(RUNAWAY_HOUR, 60) for _, ts in run.blocked())
    assert {a.ts.hour for a in run.alerts} == {RUNAWAY_HOUR}
    explained = run.explained("all")
    assert explained
    assert all(scopes[0] == "feature:etl" for scopes in explained)


@pytest.mark.parametrize("second", [1.0, 1800.0])
@pytest.mark.parametrize("job_team", ["batch", "web"])
def test_a_new_feature_bursting_on_top_is_blocked_not_the_job(
    second: float, job_team: str
) -> None:
    """A new feature's 30 calls in 9 s, as the job runs or half an hour later:
    the new feature is blocked and explains `all`; the job is not blamed."""
    start = RUNAWAY_HOUR * 3600 + second
    run = Run(web() + job(job_team) + burst(start, "web", "scrape"))
    assert [scope for scope, _ in run.blocked()] == ["feature:scrape"]
    assert run.explained("all") == [("feature:scrape", "team:web")]


def test_a_steady_feature_bursting_while_the_job_runs_is_blocked() -> None:
    """The chat feature's own burst during the job's run blocks chat, not etl."""
    start = RUNAWAY_HOUR * 3600 + 1.0
    run = Run(web() + job() + burst(start, "web", "chat"))
    assert [scope for scope, _ in run.blocked()] == ["feature:chat"]
    assert run.explained("all") == [("feature:chat", "team:web")]
