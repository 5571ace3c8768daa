"""``governor budget status|reset`` against a real Redis store."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
from _redis_fixtures import OwnRedis

from governor.budgets import lines_for
from governor.cli import _budget, main
from governor.policies import Budget
from governor.stores import Line
from governor.stores._redis import DEFAULT_REDIS_URL, RedisLedger, redact_url

pytest_plugins = ["_redis_fixtures"]

NOW = datetime(2026, 12, 4, 15, tzinfo=UTC)


def _spend(ledger: RedisLedger) -> None:
    """A task line, a daily team line in Paris and a settled plus a held call."""
    budgets = [
        Budget(max_usd="1"),
        Budget(
            scope="team",
            max_usd="10",
            max_tokens=5000,
            period="day",
            timezone="Europe/Paris",
        ),
    ]
    lines = [s.line() for s in lines_for(budgets, {"team": "search"}, "t1", NOW)]
    keys = [line.key for line in lines]
    ledger.reserve("h1", lines, 2_000_000, 300, 600)
    ledger.settle("h1", keys, 1_250_000, 200)
    ledger.reserve("h2", lines, 500_000, 100, 600)


def _store(url: str, prefix: str) -> list[str]:
    return ["--redis-url", url, "--prefix", prefix]


def test_status_json_lists_every_line_with_its_figures(
    redis_ledger: RedisLedger,
    redis_url: str,
    redis_prefix: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """status --json gives limit, spent, reserved, period and next reset per line."""
    _spend(redis_ledger)
    code = main(["budget", "status", "--json", *_store(redis_url, redis_prefix)])
    lines = {row["scope"]: row for row in json.loads(capsys.readouterr().out)["lines"]}
    assert code == 0
    assert sorted(lines) == ["task:t1", "team:search"]
    team = lines["team:search"]
    assert (team["period"], team["timezone"]) == ("day", "Europe/Paris")
    assert team["next_reset"] == "2026-12-05T00:00:00+01:00"
    assert (team["limit_usd"], team["spent_usd"], team["reserved_usd"]) == (
        "10",
        "0.00125",
        "0.0005",
    )
    assert (team["limit_tokens"], team["spent_tokens"], team["left_tokens"]) == (
        5000,
        200,
        4700,
    )


@pytest.mark.parametrize(
    ("scope", "shown", "code"),
    [
        ("team", ["team:search"], 0),
        ("TEAM:search", ["team:search"], 0),
        ("task:t1", ["task:t1"], 0),
        ("user", [], 1),
    ],
)
def test_status_shows_only_the_lines_a_scope_names(
    redis_ledger: RedisLedger,
    redis_url: str,
    redis_prefix: str,
    capsys: pytest.CaptureFixture[str],
    scope: str,
    shown: list[str],
    code: int,
) -> None:
    """A kind, a scope or a line key narrows thousands of task lines down."""
    _spend(redis_ledger)
    got = main(["budget", "status", scope, "--json", *_store(redis_url, redis_prefix)])
    lines = json.loads(capsys.readouterr().out)["lines"]
    assert (got, [row["scope"] for row in lines]) == (code, shown)


def test_status_text_shows_a_table(
    redis_ledger: RedisLedger,
    redis_url: str,
    redis_prefix: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """status prints one row per line under a header."""
    _spend(redis_ledger)
    main(["budget", "status", *_store(redis_url, redis_prefix)])
    rows = capsys.readouterr().out.splitlines()
    assert rows[0].split() == [
        "LINE",
        "KEY",
        "PERIOD",
        "LIMIT",
        "SPENT",
        "RESERVED",
        "NEXT",
        "RESET",
    ]
    assert rows[1].split()[:3] == ["task:t1", "total", "$1"]
    assert rows[2].split()[:3] == [
        "team:search#day:2026-12-04@Europe/Paris",
        "day",
        "(Europe/Paris)",
    ]


def test_status_with_a_wrong_prefix_names_it_and_hints_at_the_fix(
    redis_ledger: RedisLedger,
    redis_url: str,
    redis_prefix: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """No line under --prefix: say which prefix was searched, and where, and why.

    The lines exist under the test's own prefix; the command is pointed at
    another one, as a user who forgot their services' prefix would be.
    """
    _spend(redis_ledger)
    wrong = f"wrong-{redis_prefix}"
    code = main(["budget", "status", *_store(redis_url, wrong)])
    assert (code, capsys.readouterr().out) == (
        0,
        f"no budget lines under prefix {wrong!r} (hash tag 'budgets') in "
        f"{redact_url(redis_url)}; if your services give RedisLedger another prefix or "
        "hash_tag, pass the same with --prefix and --hash-tag\n",
    )


def test_reset_zeroes_every_window_of_a_scope(
    redis_ledger: RedisLedger,
    redis_url: str,
    redis_prefix: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """reset SCOPE zeroes the spend of each window of that scope, holds stay."""
    _spend(redis_ledger)
    code = main(
        ["budget", "reset", "team:search", "--json", *_store(redis_url, redis_prefix)]
    )
    (key,) = json.loads(capsys.readouterr().out)["reset"]
    balance = redis_ledger.balance(key)
    assert code == 0
    assert key == "team:search#day:2026-12-04@Europe/Paris"
    assert balance is not None
    assert (balance.spent_nanos, balance.reserved_nanos) == (0, 500_000)


def test_reset_takes_a_task_id_with_spaces_as_given(
    redis_ledger: RedisLedger,
    redis_url: str,
    redis_prefix: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """'task: job' and 'task:job' are two tasks' lines: each resets alone."""
    for task_id, hold in ((" job", "h1"), ("job", "h2")):
        lines = [s.line() for s in lines_for([Budget(max_usd="1")], {}, task_id, NOW)]
        redis_ledger.reserve(hold, lines, 1_000, 10, 600)
        redis_ledger.settle(hold, [line.key for line in lines], 1_000, 10)
    code = main(
        ["budget", "reset", "task: job", "--json", *_store(redis_url, redis_prefix)]
    )
    assert (code, json.loads(capsys.readouterr().out)["reset"]) == (0, ["task: job"])
    spent = {
        key: balance.spent_nanos
        for key in ("task: job", "task:job")
        if (balance := redis_ledger.balance(key)) is not None
    }
    assert spent == {"task: job": 0, "task:job": 1_000}


