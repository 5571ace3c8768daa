"""`governor replay` on the recorded timeline: recorded clock, time order
across tasks, per-call attribution, unreadable quality, parts not simulated."""

from __future__ import annotations

import dataclasses
import json
import logging
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from governor import Budget, Loops, Policy
from governor._replay import load_policy, replay
from governor.cli import main
from governor.spend import JsonlSpendStore, SpendRecord

# gpt-4o: $2.50 / $10 per million: 10,000 in and 1,000 out cost $0.035.
CALL = Decimal("0.035")
# Long past, so a window picked by today's clock holds all of these calls.
NOV_30 = datetime(2025, 11, 30, 23, 30, tzinfo=UTC)


def call(
    ts: datetime, task_id: str, *, team: str | None = "search", **values: Any
) -> SpendRecord:
    """A recorded $0.035 gpt-4o call."""
    return SpendRecord(
        ts=ts,
        task_id=task_id,
        call_id=f"{task_id}-{ts.timestamp()}",
        model="gpt-4o",
        input_tokens=10_000,
        output_tokens=1_000,
        cost_usd=CALL,
        team=team,
        **values,
    )


def stops(run: Any) -> dict[str, tuple[int, str | None]]:
    return {t.task_id: (t.calls, t.stop_reason) for t in run.tasks.values()}


# One call per task: Oct 31, Nov 30 23:30, Dec 1 00:30 (UTC), Dec 15.
MONTHS = [
    call(datetime(2025, 10, 31, 12, tzinfo=UTC), "oct31"),
    call(NOV_30, "nov30"),
    call(NOV_30 + timedelta(hours=1), "dec1"),
    call(datetime(2025, 12, 15, 0, 30, tzinfo=UTC), "dec15"),
]


@pytest.mark.parametrize(
    ("budget", "stopped"),
    [
        (Budget(scope="team", max_usd="0.05", period="day"), set()),
        (Budget(scope="team", max_usd="0.05", period="month"), {"dec15"}),
        (
            Budget(
                scope="team",
                max_usd="0.05",
                period="month",
                timezone="America/New_York",
            ),
            {"dec1"},  # 19:30 on Nov 30 in New York
        ),
        (
            Budget(scope="team", max_usd="0.05", period="rolling", window_s=7200),
            {"dec1"},
        ),
    ],
    ids=["day", "month", "month-new-york", "rolling-2h"],
)
def test_budget_windows_follow_the_recorded_times(
    budget: Budget, stopped: set[str]
) -> None:
    """Calendar and rolling windows are those of each call's recorded time,
    not of the time the replay runs (all four calls in one window)."""
    run = replay(MONTHS, Policy(budgets=[budget]))
    assert {k for k, (_, reason) in stops(run).items() if reason} == stopped


def test_a_week_of_daily_spend_fits_a_daily_budget() -> None:
    """Ten $0.035 calls a day for a week against a $0.40 user-day budget:
    no day crosses it, so nothing is stopped."""
    records = [
        call(NOV_30 + timedelta(days=d, minutes=30 * k), f"d{d}k{k}", user="u1")
        for d in range(7)
        for k in range(10)
    ]
    policy = Policy(budgets=[Budget(scope="user", max_usd="0.40", period="day")])
    run = replay(records, policy)
    assert (run.stopped, len(run.tasks)) == (0, 70)


def test_max_wall_s_counts_the_recorded_duration() -> None:
    """A task whose calls span an hour is stopped at the call past max_wall_s."""
    start = datetime(2025, 11, 20, 9, tzinfo=UTC)
    records = [call(start + timedelta(minutes=m), "long") for m in (0, 20, 60)]
    run = replay(records, Policy(loops=Loops(max_wall_s=600)))
    assert stops(run) == {"long": (1, "loop_detected")}


def test_calls_replay_in_time_order_across_tasks() -> None:
    """A1 09:00, B1 09:05, A2 09:10 under a $0.07 team budget: A2 is the
    call that crosses it, so A is stopped and B is not."""
    nine = datetime(2025, 12, 5, 9, tzinfo=UTC)
    records = [
        call(nine, "A"),
        call(nine + timedelta(minutes=5), "B"),
        call(nine + timedelta(minutes=10), "A"),
    ]
    run = replay(records, Policy(budgets=[Budget(scope="team", max_usd="0.07")]))
    assert stops(run) == {"A": (1, "budget_exceeded"), "B": (1, None)}
    assert list(run.tasks) == ["A", "B"]


def test_each_call_is_charged_to_its_own_records_values() -> None:
    """One task's calls for users a, b, c fit a $0.05 user budget each; a
    second call for user a crosses it."""
    nine = datetime(2025, 12, 5, 9, tzinfo=UTC)
    policy = Policy(budgets=[Budget(scope="user", max_usd="0.05", period="total")])
    users = ["a", "b", "c"]
    records = [
        call(nine + timedelta(minutes=i), "T", team=None, user=u)
        for i, u in enumerate(users)
    ]
    assert stops(replay(records, policy)) == {"T": (3, None)}
    again = [*records, call(nine + timedelta(minutes=5), "T", team=None, user="a")]
    assert stops(replay(again, policy)) == {"T": (3, "budget_exceeded")}


