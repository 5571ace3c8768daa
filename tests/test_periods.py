"""Budget periods and scopes: windows, key suffixes, resets and applying lines."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from itertools import pairwise
from zoneinfo import ZoneInfo

import pytest

from governor._errors import ConfigError
from governor.budgets import (
    RollingLine,
    lines_for,
    parse_line_key,
    window_at,
    window_for,
)
from governor.policies import Budget
from governor.stores import Line, MemoryLedger

PARIS = ZoneInfo("Europe/Paris")


class Clock:
    """An injectable wall clock the test moves by hand."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def test_month_window_is_the_calendar_month_in_the_zone() -> None:
    """Late on 31 January UTC is already February in Paris."""
    budget = Budget(scope="team", max_usd="10", period="month", timezone="Europe/Paris")
    window = window_for(budget, datetime(2026, 1, 31, 23, 30, tzinfo=UTC))
    assert window.key_suffix == "#month:2026-02@Europe/Paris"
    assert window.starts_at == datetime(2026, 2, 1, tzinfo=PARIS)
    assert window.resets_at == datetime(2026, 3, 1, tzinfo=PARIS)


def test_month_rollover_in_non_utc_zone_starts_a_new_line() -> None:
    """Spend in January's window does not count against February's."""
    clock = Clock(datetime(2026, 1, 31, 22, 59, 59, tzinfo=UTC))
    budget = Budget(scope="team", max_usd="1", period="month", timezone="Europe/Paris")
    ledger = MemoryLedger()

    def spend(hold_id: str) -> bool:
        (spec,) = lines_for([budget], {"team": "search"}, "t", clock())
        if ledger.reserve(hold_id, [spec.line()], 10**9, 0, 60) is not None:
            return False
        ledger.settle(hold_id, [spec.key], 10**9, 0)
        return True

    assert spend("jan-1") is True
    assert spend("jan-2") is False
    clock.now += timedelta(seconds=1)  # 00:00:00 on 1 February in Paris
    assert spend("feb-1") is True


def test_day_window_is_23_hours_on_spring_forward_day() -> None:
    """A calendar day spans local midnight to midnight, whatever its length."""
    window = window_at("day", "Europe/Paris", datetime(2026, 3, 29, 12, tzinfo=UTC))
    assert window.starts_at is not None
    assert window.resets_at is not None
    # Same-zone subtraction is wall-clock; compare real elapsed time in UTC.
    length = window.resets_at.astimezone(UTC) - window.starts_at.astimezone(UTC)
    assert length == timedelta(hours=23)


def test_week_starts_monday_and_uses_iso_week_numbers() -> None:
    """Thursday 31 December 2026 falls in ISO week 2026-W53, from Monday the 28th."""
    window = window_at("week", "UTC", datetime(2026, 12, 31, 9, tzinfo=UTC))
    assert window.key_suffix == "#week:2026-W53@UTC"
    assert window.starts_at == datetime(2026, 12, 28, tzinfo=ZoneInfo("UTC"))
    assert window.resets_at == datetime(2027, 1, 4, tzinfo=ZoneInfo("UTC"))


def test_repeated_fall_back_hour_gets_two_windows() -> None:
    """The two 01:00 hours of a fall-back night in New York are different lines."""
    first = window_at(
        "hour", "America/New_York", datetime(2026, 11, 1, 5, 30, tzinfo=UTC)
    )
    second = window_at(
        "hour", "America/New_York", datetime(2026, 11, 1, 6, 30, tzinfo=UTC)
    )
    assert first.key_suffix == "#hour:2026-11-01T01-0400@America/New_York"
    assert second.key_suffix == "#hour:2026-11-01T01-0500@America/New_York"


def test_hour_window_resets_an_hour_after_it_starts() -> None:
    """An hour window in Kolkata (UTC+05:30) runs on the local hour."""
    window = window_at("hour", "Asia/Kolkata", datetime(2026, 6, 1, 10, 45, tzinfo=UTC))
    assert window.resets_at == datetime(2026, 6, 1, 11, 30, tzinfo=UTC)


def test_total_window_has_no_suffix_and_no_reset() -> None:
    """A total budget has one line for ever."""
    window = window_at("total", "UTC", datetime(2026, 6, 1, tzinfo=UTC))
    assert (window.key_suffix, window.resets_at, window.ttl_s) == ("", None, None)


def test_rolling_window_names_its_length_and_never_resets() -> None:
    """A rolling line is named by its window length; spend rolls off instead."""
    window = window_at(
        "rolling", "UTC", datetime(2026, 6, 1, tzinfo=UTC), window_s=3600
    )
    assert (window.key_suffix, window.resets_at, window.window_s) == (
        "#rolling:3600s",
        None,
        3600,
    )
    assert window.ttl_s == 3660.0


def test_calendar_ttl_covers_rest_of_window_plus_one_period() -> None:
    """A day line lives until a day after its window ends."""
    window = window_at("day", "UTC", datetime(2026, 6, 1, 18, tzinfo=UTC))
    assert window.ttl_s == 6 * 3600 + 86400


