"""Which scope an alert blames, episodes of silent scopes, lowering with no budget."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from governor import Budget
from governor.anomaly import (
    Alert,
    Anomalies,
    AnomalyDetector,
    AnomalyMonitor,
    Tighten,
)
from governor.spend import SpendRecord

T0 = datetime(2026, 12, 1, tzinfo=UTC)

Call = tuple[float, str]  # seconds after T0, user


def record(second: float, user: str, usd: str = "0.01") -> SpendRecord:
    """One call on team search by ``user``: ``usd`` dollars, 1,000 tokens."""
    return SpendRecord(
        ts=T0 + timedelta(seconds=second),
        task_id="t",
        call_id=f"{user}-{second}",
        model="m",
        input_tokens=1000,
        cost_usd=Decimal(usd),
        team="search",
        user=user,
    )


def every(user: str, start_s: float, end_s: float, step_s: float) -> list[Call]:
    """A call by ``user`` every ``step_s`` seconds from ``start_s`` to ``end_s``."""
    calls: list[Call] = []
    second = start_s
    while second < end_s:
        calls.append((second, user))
        second += step_s
    return calls


class Run:
    """A monitor over team search's users, with what it said and requested."""

    def __init__(self, settings: Anomalies, **monitor: object) -> None:
        self.requests: list[Tighten] = []
        self.alerts: list[tuple[Alert, str]] = []  # with the crossing call's user
        self.blocked: set[str] = set()
        self.refused: dict[str, int] = {}
        self.monitor = AnomalyMonitor(
            settings,
            on_tighten=self.requests.append,
            **monitor,  # type: ignore[arg-type]  # keyword arguments as given
        )

    def feed(self, calls: list[Call], usd: str = "0.01") -> None:
        """Observe the calls in time order; a blocked user's are refused."""
        for second, user in sorted(calls):
            if {f"user:{user}", "team:search"} & self.blocked:
                self.refused[user] = self.refused.get(user, 0) + 1
                continue
            for alert in self.monitor.observe(record(second, user, usd)):
                self.alerts.append((alert, user))
            self.blocked |= {r.scope for r in self.requests if r.mode == "block"}

    def explained(self, scope: str) -> tuple[str, ...]:
        """``explained_by`` of the alert on ``scope``."""
        (found,) = [a.explained_by for a, _ in self.alerts if a.scope == scope]
        return found

    def tightened(self) -> list[tuple[str, str]]:
        """(scope, mode) of each request, in order."""
        return [(r.scope, r.mode) for r in self.requests]


def two_steady_users(minutes: int) -> list[Call]:
    """s0 and s1 on team search, 10 calls a minute each."""
    return every("s0", 0, 60 * minutes, 6) + every("s1", 3, 60 * minutes, 6)


@pytest.mark.parametrize(
    ("warm_up", "crossing"),
    [
        # New in minute 21: a steady user's call is the one that crosses.
        (False, "s0"),
        # 20 calls in minute 20 (not yet an alert), then 30 a minute: its
        # one interval of history is the runaway's own, not its usual level.
        (True, "u-loop"),
    ],
)
def test_a_new_users_runaway_blocks_the_user_whoever_crosses_the_line(
    warm_up: bool, crossing: str
) -> None:
    """The team's alert names the new user whichever call crossed the line,
    so the user is blocked and the steady users work on."""
    run = Run(Anomalies(scopes=("all", "team", "user"), auto_tighten="block"))
    calls = two_steady_users(30) + every("u-loop", 21 * 60 + 0.5, 24 * 60, 2)
    if warm_up:
        calls += every("u-loop", 20 * 60 + 0.5, 21 * 60, 3)
    run.feed(calls)
    team = [user for alert, user in run.alerts if alert.scope == "team:search"]
    assert team == [crossing]
    assert run.explained("team:search") == ("user:u-loop",)
    assert run.explained("all") == ("user:u-loop", "team:search")
    assert run.tightened() == [("user:u-loop", "block")]
    assert set(run.refused) == {"u-loop"}


def test_a_steady_users_call_does_not_make_it_the_culprit() -> None:
    """The detector alone: a steady user's call crosses the team's line, and
    the team's alert names the new user, not the caller."""
    detector = AnomalyDetector(Anomalies(scopes=("team", "user")))
    calls = two_steady_users(30) + every("u-loop", 21 * 60 + 0.5, 24 * 60, 2)
    for second, user in sorted(calls):
        for alert in detector.observe_record(record(second, user)):
            if alert.scope == "team:search":
                assert (user, alert.explained_by) == ("s0", ("user:u-loop",))
                return
    pytest.fail("the team never alerted")


def loop_then_silence() -> tuple[Run, list[Call]]:
    """s0 steady at 6 calls a minute ($0.001) for 90 minutes; a new user
    u-loop makes 25 calls in minute 15, 40 in minute 16, then none."""
    run = Run(
        Anomalies(scopes=("all", "team", "user"), auto_tighten="lower"),
        restores=True,
    )
    calls = every("s0", 5, 90 * 60, 10)
    calls += every("u-loop", 15 * 60 + 0.25, 15 * 60 + 50, 2)
    calls += every("u-loop", 16 * 60 + 0.25, 16 * 60 + 48, 1.2)
    return run, calls


def test_a_users_alert_is_never_explained_by_its_team() -> None:
    """The user's first interval out-spends the team's usual level, but a
    team is a wider kind of scope: it never explains its user's alert, and
    the user's alert never lowers the team."""
    run, calls = loop_then_silence()
    run.feed(calls, usd="0.001")
    assert run.explained("user:u-loop") == ()
    assert run.explained("team:search") == ("user:u-loop",)
    assert ("team:search", "lower") not in run.tightened()
    assert run.tightened() == [("user:u-loop", "lower"), ("user:u-loop", "restore")]