@pytest.mark.parametrize("value", ["NaN", "inf", "-Infinity"])
def test_non_finite_quality_is_passed_over_and_json_stays_json(
    value: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A NaN or infinite quality tag is unreadable, as other bad values are:
    the --json document holds no NaN or Infinity (which JSON lacks)."""
    trace = tmp_path / "trace.jsonl"
    task_id = f"q-{value}"
    record = call(NOV_30, task_id, tags={"quality": value})
    JsonlSpendStore(trace).record_many([record])
    with caplog.at_level(logging.WARNING, logger="governor._replay"):
        assert main(["replay", "--db", str(trace), "--json"]) == 0

    def refuse(constant: str) -> None:
        raise AssertionError(f"{constant} in the JSON output")

    out = json.loads(capsys.readouterr().out, parse_constant=refuse)
    assert out["quality"] is None
    assert f"task {task_id!r} has quality={value!r}" in caplog.text


def test_a_cascade_and_cache_are_said_not_simulated(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Replaying a policy with a cascade or cache warns that those parts are
    not simulated, and the JSON names them."""
    trace = tmp_path / "trace.jsonl"
    JsonlSpendStore(trace).record_many(MONTHS)
    args = ["compare", "--db", str(trace), "--b", "pack:cost_saver", "--json"]
    with caplog.at_level(logging.WARNING, logger="governor._replay"):
        assert main(args) == 0
    out = json.loads(capsys.readouterr().out)
    assert (out["a"]["not_simulated"], out["b"]["not_simulated"]) == (
        [],
        ["cascade", "cache"],
    )
    assert "a cascade and a cache, which replay does not simulate" in caplog.text
    assert replay(MONTHS, load_policy("default")).not_simulated == ()


def test_a_capped_call_is_said_capped(caplog: pytest.LogCaptureFixture) -> None:
    """A call worth more than a ledger holds exactly is counted at that
    figure, and the replay says so."""
    huge = dataclasses.replace(
        call(NOV_30, "huge-call-task"), input_tokens=10**15, output_tokens=10**15
    )
    with caplog.at_level(logging.WARNING, logger="governor._replay"):
        run = replay([huge], Policy())
    assert run.cost_usd == Decimal("9007199.254740991")
    assert "in task 'huge-call-task'" in caplog.text
    assert "capped figure" in caplog.text


def test_a_task_budget_holds_across_days_between_its_calls() -> None:
    """Four calls two days apart under a $0.05 task budget: the second call
    crosses it, however long the task paused (its line does not lapse)."""
    start = datetime(2025, 12, 1, 9, tzinfo=UTC)
    records = [call(start + timedelta(days=2 * i), "T") for i in range(4)]
    run = replay(records, Policy(budgets=[Budget(max_usd="0.05")]))
    assert stops(run) == {"T": (1, "budget_exceeded")}


def test_calls_at_one_moment_replay_in_call_id_order() -> None:
    """Ties in time are broken by call id, not by the store's order."""
    nine = datetime(2025, 12, 5, 9, tzinfo=UTC)
    first = dataclasses.replace(call(nine, "B"), call_id="1")
    second = dataclasses.replace(call(nine, "A"), call_id="2")
    policy = Policy(budgets=[Budget(scope="team", max_usd="0.05")])
    for order in ([first, second], [second, first]):
        assert stops(replay(order, policy)) == {
            "B": (1, None),
            "A": (0, "budget_exceeded"),
        }


def test_a_mean_of_huge_finite_qualities_stays_finite() -> None:
    """Two tasks tagged 1e308: their mean is 1e308, not an overflow."""
    nine = datetime(2025, 12, 5, 9, tzinfo=UTC)
    records = [call(nine, task, tags={"quality": "1e308"}) for task in ("T0", "T1")]
    assert replay(records, Policy()).quality == 1e308


def test_a_call_is_replayed_in_the_window_it_started_in() -> None:
    """Live, a call that starts at 23:59 and ends after midnight is charged
    to the day it started: the replay charges the same day, so a day budget
    that held live (one call a day) holds in the replay too."""
    new_year = datetime(2026, 1, 1, tzinfo=UTC)
    late = dataclasses.replace(
        call(new_year + timedelta(seconds=30), "late"), latency_s=90.0
    )
    next_day = call(new_year + timedelta(minutes=5), "next")
    day = Policy(budgets=[Budget(scope="team", max_usd="0.04", period="day")])
    run = replay([late, next_day], day)
    assert stops(run) == {"late": (1, None), "next": (1, None)}


def test_a_corrupt_latency_moves_its_call_back_a_week_at_most() -> None:
    """A latency no call can have (1e12 s) is not subtracted whole: the
    replay runs, the call a week before its record's time at most."""
    broken = dataclasses.replace(call(NOV_30, "broken"), latency_s=1e12)
    day = Policy(budgets=[Budget(scope="team", max_usd="1", period="day")])
    run = replay([broken, call(NOV_30, "fine")], day)
    assert stops(run) == {"broken": (1, None), "fine": (1, None)}