def test_naive_now_is_refused() -> None:
    """A naive datetime is ambiguous and raises ConfigError."""
    with pytest.raises(ConfigError, match="aware datetime"):
        window_at("day", "UTC", datetime(2026, 6, 1))


def test_parse_line_key_reads_back_the_window() -> None:
    """The CLI recovers period, zone and next reset from a key."""
    parsed = parse_line_key("team:search#day:2026-12-04@Europe/Paris")
    assert (parsed.base, parsed.period, parsed.timezone) == (
        "team:search",
        "day",
        "Europe/Paris",
    )
    assert parsed.resets_at == datetime(2026, 12, 5, tzinfo=PARIS)


def test_parse_line_key_reads_a_plain_key_as_total() -> None:
    """A key without a window suffix is a total budget."""
    parsed = parse_line_key("task:ab#12")
    assert (parsed.base, parsed.period, parsed.resets_at) == (
        "task:ab#12",
        "total",
        None,
    )


def test_lines_for_skips_budgets_without_a_matching_value() -> None:
    """Budgets for absent scopes or other keys do not apply."""
    budgets = [
        Budget(scope="team", key="search", max_usd="5"),
        Budget(scope="team", key="ads", max_usd="5"),
        Budget(scope="user", max_usd="1"),
    ]
    specs = lines_for(
        budgets, {"team": "search"}, "t1", datetime(2026, 6, 1, tzinfo=UTC)
    )
    assert [spec.key for spec in specs] == ["team:search"]


def test_lines_for_orders_narrowest_first_and_converts_limits() -> None:
    """The task line comes first; dollars become nano-dollars."""
    budgets = [
        Budget(scope="org", max_tokens=1000),
        Budget(max_usd=Decimal("0.25")),
    ]
    specs = lines_for(budgets, {"org": "acme"}, "t1", datetime(2026, 6, 1, tzinfo=UTC))
    assert [(s.key, s.limit_nanos, s.limit_tokens) for s in specs] == [
        ("task:t1", 250_000_000, None),
        ("org:acme", None, 1000),
    ]


def test_task_line_gets_the_task_ttl() -> None:
    """A task line expires a configurable time after its last change."""
    (spec,) = lines_for(
        [Budget(max_usd="1")], {}, "t1", datetime(2026, 6, 1, tzinfo=UTC)
    )
    assert spec.line(task_ttl_s=120.0) == Line("task:t1", 10**9, None, 120.0)


def test_rolling_budget_becomes_a_rolling_line() -> None:
    """A rolling budget's line carries its window for the store."""
    budget = Budget(scope="user", max_usd="1", period="rolling", window_s=600)
    (spec,) = lines_for([budget], {"user": "u"}, "t", datetime(2026, 6, 1, tzinfo=UTC))
    line = spec.line()
    assert isinstance(line, RollingLine)
    assert (line.key, line.window_s) == ("user:u#rolling:600s", 600)


@pytest.mark.parametrize("order", [1, -1])
def test_a_keyed_budget_replaces_the_scope_wide_one_for_its_value(order: int) -> None:
    """One line per scope value and period: the keyed limit wins, in any order."""
    budgets = [
        Budget(scope="team", max_usd="1"),
        Budget(scope="team", key="search", max_usd="0.0001"),
        Budget(scope="team", max_usd="50", period="month"),
    ][::order]
    when = datetime(2026, 6, 1, tzinfo=UTC)
    search = lines_for(budgets, {"team": "search"}, "t1", when)
    ads = lines_for(budgets, {"team": "ads"}, "t1", when)
    assert sorted((s.key, s.limit_nanos) for s in search) == [
        ("team:search", 100_000),
        ("team:search#month:2026-06@UTC", 50 * 10**9),
    ]
    assert sorted((s.key, s.limit_nanos) for s in ads) == [
        ("team:ads", 10**9),
        ("team:ads#month:2026-06@UTC", 50 * 10**9),
    ]


@pytest.mark.parametrize(
    ("wide", "keyed", "expected"),
    [
        (
            {"period": "day"},
            {"period": "day", "timezone": "Europe/Paris"},
            "team:search#day:2026-06-01@Europe/Paris",
        ),
        (
            {"period": "rolling", "window_s": 600},
            {"period": "rolling", "window_s": 600},
            "team:search#rolling:600s",
        ),
    ],
)
def test_a_keyed_budget_replaces_one_of_another_zone(
    wide: dict[str, object], keyed: dict[str, object], expected: str
) -> None:
    """The same period in another time zone is the same slot: the team's own
    budget replaces the default, it does not sit under it."""
    budgets = [
        Budget(scope="team", max_usd="0.001", **wide),  # type: ignore[arg-type]
        Budget(scope="team", key="search", max_usd="100", **keyed),  # type: ignore[arg-type]
    ]
    when = datetime(2026, 6, 1, 12, tzinfo=UTC)
    search = lines_for(budgets, {"team": "search"}, "t1", when)
    assert [(s.key, s.limit_nanos) for s in search] == [(expected, 100 * 10**9)]