def test_reset_of_an_unknown_scope_fails(
    redis_ledger: RedisLedger,
    redis_url: str,
    redis_prefix: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """reset of a scope with no line exits 1 and says so."""
    code = main(["budget", "reset", "team:none", *_store(redis_url, redis_prefix)])
    assert code == 1
    err = capsys.readouterr().err
    assert "no line matches 'team:none'; give a line's key" in err


def test_the_cli_default_store_is_the_library_default() -> None:
    """The URL the README documents is the one RedisConfig uses too."""
    assert _budget.DEFAULT_REDIS_URL == DEFAULT_REDIS_URL == "redis://127.0.0.1:6379/0"


def test_status_without_a_url_reads_the_default_store(
    redis_ledger: RedisLedger,
    redis_url: str,
    redis_prefix: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Neither --redis-url nor GOVERNOR_REDIS_URL: the default URL is read."""
    if redis_url != DEFAULT_REDIS_URL:
        pytest.skip(f"the test Redis ({redis_url}) is not at the default URL")
    monkeypatch.delenv("GOVERNOR_REDIS_URL", raising=False)
    _spend(redis_ledger)
    code = main(["budget", "status", "--json", "--prefix", redis_prefix])
    lines = json.loads(capsys.readouterr().out)["lines"]
    assert code == 0
    assert sorted(row["scope"] for row in lines) == ["task:t1", "team:search"]


def test_an_unreachable_store_gets_command_line_advice(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The error names the URL and where it came from, and says what to do.

    The library's advice, Policy(failure_mode='open'), means nothing to
    someone typing a command.
    """
    url = OwnRedis().url  # a free port, no server
    monkeypatch.setenv("GOVERNOR_REDIS_URL", url)
    assert main(["budget", "status"]) == 1
    err = capsys.readouterr().err
    assert main(["budget", "reset", "team:search", "--json"]) == 1
    error = json.loads(capsys.readouterr().out)["error"]
    assert error["code"] == "store_unavailable"
    for message in (err, error["message"]):
        assert f"{url} (from $GOVERNOR_REDIS_URL)" in message
        assert "start Redis" in message
        assert "--redis-url" in message
        assert "failure_mode" not in message
        assert "Policy(" not in message


def test_status_table_escapes_control_characters_in_names(
    redis_ledger: RedisLedger,
    redis_url: str,
    redis_prefix: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A tab, newline or escape in a task name cannot break the table.

    The table shows them as repr does; JSON keeps the name as it is.
    """
    key = "task:evil\tname\nNEXT \x1b[31mred\u202e"
    redis_ledger.reserve("h1", [Line(key, limit_nanos=10**9)], 1000, 10, 600)
    assert main(["budget", "status", *_store(redis_url, redis_prefix)]) == 0
    rows = capsys.readouterr().out.splitlines()
    assert len(rows) == 2
    assert rows[1].split()[:2] == ["task:evil\\tname\\nNEXT", "\\x1b[31mred\\u202e"]
    assert main(["budget", "status", "--json", *_store(redis_url, redis_prefix)]) == 0
    (line,) = json.loads(capsys.readouterr().out)["lines"]
    assert line["scope"] == line["key"] == key
    assert main(["budget", "reset", key, *_store(redis_url, redis_prefix)]) == 0
    assert capsys.readouterr().out.splitlines() == [
        "reset task:evil\\tname\\nNEXT \\x1b[31mred\\u202e"
    ]


def test_status_of_an_unreachable_store_fails_cleanly(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A store nobody answers at gives exit 1 and the store_unavailable code."""
    url = OwnRedis().url  # a free port, no server
    code = main(["budget", "status", "--json", "--redis-url", url])
    assert code == 1
    assert json.loads(capsys.readouterr().out)["error"]["code"] == "store_unavailable"