def test_an_episode_ends_when_its_scope_falls_silent() -> None:
    """No call on the scope after its spike: its episode is still seen to end
    once cooldown_s has passed, at the next call on another scope."""
    ended: list[tuple[str, datetime]] = []
    settings = Anomalies(
        k=2.0,
        count_noise=False,
        window_intervals=5,
        min_history_intervals=5,
        metrics=("tokens",),
        scopes=("team",),
        cooldown_s=120,
        burst_factor=1000,
        peers=False,
    )
    detector = AnomalyDetector(
        settings, on_episode_end=lambda scope, ts: ended.append((scope, ts))
    )

    def at(minute: int) -> datetime:
        return T0 + timedelta(minutes=minute, seconds=1)

    def feed(scope: str, minute: int, tokens: int) -> int:
        alerts = detector.observe(scope, at(minute), usd=Decimal(0), tokens=tokens)
        return len(alerts)

    for minute, tokens in enumerate([100, 110, 90, 100, 105]):
        assert feed("team:a", minute, tokens) == 0
        assert feed("team:b", minute, tokens) == 0
    assert feed("team:a", 5, 500) == 1
    assert feed("team:b", 6, 100) == 0
    assert ended == []  # two minutes have not passed yet
    assert feed("team:b", 7, 100) == 0
    assert ended == [("team:a", at(7))]


def test_a_lowering_held_by_a_silent_user_is_restored() -> None:
    """A runaway user stops calling: its lowered limit comes back once the
    cooldown has passed, on the other users' calls."""
    run = Run(Anomalies(scopes=("user",), auto_tighten="lower"), restores=True)
    calls = every("s0", 0, 60 * 60, 10) + every("s1", 5, 60 * 60, 10)
    calls += every("u-loop", 15 * 60 + 0.25, 15 * 60 + 50, 1)
    run.feed(calls)
    assert run.tightened() == [("user:u-loop", "lower"), ("user:u-loop", "restore")]
    (restore,) = [r for r in run.requests if r.mode == "restore"]
    assert restore.factor == 2.0


def a_runaway() -> list[Call]:
    """s0, s1 and u7 at 10 calls a minute; from minute 15 u7 makes 60."""
    return (
        two_steady_users(20)
        + every("u7", 1, 15 * 60, 6)
        + every("u7", 15 * 60 + 0.5, 20 * 60, 1)
    )


def runaway_user(budgets: list[Budget], **settings: object) -> Run:
    """:func:`a_runaway` watched on teams and users, with these budgets."""
    values: dict[str, object] = {
        "scopes": ("team", "user"),
        "auto_tighten": "lower",
    }
    values.update(settings)
    run = Run(
        Anomalies(**values),  # type: ignore[arg-type]  # mixed value types by field
        budgets=budgets,
    )
    run.feed(a_runaway())
    return run


def test_lower_on_a_scope_without_a_budget_warns_and_sends_nothing(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The user has no budget to lower: a WARNING says what to configure, and
    the team (which has one) is not lowered in its place."""
    with caplog.at_level(logging.WARNING, logger="governor.anomaly._monitor"):
        run = runaway_user([Budget(scope="team", max_usd=Decimal(100))])
    assert run.explained("team:search") == ("user:u7",)
    assert run.tightened() == []
    message = caplog.records[0].getMessage()
    assert "auto_tighten='lower' has no budget to lower on user:u7" in message
    assert "add a Budget(scope='user', max_usd=...)" in message
    assert "or use auto_tighten='block'" in message


@pytest.mark.parametrize(
    "budget",
    [
        Budget(scope="user", max_usd=Decimal(1)),
        Budget(scope="user", key="u7", max_tokens=10_000),
    ],
)
def test_lower_on_a_scope_with_a_budget_lowers_it(
    budget: Budget, caplog: pytest.LogCaptureFixture
) -> None:
    """A budget for every user, or for this one, is lowered without a word."""
    with caplog.at_level(logging.WARNING, logger="governor.anomaly._monitor"):
        run = runaway_user([budget])
    assert run.tightened() == [("user:u7", "lower")]
    assert "no budget to lower" not in caplog.text


def test_lower_on_a_model_scope_says_budgets_cannot_limit_it(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A model's spike: budgets have no model scope, so the advice is to stop
    tightening models, not to add a budget that cannot exist."""
    with caplog.at_level(logging.WARNING, logger="governor.anomaly._monitor"):
        run = runaway_user([Budget(scope="user", key="other", max_usd=Decimal(1))])
        other = Run(
            Anomalies(scopes=("model",), auto_tighten="lower"),
            budgets=[Budget(scope="team", max_usd=Decimal(1))],
        )
        other.feed(a_runaway())
    assert (run.tightened(), other.tightened()) == ([], [])
    assert "key='u7'" in caplog.text
    assert "budgets cannot limit model scopes; drop 'model'" in caplog.text


def test_without_budgets_given_every_scope_is_lowered() -> None:
    """A monitor not told the budgets sends "lower" as it always did."""
    run = Run(Anomalies(scopes=("team", "user"), auto_tighten="lower"))
    run.feed(a_runaway())
    assert run.tightened() == [("user:u7", "lower")]


def test_a_governors_monitor_knows_the_policys_budgets() -> None:
    """Governor(anomalies=...) gives its monitor the policy's budgets, so
    "lower" can tell a scope that has none."""
    from governor import Governor, Policy

    gov = Governor(
        Policy(budgets=[Budget(scope="team", max_usd=Decimal(100))]),
        anomalies=Anomalies(auto_tighten="lower"),
    )
    assert gov.monitor._has_budget("team:search") is True
    assert gov.monitor._has_budget("user:u7") is False
    gov.close()