def test_an_hour_across_a_half_hour_clock_change_contains_now() -> None:
    """Lord Howe falls back 30 minutes: the hour window still holds 'now'."""
    from governor.budgets import parse_line_key

    budget = Budget(
        scope="team", max_usd=1, period="hour", timezone="Australia/Lord_Howe"
    )
    before = window_for(budget, datetime(2026, 4, 4, 14, 50, tzinfo=UTC))
    now = datetime(2026, 4, 4, 15, 10, tzinfo=UTC)
    window = window_for(budget, now)
    assert window.starts_at is not None
    assert window.resets_at is not None
    assert window.starts_at <= now < window.resets_at
    assert window.key_suffix != before.key_suffix
    parsed = parse_line_key("team:a" + window.key_suffix)
    assert parsed.starts_at == window.starts_at


def test_a_whole_session_line_ends_30_days_after_its_last_call() -> None:
    """Sessions come and go: their total lines expire; a user's total does not."""
    from governor.budgets import SESSION_TTL_S

    budgets = [Budget(scope="session", max_usd="1"), Budget(scope="user", max_usd="9")]
    when = datetime(2026, 6, 1, tzinfo=UTC)
    specs = lines_for(budgets, {"session": "s", "user": "u"}, "t", when)
    ttls = {spec.key: spec.line().ttl_s for spec in specs}
    assert ttls == {"session:s": SESSION_TTL_S, "user:u": None}
    assert SESSION_TTL_S == 30 * 86400


def test_an_idle_session_line_expires_in_the_memory_ledger() -> None:
    """The memory ledger forgets a session line once its lease is over."""
    from governor import CallRequest, CallResult, Governor, Policy
    from governor.budgets import SESSION_TTL_S
    from governor.pricing import Usage
    from governor.stores import MemoryLedger

    now = [1000.0]
    ledger = MemoryLedger(clock=lambda: now[0])
    gov = Governor(
        Policy(budgets=[Budget(scope="session", max_usd="1")]), ledger=ledger
    )
    request = CallRequest(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "hi"}],
        max_output_tokens=5,
    )
    with gov.task(session="s1"):
        gov.end_call(gov.begin_call(request), CallResult(usage=Usage(3, 2)))
    assert ledger.balance("session:s1") is not None
    now[0] += SESSION_TTL_S + 1
    assert ledger.balance("session:s1") is None


@pytest.mark.parametrize("keyed", [False, True])
@pytest.mark.parametrize("order", [1, -1])
def test_rolling_budgets_of_other_windows_all_apply(keyed: bool, order: int) -> None:
    """$X an hour and $Y a day, rolling: both caps hold, in either order."""
    key = "search" if keyed else None
    budgets = [
        Budget(scope="team", key=key, max_usd="1", period="rolling", window_s=3600),
        Budget(scope="team", key=key, max_usd="9", period="rolling", window_s=86400),
    ][::order]
    when = datetime(2026, 6, 1, 12, tzinfo=UTC)
    search = lines_for(budgets, {"team": "search"}, "t1", when)
    assert sorted(s.key for s in search) == [
        "team:search#rolling:3600s",
        "team:search#rolling:86400s",
    ]


@pytest.mark.parametrize(
    ("zone", "first"),
    [
        ("Australia/Lord_Howe", datetime(2025, 10, 4, 13, tzinfo=UTC)),
        ("Australia/Lord_Howe", datetime(2026, 4, 4, 13, tzinfo=UTC)),
        ("America/New_York", datetime(2026, 3, 8, 5, tzinfo=UTC)),
        ("America/New_York", datetime(2026, 11, 1, 4, tzinfo=UTC)),
    ],
)
def test_hour_windows_tile_time_across_clock_changes(
    zone: str, first: datetime
) -> None:
    """Each hour window starts where the last one reset, never inside it: after
    Lord Howe's half-hour changes the hour the change cuts is 30 minutes."""
    budget = Budget(scope="team", max_usd=1, period="hour", timezone=zone)
    windows: list[tuple[str, datetime, datetime]] = []
    for quarter in range(20):
        now = first + timedelta(minutes=15 * quarter)
        window = window_for(budget, now)
        assert window.starts_at is not None
        assert window.resets_at is not None
        # Compared in UTC: datetimes of one zone compare by their wall clocks.
        bounds = (window.starts_at.astimezone(UTC), window.resets_at.astimezone(UTC))
        assert bounds[0] <= now < bounds[1]
        parsed = parse_line_key("team:a" + window.key_suffix)
        assert parsed.starts_at is not None
        assert parsed.resets_at is not None
        assert (
            parsed.starts_at.astimezone(UTC),
            parsed.resets_at.astimezone(UTC),
        ) == bounds
        if not windows or windows[-1][0] != window.key_suffix:
            windows.append((window.key_suffix, *bounds))
    for before, after in pairwise(windows):
        assert before[2] == after[1]
    lengths = {(end - start).total_seconds() for _, start, end in windows[1:-1]}
    half_hour_zone = zone == "Australia/Lord_Howe"
    assert lengths == ({1800.0, 3600.0} if half_hour_zone else {3600.0})
